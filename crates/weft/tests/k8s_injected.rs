//! Injected pods run for real. `weft install` is applied (its webhook at a
//! local control-plane process, as envtest does), Deployments are created
//! in a namespace annotated `linkerd.io/inject: enabled`, and for the pods
//! kwok reports Running, network-namespace stand-ins run what the API
//! server stored: the `weft-init` init container and the `weft-proxy`
//! sidecar with the spec's argv, environment (downward API resolved from
//! the pod object), user and capabilities, their volumes materialised as a
//! kubelet does (the projected token by TokenRequest bound to the pod, the
//! trust-roots ConfigMap's key as a file, mounted at the spec's paths in a
//! private mount namespace; see `common::kubelet` for what stands in for
//! cluster DNS). The frontend reaches the backend over mTLS under the
//! guide's policy (steps 11–12) applied through the API; the intruder is
//! denied. `weft tap deploy/backend` and `weft identity deploy/backend`
//! work through the API server (steps 8–10, see k8s_injected/look.rs).
//! Then the anchors rotate through the ConfigMap (old+new, the
//! issuer Secret switched, the old anchor retired), the mounted file
//! follows the ConfigMap as the kubelet's does, and the backend's sidecar,
//! SIGKILLed and started again with the same spec, becomes ready (its
//! probes as the spec gives them) and serves the frontend. Last, an
//! emergency re-root through the ConfigMap and the Secret brings every
//! proxy back (k8s_injected/emergency.rs).
//!
//! Its own test binary: the webhook configuration is cluster-wide.
//! Needs root (network namespaces) and the testenv/k8s binaries (built if
//! missing); skips loudly without them unless WEFT_REQUIRE_K8S=1.

mod common;
#[path = "k8s_injected/emergency.rs"]
mod emergency;
#[path = "k8s_injected/look.rs"]
mod look;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::injector::{self, point_at};
use common::kube::{Tenant, apply, guide_policy, identity, kubectl, tenant};
use common::netmesh::get_in;
use common::pod_spec::{self, Image};
use common::rotation;
use common::stand_in_app::workloads;
use common::stand_ins::Mesh;
use control_plane::fleet::FleetView;
use serde_json::json;
use testbed::k8s::K8sEnv;
use testbed::k8s::k8s_openapi::api::core::v1::{ConfigMap, Secret};
use testbed::k8s::kube::Client;
use testbed::k8s::kube::api::{Api, Patch, PatchParams};

const APPS: [&str; 3] = ["backend", "frontend", "intruder"];
const DEADLINE: Duration = Duration::from_secs(60);
const ROOTS_VOLUME: &str = inject::sidecar::TRUST_ROOTS_VOLUME;
const ROOTS_KEY: &str = inject::sidecar::TRUST_ROOTS_KEY;

fn fleet(env: &K8sEnv, mesh: &Mesh) -> Option<FleetView> {
    let (code, body) = get_in(&env.cp().ns, mesh.cp_addr("admin listening on"), "/fleet")?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// Polls (the kubelet's ConfigMap sync at each pass) until `ok` holds for
/// the fleet and the backend's mounted anchors; returns how long it took.
fn until(
    env: &K8sEnv,
    mesh: &mut Mesh,
    what: &str,
    ok: impl Fn(&FleetView, &str) -> bool,
) -> Result<(FleetView, Duration)> {
    let t0 = Instant::now();
    loop {
        mesh.sync_volumes()?;
        let mounted = mesh.volume_file("backend", ROOTS_VOLUME, ROOTS_KEY)?;
        let v = fleet(env, mesh);
        if let Some(v) = v.as_ref().filter(|v| ok(v, &mounted)) {
            return Ok((v.clone(), t0.elapsed()));
        }
        if t0.elapsed() > DEADLINE {
            bail!(
                "{what}: not within {DEADLINE:?}; fleet {v:#?}\nmounted anchors:\n{mounted}\n{}",
                mesh.proxy_logs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn all_current(v: &FleetView) -> bool {
    v.proxies.len() == APPS.len()
        && v.proxies
            .iter()
            .all(|p| p.state == "connected" && p.bundle_current)
}

fn generation(v: &FleetView) -> u64 {
    v.bundle.as_ref().map_or(0, |b| b.generation)
}

fn strip(pem: &str) -> String {
    pem.split_whitespace().collect()
}

/// The operator's trust-roots ConfigMap set to `pem`, as `kubectl edit` would.
async fn set_anchors(client: &Client, cp_ns: &str, pem: &str) -> Result<()> {
    Api::<ConfigMap>::namespaced(client.clone(), cp_ns)
        .patch(
            "linkerd-identity-trust-roots",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {ROOTS_KEY: pem}})),
        )
        .await?;
    Ok(())
}

async fn set_issuer(client: &Client, cp_ns: &str, crt: &str, key: &str) -> Result<()> {
    Api::<Secret>::namespaced(client.clone(), cp_ns)
        .patch(
            "linkerd-identity-issuer",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"tls.crt": crt, "tls.key": key}})),
        )
        .await?;
    Ok(())
}

#[test]
fn injected_pods_run_their_spec_under_the_policy_and_restart_after_an_anchor_rotation() -> Result<()>
{
    let Some(env) = K8sEnv::shared(
        "injected_pods_run_their_spec_under_the_policy_and_restart_after_an_anchor_rotation",
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
        s,
    } = tenant("inj", &APPS, &env)?;
    let t0 = Instant::now();
    let _cleanup = injector::install(&env, &s, &cp_ns)?;
    apply(&env, &s, "policy.yaml", &guide_policy(&ns)?)?;
    let mut mesh = Mesh::start_installed(
        &env,
        &rt,
        client.clone(),
        &s,
        (&ns, &cp_ns),
        &injector::WEBHOOK_FLAGS,
    )?;
    rt.block_on(point_at(&client, mesh.cp_addr("webhook listening on")))?;
    mesh.wait_cp_line("webhook serving certificate issued")?;
    println!(
        "timing: installed, control plane serving the webhook after {:.1?}",
        t0.elapsed()
    );

    // Deployments in an annotated namespace; the webhook meshes their pods.
    kubectl(
        &env,
        &["annotate", "namespace", &ns, "linkerd.io/inject=enabled"],
    )?;
    let plain = workloads(&ns, &cp_ns, &APPS.map(|a| (a, 1))).replace(
        &format!("        linkerd.io/control-plane-ns: {cp_ns}\n"),
        "",
    );
    apply(&env, &s, "workloads.yaml", &plain)?;
    let t1 = Instant::now();
    for app in APPS {
        mesh.until_running(app, 1)?;
    }
    println!(
        "timing: 3 injected pods Running, init container run, sidecars ready and pods Ready in {:.1?}",
        t1.elapsed()
    );
    println!("backend's weft-proxy: {}", mesh.describe("backend")?);

    // The right identities: each proxy certified as its ServiceAccount.
    let (v, _) = until(&env, &mut mesh, "three proxies connected", |v, _| {
        all_current(v)
    })?;
    let ids: BTreeMap<String, String> = v
        .proxies
        .iter()
        .map(|p| (p.workload.clone(), p.identity.to_string()))
        .collect();
    for app in APPS {
        let want = identity(app, &ns, &cp_ns);
        ensure!(
            ids.iter()
                .any(|(w, id)| w.contains(&format!("/{app}-")) && *id == want),
            "no {app} proxy certified as {want}: {ids:?}"
        );
    }
    let svc = SocketAddr::new(mesh.cluster_ip("backend")?, 80);
    let frontend = identity("frontend", &ns, &cp_ns);
    let t2 = Instant::now();
    let first = mesh.poll_get("frontend", svc, |r| r.status == 200)?;
    println!(
        "frontend -> {svc} (Service backend): {first:?} after {:.1?}",
        t2.elapsed()
    );
    ensure!(
        first.client_id == frontend && first.pod.starts_with("backend-"),
        "the backend saw {first:?}, want client {frontend}"
    );
    let denied = mesh.poll_get("intruder", svc, |r| r.status != 0)?;
    println!("intruder -> {svc}: {denied:?}");
    ensure!(denied.status == 403, "intruder got {denied:?}, want 403");

    // Steps 8-10: tap, identity and the chain, through the API server.
    let serial = v
        .proxies
        .iter()
        .find(|p| p.workload.contains("/backend-"))
        .map(|p| p.leaf_serial.clone())
        .context("no backend proxy in the fleet view")?;
    look::look(&env, &mesh, &s, (&ns, &cp_ns), svc, &frontend, &serial)?;

    rotate_then_restart(&env, &rt, &client, &mut mesh, &s, &cp_ns, svc, &frontend)?;
    emergency::re_root(&env, &mut mesh, &s, &cp_ns, (svc, &frontend))?;
    println!("timing: whole test {:.1?}", t0.elapsed());
    Ok(())
}

/// The anchors rotated through the ConfigMap, then the backend's sidecar
/// restarted from its spec with only the new anchor mounted.
#[allow(clippy::too_many_arguments)]
fn rotate_then_restart(
    env: &K8sEnv,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    mesh: &mut Mesh,
    s: &common::Scratch,
    cp_ns: &str,
    svc: SocketAddr,
    frontend: &str,
) -> Result<()> {
    let (v, _) = until(env, mesh, "a bundle in force", |v, _| all_current(v))?;
    let gen1 = generation(&v);
    rotation::new_anchor_and_issuer(s);
    let (a, b) = (s.read("ca.crt"), s.read("ca2.crt"));
    let new_anchor = pki::fingerprint(&pki::load_certs(&s.path("ca2.crt"))?[0]);

    rt.block_on(set_anchors(client, cp_ns, &format!("{a}{b}")))?;
    let both = strip(&format!("{a}{b}"));
    let (v, took) = until(env, mesh, "old+new anchors mounted and pushed", |v, m| {
        strip(m) == both && all_current(v) && generation(v) > gen1
    })?;
    let gen2 = generation(&v);
    println!("1. new anchor: mounted file and every proxy on generation {gen2} after {took:.1?}");

    let (crt, key) = (s.read("issuer2.crt"), s.read("issuer2.key"));
    rt.block_on(set_issuer(client, cp_ns, &crt, &key))?;
    let (_, took) = until(env, mesh, "every leaf under the new anchor", |v, _| {
        v.proxies.len() == APPS.len()
            && v.proxies
                .iter()
                .all(|p| p.issuer_current && p.anchor_sha256 == new_anchor)
    })?;
    println!("2. new issuer: every proxy renewed under the new anchor after {took:.1?}");

    rt.block_on(set_anchors(client, cp_ns, &b))?;
    let (_, took) = until(env, mesh, "old anchor retired everywhere", |v, m| {
        strip(m) == strip(&b) && all_current(v) && generation(v) > gen2
    })?;
    println!(
        "3. old anchor retired: mounted file holds the new anchor only, every proxy current after {took:.1?}"
    );
    mesh.poll_get("frontend", svc, |r| r.status == 200)?;

    // As the kubelet restarts a container: the same spec, the mounted file.
    let took = mesh.restart_sidecar("backend")?;
    println!("timing: backend's sidecar restarted, its probes passed after {took:.1?}");
    let t = Instant::now();
    let r = mesh.poll_get("frontend", svc, |r| r.status == 200)?;
    println!(
        "frontend -> restarted backend: {r:?} after {:.1?}",
        t.elapsed()
    );
    ensure!(r.client_id == frontend, "the backend saw {r:?}");
    let (v, _) = until(env, mesh, "the restarted proxy reports", |v, _| {
        all_current(v)
            && v.proxies
                .iter()
                .all(|p| p.anchor_sha256 == new_anchor && p.anchor_in_bundle)
    })?;
    let backend = v
        .proxies
        .iter()
        .find(|p| p.workload.contains("/backend-"))
        .context("no backend proxy in the fleet")?;
    println!(
        "restarted backend proxy: {} on bundle {:?}",
        backend.identity, backend.bundle
    );
    Ok(())
}

#[test]
fn the_kubelet_stand_in_expands_resolves_and_refuses_what_it_does_not_know() -> Result<()> {
    let env = vec![("A".to_string(), "x".to_string())];
    assert_eq!(pod_spec::expand("$(A).$(B).$$(A)$", &env), "x.$(B).$(A)$");
    let pod =
        json!({"metadata": {"name": "p", "namespace": "n"}, "spec": {"serviceAccountName": "sa"}});
    let images = BTreeMap::from([(
        "i".to_string(),
        Image {
            entrypoint: "/bin/weft".into(),
            uid: 7,
        },
    )]);
    let c = json!({"name": "c", "image": "i", "args": ["proxy", "$(ID)"], "env": [
        {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
        {"name": "ID", "value": "$(SA).$(NS)"}]});
    let got = pod_spec::container(&pod, &c, &images)?;
    assert_eq!(got.argv, ["/bin/weft", "proxy", "sa.$(NS)"]);
    assert_eq!(got.uid, 7);
    for bad in [
        json!({"name": "c", "image": "i", "lifecycle": {}}),
        json!({"name": "c", "image": "other"}),
        json!({"name": "c", "image": "i", "envFrom": []}),
        json!({"name": "c", "image": "i", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {}}}]}),
        json!({"name": "c", "image": "i", "securityContext": {"privileged": true}}),
    ] {
        let e = pod_spec::container(&pod, &bad, &images);
        ensure!(e.is_err(), "{bad} was accepted");
        println!("refused: {:#}", e.err().context("refusal")?);
    }
    let hostpath = json!({"spec": {"volumes": [{"name": "v", "hostPath": {"path": "/"}}]}});
    ensure!(pod_spec::volume(&hostpath, "v").is_err());
    Ok(())
}
