//! Two replicas of `weft control-plane --kubernetes` (the cp namespace, each
//! on its own ports) and stand-in pods whose proxies are given both: new
//! control-plane connections spread over the replicas; one replica is
//! SIGKILLed under continuous traffic and nothing fails: the proxies that
//! were on it reconnect to the other, the bundle generation at every proxy
//! never goes backwards, and the surviving replica's fleet lists every
//! proxy as connected.
//!
//! Needs root (network namespaces) and the testenv/k8s binaries (built if
//! missing); skips loudly without them unless WEFT_REQUIRE_K8S=1.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::kube::{Tenant, install_crds, tenant};
use common::netmesh::get_in;
use common::proc::metric;
use common::stand_in_app::workloads;
use common::stand_ins::Mesh;
use common::traffic;
use control_plane::fleet::FleetView;
use control_plane::fleet_edges::EdgesView;
use testbed::k8s::K8sEnv;

const DEADLINE: Duration = Duration::from_secs(60);
const PROXY_ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4191);

/// Replica `i`'s fleet view, from the cp namespace (its admin listener is
/// on the namespace's loopback).
fn fleet(mesh: &Mesh, cp_netns: &str, i: usize) -> Option<FleetView> {
    let admin = mesh.replica_addr(i, "admin listening on");
    let (code, body) = get_in(cp_netns, admin, "/fleet")?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// Replica `i`'s edges of the last 10 minutes (merged over the replicas).
fn edges(mesh: &Mesh, cp_netns: &str, i: usize) -> Option<EdgesView> {
    let admin = mesh.replica_addr(i, "admin listening on");
    let (code, body) = get_in(cp_netns, admin, "/edges?since=600")?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// The workloads (`ns/pod`) a fleet view lists as connected.
fn connected(v: &FleetView) -> BTreeSet<String> {
    v.proxies
        .iter()
        .filter(|p| p.state == "connected")
        .map(|p| p.workload.clone())
        .collect()
}

/// Each proxy's `trust_bundle_generation`, sampled until stopped; every
/// sample kept per pod, so a step backwards shows.
struct Generations {
    samples: Arc<Mutex<BTreeMap<String, Vec<f64>>>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

fn sample_generations(stand_ins: Vec<(String, String)>) -> Generations {
    let samples = Arc::new(Mutex::new(BTreeMap::<String, Vec<f64>>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (samples.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            for (pod, ns) in &stand_ins {
                let g = get_in(ns, PROXY_ADMIN, "/metrics")
                    .and_then(|(_, m)| metric(&m, "trust_bundle_generation"));
                if let Some(g) = g {
                    let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
                    s.entry(pod.clone()).or_default().push(g);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    Generations {
        samples,
        stop,
        thread,
    }
}

impl Generations {
    /// Waits until every proxy has been sampled at least once (the
    /// generation before the kill is on record).
    fn until_each_sampled(&self, n: usize) {
        common::proc::poll("a generation sample from every proxy", DEADLINE, || {
            let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            (s.len() == n && s.values().all(|v| !v.is_empty())).then_some(())
        });
    }

    fn finish(self) -> Result<BTreeMap<String, Vec<f64>>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().ok().context("the sampling thread")?;
        Ok(std::mem::take(
            &mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

/// Which replica (destination address) each control-plane connection a
/// proxy opened went to, from the proxies' logs.
fn connections(mesh: &Mesh, replicas: &[SocketAddr]) -> BTreeMap<SocketAddr, usize> {
    let mut n = BTreeMap::new();
    for (_, line) in mesh.all_proxy_lines("control-plane connection opened") {
        // Replica i listens on the default ports + 10000·i: the
        // ten-thousands of a port name its replica.
        let reached = line
            .split_whitespace()
            .filter_map(|f| f.strip_prefix("replica="))
            .filter_map(|a| a.parse::<SocketAddr>().ok())
            .next();
        if let Some(a) = reached
            && let Some(r) = replicas
                .iter()
                .find(|r| r.ip() == a.ip() && r.port() / 10_000 == a.port() / 10_000)
        {
            *n.entry(*r).or_default() += 1;
        }
    }
    n
}

/// The control plane's own endpoints, as the endpoints controller would
/// write them for pods behind Service weft-destination: one slice per
/// replica (each on its own ports in the cp namespace).
fn destination_endpoints(cp_ns: &str, ip: std::net::Ipv4Addr, replicas: u16) -> String {
    let mut out = format!(
        "apiVersion: v1
kind: Service
metadata:
  name: weft-destination
  namespace: {cp_ns}
spec:
  ports:
  - name: destination
    port: 8086
"
    );
    for i in 0..replicas {
        out.push_str(&format!(
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: weft-destination-{i}
  namespace: {cp_ns}
  labels:
    kubernetes.io/service-name: weft-destination
addressType: IPv4
ports:
- name: destination
  port: {}
  protocol: TCP
endpoints:
- addresses: [\"{ip}\"]
  conditions:
    ready: true
",
            8086 + 10_000 * i
        ));
    }
    out
}

/// `weft check --proxy` against replica `i` (from the cp namespace), its
/// verdict lines only (ages and timings aside).
fn check_proxy(env: &K8sEnv, mesh: &Mesh, i: usize) -> String {
    let admin = mesh.replica_addr(i, "admin listening on");
    let out = env
        .cp_cmd(env!("CARGO_BIN_EXE_weft"))
        .args(["check", "--proxy", "--admin-addr", &admin.to_string()])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with(['√', '‼', '×']) && !l.contains("reported within"))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("cannot run weft check: {e}"),
    }
}

#[test]
fn proxies_spread_over_two_replicas_and_survive_one_killed_under_traffic() -> Result<()> {
    let Some(env) = K8sEnv::shared("proxies_spread_over_two_replicas_and_survive_one_killed")?
    else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let Tenant {
        rt,
        client,
        ns,
        cp_ns,
        s,
    } = tenant("failover", &["backend", "frontend"], &env)?;
    install_crds(&env)?;
    common::kube::apply(
        &env,
        &s,
        "cp-endpoints.yaml",
        &destination_endpoints(&cp_ns, env.cp().ip, 2),
    )?;
    let mut mesh = Mesh::start_replicas(&env, &rt, client.clone(), &s, &ns, &cp_ns, 2)?;
    let cp_netns = env.cp().ns.clone();
    common::kube::apply(
        &env,
        &s,
        "workloads.yaml",
        &workloads(&ns, &cp_ns, &[("backend", 4), ("frontend", 2)]),
    )?;
    let t0 = Instant::now();
    let backends = mesh.until_running("backend", 4)?;
    let frontends = mesh.until_running("frontend", 2)?;
    println!(
        "timing: 6 pods Running with their stand-ins' proxies ready in {:.1?}",
        t0.elapsed()
    );
    let all: BTreeSet<String> = backends
        .iter()
        .chain(&frontends)
        .map(|p| format!("{ns}/{p}"))
        .collect();

    // Spread: the proxies' control-plane connections went to both replicas.
    let replicas = [mesh.replica_destination(0), mesh.replica_destination(1)];
    let spread = connections(&mesh, &replicas);
    println!("control-plane connections per replica: {spread:?}");
    ensure!(
        replicas
            .iter()
            .all(|r| spread.get(r).copied().unwrap_or(0) > 0),
        "connections did not spread over both replicas: {spread:?}"
    );
    // Merged: each replica's /fleet lists every proxy connected, the same
    // set whichever is asked, and names the other as the peer it asked.
    let t = Instant::now();
    let (mut va, mut vb) = (None, None);
    while Instant::now() < t + DEADLINE {
        va = fleet(&mesh, &cp_netns, 0);
        vb = fleet(&mesh, &cp_netns, 1);
        if va.as_ref().is_some_and(|v| connected(v) == all)
            && vb.as_ref().is_some_and(|v| connected(v) == all)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (va, vb) = (
        va.context("no fleet from A")?,
        vb.context("no fleet from B")?,
    );
    ensure!(
        connected(&va) == all && connected(&vb) == all,
        "the merged fleet views differ or miss proxies: A {:?} (peers {:?}), B {:?} (peers {:?}), want {all:?}",
        connected(&va),
        va.peers,
        connected(&vb),
        vb.peers
    );
    // Each names the other (the peer entry that is not itself) with the
    // streams it holds.
    let held = |v: &FleetView| -> Result<usize> {
        let p: Vec<_> = v.peers.iter().filter(|p| p.error.is_none()).collect();
        ensure!(
            p.len() == 1,
            "want exactly one answering peer: {:?}",
            v.peers
        );
        Ok(p[0].connected)
    };
    let (on_b, on_a) = (held(&va)?, held(&vb)?);
    println!(
        "weft.mesh.v1 streams: replica A holds {on_a}, replica B holds {on_b}; /fleet of A and of B both list all {} proxies connected",
        all.len()
    );
    ensure!(
        on_a + on_b == all.len(),
        "streams held {on_a} + {on_b}, want {}",
        all.len()
    );
    let checks = [0, 1].map(|i| check_proxy(&env, &mesh, i));
    ensure!(
        checks[0] == checks[1],
        "weft check --proxy differs between replicas:\n--- A\n{}\n--- B\n{}",
        checks[0],
        checks[1]
    );
    println!(
        "weft check --proxy gives the same answer on A and B:\n{}",
        checks[0]
    );

    // Continuous traffic frontend -> backend Service; the generation at
    // every proxy sampled throughout.
    let svc = SocketAddr::new(mesh.cluster_ip("backend")?, 80);
    let frontend = frontends.iter().next().context("no frontend")?.clone();
    let running = traffic::start(&mesh, &frontend, svc)?;
    traffic::until_spread(&mut mesh, &running.traffic, &backends)?;
    // Merged edges: each backend pod's proxy reports its inbound mTLS edges
    // to the replica holding its stream; either replica's /edges shows
    // every backend pod's (proxies report every 15 s).
    let want: BTreeSet<String> = backends.iter().map(|p| format!("{ns}/{p}")).collect();
    let mtls_into = |v: &EdgesView| -> BTreeSet<String> {
        v.edges
            .iter()
            .filter(|e| e.mtls && want.contains(&e.workload))
            .map(|e| e.workload.clone())
            .collect()
    };
    let t = Instant::now();
    let mut views = (None, None);
    while Instant::now() < t + DEADLINE {
        views = (edges(&mesh, &cp_netns, 0), edges(&mesh, &cp_netns, 1));
        if [&views.0, &views.1]
            .iter()
            .all(|v| v.as_ref().is_some_and(|v| mtls_into(v) == want))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for (name, v) in [("A", &views.0), ("B", &views.1)] {
        let v = v.as_ref().context("no edges")?;
        ensure!(
            mtls_into(v) == want && v.peers.iter().all(|p| p.error.is_none()),
            "replica {name}'s /edges misses backend pods: has {:?}, want {want:?} (peers {:?})",
            mtls_into(v),
            v.peers
        );
    }
    println!(
        "/edges of A and of B both show mTLS edges into all {} backend pods after {:.1?}",
        want.len(),
        t.elapsed()
    );
    let stand_ins = mesh.stand_in_namespaces();
    let n = stand_ins.len();
    let generations = sample_generations(stand_ins);
    generations.until_each_sampled(n);

    // Kill the replica holding more streams (the other takes them all).
    let (victim, survivor, moving) = if on_a >= on_b {
        (0, 1, on_a)
    } else {
        (1, 0, on_b)
    };
    let before = running
        .traffic
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .total();
    mesh.kill_replica(victim)?;
    let killed = Instant::now();
    println!(
        "SIGKILL replica {} ({moving} proxies' streams on it)",
        ["A", "B"][victim],
    );
    let mut view = None;
    while Instant::now() < killed + DEADLINE {
        if let Some(v) = fleet(&mesh, &cp_netns, survivor)
            && connected(&v) == all
        {
            view = Some(v);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let reconnect = killed.elapsed();
    let view = view.with_context(|| {
        format!(
            "the surviving replica's fleet never listed every proxy connected within {DEADLINE:?}\n{}",
            mesh.proxy_logs()
        )
    })?;
    println!(
        "reconnect latency: every proxy connected to the surviving replica {reconnect:.1?} after the SIGKILL ({moving} moved)"
    );
    let gone: Vec<_> = view.peers.iter().filter(|p| p.error.is_some()).collect();
    println!("the survivor names the killed replica: {gone:?}");
    ensure!(
        gone.len() == 1,
        "the killed replica is not named as unreachable: {:?}",
        view.peers
    );
    ensure!(
        view.proxies.iter().all(|p| p.bundle_current),
        "a proxy on the survivor lacks the current bundle: {view:?}"
    );
    // Traffic goes on a while after the failover.
    let end = Instant::now() + DEADLINE;
    while running
        .traffic
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .total()
        < before + 100
    {
        ensure!(Instant::now() < end, "traffic stalled after the kill");
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = running.stop()?;
    let samples = generations.finish()?;
    println!("traffic: {}", t.summary());
    ensure!(
        t.failed.is_empty(),
        "failed requests: {:?}\n{}",
        t.failed,
        mesh.proxy_logs()
    );
    for (pod, g) in &samples {
        ensure!(
            g.windows(2).all(|w| w[1] >= w[0]) && g.iter().all(|x| *x >= 1.0),
            "{pod}'s bundle generation went backwards or was never applied: {g:?}"
        );
    }
    ensure!(
        samples.len() == all.len(),
        "generation samples from {} of {} proxies",
        samples.len(),
        all.len()
    );
    println!(
        "bundle generation at every proxy never went backwards ({} samples)",
        samples.values().map(Vec::len).sum::<usize>()
    );
    let stale = mesh.all_proxy_lines("a stale replica");
    ensure!(stale.is_empty(), "no replica was stale: {stale:?}");
    Ok(())
}
