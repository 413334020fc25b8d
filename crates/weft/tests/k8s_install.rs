//! `weft install` on a real API server: the CRDs, then the control plane,
//! applied with strict field validation and no warnings; a server dry run
//! and a second apply change nothing; `weft uninstall` deletes it all.
//! After a rotation, install refuses to print the identity objects again
//! and `weft upgrade` applies cleanly without touching them.
//!
//! Needs root (network namespaces) and the testenv/k8s binaries (built if
//! missing); skips loudly without them unless WEFT_REQUIRE_K8S=1.

mod common;

use anyhow::{Result, ensure};
use common::kube::{Installed, Tenant, kubectl, kubectl_stdin, tenant, weft_admin, weft_install};
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

    let Installed {
        manifest: install,
        uninstall,
    } = weft_install(&env, &s, &ns, &["--ha"])?;
    let (out, err) = kubectl_stdin(&env, &["apply", "--validate=strict"], &install)?;
    println!("first apply:\n{out}");
    ensure!(!err.to_lowercase().contains("warning"), "warnings: {err}");
    let objects = out.lines().count();
    ensure!(objects == 18, "18 objects applied:\n{out}");

    let (dry, err) = kubectl_stdin(
        &env,
        &["apply", "--dry-run=server", "--validate=strict"],
        &install,
    )?;
    ensure!(!err.to_lowercase().contains("warning"), "warnings: {err}");
    println!("server dry run:\n{dry}");

    let versions = || kubectl_stdin(&env, &["get", "-o", VERSIONS], &install).map(|r| r.0);
    let before = versions()?;
    let (again, err) = kubectl_stdin(&env, &["apply", "--validate=strict"], &install)?;
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

    rotation_keeps_identity_objects(&env, &s, &ns, objects)?;

    // What uninstall prints names exactly what exists (a dry-run delete
    // finds every object).
    let (deleted, err) = kubectl_stdin(&env, &["delete", "--dry-run=server"], &uninstall.manifest)?;
    ensure!(
        deleted.lines().count() == objects && !err.contains("NotFound"),
        "uninstall:\n{deleted}\n{err}"
    );
    Ok(())
}

/// After a rotation through the API: install refuses to print the identity
/// objects again (applying them would revert it), `--force` prints them,
/// and `weft upgrade` applies cleanly without touching them.
fn rotation_keeps_identity_objects(
    env: &K8sEnv,
    s: &common::Scratch,
    ns: &str,
    objects: usize,
) -> Result<()> {
    let install = |extra: &[&str]| {
        let mut args = vec!["install", "--namespace", ns, "--ha"];
        args.extend(common::GUIDE_FILES);
        args.extend_from_slice(extra);
        weft_admin(env, s, &args)
    };

    // The rotation: a second anchor beside the first, an issuer under it.
    common::rotation::new_anchor_and_issuer(s);
    let bundle = format!("{}{}", s.read("ca.crt"), s.read("ca2.crt"));
    let patch = |kind: &str, name: &str, body: serde_json::Value| {
        kubectl(
            env,
            &[
                "patch",
                kind,
                name,
                "-n",
                ns,
                "--type",
                "merge",
                "-p",
                &body.to_string(),
            ],
        )
    };
    patch(
        "configmap",
        "linkerd-identity-trust-roots",
        serde_json::json!({"data": {"ca-bundle.crt": bundle}}),
    )?;
    patch(
        "secret",
        "linkerd-identity-issuer",
        serde_json::json!({"stringData": {"tls.crt": s.read("issuer2.crt"), "tls.key": s.read("issuer2.key")}}),
    )?;
    let identity_versions = || {
        kubectl(
            env,
            &[
                "get",
                "-n",
                ns,
                "configmap/linkerd-identity-trust-roots",
                "secret/linkerd-identity-issuer",
                "-o",
                VERSIONS,
            ],
        )
    };
    let rotated = identity_versions()?;

    let again = install(&[]);
    ensure!(
        again.code == 2
            && again.stdout.is_empty()
            && again.stderr.contains("ConfigMap")
            && again.stderr.contains("linkerd-identity-issuer")
            && again.stderr.contains("weft upgrade"),
        "install over existing identity objects must refuse and print nothing: {again:?}"
    );
    println!("install after the rotation: {}", again.stderr.trim());
    let forced = install(&["--force"]).ok();
    ensure!(
        forced.stdout.contains("kind: Secret") && forced.stderr.contains("--force"),
        "--force prints the identity objects, with a warning: {}",
        forced.stderr
    );

    let upgrade = weft_admin(env, s, &["upgrade", "--namespace", ns]).ok();
    let (names, _) = kubectl_stdin(
        env,
        &["apply", "--dry-run=client", "-o", "name"],
        &upgrade.stdout,
    )?;
    ensure!(
        !names.contains("configmap/linkerd-identity-trust-roots")
            && !names.contains("secret/")
            && upgrade
                .stderr
                .trim()
                .lines()
                .all(|l| l.starts_with("note:")),
        "upgrade prints no identity object and no warning about the rotated ones:\n{names}\n{}",
        upgrade.stderr
    );
    let versions = || kubectl_stdin(env, &["get", "-o", VERSIONS], &upgrade.stdout).map(|r| r.0);
    let before = versions()?;
    let (applied, err) = kubectl_stdin(env, &["apply", "--validate=strict"], &upgrade.stdout)?;
    ensure!(!err.to_lowercase().contains("warning"), "warnings: {err}");
    ensure!(
        applied.lines().count() == objects - 2 && before == versions()?,
        "upgrade of an unchanged installation changes nothing:\n{applied}"
    );
    ensure!(
        identity_versions()? == rotated
            && kubectl(
                env,
                &[
                    "get",
                    "-n",
                    ns,
                    "configmap/linkerd-identity-trust-roots",
                    "-o",
                    "jsonpath={.data.ca-bundle\\.crt}"
                ]
            )? == bundle,
        "the rotated identity objects are kept"
    );
    println!("upgrade applied:\n{applied}");

    let newer = weft_admin(
        env,
        s,
        &["upgrade", "--namespace", ns, "--image", "weft:next"],
    )
    .ok();
    let (applied, _) = kubectl_stdin(env, &["apply", "--validate=strict"], &newer.stdout)?;
    let changed: Vec<&str> = applied
        .lines()
        .filter(|l| !l.ends_with(" unchanged") && !l.starts_with("poddisruptionbudget"))
        .collect();
    ensure!(
        changed
            == [
                "configmap/weft-config configured",
                "deployment.apps/weft-control-plane configured"
            ],
        "upgrade --image changes the Deployment (and the record of the install) only: {applied}"
    );

    let missing = weft_admin(env, s, &["upgrade", "--namespace", "kube-public"]);
    ensure!(
        missing.code == 2 && missing.stdout.is_empty() && missing.stderr.contains("not installed"),
        "upgrade where weft is not installed names it: {missing:?}"
    );
    Ok(())
}
