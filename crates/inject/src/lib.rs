//! Sidecar injection as one pure function: a pod (or pod template) and its
//! namespace's metadata in, the meshed pod or the typed reason it is not
//! meshed out. `weft inject --manual` and the control plane's mutating
//! webhook both call [`inject`], so what a GitOps user commits is what the
//! webhook would have made.
//!
//! Pods are `serde_json::Value`s so that fields this crate does not know
//! (newer Kubernetes, other tools' extensions) pass through untouched.

pub mod annotations;
pub mod sidecar;

use serde_json::{Map, Value};

pub use annotations::Scope;
use annotations::{
    DEFAULT_INBOUND_POLICY, INJECT, PROXY_CPU_LIMIT, PROXY_CPU_REQUEST, PROXY_MEMORY_LIMIT,
    PROXY_MEMORY_REQUEST, SKIP_INBOUND_PORTS, SKIP_OUTBOUND_PORTS, TLS_CIPHER_SUITES,
    TLS_KEY_EXCHANGE, effective,
};
use pki::mesh_tls::MeshTls;
pub use sidecar::{INIT_CONTAINER, PROXY_CONTAINER};

/// The label that marks a pod as meshed by a control plane (the control
/// plane reads pods by it).
pub const LABEL_CONTROL_PLANE_NS: &str = "linkerd.io/control-plane-ns";
pub const ANN_PROXY_VERSION: &str = "linkerd.io/proxy-version";
/// The namespace label that makes meshing required: every pod there is
/// meshed or refused, and its webhook fails closed.
pub const MESH_REQUIRED_LABEL: &str = "weft.dev/mesh";
/// Says weft injected the pod (and which version), for operators and `uninject`.
pub const ANN_INJECTED_BY: &str = "weft.dev/injected-by";
/// The operator's trust-roots ConfigMap, in the control plane's namespace.
pub const DEFAULT_TRUST_ROOTS_CONFIGMAP: &str = "linkerd-identity-trust-roots";
/// The copy of the anchors the control plane keeps in every meshed
/// namespace (a pod mounts only its own namespace's ConfigMaps): its
/// `ca-bundle.crt` is the file an injected proxy boots with.
pub const TRUST_ROOTS_COPY: &str = "weft-identity-trust-roots";

/// Where the mesh lives and which proxy to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub control_plane_ns: String,
    pub trust_domain: String,
    pub cluster_domain: String,
    pub image: String,
    pub proxy_version: String,
    /// Mounted as a volume, so it must exist in the pod's namespace (a pod
    /// cannot mount another namespace's ConfigMap; the webhook places the
    /// copy before it admits the pod); the pod does not start without it
    /// (fail closed).
    pub trust_roots_configmap: String,
}

/// The namespace's metadata: its `linkerd.io/inject` and `config.linkerd.io/*`
/// annotations apply to pods that do not set their own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamespaceMeta {
    pub labels: Map<String, Value>,
    pub annotations: Map<String, Value>,
}

impl NamespaceMeta {
    /// From a Namespace object (or just its `metadata`).
    pub fn from_namespace(ns: &Value) -> Self {
        let meta = ns.get("metadata").unwrap_or(ns);
        let map = |k: &str| {
            meta.get(k)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        Self {
            labels: map("labels"),
            annotations: map("annotations"),
        }
    }

    /// A namespace annotated `linkerd.io/inject: enabled`: what an explicit
    /// `weft inject --manual` means (a pod's own `disabled` still wins).
    pub fn enabled() -> Self {
        let mut annotations = Map::new();
        annotations.insert(INJECT.into(), "enabled".into());
        Self {
            labels: Map::new(),
            annotations,
        }
    }
}

/// Why a pod is left as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("already injected: it has a {0} container")]
    AlreadyInjected(String),
    #[error("linkerd.io/inject: disabled on the pod")]
    Disabled,
    #[error(
        "not enabled: neither the pod nor its namespace has linkerd.io/inject: enabled (add that annotation to mesh it)"
    )]
    NotEnabled,
    #[error(
        "hostNetwork: true: the pod shares its node's network, so iptables rules for it would redirect the node's traffic; weft never injects such pods (run it without hostNetwork to mesh it)"
    )]
    HostNetwork,
}

/// A pod injection refuses to touch: meshing it as asked is impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("not a pod: {0} (expected an object with a spec.containers list)")]
    NotAPod(&'static str),
    #[error("annotation {key}: {value} on {scope} is not valid: expected {expected}")]
    Annotation {
        key: &'static str,
        value: String,
        scope: Scope,
        expected: &'static str,
    },
    #[error("annotation {key}: {value} on {scope} is not valid: {source}")]
    Tls {
        key: &'static str,
        value: String,
        scope: Scope,
        #[source]
        source: pki::mesh_tls::MeshTlsError,
    },
    #[error(
        "the pod already has a {kind} named {name} that weft did not add; rename it (weft's own {kind}s are named weft-*)"
    )]
    NameTaken { kind: &'static str, name: String },
}

/// The result of [`inject`].
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Injected(Value),
    NotInjected(Skip),
}

fn names(list: Option<&Value>) -> impl Iterator<Item = &str> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
}

/// A weft or Linkerd proxy container already in the pod.
fn proxy_in(spec: &Value) -> Option<String> {
    let mut all = names(spec.get("initContainers")).chain(names(spec.get("containers")));
    all.find(|n| *n == PROXY_CONTAINER || *n == "linkerd-proxy")
        .map(str::to_string)
}

/// Whether to mesh: the pod's own annotation wins over its namespace's.
fn decide(pod: &Value, spec: &Value, ns: &NamespaceMeta) -> Result<Option<Skip>, InjectError> {
    if let Some(c) = proxy_in(spec) {
        return Ok(Some(Skip::AlreadyInjected(c)));
    }
    let pod_ann = pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object);
    let enabled = match effective(pod_ann, &ns.annotations, INJECT)? {
        Some(("enabled", _)) => true,
        Some(("disabled", Scope::Pod)) => return Ok(Some(Skip::Disabled)),
        Some(("disabled", Scope::Namespace)) | None => false,
        Some((other, scope)) => {
            return Err(InjectError::Annotation {
                key: INJECT,
                value: other.to_string(),
                scope,
                expected: "enabled or disabled (weft has no ingress mode)",
            });
        }
    };
    if !enabled {
        return Ok(Some(Skip::NotEnabled));
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Some(Skip::HostNetwork));
    }
    Ok(None)
}

/// The annotations' settings for this pod, every one checked.
fn options(pod: &Value, ns: &NamespaceMeta) -> Result<sidecar::Options, InjectError> {
    let pod_ann = pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object);
    let get = |key| effective(pod_ann, &ns.annotations, key);
    if let Some(v) = get(DEFAULT_INBOUND_POLICY)? {
        annotations::default_policy(v)?;
    }
    let ports = |key| -> Result<Vec<String>, InjectError> {
        get(key)?
            .map(|v| annotations::port_list(key, v))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let mut resources = Map::new();
    for (key, kind, res) in [
        (PROXY_CPU_REQUEST, "requests", "cpu"),
        (PROXY_MEMORY_REQUEST, "requests", "memory"),
        (PROXY_CPU_LIMIT, "limits", "cpu"),
        (PROXY_MEMORY_LIMIT, "limits", "memory"),
    ] {
        if let Some(v) = get(key)? {
            let q = annotations::quantity(key, v)?;
            let entry = resources
                .entry(kind)
                .or_insert_with(|| Value::Object(Map::new()));
            entry[res] = Value::String(q);
        }
    }
    let mut env = Vec::new();
    for (key, var, check) in [
        (
            TLS_CIPHER_SUITES,
            "WEFT_PROXY_TLS_CIPHER_SUITES",
            MeshTls::with_cipher_suites as fn(MeshTls, &str) -> _,
        ),
        (
            TLS_KEY_EXCHANGE,
            "WEFT_PROXY_TLS_KEY_EXCHANGE",
            MeshTls::with_key_exchange,
        ),
    ] {
        if let Some(v) = get(key)? {
            env.push((var, annotations::tls_list(key, v, check)?));
        }
    }
    Ok(sidecar::Options {
        skip_inbound: ports(SKIP_INBOUND_PORTS)?,
        skip_outbound: ports(SKIP_OUTBOUND_PORTS)?,
        resources,
        env,
    })
}

/// Meshes `pod` (a Pod, or a pod template: anything with `metadata` and
/// `spec`) if it or its namespace asks for it. Injecting an injected pod
/// changes nothing; every annotation is checked before anything is added.
pub fn inject(pod: &Value, ns: &NamespaceMeta, s: &Settings) -> Result<Outcome, InjectError> {
    let spec = pod.get("spec").ok_or(InjectError::NotAPod("no spec"))?;
    if !spec.get("containers").is_some_and(Value::is_array) {
        return Err(InjectError::NotAPod("spec.containers is not a list"));
    }
    if let Some(skip) = decide(pod, spec, ns)? {
        return Ok(Outcome::NotInjected(skip));
    }
    let opts = options(pod, ns)?;
    for (list, kind, ours) in [
        ("initContainers", "container", sidecar::CONTAINERS),
        ("containers", "container", sidecar::CONTAINERS),
        ("volumes", "volume", sidecar::VOLUMES),
    ] {
        if let Some(n) = names(spec.get(list)).find(|n| ours.contains(n)) {
            return Err(InjectError::NameTaken {
                kind,
                name: n.to_string(),
            });
        }
    }
    let mut out = pod.clone();
    let spec = &mut out["spec"];
    let ours = [
        sidecar::init_container(s, &opts),
        sidecar::proxy_container(s, &opts),
    ];
    edit_list(spec, "initContainers", |l| {
        l.splice(0..0, ours);
    });
    edit_list(spec, "volumes", |l| l.extend(sidecar::volumes(s)));
    let meta = &mut out["metadata"];
    set(meta, "labels", LABEL_CONTROL_PLANE_NS, &s.control_plane_ns);
    set(meta, "annotations", ANN_PROXY_VERSION, &s.proxy_version);
    set(
        meta,
        "annotations",
        ANN_INJECTED_BY,
        &format!("weft {}", s.proxy_version),
    );
    Ok(Outcome::Injected(out))
}

/// Edits the list at `obj[key]`, made empty first if absent (or not a list).
fn edit_list(obj: &mut Value, key: &str, f: impl FnOnce(&mut Vec<Value>)) {
    let mut items = match obj[key].take() {
        Value::Array(a) => a,
        _ => Vec::new(),
    };
    f(&mut items);
    obj[key] = Value::Array(items);
}

fn set(meta: &mut Value, map: &str, key: &str, value: &str) {
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    if !meta[map].is_object() {
        meta[map] = Value::Object(Map::new());
    }
    meta[map][key] = Value::String(value.to_string());
}

/// Removes what [`inject`] added (and nothing else): weft's containers,
/// volumes, label and annotations. Lists and maps left empty are removed,
/// as Kubernetes does not tell an empty list from an absent one.
pub fn uninject(pod: &Value) -> Value {
    let mut out = pod.clone();
    if let Some(spec) = out.get_mut("spec").and_then(Value::as_object_mut) {
        for (key, ours) in [
            ("initContainers", sidecar::CONTAINERS),
            ("containers", sidecar::CONTAINERS),
            ("volumes", sidecar::VOLUMES),
        ] {
            remove_named(spec, key, ours);
        }
    }
    if let Some(meta) = out.get_mut("metadata").and_then(Value::as_object_mut) {
        remove_keys(meta, "labels", &[LABEL_CONTROL_PLANE_NS]);
        remove_keys(meta, "annotations", &[ANN_PROXY_VERSION, ANN_INJECTED_BY]);
    }
    out
}

/// Whether weft injected this pod.
pub fn is_injected(pod: &Value) -> bool {
    pod.get("spec")
        .is_some_and(|s| names(s.get("initContainers")).any(|n| n == PROXY_CONTAINER))
}

fn remove_named(obj: &mut Map<String, Value>, key: &str, ours: &[&str]) {
    let Some(Value::Array(items)) = obj.get_mut(key) else {
        return;
    };
    let before = items.len();
    items.retain(|c| {
        !c.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| ours.contains(&n))
    });
    if items.is_empty() && before > 0 {
        obj.remove(key);
    }
}

fn remove_keys(meta: &mut Map<String, Value>, map: &str, keys: &[&str]) {
    let Some(Value::Object(m)) = meta.get_mut(map) else {
        return;
    };
    let before = m.len();
    for k in keys {
        m.remove(*k);
    }
    if m.is_empty() && before > 0 {
        meta.remove(map);
    }
}

#[cfg(test)]
mod tests;
