//! Request paths through the real proxies (ports mode, no root): /public is
//! open, /admin is frontend's. Dot segments, escapes, doubled slashes,
//! absolute-form and HTTP/2 `:path` are judged as their normal form and the
//! app (which echoes the path it received) reads exactly that path; what has
//! no safe normal form is refused with 400; `weft policy explain --path`
//! gives the same verdicts. HTTP/2 to an HTTP/1 Server is refused (505).
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Scratch;
use common::mesh::{free_port, spawn_app, start_proxy, workload, workload_ports};
use common::proc::{Proc, http_get, poll};
use testbed::http_app::{self, Req};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(30);
const TD: &str = "demo.serviceaccount.identity.weft.cluster.local";

/// A Server on `port` with routes /public (everyone) and /admin (frontend).
fn routed_server(name: &str, port: u16, extra_meta: &str, extra_spec: &str) -> String {
    let route = |r: &str, prefix: &str| {
        format!(
            "apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata:
  name: {name}-{r}
  namespace: demo
spec:
  parentRefs:
  - name: {name}
    kind: Server
    group: policy.linkerd.io
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: {prefix}
---
"
        )
    };
    let authz = |r: &str, refs: &str| {
        format!(
            "apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: {name}-{r}
  namespace: demo
spec:
  targetRef:
    group: policy.linkerd.io
    kind: HTTPRoute
    name: {name}-{r}
  requiredAuthenticationRefs:
{refs}---
"
        )
    };
    [
        format!(
            "apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata:
  name: {name}
  namespace: demo
{extra_meta}spec:
  podSelector:
    matchLabels:
      app: backend
  port: {port}
{extra_spec}---
"
        ),
        route("public", "/public"),
        route("admin", "/admin"),
        authz(
            "public",
            "  - kind: MeshTLSAuthentication\n    name: everyone\n    group: policy.linkerd.io\n",
        ),
        authz("admin", "  - kind: ServiceAccount\n    name: frontend\n"),
    ]
    .concat()
}

const EVERYONE: &str = "apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata:
  name: everyone
  namespace: demo
spec:
  identities:
  - \"*\"
";

/// What came back: status, l5d-proxy-error, and the path the app read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    status: u16,
    error: String,
    app_path: Option<String>,
}

/// One raw HTTP/1.1 request (the target sent byte for byte, no client
/// library in between to tidy it).
async fn raw_h1(to: SocketAddr, target: &str) -> Seen {
    let mut s = TcpStream::connect(to).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut back = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut back)).await;
    let text = String::from_utf8_lossy(&back).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET {target}: no status in {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let error = head
        .lines()
        .find_map(|l| l.strip_prefix("l5d-proxy-error: "))
        .unwrap_or("")
        .to_string();
    Seen {
        status,
        error,
        app_path: app_path(status, body),
    }
}

/// The app answers `ok GET <path>` (chunked or not).
fn app_path(status: u16, body: &str) -> Option<String> {
    (status == 200).then(|| {
        body.split_whitespace()
            .skip_while(|w| *w != "ok")
            .nth(2)
            .unwrap_or_else(|| panic!("no echoed path in {body:?}"))
            .to_string()
    })
}

async fn h2(to: SocketAddr, path: &str) -> Seen {
    let r = http_app::h2(TcpStream::connect(to).await.unwrap(), Req::get(path))
        .await
        .unwrap_or_else(|e| panic!("HTTP/2 GET {path}: {e}"));
    Seen {
        status: r.status,
        error: r.header("l5d-proxy-error").unwrap_or("").to_string(),
        app_path: app_path(r.status, &r.text()),
    }
}

struct Mesh {
    s: Scratch,
    _cp: Proc,
    backend: Proc,
    _clients: Vec<Proc>,
    out: Vec<(String, SocketAddr)>,
    /// (name, app port): `h1` declares HTTP/1; `keep` keeps encoded slashes.
    ports: [(&'static str, u16); 2],
}

impl Mesh {
    fn up() -> Self {
        let s = Scratch::new();
        s.guide_material();
        let (h1, keep) = (spawn_app(), spawn_app());
        let (be_in, fe_in, in_in) = (free_port(), free_port(), free_port());
        std::fs::create_dir(s.path("res")).unwrap();
        s.write(
            "res/workloads.yaml",
            [
                workload_ports("backend", &[h1, keep], be_in, ""),
                workload("frontend", free_port(), fe_in, ""),
                workload("intruder", free_port(), in_in, ""),
            ]
            .concat(),
        );
        s.write(
            "res/policy.yaml",
            [
                routed_server("h1", h1, "", "  proxyProtocol: HTTP/1\n"),
                routed_server(
                    "keep",
                    keep,
                    "  annotations:\n    policy.weft.dev/keep-encoded-slashes: \"true\"\n",
                    "",
                ),
                EVERYONE.to_string(),
            ]
            .concat(),
        );
        let cp = s.control_plane(&["--resources", "res", "--reread-interval", "1s"]);
        let admin = cp.addr("admin listening on");
        poll("control plane ready", DEADLINE, || {
            matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
        });
        let backend = start_proxy(&s, "backend", be_in, &cp, &[], &[]);
        let ports = [("h1", h1), ("keep", keep)];
        let mut out = Vec::new();
        let mut clients = Vec::new();
        for (client, inbound) in [("frontend", fe_in), ("intruder", in_in)] {
            let mut mappings = Vec::new();
            for (name, port) in ports {
                let local = SocketAddr::from(([127, 0, 0, 1], free_port()));
                mappings.push(format!("{local}=demo/backend:{port}"));
                out.push((format!("{client}/{name}"), local));
            }
            clients.push(start_proxy(&s, client, inbound, &cp, &mappings, &[]));
        }
        for p in clients.iter().chain([&backend]) {
            let a = p.addr("admin listening on");
            poll("proxy ready", DEADLINE, || {
                matches!(http_get(a, "/ready"), Ok((200, _))).then_some(())
            });
        }
        Mesh {
            s,
            _cp: cp,
            backend,
            _clients: clients,
            out,
            ports,
        }
    }

    fn out(&self, client: &str, port: &str) -> SocketAddr {
        let key = format!("{client}/{port}");
        self.out.iter().find(|(n, _)| *n == key).unwrap().1
    }

    fn port(&self, name: &str) -> u16 {
        self.ports.iter().find(|(n, _)| *n == name).unwrap().1
    }

    /// `weft policy explain --path`: (allowed, the judged path).
    fn explain(&self, client: &str, port: &str, path: &str) -> (bool, Option<String>) {
        let from = format!("{client}.{TD}");
        let to = format!("demo/backend:{}", self.port(port));
        let r = self.s.explain(&from, &to, &["--path", path, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        (
            v["allowed"].as_bool().unwrap(),
            v["path"].as_str().map(str::to_string),
        )
    }
}

/// (client, port, target, want status, want app path)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    u16,
    Option<&'static str>,
);

const H1_CASES: &[Case] = &[
    ("intruder", "h1", "/public/x", 200, Some("/public/x")),
    ("intruder", "h1", "/public/a/../b", 200, Some("/public/b")),
    ("intruder", "h1", "/public/../admin/x", 403, None),
    ("intruder", "h1", "/public/%2e%2e/admin/x", 403, None),
    ("intruder", "h1", "/public/%2E%2E/admin/x", 403, None),
    ("intruder", "h1", "/public/./../admin", 403, None),
    ("intruder", "h1", "//admin", 403, None),
    ("intruder", "h1", "/%61dmin", 403, None),
    (
        "intruder",
        "h1",
        "http://backend/public/../admin/x",
        403,
        None,
    ),
    ("intruder", "h1", "/public%2F..%2Fadmin", 400, None),
    ("intruder", "h1", "/public/%5c../admin", 400, None),
    ("intruder", "h1", "/public/%00", 400, None),
    (
        "frontend",
        "h1",
        "/public/../admin/x",
        200,
        Some("/admin/x"),
    ),
    (
        "frontend",
        "h1",
        "/public/%2e%2e/admin/x",
        200,
        Some("/admin/x"),
    ),
    ("frontend", "h1", "//admin", 200, Some("/admin")),
    ("frontend", "h1", "/%61dmin", 200, Some("/admin")),
    (
        "frontend",
        "h1",
        "http://backend/public/../admin/x",
        200,
        Some("/admin/x"),
    ),
    ("frontend", "h1", "/public%2F..%2Fadmin", 400, None),
    // Kept verbatim: one segment under /public, read as such by the app.
    ("intruder", "keep", "/public%2F..%2Fadmin", 403, None),
    (
        "intruder",
        "keep",
        "/public/%2F..%2Fadmin",
        200,
        Some("/public/%2F..%2Fadmin"),
    ),
    ("intruder", "keep", "/public/../admin/x", 403, None),
    (
        "frontend",
        "keep",
        "/admin/a%2Fb",
        200,
        Some("/admin/a%2Fb"),
    ),
];

const H2_CASES: &[Case] = &[
    ("intruder", "keep", "/public/../admin/x", 403, None),
    ("intruder", "keep", "/public/%2e%2e/admin/x", 403, None),
    (
        "intruder",
        "keep",
        "/public/a/./../b",
        200,
        Some("/public/b"),
    ),
    ("intruder", "keep", "/public/%00", 400, None),
    (
        "frontend",
        "keep",
        "/public/%2E%2E/admin/x",
        200,
        Some("/admin/x"),
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_judged_and_forwarded_in_normal_form() {
    let started = Instant::now();
    let m = Mesh::up();
    // Each port's policy stream opens with its first connection: wait until
    // the control plane's routes are in force (an intruder's /admin denied).
    for port in ["h1", "keep"] {
        let to = m.out("intruder", port);
        let end = Instant::now() + DEADLINE;
        while raw_h1(to, "/admin").await.status != 403 {
            assert!(
                Instant::now() < end,
                "routes never in force on {port}\n{}",
                m.backend.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!("mesh up and routes in force after {:?}", started.elapsed());
    let mut wrong = Vec::new();
    for (proto, cases) in [("HTTP/1", H1_CASES), ("HTTP/2", H2_CASES)] {
        for &(client, port, target, status, path) in cases {
            let to = m.out(client, port);
            let seen = if proto == "HTTP/1" {
                raw_h1(to, target).await
            } else {
                h2(to, target).await
            };
            let (allowed, judged) = m.explain(client, port, target);
            let ok = seen.status == status
                && seen.app_path.as_deref() == path
                && allowed == (status == 200)
                && (!allowed || judged.as_deref() == path);
            if !ok {
                wrong.push(format!(
                    "{proto} {client} -> {port} {target}: want {status} {path:?}, proxy {seen:?}, explain allowed={allowed} path={judged:?}"
                ));
            }
            if status == 400 && !seen.error.contains("path") {
                wrong.push(format!("{proto} {target}: 400 without a reason: {seen:?}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{}\nbackend:\n{}",
        wrong.join("\n"),
        m.backend.output()
    );

    // The reason echoes '%' as it is, not as '?'.
    let seen = raw_h1(m.out("intruder", "h1"), "/public%2F").await;
    assert!(
        seen.error.contains("%2F") && !seen.error.contains("?2F"),
        "{seen:?}"
    );

    // HTTP/2 to the Server that declares HTTP/1: refused, never forwarded.
    let seen = h2(m.out("frontend", "h1"), "/public/x").await;
    assert_eq!(seen.status, 505, "{seen:?}");
    assert!(seen.error.contains("HTTP/1"), "{seen:?}");
    eprintln!("all path cases checked after {:?}", started.elapsed());
}
