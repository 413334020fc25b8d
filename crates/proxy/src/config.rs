//! The proxy's one configuration struct, parsed once by the CLI.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pki::Identity;

/// What to do with outbound connections to destinations that are not meshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plaintext {
    Allow,
    Deny,
}

/// Ports mode: a local listener forwarded to a workload's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMapping {
    pub listen: SocketAddr,
    /// `ns/name:port`, resolved by the destination service.
    pub target: String,
}

impl std::str::FromStr for OutboundMapping {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (l, t) = s.split_once('=').ok_or_else(|| {
            format!("{s:?}: expected LISTEN=NS/NAME:PORT, e.g. 127.0.0.1:7001=demo/backend:8080")
        })?;
        let listen = l
            .parse()
            .map_err(|_| format!("{s:?}: {l:?} is not an address like 127.0.0.1:7001"))?;
        let (wl, port) = t
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: {t:?} lacks :PORT"))?;
        port.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{s:?}: {port:?} is not a port"))?;
        let (ns, name) = wl
            .split_once('/')
            .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
            .ok_or_else(|| format!("{s:?}: {wl:?} is not NS/NAME"))?;
        Ok(Self {
            listen,
            target: format!("{ns}/{name}:{port}"),
        })
    }
}

/// The workload a proxy fronts: an ExternalWorkload (`ns/name`, hosts) or a
/// Kubernetes pod (Linkerd's `{"ns":..,"pod":..}`, as the injector writes it
/// from the downward API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadRef {
    pub namespace: String,
    pub name: String,
    pub kind: WorkloadKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    External,
    Pod,
}

impl WorkloadRef {
    /// The workload string of the policy API (`InboundServerPolicies`).
    pub fn policy_json(&self) -> String {
        let key = match self.kind {
            WorkloadKind::External => "external_workload",
            WorkloadKind::Pod => "pod",
        };
        serde_json::json!({"ns": self.namespace, key: self.name}).to_string()
    }
}

/// `ns/name`: what discovery resolves and the fleet view lists.
impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for WorkloadRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected =
            "expected NAMESPACE/NAME (an ExternalWorkload) or {\"ns\":NAMESPACE,\"pod\":NAME}";
        let valid = |n: &str| !n.is_empty() && !n.contains('/') && !n.contains("$(");
        if s.trim_start().starts_with('{') {
            let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(s)
                .map_err(|e| format!("{s:?}: not JSON ({e}); {expected}"))?;
            let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
            let (kind, name) = match (text("pod"), text("external_workload")) {
                (Some(p), None) => (WorkloadKind::Pod, p),
                (None, Some(e)) => (WorkloadKind::External, e),
                _ => {
                    return Err(format!(
                        "{s:?}: names neither one pod nor one external_workload; {expected}"
                    ));
                }
            };
            let namespace = text("ns").ok_or_else(|| format!("{s:?}: lacks \"ns\"; {expected}"))?;
            if !valid(&namespace) || !valid(&name) {
                return Err(format!(
                    "{s:?}: empty or unexpanded namespace or name (is the downward API env set?); {expected}"
                ));
            }
            return Ok(Self {
                namespace,
                name,
                kind,
            });
        }
        match s.split_once('/') {
            Some((ns, name)) if valid(ns) && valid(name) => Ok(Self {
                namespace: ns.to_string(),
                name: name.to_string(),
                kind: WorkloadKind::External,
            }),
            _ => Err(format!("{s:?}: {expected}")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub workload: WorkloadRef,
    pub identity: Identity,
    pub token_file: Option<PathBuf>,
    /// The control plane: identity service and destination service.
    pub identity_addr: String,
    pub destination_addr: String,
    /// The policy service (InboundServerPolicies).
    pub policy_addr: String,
    pub control_plane_identity: Identity,
    /// Anchors to trust at start (and to verify the control plane with).
    pub anchors_file: PathBuf,
    pub inbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Tap listener: `Tap.Observe` over mTLS, for the control plane only.
    pub tap_addr: SocketAddr,
    /// Transparent outbound listener (connections redirected by `weft init`).
    pub outbound_addr: Option<SocketAddr>,
    pub outbound: Vec<OutboundMapping>,
    pub detect_timeout: Duration,
    pub discovery_timeout: Duration,
    pub min_refresh: Duration,
    pub plaintext: Plaintext,
    /// How long SIGTERM waits for connections in flight.
    pub shutdown_grace: Duration,
    /// Connection cap and timeouts of the admin listener.
    pub admin_limits: bounds::Limits,
    /// The inbound listener: connection cap, the deadline for the first
    /// bytes and the mTLS handshake with its transport header, and the idle
    /// timeout of a forwarded connection.
    pub inbound_limits: bounds::Limits,
    /// The outbound listeners: connection cap, the deadline for reaching the
    /// destination (discovery, connect, mTLS, transport header), idle timeout.
    pub outbound_limits: bounds::Limits,
    /// The TLS 1.3 suites and groups offered and accepted between proxies.
    pub mesh_tls: pki::mesh_tls::MeshTls,
}

/// One `key value` row per setting, as `weft proxy` prints them at start.
impl fmt::Display for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token_file = self.token_file.as_ref().map(|p| p.display().to_string());
        let outbound_addr = self.outbound_addr.map(|a| a.to_string());
        let mut rows: Vec<(&str, String)> = vec![
            ("workload", self.workload.policy_json()),
            ("identity", self.identity.to_string()),
            ("token-file", token_file.unwrap_or_else(|| "(none)".into())),
            ("identity-addr", self.identity_addr.clone()),
            ("destination-addr", self.destination_addr.clone()),
            ("policy-addr", self.policy_addr.clone()),
            (
                "control-plane-identity",
                self.control_plane_identity.to_string(),
            ),
            (
                "trust-anchors-file",
                self.anchors_file.display().to_string(),
            ),
            ("inbound-addr", self.inbound_addr.to_string()),
            ("admin-addr", self.admin_addr.to_string()),
            ("tap-addr", self.tap_addr.to_string()),
            ("admin-limits", self.admin_limits.to_string()),
            ("inbound-limits", self.inbound_limits.to_string()),
            ("outbound-limits", self.outbound_limits.to_string()),
            ("mesh-tls", self.mesh_tls.to_string()),
            (
                "outbound-addr",
                outbound_addr.unwrap_or_else(|| "(off)".into()),
            ),
        ];
        rows.extend(
            self.outbound
                .iter()
                .map(|m| ("outbound", format!("{} -> {}", m.listen, m.target))),
        );
        rows.extend([
            (
                "detect-timeout",
                format!("{}ms", self.detect_timeout.as_millis()),
            ),
            (
                "discovery-timeout",
                format!("{}ms", self.discovery_timeout.as_millis()),
            ),
            (
                "identity-min-refresh",
                format!("{}s", self.min_refresh.as_secs()),
            ),
            (
                "outbound-plaintext",
                format!("{:?}", self.plaintext).to_lowercase(),
            ),
        ]);
        rows.into_iter()
            .try_for_each(|(k, v)| writeln!(f, "  {k:<24} {v}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings() {
        let m: OutboundMapping = "127.0.0.1:7001=demo/backend:8080".parse().unwrap();
        assert_eq!(m.target, "demo/backend:8080");
        for bad in [
            "x",
            "127.0.0.1:7001=demo/backend",
            "127.0.0.1:7001=backend:8080",
            "nope=demo/b:1",
            "127.0.0.1:1=demo/b:0",
        ] {
            assert!(bad.parse::<OutboundMapping>().is_err(), "{bad}");
        }
    }

    #[test]
    fn workload_refs() {
        let e: WorkloadRef = "demo/backend".parse().unwrap();
        assert_eq!(e.kind, WorkloadKind::External);
        assert_eq!(e.to_string(), "demo/backend");
        assert_eq!(
            e.policy_json(),
            r#"{"external_workload":"backend","ns":"demo"}"#
        );
        let p: WorkloadRef = r#"{"ns":"shop","pod":"web-7d9f-abcde"}"#.parse().unwrap();
        assert_eq!(p.kind, WorkloadKind::Pod);
        assert_eq!(p.to_string(), "shop/web-7d9f-abcde");
        assert_eq!(p.policy_json(), r#"{"ns":"shop","pod":"web-7d9f-abcde"}"#);
        let x: WorkloadRef = r#"{"ns":"h","external_workload":"db"}"#.parse().unwrap();
        assert_eq!(x.kind, WorkloadKind::External);
        for bad in [
            "backend",
            "/backend",
            "demo/",
            "a/b/c",
            r#"{"ns":"shop"}"#,
            r#"{"ns":"shop","pod":"a","external_workload":"b"}"#,
            r#"{"pod":"a"}"#,
            r#"{"ns":"$(WEFT_POD_NAMESPACE)","pod":"a"}"#,
            r#"{"ns":"","pod":"a"}"#,
            r#"{"ns":"shop","pod":7}"#,
            "{not json",
        ] {
            let err = bad.parse::<WorkloadRef>().unwrap_err();
            assert!(err.contains("expected"), "{bad}: {err}");
        }
    }
}
