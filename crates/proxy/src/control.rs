//! The proxy's connections to the control plane: at most one HTTP/2
//! connection per configured address, every stream multiplexed on it, over
//! the proxy's live rustls configuration (the anchors in force, its current
//! leaf). When the leaf or the bundle changes, the next stream gets a new
//! connection (a new handshake) and the old one drains: it closes once its
//! last stream has moved, so no connection carries an older identity than
//! the one in force.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pki::Identity;
use rustls::ClientConfig;
use tokio::sync::{Mutex, watch};
use tonic::transport::Channel;

use crate::cert::ProxyCert;
use crate::connect::ConnectError;
use crate::trust::TrustRx;

/// What a connection was made under: the leaf it presents and the bundle
/// its peer was judged by. A change means a new connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Epoch {
    pub leaf_serial: Option<String>,
    pub bundle: Option<(u64, String)>,
}

/// Where and as whom the control plane answers, and the connections to it.
#[derive(Clone)]
pub struct ControlPlane {
    pub identity: Identity,
    pub own: watch::Receiver<Option<Arc<ProxyCert>>>,
    trust: TrustRx,
    config: Arc<ClientConfig>,
    /// One channel per address, with the epoch it was made in.
    channels: Arc<Mutex<HashMap<String, (Epoch, Channel)>>>,
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
        })
    }

    /// The epoch in force now.
    pub fn epoch(&self) -> Epoch {
        let trust = self.trust.borrow();
        Epoch {
            leaf_serial: self.own.borrow().as_ref().map(|c| c.serial.clone()),
            bundle: trust
                .version
                .as_ref()
                .map(|v| (v.generation, v.sha256.clone())),
        }
    }

    /// Resolves once the epoch differs from `since`: a stream on a channel
    /// of that epoch should move to a new one.
    pub async fn moved(&self, since: &Epoch) {
        let mut own = self.own.clone();
        let mut trust = self.trust.clone();
        while self.epoch() == *since {
            tokio::select! {
                r = own.changed() => if r.is_err() { std::future::pending::<()>().await },
                r = trust.changed() => if r.is_err() { std::future::pending::<()>().await },
            }
        }
    }

    /// The channel to `addr` for the epoch in force, once the proxy has a
    /// certificate: the shared one, or a new connection if the leaf or the
    /// bundle changed since it was made (the old one drains and closes).
    pub async fn channel(&self, addr: &str) -> Result<(Channel, Epoch), ConnectError> {
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
        channels.retain(|_, (e, _)| *e == epoch);
        if let Some((_, c)) = channels.get(addr) {
            return Ok((c.clone(), epoch));
        }
        let channel = crate::connect::connect(
            addr,
            &self.identity.to_string(),
            self.config.clone(),
            Duration::from_secs(5),
        )
        .await?;
        tracing::info!(
            %addr,
            leaf_serial = epoch.leaf_serial.as_deref().unwrap_or_default(),
            bundle_generation = epoch.bundle.as_ref().map(|b| b.0).unwrap_or_default(),
            "control-plane connection opened; streams move to it"
        );
        channels.insert(addr.to_string(), (epoch.clone(), channel.clone()));
        Ok((channel, epoch))
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
