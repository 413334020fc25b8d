//! `io.linkerd.proxy.identity.Identity/Certify`: checks in a fixed order
//! (issuer, cheap parsing, CSR content, proof, proof of possession), each
//! refusal with its gRPC code and a message naming the failed check.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use linkerd2_proxy_api::identity::identity_server::Identity as IdentityApi;
use linkerd2_proxy_api::identity::{CertifyRequest, CertifyResponse};
use pki::{CertificateDer, Identity};
use time::OffsetDateTime;
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status};

use crate::csr::{CsrError, check_csr};
use crate::metrics::IdentityMetrics;
use crate::proof::{Proof, ProofError, ProofVerifier};
use crate::record::{Record, RecordRefusal};
use crate::reload::IssuerStatus;
use crate::state::Issuance;

/// How certificates are issued.
#[derive(Debug, Clone)]
pub struct CertifyConfig {
    pub lifetime: Duration,
    pub skew: Duration,
    pub control_plane_ns: String,
    pub trust_domain: String,
}

pub struct IdentityService<P> {
    cfg: CertifyConfig,
    issuer: watch::Receiver<IssuerStatus>,
    proofs: P,
    metrics: IdentityMetrics,
    record: Option<Arc<dyn Record>>,
}

impl<P: ProofVerifier> IdentityService<P> {
    pub fn new(
        cfg: CertifyConfig,
        issuer: watch::Receiver<IssuerStatus>,
        proofs: P,
        metrics: IdentityMetrics,
        record: Option<Arc<dyn Record>>,
    ) -> Self {
        Self {
            cfg,
            issuer,
            proofs,
            metrics,
            record,
        }
    }

    async fn certify_inner(
        &self,
        req: CertifyRequest,
        peer: Option<SocketAddr>,
        client_chain: Option<Arc<Vec<CertificateDer<'static>>>>,
    ) -> Result<CertifyResponse, Status> {
        let status = self.issuer.borrow().clone();
        let Some(issuer) = status.current else {
            let why = status
                .refused
                .unwrap_or_else(|| "no issuer files have been read yet".into());
            return Err(Status::unavailable(format!(
                "no valid issuer is loaded ({why}); fix the issuer files the control plane reads, it reloads them"
            )));
        };

        if req.identity.is_empty() {
            return Err(Status::invalid_argument(
                "identity is empty; send the workload's identity name",
            ));
        }
        let identity: Identity = req
            .identity
            .parse()
            .map_err(|e| Status::invalid_argument(format!("identity: {e}")))?;
        if identity.control_plane_ns() != self.cfg.control_plane_ns
            || identity.trust_domain() != self.cfg.trust_domain
        {
            return Err(Status::invalid_argument(format!(
                "identity {identity} is not in this mesh: names here end in .serviceaccount.identity.{}.{}",
                self.cfg.control_plane_ns, self.cfg.trust_domain
            )));
        }
        let csr = check_csr(&req.certificate_signing_request, &identity).map_err(|e| match e {
            CsrError::Empty | CsrError::Unparseable(_) => Status::invalid_argument(e.to_string()),
            _ => Status::failed_precondition(e.to_string()),
        })?;

        let subject = self
            .proofs
            .verify(&Proof {
                token: &req.token,
                client_chain: client_chain.as_deref().map(Vec::as_slice),
            })
            .await
            .map_err(|e| match e {
                ProofError::NoTrust | ProofError::ReviewUnavailable(_) => {
                    Status::unavailable(e.to_string())
                }
                _ => Status::unauthenticated(e.to_string()),
            })?;
        if subject.identity != identity {
            return Err(Status::permission_denied(format!(
                "the proof is for {}, not {identity}; request the identity your token or certificate names",
                subject.identity
            )));
        }
        csr.verify_possession()
            .map_err(|e| Status::failed_precondition(e.to_string()))?;

        let spki = rcgen::SubjectPublicKeyInfo::from_der(csr.public_key_der()).map_err(|e| {
            Status::failed_precondition(format!("CSR public key cannot be used: {e}"))
        })?;
        let now = OffsetDateTime::now_utc();
        let leaf = pki::create::issue_workload_leaf(
            &issuer.signer,
            issuer.chain_not_after,
            &spki,
            &identity,
            now,
            self.cfg.lifetime,
            self.cfg.skew,
        )
        .map_err(|e| Status::unavailable(format!("cannot issue: {e}")))?;

        let fingerprint = pki::fingerprint(&leaf.der);
        let proof = subject.kind.describe();
        if let Some(record) = &self.record {
            let entry = Issuance {
                identity: identity.clone(),
                serial: leaf.serial.clone(),
                spki_sha256: pki::cert::sha256_hex(csr.public_key_der()),
                issuer_sha256: issuer.issuer_fingerprint.clone(),
                issued_at: now.unix_timestamp(),
                not_after: leaf.not_after.unix_timestamp(),
                origin: match &subject.kind {
                    crate::proof::ProofKind::Token { jti } => jti.clone(),
                    crate::proof::ProofKind::Renewal { origin, .. } => {
                        origin.clone().unwrap_or_default()
                    }
                    crate::proof::ProofKind::ServiceAccountToken { .. } => String::new(),
                },
                proof: proof.clone(),
            };
            // Never hand out a certificate the record does not hold.
            record.record(&entry).await.map_err(|e| match e {
                RecordRefusal::Full { .. } => {
                    tracing::warn!(error = %e, "the issuance record is full; refusing to issue");
                    Status::resource_exhausted(e.to_string())
                }
                RecordRefusal::Unavailable(why) => {
                    tracing::error!(error = %why, "cannot write the issuance record; refusing to issue");
                    Status::unavailable(format!(
                        "the control plane cannot record the certificate it would issue ({why}), so it issues none; keep the certificate you have and retry"
                    ))
                }
            })?;
        }
        tracing::info!(
            target: "weft::audit",
            identity = %identity,
            serial = %leaf.serial,
            fingerprint = %fingerprint,
            not_after = %pki::info::rfc3339(leaf.not_after),
            peer = %peer.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into()),
            proof = %proof,
            "issued"
        );
        Ok(CertifyResponse {
            leaf_certificate: leaf.der.to_vec(),
            intermediate_certificates: issuer.chain.iter().map(|c| c.to_vec()).collect(),
            valid_until: Some(prost_types::Timestamp {
                seconds: leaf.not_after.unix_timestamp(),
                nanos: 0,
            }),
        })
    }
}

fn code_label(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "invalid_argument",
        Code::FailedPrecondition => "failed_precondition",
        Code::Unauthenticated => "unauthenticated",
        Code::PermissionDenied => "permission_denied",
        Code::Unavailable => "unavailable",
        Code::ResourceExhausted => "resource_exhausted",
        _ => "error",
    }
}

#[tonic::async_trait]
impl<P: ProofVerifier> IdentityApi for IdentityService<P> {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let start = Instant::now();
        let peer = request.remote_addr();
        let chain = request.peer_certs();
        let result = self.certify_inner(request.into_inner(), peer, chain).await;
        self.metrics
            .certify_duration
            .observe(start.elapsed().as_secs_f64());
        match &result {
            Ok(_) => self.metrics.count_issue("ok"),
            Err(s) => {
                self.metrics.count_issue(code_label(s.code()));
                tracing::info!(
                    peer = %peer.map(|p| p.to_string()).unwrap_or_default(),
                    code = ?s.code(),
                    reason = %s.message(),
                    "certify refused"
                );
            }
        }
        result.map(Response::new)
    }
}
