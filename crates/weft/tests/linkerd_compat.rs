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
use linkerd2_proxy_api::net::TcpAddress;
use linkerd2_proxy_api::outbound::outbound_policies_client::OutboundPoliciesClient;
use linkerd2_proxy_api::outbound::{Backend, OutboundPolicy, TrafficSpec, traffic_spec};
use tonic::Code;
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(30);
const BACKEND_WORKLOAD: &str = r#"{"ns":"demo","external_workload":"backend"}"#;

/// Workload demo/backend on 127.0.0.1 (ports 8080 and 5432), `opaque` its
/// opaque ports.
fn backend_yaml(opaque: &str) -> String {
    let ann = format!("    config.linkerd.io/opaque-ports: \"{opaque}\"\n");
    workload_ports("backend", &[8080, 5432], 4143, &ann)
}

/// The guide's policy and backend (8080 HTTP, 5432 opaque) on 127.0.0.1,
/// and a control plane serving them, ready.
fn setup(extra: &[&str]) -> (Scratch, Proc) {
    let s = Scratch::new();
    s.guide_material();
    std::fs::create_dir(s.path("res")).unwrap();
    s.write(
        "res/policy.yaml",
        include_str!("fixtures/guide/policy.yaml"),
    );
    s.write("res/backend.yaml", backend_yaml("5432"));
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

    let mut policy = InboundServerPoliciesClient::new(pol_conn.clone());
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
    // Routes from OutboundPolicies, endpoints from the Get its backend names.
    let mut outbound = OutboundPoliciesClient::new(pol_conn);
    let mut routes = outbound
        .watch(to_authority("demo/backend:8080"))
        .await
        .unwrap()
        .into_inner();
    let routes = next(&mut routes, "OutboundPolicies.Watch").await;
    let path = dst_path(&route_backend(&routes).1);
    let mut endpoints = dst.get(get(&path)).await.unwrap().into_inner();
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

    let p = OutboundPoliciesClient::new(ch.clone())
        .get(to_addr("127.0.0.1:8080"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dst_path(&route_backend(&p).1), "127.0.0.1:8080");

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

/// linkerd2-proxy's rule: these codes from OutboundPolicies mean "no
/// policy" (it then synthesizes one from GetProfile and forwards); any
/// other is an error that fails the connection.
fn read_as_no_policy(code: Code) -> bool {
    matches!(code, Code::NotFound | Code::Unimplemented)
}

fn to_addr(addr: &str) -> TrafficSpec {
    let a: SocketAddr = addr.parse().unwrap();
    TrafficSpec {
        source_workload: BACKEND_WORKLOAD.into(),
        target: Some(traffic_spec::Target::Addr(a.into())),
    }
}

fn to_authority(authority: &str) -> TrafficSpec {
    TrafficSpec {
        source_workload: BACKEND_WORKLOAD.into(),
        target: Some(traffic_spec::Target::Authority(authority.into())),
    }
}

/// The protocol's name and the backend its first route sends to.
fn route_backend(p: &OutboundPolicy) -> (&'static str, Backend) {
    use linkerd2_proxy_api::outbound::{http_route, opaque_route, proxy_protocol::Kind};
    let opaque = |o: &linkerd2_proxy_api::outbound::proxy_protocol::Opaque| match o.routes[0].rules
        [0]
    .backends
    .as_ref()
    .and_then(|d| d.kind.as_ref())
    {
        Some(opaque_route::distribution::Kind::FirstAvailable(f)) => {
            f.backends[0].backend.clone().unwrap()
        }
        other => panic!("opaque route distribution {other:?}"),
    };
    match p.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(Kind::Opaque(o)) => ("opaque", opaque(o)),
        Some(Kind::Detect(d)) => {
            let http1 = d.http1.as_ref().expect("HTTP/1 routes");
            assert!(d.http2.is_some() && d.opaque.is_some(), "{d:?}");
            let rule = &http1.routes[0].rules[0];
            match rule.backends.as_ref().and_then(|d| d.kind.as_ref()) {
                Some(http_route::distribution::Kind::FirstAvailable(f)) => {
                    ("detect", f.backends[0].backend.clone().unwrap())
                }
                other => panic!("HTTP route distribution {other:?}"),
            }
        }
        other => panic!("protocol {other:?}"),
    }
}

/// The Destination.Get path a balancer backend resolves through.
fn dst_path(b: &Backend) -> String {
    use linkerd2_proxy_api::outbound::backend::{Kind, endpoint_discovery};
    match &b.kind {
        Some(Kind::Balancer(p2c)) => match p2c.discovery.as_ref().and_then(|d| d.kind.as_ref()) {
            Some(endpoint_discovery::Kind::Dst(d)) => d.path.clone(),
            None => panic!("a balancer without discovery"),
        },
        other => panic!("not a balancer: {other:?}"),
    }
}

/// OutboundPolicies against a meshed target (by address and by name), an
/// opaque port, an unmeshed address and unknown ones; Destination.Get for
/// the same; updates streamed when the resources change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_policies_answer_as_weft_judges_the_target() {
    // A second workload on 127.0.0.1: a port neither declares is unknown.
    let (s, cp) = setup(&[]);
    s.write(
        "res/frontend.yaml",
        workload_ports("frontend", &[7000], 4143, ""),
    );
    let anchors = s.read("ca.crt");
    let pol_conn = channel(cp.addr("policy listening on"), &anchors, None)
        .await
        .unwrap();
    let dst_conn = channel(cp.addr("destination listening on"), &anchors, None)
        .await
        .unwrap();
    let mut outbound = OutboundPoliciesClient::new(pol_conn);
    let mut dst = DestinationClient::new(dst_conn);
    let loaded = Instant::now() + DEADLINE;
    loop {
        match outbound.get(to_addr("127.0.0.1:9999")).await {
            Err(e) if e.code() == Code::FailedPrecondition => break,
            r => assert!(Instant::now() < loaded, "frontend never loaded: {r:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Meshed, by address and by name: a balancer resolving through Destination.Get.
    for (spec, path) in [
        (to_addr("127.0.0.1:8080"), "127.0.0.1:8080"),
        (to_authority("demo/backend:8080"), "demo/backend:8080"),
    ] {
        let p = outbound.get(spec).await.unwrap().into_inner();
        let (proto, backend) = route_backend(&p);
        assert_eq!(proto, "detect", "{p:?}");
        assert_eq!(dst_path(&backend), path);
        let mut ends = dst.get(get(path)).await.unwrap().into_inner();
        let first = next(&mut ends, path).await;
        assert_eq!(identities(&first), vec![id("backend", "demo")]);
    }
    // The opaque port.
    let p = outbound
        .get(to_addr("127.0.0.1:5432"))
        .await
        .unwrap()
        .into_inner();
    let (proto, backend) = route_backend(&p);
    assert_eq!(proto, "opaque", "{p:?}");
    assert_eq!(dst_path(&backend), "127.0.0.1:5432");
    // Unmeshed: forwarded, without TLS.
    let p = outbound
        .get(to_addr("192.0.2.10:80"))
        .await
        .unwrap()
        .into_inner();
    let (_, backend) = route_backend(&p);
    match &backend.kind {
        Some(linkerd2_proxy_api::outbound::backend::Kind::Forward(a)) => {
            assert!(a.tls_identity.is_none(), "{a:?}");
            let to: SocketAddr = a.addr.unwrap().try_into().unwrap();
            assert_eq!(to, "192.0.2.10:80".parse::<SocketAddr>().unwrap());
        }
        other => panic!("unmeshed: not a forward backend: {other:?}"),
    }
    let mut ends = dst.get(get("192.0.2.10:80")).await.unwrap().into_inner();
    let first = next(&mut ends, "unmeshed Get").await;
    assert!(
        matches!(&first.update, Some(update::Update::Add(set)) if set.addrs[0].tls_identity.is_none()),
        "{first:?}"
    );
    // Unknown: an error to linkerd2-proxy, never "no policy".
    for (spec, path, dst_code) in [
        (
            to_addr("127.0.0.1:9999"),
            "127.0.0.1:9999",
            Code::FailedPrecondition,
        ),
        (to_authority("demo/nope:80"), "demo/nope:80", Code::NotFound),
    ] {
        let e = outbound.get(spec.clone()).await.unwrap_err();
        println!("unknown target {path}: {}", e.message());
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(!read_as_no_policy(e.code()));
        let e = outbound.watch(spec).await.unwrap_err();
        assert!(!read_as_no_policy(e.code()), "{e:?}");
        let e = dst.get(get(path)).await.unwrap_err();
        assert_eq!(e.code(), dst_code, "{e:?}");
    }
    // Malformed.
    let zero = TrafficSpec {
        source_workload: String::new(),
        target: Some(traffic_spec::Target::Addr(TcpAddress { ip: None, port: 0 })),
    };
    for bad in [to_authority("not a target"), zero, TrafficSpec::default()] {
        let e = outbound.get(bad).await.unwrap_err();
        println!("malformed: {}", e.message());
        assert_eq!(e.code(), Code::InvalidArgument);
    }
    assert!(refusals(&cp, "outbound.Get", "invalid_argument") >= 3.0);

    // A resource change streams: port 8080 turns opaque.
    let mut watch = outbound
        .watch(to_addr("127.0.0.1:8080"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route_backend(&next(&mut watch, "Watch").await).0, "detect");
    s.write("res/backend.yaml", backend_yaml("5432,8080"));
    let changed = Instant::now();
    let update = next(&mut watch, "Watch after the change").await;
    println!(
        "update streamed {:?} after the file was written",
        changed.elapsed()
    );
    assert_eq!(route_backend(&update).0, "opaque", "{update:?}");
}
