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

mod core_kinds;
mod de;
mod parse;
mod pod;
mod policy;
mod policy_check;
mod problem;
mod service;
mod snapshot;
mod types;
mod workload;

pub(crate) use parse::read_documents;
pub use parse::{claimed_addresses, claimed_kinds, lint, parse_file, parse_values};
pub use pod::{
    Container, ContainerPort, ENV_LINKERD_INBOUND, ENV_WEFT_INBOUND, LABEL_CONTROL_PLANE_NS, Pod,
    PodSpec, PodStatus, ProbeRoute,
};
pub use policy::{
    AuthenticationKind, AuthenticationRef, AuthorizationPolicy, AuthorizationPolicySpec, Cidr,
    DefaultPolicy, HeaderMatch, HeaderMatchType, HttpRoute, HttpRouteFilter, HttpRouteMatch,
    HttpRouteRule, HttpRouteSpec, IdentityRef, IdentityRefKind, LabelSelector,
    LabelSelectorRequirement, MeshTlsAuthentication, MeshTlsAuthenticationSpec, Network,
    NetworkAuthentication, NetworkAuthenticationSpec, ParentRef, PathMatch, PathMatchType,
    ProxyProtocol, SelectorOperator, Server, ServerPort, ServerSpec, TargetKind, TargetRef,
};
pub(crate) use policy_check::selector_is_valid;
pub use problem::{Problem, Severity};
pub use service::{
    Endpoint, EndpointSlice, EndpointSliceBody, LABEL_SERVICE_NAME, Service, ServicePort,
    ServiceSpec,
};
pub use snapshot::{DirRead, FileOutcome, Origin, Snapshot, Sourced, merge, replace};
pub use types::{
    ExternalWorkload, ExternalWorkloadSpec, Kind, MeshTls, Meta, Namespace, Object, ObjectKey,
    PortSpec, WorkloadIp, parse_identity,
};
pub use workload::{Workload, WorkloadKind};

#[cfg(test)]
mod parse_tests;
#[cfg(test)]
mod pod_tests;
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

/// A Kubernetes export (`kubectl get -o yaml`): each object, and each item
/// of a `List`, judged alone, as the control plane in Kubernetes mode judges
/// the objects it watches (one refused object refuses only itself). Per
/// object: its origin (`<file>#<n>`), outcome, and its text when refused.
pub fn read_export(
    origin: &Origin,
    text: &str,
    control_plane_ns: &str,
    trust_domain: &str,
) -> Vec<(Origin, FileOutcome, Option<String>)> {
    let docs = match parse::read_documents(text) {
        Ok(docs) => docs,
        Err(msg) => {
            let refused = FileOutcome::Refused(vec![Problem::error(origin, msg)]);
            return vec![(origin.clone(), refused, Some(text.to_string()))];
        }
    };
    let mut items = Vec::new();
    for doc in docs {
        let is_list = doc.get("apiVersion").and_then(|v| v.as_str()) == Some("v1")
            && doc.get("kind").and_then(|v| v.as_str()) == Some("List");
        match doc.get("items").and_then(|i| i.as_array()) {
            Some(list) if is_list => items.extend(list.iter().cloned()),
            _ => items.push(doc),
        }
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = std::path::PathBuf::from(format!("{}#{}", origin.display(), i + 1));
            let outcome = read_value(&at, item, control_plane_ns, trust_domain);
            let text = matches!(outcome, FileOutcome::Refused(_))
                .then(|| serde_json::to_string(item).unwrap_or_default());
            (at, outcome, text)
        })
        .collect()
}

/// One object as a Kubernetes source holds it, judged as [`read_document`]
/// judges a file of one document.
pub fn read_value(
    origin: &Origin,
    value: &serde_json::Value,
    control_plane_ns: &str,
    trust_domain: &str,
) -> FileOutcome {
    match parse_values(origin, std::slice::from_ref(value)) {
        Ok(objects) => {
            let warnings = lint(origin, &objects, control_plane_ns, trust_domain);
            FileOutcome::Parsed { objects, warnings }
        }
        Err(problems) => FileOutcome::Refused(problems),
    }
}
