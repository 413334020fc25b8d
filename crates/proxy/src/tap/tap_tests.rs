use std::sync::atomic::Ordering;

use super::*;

fn ids() -> (pki::Identity, pki::Identity) {
    (
        "frontend.demo.serviceaccount.identity.weft.cluster.local"
            .parse()
            .unwrap(),
        "backend.demo.serviceaccount.identity.weft.cluster.local"
            .parse()
            .unwrap(),
    )
}

fn conn<'a>(c: &'a pki::Identity, s: &'a pki::Identity) -> ConnMeta<'a> {
    ConnMeta {
        direction: ProxyDirection::Inbound,
        src: "10.0.0.7:40000".parse().unwrap(),
        dst: "10.0.0.2:8080".parse().unwrap(),
        tls: "true",
        client_id: Some(c),
        server_id: Some(s),
        workload: "demo/backend",
    }
}

fn get(path: &str) -> Request<()> {
    Request::builder()
        .uri(path)
        .header("host", "backend:8080")
        .header("authorization", "secret")
        .body(())
        .unwrap()
}

/// The response and its (empty) body, done.
fn answer(t: Tapped, status: u16) {
    let end = t.response(status, None);
    drop(body::TapBody::new(
        http_body_util::Empty::<bytes::Bytes>::new(),
        end,
    ));
}

fn everything() -> Ask {
    Ask {
        filter: filter::compile(None).unwrap(),
        limit: None,
        max_rps: None,
        show_query: false,
    }
}

fn http(e: &TapEvent) -> &ev::Event {
    match e.event.as_ref().unwrap() {
        tap_event::Event::Http(h) => h.event.as_ref().unwrap(),
    }
}

#[test]
fn nothing_is_built_without_a_tap() {
    let taps = Taps::new(TapMetrics::default());
    let (c, s) = ids();
    assert!(taps.request(&conn(&c, &s), &get("/")).is_none());
    let (reg, _rx) = taps.open(everything());
    assert!(taps.request(&conn(&c, &s), &get("/")).is_some());
    drop(reg);
    assert_eq!(taps.inner.open.load(Ordering::Acquire), 0);
    assert!(taps.request(&conn(&c, &s), &get("/")).is_none());
}

#[test]
fn events_name_both_identities_tls_and_no_header_values() {
    let taps = Taps::new(TapMetrics::default());
    let (c, s) = ids();
    let (_reg, mut rx) = taps.open(everything());
    let t = taps.request(&conn(&c, &s), &get("/hello?token=x")).unwrap();
    answer(t, 200);
    let init = rx.try_recv().unwrap();
    assert_eq!(init.source_meta.as_ref().unwrap().labels["tls"], "true");
    assert_eq!(
        init.source_meta.as_ref().unwrap().labels["client_id"],
        c.to_string()
    );
    assert_eq!(
        init.destination_meta.as_ref().unwrap().labels["server_id"],
        s.to_string()
    );
    let ev::Event::RequestInit(r) = http(&init) else {
        panic!("request init first")
    };
    assert_eq!(
        (r.path.as_str(), r.authority.as_str()),
        ("/hello", "backend:8080")
    );
    assert!(r.headers.is_none());
    assert!(!format!("{init:?}").contains("secret"));
    assert!(
        matches!(http(&rx.try_recv().unwrap()), ev::Event::ResponseInit(r) if r.http_status == 200)
    );
    assert!(matches!(
        http(&rx.try_recv().unwrap()),
        ev::Event::ResponseEnd(_)
    ));
}

#[test]
fn a_stalled_reader_loses_events_counted_never_blocks() {
    let m = TapMetrics::default();
    let taps = Taps::new(m.clone());
    let (c, s) = ids();
    let (reg, mut rx) = taps.open(everything());
    for _ in 0..QUEUE {
        answer(taps.request(&conn(&c, &s), &get("/")).unwrap(), 204);
    }
    // Three events a request: the queue took the first QUEUE.
    assert_eq!(m.events.get(), QUEUE as u64);
    assert_eq!(m.dropped.get(), 2 * QUEUE as u64);
    assert_eq!(reg.take_dropped(), 2 * QUEUE as u64);
    assert_eq!(reg.take_dropped(), 0);
    assert!(rx.try_recv().is_ok());
}

#[test]
fn a_limit_ends_the_tap_once_its_requests_are_done() {
    let taps = Taps::new(TapMetrics::default());
    let (c, s) = ids();
    let (_reg, mut rx) = taps.open(Ask {
        limit: Some(2),
        ..everything()
    });
    let a = taps.request(&conn(&c, &s), &get("/a")).unwrap();
    let b = taps.request(&conn(&c, &s), &get("/b")).unwrap();
    assert!(taps.request(&conn(&c, &s), &get("/c")).is_none());
    drop((a, b));
    let mut n = 0;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    assert_eq!(n, 2);
    assert!(rx.is_closed() || rx.try_recv().is_err());
    assert_eq!(taps.inner.open.load(Ordering::Acquire), 0);
}

#[test]
fn only_matching_requests_are_tapped() {
    use linkerd2_proxy_api::tap::observe_request::{Match, r#match};
    let taps = Taps::new(TapMetrics::default());
    let (c, s) = ids();
    let prefix = Match {
        r#match: Some(r#match::Match::Http(r#match::Http {
            r#match: Some(r#match::http::Match::Path(r#match::http::StringMatch {
                r#match: Some(r#match::http::string_match::Match::Prefix("/api".into())),
            })),
        })),
    };
    let (_reg, _rx) = taps.open(Ask {
        filter: filter::compile(Some(&prefix)).unwrap(),
        ..everything()
    });
    assert!(taps.request(&conn(&c, &s), &get("/api/x")).is_some());
    assert!(taps.request(&conn(&c, &s), &get("/other?/api")).is_none());
}

#[tokio::test]
async fn response_end_counts_bytes_and_reads_grpc_status_from_trailers() {
    use http_body_util::BodyExt;
    use hyper::body::Frame;
    let taps = Taps::new(TapMetrics::default());
    let (c, s) = ids();
    let (_reg, mut rx) = taps.open(everything());
    let t = taps.request(&conn(&c, &s), &get("/svc/Call")).unwrap();
    let end = t.response(200, None);
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", "5".parse().unwrap());
    let frames: Vec<Result<Frame<bytes::Bytes>, std::convert::Infallible>> = vec![
        Ok(Frame::data(bytes::Bytes::from_static(b"hello"))),
        Ok(Frame::data(bytes::Bytes::from_static(b" world"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = body::TapBody::new(
        http_body_util::StreamBody::new(tokio_stream::iter(frames)),
        end,
    );
    let got = body.collect().await.unwrap().to_bytes();
    assert_eq!(&got[..], b"hello world");
    let mut last = None;
    while let Ok(e) = rx.try_recv() {
        last = Some(e);
    }
    let last = last.unwrap();
    let ev::Event::ResponseEnd(end) = http(&last) else {
        panic!("response end last")
    };
    assert_eq!(end.response_bytes, 11);
    assert_eq!(end.eos, Some(Eos::from_grpc_status(5)));
}

#[test]
fn requests_over_the_rate_do_not_use_up_the_limit() {
    let taps = Taps::new(TapMetrics::default());
    let (c, s) = ids();
    let (_reg, _rx) = taps.open(Ask {
        limit: Some(2),
        max_rps: Some(1),
        ..everything()
    });
    assert!(taps.request(&conn(&c, &s), &get("/a")).is_some());
    // Over the rate within this second: not tapped, the limit kept.
    assert!(taps.request(&conn(&c, &s), &get("/b")).is_none());
    let t = taps.inner.taps.read().unwrap();
    let left = t[0].remaining.as_ref().unwrap().load(Ordering::Acquire);
    assert_eq!(left, 1);
}
