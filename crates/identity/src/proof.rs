//! Proof of identity: what a caller shows to be given a certificate.
//!
//! Behind one trait so a Kubernetes TokenReview verifier can stand beside the
//! standalone one (join tokens, or the caller's still-valid leaf).

use std::future::Future;
use std::sync::Arc;

use pki::{CertificateDer, Identity, Purpose};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::reload::IssuerStatus;
use crate::token::{TokenError, TokenVerifier};

/// What a Certify caller presented.
pub struct Proof<'a> {
    /// The `token` field of the request (may be empty).
    pub token: &'a [u8],
    /// The TLS client certificate chain, if one was presented.
    pub client_chain: Option<&'a [CertificateDer<'static>]>,
}

/// Who the proof shows the caller to be, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub identity: Identity,
    pub kind: ProofKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofKind {
    Token {
        jti: String,
    },
    /// A Kubernetes ServiceAccount token the API server's TokenReview
    /// accepted, bound to this pod when it names one (`ns/name`).
    ServiceAccountToken {
        pod: Option<String>,
    },
    /// Renewal with the still-valid leaf of this serial, descended from the
    /// token `origin` (when the issuance record knows it).
    Renewal {
        origin: Option<String>,
        serial: String,
    },
}

impl ProofKind {
    /// How the audit trail and issuance record name it.
    pub fn describe(&self) -> String {
        match self {
            Self::Token { jti } => format!("token:{jti}"),
            Self::ServiceAccountToken { pod: Some(pod) } => {
                format!("serviceaccount-token:pod/{pod}")
            }
            Self::ServiceAccountToken { pod: None } => "serviceaccount-token".into(),
            Self::Renewal { .. } => "renewal".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error(
        "no proof of identity: send a join token (`weft token create`) or present your current weft certificate as the TLS client certificate"
    )]
    Missing,
    #[error(
        "no proof of identity: send the pod's ServiceAccount token (projected with audience identity.l5d.io), a join token (`weft token create`, for ExternalWorkloads), or present your current weft certificate as the TLS client certificate"
    )]
    MissingInKubernetes,
    #[error("join token refused: {0}")]
    Token(TokenError),
    #[error(
        "token is neither a join token of this control plane nor a Kubernetes ServiceAccount token: {0}; send the pod's projected ServiceAccount token (audience identity.l5d.io)"
    )]
    NotAToken(String),
    #[error(
        "the Kubernetes API server refused the ServiceAccount token: {0}; send the pod's current projected token with audience identity.l5d.io (kubelet refreshes it)"
    )]
    Review(String),
    #[error(
        "the Kubernetes API server could not review the token: {0}; retry, and check the control plane can reach the API server and may create tokenreviews"
    )]
    ReviewUnavailable(String),
    /// UNAUTHENTICATED, like an expired token: the proof no longer holds
    /// (FAILED_PRECONDITION is for what the CSR itself asks).
    #[error(
        "the pod this token is bound to ({0}) no longer exists; a deleted pod's token proves nothing: use the token of a running pod"
    )]
    PodGone(String),
    #[error(
        "client certificate refused: empty chain; if it has expired, start again with a join token"
    )]
    EmptyChain,
    #[error("client certificate refused: {0}; if it has expired, start again with a join token")]
    Certificate(#[source] pki::VerifyError),
    #[error("the proof names {0:?}, which is not a workload identity of this mesh")]
    NotInMesh(String),
    #[error("client certificate refused: {0}")]
    CertificateName(#[source] pki::PeerIdentityError),
    #[error("no issuer is in force to judge the client certificate")]
    NoTrust,
    #[error(
        "the client certificate descends from join token {0}, which was revoked; create a new token with `weft token create` and start again with it"
    )]
    RevokedOrigin(String),
}

/// Turns a proof into a subject.
pub trait ProofVerifier: Send + Sync + 'static {
    fn verify(&self, proof: &Proof<'_>)
    -> impl Future<Output = Result<Subject, ProofError>> + Send;
}

/// Standalone mode: join tokens from the state dir, or renewal by mTLS.
pub struct StandaloneProofs {
    pub tokens: TokenVerifier,
    /// Traces renewals back to their token, so revocation ends the line.
    pub record: Option<std::sync::Arc<dyn crate::record::Record>>,
    pub issuer: watch::Receiver<IssuerStatus>,
    pub control_plane_ns: String,
    pub trust_domain: String,
}

impl StandaloneProofs {
    /// Renewal: the caller's still-valid weft leaf, unless the join token it
    /// descends from was revoked. Kubernetes mode renews the same way.
    pub fn renewal(
        &self,
        chain: &[CertificateDer<'static>],
        now: OffsetDateTime,
    ) -> Result<Subject, ProofError> {
        self.by_certificate(chain, now).and_then(|s| match &s.kind {
            ProofKind::Renewal {
                origin: Some(jti), ..
            } if self.tokens.is_revoked(jti) => Err(ProofError::RevokedOrigin(jti.clone())),
            _ => Ok(s),
        })
    }

    fn by_certificate(
        &self,
        chain: &[CertificateDer<'static>],
        now: OffsetDateTime,
    ) -> Result<Subject, ProofError> {
        let status = self.issuer.borrow().clone();
        let state = status.current.ok_or(ProofError::NoTrust)?;
        let (leaf, rest) = chain.split_first().ok_or(ProofError::EmptyChain)?;
        let mut intermediates: Vec<CertificateDer<'static>> = rest.to_vec();
        intermediates.extend(state.chain.iter().cloned());
        pki::verify(leaf, &intermediates, &state.anchors, now, Purpose::Client)
            .map_err(ProofError::Certificate)?;
        let info = pki::info::CertInfo::from_der(leaf).map_err(|source| {
            ProofError::Certificate(pki::VerifyError::Unparseable { index: 1, source })
        })?;
        // The first SAN names the client, as Linkerd peers read it.
        let identity = pki::peer_identity_in(leaf, &self.control_plane_ns)
            .map_err(ProofError::CertificateName)?;
        Ok(Subject {
            identity,
            kind: ProofKind::Renewal {
                origin: self.record.as_ref().and_then(|r| r.origin_of(&info.serial)),
                serial: info.serial,
            },
        })
    }

    /// A join token from `weft token create`.
    pub fn by_token(&self, token: &[u8], now: OffsetDateTime) -> Result<Subject, ProofError> {
        let text = std::str::from_utf8(token)
            .map_err(|_| ProofError::Token(TokenError::Malformed("not UTF-8".into())))?
            .trim();
        let claims = self.tokens.verify(text, now).map_err(ProofError::Token)?;
        let (ns, sa) = claims.service_account().map_err(ProofError::Token)?;
        let identity = Identity::new(sa, ns, &self.control_plane_ns, &self.trust_domain)
            .map_err(|_| ProofError::NotInMesh(claims.sub.clone()))?;
        Ok(Subject {
            identity,
            kind: ProofKind::Token { jti: claims.jti },
        })
    }
}

impl ProofVerifier for StandaloneProofs {
    async fn verify(&self, proof: &Proof<'_>) -> Result<Subject, ProofError> {
        let now = OffsetDateTime::now_utc();
        // A presented leaf is the better proof: it never depends on a token
        // that may have expired. If it fails, a token may still rescue.
        if let Some(chain) = proof.client_chain.filter(|c| !c.is_empty()) {
            match self.renewal(chain, now) {
                Ok(s) => return Ok(s),
                Err(e) if proof.token.is_empty() => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "client certificate refused; trying the token")
                }
            }
        }
        if proof.token.is_empty() {
            return Err(ProofError::Missing);
        }
        self.by_token(proof.token, now)
    }
}

/// Shared handle, so the service can be cloned per connection.
impl<P: ProofVerifier> ProofVerifier for Arc<P> {
    fn verify(
        &self,
        proof: &Proof<'_>,
    ) -> impl Future<Output = Result<Subject, ProofError>> + Send {
        (**self).verify(proof)
    }
}
