//! The operator listener off loopback (`--operator-addr`, here 127.0.0.2,
//! which is not the loopback admin listener's address): weft's commands
//! work through it with an allowed operator certificate; no certificate, a
//! certificate from another CA, an identity not on the allow list, a
//! foreign Host or Origin and a simple cross-site POST are each refused
//! with the reason, and counted. Bad flags are one-line errors.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Scratch;
use common::mesh::{free_port, spawn_app, start_proxy, workload};
use common::proc::{http_get, metric_sum, poll};

const DEADLINE: Duration = Duration::from_secs(30);
const ALICE: &str = "alice.operators.serviceaccount.identity.weft.cluster.local";
const BOB: &str = "bob.operators.serviceaccount.identity.weft.cluster.local";

/// A leaf for `name` signed by `ca`/`ca_key`, as the README says to make one.
fn operator_leaf(s: &Scratch, name: &str, file: &str, ca: &str, ca_key: &str) {
    s.weft(&[
        "certs",
        "create",
        name,
        &format!("{file}.crt"),
        &format!("{file}.key"),
        "--profile",
        "leaf",
        "--not-after",
        "1h",
        "--ca",
        ca,
        "--ca-key",
        ca_key,
        "--no-password",
        "--insecure",
    ])
    .ok();
}

/// One HTTP/1.1 request to the operator listener, presenting `client`
/// (`name.crt`, `name.key`) if given, verifying the control plane against
/// ca.crt: (status, body), or the TLS error that ended it.
fn tls_request(
    s: &Scratch,
    addr: SocketAddr,
    client: Option<&str>,
    request: &str,
) -> Result<(u16, String), String> {
    let files = client.map(|n| (s.path(&format!("{n}.crt")), s.path(&format!("{n}.key"))));
    common::operator::tls_request(
        &s.path("ca.crt"),
        "weft-identity.weft.serviceaccount.identity.weft.cluster.local",
        addr,
        files.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        request,
    )
}

fn refusals(admin: SocketAddr, reason: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics").unwrap();
    metric_sum(
        &body,
        "admin_refusals_total",
        &["listener=\"operator\"", &format!("reason=\"{reason}\"")],
    )
}

#[test]
fn the_operator_listener_serves_allowed_operators_and_refuses_everyone_else() {
    let s = Scratch::new();
    s.guide_material();
    operator_leaf(&s, ALICE, "alice", "issuer.crt", "issuer.key");
    operator_leaf(&s, BOB, "bob", "issuer.crt", "issuer.key");
    // Another CA, and a leaf from it naming an allowed identity.
    s.weft(&[
        "certs",
        "create",
        "root.other.example",
        "other-ca.crt",
        "other-ca.key",
        "--profile",
        "root-ca",
        "--no-password",
        "--insecure",
    ])
    .ok();
    operator_leaf(&s, ALICE, "mallory", "other-ca.crt", "other-ca.key");

    let app = spawn_app();
    let be_in = free_port();
    std::fs::create_dir(s.path("resources")).unwrap();
    s.write(
        "resources/workloads.yaml",
        workload("backend", app, be_in, ""),
    );
    let cp = s.control_plane(&[
        "--resources",
        "resources",
        "--operator-addr",
        "127.0.0.2:0",
        "--operator-allow",
        ALICE,
    ]);
    let admin = cp.addr("admin listening on");
    let op = cp.addr("operator listening on");
    assert_eq!(op.ip().to_string(), "127.0.0.2");
    let _backend = start_proxy(&s, "backend", be_in, &cp, &[], &[]);
    poll("the proxy in /fleet", DEADLINE, || {
        http_get(admin, "/fleet")
            .ok()
            .filter(|(c, b)| *c == 200 && b.contains("demo/backend"))
    });

    // weft through the operator listener, with alice's certificate.
    let op_s = op.to_string();
    let tls_flags = [
        "--admin-addr",
        op_s.as_str(),
        "--operator-cert",
        "alice.crt",
        "--operator-key",
        "alice.key",
        "--operator-ca",
        "ca.crt",
    ];
    let started = Instant::now();
    let check = s
        .weft(&[&["check", "--proxy"][..], &tls_flags].concat())
        .ok();
    println!("weft check --proxy over TLS took {:?}", started.elapsed());
    println!("{}", check.stdout);
    assert!(
        check.stdout.contains("fleet view is reachable"),
        "{}",
        check.stdout
    );
    let edges = s.weft(&[&["edges"][..], &tls_flags].concat()).ok();
    println!("{}", edges.stdout);
    // A tap streams over the same TLS: it runs its second and ends cleanly.
    let tap = ["tap", "backend", "-n", "demo", "--seconds", "1"];
    s.weft(&[&tap[..], &tls_flags].concat()).ok();
    // The same command by environment variables.
    let by_env = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["edges", "-o", "json", "--admin-addr", &op_s])
        .env("WEFT_OPERATOR_CERT", "alice.crt")
        .env("WEFT_OPERATOR_KEY", "alice.key")
        .env("WEFT_OPERATOR_CA", "ca.crt")
        .current_dir(s.dir.path())
        .output()
        .unwrap();
    assert!(by_env.status.success(), "{by_env:?}");

    // Refused in the handshake: no certificate, another CA's.
    let get = format!("GET /fleet HTTP/1.1\r\nHost: {op}\r\nConnection: close\r\n\r\n");
    for (who, client, reason) in [
        ("no client certificate", None, "no_client_certificate"),
        (
            "a certificate from another CA",
            Some("mallory"),
            "client_certificate_refused",
        ),
    ] {
        let e = tls_request(&s, op, client, &get).unwrap_err();
        println!("{who}: handshake refused: {e}");
        poll(&format!("{reason} counted"), DEADLINE, || {
            (refusals(admin, reason) >= 1.0).then_some(())
        });
    }
    // Plain HTTP to the operator port gets no answer.
    let plain = http_get(op, "/fleet");
    assert!(
        !matches!(plain, Ok((200, _))),
        "plain HTTP served: {plain:?}"
    );
    let by_weft = s
        .weft(&["check", "--proxy", "--admin-addr", &op_s])
        .refused(2);
    println!(
        "weft without an operator certificate: {}",
        by_weft.stderr.trim()
    );
    assert!(
        by_weft.stderr.trim().lines().count() == 1
            && by_weft.stderr.contains("speaks TLS")
            && by_weft.stderr.contains("--operator-cert"),
        "{}",
        by_weft.stderr
    );

    // Trusted, but not on the allow list: 403 naming the identity.
    let (code, body) = tls_request(&s, op, Some("bob"), &get).unwrap();
    println!("bob -> {code} {}", body.trim());
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains(BOB) && body.contains("--operator-allow"),
        "{body}"
    );
    let bob = s
        .weft(&[
            "edges",
            "--admin-addr",
            &op_s,
            "--operator-cert",
            "bob.crt",
            "--operator-key",
            "bob.key",
            "--operator-ca",
            "ca.crt",
        ])
        .refused(1);
    println!("weft edges as bob: {}", bob.stderr.trim());
    assert!(bob.stderr.contains(BOB), "{}", bob.stderr);

    // Allowed, but what a browser on another site could send.
    let close = "Connection: close\r\n\r\n";
    let cases = [
        (
            format!(
                "GET /fleet HTTP/1.1\r\nHost: rebound.example:{}\r\n{close}",
                op.port()
            ),
            "DNS rebinding",
            "foreign_host",
        ),
        (
            format!("GET /fleet HTTP/1.1\r\nHost: {op}\r\nOrigin: https://evil.example\r\n{close}"),
            "another site's",
            "foreign_origin",
        ),
        (
            format!(
                "POST /renew-now HTTP/1.1\r\nHost: {op}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n{close}"
            ),
            "x-weft-operator",
            "no_operator_header",
        ),
    ];
    for (request, why, _) in &cases {
        let (code, body) = tls_request(&s, op, Some("alice"), request).unwrap();
        println!(
            "alice: {} -> {code} {}",
            request.lines().next().unwrap(),
            body.trim()
        );
        assert_eq!(code, 403, "{request}: {body}");
        assert!(body.contains(why), "{request}: {body}");
    }
    // The same POST with the header is served.
    let (code, body) = tls_request(
        &s,
        op,
        Some("alice"),
        &format!(
            "POST /renew-now HTTP/1.1\r\nHost: {op}\r\nX-Weft-Operator: 1\r\nContent-Length: 0\r\n{close}"
        ),
    )
    .unwrap();
    println!(
        "alice: POST /renew-now with the header -> {code} {}",
        body.trim()
    );
    assert_eq!(code, 202, "{body}");

    let (_, metrics) = http_get(admin, "/metrics").unwrap();
    for reason in [
        "no_client_certificate",
        "client_certificate_refused",
        "identity_not_allowed",
        "foreign_host",
        "foreign_origin",
        "no_operator_header",
    ] {
        let n = metric_sum(
            &metrics,
            "admin_refusals_total",
            &["listener=\"operator\"", &format!("reason=\"{reason}\"")],
        );
        println!("admin_refusals_total{{listener=\"operator\",reason=\"{reason}\"}} {n}");
        assert!(n >= 1.0, "{reason} not counted:\n{metrics}");
    }
}

#[test]
fn bad_operator_flags_are_one_line_errors() {
    let s = Scratch::new();
    s.guide_material();
    let mut base: Vec<&str> = vec!["control-plane"];
    base.extend(common::GUIDE_FILES);
    base.extend(common::LOOPBACK_LISTENERS);
    let cases: [(&[&str], &str); 3] = [
        (&["--operator-addr", "127.0.0.2:0"], "--operator-allow"),
        (
            &[
                "--operator-addr",
                "127.0.0.2:0",
                "--operator-allow",
                "alice",
            ],
            "not an identity",
        ),
        (
            &[
                "--operator-addr",
                "127.0.0.2:0",
                "--operator-allow",
                "alice.operators.serviceaccount.identity.linkerd.cluster.local",
            ],
            "another mesh",
        ),
    ];
    for (extra, why) in cases {
        let r = s.weft(&[&base[..], extra].concat()).refused(2);
        println!("{extra:?}: {}", r.stderr.trim());
        assert!(
            r.stderr.trim().lines().count() == 1 && r.stderr.contains(why),
            "{}",
            r.stderr
        );
        assert!(
            !s.path("state").exists(),
            "state written before the refusal"
        );
    }
    let admin = format!("127.0.0.1:{}", free_port());
    let flags: [(&[&str], &str); 3] = [
        (
            &[
                "--operator-cert",
                "missing.crt",
                "--operator-key",
                "issuer.key",
                "--operator-ca",
                "ca.crt",
            ],
            "missing.crt",
        ),
        (
            &[
                "--operator-cert",
                "issuer.crt",
                "--operator-key",
                "missing.key",
                "--operator-ca",
                "ca.crt",
            ],
            "missing.key",
        ),
        (&["--operator-cert", "issuer.crt"], "go together"),
    ];
    for (extra, why) in flags {
        let r = s
            .weft(&[&["check", "--proxy", "--admin-addr", &admin][..], extra].concat())
            .refused(2);
        println!("{extra:?}: {}", r.stderr.trim());
        assert!(
            r.stderr.trim().lines().count() == 1 && r.stderr.contains(why),
            "{}",
            r.stderr
        );
    }
}
