//! A target's endpoint set, kept from the destination service's Add,
//! Remove and NoEndpoints updates: one endpoint leaving never affects the
//! others, and only an empty set (or a refusal) refuses connections.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use linkerd2_proxy_api::destination::{Update, WeightedAddr, tls_identity, update};
use pki::Identity;

use crate::discovery::Resolution;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointSet {
    /// Each endpoint: `Meshed` or `NotMeshed`, never `Unknown`.
    endpoints: BTreeMap<SocketAddr, Resolution>,
    /// Why the target cannot be used (a refusal, no endpoints).
    refused: Option<String>,
    /// A new stream began: its first update restates the whole set.
    restating: bool,
}

impl EndpointSet {
    /// A new stream was opened.
    pub fn opened(&mut self) {
        self.restating = true;
    }

    /// The destination service refused the target.
    pub fn refuse(&mut self, why: String) {
        self.endpoints.clear();
        self.refused = Some(why);
        self.restating = false;
    }

    pub fn apply(&mut self, u: Update) {
        let Some(u) = u.update else {
            tracing::debug!("an empty destination update; keeping the endpoints");
            return;
        };
        if std::mem::take(&mut self.restating) {
            self.endpoints.clear();
        }
        match u {
            update::Update::Add(set) => {
                self.refused = None;
                for wa in set.addrs {
                    match decode(wa) {
                        Ok((addr, r)) => {
                            self.endpoints.insert(addr, r);
                        }
                        // Never kept as it was: an endpoint whose new answer
                        // cannot be read is not used at all.
                        Err((addr, why)) => {
                            tracing::warn!(?addr, "endpoint left out: {why}");
                            if let Some(a) = addr {
                                self.endpoints.remove(&a);
                            }
                        }
                    }
                }
            }
            update::Update::Remove(set) => {
                for a in set
                    .addrs
                    .into_iter()
                    .filter_map(|a| SocketAddr::try_from(a).ok())
                {
                    self.endpoints.remove(&a);
                }
            }
            update::Update::NoEndpoints(_) => {
                self.endpoints.clear();
                self.refused = Some("the destination has no ready endpoints".into());
            }
        }
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The `n`th endpoint (wrapping), for spreading connections; Unknown
    /// when there is none.
    pub fn pick(&self, n: usize) -> Resolution {
        self.candidates(n, 1)
            .into_iter()
            .next()
            .unwrap_or_else(|| Resolution::Unknown("no endpoint".into()))
    }

    /// Up to `max` distinct endpoints starting at the `n`th (wrapping): the
    /// first to connect to, then where to go if it cannot be reached. Only
    /// an empty set gives one Unknown.
    pub fn candidates(&self, n: usize, max: usize) -> Vec<Resolution> {
        if self.endpoints.is_empty() {
            return vec![Resolution::Unknown(
                self.refused
                    .clone()
                    .unwrap_or_else(|| "the destination has no endpoints".into()),
            )];
        }
        let len = self.endpoints.len();
        self.endpoints
            .values()
            .cycle()
            .skip(n % len)
            .take(max.clamp(1, len))
            .cloned()
            .collect()
    }
}

type Decoded = Result<(SocketAddr, Resolution), (Option<SocketAddr>, String)>;

/// One endpoint of an Add, judged. Anything unexpected refuses it; it is
/// never taken as "not meshed".
pub fn decode(wa: WeightedAddr) -> Decoded {
    let Some(addr) = wa.addr.and_then(|a| SocketAddr::try_from(a).ok()) else {
        return Err((None, "an endpoint without an address".into()));
    };
    let identity = match wa.tls_identity.and_then(|t| t.strategy) {
        None => return Ok((addr, Resolution::NotMeshed { addr })),
        Some(tls_identity::Strategy::DnsLikeIdentity(d)) => d.name,
        Some(other) => {
            return Err((Some(addr), format!("unsupported identity kind {other:?}")));
        }
    };
    let Ok(identity) = identity.parse::<Identity>() else {
        return Err((
            Some(addr),
            format!("the endpoint's identity {identity:?} is not a mesh identity"),
        ));
    };
    let opaque = matches!(
        wa.protocol_hint.as_ref().and_then(|h| h.protocol),
        Some(linkerd2_proxy_api::destination::protocol_hint::Protocol::Opaque(_))
    );
    let proxy_port = wa
        .protocol_hint
        .and_then(|h| h.opaque_transport)
        .and_then(|o| u16::try_from(o.inbound_port).ok())
        .filter(|p| *p != 0);
    Ok((
        addr,
        Resolution::Meshed {
            addr,
            identity,
            proxy_port,
            opaque,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use linkerd2_proxy_api::destination::*;

    const ID: &str = "web.demo.serviceaccount.identity.weft.cluster.local";

    fn endpoint(addr: &str, identity: Option<&str>) -> WeightedAddr {
        WeightedAddr {
            addr: Some(addr.parse::<SocketAddr>().unwrap().into()),
            weight: 1,
            tls_identity: identity.map(|n| TlsIdentity {
                strategy: Some(tls_identity::Strategy::DnsLikeIdentity(
                    tls_identity::DnsLikeIdentity { name: n.into() },
                )),
                server_name: None,
            }),
            protocol_hint: Some(ProtocolHint {
                protocol: None,
                opaque_transport: Some(protocol_hint::OpaqueTransport { inbound_port: 4143 }),
            }),
            ..Default::default()
        }
    }

    fn add(addrs: Vec<WeightedAddr>) -> Update {
        Update {
            update: Some(update::Update::Add(WeightedAddrSet {
                addrs,
                ..Default::default()
            })),
        }
    }

    fn remove(addrs: &[&str]) -> Update {
        Update {
            update: Some(update::Update::Remove(AddrSet {
                addrs: addrs
                    .iter()
                    .map(|a| a.parse::<SocketAddr>().unwrap().into())
                    .collect(),
            })),
        }
    }

    fn addrs(set: &EndpointSet) -> Vec<String> {
        (0..set.len())
            .map(|n| match set.pick(n) {
                Resolution::Meshed { addr, .. } | Resolution::NotMeshed { addr } => {
                    addr.to_string()
                }
                Resolution::Unknown(why) => why,
            })
            .collect()
    }

    #[test]
    fn decodes_the_answers_and_refuses_the_unreadable() {
        assert!(matches!(
            decode(endpoint("10.0.0.1:80", Some(ID))),
            Ok((
                _,
                Resolution::Meshed {
                    proxy_port: Some(4143),
                    ..
                }
            ))
        ));
        assert!(matches!(
            decode(endpoint("10.0.0.1:80", None)),
            Ok((_, Resolution::NotMeshed { .. }))
        ));
        assert!(decode(endpoint("10.0.0.1:80", Some("not an identity"))).is_err());
        assert!(decode(WeightedAddr::default()).is_err());
    }

    #[test]
    fn adds_and_removes_touch_only_their_endpoints() {
        let mut set = EndpointSet::default();
        assert!(matches!(set.pick(0), Resolution::Unknown(_)));
        set.apply(add(vec![
            endpoint("10.0.0.1:80", Some(ID)),
            endpoint("10.0.0.2:80", Some(ID)),
        ]));
        set.apply(add(vec![endpoint("10.0.0.3:80", Some(ID))]));
        assert_eq!(addrs(&set), ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        set.apply(remove(&["10.0.0.2:80"]));
        assert_eq!(addrs(&set), ["10.0.0.1:80", "10.0.0.3:80"]);
        // Spread: successive picks visit every endpoint.
        assert_ne!(set.pick(0), set.pick(1));
        // An endpoint whose new answer is unreadable is dropped, not kept.
        set.apply(add(vec![endpoint("10.0.0.3:80", Some("bad identity"))]));
        assert_eq!(addrs(&set), ["10.0.0.1:80"]);
        // An empty update changes nothing; NoEndpoints empties and refuses.
        set.apply(Update { update: None });
        assert_eq!(set.len(), 1);
        set.apply(Update {
            update: Some(update::Update::NoEndpoints(NoEndpoints { exists: true })),
        });
        assert!(
            matches!(set.pick(0), Resolution::Unknown(why) if why.contains("no ready endpoints"))
        );
    }

    #[test]
    fn candidates_start_at_the_turn_and_never_repeat() {
        let mut set = EndpointSet::default();
        let only = set.candidates(5, 3);
        assert!(matches!(only.as_slice(), [Resolution::Unknown(_)]));
        set.apply(add(vec![
            endpoint("10.0.0.1:80", Some(ID)),
            endpoint("10.0.0.2:80", Some(ID)),
            endpoint("10.0.0.3:80", None),
        ]));
        let at = |n, max| -> Vec<String> {
            set.candidates(n, max)
                .into_iter()
                .map(|r| match r {
                    Resolution::Meshed { addr, .. } | Resolution::NotMeshed { addr } => {
                        addr.to_string()
                    }
                    Resolution::Unknown(why) => why,
                })
                .collect()
        };
        assert_eq!(at(1, 3), ["10.0.0.2:80", "10.0.0.3:80", "10.0.0.1:80"]);
        assert_eq!(at(5, 2), ["10.0.0.3:80", "10.0.0.1:80"]);
        // Never more than the set holds, never zero.
        assert_eq!(at(0, 9).len(), 3);
        assert_eq!(at(0, 0), ["10.0.0.1:80"]);
    }

    #[test]
    fn a_new_stream_restates_the_set_and_a_refusal_empties_it() {
        let mut set = EndpointSet::default();
        set.apply(add(vec![
            endpoint("10.0.0.1:80", None),
            endpoint("10.0.0.2:80", None),
        ]));
        set.opened();
        // Until the new stream speaks, the old set stays in force.
        assert_eq!(set.len(), 2);
        set.apply(add(vec![endpoint("10.0.0.2:80", None)]));
        assert_eq!(addrs(&set), ["10.0.0.2:80"]);
        set.refuse("no such service".into());
        assert!(matches!(set.pick(0), Resolution::Unknown(why) if why == "no such service"));
    }
}
