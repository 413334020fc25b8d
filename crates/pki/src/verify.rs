//! Chain verification with reasons a person understands.
//!
//! webpki verifies end-entity chains only; weft must also judge issuers (CAs)
//! against anchors, so the path is checked here: names, signatures, validity,
//! basicConstraints, pathLen and key usage, one typed refusal per reason.
//! A leaf verified for a TLS role is also judged for its extended key usage
//! and then by rustls-webpki's path validation (see [`crate::usage`]).

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

use crate::cert::{DerError, fingerprint, parse_x509};
use crate::info::rfc3339;
use crate::usage::{Role, check_critical, check_role, webpki_path};

const MAX_DEPTH: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no trust anchors to verify against; the bundle is empty")]
    NoAnchors,
    #[error("certificate #{index} cannot be parsed: {source}")]
    Unparseable {
        index: usize,
        #[source]
        source: DerError,
    },
    #[error(
        "unknown issuer: {subject:?} was issued by {issuer:?}, which is not among the trust anchors or intermediates; add that CA to the bundle, or re-issue from a trusted one"
    )]
    UnknownIssuer { subject: String, issuer: String },
    #[error(
        "bad signature: {subject:?} names {issuer:?} as issuer, but no such CA's key signed it (a different CA with the same name?); re-issue it from the CA in the bundle"
    )]
    BadSignature { subject: String, issuer: String },
    #[error(
        "expired: {subject:?} was valid until {not_after}; the clock used says {now}; renew or re-create it"
    )]
    Expired {
        subject: String,
        not_after: String,
        now: String,
    },
    #[error(
        "not yet valid: {subject:?} is valid from {not_before}; the clock used says {now}; check the clock, or wait"
    )]
    NotYetValid {
        subject: String,
        not_before: String,
        now: String,
    },
    #[error(
        "not a CA: {subject:?} signed {child:?} but lacks basicConstraints CA:TRUE; issue the signer with --profile intermediate-ca"
    )]
    NotCa { subject: String, child: String },
    #[error(
        "path length: {subject:?} has pathLen {path_len} but {below} intermediate CA(s) stand below it; re-create it with a larger pathLen or shorten the chain"
    )]
    PathLen {
        subject: String,
        path_len: u32,
        below: usize,
    },
    #[error(
        "missing SAN: {subject:?} has no subject alternative name; a leaf needs its identity as a DNS SAN"
    )]
    MissingSan { subject: String },
    #[error("wrong key usage: {subject:?} {problem}; re-create it with the right profile")]
    WrongKeyUsage {
        subject: String,
        problem: &'static str,
    },
    #[error(
        "wrong extended key usage: {subject:?} has {has}, not {usage}, so it cannot be used as a TLS {}; re-issue it as a weft leaf (serverAuth and clientAuth), e.g. with `weft certs create --profile leaf`", if *usage == "clientAuth" { "client" } else { "server" }
    )]
    MissingUsage {
        subject: String,
        usage: &'static str,
        has: String,
    },
    #[error(
        "unknown critical extension: {subject:?} carries critical extension {oid}, which weft does not process, so it must refuse the certificate; re-issue it without that extension, or mark it non-critical"
    )]
    UnknownCriticalExtension { subject: String, oid: String },
    #[error(
        "refused by path validation for {role} (rustls-webpki): {source}; check the chain with `weft certs inspect` and `weft certs verify`"
    )]
    Webpki {
        role: &'static str,
        #[source]
        source: webpki::Error,
    },
    #[error("the chain is longer than {MAX_DEPTH} certificates or loops")]
    TooDeep,
}

/// What the verified certificate must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A workload certificate: not a CA, has a SAN, may sign TLS handshakes.
    Leaf,
    /// A leaf presented as a TLS client: also carries clientAuth.
    Client,
    /// A leaf presented as a TLS server: also carries serverAuth.
    Server,
    /// A CA that signs certificates.
    Ca,
    /// Whatever basicConstraints says it is.
    Auto,
}

/// One verified path, target first, anchor last (subjects and fingerprints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    pub links: Vec<(String, String)>,
}

struct Candidate<'a> {
    der: &'a [u8],
    x509: X509Certificate<'a>,
    anchor: bool,
}

/// Verifies `target` at `now` against `anchors`, using `intermediates` to build
/// the path. Anchors are judged too: an expired anchor does not vouch.
pub fn verify(
    target: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchors: &[CertificateDer<'_>],
    now: OffsetDateTime,
    purpose: Purpose,
) -> Result<VerifiedChain, VerifyError> {
    verify_at(target, intermediates, anchors, Some(now), purpose)
}

/// Like [`verify`]; with `now` = None validity periods are not judged, which
/// answers "who signed this?" apart from "is it still valid?".
pub fn verify_at(
    target: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchors: &[CertificateDer<'_>],
    now: Option<OffsetDateTime>,
    purpose: Purpose,
) -> Result<VerifiedChain, VerifyError> {
    if anchors.is_empty() {
        return Err(VerifyError::NoAnchors);
    }
    let leaf =
        parse_x509(target).map_err(|source| VerifyError::Unparseable { index: 1, source })?;
    let mut pool = Vec::new();
    for (i, (der, anchor)) in anchors
        .iter()
        .map(|a| (a, true))
        .chain(intermediates.iter().map(|c| (c, false)))
        .enumerate()
    {
        let x509 = parse_x509(der).map_err(|source| VerifyError::Unparseable {
            index: i + 2,
            source,
        })?;
        pool.push(Candidate {
            der: der.as_ref(),
            x509,
            anchor,
        });
    }
    let subject = leaf.subject().to_string();
    check_validity(&leaf, now)?;
    check_critical(&leaf)?;
    let is_ca = leaf.is_ca();
    let role = match purpose {
        Purpose::Client => Some(Role::Client),
        Purpose::Server => Some(Role::Server),
        _ => None,
    };
    match purpose {
        Purpose::Leaf => check_leaf(&leaf)?,
        Purpose::Client | Purpose::Server => {
            check_leaf(&leaf)?;
            if let Some(role) = role {
                check_role(&leaf, role)?;
            }
        }
        Purpose::Ca if !is_ca => {
            return Err(VerifyError::NotCa {
                subject: subject.clone(),
                child: "(the certificate was checked as a CA)".into(),
            });
        }
        Purpose::Auto if !is_ca => check_leaf(&leaf)?,
        _ => {}
    }
    // A target that is itself an anchor verifies by being trusted.
    let target_fp = fingerprint(target);
    if pool
        .iter()
        .any(|c| c.anchor && fingerprint(c.der) == target_fp)
    {
        return Ok(VerifiedChain {
            links: vec![(subject, target_fp)],
        });
    }
    let mut links = vec![(subject, target_fp)];
    extend(&leaf, &pool, now, 0, &mut links)?;
    if let (Some(role), Some(now)) = (role, now) {
        webpki_path(target, intermediates, anchors, now, role)?;
    }
    Ok(VerifiedChain { links })
}

/// Finds a signer for `child` in the pool and recurses until an anchor.
/// `cas_below` counts the intermediate CAs between the signer and the target.
fn extend(
    child: &X509Certificate<'_>,
    pool: &[Candidate<'_>],
    now: Option<OffsetDateTime>,
    cas_below: usize,
    links: &mut Vec<(String, String)>,
) -> Result<(), VerifyError> {
    if links.len() > MAX_DEPTH {
        return Err(VerifyError::TooDeep);
    }
    let child_subject = child.subject().to_string();
    let mut last_err = VerifyError::UnknownIssuer {
        subject: child_subject.clone(),
        issuer: child.issuer().to_string(),
    };
    for cand in pool
        .iter()
        .filter(|c| c.x509.subject().as_raw() == child.issuer().as_raw())
    {
        let fp = fingerprint(cand.der);
        if links.iter().any(|(_, f)| *f == fp) {
            continue;
        }
        let result = (|| {
            if child
                .verify_signature(Some(cand.x509.public_key()))
                .is_err()
            {
                return Err(VerifyError::BadSignature {
                    subject: child_subject.clone(),
                    issuer: child.issuer().to_string(),
                });
            }
            check_signer(&cand.x509, &child_subject, cas_below)?;
            check_validity(&cand.x509, now)?;
            if !cand.anchor {
                check_critical(&cand.x509)?;
            }
            let mut path = links.clone();
            path.push((cand.x509.subject().to_string(), fp.clone()));
            if !cand.anchor {
                extend(&cand.x509, pool, now, cas_below + 1, &mut path)?;
            }
            Ok(path)
        })();
        match result {
            Ok(path) => {
                *links = path;
                return Ok(());
            }
            // Keep the most telling reason: anything beats "unknown issuer"
            // at this level, since a signer by that name was found.
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

fn check_validity(c: &X509Certificate<'_>, now: Option<OffsetDateTime>) -> Result<(), VerifyError> {
    let Some(now) = now else {
        return Ok(());
    };
    let v = c.validity();
    let (nb, na) = (v.not_before.to_datetime(), v.not_after.to_datetime());
    if now < nb {
        return Err(VerifyError::NotYetValid {
            subject: c.subject().to_string(),
            not_before: rfc3339(nb),
            now: rfc3339(now),
        });
    }
    if now > na {
        return Err(VerifyError::Expired {
            subject: c.subject().to_string(),
            not_after: rfc3339(na),
            now: rfc3339(now),
        });
    }
    Ok(())
}

fn check_signer(
    signer: &X509Certificate<'_>,
    child: &str,
    cas_below: usize,
) -> Result<(), VerifyError> {
    let subject = signer.subject().to_string();
    let bc = signer.basic_constraints().ok().flatten();
    let Some(bc) = bc.filter(|bc| bc.value.ca) else {
        return Err(VerifyError::NotCa {
            subject,
            child: child.to_string(),
        });
    };
    if let Some(path_len) = bc.value.path_len_constraint
        && cas_below > path_len as usize
    {
        return Err(VerifyError::PathLen {
            subject,
            path_len,
            below: cas_below,
        });
    }
    if let Ok(Some(ku)) = signer.key_usage()
        && !ku.value.key_cert_sign()
    {
        return Err(VerifyError::WrongKeyUsage {
            subject,
            problem: "is a CA whose keyUsage lacks keyCertSign",
        });
    }
    Ok(())
}

fn check_leaf(c: &X509Certificate<'_>) -> Result<(), VerifyError> {
    let subject = c.subject().to_string();
    let has_san = matches!(c.subject_alternative_name(), Ok(Some(san)) if !san.value.general_names.is_empty());
    if !has_san {
        return Err(VerifyError::MissingSan { subject });
    }
    if let Ok(Some(ku)) = c.key_usage()
        && !ku.value.digital_signature()
    {
        return Err(VerifyError::WrongKeyUsage {
            subject,
            problem: "has a keyUsage without digitalSignature, so it cannot sign TLS handshakes",
        });
    }
    if let Ok(Some(eku)) = c.extended_key_usage() {
        let e = eku.value;
        if !(e.any || e.server_auth || e.client_auth) {
            return Err(VerifyError::WrongKeyUsage {
                subject,
                problem: "has an extendedKeyUsage without serverAuth or clientAuth",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn reason(r: Result<VerifiedChain, VerifyError>) -> VerifyError {
        r.expect_err("verification should fail")
    }

    #[test]
    fn valid_leaf_and_issuer() {
        let root = root("root");
        let issuer = sub_ca("issuer", &root, None);
        let l = leaf(leaf_params("web.demo"), &issuer);
        let chain = verify(
            &l,
            std::slice::from_ref(&issuer.der),
            std::slice::from_ref(&root.der),
            now(),
            Purpose::Leaf,
        )
        .unwrap();
        assert_eq!(chain.links.len(), 3);
        assert_eq!(chain.links[2].0, "CN=root");
        verify(
            &issuer.der,
            &[],
            std::slice::from_ref(&root.der),
            now(),
            Purpose::Ca,
        )
        .unwrap();
        // An anchor verifies as itself.
        verify(
            &root.der,
            &[],
            std::slice::from_ref(&root.der),
            now(),
            Purpose::Auto,
        )
        .unwrap();
    }

    #[test]
    fn unknown_issuer() {
        let root = root("root");
        let other = self::root("other");
        let issuer = sub_ca("issuer", &other, None);
        let e = reason(verify(
            &issuer.der,
            &[],
            std::slice::from_ref(&root.der),
            now(),
            Purpose::Auto,
        ));
        assert!(
            matches!(&e, VerifyError::UnknownIssuer { issuer, .. } if issuer == "CN=other"),
            "{e}"
        );
    }

    #[test]
    fn bad_signature_from_same_named_ca() {
        let root = root("root");
        let impostor = self::root("root");
        let issuer = sub_ca("issuer", &impostor, None);
        let e = reason(verify(
            &issuer.der,
            &[],
            std::slice::from_ref(&root.der),
            now(),
            Purpose::Auto,
        ));
        assert!(matches!(e, VerifyError::BadSignature { .. }), "{e}");
    }

    #[test]
    fn expired_names_dates_and_clock() {
        let root = root("root");
        let mut p = ca_params("issuer", Some(0));
        p.not_before = now() - time::Duration::days(10);
        p.not_after = now() - time::Duration::days(1);
        let issuer = sub_ca("issuer", &root, Some(p));
        let e = reason(verify(
            &issuer.der,
            &[],
            std::slice::from_ref(&root.der),
            now(),
            Purpose::Auto,
        ));
        match &e {
            VerifyError::Expired {
                subject,
                not_after,
                now,
            } => {
                assert_eq!(subject, "CN=issuer");
                assert!(!not_after.is_empty() && !now.is_empty());
            }
            other => panic!("{other}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains("valid until") && msg.contains("clock used says"),
            "{msg}"
        );
    }

    #[test]
    fn expired_anchor_does_not_vouch() {
        let mut p = ca_params("root", Some(1));
        p.not_before = now() - time::Duration::days(10);
        p.not_after = now() - time::Duration::days(1);
        let root = root_from(p);
        let issuer = sub_ca("issuer", &root, None);
        let e = reason(verify(
            &issuer.der,
            &[],
            std::slice::from_ref(&root.der),
            now(),
            Purpose::Auto,
        ));
        assert!(
            matches!(&e, VerifyError::Expired { subject, .. } if subject == "CN=root"),
            "{e}"
        );
    }

    #[test]
    fn not_yet_valid() {
        let root = root("root");
        let mut p = leaf_params("web");
        p.not_before = now() + time::Duration::days(1);
        p.not_after = now() + time::Duration::days(2);
        let l = leaf(p, &root);
        let e = reason(verify(
            &l,
            &[],
            std::slice::from_ref(&root.der),
            now(),
            Purpose::Leaf,
        ));
        assert!(matches!(e, VerifyError::NotYetValid { .. }), "{e}");
    }

    #[test]
    fn signer_not_a_ca() {
        let root = root("root");
        // A leaf used as a signer.
        let mut p = leaf_params("fake-issuer");
        p.is_ca = rcgen::IsCa::ExplicitNoCa;
        let fake = sub_ca("fake-issuer", &root, Some(p));
        let l = leaf(leaf_params("web"), &fake);
        let e = reason(verify(
            &l,
            std::slice::from_ref(&fake.der),
            std::slice::from_ref(&root.der),
            now(),
            Purpose::Leaf,
        ));
        assert!(
            matches!(&e, VerifyError::NotCa { subject, .. } if subject == "CN=fake-issuer"),
            "{e}"
        );
        // And a non-CA checked as an issuer.
        let e = reason(verify(
            &fake.der,
            &[],
            std::slice::from_ref(&root.der),
            now(),
            Purpose::Ca,
        ));
        assert!(matches!(e, VerifyError::NotCa { .. }), "{e}");
    }

    #[test]
    fn path_length_exceeded() {
        let root = root_from(ca_params("root", Some(0)));
        let mid = sub_ca("mid", &root, Some(ca_params("mid", Some(0))));
        let l = leaf(leaf_params("web"), &mid);
        // root(pathLen 0) -> mid -> leaf: one CA below root: too many.
        let e = reason(verify(
            &l,
            std::slice::from_ref(&mid.der),
            std::slice::from_ref(&root.der),
            now(),
            Purpose::Leaf,
        ));
        assert!(
            matches!(
                &e,
                VerifyError::PathLen {
                    path_len: 0,
                    below: 1,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn missing_san() {
        let root = root("root");
        let mut p = leaf_params("web");
        p.subject_alt_names.clear();
        let l = leaf(p, &root);
        let e = reason(verify(
            &l,
            &[],
            std::slice::from_ref(&root.der),
            now(),
            Purpose::Leaf,
        ));
        assert!(matches!(e, VerifyError::MissingSan { .. }), "{e}");
    }

    #[test]
    fn wrong_key_usage() {
        let root = root("root");
        let mut p = leaf_params("web");
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyEncipherment];
        let l = leaf(p, &root);
        let e = reason(verify(
            &l,
            &[],
            std::slice::from_ref(&root.der),
            now(),
            Purpose::Leaf,
        ));
        assert!(matches!(e, VerifyError::WrongKeyUsage { .. }), "{e}");

        let mut p = ca_params("issuer", Some(0));
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let issuer = sub_ca("issuer", &root, Some(p));
        let l = leaf(leaf_params("web"), &issuer);
        let e = reason(verify(
            &l,
            std::slice::from_ref(&issuer.der),
            std::slice::from_ref(&root.der),
            now(),
            Purpose::Leaf,
        ));
        assert!(matches!(e, VerifyError::WrongKeyUsage { .. }), "{e}");
    }

    #[test]
    fn no_anchors_and_garbage() {
        let root = root("root");
        assert_eq!(
            reason(verify(&root.der, &[], &[], now(), Purpose::Auto)),
            VerifyError::NoAnchors
        );
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(matches!(
            reason(verify(
                &junk,
                &[],
                std::slice::from_ref(&root.der),
                now(),
                Purpose::Auto
            )),
            VerifyError::Unparseable { index: 1, .. }
        ));
    }

    #[test]
    fn picks_the_valid_anchor_of_two() {
        let mut p = ca_params("root", Some(1));
        p.not_after = now() - time::Duration::hours(1);
        let old = root_from(p);
        let new = root("root-new");
        let issuer = sub_ca("issuer", &new, None);
        verify(
            &issuer.der,
            &[],
            &[old.der.clone(), new.der.clone()],
            now(),
            Purpose::Ca,
        )
        .unwrap();
    }
}
