//! `weft check` against the local control plane (no files, no cluster):
//! its readiness and its fleet. A refused issuer replacement, which leaves
//! the previous issuer serving and traffic flowing, is named on `/ready`,
//! in `/fleet` and as × in `weft check`; nothing answering is a one-line
//! error.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Scratch;
use common::mesh::{free_port, spawn_app, start_proxy, workload};
use common::proc::{http_get, poll};
use common::rotation;

const DEADLINE: Duration = Duration::from_secs(30);

use common::rotation::fleet;

#[test]
fn a_refused_issuer_is_named_by_ready_fleet_and_check_while_traffic_flows() {
    let s = Scratch::new();
    s.guide_material();
    rotation::new_anchor_and_issuer(&s);
    let app = spawn_app();
    let (be_in, fe_in) = (free_port(), free_port());
    std::fs::create_dir(s.path("resources")).unwrap();
    s.write(
        "resources/workloads.yaml",
        [
            workload("backend", app, be_in, ""),
            workload("frontend", free_port(), fe_in, ""),
        ]
        .concat(),
    );
    let cp = s.control_plane(&["--resources", "resources", "--reread-interval", "1s"]);
    let admin = cp.addr("admin listening on");
    let out = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _backend = start_proxy(&s, "backend", be_in, &cp, &[], &[]);
    let _frontend = start_proxy(
        &s,
        "frontend",
        fe_in,
        &cp,
        &[format!("{out}=demo/backend:{app}")],
        &[],
    );
    rotation::until(
        "both proxies current",
        DEADLINE,
        || fleet(admin),
        |v| v.proxies.len() == 2 && v.proxies.iter().all(|p| p.bundle_current),
    );
    let traffic = rotation::http_traffic(out);
    traffic.more(20);
    let check = || s.weft(&["check", "--admin-addr", &admin.to_string()]);
    let ok = check().ok();
    println!("{}", ok.stdout);
    assert!(
        ok.stdout.contains("√ the control plane is ready")
            && ok
                .stdout
                .contains("√ the control plane accepted its newest issuer and trust anchors"),
        "{}",
        ok.stdout
    );

    // An issuer from another CA: refused, the previous issuer serves on.
    s.write("issuer-orig.crt", s.read("issuer.crt"));
    s.write("issuer-orig.key", s.read("issuer.key"));
    s.replace("issuer.crt", &s.read("issuer2.crt"));
    s.replace("issuer.key", &s.read("issuer2.key"));
    let (v, took) = rotation::until(
        "the refusal in /fleet",
        DEADLINE,
        || fleet(admin),
        |v| v.issuer_refused.is_some(),
    );
    println!("refusal named in /fleet after {took:?}");
    let why = v.issuer_refused.unwrap();
    assert!(why.contains("trust anchors"), "{why}");
    let (code, body) = http_get(admin, "/ready").unwrap();
    assert!(
        code == 200 && body.contains("refused") && body.contains(&why),
        "{code} {body}"
    );
    let refused = check().refused(1);
    println!("{}", refused.stdout);
    assert!(
        refused
            .stdout
            .contains("× the control plane accepted its newest issuer and trust anchors")
            && refused.stdout.contains("‼ the control plane is ready")
            && refused.stdout.contains(&why),
        "{}",
        refused.stdout
    );
    traffic.more(20);
    traffic.assert_clean("while the replacement is refused");

    // Good files back: the refusal clears everywhere.
    s.replace("issuer.crt", &s.read("issuer-orig.crt"));
    s.replace("issuer.key", &s.read("issuer-orig.key"));
    rotation::until(
        "the refusal cleared",
        DEADLINE,
        || fleet(admin),
        |v| v.issuer_refused.is_none(),
    );
    poll("/ready without the refusal", DEADLINE, || {
        matches!(http_get(admin, "/ready"), Ok((200, b)) if !b.contains("refused")).then_some(())
    });
    check().ok();
    let (ok, failed) = traffic.finish();
    println!("traffic: {ok} requests, {failed} failed");
    assert_eq!(failed, 0);
}

#[test]
fn nothing_answering_is_a_one_line_error() {
    let s = Scratch::new();
    let dead = format!("127.0.0.1:{}", free_port());
    for args in [
        vec!["check", "--admin-addr", dead.as_str()],
        vec!["check", "--proxy", "--admin-addr", dead.as_str()],
    ] {
        let r = s.weft(&args).refused(2);
        assert!(
            r.stdout.is_empty()
                && r.stderr.trim().lines().count() == 1
                && r.stderr
                    .contains(&format!("no control plane answers at {dead}"))
                && r.stderr.contains("--admin-addr"),
            "{args:?}: {}",
            r.stderr
        );
    }
}
