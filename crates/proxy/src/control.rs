//! One way to reach the control plane: mTLS over the proxy's live rustls
//! configuration (the anchors in force, its current leaf), HTTP/2 with
//! keepalives so a control plane that vanished without a reset is noticed.

use std::sync::Arc;
use std::time::Duration;

use pki::Identity;
use rustls::ClientConfig;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::cert::ProxyCert;
use crate::connect::ConnectError;
use crate::trust::TrustRx;

/// Where and as whom the control plane answers.
#[derive(Clone)]
pub struct ControlPlane {
    pub identity: Identity,
    pub own: watch::Receiver<Option<Arc<ProxyCert>>>,
    config: Arc<ClientConfig>,
}

impl ControlPlane {
    pub fn new(
        identity: Identity,
        trust: TrustRx,
        own: watch::Receiver<Option<Arc<ProxyCert>>>,
    ) -> Result<Self, rustls::Error> {
        let config = crate::tls::control_config(trust, own.clone())?;
        Ok(Self {
            identity,
            own,
            config,
        })
    }

    /// A connected channel to `addr`, once the proxy has a certificate.
    pub async fn channel(&self, addr: &str) -> Result<Channel, ConnectError> {
        let mut own = self.own.clone();
        own.wait_for(Option::is_some)
            .await
            .map_err(|_| ConnectError::Connect {
                addr: addr.to_string(),
                detail: "the proxy is shutting down".into(),
            })?;
        crate::connect::connect(
            addr,
            &self.identity.to_string(),
            self.config.clone(),
            Duration::from_secs(5),
        )
        .await
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

/// Backoff after `failures` consecutive failed streams: 100 ms doubling, capped at 12.8 s.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(7)))
}
