//! Trust-anchor bundles: several anchors in one PEM file, deduplicated by
//! fingerprint, so an anchor rotation can hold old and new side by side.

use std::path::Path;

use rustls_pki_types::CertificateDer;

use crate::cert::{CertError, fingerprint, parse_certs, to_pem};
use crate::info::CertInfo;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error(
        "no anchor in the bundle has fingerprint {0}; run `weft certs bundle list` to see them"
    )]
    NotFound(String),
    #[error("fingerprint prefix {0} matches {1} anchors; give more of it")]
    Ambiguous(String, usize),
    #[error(
        "removing {0} would leave the bundle empty; a mesh with no anchor trusts nothing — add the new anchor first"
    )]
    WouldBeEmpty(String),
    #[error(
        "{0:?} is not a fingerprint; expected SHA-256 hex as `weft certs bundle list` prints it"
    )]
    BadFingerprint(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    certs: Vec<CertificateDer<'static>>,
}

impl Bundle {
    /// Reads a bundle, dropping repeated anchors (same fingerprint).
    pub fn load(path: &Path) -> Result<Self, BundleError> {
        let bytes = std::fs::read(path).map_err(|source| CertError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &bytes)
    }

    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, BundleError> {
        let mut b = Self::default();
        for c in parse_certs(path, bytes)? {
            b.add(c);
        }
        Ok(b)
    }

    pub fn from_certs(certs: impl IntoIterator<Item = CertificateDer<'static>>) -> Self {
        let mut b = Self::default();
        for c in certs {
            b.add(c);
        }
        b
    }

    /// Adds an anchor; false when it was already there.
    pub fn add(&mut self, cert: CertificateDer<'static>) -> bool {
        let fp = fingerprint(&cert);
        if self.certs.iter().any(|c| fingerprint(c) == fp) {
            return false;
        }
        self.certs.push(cert);
        true
    }

    /// Removes the one anchor whose fingerprint starts with `fp` (hex, colons
    /// and case ignored); refuses to leave the bundle empty.
    pub fn remove(&mut self, fp: &str) -> Result<CertificateDer<'static>, BundleError> {
        let want: String = fp
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_lowercase();
        if want.len() < 8 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BundleError::BadFingerprint(fp.to_string()));
        }
        let hits: Vec<usize> = (0..self.certs.len())
            .filter(|i| fingerprint(&self.certs[*i]).starts_with(&want))
            .collect();
        match hits.as_slice() {
            [] => Err(BundleError::NotFound(fp.to_string())),
            [_] if self.certs.len() == 1 => Err(BundleError::WouldBeEmpty(fp.to_string())),
            [i] => Ok(self.certs.remove(*i)),
            many => Err(BundleError::Ambiguous(fp.to_string(), many.len())),
        }
    }

    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    pub fn fingerprints(&self) -> Vec<String> {
        self.certs.iter().map(|c| fingerprint(c)).collect()
    }

    pub fn list(&self) -> Vec<CertInfo> {
        self.certs
            .iter()
            .filter_map(|c| CertInfo::from_der(c).ok())
            .collect()
    }

    pub fn to_pem(&self) -> String {
        to_pem(&self.certs)
    }
}
