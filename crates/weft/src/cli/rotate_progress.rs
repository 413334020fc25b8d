//! What every rotation command shares: the fleet view fetched from the
//! control plane's admin address, the pure "where does it stand" judgements
//! over it, and the wait loops that tell their progress (a live line on a
//! terminal, plain lines when piped, one JSON event a line with `-o json`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use control_plane::fleet::FleetView;
use serde_json::json;

use super::super::{CmdResult, Failure, http_get};

/// Where the rotation's steps are told: one JSON object a line, or text
/// (progress rewritten in place on a terminal, a line each when piped).
pub struct Events {
    json: bool,
    live: bool,
    pub start: Instant,
    /// A live line is on screen and needs its newline before the next.
    open: std::cell::Cell<bool>,
}

impl Events {
    pub fn new(output: &super::super::Output, start: Instant) -> Self {
        use std::io::IsTerminal;
        let json = matches!(output, super::super::Output::Json);
        Self {
            json,
            live: !json && std::io::stdout().is_terminal(),
            start,
            open: std::cell::Cell::new(false),
        }
    }

    /// One step: `event` names it, `fields` carry its data, `text` says it.
    pub fn say(&self, event: &str, fields: serde_json::Value, text: &str) {
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

/// The control plane the commands talk to and how long they wait for it.
pub struct Target<'a> {
    pub source: Source<'a>,
    pub timeout: Duration,
}

/// Where the fleet view comes from: the admin address (standalone), or
/// through the API server (Kubernetes mode).
pub enum Source<'a> {
    Admin(String),
    Cluster(&'a super::cluster::Cluster),
}

impl Source<'_> {
    pub fn fleet(&self) -> Result<FleetView, String> {
        match self {
            Source::Admin(addr) => fleet(addr),
            Source::Cluster(c) => c.fleet(),
        }
    }

    /// The check that shows the fleet, as a hint names it.
    pub fn check_command(&self) -> String {
        match self {
            Source::Admin(addr) => format!("weft check --proxy --admin-addr {addr}"),
            Source::Cluster(c) => {
                format!(
                    "weft check --proxy --controller-namespace {}",
                    c.namespace()
                )
            }
        }
    }
}

pub fn fleet(addr: &str) -> Result<FleetView, String> {
    match http_get(addr, "/fleet") {
        Some((200, body)) => serde_json::from_str(&body)
            .map_err(|e| format!("{addr}/fleet is not a fleet view: {e}")),
        Some((code, body)) => Err(format!("{addr}/fleet answered {code}: {}", body.trim())),
        None => Err(format!("no control plane answers at {addr}")),
    }
}

/// The fleet view, or a refusal that says nothing was changed.
pub fn fleet_or_refuse(addr: &str) -> Result<FleetView, Failure> {
    fleet(addr).map_err(|e| {
        Failure::input(format!(
            "{e}; nothing was changed; pass the control plane's admin address with --admin-addr HOST:PORT"
        ))
    })
}

/// The workloads whose proxies are connected now: the set a phase waits for.
pub fn connected(v: &FleetView) -> BTreeSet<String> {
    v.proxies
        .iter()
        .filter(|p| p.state == "connected")
        .map(|p| p.workload.clone())
        .collect()
}

/// Where a change stands, from one fleet view: pure.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// The control plane has not put the change in force yet.
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

/// Converging over the connected proxies, `lagging` telling which one is
/// not there yet (and why, appended to its name). `expected`: the workloads
/// connected when the phase began; one that is not connected now is a
/// straggler too, so a moment when proxies reconnect is never "all done".
pub fn converging(
    v: &FleetView,
    expected: &BTreeSet<String>,
    lagging: impl Fn(&control_plane::fleet::ProxyView) -> Option<String>,
) -> Progress {
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
        .filter_map(|p| lagging(p).map(|why| format!("{}{why}", p.workload)))
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

/// An issuer change: in force, then every connected proxy on it.
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
    converging(v, expected, |p| {
        (p.issuer_sha256 != new_issuer).then(String::new)
    })
}

/// A bundle change: the control plane serves exactly `anchors` (any
/// order), then every connected proxy acknowledged that generation. A proxy
/// that refused it says why.
pub fn bundle_progress(v: &FleetView, anchors: &[String], expected: &BTreeSet<String>) -> Progress {
    let want: BTreeSet<&String> = anchors.iter().collect();
    let in_force = v
        .bundle
        .as_ref()
        .is_some_and(|b| b.anchors.iter().collect::<BTreeSet<_>>() == want);
    if !in_force {
        return match &v.issuer_refused {
            Some(why) => Progress::Refused(why.clone()),
            None => Progress::Waiting,
        };
    }
    converging(v, expected, |p| {
        if p.bundle_current {
            None
        } else if let Some(r) = &p.refused {
            Some(format!(" (refused the bundle: {})", r.reason))
        } else {
            Some(String::new())
        }
    })
}

/// Polls until the change is in force (Ok), refused or out of time (Err).
pub fn wait_in_force(
    t: &Target,
    start: Instant,
    judge: impl Fn(&FleetView) -> Progress,
) -> Result<(), String> {
    loop {
        match t.source.fleet().map(|v| judge(&v)) {
            Ok(Progress::Refused(why)) => {
                return Err(format!("the control plane refused it: {why}"));
            }
            Ok(Progress::Waiting) | Err(_) => {}
            Ok(_) => return Ok(()),
        }
        if start.elapsed() > t.timeout {
            return Err(format!(
                "the control plane did not take it within {:?}",
                t.timeout
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls until every expected proxy is on the change, telling progress;
/// `done` is the final line's text (given the number of proxies).
pub fn wait_converged(
    t: &Target,
    ev: &Events,
    what: &str,
    judge: impl Fn(&FleetView) -> Progress,
    done: impl Fn(usize) -> String,
) -> CmdResult {
    let mut last = String::new();
    loop {
        let p = t.source.fleet().map(|v| judge(&v));
        let line = match &p {
            Ok(Progress::Done { proxies }) => {
                ev.say("done", json!({"proxies": proxies}), &done(*proxies));
                return Ok(());
            }
            Ok(Progress::Converging {
                done,
                of,
                stragglers,
            }) => format!(
                "proxies on {what}: {done}/{of}; waiting for {}",
                stragglers.join(", ")
            ),
            Ok(Progress::Refused(why)) => format!("the control plane no longer serves it: {why}"),
            Ok(Progress::Waiting) => format!("the control plane no longer serves {what}"),
            Err(e) => e.clone(),
        };
        if line != last {
            let fields = match &p {
                Ok(Progress::Converging {
                    done,
                    of,
                    stragglers,
                }) => json!({"done": done, "of": of, "stragglers": stragglers}),
                _ => json!({}),
            };
            ev.say("progress", fields, &line);
            last = line;
        }
        if ev.start.elapsed() > t.timeout {
            return Err(Failure::fatal(format!(
                "not converged within {:?}: {last}; the mesh keeps working (proxies renew at 70% of their leaf's life, and keep the bundle they have); see `{}`; re-run the command to resume",
                t.timeout,
                t.source.check_command()
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

    #[test]
    fn a_bundle_is_done_when_served_as_asked_and_acknowledged_by_every_proxy() {
        let expected: BTreeSet<String> = ["web/a".into(), "web/b".into()].into();
        let mut v = fleet(vec![
            on("i", "web/a", "connected"),
            on("i", "web/b", "connected"),
        ]);
        let served = v.bundle.as_ref().unwrap().anchors.clone();
        let mut with_new = served.clone();
        with_new.push("new".into());
        assert_eq!(bundle_progress(&v, &with_new, &expected), Progress::Waiting);
        v.issuer_refused = Some("the issuer would not verify".into());
        assert!(matches!(
            bundle_progress(&v, &with_new, &expected),
            Progress::Refused(_)
        ));
        // Served (any order); b refused it and says why.
        v.issuer_refused = None;
        v.bundle.as_mut().unwrap().anchors = with_new.iter().rev().cloned().collect();
        v.proxies[1].bundle_current = false;
        v.proxies[1].refused = Some(control_plane::fleet::Refusal {
            version: None,
            reason: "its leaf would not verify".into(),
        });
        assert_eq!(
            bundle_progress(&v, &with_new, &expected),
            Progress::Converging {
                done: 1,
                of: 2,
                stragglers: vec!["web/b (refused the bundle: its leaf would not verify)".into()]
            }
        );
        v.proxies[1].bundle_current = true;
        assert_eq!(
            bundle_progress(&v, &with_new, &expected),
            Progress::Done { proxies: 2 }
        );
    }
}
