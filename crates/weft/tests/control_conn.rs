//! A proxy's connections to the control plane (ports mode, no root): one
//! HTTP/2 connection per configured address however many streams it holds,
//! live updates over them, recovery when they die, and a new connection
//! (presenting the new leaf) after each renewal.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "control_conn/shutdown.rs"]
mod shutdown;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Scratch;
use common::mesh::{echo_server, start_proxy, workload_ports};
use common::proc::{Proc, http_get, poll};

const DEADLINE: Duration = Duration::from_secs(60);
const TARGETS: usize = 200;
const POLICY_PORTS: usize = 50;

/// Established TCP connections of process `pid` to `port` (any address),
/// from /proc: its socket inodes matched against the kernel's table.
fn established_to(pid: u32, port: u16) -> usize {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().to_string();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut n = 0;
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state), Some(inode)) = (f.get(2), f.get(3), f.get(9)) else {
                continue;
            };
            let rport = remote
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "01" && rport == Some(port) && inodes.contains(*inode) {
                n += 1;
            }
        }
    }
    n
}

fn count(p: &Proc, needle: &str) -> usize {
    p.lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

/// The serial in a log line (`serial=..` or `leaf_serial=..`).
fn serial_in(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_default()
        .trim_matches('"')
        .to_string()
}

/// Connects through an outbound mapping; echoes when the peer is up.
fn touch(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.write_all(b"ping");
    let mut b = [0u8; 4];
    s.read_exact(&mut b).is_ok() && &b == b"ping"
}

/// A port outside the kernel's ephemeral range, so no outgoing connection
/// takes it while the control plane restarts on it.
fn fixed_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = u64::from(std::process::id()) * 7919 + n * 37;
    (0..12000u64)
        .map(|i| 20000 + ((seed + i * 7) % 12000) as u16)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// Replaces the resource file at once (written beside, renamed).
fn put(s: &Scratch, yaml: &str) {
    let tmp = s.write("resources/.demo.yaml.new", yaml);
    std::fs::rename(tmp, s.path("resources/demo.yaml")).unwrap();
}

struct Cp {
    args: Vec<String>,
}

impl Cp {
    fn start(&self, s: &Scratch) -> Proc {
        let refs: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let p = s.control_plane(&refs);
        let admin = p.addr("admin listening on");
        poll("control plane ready", DEADLINE, || {
            matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
        });
        p
    }
}

/// Resources: the backend declares the policy ports (with an optional
/// default policy), "far" declares the other targets and runs no proxy.
fn resources(be: (&[u16], u16), far: (&[u16], u16), client: (u16, u16), deny: bool) -> String {
    let ann = if deny {
        "    config.linkerd.io/default-inbound-policy: deny\n"
    } else {
        ""
    };
    [
        workload_ports("backend", be.0, be.1, ann),
        workload_ports("far", far.0, far.1, ""),
        workload_ports("client", &[client.0], client.1, ""),
    ]
    .concat()
}

/// Polls until every proxy holds at most one connection to each address
/// (and one to the destination service, which its mesh stream always
/// uses); prints what it saw.
fn one_per_address(what: &str, procs: &[(&str, &Proc)], ports: &[(&str, u16)]) {
    let start = Instant::now();
    let seen = poll(what, DEADLINE, || {
        let mut seen = Vec::new();
        for (name, p) in procs {
            for (addr, port) in ports {
                let n = established_to(p.child.id(), *port);
                if n > 1 || (*addr == "destination" && n != 1) {
                    return None;
                }
                seen.push(format!("{name}->{addr}={n}"));
            }
        }
        Some(seen)
    });
    println!("{what}: {} after {:?}", seen.join(" "), start.elapsed());
}

#[test]
fn one_connection_per_control_plane_address() {
    let s = Scratch::new();
    s.guide_material();
    std::fs::create_dir(s.path("resources")).unwrap();

    let be_ports: Vec<u16> = (0..POLICY_PORTS).map(|_| echo_server()).collect();
    // Ports bound later are taken below the ephemeral range (no outgoing
    // connection of a parallel test can take one meanwhile), and distinct.
    let mut used: HashSet<u16> = be_ports.iter().copied().collect();
    let mut fresh = move || loop {
        let p = fixed_port();
        if used.insert(p) {
            return p;
        }
    };
    let (ia, da, pa) = (fresh(), fresh(), fresh());
    let cp_ports = [("identity", ia), ("destination", da), ("policy", pa)];
    let far_ports: Vec<u16> = (0..TARGETS - POLICY_PORTS).map(|_| fresh()).collect();
    let (be_in, far_in, cl_in, cl_app) = (fresh(), fresh(), fresh(), fresh());
    s.write(
        "resources/demo.yaml",
        resources(
            (&be_ports, be_in),
            (&far_ports, far_in),
            (cl_app, cl_in),
            false,
        ),
    );
    let cp = Cp {
        args: [
            "--resources",
            "resources",
            "--reread-interval",
            "1s",
            "--identity-issuance-lifetime",
            "40s",
            "--identity-clock-skew-allowance",
            "1s",
            "--identity-addr",
            &format!("127.0.0.1:{ia}"),
            "--destination-addr",
            &format!("127.0.0.1:{da}"),
            "--policy-addr",
            &format!("127.0.0.1:{pa}"),
        ]
        .map(str::to_string)
        .to_vec(),
    };
    let mut control = Some(cp.start(&s));
    let backend = start_proxy(&s, "backend", be_in, control.as_ref().unwrap(), &[], &[]);
    let mut out = Vec::new();
    let mut mappings = Vec::new();
    for p in be_ports.iter().chain(&far_ports) {
        let listen = fresh();
        let target = if be_ports.contains(p) {
            "backend"
        } else {
            "far"
        };
        mappings.push(format!("127.0.0.1:{listen}=demo/{target}:{p}"));
        out.push((SocketAddr::from(([127, 0, 0, 1], listen)), *p));
    }
    let client = start_proxy(
        &s,
        "client",
        cl_in,
        control.as_ref().unwrap(),
        &mappings,
        &[],
    );
    for p in [&backend, &client] {
        let a = p.addr("admin listening on");
        poll("proxy ready", DEADLINE, || {
            matches!(http_get(a, "/ready"), Ok((200, _))).then_some(())
        });
    }

    // 200 destination targets on the client (50 reachable, echoed through
    // both proxies), 50 policy ports (and their destinations) on the backend.
    let start = Instant::now();
    for (addr, port) in &out {
        let ok = touch(*addr);
        assert_eq!(ok, be_ports.contains(port), "through {addr} to port {port}");
    }
    println!(
        "{TARGETS} targets resolved and used in {:?}",
        start.elapsed()
    );
    poll("a policy for every backend port", DEADLINE, || {
        (count(&backend, "inbound policy updated") >= POLICY_PORTS).then_some(())
    });
    let procs = [("backend", &backend), ("client", &client)];
    one_per_address("connections with every stream open", &procs, &cp_ports);

    // A change applies live over those connections.
    let before = count(&backend, "inbound policy updated");
    put(
        &s,
        &resources(
            (&be_ports, be_in),
            (&far_ports, far_in),
            (cl_app, cl_in),
            true,
        ),
    );
    poll("every port's policy updated live", DEADLINE, || {
        (count(&backend, "inbound policy updated") >= before + POLICY_PORTS).then_some(())
    });
    assert!(!touch(out[0].0), "denied by the new default policy");

    // The connections die with the control plane; every stream comes back.
    drop(control.take());
    let restarted = cp.start(&s);
    let before = count(&backend, "inbound policy updated");
    put(
        &s,
        &resources(
            (&be_ports, be_in),
            (&far_ports, far_in),
            (cl_app, cl_in),
            false,
        ),
    );
    let start = Instant::now();
    poll("every port's policy back and updated", DEADLINE, || {
        (count(&backend, "inbound policy updated") >= before + POLICY_PORTS).then_some(())
    });
    println!("streams recovered after a restart in {:?}", start.elapsed());
    assert!(touch(out[0].0), "allowed again");
    one_per_address("connections after the restart", &procs, &cp_ports);

    // After a renewal the client comes back on a new connection presenting
    // the new leaf, and the old one is gone.
    let renewed = client.wait_for_line("proof=\"renewal\"", DEADLINE);
    let serial = serial_in(&renewed, "serial=");
    assert!(!serial.is_empty(), "{renewed}");
    let attached = poll("the control plane sees the new leaf", DEADLINE, || {
        restarted
            .lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("proxy attached") && serial_in(l, "leaf_serial=") == serial)
            .cloned()
    });
    println!("after renewal: {attached}");
    one_per_address("connections after the renewal", &procs, &cp_ports);
    assert!(touch(out[1].0), "still serving after the renewal");
}

/// A leaf for `identity` from `signer`, issued at `at` for `lifetime`.
fn leaf_from(
    signer: &pki::create::Signer,
    identity: &pki::Identity,
    at: time::OffsetDateTime,
    lifetime: Duration,
) -> std::sync::Arc<pki::CertInForce> {
    let key = pki::KeyPair::generate().unwrap();
    let leaf = pki::create::issue_workload_leaf(
        signer,
        signer.not_after,
        &key,
        identity,
        at,
        lifetime,
        Duration::ZERO,
    )
    .unwrap();
    let chain = vec![leaf.der, signer.cert.clone()];
    std::sync::Arc::new(pki::CertInForce::new(&key, chain, "weft").unwrap())
}

/// A renewal on a connection whose leaf has expired, or chains only to an
/// anchor not in the bundle in force, is refused UNAUTHENTICATED; a
/// connection is closed once its peer's leaf expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_or_foreign_leaves_are_refused_and_their_connections_closed() {
    use std::sync::Arc;
    use tokio::sync::watch;
    let s = Scratch::new();
    s.guide_material();
    let cp = s.control_plane(&[]);
    let ia = cp.addr("identity listening on").to_string();
    let admin = cp.addr("admin listening on");
    poll("control plane ready", DEADLINE, || {
        matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
    });
    let web: pki::Identity = "web.demo.serviceaccount.identity.weft.cluster.local"
        .parse()
        .unwrap();
    let cp_id = pki::Identity::control_plane("weft", "cluster.local").unwrap();
    let now = time::OffsetDateTime::now_utc();
    let issuer = pki::create::Signer::load(&s.path("issuer.crt"), &s.path("issuer.key")).unwrap();
    let expired = leaf_from(
        &issuer,
        &web,
        now - time::Duration::days(2),
        Duration::from_secs(3600),
    );
    // A whole other mesh: its anchor is not (or no longer) in the bundle.
    let mk = |subject: &str, profile, signer: Option<&pki::create::Signer>| {
        let c = pki::create::create(
            &pki::create::NewCert {
                subject: subject.into(),
                profile,
                sans: vec![],
                not_before: now - time::Duration::days(1),
                not_after: now + time::Duration::days(30),
                key: pki::create::KeySpec::EcdsaP256,
            },
            signer,
        )
        .unwrap();
        pki::create::Signer::new(c.cert, c.key, "c", "k").unwrap()
    };
    let retired_root = mk("retired root", pki::create::Profile::RootCa, None);
    let retired_issuer = mk(
        "retired issuer",
        pki::create::Profile::IntermediateCa,
        Some(&retired_root),
    );
    let foreign = leaf_from(&retired_issuer, &web, now, Duration::from_secs(3600));

    let anchors_pem = s.read("ca.crt");
    let trust = proxy::trust::Trust::new(None, &anchors_pem).unwrap();
    let anchors = trust.anchors.clone();
    let (_t, trust_rx) = watch::channel(Arc::new(trust));
    for (what, leaf, says) in [
        ("expired leaf", expired, "expired"),
        ("leaf under a retired anchor", foreign, "anchor"),
    ] {
        let (_o, own_rx) = watch::channel(Some(leaf));
        let config = proxy::tls::control_config(trust_rx.clone(), own_rx).unwrap();
        let channel = proxy::connect::connect(&ia, &cp_id.to_string(), config, DEADLINE)
            .await
            .unwrap();
        let err = proxy::certify::certify(channel, &web, None, &anchors, DEADLINE)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: a certificate was issued"));
        println!("{what}: {err}");
        match &err {
            proxy::certify::CertifyError::Refused { code, message } => {
                assert_eq!(*code, tonic::Code::Unauthenticated, "{what}: {err}");
                assert!(message.contains(says), "{what}: {message}");
            }
            other => panic!("{what}: not a refusal: {other}"),
        }
    }

    // A leaf valid for three more seconds renews; the control plane closes
    // its connection once it has expired.
    let short = leaf_from(&issuer, &web, now, Duration::from_secs(3));
    let (_o, own_rx) = watch::channel(Some(short));
    let config = proxy::tls::control_config(trust_rx.clone(), own_rx).unwrap();
    let channel = proxy::connect::connect(&ia, &cp_id.to_string(), config, DEADLINE)
        .await
        .unwrap();
    let renewed = proxy::certify::certify(channel.clone(), &web, None, &anchors, DEADLINE)
        .await
        .unwrap();
    println!(
        "renewed with a short-lived leaf: serial {}",
        renewed.cert.serial
    );
    let port: u16 = ia.rsplit(':').next().unwrap().parse().unwrap();
    let me = std::process::id();
    let start = Instant::now();
    tokio::task::spawn_blocking(move || {
        // The refused ones' connections are gone; the renewal's stays open.
        poll("only the renewal's connection open", DEADLINE, || {
            (established_to(me, port) == 1).then_some(())
        });
        poll("the expired peer's connection closed", DEADLINE, || {
            (established_to(me, port) == 0).then_some(())
        })
    })
    .await
    .unwrap();
    println!("connection closed {:?} after the renewal", start.elapsed());
    cp.wait_for_line("client certificate expired", DEADLINE);
    drop(channel);
}
