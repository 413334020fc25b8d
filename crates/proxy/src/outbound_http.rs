//! HTTP from the application to a meshed peer, served per request: each
//! request (HTTP/1 upgraded to HTTP/2 by `orig_proto`, HTTP/2 as it came)
//! is sent over the pooled connection to one of the target's endpoints, so
//! application connections cost no handshake of their own and each request
//! takes its turn of the endpoints; the peer's inbound judges every request
//! by its policy with this proxy's identity, as before. HTTP/1 upgrades and
//! CONNECT change their connection, so they get a connection of their own
//! declaring HTTP/1, and become a tunnel when the peer accepts.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::detect::Protocol;
use crate::discovery::Resolution;
use crate::http::{Body, error_response};
use crate::metrics::{ConnLabels, ProxyMetrics};
use crate::orig_proto;
use crate::outbound::{CONNECT_ATTEMPTS, Outbound, Upstream};
use crate::pool::Peer;

impl Outbound {
    /// Serves the application's HTTP/1 or HTTP/2 connection until it is
    /// done. `first`: the endpoints resolved for the connection, used by its
    /// first request, so each request takes one turn of the rotation.
    pub(crate) async fn serve_http<S>(
        self: Arc<Self>,
        app: S,
        protocol: Protocol,
        target: String,
        first: Vec<Resolution>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let target: Arc<str> = target.into();
        let first = Arc::new(std::sync::Mutex::new(Some(first)));
        let svc = hyper::service::service_fn(move |req| {
            let first = first.lock().unwrap_or_else(|e| e.into_inner()).take();
            self.clone().request(target.clone(), req, first)
        });
        let io = TokioIo::new(app);
        let served = match protocol {
            Protocol::Http2 => {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .enable_connect_protocol()
                    .serve_connection(io, svc)
                    .await
            }
            // A client that half-closes after its request still gets the
            // response (as through an L4 hop).
            _ => {
                hyper::server::conn::http1::Builder::new()
                    .half_close(true)
                    .serve_connection(io, svc)
                    .with_upgrades()
                    .await
            }
        };
        if let Err(e) = served {
            tracing::debug!(error = %e, protocol = protocol.label(), "outbound HTTP connection ended with an error");
        }
    }

    async fn request(
        self: Arc<Self>,
        target: Arc<str>,
        req: Request<Incoming>,
        resolved: Option<Vec<Resolution>>,
    ) -> Result<Response<Body>, Infallible> {
        let h2 = req.version() == Version::HTTP_2;
        let grpc = h2 && crate::http::is_grpc(&req);
        let refused = |status, detail: &str| refused(grpc, &target, status, detail);
        if !h2 && orig_proto::needs_own_connection(&req) {
            // Boxed: the rare path's state stays out of every request's future.
            return Ok(Box::pin(self.own_connection(&target, req, resolved)).await);
        }
        let mut req = req;
        if !h2 && let Err(e) = orig_proto::upgrade(&mut req, &target) {
            return Ok(refused(StatusCode::BAD_REQUEST, &e.to_string()));
        }
        // HTTP/2 CONNECT (extended CONNECT too) is a stream of the pooled
        // connection; on 200 both sides become one tunnel.
        let down = (h2 && req.method() == Method::CONNECT).then(|| hyper::upgrade::on(&mut req));
        let candidates = self.candidates(&target, resolved).await;
        let mut failure = None;
        for c in candidates {
            let peer = match c {
                Resolution::Meshed {
                    addr,
                    identity,
                    proxy_port: Some(proxy_port),
                    ..
                } => Peer {
                    dial: std::net::SocketAddr::new(addr.ip(), proxy_port),
                    identity,
                    port: addr.port(),
                },
                Resolution::Unknown(why) => {
                    self.metrics.refuse("outbound", "unknown_destination");
                    return Ok(refused(StatusCode::SERVICE_UNAVAILABLE, &why));
                }
                // The target's endpoints changed under the connection (no
                // longer behind a proxy that takes a header): not this one.
                _ => continue,
            };
            // Bounded as a connect is: waiting behind another request that
            // opens the connection counts too.
            let opened = tokio::time::timeout(self.connect_timeout, self.pool.sender(&peer)).await;
            let mut sender = match opened.unwrap_or_else(|_| {
                Err((
                    "connect_timeout",
                    format!(
                        "no connection to {} within {:?}",
                        peer.dial, self.connect_timeout
                    ),
                ))
            }) {
                Ok(s) => s,
                Err((reason, detail)) => {
                    tracing::info!(%target, dial = %peer.dial, reason, "endpoint failed before the request was sent; trying the next one: {detail}");
                    failure = Some((reason, detail));
                    continue;
                }
            };
            match sender.try_send_request(req).await {
                Ok(mut resp) => {
                    if !h2 {
                        orig_proto::response_to_h1(&mut resp);
                    }
                    if let Some(down) = down
                        && resp.status() == StatusCode::OK
                    {
                        let up = hyper::upgrade::on(&mut resp);
                        tokio::spawn(crate::http::splice(down, up, std::future::pending(), 0));
                    }
                    return Ok(resp.map(http_body_util::BodyExt::boxed));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent (the connection closed): the next endpoint.
                    Some(r) => {
                        req = r;
                        failure = Some(("pooled_connection", e.into_error().to_string()));
                    }
                    None => {
                        let e = e.into_error();
                        self.metrics.refuse("outbound", "peer_reset");
                        let detail = format!("{} failed the request: {e}", peer.dial);
                        return Ok(refused(StatusCode::BAD_GATEWAY, &detail));
                    }
                },
            }
        }
        let (reason, detail) =
            failure.unwrap_or(("unknown_destination", "no meshed endpoint".into()));
        self.metrics.refuse("outbound", reason);
        Ok(refused(StatusCode::BAD_GATEWAY, &detail))
    }

    /// The endpoints to try for one request: those already resolved, or the
    /// target's next turn.
    async fn candidates(&self, target: &str, resolved: Option<Vec<Resolution>>) -> Vec<Resolution> {
        match resolved {
            Some(c) => c,
            None => {
                self.discovery
                    .resolve_candidates(target, CONNECT_ATTEMPTS)
                    .await
            }
        }
    }

    /// An upgrade or CONNECT: a connection of its own to the peer, declared
    /// HTTP/1, the request sent as it came; on 101 (or CONNECT's 2xx) both
    /// sides become one tunnel.
    async fn own_connection(
        &self,
        target: &str,
        mut req: Request<Incoming>,
        resolved: Option<Vec<Resolution>>,
    ) -> Response<Body> {
        let candidates = self.candidates(target, resolved).await;
        let up = match self
            .gate
            .handshake(self.reach(target, candidates, Protocol::Http1))
            .await
        {
            Some(Ok(up)) => up,
            Some(Err((reason, detail))) => {
                self.metrics.refuse("outbound", reason);
                return refused(false, target, StatusCode::BAD_GATEWAY, &detail);
            }
            None => {
                self.metrics.refuse("outbound", "handshake_timeout");
                return refused(
                    false,
                    target,
                    StatusCode::GATEWAY_TIMEOUT,
                    "not reached in time",
                );
            }
        };
        let down = hyper::upgrade::on(&mut req);
        let m = &self.metrics;
        let sent = match up {
            Upstream::Mesh(tls, labels) => send_h1(*tls, req, labels, m).await,
            Upstream::Plain(tcp, labels) => send_h1(tcp, req, labels, m).await,
        };
        match sent {
            Ok(mut resp) => {
                let is_connect = resp.extensions().get::<Method>() == Some(&Method::CONNECT);
                let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS
                    || (is_connect && resp.status().is_success());
                if upgraded {
                    let up = hyper::upgrade::on(&mut resp);
                    tokio::spawn(crate::http::splice(down, up, std::future::pending(), 0));
                }
                resp.map(http_body_util::BodyExt::boxed)
            }
            Err(e) => refused(false, target, StatusCode::BAD_GATEWAY, &e),
        }
    }
}

/// Sends one request over a new HTTP/1 connection on `io` (upgrades
/// allowed), counted as a connection with `labels`. A CONNECT's response
/// carries the method in its extensions.
async fn send_h1<IO>(
    io: IO,
    req: Request<Incoming>,
    labels: ConnLabels,
    m: &ProxyMetrics,
) -> Result<Response<Incoming>, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connect = req.method() == Method::CONNECT;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    m.tcp_open.get_or_create(&labels).inc();
    let close = m.tcp_close.clone();
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
        close.get_or_create(&labels).inc();
    });
    let mut resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if connect {
        resp.extensions_mut().insert(Method::CONNECT);
    }
    Ok(resp)
}

/// The proxy's own answer for a request it could not send, naming why
/// (for gRPC, UNAVAILABLE in a trailers-only response).
fn refused(grpc: bool, target: &str, status: StatusCode, detail: &str) -> Response<Body> {
    tracing::info!(%target, "outbound request refused: {detail}");
    error_response(grpc, status, "14", &format!("{target}: {detail}"))
}
