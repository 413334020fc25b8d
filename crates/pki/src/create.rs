//! Making certificates: anchors, issuers, and workload leaves from a fixed template.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::cert::{CertError, load_certs, parse_x509};
use crate::identity::Identity;
use crate::key::{KeyError, key_matches_cert, load_key};

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("--profile {0} needs the signing CA: pass --ca CA_CRT --ca-key CA_KEY")]
    NeedsCa(Profile),
    #[error(
        "--profile root-ca is self-signed; drop --ca and --ca-key (or use --profile intermediate-ca)"
    )]
    RootWithCa,
    #[error(
        "{path}: the key does not belong to the certificate {cert}; pass the key that was created with it"
    )]
    KeyMismatch { path: String, cert: String },
    #[error(
        "{path}: {subject:?} is not a CA (basicConstraints CA:TRUE missing), so it cannot sign; pass an issuer or root certificate"
    )]
    NotCa { path: String, subject: String },
    #[error("the validity is empty: NotAfter {not_after} is not after NotBefore {not_before}")]
    EmptyValidity {
        not_before: String,
        not_after: String,
    },
    #[error("subject alternative name {0:?} is not a valid DNS name, IP, e-mail or URI")]
    BadSan(String),
    #[error("RSA keys of {0} bits are not offered; use 2048, 3072 or 4096")]
    RsaSize(u32),
    #[error("the subject is empty; pass a name such as root.linkerd.cluster.local")]
    EmptySubject,
    #[error("cannot create the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    RootCa,
    IntermediateCa,
    Leaf,
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::RootCa => "root-ca",
            Self::IntermediateCa => "intermediate-ca",
            Self::Leaf => "leaf",
        })
    }
}

impl Profile {
    /// Default lifetimes, as `step certificate create` has them.
    pub fn default_lifetime(self) -> Duration {
        const DAY: u64 = 24 * 3600;
        Duration::from_secs(match self {
            Self::RootCa => 3650 * DAY,
            Self::IntermediateCa => 365 * DAY,
            Self::Leaf => DAY,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpec {
    EcdsaP256,
    EcdsaP384,
    Rsa(u32),
}

impl KeySpec {
    pub fn generate(self) -> Result<KeyPair, CreateError> {
        Ok(match self {
            Self::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
            Self::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?,
            Self::Rsa(bits) => {
                let size = match bits {
                    2048 => rcgen::RsaKeySize::_2048,
                    3072 => rcgen::RsaKeySize::_3072,
                    4096 => rcgen::RsaKeySize::_4096,
                    other => return Err(CreateError::RsaSize(other)),
                };
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size)?
            }
        })
    }
}

/// A subject alternative name as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
    Email(String),
    Uri(String),
}

impl std::str::FromStr for San {
    type Err = CreateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        if s.contains("://") {
            return Ok(Self::Uri(s.to_string()));
        }
        if s.contains('@') {
            return Ok(Self::Email(s.to_string()));
        }
        let label_ok = |i: usize, l: &str| {
            (i == 0 && l == "*")
                || (!l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-'))
        };
        let ok = s.len() <= 253 && s.split('.').enumerate().all(|(i, l)| label_ok(i, l));
        if ok {
            Ok(Self::Dns(s.to_string()))
        } else {
            Err(CreateError::BadSan(s.to_string()))
        }
    }
}

impl San {
    fn to_rcgen(&self) -> Result<SanType, CreateError> {
        let bad = |_| CreateError::BadSan(self.to_string());
        Ok(match self {
            Self::Dns(d) => SanType::DnsName(d.clone().try_into().map_err(bad)?),
            Self::Ip(ip) => SanType::IpAddress(*ip),
            Self::Email(e) => SanType::Rfc822Name(e.clone().try_into().map_err(bad)?),
            Self::Uri(u) => SanType::URI(u.clone().try_into().map_err(bad)?),
        })
    }
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dns(d) => write!(f, "DNS:{d}"),
            Self::Ip(ip) => write!(f, "IP:{ip}"),
            Self::Email(e) => write!(f, "email:{e}"),
            Self::Uri(u) => write!(f, "URI:{u}"),
        }
    }
}

/// A CA certificate with its key, able to sign.
pub struct Signer {
    pub cert: CertificateDer<'static>,
    pub key: KeyPair,
    pub not_after: OffsetDateTime,
    pub subject: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Signer")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads a CA certificate and its key, checking they belong together and
    /// that the certificate may sign. A file of several certificates (a
    /// bundle of old + new anchor during a rotation, or a chain) gives the
    /// one the key belongs to, else the first.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CreateError> {
        let mut certs = load_certs(cert_path)?;
        let key = load_key(key_path)?;
        let at = certs
            .iter()
            .position(|c| key_matches_cert(&key, c))
            .unwrap_or(0);
        let cert = certs.swap_remove(at);
        Self::new(
            cert,
            key,
            &cert_path.display().to_string(),
            &key_path.display().to_string(),
        )
    }

    /// `cert_name` and `key_name` name the material in errors.
    pub fn new(
        cert: CertificateDer<'static>,
        key: KeyPair,
        cert_name: &str,
        key_name: &str,
    ) -> Result<Self, CreateError> {
        let parsed = parse_x509(&cert).map_err(|source| CertError::BadDer {
            path: cert_name.into(),
            index: 1,
            source,
        })?;
        let subject = parsed.subject().to_string();
        if !parsed.is_ca() {
            return Err(CreateError::NotCa {
                path: cert_name.to_string(),
                subject,
            });
        }
        if !key_matches_cert(&key, &cert) {
            return Err(CreateError::KeyMismatch {
                path: key_name.to_string(),
                cert: cert_name.to_string(),
            });
        }
        let not_after = parsed.validity().not_after.to_datetime();
        Ok(Self {
            cert,
            key,
            not_after,
            subject,
        })
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, CreateError> {
        Ok(Issuer::from_ca_cert_der(&self.cert, &self.key)?)
    }
}

/// What `weft certs create` asks for.
#[derive(Debug, Clone)]
pub struct NewCert {
    pub subject: String,
    pub profile: Profile,
    pub sans: Vec<San>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub key: KeySpec,
}

pub struct Created {
    pub cert: CertificateDer<'static>,
    pub key: KeyPair,
    /// Set when NotAfter was cut back to the signer's NotAfter.
    pub clamped_to: Option<OffsetDateTime>,
}

/// 128 random bits; rcgen encodes them as a positive DER INTEGER.
pub fn random_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).expect("the system random source failed");
    // A zero serial is not allowed; 2^-128 odds, but be exact.
    if serial.iter().all(|b| *b == 0) {
        serial[15] = 1;
    }
    serial
}

fn subject_dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn params_for(
    profile: Profile,
    subject: &str,
    sans: &[San],
) -> Result<CertificateParams, CreateError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject_dn(subject);
    p.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    let mut sans = sans.to_vec();
    match profile {
        Profile::RootCa => {
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        }
        Profile::IntermediateCa => {
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p.use_authority_key_identifier_extension = true;
        }
        Profile::Leaf => {
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            p.use_authority_key_identifier_extension = true;
            if sans.is_empty() {
                // As step does: the subject is the name, and a mesh identity
                // also gets its SPIFFE ID, after the DNS name.
                sans.push(subject.parse()?);
                if let Ok(id) = subject.parse::<Identity>() {
                    sans.push(San::Uri(id.to_spiffe().to_string()));
                }
            }
        }
    }
    p.subject_alt_names = sans.iter().map(San::to_rcgen).collect::<Result<_, _>>()?;
    Ok(p)
}

/// Creates a certificate and a fresh key per `req`; CA-signed unless root.
pub fn create(req: &NewCert, signer: Option<&Signer>) -> Result<Created, CreateError> {
    if req.subject.trim().is_empty() {
        return Err(CreateError::EmptySubject);
    }
    match (req.profile, signer) {
        (Profile::RootCa, Some(_)) => return Err(CreateError::RootWithCa),
        (Profile::IntermediateCa | Profile::Leaf, None) => {
            return Err(CreateError::NeedsCa(req.profile));
        }
        _ => {}
    }
    let mut params = params_for(req.profile, &req.subject, &req.sans)?;
    params.not_before = req.not_before;
    params.not_after = req.not_after;
    let mut clamped_to = None;
    if let Some(s) = signer
        && params.not_after > s.not_after
    {
        params.not_after = s.not_after;
        clamped_to = Some(s.not_after);
    }
    if params.not_after <= params.not_before {
        return Err(CreateError::EmptyValidity {
            not_before: crate::info::rfc3339(params.not_before),
            not_after: crate::info::rfc3339(params.not_after),
        });
    }
    let key = req.key.generate()?;
    let cert = match signer {
        None => params.self_signed(&key)?,
        Some(s) => params.signed_by(&key, &s.issuer()?)?,
    };
    Ok(Created {
        cert: cert.der().clone(),
        key,
        clamped_to,
    })
}

/// NotBefore and NotAfter of a workload leaf: backdated by the skew allowance,
/// and never outliving the chain that vouches for it.
pub fn leaf_validity(
    now: OffsetDateTime,
    lifetime: Duration,
    skew: Duration,
    chain_not_after: OffsetDateTime,
) -> (OffsetDateTime, OffsetDateTime) {
    // Certificates hold whole seconds.
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let not_before = now - skew;
    let not_after = (now + lifetime + skew).min(chain_not_after);
    (not_before, not_after)
}

/// The earliest NotAfter among certificates (the issuer chain and its anchor).
pub fn earliest_not_after(certs: &[CertificateDer<'_>]) -> Option<OffsetDateTime> {
    certs
        .iter()
        .filter_map(|c| parse_x509(c).ok())
        .map(|c| c.validity().not_after.to_datetime())
        .min()
}

/// A workload certificate as issued.
#[derive(Debug, Clone)]
pub struct IssuedLeaf {
    pub der: CertificateDer<'static>,
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// Issues a workload leaf from weft's template. Only `public_key` comes from
/// the requester; every other field is weft's.
pub fn issue_workload_leaf(
    signer: &Signer,
    chain_not_after: OffsetDateTime,
    public_key: &impl PublicKeyData,
    identity: &Identity,
    now: OffsetDateTime,
    lifetime: Duration,
    skew: Duration,
) -> Result<IssuedLeaf, CreateError> {
    let name = identity.to_string();
    let mut params = params_for(
        Profile::Leaf,
        &name,
        &[
            San::Dns(name.clone()),
            San::Uri(identity.to_spiffe().to_string()),
        ],
    )?;
    let (not_before, not_after) = leaf_validity(now, lifetime, skew, chain_not_after);
    if not_after <= now {
        return Err(CreateError::EmptyValidity {
            not_before: crate::info::rfc3339(not_before),
            not_after: crate::info::rfc3339(not_after),
        });
    }
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.signed_by(public_key, &signer.issuer()?)?;
    let serial = parse_x509(cert.der())
        .map(|c| crate::info::serial_hex(&c.serial.to_bytes_be()))
        .unwrap_or_default();
    Ok(IssuedLeaf {
        der: cert.der().clone(),
        serial,
        not_before,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::CertInfo;
    use crate::testutil::now;
    use crate::verify::{Purpose, verify};

    use crate::testutil::web_id as id;

    fn make(profile: Profile, subject: &str, signer: Option<&Signer>, days: i64) -> Created {
        create(
            &NewCert {
                subject: subject.into(),
                profile,
                sans: vec![],
                not_before: now(),
                not_after: now() + time::Duration::days(days),
                key: KeySpec::EcdsaP256,
            },
            signer,
        )
        .unwrap()
    }

    #[test]
    fn a_signer_from_a_bundle_is_the_certificate_its_key_belongs_to() {
        let d = tempfile::tempdir().unwrap();
        let (old, new) = (
            make(Profile::RootCa, "root-1", None, 3650),
            make(Profile::RootCa, "root-2", None, 3650),
        );
        let bundle = d.path().join("ca.crt");
        std::fs::write(
            &bundle,
            crate::cert::to_pem(&[old.cert.clone(), new.cert.clone()]),
        )
        .unwrap();
        let key = d.path().join("ca2.key");
        std::fs::write(&key, new.key.serialize_pem()).unwrap();
        let s = Signer::load(&bundle, &key).unwrap();
        let issuer = make(Profile::IntermediateCa, "issuer", Some(&s), 365);
        verify(
            &issuer.cert,
            &[],
            std::slice::from_ref(&new.cert),
            now(),
            Purpose::Ca,
        )
        .unwrap();
        // A key that belongs to none of them is still refused.
        let other = make(Profile::RootCa, "root-3", None, 3650);
        std::fs::write(&key, other.key.serialize_pem()).unwrap();
        assert!(matches!(
            Signer::load(&bundle, &key),
            Err(CreateError::KeyMismatch { .. })
        ));
    }

    fn signer(c: Created) -> Signer {
        Signer::new(c.cert, c.key, "ca.crt", "ca.key").unwrap()
    }

    #[test]
    fn profiles_have_the_right_extensions() {
        let root = make(Profile::RootCa, "root.linkerd.cluster.local", None, 3650);
        let info = CertInfo::from_der(&root.cert).unwrap();
        assert!(info.is_ca && info.self_signed);
        assert_eq!(info.path_len, Some(1));
        assert!(info.subject_key_id.is_some());
        let root = signer(root);
        let issuer = make(
            Profile::IntermediateCa,
            "identity.linkerd.cluster.local",
            Some(&root),
            365,
        );
        let info = CertInfo::from_der(&issuer.cert).unwrap();
        assert!(info.is_ca && !info.self_signed);
        assert_eq!(info.path_len, Some(0));
        assert_eq!(info.key_algorithm, "ECDSA P-256");
        assert_eq!(
            info.authority_key_id,
            CertInfo::from_der(&root.cert).unwrap().subject_key_id
        );
        let issuer = signer(issuer);
        let leaf = make(Profile::Leaf, &id().to_string(), Some(&issuer), 1);
        let info = CertInfo::from_der(&leaf.cert).unwrap();
        assert!(!info.is_ca);
        assert_eq!(info.extended_key_usage, vec!["serverAuth", "clientAuth"]);
        assert_eq!(info.subject_alt_names[0], format!("DNS:{}", id()));
        assert_eq!(
            info.subject_alt_names[1],
            "URI:spiffe://cluster.local/ns/demo/sa/web"
        );
        verify(
            &leaf.cert,
            std::slice::from_ref(&issuer.cert),
            std::slice::from_ref(&root.cert),
            now(),
            Purpose::Leaf,
        )
        .unwrap();
    }

    #[test]
    fn needs_and_refuses_ca_per_profile() {
        let root = signer(make(Profile::RootCa, "root", None, 10));
        let req = |profile| NewCert {
            subject: "x".into(),
            profile,
            sans: vec![],
            not_before: now(),
            not_after: now() + time::Duration::days(1),
            key: KeySpec::EcdsaP256,
        };
        assert!(matches!(
            create(&req(Profile::Leaf), None),
            Err(CreateError::NeedsCa(_))
        ));
        assert!(matches!(
            create(&req(Profile::RootCa), Some(&root)),
            Err(CreateError::RootWithCa)
        ));
        let leaf = make(Profile::Leaf, "web", Some(&root), 1);
        let err = Signer::new(leaf.cert, leaf.key, "leaf.crt", "leaf.key").unwrap_err();
        assert!(matches!(err, CreateError::NotCa { .. }));
        let other = make(Profile::RootCa, "other", None, 1);
        let err = Signer::new(root.cert.clone(), other.key, "ca.crt", "other.key").unwrap_err();
        assert!(matches!(err, CreateError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn workload_leaf_template() {
        let root = signer(make(Profile::RootCa, "root", None, 3650));
        let issuer = signer(make(Profile::IntermediateCa, "issuer", Some(&root), 365));
        let requester = KeyPair::generate().unwrap();
        let t = now();
        let leaf = issue_workload_leaf(
            &issuer,
            issuer.not_after,
            &requester,
            &id(),
            t,
            Duration::from_secs(86400),
            Duration::from_secs(20),
        )
        .unwrap();
        let info = CertInfo::from_der(&leaf.der).unwrap();
        // DNS SAN first, then the SPIFFE URI; CN is the DNS identity.
        assert_eq!(
            info.subject_alt_names,
            vec![
                format!("DNS:{}", id()),
                "URI:spiffe://cluster.local/ns/demo/sa/web".to_string()
            ]
        );
        assert_eq!(info.subject, format!("CN={}", id()));
        assert_eq!(info.key_usage, vec!["Digital Signature"]);
        assert_eq!(info.extended_key_usage, vec!["serverAuth", "clientAuth"]);
        assert!(!info.is_ca);
        let t0 = t.replace_nanosecond(0).unwrap();
        assert_eq!(info.not_before, t0 - time::Duration::seconds(20));
        assert_eq!(info.not_after, t0 + time::Duration::seconds(86400 + 20));
        // The public key is the requester's, nothing else of it.
        let parsed = crate::cert::parse_x509(&leaf.der).unwrap();
        assert_eq!(
            parsed.public_key().raw,
            requester.subject_public_key_info().as_slice()
        );
        assert_eq!(leaf.serial, info.serial);
        assert!(leaf.serial.len() >= 2 * 14 + 13, "{}", leaf.serial);
        verify(
            &leaf.der,
            std::slice::from_ref(&issuer.cert),
            std::slice::from_ref(&root.cert),
            now(),
            Purpose::Leaf,
        )
        .unwrap();
    }

    #[test]
    fn not_after_is_clamped_to_the_chain() {
        let t = time::macros::datetime!(2026-01-01 0:00 UTC);
        let day = Duration::from_secs(86400);
        let skew = Duration::from_secs(20);
        let far = t + time::Duration::days(365);
        assert_eq!(leaf_validity(t, day, skew, far), (t - skew, t + day + skew));
        let soon = t + time::Duration::hours(2);
        assert_eq!(leaf_validity(t, day, skew, soon), (t - skew, soon));

        // And in a real certificate: an issuer ending in 2h caps a 24h leaf.
        let root = signer(make(Profile::RootCa, "root", None, 3650));
        let mut req = NewCert {
            subject: "issuer".into(),
            profile: Profile::IntermediateCa,
            sans: vec![],
            not_before: now() - time::Duration::hours(1),
            not_after: now() + time::Duration::hours(2),
            key: KeySpec::EcdsaP256,
        };
        let issuer = signer(create(&req, Some(&root)).unwrap());
        let chain_end = earliest_not_after(&[issuer.cert.clone(), root.cert.clone()]).unwrap();
        assert_eq!(chain_end, issuer.not_after);
        let k = KeyPair::generate().unwrap();
        let leaf = issue_workload_leaf(&issuer, chain_end, &k, &id(), now(), day, skew).unwrap();
        assert_eq!(leaf.not_after, issuer.not_after);
        // certs create clamps too, and says so.
        req.profile = Profile::Leaf;
        req.not_after = now() + time::Duration::days(30);
        let c = create(&req, Some(&issuer)).unwrap();
        assert_eq!(c.clamped_to, Some(issuer.not_after));
    }

    #[test]
    fn serials_are_random_128_bit() {
        let serials: std::collections::HashSet<[u8; 16]> =
            (0..2000).map(|_| random_serial()).collect();
        assert_eq!(serials.len(), 2000);
        // Every bit position takes both values across the sample.
        for bit in 0..128 {
            let ones = serials
                .iter()
                .filter(|s| s[bit / 8] >> (bit % 8) & 1 == 1)
                .count();
            assert!(ones > 0 && ones < 2000, "bit {bit} never changes");
        }
        // Encoded serials stay positive and round-trip through a certificate.
        let root = signer(make(Profile::RootCa, "root", None, 1));
        let a = make(Profile::Leaf, "a", Some(&root), 1);
        let b = make(Profile::Leaf, "a", Some(&root), 1);
        let (sa, sb) = (
            CertInfo::from_der(&a.cert).unwrap().serial,
            CertInfo::from_der(&b.cert).unwrap().serial,
        );
        assert_ne!(sa, sb);
    }

    #[test]
    fn rsa_and_p384_keys() {
        let root = make_key(KeySpec::Rsa(2048));
        assert_eq!(
            CertInfo::from_der(&root.cert).unwrap().key_algorithm,
            "RSA 2048"
        );
        let p384 = make_key(KeySpec::EcdsaP384);
        assert_eq!(
            CertInfo::from_der(&p384.cert).unwrap().key_algorithm,
            "ECDSA P-384"
        );
        assert!(matches!(
            KeySpec::Rsa(1024).generate(),
            Err(CreateError::RsaSize(1024))
        ));
    }

    fn make_key(key: KeySpec) -> Created {
        create(
            &NewCert {
                subject: "r".into(),
                profile: Profile::RootCa,
                sans: vec![],
                not_before: now(),
                not_after: now() + time::Duration::days(1),
                key,
            },
            None,
        )
        .unwrap()
    }

    #[test]
    fn san_parsing() {
        assert_eq!(
            "10.0.0.1".parse::<San>().unwrap(),
            San::Ip("10.0.0.1".parse().unwrap())
        );
        assert!(matches!(
            "spiffe://x/y".parse::<San>().unwrap(),
            San::Uri(_)
        ));
        assert!(matches!("a@b.c".parse::<San>().unwrap(), San::Email(_)));
        assert!(matches!(
            "*.example.com".parse::<San>().unwrap(),
            San::Dns(_)
        ));
        assert!("bad name".parse::<San>().is_err());
        assert!("a..b".parse::<San>().is_err());
    }
}
