//! A control-plane replica that offers an older trust bundle than the one a
//! proxy holds is a stale server, not a rollback: the proxy leaves it for
//! another replica, keeps its bundle (and certificate) in force, says so in
//! its log and metrics, and settles on an up-to-date replica once one
//! answers. Two standalone control planes in ports mode (no root): A at
//! bundle generation 2, B (its own state directory) at generation 1.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Scratch;
use common::mesh::{free_port, spawn_app, start_proxy, workload};
use common::proc::{Proc, http_get, metric, poll};
use control_plane::fleet::FleetView;

const DEADLINE: Duration = Duration::from_secs(30);

/// A standalone control plane on fixed loopback ports (identity,
/// destination, policy, admin) with state directory `state`.
fn start_cp(s: &Scratch, ports: &[u16; 4], state: &str) -> Proc {
    let a: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let cp = s.control_plane(&[
        "--resources",
        "resources",
        "--reread-interval",
        "1s",
        "--state-dir",
        state,
        "--identity-addr",
        &a[0],
        "--destination-addr",
        &a[1],
        "--policy-addr",
        &a[2],
        "--admin-addr",
        &a[3],
    ]);
    let admin = cp.addr("admin listening on");
    poll("control plane ready", DEADLINE, || {
        matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
    });
    cp
}

fn fleet(admin: SocketAddr) -> Option<FleetView> {
    let (code, body) = http_get(admin, "/fleet").ok()?;
    (code == 200).then(|| serde_json::from_str(&body).expect("fleet JSON"))
}

fn generation(admin: SocketAddr) -> Option<u64> {
    fleet(admin)?.bundle.map(|b| b.generation)
}

fn proxy_metric(admin: SocketAddr, series: &str) -> Option<f64> {
    let (_, m) = http_get(admin, "/metrics").ok()?;
    metric(&m, series)
}

#[test]
fn a_replica_with_an_older_bundle_is_left_for_another_and_the_bundle_kept() {
    let s = Scratch::new();
    s.guide_material();
    let app = spawn_app();
    let be_in = free_port();
    std::fs::create_dir(s.path("resources")).unwrap();
    s.write(
        "resources/workloads.yaml",
        workload("backend", app, be_in, ""),
    );
    let pa = [free_port(), free_port(), free_port(), free_port()];
    let pb = [free_port(), free_port(), free_port(), free_port()];
    let (admin_a, admin_b) = (
        SocketAddr::from(([127, 0, 0, 1], pa[3])),
        SocketAddr::from(([127, 0, 0, 1], pb[3])),
    );
    let mut a = Some(start_cp(&s, &pa, "state"));
    // A second anchor: A moves to generation 2.
    common::rotation::new_anchor_and_issuer(&s);
    let both = format!("{}{}", s.read("ca.crt"), s.read("ca2.crt"));
    s.write("ca1.crt", s.read("ca.crt"));
    s.replace("ca.crt", &both);
    poll("A serves generation 2", DEADLINE, || {
        (generation(admin_a)? == 2).then_some(())
    });

    // The proxy knows both replicas' destination services; B is not up
    // yet, so its mesh stream lands on A and applies generation 2.
    let dest = format!("127.0.0.1:{},127.0.0.1:{}", pa[1], pb[1]);
    let proxy = start_proxy(
        &s,
        "backend",
        be_in,
        a.as_ref().unwrap(),
        &[],
        &[
            "--trust-anchors-file",
            "ca1.crt",
            "--destination-addr",
            &dest,
        ],
    );
    let padmin = proxy.addr("admin listening on");
    poll("the proxy applies generation 2 from A", DEADLINE, || {
        (proxy_metric(padmin, "trust_bundle_generation")? == 2.0).then_some(())
    });

    // B starts from its own state: the same anchors, generation 1.
    let _b = start_cp(&s, &pb, "state-b");
    poll("B serves generation 1", DEADLINE, || {
        (generation(admin_b)? == 1).then_some(())
    });

    // A goes: the proxy reconnects, finds B stale, never applies it.
    drop(a.take());
    let killed = Instant::now();
    let line = proxy.wait_for_line("a stale replica", DEADLINE);
    eprintln!(
        "stale replica noticed {:.1?} after A went: {line}",
        killed.elapsed()
    );
    assert!(
        line.contains("generation 1") && line.contains("generation 2"),
        "the log names both generations: {line}"
    );
    assert!(
        line.contains(&format!("127.0.0.1:{}", pb[1])),
        "the log names B: {line}"
    );
    poll("the stale metric counts B", DEADLINE, || {
        (proxy_metric(padmin, "control_plane_stale_total")? >= 1.0).then_some(())
    });
    assert_eq!(
        proxy_metric(padmin, "trust_bundle_generation"),
        Some(2.0),
        "the bundle in force is kept"
    );
    assert_eq!(
        proxy_metric(padmin, "trust_bundle_refusals_total{reason=\"older\"}"),
        None,
        "a stale replica is left, not judged as a rollback"
    );
    assert!(
        matches!(http_get(padmin, "/ready"), Ok((200, _))),
        "the certificate stays in force"
    );
    assert!(
        !proxy
            .output()
            .lines()
            .any(|l| l.contains("trust bundle applied") && l.contains("generation=1 ")),
        "generation 1 was applied:\n{}",
        proxy.output()
    );

    // A is back (its state: generation 2): the proxy settles there.
    let t = Instant::now();
    let _a = start_cp(&s, &pa, "state");
    poll("the proxy connected to A again", DEADLINE, || {
        let v = fleet(admin_a)?;
        v.proxies
            .iter()
            .any(|p| p.workload == "demo/backend" && p.state == "connected" && p.bundle_current)
            .then_some(())
    });
    eprintln!(
        "reconnected to the up-to-date replica {:.1?} after it came back",
        t.elapsed()
    );
    assert_eq!(
        proxy_metric(padmin, "trust_bundle_generation"),
        Some(2.0),
        "never backwards"
    );
}
