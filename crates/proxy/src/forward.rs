//! Moving bytes both ways with half-close, counted (buffers: `copy`).

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::metrics::{ConnLabels, ProxyMetrics};

/// Copies until both directions are done; `a` is the peer the labels describe.
pub async fn pipe<A, B>(a: A, b: B, labels: ConnLabels, m: &ProxyMetrics)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    pipe_until(a, b, labels, m, std::future::pending()).await;
}

/// As `pipe`, but `stop` resolving closes both sides at once (e.g. a policy
/// change that now denies the connection). Returns whether it was stopped.
pub async fn pipe_until<A, B>(
    mut a: A,
    mut b: B,
    labels: ConnLabels,
    m: &ProxyMetrics,
    stop: impl Future<Output = ()>,
) -> bool
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    m.tcp_open.get_or_create(&labels).inc();
    let stopped = tokio::select! {
        r = crate::copy::bidirectional(&mut a, &mut b) => {
            match r {
                Ok((from_a, from_b)) => {
                    m.read_bytes.get_or_create(&labels).inc_by(from_a);
                    m.write_bytes.get_or_create(&labels).inc_by(from_b);
                }
                Err(e) => tracing::debug!(error = %e, "connection ended with an error"),
            }
            false
        }
        () = stop => true,
    };
    m.tcp_close.get_or_create(&labels).inc();
    stopped
}
