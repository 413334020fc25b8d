//! A certificate in force: the chain and key ready for rustls, and what
//! renewals, reports and metrics need to know of it. The proxy and the
//! control plane's own certificate loop hold the same type.

use std::sync::Arc;

use rcgen::KeyPair;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use crate::identity::Identity;
use crate::peer::{PeerIdentityError, peer_identity_in};

#[derive(Debug, thiserror::Error)]
pub enum InForceError {
    #[error("the certificate cannot be read (the chain is empty); it cannot be put in force")]
    EmptyChain,
    #[error("the certificate cannot be read ({0}); it cannot be put in force")]
    Unreadable(#[source] crate::cert::DerError),
    #[error("the certificate names no identity ({0})")]
    Name(#[source] PeerIdentityError),
    #[error("the private key cannot be used for TLS ({0})")]
    Key(#[source] rustls::Error),
    #[error("the private key does not belong to the certificate; pass the key created with it")]
    KeyMismatch,
}

pub struct CertInForce {
    /// Leaf first, then its intermediates; with the signing key.
    pub certified: Arc<CertifiedKey>,
    pub identity: Identity,
    pub serial: String,
    /// SHA-256 of the public key: a new one on every renewal.
    pub spki: String,
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for CertInForce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("CertInForce")
            .field("identity", &self.identity)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertInForce {
    /// `chain`: the leaf, then its intermediates. `control_plane_ns` reads
    /// a SPIFFE-only leaf (see [`peer_identity_in`]).
    pub fn new(
        key: &KeyPair,
        chain: Vec<CertificateDer<'static>>,
        control_plane_ns: &str,
    ) -> Result<Self, InForceError> {
        let leaf = chain.first().ok_or(InForceError::EmptyChain)?;
        if !crate::key::key_matches_cert(key, leaf) {
            return Err(InForceError::KeyMismatch);
        }
        let identity = peer_identity_in(leaf, control_plane_ns).map_err(InForceError::Name)?;
        let info = crate::info::CertInfo::from_der(leaf).map_err(InForceError::Unreadable)?;
        let signing = rustls::crypto::aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                key.serialize_der(),
            )))
            .map_err(InForceError::Key)?;
        Ok(Self {
            certified: Arc::new(CertifiedKey::new(chain, signing)),
            identity,
            serial: info.serial,
            spki: info.spki_sha256,
            not_after: info.not_after,
        })
    }

    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.certified.cert[0]
    }

    /// The leaf and its intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    pub fn is_valid(&self, now: OffsetDateTime) -> bool {
        self.not_after > now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{leaf_params, root};

    #[test]
    fn holds_a_leaf_with_its_key() {
        let ca = root("root");
        let name = "web.demo.serviceaccount.identity.weft.cluster.local";
        let key = KeyPair::generate().unwrap();
        let der = leaf_params(name)
            .signed_by(&key, &ca.issuer())
            .unwrap()
            .der()
            .clone();
        let c = CertInForce::new(&key, vec![der.clone(), ca.der.clone()], "weft").unwrap();
        assert_eq!(c.identity.to_string(), name);
        assert_eq!(c.leaf(), &der);
        assert_eq!(c.chain().len(), 2);
        assert!(c.is_valid(OffsetDateTime::now_utc()));
        let other = KeyPair::generate().unwrap();
        assert!(matches!(
            CertInForce::new(&other, vec![der], "weft"),
            Err(InForceError::KeyMismatch)
        ));
    }
}
