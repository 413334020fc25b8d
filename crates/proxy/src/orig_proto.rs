//! HTTP/1 carried between proxies as HTTP/2 (Linkerd's `l5d-orig-proto`):
//! the client proxy upgrades each HTTP/1 request so many application
//! connections share one multiplexed mTLS connection to the peer proxy, and
//! the peer's inbound downgrades it back, so the application reads the
//! HTTP/1 it was sent. Pure conversions; the proxies only move the messages.

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::Authority;
use hyper::{Method, Request, Response, Uri, Version};

/// Names the HTTP/1 version a request was upgraded from.
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("l5d-orig-proto");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrigProtoError {
    #[error("l5d-orig-proto is {0:?}; expected HTTP/1.1 or HTTP/1.0")]
    UnknownVersion(String),
    #[error("the request is {0:?}, not HTTP/1; only HTTP/1 is carried as HTTP/2")]
    NotHttp1(Version),
    #[error("no authority: the request has no Host header and the target {0:?} is not one")]
    NoAuthority(String),
    #[error("cannot rebuild the request's URI: {0}")]
    Uri(String),
}

/// Whether an HTTP/1 request changes its connection (an upgrade, CONNECT):
/// such a request needs a connection of its own to the peer, never a
/// pooled stream.
pub fn needs_own_connection<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT || req.headers().contains_key(header::UPGRADE)
}

/// Whether an application connection whose first request head is `head`
/// is better forwarded as bytes to a connection of its own (as for an
/// opaque port, the peer's inbound still judging each request): an upgrade
/// or CONNECT, or `Expect: 100-continue`, whose answer must come from the
/// peer's policy before the body is sent (a pooled request's body is read
/// as soon as it is sent on).
pub fn head_wants_own_connection(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let connect = lines.next().is_some_and(|l| l.starts_with("CONNECT "));
    connect
        || lines.take_while(|l| !l.is_empty()).any(|l| {
            let Some((name, value)) = l.split_once(':') else {
                return false;
            };
            let name = name.trim();
            name.eq_ignore_ascii_case("upgrade")
                || (name.eq_ignore_ascii_case("expect")
                    && value.trim().eq_ignore_ascii_case("100-continue"))
        })
}

/// Removes what belongs to one HTTP/1 connection (RFC 9110 7.6.1): the
/// headers `Connection` names, and the hop-by-hop headers HTTP/2 forbids.
/// `TE: trailers` stays on requests (gRPC needs it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, request: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(n);
    }
    let te_trailers = headers.get(header::TE).is_some_and(|v| v == "trailers");
    if !(request && te_trailers) {
        headers.remove(header::TE);
    }
}

/// An authority for a target: itself when it is one (`10.0.0.1:80`,
/// `web.demo.svc:80`), `name.namespace:port` for a ports-mode `namespace/name:port`.
fn authority_of(target: &str) -> String {
    if target.parse::<Authority>().is_ok() {
        return target.to_string();
    }
    match target.split_once('/') {
        Some((ns, name_port)) => match name_port.rsplit_once(':') {
            Some((name, port)) => format!("{name}.{ns}:{port}"),
            None => format!("{name_port}.{ns}"),
        },
        None => target.to_string(),
    }
}

/// Client side: an HTTP/1 request from the application becomes an HTTP/2
/// request with an absolute URI (authority from `Host`, else `target`) and
/// `l5d-orig-proto` naming its version.
pub fn upgrade<B>(req: &mut Request<B>, target: &str) -> Result<(), OrigProtoError> {
    let orig = match req.version() {
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_10 => "HTTP/1.0",
        v => return Err(OrigProtoError::NotHttp1(v)),
    };
    if req.uri().authority().is_none() {
        let authority = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| h.parse::<Authority>().is_ok())
            .map_or_else(|| authority_of(target), str::to_string);
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", hyper::http::uri::PathAndQuery::as_str);
        *req.uri_mut() = Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(pq)
            .build()
            .map_err(|_| OrigProtoError::NoAuthority(target.to_string()))?;
    }
    strip_hop_by_hop(req.headers_mut(), true);
    req.headers_mut()
        .insert(ORIG_PROTO, HeaderValue::from_static(orig));
    *req.version_mut() = Version::HTTP_2;
    Ok(())
}

/// Server side: an HTTP/2 request a client proxy upgraded is given back its
/// HTTP/1 version, an origin-form URI and a `Host` header. `Ok(None)`: the
/// request was HTTP/2 from the start.
pub fn downgrade<B>(req: &mut Request<B>) -> Result<Option<Version>, OrigProtoError> {
    let Some(value) = req.headers_mut().remove(ORIG_PROTO) else {
        return Ok(None);
    };
    // Linkerd may add parameters after the version ("HTTP/1.1; absolute-form").
    let text = value.to_str().unwrap_or("");
    let version = match text.split(';').next().map(str::trim) {
        Some("HTTP/1.1") => Version::HTTP_11,
        Some("HTTP/1.0") => Version::HTTP_10,
        _ => return Err(OrigProtoError::UnknownVersion(text.to_string())),
    };
    if !req.headers().contains_key(header::HOST)
        && let Some(a) = req.uri().authority()
        && let Ok(host) = HeaderValue::from_str(a.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    if req.method() != Method::CONNECT {
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", hyper::http::uri::PathAndQuery::as_str);
        *req.uri_mut() = pq
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| OrigProtoError::Uri(e.to_string()))?;
    }
    *req.version_mut() = version;
    Ok(Some(version))
}

/// Server side: the application's HTTP/1 response, fit for HTTP/2.
pub fn response_to_h2<B>(resp: &mut Response<B>) {
    strip_hop_by_hop(resp.headers_mut(), false);
    *resp.version_mut() = Version::HTTP_2;
}

/// Client side: the peer's HTTP/2 response, answered in HTTP/1.1 (hyper
/// frames the body: content-length as given, else chunked).
pub fn response_to_h1<B>(resp: &mut Response<B>) {
    resp.headers_mut().remove(ORIG_PROTO);
    *resp.version_mut() = Version::HTTP_11;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h1(uri: &str) -> hyper::http::request::Builder {
        Request::builder().uri(uri).version(Version::HTTP_11)
    }

    #[test]
    fn upgrade_then_downgrade_gives_back_the_request() {
        let mut req = h1("/a/b?x=1")
            .header("host", "backend:8080")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("x-app", "kept")
            .body(())
            .unwrap();
        upgrade(&mut req, "10.0.0.1:8080").unwrap();
        assert_eq!(req.version(), Version::HTTP_2);
        assert_eq!(req.uri().to_string(), "http://backend:8080/a/b?x=1");
        assert_eq!(req.headers()[ORIG_PROTO], "HTTP/1.1");
        for gone in ["connection", "x-hop", "keep-alive"] {
            assert!(!req.headers().contains_key(gone), "{gone} removed");
        }
        assert_eq!(req.headers()["te"], "trailers");

        assert_eq!(downgrade(&mut req).unwrap(), Some(Version::HTTP_11));
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.uri().to_string(), "/a/b?x=1");
        assert_eq!(req.headers()["host"], "backend:8080");
        assert_eq!(req.headers()["x-app"], "kept");
        assert!(!req.headers().contains_key(ORIG_PROTO));
    }

    #[test]
    fn http10_without_host_takes_the_target() {
        let mut req = Request::builder()
            .uri("/")
            .version(Version::HTTP_10)
            .body(())
            .unwrap();
        upgrade(&mut req, "10.0.0.1:8080").unwrap();
        assert_eq!(req.uri().authority().unwrap(), "10.0.0.1:8080");
        assert_eq!(req.headers()[ORIG_PROTO], "HTTP/1.0");
        let mut ports_mode = Request::builder().uri("/").body(()).unwrap();
        upgrade(&mut ports_mode, "demo/backend:8080").unwrap();
        assert_eq!(ports_mode.uri().authority().unwrap(), "backend.demo:8080");
        assert_eq!(downgrade(&mut req).unwrap(), Some(Version::HTTP_10));
        assert_eq!(req.headers()["host"], "10.0.0.1:8080");
    }

    #[test]
    fn a_bad_host_falls_back_to_the_target() {
        let mut req = h1("/").header("host", "a b").body(()).unwrap();
        upgrade(&mut req, "backend:80").unwrap();
        assert_eq!(req.uri().authority().unwrap(), "backend:80");
        // The application still reads the Host it was sent.
        downgrade(&mut req).unwrap();
        assert_eq!(req.headers()["host"], "a b");
    }

    #[test]
    fn plain_http2_is_left_alone_and_unknown_versions_refused() {
        let mut req = Request::builder()
            .uri("http://x/")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        assert_eq!(downgrade(&mut req).unwrap(), None);
        assert_eq!(req.version(), Version::HTTP_2);
        assert!(matches!(
            upgrade(&mut req, "x:80"),
            Err(OrigProtoError::NotHttp1(_))
        ));
        let mut req = Request::builder()
            .uri("http://x/")
            .header("l5d-orig-proto", "HTTP/3")
            .body(())
            .unwrap();
        let e = downgrade(&mut req).unwrap_err();
        assert!(e.to_string().contains("HTTP/3"), "{e}");
        let mut req = Request::builder()
            .uri("http://x/")
            .header("l5d-orig-proto", "HTTP/1.1; absolute-form")
            .body(())
            .unwrap();
        assert_eq!(downgrade(&mut req).unwrap(), Some(Version::HTTP_11));
    }

    #[test]
    fn upgrades_and_connect_keep_their_own_connection() {
        let ws = h1("/chat").header("upgrade", "websocket").body(()).unwrap();
        assert!(needs_own_connection(&ws));
        let c = Request::builder()
            .method("CONNECT")
            .uri("db:5432")
            .body(())
            .unwrap();
        assert!(needs_own_connection(&c));
        assert!(!needs_own_connection(&h1("/").body(()).unwrap()));
    }

    #[test]
    fn first_heads_that_keep_their_own_connection() {
        let own = |h: &str| head_wants_own_connection(h.as_bytes());
        assert!(!own("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(own("CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n"));
        assert!(own("GET /ws HTTP/1.1\r\nUPGRADE: websocket\r\n\r\n"));
        assert!(own("POST /up HTTP/1.1\r\nexpect:  100-Continue \r\n\r\n"));
        assert!(!own("POST /up HTTP/1.1\r\nX-Expect: 100-continue\r\n\r\n"));
        // Only the head counts, not a body that looks like headers.
        assert!(!own("POST / HTTP/1.1\r\nHost: a\r\n\r\nUpgrade: x\r\n"));
    }

    #[test]
    fn responses_lose_hop_by_hop_headers() {
        let mut resp = Response::builder()
            .header("connection", "close")
            .header("transfer-encoding", "chunked")
            .header("te", "trailers")
            .header("content-type", "text/plain")
            .body(())
            .unwrap();
        response_to_h2(&mut resp);
        assert_eq!(resp.headers().len(), 1);
        resp.headers_mut()
            .insert(ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
        response_to_h1(&mut resp);
        assert_eq!(resp.version(), Version::HTTP_11);
        assert!(!resp.headers().contains_key(ORIG_PROTO));
    }
}
