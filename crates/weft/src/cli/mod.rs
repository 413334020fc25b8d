//! The `weft` command line: one module per command.

pub mod admin_target;
pub mod certs;
pub mod check;
mod check_cluster;
mod check_facts;
mod check_kube;
mod check_plane;
mod check_tunnel;
pub mod control_plane;
pub mod demo;
pub mod diagnostics;
pub mod duration;
pub mod edges;
pub mod identity;
pub mod init;
pub mod inject;
pub mod install;
pub mod install_cluster;
pub mod install_manifests;
pub mod manifests;
pub mod operator_tls;
pub mod policy;
pub mod probes;
pub mod proxy;
pub mod request;
pub mod rotate;
pub mod tap;
pub mod token;
pub mod webhook;

use std::time::Duration;

use clap::{Args, ValueEnum};

/// Limits of an admin listener (probes, metrics, operator endpoints): no
/// client holding connections open may starve it or the rest of the process.
#[derive(Debug, Clone, Args)]
pub struct AdminLimitArgs {
    /// Admin connections open at once; more are closed at accept (and counted)
    #[arg(long, env = "WEFT_ADMIN_MAX_CONNECTIONS", default_value_t = 100)]
    pub admin_max_connections: usize,
    /// An admin connection that has not finished its TLS handshake by then is closed
    #[arg(long, env = "WEFT_ADMIN_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration::parse_duration)]
    pub admin_handshake_timeout: std::time::Duration,
    /// An admin connection that moves no bytes for this long is closed
    #[arg(long, env = "WEFT_ADMIN_IDLE_TIMEOUT", default_value = "30s", value_parser = duration::parse_duration)]
    pub admin_idle_timeout: std::time::Duration,
}

impl AdminLimitArgs {
    /// The defaults above, for processes started without a command line (the demo).
    pub fn defaults() -> bounds::Limits {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            limits: AdminLimitArgs,
        }
        let d: Defaults = clap::Parser::parse_from(["weft"]);
        bounds::Limits {
            max_connections: d.limits.admin_max_connections,
            handshake_timeout: d.limits.admin_handshake_timeout,
            idle_timeout: d.limits.admin_idle_timeout,
        }
    }

    pub fn limits(&self) -> Result<bounds::Limits, Failure> {
        if self.admin_max_connections == 0 {
            return Err(Failure::input("--admin-max-connections must be at least 1"));
        }
        if self.admin_idle_timeout.is_zero() || self.admin_handshake_timeout.is_zero() {
            return Err(Failure::input(
                "--admin-handshake-timeout and --admin-idle-timeout must be more than 0",
            ));
        }
        Ok(bounds::Limits {
            max_connections: self.admin_max_connections,
            handshake_timeout: self.admin_handshake_timeout,
            idle_timeout: self.admin_idle_timeout,
        })
    }
}

/// Limits of the control plane's gRPC listeners (identity, destination,
/// policy): idle or unauthenticated clients cannot starve them or each other.
#[derive(Debug, Clone, Args)]
pub struct GrpcLimitArgs {
    /// Connections open at once on each gRPC listener; more are closed at accept (and counted). Default: a quarter each of the open-file limit, keeping 1,024 descriptors in reserve
    #[arg(long, env = "WEFT_GRPC_MAX_CONNECTIONS")]
    pub grpc_max_connections: Option<usize>,
    /// A gRPC connection that has not finished its TLS handshake by then is closed
    #[arg(long, env = "WEFT_GRPC_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration::parse_duration)]
    pub grpc_handshake_timeout: std::time::Duration,
    /// A gRPC connection with no stream open for this long is closed (open watch streams keep it open however silent; keepalive PINGs find dead peers)
    #[arg(long, env = "WEFT_GRPC_IDLE_TIMEOUT", default_value = "60s", value_parser = duration::parse_duration)]
    pub grpc_idle_timeout: std::time::Duration,
    /// Streams open at once on an identity connection without a client certificate
    #[arg(long, env = "WEFT_GRPC_ANONYMOUS_MAX_STREAMS", default_value_t = 16)]
    pub grpc_anonymous_max_streams: u32,
}

impl GrpcLimitArgs {
    /// The defaults above, for processes started without a command line (the demo).
    pub fn defaults() -> Result<::control_plane::grpc_bounds::GrpcLimits, Failure> {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            limits: GrpcLimitArgs,
        }
        let d: Defaults = clap::Parser::parse_from(["weft"]);
        d.limits.limits()
    }

    pub fn limits(&self) -> Result<::control_plane::grpc_bounds::GrpcLimits, Failure> {
        let max_connections = match self.grpc_max_connections {
            Some(0) => return Err(Failure::input("--grpc-max-connections must be at least 1")),
            Some(n) => n,
            // Three listeners share three quarters; the rest is for files,
            // the admin listener and outgoing connections.
            None => bounds::share_of(bounds::raise_nofile(), 0.25, 1024, 64),
        };
        if self.grpc_idle_timeout.is_zero() || self.grpc_handshake_timeout.is_zero() {
            return Err(Failure::input(
                "--grpc-handshake-timeout and --grpc-idle-timeout must be more than 0",
            ));
        }
        if self.grpc_anonymous_max_streams == 0 {
            return Err(Failure::input(
                "--grpc-anonymous-max-streams must be at least 1: a first Certify needs a stream",
            ));
        }
        Ok(::control_plane::grpc_bounds::GrpcLimits {
            listener: bounds::Limits {
                max_connections,
                handshake_timeout: self.grpc_handshake_timeout,
                idle_timeout: self.grpc_idle_timeout,
            },
            anonymous_streams: self.grpc_anonymous_max_streams,
        })
    }
}

/// Limits of the proxy's data-plane listeners (inbound, and the outbound
/// listeners together): no client can starve them, each other, or the admin
/// listener. Each forwarded connection holds two descriptors.
#[derive(Debug, Clone, Args)]
pub struct ProxyLimitArgs {
    /// Inbound connections open at once; more are closed at accept (and counted). Default: a quarter of the open-file limit, keeping 1,024 descriptors in reserve
    #[arg(long, env = "WEFT_PROXY_INBOUND_MAX_CONNECTIONS")]
    pub inbound_max_connections: Option<usize>,
    /// An inbound connection that has not sent its first bytes, finished the mTLS handshake and sent its transport header by then is closed
    #[arg(long, env = "WEFT_PROXY_INBOUND_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration::parse_duration)]
    pub inbound_handshake_timeout: std::time::Duration,
    /// Outbound connections open at once, over all outbound listeners; more are closed at accept (and counted). Default: a fifth of the open-file limit, keeping 1,024 descriptors in reserve
    #[arg(long, env = "WEFT_PROXY_OUTBOUND_MAX_CONNECTIONS")]
    pub outbound_max_connections: Option<usize>,
    /// An outbound connection not through to its destination (discovery, connect, mTLS, transport header) by then is closed
    #[arg(long, env = "WEFT_PROXY_OUTBOUND_CONNECT_TIMEOUT", default_value = "15s", value_parser = duration::parse_duration)]
    pub outbound_connect_timeout: std::time::Duration,
    /// A forwarded connection (inbound or outbound) that moves no bytes either way for this long is closed; one that keeps moving bytes is never cut
    #[arg(long, env = "WEFT_PROXY_STREAM_IDLE_TIMEOUT", default_value = "1h", value_parser = duration::parse_duration)]
    pub stream_idle_timeout: std::time::Duration,
}

impl ProxyLimitArgs {
    /// The defaults above, for processes started without a command line (the demo).
    pub fn defaults() -> Result<(bounds::Limits, bounds::Limits), Failure> {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            limits: ProxyLimitArgs,
        }
        let d: Defaults = clap::Parser::parse_from(["weft"]);
        d.limits.limits()
    }

    /// The inbound and the outbound limits.
    pub fn limits(&self) -> Result<(bounds::Limits, bounds::Limits), Failure> {
        let cap = |flag: &str, given: Option<usize>, fraction: f64| match given {
            Some(0) => Err(Failure::input(format!("{flag} must be at least 1"))),
            Some(n) => Ok(n),
            None => Ok(bounds::share_of(bounds::raise_nofile(), fraction, 1024, 64)),
        };
        let inbound = cap(
            "--inbound-max-connections",
            self.inbound_max_connections,
            0.25,
        )?;
        let outbound = cap(
            "--outbound-max-connections",
            self.outbound_max_connections,
            0.2,
        )?;
        if [
            self.inbound_handshake_timeout,
            self.outbound_connect_timeout,
            self.stream_idle_timeout,
        ]
        .iter()
        .any(Duration::is_zero)
        {
            return Err(Failure::input(
                "--inbound-handshake-timeout, --outbound-connect-timeout and --stream-idle-timeout must be more than 0",
            ));
        }
        Ok((
            bounds::Limits {
                max_connections: inbound,
                handshake_timeout: self.inbound_handshake_timeout,
                idle_timeout: self.stream_idle_timeout,
            },
            bounds::Limits {
                max_connections: outbound,
                handshake_timeout: self.outbound_connect_timeout,
                idle_timeout: self.stream_idle_timeout,
            },
        ))
    }
}

/// A `host:port` flag: the host a DNS name (resolved at each connect, so a
/// reconnect follows the name to wherever it points now) or an IP address
/// (IPv6 in brackets). Checked here so a typo fails at start, not at the
/// first connection.
pub fn host_port(s: &str) -> Result<String, String> {
    let expected = "expected host:port, e.g. weft-identity.weft.svc.cluster.local:8080, localhost:8080 or 10.0.0.1:8080";
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} has no :port; {expected}"))?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} in {s:?} is not a port (1-65535); {expected}"))?;
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.contains(':') && bare == host {
        return Err(format!(
            "{s:?}: expected host:port with an IPv6 address in brackets, as in [::1]:8080"
        ));
    }
    rustls::pki_types::ServerName::try_from(bare)
        .map_err(|_| format!("{host:?} in {s:?} is not a host name or IP address; {expected}"))?;
    Ok(s.to_string())
}

/// `host` (a name or an IP address) with `port`, IPv6 in brackets.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The addresses `addr` (`host:port`) resolves to now.
pub fn resolve(addr: &str) -> Result<Vec<std::net::SocketAddr>, String> {
    use std::net::ToSocketAddrs;
    match addr.to_socket_addrs() {
        Ok(a) => {
            let all: Vec<_> = a.collect();
            if all.is_empty() {
                Err(format!("{addr} resolves to no address"))
            } else {
                Ok(all)
            }
        }
        Err(e) => Err(format!("cannot resolve {addr}: {e}")),
    }
}

/// Output format shared by commands that print reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// A refusal from a command: printed as one line, with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    /// A verdict (e.g. "invalid: ...") goes to stdout; errors go to stderr.
    pub verdict: bool,
}

impl Failure {
    /// Bad input: files that cannot be read or used, wrong arguments.
    pub fn input(message: impl std::fmt::Display) -> Self {
        Self {
            code: 2,
            message: message.to_string(),
            verdict: false,
        }
    }
    /// The thing checked is not valid.
    pub fn invalid(message: impl std::fmt::Display) -> Self {
        Self {
            code: 1,
            message: message.to_string(),
            verdict: true,
        }
    }
    /// A failure to run (cannot bind, cannot start).
    pub fn fatal(message: impl std::fmt::Display) -> Self {
        Self {
            code: 1,
            message: message.to_string(),
            verdict: false,
        }
    }
}

pub type CmdResult = Result<(), Failure>;

/// A GET to an admin endpoint at `addr` (`host:port`, resolved now; each
/// address tried in turn): (status, body). Over TLS with the operator's
/// certificate when one was given (see [`operator_tls`]).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path)
}

/// A GET over plain HTTP whatever the operator flags say: for an admin
/// listener this process started itself on loopback (the demo).
pub fn plain_http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    request_over(None, addr, "GET", path)
}

/// One HTTP/1.0 request (GET, or a POST with no body, which carries a
/// header no browser form can send); the status and body, None when
/// nothing answered. The one client of every operator command: TLS to the
/// operator listener when `--operator-cert` is set, else plain HTTP.
pub fn http_request(addr: &str, method: &str, path: &str) -> Option<(u16, String)> {
    request_over(operator_tls::installed(), addr, method, path)
}

fn request_over(
    tls: Option<&operator_tls::OperatorTls>,
    addr: &str,
    method: &str,
    path: &str,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = resolve(addr).ok()?.into_iter().find_map(|a| {
        std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).ok()
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    let extra = if method == "GET" {
        ""
    } else {
        "Content-Length: 0\r\nX-Weft-Operator: 1\r\n"
    };
    // The address reached, not the name given: the admin listener answers
    // only requests addressed to it (no DNS-rebound names).
    let host = s.peer_addr().ok()?;
    let auth = tls
        .map(operator_tls::OperatorTls::auth_header)
        .unwrap_or_default();
    let request = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\n{auth}{extra}\r\n");
    let buf = match tls {
        Some(tls) => operator_tls::exchange(tls, s, request.as_bytes())?,
        None => {
            s.write_all(request.as_bytes()).ok()?;
            let (mut buf, mut chunk) = (Vec::new(), [0u8; 16 << 10]);
            // Complete at its Content-Length: a port-forward may keep the
            // stream open after the answer.
            let answered = loop {
                let n = s.read(&mut chunk).ok()?;
                buf.extend_from_slice(&chunk[..n]);
                // A TLS listener answers plain HTTP with an alert, then closes.
                if matches!(buf.first(), Some(0x15 | 0x16)) {
                    operator_tls::speaks_tls(addr);
                }
                if let Some(a) = check_tunnel::answer(&buf, n == 0) {
                    break a;
                }
                if n == 0 {
                    return None;
                }
            };
            return Some(answered);
        }
    };
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        code,
        buf.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}

/// Logs to stderr; `WEFT_LOG` (or `RUST_LOG`) sets the filter, default info.
pub fn init_logging() {
    init_logging_or("info");
}

/// Logs to stderr; `WEFT_LOG` (or `RUST_LOG`) sets the filter, else `default`.
pub fn init_logging_or(default: &str) {
    let filter = std::env::var("WEFT_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports() {
        for ok in [
            "localhost:8080",
            "weft-identity.weft.svc.cluster.local:8080",
            "10.0.0.1:1",
            "[::1]:8090",
        ] {
            assert_eq!(host_port(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "localhost",
            "localhost:0",
            "localhost:http",
            "::1:8090",
            "bad name!:80",
            ":80",
        ] {
            let e = host_port(bad).expect_err(bad);
            assert!(e.contains("host:port"), "{bad}: {e}");
        }
        assert_eq!(join_host_port("::1", 8080), "[::1]:8080");
        assert_eq!(join_host_port("localhost", 8080), "localhost:8080");
        assert!(resolve("localhost:8080").is_ok_and(|a| a.iter().all(|a| a.port() == 8080)));
    }
}
