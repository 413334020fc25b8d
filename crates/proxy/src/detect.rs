//! What an inbound connection starts with, judged by peeking (nothing is
//! consumed, so a connection that is not ours passes through untouched).

use std::time::Duration;

use tokio::net::TcpStream;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// A TLS ClientHello, with its SNI.
    Tls { sni: Option<String> },
    /// Something else (plaintext, or bytes that do not parse as TLS).
    Other,
    /// Nothing within the detection timeout (e.g. a server that speaks first).
    Silent,
    /// The start of a TLS ClientHello that never completed in time.
    Incomplete,
    /// The peer closed before sending anything.
    Closed,
}

const MAX_HELLO: usize = 16 * 1024;

/// The application protocol on a (decrypted) stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Opaque,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Self::Http1 => "http/1",
            Self::Http2 => "h2",
            Self::Opaque => "opaque",
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Classifies the first bytes of a stream; None: not enough yet.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (buf.len() >= H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    // HTTP/1: METHOD SP target SP HTTP/1.x CRLF, within the first line.
    let line_end = buf.windows(2).position(|w| w == b"\r\n");
    let method_ok = |line: &[u8]| {
        let text = String::from_utf8_lossy(line);
        let mut parts = text.split(' ');
        let m = parts.next().unwrap_or("");
        METHODS.contains(&m)
            && parts.next().is_some_and(|t| !t.is_empty())
            && parts.next().is_some_and(|v| v.starts_with("HTTP/1."))
    };
    match line_end {
        Some(end) => Some(if method_ok(&buf[..end]) {
            Protocol::Http1
        } else {
            Protocol::Opaque
        }),
        None if buf.len() >= 8192 => Some(Protocol::Opaque),
        // A prefix of a method name may still become HTTP/1.
        None => {
            let first = buf.split(|b| *b == b' ').next().unwrap_or(buf);
            let could = METHODS
                .iter()
                .any(|m| m.as_bytes().starts_with(first) || first == m.as_bytes());
            if could { None } else { Some(Protocol::Opaque) }
        }
    }
}

/// Reads from `r` until the protocol is known or `timeout` passes (opaque);
/// returns the bytes read, to be replayed.
pub async fn detect_protocol<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    timeout: Duration,
) -> (Protocol, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return (Protocol::Opaque, buf),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(p) = classify(&buf) {
            return (p, buf);
        }
    }
}

/// The largest request head read before a connection is served per request.
pub const MAX_HEAD: usize = 16 * 1024;

/// Reads on into `buf` until it holds a whole HTTP/1 request head (its
/// blank line), at most `MAX_HEAD` bytes, within `timeout`; whether it does.
pub async fn read_head<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> bool {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut chunk = [0u8; 4096];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return true;
        }
        if buf.len() >= MAX_HEAD {
            return false;
        }
        match tokio::time::timeout_at(deadline, r.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    }
}

/// What the first bytes of a stream whose transport header declared a
/// session protocol turned out to be, when they are not that protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// Bytes of another protocol (or not HTTP at all).
    Other(Protocol),
    /// Nothing conclusive within the timeout, or the stream ended.
    Nothing,
}

/// Checks that a stream declared as `declared` (by the client proxy, which
/// detected it on its side) starts as that protocol: no fallback to opaque,
/// so bytes that lie about being HTTP are refused rather than forwarded
/// under a weaker verdict. Returns the bytes read, to be replayed.
pub async fn confirm<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    declared: Protocol,
    timeout: Duration,
) -> Result<Vec<u8>, Mismatch> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Err(Mismatch::Nothing),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        match classify(&buf) {
            Some(p) if p == declared => return Ok(buf),
            Some(p) => return Err(Mismatch::Other(p)),
            None => {}
        }
    }
}

/// Judges the first bytes of a peeked buffer. `None`: need more bytes.
pub fn judge(buf: &[u8]) -> Option<Start> {
    if buf.is_empty() {
        return None;
    }
    if buf[0] != 0x16 {
        return Some(Start::Other);
    }
    let mut acceptor = rustls::server::Acceptor::default();
    // rustls takes at most a few KB per call: feed all of it.
    let mut rd = buf;
    while !rd.is_empty() {
        match acceptor.read_tls(&mut rd) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Some(Start::Other),
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Some(Start::Tls {
            sni: accepted.client_hello().server_name().map(str::to_string),
        }),
        Ok(None) if buf.len() < MAX_HELLO => None,
        _ => Some(Start::Other),
    }
}

pub async fn peek_start(sock: &TcpStream, timeout: Duration) -> Start {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_HELLO];
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.peek(&mut buf)).await {
            Err(_) => return Start::Silent,
            Ok(Err(_)) | Ok(Ok(0)) => return Start::Closed,
            Ok(Ok(n)) => n,
        };
        if let Some(s) = judge(&buf[..n]) {
            return s;
        }
        // A ClientHello split over segments: wait briefly for the rest.
        if tokio::time::Instant::now() >= deadline {
            return Start::Incomplete;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_protocols() {
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b"POST /a HTTP/1.0\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET / HTT"), None);
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Protocol::Http2)
        );
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(b"\x00\x01binary"), Some(Protocol::Opaque));
        assert_eq!(
            classify(b"GET nothing-like-http\r\n"),
            Some(Protocol::Opaque)
        );
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Protocol::Opaque));
    }

    #[tokio::test]
    async fn confirms_only_the_declared_protocol() {
        let t = Duration::from_secs(5);
        let mut r: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let got = confirm(&mut r, Protocol::Http1, t).await.unwrap();
        assert!(got.starts_with(b"GET / HTTP/1.1"));
        let mut r: &[u8] = b"\x00\x01binary\r\n";
        assert_eq!(
            confirm(&mut r, Protocol::Http1, t).await,
            Err(Mismatch::Other(Protocol::Opaque))
        );
        let mut r: &[u8] = b"GET / HTTP/1.1\r\n";
        assert_eq!(
            confirm(&mut r, Protocol::Http2, t).await,
            Err(Mismatch::Other(Protocol::Http1))
        );
        // Ends before anything conclusive: refused, never opaque.
        let mut r: &[u8] = b"GE";
        assert_eq!(
            confirm(&mut r, Protocol::Http1, t).await,
            Err(Mismatch::Nothing)
        );
    }

    #[test]
    fn judges_first_bytes() {
        assert_eq!(judge(b"GET / HTTP/1.1\r\n"), Some(Start::Other));
        assert_eq!(judge(b""), None);
        // A TLS record header alone: need more.
        assert_eq!(judge(&[0x16, 0x03, 0x01, 0x02, 0x00]), None);
        // Garbage after a handshake byte.
        assert_eq!(
            judge(&[0x16, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Some(Start::Other)
        );
    }

    #[tokio::test]
    async fn sees_sni_of_a_real_client_hello() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let roots = rustls::RootCertStore::empty();
            let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let c = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(
                "web.demo.serviceaccount.identity.weft.cluster.local",
            )
            .unwrap();
            let _ = c.connect(name, tcp).await;
        });
        let (sock, _) = l.accept().await.unwrap();
        let s = peek_start(&sock, Duration::from_secs(5)).await;
        assert_eq!(
            s,
            Start::Tls {
                sni: Some("web.demo.serviceaccount.identity.weft.cluster.local".into())
            }
        );
        let (sock2, _) = {
            tokio::spawn(async move {
                let _keep = TcpStream::connect(addr).await.unwrap();
                tokio::time::sleep(Duration::from_secs(2)).await;
            });
            l.accept().await.unwrap()
        };
        assert_eq!(
            peek_start(&sock2, Duration::from_millis(100)).await,
            Start::Silent
        );
    }
}
