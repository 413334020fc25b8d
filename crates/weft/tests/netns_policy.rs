//! Policy in network namespaces, as root, with the guide's manifests: the
//! verdict a real connection gets through `weft init` redirects and both
//! proxies equals the verdict `weft policy explain` gives on the same files,
//! for every authentication kind, every default and a dangling reference;
//! and live edits flip verdicts with no process restarted.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::netmesh::{DEADLINE, NetMesh, app_in, echo_in, get_in, roundtrip_in};
use common::proc::{Proc, poll};
use testbed::have_root;

const GUIDE: &str = include_str!("fixtures/guide/policy.yaml");
/// Inside: cp (10.10.0.2) and frontend (.3). Outside: backend, other, c.
const CLUSTER: &str = "10.10.0.0/30";
const TCP_PORT: u16 = 8081;
const HTTP_PORTS: [u16; 5] = [8080, 8082, 8083, 8084, 9090];

/// One row's extra resources, beside the guide's (port 8080).
const MORE: &str = "
# NetworkAuthentication on an opaque port: the pod network except `other`.
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: backend-tcp, namespace: demo}
spec:
  podSelector: {matchLabels: {app: backend}}
  port: 8081
  proxyProtocol: opaque
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: pods-but-other, namespace: demo}
spec:
  networks:
  - cidr: 10.10.0.0/24
    except: [10.10.0.5/32]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: tcp-from-pods, namespace: demo}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: backend-tcp}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: NetworkAuthentication, name: pods-but-other}
---
# A ServiceAccount named directly.
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: backend-admin, namespace: demo}
spec:
  podSelector: {matchLabels: {app: backend}}
  port: 8082
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: admin-from-other, namespace: demo}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: backend-admin}
  requiredAuthenticationRefs:
  - {kind: ServiceAccount, name: other}
---
# Identities by suffix: every meshed workload of namespace demo.
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: backend-mesh, namespace: demo}
spec:
  podSelector: {matchLabels: {app: backend}}
  port: 8083
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: all-of-demo, namespace: demo}
spec:
  identities: ['*.demo.serviceaccount.identity.weft.cluster.local']
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: mesh-from-demo, namespace: demo}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: backend-mesh}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: all-of-demo}
---
# A dangling reference grants nothing.
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: backend-dangling, namespace: demo}
spec:
  podSelector: {matchLabels: {app: backend}}
  port: 8084
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: dangling, namespace: demo}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: backend-dangling}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: does-not-exist}
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Allowed,
    /// HTTP 403 from the proxy.
    Forbidden,
    /// Opaque: the connection closed without carrying bytes.
    Closed,
}

struct Policy {
    m: NetMesh,
}

impl Policy {
    fn backend(&self) -> &Proc {
        let (_, p) = self.m.proxies.iter().find(|(n, _)| n == "backend").unwrap();
        p.as_ref().unwrap()
    }

    /// What a real connection from `client` to backend:`port` gets.
    fn real(&self, client: &str, port: u16) -> Seen {
        let to = self.m.addr("backend", port);
        if port == TCP_PORT {
            return match roundtrip_in(&self.m.ns(client), to, b"ping".to_vec()) {
                Ok(b) if b == b"ping" => Seen::Allowed,
                Ok(b) if b.is_empty() => Seen::Closed,
                Err(_) => Seen::Closed,
                Ok(b) => panic!("{client} -> {port}: unexpected bytes {b:?}"),
            };
        }
        match get_in(&self.m.ns(client), to, "/x") {
            Some((200, _)) => Seen::Allowed,
            Some((403, _)) => Seen::Forbidden,
            other => panic!("{client} -> backend:{port}: neither 200 nor 403: {other:?}"),
        }
    }

    /// What `weft policy explain` says on the same files: allowed?
    fn explained(&self, client: &str, port: u16) -> bool {
        let ip = self.m.bed.by_name(client).ip.to_string();
        let from = match client {
            "c" => "unmeshed".to_string(),
            name => format!("{name}.demo.serviceaccount.identity.weft.cluster.local"),
        };
        let to = format!("demo/backend:{port}");
        let dir = self.m.s.path("resources").display().to_string();
        let mut args = vec![
            "policy",
            "explain",
            "--resources",
            &dir,
            "--from",
            &from,
            "--from-ip",
            &ip,
            "--to",
            &to,
            "--cluster-networks",
            CLUSTER,
        ];
        if port != TCP_PORT {
            args.extend(["--path", "/x"]);
        }
        let r = self.m.s.weft(&args);
        match r.code {
            0 => true,
            1 => false,
            _ => panic!("explain failed: {}\n{}", r.stdout, r.stderr),
        }
    }

    /// Real and explained agree for `client` on `port`; returns the verdict.
    #[track_caller]
    fn agree(&self, client: &str, port: u16) -> bool {
        let real = self.real(client, port);
        let explained = self.explained(client, port);
        assert_eq!(
            real == Seen::Allowed,
            explained,
            "{client} -> backend:{port}: the proxy gave {real:?}, explain said allowed={explained}\nbackend proxy:\n{}",
            self.backend().output()
        );
        if !explained {
            let want = if port == TCP_PORT {
                Seen::Closed
            } else {
                Seen::Forbidden
            };
            assert_eq!(
                real, want,
                "{client} -> backend:{port}: denied the right way"
            );
        }
        explained
    }

    /// How many times backend's proxy logged `server` coming into force on `port`.
    fn policy_updates(&self, port: u16, server: &str) -> usize {
        self.backend()
            .output()
            .lines()
            .filter(|l| {
                l.contains("inbound policy updated")
                    && l.contains(&format!("port={port} "))
                    && l.contains(&format!("server={server}"))
            })
            .count()
    }

    /// Waits until backend's proxy logs `server` coming into force on `port`
    /// once more than `seen` times.
    fn wait_policy(&self, port: u16, server: &str, seen: usize) {
        poll(&format!("port {port} gets {server}"), DEADLINE, || {
            (self.policy_updates(port, server) > seen).then_some(())
        });
    }
}

#[test]
fn real_connections_get_the_verdict_policy_explain_gives() {
    if !have_root("real_connections_get_the_verdict_policy_explain_gives") {
        return;
    }
    let backend_ports = [8080, TCP_PORT, 8082, 8083, 8084, 9090];
    let m = NetMesh::build(
        &[
            ("frontend", &[9]),
            ("backend", &backend_ports),
            ("other", &[9]),
        ],
        &["c"],
        &["--cluster-networks", CLUSTER],
        &[("policy.yaml", GUIDE), ("more.yaml", MORE)],
    );
    let ns = m.ns("backend");
    echo_in(&ns, TCP_PORT);
    for p in HTTP_PORTS {
        app_in(&ns, p);
    }
    let t = Policy { m };
    let clients = ["frontend", "other", "c"];

    // Every authentication kind and the dangling reference, each client.
    let expected: [(u16, [bool; 3]); 5] = [
        // The guide: MeshTLSAuthentication by ServiceAccount ref.
        (8080, [true, false, false]),
        // NetworkAuthentication with an except.
        (TCP_PORT, [true, false, true]),
        // ServiceAccount named directly.
        (8082, [false, true, false]),
        // MeshTLSAuthentication by identity suffix.
        (8083, [true, true, false]),
        // Dangling reference: nobody.
        (8084, [false, false, false]),
    ];
    for (port, want) in expected {
        for (client, want) in clients.iter().zip(want) {
            assert_eq!(
                t.agree(client, port),
                want,
                "{client} -> backend:{port} (the rows' intent)"
            );
        }
    }

    // Every default on the port without a Server, set live on the Namespace.
    t.agree("frontend", 9090);
    t.wait_policy(9090, "default:all-unauthenticated", 0);
    let defaults: [(&str, [bool; 3]); 6] = [
        ("all-unauthenticated", [true, true, true]),
        ("all-authenticated", [true, true, false]),
        ("cluster-unauthenticated", [true, false, false]),
        ("cluster-authenticated", [true, false, false]),
        ("deny", [false, false, false]),
        ("audit", [true, true, true]),
    ];
    for (default, want) in defaults {
        let seen = t.policy_updates(9090, &format!("default:{default}"));
        t.m.s.write(
            "resources/ns.yaml",
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  annotations:\n    config.linkerd.io/default-inbound-policy: {default}\n"
            ),
        );
        // The cluster-wide default is all-unauthenticated: naming it again
        // changes nothing, so no update comes.
        if default != "all-unauthenticated" {
            t.wait_policy(9090, &format!("default:{default}"), seen);
        }
        for (client, want) in clients.iter().zip(want) {
            assert_eq!(t.agree(client, 9090), want, "{client} under {default}");
        }
        if default == "deny" {
            // Still allowed where an authorization says so.
            assert_eq!(t.real("frontend", 8080), Seen::Allowed);
        }
    }
    t.backend()
        .wait_for_line("allowed by the audit policy", DEADLINE);
    let seen = t.policy_updates(9090, "default:all-unauthenticated");
    std::fs::remove_file(t.m.s.path("resources/ns.yaml")).unwrap();
    t.wait_policy(9090, "default:all-unauthenticated", seen);

    // Deleting the MeshTLSAuthentication denies frontend, live.
    let without: Vec<&str> = GUIDE
        .split("\n---\n")
        .filter(|d| !d.contains("kind: MeshTLSAuthentication"))
        .collect();
    t.m.s
        .write("resources/policy.yaml", without.join("\n---\n"));
    poll("frontend denied once frontend-sa is gone", DEADLINE, || {
        (t.real("frontend", 8080) == Seen::Forbidden).then_some(())
    });
    assert!(!t.agree("frontend", 8080));
    t.m.s.write("resources/policy.yaml", GUIDE);
    poll("frontend allowed again", DEADLINE, || {
        (t.real("frontend", 8080) == Seen::Allowed).then_some(())
    });
    assert!(t.agree("frontend", 8080));
}
