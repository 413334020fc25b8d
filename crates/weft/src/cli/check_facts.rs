//! `weft check` against a cluster, the decisions: each check is a pure
//! function from facts fetched from the API server (typed here) to a
//! [`CheckResult`], so every verdict is unit-tested without a cluster.
//! `check_kube` only fetches.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pki::check::CheckResult;
use serde_json::Value;
use time::OffsetDateTime;

/// Native sidecars (init containers with `restartPolicy: Always`) are on by
/// default from Kubernetes 1.29; the injector's proxy is one.
pub const MIN_MINOR: u32 = 29;
/// weft backdates certificates by 20 s (NotBefore = now − 20 s): a clock
/// further off than that sees fresh certificates as not yet valid.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(20);
/// Pod Security levels that forbid NET_ADMIN/NET_RAW (weft-init's).
const PSA_ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// The API server's version, as `/version` states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
    pub git: String,
}

/// Parses `/version`'s major and minor; providers append `+` to the minor
/// (e.g. "29+"), which is ignored.
pub fn parse_server_version(major: &str, minor: &str, git: &str) -> Result<ServerVersion, String> {
    let num = |s: &str, what: &str| {
        s.trim_end_matches('+').parse::<u32>().map_err(|_| {
            format!("the API server's {what} version {s:?} is not a number (git version {git:?})")
        })
    };
    Ok(ServerVersion {
        major: num(major, "major")?,
        minor: num(minor, "minor")?,
        git: git.to_string(),
    })
}

pub fn native_sidecars(v: &ServerVersion) -> CheckResult {
    let what = format!("is running Kubernetes 1.{MIN_MINOR} or later (native sidecars)");
    if (v.major, v.minor) >= (1, MIN_MINOR) {
        CheckResult::ok(what)
    } else {
        CheckResult::fail(
            what,
            format!(
                "the API server is {} ({}.{}); the proxy is injected as a native sidecar (an init container with restartPolicy: Always), which needs 1.{MIN_MINOR}",
                v.git, v.major, v.minor
            ),
            format!("upgrade the cluster to Kubernetes 1.{MIN_MINOR} or later"),
        )
    }
}

/// The API server's clock (a response's `Date`, one-second resolution)
/// against this host's, read before the request was sent and after the
/// answer came.
pub fn clock_skew(
    server: OffsetDateTime,
    sent: OffsetDateTime,
    received: OffsetDateTime,
) -> CheckResult {
    let what = format!(
        "the clock is within {}s of the API server's",
        MAX_CLOCK_SKEW.as_secs()
    );
    let slack = time::Duration::seconds(1);
    let skew = if server < sent - slack {
        sent - slack - server
    } else if server > received + slack {
        server - received - slack
    } else {
        time::Duration::ZERO
    };
    if skew <= MAX_CLOCK_SKEW {
        CheckResult::ok(what)
    } else {
        CheckResult::fail(
            what,
            format!(
                "the API server's clock says {server}, this host's {sent}: {:.0}s apart; certificates weft issues are backdated only {}s",
                skew.as_seconds_f64(),
                MAX_CLOCK_SKEW.as_secs()
            ),
            "synchronise the clocks (NTP) of this host and the cluster's nodes",
        )
    }
}

/// Parses an HTTP `Date` header (IMF-fixdate, RFC 9110).
pub fn parse_http_date(s: &str) -> Result<OffsetDateTime, String> {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::PrimitiveDateTime::parse(s.trim(), fmt)
        .map(time::PrimitiveDateTime::assume_utc)
        .map_err(|e| format!("the API server's Date header {s:?} is not an HTTP date: {e}"))
}

/// One thing `weft install` creates: who may create it is asked with a
/// SelfSubjectAccessReview.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Access {
    pub group: String,
    pub resource: String,
    pub namespace: Option<String>,
}

impl Access {
    fn name(&self) -> String {
        let r = if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        match &self.namespace {
            Some(ns) => format!("{r} in namespace {ns}"),
            None => r,
        }
    }
}

/// What the manifests `weft install` prints create, one entry per
/// (group, resource, namespace). Every kind install prints pluralises by
/// adding "s" to its lowercase name.
pub fn needed_access(objects: &[Value]) -> Vec<Access> {
    let mut out = BTreeSet::new();
    for o in objects {
        let (Some(api), Some(kind)) = (
            o.get("apiVersion").and_then(Value::as_str),
            o.get("kind").and_then(Value::as_str),
        ) else {
            continue;
        };
        let group = api.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        out.insert(Access {
            group: group.to_string(),
            resource: format!("{}s", kind.to_lowercase()),
            namespace: o
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_string),
        });
    }
    out.into_iter().collect()
}

/// Each access with the API server's answer: allowed, or the reason.
pub fn access_checks(answers: &[(Access, Result<bool, String>)]) -> Vec<CheckResult> {
    answers
        .iter()
        .map(|(a, answer)| {
            let what = format!("can create {}", a.name());
            match answer {
                Ok(true) => CheckResult::ok(what),
                Ok(false) => CheckResult::fail(
                    what,
                    format!("the API server says this user may not create {}", a.name()),
                    "run install as a user bound to cluster-admin (or grant create on it)",
                ),
                Err(e) => CheckResult::fail(
                    what,
                    format!("cannot ask the API server (SelfSubjectAccessReview): {e}"),
                    "check the kubeconfig's user and that the API server is reachable",
                ),
            }
        })
        .collect()
}

/// A namespace's labels and annotations.
#[derive(Debug, Clone, Default)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl Namespace {
    /// Pods here are meshed: annotated for injection, or mesh required.
    fn targeted(&self) -> bool {
        self.annotations
            .get(inject::annotations::INJECT)
            .is_some_and(|v| v == "enabled")
            || self
                .labels
                .get(inject::MESH_REQUIRED_LABEL)
                .is_some_and(|v| v == "required")
    }
}

/// Namespaces whose pods are meshed must admit weft-init's NET_ADMIN and
/// NET_RAW: Pod Security `baseline` and `restricted` forbid both.
pub fn pod_security(namespaces: &[Namespace]) -> CheckResult {
    let what = "no namespace meshed by weft enforces a Pod Security level that forbids NET_ADMIN";
    let bad: Vec<String> = namespaces
        .iter()
        .filter(|n| n.targeted())
        .filter_map(|n| {
            let level = n.labels.get(PSA_ENFORCE)?;
            matches!(level.as_str(), "baseline" | "restricted")
                .then(|| format!("{} ({PSA_ENFORCE}={level})", n.name))
        })
        .collect();
    if bad.is_empty() {
        CheckResult::ok(what)
    } else {
        CheckResult::fail(
            what,
            format!(
                "{}: pods there would be refused, since weft-init needs NET_ADMIN and NET_RAW",
                bad.join(", ")
            ),
            "label those namespaces pod-security.kubernetes.io/enforce=privileged, or do not mesh them",
        )
    }
}

/// The parts of a CRD that must equal what `weft install --crds` prints:
/// each version's name, served, storage and schema.
fn crd_versions(crd: &Value) -> Value {
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Value::Array(
        versions
            .iter()
            .map(|v| {
                serde_json::json!({
                    "name": v.get("name"), "served": v.get("served"), "storage": v.get("storage"),
                    "schema": v.pointer("/schema/openAPIV3Schema"),
                })
            })
            .collect(),
    )
}

/// Where `stored` first differs from `shipped`, as a path and both values.
pub fn difference(path: &str, stored: &Value, shipped: &Value) -> Option<String> {
    match (stored, shipped) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter().find_map(|k| {
                let (x, y) = (
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                );
                difference(&format!("{path}.{k}"), x, y)
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| difference(&format!("{path}[{i}]"), x, y)),
        (a, b) if a == b => None,
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => None,
        (a, b) => {
            let cut = |v: &Value| {
                let t = v.to_string();
                if t.len() > 80 {
                    format!("{}…", &t[..t.floor_char_boundary(80)])
                } else {
                    t
                }
            };
            Some(format!(
                "{path}: {} in the cluster, {} shipped",
                cut(a),
                cut(b)
            ))
        }
    }
}

/// How the stored CRDs stand against the shipped ones.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CrdState {
    pub missing: Vec<String>,
    pub outdated: Vec<String>,
}

/// `shipped`: the CRDs `weft install --crds` prints; `stored`: the CRDs of
/// those names in the cluster (by name).
pub fn crd_state(shipped: &[Value], stored: &BTreeMap<String, Value>) -> CrdState {
    let mut st = CrdState::default();
    for crd in shipped {
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match stored.get(&name) {
            None => st.missing.push(name),
            Some(s) => {
                if let Some(d) = difference("spec.versions", &crd_versions(s), &crd_versions(crd)) {
                    st.outdated.push(format!("{name} ({d})"));
                }
            }
        }
    }
    st
}

/// The control plane's CRDs must be there and current.
pub fn crds_current(st: &CrdState) -> CheckResult {
    let what = "weft's CRDs are installed and current";
    let hint = "weft install --crds | kubectl apply -f -";
    if !st.missing.is_empty() {
        CheckResult::fail(what, format!("missing: {}", st.missing.join(", ")), hint)
    } else if !st.outdated.is_empty() {
        CheckResult::fail(
            what,
            format!(
                "not the versions and schema this weft ships: {}",
                st.outdated.join(", ")
            ),
            hint,
        )
    } else {
        CheckResult::ok(what)
    }
}

/// Before install: present, or installable (the caller may create CRDs).
pub fn crds_installable(st: &CrdState, may_create: bool) -> CheckResult {
    let what = "weft's CRDs are present or installable";
    if st.missing.is_empty() && st.outdated.is_empty() || may_create {
        CheckResult::ok(what)
    } else {
        CheckResult::fail(
            what,
            format!(
                "missing or outdated: {}; this user may not create CustomResourceDefinitions",
                [st.missing.clone(), st.outdated.clone()]
                    .concat()
                    .join(", ")
            ),
            "have a cluster admin run: weft install --crds | kubectl apply -f -",
        )
    }
}

/// The control plane Deployment's replicas: desired vs ready.
pub fn replicas(deployment: &str, desired_ready: Option<(i32, i32)>) -> CheckResult {
    let what = "control plane replicas are ready";
    match desired_ready {
        None => CheckResult::fail(
            what,
            format!("no Deployment {deployment}"),
            "install the control plane: weft install ... | kubectl apply -f -",
        ),
        Some((desired, ready)) if ready >= desired && desired > 0 => {
            CheckResult::ok(format!("{what} ({ready}/{desired})"))
        }
        Some((desired, ready)) => CheckResult::fail(
            format!("{what} ({ready}/{desired})"),
            format!("Deployment {deployment} has {ready} of {desired} replicas ready"),
            format!("kubectl describe deployment {deployment}; kubectl logs deploy/{deployment}"),
        ),
    }
}

#[cfg(test)]
#[path = "check_facts_tests.rs"]
mod tests;
