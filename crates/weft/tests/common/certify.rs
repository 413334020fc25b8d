//! A client that behaves like linkerd2-proxy towards the identity service:
//! its own P-256 key, one DER CSR (CN + one DNS SAN) reused for every
//! renewal, and the server verified as the control plane identity.

use std::net::SocketAddr;

use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use linkerd2_proxy_api::identity::{CertifyRequest, CertifyResponse};
use rcgen::KeyPair;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

pub const CP_IDENTITY: &str = "weft-identity.weft.serviceaccount.identity.weft.cluster.local";

pub fn id(sa: &str, ns: &str) -> String {
    format!("{sa}.{ns}.serviceaccount.identity.weft.cluster.local")
}

pub struct FakeProxy {
    pub identity: String,
    pub key: KeyPair,
    pub csr: Vec<u8>,
}

pub use pki::testutil::{csr_der, dns};

impl FakeProxy {
    pub fn new(identity: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let csr = csr_der(&key, Some(identity), vec![dns(identity)]);
        Self {
            identity: identity.to_string(),
            key,
            csr,
        }
    }

    /// A channel to the identity service, optionally presenting a client certificate.
    pub async fn connect(
        addr: SocketAddr,
        anchors_pem: &str,
        client: Option<(String, String)>,
    ) -> Result<IdentityClient<tonic::transport::Channel>, tonic::Status> {
        channel(addr, anchors_pem, client)
            .await
            .map(IdentityClient::new)
    }

    pub fn request(&self, token: &str) -> CertifyRequest {
        CertifyRequest {
            identity: self.identity.clone(),
            token: token.as_bytes().to_vec(),
            certificate_signing_request: self.csr.clone(),
        }
    }

    /// One Certify over a new connection.
    pub async fn certify(
        &self,
        addr: SocketAddr,
        anchors_pem: &str,
        token: &str,
        client: Option<(String, String)>,
    ) -> Result<CertifyResponse, tonic::Status> {
        let mut c = Self::connect(addr, anchors_pem, client).await?;
        c.certify(self.request(token)).await.map(|r| r.into_inner())
    }

    /// The PEM pair to present as a client certificate after `resp`.
    pub fn client_pem(&self, resp: &CertifyResponse) -> (String, String) {
        let mut certs = vec![rustls_pem("CERTIFICATE", &resp.leaf_certificate)];
        certs.extend(
            resp.intermediate_certificates
                .iter()
                .map(|c| rustls_pem("CERTIFICATE", c)),
        );
        (certs.concat(), self.key.serialize_pem())
    }
}

/// An HTTP/2 connection to a control-plane listener over TLS, the server
/// verified as the control plane, optionally presenting a client certificate
/// (linkerd2-proxy opens its destination and policy connections before it
/// has one).
pub async fn channel(
    addr: SocketAddr,
    anchors_pem: &str,
    client: Option<(String, String)>,
) -> Result<tonic::transport::Channel, tonic::Status> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(anchors_pem))
        .domain_name(CP_IDENTITY);
    if let Some((cert, key)) = client {
        tls = tls.identity(TlsIdentity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e:?}")))
}

pub fn rustls_pem(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
