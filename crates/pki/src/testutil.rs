//! Certificate and CSR fixtures for tests (the `testutil` feature).
// Test support: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

pub struct Ca {
    pub params: CertificateParams,
    pub key: KeyPair,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }
}

/// The identity most tests name: web in demo.
pub fn web_id() -> crate::Identity {
    "web.demo.serviceaccount.identity.weft.cluster.local"
        .parse()
        .unwrap()
}

/// A DER PKCS#10 CSR signed by `key`, with the CN and SANs given (as a
/// linkerd2-proxy sends one, or deliberately not).
pub fn csr_der(key: &KeyPair, cn: Option<&str>, sans: Vec<SanType>) -> Vec<u8> {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = cn {
        p.distinguished_name.push(DnType::CommonName, cn);
    }
    p.subject_alt_names = sans;
    p.serialize_request(key).unwrap().der().to_vec()
}

pub fn dns(name: &str) -> SanType {
    SanType::DnsName(name.to_string().try_into().unwrap())
}

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub fn ca_params(cn: &str, path_len: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.remove(DnType::CommonName);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = now() - time::Duration::days(1);
    p.not_after = now() + time::Duration::days(365);
    p
}

pub fn root(cn: &str) -> Ca {
    root_from(ca_params(cn, Some(1)))
}

pub fn root_from(params: CertificateParams) -> Ca {
    let key = KeyPair::generate().unwrap();
    let der = params.self_signed(&key).unwrap().der().clone();
    Ca { params, key, der }
}

pub fn sub_ca(cn: &str, parent: &Ca, params: Option<CertificateParams>) -> Ca {
    let params = params.unwrap_or_else(|| ca_params(cn, Some(0)));
    let key = KeyPair::generate().unwrap();
    let der = params
        .signed_by(&key, &parent.issuer())
        .unwrap()
        .der()
        .clone();
    Ca { params, key, der }
}

pub fn leaf_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
    p.distinguished_name.remove(DnType::CommonName);
    p.distinguished_name.push(DnType::CommonName, name);
    p.subject_alt_names = vec![SanType::DnsName(name.try_into().unwrap())];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = now() - time::Duration::hours(1);
    p.not_after = now() + time::Duration::hours(24);
    p
}

pub fn leaf(params: CertificateParams, parent: &Ca) -> CertificateDer<'static> {
    let key = KeyPair::generate().unwrap();
    params
        .signed_by(&key, &parent.issuer())
        .unwrap()
        .der()
        .clone()
}
