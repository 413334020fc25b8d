//! `io.linkerd.proxy.destination.Destination`: Get and GetProfile for
//! `ip:port` and (weft's extension) `ns/name:port`, streaming updates as the
//! resources change. mTLS required.

use std::collections::HashMap;
use std::sync::Arc;

use linkerd2_proxy_api::destination::destination_server::Destination;
use linkerd2_proxy_api::destination::{
    DestinationProfile, GetDestination, ProtocolHint, TlsIdentity, Update, WeightedAddr,
    WeightedAddrSet, protocol_hint, tls_identity, update,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use identity::IssuerStatus;

use crate::workloads::{Answer, Index, Refusal, parse_target};

pub struct DestinationService {
    pub index: watch::Receiver<Arc<Index>>,
    pub issuer: watch::Receiver<IssuerStatus>,
}

fn status_of(r: Refusal) -> Status {
    match r {
        Refusal::NotLoaded => Status::unavailable(r.to_string()),
        Refusal::NoWorkload(..) | Refusal::UndeclaredPort { .. } => {
            Status::not_found(r.to_string())
        }
        Refusal::Conflict { .. }
        | Refusal::NoAddress(..)
        | Refusal::Broken { .. }
        | Refusal::Degraded { .. }
        | Refusal::Unknown { .. } => Status::failed_precondition(r.to_string()),
    }
}

fn weighted(a: &Answer) -> WeightedAddr {
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

fn update_for(a: &Answer) -> Update {
    Update {
        update: Some(update::Update::Add(WeightedAddrSet {
            addrs: vec![weighted(a)],
            metric_labels: HashMap::new(),
        })),
    }
}

fn profile_for(path: &str, a: &Answer) -> DestinationProfile {
    DestinationProfile {
        fully_qualified_name: path.to_string(),
        opaque_protocol: matches!(a, Answer::Meshed { opaque: true, .. }),
        endpoint: Some(weighted(a)),
        ..Default::default()
    }
}

/// Streams `make(answer)` now and after every change of the answer; a
/// refusal ends the stream with its status.
fn follow<T: Send + 'static>(
    mut index: watch::Receiver<Arc<Index>>,
    path: String,
    make: impl Fn(&Answer) -> T + Send + 'static,
) -> Result<ReceiverStream<Result<T, Status>>, Status> {
    let target = parse_target(&path).map_err(Status::invalid_argument)?;
    let first = index
        .borrow_and_update()
        .resolve(&target)
        .map_err(status_of)?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut last = first;
        if tx.send(Ok(make(&last))).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                changed = index.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
            let next = index.borrow_and_update().resolve(&target);
            match next {
                Ok(a) if a == last => {}
                Ok(a) => {
                    last = a;
                    if tx.send(Ok(make(&last))).await.is_err() {
                        return;
                    }
                }
                Err(r) => {
                    let _ = tx.send(Err(status_of(r))).await;
                    return;
                }
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl Destination for DestinationService {
    type GetStream = ReceiverStream<Result<Update, Status>>;
    type GetProfileStream = ReceiverStream<Result<DestinationProfile, Status>>;

    async fn get(&self, req: Request<GetDestination>) -> Result<Response<Self::GetStream>, Status> {
        let caller = crate::peer::authenticated(&req, &self.issuer)?;
        let path = req.into_inner().path;
        tracing::debug!(%caller, %path, "destination get");
        follow(self.index.clone(), path, update_for).map(Response::new)
    }

    async fn get_profile(
        &self,
        req: Request<GetDestination>,
    ) -> Result<Response<Self::GetProfileStream>, Status> {
        crate::peer::authenticated(&req, &self.issuer)?;
        let path = req.into_inner().path;
        let p = path.clone();
        follow(self.index.clone(), path, move |a| profile_for(&p, a)).map(Response::new)
    }
}
