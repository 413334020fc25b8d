//! The join-token signing key and its revocation list in Kubernetes mode:
//! Secret `weft-join-token-key` in the control plane's namespace, the only
//! place the key lives. The first replica creates it (a replica losing the
//! race reads the winner's), so every replica verifies with the same key;
//! revocations are written with resourceVersion compare-and-swap and
//! watched, so a token revoked through one replica is refused by all.

use std::collections::{BTreeMap, HashMap};

use identity::token::RevokedFile;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

use super::issuer_source::{Seen, follow};
use super::lease::status;

pub const SECRET: &str = "weft-join-token-key";
/// The key (PKCS#8 PEM) and the revocation list (as `revoked.json`).
pub const KEY: &str = "token-signing.key";
pub const REVOKED: &str = "revoked.json";
/// Compare-and-swap attempts before a revocation gives up.
const ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    #[error(
        "Secret {namespace}/weft-join-token-key: {detail}; it holds the join-token signing key every replica verifies with: restore it from backup, or delete it to start a new key (every join token issued so far stops working)"
    )]
    BadKey { namespace: String, detail: String },
    #[error(
        "Secret {namespace}/weft-join-token-key: cannot {what}: {detail}; the control plane needs get and create on it (see rbac.yaml)"
    )]
    Api {
        namespace: String,
        what: &'static str,
        detail: String,
    },
    #[error("cannot make a join-token signing key: {0}")]
    KeyGen(#[source] rcgen::Error),
    #[error(
        "Secret {namespace}/weft-join-token-key does not exist: the control plane makes it when it first starts with --kubernetes; start it, or pass the namespace it runs in"
    )]
    Missing { namespace: String },
    #[error(
        "Secret {namespace}/weft-join-token-key: changed under each of 5 revocation attempts; try again"
    )]
    Contended { namespace: String },
}

fn api_err(namespace: &str, what: &'static str, e: &kube::Error) -> TokenKeyError {
    TokenKeyError::Api {
        namespace: namespace.to_string(),
        what,
        detail: super::proofs::api_error(e),
    }
}

/// The key a Secret holds.
pub fn key_of(s: &Secret, namespace: &str) -> Result<rcgen::KeyPair, TokenKeyError> {
    let bad = |detail: String| TokenKeyError::BadKey {
        namespace: namespace.to_string(),
        detail,
    };
    let pem = s
        .data
        .as_ref()
        .and_then(|d| d.get(KEY))
        .ok_or_else(|| bad(format!("no `{KEY}` key")))?;
    let text = std::str::from_utf8(&pem.0).map_err(|e| bad(format!("`{KEY}`: {e}")))?;
    rcgen::KeyPair::from_pem(text).map_err(|e| bad(format!("`{KEY}`: {e}")))
}

/// The revocation list a Secret holds (none: empty).
pub fn revoked_of(s: &Secret) -> Result<RevokedFile, String> {
    match s.data.as_ref().and_then(|d| d.get(REVOKED)) {
        None => Ok(RevokedFile::default()),
        Some(b) => serde_json::from_slice(&b.0).map_err(|e| format!("`{REVOKED}`: {e}")),
    }
}

/// What the Secret holds when the control plane starts.
pub struct Loaded {
    pub key: rcgen::KeyPair,
    /// This call created the Secret.
    pub created: bool,
    /// Read before serving, so no revoked token slips through at start.
    pub revoked: HashMap<String, i64>,
}

fn loaded(s: &Secret, namespace: &str) -> Result<Loaded, TokenKeyError> {
    Ok(Loaded {
        key: key_of(s, namespace)?,
        created: false,
        revoked: revoked_of(s)
            .map_err(|detail| TokenKeyError::BadKey {
                namespace: namespace.to_string(),
                detail,
            })?
            .revoked,
    })
}

/// The Secret's key, creating the Secret with a new key when absent.
pub async fn load_or_create(api: &Api<Secret>, namespace: &str) -> Result<Loaded, TokenKeyError> {
    if let Some(s) = api
        .get_opt(SECRET)
        .await
        .map_err(|e| api_err(namespace, "read", &e))?
    {
        return loaded(&s, namespace);
    }
    let key = rcgen::KeyPair::generate().map_err(TokenKeyError::KeyGen)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SECRET.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_string(),
                "weft".to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                KEY.to_string(),
                ByteString(key.serialize_pem().into_bytes()),
            ),
            (
                REVOKED.to_string(),
                ByteString(b"{\"revoked\":{}}".to_vec()),
            ),
        ])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(Loaded {
            key,
            created: true,
            revoked: HashMap::new(),
        }),
        // Another replica created it first: use the winner's.
        Err(e) if status(&e) == Some(409) => {
            let s = api
                .get(SECRET)
                .await
                .map_err(|e| api_err(namespace, "read", &e))?;
            loaded(&s, namespace)
        }
        Err(e) => Err(api_err(namespace, "create", &e)),
    }
}

/// The Secret's key, read and never created (`weft token create
/// --kubernetes`: a token signed with a key no control plane holds would
/// never work).
pub async fn read_key(
    client: kube::Client,
    namespace: &str,
) -> Result<rcgen::KeyPair, TokenKeyError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let s = api
        .get_opt(SECRET)
        .await
        .map_err(|e| api_err(namespace, "read", &e))?
        .ok_or_else(|| TokenKeyError::Missing {
            namespace: namespace.to_string(),
        })?;
    key_of(&s, namespace)
}

/// [`revoke`] with a client, for `weft token revoke --kubernetes`.
pub async fn revoke_with(
    client: kube::Client,
    namespace: &str,
    jti: &str,
    now: i64,
) -> Result<bool, TokenKeyError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    revoke(&api, namespace, jti, None, now).await
}

/// Adds `jti` to the Secret's revocation list (compare-and-swap on
/// resourceVersion, retried on conflict), dropping expired entries.
/// Returns whether it was newly revoked.
pub async fn revoke(
    api: &Api<Secret>,
    namespace: &str,
    jti: &str,
    exp: Option<i64>,
    now: i64,
) -> Result<bool, TokenKeyError> {
    for _ in 0..ATTEMPTS {
        let mut s = api
            .get(SECRET)
            .await
            .map_err(|e| api_err(namespace, "read", &e))?;
        let mut list = revoked_of(&s).map_err(|detail| TokenKeyError::BadKey {
            namespace: namespace.to_string(),
            detail,
        })?;
        list.revoked.retain(|_, e| *e > now);
        // Unknown expiry: keep it a year, long past any join token's life.
        let fresh = list
            .revoked
            .insert(jti.to_string(), exp.unwrap_or(now + 365 * 86400))
            .is_none();
        let bytes = serde_json::to_vec(&list).unwrap_or_default();
        s.data
            .get_or_insert_with(BTreeMap::new)
            .insert(REVOKED.to_string(), ByteString(bytes));
        match api.replace(SECRET, &PostParams::default(), &s).await {
            Ok(_) => return Ok(fresh),
            Err(e) if status(&e) == Some(409) => continue,
            Err(e) => return Err(api_err(namespace, "update", &e)),
        }
    }
    Err(TokenKeyError::Contended {
        namespace: namespace.to_string(),
    })
}

/// Follows the Secret, publishing its revocation list on `tx`. A list that
/// cannot be read, or a deleted Secret, keeps the last one: a bad write
/// never un-revokes a token.
pub async fn follow_revocations(
    api: Api<Secret>,
    namespace: String,
    tx: watch::Sender<HashMap<String, i64>>,
) {
    let (seen_tx, mut seen_rx) = watch::channel::<Seen<Secret>>(None);
    let object = format!("Secret {namespace}/weft-join-token-key");
    let publishing = async {
        while seen_rx.changed().await.is_ok() {
            let seen = seen_rx.borrow_and_update().clone();
            let Some(Some(s)) = seen else { continue };
            match revoked_of(&s) {
                Ok(list) => {
                    tx.send_if_modified(|cur| {
                        let changed = *cur != list.revoked;
                        if changed {
                            *cur = list.revoked;
                        }
                        changed
                    });
                }
                Err(e) => tracing::warn!("{object}: {e}; keeping the last revocation list read"),
            }
        }
    };
    tokio::join!(
        follow(api, object.clone(), SECRET.into(), seen_tx),
        publishing
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(pairs: &[(&str, &[u8])]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn the_key_and_list_are_read_and_garbage_is_named() {
        let key = rcgen::KeyPair::generate().unwrap();
        let s = secret(&[
            (KEY, key.serialize_pem().as_bytes()),
            (REVOKED, br#"{"revoked":{"abc":10}}"#),
        ]);
        assert_eq!(
            identity::token::key_id(&key_of(&s, "weft").unwrap()),
            identity::token::key_id(&key)
        );
        assert_eq!(revoked_of(&s).unwrap().revoked.get("abc"), Some(&10));
        assert!(revoked_of(&secret(&[])).unwrap().revoked.is_empty());
        let e = key_of(&secret(&[(KEY, b"junk")]), "weft").unwrap_err();
        assert!(e.to_string().contains("restore it from backup"), "{e}");
        let e = key_of(&secret(&[]), "weft").unwrap_err().to_string();
        assert!(e.contains("no `token-signing.key` key"), "{e}");
        assert!(revoked_of(&secret(&[(REVOKED, b"{")])).is_err());
    }
}
