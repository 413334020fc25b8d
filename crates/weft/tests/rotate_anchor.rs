//! `weft rotate trust-anchor` on a standalone mesh of five workloads under
//! continuous traffic (a new connection per request, and one long-lived
//! connection): prepare, activate and retire run by the commands alone,
//! with `weft check --proxy` green between them, no failed request and no
//! proxy restarted; abort from prepare and from activate; bad issuers
//! refused before anything changes; retire refused while a proxy that
//! cannot renew (and a certificate with no stream) still depends on the
//! old anchor; a command killed mid-phase resumes when re-run; a second
//! rotation refused while one runs.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Scratch;
use common::mesh::{echo_server, free_port, spawn_app, start_proxy};
use common::proc::poll;
use common::rotation::{self, fleet};

const DEADLINE: Duration = Duration::from_secs(30);

/// `weft <args> <the control plane's files> --admin-addr <admin>`.
fn args<'a>(args: &[&'a str], admin: &'a str) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend(common::GUIDE_FILES);
    v.extend(["--admin-addr", admin]);
    v
}

/// The same, in the background, its stdout into `out` (to be read while it
/// runs and killed mid-phase).
fn spawn(s: &Scratch, a: &[&str], out: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(a)
        .current_dir(s.dir.path())
        .stdout(std::fs::File::create(s.path(out)).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig} {pid}");
}

/// Runs the `weft ...` command a hint printed, exactly as printed.
fn run_printed(s: &Scratch, out: &str, starts: &str) -> common::Run {
    let line = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(starts))
        .unwrap_or_else(|| panic!("no `{starts}` hint in:\n{out}"));
    let words: Vec<&str> = line.split_whitespace().skip(1).collect();
    s.weft(&words)
}

fn phase(s: &Scratch) -> Option<String> {
    let text = std::fs::read_to_string(s.path("ca.crt.rotation.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["phase"].as_str().map(str::to_string)
}

#[test]
fn trust_anchor_rotation_by_the_commands_alone() {
    let s = Scratch::new();
    s.guide_material();
    rotation::new_anchor_and_issuer(&s);
    let ca2 = "--ca ca2.crt --ca-key ca2.key";
    let issuer = |name: &str, extra: &str| {
        let mut a = vec![
            "certs",
            "create",
            "identity.linkerd.cluster.local",
            "--profile",
            "intermediate-ca",
        ];
        let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
        a.splice(3..3, [crt.as_str(), key.as_str()]);
        a.extend(extra.split_whitespace());
        s.weft(&a).ok();
    };
    issuer(
        "expired",
        &format!("{ca2} --not-before -48h --not-after -1h"),
    );
    issuer("rsa", &format!("{ca2} --kty RSA"));

    let (app, echo) = (spawn_app(), echo_server());
    let names = ["backend", "frontend", "echo", "batch", "stuck"];
    let apps = [app, free_port(), echo, free_port(), free_port()];
    let (ports, cp) = rotation::mesh_of(&s, &names, &apps);
    let admin = cp.addr("admin listening on");
    let admin_s = admin.to_string();
    let gate = rotation::gate(cp.addr("identity listening on"));
    let (http_out, echo_out) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let outbound = [
        format!("{http_out}=demo/backend:{app}"),
        format!("{echo_out}=demo/echo:{echo}"),
    ];
    let ga = gate.addr.to_string();
    let proxies: Vec<_> = names
        .iter()
        .zip(&ports)
        .map(|(n, p)| match *n {
            "frontend" => start_proxy(&s, n, *p, &cp, &outbound, &[]),
            // Its identity service is reached through the gate.
            "stuck" => start_proxy(&s, n, *p, &cp, &[], &["--identity-addr", &ga]),
            _ => start_proxy(&s, n, *p, &cp, &[], &[]),
        })
        .collect();
    rotation::until(
        "five proxies current",
        DEADLINE,
        || fleet(admin),
        |v| {
            v.proxies.len() == 5
                && v.proxies
                    .iter()
                    .all(|p| p.state == "connected" && p.bundle_current && p.issuer_current)
        },
    );
    let traffic = rotation::http_traffic(http_out);
    let held = rotation::long_lived(echo_out);
    traffic.more(20);
    held.more(20);
    let check = |step: &str| {
        let r = s.weft(&["check", "--proxy", "--admin-addr", &admin_s]);
        assert_eq!(r.code, 0, "check --proxy {step}:\n{}", r.stdout);
        traffic.more(5);
        held.more(5);
        traffic.assert_clean(step);
        held.assert_clean(step);
    };
    check("before the rotation");
    let weft = |a: &[&str]| s.weft(&args(a, &admin_s));

    // A certificate with no stream (a linkerd2-proxy would look like this).
    let ia = cp.addr("identity listening on").to_string();
    let legacy = "legacy.demo.serviceaccount.identity.weft.cluster.local";
    let request_legacy = || {
        // A restart: a fresh token, a fresh certificate.
        for f in ["legacy.token", "legacy.crt", "legacy.key"] {
            let _ = std::fs::remove_file(s.path(f));
        }
        common::rotation::request_legacy(&s, &ia);
    };
    request_legacy();

    // Prepare, then abort from prepare: the old bundle alone again.
    let old = s.read("ca.crt");
    let r = weft(&[
        "rotate",
        "trust-anchor",
        "prepare",
        "--new-anchor",
        "ca2.crt",
    ])
    .ok();
    println!("{}", r.stdout);
    assert!(
        r.stdout.contains("needs a restart: legacy.demo"),
        "{}",
        r.stdout
    );
    assert_eq!(phase(&s).as_deref(), Some("prepared"));
    check("after prepare");
    let r = weft(&["rotate", "trust-anchor", "abort"]).ok();
    println!("{}", r.stdout);
    assert!(
        r.stdout.contains("no rotation is in progress"),
        "{}",
        r.stdout
    );
    assert_eq!((s.read("ca.crt"), phase(&s)), (old.clone(), None));
    check("after abort from prepare");

    // Prepare killed mid-phase (batch paused, so it cannot acknowledge),
    // then re-run: it takes the dead run's lock over and resumes.
    let batch = proxies[3].child.id();
    signal(batch, "-STOP");
    let prepare = args(
        &[
            "rotate",
            "trust-anchor",
            "prepare",
            "--new-anchor",
            "ca2.crt",
        ],
        &admin_s,
    );
    let mut killed = spawn(&s, &prepare, "prepare.out");
    poll("prepare waits for batch", DEADLINE, || {
        s.read("prepare.out")
            .contains("waiting for demo/batch")
            .then_some(())
    });
    killed.kill().unwrap();
    killed.wait().unwrap();
    signal(batch, "-CONT");
    assert_eq!(phase(&s).as_deref(), Some("preparing"));
    let r = s.weft(&prepare).ok();
    println!("{}", r.stdout);
    for said in [
        "took over the rotation lock of pid",
        "resuming prepare",
        "prepared:",
    ] {
        assert!(r.stdout.contains(said), "{said}: {}", r.stdout);
    }
    check("after prepare resumed");
    // Another anchor while one is in progress: refused, nothing changed.
    s.weft(&[
        "certs",
        "create",
        "root.linkerd.cluster.local",
        "ca3.crt",
        "ca3.key",
        "--profile",
        "root-ca",
    ])
    .ok();
    let bundle = s.read("ca.crt");
    let other = weft(&[
        "rotate",
        "trust-anchor",
        "prepare",
        "--new-anchor",
        "ca3.crt",
    ]);
    println!("{}", other.stderr);
    assert_eq!(other.code, 2, "{}", other.stderr);
    assert!(other.stderr.contains("is in progress"), "{}", other.stderr);
    assert_eq!(
        (s.read("ca.crt"), phase(&s)),
        (bundle, Some("prepared".into()))
    );

    // The hint's `weft certs create` works as printed.
    run_printed(&s, &r.stdout, "weft certs create").ok();
    let status = |step: &str| {
        let r = weft(&["rotate", "trust-anchor", "status"]).ok();
        println!("status {step}:\n{}", r.stdout);
        r.stdout
    };
    let st = status("prepared");
    assert!(st.contains("phase: prepared"), "{st}");
    assert!(
        st.contains("next: weft certs create identity.linkerd.cluster.local issuer-new.crt issuer-new.key --profile intermediate-ca --ca ca2.crt --ca-key ca2.key"),
        "{st}"
    );

    // Issuers refused before anything changes.
    let in_force = s.read("issuer.crt");
    for (cert, key, why) in [
        ("expired.crt", "expired.key", "expired"),
        ("issuer.crt", "issuer.key", "issued by the trust anchor"),
        ("rsa.crt", "rsa.key", "ECDSA"),
        (
            "issuer2.crt",
            "issuer-new.key",
            "issuer key matches issuer certificate",
        ),
    ] {
        let r = weft(&[
            "rotate",
            "trust-anchor",
            "activate",
            "--issuer-cert",
            cert,
            "--issuer-key",
            key,
        ])
        .refused(2);
        assert!(
            r.stderr.contains(why) && r.stderr.contains("nothing was changed"),
            "{cert}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains("--ca ca2.crt --ca-key ca2.key"),
            "{}",
            r.stderr
        );
        assert_eq!(s.read("issuer.crt"), in_force, "{cert} changed the files");
        assert_eq!(phase(&s).as_deref(), Some("prepared"), "{cert}");
    }

    // Activate as the prepare hint printed it, then abort from activate:
    // the old issuer back in force on every proxy.
    let r = run_printed(&s, &r.stdout, "weft rotate trust-anchor activate").ok();
    println!("{}", r.stdout);
    assert!(r.stdout.contains("activated:"), "{}", r.stdout);
    check("after activate");
    let r = weft(&["rotate", "trust-anchor", "abort"]).ok();
    println!("{}", r.stdout);
    assert!(r.stdout.contains("back to phase prepared"), "{}", r.stdout);
    assert_eq!(s.read("issuer.crt"), in_force);
    let old_issuer = fleet(admin).unwrap().bundle.unwrap().issuer_sha256;
    assert!(
        fleet(admin)
            .unwrap()
            .proxies
            .iter()
            .all(|p| p.issuer_sha256 == old_issuer),
        "every proxy back on the old issuer"
    );
    check("after abort from activate");

    // Stuck cannot reach the identity service: activate times out naming it.
    gate.open.store(false, Ordering::Relaxed);
    let activate = args(
        &[
            "rotate",
            "trust-anchor",
            "activate",
            "--issuer-cert",
            "issuer-new.crt",
            "--issuer-key",
            "issuer-new.key",
        ],
        &admin_s,
    );
    let mut a = activate.clone();
    a.extend(["--timeout", "15s"]);
    let r = s.weft(&a).refused(1);
    assert!(r.stderr.contains("demo/stuck"), "{}", r.stderr);
    assert!(status("activating").contains("demo/stuck has no leaf yet from the new issuer"));

    // Retire refused, naming what still needs the old anchor.
    let r = weft(&["rotate", "trust-anchor", "retire"]).refused(1);
    println!("{}", r.stderr);
    for named in ["retire refused", "demo/stuck (stuck.demo", legacy] {
        assert!(r.stderr.contains(named), "{named}: {}", r.stderr);
    }
    assert_eq!(s.read("ca.crt"), format!("{old}{}", s.read("ca2.crt")));

    // Activate re-run while stuck still cannot renew; a second rotation is
    // refused meanwhile; killed, then re-run once stuck can renew.
    let mut running = spawn(&s, &activate, "activate.out");
    poll("activate resumed and waiting", DEADLINE, || {
        s.read("activate.out")
            .contains("waiting for demo/stuck")
            .then_some(())
    });
    let r = weft(&["rotate", "trust-anchor", "retire"]).refused(1);
    assert!(
        r.stderr
            .contains("another trust-anchor rotation is running (pid"),
        "{}",
        r.stderr
    );
    running.kill().unwrap();
    running.wait().unwrap();
    assert!(s.read("activate.out").contains("resuming activate"));
    gate.open.store(true, Ordering::Relaxed);
    let r = s.weft(&activate).ok();
    println!("{}", r.stdout);
    assert!(
        r.stdout.contains("took over the rotation lock"),
        "{}",
        r.stdout
    );
    check("after activate resumed");

    // The legacy workload restarted: its new certificate is from the new
    // issuer. Nothing depends on the old anchor any more.
    let r = weft(&["rotate", "trust-anchor", "retire"]).refused(1);
    assert!(!r.stderr.contains("demo/stuck"), "{}", r.stderr);
    assert!(r.stderr.contains(legacy), "{}", r.stderr);
    request_legacy();

    // Retire killed mid-phase (batch paused again), then re-run: resumes.
    signal(batch, "-STOP");
    let retire = args(&["rotate", "trust-anchor", "retire"], &admin_s);
    let mut killed = spawn(&s, &retire, "retire.out");
    poll("retire waits for batch", DEADLINE, || {
        s.read("retire.out")
            .contains("waiting for demo/batch")
            .then_some(())
    });
    killed.kill().unwrap();
    killed.wait().unwrap();
    signal(batch, "-CONT");
    assert_eq!(phase(&s).as_deref(), Some("retiring"));
    let r = s.weft(&retire).ok();
    println!("{}", r.stdout);
    for said in ["resuming retire", "(5 of 5", "retired:"] {
        assert!(r.stdout.contains(said), "{said}: {}", r.stdout);
    }
    assert_eq!(s.read("ca.crt"), s.read("ca2.crt"));
    let v = fleet(admin).unwrap();
    let new_anchor = pki::fingerprint(&pki::load_certs(&s.path("ca2.crt")).unwrap()[0]);
    assert_eq!(v.bundle.unwrap().anchors, vec![new_anchor.clone()]);
    for p in &v.proxies {
        assert_eq!(p.anchor_sha256, new_anchor, "{}", p.workload);
        assert!(p.bundle_current, "{}", p.workload);
    }
    check("after retire");
    assert!(status("retired").contains("phase: retired"));
    let json = weft(&["rotate", "trust-anchor", "status", "-o", "json"]).ok();
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        (
            json["phase"].as_str(),
            json["blocked_by"].as_array().map(Vec::len)
        ),
        (Some("retired"), Some(0))
    );

    let (ok, failed) = traffic.finish();
    let (held_ok, held_failed) = held.finish();
    println!(
        "through the rotation: {ok} requests ({failed} failed), {held_ok} round trips on one connection ({held_failed} failed)"
    );
    traffic.assert_clean("the whole rotation");
    held.assert_clean("the whole rotation");
    for (n, p) in names.iter().zip(&proxies) {
        assert_eq!(
            p.output().matches("admin listening on").count(),
            1,
            "{n} restarted: {}",
            p.output()
        );
    }
}
