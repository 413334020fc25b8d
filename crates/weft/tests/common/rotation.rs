//! Anchor rotations under traffic: a second anchor and issuer, request
//! counters that must stay clean, and polling the fleet view.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use control_plane::fleet::FleetView;

use super::Scratch;
use super::proc::poll;

/// ca2.crt/ca2.key (a new anchor) and issuer2.crt/issuer2.key signed by it.
pub fn new_anchor_and_issuer(s: &Scratch) {
    s.anchor("ca2", "root-2.linkerd.cluster.local", "87600h");
    s.issuer("issuer2", "8760h", "ca2");
}

/// resources/workloads.yaml declaring `names` in demo (app ports `apps`, an
/// inbound port each), and a control plane on it re-reading its files every
/// second: (the inbound ports, the control plane).
pub fn mesh_of(s: &Scratch, names: &[&str], apps: &[u16]) -> (Vec<u16>, super::proc::Proc) {
    let ports: Vec<u16> = names.iter().map(|_| super::mesh::free_port()).collect();
    std::fs::create_dir(s.path("resources")).unwrap();
    let yaml: String = names
        .iter()
        .zip(&ports)
        .zip(apps)
        .map(|((n, p), a)| super::mesh::workload(n, *a, *p, ""))
        .collect();
    s.write("resources/workloads.yaml", yaml);
    let cp = s.control_plane(&["--resources", "resources", "--reread-interval", "1s"]);
    (ports, cp)
}

/// The control plane's fleet view at `admin`, if it answers.
/// An unmanaged client, as a linkerd2-proxy looks to the fleet: a fresh
/// join token and a certificate for `demo/legacy` by hand, no stream.
pub fn request_legacy(s: &Scratch, identity_addr: &str) {
    s.token("legacy");
    s.weft(&[
        "certs",
        "request",
        "legacy.demo.serviceaccount.identity.weft.cluster.local",
        "legacy.crt",
        "legacy.key",
        "--control-plane",
        identity_addr,
        "--roots",
        "ca.crt",
        "--token-file",
        "legacy.token",
    ])
    .ok();
}

pub fn fleet(admin: std::net::SocketAddr) -> Option<FleetView> {
    let (code, body) = super::proc::http_get(admin, "/fleet").ok()?;
    (code == 200).then(|| serde_json::from_str(&body).expect("fleet JSON"))
}

/// Polls `fetch` until `ok` holds; returns the view and how long it took.
pub fn until(
    what: &str,
    deadline: Duration,
    fetch: impl Fn() -> Option<FleetView>,
    ok: impl Fn(&FleetView) -> bool,
) -> (FleetView, Duration) {
    let start = Instant::now();
    let v = poll(what, deadline, || fetch().filter(|v| ok(v)));
    (v, start.elapsed())
}

/// GETs through a proxy's outbound listener at `to`, a new connection (and
/// mTLS handshake between the proxies) each time, until stopped.
pub fn http_traffic(to: std::net::SocketAddr) -> Counters {
    let c = Counters::default();
    let counters = c.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            while counters.running() {
                let r = async {
                    let s = tokio::net::TcpStream::connect(to)
                        .await
                        .map_err(|e| e.to_string())?;
                    testbed::http_app::h1(s, testbed::http_app::Req::get("/tick")).await
                }
                .await;
                counters.record(match r {
                    Ok(reply) if reply.status == 200 => Ok(()),
                    other => Err(format!("{other:?}")),
                });
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    });
    c
}

/// What continuous traffic saw; loads stop when `stop` is set.
#[derive(Default, Clone)]
pub struct Counters {
    pub ok: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    pub errors: Arc<std::sync::Mutex<Vec<String>>>,
    pub stop: Arc<AtomicBool>,
}

impl Counters {
    pub fn record(&self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.errors.lock().unwrap().push(e);
            }
        }
    }

    pub fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    /// Waits for `n` more successful requests.
    pub fn more(&self, n: u64) {
        let before = self.ok.load(Ordering::Relaxed);
        poll("traffic flowing", Duration::from_secs(30), || {
            (self.ok.load(Ordering::Relaxed) >= before + n).then_some(())
        });
    }

    #[track_caller]
    pub fn assert_clean(&self, step: &str) {
        assert_eq!(
            self.failed.load(Ordering::Relaxed),
            0,
            "{step}: failed requests: {:?}",
            self.errors.lock().unwrap()
        );
    }

    /// Stops the loads; returns (succeeded, failed).
    pub fn finish(&self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// A TCP forwarder that can be shut: connections while shut are dropped,
/// and those open when it shuts are cut (a proxy keeps one connection to
/// each control-plane address, so cutting only new ones would not isolate it).
pub struct Gate {
    pub open: Arc<AtomicBool>,
    pub addr: SocketAddr,
}

pub fn gate(to: SocketAddr) -> Gate {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let open = Arc::new(AtomicBool::new(true));
    let is_open = open.clone();
    let live = Arc::new(std::sync::Mutex::new(Vec::<std::net::TcpStream>::new()));
    let (watch_open, watch_live) = (open.clone(), live.clone());
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(50));
            if !watch_open.load(Ordering::Relaxed) {
                for s in watch_live.lock().unwrap().drain(..) {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
            }
        }
    });
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(a) = s else { continue };
            if !is_open.load(Ordering::Relaxed) {
                continue;
            }
            let Ok(b) = std::net::TcpStream::connect(to) else {
                continue;
            };
            if let (Ok(x), Ok(y)) = (a.try_clone(), b.try_clone()) {
                live.lock().unwrap().extend([x, y]);
            }
            for (mut from, mut into) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut into);
                    let _ = into.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    Gate { open, addr }
}

/// One long-lived connection through a proxy's outbound listener at `to`
/// (to an echo server): a line written and read back every 20 ms, on the
/// same connection (and TLS session between the proxies) until stopped;
/// a reconnect counts as a failure.
pub fn long_lived(to: SocketAddr) -> Counters {
    use std::io::{BufRead, BufReader, Write};
    let c = Counters::default();
    let counters = c.clone();
    std::thread::spawn(move || {
        let conn = std::net::TcpStream::connect(to).and_then(|s| {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            Ok(s)
        });
        let mut s = match conn {
            Ok(s) => s,
            Err(e) => return counters.record(Err(format!("connect {to}: {e}"))),
        };
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut n = 0u64;
        while counters.running() {
            n += 1;
            let mut line = String::new();
            let r = writeln!(s, "ping {n}")
                .and_then(|()| r.read_line(&mut line))
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    (line == format!("ping {n}\n"))
                        .then_some(())
                        .ok_or_else(|| format!("echoed {line:?}"))
                });
            let broken = r.is_err();
            counters.record(r);
            if broken {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    c
}
