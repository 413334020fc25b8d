//! The proxy's connections to the control plane: at most one HTTP/2
//! connection per configured address, every stream multiplexed on it, over
//! the proxy's live rustls configuration (the anchors in force, its current
//! leaf). When the leaf or the bundle changes, the next stream gets a new
//! connection (a new handshake) and the old one drains: it closes once its
//! last stream has moved, so no connection carries an older identity than
//! the one in force. An address may name several replicas: each connection
//! goes to one of them, and when it fails (or serves a stale bundle) its
//! streams move to another (see `replicas`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pki::Identity;
use rustls::ClientConfig;
use tokio::sync::{Mutex, watch};
use tonic::transport::Channel;

use crate::cert::ProxyCert;
use crate::connect::ConnectError;
use crate::replicas::Failures;
use crate::trust::TrustRx;

/// What a connection was made under: the leaf it presents and the anchors
/// its peer was judged by. A change means a new connection; a bundle that
/// only renumbers the same anchors (the first push of the file the proxy
/// started with) is none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Epoch {
    pub leaf_serial: Option<String>,
    /// Sorted, so the order a bundle lists them in does not count.
    pub anchors: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// A connection to one replica, as handed to a stream: the stream rides it
/// until [`ControlPlane::moved`] resolves.
#[derive(Clone)]
pub struct Lease {
    pub channel: Channel,
    pub epoch: Epoch,
    /// The replica (resolved address) the connection reached.
    pub replica: SocketAddr,
    id: u64,
}

/// Where and as whom the control plane answers, and the connections to it.
#[derive(Clone)]
pub struct ControlPlane {
    pub identity: Identity,
    pub own: watch::Receiver<Option<Arc<ProxyCert>>>,
    trust: TrustRx,
    config: Arc<ClientConfig>,
    /// One connection per configured address (a replica of it).
    channels: Arc<Mutex<HashMap<String, Lease>>>,
    /// The connections streams may stay on; one that failed leaves it.
    live: Arc<watch::Sender<HashSet<u64>>>,
    /// When each replica last failed: new connections go elsewhere first.
    failures: Arc<std::sync::Mutex<Failures>>,
    next_id: Arc<AtomicU64>,
}

impl ControlPlane {
    pub fn new(
        identity: Identity,
        trust: TrustRx,
        own: watch::Receiver<Option<Arc<ProxyCert>>>,
    ) -> Result<Self, rustls::Error> {
        let config = crate::tls::control_config(trust.clone(), own.clone())?;
        Ok(Self {
            identity,
            own,
            trust,
            config,
            channels: Arc::default(),
            live: Arc::new(watch::channel(HashSet::new()).0),
            failures: Arc::default(),
            next_id: Arc::default(),
        })
    }

    /// The epoch in force now.
    pub fn epoch(&self) -> Epoch {
        let mut anchors = self.trust.borrow().anchors.clone();
        anchors.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        Epoch {
            leaf_serial: self.own.borrow().as_ref().map(|c| c.serial.clone()),
            anchors,
        }
    }

    /// Resolves once a stream on `lease` should move: the epoch differs
    /// from the lease's, or its connection failed (another replica next).
    pub async fn moved(&self, lease: &Lease) {
        let mut own = self.own.clone();
        let mut trust = self.trust.clone();
        let mut live = self.live.subscribe();
        while self.epoch() == lease.epoch && live.borrow_and_update().contains(&lease.id) {
            tokio::select! {
                r = own.changed() => if r.is_err() { std::future::pending::<()>().await },
                r = trust.changed() => if r.is_err() { std::future::pending::<()>().await },
                r = live.changed() => if r.is_err() { std::future::pending::<()>().await },
            }
        }
    }

    /// The connection to a replica of `addr` for the epoch in force, once
    /// the proxy has a certificate: the shared one, or a new connection if
    /// the leaf or the bundle changed since it was made (the old one drains
    /// and closes) or its replica failed.
    pub async fn channel(&self, addr: &str) -> Result<Lease, ConnectError> {
        let mut own = self.own.clone();
        own.wait_for(Option::is_some)
            .await
            .map_err(|_| ConnectError::Connect {
                addr: addr.to_string(),
                detail: "the proxy is shutting down".into(),
            })?;
        let epoch = self.epoch();
        let mut channels = self.channels.lock().await;
        // Channels of an older epoch are forgotten, this address's and every
        // other's: each closes once the streams still on it have moved.
        channels.retain(|_, l| l.epoch == epoch);
        if let Some(l) = channels.get(addr) {
            return Ok(l.clone());
        }
        let (channel, replica) = crate::connect::connect_replicas(
            addr,
            &self.identity.to_string(),
            self.config.clone(),
            Duration::from_secs(5),
            &self.failures,
        )
        .await?;
        tracing::info!(
            %addr,
            %replica,
            leaf_serial = epoch.leaf_serial.as_deref().unwrap_or_default(),
            bundle_generation = self
                .trust
                .borrow()
                .version
                .as_ref()
                .map(|v| v.generation)
                .unwrap_or_default(),
            "control-plane connection opened; streams move to it"
        );
        let lease = Lease {
            channel,
            epoch,
            replica,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
        };
        channels.insert(addr.to_string(), lease.clone());
        let ids: HashSet<u64> = channels.values().map(|l| l.id).collect();
        self.live.send_replace(ids);
        Ok(lease)
    }

    /// The replica of `lease` failed (`why`): its connection is dropped,
    /// every stream on it moves, and new connections try other replicas
    /// first. The certificate, bundle, policies and endpoints stay in force.
    pub async fn failed(&self, addr: &str, lease: &Lease, why: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(lease.replica, std::time::Instant::now());
        let mut channels = self.channels.lock().await;
        if channels.get(addr).is_some_and(|l| l.id == lease.id) {
            channels.remove(addr);
            tracing::info!(
                %addr,
                replica = %lease.replica,
                reason = why,
                "control-plane connection dropped; reconnecting, to another replica first"
            );
        }
        let ids: HashSet<u64> = channels.values().map(|l| l.id).collect();
        self.live.send_replace(ids);
    }
}

/// Whether a gRPC status is the control plane's answer (ask again later,
/// backing off) or a transport problem (keep what we have).
pub fn is_refusal(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(
        s.code(),
        InvalidArgument | NotFound | FailedPrecondition | PermissionDenied | Unauthenticated
    )
}

pub use bounds::retry::{backoff, jittered};
