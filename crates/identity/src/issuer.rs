//! The issuer in force: anchors, issuer certificate and key, judged together
//! so a pair that cannot vouch for workloads is never put in service.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pki::create::{CreateError, Signer};
use pki::{CertError, CertificateDer, DerError, KeyAlgorithm, KeyError, Purpose, VerifyError};
use time::OffsetDateTime;

/// One of the three files the issuer is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerFile {
    Anchors,
    Certificate,
    Key,
}

impl std::fmt::Display for IssuerFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Anchors => "trust anchors",
            Self::Certificate => "issuer certificate",
            Self::Key => "issuer key",
        })
    }
}

/// Sources are shared (`Arc`) so the refusal can be kept in the watched status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IssuerError {
    #[error("{file}: {}: cannot read: {source}", path.display())]
    Unreadable {
        file: IssuerFile,
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("trust anchors: {0}")]
    Anchors(#[source] Arc<CertError>),
    #[error("issuer certificate: {0}")]
    Certificate(#[source] Arc<CertError>),
    #[error("issuer certificate: {0}")]
    CertificateDer(#[source] DerError),
    #[error("issuer certificate: {0}")]
    Signer(#[source] Arc<CreateError>),
    #[error("issuer key: {0}")]
    Key(#[source] Arc<KeyError>),
    #[error(
        "issuer key {key} does not match issuer certificate {cert} (half-written pair? write the key and certificate together)"
    )]
    KeyMismatch { cert: String, key: String },
    #[error(
        "issuer certificate {0} is not a CA (basicConstraints CA:TRUE missing); create it with --profile intermediate-ca"
    )]
    NotCa(String),
    #[error("issuer certificate uses {0}; the issuer must be ECDSA P-256")]
    KeyType(String),
    #[error("issuer certificate does not verify against the trust anchors: {0}")]
    Untrusted(VerifyError),
}

impl IssuerError {
    /// A short label for `issuer_reloads_total{result}`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unreadable { file, .. } => match file {
                IssuerFile::Anchors => "bad_anchors",
                IssuerFile::Certificate => "bad_certificate",
                IssuerFile::Key => "bad_key",
            },
            Self::Anchors(_) => "bad_anchors",
            Self::Certificate(_) | Self::CertificateDer(_) | Self::Signer(_) => "bad_certificate",
            Self::Key(_) => "bad_key",
            Self::KeyMismatch { .. } => "key_mismatch",
            Self::NotCa(_) => "not_ca",
            Self::KeyType(_) => "bad_key_type",
            Self::Untrusted(VerifyError::Expired { .. }) => "expired",
            Self::Untrusted(VerifyError::NotYetValid { .. }) => "not_yet_valid",
            Self::Untrusted(_) => "untrusted",
        }
    }
}

/// Where the control plane reads its issuer material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerFiles {
    pub anchors: PathBuf,
    pub certificate: PathBuf,
    pub key: PathBuf,
}

/// An issuer that passed judgement and may sign.
pub struct IssuerState {
    pub signer: Signer,
    /// Issuer certificate first, then any intermediates from its file.
    pub chain: Vec<CertificateDer<'static>>,
    pub anchors: Vec<CertificateDer<'static>>,
    /// The earliest NotAfter of the issuer chain and the anchor it chains to.
    pub chain_not_after: OffsetDateTime,
    pub issuer_fingerprint: String,
    pub issuer_not_after: OffsetDateTime,
}

impl std::fmt::Debug for IssuerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerState")
            .field("issuer", &self.issuer_fingerprint)
            .field("chain_not_after", &self.chain_not_after)
            .finish_non_exhaustive()
    }
}

/// The bytes of the three files, read as one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerSnapshot {
    pub anchors: Vec<u8>,
    pub certificate: Vec<u8>,
    pub key: Vec<u8>,
}

impl IssuerSnapshot {
    pub fn read(files: &IssuerFiles) -> Result<Self, IssuerError> {
        let read = |file, path: &Path| {
            std::fs::read(path).map_err(|e| IssuerError::Unreadable {
                file,
                path: path.to_path_buf(),
                source: Arc::new(e),
            })
        };
        Ok(Self {
            anchors: read(IssuerFile::Anchors, &files.anchors)?,
            certificate: read(IssuerFile::Certificate, &files.certificate)?,
            key: read(IssuerFile::Key, &files.key)?,
        })
    }
}

/// Judges a snapshot at `now`: everything must parse, the key must match, the
/// issuer must be an ECDSA P-256 CA that chains to one of the anchors and be
/// valid now. Pure: no I/O, so every refusal is unit-tested.
pub fn judge(
    files: &IssuerFiles,
    snap: &IssuerSnapshot,
    now: OffsetDateTime,
) -> Result<IssuerState, IssuerError> {
    let anchors = pki::parse_certs(&files.anchors, &snap.anchors)
        .map_err(|e| IssuerError::Anchors(Arc::new(e)))?;
    let chain = pki::parse_certs(&files.certificate, &snap.certificate)
        .map_err(|e| IssuerError::Certificate(Arc::new(e)))?;
    let key =
        pki::key::parse_key(&files.key, &snap.key).map_err(|e| IssuerError::Key(Arc::new(e)))?;
    let issuer = &chain[0];
    let x = pki::parse_x509(issuer).map_err(IssuerError::CertificateDer)?;
    let subject = x.subject().to_string();
    let alg = KeyAlgorithm::of(x.public_key());
    if !x.is_ca() {
        return Err(IssuerError::NotCa(subject));
    }
    if alg != KeyAlgorithm::EcdsaP256 {
        return Err(IssuerError::KeyType(alg.to_string()));
    }
    if !pki::key::key_matches_cert(&key, issuer) {
        return Err(IssuerError::KeyMismatch {
            cert: files.certificate.display().to_string(),
            key: files.key.display().to_string(),
        });
    }
    let verified = pki::verify(issuer, &chain[1..], &anchors, now, Purpose::Ca)
        .map_err(IssuerError::Untrusted)?;
    let anchor_fp = verified
        .links
        .last()
        .map(|(_, fp)| fp.clone())
        .unwrap_or_default();
    let anchor: Vec<CertificateDer<'static>> = anchors
        .iter()
        .filter(|a| pki::fingerprint(a) == anchor_fp)
        .cloned()
        .collect();
    let mut path = chain.clone();
    path.extend(anchor);
    let chain_not_after = pki::create::earliest_not_after(&path).unwrap_or(now);
    let issuer_not_after = x.validity().not_after.to_datetime();
    let issuer_fingerprint = pki::fingerprint(issuer);
    let signer = Signer::new(
        issuer.clone(),
        key,
        &files.certificate.display().to_string(),
        &files.key.display().to_string(),
    )
    .map_err(|e| IssuerError::Signer(Arc::new(e)))?;
    Ok(IssuerState {
        signer,
        chain,
        anchors,
        chain_not_after,
        issuer_fingerprint,
        issuer_not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pki::create::{KeySpec, NewCert, Profile, create};

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn files() -> IssuerFiles {
        IssuerFiles {
            anchors: "ca.crt".into(),
            certificate: "issuer.crt".into(),
            key: "issuer.key".into(),
        }
    }

    fn make(
        profile: Profile,
        signer: Option<&Signer>,
        key: KeySpec,
        days: (i64, i64),
    ) -> pki::create::Created {
        create(
            &NewCert {
                subject: format!("{profile}"),
                profile,
                sans: vec![],
                not_before: now() + time::Duration::days(days.0),
                not_after: now() + time::Duration::days(days.1),
                key,
            },
            signer,
        )
        .unwrap()
    }

    fn pem(c: &pki::create::Created) -> (Vec<u8>, Vec<u8>) {
        (
            pki::cert::to_pem(std::slice::from_ref(&c.cert)).into_bytes(),
            c.key.serialize_pem().into_bytes(),
        )
    }

    fn root() -> (Vec<u8>, Signer) {
        let r = make(Profile::RootCa, None, KeySpec::EcdsaP256, (-1, 3650));
        let (crt, _) = pem(&r);
        (crt, Signer::new(r.cert, r.key, "ca.crt", "ca.key").unwrap())
    }

    #[test]
    fn accepts_a_good_pair_and_clamps_to_the_chain() {
        let (ca, root) = root();
        let i = make(
            Profile::IntermediateCa,
            Some(&root),
            KeySpec::EcdsaP256,
            (-1, 30),
        );
        let (crt, key) = pem(&i);
        let s = judge(
            &files(),
            &IssuerSnapshot {
                anchors: ca,
                certificate: crt,
                key,
            },
            now(),
        )
        .unwrap();
        assert_eq!(s.chain_not_after, s.issuer_not_after);
        assert_eq!(s.issuer_fingerprint, pki::fingerprint(&i.cert));
    }

    #[test]
    fn refuses_each_bad_pair() {
        let (ca, root) = root();
        let (_, other) = self::root();
        let good = make(
            Profile::IntermediateCa,
            Some(&root),
            KeySpec::EcdsaP256,
            (-1, 30),
        );
        let (good_crt, good_key) = pem(&good);
        let foreign = pem(&make(
            Profile::IntermediateCa,
            Some(&other),
            KeySpec::EcdsaP256,
            (-1, 30),
        ));
        let expired = pem(&make(
            Profile::IntermediateCa,
            Some(&root),
            KeySpec::EcdsaP256,
            (-10, -1),
        ));
        let p384 = pem(&make(
            Profile::IntermediateCa,
            Some(&root),
            KeySpec::EcdsaP384,
            (-1, 30),
        ));
        let leaf = pem(&make(
            Profile::Leaf,
            Some(&root),
            KeySpec::EcdsaP256,
            (-1, 30),
        ));
        let cases: Vec<(IssuerSnapshot, &str)> = vec![
            (
                IssuerSnapshot {
                    anchors: ca.clone(),
                    certificate: foreign.0.clone(),
                    key: foreign.1.clone(),
                },
                "untrusted",
            ),
            (
                IssuerSnapshot {
                    anchors: ca.clone(),
                    certificate: expired.0.clone(),
                    key: expired.1.clone(),
                },
                "expired",
            ),
            (
                IssuerSnapshot {
                    anchors: ca.clone(),
                    certificate: good_crt.clone(),
                    key: foreign.1.clone(),
                },
                "key_mismatch",
            ),
            (
                IssuerSnapshot {
                    anchors: ca.clone(),
                    certificate: p384.0.clone(),
                    key: p384.1.clone(),
                },
                "bad_key_type",
            ),
            (
                IssuerSnapshot {
                    anchors: ca.clone(),
                    certificate: leaf.0.clone(),
                    key: leaf.1.clone(),
                },
                "not_ca",
            ),
            (
                IssuerSnapshot {
                    anchors: vec![],
                    certificate: good_crt.clone(),
                    key: good_key.clone(),
                },
                "bad_anchors",
            ),
            (
                IssuerSnapshot {
                    anchors: ca.clone(),
                    certificate: good_crt[..good_crt.len() / 2].to_vec(),
                    key: good_key.clone(),
                },
                "bad_certificate",
            ),
            (
                IssuerSnapshot {
                    anchors: ca.clone(),
                    certificate: good_crt.clone(),
                    key: b"junk".to_vec(),
                },
                "bad_key",
            ),
        ];
        for (snap, want) in cases {
            let err = judge(&files(), &snap, now()).unwrap_err();
            assert_eq!(err.label(), want, "{err}");
        }
    }
}
