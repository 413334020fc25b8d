//! Certificate parsing: trust bundles and issuer files (`pki::parse_certs`,
//! PEM or DER), a peer's leaf (`pki::peer_identity`, `CertInfo`), and path
//! validation (`pki::verify_at`) over a chain whose last certificate is taken
//! as the anchor. A certificate that verifies must name a mesh identity.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pki::{CertificateDer, Purpose};

fuzz_target!(|data: &[u8]| {
    let _ = pki::parse_x509(data);
    let Ok(certs) = pki::parse_certs(Path::new("/fuzz/bundle.pem"), data) else {
        return;
    };
    for c in &certs {
        let _ = pki::info::CertInfo::from_der(c);
        let _ = pki::peer_identity(c);
        let _ = pki::cert::spki_hash(c);
    }
    let [leaf, rest @ .., anchor] = certs.as_slice() else {
        return;
    };
    let anchors: [CertificateDer<'_>; 1] = [anchor.clone()];
    for purpose in [Purpose::Leaf, Purpose::Client, Purpose::Server, Purpose::Ca] {
        let verified = pki::verify::verify_at(leaf, rest, &anchors, None, purpose);
        if verified.is_ok() && purpose != Purpose::Ca {
            // Verified leaves are workload certificates: they carry a SAN.
            let info = pki::info::CertInfo::from_der(leaf).expect("a verified leaf parses");
            assert!(
                !info.subject_alt_names.is_empty(),
                "a verified leaf without a SAN"
            );
        }
    }
});
