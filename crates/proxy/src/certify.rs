//! The proxy's Certify client: a fresh key and CSR (built by `pki`), the
//! call over a channel that verifies the control plane's identity, and the
//! response checked (by `pki`) before anyone uses it.

use linkerd2_proxy_api::identity::CertifyRequest;
use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use pki::certify::{self, CertifyError as Pure};
use pki::{CertInForce, CertificateDer, Identity, KeyPair};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

use tonic::transport::Channel;

#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error("cannot generate a key: {0}")]
    Key(#[source] pki::create::CreateError),
    #[error("cannot build the request: {0}")]
    Request(#[source] Pure),
    #[error("cannot reach the identity service at {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("the identity service refused: {code:?}: {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("the identity service returned a certificate weft will not use: {0}")]
    BadResponse(#[source] Pure),
    #[error("the new certificate cannot be put in force: {0}")]
    InForce(#[source] pki::InForceError),
    #[error("TLS setup: {0}")]
    Tls(#[source] rustls::Error),
    #[error("the identity service did not answer within {0:?}; is it overloaded or unreachable?")]
    Timeout(Duration),
}

impl CertifyError {
    /// Whether the identity service answered (a refusal) rather than the
    /// call failing on the way.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused { .. } | Self::BadResponse(_))
    }

    /// Whether the call failed on the way (the connection or the replica
    /// behind it), not by the identity service's answer.
    pub fn is_transport(&self) -> bool {
        use tonic::Code::*;
        match self {
            Self::Connect { .. } | Self::Timeout(_) => true,
            Self::Refused { code, .. } => matches!(code, Unavailable | Unknown | Cancelled),
            _ => false,
        }
    }
}

/// A certificate as obtained and checked, with its new key (for callers that
/// write it out).
pub struct Certified {
    pub cert: CertInForce,
    pub key: KeyPair,
}

/// A connection of its own to the identity service at `addr`. When the
/// control plane's chain does not verify, the error names the anchor it needs.
pub async fn connect(
    addr: &str,
    control_plane: &Identity,
    config: Arc<rustls::ClientConfig>,
    anchors: &[CertificateDer<'_>],
    timeout: Duration,
) -> Result<Channel, CertifyError> {
    let name = control_plane.to_string();
    let connect_err = |detail: String| CertifyError::Connect {
        addr: addr.to_string(),
        detail,
    };
    match crate::connect::connect(addr, &name, config, timeout).await {
        Ok(c) => Ok(c),
        Err(e) => {
            let mut detail = crate::connect::describe(&e);
            // rustls's answer when the server has no certificate to present.
            if detail.contains("AccessDenied") {
                detail.push_str("; the control plane presented no certificate: its issuer has probably expired (see its /ready and `weft check --proxy`)");
            }
            if (detail.contains("UnknownIssuer") || detail.contains("invalid peer certificate"))
                && let Some(first) = crate::replicas::entries(addr).first().copied()
                && let Some(chain) = crate::probe::server_chain(first, &name).await
            {
                detail = format!("{detail}; {}", crate::probe::explain(&chain, anchors));
            }
            Err(connect_err(detail))
        }
    }
}

/// Asks for a certificate for `identity` on `channel` (which presents the
/// current leaf, if the proof is a renewal), within `timeout`. `anchors`
/// judge the answer.
pub async fn certify(
    channel: Channel,
    identity: &Identity,
    token: Option<&[u8]>,
    anchors: &[CertificateDer<'_>],
    timeout: Duration,
) -> Result<Certified, CertifyError> {
    let key = pki::create::KeySpec::EcdsaP256
        .generate()
        .map_err(CertifyError::Key)?;
    let csr = certify::csr_der(identity, &key).map_err(CertifyError::Request)?;
    let mut client = IdentityClient::new(channel);
    let call = client.certify(CertifyRequest {
        identity: identity.to_string(),
        token: token.unwrap_or_default().to_vec(),
        certificate_signing_request: csr,
    });
    let resp = tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| CertifyError::Timeout(timeout))?
        .map_err(|s| CertifyError::Refused {
            code: s.code(),
            message: s.message().to_string(),
        })?
        .into_inner();
    let leaf = CertificateDer::from(resp.leaf_certificate);
    let chain: Vec<CertificateDer<'static>> = resp
        .intermediate_certificates
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    certify::check_response(
        &leaf,
        &chain,
        anchors,
        identity,
        &key,
        OffsetDateTime::now_utc(),
    )
    .map_err(CertifyError::BadResponse)?;
    let mut full = vec![leaf];
    full.extend(chain);
    let cert =
        CertInForce::new(&key, full, identity.control_plane_ns()).map_err(CertifyError::InForce)?;
    Ok(Certified { cert, key })
}
