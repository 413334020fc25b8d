//! The default inbound policy: the cluster's, a Namespace's or a
//! workload's annotation, and the settings translation needs.

use crate::resources::{Cidr, DefaultPolicy, Snapshot, Workload};

pub const ANN_DEFAULT_POLICY: &str = "config.linkerd.io/default-inbound-policy";

/// Linkerd's default cluster networks.
pub const DEFAULT_CLUSTER_NETWORKS: &str =
    "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8";

#[derive(Debug, Clone)]
pub struct PolicyDefaults {
    pub default_policy: DefaultPolicy,
    pub cluster_networks: Vec<Cidr>,
    pub control_plane_ns: String,
    pub trust_domain: String,
    pub detect_timeout: std::time::Duration,
}

pub fn parse_default(s: &str) -> Option<DefaultPolicy> {
    Some(match s.trim() {
        "all-unauthenticated" => DefaultPolicy::AllUnauthenticated,
        "all-authenticated" => DefaultPolicy::AllAuthenticated,
        "cluster-unauthenticated" => DefaultPolicy::ClusterUnauthenticated,
        "cluster-authenticated" => DefaultPolicy::ClusterAuthenticated,
        "deny" => DefaultPolicy::Deny,
        "audit" => DefaultPolicy::Audit,
        _ => return None,
    })
}

pub fn default_name(p: DefaultPolicy) -> &'static str {
    match p {
        DefaultPolicy::AllUnauthenticated => "all-unauthenticated",
        DefaultPolicy::AllAuthenticated => "all-authenticated",
        DefaultPolicy::ClusterUnauthenticated => "cluster-unauthenticated",
        DefaultPolicy::ClusterAuthenticated => "cluster-authenticated",
        DefaultPolicy::Deny => "deny",
        DefaultPolicy::Audit => "audit",
    }
}

/// The default that applies to a workload: its annotation, else its
/// namespace's, else the cluster-wide one. An unreadable value is `deny`.
pub fn effective_default(
    snap: &Snapshot,
    w: &Workload,
    d: &PolicyDefaults,
    problems: &mut Vec<String>,
) -> DefaultPolicy {
    let ns = w.meta.namespace.clone().unwrap_or_else(|| "default".into());
    let from = |ann: Option<&String>, whose: &str, problems: &mut Vec<String>| {
        ann.map(|v| {
            parse_default(v).unwrap_or_else(|| {
                problems.push(format!("{whose} annotation {ANN_DEFAULT_POLICY}: {v:?} is not a default policy; using deny"));
                DefaultPolicy::Deny
            })
        })
    };
    from(
        w.meta.annotations.get(ANN_DEFAULT_POLICY),
        &w.to_string(),
        problems,
    )
    .or_else(|| {
        from(
            snap.namespace_annotations(&ns)
                .and_then(|a| a.get(ANN_DEFAULT_POLICY)),
            &format!("Namespace {ns}"),
            problems,
        )
    })
    .unwrap_or(d.default_policy)
}
