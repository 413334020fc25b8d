//! weft's certificate toolkit: identity names, anchors, issuers, workload
//! leaves, bundles and verification with reasons.

pub mod bundle;
pub mod cert;
pub mod certify;
pub mod check;
pub mod create;
pub mod files;
pub mod identity;
pub mod in_force;
pub mod info;
pub mod key;
pub mod mesh_tls;
pub mod peer;
pub mod refresh;
pub mod tls;
pub mod usage;
pub mod verify;

pub use cert::{CertError, DerError, fingerprint, load_certs, parse_certs, parse_x509};
pub use identity::{Identity, IdentityError, SpiffeId};
pub use in_force::{CertInForce, InForceError};
pub use key::{KeyAlgorithm, KeyError, load_key, parse_key};
pub use peer::{PeerIdentityError, peer_identity, peer_identity_in};
pub use rcgen::KeyPair;
pub use rustls_pki_types::CertificateDer;
pub use verify::{Purpose, VerifiedChain, VerifyError, verify};

#[cfg(any(test, feature = "testutil"))]
pub mod testutil;
