//! The anchors the proxy trusts, live: the bootstrap file at start, then each
//! bundle the control plane pushes, applied to new handshakes without a
//! restart. A bundle under which the proxy's own leaf or the control plane's
//! certificate would not verify is refused (and reported), never applied.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use time::OffsetDateTime;
use tokio::sync::watch;

/// A bundle's version as the control plane numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub generation: u64,
    pub sha256: String,
}

/// The anchors in force, with verifiers built from them.
pub struct Trust {
    /// None: the bootstrap file, before any bundle was pushed.
    pub version: Option<Version>,
    pub anchors: Vec<CertificateDer<'static>>,
    pub pem: String,
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("version", &self.version)
            .field("anchors", &self.anchors.len())
            .finish_non_exhaustive()
    }
}

pub type TrustRx = watch::Receiver<Arc<Trust>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleRefused {
    #[error("the bundle holds no anchors; keeping the anchors in force")]
    Empty,
    #[error("the bundle does not parse ({0}); keeping the anchors in force")]
    Unparseable(String),
    #[error(
        "generation {got} is older than the bundle in force (generation {have}); a control plane must never go backwards: check its state directory"
    )]
    Older { have: u64, got: u64 },
    #[error(
        "generation {generation} arrived with other content than the bundle in force under that generation; a control plane must never reuse a generation: check its state directory"
    )]
    Reused { generation: u64 },
    #[error(
        "this proxy's certificate (serial {serial}) would not verify under it ({why}); renew from an issuer under the new anchors first, then remove the old anchor"
    )]
    OwnLeaf { serial: String, why: String },
    #[error(
        "the control plane's certificate would not verify under it ({0}); keep the anchor of the control plane's issuer in the bundle"
    )]
    ControlPlane(String),
}

impl BundleRefused {
    /// A metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Unparseable(_) => "unparseable",
            Self::Older { .. } => "older",
            Self::Reused { .. } => "reused_generation",
            Self::OwnLeaf { .. } => "own_leaf",
            Self::ControlPlane(_) => "control_plane",
        }
    }
}

impl Trust {
    pub fn new(version: Option<Version>, pem: &str) -> Result<Self, BundleRefused> {
        if pem.trim().is_empty() {
            return Err(BundleRefused::Empty);
        }
        let anchors = pki::parse_certs(std::path::Path::new("bundle"), pem.as_bytes())
            .map_err(|e| BundleRefused::Unparseable(e.to_string()))?;
        if anchors.is_empty() {
            return Err(BundleRefused::Empty);
        }
        let mut roots = RootCertStore::empty();
        for a in &anchors {
            roots
                .add(a.clone())
                .map_err(|e| BundleRefused::Unparseable(e.to_string()))?;
        }
        let roots = Arc::new(roots);
        let provider = crate::tls::provider();
        let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| BundleRefused::Unparseable(e.to_string()))?;
        let server = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| BundleRefused::Unparseable(e.to_string()))?;
        Ok(Self {
            version,
            anchors,
            pem: pem.to_string(),
            client,
            server,
        })
    }

    /// The anchor (fingerprint) a chain ends at under these anchors.
    pub fn anchor_of(&self, chain: &[CertificateDer<'_>]) -> Option<String> {
        let (leaf, rest) = chain.split_first()?;
        pki::verify::verify_at(leaf, rest, &self.anchors, None, pki::Purpose::Leaf)
            .ok()
            .and_then(|v| v.links.last().map(|(_, fp)| fp.clone()))
    }
}

/// Judges a pushed bundle against what is in force (`own`: the proxy's
/// chain and serial): pure, so each refusal is unit-tested.
pub fn judge(
    version: Version,
    pem: &str,
    current: Option<&Version>,
    own: Option<(&[CertificateDer<'_>], &str)>,
    cp_chain_pem: &str,
    cp_identity: &pki::Identity,
    now: OffsetDateTime,
) -> Result<Trust, BundleRefused> {
    if let Some(c) = current {
        if version.generation < c.generation {
            return Err(BundleRefused::Older {
                have: c.generation,
                got: version.generation,
            });
        }
        if version.generation == c.generation && version.sha256 != c.sha256 {
            return Err(BundleRefused::Reused {
                generation: version.generation,
            });
        }
    }
    let trust = Trust::new(Some(version), pem)?;
    if let Some((chain, serial)) = own
        && let Some((leaf, rest)) = chain.split_first()
    {
        pki::verify(leaf, rest, &trust.anchors, now, pki::Purpose::Leaf).map_err(|e| {
            BundleRefused::OwnLeaf {
                serial: serial.to_string(),
                why: e.to_string(),
            }
        })?;
    }
    let cp = pki::parse_certs(
        std::path::Path::new("control plane"),
        cp_chain_pem.as_bytes(),
    )
    .map_err(|e| BundleRefused::ControlPlane(e.to_string()))?;
    let (leaf, rest) = cp.split_first().ok_or_else(|| {
        BundleRefused::ControlPlane("the control plane sent no certificate to check".into())
    })?;
    pki::verify(leaf, rest, &trust.anchors, now, pki::Purpose::Leaf)
        .map_err(|e| BundleRefused::ControlPlane(e.to_string()))?;
    match pki::peer_identity_in(leaf, cp_identity.control_plane_ns()) {
        Ok(id) if id == *cp_identity => {}
        Ok(id) => {
            return Err(BundleRefused::ControlPlane(format!(
                "its certificate does not name {cp_identity} (it names {id})"
            )));
        }
        Err(e) => return Err(BundleRefused::ControlPlane(e.to_string())),
    }
    Ok(trust)
}

/// The verifiers built from the anchors in force, read at each handshake
/// (see [`pki::tls::Live`]).
#[derive(Debug)]
pub struct TrustNow(pub TrustRx);

impl pki::tls::InForce for TrustNow {
    fn client(&self) -> Arc<dyn ClientCertVerifier> {
        self.0.borrow().client.clone()
    }
    fn server(&self) -> Arc<dyn ServerCertVerifier> {
        self.0.borrow().server.clone()
    }
}

#[cfg(test)]
#[path = "trust_tests.rs"]
mod tests;
