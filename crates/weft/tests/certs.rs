//! `weft certs` end to end: the guide's commands, openssl agreeing, bad input.

mod common;

use common::{Scratch, mode};

#[test]
fn guide_commands_make_material_openssl_accepts() {
    let s = Scratch::new();
    s.guide_material();
    assert_eq!(mode(&s.path("ca.key")), 0o600);
    assert_eq!(mode(&s.path("issuer.key")), 0o600);
    assert!(
        s.read("ca.key").starts_with("-----BEGIN PRIVATE KEY-----"),
        "PKCS#8 expected"
    );

    let v = s
        .openssl(&["verify", "-CAfile", "ca.crt", "issuer.crt"])
        .ok();
    assert!(v.stdout.contains("issuer.crt: OK"), "{}", v.stdout);

    let root = s
        .openssl(&["x509", "-in", "ca.crt", "-noout", "-text"])
        .ok()
        .stdout;
    assert!(
        root.contains("Subject: CN = root.linkerd.cluster.local"),
        "{root}"
    );
    assert!(root.contains("CA:TRUE"), "{root}");
    assert!(root.contains("Certificate Sign, CRL Sign"), "{root}");
    assert!(root.contains("ASN1 OID: prime256v1"), "{root}");

    let issuer = s
        .openssl(&["x509", "-in", "issuer.crt", "-noout", "-text"])
        .ok()
        .stdout;
    assert!(issuer.contains("CA:TRUE, pathlen:0"), "{issuer}");
    assert!(issuer.contains("Certificate Sign, CRL Sign"), "{issuer}");
    assert!(
        issuer.contains("X509v3 Authority Key Identifier"),
        "{issuer}"
    );
    assert!(
        issuer.contains("Issuer: CN = root.linkerd.cluster.local"),
        "{issuer}"
    );

    // The lifetimes asked for: 87600h and 8760h.
    let dates = |f: &str| {
        let out = s
            .openssl(&["x509", "-in", f, "-noout", "-startdate", "-enddate"])
            .ok()
            .stdout;
        let year = |key: &str| -> i32 {
            let line = out.lines().find(|l| l.starts_with(key)).unwrap();
            line.split_whitespace()
                .rev()
                .nth(1)
                .unwrap()
                .parse()
                .unwrap()
        };
        year("notAfter") - year("notBefore")
    };
    assert!((9..=10).contains(&dates("ca.crt")));
    assert!((0..=1).contains(&dates("issuer.crt")));

    // A leaf from that issuer serves both ends of mTLS.
    let id = "web.demo.serviceaccount.identity.weft.cluster.local";
    s.weft(&[
        "certs",
        "create",
        id,
        "leaf.crt",
        "leaf.key",
        "--profile",
        "leaf",
        "--ca",
        "issuer.crt",
        "--ca-key",
        "issuer.key",
    ])
    .ok();
    for purpose in ["sslclient", "sslserver"] {
        let v = s
            .openssl(&[
                "verify",
                "-CAfile",
                "ca.crt",
                "-untrusted",
                "issuer.crt",
                "-purpose",
                purpose,
                "leaf.crt",
            ])
            .ok();
        assert!(v.stdout.contains("leaf.crt: OK"), "{purpose}: {}", v.stdout);
    }
    let leaf = s
        .openssl(&[
            "x509",
            "-in",
            "leaf.crt",
            "-noout",
            "-ext",
            "subjectAltName",
        ])
        .ok()
        .stdout;
    let dns = leaf.find(&format!("DNS:{id}")).expect("DNS SAN");
    let uri = leaf
        .find("URI:spiffe://cluster.local/ns/demo/sa/web")
        .expect("SPIFFE SAN");
    assert!(dns < uri, "DNS SAN must come first: {leaf}");

    // weft agrees with openssl.
    let v = s
        .weft(&[
            "certs",
            "verify",
            "leaf.crt",
            "--roots",
            "ca.crt",
            "--intermediates",
            "issuer.crt",
        ])
        .ok();
    assert!(v.stdout.starts_with("valid: CN=web.demo"), "{}", v.stdout);
    s.weft(&["certs", "verify", "issuer.crt", "--roots", "ca.crt"])
        .ok();
}

#[test]
fn keys_are_never_overwritten_without_force() {
    let s = Scratch::new();
    s.guide_material();
    let key_before = s.read("ca.key");
    let crt_before = s.read("ca.crt");
    let r = s
        .weft(&[
            "certs",
            "create",
            "root2",
            "ca.crt",
            "ca.key",
            "--profile",
            "root-ca",
        ])
        .refused(2);
    assert!(
        r.stderr.contains("ca.crt: already exists; pass --force"),
        "{}",
        r.stderr
    );
    assert_eq!(s.read("ca.key"), key_before);
    assert_eq!(s.read("ca.crt"), crt_before);

    // Only the key exists: still refused, and no certificate appears.
    let r = s
        .weft(&[
            "certs",
            "create",
            "x",
            "new.crt",
            "ca.key",
            "--profile",
            "root-ca",
        ])
        .refused(2);
    assert!(r.stderr.contains("ca.key: already exists"), "{}", r.stderr);
    assert!(!s.path("new.crt").exists());

    s.weft(&[
        "certs",
        "create",
        "root2",
        "ca.crt",
        "ca.key",
        "--profile",
        "root-ca",
        "--force",
    ])
    .ok();
    assert_ne!(s.read("ca.key"), key_before);
    assert_eq!(mode(&s.path("ca.key")), 0o600);
    // No temporary files anywhere.
    assert!(
        s.files().iter().all(|f| !f.contains(".tmp")),
        "{:?}",
        s.files()
    );
}

#[test]
fn reads_keys_as_openssl_and_step_write_them() {
    let s = Scratch::new();
    s.openssl_material("os");
    assert!(s.read("os-issuer.key").contains("BEGIN EC PRIVATE KEY"));
    // A SEC1 issuer key signs a leaf.
    s.weft(&[
        "certs",
        "create",
        "web",
        "leaf.crt",
        "leaf.key",
        "--profile",
        "leaf",
        "--ca",
        "os-issuer.crt",
        "--ca-key",
        "os-issuer.key",
    ])
    .ok();
    s.openssl(&[
        "verify",
        "-CAfile",
        "os-ca.crt",
        "-untrusted",
        "os-issuer.crt",
        "leaf.crt",
    ])
    .ok();

    // A PKCS#1 RSA root key.
    s.openssl(&["genrsa", "-traditional", "-out", "rsa.key", "2048"])
        .ok();
    assert!(s.read("rsa.key").contains("BEGIN RSA PRIVATE KEY"));
    s.openssl(&[
        "req",
        "-x509",
        "-key",
        "rsa.key",
        "-out",
        "rsa.crt",
        "-subj",
        "/CN=rsa-root",
        "-days",
        "30",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ])
    .ok();
    s.weft(&[
        "certs",
        "create",
        "iss",
        "iss.crt",
        "iss.key",
        "--profile",
        "intermediate-ca",
        "--ca",
        "rsa.crt",
        "--ca-key",
        "rsa.key",
    ])
    .ok();
    s.openssl(&["verify", "-CAfile", "rsa.crt", "iss.crt"]).ok();

    // weft makes RSA anchors too.
    s.weft(&[
        "certs",
        "create",
        "r",
        "r4096.crt",
        "r4096.key",
        "--profile",
        "root-ca",
        "--kty",
        "RSA",
        "--size",
        "4096",
    ])
    .ok();
    let text = s
        .openssl(&["x509", "-in", "r4096.crt", "-noout", "-text"])
        .ok()
        .stdout;
    assert!(text.contains("Public-Key: (4096 bit)"), "{text}");
}

#[test]
fn bad_input_gets_one_line_naming_the_file() {
    let s = Scratch::new();
    s.guide_material();
    s.write("garbage.crt", b"\x00\x01not a certificate at all");
    s.write("text.crt", "hello\n");
    let full = s.read("ca.crt");
    s.write("truncated.crt", &full[..full.len() / 2]);
    s.write("empty.crt", "");
    s.openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-aes256",
        "-pass",
        "pass:secret",
        "-out",
        "enc.key",
    ])
    .ok();
    s.weft(&[
        "certs",
        "create",
        "other",
        "other.crt",
        "other.key",
        "--profile",
        "root-ca",
    ])
    .ok();

    let before = s.files();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--ca", "garbage.crt", "--ca-key", "ca.key"],
            "garbage.crt",
        ),
        (
            &["--ca", "text.crt", "--ca-key", "ca.key"],
            "text.crt: no certificate found",
        ),
        (
            &["--ca", "truncated.crt", "--ca-key", "ca.key"],
            "truncated.crt: broken PEM",
        ),
        (
            &["--ca", "empty.crt", "--ca-key", "ca.key"],
            "empty.crt: the file is empty",
        ),
        (
            &["--ca", "missing.crt", "--ca-key", "ca.key"],
            "missing.crt: cannot read",
        ),
        (
            &["--ca", "ca.crt", "--ca-key", "enc.key"],
            "enc.key: key is encrypted; decrypt it with",
        ),
        (
            &["--ca", "ca.crt", "--ca-key", "other.key"],
            "other.key: the key does not belong to the certificate ca.crt",
        ),
        (
            &["--ca", "ca.key", "--ca-key", "ca.key"],
            "ca.key: holds a private key, not a certificate",
        ),
        (
            &["--ca", "ca.crt", "--ca-key", "ca.crt"],
            "ca.crt: holds a certificate, not a private key",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec![
            "certs",
            "create",
            "x",
            "out.crt",
            "out.key",
            "--profile",
            "intermediate-ca",
        ];
        args.extend_from_slice(extra);
        let r = s.weft(&args).refused(2);
        assert!(
            r.stderr.contains(want),
            "{extra:?}: want {want:?} in {:?}",
            r.stderr
        );
        assert_eq!(
            r.stderr.trim().lines().count(),
            1,
            "one line: {:?}",
            r.stderr
        );
        assert_eq!(s.files(), before, "{extra:?} left files behind");
    }

    // Other commands refuse the same way.
    for args in [
        vec!["certs", "inspect", "garbage.crt"],
        vec!["certs", "inspect", "truncated.crt"],
        vec!["certs", "verify", "missing.crt", "--roots", "ca.crt"],
        vec!["certs", "verify", "issuer.crt", "--roots", "empty.crt"],
        vec!["certs", "bundle", "list", "text.crt"],
        vec![
            "certs",
            "create",
            "x",
            "o.crt",
            "o.key",
            "--profile",
            "root-ca",
            "--not-after",
            "soon",
        ],
        vec![
            "certs",
            "create",
            "x",
            "o.crt",
            "o.key",
            "--profile",
            "leaf",
        ],
        vec![
            "certs",
            "create",
            "x",
            "o.crt",
            "o.key",
            "--profile",
            "root-ca",
            "--kty",
            "RSA",
            "--size",
            "1024",
        ],
        vec![
            "certs",
            "create",
            "x",
            "o.crt",
            "o.key",
            "--profile",
            "leaf",
            "--ca",
            "ca.crt",
            "--ca-key",
            "ca.key",
            "--san",
            "bad name",
        ],
    ] {
        let r = s.weft(&args).refused(2);
        assert_eq!(
            r.stderr.trim().lines().count(),
            1,
            "{args:?}: {:?}",
            r.stderr
        );
        assert!(r.stderr.starts_with("error: "), "{args:?}: {:?}", r.stderr);
    }
    assert_eq!(s.files(), before);
}

#[test]
fn verify_reports_the_reason_and_exit_code() {
    let s = Scratch::new();
    s.guide_material();
    s.weft(&[
        "certs",
        "create",
        "other",
        "other.crt",
        "other.key",
        "--profile",
        "root-ca",
    ])
    .ok();
    let r = s
        .weft(&["certs", "verify", "issuer.crt", "--roots", "other.crt"])
        .refused(1);
    assert!(
        r.stdout.contains("invalid: issuer.crt: unknown issuer"),
        "{}",
        r.stdout
    );

    s.weft(&[
        "certs",
        "create",
        "old",
        "old.crt",
        "old.key",
        "--profile",
        "intermediate-ca",
        "--ca",
        "ca.crt",
        "--ca-key",
        "ca.key",
        "--not-before",
        "-48h",
        "--not-after",
        "-24h",
    ])
    .ok();
    let r = s
        .weft(&["certs", "verify", "old.crt", "--roots", "ca.crt"])
        .refused(1);
    assert!(
        r.stdout.contains("expired:") && r.stdout.contains("the clock used says"),
        "{}",
        r.stdout
    );

    // The same issuer name from another key: a bad signature, not a match.
    s.weft(&[
        "certs",
        "create",
        "root.linkerd.cluster.local",
        "twin.crt",
        "twin.key",
        "--profile",
        "root-ca",
    ])
    .ok();
    let r = s
        .weft(&["certs", "verify", "issuer.crt", "--roots", "twin.crt"])
        .refused(1);
    assert!(r.stdout.contains("bad signature"), "{}", r.stdout);

    // A future time past the issuer's end.
    let r = s
        .weft(&[
            "certs",
            "verify",
            "issuer.crt",
            "--roots",
            "ca.crt",
            "--at",
            "9000h",
        ])
        .refused(1);
    assert!(r.stdout.contains("expired"), "{}", r.stdout);
}

#[test]
fn inspect_shows_every_certificate() {
    let s = Scratch::new();
    s.guide_material();
    let bundle = format!("{}{}", s.read("issuer.crt"), s.read("ca.crt"));
    s.write("chain.pem", bundle);
    let r = s.weft(&["certs", "inspect", "chain.pem"]).ok();
    assert!(
        r.stdout.contains("chain.pem: certificate 1 of 2"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("chain.pem: certificate 2 of 2"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("yes, pathLen 0"), "{}", r.stdout);
    assert!(r.stdout.contains("(self-signed)"), "{}", r.stdout);

    let r = s
        .weft(&["certs", "inspect", "chain.pem", "-o", "json"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["subject"], "CN=identity.linkerd.cluster.local");
    assert_eq!(arr[0]["path_len"], 0);
    assert_eq!(arr[0]["key_algorithm"], "ECDSA P-256");
    assert_eq!(arr[1]["self_signed"], true);
    let fp = arr[1]["sha256_fingerprint"].as_str().unwrap();
    assert_eq!(fp.len(), 64);
    // Same fingerprint openssl computes.
    let o = s
        .openssl(&["x509", "-in", "ca.crt", "-noout", "-fingerprint", "-sha256"])
        .ok()
        .stdout;
    let theirs: String = o
        .split('=')
        .nth(1)
        .unwrap()
        .trim()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(fp, theirs);
    assert_eq!(arr[0]["authority_key_id"], arr[1]["subject_key_id"]);
}

#[test]
fn bundle_add_remove_list() {
    let s = Scratch::new();
    s.guide_material();
    s.weft(&[
        "certs",
        "create",
        "new-root",
        "new.crt",
        "new.key",
        "--profile",
        "root-ca",
    ])
    .ok();
    let r = s
        .weft(&[
            "certs",
            "bundle",
            "add",
            "bundle.crt",
            "ca.crt",
            "new.crt",
            "ca.crt",
        ])
        .ok();
    assert!(
        r.stdout.contains("added 2 anchor(s), 1 skipped"),
        "{}",
        r.stdout
    );
    let list = s
        .weft(&["certs", "bundle", "list", "bundle.crt", "-o", "json"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    let old_fp = v[0]["sha256_fingerprint"].as_str().unwrap().to_string();

    // The issuer verifies against the two-anchor bundle.
    s.weft(&["certs", "verify", "issuer.crt", "--roots", "bundle.crt"])
        .ok();

    // A leaf is not an anchor.
    s.weft(&[
        "certs",
        "create",
        "w",
        "w.crt",
        "w.key",
        "--profile",
        "leaf",
        "--ca",
        "issuer.crt",
        "--ca-key",
        "issuer.key",
    ])
    .ok();
    let r = s
        .weft(&["certs", "bundle", "add", "bundle.crt", "w.crt"])
        .refused(2);
    assert!(r.stderr.contains("is not a CA certificate"), "{}", r.stderr);

    let r = s
        .weft(&["certs", "bundle", "remove", "bundle.crt", &old_fp[..16]])
        .ok();
    assert!(
        r.stdout.contains("removed CN=root.linkerd.cluster.local"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("1 anchor(s) left"), "{}", r.stdout);
    let r = s
        .weft(&["certs", "verify", "issuer.crt", "--roots", "bundle.crt"])
        .refused(1);
    assert!(r.stdout.contains("unknown issuer"), "{}", r.stdout);

    // The last anchor stays; unknown fingerprints are named.
    let list = s
        .weft(&["certs", "bundle", "list", "bundle.crt"])
        .ok()
        .stdout;
    let last_fp = list
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let r = s
        .weft(&["certs", "bundle", "remove", "bundle.crt", &last_fp])
        .refused(2);
    assert!(
        r.stderr.contains("would leave the bundle empty"),
        "{}",
        r.stderr
    );
    let r = s
        .weft(&[
            "certs",
            "bundle",
            "remove",
            "bundle.crt",
            "deadbeefdeadbeef",
        ])
        .refused(2);
    assert!(
        r.stderr.contains("no anchor in the bundle has fingerprint"),
        "{}",
        r.stderr
    );
}

#[test]
fn every_subcommand_has_help() {
    let s = Scratch::new();
    for args in [
        vec!["--help"],
        vec!["certs", "--help"],
        vec!["certs", "create", "--help"],
        vec!["certs", "inspect", "--help"],
        vec!["certs", "verify", "--help"],
        vec!["certs", "bundle", "--help"],
        vec!["certs", "bundle", "add", "--help"],
        vec!["certs", "bundle", "remove", "--help"],
        vec!["certs", "bundle", "list", "--help"],
        vec!["check", "--help"],
    ] {
        let r = s.weft(&args).ok();
        assert!(r.stdout.contains("Usage: weft"), "{args:?}: {}", r.stdout);
    }
}
