//! TLS for the control plane's gRPC listeners: TLS 1.3 only, the control
//! plane's own (renewed) certificate, and a client certificate asked for but
//! not required (its chain is judged by the service: see
//! [`pki::tls::DeferredClientVerifier`]).

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::own_cert::OwnCert;

/// Serves whatever certificate the control plane holds right now.
#[derive(Debug)]
pub struct OwnCertResolver {
    pub own: watch::Receiver<Option<Arc<OwnCert>>>,
}

impl ResolvesServerCert for OwnCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.own.borrow().as_ref().map(|o| o.certified.clone())
    }
}

/// The server config for gRPC listeners.
pub fn server_config(
    own: watch::Receiver<Option<Arc<OwnCert>>>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    pki::tls::server_config(
        Arc::new(pki::tls::DeferredClientVerifier::new(pki::tls::provider())),
        Arc::new(OwnCertResolver { own }),
        b"h2",
    )
}
