//! Bulk forwarding keeps its behaviour with the larger buffers (ports mode,
//! no root): 100 MB each way intact with half-close through the L4 path (an
//! opaque port) and the HTTP path (detected on both proxies), a client that
//! writes one byte at a time, and a reader that stalls while the proxies'
//! memory stays bounded (backpressure, not buffering).
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Scratch;
use common::mesh::{echo_server, free_port, spawn_app, start_proxy, workload_ports};
use common::proc::{Proc, poll, until_ready};
use testbed::http_app::{Sha, pattern_chunks, pattern_sha};

const DEADLINE: Duration = Duration::from_secs(30);
const MB: u64 = 1_000_000;
const BULK: u64 = 100 * MB;
/// What the source writes to the stalled reader.
const SOURCE: u64 = 64 * MB;

/// A server that writes `SOURCE` pattern bytes to each connection, counting
/// what the kernel took, then closes.
fn source_server(written: Arc<AtomicU64>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let written = written.clone();
            std::thread::spawn(move || {
                for c in pattern_chunks(SOURCE) {
                    if s.write_all(&c).is_err() {
                        return;
                    }
                    written.fetch_add(c.len() as u64, Ordering::SeqCst);
                }
            });
        }
    });
    port
}

struct Bed {
    _s: Scratch,
    _cp: Proc,
    backend: Proc,
    frontend: Proc,
    l4: SocketAddr,
    http: SocketAddr,
    src: SocketAddr,
    written: Arc<AtomicU64>,
}

fn up() -> Bed {
    let s = Scratch::new();
    s.guide_material();
    let (echo, app) = (echo_server(), spawn_app());
    let written = Arc::new(AtomicU64::new(0));
    let src_app = source_server(written.clone());
    let (be_in, fe_in) = (free_port(), free_port());
    std::fs::create_dir(s.path("resources")).unwrap();
    let opaque = format!("    config.linkerd.io/opaque-ports: \"{echo},{src_app}\"\n");
    let yaml = [
        workload_ports("frontend", &[9], fe_in, ""),
        workload_ports("backend", &[echo, app, src_app], be_in, &opaque),
    ]
    .concat();
    s.write("resources/demo.yaml", yaml);
    let cp = s.control_plane(&["--resources", "resources"]);
    until_ready(&cp);
    let backend = start_proxy(&s, "backend", be_in, &cp, &[], &[]);
    let (l4, http, src) = (free_port(), free_port(), free_port());
    let maps = [
        format!("127.0.0.1:{l4}=demo/backend:{echo}"),
        format!("127.0.0.1:{http}=demo/backend:{app}"),
        format!("127.0.0.1:{src}=demo/backend:{src_app}"),
    ];
    let frontend = start_proxy(&s, "frontend", fe_in, &cp, &maps, &[]);
    for p in [&backend, &frontend] {
        until_ready(p);
    }
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    Bed {
        _s: s,
        _cp: cp,
        backend,
        frontend,
        l4: at(l4),
        http: at(http),
        src: at(src),
        written,
    }
}

fn connect(to: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Hashes everything `r` yields until EOF.
fn drain(r: &mut impl Read, sha: &mut Sha) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).unwrap() {
            0 => return,
            n => sha.update(&buf[..n]),
        }
    }
}

/// `size` pattern bytes to the echo server while reading the echo back; the
/// write side half-closed after the last byte, the echo ends after that.
fn l4_both_ways(to: SocketAddr, size: u64) -> Duration {
    let t = Instant::now();
    let mut s = connect(to);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for c in pattern_chunks(size) {
            w.write_all(&c).unwrap();
        }
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut sha = Sha::new();
    drain(&mut s, &mut sha);
    writer.join().unwrap();
    assert_eq!(sha.finish(), pattern_sha(size), "the echo came back intact");
    t.elapsed()
}

/// A raw HTTP/1.1 request with `Connection: close`, `body_len` pattern bytes
/// after the head, the write side half-closed at the end; the response head
/// and the hash of its body.
fn http_exchange(to: SocketAddr, head: &str, body_len: u64) -> (String, String) {
    let mut s = connect(to);
    let mut w = s.try_clone().unwrap();
    let head = head.to_string();
    let writer = std::thread::spawn(move || {
        w.write_all(head.as_bytes()).unwrap();
        for c in pattern_chunks(body_len) {
            w.write_all(&c).unwrap();
        }
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let split = loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the response ended inside its head: {got:?}");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let mut sha = Sha::new();
    sha.update(&got[split..]);
    drain(&mut s, &mut sha);
    writer.join().unwrap();
    let head = String::from_utf8_lossy(&got[..split]).to_string();
    (head, sha.finish())
}

/// VmRSS of a process, in KiB.
fn rss_kib(p: &Proc) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn bulk_both_ways_byte_at_a_time_and_a_stalled_reader() {
    let b = up();
    let mbps = |d: Duration| BULK as f64 / MB as f64 / d.as_secs_f64();

    // L4 (opaque port): 100 MB each way at once, half-closed.
    let d = l4_both_ways(b.l4, BULK);
    println!(
        "L4: 100 MB each way in {d:?} ({:.0} MB/s each way)",
        mbps(d)
    );

    // HTTP (detected, declared, judged per request): 100 MB up, 100 MB down.
    let t = Instant::now();
    let up = format!(
        "POST /sha HTTP/1.1\r\nHost: app\r\nContent-Length: {BULK}\r\nConnection: close\r\n\r\n"
    );
    let (head, body) = http_exchange(b.http, &up, BULK);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let want = pattern_sha(BULK);
    let mut answer = Sha::new();
    answer.update(want.as_bytes());
    assert_eq!(body, answer.finish(), "the app hashed all 100 MB intact");
    let d_up = t.elapsed();
    let t = Instant::now();
    let down = format!("GET /bytes/{BULK} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
    let (head, body) = http_exchange(b.http, &down, 0);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, want, "100 MB down intact");
    let d_down = t.elapsed();
    println!(
        "HTTP: 100 MB up in {d_up:?} ({:.0} MB/s), down in {d_down:?} ({:.0} MB/s)",
        mbps(d_up),
        mbps(d_down)
    );

    // One byte per write, both paths.
    let req = b"GET /one-byte HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n";
    let mut s = connect(b.http);
    for byte in req {
        s.write_all(&[*byte]).unwrap();
    }
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("ok GET /one-byte"), "{text}");
    let mut s = connect(b.l4);
    let small: Vec<u8> = pattern_chunks(3000).flatten().collect();
    for byte in &small {
        s.write_all(&[*byte]).unwrap();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back, small, "one byte at a time, echoed intact");

    // A reader that stalls: the source fills what the path holds, then waits.
    let before = (rss_kib(&b.frontend), rss_kib(&b.backend));
    let mut s = connect(b.src);
    let mut last = (0, Instant::now());
    let stalled = poll("the source to stall behind the reader", DEADLINE, || {
        let now = b.written.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
            return None;
        }
        (now > 0 && last.1.elapsed() > Duration::from_secs(1)).then_some(now)
    });
    let during = (rss_kib(&b.frontend), rss_kib(&b.backend));
    println!(
        "stalled reader: the source got {:.1} MB of {} MB out; proxy RSS (frontend, backend) before {before:?} KiB, while stalled {during:?} KiB",
        stalled as f64 / MB as f64,
        SOURCE / MB
    );
    assert!(stalled < SOURCE, "the path holds far less than the source");
    for (b4, now) in [(before.0, during.0), (before.1, during.1)] {
        assert!(
            now < b4 + 32 * 1024,
            "a proxy grew by {} KiB while its reader stalled",
            now.saturating_sub(b4)
        );
    }
    let mut sha = Sha::new();
    drain(&mut s, &mut sha);
    assert_eq!(
        sha.finish(),
        pattern_sha(SOURCE),
        "all of it, intact, once read"
    );
}
