//! A gRPC watch as a stream: the first answer, then each different answer
//! computed after a change of the state it follows; a refusal ends the
//! stream with its status. Shared by WatchPort and OutboundPolicies.Watch.

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// `first` must have been computed from the value `state` has seen (read
/// with `borrow_and_update`), so no change between the two is missed.
pub fn changes<S, T>(
    mut state: watch::Receiver<S>,
    first: T,
    mut next: impl FnMut(&S) -> Result<T, Status> + Send + 'static,
) -> ReceiverStream<Result<T, Status>>
where
    S: Clone + Send + Sync + 'static,
    T: PartialEq + Clone + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut last = first;
        if tx.send(Ok(last.clone())).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
            let now = state.borrow_and_update().clone();
            match next(&now) {
                Ok(v) if v == last => {}
                Ok(v) => {
                    last = v;
                    if tx.send(Ok(last.clone())).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}
