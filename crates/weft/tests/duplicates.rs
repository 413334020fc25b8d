//! An AuthorizationPolicy defined twice, the second copy wider (any mesh
//! identity), in a file that sorts first, last, or in the same file: the
//! real proxy's verdict equals `weft policy explain`'s and is never wider
//! than the strict copy, while running and after a control-plane restart
//! (ports mode, no root). `weft check --resources` reports the conflict.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Scratch;
use common::mesh::{free_port, spawn_app, start_proxy, workload, workload_ports};
use common::proc::{Proc, http_get, poll};
use testbed::http_app::{self, Req};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(30);
const TD: &str = "demo.serviceaccount.identity.weft.cluster.local";

fn server(port: u16) -> String {
    format!(
        "apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata:
  name: web
  namespace: demo
spec:
  podSelector:
    matchLabels:
      app: backend
  port: {port}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata:
  name: everyone
  namespace: demo
spec:
  identities:
  - \"*\"
---
"
    )
}

/// The AuthorizationPolicy `allow`: frontend only, or (open) any identity.
fn allow(open: bool) -> String {
    let refs = if open {
        "  - kind: MeshTLSAuthentication\n    name: everyone\n    group: policy.linkerd.io\n"
    } else {
        "  - kind: ServiceAccount\n    name: frontend\n"
    };
    format!(
        "apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: allow
  namespace: demo
spec:
  targetRef:
    group: policy.linkerd.io
    kind: Server
    name: web
  requiredAuthenticationRefs:
{refs}---
"
    )
}

/// The control plane on fixed loopback ports, so a restart keeps them.
fn start_cp(s: &Scratch, ports: &[u16; 4]) -> Proc {
    let a: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let cp = s.control_plane(&[
        "--resources",
        "res",
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

/// The first start, on fresh fixed ports: another process on this shared
/// machine may take a port between `free_port` and the bind, so a failed
/// start is retried on new ports (a restart then reuses the ports it held).
fn first_cp(s: &Scratch) -> ([u16; 4], Proc) {
    let mut attempt = 0;
    loop {
        let ports = [free_port(), free_port(), free_port(), free_port()];
        let started =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| start_cp(s, &ports)));
        match started {
            Ok(cp) => return (ports, cp),
            Err(e) if attempt == 2 => std::panic::resume_unwind(e),
            Err(_) => attempt += 1,
        }
    }
}

fn ready(p: &Proc) {
    let a = p.addr("admin listening on");
    poll("proxy ready", DEADLINE, || {
        matches!(http_get(a, "/ready"), Ok((200, _))).then_some(())
    });
}

async fn status(to: SocketAddr) -> u16 {
    match TcpStream::connect(to).await {
        Ok(c) => http_app::h1(c, Req::get("/x"))
            .await
            .map_or(0, |r| r.status),
        Err(_) => 0,
    }
}

struct Mesh {
    s: Scratch,
    cp_ports: [u16; 4],
    be_in: u16,
    app: u16,
    /// frontend's and intruder's outbound listeners to backend's app port.
    out: [(&'static str, SocketAddr); 2],
}

impl Mesh {
    /// The verdicts (frontend, intruder) as the proxy gives them, polled
    /// until they equal `want`.
    async fn until(&self, want: (u16, u16), why: &str, backend: &Proc) {
        let end = Instant::now() + DEADLINE;
        let started = Instant::now();
        loop {
            let got = (status(self.out[0].1).await, status(self.out[1].1).await);
            if got == want {
                eprintln!("{why}: {want:?} after {:?}", started.elapsed());
                return;
            }
            assert!(
                Instant::now() < end,
                "{why}: (frontend, intruder) answer {got:?}, not {want:?}\nbackend:\n{}",
                backend.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// explain's verdicts (frontend, intruder) as statuses, and its reasons.
    fn explain(&self) -> ((u16, u16), String) {
        let mut statuses = [0; 2];
        let mut text = String::new();
        for (i, (client, _)) in self.out.iter().enumerate() {
            let from = format!("{client}.{TD}");
            let to = format!("demo/backend:{}", self.app);
            let r = self.s.explain(&from, &to, &["--path", "/x"]);
            statuses[i] = if r.code == 0 { 200 } else { 403 };
            text.push_str(&r.stdout);
        }
        ((statuses[0], statuses[1]), text)
    }

    /// Asserts the proxy's verdicts equal explain's and `want`.
    async fn agree(&self, want: (u16, u16), why: &str, backend: &Proc) {
        self.until(want, why, backend).await;
        let (explained, text) = self.explain();
        assert_eq!(explained, want, "{why}: explain disagrees:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_never_widens_policy_running_or_after_a_restart() {
    let s = Scratch::new();
    s.guide_material();
    let app = spawn_app();
    let (be_in, fe_in, in_in) = (free_port(), free_port(), free_port());
    std::fs::create_dir(s.path("res")).unwrap();
    s.write(
        "res/workloads.yaml",
        [
            workload_ports("backend", &[app], be_in, ""),
            workload("frontend", free_port(), fe_in, ""),
            workload("intruder", free_port(), in_in, ""),
        ]
        .concat(),
    );
    s.write("res/m-strict.yaml", [server(app), allow(false)].concat());
    let (cp_ports, mut cp) = first_cp(&s);
    let mut backend = start_proxy(&s, "backend", be_in, &cp, &[], &[]);
    let mut out = Vec::new();
    let mut clients = Vec::new();
    for (client, inbound) in [("frontend", fe_in), ("intruder", in_in)] {
        let local = SocketAddr::from(([127, 0, 0, 1], free_port()));
        out.push((client, local));
        let mapping = vec![format!("{local}=demo/backend:{app}")];
        clients.push(start_proxy(&s, client, inbound, &cp, &mapping, &[]));
    }
    for p in clients.iter().chain([&backend]) {
        ready(p);
    }
    let m = Mesh {
        s,
        cp_ports,
        be_in,
        app,
        out: [out[0], out[1]],
    };
    m.agree((200, 403), "the strict copy alone", &backend).await;

    let strict_file = [server(app), allow(false)].concat();
    // (where the open copy goes, what m-strict.yaml then holds)
    let variants = [
        ("a-open.yaml", strict_file.clone()),
        ("z-open.yaml", strict_file.clone()),
        ("m-strict.yaml", [strict_file.clone(), allow(true)].concat()),
    ];
    for (file, strict_content) in variants {
        let why = format!("open copy in {file}");
        m.s.write("res/m-strict.yaml", strict_content.clone());
        if file != "m-strict.yaml" {
            m.s.write(&format!("res/{file}"), allow(true));
        }
        // Conflicted: neither copy is in force, so nothing grants.
        m.agree((403, 403), &format!("{why}, running"), &backend)
            .await;
        let (_, text) = m.explain();
        assert!(text.contains("defined more than once"), "{text}");
        let check = m.s.weft(&["check", "--resources", "res"]);
        assert_ne!(
            check.code, 0,
            "weft check passed a conflict:\n{}",
            check.stdout
        );
        assert!(
            check
                .stdout
                .contains("AuthorizationPolicy demo/allow is defined 2 times"),
            "{}",
            check.stdout
        );

        // A restart (control plane, and a backend proxy that can only have
        // the restarted control plane's policy) changes nothing.
        drop(cp);
        drop(backend);
        cp = start_cp(&m.s, &m.cp_ports);
        // A fresh join token for the new backend proxy.
        let _ = std::fs::remove_file(m.s.path("backend.token"));
        backend = start_proxy(&m.s, "backend", m.be_in, &cp, &[], &[]);
        ready(&backend);
        m.agree((403, 403), &format!("{why}, after a restart"), &backend)
            .await;
        poll("the restarted control plane's policy", DEADLINE, || {
            backend
                .output()
                .contains(&format!("inbound policy updated port={}", m.app))
                .then_some(())
        });
        assert!(
            !backend
                .output()
                .contains("no policy from the control plane within"),
            "{}",
            backend.output()
        );
        for _ in 0..5 {
            assert_eq!(
                (status(m.out[0].1).await, status(m.out[1].1).await),
                (403, 403)
            );
        }

        // The copy removed: the strict definition is back in force.
        let _ = std::fs::remove_file(m.s.path(&format!("res/{file}")));
        m.s.write("res/m-strict.yaml", strict_file.clone());
        m.agree((200, 403), &format!("{why}, removed"), &backend)
            .await;
        let check = m.s.weft(&["check", "--resources", "res"]);
        assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);
    }
}
