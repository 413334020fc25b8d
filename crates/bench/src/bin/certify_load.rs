//! Drives `Certify` from many concurrent clients and prints one line of
//! results: requests/s, p50, p99, errors. Used by bench/certify.sh.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use linkerd2_proxy_api::identity::CertifyRequest;
use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use rcgen::{CertificateParams, DnType, KeyPair, SanType};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// A new TCP + TLS connection for every request
    New,
    /// One connection per client, reused
    Reuse,
}

#[derive(Parser)]
struct Args {
    #[arg(long)]
    addr: String,
    #[arg(long)]
    anchors: std::path::PathBuf,
    #[arg(long)]
    token_file: std::path::PathBuf,
    #[arg(
        long,
        default_value = "web.demo.serviceaccount.identity.weft.cluster.local"
    )]
    identity: String,
    #[arg(
        long,
        default_value = "weft-identity.weft.serviceaccount.identity.weft.cluster.local"
    )]
    server_name: String,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, value_enum)]
    mode: Mode,
    /// TLS 1.3 cipher suites offered, most preferred first (default: the provider's)
    #[arg(long)]
    tls_cipher_suites: Option<String>,
    /// Key exchange groups offered, most preferred first (default: the provider's, hybrid post-quantum first)
    #[arg(long)]
    tls_key_exchange: Option<String>,
}

async fn connect(a: &Args, anchors: &str) -> anyhow::Result<IdentityClient<Channel>> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(anchors))
        .domain_name(a.server_name.clone());
    let ch = Endpoint::from_shared(format!("https://{}", a.addr))?
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(IdentityClient::new(ch))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let mut tls = pki::mesh_tls::MeshTls::default();
    if let Some(list) = &args.tls_cipher_suites {
        tls = tls.with_cipher_suites(list)?;
    }
    if let Some(list) = &args.tls_key_exchange {
        tls = tls.with_key_exchange(list)?;
    }
    // tonic's client takes the process's provider.
    let _ = Arc::unwrap_or_clone(tls.provider()).install_default();
    let anchors = Arc::new(std::fs::read_to_string(&args.anchors)?);
    let token = std::fs::read_to_string(&args.token_file)?
        .trim()
        .as_bytes()
        .to_vec();
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, args.identity.clone());
    p.subject_alt_names = vec![SanType::DnsName(args.identity.clone().try_into()?)];
    let csr = p.serialize_request(&key)?.der().to_vec();
    let req = CertifyRequest {
        identity: args.identity.clone(),
        token,
        certificate_signing_request: csr,
    };
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (args, anchors, req) = (args.clone(), anchors.clone(), req.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut first_error = None;
            let mut reused = None;
            while Instant::now() < end {
                let t = Instant::now();
                let client = match (args.mode, &reused) {
                    (Mode::Reuse, Some(c)) => Ok(IdentityClient::clone(c)),
                    _ => connect(&args, &anchors).await,
                };
                let done = match client {
                    Ok(mut c) => {
                        let r = c.certify(req.clone()).await.map_err(|s| {
                            format!("Certify answered {:?}: {}", s.code(), s.message())
                        });
                        if matches!(args.mode, Mode::Reuse) {
                            reused = Some(c);
                        }
                        r.map(drop)
                    }
                    Err(e) => Err(format!("connect: {e:#}")),
                };
                match done {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (lat, errors, first_error)
        }));
    }
    let start = Instant::now();
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        let (l, e, first) = t.await?;
        lat.extend(l);
        errors += e;
        if let Some(first) = first {
            first_error.get_or_insert(first);
        }
    }
    if let Some(e) = first_error {
        eprintln!("certify_load: {errors} requests failed; the first: {e}");
    }
    let secs = start.elapsed().as_secs_f64().max(args.seconds as f64);
    lat.sort();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "ok={} errors={} rate={:.0} p50_ms={:.2} p99_ms={:.2}",
        lat.len(),
        errors,
        lat.len() as f64 / secs,
        pct(0.50).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0
    );
    Ok(())
}
