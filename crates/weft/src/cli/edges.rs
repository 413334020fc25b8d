//! `weft edges`: every edge the proxies saw in a window (client identity or
//! address → server), with counts, success rate and whether it was mTLS;
//! `--plaintext` turns it into a compliance gate.
//!
//! Exit codes: 0 printed (with --plaintext: every edge in the window was
//! mTLS and every declared workload in scope has a proxy); 1 with
//! --plaintext: a plaintext edge, an unmeshed workload, or edges a proxy or
//! the control plane could not keep (unproven) in the window; 2 bad input
//! (malformed --since or namespace, no control plane at --admin-addr).

use std::time::Duration;

use clap::Args;
use control_plane::fleet_edges::{EdgesView, MAX_WINDOW, plaintext_violations};

use super::{CmdResult, Failure, Output, http_get};

#[derive(Debug, Args)]
pub struct EdgesArgs {
    /// Only edges seen by this namespace's proxies (and its declared workloads)
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The window: edges active in the last SINCE (e.g. 30s, 10m, 1h; at most 1h)
    #[arg(long, default_value = "10m")]
    pub since: String,
    /// Output format
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
    /// A compliance gate: exit 1 if any edge in the window carried plaintext, a declared workload in scope has no proxy, or an edge could not be kept
    #[arg(long)]
    pub plaintext: bool,
    /// Where the control plane is
    #[command(flatten)]
    pub target: super::admin_target::AdminTarget,
    #[command(flatten)]
    pub cp: super::admin_target::ControllerNamespace,
}

/// The window in whole seconds, 1s to an hour.
pub fn parse_since(s: &str) -> Result<i64, String> {
    let d = super::duration::parse_duration(s).map_err(|e| format!("--since: {e}"))?;
    let max = Duration::from_secs(MAX_WINDOW as u64);
    if d < Duration::from_secs(1) || d > max {
        return Err(format!(
            "--since {s}: the window must be from 1s to 1h (the control plane keeps an hour of edges)"
        ));
    }
    Ok(d.as_secs() as i64)
}

/// A namespace as Kubernetes names them (a DNS label).
pub fn check_namespace(ns: &str) -> Result<(), String> {
    let ok = !ns.is_empty()
        && ns.len() <= 63
        && ns
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !ns.starts_with('-')
        && !ns.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "-n {ns:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"
        ))
    }
}

/// "10m", "1h", "45s": the window as typed back to the reader.
fn window(s: i64) -> String {
    match s {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The text table: pure over the view.
pub fn render(v: &EdgesView) -> String {
    let mut rows = vec![[
        "CLIENT".to_string(),
        "SERVER".to_string(),
        "TLS".to_string(),
        "CONNS".to_string(),
        "REQS".to_string(),
        "SUCCESS".to_string(),
        "SEEN BY".to_string(),
    ]];
    for e in &v.edges {
        let tls = if e.mtls {
            "mTLS".to_string()
        } else {
            format!("PLAINTEXT ({})", e.no_tls_reason)
        };
        rows.push([
            e.client.to_string(),
            e.server.to_string(),
            tls,
            e.connections.to_string(),
            e.requests.to_string(),
            e.success_rate
                .map(|r| format!("{:.2}%", r * 100.0))
                .unwrap_or_else(|| "-".into()),
            format!("{} ({})", e.workload, e.direction),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if v.edges.is_empty() {
        out.push_str(&format!(
            "(no edges in the last {}{})\n",
            window(v.since_s),
            v.namespace
                .as_deref()
                .map(|n| format!(" in namespace {n}"))
                .unwrap_or_default()
        ));
    }
    for w in &v.unmeshed_workloads {
        out.push_str(&format!("‼ workload {w} is declared but has no proxy\n"));
    }
    for d in &v.proxy_drops {
        out.push_str(&format!(
            "‼ the proxy of {} could not keep {} edges (its table was full)\n",
            d.workload, d.edges
        ));
    }
    if v.control_plane_drops > 0 {
        out.push_str(&format!(
            "‼ the control plane could not keep {} edges\n",
            v.control_plane_drops
        ));
    }
    for p in &v.peers {
        if let Some(e) = &p.error {
            out.push_str(&format!(
                "‼ the control-plane replica at {} could not be asked, so its proxies' edges are missing: {e}\n",
                p.address
            ));
        }
    }
    out
}

fn fetch(a: &EdgesArgs, since: i64) -> Result<EdgesView, Failure> {
    // On a cluster, the port-forward lives until the answer is read.
    let reached = a.target.reach(&a.cp.controller_namespace)?;
    let admin = reached.addr.as_str();
    let mut path = format!("/edges?since={since}");
    if let Some(ns) = &a.namespace {
        path.push_str(&format!("&namespace={ns}"));
    }
    match http_get(admin, &path) {
        None => Err(Failure::input(format!(
            "no control plane answers at {} (GET /edges); pass --admin-addr HOST:PORT of the control plane's admin listener",
            admin
        ))),
        Some((200, body)) => serde_json::from_str(&body).map_err(|e| {
            Failure::fatal(format!(
                "GET /edges from {}: not an edges view ({e}); is it a weft control plane of this release?",
                admin
            ))
        }),
        Some((code, body)) => Err(Failure::fatal(format!(
            "GET /edges from {} answered {code}: {}",
            admin,
            body.trim()
        ))),
    }
}

pub fn run(a: EdgesArgs) -> CmdResult {
    let since = parse_since(&a.since).map_err(Failure::input)?;
    if let Some(ns) = &a.namespace {
        check_namespace(ns).map_err(Failure::input)?;
    }
    let v = fetch(&a, since)?;
    match a.output {
        Output::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(Failure::fatal)?
        ),
        Output::Text => out!("{}", render(&v)),
    }
    if !a.plaintext {
        return Ok(());
    }
    let bad = plaintext_violations(&v);
    if bad.is_empty() {
        if a.output == Output::Text {
            outln!(
                "✔ every edge in the last {} was mTLS ({} edges)",
                window(v.since_s),
                v.edges.len()
            );
        }
        return Ok(());
    }
    for b in &bad {
        eprintln!("× {b}");
    }
    // With -o json stdout stays one JSON document: the verdict goes to stderr.
    Err(Failure {
        verdict: a.output == Output::Text,
        ..Failure::invalid(format!(
            "× {} finding(s) in the last {}: not every hop was mTLS",
            bad.len(),
            window(v.since_s)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use control_plane::fleet_edges::{EdgeView, Peer};

    #[test]
    fn since_and_namespace_are_checked() {
        assert_eq!(parse_since("10m"), Ok(600));
        assert_eq!(parse_since("1h"), Ok(3600));
        for bad in ["", "10x", "0s", "2h", "-5m"] {
            let e = parse_since(bad).unwrap_err();
            assert!(e.contains("--since") && !e.contains('\n'), "{bad}: {e}");
        }
        assert!(check_namespace("demo-1").is_ok());
        assert!(check_namespace("Demo&x=1").is_err());
    }

    #[test]
    fn renders_plaintext_marked() {
        let v = EdgesView {
            now: 1000,
            since_s: 600,
            namespace: None,
            edges: vec![EdgeView {
                client: Peer::Address("10.0.0.9".into()),
                server: Peer::Identity(
                    "backend.demo.serviceaccount.identity.weft.cluster.local"
                        .parse()
                        .unwrap(),
                ),
                workload: "demo/backend".into(),
                direction: "inbound".into(),
                mtls: false,
                no_tls_reason: "not_provided_by_remote".into(),
                unmeshed: true,
                connections: 3,
                requests: 4,
                failures: 1,
                success_rate: Some(0.75),
                last_seen_s: 2,
            }],
            proxy_drops: vec![],
            control_plane_drops: 0,
            unmeshed_workloads: vec!["demo/db".into()],
            peers: vec![],
        };
        let t = render(&v);
        assert!(t.contains("PLAINTEXT (not_provided_by_remote)"), "{t}");
        assert!(t.contains("75.00%") && t.contains("demo/backend (inbound)"));
        assert!(t.contains("‼ workload demo/db is declared but has no proxy"));
        assert_eq!(window(600), "10m");
        assert_eq!(window(45), "45s");
    }
}
