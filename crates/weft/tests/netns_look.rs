//! `weft identity` and `weft edges` in network namespaces, as root: three
//! meshed workloads (frontend → backend → db over mTLS) and one unmeshed
//! client calling backend in plaintext. `weft identity backend` names the
//! serial backend presents in a TLS handshake; `weft edges --plaintext`
//! fails while the unmeshed client's edge is in the window and passes once
//! a window passed without it. The operator listener on the control plane
//! pod's address, called from the client's pod: no certificate, a foreign
//! Host or Origin and a simple cross-site POST are refused; an allowed
//! operator reads /fleet. Bad input: one-line errors, exit code 2.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netmesh::{NetMesh, app_in, get_in};
use common::proc::poll;
use control_plane::fleet_edges::{EdgesView, Peer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use testbed::{have_root, in_ns};

const APP: u16 = 8080;
const LONG: Duration = Duration::from_secs(120);

fn id(name: &str) -> String {
    format!("{name}.demo.serviceaccount.identity.weft.cluster.local")
}

/// Records the server's leaf; checks only the handshake signature (this
/// reads what a server presents, it trusts nothing).
#[derive(Debug)]
struct Capture(Mutex<Option<Vec<u8>>>);

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        leaf: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = Some(leaf.to_vec());
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let p = rustls::crypto::aws_lc_rs::default_provider();
        rustls::crypto::verify_tls12_signature(m, c, d, &p.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let p = rustls::crypto::aws_lc_rs::default_provider();
        rustls::crypto::verify_tls13_signature(m, c, d, &p.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The serial of the leaf `to` presents for SNI `name`, read in a TLS
/// handshake from inside `ns`.
fn presented_serial(ns: &str, to: SocketAddr, name: String) -> String {
    let leaf = in_ns(ns, move || {
        let capture = Arc::new(Capture(Mutex::new(None)));
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
        let mut conn =
            rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from(name).unwrap())
                .unwrap();
        let mut tcp = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(10)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The server's certificate arrives in its first flight, whatever
        // it thinks of our (absent) client certificate afterwards.
        while conn.is_handshaking() && capture.0.lock().unwrap().is_none() {
            if conn.complete_io(&mut tcp).is_err() {
                break;
            }
        }
        capture.0.lock().unwrap().clone()
    })
    .unwrap()
    .expect("the server presented a certificate");
    pki::info::CertInfo::from_der(&leaf).unwrap().serial
}

fn edges(m: &NetMesh, since: &str) -> EdgesView {
    let r = m
        .weft(&["edges", "-n", "demo", "--since", since, "-o", "json"])
        .ok();
    serde_json::from_str(&r.stdout).unwrap()
}

#[test]
fn identity_and_edges_with_three_meshed_workloads_and_an_unmeshed_client() {
    if !have_root("identity_and_edges_with_three_meshed_workloads_and_an_unmeshed_client") {
        return;
    }
    let m = NetMesh::build(
        &[("frontend", &[APP]), ("backend", &[APP]), ("db", &[APP])],
        &["client"],
        &[
            "--operator-addr",
            "0.0.0.0:9443",
            "--operator-allow",
            &id("alice"),
        ],
        &[],
    );
    for w in ["backend", "db"] {
        app_in(&m.ns(w), APP);
    }
    let (backend, db) = (m.addr("backend", APP), m.addr("db", APP));
    let client_ip = m.addr("client", APP).ip().to_string();
    for _ in 0..5 {
        assert_eq!(get_in(&m.ns("frontend"), backend, "/").unwrap().0, 200);
        assert_eq!(get_in(&m.ns("backend"), db, "/").unwrap().0, 200);
    }
    assert_eq!(get_in(&m.ns("client"), backend, "/").unwrap().0, 200);

    // identity: what backend presents in a handshake is what weft prints.
    let serial = presented_serial(
        &m.ns("client"),
        SocketAddr::new(m.addr("backend", APP).ip(), 4143),
        id("backend"),
    );
    let text = m.weft(&["identity", "backend", "-n", "demo"]).ok();
    println!("{}", text.stdout);
    assert!(
        text.stdout.contains(&format!("Serial:   {serial}")),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains(&id("backend")) && text.stdout.contains(" left)"));
    let json = m.weft(&["identity", "demo/backend", "-o", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let proxies = v.as_array().unwrap();
    assert_eq!(proxies.len(), 1, "one proxy fronts backend");
    assert_eq!(proxies[0]["certificates"][0]["serial"], serial.as_str());
    assert_eq!(proxies[0]["identity"], id("backend").as_str());
    let pem = m
        .weft(&["identity", "backend", "-n", "demo", "--chain"])
        .ok();
    let chain = pki::parse_certs(std::path::Path::new("chain"), pem.stdout.as_bytes()).unwrap();
    assert_eq!(chain.len(), 2, "leaf and issuer");
    assert_eq!(
        pki::info::CertInfo::from_der(&chain[0]).unwrap().serial,
        serial
    );

    // edges: both the mTLS ones and the unmeshed client's plaintext one.
    let start = Instant::now();
    let v = poll("the edges reported", LONG, || {
        let v = edges(&m, "10m");
        let fe = v.edges.iter().any(|e| {
            e.mtls
                && e.client == Peer::Identity(id("frontend").parse().unwrap())
                && e.server == Peer::Identity(id("backend").parse().unwrap())
                && e.requests >= 5
        });
        let be_db = v
            .edges
            .iter()
            .any(|e| e.mtls && e.server == Peer::Identity(id("db").parse().unwrap()));
        let plain = v
            .edges
            .iter()
            .any(|e| !e.mtls && e.client == Peer::Address(client_ip.clone()));
        (fe && be_db && plain).then_some(v)
    });
    println!("edges reported after {:?}", start.elapsed());
    let fe = v
        .edges
        .iter()
        .find(|e| e.mtls && e.workload == "demo/backend")
        .unwrap();
    assert_eq!(fe.success_rate, Some(1.0));
    assert!(!fe.unmeshed);
    let plain = v.edges.iter().find(|e| !e.mtls).unwrap();
    assert!(plain.unmeshed && plain.no_tls_reason == "not_provided_by_remote");
    assert!(v.unmeshed_workloads.is_empty(), "{v:?}");
    let table = m.weft(&["edges", "-n", "demo"]).ok();
    println!("{}", table.stdout);
    assert!(table.stdout.contains(&format!("{client_ip}  ")) && table.stdout.contains("PLAINTEXT"));
    web_view(&m);
    operator_off_loopback(&m);

    let gate = m
        .weft(&["edges", "--plaintext", "--since", "10m"])
        .refused(1);
    println!("{}{}", gate.stdout, gate.stderr);
    assert!(gate.stderr.contains(&client_ip), "{}", gate.stderr);
    assert!(
        gate.stdout.contains("not every hop was mTLS"),
        "{}",
        gate.stdout
    );

    // The client stops; frontend goes on. A window later the gate passes.
    let stopped = Instant::now();
    let passed = poll("a window without the plaintext edge", LONG, || {
        let _ = get_in(&m.ns("frontend"), backend, "/");
        let r = m.weft(&["edges", "--plaintext", "--since", "20s"]);
        (r.code == 0).then_some(r)
    });
    println!("{}", passed.stdout);
    println!(
        "the gate passed {:?} after the last plaintext request",
        stopped.elapsed()
    );
    let v = edges(&m, "20s");
    assert!(v.edges.iter().all(|e| e.mtls), "{v:?}");

    // Bad input: one line, exit 2.
    let r = m.weft(&["identity", "nosuch", "-n", "demo"]).refused(2);
    println!("{}", r.stderr.trim());
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("demo/nosuch") && r.stderr.contains("demo/backend"));
}

/// The operator listener on the control plane pod's address, from the
/// client's pod (another host): only an allowed operator's certificate,
/// and only requests no browser page of another site could make.
fn operator_off_loopback(m: &NetMesh) {
    m.s.weft(&[
        "certs",
        "create",
        &id("alice"),
        "alice.crt",
        "alice.key",
        "--profile",
        "leaf",
        "--not-after",
        "1h",
        "--ca",
        "issuer.crt",
        "--ca-key",
        "issuer.key",
        "--no-password",
        "--insecure",
    ])
    .ok();
    let op = SocketAddr::new(m.cp_ip.into(), 9443);
    let ask = |alice: bool, request: String| {
        let (ca, crt, key) = (
            m.s.path("ca.crt"),
            m.s.path("alice.crt"),
            m.s.path("alice.key"),
        );
        in_ns(&m.ns("client"), move || {
            let client = alice.then_some((crt.as_path(), key.as_path()));
            let name = "weft-identity.weft.serviceaccount.identity.weft.cluster.local";
            common::operator::tls_request(&ca, name, op, client, &request)
        })
        .unwrap()
    };
    let get = |host: &str, extra: &str| {
        format!("GET /fleet HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
    };
    let refused = ask(false, get(&op.to_string(), "")).unwrap_err();
    println!("operator listener at {op}, no certificate: {refused}");
    let (code, body) = ask(true, get(&op.to_string(), "")).unwrap();
    assert!(code == 200 && body.contains("\"proxies\""), "{code} {body}");
    let cases = [
        (get("rebound.example:9443", ""), "is not this listener's"),
        (
            get(&op.to_string(), "Origin: https://evil.example\r\n"),
            "another site's",
        ),
        (
            format!(
                "POST /renew-now HTTP/1.1\r\nHost: {op}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
            "x-weft-operator",
        ),
    ];
    for (request, says) in cases {
        let (code, body) = ask(true, request).unwrap();
        println!("alice from the client's pod -> {code} {}", body.trim());
        assert!(code == 403 && body.contains(says), "{code} {body}");
    }
}

/// The control plane's admin endpoint, read inside its namespace.
fn admin_json<T: serde::de::DeserializeOwned>(m: &NetMesh, path: &'static str) -> T {
    let (code, body) = in_ns(&m.ns("cp"), move || {
        common::proc::http_get(SocketAddr::from(([127, 0, 0, 1], 9990)), path)
    })
    .unwrap()
    .unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The web view in headless Chromium (inside the control plane's
/// namespace, where its admin listens) shows what /fleet and /edges say:
/// the same proxies, the same edges with the plaintext one marked, the
/// same expiry dates. A screenshot stays under target/tmp/web-view/.
fn web_view(m: &NetMesh) {
    if !common::browser::have_chromium("web view") {
        return;
    }
    let in_cp = |program: &str| m.bed.by_name("cp").cmd(program);
    let url = "http://127.0.0.1:9990/ui";
    let start = Instant::now();
    let dom = common::browser::dump_dom(in_cp, url);
    println!("web view rendered in {:?}", start.elapsed());
    let fleet: control_plane::fleet::FleetView = admin_json(m, "/fleet");
    let view: EdgesView = admin_json(m, "/edges?since=600");
    assert!(
        dom.contains(r#"data-loaded="true""#),
        "the page read the API: {dom}"
    );
    let rows = |marker: &str| common::browser::rows(&dom, marker);
    let attr = |r: &std::collections::BTreeMap<String, String>, k: &str| r[k].clone();

    // The same proxies: workload, identity, leaf expiry.
    let mut shown: Vec<_> = rows("data-generation")
        .iter()
        .map(|r| {
            (
                attr(r, "data-workload"),
                attr(r, "data-identity"),
                attr(r, "data-not-after"),
            )
        })
        .collect();
    let mut want: Vec<_> = fleet
        .proxies
        .iter()
        .map(|p| {
            (
                p.workload.clone(),
                p.identity.to_string(),
                p.not_after.to_string(),
            )
        })
        .collect();
    shown.sort();
    want.sort();
    assert_eq!(shown, want, "proxies on the page and in /fleet");

    // The same edges, the plaintext one marked.
    let peer = |p: &Peer| p.to_string();
    let mut shown: Vec<_> = rows("data-connections")
        .iter()
        .map(|r| {
            (
                attr(r, "data-client"),
                attr(r, "data-server"),
                attr(r, "data-mtls"),
            )
        })
        .collect();
    let mut want: Vec<_> = view
        .edges
        .iter()
        .map(|e| (peer(&e.client), peer(&e.server), e.mtls.to_string()))
        .collect();
    shown.sort();
    want.sort();
    assert_eq!(shown, want, "edges on the page and in /edges");
    assert!(
        want.iter().any(|e| e.2 == "false"),
        "a plaintext edge to mark"
    );
    assert!(
        dom.contains(r#"class="plaintext""#) && dom.contains("plaintext (not_provided_by_remote)"),
        "the plaintext edge is marked"
    );

    // The same expiry dates: each anchor, the issuer, each leaf.
    let b = fleet.bundle.as_ref().unwrap();
    let mut want: Vec<(String, String, String)> = b
        .anchors
        .iter()
        .zip(&b.anchor_not_after)
        .map(|(a, t)| ("anchor".into(), a.clone(), t.to_string()))
        .chain([(
            "issuer".into(),
            b.issuer_sha256.clone(),
            b.issuer_not_after.to_string(),
        )])
        .chain(fleet.proxies.iter().map(|p| {
            (
                "leaf".into(),
                p.identity.to_string(),
                p.not_after.to_string(),
            )
        }))
        .collect();
    let mut shown: Vec<_> = rows("data-kind")
        .iter()
        .filter(|r| r.contains_key("data-name"))
        .map(|r| {
            (
                attr(r, "data-kind"),
                attr(r, "data-name"),
                attr(r, "data-not-after"),
            )
        })
        .collect();
    shown.sort();
    want.sort();
    assert_eq!(shown, want, "expiry on the page and in /fleet");
    assert!(b.anchor_not_after.iter().all(|t| *t > fleet.now) && b.issuer_not_after > fleet.now);

    let png = common::browser::screenshot(in_cp, url, "netns_look.png");
    println!("web view screenshot: {}", png.display());
}

/// Bad input with nothing running: one-line errors and exit code 2.
#[test]
fn bad_input_is_one_line_with_exit_code_2() {
    let s = common::Scratch::new();
    let nothing = format!("127.0.0.1:{}", common::mesh::free_port());
    for args in [
        vec!["identity", "backend", "--admin-addr", nothing.as_str()],
        vec!["edges", "--admin-addr", nothing.as_str()],
        vec!["edges", "--since", "10x"],
        vec!["edges", "--since", "3h"],
        vec!["edges", "-n", "Bad&ns"],
        vec!["tap", "backend", "--admin-addr", nothing.as_str()],
        vec!["tap", "backend", "--max-rps", "many"],
        vec!["tap", "backend", "--seconds", "0"],
        vec!["tap", "backend", "-n", "Bad&ns"],
    ] {
        let r = s.weft(&args).refused(2);
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.starts_with("error: "), "{args:?}: {}", r.stderr);
        println!("{args:?}: {}", r.stderr.trim());
    }
    let r = s.weft(&["identity", "backend", "--admin-addr", &nothing]);
    assert!(r.stderr.contains(&nothing) && r.stderr.contains("--admin-addr"));
}
