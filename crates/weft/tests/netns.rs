//! Transparent mTLS in network namespaces, as root: `weft init` redirects,
//! unmodified apps, proxies run as an unprivileged uid, a capture on the
//! link between pods.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::Scratch;
use common::proc::{Proc, poll};
use testbed::{Bed, have_root, in_ns};

const PROXY_UID: u32 = 2102;
const DEADLINE: Duration = Duration::from_secs(30);

fn workload(name: &str, ip: std::net::Ipv4Addr, port: u16) -> String {
    format!(
        "apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata:
  name: {name}
  namespace: demo
spec:
  meshTLS:
    identity: {name}.demo.serviceaccount.identity.weft.cluster.local
    serverName: {name}.demo.serviceaccount.identity.weft.cluster.local
  workloadIPs:
  - ip: {ip}
  ports:
  - port: {port}
---
"
    )
}

/// An echo server inside `ns` on 0.0.0.0:port.
fn echo_in(ns: &str, port: u16) {
    let l = in_ns(ns, move || TcpListener::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

/// From inside `ns`: connect, send, half-close, read all back.
fn roundtrip_in(ns: &str, to: SocketAddr, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut w = s.try_clone()?;
        let t = std::thread::spawn(move || {
            let r = w.write_all(&data);
            let _ = w.shutdown(std::net::Shutdown::Write);
            r
        });
        let mut back = Vec::new();
        s.read_to_end(&mut back)?;
        t.join().unwrap()?;
        Ok(back)
    })
    .unwrap()
}

fn get_in(ns: &str, addr: SocketAddr, path: &'static str) -> Option<(u16, String)> {
    in_ns(ns, move || common::proc::http_get(addr, path).ok()).unwrap()
}

fn tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn transparent_mtls_between_pods() {
    if !have_root("transparent_mtls_between_pods") {
        return;
    }
    for t in ["iptables", "tcpdump", "setpriv", "ip"] {
        assert!(tool(t), "{t} is needed (CI installs it in .ci/run)");
    }
    let s = Scratch::new();
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    s.guide_material();
    let mut bed = Bed::new(s.dir.path()).unwrap();
    for p in ["cp", "a", "b", "c"] {
        bed.pod(p).unwrap();
    }
    let (cp_ip, a_ip, b_ip, c_ip) = (
        bed.by_name("cp").ip,
        bed.by_name("a").ip,
        bed.by_name("b").ip,
        bed.by_name("c").ip,
    );
    std::fs::create_dir(s.path("resources")).unwrap();
    s.write(
        "resources/demo.yaml",
        [workload("a", a_ip, 9), workload("b", b_ip, 8080)].concat(),
    );

    let weft = env!("CARGO_BIN_EXE_weft");
    let mut cp_cmd = bed.by_name("cp").cmd(weft);
    cp_cmd.current_dir(s.dir.path()).args([
        "control-plane",
        "--identity-trust-anchors-file",
        "ca.crt",
        "--identity-issuer-certificate-file",
        "issuer.crt",
        "--identity-issuer-key-file",
        "issuer.key",
        "--state-dir",
        "state",
        "--resources",
        "resources",
        "--identity-addr",
        "0.0.0.0:8080",
        "--destination-addr",
        "0.0.0.0:8086",
        "--admin-addr",
        "127.0.0.1:9990",
        "--reread-interval",
        "1s",
    ]);
    let cp = Proc::spawn_cmd(cp_cmd);
    let cp_ns = bed.by_name("cp").ns.clone();
    poll("control plane ready", DEADLINE, || {
        matches!(
            get_in(&cp_ns, "127.0.0.1:9990".parse().unwrap(), "/ready"),
            Some((200, _))
        )
        .then_some(())
    });

    // The proxy runs as an unprivileged uid, from a copy it can execute,
    // with its token and the anchors readable by it.
    let bin =
        testbed::executable_copy(std::path::Path::new(weft), s.dir.path(), PROXY_UID).unwrap();
    let mut proxies = Vec::new();
    for name in ["a", "b"] {
        let token = format!("{name}.token");
        s.weft(&[
            "token",
            "create",
            "-n",
            "demo",
            "--service-account",
            name,
            "--state-dir",
            "state",
            "-o",
            &token,
        ])
        .ok();
        std::os::unix::fs::chown(s.path(&token), Some(PROXY_UID), Some(PROXY_UID)).unwrap();
        let pod = bed.by_name(name);
        testbed::run(
            pod.cmd(weft)
                .args(["init", "--proxy-uid", &PROXY_UID.to_string()]),
        )
        .unwrap();
        let mut cmd = pod.cmd_as(PROXY_UID, &bin);
        cmd.current_dir(s.dir.path()).args([
            "proxy",
            "--workload",
            &format!("demo/{name}"),
            "--token-file",
            &s.path(&token).display().to_string(),
            "--trust-anchors-file",
            &s.path("ca.crt").display().to_string(),
            "--control-plane",
            &cp_ip.to_string(),
        ]);
        proxies.push(Proc::spawn_cmd(cmd));
    }
    for name in ["a", "b"] {
        let ns = bed.by_name(name).ns.clone();
        poll(&format!("proxy {name} ready"), DEADLINE, || {
            matches!(
                get_in(&ns, "127.0.0.1:4191".parse().unwrap(), "/ready"),
                Some((200, _))
            )
            .then_some(())
        });
    }
    let listed = testbed::run(bed.by_name("a").cmd(weft).args(["init", "--list"])).unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.contains("--uid-owner 2102"), "{listed}");
    assert!(listed.contains("not protected by the mesh"), "{listed}");

    echo_in(&bed.by_name("b").ns, 8080);
    echo_in(&bed.by_name("c").ns, 8080);

    // A capture on a's link while a talks to b.
    let pcap = s.path("a.pcap");
    let mut dump = bed.fabric_cmd("tcpdump");
    dump.args([
        "-i",
        bed.link_of("a"),
        "--immediate-mode",
        "-Z",
        "root",
        "-U",
        "-s",
        "0",
        "-w",
        &pcap.display().to_string(),
        "tcp",
    ]);
    let mut dump = Proc::spawn_cmd(dump);
    dump.wait_for_line("listening on", DEADLINE);

    let marker = format!("PLAINTEXT-MARKER-{}", std::process::id());
    let mut data = marker.clone().into_bytes().repeat(1000);
    data.extend_from_slice(marker.as_bytes());
    let back = roundtrip_in(
        &bed.by_name("a").ns,
        SocketAddr::new(b_ip.into(), 8080),
        data.clone(),
    )
    .expect("a reaches b through both proxies");
    assert_eq!(back, data, "bytes intact");

    // Let the capture catch up before stopping it.
    poll("the capture to hold the exchange", DEADLINE, || {
        (std::fs::metadata(&pcap).map(|m| m.len()).unwrap_or(0) > 2 * data.len() as u64 / 3)
            .then_some(())
    });
    let _ = Command::new("kill")
        .args(["-INT", &dump.child.id().to_string()])
        .status();
    assert!(dump.wait_exit(DEADLINE).is_some(), "tcpdump stops");
    let captured = std::fs::read(&pcap).unwrap();
    assert!(
        captured.len() > 1000,
        "the capture saw the traffic ({} bytes): {}",
        captured.len(),
        dump.output()
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
    let b_ns = bed.by_name("b").ns.clone();
    let (_, metrics) = get_in(&b_ns, "127.0.0.1:4191".parse().unwrap(), "/metrics").unwrap();
    assert!(
        metrics.contains("client_id=\"a.demo.serviceaccount.identity.weft.cluster.local\"")
            && metrics.contains("tls=\"true\""),
        "{metrics}"
    );

    // An unmeshed pod reaches b in plaintext (passthrough), counted as such.
    let back = roundtrip_in(
        &bed.by_name("c").ns,
        SocketAddr::new(b_ip.into(), 8080),
        b"from c".to_vec(),
    )
    .unwrap();
    assert_eq!(back, b"from c");
    let (_, metrics) = get_in(&b_ns, "127.0.0.1:4191".parse().unwrap(), "/metrics").unwrap();
    assert!(
        metrics.contains("tls=\"no_identity\",no_tls_reason=\"not_provided_by_remote\""),
        "{metrics}"
    );

    // a reaches an unmeshed server (in c) in plaintext.
    let back = roundtrip_in(
        &bed.by_name("a").ns,
        SocketAddr::new(c_ip.into(), 8080),
        b"to c".to_vec(),
    )
    .unwrap();
    assert_eq!(back, b"to c");

    // weft init is idempotent and removable.
    testbed::run(
        bed.by_name("a")
            .cmd(weft)
            .args(["init", "--proxy-uid", &PROXY_UID.to_string()]),
    )
    .unwrap();
    let again = testbed::run(bed.by_name("a").cmd(weft).args(["init", "--list"])).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        listed,
        "re-running init changes nothing"
    );
    drop(proxies);
    drop(cp);
    testbed::run(bed.by_name("a").cmd(weft).args(["init", "--uninstall"])).unwrap();
    let gone = testbed::run(bed.by_name("a").cmd(weft).args(["init", "--list"])).unwrap();
    assert!(String::from_utf8_lossy(&gone.stdout).contains("no weft redirect rules"));
}
