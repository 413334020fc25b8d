//! Bounded listeners: idle connections held against the admin ports (which
//! any pod can reach on a proxy) cannot starve them, the process, or the
//! mesh traffic beside them.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Scratch;
use common::mesh::{echo_server, free_port, start_proxy, workload};
use common::proc::{Proc, http_get, metric_sum, poll};

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
    let t = Instant::now();
    let mut c = TcpStream::connect_timeout(&via, Duration::from_secs(5)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"still served").unwrap();
    let mut got = [0u8; 12];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still served");
    t.elapsed()
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
    exchange(via);
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
