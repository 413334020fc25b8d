//! The response body of a tapped request: counts its bytes and sends
//! response-end when it is done, failed, or dropped unfinished.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use linkerd2_proxy_api::tap::Eos;

use super::Tapped;

/// h2's CANCEL: the body was dropped (or failed) before its end.
const CANCEL: u32 = 0x8;

/// Sends response-end once.
#[derive(Debug)]
pub struct End {
    tapped: Option<Tapped>,
    rsp_at: Instant,
    bytes: u64,
    grpc_status: Option<u32>,
}

impl End {
    pub(super) fn new(tapped: Tapped, grpc_status: Option<u32>) -> Self {
        Self {
            tapped: Some(tapped),
            rsp_at: Instant::now(),
            bytes: 0,
            grpc_status,
        }
    }

    fn finish(&mut self, eos: Option<Eos>) {
        if let Some(t) = self.tapped.take() {
            t.end(self.bytes, self.rsp_at.elapsed(), eos);
        }
    }

    fn status_eos(&self) -> Option<Eos> {
        self.grpc_status.map(Eos::from_grpc_status)
    }
}

/// `grpc-status` of a header or trailer map, if it is a number.
pub fn grpc_status(h: &hyper::HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Wraps a response body; frames pass through unchanged.
pub struct TapBody<B: Body> {
    inner: B,
    end: End,
}

impl<B: Body> TapBody<B> {
    pub fn new(inner: B, end: End) -> Self {
        Self { inner, end }
    }
}

impl<B: Body> Drop for TapBody<B> {
    /// An empty body is never polled; one dropped before its end was reset.
    fn drop(&mut self) {
        let eos = if self.inner.is_end_stream() {
            self.end.status_eos()
        } else {
            Some(Eos {
                end: Some(linkerd2_proxy_api::tap::eos::End::ResetErrorCode(CANCEL)),
            })
        };
        self.end.finish(eos);
    }
}

impl<B> Body for TapBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.end.bytes += d.len() as u64;
                }
                if let Some(t) = f.trailers_ref() {
                    this.end.grpc_status = grpc_status(t).or(this.end.grpc_status);
                }
                if this.inner.is_end_stream() {
                    let eos = this.end.status_eos();
                    this.end.finish(eos);
                }
            }
            Poll::Ready(None) => {
                let eos = this.end.status_eos();
                this.end.finish(eos);
            }
            // Dropped with the body: response-end says it was reset.
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
