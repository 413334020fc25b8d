//! `weft rotate issuer` on a standalone mesh under continuous traffic:
//! judged first (a foreign, mismatched or short-lived issuer changes
//! nothing), installed, taken by the control plane, the fleet renewed under
//! it, with no failed request and no proxy restarted.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Scratch;
use common::mesh::{free_port, spawn_app, start_proxy, workload};
use common::rotation;

const DEADLINE: Duration = Duration::from_secs(30);

use common::rotation::fleet;

#[test]
fn rotate_issuer_renews_the_fleet_with_no_failed_request() {
    let s = Scratch::new();
    s.guide_material();
    rotation::new_anchor_and_issuer(&s);
    s.issuer("next", "8760h", "ca");
    s.issuer("short", "240h", "ca");
    s.issuer("third", "8760h", "ca");
    let app = spawn_app();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    std::fs::create_dir(s.path("resources")).unwrap();
    s.write(
        "resources/workloads.yaml",
        [
            workload("backend", app, ports[0], ""),
            workload("frontend", free_port(), ports[1], ""),
            workload("batch", free_port(), ports[2], ""),
        ]
        .concat(),
    );
    let cp = s.control_plane(&["--resources", "resources", "--reread-interval", "1s"]);
    let admin = cp.addr("admin listening on");
    let out = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxies = [
        start_proxy(&s, "backend", ports[0], &cp, &[], &[]),
        start_proxy(
            &s,
            "frontend",
            ports[1],
            &cp,
            &[format!("{out}=demo/backend:{app}")],
            &[],
        ),
        start_proxy(&s, "batch", ports[2], &cp, &[], &[]),
    ];
    let (before, _) = rotation::until(
        "three proxies current",
        DEADLINE,
        || fleet(admin),
        |v| {
            v.proxies.len() == 3
                && v.proxies
                    .iter()
                    .all(|p| p.bundle_current && p.issuer_current)
        },
    );
    let traffic = rotation::http_traffic(out);
    traffic.more(20);
    let admin_s = admin.to_string();
    let rotate = |cert: &str, key: &str, extra: &[&str]| {
        let mut args = vec![
            "rotate",
            "issuer",
            "--cert",
            cert,
            "--key",
            key,
            "--admin-addr",
            admin_s.as_str(),
        ];
        args.extend(common::GUIDE_FILES);
        args.extend(extra);
        s.weft(&args)
    };

    // Refused before anything changes: a foreign issuer, a mismatched key,
    // one that would be due for rotation at once.
    let in_force = s.read("issuer.crt");
    for (cert, key, why) in [
        ("issuer2.crt", "issuer2.key", "issued by the trust anchor"),
        (
            "next.crt",
            "short.key",
            "issuer key matches issuer certificate",
        ),
        ("short.crt", "short.key", "valid for at least 60 days"),
    ] {
        let r = rotate(cert, key, &[]).refused(2);
        assert!(
            r.stderr.contains(why) && r.stderr.contains("nothing was changed"),
            "{cert}: {}",
            r.stderr
        );
        assert_eq!(s.read("issuer.crt"), in_force, "{cert} changed the files");
    }
    // The refusal's `weft certs create` hint works as printed.
    let r = rotate("issuer2.crt", "issuer2.key", &[]).refused(2);
    let hint = r.stderr.split('`').nth(1).unwrap();
    assert!(hint.starts_with("weft certs create"), "{}", r.stderr);
    s.weft(&hint.split_whitespace().skip(1).collect::<Vec<_>>())
        .ok();
    rotate("issuer-new.crt", "issuer-new.key", &["--dry-run"]).ok();
    let dry = rotate("next.crt", "next.key", &["--dry-run"]).ok();
    assert!(dry.stdout.contains("dry run"), "{}", dry.stdout);
    assert_eq!(s.read("issuer.crt"), in_force);

    let r = rotate("next.crt", "next.key", &["--timeout", "60s"]).ok();
    println!("{}", r.stdout);
    assert!(
        r.stdout
            .contains("every connected proxy serves a leaf from the new issuer (3 of 3"),
        "{}",
        r.stdout
    );
    assert_eq!(s.read("issuer.crt"), s.read("next.crt"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(s.path("issuer.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let after = fleet(admin).unwrap();
    let new_issuer = after.bundle.as_ref().unwrap().issuer_sha256.clone();
    assert_ne!(
        Some(&new_issuer),
        before.bundle.as_ref().map(|b| &b.issuer_sha256)
    );
    for (p, old) in after.proxies.iter().zip(&before.proxies) {
        assert_eq!(p.issuer_sha256, new_issuer, "{}", p.workload);
        assert_ne!(p.leaf_serial, old.leaf_serial, "{} renewed", p.workload);
    }
    // Again, for automation: one JSON event a line, ending in "done".
    let r = rotate(
        "third.crt",
        "third.key",
        &["--timeout", "60s", "-o", "json"],
    )
    .ok();
    let events: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    println!("events: {kinds:?}");
    assert_eq!(kinds.first(), Some(&"installed"), "{}", r.stdout);
    assert!(
        kinds.contains(&"in_force") && kinds.contains(&"renew_now"),
        "{kinds:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(
        (last["event"].as_str(), last["proxies"].as_u64()),
        (Some("done"), Some(3))
    );
    traffic.more(20);
    let (ok, failed) = traffic.finish();
    println!("traffic through the rotation: {ok} requests, {failed} failed");
    traffic.assert_clean("rotate issuer");
    for p in &proxies {
        // The same processes, never restarted: each logs its one start.
        assert_eq!(
            p.output().matches("admin listening on").count(),
            1,
            "{}",
            p.output()
        );
    }

    // A new issuer file that is not there: named, nothing changed.
    let r = s
        .weft(&[
            "rotate",
            "issuer",
            "--cert",
            "issuer-x.crt",
            "--key",
            "issuer-x.key",
            "--identity-trust-anchors-file",
            "ca.crt",
            "--identity-issuer-certificate-file",
            "issuer.crt",
            "--identity-issuer-key-file",
            "issuer.key",
        ])
        .refused(2);
    assert!(r.stderr.contains("issuer-x.crt"), "{}", r.stderr);
}
