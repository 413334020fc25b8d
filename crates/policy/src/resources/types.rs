//! The resource kinds weft reads, shaped like the Kubernetes objects they are,
//! so a manifest written for Linkerd (or `kubectl get -o yaml` output) loads
//! unchanged.
//!
//! Adding a kind: a [`Kind`] variant (name, apiVersions, scope), an [`Object`]
//! variant, and either an arm in `Doc::parse` (in `parse`) or, for a policy
//! kind, a `PolicySpec` variant and check in `policy_check`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use pki::{Identity, IdentityError, SpiffeId};
use serde::Deserialize;

use super::policy::{
    AuthorizationPolicy, HttpRoute, MeshTlsAuthentication, NetworkAuthentication, Server,
};

/// Every kind weft understands, in the order objects sort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    ExternalWorkload,
    Pod,
    Service,
    EndpointSlice,
    Server,
    AuthorizationPolicy,
    MeshTlsAuthentication,
    NetworkAuthentication,
    HttpRoute,
}

impl Kind {
    pub const ALL: &'static [Kind] = &[
        Kind::Namespace,
        Kind::ExternalWorkload,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Server,
        Kind::AuthorizationPolicy,
        Kind::MeshTlsAuthentication,
        Kind::NetworkAuthentication,
        Kind::HttpRoute,
    ];

    /// The Kubernetes `kind`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::ExternalWorkload => "ExternalWorkload",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Server => "Server",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::MeshTlsAuthentication => "MeshTLSAuthentication",
            Kind::NetworkAuthentication => "NetworkAuthentication",
            Kind::HttpRoute => "HTTPRoute",
        }
    }

    /// The `apiVersion` to write for this kind (the first of
    /// [`Kind::api_versions`]).
    pub fn api_version(self) -> &'static str {
        self.api_versions()[0]
    }

    /// Every `apiVersion` accepted for this kind, preferred first.
    pub fn api_versions(self) -> &'static [&'static str] {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service => &["v1"],
            Kind::EndpointSlice => &["discovery.k8s.io/v1"],
            Kind::ExternalWorkload => &["workload.linkerd.io/v1beta1"],
            Kind::Server => &[
                "policy.linkerd.io/v1beta3",
                "policy.linkerd.io/v1beta2",
                "policy.linkerd.io/v1beta1",
            ],
            Kind::AuthorizationPolicy
            | Kind::MeshTlsAuthentication
            | Kind::NetworkAuthentication => &["policy.linkerd.io/v1alpha1"],
            Kind::HttpRoute => &[
                "policy.linkerd.io/v1beta3",
                "policy.linkerd.io/v1beta2",
                "policy.linkerd.io/v1beta1",
                "gateway.networking.k8s.io/v1",
                "gateway.networking.k8s.io/v1beta1",
            ],
        }
    }

    /// Whether objects of this kind live in a namespace (else cluster-scoped).
    pub fn namespaced(self) -> bool {
        match self {
            Kind::Namespace => false,
            Kind::ExternalWorkload
            | Kind::Pod
            | Kind::Service
            | Kind::EndpointSlice
            | Kind::Server
            | Kind::AuthorizationPolicy
            | Kind::MeshTlsAuthentication
            | Kind::NetworkAuthentication
            | Kind::HttpRoute => true,
        }
    }

    /// The kind a document declares, or why it is not one weft reads.
    pub fn resolve(api_version: &str, kind: &str) -> Result<Kind, String> {
        match Kind::ALL.iter().find(|k| k.name() == kind) {
            Some(k) if k.api_versions().contains(&api_version) => Ok(*k),
            Some(k) => Err(format!(
                "apiVersion {api_version:?} is not supported for {kind}; use apiVersion: {}",
                k.api_version()
            )),
            None => Err(format!(
                "unknown kind {kind:?} (apiVersion {api_version:?}); supported: {}",
                Kind::ALL
                    .iter()
                    .map(|k| format!("{} {}", k.api_version(), k.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What identifies an object: two definitions with the same key are the same
/// object, and only one of them can be in force.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    /// None for cluster-scoped kinds.
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    /// The smallest key of a kind, for range scans over one kind.
    pub(crate) fn first_of(kind: Kind) -> Self {
        ObjectKey {
            kind,
            namespace: None,
            name: String::new(),
        }
    }
}

impl fmt::Display for ObjectKey {
    /// `ExternalWorkload demo/backend`, or `Namespace demo`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// The metadata weft uses; everything else in `metadata` (uid,
/// resourceVersion, managedFields, ...) is accepted and ignored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    pub name: String,
    /// `default` when a namespaced object names none; None when cluster-scoped.
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// One resource in force or on offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Namespace(Namespace),
    ExternalWorkload(ExternalWorkload),
    Pod(super::pod::Pod),
    Service(super::service::Service),
    EndpointSlice(super::service::EndpointSlice),
    Server(Server),
    AuthorizationPolicy(AuthorizationPolicy),
    MeshTlsAuthentication(MeshTlsAuthentication),
    NetworkAuthentication(NetworkAuthentication),
    HttpRoute(HttpRoute),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::ExternalWorkload(_) => Kind::ExternalWorkload,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Server(_) => Kind::Server,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::MeshTlsAuthentication(_) => Kind::MeshTlsAuthentication,
            Object::NetworkAuthentication(_) => Kind::NetworkAuthentication,
            Object::HttpRoute(_) => Kind::HttpRoute,
        }
    }

    pub fn meta(&self) -> &Meta {
        match self {
            Object::Namespace(o) => &o.meta,
            Object::ExternalWorkload(o) => &o.meta,
            Object::Pod(o) => &o.meta,
            Object::Service(o) => &o.meta,
            Object::EndpointSlice(o) => &o.meta,
            Object::Server(o) => &o.meta,
            Object::AuthorizationPolicy(o) => &o.meta,
            Object::MeshTlsAuthentication(o) => &o.meta,
            Object::NetworkAuthentication(o) => &o.meta,
            Object::HttpRoute(o) => &o.meta,
        }
    }

    pub fn key(&self) -> ObjectKey {
        let meta = self.meta();
        ObjectKey {
            kind: self.kind(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
        }
    }
}

/// `v1` `Namespace`: only its labels and annotations matter to weft (they
/// carry per-namespace settings such as the default inbound policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub meta: Meta,
}

/// `workload.linkerd.io/v1beta1` `ExternalWorkload`: a workload outside
/// Kubernetes, which in standalone mode plays the part of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalWorkload {
    pub meta: Meta,
    pub spec: ExternalWorkloadSpec,
}

impl ExternalWorkload {
    /// The DNS-form identity the workload presents. A SPIFFE ID is translated
    /// with `control_plane_ns`, which the SPIFFE form does not carry.
    pub fn identity(&self, control_plane_ns: &str) -> Result<Identity, IdentityError> {
        parse_identity(&self.spec.mesh_tls.identity, control_plane_ns)
    }
}

/// Reads an identity in either form: `<sa>.<ns>.serviceaccount.identity.<cp-ns>.<td>`
/// or `spiffe://<td>/ns/<ns>/sa/<sa>`.
pub fn parse_identity(s: &str, control_plane_ns: &str) -> Result<Identity, IdentityError> {
    // Anything with a scheme goes to the SPIFFE parser, whose errors explain
    // a wrong scheme better than "not of the form <sa>.<ns>...".
    if s.contains("://") {
        s.parse::<SpiffeId>()?.to_identity(control_plane_ns)
    } else {
        s.parse()
    }
}

/// Strict: a misspelt field here would silently change who may connect, so
/// unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalWorkloadSpec {
    #[serde(rename = "meshTLS")]
    pub mesh_tls: MeshTls,
    #[serde(rename = "workloadIPs", default)]
    pub workload_ips: Vec<WorkloadIp>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTls {
    /// DNS-form identity or SPIFFE ID; see [`ExternalWorkload::identity`].
    pub identity: String,
    /// The TLS server name clients use when connecting to the workload.
    pub server_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadIp {
    pub ip: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub port: u16,
    pub name: Option<String>,
    pub protocol: Option<String>,
}
