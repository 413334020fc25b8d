//! Who a certificate names: the one place a peer's SAN becomes an
//! [`Identity`], so no caller matches SAN text itself.
//!
//! weft and Linkerd leaves carry the DNS identity first (Linkerd peers take
//! the first SAN as the client identity); a leaf with no DNS SAN may still
//! name an in-mesh workload by its SPIFFE URI SAN.

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use crate::cert::{DerError, parse_x509};
use crate::identity::{DEFAULT_CONTROL_PLANE_NS, Identity, IdentityError, SpiffeId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("the certificate cannot be parsed as X.509 ({0}); it names nobody")]
    Unparseable(#[source] DerError),
    #[error(
        "the certificate has no DNS or SPIFFE subject alternative name; a mesh leaf names its identity as its first SAN (DNS:<sa>.<ns>.serviceaccount.identity.<cp-ns>.<trust-domain>)"
    )]
    NoName,
    #[error(
        "its DNS SAN {san:?} is not a mesh identity ({source}); present a leaf issued by the mesh's identity service"
    )]
    Dns {
        san: String,
        #[source]
        source: IdentityError,
    },
    #[error(
        "its SPIFFE SAN {san:?} is not a mesh workload ({source}); present a leaf issued by the mesh's identity service"
    )]
    Spiffe {
        san: String,
        #[source]
        source: IdentityError,
    },
}

/// The identity a peer's leaf names, for a mesh run from the default
/// control-plane namespace. See [`peer_identity_in`].
pub fn peer_identity(cert: &CertificateDer<'_>) -> Result<Identity, PeerIdentityError> {
    peer_identity_in(cert, DEFAULT_CONTROL_PLANE_NS)
}

/// The identity a peer's leaf names: its first DNS SAN, which must be a mesh
/// identity; else its first URI SAN, which must be the SPIFFE ID of a
/// workload (mapped into the mesh run from `control_plane_ns`). A DNS SAN
/// that is not an identity is refused, not skipped: the peer meant it.
pub fn peer_identity_in(
    cert: &CertificateDer<'_>,
    control_plane_ns: &str,
) -> Result<Identity, PeerIdentityError> {
    let c = parse_x509(cert).map_err(PeerIdentityError::Unparseable)?;
    let mut dns = None;
    let mut uri = None;
    for ext in c.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(d) if dns.is_none() => dns = Some(d.to_string()),
                    GeneralName::URI(u) if uri.is_none() => uri = Some(u.to_string()),
                    _ => {}
                }
            }
        }
    }
    if let Some(san) = dns {
        return san
            .parse()
            .map_err(|source| PeerIdentityError::Dns { san, source });
    }
    let san = uri.ok_or(PeerIdentityError::NoName)?;
    san.parse::<SpiffeId>()
        .and_then(|s| s.to_identity(control_plane_ns))
        .map_err(|source| PeerIdentityError::Spiffe { san, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{leaf, leaf_params, root};
    use rcgen::SanType;

    const WEB: &str = "web.demo.serviceaccount.identity.weft.cluster.local";

    #[test]
    fn reads_the_dns_identity_first() {
        let ca = root("root");
        let mut p = leaf_params(WEB);
        p.subject_alt_names.push(SanType::URI(
            "spiffe://cluster.local/ns/other/sa/x".try_into().unwrap(),
        ));
        let id = peer_identity(&leaf(p, &ca)).unwrap();
        assert_eq!(id.to_string(), WEB);
    }

    #[test]
    fn falls_back_to_the_spiffe_id() {
        let ca = root("root");
        let mut p = leaf_params(WEB);
        p.subject_alt_names = vec![SanType::URI(
            "spiffe://cluster.local/ns/demo/sa/web".try_into().unwrap(),
        )];
        let cert = leaf(p, &ca);
        assert_eq!(peer_identity(&cert).unwrap().to_string(), WEB);
        assert_eq!(
            peer_identity_in(&cert, "linkerd").unwrap().to_string(),
            "web.demo.serviceaccount.identity.linkerd.cluster.local"
        );
    }

    #[test]
    fn refuses_what_names_nobody() {
        let ca = root("root");
        let e = peer_identity(&leaf(leaf_params("example.com"), &ca)).unwrap_err();
        assert!(matches!(e, PeerIdentityError::Dns { .. }), "{e}");
        assert!(e.to_string().contains("example.com"), "{e}");

        let mut p = leaf_params(WEB);
        p.subject_alt_names = vec![SanType::URI(
            "spiffe://example.org/service".try_into().unwrap(),
        )];
        let e = peer_identity(&leaf(p, &ca)).unwrap_err();
        assert!(matches!(e, PeerIdentityError::Spiffe { .. }), "{e}");

        let mut p = leaf_params(WEB);
        p.subject_alt_names = vec![SanType::IpAddress("10.0.0.1".parse().unwrap())];
        assert_eq!(
            peer_identity(&leaf(p, &ca)).unwrap_err(),
            PeerIdentityError::NoName
        );
        assert!(matches!(
            peer_identity(&CertificateDer::from(vec![0x30, 0x00])),
            Err(PeerIdentityError::Unparseable(_))
        ));
    }
}
