//! Bounded listeners: idle connections held against the admin ports (which
//! any pod can reach on a proxy) cannot starve them, the process, or the
//! mesh traffic beside them; a Certify flood gets its configured rate.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

#[path = "limits/certify.rs"]
mod certify;
mod common;
#[path = "limits/proxy.rs"]
mod proxy;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Scratch;
use common::mesh::{echo_server, free_port, start_proxy, workload};
use common::proc::{Proc, http_get, metric_sum, poll};
use common::watch::CP_NAME;

const DEADLINE: Duration = Duration::from_secs(30);
const HELD: usize = 2_000;
const CAP: &str = "50";
const IDLE: &str = "2s";

fn ready(addr: SocketAddr) {
    poll("ready", DEADLINE, || {
        matches!(http_get(addr, "/ready"), Ok((200, _))).then_some(())
    });
}

fn open_fds(p: &Proc) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", p.child.id()))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kb(p: &Proc) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", p.child.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One echo exchange through frontend's proxy to backend over mTLS.
fn exchange(via: SocketAddr) -> Duration {
    try_exchange(via).unwrap()
}

/// The first exchange, polled: until the control plane has read the
/// workloads file, frontend's proxy does not know backend and refuses
/// (fail closed; CI once saw a reset there).
fn first_exchange(via: SocketAddr) {
    poll("a first exchange through the mesh", DEADLINE, || {
        try_exchange(via).ok()
    });
}

fn try_exchange(via: SocketAddr) -> std::io::Result<Duration> {
    let t = Instant::now();
    let mut c = TcpStream::connect_timeout(&via, Duration::from_secs(5))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.write_all(b"still served")?;
    let mut got = [0u8; 12];
    c.read_exact(&mut got)?;
    assert_eq!(&got, b"still served");
    Ok(t.elapsed())
}

/// Whether the server has closed `c` (EOF or reset) by `deadline`.
fn closed_by_server(mut c: &TcpStream, until: Instant) -> bool {
    let left = until.saturating_duration_since(Instant::now());
    c.set_read_timeout(Some(left.max(Duration::from_millis(10))))
        .unwrap();
    let mut b = [0u8; 1];
    match c.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn idle_connections_cannot_starve_the_admin_listeners() {
    testbed::raise_nofile();
    let s = Scratch::new();
    s.guide_material();
    let be_app = echo_server();
    std::fs::create_dir(s.path("resources")).unwrap();
    let limits = ["--admin-max-connections", CAP, "--admin-idle-timeout", IDLE];
    let mut cp_args = vec!["--resources", "resources"];
    cp_args.extend(limits);
    let cp = s.control_plane(&cp_args);
    let cp_admin = cp.addr("admin listening on");
    ready(cp_admin);
    // Ports chosen once the control plane holds its own, so none collide.
    let (be_in, fe_in, fe_app, out) = (free_port(), free_port(), free_port(), free_port());
    s.write(
        "resources/demo.yaml",
        [
            workload("frontend", fe_app, fe_in, ""),
            workload("backend", be_app, be_in, ""),
        ]
        .concat(),
    );
    let backend = start_proxy(&s, "backend", be_in, &cp, &[], &limits);
    let mapping = format!("127.0.0.1:{out}=demo/backend:{be_app}");
    let frontend = start_proxy(&s, "frontend", fe_in, &cp, &[mapping], &[]);
    let be_admin = backend.addr("admin listening on");
    ready(be_admin);
    ready(frontend.addr("admin listening on"));
    let via = SocketAddr::from(([127, 0, 0, 1], out));
    first_exchange(via);
    let fds_before = (open_fds(&cp), open_fds(&backend));

    // An attacker opens connections and never sends a byte.
    let mut held: Vec<TcpStream> = Vec::new();
    for addr in [cp_admin, be_admin] {
        for _ in 0..HELD {
            held.push(TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap());
        }
    }
    let fds_during = (open_fds(&cp), open_fds(&backend));
    println!(
        "held {} idle connections: descriptors control plane {} -> {}, backend proxy {} -> {}; RSS control plane {} kB, backend proxy {} kB",
        held.len(),
        fds_before.0,
        fds_during.0,
        fds_before.1,
        fds_during.1,
        rss_kb(&cp),
        rss_kb(&backend)
    );
    let cap: usize = CAP.parse().unwrap();
    assert!(
        fds_during.1 <= fds_before.1 + cap + 16,
        "the proxy holds {} descriptors (cap {cap})",
        fds_during.1
    );
    assert!(fds_during.0 <= fds_before.0 + cap + 16);

    // Mesh traffic and certificates are untouched meanwhile.
    let took = exchange(via);
    println!("mesh exchange while the admin ports are saturated: {took:?}");

    // Every held connection is closed by the servers: past the cap at
    // accept, the rest once idle.
    let until = Instant::now() + DEADLINE;
    let open = held.iter().filter(|c| !closed_by_server(c, until)).count();
    assert_eq!(open, 0, "{open} idle connections are still open");
    drop(held);

    for (addr, who) in [(cp_admin, "control plane"), (be_admin, "backend proxy")] {
        ready(addr);
        let (_, body) = http_get(addr, "/metrics").unwrap();
        let cap_hits = metric_sum(
            &body,
            "listener_limit_hits_total",
            &["reason=\"connection_cap\""],
        );
        let idle_hits = metric_sum(
            &body,
            "listener_limit_hits_total",
            &["reason=\"idle_timeout\""],
        );
        println!("{who}: {cap_hits} refused at the cap, {idle_hits} closed idle");
        // Each held connection was closed by one limit or the other.
        assert!(cap_hits + idle_hits >= HELD as f64, "{who}: {body}");
        assert!(cap_hits >= 1.0 && idle_hits >= 1.0, "{who}: {body}");
    }
    exchange(via);
}

/// The control plane's gRPC listeners: at most this many connections each
/// in the test below (above `HELD`, so every idle connection is admitted and
/// closed by the idle timeout, not the cap).
const GRPC_CAP: &str = "3000";
const GRPC_IDLE: Duration = Duration::from_secs(10);
/// Stated bounds for the control plane holding `HELD` idle TLS connections.
const GRPC_FDS_OVER_HELD: usize = 64;
const GRPC_RSS_KB: u64 = 256 * 1024;

/// TLS 1.3 to the control plane, checked against `ca.crt`, ALPN h2, with
/// `client` (certificate, key) as the client certificate if given.
fn grpc_tls(s: &Scratch, client: Option<(&str, &str)>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in pki::load_certs(&s.path("ca.crt")).unwrap() {
        roots.add(c).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots);
    let mut cfg = match client {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            use rustls::pki_types::pem::PemObject;
            let certs = pki::load_certs(&s.path(cert)).unwrap();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(s.path(key)).unwrap();
            b.with_client_auth_cert(certs, key).unwrap()
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
}

type GrpcConn = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_connect(tls: &tokio_rustls::TlsConnector, addr: SocketAddr) -> GrpcConn {
    let name = rustls::pki_types::ServerName::try_from(CP_NAME).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tls.connect(name, tcp).await.unwrap()
}

/// Reads (and drops) whatever the server sends until it closes the
/// connection or `until` passes; returns when it closed.
async fn server_closes(mut c: GrpcConn, until: tokio::time::Instant) -> Option<Instant> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    tokio::time::timeout_at(until, async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// The SETTINGS_MAX_CONCURRENT_STREAMS the server announces on `c`.
async fn announced_streams(mut c: GrpcConn) -> u32 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    c.flush().await.unwrap();
    loop {
        let mut head = [0u8; 9];
        c.read_exact(&mut head).await.unwrap();
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        c.read_exact(&mut payload).await.unwrap();
        // SETTINGS (type 4) without ACK: six-byte identifier/value pairs.
        if head[3] == 4 && head[4] & 1 == 0 {
            return payload
                .chunks_exact(6)
                .find(|p| p[..2] == [0, 3])
                .map(|p| u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
                .unwrap_or(u32::MAX);
        }
    }
}

/// Issue 13: idle TLS connections held against identity (which accepts
/// clients without a certificate) are closed by the idle timeout while
/// certificates are still issued, within stated descriptor and memory
/// bounds; a silent watch stream is never cut; a connection without a
/// client certificate is offered a small stream cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_grpc_connections_are_closed_while_certificates_are_issued() {
    use tokio::task::block_in_place;
    testbed::raise_nofile();
    let s = Scratch::new();
    s.guide_material();
    std::fs::create_dir(s.path("resources")).unwrap();
    s.write("resources/demo.yaml", workload("backend", 7000, 4143, ""));
    let idle = format!("{}s", GRPC_IDLE.as_secs());
    let cp = s.control_plane(&[
        "--resources",
        "resources",
        "--grpc-max-connections",
        GRPC_CAP,
        "--grpc-idle-timeout",
        &idle,
    ]);
    let admin = cp.addr("admin listening on");
    block_in_place(|| ready(admin));
    let ia = cp.addr("identity listening on");
    let da = cp.addr("destination listening on");
    let certify = |sa: &str| {
        let tok = s.token(sa);
        let t = Instant::now();
        s.weft(&[
            "certs",
            "request",
            &format!("{sa}.demo.serviceaccount.identity.weft.cluster.local"),
            &format!("{sa}.crt"),
            &format!("{sa}.key"),
            "--control-plane",
            &ia.to_string(),
            "--roots",
            "ca.crt",
            "--token-file",
            &tok,
        ])
        .ok();
        t.elapsed()
    };
    block_in_place(|| certify("backend"));

    // A proxy's destination watch, which then stays silent.
    let watch = common::watch::watch_backend(&s, da).await;
    let watching = Instant::now();

    // An attacker completes TLS without a certificate and sends nothing.
    let fds_before = open_fds(&cp);
    let anonymous = grpc_tls(&s, None);
    let t = Instant::now();
    let mut opening = tokio::task::JoinSet::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    for _ in 0..HELD {
        let (tls, slots) = (anonymous.clone(), slots.clone());
        opening.spawn(async move {
            let _slot = slots.acquire().await.unwrap();
            tls_connect(&tls, ia).await
        });
    }
    let held: Vec<GrpcConn> = opening.join_all().await;
    let opened = t.elapsed();
    let fds_during = open_fds(&cp);
    let rss = rss_kb(&cp);
    println!(
        "held {} idle TLS connections to identity (opened in {opened:?}): control plane descriptors {fds_before} -> {fds_during} (bound {}), RSS {rss} kB (bound {GRPC_RSS_KB} kB)",
        held.len(),
        fds_before + HELD + GRPC_FDS_OVER_HELD,
    );
    assert!(
        opened < GRPC_IDLE,
        "opening took {opened:?}, longer than the idle timeout: the connections were not all held at once"
    );
    assert!(
        fds_during >= fds_before + HELD,
        "not all held connections are open: {fds_during}"
    );
    assert!(fds_during <= fds_before + HELD + GRPC_FDS_OVER_HELD);
    assert!(rss <= GRPC_RSS_KB, "RSS {rss} kB");

    // Certificates are still issued meanwhile.
    let took = block_in_place(|| certify("frontend"));
    println!("Certify (weft certs request, process included) while they are held: {took:?}");

    // The server closes every held connection once idle.
    let until = tokio::time::Instant::now() + GRPC_IDLE + DEADLINE;
    let mut closing = tokio::task::JoinSet::new();
    for c in held {
        closing.spawn(server_closes(c, until));
    }
    let closes: Vec<Option<Instant>> = closing.join_all().await;
    let open = closes.iter().filter(|c| c.is_none()).count();
    assert_eq!(open, 0, "{open} idle connections are still open");
    let first = closes.iter().flatten().min().unwrap();
    println!(
        "idle connections closed between {:?} and {:?} after they were opened",
        first.duration_since(t),
        closes.iter().flatten().max().unwrap().duration_since(t)
    );
    assert!(first.duration_since(t) >= GRPC_IDLE.saturating_sub(Duration::from_secs(1)));
    let (_, body) = block_in_place(|| http_get(admin, "/metrics")).unwrap();
    let idle_hits = metric_sum(
        &body,
        "listener_limit_hits_total",
        &["listener=\"identity\"", "reason=\"idle_timeout\""],
    );
    println!("identity: {idle_hits} connections closed idle");
    assert!(idle_hits >= HELD as f64, "{body}");

    // The watch, silent for longer than the idle timeout, is still open.
    assert!(watching.elapsed() > GRPC_IDLE);
    let mut watch = watch;
    let next = tokio::time::timeout(Duration::from_secs(2), watch.message()).await;
    assert!(next.is_err(), "the silent watch ended: {next:?}");

    // Streams per connection: small without a client certificate.
    let with_cert = grpc_tls(&s, Some(("backend.crt", "backend.key")));
    let anon = announced_streams(tls_connect(&anonymous, ia).await).await;
    let proxy = announced_streams(tls_connect(&with_cert, ia).await).await;
    println!(
        "identity offers {anon} streams per connection without a certificate, {proxy} with one"
    );
    assert_eq!(anon, 16);
    assert!(proxy >= 4096 + 1024);
}

/// A full gRPC listener closes further connections at once and counts them,
/// connections that never finish TLS are closed at the handshake deadline,
/// and the other listeners are untouched meanwhile.
#[test]
fn a_full_grpc_listener_refuses_at_the_cap_without_starving_the_others() {
    let s = Scratch::new();
    s.guide_material();
    let cp = s.control_plane(&[
        "--grpc-max-connections",
        "20",
        "--grpc-handshake-timeout",
        "2s",
    ]);
    let admin = cp.addr("admin listening on");
    ready(admin);
    let policy = cp.addr("policy listening on");
    let ia = cp.addr("identity listening on").to_string();
    // TCP only, never a ClientHello: 20 fill the listener, 20 more are over.
    let held: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect_timeout(&policy, Duration::from_secs(5)).unwrap())
        .collect();
    let tok = s.token("backend");
    let t = Instant::now();
    s.weft(&[
        "certs",
        "request",
        "backend.demo.serviceaccount.identity.weft.cluster.local",
        "backend.crt",
        "backend.key",
        "--control-plane",
        &ia,
        "--roots",
        "ca.crt",
        "--token-file",
        &tok,
    ])
    .ok();
    println!("Certify while policy is full: {:?}", t.elapsed());
    let until = Instant::now() + DEADLINE;
    let open = held.iter().filter(|c| !closed_by_server(c, until)).count();
    assert_eq!(open, 0, "{open} connections to policy are still open");
    let (_, body) = http_get(admin, "/metrics").unwrap();
    let hits = |reason: &str| {
        metric_sum(
            &body,
            "listener_limit_hits_total",
            &["listener=\"policy\"", &format!("reason=\"{reason}\"")],
        )
    };
    let (cap, handshake) = (hits("connection_cap"), hits("handshake_timeout"));
    println!("policy: {cap} refused at the cap, {handshake} past the handshake deadline");
    assert_eq!(cap + handshake, 40.0, "{body}");
    assert!(cap >= 20.0 && handshake >= 1.0, "{body}");
}
