//! `weft rotate trust-anchor abort`: back to the previous safe state from
//! any phase, one phase at a time (activate → prepared, retire →
//! activated, prepare → no rotation); the old anchor stays until retire.

use std::collections::BTreeSet;

use serde_json::json;

use super::anchor::{begin, expect, put_bundle};
use super::plan::{self, Admit, Command};
use super::progress::Events;
use super::state::Phase;
use super::store::Store;
use super::{InForce, put_in_force};
use crate::cli::{CmdResult, Failure};

pub fn abort<S: Store>(a: &S) -> CmdResult {
    let (_lock, r, _, ev) = begin(a, Command::Abort)?;
    let Some(mut r) = r else {
        return Err(Failure::input(plan::PlanError::NoRotation("abort")));
    };
    let from = r.phase;
    let expected = expect(a, &mut r, Admit::Resume)?;
    match from {
        Phase::Preparing | Phase::Prepared => {
            let old = (r.old_anchors_pem.as_str(), r.old_anchors.as_slice());
            bundle_back(a, &ev, old, &expected, "the old bundle")?;
            a.clear()?;
        }
        Phase::Activating | Phase::Activated => {
            let old = a.kept_issuer()?;
            let label = std::path::PathBuf::from("the issuer kept by activate");
            let certs = pki::parse_certs(&label, &old.0).map_err(Failure::fatal)?;
            let fp = certs
                .first()
                .map(|c| pki::fingerprint(c))
                .unwrap_or_default();
            put_in_force(a, &fp, &old, &expected, &ev, "the old issuer").map_err(|e| match e {
                InForce::PutBack(f) | InForce::After(f) => f,
            })?;
            r.phase = Phase::Prepared;
            r.new_issuer = None;
            a.save(&r)?;
        }
        Phase::Retiring | Phase::Retired => {
            let both = plan::anchors_for(Some(Phase::Activated), &r);
            let what = "the bundle holding both anchors";
            bundle_back(a, &ev, (&r.both_pem(), &both), &expected, what)?;
            r.phase = Phase::Activated;
            a.save(&r)?;
        }
    }
    let now = plan::back_to(from);
    ev.say(
        "aborted",
        json!({"from": from.name(), "phase": now.map(Phase::name)}),
        &match now {
            None => "aborted: the bundle is the old anchors alone; no rotation is in progress".into(),
            Some(p) => format!(
                "aborted {}: back to phase {} (the old anchor stays in the bundle); `weft rotate trust-anchor abort` again goes back further",
                from.name(),
                p.name()
            ),
        },
    );
    Ok(())
}

/// Abort's bundle change: a refusal leaves everything as it was.
fn bundle_back(
    a: &impl Store,
    ev: &Events,
    bundle: (&str, &[String]),
    expected: &BTreeSet<String>,
    what: &str,
) -> CmdResult {
    put_bundle(a, ev, bundle, expected, what).map_err(|e| match e {
        Ok(why) => Failure::fatal(format!("{why}; re-run abort once it is fixed")),
        Err(f) => f,
    })
}
