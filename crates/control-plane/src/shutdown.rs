//! Control-plane shutdown: stop accepting, GOAWAY to every connection,
//! streams may go on for the grace period, then what remains is closed.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// What a shutdown stops: the accept loops, the servers (GOAWAY), and,
/// after the grace period, the connections still open.
pub struct Handles {
    /// The accept loops: aborting them closes the listeners.
    pub accepting: tokio::task::JoinSet<()>,
    /// The servers' graceful-shutdown signal (GOAWAY).
    pub stop: watch::Sender<bool>,
    /// Closes the connections still open.
    pub close: watch::Sender<bool>,
    pub grace: Duration,
}

/// Runs `servers` until they end or `shutdown` resolves. Then: stop
/// accepting, GOAWAY on every connection (tonic's graceful shutdown), let
/// streams go on for the grace period, close the connections still open.
pub async fn stop_after_grace<T>(
    servers: impl Future<Output = T>,
    shutdown: impl Future<Output = ()>,
    mut h: Handles,
) -> Option<T> {
    tokio::pin!(servers);
    tokio::select! {
        ends = &mut servers => return Some(ends),
        () = shutdown => {}
    }
    h.accepting.abort_all();
    let _ = h.stop.send(true);
    tracing::info!(
        grace_s = h.grace.as_secs_f64(),
        "shutting down: not accepting, GOAWAY sent; streams may go on for the grace period"
    );
    if let Ok(ends) = tokio::time::timeout(h.grace, &mut servers).await {
        return Some(ends);
    }
    tracing::warn!("grace period over; closing the connections still open");
    let _ = h.close.send(true);
    // Closed connections fail at their next poll; do not wait on one that
    // does not (the caller then stops, which drops it).
    tokio::time::timeout(CLOSE_WAIT, servers).await.ok()
}

/// How long closing the connections left after the grace period may take.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn streams_get_the_grace_period_then_their_connections_close() {
        let (stop, stop_rx) = watch::channel(false);
        let (close, mut close_rx) = watch::channel(false);
        let start = Instant::now();
        // A server holding a stream that never ends by itself.
        let servers = async move {
            let _ = close_rx.wait_for(|c| *c).await;
            start.elapsed()
        };
        let h = Handles {
            accepting: tokio::task::JoinSet::new(),
            stop,
            close,
            grace: Duration::from_secs(10),
        };
        let ended = stop_after_grace(servers, async {}, h).await;
        assert!(*stop_rx.borrow(), "GOAWAY was not signalled");
        assert_eq!(ended, Some(Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn servers_that_finish_in_the_grace_period_are_not_cut() {
        let (stop, mut stop_rx) = watch::channel(false);
        let (close, close_rx) = watch::channel(false);
        let servers = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            "drained"
        };
        let h = Handles {
            accepting: tokio::task::JoinSet::new(),
            stop,
            close,
            grace: Duration::from_secs(10),
        };
        assert_eq!(
            stop_after_grace(servers, async {}, h).await,
            Some("drained")
        );
        assert!(!*close_rx.borrow());
    }
}
