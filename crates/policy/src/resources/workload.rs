//! One view of a meshed workload, whichever object declares it: an
//! ExternalWorkload (hosts, and standalone mode) or a Pod carrying the
//! injector's marker. Policy, discovery and `explain` read only this.

use std::fmt;
use std::net::IpAddr;

use pki::{Identity, IdentityError};

use super::pod::{Pod, ProbeRoute};
use super::snapshot::Snapshot;
use super::types::{ExternalWorkload, Kind, Meta, Object, parse_identity};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    ExternalWorkload,
    Pod,
}

impl WorkloadKind {
    /// The key naming this kind in a proxy's workload string
    /// (`{"ns":..,"pod":..}`, Linkerd's form).
    pub fn workload_key(self) -> &'static str {
        match self {
            WorkloadKind::ExternalWorkload => "external_workload",
            WorkloadKind::Pod => "pod",
        }
    }

    fn kind(self) -> Kind {
        match self {
            WorkloadKind::ExternalWorkload => Kind::ExternalWorkload,
            WorkloadKind::Pod => Kind::Pod,
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind().name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub meta: Meta,
    /// As written (ExternalWorkload) or derived from the service account
    /// (Pod); read with [`Workload::identity`].
    pub identity: String,
    pub ips: Vec<IpAddr>,
    /// Application ports and their names (for Servers that name a port).
    pub ports: Vec<(u16, Option<String>)>,
    /// Kubelet probes, allowed without identity (pods only).
    pub probes: Vec<ProbeRoute>,
    /// The proxy's inbound port as the pod spec gives it; None: the
    /// annotation or the default decides.
    pub proxy_port: Option<Result<u16, String>>,
}

impl Workload {
    pub fn namespace(&self) -> &str {
        self.meta.namespace.as_deref().unwrap_or("default")
    }

    pub fn identity(&self, control_plane_ns: &str) -> Result<Identity, IdentityError> {
        parse_identity(&self.identity, control_plane_ns)
    }

    pub fn port_name(&self, port: u16) -> Option<&str> {
        self.ports
            .iter()
            .find(|(p, _)| *p == port)
            .and_then(|(_, n)| n.as_deref())
    }

    /// Whether a Server's selector applies: pods by `podSelector`;
    /// ExternalWorkloads by `externalWorkloadSelector`, or by `podSelector`
    /// too (in standalone mode they play the part of pods, so Linkerd's
    /// manifests apply unchanged).
    pub fn selected_by(&self, server: &super::Server) -> bool {
        let sel = match self.kind {
            WorkloadKind::Pod => server.spec.pod_selector.as_ref(),
            WorkloadKind::ExternalWorkload => server
                .spec
                .external_workload_selector
                .as_ref()
                .or(server.spec.pod_selector.as_ref()),
        };
        sel.is_some_and(|sel| sel.matches(&self.meta.labels))
    }

    /// The workload string a proxy sends to name this workload.
    pub fn workload_string(&self) -> String {
        serde_json::json!({ "ns": self.namespace(), self.kind.workload_key(): self.meta.name })
            .to_string()
    }
}

impl fmt::Display for Workload {
    /// `Pod demo/web-1`, `ExternalWorkload demo/backend`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace(), self.meta.name)
    }
}

impl From<&ExternalWorkload> for Workload {
    fn from(w: &ExternalWorkload) -> Self {
        Workload {
            kind: WorkloadKind::ExternalWorkload,
            meta: w.meta.clone(),
            identity: w.spec.mesh_tls.identity.clone(),
            ips: w.spec.workload_ips.iter().map(|i| i.ip).collect(),
            ports: w
                .spec
                .ports
                .iter()
                .map(|p| (p.port, p.name.clone()))
                .collect(),
            probes: Vec::new(),
            proxy_port: None,
        }
    }
}

impl Pod {
    /// The pod as a workload of the control plane in `control_plane_ns`
    /// with `trust_domain`; None when it is not meshed by it.
    pub fn workload(&self, control_plane_ns: &str, trust_domain: &str) -> Option<Workload> {
        if !self.is_meshed(control_plane_ns) {
            return None;
        }
        let ns = self.meta.namespace.as_deref().unwrap_or("default");
        // Kubernetes names are valid labels, so this only fails on objects
        // the API server would not hold; the text then fails to parse later
        // and the pod is refused, never trusted.
        let identity = Identity::new(self.service_account(), ns, control_plane_ns, trust_domain)
            .map(|i| i.to_string())
            .unwrap_or_else(|_| format!("{}.{ns}.serviceaccount", self.service_account()));
        Some(Workload {
            kind: WorkloadKind::Pod,
            meta: self.meta.clone(),
            identity,
            ips: self.ips(),
            ports: self.ports(),
            probes: self.probe_routes(),
            proxy_port: self.proxy_inbound_port(),
        })
    }
}

impl Snapshot {
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.of_kind(Kind::Pod).filter_map(|s| match &s.object {
            Object::Pod(p) => Some(p),
            _ => None,
        })
    }

    /// Every meshed workload: ExternalWorkloads, then meshed pods.
    pub fn workloads<'a>(
        &'a self,
        control_plane_ns: &'a str,
        trust_domain: &'a str,
    ) -> impl Iterator<Item = Workload> + 'a {
        self.external_workloads().map(Workload::from).chain(
            self.pods()
                .filter_map(move |p| p.workload(control_plane_ns, trust_domain)),
        )
    }

    /// One meshed workload by kind, namespace and name.
    pub fn workload(
        &self,
        kind: WorkloadKind,
        namespace: &str,
        name: &str,
        control_plane_ns: &str,
        trust_domain: &str,
    ) -> Option<Workload> {
        let object = self.get(&super::ObjectKey {
            kind: kind.kind(),
            namespace: Some(namespace.to_string()),
            name: name.to_string(),
        })?;
        match object {
            Object::ExternalWorkload(w) => Some(Workload::from(w)),
            Object::Pod(p) => p.workload(control_plane_ns, trust_domain),
            _ => None,
        }
    }
}
