//! Workload identity names: Linkerd's DNS-like form and the SPIFFE URI form.
//!
//! Parsing is strict on purpose: an identity that is almost right would match
//! nothing in policy and fail at 3 a.m., so it is refused at the door instead.

use std::fmt;
use std::str::FromStr;

/// The default control-plane namespace (`cp-ns`).
pub const DEFAULT_CONTROL_PLANE_NS: &str = "weft";
/// The default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The service account the control plane's own certificate is issued to.
pub const CONTROL_PLANE_SA: &str = "weft-identity";

const MARKER: &str = ".serviceaccount.identity.";
const MAX_DNS_NAME: usize = 253;
const MAX_SPIFFE_ID: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("identity is empty; expected <sa>.<ns>.serviceaccount.identity.<cp-ns>.<trust-domain>")]
    Empty,
    #[error(
        "identity {0:?} is {1} characters long; a DNS name holds at most 253, so shorten the service account or namespace"
    )]
    TooLong(String, usize),
    #[error(
        "identity {0:?} is not of the form <sa>.<ns>.serviceaccount.identity.<cp-ns>.<trust-domain> (e.g. web.demo.serviceaccount.identity.weft.cluster.local)"
    )]
    Shape(String),
    #[error("{what} {label:?} in {input:?} is not a DNS label: {why}")]
    Label {
        input: String,
        what: &'static str,
        label: String,
        why: &'static str,
    },
    #[error(
        "SPIFFE ID {input:?} is invalid: {why}; expected spiffe://<trust-domain>/ns/<ns>/sa/<sa>"
    )]
    Spiffe { input: String, why: String },
    #[error(
        "SPIFFE ID {0:?} names no Kubernetes workload; only spiffe://<trust-domain>/ns/<ns>/sa/<sa> maps to a mesh identity"
    )]
    NotWorkload(String),
}

/// Checks one DNS label (RFC 1123): lowercase letters, digits and '-', 1..=63
/// characters, starting and ending with a letter or digit.
fn check_label(input: &str, what: &'static str, label: &str) -> Result<(), IdentityError> {
    let fail = |why| {
        Err(IdentityError::Label {
            input: input.to_string(),
            what,
            label: label.to_string(),
            why,
        })
    };
    if label.is_empty() {
        return fail("it is empty");
    }
    if label.len() > 63 {
        return fail("it is longer than 63 characters");
    }
    if label.bytes().any(|b| b.is_ascii_uppercase()) {
        return fail("it has upper-case letters; names are lower-case");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return fail("only a-z, 0-9 and '-' are allowed");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return fail("it must start and end with a letter or digit");
    }
    Ok(())
}

fn check_domain(input: &str, what: &'static str, domain: &str) -> Result<(), IdentityError> {
    domain
        .split('.')
        .try_for_each(|label| check_label(input, what, label))
}

/// A mesh identity: `<sa>.<ns>.serviceaccount.identity.<cp-ns>.<trust-domain>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    service_account: String,
    namespace: String,
    control_plane_ns: String,
    trust_domain: String,
}

impl Identity {
    pub fn new(
        service_account: &str,
        namespace: &str,
        control_plane_ns: &str,
        trust_domain: &str,
    ) -> Result<Self, IdentityError> {
        let name =
            format!("{service_account}.{namespace}{MARKER}{control_plane_ns}.{trust_domain}");
        check_label(&name, "service account", service_account)?;
        check_label(&name, "namespace", namespace)?;
        check_label(&name, "control-plane namespace", control_plane_ns)?;
        check_domain(&name, "trust domain", trust_domain)?;
        if name.len() > MAX_DNS_NAME {
            return Err(IdentityError::TooLong(name.clone(), name.len()));
        }
        Ok(Self {
            service_account: service_account.to_string(),
            namespace: namespace.to_string(),
            control_plane_ns: control_plane_ns.to_string(),
            trust_domain: trust_domain.to_string(),
        })
    }

    /// The identity the control plane presents on all of its gRPC services.
    pub fn control_plane(
        control_plane_ns: &str,
        trust_domain: &str,
    ) -> Result<Self, IdentityError> {
        Self::new(
            CONTROL_PLANE_SA,
            control_plane_ns,
            control_plane_ns,
            trust_domain,
        )
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    pub fn control_plane_ns(&self) -> &str {
        &self.control_plane_ns
    }
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// `identity.<cp-ns>.<trust-domain>`: every identity of one mesh ends so.
    pub fn mesh_suffix(&self) -> String {
        format!("identity.{}.{}", self.control_plane_ns, self.trust_domain)
    }

    pub fn to_spiffe(&self) -> SpiffeId {
        SpiffeId {
            trust_domain: self.trust_domain.clone(),
            path: format!("/ns/{}/sa/{}", self.namespace, self.service_account),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}{MARKER}{}.{}",
            self.service_account, self.namespace, self.control_plane_ns, self.trust_domain
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(IdentityError::Empty);
        }
        if s.len() > MAX_DNS_NAME {
            return Err(IdentityError::TooLong(s.to_string(), s.len()));
        }
        let shape = || IdentityError::Shape(s.to_string());
        let (workload, mesh) = s.split_once(MARKER).ok_or_else(shape)?;
        let (sa, ns) = workload.split_once('.').ok_or_else(shape)?;
        let (cp_ns, trust_domain) = mesh.split_once('.').ok_or_else(shape)?;
        if ns.contains('.') {
            return Err(shape());
        }
        Self::new(sa, ns, cp_ns, trust_domain)
    }
}

/// Serialized as its name, so JSON views and records stay readable; parsed
/// strictly on the way back in.
impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A SPIFFE ID (`spiffe://<trust-domain>/<path>`), parsed per the SPIFFE spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

impl SpiffeId {
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `(namespace, service account)` when the path is `/ns/<ns>/sa/<sa>`.
    pub fn workload(&self) -> Option<(&str, &str)> {
        let mut parts = self.path.strip_prefix('/')?.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// The DNS identity of this workload in the mesh run from `control_plane_ns`.
    pub fn to_identity(&self, control_plane_ns: &str) -> Result<Identity, IdentityError> {
        let (ns, sa) = self
            .workload()
            .ok_or_else(|| IdentityError::NotWorkload(self.to_string()))?;
        Identity::new(sa, ns, control_plane_ns, &self.trust_domain)
    }
}

impl From<&Identity> for SpiffeId {
    fn from(id: &Identity) -> Self {
        id.to_spiffe()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |why: &str| {
            Err(IdentityError::Spiffe {
                input: s.to_string(),
                why: why.to_string(),
            })
        };
        if s.len() > MAX_SPIFFE_ID {
            return fail("it is longer than 2048 bytes");
        }
        let Some(rest) = s.strip_prefix("spiffe://") else {
            return fail("the scheme must be \"spiffe://\" (lower-case)");
        };
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if td.is_empty() {
            return fail("the trust domain is empty");
        }
        if td.len() > 255 {
            return fail("the trust domain is longer than 255 characters");
        }
        if !td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return fail(
                "the trust domain may hold only a-z, 0-9, '-', '.' and '_' (no port, user or upper case)",
            );
        }
        if path.is_empty() {
            return fail("the path is empty");
        }
        for seg in path[1..].split('/') {
            if seg.is_empty() {
                return fail("the path has an empty segment or a trailing '/'");
            }
            if seg == "." || seg == ".." {
                return fail("the path has a '.' or '..' segment");
            }
            if !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return fail(
                    "the path may hold only letters, digits, '-', '.', '_' and '/' (no query or fragment)",
                );
            }
        }
        Ok(Self {
            trust_domain: td.to_string(),
            path: path.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_identities() {
        let id: Identity = "web.demo.serviceaccount.identity.weft.cluster.local"
            .parse()
            .unwrap();
        assert_eq!(id.service_account(), "web");
        assert_eq!(id.namespace(), "demo");
        assert_eq!(id.control_plane_ns(), "weft");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(
            id.to_string(),
            "web.demo.serviceaccount.identity.weft.cluster.local"
        );
        let single: Identity = "a-1.b2.serviceaccount.identity.linkerd.example"
            .parse()
            .unwrap();
        assert_eq!(single.trust_domain(), "example");
        assert_eq!(single.mesh_suffix(), "identity.linkerd.example");
    }

    #[test]
    fn refuses_invalid_identities() {
        let bad = [
            "",
            "web.demo.cluster.local", // the guide's wrong form
            "web.serviceaccount.identity.weft.cluster.local", // no namespace
            "web.demo.serviceaccount.identity.weft", // no trust domain
            "Web.demo.serviceaccount.identity.weft.cluster.local", // upper case
            "-web.demo.serviceaccount.identity.weft.cluster.local", // leading dash
            "web-.demo.serviceaccount.identity.weft.cluster.local", // trailing dash
            "web.de_mo.serviceaccount.identity.weft.cluster.local", // underscore
            "web.x.demo.serviceaccount.identity.weft.cluster.local", // three workload labels
            "web.demo.serviceaccount.identity.weft.cluster..local", // empty label
            "web.demo.serviceaccount.identity.weft.cluster.local.", // trailing dot
            "system:serviceaccount:demo:web", // a token username
            "spiffe://cluster.local/ns/demo/sa/web", // the other form
        ];
        for input in bad {
            assert!(input.parse::<Identity>().is_err(), "accepted {input:?}");
        }
        let long = format!(
            "{}.demo.serviceaccount.identity.weft.{}",
            "a".repeat(63),
            ["b".repeat(63), "c".repeat(63), "d".repeat(40)].join(".")
        );
        assert!(matches!(
            long.parse::<Identity>(),
            Err(IdentityError::TooLong(_, _))
        ));
        assert!(matches!(
            format!("{}.demo.serviceaccount.identity.weft.local", "a".repeat(64))
                .parse::<Identity>(),
            Err(IdentityError::Label { .. })
        ));
    }

    #[test]
    fn error_names_the_bad_part() {
        let err = "web.De.serviceaccount.identity.weft.cluster.local"
            .parse::<Identity>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("namespace \"De\""), "{err}");
        assert!(err.contains("lower-case"), "{err}");
    }

    #[test]
    fn spiffe_round_trip() {
        let id: Identity = "web.demo.serviceaccount.identity.weft.cluster.local"
            .parse()
            .unwrap();
        let spiffe = id.to_spiffe();
        assert_eq!(spiffe.to_string(), "spiffe://cluster.local/ns/demo/sa/web");
        let parsed: SpiffeId = "spiffe://cluster.local/ns/demo/sa/web".parse().unwrap();
        assert_eq!(parsed, spiffe);
        assert_eq!(parsed.workload(), Some(("demo", "web")));
        assert_eq!(parsed.to_identity("weft").unwrap(), id);
    }

    #[test]
    fn spiffe_strictness() {
        let good = ["spiffe://example.org/service", "spiffe://td_1/a/b.c/d-e"];
        for g in good {
            let id: SpiffeId = g.parse().unwrap();
            assert_eq!(id.to_string(), g);
            assert!(id.to_identity("weft").is_err());
        }
        let bad = [
            "spiffe://",
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://example.org/a//b",
            "spiffe://example.org/a/../b",
            "spiffe://Example.org/a",
            "spiffe://example.org:8080/a",
            "spiffe://user@example.org/a",
            "spiffe://example.org/a?x=1",
            "spiffe://example.org/a#f",
            "SPIFFE://example.org/a",
            "https://example.org/a",
            "spiffe:///a",
        ];
        for b in bad {
            assert!(b.parse::<SpiffeId>().is_err(), "accepted {b:?}");
        }
        // A well-formed ID whose names are not DNS labels cannot become an identity.
        let odd: SpiffeId = "spiffe://cluster.local/ns/Demo/sa/web".parse().unwrap();
        assert!(odd.to_identity("weft").is_err());
    }

    #[test]
    fn control_plane_identity() {
        let cp = Identity::control_plane("weft", "cluster.local").unwrap();
        assert_eq!(
            cp.to_string(),
            "weft-identity.weft.serviceaccount.identity.weft.cluster.local"
        );
    }
}
