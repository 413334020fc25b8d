//! Issue 13: a client certificate must carry clientAuth. A leaf from the
//! mesh's own issuer with extendedKeyUsage serverAuth only is refused by the
//! real control plane, saying so; the same leaf with clientAuth is served.

use std::net::SocketAddr;

use super::common::Scratch;
use super::common::mesh::workload;
use super::common::proc::{http_get, poll};
use super::common::watch::get_backend;

const BACKEND: &str = "backend.demo.serviceaccount.identity.weft.cluster.local";

/// A leaf for backend signed by the guide's issuer with openssl, with
/// extendedKeyUsage `eku`, in `<name>.crt` and `<name>.key`.
fn openssl_leaf(s: &Scratch, name: &str, eku: &str) {
    let (key, csr, crt, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    s.openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &key,
    ])
    .ok();
    let subj = format!("/CN={BACKEND}");
    s.openssl(&["req", "-new", "-key", &key, "-subj", &subj, "-out", &csr])
        .ok();
    s.write(
        &ext,
        format!(
            "subjectAltName=DNS:{BACKEND}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={eku}\n"
        ),
    );
    s.openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        "issuer.crt",
        "-CAkey",
        "issuer.key",
        "-set_serial",
        "7",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &crt,
    ])
    .ok();
}

async fn refusal(s: &Scratch, da: SocketAddr, name: &str) -> Option<tonic::Status> {
    let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
    match get_backend(s, da, &crt, &key).await {
        Err(status) => Some(status),
        Ok(mut stream) => stream.message().await.err(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_only_leaf_is_refused_as_a_client_certificate() {
    let s = Scratch::new();
    s.guide_material();
    std::fs::create_dir(s.path("resources")).unwrap();
    s.write("resources/demo.yaml", workload("backend", 7000, 4143, ""));
    let cp = s.control_plane(&["--resources", "resources"]);
    let admin = cp.addr("admin listening on");
    tokio::task::block_in_place(|| {
        poll("ready", std::time::Duration::from_secs(30), || {
            matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
        })
    });
    let da = cp.addr("destination listening on");
    openssl_leaf(&s, "server-only", "serverAuth");
    openssl_leaf(&s, "both", "serverAuth,clientAuth");

    let refused = refusal(&s, da, "server-only").await.expect("refused");
    println!("serverAuth-only leaf: {refused:?}");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let msg = refused.message();
    assert!(msg.contains("clientAuth"), "{msg}");
    assert!(msg.contains("serverAuth"), "{msg}");

    let served = refusal(&s, da, "both").await;
    assert!(
        served.is_none(),
        "the same leaf with clientAuth: {served:?}"
    );
}
