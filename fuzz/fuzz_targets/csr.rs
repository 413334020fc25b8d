//! Certify's CSR handling up to signing, as `identity::service` runs it:
//! `check_csr` against the requested identity, proof of possession, the
//! public key taken for the leaf, and the leaf issued from weft's template.
//! Property: whatever CSR passes, the leaf issued from it verifies under the
//! issuer and names exactly the requested identity.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pki::create::Signer;
use pki::testutil::{now, root, web_id};
use pki::{CertificateDer, Purpose};

struct Issuer {
    anchor: CertificateDer<'static>,
    signer: Signer,
}

fn issuer() -> &'static Issuer {
    static ISSUER: OnceLock<Issuer> = OnceLock::new();
    ISSUER.get_or_init(|| {
        let ca = root("fuzz issuer");
        let anchor = ca.der.clone();
        let signer = Signer::new(ca.der, ca.key, "ca.crt", "ca.key").expect("the fuzz CA signs");
        Issuer { anchor, signer }
    })
}

fuzz_target!(|data: &[u8]| {
    let id = web_id();
    let Ok(csr) = identity::csr::check_csr(data, &id) else {
        return;
    };
    if csr.verify_possession().is_err() {
        return;
    }
    let Ok(spki) = rcgen::SubjectPublicKeyInfo::from_der(csr.public_key_der()) else {
        return;
    };
    let iss = issuer();
    let t = now();
    let leaf = pki::create::issue_workload_leaf(
        &iss.signer,
        t + time::Duration::days(30),
        &spki,
        &id,
        t,
        Duration::from_secs(24 * 3600),
        Duration::from_secs(60),
    )
    .expect("a checked CSR is signed");
    let anchors: [CertificateDer<'_>; 1] = [iss.anchor.clone()];
    pki::verify(&leaf.der, &[], &anchors, t, Purpose::Client).expect("the issued leaf verifies");
    assert_eq!(
        pki::peer_identity(&leaf.der).expect("the leaf names an identity"),
        id
    );
});
