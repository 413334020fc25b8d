//! The bootstrap anchors file, watched for the proxy's whole life: it is
//! the out-of-band channel an operator uses when the control plane can no
//! longer be verified (an emergency re-root). A changed file is applied
//! once (edge-triggered, so a stale bootstrap copy never undoes a retired
//! anchor): before any bundle it replaces the anchors; with a bundle in
//! force its new anchors are added to the bundle's, which the next verified
//! bundle replaces. An anchor given out of band means a re-root, so the
//! bundle count starts afresh (a re-rooted control plane whose state
//! directory was lost counts from 1 again, and must not look like a stale
//! replica). A bad file is refused, logged and counted; the trust in
//! force stays. Nothing learned from the control plane alone ever enters
//! the trust this way: a control plane the proxy cannot verify is never
//! even connected to.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::trust::{BundleRefused, Trust};

/// How often the file is read again: it is small, and recovery waits on it.
pub const INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileRefused {
    #[error("cannot read it ({0})")]
    Unreadable(String),
    #[error("{0}")]
    Bad(BundleRefused),
    #[error(
        "every anchor in it has expired (the last on {0}); write the new anchor (e.g. the one `weft rotate trust-anchor --emergency` installed)"
    )]
    Expired(String),
}

impl FileRefused {
    /// The `reason` label of `trust_anchors_file_refusals`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unreadable(_) => "unreadable",
            Self::Bad(e) => e.label(),
            Self::Expired(_) => "expired",
        }
    }
}

/// What to do with the file as read now.
#[derive(Debug)]
pub enum Decision {
    /// Nothing new: the content already applied, or anchors already held.
    Keep,
    Apply(Trust),
    Refuse(FileRefused),
}

/// Judges the file's content `pem` (changed since it was last applied)
/// against the trust in force: pure, so each case is unit-tested.
pub fn judge(pem: &str, current: &Trust, now: OffsetDateTime) -> Decision {
    let file = match Trust::new(None, pem) {
        Ok(t) => t,
        Err(e) => return Decision::Refuse(FileRefused::Bad(e)),
    };
    let ends: Vec<OffsetDateTime> = file
        .anchors
        .iter()
        .filter_map(|a| pki::parse_x509(a).ok())
        .filter_map(|x| {
            OffsetDateTime::from_unix_timestamp(x.validity().not_after.timestamp()).ok()
        })
        .collect();
    if !ends.is_empty() && ends.iter().all(|t| *t <= now) {
        let last = ends.iter().max().copied().unwrap_or(now);
        return Decision::Refuse(FileRefused::Expired(pki::info::rfc3339(last)));
    }
    if current.version.is_none() {
        return Decision::Apply(file);
    }
    let added: Vec<_> = file
        .anchors
        .iter()
        .filter(|a| !current.anchors.contains(a))
        .cloned()
        .collect();
    if added.is_empty() {
        return Decision::Keep;
    }
    let mut union = current.pem.clone();
    if !union.ends_with('\n') {
        union.push('\n');
    }
    union.push_str(&pki::cert::to_pem(&added));
    match Trust::new(None, &union) {
        Ok(t) => Decision::Apply(t),
        Err(e) => Decision::Refuse(FileRefused::Bad(e)),
    }
}

/// Follows the file; applies what [`judge`] says on `trust`.
pub struct Watch {
    pub path: PathBuf,
    pub trust: watch::Sender<Arc<Trust>>,
    /// The content read at start (already in force).
    pub applied: String,
    pub metrics: crate::metrics::ProxyMetrics,
}

impl Watch {
    pub async fn run(mut self) {
        let mut refused: Option<FileRefused> = None;
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let read = std::fs::read_to_string(&self.path);
            let decision = match &read {
                Ok(pem) if *pem == self.applied => continue,
                Ok(pem) => {
                    let current = self.trust.borrow().clone();
                    judge(pem, &current, OffsetDateTime::now_utc())
                }
                Err(e) => Decision::Refuse(FileRefused::Unreadable(e.to_string())),
            };
            match decision {
                Decision::Keep => {}
                Decision::Apply(t) => {
                    let old = self.trust.send_replace(Arc::new(t));
                    tracing::info!(
                        file = %self.path.display(),
                        anchors = self.trust.borrow().anchors.len(),
                        added_to_bundle_generation = old.version.as_ref().map(|v| v.generation),
                        "trust anchors file changed and applied; new handshakes use it"
                    );
                }
                Decision::Refuse(e) => {
                    // Logged and counted once per new reason, not every second.
                    if refused.as_ref() != Some(&e) {
                        tracing::warn!(
                            file = %self.path.display(),
                            reason = e.label(),
                            "trust anchors file refused: {e}; keeping the anchors in force"
                        );
                        self.metrics.anchors_file_refused(e.label());
                        refused = Some(e);
                    }
                    continue;
                }
            }
            refused = None;
            if let Ok(pem) = read {
                self.applied = pem;
            }
        }
    }
}

#[cfg(test)]
#[path = "anchors_file_tests.rs"]
mod tests;
