//! An unmodified linkerd2-proxy against weft's control plane, played by a
//! client that behaves like it: destination and policy connections opened
//! before its first certificate exists and kept for every later request,
//! Linkerd's workload strings, and its status-code rules.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Scratch;
use common::certify::{FakeProxy, channel, id};
use common::mesh::workload_ports;
use common::proc::{Proc, http_get, metric_sum, poll};
use linkerd2_proxy_api::destination::destination_client::DestinationClient;
use linkerd2_proxy_api::destination::{GetDestination, Update, tls_identity, update};
use linkerd2_proxy_api::inbound::PortSpec;
use linkerd2_proxy_api::inbound::inbound_server_policies_client::InboundServerPoliciesClient;
use tonic::Code;
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(30);
const BACKEND_WORKLOAD: &str = r#"{"ns":"demo","external_workload":"backend"}"#;

/// The guide's policy and backend (8080 HTTP, 5432 opaque) on 127.0.0.1,
/// and a control plane serving them, ready.
fn setup(extra: &[&str]) -> (Scratch, Proc) {
    let s = Scratch::new();
    s.guide_material();
    std::fs::create_dir(s.path("res")).unwrap();
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/guide/policy.yaml"
    ))
    .unwrap();
    s.write("res/policy.yaml", guide);
    s.write(
        "res/backend.yaml",
        workload_ports(
            "backend",
            &[8080, 5432],
            4143,
            "    config.linkerd.io/opaque-ports: \"5432\"\n",
        ),
    );
    let mut args = vec!["--resources", "res", "--reread-interval", "1s"];
    args.extend_from_slice(extra);
    let cp = s.control_plane(&args);
    let admin = cp.addr("admin listening on");
    poll("control plane ready", DEADLINE, || {
        matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
    });
    (s, cp)
}

async fn next<T>(stream: &mut tonic::Streaming<T>, what: &str) -> T {
    tokio::time::timeout(DEADLINE, stream.message())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e:?}"))
        .unwrap_or_else(|| panic!("{what}: the stream ended"))
}

/// The identities of the endpoints an Add names.
fn identities(u: &Update) -> Vec<String> {
    let Some(update::Update::Add(set)) = &u.update else {
        panic!("not an Add: {u:?}");
    };
    set.addrs
        .iter()
        .map(
            |a| match a.tls_identity.as_ref().and_then(|t| t.strategy.as_ref()) {
                Some(tls_identity::Strategy::DnsLikeIdentity(d)) => d.name.clone(),
                other => panic!("an endpoint without a TLS identity: {other:?}"),
            },
        )
        .collect()
}

fn get(path: &str) -> GetDestination {
    GetDestination {
        path: path.into(),
        ..Default::default()
    }
}

/// The counted refusals of `api` with `code`.
fn refusals(cp: &Proc, api: &str, code: &str) -> f64 {
    let (_, body) = http_get(cp.addr("admin listening on"), "/metrics").unwrap();
    metric_sum(
        &body,
        "control_api_refusals_total",
        &[&format!("api=\"{api}\""), &format!("code=\"{code}\"")],
    )
}

/// linkerd2-proxy's start: destination and policy connections without a
/// client certificate, then Certify with a join token, then every request
/// on the connections it already holds. No restart of anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_opened_before_the_certificate_are_served() {
    let (s, cp) = setup(&[]);
    let anchors = s.read("ca.crt");
    let da = cp.addr("destination listening on");
    let pa = cp.addr("policy listening on");
    let ia: SocketAddr = cp.addr("identity listening on");
    // Opened at start, before any certificate exists.
    let dst_conn = channel(da, &anchors, None).await.unwrap();
    let pol_conn = channel(pa, &anchors, None).await.unwrap();

    let token = s.read(&s.token("backend"));
    let proxy = FakeProxy::new(&id("backend", "demo"));
    proxy
        .certify(ia, &anchors, token.trim(), None)
        .await
        .unwrap();
    let certified = Instant::now();

    let mut policy = InboundServerPoliciesClient::new(pol_conn);
    let mut dst = DestinationClient::new(dst_conn.clone());
    let spec = PortSpec {
        workload: BACKEND_WORKLOAD.into(),
        port: 8080,
    };
    let mut watch = policy.watch_port(spec).await.unwrap().into_inner();
    let server = next(&mut watch, "WatchPort").await;
    assert_eq!(
        server.labels.get("name").map(String::as_str),
        Some("backend-server"),
        "{server:?}"
    );
    let mut profile = dst.get_profile(get("127.0.0.1:8080")).await.unwrap();
    let profile = next(profile.get_mut(), "GetProfile").await;
    let endpoint = profile.endpoint.expect("the profile names the endpoint");
    assert!(endpoint.tls_identity.is_some(), "{endpoint:?}");
    let mut endpoints = dst
        .get(get("demo/backend:8080"))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut endpoints, "Destination.Get").await;
    assert_eq!(identities(&first), vec![id("backend", "demo")]);
    println!(
        "policy and endpoints with identities held {:?} after certification",
        certified.elapsed()
    );
    assert_eq!(refusals(&cp, "destination.Get", "unauthenticated"), 0.0);
    // The mesh stream is bound to an identity: still refused without one.
    let e = attach(dst_conn).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
}

/// Opens weft's mesh stream with one report; its first answer or the refusal.
async fn attach(ch: Channel) -> Result<(), tonic::Status> {
    let report = mesh_api::v1::ProxyReport {
        identity: id("backend", "demo"),
        workload: "demo/backend".into(),
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(report).await.unwrap();
    let mut answers = mesh_api::v1::mesh_client::MeshClient::new(ch)
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = tokio::time::timeout(DEADLINE, answers.message()).await;
    drop(tx);
    first.unwrap().map(|_| ())
}

/// A plaintext (h2c) gRPC client, as linkerd2-proxy talks to a loopback
/// control-plane address.
async fn plaintext(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// `--control-plaintext-loopback`: Identity (a token still required),
/// Destination, policy and OutboundPolicies over plaintext on 127.0.0.1; no
/// mesh stream there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plaintext_loopback_listener_serves_the_proxy_apis() {
    let (s, cp) = setup(&["--control-plaintext-loopback", "127.0.0.1:0"]);
    let addr = cp.addr("plaintext listening on");
    assert!(addr.ip().is_loopback(), "{addr}");
    let ch = plaintext(addr).await;

    let proxy = FakeProxy::new(&id("backend", "demo"));
    let mut identity =
        linkerd2_proxy_api::identity::identity_client::IdentityClient::new(ch.clone());
    let e = identity.certify(proxy.request("")).await.unwrap_err();
    println!("plaintext Certify without a token: {e:?}");
    assert_eq!(e.code(), Code::Unauthenticated);
    let token = s.read(&s.token("backend"));
    let issued = identity
        .certify(proxy.request(token.trim()))
        .await
        .unwrap()
        .into_inner();
    assert!(!issued.leaf_certificate.is_empty());

    let mut dst = DestinationClient::new(ch.clone());
    let mut endpoints = dst.get(get("127.0.0.1:8080")).await.unwrap().into_inner();
    let first = next(&mut endpoints, "plaintext Destination.Get").await;
    assert_eq!(identities(&first), vec![id("backend", "demo")]);

    let mut policy = InboundServerPoliciesClient::new(ch.clone());
    let server = policy
        .get_port(PortSpec {
            workload: BACKEND_WORKLOAD.into(),
            port: 8080,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        server.labels.get("name").map(String::as_str),
        Some("backend-server")
    );

    let e = attach(ch).await.unwrap_err();
    println!("mesh stream on the plaintext listener: {e:?}");
    assert_eq!(e.code(), Code::Unimplemented);
}

/// Anywhere but loopback, the listener is refused at start, saying what to do.
#[test]
fn the_plaintext_listener_is_refused_off_loopback() {
    let s = Scratch::new();
    s.guide_material();
    let mut cp = s.control_plane(&["--control-plaintext-loopback", "0.0.0.0:0"]);
    assert_eq!(cp.wait_exit(DEADLINE), Some(2), "{}", cp.output());
    let out = cp.output();
    let line = out
        .lines()
        .find(|l| l.contains("--control-plaintext-loopback 0.0.0.0:0"))
        .unwrap_or_else(|| panic!("{out}"));
    println!("{line}");
    assert!(line.contains("not a loopback address"), "{line}");
    assert!(line.contains("127.0.0.1:PORT"), "{line}");
}

/// Malformed or unservable requests: each a clear status, logged with the
/// peer, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_statuses() {
    let (s, cp) = setup(&[]);
    let anchors = s.read("ca.crt");
    let pa = cp.addr("policy listening on");
    let da = cp.addr("destination listening on");
    let mut policy = InboundServerPoliciesClient::new(channel(pa, &anchors, None).await.unwrap());
    let mut dst = DestinationClient::new(channel(da, &anchors, None).await.unwrap());
    let watch = |workload: &str| PortSpec {
        workload: workload.into(),
        port: 8080,
    };

    let e = policy.watch_port(watch("demo:backend")).await.unwrap_err();
    println!("malformed workload: {e:?}");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("is not JSON"), "{}", e.message());
    assert!(e.message().contains(r#"{"ns":"#), "{}", e.message());

    // Linkerd's pod form, on a control plane without Kubernetes.
    let e = policy
        .watch_port(watch(r#"{"ns":"demo","pod":"backend-0"}"#))
        .await
        .unwrap_err();
    println!("pod workload, standalone: {e:?}");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("--kubernetes"), "{}", e.message());
    assert!(e.message().contains("external_workload"), "{}", e.message());

    let e = dst
        .get(get("web.demo.svc.cluster.local:80"))
        .await
        .unwrap_err();
    println!("a name weft does not serve: {e:?}");
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        e.message().contains("no Service demo/web"),
        "{}",
        e.message()
    );

    poll("refusals counted", DEADLINE, || {
        (refusals(&cp, "policy.WatchPort", "invalid_argument") >= 1.0
            && refusals(&cp, "policy.WatchPort", "failed_precondition") >= 1.0
            && refusals(&cp, "destination.Get", "not_found") >= 1.0)
            .then_some(())
    });
    let line = cp.wait_for_line("request refused", DEADLINE);
    println!("{line}");
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    assert!(line.contains("policy.WatchPort"), "{line}");
}
