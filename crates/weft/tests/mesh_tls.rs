//! The TLS 1.3 suites and groups between proxies (`--tls-cipher-suites`,
//! `--tls-key-exchange`; ports mode, no root): a backend narrowed to
//! AES-128-GCM and X25519 still serves a default client proxy (which offers
//! the hybrid post-quantum group first), offers nothing else to a TLS
//! client, refuses a proxy with no group in common (a 502 naming the mTLS
//! failure, never plaintext; `weft check --proxy` names the two), and a
//! name the build does not have is refused at start, naming the known ones.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::Scratch;
use common::mesh::{free_port, spawn_app, start_proxy, workload};
use common::proc::{poll, until_ready};

const DEADLINE: Duration = Duration::from_secs(30);
const BACKEND: &str = "backend.demo.serviceaccount.identity.weft.cluster.local";

/// Status line and body of one `GET /` on a new connection.
fn get(to: SocketAddr) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: backend.demo:80\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("").to_string();
    (status, body.to_string())
}

/// `openssl s_client` to the backend's inbound with these TLS 1.3 options:
/// whether the handshake completed, and what openssl printed.
fn probe(s: &Scratch, inbound: u16, opts: &[&str]) -> (bool, String) {
    let connect = format!("127.0.0.1:{inbound}");
    let mut args = vec![
        "s_client",
        "-connect",
        &connect,
        "-servername",
        BACKEND,
        "-tls1_3",
        "-brief",
    ];
    args.extend_from_slice(opts);
    let r = s.openssl(&args);
    let text = format!("{}{}", r.stdout, r.stderr);
    (text.contains("CONNECTION ESTABLISHED"), text)
}

#[test]
fn proxies_offer_and_accept_only_the_configured_suites_and_groups() {
    let s = Scratch::new();
    s.guide_material();
    let app = spawn_app();
    let (be_in, fe_in, legacy_in) = (free_port(), free_port(), free_port());
    std::fs::create_dir(s.path("resources")).unwrap();
    let yaml = [
        workload("backend", app, be_in, ""),
        workload("frontend", free_port(), fe_in, ""),
        workload("legacy", free_port(), legacy_in, ""),
    ]
    .concat();
    s.write("resources/demo.yaml", yaml);
    let cp = s.control_plane(&["--resources", "resources"]);
    until_ready(&cp);

    let narrow = [
        "--tls-cipher-suites",
        "TLS_AES_128_GCM_SHA256",
        "--tls-key-exchange",
        "X25519",
    ];
    let backend = start_proxy(&s, "backend", be_in, &cp, &[], &narrow);
    let (fe_out, legacy_out) = (free_port(), free_port());
    let frontend = start_proxy(
        &s,
        "frontend",
        fe_in,
        &cp,
        &[format!("127.0.0.1:{fe_out}=demo/backend:{app}")],
        &[],
    );
    let legacy = start_proxy(
        &s,
        "legacy",
        legacy_in,
        &cp,
        &[format!("127.0.0.1:{legacy_out}=demo/backend:{app}")],
        &["--tls-key-exchange", "secp384r1"],
    );
    for p in [&backend, &frontend, &legacy] {
        until_ready(p);
    }
    // Each proxy prints what it offers.
    assert!(
        backend.output().contains(
            "mesh-tls                 cipher-suites=TLS_AES_128_GCM_SHA256 key-exchange=X25519"
        ),
        "{}",
        backend.output()
    );
    assert!(
        frontend
            .output()
            .contains("key-exchange=X25519MLKEM768,X25519,secp256r1,secp384r1"),
        "{}",
        frontend.output()
    );

    // The default client proxy and the narrowed backend agree on what they share.
    let (status, body) = get(SocketAddr::from(([127, 0, 0, 1], fe_out)));
    assert!(status.contains(" 200 "), "{status}\n{body}");

    // A TLS client sees only the configured suite and group.
    let (ok, text) = probe(
        &s,
        be_in,
        &[
            "-ciphersuites",
            "TLS_AES_128_GCM_SHA256",
            "-groups",
            "X25519",
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains("TLS_AES_128_GCM_SHA256"), "{text}");
    for (opts, what) in [
        (
            [
                "-ciphersuites",
                "TLS_AES_256_GCM_SHA384",
                "-groups",
                "X25519",
            ],
            "AES-256-GCM only",
        ),
        (
            [
                "-ciphersuites",
                "TLS_AES_128_GCM_SHA256",
                "-groups",
                "P-256",
            ],
            "secp256r1 only",
        ),
    ] {
        let (ok, text) = probe(&s, be_in, &opts);
        assert!(!ok, "{what} was accepted:\n{text}");
    }

    // No group in common: refused with the reason, never sent in plaintext.
    let (status, body) = get(SocketAddr::from(([127, 0, 0, 1], legacy_out)));
    assert!(status.contains(" 502 "), "{status}\n{body}");
    assert!(body.contains("mTLS with"), "{body}");

    // `weft check --proxy` names the two settings that cannot meet, with
    // their proxies; the default frontend shares with both.
    let admin = cp.addr("admin listening on").to_string();
    let check = poll("check names the disjoint TLS settings", DEADLINE, || {
        let r = s.weft(&["check", "--proxy", "--admin-addr", &admin]);
        r.stdout
            .contains("share no key exchange group")
            .then_some(r)
    });
    println!("{}", check.stdout);
    assert_eq!(check.code, 1, "{}{}", check.stdout, check.stderr);
    assert!(
        check.stdout.contains(
            "demo/backend (cipher-suites=TLS_AES_128_GCM_SHA256 key-exchange=X25519) and \
             demo/legacy (cipher-suites=TLS_AES_256_GCM_SHA384,TLS_AES_128_GCM_SHA256,TLS_CHACHA20_POLY1305_SHA256 \
             key-exchange=secp384r1) share no key exchange group"
        ) && check.stdout.contains("3 settings among 3 proxies")
            && !check.stdout.contains("demo/frontend ("),
        "{}",
        check.stdout
    );

    // A name this build does not have is refused at start, naming the known ones.
    for (flag, value, named) in [
        (
            "--tls-key-exchange",
            "X25519,ffdhe2048",
            ["\"ffdhe2048\"", "X25519MLKEM768"],
        ),
        (
            "--tls-cipher-suites",
            "TLS_AES_128_CCM_SHA256",
            ["\"TLS_AES_128_CCM_SHA256\"", "TLS_AES_256_GCM_SHA384"],
        ),
    ] {
        let r = s
            .weft(&[
                "proxy",
                "--workload",
                "demo/frontend",
                "--identity",
                "frontend.demo.serviceaccount.identity.weft.cluster.local",
                "--trust-anchors-file",
                "ca.crt",
                flag,
                value,
            ])
            .refused(2);
        assert!(
            r.stderr.contains(&format!("error: {flag}: ")),
            "{}",
            r.stderr
        );
        for n in named {
            assert!(r.stderr.contains(n), "{flag} {value}: {}", r.stderr);
        }
    }
}
