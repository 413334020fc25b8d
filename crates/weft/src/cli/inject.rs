//! `weft inject` and `weft uninject`: mesh (or unmesh) the workloads in
//! manifests, for GitOps users. Plain `inject` adds `linkerd.io/inject:
//! enabled` to pod templates, as `linkerd inject` does, so the webhook does
//! the rest at admission; `--manual` applies the webhook's own
//! transformation (the `inject` crate) in the manifest.

use std::io::Read;

use clap::Args;
use inject::{NamespaceMeta, Outcome, Settings};
use serde_json::Value;

use super::manifests::{self, Doc};
use super::{CmdResult, Failure};

/// The image `weft install` deploys and `weft inject --manual` adds.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/weft-mesh/weft:", env!("CARGO_PKG_VERSION"));
/// The Kubernetes cluster's DNS domain (services are `<svc>.<ns>.svc.<domain>`).
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

#[derive(Debug, Args)]
pub struct InjectArgs {
    /// Manifest file (multi-document YAML), or - for standard input
    pub file: String,
    /// Add the proxy itself (what the webhook does at admission) instead of the annotation
    #[arg(long)]
    pub manual: bool,
    /// With --manual: the control plane's namespace
    #[arg(long, default_value = pki::identity::DEFAULT_CONTROL_PLANE_NS)]
    pub controller_namespace: String,
    /// With --manual: the trust domain of workload identities
    #[arg(long, default_value = pki::identity::DEFAULT_TRUST_DOMAIN)]
    pub identity_trust_domain: String,
    /// With --manual: the cluster's DNS domain, for the control plane's service addresses
    #[arg(long, default_value = DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,
    /// With --manual: the weft image for the init container and the proxy
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub image: String,
}

#[derive(Debug, Args)]
pub struct UninjectArgs {
    /// Manifest file (multi-document YAML), or - for standard input
    pub file: String,
}

fn read_input(file: &str) -> Result<(String, String), Failure> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::input(format!("cannot read standard input: {e}")))?;
        return Ok(("<stdin>".into(), text));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::input(format!("cannot read {file}: {e}")))?;
    Ok((file.to_string(), text))
}

/// Runs `f` on every pod template of every document; writes the stream to
/// stdout only when every document succeeded (notes go to stderr).
fn transform(
    file: &str,
    mut f: impl FnMut(&str, &mut Value) -> Result<(bool, String), String>,
) -> CmdResult {
    let (source, text) = read_input(file)?;
    let mut docs: Vec<Doc> = manifests::read(&source, &text).map_err(Failure::input)?;
    let mut notes = Vec::new();
    for d in &mut docs {
        let Some(v) = d.value.as_mut() else { continue };
        let index = d.index;
        let mut each = |what: &str, t: &mut Value| -> Result<bool, String> {
            let (changed, note) = f(what, t)?;
            notes.push(format!("{what}: {note}"));
            Ok(changed)
        };
        let mut kind_notes = Vec::new();
        let changed = manifests::each_template(v, &mut kind_notes, &mut each)
            .map_err(|e| Failure::input(format!("{source}: document {index}: {e}")))?;
        d.changed |= changed;
        notes.extend(
            kind_notes
                .into_iter()
                .map(|n| format!("document {index}: {n}")),
        );
    }
    let out = manifests::write(&docs).map_err(Failure::fatal)?;
    for n in notes {
        eprintln!("{n}");
    }
    out!("{out}");
    Ok(())
}

fn annotations(t: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !t["metadata"].is_object() {
        t["metadata"] = Value::Object(Default::default());
    }
    if !t["metadata"]["annotations"].is_object() {
        t["metadata"]["annotations"] = Value::Object(Default::default());
    }
    match &mut t["metadata"]["annotations"] {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

/// What `weft inject --manual` and the control plane's webhook inject:
/// the same settings from the same flags.
pub fn settings(
    control_plane_ns: &str,
    trust_domain: &str,
    cluster_domain: &str,
    image: &str,
) -> Settings {
    Settings {
        control_plane_ns: control_plane_ns.into(),
        trust_domain: trust_domain.into(),
        cluster_domain: cluster_domain.into(),
        image: image.into(),
        proxy_version: env!("CARGO_PKG_VERSION").into(),
        trust_roots_configmap: inject::TRUST_ROOTS_COPY.into(),
    }
}

pub fn run_inject(a: InjectArgs) -> CmdResult {
    let settings = settings(
        &a.controller_namespace,
        &a.identity_trust_domain,
        &a.cluster_domain,
        &a.image,
    );
    // An explicit `weft inject` opts the workload in, as an annotated
    // namespace would; a pod's own `disabled` still wins.
    let ns = NamespaceMeta::enabled();
    transform(&a.file, |_, t| {
        if a.manual {
            return match inject::inject(t, &ns, &settings).map_err(|e| e.to_string())? {
                Outcome::Injected(v) => {
                    *t = v;
                    Ok((true, "injected".into()))
                }
                Outcome::NotInjected(skip) => Ok((false, format!("not injected: {skip}"))),
            };
        }
        let ann = annotations(t);
        match ann.get(inject::annotations::INJECT).and_then(Value::as_str) {
            Some("disabled") => Ok((
                false,
                "not annotated: it has linkerd.io/inject: disabled (remove that to mesh it)".into(),
            )),
            Some("enabled") => Ok((false, "already annotated linkerd.io/inject: enabled".into())),
            _ => {
                ann.insert(inject::annotations::INJECT.into(), "enabled".into());
                Ok((true, "annotated linkerd.io/inject: enabled".into()))
            }
        }
    })
}

pub fn run_uninject(a: UninjectArgs) -> CmdResult {
    transform(&a.file, |_, t| {
        let before = t.clone();
        *t = inject::uninject(t);
        let enabled = t
            .pointer("/metadata/annotations")
            .and_then(|m| m.get(inject::annotations::INJECT))
            .is_some_and(|v| v == "enabled");
        if enabled {
            let ann = annotations(t);
            ann.remove(inject::annotations::INJECT);
            if ann.is_empty()
                && let Some(m) = t["metadata"].as_object_mut()
            {
                m.remove("annotations");
            }
        }
        let changed = *t != before;
        Ok((
            changed,
            if changed {
                "uninjected"
            } else {
                "not injected; unchanged"
            }
            .into(),
        ))
    })
}
