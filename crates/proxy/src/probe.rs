//! When the control plane's certificate does not verify, say why in terms an
//! operator can act on: which CA its chain needs, and what the anchors file
//! holds instead.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pki::CertificateDer;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Records the presented chain, then fails the handshake: nothing is trusted.
#[derive(Debug, Default)]
struct Capture {
    chain: Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut c = self.chain.lock().unwrap_or_else(|e| e.into_inner());
        c.push(end_entity.clone().into_owned());
        c.extend(intermediates.iter().map(|i| i.clone().into_owned()));
        Err(rustls::Error::General(
            "chain captured for diagnosis".into(),
        ))
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("diagnosis only".into()))
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("diagnosis only".into()))
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The chain the server at `addr` presents for `server_name`.
pub async fn server_chain(addr: &str, server_name: &str) -> Option<Vec<CertificateDer<'static>>> {
    let capture = Arc::new(Capture::default());
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .dangerous()
    .with_custom_certificate_verifier(capture.clone())
    .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string()).ok()?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await;
    let chain = capture
        .chain
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    (!chain.is_empty()).then_some(chain)
}

/// One sentence: what the chain ends at, and what the anchors are.
pub fn explain(chain: &[CertificateDer<'_>], anchors: &[CertificateDer<'_>]) -> String {
    let Some(top) = chain
        .last()
        .and_then(|c| pki::info::CertInfo::from_der(c).ok())
    else {
        return "the control plane presented no certificate".into();
    };
    let have: Vec<String> = anchors
        .iter()
        .filter_map(|a| pki::info::CertInfo::from_der(a).ok())
        .map(|a| {
            format!(
                "{} (key id {})",
                a.subject,
                a.subject_key_id.unwrap_or_else(|| "none".into())
            )
        })
        .collect();
    format!(
        "the control plane's chain needs the anchor {} (key id {}), but the anchors file holds {}; add that anchor to the file (it is re-read on the next try)",
        top.issuer,
        top.authority_key_id.unwrap_or_else(|| "unknown".into()),
        if have.is_empty() {
            "nothing usable".into()
        } else {
            have.join(", ")
        }
    )
}
