use super::*;

fn ok(raw: &str) -> String {
    normalize(raw, false)
        .unwrap_or_else(|e| panic!("{raw}: {e}"))
        .0
}

#[test]
fn the_issues_variants_normalise_to_what_the_app_would_serve() {
    for (raw, want) in [
        ("/public/../admin/x", "/admin/x"),
        ("/public/%2e%2e/admin/x", "/admin/x"),
        ("/public/%2E%2E/admin/x", "/admin/x"),
        ("/public/./../admin", "/admin"),
        ("//admin", "/admin"),
        ("/%61dmin", "/admin"),
        ("/../../admin", "/admin"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/a//b///c/", "/a/b/c/"),
        ("/", "/"),
        ("", "/"),
        ("*", "*"),
        ("/a%20b", "/a%20b"),
        ("/a%3fb", "/a%3Fb"),
        ("/%7E~", "/~~"),
    ] {
        assert_eq!(ok(raw), want, "{raw}");
    }
}

#[test]
fn targets_in_absolute_form_give_their_path() {
    assert_eq!(
        target_path("http://backend/public/../admin/x?a=1"),
        "/public/../admin/x"
    );
    assert_eq!(target_path("https://backend:8443"), "");
    assert_eq!(target_path("/a?b"), "/a");
    assert_eq!(target_path("//admin"), "//admin");
}

#[test]
fn what_cannot_be_normalised_safely_is_refused() {
    assert!(matches!(
        normalize("/a%00", false),
        Err(PathRefusal::Nul { at: 2 })
    ));
    assert!(matches!(
        normalize("/a%0", false),
        Err(PathRefusal::MalformedEscape { .. })
    ));
    assert!(matches!(
        normalize("/a%zz", false),
        Err(PathRefusal::MalformedEscape { .. })
    ));
    assert!(matches!(
        normalize("a/b", false),
        Err(PathRefusal::NotAbsolute { .. })
    ));
    for raw in ["/public%2F..%2Fadmin", "/a%2fb", "/a%5cb", "/a%5Cb"] {
        let e = normalize(raw, false).unwrap_err();
        assert!(matches!(e, PathRefusal::EncodedSlash { .. }), "{raw}");
        assert!(e.to_string().contains(KEEP_ENCODED_SLASHES), "{e}");
    }
    // Kept verbatim with the annotation: the escape is one segment's byte,
    // so `..%2F` is not a dot segment.
    assert_eq!(
        normalize("/public%2F..%2Fadmin", true).unwrap().0,
        "/public%2F..%2Fadmin"
    );
    assert_eq!(normalize("/a%2fb/../c", true).unwrap().0, "/c");
    assert!(matches!(
        normalize("/a%00", true),
        Err(PathRefusal::Nul { .. })
    ));
}

/// Every string of up to 5 tokens from an alphabet of troublemakers.
fn all_paths() -> Vec<String> {
    const T: [&str; 13] = [
        "/", ".", "..", "a", "%2e", "%2E", "%2F", "%41", "%", "%00", "%5c", "%25", "b/",
    ];
    let mut out = vec![String::new()];
    let mut layer = vec![String::new()];
    for _ in 0..5 {
        layer = layer
            .iter()
            .flat_map(|p| T.iter().map(move |t| format!("{p}{t}")))
            .collect();
        out.extend(layer.iter().cloned());
    }
    out.into_iter().map(|p| format!("/{p}")).collect()
}

#[test]
fn normal_forms_are_idempotent_clean_and_never_above_the_root() {
    let paths = all_paths();
    assert!(paths.len() > 300_000);
    for keep in [false, true] {
        for raw in &paths {
            let Ok(n) = normalize(raw, keep) else {
                continue;
            };
            let n = n.0;
            assert_eq!(
                normalize(&n, keep).as_ref().map(|x| x.as_str()),
                Ok(n.as_str()),
                "{raw}"
            );
            assert!(n.starts_with('/'), "{raw} -> {n}");
            for bad in ["/./", "/../", "//"] {
                assert!(!n.contains(bad), "{raw} -> {n}");
            }
            assert!(!n.ends_with("/.") && !n.ends_with("/.."), "{raw} -> {n}");
            // No escape of an unreserved character survives; escapes are upper-case.
            for (i, _) in n.match_indices('%') {
                let hex = &n[i + 1..i + 3];
                let byte = u8::from_str_radix(hex, 16).unwrap();
                assert!(
                    !byte.is_ascii_alphanumeric() && !b"-._~".contains(&byte),
                    "{raw} -> {n}"
                );
                assert_eq!(hex, hex.to_ascii_uppercase(), "{raw} -> {n}");
                if !keep {
                    assert!(byte != b'/' && byte != b'\\', "{raw} -> {n}");
                }
            }
        }
    }
}
