//! `weft rotate trust-anchor --emergency` on a standalone mesh of four
//! workloads whose anchor and issuer are made to expire within a minute:
//! refused while they still serve, bad new pairs refused before anything
//! changes; once expired (traffic stopped), the command run as a user would,
//! its printed out-of-band steps done (fresh tokens, the new anchor written
//! to each proxy's own anchors file), every proxy comes back without a
//! restart and traffic flows over mTLS again, how long it took printed. One
//! proxy not given the new anchor refuses the re-rooted control plane,
//! naming the anchor it lacks, and stays down.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Scratch;
use common::mesh::{echo_server, free_port, spawn_app, start_proxy};
use common::proc::{http_get, metric_sum, poll};
use common::rotation::{self, fleet};

const DEADLINE: Duration = Duration::from_secs(30);
/// The lifetimes of the anchor and the issuer that expire under the mesh.
const ANCHOR_LIFE: &str = "50s";
const ISSUER_LIFE: &str = "45s";

/// `weft rotate trust-anchor --emergency` with these files, plus the
/// control plane's files, admin address and state directory.
fn emergency(s: &Scratch, admin: &str, pair: [&str; 3], extra: &[&str]) -> common::Run {
    let mut a = vec![
        "rotate",
        "trust-anchor",
        "--emergency",
        "--new-anchor",
        pair[0],
        "--issuer-cert",
        pair[1],
        "--issuer-key",
        pair[2],
        "--state-dir",
        "state",
        "--admin-addr",
        admin,
    ];
    a.extend(common::GUIDE_FILES);
    a.extend(extra);
    s.weft(&a)
}

/// New pairs that must be refused: (cert, key, what the refusal names).
fn bad_pairs(s: &Scratch) -> [(&'static str, &'static str, &'static str); 3] {
    // An issuer under yet another anchor, and an RSA one under the new one.
    s.anchor("ca3", "root-3.linkerd.cluster.local", "87600h");
    s.issuer("foreign", "8760h", "ca3");
    s.weft(&[
        "certs",
        "create",
        "identity.linkerd.cluster.local",
        "rsa.crt",
        "rsa.key",
        "--profile",
        "intermediate-ca",
        "--ca",
        "ca2.crt",
        "--ca-key",
        "ca2.key",
        "--kty",
        "RSA",
        "--no-password",
        "--insecure",
    ])
    .ok();
    [
        ("foreign.crt", "foreign.key", "issued by the trust anchor"),
        (
            "issuer2.crt",
            "foreign.key",
            "issuer key matches issuer certificate",
        ),
        ("rsa.crt", "rsa.key", "ECDSA"),
    ]
}

/// The control plane's three files, byte for byte.
fn in_force(s: &Scratch) -> [String; 3] {
    ["ca.crt", "issuer.crt", "issuer.key"].map(|f| s.read(f))
}

#[test]
fn emergency_re_root_brings_every_proxy_back_and_no_proxy_trusts_on_first_use() {
    let s = Scratch::new();
    // The anchor and issuer in force, made to expire.
    s.guide_material_for(ANCHOR_LIFE, ISSUER_LIFE);
    let not_after = |f: &str| {
        let der = &pki::load_certs(&s.path(f)).unwrap()[0];
        pki::info::CertInfo::from_der(der).unwrap().not_after
    };
    let (anchor_ends, issuer_ends) = (not_after("ca.crt"), not_after("issuer.crt"));
    rotation::new_anchor_and_issuer(&s);
    let bad = bad_pairs(&s);

    let (app, echo, orphan_app) = (spawn_app(), echo_server(), echo_server());
    let names = ["backend", "frontend", "echo", "orphan"];
    let apps = [app, free_port(), echo, orphan_app];
    let (ports, cp) = rotation::mesh_of(&s, &names, &apps);
    let admin = cp.addr("admin listening on");
    let admin_s = admin.to_string();
    let out = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let (http_out, echo_out, orphan_out) = (out(free_port()), out(free_port()), out(free_port()));
    let outbound = [
        format!("{http_out}=demo/backend:{app}"),
        format!("{echo_out}=demo/echo:{echo}"),
        format!("{orphan_out}=demo/orphan:{orphan_app}"),
    ];
    // Each proxy has an anchors file of its own, as on separate hosts.
    let proxies: Vec<_> = names
        .iter()
        .zip(&ports)
        .map(|(n, p)| {
            let anchors = format!("{n}-ca.crt");
            s.write(&anchors, s.read("ca.crt"));
            let extra = ["--trust-anchors-file", anchors.as_str()];
            let ob: &[String] = if *n == "frontend" { &outbound } else { &[] };
            start_proxy(&s, n, *p, &cp, ob, &extra)
        })
        .collect();
    rotation::until(
        "four proxies connected",
        DEADLINE,
        || fleet(admin),
        |v| v.proxies.len() == 4 && v.proxies.iter().all(|p| p.state == "connected"),
    );
    let http = rotation::http_traffic(http_out);
    http.more(5);
    let echoed = |to: SocketAddr| round_trip(to).is_ok();
    assert!(
        echoed(echo_out) && echoed(orphan_out),
        "traffic before expiry"
    );

    // Still valid: refused, nothing changed.
    let pair = ["ca2.crt", "issuer2.crt", "issuer2.key"];
    let before = in_force(&s);
    let r = emergency(&s, &admin_s, pair, &[]).refused(2);
    println!("{}", r.stderr);
    assert!(r.stderr.contains("are valid until"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("weft rotate trust-anchor prepare --new-anchor ca2.crt")
    );
    assert_eq!(in_force(&s), before);

    // Let the anchor and issuer expire under the mesh; see what happens.
    poll("traffic to stop", Duration::from_secs(90), || {
        (http.failed.load(std::sync::atomic::Ordering::Relaxed) > 0).then_some(())
    });
    println!(
        "traffic stopped {:.1}s after the issuer's NotAfter",
        (time::OffsetDateTime::now_utc() - issuer_ends).as_seconds_f64()
    );
    assert!(!echoed(echo_out), "an expired mesh still carries traffic");
    poll("the issuer seen expired", DEADLINE, || {
        cp.output()
            .contains("the issuer in force has expired")
            .then_some(())
    });
    poll("the anchor to expire too", Duration::from_secs(30), || {
        (time::OffsetDateTime::now_utc() > anchor_ends).then_some(())
    });
    poll(
        "a proxy told the control plane has no certificate",
        DEADLINE,
        || {
            proxies
                .iter()
                .any(|p| {
                    p.output()
                        .contains("the control plane presented no certificate")
                })
                .then_some(())
        },
    );
    let check = print_state("after expiry", &s, &cp, &proxies, admin);
    assert!(
        check.contains("no issuer is in force") && check.contains("--emergency"),
        "{check}"
    );

    // Bad new pairs: refused before anything changes.
    for (cert, key, why) in bad {
        let r = emergency(&s, &admin_s, ["ca2.crt", cert, key], &[]).refused(2);
        assert!(
            r.stderr.contains(why) && r.stderr.contains("nothing was changed"),
            "{cert}: {}",
            r.stderr
        );
        assert_eq!(in_force(&s), before, "{cert} changed the files");
    }

    // The emergency re-root, as a user runs it, then its printed steps.
    let start = Instant::now();
    let r = emergency(&s, &admin_s, pair, &[]).ok();
    println!("$ weft rotate trust-anchor --emergency …\n{}", r.stdout);
    let took = start.elapsed();
    assert_eq!(s.read("ca.crt"), s.read("ca2.crt"));
    assert_eq!(
        (s.read("issuer.crt"), s.read("issuer.key")),
        (s.read("issuer2.crt"), s.read("issuer2.key"))
    );
    assert_eq!(common::mode(&s.path("issuer.key")), 0o600);
    for line in r
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("weft token create"))
    {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        s.weft(&words).ok();
    }
    for n in names.iter().filter(|n| **n != "orphan") {
        assert!(
            r.stdout.contains(&format!("demo/{n} on 127.0.0.1")),
            "{n}: {}",
            r.stdout
        );
        s.replace(&format!("{n}-ca.crt"), &s.read("ca2.crt"));
    }
    let written = Instant::now();
    let new_anchor = pki::fingerprint(&pki::load_certs(&s.path("ca2.crt")).unwrap()[0]);
    let back = ["demo/backend", "demo/echo", "demo/frontend"];
    let (_, recovered) = rotation::until(
        "three proxies back",
        DEADLINE,
        || fleet(admin),
        |v| {
            back.iter().all(|w| {
                v.proxies.iter().any(|p| {
                    p.workload == *w
                        && p.state == "connected"
                        && p.anchor_sha256 == new_anchor
                        && p.bundle_current
                })
            })
        },
    );
    poll("traffic through the proxies again", DEADLINE, || {
        (echoed(echo_out) && request(http_out)).then_some(())
    });
    let flowing = written.elapsed();
    println!(
        "recovery: the command took {took:.1?}; every proxy given the anchor back on the new anchor {recovered:.1?} and traffic flowing {flowing:.1?} after the anchor files were written ({:.1?} from the command's start)",
        start.elapsed()
    );
    let check = s.weft(&["check", "--proxy", "--admin-addr", &admin_s]);
    println!("$ weft check --proxy\n{}", check.stdout);

    // Re-run (as after an interrupted run): the files already hold the new
    // pair, so it resumes; -o json gives one event a line.
    let r = emergency(&s, &admin_s, pair, &["-o", "json"]).ok();
    let events: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let event = |name: &str| events.iter().find(|e| e["event"] == name).cloned();
    assert!(
        event("resume").is_some() && event("installed").is_none(),
        "{}",
        r.stdout
    );
    let next = event("next").unwrap();
    assert_eq!(next["tokens"].as_array().map(Vec::len), Some(4), "{next}");

    // The orphan was not given the anchor: it refuses the control plane,
    // naming the anchor it lacks, holds no certificate and passes nothing.
    let orphan = &proxies[3];
    poll("the orphan names the anchor it lacks", DEADLINE, || {
        orphan
            .output()
            .contains("needs the anchor CN=root-2.linkerd.cluster.local")
            .then_some(())
    });
    assert!(!echoed(orphan_out), "the orphan passed traffic");
    let v = fleet(admin).unwrap();
    assert!(
        v.proxies.iter().all(|p| p.workload != "demo/orphan"
            || p.state != "connected"
            || p.anchor_sha256 != new_anchor),
        "the orphan reconnected: {v:?}"
    );
    let orphan_admin = orphan.addr("admin listening on");
    let metrics = http_get(orphan_admin, "/metrics").unwrap().1;
    let fp = format!("fingerprint=\"{new_anchor}\"");
    assert_eq!(
        metric_sum(
            &metrics,
            "control_identity_trust_anchor_expiration_timestamp_seconds",
            &[&fp]
        ),
        0.0,
        "the orphan took the new anchor"
    );
    println!("orphan: {}", last_line(orphan, "needs the anchor"));
    for (n, p) in names.iter().zip(&proxies) {
        assert_eq!(
            p.output().matches("admin listening on").count(),
            1,
            "{n} restarted"
        );
    }
}

/// One line through an outbound listener to an echo server and back.
fn round_trip(to: SocketAddr) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"ping\n")?;
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf)?;
    (&buf == b"ping\n")
        .then_some(())
        .ok_or(std::io::ErrorKind::InvalidData.into())
}

/// One HTTP GET through frontend to backend answered 200.
fn request(to: SocketAddr) -> bool {
    http_get(to, "/tick").is_ok_and(|(code, _)| code == 200)
}

fn last_line(p: &common::proc::Proc, needle: &str) -> String {
    p.output()
        .lines()
        .rev()
        .find(|l| l.contains(needle))
        .unwrap_or_default()
        .to_string()
}

/// What expiry did: the control plane's readiness and issuer, and each
/// proxy's last error.
fn print_state(
    when: &str,
    s: &Scratch,
    cp: &common::proc::Proc,
    proxies: &[common::proc::Proc],
    admin: SocketAddr,
) -> String {
    let ready = http_get(admin, "/ready").map(|(c, b)| format!("{c} {}", b.trim()));
    println!("{when}: control plane /ready: {ready:?}");
    println!("{when}: control plane: {}", last_line(cp, "expired"));
    for p in proxies {
        println!("{when}: proxy: {}", last_line(p, "no valid certificate"));
    }
    let check = s.weft(&["check", "--proxy", "--admin-addr", &admin.to_string()]);
    println!(
        "{when}: weft check --proxy (exit {}):\n{}",
        check.code, check.stdout
    );
    check.stdout
}
