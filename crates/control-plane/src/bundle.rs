//! The trust bundle as proxies receive it: the anchors in force, versioned by
//! content hash and a generation counter persisted in the state directory,
//! so the version never goes backwards, not even across restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use identity::IssuerStatus;
use pki::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub const VERSION_FILE: &str = "bundle-version.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub generation: u64,
    pub sha256: String,
}

/// The bundle in force, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveBundle {
    pub version: Version,
    pub pem: String,
    /// SHA-256 fingerprints of the anchors, in bundle order.
    pub anchors: Vec<String>,
    /// The fingerprint of the anchor the current issuer chains to.
    pub issuer_anchor: String,
    pub issuer_sha256: String,
    /// Each anchor's NotAfter (unix seconds), in bundle order.
    pub anchor_not_after: Vec<i64>,
    pub issuer_not_after: i64,
}

/// SHA-256 over the anchors' DER, in order: the bundle's content hash.
pub fn content_hash(anchors: &[CertificateDer<'_>]) -> String {
    let mut all = Vec::new();
    for a in anchors {
        all.extend_from_slice(a.as_ref());
    }
    pki::cert::sha256_hex(&all)
}

/// The version for a bundle with content hash `sha256`, given the last one:
/// the same content keeps its generation; new content gets the next.
pub fn next_version(last: Option<&Version>, sha256: &str) -> Version {
    match last {
        Some(v) if v.sha256 == sha256 => v.clone(),
        Some(v) => Version {
            generation: v.generation + 1,
            sha256: sha256.to_string(),
        },
        None => Version {
            generation: 1,
            sha256: sha256.to_string(),
        },
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error(
        "{path}: {detail}; it holds the trust bundle's generation (never going backwards); restore it, or remove it to start counting again"
    )]
    Unreadable { path: PathBuf, detail: String },
    #[error("{path}: cannot write: {detail}")]
    Write { path: PathBuf, detail: String },
}

/// The persisted last version.
pub struct VersionStore {
    pub path: PathBuf,
}

impl VersionStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(VERSION_FILE),
        }
    }

    pub fn load(&self) -> Result<Option<Version>, VersionError> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| VersionError::Unreadable {
                    path: self.path.clone(),
                    detail: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(VersionError::Unreadable {
                path: self.path.clone(),
                detail: e.to_string(),
            }),
        }
    }

    pub fn save(&self, v: &Version) -> Result<(), VersionError> {
        let bytes = serde_json::to_vec_pretty(v).unwrap_or_default();
        pki::files::write_atomic(&self.path, &bytes, pki::files::PUBLIC_MODE, true).map_err(|e| {
            VersionError::Write {
                path: self.path.clone(),
                detail: e.to_string(),
            }
        })
    }
}

/// Follows the issuer in force and publishes the bundle with its version,
/// persisting each new generation before publishing it.
pub async fn track(
    mut issuer: watch::Receiver<IssuerStatus>,
    store: VersionStore,
    mut last: Option<Version>,
    tx: watch::Sender<Option<Arc<LiveBundle>>>,
    generation_gauge: prometheus_client::metrics::gauge::Gauge,
) {
    loop {
        let status = issuer.borrow_and_update().clone();
        if let Some(state) = status.current.as_ref() {
            let sha = content_hash(&state.anchors);
            let version = next_version(last.as_ref(), &sha);
            let persisted = last.as_ref() == Some(&version)
                || match store.save(&version) {
                    Ok(()) => true,
                    Err(e) => {
                        // Publishing an unpersisted generation could make it go
                        // backwards after a restart: keep the last one instead.
                        tracing::error!(
                            "{e}; the new trust bundle is not pushed to proxies until it can be saved"
                        );
                        false
                    }
                };
            if persisted {
                if last.as_ref() != Some(&version) {
                    tracing::info!(
                        generation = version.generation,
                        sha256 = %version.sha256,
                        anchors = state.anchors.len(),
                        "trust bundle version in force"
                    );
                }
                generation_gauge.set(version.generation as i64);
                publish(&tx, live_bundle(state, version.clone()));
                last = Some(version);
            }
        }
        let saved = match status.current.as_ref() {
            None => true,
            Some(state) => last
                .as_ref()
                .is_some_and(|v| v.sha256 == content_hash(&state.anchors)),
        };
        if saved {
            if issuer.changed().await.is_err() {
                return;
            }
        } else {
            // The new generation could not be saved: try again soon, even if
            // the files do not change.
            tokio::select! {
                r = issuer.changed() => if r.is_err() { return },
                () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            }
        }
    }
}

/// The bundle of `state`'s anchors, sent as `version`.
pub fn live_bundle(state: &identity::IssuerState, version: Version) -> LiveBundle {
    LiveBundle {
        version,
        pem: pki::cert::to_pem(&state.anchors),
        anchors: state.anchors.iter().map(|a| pki::fingerprint(a)).collect(),
        issuer_anchor: issuer_anchor(state),
        issuer_sha256: state.issuer_fingerprint.clone(),
        // An anchor in force parsed when it was judged; 0 never shows.
        anchor_not_after: state
            .anchors
            .iter()
            .map(|a| {
                pki::info::CertInfo::from_der(a)
                    .map(|i| i.not_after.unix_timestamp())
                    .unwrap_or(0)
            })
            .collect(),
        issuer_not_after: state.issuer_not_after.unix_timestamp(),
    }
}

/// Publishes `bundle` when it differs from the one in force.
pub fn publish(tx: &watch::Sender<Option<Arc<LiveBundle>>>, bundle: LiveBundle) {
    tx.send_if_modified(|cur| {
        let changed = cur.as_deref() != Some(&bundle);
        if changed {
            *cur = Some(Arc::new(bundle));
        }
        changed
    });
}

/// The anchor the issuer's chain ends at (judged when it was put in force).
fn issuer_anchor(state: &identity::IssuerState) -> String {
    let Some(issuer) = state.chain.first() else {
        return String::new();
    };
    pki::verify::verify_at(
        issuer,
        &state.chain[1..],
        &state.anchors,
        None,
        pki::Purpose::Ca,
    )
    .ok()
    .and_then(|v| v.links.last().map(|(_, fp)| fp.clone()))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_only_move_forward() {
        let v1 = next_version(None, "aa");
        assert_eq!(v1.generation, 1);
        assert_eq!(next_version(Some(&v1), "aa"), v1);
        let v2 = next_version(Some(&v1), "bb");
        assert_eq!(v2.generation, 2);
        // Going back to earlier content is a new generation, not the old one.
        assert_eq!(next_version(Some(&v2), "aa").generation, 3);
    }

    #[test]
    fn the_store_round_trips_and_refuses_garbage() {
        let d = tempfile::tempdir().unwrap();
        let s = VersionStore::new(d.path());
        assert_eq!(s.load().unwrap(), None);
        let v = next_version(None, "aa");
        s.save(&v).unwrap();
        assert_eq!(s.load().unwrap(), Some(v));
        std::fs::write(&s.path, "{").unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("never going backwards"), "{e}");
    }
}
