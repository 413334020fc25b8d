//! Identity in Kubernetes mode, against a real API server: the real
//! `weft control-plane --kubernetes` runs in the cp network namespace as
//! ServiceAccount weft-identity bound to the shipped rbac.yaml (not admin,
//! so a missing permission fails here), with a fresh namespace as its
//! controller namespace. Pods prove who they are with TokenRequest tokens
//! (TokenReview); the issuer comes from a Secret and the anchors from a
//! ConfigMap, judged as a pair, refusals recorded as Events.
//!
//! Needs root and the Kubernetes test binaries (WEFT_REQUIRE_ROOT=1
//! WEFT_REQUIRE_K8S=1 to fail rather than skip without them).

mod common;
#[path = "k8s_identity/support.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use testbed::k8s::api::{self, DEADLINE, poll};
use testbed::k8s::k8s_openapi::api::core::v1::{Pod, Secret};
use testbed::k8s::kube::api::{Api, DeleteParams, PostParams};
use tonic::Code;

use common::proc::metric_sum;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_identity_service_account_tokens_and_the_issuer_secret() -> Result<()> {
    let Some(env) = env("kubernetes_identity_service_account_tokens_and_the_issuer_secret").await
    else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let admin = env.client()?;
    let cp_ns = api::namespace(&admin, "weft-cp").await?;
    let app = api::namespace(&admin, "app").await?;
    let mesh = Mesh { cp: cp_ns.clone() };
    let scratch = common::Scratch::new();

    let root = ca("root-a", None, (-1, 3650));
    let issuer1 = ca("issuer-1", Some(&root), (-1, 365));
    put_trust_roots(&admin, &cp_ns, &root.pem, true).await?;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &cp_ns);
    secrets
        .create(
            &PostParams::default(),
            &secret(
                "kubernetes.io/tls",
                &[
                    ("tls.crt", issuer1.pem.as_str()),
                    ("tls.key", issuer1.key_pem.as_str()),
                    ("ca.crt", root.pem.as_str()),
                ],
            ),
        )
        .await?;

    let kubeconfig = least_privilege_kubeconfig(&env, &admin, &cp_ns, &scratch).await?;
    let cp = start_control_plane(&env, &cp_ns, &kubeconfig, &scratch, &root.pem)?;
    let t0 = Instant::now();
    poll("the issuer from the Secret in force", DEADLINE, || async {
        let n = cp.reloads("ok").await?;
        Ok((n >= 1.0).then_some(()))
    })
    .await
    .with_context(|| cp.proc.output())?;
    println!(
        "control plane up as weft-identity (RBAC of rbac.yaml); issuer from Secret in force after {:.1?}",
        t0.elapsed()
    );

    service_account_tokens(&env, &admin, &cp, &mesh, &app, &scratch, &issuer1).await?;
    let issuer2 = issuer_secret_refusals(&admin, &cp, &mesh, &app, &cp_ns, &root, &issuer1).await?;
    trust_roots_append_and_remove(&admin, &cp, &mesh, &app, &cp_ns, &root, &issuer2).await?;
    Ok(())
}

/// TokenRequest tokens bound to a pod: a leaf for that identity; refusals
/// for another audience, another identity, a deleted pod, garbage. A join
/// token still works (ExternalWorkloads).
async fn service_account_tokens(
    env: &testbed::k8s::K8sEnv,
    admin: &testbed::k8s::kube::Client,
    cp: &Cp,
    mesh: &Mesh,
    app: &str,
    scratch: &common::Scratch,
    issuer: &Ca,
) -> Result<()> {
    api::service_account(admin, app, "web").await?;
    api::service_account(admin, app, "other").await?;
    let web = pod(admin, app, "web-1", "web").await?;
    let hour = Duration::from_secs(3600);
    let token = api::token(admin, app, "web", AUDIENCE, Some(web.clone()), hour).await?;
    let t0 = Instant::now();
    // The identity listener serves once the control plane has certified itself.
    let leaf = poll("the first Certify with a pod's token", DEADLINE, || async {
        Ok(cp.certify(&mesh.id("web", app), &token).await.ok())
    })
    .await
    .with_context(|| cp.proc.output())?;
    ensure!(
        leaf_identity(&leaf, &mesh.cp)? == mesh.id("web", app),
        "the leaf names {}",
        leaf_identity(&leaf, &mesh.cp)?
    );
    ensure!(
        leaf.intermediate_certificates.first() == Some(&issuer.der),
        "not issued by the issuer Secret's certificate"
    );
    println!(
        "pod-bound ServiceAccount token: leaf for {} in {:.1?} (TokenReview + pod lookup)",
        mesh.id("web", app),
        t0.elapsed()
    );

    let other_aud = api::token(admin, app, "web", "other.example", Some(web.clone()), hour).await?;
    refused(
        cp.certify(&mesh.id("web", app), &other_aud).await,
        Code::Unauthenticated,
        "other.example",
        "another audience",
    )?;
    refused(
        cp.certify(&mesh.id("other", app), &token).await,
        Code::PermissionDenied,
        &format!("the proof is for {}", mesh.id("web", app)),
        "another ServiceAccount's identity",
    )?;
    refused(
        cp.certify(&mesh.id("web", app), "garbage").await,
        Code::Unauthenticated,
        "not a JWT",
        "a garbage token",
    )?;

    let doomed = pod(admin, app, "web-2", "web").await?;
    let doomed_token = api::token(admin, app, "web", AUDIENCE, Some(doomed.clone()), hour).await?;
    cp.certify(&mesh.id("web", app), &doomed_token)
        .await
        .context("the doomed pod's token before deletion")?;
    Api::<Pod>::namespaced(admin.clone(), app)
        .delete(&doomed.name, &DeleteParams::default().grace_period(0))
        .await?;
    let t0 = Instant::now();
    let status = poll(
        "Certify refuses the token of a deleted pod, saying so",
        DEADLINE,
        || async {
            match cp.certify(&mesh.id("web", app), &doomed_token).await {
                Err(s) if s.message().contains("no longer exists") => Ok(Some(s)),
                Err(s) => bail!("{:?}: {}", s.code(), s.message()),
                Ok(_) => bail!("still certified"),
            }
        },
    )
    .await?;
    println!(
        "pod {} deleted: its token refused after {:.1?}",
        doomed.name,
        t0.elapsed()
    );
    refused(
        Err(status),
        Code::Unauthenticated,
        "no longer exists",
        "a token whose pod was deleted",
    )?;

    // ExternalWorkloads keep their join tokens, signed with the key of the
    // Secret weft-join-token-key (the control plane's only copy), made and
    // revoked with `weft token --kubernetes`.
    let kubeconfig = env.kubeconfig();
    let kube_flags = |extra: &[&str]| {
        let mut cmd = env.cp_cmd(env!("CARGO_BIN_EXE_weft"));
        cmd.current_dir(scratch.path(".")).args(extra).args([
            "--kubernetes",
            "--controller-namespace",
            &mesh.cp,
        ]);
        cmd.arg("--kubeconfig").arg(&kubeconfig);
        common::Run::from(cmd.output().expect("weft token"))
    };
    let made = kube_flags(&["token", "create", "-n", app, "--service-account", "ext"]).ok();
    let join = made.stdout.trim().to_string();
    let jti = made
        .stderr
        .split_whitespace()
        .skip_while(|w| *w != "jti")
        .nth(1)
        .context("no jti printed")?
        .to_string();
    ensure!(
        made.stderr
            .contains(&format!("weft token revoke {jti} --kubernetes")),
        "the hint does not say how to revoke: {}",
        made.stderr
    );
    let r = cp
        .certify(&mesh.id("ext", app), &join)
        .await
        .context("join token")?;
    ensure!(leaf_identity(&r, &mesh.cp)? == mesh.id("ext", app));
    println!(
        "join token from `weft token create --kubernetes` (ExternalWorkload): leaf for {}",
        mesh.id("ext", app)
    );
    let revoked = kube_flags(&["token", "revoke", &jti]).ok();
    ensure!(revoked.stdout.contains("revoked"), "{}", revoked.stdout);
    let t0 = Instant::now();
    poll("the revoked join token refused", DEADLINE, || async {
        Ok(match cp.certify(&mesh.id("ext", app), &join).await {
            Err(s) if s.message().contains("revoked") => Some(()),
            _ => None,
        })
    })
    .await?;
    println!(
        "`weft token revoke --kubernetes`: refused after {:.1?}",
        t0.elapsed()
    );
    // A namespace with no control plane: the Secret is named, nothing made.
    let mut cmd = env.cp_cmd(env!("CARGO_BIN_EXE_weft"));
    cmd.args([
        "token",
        "create",
        "-n",
        app,
        "--service-account",
        "ext",
        "--kubernetes",
    ])
    .args(["--controller-namespace", "no-such-cp", "--kubeconfig"])
    .arg(&kubeconfig);
    let missing = common::Run::from(cmd.output()?).refused(2);
    ensure!(
        missing
            .stderr
            .contains("no-such-cp/weft-join-token-key does not exist"),
        "{}",
        missing.stderr
    );
    Ok(())
}

/// A fresh token of pod web-1 (ServiceAccount web).
async fn web_token(admin: &testbed::k8s::kube::Client, app: &str) -> Result<String> {
    let pod = Api::<Pod>::namespaced(admin.clone(), app)
        .get("web-1")
        .await?;
    api::token(
        admin,
        app,
        "web",
        AUDIENCE,
        Some(testbed::k8s::api::BoundTo {
            kind: "Pod",
            name: "web-1".into(),
            uid: pod.metadata.uid.unwrap_or_default(),
        }),
        Duration::from_secs(3600),
    )
    .await
}

/// Foreign, expired, key-mismatched and missing-key Secrets are refused
/// (the old issuer keeps serving, metric and Event); a good one is taken.
async fn issuer_secret_refusals(
    admin: &testbed::k8s::kube::Client,
    cp: &Cp,
    mesh: &Mesh,
    app: &str,
    cp_ns: &str,
    root: &Ca,
    issuer1: &Ca,
) -> Result<Ca> {
    let other_root = ca("root-b", None, (-1, 3650));
    let foreign = ca("issuer-foreign", Some(&other_root), (-1, 365));
    let expired = ca("issuer-expired", Some(root), (-10, -1));
    let stranger = ca("issuer-stranger", Some(root), (-1, 365));
    let cases: [(&str, &str, &str, &str); 3] = [
        (
            "a foreign issuer",
            "untrusted",
            foreign.pem.as_str(),
            foreign.key_pem.as_str(),
        ),
        (
            "an expired issuer",
            "expired",
            expired.pem.as_str(),
            expired.key_pem.as_str(),
        ),
        (
            "a key-mismatched pair",
            "key_mismatch",
            issuer1.pem.as_str(),
            stranger.key_pem.as_str(),
        ),
    ];
    for (case, label, crt, key) in cases {
        let before = cp.reloads(label).await?;
        put_issuer(
            admin,
            cp_ns,
            &[
                ("tls.crt", crt),
                ("tls.key", key),
                ("ca.crt", root.pem.as_str()),
            ],
        )
        .await?;
        let t0 = Instant::now();
        cp.reload_counted(label, before).await?;
        let note =
            refusal_event(admin, cp_ns, "Secret", ISSUER_SECRET, &format!("({label})")).await?;
        ensure!(
            serving(cp, mesh, app, admin, issuer1).await?,
            "{case}: the old issuer no longer serves"
        );
        println!(
            "{case}: refused after {:.1?}, issuer_reloads_total{{result=\"{label}\"}} moved, old issuer serving; Event: {note}",
            t0.elapsed()
        );
    }

    // Missing keys: an Opaque Secret with only crt.pem (a Secret's type is immutable: recreate it).
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), cp_ns);
    let before = cp.reloads("missing_key").await?;
    secrets
        .delete(ISSUER_SECRET, &DeleteParams::default())
        .await?;
    poll("the issuer Secret is gone", DEADLINE, || async {
        Ok(secrets
            .get_opt(ISSUER_SECRET)
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    secrets
        .create(
            &PostParams::default(),
            &secret("Opaque", &[("crt.pem", issuer1.pem.as_str())]),
        )
        .await?;
    cp.reload_counted("missing_key", before).await?;
    let want = format!("Secret {cp_ns}/{ISSUER_SECRET} has no key key.pem");
    let line = cp.proc.wait_for_line(&want, DEADLINE);
    ensure!(
        line.contains("crt.pem and key.pem") && line.contains("tls.crt and tls.key"),
        "the log line does not name the shapes: {line}"
    );
    let note = refusal_event(admin, cp_ns, "Secret", ISSUER_SECRET, &want).await?;
    ensure!(
        serving(cp, mesh, app, admin, issuer1).await?,
        "missing key: the old issuer no longer serves"
    );
    println!("missing key: refused, old issuer serving; log: {line}\n  Event: {note}");

    // A good new issuer, Linkerd's shape, is taken promptly.
    let issuer2 = ca("issuer-2", Some(root), (-1, 365));
    let ok_before = cp.reloads("ok").await?;
    put_issuer(
        admin,
        cp_ns,
        &[
            ("crt.pem", issuer2.pem.as_str()),
            ("key.pem", issuer2.key_pem.as_str()),
        ],
    )
    .await?;
    let t0 = Instant::now();
    poll("Certify chains to the new issuer", DEADLINE, || async {
        Ok(serving(cp, mesh, app, admin, &issuer2).await?.then_some(()))
    })
    .await?;
    let taken = t0.elapsed();
    ensure!(
        cp.reloads("ok").await? > ok_before,
        "issuer_reloads_total{{result=\"ok\"}} did not move"
    );
    println!(
        "timing: a good new issuer (linkerd.io/tls shape) taken {taken:.1?} after the Secret update"
    );
    Ok(issuer2)
}

/// Appending an anchor is taken (pushed like the file bundle); removing the
/// anchor the issuer chains to is refused, with an Event on the ConfigMap.
async fn trust_roots_append_and_remove(
    admin: &testbed::k8s::kube::Client,
    cp: &Cp,
    mesh: &Mesh,
    app: &str,
    cp_ns: &str,
    root: &Ca,
    issuer: &Ca,
) -> Result<()> {
    let anchors = |body: &str| {
        body.lines()
            .filter(|l| l.starts_with("identity_trust_anchor_expiration_timestamp_seconds{"))
            .count()
    };
    let next = ca("root-c", None, (-1, 3650));
    let token = web_token(admin, app).await?;
    let proxy = cp
        .attach(&mesh.id("web", app), &format!("{app}/web-1"), &token)
        .await?;
    proxy.until_anchors(1).await?;
    let generation = |body: &str| metric_sum(body, "trust_bundle_generation", &[]);
    let before = cp.reloads("ok").await?;
    put_trust_roots(admin, cp_ns, &format!("{}{}", root.pem, next.pem), false).await?;
    let t0 = Instant::now();
    proxy.until_anchors(2).await?;
    println!(
        "trust roots: anchor appended, pushed to an attached proxy {:.1?} after the ConfigMap update",
        t0.elapsed()
    );
    cp.reload_counted("ok", before).await?;
    let body = cp.metrics().await?;
    let n = anchors(&body);
    ensure!(n == 2, "{n} anchors in force after the append, want 2");
    let gen_appended = generation(&body);
    ensure!(
        serving(cp, mesh, app, admin, issuer).await?,
        "append: the issuer no longer serves"
    );

    let before = cp.reloads("untrusted").await?;
    put_trust_roots(admin, cp_ns, &next.pem, false).await?;
    cp.reload_counted("untrusted", before).await?;
    let note = refusal_event(admin, cp_ns, "ConfigMap", TRUST_ROOTS, "(untrusted)").await?;
    let body = cp.metrics().await?;
    let n = anchors(&body);
    ensure!(
        n == 2,
        "{n} anchors in force after the refused removal, want 2"
    );
    ensure!(
        generation(&body) == gen_appended && proxy.anchors() == 2,
        "a refused bundle was pushed: generation {} (was {gen_appended}), the proxy holds {} anchors",
        generation(&body),
        proxy.anchors()
    );
    ensure!(
        serving(cp, mesh, app, admin, issuer).await?,
        "orphaning removal: the issuer no longer serves"
    );
    println!(
        "trust roots: removing the issuer's anchor refused, 2 anchors kept, nothing pushed; Event: {note}"
    );

    put_trust_roots(admin, cp_ns, &root.pem, false).await?;
    let t0 = Instant::now();
    proxy.until_anchors(1).await?;
    let n = anchors(&cp.metrics().await?);
    ensure!(
        n == 1,
        "{n} anchors in force after removing the unused anchor, want 1"
    );
    println!(
        "trust roots: removing the unused anchor taken, pushed {:.1?} after the update (1 anchor)",
        t0.elapsed()
    );
    Ok(())
}
