//! Anchor rotations under traffic: a second anchor and issuer, request
//! counters that must stay clean, and polling the fleet view.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use control_plane::fleet::FleetView;

use super::Scratch;
use super::proc::poll;

/// ca2.crt/ca2.key (a new anchor) and issuer2.crt/issuer2.key signed by it.
pub fn new_anchor_and_issuer(s: &Scratch) {
    s.weft(&[
        "certs",
        "create",
        "root-2.linkerd.cluster.local",
        "ca2.crt",
        "ca2.key",
        "--profile",
        "root-ca",
        "--no-password",
        "--insecure",
        "--not-after",
        "87600h",
    ])
    .ok();
    s.weft(&[
        "certs",
        "create",
        "identity.linkerd.cluster.local",
        "issuer2.crt",
        "issuer2.key",
        "--profile",
        "intermediate-ca",
        "--not-after",
        "8760h",
        "--no-password",
        "--insecure",
        "--ca",
        "ca2.crt",
        "--ca-key",
        "ca2.key",
    ])
    .ok();
}

/// The control plane's fleet view at `admin`, if it answers.
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
