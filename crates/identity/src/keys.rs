//! Which rate-limit key a Certify request falls under: claimed (from the
//! request as sent, unverified: only to look a bucket up before costly
//! work) and proven (from the verified proof: the bucket that is spent).

use std::net::IpAddr;

use pki::CertificateDer;
use serde::Deserialize;

use crate::limit::ClientKey;
use crate::proof::ProofKind;

/// The key the request claims, WITHOUT verifying anything. Never inserted
/// into a table: an attacker's strings are only looked up.
pub fn claimed(
    token: &[u8],
    chain: Option<&[CertificateDer<'static>]>,
    control_plane_ns: &str,
    peer: Option<IpAddr>,
) -> Option<ClientKey> {
    if let Some(leaf) = chain.and_then(<[_]>::first) {
        // The proof verifiers try the leaf first too.
        if let Ok(identity) = pki::peer_identity_in(leaf, control_plane_ns) {
            return Some(ClientKey::Renewal(identity, peer));
        }
    }
    let text = std::str::from_utf8(token).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    if let Some(pod) = crate::token::unverified_bound_pod(text) {
        return Some(ClientKey::Pod(format!("{}/{}", pod.namespace, pod.name)));
    }
    #[derive(Deserialize)]
    struct Jti {
        jti: String,
    }
    match jsonwebtoken::dangerous::insecure_decode_claims::<Jti>(text) {
        Ok(c) => Some(ClientKey::JoinToken(c.jti)),
        Err(_) => Some(ClientKey::Token(pki::cert::sha256_hex(text.as_bytes()))),
    }
}

/// The key a verified proof is limited under: the token's own id or bound
/// pod, a renewal's identity and address, never the ServiceAccount alone,
/// which every replica shares.
pub fn proven(
    kind: &ProofKind,
    identity: &pki::Identity,
    token: &[u8],
    peer: Option<IpAddr>,
) -> ClientKey {
    match kind {
        ProofKind::Token { jti } => ClientKey::JoinToken(jti.clone()),
        ProofKind::Renewal { .. } => ClientKey::Renewal(identity.clone(), peer),
        ProofKind::ServiceAccountToken { pod: Some(pod) } => ClientKey::Pod(pod.clone()),
        ProofKind::ServiceAccountToken { pod: None } => {
            let text = std::str::from_utf8(token).unwrap_or_default().trim();
            ClientKey::Token(pki::cert::sha256_hex(text.as_bytes()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TokenSigner;
    use std::time::Duration;

    fn web() -> pki::Identity {
        "web.demo.serviceaccount.identity.weft.cluster.local"
            .parse()
            .unwrap()
    }

    #[test]
    fn a_join_token_claims_the_key_its_proof_proves() {
        let signer = TokenSigner::new(&rcgen::KeyPair::generate().unwrap()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let (tok, claims) = signer
            .create("demo", "web", Duration::from_secs(60), now)
            .unwrap();
        let claimed = claimed(tok.as_bytes(), None, "weft", None).unwrap();
        let proven = proven(
            &ProofKind::Token { jti: claims.jti },
            &web(),
            tok.as_bytes(),
            None,
        );
        assert_eq!(claimed, proven);
        assert!(matches!(proven, ClientKey::JoinToken(_)));
    }

    #[test]
    fn pods_and_unbound_tokens_are_their_own_clients_never_the_service_account() {
        let pod = ProofKind::ServiceAccountToken {
            pod: Some("demo/web-1".into()),
        };
        assert_eq!(
            proven(&pod, &web(), b"t", None),
            ClientKey::Pod("demo/web-1".into())
        );
        let (a, b) = (
            ProofKind::ServiceAccountToken { pod: None },
            ProofKind::ServiceAccountToken { pod: None },
        );
        assert_ne!(
            proven(&a, &web(), b"one", None),
            proven(&b, &web(), b"two", None)
        );
        assert_eq!(
            claimed(b"one", None, "weft", None),
            Some(proven(&a, &web(), b"one", None))
        );
    }

    #[test]
    fn a_pod_bound_token_claims_its_pod() {
        let claims = serde_json::json!({
            "sub": "system:serviceaccount:demo:web",
            "kubernetes.io": {"namespace": "demo", "pod": {"name": "web-1", "uid": "u-1"}},
        });
        let tok = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"test"),
        )
        .unwrap();
        assert_eq!(
            claimed(tok.as_bytes(), None, "weft", None),
            Some(ClientKey::Pod("demo/web-1".into()))
        );
    }

    #[test]
    fn garbage_claims_a_key_and_nothing_claims_none() {
        assert!(matches!(
            claimed(b"garbage.a.b", None, "weft", None),
            Some(ClientKey::Token(_))
        ));
        assert_eq!(claimed(b"", None, "weft", None), None);
        assert_eq!(claimed(&[0xff, 0xfe], None, "weft", None), None);
    }
}
