//! `weft tap WORKLOAD`: live requests through a workload's proxies, one line
//! per event like `linkerd viz tap`, streamed by the control plane (GET /tap
//! on its operator listener opens Tap.Observe on each proxy with its own
//! certificate). Never bodies or header values; the query string only with
//! `--show-query`.
//!
//! Exit codes: 0 the tap ended (its time was up, or the proxies went away);
//! 1 the control plane stopped answering; 2 bad input: a malformed filter,
//! no control plane at --admin-addr, or a workload it knows no proxy of.

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use clap::Args;
use control_plane::tap::{TapError, TapLine, tap_query};

use super::{CmdResult, Failure, Output, resolve};

#[derive(Debug, Args)]
pub struct TapArgs {
    /// The workload whose proxies to tap: NAME (in -n's namespace), NAMESPACE/NAME, or on a cluster deploy/NAME, sts/NAME, ds/NAME, pod/NAME
    pub workload: String,
    /// Only requests to this workload: NAME (in -n's namespace) or NAMESPACE/NAME
    #[arg(long)]
    pub to: Option<String>,
    /// The namespace of WORKLOAD and --to
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Only requests with this HTTP method (e.g. GET)
    #[arg(long)]
    pub method: Option<String>,
    /// Only requests whose path starts with this prefix (e.g. /api)
    #[arg(long)]
    pub path: Option<String>,
    /// At most this many requests a second, per proxy
    #[arg(long)]
    pub max_rps: Option<String>,
    /// Show paths with their query strings (hidden by default: they can carry secrets)
    #[arg(long)]
    pub show_query: bool,
    /// End the tap after this many seconds (at most 3600)
    #[arg(long, default_value = "600")]
    pub seconds: String,
    /// Output format: text (like linkerd viz tap) or json (one object per line)
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
    /// Where the control plane is
    #[command(flatten)]
    pub target: super::admin_target::AdminTarget,
    #[command(flatten)]
    pub cp: super::admin_target::ControllerNamespace,
}

/// `%XX` for everything but unreserved characters and '/'.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The GET /tap query for the flags and the `workloads` WORKLOAD means,
/// checked here first (the control plane's own reading): a bad filter is
/// one line naming the flag.
pub fn query(a: &TapArgs, workloads: &[String]) -> Result<String, String> {
    let name = |w: &str| super::identity::workload_name(w, &a.namespace);
    let mut pairs: Vec<(&str, String)> =
        workloads.iter().map(|w| ("workload", w.clone())).collect();
    let optional = [
        ("to", a.to.as_deref().map(name)),
        ("method", a.method.clone()),
        ("path", a.path.clone()),
        ("max_rps", a.max_rps.clone()),
    ];
    pairs.extend(optional.into_iter().filter_map(|(k, v)| Some((k, v?))));
    pairs.push(("seconds", a.seconds.clone()));
    if a.show_query {
        pairs.push(("show_query", "true".into()));
    }
    let q: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    let q = q.join("&");
    tap_query(&q).map_err(|e| {
        // Name the flag, not the query key.
        let flag = |k: &str| match k {
            "workload" => "WORKLOAD ".to_string(),
            k => format!("--{} ", k.replace('_', "-")),
        };
        match e.split_once('=') {
            Some((k, rest)) if pairs.iter().any(|(p, _)| *p == k) => format!("{}{rest}", flag(k)),
            _ => e,
        }
    })?;
    Ok(q)
}

fn us(n: u64) -> String {
    format!("{n}µs")
}

/// One event as `linkerd viz tap` prints it, with both identities: pure.
pub fn render(l: &TapLine) -> String {
    let mut s = format!(
        "{} id={} proxy={:<3} src={} dst={} tls={}",
        l.kind, l.id, l.proxy, l.src, l.dst, l.tls
    );
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            s.push_str(&format!(" {k}={v}"));
        }
    };
    match l.kind.as_str() {
        "req" => {
            add(":method", l.method.clone());
            add(":authority", l.authority.clone());
            add(":path", l.path.clone());
            add("client_id", l.client_id.clone());
            add("server_id", l.server_id.clone());
        }
        "rsp" => {
            add(":status", l.status.map(|s| s.to_string()));
            add("latency", l.latency_us.map(us));
        }
        _ => {
            add("grpc-status", l.grpc_status.map(|s| s.to_string()));
            add("reset-code", l.reset_code.map(|s| s.to_string()));
            add("duration", l.latency_us.map(us));
            add("response-length", l.response_bytes.map(|b| format!("{b}B")));
        }
    }
    s
}

/// A status line and headers read; the body follows on `r`.
/// The control plane's stream: plain on the loopback admin listener, TLS
/// with the operator's certificate on the operator listener.
trait Stream: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> Stream for T {}

fn open(admin: &str, q: &str) -> Result<BufReader<Box<dyn Stream>>, Failure> {
    let nothing = || {
        Failure::input(format!(
            "no control plane answered at {}; start one (`weft control-plane`) or pass --admin-addr",
            admin
        ))
    };
    let addrs = resolve(admin).map_err(Failure::input)?;
    let s = addrs
        .iter()
        .find_map(|x| std::net::TcpStream::connect_timeout(x, Duration::from_secs(2)).ok())
        .ok_or_else(nothing)?;
    // The control plane sends a line at least every 10 s.
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(Failure::fatal)?;
    let host = s.peer_addr().map_err(|_| nothing())?;
    let tls = super::operator_tls::installed();
    let auth = tls
        .map(super::operator_tls::OperatorTls::auth_header)
        .unwrap_or_default();
    let mut s: Box<dyn Stream> = match tls {
        None => Box::new(s),
        Some(tls) => {
            let conn = rustls::ClientConnection::new(tls.config.clone(), tls.server_name.clone())
                .map_err(Failure::fatal)?;
            Box::new(rustls::StreamOwned::new(conn, s))
        }
    };
    write!(s, "GET /tap?{q} HTTP/1.0\r\nHost: {host}\r\n{auth}\r\n").map_err(|_| nothing())?;
    s.flush().map_err(|_| nothing())?;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).map_err(|_| nothing())?;
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(nothing)?;
    let mut line = String::new();
    while r.read_line(&mut line).map_err(Failure::fatal)? > 0 && line.trim() != "" {
        line.clear();
    }
    if code == 200 {
        return Ok(r);
    }
    let mut body = String::new();
    let _ = std::io::Read::read_to_string(&mut r, &mut body);
    let msg = body.lines().next().unwrap_or("").to_string();
    Err(match code {
        400 | 401 | 403 | 404 => Failure::input(msg),
        _ => Failure::fatal(format!(
            "the control plane at {} answered {code}: {msg}",
            admin
        )),
    })
}

pub fn run(a: TapArgs) -> CmdResult {
    // Lives as long as the tap: on a cluster it moves the forwarded bytes.
    let reached = a.target.reach(&a.cp.controller_namespace)?;
    let workloads = reached.workloads(&super::admin_target::workload_arg(
        &a.workload,
        &a.namespace,
    ))?;
    let q = query(&a, &workloads).map_err(Failure::input)?;
    let admin = reached.addr.as_str();
    let mut r = open(admin, &q)?;
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                return Err(Failure::fatal(format!(
                    "the control plane at {} stopped answering: {e}",
                    admin
                )));
            }
        }
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if let Ok(e) = serde_json::from_str::<TapError>(text) {
            eprintln!("warning: {}", e.error);
            continue;
        }
        let Ok(l) = serde_json::from_str::<TapLine>(text) else {
            eprintln!("warning: an event this weft cannot read: {text}");
            continue;
        };
        if let Some(n) = l.dropped_before {
            eprintln!(
                "warning: {n} events were dropped before this one: the reader was behind (try --max-rps)"
            );
        }
        match a.output {
            Output::Json => outln!("{text}"),
            Output::Text => outln!("{}", render(&l)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(a: &TapArgs) -> Result<String, String> {
        super::query(
            a,
            &[super::super::identity::workload_name(
                &a.workload,
                &a.namespace,
            )],
        )
    }

    fn args(extra: &[&str]) -> TapArgs {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: TapArgs,
        }
        let mut v = vec!["weft", "backend", "-n", "demo"];
        v.extend(extra);
        <P as clap::Parser>::parse_from(v).a
    }

    #[test]
    fn flags_become_a_checked_query() {
        let q = query(&args(&[
            "--method",
            "GET",
            "--path",
            "/hello world",
            "--max-rps",
            "5",
        ]))
        .unwrap();
        assert_eq!(
            q,
            "workload=demo/backend&method=GET&path=/hello%20world&max_rps=5&seconds=600"
        );
        let q = query(&args(&["--to", "db", "--show-query"])).unwrap();
        assert!(
            q.contains("to=demo/db") && q.ends_with("show_query=true"),
            "{q}"
        );
    }

    #[test]
    fn malformed_filters_name_the_flag() {
        for (extra, says) in [
            (vec!["--max-rps", "0"], "--max-rps \"0\""),
            (vec!["--method", "get"], "--method \"get\""),
            (vec!["--path", "hello"], "--path \"hello\""),
            (vec!["--seconds", "0"], "--seconds \"0\""),
            (vec!["--to", "a/b/c"], "--to \"a/b/c\""),
        ] {
            let e = query(&args(&extra)).unwrap_err();
            assert!(e.starts_with(says), "{extra:?}: {e}");
            assert_eq!(e.lines().count(), 1);
        }
    }

    #[test]
    fn lines_read_like_linkerd_tap() {
        let req = TapLine {
            kind: "req".into(),
            id: "0:1".into(),
            proxy: "in".into(),
            src: "10.0.0.7:40000".into(),
            dst: "10.0.0.2:8080".into(),
            tls: "true".into(),
            method: Some("GET".into()),
            authority: Some("backend:8080".into()),
            path: Some("/hello".into()),
            client_id: Some("frontend.demo".into()),
            server_id: Some("backend.demo".into()),
            ..TapLine::default()
        };
        assert_eq!(
            render(&req),
            "req id=0:1 proxy=in  src=10.0.0.7:40000 dst=10.0.0.2:8080 tls=true :method=GET :authority=backend:8080 :path=/hello client_id=frontend.demo server_id=backend.demo"
        );
        let rsp = TapLine {
            kind: "rsp".into(),
            status: Some(200),
            latency_us: Some(1234),
            tls: "not_provided_by_remote".into(),
            ..req.clone()
        };
        assert!(render(&rsp).ends_with("tls=not_provided_by_remote :status=200 latency=1234µs"));
        let end = TapLine {
            kind: "end".into(),
            latency_us: Some(1500),
            response_bytes: Some(12),
            ..req
        };
        assert!(render(&end).ends_with("duration=1500µs response-length=12B"));
    }
}
