//! Reading certificates from files as people have them: PEM (one or many) or DER.

use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::{self, PemObject, SectionKind};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: the file is empty; expected one or more PEM certificates")]
    Empty { path: PathBuf },
    #[error("{path}: holds {found}, not a certificate; pass the certificate (.crt) file")]
    NotACertificate { path: PathBuf, found: &'static str },
    #[error(
        "{path}: no certificate found; expected PEM \"-----BEGIN CERTIFICATE-----\" blocks or DER"
    )]
    NoCertificate { path: PathBuf },
    #[error("{path}: broken PEM ({detail}); the file may be truncated; re-copy or re-create it")]
    BadPem { path: PathBuf, detail: String },
    #[error("{path}: certificate #{index} cannot be parsed as X.509 ({source}); re-create it")]
    BadDer {
        path: PathBuf,
        index: usize,
        #[source]
        source: DerError,
    },
}

/// Why bytes are not exactly one DER X.509 certificate (or CSR).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DerError {
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("{0}")]
    Parse(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
}

// The parser's errors are plain data (no floats), so equality is total.
impl Eq for DerError {}

/// Parses DER into an X.509 view, refusing trailing bytes.
pub fn parse_x509<'a>(der: &'a [u8]) -> Result<X509Certificate<'a>, DerError> {
    match X509Certificate::from_der(der) {
        Ok((rest, _)) if !rest.is_empty() => Err(DerError::Trailing(rest.len())),
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(DerError::Parse(e)),
    }
}

/// SHA-256 of the DER encoding, lower-case hex: how weft names a certificate.
pub fn fingerprint(der: &[u8]) -> String {
    sha256_hex(der)
}

/// SHA-256 of any bytes, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

/// SHA-256 of the SubjectPublicKeyInfo: names a key across re-issued certificates.
pub fn spki_hash(der: &[u8]) -> Result<String, DerError> {
    Ok(sha256_hex(parse_x509(der)?.public_key().raw))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads every certificate in `path`. Each is checked to parse as X.509, so
/// callers can rely on `parse_x509` succeeding later.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_certs(path, &bytes)
}

/// Like [`load_certs`] but from bytes already read; `path` only names them.
pub fn parse_certs(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let p = || path.to_path_buf();
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(CertError::Empty { path: p() });
    }
    let certs = if bytes.starts_with(&[0x30]) {
        vec![CertificateDer::from(bytes.to_vec())]
    } else {
        let mut certs = Vec::new();
        let mut other = None;
        for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
            match item {
                Ok((SectionKind::Certificate, der)) => certs.push(CertificateDer::from(der)),
                Ok((kind, _)) => other = other.or(Some(describe_section(kind))),
                Err(e) => {
                    return Err(CertError::BadPem {
                        path: p(),
                        detail: pem_detail(&e),
                    });
                }
            }
        }
        if certs.is_empty() {
            return Err(match other {
                Some(found) => CertError::NotACertificate { path: p(), found },
                None => CertError::NoCertificate { path: p() },
            });
        }
        certs
    };
    for (i, der) in certs.iter().enumerate() {
        parse_x509(der).map_err(|source| CertError::BadDer {
            path: p(),
            index: i + 1,
            source,
        })?;
    }
    Ok(certs)
}

pub(crate) fn describe_section(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
            "a private key"
        }
        SectionKind::PublicKey => "a public key",
        SectionKind::Csr => "a certificate signing request",
        SectionKind::Crl => "a certificate revocation list",
        SectionKind::EchConfigList => "an ECH config",
        _ => "something else",
    }
}

pub(crate) fn pem_detail(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a BEGIN line has no matching END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed".into(),
        pem::Error::Base64Decode(d) => format!("bad base64: {d}"),
        other => format!("{other:?}"),
    }
}

/// PEM text for a list of certificates, in order.
pub fn to_pem(certs: &[CertificateDer<'_>]) -> String {
    let blocks: Vec<_> = certs
        .iter()
        .map(|c| ::pem::Pem::new("CERTIFICATE", c.as_ref()))
        .collect();
    ::pem::encode_many_config(&blocks, pem_config())
}

pub(crate) fn pem_config() -> ::pem::EncodeConfig {
    ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_certificates() {
        let p = Path::new("x.crt");
        assert!(matches!(
            parse_certs(p, b"  \n"),
            Err(CertError::Empty { .. })
        ));
        assert!(matches!(
            parse_certs(p, b"hello world"),
            Err(CertError::NoCertificate { .. })
        ));
        assert!(matches!(
            parse_certs(p, b"-----BEGIN CERTIFICATE-----\nMIIB\n"),
            Err(CertError::BadPem { .. })
        ));
        assert!(matches!(
            parse_certs(
                p,
                b"-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n"
            ),
            Err(CertError::BadDer { .. })
        ));
        assert!(matches!(
            parse_certs(
                p,
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            ),
            Err(CertError::NotACertificate {
                found: "a private key",
                ..
            })
        ));
    }
}
