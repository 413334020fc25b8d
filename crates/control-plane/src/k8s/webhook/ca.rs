//! The injector's webhook CA set, as pure decisions. Secret
//! `weft-injector-ca` holds every CA still valid (`<id>.crt` + `<id>.key`),
//! shared by all replicas. The API server trusts what the webhook
//! configuration's `caBundle` lists, so a new CA is made well before the
//! newest one expires, added to every `caBundle`, and served from only after
//! this replica has seen it there for a while: no admission ever meets a
//! serving certificate the API server cannot verify.

use std::collections::BTreeMap;
use std::time::Duration;

use pki::create::{KeySpec, NewCert, Profile, San, Signer};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

/// The subject every weft webhook CA carries (and only they do), so a
/// foreign certificate in a `caBundle` is never taken for one of ours.
pub const CA_SUBJECT_PREFIX: &str = "weft injector CA";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("`{id}.crt` has no `{id}.key` beside it (or the other way round)")]
    Unpaired { id: String },
    #[error("`{id}.crt`: {detail}")]
    Cert { id: String, detail: String },
    #[error("`{id}.key`: {detail}")]
    Key { id: String, detail: String },
    #[error("cannot make a certificate: {0}")]
    Create(#[from] pki::create::CreateError),
}

/// One CA of the set.
pub struct WebhookCa {
    /// `ca-<NotBefore unix seconds>`: sorts by age.
    pub id: String,
    pub cert: CertificateDer<'static>,
    pub key_pem: String,
    pub not_before: i64,
    pub not_after: i64,
}

impl std::fmt::Debug for WebhookCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("WebhookCa")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WebhookCa {
    pub fn signer(&self) -> Result<Signer, CaError> {
        let key = rcgen::KeyPair::from_pem(&self.key_pem).map_err(|e| CaError::Key {
            id: self.id.clone(),
            detail: e.to_string(),
        })?;
        Signer::new(
            self.cert.clone(),
            key,
            &format!("{}.crt", self.id),
            &format!("{}.key", self.id),
        )
        .map_err(|e| CaError::Cert {
            id: self.id.clone(),
            detail: e.to_string(),
        })
    }

    /// The Secret's entries for this CA.
    pub fn entries(&self) -> [(String, Vec<u8>); 2] {
        [
            (
                format!("{}.crt", self.id),
                pki::cert::to_pem(std::slice::from_ref(&self.cert)).into_bytes(),
            ),
            (
                format!("{}.key", self.id),
                self.key_pem.clone().into_bytes(),
            ),
        ]
    }
}

fn validity(cert: &CertificateDer<'_>) -> Result<(i64, i64, String), String> {
    let c = pki::cert::parse_x509(cert).map_err(|e| e.to_string())?;
    Ok((
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
        c.subject().to_string(),
    ))
}

/// The CAs a Secret's data holds, oldest first. Entries that are not
/// `*.crt`/`*.key` are ignored; a half pair or an unreadable one is refused.
pub fn parse(data: &BTreeMap<String, Vec<u8>>) -> Result<Vec<WebhookCa>, CaError> {
    let mut out = Vec::new();
    for (name, bytes) in data {
        let Some(id) = name.strip_suffix(".crt") else {
            if let Some(id) = name.strip_suffix(".key")
                && !data.contains_key(&format!("{id}.crt"))
            {
                return Err(CaError::Unpaired { id: id.into() });
            }
            continue;
        };
        let key = data
            .get(&format!("{id}.key"))
            .ok_or_else(|| CaError::Unpaired { id: id.into() })?;
        let bad = |detail: String| CaError::Cert {
            id: id.into(),
            detail,
        };
        let cert = pki::cert::parse_certs(std::path::Path::new(name), bytes)
            .map_err(|e| bad(e.to_string()))?
            .into_iter()
            .next()
            .ok_or_else(|| bad("no certificate".into()))?;
        let (not_before, not_after, _) = validity(&cert).map_err(bad)?;
        let key_pem = String::from_utf8(key.clone()).map_err(|e| CaError::Key {
            id: id.into(),
            detail: e.to_string(),
        })?;
        out.push(WebhookCa {
            id: id.into(),
            cert,
            key_pem,
            not_before,
            not_after,
        });
    }
    out.sort_by_key(|c| (c.not_before, c.id.clone()));
    Ok(out)
}

/// What the Secret should become.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Make a new CA: there is none, or the newest is past 2/3 of its life.
    pub add: bool,
    /// Expired CAs to remove.
    pub drop: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        !self.add && self.drop.is_empty()
    }
}

/// The pure rotation rule. A new CA at 2/3 of the newest's life leaves a
/// third of it for every replica to see the new one in the `caBundle`.
pub fn plan(cas: &[WebhookCa], now: i64) -> Plan {
    let drop = cas
        .iter()
        .filter(|c| c.not_after <= now)
        .map(|c| c.id.clone())
        .collect();
    let add = match cas.iter().rev().find(|c| c.not_after > now) {
        None => true,
        Some(newest) => {
            let life = newest.not_after - newest.not_before;
            now >= newest.not_before + life * 2 / 3
        }
    };
    Plan { add, drop }
}

/// Every CA the API server must trust now: the Secret's unexpired ones,
/// plus weft CAs already in the bundle and unexpired (a replica with an
/// older view of the Secret may add, never remove, a CA another serves
/// from). Deduplicated, oldest first.
pub fn bundle(
    secret: &[WebhookCa],
    current: &[CertificateDer<'static>],
    now: i64,
) -> Vec<CertificateDer<'static>> {
    let mut all: Vec<(i64, CertificateDer<'static>)> = Vec::new();
    let keep = |c: &CertificateDer<'static>| match validity(c) {
        Ok((nb, na, subject)) if na > now && subject.contains(CA_SUBJECT_PREFIX) => Some(nb),
        _ => None,
    };
    for c in secret
        .iter()
        .map(|c| &c.cert)
        .chain(current.iter())
        .filter_map(|c| keep(c).map(|nb| (nb, c)))
    {
        if !all.iter().any(|(_, have)| have == c.1) {
            all.push((c.0, c.1.clone()));
        }
    }
    all.sort_by_key(|(nb, _)| *nb);
    all.into_iter().map(|(_, c)| c).collect()
}

/// The CA to serve from: the newest unexpired one this replica has seen in
/// every webhook's `caBundle` for at least `settle` (so the API server,
/// which watches the same object, trusts it too).
pub fn serving<'a>(
    cas: &'a [WebhookCa],
    trusted_since: &BTreeMap<String, i64>,
    now: i64,
    settle: Duration,
) -> Option<&'a WebhookCa> {
    cas.iter().rev().find(|c| {
        c.not_after > now
            && trusted_since
                .get(&c.id)
                .is_some_and(|since| now - since >= settle.as_secs() as i64)
    })
}

/// A new CA valid from `now` for `lifetime`.
pub fn new_ca(now: OffsetDateTime, lifetime: Duration) -> Result<WebhookCa, CaError> {
    let created = pki::create::create(
        &NewCert {
            subject: format!("{CA_SUBJECT_PREFIX} {}", now.unix_timestamp()),
            profile: Profile::RootCa,
            sans: Vec::new(),
            not_before: now,
            not_after: now + lifetime,
            key: KeySpec::EcdsaP256,
        },
        None,
    )?;
    Ok(WebhookCa {
        id: format!("ca-{}", now.unix_timestamp()),
        key_pem: created.key.serialize_pem(),
        cert: created.cert,
        not_before: now.unix_timestamp(),
        not_after: (now + lifetime).unix_timestamp(),
    })
}

/// A serving certificate for `names` from `ca`, valid for `lifetime` but
/// never past the CA; returns the chain (leaf only: the CA is the anchor)
/// and its key.
pub fn serving_cert(
    ca: &WebhookCa,
    names: &[San],
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<(CertificateDer<'static>, rcgen::KeyPair), CaError> {
    let signer = ca.signer()?;
    let subject = names
        .iter()
        .find_map(|n| match n {
            San::Dns(d) => Some(d.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "weft-webhook".into());
    let created = pki::create::create(
        &NewCert {
            subject,
            profile: Profile::Leaf,
            sans: names.to_vec(),
            not_before: now - Duration::from_secs(60),
            not_after: now + lifetime,
            key: KeySpec::EcdsaP256,
        },
        Some(&signer),
    )?;
    Ok((created.cert, created.key))
}

/// When a serving certificate from `ca_not_after`, valid until
/// `not_after` and issued at `issued_at`, must be replaced: at 2/3 of its
/// life.
pub fn renew_at(issued_at: i64, not_after: i64) -> i64 {
    issued_at + (not_after - issued_at) * 2 / 3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(t).unwrap()
    }

    fn data(cas: &[&WebhookCa]) -> BTreeMap<String, Vec<u8>> {
        cas.iter().flat_map(|c| c.entries()).collect()
    }

    #[test]
    fn a_new_ca_at_two_thirds_and_expired_ones_dropped() {
        let now = 1_800_000_000;
        assert_eq!(
            plan(&[], now),
            Plan {
                add: true,
                drop: vec![]
            }
        );
        let a = new_ca(at(now), Duration::from_secs(90)).unwrap();
        let cas = parse(&data(&[&a])).unwrap();
        assert!(plan(&cas, now + 59).is_empty());
        assert!(plan(&cas, now + 60).add);
        let b = new_ca(at(now + 60), Duration::from_secs(90)).unwrap();
        let cas = parse(&data(&[&b, &a])).unwrap();
        assert_eq!(cas[0].id, a.id, "oldest first");
        assert!(plan(&cas, now + 61).is_empty(), "the new one is young");
        assert_eq!(
            plan(&cas, now + 90),
            Plan {
                add: false,
                drop: vec![a.id.clone()]
            }
        );
    }

    #[test]
    fn serves_only_what_has_settled_in_the_bundle() {
        let now = 1_800_000_000;
        let a = new_ca(at(now), Duration::from_secs(900)).unwrap();
        let b = new_ca(at(now + 600), Duration::from_secs(900)).unwrap();
        let cas = parse(&data(&[&a, &b])).unwrap();
        let settle = Duration::from_secs(10);
        let mut seen = BTreeMap::from([(a.id.clone(), now)]);
        assert_eq!(
            serving(&cas, &seen, now + 601, settle).map(|c| &c.id),
            Some(&a.id)
        );
        seen.insert(b.id.clone(), now + 601);
        assert_eq!(
            serving(&cas, &seen, now + 605, settle).map(|c| &c.id),
            Some(&a.id),
            "not settled yet"
        );
        assert_eq!(
            serving(&cas, &seen, now + 611, settle).map(|c| &c.id),
            Some(&b.id)
        );
        assert!(serving(&cas, &BTreeMap::new(), now + 611, settle).is_none());
        assert_eq!(
            serving(&cas, &seen, now + 901, settle).map(|c| &c.id),
            Some(&b.id),
            "an expired CA is never served from"
        );
    }

    #[test]
    fn the_bundle_only_grows_until_expiry_and_never_takes_foreign_certs() {
        let now = 1_800_000_000;
        let a = new_ca(at(now), Duration::from_secs(900)).unwrap();
        let b = new_ca(at(now + 600), Duration::from_secs(900)).unwrap();
        let foreign = pki::create::create(
            &NewCert {
                subject: "someone else".into(),
                profile: Profile::RootCa,
                sans: vec![],
                not_before: at(now),
                not_after: at(now + 900),
                key: KeySpec::EcdsaP256,
            },
            None,
        )
        .unwrap()
        .cert;
        let secret = parse(&data(&[&a])).unwrap();
        // A replica that has not seen b yet keeps b, which another added.
        let got = bundle(
            &secret,
            &[b.cert.clone(), foreign, a.cert.clone()],
            now + 601,
        );
        assert_eq!(got, vec![a.cert.clone(), b.cert.clone()]);
        // After a expires, only b.
        let secret = parse(&data(&[&a, &b])).unwrap();
        assert_eq!(bundle(&secret, &got, now + 900), vec![b.cert.clone()]);
    }

    #[test]
    fn half_pairs_and_garbage_are_refused() {
        let now = 1_800_000_000;
        let a = new_ca(at(now), Duration::from_secs(900)).unwrap();
        let mut d = data(&[&a]);
        d.remove(&format!("{}.key", a.id));
        assert!(matches!(parse(&d), Err(CaError::Unpaired { .. })));
        let mut d = data(&[&a]);
        d.insert(format!("{}.crt", a.id), b"garbage".to_vec());
        assert!(matches!(parse(&d), Err(CaError::Cert { .. })));
        let mut d = data(&[&a]);
        d.insert("README".into(), b"ignored".to_vec());
        assert_eq!(parse(&d).unwrap().len(), 1);
    }

    #[test]
    fn serving_certificates_chain_to_their_ca_and_never_outlive_it() {
        let now = 1_800_000_000;
        let a = new_ca(at(now), Duration::from_secs(900)).unwrap();
        let names = vec![
            San::Dns("weft-webhook.weft.svc".into()),
            San::Ip("10.1.2.3".parse().unwrap()),
        ];
        let (leaf, _key) = serving_cert(&a, &names, at(now), Duration::from_secs(86400)).unwrap();
        let (_, not_after, _) = validity(&leaf).unwrap();
        assert_eq!(not_after, a.not_after);
        let ca = pki::cert::parse_x509(&a.cert).unwrap();
        let leaf = pki::cert::parse_x509(&leaf).unwrap();
        assert!(leaf.verify_signature(Some(ca.public_key())).is_ok());
        assert_eq!(renew_at(100, 400), 300);
    }
}
