//! The issuance record in the Kubernetes API: replicas of `weft
//! control-plane --kubernetes` (ServiceAccount weft-identity, shipped RBAC)
//! keep no local state. A certificate issued through replica A is listed
//! by replica B's `/fleet`, and by A again after a restart (both give the
//! same answer); the entries sit in IssuanceRecord objects; a batch of 200
//! concurrent renewals through one replica measures the issuance rate the
//! record allows; with the record's write grant removed Certify is refused
//! (UNAVAILABLE with the reason, `/ready` says why) and issues again once
//! it is restored; a part is deleted only after its certificates expire.
//!
//! Needs root and the Kubernetes test binaries (WEFT_REQUIRE_ROOT=1
//! WEFT_REQUIRE_K8S=1 to fail rather than skip without them).

mod common;
#[allow(dead_code)]
#[path = "k8s_identity/support.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use linkerd2_proxy_api::identity::CertifyRequest;
use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use testbed::k8s::api::{self, DEADLINE, poll};
use testbed::k8s::k8s_openapi::api::core::v1::Secret;
use testbed::k8s::kube::api::{Api, DynamicObject, PostParams};
use tonic::Code;

use common::certify::{csr_der, dns};
use support::*;

/// Renewals in the rate measurement, and how many run at once.
const CALLS: usize = 1000;
const CONCURRENT: usize = 200;
const CONNECTIONS: usize = 20;

async fn get(cp: &Cp, path: &'static str) -> Result<(u16, String)> {
    let (addr, ns) = (cp.admin, cp.netns.clone());
    Ok(tokio::task::spawn_blocking(move || {
        testbed::in_ns(&ns, move || common::proc::http_get(addr, path))
    })
    .await???)
}

/// (identity, serial) of every certificate `/fleet` lists.
async fn fleet(cp: &Cp) -> Result<BTreeSet<(String, String)>> {
    let (code, body) = get(cp, "/fleet").await?;
    ensure!(code == 200, "/fleet answered {code}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let mut out = BTreeSet::new();
    for (list, key) in [("unmanaged", "serial"), ("proxies", "leaf_serial")] {
        for e in v[list].as_array().cloned().unwrap_or_default() {
            out.insert((
                e["identity"].as_str().unwrap_or_default().to_string(),
                e[key].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    Ok(out)
}

async fn lists(cp: &Cp, identity: &str, serial: &str) -> Result<Option<()>> {
    let f = fleet(cp).await?;
    Ok(f.contains(&(identity.to_string(), serial.to_string()))
        .then_some(()))
}

/// Every IssuanceRecord part: (name, serials).
async fn parts(
    admin: &testbed::k8s::kube::Client,
    cp_ns: &str,
) -> Result<Vec<(String, Vec<String>)>> {
    let ar = control_plane::k8s::record_parts::api_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(admin.clone(), cp_ns, &ar);
    Ok(api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .map(|o| {
            let serials = control_plane::k8s::record_parts::entries_of(&o)
                .iter()
                .filter_map(|e| e["serial"].as_str().map(str::to_string))
                .collect();
            (o.metadata.name.unwrap_or_default(), serials)
        })
        .collect())
}

fn serial(r: &linkerd2_proxy_api::identity::CertifyResponse) -> Result<(String, i64)> {
    let info =
        pki::info::CertInfo::from_der(&pki::CertificateDer::from(r.leaf_certificate.clone()))?;
    Ok((info.serial, info.not_after.unix_timestamp()))
}

/// `CALLS` renewals through `cp`, `CONCURRENT` at once over `CONNECTIONS`
/// connections authenticated by the leaf `r` (key `key`); returns the rate.
async fn renewals(
    cp: &Cp,
    identity: &str,
    r: &linkerd2_proxy_api::identity::CertifyResponse,
    key: &rcgen::KeyPair,
) -> Result<f64> {
    let mut chain = vec![common::certify::rustls_pem(
        "CERTIFICATE",
        &r.leaf_certificate,
    )];
    chain.extend(
        r.intermediate_certificates
            .iter()
            .map(|c| common::certify::rustls_pem("CERTIFICATE", c)),
    );
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(
            cp.channel(cp.identity, Some((chain.concat(), key.serialize_pem())))
                .await?,
        );
    }
    let csr = csr_der(key, Some(identity), vec![dns(identity)]);
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CONCURRENT {
        let ch = channels[i % CONNECTIONS].clone();
        let req = CertifyRequest {
            identity: identity.into(),
            token: vec![],
            certificate_signing_request: csr.clone(),
        };
        tasks.spawn(async move {
            let mut client = IdentityClient::new(ch);
            for _ in 0..CALLS / CONCURRENT {
                client.certify(req.clone()).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done?.context("a renewal was refused")?;
    }
    Ok(CALLS as f64 / t0.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuance_record_lives_in_the_api() -> Result<()> {
    let Some(env) = env("the_issuance_record_lives_in_the_api").await else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let admin = env.client()?;
    let cp_ns = api::namespace(&admin, "weft-rec").await?;
    let app = api::namespace(&admin, "app").await?;
    let mesh = Mesh { cp: cp_ns.clone() };
    let (sa, sb, sc) = (
        common::Scratch::new(),
        common::Scratch::new(),
        common::Scratch::new(),
    );
    let root = ca("root-a", None, (-1, 3650));
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
    api::service_account(&admin, &app, "web").await?;
    let web_pod = pod(&admin, &app, "web-1", "web").await?;
    let token = api::token(
        &admin,
        &app,
        "web",
        AUDIENCE,
        Some(web_pod),
        Duration::from_secs(3600),
    )
    .await?;
    let web = mesh.id("web", &app);

    // Issued through A, listed by B.
    let key = rcgen::KeyPair::generate()?;
    let leaf = poll("Certify from replica A", DEADLINE, || async {
        Ok(a.certify_with(&web, &token, &key).await.ok())
    })
    .await
    .with_context(|| a.proc.output())?;
    let (s1, _) = serial(&leaf)?;
    let t0 = Instant::now();
    poll("B's /fleet lists what A issued", DEADLINE, || {
        lists(&b, &web, &s1)
    })
    .await
    .with_context(|| b.proc.output())?;
    println!(
        "issued through A, listed by B's /fleet {:.1?} later",
        t0.elapsed()
    );

    // The rate one replica issues at, every certificate recorded.
    let rate = renewals(&a, &web, &leaf, &key).await?;
    println!(
        "issuance rate through one replica: {rate:.0} Certify/s ({CALLS} renewals, {CONCURRENT} at once over {CONNECTIONS} connections)"
    );
    let stored: usize = parts(&admin, &cp_ns).await?.iter().map(|p| p.1.len()).sum();
    let listed = parts(&admin, &cp_ns).await?;
    ensure!(
        stored > CALLS,
        "{stored} entries in IssuanceRecords after {} issued: {:?}",
        CALLS + 1,
        listed.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    println!(
        "{stored} entries in {} IssuanceRecord parts: {:?}",
        listed.len(),
        listed.iter().map(|p| (&p.0, p.1.len())).collect::<Vec<_>>()
    );

    // A restarted replica lists them too: the same answer as B.
    let mut a = a;
    a.proc.child.kill()?;
    let _ = a.proc.child.wait();
    let a = start_control_plane(&env, &cp_ns, &kubeconfig, &sc, &root.pem)?;
    let t0 = Instant::now();
    let same = poll(
        "restarted A and B list the same certificates",
        DEADLINE,
        || async {
            let (fa, fb) = (fleet(&a).await?, fleet(&b).await?);
            Ok((fa == fb && fa.iter().any(|(i, _)| *i == web)).then_some(fa))
        },
    )
    .await
    .with_context(|| a.proc.output())?;
    println!(
        "A restarted: its /fleet equals B's ({same:?}) {:.1?} after the restart",
        t0.elapsed()
    );

    // Without the grant to write the record: refused, /ready says why.
    // (least_privilege_kubeconfig names the RBAC objects per namespace.)
    let binding = format!("weft-control-plane-{cp_ns}");
    common::kube::kubectl(&env, &["delete", "rolebinding", "-n", &cp_ns, &binding])?;
    let t0 = Instant::now();
    let refusal = poll(
        "Certify refused without the record's grant",
        DEADLINE,
        || async {
            Ok(match b.certify(&web, &token).await {
                Err(s)
                    if s.code() == Code::Unavailable && s.message().contains("IssuanceRecord") =>
                {
                    Some(s.message().to_string())
                }
                _ => None,
            })
        },
    )
    .await
    .with_context(|| b.proc.output())?;
    println!(
        "grant removed: Certify refused {:.1?} later: {refusal}",
        t0.elapsed()
    );
    let (code, body) = get(&b, "/ready").await?;
    ensure!(
        code == 503 && body.contains("issuance record") && body.contains("forbidden"),
        "/ready while the record cannot be written: {code} {body}"
    );
    println!("/ready: {}", body.trim());
    testbed::run(
        env.kubectl()
            .args(["apply", "-f"])
            .arg(sa.path("rbac.yaml")),
    )?;
    let t0 = Instant::now();
    poll("Certify once the grant is back", DEADLINE, || async {
        Ok(b.certify(&web, &token).await.ok())
    })
    .await?;
    poll("/ready once the grant is back", DEADLINE, || async {
        let (code, body) = get(&b, "/ready").await?;
        Ok((code == 200 && body.trim() == "ready").then_some(()))
    })
    .await?;
    println!(
        "grant restored: issuing and ready again {:.1?} later",
        t0.elapsed()
    );

    // Short leaves: their part is deleted, but only once they expired.
    let sd = common::Scratch::new();
    let proc = common::kube::control_plane_with(
        &env,
        &sd,
        &cp_ns,
        &kubeconfig,
        &[
            "--cluster-networks",
            "10.10.0.0/24,10.96.0.0/16",
            "--identity-issuance-lifetime",
            "10s",
        ],
    );
    let short = Cp {
        netns: env.cp().ns.clone(),
        identity: proc.addr("identity listening on"),
        destination: proc.addr("destination listening on"),
        admin: proc.addr("admin listening on"),
        server_name: a.server_name.clone(),
        anchors: root.pem.clone(),
        proc,
    };
    let r = poll("Certify from the short-lived replica", DEADLINE, || async {
        Ok(short.certify(&web, &token).await.ok())
    })
    .await
    .with_context(|| short.proc.output())?;
    let (s2, not_after) = serial(&r)?;
    let holder = |p: &[(String, Vec<String>)]| {
        p.iter()
            .find(|(_, s)| s.contains(&s2))
            .map(|(n, _)| n.clone())
    };
    let part = holder(&parts(&admin, &cp_ns).await?).context("no part holds the short leaf")?;
    let gone = poll(
        "the short leaf's part deleted",
        Duration::from_secs(120),
        || async {
            let p = parts(&admin, &cp_ns).await?;
            Ok(holder(&p)
                .is_none()
                .then(|| time::OffsetDateTime::now_utc().unix_timestamp()))
        },
    )
    .await
    .with_context(|| short.proc.output())?;
    ensure!(
        gone >= not_after,
        "part {part} was deleted at {gone}, before its leaf expired at {not_after}"
    );
    println!(
        "part {part} deleted {}s after its leaf's notAfter",
        gone - not_after
    );
    ensure!(
        parts(&admin, &cp_ns)
            .await?
            .iter()
            .any(|(_, s)| s.contains(&s1)),
        "compaction dropped a live entry"
    );
    Ok(())
}
