//! Moving bytes both ways with half-close, counted.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::metrics::{ConnLabels, ProxyMetrics};

/// Copies until both directions are done; `a` is the peer the labels describe.
pub async fn pipe<A, B>(mut a: A, mut b: B, labels: ConnLabels, m: &ProxyMetrics)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    m.tcp_open.get_or_create(&labels).inc();
    match tokio::io::copy_bidirectional(&mut a, &mut b).await {
        Ok((from_a, from_b)) => {
            m.read_bytes.get_or_create(&labels).inc_by(from_a);
            m.write_bytes.get_or_create(&labels).inc_by(from_b);
        }
        Err(e) => tracing::debug!(error = %e, "connection ended with an error"),
    }
    m.tcp_close.get_or_create(&labels).inc();
}
