//! One way to reach the control plane: mTLS with the proxy's current
//! certificate, the anchors it trusts, and keepalives so a control plane that
//! vanished without a reset is noticed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

use crate::cert::ProxyCert;
use crate::trust::TrustRx;

/// Where and as whom the control plane answers.
#[derive(Clone)]
pub struct ControlPlane {
    pub identity: pki::Identity,
    /// The anchors in force, read at each connection.
    pub trust: TrustRx,
    pub own: watch::Receiver<Option<Arc<ProxyCert>>>,
}

impl ControlPlane {
    /// A connected channel to `addr`, once the proxy has a certificate.
    pub async fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut own = self.own.clone();
        let (chain, key) = own
            .wait_for(Option::is_some)
            .await
            .map_err(|_| "the proxy has no certificate".to_string())?
            .as_ref()
            .map(|c| c.pem_pair())
            .ok_or_else(|| "the proxy has no certificate".to_string())?;
        let anchors = self.trust.borrow().pem.clone();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(anchors))
            .domain_name(self.identity.to_string())
            .identity(TlsIdentity::from_pem(chain, key));
        Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())
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
