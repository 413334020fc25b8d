//! Two replicas of `weft control-plane --kubernetes` against one API server,
//! as ServiceAccount weft-identity under the shipped RBAC: both issue
//! certificates, and the trust bundle's generation lives in the ConfigMap
//! weft-bundle-generation, written by the Lease holder with resourceVersion
//! compare-and-swap. A change of the trust roots bumps it exactly once and
//! both serve it; the holder stopped (SIGSTOP) past its lease hands over,
//! and once it resumes (SIGCONT) the generation is still bumped only once;
//! a killed replica leaves the other serving and writing.
//!
//! Needs root and the Kubernetes test binaries (WEFT_REQUIRE_ROOT=1
//! WEFT_REQUIRE_K8S=1 to fail rather than skip without them).

mod common;
#[allow(dead_code)]
#[path = "k8s_identity/support.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use testbed::k8s::api::{self, DEADLINE, poll};
use testbed::k8s::k8s_openapi::api::coordination::v1::Lease;
use testbed::k8s::k8s_openapi::api::core::v1::{ConfigMap, Secret};
use testbed::k8s::kube::api::{Api, PostParams};

use common::proc::{metric, metric_sum};
use support::*;

const GENERATION_CM: &str = "weft-bundle-generation";
const LEASE: &str = "weft-control-plane";

/// What one replica reports: (generation served, lease held, writes).
async fn report(cp: &Cp) -> Result<(f64, f64, f64)> {
    let m = cp.metrics().await?;
    Ok((
        metric(&m, "trust_bundle_generation").unwrap_or(0.0),
        metric(&m, "control_plane_lease_held").unwrap_or(0.0),
        metric_sum(&m, "trust_bundle_generation_writes_total", &[]),
    ))
}

/// The generation stored in the ConfigMap.
async fn stored(admin: &testbed::k8s::kube::Client, cp_ns: &str) -> Result<Option<u64>> {
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), cp_ns);
    Ok(cms
        .get_opt(GENERATION_CM)
        .await?
        .and_then(|c| c.data)
        .and_then(|d| d.get("generation").cloned())
        .map(|g| g.parse())
        .transpose()?)
}

/// Polls until every replica in `cps` serves generation `g` (and the
/// ConfigMap holds it); returns how long it took.
async fn all_serve(
    admin: &testbed::k8s::kube::Client,
    cp_ns: &str,
    cps: &[&Cp],
    g: u64,
) -> Result<Duration> {
    let t0 = Instant::now();
    poll(
        &format!("generation {g} stored and served by every replica"),
        DEADLINE,
        || async {
            if stored(admin, cp_ns).await? != Some(g) {
                return Ok(None);
            }
            for cp in cps {
                if report(cp).await?.0 != g as f64 {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .with_context(|| {
        cps.iter()
            .map(|c| c.proc.output())
            .collect::<Vec<_>>()
            .join("\n----\n")
    })?;
    Ok(t0.elapsed())
}

/// Writes across the replicas: each new generation is one write.
async fn writes(cps: &[&Cp]) -> Result<f64> {
    let mut n = 0.0;
    for cp in cps {
        n += report(cp).await?.2;
    }
    Ok(n)
}

/// The replica whose process holds the Lease (its holderIdentity ends in
/// the process id).
async fn holder(admin: &testbed::k8s::kube::Client, cp_ns: &str, cps: &[&Cp]) -> Result<usize> {
    let leases: Api<Lease> = Api::namespaced(admin.clone(), cp_ns);
    poll("a replica holding the Lease", DEADLINE, || async {
        let h = leases
            .get_opt(LEASE)
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .unwrap_or_default();
        Ok(cps
            .iter()
            .position(|c| h.ends_with(&format!("/{}", c.proc.child.id()))))
    })
    .await
}

fn signal(cp: &Cp, sig: &str) -> Result<()> {
    let ok = std::process::Command::new("kill")
        .args([sig, &cp.proc.child.id().to_string()])
        .status()?
        .success();
    ensure!(ok, "kill {sig} failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_bundle_generation_through_the_api() -> Result<()> {
    let Some(env) = env("two_replicas_share_the_bundle_generation_through_the_api").await else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let admin = env.client()?;
    let cp_ns = api::namespace(&admin, "weft-ha").await?;
    let app = api::namespace(&admin, "app").await?;
    let mesh = Mesh { cp: cp_ns.clone() };
    let (sa, sb) = (common::Scratch::new(), common::Scratch::new());

    let root = ca("root-a", None, (-1, 3650));
    let root_b = ca("root-b", None, (-1, 3650));
    let issuer = ca("issuer-1", Some(&root), (-1, 365));
    put_trust_roots(&admin, &cp_ns, &root.pem, true).await?;
    Api::<Secret>::namespaced(admin.clone(), &cp_ns)
        .create(
            &PostParams::default(),
            &secret(
                "kubernetes.io/tls",
                &[
                    ("tls.crt", issuer.pem.as_str()),
                    ("tls.key", issuer.key_pem.as_str()),
                    ("ca.crt", root.pem.as_str()),
                ],
            ),
        )
        .await?;
    let kubeconfig = least_privilege_kubeconfig(&env, &admin, &cp_ns, &sa).await?;
    let a = start_control_plane(&env, &cp_ns, &kubeconfig, &sa, &root.pem)?;
    let b = start_control_plane(&env, &cp_ns, &kubeconfig, &sb, &root.pem)?;
    let both = [&a, &b];

    // One generation for the first bundle, written once, served by both.
    let t = all_serve(&admin, &cp_ns, &both, 1).await?;
    ensure!(
        writes(&both).await? == 1.0,
        "generation 1 written more than once"
    );
    println!("both replicas serve generation 1 after {t:.1?}");

    // Both issue certificates for a pod's token.
    api::service_account(&admin, &app, "web").await?;
    let web = pod(&admin, &app, "web-1", "web").await?;
    let token = api::token(
        &admin,
        &app,
        "web",
        AUDIENCE,
        Some(web),
        Duration::from_secs(3600),
    )
    .await?;
    for (name, cp) in [("a", &a), ("b", &b)] {
        poll(
            &format!("Certify from replica {name}"),
            DEADLINE,
            || async { Ok(cp.certify(&mesh.id("web", &app), &token).await.ok()) },
        )
        .await
        .with_context(|| cp.proc.output())?;
    }
    println!("both replicas issue for a pod's ServiceAccount token");

    // One join-token key, in the Secret: a token signed with it works on
    // both; revoked through the API (compare-and-swap), both refuse it.
    let (join, claims) = common::join::join_token(&env, &sa, &cp_ns, &app, "ext")?;
    for cp in both {
        cp.certify(&mesh.id("ext", &app), &join)
            .await
            .context("a join token signed with the Secret's key")?;
    }
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &cp_ns);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let fresh =
        control_plane::k8s::tokens::revoke(&secrets, &cp_ns, &claims.jti, Some(claims.exp), now)
            .await?;
    ensure!(fresh, "the token was already revoked");
    let t0 = Instant::now();
    for cp in both {
        poll("the revoked join token refused", DEADLINE, || async {
            Ok(match cp.certify(&mesh.id("ext", &app), &join).await {
                Err(s)
                    if s.code() == tonic::Code::Unauthenticated
                        && s.message().contains("revoked") =>
                {
                    Some(())
                }
                _ => None,
            })
        })
        .await?;
    }
    println!(
        "join token accepted by both; revoked through the Secret, refused by both within {:.1?}",
        t0.elapsed()
    );

    // New trust roots: the holder bumps once, both serve it.
    let both_roots = format!("{}{}", root.pem, root_b.pem);
    put_trust_roots(&admin, &cp_ns, &both_roots, false).await?;
    let t = all_serve(&admin, &cp_ns, &both, 2).await?;
    ensure!(
        writes(&both).await? == 2.0,
        "generation 2 written more than once"
    );
    println!("trust roots changed -> generation 2 on both replicas in {t:.1?}");

    // The holder stopped past its lease: the other takes over and bumps.
    let h = holder(&admin, &cp_ns, &both).await?;
    let (leader, follower) = (both[h], both[1 - h]);
    signal(leader, "-STOP")?;
    let stopped = Instant::now();
    put_trust_roots(&admin, &cp_ns, &root.pem, false).await?;
    let t = all_serve(&admin, &cp_ns, &[follower], 3).await?;
    println!(
        "holder stopped: the other replica stored and serves generation 3 {t:.1?} after the change ({:.1?} after SIGSTOP)",
        stopped.elapsed()
    );
    ensure!(
        report(follower).await?.1 == 1.0,
        "the follower serves generation 3 without holding the lease"
    );
    poll("Certify from the remaining replica", DEADLINE, || async {
        Ok(follower.certify(&mesh.id("web", &app), &token).await.ok())
    })
    .await?;
    signal(leader, "-CONT")?;
    // Once resumed it learns it lost the lease, and serves the stored
    // generation: no second bump, never backwards.
    let t = all_serve(&admin, &cp_ns, &both, 3).await?;
    poll(
        "the resumed replica knows it lost the lease",
        DEADLINE,
        || async {
            let lost = report(leader).await?.1 == 0.0;
            Ok(lost.then_some(()))
        },
    )
    .await?;
    leader
        .proc
        .wait_for_line("another replica holds the lease", DEADLINE);
    ensure!(
        stored(&admin, &cp_ns).await? == Some(3) && writes(&both).await? == 3.0,
        "after SIGCONT: generation {:?}, {} writes (want 3 and 3)",
        stored(&admin, &cp_ns).await?,
        writes(&both).await?
    );
    println!("holder resumed: serves generation 3 {t:.1?} after SIGCONT; bumped once");

    // Kill the replica holding the lease now: the other keeps issuing,
    // takes the lease and stores the next generation.
    let h = holder(&admin, &cp_ns, &both).await?;
    let (mut gone, left) = if h == 0 { (a, b) } else { (b, a) };
    gone.proc.child.kill()?;
    let killed = Instant::now();
    let _ = gone.proc.child.wait();
    left.certify(&mesh.id("web", &app), &token)
        .await
        .context("Certify from the remaining replica right after the kill")?;
    put_trust_roots(&admin, &cp_ns, &both_roots, false).await?;
    let t = all_serve(&admin, &cp_ns, &[&left], 4).await?;
    println!(
        "holder killed: the other stored and serves generation 4 {:.1?} after the kill ({t:.1?} after the change)",
        killed.elapsed()
    );
    ensure!(
        report(&left).await?.1 == 1.0,
        "the remaining replica stored generation 4 without holding the lease"
    );
    Ok(())
}
