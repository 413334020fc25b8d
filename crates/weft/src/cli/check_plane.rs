//! `weft check` against a cluster, the decisions about the installed mesh:
//! the injector, the identity objects and the data plane. Pure, like
//! `check_facts`; `check_kube` fetches what they judge.

use std::collections::BTreeMap;

use control_plane::fleet::FleetView;
use identity::IssuerFiles;
use identity::issuer::IssuerSnapshot;
use pki::check::{CheckResult, IdentityMaterial};

/// The MutatingWebhookConfiguration as far as check cares: each webhook's
/// name and whether its caBundle is set.
#[derive(Debug, Clone, Default)]
pub struct Webhooks {
    pub webhooks: Vec<(String, bool)>,
}

pub fn webhook_registered(w: Option<&Webhooks>, configuration: &str) -> CheckResult {
    let what = "the injector's MutatingWebhookConfiguration is registered";
    match w {
        Some(w) if !w.webhooks.is_empty() => CheckResult::ok(what),
        Some(_) => CheckResult::fail(
            what,
            format!("{configuration} has no webhooks"),
            "re-apply weft install",
        ),
        None => CheckResult::fail(
            what,
            format!("no MutatingWebhookConfiguration {configuration}"),
            "re-apply weft install (the webhook configuration is its last object)",
        ),
    }
}

pub fn webhook_ca(w: Option<&Webhooks>) -> CheckResult {
    let what = "the injector's caBundle is set";
    let missing: Vec<&str> = w
        .into_iter()
        .flat_map(|w| &w.webhooks)
        .filter(|(_, set)| !set)
        .map(|(n, _)| n.as_str())
        .collect();
    if w.is_some() && missing.is_empty() {
        CheckResult::ok(what)
    } else if w.is_none() {
        CheckResult::fail(what, "no webhook configuration", "re-apply weft install")
    } else {
        CheckResult::fail(
            what,
            format!("no caBundle on {}", missing.join(", ")),
            "the control plane writes it once it runs with --webhook-addr: check that its pods are ready and their log",
        )
    }
}

/// What the API server answered a dry-run create of a pod annotated
/// `linkerd.io/inject: enabled`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DryRun {
    /// The admitted pod carries the proxy sidecar.
    Injected,
    /// Admitted without it (a webhook with failurePolicy Ignore that did
    /// not answer looks exactly like this).
    NotInjected,
    /// Refused: the error.
    Refused(String),
}

pub fn webhook_answers(namespace: &str, d: &DryRun) -> CheckResult {
    let what = "the injector answers (a dry-run pod is injected)";
    let hint = "check that the control plane's pods are ready and the weft-webhook Service has endpoints (kubectl get endpointslices -l kubernetes.io/service-name=weft-webhook); the API server logs why a webhook call failed";
    match d {
        DryRun::Injected => CheckResult::ok(what),
        DryRun::NotInjected => CheckResult::fail(
            what,
            format!(
                "a dry-run pod annotated linkerd.io/inject=enabled in namespace {namespace} was admitted without {}: the webhook is unreachable (failurePolicy Ignore lets such pods through unmeshed)",
                inject::PROXY_CONTAINER
            ),
            hint,
        ),
        DryRun::Refused(e) => CheckResult::fail(
            what,
            format!("a dry-run pod in namespace {namespace} was refused: {e}"),
            hint,
        ),
    }
}

/// The anchors ConfigMap and issuer Secret read as the control plane reads
/// them, as the material the eight identity checks judge.
pub fn identity_material(
    read: Result<(IssuerFiles, IssuerSnapshot), String>,
) -> Result<IdentityMaterial, String> {
    let (labels, snap) = read?;
    let anchors =
        pki::cert::parse_certs(&labels.anchors, &snap.anchors).map_err(|e| e.to_string())?;
    let mut issuer = pki::cert::parse_certs(&labels.certificate, &snap.certificate)
        .map_err(|e| e.to_string())?;
    let key = pki::key::parse_key(&labels.key, &snap.key).map_err(|e| e.to_string())?;
    let first = issuer.remove(0);
    Ok(IdentityMaterial {
        anchors,
        issuer: first,
        issuer_chain: issuer,
        issuer_key: Some(key),
    })
}

/// A Warning Event the control plane recorded on refusing an issuer/anchors
/// pair: the object and version it is about, and its note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub object: String,
    pub resource_version: String,
    pub note: String,
}

/// The control plane took the objects as they are now: no refusal names
/// their current versions (`current`: object name → resourceVersion).
pub fn refusals(events: &[Refusal], current: &BTreeMap<String, String>) -> CheckResult {
    let what = "the control plane accepted the current trust anchors and issuer";
    let now: Vec<String> = events
        .iter()
        .filter(|e| current.get(&e.object) == Some(&e.resource_version))
        .map(|e| format!("{} refused: {}", e.object, e.note))
        .collect();
    if now.is_empty() {
        CheckResult::ok(what)
    } else {
        CheckResult::fail(
            what,
            now.join("; "),
            "the previous issuer keeps serving; put back a pair that chains (weft check --identity-trust-anchors-file ... checks files before you apply them)",
        )
    }
}

/// An injected pod: where it is and the proxy version it was injected with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedPod {
    pub namespace: String,
    pub name: String,
    pub proxy_version: Option<String>,
}

impl InjectedPod {
    fn workload(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The fleet view narrowed to one namespace's proxies and certificates.
pub fn narrow(mut v: FleetView, namespace: &str) -> FleetView {
    let prefix = format!("{namespace}/");
    v.proxies.retain(|p| p.workload.starts_with(&prefix));
    v.unmanaged
        .retain(|u| u.identity.to_string().split('.').nth(1) == Some(namespace));
    v
}

/// Every injected pod has a proxy connected to the control plane, on the
/// current trust bundle.
pub fn pods_connected(pods: &[InjectedPod], v: &FleetView) -> CheckResult {
    let bad: Vec<String> = pods
        .iter()
        .filter_map(|pod| {
            let w = pod.workload();
            let current = v.bundle.as_ref().map(|b| b.generation).unwrap_or_default();
            let held = |p: &control_plane::fleet::ProxyView| {
                p.bundle
                    .as_ref()
                    .map(|b| format!("generation {}", b.generation))
                    .unwrap_or_else(|| "the bootstrap anchors".into())
            };
            let mut theirs = v.proxies.iter().filter(|p| p.workload == w);
            let Some(p) = theirs
                .clone()
                .find(|p| p.state == "connected")
                .or(theirs.next())
            else {
                return Some(format!("{w}: no proxy has reported to the control plane"));
            };
            if p.state != "connected" {
                return Some(format!(
                    "{w}: its proxy is {} since {}s, on {} (current: generation {current})",
                    p.state,
                    p.for_s,
                    held(p)
                ));
            }
            (!p.bundle_current).then(|| {
                let refused = p
                    .refused
                    .as_ref()
                    .map(|r| format!("; it refused the current one: {}", r.reason))
                    .unwrap_or_default();
                format!(
                    "{w}: on {} (current: generation {current}){refused}",
                    held(p)
                )
            })
        })
        .collect();
    let what = format!(
        "every injected pod's proxy is connected and on the current trust bundle ({} of {})",
        pods.len() - bad.len(),
        pods.len()
    );
    if bad.is_empty() {
        CheckResult::ok(what)
    } else {
        CheckResult::fail(
            what,
            bad.join("; "),
            "a proxy applies a new bundle within seconds of connecting: look at the named pods' weft-proxy logs (kubectl logs POD -c weft-proxy) and restart those that are wedged",
        )
    }
}

/// A release as (major, minor); the patch level does not count.
pub fn release(v: &str) -> Option<(u64, u64)> {
    let mut parts = v.trim().trim_start_matches('v').split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// How far a proxy's release is from the control plane's: the supported
/// skew is one release behind.
#[derive(Debug, PartialEq, Eq)]
enum Skew {
    Same,
    OneBehind,
    Unsupported,
}

fn skew(proxy: (u64, u64), cp: (u64, u64)) -> Skew {
    match (proxy, cp) {
        (p, c) if p >= c => Skew::Same,
        ((pm, pn), (cm, cn)) if pm == cm && pn + 1 == cn => Skew::OneBehind,
        _ => Skew::Unsupported,
    }
}

/// No proxy is older than the control plane: one release behind is a
/// warning (supported), older a failure.
pub fn proxy_versions(pods: &[InjectedPod], cp_version: &str) -> CheckResult {
    let what = "no proxy is older than the control plane";
    let Some(cp) = release(cp_version) else {
        return CheckResult::fail(
            what,
            format!("the control plane's version {cp_version:?} is not MAJOR.MINOR.PATCH"),
            "run a released weft control plane",
        );
    };
    let (mut warn, mut fail) = (Vec::new(), Vec::new());
    for pod in pods {
        let v = pod.proxy_version.as_deref().unwrap_or("");
        let line = format!(
            "{} runs {}",
            pod.workload(),
            if v.is_empty() {
                "an unknown version"
            } else {
                v
            }
        );
        match release(v).map(|p| skew(p, cp)) {
            Some(Skew::Same) => {}
            Some(Skew::OneBehind) => warn.push(line),
            _ => fail.push(line),
        }
    }
    let hint = format!(
        "restart those pods (kubectl rollout restart) so the injector gives them the control plane's proxy {cp_version}"
    );
    if !fail.is_empty() {
        CheckResult::fail(
            what,
            format!(
                "{} (control plane {cp_version}; supported: one release behind)",
                fail.join("; ")
            ),
            hint,
        )
    } else if !warn.is_empty() {
        CheckResult::warn(
            what,
            format!(
                "{} (control plane {cp_version}): one release behind, supported",
                warn.join("; ")
            ),
            hint,
        )
    } else {
        CheckResult::ok(what)
    }
}

#[cfg(test)]
#[path = "check_plane_tests.rs"]
pub(crate) mod tests;
