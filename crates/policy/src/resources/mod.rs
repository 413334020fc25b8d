//! Resources (Namespace, ExternalWorkload and Linkerd's policy kinds) as
//! Kubernetes-style YAML documents. A source (the control plane's watched
//! directory now, Kubernetes watches next) hands each document's text with
//! its [`Origin`] to [`read_document`], and one read of everything to
//! [`merge`]; the indexes see only the resulting [`Snapshot`]s, whichever
//! source produced them.
//!
//! Layout: `types` (the kinds), `parse` (documents to objects, strict on
//! `spec`), `snapshot` (the pure merge rules), `policy` (the policy kinds)
//! and `policy_check` (their admission checks).

mod de;
mod parse;
mod pod;
mod policy;
mod policy_check;
mod problem;
mod snapshot;
mod types;
mod workload;

pub use parse::{claimed_addresses, claimed_kinds, lint, parse_file};
pub use policy::{
    AuthenticationKind, AuthenticationRef, AuthorizationPolicy, AuthorizationPolicySpec, Cidr,
    DefaultPolicy, HeaderMatch, HeaderMatchType, HttpRoute, HttpRouteFilter, HttpRouteMatch,
    HttpRouteRule, HttpRouteSpec, IdentityRef, IdentityRefKind, LabelSelector,
    LabelSelectorRequirement, MeshTlsAuthentication, MeshTlsAuthenticationSpec, Network,
    NetworkAuthentication, NetworkAuthenticationSpec, ParentRef, PathMatch, PathMatchType,
    ProxyProtocol, SelectorOperator, Server, ServerPort, ServerSpec, TargetKind, TargetRef,
};
pub use pod::{
    Container, ContainerPort, ENV_LINKERD_INBOUND, ENV_WEFT_INBOUND, LABEL_CONTROL_PLANE_NS, Pod,
    PodSpec, PodStatus, ProbeRoute,
};
pub use problem::{Problem, Severity};
pub use snapshot::{DirRead, FileOutcome, Origin, Snapshot, Sourced, merge};
pub use workload::{Workload, WorkloadKind};
pub use types::{
    ExternalWorkload, ExternalWorkloadSpec, Kind, MeshTls, Meta, Namespace, Object, ObjectKey,
    PortSpec, WorkloadIp, parse_identity,
};

#[cfg(test)]
mod parse_tests;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod snapshot_tests;

/// Whether a directory entry is a resource file: not hidden, not an editor
/// backup or swap file, and named `.yaml` or `.yml`.
pub fn is_resource_file(name: &str) -> bool {
    if name.starts_with('.') || name.ends_with('~') {
        return false;
    }
    let lower = name.to_ascii_lowercase();
    (lower.ends_with(".yaml") && lower.len() > 5) || (lower.ends_with(".yml") && lower.len() > 4)
}

/// One document set (a file's text) as the snapshot takes it: its objects
/// and lint warnings, or the problems that refuse it. Pure: the source did
/// the reading.
pub fn read_document(
    origin: &Origin,
    text: &str,
    control_plane_ns: &str,
    trust_domain: &str,
) -> FileOutcome {
    match parse_file(origin, text) {
        Ok(objects) => {
            let warnings = lint(origin, &objects, control_plane_ns, trust_domain);
            FileOutcome::Parsed { objects, warnings }
        }
        Err(problems) => FileOutcome::Refused(problems),
    }
}
