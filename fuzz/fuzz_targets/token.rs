//! Token parsing: what the control plane does with the bytes of a Certify
//! request's token before and while verifying it (`jwt_shape`, the `kid`
//! lookup, `TokenVerifier::verify` with a fixed key) and what the proxy reads
//! from its own token unverified (`unverified_service_account`,
//! `unverified_bound_pod`). Property: a token that verifies names a valid
//! service account, and its audience includes Linkerd's.
//!
//! The key is fixed (fuzz/token-key.pem) so that seed tokens signed with it
//! (fuzz/corpus/token/) reach the claims checks.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use identity::token::{AUDIENCE, Revocations, TokenVerifier};
use libfuzzer_sys::fuzz_target;

const KEY_PEM: &str = include_str!("../token-key.pem");

struct Verifier {
    verifier: TokenVerifier,
    _revoked: tokio::sync::watch::Sender<HashMap<String, i64>>,
}

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let key = pki::KeyPair::from_pem(KEY_PEM).expect("fuzz/token-key.pem is a key");
        let revoked: HashMap<String, i64> = [("revoked-jti".to_string(), i64::MAX)].into();
        let (tx, rx) = tokio::sync::watch::channel(revoked);
        let verifier =
            TokenVerifier::with_revocations(&key, Duration::from_secs(60), Revocations::Shared(rx))
                .expect("a verifier for the fuzz key");
        Verifier {
            verifier,
            _revoked: tx,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = identity::token::jwt_shape(text);
    let _ = identity::token::unverified_service_account(text);
    let _ = identity::token::unverified_bound_pod(text);
    let v = &verifier().verifier;
    let _ = v.names_our_key(text);
    // A fixed instant inside the seed tokens' validity (2026-12-01).
    let now = time::OffsetDateTime::from_unix_timestamp(1_796_083_200).expect("a valid instant");
    if let Ok(claims) = v.verify(text.trim(), now) {
        let (ns, sa) = claims
            .service_account()
            .expect("a verified token names its account");
        assert!(!ns.is_empty() && !sa.is_empty());
        assert!(claims.aud.contains(AUDIENCE));
        assert!(!v.is_revoked(&claims.jti));
    }
});
