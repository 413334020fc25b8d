//! Issue 13: Certify is bounded. For 20 s a client floods invalid tokens,
//! another hammers one valid join token, a third hammers renewals with its
//! leaf, each from its own address over one HTTP/2 connection with many
//! calls in flight. Each gets at most its configured rate; another
//! identity's renewals still succeed; the control plane's memory, issuance
//! record and log stay bounded.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use tokio::task::JoinSet;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

use super::common::Scratch;
use super::common::certify::{CP_IDENTITY, FakeProxy, id};
use super::common::proc::{http_get, metric, poll};
use super::{DEADLINE, rss_kb};

const FLOOD: Duration = Duration::from_secs(20);
/// Per client: 30 a minute, 5 at once; so at most 5 + 10 in 20 s.
const PER_CLIENT: &str = "30/m:5";
const GLOBAL: &str = "100/s:100";
/// Refused requests per peer address: at most 10 + 100 in 20 s.
const REFUSALS: &str = "5/s:10";
/// Calls in flight per flooding connection (the anonymous stream cap is 16).
const IN_FLIGHT: usize = 16;

fn token(s: &Scratch, sa: &str) -> String {
    let args = [
        "token",
        "create",
        "--namespace",
        "demo",
        "--service-account",
        sa,
        "--ttl",
        "1h",
        "--state-dir",
        "state",
    ];
    s.weft(&args).ok().stdout.trim().to_string()
}

/// One HTTP/2 connection from `from` to the identity service.
async fn connect(
    addr: SocketAddr,
    from: IpAddr,
    anchors: &str,
    client: Option<(String, String)>,
) -> IdentityClient<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(anchors))
        .domain_name(CP_IDENTITY);
    if let Some((cert, key)) = client {
        tls = tls.identity(TlsIdentity::from_pem(cert, key));
    }
    let ch = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .local_address(Some(from))
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    IdentityClient::new(ch)
}

/// What one class of client got: successes and refusals by code.
#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    refused: BTreeMap<String, u64>,
}

impl Tally {
    fn refused(&self, code: Code) -> u64 {
        self.refused.get(&format!("{code:?}")).copied().unwrap_or(0)
    }
}

/// `IN_FLIGHT` loops on one connection, each sending `token` for `proxy`,
/// a fresh one per call if `token` is empty, until `stop`.
fn flood(
    tasks: &mut JoinSet<()>,
    client: &IdentityClient<Channel>,
    proxy: &Arc<FakeProxy>,
    token: Option<&str>,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Mutex<Tally>>,
) {
    for i in 0..IN_FLIGHT {
        let (mut c, proxy, stop, tally) =
            (client.clone(), proxy.clone(), stop.clone(), tally.clone());
        let token = token.map(str::to_string);
        tasks.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // Garbage differs per call: distinct keys must not grow memory.
                let tok = token.clone().unwrap_or_else(|| format!("garbage.{i}.{n}"));
                let r = c.certify(proxy.request(&tok)).await;
                let mut t = tally.lock().unwrap();
                match r {
                    Ok(_) => t.ok += 1,
                    Err(e) => *t.refused.entry(format!("{:?}", e.code())).or_default() += 1,
                }
            }
        });
    }
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// The log so far: lines and bytes.
fn log_size(lines: &Mutex<Vec<String>>) -> (usize, usize) {
    let l = lines.lock().unwrap();
    (l.len(), l.iter().map(|s| s.len() + 1).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certify_flood_gets_its_configured_rate_and_nothing_grows() {
    let s = Scratch::new();
    s.guide_material();
    let cp = s.control_plane(&[
        "--certify-rate-per-client",
        PER_CLIENT,
        "--certify-rate-global",
        GLOBAL,
        "--certify-refusals-per-peer",
        REFUSALS,
    ]);
    let (addr, admin) = (
        cp.addr("identity listening on"),
        cp.addr("admin listening on"),
    );
    let anchors = s.read("ca.crt");
    tokio::task::block_in_place(|| {
        poll("control plane /ready", DEADLINE, || {
            matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
        })
    });
    let startup = cp.output();
    assert!(startup.contains("certify-limits"), "{startup}");
    assert!(startup.contains(PER_CLIENT), "{startup}");

    // The bystander and the renewal hammer hold leaves first.
    let web = Arc::new(FakeProxy::new(&id("web", "demo")));
    let renewer = Arc::new(FakeProxy::new(&id("renewer", "demo")));
    let first = |p: Arc<FakeProxy>, tok: String| {
        let anchors = anchors.clone();
        async move {
            let mut c = connect(addr, loopback(1), &anchors, None).await;
            c.certify(p.request(&tok)).await.unwrap().into_inner()
        }
    };
    let mut web_leaf = first(web.clone(), token(&s, "web")).await;
    let renewer_leaf = first(renewer.clone(), token(&s, "renewer")).await;
    let hammer = Arc::new(FakeProxy::new(&id("hammer", "demo")));
    let hammer_token = token(&s, "hammer");
    let record = s.path("state/issuances.jsonl");
    let record_before = std::fs::metadata(&record).unwrap().len();
    let rss_before = rss_kb(&cp);
    let log_before = log_size(&cp.lines);

    let stop = Arc::new(AtomicBool::new(false));
    let (garbage, valid, renewals) = (
        Arc::new(Mutex::new(Tally::default())),
        Arc::new(Mutex::new(Tally::default())),
        Arc::new(Mutex::new(Tally::default())),
    );
    let mut tasks = JoinSet::new();
    let attacker = Arc::new(FakeProxy::new(&id("attacker", "demo")));
    let c = connect(addr, loopback(2), &anchors, None).await;
    flood(&mut tasks, &c, &attacker, None, &stop, &garbage);
    let c = connect(addr, loopback(3), &anchors, None).await;
    flood(&mut tasks, &c, &hammer, Some(&hammer_token), &stop, &valid);
    let c = connect(
        addr,
        loopback(4),
        &anchors,
        Some(renewer.client_pem(&renewer_leaf)),
    )
    .await;
    flood(&mut tasks, &c, &renewer, Some(""), &stop, &renewals);
    let started = Instant::now();

    // Meanwhile the bystander renews every 2.5 s, each on a new connection.
    let mut bystander = Vec::new();
    while started.elapsed() < FLOOD {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let t = Instant::now();
        let mut c = connect(addr, loopback(1), &anchors, Some(web.client_pem(&web_leaf))).await;
        let r = c.certify(web.request("")).await;
        bystander.push((t.elapsed(), r.as_ref().err().map(|e| e.code())));
        match r {
            Ok(resp) => web_leaf = resp.into_inner(),
            Err(e) => println!("bystander renewal refused: {e:?}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let rss_after = rss_kb(&cp);
    let log_after = log_size(&cp.lines);
    let record_after = std::fs::metadata(&record).unwrap().len();

    let (garbage, valid, renewals) = (
        garbage.lock().unwrap(),
        valid.lock().unwrap(),
        renewals.lock().unwrap(),
    );
    for (name, t) in [
        ("invalid tokens", &garbage),
        ("one valid token", &valid),
        ("renewals of one identity", &renewals),
    ] {
        let sent = t.ok + t.refused.values().sum::<u64>();
        println!(
            "{name}: {sent} calls ({:.0}/s), {} accepted ({:.2}/s), refused {:?}",
            sent as f64 / secs,
            t.ok,
            t.ok as f64 / secs,
            t.refused
        );
    }
    let latencies: Vec<String> = bystander.iter().map(|(d, _)| format!("{d:.0?}")).collect();
    println!(
        "bystander renewals: {} in {secs:.1}s, latencies {latencies:?}",
        bystander.len()
    );
    let (lines, bytes) = (log_after.0 - log_before.0, log_after.1 - log_before.1);
    println!(
        "control plane log: {lines} lines, {bytes} bytes in {secs:.1}s ({:.1} lines/s, {:.0} B/s)",
        lines as f64 / secs,
        bytes as f64 / secs
    );
    println!(
        "control plane RSS {rss_before} kB -> {rss_after} kB; issuance record {record_before} -> {record_after} bytes"
    );
    let (_, m) = http_get(admin, "/metrics").unwrap();
    for key in ["peer", "join_token", "renewal", "global", "global_verify"] {
        let n = metric(&m, &format!("certify_rate_limited_total{{key=\"{key}\"}}")).unwrap_or(0.0);
        println!("certify_rate_limited_total{{key=\"{key}\"}} {n}");
    }
    let counted: f64 = ["unauthenticated", "resource_exhausted"]
        .iter()
        .map(|r| metric(&m, &format!("certify_refusals_total{{reason=\"{r}\"}}")).unwrap_or(0.0))
        .sum();
    println!("certify_refusals_total (unauthenticated + resource_exhausted) {counted}");

    // Each class is capped: burst + rate x time (the floods began up to a
    // second before `started`).
    let secs_cap = secs + 1.0;
    let per_client_cap = 5 + (secs_cap / 2.0).ceil() as u64;
    assert!(valid.ok >= 5 && valid.ok <= per_client_cap, "{valid:?}");
    assert!(
        renewals.ok >= 5 && renewals.ok <= per_client_cap,
        "{renewals:?}"
    );
    assert!(
        valid.refused(Code::ResourceExhausted) > valid.ok,
        "{valid:?}"
    );
    assert!(
        renewals.refused(Code::ResourceExhausted) > renewals.ok,
        "{renewals:?}"
    );
    // Invalid tokens: no certificate, and their proofs checked at most at
    // the per-address refusal rate; the rest refused before any work.
    assert_eq!(garbage.ok, 0);
    let refusal_cap = 10 + (secs_cap * 5.0).ceil() as u64;
    assert!(
        garbage.refused(Code::Unauthenticated) <= refusal_cap,
        "{garbage:?}"
    );
    assert!(garbage.refused(Code::ResourceExhausted) > 0, "{garbage:?}");
    // Every refusal is counted though few are logged.
    let refused_total: u64 = [&garbage, &valid, &renewals]
        .iter()
        .map(|t| t.refused.values().sum::<u64>())
        .sum();
    assert!(
        counted >= refused_total as f64,
        "{counted} < {refused_total}"
    );
    // The bystander's renewals all succeeded.
    assert!(bystander.len() >= 5, "{bystander:?}");
    assert!(bystander.iter().all(|(_, e)| e.is_none()), "{bystander:?}");
    // Memory, record and log stay bounded.
    assert!(
        rss_after < rss_before * 2 + 20_000,
        "{rss_before} -> {rss_after} kB"
    );
    let issued = valid.ok + renewals.ok + bystander.len() as u64;
    assert!(
        record_after - record_before <= issued * 1024,
        "record grew {} bytes for {issued} certificates",
        record_after - record_before
    );
    assert!(
        (lines as f64 / secs) < 10.0,
        "{lines} log lines in {secs:.1}s"
    );
}
