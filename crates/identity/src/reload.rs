//! Keeps the issuer in force current: a file watch for speed, a periodic
//! re-read for certainty (a watcher that dies never stops reloads), and a
//! debounce so a certificate and key written one after the other are read as
//! a pair. A refused replacement leaves the previous issuer serving.

use std::sync::Arc;
use std::time::Duration;

use notify::Watcher;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

use crate::issuer::{IssuerError, IssuerFiles, IssuerSnapshot, IssuerState, judge};
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

/// Why a source's newest issuer material was refused: a short label for
/// `issuer_reloads_total{result}` and the full reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub label: &'static str,
    pub reason: String,
}

impl From<IssuerError> for Refusal {
    fn from(e: IssuerError) -> Self {
        Self {
            label: e.label(),
            reason: e.to_string(),
        }
    }
}

/// What a pass changed, so a source can say so where it lives (a
/// Kubernetes Event, say) exactly once per change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing new: the same issuer, or the same refusal as last time.
    Unchanged,
    /// A new issuer (or new anchors) was put in force.
    InForce,
    /// Newly refused; the previous issuer (if any) keeps serving.
    Refused(Refusal),
}

/// The material last read (None: unreadable) and what came of it.
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
        let mut publisher = Publisher::new(self.metrics.clone(), "the issuer files");
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
            self.pass(&tx, &mut publisher);
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
    /// time alone can expire an issuer or make a not-yet-valid one valid.
    fn pass(&self, tx: &watch::Sender<IssuerStatus>, publisher: &mut Publisher) {
        let now = OffsetDateTime::now_utc();
        let (snap, result) = match IssuerSnapshot::read(&self.files) {
            Ok(s) => {
                let r = judge(&self.files, &s, now);
                (Some(s), r)
            }
            Err(e) => (None, Err(e)),
        };
        publisher.publish(tx, snap, result.map_err(Refusal::from), now);
    }
}

/// Publishes judged issuer material the same way whatever its source
/// (files, or a Kubernetes Secret and ConfigMap): a refusal keeps the last
/// good issuer serving, only a changed outcome is logged and counted, and an
/// issuer that time has expired is dropped.
pub struct Publisher {
    metrics: IdentityMetrics,
    /// How logs name the source, e.g. "the issuer files".
    source: String,
    last: Option<Attempt>,
}

impl Publisher {
    pub fn new(metrics: IdentityMetrics, source: impl Into<String>) -> Self {
        Self {
            metrics,
            source: source.into(),
            last: None,
        }
    }

    /// Publishes one pass's result on `tx` and says what changed.
    pub fn publish(
        &mut self,
        tx: &watch::Sender<IssuerStatus>,
        snap: Option<IssuerSnapshot>,
        result: Result<IssuerState, Refusal>,
        now: OffsetDateTime,
    ) -> Outcome {
        let attempt = (
            snap,
            result.as_ref().map(|_| ()).map_err(|e| e.reason.clone()),
        );
        let changed = self.last.as_ref() != Some(&attempt);
        let outcome = match result {
            Ok(state) => self.put_in_force(tx, state, now),
            Err(refusal) => {
                let msg = refusal.reason.clone();
                let outcome = if changed {
                    self.metrics.count_reload(refusal.label);
                    let keeping = tx.borrow().current.is_some();
                    tracing::warn!(
                        reason = %msg,
                        result = refusal.label,
                        "refused {}; {}",
                        self.source,
                        if keeping { "the previous issuer keeps serving" } else { "no issuer is in force" }
                    );
                    Outcome::Refused(refusal)
                } else {
                    Outcome::Unchanged
                };
                tx.send_if_modified(|s| {
                    let new = s.refused.as_deref() != Some(msg.as_str());
                    s.refused = Some(msg);
                    new
                });
                outcome
            }
        };
        expire_if_lapsed(tx, now);
        self.last = Some(attempt);
        outcome
    }

    fn put_in_force(
        &self,
        tx: &watch::Sender<IssuerStatus>,
        state: IssuerState,
        now: OffsetDateTime,
    ) -> Outcome {
        publish_metrics(&self.metrics, &state, now);
        let same = tx.borrow().current.as_ref().is_some_and(|c| {
            c.issuer_fingerprint == state.issuer_fingerprint && c.anchors == state.anchors
        });
        if same {
            tx.send_if_modified(|s| s.refused.take().is_some());
            return Outcome::Unchanged;
        }
        self.metrics.count_reload("ok");
        tracing::info!(
            issuer = %state.signer.subject,
            fingerprint = %state.issuer_fingerprint,
            not_after = %pki::info::rfc3339(state.issuer_not_after),
            anchors = state.anchors.len(),
            source = %self.source,
            "issuer in force"
        );
        let state = Arc::new(state);
        tx.send_modify(|s| {
            s.current = Some(state);
            s.refused = None;
            s.generation += 1;
        });
        Outcome::InForce
    }
}

/// An issuer past its NotAfter cannot sign valid certificates: stop using it.
fn expire_if_lapsed(tx: &watch::Sender<IssuerStatus>, now: OffsetDateTime) {
    tx.send_if_modified(|s| match &s.current {
        Some(c) if c.chain_not_after <= now => {
            tracing::error!(issuer = %c.issuer_fingerprint, "the issuer in force has expired; Certify answers UNAVAILABLE until a valid issuer is written");
            s.current = None;
            true
        }
        _ => false,
    });
}

fn publish_metrics(m: &IdentityMetrics, state: &IssuerState, now: OffsetDateTime) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use pki::create::{KeySpec, NewCert, Profile, Signer, create};

    fn pair(signer: Option<&Signer>, profile: Profile) -> (Vec<u8>, Vec<u8>, Signer) {
        let now = OffsetDateTime::now_utc();
        let c = create(
            &NewCert {
                subject: format!("{profile}"),
                profile,
                sans: vec![],
                not_before: now - time::Duration::days(1),
                not_after: now + time::Duration::days(30),
                key: KeySpec::EcdsaP256,
            },
            signer,
        )
        .unwrap();
        let crt = pki::cert::to_pem(std::slice::from_ref(&c.cert)).into_bytes();
        let key = c.key.serialize_pem().into_bytes();
        (crt, key, Signer::new(c.cert, c.key, "crt", "key").unwrap())
    }

    fn files() -> IssuerFiles {
        IssuerFiles {
            anchors: "anchors".into(),
            certificate: "crt".into(),
            key: "key".into(),
        }
    }

    #[test]
    fn a_refusal_keeps_the_last_good_issuer_and_is_reported_once() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = IdentityMetrics::new(&mut registry);
        let mut p = Publisher::new(metrics.clone(), "test material");
        let (tx, rx) = watch::channel(IssuerStatus::default());
        let (ca, _, root) = pair(None, Profile::RootCa);
        let (crt, key, _) = pair(Some(&root), Profile::IntermediateCa);
        let (_, _, other_root) = pair(None, Profile::RootCa);
        let (fcrt, fkey, _) = pair(Some(&other_root), Profile::IntermediateCa);
        let now = OffsetDateTime::now_utc();
        let pass = |p: &mut Publisher, crt: &[u8], key: &[u8]| {
            let snap = IssuerSnapshot {
                anchors: ca.clone(),
                certificate: crt.to_vec(),
                key: key.to_vec(),
            };
            let r = judge(&files(), &snap, now).map_err(Refusal::from);
            p.publish(&tx, Some(snap), r, now)
        };
        assert_eq!(pass(&mut p, &crt, &key), Outcome::InForce);
        assert_eq!(pass(&mut p, &crt, &key), Outcome::Unchanged);
        let good = rx
            .borrow()
            .current
            .clone()
            .unwrap()
            .issuer_fingerprint
            .clone();
        assert!(matches!(
            pass(&mut p, &fcrt, &fkey),
            Outcome::Refused(Refusal {
                label: "untrusted",
                ..
            })
        ));
        assert_eq!(pass(&mut p, &fcrt, &fkey), Outcome::Unchanged);
        let missing = Refusal {
            label: "missing_key",
            reason: "no key key.pem".into(),
        };
        assert_eq!(
            p.publish(&tx, None, Err(missing.clone()), now),
            Outcome::Refused(missing)
        );
        let status = rx.borrow().clone();
        assert_eq!(status.current.unwrap().issuer_fingerprint, good);
        assert_eq!(status.refused.as_deref(), Some("no key key.pem"));
        assert_eq!(status.generation, 1);
        let count = |l: &str| {
            metrics
                .reloads
                .get_or_create(&crate::metrics::ResultLabel { result: l.into() })
                .get()
        };
        assert_eq!(
            (count("ok"), count("untrusted"), count("missing_key")),
            (1, 1, 1)
        );
        assert_eq!(pass(&mut p, &crt, &key), Outcome::Unchanged);
        assert_eq!(rx.borrow().refused, None, "back to the pair in force");
    }
}
