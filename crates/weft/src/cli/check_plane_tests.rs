use std::collections::BTreeMap;

use control_plane::bundle::Version;
use control_plane::fleet::{BundleView, FleetView, LastRefresh, ProxyView, Refusal as Refused};
use pki::check::Status;

use super::*;

pub(crate) fn proxy(workload: &str, generation: u64, state: &str) -> ProxyView {
    let (ns, name) = workload.split_once('/').unwrap();
    ProxyView {
        workload: workload.into(),
        identity: format!("{name}.{ns}.serviceaccount.identity.weft.cluster.local")
            .parse()
            .unwrap(),
        state: state.into(),
        for_s: 5,
        last_report_age_s: 1,
        bundle: Some(Version {
            generation,
            sha256: format!("s{generation}"),
        }),
        bundle_current: generation == 2,
        refused: None,
        leaf_serial: "01".into(),
        spki_sha256: "k".into(),
        issuer_sha256: "i".into(),
        issuer_current: true,
        anchor_sha256: "a".into(),
        anchor_in_bundle: true,
        not_after: 10_000,
        expires_in_s: 9_000,
        last_refresh: LastRefresh::Ok,
        renew_request_id: String::new(),
        admin_addr: String::new(),
        tls: None,
    }
}

pub(crate) fn fleet(proxies: Vec<ProxyView>) -> FleetView {
    FleetView {
        now: 1000,
        bundle: Some(BundleView {
            generation: 2,
            sha256: "s2".into(),
            anchors: vec!["a".into()],
            issuer_sha256: "i".into(),
            issuer_anchor: "a".into(),
            anchor_not_after: vec![],
            issuer_not_after: 0,
        }),
        proxies,
        unmanaged: vec![],
        peers: vec![],
        version: "0.2.0".into(),
        issuer_refused: None,
    }
}

fn pod(workload: &str, version: Option<&str>) -> InjectedPod {
    let (ns, name) = workload.split_once('/').unwrap();
    InjectedPod {
        namespace: ns.into(),
        name: name.into(),
        proxy_version: version.map(str::to_string),
    }
}

#[test]
fn every_injected_pod_needs_a_connected_proxy_on_the_current_bundle() {
    let pods = [
        pod("web/a", None),
        pod("web/b", None),
        pod("web/c", None),
        pod("web/d", None),
    ];
    let mut refusing = proxy("web/d", 1, "connected");
    refusing.refused = Some(Refused {
        version: None,
        reason: "its leaf would not verify".into(),
    });
    let v = fleet(vec![
        proxy("web/a", 2, "connected"),
        // A stale entry beside a connected one (a restarted proxy) is fine.
        proxy("web/a", 1, "stale"),
        proxy("web/b", 1, "stale"),
        refusing,
    ]);
    let r = pods_connected(&pods, &v);
    assert_eq!(r.result, Status::Error);
    assert!(r.description.ends_with("(1 of 4)"), "{}", r.description);
    for want in [
        "web/b: its proxy is stale since 5s, on generation 1 (current: generation 2)",
        "web/c: no proxy has reported",
        "web/d: on generation 1 (current: generation 2); it refused the current one: its leaf would not verify",
    ] {
        assert!(r.error.contains(want), "{want}: {}", r.error);
    }
    assert!(!r.error.contains("web/a"), "{}", r.error);
    assert_eq!(pods_connected(&pods[..1], &v).result, Status::Success);
}

#[test]
fn narrowing_keeps_one_namespace() {
    let v = narrow(
        fleet(vec![
            proxy("web/a", 2, "connected"),
            proxy("db/a", 2, "connected"),
        ]),
        "web",
    );
    let left: Vec<&str> = v.proxies.iter().map(|p| p.workload.as_str()).collect();
    assert_eq!(left, ["web/a"]);
}

#[test]
fn one_release_behind_is_a_warning_older_a_failure() {
    assert_eq!(release("0.2.1"), Some((0, 2)));
    assert_eq!(release("v1.3.0-rc.1"), Some((1, 3)));
    assert_eq!(release("test"), None);
    let ok = [pod("web/a", Some("0.2.0")), pod("web/b", Some("0.2.7"))];
    assert_eq!(proxy_versions(&ok, "0.2.3").result, Status::Success);
    let behind = [pod("web/a", Some("0.2.0")), pod("web/b", Some("0.1.9"))];
    let r = proxy_versions(&behind, "0.2.0");
    assert_eq!(r.result, Status::Warning);
    assert!(r.error.contains("web/b runs 0.1.9"), "{}", r.error);
    for old in [Some("0.0.5"), Some("garbage"), None] {
        let r = proxy_versions(&[pod("web/a", old)], "0.2.0");
        assert_eq!(r.result, Status::Error, "{old:?}");
    }
    // A new major is not "one behind" the old major's last minor.
    let r = proxy_versions(&[pod("web/a", Some("0.9.0"))], "1.0.0");
    assert_eq!(r.result, Status::Error);
    assert_eq!(proxy_versions(&ok, "dev").result, Status::Error);
}

#[test]
fn the_injector_is_judged_by_registration_ca_bundle_and_a_dry_run() {
    assert_eq!(
        webhook_registered(None, "weft-injector").result,
        Status::Error
    );
    let w = Webhooks {
        webhooks: vec![
            ("required.injector.weft.dev".into(), true),
            ("injector.weft.dev".into(), false),
        ],
    };
    assert_eq!(
        webhook_registered(Some(&w), "weft-injector").result,
        Status::Success
    );
    let ca = webhook_ca(Some(&w));
    assert_eq!(ca.result, Status::Error);
    assert!(
        ca.error.contains("no caBundle on injector.weft.dev"),
        "{}",
        ca.error
    );
    assert_eq!(
        webhook_answers("default", &DryRun::Injected).result,
        Status::Success
    );
    let r = webhook_answers("default", &DryRun::NotInjected);
    assert_eq!(r.result, Status::Error);
    assert!(r.error.contains("without weft-proxy"), "{}", r.error);
    let r = webhook_answers("default", &DryRun::Refused("denied".into()));
    assert!(r.error.contains("denied"));
}

#[test]
fn a_refusal_counts_only_for_the_current_version_of_its_object() {
    let events = [Refusal {
        object: "Secret weft/linkerd-identity-issuer".into(),
        resource_version: "7".into(),
        note: "the issuer does not chain to the anchors".into(),
    }];
    let mut current = BTreeMap::from([(
        "Secret weft/linkerd-identity-issuer".to_string(),
        "8".to_string(),
    )]);
    assert_eq!(refusals(&events, &current).result, Status::Success);
    current.insert("Secret weft/linkerd-identity-issuer".into(), "7".into());
    let r = refusals(&events, &current);
    assert_eq!(r.result, Status::Error);
    assert!(r.error.contains("does not chain"), "{}", r.error);
}
