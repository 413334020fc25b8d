//! The identity service end to end: `weft control-plane` issuing over Certify
//! to a linkerd2-proxy-like client, renewal over mTLS, every refusal, issuer
//! reload under load.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

#[path = "identity/client_auth.rs"]
mod client_auth;
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Scratch;
use common::certify::{CP_IDENTITY, FakeProxy, csr_der, dns, id, rustls_pem};
use common::proc::{Proc, http_get, metric, poll};
use tonic::Code;

const DEADLINE: Duration = Duration::from_secs(30);

struct Cp {
    proc: Proc,
    identity: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    anchors: String,
}

fn start_cp(s: &Scratch, extra: &[&str]) -> Cp {
    // These tests hammer Certify and provoke refusals on purpose: the rate
    // limits are tested in limits.rs.
    let mut args = vec![
        "--reread-interval",
        "1s",
        "--certify-rate-per-client",
        "1000/s:1000",
        "--certify-rate-global",
        "1000/s:1000",
        "--certify-refusals-per-peer",
        "1000/s:1000",
    ];
    args.extend_from_slice(extra);
    let proc = s.control_plane(&args);
    let identity = proc.addr("identity listening on");
    let admin = proc.addr("admin listening on");
    Cp {
        proc,
        identity,
        admin,
        anchors: s.read("ca.crt"),
    }
}

fn token(s: &Scratch, ns: &str, sa: &str, ttl: &str) -> String {
    s.weft(&[
        "token",
        "create",
        "--namespace",
        ns,
        "--service-account",
        sa,
        "--ttl",
        ttl,
        "--state-dir",
        "state",
    ])
    .ok()
    .stdout
    .trim()
    .to_string()
}

fn wait_ready(cp: &Cp) {
    poll("control plane /ready", DEADLINE, || {
        matches!(http_get(cp.admin, "/ready"), Ok((200, _))).then_some(())
    });
}

fn leaf_info(der: &[u8]) -> serde_json::Value {
    let s = Scratch::new();
    s.write("leaf.crt", rustls_pem("CERTIFICATE", der));
    let out = s
        .weft(&["certs", "inspect", "leaf.crt", "-o", "json"])
        .ok()
        .stdout;
    serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certify_with_token_then_renew_over_mtls() {
    let s = Scratch::new();
    s.guide_material();
    let cp = start_cp(
        &s,
        &[
            "--identity-issuance-lifetime",
            "60s",
            "--identity-clock-skew-allowance",
            "1s",
        ],
    );
    wait_ready(&cp);
    let web = id("web", "demo");
    let tok = token(&s, "demo", "web", "2s");
    let proxy = FakeProxy::new(&web);

    let resp = proxy
        .certify(cp.identity, &cp.anchors, &tok, None)
        .await
        .expect("certify with token");
    assert_eq!(resp.intermediate_certificates.len(), 1);
    let info = leaf_info(&resp.leaf_certificate);
    assert_eq!(info["subject"], format!("CN={web}"));
    assert_eq!(info["subject_alt_names"][0], format!("DNS:{web}"));
    assert_eq!(
        info["subject_alt_names"][1],
        "URI:spiffe://cluster.local/ns/demo/sa/web"
    );
    let nb = time::OffsetDateTime::parse(
        info["not_before"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let na = time::OffsetDateTime::parse(
        info["not_after"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    // lifetime + skew on both ends
    assert_eq!((na - nb).whole_seconds(), 62);
    assert_eq!(
        resp.valid_until.as_ref().unwrap().seconds,
        na.unix_timestamp()
    );

    // weft and openssl accept it.
    s.write(
        "leaf.crt",
        rustls_pem("CERTIFICATE", &resp.leaf_certificate),
    );
    s.write(
        "chain.crt",
        rustls_pem("CERTIFICATE", &resp.intermediate_certificates[0]),
    );
    s.weft(&[
        "certs",
        "verify",
        "leaf.crt",
        "--roots",
        "ca.crt",
        "--intermediates",
        "chain.crt",
    ])
    .ok();
    for purpose in ["sslclient", "sslserver"] {
        s.openssl(&[
            "verify",
            "-CAfile",
            "ca.crt",
            "-untrusted",
            "chain.crt",
            "-purpose",
            purpose,
            "leaf.crt",
        ])
        .ok();
    }

    // The token expires; the same CSR renews with the leaf as client certificate.
    let expired = poll("the join token to expire", DEADLINE, || {
        let r = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(proxy.certify(
                cp.identity,
                &cp.anchors,
                &tok,
                None,
            ))
        });
        match r {
            Err(e) if e.code() == Code::Unauthenticated => Some(e),
            _ => None,
        }
    });
    assert!(
        expired.message().contains("expired"),
        "{}",
        expired.message()
    );

    let renewed = proxy
        .certify(cp.identity, &cp.anchors, "", Some(proxy.client_pem(&resp)))
        .await
        .expect("renewal over mTLS without a token");
    let info2 = leaf_info(&renewed.leaf_certificate);
    assert_eq!(info2["subject_alt_names"][0], format!("DNS:{web}"));
    assert_ne!(info2["serial"], info["serial"]);

    // Audit lines and the issuance record.
    let out = cp.proc.output();
    assert!(out.contains("proof=token:"), "{out}");
    assert!(out.contains("proof=renewal"), "{out}");
    let record = std::fs::read_to_string(s.path("state/issuances.jsonl")).unwrap();
    // The token polls above may have issued more; the last one is the renewal.
    let lines: Vec<&str> = record.lines().collect();
    assert!(lines[0].contains("\"proof\":\"token:"), "{record}");
    assert!(
        lines.last().unwrap().contains("\"proof\":\"renewal\""),
        "{record}"
    );
    let (_, m) = http_get(cp.admin, "/metrics").unwrap();
    let ok = metric(&m, "identity_cert_issued_total{result=\"ok\"}").unwrap();
    assert_eq!(ok as usize, lines.len(), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_has_its_code_and_reason() {
    let s = Scratch::new();
    s.guide_material();
    let cp = start_cp(&s, &["--identity-clock-skew-allowance", "0s"]);
    wait_ready(&cp);
    let web = id("web", "demo");
    let good = token(&s, "demo", "web", "1h");
    let other_sa = token(&s, "demo", "db", "1h");
    // A token signed by another state dir's key.
    let foreign = {
        std::fs::create_dir(s.path("other-state")).unwrap();
        let t = s
            .weft(&[
                "token",
                "create",
                "-n",
                "demo",
                "--service-account",
                "web",
                "--state-dir",
                "other-state",
            ])
            .ok();
        t.stdout.trim().to_string()
    };
    let revoked = token(&s, "demo", "web", "1h");
    let jti = {
        let parts: Vec<&str> = revoked.split('.').collect();
        let claims = decode_b64url(parts[1]);
        serde_json::from_slice::<serde_json::Value>(&claims).unwrap()["jti"]
            .as_str()
            .unwrap()
            .to_string()
    };
    s.weft(&["token", "revoke", &jti, "--state-dir", "state"])
        .ok();
    let short = token(&s, "demo", "web", "1s");

    let proxy = FakeProxy::new(&web);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut bad_sig = proxy.csr.clone();
    let n = bad_sig.len();
    bad_sig[n - 3] ^= 1;
    let rsa = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();

    // The db workload's certificate, to try renewing as web.
    let db = FakeProxy::new(&id("db", "demo"));
    let db_resp = db
        .certify(cp.identity, &cp.anchors, &other_sa, None)
        .await
        .unwrap();

    struct Case {
        name: &'static str,
        identity: String,
        token: String,
        csr: Vec<u8>,
        client: Option<(String, String)>,
        code: Code,
        says: &'static str,
    }
    let case = |name, token: &str, csr: Vec<u8>, code, says| Case {
        name,
        identity: web.clone(),
        token: token.to_string(),
        csr,
        client: None,
        code,
        says,
    };
    let mut cases = vec![
        case(
            "wrong token signature",
            &foreign,
            proxy.csr.clone(),
            Code::Unauthenticated,
            "signature",
        ),
        case(
            "revoked token",
            &revoked,
            proxy.csr.clone(),
            Code::Unauthenticated,
            "revoked",
        ),
        case(
            "token for another service account",
            &other_sa,
            proxy.csr.clone(),
            Code::PermissionDenied,
            "the proof is for db.demo",
        ),
        case(
            "CSR for another identity",
            &good,
            csr_der(&key, None, vec![dns(&id("db", "demo"))]),
            Code::FailedPrecondition,
            "differs from the requested identity",
        ),
        case(
            "CSR with an IP SAN",
            &good,
            csr_der(
                &key,
                None,
                vec![
                    dns(&web),
                    rcgen::SanType::IpAddress("10.1.2.3".parse().unwrap()),
                ],
            ),
            Code::FailedPrecondition,
            "IP SAN",
        ),
        case(
            "CSR signature does not match its key",
            &good,
            bad_sig,
            Code::FailedPrecondition,
            "proof of possession",
        ),
        case(
            "RSA key",
            &good,
            csr_der(&rsa, None, vec![dns(&web)]),
            Code::FailedPrecondition,
            "P-256",
        ),
        case(
            "garbage CSR bytes",
            &good,
            b"\x00garbage".to_vec(),
            Code::InvalidArgument,
            "not a DER PKCS#10 CSR",
        ),
        case(
            "empty CSR",
            &good,
            vec![],
            Code::InvalidArgument,
            "certificate_signing_request is empty",
        ),
        case(
            "no proof at all",
            "",
            proxy.csr.clone(),
            Code::Unauthenticated,
            "no proof of identity",
        ),
        case(
            "garbage token",
            "not-a-jwt",
            proxy.csr.clone(),
            Code::Unauthenticated,
            "not a JWT",
        ),
    ];
    cases.push(Case {
        identity: String::new(),
        ..case(
            "empty identity",
            &good,
            proxy.csr.clone(),
            Code::InvalidArgument,
            "identity is empty",
        )
    });
    cases.push(Case {
        identity: "web.demo.cluster.local".into(),
        ..case(
            "identity in the guide's wrong form",
            &good,
            proxy.csr.clone(),
            Code::InvalidArgument,
            "not of the form",
        )
    });
    cases.push(Case {
        identity: "web.demo.serviceaccount.identity.linkerd.cluster.local".into(),
        ..case(
            "identity of another mesh",
            &good,
            proxy.csr.clone(),
            Code::InvalidArgument,
            "not in this mesh",
        )
    });
    cases.push(Case {
        client: Some(db.client_pem(&db_resp)),
        ..case(
            "renewal certificate for another identity",
            "",
            proxy.csr.clone(),
            Code::PermissionDenied,
            "the proof is for db.demo",
        )
    });

    for c in cases {
        let mut client = FakeProxy::connect(cp.identity, &cp.anchors, c.client.clone())
            .await
            .unwrap();
        let req = linkerd2_proxy_api::identity::CertifyRequest {
            identity: c.identity.clone(),
            token: c.token.as_bytes().to_vec(),
            certificate_signing_request: c.csr.clone(),
        };
        let err = client.certify(req).await.expect_err(c.name);
        assert_eq!(err.code(), c.code, "{}: {}", c.name, err.message());
        assert!(
            err.message().contains(c.says),
            "{}: {:?} lacks {:?}",
            c.name,
            err.message(),
            c.says
        );
    }

    // An expired token (1s TTL, no skew allowed).
    let e = poll("the 1s token to expire", DEADLINE, || {
        let r = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(proxy.certify(
                cp.identity,
                &cp.anchors,
                &short,
                None,
            ))
        });
        r.err().filter(|e| e.code() == Code::Unauthenticated)
    });
    assert!(e.message().contains("token expired at"), "{}", e.message());

    // The good request still works: refusals changed nothing.
    proxy
        .certify(cp.identity, &cp.anchors, &good, None)
        .await
        .expect("good request");
    let (_, m) = http_get(cp.admin, "/metrics").unwrap();
    assert!(
        metric(
            &m,
            "identity_cert_issued_total{result=\"failed_precondition\"}"
        )
        .unwrap()
            >= 4.0,
        "{m}"
    );
    assert!(
        metric(&m, "identity_cert_issued_total{result=\"unauthenticated\"}").unwrap() >= 4.0,
        "{m}"
    );
}

fn decode_b64url(s: &str) -> Vec<u8> {
    const T: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.chars() {
        let v = T.find(c).unwrap() as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issuer_reload_under_load_and_refusals_keep_the_old_one() {
    let s = Scratch::new();
    s.guide_material();
    let cp = start_cp(&s, &[]);
    wait_ready(&cp);
    let tok = token(&s, "demo", "web", "1h");
    let old_fp = s
        .weft(&["certs", "inspect", "issuer.crt", "-o", "json"])
        .ok()
        .stdout;
    let old_fp: serde_json::Value = serde_json::from_str(&old_fp).unwrap();
    let old_fp = old_fp[0]["sha256_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();

    // Clients certify continuously, each on a new connection.
    let failures = Arc::new(AtomicU64::new(0));
    let successes = Arc::new(AtomicU64::new(0));
    let latest_issuer = Arc::new(std::sync::Mutex::new(String::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (f, ok, latest, stop) = (
            failures.clone(),
            successes.clone(),
            latest_issuer.clone(),
            stop.clone(),
        );
        let (addr, anchors, tok) = (cp.identity, cp.anchors.clone(), tok.clone());
        clients.push(tokio::spawn(async move {
            let proxy = FakeProxy::new(&id("web", "demo"));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                n += 1;
                match proxy.certify(addr, &anchors, &tok, None).await {
                    Ok(r) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let fp = hex_sha256(&r.intermediate_certificates[0]);
                        *latest.lock().unwrap() = fp;
                    }
                    Err(e) => {
                        eprintln!("client {i}: {e:?}");
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    poll("first successes", DEADLINE, || {
        (successes.load(Ordering::Relaxed) > 10).then_some(())
    });

    // A new issuer from the same anchor: key first, then certificate.
    s.weft(&[
        "certs",
        "create",
        "identity-2",
        "issuer2.crt",
        "issuer2.key",
        "--profile",
        "intermediate-ca",
        "--ca",
        "ca.crt",
        "--ca-key",
        "ca.key",
    ])
    .ok();
    let new_fp: serde_json::Value = serde_json::from_str(
        &s.weft(&["certs", "inspect", "issuer2.crt", "-o", "json"])
            .ok()
            .stdout,
    )
    .unwrap();
    let new_fp = new_fp[0]["sha256_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let switched = Instant::now();
    s.replace("issuer.key", &s.read("issuer2.key"));
    s.replace("issuer.crt", &s.read("issuer2.crt"));
    poll("certificates from the new issuer", DEADLINE, || {
        (*latest_issuer.lock().unwrap() == new_fp).then_some(())
    });
    eprintln!("new issuer in use after {:?}", switched.elapsed());
    let before = successes.load(Ordering::Relaxed);
    poll("more successes", DEADLINE, || {
        (successes.load(Ordering::Relaxed) > before + 10).then_some(())
    });
    assert_ne!(old_fp, new_fp);

    // Bad replacements: each refused, the new issuer keeps serving.
    s.weft(&[
        "certs",
        "create",
        "other-root",
        "other.crt",
        "other.key",
        "--profile",
        "root-ca",
    ])
    .ok();
    s.weft(&[
        "certs",
        "create",
        "foreign",
        "foreign.crt",
        "foreign.key",
        "--profile",
        "intermediate-ca",
        "--ca",
        "other.crt",
        "--ca-key",
        "other.key",
    ])
    .ok();
    s.weft(&[
        "certs",
        "create",
        "old",
        "expired.crt",
        "expired.key",
        "--profile",
        "intermediate-ca",
        "--ca",
        "ca.crt",
        "--ca-key",
        "ca.key",
        "--not-before",
        "-48h",
        "--not-after",
        "-1h",
    ])
    .ok();
    s.weft(&[
        "certs",
        "create",
        "identity-3",
        "issuer3.crt",
        "issuer3.key",
        "--profile",
        "intermediate-ca",
        "--ca",
        "ca.crt",
        "--ca-key",
        "ca.key",
    ])
    .ok();
    let bad: [(&str, &str, &str); 4] = [
        ("foreign.crt", "foreign.key", "untrusted"),
        ("expired.crt", "expired.key", "expired"),
        ("issuer2.crt", "foreign.key", "key_mismatch"),
        // Half-written: the new certificate arrived, its key never did.
        ("issuer3.crt", "issuer2.key", "key_mismatch"),
    ];
    for (crt, key, label) in bad {
        let series = format!("issuer_reloads_total{{result=\"{label}\"}}");
        let before = http_get(cp.admin, "/metrics")
            .ok()
            .and_then(|(_, m)| metric(&m, &series))
            .unwrap_or(0.0);
        s.replace("issuer.key", &s.read(key));
        s.replace("issuer.crt", &s.read(crt));
        poll(&format!("{series} to move"), DEADLINE, || {
            let (_, m) = http_get(cp.admin, "/metrics").ok()?;
            (metric(&m, &series)? > before).then_some(())
        });
        let ok_before = successes.load(Ordering::Relaxed);
        poll("certificates still issued", DEADLINE, || {
            (successes.load(Ordering::Relaxed) > ok_before + 5).then_some(())
        });
        assert_eq!(
            *latest_issuer.lock().unwrap(),
            new_fp,
            "{crt} must not be in force"
        );
        assert!(
            matches!(http_get(cp.admin, "/ready"), Ok((200, _))),
            "still ready with {crt}"
        );
    }
    let out = cp.proc.output();
    assert!(
        out.contains("refused the issuer files; the previous issuer keeps serving"),
        "{out}"
    );
    assert!(
        out.contains("does not verify against the trust anchors"),
        "{out}"
    );

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let total = successes.load(Ordering::Relaxed);
    eprintln!(
        "{total} certificates issued during the test, {} failed",
        failures.load(Ordering::Relaxed)
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0, "zero failed requests");
}

fn hex_sha256(der: &[u8]) -> String {
    let s = Scratch::new();
    s.write("c.crt", rustls_pem("CERTIFICATE", der));
    let v: serde_json::Value = serde_json::from_str(
        &s.weft(&["certs", "inspect", "c.crt", "-o", "json"])
            .ok()
            .stdout,
    )
    .unwrap();
    v[0]["sha256_fingerprint"].as_str().unwrap().to_string()
}

#[test]
fn bad_start_material_stays_up_and_recovers() {
    let s = Scratch::new();
    s.guide_material();
    let good_crt = s.read("issuer.crt");
    s.write("issuer.crt", "garbage\n");
    let cp = start_cp(&s, &[]);
    // Before the first read of the files it says "no valid issuer yet";
    // then it names the file that was refused.
    let (code, body) = poll("/ready to name the refused file", DEADLINE, || {
        http_get(cp.admin, "/ready")
            .ok()
            .filter(|(_, b)| b.contains("issuer.crt"))
    });
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("no valid issuer") && body.contains("issuer.crt"),
        "{body}"
    );
    assert!(
        cp.proc.output().contains("no issuer is in force"),
        "{}",
        cp.proc.output()
    );
    s.replace("issuer.crt", &good_crt);
    wait_ready(&cp);
}

#[test]
fn lost_token_key_refuses_to_start() {
    let s = Scratch::new();
    s.guide_material();
    {
        let cp = start_cp(&s, &[]);
        wait_ready(&cp);
    }
    std::fs::remove_file(s.path("state/token-signing.key")).unwrap();
    let mut p = s.control_plane(&[]);
    assert_eq!(p.wait_exit(DEADLINE), Some(2));
    assert!(p.output().contains("token signing key"), "{}", p.output());
    assert!(p.output().contains("Restore"), "{}", p.output());
    let _ = CP_IDENTITY;
}

#[test]
fn certs_request_gets_and_renews_a_certificate() {
    let s = Scratch::new();
    s.guide_material();
    let cp = start_cp(&s, &[]);
    wait_ready(&cp);
    s.token("web");
    assert_eq!(common::mode(&s.path("web.token")), 0o600);
    let addr = cp.identity.to_string();
    let web = id("web", "demo");
    let r = s
        .weft(&[
            "certs",
            "request",
            &web,
            "web.crt",
            "web.key",
            "--control-plane",
            &addr,
            "--roots",
            "ca.crt",
            "--token-file",
            "web.token",
        ])
        .ok();
    assert!(r.stdout.contains("saved in web.crt"), "{}", r.stdout);
    assert_eq!(common::mode(&s.path("web.key")), 0o600);
    s.weft(&["certs", "verify", "web.crt", "--roots", "ca.crt"])
        .ok();
    // Renewal with the certificate alone.
    s.weft(&[
        "certs",
        "request",
        &web,
        "web2.crt",
        "web2.key",
        "--control-plane",
        &addr,
        "--roots",
        "ca.crt",
        "--renew-cert",
        "web.crt",
        "--renew-key",
        "web.key",
    ])
    .ok();
    // Existing files are not replaced.
    let r = s
        .weft(&[
            "certs",
            "request",
            &web,
            "web.crt",
            "web.key",
            "--control-plane",
            &addr,
            "--roots",
            "ca.crt",
            "--token-file",
            "web.token",
        ])
        .refused(2);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    // Anchors that do not match the control plane: refused, naming the problem.
    s.weft(&[
        "certs",
        "create",
        "other",
        "other.crt",
        "other.key",
        "--profile",
        "root-ca",
    ])
    .ok();
    let r = s
        .weft(&[
            "certs",
            "request",
            &web,
            "x.crt",
            "x.key",
            "--control-plane",
            &addr,
            "--roots",
            "other.crt",
            "--token-file",
            "web.token",
        ])
        .refused(1);
    assert!(r.stderr.contains("UnknownIssuer"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("the control plane's chain needs the anchor CN=root.linkerd.cluster.local")
            && r.stderr.contains("the anchors file holds CN=other"),
        "{}",
        r.stderr
    );
    assert!(!s.path("x.key").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_ends_renewals_from_it() {
    let s = Scratch::new();
    s.guide_material();
    let cp = start_cp(&s, &[]);
    wait_ready(&cp);
    let created = s
        .weft(&[
            "token",
            "create",
            "-n",
            "demo",
            "--service-account",
            "web",
            "--state-dir",
            "state",
        ])
        .ok();
    let tok = created.stdout.trim().to_string();
    let jti = created
        .stderr
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let proxy = FakeProxy::new(&id("web", "demo"));
    let first = proxy
        .certify(cp.identity, &cp.anchors, &tok, None)
        .await
        .unwrap();
    // A renewal from it works, and the renewed certificate renews too.
    let second = proxy
        .certify(cp.identity, &cp.anchors, "", Some(proxy.client_pem(&first)))
        .await
        .unwrap();
    s.weft(&["token", "revoke", &jti, "--state-dir", "state"])
        .ok();
    for resp in [&first, &second] {
        let e = proxy
            .certify(cp.identity, &cp.anchors, "", Some(proxy.client_pem(resp)))
            .await
            .expect_err("renewal from a revoked token's line");
        assert_eq!(e.code(), Code::Unauthenticated, "{}", e.message());
        assert!(
            e.message().contains(&format!(
                "descends from join token {jti}, which was revoked"
            )),
            "{}",
            e.message()
        );
    }
}
