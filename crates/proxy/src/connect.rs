//! gRPC channels to the control plane over weft's own rustls configuration
//! (live anchors, current leaf), not a TLS setup rebuilt from PEM: TCP, then
//! TLS 1.3 with SNI = the control plane's identity, then HTTP/2.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{addr} is not a host:port address ({source})")]
    Address {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{name:?} cannot be a TLS server name ({source}); pass the control plane's identity")]
    ServerName {
        name: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("cannot reach the control plane at {addr}: {detail}")]
    Connect { addr: String, detail: String },
}

/// Opens TCP to the URI's authority and runs the TLS handshake with a fixed
/// rustls config; tonic does HTTP/2 on top.
#[derive(Clone)]
pub struct RustlsConnector {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl RustlsConnector {
    pub fn new(config: Arc<ClientConfig>, server_name: &str) -> Result<Self, ConnectError> {
        let name = ServerName::try_from(server_name.to_string()).map_err(|source| {
            ConnectError::ServerName {
                name: server_name.to_string(),
                source,
            }
        })?;
        Ok(Self { config, name })
    }
}

type Connecting =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tonic::codegen::Service<Uri> for RustlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.clone();
        let name = self.name.clone();
        Box::pin(async move {
            let authority = uri
                .authority()
                .map(|a| a.as_str().to_string())
                .ok_or_else(|| std::io::Error::other("the address has no host:port"))?;
            let tcp = TcpStream::connect(authority).await?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// The HTTP/2 settings of every control-plane channel: keepalives, so a
/// control plane that vanished without a reset is noticed.
pub fn endpoint(addr: &str, connect_timeout: Duration) -> Result<Endpoint, ConnectError> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|source| ConnectError::Address {
            addr: addr.to_string(),
            source,
        })?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true))
}

/// One connected channel (one TCP connection, one handshake) to `addr`.
pub async fn connect(
    addr: &str,
    server_name: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> Result<Channel, ConnectError> {
    let connector = RustlsConnector::new(config, server_name)?;
    endpoint(addr, connect_timeout)?
        .connect_with_connector(connector)
        .await
        .map_err(|e| ConnectError::Connect {
            addr: addr.to_string(),
            detail: describe(&e),
        })
}

/// An error with its causes, one after another.
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
