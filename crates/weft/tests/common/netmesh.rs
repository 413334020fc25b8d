//! Pods in network namespaces for the root-only tests: a control plane pod,
//! meshed pods (`weft init` redirects, proxies as an unprivileged uid) and
//! unmeshed pods, with helpers to act from inside a pod.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use super::Scratch;
use super::proc::{Proc, poll};
use testbed::{Bed, in_ns};

pub const PROXY_UID: u32 = 2102;
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn workload(name: &str, ip: std::net::Ipv4Addr, port: u16) -> String {
    format!(
        "apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata:
  name: {name}
  namespace: demo
  labels:
    app: {name}
spec:
  meshTLS:
    identity: {name}.demo.serviceaccount.identity.weft.cluster.local
    serverName: {name}.demo.serviceaccount.identity.weft.cluster.local
  workloadIPs:
  - ip: {ip}
  ports:
  - port: {port}
---
"
    )
}

/// An echo server inside `ns` on 0.0.0.0:port.
pub fn echo_in(ns: &str, port: u16) {
    let l = in_ns(ns, move || TcpListener::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    super::mesh::echo_on(l);
}

/// The HTTP test app (testbed::http_app) inside `ns` on 0.0.0.0:port.
pub fn app_in(ns: &str, port: u16) {
    let l = in_ns(ns, move || TcpListener::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    testbed::http_app::spawn(l);
}

/// From inside `ns`: connect, send, half-close, read all back.
pub fn roundtrip_in(ns: &str, to: SocketAddr, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut w = s.try_clone()?;
        let t = std::thread::spawn(move || {
            let r = w.write_all(&data);
            let _ = w.shutdown(std::net::Shutdown::Write);
            r
        });
        let mut back = Vec::new();
        s.read_to_end(&mut back)?;
        t.join().unwrap()?;
        Ok(back)
    })
    .unwrap()
}

pub fn get_in(ns: &str, addr: SocketAddr, path: &'static str) -> Option<(u16, String)> {
    in_ns(ns, move || super::proc::http_get(addr, path).ok()).unwrap()
}

pub fn tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Control plane in pod `cp`, meshed pods `a` and `b` (proxies as uid 2102
/// after `weft init`), unmeshed pod `c`. Fields drop in order: processes
/// first, then the bed, then the files.
pub struct NetMesh {
    pub proxies: Vec<(String, Option<Proc>)>,
    pub cp: Option<Proc>,
    pub cp_extra: Vec<String>,
    pub bed: Bed,
    pub bin: std::path::PathBuf,
    pub cp_ip: std::net::Ipv4Addr,
    pub s: Scratch,
}

impl NetMesh {
    /// Meshed pods `a` (an ExternalWorkload with port 9) and `b` (with
    /// `b_ports`), unmeshed pod `c`.
    pub fn up(b_ports: &[u16], cp_extra: &[&str]) -> Self {
        Self::build(&[("a", &[9]), ("b", b_ports)], &["c"], cp_extra, &[])
    }

    /// A control plane pod, a meshed pod per `meshed` entry (name and the
    /// ports its ExternalWorkload declares), the `unmeshed` pods, and extra
    /// resource files (name, YAML) beside the workloads.
    pub fn build(
        meshed: &[(&str, &[u16])],
        unmeshed: &[&str],
        cp_extra: &[&str],
        resources: &[(&str, &str)],
    ) -> Self {
        for t in ["iptables", "tcpdump", "setpriv", "ip"] {
            assert!(tool(t), "{t} is needed (CI installs it in .ci/run)");
        }
        testbed::raise_nofile();
        let s = Scratch::new();
        std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        s.guide_material();
        let mut bed = Bed::new(s.dir.path()).unwrap();
        bed.pod("cp").unwrap();
        for (p, _) in meshed {
            bed.pod(p).unwrap();
        }
        for p in unmeshed {
            bed.pod(p).unwrap();
        }
        let cp_ip = bed.by_name("cp").ip;
        std::fs::create_dir(s.path("resources")).unwrap();
        let yaml: String = meshed
            .iter()
            .map(|(name, ports)| {
                let w = workload(name, bed.by_name(name).ip, ports[0]);
                w.replace(
                    &format!("  - port: {}\n", ports[0]),
                    &ports
                        .iter()
                        .map(|p| format!("  - port: {p}\n"))
                        .collect::<String>(),
                )
            })
            .collect();
        s.write("resources/workloads.yaml", yaml);
        for (name, text) in resources {
            s.write(&format!("resources/{name}"), text);
        }
        let weft = env!("CARGO_BIN_EXE_weft");
        let bin =
            testbed::executable_copy(std::path::Path::new(weft), s.dir.path(), PROXY_UID).unwrap();
        let mut m = NetMesh {
            proxies: Vec::new(),
            cp: None,
            cp_extra: cp_extra.iter().map(|s| s.to_string()).collect(),
            bed,
            bin,
            cp_ip,
            s,
        };
        m.cp = Some(m.start_cp());
        for (name, _) in meshed {
            let token = m.s.token(name);
            std::os::unix::fs::chown(m.s.path(&token), Some(PROXY_UID), Some(PROXY_UID)).unwrap();
            testbed::run(m.bed.by_name(name).cmd(weft).args([
                "init",
                "--proxy-uid",
                &PROXY_UID.to_string(),
            ]))
            .unwrap();
            let p = m.start_proxy(name);
            m.proxies.push((name.to_string(), Some(p)));
        }
        for (name, _) in meshed {
            m.wait_ready(name);
        }
        m
    }

    /// Starts the control plane (same state dir every time) and waits until ready.
    pub fn start_cp(&self) -> Proc {
        let mut cmd = self.bed.by_name("cp").cmd(env!("CARGO_BIN_EXE_weft"));
        cmd.current_dir(self.s.dir.path())
            .args([
                "control-plane",
                "--identity-trust-anchors-file",
                "ca.crt",
                "--identity-issuer-certificate-file",
                "issuer.crt",
                "--identity-issuer-key-file",
                "issuer.key",
                "--state-dir",
                "state",
                "--resources",
                "resources",
                "--identity-addr",
                "0.0.0.0:8080",
                "--destination-addr",
                "0.0.0.0:8086",
                "--admin-addr",
                "127.0.0.1:9990",
                "--reread-interval",
                "1s",
            ])
            .args(&self.cp_extra);
        let cp = Proc::spawn_cmd(cmd);
        let ns = self.ns("cp");
        poll("control plane ready", DEADLINE, || {
            matches!(
                get_in(&ns, "127.0.0.1:9990".parse().unwrap(), "/ready"),
                Some((200, _))
            )
            .then_some(())
        });
        cp
    }

    pub fn start_proxy(&self, name: &str) -> Proc {
        self.start_proxy_with(name, &[])
    }

    pub fn start_proxy_with(&self, name: &str, extra: &[&str]) -> Proc {
        let mut cmd = self.bed.by_name(name).cmd_as(PROXY_UID, &self.bin);
        cmd.current_dir(self.s.dir.path()).args([
            "proxy",
            "--workload",
            &format!("demo/{name}"),
            "--token-file",
            &self.s.path(&format!("{name}.token")).display().to_string(),
            "--trust-anchors-file",
            &self.s.path("ca.crt").display().to_string(),
            "--control-plane",
            &self.cp_ip.to_string(),
            "--shutdown-grace-period",
            "20s",
        ]);
        cmd.args(extra);
        Proc::spawn_cmd(cmd)
    }

    pub fn wait_ready(&self, name: &str) {
        let ns = self.ns(name);
        poll(&format!("proxy {name} ready"), DEADLINE, || {
            matches!(
                get_in(&ns, "127.0.0.1:4191".parse().unwrap(), "/ready"),
                Some((200, _))
            )
            .then_some(())
        });
    }

    pub fn ns(&self, name: &str) -> String {
        self.bed.by_name(name).ns.clone()
    }

    pub fn addr(&self, name: &str, port: u16) -> SocketAddr {
        SocketAddr::new(self.bed.by_name(name).ip.into(), port)
    }

    pub fn proxy(&mut self, name: &str) -> &mut Option<Proc> {
        &mut self.proxies.iter_mut().find(|(n, _)| n == name).unwrap().1
    }

    /// `weft ARGS` in the control plane's pod (where its admin listens).
    pub fn weft(&self, args: &[&str]) -> super::Run {
        super::Run::from(
            self.bed
                .by_name("cp")
                .cmd(env!("CARGO_BIN_EXE_weft"))
                .args(args)
                .output()
                .unwrap(),
        )
    }

    pub fn metrics(&self, name: &str) -> String {
        get_in(
            &self.ns(name),
            "127.0.0.1:4191".parse().unwrap(),
            "/metrics",
        )
        .map(|(_, b)| b)
        .unwrap_or_default()
    }
}

/// tcpdump on a pod's link in the fabric namespace, writing to a file.
pub struct Capture {
    pub proc: Proc,
    pub file: std::path::PathBuf,
}

impl NetMesh {
    /// Starts capturing on `pod`'s link and waits until tcpdump listens.
    pub fn capture(&self, pod: &str, file: &str) -> Capture {
        let file = self.s.path(file);
        let mut cmd = self.bed.fabric_cmd("tcpdump");
        cmd.args([
            "-i",
            self.bed.link_of(pod),
            "--immediate-mode",
            "-Z",
            "root",
            "-U",
            "-s",
            "0",
            "-w",
        ])
        .arg(&file)
        .arg("tcp");
        let proc = Proc::spawn_cmd(cmd);
        proc.wait_for_line("listening on", DEADLINE);
        Capture { proc, file }
    }
}

impl Capture {
    /// Waits until the file holds more than `min_bytes` (the exchange caught
    /// up), stops tcpdump and returns what it captured.
    pub fn stop(mut self, min_bytes: u64) -> Vec<u8> {
        poll("the capture to catch up", DEADLINE, || {
            (std::fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0) > min_bytes).then_some(())
        });
        let _ = Command::new("kill")
            .args(["-INT", &self.proc.child.id().to_string()])
            .status();
        assert!(
            self.proc.wait_exit(DEADLINE).is_some(),
            "tcpdump stops: {}",
            self.proc.output()
        );
        std::fs::read(&self.file).unwrap_or_default()
    }
}
