//! `weft check --proxy`: the fleet view judged, as pure functions over the
//! JSON the admin endpoint serves.

use pki::check::CheckResult;

use crate::fleet::FleetView;

/// A connected proxy silent this long (it reports every 15 s) is suspect.
const SILENT_AFTER_S: i64 = 60;

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn list(items: &[String]) -> String {
    const MAX: usize = 8;
    let mut s = items
        .iter()
        .take(MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > MAX {
        s.push_str(&format!("; and {} more", items.len() - MAX));
    }
    s
}

/// 86400s → "1d", 7200s → "2h": the window as a person would write it.
fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 86400 && s % 86400 == 0 => format!("{}d", s / 86400),
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A one-line summary of the fleet for the top of the report.
pub fn summary(v: &FleetView) -> String {
    let count = |s: &str| v.proxies.iter().filter(|p| p.state == s).count();
    let bundle = match &v.bundle {
        Some(b) => format!(
            "trust bundle generation {} ({}…, {} anchor{})",
            b.generation,
            short(&b.sha256),
            b.anchors.len(),
            if b.anchors.len() == 1 { "" } else { "s" }
        ),
        None => "no trust bundle in force".into(),
    };
    format!(
        "{bundle}; proxies: {} connected, {} stale, {} unmanaged",
        count("connected"),
        count("stale"),
        v.unmanaged.len()
    )
}

/// Kubernetes mode: whether every other replica answered for its proxies.
/// A refused replacement keeps the mesh working on the previous issuer, so
/// nothing else shows it; it is a failure because what the operator put in
/// place is not what serves.
/// Once the issuer served has expired nothing serves: proxies stop as
/// their leaves end, and only an emergency re-root brings them back.
fn refused_check(v: &FleetView) -> CheckResult {
    let what = "the control plane accepted its newest issuer and trust anchors";
    let lapsed = v
        .bundle
        .as_ref()
        .map(|b| b.issuer_not_after)
        .filter(|t| (1..=v.now).contains(t));
    match (&v.issuer_refused, lapsed) {
        (None, None) => CheckResult::ok(what),
        (why, Some(at)) => CheckResult::fail(
            what,
            format!(
                "no issuer is in force: the last one expired {}s ago{}; proxies cannot renew and stop as their leaves end",
                v.now - at,
                why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()
            ),
            "put a valid issuer in place with `weft rotate issuer`; if the trust anchor has expired too (or the issuer and anchor are lost), re-root with `weft rotate trust-anchor --emergency --new-anchor ... --issuer-cert ... --issuer-key ...` (README \"Emergency re-root\")",
        ),
        (Some(why), None) => CheckResult::fail(
            what,
            format!("refused, the previous issuer keeps serving: {why}"),
            "check the new files with `weft check --identity-trust-anchors-file ... --identity-issuer-certificate-file ... --identity-issuer-key-file ...`, fix what it names and put them in place again",
        ),
    }
}

fn peers_check(v: &FleetView) -> CheckResult {
    let unreachable: Vec<String> = v
        .peers
        .iter()
        .filter_map(|p| Some(format!("{}: {}", p.address, p.error.as_deref()?)))
        .collect();
    let desc = format!(
        "every other control-plane replica answered for its proxies ({} of {})",
        v.peers.len() - unreachable.len(),
        v.peers.len()
    );
    if unreachable.is_empty() {
        CheckResult::ok(desc)
    } else {
        CheckResult::warn(
            desc,
            list(&unreachable),
            "the proxies whose stream that replica holds are missing from this view: check that replica (its /ready, its log), or wait until its endpoint leaves the Service",
        )
    }
}

pub fn fleet_checks(v: &FleetView, expiry_warning: std::time::Duration) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let Some(bundle) = &v.bundle else {
        out.push(CheckResult::fail(
            "the control plane serves a trust bundle",
            "no issuer and anchors are in force, so no bundle is served",
            "see the control plane's /ready and its log for why its files were refused",
        ));
        return out;
    };
    out.push(CheckResult::ok(format!(
        "the control plane serves trust bundle generation {}",
        bundle.generation
    )));
    out.push(refused_check(v));
    if !v.peers.is_empty() {
        out.push(peers_check(v));
    }
    let connected: Vec<_> = v
        .proxies
        .iter()
        .filter(|p| p.state == "connected")
        .collect();

    let behind: Vec<String> = connected
        .iter()
        .filter(|p| !p.bundle_current)
        .map(|p| {
            let have = p
                .bundle
                .as_ref()
                .map(|b| format!("has generation {}", b.generation))
                .unwrap_or_else(|| "has the bootstrap anchors file".into());
            match &p.refused {
                Some(r) => format!(
                    "{} {have}, refused the current one: {}",
                    p.workload, r.reason
                ),
                None => format!("{} {have}", p.workload),
            }
        })
        .collect();
    let desc = format!(
        "every connected proxy has the current trust bundle ({} of {})",
        connected.len() - behind.len(),
        connected.len()
    );
    out.push(if behind.is_empty() {
        CheckResult::ok(desc)
    } else {
        CheckResult::fail(
            desc,
            list(&behind),
            "proxies apply a new bundle within seconds; a refusal says what would break (fix that, then the control plane pushes again)",
        )
    });

    let mut per_anchor: std::collections::BTreeMap<&str, usize> = Default::default();
    for p in &connected {
        *per_anchor.entry(p.anchor_sha256.as_str()).or_default() += 1;
    }
    let spread = per_anchor
        .iter()
        .map(|(a, n)| format!("{n} to {}", if a.is_empty() { "none" } else { short(a) }))
        .collect::<Vec<_>>()
        .join(", ");
    let orphans: Vec<String> = connected
        .iter()
        .filter(|p| !p.anchor_in_bundle)
        .map(|p| format!("{} (serial {})", p.workload, p.leaf_serial))
        .collect();
    let desc = format!("every proxy certificate chains to a current anchor ({spread})");
    out.push(if orphans.is_empty() {
        CheckResult::ok(desc)
    } else {
        CheckResult::fail(
            desc,
            list(&orphans),
            "these proxies renew from the current issuer on POST /renew-now; keep their anchor in the bundle until they have",
        )
    });

    let old_issuer: Vec<String> = connected
        .iter()
        .filter(|p| !p.issuer_current)
        .map(|p| format!("{} (issuer {}…)", p.workload, short(&p.issuer_sha256)))
        .collect();
    let desc = "every proxy certificate is from the current issuer";
    out.push(if old_issuer.is_empty() {
        CheckResult::ok(desc)
    } else {
        CheckResult::warn(
            desc,
            list(&old_issuer),
            "renew-now is sent after an issuer change to proxies whose bundle holds the new anchor; wait, or POST /renew-now on the control plane's admin",
        )
    });

    let silent: Vec<String> = connected
        .iter()
        .filter(|p| p.last_report_age_s > SILENT_AFTER_S)
        .map(|p| format!("{} last reported {}s ago", p.workload, p.last_report_age_s))
        .collect();
    let desc = format!("every connected proxy reported within {SILENT_AFTER_S}s");
    out.push(if silent.is_empty() {
        CheckResult::ok(desc)
    } else {
        CheckResult::warn(
            desc,
            list(&silent),
            "proxies report every 15s; one that holds its stream but stays silent is wedged: look at its log and restart it",
        )
    });

    out.push(crate::fleet_tls_check::tls_check(&connected));

    let stale: Vec<String> = v
        .proxies
        .iter()
        .filter(|p| p.state == "stale")
        .map(|p| {
            format!(
                "{} ({}), disconnected {}s ago",
                p.workload, p.identity, p.for_s
            )
        })
        .collect();
    out.push(if stale.is_empty() {
        CheckResult::ok("no proxy is stale")
    } else {
        CheckResult::warn(
            "no proxy is stale",
            list(&stale),
            "a stale proxy is not counted as converged: restart it, or remove its workload if it is gone",
        )
    });

    let unmanaged: Vec<String> = v
        .unmanaged
        .iter()
        .map(|u| format!("{}: {}", u.identity, u.note))
        .collect();
    out.push(if unmanaged.is_empty() {
        CheckResult::ok("every certified proxy holds a weft.mesh.v1 stream")
    } else {
        CheckResult::warn(
            "every certified proxy holds a weft.mesh.v1 stream",
            list(&unmanaged),
            "these do not take live bundles: restart them after each anchor change",
        )
    });

    let window = expiry_warning.as_secs() as i64;
    let expiring: Vec<String> = connected
        .iter()
        .filter(|p| p.expires_in_s < window)
        .map(|p| format!("{} expires in {}s", p.workload, p.expires_in_s))
        .collect();
    let desc = format!(
        "no proxy certificate expires within {}",
        human(expiry_warning)
    );
    out.push(if expiring.is_empty() {
        CheckResult::ok(desc)
    } else {
        CheckResult::warn(
            desc,
            list(&expiring),
            "a proxy renews at 70% of its lifetime; one that does not says why in its log (last refresh in the fleet view)",
        )
    });
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bundle::Version;
    use crate::fleet::{BundleView, ProxyView};
    use pki::check::Status;

    pub(crate) fn proxy(workload: &str, generation: u64, state: &str) -> ProxyView {
        ProxyView {
            workload: workload.into(),
            identity: format!(
                "{}.demo.serviceaccount.identity.weft.cluster.local",
                workload.rsplit('/').next().unwrap_or(workload)
            )
            .parse()
            .unwrap(),
            state: state.into(),
            for_s: 5,
            last_report_age_s: 1,
            bundle: Some(Version {
                generation,
                sha256: format!("s{generation}"),
            }),
            bundle_current: generation == 2,
            refused: None,
            leaf_serial: "01".into(),
            spki_sha256: "k".into(),
            issuer_sha256: "issuer-b".into(),
            issuer_current: true,
            anchor_sha256: "anchor-b".into(),
            anchor_in_bundle: true,
            not_after: 10_000,
            expires_in_s: 9_000,
            last_refresh: crate::fleet::LastRefresh::Ok,
            renew_request_id: String::new(),
            admin_addr: String::new(),
            tls: None,
        }
    }

    fn fleet(proxies: Vec<ProxyView>) -> FleetView {
        FleetView {
            now: 1000,
            bundle: Some(BundleView {
                generation: 2,
                sha256: "s2".into(),
                anchors: vec!["anchor-a".into(), "anchor-b".into()],
                issuer_sha256: "issuer-b".into(),
                issuer_anchor: "anchor-b".into(),
                anchor_not_after: vec![],
                issuer_not_after: 0,
            }),
            proxies,
            unmanaged: vec![],
            peers: vec![],
            version: String::new(),
            issuer_refused: None,
        }
    }

    fn status(v: &FleetView) -> Vec<Status> {
        fleet_checks(v, std::time::Duration::from_secs(3600))
            .into_iter()
            .map(|r| r.result)
            .collect()
    }

    #[test]
    fn green_when_converged() {
        let v = fleet(vec![
            proxy("demo/a", 2, "connected"),
            proxy("demo/b", 2, "connected"),
        ]);
        assert!(
            status(&v).iter().all(|s| *s == Status::Success),
            "{:?}",
            fleet_checks(&v, std::time::Duration::from_secs(3600))
        );
        assert!(summary(&v).contains("2 connected, 0 stale"));
    }

    #[test]
    fn behind_refused_stale_and_expiring_are_named() {
        let mut behind = proxy("demo/b", 1, "connected");
        behind.refused = Some(crate::fleet::Refusal {
            version: None,
            reason: "own leaf".into(),
        });
        let mut soon = proxy("demo/c", 2, "connected");
        soon.expires_in_s = 60;
        soon.issuer_current = false;
        soon.last_report_age_s = 90;
        let v = fleet(vec![
            proxy("demo/a", 2, "connected"),
            behind,
            soon,
            proxy("demo/d", 2, "stale"),
        ]);
        let r = fleet_checks(&v, std::time::Duration::from_secs(3600));
        let by = |d: &str| r.iter().find(|c| c.description.starts_with(d)).unwrap();
        let b = by("every connected proxy has the current trust bundle (2 of 3)");
        assert_eq!(b.result, Status::Error);
        assert!(
            b.error
                .contains("demo/b has generation 1, refused the current one: own leaf")
        );
        assert_eq!(by("no proxy is stale").result, Status::Warning);
        assert!(by("no proxy is stale").error.contains("demo/d"));
        assert_eq!(
            by("every proxy certificate is from the current issuer").result,
            Status::Warning
        );
        assert_eq!(by("no proxy certificate expires").result, Status::Warning);
        let silent = by("every connected proxy reported within 60s");
        assert_eq!(silent.result, Status::Warning);
        assert!(silent.error.contains("demo/c last reported 90s ago"));
        // The issuer served has expired: the check says nothing serves.
        let mut lapsed = fleet(vec![]);
        lapsed.bundle.as_mut().unwrap().issuer_not_after = 990;
        lapsed.issuer_refused = Some("expired".into());
        let r = fleet_checks(&lapsed, std::time::Duration::from_secs(3600));
        let c = r
            .iter()
            .find(|c| c.description.starts_with("the control plane accepted"))
            .unwrap();
        assert_eq!(c.result, Status::Error);
        assert!(
            c.error
                .contains("no issuer is in force: the last one expired 10s ago (expired)")
                && c.hint.contains("--emergency"),
            "{c:?}"
        );
        let mut orphan = proxy("demo/e", 2, "connected");
        orphan.anchor_in_bundle = false;
        let v = fleet(vec![orphan]);
        let r = fleet_checks(&v, std::time::Duration::from_secs(3600));
        assert!(
            r.iter()
                .any(|c| c.result == Status::Error && c.error.contains("demo/e"))
        );
    }
}
