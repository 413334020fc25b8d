//! A raw client of a control plane's operator listener: one HTTP/1.1
//! request over TLS 1.3, so tests see the status and body the listener
//! gives (or the TLS error that ended it), headers and all as sent.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// `request` to `addr`, verifying the control plane as `server_name`
/// against the anchors in `ca`, presenting `client` (certificate and key
/// files) if given: (status, body), or the TLS error that ended it.
pub fn tls_request(
    ca: &Path,
    server_name: &str,
    addr: SocketAddr,
    client: Option<(&Path, &Path)>,
    request: &str,
) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    for a in pki::load_certs(ca).map_err(|e| e.to_string())? {
        roots.add(a).map_err(|e| e.to_string())?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(pki::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let chain = pki::load_certs(cert).map_err(|e| e.to_string())?;
            let key = pki::load_key(key).map_err(|e| e.to_string())?;
            let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    match tls.read_to_end(&mut buf) {
        Ok(_) => {}
        Err(e) if !buf.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e.to_string()),
    }
    let buf = String::from_utf8_lossy(&buf).into_owned();
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    Ok((status, body.unwrap_or_default()))
}
