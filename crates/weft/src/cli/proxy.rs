//! `weft proxy`: flags and `WEFT_PROXY_*` environment into one typed config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use proxy::{OutboundMapping, Plaintext, ProxyConfig};

use super::duration::parse_duration;
use super::{CmdResult, Failure};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PlaintextArg {
    Allow,
    Deny,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The workload this proxy fronts: namespace/name of an ExternalWorkload, or a pod as {"ns":NAMESPACE,"pod":NAME}
    #[arg(long, env = "WEFT_PROXY_WORKLOAD")]
    pub workload: String,
    /// This workload's identity; default: from the token's service account
    #[arg(long, env = "WEFT_PROXY_IDENTITY")]
    pub identity: Option<String>,
    /// Join token for the first certificate (read again on every try)
    #[arg(long, env = "WEFT_PROXY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Trust anchors (bootstrap bundle), also used to verify the control plane
    #[arg(long, env = "WEFT_PROXY_TRUST_ANCHORS_FILE")]
    pub trust_anchors_file: PathBuf,
    /// Control plane host, or several replicas' hosts comma-separated (each a DNS name, resolved at each connect and maybe to several addresses, or an IP); identity on :8080, destination and policy on :8086 (one connection) unless given below. Each connection goes to one replica at random, another when it fails or serves an older bundle. TLS still expects --control-plane-identity, not this name
    #[arg(long, env = "WEFT_PROXY_CONTROL_PLANE", default_value = "127.0.0.1")]
    pub control_plane: String,
    /// Identity service address, host:port[,host:port...] for replicas (default: --control-plane:8080)
    #[arg(long, env = "WEFT_PROXY_IDENTITY_ADDR", value_parser = host_ports)]
    pub identity_addr: Option<String>,
    /// Destination service address, host:port[,host:port...] for replicas (default: --control-plane:8086)
    #[arg(long, env = "WEFT_PROXY_DESTINATION_ADDR", value_parser = host_ports)]
    pub destination_addr: Option<String>,
    /// Inbound policy service address, host:port[,host:port...] for replicas (default: the destination address, so one connection carries both; weft's control plane serves policy on both its destination and policy ports)
    #[arg(long, env = "WEFT_PROXY_POLICY_ADDR", value_parser = host_ports)]
    pub policy_addr: Option<String>,
    /// The control plane's identity; default: weft-identity in this workload's mesh
    #[arg(long, env = "WEFT_PROXY_CONTROL_PLANE_IDENTITY")]
    pub control_plane_identity: Option<String>,
    /// Inbound listener: mTLS from other proxies (and redirected traffic)
    #[arg(long, env = "WEFT_PROXY_INBOUND_ADDR", default_value = "0.0.0.0:4143")]
    pub inbound_addr: SocketAddr,
    /// Admin listener: /live /ready /metrics, and TLS with the live chain
    #[arg(long, env = "WEFT_PROXY_ADMIN_ADDR", default_value = "0.0.0.0:4191")]
    pub admin_addr: SocketAddr,
    /// Tap listener: Tap.Observe over mTLS, for the control plane's identity only (`weft tap`)
    #[arg(long, env = "WEFT_PROXY_TAP_ADDR", default_value = "0.0.0.0:4190")]
    pub tap_addr: SocketAddr,
    /// Transparent outbound listener for connections redirected by `weft init`; "off" to disable
    #[arg(
        long,
        env = "WEFT_PROXY_OUTBOUND_ADDR",
        default_value = "127.0.0.1:4140"
    )]
    pub outbound_addr: String,
    /// Ports mode: LISTEN=NAMESPACE/NAME:PORT, e.g. 127.0.0.1:7001=demo/backend:8080 (repeatable)
    #[arg(long = "outbound", env = "WEFT_PROXY_OUTBOUND", value_delimiter = ',')]
    pub outbound: Vec<OutboundMapping>,
    /// How long to wait for a protocol to show before treating a connection as opaque
    #[arg(long, env = "WEFT_PROXY_DETECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub detect_timeout: Duration,
    /// How long a new destination or port waits for the control plane's first answer
    #[arg(long, env = "WEFT_PROXY_DISCOVERY_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub discovery_timeout: Duration,
    /// Floor for the time between certificate renewals
    #[arg(long, env = "WEFT_PROXY_IDENTITY_MIN_REFRESH", default_value = "10s", value_parser = parse_duration)]
    pub identity_min_refresh: Duration,
    /// On SIGTERM, how long to let connections in flight finish
    #[arg(long, env = "WEFT_PROXY_SHUTDOWN_GRACE_PERIOD", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace_period: Duration,
    /// Whether outbound connections to unmeshed destinations may go in plaintext
    #[arg(
        long,
        env = "WEFT_PROXY_OUTBOUND_PLAINTEXT",
        value_enum,
        default_value = "allow"
    )]
    pub outbound_plaintext: PlaintextArg,
    /// Threads that run the proxy (1: one core, as a sidecar runs, like Linkerd's proxy cores); at most 64
    #[arg(long, env = "WEFT_PROXY_WORKERS", default_value = "1", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// TLS 1.3 cipher suites between proxies, most preferred first, e.g. TLS_AES_128_GCM_SHA256 (default: TLS_AES_256_GCM_SHA384,TLS_AES_128_GCM_SHA256,TLS_CHACHA20_POLY1305_SHA256). Only these are offered and accepted: every proxy that talks to this one must share one
    #[arg(long, env = "WEFT_PROXY_TLS_CIPHER_SUITES")]
    pub tls_cipher_suites: Option<String>,
    /// Key exchange groups between proxies, most preferred first, e.g. X25519 (default: X25519MLKEM768,X25519,secp256r1,secp384r1: hybrid post-quantum first). Only these are offered and accepted: every proxy that talks to this one must share one
    #[arg(long, env = "WEFT_PROXY_TLS_KEY_EXCHANGE")]
    pub tls_key_exchange: Option<String>,
    #[command(flatten)]
    pub admin_limits: super::AdminLimitArgs,
    #[command(flatten)]
    pub limits: super::ProxyLimitArgs,
}

impl ProxyArgs {
    pub fn into_config(self) -> Result<ProxyConfig, Failure> {
        let workload: proxy::WorkloadRef = self
            .workload
            .parse()
            .map_err(|e| Failure::input(format!("--workload {e}")))?;
        let ns = workload.namespace.as_str();
        let identity: pki::Identity = match (&self.identity, &self.token_file) {
            (Some(id), _) => id
                .parse()
                .map_err(|e| Failure::input(format!("--identity: {e}")))?,
            (None, Some(tf)) => {
                let tok = std::fs::read_to_string(tf)
                    .map_err(|e| Failure::input(format!("{}: cannot read: {e}", tf.display())))?;
                let (tns, sa) = identity::token::unverified_service_account(&tok).ok_or_else(|| {
                    Failure::input(format!("{}: not a weft join token; create one with `weft token create`, or pass --identity", tf.display()))
                })?;
                pki::Identity::new(
                    &sa,
                    &tns,
                    pki::identity::DEFAULT_CONTROL_PLANE_NS,
                    pki::identity::DEFAULT_TRUST_DOMAIN,
                )
                .map_err(Failure::input)?
            }
            (None, None) => {
                return Err(Failure::input(
                    "pass --identity or --token-file (whose service account names the identity)",
                ));
            }
        };
        if identity.namespace() != ns {
            return Err(Failure::input(format!(
                "identity {identity} is in namespace {}, but --workload is in {ns}",
                identity.namespace()
            )));
        }
        let control_plane_identity = match &self.control_plane_identity {
            Some(n) => n
                .parse()
                .map_err(|e| Failure::input(format!("--control-plane-identity: {e}")))?,
            None => {
                pki::Identity::control_plane(identity.control_plane_ns(), identity.trust_domain())
                    .map_err(Failure::input)?
            }
        };
        let (inbound_limits, outbound_limits) = self.limits.limits()?;
        let mut mesh_tls = pki::mesh_tls::MeshTls::default();
        if let Some(list) = &self.tls_cipher_suites {
            mesh_tls = mesh_tls
                .with_cipher_suites(list)
                .map_err(|e| Failure::input(format!("--tls-cipher-suites: {e}")))?;
        }
        if let Some(list) = &self.tls_key_exchange {
            mesh_tls = mesh_tls
                .with_key_exchange(list)
                .map_err(|e| Failure::input(format!("--tls-key-exchange: {e}")))?;
        }
        let on_control_plane = |port| {
            let each: Vec<String> = self
                .control_plane
                .split(',')
                .map(|h| super::join_host_port(h.trim(), port))
                .collect();
            host_ports(&each.join(",")).map_err(|e| Failure::input(format!("--control-plane: {e}")))
        };
        let destination_addr = self
            .destination_addr
            .map_or_else(|| on_control_plane(8086), Ok)?;
        Ok(ProxyConfig {
            workload,
            identity,
            token_file: self.token_file,
            identity_addr: self
                .identity_addr
                .map_or_else(|| on_control_plane(8080), Ok)?,
            policy_addr: match self.policy_addr {
                Some(a) => a,
                None => destination_addr.clone(),
            },
            destination_addr,
            control_plane_identity,
            anchors_file: self.trust_anchors_file,
            inbound_addr: self.inbound_addr,
            admin_addr: self.admin_addr,
            tap_addr: self.tap_addr,
            outbound_addr: match self.outbound_addr.as_str() {
                "off" | "none" | "" => None,
                a => Some(a.parse().map_err(|_| {
                    Failure::input(format!(
                        "--outbound-addr {a:?}: expected an address like 127.0.0.1:4140, or off"
                    ))
                })?),
            },
            outbound: self.outbound,
            detect_timeout: self.detect_timeout,
            discovery_timeout: self.discovery_timeout,
            min_refresh: self.identity_min_refresh,
            shutdown_grace: self.shutdown_grace_period,
            admin_limits: self.admin_limits.limits()?,
            inbound_limits,
            outbound_limits,
            mesh_tls,
            plaintext: match self.outbound_plaintext {
                PlaintextArg::Allow => Plaintext::Allow,
                PlaintextArg::Deny => Plaintext::Deny,
            },
        })
    }
}

/// A control-plane address: one `host:port`, or several replicas'
/// comma-separated.
fn host_ports(s: &str) -> Result<String, String> {
    let entries = proxy::replicas::entries(s);
    if entries.is_empty() {
        return Err(format!(
            "{s:?} names no address; expected host:port[,host:port...], e.g. 10.0.0.1:8086,10.0.0.2:8086"
        ));
    }
    for e in &entries {
        super::host_port(e)?;
    }
    Ok(entries.join(","))
}

/// The runtime for `workers` threads: one runs everything on the calling
/// thread (no cross-thread wake-ups, the least memory); more share the
/// connections across that many workers.
fn runtime(workers: u16) -> std::io::Result<tokio::runtime::Runtime> {
    match workers {
        0 | 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build(),
    }
}

pub fn run(args: ProxyArgs) -> CmdResult {
    let workers = args.workers;
    let cfg = args.into_config()?;
    super::init_logging();
    bounds::raise_nofile();
    let rt =
        runtime(workers).map_err(|e| Failure::fatal(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async move {
        eprintln!("weft proxy starting with:\n{cfg}");
        eprintln!("  workers                  {workers}");
        let (started, serve) = proxy::start(cfg, super::shutdown_signal())
            .await
            .map_err(Failure::fatal)?;
        eprintln!("  inbound listening on     {}", started.inbound_addr);
        eprintln!("  admin listening on       {}", started.admin_addr);
        eprintln!("  tap listening on         {}", started.tap_addr);
        if let Some(a) = started.outbound_addr {
            eprintln!("  outbound listening on    {a} (transparent)");
        }
        for (a, t) in &started.outbound_addrs {
            eprintln!("  outbound listening on    {a} -> {t}");
        }
        serve.await;
        eprintln!("weft proxy stopped");
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::host_ports;

    #[test]
    fn control_plane_addresses_are_one_or_several_host_ports() {
        assert_eq!(host_ports("10.0.0.1:8086").unwrap(), "10.0.0.1:8086");
        assert_eq!(
            host_ports(" cp-a.weft:8086, 10.0.0.2:18086 ,[::1]:8086").unwrap(),
            "cp-a.weft:8086,10.0.0.2:18086,[::1]:8086"
        );
        for bad in [
            "",
            " , ",
            "10.0.0.1:8086,localhost",
            "a:1,bad name!:2",
            "::1:8086",
        ] {
            let e = host_ports(bad).unwrap_err();
            assert!(e.contains("host:port"), "{bad}: {e}");
        }
    }
}
