//! Issue 13: addresses accept host names. A proxy given the control plane
//! as `localhost:PORT` gets its certificate and follows destinations over
//! connections made by name (the TLS server name still the control plane's
//! identity); `weft check --admin-addr localhost:PORT` reads the fleet; an
//! address that is no host:port is refused at start, saying what to pass.

use std::net::SocketAddr;
use std::time::Duration;

use super::common::Scratch;
use super::common::mesh::{echo_server, free_port, start_proxy, workload};
use super::common::proc::{http_get, poll};

const DEADLINE: Duration = Duration::from_secs(30);

fn by_name(addr: SocketAddr) -> String {
    format!("localhost:{}", addr.port())
}

fn ready(admin: SocketAddr) {
    poll("ready", DEADLINE, || {
        matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
    });
}

#[test]
fn control_plane_addresses_accept_host_names() {
    let s = Scratch::new();
    s.guide_material();
    std::fs::create_dir(s.path("resources")).unwrap();
    let app = echo_server();
    let inbound = free_port();
    s.write("resources/demo.yaml", workload("backend", app, inbound, ""));
    let cp = s.control_plane(&["--resources", "resources"]);
    let cp_admin = cp.addr("admin listening on");
    ready(cp_admin);
    let (ia, da, pa) = (
        by_name(cp.addr("identity listening on")),
        by_name(cp.addr("destination listening on")),
        by_name(cp.addr("policy listening on")),
    );
    let named = [
        "--identity-addr",
        ia.as_str(),
        "--destination-addr",
        da.as_str(),
        "--policy-addr",
        pa.as_str(),
    ];
    let proxy = start_proxy(&s, "backend", inbound, &cp, &[], &named);
    // Ready: a certificate from identity, reached by name.
    ready(proxy.addr("admin listening on"));
    let out = proxy.output();
    assert!(
        out.contains(&format!("identity-addr            {ia}")),
        "{out}"
    );
    // The mesh stream (destination, by name) attaches the proxy to the fleet.
    proxy.wait_for_line("control-plane connection opened", DEADLINE);

    let check = s.weft(&["check", "--proxy", "--admin-addr", &by_name(cp_admin)]);
    println!("{}", check.stdout);
    assert!(
        check.stdout.contains("fleet view is reachable") && !check.stdout.contains("no answer"),
        "stdout:\n{}\nstderr:\n{}",
        check.stdout,
        check.stderr
    );

    // Not a host:port: refused before anything starts.
    for (flag, bad) in [
        ("--identity-addr", "localhost"),
        ("--destination-addr", "localhost:http"),
        ("--policy-addr", "::1:8090"),
        ("--control-plane", "bad name!"),
    ] {
        let r = s
            .weft(&[
                "proxy",
                "--workload",
                "demo/backend",
                "--identity",
                "backend.demo.serviceaccount.identity.weft.cluster.local",
                "--trust-anchors-file",
                "ca.crt",
                flag,
                bad,
            ])
            .refused(2);
        assert!(r.stderr.contains("host:port"), "{flag} {bad}: {}", r.stderr);
    }
}
