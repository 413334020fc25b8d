//! Kubernetes mode: the control plane as a controller of a real API server.
//! The watches here feed the same snapshot and indexes the resource
//! directory feeds, so a verdict never depends on which source produced it.

pub mod events;
pub mod generation;
pub mod issuer;
pub mod issuer_source;
pub mod lease;
pub mod operator_auth;
pub mod proofs;
pub mod record;
pub mod record_parts;
pub mod resources;
pub mod tokens;
pub mod webhook;
pub mod wiring;

use std::fmt;
use std::path::PathBuf;

/// What Kubernetes mode needs beyond the common configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// A kubeconfig file; None: in-cluster configuration (or `KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// ConfigMap (in the control plane's namespace) holding the trust
    /// anchors under `ca-bundle.crt`, as Linkerd names it.
    pub trust_roots_configmap: String,
    /// Secret (in the control plane's namespace) holding the issuer.
    pub issuer_secret: String,
    /// The injector, when this replica serves it.
    pub webhook: Option<webhook::WebhookSettings>,
    /// Service (in the control plane's namespace) whose EndpointSlices list
    /// the replicas, for the merged fleet view (port named "destination").
    pub fleet_peers_service: String,
}

impl KubeSettings {
    pub const DEFAULT_TRUST_ROOTS_CONFIGMAP: &'static str = "linkerd-identity-trust-roots";
    pub const DEFAULT_ISSUER_SECRET: &'static str = "linkerd-identity-issuer";
    /// `weft install`'s destination Service: every replica is behind it.
    pub const DEFAULT_FLEET_PEERS_SERVICE: &'static str = "weft-destination";
}

impl fmt::Display for KubeSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kubeconfig {
            Some(p) => write!(f, "kubeconfig {}", p.display())?,
            None => f.write_str("in-cluster configuration")?,
        }
        write!(
            f,
            "; trust roots ConfigMap {}, issuer Secret {}, fleet peers behind Service {}",
            self.trust_roots_configmap, self.issuer_secret, self.fleet_peers_service
        )?;
        match &self.webhook {
            Some(w) => write!(f, "; injector on {w}"),
            None => f.write_str("; no injector (--webhook-addr not given)"),
        }
    }
}

/// Why the API server cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "cannot read kubeconfig {path}: {source}; pass --kubeconfig with a readable file, or run in a pod with a service account"
    )]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes configuration: {source}; pass --kubeconfig, set KUBECONFIG, or run in a pod with a service account"
    )]
    Infer {
        #[source]
        source: kube::config::InferConfigError,
    },
    #[error("cannot build a Kubernetes client: {source}")]
    Client {
        #[source]
        source: kube::Error,
    },
}

/// A client for the configured API server (rustls with aws-lc-rs).
pub async fn connect(settings: &KubeSettings) -> Result<kube::Client, ConnectError> {
    client(settings.kubeconfig.as_deref()).await
}

/// A client from `kubeconfig`, or the in-cluster configuration (or
/// `KUBECONFIG`) when None.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, ConnectError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                ConnectError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| ConnectError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|source| ConnectError::Infer { source })?,
    };
    kube::Client::try_from(config).map_err(|source| ConnectError::Client { source })
}
