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
