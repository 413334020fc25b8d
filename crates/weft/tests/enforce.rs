//! Policy enforced by the real proxies in ports mode (one host, no root):
//! the guide's manifests in force on backend, frontend allowed, an intruder
//! refused as its protocol expects, every HTTP shape still working through
//! request-level enforcement, and live edits flipping verdicts.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Scratch;
use common::mesh::{echo_server, free_port, spawn_app, start_proxy, workload, workload_ports};
use common::proc::{Proc, http_get, metric_sum, poll};
use testbed::http_app::{self, Proto, Req};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(30);
const FE: &str = "frontend.demo.serviceaccount.identity.weft.cluster.local";
const INTRUDER: &str = "intruder.demo.serviceaccount.identity.weft.cluster.local";
const GUIDE: &str = include_str!("fixtures/guide/policy.yaml");

/// The guide's manifests split so tests can delete the MeshTLSAuthentication
/// alone: (Server + AuthorizationPolicy, MeshTLSAuthentication), with the
/// Server's port 8080 replaced by the app's port on this host.
fn guide_files(http_port: u16) -> (String, String) {
    let docs: Vec<&str> = GUIDE.split("\n---\n").collect();
    assert_eq!(docs.len(), 3, "the guide fixture holds three resources");
    let server = docs[0].replace("port: 8080", &format!("port: {http_port}"));
    (
        format!("{server}\n---\n{}\n", docs[1]),
        format!("{}\n", docs[2]),
    )
}

/// An opaque Server on the TCP port, open to frontend-sa only.
fn tcp_policy(tcp_port: u16) -> String {
    format!(
        "apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata:
  name: backend-tcp
  namespace: demo
spec:
  podSelector:
    matchLabels:
      app: backend
  port: {tcp_port}
  proxyProtocol: opaque
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: backend-tcp-allow-frontend
  namespace: demo
spec:
  targetRef:
    group: policy.linkerd.io
    kind: Server
    name: backend-tcp
  requiredAuthenticationRefs:
  - name: frontend-sa
    kind: MeshTLSAuthentication
    group: policy.linkerd.io
"
    )
}

/// Backend with three ports: `http` (the guide's Server), `tcp` (an opaque
/// Server for frontend), `open` (no Server: the default policy). Frontend
/// and intruder reach each through their own outbound listeners.
struct PolicyMesh {
    s: Scratch,
    cp: Option<Proc>,
    backend: Proc,
    _clients: Vec<Proc>,
    out: Vec<(String, SocketAddr)>,
    http_port: u16,
    open_port: u16,
}

impl PolicyMesh {
    fn up() -> Self {
        let s = Scratch::new();
        s.guide_material();
        let (http_port, open_port, tcp_port) = (spawn_app(), spawn_app(), echo_server());
        let (be_in, fe_in, in_in) = (free_port(), free_port(), free_port());
        std::fs::create_dir(s.path("resources")).unwrap();
        s.write(
            "resources/workloads.yaml",
            [
                workload_ports("backend", &[http_port, tcp_port, open_port], be_in, ""),
                workload("frontend", free_port(), fe_in, ""),
                workload("intruder", free_port(), in_in, ""),
            ]
            .concat(),
        );
        let (policy, meshtls) = guide_files(http_port);
        s.write("resources/policy.yaml", policy);
        s.write("resources/meshtls.yaml", meshtls);
        s.write("resources/tcp.yaml", tcp_policy(tcp_port));
        let cp = s.control_plane(&["--resources", "resources", "--reread-interval", "1s"]);
        let admin = cp.addr("admin listening on");
        poll("control plane ready", DEADLINE, || {
            matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
        });
        // No --policy-addr: policy comes over the destination connection.
        let one = ["--policy-addr", ""];
        let backend = start_proxy(&s, "backend", be_in, &cp, &[], &one);
        let mut out = Vec::new();
        let mut clients = Vec::new();
        for (client, inbound) in [("frontend", fe_in), ("intruder", in_in)] {
            let mut mappings = Vec::new();
            for (name, port) in [("http", http_port), ("tcp", tcp_port), ("open", open_port)] {
                let local = SocketAddr::from(([127, 0, 0, 1], free_port()));
                mappings.push(format!("{local}=demo/backend:{port}"));
                out.push((format!("{client}/{name}"), local));
            }
            clients.push(start_proxy(&s, client, inbound, &cp, &mappings, &one));
        }
        for p in clients.iter().chain([&backend]) {
            let a = p.addr("admin listening on");
            poll("proxy ready", DEADLINE, || {
                matches!(http_get(a, "/ready"), Ok((200, _))).then_some(())
            });
        }
        PolicyMesh {
            s,
            cp: Some(cp),
            backend,
            _clients: clients,
            out,
            http_port,
            open_port,
        }
    }

    fn out(&self, route: &str) -> SocketAddr {
        self.out.iter().find(|(n, _)| n == route).unwrap().1
    }

    async fn conn(&self, route: &str) -> TcpStream {
        TcpStream::connect(self.out(route)).await.unwrap()
    }

    async fn get(&self, route: &str, path: &str) -> http_app::Reply {
        http_app::h1(self.conn(route).await, Req::get(path))
            .await
            .unwrap_or_else(|e| panic!("GET {path} via {route}: {e}"))
    }

    fn backend_metrics(&self) -> String {
        let a = self.backend.addr("admin listening on");
        http_get(a, "/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    /// Polls until a GET via `route` answers `status`.
    async fn until_status(&self, route: &str, status: u16, why: &str) {
        let end = std::time::Instant::now() + DEADLINE;
        loop {
            let got = http_app::h1(self.conn(route).await, Req::get("/poll")).await;
            if matches!(&got, Ok(r) if r.status == status) {
                return;
            }
            assert!(
                std::time::Instant::now() < end,
                "{why}: {route} still answers {got:?}, not {status}\nbackend proxy:\n{}",
                self.backend.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Sends `data` on a new connection, half-closes, reads all back (an
/// error or nothing when the proxy closed it).
async fn tcp_roundtrip(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(data).await?;
    s.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut back))
        .await
        .map_err(|_| std::io::Error::other("no end within 20s"))??;
    Ok(back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allowed_requests_keep_every_http_shape_working() {
    let m = PolicyMesh::up();
    let r = "frontend/http";

    // The app sees the verified identity, never the one the client sent.
    for proto in [Proto::H1, Proto::H2] {
        let req = Req::get("/who").header("l5d-client-id", "admin.forged.example");
        let replies = http_app::requests(m.conn(r).await, proto, vec![req])
            .await
            .unwrap();
        assert_eq!(replies[0].status, 200, "{proto:?}: {}", replies[0].text());
        assert_eq!(replies[0].header("x-client-id"), Some(FE), "{proto:?}");
    }

    let old = http_app::http10(m.conn(r).await, "/old").await.unwrap();
    assert_eq!(
        (old.status, old.header("x-app-version")),
        (200, Some("HTTP/1.0"))
    );

    let keep = http_app::h1_keepalive(
        m.conn(r).await,
        vec![Req::get("/1"), Req::get("/2"), Req::get("/3")],
    )
    .await
    .unwrap();
    assert!(keep.iter().all(|r| r.status == 200), "{keep:?}");

    // Chunked bodies stream: each chunk comes back before the next is sent.
    let echo = http_app::h1_streaming_echo(m.conn(r).await, 32, 16 * 1024)
        .await
        .unwrap();
    assert_eq!(echo.status, 200);

    let body = http_app::pattern(1 << 20);
    let cont = http_app::expect_continue(m.conn(r).await, body.clone())
        .await
        .unwrap();
    assert_eq!(cont.status, 200);
    assert_eq!(
        cont.text(),
        format!("{} {}", http_app::sha256_hex(&body), body.len())
    );

    let payload = http_app::pattern(256 * 1024);
    let ws = http_app::websocket_echo(m.conn(r).await, &payload)
        .await
        .unwrap();
    assert_eq!(ws.status, 101);
    assert_eq!(
        http_app::sha256_hex(&ws.body),
        http_app::sha256_hex(&payload)
    );
    let tunnel = http_app::connect_echo(m.conn(r).await, "backend:443", &payload)
        .await
        .unwrap();
    assert_eq!(tunnel.status, 200);
    assert_eq!(
        http_app::sha256_hex(&tunnel.body),
        http_app::sha256_hex(&payload)
    );

    let (status, _) = http_app::grpc_bidi(m.conn(r).await, 64, 4096)
        .await
        .unwrap();
    assert_eq!(status, 0, "gRPC bidirectional stream through the proxies");

    for proto in [Proto::H1, Proto::H2] {
        let size = 64 << 20;
        let up = http_app::upload_sha(m.conn(r).await, proto, size)
            .await
            .unwrap();
        assert_eq!(up.status, 200, "{proto:?} upload");
        assert_eq!(up.text(), http_app::pattern_sha(size), "{proto:?} upload");
        let down = http_app::download(m.conn(r).await, proto, size)
            .await
            .unwrap();
        assert_eq!(
            down.status, 200,
            "{proto:?} download (length and SHA-256 checked)"
        );
    }

    let metrics = m.backend_metrics();
    let allowed = metric_sum(
        &metrics,
        "inbound_http_authz_allow_total",
        &[
            "srv_name=\"backend-server\"",
            "authz_kind=\"authorizationpolicy\"",
            "authz_name=\"backend-allow-frontend\"",
        ],
    );
    assert!(allowed >= 10.0, "allow counter moved: {allowed}\n{metrics}");
    assert_eq!(
        metric_sum(&metrics, "inbound_http_authz_deny_total", &[]),
        0.0,
        "nothing of frontend's was denied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unauthorized_clients_are_refused_as_their_protocol_expects() {
    let m = PolicyMesh::up();
    let r = "intruder/http";

    // HTTP: 403 naming the reason, and the connection stays usable.
    let replies = http_app::h1_keepalive(m.conn(r).await, vec![Req::get("/a"), Req::get("/b")])
        .await
        .unwrap();
    assert_eq!(replies.len(), 2);
    for reply in &replies {
        assert_eq!(reply.status, 403, "{}", reply.text());
        let e = reply.header("l5d-proxy-error").unwrap_or_default();
        assert!(
            e.contains(&format!("{INTRUDER} is not among its identities")),
            "{e}"
        );
    }
    let h2 = http_app::h2(m.conn(r).await, Req::get("/a")).await.unwrap();
    assert_eq!(h2.status, 403);
    // A denied upload is answered without waiting for the body.
    let cont = http_app::expect_continue(m.conn(r).await, vec![7; 1 << 20])
        .await
        .unwrap();
    assert_eq!(cont.status, 403);
    let ws = http_app::websocket_echo(m.conn(r).await, b"let me in")
        .await
        .unwrap();
    assert_eq!(ws.status, 403);
    // gRPC: PERMISSION_DENIED.
    let (status, headers) = http_app::grpc_bidi(m.conn(r).await, 1, 16).await.unwrap();
    assert_eq!(status, 7, "{headers:?}");

    // Opaque TCP: closed after accept, nothing reaches the app.
    let got = tcp_roundtrip(m.out("intruder/tcp"), b"hello").await;
    assert!(
        got.as_ref().map_or(true, |b| b.is_empty()),
        "the intruder's TCP connection carried bytes: {got:?}"
    );
    assert_eq!(
        tcp_roundtrip(m.out("frontend/tcp"), b"hello")
            .await
            .unwrap(),
        b"hello"
    );

    // A port without a Server follows the default (all-unauthenticated).
    let open = m.get("intruder/open", "/x").await;
    assert_eq!(open.status, 200);
    assert_eq!(open.header("x-client-id"), Some(INTRUDER));

    let metrics = m.backend_metrics();
    for (name, labels) in [
        (
            "inbound_http_authz_deny_total",
            "srv_name=\"backend-server\"",
        ),
        ("inbound_tcp_authz_deny_total", "srv_name=\"backend-tcp\""),
        (
            "inbound_tcp_authz_allow_total",
            "authz_name=\"backend-tcp-allow-frontend\"",
        ),
        (
            "inbound_http_authz_allow_total",
            "authz_name=\"all-unauthenticated\"",
        ),
    ] {
        assert!(
            metric_sum(&metrics, name, &[labels]) >= 1.0,
            "{name}{{{labels}}} moved\n{metrics}"
        );
    }
    let denied = metric_sum(
        &metrics,
        "inbound_http_authz_deny_total",
        &["srv_kind=\"server\"", "srv_name=\"backend-server\""],
    );
    assert!(denied >= 6.0, "every denied request counted: {denied}");
    // One audit line per denial, naming client, server and reason.
    let audit = m.backend.wait_for_line("connection denied", DEADLINE);
    assert!(
        audit.contains(INTRUDER) && audit.contains("server:backend-tcp"),
        "{audit}"
    );
    let audit = m.backend.wait_for_line("request denied", DEADLINE);
    assert!(
        audit.contains(INTRUDER) && audit.contains("server:backend-server"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_edits_apply_live_and_close_denied_connections() {
    let mut m = PolicyMesh::up();
    assert_eq!(m.get("frontend/http", "/").await.status, 200);
    assert_eq!(m.get("intruder/http", "/").await.status, 403);
    // Each proxy holds one control-plane connection (identity's are done):
    // discovery, the mesh stream and policy share it.
    let cp_admin = m.cp.as_ref().unwrap().addr("admin listening on");
    let gauge = |l: &str| format!("listener_connections_open{{listener=\"{l}\"}}");
    let one_each = || {
        let metrics = http_get(cp_admin, "/metrics")
            .map(|r| r.1)
            .unwrap_or_default();
        let lines = |l: &str| {
            let g = gauge(l);
            metrics
                .lines()
                .filter(|m| m.starts_with(&g))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let none_to_policy = lines("policy").iter().all(|l| l.ends_with(" 0"));
        (lines("destination") == [format!("{} 3", gauge("destination"))] && none_to_policy)
            .then_some(())
            .ok_or(metrics)
    };
    let end = std::time::Instant::now() + DEADLINE;
    while let Err(metrics) = one_each() {
        assert!(
            std::time::Instant::now() < end,
            "three proxies, one connection each, none to the policy address:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An open opaque connection from frontend, carrying bytes.
    let mut open = m.conn("frontend/tcp").await;
    open.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(DEADLINE, open.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");

    // An open WebSocket tunnel from frontend, carrying bytes.
    let mut ws = m.conn("frontend/http").await;
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: backend\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tokio::time::timeout(DEADLINE, ws.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    ws.write_all(b"tunnel").await.unwrap();
    let mut six = [0u8; 6];
    tokio::time::timeout(DEADLINE, ws.read_exact(&mut six))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&six, b"tunnel");

    // Deleting the MeshTLSAuthentication denies frontend: new requests get
    // 403, and the open connections are closed.
    std::fs::remove_file(m.s.path("resources/meshtls.yaml")).unwrap();
    m.until_status("frontend/http", 403, "MeshTLSAuthentication deleted")
        .await;
    let closed = tokio::time::timeout(DEADLINE, open.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the open connection was closed when the policy stopped allowing it: {closed:?}"
    );
    assert!(
        tcp_roundtrip(m.out("frontend/tcp"), b"x")
            .await
            .map_or(true, |b| b.is_empty())
    );
    m.backend
        .wait_for_line("closed an open connection: the policy changed", DEADLINE);
    let closed = tokio::time::timeout(DEADLINE, ws.read(&mut six)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the WebSocket tunnel was closed when the policy stopped allowing it: {closed:?}"
    );
    m.backend.wait_for_line(
        "closed an upgraded connection: the policy changed",
        DEADLINE,
    );

    // Restoring it allows frontend again.
    let (_, meshtls) = guide_files(m.http_port);
    m.s.write("resources/meshtls.yaml", &meshtls);
    m.until_status("frontend/http", 200, "MeshTLSAuthentication restored")
        .await;

    // Namespace default deny: the port without a Server refuses everyone.
    m.s.write(
        "resources/ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  annotations:\n    config.linkerd.io/default-inbound-policy: deny\n",
    );
    m.until_status(
        "intruder/open",
        403,
        "namespace default-inbound-policy=deny",
    )
    .await;
    m.until_status(
        "frontend/open",
        403,
        "namespace default-inbound-policy=deny",
    )
    .await;
    std::fs::remove_file(m.s.path("resources/ns.yaml")).unwrap();
    m.until_status("intruder/open", 200, "namespace annotation removed")
        .await;

    // Deleting the Server reopens its port to the default policy.
    let (policy, _) = guide_files(m.http_port);
    let without_server = policy.split("\n---\n").nth(1).unwrap().to_string();
    m.s.write("resources/policy.yaml", without_server);
    m.until_status("intruder/http", 200, "Server deleted: default policy")
        .await;
    m.s.write("resources/policy.yaml", policy);
    m.until_status("intruder/http", 403, "Server restored")
        .await;

    // A Server that declares HTTP/1 is served as HTTP or not at all: bytes
    // that are not HTTP are refused, never passed through as opaque.
    m.s.write(
        "resources/h1.yaml",
        format!(
            "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata:\n  name: backend-open-h1\n  namespace: demo\nspec:\n  podSelector:\n    matchLabels:\n      app: backend\n  port: {}\n  proxyProtocol: HTTP/1\n  accessPolicy: all-unauthenticated\n",
            m.open_port
        ),
    );
    m.backend
        .wait_for_line("server=server:backend-open-h1", DEADLINE);
    assert_eq!(m.get("intruder/open", "/").await.status, 200);
    let refused = |body: &str| {
        metric_sum(
            body,
            "tcp_refused_total",
            &["direction=\"inbound\"", "reason=\"not_http\""],
        )
    };
    let before = refused(&m.backend_metrics());
    let got = tcp_roundtrip(m.out("intruder/open"), b"\x00\x01 not http at all\r\n").await;
    assert!(got.as_ref().map_or(true, |b| b.is_empty()), "{got:?}");
    assert!(
        refused(&m.backend_metrics()) > before,
        "refused as not HTTP"
    );
    std::fs::remove_file(m.s.path("resources/h1.yaml")).unwrap();

    // A second Server claiming the port (sorting first) does not take it
    // over: the one in force stays, and the conflict is reported.
    let (policy, _) = guide_files(m.http_port);
    let rival = policy
        .split("\n---\n")
        .next()
        .unwrap()
        .replace("name: backend-server", "name: aaa-rival");
    m.s.write("resources/rival.yaml", rival);
    m.cp.as_ref()
        .unwrap()
        .wait_for_line("aaa-rival, backend-server all select", DEADLINE);
    assert!(
        m.cp.as_ref()
            .unwrap()
            .output()
            .contains("backend-server is in force (it was already serving the port)")
    );
    assert_eq!(m.get("frontend/http", "/").await.status, 200);
    assert_eq!(m.get("intruder/http", "/").await.status, 403);
    std::fs::remove_file(m.s.path("resources/rival.yaml")).unwrap();

    // A file that does not parse may hold a Server: the default no longer
    // stands in for it (never wider), until it is fixed.
    assert_eq!(m.get("intruder/open", "/").await.status, 200);
    m.s.write(
        "resources/broken.yaml",
        "kind: Server\n  metadata: [unclosed\n",
    );
    m.until_status("intruder/open", 403, "unparseable resource file")
        .await;
    assert_eq!(m.get("frontend/http", "/").await.status, 200);
    std::fs::remove_file(m.s.path("resources/broken.yaml")).unwrap();
    m.until_status("intruder/open", 200, "unparseable file removed")
        .await;

    // The control plane gone: the last policy stays in force.
    drop(m.cp.take());
    for _ in 0..5 {
        assert_eq!(m.get("frontend/http", "/").await.status, 200);
        assert_eq!(m.get("intruder/http", "/").await.status, 403);
    }
}

/// A port whose Server declares `proxyProtocol: opaque` (no opaque-ports
/// annotation) is opaque in discovery too: the client proxy forwards at
/// once, so a server that speaks first is heard without waiting out the
/// client's protocol detection (set far beyond the deadline here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_declared_opaque_is_not_detected_by_the_client() {
    let s = Scratch::new();
    s.guide_material();
    let greet = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let greet_port = greet.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in greet.incoming() {
            let Ok(mut c) = c else { continue };
            let _ = std::io::Write::write_all(&mut c, b"HELLO FROM THE SERVER\n");
        }
    });
    let (be_in, fe_in) = (free_port(), free_port());
    std::fs::create_dir(s.path("resources")).unwrap();
    s.write(
        "resources/workloads.yaml",
        [
            workload("backend", greet_port, be_in, ""),
            workload("frontend", free_port(), fe_in, ""),
        ]
        .concat(),
    );
    s.write("resources/tcp.yaml", tcp_policy(greet_port));
    s.write("resources/meshtls.yaml", guide_files(greet_port).1);
    let cp = s.control_plane(&["--resources", "resources"]);
    let backend = start_proxy(&s, "backend", be_in, &cp, &[], &[]);
    let local = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mapping = [format!("{local}=demo/backend:{greet_port}")];
    let slow = ["--detect-timeout", "600s"];
    let frontend = start_proxy(&s, "frontend", fe_in, &cp, &mapping, &slow);
    for p in [&backend, &frontend] {
        let a = p.addr("admin listening on");
        poll("proxy ready", DEADLINE, || {
            matches!(http_get(a, "/ready"), Ok((200, _))).then_some(())
        });
    }
    let started = std::time::Instant::now();
    let mut c = TcpStream::connect(local).await.unwrap();
    let mut greeting = vec![0u8; 22];
    let read = tokio::time::timeout(DEADLINE, c.read_exact(&mut greeting)).await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "the greeting did not arrive within {DEADLINE:?} (the client proxy waited to detect a protocol?): {read:?}\nfrontend proxy:\n{}",
        frontend.output()
    );
    assert_eq!(greeting, b"HELLO FROM THE SERVER\n");
    println!(
        "greeting through both proxies after {:?}",
        started.elapsed()
    );
}
