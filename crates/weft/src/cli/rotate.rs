//! `weft rotate issuer`: a new issuer put in force without a step skipped.
//! The new pair is judged against the anchors in force before anything
//! changes; it is installed atomically over the control plane's files; the
//! command waits until the control plane took it (or refused it: the old
//! files are put back and the reason shown), asks the fleet to renew, and
//! waits until every connected proxy serves a leaf from the new issuer.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use control_plane::fleet::FleetView;
use pki::check::{CheckConfig, Status, identity_checks, load_identity_material};
use serde_json::json;

use super::duration::parse_duration;
use super::{CmdResult, Failure, http_get, http_request};

#[derive(Debug, Subcommand)]
pub enum RotateCmd {
    /// Put a new issuer (signed by an anchor in force) in force and renew the fleet under it
    Issuer(IssuerArgs),
}

#[derive(Debug, Args)]
pub struct IssuerArgs {
    /// The new issuer certificate (PEM), e.g. from `weft certs create identity.linkerd.cluster.local issuer-new.crt issuer-new.key --profile intermediate-ca --ca ca.crt --ca-key ca.key`
    #[arg(long)]
    pub cert: PathBuf,
    /// The new issuer's private key (PEM)
    #[arg(long)]
    pub key: PathBuf,
    /// The trust anchors in force (the control plane's --identity-trust-anchors-file)
    #[arg(long)]
    pub identity_trust_anchors_file: PathBuf,
    /// The control plane's issuer certificate file, replaced atomically
    #[arg(long)]
    pub identity_issuer_certificate_file: PathBuf,
    /// The control plane's issuer key file, replaced atomically (mode 0600)
    #[arg(long)]
    pub identity_issuer_key_file: PathBuf,
    /// The control plane's admin address
    #[arg(long, default_value = "127.0.0.1:9990", value_parser = super::host_port)]
    pub admin_addr: String,
    /// Only judge the new pair; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for the control plane and then the fleet
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Output: text (a live progress line on a terminal, plain lines when piped) or json (one event object a line)
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: super::Output,
}

/// Where the rotation's steps are told: one JSON object a line, or text
/// (progress rewritten in place on a terminal, a line each when piped).
struct Events {
    json: bool,
    live: bool,
    start: Instant,
    /// A live line is on screen and needs its newline before the next.
    open: std::cell::Cell<bool>,
}

impl Events {
    fn new(output: &super::Output, start: Instant) -> Self {
        use std::io::IsTerminal;
        let json = matches!(output, super::Output::Json);
        Self {
            json,
            live: !json && std::io::stdout().is_terminal(),
            start,
            open: std::cell::Cell::new(false),
        }
    }

    /// One step: `event` names it, `fields` carry its data, `text` says it.
    fn say(&self, event: &str, fields: serde_json::Value, text: &str) {
        let elapsed = self.start.elapsed();
        if self.json {
            let mut v = serde_json::json!({"event": event, "elapsed_s": elapsed.as_secs_f64(), "message": text});
            if let (Some(o), serde_json::Value::Object(f)) = (v.as_object_mut(), fields) {
                o.extend(f);
            }
            outln!("{v}");
        } else if self.live && event == "progress" {
            out!("\r{text} ({elapsed:.1?})\x1b[K");
            self.open.set(true);
        } else {
            if self.open.replace(false) {
                outln!();
            }
            if event == "progress" {
                outln!("{text} ({elapsed:.1?})");
            } else {
                outln!("{text}");
            }
        }
    }
}

pub fn run(c: RotateCmd) -> CmdResult {
    match c {
        RotateCmd::Issuer(a) => issuer(a),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::input(format!("cannot read {}: {e}", path.display())))
}

/// Every identity check on the new pair against the anchors in force; a
/// warning (e.g. less than 60 days left) refuses too: a rotation should not
/// install an issuer that is already due for the next one.
fn judge(a: &IssuerArgs) -> Result<String, Failure> {
    let material = load_identity_material(&a.identity_trust_anchors_file, &a.cert, Some(&a.key));
    let checks = identity_checks(
        material.as_ref().map_err(String::as_str),
        time::OffsetDateTime::now_utc(),
        CheckConfig::default(),
    );
    let bad: Vec<String> = checks
        .iter()
        .filter(|c| c.result != Status::Success)
        .map(|c| format!("{}: {}", c.description, c.error))
        .collect();
    if !bad.is_empty() {
        return Err(Failure::input(format!(
            "the new issuer {} is refused, nothing was changed: {}; create one with `weft certs create identity.linkerd.cluster.local NEW.crt NEW.key --profile intermediate-ca --ca ANCHOR.crt --ca-key ANCHOR.key` (ANCHOR in {})",
            a.cert.display(),
            bad.join("; "),
            a.identity_trust_anchors_file.display()
        )));
    }
    let cert = material.map_err(Failure::input)?.issuer;
    Ok(pki::fingerprint(&cert))
}

fn fleet(addr: &str) -> Result<FleetView, String> {
    match http_get(addr, "/fleet") {
        Some((200, body)) => serde_json::from_str(&body)
            .map_err(|e| format!("{addr}/fleet is not a fleet view: {e}")),
        Some((code, body)) => Err(format!("{addr}/fleet answered {code}: {}", body.trim())),
        None => Err(format!("no control plane answers at {addr}")),
    }
}

/// Where the rotation stands, from one fleet view: pure.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// The control plane still serves the previous issuer.
    Waiting,
    Refused(String),
    /// In force; the connected proxies not yet on it, by workload.
    Converging {
        done: usize,
        of: usize,
        stragglers: Vec<String>,
    },
    Done {
        proxies: usize,
    },
}

/// `expected`: the workloads whose proxies were connected when the rotation
/// began; one that is not connected now is a straggler too, so a moment
/// when proxies reconnect is never taken for "all done".
pub fn progress(v: &FleetView, new_issuer: &str, expected: &BTreeSet<String>) -> Progress {
    let in_force = v
        .bundle
        .as_ref()
        .is_some_and(|b| b.issuer_sha256 == new_issuer);
    if !in_force {
        return match &v.issuer_refused {
            Some(why) => Progress::Refused(why.clone()),
            None => Progress::Waiting,
        };
    }
    let connected: Vec<_> = v
        .proxies
        .iter()
        .filter(|p| p.state == "connected")
        .collect();
    let now: BTreeSet<&String> = connected.iter().map(|p| &p.workload).collect();
    let missing: Vec<String> = expected
        .iter()
        .filter(|w| !now.contains(w))
        .map(|w| format!("{w} (not connected)"))
        .collect();
    let of = connected.len() + missing.len();
    let mut stragglers: Vec<String> = connected
        .iter()
        .filter(|p| p.issuer_sha256 != new_issuer)
        .map(|p| p.workload.clone())
        .collect();
    stragglers.extend(missing);
    if stragglers.is_empty() {
        Progress::Done { proxies: of }
    } else {
        Progress::Converging {
            done: of - stragglers.len(),
            of,
            stragglers,
        }
    }
}

/// Both files replaced, the key first: the control plane reads them as a
/// pair after a debounce, and judges a half-written pair as refused only
/// if it outlasts that.
fn install(a: &IssuerArgs, cert: &[u8], key: &[u8]) -> Result<(), Failure> {
    let write = |path: &Path, bytes: &[u8], mode| {
        pki::files::write_atomic(path, bytes, mode, true).map_err(|e| Failure::fatal(e.to_string()))
    };
    write(&a.identity_issuer_key_file, key, pki::files::KEY_MODE)?;
    write(
        &a.identity_issuer_certificate_file,
        cert,
        pki::files::PUBLIC_MODE,
    )
}

fn issuer(a: IssuerArgs) -> CmdResult {
    let new_issuer = judge(&a)?;
    let (new_cert, new_key) = (read(&a.cert)?, read(&a.key)?);
    let start = Instant::now();
    let before = fleet(&a.admin_addr).map_err(|e| {
        Failure::input(format!(
            "{e}; nothing was changed; pass the control plane's admin address with --admin-addr HOST:PORT"
        ))
    })?;
    let expected: BTreeSet<String> = before
        .proxies
        .iter()
        .filter(|p| p.state == "connected")
        .map(|p| p.workload.clone())
        .collect();
    let ev = Events::new(&a.output, start);
    let short = &new_issuer[..12];
    if before
        .bundle
        .as_ref()
        .is_some_and(|b| b.issuer_sha256 == new_issuer)
    {
        ev.say(
            "already_in_force",
            json!({"issuer": new_issuer}),
            &format!("the control plane already serves issuer {short}"),
        );
    } else if a.dry_run {
        ev.say(
            "dry_run",
            json!({"issuer": new_issuer}),
            &format!(
                "dry run: issuer {short} ({}) passes every check against {}; nothing was changed",
                a.cert.display(),
                a.identity_trust_anchors_file.display()
            ),
        );
        return Ok(());
    } else {
        let (old_cert, old_key) = (
            read(&a.identity_issuer_certificate_file)?,
            read(&a.identity_issuer_key_file)?,
        );
        install(&a, &new_cert, &new_key)?;
        ev.say(
            "installed",
            json!({"issuer": new_issuer}),
            &format!(
                "installed issuer {short} over {}",
                a.identity_issuer_certificate_file.display()
            ),
        );
        if let Err(why) = wait_in_force(&a, &new_issuer, &expected, start) {
            install(&a, &old_cert, &old_key)?;
            return Err(Failure::fatal(format!(
                "{why}; the previous issuer files were put back and it keeps serving"
            )));
        }
    }
    ev.say(
        "in_force",
        json!({"issuer": new_issuer}),
        &format!(
            "the control plane serves the new issuer ({:.1?})",
            start.elapsed()
        ),
    );
    if let Some((code, body)) = http_request(&a.admin_addr, "POST", "/renew-now") {
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or(json!(body.trim()));
        ev.say(
            "renew_now",
            json!({"status": code, "answer": answer}),
            &format!("renew-now: {code} {}", body.trim().replace('\n', " ")),
        );
    }
    wait_converged(&a, &new_issuer, &expected, start, &ev)
}

fn wait_in_force(
    a: &IssuerArgs,
    new_issuer: &str,
    expected: &BTreeSet<String>,
    start: Instant,
) -> Result<(), String> {
    loop {
        match fleet(&a.admin_addr).map(|v| progress(&v, new_issuer, expected)) {
            Ok(Progress::Refused(why)) => {
                return Err(format!("the control plane refused it: {why}"));
            }
            Ok(Progress::Waiting) | Err(_) => {}
            Ok(_) => return Ok(()),
        }
        if start.elapsed() > a.timeout {
            return Err(format!(
                "the control plane did not take it within {:?}",
                a.timeout
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_converged(
    a: &IssuerArgs,
    new_issuer: &str,
    expected: &BTreeSet<String>,
    start: Instant,
    ev: &Events,
) -> CmdResult {
    let mut last = String::new();
    loop {
        let p = fleet(&a.admin_addr).map(|v| progress(&v, new_issuer, expected));
        let line = match &p {
            Ok(Progress::Done { proxies }) => {
                ev.say(
                    "done",
                    json!({"proxies": proxies}),
                    &format!(
                        "every connected proxy serves a leaf from the new issuer ({proxies} of {proxies}, {:.1?})",
                        start.elapsed()
                    ),
                );
                return Ok(());
            }
            Ok(Progress::Converging {
                done,
                of,
                stragglers,
            }) => {
                format!(
                    "proxies on the new issuer: {done}/{of}; waiting for {}",
                    stragglers.join(", ")
                )
            }
            Ok(Progress::Refused(why)) => format!("the control plane no longer serves it: {why}"),
            Ok(Progress::Waiting) => "the control plane no longer serves the new issuer".into(),
            Err(e) => e.clone(),
        };
        if line != last {
            let fields = match &p {
                Ok(Progress::Converging {
                    done,
                    of,
                    stragglers,
                }) => {
                    json!({"done": done, "of": of, "stragglers": stragglers})
                }
                _ => json!({}),
            };
            ev.say("progress", fields, &line);
            last = line;
        }
        if start.elapsed() > a.timeout {
            return Err(Failure::fatal(format!(
                "not converged within {:?}: {last}; the mesh keeps working (proxies renew at 70% of their leaf's life); see `weft check --proxy --admin-addr {}`",
                a.timeout, a.admin_addr
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check_plane::tests::{fleet, proxy};

    fn on(issuer: &str, workload: &str, state: &str) -> control_plane::fleet::ProxyView {
        let mut p = proxy(workload, 2, state);
        p.issuer_sha256 = issuer.into();
        p
    }

    #[test]
    fn done_only_when_every_proxy_connected_at_the_start_is_back_on_the_new_issuer() {
        let expected: BTreeSet<String> = ["web/a".into(), "web/b".into()].into();
        // fleet()'s bundle serves issuer "i".
        let mut v = fleet(vec![on("old", "web/a", "connected")]);
        v.bundle.as_mut().unwrap().issuer_sha256 = "old".into();
        assert_eq!(progress(&v, "i", &expected), Progress::Waiting);
        v.issuer_refused = Some("unknown issuer".into());
        assert_eq!(
            progress(&v, "i", &expected),
            Progress::Refused("unknown issuer".into())
        );

        // In force; b reconnecting (stale) is not "done", nor is a moment
        // with no proxy connected at all.
        let v = fleet(vec![
            on("i", "web/a", "connected"),
            on("old", "web/b", "stale"),
        ]);
        assert_eq!(
            progress(&v, "i", &expected),
            Progress::Converging {
                done: 1,
                of: 2,
                stragglers: vec!["web/b (not connected)".into()]
            }
        );
        let v = fleet(vec![]);
        assert!(matches!(
            progress(&v, "i", &expected),
            Progress::Converging { done: 0, of: 2, .. }
        ));
        let v = fleet(vec![
            on("i", "web/a", "connected"),
            on("old", "web/b", "connected"),
        ]);
        assert!(matches!(
            progress(&v, "i", &expected),
            Progress::Converging { done: 1, of: 2, .. }
        ));
        let v = fleet(vec![
            on("i", "web/a", "connected"),
            on("i", "web/b", "connected"),
            on("i", "web/c", "connected"),
        ]);
        assert_eq!(progress(&v, "i", &expected), Progress::Done { proxies: 3 });
    }
}
