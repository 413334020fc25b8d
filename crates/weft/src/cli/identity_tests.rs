use pki::testutil::{leaf, leaf_params, root, sub_ca};

use super::*;
use crate::cli::check_plane::tests::{fleet, proxy};

fn chain() -> Vec<CertificateDer<'static>> {
    let anchor = root("root.linkerd.cluster.local");
    let issuer = sub_ca("identity.linkerd.cluster.local", &anchor, None);
    let l = leaf(
        leaf_params("backend.demo.serviceaccount.identity.weft.cluster.local"),
        &issuer,
    );
    vec![l, issuer.der.clone()]
}

#[test]
fn names_and_selection() {
    assert_eq!(workload_name("backend", "demo"), "demo/backend");
    assert_eq!(workload_name("prod/backend", "demo"), "prod/backend");
    let v = fleet(vec![
        proxy("demo/backend", 2, "connected"),
        proxy("demo/backend", 2, "stale"),
        proxy("demo/frontend", 2, "connected"),
        proxy("demo/gone", 2, "stale"),
    ]);
    assert_eq!(
        select(&v, &["demo/backend".to_string()], "x:1")
            .unwrap()
            .len(),
        1
    );
    let e = select(&v, &["demo/nope".to_string()], "127.0.0.1:9990").unwrap_err();
    assert!(
        e.contains("demo/nope") && e.contains("127.0.0.1:9990"),
        "{e}"
    );
    assert!(
        e.contains("demo/backend, demo/frontend, demo/gone"),
        "lists known workloads once each: {e}"
    );
    assert!(!e.contains('\n'));
    let e = select(&v, &["demo/gone".to_string()], "x:1").unwrap_err();
    assert!(e.contains("lost its stream"), "{e}");
}

#[test]
fn describes_the_served_chain_and_notes_a_renewal_since_the_report() {
    let now = OffsetDateTime::now_utc();
    let c = chain();
    let serial = CertInfo::from_der(&c[0]).unwrap().serial;
    let mut p = proxy("demo/backend", 2, "connected");
    p.admin_addr = "10.0.0.3:4191".into();
    p.leaf_serial = serial.clone();
    let mut renewed = p.clone();
    renewed.leaf_serial = "00:01".into();
    let unreachable = p.clone();
    let served = vec![
        Served {
            proxy: p,
            chain: Ok(c.clone()),
        },
        Served {
            proxy: renewed,
            chain: Ok(c.clone()),
        },
        Served {
            proxy: unreachable,
            chain: Err("its admin endpoint at 10.0.0.3:4191 does not answer".into()),
        },
    ];
    let ids = describe(&served, now);
    assert_eq!(ids[0].certificates[0].serial, serial);
    assert_eq!(ids[0].certificates.len(), 2);
    assert!(ids[0].note.is_none() && ids[0].error.is_none());
    assert!(ids[0].expires_in_s > 0);
    assert!(ids[0].pem.contains("BEGIN CERTIFICATE"));
    assert!(ids[1].note.as_deref().unwrap().contains("00:01"));
    assert!(ids[2].error.is_some() && ids[2].certificates.is_empty());
    let text = render(&ids, now);
    assert!(text.contains(&format!("Serial:   {serial}")), "{text}");
    assert!(text.contains("backend.demo.serviceaccount.identity.weft.cluster.local"));
    assert!(text.contains(" left)"), "{text}");
    assert!(text.contains(&format!("sha256 {}", pki::fingerprint(&c[1]))));
    assert!(text.contains("Anchor:   sha256 a"), "{text}");
    assert!(text.contains("× proxy 3 of demo/backend at 10.0.0.3:4191"));
}
