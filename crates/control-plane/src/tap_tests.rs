use std::collections::HashMap;

use linkerd2_proxy_api::tap::tap_event::{EndpointMeta, ProxyDirection, RouteMeta};

use super::*;

#[test]
fn queries_are_read_strictly() {
    let q = tap_query(
        "workload=demo/backend&method=GET&path=%2Fhello&max_rps=5&show_query=true&seconds=30",
    )
    .unwrap();
    assert_eq!(q.workloads, ["demo/backend"]);
    let two = tap_query("workload=demo/a&workload=demo/b").unwrap();
    assert_eq!(two.workloads, ["demo/a", "demo/b"]);
    let many: Vec<String> = (0..=MAX_WORKLOADS)
        .map(|i| format!("workload=d/w{i}"))
        .collect();
    assert!(
        tap_query(&many.join("&"))
            .unwrap_err()
            .contains("more than")
    );
    assert_eq!(q.method.as_deref(), Some("GET"));
    assert_eq!(q.path.as_deref(), Some("/hello"));
    assert_eq!((q.max_rps, q.show_query, q.seconds), (Some(5), true, 30));
    assert_eq!(
        tap_query("workload=demo/backend").unwrap().seconds,
        DEFAULT_SECONDS
    );
    for (bad, says) in [
        ("", "workload=NS/NAME is required"),
        ("workload=backend", "NAMESPACE/NAME"),
        ("workload=demo/Backend", "NAMESPACE/NAME"),
        ("workload=demo/b&method=get", "upper case"),
        ("workload=demo/b&path=hello", "starting with '/'"),
        ("workload=demo/b&path=/a%3Fb", "without a query"),
        ("workload=demo/b&max_rps=0", "at least 1"),
        ("workload=demo/b&max_rps=x", "at least 1"),
        ("workload=demo/b&seconds=99999", "from 1 to"),
        ("workload=demo/b&show_query=yes", "true or false"),
        ("workload=demo/b&path=%ZZ", "percent-encoded"),
        ("workload=demo/b&colour=red", "unknown query"),
    ] {
        let e = tap_query(bad).unwrap_err();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn the_match_carries_every_filter() {
    let q = tap_query("workload=demo/backend&method=POST&path=/api&to=demo/db").unwrap();
    let req = observe_request(&q);
    let Some(r#match::Match::All(seq)) = req.r#match.and_then(|m| m.r#match) else {
        panic!("an all-of match")
    };
    assert_eq!(seq.matches.len(), 3);
    let none = observe_request(&tap_query("workload=demo/backend").unwrap());
    let Some(r#match::Match::All(seq)) = none.r#match.and_then(|m| m.r#match) else {
        panic!("an all-of match")
    };
    assert!(seq.matches.is_empty(), "no filter: every request");
}

fn event(e: ev::Event, tls: &str) -> TapEvent {
    let ip: std::net::IpAddr = "10.0.0.7".parse().unwrap();
    let dst: std::net::IpAddr = "10.0.0.2".parse().unwrap();
    TapEvent {
        source: Some(linkerd2_proxy_api::net::TcpAddress {
            ip: Some(ip.into()),
            port: 40000,
        }),
        source_meta: Some(EndpointMeta {
            labels: HashMap::from([
                ("tls".to_string(), tls.to_string()),
                ("client_id".to_string(), "frontend.demo".to_string()),
            ]),
        }),
        route_meta: Some(RouteMeta {
            labels: HashMap::from([(DROPPED_LABEL.to_string(), "7".to_string())]),
        }),
        destination: Some(linkerd2_proxy_api::net::TcpAddress {
            ip: Some(dst.into()),
            port: 8080,
        }),
        destination_meta: Some(EndpointMeta {
            labels: HashMap::from([("server_id".to_string(), "backend.demo".to_string())]),
        }),
        proxy_direction: ProxyDirection::Inbound as i32,
        event: Some(tap_event::Event::Http(tap_event::Http { event: Some(e) })),
    }
}

#[test]
fn events_become_lines() {
    let id = Some(ev::StreamId {
        base: 99,
        stream: 4,
    });
    let req = event(
        ev::Event::RequestInit(ev::RequestInit {
            id,
            method: Some(http::Method::GET.into()),
            scheme: None,
            authority: "backend:8080".into(),
            path: "/hello".into(),
            headers: None,
        }),
        "true",
    );
    let l = line(&req, 2, "demo/backend").unwrap();
    assert_eq!(
        (l.kind.as_str(), l.id.as_str(), l.proxy.as_str()),
        ("req", "2:4", "in")
    );
    assert_eq!(
        (l.src.as_str(), l.dst.as_str()),
        ("10.0.0.7:40000", "10.0.0.2:8080")
    );
    assert_eq!(l.tls, "true");
    assert_eq!(l.client_id.as_deref(), Some("frontend.demo"));
    assert_eq!(l.server_id.as_deref(), Some("backend.demo"));
    assert_eq!(l.method.as_deref(), Some("GET"));
    assert_eq!(l.path.as_deref(), Some("/hello"));
    assert_eq!(l.dropped_before, Some(7));
    let end = event(
        ev::Event::ResponseEnd(ev::ResponseEnd {
            id,
            since_request_init: Some(prost_types::Duration {
                seconds: 1,
                nanos: 2_000,
            }),
            since_response_init: None,
            response_bytes: 12,
            eos: Some(linkerd2_proxy_api::tap::Eos::from_grpc_status(0)),
            trailers: None,
        }),
        "not_provided_by_remote",
    );
    let l = line(&end, 0, "demo/backend").unwrap();
    assert_eq!(l.kind, "end");
    assert_eq!(l.latency_us, Some(1_000_002));
    assert_eq!((l.response_bytes, l.grpc_status), (Some(12), Some(0)));
    assert_eq!(l.tls, "not_provided_by_remote");
}
