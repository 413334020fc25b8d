//! gRPC watch streams as a proxy holds them, from the test process.

use std::net::SocketAddr;
use std::time::Duration;

use super::Scratch;

/// The control plane's identity, as its TLS server name.
pub const CP_NAME: &str = "weft-identity.weft.serviceaccount.identity.weft.cluster.local";

/// A destination Get for backend's port over mTLS with the client
/// certificate in files `crt` and `key`: the stream, or the refusal.
pub async fn get_backend(
    s: &Scratch,
    da: SocketAddr,
    crt: &str,
    key: &str,
) -> Result<tonic::Streaming<linkerd2_proxy_api::destination::Update>, tonic::Status> {
    use linkerd2_proxy_api::destination::GetDestination;
    use linkerd2_proxy_api::destination::destination_client::DestinationClient;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(s.read("ca.crt")))
        .domain_name(CP_NAME)
        .identity(Identity::from_pem(s.read(crt), s.read(key)));
    let channel = Endpoint::from_shared(format!("https://{da}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = DestinationClient::new(channel);
    c.get(GetDestination {
        path: "demo/backend:7000".into(),
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

/// A destination Get for backend's port, with backend's certificate, after
/// its first update.
pub async fn watch_backend(
    s: &Scratch,
    da: SocketAddr,
) -> tonic::Streaming<linkerd2_proxy_api::destination::Update> {
    let mut stream = get_backend(s, da, "backend.crt", "backend.key")
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(30), stream.message()).await;
    assert!(matches!(first, Ok(Ok(Some(_)))), "{first:?}");
    stream
}
