//! Private keys: reading the forms people have, describing public keys.

use std::path::{Path, PathBuf};

use rcgen::{KeyPair, PublicKeyData};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::{PemObject, SectionKind};
use x509_parser::x509::SubjectPublicKeyInfo;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: key is encrypted; decrypt it with `openssl pkey -in {path} -out key.pem` (or `step crypto change-pass --no-password --insecure`) and pass the decrypted file"
    )]
    Encrypted { path: PathBuf },
    #[error("{path}: holds {found}, not a private key; pass the key (.key) file")]
    NotAKey { path: PathBuf, found: &'static str },
    #[error(
        "{path}: no private key found; expected PEM \"PRIVATE KEY\" (PKCS#8), \"EC PRIVATE KEY\" (SEC1) or \"RSA PRIVATE KEY\" (PKCS#1)"
    )]
    NoKey { path: PathBuf },
    #[error("{path}: broken PEM ({detail}); the file may be truncated; re-copy or re-create it")]
    BadPem { path: PathBuf, detail: String },
    #[error(
        "{path}: the private key cannot be used ({detail}); weft reads ECDSA P-256/P-384 and RSA keys"
    )]
    Unusable { path: PathBuf, detail: String },
}

/// Reads a private key from PKCS#8, SEC1 or PKCS#1, PEM or DER.
pub fn load_key(path: &Path) -> Result<KeyPair, KeyError> {
    let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_key(path, &bytes)
}

/// Like [`load_key`] from bytes already read; `path` only names them.
pub fn parse_key(path: &Path, bytes: &[u8]) -> Result<KeyPair, KeyError> {
    let p = || path.to_path_buf();
    let text = String::from_utf8_lossy(bytes);
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || text.contains("Proc-Type: 4,ENCRYPTED")
    {
        return Err(KeyError::Encrypted { path: p() });
    }
    let der = if bytes.starts_with(&[0x30]) {
        PrivateKeyDer::try_from(bytes.to_vec()).map_err(|e| KeyError::Unusable {
            path: p(),
            detail: e.to_string(),
        })?
    } else {
        let mut found = None;
        let mut other = None;
        for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
            match item {
                Ok((SectionKind::PrivateKey, der)) => {
                    found = Some(PrivateKeyDer::Pkcs8(der.into()));
                }
                Ok((SectionKind::EcPrivateKey, der)) => {
                    found = Some(PrivateKeyDer::Sec1(der.into()));
                }
                Ok((SectionKind::RsaPrivateKey, der)) => {
                    found = Some(PrivateKeyDer::Pkcs1(der.into()));
                }
                Ok((kind, _)) => {
                    other = other.or(Some(match kind {
                        SectionKind::Certificate => "a certificate",
                        k => crate::cert::describe_section(k),
                    }));
                }
                Err(e) => {
                    return Err(KeyError::BadPem {
                        path: p(),
                        detail: crate::cert::pem_detail(&e),
                    });
                }
            }
            if found.is_some() {
                break;
            }
        }
        match (found, other) {
            (Some(der), _) => der,
            (None, Some(found)) => return Err(KeyError::NotAKey { path: p(), found }),
            (None, None) => return Err(KeyError::NoKey { path: p() }),
        }
    };
    KeyPair::try_from(&der).map_err(|e| KeyError::Unusable {
        path: p(),
        detail: e.to_string(),
    })
}

/// The public-key algorithm of a certificate, as the checks judge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    EcdsaP521,
    Rsa(usize),
    Ed25519,
    Other(String),
}

impl KeyAlgorithm {
    pub fn of(spki: &SubjectPublicKeyInfo<'_>) -> Self {
        use x509_parser::oid_registry as oids;
        let alg = &spki.algorithm.algorithm;
        if *alg == oids::OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            match curve {
                Some(c) if c == oids::OID_EC_P256 => Self::EcdsaP256,
                Some(c) if c == oids::OID_NIST_EC_P384 => Self::EcdsaP384,
                Some(c) if c == oids::OID_NIST_EC_P521 => Self::EcdsaP521,
                Some(c) => Self::Other(format!("ECDSA curve {c}")),
                None => Self::Other("ECDSA with unnamed curve".into()),
            }
        } else if *alg == oids::OID_PKCS1_RSAENCRYPTION {
            Self::Rsa(spki.parsed().map(|k| k.key_size()).unwrap_or(0))
        } else if *alg == oids::OID_SIG_ED25519 {
            Self::Ed25519
        } else {
            Self::Other(alg.to_id_string())
        }
    }
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EcdsaP256 => f.write_str("ECDSA P-256"),
            Self::EcdsaP384 => f.write_str("ECDSA P-384"),
            Self::EcdsaP521 => f.write_str("ECDSA P-521"),
            Self::Rsa(bits) => write!(f, "RSA {bits}"),
            Self::Ed25519 => f.write_str("Ed25519"),
            Self::Other(s) => f.write_str(s),
        }
    }
}

/// Whether `key` is the private half of the certificate's public key.
pub fn key_matches_cert(key: &KeyPair, cert_der: &[u8]) -> bool {
    crate::cert::parse_x509(cert_der)
        .map(|c| c.public_key().raw == key.subject_public_key_info().as_slice())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pkcs8_sec1_and_pkcs1() {
        let ec = KeyPair::generate().unwrap();
        let pkcs8 = ec.serialize_pem();
        let k = parse_key(Path::new("k"), pkcs8.as_bytes()).unwrap();
        assert_eq!(k.public_key_raw(), ec.public_key_raw());

        // SEC1 from the same key, via aws-lc-rs.
        use aws_lc_rs::encoding::AsDer;
        let sec1 = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &ec.serialize_der(),
        )
        .unwrap()
        .private_key()
        .as_der()
        .unwrap();
        let pem = ::pem::encode(&::pem::Pem::new("EC PRIVATE KEY", sec1.as_ref()));
        let k = parse_key(Path::new("k"), pem.as_bytes()).unwrap();
        assert_eq!(k.public_key_raw(), ec.public_key_raw());

        // PKCS#1 RSA is covered end to end with openssl-made keys.
    }

    #[test]
    fn refuses_encrypted_and_garbage() {
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let err = parse_key(Path::new("ca.key"), enc.as_bytes()).unwrap_err();
        assert!(matches!(err, KeyError::Encrypted { .. }));
        assert!(err.to_string().contains("decrypt it with"));
        let legacy = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(matches!(
            parse_key(Path::new("k"), legacy.as_bytes()),
            Err(KeyError::Encrypted { .. })
        ));
        assert!(matches!(
            parse_key(Path::new("k"), b"garbage"),
            Err(KeyError::NoKey { .. })
        ));
        assert!(matches!(
            parse_key(Path::new("k"), b"-----BEGIN PRIVATE KEY-----\nAAAA\n"),
            Err(KeyError::BadPem { .. })
        ));
        assert!(matches!(
            parse_key(
                Path::new("k"),
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            ),
            Err(KeyError::Unusable { .. })
        ));
    }
}
