//! gRPC channels to the control plane over weft's own rustls configuration
//! (live anchors, current leaf), not a TLS setup rebuilt from PEM: TCP, then
//! TLS 1.3 with SNI = the control plane's identity, then HTTP/2.

use std::future::Future;
use std::net::SocketAddr;
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

/// One connected channel (one TCP connection, one handshake) to a replica
/// of `addr` (a comma-separated list of `host:port`): see [`connect_replicas`].
pub async fn connect(
    addr: &str,
    server_name: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> Result<Channel, ConnectError> {
    let failures = std::sync::Mutex::default();
    connect_replicas(addr, server_name, config, connect_timeout, &failures)
        .await
        .map(|(c, _)| c)
}

/// The addresses the entries of `addr` resolve to now, in order, each once.
pub async fn resolve(addr: &str) -> Result<Vec<SocketAddr>, ConnectError> {
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for entry in crate::replicas::entries(addr) {
        match tokio::net::lookup_host(entry).await {
            Ok(found) => all.extend(found.filter(|a| !all.contains(a)).collect::<Vec<_>>()),
            Err(e) => errors.push(format!("{entry}: {e}")),
        }
    }
    if all.is_empty() {
        return Err(ConnectError::Connect {
            addr: addr.to_string(),
            detail: if errors.is_empty() {
                "no address to connect to; pass host:port[,host:port...]".into()
            } else {
                format!("no entry resolves ({})", errors.join("; "))
            },
        });
    }
    Ok(all)
}

/// Connects to one replica of `addr`: the replicas in the order
/// [`crate::replicas::order`] gives (spread at random, those that failed
/// lately last), the next after each failure, which `failures` records.
/// Returns the channel and the replica it reached.
pub async fn connect_replicas(
    addr: &str,
    server_name: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
    failures: &std::sync::Mutex<crate::replicas::Failures>,
) -> Result<(Channel, SocketAddr), ConnectError> {
    let candidates = resolve(addr).await?;
    let order = {
        let f = failures.lock().unwrap_or_else(|p| p.into_inner());
        crate::replicas::order(
            &candidates,
            &f,
            std::time::Instant::now(),
            crate::replicas::PENALTY,
            bounds::retry::random(),
        )
    };
    let mut tried = Vec::new();
    for replica in order {
        let connector = RustlsConnector::new(config.clone(), server_name)?;
        match endpoint(&replica.to_string(), connect_timeout)?
            .connect_with_connector(connector)
            .await
        {
            Ok(c) => return Ok((c, replica)),
            Err(e) => {
                let detail = describe(&e);
                tracing::debug!(%replica, error = %detail, "control-plane replica unreachable; trying the next");
                failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(replica, std::time::Instant::now());
                tried.push(format!("{replica}: {detail}"));
            }
        }
    }
    Err(ConnectError::Connect {
        addr: addr.to_string(),
        detail: tried.join("; "),
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
