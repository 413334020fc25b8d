//! `weft check` against the local control plane (no files, no cluster):
//! its readiness and its fleet. A refused issuer replacement, which leaves
//! the previous issuer serving and traffic flowing, is named on `/ready`,
//! in `/fleet` and as × in `weft check`; nothing answering is a one-line
//! error.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Scratch;
use common::mesh::{free_port, start_proxy};
use common::proc::{http_get, poll};
use common::rotation;

const DEADLINE: Duration = Duration::from_secs(30);

use common::rotation::fleet;

#[test]
fn a_refused_issuer_is_named_by_ready_fleet_and_check_while_traffic_flows() {
    let s = Scratch::new();
    s.guide_material();
    rotation::new_anchor_and_issuer(&s);
    let (app, be_in, fe_in) = common::mesh::backend_and(&s, "frontend");
    let cp = s.control_plane(&["--resources", "resources", "--reread-interval", "1s"]);
    let admin = cp.addr("admin listening on");
    let out = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _backend = start_proxy(&s, "backend", be_in, &cp, &[], &[]);
    let _frontend = start_proxy(
        &s,
        "frontend",
        fe_in,
        &cp,
        &[format!("{out}=demo/backend:{app}")],
        &[],
    );
    rotation::until(
        "both proxies current",
        DEADLINE,
        || fleet(admin),
        |v| v.proxies.len() == 2 && v.proxies.iter().all(|p| p.bundle_current),
    );
    let traffic = rotation::http_traffic(out);
    traffic.more(20);
    let check = || s.weft(&["check", "--admin-addr", &admin.to_string()]);
    let ok = check().ok();
    println!("{}", ok.stdout);
    assert!(
        ok.stdout.contains("√ the control plane is ready")
            && ok
                .stdout
                .contains("√ the control plane accepted its newest issuer and trust anchors"),
        "{}",
        ok.stdout
    );

    // An issuer from another CA: refused, the previous issuer serves on.
    s.write("issuer-orig.crt", s.read("issuer.crt"));
    s.write("issuer-orig.key", s.read("issuer.key"));
    s.replace("issuer.crt", &s.read("issuer2.crt"));
    s.replace("issuer.key", &s.read("issuer2.key"));
    let (v, took) = rotation::until(
        "the refusal in /fleet",
        DEADLINE,
        || fleet(admin),
        |v| v.issuer_refused.is_some(),
    );
    println!("refusal named in /fleet after {took:?}");
    let why = v.issuer_refused.unwrap();
    assert!(why.contains("trust anchors"), "{why}");
    let (code, body) = http_get(admin, "/ready").unwrap();
    assert!(
        code == 200 && body.contains("refused") && body.contains(&why),
        "{code} {body}"
    );
    let refused = check().refused(1);
    println!("{}", refused.stdout);
    assert!(
        refused
            .stdout
            .contains("× the control plane accepted its newest issuer and trust anchors")
            && refused.stdout.contains("‼ the control plane is ready")
            && refused.stdout.contains(&why),
        "{}",
        refused.stdout
    );
    traffic.more(20);
    traffic.assert_clean("while the replacement is refused");

    // Good files back: the refusal clears everywhere.
    s.replace("issuer.crt", &s.read("issuer-orig.crt"));
    s.replace("issuer.key", &s.read("issuer-orig.key"));
    rotation::until(
        "the refusal cleared",
        DEADLINE,
        || fleet(admin),
        |v| v.issuer_refused.is_none(),
    );
    poll("/ready without the refusal", DEADLINE, || {
        matches!(http_get(admin, "/ready"), Ok((200, b)) if !b.contains("refused")).then_some(())
    });
    check().ok();
    let (ok, failed) = traffic.finish();
    println!("traffic: {ok} requests, {failed} failed");
    assert_eq!(failed, 0);
}

#[test]
fn nothing_answering_is_a_one_line_error() {
    let s = Scratch::new();
    let dead = format!("127.0.0.1:{}", free_port());
    for args in [
        vec!["check", "--admin-addr", dead.as_str()],
        vec!["check", "--proxy", "--admin-addr", dead.as_str()],
    ] {
        let r = s.weft(&args).refused(2);
        assert!(
            r.stdout.is_empty()
                && r.stderr.trim().lines().count() == 1
                && r.stderr
                    .contains(&format!("no control plane answers at {dead}"))
                && r.stderr.contains("--admin-addr"),
            "{args:?}: {}",
            r.stderr
        );
    }
}

/// One raw HTTP/1.1 request to `addr`: (status, body).
fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (status, body.unwrap_or_default())
}

/// The operator endpoints are out of a browser's reach: a foreign `Host`
/// (DNS rebinding), a foreign `Origin`, and a simple cross-site POST are
/// refused with the reason; weft's own requests, by address or by name,
/// are served, and no CORS header is ever sent.
#[test]
fn the_admin_listener_refuses_what_a_browser_on_another_site_could_send() {
    let s = Scratch::new();
    s.guide_material();
    let cp = s.control_plane(&[]);
    let admin = cp.addr("admin listening on");
    poll("ready", DEADLINE, || {
        http_get(admin, "/ready").ok().filter(|(c, _)| *c == 200)
    });
    let close = "Connection: close\r\n\r\n";
    let cases = [
        (
            format!(
                "GET /fleet HTTP/1.1\r\nHost: rebound.example:{}\r\n{close}",
                admin.port()
            ),
            "DNS rebinding",
        ),
        (
            format!(
                "GET /fleet HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://evil.example\r\n{close}"
            ),
            "another site's",
        ),
        (
            format!(
                "POST /renew-now HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n{close}"
            ),
            "x-weft-operator",
        ),
        (
            format!(
                "POST /renew-now HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://evil.example\r\nX-Weft-Operator: 1\r\nContent-Length: 0\r\n{close}"
            ),
            "another site's",
        ),
    ];
    for (request, why) in &cases {
        let (code, body) = raw(admin, request);
        println!(
            "{} -> {code} {}",
            request.lines().next().unwrap(),
            body.trim()
        );
        assert_eq!(code, 403, "{request}: {body}");
        assert!(body.contains(why), "{request}: {body}");
    }
    // With the header it is served (202 once the bundle is in force).
    poll(
        "POST /renew-now with the operator header answered 202",
        DEADLINE,
        || {
            let (code, body) = raw(
                admin,
                &format!(
                    "POST /renew-now HTTP/1.1\r\nHost: {admin}\r\nX-Weft-Operator: 1\r\nContent-Length: 0\r\n{close}"
                ),
            );
            assert_ne!(code, 403, "{body}");
            (code == 202).then_some(())
        },
    );
    let (code, head) = raw(
        admin,
        &format!(
            "GET /fleet HTTP/1.1\r\nHost: localhost:{}\r\nOrigin: http://localhost:{}\r\n{close}",
            admin.port(),
            admin.port()
        ),
    );
    assert_eq!(code, 200, "{head}");
    // weft by name: the Host it sends is the address it reached.
    let by_name = format!("localhost:{}", admin.port());
    let out = s.weft(&["check", "--proxy", "--admin-addr", &by_name]).ok();
    assert!(
        out.stdout.contains("fleet view is reachable"),
        "{}",
        out.stdout
    );
}

/// Without authentication the admin listener binds loopback only: another
/// address is refused at start, naming the flag and the way out.
#[test]
fn the_admin_listener_is_refused_on_a_non_loopback_address() {
    let s = Scratch::new();
    s.guide_material();
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:9990"] {
        let mut args = vec!["control-plane"];
        args.extend(common::GUIDE_FILES);
        args.extend(["--state-dir", "state", "--admin-addr", addr]);
        let r = s.weft(&args).refused(2);
        println!("{addr}: {}", r.stderr.trim());
        assert!(
            r.stderr.contains("--admin-addr") && r.stderr.contains("--probe-addr"),
            "{}",
            r.stderr
        );
        assert!(
            !s.path("state").exists(),
            "{addr}: state written before the refusal"
        );
    }
}
