//! `weft tap` in network namespaces, as root: frontend (meshed) and an
//! unmeshed client call backend; `weft tap backend` shows frontend's
//! requests with tls=true and both identities, and the client's with the
//! reason it had no TLS. A Tap.Observe call with another identity's
//! certificate is refused. A tap reader that never reads: traffic still
//! flows, the proxy's memory stays bounded, and the drops are counted.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::certify::{FakeProxy, id};
use common::netmesh::{NetMesh, app_in, get_in};
use common::proc::{metric_sum, poll};
use control_plane::tap::TapLine;
use linkerd2_proxy_api::tap::ObserveRequest;
use linkerd2_proxy_api::tap::tap_client::TapClient;
use testbed::http_app::{Req, h1_keepalive};
use testbed::{block_on_in, have_root, in_ns};

const APP: u16 = 8080;
const LONG: Duration = Duration::from_secs(60);

/// A `weft tap` running in the control plane's pod; its stdout, by line.
struct Tapping {
    child: Child,
    out: Arc<Mutex<Vec<String>>>,
}

impl Tapping {
    fn start(m: &NetMesh, args: &[&str]) -> Self {
        let mut child = m
            .bed
            .by_name("cp")
            .cmd(env!("CARGO_BIN_EXE_weft"))
            .arg("tap")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                sink.lock().unwrap().push(l);
            }
        });
        Self { child, out }
    }

    fn lines(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }
}

impl Drop for Tapping {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` GETs on one connection from inside `ns`; requests a second.
fn burst(ns: &str, to: SocketAddr, n: usize) -> f64 {
    block_on_in(ns, move || async move {
        let s = tokio::net::TcpStream::connect(to).await.unwrap();
        let reqs = (0..n).map(|_| Req::get("/")).collect();
        let start = Instant::now();
        let replies = h1_keepalive(s, reqs).await.unwrap();
        assert!(replies.iter().all(|r| r.status == 200));
        n as f64 / start.elapsed().as_secs_f64()
    })
    .unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Tap.Observe on backend's tap port, presenting a certificate issued to
/// `intruder`: the answer's gRPC status.
fn observe_as_intruder(m: &NetMesh, backend_tap: SocketAddr) -> tonic::Status {
    let token = m.s.read(&m.s.token("intruder"));
    let anchors = m.s.read("ca.crt");
    let identity_addr = SocketAddr::new(m.cp_ip.into(), 8080);
    in_ns(&m.ns("client"), move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let p = FakeProxy::new(&id("intruder", "demo"));
            let resp = p
                .certify(identity_addr, &anchors, token.trim(), None)
                .await
                .unwrap();
            let (cert, key) = p.client_pem(&resp);
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&anchors))
                .domain_name(id("backend", "demo"))
                .identity(tonic::transport::Identity::from_pem(cert, key));
            let ch = tonic::transport::Endpoint::from_shared(format!("https://{backend_tap}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .unwrap();
            let req = ObserveRequest {
                limit: 1,
                r#match: None,
                extract: None,
            };
            TapClient::new(ch).observe(req).await.unwrap_err()
        })
    })
    .unwrap()
}

/// The web view's tap pane (`/ui?tap=…`) in headless Chromium, inside the
/// control plane's namespace, while frontend and the unmeshed client call
/// backend: the same events as `weft tap`, TLS and identity per request.
fn tap_pane(m: &NetMesh, backend: SocketAddr, client_ip: &str) {
    if !common::browser::have_chromium("tap pane") {
        return;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (fe, cl, halt) = (m.ns("frontend"), m.ns("client"), stop.clone());
    let calls = std::thread::spawn(move || {
        while !halt.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = get_in(&fe, backend, "/hello");
            let _ = get_in(&cl, backend, "/plain");
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // The DOM is taken when the page's virtual time runs out, which a
    // streaming fetch does not hold back: taken again until both callers'
    // events are in it.
    let url = "http://127.0.0.1:9990/ui?tap=demo/backend&seconds=2";
    let t = Instant::now();
    let both = |rows: &[std::collections::BTreeMap<String, String>]| {
        rows.iter().any(|r| r["data-tls"] == "true") && rows.iter().any(|r| r["data-tls"] != "true")
    };
    let (dom, rows) = poll("the tap pane shows both callers", LONG, || {
        let dom = common::browser::dump_dom(|p| m.bed.by_name("cp").cmd(p), url);
        let rows = common::browser::rows(&dom, "data-tap");
        both(&rows).then_some((dom, rows))
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    calls.join().unwrap();
    println!("tap pane: {} events in {:?}", rows.len(), t.elapsed());
    assert!(
        !dom.contains(r#"data-state="failed""#),
        "the tap did not fail: {dom}"
    );
    let fe_id = id("frontend", "demo");
    assert!(
        rows.iter().any(|r| r["data-tap"] == "req"
            && r["data-tls"] == "true"
            && r["data-client-id"] == fe_id),
        "frontend's requests over mTLS with its identity: {rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r["data-tls"] == "not_provided_by_remote"
                && r["data-src"].starts_with(client_ip)
                && r["data-client-id"].is_empty()),
        "the client's without TLS, and why: {rows:?}"
    );
}

#[test]
fn tap_shows_tls_identities_and_why_not_and_never_slows_traffic() {
    if !have_root("tap_shows_tls_identities_and_why_not_and_never_slows_traffic") {
        return;
    }
    let m = NetMesh::build(
        &[("frontend", &[APP]), ("backend", &[APP])],
        &["client"],
        &[],
        &[],
    );
    app_in(&m.ns("backend"), APP);
    let backend = m.addr("backend", APP);
    let client_ip = format!("{}:", m.addr("client", APP).ip());

    // weft tap backend -o json: frontend's requests over mTLS, the client's without.
    let tap = Tapping::start(
        &m,
        &["backend", "-n", "demo", "-o", "json", "--seconds", "60"],
    );
    let started = Instant::now();
    let lines: Vec<TapLine> = poll("both callers in the tap", LONG, || {
        assert_eq!(
            get_in(&m.ns("frontend"), backend, "/hello?secret=1")
                .unwrap()
                .0,
            200
        );
        assert_eq!(get_in(&m.ns("client"), backend, "/plain").unwrap().0, 200);
        let lines: Vec<TapLine> = tap
            .lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let meshed = lines.iter().any(|l| l.kind == "req" && l.tls == "true");
        let plain = lines
            .iter()
            .any(|l| l.kind == "req" && l.src.starts_with(&client_ip));
        let ended = lines.iter().filter(|l| l.kind == "end").count() >= 2;
        (meshed && plain && ended).then_some(lines)
    });
    println!(
        "tap saw both callers {:?} after it started",
        started.elapsed()
    );
    let fe = lines
        .iter()
        .find(|l| l.kind == "req" && l.tls == "true")
        .unwrap();
    assert_eq!(
        fe.client_id.as_deref(),
        Some(id("frontend", "demo").as_str())
    );
    assert_eq!(
        fe.server_id.as_deref(),
        Some(id("backend", "demo").as_str())
    );
    assert_eq!(fe.path.as_deref(), Some("/hello"), "the query is hidden");
    assert_eq!(fe.method.as_deref(), Some("GET"));
    let plain = lines
        .iter()
        .find(|l| l.kind == "req" && l.src.starts_with(&client_ip))
        .unwrap();
    assert_eq!(plain.tls, "not_provided_by_remote");
    assert!(plain.client_id.is_none() && plain.server_id.is_none());
    assert!(
        lines
            .iter()
            .any(|l| l.kind == "rsp" && l.status == Some(200))
    );
    drop(tap);

    // The text form, as the README shows it.
    let text = Tapping::start(&m, &["backend", "-n", "demo", "--seconds", "30"]);
    let shown = poll("text lines", LONG, || {
        let _ = get_in(&m.ns("frontend"), backend, "/hello");
        let _ = get_in(&m.ns("client"), backend, "/plain");
        let l = text.lines();
        (l.iter().filter(|l| l.starts_with("end ")).count() >= 2).then_some(l)
    });
    drop(text);
    println!("$ weft tap backend -n demo");
    for l in &shown {
        println!("{l}");
    }
    assert!(
        shown
            .iter()
            .any(|l| l.starts_with("req id=") && l.contains(" tls=true :method=GET"))
    );
    assert!(
        shown
            .iter()
            .any(|l| l.contains(" tls=not_provided_by_remote "))
    );

    tap_pane(&m, backend, &client_ip);

    // Any identity but the control plane's is refused, named.
    let backend_tap = SocketAddr::new(backend.ip(), 4190);
    let refused = observe_as_intruder(&m, backend_tap);
    println!(
        "intruder's Tap.Observe: {:?}: {}",
        refused.code(),
        refused.message()
    );
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains(&id("intruder", "demo")),
        "{}",
        refused.message()
    );

    // A tap reader that never reads.
    let n = 2000;
    let plain_rps = burst(&m.ns("frontend"), backend, n);
    let pid = m
        .proxies
        .iter()
        .find(|(w, _)| w == "backend")
        .unwrap()
        .1
        .as_ref()
        .unwrap()
        .child
        .id();
    let rss_before = rss_kib(pid);
    let stalled = in_ns(&m.ns("cp"), || {
        let mut s = std::net::TcpStream::connect("127.0.0.1:9990").unwrap();
        write!(
            s,
            "GET /tap?workload=demo/backend HTTP/1.0\r\nHost: 127.0.0.1:9990\r\n\r\n"
        )
        .unwrap();
        s
    })
    .unwrap();
    poll("the stalled tap open on backend", LONG, || {
        (metric_sum(&m.metrics("backend"), "tap_open", &[]) >= 1.0).then_some(())
    });
    let mut stalled_rps = Vec::new();
    let dropped = poll("drops counted while the reader stalls", LONG, || {
        stalled_rps.push(burst(&m.ns("frontend"), backend, n));
        let d = metric_sum(&m.metrics("backend"), "tap_events_dropped_total", &[]);
        (d > 0.0).then_some(d)
    });
    // The queues are full now: every event is dropped, none waited for.
    let full_rps = burst(&m.ns("frontend"), backend, n);
    let rss_after = rss_kib(pid);
    drop(stalled);
    poll("the stalled tap closed", LONG, || {
        (metric_sum(&m.metrics("backend"), "tap_open", &[]) == 0.0).then_some(())
    });
    let after_rps = burst(&m.ns("frontend"), backend, n);
    println!(
        "throughput, {n} keep-alive GETs frontend -> backend (req/s): no tap {plain_rps:.0}; stalled tap while its queues fill {}; stalled tap, queues full {full_rps:.0}; tap closed again {after_rps:.0}",
        stalled_rps
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "backend proxy RSS: {rss_before} KiB before the stalled tap, {rss_after} KiB with it; {dropped} events dropped"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the proxy's memory stays bounded"
    );

    // Bad input: one line, exit 2.
    for (args, says) in [
        (
            vec!["tap", "backend", "-n", "demo", "--max-rps", "0"],
            "--max-rps",
        ),
        (
            vec!["tap", "backend", "-n", "demo", "--method", "get"],
            "--method",
        ),
        (
            vec!["tap", "backend", "-n", "demo", "--path", "nope"],
            "--path",
        ),
        (vec!["tap", "nosuch", "-n", "demo"], "demo/backend"),
    ] {
        let r = m.weft(&args).refused(2);
        println!("{}", r.stderr.trim());
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(r.stderr.contains(says), "{}", r.stderr);
    }
}
