//! `weft identity WORKLOAD`: the certificate chain each of a workload's
//! proxies serves right now, read from the proxy itself (its admin
//! endpoint's /identity: public certificates only), found through the
//! control plane's fleet view. Printed like `linkerd identity`.
//!
//! Exit codes: 0 every proxy answered; 1 a proxy did not answer (the others
//! are still printed); 2 bad input: no control plane at --admin-addr, or a
//! workload it knows no proxy of.

use clap::Args;
use control_plane::fleet::{FleetView, ProxyView};
use pki::CertificateDer;
use pki::info::CertInfo;
use serde::Serialize;
use time::OffsetDateTime;

use super::admin_target::{Reached, WorkloadArg, workload_arg};
use super::{CmdResult, Failure, Output, http_get};

#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// The workload: NAME (in -n's namespace), NAMESPACE/NAME, or on a cluster deploy/NAME, sts/NAME, ds/NAME, pod/NAME
    pub workload: String,
    /// The workload's namespace
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Print each proxy's chain as PEM (leaf first) instead of describing it
    #[arg(long)]
    pub chain: bool,
    /// Output format
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
    /// Where the control plane is (its fleet view says where each proxy is)
    #[command(flatten)]
    pub target: super::admin_target::AdminTarget,
    #[command(flatten)]
    pub cp: super::admin_target::ControllerNamespace,
}

/// `NAME` in `namespace`, or `NAMESPACE/NAME` as given.
pub fn workload_name(arg: &str, namespace: &str) -> String {
    if arg.contains('/') {
        arg.to_string()
    } else {
        format!("{namespace}/{arg}")
    }
}

/// The proxies of `workloads` that hold a stream now; refused with what to
/// do when there are none.
pub fn select<'a>(
    view: &'a FleetView,
    workloads: &[String],
    admin: &str,
) -> Result<Vec<&'a ProxyView>, String> {
    let workload = workloads.join(", ");
    let all: Vec<&ProxyView> = view
        .proxies
        .iter()
        .filter(|p| workloads.contains(&p.workload))
        .collect();
    if all.is_empty() {
        let mut known: Vec<&str> = view.proxies.iter().map(|p| p.workload.as_str()).collect();
        known.dedup();
        let known = if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        };
        return Err(format!(
            "no proxy of workload {workload} is known to the control plane at {admin}; workloads with a proxy: {known} (give NAMESPACE/NAME or -n NAMESPACE)"
        ));
    }
    let connected: Vec<&ProxyView> = all.into_iter().filter(|p| p.state == "connected").collect();
    if connected.is_empty() {
        return Err(format!(
            "every proxy of workload {workload} has lost its stream to the control plane at {admin}, so none can be read; start its proxy again, then `weft check --proxy`"
        ));
    }
    Ok(connected)
}

/// One proxy and what its admin endpoint served (or why it did not).
pub struct Served {
    pub proxy: ProxyView,
    pub chain: Result<Vec<CertificateDer<'static>>, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProxyIdentity {
    pub workload: String,
    pub identity: String,
    pub admin_addr: String,
    /// Leaf first, then its issuer.
    pub certificates: Vec<CertInfo>,
    /// The anchor the leaf chains to, as the proxy reported it.
    pub anchor_sha256: String,
    /// Seconds until the leaf expires.
    pub expires_in_s: i64,
    pub pem: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What to print for each proxy: pure over what was served.
pub fn describe(served: &[Served], now: OffsetDateTime) -> Vec<ProxyIdentity> {
    served
        .iter()
        .map(|s| {
            let p = &s.proxy;
            let (certificates, error) = match &s.chain {
                Ok(chain) => match chain.iter().map(|c| CertInfo::from_der(c)).collect() {
                    Ok(infos) => (infos, None),
                    Err(e) => (
                        Vec::new(),
                        Some(format!("it served a chain that does not parse: {e}")),
                    ),
                },
                Err(e) => (Vec::new(), Some(e.clone())),
            };
            let note = certificates.first().and_then(|leaf| {
                (!p.leaf_serial.is_empty() && leaf.serial != p.leaf_serial).then(|| {
                    format!(
                        "its last report named serial {}: it renewed since",
                        p.leaf_serial
                    )
                })
            });
            ProxyIdentity {
                workload: p.workload.clone(),
                identity: p.identity.to_string(),
                admin_addr: p.admin_addr.clone(),
                expires_in_s: certificates
                    .first()
                    .map(|l| (l.not_after - now).whole_seconds())
                    .unwrap_or_default(),
                pem: s
                    .chain
                    .as_ref()
                    .map(|c| pki::cert::to_pem(c))
                    .unwrap_or_default(),
                certificates,
                anchor_sha256: p.anchor_sha256.clone(),
                error,
                note,
            }
        })
        .collect()
}

/// The text form, like `linkerd identity`.
pub fn render(ids: &[ProxyIdentity], now: OffsetDateTime) -> String {
    let mut out = String::new();
    for (n, p) in ids.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        out.push_str(&format!(
            "{} proxy {} of {} at {}\n",
            if p.error.is_some() { "×" } else { "✔" },
            n + 1,
            p.workload,
            p.admin_addr
        ));
        if let Some(e) = &p.error {
            out.push_str(&format!("    {e}\n"));
            continue;
        }
        let Some(leaf) = p.certificates.first() else {
            continue;
        };
        let issuer = p.certificates.get(1);
        let lines = [
            ("Identity", p.identity.clone()),
            ("Subject", leaf.subject.clone()),
            ("SANs", leaf.subject_alt_names.join(", ")),
            ("Serial", leaf.serial.clone()),
            (
                "Valid",
                format!(
                    "{} to {} ({})",
                    pki::info::rfc3339(leaf.not_before),
                    pki::info::rfc3339(leaf.not_after),
                    pki::info::time_left(now, leaf.not_after).replace("expired", "EXPIRED")
                        + if leaf.not_after > now { " left" } else { "" }
                ),
            ),
            ("Key", leaf.key_algorithm.clone()),
            (
                "Issuer",
                match issuer {
                    Some(i) => format!("{} (sha256 {})", leaf.issuer, i.sha256_fingerprint),
                    None => format!("{} (not served with the leaf)", leaf.issuer),
                },
            ),
            ("Anchor", format!("sha256 {}", p.anchor_sha256)),
        ];
        for (k, v) in lines {
            out.push_str(&format!("    {:<9} {v}\n", format!("{k}:")));
        }
        if let Some(note) = &p.note {
            out.push_str(&format!("    Note:     {note}\n"));
        }
    }
    out
}

/// The chain a proxy's admin endpoint serves now.
fn fetch_chain(admin: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    if admin.is_empty() {
        return Err("its proxy did not report an admin address (an older weft proxy)".into());
    }
    match http_get(admin, "/identity") {
        None => Err(format!(
            "its admin endpoint at {admin} does not answer; is the proxy running and its admin port reachable from here?"
        )),
        Some((200, pem)) => {
            let path = std::path::PathBuf::from(format!("{admin}/identity"));
            pki::parse_certs(&path, pem.as_bytes()).map_err(|e| e.to_string())
        }
        Some((code, body)) => Err(format!(
            "its admin endpoint at {admin} answered {code}: {}",
            body.trim()
        )),
    }
}

/// The connected proxies of `w`, from the fleet view of the control plane
/// `reached`, each with its admin address as this machine reaches it (on
/// a cluster, a port-forward to its pod); and the workloads `w` means.
pub fn proxies_of(reached: &Reached, w: &WorkloadArg) -> Result<(Vec<ProxyView>, String), Failure> {
    let workloads = reached.workloads(w)?;
    let admin = &reached.addr;
    let view = super::check::parse_fleet(admin, http_get(admin, "/fleet")).map_err(|e| {
        Failure::input(format!(
            "{e}; pass --admin-addr HOST:PORT of the control plane's admin listener"
        ))
    })?;
    let mut proxies: Vec<ProxyView> = select(&view, &workloads, admin)
        .map_err(Failure::input)?
        .into_iter()
        .cloned()
        .collect();
    for p in &mut proxies {
        if let Ok(addr) = reached.proxy_admin(&p.workload, &p.admin_addr) {
            p.admin_addr = addr;
        }
    }
    Ok((proxies, workloads.join(", ")))
}

pub fn run(a: IdentityArgs) -> CmdResult {
    let reached = a.target.reach(&a.cp.controller_namespace)?;
    let (proxies, workload) = proxies_of(&reached, &workload_arg(&a.workload, &a.namespace))?;
    let served: Vec<Served> = proxies
        .into_iter()
        .map(|p| Served {
            chain: fetch_chain(&p.admin_addr),
            proxy: p,
        })
        .collect();
    let now = OffsetDateTime::now_utc();
    let ids = describe(&served, now);
    match (a.output, a.chain) {
        (Output::Json, _) => outln!(
            "{}",
            serde_json::to_string_pretty(&ids).map_err(Failure::fatal)?
        ),
        (Output::Text, true) => {
            for p in &ids {
                match &p.error {
                    Some(e) => eprintln!("error: {} at {}: {e}", p.workload, p.admin_addr),
                    None => out!("{}", p.pem),
                }
            }
        }
        (Output::Text, false) => out!("{}", render(&ids, now)),
    }
    let failed = ids.iter().filter(|p| p.error.is_some()).count();
    if failed > 0 {
        return Err(Failure::fatal(format!(
            "{failed} of {} proxies of {workload} could not be read",
            ids.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "identity_tests.rs"]
mod tests;
