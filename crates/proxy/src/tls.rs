//! TLS between proxies: TLS 1.3 only, the mesh's suites and groups (hybrid
//! post-quantum key exchange first unless configured), no session resumption, the proxy's own
//! current certificate on both sides, peers verified against the anchors in
//! force at each handshake (the bundle is live).

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use tokio::sync::watch;

use crate::cert::ProxyCert;
use crate::transport_header::ALPN;
use crate::trust::{TrustNow, TrustRx};
use pki::mesh_tls::MeshTls;
use pki::tls::Live;

pub use pki::tls::provider;

/// Serves the current certificate, and only for SNI = our own identity.
#[derive(Debug)]
pub struct OwnServerCert {
    pub own: watch::Receiver<Option<Arc<ProxyCert>>>,
    pub name: String,
}

impl ResolvesServerCert for OwnServerCert {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello.server_name() != Some(self.name.as_str()) {
            tracing::debug!(sni = ?hello.server_name(), "TLS for another name; not ours to terminate");
            return None;
        }
        self.own.borrow().as_ref().map(|c| c.certified.clone())
    }
}

/// Presents the current certificate as a client.
#[derive(Debug)]
pub struct OwnClientCert {
    pub own: watch::Receiver<Option<Arc<ProxyCert>>>,
}

impl ResolvesClientCert for OwnClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.own.borrow().as_ref().map(|c| c.certified.clone())
    }
    fn has_certs(&self) -> bool {
        self.own.borrow().is_some()
    }
}

/// Inbound: our certificate for our identity; a client certificate is asked
/// for and, when given, must chain to the anchors in force (none = "no
/// identity").
pub fn inbound_config(
    trust: TrustRx,
    own: watch::Receiver<Option<Arc<ProxyCert>>>,
    name: &str,
    mesh: &MeshTls,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    live_server(mesh.provider(), trust, own, name, ALPN)
}

/// Our certificate for our name; a client certificate asked for and, when
/// given, judged by the anchors in force; `alpn` offered.
fn live_server(
    provider: Arc<CryptoProvider>,
    trust: TrustRx,
    own: watch::Receiver<Option<Arc<ProxyCert>>>,
    name: &str,
    alpn: &[u8],
) -> Result<Arc<ServerConfig>, rustls::Error> {
    pki::tls::server_config_with(
        provider,
        Arc::new(Live(TrustNow(trust))),
        Arc::new(OwnServerCert {
            own,
            name: name.to_string(),
        }),
        alpn,
    )
}

/// Outbound: verify the peer chains to the anchors in force and carries the
/// expected identity (the server name); present our own certificate.
pub fn outbound_config(
    trust: TrustRx,
    own: watch::Receiver<Option<Arc<ProxyCert>>>,
    with_header: bool,
    mesh: &MeshTls,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    live_client(mesh.provider(), trust, own, with_header.then_some(ALPN))
}

/// The peer judged by the anchors in force at each handshake, our current
/// leaf presented, `alpn` offered, no resumption (every handshake is judged).
fn live_client(
    provider: Arc<CryptoProvider>,
    trust: TrustRx,
    own: watch::Receiver<Option<Arc<ProxyCert>>>,
    alpn: Option<&[u8]>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Live(TrustNow(trust))))
        .with_client_cert_resolver(Arc::new(OwnClientCert { own }));
    cfg.alpn_protocols = alpn.into_iter().map(<[u8]>::to_vec).collect();
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// The control plane: its chain judged by the anchors in force at each
/// handshake and its name (SNI = its identity) checked, our current leaf
/// presented, HTTP/2.
pub fn control_config(
    trust: TrustRx,
    own: watch::Receiver<Option<Arc<ProxyCert>>>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    live_client(provider(), trust, own, Some(b"h2"))
}

/// The tap port's TLS: our certificate for our name, HTTP/2; a client
/// certificate is asked for and judged by the anchors in force (the tap
/// service then admits only the control plane's identity).
pub fn tap_config(
    trust: TrustRx,
    own: watch::Receiver<Option<Arc<ProxyCert>>>,
    name: &str,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    live_server(provider(), trust, own, name, b"h2")
}

/// The admin port's TLS: our certificate for our name, no client certificate.
pub fn admin_config(
    own: watch::Receiver<Option<Arc<ProxyCert>>>,
    name: &str,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    pki::tls::server_config(
        rustls::server::WebPkiClientVerifier::no_client_auth(),
        Arc::new(OwnServerCert {
            own,
            name: name.to_string(),
        }),
        b"http/1.1",
    )
}
