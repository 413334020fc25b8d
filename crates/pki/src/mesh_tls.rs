//! The TLS 1.3 cipher suites and key exchange groups of the connections
//! between proxies, in order of preference. The default is the provider's:
//! hybrid post-quantum X25519MLKEM768 first, AES-256-GCM first. A site can
//! narrow or reorder them (a compliance list, or the classical handshake a
//! benchmark compares with); a name this build does not have is refused, so
//! a typo never silently falls back to the defaults.

use std::fmt;
use std::sync::Arc;

use rustls::crypto::aws_lc_rs::{ALL_CIPHER_SUITES, ALL_KX_GROUPS, default_provider};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::{CipherSuite, NamedGroup, SupportedCipherSuite};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshTlsError {
    #[error("{name:?} is not a TLS 1.3 cipher suite; expected one or more of {known}")]
    UnknownCipherSuite { name: String, known: String },
    #[error("{name:?} is not a key exchange group; expected one or more of {known}")]
    UnknownGroup { name: String, known: String },
    #[error("{what}: {name} is listed twice; list each once, most preferred first")]
    Duplicate { what: &'static str, name: String },
    #[error("{what} is empty; list at least one, e.g. {example}")]
    Empty {
        what: &'static str,
        example: &'static str,
    },
}

/// What the proxies offer and accept, most preferred first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshTls {
    cipher_suites: Vec<CipherSuite>,
    key_exchange: Vec<NamedGroup>,
}

const SUITES: &str = "cipher suites";
const GROUPS: &str = "key exchange groups";

impl Default for MeshTls {
    fn default() -> Self {
        let p = default_provider();
        Self {
            cipher_suites: p
                .cipher_suites
                .iter()
                .filter(|s| s.tls13().is_some())
                .map(SupportedCipherSuite::suite)
                .collect(),
            key_exchange: p.kx_groups.iter().map(|g| g.name()).collect(),
        }
    }
}

impl MeshTls {
    /// These, with the cipher suites replaced by a comma-separated list.
    pub fn with_cipher_suites(mut self, list: &str) -> Result<Self, MeshTlsError> {
        let unknown = |name, known| MeshTlsError::UnknownCipherSuite { name, known };
        self.cipher_suites = pick(
            list,
            SUITES,
            &suite_names(),
            unknown,
            "TLS_AES_128_GCM_SHA256",
        )?;
        Ok(self)
    }

    /// These, with the key exchange groups replaced by a comma-separated list.
    pub fn with_key_exchange(mut self, list: &str) -> Result<Self, MeshTlsError> {
        let unknown = |name, known| MeshTlsError::UnknownGroup { name, known };
        self.key_exchange = pick(
            list,
            GROUPS,
            &group_names(),
            unknown,
            "X25519MLKEM768,X25519",
        )?;
        Ok(self)
    }

    /// The cipher suites by IANA name, most preferred first.
    pub fn cipher_suite_names(&self) -> Vec<String> {
        self.cipher_suites.iter().map(suite_name).collect()
    }

    /// The key exchange groups by name, most preferred first.
    pub fn key_exchange_names(&self) -> Vec<String> {
        self.key_exchange.iter().map(group_name).collect()
    }

    /// The provider that offers and accepts exactly these, in this order.
    pub fn provider(&self) -> Arc<CryptoProvider> {
        let cipher_suites = self
            .cipher_suites
            .iter()
            .filter_map(|c| ALL_CIPHER_SUITES.iter().find(|s| s.suite() == *c).copied())
            .collect();
        let kx_groups: Vec<&'static dyn SupportedKxGroup> = self
            .key_exchange
            .iter()
            .filter_map(|n| ALL_KX_GROUPS.iter().find(|g| g.name() == *n).copied())
            .collect();
        Arc::new(CryptoProvider {
            cipher_suites,
            kx_groups,
            ..default_provider()
        })
    }
}

/// `cipher-suites=A,B key-exchange=C,D`, as the proxy prints its settings.
impl fmt::Display for MeshTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cipher-suites={} key-exchange={}",
            self.cipher_suite_names().join(","),
            self.key_exchange_names().join(",")
        )
    }
}

/// The IANA name (`TLS_AES_128_GCM_SHA256`), as OpenSSL and RFC 8446 write it.
fn suite_name(c: &CipherSuite) -> String {
    c.as_str()
        .map_or_else(|| format!("{c:?}"), |s| s.replacen("TLS13_", "TLS_", 1))
}

fn group_name(g: &NamedGroup) -> String {
    g.as_str().map_or_else(|| format!("{g:?}"), str::to_string)
}

fn suite_names() -> Vec<(String, CipherSuite)> {
    ALL_CIPHER_SUITES
        .iter()
        .filter(|s| s.tls13().is_some())
        .map(|s| (suite_name(&s.suite()), s.suite()))
        .collect()
}

fn group_names() -> Vec<(String, NamedGroup)> {
    ALL_KX_GROUPS
        .iter()
        .map(|g| (group_name(&g.name()), g.name()))
        .collect()
}

/// The named entries of `known` in the order given; names match without
/// regard to case, and a suite may also be written `TLS13_…`.
fn pick<T: Copy + PartialEq>(
    list: &str,
    what: &'static str,
    known: &[(String, T)],
    unknown: impl Fn(String, String) -> MeshTlsError,
    example: &'static str,
) -> Result<Vec<T>, MeshTlsError> {
    let mut out: Vec<T> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let wanted = name.to_ascii_uppercase().replacen("TLS13_", "TLS_", 1);
        let Some((canonical, value)) = known.iter().find(|(k, _)| k.to_ascii_uppercase() == wanted)
        else {
            let known = known
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(unknown(name.to_string(), known));
        };
        if out.contains(value) {
            return Err(MeshTlsError::Duplicate {
                what,
                name: canonical.clone(),
            });
        }
        out.push(*value);
    }
    if out.is_empty() {
        return Err(MeshTlsError::Empty { what, example });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_providers_post_quantum_first() {
        let d = MeshTls::default();
        assert_eq!(
            d.to_string(),
            "cipher-suites=TLS_AES_256_GCM_SHA384,TLS_AES_128_GCM_SHA256,TLS_CHACHA20_POLY1305_SHA256 \
             key-exchange=X25519MLKEM768,X25519,secp256r1,secp384r1"
        );
        let p = d.provider();
        assert_eq!(p.cipher_suites.len(), 3);
        assert_eq!(p.kx_groups[0].name(), NamedGroup::X25519MLKEM768);
    }

    #[test]
    fn lists_narrow_and_order_what_is_offered() {
        let t = MeshTls::default()
            .with_cipher_suites(" tls13_aes_128_gcm_sha256 ,TLS_AES_256_GCM_SHA384")
            .unwrap()
            .with_key_exchange("x25519,X25519MLKEM768")
            .unwrap();
        assert_eq!(
            t.to_string(),
            "cipher-suites=TLS_AES_128_GCM_SHA256,TLS_AES_256_GCM_SHA384 key-exchange=X25519,X25519MLKEM768"
        );
        let p = t.provider();
        let suites: Vec<_> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(
            suites,
            [
                CipherSuite::TLS13_AES_128_GCM_SHA256,
                CipherSuite::TLS13_AES_256_GCM_SHA384
            ]
        );
        let groups: Vec<_> = p.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(groups, [NamedGroup::X25519, NamedGroup::X25519MLKEM768]);
    }

    #[test]
    fn bad_lists_are_refused_naming_what_is_known() {
        let e = MeshTls::default()
            .with_cipher_suites("TLS_AES_128_CCM_SHA256")
            .unwrap_err();
        assert!(matches!(e, MeshTlsError::UnknownCipherSuite { .. }), "{e}");
        assert!(
            e.to_string().contains("TLS_CHACHA20_POLY1305_SHA256"),
            "{e}"
        );
        // A TLS 1.2 suite is not offered between proxies.
        let e = MeshTls::default().with_cipher_suites("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256");
        assert!(matches!(e, Err(MeshTlsError::UnknownCipherSuite { .. })));
        let e = MeshTls::default()
            .with_key_exchange("X25519,ffdhe2048")
            .unwrap_err();
        assert!(matches!(e, MeshTlsError::UnknownGroup { .. }), "{e}");
        assert!(e.to_string().contains("\"ffdhe2048\""), "{e}");
        assert!(e.to_string().contains("secp384r1"), "{e}");
        let e = MeshTls::default()
            .with_key_exchange("x25519,X25519")
            .unwrap_err();
        assert_eq!(
            e,
            MeshTlsError::Duplicate {
                what: GROUPS,
                name: "X25519".into()
            }
        );
        let e = MeshTls::default().with_cipher_suites(" , ").unwrap_err();
        assert!(matches!(e, MeshTlsError::Empty { what: SUITES, .. }), "{e}");
    }
}
