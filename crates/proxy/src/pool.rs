//! Pooled mTLS connections to peer proxies, HTTP/2 with a transport header
//! declaring it: one per (peer address, identity, port), shared by every
//! application connection the client proxy serves as HTTP, so an app that
//! opens a connection per request costs no handshake. A new bundle or
//! certificate retires them all (the next request handshakes under the new
//! trust); a connection the peer closed is replaced on the next request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bounds::Tracked;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::cert::ProxyCert;
use crate::detect::Protocol;
use crate::metrics::{ConnLabels, ProxyMetrics};
use crate::transport_header;
use crate::trust::TrustRx;

pub type H2Sender = hyper::client::conn::http2::SendRequest<Incoming>;

/// A refusal: the reason label and what happened.
pub type Refusal = (&'static str, String);

/// Peers pooled at once; beyond this, dead entries are dropped first, then
/// all (each request reconnects as needed), so the map stays bounded.
const MAX_PEERS: usize = 1024;

/// An idle pooled connection is closed after this (or the stream idle
/// timeout, if shorter): it holds two TLS sessions' memory for nothing.
const MAX_IDLE: Duration = Duration::from_secs(90);

/// Where a pooled connection goes: the peer proxy's address, the identity it
/// must prove, and the application port its transport header names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    pub dial: SocketAddr,
    pub identity: pki::Identity,
    pub port: u16,
}

/// One peer's connection, opened by the first request that needs it while
/// the others wait for it.
#[derive(Default)]
struct Slot(tokio::sync::Mutex<Option<H2Sender>>);

pub struct Pool {
    slots: Mutex<HashMap<Peer, Arc<Slot>>>,
    /// Offers ALPN transport.l5d.io/v1 (a transport header follows).
    connector: TlsConnector,
    connect_timeout: Duration,
    idle: Duration,
    metrics: ProxyMetrics,
}

impl Pool {
    pub fn new(
        connector: TlsConnector,
        connect_timeout: Duration,
        idle_timeout: Duration,
        metrics: ProxyMetrics,
    ) -> Self {
        Self {
            slots: Mutex::default(),
            connector,
            connect_timeout,
            idle: idle_timeout.min(MAX_IDLE),
            metrics,
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<Peer, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Retires every pooled connection: requests in flight finish on them,
    /// new ones handshake again.
    pub fn retire_all(&self) {
        self.slots().clear();
    }

    /// Retires the pool whenever the anchors or our certificate change, until
    /// either channel closes (the proxy is stopping).
    pub async fn retire_on_change(
        self: Arc<Self>,
        mut trust: TrustRx,
        mut cert: watch::Receiver<Option<Arc<ProxyCert>>>,
    ) {
        loop {
            let changed = tokio::select! {
                r = trust.changed() => r,
                r = cert.changed() => r,
            };
            if changed.is_err() {
                return;
            }
            tracing::debug!("anchors or certificate changed: pooled connections retired");
            self.retire_all();
        }
    }

    /// A live connection to `peer`, opened if there is none.
    pub async fn sender(&self, peer: &Peer) -> Result<H2Sender, Refusal> {
        let slot = {
            let mut slots = self.slots();
            if slots.len() >= MAX_PEERS && !slots.contains_key(peer) {
                slots.retain(|_, s| s.0.try_lock().is_ok_and(|c| c.is_some()));
                if slots.len() >= MAX_PEERS {
                    slots.clear();
                }
            }
            slots.entry(peer.clone()).or_default().clone()
        };
        let mut conn = slot.0.lock().await;
        if let Some(s) = conn.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        *conn = None;
        // Boxed: a handshake is rare, and inline its state (a TLS client
        // connection) would be moved with every request's future.
        let s = Box::pin(self.open(peer)).await?;
        *conn = Some(s.clone());
        Ok(s)
    }

    async fn open(&self, peer: &Peer) -> Result<H2Sender, Refusal> {
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(peer.dial))
            .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(("connect", format!("cannot connect to {}: {e}", peer.dial))),
            Err(_) => {
                return Err((
                    "connect_timeout",
                    format!("connecting to {} timed out", peer.dial),
                ));
            }
        };
        let _ = tcp.set_nodelay(true);
        let mut tls = mtls(&self.connector, tcp, &peer.identity, self.connect_timeout).await?;
        send_header(&mut tls, peer.port, Protocol::Http2).await?;
        let (io, activity) = Tracked::new(tls);
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ("h2_handshake", format!("HTTP/2 with {}: {e}", peer.dial)))?;
        let labels =
            ConnLabels::outbound_mesh(peer.identity.clone(), peer.port, Protocol::Http2.label());
        let m = self.metrics.clone();
        m.tcp_open.get_or_create(&labels).inc();
        let idle = self.idle;
        let dial = peer.dial;
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%dial, error = %e, "pooled connection ended with an error");
                },
                () = bounds::idle_for(&activity, idle) => {
                    tracing::debug!(%dial, "pooled connection idle for {idle:?}: closed");
                }
            }
            m.tcp_close.get_or_create(&labels).inc();
        });
        Ok(sender)
    }
}

/// mTLS over `tcp` expecting `identity`, within `limit`. Fail closed: the
/// caller never falls back to plaintext for a meshed peer.
pub async fn mtls(
    connector: &TlsConnector,
    tcp: TcpStream,
    identity: &pki::Identity,
    limit: Duration,
) -> Result<TlsStream<TcpStream>, Refusal> {
    let dial = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let name = ServerName::try_from(identity.to_string())
        .map_err(|e| ("bad_identity", format!("{identity}: {e}")))?;
    match tokio::time::timeout(limit, connector.connect(name, tcp)).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err((
            "tls_handshake",
            format!("mTLS with {dial} failed, expecting {identity}: {e}"),
        )),
        Err(_) => Err(("tls_timeout", format!("mTLS with {dial} timed out"))),
    }
}

/// The transport header naming `port` and declaring `protocol`.
pub async fn send_header(
    tls: &mut TlsStream<TcpStream>,
    port: u16,
    protocol: Protocol,
) -> Result<(), Refusal> {
    transport_header::write(tls, port, "", protocol)
        .await
        .map_err(|e| {
            (
                "transport_header",
                format!("cannot send the transport header: {e}"),
            )
        })
}
