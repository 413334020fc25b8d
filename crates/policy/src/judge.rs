//! The whole verdict in one function: how the port's bytes are handled
//! (the Server's proxyProtocol, else the destination's opaque hint), what
//! the client sent, then the connection- or request-level judgement and
//! whether an audit default allowed it. The proxy (at connection time and
//! per request) and `weft policy explain` both call [`judge`], so they
//! cannot disagree.

use crate::eval::{self, Client, Request};
use crate::model::{Named, Protocol, Server};

/// How a port's bytes are handled, decided before any is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// One verdict per connection; bytes are not inspected.
    Opaque,
    /// Detect HTTP and judge each request.
    Detect,
}

/// A Server resource's proxyProtocol decides; for a default (no Server
/// selects the port) the destination's opaque-ports hint does.
pub fn handling(server: &Server, opaque_hint: bool) -> Handling {
    match server.protocol {
        Protocol::Opaque | Protocol::Tls => Handling::Opaque,
        _ if server.is_default() && opaque_hint => Handling::Opaque,
        _ => Handling::Detect,
    }
}

/// Whether the Server declares HTTP/1 or HTTP/2 (not detection): such a
/// port is served as HTTP or not at all.
pub fn declares_http(server: &Server) -> bool {
    matches!(
        server.protocol,
        Protocol::Http1 { .. } | Protocol::Http2 { .. }
    )
}

/// Why a request in this HTTP version is refused, if it is: a Server that
/// declares HTTP/1 serves HTTP/1 only (its application would not
/// understand HTTP/2). An HTTP/1 request to an HTTP/2 Server is served.
pub fn version_refusal(server: &Server, http2: bool) -> Option<String> {
    (http2 && matches!(server.protocol, Protocol::Http1 { .. })).then(|| {
        format!(
            "server {} declares proxyProtocol HTTP/1 and the client spoke HTTP/2: send HTTP/1.1, or declare HTTP/2 (or leave it unspecified to detect) on the Server",
            server.name
        )
    })
}

/// What the client sent, as far as the proxy read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic<'a> {
    /// Bytes that are not HTTP (or not inspected: an opaque port).
    NotHttp,
    /// One HTTP request.
    Http(&'a Request),
}

/// How the traffic was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Per connection.
    Opaque,
    /// Per request.
    Http,
}

/// Why a verdict denies, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No authorization allows this client (or no route matches).
    Unauthorized,
    /// The Server declares HTTP and the bytes are not HTTP.
    NotHttp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub mode: Mode,
    pub allowed: bool,
    pub denial: Option<Denial>,
    /// The authorization that allowed it.
    pub authz: Option<Named>,
    /// Allowed by the `audit` default: logged as though denied. Decided by
    /// kind (a default), so a resource named "audit" is not one.
    pub audit: bool,
    /// The route the request matched (HTTP only).
    pub route: Option<Named>,
    /// Why, step by step: every authorization considered and its outcome.
    pub reasons: Vec<String>,
}

/// The protocol facts the proxy has for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    /// The destination's opaque-ports hint for this port (for the proxy,
    /// from the destination service; for explain, from the same
    /// annotations through [`crate::ports::opaque_ports`]).
    pub opaque_hint: bool,
}

/// The verdict for `client` sending `traffic` to the port `server` guards.
pub fn judge(server: &Server, facts: Facts, client: &Client, traffic: Traffic<'_>) -> Verdict {
    let opaque = handling(server, facts.opaque_hint) == Handling::Opaque;
    let (mode, judged) = match traffic {
        Traffic::Http(req) if !opaque => (Mode::Http, eval::request(server, client, req)),
        Traffic::NotHttp if declares_http(server) => {
            let reasons = vec![
                format!("server {}", server.name),
                "the Server declares HTTP, and the client's bytes are not HTTP (or did not arrive within the detection timeout); it is served as HTTP or not at all".into(),
            ];
            return Verdict {
                mode: Mode::Opaque,
                allowed: false,
                denial: Some(Denial::NotHttp),
                authz: None,
                audit: false,
                route: None,
                reasons,
            };
        }
        Traffic::Http(_) => {
            let mut j = eval::connection(server, client);
            j.reasons.insert(
                1,
                "the port is opaque: requests are not inspected, so the connection is judged"
                    .into(),
            );
            (Mode::Opaque, j)
        }
        Traffic::NotHttp => (Mode::Opaque, eval::connection(server, client)),
    };
    let allowed = judged.authz.is_some();
    Verdict {
        mode,
        allowed,
        denial: (!allowed).then_some(Denial::Unauthorized),
        audit: judged
            .authz
            .as_ref()
            .is_some_and(|a| a.is_default() && a.name == "audit"),
        authz: judged.authz,
        route: judged.route,
        reasons: judged.reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Authentication, Authorization, Network, Route};

    fn open() -> Authorization {
        Authorization {
            name: Named::new("default", "all-unauthenticated"),
            networks: vec![Network {
                net: "0.0.0.0/0".parse().unwrap(),
                except: vec![],
            }],
            authentication: Authentication::Unauthenticated,
        }
    }

    fn server(kind: &str, protocol: fn(Vec<Route>) -> Protocol) -> Server {
        Server {
            name: Named::new(kind, "s"),
            protocol: protocol(vec![Route::everything(
                Named::new("default", "default"),
                vec![open()],
            )]),
            authorizations: vec![open()],
            keep_encoded_slashes: false,
        }
    }

    fn detect(routes: Vec<Route>) -> Protocol {
        Protocol::Detect { routes }
    }

    fn http1(routes: Vec<Route>) -> Protocol {
        Protocol::Http1 { routes }
    }

    fn opaque(_: Vec<Route>) -> Protocol {
        Protocol::Opaque
    }

    #[test]
    fn server_protocol_decides_then_the_hint() {
        // A Server resource decides, whatever the annotation says.
        assert_eq!(handling(&server("server", detect), true), Handling::Detect);
        assert_eq!(handling(&server("server", opaque), false), Handling::Opaque);
        // No Server: the opaque-ports hint decides.
        assert_eq!(handling(&server("default", detect), true), Handling::Opaque);
        assert_eq!(
            handling(&server("default", detect), false),
            Handling::Detect
        );
    }

    #[test]
    fn the_whole_verdict() {
        let c = Client {
            identity: None,
            tls: false,
            ip: "10.0.0.1".parse().unwrap(),
        };
        let req = Request {
            method: "GET".into(),
            path: "/x".into(),
            headers: vec![],
        };
        let hint = Facts { opaque_hint: true };
        let none = Facts::default();
        // (server, facts, traffic) → (mode, allowed, denial)
        let cases = [
            (
                server("server", http1),
                none,
                Traffic::NotHttp,
                Mode::Opaque,
                Some(Denial::NotHttp),
            ),
            (
                server("server", http1),
                hint,
                Traffic::NotHttp,
                Mode::Opaque,
                Some(Denial::NotHttp),
            ),
            (
                server("server", http1),
                none,
                Traffic::Http(&req),
                Mode::Http,
                None,
            ),
            (
                server("server", detect),
                none,
                Traffic::NotHttp,
                Mode::Opaque,
                None,
            ),
            (
                server("server", detect),
                hint,
                Traffic::Http(&req),
                Mode::Http,
                None,
            ),
            (
                server("default", detect),
                hint,
                Traffic::Http(&req),
                Mode::Opaque,
                None,
            ),
            (
                server("default", detect),
                none,
                Traffic::Http(&req),
                Mode::Http,
                None,
            ),
            (
                server("server", opaque),
                none,
                Traffic::Http(&req),
                Mode::Opaque,
                None,
            ),
        ];
        for (i, (s, facts, traffic, mode, denial)) in cases.into_iter().enumerate() {
            let v = judge(&s, facts, &c, traffic);
            assert_eq!((v.mode, v.denial), (mode, denial), "case {i}: {v:?}");
            assert_eq!(v.allowed, denial.is_none(), "case {i}");
            assert!(v.reasons.len() >= 2, "case {i}: {v:?}");
        }
    }
}
