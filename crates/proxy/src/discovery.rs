//! Destination lookups: meshed (with identity), not meshed, or unknown.
//! Unknown always refuses; a cached answer survives a control-plane outage,
//! so an existing meshed peer never silently becomes "not meshed".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkerd2_proxy_api::destination::destination_client::DestinationClient;
use linkerd2_proxy_api::destination::{GetDestination, Update, tls_identity, update};
use pki::Identity;
use tokio::sync::watch;

use crate::control::ControlPlane;
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

/// One update from the destination service, judged. Anything unexpected is
/// unknown, never "not meshed".
pub fn decode(u: Update) -> Resolution {
    match u.update {
        Some(update::Update::Add(set)) => {
            let Some(first) = set.addrs.into_iter().next() else {
                return Resolution::Unknown("the destination has no endpoints".into());
            };
            let Some(addr) = first.addr.and_then(|a| SocketAddr::try_from(a).ok()) else {
                return Resolution::Unknown(
                    "the destination service sent an endpoint without an address".into(),
                );
            };
            let identity = match first.tls_identity.and_then(|t| t.strategy) {
                None => return Resolution::NotMeshed { addr },
                Some(tls_identity::Strategy::DnsLikeIdentity(d)) => d.name,
                Some(other) => {
                    return Resolution::Unknown(format!("unsupported identity kind {other:?}"));
                }
            };
            let Ok(identity) = identity.parse::<Identity>() else {
                return Resolution::Unknown(format!(
                    "the endpoint's identity {identity:?} is not a mesh identity"
                ));
            };
            let opaque = matches!(
                first.protocol_hint.as_ref().and_then(|h| h.protocol),
                Some(linkerd2_proxy_api::destination::protocol_hint::Protocol::Opaque(_))
            );
            let proxy_port = first
                .protocol_hint
                .and_then(|h| h.opaque_transport)
                .and_then(|o| u16::try_from(o.inbound_port).ok())
                .filter(|p| *p != 0);
            Resolution::Meshed {
                addr,
                identity,
                proxy_port,
                opaque,
            }
        }
        Some(update::Update::NoEndpoints(_)) => {
            Resolution::Unknown("the destination has no endpoints".into())
        }
        Some(update::Update::Remove(_)) => Resolution::Unknown("the endpoint was removed".into()),
        None => Resolution::Unknown("an empty update".into()),
    }
}

/// A followed target: its answer, the task keeping it current, last use.
struct Slot {
    rx: watch::Receiver<Option<Resolution>>,
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
}

impl Discovery {
    pub fn new(addr: String, control: ControlPlane, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            addr,
            control,
            timeout,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The answer for `target` (`ns/name:port` or `ip:port`), waiting at most
    /// the discovery timeout for a first answer.
    pub async fn resolve(self: &Arc<Self>, target: &str) -> Resolution {
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
            Ok(Ok(r)) => r
                .clone()
                .unwrap_or_else(|| Resolution::Unknown("no answer".into())),
            _ => Resolution::Unknown(format!(
                "no answer from the destination service at {} within {}ms",
                self.addr,
                self.timeout.as_millis()
            )),
        }
    }

    /// Keeps one target's answer current for as long as the proxy runs.
    async fn follow(self: Arc<Self>, target: String, tx: watch::Sender<Option<Resolution>>) {
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
        let on = |event| match event {
            Event::Message(u) => {
                let r = decode(u);
                tx.send_if_modified(|cur| {
                    let changed = cur.as_ref() != Some(&r);
                    *cur = Some(r);
                    changed
                });
            }
            // A definitive answer; asked again later, backing off.
            Event::Refused(why) => {
                tx.send_replace(Some(Resolution::Unknown(why)));
            }
        };
        let what = format!("destination {target}");
        crate::follow::follow(self.control.clone(), self.addr.clone(), what, open, on).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linkerd2_proxy_api::destination::*;

    fn add(identity: Option<&str>, proxy_port: u32) -> Update {
        Update {
            update: Some(update::Update::Add(WeightedAddrSet {
                addrs: vec![WeightedAddr {
                    addr: Some("127.0.0.1:8080".parse::<SocketAddr>().unwrap().into()),
                    weight: 1,
                    tls_identity: identity.map(|n| linkerd2_proxy_api::destination::TlsIdentity {
                        strategy: Some(tls_identity::Strategy::DnsLikeIdentity(
                            tls_identity::DnsLikeIdentity { name: n.into() },
                        )),
                        server_name: None,
                    }),
                    protocol_hint: Some(ProtocolHint {
                        protocol: None,
                        opaque_transport: Some(protocol_hint::OpaqueTransport {
                            inbound_port: proxy_port,
                        }),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            })),
        }
    }

    #[test]
    fn decodes_the_three_answers() {
        let id = "web.demo.serviceaccount.identity.weft.cluster.local";
        assert!(matches!(
            decode(add(Some(id), 4143)),
            Resolution::Meshed {
                proxy_port: Some(4143),
                ..
            }
        ));
        assert!(matches!(decode(add(None, 0)), Resolution::NotMeshed { .. }));
        assert!(matches!(
            decode(add(Some("not an identity"), 4143)),
            Resolution::Unknown(_)
        ));
        assert!(matches!(
            decode(Update { update: None }),
            Resolution::Unknown(_)
        ));
        let none = Update {
            update: Some(update::Update::NoEndpoints(NoEndpoints { exists: false })),
        };
        assert!(matches!(decode(none), Resolution::Unknown(_)));
    }
}
