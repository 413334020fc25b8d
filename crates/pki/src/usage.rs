//! What a certificate may be used for, and extensions weft does not
//! process. A leaf presented as a TLS client must carry the clientAuth
//! extended key usage, one presented as a server serverAuth; a critical
//! extension weft does not understand refuses the certificate (RFC 5280
//! 4.2). weft's own checks come first, so a refusal says why; then
//! rustls-webpki validates the path for that purpose as well.

use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE,
    OID_X509_EXT_SUBJECT_ALT_NAME,
};

use crate::verify::VerifyError;

/// The TLS role a leaf is verified for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Client => "clientAuth",
            Self::Server => "serverAuth",
        }
    }

    /// The DER body of the role's key purpose OID (1.3.6.1.5.5.7.3.2 or .1).
    fn oid(self) -> &'static [u8] {
        match self {
            Self::Client => &[0x2b, 6, 1, 5, 5, 7, 3, 2],
            Self::Server => &[0x2b, 6, 1, 5, 5, 7, 3, 1],
        }
    }
}

/// The leaf names `role` in its extendedKeyUsage (which must be present:
/// weft's leaves carry both serverAuth and clientAuth).
pub fn check_role(c: &X509Certificate<'_>, role: Role) -> Result<(), VerifyError> {
    let subject = c.subject().to_string();
    let eku = match c.extended_key_usage() {
        Ok(Some(eku)) => eku.value,
        _ => {
            return Err(VerifyError::MissingUsage {
                subject,
                usage: role.name(),
                has: "no extendedKeyUsage".into(),
            });
        }
    };
    let ok = match role {
        Role::Client => eku.client_auth,
        Role::Server => eku.server_auth,
    };
    if ok {
        return Ok(());
    }
    let mut has: Vec<String> = Vec::new();
    if eku.server_auth {
        has.push("serverAuth".into());
    }
    if eku.client_auth {
        has.push("clientAuth".into());
    }
    if eku.any {
        has.push("anyExtendedKeyUsage".into());
    }
    has.extend(eku.other.iter().map(|o| o.to_id_string()));
    Err(VerifyError::MissingUsage {
        subject,
        usage: role.name(),
        has: if has.is_empty() {
            "an empty extendedKeyUsage".into()
        } else {
            format!("extendedKeyUsage {}", has.join(", "))
        },
    })
}

/// Refuses a critical extension weft does not process.
pub fn check_critical(c: &X509Certificate<'_>) -> Result<(), VerifyError> {
    let known = [
        OID_X509_EXT_BASIC_CONSTRAINTS,
        OID_X509_EXT_KEY_USAGE,
        OID_X509_EXT_EXTENDED_KEY_USAGE,
        OID_X509_EXT_SUBJECT_ALT_NAME,
    ];
    match c
        .extensions()
        .iter()
        .find(|e| e.critical && !known.contains(&e.oid))
    {
        Some(e) => Err(VerifyError::UnknownCriticalExtension {
            subject: c.subject().to_string(),
            oid: e.oid.to_id_string(),
        }),
        None => Ok(()),
    }
}

/// rustls-webpki's path validation for `role`, after weft's own checks.
pub fn webpki_path(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchors: &[CertificateDer<'_>],
    now: OffsetDateTime,
    role: Role,
) -> Result<(), VerifyError> {
    let refused = |source| VerifyError::Webpki {
        role: role.name(),
        source,
    };
    let anchors = anchors
        .iter()
        .map(|a| webpki::anchor_from_trusted_cert(a).map(|t| t.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(refused)?;
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(refused)?;
    let secs = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    let algs = crate::tls::provider().signature_verification_algorithms.all;
    cert.verify_for_usage(
        algs,
        &anchors,
        intermediates,
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs)),
        // Judged on every certificate of the path, CAs included, which
        // need not carry one; the leaf's was required above.
        webpki::KeyUsage::required_if_present(role.oid()),
        None,
        None,
    )
    .map(|_| ())
    .map_err(refused)
}

#[cfg(test)]
mod tests {
    use rcgen::{CustomExtension, ExtendedKeyUsagePurpose};

    use crate::testutil::*;
    use crate::verify::{Purpose, VerifyError, verify};

    fn judged(
        params: rcgen::CertificateParams,
        purpose: Purpose,
    ) -> Result<crate::VerifiedChain, VerifyError> {
        let root = root("root");
        let l = leaf(params, &root);
        verify(&l, &[], std::slice::from_ref(&root.der), now(), purpose)
    }

    fn with_eku(ekus: Vec<ExtendedKeyUsagePurpose>) -> rcgen::CertificateParams {
        let mut p = leaf_params("web.demo");
        p.extended_key_usages = ekus;
        p
    }

    #[test]
    fn a_server_only_leaf_is_refused_as_a_client() {
        let p = with_eku(vec![ExtendedKeyUsagePurpose::ServerAuth]);
        let e = judged(p.clone(), Purpose::Client).expect_err("serverAuth only");
        assert!(matches!(e, VerifyError::MissingUsage { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("clientAuth"), "{msg}");
        assert!(msg.contains("serverAuth"), "{msg}");
        // As a server it is fine.
        judged(p, Purpose::Server).unwrap();
    }

    #[test]
    fn a_client_leaf_needs_an_extended_key_usage() {
        let e = judged(with_eku(vec![]), Purpose::Client).expect_err("no EKU");
        assert!(e.to_string().contains("no extendedKeyUsage"), "{e}");
        let p = with_eku(vec![ExtendedKeyUsagePurpose::ClientAuth]);
        let e = judged(p.clone(), Purpose::Server).expect_err("clientAuth only");
        assert!(e.to_string().contains("serverAuth"), "{e}");
        judged(p, Purpose::Client).unwrap();
    }

    #[test]
    fn weft_leaves_serve_both_roles() {
        let p = with_eku(vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]);
        judged(p.clone(), Purpose::Client).unwrap();
        judged(p, Purpose::Server).unwrap();
    }

    #[test]
    fn an_unknown_critical_extension_is_refused() {
        let mut p = with_eku(vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]);
        let mut ext = CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![5, 0]);
        ext.set_criticality(true);
        p.custom_extensions = vec![ext];
        for purpose in [Purpose::Client, Purpose::Leaf] {
            let e = judged(p.clone(), purpose).expect_err("critical extension");
            assert!(
                matches!(&e, VerifyError::UnknownCriticalExtension { oid, .. } if oid == "1.3.6.1.4.1.99999.1"),
                "{e}"
            );
        }
        // The same extension, not critical, may be ignored.
        p.custom_extensions[0].set_criticality(false);
        judged(p, Purpose::Client).unwrap();
    }

    #[test]
    fn an_unknown_critical_extension_on_an_intermediate_is_refused() {
        let root = root("root");
        let mut params = ca_params("issuer", Some(0));
        let mut ext = CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 2], vec![5, 0]);
        ext.set_criticality(true);
        params.custom_extensions = vec![ext];
        let issuer = sub_ca("issuer", &root, Some(params));
        let mut p = leaf_params("web.demo");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let l = leaf(p, &issuer);
        let e = verify(
            &l,
            std::slice::from_ref(&issuer.der),
            std::slice::from_ref(&root.der),
            now(),
            Purpose::Client,
        )
        .expect_err("critical extension on the issuer");
        assert!(
            matches!(e, VerifyError::UnknownCriticalExtension { .. }),
            "{e}"
        );
    }
}
