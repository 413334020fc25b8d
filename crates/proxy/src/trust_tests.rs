use super::*;
use pki::create::{KeySpec, NewCert, Profile, Signer, create, issue_workload_leaf};

const CP: &str = "weft-identity.weft.serviceaccount.identity.weft.cluster.local";
fn cp_id() -> pki::Identity {
    CP.parse().unwrap()
}
const WEB: &str = "web.demo.serviceaccount.identity.weft.cluster.local";

struct Pki {
    anchor_pem: String,
    issuer: Signer,
    issuer_der: CertificateDer<'static>,
}

fn pki_pair(name: &str) -> Pki {
    let now = OffsetDateTime::now_utc();
    let new = |subject: &str, profile| NewCert {
        subject: subject.into(),
        profile,
        sans: vec![],
        not_before: now,
        not_after: now + time::Duration::days(10),
        key: KeySpec::EcdsaP256,
    };
    let root = create(&new(&format!("{name}-root"), Profile::RootCa), None).unwrap();
    let anchor_pem = pki::cert::to_pem(std::slice::from_ref(&root.cert));
    let root = Signer::new(root.cert, root.key, "ca.crt", "ca.key").unwrap();
    let issuer = create(
        &new(&format!("{name}-issuer"), Profile::IntermediateCa),
        Some(&root),
    )
    .unwrap();
    let issuer_der = issuer.cert.clone();
    Pki {
        anchor_pem,
        issuer: Signer::new(issuer.cert, issuer.key, "issuer.crt", "issuer.key").unwrap(),
        issuer_der,
    }
}

/// A leaf for `identity` from `p`'s issuer, with the issuer: leaf first.
fn chain(p: &Pki, identity: &str) -> Vec<CertificateDer<'static>> {
    let now = OffsetDateTime::now_utc();
    let key = pki::KeyPair::generate().unwrap();
    let leaf = issue_workload_leaf(
        &p.issuer,
        now + time::Duration::days(5),
        &key,
        &identity.parse().unwrap(),
        now,
        std::time::Duration::from_secs(3600),
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    vec![leaf.der, p.issuer_der.clone()]
}

fn v(generation: u64) -> Version {
    Version {
        generation,
        sha256: format!("sha-{generation}"),
    }
}

#[test]
fn applies_a_bundle_that_keeps_both_ends_verifiable() {
    let (a, b) = (pki_pair("a"), pki_pair("b"));
    let own = chain(&a, WEB);
    let cp = pki::cert::to_pem(&chain(&a, CP));
    let both = format!("{}{}", a.anchor_pem, b.anchor_pem);
    let now = OffsetDateTime::now_utc();
    let t = judge(
        v(2),
        &both,
        Some(&v(1)),
        Some((&own, "01")),
        &cp,
        &cp_id(),
        now,
    )
    .unwrap();
    assert_eq!(t.anchors.len(), 2);
    assert_eq!(t.version, Some(v(2)));
    assert_eq!(
        t.anchor_of(&own),
        Some(pki::fingerprint(
            &pki::parse_certs(std::path::Path::new("a"), a.anchor_pem.as_bytes()).unwrap()[0]
        ))
    );
}

#[test]
fn refuses_what_would_cut_the_proxy_off() {
    let (a, b) = (pki_pair("a"), pki_pair("b"));
    let own = chain(&a, WEB);
    let cp_a = pki::cert::to_pem(&chain(&a, CP));
    let cp_b = pki::cert::to_pem(&chain(&b, CP));
    let now = OffsetDateTime::now_utc();
    let judge_it = |pem: &str, cp: &str, current: u64| {
        judge(
            v(5),
            pem,
            Some(&v(current)),
            Some((&own, "01")),
            cp,
            &cp_id(),
            now,
        )
    };
    // Our leaf chains to a, which the bundle drops.
    let e = judge_it(&b.anchor_pem, &cp_b, 4).unwrap_err();
    assert!(matches!(e, BundleRefused::OwnLeaf { .. }), "{e}");
    assert!(e.to_string().contains("serial 01"), "{e}");
    // The control plane's certificate chains to b, which the bundle lacks.
    let e = judge_it(&a.anchor_pem, &cp_b, 4).unwrap_err();
    assert!(matches!(e, BundleRefused::ControlPlane(_)), "{e}");
    // A certificate for someone else is not the control plane's.
    let e = judge_it(&a.anchor_pem, &pki::cert::to_pem(&chain(&a, WEB)), 4).unwrap_err();
    assert!(e.to_string().contains("does not name"), "{e}");
    assert_eq!(judge_it("", &cp_a, 4).unwrap_err(), BundleRefused::Empty);
    assert!(matches!(
        judge_it(
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
            &cp_a,
            4
        )
        .unwrap_err(),
        BundleRefused::Unparseable(_)
    ));
    assert_eq!(
        judge_it(&a.anchor_pem, &cp_a, 6).unwrap_err(),
        BundleRefused::Older { have: 6, got: 5 }
    );
    assert!(
        judge_it(&a.anchor_pem, "", 4).is_err(),
        "no control plane chain to check"
    );
    let same_generation = Version {
        generation: 5,
        sha256: "other".into(),
    };
    assert_eq!(
        judge(
            v(5),
            &a.anchor_pem,
            Some(&same_generation),
            Some((&own, "01")),
            &cp_a,
            &cp_id(),
            now
        )
        .unwrap_err(),
        BundleRefused::Reused { generation: 5 }
    );
    assert!(judge_it(&a.anchor_pem, &cp_a, 4).is_ok());
}
