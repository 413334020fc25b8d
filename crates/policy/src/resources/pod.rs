//! `v1` `Pod`, read for what the mesh needs of it: labels (Server
//! selectors), service account (identity), container ports and probes
//! (policy), the proxy's inbound port, addresses and phase (discovery).
//! The API server owns the Pod schema, so unknown fields are ignored here;
//! only the fields weft reads must have the right shape.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use super::types::Meta;

/// The label Linkerd's injector (and weft's) puts on every meshed pod; its
/// value is the control plane's namespace.
pub const LABEL_CONTROL_PLANE_NS: &str = "linkerd.io/control-plane-ns";
/// The proxy container's inbound listener, as Linkerd's injector sets it.
pub const ENV_LINKERD_INBOUND: &str = "LINKERD2_PROXY_INBOUND_LISTEN_ADDR";
/// The same for weft's proxy.
pub const ENV_WEFT_INBOUND: &str = "WEFT_PROXY_INBOUND_ADDR";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub meta: Meta,
    pub spec: PodSpec,
    pub status: PodStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub service_account_name: Option<String>,
    #[serde(default)]
    pub host_network: bool,
    #[serde(default)]
    pub containers: Vec<Container>,
    /// Native sidecars (a proxy injected as an init container that keeps
    /// running) live here.
    #[serde(default)]
    pub init_containers: Vec<Container>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub liveness_probe: Option<Probe>,
    #[serde(default)]
    pub readiness_probe: Option<Probe>,
    #[serde(default)]
    pub startup_probe: Option<Probe>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    pub container_port: u16,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    #[serde(default)]
    pub http_get: Option<HttpGet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HttpGet {
    #[serde(default)]
    pub path: Option<String>,
    /// A number or the name of a container port.
    pub port: Value,
    #[serde(default)]
    pub scheme: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct PodStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<IpAddr>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PodIp {
    pub ip: IpAddr,
}

/// A probe the kubelet sends over plain HTTP: allowed without a client
/// identity on its port, whatever the policy, so meshing never fails probes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProbeRoute {
    pub port: u16,
    pub path: String,
}

impl Pod {
    /// Whether weft serves this pod: injected for this control plane, and
    /// with an address of its own (not host-network, not finished: a
    /// finished pod's IP is reused by others).
    pub fn is_meshed(&self, control_plane_ns: &str) -> bool {
        self.meta
            .labels
            .get(LABEL_CONTROL_PLANE_NS)
            .map(String::as_str)
            == Some(control_plane_ns)
            && self.has_own_address()
    }

    /// Whether the pod's IPs are its own now (for the address index).
    pub fn has_own_address(&self) -> bool {
        !self.spec.host_network
            && !matches!(
                self.status.phase.as_deref(),
                Some("Succeeded") | Some("Failed")
            )
    }

    pub fn service_account(&self) -> &str {
        self.spec
            .service_account_name
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
    }

    /// Every address the pod holds (`podIPs`, else `podIP`).
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self.status.pod_ips.iter().map(|p| p.ip).collect();
        if ips.is_empty() {
            ips.extend(self.status.pod_ip);
        }
        ips
    }

    fn all_containers(&self) -> impl Iterator<Item = &Container> {
        self.spec
            .containers
            .iter()
            .chain(self.spec.init_containers.iter())
    }

    /// The application's TCP ports, with their names.
    pub fn ports(&self) -> Vec<(u16, Option<String>)> {
        let mut out: Vec<(u16, Option<String>)> = self
            .all_containers()
            .flat_map(|c| c.ports.iter())
            .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
            .map(|p| (p.container_port, p.name.clone()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The proxy's inbound port from its container's environment, if the
    /// pod says (Linkerd's or weft's variable).
    pub fn proxy_inbound_port(&self) -> Option<Result<u16, String>> {
        let var = self
            .all_containers()
            .flat_map(|c| c.env.iter())
            .find(|e| e.name == ENV_LINKERD_INBOUND || e.name == ENV_WEFT_INBOUND)?;
        let value = var.value.as_deref().unwrap_or("");
        let port = value
            .rsplit_once(':')
            .map_or(value, |(_, p)| p)
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0);
        Some(port.ok_or_else(|| {
            format!(
                "env {}: {value:?} is not an address with a port (e.g. 0.0.0.0:4143)",
                var.name
            )
        }))
    }

    /// Each container's HTTP probe (liveness, readiness, startup) as port
    /// and path; a probe naming a port that no container declares is left
    /// out (the kubelet cannot send it either).
    pub fn probe_routes(&self) -> Vec<ProbeRoute> {
        let mut out = Vec::new();
        for c in &self.spec.containers {
            let probes = [&c.liveness_probe, &c.readiness_probe, &c.startup_probe];
            for get in probes
                .into_iter()
                .flatten()
                .filter_map(|p| p.http_get.as_ref())
            {
                if get
                    .scheme
                    .as_deref()
                    .is_some_and(|s| !s.eq_ignore_ascii_case("HTTP"))
                {
                    continue;
                }
                let port = match &get.port {
                    Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                    Value::String(name) => name.parse::<u16>().ok().or_else(|| {
                        c.ports
                            .iter()
                            .find(|p| p.name.as_deref() == Some(name.as_str()))
                            .map(|p| p.container_port)
                    }),
                    _ => None,
                };
                if let Some(port) = port.filter(|p| *p != 0) {
                    let path = get
                        .path
                        .clone()
                        .filter(|p| !p.is_empty())
                        .unwrap_or_else(|| "/".into());
                    out.push(ProbeRoute { port, path });
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}
