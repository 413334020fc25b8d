//! The data path in ports mode (one host, no root): control plane and
//! proxies as real processes, unmodified TCP apps on both ends.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::Scratch;
use common::mesh::{echo_server, free_port, start_proxy, workload};
use common::proc::{Proc, http_get, metric, poll};

const DEADLINE: Duration = Duration::from_secs(30);

struct Mesh {
    s: Scratch,
    cp: Option<Proc>,
    backend: Proc,
    frontend: Proc,
    be_app: u16,
    be_in: u16,
    out: Vec<(String, SocketAddr)>,
}

fn up() -> Mesh {
    let s = Scratch::new();
    s.guide_material();
    let be_app = echo_server();
    let (be_in, fe_in, liar_in, fe_app) = (free_port(), free_port(), free_port(), free_port());
    let legacy_app = echo_server();
    std::fs::create_dir(s.path("resources")).unwrap();
    let yaml = [
        workload("frontend", fe_app, fe_in, ""),
        workload("backend", be_app, be_in, ""),
        // Claims an identity its proxy (the backend's) cannot prove.
        workload("liar", be_app, be_in, ""),
        workload(
            "legacy",
            legacy_app,
            liar_in,
            &format!("    config.linkerd.io/skip-inbound-ports: \"{legacy_app}\"\n"),
        ),
    ]
    .concat();
    s.write("resources/demo.yaml", yaml);
    let cp = s.control_plane(&["--resources", "resources", "--reread-interval", "1s"]);
    let admin = cp.addr("admin listening on");
    poll("control plane ready", DEADLINE, || {
        matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
    });
    let backend = start_proxy(&s, "backend", be_in, &cp, &[], &[]);
    let targets = [
        ("backend", format!("demo/backend:{be_app}")),
        ("never-seen", format!("demo/frontend:{fe_app}")),
        ("liar", format!("demo/liar:{be_app}")),
        ("legacy", format!("demo/legacy:{legacy_app}")),
        ("undeclared", "demo/backend:1".to_string()),
    ];
    let mut out = Vec::new();
    let mut mappings = Vec::new();
    for (name, target) in targets {
        let port = free_port();
        mappings.push(format!("127.0.0.1:{port}={target}"));
        out.push((name.to_string(), SocketAddr::from(([127, 0, 0, 1], port))));
    }
    let frontend = start_proxy(
        &s,
        "frontend",
        fe_in,
        &cp,
        &mappings,
        &["--outbound-plaintext", "deny"],
    );
    for p in [&backend, &frontend] {
        let a = p.addr("admin listening on");
        poll("proxy ready", DEADLINE, || {
            matches!(http_get(a, "/ready"), Ok((200, _))).then_some(())
        });
    }
    Mesh {
        s,
        cp: Some(cp),
        backend,
        frontend,
        be_app,
        be_in,
        out,
    }
}

impl Mesh {
    fn out(&self, name: &str) -> SocketAddr {
        self.out.iter().find(|(n, _)| n == name).unwrap().1
    }
}

/// Sends `data`, half-closes, reads everything back.
fn roundtrip(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut w = s.try_clone()?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        let r = w.write_all(&data);
        let _ = w.shutdown(std::net::Shutdown::Write);
        r
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    writer.join().unwrap()?;
    Ok(back)
}

fn sha256(b: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

#[test]
fn ports_mode_end_to_end() {
    let mut m = up();
    // Bytes arrive intact both ways through both proxies, and half-close propagates.
    let mut data = vec![0u8; 8 * 1024 * 1024];
    aws_lc_rs::rand::fill(&mut data).unwrap();
    let back = roundtrip(m.out("backend"), &data).expect("echo through the mesh");
    assert_eq!(sha256(&back), sha256(&data));

    // The backend proxy saw the frontend's identity over TLS.
    let admin = m.backend.addr("admin listening on");
    let (_, metrics) = http_get(admin, "/metrics").unwrap();
    let series = format!(
        "tcp_open_total{{direction=\"inbound\",peer=\"src\",tls=\"true\",no_tls_reason=\"\",client_id=\"frontend.demo.serviceaccount.identity.weft.cluster.local\",server_id=\"backend.demo.serviceaccount.identity.weft.cluster.local\",target_port=\"{}\",protocol=\"opaque\",dst=\"\"}}",
        m.be_app
    );
    assert!(metric(&metrics, &series).unwrap_or(0.0) >= 1.0, "{metrics}");

    // The admin port shows the live chain over TLS for SNI = the proxy's identity.
    let sc = m.s.openssl(&[
        "s_client",
        "-connect",
        &admin.to_string(),
        "-servername",
        "backend.demo.serviceaccount.identity.weft.cluster.local",
        "-showcerts",
    ]);
    assert!(
        sc.stdout
            .contains("CN = backend.demo.serviceaccount.identity.weft.cluster.local"),
        "{}\n{}",
        sc.stdout,
        sc.stderr
    );
    assert!(
        sc.stdout.contains("CN = identity.linkerd.cluster.local"),
        "{}",
        sc.stdout
    );
    // Plain HTTP still answers on the same port.
    assert!(matches!(http_get(admin, "/live"), Ok((200, _))));

    // A peer that cannot prove the expected identity is refused, never plaintext.
    let r = roundtrip(m.out("liar"), b"secret");
    assert!(
        r.map(|b| b.is_empty()).unwrap_or(true),
        "the liar must get nothing"
    );
    m.frontend.wait_for_line(
        "expecting liar.demo.serviceaccount.identity.weft.cluster.local",
        DEADLINE,
    );

    // Not meshed (skipped port) under --outbound-plaintext=deny: refused, and counted.
    assert!(
        roundtrip(m.out("legacy"), b"x")
            .map(|b| b.is_empty())
            .unwrap_or(true)
    );
    m.frontend
        .wait_for_line("is not meshed and --outbound-plaintext=deny", DEADLINE);

    // A port the workload does not declare: the destination service refuses it.
    assert!(
        roundtrip(m.out("undeclared"), b"x")
            .map(|b| b.is_empty())
            .unwrap_or(true)
    );
    m.frontend
        .wait_for_line("port 1 is not a port of demo/backend", DEADLINE);

    // Control plane gone: the cached meshed answer keeps working over mTLS...
    drop(m.cp.take());
    let back = roundtrip(m.out("backend"), b"still here").unwrap();
    assert_eq!(back, b"still here");
    // ...while a never-seen destination is refused (unknown), not sent in plaintext.
    assert!(
        roundtrip(m.out("never-seen"), b"x")
            .map(|b| b.is_empty())
            .unwrap_or(true)
    );
    m.frontend
        .wait_for_line("no answer from the destination service", DEADLINE);
    // And the cached one still works after that.
    assert_eq!(roundtrip(m.out("backend"), b"again").unwrap(), b"again");
}

/// A direct client with the frontend's certificate speaks to the backend
/// proxy: a transport header naming an undeclared port, or the proxy's own,
/// or a garbage one, is refused with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_header_must_name_a_declared_port() {
    let m = up();
    let ia =
        m.cp.as_ref()
            .unwrap()
            .addr("identity listening on")
            .to_string();
    let fe = "frontend.demo.serviceaccount.identity.weft.cluster.local";
    m.s.weft(&[
        "certs",
        "request",
        fe,
        "fe.crt",
        "fe.key",
        "--control-plane",
        &ia,
        "--roots",
        "ca.crt",
        "--token-file",
        "frontend.token",
    ])
    .ok();
    let connector = common::direct::connector(
        &m.s.path("fe.crt"),
        &m.s.path("fe.key"),
        &[&m.s.path("ca.crt")],
    );
    let admin_port = m.backend.addr("admin listening on").port();
    let header = |port: u16| common::direct::transport_header(u64::from(port));
    let cases: Vec<(Vec<u8>, String)> = vec![
        (header(9), "port 9 is not a port of demo/backend".into()),
        (
            header(admin_port),
            format!("port {admin_port} is the proxy's own"),
        ),
        (
            b"transport.l5d.io/v1\r\n\r\n\x00\x00\x10\x00".to_vec(),
            "truncated".into(),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n".to_vec(),
            "preface is wrong".into(),
        ),
    ];
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for (bytes, reason) in cases {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", m.be_in))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from(
            "backend.demo.serviceaccount.identity.weft.cluster.local",
        )
        .unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .expect("mTLS to the backend proxy");
        tls.write_all(&bytes).await.unwrap();
        let _ = tls.shutdown().await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf)).await;
        assert!(
            buf.is_empty(),
            "{reason}: got {:?}",
            String::from_utf8_lossy(&buf)
        );
        m.backend.wait_for_line(&reason, DEADLINE);
    }
    // A correct header still works.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", m.be_in))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(
        "backend.demo.serviceaccount.identity.weft.cluster.local",
    )
    .unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(&header(m.be_app)).await.unwrap();
    tls.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

/// Things that are not mTLS for the backend, sent straight to its proxy:
/// each refused with a logged reason, and the proxy keeps serving.
#[test]
fn inbound_refuses_bad_input_with_a_reason() {
    let m = up();
    let inbound = SocketAddr::from(([127, 0, 0, 1], m.be_in));
    let send = |bytes: &[u8]| {
        let mut s = TcpStream::connect(inbound).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bytes).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        buf
    };
    assert!(send(b"garbage that is not TLS\r\n").is_empty());
    m.backend.wait_for_line(
        "got plaintext; the proxy's inbound port serves only mTLS",
        DEADLINE,
    );
    // Half-open (connected, silent), then stalled mid-handshake (the start
    // of a ClientHello, then nothing): in ports mode both are closed at the
    // inbound handshake deadline, each refusal logged with its peer.
    for first in [
        &[][..],
        &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc][..],
    ] {
        let mut s = TcpStream::connect(inbound).unwrap();
        let me = s.local_addr().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(first).unwrap();
        let t0 = std::time::Instant::now();
        let mut buf = [0u8; 1];
        assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "closed by the proxy");
        let line = m.backend.wait_for_line(&format!("peer={me}"), DEADLINE);
        println!(
            "{} bytes then silence: closed after {:.1?}: {line}",
            first.len(),
            t0.elapsed()
        );
        assert!(
            line.contains("handshake_timeout") && line.contains("--inbound-handshake-timeout"),
            "{line}"
        );
    }
    // TLS for another name.
    let s2 = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    s2.block_on(async {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("someone-else.example").unwrap();
        assert!(
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .is_err()
        );
    });
    m.backend
        .wait_for_line("got TLS for Some(\"someone-else.example\")", DEADLINE);
    // Still serving.
    assert_eq!(
        roundtrip(m.out("backend"), b"after all that").unwrap(),
        b"after all that"
    );
}

/// Leaf and token both expired, control plane gone: not ready, and the log
/// says what to run.
#[test]
fn expired_leaf_and_token_make_the_proxy_unready() {
    let s = Scratch::new();
    s.guide_material();
    std::fs::create_dir(s.path("resources")).unwrap();
    let (app, inbound) = (free_port(), free_port());
    s.write("resources/demo.yaml", workload("lonely", app, inbound, ""));
    let cp = s.control_plane(&[
        "--resources",
        "resources",
        "--identity-issuance-lifetime",
        "3s",
        "--identity-clock-skew-allowance",
        "0s",
    ]);
    let proxy = start_proxy(&s, "lonely", inbound, &cp, &[], &[]);
    let admin = proxy.addr("admin listening on");
    poll("proxy ready", DEADLINE, || {
        matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
    });
    // The token the proxy will fall back on expires too.
    s.weft(&[
        "token",
        "create",
        "-n",
        "demo",
        "--service-account",
        "lonely",
        "--ttl",
        "1s",
        "--state-dir",
        "state",
        "--out",
        "lonely.token",
        "--force",
    ])
    .ok();
    drop(cp);
    let body = poll(
        "not ready once the leaf expired",
        DEADLINE,
        || match http_get(admin, "/ready") {
            Ok((503, b)) => Some(b),
            _ => None,
        },
    );
    assert!(
        body.contains("expired") || body.contains("no certificate"),
        "{body}"
    );
    proxy.wait_for_line(
        "weft token create --namespace demo --service-account lonely",
        DEADLINE,
    );
}
