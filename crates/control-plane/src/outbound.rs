//! `io.linkerd.proxy.outbound.OutboundPolicies`: Get and Watch, so an
//! unmodified linkerd2-proxy routes through weft's answers rather than
//! synthesizing them from GetProfile.
//!
//! - A meshed target (the `ip:port` of a workload, `ns/name:port`, a
//!   Service): one default route (opaque, or HTTP/1 and HTTP/2 behind
//!   detection) to one balancer backend whose endpoints come from
//!   `Destination.Get` on the same target, each with its TLS identity and
//!   opaque-transport port.
//! - An address weft judges not meshed: the same routes to a forward backend
//!   with no TLS identity.
//! - Anything weft cannot vouch for (unknown, conflicting, broken, not yet
//!   loaded): refused FAILED_PRECONDITION (UNAVAILABLE while loading).
//!   linkerd2-proxy reads NOT_FOUND and UNIMPLEMENTED as "no policy" and
//!   then forwards on its own, so they are never used here.
//!
//! Streams follow the workload index (a `watch`), sending each change.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use linkerd2_proxy_api::meta::{Metadata, Resource, metadata};
use linkerd2_proxy_api::outbound::outbound_policies_server::OutboundPolicies;
use linkerd2_proxy_api::outbound::{
    Backend, HttpRoute, OpaqueRoute, OutboundPolicy, ProxyProtocol, Queue, TrafficSpec, backend,
    http_route, opaque_route, proxy_protocol, traffic_spec,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use identity::IssuerStatus;

use crate::refusals::ApiRefusals;
use crate::workloads::{Answer, Index, Refusal, Target, parse_target};

/// How long a linkerd2-proxy waits to detect HTTP (Linkerd's default).
const DETECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct OutboundService {
    pub index: watch::Receiver<Arc<Index>>,
    pub issuer: watch::Receiver<IssuerStatus>,
    pub refusals: Arc<ApiRefusals>,
}

/// What the request names: the target and its path for Destination.Get.
pub fn parse_spec(spec: &TrafficSpec) -> Result<(Target, String), String> {
    let path = match &spec.target {
        Some(traffic_spec::Target::Addr(a)) => SocketAddr::try_from(*a)
            .ok()
            .filter(|a| a.port() != 0)
            .map(|a| a.to_string())
            .ok_or_else(|| {
                format!(
                    "target address {a:?} is not an IP address with a TCP port (1-65535); send the address the application connected to"
                )
            })?,
        Some(traffic_spec::Target::Authority(a)) => a.clone(),
        None => return Err("the request names no target; set addr (ip:port) or authority".into()),
    };
    let target = parse_target(&path)?;
    Ok((target, path))
}

/// The refusal as a status linkerd2-proxy treats as an error (never "no
/// policy"), so the connection fails rather than being forwarded.
pub fn status_of(r: Refusal) -> Status {
    match r {
        Refusal::NotLoaded => Status::unavailable(r.to_string()),
        r => Status::failed_precondition(format!(
            "{r}; weft cannot vouch for this target, so it gives no outbound policy for it"
        )),
    }
}

/// The policy for `path` (already resolved by the index): pure.
pub fn policy_for(index: &Index, target: &Target, path: &str) -> Result<OutboundPolicy, Refusal> {
    let set = index.resolve_set(target)?;
    let port = match target {
        Target::Addr(a) => a.port(),
        Target::Named { port, .. } | Target::Service { port, .. } => *port,
    };
    let opaque = !set.is_empty()
        && set
            .iter()
            .all(|a| matches!(a, Answer::Meshed { opaque: true, .. }));
    let backend = match (target, set.as_slice()) {
        (Target::Addr(_), [one @ Answer::NotMeshed { .. }]) => Backend {
            metadata: default_meta("forward"),
            queue: Some(queue()),
            kind: Some(backend::Kind::Forward(crate::destination::weighted(one))),
        },
        _ => Backend {
            metadata: Some(resource_meta(target, port)),
            queue: Some(queue()),
            kind: Some(backend::Kind::Balancer(balancer(path))),
        },
    };
    Ok(OutboundPolicy {
        protocol: Some(protocol(backend, opaque)),
        metadata: Some(resource_meta(target, port)),
    })
}

fn default_meta(name: &str) -> Option<Metadata> {
    Some(Metadata {
        kind: Some(metadata::Kind::Default(name.into())),
    })
}

/// The resource the policy is for: the workload, Service or address.
fn resource_meta(target: &Target, port: u16) -> Metadata {
    let (group, kind, namespace, name) = match target {
        Target::Named {
            namespace, name, ..
        } => ("workload.linkerd.io", "ExternalWorkload", namespace, name),
        Target::Service {
            namespace, name, ..
        } => ("core", "Service", namespace, name),
        Target::Addr(a) => {
            return Metadata {
                kind: Some(metadata::Kind::Default(a.to_string())),
            };
        }
    };
    Metadata {
        kind: Some(metadata::Kind::Resource(Resource {
            group: group.into(),
            kind: kind.into(),
            name: name.clone(),
            namespace: namespace.clone(),
            section: String::new(),
            port: u32::from(port),
        })),
    }
}

fn duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

fn queue() -> Queue {
    Queue {
        capacity: 100,
        failfast_timeout: duration(Duration::from_secs(3)),
    }
}

/// Endpoints from Destination.Get on the same target, peak-EWMA balanced.
fn balancer(path: &str) -> backend::BalanceP2c {
    use backend::{balance_p2c, endpoint_discovery};
    backend::BalanceP2c {
        discovery: Some(backend::EndpointDiscovery {
            kind: Some(endpoint_discovery::Kind::Dst(
                endpoint_discovery::DestinationGet { path: path.into() },
            )),
        }),
        load: Some(balance_p2c::Load::PeakEwma(balance_p2c::PeakEwma {
            default_rtt: duration(Duration::from_millis(30)),
            decay: duration(Duration::from_secs(10)),
        })),
    }
}

/// The default routes to `backend`: opaque only, or HTTP detected.
fn protocol(backend: Backend, opaque: bool) -> ProxyProtocol {
    let opaque_routes = proxy_protocol::Opaque {
        routes: vec![OpaqueRoute {
            metadata: default_meta("opaque"),
            rules: vec![opaque_route::Rule {
                backends: Some(opaque_route::Distribution {
                    kind: Some(opaque_route::distribution::Kind::FirstAvailable(
                        opaque_route::distribution::FirstAvailable {
                            backends: vec![opaque_route::RouteBackend {
                                backend: Some(backend.clone()),
                                filters: vec![],
                            }],
                        },
                    )),
                }),
                filters: vec![],
            }],
        }],
    };
    if opaque {
        return ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Opaque(opaque_routes)),
        };
    }
    let http = vec![http_default_route(backend)];
    ProxyProtocol {
        kind: Some(proxy_protocol::Kind::Detect(proxy_protocol::Detect {
            timeout: duration(DETECT_TIMEOUT),
            opaque: Some(opaque_routes),
            http1: Some(proxy_protocol::Http1 {
                routes: http.clone(),
                failure_accrual: None,
            }),
            http2: Some(proxy_protocol::Http2 {
                routes: http,
                failure_accrual: None,
            }),
        })),
    }
}

/// Every request (path prefix `/`) to `backend`.
fn http_default_route(backend: Backend) -> HttpRoute {
    use linkerd2_proxy_api::http_route::{HttpRouteMatch, PathMatch, path_match};
    #[allow(deprecated)]
    let rule = http_route::Rule {
        matches: vec![HttpRouteMatch {
            path: Some(PathMatch {
                kind: Some(path_match::Kind::Prefix("/".into())),
            }),
            ..Default::default()
        }],
        filters: vec![],
        backends: Some(http_route::Distribution {
            kind: Some(http_route::distribution::Kind::FirstAvailable(
                http_route::distribution::FirstAvailable {
                    backends: vec![http_route::RouteBackend {
                        backend: Some(backend),
                        filters: vec![],
                        request_timeout: None,
                    }],
                },
            )),
        }),
        request_timeout: None,
        timeouts: None,
        retry: None,
        allow_l5d_request_headers: false,
    };
    HttpRoute {
        metadata: default_meta("http"),
        hosts: vec![],
        rules: vec![rule],
    }
}

impl OutboundService {
    /// The caller checked, the spec parsed, the policy resolved from the
    /// index `index` holds now (marked seen, so a Watch misses no change).
    fn first(
        &self,
        req: &Request<TrafficSpec>,
        index: &mut watch::Receiver<Arc<Index>>,
    ) -> Result<(Target, String, OutboundPolicy), Status> {
        crate::peer::caller(req, &self.issuer)?;
        let (target, path) = parse_spec(req.get_ref()).map_err(Status::invalid_argument)?;
        let policy = policy_for(&index.borrow_and_update(), &target, &path).map_err(status_of)?;
        Ok((target, path, policy))
    }
}

#[tonic::async_trait]
impl OutboundPolicies for OutboundService {
    async fn get(&self, req: Request<TrafficSpec>) -> Result<Response<OutboundPolicy>, Status> {
        let peer = req.remote_addr();
        self.first(&req, &mut self.index.clone())
            .map(|(_, _, policy)| Response::new(policy))
            .map_err(|s| self.refusals.refused("outbound.Get", peer, s))
    }

    type WatchStream = crate::changes::Changes<OutboundPolicy>;

    async fn watch(
        &self,
        req: Request<TrafficSpec>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let peer = req.remote_addr();
        let refusals = self.refusals.clone();
        let mut index = self.index.clone();
        let (target, path, first) = self
            .first(&req, &mut index)
            .map_err(|s| refusals.refused("outbound.Watch", peer, s))?;
        let stream = crate::changes::changes(index, first, move |index| {
            policy_for(index, &target, &path)
                .map_err(|r| refusals.refused("outbound.Watch", peer, status_of(r)))
        });
        Ok(Response::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::Workload;

    fn index() -> Index {
        Index {
            loaded: true,
            workloads: vec![Workload {
                namespace: "demo".into(),
                name: "backend".into(),
                identity: "backend.demo.serviceaccount.identity.weft.cluster.local"
                    .parse()
                    .unwrap(),
                ips: vec!["10.0.0.2".parse().unwrap()],
                ports: [8080, 5432].into_iter().collect(),
                skip_inbound: Default::default(),
                opaque: [5432].into_iter().collect(),
                proxy_port: 4143,
            }],
            ..Default::default()
        }
    }

    fn resolve(index: &Index, path: &str) -> Result<OutboundPolicy, Refusal> {
        let target = parse_target(path).unwrap();
        policy_for(index, &target, path)
    }

    fn kinds(p: &OutboundPolicy) -> (bool, backend::Kind) {
        let kind = p.protocol.as_ref().unwrap().kind.clone().unwrap();
        let (opaque, routes) = match kind {
            proxy_protocol::Kind::Opaque(o) => (true, o),
            proxy_protocol::Kind::Detect(d) => (false, d.opaque.unwrap()),
            other => panic!("{other:?}"),
        };
        let Some(opaque_route::distribution::Kind::FirstAvailable(f)) =
            routes.routes[0].rules[0].backends.clone().unwrap().kind
        else {
            panic!("no first-available distribution")
        };
        let backend = f.backends[0].backend.clone().unwrap();
        assert!(backend.metadata.is_some() && backend.queue.is_some());
        (opaque, backend.kind.unwrap())
    }

    #[test]
    fn meshed_unmeshed_opaque_and_unknown() {
        let i = index();
        let (opaque, b) = kinds(&resolve(&i, "10.0.0.2:8080").unwrap());
        assert!(!opaque);
        assert!(matches!(b, backend::Kind::Balancer(_)), "{b:?}");
        let (opaque, _) = kinds(&resolve(&i, "10.0.0.2:5432").unwrap());
        assert!(opaque);
        let (_, b) = kinds(&resolve(&i, "demo/backend:8080").unwrap());
        assert!(matches!(b, backend::Kind::Balancer(_)), "{b:?}");
        let (_, b) = kinds(&resolve(&i, "192.0.2.1:80").unwrap());
        assert!(
            matches!(&b, backend::Kind::Forward(a) if a.tls_identity.is_none()),
            "{b:?}"
        );
        // Unknown, or not loaded: never NotFound or Unimplemented.
        for (idx, path) in [
            (index(), "demo/nope:80"),
            (Index::default(), "10.0.0.2:8080"),
        ] {
            let s = status_of(resolve(&idx, path).unwrap_err());
            assert!(
                !matches!(s.code(), tonic::Code::NotFound | tonic::Code::Unimplemented),
                "{s:?}"
            );
        }
    }

    #[test]
    fn malformed_specs_are_refused() {
        let spec = |t| TrafficSpec {
            source_workload: String::new(),
            target: t,
        };
        assert!(parse_spec(&spec(None)).is_err());
        let zero = linkerd2_proxy_api::net::TcpAddress { ip: None, port: 0 };
        assert!(parse_spec(&spec(Some(traffic_spec::Target::Addr(zero)))).is_err());
        let bad = traffic_spec::Target::Authority("nonsense".into());
        assert!(parse_spec(&spec(Some(bad))).is_err());
        let ok = traffic_spec::Target::Authority("demo/backend:8080".into());
        assert!(parse_spec(&spec(Some(ok))).is_ok());
    }
}
