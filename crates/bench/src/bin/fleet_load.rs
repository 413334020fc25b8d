//! Attaches N simulated proxies to a control plane, each as a weft proxy
//! holds it: one mTLS connection to the destination address carrying the
//! `weft.mesh.v1` stream, one `Destination.Get` watch and one `WatchPort`
//! (or, given a different policy address, a second connection for the
//! `WatchPort`, as Linkerd's proxy holds them). Then measures what the operator
//! waits for: the control plane's memory per attached proxy, how long a
//! new trust bundle and a policy change take to reach all of them, and how
//! fast a fleet-wide renew-now is paced. Used by bench/fleet.sh, which
//! prints the figures it reports as `key=value` lines.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use linkerd2_proxy_api::destination::GetDestination;
use linkerd2_proxy_api::destination::destination_client::DestinationClient;
use linkerd2_proxy_api::identity::CertifyRequest;
use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use linkerd2_proxy_api::inbound::PortSpec;
use linkerd2_proxy_api::inbound::inbound_server_policies_client::InboundServerPoliciesClient;
use mesh_api::v1::mesh_client::MeshClient;
use mesh_api::v1::{BundleVersion, ProxyReport, control_message};
use rcgen::{CertificateParams, DnType, KeyPair, SanType};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(Parser, Clone)]
struct Args {
    #[arg(long)]
    identity_addr: String,
    #[arg(long)]
    destination_addr: String,
    #[arg(long)]
    policy_addr: String,
    /// The admin listener (POST /renew-now)
    #[arg(long)]
    admin_addr: String,
    /// The control plane's trust anchors file; the bundle phase rewrites it
    /// with one more anchor
    #[arg(long)]
    anchors: PathBuf,
    #[arg(long)]
    token_file: PathBuf,
    /// The resource file the policy phase rewrites
    #[arg(long)]
    policy_file: PathBuf,
    /// The control plane's pid (its RSS is read from /proc)
    #[arg(long)]
    cp_pid: u32,
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// The backend workload's app port (the watched port and destination)
    #[arg(long)]
    port: u16,
    /// How long the renew-now phase counts proxies asked (it ends sooner
    /// once every proxy was asked)
    #[arg(long, default_value_t = 20)]
    renew_seconds: u64,
}

const IDENTITY: &str = "backend.demo.serviceaccount.identity.weft.cluster.local";
const CP_NAME: &str = "weft-identity.weft.serviceaccount.identity.weft.cluster.local";

/// What the simulated fleet has received, per proxy.
struct Seen {
    bundle_generation: Vec<AtomicU64>,
    policy_updates: Vec<AtomicU64>,
    dst_updates: Vec<AtomicU64>,
    /// Whether each proxy got a `RenewNow`; `renews` counts them.
    renew_asked: Vec<AtomicBool>,
    renews: AtomicU64,
    attached: AtomicUsize,
    failed: AtomicUsize,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn certify(a: &Args, anchors: &str) -> anyhow::Result<(String, String)> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(anchors))
        .domain_name(CP_NAME);
    let ch = Endpoint::from_shared(format!("https://{}", a.identity_addr))?
        .tls_config(tls)?
        .connect()
        .await?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, IDENTITY);
    p.subject_alt_names = vec![SanType::DnsName(IDENTITY.try_into()?)];
    let csr = p.serialize_request(&key)?.der().to_vec();
    let token = std::fs::read_to_string(&a.token_file)?
        .trim()
        .as_bytes()
        .to_vec();
    let r = IdentityClient::new(ch)
        .certify(CertifyRequest {
            identity: IDENTITY.into(),
            token,
            certificate_signing_request: csr,
        })
        .await?
        .into_inner();
    let mut chain = vec![rustls::pki_types::CertificateDer::from(r.leaf_certificate)];
    chain.extend(
        r.intermediate_certificates
            .into_iter()
            .map(rustls::pki_types::CertificateDer::from),
    );
    Ok((pki::cert::to_pem(&chain), key.serialize_pem()))
}

/// One simulated proxy: one or two connections, three streams, forever.
async fn proxy(
    i: usize,
    a: Arc<Args>,
    tls: ClientTlsConfig,
    seen: Arc<Seen>,
) -> anyhow::Result<()> {
    let connect = |addr: &str| {
        let tls = tls.clone();
        let uri = format!("https://{addr}");
        async move {
            anyhow::Ok(
                Endpoint::from_shared(uri)?
                    .tls_config(tls)?
                    .connect_timeout(Duration::from_secs(30))
                    .connect()
                    .await?,
            )
        }
    };
    let dst: Channel = connect(&a.destination_addr).await?;
    // One address for both: one connection, as a weft proxy holds it.
    let pol: Channel = if a.policy_addr == a.destination_addr {
        dst.clone()
    } else {
        connect(&a.policy_addr).await?
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ProxyReport {
        identity: IDENTITY.into(),
        workload: "demo/backend".into(),
        ..Default::default()
    })
    .await?;
    let mut mesh = MeshClient::new(dst.clone())
        .attach(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut get = DestinationClient::new(dst)
        .get(GetDestination {
            scheme: "k8s.io".into(),
            path: format!("127.0.0.1:{}", a.port),
            context_token: String::new(),
        })
        .await?
        .into_inner();
    let mut watch = InboundServerPoliciesClient::new(pol)
        .watch_port(PortSpec {
            workload: r#"{"ns":"demo","external_workload":"backend"}"#.into(),
            port: u32::from(a.port),
        })
        .await?
        .into_inner();
    seen.attached.fetch_add(1, Ordering::Relaxed);
    loop {
        tokio::select! {
            m = mesh.message() => match m?.and_then(|m| m.kind) {
                Some(control_message::Kind::Bundle(b)) => {
                    let v = b.version.unwrap_or_default();
                    seen.bundle_generation[i].store(v.generation, Ordering::Relaxed);
                    // Acknowledge as a proxy does: the report names it.
                    let _ = tx.try_send(ProxyReport {
                        identity: IDENTITY.into(),
                        workload: "demo/backend".into(),
                        bundle: Some(BundleVersion { generation: v.generation, sha256: v.sha256 }),
                        ..Default::default()
                    });
                }
                // Counted once per proxy: a simulated proxy never renews,
                // so the control plane asks it again after a while.
                Some(control_message::Kind::RenewNow(_))
                    if !seen.renew_asked[i].swap(true, Ordering::Relaxed) =>
                {
                    seen.renews.fetch_add(1, Ordering::Relaxed);
                }
                Some(control_message::Kind::RenewNow(_)) => {}
                None => {}
            },
            u = get.message() => {
                u?;
                seen.dst_updates[i].fetch_add(1, Ordering::Relaxed);
            }
            u = watch.message() => {
                u?;
                seen.policy_updates[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Waits until `done` holds for every proxy; the time it took and how many
/// made it within `limit`.
async fn until_all(n: usize, limit: Duration, done: impl Fn(usize) -> bool) -> (Duration, usize) {
    let t = Instant::now();
    loop {
        let count = (0..n).filter(|&i| done(i)).count();
        if count == n || t.elapsed() > limit {
            return (t.elapsed(), count);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn post(addr: &str, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nx-weft-operator: 1\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

async fn attach_all(a: &Arc<Args>, seen: &Arc<Seen>, tls: &ClientTlsConfig) -> Duration {
    let t = Instant::now();
    // Batches keep the connect storm inside the listener's accept backlog.
    for start in (0..a.proxies).step_by(200) {
        for i in start..(start + 200).min(a.proxies) {
            let (a2, tls, seen2) = (a.clone(), tls.clone(), seen.clone());
            tokio::spawn(async move {
                if let Err(e) = proxy(i, a2, tls, seen2.clone()).await {
                    seen2.failed.fetch_add(1, Ordering::Relaxed);
                    if seen2.failed.load(Ordering::Relaxed) <= 3 {
                        eprintln!("proxy {i}: {e:#}");
                    }
                }
            });
        }
        let want = (start + 200).min(a.proxies);
        while seen.attached.load(Ordering::Relaxed) + seen.failed.load(Ordering::Relaxed) < want {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    t.elapsed()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let a = Arc::new(Args::parse());
    let n = a.proxies;
    let anchors = std::fs::read_to_string(&a.anchors)?;
    let (chain, key) = certify(&a, &anchors).await?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&anchors))
        .domain_name(CP_NAME)
        .identity(Identity::from_pem(chain, key));
    let seen = Arc::new(Seen {
        bundle_generation: (0..n).map(|_| AtomicU64::new(0)).collect(),
        policy_updates: (0..n).map(|_| AtomicU64::new(0)).collect(),
        dst_updates: (0..n).map(|_| AtomicU64::new(0)).collect(),
        renew_asked: (0..n).map(|_| AtomicBool::new(false)).collect(),
        renews: AtomicU64::new(0),
        attached: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
    });
    let rss_before = rss_kib(a.cp_pid);
    let attach = attach_all(&a, &seen, &tls).await;
    let attached = seen.attached.load(Ordering::Relaxed);
    // Everyone holds its first bundle, policy and endpoints.
    let limit = Duration::from_secs(60);
    let s = seen.clone();
    until_all(n, limit, |i| {
        s.bundle_generation[i].load(Ordering::Relaxed) > 0
            && s.policy_updates[i].load(Ordering::Relaxed) > 0
            && s.dst_updates[i].load(Ordering::Relaxed) > 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_kib(a.cp_pid);
    println!(
        "proxies={n} attached={attached} failed={}",
        seen.failed.load(Ordering::Relaxed)
    );
    println!("attach_s={:.1}", attach.as_secs_f64());
    println!("cp_rss_before_mib={:.1}", rss_before as f64 / 1024.0);
    println!("cp_rss_after_mib={:.1}", rss_after as f64 / 1024.0);
    println!(
        "cp_rss_per_proxy_kib={:.1}",
        rss_after.saturating_sub(rss_before) as f64 / attached.max(1) as f64
    );

    // A new anchor beside the old one: the bundle's next generation.
    let g0 = seen.bundle_generation[0].load(Ordering::Relaxed);
    let now = time::OffsetDateTime::now_utc();
    let extra = pki::create::create(
        &pki::create::NewCert {
            subject: "root-2.linkerd.cluster.local".into(),
            profile: pki::create::Profile::RootCa,
            sans: vec![],
            not_before: now,
            not_after: now + time::Duration::days(365),
            key: pki::create::KeySpec::EcdsaP256,
        },
        None,
    )?;
    let bundle = format!(
        "{}{}",
        anchors,
        pki::cert::to_pem(std::slice::from_ref(&extra.cert))
    );
    let tmp = a.anchors.with_extension("new");
    std::fs::write(&tmp, bundle)?;
    std::fs::rename(&tmp, &a.anchors)?;
    let s = seen.clone();
    let (took, got) = until_all(n, limit, |i| {
        s.bundle_generation[i].load(Ordering::Relaxed) > g0
    })
    .await;
    println!(
        "bundle_all_s={:.2} bundle_reached={got}",
        took.as_secs_f64()
    );

    // A policy change every proxy's watched port is under.
    let before: Vec<u64> = seen
        .policy_updates
        .iter()
        .map(|u| u.load(Ordering::Relaxed))
        .collect();
    let mut policy = std::fs::read_to_string(&a.policy_file)?;
    policy.push_str("---\napiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata:\n  name: bench-extra\n  namespace: demo\nspec:\n  identities:\n  - \"bench.demo.serviceaccount.identity.weft.cluster.local\"\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: bench-extra\n  namespace: demo\nspec:\n  targetRef:\n    group: policy.linkerd.io\n    kind: Server\n    name: backend-server\n  requiredAuthenticationRefs:\n  - name: bench-extra\n    kind: MeshTLSAuthentication\n    group: policy.linkerd.io\n");
    let tmp = a.policy_file.with_extension("new");
    std::fs::write(&tmp, policy)?;
    std::fs::rename(&tmp, &a.policy_file)?;
    let s = seen.clone();
    let (took, got) = until_all(n, limit, |i| {
        s.policy_updates[i].load(Ordering::Relaxed) > before[i]
    })
    .await;
    println!(
        "policy_all_s={:.2} policy_reached={got}",
        took.as_secs_f64()
    );

    // Renew-now: paced by the control plane; count arrivals for a while.
    let answer = post(&a.admin_addr, "/renew-now")?;
    let t = Instant::now();
    let limit = Duration::from_secs(a.renew_seconds);
    while t.elapsed() < limit && seen.renews.load(Ordering::Relaxed) < n as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let renews = seen.renews.load(Ordering::Relaxed);
    let secs = t.elapsed().as_secs_f64();
    // A small fleet is asked within the first burst: no pace to state.
    let rate = if secs < 0.1 {
        "all-at-once".to_string()
    } else {
        format!("{:.1}", renews as f64 / secs)
    };
    println!(
        "renew_asked={} renew_received={renews} renew_s={secs:.1} renew_rate={rate}",
        answer
            .split("\"asked\":")
            .nth(1)
            .map(|r| r
                .trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap_or(""))
            .unwrap_or("?"),
    );
    println!("cp_rss_end_mib={:.1}", rss_kib(a.cp_pid) as f64 / 1024.0);
    Ok(())
}
