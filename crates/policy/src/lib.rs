//! Authorization verdicts over linkerd2-proxy-api `inbound::Server` messages:
//! the one evaluator the proxy (enforcement) and `weft policy explain` share,
//! so they cannot disagree. Pure functions; nothing here does I/O.
//!
//! Fail closed throughout: an authorization without networks or without an
//! authentication grants nothing, a route match this evaluator cannot judge
//! (regular expressions) matches nothing, and no match means deny.

pub mod routes;

use std::net::IpAddr;

use linkerd2_proxy_api::inbound::{Authz, Server, authn, proxy_protocol};
use linkerd2_proxy_api::meta::{Metadata, metadata};

/// Who is connecting, as the proxy established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The verified identity (first SAN of the client's leaf), if mTLS with a
    /// client certificate.
    pub identity: Option<String>,
    /// Whether the connection is mesh TLS at all.
    pub tls: bool,
    pub ip: IpAddr,
}

/// An HTTP request, as far as routing needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A named policy object, as metrics and explanations show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub kind: String,
    pub name: String,
}

impl Named {
    fn of(m: Option<&Metadata>, fallback: &str) -> Self {
        match m.and_then(|m| m.kind.as_ref()) {
            Some(metadata::Kind::Default(name)) => Self {
                kind: "default".into(),
                name: name.clone(),
            },
            Some(metadata::Kind::Resource(r)) => Self {
                kind: r.kind.to_lowercase(),
                name: r.name.clone(),
            },
            None => Self {
                kind: fallback.into(),
                name: "unnamed".into(),
            },
        }
    }
}

/// A server's name, from its labels (`kind`, `name`), as Linkerd sets them.
pub fn server_name(server: &Server) -> Named {
    Named {
        kind: server
            .labels
            .get("kind")
            .cloned()
            .unwrap_or_else(|| "default".into()),
        name: server
            .labels
            .get("name")
            .cloned()
            .unwrap_or_else(|| "unnamed".into()),
    }
}

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The authorization that allowed it.
    pub authz: Option<Named>,
    /// The route the request matched (HTTP only).
    pub route: Option<Named>,
    /// Why, step by step: every authorization considered and its outcome.
    pub reasons: Vec<String>,
}

/// Whether `ip` is in `net` and in none of its exceptions.
fn in_network(ip: IpAddr, n: &linkerd2_proxy_api::inbound::Network) -> bool {
    let Some(net) = n.net.and_then(|n| ipnet::IpNet::try_from(n).ok()) else {
        return false;
    };
    // An exception that cannot be read might have excluded this client:
    // the network then matches nobody (never wider).
    let Ok(except) = n
        .except
        .iter()
        .map(|e| ipnet::IpNet::try_from(*e))
        .collect::<Result<Vec<_>, _>>()
    else {
        return false;
    };
    net.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
}

/// `identity` ends with the labels of `suffix` (an empty suffix matches all).
fn suffix_matches(identity: &str, parts: &[String]) -> bool {
    let labels: Vec<&str> = identity.split('.').collect();
    parts.len() <= labels.len()
        && labels[labels.len() - parts.len()..]
            .iter()
            .zip(parts)
            .all(|(a, b)| a == b)
}

/// One authorization against one client: Ok(why) when it matches.
pub fn authz_matches(a: &Authz, c: &Client) -> Result<String, String> {
    if a.networks.is_empty() {
        return Err("it lists no networks, so it grants nothing".into());
    }
    if !a.networks.iter().any(|n| in_network(c.ip, n)) {
        return Err(format!(
            "the client address {} is outside its networks",
            c.ip
        ));
    }
    let permit = a
        .authentication
        .as_ref()
        .and_then(|x| x.permit.as_ref())
        .ok_or_else(|| "it has no authentication, so it grants nothing".to_string())?;
    match permit {
        authn::Permit::Unauthenticated(_) => Ok("it allows unauthenticated clients".into()),
        authn::Permit::MeshTls(m) => {
            if !c.tls {
                return Err("it requires mesh TLS and the connection is not".into());
            }
            use authn::permit_mesh_tls::Clients;
            match m.clients.as_ref() {
                Some(Clients::Unauthenticated(_)) => Ok("it allows any mesh TLS client".into()),
                Some(Clients::Identities(ids)) => {
                    let Some(id) = c.identity.as_deref() else {
                        return Err("it requires a client identity and none was presented".into());
                    };
                    if ids.identities.iter().any(|i| i.name == id) {
                        return Ok(format!("it names the identity {id}"));
                    }
                    if let Some(s) = ids.suffixes.iter().find(|s| suffix_matches(id, &s.parts)) {
                        return Ok(if s.parts.is_empty() {
                            "it allows every authenticated identity".into()
                        } else {
                            format!("{id} ends with .{}", s.parts.join("."))
                        });
                    }
                    Err(format!("{id} is not among its identities"))
                }
                None => Err("its mesh TLS permit names no clients, so it grants nothing".into()),
            }
        }
    }
}

fn first_allowing(authzs: &[Authz], c: &Client, reasons: &mut Vec<String>) -> Option<Named> {
    if authzs.is_empty() {
        reasons.push("no authorization applies, so it is denied".into());
    }
    for a in authzs {
        let name = Named::of(a.metadata.as_ref(), "authorization");
        match authz_matches(a, c) {
            Ok(why) => {
                reasons.push(format!("{name} allows: {why}"));
                return Some(name);
            }
            Err(why) => reasons.push(format!("{name} does not allow: {why}")),
        }
    }
    None
}

/// The verdict for a connection (opaque TCP, or before HTTP is known).
pub fn authorize_connection(server: &Server, c: &Client) -> Verdict {
    let mut reasons = vec![format!("server {}", server_name(server))];
    let authz = first_allowing(&server.authorizations, c, &mut reasons);
    Verdict {
        allowed: authz.is_some(),
        authz,
        route: None,
        reasons,
    }
}

/// The HTTP routes a server's protocol carries.
pub fn http_routes(server: &Server) -> &[linkerd2_proxy_api::inbound::HttpRoute] {
    match server.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(proxy_protocol::Kind::Detect(d)) => &d.http_routes,
        Some(proxy_protocol::Kind::Http1(h)) => &h.routes,
        Some(proxy_protocol::Kind::Http2(h)) => &h.routes,
        _ => &[],
    }
}

/// The verdict for an HTTP request: the most specific matching route
/// decides (Gateway API precedence; ties go to the first by name), with its
/// own authorizations; no matching route is a denial.
pub fn authorize_request(server: &Server, c: &Client, req: &Request) -> Verdict {
    let mut reasons = vec![format!("server {}", server_name(server))];
    let mut best: Option<(routes::Rank, &linkerd2_proxy_api::inbound::HttpRoute)> = None;
    for r in http_routes(server) {
        if let Some(rank) = routes::route_rank(r, req)
            && best.as_ref().is_none_or(|(b, _)| rank > *b)
        {
            best = Some((rank, r));
        }
    }
    let Some((_, route)) = best else {
        reasons.push(format!(
            "no route matches {} {}, so it is denied",
            req.method, req.path
        ));
        return Verdict {
            allowed: false,
            authz: None,
            route: None,
            reasons,
        };
    };
    let route_name = Named::of(route.metadata.as_ref(), "route");
    reasons.push(format!(
        "route {route_name} matches {} {}",
        req.method, req.path
    ));
    let authz = first_allowing(&route.authorizations, c, &mut reasons);
    Verdict {
        allowed: authz.is_some(),
        authz,
        route: Some(route_name),
        reasons,
    }
}

#[cfg(test)]
mod tests;
