//! A client that talks to a proxy's inbound port directly, as another proxy
//! would: mTLS with a given certificate, then Linkerd's transport header.

use std::path::Path;
use std::sync::Arc;

/// TLS 1.3 with `cert`/`key` as the client certificate, the server checked
/// against `roots`, ALPN transport.l5d.io/v1.
pub fn connector(cert: &Path, key: &Path, roots: &[&Path]) -> tokio_rustls::TlsConnector {
    let certs = pki::load_certs(cert).unwrap();
    let key = std::fs::read(key).unwrap();
    let key =
        <rustls::pki_types::PrivateKeyDer as rustls::pki_types::pem::PemObject>::from_pem_slice(
            &key,
        )
        .unwrap();
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        for c in pki::load_certs(r).unwrap() {
            store.add(c).unwrap();
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(store)
    .with_client_auth_cert(certs, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"transport.l5d.io/v1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// The transport header naming `port` (protobuf field 1, varint).
pub fn transport_header(port: u64) -> Vec<u8> {
    let mut body = vec![0x08];
    let mut v = port;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            body.push(b);
            break;
        }
        body.push(b | 0x80);
    }
    let mut out = b"transport.l5d.io/v1\r\n\r\n".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}
