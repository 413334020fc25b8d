//! Detected HTTP on an inbound connection: every request is judged by the
//! policy in force at that moment, then forwarded to the application on
//! 127.0.0.1 in the HTTP version the client spoke. Bodies stream through
//! (never buffered); HTTP/1 upgrades and CONNECT become tunnels.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use policy::{Client, Facts, Server, Traffic, Verdict};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use linkerd2_proxy_api::tap::tap_event::ProxyDirection;

use crate::authz::Scene;
use crate::detect::Protocol;
use crate::metrics::ProxyMetrics;
use crate::policies::PolicyRx;
use crate::tap::body::TapBody;
use crate::tap::{ConnMeta, Tapped, Taps};

pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

pub const CLIENT_ID: HeaderName = HeaderName::from_static("l5d-client-id");
pub const PROXY_ERROR: HeaderName = HeaderName::from_static("l5d-proxy-error");

/// One inbound HTTP connection's context.
pub struct HttpConn {
    /// The policy as it changes; `initial` until the first arrives.
    pub policy: PolicyRx,
    pub initial: Arc<Server>,
    /// The connection's protocol facts (the destination's opaque hint).
    pub facts: Facts,
    pub client: Client,
    pub peer: SocketAddr,
    pub port: u16,
    pub metrics: ProxyMetrics,
    /// The taps open, and this connection as tap events name it.
    pub taps: Taps,
    pub local: Arc<crate::tap::Local>,
    pub dst: SocketAddr,
    pub no_tls_reason: String,
}

impl HttpConn {
    fn server(&self) -> Arc<Server> {
        self.policy
            .borrow()
            .clone()
            .unwrap_or_else(|| self.initial.clone())
    }

    fn tap_meta(&self) -> ConnMeta<'_> {
        ConnMeta {
            direction: ProxyDirection::Inbound,
            src: self.peer,
            dst: self.dst,
            tls: crate::tap::filter::tls_label(self.client.tls, &self.no_tls_reason),
            client_id: self.client.identity.as_ref(),
            server_id: self.client.tls.then_some(&self.local.identity),
            workload: &self.local.workload,
        }
    }

    fn scene(&self) -> Scene<'_> {
        Scene {
            metrics: &self.metrics,
            client: &self.client,
            peer: self.peer,
            port: self.port,
        }
    }

    /// Admits one request or answers it: refused if the Server does not
    /// serve its HTTP version or its path has no safe normal form; else its
    /// path is rewritten to the normal form (so the application reads what
    /// was judged) and it is judged. Ok carries the request as judged.
    fn admit<B>(
        &self,
        req: &mut Request<B>,
        http2: bool,
    ) -> Result<policy::Request, Box<Response<Body>>> {
        let server = self.server();
        let grpc = is_grpc(req);
        if let Some(why) = policy::judge::version_refusal(&server, http2) {
            tracing::info!(port = self.port, peer = %self.peer, "inbound request refused: {why}");
            return Err(Box::new(error_response(
                grpc,
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "13",
                &why,
            )));
        }
        if let Err(why) = normalize_path(req, server.keep_encoded_slashes) {
            tracing::info!(port = self.port, peer = %self.peer, "inbound request refused: {why}");
            return Err(Box::new(error_response(
                grpc,
                StatusCode::BAD_REQUEST,
                "3",
                &why,
            )));
        }
        let (v, judged) = self.judge(&server, req);
        if v.allowed {
            Ok(judged)
        } else {
            Err(Box::new(denied(req, &v)))
        }
    }

    /// The verdict for one request, counted and (if denied) audited, with
    /// the request as policy saw it.
    fn judge<B>(&self, server: &Server, req: &Request<B>) -> (Verdict, policy::Request) {
        let r = policy::Request {
            method: req.method().as_str().to_string(),
            path: req.uri().path().to_string(),
            headers: req
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
        };
        let v = policy::judge(server, self.facts, &self.client, Traffic::Http(&r));
        self.scene()
            .http(server, &v, &format!("{} {}", r.method, r.path));
        (v, r)
    }

    /// Resolves once a policy change no longer allows `r` (the request that
    /// opened a tunnel), counted and audited as a denial.
    async fn revoked(self: Arc<Self>, r: policy::Request) {
        let mut rx = self.policy.clone();
        loop {
            // The policy stream's end (the proxy is stopping) closes too.
            if rx.changed().await.is_err() {
                return;
            }
            let now = rx.borrow_and_update().clone();
            if let Some(server) = now {
                let v = policy::judge(&server, self.facts, &self.client, Traffic::Http(&r));
                if !v.allowed {
                    self.scene()
                        .http(&server, &v, &format!("{} {}", r.method, r.path));
                    return;
                }
            }
        }
    }
}

/// Serves HTTP/1 or HTTP/2 on `io` until the client is done.
pub async fn serve<S>(io: S, protocol: Protocol, conn: HttpConn)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let result = match protocol {
        Protocol::Http2 => {
            let up = Arc::new(Mutex::new(None));
            let h1 = crate::app_pool::AppPool::new(conn.port);
            let svc = hyper::service::service_fn(move |req| {
                let tapped = conn.taps.request(&conn.tap_meta(), &req);
                let upstream = Upstream {
                    h2: up.clone(),
                    h1: h1.clone(),
                };
                // Boxed once here: hyper spawns a task per HTTP/2 stream and
                // would otherwise move the whole request future on the way.
                Box::pin(counted(
                    conn.clone(),
                    tapped,
                    h2_request(conn.clone(), upstream, req),
                ))
            });
            // Extended CONNECT (RFC 8441, WebSockets over HTTP/2) allowed.
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .enable_connect_protocol()
                .serve_connection(TokioIo::new(io), svc)
                .await
        }
        _ => {
            let up = Arc::new(Mutex::new(None));
            let svc = hyper::service::service_fn(move |req| {
                let tapped = conn.taps.request(&conn.tap_meta(), &req);
                counted(
                    conn.clone(),
                    tapped,
                    h1_request(conn.clone(), up.clone(), req),
                )
            });
            // A client that half-closes after its request still gets the
            // response (as through an L4 hop).
            hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades()
                .await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "inbound HTTP connection ended with an error");
    }
}

/// A request's answer, counted on its edge (and tapped, when a tap took it).
async fn counted(
    conn: Arc<HttpConn>,
    tapped: Option<Tapped>,
    answer: impl std::future::Future<Output = Result<Response<Body>, Infallible>>,
) -> Result<Response<Body>, Infallible> {
    let r = answer.await;
    if let Ok(resp) = &r {
        conn.metrics
            .edges
            .request(&conn.client, resp.status().as_u16());
    }
    match (r, tapped) {
        (Ok(resp), Some(t)) => {
            let grpc = crate::tap::body::grpc_status(resp.headers());
            let end = t.response(resp.status().as_u16(), grpc);
            Ok(resp.map(|b| TapBody::new(b, end).boxed()))
        }
        (r, _) => r,
    }
}

pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A header-safe rendering: visible ASCII and spaces only.
fn header_text(s: &str) -> HeaderValue {
    let clean: String = s
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("denied"))
}

fn full(
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: String,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().extend(headers);
    resp
}

/// An error the proxy answers itself, naming the reason in
/// `l5d-proxy-error`; for gRPC a trailers-only response with `grpc_status`.
pub(crate) fn error_response(
    grpc: bool,
    status: StatusCode,
    grpc_status: &'static str,
    msg: &str,
) -> Response<Body> {
    let mut headers = vec![(PROXY_ERROR, header_text(msg))];
    if grpc {
        headers.extend([
            (
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            ),
            (
                HeaderName::from_static("grpc-status"),
                HeaderValue::from_static(grpc_status),
            ),
            (
                HeaderName::from_static("grpc-message"),
                header_text(&msg.replace('%', "%25")),
            ),
        ]);
        return full(StatusCode::OK, headers, String::new());
    }
    headers.push((
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    ));
    full(status, headers, format!("{msg}\n"))
}

/// A denied request: 403, or gRPC PERMISSION_DENIED (7).
pub fn denied<B>(req: &Request<B>, v: &Verdict) -> Response<Body> {
    let reason = v.reasons.last().map(String::as_str).unwrap_or("denied");
    let msg = format!("unauthorized request on this port: {reason}");
    error_response(is_grpc(req), StatusCode::FORBIDDEN, "7", &msg)
}

/// The application did not answer: 502, or gRPC UNAVAILABLE (14).
fn unavailable(grpc: bool, port: u16, e: impl std::fmt::Display) -> Response<Body> {
    let msg = format!("the application on 127.0.0.1:{port} did not answer: {e}");
    tracing::info!(port, "inbound request failed: {msg}");
    error_response(grpc, StatusCode::BAD_GATEWAY, "14", &msg)
}

/// Rewrites the request's path to its normal form (the query kept), or says
/// why it has none. A request without a path (CONNECT's authority form) is
/// left as it is. Public (hidden) for the fuzz targets in fuzz/.
#[doc(hidden)]
pub fn normalize_path<B>(req: &mut Request<B>, keep_encoded_slashes: bool) -> Result<(), String> {
    let Some(pq) = req.uri().path_and_query() else {
        return Ok(());
    };
    let n = policy::path::normalize(pq.path(), keep_encoded_slashes).map_err(|e| e.to_string())?;
    if n.as_str() == pq.path() {
        return Ok(());
    }
    let pq = match pq.query() {
        Some(q) => format!("{}?{q}", n.as_str()),
        None => n.0,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|e| format!("the normalised path {pq:?} is not a valid URI path: {e}"))?,
    );
    *req.uri_mut() = hyper::Uri::from_parts(parts)
        .map_err(|e| format!("the normalised path {pq:?} makes an invalid URI: {e}"))?;
    Ok(())
}

/// The application sees only the identity the proxy verified.
fn set_client_id<B>(req: &mut Request<B>, c: &Client) {
    req.headers_mut().remove(&CLIENT_ID);
    if let Some(id) = c.identity.as_ref()
        && let Ok(v) = HeaderValue::from_str(&id.to_string())
    {
        req.headers_mut().insert(CLIENT_ID, v);
    }
}

/// Removes an `Upgrade: h2c` offer (and its HTTP2-Settings): after such an
/// upgrade every HTTP/2 request would bypass per-request authorization.
fn strip_h2c_upgrade<B>(req: &mut Request<B>) {
    let h = req.headers_mut();
    let h2c = h.get_all(hyper::header::UPGRADE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("h2c"))
    });
    if !h2c {
        return;
    }
    h.remove(hyper::header::UPGRADE);
    h.remove(HeaderName::from_static("http2-settings"));
    let kept: Vec<String> = h
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("upgrade") && !t.eq_ignore_ascii_case("http2-settings"))
        .map(str::to_string)
        .collect();
    h.remove(hyper::header::CONNECTION);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join(", "))
    {
        h.insert(hyper::header::CONNECTION, v);
    }
}

/// Opening a connection, boxed: it is rare, and inline its state would be
/// moved with every request's future that might open one.
type Opening<S> = Pin<Box<dyn Future<Output = Result<S, String>> + Send>>;

/// A new HTTP/1 connection to the application (upgrades allowed).
pub(crate) fn connect_h1(port: u16) -> Opening<H1Sender> {
    Box::pin(async move {
        let io = app(port).await.map_err(|e| e.to_string())?;
        let (sender, c) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(c.with_upgrades());
        Ok(sender)
    })
}

/// A new HTTP/2 connection to the application.
fn connect_h2(port: u16) -> Opening<H2Sender> {
    Box::pin(async move {
        let io = app(port).await.map_err(|e| e.to_string())?;
        let (sender, c) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(c);
        Ok(sender)
    })
}

async fn app(port: u16) -> std::io::Result<TokioIo<TcpStream>> {
    let s = TcpStream::connect(("127.0.0.1", port)).await?;
    let _ = s.set_nodelay(true);
    Ok(TokioIo::new(s))
}

pub(crate) type H1Sender = hyper::client::conn::http1::SendRequest<Incoming>;
type H2Sender = hyper::client::conn::http2::SendRequest<Incoming>;

async fn h1_request(
    conn: Arc<HttpConn>,
    upstream: Arc<Mutex<Option<H1Sender>>>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    // Judged as the application will see it: the verified l5d-client-id,
    // no h2c upgrade (it would turn the connection into unjudged HTTP/2).
    set_client_id(&mut req, &conn.client);
    strip_h2c_upgrade(&mut req);
    let judged = match conn.admit(&mut req, false) {
        Ok(judged) => judged,
        Err(answer) => return Ok(*answer),
    };
    let grpc = is_grpc(&req);
    let tunnel =
        req.method() == Method::CONNECT || req.headers().contains_key(hyper::header::UPGRADE);
    let down = tunnel.then(|| hyper::upgrade::on(&mut req));
    // HTTP/1 serves one request at a time, so one upstream connection suffices;
    // it is opened when needed and again after the application closed it.
    let mut slot = upstream.lock().await;
    if slot.as_ref().is_none_or(|s| s.is_closed()) {
        match connect_h1(conn.port).await {
            Ok(sender) => *slot = Some(sender),
            Err(e) => return Ok(unavailable(grpc, conn.port, e)),
        }
    }
    let Some(sender) = slot.as_mut() else {
        return Ok(unavailable(grpc, conn.port, "no connection"));
    };
    if let Err(e) = sender.ready().await {
        *slot = None;
        return Ok(unavailable(grpc, conn.port, e));
    }
    let is_connect = req.method() == Method::CONNECT;
    match sender.send_request(req).await {
        Ok(mut resp) => {
            let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS
                || (is_connect && resp.status().is_success());
            if upgraded && let Some(down) = down {
                let up = hyper::upgrade::on(&mut resp);
                let stop = conn.clone().revoked(judged);
                tokio::spawn(splice(down, up, stop, conn.port));
                *slot = None;
            }
            Ok(resp.map(BodyExt::boxed))
        }
        Err(e) => {
            *slot = None;
            Ok(unavailable(grpc, conn.port, e))
        }
    }
}

/// Where an inbound HTTP/2 connection's requests go: HTTP/2 requests over
/// one multiplexed connection, HTTP/1 a client proxy carried as HTTP/2 over
/// HTTP/1 connections, as many as run at once.
struct Upstream {
    h2: Arc<Mutex<Option<H2Sender>>>,
    h1: Arc<crate::app_pool::AppPool>,
}

async fn h2_request(
    conn: Arc<HttpConn>,
    upstream: Upstream,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let grpc = is_grpc(&req);
    let orig = match crate::orig_proto::downgrade(&mut req) {
        Ok(orig) => orig,
        Err(e) => {
            let why = e.to_string();
            tracing::info!(port = conn.port, peer = %conn.peer, "inbound request refused: {why}");
            return Ok(error_response(grpc, StatusCode::BAD_REQUEST, "3", &why));
        }
    };
    set_client_id(&mut req, &conn.client);
    // Judged as the HTTP version the application will read.
    let judged = match conn.admit(&mut req, orig.is_none()) {
        Ok(judged) => judged,
        Err(answer) => return Ok(*answer),
    };
    if orig.is_some() {
        return Ok(match upstream.h1.send(req).await {
            Ok(mut resp) => {
                crate::orig_proto::response_to_h2(&mut resp);
                resp.map(BodyExt::boxed)
            }
            Err(e) => unavailable(grpc, conn.port, e),
        });
    }
    let upstream = upstream.h2;
    // HTTP/2 multiplexes: one upstream connection, shared by every stream.
    let mut sender = {
        let mut slot = upstream.lock().await;
        if slot.as_ref().is_none_or(|s| s.is_closed()) {
            match connect_h2(conn.port).await {
                Ok(sender) => *slot = Some(sender),
                Err(e) => return Ok(unavailable(grpc, conn.port, e)),
            }
        }
        match slot.clone() {
            Some(s) => s,
            None => return Ok(unavailable(grpc, conn.port, "no connection")),
        }
    };
    if let Err(e) = sender.ready().await {
        return Ok(unavailable(grpc, conn.port, e));
    }
    // CONNECT is a stream of its own; on 200 it becomes a tunnel to the
    // application, closed if the policy stops allowing it.
    let down = (req.method() == Method::CONNECT).then(|| hyper::upgrade::on(&mut req));
    match sender.send_request(req).await {
        Ok(mut resp) => {
            if let Some(down) = down
                && resp.status() == StatusCode::OK
            {
                let up = hyper::upgrade::on(&mut resp);
                let stop = conn.clone().revoked(judged);
                tokio::spawn(splice(down, up, stop, conn.port));
            }
            Ok(resp.map(BodyExt::boxed))
        }
        Err(e) => Ok(unavailable(grpc, conn.port, e)),
    }
}

/// After an upgrade or CONNECT: bytes both ways until either side is done,
/// or until `stop` (a policy change that no longer allows the request that
/// opened it) closes both.
pub(crate) async fn splice(
    down: hyper::upgrade::OnUpgrade,
    up: hyper::upgrade::OnUpgrade,
    stop: impl std::future::Future<Output = ()>,
    port: u16,
) {
    match tokio::try_join!(down, up) {
        Ok((d, u)) => {
            let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
            tokio::select! {
                r = crate::copy::bidirectional(&mut d, &mut u) => if let Err(e) = r {
                    tracing::debug!(error = %e, "upgraded connection ended with an error");
                },
                () = stop => tracing::info!(
                    port,
                    "closed an upgraded connection: the policy changed and no longer allows the request that opened it"
                ),
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict() -> Verdict {
        Verdict {
            mode: policy::Mode::Http,
            allowed: false,
            denial: Some(policy::Denial::Unauthorized),
            authz: None,
            audit: false,
            route: None,
            reasons: vec![
                "server server:web".into(),
                "no authorization applies, so it is denied".into(),
            ],
        }
    }

    #[test]
    fn denials_name_the_reason() {
        let req = Request::builder().uri("/x").body(()).unwrap();
        let r = denied(&req, &verdict());
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let e = r.headers().get(&PROXY_ERROR).unwrap().to_str().unwrap();
        assert!(e.contains("no authorization applies"), "{e}");

        let grpc = Request::builder()
            .header("content-type", "application/grpc+proto")
            .body(())
            .unwrap();
        let r = denied(&grpc, &verdict());
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers().get("grpc-status").unwrap(), "7");
    }

    #[test]
    fn client_id_is_replaced_not_trusted() {
        let mut req = Request::builder()
            .header("l5d-client-id", "forged.example")
            .body(())
            .unwrap();
        let c = Client {
            identity: Some(
                "web.demo.serviceaccount.identity.weft.cluster.local"
                    .parse()
                    .unwrap(),
            ),
            tls: true,
            ip: "127.0.0.1".parse().unwrap(),
        };
        set_client_id(&mut req, &c);
        assert_eq!(
            req.headers()
                .get_all("l5d-client-id")
                .iter()
                .collect::<Vec<_>>(),
            vec!["web.demo.serviceaccount.identity.weft.cluster.local"]
        );
        let anon = Client {
            identity: None,
            tls: false,
            ..c
        };
        set_client_id(&mut req, &anon);
        assert!(req.headers().get("l5d-client-id").is_none());
    }

    #[test]
    fn h2c_upgrades_are_removed_other_upgrades_kept() {
        let mut req = Request::builder()
            .header("upgrade", "h2c")
            .header("http2-settings", "AAMAAABkAAQAAP__")
            .header("connection", "Upgrade, HTTP2-Settings, keep-alive")
            .body(())
            .unwrap();
        strip_h2c_upgrade(&mut req);
        assert!(req.headers().get("upgrade").is_none());
        assert!(req.headers().get("http2-settings").is_none());
        assert_eq!(req.headers()["connection"], "keep-alive");
        let mut ws = Request::builder()
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .body(())
            .unwrap();
        strip_h2c_upgrade(&mut ws);
        assert_eq!(ws.headers()["upgrade"], "websocket");
    }

    #[test]
    fn paths_are_rewritten_to_what_was_judged_queries_kept() {
        let mut req = Request::builder()
            .uri("http://backend:8080/public/%2e%2E/admin//x?a=%2F&b")
            .body(())
            .unwrap();
        normalize_path(&mut req, false).unwrap();
        assert_eq!(req.uri().to_string(), "http://backend:8080/admin/x?a=%2F&b");
        let mut req = Request::builder().uri("/%61dmin").body(()).unwrap();
        normalize_path(&mut req, false).unwrap();
        assert_eq!(req.uri().path(), "/admin");
        let mut req = Request::builder().uri("/a%2Fb").body(()).unwrap();
        let e = normalize_path(&mut req, false).unwrap_err();
        assert!(e.contains("encoded '/'"), "{e}");
        assert_eq!(req.uri().path(), "/a%2Fb");
        normalize_path(&mut req, true).unwrap();
        assert_eq!(req.uri().path(), "/a%2Fb");
        let mut connect = Request::builder()
            .method("CONNECT")
            .uri("backend:443")
            .body(())
            .unwrap();
        normalize_path(&mut connect, false).unwrap();
        assert_eq!(connect.uri().to_string(), "backend:443");
    }

    #[test]
    fn header_text_is_safe() {
        // '%' is kept: `/%61dmin` is not echoed as `/?61dmin`.
        assert_eq!(header_text("a\nb%c é /%61"), "a?b%c ? /%61");
    }
}
