use super::*;
use crate::trust::Version;
use pki::create::{KeySpec, NewCert, Profile, create};

/// A self-signed anchor (PEM) valid from a day ago until `until` from now.
fn anchor(name: &str, until: time::Duration) -> String {
    let now = OffsetDateTime::now_utc();
    let root = create(
        &NewCert {
            subject: name.into(),
            profile: Profile::RootCa,
            sans: vec![],
            not_before: now - time::Duration::days(1),
            not_after: now + until,
            key: KeySpec::EcdsaP256,
        },
        None,
    )
    .unwrap();
    pki::cert::to_pem(std::slice::from_ref(&root.cert))
}

fn bundle(pem: &str, generation: u64) -> Trust {
    let v = Version {
        generation,
        sha256: format!("s{generation}"),
    };
    Trust::new(Some(v), pem).unwrap()
}

#[test]
fn before_any_bundle_the_file_replaces_the_anchors() {
    let (old, new) = (
        anchor("old", time::Duration::days(9)),
        anchor("new", time::Duration::days(9)),
    );
    let current = Trust::new(None, &old).unwrap();
    let Decision::Apply(t) = judge(&new, &current, OffsetDateTime::now_utc()) else {
        panic!("not applied")
    };
    assert_eq!((t.version, t.pem), (None, new));
}

#[test]
fn with_a_bundle_in_force_new_anchors_are_added_and_the_count_starts_afresh() {
    let now = OffsetDateTime::now_utc();
    // The old anchor expired: the emergency case.
    let old = anchor("old", time::Duration::seconds(-10));
    let new = anchor("new", time::Duration::days(9));
    let current = bundle(&old, 7);
    let Decision::Apply(t) = judge(&new, &current, now) else {
        panic!("not applied")
    };
    assert_eq!(t.anchors.len(), 2);
    assert_eq!(
        t.version, None,
        "any generation from a control plane verified under it"
    );
    assert!(t.anchors.contains(&current.anchors[0]));
    // A copy of anchors already held adds nothing.
    let both = bundle(&format!("{old}{new}"), 8);
    assert!(matches!(judge(&new, &both, now), Decision::Keep));
    assert!(matches!(
        judge(&format!("{old}{new}"), &both, now),
        Decision::Keep
    ));
}

#[test]
fn a_bad_file_is_refused_and_names_why() {
    let now = OffsetDateTime::now_utc();
    let current = bundle(&anchor("a", time::Duration::days(9)), 3);
    let refused = |pem: &str| match judge(pem, &current, now) {
        Decision::Refuse(e) => e,
        other => panic!("{pem:?} was not refused: {other:?}"),
    };
    assert_eq!(refused("").label(), "empty");
    assert_eq!(refused("   \n").label(), "empty");
    let e = refused("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
    assert_eq!(e.label(), "unparseable", "{e}");
    let e = refused(&anchor("gone", time::Duration::seconds(-5)));
    assert_eq!(e.label(), "expired");
    assert!(
        e.to_string().contains("every anchor in it has expired"),
        "{e}"
    );
    assert_eq!(FileRefused::Unreadable("gone".into()).label(), "unreadable");
}

/// The watcher applies a rewritten file within seconds, keeps the trust in
/// force on a bad one (counted), and applies a good one after it.
#[tokio::test]
async fn the_file_is_followed_and_a_bad_one_keeps_the_last_good_trust() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("ca.crt");
    let old = anchor("old", time::Duration::days(9));
    std::fs::write(&path, &old).unwrap();
    let (tx, mut rx) = watch::channel(Arc::new(bundle(&old, 2)));
    let metrics = crate::metrics::ProxyMetrics::default();
    let task = tokio::spawn(
        Watch {
            path: path.clone(),
            trust: tx,
            applied: old.clone(),
            metrics: metrics.clone(),
        }
        .run(),
    );
    std::fs::write(&path, "").unwrap();
    let refusals = || {
        metrics
            .anchors_file_refusals
            .get_or_create(&crate::metrics::ReasonLabel { reason: "empty" })
            .get()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while refusals() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no refusal counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        rx.borrow_and_update().anchors.len(),
        1,
        "kept the last good"
    );
    let new = anchor("new", time::Duration::days(9));
    std::fs::write(&path, &new).unwrap();
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("applied within 10 s")
        .unwrap();
    assert_eq!(rx.borrow().anchors.len(), 2);
    assert_eq!(refusals(), 1, "a refusal is counted once, not every read");
    task.abort();
}
