//! The live trust bundle and the fleet view in ports mode (one host, no
//! root): an anchor rotation under continuous traffic with no restart and
//! no failed request, `weft check --proxy` along the way, refusals that
//! change nothing, a control plane restart, and a killed proxy going stale.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Scratch;
use common::mesh::{free_port, start_proxy};
use common::proc::{Proc, admin_post, http_get, metric, poll};
use common::rotation;
use control_plane::fleet::FleetView;

const DEADLINE: Duration = Duration::from_secs(30);

/// The control plane on fixed loopback ports, so a restart keeps them.
fn start_cp(s: &Scratch, ports: &[u16; 4]) -> Proc {
    let a: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let cp = s.control_plane(&[
        "--resources",
        "resources",
        "--reread-interval",
        "1s",
        "--identity-addr",
        &a[0],
        "--destination-addr",
        &a[1],
        "--policy-addr",
        &a[2],
        "--admin-addr",
        &a[3],
    ]);
    let admin = cp.addr("admin listening on");
    poll("control plane ready", DEADLINE, || {
        matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
    });
    cp
}

use common::rotation::fleet;

fn check_proxy(s: &Scratch, admin: SocketAddr) -> common::Run {
    s.weft(&["check", "--proxy", "--admin-addr", &admin.to_string()])
}

/// Polls the fleet view until `ok` holds; returns it and how long it took.
fn until(admin: SocketAddr, what: &str, ok: impl Fn(&FleetView) -> bool) -> (FleetView, Duration) {
    rotation::until(what, DEADLINE, || fleet(admin), ok)
}

#[test]
fn anchor_rotation_without_restart_or_failed_requests() {
    let s = Scratch::new();
    s.guide_material();
    let (app, be_in, fe_in) = common::mesh::backend_and(&s, "frontend");
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let admin = SocketAddr::from(([127, 0, 0, 1], ports[3]));
    let mut cp = Some(start_cp(&s, &ports));
    let out = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut backend = Some(start_proxy(
        &s,
        "backend",
        be_in,
        cp.as_ref().unwrap(),
        &[],
        &[],
    ));
    let frontend = start_proxy(
        &s,
        "frontend",
        fe_in,
        cp.as_ref().unwrap(),
        &[format!("{out}=demo/backend:{app}")],
        &[],
    );
    let (v, _) = until(admin, "both proxies report bundle generation 1", |v| {
        v.proxies.len() == 2
            && v.proxies
                .iter()
                .all(|p| p.state == "connected" && p.bundle_current)
    });
    let first = v.bundle.clone().unwrap();
    assert_eq!((first.generation, first.anchors.len()), (1, 1));
    let serials: Vec<String> = v.proxies.iter().map(|p| p.leaf_serial.clone()).collect();
    let traffic = rotation::http_traffic(out);
    traffic.more(20);
    check_proxy(&s, admin).ok();

    // An unmanaged client (a linkerd2-proxy would look like this): a
    // certificate by hand, no stream.
    let ia = cp
        .as_ref()
        .unwrap()
        .addr("identity listening on")
        .to_string();
    common::rotation::request_legacy(&s, &ia);
    let (v, _) = until(admin, "the hand-made certificate shows as unmanaged", |v| {
        v.unmanaged.len() == 1
    });
    assert!(
        v.unmanaged[0]
            .note
            .contains("restart required to change its anchors")
    );
    let r = check_proxy(&s, admin).ok();
    assert!(
        r.stdout
            .contains("‼ every certified proxy holds a weft.mesh.v1 stream"),
        "{}",
        r.stdout
    );

    // Reports are bound to the stream's mTLS identity: legacy cannot speak
    // for frontend.
    let da = cp.as_ref().unwrap().addr("destination listening on");
    let forged = forge_report(&s, da);
    assert!(forged.is_ok(), "{forged:?}");
    cp.as_ref()
        .unwrap()
        .wait_for_line("ignored a report claiming another identity", DEADLINE);
    let v = fleet(admin).unwrap();
    assert_eq!(v.proxies.len(), 2, "{v:?}");
    assert!(
        v.proxies
            .iter()
            .all(|p| p.identity.service_account() != "legacy")
    );

    // 1. Prepare: the new anchor appended. Every proxy applies it, no restart.
    rotation::new_anchor_and_issuer(&s);
    let a_pem = s.read("ca.crt");
    s.write("ca1.crt", &a_pem);
    let b_pem = s.read("ca2.crt");
    s.replace("ca.crt", &format!("{a_pem}{b_pem}"));
    let (v, took) = until(admin, "every proxy reports generation 2", |v| {
        v.bundle.as_ref().is_some_and(|b| b.generation == 2)
            && v.proxies.iter().all(|p| p.bundle_current)
    });
    eprintln!("new anchor applied by every proxy after {took:?}");
    assert_eq!(v.bundle.as_ref().unwrap().anchors.len(), 2);
    let r = check_proxy(&s, admin).ok();
    assert!(
        r.stdout
            .contains("√ every connected proxy has the current trust bundle (2 of 2)"),
        "{}",
        r.stdout
    );
    traffic.more(20);
    traffic.assert_clean("after the new anchor");

    // 2. Activate: the issuer signed by the new anchor; renew-now follows.
    s.replace("issuer.key", &s.read("issuer2.key"));
    s.replace("issuer.crt", &s.read("issuer2.crt"));
    let new_anchor = pki::fingerprint(&pki::load_certs(&s.path("ca2.crt")).unwrap()[0]);
    // Connected, not just reported: a stream re-established meanwhile
    // leaves a stale entry whose last report may predate the renew-now.
    let (v, took) = until(admin, "every leaf renewed under the new anchor", |v| {
        v.proxies
            .iter()
            .all(|p| p.state == "connected" && p.issuer_current && p.anchor_sha256 == new_anchor)
    });
    eprintln!("every proxy renewed under the new issuer after {took:?}");
    for (p, old) in v.proxies.iter().zip(&serials) {
        assert_ne!(&p.leaf_serial, old, "{} has a new serial", p.workload);
        assert!(p.renew_request_id.starts_with("issuer_change-"), "{p:?}");
    }
    let (_, m) = http_get(admin, "/metrics").unwrap();
    assert!(
        metric(&m, "renew_now_requests_total{trigger=\"issuer_change\"}").unwrap_or(0.0) >= 2.0,
        "{m}"
    );
    traffic.more(20);
    traffic.assert_clean("after the issuer switch");

    // A client whose certificate chains to the first anchor is still served
    // while that anchor is in the bundle...
    assert_eq!(direct_get(&s, be_in, app), Ok(200));

    // 3. Retire: the old anchor removed.
    s.replace("ca.crt", &b_pem);
    let (v, took) = until(admin, "every proxy reports generation 3", |v| {
        v.bundle.as_ref().is_some_and(|b| b.generation == 3)
            && v.proxies
                .iter()
                .all(|p| p.bundle_current && p.refused.is_none())
    });
    eprintln!("old anchor retired on every proxy after {took:?}");
    assert_eq!(v.bundle.as_ref().unwrap().anchors, vec![new_anchor.clone()]);
    // ...and refused once it is not: the proxies' verifiers use the new bundle.
    let refused = direct_get(&s, be_in, app);
    assert!(refused.is_err(), "{refused:?}");
    backend
        .as_ref()
        .unwrap()
        .wait_for_line("tls_handshake", DEADLINE);
    traffic.more(20);
    traffic.assert_clean("after retiring the old anchor");
    let r = check_proxy(&s, admin);
    assert!(
        r.stdout
            .contains("√ every proxy certificate chains to a current anchor (2 to"),
        "{}",
        r.stdout
    );
    assert_eq!(r.code, 0, "{}", r.stdout);
    let json = s
        .weft(&[
            "check",
            "--proxy",
            "--admin-addr",
            &admin.to_string(),
            "-o",
            "json",
        ])
        .ok();
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(json["success"], true);
    assert_eq!(json["categories"][0]["categoryName"], "weft-fleet");
    for series in [
        "trust_bundle_generation 3",
        "fleet_proxies{state=\"connected\"} 2",
        "fleet_proxies_bundle{generation=\"3\"} 2",
    ] {
        poll(series, DEADLINE, || {
            let (_, m) = http_get(admin, "/metrics").ok()?;
            m.lines().any(|l| l == series).then_some(())
        });
    }

    // By hand: POST /renew-now renews everyone once more, with fresh keys.
    let spkis: Vec<String> = v.proxies.iter().map(|p| p.spki_sha256.clone()).collect();
    let answer = admin_post(admin, "/renew-now");
    assert!(answer.contains("\"asked\": 2"), "{answer}");
    let (v, _) = until(admin, "manual renewals done", |v| {
        v.proxies
            .iter()
            .all(|p| p.renew_request_id.starts_with("manual-"))
    });
    for (p, old) in v.proxies.iter().zip(&spkis) {
        assert_ne!(&p.spki_sha256, old, "{}: a fresh key", p.workload);
    }

    // Refused on the control plane: nothing changes on the proxies.
    for (contents, label) in [
        ("not a certificate\n".to_string(), "bad_anchors"),
        (String::new(), "bad_anchors"),
        (a_pem.clone(), "untrusted"),
    ] {
        let series = format!("issuer_reloads_total{{result=\"{label}\"}}");
        let before = http_get(admin, "/metrics")
            .ok()
            .and_then(|(_, m)| metric(&m, &series))
            .unwrap_or(0.0);
        s.replace("ca.crt", &contents);
        poll(&format!("{series} moves"), DEADLINE, || {
            let (_, m) = http_get(admin, "/metrics").ok()?;
            (metric(&m, &series)? > before).then_some(())
        });
        let v = fleet(admin).unwrap();
        assert_eq!(v.bundle.as_ref().unwrap().generation, 3, "{label}");
        assert!(v.proxies.iter().all(|p| p.bundle_current), "{label}: {v:?}");
        traffic.more(5);
    }
    s.replace("ca.crt", &b_pem);
    traffic.assert_clean("after refused bundles");

    // Control plane restart: proxies reconnect, the view is rebuilt, the
    // generation does not go backwards, no proxy drops its certificate.
    let before: Vec<String> = fleet(admin)
        .unwrap()
        .proxies
        .iter()
        .map(|p| p.leaf_serial.clone())
        .collect();
    drop(cp.take());
    traffic.more(10);
    let _restarted = start_cp(&s, &ports);
    let (v, took) = until(admin, "proxies reconnected after the restart", |v| {
        v.proxies.len() == 2 && v.proxies.iter().all(|p| p.state == "connected")
    });
    eprintln!("fleet rebuilt {took:?} after the control plane restarted");
    assert_eq!(v.bundle.as_ref().unwrap().generation, 3, "never backwards");
    let after: Vec<String> = v.proxies.iter().map(|p| p.leaf_serial.clone()).collect();
    assert_eq!(after, before, "no proxy dropped its certificate");
    assert_eq!(v.unmanaged.len(), 1, "rebuilt from the issuance record");
    traffic.more(10);
    traffic.assert_clean("across the control plane restart");
    let (ok, failed) = traffic.finish();
    eprintln!("{ok} requests, {failed} failed");

    // A killed proxy is stale, not converged.
    drop(backend.take());
    let (_, _) = until(admin, "backend shows as stale", |v| {
        v.proxies
            .iter()
            .any(|p| p.workload == "demo/backend" && p.state == "stale")
    });
    let r = check_proxy(&s, admin);
    assert!(r.stdout.contains("‼ no proxy is stale"), "{}", r.stdout);
    assert!(r.stdout.contains("demo/backend"), "{}", r.stdout);
    assert!(
        r.stdout.contains("1 connected, 1 stale, 1 unmanaged"),
        "{}",
        r.stdout
    );
    drop(frontend);
}

/// Attaches to weft.mesh.v1 with legacy's certificate and sends a report
/// claiming to be frontend; returns once the first bundle arrived.
fn forge_report(s: &Scratch, destination: SocketAddr) -> Result<(), String> {
    use mesh_api::v1::mesh_client::MeshClient;
    let (cert, key) = (s.read("legacy.crt"), s.read("legacy.key"));
    let anchors = s.read("ca.crt");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(anchors))
            .domain_name(common::certify::CP_IDENTITY)
            .identity(tonic::transport::Identity::from_pem(cert, key));
        let ch = tonic::transport::Endpoint::from_shared(format!("https://{destination}"))
            .map_err(|e| e.to_string())?
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let report = mesh_api::v1::ProxyReport {
            identity: "frontend.demo.serviceaccount.identity.weft.cluster.local".into(),
            workload: "demo/frontend".into(),
            leaf_serial: "forged".into(),
            ..Default::default()
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(report).await.map_err(|e| e.to_string())?;
        let mut answers = MeshClient::new(ch)
            .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), answers.message())
            .await
            .map_err(|_| "no bundle".to_string())?
            .map_err(|e| e.to_string())?;
        // Held open until the answer came, so the report was read.
        drop(tx);
        first.map(|_| ()).ok_or_else(|| "stream ended".into())
    })
}

/// A direct mTLS client with the hand-made (first anchor's) certificate:
/// transport header naming `app`, then a GET. Ok(status), or why it failed.
fn direct_get(s: &Scratch, proxy_port: u16, app: u16) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = common::direct::connector(
        &s.path("legacy.crt"),
        &s.path("legacy.key"),
        &[&s.path("ca1.crt"), &s.path("ca2.crt")],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy_port))
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(
            "backend.demo.serviceaccount.identity.weft.cluster.local",
        )
        .unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut msg = common::direct::transport_header(u64::from(app));
        msg.extend_from_slice(b"GET /direct HTTP/1.0\r\nHost: backend\r\n\r\n");
        tls.write_all(&msg).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf))
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf);
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {text:?}"))
    })
}

#[test]
fn a_proxy_that_cannot_renew_refuses_the_retiring_bundle_until_it_has() {
    let s = Scratch::new();
    s.guide_material();
    let (_app, be_in, st_in) = common::mesh::backend_and(&s, "stuck");
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let admin = SocketAddr::from(([127, 0, 0, 1], ports[3]));
    let cp = start_cp(&s, &ports);
    let identity = rotation::gate(cp.addr("identity listening on"));
    let _backend = start_proxy(&s, "backend", be_in, &cp, &[], &[]);
    let ga = identity.addr.to_string();
    // Its identity service is reached through the gate.
    let stuck = start_proxy(&s, "stuck", st_in, &cp, &[], &["--identity-addr", &ga]);
    until(admin, "both on generation 1", |v| {
        v.proxies.len() == 2 && v.proxies.iter().all(|p| p.bundle_current)
    });

    rotation::new_anchor_and_issuer(&s);
    let (a_pem, b_pem) = (s.read("ca.crt"), s.read("ca2.crt"));
    s.replace("ca.crt", &format!("{a_pem}{b_pem}"));
    until(admin, "both on generation 2", |v| {
        v.bundle.as_ref().is_some_and(|b| b.generation == 2)
            && v.proxies.iter().all(|p| p.bundle_current)
    });

    // The issuer switches while stuck cannot reach the identity service.
    identity.open.store(false, Ordering::Relaxed);
    s.replace("issuer.key", &s.read("issuer2.key"));
    s.replace("issuer.crt", &s.read("issuer2.crt"));
    let (v, _) = until(admin, "backend renewed, stuck failed to", |v| {
        let by = |w: &str| v.proxies.iter().find(|p| p.workload == w).unwrap();
        by("demo/backend").issuer_current
            && !by("demo/stuck").issuer_current
            && by("demo/stuck").last_refresh != control_plane::fleet::LastRefresh::Ok
    });
    let stuck_serial = v
        .proxies
        .iter()
        .find(|p| p.workload == "demo/stuck")
        .unwrap()
        .leaf_serial
        .clone();

    // Retiring the old anchor now would cut stuck off: it refuses, says why,
    // keeps generation 2; backend applies generation 3.
    s.replace("ca.crt", &b_pem);
    let (v, _) = until(admin, "stuck refuses generation 3", |v| {
        v.proxies
            .iter()
            .any(|p| p.workload == "demo/stuck" && p.refused.is_some())
            && v.proxies
                .iter()
                .any(|p| p.workload == "demo/backend" && p.bundle_current)
    });
    let p = v
        .proxies
        .iter()
        .find(|p| p.workload == "demo/stuck")
        .unwrap();
    assert_eq!(p.bundle.as_ref().unwrap().generation, 2);
    let reason = &p.refused.as_ref().unwrap().reason;
    assert!(
        reason.contains(&format!(
            "certificate (serial {stuck_serial}) would not verify"
        )),
        "{reason}"
    );
    let r = check_proxy(&s, admin);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout
            .contains("× every connected proxy has the current trust bundle (1 of 2)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("demo/stuck has generation 2, refused the current one"),
        "{}",
        r.stdout
    );
    stuck.wait_for_line("trust bundle refused", DEADLINE);

    // Once it can renew (by hand: POST /renew-now), it applies the bundle it
    // refused, with no restart.
    identity.open.store(true, Ordering::Relaxed);
    let answer = admin_post(admin, "/renew-now");
    assert!(answer.contains("\"asked\": 2"), "{answer}");
    until(admin, "stuck renewed and on generation 3", |v| {
        v.proxies
            .iter()
            .all(|p| p.bundle_current && p.issuer_current && p.refused.is_none())
    });
    check_proxy(&s, admin).ok();
}
