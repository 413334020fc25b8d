//! A kube-rs client whose TCP connections are made inside the control-plane
//! pod's network namespace. The API server listens only there, never on the
//! host's interfaces; each connection's socket is created and connected by a
//! short-lived thread that entered that namespace (a socket keeps the
//! namespace it was made in), then handed to whatever tokio runtime the test
//! uses. So the client works from any runtime and any thread.

use std::future::Future;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::client::ConfigExt;
use tower::{BoxError, ServiceBuilder};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `ip:port` URIs from inside one network namespace.
#[derive(Clone)]
pub struct NetnsConnector {
    netns: String,
}

impl NetnsConnector {
    pub fn new(netns: &str) -> Self {
        Self {
            netns: netns.to_string(),
        }
    }
}

fn address(uri: &http::Uri) -> std::io::Result<SocketAddr> {
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{uri}: {what}; the test API server is addressed by IP (https://IP:PORT)"),
        )
    };
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| bad("the host is not an IP address"))?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    Ok(SocketAddr::new(ip, port))
}

async fn connect_in(netns: String, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let ns = netns.clone();
    let std_stream = tokio::task::spawn_blocking(move || {
        crate::in_ns(&ns, move || -> std::io::Result<TcpStream> {
            let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
            s.set_nonblocking(true)?;
            s.set_nodelay(true)?;
            Ok(s)
        })
    })
    .await
    .map_err(std::io::Error::other)?
    .map_err(|e| std::io::Error::other(format!("enter network namespace {netns}: {e:#}")))?
    .map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("connect to {addr} inside network namespace {netns}: {e}"),
        )
    })?;
    tokio::net::TcpStream::from_std(std_stream)
}

impl tower::Service<http::Uri> for NetnsConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let netns = self.netns.clone();
        Box::pin(async move {
            let addr = address(&uri)?;
            Ok(TokioIo::new(connect_in(netns, addr).await?))
        })
    }
}

/// A client for `config` that connects from inside `netns`. Call it inside a
/// tokio runtime (the client spawns its request buffer there).
pub fn client_in(netns: &str, config: &kube::Config) -> Result<kube::Client> {
    // kube's own builder installs this too; ours builds the rustls config first
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // the same stack as kube's own builder, with our connector under rustls
    let https = config
        .rustls_https_connector_with_connector(NetnsConnector::new(netns))
        .context("rustls connector from the test kubeconfig")?;
    let http: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .auth_layer()
                .context("auth from the test kubeconfig")?,
        )
        .layer(
            config
                .extra_headers_layer()
                .context("headers from the test kubeconfig")?,
        )
        .map_err(BoxError::from)
        .service(http);
    Ok(kube::Client::new(service, config.default_namespace.clone()))
}
