//! Linkerd's policy kinds (`policy.linkerd.io`): Server, AuthorizationPolicy,
//! MeshTLSAuthentication, NetworkAuthentication and HTTPRoute, shaped like
//! their CRDs so Linkerd manifests load unchanged. Every `spec` struct refuses
//! unknown fields; the checks Linkerd's admission webhook makes live in
//! `policy_check`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::types::Meta;

/// A Kubernetes label selector. An empty selector selects everything.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Kubernetes semantics: every `matchLabels` entry and every expression
    /// must hold; `NotIn` holds when the label is absent.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| e.matches(labels))
    }
}

impl LabelSelectorRequirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        let listed = value.is_some_and(|v| self.values.contains(v));
        match self.operator {
            SelectorOperator::In => listed,
            SelectorOperator::NotIn => !listed,
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

/// `policy.linkerd.io/v1beta3` `Server`: a port on a set of workloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub meta: Meta,
    pub spec: ServerSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerSpec {
    /// Exactly one of `pod_selector` and `external_workload_selector` is set.
    pub pod_selector: Option<LabelSelector>,
    pub external_workload_selector: Option<LabelSelector>,
    pub port: ServerPort,
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    pub access_policy: Option<DefaultPolicy>,
}

/// A port number (1-65535) or a named container/workload port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerPort {
    Number(u16),
    Name(String),
}

impl<'de> Deserialize<'de> for ServerPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl Visitor<'_> for PortVisitor {
            type Value = ServerPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (1-65535) or a port name")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<ServerPort, E> {
                match u16::try_from(n) {
                    Ok(p) if p != 0 => Ok(ServerPort::Number(p)),
                    _ => Err(E::custom(format!("{n} is not a port; use 1-65535"))),
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ServerPort, E> {
                Err(E::custom(format!("{n} is not a port; use 1-65535")))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ServerPort, E> {
                check_port_name(s).map_err(E::custom)?;
                Ok(ServerPort::Name(s.to_string()))
            }
        }
        d.deserialize_any(PortVisitor)
    }
}

/// A Kubernetes port name (IANA service name): at most 15 lower-case
/// letters, digits and '-', with at least one letter, no leading, trailing or
/// doubled '-'.
fn check_port_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is neither a port number (1-65535) nor a port name (at most 15 lower-case letters, digits and '-', with a letter)"
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum ProxyProtocol {
    #[default]
    #[serde(rename = "unknown")]
    Unknown,
    #[serde(rename = "HTTP/1")]
    Http1,
    #[serde(rename = "HTTP/2")]
    Http2,
    #[serde(rename = "gRPC")]
    Grpc,
    #[serde(rename = "opaque")]
    Opaque,
    #[serde(rename = "TLS")]
    Tls,
}

/// Linkerd's default inbound policies (`config.linkerd.io/default-inbound-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    AllUnauthenticated,
    AllAuthenticated,
    ClusterUnauthenticated,
    ClusterAuthenticated,
    Deny,
    Audit,
}

/// `policy.linkerd.io/v1alpha1` `AuthorizationPolicy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    pub meta: Meta,
    pub spec: AuthorizationPolicySpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    pub target_ref: TargetRef,
    #[serde(default)]
    pub required_authentication_refs: Vec<AuthenticationRef>,
}

/// What an AuthorizationPolicy applies to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRef {
    #[serde(default)]
    pub group: String,
    pub kind: TargetKind,
    pub name: String,
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TargetKind {
    Server,
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
    Namespace,
}

/// An authentication an AuthorizationPolicy requires.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthenticationRef {
    #[serde(default)]
    pub group: String,
    pub kind: AuthenticationKind,
    pub name: String,
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthenticationKind {
    #[serde(rename = "MeshTLSAuthentication")]
    MeshTlsAuthentication,
    NetworkAuthentication,
    ServiceAccount,
}

/// `policy.linkerd.io/v1alpha1` `MeshTLSAuthentication`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshTlsAuthentication {
    pub meta: Meta,
    pub spec: MeshTlsAuthenticationSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTlsAuthenticationSpec {
    /// Exact identities, `*`, `*.suffix`, or `spiffe://` IDs.
    #[serde(default)]
    pub identities: Vec<String>,
    #[serde(default)]
    pub identity_refs: Vec<IdentityRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityRef {
    #[serde(default)]
    pub group: String,
    pub kind: IdentityRefKind,
    pub name: String,
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum IdentityRefKind {
    ServiceAccount,
    Namespace,
}

/// `policy.linkerd.io/v1alpha1` `NetworkAuthentication`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAuthentication {
    pub meta: Meta,
    pub spec: NetworkAuthenticationSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkAuthenticationSpec {
    pub networks: Vec<Network>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub cidr: Cidr,
    #[serde(default)]
    pub except: Vec<Cidr>,
}

/// An IPv4 or IPv6 network, `addr/len` or a bare address (a /32 or /128).
/// Host bits are cleared: `10.1.2.3/8` is `10.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Cidr, String> {
        let max = max_len(addr);
        if prefix_len > max {
            return Err(format!(
                "prefix length {prefix_len} is too long for {addr}; at most {max}"
            ));
        }
        Ok(Cidr {
            addr: mask(addr, prefix_len),
            prefix_len,
        })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix_len) == self.addr
    }

    /// Whether `other` lies wholly inside this network.
    pub fn contains(&self, other: &Cidr) -> bool {
        other.prefix_len >= self.prefix_len && self.contains_ip(other.addr)
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not a CIDR (e.g. 10.0.0.0/8 or fd00::/8)");
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => {
                let addr: IpAddr = a.parse().map_err(|_| bad())?;
                let len = if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) {
                    l.parse::<u8>().map_err(|_| bad())?
                } else {
                    return Err(bad());
                };
                (addr, len)
            }
            None => {
                let addr: IpAddr = s.parse().map_err(|_| bad())?;
                (addr, max_len(addr))
            }
        };
        Cidr::new(addr, len).map_err(|e| format!("{s:?}: {e}"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Parsed inside the visitor, so an error carries the value's path.
        struct CidrVisitor;
        impl Visitor<'_> for CidrVisitor {
            type Value = Cidr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CIDR such as 10.0.0.0/8")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Cidr, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(CidrVisitor)
    }
}

/// `policy.linkerd.io/v1beta3` (or `gateway.networking.k8s.io/v1beta1`)
/// `HTTPRoute`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRoute {
    pub meta: Meta,
    pub spec: HttpRouteSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentRef {
    pub group: Option<String>,
    /// `Server` when given.
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRouteRule {
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    /// Always empty: no filter is supported yet, and one is refused.
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
}

/// No filter is supported yet: deserializing one always fails, so a rule
/// with filters is refused rather than applied without them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpRouteFilter {}

impl<'de> Deserialize<'de> for HttpRouteFilter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de::IgnoredAny::deserialize(d)?;
        Err(de::Error::custom(
            "HTTPRoute filters are not supported yet; remove them (an empty list is allowed)",
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRouteMatch {
    pub path: Option<PathMatch>,
    pub method: Option<String>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

/// Defaults as in the Gateway API: `PathPrefix` `/`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    #[serde(default = "root_path")]
    pub value: String,
}

fn root_path() -> String {
    "/".to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum PathMatchType {
    Exact,
    #[default]
    PathPrefix,
    /// Read so it can be refused with a clear message.
    RegularExpression,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    #[serde(rename = "type", default)]
    pub kind: HeaderMatchType,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum HeaderMatchType {
    #[default]
    Exact,
}
