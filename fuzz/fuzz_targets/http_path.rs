//! HTTP path normalisation and route matching: the inbound proxy rewrites a
//! request's path to its normal form (`proxy::http::normalize_path`) and
//! judges routes on it; `weft policy explain` normalises the target it is
//! given (`policy::path`). Properties: the forwarded path is in normal form
//! (normalising again changes nothing), has no dot-segments or empty
//! segments, keeps the query, and is what explain computes for the same
//! origin-form target; a route match and its rank agree.
//!
//! Input: one flags byte (bit 0: the Server keeps encoded slashes; bits 1-2:
//! the method), then the request target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::model::{HeaderMatch, HeaderValue, PathMatch, Route, RouteMatch, Rule};
use policy::path::{normalize, target_path};
use policy::routes::{route_matches, route_rank};

fn route(name: &str, path: PathMatch, method: Option<&str>, header: bool) -> Route {
    Route {
        name: policy::Named::new("HTTPRoute", name),
        rules: vec![Rule {
            matches: vec![RouteMatch {
                path: Some(path),
                method: method.map(str::to_string),
                headers: header
                    .then(|| HeaderMatch {
                        name: "x-team".into(),
                        value: HeaderValue::Exact(b"blue".to_vec()),
                    })
                    .into_iter()
                    .collect(),
            }],
        }],
        authorizations: vec![],
    }
}

fn assert_normal(p: &str, keep: bool) {
    assert_eq!(
        normalize(p, keep).map(|n| n.0).as_deref(),
        Ok(p),
        "the normal form {p:?} is not normal"
    );
    if p == "*" {
        return;
    }
    assert!(p.starts_with('/'), "{p:?} does not start with '/'");
    assert!(!p.contains("//"), "{p:?} has an empty segment");
    for seg in p.split('/') {
        assert!(seg != "." && seg != "..", "{p:?} has a dot-segment");
    }
    assert!(!p.contains('\0'), "{p:?} has a NUL");
}

fuzz_target!(|data: &[u8]| {
    let Some((flags, rest)) = data.split_first() else {
        return;
    };
    let keep = flags & 1 == 1;
    let method = ["GET", "POST", "DELETE", "OPTIONS"][usize::from((flags >> 1) & 3)];
    let Ok(target) = std::str::from_utf8(rest) else {
        return;
    };

    // explain's path: any string.
    let explained = normalize(target_path(target), keep);
    if let Ok(n) = &explained {
        assert_normal(n.as_str(), keep);
    }

    // The proxy's path: what hyper parsed.
    let Ok(mut req) = http::Request::builder().method(method).uri(target).body(()) else {
        return;
    };
    let query = req.uri().query().map(str::to_string);
    let had_path = req.uri().path_and_query().is_some();
    if proxy::http::normalize_path(&mut req, keep).is_err() {
        return;
    }
    let forwarded = req.uri().path().to_string();
    assert_eq!(
        req.uri().query().map(str::to_string),
        query,
        "the query changed"
    );
    if !had_path {
        return;
    }
    assert_normal(&forwarded, keep);
    if target.starts_with('/') && !target.contains('#') {
        assert_eq!(
            explained.as_ref().map(|n| n.as_str()),
            Ok(forwarded.as_str()),
            "explain judges {target:?} as another path than the proxy forwards"
        );
    }

    let request = policy::Request {
        method: method.into(),
        path: forwarded,
        headers: vec![("X-Team".into(), b"blue".to_vec())],
    };
    let routes = [
        route("public", PathMatch::Prefix("/public".into()), None, false),
        route(
            "admin",
            PathMatch::Prefix("/admin/".into()),
            Some("GET"),
            true,
        ),
        route("exact", PathMatch::Exact("/admin/x".into()), None, false),
        route("root", PathMatch::Prefix("/".into()), None, false),
        route("regex", PathMatch::Regex(".*".into()), None, false),
    ];
    for r in &routes {
        let rank = route_rank(r, &request);
        assert_eq!(rank.is_some(), route_matches(r, &request));
        if let (Some(_), Some(PathMatch::Prefix(p))) = (rank, &r.rules[0].matches[0].path) {
            let p = p.trim_end_matches('/');
            if p.is_empty() {
                continue; // `/` matches every path, `*` too.
            }
            assert!(
                request.path == p || request.path.starts_with(&format!("{p}/")),
                "{:?} matched the prefix {p:?} across a segment",
                request.path
            );
        }
    }
});
