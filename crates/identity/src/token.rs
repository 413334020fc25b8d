//! Join tokens: short-lived, revocable JWTs that prove a workload's identity
//! the first time it asks for a certificate (and after its leaf has expired).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The audience Linkerd's identity service expects of projected SA tokens.
pub const AUDIENCE: &str = "identity.l5d.io";
const ISSUER: &str = "weft";
const SUB_PREFIX: &str = "system:serviceaccount:";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not a JWT ({0}); pass the file `weft token create` wrote")]
    Malformed(String),
    #[error(
        "token signature does not verify: it was not made by this control plane's key (another state dir?); create one with `weft token create`"
    )]
    BadSignature,
    #[error("token audience is not {AUDIENCE}")]
    Audience,
    #[error(
        "token expired at {exp} (now {now}, {skew}s skew allowed); create a new one with `weft token create`"
    )]
    Expired { exp: String, now: String, skew: u64 },
    #[error("token is not valid before {nbf} (now {now}); check the clocks")]
    NotYetValid { nbf: String, now: String },
    #[error("token {jti} was revoked; create a new one with `weft token create`")]
    Revoked { jti: String },
    #[error("token subject {0:?} is not system:serviceaccount:<namespace>:<service-account>")]
    Subject(String),
}

/// Why join tokens cannot be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("{0}")]
    Key(#[source] jsonwebtoken::errors::Error),
    #[error("no randomness")]
    Randomness,
    #[error("{0}")]
    Encode(#[source] jsonwebtoken::errors::Error),
}

/// Why the revocation list cannot be read (a missing file is an empty list).
#[derive(Debug, thiserror::Error)]
pub enum RevokedError {
    #[error("{0}")]
    Read(#[source] std::io::Error),
    #[error("{0}")]
    Parse(#[source] serde_json::Error),
}

/// RFC 7519 allows `aud` as one string or an array; Kubernetes writes an
/// array, weft one string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, aud: &str) -> bool {
        match self {
            Self::One(a) => a == aud,
            Self::Many(v) => v.iter().any(|a| a == aud),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: Audience,
    pub sub: String,
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

impl Claims {
    /// `(namespace, service account)` from `system:serviceaccount:NS:SA`.
    pub fn service_account(&self) -> Result<(&str, &str), TokenError> {
        self.sub
            .strip_prefix(SUB_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
            .ok_or_else(|| TokenError::Subject(self.sub.clone()))
    }
}

/// `(namespace, service account)` named by a token, WITHOUT verifying it:
/// only for a proxy to learn whom it is about to claim to be. The control
/// plane verifies every token it is shown.
pub fn unverified_service_account(token: &str) -> Option<(String, String)> {
    let claims: Claims = jsonwebtoken::dangerous::insecure_decode_claims(token.trim()).ok()?;
    claims
        .service_account()
        .ok()
        .map(|(ns, sa)| (ns.to_string(), sa.to_string()))
}

/// Whether `token` has a JWT's shape (a decodable header). Anything else
/// is refused before it costs the API server a TokenReview.
pub fn jwt_shape(token: &str) -> Result<(), String> {
    jsonwebtoken::decode_header(token.trim())
        .map(|_| ())
        .map_err(|e| format!("not a JWT ({e})"))
}

/// The pod a Kubernetes ServiceAccount token says it is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BoundPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// The pod a ServiceAccount token names, WITHOUT verifying it: only to
/// explain why the API server refused it (its pod is gone); never to grant.
pub fn unverified_bound_pod(token: &str) -> Option<BoundPod> {
    #[derive(Deserialize)]
    struct PodRef {
        name: String,
        uid: String,
    }
    #[derive(Deserialize)]
    struct KubeIo {
        namespace: String,
        pod: Option<PodRef>,
    }
    #[derive(Deserialize)]
    struct KubeClaims {
        #[serde(rename = "kubernetes.io")]
        kube: KubeIo,
    }
    let claims: KubeClaims = jsonwebtoken::dangerous::insecure_decode_claims(token.trim()).ok()?;
    let pod = claims.kube.pod?;
    Some(BoundPod {
        namespace: claims.kube.namespace,
        name: pod.name,
        uid: pod.uid,
    })
}

fn fmt_unix(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .map(pki::info::rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Signs join tokens with the state dir's ES256 key.
pub struct TokenSigner {
    key: EncodingKey,
    kid: String,
}

impl TokenSigner {
    pub fn new(key: &rcgen::KeyPair) -> Result<Self, SignerError> {
        let key_pem = key.serialize_pem();
        Ok(Self {
            key: EncodingKey::from_ec_pem(key_pem.as_bytes()).map_err(SignerError::Key)?,
            kid: key_id(key),
        })
    }

    /// A token for `namespace/service_account`, valid from now for `ttl`.
    pub fn create(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<(String, Claims), SignerError> {
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).map_err(|_| SignerError::Randomness)?;
        let iat = now.unix_timestamp();
        let claims = Claims {
            iss: ISSUER.into(),
            aud: Audience::One(AUDIENCE.into()),
            sub: format!("{SUB_PREFIX}{namespace}:{service_account}"),
            jti: pki::cert::hex(&jti),
            iat,
            nbf: iat,
            exp: iat + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let token =
            jsonwebtoken::encode(&header, &claims, &self.key).map_err(SignerError::Encode)?;
        Ok((token, claims))
    }
}

/// Names the signing key: SHA-256 of its public key.
pub fn key_id(key: &rcgen::KeyPair) -> String {
    use rcgen::PublicKeyData;
    pki::cert::sha256_hex(&key.subject_public_key_info())
}

/// Verifies join tokens: signature, audience, time (with skew), revocation.
pub struct TokenVerifier {
    key: DecodingKey,
    kid: String,
    skew: Duration,
    revocations: Revocations,
}

impl TokenVerifier {
    pub fn new(
        key: &rcgen::KeyPair,
        skew: Duration,
        revoked_file: PathBuf,
    ) -> Result<Self, String> {
        Self::with_revocations(key, skew, Revocations::new(revoked_file))
    }

    /// A verifier whose revocation list comes from `revocations` (a file, or
    /// a list another task keeps current, as the Kubernetes Secret's watch).
    pub fn with_revocations(
        key: &rcgen::KeyPair,
        skew: Duration,
        revocations: Revocations,
    ) -> Result<Self, String> {
        Ok(Self {
            key: DecodingKey::from_ec_pem(key.public_key_pem().as_bytes())
                .map_err(|e| e.to_string())?,
            kid: key_id(key),
            skew,
            revocations,
        })
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revocations.is_revoked(jti)
    }

    /// Whether `token` names this control plane's signing key in its `kid`
    /// header: how a join token is told apart from other JWTs (Kubernetes
    /// ServiceAccount tokens) before anything is verified.
    pub fn names_our_key(&self, token: &str) -> bool {
        jsonwebtoken::decode_header(token.trim())
            .ok()
            .and_then(|h| h.kid)
            .is_some_and(|kid| kid == self.kid)
    }

    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<Claims, TokenError> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&[AUDIENCE]);
        // Time is judged below against the caller's clock, with the skew allowance.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.required_spec_claims = ["aud", "sub", "exp"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &v)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidSignature | K::InvalidAlgorithm | K::InvalidEcdsaKey => {
                        TokenError::BadSignature
                    }
                    K::InvalidAudience => TokenError::Audience,
                    _ => TokenError::Malformed(e.to_string()),
                }
            })?
            .claims;
        let skew = i64::try_from(self.skew.as_secs()).unwrap_or(0);
        let t = now.unix_timestamp();
        if t > claims.exp + skew {
            return Err(TokenError::Expired {
                exp: fmt_unix(claims.exp),
                now: pki::info::rfc3339(now),
                skew: self.skew.as_secs(),
            });
        }
        if t + skew < claims.nbf {
            return Err(TokenError::NotYetValid {
                nbf: fmt_unix(claims.nbf),
                now: pki::info::rfc3339(now),
            });
        }
        claims.service_account()?;
        if self.revocations.is_revoked(&claims.jti) {
            return Err(TokenError::Revoked { jti: claims.jti });
        }
        Ok(claims)
    }
}

/// Revoked token ids: the JSON file in the state dir, re-read when it
/// changes (so `weft token revoke` takes effect without a restart), or a
/// list kept current by another task (Kubernetes: the key's Secret).
pub enum Revocations {
    File {
        path: PathBuf,
        cache: Mutex<(Option<SystemTime>, HashMap<String, i64>)>,
    },
    Shared(tokio::sync::watch::Receiver<HashMap<String, i64>>),
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RevokedFile {
    /// jti → the token's expiry (unix seconds), so entries can be pruned.
    pub revoked: HashMap<String, i64>,
}

impl Revocations {
    pub fn new(path: PathBuf) -> Self {
        Self::File {
            path,
            cache: Mutex::new((None, HashMap::new())),
        }
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        let (path, cache) = match self {
            Self::Shared(rx) => return rx.borrow().contains_key(jti),
            Self::File { path, cache } => (path, cache),
        };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 != mtime {
            match read_revoked(path) {
                Ok(f) => *cache = (mtime, f.revoked),
                // Keep the last good list: a bad file never un-revokes a token.
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read the revocation list; keeping the last one")
                }
            }
        }
        cache.1.contains_key(jti)
    }
}

pub fn read_revoked(path: &Path) -> Result<RevokedFile, RevokedError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(RevokedError::Parse),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RevokedFile::default()),
        Err(e) => Err(RevokedError::Read(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (TokenSigner, TokenVerifier, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let s = TokenSigner::new(&key).unwrap();
        let v = TokenVerifier::new(
            &key,
            Duration::from_secs(20),
            dir.path().join("revoked.json"),
        )
        .unwrap();
        (s, v, dir)
    }

    /// Join tokens are told apart from Kubernetes ServiceAccount tokens by
    /// their `kid`; a Kubernetes token's bound pod is read only to explain.
    #[test]
    fn join_tokens_are_told_apart_by_their_key_id() {
        let (s, v, _d) = setup();
        let (_, other, _d2) = setup();
        let now = OffsetDateTime::now_utc();
        let (tok, _) = s
            .create("demo", "web", Duration::from_secs(60), now)
            .unwrap();
        assert!(v.names_our_key(&tok));
        assert!(!other.names_our_key(&tok));
        assert!(!v.names_our_key("garbage"));
        assert_eq!(jwt_shape(&tok), Ok(()));
        assert!(jwt_shape("garbage").unwrap_err().starts_with("not a JWT"));

        // A ServiceAccount token's claims, as the API server writes them.
        let key = EncodingKey::from_secret(b"not the API server's key");
        let claims = serde_json::json!({
            "aud": ["identity.l5d.io"], "sub": "system:serviceaccount:demo:web",
            "kubernetes.io": {"namespace": "demo",
                "pod": {"name": "web-1", "uid": "u-1"},
                "serviceaccount": {"name": "web", "uid": "s-1"}}});
        let k8s = jsonwebtoken::encode(&Header::default(), &claims, &key).unwrap();
        assert!(!v.names_our_key(&k8s));
        assert_eq!(
            unverified_bound_pod(&k8s),
            Some(BoundPod {
                namespace: "demo".into(),
                name: "web-1".into(),
                uid: "u-1".into()
            })
        );
        assert_eq!(unverified_bound_pod(&tok), None);
    }

    #[test]
    fn subject_without_verification() {
        let (s, _, _d) = setup();
        let (tok, _) = s
            .create(
                "demo",
                "web",
                Duration::from_secs(60),
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        assert_eq!(
            unverified_service_account(&tok),
            Some(("demo".into(), "web".into()))
        );
        assert_eq!(unverified_service_account("garbage"), None);
    }

    #[test]
    fn round_trip() {
        let (s, v, _d) = setup();
        let now = OffsetDateTime::now_utc();
        let (tok, claims) = s
            .create("demo", "web", Duration::from_secs(3600), now)
            .unwrap();
        let got = v.verify(&tok, now).unwrap();
        assert_eq!(got, claims);
        assert_eq!(got.service_account().unwrap(), ("demo", "web"));
        assert!(got.aud.contains(AUDIENCE));
        assert_eq!(got.jti.len(), 32);
    }

    #[test]
    fn expiry_uses_the_skew_allowance() {
        let (s, v, _d) = setup();
        let now = OffsetDateTime::now_utc();
        let (tok, _) = s
            .create("demo", "web", Duration::from_secs(60), now)
            .unwrap();
        v.verify(&tok, now + time::Duration::seconds(75)).unwrap();
        let e = v
            .verify(&tok, now + time::Duration::seconds(81))
            .unwrap_err();
        assert!(matches!(e, TokenError::Expired { .. }), "{e}");
        assert!(v.verify(&tok, now - time::Duration::seconds(60)).is_err());
    }

    #[test]
    fn other_key_and_garbage() {
        let (s, _, _d) = setup();
        let (_, v2, _d2) = setup();
        let now = OffsetDateTime::now_utc();
        let (tok, _) = s
            .create("demo", "web", Duration::from_secs(60), now)
            .unwrap();
        assert_eq!(v2.verify(&tok, now), Err(TokenError::BadSignature));
        assert!(matches!(
            v2.verify("garbage", now),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(v2.verify("", now), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn revocation_is_read_live() {
        let (s, v, d) = setup();
        let now = OffsetDateTime::now_utc();
        let (tok, claims) = s
            .create("demo", "web", Duration::from_secs(60), now)
            .unwrap();
        v.verify(&tok, now).unwrap();
        let mut f = RevokedFile::default();
        f.revoked.insert(claims.jti.clone(), claims.exp);
        std::fs::write(
            d.path().join("revoked.json"),
            serde_json::to_vec(&f).unwrap(),
        )
        .unwrap();
        assert_eq!(
            v.verify(&tok, now),
            Err(TokenError::Revoked { jti: claims.jti })
        );
    }

    /// A shared list (the Kubernetes Secret's watch) is read on every check.
    #[test]
    fn a_shared_revocation_list_is_read_live() {
        let key = rcgen::KeyPair::generate().unwrap();
        let s = TokenSigner::new(&key).unwrap();
        let (tx, rx) = tokio::sync::watch::channel(HashMap::new());
        let v =
            TokenVerifier::with_revocations(&key, Duration::from_secs(20), Revocations::Shared(rx))
                .unwrap();
        let now = OffsetDateTime::now_utc();
        let (tok, claims) = s
            .create("demo", "web", Duration::from_secs(60), now)
            .unwrap();
        v.verify(&tok, now).unwrap();
        tx.send_replace(HashMap::from([(claims.jti.clone(), claims.exp)]));
        assert_eq!(
            v.verify(&tok, now),
            Err(TokenError::Revoked { jti: claims.jti })
        );
    }

    /// Kubernetes writes `aud` as an array (RFC 7519 allows either form).
    #[test]
    fn audience_as_an_array() {
        let (s, v, _d) = setup();
        let now = OffsetDateTime::now_utc();
        let (_, claims) = s
            .create("demo", "web", Duration::from_secs(60), now)
            .unwrap();
        let sign = |aud: Audience| {
            let c = Claims {
                aud,
                ..claims.clone()
            };
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &c, &s.key).unwrap()
        };
        let many = sign(Audience::Many(vec!["other".into(), AUDIENCE.into()]));
        assert!(v.verify(&many, now).unwrap().aud.contains(AUDIENCE));
        let foreign = sign(Audience::Many(vec!["other".into()]));
        assert_eq!(v.verify(&foreign, now), Err(TokenError::Audience));
    }
}
