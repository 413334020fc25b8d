//! HTTP route matching (path, method, headers) over weft's typed routes.

use crate::eval::Request;
use crate::model::{HeaderValue, PathMatch, Route, RouteMatch};

/// One match: every given part must hold. Regular expressions are not judged
/// here, so they match nothing (fail closed).
pub fn match_matches(m: &RouteMatch, req: &Request) -> bool {
    let path_ok = match &m.path {
        None => true,
        Some(PathMatch::Exact(p)) => req.path == *p,
        Some(PathMatch::Prefix(p)) => {
            // Prefixes match whole segments, as Gateway API's PathPrefix.
            let p = p.trim_end_matches('/');
            p.is_empty() || req.path == p || req.path.starts_with(&format!("{p}/"))
        }
        Some(PathMatch::Regex(_)) => false,
    };
    let method_ok = m
        .method
        .as_ref()
        .is_none_or(|w| w.eq_ignore_ascii_case(&req.method));
    let headers_ok = m.headers.iter().all(|h| match &h.value {
        HeaderValue::Exact(v) => req
            .headers
            .iter()
            .any(|(n, val)| n.eq_ignore_ascii_case(&h.name) && val == v),
        HeaderValue::Regex(_) => false,
    });
    path_ok && method_ok && headers_ok
}

/// How specific a match is, compared in order: exact path over prefix, the
/// longer prefix, a method, more header matches (Gateway API precedence).
pub type Rank = (u8, usize, bool, usize);

/// The rank of one match, if it matches.
pub fn match_rank(m: &RouteMatch, req: &Request) -> Option<Rank> {
    if !match_matches(m, req) {
        return None;
    }
    let (kind, len) = match &m.path {
        Some(PathMatch::Exact(p)) => (2, p.len()),
        Some(PathMatch::Prefix(p)) => (1, p.trim_end_matches('/').len()),
        _ => (0, 0),
    };
    Some((kind, len, m.method.is_some(), m.headers.len()))
}

/// A route's rank for `req`: its best matching match (a rule without
/// matches matches everything, least specifically); None when it does not
/// match.
pub fn route_rank(r: &Route, req: &Request) -> Option<Rank> {
    if r.rules.is_empty() {
        return Some((0, 0, false, 0));
    }
    r.rules
        .iter()
        .flat_map(|rule| {
            let any: Option<Rank> = rule.matches.is_empty().then_some((0, 0, false, 0));
            any.into_iter()
                .chain(rule.matches.iter().filter_map(|m| match_rank(m, req)))
        })
        .max()
}

/// A route matches when any rule has any match that matches (a rule without
/// matches matches everything).
pub fn route_matches(r: &Route, req: &Request) -> bool {
    route_rank(r, req).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HeaderMatch;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn matches() {
        let exact = RouteMatch {
            path: Some(PathMatch::Exact("/a".into())),
            method: Some("POST".into()),
            headers: vec![HeaderMatch {
                name: "x-team".into(),
                value: HeaderValue::Exact(b"blue".to_vec()),
            }],
        };
        assert!(match_matches(
            &exact,
            &req("POST", "/a", &[("X-Team", "blue")])
        ));
        assert!(!match_matches(
            &exact,
            &req("GET", "/a", &[("x-team", "blue")])
        ));
        assert!(!match_matches(
            &exact,
            &req("POST", "/a/b", &[("x-team", "blue")])
        ));
        assert!(!match_matches(
            &exact,
            &req("POST", "/a", &[("x-team", "red")])
        ));
        assert!(!match_matches(&exact, &req("POST", "/a", &[])));
        let regex = RouteMatch {
            path: Some(PathMatch::Regex(".*".into())),
            method: None,
            headers: vec![],
        };
        assert!(
            !match_matches(&regex, &req("GET", "/anything", &[])),
            "regex matches nothing (fail closed)"
        );
        let root = RouteMatch {
            path: Some(PathMatch::Prefix("/".into())),
            method: None,
            headers: vec![],
        };
        assert!(match_matches(&root, &req("GET", "/x/y", &[])));
    }
}
