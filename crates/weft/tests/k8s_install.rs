//! `weft install` on a real API server: the CRDs, then the control plane,
//! applied with strict field validation and no warnings; a server dry run
//! and a second apply change nothing; `weft uninstall` deletes it all.
//!
//! Needs root (network namespaces) and the testenv/k8s binaries (built if
//! missing); skips loudly without them unless WEFT_REQUIRE_K8S=1.

mod common;

use anyhow::{Result, ensure};
use common::kube::{Tenant, Uninstall, kubectl_stdin, tenant};
use testbed::k8s::K8sEnv;

/// Each object's kind, name and resourceVersion, one a line.
const VERSIONS: &str =
    "jsonpath={range .items[*]}{.kind}/{.metadata.name}={.metadata.resourceVersion}{\"\\n\"}{end}";

#[test]
fn install_applies_cleanly_and_a_second_apply_changes_nothing() -> Result<()> {
    let Some(env) = K8sEnv::shared("install_applies_cleanly_and_a_second_apply_changes_nothing")?
    else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let Tenant { cp_ns, s, .. } = tenant("install", &[], &env)?;
    // A namespace install creates itself (the tenant's exists already).
    let ns = format!("{cp_ns}-i");

    let crds = s.weft(&["install", "--crds"]).ok();
    kubectl_stdin(&env, &["apply", "--validate=strict"], &crds.stdout)?;

    let install = s
        .weft(&[
            "install",
            "--identity-trust-anchors-file",
            "ca.crt",
            "--identity-issuer-certificate-file",
            "issuer.crt",
            "--identity-issuer-key-file",
            "issuer.key",
            "--namespace",
            &ns,
            "--ha",
        ])
        .ok();
    let uninstall = s.weft(&["uninstall", "--namespace", &ns]).ok();
    let _cleanup = Uninstall {
        env: &env,
        manifest: uninstall.stdout.clone(),
    };

    let (out, err) = kubectl_stdin(&env, &["apply", "--validate=strict"], &install.stdout)?;
    println!("first apply:\n{out}");
    ensure!(!err.to_lowercase().contains("warning"), "warnings: {err}");
    let objects = out.lines().count();
    ensure!(objects == 15, "15 objects applied:\n{out}");

    let (dry, err) = kubectl_stdin(
        &env,
        &["apply", "--dry-run=server", "--validate=strict"],
        &install.stdout,
    )?;
    ensure!(!err.to_lowercase().contains("warning"), "warnings: {err}");
    println!("server dry run:\n{dry}");

    let versions = || kubectl_stdin(&env, &["get", "-o", VERSIONS], &install.stdout).map(|r| r.0);
    let before = versions()?;
    let (again, err) = kubectl_stdin(&env, &["apply", "--validate=strict"], &install.stdout)?;
    ensure!(!err.to_lowercase().contains("warning"), "warnings: {err}");
    let after = versions()?;
    ensure!(
        before == after && before.lines().count() == objects,
        "a second apply changed objects:\nbefore\n{before}\nafter\n{after}"
    );
    // kubectl itself says unchanged for each, except a PodDisruptionBudget:
    // its selector's patch strategy is `replace`, so kubectl always sends
    // it and says "configured" though the object stays as it was (same
    // resourceVersion, checked above).
    let changed: Vec<&str> = again
        .lines()
        .filter(|l| !l.ends_with(" unchanged") && !l.starts_with("poddisruptionbudget"))
        .collect();
    ensure!(
        changed.is_empty() && again.lines().count() == objects,
        "a second apply changed: {changed:?}\n{again}"
    );
    println!("second apply:\n{again}");

    // What uninstall prints names exactly what exists (a dry-run delete
    // finds every object).
    let (deleted, err) = kubectl_stdin(&env, &["delete", "--dry-run=server"], &uninstall.stdout)?;
    ensure!(
        deleted.lines().count() == objects && !err.contains("NotFound"),
        "uninstall:\n{deleted}\n{err}"
    );
    Ok(())
}
