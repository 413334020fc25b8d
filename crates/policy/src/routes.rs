//! HTTP route matching (path, method, headers) over linkerd2-proxy-api types.

use linkerd2_proxy_api::http_route::{HttpRouteMatch, header_match, path_match};
use linkerd2_proxy_api::http_types::http_method;
use linkerd2_proxy_api::inbound::HttpRoute;

use crate::Request;

fn method_name(m: &linkerd2_proxy_api::http_types::HttpMethod) -> Option<String> {
    match m.r#type.as_ref()? {
        http_method::Type::Registered(r) => http_method::Registered::try_from(*r)
            .ok()
            .map(|r| format!("{r:?}").to_uppercase()),
        http_method::Type::Unregistered(s) => Some(s.clone()),
    }
}

/// One match: every given part must hold. Regular expressions are not judged
/// here, so they match nothing (fail closed).
pub fn match_matches(m: &HttpRouteMatch, req: &Request) -> bool {
    let path_ok = match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
        None => true,
        Some(path_match::Kind::Exact(p)) => req.path == *p,
        Some(path_match::Kind::Prefix(p)) => {
            // Prefixes match whole segments, as Gateway API's PathPrefix.
            let p = p.trim_end_matches('/');
            p.is_empty() || req.path == p || req.path.starts_with(&format!("{p}/"))
        }
        Some(path_match::Kind::Regex(_)) => false,
    };
    let method_ok = match m.method.as_ref() {
        None => true,
        Some(want) => method_name(want).is_some_and(|w| w.eq_ignore_ascii_case(&req.method)),
    };
    let headers_ok = m.headers.iter().all(|h| match h.value.as_ref() {
        Some(header_match::Value::Exact(v)) => req
            .headers
            .iter()
            .any(|(n, val)| n.eq_ignore_ascii_case(&h.name) && val == v),
        _ => false,
    });
    path_ok && method_ok && headers_ok
}

/// How specific a match is, compared in order: exact path over prefix, the
/// longer prefix, a method, more header matches (Gateway API precedence).
pub type Rank = (u8, usize, bool, usize);

/// The rank of one match, if it matches.
pub fn match_rank(m: &HttpRouteMatch, req: &Request) -> Option<Rank> {
    if !match_matches(m, req) {
        return None;
    }
    let (kind, len) = match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(path_match::Kind::Exact(p)) => (2, p.len()),
        Some(path_match::Kind::Prefix(p)) => (1, p.trim_end_matches('/').len()),
        _ => (0, 0),
    };
    Some((kind, len, m.method.is_some(), m.headers.len()))
}

/// A route's rank for `req`: its best matching match (a rule without
/// matches matches everything, least specifically); None when it does not
/// match.
pub fn route_rank(r: &HttpRoute, req: &Request) -> Option<Rank> {
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
pub fn route_matches(r: &HttpRoute, req: &Request) -> bool {
    route_rank(r, req).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use linkerd2_proxy_api::http_route::{HeaderMatch, PathMatch};
    use linkerd2_proxy_api::http_types::HttpMethod;

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
        let exact = HttpRouteMatch {
            path: Some(PathMatch {
                kind: Some(path_match::Kind::Exact("/a".into())),
            }),
            method: Some(HttpMethod {
                r#type: Some(http_method::Type::Registered(
                    http_method::Registered::Post as i32,
                )),
            }),
            headers: vec![HeaderMatch {
                name: "x-team".into(),
                value: Some(header_match::Value::Exact(b"blue".to_vec())),
            }],
            ..Default::default()
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
        let regex = HttpRouteMatch {
            path: Some(PathMatch {
                kind: Some(path_match::Kind::Regex(".*".into())),
            }),
            ..Default::default()
        };
        assert!(
            !match_matches(&regex, &req("GET", "/anything", &[])),
            "regex matches nothing (fail closed)"
        );
        let root = HttpRouteMatch {
            path: Some(PathMatch {
                kind: Some(path_match::Kind::Prefix("/".into())),
            }),
            ..Default::default()
        };
        assert!(match_matches(&root, &req("GET", "/x/y", &[])));
    }
}
