//! The `config.linkerd.io/*` annotations injection honours, read from the
//! pod first and then its namespace (as Linkerd's injector does), and
//! checked before anything is added: a malformed value is refused, never
//! guessed at.

use pki::mesh_tls::{MeshTls, MeshTlsError};
use serde_json::{Map, Value};

use crate::InjectError;

pub const INJECT: &str = "linkerd.io/inject";
pub const SKIP_INBOUND_PORTS: &str = "config.linkerd.io/skip-inbound-ports";
pub const SKIP_OUTBOUND_PORTS: &str = "config.linkerd.io/skip-outbound-ports";
/// Left on the pod for the control plane (destination and policy read it).
pub const OPAQUE_PORTS: &str = "config.linkerd.io/opaque-ports";
/// Left on the pod or namespace for the control plane; checked here so a
/// typo is refused at admission instead of silently falling back.
pub const DEFAULT_INBOUND_POLICY: &str = "config.linkerd.io/default-inbound-policy";
pub const PROXY_CPU_REQUEST: &str = "config.linkerd.io/proxy-cpu-request";
pub const PROXY_CPU_LIMIT: &str = "config.linkerd.io/proxy-cpu-limit";
pub const PROXY_MEMORY_REQUEST: &str = "config.linkerd.io/proxy-memory-request";
pub const PROXY_MEMORY_LIMIT: &str = "config.linkerd.io/proxy-memory-limit";
/// weft's own: the TLS 1.3 suites and groups between proxies (the proxy's
/// `--tls-cipher-suites` and `--tls-key-exchange`); Linkerd has no such knob.
pub const TLS_CIPHER_SUITES: &str = "config.weft.dev/tls-cipher-suites";
pub const TLS_KEY_EXCHANGE: &str = "config.weft.dev/tls-key-exchange";

/// Linkerd's default inbound policies (the control plane's `DefaultPolicy`).
pub const DEFAULT_POLICIES: &[&str] = &[
    "all-unauthenticated",
    "all-authenticated",
    "cluster-unauthenticated",
    "cluster-authenticated",
    "deny",
    "audit",
];

/// Where an annotation was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Pod,
    Namespace,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Pod => "the pod",
            Scope::Namespace => "its namespace",
        })
    }
}

/// What `check` says of a TLS list annotation, as the proxy will read it:
/// the trimmed value, or the refusal naming the known names.
pub(crate) fn tls_list(
    key: &'static str,
    (value, scope): (&str, Scope),
    check: fn(MeshTls, &str) -> Result<MeshTls, MeshTlsError>,
) -> Result<String, InjectError> {
    check(MeshTls::default(), value).map_err(|source| InjectError::Tls {
        key,
        value: value.to_string(),
        scope,
        source,
    })?;
    Ok(value.trim().to_string())
}

/// The value of `key` on the pod, else on the namespace.
pub(crate) fn effective<'a>(
    pod: Option<&'a Map<String, Value>>,
    ns: &'a Map<String, Value>,
    key: &'static str,
) -> Result<Option<(&'a str, Scope)>, InjectError> {
    for (map, scope) in [(pod, Scope::Pod), (Some(ns), Scope::Namespace)] {
        if let Some(v) = map.and_then(|m| m.get(key)) {
            return match v.as_str() {
                Some(s) => Ok(Some((s, scope))),
                None => Err(InjectError::Annotation {
                    key,
                    value: v.to_string(),
                    scope,
                    expected: "a string (annotation values are strings; quote it)",
                }),
            };
        }
    }
    Ok(None)
}

/// A port list as `weft init` takes it: `80,443,9000-9010`, each 1-65535.
pub(crate) fn port_list(
    key: &'static str,
    (value, scope): (&str, Scope),
) -> Result<Vec<String>, InjectError> {
    let bad = || InjectError::Annotation {
        key,
        value: value.to_string(),
        scope,
        expected: "comma-separated ports (1-65535) or ranges such as 9000-9010",
    };
    let port = |s: &str| s.parse::<u16>().ok().filter(|p| *p > 0);
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('-') {
            Some((a, b)) => match (port(a), port(b)) {
                (Some(a), Some(b)) if a <= b => out.push(format!("{a}-{b}")),
                _ => return Err(bad()),
            },
            None => out.push(port(item).ok_or_else(bad)?.to_string()),
        }
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// A Kubernetes resource quantity (`100m`, `0.5`, `64Mi`, `1e3`).
pub(crate) fn quantity(
    key: &'static str,
    (value, scope): (&str, Scope),
) -> Result<String, InjectError> {
    const SUFFIXES: &[&str] = &[
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(split);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && !number.starts_with('.');
    let exponent = suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()));
    if number_ok && (SUFFIXES.contains(&suffix) || exponent) {
        Ok(value.to_string())
    } else {
        Err(InjectError::Annotation {
            key,
            value: value.to_string(),
            scope,
            expected: "a Kubernetes quantity such as 100m, 0.5, 64Mi or 1Gi",
        })
    }
}

/// One of [`DEFAULT_POLICIES`].
pub(crate) fn default_policy((value, scope): (&str, Scope)) -> Result<(), InjectError> {
    if DEFAULT_POLICIES.contains(&value) {
        Ok(())
    } else {
        Err(InjectError::Annotation {
            key: DEFAULT_INBOUND_POLICY,
            value: value.to_string(),
            scope,
            expected: "one of all-unauthenticated, all-authenticated, cluster-unauthenticated, cluster-authenticated, deny, audit",
        })
    }
}
