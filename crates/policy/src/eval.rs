//! Authorization verdicts over weft's typed [`Server`]: the evaluator behind
//! [`crate::judge`]. Pure functions; nothing here does I/O.
//!
//! Fail closed throughout: an authorization without networks grants
//! nothing, a route match this evaluator cannot judge (regular expressions)
//! matches nothing, and no match means deny.

use std::net::IpAddr;

use pki::Identity;

use crate::model::{Authentication, Authorization, Named, Route, Server};
use crate::routes;

/// Who is connecting, as the proxy established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The verified identity (from the client's leaf certificate), if mTLS
    /// with a client certificate naming a mesh identity.
    pub identity: Option<Identity>,
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

/// One authorization against one client: Ok(why) when it matches.
pub fn authz_matches(a: &Authorization, c: &Client) -> Result<String, String> {
    if a.networks.is_empty() {
        return Err("it lists no networks, so it grants nothing".into());
    }
    if !a.networks.iter().any(|n| n.contains(c.ip)) {
        return Err(format!(
            "the client address {} is outside its networks",
            c.ip
        ));
    }
    match &a.authentication {
        Authentication::Unauthenticated => Ok("it allows unauthenticated clients".into()),
        _ if !c.tls => Err("it requires mesh TLS and the connection is not".into()),
        Authentication::AnyMeshTls => Ok("it allows any mesh TLS client".into()),
        Authentication::Identities { exact, suffixes } => {
            let Some(id) = c.identity.as_ref() else {
                return Err("it requires a client identity and none was presented".into());
            };
            if exact.contains(id) {
                return Ok(format!("it names the identity {id}"));
            }
            if let Some(s) = suffixes.iter().find(|s| s.matches(id)) {
                return Ok(if s.is_any() {
                    "it allows every authenticated identity".into()
                } else {
                    format!("{id} matches {s}")
                });
            }
            Err(format!("{id} is not among its identities"))
        }
    }
}

fn first_allowing(
    authzs: &[Authorization],
    c: &Client,
    reasons: &mut Vec<String>,
) -> Option<Named> {
    if authzs.is_empty() {
        reasons.push("no authorization applies, so it is denied".into());
    }
    for a in authzs {
        match authz_matches(a, c) {
            Ok(why) => {
                reasons.push(format!("{} allows: {why}", a.name));
                return Some(a.name.clone());
            }
            Err(why) => reasons.push(format!("{} does not allow: {why}", a.name)),
        }
    }
    None
}

/// A connection or request verdict before the protocol facts are added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub authz: Option<Named>,
    pub route: Option<Named>,
    pub reasons: Vec<String>,
}

/// The connection's authorizations decide (opaque traffic).
pub fn connection(server: &Server, c: &Client) -> Judged {
    let mut reasons = vec![format!("server {}", server.name)];
    let authz = first_allowing(&server.authorizations, c, &mut reasons);
    Judged {
        authz,
        route: None,
        reasons,
    }
}

/// The most specific matching route decides (Gateway API precedence; ties
/// go to the first), with its own authorizations; no route is a denial.
pub fn request(server: &Server, c: &Client, req: &Request) -> Judged {
    let mut reasons = vec![format!("server {}", server.name)];
    let mut best: Option<(routes::Rank, &Route)> = None;
    for r in server.routes() {
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
        return Judged {
            authz: None,
            route: None,
            reasons,
        };
    };
    reasons.push(format!(
        "route {} matches {} {}",
        route.name, req.method, req.path
    ));
    let authz = first_allowing(&route.authorizations, c, &mut reasons);
    Judged {
        authz,
        route: Some(route.name.clone()),
        reasons,
    }
}
