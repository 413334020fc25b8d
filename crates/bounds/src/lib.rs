//! Every listener is bounded, so no client can starve another listener or
//! the data plane: a cap on open connections (sized so descriptors stay in
//! reserve), a deadline for the handshake, and an idle timeout (no bytes
//! either way). Each limit hit is counted by listener and reason.

mod admin;
mod idle;
mod listen;
pub mod retry;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use admin::{metrics, ready, text};
pub use idle::{Activity, Tracked, idle_for};
pub use listen::{BACKLOG, listen};

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; more are closed right after accept.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake (or the first bytes).
    pub handshake_timeout: Duration,
    /// A connection that moves no bytes for this long is closed.
    pub idle_timeout: Duration,
}

impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at most {} connections, handshake {:?}, idle {:?}",
            self.max_connections, self.handshake_timeout, self.idle_timeout
        )
    }
}

/// Why a connection was refused or closed by a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hit {
    Cap,
    HandshakeTimeout,
    IdleTimeout,
}

impl Hit {
    fn label(self) -> &'static str {
        match self {
            Self::Cap => "connection_cap",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::IdleTimeout => "idle_timeout",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HitLabels {
    listener: String,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

/// The metrics every gate of a process shares.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    hits: Family<HitLabels, Counter>,
    open: Family<ListenerLabel, Gauge>,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "listener_limit_hits",
            "Connections refused or closed by a listener limit, by listener and reason",
            self.hits.clone(),
        );
        registry.register(
            "listener_connections_open",
            "Connections open now, by listener",
            self.open.clone(),
        );
    }
}

/// Admission to one listener.
#[derive(Debug, Clone)]
pub struct Gate {
    name: &'static str,
    pub limits: Limits,
    slots: Arc<Semaphore>,
    metrics: Metrics,
}

/// Held for as long as an admitted connection is open.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl Gate {
    pub fn new(name: &'static str, limits: Limits, metrics: &Metrics) -> Self {
        Self {
            name,
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            metrics: metrics.clone(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// A slot for a new connection, or `None` (counted) when the listener is
    /// full: the caller closes the connection at once.
    pub fn admit(&self) -> Option<Admitted> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let open = self
                    .metrics
                    .open
                    .get_or_create(&ListenerLabel {
                        listener: self.name.into(),
                    })
                    .clone();
                open.inc();
                Some(Admitted {
                    _permit: permit,
                    open,
                })
            }
            Err(_) => {
                self.count(Hit::Cap);
                None
            }
        }
    }

    pub fn count(&self, hit: Hit) {
        self.metrics
            .hits
            .get_or_create(&HitLabels {
                listener: self.name.into(),
                reason: hit.label().into(),
            })
            .inc();
    }

    /// Runs `handshake` under the handshake deadline; a timeout is counted
    /// before the handshake (and the socket it owns) is dropped, so whoever
    /// sees the close also sees the count.
    pub async fn handshake<T, E>(
        &self,
        handshake: impl Future<Output = Result<T, E>>,
    ) -> Option<Result<T, E>> {
        let handshake = std::pin::pin!(handshake);
        match tokio::time::timeout(self.limits.handshake_timeout, handshake).await {
            Ok(r) => Some(r),
            Err(_) => {
                self.count(Hit::HandshakeTimeout);
                None
            }
        }
    }

    /// Runs a connection until it ends or moves no bytes for the idle
    /// timeout (then it is dropped, which closes it, and counted).
    pub async fn serve_until_idle<F: Future>(
        &self,
        activity: &Activity,
        conn: F,
    ) -> Option<F::Output> {
        // Pinned here, not inside select!, so the connection is dropped
        // after the count.
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            out = conn.as_mut() => Some(out),
            () = idle_for(activity, self.limits.idle_timeout) => {
                self.count(Hit::IdleTimeout);
                None
            }
        }
    }
}

/// Raises the open-file soft limit to the hard limit and returns the limit
/// in force: many connections need many descriptors.
pub fn raise_nofile() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// A listener's share of the descriptors: `fraction` of the limit, keeping
/// `reserve` for everything else the process needs, never below `floor`.
pub fn share_of(nofile: u64, fraction: f64, reserve: u64, floor: usize) -> usize {
    let usable = nofile.saturating_sub(reserve) as f64 * fraction;
    (usable as usize).max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max: usize) -> (Gate, Metrics) {
        let m = Metrics::default();
        let limits = Limits {
            max_connections: max,
            handshake_timeout: Duration::from_millis(50),
            idle_timeout: Duration::from_millis(50),
        };
        (Gate::new("test", limits, &m), m)
    }

    fn hits(m: &Metrics, reason: &str) -> u64 {
        m.hits
            .get_or_create(&HitLabels {
                listener: "test".into(),
                reason: reason.into(),
            })
            .get()
    }

    #[test]
    fn cap_refuses_and_frees_on_drop() {
        let (g, m) = gate(2);
        let a = g.admit().expect("first");
        let _b = g.admit().expect("second");
        assert!(g.admit().is_none());
        assert_eq!(hits(&m, "connection_cap"), 1);
        drop(a);
        assert!(g.admit().is_some());
    }

    #[tokio::test]
    async fn handshake_deadline_is_counted() {
        let (g, m) = gate(1);
        let r = g.handshake(std::future::pending::<Result<(), ()>>()).await;
        assert!(r.is_none());
        assert_eq!(hits(&m, "handshake_timeout"), 1);
        assert_eq!(g.handshake(async { Ok::<_, ()>(7) }).await, Some(Ok(7)));
    }

    #[test]
    fn shares_keep_a_reserve() {
        assert_eq!(share_of(1024, 0.5, 24, 16), 500);
        assert_eq!(share_of(64, 0.1, 100, 16), 16);
        assert_eq!(share_of(1_048_576, 0.05, 1024, 64), 52377);
    }
}
