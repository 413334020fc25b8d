//! A client's requests in a loop from inside a stand-in pod, each on a new
//! connection, recorded: which pod answered, what failed, how long each took.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::stand_in_app::{self, Reply};
use super::stand_ins::Mesh;

const DEADLINE: Duration = Duration::from_secs(60);

/// Requests made by a client in a loop, each on a new connection.
#[derive(Default)]
pub struct Traffic {
    pub ok: BTreeMap<String, u64>,
    pub failed: Vec<String>,
    pub latencies: Vec<Duration>,
    pub last: Vec<String>,
}

/// The requests' record, the flag that stops them, and their thread.
pub struct Running {
    pub traffic: Arc<Mutex<Traffic>>,
    pub stop: Arc<AtomicBool>,
    pub thread: std::thread::JoinHandle<()>,
}

pub fn start(mesh: &Mesh, from: &str, to: std::net::SocketAddr) -> Result<Running> {
    let traffic = Arc::new(Mutex::new(Traffic::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let ns = mesh.netns(from)?;
    let (t, st) = (traffic.clone(), stop.clone());
    let handle = std::thread::spawn(move || {
        let _ = testbed::in_ns(&ns, move || {
            while !st.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let r = stand_in_app::get(to);
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
pub fn until_spread(
    mesh: &mut Mesh,
    traffic: &Mutex<Traffic>,
    pods: &BTreeSet<String>,
) -> Result<()> {
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

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl Running {
    /// Stops the requests; the record, latencies sorted.
    pub fn stop(self) -> Result<Traffic> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().ok().context("the traffic thread")?;
        let mut t = std::mem::take(&mut *self.traffic.lock().unwrap_or_else(|p| p.into_inner()));
        t.latencies.sort();
        Ok(t)
    }
}

impl Traffic {
    pub fn total(&self) -> u64 {
        self.ok.values().sum()
    }

    /// One line: counts, per pod, latency percentiles.
    pub fn summary(&self) -> String {
        format!(
            "{} ok, {} failed; per pod {:?}; latency p50 {:?} p99 {:?} max {:?}",
            self.total(),
            self.failed.len(),
            self.ok,
            percentile(&self.latencies, 0.5),
            percentile(&self.latencies, 0.99),
            percentile(&self.latencies, 1.0),
        )
    }
}

/// `n` GETs on one kept-alive connection from inside pod `from` (HTTP/1.1,
/// or HTTP/2 with prior knowledge): the pod that answered each, in order.
pub fn one_connection(
    mesh: &Mesh,
    from: &str,
    to: std::net::SocketAddr,
    proto: testbed::http_app::Proto,
    n: usize,
) -> Result<Vec<String>> {
    use testbed::http_app::{Proto, Req, requests};
    let ns = mesh.netns(from)?;
    let replies = testbed::in_ns(&ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let s = tokio::net::TcpStream::connect(to).await?;
            let reqs = (0..n).map(|_| Req::get("/")).collect();
            requests(s, proto, reqs).await.map_err(anyhow::Error::msg)
        })
    })??;
    let mut pods = Vec::with_capacity(n);
    for (i, r) in replies.iter().enumerate() {
        ensure!(
            r.status == 200,
            "request #{i} on one {proto:?} connection: {}",
            r.status
        );
        pods.push(match proto {
            Proto::H2 => r.header("x-app-name").unwrap_or("-").to_string(),
            Proto::H1 => r.text().lines().next().unwrap_or("-").to_string(),
        });
    }
    Ok(pods)
}
