use std::time::{Duration, Instant};

use linkerd2_proxy_api::http_types::HttpMethod;
use linkerd2_proxy_api::net::IpAddress;
use linkerd2_proxy_api::tap::observe_request::{Match, r#match};

use super::*;

fn m(x: r#match::Match) -> Match {
    Match { r#match: Some(x) }
}

fn path_prefix(p: &str) -> Match {
    use r#match::http::{StringMatch, string_match};
    m(r#match::Match::Http(r#match::Http {
        r#match: Some(r#match::http::Match::Path(StringMatch {
            r#match: Some(string_match::Match::Prefix(p.into())),
        })),
    }))
}

fn method(x: http::Method) -> Match {
    m(r#match::Match::Http(r#match::Http {
        r#match: Some(r#match::http::Match::Method(HttpMethod::from(x))),
    }))
}

fn source(ip: &str, mask: u32) -> Match {
    let ip: std::net::IpAddr = ip.parse().unwrap();
    m(r#match::Match::Source(r#match::Tcp {
        r#match: Some(r#match::tcp::Match::Netmask(r#match::tcp::Netmask {
            ip: Some(IpAddress::from(ip)),
            mask,
        })),
    }))
}

fn all(ms: Vec<Match>) -> Match {
    m(r#match::Match::All(r#match::Seq { matches: ms }))
}

fn facts<'a>(method: &'a str, path: &'a str) -> Facts<'a> {
    Facts {
        src: "10.0.0.7:40000".parse().unwrap(),
        dst: "10.0.0.2:8080".parse().unwrap(),
        workload: "demo/backend",
        server_id: Some("backend.demo.serviceaccount.identity.weft.cluster.local"),
        method,
        scheme: "http",
        authority: "backend:8080",
        path,
    }
}

#[test]
fn no_match_taps_everything() {
    let f = compile(None).unwrap();
    assert!(matches(&f, &facts("GET", "/")));
}

#[test]
fn method_path_and_source_combine() {
    let f = compile(Some(&all(vec![
        method(http::Method::GET),
        path_prefix("/hello"),
        source("10.0.0.0", 24),
    ])))
    .unwrap();
    assert!(matches(&f, &facts("GET", "/hello/x")));
    assert!(!matches(&f, &facts("POST", "/hello")));
    assert!(!matches(&f, &facts("GET", "/other")));
    let mut elsewhere = facts("GET", "/hello");
    elsewhere.src = "10.0.1.7:1".parse().unwrap();
    assert!(!matches(&f, &elsewhere));
    let not = compile(Some(&m(r#match::Match::Not(Box::new(path_prefix("/a")))))).unwrap();
    assert!(matches(&not, &facts("GET", "/b")) && !matches(&not, &facts("GET", "/a")));
}

#[test]
fn destination_labels_name_the_workload() {
    let label = |k: &str, v: &str| {
        compile(Some(&m(r#match::Match::DestinationLabel(r#match::Label {
            key: k.into(),
            value: v.into(),
        }))))
        .unwrap()
    };
    assert!(matches(
        &label("workload", "demo/backend"),
        &facts("GET", "/")
    ));
    assert!(matches(&label("namespace", "demo"), &facts("GET", "/")));
    assert!(!matches(&label("workload", "demo/db"), &facts("GET", "/")));
    assert!(!matches(&label("unknown", "x"), &facts("GET", "/")));
}

#[test]
fn malformed_matches_are_refused_with_the_reason() {
    assert_eq!(
        compile(Some(&Match { r#match: None })),
        Err(FilterError::Empty)
    );
    assert_eq!(
        compile(Some(&source("10.0.0.1", 33))),
        Err(FilterError::Mask { mask: 33, bits: 32 })
    );
    let ports = m(r#match::Match::Destination(r#match::Tcp {
        r#match: Some(r#match::tcp::Match::Ports(r#match::tcp::PortRange {
            min: 9000,
            max: 70000,
        })),
    }));
    assert_eq!(
        compile(Some(&ports)),
        Err(FilterError::Ports {
            min: 9000,
            max: 70000
        })
    );
    let mut deep = path_prefix("/");
    for _ in 0..MAX_DEPTH {
        deep = m(r#match::Match::Not(Box::new(deep)));
    }
    assert_eq!(compile(Some(&deep)), Err(FilterError::TooDeep));
    let wide = all((0..MAX_TERMS).map(|_| path_prefix("/")).collect());
    assert_eq!(compile(Some(&wide)), Err(FilterError::TooLarge));
    let route = m(r#match::Match::RouteLabel(r#match::Label {
        key: "route".into(),
        value: "x".into(),
    }));
    assert!(
        compile(Some(&route))
            .unwrap_err()
            .to_string()
            .contains("\"route\"")
    );
}

#[test]
fn single_ports_and_ranges() {
    let port = |min, max| {
        compile(Some(&m(r#match::Match::Destination(r#match::Tcp {
            r#match: Some(r#match::tcp::Match::Ports(r#match::tcp::PortRange {
                min,
                max,
            })),
        }))))
        .unwrap()
    };
    assert!(matches(&port(8080, 0), &facts("GET", "/")));
    assert!(matches(&port(8000, 8100), &facts("GET", "/")));
    assert!(!matches(&port(9000, 0), &facts("GET", "/")));
}

#[test]
fn max_rps_admits_that_many_a_second() {
    let t0 = Instant::now();
    let mut w = Window::default();
    let admitted = (0..10).filter(|_| admit(&mut w, Some(3), t0)).count();
    assert_eq!(admitted, 3);
    assert!(!admit(&mut w, Some(3), t0 + Duration::from_millis(999)));
    assert!(admit(&mut w, Some(3), t0 + Duration::from_secs(1)));
    assert!((0..100).all(|_| admit(&mut w, None, t0)));
    assert!(!admit(&mut Window::default(), Some(0), t0));
}

#[test]
fn queries_are_hidden_unless_asked_and_tls_is_never_false() {
    assert_eq!(shown_path("/hello?token=secret", false), "/hello");
    assert_eq!(
        shown_path("/hello?token=secret", true),
        "/hello?token=secret"
    );
    assert_eq!(shown_path("/hello", false), "/hello");
    assert_eq!(tls_label(true, ""), "true");
    assert_eq!(
        tls_label(false, "not_provided_by_remote"),
        "not_provided_by_remote"
    );
    assert_eq!(tls_label(false, ""), "no_identity");
}
