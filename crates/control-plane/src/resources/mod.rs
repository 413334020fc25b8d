//! Resources (Namespace, ExternalWorkload and Linkerd's policy kinds) read
//! from a directory of Kubernetes-style YAML files, the standalone
//! counterpart of Kubernetes watches. The indexes above see only
//! [`Snapshot`]s, whichever source produced them.
//!
//! Layout: `types` (the kinds), `parse` (files to objects, strict on `spec`),
//! `snapshot` (the pure merge rules), `source` (the watched directory),
//! `policy` (the policy kinds) and `policy_check` (their admission checks).

mod de;
mod parse;
mod policy;
mod policy_check;
mod problem;
mod snapshot;
mod source;
mod types;

pub use parse::{claimed_addresses, claimed_kinds, lint, parse_file};
pub use policy::{
    AuthenticationKind, AuthenticationRef, AuthorizationPolicy, AuthorizationPolicySpec, Cidr,
    DefaultPolicy, HeaderMatch, HeaderMatchType, HttpRoute, HttpRouteFilter, HttpRouteMatch,
    HttpRouteRule, HttpRouteSpec, IdentityRef, IdentityRefKind, LabelSelector,
    LabelSelectorRequirement, MeshTlsAuthentication, MeshTlsAuthenticationSpec, Network,
    NetworkAuthentication, NetworkAuthenticationSpec, ParentRef, PathMatch, PathMatchType,
    ProxyProtocol, SelectorOperator, Server, ServerPort, ServerSpec, TargetKind, TargetRef,
};
pub use problem::{Problem, Severity};
pub use snapshot::{DirRead, FileOutcome, Snapshot, Sourced, merge};
pub use source::{DirSource, is_resource_file};
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
#[cfg(test)]
mod source_tests;
