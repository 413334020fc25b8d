//! Anchor rotation in network namespaces, as root: five meshed workloads in
//! transparent mode calling each other continuously while a new anchor is
//! added, the issuer switched (renew-now follows) and the old anchor
//! removed; no proxy restarts and no request fails. `weft check --proxy` is
//! followed step by step; a control plane restart and a killed proxy too.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::netmesh::{DEADLINE, NetMesh, app_in, get_in};
use common::rotation::{self, Counters};
use control_plane::fleet::FleetView;
use testbed::{have_root, in_ns};

const PODS: [&str; 5] = ["w1", "w2", "w3", "w4", "w5"];
const APP: u16 = 8080;

fn fleet(m: &NetMesh) -> Option<FleetView> {
    let (code, body) = get_in(&m.ns("cp"), "127.0.0.1:9990".parse().unwrap(), "/fleet")?;
    (code == 200).then(|| serde_json::from_str(&body).expect("fleet JSON"))
}

fn until(m: &NetMesh, what: &str, ok: impl Fn(&FleetView) -> bool) -> (FleetView, Duration) {
    rotation::until(what, DEADLINE, || fleet(m), ok)
}

/// `weft check --proxy` run in the control plane's pod: (exit code, stdout).
fn check_proxy(m: &NetMesh) -> (i32, String) {
    let out = m
        .bed
        .by_name("cp")
        .cmd(env!("CARGO_BIN_EXE_weft"))
        .args(["check", "--proxy"])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Every pod calls the next one (wi -> wi+1) with a new connection per
/// request, through both proxies, until stopped.
fn traffic(m: &NetMesh) -> Counters {
    let c = Counters::default();
    for (i, from) in PODS.iter().enumerate() {
        let to = m.addr(PODS[(i + 1) % PODS.len()], APP);
        let ns = m.ns(from);
        let counters = c.clone();
        std::thread::spawn(move || {
            let _ = in_ns(&ns, move || {
                while counters.running() {
                    counters.record(match common::proc::http_get(to, "/tick") {
                        Ok((200, _)) => Ok(()),
                        other => Err(format!("-> {to}: {other:?}")),
                    });
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        });
    }
    c
}

#[test]
fn five_workloads_rotate_their_anchor_under_traffic() {
    if !have_root("five_workloads_rotate_their_anchor_under_traffic") {
        return;
    }
    let meshed: Vec<(&str, &[u16])> = PODS.iter().map(|p| (*p, &[APP][..])).collect();
    let mut m = NetMesh::build(&meshed, &[], &[], &[]);
    for p in PODS {
        app_in(&m.ns(p), APP);
    }
    let all_current = |v: &FleetView| {
        v.proxies.len() == PODS.len()
            && v.proxies
                .iter()
                .all(|p| p.state == "connected" && p.bundle_current)
    };
    let (v, _) = until(&m, "five proxies on bundle generation 1", all_current);
    assert_eq!(v.bundle.as_ref().unwrap().generation, 1);
    let before: Vec<(String, String)> = v
        .proxies
        .iter()
        .map(|p| (p.leaf_serial.clone(), p.spki_sha256.clone()))
        .collect();
    let traffic = traffic(&m);
    traffic.more(50);
    let (code, out) = check_proxy(&m);
    assert_eq!(code, 0, "{out}");
    println!("before the rotation:\n{out}");

    // New anchor and an issuer under it.
    let s = &m.s;
    rotation::new_anchor_and_issuer(s);
    let (a_pem, b_pem) = (s.read("ca.crt"), s.read("ca2.crt"));
    let new_anchor = pki::fingerprint(&pki::load_certs(&s.path("ca2.crt")).unwrap()[0]);

    // 1. Prepare.
    s.replace("ca.crt", &format!("{a_pem}{b_pem}"));
    let (_, took) = until(&m, "every proxy reports generation 2", |v| {
        all_current(v) && v.bundle.as_ref().is_some_and(|b| b.generation == 2)
    });
    println!("1. new anchor: every proxy reported generation 2 after {took:?}");
    traffic.more(50);
    traffic.assert_clean("prepare");
    println!("{}", check_proxy(&m).1);

    // 2. Activate: renew-now follows the issuer change.
    s.replace("issuer.key", &s.read("issuer2.key"));
    s.replace("issuer.crt", &s.read("issuer2.crt"));
    let (v, took) = until(&m, "every leaf renewed under the new anchor", |v| {
        v.proxies.len() == PODS.len()
            && v.proxies
                .iter()
                .all(|p| p.issuer_current && p.anchor_sha256 == new_anchor)
    });
    println!("2. new issuer: every proxy renewed under the new anchor after {took:?}");
    for (p, (serial, spki)) in v.proxies.iter().zip(&before) {
        assert_ne!(&p.leaf_serial, serial, "{}: new serial", p.workload);
        assert_ne!(&p.spki_sha256, spki, "{}: new key", p.workload);
    }
    traffic.more(50);
    traffic.assert_clean("activate");
    println!("{}", check_proxy(&m).1);

    // 3. Retire.
    s.replace("ca.crt", &b_pem);
    let (_, took) = until(&m, "every proxy reports generation 3", |v| {
        all_current(v) && v.bundle.as_ref().is_some_and(|b| b.generation == 3)
    });
    println!("3. old anchor removed: every proxy reported generation 3 after {took:?}");
    traffic.more(50);
    traffic.assert_clean("retire");
    let (code, out) = check_proxy(&m);
    println!("after the rotation:\n{out}");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("every proxy certificate chains to a current anchor (5 to"),
        "{out}"
    );

    // Control plane restart: reconnect, rebuilt view, generation kept.
    drop(m.cp.take());
    traffic.more(20);
    m.cp = Some(m.start_cp());
    let (v, took) = until(&m, "proxies back after the restart", all_current);
    println!("control plane restarted: fleet rebuilt after {took:?}");
    assert_eq!(v.bundle.as_ref().unwrap().generation, 3);
    traffic.more(50);
    traffic.assert_clean("control plane restart");
    let (ok, failed) = traffic.finish();
    println!("{ok} requests across the rotation, {failed} failed");

    // A killed proxy is stale, not converged.
    let victim = m.proxy("w5").take();
    drop(victim);
    until(&m, "w5 stale", |v| {
        v.proxies
            .iter()
            .any(|p| p.workload == "demo/w5" && p.state == "stale")
    });
    let (_, out) = check_proxy(&m);
    assert!(
        out.contains("‼ no proxy is stale") && out.contains("demo/w5"),
        "{out}"
    );
    assert!(out.contains("4 connected, 1 stale"), "{out}");
}
