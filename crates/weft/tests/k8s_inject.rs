//! `weft inject --manual` output on a real API server: a meshed Deployment
//! is accepted by `kubectl apply --dry-run=server` (strict field validation)
//! with no warnings, and created for real its pods carry the sidecar.
//!
//! Needs root (network namespaces) and the testenv/k8s binaries (built if
//! missing); skips loudly without them unless WEFT_REQUIRE_K8S=1.

mod common;

use anyhow::{Result, ensure};
use common::kube::{Tenant, tenant};
use common::pipe::{weft, with_stdin};
use testbed::k8s::K8sEnv;
use testbed::k8s::api::{DEADLINE, poll};
use testbed::k8s::k8s_openapi::api::core::v1::Pod;
use testbed::k8s::kube::api::{Api, ListParams};

fn deployment(ns: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
      annotations:
        config.linkerd.io/skip-outbound-ports: \"5432\"
        config.linkerd.io/proxy-cpu-request: 50m
        config.linkerd.io/proxy-memory-limit: 128Mi
    spec:
      serviceAccountName: web
      containers:
      - name: app
        image: app:1
        ports:
        - containerPort: 8080
"
    )
}

#[test]
fn a_manually_injected_deployment_is_accepted_by_the_api_server_without_warnings() -> Result<()> {
    let Some(env) = K8sEnv::shared(
        "a_manually_injected_deployment_is_accepted_by_the_api_server_without_warnings",
    )?
    else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let Tenant {
        rt,
        client,
        ns,
        cp_ns,
        ..
    } = tenant("inject", &["web"], &env)?;
    let injected = weft(
        &["inject", "--manual", "-", "--controller-namespace", &cp_ns],
        &deployment(&ns),
    );
    ensure!(injected.code == 0, "weft inject: {}", injected.stderr);
    println!("weft inject --manual said: {}", injected.stderr.trim());

    let mut apply = env.kubectl();
    apply.args(["apply", "--dry-run=server", "--validate=strict", "-f", "-"]);
    let dry = with_stdin(&mut apply, &injected.stdout);
    ensure!(
        dry.code == 0,
        "refused by the API server: {}\n{}",
        dry.stderr,
        injected.stdout
    );
    ensure!(
        !dry.stderr.to_lowercase().contains("warning"),
        "warnings from the API server: {}",
        dry.stderr
    );
    println!("server dry run: {}", dry.stdout.trim());

    // For real: the ReplicaSet's pod passes pod validation with the
    // native sidecar, and keeps what injection gave it.
    let mut apply = env.kubectl();
    apply.args(["apply", "--validate=strict", "-f", "-"]);
    let created = with_stdin(&mut apply, &injected.stdout);
    ensure!(created.code == 0, "apply: {}", created.stderr);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = rt.block_on(poll("the Deployment's pod", DEADLINE, || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await?;
        Ok(list.items.into_iter().next())
    }))?;
    let spec = pod.spec.unwrap_or_default();
    let inits: Vec<(String, Option<String>)> = spec
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.name, c.restart_policy))
        .collect();
    ensure!(
        inits
            == [
                ("weft-init".to_string(), None),
                ("weft-proxy".to_string(), Some("Always".to_string()))
            ],
        "init containers: {inits:?}"
    );
    let labels = pod.metadata.labels.unwrap_or_default();
    ensure!(
        labels.get("linkerd.io/control-plane-ns") == Some(&cp_ns),
        "labels: {labels:?}"
    );
    Ok(())
}
