//! Bounds on the gRPC listeners (identity, destination, policy): a cap on
//! open connections, a handshake deadline, an idle timeout, and a small
//! stream cap for identity connections without a client certificate.
//!
//! "Idle" means no HTTP/2 stream has been open for the idle timeout. Bytes
//! alone do not count: without a stream they are only HTTP/2 housekeeping,
//! and the server's own keepalive PINGs (every 10 s) would keep every
//! connection alive forever. A stream in flight (a watch) keeps its
//! connection open however silent it is; a dead peer is found by the
//! keepalive PING timeout instead, so a fleet is never cut for silence and
//! never reconnects at once. Streams are counted by a tower layer on each
//! server, matched to their connection by the peer's address.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bounds::{Activity, Admitted, Gate, Hit};
use http_body_util::BodyExt;
use hyper::{Request, Response};
use identity::IssuerStatus;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::peer;

/// Streams one proxy may hold on one connection: every destination target
/// and policy port it follows (up to 4,096 and 1,024) plus its mesh stream
/// and renewals, multiplexed, with a margin.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 8192;

/// The limits of the gRPC listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcLimits {
    /// Per listener: connections, handshake deadline, idle timeout.
    pub listener: bounds::Limits,
    /// Streams at once on an identity connection without a client
    /// certificate (a first Certify needs one).
    pub anonymous_streams: u32,
}

impl std::fmt::Display for GrpcLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "each {}; {} streams per connection, {} without a client certificate",
            self.listener, MAX_STREAMS_PER_CONNECTION, self.anonymous_streams
        )
    }
}

/// A tonic server with the keepalive that finds dead peers and `streams`
/// streams per connection.
pub fn server(streams: u32) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .max_concurrent_streams(Some(streams))
}

/// Open streams of one connection, and when the count last changed.
#[derive(Debug, Default)]
struct Streams {
    open: AtomicUsize,
    activity: Activity,
}

type Conns = Arc<Mutex<HashMap<SocketAddr, Arc<Streams>>>>;

/// One gRPC listener's admission and the stream counts of its connections.
#[derive(Debug, Clone)]
pub struct Listener {
    gate: Gate,
    conns: Conns,
    /// Turns true when the shutdown grace period is over: every connection
    /// still open is closed.
    closing: watch::Receiver<bool>,
}

pub type Conn = peer::Guarded<tokio_rustls::server::TlsStream<TcpStream>>;
pub type ConnTx = mpsc::Sender<Result<Conn, io::Error>>;
/// A connection of the plaintext loopback listener.
pub type PlainConn = peer::Guarded<TcpStream>;
pub type PlainConnTx = mpsc::Sender<Result<PlainConn, io::Error>>;

impl Listener {
    pub fn new(
        name: &'static str,
        limits: bounds::Limits,
        metrics: &bounds::Metrics,
        closing: watch::Receiver<bool>,
    ) -> Self {
        Self {
            gate: Gate::new(name, limits, metrics),
            conns: Conns::default(),
            closing,
        }
    }

    /// The layer that counts this listener's streams (on every server it feeds).
    pub fn layer(&self) -> CountLayer {
        CountLayer {
            conns: self.conns.clone(),
        }
    }

    /// Accepts TCP within the cap, completes TLS under the deadline off the
    /// accept loop, and hands connections to tonic: those without a client
    /// certificate to `anonymous` when given. Each closes once idle, or
    /// once its verified client's leaf expires.
    pub async fn accept_tls(
        self,
        listener: TcpListener,
        acceptor: TlsAcceptor,
        tx: ConnTx,
        anonymous: Option<ConnTx>,
        issuer: watch::Receiver<IssuerStatus>,
    ) {
        loop {
            let (sock, slot) = self.gate.accept(&listener).await;
            let Ok(peer) = sock.peer_addr() else { continue };
            let _ = sock.set_nodelay(true);
            let (this, acceptor, issuer) = (self.clone(), acceptor.clone(), issuer.clone());
            let (tx, to) = (tx.clone(), anonymous.clone());
            tokio::spawn(async move {
                let tls = match this.gate.handshake(acceptor.accept(sock)).await {
                    Some(Ok(tls)) => tls,
                    Some(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    // Counted by the gate.
                    None => return,
                };
                let chain = tls.get_ref().1.peer_certificates().map(<[_]>::to_vec);
                let tx = match (to, &chain) {
                    (Some(anon), None) => anon,
                    _ => tx,
                };
                let expired = peer::expired(chain, issuer);
                let conn = this.guarded(peer, tls, expired, slot);
                let _ = tx.send(Ok(conn)).await;
            });
        }
    }

    /// Accepts plaintext TCP (the loopback listener) within the cap and
    /// hands it to tonic; each closes once idle or at the end of a shutdown.
    pub async fn accept_plain(self, listener: TcpListener, tx: PlainConnTx) {
        loop {
            let (sock, slot) = self.gate.accept(&listener).await;
            let Ok(peer) = sock.peer_addr() else { continue };
            let _ = sock.set_nodelay(true);
            // No certificate, so nothing expires.
            let conn = self.guarded(peer, sock, std::future::pending(), slot);
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    }

    /// The connection, closed by whichever comes first: `expired`, no
    /// stream open for the idle timeout, or the end of a shutdown's grace. It holds its slot under the cap and
    /// its stream count while open.
    fn guarded<S>(
        &self,
        peer: SocketAddr,
        inner: S,
        expired: impl Future<Output = io::Error> + Send + 'static,
        slot: Admitted,
    ) -> peer::Guarded<S> {
        let streams = Arc::new(Streams::default());
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, streams.clone());
        let (gate, idle) = (self.gate.clone(), self.gate.limits.idle_timeout);
        let watcher = streams.clone();
        let idle = async move {
            idle_conn(&watcher, idle).await;
            gate.count(Hit::IdleTimeout);
            tracing::debug!(%peer, "closing an idle gRPC connection");
            io::Error::new(
                io::ErrorKind::TimedOut,
                "no stream was open for the idle timeout",
            )
        };
        let mut closing = self.closing.clone();
        let shutdown = async move {
            // A dropped sender is a stopped control plane too.
            let _ = closing.wait_for(|c| *c).await;
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the control plane is shutting down and the grace period is over",
            )
        };
        let close = async move {
            tokio::select! {
                e = expired => e,
                e = idle => e,
                e = shutdown => e,
            }
        };
        let registered = Registered {
            conns: self.conns.clone(),
            peer,
            streams,
        };
        peer::Guarded::new(inner, close, (registered, slot))
    }
}

/// Resolves once no stream has been open for `idle`.
async fn idle_conn(streams: &Streams, idle: Duration) {
    loop {
        bounds::idle_for(&streams.activity, idle).await;
        if streams.open.load(Ordering::Acquire) == 0 {
            return;
        }
        // A stream is open: its end touches the activity again.
        tokio::time::sleep(idle).await;
    }
}

/// Removes a connection's stream count when it closes.
#[derive(Debug)]
struct Registered {
    conns: Conns,
    peer: SocketAddr,
    streams: Arc<Streams>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns
            .get(&self.peer)
            .is_some_and(|s| Arc::ptr_eq(s, &self.streams))
        {
            conns.remove(&self.peer);
        }
    }
}

/// Counts a listener's open streams per connection.
#[derive(Debug, Clone)]
pub struct CountLayer {
    conns: Conns,
}

impl<S> tower::Layer<S> for CountLayer {
    type Service = CountStreams<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CountStreams {
            inner,
            conns: self.conns.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CountStreams<S> {
    inner: S,
    conns: Conns,
}

/// One open stream: counted until its response body is dropped.
struct StreamGuard(Arc<Streams>);

impl StreamGuard {
    fn open(streams: Arc<Streams>) -> Self {
        streams.open.fetch_add(1, Ordering::AcqRel);
        streams.activity.touch();
        Self(streams)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.activity.touch();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S> CountStreams<S> {
    fn streams_of(&self, req: &Request<Body>) -> Option<Arc<Streams>> {
        let ext = req.extensions();
        let peer = match ext.get::<TlsConnectInfo<TcpConnectInfo>>() {
            Some(tls) => tls.get_ref().remote_addr()?,
            None => ext.get::<TcpConnectInfo>()?.remote_addr()?,
        };
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.get(&peer).cloned()
    }
}

impl<S> tower::Service<Request<Body>> for CountStreams<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let guard = self.streams_of(&req).map(StreamGuard::open);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            Ok(res.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    // The stream is open for as long as its body lives.
                    let _held = &guard;
                    frame
                }))
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn an_open_stream_holds_the_connection_however_silent() {
        let streams = Arc::new(Streams::default());
        let idle = Duration::from_secs(10);
        let start = Instant::now();
        let guard = StreamGuard::open(streams.clone());
        let watcher = streams.clone();
        let closed = tokio::spawn(async move {
            idle_conn(&watcher, idle).await;
            Instant::now()
        });
        // Silent for five idle timeouts, then the stream ends.
        tokio::time::sleep(idle * 5).await;
        assert!(!closed.is_finished());
        drop(guard);
        let at = closed.await.unwrap() - start;
        assert!(at >= idle * 6, "{at:?}");
        assert!(at < idle * 7 + Duration::from_secs(1), "{at:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_streams_closes_after_the_idle_timeout() {
        let streams = Streams::default();
        let start = Instant::now();
        idle_conn(&streams, Duration::from_secs(3)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }
}
