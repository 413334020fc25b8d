//! The weft proxy: gets and renews its certificate, terminates and
//! originates mutual TLS, resolves destinations fail-closed.

pub mod admin;
pub mod anchors_file;
mod app_pool;
pub mod authz;
pub mod cert;
pub mod certify;
pub mod config;
pub mod connect;
pub mod control;
pub mod copy;
pub mod detect;
pub mod discovery;
pub mod edges;
pub mod endpoints;
pub mod follow;
pub mod forward;
pub mod http;
pub mod inbound;
pub mod init;
pub mod mesh;
pub mod metrics;
pub mod orig_proto;
pub mod outbound;
mod outbound_http;
pub mod policies;
pub mod pool;
pub mod prefixed;
pub mod probe;
pub mod replicas;
pub mod tap;
pub mod tls;
pub mod transport_header;
pub mod trust;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{OutboundMapping, Plaintext, ProxyConfig, WorkloadKind, WorkloadRef};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "{path}: {source}; pass the trust anchor bundle (the control plane's --identity-trust-anchors-file)"
    )]
    AnchorsUnreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: {source}; pass the trust anchor bundle (the control plane's --identity-trust-anchors-file)"
    )]
    Anchors {
        path: String,
        #[source]
        source: trust::BundleRefused,
    },
    #[error("cannot listen on {addr}: {source}; is another process using it?")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(#[source] rustls::Error),
}

#[derive(Debug, Clone)]
pub struct Started {
    pub inbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub tap_addr: SocketAddr,
    pub outbound_addrs: Vec<(SocketAddr, String)>,
    pub outbound_addr: Option<SocketAddr>,
    /// The certificate in force, as it changes.
    pub cert: watch::Receiver<Option<Arc<cert::ProxyCert>>>,
}

fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    bounds::listen(addr).map_err(|source| StartError::Bind { addr, source })
}

pub async fn start(
    cfg: ProxyConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(Started, impl std::future::Future<Output = ()>), StartError> {
    let anchors_pem = std::fs::read_to_string(&cfg.anchors_file).map_err(|source| {
        StartError::AnchorsUnreadable {
            path: cfg.anchors_file.display().to_string(),
            source,
        }
    })?;
    let trust = trust::Trust::new(None, &anchors_pem).map_err(|source| StartError::Anchors {
        path: cfg.anchors_file.display().to_string(),
        source,
    })?;
    let (trust_tx, trust_rx) = watch::channel(Arc::new(trust));

    let metrics = metrics::ProxyMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let limits = bounds::Metrics::default();
    limits.register(&mut registry);
    let tap_metrics = tap::TapMetrics::default();
    tap_metrics.register(&mut registry);
    let taps = tap::Taps::new(tap_metrics);
    let registry = Arc::new(registry);

    let (cert_tx, cert_rx) = watch::channel(None);
    let inbound_listener = bind(cfg.inbound_addr)?;
    let admin_listener = bind(cfg.admin_addr)?;
    let tap_listener = bind(cfg.tap_addr)?;
    let transparent_listener = match cfg.outbound_addr {
        Some(a) => Some(bind(a)?),
        None => None,
    };
    let mut outbound_listeners = Vec::new();
    for m in &cfg.outbound {
        outbound_listeners.push((bind(m.listen)?, m.clone()));
    }
    let started = Started {
        inbound_addr: inbound_listener.local_addr().unwrap_or(cfg.inbound_addr),
        admin_addr: admin_listener.local_addr().unwrap_or(cfg.admin_addr),
        tap_addr: tap_listener.local_addr().unwrap_or(cfg.tap_addr),
        outbound_addrs: outbound_listeners
            .iter()
            .map(|(l, m)| (l.local_addr().unwrap_or(m.listen), m.target.clone()))
            .collect(),
        outbound_addr: transparent_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok()),
        cert: cert_rx.clone(),
    };

    let (renew_tx, renew_rx) = tokio::sync::mpsc::channel(4);
    let (status_tx, status_rx) = watch::channel(cert::RefreshStatus::default());
    let control = control::ControlPlane::new(
        cfg.control_plane_identity.clone(),
        trust_rx.clone(),
        cert_rx.clone(),
    )
    .map_err(StartError::Tls)?;
    let cert_loop = cert::CertLoop {
        addr: cfg.identity_addr.clone(),
        control: control.clone(),
        control_plane: cfg.control_plane_identity.clone(),
        timeout: Duration::from_secs(10),
        trust: trust_rx.clone(),
        identity: cfg.identity.clone(),
        token_file: cfg.token_file.clone(),
        min_refresh: cfg.min_refresh,
        renew: renew_rx,
        status: status_tx,
        refreshes: metrics.refreshes.clone(),
    };
    let anchors_watch = anchors_file::Watch {
        path: cfg.anchors_file.clone(),
        trust: trust_tx.clone(),
        applied: anchors_pem,
        metrics: metrics.clone(),
    };
    let mesh_link = mesh::MeshLink {
        addr: cfg.destination_addr.clone(),
        control: control.clone(),
        trust: trust_tx,
        cert: cert_rx.clone(),
        refresh: status_rx,
        renew: renew_tx,
        identity: cfg.identity.clone(),
        workload: cfg.workload.to_string(),
        metrics: metrics.clone(),
        admin_addr: started.admin_addr,
        tap_addr: started.tap_addr,
        instance: instance_id(),
        mesh_tls: cfg.mesh_tls.clone(),
    };
    let discovery = discovery::Discovery::new(
        cfg.destination_addr.clone(),
        control.clone(),
        cfg.discovery_timeout,
    );
    let policies = policies::Policies::new(
        cfg.policy_addr.clone(),
        control,
        &cfg.workload,
        cfg.discovery_timeout,
    );
    let inbound_cfg = tls::inbound_config(
        trust_rx.clone(),
        cert_rx.clone(),
        &cfg.identity.to_string(),
        &cfg.mesh_tls,
    )
    .map_err(StartError::Tls)?;
    let outbound_cfg = tls::outbound_config(trust_rx.clone(), cert_rx.clone(), true, &cfg.mesh_tls)
        .map_err(StartError::Tls)?;
    let outbound_plain =
        tls::outbound_config(trust_rx.clone(), cert_rx.clone(), false, &cfg.mesh_tls)
            .map_err(StartError::Tls)?;
    let held_policies = policies.clone();
    let inbound = Arc::new(inbound::Inbound {
        acceptor: tokio_rustls::TlsAcceptor::from(inbound_cfg),
        workload: cfg.workload.to_string(),
        identity: cfg.identity.clone(),
        discovery: discovery.clone(),
        policies,
        detect_timeout: cfg.detect_timeout,
        own_ports: [
            started.inbound_addr.port(),
            started.admin_addr.port(),
            started.tap_addr.port(),
        ]
        .into_iter()
        .chain(started.outbound_addr.map(|a| a.port()))
        .chain(started.outbound_addrs.iter().map(|(a, _)| a.port()))
        .collect(),
        transparent: cfg.outbound_addr.is_some(),
        metrics: metrics.clone(),
        gate: bounds::Gate::new("inbound", cfg.inbound_limits, &limits),
        taps: taps.clone(),
        tap_local: Arc::new(tap::Local {
            identity: cfg.identity.clone(),
            workload: cfg.workload.to_string(),
        }),
    });
    let tap_service = tap::server::TapService {
        taps,
        control_plane: cfg.control_plane_identity.clone(),
        slots: Arc::new(tokio::sync::Semaphore::new(tap::server::MAX_TAPS)),
    };
    let tap_gate = bounds::Gate::new("tap", cfg.admin_limits, &limits);
    let tap_tls = tokio_rustls::TlsAcceptor::from(
        tls::tap_config(trust_rx.clone(), cert_rx.clone(), &cfg.identity.to_string())
            .map_err(StartError::Tls)?,
    );
    let outbound_gate = bounds::Gate::new("outbound", cfg.outbound_limits, &limits);
    let connector = tokio_rustls::TlsConnector::from(outbound_cfg);
    let pool = Arc::new(pool::Pool::new(
        connector.clone(),
        Duration::from_secs(5),
        cfg.outbound_limits.idle_timeout,
        metrics.clone(),
    ));
    let retire_pool = pool
        .clone()
        .retire_on_change(trust_rx.clone(), cert_rx.clone());
    let outbound = Arc::new(outbound::Outbound {
        connector,
        connector_plain: tokio_rustls::TlsConnector::from(outbound_plain),
        discovery,
        plaintext: cfg.plaintext,
        connect_timeout: Duration::from_secs(5),
        detect_timeout: cfg.detect_timeout,
        metrics: metrics.clone(),
        // The transparent and ports-mode listeners share one cap.
        gate: outbound_gate,
        pool,
    });
    let admin_state = admin::AdminState {
        registry,
        cert: cert_rx.clone(),
        policies: held_policies,
        gate: bounds::Gate::new("admin", cfg.admin_limits, &limits),
    };

    let inbound_addr = started.inbound_addr;
    let grace = cfg.shutdown_grace;
    let identity_name = cfg.identity.to_string();
    let admin_tls = tokio_rustls::TlsAcceptor::from(
        tls::admin_config(cert_rx.clone(), &identity_name).map_err(StartError::Tls)?,
    );
    let active = metrics.active.clone();
    let run = async move {
        let mut background = tokio::task::JoinSet::new();
        background.spawn(cert_loop.run(cert_tx));
        background.spawn(mesh_link.run());
        background.spawn(anchors_watch.run());
        background.spawn(retire_pool);
        background.spawn(track_trust(trust_rx, metrics.clone()));
        background.spawn(track_cert(cert_rx, metrics));
        background.spawn(admin::serve(
            admin_listener,
            admin_state,
            Some((admin_tls, identity_name)),
        ));
        background.spawn(tap::server::serve(
            tap_listener,
            tap_tls,
            tap_service,
            tap_gate,
        ));
        let mut listeners = tokio::task::JoinSet::new();
        listeners.spawn(inbound.serve(inbound_listener));
        if let Some(l) = transparent_listener {
            let own: Vec<SocketAddr> = [l.local_addr().ok(), Some(inbound_addr)]
                .into_iter()
                .flatten()
                .collect();
            listeners.spawn(outbound.clone().serve_transparent(l, own));
        }
        for (l, m) in outbound_listeners {
            listeners.spawn(outbound.clone().serve(l, m));
        }
        shutdown.await;
        // Stop accepting; let connections in flight finish, up to the grace period.
        listeners.abort_all();
        while listeners.join_next().await.is_some() {}
        let n = active.count();
        tracing::info!(
            connections = n,
            grace_s = grace.as_secs(),
            "shutting down: draining connections in flight"
        );
        if tokio::time::timeout(grace, active.drained()).await.is_err() {
            tracing::warn!(
                connections = active.count(),
                "grace period over; closing the connections still open"
            );
        }
        background.abort_all();
    };
    Ok((started, run))
}

/// 64 random bits, hex: this process among its workload's proxies.
fn instance_id() -> String {
    let mut b = [0u8; 8];
    let _ = rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut b);
    pki::cert::hex(&b)
}

/// Where a redirected connection was going (SO_ORIGINAL_DST); for a
/// connection that was not redirected this is its own local address.
pub fn original_dst(sock: &tokio::net::TcpStream) -> Option<SocketAddr> {
    let r = socket2::SockRef::from(sock);
    r.original_dst_v4().ok().and_then(|a| a.as_socket())
}

/// Each anchor held, by fingerprint, with its NotAfter: the anchors a proxy
/// holds can differ from the control plane's while a bundle is refused.
async fn track_trust(mut rx: trust::TrustRx, m: metrics::ProxyMetrics) {
    loop {
        let anchors = rx.borrow_and_update().anchors.clone();
        m.anchor_expiry.clear();
        for a in &anchors {
            if let Ok(x) = pki::parse_x509(a) {
                m.anchor_expiry
                    .get_or_create(&metrics::FingerprintLabel {
                        fingerprint: pki::fingerprint(a),
                    })
                    .set(x.validity().not_after.timestamp() as f64);
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn track_cert(
    mut rx: watch::Receiver<Option<Arc<cert::ProxyCert>>>,
    m: metrics::ProxyMetrics,
) {
    loop {
        if let Some(c) = rx.borrow_and_update().as_ref() {
            m.cert_expiry.set(c.not_after.unix_timestamp() as f64);
            m.cert_refresh
                .set(time::OffsetDateTime::now_utc().unix_timestamp() as f64);
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
