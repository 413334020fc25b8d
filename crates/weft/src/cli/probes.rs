//! The control plane's probe-only listener: `/live`, `/ready` and
//! `/metrics` and nothing else, for kubelet on the pod IP, while the admin
//! listener (with `/fleet` and `POST /renew-now`) stays on loopback. Each
//! allowed GET is answered by the admin listener itself, so probes see
//! exactly what operators see.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The only paths served here.
pub const PATHS: &[&str] = &["/live", "/ready", "/metrics"];
/// Probe connections at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 32;
/// A request (or the admin's answer) slower than this is dropped.
const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST: usize = 4096;

/// Where to reach the admin listener from this process.
fn admin_target(admin: SocketAddr) -> SocketAddr {
    if admin.ip().is_unspecified() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, admin.port()))
    } else {
        admin
    }
}

/// The request line's method and path (query dropped), once the headers are in.
fn request(buf: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(buf).ok()?;
    let line = text.lines().next()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.split('?').next()?.to_string();
    Some((method, path))
}

fn reply(code: &str, body: &str) -> String {
    format!(
        "HTTP/1.0 {code}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn handle(mut client: TcpStream, admin: SocketAddr) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(TIMEOUT, client.read(&mut chunk)).await??;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let answer = match request(&buf) {
        Some((m, p)) if m == "GET" && PATHS.contains(&p.as_str()) => {
            let mut upstream = tokio::time::timeout(TIMEOUT, TcpStream::connect(admin)).await??;
            upstream
                .write_all(format!("GET {p} HTTP/1.0\r\nHost: {admin}\r\n\r\n").as_bytes())
                .await?;
            let mut resp = Vec::new();
            tokio::time::timeout(TIMEOUT, upstream.read_to_end(&mut resp)).await??;
            resp
        }
        Some((m, _)) if m != "GET" => reply("405 Method Not Allowed", "GET only\n").into_bytes(),
        _ => reply(
            "404 Not Found",
            "the probe listener serves /live, /ready and /metrics only; operator endpoints are on the admin address\n",
        )
        .into_bytes(),
    };
    client.write_all(&answer).await?;
    client.shutdown().await
}

/// Serves probes on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, admin: SocketAddr) {
    let admin = admin_target(admin);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(conn);
            continue;
        };
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = handle(conn, admin).await {
                tracing::debug!("probe connection: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_line_gives_method_and_path_without_query() {
        assert_eq!(
            request(b"GET /ready?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(("GET".into(), "/ready".into()))
        );
        assert_eq!(request(b"\xff\xfe"), None);
        assert_eq!(
            admin_target("0.0.0.0:9990".parse().unwrap()),
            "127.0.0.1:9990".parse().unwrap()
        );
    }
}
