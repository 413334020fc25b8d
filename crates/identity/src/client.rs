//! A Certify client: fresh key, CSR, call over TLS verifying the control
//! plane's identity, and a check of what came back before anyone uses it.

use std::time::Duration;

use linkerd2_proxy_api::identity::CertifyRequest;
use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use pki::{CertificateDer, Identity, KeyPair, Purpose};
use time::OffsetDateTime;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the identity service at {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("the identity service refused: {code:?}: {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("the identity service returned a certificate weft will not use: {0}")]
    BadResponse(String),
    #[error("cannot build the request: {0}")]
    Local(String),
}

/// Where and how to reach the identity service.
#[derive(Debug, Clone)]
pub struct CertifyClient {
    /// `host:port`
    pub addr: String,
    /// The control plane's identity, verified in its certificate (and sent as SNI).
    pub server_name: String,
    /// PEM anchors the control plane's chain must verify against.
    pub anchors_pem: String,
    pub timeout: Duration,
}

/// A certificate as obtained, checked, with its new key.
pub struct Certified {
    pub key: KeyPair,
    pub leaf: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub not_after: OffsetDateTime,
    pub serial: String,
}

/// The proof sent: a join token, the current certificate (mTLS), or both.
pub struct Credentials<'a> {
    pub token: Option<&'a [u8]>,
    /// The current leaf (+ chain) and its key, PEM.
    pub current: Option<(String, String)>,
}

impl CertifyClient {
    pub async fn certify(
        &self,
        identity: &Identity,
        creds: Credentials<'_>,
    ) -> Result<Certified, ClientError> {
        let key = KeyPair::generate().map_err(|e| ClientError::Local(e.to_string()))?;
        let name = identity.to_string();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name.clone());
        params.subject_alt_names =
            vec![rcgen::SanType::DnsName(name.clone().try_into().map_err(
                |e: rcgen::Error| ClientError::Local(e.to_string()),
            )?)];
        let csr = params
            .serialize_request(&key)
            .map_err(|e| ClientError::Local(e.to_string()))?
            .der()
            .to_vec();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.anchors_pem))
            .domain_name(self.server_name.clone());
        if let Some((cert, key)) = &creds.current {
            tls = tls.identity(TlsIdentity::from_pem(cert, key));
        }
        let connect_err = |detail: String| ClientError::Connect {
            addr: self.addr.clone(),
            detail,
        };
        let channel = Endpoint::from_shared(format!("https://{}", self.addr))
            .map_err(|e| connect_err(e.to_string()))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .tls_config(tls)
            .map_err(|e| connect_err(e.to_string()))?
            .connect()
            .await;
        let channel = match channel {
            Ok(c) => c,
            Err(e) => {
                let mut detail = describe(&e);
                // A chain we cannot verify: name the anchor it needs.
                if (detail.contains("UnknownIssuer") || detail.contains("invalid peer certificate"))
                    && let Some(chain) =
                        crate::probe::server_chain(&self.addr, &self.server_name).await
                {
                    let anchors = pki::parse_certs(
                        std::path::Path::new("anchors"),
                        self.anchors_pem.as_bytes(),
                    )
                    .unwrap_or_default();
                    detail = format!("{detail}; {}", crate::probe::explain(&chain, &anchors));
                }
                return Err(connect_err(detail));
            }
        };
        let resp = IdentityClient::new(channel)
            .certify(CertifyRequest {
                identity: name,
                token: creds.token.unwrap_or_default().to_vec(),
                certificate_signing_request: csr,
            })
            .await
            .map_err(|s| ClientError::Refused {
                code: s.code(),
                message: s.message().to_string(),
            })?
            .into_inner();
        let leaf = CertificateDer::from(resp.leaf_certificate);
        let chain: Vec<CertificateDer<'static>> = resp
            .intermediate_certificates
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let anchors =
            pki::parse_certs(std::path::Path::new("anchors"), self.anchors_pem.as_bytes())
                .map_err(|e| ClientError::Local(e.to_string()))?;
        let (serial, not_after) = check_response(
            &leaf,
            &chain,
            &anchors,
            identity,
            &key,
            OffsetDateTime::now_utc(),
        )?;
        Ok(Certified {
            key,
            leaf,
            chain,
            not_after,
            serial,
        })
    }
}

/// Judges a Certify response: it must chain to our anchors now, name exactly
/// our identity first, and carry our new public key. Returns (serial, NotAfter).
pub fn check_response(
    leaf: &CertificateDer<'_>,
    chain: &[CertificateDer<'_>],
    anchors: &[CertificateDer<'_>],
    identity: &Identity,
    key: &KeyPair,
    now: OffsetDateTime,
) -> Result<(String, OffsetDateTime), ClientError> {
    pki::verify(leaf, chain, anchors, now, Purpose::Leaf)
        .map_err(|e| ClientError::BadResponse(e.to_string()))?;
    let info = pki::info::CertInfo::from_der(leaf).map_err(ClientError::BadResponse)?;
    let got = pki::peer_identity_in(leaf, identity.control_plane_ns())
        .map_err(|e| ClientError::BadResponse(e.to_string()))?;
    if got != *identity {
        return Err(ClientError::BadResponse(format!(
            "it names {got}, expected {identity}"
        )));
    }
    if !pki::key::key_matches_cert(key, leaf) {
        return Err(ClientError::BadResponse(
            "it does not carry the public key we sent".into(),
        ));
    }
    Ok((info.serial, info.not_after))
}

fn describe(e: &tonic::transport::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use pki::create::{KeySpec, NewCert, Profile, Signer, create, issue_workload_leaf};

    fn ca(subject: &str, signer: Option<&Signer>, days: (i64, i64)) -> Signer {
        let now = OffsetDateTime::now_utc();
        let c = create(
            &NewCert {
                subject: subject.into(),
                profile: if signer.is_some() {
                    Profile::IntermediateCa
                } else {
                    Profile::RootCa
                },
                sans: vec![],
                not_before: now + time::Duration::days(days.0),
                not_after: now + time::Duration::days(days.1),
                key: KeySpec::EcdsaP256,
            },
            signer,
        )
        .unwrap();
        Signer::new(c.cert, c.key, "c", "k").unwrap()
    }

    fn id(sa: &str) -> Identity {
        format!("{sa}.demo.serviceaccount.identity.weft.cluster.local")
            .parse()
            .unwrap()
    }

    #[test]
    fn judges_what_the_control_plane_sent() {
        let now = OffsetDateTime::now_utc();
        let root = ca("root", None, (-1, 3650));
        let issuer = ca("issuer", Some(&root), (-1, 365));
        let key = KeyPair::generate().unwrap();
        let day = std::time::Duration::from_secs(86400);
        let skew = std::time::Duration::from_secs(20);
        let anchors = [root.cert.clone()];
        let chain = [issuer.cert.clone()];
        let good = issue_workload_leaf(&issuer, issuer.not_after, &key, &id("web"), now, day, skew)
            .unwrap();
        check_response(&good.der, &chain, &anchors, &id("web"), &key, now).unwrap();

        // Another identity.
        let other = issue_workload_leaf(&issuer, issuer.not_after, &key, &id("db"), now, day, skew)
            .unwrap();
        let e = check_response(&other.der, &chain, &anchors, &id("web"), &key, now).unwrap_err();
        assert!(e.to_string().contains("expected web."), "{e}");
        // Not our key.
        let theirs = KeyPair::generate().unwrap();
        let e = check_response(&good.der, &chain, &anchors, &id("web"), &theirs, now).unwrap_err();
        assert!(e.to_string().contains("public key"), "{e}");
        // Chained to a foreign anchor.
        let foreign_root = ca("root", None, (-1, 3650));
        let foreign = ca("issuer", Some(&foreign_root), (-1, 365));
        let f = issue_workload_leaf(
            &foreign,
            foreign.not_after,
            &key,
            &id("web"),
            now,
            day,
            skew,
        )
        .unwrap();
        let e = check_response(
            &f.der,
            std::slice::from_ref(&foreign.cert),
            &anchors,
            &id("web"),
            &key,
            now,
        )
        .unwrap_err();
        assert!(matches!(e, ClientError::BadResponse(_)), "{e}");
        // Already expired.
        let e = check_response(
            &good.der,
            &chain,
            &anchors,
            &id("web"),
            &key,
            now + time::Duration::days(2),
        )
        .unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
    }
}
