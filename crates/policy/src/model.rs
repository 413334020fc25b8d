//! weft's own inbound policy: what a linkerd2-proxy-api `inbound::Server`
//! says, converted once on receipt so the evaluator never walks protobuf,
//! never re-parses a network and never splits an identity per request.
//!
//! The conversion refuses a message it cannot represent (a network that is
//! not one, an authorization without an authentication, an identity that is
//! not a mesh identity): the receiver then keeps what it had, never guesses.

use ipnet::IpNet;
use pki::Identity;

/// A named policy object, as metrics and explanations show it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Named {
    /// `default` for defaults, else the resource kind in lower case.
    pub kind: String,
    pub name: String,
}

impl Named {
    pub fn new(kind: &str, name: &str) -> Self {
        Self {
            kind: kind.into(),
            name: name.into(),
        }
    }

    /// A default policy (no resource), such as `default:audit`.
    pub fn is_default(&self) -> bool {
        self.kind == "default"
    }
}

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.name)
    }
}

/// The policy of one workload port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// `server:<name>` for a Server resource, `default:<policy>` otherwise.
    pub name: Named,
    pub protocol: Protocol,
    /// Connection-level authorizations (opaque traffic).
    pub authorizations: Vec<Authorization>,
    /// Request paths keep `%2F`/`%5C` verbatim instead of being refused
    /// (the Server's `policy.weft.dev/keep-encoded-slashes` annotation).
    pub keep_encoded_slashes: bool,
}

impl Server {
    /// Whether no Server resource selects the port (a default applies).
    pub fn is_default(&self) -> bool {
        self.name.kind != "server"
    }

    /// The server that denies everything. Detect, so an HTTP client gets a
    /// 403 rather than a closed connection.
    pub fn deny() -> Self {
        Self {
            name: Named::new("default", "deny"),
            protocol: Protocol::Detect { routes: vec![] },
            authorizations: vec![],
            keep_encoded_slashes: false,
        }
    }

    /// The HTTP routes the protocol carries (none when opaque).
    pub fn routes(&self) -> &[Route] {
        match &self.protocol {
            Protocol::Detect { routes }
            | Protocol::Http1 { routes }
            | Protocol::Http2 { routes } => routes,
            Protocol::Opaque | Protocol::Tls => &[],
        }
    }
}

/// The Server's proxyProtocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// Detect HTTP; anything else is judged per connection.
    Detect {
        routes: Vec<Route>,
    },
    /// Declared HTTP/1: served as HTTP or not at all.
    Http1 {
        routes: Vec<Route>,
    },
    /// Declared HTTP/2 (or gRPC): served as HTTP or not at all.
    Http2 {
        routes: Vec<Route>,
    },
    Opaque,
    Tls,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub name: Named,
    /// Empty: grants nothing.
    pub networks: Vec<Network>,
    pub authentication: Authentication,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub net: IpNet,
    pub except: Vec<IpNet>,
}

impl Network {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.net.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// Anyone, meshed or not.
    Unauthenticated,
    /// Any mesh TLS connection, with or without a client identity.
    AnyMeshTls,
    /// Mesh TLS with one of these identities.
    Identities {
        exact: Vec<Identity>,
        suffixes: Vec<IdentitySuffix>,
    },
}

/// `*.suffix` (labels compared whole); no labels is `*`: any authenticated
/// identity. Kept as labels last-first, matched against an identity's parts
/// without building its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySuffix {
    reversed: Vec<String>,
}

impl IdentitySuffix {
    /// From the suffix's labels, first to last (`["demo", "serviceaccount", ...]`).
    pub fn new(mut labels: Vec<String>) -> Self {
        labels.reverse();
        Self { reversed: labels }
    }

    pub fn any() -> Self {
        Self { reversed: vec![] }
    }

    pub fn is_any(&self) -> bool {
        self.reversed.is_empty()
    }

    pub fn matches(&self, id: &Identity) -> bool {
        // `<sa>.<ns>.serviceaccount.identity.<cp-ns>.<trust-domain>`, last label first.
        let mut parts = id.trust_domain().rsplit('.').chain([
            id.control_plane_ns(),
            "identity",
            "serviceaccount",
            id.namespace(),
            id.service_account(),
        ]);
        self.reversed
            .iter()
            .all(|want| parts.next() == Some(want.as_str()))
    }
}

impl std::fmt::Display for IdentitySuffix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_any() {
            f.write_str("*")
        } else {
            let labels: Vec<&str> = self.reversed.iter().rev().map(String::as_str).collect();
            write!(f, "*.{}", labels.join("."))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: Named,
    /// No rules: matches every request.
    pub rules: Vec<Rule>,
    pub authorizations: Vec<Authorization>,
}

impl Route {
    /// A route for every path (`/` prefix).
    pub fn everything(name: Named, authorizations: Vec<Authorization>) -> Self {
        Self {
            name,
            rules: vec![Rule {
                matches: vec![RouteMatch {
                    path: Some(PathMatch::Prefix("/".into())),
                    method: None,
                    headers: vec![],
                }],
            }],
            authorizations,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// No matches: matches every request.
    pub matches: Vec<RouteMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub path: Option<PathMatch>,
    /// Upper case.
    pub method: Option<String>,
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    /// Whole segments, as Gateway API's PathPrefix.
    Prefix(String),
    /// Not judged here: matches nothing (fail closed).
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: String,
    pub value: HeaderValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Exact(Vec<u8>),
    /// Not judged here: matches nothing (fail closed).
    Regex(String),
}

#[path = "model_convert.rs"]
mod convert;
pub use convert::ReceiveError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_compare_whole_labels_from_the_end() {
        let id: Identity = "web.demo.serviceaccount.identity.weft.cluster.local"
            .parse()
            .unwrap();
        let s = |t: &str| IdentitySuffix::new(t.split('.').map(str::to_string).collect());
        assert!(s("demo.serviceaccount.identity.weft.cluster.local").matches(&id));
        assert!(s("web.demo.serviceaccount.identity.weft.cluster.local").matches(&id));
        assert!(s("local").matches(&id));
        assert!(IdentitySuffix::any().matches(&id));
        // A partial label, another namespace, a longer name: no.
        assert!(!s("mo.serviceaccount.identity.weft.cluster.local").matches(&id));
        assert!(!s("prod.serviceaccount.identity.weft.cluster.local").matches(&id));
        assert!(!s("x.web.demo.serviceaccount.identity.weft.cluster.local").matches(&id));
        assert_eq!(
            s("demo.serviceaccount.identity.weft.cluster.local").to_string(),
            "*.demo.serviceaccount.identity.weft.cluster.local"
        );
        assert_eq!(IdentitySuffix::any().to_string(), "*");
    }
}
