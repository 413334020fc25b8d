//! A real HTTP application and real clients, so end-to-end tests can prove
//! that a proxy enforcing per-request authorization does not break
//! applications. The app speaks HTTP/1.0, HTTP/1.1 and HTTP/2 (prior
//! knowledge) on one port and echoes back what it saw (`x-client-id`,
//! `x-app-version`, `x-app-host`) so tests can check what the proxy forwarded.
//!
//! The clients take an already-connected stream (usually to a proxy), put a
//! deadline on every wait and return errors with context instead of
//! panicking, so a broken proxy fails a test rather than hanging it. A reply
//! the helper did not hope for (say a 403) is returned as a [`Reply`], not an
//! error, so tests can assert denials with the same helpers.

use std::convert::Infallible;
use std::error::Error;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use aws_lc_rs::digest;
use http_body_util::channel::Channel;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Deadline for each step of a client exchange (a handshake, a response
/// head, a body frame, a read): a stalled proxy fails the test instead of
/// hanging it.
pub const STEP: Duration = Duration::from_secs(20);

/// Chunk size of generated bodies, so large bodies are never held whole.
pub const CHUNK: usize = 64 * 1024;

/// What clients put in `Host` / `:authority`.
const AUTHORITY: &str = "app";

// ---------------------------------------------------------------- bodies

/// Byte `i` of the deterministic body pattern (251 is prime, so the pattern
/// never lines up with power-of-two chunk or frame boundaries).
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// The first `n` bytes of the pattern.
pub fn pattern(n: usize) -> Vec<u8> {
    pattern_at(0, n).to_vec()
}

/// `len` pattern bytes starting at `offset`; zero-copy up to [`CHUNK`].
pub fn pattern_at(offset: u64, len: usize) -> Bytes {
    static BASE: OnceLock<Bytes> = OnceLock::new();
    if len > CHUNK {
        return (offset..offset + len as u64).map(pattern_byte).collect();
    }
    let base = BASE.get_or_init(|| (0..(CHUNK + 251) as u64).map(pattern_byte).collect());
    let start = (offset % 251) as usize;
    base.slice(start..start + len)
}

/// The first `size` pattern bytes as [`CHUNK`]-sized pieces.
pub fn pattern_chunks(size: u64) -> impl Iterator<Item = Bytes> {
    (0..size)
        .step_by(CHUNK)
        .map(move |off| pattern_at(off, (size - off).min(CHUNK as u64) as usize))
}

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Streaming SHA-256 plus byte count, for bodies too big to buffer.
pub struct Sha {
    ctx: digest::Context,
    len: u64,
}

impl Default for Sha {
    fn default() -> Self {
        Self {
            ctx: digest::Context::new(&digest::SHA256),
            len: 0,
        }
    }
}

impl Sha {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
        self.len += data.len() as u64;
    }

    /// `"<sha256 hex> <length>"`, the app's `/sha` answer.
    pub fn finish(self) -> String {
        format!("{} {}", hex(self.ctx.finish().as_ref()), self.len)
    }
}

/// The `/sha` answer for the first `size` pattern bytes.
pub fn pattern_sha(size: u64) -> String {
    let mut sha = Sha::new();
    pattern_chunks(size).for_each(|c| sha.update(&c));
    sha.finish()
}

// ---------------------------------------------------------------- server

type AppBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Serves the test app on `listener` from a thread of its own (with its own
/// runtime), so tests that block or run elsewhere (another network
/// namespace) need no runtime of theirs.
pub fn spawn(listener: std::net::TcpListener) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the test app");
        rt.block_on(async move {
            let _ = listener.set_nonblocking(true);
            match TcpListener::from_std(listener) {
                Ok(l) => serve(l).await,
                Err(e) => eprintln!("test app: {e}"),
            }
        });
    });
}

/// Serves the test app on every connection `listener` accepts, forever.
/// HTTP/1.x and HTTP/2 prior knowledge are told apart per connection; a
/// connection error only ends that connection.
pub async fn serve(listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Such as EMFILE: back off rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let mut server = auto::Builder::new(TokioExecutor::new());
            server.http2().enable_connect_protocol();
            let _ = server
                .serve_connection_with_upgrades(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}

/// Serves the test app on one accepted connection from the calling thread
/// (with a runtime of its own), every response also naming the app in
/// `x-app-name`, so a test with several replicas sees which one answered.
pub fn serve_one_named(stream: std::net::TcpStream, name: &str) {
    let name = HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("-"));
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async move {
        let _ = stream.set_nonblocking(true);
        let Ok(stream) = TcpStream::from_std(stream) else {
            return;
        };
        let svc = service_fn(move |req| {
            let name = name.clone();
            async move {
                let mut resp = handle(req).await?;
                resp.headers_mut().insert("x-app-name", name);
                Ok::<_, Infallible>(resp)
            }
        });
        let mut server = auto::Builder::new(TokioExecutor::new());
        server.http2().enable_connect_protocol();
        let _ = server
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .await;
    });
}

async fn handle(req: Request<Incoming>) -> Result<Response<AppBody>, Infallible> {
    let client = req
        .headers()
        .get("l5d-client-id")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("-"));
    let version = match req.version() {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        _ => "other",
    };
    let host = req
        .headers()
        .get(header::HOST)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("-"));
    let mut resp = route(req).await;
    resp.headers_mut().insert("x-client-id", client);
    resp.headers_mut().insert("x-app-host", host);
    resp.headers_mut()
        .insert("x-app-version", HeaderValue::from_static(version));
    Ok(resp)
}

async fn route(mut req: Request<Incoming>) -> Response<AppBody> {
    if req.method() == Method::CONNECT {
        echo_upgraded(hyper::upgrade::on(&mut req));
        return respond(StatusCode::OK, empty());
    }
    if req.version() == Version::HTTP_11
        && let Some(proto) = req.headers().get(header::UPGRADE).cloned()
    {
        echo_upgraded(hyper::upgrade::on(&mut req));
        let mut resp = respond(StatusCode::SWITCHING_PROTOCOLS, empty());
        resp.headers_mut().insert(header::UPGRADE, proto);
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        return resp;
    }
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return grpc_echo(req.into_body());
    }
    let path = req.uri().path().to_owned();
    if let Some(count) = path.strip_prefix("/bytes/") {
        return bytes_reply(count);
    }
    match path.as_str() {
        // The request body is the response body: hyper pulls each frame
        // only when it can send it back, so nothing is buffered.
        "/echo" => respond(StatusCode::OK, req.into_body().boxed_unsync()),
        "/sha" => sha_reply(req.into_body()).await,
        _ => text(StatusCode::OK, format!("ok {} {path}", req.method())),
    }
}

/// Echoes an upgraded (CONNECT or `Upgrade`) connection until EOF.
fn echo_upgraded(on: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let Ok(upgraded) = on.await else { return };
        let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
        if tokio::io::copy(&mut r, &mut w).await.is_ok() {
            let _ = w.shutdown().await;
        }
    });
}

/// Sends each request data frame back as it arrives, then `grpc-status: 0`.
fn grpc_echo(mut body: Incoming) -> Response<AppBody> {
    let (mut tx, rx) = Channel::<Bytes, hyper::Error>::new(1);
    tokio::spawn(async move {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data()
                        && tx.send_data(data).await.is_err()
                    {
                        return;
                    }
                }
                Err(e) => return tx.abort(e),
            }
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let _ = tx.send_trailers(trailers).await;
    });
    let mut resp = respond(StatusCode::OK, rx.boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    resp
}

async fn sha_reply(mut body: Incoming) -> Response<AppBody> {
    let mut sha = Sha::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => frame.data_ref().iter().for_each(|d| sha.update(d)),
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("body: {e}")),
        }
    }
    text(StatusCode::OK, sha.finish())
}

/// `count` pattern bytes, generated chunk by chunk as the client reads.
fn bytes_reply(count: &str) -> Response<AppBody> {
    let Some(size) = count.split('/').next().and_then(|n| n.parse::<u64>().ok()) else {
        return text(StatusCode::BAD_REQUEST, format!("bad byte count {count:?}"));
    };
    let (mut tx, rx) = Channel::<Bytes, hyper::Error>::new(2);
    tokio::spawn(async move {
        for chunk in pattern_chunks(size) {
            if tx.send_data(chunk).await.is_err() {
                return;
            }
        }
    });
    let mut resp = respond(StatusCode::OK, rx.boxed_unsync());
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    resp
}

fn respond(status: StatusCode, body: AppBody) -> Response<AppBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp
}

fn text(status: StatusCode, body: String) -> Response<AppBody> {
    respond(
        status,
        Full::new(Bytes::from(body))
            .map_err(|e| match e {})
            .boxed_unsync(),
    )
}

fn empty() -> AppBody {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

// ---------------------------------------------------------------- clients

/// Which HTTP version a client helper speaks (HTTP/2 with prior knowledge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

/// A request for [`h1`], [`h2`] and [`requests`].
#[derive(Clone, Debug)]
pub struct Req {
    pub method: Method,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn new(method: Method, path: &str) -> Self {
        Self {
            method,
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn get(path: &str) -> Self {
        Self::new(Method::GET, path)
    }

    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            body: body.into(),
            ..Self::new(Method::POST, path)
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A response as a test sees it.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

type ReqBody = UnsyncBoxBody<Bytes, Infallible>;

fn full(body: impl Into<Bytes>) -> ReqBody {
    Full::new(body.into()).boxed_unsync()
}

/// An error with its sources, since hyper's top-level messages are terse.
fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(e) = source {
        let _ = write!(s, ": {e}");
        source = e.source();
    }
    s
}

/// Awaits `fut` for at most `limit`, naming `what` in any error.
async fn within<T, E: Error>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {}", chain(&e))),
        Err(_) => Err(format!("{what}: nothing within {limit:?}")),
    }
}

async fn step<T, E: Error>(
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    within(STEP, what, fut).await
}

enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

/// A client connection; its driver task is aborted when the helper is done.
struct Conn {
    sender: Sender,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Conn {
    async fn open(stream: TcpStream, proto: Proto) -> Result<Self, String> {
        let io = TokioIo::new(stream);
        Ok(match proto {
            Proto::H1 => {
                let (tx, conn) = step("HTTP/1 handshake", http1::handshake(io)).await?;
                Conn {
                    sender: Sender::H1(tx),
                    driver: tokio::spawn(async move {
                        let _ = conn.with_upgrades().await;
                    }),
                }
            }
            Proto::H2 => {
                let handshake = http2::handshake(TokioExecutor::new(), io);
                let (tx, conn) = step("HTTP/2 handshake", handshake).await?;
                Conn {
                    sender: Sender::H2(tx),
                    driver: tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                }
            }
        })
    }

    /// Builds a request for this connection: origin-form plus `Host` on
    /// HTTP/1, an absolute URI on HTTP/2, the target as given for CONNECT.
    fn build(
        &self,
        method: Method,
        target: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> Result<Request<ReqBody>, String> {
        let h2 = matches!(self.sender, Sender::H2(_));
        let uri = if h2 && method != Method::CONNECT {
            format!("http://{AUTHORITY}{target}")
        } else {
            target.to_owned()
        };
        let mut b = Request::builder().method(method).uri(uri);
        if h2 {
            b = b.version(Version::HTTP_2);
        } else if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            b = b.header(header::HOST, AUTHORITY);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(body)
            .map_err(|e| format!("building request for {target}: {e}"))
    }

    /// Sends `req` and waits up to `limit` for the response head.
    async fn send(
        &mut self,
        req: Request<ReqBody>,
        limit: Duration,
    ) -> Result<Response<Incoming>, String> {
        let what = format!("{} {}", req.method(), req.uri());
        match &mut self.sender {
            Sender::H1(tx) => {
                step(&format!("{what}: connection ready"), tx.ready()).await?;
                within(limit, &what, tx.send_request(req)).await
            }
            Sender::H2(tx) => {
                step(&format!("{what}: connection ready"), tx.ready()).await?;
                within(limit, &what, tx.send_request(req)).await
            }
        }
    }
}

async fn next_frame(body: &mut Incoming) -> Result<Option<Frame<Bytes>>, String> {
    step("response body", async { body.frame().await.transpose() }).await
}

/// Reads the whole response into a [`Reply`].
async fn collect(resp: Response<Incoming>) -> Result<Reply, String> {
    let (parts, mut body) = resp.into_parts();
    let mut out = Vec::new();
    while let Some(frame) = next_frame(&mut body).await? {
        if let Some(data) = frame.data_ref() {
            out.extend_from_slice(data);
        }
    }
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: out,
    })
}

/// Sends `reqs` one after another on one connection (HTTP/1.1 keep-alive,
/// or one HTTP/2 connection). Fails if the connection does not survive.
pub async fn requests(
    stream: TcpStream,
    proto: Proto,
    reqs: Vec<Req>,
) -> Result<Vec<Reply>, String> {
    let mut conn = Conn::open(stream, proto).await?;
    let mut replies = Vec::with_capacity(reqs.len());
    for (i, r) in reqs.into_iter().enumerate() {
        let headers: Vec<(&str, &str)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let req = conn.build(r.method, &r.path, &headers, full(r.body))?;
        let resp = conn
            .send(req, STEP)
            .await
            .map_err(|e| format!("request #{i}: {e}"))?;
        replies.push(
            collect(resp)
                .await
                .map_err(|e| format!("request #{i}: {e}"))?,
        );
    }
    Ok(replies)
}

async fn one(stream: TcpStream, proto: Proto, req: Req) -> Result<Reply, String> {
    let mut replies = requests(stream, proto, vec![req]).await?;
    replies.pop().ok_or_else(|| "no reply".to_owned())
}

/// One HTTP/1.1 request.
pub async fn h1(stream: TcpStream, req: Req) -> Result<Reply, String> {
    one(stream, Proto::H1, req).await
}

/// One HTTP/2 (prior knowledge) request.
pub async fn h2(stream: TcpStream, req: Req) -> Result<Reply, String> {
    one(stream, Proto::H2, req).await
}

/// Several requests on one HTTP/1.1 connection, e.g. to check that it
/// survives a 403.
pub async fn h1_keepalive(stream: TcpStream, reqs: Vec<Req>) -> Result<Vec<Reply>, String> {
    requests(stream, Proto::H1, reqs).await
}

/// A chunked `POST /echo` that sends each chunk only once the previous one
/// has come back, proving the path streams rather than buffers. Returns the
/// reply with everything echoed (verified equal to what was sent).
pub async fn h1_streaming_echo(
    stream: TcpStream,
    chunks: usize,
    chunk_size: usize,
) -> Result<Reply, String> {
    let mut conn = Conn::open(stream, Proto::H1).await?;
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
    let req = conn.build(Method::POST, "/echo", &[], body.boxed_unsync())?;
    let chunk = |i: usize| pattern_at((i * chunk_size) as u64, chunk_size);
    // The first chunk goes with the head, in case something waits for data.
    if chunks > 0 {
        step("sending chunk 0", tx.send_data(chunk(0))).await?;
    }
    let resp = conn.send(req, STEP).await?;
    if resp.status() != StatusCode::OK {
        drop(tx);
        return collect(resp).await;
    }
    let (parts, mut body) = resp.into_parts();
    let mut echoed = Vec::new();
    for i in 0..chunks {
        if i > 0 {
            step(&format!("sending chunk {i}"), tx.send_data(chunk(i))).await?;
        }
        let want = (i + 1) * chunk_size;
        while echoed.len() < want {
            let Some(frame) = next_frame(&mut body)
                .await
                .map_err(|e| format!("waiting for chunk {i}: {e}"))?
            else {
                return Err(format!("echo ended after {} bytes", echoed.len()));
            };
            if let Some(data) = frame.data_ref() {
                echoed.extend_from_slice(data);
            }
        }
        if echoed.len() > want || echoed[want - chunk_size..] != chunk(i)[..] {
            return Err(format!("chunk {i} came back altered"));
        }
    }
    drop(tx);
    while let Some(frame) = next_frame(&mut body).await? {
        if frame.data_ref().is_some_and(|d| !d.is_empty()) {
            return Err("echo sent more than was sent to it".to_owned());
        }
    }
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: echoed,
    })
}

/// Sends an upgrading request; on `expect`, writes `payload` on the
/// upgraded connection, half-closes it and reads until EOF. The reply's
/// body is what came back (or the response body when not upgraded).
async fn upgrade_echo(
    stream: TcpStream,
    proto: Proto,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
    expect: StatusCode,
    payload: &[u8],
) -> Result<Reply, String> {
    let conn = Conn::open(stream, proto).await?;
    let req = conn.build(method, target, headers, full(Bytes::new()))?;
    echo_through(conn, req, expect, payload).await
}

/// Sends `req`; on `expect`, writes `payload` on the upgraded connection,
/// half-closes it and reads until EOF.
async fn echo_through(
    mut conn: Conn,
    req: Request<ReqBody>,
    expect: StatusCode,
    payload: &[u8],
) -> Result<Reply, String> {
    let resp = conn.send(req, STEP).await?;
    if resp.status() != expect {
        return collect(resp).await;
    }
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let upgraded = step("upgrade", hyper::upgrade::on(resp)).await?;
    let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
    let write = async {
        w.write_all(payload).await?;
        w.shutdown().await
    };
    let mut body = Vec::new();
    let read = r.read_to_end(&mut body);
    let (written, read) = timeout(STEP, async { tokio::join!(write, read) })
        .await
        .map_err(|_| format!("upgraded echo: nothing within {STEP:?}"))?;
    written.map_err(|e| format!("writing upgraded stream: {e}"))?;
    read.map_err(|e| format!("reading upgraded stream: {e}"))?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// `GET /ws` with `Upgrade: websocket`; on 101, echoes `payload` over the
/// upgraded connection (raw bytes, no websocket framing).
pub async fn websocket_echo(stream: TcpStream, payload: &[u8]) -> Result<Reply, String> {
    let headers = [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];
    let switching = StatusCode::SWITCHING_PROTOCOLS;
    upgrade_echo(
        stream,
        Proto::H1,
        Method::GET,
        "/ws",
        &headers,
        switching,
        payload,
    )
    .await
}

/// `CONNECT authority`; on 200, echoes `payload` through the tunnel.
pub async fn connect_echo(
    stream: TcpStream,
    authority: &str,
    payload: &[u8],
) -> Result<Reply, String> {
    let headers = [("host", authority)];
    upgrade_echo(
        stream,
        Proto::H1,
        Method::CONNECT,
        authority,
        &headers,
        StatusCode::OK,
        payload,
    )
    .await
}

/// `CONNECT authority` as a stream of an HTTP/2 connection (prior
/// knowledge); on 200, echoes `payload` through the tunnel.
pub async fn connect_echo_h2(
    stream: TcpStream,
    authority: &str,
    payload: &[u8],
) -> Result<Reply, String> {
    upgrade_echo(
        stream,
        Proto::H2,
        Method::CONNECT,
        authority,
        &[],
        StatusCode::OK,
        payload,
    )
    .await
}

/// Extended CONNECT (RFC 8441) to `path` with `:protocol: websocket`, as a
/// browser opens a WebSocket over HTTP/2; on 200, echoes `payload` (raw
/// bytes, no WebSocket framing).
pub async fn websocket_echo_h2(
    stream: TcpStream,
    path: &str,
    payload: &[u8],
) -> Result<Reply, String> {
    let conn = Conn::open(stream, Proto::H2).await?;
    let mut req = conn.build(Method::CONNECT, path, &[], full(Bytes::new()))?;
    *req.uri_mut() = format!("http://{AUTHORITY}{path}")
        .parse()
        .map_err(|e| format!("{path}: {e}"))?;
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    echo_through(conn, req, StatusCode::OK, payload).await
}

/// A gRPC-style bidirectional stream over HTTP/2: sends `messages`
/// length-prefixed messages of `size` bytes, each only after the previous
/// one came back intact. Returns `grpc-status` (from the trailers, or from
/// the headers of a trailers-only response such as a proxy's denial with
/// status 7) and the response headers.
pub async fn grpc_bidi(
    stream: TcpStream,
    messages: usize,
    size: usize,
) -> Result<(u32, HeaderMap), String> {
    let mut conn = Conn::open(stream, Proto::H2).await?;
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
    let headers = [("content-type", "application/grpc"), ("te", "trailers")];
    let req = conn.build(
        Method::POST,
        "/test.Echo/Stream",
        &headers,
        body.boxed_unsync(),
    )?;
    let message = |i: usize| {
        let mut m = Vec::with_capacity(5 + size);
        m.push(0);
        m.extend_from_slice(&(size as u32).to_be_bytes());
        m.extend_from_slice(&pattern_at(i as u64, size));
        Bytes::from(m)
    };
    if messages > 0 {
        step("sending message 0", tx.send_data(message(0))).await?;
    }
    let resp = conn.send(req, STEP).await?;
    let (parts, mut body) = resp.into_parts();
    if let Some(status) = parts.headers.get("grpc-status") {
        return Ok((grpc_status(status)?, parts.headers));
    }
    if parts.status != StatusCode::OK {
        return Err(format!("HTTP status {} without grpc-status", parts.status));
    }
    let mut buf = Vec::new();
    for i in 0..messages {
        if i > 0 {
            step(&format!("sending message {i}"), tx.send_data(message(i))).await?;
        }
        while buf.len() < 5 + size {
            let Some(frame) = next_frame(&mut body)
                .await
                .map_err(|e| format!("waiting for message {i}: {e}"))?
            else {
                return Err(format!("stream ended before message {i} came back"));
            };
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
            }
        }
        if buf.len() > 5 + size || buf[..] != message(i)[..] {
            return Err(format!("message {i} came back altered"));
        }
        buf.clear();
    }
    drop(tx);
    let mut trailers = None;
    while let Some(frame) = next_frame(&mut body).await? {
        match frame.into_trailers() {
            Ok(t) => trailers = Some(t),
            Err(f) if f.data_ref().is_some_and(|d| !d.is_empty()) => {
                return Err("more messages came back than were sent".to_owned());
            }
            Err(_) => {}
        }
    }
    let status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .ok_or("response ended without grpc-status")?;
    Ok((grpc_status(status)?, parts.headers))
}

fn grpc_status(v: &HeaderValue) -> Result<u32, String> {
    v.to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad grpc-status {v:?}"))
}

/// Uploads `size` pattern bytes to `/sha` with a content-length, streamed
/// in chunks, and checks the app hashed exactly them. The deadline for the
/// answer grows with the size (1 MiB/s floor).
pub async fn upload_sha(stream: TcpStream, proto: Proto, size: u64) -> Result<Reply, String> {
    let mut conn = Conn::open(stream, proto).await?;
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(4);
    tokio::spawn(async move {
        for chunk in pattern_chunks(size) {
            if tx.send_data(chunk).await.is_err() {
                return;
            }
        }
    });
    let length = size.to_string();
    let headers = [("content-length", length.as_str())];
    let req = conn.build(Method::POST, "/sha", &headers, body.boxed_unsync())?;
    let limit = STEP + Duration::from_secs(size >> 20);
    let reply = collect(conn.send(req, limit).await?).await?;
    let want = pattern_sha(size);
    if reply.status == 200 && reply.text() != want {
        return Err(format!(
            "uploaded {want:?} but the app saw {:?}",
            reply.text()
        ));
    }
    Ok(reply)
}

/// Downloads `/bytes/size` and checks length and SHA-256 against the
/// pattern. On 200 the body is verified, not kept (the reply's is empty).
pub async fn download(stream: TcpStream, proto: Proto, size: u64) -> Result<Reply, String> {
    let mut conn = Conn::open(stream, proto).await?;
    let req = conn.build(
        Method::GET,
        &format!("/bytes/{size}"),
        &[],
        full(Bytes::new()),
    )?;
    let resp = conn.send(req, STEP).await?;
    if resp.status() != StatusCode::OK {
        return collect(resp).await;
    }
    let (parts, mut body) = resp.into_parts();
    let mut sha = Sha::new();
    while let Some(frame) = next_frame(&mut body).await? {
        if let Some(data) = frame.data_ref() {
            sha.update(data);
        }
    }
    let (got, want) = (sha.finish(), pattern_sha(size));
    if got != want {
        return Err(format!("downloaded {got:?}, expected {want:?}"));
    }
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: Vec::new(),
    })
}

/// A hand-driven HTTP/1 connection, for what hyper's client won't send:
/// HTTP/1.0, and a body held back until `100 Continue` arrives.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn write(&mut self, data: &[u8]) -> Result<(), String> {
        step("write", self.stream.write_all(data)).await
    }

    /// Reads more into the buffer; false at EOF.
    async fn fill(&mut self) -> Result<bool, String> {
        let mut chunk = [0; 16 * 1024];
        let n = step("read", self.stream.read(&mut chunk)).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// One line, without its CRLF.
    async fn line(&mut self) -> Result<Vec<u8>, String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.drain(..i + 2).take(i).collect();
                return Ok(line);
            }
            if !self.fill().await? {
                return Err("connection closed mid-line".to_owned());
            }
        }
    }

    async fn take(&mut self, n: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err(format!("closed after {} of {n} body bytes", self.buf.len()));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn head(&mut self) -> Result<(u16, HeaderMap), String> {
        let line = self.line().await?;
        let text = String::from_utf8_lossy(&line);
        let mut parts = text.split(' ');
        let status = match (parts.next(), parts.next()) {
            (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| format!("bad status line {text:?}"))?;
        let mut headers = HeaderMap::new();
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                return Ok((status, headers));
            }
            let bad = || format!("bad header line {:?}", String::from_utf8_lossy(&line));
            let colon = line.iter().position(|&b| b == b':').ok_or_else(bad)?;
            let name = HeaderName::from_bytes(line[..colon].trim_ascii()).map_err(|_| bad())?;
            let value =
                HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).map_err(|_| bad())?;
            headers.append(name, value);
        }
    }

    /// The body after a response head: chunked, by content-length, or to EOF.
    async fn body(&mut self, status: u16, headers: &HeaderMap) -> Result<Vec<u8>, String> {
        if status < 200 || status == 204 || status == 304 {
            return Ok(Vec::new());
        }
        let chunked = headers
            .get(header::TRANSFER_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
        if chunked {
            let mut body = Vec::new();
            loop {
                let line = self.line().await?;
                let size = String::from_utf8_lossy(&line);
                let size = size.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16)
                    .map_err(|_| format!("bad chunk size {size:?}"))?;
                if size == 0 {
                    while !self.line().await?.is_empty() {}
                    return Ok(body);
                }
                body.extend(self.take(size).await?);
                if !self.line().await?.is_empty() {
                    return Err("chunk not followed by CRLF".to_owned());
                }
            }
        }
        if let Some(length) = headers.get(header::CONTENT_LENGTH) {
            let n = length
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad content-length {length:?}"))?;
            return self.take(n).await;
        }
        while self.fill().await? {}
        Ok(std::mem::take(&mut self.buf))
    }

    async fn response(&mut self) -> Result<Reply, String> {
        let (status, headers) = self.head().await?;
        let body = self.body(status, &headers).await?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

/// A hand-written `GET <path> HTTP/1.0`. The response must not be chunked
/// and the connection must then close, as HTTP/1.0 without keep-alive says.
pub async fn http10(stream: TcpStream, path: &str) -> Result<Reply, String> {
    let mut raw = Raw {
        stream,
        buf: Vec::new(),
    };
    raw.write(format!("GET {path} HTTP/1.0\r\nHost: {AUTHORITY}\r\n\r\n").as_bytes())
        .await?;
    let reply = raw.response().await?;
    if reply.headers.contains_key(header::TRANSFER_ENCODING) {
        return Err("transfer-encoding in a response to HTTP/1.0".to_owned());
    }
    if !raw.buf.is_empty()
        || raw
            .fill()
            .await
            .map_err(|e| format!("awaiting close: {e}"))?
    {
        return Err("data after the HTTP/1.0 response".to_owned());
    }
    Ok(reply)
}

/// A hand-written `POST /sha` with `Expect: 100-continue`: the body is sent
/// only after `100 Continue` arrives (within 5 s, else an error). A final
/// response in its place (say a 403) is returned without sending the body.
pub async fn expect_continue(stream: TcpStream, body: Vec<u8>) -> Result<Reply, String> {
    let mut raw = Raw {
        stream,
        buf: Vec::new(),
    };
    let head = format!(
        "POST /sha HTTP/1.1\r\nHost: {AUTHORITY}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    raw.write(head.as_bytes()).await?;
    let wait = Duration::from_secs(5);
    let (status, headers) = timeout(wait, raw.head())
        .await
        .map_err(|_| format!("no 100 Continue within {wait:?}"))?
        .map_err(|e| format!("awaiting 100 Continue: {e}"))?;
    if status != 100 {
        let body = raw.body(status, &headers).await?;
        return Ok(Reply {
            status,
            headers,
            body,
        });
    }
    raw.write(&body).await?;
    raw.response().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    async fn app() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener));
        addr
    }

    async fn dial(addr: SocketAddr) -> TcpStream {
        TcpStream::connect(addr).await.unwrap()
    }

    #[test]
    fn pattern_and_sha() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let p = pattern(3 * CHUNK + 7);
        assert!(
            p.iter()
                .enumerate()
                .all(|(i, &b)| b == pattern_byte(i as u64))
        );
        let joined: Vec<u8> = pattern_chunks(p.len() as u64).flatten().collect();
        assert_eq!(joined, p);
        assert_eq!(
            pattern_sha(p.len() as u64),
            format!("{} {}", sha256_hex(&p), p.len())
        );
    }

    #[tokio::test]
    async fn plain_requests_report_version_and_client_id() {
        let addr = app().await;
        for proto in [Proto::H1, Proto::H2] {
            let reqs = vec![
                Req::get("/hello"),
                Req::post("/other", "x").header("l5d-client-id", "a.b.serviceaccount"),
                Req::get("/bytes/nope"),
            ];
            let r = requests(dial(addr).await, proto, reqs).await.unwrap();
            let version = if proto == Proto::H1 {
                "HTTP/1.1"
            } else {
                "HTTP/2"
            };
            assert_eq!((r[0].status, r[0].text()), (200, "ok GET /hello".into()));
            assert_eq!(r[0].header("x-client-id"), Some("-"));
            assert_eq!(r[0].header("x-app-version"), Some(version));
            assert_eq!(r[1].text(), "ok POST /other");
            assert_eq!(r[1].header("x-client-id"), Some("a.b.serviceaccount"));
            assert_eq!(r[2].status, 400);
        }
        let r = h1(dial(addr).await, Req::post("/sha", "abc"))
            .await
            .unwrap();
        assert_eq!(r.text(), format!("{} 3", sha256_hex(b"abc")));
        let r = h2(dial(addr).await, Req::post("/echo", "hi"))
            .await
            .unwrap();
        assert_eq!(r.body, b"hi");
        let r = h1_keepalive(dial(addr).await, vec![Req::get("/a"), Req::get("/b")]).await;
        assert_eq!(r.unwrap()[1].text(), "ok GET /b");
    }

    #[tokio::test]
    async fn streaming_echo() {
        let addr = app().await;
        let r = h1_streaming_echo(dial(addr).await, 8, 1000).await.unwrap();
        assert_eq!(r.body, pattern(8000));
        assert_eq!(r.header("x-app-version"), Some("HTTP/1.1"));
        let r = h1_streaming_echo(dial(addr).await, 2, 3 * CHUNK)
            .await
            .unwrap();
        assert_eq!(r.body.len(), 6 * CHUNK);
    }

    #[tokio::test]
    async fn http10_and_expect_continue() {
        let addr = app().await;
        let r = http10(dial(addr).await, "/x").await.unwrap();
        assert_eq!((r.status, r.text()), (200, "ok GET /x".into()));
        assert_eq!(r.header("x-app-version"), Some("HTTP/1.0"));
        let body = pattern(100_000);
        let r = expect_continue(dial(addr).await, body.clone())
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("{} {}", sha256_hex(&body), body.len()));
    }

    #[tokio::test]
    async fn upgrades_echo() {
        let addr = app().await;
        let payload = pattern(300_000);
        let r = websocket_echo(dial(addr).await, &payload).await.unwrap();
        assert_eq!(r.status, 101);
        assert_eq!(r.header("upgrade"), Some("websocket"));
        assert_eq!(r.header("x-client-id"), Some("-"));
        assert!(r.body == payload);
        let r = connect_echo(dial(addr).await, "example.com:443", b"tunnel")
            .await
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"tunnel"[..]));
    }

    #[tokio::test]
    async fn grpc_bidirectional() {
        let addr = app().await;
        let (status, headers) = grpc_bidi(dial(addr).await, 10, 1000).await.unwrap();
        assert_eq!(status, 0);
        assert_eq!(headers["x-app-version"], "HTTP/2");
        assert_eq!(grpc_bidi(dial(addr).await, 0, 10).await.unwrap().0, 0);
    }

    /// A proxy's gRPC denial is trailers-only; the helper reports its status.
    #[tokio::test]
    async fn grpc_trailers_only_denial() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let deny = service_fn(|_req: Request<Incoming>| async {
                let mut resp = Response::new(Empty::<Bytes>::new());
                resp.headers_mut()
                    .insert("grpc-status", HeaderValue::from_static("7"));
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), deny)
                .await;
        });
        let (status, _) = grpc_bidi(dial(addr).await, 3, 10).await.unwrap();
        assert_eq!(status, 7);
    }

    #[tokio::test]
    async fn large_bodies() {
        let addr = app().await;
        for proto in [Proto::H1, Proto::H2] {
            for size in [0, 1_000_003, 64 << 20] {
                let r = upload_sha(dial(addr).await, proto, size).await.unwrap();
                assert_eq!(r.status, 200);
                let r = download(dial(addr).await, proto, size).await.unwrap();
                assert_eq!(r.header("content-length"), Some(size.to_string().as_str()));
            }
        }
    }

    /// Garbage ends that connection only; the app keeps serving.
    #[tokio::test]
    async fn survives_garbage() {
        let addr = app().await;
        let mut s = dial(addr).await;
        s.write_all(b"\x00\x01 nonsense\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        let _ = timeout(STEP, s.read_to_end(&mut rest)).await.unwrap();
        let r = h1(dial(addr).await, Req::get("/")).await.unwrap();
        assert_eq!(r.status, 200);
    }

    /// Errors come back as context, not hangs or panics.
    #[tokio::test]
    async fn closed_peer_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                drop(s);
            }
        });
        assert!(h1(dial(addr).await, Req::get("/")).await.is_err());
        assert!(http10(dial(addr).await, "/").await.is_err());
        assert!(expect_continue(dial(addr).await, vec![1]).await.is_err());
    }
}
