//! Chooses the identity side's sources by mode: issuer files and join
//! tokens standalone; the issuer Secret, trust-roots ConfigMap and
//! ServiceAccount tokens (join tokens still accepted) in Kubernetes.

use std::time::Duration;

use identity::metrics::IdentityMetrics;
use identity::proof::{Proof, ProofError, ProofVerifier, StandaloneProofs, Subject};
use identity::{IssuerStatus, Reloader};
use tokio::sync::watch;

use super::issuer::Names;
use super::issuer_source::KubeIssuer;
use super::proofs::KubeProofs;
use crate::ControlPlaneConfig;

/// How long the API server may take to review a token or find a pod.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// The proof verifier of the mode in force.
pub enum Proofs {
    Standalone(StandaloneProofs),
    Kube(KubeProofs),
}

impl ProofVerifier for Proofs {
    async fn verify(&self, proof: &Proof<'_>) -> Result<Subject, ProofError> {
        match self {
            Self::Standalone(p) => p.verify(proof).await,
            Self::Kube(p) => p.verify(proof).await,
        }
    }
}

/// Where the issuer comes from.
pub enum IssuerSource {
    Files(Reloader),
    Kube(KubeIssuer),
}

impl IssuerSource {
    /// Runs forever, publishing on `tx`.
    pub async fn run(self, tx: watch::Sender<IssuerStatus>) {
        match self {
            Self::Files(r) => r.run(tx).await,
            Self::Kube(k) => k.run(tx).await,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "no issuer source: pass --identity-trust-anchors-file, --identity-issuer-certificate-file and --identity-issuer-key-file, or --kubernetes to read the issuer Secret and trust-roots ConfigMap"
)]
pub struct NoIssuerSource;

/// The issuer source and proof verifier for `cfg`'s mode; `kube` is the
/// one client of Kubernetes mode.
pub fn identity_sources(
    cfg: &ControlPlaneConfig,
    kube: Option<&kube::Client>,
    standalone: StandaloneProofs,
    metrics: IdentityMetrics,
) -> Result<(Proofs, IssuerSource), NoIssuerSource> {
    let debounce = Duration::from_millis(200);
    match (kube, &cfg.kubernetes) {
        (Some(client), Some(settings)) => Ok((
            Proofs::Kube(KubeProofs {
                client: client.clone(),
                standalone,
                timeout: REVIEW_TIMEOUT,
            }),
            IssuerSource::Kube(KubeIssuer {
                client: client.clone(),
                names: Names {
                    namespace: cfg.controller_namespace.clone(),
                    configmap: settings.trust_roots_configmap.clone(),
                    secret: settings.issuer_secret.clone(),
                },
                interval: cfg.reread_interval,
                debounce,
                metrics,
            }),
        )),
        _ => {
            let files = cfg.issuer_files.clone().ok_or(NoIssuerSource)?;
            Ok((
                Proofs::Standalone(standalone),
                IssuerSource::Files(Reloader {
                    files,
                    interval: cfg.reread_interval,
                    debounce,
                    metrics,
                }),
            ))
        }
    }
}
