//! The coordination.k8s.io Lease `weft-control-plane`: the replica holding
//! it is the one that writes shared state (the bundle generation). It only
//! avoids duplicate work: every write is also a resourceVersion
//! compare-and-swap, so a holder that was paused past its lease and wakes
//! up believing it still holds it cannot do harm.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

pub const LEASE: &str = "weft-control-plane";
/// How long a holder's renewal is good for.
pub const DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews (and the others try to take it).
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// Until when (this process's monotonic clock) the lease is held; None:
/// not held. Measured from before the request that won it, so a pause
/// anywhere only shortens it.
pub type Held = Option<Instant>;

/// Whether the lease is held now, by `held`.
pub fn holds(held: &Held) -> bool {
    held.is_some_and(|until| Instant::now() < until)
}

/// Whether `me` may write the lease as its holder at `now`: it holds it,
/// nobody does, or the holder's renewal has run out. Pure, so it is tested.
pub fn may_take(spec: &LeaseSpec, me: &str, now: Timestamp) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == me {
        return true;
    }
    let Some(MicroTime(renewed)) = spec.renew_time else {
        return true;
    };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
    match renewed.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(secs)) {
        Ok(expiry) => expiry < now,
        Err(_) => false,
    }
}

/// This replica's name in the lease: the pod (or host) and the process.
pub fn holder_identity() -> String {
    let instance = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "weft-control-plane".into());
    let instance: String = instance.chars().take(100).collect();
    format!("{instance}/{}", std::process::id())
}

/// Takes or renews the lease every [`RENEW_EVERY`], publishing until when
/// it is held. Failures to reach the API leave the last value to run out.
pub async fn run(client: Client, namespace: String, me: String, tx: watch::Sender<Held>) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    loop {
        let asked = Instant::now();
        match acquire(&api, &me).await {
            Ok(true) => {
                if !holds(&tx.borrow()) {
                    tracing::info!(lease = LEASE, holder = %me, "holding the lease: this replica writes the bundle generation");
                }
                tx.send_replace(Some(asked + DURATION));
            }
            Ok(false) => {
                if tx.borrow().is_some() {
                    tracing::info!(lease = LEASE, "another replica holds the lease");
                }
                tx.send_replace(None);
            }
            Err(e) => tracing::warn!(
                lease = LEASE,
                error = %super::proofs::api_error(&e),
                "cannot take or renew the lease; retrying (the bundle generation is not written meanwhile)"
            ),
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

/// One attempt: create, renew or take over (compare-and-swap on
/// resourceVersion). Ok(false): another replica holds it.
async fn acquire(api: &Api<Lease>, me: &str) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let secs = i32::try_from(DURATION.as_secs()).unwrap_or(15);
    let Some(mut lease) = api.get_opt(LEASE).await? else {
        let fresh = Lease {
            metadata: ObjectMeta {
                name: Some(LEASE.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(me.into()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &fresh).await {
            Ok(_) => Ok(true),
            Err(e) if status(&e) == Some(409) => Ok(false),
            Err(e) => Err(e),
        };
    };
    let mut spec = lease.spec.take().unwrap_or_default();
    if !may_take(&spec, me, now) {
        return Ok(false);
    }
    if spec.holder_identity.as_deref() != Some(me) {
        spec.holder_identity = Some(me.into());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(secs);
    lease.spec = Some(spec);
    // The resourceVersion read above makes this a compare-and-swap.
    match api.replace(LEASE, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(e) if status(&e) == Some(409) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The HTTP status of an API refusal.
pub fn status(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed: Option<Timestamp>, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(Into::into),
            renew_time: renewed.map(MicroTime),
            lease_duration_seconds: Some(secs),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_is_taken_only_when_free_ours_or_run_out() {
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let later = |s: i64| {
            t.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(s))
                .unwrap()
        };
        assert!(may_take(&spec(None, None, 15), "a/1", t));
        assert!(may_take(&spec(Some(""), Some(t), 15), "a/1", t));
        assert!(may_take(&spec(Some("a/1"), Some(t), 15), "a/1", later(5)));
        assert!(!may_take(&spec(Some("b/2"), Some(t), 15), "a/1", later(5)));
        assert!(!may_take(&spec(Some("b/2"), Some(t), 15), "a/1", later(15)));
        assert!(may_take(&spec(Some("b/2"), Some(t), 15), "a/1", later(16)));
    }

    #[test]
    fn a_lease_held_runs_out_on_the_local_clock() {
        assert!(!holds(&None));
        assert!(holds(&Some(Instant::now() + Duration::from_secs(5))));
        assert!(!holds(&Some(Instant::now() - Duration::from_millis(1))));
    }
}
