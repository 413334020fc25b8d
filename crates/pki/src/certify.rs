//! The pure half of a Certify client: the CSR a workload sends, and the
//! checks on what comes back before anyone uses it. The network half lives
//! with whoever asks (the proxy).

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::identity::Identity;
use crate::peer::{PeerIdentityError, peer_identity_in};
use crate::verify::{Purpose, VerifyError, verify};

#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error("cannot build the CSR for {identity}: {source}")]
    Csr {
        identity: String,
        #[source]
        source: rcgen::Error,
    },
    #[error(
        "it does not chain to the anchors in force ({0}); the identity service's issuer must descend from an anchor this workload trusts"
    )]
    Chain(#[source] VerifyError),
    #[error("it names no identity ({0})")]
    Name(#[source] PeerIdentityError),
    #[error("it names {got}, expected {expected}; the identity service issued for someone else")]
    OtherIdentity {
        got: Box<Identity>,
        expected: Box<Identity>,
    },
    #[error(
        "it does not carry the public key we sent; the identity service did not certify our key"
    )]
    OtherKey,
    #[error("its details cannot be read ({0})")]
    Unreadable(#[source] crate::cert::DerError),
}

/// A CSR for `identity` signed with `key`: CN and the one DNS SAN are the
/// identity, as the identity service's checks require.
pub fn csr_der(identity: &Identity, key: &KeyPair) -> Result<Vec<u8>, CertifyError> {
    let name = identity.to_string();
    let fail = |source| CertifyError::Csr {
        identity: identity.to_string(),
        source,
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, name.clone());
    params.subject_alt_names = vec![SanType::DnsName(name.try_into().map_err(fail)?)];
    Ok(params.serialize_request(key).map_err(fail)?.der().to_vec())
}

/// What a checked response says about the new leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub serial: String,
    pub not_after: OffsetDateTime,
}

/// Judges a Certify response: it must chain to our anchors now, name exactly
/// our identity, and carry our new public key.
pub fn check_response(
    leaf: &CertificateDer<'_>,
    chain: &[CertificateDer<'_>],
    anchors: &[CertificateDer<'_>],
    identity: &Identity,
    key: &KeyPair,
    now: OffsetDateTime,
) -> Result<Accepted, CertifyError> {
    verify(leaf, chain, anchors, now, Purpose::Leaf).map_err(CertifyError::Chain)?;
    let got = peer_identity_in(leaf, identity.control_plane_ns()).map_err(CertifyError::Name)?;
    if got != *identity {
        return Err(CertifyError::OtherIdentity {
            got: Box::new(got),
            expected: Box::new(identity.clone()),
        });
    }
    if !crate::key::key_matches_cert(key, leaf) {
        return Err(CertifyError::OtherKey);
    }
    let info = crate::info::CertInfo::from_der(leaf).map_err(CertifyError::Unreadable)?;
    Ok(Accepted {
        serial: info.serial,
        not_after: info.not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::create::{KeySpec, NewCert, Profile, Signer, create, issue_workload_leaf};

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
    fn csr_names_the_identity() {
        let key = KeyPair::generate().unwrap();
        let der = rustls_pki_types::CertificateSigningRequestDer::from(
            csr_der(&id("web"), &key).unwrap(),
        );
        let csr = rcgen::CertificateSigningRequestParams::from_der(&der).unwrap();
        assert_eq!(
            csr.params.subject_alt_names,
            vec![SanType::DnsName(id("web").to_string().try_into().unwrap())]
        );
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
        let ok = check_response(&good.der, &chain, &anchors, &id("web"), &key, now).unwrap();
        assert_eq!(ok.serial, good.serial);

        // Another identity.
        let other = issue_workload_leaf(&issuer, issuer.not_after, &key, &id("db"), now, day, skew)
            .unwrap();
        let e = check_response(&other.der, &chain, &anchors, &id("web"), &key, now).unwrap_err();
        assert!(matches!(e, CertifyError::OtherIdentity { .. }), "{e}");
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
        assert!(matches!(e, CertifyError::Chain(_)), "{e}");
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
