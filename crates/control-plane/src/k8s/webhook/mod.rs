//! The injector: a mutating admission webhook served by every control-plane
//! replica. Pods are meshed by the `inject` crate's one function (what
//! `weft inject --manual` applies too); the serving certificate chains to a
//! webhook CA shared through a Secret and rotated through the
//! configuration's `caBundle` (see [`ca`]); the trust anchors a new proxy
//! boots with are copied into the pod's namespace (see [`trust_copies`]).

pub mod admission;
pub mod ca;
pub mod keeper;
pub mod server;
pub mod trust_copies;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pki::create::San;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::bundle::LiveBundle;

/// The injector's settings (Kubernetes mode, `--webhook-addr` given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    pub addr: SocketAddr,
    /// The MutatingWebhookConfiguration whose `caBundle` weft keeps.
    pub configuration: String,
    /// The Secret (control plane's namespace) holding the webhook CAs.
    pub ca_secret: String,
    pub ca_lifetime: Duration,
    /// Names beyond the webhook Service's, for a webhook reached by URL
    /// (development, as envtest does).
    pub extra_names: Vec<San>,
    pub inject: inject::Settings,
    pub limits: bounds::Limits,
}

impl WebhookSettings {
    pub const DEFAULT_CONFIGURATION: &'static str = "weft-injector";
    pub const DEFAULT_CA_SECRET: &'static str = "weft-injector-ca";
    pub const SERVICE: &'static str = "weft-webhook";

    /// The serving certificate's names: the Service's, then the extras.
    pub fn names(&self, namespace: &str) -> Vec<San> {
        let svc = format!("{}.{namespace}.svc", Self::SERVICE);
        let mut names = vec![
            San::Dns(svc.clone()),
            San::Dns(format!("{svc}.{}", self.inject.cluster_domain)),
        ];
        names.extend(self.extra_names.iter().cloned());
        names
    }
}

impl fmt::Display for WebhookSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (configuration {}, CA Secret {}, CA lifetime {}s, image {}, {})",
            self.addr,
            self.configuration,
            self.ca_secret,
            self.ca_lifetime.as_secs(),
            self.inject.image,
            self.limits
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot listen for the injector on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("injector TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// The injector's bound listener and tasks, ready to spawn.
pub struct Injector {
    pub addr: SocketAddr,
    pub keeper: keeper::Keeper,
    pub copies: trust_copies::TrustCopies,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    gate: bounds::Gate,
    handler: server::Handler,
}

impl Injector {
    pub async fn bind(
        s: &WebhookSettings,
        client: kube::Client,
        namespace: &str,
        bundle: watch::Receiver<Option<Arc<LiveBundle>>>,
        limits: &bounds::Metrics,
        metrics: server::WebhookMetrics,
    ) -> Result<Self, WebhookError> {
        let listener = bounds::listen(s.addr).map_err(|source| WebhookError::Bind {
            addr: s.addr,
            source,
        })?;
        let (tx, rx) = watch::channel(None);
        let copies = trust_copies::TrustCopies {
            client: client.clone(),
            name: s.inject.trust_roots_configmap.clone(),
            bundle,
        };
        Ok(Self {
            addr: listener.local_addr().unwrap_or(s.addr),
            keeper: keeper::Keeper {
                client: client.clone(),
                cfg: keeper::KeeperConfig {
                    namespace: namespace.to_string(),
                    secret: s.ca_secret.clone(),
                    configuration: s.configuration.clone(),
                    names: s.names(namespace),
                    ca_lifetime: s.ca_lifetime,
                    serving_lifetime: Duration::from_secs(24 * 3600),
                },
                tx,
            },
            acceptor: server::acceptor(rx)?,
            gate: bounds::Gate::new("webhook", s.limits, limits),
            handler: server::Handler {
                client,
                settings: s.inject.clone(),
                copies: copies.clone(),
                metrics,
            },
            copies,
            listener,
        })
    }

    /// Runs the listener, the CA keeper and the copy refresher.
    pub async fn run(self, control_plane_ns: String) {
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(self.keeper.run());
        tasks.spawn(self.copies.run(control_plane_ns));
        tasks.spawn(server::serve(
            self.listener,
            self.acceptor,
            self.gate,
            self.handler,
        ));
        while tasks.join_next().await.is_some() {}
    }
}
