//! Anchor rotation in network namespaces, as root: five meshed workloads in
//! transparent mode calling each other continuously while a new anchor is
//! added, the issuer switched (renew-now follows) and the old anchor
//! removed; no proxy restarts and no request fails. `weft check --proxy` is
//! followed step by step; a control plane restart and a killed proxy too.

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Scratch;
use common::netmesh::{DEADLINE, NetMesh, get_in};
use common::proc::poll;
use control_plane::fleet::FleetView;
use testbed::{have_root, in_ns};

const PODS: [&str; 5] = ["w1", "w2", "w3", "w4", "w5"];
const APP: u16 = 8080;

fn app_in(ns: &str) {
    let l = in_ns(ns, || TcpListener::bind(("0.0.0.0", APP)))
        .unwrap()
        .unwrap();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            testbed::http_app::serve(tokio::net::TcpListener::from_std(l).unwrap()).await
        });
    });
}

fn fleet(m: &NetMesh) -> Option<FleetView> {
    let (code, body) = get_in(&m.ns("cp"), "127.0.0.1:9990".parse().unwrap(), "/fleet")?;
    (code == 200).then(|| serde_json::from_str(&body).expect("fleet JSON"))
}

fn until(m: &NetMesh, what: &str, ok: impl Fn(&FleetView) -> bool) -> (FleetView, Duration) {
    let start = Instant::now();
    let v = poll(what, DEADLINE, || fleet(m).filter(|v| ok(v)));
    (v, start.elapsed())
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

fn replace(s: &Scratch, name: &str, contents: &str) {
    let tmp = s.path(&format!(".{name}.new"));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, s.path(name)).unwrap();
}

/// Every pod calls the next one (wi -> wi+1) with a new connection per
/// request, through both proxies, until stopped.
struct Traffic {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Traffic {
    fn start(m: &NetMesh) -> Self {
        let t = Traffic {
            ok: Arc::default(),
            failed: Arc::default(),
            errors: Arc::default(),
            stop: Arc::default(),
        };
        for (i, from) in PODS.iter().enumerate() {
            let to = m.addr(PODS[(i + 1) % PODS.len()], APP);
            let ns = m.ns(from);
            let (ok, failed, errors, stop) = (
                t.ok.clone(),
                t.failed.clone(),
                t.errors.clone(),
                t.stop.clone(),
            );
            std::thread::spawn(move || {
                let _ = in_ns(&ns, move || {
                    while !stop.load(Ordering::Relaxed) {
                        match common::proc::http_get(to, "/tick") {
                            Ok((200, _)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.lock().unwrap().push(format!("-> {to}: {other:?}"));
                            }
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                });
            });
        }
        t
    }

    fn more(&self, n: u64) {
        let before = self.ok.load(Ordering::Relaxed);
        poll("traffic flowing", DEADLINE, || {
            (self.ok.load(Ordering::Relaxed) >= before + n).then_some(())
        });
    }

    #[track_caller]
    fn assert_clean(&self, step: &str) {
        assert_eq!(
            self.failed.load(Ordering::Relaxed),
            0,
            "{step}: failed requests: {:?}",
            self.errors.lock().unwrap()
        );
    }
}

#[test]
fn five_workloads_rotate_their_anchor_under_traffic() {
    if !have_root("five_workloads_rotate_their_anchor_under_traffic") {
        return;
    }
    let meshed: Vec<(&str, &[u16])> = PODS.iter().map(|p| (*p, &[APP][..])).collect();
    let mut m = NetMesh::build(&meshed, &[], &[], &[]);
    for p in PODS {
        app_in(&m.ns(p));
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
    let traffic = Traffic::start(&m);
    traffic.more(50);
    let (code, out) = check_proxy(&m);
    assert_eq!(code, 0, "{out}");
    println!("before the rotation:\n{out}");

    // New anchor and an issuer under it.
    let s = &m.s;
    s.weft(&[
        "certs",
        "create",
        "root-2.linkerd.cluster.local",
        "ca2.crt",
        "ca2.key",
        "--profile",
        "root-ca",
        "--no-password",
        "--insecure",
        "--not-after",
        "87600h",
    ])
    .ok();
    s.weft(&[
        "certs",
        "create",
        "identity.linkerd.cluster.local",
        "issuer2.crt",
        "issuer2.key",
        "--profile",
        "intermediate-ca",
        "--not-after",
        "8760h",
        "--no-password",
        "--insecure",
        "--ca",
        "ca2.crt",
        "--ca-key",
        "ca2.key",
    ])
    .ok();
    let (a_pem, b_pem) = (s.read("ca.crt"), s.read("ca2.crt"));
    let new_anchor = pki::fingerprint(&pki::load_certs(&s.path("ca2.crt")).unwrap()[0]);

    // 1. Prepare.
    replace(s, "ca.crt", &format!("{a_pem}{b_pem}"));
    let (_, took) = until(&m, "every proxy reports generation 2", |v| {
        all_current(v) && v.bundle.as_ref().is_some_and(|b| b.generation == 2)
    });
    println!("1. new anchor: every proxy reported generation 2 after {took:?}");
    traffic.more(50);
    traffic.assert_clean("prepare");
    println!("{}", check_proxy(&m).1);

    // 2. Activate: renew-now follows the issuer change.
    replace(s, "issuer.key", &s.read("issuer2.key"));
    replace(s, "issuer.crt", &s.read("issuer2.crt"));
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
    replace(s, "ca.crt", &b_pem);
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
    traffic.stop.store(true, Ordering::Relaxed);
    println!(
        "{} requests across the rotation, {} failed",
        traffic.ok.load(Ordering::Relaxed),
        traffic.failed.load(Ordering::Relaxed)
    );

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
