use super::*;
use crate::cli::check_plane::tests::{fleet, proxy};
use pki::create::{KeySpec, NewCert, Profile, Signer, create};

/// A certificate valid from a day ago until `until` from now, signed by
/// `ca` (self-signed without).
fn cert(profile: Profile, until: time::Duration, ca: Option<&Signer>) -> Signer {
    let now = OffsetDateTime::now_utc();
    let c = create(
        &NewCert {
            subject: format!("{profile}"),
            profile,
            sans: vec![],
            not_before: now - time::Duration::days(1),
            not_after: now + until,
            key: KeySpec::EcdsaP256,
        },
        ca,
    )
    .unwrap();
    Signer::new(c.cert, c.key, "crt", "key").unwrap()
}

fn one(s: &Signer) -> &[CertificateDer<'static>] {
    std::slice::from_ref(&s.cert)
}

#[test]
fn an_emergency_only_once_the_anchor_or_issuer_no_longer_serves() {
    let now = OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let root = cert(Profile::RootCa, time::Duration::days(30), None);
    let issuer = cert(
        Profile::IntermediateCa,
        time::Duration::days(20),
        Some(&root),
    );
    let anchors = one(&root);
    let until = in_force(anchors, one(&issuer), now).unwrap();
    assert!(
        (until - (now + time::Duration::days(20))).abs() < time::Duration::seconds(5),
        "the issuer ends first"
    );
    // An anchor ending before its issuer bounds the pair.
    let short_root = cert(Profile::RootCa, time::Duration::days(2), None);
    let long_issuer = cert(
        Profile::IntermediateCa,
        time::Duration::days(20),
        Some(&short_root),
    );
    let until = in_force(one(&short_root), one(&long_issuer), now).unwrap();
    assert!((until - (now + time::Duration::days(2))).abs() < time::Duration::seconds(5));

    let expired_issuer = cert(
        Profile::IntermediateCa,
        time::Duration::seconds(-5),
        Some(&root),
    );
    let why = in_force(anchors, one(&expired_issuer), now).unwrap_err();
    assert!(why.contains("expired"), "{why}");
    let expired_root = cert(Profile::RootCa, time::Duration::seconds(-5), None);
    let under_it = cert(Profile::IntermediateCa, day, Some(&expired_root));
    let why = in_force(one(&expired_root), one(&under_it), now).unwrap_err();
    assert!(why.contains("expired"), "{why}");
    let other_root = cert(Profile::RootCa, day, None);
    let other = cert(Profile::IntermediateCa, day, Some(&other_root));
    // Signed by another root of the same name.
    let why = in_force(anchors, one(&other), now).unwrap_err();
    assert!(why.contains("bad signature"), "{why}");
    assert!(in_force(anchors, &[], now).is_err());
}

#[test]
fn served_once_the_bundle_holds_the_new_anchor_alone_and_the_new_issuer() {
    let mut v = fleet(vec![]);
    assert_eq!(served(&v, "new", "i2", None), Progress::Waiting);
    // The refusal of the expired material, seen before the install, is old news.
    v.issuer_refused = Some("expired".into());
    assert_eq!(served(&v, "new", "i2", Some("expired")), Progress::Waiting);
    v.issuer_refused = Some("not signed by the anchor".into());
    assert_eq!(
        served(&v, "new", "i2", Some("expired")),
        Progress::Refused("not signed by the anchor".into())
    );
    let b = v.bundle.as_mut().unwrap();
    (b.anchors, b.issuer_sha256) = (vec!["old".into(), "new".into()], "i2".into());
    assert_eq!(
        served(&v, "new", "i2", Some("expired")),
        Progress::Refused("not signed by the anchor".into())
    );
    v.bundle.as_mut().unwrap().anchors = vec!["new".into()];
    assert_eq!(served(&v, "new", "i2", None), Progress::Done { proxies: 0 });
}

#[test]
fn one_token_per_service_account_with_the_hosts_of_its_proxies() {
    let mut a = proxy("demo/web", 1, "stale");
    a.admin_addr = "10.0.0.1:4191".into();
    let mut b = proxy("demo/web", 1, "connected");
    b.admin_addr = "10.0.0.2:4191".into();
    let c = proxy("prod/db", 1, "stale");
    let w = workloads(&fleet(vec![a, b, c]));
    assert_eq!(
        w,
        vec![
            (
                "demo".into(),
                "web".into(),
                ["10.0.0.1".to_string(), "10.0.0.2".to_string()].into()
            ),
            ("prod".into(), "db".into(), BTreeSet::new()),
        ]
    );
}
