//! The API server goes away for 30 s under traffic through weft proxies in
//! stand-in pods: the control plane keeps serving the last state it read
//! (policy streams stay, a fresh stream gets the same policy), no request
//! fails (proxies keep their valid certificates), `/ready` says why; Certify
//! is refused with UNAVAILABLE and the reason, since the issuance record
//! lives in the API and weft never issues a certificate it cannot account
//! for, and `/ready` then names the record. Once the API server is back the
//! control plane catches up and issues again.
//!
//! Its own test binary: stopping the API server must not disturb other
//! tests sharing it. Needs root and the testenv/k8s binaries (built if
//! missing); skips loudly without them unless WEFT_REQUIRE_K8S=1.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use common::kube::{
    Tenant, apply, certify, guide_policy, install_crds, kubectl, tenant, watch_pod_ports,
};
use common::stand_in_app::workloads;
use common::stand_ins::Mesh;
use common::traffic;
use testbed::k8s::K8sEnv;

const OUTAGE: Duration = Duration::from_secs(30);

/// `/ready` of the control plane's admin listener, from the cp namespace.
fn ready(env: &K8sEnv, admin: SocketAddr) -> Result<(u16, String)> {
    Ok(testbed::in_ns(&env.cp().ns, move || {
        common::proc::http_get(admin, "/ready")
    })??)
}

fn server_name(s: &linkerd2_proxy_api::inbound::Server) -> String {
    format!(
        "{}:{}",
        s.labels.get("kind").map(String::as_str).unwrap_or("?"),
        s.labels.get("name").map(String::as_str).unwrap_or("?")
    )
}

#[test]
fn an_api_server_outage_keeps_the_last_state_and_catches_up() -> Result<()> {
    let Some(env) = K8sEnv::shared("an_api_server_outage_keeps_the_last_state_and_catches_up")?
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
    } = tenant("out", &["backend", "frontend"], &env)?;
    install_crds(&env)?;
    let guide = guide_policy(&ns)?;
    apply(&env, &s, "policy.yaml", &guide)?;
    let mut mesh = Mesh::start(&env, &rt, client.clone(), &s, &ns, &cp_ns)?;
    apply(
        &env,
        &s,
        "workloads.yaml",
        &workloads(&ns, &cp_ns, &[("backend", 2), ("frontend", 1)]),
    )?;
    let backends = mesh.until_running("backend", 2)?;
    let pod = backends.first().cloned().unwrap_or_default();
    mesh.until_running("frontend", 1)?;
    let ia = mesh.cp_addr("identity listening on");
    let pa = mesh.cp_addr("policy listening on");
    let admin = mesh.cp_addr("admin listening on");
    let svc = SocketAddr::new(mesh.cluster_ip("backend")?, 80);
    mesh.poll_get("frontend", svc, |r| r.status == 200)?;
    let running = traffic::start(&mesh, "frontend", svc)?;
    traffic::until_spread(&mut mesh, &running.traffic, &backends)?;
    certify(&env, &s, ia, "backend", &ns, &cp_ns)?;
    let mut w = watch_pod_ports(&env, &s, pa, (&ns, &pod), &cp_ns, &[8080])?;
    ensure!(server_name(w.server(8080)) == "server:backend-server");
    let (code, body) = ready(&env, admin)?;
    ensure!(
        code == 200 && body.trim() == "ready",
        "before: {code} {body}"
    );

    let stopped = env.stop_api_server()?;
    let t0 = Instant::now();
    // /ready says why, and stays 200 (every replica would fail together).
    let noticed = loop {
        let (code, body) = ready(&env, admin)?;
        if body.contains("serving the last state read from the Kubernetes API") {
            ensure!(
                code == 200,
                "during the outage /ready answered {code}: {body}"
            );
            println!("outage noticed after {:.1?}: {}", t0.elapsed(), body.trim());
            break t0.elapsed();
        }
        ensure!(
            t0.elapsed() < OUTAGE,
            "/ready did not say the API is unreachable within {OUTAGE:?}: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // While it lasts: Certify is refused with the reason (the record cannot
    // be written), a fresh WatchPort gets the policy in force, and the open
    // stream stays.
    let t1 = Instant::now();
    let refused = match certify(&env, &s, ia, "frontend", &ns, &cp_ns) {
        Ok(()) => anyhow::bail!("a certificate was issued while the record could not be written"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        refused.contains("Unavailable") && refused.contains("cannot record the certificate"),
        "Certify during the outage: {refused}"
    );
    println!(
        "Certify during the outage refused after {:.1?}: {}",
        t1.elapsed(),
        refused.lines().last().unwrap_or_default()
    );
    let fresh = watch_pod_ports(&env, &s, pa, (&ns, &pod), &cp_ns, &[8080])?;
    ensure!(
        server_name(fresh.server(8080)) == "server:backend-server",
        "during the outage a fresh WatchPort got {}",
        server_name(fresh.server(8080))
    );
    // /ready names the record until it can be written again.
    while t0.elapsed() < OUTAGE {
        let (code, body) = ready(&env, admin)?;
        ensure!(
            code == 503 && body.contains("issuance record"),
            "during the outage, after a refused Certify, /ready answered {code}: {body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("/ready during the outage: {}", ready(&env, admin)?.1.trim());
    let back = stopped.restart()?;
    println!(
        "API server stopped for {:.1?} (noticed after {noticed:.1?}); ready again {back:.1?} after its restart",
        t0.elapsed()
    );
    let t2 = Instant::now();
    loop {
        let (_, body) = ready(&env, admin)?;
        if body.trim() == "ready" {
            println!(
                "control plane caught up {:.1?} after the restart",
                t2.elapsed()
            );
            break;
        }
        ensure!(
            t2.elapsed() < Duration::from_secs(60),
            "/ready still says {body} 60s after the API server came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Issuing again.
    let t3 = Instant::now();
    certify(&env, &s, ia, "frontend", &ns, &cp_ns)?;
    println!("Certify after the outage took {:.1?}", t3.elapsed());
    // A change made now reaches the stream opened before the outage.
    kubectl(
        &env,
        &[
            "delete",
            "-n",
            &ns,
            "servers.policy.linkerd.io",
            "backend-server",
        ],
    )?;
    let took = w.wait(8080, "the default once the Server is deleted", |srv| {
        srv.labels.get("kind").map(String::as_str) == Some("default")
    })?;
    println!("Server deleted after the outage -> WatchPort update in {took:.1?}");
    // Through the outage and after it, every request went through.
    traffic::until_spread(&mut mesh, &running.traffic, &backends)?;
    let t = running.stop()?;
    println!("traffic through the outage: {}", t.summary());
    ensure!(t.failed.is_empty(), "failed requests: {:?}", t.failed);
    ensure!(t.total() > 500, "too few requests to judge: {}", t.total());
    Ok(())
}
