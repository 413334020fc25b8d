//! Transparent mTLS in network namespaces, as root: `weft init` redirects,
//! unmodified apps, proxies run as an unprivileged uid, a capture on the
//! link between pods.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::netmesh::{DEADLINE, NetMesh, PROXY_UID, echo_in, roundtrip_in};
use common::proc::{Proc, poll};
use testbed::{block_on_in, have_root, in_ns};

/// A server in `ns` on `port` that greets first, then echoes.
fn greeter_in(ns: &str, port: u16) {
    let l = in_ns(ns, move || TcpListener::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.write_all(b"HELLO FROM THE SERVER\n");
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
}

fn read_greeting_in(ns: &str, to: SocketAddr) -> std::io::Result<String> {
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 22];
        s.read_exact(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).to_string())
    })
    .unwrap()
}

fn sha256(b: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

#[test]
fn big_transfers_many_connections_servers_that_speak_first() {
    if !have_root("big_transfers_many_connections_servers_that_speak_first") {
        return;
    }
    let m = NetMesh::up(&[8080, 8081], &[]);
    echo_in(&m.ns("b"), 8080);
    greeter_in(&m.ns("b"), 8081);

    // 100 MB each way, intact, and half-close propagates (the echo closes
    // only after our EOF reached it through both proxies).
    let mut data = vec![0u8; 100 * 1024 * 1024];
    aws_lc_rs::rand::fill(&mut data).unwrap();
    let want = sha256(&data);
    let back = roundtrip_in(&m.ns("a"), m.addr("b", 8080), data).expect("100 MB through the mesh");
    assert_eq!(back.len(), 100 * 1024 * 1024);
    assert_eq!(sha256(&back), want);

    // 1,000 concurrent connections.
    let to = m.addr("b", 8080);
    let ok = block_on_in(&m.ns("a"), move || async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conns = Vec::new();
        for _ in 0..1000 {
            conns.push(tokio::net::TcpStream::connect(to).await.expect("connect"));
        }
        let mut tasks = Vec::new();
        for (i, mut c) in conns.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let msg = format!("connection {i}");
                c.write_all(msg.as_bytes()).await?;
                c.shutdown().await?;
                let mut back = String::new();
                c.read_to_string(&mut back).await?;
                Ok::<bool, std::io::Error>(back == msg)
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if let Ok(Ok(true)) = t.await {
                ok += 1;
            }
        }
        ok
    })
    .unwrap();
    assert_eq!(
        ok, 1000,
        "all 1,000 concurrent connections carried their bytes"
    );

    // A server that speaks first works meshed (through both proxies)...
    assert_eq!(
        read_greeting_in(&m.ns("a"), m.addr("b", 8081)).unwrap(),
        "HELLO FROM THE SERVER\n"
    );
    // ...and unmeshed (the inbound proxy waits out detection, then passes through).
    assert_eq!(
        read_greeting_in(&m.ns("c"), m.addr("b", 8081)).unwrap(),
        "HELLO FROM THE SERVER\n"
    );
}

#[test]
fn sigterm_drains_kill_fails_closed_restart_gets_a_fresh_key() {
    if !have_root("sigterm_drains_kill_fails_closed_restart_gets_a_fresh_key") {
        return;
    }
    let mut m = NetMesh::up(&[8080], &[]);
    echo_in(&m.ns("b"), 8080);
    let to = m.addr("b", 8080);
    // The key of the certificate a proxy process obtained (from its log).
    let spki = |p: &Proc| -> String {
        let line = p.wait_for_line("certificate obtained", DEADLINE);
        line.split("spki=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_default()
            .to_string()
    };
    let first = spki(m.proxy("a").as_ref().unwrap());
    assert_eq!(first.len(), 64);

    // 20 transfers in flight, then SIGTERM a's proxy: every one completes intact.
    let ns = m.ns("a");
    let in_flight = in_ns(&ns, move || {
        (0..20)
            .map(|i| {
                let mut s = TcpStream::connect(to).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                s.write_all(format!("start {i} ").as_bytes()).unwrap();
                let mut got = [0u8; 8];
                let _ = s.read(&mut got);
                s
            })
            .collect::<Vec<_>>()
    })
    .unwrap();
    let pid = m.proxy("a").as_ref().unwrap().child.id();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    m.proxy("a")
        .as_ref()
        .unwrap()
        .wait_for_line("draining connections in flight", DEADLINE);
    for (i, mut s) in in_flight.into_iter().enumerate() {
        let tail = vec![i as u8; 256 * 1024];
        s.write_all(&tail).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert!(
            back.ends_with(&tail),
            "connection {i} lost data during the drain"
        );
    }
    assert_eq!(
        m.proxy("a").as_mut().unwrap().wait_exit(DEADLINE),
        Some(0),
        "the proxy exits after draining"
    );

    // No proxy, rules still in place: a's new connections are refused, and
    // nothing crosses the wire in plaintext.
    let dump = m.capture("a", "down.pcap");
    let r = roundtrip_in(&m.ns("a"), to, b"SECRET-WHILE-DOWN".to_vec());
    assert!(
        r.is_err() || r.as_ref().unwrap().is_empty(),
        "a connection got through without the proxy: {r:?}"
    );
    // Same after kill -9 of a fresh proxy.
    *m.proxy("a") = Some(m.start_proxy("a"));
    m.wait_ready("a");
    let second = spki(m.proxy("a").as_ref().unwrap());
    assert_ne!(first, second, "a restarted proxy uses a fresh key");
    let pid = m.proxy("a").as_ref().unwrap().child.id();
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let _ = m.proxy("a").as_mut().unwrap().wait_exit(DEADLINE);
    let r = roundtrip_in(&m.ns("a"), to, b"SECRET-WHILE-DOWN".to_vec());
    assert!(
        r.is_err() || r.as_ref().unwrap().is_empty(),
        "a connection got through after kill -9: {r:?}"
    );
    let captured = dump.stop(0);
    assert!(
        !captured.windows(17).any(|w| w == b"SECRET-WHILE-DOWN"),
        "plaintext crossed the wire"
    );

    // Restarted: a fresh certificate (new key), and traffic flows again.
    *m.proxy("a") = Some(m.start_proxy("a"));
    m.wait_ready("a");
    assert_eq!(
        roundtrip_in(&m.ns("a"), to, b"back".to_vec()).unwrap(),
        b"back"
    );
    let third = spki(m.proxy("a").as_ref().unwrap());
    assert!(
        third != first && third != second,
        "a fresh key after kill -9 too"
    );
}

#[test]
fn transparent_mtls_between_pods() {
    if !have_root("transparent_mtls_between_pods") {
        return;
    }
    let m = NetMesh::up(&[8080], &[]);
    let weft = env!("CARGO_BIN_EXE_weft");
    let listed = testbed::run(m.bed.by_name("a").cmd(weft).args(["init", "--list"])).unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.contains("--uid-owner 2102"), "{listed}");
    assert!(listed.contains("not protected by the mesh"), "{listed}");

    echo_in(&m.ns("b"), 8080);
    echo_in(&m.ns("c"), 8080);

    // A capture on a's link while a talks to b.
    let dump = m.capture("a", "a.pcap");

    let marker = format!("PLAINTEXT-MARKER-{}", std::process::id());
    let mut data = marker.clone().into_bytes().repeat(1000);
    data.extend_from_slice(marker.as_bytes());
    let back = roundtrip_in(&m.ns("a"), m.addr("b", 8080), data.clone())
        .expect("a reaches b through both proxies");
    assert_eq!(back, data, "bytes intact");

    let captured = dump.stop(2 * data.len() as u64 / 3);
    assert!(
        captured.len() > 1000,
        "the capture saw the traffic ({} bytes)",
        captured.len()
    );
    assert!(
        !captured
            .windows(marker.len())
            .any(|w| w == marker.as_bytes()),
        "plaintext crossed the wire"
    );
    assert!(
        captured.windows(3).any(|w| w == [0x17, 0x03, 0x03]),
        "no TLS application-data records in the capture"
    );

    // b's proxy saw a's identity.
    let metrics = m.metrics("b");
    assert!(
        metrics.contains("client_id=\"a.demo.serviceaccount.identity.weft.cluster.local\"")
            && metrics.contains("tls=\"true\""),
        "{metrics}"
    );

    // An unmeshed pod reaches b in plaintext (passthrough), counted as such.
    let back = roundtrip_in(&m.ns("c"), m.addr("b", 8080), b"from c".to_vec()).unwrap();
    assert_eq!(back, b"from c");
    let metrics = m.metrics("b");
    assert!(
        metrics.contains("tls=\"no_identity\",no_tls_reason=\"not_provided_by_remote\""),
        "{metrics}"
    );

    // a reaches an unmeshed server (in c) in plaintext.
    let back = roundtrip_in(&m.ns("a"), m.addr("c", 8080), b"to c".to_vec()).unwrap();
    assert_eq!(back, b"to c");
    // Counted per destination, as plaintext.
    let metrics = m.metrics("a");
    let dst = format!("dst=\"{}\"", m.addr("c", 8080));
    assert!(
        metrics.lines().any(|l| l.starts_with("tcp_open_total")
            && l.contains(&dst)
            && l.contains("tls=\"no_identity\"")),
        "{metrics}"
    );

    // weft init is idempotent and removable.
    testbed::run(m.bed.by_name("a").cmd(weft).args([
        "init",
        "--proxy-uid",
        &PROXY_UID.to_string(),
    ]))
    .unwrap();
    let again = testbed::run(m.bed.by_name("a").cmd(weft).args(["init", "--list"])).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        listed,
        "re-running init changes nothing"
    );
    testbed::run(m.bed.by_name("a").cmd(weft).args(["init", "--uninstall"])).unwrap();
    let gone = testbed::run(m.bed.by_name("a").cmd(weft).args(["init", "--list"])).unwrap();
    assert!(String::from_utf8_lossy(&gone.stdout).contains("no weft redirect rules"));
}

#[test]
fn long_lived_connection_survives_three_renewals() {
    if !have_root("long_lived_connection_survives_three_renewals") {
        return;
    }
    let m = NetMesh::up(
        &[8080],
        &[
            "--identity-issuance-lifetime",
            "20s",
            "--identity-clock-skew-allowance",
            "2s",
        ],
    );
    echo_in(&m.ns("b"), 8080);
    let to = m.addr("b", 8080);
    let mut conn = in_ns(&m.ns("a"), move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(10))
    })
    .unwrap()
    .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let renewals = |name: &str| {
        let p = m
            .proxies
            .iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
            .as_ref()
            .unwrap();
        p.output().matches("certificate obtained").count()
    };
    let mut i = 0u32;
    poll(
        "three renewals on both proxies while the connection is open",
        Duration::from_secs(120),
        || {
            i += 1;
            let msg = format!("ping {i}\n");
            conn.write_all(msg.as_bytes()).unwrap();
            let mut back = vec![0u8; msg.len()];
            conn.read_exact(&mut back)
                .expect("the long-lived connection keeps working");
            assert_eq!(back, msg.as_bytes());
            (renewals("a") >= 4 && renewals("b") >= 4).then_some(())
        },
    );
    conn.write_all(b"still alive\n").unwrap();
    let mut back = [0u8; 12];
    conn.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still alive\n");
}

#[test]
fn control_plane_restart_under_traffic_and_plaintext_deny() {
    if !have_root("control_plane_restart_under_traffic_and_plaintext_deny") {
        return;
    }
    let mut m = NetMesh::up(&[8080], &[]);
    echo_in(&m.ns("b"), 8080);
    echo_in(&m.ns("c"), 8080);
    let dump = m.capture("a", "restart.pcap");

    // Traffic from a to b before, during and after a control-plane restart:
    // every exchange is over mTLS and none fails (b stays a known meshed peer).
    let marker = b"RESTART-MARKER-PLAINTEXT".to_vec();
    let (ns_a, to) = (m.ns("a"), m.addr("b", 8080));
    let exchange = |n: usize| {
        for _ in 0..n {
            assert_eq!(roundtrip_in(&ns_a, to, marker.clone()).unwrap(), marker);
        }
    };
    exchange(5);
    drop(m.cp.take());
    exchange(5);
    m.cp = Some(m.start_cp());
    exchange(5);
    let metrics = m.metrics("a");
    assert!(
        !metrics.contains("tls=\"no_identity\""),
        "a sent something in plaintext: {metrics}"
    );

    let captured = dump.stop(5000);
    assert!(
        !captured.windows(marker.len()).any(|w| w == &marker[..]),
        "plaintext crossed the wire"
    );

    // --outbound-plaintext=deny: a's connection to the unmeshed server in c is refused...
    drop(m.proxy("a").take());
    *m.proxy("a") = Some(m.start_proxy_with("a", &["--outbound-plaintext", "deny"]));
    m.wait_ready("a");
    let r = roundtrip_in(&m.ns("a"), m.addr("c", 8080), b"to c".to_vec());
    assert!(
        r.map(|b| b.is_empty()).unwrap_or(true),
        "plaintext to an unmeshed server must be refused"
    );
    m.proxy("a")
        .as_ref()
        .unwrap()
        .wait_for_line("is not meshed and --outbound-plaintext=deny", DEADLINE);
    // ...while meshed traffic flows.
    assert_eq!(
        roundtrip_in(&m.ns("a"), m.addr("b", 8080), b"ok".to_vec()).unwrap(),
        b"ok"
    );
}
