//! `weft install` applied to the test cluster with its webhook pointed at a
//! local control-plane process (`--webhook-url`, as envtest does): what the
//! injector tests share.

use std::net::SocketAddr;

use anyhow::{Result, ensure};
use serde_json::{Value, json};
use testbed::k8s::K8sEnv;
use testbed::k8s::k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use testbed::k8s::kube::Client;
use testbed::k8s::kube::api::{Api, Patch, PatchParams};

use super::Scratch;
use super::kube::{Uninstall, control_plane_with, kubectl, kubectl_stdin, weft_install};
use super::proc::Proc;

pub const CONFIGURATION: &str = "weft-injector";

/// The control-plane flags of a replica serving the webhook on the cp
/// namespace's loopback (where the API server calls it).
pub const WEBHOOK_FLAGS: [&str; 4] = [
    "--webhook-addr",
    "127.0.0.1:0",
    "--webhook-name",
    "127.0.0.1",
];

/// `weft install --crds` and `weft install` (the guide's anchor and issuer,
/// namespace `cp_ns`, the webhook at a placeholder URL until a replica
/// listens) applied strictly; the guard deletes it all again.
pub fn install<'a>(env: &'a K8sEnv, s: &Scratch, cp_ns: &str) -> Result<Uninstall<'a>> {
    let installed = weft_install(
        env,
        s,
        cp_ns,
        &["--webhook-url", "https://127.0.0.1:1/inject"],
    )?;
    kubectl_stdin(env, &["apply", "--validate=strict"], &installed.manifest)?;
    Ok(installed.uninstall)
}

/// A control plane serving the injector: its process, its scratch
/// directory and its webhook address.
pub struct Replica {
    pub proc: Proc,
    pub webhook: SocketAddr,
    _s: Scratch,
}

/// A control plane serving the injector on the cp namespace's loopback (a
/// scratch directory of its own, the anchors copied), `extra` flags added.
pub fn webhook_replica(
    env: &K8sEnv,
    s: &Scratch,
    cp_ns: &str,
    kubeconfig: &std::path::Path,
    extra: &[&str],
) -> Replica {
    let own = Scratch::new();
    std::fs::copy(s.path("ca.crt"), own.path("ca.crt")).ok();
    let proc = control_plane_with(
        env,
        &own,
        cp_ns,
        kubeconfig,
        &[&WEBHOOK_FLAGS[..], extra].concat(),
    );
    let webhook = proc.addr("webhook listening on");
    Replica {
        proc,
        webhook,
        _s: own,
    }
}

pub fn url(addr: SocketAddr) -> String {
    format!("https://{addr}/inject")
}

/// Points every webhook of the configuration at `addr`, touching nothing
/// else (the caBundle is the control plane's).
pub async fn point_at(client: &Client, addr: SocketAddr) -> Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let ops: Vec<Value> = (0..2)
        .map(|i| json!({"op": "replace", "path": format!("/webhooks/{i}/clientConfig/url"), "value": url(addr)}))
        .collect();
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))?;
    api.patch(
        CONFIGURATION,
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await?;
    Ok(())
}

/// kwok forwards port 9990 of the control plane's (fake) pod to `target`
/// (a PortForward object named after the pod): the pod's name.
pub fn forward_admin(env: &K8sEnv, cp_ns: &str, target: SocketAddr) -> Result<String> {
    let pod = kubectl(
        env,
        &[
            "get",
            "pods",
            "-n",
            cp_ns,
            "-l",
            "app.kubernetes.io/name=weft-control-plane",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
    )?;
    ensure!(!pod.is_empty(), "no control-plane pod in {cp_ns}");
    forward_pod(env, cp_ns, &pod, 9990, target)?;
    Ok(pod)
}

/// kwok forwards `port` of pod `ns/pod` to `target`, as a kubelet would
/// to the pod's own port (a PortForward object named after the pod).
pub fn forward_pod(env: &K8sEnv, ns: &str, pod: &str, port: u16, target: SocketAddr) -> Result<()> {
    let yaml = format!(
        "apiVersion: kwok.x-k8s.io/v1alpha1\nkind: PortForward\nmetadata: {{name: {pod}, namespace: {ns}}}\nspec:\n  forwards:\n  - ports: [{port}]\n    target: {{address: \"{}\", port: {}}}\n",
        target.ip(),
        target.port()
    );
    kubectl_stdin(env, &["apply"], &yaml)?;
    Ok(())
}
