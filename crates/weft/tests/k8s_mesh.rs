//! The mesh on Kubernetes end to end: for pods kwok runs, network-namespace
//! stand-ins with the pods' IPs run `weft init` and `weft proxy` with the
//! pod's projected token (TokenRequest, bound to the pod) and the workload
//! and identity the injector would give them. A client calls a Service's
//! cluster IP (there is no kube-proxy: only the proxy routes it) while its
//! Deployment scales 3 → 1 → 3, under the guide's policy (steps 11–12).
//! One kept-alive app connection (HTTP/1.1 or HTTP/2) reaches every
//! replica: the client proxy balances per request.
//!
//! Needs root (network namespaces) and the testenv/k8s binaries (built if
//! missing); skips loudly without them unless WEFT_REQUIRE_K8S=1.

mod common;

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{Result, ensure};
use common::kube::{Tenant, apply, guide_policy, identity, install_crds, kubectl, tenant};
use common::stand_in_app::workloads;
use common::stand_ins::Mesh;
use common::traffic;
use testbed::http_app::Proto;
use testbed::k8s::K8sEnv;

/// The guide's policy through the API, a client calling a Service's cluster
/// IP while the Deployment behind it scales 3 → 1 → 3 with 0 failed
/// requests, every ready pod reached, identities as the policy names them;
/// another identity denied; the MeshTLSAuthentication deleted → denied live.
#[test]
fn proxies_in_stand_ins_follow_scaling_and_policy() -> Result<()> {
    let Some(env) = K8sEnv::shared("proxies_in_stand_ins_follow_scaling_and_policy")? else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let Tenant {
        rt,
        client,
        ns,
        cp_ns,
        s,
    } = tenant("mesh", &["backend", "frontend", "intruder"], &env)?;
    install_crds(&env)?;
    apply(&env, &s, "policy.yaml", &guide_policy(&ns)?)?;
    let mut mesh = Mesh::start(&env, &rt, client.clone(), &s, &ns, &cp_ns)?;
    apply(
        &env,
        &s,
        "workloads.yaml",
        &workloads(
            &ns,
            &cp_ns,
            &[("backend", 3), ("frontend", 1), ("intruder", 1)],
        ),
    )?;
    let t0 = Instant::now();
    let ready = mesh.until_running("backend", 3)?;
    mesh.until_running("frontend", 1)?;
    mesh.until_running("intruder", 1)?;
    println!(
        "timing: 5 pods Running, their stand-ins' proxies certified and the pods Ready in {:.1?}",
        t0.elapsed()
    );
    let cluster_ip = mesh.cluster_ip("backend")?;
    let svc = std::net::SocketAddr::new(cluster_ip, 80);
    let frontend = identity("frontend", &ns, &cp_ns);

    // First contact: the backend saw the frontend's identity.
    let t1 = Instant::now();
    let first = mesh.poll_get("frontend", svc, |r| r.status == 200)?;
    println!(
        "frontend -> {svc} (Service backend): {first:?} after {:.1?}",
        t1.elapsed()
    );
    ensure!(
        first.client_id == frontend,
        "the backend saw client {:?}, want {frontend}",
        first.client_id
    );
    let denied = mesh.poll_get("intruder", svc, |r| r.status != 0)?;
    println!("intruder -> {svc}: {denied:?}");
    ensure!(
        denied.status == 403,
        "intruder answered {denied:?}, want 403"
    );

    let running = traffic::start(&mesh, "frontend", svc)?;
    traffic::until_spread(&mut mesh, &running.traffic, &ready)?;
    println!("3 replicas: requests reached {ready:?}");
    // Balanced per request, not per connection: one kept-alive app
    // connection (HTTP/1.1, and HTTP/2 as gRPC uses) reaches every replica.
    for proto in [Proto::H1, Proto::H2] {
        let pods = traffic::one_connection(&mesh, "frontend", svc, proto, 30)?;
        let reached: BTreeSet<String> = pods.iter().cloned().collect();
        println!("one {proto:?} connection, 30 requests: answered by {reached:?}");
        ensure!(
            reached == ready,
            "30 requests on one {proto:?} connection were answered by {reached:?}, want every replica {ready:?}: {pods:?}"
        );
    }
    for replicas in [1usize, 3] {
        let t = Instant::now();
        kubectl(
            &env,
            &[
                "scale",
                "-n",
                &ns,
                "deployment/backend",
                &format!("--replicas={replicas}"),
            ],
        )?;
        let now = mesh.until_running("backend", replicas)?;
        traffic::until_spread(&mut mesh, &running.traffic, &now)?;
        println!(
            "{replicas} replicas: requests reached {now:?}, {:.1?} after the scale",
            t.elapsed()
        );
    }
    let t = running.stop()?;
    println!("traffic: {}", t.summary());
    ensure!(
        t.failed.is_empty(),
        "failed requests: {:?}\nthe frontend proxy's refusals and warnings:\n{}\n{}",
        t.failed,
        mesh.proxy_lines("frontend", "refused").join("\n"),
        mesh.proxy_lines("frontend", "WARN").join("\n"),
    );
    ensure!(t.total() > 100, "too few requests to judge: {}", t.total());

    // The policy is live: without the MeshTLSAuthentication, denied.
    let t2 = Instant::now();
    kubectl(
        &env,
        &["delete", "-n", &ns, "meshtlsauthentication/frontend-sa"],
    )?;
    let after = mesh.poll_get("frontend", svc, |r| r.status == 403)?;
    println!(
        "MeshTLSAuthentication deleted: frontend -> {svc} {} after {:.1?}",
        after.status,
        t2.elapsed()
    );
    Ok(())
}
