//! Destination lookups: meshed (with identity), not meshed, or unknown.
//! Unknown always refuses; a cached answer survives a control-plane outage,
//! so an existing meshed peer never silently becomes "not meshed".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkerd2_proxy_api::destination::GetDestination;
use linkerd2_proxy_api::destination::destination_client::DestinationClient;
use pki::Identity;
use tokio::sync::watch;

use crate::control::ControlPlane;
use crate::endpoints::EndpointSet;
use crate::follow::Event;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Talk mTLS to `addr` (its proxy's inbound port when `proxy_port` is
    /// set), expecting `identity`.
    Meshed {
        addr: SocketAddr,
        identity: Identity,
        proxy_port: Option<u16>,
        /// The port is opaque: no protocol detection.
        opaque: bool,
    },
    NotMeshed {
        addr: SocketAddr,
    },
    Unknown(String),
}

/// A followed target: its answer, the task keeping it current, last use.
struct Slot {
    rx: watch::Receiver<Option<EndpointSet>>,
    task: tokio::task::AbortHandle,
    used: std::time::Instant,
}

/// Targets followed at once; the least recently used is dropped beyond this,
/// so a peer naming many ports or addresses cannot grow the proxy unbounded.
const MAX_TARGETS: usize = 4096;

pub struct Discovery {
    pub addr: String,
    pub control: ControlPlane,
    pub timeout: Duration,
    cache: Mutex<HashMap<String, Slot>>,
    /// Spreads new connections over a target's endpoints.
    next: AtomicUsize,
}

impl Discovery {
    pub fn new(addr: String, control: ControlPlane, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            addr,
            control,
            timeout,
            cache: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
        })
    }

    /// The answer for `target` (`ns/name:port` or `ip:port`), waiting at most
    /// the discovery timeout for a first answer.
    pub async fn resolve(self: &Arc<Self>, target: &str) -> Resolution {
        self.resolve_candidates(target, 1)
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| Resolution::Unknown("no answer".into()))
    }

    /// Up to `max` of `target`'s endpoints, the next in turn first (never
    /// empty: a refusal is one Unknown).
    pub async fn resolve_candidates(self: &Arc<Self>, target: &str, max: usize) -> Vec<Resolution> {
        let mut rx = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get_mut(target) {
                Some(slot) => {
                    slot.used = std::time::Instant::now();
                    slot.rx.clone()
                }
                None => {
                    if cache.len() >= MAX_TARGETS
                        && let Some(oldest) = cache
                            .iter()
                            .min_by_key(|(_, s)| s.used)
                            .map(|(k, _)| k.clone())
                        && let Some(old) = cache.remove(&oldest)
                    {
                        old.task.abort();
                    }
                    let (tx, rx) = watch::channel(None);
                    let task =
                        tokio::spawn(self.clone().follow(target.to_string(), tx)).abort_handle();
                    cache.insert(
                        target.to_string(),
                        Slot {
                            rx: rx.clone(),
                            task,
                            used: std::time::Instant::now(),
                        },
                    );
                    rx
                }
            }
        };
        let waited = tokio::time::timeout(self.timeout, rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(r)) => match r.as_ref() {
                Some(set) => set.candidates(self.next.fetch_add(1, Ordering::Relaxed), max),
                None => vec![Resolution::Unknown("no answer".into())],
            },
            _ => vec![Resolution::Unknown(format!(
                "no answer from the destination service at {} within {}ms",
                self.addr,
                self.timeout.as_millis()
            ))],
        }
    }

    /// Keeps one target's answer current for as long as the proxy runs.
    async fn follow(self: Arc<Self>, target: String, tx: watch::Sender<Option<EndpointSet>>) {
        let path = target.clone();
        let open = move |channel| {
            let path = path.clone();
            async move {
                DestinationClient::new(channel)
                    .get(GetDestination {
                        scheme: "k8s.io".into(),
                        path,
                        context_token: String::new(),
                    })
                    .await
                    .map(tonic::Response::into_inner)
            }
        };
        // A new stream restates the set; until its first update the last
        // one stays in force, so a reconnect never refuses in between.
        let on = |event| {
            tx.send_if_modified(|cur| {
                let mut next = cur.clone().unwrap_or_default();
                let first = cur.is_none();
                match event {
                    // Nothing known yet stays unknown-yet (None), so no
                    // caller sees an empty set before the first answer.
                    Event::Opened => {
                        if let Some(set) = cur.as_mut() {
                            set.opened();
                        }
                        return false;
                    }
                    Event::Message(u) => next.apply(u),
                    // A definitive answer; asked again later, backing off.
                    Event::Refused(why) => next.refuse(why),
                }
                let changed = first || cur.as_ref() != Some(&next);
                *cur = Some(next);
                changed
            });
        };
        let what = format!("destination {target}");
        crate::follow::follow(self.control.clone(), self.addr.clone(), what, open, on).await;
    }
}
