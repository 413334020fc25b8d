//! `io.linkerd.proxy.destination.Destination`: Get and GetProfile for
//! `ip:port` and (weft's extension) `ns/name:port`, streaming updates as the
//! resources change. Served with or without a client certificate (see
//! [`crate::peer::caller`]); every refusal counted and logged.

use std::collections::HashMap;
use std::sync::Arc;

use linkerd2_proxy_api::destination::destination_server::Destination;
use linkerd2_proxy_api::destination::{
    AddrSet, DestinationProfile, GetDestination, NoEndpoints, ProtocolHint, TlsIdentity, Update,
    WeightedAddr, WeightedAddrSet, protocol_hint, tls_identity, update,
};
use std::net::SocketAddr;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use identity::IssuerStatus;

use crate::changes::{self, Changes};
use crate::refusals::ApiRefusals;
use crate::workloads::{Answer, Index, Refusal, parse_target};

#[derive(Clone)]
pub struct DestinationService {
    pub index: watch::Receiver<Arc<Index>>,
    pub issuer: watch::Receiver<IssuerStatus>,
    pub refusals: Arc<ApiRefusals>,
}

pub fn status_of(r: Refusal) -> Status {
    match r {
        Refusal::NotLoaded => Status::unavailable(r.to_string()),
        Refusal::NoWorkload(..)
        | Refusal::UndeclaredPort { .. }
        | Refusal::NoService(..)
        | Refusal::NoHost { .. } => Status::not_found(r.to_string()),
        Refusal::Conflict { .. }
        | Refusal::NoAddress(..)
        | Refusal::Broken { .. }
        | Refusal::Degraded { .. }
        | Refusal::Unknown { .. } => Status::failed_precondition(r.to_string()),
    }
}

pub fn weighted(a: &Answer) -> WeightedAddr {
    match a {
        Answer::NotMeshed { addr } => WeightedAddr {
            addr: Some((*addr).into()),
            weight: 10_000,
            ..Default::default()
        },
        Answer::Meshed {
            addr,
            identity,
            proxy_port,
            opaque,
        } => WeightedAddr {
            addr: Some((*addr).into()),
            weight: 10_000,
            metric_labels: HashMap::new(),
            tls_identity: Some(TlsIdentity {
                strategy: Some(tls_identity::Strategy::DnsLikeIdentity(
                    tls_identity::DnsLikeIdentity {
                        name: identity.to_string(),
                    },
                )),
                server_name: Some(tls_identity::DnsLikeIdentity {
                    name: identity.to_string(),
                }),
            }),
            protocol_hint: Some(ProtocolHint {
                protocol: opaque
                    .then_some(protocol_hint::Protocol::Opaque(protocol_hint::Opaque {})),
                opaque_transport: Some(protocol_hint::OpaqueTransport {
                    inbound_port: u32::from(*proxy_port),
                }),
            }),
            ..Default::default()
        },
    }
}

/// The updates that take a proxy from endpoint set `last` to `next`:
/// removals of what left, one Add of what is new or changed; an empty set
/// is said as NoEndpoints, so the proxy refuses rather than guesses.
pub fn updates_between(last: Option<&[Answer]>, next: &[Answer]) -> Vec<Update> {
    let last = last.unwrap_or_default();
    if next.is_empty() {
        return vec![Update {
            update: Some(update::Update::NoEndpoints(NoEndpoints { exists: true })),
        }];
    }
    let gone: Vec<SocketAddr> = last
        .iter()
        .map(Answer::addr)
        .filter(|a| !next.iter().any(|n| n.addr() == *a))
        .collect();
    let added: Vec<WeightedAddr> = next
        .iter()
        .filter(|n| !last.contains(n))
        .map(weighted)
        .collect();
    let mut out = Vec::new();
    if !gone.is_empty() {
        out.push(Update {
            update: Some(update::Update::Remove(AddrSet {
                addrs: gone.into_iter().map(Into::into).collect(),
            })),
        });
    }
    if !added.is_empty() {
        out.push(Update {
            update: Some(update::Update::Add(WeightedAddrSet {
                addrs: added,
                metric_labels: HashMap::new(),
            })),
        });
    }
    out
}

/// A profile names the endpoint only when the target is one address.
fn profile_for(path: &str, set: &[Answer]) -> DestinationProfile {
    DestinationProfile {
        fully_qualified_name: path.to_string(),
        opaque_protocol: !set.is_empty()
            && set
                .iter()
                .all(|a| matches!(a, Answer::Meshed { opaque: true, .. })),
        endpoint: match set {
            [one] => Some(weighted(one)),
            _ => None,
        },
        ..Default::default()
    }
}

/// Streams what `make` says of the target's endpoint set now and after
/// every change (`make` sees the previous set too, for deltas); a refusal
/// ends the stream with its status.
fn follow<T: Send + 'static>(
    mut index: watch::Receiver<Arc<Index>>,
    path: String,
    make: impl Fn(Option<&[Answer]>, &[Answer]) -> Vec<T> + Send + 'static,
    ended: impl Fn(Status) -> Status + Send + 'static,
) -> Result<Changes<T>, Status> {
    let target = parse_target(&path).map_err(Status::invalid_argument)?;
    let first = index
        .borrow_and_update()
        .resolve_set(&target)
        .map_err(status_of)?;
    let messages = make(None, &first);
    let mut last = first;
    Ok(changes::follow(index, messages, move |index| {
        match index.resolve_set(&target) {
            Ok(set) if set == last => Ok(Vec::new()),
            Ok(set) => {
                let ms = make(Some(&last), &set);
                last = set;
                Ok(ms)
            }
            Err(r) => Err(ended(status_of(r))),
        }
    }))
}

impl DestinationService {
    /// Counts and logs a refusal of `api` to `peer`.
    fn refuser(
        &self,
        api: &'static str,
        peer: Option<SocketAddr>,
    ) -> impl Fn(Status) -> Status + Send + 'static {
        let refusals = self.refusals.clone();
        move |s| refusals.refused(api, peer, s)
    }
}

#[tonic::async_trait]
impl Destination for DestinationService {
    type GetStream = Changes<Update>;
    type GetProfileStream = Changes<DestinationProfile>;

    async fn get(&self, req: Request<GetDestination>) -> Result<Response<Self::GetStream>, Status> {
        let peer = req.remote_addr();
        let caller = crate::peer::caller(&req, &self.issuer)
            .map_err(self.refuser("destination.Get", peer))?;
        let path = req.into_inner().path;
        tracing::debug!(caller = ?caller.map(|c| c.to_string()), %path, "destination get");
        let ended = self.refuser("destination.Get", peer);
        follow(self.index.clone(), path, updates_between, ended)
            .map(Response::new)
            .map_err(self.refuser("destination.Get", peer))
    }

    async fn get_profile(
        &self,
        req: Request<GetDestination>,
    ) -> Result<Response<Self::GetProfileStream>, Status> {
        let peer = req.remote_addr();
        crate::peer::caller(&req, &self.issuer)
            .map_err(self.refuser("destination.GetProfile", peer))?;
        let path = req.into_inner().path;
        let p = path.clone();
        let ended = self.refuser("destination.GetProfile", peer);
        follow(
            self.index.clone(),
            path,
            move |_, set| vec![profile_for(&p, set)],
            ended,
        )
        .map(Response::new)
        .map_err(self.refuser("destination.GetProfile", peer))
    }
}
