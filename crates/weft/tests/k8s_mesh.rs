//! The mesh on Kubernetes end to end: for pods kwok runs, network-namespace
//! stand-ins with the pods' IPs run `weft init` and `weft proxy` with the
//! pod's projected token (TokenRequest, bound to the pod) and the workload
//! and identity the injector would give them. A client calls a Service's
//! cluster IP (there is no kube-proxy: only the proxy routes it) while its
//! Deployment scales 3 → 1 → 3, under the guide's policy (steps 11–12).
//!
//! Needs root (network namespaces) and the testenv/k8s binaries (built if
//! missing); skips loudly without them unless WEFT_REQUIRE_K8S=1.

mod common;

#[path = "k8s_mesh/stand_ins.rs"]
mod stand_ins;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::kube::{Tenant, apply, guide_policy, identity, install_crds, kubectl, tenant};
use stand_ins::{Mesh, Reply};
use testbed::k8s::K8sEnv;

const DEADLINE: Duration = Duration::from_secs(60);

fn workloads(ns: &str, cp_ns: &str) -> String {
    let template = |name: &str| {
        format!(
            "    metadata:
      labels:
        app: {name}
        linkerd.io/control-plane-ns: {cp_ns}
      annotations:
        weft.test/readiness: external
    spec:
      serviceAccountName: {name}
      containers:
      - name: app
        image: app
        ports:
        - containerPort: 8080
          name: http
"
        )
    };
    let deployment = |name: &str, replicas: u32| {
        format!(
            "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {ns}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {name}
  template:
{}---
",
            template(name)
        )
    };
    format!(
        "{}{}{}apiVersion: v1
kind: Service
metadata:
  name: backend
  namespace: {ns}
spec:
  selector:
    app: backend
  ports:
  - name: web
    port: 80
    targetPort: http
",
        deployment("backend", 3),
        deployment("frontend", 1),
        deployment("intruder", 1),
    )
}

/// Requests made by a client in a loop, each on a new connection.
#[derive(Default)]
struct Traffic {
    ok: BTreeMap<String, u64>,
    failed: Vec<String>,
    latencies: Vec<Duration>,
    last: Vec<String>,
}

/// The requests' record, the flag that stops them, and their thread.
struct Running {
    traffic: Arc<Mutex<Traffic>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

fn start_traffic(mesh: &Mesh, from: &str, to: std::net::SocketAddr) -> Result<Running> {
    let traffic = Arc::new(Mutex::new(Traffic::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let ns = mesh.netns(from)?;
    let (t, st) = (traffic.clone(), stop.clone());
    let handle = std::thread::spawn(move || {
        let _ = testbed::in_ns(&ns, move || {
            while !st.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let r = stand_ins::get(to);
                let took = t0.elapsed();
                let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
                t.latencies.push(took);
                match r {
                    Ok(Reply {
                        status: 200, pod, ..
                    }) => {
                        *t.ok.entry(pod.clone()).or_default() += 1;
                        t.last.push(pod);
                    }
                    Ok(other) => t.failed.push(format!("{other:?} after {took:?}")),
                    Err(e) => t.failed.push(format!("{e} after {took:?}")),
                }
                drop(t);
                // Pacing, not waiting: a steady stream on 2 shared cores.
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    });
    Ok(Running {
        traffic,
        stop,
        thread: handle,
    })
}

/// Polls until the most recent requests reached every pod of `pods` (and
/// only those), reconciling stand-ins meanwhile.
fn until_spread(mesh: &mut Mesh, traffic: &Mutex<Traffic>, pods: &BTreeSet<String>) -> Result<()> {
    let end = Instant::now() + DEADLINE;
    loop {
        {
            let mut t = traffic.lock().unwrap_or_else(|p| p.into_inner());
            let n = t.last.len();
            let recent: BTreeSet<String> = t.last[n.saturating_sub(30)..].iter().cloned().collect();
            if n >= 30 && &recent == pods {
                t.last.clear();
                return Ok(());
            }
            ensure!(
                Instant::now() < end,
                "traffic did not spread over {pods:?}; recent {recent:?}, failures {:?}",
                t.failed
            );
        }
        mesh.reconcile("backend")?;
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The guide's policy through the API, a client calling a Service's cluster
/// IP while the Deployment behind it scales 3 → 1 → 3 with 0 failed
/// requests, every ready pod reached, identities as the policy names them;
/// another identity denied; the MeshTLSAuthentication deleted → denied live.
#[test]
fn proxies_in_stand_ins_follow_scaling_and_policy() -> Result<()> {
    let Some(env) = K8sEnv::shared("proxies_in_stand_ins_follow_scaling_and_policy")? else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let Tenant {
        rt,
        client,
        ns,
        cp_ns,
        s,
    } = tenant("mesh", &["backend", "frontend", "intruder"], &env)?;
    install_crds(&env)?;
    apply(&env, &s, "policy.yaml", &guide_policy(&ns)?)?;
    let mut mesh = Mesh::start(&env, &rt, client.clone(), &s, &ns, &cp_ns)?;
    apply(&env, &s, "workloads.yaml", &workloads(&ns, &cp_ns))?;
    let t0 = Instant::now();
    let ready = mesh.until_running("backend", 3)?;
    mesh.until_running("frontend", 1)?;
    mesh.until_running("intruder", 1)?;
    println!(
        "timing: 5 pods Running, their stand-ins' proxies certified and the pods Ready in {:.1?}",
        t0.elapsed()
    );
    let cluster_ip = mesh.cluster_ip("backend")?;
    let svc = std::net::SocketAddr::new(cluster_ip, 80);
    let frontend = identity("frontend", &ns, &cp_ns);

    // First contact: the backend saw the frontend's identity.
    let t1 = Instant::now();
    let first = mesh.poll_get("frontend", svc, |r| r.status == 200)?;
    println!(
        "frontend -> {svc} (Service backend): {first:?} after {:.1?}",
        t1.elapsed()
    );
    ensure!(
        first.client_id == frontend,
        "the backend saw client {:?}, want {frontend}",
        first.client_id
    );
    let denied = mesh.poll_get("intruder", svc, |r| r.status != 0)?;
    println!("intruder -> {svc}: {denied:?}");
    ensure!(
        denied.status == 403,
        "intruder answered {denied:?}, want 403"
    );

    let Running {
        traffic,
        stop,
        thread,
    } = start_traffic(&mesh, "frontend", svc)?;
    until_spread(&mut mesh, &traffic, &ready)?;
    println!("3 replicas: requests reached {ready:?}");
    for replicas in [1usize, 3] {
        let t = Instant::now();
        kubectl(
            &env,
            &[
                "scale",
                "-n",
                &ns,
                "deployment/backend",
                &format!("--replicas={replicas}"),
            ],
        )?;
        let now = mesh.until_running("backend", replicas)?;
        until_spread(&mut mesh, &traffic, &now)?;
        println!(
            "{replicas} replicas: requests reached {now:?}, {:.1?} after the scale",
            t.elapsed()
        );
    }
    stop.store(true, Ordering::Relaxed);
    thread.join().ok().context("the traffic thread")?;
    let mut t = traffic.lock().unwrap_or_else(|p| p.into_inner());
    t.latencies.sort();
    let total: u64 = t.ok.values().sum();
    println!(
        "traffic: {total} ok, {} failed; per pod {:?}; latency p50 {:?} p99 {:?} max {:?}",
        t.failed.len(),
        t.ok,
        percentile(&t.latencies, 0.5),
        percentile(&t.latencies, 0.99),
        percentile(&t.latencies, 1.0),
    );
    ensure!(t.failed.is_empty(), "failed requests: {:?}", t.failed);
    ensure!(total > 100, "too few requests to judge: {total}");
    drop(t);

    // The policy is live: without the MeshTLSAuthentication, denied.
    let t2 = Instant::now();
    kubectl(
        &env,
        &["delete", "-n", &ns, "meshtlsauthentication/frontend-sa"],
    )?;
    let after = mesh.poll_get("frontend", svc, |r| r.status == 403)?;
    println!(
        "MeshTLSAuthentication deleted: frontend -> {svc} {} after {:.1?}",
        after.status,
        t2.elapsed()
    );
    Ok(())
}
