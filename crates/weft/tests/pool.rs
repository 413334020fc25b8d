//! HTTP/1 between proxies over pooled HTTP/2 (ports mode, no root): many
//! short application connections share one mTLS connection to the peer
//! proxy (counted on both proxies' metrics), every request is still judged
//! by the peer's policy with the client's identity, the application reads
//! the HTTP/1 it was sent (version, Host, body), HTTP/1 upgrades and
//! CONNECT get a connection of their own (HTTP/2 CONNECT a pooled stream), a port whose Server says opaque is forwarded
//! as bytes, and a new certificate retires the pooled connection.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Scratch;
use common::mesh::{free_port, spawn_app, start_proxy, workload_ports};
use common::proc::{Proc, admin_post, http_get, metric_sum, poll, until_ready};
use testbed::http_app::{self, Req};

const DEADLINE: Duration = Duration::from_secs(30);
const TD: &str = "demo.serviceaccount.identity.weft.cluster.local";

/// Port `routed` declares HTTP/1 with /open for frontend only (/secret has
/// no authorization); `opaque` is a Server saying opaque that frontend may
/// use; the third port has no Server (the default policy allows all).
fn policy(routed: u16, opaque: u16) -> String {
    format!(
        "apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {{name: web, namespace: demo}}
spec:
  podSelector: {{matchLabels: {{app: backend}}}}
  port: {routed}
  proxyProtocol: HTTP/1
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {{name: web-open, namespace: demo}}
spec:
  parentRefs: [{{name: web, kind: Server, group: policy.linkerd.io}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /open}}}}]
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {{name: web-secret, namespace: demo}}
spec:
  parentRefs: [{{name: web, kind: Server, group: policy.linkerd.io}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /secret}}}}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {{name: frontend-sa, namespace: demo}}
spec:
  identityRefs: [{{kind: ServiceAccount, name: frontend}}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: web-open, namespace: demo}}
spec:
  targetRef: {{group: policy.linkerd.io, kind: HTTPRoute, name: web-open}}
  requiredAuthenticationRefs:
  - {{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: frontend-sa}}
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {{name: raw, namespace: demo}}
spec:
  podSelector: {{matchLabels: {{app: backend}}}}
  port: {opaque}
  proxyProtocol: opaque
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: raw, namespace: demo}}
spec:
  targetRef: {{group: policy.linkerd.io, kind: Server, name: raw}}
  requiredAuthenticationRefs:
  - {{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: frontend-sa}}
"
    )
}

struct Bed {
    _s: Scratch,
    cp: Proc,
    backend: Proc,
    frontend: Proc,
    /// The frontend's outbound mappings: routed, open, opaque-Server ports.
    routed: SocketAddr,
    open: SocketAddr,
    opaque: SocketAddr,
}

fn up() -> Bed {
    let s = Scratch::new();
    s.guide_material();
    let apps = [spawn_app(), spawn_app(), spawn_app()];
    let (be_in, fe_in) = (free_port(), free_port());
    std::fs::create_dir(s.path("resources")).unwrap();
    let yaml = [
        workload_ports("frontend", &[9], fe_in, ""),
        workload_ports("backend", &apps, be_in, ""),
        policy(apps[0], apps[2]),
    ]
    .concat();
    s.write("resources/demo.yaml", yaml);
    let cp = s.control_plane(&["--resources", "resources"]);
    until_ready(&cp);
    let backend = start_proxy(&s, "backend", be_in, &cp, &[], &[]);
    let local = [free_port(), free_port(), free_port()];
    let maps: Vec<String> = local
        .iter()
        .zip(apps)
        .map(|(l, a)| format!("127.0.0.1:{l}=demo/backend:{a}"))
        .collect();
    let frontend = start_proxy(&s, "frontend", fe_in, &cp, &maps, &[]);
    for p in [&backend, &frontend] {
        until_ready(p);
    }
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    Bed {
        _s: s,
        cp,
        backend,
        frontend,
        routed: at(local[0]),
        open: at(local[1]),
        opaque: at(local[2]),
    }
}

/// The response to one request on a new connection (`Connection: close`
/// unless the request says otherwise): its head lines and body.
fn exchange(to: SocketAddr, request: &str) -> Option<(String, String)> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.to_string(), body.to_string()))
}

fn get(to: SocketAddr, path: &str) -> Option<(String, String)> {
    exchange(
        to,
        &format!("GET {path} HTTP/1.1\r\nHost: backend.demo:80\r\nConnection: close\r\n\r\n"),
    )
}

fn status(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// One response from a kept-alive connection: its head, and its body by
/// Content-Length (none for 1xx).
fn read_response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "the head ended early: {got:?}"
        );
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).to_string();
    let len = header(&head, "content-length").map_or(0, |l| l.parse().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (head, body)
}

fn metrics(p: &Proc) -> String {
    http_get(p.addr("admin listening on"), "/metrics")
        .unwrap()
        .1
}

/// Pooled connections the frontend opened and closed, and the HTTP/2
/// connections the backend accepted declared by a transport header.
fn pooled(b: &Bed) -> (f64, f64, f64) {
    let f = metrics(&b.frontend);
    let out = ["direction=\"outbound\"", "protocol=\"h2\"", "tls=\"true\""];
    let accepted = metric_sum(
        &metrics(&b.backend),
        "inbound_session_protocol_total",
        &["protocol=\"h2\"", "outcome=\"used\""],
    );
    (
        metric_sum(&f, "tcp_open_total", &out),
        metric_sum(&f, "tcp_close_total", &out),
        accepted,
    )
}

#[test]
fn short_connections_share_a_pooled_connection_judged_per_request() {
    let b = up();
    let id = format!("frontend.{TD}");
    let (head, _) = poll("/open through both proxies", DEADLINE, || {
        get(b.routed, "/open").filter(|(h, _)| status(h) == 200)
    });
    assert_eq!(header(&head, "x-client-id"), Some(id.as_str()), "{head}");
    assert_eq!(header(&head, "x-app-version"), Some("HTTP/1.1"), "{head}");
    assert_eq!(
        header(&head, "x-app-host"),
        Some("backend.demo:80"),
        "{head}"
    );

    // A new application connection per request, sequential then 8 at once.
    let n = 300;
    let t = Instant::now();
    for i in 0..n {
        let (head, body) = get(b.routed, &format!("/open/{i}")).unwrap();
        assert_eq!(status(&head), 200, "request {i}: {head}");
        assert_eq!(body, format!("ok GET /open/{i}"));
    }
    let seq = t.elapsed();
    let t = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let to = b.routed;
            std::thread::spawn(move || {
                for i in 0..50 {
                    let (head, _) = get(to, &format!("/open/{w}/{i}")).unwrap();
                    assert_eq!(status(&head), 200, "{head}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let par = t.elapsed();
    let (opened, _, accepted) = pooled(&b);
    println!(
        "{n} sequential app connections in {seq:?} ({:.0}/s), 400 from 8 threads in {par:?} ({:.0}/s); pooled mTLS connections: frontend opened {opened}, backend accepted {accepted}",
        f64::from(n) / seq.as_secs_f64(),
        400.0 / par.as_secs_f64()
    );
    assert!(
        (1.0..=3.0).contains(&opened) && (1.0..=3.0).contains(&accepted),
        "701 app connections shared the pool: opened {opened}, accepted {accepted}"
    );

    // Judged per request on the pooled connection: denied, then allowed on
    // the same app connection and the same pooled connection.
    let replies = block_on(async move {
        let tcp = tokio::net::TcpStream::connect(b.routed).await.unwrap();
        http_app::h1_keepalive(tcp, vec![Req::get("/secret"), Req::get("/open/after")]).await
    })
    .unwrap();
    assert_eq!(replies[0].status, 403, "{}", replies[0].text());
    let why = replies[0].header("l5d-proxy-error").unwrap_or("");
    assert!(why.contains("unauthorized"), "{why}");
    assert_eq!(replies[1].status, 200, "{}", replies[1].text());
    assert_eq!(
        pooled(&b).0,
        opened,
        "a denial does not cost the pool its connection"
    );

    // HTTP/1.0 without Host: the app reads HTTP/1.0, the target as Host.
    let (head, _) = exchange(b.open, "GET /ten HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(header(&head, "x-app-version"), Some("HTTP/1.0"), "{head}");
    let host = header(&head, "x-app-host").unwrap_or("-");
    assert!(host.starts_with("backend.demo:"), "{head}");

    // A body, the client half-closing after it: the answer still comes.
    let body = "x".repeat(100_000);
    let mut s = TcpStream::connect(b.open).unwrap();
    write!(
        s,
        "POST /sha HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let mut sha = testbed::http_app::Sha::new();
    sha.update(body.as_bytes());
    assert!(text.ends_with(&sha.finish()), "{text}");

    // An upgrade after a pooled request on the same app connection: it
    // leaves the pool for a connection of its own and becomes a tunnel.
    let mut s = TcpStream::connect(b.open).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /first HTTP/1.1\r\nHost: app\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s);
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(body, b"ok GET /first");
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    let (head, _) = read_response(&mut s);
    assert_eq!(status(&head), 101, "{head}");
    s.write_all(b"upgraded bytes").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut echoed = Vec::new();
    s.read_to_end(&mut echoed).unwrap();
    assert_eq!(echoed, b"upgraded bytes");

    // Upgrades and CONNECT first: the connection is forwarded as it was
    // before pooling (one of its own, declared HTTP/1), then a tunnel.
    let (ws, tunnel) = block_on(async move {
        let tcp = tokio::net::TcpStream::connect(b.open).await.unwrap();
        let ws = http_app::websocket_echo(tcp, b"hello through the mesh").await;
        let tcp = tokio::net::TcpStream::connect(b.open).await.unwrap();
        let tunnel = http_app::connect_echo(tcp, "db.demo:5432", b"tunnelled bytes").await;
        (ws, tunnel)
    });
    let ws = ws.unwrap();
    assert_eq!(ws.status, 101, "{}", ws.text());
    assert_eq!(ws.body, b"hello through the mesh");
    let tunnel = tunnel.unwrap();
    assert_eq!(tunnel.status, 200, "{}", tunnel.text());
    assert_eq!(tunnel.body, b"tunnelled bytes");

    // A Server that says opaque makes its port opaque in discovery: the
    // client forwards the bytes (no pool) and the app reads them as sent.
    let opaque = |b: &Bed| {
        let out = [
            "direction=\"outbound\"",
            "protocol=\"opaque\"",
            "tls=\"true\"",
        ];
        metric_sum(&metrics(&b.frontend), "tcp_open_total", &out)
    };
    let (before, pooled_before) = (opaque(&b), pooled(&b).0);
    let (head, _) = get(b.opaque, "/raw").unwrap();
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(header(&head, "x-app-version"), Some("HTTP/1.1"), "{head}");
    assert_eq!(opaque(&b), before + 1.0, "one opaque mTLS connection");
    assert_eq!(pooled(&b).0, pooled_before, "no new pooled connection");

    // A new certificate retires the pooled connections: closed, and the
    // next request handshakes again.
    let (opened, closed, _) = pooled(&b);
    let answer = admin_post(b.cp.addr("admin listening on"), "/renew-now");
    assert!(answer.contains("\"asked\""), "{answer}");
    poll("the pooled connections closed", DEADLINE, || {
        (pooled(&b).1 >= opened.max(closed + 1.0)).then_some(())
    });
    let (head, _) = get(b.routed, "/open/renewed").unwrap();
    assert_eq!(status(&head), 200, "{head}");
    let (again, _, _) = pooled(&b);
    assert!(
        again > opened,
        "a new handshake after the renewal: {again} > {opened}"
    );
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Runtime::new().unwrap().block_on(f)
}

/// HTTP/2 from the application (gRPC included) is pooled as HTTP/1 is: many
/// short app connections share few mTLS connections, each request still
/// reaches the app as HTTP/2 with the client's identity, a gRPC stream
/// keeps its messages and trailers, and CONNECT becomes a tunnel.
#[test]
fn http2_app_connections_share_the_pool() {
    let b = up();
    let id = format!("frontend.{TD}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let h2 = |path: String| {
        rt.block_on(async {
            let s = tokio::net::TcpStream::connect(b.open).await.unwrap();
            tokio::time::timeout(DEADLINE, http_app::h2(s, Req::get(&path))).await
        })
    };
    let first = poll("HTTP/2 through both proxies", DEADLINE, || {
        h2("/h2".into()).ok()?.ok().filter(|r| r.status == 200)
    });
    assert_eq!(first.header("x-client-id"), Some(id.as_str()));
    assert_eq!(first.header("x-app-version"), Some("HTTP/2"));
    let n = 100;
    let t = Instant::now();
    for i in 0..n {
        let r = h2(format!("/h2/{i}")).unwrap().unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.header("x-client-id"), Some(id.as_str()));
    }
    let seq = t.elapsed();
    let (opened, _, accepted) = pooled(&b);
    println!(
        "{n} HTTP/2 app connections in {seq:?} ({:.0}/s); pooled mTLS connections: frontend opened {opened}, backend accepted {accepted}",
        f64::from(n) / seq.as_secs_f64()
    );
    assert!(
        (1.0..=3.0).contains(&opened) && (1.0..=3.0).contains(&accepted),
        "{} HTTP/2 app connections shared the pool: opened {opened}, accepted {accepted}",
        n + 1
    );
    let (grpc_status, _) = rt
        .block_on(async {
            let s = tokio::net::TcpStream::connect(b.open).await.unwrap();
            tokio::time::timeout(DEADLINE, http_app::grpc_bidi(s, 20, 4096)).await
        })
        .unwrap()
        .unwrap();
    assert_eq!(grpc_status, 0, "20 gRPC messages each way, status OK");
    assert!(pooled(&b).0 <= 3.0, "the gRPC stream used the pool too");

    // CONNECT is a stream of the pooled connection, then a tunnel through
    // both proxies to the app (which echoes), half-close carried.
    let payload = testbed::http_app::pattern(256 * 1024);
    let tunnel = rt
        .block_on(async {
            let s = tokio::net::TcpStream::connect(b.open).await.unwrap();
            http_app::connect_echo_h2(s, "db.demo:5432", &payload).await
        })
        .unwrap();
    assert_eq!(tunnel.status, 200, "{}", tunnel.text());
    assert!(
        tunnel.body == payload,
        "{} bytes came back altered",
        tunnel.body.len()
    );
    // Extended CONNECT (a WebSocket over HTTP/2) likewise.
    let ws = rt
        .block_on(async {
            let s = tokio::net::TcpStream::connect(b.open).await.unwrap();
            http_app::websocket_echo_h2(s, "/ws", b"hello over HTTP/2").await
        })
        .unwrap();
    assert_eq!(ws.status, 200, "{}", ws.text());
    assert_eq!(ws.body, b"hello over HTTP/2");
    assert!(pooled(&b).0 <= 3.0, "the CONNECT streams used the pool too");
}
