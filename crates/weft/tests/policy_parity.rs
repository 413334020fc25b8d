//! Parity: the backend proxy's real inbound path (mTLS from clients with
//! different identities, the transport header, protocol detection, the
//! opaque hint from the real destination service, HTTP-declared Servers
//! given bytes that are not HTTP) gives the verdict `weft policy explain`
//! prints for the same resource files, and both match a table written by
//! hand. Ports mode on loopback, no root.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::Scratch;
use common::mesh::{free_port, spawn_app, start_proxy, workload_ports};
use common::proc::{http_get, poll};
use policy::testutil::{authorization_policy, resource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(30);
const TD: &str = "demo.serviceaccount.identity.weft.cluster.local";
const BACKEND: &str = "backend.demo.serviceaccount.identity.weft.cluster.local";

/// The clients: service accounts (namespace) whose certificates connect.
const CLIENTS: [(&str, &str); 3] = [("frontend", "demo"), ("other", "demo"), ("web", "prod")];

/// The ports under test, each with the resources that govern it. The
/// cluster default is `audit`; `opaque-default` is in the workload's
/// opaque-ports annotation.
const PORTS: [&str; 8] = [
    "h1",
    "tcp",
    "detect",
    "h2",
    "tls",
    "nets",
    "opaque-default",
    "default",
];

/// What was observed or explained for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Allowed, judged per request (the app saw the verified l5d-client-id).
    HttpAllowed,
    /// Denied per request (403).
    HttpDenied,
    /// Allowed, judged per connection (bytes passed through untouched).
    OpaqueAllowed,
    /// Denied per connection (closed before anything came back).
    OpaqueDenied,
}
use Seen::*;

/// The hand-written table: per port, per client (frontend, other, web.prod),
/// (an HTTP request, bytes that are not HTTP).
fn expected(port: &str) -> [(Seen, Seen); 3] {
    match port {
        // HTTP/1 Server; AuthorizationPolicy *named* audit: frontend only.
        // Not-HTTP bytes are refused: it is served as HTTP or not at all.
        "h1" => [
            (HttpAllowed, OpaqueDenied),
            (HttpDenied, OpaqueDenied),
            (HttpDenied, OpaqueDenied),
        ],
        // Opaque Server; ServiceAccount frontend: requests are not inspected.
        "tcp" => [
            (OpaqueAllowed, OpaqueAllowed),
            (OpaqueDenied, OpaqueDenied),
            (OpaqueDenied, OpaqueDenied),
        ],
        // Detect Server; MeshTLSAuthentication identityRefs namespace demo.
        "detect" => [
            (HttpAllowed, OpaqueAllowed),
            (HttpAllowed, OpaqueAllowed),
            (HttpDenied, OpaqueDenied),
        ],
        // HTTP/2 Server (an HTTP/1 request is still HTTP); identities "*"
        // within NetworkAuthentication 127.0.0.0/8.
        "h2" => [
            (HttpAllowed, OpaqueDenied),
            (HttpAllowed, OpaqueDenied),
            (HttpAllowed, OpaqueDenied),
        ],
        // TLS Server, accessPolicy all-authenticated: opaque, everyone.
        "tls" => [
            (OpaqueAllowed, OpaqueAllowed),
            (OpaqueAllowed, OpaqueAllowed),
            (OpaqueAllowed, OpaqueAllowed),
        ],
        // Detect Server; NetworkAuthentication 10.0.0.0/8 only: nobody.
        "nets" => [
            (HttpDenied, OpaqueDenied),
            (HttpDenied, OpaqueDenied),
            (HttpDenied, OpaqueDenied),
        ],
        // No Server, opaque-ports hint: the audit default, per connection.
        "opaque-default" => [
            (OpaqueAllowed, OpaqueAllowed),
            (OpaqueAllowed, OpaqueAllowed),
            (OpaqueAllowed, OpaqueAllowed),
        ],
        // No Server, no hint: the audit default, per request.
        "default" => [
            (HttpAllowed, OpaqueAllowed),
            (HttpAllowed, OpaqueAllowed),
            (HttpAllowed, OpaqueAllowed),
        ],
        other => panic!("no expectation for port {other}"),
    }
}

fn server(name: &str, port: u16, protocol: &str, access: &str) -> String {
    let spec = format!(
        "  podSelector:\n    matchLabels:\n      app: backend\n  port: {port}\n{protocol}{access}---\n"
    );
    resource("policy.linkerd.io/v1beta3", "Server", "demo", name, &spec)
}

fn policy(name: &str, server: &str, refs: &str) -> String {
    authorization_policy("demo", name, server, &format!("\n{refs}---\n"))
}

fn mtls(name: &str, spec: &str) -> String {
    let kind = "MeshTLSAuthentication";
    resource(
        "policy.linkerd.io/v1alpha1",
        kind,
        "demo",
        name,
        &format!("{spec}---\n"),
    )
}

fn netauth(name: &str, cidr: &str) -> String {
    let spec = format!("  networks:\n  - cidr: {cidr}\n---\n");
    resource(
        "policy.linkerd.io/v1alpha1",
        "NetworkAuthentication",
        "demo",
        name,
        &spec,
    )
}

fn reference(kind: &str, name: &str) -> String {
    let group = if kind == "ServiceAccount" {
        ""
    } else {
        "    group: policy.linkerd.io\n"
    };
    format!("  - kind: {kind}\n    name: {name}\n{group}")
}

/// The policy resources for the ports (by name → app port).
fn resources(p: &dyn Fn(&str) -> u16) -> String {
    let proto = |p: &str| format!("  proxyProtocol: {p}\n");
    [
        server("h1", p("h1"), &proto("HTTP/1"), ""),
        policy(
            "audit",
            "h1",
            &reference("MeshTLSAuthentication", "frontend-only"),
        ),
        mtls(
            "frontend-only",
            &format!("  identities:\n  - frontend.{TD}\n"),
        ),
        server("tcp", p("tcp"), &proto("opaque"), ""),
        policy(
            "tcp-frontend",
            "tcp",
            &reference("ServiceAccount", "frontend"),
        ),
        server("detect", p("detect"), "", ""),
        policy(
            "detect-demo",
            "detect",
            &reference("MeshTLSAuthentication", "namespace-demo"),
        ),
        mtls(
            "namespace-demo",
            "  identityRefs:\n  - kind: Namespace\n    name: demo\n",
        ),
        server("h2", p("h2"), &proto("HTTP/2"), ""),
        policy(
            "h2-anyone-local",
            "h2",
            &[
                reference("MeshTLSAuthentication", "any-identity"),
                reference("NetworkAuthentication", "loopback"),
            ]
            .concat(),
        ),
        mtls("any-identity", "  identities:\n  - \"*\"\n"),
        netauth("loopback", "127.0.0.0/8"),
        server(
            "tls",
            p("tls"),
            &proto("TLS"),
            "  accessPolicy: all-authenticated\n",
        ),
        server("nets", p("nets"), "", ""),
        policy(
            "nets-ten",
            "nets",
            &reference("NetworkAuthentication", "ten"),
        ),
        netauth("ten", "10.0.0.0/8"),
    ]
    .concat()
}

struct Parity {
    s: Scratch,
    _cp: common::proc::Proc,
    backend: common::proc::Proc,
    be_in: u16,
    ports: Vec<(&'static str, u16)>,
}

impl Parity {
    fn up() -> Self {
        let s = Scratch::new();
        s.guide_material();
        let ports: Vec<(&str, u16)> = PORTS.iter().map(|n| (*n, spawn_app())).collect();
        let p = |name: &str| ports.iter().find(|(n, _)| *n == name).unwrap().1;
        let be_in = free_port();
        std::fs::create_dir(s.path("res")).unwrap();
        let app_ports: Vec<u16> = ports.iter().map(|(_, p)| *p).collect();
        let ann = format!(
            "    config.linkerd.io/opaque-ports: \"{}\"\n",
            p("opaque-default")
        );
        s.write(
            "res/workloads.yaml",
            workload_ports("backend", &app_ports, be_in, &ann),
        );
        s.write("res/policy.yaml", resources(&p));
        let cp = s.control_plane(&[
            "--resources",
            "res",
            "--reread-interval",
            "1s",
            "--default-inbound-policy",
            "audit",
        ]);
        let admin = cp.addr("admin listening on");
        poll("control plane ready", DEADLINE, || {
            matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
        });
        let backend = start_proxy(&s, "backend", be_in, &cp, &[], &[]);
        let a = backend.addr("admin listening on");
        poll("backend proxy ready", DEADLINE, || {
            matches!(http_get(a, "/ready"), Ok((200, _))).then_some(())
        });
        for (sa, ns) in CLIENTS {
            client_cert(&s, sa, ns);
        }
        Parity {
            s,
            _cp: cp,
            backend,
            be_in,
            ports,
        }
    }

    /// One connection from `sa` to `port`: HTTP (GET /who) or not.
    async fn observe(&self, sa: &str, port: u16, http: bool) -> Seen {
        let c = common::direct::connector(
            &self.s.path(&format!("{sa}.crt")),
            &self.s.path(&format!("{sa}.key")),
            &[&self.s.path("ca.crt")],
        );
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.be_in))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from(BACKEND).unwrap();
        let mut tls = c.connect(name, tcp).await.expect("mTLS to the backend");
        let mut bytes = common::direct::transport_header(u64::from(port));
        bytes.extend_from_slice(if http {
            b"GET /who HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n"
        } else {
            b"hello, this is not HTTP\r\n"
        });
        tls.write_all(&bytes).await.unwrap();
        if !http {
            let _ = tls.shutdown().await;
        }
        let mut back = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut back)).await;
        let text = String::from_utf8_lossy(&back);
        if back.is_empty() {
            return OpaqueDenied;
        }
        if !http {
            return OpaqueAllowed;
        }
        let status = text.split(' ').nth(1).unwrap_or("");
        let client_id = text
            .lines()
            .find_map(|l| l.strip_prefix("x-client-id: "))
            .unwrap_or("-");
        match (status, client_id) {
            ("403", _) => HttpDenied,
            ("200", "-") => OpaqueAllowed,
            ("200", id) if id == format!("{sa}.{}", td_of(sa)) => HttpAllowed,
            _ => panic!("{sa} -> {port}: unexpected reply {text:?}"),
        }
    }

    /// What `weft policy explain -o json` says for the same connection.
    fn explain(&self, sa: &str, port: u16, http: bool) -> (Seen, serde_json::Value) {
        let from = format!("{sa}.{}", td_of(sa));
        let to = format!("demo/backend:{port}");
        let mut extra = vec!["--default-inbound-policy", "audit", "-o", "json"];
        if http {
            extra.extend(["--path", "/who"]);
        }
        let r = self.s.explain(&from, &to, &extra);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let seen = match (v["mode"].as_str(), v["allowed"].as_bool()) {
            (Some("http"), Some(true)) => HttpAllowed,
            (Some("http"), Some(false)) => HttpDenied,
            (Some("opaque"), Some(true)) => OpaqueAllowed,
            (Some("opaque"), Some(false)) => OpaqueDenied,
            other => panic!("explain printed {other:?}: {}", r.stdout),
        };
        (seen, v)
    }
}

fn td_of(sa: &str) -> String {
    let ns = CLIENTS.iter().find(|(s, _)| *s == sa).unwrap().1;
    TD.replacen("demo", ns, 1)
}

/// A workload certificate for `sa` in `ns`, issued by the mesh's issuer as
/// the identity service would (leaf then issuer in `<sa>.crt`).
fn client_cert(s: &Scratch, sa: &str, ns: &str) {
    let signer = pki::create::Signer::load(&s.path("issuer.crt"), &s.path("issuer.key")).unwrap();
    let key = pki::create::KeySpec::EcdsaP256.generate().unwrap();
    let id = pki::Identity::new(sa, ns, "weft", "cluster.local").unwrap();
    let leaf = pki::create::issue_workload_leaf(
        &signer,
        signer.not_after,
        &key,
        &id,
        time::OffsetDateTime::now_utc(),
        Duration::from_secs(3600),
        Duration::from_secs(60),
    )
    .unwrap();
    let chain = pki::cert::to_pem(&[leaf.der, signer.cert.clone()]);
    s.write(&format!("{sa}.crt"), chain);
    s.write(&format!("{sa}.key"), key.serialize_pem());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_gives_the_verdict_explain_prints() {
    let started = Instant::now();
    let m = Parity::up();
    // Each port's policy stream is opened by its first connection: one
    // connection per port first, so every verdict below is the control
    // plane's policy, not the fallback.
    for (_, port) in &m.ports {
        m.observe("frontend", *port, false).await;
    }
    let setup = started.elapsed();
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for (name, port) in m.ports.clone() {
        for (i, (sa, _)) in CLIENTS.iter().enumerate() {
            let (want_http, want_raw) = expected(name)[i];
            for (http, want) in [(true, want_http), (false, want_raw)] {
                let real = m.observe(sa, port, http).await;
                let (explained, json) = m.explain(sa, port, http);
                checked += 1;
                if real != want || explained != want {
                    mismatches.push(format!(
                        "{name} ({port}) from {sa}, {}: table {want:?}, proxy {real:?}, explain {explained:?}: {json}",
                        if http { "HTTP" } else { "not HTTP" }
                    ));
                }
            }
        }
    }
    assert!(
        !m.backend
            .output()
            .contains("no policy from the control plane within"),
        "a verdict came from the fallback, not the control plane's policy:\n{}",
        m.backend.output()
    );
    assert!(
        mismatches.is_empty(),
        "{} of {checked} disagree:\n{}\nbackend proxy:\n{}",
        mismatches.len(),
        mismatches.join("\n"),
        m.backend.output()
    );

    // The AuthorizationPolicy named "audit" is reported as one, never as
    // the audit default; the default is flagged as audit.
    let h1 = m.ports[0].1;
    let (_, json) = m.explain("frontend", h1, true);
    assert_eq!(json["authorization"], "authorizationpolicy:audit", "{json}");
    assert_eq!(json["audit"], false, "{json}");
    let default = m.ports.iter().find(|(n, _)| *n == "default").unwrap().1;
    let (_, json) = m.explain("frontend", default, true);
    assert_eq!(json["authorization"], "default:audit", "{json}");
    assert_eq!(json["audit"], true, "{json}");
    // The proxy agrees: audit lines for the default, none for the policy.
    let audit = m
        .backend
        .wait_for_line("allowed by the audit policy", DEADLINE);
    assert!(audit.contains("default:audit"), "{audit}");
    assert!(
        !m.backend
            .output()
            .lines()
            .any(|l| l.contains("allowed by the audit policy")
                && l.contains("authorizationpolicy:audit")),
        "the AuthorizationPolicy named audit was logged as the audit default:\n{}",
        m.backend.output()
    );
    println!(
        "policy parity: {checked} connections and explains agreed with the table; setup {:?}, total {:?}",
        setup,
        started.elapsed()
    );
}
