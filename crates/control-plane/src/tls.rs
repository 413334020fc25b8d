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

/// One gRPC channel to `addr` over mTLS (`cfg`, expecting the server to be
/// `name`), connected now: how the control plane calls a peer replica or a
/// proxy's tap listener.
pub async fn mtls_channel(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    connect_timeout: std::time::Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let (cfg, name) = (cfg.clone(), name.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(connect_timeout)
        .connect_with_connector(connector)
        .await
}

/// An error with its causes, one after another.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
