//! The operator listener off loopback (`--operator-addr`): the admin
//! endpoints over TLS with the control plane's own live certificate, for
//! callers whose client certificate chains to the trust anchors in force
//! (clientAuth, as Certify judges a renewal) and whose identity is on the
//! allow list (`--operator-allow`). A missing or untrusted certificate
//! fails the handshake; a trusted one naming someone else gets 403 with
//! the identity it names. In Kubernetes mode a client certificate is
//! optional: a caller without one is judged by its bearer token
//! ([`crate::k8s::operator_auth`]). The operator guard still applies
//! behind it.

use std::net::SocketAddr;
use std::sync::Arc;

use identity::IssuerStatus;
use pki::{Identity, PeerIdentityError, Purpose};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Where the operator listener binds and whom it serves.
#[derive(Debug, Clone)]
pub struct OperatorListener {
    pub addr: SocketAddr,
    /// Identities whose client certificates may use the endpoints.
    pub allow: Vec<Identity>,
    /// Kubernetes mode: callers may instead send a bearer token, judged by
    /// TokenReview and SubjectAccessReview.
    pub tokens: bool,
}

impl std::fmt::Display for OperatorListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let allow: Vec<String> = self.allow.iter().map(Identity::to_string).collect();
        let allow = if allow.is_empty() {
            "(no certificates)".to_string()
        } else {
            allow.join(",")
        };
        write!(f, "{} allow {allow}", self.addr)?;
        if self.tokens {
            f.write_str(" and Kubernetes bearer tokens (RBAC on operator.weft.dev)")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    listener: &'static str,
    reason: &'static str,
}

/// `admin_refusals_total{listener,reason}`: requests and handshakes the
/// admin and operator listeners refused.
#[derive(Debug, Clone, Default)]
pub struct Refusals(Family<RefusalLabels, Counter>);

impl Refusals {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "admin_refusals",
            "Handshakes and requests the admin (loopback) and operator (TLS) listeners refused, by reason",
            self.0.clone(),
        );
    }

    pub fn count(&self, listener: &'static str, reason: &'static str) {
        self.0
            .get_or_create(&RefusalLabels { listener, reason })
            .inc();
    }
}

/// Why a caller that completed the handshake may not use the endpoints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAllowed {
    #[error(
        "no client certificate was presented; the operator listener serves callers with an operator certificate (weft --operator-cert F --operator-key F --operator-ca F)"
    )]
    NoCertificate,
    #[error("the client certificate names no operator: {0}")]
    NoName(#[source] PeerIdentityError),
    #[error(
        "the client certificate names {identity}, which is not on this control plane's operator allow list ({allowed}); add it to --operator-allow on the control plane, or use an allowed operator's certificate"
    )]
    NotListed { identity: Identity, allowed: String },
}

impl NotAllowed {
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoCertificate => "no_client_certificate",
            Self::NoName(_) => "client_certificate_names_no_identity",
            Self::NotListed { .. } => "identity_not_allowed",
        }
    }
}

/// The verdict on a verified client chain: the identity its leaf names, if
/// that identity is on `allow`.
pub fn admit(
    chain: Option<&[CertificateDer<'_>]>,
    allow: &[Identity],
    control_plane_ns: &str,
) -> Result<Identity, NotAllowed> {
    let leaf = chain
        .and_then(<[_]>::first)
        .ok_or(NotAllowed::NoCertificate)?;
    let identity = pki::peer_identity_in(leaf, control_plane_ns).map_err(NotAllowed::NoName)?;
    if allow.contains(&identity) {
        return Ok(identity);
    }
    Err(NotAllowed::NotListed {
        identity,
        allowed: allow
            .iter()
            .map(Identity::to_string)
            .collect::<Vec<_>>()
            .join(","),
    })
}

/// Requires a client certificate and judges its chain against the trust
/// anchors in force at each handshake (with the issuer chain as
/// intermediates), for TLS client use: the same judgement as a renewal.
#[derive(Debug)]
pub struct AnchorsInForce {
    pub issuer: watch::Receiver<IssuerStatus>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// False where a bearer token may stand in for a certificate.
    mandatory: bool,
}

impl AnchorsInForce {
    pub fn new(issuer: watch::Receiver<IssuerStatus>, mandatory: bool) -> Self {
        Self {
            issuer,
            provider: pki::tls::provider(),
            mandatory,
        }
    }
}

fn refused(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(e),
    )))
}

#[derive(Debug, thiserror::Error)]
#[error("no issuer is in force, so no client certificate can be judged; see /ready")]
struct NoIssuer;

impl ClientCertVerifier for AnchorsInForce {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let status = self.issuer.borrow().clone();
        let state = status.current.ok_or_else(|| refused(NoIssuer))?;
        let mut chain: Vec<CertificateDer<'_>> = intermediates.to_vec();
        chain.extend(state.chain.iter().cloned());
        let now = time::OffsetDateTime::now_utc();
        pki::verify(end_entity, &chain, &state.anchors, now, Purpose::Client).map_err(|e| {
            tracing::info!(error = %e, "operator client certificate refused");
            refused(e)
        })?;
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The label of a failed handshake, from the TLS error inside it.
fn handshake_label(e: &std::io::Error) -> &'static str {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::NoCertificatesPresented) => "no_client_certificate",
        Some(rustls::Error::InvalidCertificate(_)) => "client_certificate_refused",
        _ => "handshake_failed",
    }
}

/// Serves the operator listener: TLS with the control plane's own
/// certificate, then the allow list, then the admin endpoints.
pub async fn serve(
    listener: TcpListener,
    st: crate::admin::AdminState,
    cfg: OperatorListener,
    control_plane_ns: String,
    tokens: Option<Arc<crate::k8s::operator_auth::OperatorTokens>>,
) {
    let server = match pki::tls::server_config(
        Arc::new(AnchorsInForce::new(st.issuer.clone(), tokens.is_none())),
        Arc::new(crate::tls::OwnCertResolver {
            own: st.own.clone(),
        }),
        b"http/1.1",
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "the operator listener cannot set up TLS; it serves nothing");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let allow: Arc<[Identity]> = cfg.allow.into();
    loop {
        let (stream, slot) = st.gate.accept(&listener).await;
        let (Ok(local), Ok(peer)) = (stream.local_addr(), stream.peer_addr()) else {
            continue;
        };
        let (st, acceptor, allow, ns, tokens) = (
            st.clone(),
            acceptor.clone(),
            allow.clone(),
            control_plane_ns.clone(),
            tokens.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match st.gate.handshake(acceptor.accept(stream)).await {
                Some(Ok(tls)) => tls,
                Some(Err(e)) => {
                    st.refusals.count("operator", handshake_label(&e));
                    tracing::info!(%peer, error = %e, "operator handshake refused");
                    return;
                }
                None => return,
            };
            let verdict = admit(tls.get_ref().1.peer_certificates(), &allow, &ns);
            match &verdict {
                Ok(id) => tracing::debug!(%peer, operator = %id, "operator connected"),
                Err(NotAllowed::NoCertificate) if tokens.is_some() => {}
                Err(e) => tracing::info!(%peer, "operator refused: {e}"),
            }
            let gate = st.gate.clone();
            let (stream, activity) = bounds::Tracked::new(tls);
            let svc = hyper::service::service_fn(move |req| {
                crate::admin::handle_operator(
                    req,
                    st.clone(),
                    local.ip(),
                    verdict.clone(),
                    tokens.clone(),
                )
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            gate.serve_until_idle(&activity, conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "alice.operators.serviceaccount.identity.weft.cluster.local";
    const BOB: &str = "bob.operators.serviceaccount.identity.weft.cluster.local";

    fn leaf(name: &str) -> CertificateDer<'static> {
        let ca = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        p.is_ca = rcgen::IsCa::NoCa;
        p.self_signed(&ca).unwrap().der().clone()
    }

    #[test]
    fn only_listed_identities_are_admitted_and_refusals_name_them() {
        let allow: Vec<Identity> = vec![ALICE.parse().unwrap()];
        let alice = [leaf(ALICE)];
        assert_eq!(
            admit(Some(&alice), &allow, "weft").unwrap().to_string(),
            ALICE
        );
        let bob = [leaf(BOB)];
        let e = admit(Some(&bob), &allow, "weft").unwrap_err();
        assert_eq!(e.label(), "identity_not_allowed");
        assert!(
            e.to_string().contains(BOB) && e.to_string().contains("--operator-allow"),
            "{e}"
        );
        assert_eq!(admit(None, &allow, "weft"), Err(NotAllowed::NoCertificate));
        let other = [leaf("example.com")];
        assert!(matches!(
            admit(Some(&other), &allow, "weft"),
            Err(NotAllowed::NoName(_))
        ));
    }
}
