//! `weft init`: steer a pod's (or host's) TCP traffic through its proxy.

use clap::Args;
use proxy::init::{InitConfig, Iptables, check_port_spec, check_subnet, detect_backend};

use super::{CmdResult, Failure};

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The uid the proxy runs as: its own traffic is not redirected
    #[arg(long, default_value_t = 2102)]
    pub proxy_uid: u32,
    /// The proxy's inbound port: redirected TCP arrives here
    #[arg(long, default_value_t = 4143)]
    pub inbound_port: u16,
    /// The proxy's outbound port: the pod's own outgoing TCP is sent here
    #[arg(long, default_value_t = 4140)]
    pub outbound_port: u16,
    /// The proxy's admin port: never redirected, so probes reach it
    #[arg(long, default_value_t = 4191)]
    pub proxy_admin_port: u16,
    /// The proxy's tap port: never redirected, so the control plane reaches it
    #[arg(long, default_value_t = 4190)]
    pub proxy_tap_port: u16,
    /// Inbound ports not redirected (comma-separated; ranges 9000-9010): NOT protected by the mesh
    #[arg(long, value_delimiter = ',')]
    pub skip_inbound_ports: Vec<String>,
    /// Outbound ports not redirected: NOT protected by the mesh
    #[arg(long, value_delimiter = ',')]
    pub skip_outbound_ports: Vec<String>,
    /// Outbound subnets not redirected: NOT protected by the mesh
    #[arg(long, value_delimiter = ',')]
    pub skip_subnets: Vec<String>,
    /// Remove the rules instead
    #[arg(long, conflicts_with = "list")]
    pub uninstall: bool,
    /// Show the rules in force and what they leave unprotected
    #[arg(long)]
    pub list: bool,
    /// The iptables binary (default: the backend already in use, nft preferred)
    #[arg(long)]
    pub iptables: Option<String>,
}

pub fn run(a: InitArgs) -> CmdResult {
    let bin = match a.iptables.clone() {
        Some(b) => b,
        None => detect_backend().map_err(Failure::fatal)?,
    };
    let ipt = Iptables { bin: bin.clone() };
    if a.list {
        let rules = ipt.list().map_err(Failure::fatal)?;
        if rules.is_empty() {
            outln!("no weft redirect rules ({bin}); run `weft init`");
            return Ok(());
        }
        for r in &rules {
            outln!("{r}");
        }
        let skipped = |chain: &str, what: &str| -> Vec<String> {
            rules
                .iter()
                .filter(|r| r.starts_with(&format!("-A {chain} ")) && r.ends_with("-j RETURN"))
                .filter_map(|r| {
                    let mut it = r.split_whitespace();
                    it.by_ref()
                        .find(|w| *w == what)
                        .and(it.next())
                        .map(str::to_string)
                })
                .collect()
        };
        outln!("\nnot protected by the mesh:");
        outln!(
            "  inbound ports (incl. the proxy's own): {}",
            skipped("PROXY_INIT_REDIRECT", "--dport").join(", ")
        );
        outln!(
            "  outbound ports:  {}",
            or_none(skipped("PROXY_INIT_OUTPUT", "--dport"))
        );
        outln!(
            "  outbound subnets: {}",
            or_none(skipped("PROXY_INIT_OUTPUT", "-d"))
        );
        return Ok(());
    }
    if a.uninstall {
        ipt.uninstall().map_err(Failure::fatal)?;
        outln!("weft redirect rules removed ({bin})");
        return Ok(());
    }
    let cfg = InitConfig {
        inbound_port: a.inbound_port,
        outbound_port: a.outbound_port,
        proxy_ports: vec![a.inbound_port, a.proxy_admin_port, a.proxy_tap_port],
        proxy_uid: a.proxy_uid,
        skip_inbound_ports: a
            .skip_inbound_ports
            .iter()
            .map(|p| check_port_spec(p))
            .collect::<Result<_, _>>()
            .map_err(Failure::input)?,
        skip_outbound_ports: a
            .skip_outbound_ports
            .iter()
            .map(|p| check_port_spec(p))
            .collect::<Result<_, _>>()
            .map_err(Failure::input)?,
        skip_subnets: a
            .skip_subnets
            .iter()
            .map(|s| check_subnet(s))
            .collect::<Result<_, _>>()
            .map_err(Failure::input)?,
    };
    ipt.install(&cfg).map_err(Failure::fatal)?;
    outln!(
        "weft redirect rules installed ({bin}): inbound tcp -> :{}, outbound tcp -> :{}, proxy uid {} exempt",
        cfg.inbound_port,
        cfg.outbound_port,
        cfg.proxy_uid
    );
    Ok(())
}

fn or_none(v: Vec<String>) -> String {
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}
