//! `weft install`, `weft upgrade` and `weft uninstall`: the manifests for
//! `kubectl apply -f -` (and `kubectl delete -f -`). The identity files are
//! checked exactly as `weft check` checks them, and nothing is printed
//! unless they pass; identity objects the cluster already has are never
//! printed without `--force` (re-applying install after a rotation must not
//! revert it), and `weft upgrade` never prints them at all.

use std::path::{Path, PathBuf};

use clap::Args;
use pki::check::{
    CheckConfig, Status, identity_checks, load_identity_material, parse_identity_material,
};

use super::install_cluster::{self as cluster, Found};
use super::install_manifests::{self as m, IdentityObjects, IssuerFiles, Object, Plan, Values};
use super::{CmdResult, Failure};

/// Linkerd's default: the private ranges pods and services live in.
const DEFAULT_CLUSTER_NETWORKS: &str =
    "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8";

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Trust anchor bundle (PEM): becomes the trust-roots ConfigMap
    #[arg(long, required_unless_present = "crds")]
    pub identity_trust_anchors_file: Option<PathBuf>,
    /// Issuer certificate (PEM): becomes the issuer Secret
    #[arg(long, conflicts_with = "identity_external_issuer")]
    pub identity_issuer_certificate_file: Option<PathBuf>,
    /// Issuer private key (PEM): becomes the issuer Secret
    #[arg(long, conflicts_with = "identity_external_issuer")]
    pub identity_issuer_key_file: Option<PathBuf>,
    /// The issuer Secret is managed elsewhere (e.g. cert-manager) and must already exist; none is printed
    #[arg(long)]
    pub identity_external_issuer: bool,
    /// The control plane's namespace
    #[arg(long, default_value = pki::identity::DEFAULT_CONTROL_PLANE_NS)]
    pub namespace: String,
    /// High availability: two control plane replicas on different nodes, and a PodDisruptionBudget
    #[arg(long)]
    pub ha: bool,
    /// The weft image
    #[arg(long, default_value = super::inject::DEFAULT_IMAGE)]
    pub image: String,
    /// The trust domain of workload identities
    #[arg(long, default_value = pki::identity::DEFAULT_TRUST_DOMAIN)]
    pub identity_trust_domain: String,
    /// The cluster's pod and service networks (comma-separated CIDRs)
    #[arg(long, default_value = DEFAULT_CLUSTER_NETWORKS)]
    pub cluster_networks: String,
    /// Print only weft's CustomResourceDefinitions (apply them first, as with Linkerd)
    #[arg(long, conflicts_with_all = ["identity_trust_anchors_file", "identity_issuer_certificate_file", "identity_issuer_key_file", "identity_external_issuer", "ha"])]
    pub crds: bool,
    /// Also install the Gateway API CRDs (never installed or overwritten otherwise)
    #[arg(long)]
    pub install_gateway_api: bool,
    /// Development: the API server calls the injector at this https URL (e.g. a control plane run as a local process, as envtest does) instead of the weft-webhook Service
    #[arg(long, value_parser = parse_webhook_url)]
    pub webhook_url: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// How install finds out which identity objects the cluster has already.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Kubeconfig of the cluster to check for existing identity objects (default: KUBECONFIG, ~/.kube/config, or in-cluster)
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Print without reading the cluster (e.g. for GitOps): identity objects are printed even if the cluster has its own, and applying them reverts a rotation
    #[arg(long, conflicts_with = "force")]
    pub ignore_cluster: bool,
    /// Print the identity objects even though the cluster has them (applying replaces the anchors and issuer in force)
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The control plane's namespace
    #[arg(long, default_value = pki::identity::DEFAULT_CONTROL_PLANE_NS)]
    pub namespace: String,
    /// Kubeconfig of the cluster (default: KUBECONFIG, ~/.kube/config, or in-cluster)
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// A new weft image (default: the one installed)
    #[arg(long)]
    pub image: Option<String>,
    /// Switch to high availability (two replicas and a PodDisruptionBudget)
    #[arg(long)]
    pub ha: bool,
}

fn parse_webhook_url(s: &str) -> Result<String, String> {
    if !s.starts_with("https://") || s.contains('#') || s.contains('?') {
        return Err(format!(
            "{s:?}: expected an https:// URL without query or fragment (the API server only calls webhooks over TLS), e.g. https://10.0.0.5:8443/inject"
        ));
    }
    Ok(s.to_string())
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// The control plane's namespace
    #[arg(long, default_value = pki::identity::DEFAULT_CONTROL_PLANE_NS)]
    pub namespace: String,
    /// Also delete weft's CRDs, and with them every policy object in the cluster
    #[arg(long)]
    pub crds: bool,
}

fn read(path: &Path, what: &str) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::input(format!("cannot read the {what} {}: {e}", path.display())))
}

/// The `weft check` identity checks on the files; any failure refuses.
fn checked_issuer(a: &InstallArgs, anchors: &Path) -> Result<Option<IssuerFiles>, Failure> {
    if a.identity_external_issuer {
        let certs = pki::load_certs(anchors).map_err(|e| {
            Failure::input(format!(
                "--identity-trust-anchors-file {}: {e}; pass the PEM bundle of trust anchors",
                anchors.display()
            ))
        })?;
        eprintln!(
            "note: {} anchor(s) read; the issuer Secret {}/{} is expected to exist already (e.g. from cert-manager) and is not printed",
            certs.len(),
            a.namespace,
            control_plane::k8s::KubeSettings::DEFAULT_ISSUER_SECRET
        );
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (
        &a.identity_issuer_certificate_file,
        &a.identity_issuer_key_file,
    ) else {
        return Err(Failure::input(
            "pass --identity-issuer-certificate-file and --identity-issuer-key-file (create them with `weft certs create ... --profile intermediate-ca`), or --identity-external-issuer when the issuer Secret is managed elsewhere",
        ));
    };
    let material = load_identity_material(anchors, cert, Some(key));
    let checks = identity_checks(
        material.as_ref().map_err(String::as_str),
        time::OffsetDateTime::now_utc(),
        CheckConfig::default(),
    );
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| c.result == Status::Error)
        .map(|c| format!("{}: {} (hint: {})", c.description, c.error, c.hint))
        .collect();
    if !failed.is_empty() {
        return Err(Failure::input(format!(
            "the identity files fail `weft check`, so nothing was printed:\n  {}\nfix them (see `weft check --identity-trust-anchors-file ... --identity-issuer-certificate-file ... --identity-issuer-key-file ...`) and run install again",
            failed.join("\n  ")
        )));
    }
    for w in checks.iter().filter(|c| c.result == Status::Warning) {
        eprintln!("warning: {}: {} (hint: {})", w.description, w.error, w.hint);
    }
    Ok(Some(IssuerFiles {
        cert_pem: read(cert, "issuer certificate")?,
        key_pem: read(key, "issuer key")?,
    }))
}

pub fn run_install(a: InstallArgs) -> CmdResult {
    if a.install_gateway_api {
        return Err(Failure::input(
            "--install-gateway-api: this build of weft does not ship the Gateway API CRDs; install them from the Gateway API release (standard channel), then run install without this flag",
        ));
    }
    if a.crds {
        out!("{}", control_plane::k8s_manifests::CRDS);
        return Ok(());
    }
    let Some(anchors) = &a.identity_trust_anchors_file else {
        return Err(Failure::input(
            "pass --identity-trust-anchors-file (or --crds to print only the CRDs)",
        ));
    };
    let issuer = checked_issuer(&a, anchors)?;
    if !a.cluster.ignore_cluster {
        let found = cluster::read(a.cluster.kubeconfig.as_deref(), &a.namespace).map_err(|e| {
            Failure::input(format!(
                "{e}; install reads the cluster so that it never prints over identity objects already there (a rotation would be reverted): pass --kubeconfig, or --ignore-cluster to print without looking"
            ))
        })?;
        cluster::refuse_existing(&found, issuer.is_some(), &a.namespace, a.cluster.force)?;
        if a.identity_external_issuer && found.issuer.is_none() {
            eprintln!(
                "warning: the issuer Secret {}/{} does not exist yet: the control plane is not ready until it does",
                a.namespace,
                control_plane::k8s::KubeSettings::DEFAULT_ISSUER_SECRET
            );
        }
    }
    let plan = Plan {
        namespace: a.namespace.clone(),
        values: Values {
            image: a.image.clone(),
            ha: a.ha,
            trust_domain: a.identity_trust_domain.clone(),
            cluster_networks: a.cluster_networks.clone(),
            external_issuer: a.identity_external_issuer,
            webhook_url: a.webhook_url.clone(),
        },
        identity: Some(IdentityObjects {
            anchors_pem: read(anchors, "trust anchors")?,
            issuer,
        }),
    };
    let text =
        m::render(&m::control_plane(&plan).map_err(Failure::fatal)?).map_err(Failure::fatal)?;
    eprintln!(
        "note: apply `weft install --crds` first; the MutatingWebhookConfiguration has no caBundle: the control plane writes it"
    );
    out!("{text}");
    Ok(())
}

/// The recorded install values, after the identity checks on what the
/// cluster holds: upgrade keeps those objects as they are, so a failure is
/// reported, never fixed by it.
fn installed_values(found: &Found, namespace: &str) -> Result<Values, Failure> {
    let not_installed = |what: String| {
        Failure::input(format!(
            "{what} does not exist: weft is not installed in namespace {namespace}; run `weft install` (or pass the --namespace it was installed in)"
        ))
    };
    let values = match &found.values {
        None => {
            return Err(not_installed(format!(
                "ConfigMap {namespace}/{}",
                m::CONFIG
            )));
        }
        Some(Err(e)) => {
            return Err(Failure::input(format!(
                "ConfigMap {namespace}/{}: {e}; it records how weft was installed: re-create it with `weft install ... --force` using the original flags",
                m::CONFIG
            )));
        }
        Some(Ok(v)) => v.clone(),
    };
    let Some(anchors) = &found.anchors else {
        return Err(not_installed(format!(
            "ConfigMap {namespace}/{}",
            inject::DEFAULT_TRUST_ROOTS_CONFIGMAP
        )));
    };
    let Some((cert, key)) = &found.issuer else {
        let secret = control_plane::k8s::KubeSettings::DEFAULT_ISSUER_SECRET;
        if values.external_issuer {
            eprintln!(
                "warning: the issuer Secret {namespace}/{secret} (managed outside weft) does not exist: the control plane is not ready until it does"
            );
            return Ok(values);
        }
        return Err(not_installed(format!("Secret {namespace}/{secret}")));
    };
    let name =
        |kind: &str, obj: &str, key: &str| PathBuf::from(format!("{kind} {namespace}/{obj} {key}"));
    let secret = control_plane::k8s::KubeSettings::DEFAULT_ISSUER_SECRET;
    let (an, cn, kn) = (
        name(
            "ConfigMap",
            inject::DEFAULT_TRUST_ROOTS_CONFIGMAP,
            "ca-bundle.crt",
        ),
        name("Secret", secret, "tls.crt"),
        name("Secret", secret, "tls.key"),
    );
    let material = parse_identity_material(
        (&an, anchors.as_bytes()),
        (&cn, cert.as_bytes()),
        Some((&kn, key.as_bytes())),
    );
    let checks = identity_checks(
        material.as_ref().map_err(String::as_str),
        time::OffsetDateTime::now_utc(),
        CheckConfig::default(),
    );
    for c in checks.iter().filter(|c| c.result != Status::Success) {
        eprintln!(
            "warning: the cluster's identity objects: {}: {} (hint: {}); upgrade leaves them as they are",
            c.description, c.error, c.hint
        );
    }
    Ok(values)
}

/// The running installation as install printed it (its recorded values,
/// with `--image` / `--ha` applied), without the identity objects: those
/// are the cluster's, and may have been rotated since.
pub fn run_upgrade(a: UpgradeArgs) -> CmdResult {
    let found = cluster::read(a.kubeconfig.as_deref(), &a.namespace).map_err(|e| {
        Failure::input(format!(
            "{e}; upgrade reads the installation from the cluster: pass --kubeconfig"
        ))
    })?;
    let mut values = installed_values(&found, &a.namespace)?;
    if let Some(image) = a.image {
        values.image = image;
    }
    values.ha |= a.ha;
    let plan = Plan {
        namespace: a.namespace.clone(),
        values,
        identity: None,
    };
    let text =
        m::render(&m::control_plane(&plan).map_err(Failure::fatal)?).map_err(Failure::fatal)?;
    eprintln!(
        "note: the trust-roots ConfigMap and issuer Secret are not printed: the cluster's are kept (rotate them with the steps in the README)"
    );
    out!("{text}");
    Ok(())
}

/// What to delete, the webhook first (so no pod creation waits on a
/// control plane being deleted) and the namespace last.
pub fn run_uninstall(a: UninstallArgs) -> CmdResult {
    let plan = m::every_object(&a.namespace);
    let mut objects: Vec<serde_json::Value> = Vec::new();
    for o in m::control_plane(&plan).map_err(Failure::fatal)? {
        match o {
            Object::Data(v) => objects.push(v),
            Object::Text(t) => objects.extend(
                serde_saphyr::from_multiple::<serde_json::Value>(&t)
                    .map_err(|e| Failure::fatal(format!("shipped RBAC: {e}")))?
                    .into_iter()
                    .filter(|v| !v.is_null()),
            ),
        }
    }
    if a.crds {
        objects.extend(
            serde_saphyr::from_multiple::<serde_json::Value>(control_plane::k8s_manifests::CRDS)
                .map_err(|e| Failure::fatal(format!("shipped CRDs: {e}")))?
                .into_iter()
                .filter(|v| !v.is_null()),
        );
    } else {
        eprintln!(
            "note: weft's CRDs are kept (and the policy objects in them); add --crds to delete them too"
        );
    }
    // Webhook first, namespace last; the rest in install order.
    let rank = |v: &serde_json::Value| match v["kind"].as_str() {
        Some("MutatingWebhookConfiguration") => 0,
        Some("Namespace") => 2,
        _ => 1,
    };
    objects.sort_by_key(rank);
    let stubs: Vec<Object> = objects
        .iter()
        .map(|v| {
            let mut meta = serde_json::json!({"name": v["metadata"]["name"]});
            if let Some(ns) = v["metadata"].get("namespace") {
                meta["namespace"] = ns.clone();
            }
            Object::Data(serde_json::json!({
                "apiVersion": v["apiVersion"], "kind": v["kind"], "metadata": meta,
            }))
        })
        .collect();
    out!("{}", m::render(&stubs).map_err(Failure::fatal)?);
    Ok(())
}
