//! A stable, printable form of a [`Server`]: what a proxy reports it holds
//! (its admin endpoint's `/policy`) and what `weft diagnostics policy`
//! computes from the resources, in one shape so the two compare field by
//! field. Only names, networks, identities and matches: nothing secret.

use serde::{Deserialize, Serialize};

use crate::model::{
    Authentication, Authorization, HeaderValue, PathMatch, Protocol, Route, RouteMatch, Server,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerView {
    /// `server:<name>` or `default:<policy>`.
    pub server: String,
    /// detect, http1, http2, opaque or tls.
    pub protocol: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_encoded_slashes: bool,
    /// Connection-level authorizations (opaque traffic).
    pub authorizations: Vec<AuthorizationView>,
    pub routes: Vec<RouteView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationView {
    pub name: String,
    /// `unauthenticated`, `any mesh TLS`, or the identities (exact names,
    /// then `*.suffix` patterns).
    pub authentication: Vec<String>,
    /// CIDRs, each with `except` ranges after ` except `.
    pub networks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    pub name: String,
    /// One line per match (`GET prefix /api header x=…`); empty: every request.
    pub matches: Vec<String>,
    pub authorizations: Vec<AuthorizationView>,
}

pub fn describe(s: &Server) -> ServerView {
    let protocol = match &s.protocol {
        Protocol::Detect { .. } => "detect",
        Protocol::Http1 { .. } => "http1",
        Protocol::Http2 { .. } => "http2",
        Protocol::Opaque => "opaque",
        Protocol::Tls => "tls",
    };
    ServerView {
        server: s.name.to_string(),
        protocol: protocol.into(),
        keep_encoded_slashes: s.keep_encoded_slashes,
        authorizations: s.authorizations.iter().map(authorization).collect(),
        routes: s.routes().iter().map(route).collect(),
    }
}

fn authorization(a: &Authorization) -> AuthorizationView {
    let authentication = match &a.authentication {
        Authentication::Unauthenticated => vec!["unauthenticated".into()],
        Authentication::AnyMeshTls => vec!["any mesh TLS".into()],
        Authentication::Identities { exact, suffixes } => exact
            .iter()
            .map(ToString::to_string)
            .chain(suffixes.iter().map(ToString::to_string))
            .collect(),
    };
    AuthorizationView {
        name: a.name.to_string(),
        authentication,
        networks: a
            .networks
            .iter()
            .map(|n| {
                let mut s = n.net.to_string();
                for e in &n.except {
                    s.push_str(&format!(" except {e}"));
                }
                s
            })
            .collect(),
    }
}

fn route(r: &Route) -> RouteView {
    RouteView {
        name: r.name.to_string(),
        matches: r
            .rules
            .iter()
            .flat_map(|rule| {
                if rule.matches.is_empty() {
                    vec!["every request".to_string()]
                } else {
                    rule.matches.iter().map(route_match).collect()
                }
            })
            .collect(),
        authorizations: r.authorizations.iter().map(authorization).collect(),
    }
}

fn route_match(m: &RouteMatch) -> String {
    let mut parts = Vec::new();
    if let Some(method) = &m.method {
        parts.push(method.clone());
    }
    match &m.path {
        Some(PathMatch::Exact(p)) => parts.push(format!("path {p}")),
        Some(PathMatch::Prefix(p)) => parts.push(format!("prefix {p}")),
        Some(PathMatch::Regex(p)) => parts.push(format!("regex {p} (matches nothing)")),
        None => {}
    }
    for h in &m.headers {
        parts.push(match &h.value {
            HeaderValue::Exact(v) => {
                format!("header {}={}", h.name, String::from_utf8_lossy(v))
            }
            HeaderValue::Regex(v) => format!("header {}~{v} (matches nothing)", h.name),
        });
    }
    if parts.is_empty() {
        "every request".into()
    } else {
        parts.join(" ")
    }
}

/// Indented text, one fact a line, for people.
pub fn render(v: &ServerView) -> String {
    let mut out = format!("{} ({})\n", v.server, v.protocol);
    if v.keep_encoded_slashes {
        out.push_str("  keeps %2F and %5C in paths verbatim\n");
    }
    let authz = |out: &mut String, a: &AuthorizationView, indent: &str| {
        let nets = if a.networks.is_empty() {
            "no network (grants nothing)".to_string()
        } else {
            a.networks.join(", ")
        };
        out.push_str(&format!(
            "{indent}{}: {} from {nets}\n",
            a.name,
            a.authentication.join(", ")
        ));
    };
    if v.authorizations.is_empty() && v.routes.is_empty() {
        out.push_str("  no authorization: every connection is denied\n");
    }
    for a in &v.authorizations {
        authz(&mut out, a, "  connection ");
    }
    for r in &v.routes {
        out.push_str(&format!("  route {} [{}]\n", r.name, r.matches.join("; ")));
        if r.authorizations.is_empty() {
            out.push_str("    no authorization: its requests are denied\n");
        }
        for a in &r.authorizations {
            authz(&mut out, a, "    ");
        }
    }
    out
}

/// One part of a policy that differs: its name and each side, compact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// server, protocol, keep-encoded-slashes, connection authorizations or routes.
    pub part: String,
    pub held: String,
    pub want: String,
}

/// What differs between what a proxy holds and what it should (empty when
/// equal).
pub fn differences(held: &ServerView, want: &ServerView) -> Vec<Difference> {
    let mut d = Vec::new();
    let mut field = |part: &str, held: String, want: String| {
        if held != want {
            d.push(Difference {
                part: part.into(),
                held,
                want,
            });
        }
    };
    field("server", held.server.clone(), want.server.clone());
    field("protocol", held.protocol.clone(), want.protocol.clone());
    field(
        "keep-encoded-slashes",
        held.keep_encoded_slashes.to_string(),
        want.keep_encoded_slashes.to_string(),
    );
    field(
        "connection authorizations",
        json(&held.authorizations),
        json(&want.authorizations),
    );
    field("routes", json(&held.routes), json(&want.routes));
    d
}

/// Compact JSON of a view part, to name a difference in one line.
fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("<{e}>"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Named, Network};
    use crate::{IdentitySuffix, Route};

    fn allow(who: &str) -> Authorization {
        Authorization {
            name: Named::new("authorizationpolicy", "allow"),
            networks: vec![Network {
                net: "0.0.0.0/0".parse().unwrap(),
                except: vec!["10.9.0.0/16".parse().unwrap()],
            }],
            authentication: Authentication::Identities {
                exact: vec![who.parse().unwrap()],
                suffixes: vec![IdentitySuffix::new(vec!["demo".into(), "local".into()])],
            },
        }
    }

    fn server(who: &str) -> Server {
        Server {
            name: Named::new("server", "backend"),
            protocol: Protocol::Http1 {
                routes: vec![Route::everything(
                    Named::new("default", "route"),
                    vec![allow(who)],
                )],
            },
            authorizations: vec![],
            keep_encoded_slashes: false,
        }
    }

    const FE: &str = "frontend.demo.serviceaccount.identity.weft.cluster.local";
    const IN: &str = "intruder.demo.serviceaccount.identity.weft.cluster.local";

    #[test]
    fn a_view_names_every_grant_and_round_trips_as_json() {
        let v = describe(&server(FE));
        let text = render(&v);
        assert!(text.starts_with("server:backend (http1)\n"), "{text}");
        assert!(text.contains("route default:route [prefix /]"), "{text}");
        assert!(
            text.contains(&format!(
                "authorizationpolicy:allow: {FE}, *.demo.local from 0.0.0.0/0 except 10.9.0.0/16"
            )),
            "{text}"
        );
        let back: ServerView = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(back, v);
        assert!(differences(&v, &back).is_empty());
    }

    #[test]
    fn differences_name_the_part_that_differs() {
        let d = differences(&describe(&server(FE)), &describe(&server(IN)));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].part, "routes");
        assert!(d[0].held.contains(FE) && d[0].want.contains(IN), "{d:?}");
        let deny = describe(&Server::deny());
        assert!(render(&deny).contains("every connection is denied"));
        let d = differences(&deny, &describe(&server(FE)));
        let parts: Vec<&str> = d.iter().map(|d| d.part.as_str()).collect();
        assert_eq!(parts, ["server", "protocol", "routes"], "{d:?}");
    }
}
