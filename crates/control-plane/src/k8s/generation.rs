//! The trust bundle's generation in Kubernetes mode, shared by every
//! replica: ConfigMap `weft-bundle-generation` holds the generation and the
//! content hash it was given to. A replica serves the stored generation when
//! the stored hash is the bundle it sees; only the Lease holder proposes a
//! new one, written with resourceVersion compare-and-swap, so two writers
//! (or a holder paused past its lease that wakes up) never bump twice: the
//! loser's write conflicts, it re-reads, and finds the hash already stored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use identity::IssuerStatus;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use super::issuer_source::{Seen, follow};
use super::lease::{self, Held, holds, status};
use crate::bundle::{LiveBundle, Version, content_hash, live_bundle, publish};

pub const CONFIGMAP: &str = "weft-bundle-generation";
const GENERATION: &str = "generation";
const SHA256: &str = "sha256";
/// Retry a pending write (or a wait for the holder's) this often.
const RETRY: Duration = Duration::from_secs(2);

/// What a replica does with the bundle it sees, given what is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The stored generation is this content's: serve it.
    Serve(Version),
    /// Nothing stored names this content (or the stored generation is below
    /// one already served): the holder writes this, compare-and-swap.
    Propose(Version),
}

/// The decision for content `seen_sha`, given the `stored` version and the
/// highest one this replica has `served`: never a generation at or below
/// either for new content, so a deleted or reset ConfigMap cannot make the
/// generation go backwards. Pure, so it is tested.
pub fn decide(stored: Option<&Version>, seen_sha: &str, served: Option<&Version>) -> Decision {
    let floor = served.map_or(0, |s| s.generation);
    match stored {
        Some(v) if v.sha256 == seen_sha && v.generation >= floor => Decision::Serve(v.clone()),
        _ => Decision::Propose(Version {
            generation: stored.map_or(0, |v| v.generation).max(floor) + 1,
            sha256: seen_sha.to_string(),
        }),
    }
}

/// The version a ConfigMap holds.
pub fn parse(cm: &ConfigMap) -> Result<Version, String> {
    let data = cm.data.as_ref();
    let get = |k: &str| data.and_then(|d| d.get(k)).map(|s| s.trim().to_string());
    let generation = get(GENERATION)
        .ok_or("no `generation` key")?
        .parse::<u64>()
        .map_err(|e| format!("`generation` is not a number: {e}"))?;
    let sha256 = get(SHA256).ok_or("no `sha256` key")?;
    Ok(Version { generation, sha256 })
}

/// Of two readings, the one with the higher generation (the watch may
/// deliver an older object after this replica's own write).
fn newer(a: Option<ConfigMap>, b: Option<ConfigMap>) -> Option<ConfigMap> {
    let g = |c: &Option<ConfigMap>| c.as_ref().and_then(|c| parse(c).ok()).map(|v| v.generation);
    match (g(&a), g(&b)) {
        (Some(x), Some(y)) if x > y => a,
        _ => b,
    }
}

#[derive(Clone, Default)]
pub struct GenerationMetrics {
    pub writes: Counter,
    pub lease_held: Gauge,
}

impl GenerationMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "trust_bundle_generation_writes",
            "New bundle generations this replica stored (compare-and-swap won)",
            self.writes.clone(),
        );
        r.register(
            "control_plane_lease_held",
            "1 while this replica holds the Lease weft-control-plane",
            self.lease_held.clone(),
        );
    }
}

pub struct KubeGenerations {
    pub client: Client,
    pub namespace: String,
    pub metrics: GenerationMetrics,
}

impl KubeGenerations {
    /// Runs forever: the lease, the ConfigMap watch, and publishing.
    pub async fn run(
        self,
        issuer: watch::Receiver<IssuerStatus>,
        tx: watch::Sender<Option<Arc<LiveBundle>>>,
        gauge: Gauge,
    ) {
        let (held_tx, held_rx) = watch::channel::<Held>(None);
        let (cm_tx, cm_rx) = watch::channel::<Seen<ConfigMap>>(None);
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let object = format!("ConfigMap {}/{CONFIGMAP}", self.namespace);
        tokio::join!(
            lease::run(
                self.client.clone(),
                self.namespace.clone(),
                lease::holder_identity(),
                held_tx
            ),
            follow(api.clone(), object.clone(), CONFIGMAP.into(), cm_tx),
            Tracker {
                api,
                object,
                metrics: self.metrics,
                gauge
            }
            .run(issuer, cm_rx, held_rx, tx),
        );
    }
}

struct Tracker {
    api: Api<ConfigMap>,
    object: String,
    metrics: GenerationMetrics,
    gauge: Gauge,
}

impl Tracker {
    async fn run(
        self,
        mut issuer: watch::Receiver<IssuerStatus>,
        mut cm: watch::Receiver<Seen<ConfigMap>>,
        mut held: watch::Receiver<Held>,
        tx: watch::Sender<Option<Arc<LiveBundle>>>,
    ) {
        let mut known: Option<ConfigMap> = None;
        let mut listed = false;
        let mut served: Option<Version> = None;
        let mut last_note = String::new();
        loop {
            if let Some(seen) = cm.borrow_and_update().clone() {
                known = newer(known.take(), seen);
                listed = true;
            }
            let held_now = holds(&held.borrow_and_update());
            self.metrics.lease_held.set(i64::from(held_now));
            let status = issuer.borrow_and_update().clone();
            let note = match (status.current.as_ref(), listed) {
                (Some(state), true) => {
                    let step = self.step(state, &mut known, &mut served, held_now, &tx);
                    step.await
                }
                _ => None,
            };
            if let Some(n) = note.filter(|n| *n != last_note) {
                tracing::info!("{n}");
                last_note = n;
            }
            tokio::select! {
                r = issuer.changed() => if r.is_err() { return },
                r = cm.changed() => if r.is_err() { return },
                r = held.changed() => if r.is_err() { return },
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// One decision: serve the stored generation, or (holding the lease)
    /// write the next one. Returns a note when the bundle is held back.
    async fn step(
        &self,
        state: &identity::IssuerState,
        known: &mut Option<ConfigMap>,
        served: &mut Option<Version>,
        held: bool,
        tx: &watch::Sender<Option<Arc<LiveBundle>>>,
    ) -> Option<String> {
        let sha = content_hash(&state.anchors);
        let stored = match known.as_ref().map(parse).transpose() {
            Ok(v) => v,
            Err(e) => {
                return Some(format!(
                    "{}: {e}; it holds the trust bundle's generation (never going backwards): delete it to let the lease holder write it again; the bundle in force keeps serving",
                    self.object
                ));
            }
        };
        match decide(stored.as_ref(), &sha, served.as_ref()) {
            Decision::Serve(v) => {
                self.serve(state, v, served, tx);
                None
            }
            Decision::Propose(v) if held => match self.write(known.as_ref(), &v).await {
                Ok(cm) => {
                    self.metrics.writes.inc();
                    tracing::info!(generation = v.generation, sha256 = %v.sha256, "stored the new trust bundle generation in {}", self.object);
                    *known = Some(cm);
                    self.serve(state, v, served, tx);
                    None
                }
                Err(e) if status(&e) == Some(409) => {
                    // Another writer won: re-read; never bump twice.
                    match self.api.get_opt(CONFIGMAP).await {
                        Ok(cm) => *known = cm,
                        Err(e) => return Some(self.cannot("read", &e)),
                    }
                    Some(format!(
                        "{}: changed under this replica's write; re-read",
                        self.object
                    ))
                }
                Err(e) => Some(self.cannot("write", &e)),
            },
            Decision::Propose(v) => Some(format!(
                "trust bundle {} (generation {} when stored) waits for the Lease holder to store it in {}; the bundle in force keeps serving",
                v.sha256, v.generation, self.object
            )),
        }
    }

    fn serve(
        &self,
        state: &identity::IssuerState,
        v: Version,
        served: &mut Option<Version>,
        tx: &watch::Sender<Option<Arc<LiveBundle>>>,
    ) {
        if served.as_ref() != Some(&v) {
            tracing::info!(
                generation = v.generation,
                sha256 = %v.sha256,
                anchors = state.anchors.len(),
                "trust bundle version in force (stored in {})",
                self.object
            );
        }
        self.gauge.set(v.generation as i64);
        publish(tx, live_bundle(state, v.clone()));
        *served = Some(v);
    }

    fn cannot(&self, what: &str, e: &kube::Error) -> String {
        format!(
            "cannot {what} {}: {}; retrying, the bundle in force keeps serving",
            self.object,
            super::proofs::api_error(e)
        )
    }

    /// Create, or replace with the resourceVersion read (compare-and-swap).
    async fn write(
        &self,
        known: Option<&ConfigMap>,
        v: &Version,
    ) -> Result<ConfigMap, kube::Error> {
        let data = BTreeMap::from([
            (GENERATION.to_string(), v.generation.to_string()),
            (SHA256.to_string(), v.sha256.clone()),
        ]);
        match known {
            None => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(CONFIGMAP.into()),
                        ..Default::default()
                    },
                    data: Some(data),
                    ..Default::default()
                };
                self.api.create(&PostParams::default(), &cm).await
            }
            Some(cur) => {
                let mut cm = cur.clone();
                cm.data = Some(data);
                self.api
                    .replace(CONFIGMAP, &PostParams::default(), &cm)
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(generation: u64, sha: &str) -> Version {
        Version {
            generation,
            sha256: sha.into(),
        }
    }

    #[test]
    fn the_stored_generation_is_served_new_content_is_proposed_once() {
        assert_eq!(decide(None, "aa", None), Decision::Propose(v(1, "aa")));
        assert_eq!(
            decide(Some(&v(4, "aa")), "aa", Some(&v(3, "zz"))),
            Decision::Serve(v(4, "aa"))
        );
        assert_eq!(
            decide(Some(&v(4, "aa")), "bb", Some(&v(4, "aa"))),
            Decision::Propose(v(5, "bb"))
        );
        // A holder that wakes up after another stored this content: serve,
        // do not bump again.
        assert_eq!(
            decide(Some(&v(5, "bb")), "bb", Some(&v(4, "aa"))),
            Decision::Serve(v(5, "bb"))
        );
    }

    #[test]
    fn a_reset_configmap_never_takes_the_generation_backwards() {
        // Deleted: the next generation is above what was served.
        assert_eq!(
            decide(None, "aa", Some(&v(7, "aa"))),
            Decision::Propose(v(8, "aa"))
        );
        // Rewritten lower, even with the same content: not served.
        assert_eq!(
            decide(Some(&v(2, "aa")), "aa", Some(&v(7, "aa"))),
            Decision::Propose(v(8, "aa"))
        );
    }

    #[test]
    fn the_configmap_round_trips_and_garbage_is_named() {
        let cm = |pairs: &[(&str, &str)]| ConfigMap {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        assert_eq!(
            parse(&cm(&[("generation", "3"), ("sha256", "ab")])),
            Ok(v(3, "ab"))
        );
        let e = parse(&cm(&[("generation", "x"), ("sha256", "ab")])).unwrap_err();
        assert!(e.contains("not a number"), "{e}");
        assert!(
            parse(&cm(&[("generation", "3")]))
                .unwrap_err()
                .contains("sha256")
        );
        let newer_of = newer(
            Some(cm(&[("generation", "5"), ("sha256", "b")])),
            Some(cm(&[("generation", "4"), ("sha256", "a")])),
        );
        assert_eq!(parse(&newer_of.unwrap()), Ok(v(5, "b")));
    }
}
