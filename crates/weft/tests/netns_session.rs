//! The transport header's session protocol in network namespaces, as root:
//! HTTP from a weft client proxy reaches the weft server proxy declared as
//! HTTP (no second detection; HTTP/1 over a pooled HTTP/2 connection), is judged per request by an HTTPRoute policy
//! and carries the verified `l5d-client-id`; a header that claims HTTP over
//! bytes that are not HTTP is refused, logged and counted.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::netmesh::{DEADLINE, NetMesh, app_in};
use common::proc::{metric_sum, poll};
use testbed::http_app::{self, Proto, Req};
use testbed::{block_on_in, have_root, in_ns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PORT: u16 = 8080;
/// No Server: the default policy (all-unauthenticated) for HTTP/2.
const H2_PORT: u16 = 8081;
const TD: &str = "demo.serviceaccount.identity.weft.cluster.local";

/// An HTTP/1 Server on 8080 with two routes: /open for client, /secret for
/// nobody (no authorization names it, so it is denied).
const ROUTES: &str = "
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: web, namespace: demo}
spec:
  podSelector: {matchLabels: {app: server}}
  port: 8080
  proxyProtocol: HTTP/1
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {name: web-open, namespace: demo}
spec:
  parentRefs: [{name: web, kind: Server, group: policy.linkerd.io}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /open}}]
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {name: web-secret, namespace: demo}
spec:
  parentRefs: [{name: web, kind: Server, group: policy.linkerd.io}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /secret}}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: client-sa, namespace: demo}
spec:
  identityRefs: [{kind: ServiceAccount, name: client}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-open, namespace: demo}
spec:
  targetRef: {group: policy.linkerd.io, kind: HTTPRoute, name: web-open}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: client-sa}
";

/// An HTTP/1.1 GET with `Connection: close` from inside `ns`: the status
/// and the `x-client-id` the test app saw in `l5d-client-id`.
fn get(ns: &str, to: SocketAddr, path: &'static str) -> Option<(u16, String)> {
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let client = text
            .lines()
            .find_map(|l| l.strip_prefix("x-client-id: "))
            .unwrap_or("")
            .to_string();
        Some((status, client))
    })
    .unwrap()
}

/// The transport header naming `port` and declaring HTTP/1 (field 3, a
/// SessionProtocol whose `http1` field 1 is an empty message).
fn header_declaring_http1(port: u16) -> Vec<u8> {
    let mut out = common::direct::transport_header(u64::from(port));
    out.extend_from_slice(&[0x1a, 0x02, 0x0a, 0x00]);
    let len = u32::try_from(out.len() - 27).unwrap();
    out[23..27].copy_from_slice(&len.to_be_bytes());
    out
}

/// From inside `ns`, as another proxy would: mTLS with `crt`/`key` to the
/// server's identity at `to`, `bytes` sent, whatever comes back until the
/// server closes returned.
fn direct(ns: &str, to: SocketAddr, m: &NetMesh, bytes: Vec<u8>) -> Vec<u8> {
    let (crt, key, ca) = (
        m.s.path("liar.crt"),
        m.s.path("liar.key"),
        m.s.path("ca.crt"),
    );
    block_on_in(ns, move || async move {
        let connector = common::direct::connector(&crt, &key, &[&ca]);
        let tcp = tokio::net::TcpStream::connect(to).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(format!("server.{TD}")).unwrap();
        let mut tls = connector.connect(name, tcp).await.expect("mTLS to server");
        tls.write_all(&bytes).await.unwrap();
        let mut back = Vec::new();
        let read = tls.read_to_end(&mut back);
        let _ = tokio::time::timeout(Duration::from_secs(20), read).await;
        back
    })
    .unwrap()
}

#[test]
fn http_is_declared_judged_per_request_and_lies_are_refused() {
    if !have_root("http_is_declared_judged_per_request_and_lies_are_refused") {
        return;
    }
    let m = NetMesh::build(
        &[("client", &[9]), ("server", &[PORT, H2_PORT])],
        &["c"],
        &[],
        &[("routes.yaml", ROUTES)],
    );
    app_in(&m.ns("server"), PORT);
    app_in(&m.ns("server"), H2_PORT);
    let to = m.addr("server", PORT);
    let client_ns = m.ns("client");

    // Per request: one path allowed, another 403, each from the weft
    // client proxy, which declared HTTP/1 in its transport header.
    let (status, seen_id) = poll("/open through both proxies", DEADLINE, || {
        get(&client_ns, to, "/open").filter(|(s, _)| *s == 200)
    });
    assert_eq!(status, 200);
    assert_eq!(seen_id, format!("client.{TD}"), "the app saw l5d-client-id");
    let (status, _) = get(&client_ns, to, "/secret").unwrap();
    assert_eq!(status, 403, "/secret has no authorization");

    // HTTP/1 from the app goes over one pooled HTTP/2 connection declared
    // h2 (each request carrying l5d-orig-proto), judged per request.
    let h2_used = |m: &NetMesh| {
        metric_sum(
            &m.metrics("server"),
            "inbound_session_protocol_total",
            &["protocol=\"h2\"", "outcome=\"used\""],
        )
    };
    let pooled = h2_used(&m);
    assert!(
        pooled >= 1.0,
        "the server used the declared protocol: {pooled}"
    );
    let out = metric_sum(
        &m.metrics("client"),
        "tcp_open_total",
        &["direction=\"outbound\"", "protocol=\"h2\"", "tls=\"true\""],
    );
    assert_eq!(
        out, pooled,
        "the client declared h2 for its pooled connection"
    );
    println!("pooled connections: the client opened {out}, the server used {pooled} as declared");
    let used = |m: &NetMesh| {
        metric_sum(
            &m.metrics("server"),
            "inbound_session_protocol_total",
            &["protocol=\"http/1\"", "outcome=\"used\""],
        )
    };
    let n = used(&m);

    // HTTP/2 (prior knowledge) is declared as such and served per request.
    let h2 = m.addr("server", H2_PORT);
    let replies = block_on_in(&client_ns, move || async move {
        let tcp = tokio::net::TcpStream::connect(h2).await.unwrap();
        http_app::requests(tcp, Proto::H2, vec![Req::get("/h2"), Req::get("/h2-again")]).await
    })
    .unwrap()
    .unwrap();
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-app-version"), Some("HTTP/2"));
        assert_eq!(
            r.header("x-client-id").map(str::to_string),
            Some(format!("client.{TD}"))
        );
    }
    assert_eq!(
        h2_used(&m),
        pooled + 1.0,
        "the app's HTTP/2 connection, declared h2, on a connection of its own"
    );

    // A header that claims HTTP/1 over bytes that are not HTTP: refused.
    let ia = format!("{}:8080", m.cp_ip);
    let r = testbed::run(
        m.bed
            .by_name("c")
            .cmd(env!("CARGO_BIN_EXE_weft"))
            .current_dir(m.s.dir.path())
            .args([
                "certs",
                "request",
                &format!("client.{TD}"),
                "liar.crt",
                "liar.key",
                "--control-plane",
                &ia,
                "--roots",
                "ca.crt",
                "--token-file",
                "client.token",
            ]),
    );
    assert!(r.is_ok(), "a client certificate: {r:?}");
    let mut lie = header_declaring_http1(PORT);
    lie.extend_from_slice(b"\x00\x01 not http at all\r\n\r\n");
    let back = direct(&m.ns("c"), to, &m, lie);
    assert!(
        back.is_empty(),
        "refused: got {:?}",
        String::from_utf8_lossy(&back)
    );
    poll("the refusal counted", DEADLINE, || {
        let body = m.metrics("server");
        let refused = metric_sum(
            &body,
            "inbound_session_protocol_total",
            &["protocol=\"http/1\"", "outcome=\"refused\""],
        );
        let reason = metric_sum(
            &body,
            "tcp_refused_total",
            &["reason=\"session_protocol_mismatch\""],
        );
        (refused >= 1.0 && reason >= 1.0).then_some(())
    });
    let (_, p) = m.proxies.iter().find(|(n, _)| n == "server").unwrap();
    p.as_ref().unwrap().wait_for_line(
        "the transport header declared http/1 for port 8080",
        DEADLINE,
    );

    // The same header over real HTTP/1 is served (and still judged).
    let mut honest = header_declaring_http1(PORT);
    honest.extend_from_slice(b"GET /open HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n");
    let back = String::from_utf8_lossy(&direct(&m.ns("c"), to, &m, honest)).to_string();
    assert!(back.starts_with("HTTP/1.1 200"), "{back}");
    assert!(
        back.contains(&format!("x-client-id: client.{TD}")),
        "{back}"
    );
    assert_eq!(used(&m), n + 1.0);
}
