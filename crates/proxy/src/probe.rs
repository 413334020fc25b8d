//! When the control plane's certificate does not verify, say why in terms an
//! operator can act on: which CA its chain needs, and what the anchors file
//! holds instead.

use std::sync::Arc;
use std::time::Duration;

use pki::CertificateDer;
use rustls::pki_types::ServerName;

/// The chain the server at `addr` presents for `server_name`.
pub async fn server_chain(addr: &str, server_name: &str) -> Option<Vec<CertificateDer<'static>>> {
    let capture = Arc::new(pki::tls::ChainCapture::default());
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
    let chain = capture.chain();
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
        "the control plane's chain needs the anchor {} (key id {}), but the anchors file holds {}; a control plane is never trusted on its word: if it was re-rooted, write its new anchor to the anchors file (a proxy applies it within a second, without a restart)",
        top.issuer,
        top.authority_key_id.unwrap_or_else(|| "unknown".into()),
        if have.is_empty() {
            "nothing usable".into()
        } else {
            have.join(", ")
        }
    )
}
