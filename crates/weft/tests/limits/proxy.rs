//! The proxy's data-plane listeners: idle TCP connections and TLS handshakes
//! left half-done against an inbound port cannot starve it, and a forwarded
//! connection is closed only when it moves no bytes for the idle timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::common::Scratch;
use super::common::mesh::{echo_server, free_port, start_proxy, workload};
use super::common::proc::{Proc, http_get, metric_sum, poll};
use super::{DEADLINE, HELD, closed_by_server, exchange, first_exchange, open_fds, ready, rss_kb};

const HANDSHAKE: Duration = Duration::from_secs(30);
/// Room for the held connections and a few mesh requests beside them.
const CAP: usize = 2 * HELD + 20;
/// Connections opened once the held ones fill the listener.
const OVER: usize = 100;
/// Stated bounds for the backend proxy holding `2 * HELD` connections.
const FDS_OVER_HELD: usize = 64;
const RSS_KB: u64 = 256 * 1024;
const FDS_SLACK: usize = 8;
const STREAM_IDLE: Duration = Duration::from_secs(3);
const BACKEND: &str = "backend.demo.serviceaccount.identity.weft.cluster.local";

/// A TLS 1.3 ClientHello for `name` offering the transport header's ALPN,
/// as a client that will never send its next flight.
fn client_hello(name: &str) -> Vec<u8> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"transport.l5d.io/v1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut c = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let mut hello = Vec::new();
    c.write_tls(&mut hello).unwrap();
    hello
}

/// Whether the server closes `c` by `until`, reading past whatever it sent
/// first (a TLS server's flight).
fn closed_after_reading(mut c: &TcpStream, until: Instant) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        c.set_read_timeout(Some(left.max(Duration::from_millis(10))))
            .unwrap();
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) if Instant::now() < until => {}
            Ok(_) => return false,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

fn limit_hits(admin: SocketAddr, listener: &str, reason: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics").unwrap();
    metric_sum(
        &body,
        "listener_limit_hits_total",
        &[
            &format!("listener=\"{listener}\""),
            &format!("reason=\"{reason}\""),
        ],
    )
}

struct Mesh {
    _cp: Proc,
    backend: Proc,
    frontend: Proc,
    inbound: SocketAddr,
    via: SocketAddr,
}

/// frontend -> backend over mTLS, backend's inbound with `CAP` and
/// `HANDSHAKE`, frontend's forwarded connections idle after `STREAM_IDLE`.
fn mesh(s: &Scratch) -> Mesh {
    s.guide_material();
    let be_app = echo_server();
    std::fs::create_dir(s.path("resources")).unwrap();
    let (be_in, fe_in, fe_app, out) = (free_port(), free_port(), free_port(), free_port());
    // Written before the control plane starts, so it is read with the rest
    // (not left to a file event, which a loaded machine may deliver late).
    s.write(
        "resources/demo.yaml",
        [
            workload("frontend", fe_app, fe_in, ""),
            workload("backend", be_app, be_in, ""),
        ]
        .concat(),
    );
    let cp = s.control_plane(&["--resources", "resources"]);
    ready(cp.addr("admin listening on"));
    let (cap, handshake) = (CAP.to_string(), format!("{}s", HANDSHAKE.as_secs()));
    let be_limits = [
        "--inbound-max-connections",
        &cap,
        "--inbound-handshake-timeout",
        &handshake,
    ];
    let backend = start_proxy(s, "backend", be_in, &cp, &[], &be_limits);
    let mapping = format!("127.0.0.1:{out}=demo/backend:{be_app}");
    let idle = format!("{}s", STREAM_IDLE.as_secs());
    let fe_limits = ["--stream-idle-timeout", idle.as_str()];
    let frontend = start_proxy(s, "frontend", fe_in, &cp, &[mapping], &fe_limits);
    ready(backend.addr("admin listening on"));
    ready(frontend.addr("admin listening on"));
    let via = SocketAddr::from(([127, 0, 0, 1], out));
    first_exchange(via);
    Mesh {
        _cp: cp,
        backend,
        frontend,
        inbound: SocketAddr::from(([127, 0, 0, 1], be_in)),
        via,
    }
}

/// Issue 13: 2,000 idle TCP connections and 2,000 TLS handshakes stalled
/// after the ClientHello, held against a proxy's inbound port, are closed at
/// the handshake deadline (counted), connections over the cap at once
/// (counted), while mesh requests to the workload are served, within stated
/// descriptor and memory bounds.
#[test]
fn idle_and_half_handshaken_connections_cannot_starve_the_inbound_listener() {
    testbed::raise_nofile();
    let s = Scratch::new();
    let m = mesh(&s);
    let be_admin = m.backend.addr("admin listening on");
    let fds_before = open_fds(&m.backend);

    let hello = client_hello(BACKEND);
    let t = Instant::now();
    let mut held: Vec<TcpStream> = (0..HELD)
        .map(|_| TcpStream::connect_timeout(&m.inbound, Duration::from_secs(5)).unwrap())
        .collect();
    for _ in 0..HELD {
        let mut c = TcpStream::connect_timeout(&m.inbound, Duration::from_secs(5)).unwrap();
        c.write_all(&hello).unwrap();
        held.push(c);
    }
    let opened = t.elapsed();
    // Give or take a few descriptors the proxy closed meanwhile (e.g. the
    // mesh connection of the first exchange, in `mesh`).
    let fds_during = poll("the proxy to accept them all", DEADLINE, || {
        let n = open_fds(&m.backend);
        (n + FDS_SLACK >= fds_before + 2 * HELD).then_some(n)
    });
    let rss = rss_kb(&m.backend);
    println!(
        "held {} idle TCP and {HELD} half-handshaken TLS connections to the inbound port (opened in {opened:?}): backend proxy descriptors {fds_before} -> {fds_during} (bound {}), RSS {rss} kB (bound {RSS_KB} kB)",
        HELD,
        fds_before + 2 * HELD + FDS_OVER_HELD
    );
    assert!(
        t.elapsed() < HANDSHAKE,
        "opening took {:?}, longer than the handshake timeout: the connections were not all held at once",
        t.elapsed()
    );
    assert!(fds_during <= fds_before + 2 * HELD + FDS_OVER_HELD);
    assert!(rss <= RSS_KB, "RSS {rss} kB");

    // Mesh requests to the workload are served meanwhile.
    let took = exchange(m.via);
    println!("mesh exchange to the workload while they are held: {took:?}");

    // The listener is nearly full: connections over the cap close at once.
    let over: Vec<TcpStream> = (0..OVER)
        .map(|_| TcpStream::connect_timeout(&m.inbound, Duration::from_secs(5)).unwrap())
        .collect();

    // The proxy closes every held connection at the handshake deadline.
    let until = t + HANDSHAKE + DEADLINE;
    let open = held
        .iter()
        .chain(&over)
        .filter(|c| !closed_after_reading(c, until))
        .count();
    assert_eq!(
        open, 0,
        "{open} connections to the inbound port are still open"
    );
    let closed_after = t.elapsed();
    println!("all held connections closed {closed_after:?} after the first was opened");
    assert!(closed_after >= HANDSHAKE.saturating_sub(Duration::from_secs(1)));
    drop((held, over));

    let handshake = limit_hits(be_admin, "inbound", "handshake_timeout");
    let cap = limit_hits(be_admin, "inbound", "connection_cap");
    println!("inbound: {handshake} closed at the handshake deadline, {cap} refused at the cap");
    assert!(handshake >= (2 * HELD) as f64, "{handshake}");
    assert!(cap >= (OVER - (CAP - 2 * HELD)) as f64, "{cap}");
    assert_eq!(handshake + cap, (2 * HELD + OVER) as f64);
    let took = exchange(m.via);
    println!("mesh exchange after they are closed: {took:?}");
}

/// A forwarded connection that keeps moving bytes outlives the idle timeout;
/// once silent for the idle timeout it is closed, and counted.
#[test]
fn a_forwarded_connection_is_closed_only_when_idle() {
    let s = Scratch::new();
    let m = mesh(&s);
    let fe_admin = m.frontend.addr("admin listening on");
    let mut c = TcpStream::connect_timeout(&m.via, Duration::from_secs(5)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    // One byte a second for twice the idle timeout: never cut.
    while start.elapsed() < 2 * STREAM_IDLE {
        c.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        c.read_exact(&mut one).unwrap();
        std::thread::sleep(Duration::from_secs(1));
    }
    c.write_all(b"y").unwrap();
    let mut one = [0u8; 1];
    c.read_exact(&mut one).unwrap();
    assert_eq!(&one, b"y");
    let silent = Instant::now();
    assert!(closed_by_server(&c, silent + STREAM_IDLE + DEADLINE));
    let after = silent.elapsed();
    println!(
        "a connection that moved a byte a second stayed open for {:?}; once silent, closed after {after:?} (idle timeout {STREAM_IDLE:?})",
        silent.duration_since(start)
    );
    assert!(after >= STREAM_IDLE.saturating_sub(Duration::from_millis(500)));
    let idle = poll("the idle close to be counted", DEADLINE, || {
        let n = limit_hits(fe_admin, "outbound", "idle_timeout");
        (n >= 1.0).then_some(n)
    });
    println!("frontend outbound: {idle} closed idle");
}
