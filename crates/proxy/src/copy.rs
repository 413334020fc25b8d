//! Forwarding both ways with half-close, with a buffer per direction that
//! starts small (an idle or chatty connection costs what it did) and grows
//! once a read fills it (bulk): fewer syscalls and full 16 KiB TLS records,
//! as the peers move. Bounded either way, so a stalled reader holds at most
//! `MAX` per direction in the proxy (backpressure does the rest).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The first buffer: what tokio's `copy_bidirectional` uses.
const START: usize = 8 * 1024;
/// After a read filled the buffer: four full TLS records per write.
pub const MAX: usize = 64 * 1024;

/// One direction's state: bytes read and not yet written are `buf[pos..end]`.
struct Half {
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// The last read filled the buffer: grow before the next one.
    grow: bool,
    read_done: bool,
    need_flush: bool,
    done: bool,
    amount: u64,
}

impl Half {
    fn new() -> Self {
        Self {
            buf: vec![0; START].into_boxed_slice(),
            pos: 0,
            end: 0,
            grow: false,
            read_done: false,
            need_flush: false,
            done: false,
            amount: 0,
        }
    }

    /// Reads into the (emptied) buffer, first growing it if the last read
    /// filled it; marks the end of the stream.
    fn poll_fill<R: AsyncRead + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        r: Pin<&mut R>,
    ) -> Poll<io::Result<()>> {
        if self.grow && self.buf.len() < MAX {
            self.buf = vec![0; MAX].into_boxed_slice();
            self.grow = false;
        }
        let mut rb = ReadBuf::new(&mut self.buf);
        ready!(r.poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if n == 0 {
            self.read_done = true;
        } else {
            self.pos = 0;
            self.end = n;
            self.grow = n == self.buf.len();
        }
        Poll::Ready(Ok(()))
    }

    /// Copies until the reader ends, then flushes and shuts the writer down
    /// (half-close). Ready with the bytes moved.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.end && !self.read_done {
                match self.poll_fill(cx, r.as_mut()) {
                    Poll::Ready(res) => res?,
                    Poll::Pending => {
                        // Nothing more to read now: push out what was written.
                        if self.need_flush {
                            ready!(w.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.end {
                let n = ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.amount += n as u64;
                self.need_flush = true;
            }
            if self.read_done {
                ready!(w.as_mut().poll_flush(cx))?;
                ready!(w.as_mut().poll_shutdown(cx))?;
                return Poll::Ready(Ok(self.amount));
            }
        }
    }
}

/// Copies `a` to `b` and `b` to `a` until both readers ended, shutting each
/// writer down when its reader ends. Returns (bytes a→b, bytes b→a); an
/// error in either direction ends both.
pub async fn bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut ab, mut ba) = (Half::new(), Half::new());
    poll_fn(|cx| {
        if !ab.done
            && let Poll::Ready(r) = ab.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))
        {
            r?;
            ab.done = true;
        }
        if !ba.done
            && let Poll::Ready(r) = ba.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))
        {
            r?;
            ba.done = true;
        }
        if ab.done && ba.done {
            Poll::Ready(Ok((ab.amount, ba.amount)))
        } else {
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn both_ways_with_half_close_and_growth() {
        let (client, mut proxy_a) = tokio::io::duplex(1 << 16);
        let (mut proxy_b, server) = tokio::io::duplex(1 << 16);
        let copy = tokio::spawn(async move { bidirectional(&mut proxy_a, &mut proxy_b).await });
        let up: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
        // Each end writes all, half-closes, and reads all, at once.
        let end = |io: tokio::io::DuplexStream, data: Vec<u8>| {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(io);
                let writer = tokio::spawn(async move {
                    w.write_all(&data).await.unwrap();
                    w.shutdown().await.unwrap();
                });
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                writer.await.unwrap();
                got
            })
        };
        let (c, s) = (end(client, up.clone()), end(server, down.clone()));
        assert_eq!(c.await.unwrap(), down);
        assert_eq!(s.await.unwrap(), up);
        let (ab, ba) = copy.await.unwrap().unwrap();
        assert_eq!((ab, ba), (up.len() as u64, down.len() as u64));
    }
}
