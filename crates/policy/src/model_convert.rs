//! `inbound::Server` → [`Server`]: done once, where the message arrives.

use linkerd2_proxy_api::http_route::{self as api_route, header_match, path_match};
use linkerd2_proxy_api::http_types::http_method;
use linkerd2_proxy_api::inbound::{self as api, authn, proxy_protocol};
use linkerd2_proxy_api::meta::{Metadata, metadata};

use super::*;

/// Why a policy message was refused on receipt. Each names the object and
/// what was expected; the fix is in the control plane that sent it.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("server {server}: no proxyProtocol; expected detect, opaque, tls, HTTP/1 or HTTP/2")]
    NoProtocol { server: Named },
    #[error("server {server}: gRPC route policy is not supported; send HTTP/2 routes instead")]
    GrpcProtocol { server: Named },
    #[error("{authz}: a network without an address; expected an IP network")]
    NoNetwork { authz: Named },
    #[error("{authz}: network {what} is not an IP network")]
    BadNetwork {
        authz: Named,
        what: &'static str,
        #[source]
        source: linkerd2_proxy_api::net::InvalidIpNetwork,
    },
    #[error("{authz}: no authentication; expected unauthenticated or mesh TLS")]
    NoAuthentication { authz: Named },
    #[error("{authz}: mesh TLS names no clients; expected identities, suffixes or any")]
    NoClients { authz: Named },
    #[error(
        "{authz}: {name:?} is not a mesh identity (expected sa.ns.serviceaccount.identity.<cp-ns>.<trust-domain>)"
    )]
    BadIdentity {
        authz: Named,
        name: String,
        #[source]
        source: Box<pki::IdentityError>,
    },
    #[error("route {route}: a {what} match without a value")]
    EmptyMatch { route: Named, what: &'static str },
    #[error("route {route}: query parameter matches are not supported; remove them")]
    QueryMatch { route: Named },
}

fn named(m: Option<&Metadata>, fallback: &str) -> Named {
    match m.and_then(|m| m.kind.as_ref()) {
        Some(metadata::Kind::Default(name)) => Named::new("default", name),
        Some(metadata::Kind::Resource(r)) => Named::new(&r.kind.to_lowercase(), &r.name),
        None => Named::new(fallback, "unnamed"),
    }
}

/// A server's name, from its labels (`kind`, `name`), as Linkerd sets them.
pub fn server_name(s: &api::Server) -> Named {
    let get = |k: &str, or: &str| s.labels.get(k).cloned().unwrap_or_else(|| or.into());
    Named {
        kind: get("kind", "default"),
        name: get("name", "unnamed"),
    }
}

impl TryFrom<api::Server> for Server {
    type Error = ReceiveError;

    fn try_from(s: api::Server) -> Result<Self, Self::Error> {
        let name = server_name(&s);
        let routes =
            |rs: Vec<api::HttpRoute>| rs.into_iter().map(route).collect::<Result<Vec<_>, _>>();
        let protocol = match s.protocol.and_then(|p| p.kind) {
            None => return Err(ReceiveError::NoProtocol { server: name }),
            Some(proxy_protocol::Kind::Grpc(_)) => {
                return Err(ReceiveError::GrpcProtocol { server: name });
            }
            Some(proxy_protocol::Kind::Detect(d)) => Protocol::Detect {
                routes: routes(d.http_routes)?,
            },
            Some(proxy_protocol::Kind::Http1(h)) => Protocol::Http1 {
                routes: routes(h.routes)?,
            },
            Some(proxy_protocol::Kind::Http2(h)) => Protocol::Http2 {
                routes: routes(h.routes)?,
            },
            Some(proxy_protocol::Kind::Opaque(_)) => Protocol::Opaque,
            Some(proxy_protocol::Kind::Tls(_)) => Protocol::Tls,
        };
        let keep_encoded_slashes = s
            .labels
            .get(crate::path::KEEP_ENCODED_SLASHES)
            .is_some_and(|v| v == "true");
        Ok(Server {
            name,
            protocol,
            authorizations: authorizations(s.authorizations)?,
            keep_encoded_slashes,
        })
    }
}

fn authorizations(a: Vec<api::Authz>) -> Result<Vec<Authorization>, ReceiveError> {
    a.into_iter().map(authorization).collect()
}

fn authorization(a: api::Authz) -> Result<Authorization, ReceiveError> {
    let authz = named(a.metadata.as_ref(), "authorization");
    let net = |n: Option<linkerd2_proxy_api::net::IpNetwork>, what| {
        let n = n.ok_or_else(|| ReceiveError::NoNetwork {
            authz: authz.clone(),
        })?;
        IpNet::try_from(n).map_err(|source| ReceiveError::BadNetwork {
            authz: authz.clone(),
            what,
            source,
        })
    };
    let networks = a
        .networks
        .into_iter()
        .map(|n| {
            Ok(Network {
                net: net(n.net, "address")?,
                except: n
                    .except
                    .into_iter()
                    .map(|e| net(Some(e), "exception"))
                    .collect::<Result<_, _>>()?,
            })
        })
        .collect::<Result<_, ReceiveError>>()?;
    let permit = a.authentication.and_then(|x| x.permit);
    let authentication = match permit {
        None => return Err(ReceiveError::NoAuthentication { authz }),
        Some(authn::Permit::Unauthenticated(_)) => Authentication::Unauthenticated,
        Some(authn::Permit::MeshTls(m)) => {
            use authn::permit_mesh_tls::Clients;
            match m.clients {
                None => return Err(ReceiveError::NoClients { authz }),
                Some(Clients::Unauthenticated(_)) => Authentication::AnyMeshTls,
                Some(Clients::Identities(ids)) => Authentication::Identities {
                    exact: ids
                        .identities
                        .into_iter()
                        .map(|i| {
                            i.name.parse().map_err(|source| ReceiveError::BadIdentity {
                                authz: authz.clone(),
                                name: i.name,
                                source: Box::new(source),
                            })
                        })
                        .collect::<Result<_, _>>()?,
                    suffixes: ids
                        .suffixes
                        .into_iter()
                        .map(|s| IdentitySuffix::new(s.parts))
                        .collect(),
                },
            }
        }
    };
    Ok(Authorization {
        name: authz,
        networks,
        authentication,
    })
}

fn route(r: api::HttpRoute) -> Result<Route, ReceiveError> {
    let name = named(r.metadata.as_ref(), "route");
    let rules = r
        .rules
        .into_iter()
        .map(|rule| {
            Ok(Rule {
                matches: rule
                    .matches
                    .into_iter()
                    .map(|m| route_match(m, &name))
                    .collect::<Result<_, _>>()?,
            })
        })
        .collect::<Result<_, ReceiveError>>()?;
    Ok(Route {
        authorizations: authorizations(r.authorizations)?,
        name,
        rules,
    })
}

fn route_match(m: api_route::HttpRouteMatch, route: &Named) -> Result<RouteMatch, ReceiveError> {
    let empty = |what| ReceiveError::EmptyMatch {
        route: route.clone(),
        what,
    };
    if !m.query_params.is_empty() {
        return Err(ReceiveError::QueryMatch {
            route: route.clone(),
        });
    }
    let path = match m.path {
        None => None,
        Some(p) => Some(match p.kind.ok_or_else(|| empty("path"))? {
            path_match::Kind::Exact(p) => PathMatch::Exact(p),
            path_match::Kind::Prefix(p) => PathMatch::Prefix(p),
            path_match::Kind::Regex(p) => PathMatch::Regex(p),
        }),
    };
    let method = match m.method {
        None => None,
        Some(want) => Some(match want.r#type.ok_or_else(|| empty("method"))? {
            http_method::Type::Registered(r) => http_method::Registered::try_from(r)
                .map(|r| format!("{r:?}").to_uppercase())
                .map_err(|_| empty("method"))?,
            http_method::Type::Unregistered(s) => s.to_uppercase(),
        }),
    };
    let headers = m
        .headers
        .into_iter()
        .map(|h| {
            let value = match h.value.ok_or_else(|| empty("header"))? {
                header_match::Value::Exact(v) => HeaderValue::Exact(v),
                header_match::Value::Regex(r) => HeaderValue::Regex(r),
            };
            Ok(HeaderMatch {
                name: h.name,
                value,
            })
        })
        .collect::<Result<_, ReceiveError>>()?;
    Ok(RouteMatch {
        path,
        method,
        headers,
    })
}
