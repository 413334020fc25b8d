//! Chooses the sources and state by mode: issuer files, join tokens and the
//! state directory standalone; the issuer Secret, trust-roots ConfigMap,
//! ServiceAccount tokens (join tokens still accepted) and state kept in the
//! API (shared by every replica) in Kubernetes.

use std::sync::Arc;
use std::time::Duration;

use identity::metrics::IdentityMetrics;
use identity::proof::{Proof, ProofError, ProofVerifier, StandaloneProofs, Subject};
use identity::record::{BoxFuture, Cap, Record};
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

/// Where the trust bundle's generation is kept: the state directory's file
/// (one control plane), or the ConfigMap every replica shares.
pub enum Generations {
    Files {
        store: crate::bundle::VersionStore,
        last: Option<crate::bundle::Version>,
    },
    Kube(super::generation::KubeGenerations),
}

impl Generations {
    /// Runs forever, publishing the bundle with its generation on `tx`.
    pub async fn run(
        self,
        issuer: watch::Receiver<IssuerStatus>,
        tx: watch::Sender<Option<std::sync::Arc<crate::bundle::LiveBundle>>>,
        gauge: prometheus_client::metrics::gauge::Gauge,
    ) {
        match self {
            Self::Files { store, last } => {
                crate::bundle::track(issuer, store, last, tx, gauge).await
            }
            Self::Kube(k) => k.run(issuer, tx, gauge).await,
        }
    }
}

/// The generation store of `cfg`'s mode. Kubernetes mode reads nothing
/// local: replicas share the API's ConfigMap.
pub fn generations(
    cfg: &ControlPlaneConfig,
    kube: Option<&kube::Client>,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<Generations, crate::bundle::VersionError> {
    match kube {
        Some(client) => {
            let metrics = super::generation::GenerationMetrics::default();
            metrics.register(registry);
            Ok(Generations::Kube(super::generation::KubeGenerations {
                client: client.clone(),
                namespace: cfg.controller_namespace.clone(),
                metrics,
            }))
        }
        None => {
            let store = crate::bundle::VersionStore::new(&cfg.state_dir);
            let last = store.load()?;
            Ok(Generations::Files { store, last })
        }
    }
}

/// The join-token side of the state: the verifier (key and revocations),
/// and the issuance record.
pub struct TokenState {
    pub verifier: identity::token::TokenVerifier,
    pub key_id: String,
    /// The key was made by this start (new state dir, or new Secret).
    pub initialised: bool,
    pub record: Arc<dyn Record>,
    /// Kubernetes mode: writes and follows the record's parts.
    pub record_task: Option<BoxFuture<'static, ()>>,
    /// Kubernetes mode: keeps the revocation list current from the Secret.
    pub follower: Option<RevocationFollower>,
}

pub struct RevocationFollower {
    api: kube::Api<k8s_openapi::api::core::v1::Secret>,
    namespace: String,
    tx: watch::Sender<std::collections::HashMap<String, i64>>,
}

impl RevocationFollower {
    pub async fn run(self) {
        super::tokens::follow_revocations(self.api, self.namespace, self.tx).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Dir(#[from] identity::state::StateError),
    #[error(transparent)]
    Key(#[from] super::tokens::TokenKeyError),
    #[error("join-token verifier: {0}")]
    Verifier(String),
}

/// The join-token key, revocations and issuance record of `cfg`'s mode: the
/// state directory, or (Kubernetes) the Secret and IssuanceRecord objects
/// every replica shares; nothing local, so no --state-dir is made.
pub async fn token_state(
    cfg: &ControlPlaneConfig,
    kube: Option<&kube::Client>,
    now: i64,
    cap: Cap,
) -> Result<TokenState, StateError> {
    let Some(client) = kube else {
        let dir = identity::state::StateDir::open_or_init(&cfg.state_dir)?;
        let verifier =
            identity::token::TokenVerifier::new(&dir.token_key, cfg.clock_skew, dir.revoked_file())
                .map_err(StateError::Verifier)?;
        let record = identity::state::IssuanceRecord::open(dir.issuances_file(), now)?;
        return Ok(TokenState {
            verifier,
            key_id: dir.token_key_id(),
            initialised: dir.initialised,
            record: Arc::new(record.with_cap(cap)),
            record_task: None,
            follower: None,
        });
    };
    let namespace = cfg.controller_namespace.clone();
    let api = kube::Api::namespaced(client.clone(), &namespace);
    let loaded = super::tokens::load_or_create(&api, &namespace).await?;
    let (tx, rx) = watch::channel(loaded.revoked);
    let verifier = identity::token::TokenVerifier::with_revocations(
        &loaded.key,
        cfg.clock_skew,
        identity::token::Revocations::Shared(rx),
    )
    .map_err(StateError::Verifier)?;
    let (record, task) = super::record::KubeRecord::start(
        client.clone(),
        &namespace,
        cap,
        cfg.issuance_lifetime + cfg.clock_skew,
    );
    Ok(TokenState {
        verifier,
        key_id: identity::token::key_id(&loaded.key),
        initialised: loaded.created,
        record,
        record_task: Some(task),
        follower: Some(RevocationFollower { api, namespace, tx }),
    })
}
