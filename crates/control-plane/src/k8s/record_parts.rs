//! The issuance record's parts in the Kubernetes API, as pure decisions:
//! which part an entry goes to, when a part is full, which parts are past
//! every entry's notAfter, and the entry's shape in the IssuanceRecord CRD.
//!
//! A part is named `issuances-<expires-at>-<replica>-<seq>`: one writer
//! (a replica's process, by a tag random per start) per object, and only
//! entries whose notAfter falls before `<expires-at>` (a window of about
//! 1/24 of the leaf lifetime), so a whole part is deleted once that time
//! has passed, never dropping a live entry.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use identity::state::Issuance;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The CRD's `maxItems`.
pub const MAX_PER_PART: usize = 1000;
/// Entries written in one request at most.
pub const MAX_BATCH: usize = 500;
pub const EXPIRES_AT: &str = "weft.dev/expires-at";
pub const REPLICA: &str = "weft.dev/replica";

pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("internal.weft.dev", "v1alpha1", "IssuanceRecord"),
        "issuancerecords",
    )
}

/// Seconds per expiry window: 1/24 of what a leaf lives, 10 s to 1 h.
pub fn window_secs(leaf_lifetime: Duration) -> i64 {
    i64::try_from(leaf_lifetime.as_secs() / 24)
        .unwrap_or(3600)
        .clamp(10, 3600)
}

/// The end of the window holding `not_after`: strictly after it.
pub fn window_end(not_after: i64, window: i64) -> i64 {
    (not_after.div_euclid(window) + 1) * window
}

/// This process's tag: the pod (or host) name made a DNS label, and a
/// random suffix, so no two writers ever share a part.
pub fn replica_tag(instance: &str, random: u32) -> String {
    let mut name: String = instance
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    name = name.trim_matches('-').to_string();
    if name.is_empty() {
        name = "weft".into();
    }
    format!("{name}-{random:08x}")
}

pub fn part_name(tag: &str, window_end: i64, seq: u32) -> String {
    format!("issuances-{window_end}-{tag}-{seq}")
}

/// Entries grouped by the window (part) they belong to.
pub fn by_window(entries: &[Issuance], window: i64) -> BTreeMap<i64, Vec<&Issuance>> {
    let mut out: BTreeMap<i64, Vec<&Issuance>> = BTreeMap::new();
    for e in entries {
        out.entry(window_end(e.not_after, window))
            .or_default()
            .push(e);
    }
    out
}

/// How many of `want` entries go into a part holding `have`; 0: roll to
/// the next part.
pub fn fits(have: usize, want: usize) -> usize {
    MAX_PER_PART.saturating_sub(have).min(want)
}

/// Parts whose every entry has expired at `now`.
pub fn expired_parts(parts: &HashMap<String, i64>, now: i64) -> Vec<String> {
    let mut v: Vec<String> = parts
        .iter()
        .filter(|(_, end)| **end <= now)
        .map(|(n, _)| n.clone())
        .collect();
    v.sort();
    v
}

fn rfc3339(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn unix(v: &Value) -> Option<i64> {
    OffsetDateTime::parse(v.as_str()?, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// An entry as the CRD holds it.
pub fn to_entry(i: &Issuance) -> Value {
    json!({
        "serial": i.serial.to_ascii_lowercase(),
        "identity": i.identity.to_string(),
        "notAfter": rfc3339(i.not_after),
        "issuedAt": rfc3339(i.issued_at),
        "spki": i.spki_sha256,
        "issuer": i.issuer_sha256,
        "proof": i.proof,
        "origin": i.origin,
    })
}

/// An entry read back; None when it cannot be (it is skipped).
pub fn from_entry(v: &Value) -> Option<Issuance> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    Some(Issuance {
        identity: s("identity")?.parse().ok()?,
        serial: s("serial")?,
        spki_sha256: s("spki")?,
        issuer_sha256: s("issuer")?,
        issued_at: v.get("issuedAt").and_then(unix).unwrap_or(0),
        not_after: unix(v.get("notAfter")?)?,
        proof: s("proof").unwrap_or_default(),
        origin: s("origin").unwrap_or_default(),
    })
}

/// A part object: `entries` for window `end`, compare-and-swap on `rv`.
pub fn part_object(
    name: &str,
    tag: &str,
    end: i64,
    entries: &[Value],
    rv: Option<String>,
) -> DynamicObject {
    let mut o =
        DynamicObject::new(name, &api_resource()).data(json!({"spec": {"entries": entries}}));
    o.metadata.labels = Some(BTreeMap::from([
        ("app.kubernetes.io/part-of".to_string(), "weft".to_string()),
        (EXPIRES_AT.to_string(), end.to_string()),
        (REPLICA.to_string(), tag.to_string()),
    ]));
    o.metadata.resource_version = rv;
    o
}

pub fn entries_of(o: &DynamicObject) -> Vec<Value> {
    o.data
        .get("spec")
        .and_then(|s| s.get("entries"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// When a part's entries have all expired, from its label.
pub fn expires_at(o: &DynamicObject) -> Option<i64> {
    o.metadata.labels.as_ref()?.get(EXPIRES_AT)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(serial: &str, not_after: i64) -> Issuance {
        Issuance {
            identity: "web.demo.serviceaccount.identity.weft.cluster.local"
                .parse()
                .unwrap(),
            serial: serial.into(),
            spki_sha256: "ab".repeat(32),
            issuer_sha256: "cd".repeat(32),
            issued_at: 1_700_000_000,
            not_after,
            proof: "renewal".into(),
            origin: "jti1".into(),
        }
    }

    #[test]
    fn entries_go_to_parts_deleted_only_after_their_not_after() {
        assert_eq!(window_secs(Duration::from_secs(86400)), 3600);
        assert_eq!(window_secs(Duration::from_secs(60)), 10);
        let w = 3600;
        // The window ends strictly after every entry in it.
        assert_eq!(window_end(7200, w), 10800);
        assert_eq!(window_end(7199, w), 7200);
        let es = [entry("01", 7199), entry("02", 7000), entry("03", 7200)];
        let groups = by_window(&es, w);
        let serials: Vec<(i64, Vec<&str>)> = groups
            .iter()
            .map(|(end, v)| (*end, v.iter().map(|e| e.serial.as_str()).collect()))
            .collect();
        assert_eq!(serials, vec![(7200, vec!["01", "02"]), (10800, vec!["03"])]);
        for (end, v) in &groups {
            assert!(v.iter().all(|e| e.not_after < *end));
        }
        let parts = HashMap::from([("a".to_string(), 7200), ("b".to_string(), 10800)]);
        assert!(
            expired_parts(&parts, 7199).is_empty(),
            "entry 01 still live"
        );
        assert_eq!(expired_parts(&parts, 7200), vec!["a"]);
        assert_eq!(expired_parts(&parts, 20000), vec!["a", "b"]);
    }

    #[test]
    fn a_full_part_rolls_and_names_never_collide() {
        assert_eq!(fits(0, 10), 10);
        assert_eq!(fits(995, 10), 5);
        assert_eq!(fits(MAX_PER_PART, 10), 0);
        let a = replica_tag("weft-control-plane-7f9/X_1", 0xabc);
        assert_eq!(a, "weft-control-plane-7f9-x-1-00000abc");
        assert_eq!(replica_tag("--", 1), "weft-00000001");
        assert_ne!(part_name(&a, 7200, 0), part_name(&a, 7200, 1));
        let name = part_name(&a, 7200, 3);
        assert_eq!(name, "issuances-7200-weft-control-plane-7f9-x-1-00000abc-3");
        assert!(name.len() <= 253);
    }

    #[test]
    fn entries_round_trip_through_the_crd_shape() {
        let e = entry("0a:1b", 1_700_086_400);
        let v = to_entry(&e);
        assert_eq!(v["notAfter"], "2023-11-15T22:13:20Z");
        assert_eq!(from_entry(&v), Some(e.clone()));
        let o = part_object("p", "t", 7200, std::slice::from_ref(&v), Some("5".into()));
        assert_eq!(entries_of(&o), vec![v]);
        assert_eq!(expires_at(&o), Some(7200));
        assert_eq!(o.metadata.resource_version.as_deref(), Some("5"));
        assert_eq!(from_entry(&json!({"serial": "01"})), None);
    }
}
