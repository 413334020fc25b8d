//! `weft check` over files: passes on good material, names the failed check.

mod common;

use common::Scratch;

fn check(s: &Scratch, anchors: &str, issuer: &str, key: &str, extra: &[&str]) -> common::Run {
    let mut args = vec![
        "check",
        "--identity-trust-anchors-file",
        anchors,
        "--identity-issuer-certificate-file",
        issuer,
        "--identity-issuer-key-file",
        key,
    ];
    args.extend_from_slice(extra);
    s.weft(&args)
}

#[test]
fn passes_on_guide_and_openssl_material() {
    let s = Scratch::new();
    s.guide_material();
    let r = check(&s, "ca.crt", "issuer.crt", "issuer.key", &[]).ok();
    for name in [
        "√ certificate config is valid",
        "√ trust anchors are using supported crypto algorithm",
        "√ trust anchors are within their validity period",
        "√ trust anchors are valid for at least 60 days",
        "√ issuer cert is using supported crypto algorithm",
        "√ issuer cert is within its validity period",
        "√ issuer cert is valid for at least 60 days",
        "√ issuer cert is issued by the trust anchor",
        "√ issuer key matches issuer certificate",
    ] {
        assert!(r.stdout.contains(name), "missing {name:?} in\n{}", r.stdout);
    }
    assert!(
        r.stdout.contains("Status check results are √"),
        "{}",
        r.stdout
    );

    s.openssl_material("os");
    let r = check(&s, "os-ca.crt", "os-issuer.crt", "os-issuer.key", &[]).ok();
    assert!(
        r.stdout.contains("Status check results are √"),
        "{}",
        r.stdout
    );
}

/// Each broken material fails with exit 1 on the named check.
#[test]
fn fails_naming_the_right_check() {
    let s = Scratch::new();
    s.guide_material();
    let mk = |args: &[&str]| {
        let mut a = vec!["certs", "create"];
        a.extend_from_slice(args);
        s.weft(&a).ok();
    };
    mk(&[
        "other-root",
        "other.crt",
        "other.key",
        "--profile",
        "root-ca",
    ]);
    mk(&[
        "foreign",
        "foreign.crt",
        "foreign.key",
        "--profile",
        "intermediate-ca",
        "--ca",
        "other.crt",
        "--ca-key",
        "other.key",
    ]);
    mk(&[
        "expired",
        "expired.crt",
        "expired.key",
        "--profile",
        "intermediate-ca",
        "--ca",
        "ca.crt",
        "--ca-key",
        "ca.key",
        "--not-before",
        "-48h",
        "--not-after",
        "-1h",
    ]);
    mk(&[
        "notca",
        "notca.crt",
        "notca.key",
        "--profile",
        "leaf",
        "--ca",
        "ca.crt",
        "--ca-key",
        "ca.key",
    ]);
    mk(&[
        "p384",
        "p384.crt",
        "p384.key",
        "--profile",
        "intermediate-ca",
        "--crv",
        "P-384",
        "--ca",
        "ca.crt",
        "--ca-key",
        "ca.key",
    ]);
    s.write("garbage.crt", "this is not a certificate\n");
    s.write("empty.crt", "");

    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "ca.crt",
            "foreign.crt",
            "foreign.key",
            "× issuer cert is issued by the trust anchor",
        ),
        (
            "ca.crt",
            "expired.crt",
            "expired.key",
            "× issuer cert is within its validity period",
        ),
        (
            "ca.crt",
            "issuer.crt",
            "other.key",
            "× issuer key matches issuer certificate",
        ),
        ("ca.crt", "notca.crt", "notca.key", "× issuer cert is a CA"),
        (
            "ca.crt",
            "p384.crt",
            "p384.key",
            "× issuer cert is using supported crypto algorithm",
        ),
        (
            "ca.crt",
            "garbage.crt",
            "issuer.key",
            "× certificate config is valid",
        ),
        (
            "empty.crt",
            "issuer.crt",
            "issuer.key",
            "× certificate config is valid",
        ),
        (
            "ca.crt",
            "issuer.crt",
            "missing.key",
            "× certificate config is valid",
        ),
    ];
    for (anchors, issuer, key, want) in cases {
        let r = check(&s, anchors, issuer, key, &[]).refused(1);
        assert!(
            r.stdout.contains(want),
            "{issuer}: want {want:?} in\n{}",
            r.stdout
        );
        assert!(
            r.stdout.contains("Status check results are ×"),
            "{}",
            r.stdout
        );
        assert!(
            r.stdout.contains("hint: "),
            "each failure says what to do:\n{}",
            r.stdout
        );
        let failures = r.stdout.lines().filter(|l| l.starts_with('×')).count();
        assert_eq!(
            failures, 1,
            "only the named check fails for {issuer}:\n{}",
            r.stdout
        );
    }
    // The config failure names the file and the problem.
    let r = check(&s, "empty.crt", "issuer.crt", "issuer.key", &[]).refused(1);
    assert!(
        r.stdout.contains("empty.crt: the file is empty"),
        "{}",
        r.stdout
    );
}

#[test]
fn warnings_json_and_fail_on_warning() {
    let s = Scratch::new();
    s.guide_material();
    // An issuer expiring in 30 days warns, and fails only when asked to.
    s.weft(&[
        "certs",
        "create",
        "short",
        "short.crt",
        "short.key",
        "--profile",
        "intermediate-ca",
        "--ca",
        "ca.crt",
        "--ca-key",
        "ca.key",
        "--not-after",
        "720h",
    ])
    .ok();
    let r = check(&s, "ca.crt", "short.crt", "short.key", &[]).ok();
    assert!(
        r.stdout
            .contains("‼ issuer cert is valid for at least 60 days"),
        "{}",
        r.stdout
    );
    check(
        &s,
        "ca.crt",
        "short.crt",
        "short.key",
        &["--fail-on-warning"],
    )
    .refused(1);
    let r = check(
        &s,
        "ca.crt",
        "short.crt",
        "short.key",
        &["--expiry-warning", "20d"],
    )
    .ok();
    assert!(
        r.stdout
            .contains("√ issuer cert is valid for at least 20 days"),
        "{}",
        r.stdout
    );

    let r = check(&s, "ca.crt", "short.crt", "short.key", &["-o", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["success"], true);
    let checks = v["categories"][0]["checks"].as_array().unwrap();
    let warn = checks
        .iter()
        .find(|c| c["description"] == "issuer cert is valid for at least 60 days")
        .unwrap();
    assert_eq!(warn["result"], "warning");
    assert!(warn["hint"].as_str().unwrap().contains("rotate"));

    // Mid-rotation: an expired old anchor beside the live one is a warning.
    s.weft(&[
        "certs",
        "create",
        "old-root",
        "old.crt",
        "old.key",
        "--profile",
        "root-ca",
        "--not-before",
        "-72h",
        "--not-after",
        "-1h",
    ])
    .ok();
    let both = format!("{}{}", s.read("old.crt"), s.read("ca.crt"));
    s.write("both.crt", both);
    let r = check(&s, "both.crt", "issuer.crt", "issuer.key", &[]).ok();
    assert!(
        r.stdout
            .contains("‼ trust anchors are within their validity period"),
        "{}",
        r.stdout
    );
    // Only the expired anchor: a failure.
    let r = check(&s, "old.crt", "issuer.crt", "issuer.key", &[]).refused(1);
    assert!(
        r.stdout
            .contains("× trust anchors are within their validity period"),
        "{}",
        r.stdout
    );

    // Nothing to check is bad input, not a pass.
    let r = s.weft(&["check"]).refused(2);
    assert!(r.stderr.contains("nothing to check"), "{}", r.stderr);
}
