//! `v1` `Service` and `discovery.k8s.io/v1` `EndpointSlice`, read for
//! discovery: which addresses and ports stand behind a Service. Like Pods,
//! the API server owns their schema; only the fields read must have shape.

use serde::Deserialize;
use serde_json::Value;

use super::types::Meta;

/// The EndpointSlice label naming its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub meta: Meta,
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct ServiceSpec {
    /// An address, or `None` for a headless Service.
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    /// A number or a container port's name; resolved by the EndpointSlice
    /// controller into each slice's ports.
    #[serde(default, rename = "targetPort")]
    pub target_port: Option<Value>,
    #[serde(default)]
    pub protocol: Option<String>,
}

impl Service {
    pub fn is_headless(&self) -> bool {
        self.spec.cluster_ip.as_deref() == Some("None")
    }

    /// The cluster IPs, parsed (a headless Service has none).
    pub fn cluster_ips(&self) -> Vec<std::net::IpAddr> {
        let mut ips: Vec<std::net::IpAddr> = self
            .spec
            .cluster_ips
            .iter()
            .chain(self.spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        ips.sort();
        ips.dedup();
        ips
    }

    /// The TCP port the Service exposes as `port`.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.spec
            .ports
            .iter()
            .find(|p| p.port == port && p.protocol.as_deref().is_none_or(|p| p == "TCP"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    pub meta: Meta,
    pub body: EndpointSliceBody,
}

/// An EndpointSlice's fields live at the top level, beside metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSliceBody {
    #[serde(default)]
    pub address_type: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: EndpointConditions,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub target_ref: Option<EndpointTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct EndpointConditions {
    #[serde(default)]
    pub ready: Option<bool>,
    #[serde(default)]
    pub terminating: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EndpointTarget {
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EndpointPort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub protocol: Option<String>,
}

impl EndpointSlice {
    /// The Service this slice belongs to.
    pub fn service(&self) -> Option<&str> {
        self.meta.labels.get(LABEL_SERVICE_NAME).map(String::as_str)
    }

    /// The slice's number for the Service port named `name` (Service ports
    /// map to slice ports by name; a single unnamed port has no name).
    pub fn port_for(&self, name: Option<&str>) -> Option<u16> {
        let name = name.unwrap_or("");
        self.body
            .ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or("") == name)
            .and_then(|p| p.port)
    }

    /// Ready endpoints (a missing condition means ready, as the API
    /// defines it; a terminating endpoint is never served).
    pub fn ready(&self) -> impl Iterator<Item = &Endpoint> {
        self.body.endpoints.iter().filter(|e| {
            e.conditions.ready.unwrap_or(true) && !e.conditions.terminating.unwrap_or(false)
        })
    }
}
