//! Checking a certificate signing request before anything is signed.
//!
//! Only the public key is ever taken from a CSR; everything else in it is
//! checked, so a confused or hostile requester learns exactly what was wrong.

use pki::{Identity, KeyAlgorithm};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("certificate_signing_request is empty; send a DER-encoded PKCS#10 CSR")]
    Empty,
    #[error("certificate_signing_request is not a DER PKCS#10 CSR ({0}); send DER, not PEM")]
    Unparseable(#[source] pki::DerError),
    #[error(
        "CSR key is {0}; weft issues only ECDSA P-256 workload certificates: generate a P-256 key"
    )]
    KeyType(String),
    #[error(
        "CSR subject CN {cn:?} differs from the requested identity {identity:?}; leave CN empty or set it to the identity"
    )]
    CommonName { cn: String, identity: String },
    #[error("CSR has {0}; only DNS SANs are allowed")]
    ForbiddenSan(String),
    #[error("CSR has {0} DNS SANs; exactly one, equal to the requested identity, is required")]
    DnsSanCount(usize),
    #[error("CSR DNS SAN {san:?} differs from the requested identity {identity:?}")]
    SanMismatch { san: String, identity: String },
    #[error(
        "CSR signature does not verify against its own public key (no proof of possession of the private key)"
    )]
    ProofOfPossession,
}

/// A CSR whose content passed; its signature is checked by [`CheckedCsr::verify_possession`].
pub struct CheckedCsr<'a> {
    csr: X509CertificationRequest<'a>,
}

impl CheckedCsr<'_> {
    /// The requester's SubjectPublicKeyInfo, DER.
    pub fn public_key_der(&self) -> &[u8] {
        self.csr.certification_request_info.subject_pki.raw
    }

    /// Proof of possession: the CSR is signed by the key it carries.
    pub fn verify_possession(&self) -> Result<(), CsrError> {
        self.csr
            .verify_signature()
            .map_err(|_| CsrError::ProofOfPossession)
    }
}

/// Parses the CSR and checks its content against the requested identity:
/// P-256 key, CN empty or equal, exactly one DNS SAN equal, no other SANs.
pub fn check_csr<'a>(der: &'a [u8], identity: &Identity) -> Result<CheckedCsr<'a>, CsrError> {
    if der.is_empty() {
        return Err(CsrError::Empty);
    }
    let csr = match X509CertificationRequest::from_der(der) {
        Ok((rest, _)) if !rest.is_empty() => {
            return Err(CsrError::Unparseable(pki::DerError::Trailing(rest.len())));
        }
        Ok((_, csr)) => csr,
        Err(e) => return Err(CsrError::Unparseable(pki::DerError::Parse(e))),
    };
    let info = &csr.certification_request_info;
    let alg = KeyAlgorithm::of(&info.subject_pki);
    if alg != KeyAlgorithm::EcdsaP256 {
        return Err(CsrError::KeyType(alg.to_string()));
    }
    let want = identity.to_string();
    for cn in info.subject.iter_common_name() {
        let cn = cn.as_str().unwrap_or("(not a string)");
        if cn != want {
            return Err(CsrError::CommonName {
                cn: cn.to_string(),
                identity: want,
            });
        }
    }
    let mut dns = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(d) => dns.push(d.to_string()),
                    GeneralName::IPAddress(_) => {
                        return Err(CsrError::ForbiddenSan("an IP SAN".into()));
                    }
                    GeneralName::RFC822Name(_) => {
                        return Err(CsrError::ForbiddenSan("an e-mail SAN".into()));
                    }
                    GeneralName::URI(_) => return Err(CsrError::ForbiddenSan("a URI SAN".into())),
                    other => {
                        return Err(CsrError::ForbiddenSan(format!(
                            "a SAN of another kind ({other})"
                        )));
                    }
                }
            }
        }
    }
    match dns.as_slice() {
        [one] if *one == want => Ok(CheckedCsr { csr }),
        [one] => Err(CsrError::SanMismatch {
            san: one.clone(),
            identity: want,
        }),
        many => Err(CsrError::DnsSanCount(many.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{KeyPair, SanType};

    use pki::testutil::{csr_der as csr, dns, web_id as id};

    #[test]
    fn accepts_a_linkerd_style_csr() {
        let key = KeyPair::generate().unwrap();
        let der = csr(&key, Some(&id().to_string()), vec![dns(&id().to_string())]);
        let c = check_csr(&der, &id()).unwrap();
        c.verify_possession().unwrap();
        // And without a CN.
        let der = csr(&key, None, vec![dns(&id().to_string())]);
        check_csr(&der, &id()).unwrap();
    }

    #[test]
    fn refuses_each_bad_content() {
        let key = KeyPair::generate().unwrap();
        let me = id().to_string();
        let other = "db.demo.serviceaccount.identity.weft.cluster.local";
        type Case = (Vec<u8>, fn(&CsrError) -> bool);
        let cases: Vec<Case> = vec![
            (vec![], |e| matches!(e, CsrError::Empty)),
            (b"garbage".to_vec(), |e| {
                matches!(e, CsrError::Unparseable(_))
            }),
            (csr(&key, Some(other), vec![dns(&me)]), |e| {
                matches!(e, CsrError::CommonName { .. })
            }),
            (csr(&key, Some(&me), vec![dns(other)]), |e| {
                matches!(e, CsrError::SanMismatch { .. })
            }),
            (csr(&key, Some(&me), vec![]), |e| {
                matches!(e, CsrError::DnsSanCount(0))
            }),
            (csr(&key, Some(&me), vec![dns(&me), dns(other)]), |e| {
                matches!(e, CsrError::DnsSanCount(2))
            }),
            (
                csr(
                    &key,
                    Some(&me),
                    vec![dns(&me), SanType::IpAddress("10.0.0.1".parse().unwrap())],
                ),
                |e| matches!(e, CsrError::ForbiddenSan(s) if s == "an IP SAN"),
            ),
            (
                csr(
                    &key,
                    Some(&me),
                    vec![dns(&me), SanType::URI("spiffe://x/y".try_into().unwrap())],
                ),
                |e| matches!(e, CsrError::ForbiddenSan(_)),
            ),
        ];
        for (i, (der, ok)) in cases.iter().enumerate() {
            let err = check_csr(der, &id())
                .err()
                .unwrap_or_else(|| panic!("case {i} accepted"));
            assert!(ok(&err), "case {i}: {err}");
        }
        let rsa =
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
        let err = check_csr(&csr(&rsa, Some(&me), vec![dns(&me)]), &id())
            .err()
            .unwrap();
        assert_eq!(err, CsrError::KeyType("RSA 2048".into()));
    }

    #[test]
    fn refuses_a_csr_whose_signature_does_not_match_its_key() {
        let key = KeyPair::generate().unwrap();
        let mut der = csr(&key, None, vec![dns(&id().to_string())]);
        // Flip a bit in the signature (the last bytes of the DER).
        let n = der.len();
        der[n - 3] ^= 0x01;
        let c = check_csr(&der, &id()).unwrap();
        assert_eq!(c.verify_possession(), Err(CsrError::ProofOfPossession));
    }
}
