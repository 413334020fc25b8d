//! Keeps the issuer in force current from the API server: the trust-roots
//! ConfigMap and the issuer Secret are watched by name (the RBAC grants
//! list/watch only with a `metadata.name` field selector), judged as a pair
//! on every change and again periodically (time alone expires an issuer),
//! and published exactly as the file reloader publishes. A refusal keeps the
//! last good issuer, is logged, counted and recorded as an Event on the
//! object at fault. Watch errors are retried with backoff; the last state
//! seen is kept meanwhile.

use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use identity::IssuerStatus;
use identity::metrics::IdentityMetrics;
use identity::reload::{Outcome, Publisher, Refusal};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::events::{self, Warning, reference};
use super::issuer::{Names, SourceError, Which, snapshot};

/// What the watch has seen of one object: None until first listed, then
/// the object (or None: it does not exist).
pub(super) type Seen<K> = Option<Option<K>>;

pub struct KubeIssuer {
    pub client: Client,
    pub names: Names,
    /// Re-judge this often even without a change.
    pub interval: Duration,
    /// Lets a ConfigMap and Secret written together be judged as a pair.
    pub debounce: Duration,
    pub metrics: IdentityMetrics,
}

/// resourceVersions of the pair last put in force: which object changed
/// since then is the one a refusal of the pair is about.
#[derive(Default)]
struct InForce {
    configmap: Option<String>,
    secret: Option<String>,
}

impl KubeIssuer {
    /// Runs forever, publishing on `tx`.
    pub async fn run(self, tx: watch::Sender<IssuerStatus>) {
        let (cm_tx, mut cm_rx) = watch::channel::<Seen<ConfigMap>>(None);
        let (secret_tx, mut secret_rx) = watch::channel::<Seen<Secret>>(None);
        let ns = &self.names.namespace;
        let cms = follow(
            Api::<ConfigMap>::namespaced(self.client.clone(), ns),
            self.names.configmap_object(),
            self.names.configmap.clone(),
            cm_tx,
        );
        let secrets = follow(
            Api::<Secret>::namespaced(self.client.clone(), ns),
            self.names.secret_object(),
            self.names.secret.clone(),
            secret_tx,
        );
        let judging = async {
            let source = format!(
                "the issuer from {} and {}",
                self.names.secret_object(),
                self.names.configmap_object()
            );
            let mut publisher = Publisher::new(self.metrics.clone(), source);
            let mut in_force = InForce::default();
            let mut tick = tokio::time::interval(self.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    Ok(()) = cm_rx.changed() => self.settle(&mut cm_rx, &mut secret_rx).await,
                    Ok(()) = secret_rx.changed() => self.settle(&mut cm_rx, &mut secret_rx).await,
                }
                let cm = cm_rx.borrow_and_update().clone();
                let secret = secret_rx.borrow_and_update().clone();
                if let (Some(cm), Some(secret)) = (cm, secret) {
                    self.pass(&tx, &mut publisher, &mut in_force, cm, secret)
                        .await;
                }
            }
        };
        tokio::join!(cms, secrets, judging);
    }

    /// Waits out the debounce while either object keeps changing.
    async fn settle(
        &self,
        cm: &mut watch::Receiver<Seen<ConfigMap>>,
        secret: &mut watch::Receiver<Seen<Secret>>,
    ) {
        let cap = tokio::time::Instant::now() + self.interval;
        while tokio::time::Instant::now() < cap {
            let more = tokio::time::timeout(self.debounce, async {
                tokio::select! {
                    r = cm.changed() => r.is_ok(),
                    r = secret.changed() => r.is_ok(),
                }
            })
            .await;
            if !matches!(more, Ok(true)) {
                return;
            }
        }
    }

    /// Judges the pair as it is now and publishes the outcome.
    async fn pass(
        &self,
        tx: &watch::Sender<IssuerStatus>,
        publisher: &mut Publisher,
        in_force: &mut InForce,
        cm: Option<ConfigMap>,
        secret: Option<Secret>,
    ) {
        let now = OffsetDateTime::now_utc();
        let (snap, result) = match snapshot(&self.names, cm.as_ref(), secret.as_ref()) {
            Ok((labels, snap)) => {
                let r = identity::issuer::judge(&labels, &snap, now).map_err(SourceError::from);
                (Some(snap), r)
            }
            Err(e) => (None, Err(e)),
        };
        let which = match &result {
            Err(e) => e
                .which()
                .unwrap_or_else(|| at_fault(in_force, &cm, &secret)),
            Ok(_) => Which::Secret,
        };
        let result = result.map_err(|e| Refusal {
            label: e.label(),
            reason: e.to_string(),
        });
        match publisher.publish(tx, snap, result, now) {
            Outcome::Unchanged => {}
            Outcome::InForce => {
                in_force.configmap = cm.as_ref().and_then(|o| o.resource_version());
                in_force.secret = secret.as_ref().and_then(|o| o.resource_version());
            }
            Outcome::Refused(refusal) => {
                let (regarding, related) = match which {
                    Which::Secret => (secret.as_ref().map(reference), cm.as_ref().map(reference)),
                    Which::ConfigMap => {
                        (cm.as_ref().map(reference), secret.as_ref().map(reference))
                    }
                };
                if let Some(regarding) = regarding {
                    self.record(regarding, related, &refusal).await;
                }
            }
        }
    }

    /// Records a refusal as a Warning Event on the object at fault.
    async fn record(
        &self,
        regarding: ObjectReference,
        related: Option<ObjectReference>,
        refusal: &Refusal,
    ) {
        let note = format!(
            "{} ({}); the previous issuer, if any, keeps serving",
            refusal.reason, refusal.label
        );
        let w = Warning {
            reason: "IssuerRefused",
            action: "JudgeIssuer",
            note: &note,
        };
        events::warn(&self.client, regarding, related, &self.names.namespace, w).await;
    }
}

/// A pair that does not chain is about whichever object changed since the
/// last pair in force: the ConfigMap when only it changed, else the Secret.
fn at_fault(in_force: &InForce, cm: &Option<ConfigMap>, secret: &Option<Secret>) -> Which {
    let cm_rv = cm.as_ref().and_then(|o| o.resource_version());
    let secret_rv = secret.as_ref().and_then(|o| o.resource_version());
    if in_force.secret.is_some() && secret_rv == in_force.secret && cm_rv != in_force.configmap {
        Which::ConfigMap
    } else {
        Which::Secret
    }
}

/// Follows one object by name; publishes what is known of it on `tx`.
pub(super) async fn follow<K>(api: Api<K>, object: String, name: String, tx: watch::Sender<Seen<K>>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, cfg).default_backoff().boxed();
    let mut listing: Option<K> = None;
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Init) => listing = None,
            Ok(watcher::Event::InitApply(o)) => listing = Some(o),
            Ok(watcher::Event::InitDone) => {
                tx.send_replace(Some(listing.take()));
            }
            Ok(watcher::Event::Apply(o)) => {
                tx.send_replace(Some(Some(o)));
            }
            Ok(watcher::Event::Delete(_)) => {
                tracing::warn!(%object, "deleted; what is in force keeps serving");
                tx.send_replace(Some(None));
            }
            Err(e) => tracing::warn!(
                %object,
                error = %e,
                "cannot watch; retrying with backoff, the last state seen is kept"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;

    use super::*;

    fn cm(rv: &str) -> Option<ConfigMap> {
        Some(ConfigMap {
            metadata: ObjectMeta {
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    fn secret(rv: &str) -> Option<Secret> {
        Some(Secret {
            metadata: ObjectMeta {
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    /// A pair that does not chain is the ConfigMap's fault only when the
    /// ConfigMap alone changed since the pair in force.
    #[test]
    fn a_pair_that_does_not_chain_is_about_what_changed() {
        let in_force = InForce {
            configmap: Some("1".into()),
            secret: Some("2".into()),
        };
        let at = |c, s| at_fault(&in_force, &cm(c), &secret(s));
        assert_eq!(at("3", "2"), Which::ConfigMap);
        assert_eq!(at("1", "3"), Which::Secret);
        assert_eq!(at("3", "4"), Which::Secret);
        assert_eq!(
            at_fault(&InForce::default(), &cm("1"), &secret("2")),
            Which::Secret,
            "nothing in force yet: the issuer is what is judged"
        );
    }
}
