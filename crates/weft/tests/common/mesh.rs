//! Ports-mode meshes on loopback: resource YAML, free ports, and `weft proxy`
//! processes wired to a control plane started by `Scratch::control_plane`.

use std::net::TcpListener;

use super::Scratch;
use super::proc::Proc;

/// Echoes every byte on each connection `l` accepts, closing its side after
/// the peer's EOF (so half-close is observable), from threads of its own.
pub fn echo_on(l: TcpListener) {
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

/// An echo server on 127.0.0.1; returns its port.
pub fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    echo_on(l);
    port
}

/// The HTTP test app (testbed::http_app) on 127.0.0.1; returns its port.
pub fn spawn_app() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    testbed::http_app::spawn(l);
    port
}

/// A free port below the kernel's ephemeral range (32768 and up), so a
/// process binding port 0 meanwhile (a control plane, another test) cannot
/// take it before the proxy it is meant for binds it. Never the same port
/// twice in one test process: ports picked together are bound only later
/// (a control plane given two equal ports fails to start).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..200 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(0);
        let port = 20_000 + (h.finish() % 12_000) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between 20000 and 32000")
}

/// An ExternalWorkload in namespace demo on 127.0.0.1, its proxy's inbound
/// port named by annotation; `extra_ann` lines go under annotations.
pub fn workload(name: &str, app_port: u16, proxy_port: u16, extra_ann: &str) -> String {
    workload_ports(name, &[app_port], proxy_port, extra_ann)
}

/// As `workload`, declaring several application ports.
pub fn workload_ports(name: &str, app_ports: &[u16], proxy_port: u16, extra_ann: &str) -> String {
    let ports: String = app_ports
        .iter()
        .map(|p| format!("  - port: {p}\n"))
        .collect();
    format!(
        "apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata:
  name: {name}
  namespace: demo
  labels:
    app: {name}
  annotations:
    config.linkerd.io/inbound-port: \"{proxy_port}\"
{extra_ann}spec:
  meshTLS:
    identity: {name}.demo.serviceaccount.identity.weft.cluster.local
    serverName: {name}.demo.serviceaccount.identity.weft.cluster.local
  workloadIPs:
  - ip: 127.0.0.1
  ports:
{ports}---
"
    )
}

/// resources/workloads.yaml declaring backend (its app, the HTTP test app,
/// started here) and `client`; (backend's app port, backend's inbound
/// port, the client's inbound port).
pub fn backend_and(s: &Scratch, client: &str) -> (u16, u16, u16) {
    let app = spawn_app();
    let (be_in, client_in) = (free_port(), free_port());
    std::fs::create_dir_all(s.path("resources")).unwrap();
    s.write(
        "resources/workloads.yaml",
        [
            workload("backend", app, be_in, ""),
            workload(client, free_port(), client_in, ""),
        ]
        .concat(),
    );
    (app, be_in, client_in)
}

/// `weft proxy` for `demo/<name>` with a fresh join token, inbound on
/// `inbound`, ports mode (`outbound` mappings), talking to `cp`. A flag in
/// `extra` with an empty value is left out (the proxy's default applies).
pub fn start_proxy(
    s: &Scratch,
    name: &str,
    inbound: u16,
    cp: &Proc,
    outbound: &[String],
    extra: &[&str],
) -> Proc {
    let ia = cp.addr("identity listening on").to_string();
    let da = cp.addr("destination listening on").to_string();
    let pa = cp.addr("policy listening on").to_string();
    let token = s.token(name);
    let inbound = format!("127.0.0.1:{inbound}");
    let workload = format!("demo/{name}");
    let mut args = vec![
        "proxy",
        "--workload",
        &workload,
        "--token-file",
        &token,
        "--trust-anchors-file",
        "ca.crt",
        "--identity-addr",
        &ia,
        "--destination-addr",
        &da,
        "--policy-addr",
        &pa,
        "--inbound-addr",
        &inbound,
        "--admin-addr",
        "127.0.0.1:0",
        "--tap-addr",
        "127.0.0.1:0",
        "--discovery-timeout",
        "2s",
        "--outbound-addr",
        "off",
    ]
    .into_iter()
    .map(str::to_string)
    .collect::<Vec<_>>();
    for o in outbound {
        args.push("--outbound".into());
        args.push(o.clone());
    }
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    super::replace_defaults(&mut args, &extra);
    while let Some(i) = (1..args.len()).find(|&i| args[i].is_empty()) {
        args.drain(i - 1..=i);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn(s.dir.path(), &refs)
}
