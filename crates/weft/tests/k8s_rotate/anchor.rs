//! The trust-anchor rotation on Kubernetes, by the commands alone, under
//! the traffic the caller keeps running: a lock held elsewhere refuses;
//! prepare puts both anchors in the ConfigMap; activate, killed once it
//! wrote the Secret, is re-run, takes the dead run's lock over and
//! resumes; abort puts the previous issuer back from the Secret activate
//! kept; activate again, then retire leaves only the new anchor.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use testbed::k8s::K8sEnv;
use testbed::k8s::k8s_openapi::api::core::v1::{ConfigMap, Secret};
use testbed::k8s::kube::api::Api;

use super::common::kube::{Tenant, kubectl, kubectl_stdin};
use super::common::stand_ins::Mesh;
use super::{fingerprint, killed_once_installed, rotate, rotate_cmd, secret, until};

const TRUST_ROOTS: &str = "linkerd-identity-trust-roots";

/// The anchors' fingerprints in the trust-roots ConfigMap.
fn anchors(t: &Tenant) -> Result<Vec<String>> {
    let cm =
        t.rt.block_on(Api::<ConfigMap>::namespaced(t.client.clone(), &t.cp_ns).get(TRUST_ROOTS))?;
    let pem = cm
        .data
        .as_ref()
        .and_then(|d| d.get("ca-bundle.crt"))
        .context("the trust roots ConfigMap has no ca-bundle.crt")?;
    let certs = pki::parse_certs(std::path::Path::new(TRUST_ROOTS), pem.as_bytes())?;
    Ok(certs.iter().map(|c| pki::fingerprint(c)).collect())
}

/// The rotation's phase as its state ConfigMap holds it (None: no state).
fn phase(t: &Tenant) -> Result<Option<String>> {
    let cm = t.rt.block_on(
        Api::<ConfigMap>::namespaced(t.client.clone(), &t.cp_ns).get_opt("weft-rotation"),
    )?;
    let Some(text) = cm
        .and_then(|c| c.data)
        .and_then(|d| d.get("rotation.json").cloned())
    else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(v["phase"].as_str().map(String::from))
}

fn kept_issuer(t: &Tenant) -> Result<bool> {
    Ok(t.rt
        .block_on(
            Api::<Secret>::namespaced(t.client.clone(), &t.cp_ns).get_opt("weft-rotation-issuer"),
        )?
        .is_some())
}

pub fn rotation(env: &K8sEnv, t: &Tenant, mesh: &Mesh) -> Result<()> {
    let (s, ns) = (&t.s, t.cp_ns.as_str());
    let old = anchors(t)?;
    let (old_issuer_rv, old_issuer) = secret(t)?;
    let ca2 = fingerprint(s, "ca2.crt")?;
    let t0 = Instant::now();

    // A lock another machine holds (renewed just now) refuses.
    let now = testbed::k8s::k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ");
    let lease = format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: weft-rotation, namespace: {ns}}}\nspec: {{holderIdentity: elsewhere/1, leaseDurationSeconds: 30, renewTime: \"{now}\"}}\n"
    );
    kubectl_stdin(env, &["apply"], &lease)?;
    let prepare = ["trust-anchor", "prepare", "--new-anchor", "ca2.crt"];
    let (code, out, _) = rotate(env, ns, s, &prepare);
    println!("prepare while elsewhere/1 holds the lock (exit {code}):\n{out}");
    ensure!(
        code == 1 && out.contains("another trust-anchor rotation is running (elsewhere/1"),
        "{out}"
    );
    ensure!(
        anchors(t)? == old && phase(t)?.is_none(),
        "the refused prepare changed something"
    );
    kubectl(env, &["delete", "lease", "weft-rotation", "-n", ns])?;

    let (code, out, took) = rotate(env, ns, s, &prepare);
    println!("weft rotate trust-anchor prepare (exit {code}, {took:.1?}):\n{out}");
    ensure!(
        code == 0 && out.contains("prepared: every connected proxy trusts both"),
        "{out}"
    );
    let both = anchors(t)?;
    ensure!(
        both.len() == old.len() + 1 && both.contains(&ca2),
        "{both:?}"
    );
    ensure!(phase(t)?.as_deref() == Some("prepared"));
    ensure!(
        out.contains("weft rotate trust-anchor activate --issuer-cert issuer-new.crt")
            && out.contains(&format!("--namespace {ns}")),
        "the next step is not printed for the cluster: {out}"
    );

    // Killed once it wrote the Secret; re-run, it takes the lock over and resumes.
    let activate = [
        "trust-anchor",
        "activate",
        "--issuer-cert",
        "issuer2.crt",
        "--issuer-key",
        "issuer2.key",
    ];
    killed_once_installed(rotate_cmd(env, ns, s, &activate))?;
    ensure!(
        kept_issuer(t)?,
        "activate kept no copy of the issuer in force"
    );
    let (code, out, took) = rotate(env, ns, s, &activate);
    println!("activate re-run (exit {code}, {took:.1?}):\n{out}");
    ensure!(
        code == 0
            && out.contains("took over the rotation lock of")
            && out.contains("resuming activate")
            && out.contains("activated:"),
        "{out}"
    );
    let issuer2 = fingerprint(s, "issuer2.crt")?;
    until(env, mesh, "every proxy's leaf under ca2", |v| {
        v.proxies
            .iter()
            .all(|p| p.anchor_sha256 == ca2 && p.issuer_sha256 == issuer2)
    })?;

    let (code, out, _) = rotate(env, ns, s, &["trust-anchor", "status", "-o", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("status -o json (exit {code}): {out}"))?;
    ensure!(
        code == 0 && doc["phase"] == "activated" && doc["blocked_by"] == serde_json::json!([]),
        "{doc:#}"
    );

    // Abort from activated: the issuer activate kept goes back in force.
    let (code, out, took) = rotate(env, ns, s, &["trust-anchor", "abort"]);
    println!("abort from activated (exit {code}, {took:.1?}):\n{out}");
    ensure!(code == 0 && out.contains("back to phase prepared"), "{out}");
    ensure!(
        secret(t)?.1 == old_issuer,
        "abort did not put the previous issuer back"
    );
    ensure!(secret(t)?.0 != old_issuer_rv);
    let old_fp = pki::fingerprint(&pki::parse_certs(std::path::Path::new("old"), &old_issuer)?[0]);
    until(env, mesh, "every proxy back on the previous issuer", |v| {
        v.proxies.iter().all(|p| p.issuer_sha256 == old_fp)
    })?;
    ensure!(
        anchors(t)? == both,
        "abort from activated must keep both anchors"
    );

    let (code, out, took) = rotate(env, ns, s, &activate);
    println!("activate again (exit {code}, {took:.1?}):\n{out}");
    ensure!(code == 0 && out.contains("activated:"), "{out}");

    let (code, out, took) = rotate(env, ns, s, &["trust-anchor", "retire"]);
    println!("retire (exit {code}, {took:.1?}):\n{out}");
    ensure!(
        code == 0 && out.contains("retired: the bundle holds only the new anchor"),
        "{out}"
    );
    ensure!(
        anchors(t)? == vec![ca2.clone()],
        "the ConfigMap holds more than ca2"
    );
    ensure!(phase(t)?.as_deref() == Some("retired"));
    ensure!(!kept_issuer(t)?, "retire left the kept issuer behind");
    let (code, out, _) = rotate(env, ns, s, &["trust-anchor", "status"]);
    println!("status after retire (exit {code}):\n{out}");
    ensure!(code == 0 && out.starts_with("phase: retired"), "{out}");
    println!(
        "timing: trust-anchor rotation on the cluster (lock refusal, prepare, killed and resumed activate, abort, activate, retire) {:.1?}",
        t0.elapsed()
    );
    Ok(())
}
