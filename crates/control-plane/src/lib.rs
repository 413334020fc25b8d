//! The weft control plane: the identity service over TLS, and admin.

pub mod admin;
pub mod bundle;
pub mod changes;
pub mod config;
pub mod destination;
pub mod fleet;
pub mod fleet_check;
pub mod fleet_edges;
pub mod fleet_metrics;
pub mod fleet_peers;
pub mod fleet_tls_check;
pub mod grpc_bounds;
pub mod index;
pub mod k8s;
pub mod k8s_manifests;
pub mod lean;
pub mod mesh_service;
pub mod operator;
pub mod operator_tls;
pub mod outbound;
pub mod own_cert;
pub mod peer;
pub mod plaintext;
pub mod policy_service;
pub mod refusals;
pub mod services;
pub mod shutdown;
pub mod source;
pub mod tap;
pub mod tls;
pub mod ui;
pub mod workloads;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::lean::Lean;
use identity::proof::StandaloneProofs;
use identity::record::Record;
use identity::{CertifyConfig, IdentityService, IssuerStatus};
use linkerd2_proxy_api::identity::identity_server::IdentityServer;
use pki::Identity;
use policy::resources::Snapshot;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

pub use config::ControlPlaneConfig;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    State(#[from] k8s::wiring::StateError),
    #[error(transparent)]
    BundleVersion(#[from] bundle::VersionError),
    #[error("--identity-trust-domain/--controller-namespace: {0}")]
    Names(String),
    #[error("cannot listen on {addr}: {source}; is another process using it?")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "--control-plaintext-loopback {addr}: not a loopback address; plaintext gRPC is served on loopback only: use 127.0.0.1:PORT or [::1]:PORT, and TLS (--identity-addr, --destination-addr, --policy-addr) for everything off the host"
    )]
    NotLoopback { addr: SocketAddr },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error(transparent)]
    Kube(#[from] k8s::ConnectError),
    #[error(transparent)]
    NoIssuerSource(#[from] k8s::wiring::NoIssuerSource),
    #[error(transparent)]
    Webhook(#[from] k8s::webhook::WebhookError),
}

/// What a started control plane reports (addresses actually bound).
#[derive(Debug, Clone)]
pub struct Started {
    pub identity_addr: SocketAddr,
    pub policy_addr: SocketAddr,
    pub destination_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The operator (TLS) listener, when asked for.
    pub operator_addr: Option<SocketAddr>,
    /// The plaintext loopback listener, when asked for.
    pub plaintext_addr: Option<SocketAddr>,
    pub token_key_id: String,
    pub state_initialised: bool,
    /// The injector's listener, when this replica serves it.
    pub webhook_addr: Option<SocketAddr>,
}

/// Starts every part and returns once listening; the returned future runs
/// until `shutdown` resolves.
pub async fn start(
    cfg: ControlPlaneConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(Started, impl std::future::Future<Output = ()>), StartError> {
    let own_identity = Identity::control_plane(&cfg.controller_namespace, &cfg.trust_domain)
        .map_err(|e| StartError::Names(e.to_string()))?;
    // Kubernetes mode: the one client every watch and review shares.
    let kube = match &cfg.kubernetes {
        Some(settings) => Some(k8s::connect(settings).await?),
        None => None,
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut registry = Registry::default();
    let cap = identity::record::Cap::new(cfg.max_live_certificates);
    cap.register(&mut registry);
    let tokens = k8s::wiring::token_state(&cfg, kube.as_ref(), now, cap.clone()).await?;
    let record = tokens.record.clone();
    let metrics = identity::metrics::IdentityMetrics::new(&mut registry);
    let own_expiry =
        prometheus_client::metrics::gauge::Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    registry.register(
        "identity_self_cert_expiration_timestamp_seconds",
        "NotAfter of the control plane's own certificate (unix seconds)",
        own_expiry.clone(),
    );
    let fleet = Arc::new(fleet::Fleet::default());
    fleet.metrics.register(&mut registry);
    let limits = bounds::Metrics::default();
    limits.register(&mut registry);
    let generations = k8s::wiring::generations(&cfg, kube.as_ref(), &mut registry)?;
    let webhook_metrics = k8s::webhook::server::WebhookMetrics::default();
    webhook_metrics.register(&mut registry);
    let refusals = refusals::ApiRefusals::new(&mut registry);
    let admin_refusals = operator_tls::Refusals::default();
    admin_refusals.register(&mut registry);
    let registry = Arc::new(registry);

    let (issuer_tx, issuer_rx) = watch::channel(IssuerStatus::default());
    let (bundle_tx, bundle_rx) = watch::channel(None);
    let (own_tx, own_rx) = watch::channel(None);

    let bind =
        |addr: SocketAddr| bounds::listen(addr).map_err(|source| StartError::Bind { addr, source });
    let identity_listener = bind(cfg.identity_addr)?;
    let policy_listener = bind(cfg.policy_addr)?;
    let plaintext_listener = plaintext::bind(cfg.plaintext_loopback)?;
    let destination_listener = bind(cfg.destination_addr)?;
    let admin_listener = bind(cfg.admin_addr)?;
    let operator_listener = match &cfg.operator {
        Some(op) => Some(bind(op.addr)?),
        None => None,
    };
    let webhook = cfg.kubernetes.as_ref().and_then(|k| k.webhook.as_ref());
    let injector = match (webhook, &kube) {
        (Some(w), Some(client)) => Some(
            k8s::webhook::Injector::bind(
                w,
                client.clone(),
                &cfg.controller_namespace,
                bundle_rx.clone(),
                &limits,
                webhook_metrics,
            )
            .await?,
        ),
        _ => None,
    };
    let started = Started {
        identity_addr: identity_listener.local_addr().unwrap_or(cfg.identity_addr),
        policy_addr: policy_listener.local_addr().unwrap_or(cfg.policy_addr),
        destination_addr: destination_listener
            .local_addr()
            .unwrap_or(cfg.destination_addr),
        admin_addr: admin_listener.local_addr().unwrap_or(cfg.admin_addr),
        operator_addr: operator_listener.as_ref().and_then(|l| l.local_addr().ok()),
        plaintext_addr: plaintext_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok()),
        token_key_id: tokens.key_id,
        state_initialised: tokens.initialised,
        webhook_addr: injector.as_ref().map(|i| i.addr),
    };

    let revocations = tokens.follower;
    let record_task = tokens.record_task;
    let standalone = StandaloneProofs {
        tokens: tokens.verifier,
        record: Some(record.clone()),
        issuer: issuer_rx.clone(),
        control_plane_ns: cfg.controller_namespace.clone(),
        trust_domain: cfg.trust_domain.clone(),
    };
    let (proofs, issuer_source) =
        k8s::wiring::identity_sources(&cfg, kube.as_ref(), standalone, metrics.clone())?;
    let svc = IdentityService::new(
        CertifyConfig {
            lifetime: cfg.issuance_lifetime,
            skew: cfg.clock_skew,
            control_plane_ns: cfg.controller_namespace.clone(),
            trust_domain: cfg.trust_domain.clone(),
            limits: cfg.certify_limits,
        },
        issuer_rx.clone(),
        proofs,
        metrics,
        Some(record.clone()),
    );
    let tls = tls::server_config(own_rx.clone()).map_err(|e| StartError::Tls(e.to_string()))?;

    let own_cfg = own_cert::OwnCertConfig {
        identity: own_identity.clone(),
        lifetime: cfg.issuance_lifetime,
        skew: cfg.clock_skew,
        min_refresh: cfg.min_refresh,
    };
    let (index_tx, index_rx) = watch::channel(Arc::new(workloads::Index::default()));
    let resources = cfg.resources.clone().map(|dir| source::DirSource {
        dir,
        interval: cfg.reread_interval,
        debounce: Duration::from_millis(200),
        control_plane_ns: cfg.controller_namespace.clone(),
        trust_domain: cfg.trust_domain.clone(),
    });
    let kube_resources = kube.clone().map(|client| k8s::resources::KubeSource {
        client,
        control_plane_ns: cfg.controller_namespace.clone(),
        trust_domain: cfg.trust_domain.clone(),
    });
    let (kube_health_tx, kube_health_rx) = watch::channel(k8s::resources::KubeHealth::default());
    // With no resource source, nothing is meshed, and that is known.
    let initial = if resources.is_none() && kube_resources.is_none() {
        policy::resources::merge(&Snapshot::default(), Ok(Default::default()))
    } else {
        Snapshot::default()
    };
    let (snap_tx, snap_rx) = watch::channel(Arc::new(initial));
    let policy = policy_service::PolicyService {
        snapshot: snap_rx.clone(),
        issuer: issuer_rx.clone(),
        defaults: cfg.policy.clone(),
        in_force: Default::default(),
        unsettled: Default::default(),
        pods_known: cfg.kubernetes.is_some(),
        refusals: refusals.clone(),
    };
    let destination = destination::DestinationService {
        index: index_rx.clone(),
        issuer: issuer_rx.clone(),
        refusals: refusals.clone(),
    };
    let outbound = outbound::OutboundService {
        index: index_rx.clone(),
        issuer: issuer_rx.clone(),
        refusals: refusals.clone(),
    };
    // This process among the replicas: peers skip themselves by it.
    let replica_id = format!("{:016x}", bounds::retry::random());
    let peers = cfg
        .kubernetes
        .as_ref()
        .zip(kube.clone())
        .map(|(k, client)| fleet_peers::Peers {
            client,
            namespace: cfg.controller_namespace.clone(),
            service: k.fleet_peers_service.clone(),
            port_name: "destination".into(),
            replica_id: replica_id.clone(),
            control_plane: own_identity.clone(),
            own: own_rx.clone(),
            issuer: issuer_rx.clone(),
        });
    let mesh = mesh_service::MeshService {
        fleet: fleet.clone(),
        bundle: bundle_rx.clone(),
        own: own_rx.clone(),
        issuer: issuer_rx.clone(),
        control_plane: own_identity.clone(),
        replica_id,
    };
    let admin_state = admin::AdminState {
        registry,
        issuer: issuer_rx.clone(),
        own: own_rx.clone(),
        index: index_rx,
        fleet: fleet.clone(),
        bundle: bundle_rx.clone(),
        record: record.clone(),
        gate: bounds::Gate::new("admin", cfg.admin_limits, &limits),
        kube: kube.is_some().then_some(kube_health_rx),
        peers,
        refusals: admin_refusals,
        tap_slots: Arc::new(tokio::sync::Semaphore::new(tap::MAX_TAPS)),
    };
    // Its own gate: the operator listener is bounded apart from loopback's.
    let operator_task = operator_listener.zip(cfg.operator.clone()).map(|(l, op)| {
        let st = admin::AdminState {
            gate: bounds::Gate::new("operator", cfg.admin_limits, &limits),
            ..admin_state.clone()
        };
        // Kubernetes mode: bearer tokens too, reviewed by the API server.
        let tokens = kube.clone().filter(|_| op.tokens).map(|client| {
            Arc::new(k8s::operator_auth::OperatorTokens::new(
                client,
                cfg.controller_namespace.clone(),
                Duration::from_secs(5),
            ))
        });
        operator_tls::serve(l, st, op, cfg.controller_namespace.clone(), tokens)
    });
    let cp_ns = cfg.controller_namespace.clone();
    let trust_domain = cfg.trust_domain.clone();
    // Kubernetes mode knows every address in the cluster; standalone does not.
    let cluster_networks = cfg
        .kubernetes
        .is_some()
        .then(|| cfg.policy.cluster_networks.clone());

    let run = async move {
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(generations.run(
            issuer_rx.clone(),
            bundle_tx,
            fleet.metrics.bundle_generation.clone(),
        ));
        tasks.spawn(renew_passes(fleet.clone(), bundle_rx.clone()));
        tasks.spawn(observe_fleet(fleet, bundle_rx, record.clone(), cap));
        tasks.spawn(issuer_source.run(issuer_tx));
        tasks.spawn(own_cert::run(own_cfg, issuer_rx.clone(), own_tx));
        tasks.spawn(admin::serve(admin_listener, admin_state));
        if let Some(task) = operator_task {
            tasks.spawn(task);
        }
        tasks.spawn(track_own_expiry(own_rx, own_expiry));
        tasks.spawn(compact_record(record));
        if let Some(task) = record_task {
            tasks.spawn(task);
        }
        if let Some(follower) = revocations {
            tasks.spawn(follower.run());
        }
        if let Some(source) = resources {
            tasks.spawn(source.run(snap_tx));
        } else if let Some(source) = kube_resources {
            tasks.spawn(source.run(snap_tx, kube_health_tx));
        }
        tasks.spawn(feed_index(
            snap_rx,
            index_tx,
            cp_ns,
            trust_domain,
            cluster_networks,
        ));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (close_tx, close_rx) = watch::channel(false);
        // The accept loops: aborted on shutdown, which closes the listeners.
        let mut accepting = tokio::task::JoinSet::new();
        if let Some(injector) = injector {
            accepting.spawn(injector.run(cfg.controller_namespace.clone()));
        }
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let incoming = |rx| tokio_stream::wrappers::ReceiverStream::new(rx);
        let limit = cfg.grpc_limits.listener;
        let (listeners, streams) = (&limits, grpc_bounds::MAX_STREAMS_PER_CONNECTION);
        let identity_gate =
            grpc_bounds::Listener::new("identity", limit, listeners, close_rx.clone());
        let svc = Arc::new(svc);
        let (conn_tx, conn_rx) = mpsc::channel(256);
        let (anon_tx, anon_rx) = mpsc::channel(256);
        accepting.spawn(identity_gate.clone().accept_tls(
            identity_listener,
            TlsAcceptor::from(tls.clone()),
            conn_tx,
            Some(anon_tx),
            issuer_rx.clone(),
        ));
        let identity_server = grpc_bounds::server(streams)
            .layer(identity_gate.layer())
            .add_service(IdentityServer::from_arc(svc.clone()))
            .serve_with_incoming_shutdown(incoming(conn_rx), stopped(stop_rx.clone()));
        // Without a client certificate: a few streams per connection.
        let anonymous_server = grpc_bounds::server(cfg.grpc_limits.anonymous_streams)
            .layer(identity_gate.layer())
            .add_service(IdentityServer::from_arc(svc.clone()))
            .serve_with_incoming_shutdown(incoming(anon_rx), stopped(stop_rx.clone()));
        let plaintext_server = plaintext_listener.map(|listener| {
            let gate = grpc_bounds::Listener::new("plaintext", limit, listeners, close_rx.clone());
            let (tx, rx) = mpsc::channel(256);
            accepting.spawn(gate.clone().accept_plain(listener, tx));
            grpc_bounds::server(streams)
                .layer(gate.layer())
                .add_service(IdentityServer::from_arc(svc.clone()))
                .add_service(Lean::new(destination.clone()))
                .add_service(Lean::new(policy.clone()))
                .add_service(Lean::new(outbound.clone()))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                    stopped(stop_rx.clone()),
                )
        });
        let plaintext_server = async move {
            match plaintext_server {
                Some(server) => server.await,
                None => Ok(()),
            }
        };
        let destination_gate =
            grpc_bounds::Listener::new("destination", limit, listeners, close_rx.clone());
        let (dconn_tx, dconn_rx) = mpsc::channel(256);
        accepting.spawn(destination_gate.clone().accept_tls(
            destination_listener,
            TlsAcceptor::from(tls.clone()),
            dconn_tx,
            None,
            issuer_rx.clone(),
        ));
        // Policy too: a proxy given one address for both holds one
        // connection to the control plane, not two (half the memory here).
        let destination_server = grpc_bounds::server(streams)
            .layer(destination_gate.layer())
            .add_service(Lean::new(destination))
            .add_service(mesh_api::v1::mesh_server::MeshServer::new(mesh))
            .add_service(Lean::new(policy.clone()))
            .add_service(Lean::new(outbound.clone()))
            .serve_with_incoming_shutdown(incoming(dconn_rx), stopped(stop_rx.clone()));
        let policy_gate = grpc_bounds::Listener::new("policy", limit, listeners, close_rx.clone());
        let (pconn_tx, pconn_rx) = mpsc::channel(256);
        accepting.spawn(policy_gate.clone().accept_tls(
            policy_listener,
            TlsAcceptor::from(tls),
            pconn_tx,
            None,
            issuer_rx.clone(),
        ));
        let policy_server = grpc_bounds::server(streams)
            .layer(policy_gate.layer())
            .add_service(Lean::new(policy))
            .add_service(Lean::new(outbound))
            .serve_with_incoming_shutdown(incoming(pconn_rx), stopped(stop_rx.clone()));
        let servers = async {
            tokio::join!(
                identity_server,
                anonymous_server,
                destination_server,
                policy_server,
                plaintext_server
            )
        };
        let ended = shutdown::stop_after_grace(
            servers,
            shutdown,
            shutdown::Handles {
                accepting,
                stop: stop_tx,
                close: close_tx,
                grace: cfg.shutdown_grace,
            },
        )
        .await;
        let Some((a, n, b, c, p)) = ended else {
            tracing::warn!("connections still open after the grace period; stopping anyway");
            tasks.abort_all();
            return;
        };
        let ends = [
            ("identity", a),
            ("identity (no client certificate)", n),
            ("destination", b),
            ("policy", c),
            ("plaintext", p),
        ];
        for (name, r) in ends {
            if let Err(e) = r {
                tracing::error!(error = %e, "{name} server stopped");
            }
        }
        tasks.abort_all();
    };
    Ok((started, run))
}

async fn track_own_expiry(
    mut own: watch::Receiver<Option<Arc<own_cert::OwnCert>>>,
    gauge: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
) {
    loop {
        let v = own
            .borrow_and_update()
            .as_ref()
            .map(|o| o.not_after.unix_timestamp() as f64)
            .unwrap_or(0.0);
        gauge.set(v);
        if own.changed().await.is_err() {
            return;
        }
    }
}

/// Turns resource snapshots into the workload index, logging what cannot be used.
async fn feed_index(
    mut snaps: watch::Receiver<Arc<Snapshot>>,
    tx: watch::Sender<Arc<workloads::Index>>,
    cp_ns: String,
    trust_domain: String,
    cluster_networks: Option<Vec<policy::resources::Cidr>>,
) {
    let mut last_problems = Vec::new();
    loop {
        let snap = snaps.borrow_and_update().clone();
        let in_force: std::collections::BTreeSet<&std::path::Path> =
            snap.objects.values().map(|s| s.file.as_path()).collect();
        let refused: Vec<index::RefusedFile> = snap
            .errors()
            .map(|p| p.file.clone())
            .filter(|f| !in_force.contains(f.as_path()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter_map(|file| {
                let text = text_of(&snap, &file)?;
                Some(index::RefusedFile {
                    claims: policy::resources::claimed_addresses(&text),
                    file,
                })
            })
            .collect();
        let (index, problems) = index::build_index(
            &snap,
            &refused,
            &cp_ns,
            &trust_domain,
            cluster_networks.as_deref(),
        );
        if problems != last_problems {
            for p in &problems {
                tracing::warn!("{p}");
            }
            last_problems = problems;
        }
        tx.send_if_modified(|cur| {
            let changed = **cur != index;
            if changed {
                *cur = Arc::new(index);
            }
            changed
        });
        if snaps.changed().await.is_err() {
            return;
        }
    }
}

/// The text of a refused document: held by the source (Kubernetes), or its
/// file as it is now.
pub fn text_of(snap: &Snapshot, origin: &std::path::Path) -> Option<String> {
    match &snap.held {
        Some(held) => held.get(origin).cloned(),
        None => std::fs::read_to_string(origin).ok(),
    }
}

/// Renew-now requests at most this many per second, fleet-wide.
const RENEW_PER_SECOND: usize = 20;

/// Each second: asks proxies on an older issuer (or marked by hand) to
/// renew, within the rate limit.
async fn renew_passes(
    fleet: Arc<fleet::Fleet>,
    bundle: watch::Receiver<Option<Arc<bundle::LiveBundle>>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let current = bundle.borrow().clone();
        if let Some(b) = current {
            fleet.served(&b);
            fleet.renew_pass(&b, RENEW_PER_SECOND);
        }
    }
}

/// Keeps the fleet gauges current.
async fn observe_fleet(
    fleet: Arc<fleet::Fleet>,
    bundle: watch::Receiver<Option<Arc<bundle::LiveBundle>>>,
    record: Arc<dyn Record>,
    cap: identity::record::Cap,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let live = record.live(now);
        cap.live.set(i64::try_from(live.len()).unwrap_or(i64::MAX));
        let current = bundle.borrow().clone();
        fleet
            .metrics
            .observe(&fleet.view(now, current.as_deref(), &live));
    }
}

/// Compacts the record when due (every 10 minutes for the file), and every
/// 5 s while a write has failed: a successful rewrite ends the refusal to
/// issue without waiting for the next Certify.
async fn compact_record(record: Arc<dyn Record>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    let mut last = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let failing = record.failure();
        if failing.is_none() && last.elapsed() < record.compact_every() {
            continue;
        }
        last = tokio::time::Instant::now();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        match record.compact(now).await {
            Ok(_) if failing.is_some() => {
                tracing::info!("the issuance record can be written again; issuing")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot compact the issuance record"),
        }
    }
}
