//! Keeps the issuer in force current: a file watch for speed, a periodic
//! re-read for certainty (a watcher that dies never stops reloads), and a
//! debounce so a certificate and key written one after the other are read as
//! a pair. A refused replacement leaves the previous issuer serving.

use std::sync::Arc;
use std::time::Duration;

use notify::Watcher;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

use crate::issuer::{IssuerFiles, IssuerSnapshot, IssuerState, judge};
use crate::metrics::{FingerprintLabel, IdentityMetrics};

/// What the rest of the control plane sees of the issuer.
#[derive(Debug, Clone, Default)]
pub struct IssuerStatus {
    /// The issuer in force, if any passed judgement and is still valid.
    pub current: Option<Arc<IssuerState>>,
    /// Why the newest files were refused (None when they are in force).
    pub refused: Option<String>,
    /// Bumped each time a new issuer is put in force.
    pub generation: u64,
}

/// The files last read (None: unreadable) and what came of them.
type Attempt = (Option<IssuerSnapshot>, Result<(), String>);

pub struct Reloader {
    pub files: IssuerFiles,
    pub interval: Duration,
    pub debounce: Duration,
    pub metrics: IdentityMetrics,
}

impl Reloader {
    /// Runs forever, publishing on `tx`.
    pub async fn run(self, tx: watch::Sender<IssuerStatus>) {
        let (ev_tx, mut ev_rx) = mpsc::channel::<()>(16);
        let _watcher = self.watch_dirs(ev_tx);
        let mut last: Option<Attempt> = None;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(()) = ev_rx.recv() => {
                    // Debounce: wait for the writes to settle.
                    // Debounce, but never for longer than the re-read interval.
                    let cap = tokio::time::Instant::now() + self.interval;
                    while tokio::time::Instant::now() < cap
                        && let Ok(Some(())) = tokio::time::timeout(self.debounce, ev_rx.recv()).await
                    {}
                }
            }
            self.pass(&tx, &mut last);
        }
    }

    fn watch_dirs(&self, ev_tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        let names: Vec<String> = [
            &self.files.anchors,
            &self.files.certificate,
            &self.files.key,
        ]
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
        let mut w = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Only changes matter: inotify also reports opens and reads,
            // including this reloader's own, which would re-trigger it forever.
            // And only our three files (or temp files named after them): a
            // busy neighbour in the same directory must not hold reloads off.
            if let Ok(ev) = res
                && ev.paths.iter().any(|p| {
                    p.file_name().is_some_and(|n| {
                        names
                            .iter()
                            .any(|f| n.to_string_lossy().contains(f.as_str()))
                    })
                })
                && matches!(
                    ev.kind,
                    notify::EventKind::Create(_)
                        | notify::EventKind::Modify(_)
                        | notify::EventKind::Remove(_)
                )
                && !matches!(
                    ev.kind,
                    notify::EventKind::Modify(notify::event::ModifyKind::Metadata(_))
                )
            {
                let _ = ev_tx.try_send(());
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the issuer files; relying on the periodic re-read");
                return None;
            }
        };
        let mut dirs: Vec<_> = [
            &self.files.anchors,
            &self.files.certificate,
            &self.files.key,
        ]
        .iter()
        .map(|p| {
            p.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."))
                .to_path_buf()
        })
        .collect();
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            if let Err(e) = w.watch(&d, notify::RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %d.display(), error = %e, "cannot watch; relying on the periodic re-read");
            }
        }
        Some(w)
    }

    /// One read-and-judge pass. Unchanged files are judged again too, since
    /// time alone can expire an issuer or make a not-yet-valid one valid; only
    /// a changed outcome is logged, counted and published.
    fn pass(&self, tx: &watch::Sender<IssuerStatus>, last: &mut Option<Attempt>) {
        let now = OffsetDateTime::now_utc();
        let (snap, result) = match IssuerSnapshot::read(&self.files) {
            Ok(s) => {
                let r = judge(&self.files, &s, now);
                (Some(s), r)
            }
            Err(e) => (None, Err(e)),
        };
        let attempt = (snap, result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        let changed = last.as_ref() != Some(&attempt);
        match result {
            Ok(state) => {
                self.publish_metrics(&state, now);
                let same = tx.borrow().current.as_ref().is_some_and(|c| {
                    c.issuer_fingerprint == state.issuer_fingerprint && c.anchors == state.anchors
                });
                if same {
                    tx.send_if_modified(|s| s.refused.take().is_some());
                } else {
                    self.metrics.count_reload("ok");
                    tracing::info!(
                        issuer = %state.signer.subject,
                        fingerprint = %state.issuer_fingerprint,
                        not_after = %pki::info::rfc3339(state.issuer_not_after),
                        anchors = state.anchors.len(),
                        "issuer in force"
                    );
                    let state = Arc::new(state);
                    tx.send_modify(|s| {
                        s.current = Some(state);
                        s.refused = None;
                        s.generation += 1;
                    });
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if changed {
                    self.metrics.count_reload(e.label());
                    let keeping = tx.borrow().current.is_some();
                    tracing::warn!(
                        reason = %msg,
                        result = e.label(),
                        "refused the issuer files; {}",
                        if keeping { "the previous issuer keeps serving" } else { "no issuer is in force" }
                    );
                }
                tx.send_if_modified(|s| {
                    let new = s.refused.as_deref() != Some(msg.as_str());
                    s.refused = Some(msg);
                    new
                });
            }
        }
        self.expire_if_lapsed(tx, now);
        *last = Some(attempt);
    }

    /// An issuer past its NotAfter cannot sign valid certificates: stop using it.
    fn expire_if_lapsed(&self, tx: &watch::Sender<IssuerStatus>, now: OffsetDateTime) {
        tx.send_if_modified(|s| match &s.current {
            Some(c) if c.chain_not_after <= now => {
                tracing::error!(issuer = %c.issuer_fingerprint, "the issuer in force has expired; Certify answers UNAVAILABLE until a valid issuer is written");
                s.current = None;
                true
            }
            _ => false,
        });
    }

    fn publish_metrics(&self, state: &IssuerState, now: OffsetDateTime) {
        let m = &self.metrics;
        m.issuer_ttl
            .set((state.issuer_not_after - now).as_seconds_f64());
        m.issuer_expiry.clear();
        m.issuer_expiry
            .get_or_create(&FingerprintLabel {
                fingerprint: state.issuer_fingerprint.clone(),
            })
            .set(state.issuer_not_after.unix_timestamp() as f64);
        m.anchor_expiry.clear();
        for a in &state.anchors {
            if let Ok(x) = pki::parse_x509(a) {
                m.anchor_expiry
                    .get_or_create(&FingerprintLabel {
                        fingerprint: pki::fingerprint(a),
                    })
                    .set(x.validity().not_after.timestamp() as f64);
            }
        }
    }
}
