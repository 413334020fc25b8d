//! `io.linkerd.proxy.identity.Identity/Certify`: checks in a fixed order
//! (the peer's refusal budget, issuer, cheap parsing, CSR content, the
//! claimed client's rate limit, the token verification ceiling, proof, proof
//! of possession, the proven client's and the global issuance limit), each
//! refusal with its gRPC code and a message naming the failed check. Cheap
//! checks come first so a flood cannot buy costly work (token reviews,
//! signing) beyond the ceilings.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use linkerd2_proxy_api::identity::identity_server::Identity as IdentityApi;
use linkerd2_proxy_api::identity::{CertifyRequest, CertifyResponse};
use pki::{CertificateDer, Identity};
use time::OffsetDateTime;
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status};

use crate::csr::{CsrError, check_csr};
use crate::limit::{CertifyLimits, Limited, Limiter};
use crate::metrics::{IdentityMetrics, KeyLabel, ReasonLabel};
use crate::proof::{Proof, ProofError, ProofVerifier};
use crate::record::{Record, RecordRefusal};
use crate::refusal_log::{RefusalLog, Sample};
use crate::reload::IssuerStatus;
use crate::state::Issuance;

/// How certificates are issued.
#[derive(Debug, Clone)]
pub struct CertifyConfig {
    pub lifetime: Duration,
    pub skew: Duration,
    pub control_plane_ns: String,
    pub trust_domain: String,
    /// How often Certify may be asked, per client and in all.
    pub limits: CertifyLimits,
}

pub struct IdentityService<P> {
    cfg: CertifyConfig,
    issuer: watch::Receiver<IssuerStatus>,
    proofs: P,
    metrics: IdentityMetrics,
    record: Option<Arc<dyn Record>>,
    limiter: Mutex<Limiter>,
    refusal_log: Mutex<RefusalLog>,
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
            limiter: Mutex::new(Limiter::new(cfg.limits)),
            refusal_log: Mutex::new(RefusalLog::default()),
            cfg,
            issuer,
            proofs,
            metrics,
            record,
        }
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, Limiter> {
        self.limiter.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// RESOURCE_EXHAUSTED naming the limit, with gRPC's retry pushback.
    fn limited(&self, l: Limited) -> Status {
        self.metrics
            .rate_limited
            .get_or_create(&KeyLabel {
                key: l.kind.label(),
            })
            .inc();
        let mut status = Status::resource_exhausted(l.to_string());
        let millis = l.retry_after.as_millis().max(1).to_string();
        if let Ok(v) = millis.parse() {
            status.metadata_mut().insert("grpc-retry-pushback-ms", v);
        }
        status
    }

    /// Counts every refusal; logs a few lines a second at most.
    fn refused(&self, peer: Option<SocketAddr>, s: &Status) {
        let reason = code_label(s.code());
        self.metrics.count_issue(reason);
        self.metrics
            .refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
        let now = Instant::now();
        let sample = self
            .refusal_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sample(now);
        if let Sample::Log { suppressed } = sample {
            tracing::info!(
                peer = %peer.map(|p| p.to_string()).unwrap_or_default(),
                code = ?s.code(),
                reason = %s.message(),
                suppressed,
                "certify refused{}",
                if suppressed > 0 {
                    format!(" ({suppressed} more refusals not logged since the last line; certify_refusals_total counts them all)")
                } else {
                    String::new()
                }
            );
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

        let now = Instant::now();
        let chain = client_chain.as_deref().map(Vec::as_slice);
        if let Some(claimed) = crate::keys::claimed(
            &req.token,
            chain,
            &self.cfg.control_plane_ns,
            peer.map(|p| p.ip()),
        ) {
            self.limiter()
                .check_claimed(&claimed, now)
                .map_err(|l| self.limited(l))?;
        }
        if !req.token.is_empty() {
            self.limiter()
                .admit_verify(now)
                .map_err(|l| self.limited(l))?;
        }
        let subject = self
            .proofs
            .verify(&Proof {
                token: &req.token,
                client_chain: chain,
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
        let key = crate::keys::proven(&subject.kind, &identity, &req.token, peer.map(|p| p.ip()));
        self.limiter()
            .admit_issue(&key, Instant::now())
            .map_err(|l| self.limited(l))?;

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

/// A refusal for what the request itself got wrong (not a limit, not ours).
fn is_wrong(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::Unauthenticated
            | Code::PermissionDenied
    )
}

/// A gRPC code as a metric label: the refusals a caller can act on by name.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "invalid_argument",
        Code::FailedPrecondition => "failed_precondition",
        Code::Unauthenticated => "unauthenticated",
        Code::PermissionDenied => "permission_denied",
        Code::Unavailable => "unavailable",
        Code::ResourceExhausted => "resource_exhausted",
        Code::NotFound => "not_found",
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
        // Before any work: a peer that spent its refusal budget waits.
        let admitted = match peer {
            Some(p) => self.limiter().admit_peer(p.ip(), start),
            None => Ok(()),
        };
        let result = match admitted {
            Ok(()) => {
                let result = self.certify_inner(request.into_inner(), peer, chain).await;
                // Only a wrong request spends its peer's refusal budget.
                if let (false, Some(p)) = (result.as_ref().is_err_and(is_wrong), peer) {
                    self.limiter().refund_peer(p.ip());
                }
                result
            }
            Err(l) => Err(self.limited(l)),
        };
        self.metrics
            .certify_duration
            .observe(start.elapsed().as_secs_f64());
        match &result {
            Ok(_) => self.metrics.count_issue("ok"),
            Err(s) => self.refused(peer, s),
        }
        result.map(Response::new)
    }
}
