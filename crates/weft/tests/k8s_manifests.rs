//! weft's CRDs and RBAC on a real API server: Linkerd's manifests apply
//! unchanged, schema errors are the API server's to refuse (strict field
//! validation), and the control plane's ServiceAccount may do exactly what
//! the shipped rbac.yaml grants (`kubectl auth can-i --list`), no more.
//!
//! Needs root (network namespaces) and the testenv/k8s binaries (built if
//! missing); skips loudly without them unless WEFT_REQUIRE_K8S=1.

mod common;

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use common::kube::{
    Tenant, guide_policy, install_crds, kubectl, least_privilege_kubeconfig, tenant,
};
use testbed::k8s::K8sEnv;

/// `kubectl apply --validate=strict` of `yaml`: Ok(stdout) or Err(stderr).
fn apply_strict(
    env: &K8sEnv,
    s: &common::Scratch,
    name: &str,
    yaml: &str,
) -> Result<std::result::Result<String, String>> {
    let file = s.write(name, yaml);
    let out = env
        .kubectl()
        .args(["apply", "--validate=strict", "-f"])
        .arg(&file)
        .output()?;
    Ok(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

#[test]
fn linkerd_manifests_apply_and_schema_errors_are_refused_strictly() -> Result<()> {
    let Some(env) =
        K8sEnv::shared("linkerd_manifests_apply_and_schema_errors_are_refused_strictly")?
    else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let Tenant { ns, s, .. } = tenant("crd", &[], &env)?;
    install_crds(&env)?;
    let guide = guide_policy(&ns)?;
    let applied = apply_strict(&env, &s, "guide.yaml", &guide)?;
    ensure!(
        applied.is_ok(),
        "the guide's manifests were refused: {applied:?}"
    );

    let server = |spec: &str| {
        format!(
            "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata:\n  name: bad\n  namespace: {ns}\nspec:\n{spec}"
        )
    };
    let cases = [
        (
            "an unknown field",
            server("  podSelector: {}\n  port: 8080\n  portt: 9090\n"),
            "unknown field",
        ),
        (
            "a port of the wrong type",
            server("  podSelector: {}\n  port: [8080]\n"),
            "spec.port",
        ),
        ("a missing selector", server("  port: 8080\n"), "Selector"),
        (
            "an AuthorizationPolicy without targetRef",
            format!(
                "apiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: bad\n  namespace: {ns}\nspec:\n  requiredAuthenticationRefs:\n  - kind: ServiceAccount\n    name: web\n"
            ),
            "targetRef",
        ),
    ];
    for (what, yaml, want) in cases {
        match apply_strict(&env, &s, "bad.yaml", &yaml)? {
            Ok(out) => anyhow::bail!("{what}: accepted by the API server: {out}"),
            Err(e) => {
                println!("{what}: refused: {}", e.lines().next().unwrap_or(""));
                ensure!(
                    e.contains(want),
                    "{what}: refused without naming {want:?}: {e}"
                );
            }
        }
    }
    Ok(())
}

/// One permission: resource (`name.group`), resource names (kubectl lists
/// one name a line, so a grant holds at most one), verbs.
type Grant = (String, BTreeSet<String>, BTreeSet<String>);

/// A rule's grant, one per resource name (as kubectl prints them).
fn per_name(resource: String, names: BTreeSet<String>, verbs: BTreeSet<String>) -> Vec<Grant> {
    if names.is_empty() {
        return vec![(resource, names, verbs)];
    }
    names
        .into_iter()
        .map(|n| (resource.clone(), BTreeSet::from([n]), verbs.clone()))
        .collect()
}

/// The grants rbac.yaml ships to the control plane (its ClusterRole and
/// Role rules; the operator Roles are for people).
fn shipped() -> Result<BTreeSet<Grant>> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(control_plane::k8s_manifests::RBAC).context("rbac.yaml")?;
    let strings = |v: &serde_json::Value, k: &str| -> BTreeSet<String> {
        v.get(k)
            .and_then(|x| x.as_array())
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    };
    let mut out = BTreeSet::new();
    for doc in docs.iter().filter(|d| {
        matches!(
            d.get("kind").and_then(|k| k.as_str()),
            Some("ClusterRole" | "Role")
        ) && d.pointer("/metadata/name").and_then(|n| n.as_str()) == Some("weft-control-plane")
    }) {
        for rule in doc
            .get("rules")
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
        {
            for group in strings(rule, "apiGroups") {
                for resource in strings(rule, "resources") {
                    let name = if group.is_empty() {
                        resource.clone()
                    } else {
                        format!("{resource}.{group}")
                    };
                    out.extend(per_name(
                        name,
                        strings(rule, "resourceNames"),
                        strings(rule, "verbs"),
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// `kubectl auth can-i --list` lines with a resource.
fn listed(text: &str) -> BTreeSet<Grant> {
    let set = |s: &str| -> BTreeSet<String> {
        s.trim_matches(['[', ']'])
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    text.lines()
        .skip(1)
        .flat_map(|line| -> Vec<Grant> {
            let grant = || -> Option<(String, BTreeSet<String>, BTreeSet<String>)> {
                // Resources  [Non-Resource URLs]  [Resource Names]  [Verbs]
                let first = line.find('[')?;
                let resource = line[..first].trim();
                if resource.is_empty() {
                    return None;
                }
                let parts: Vec<&str> = line[first..]
                    .split(']')
                    .map(|p| p.trim().trim_start_matches('['))
                    .collect();
                Some((resource.to_string(), set(parts.get(1)?), set(parts.get(2)?)))
            };
            grant()
                .map(|(r, n, v)| per_name(r, n, v))
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn the_control_planes_service_account_may_do_what_rbac_yaml_ships_and_no_more() -> Result<()> {
    let Some(env) = K8sEnv::shared(
        "the_control_planes_service_account_may_do_what_rbac_yaml_ships_and_no_more",
    )?
    else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let Tenant {
        rt,
        client,
        cp_ns,
        s,
        ..
    } = tenant("rbac", &[], &env)?;
    rt.block_on(least_privilege_kubeconfig(&env, &client, &cp_ns, &s))?;
    let who = format!("system:serviceaccount:{cp_ns}:weft-identity");
    let can = kubectl(
        &env,
        &["auth", "can-i", "--list", "-n", &cp_ns, "--as", &who],
    )?;
    let granted = listed(&can);
    let shipped = shipped()?;
    let missing: Vec<&Grant> = shipped.iter().filter(|g| !granted.contains(*g)).collect();
    ensure!(
        missing.is_empty(),
        "shipped but not granted: {missing:?}\n{can}"
    );
    // Beyond what every authenticated user may do (self reviews), nothing.
    let extra: Vec<&Grant> = granted
        .iter()
        .filter(|g| !shipped.contains(*g) && !g.0.starts_with("selfsubject"))
        .collect();
    ensure!(
        extra.is_empty(),
        "granted but not shipped: {extra:?}\n{can}"
    );
    println!("{} grants, equal to rbac.yaml's:\n{can}", granted.len());
    // Secrets only by name, except create (which names cannot limit).
    for (resource, names, verbs) in &granted {
        if resource == "secrets" {
            ensure!(
                !names.is_empty() || verbs.iter().all(|v| v == "create"),
                "secrets readable without a name: {names:?} {verbs:?}"
            );
        }
    }
    // In another namespace: no Secrets at all.
    let elsewhere = kubectl(
        &env,
        &["auth", "can-i", "--list", "-n", "default", "--as", &who],
    )?;
    ensure!(
        !listed(&elsewhere).iter().any(|g| g.0 == "secrets"),
        "Secrets granted outside the control plane's namespace:\n{elsewhere}"
    );
    Ok(())
}
