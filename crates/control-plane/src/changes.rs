//! A gRPC watch as a stream: the first answer, then each different answer
//! computed after a change of the state it follows; a refusal ends the
//! stream with its status. Shared by WatchPort, OutboundPolicies.Watch and
//! the Destination watches.
//!
//! The stream computes an answer when the connection asks for the next
//! message, with no task or channel of its own: a watch costs a proxy's
//! stream little memory (a fleet holds thousands), a slow reader gets the
//! latest answer rather than a queue of stale ones, and a closed stream
//! stops following at once (it is dropped).

use std::collections::VecDeque;

use futures::stream::{BoxStream, StreamExt};
use tokio::sync::watch;
use tonic::Status;

/// The messages of one watch, as tonic sends them.
pub type Changes<T> = BoxStream<'static, Result<T, Status>>;

/// `first` must have been computed from the value `state` has seen (read
/// with `borrow_and_update`), so no change between the two is missed.
pub fn changes<S, T>(
    state: watch::Receiver<S>,
    first: T,
    mut next: impl FnMut(&S) -> Result<T, Status> + Send + 'static,
) -> Changes<T>
where
    S: Clone + Send + Sync + 'static,
    T: PartialEq + Clone + Send + 'static,
{
    let mut last = first.clone();
    follow(state, vec![first], move |now| match next(now) {
        Ok(v) if v == last => Ok(Vec::new()),
        Ok(v) => {
            last = v.clone();
            Ok(vec![v])
        }
        Err(e) => Err(e),
    })
}

/// Sends `first`, then after each change of `state` the messages `step`
/// makes of it (none: nothing to say); `step`'s refusal is sent and ends
/// the stream.
pub fn follow<S, T>(
    state: watch::Receiver<S>,
    first: Vec<T>,
    step: impl FnMut(&S) -> Result<Vec<T>, Status> + Send + 'static,
) -> Changes<T>
where
    S: Clone + Send + Sync + 'static,
    T: Send + 'static,
{
    let pending: VecDeque<Result<T, Status>> = first.into_iter().map(Ok).collect();
    futures::stream::unfold(
        (state, pending, step, false),
        |(mut state, mut pending, mut step, mut ended)| async move {
            loop {
                if let Some(m) = pending.pop_front() {
                    return Some((m, (state, pending, step, ended)));
                }
                if ended || state.changed().await.is_err() {
                    return None;
                }
                // A clone, so the sender is not held up while `step` works.
                let now = state.borrow_and_update().clone();
                match step(&now) {
                    Ok(ms) => pending.extend(ms.into_iter().map(Ok)),
                    Err(e) => {
                        pending.push_back(Err(e));
                        ended = true;
                    }
                }
            }
        },
    )
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_then_each_different_answer_then_the_refusal_ends_it() {
        let (tx, rx) = watch::channel(1u32);
        let mut s = changes(rx, 10u32, |n: &u32| {
            if *n >= 9 {
                Err(Status::not_found(format!("{n} is gone")))
            } else {
                Ok(n * 10 - (n % 2) * 10)
            }
        });
        assert_eq!(s.next().await.unwrap().unwrap(), 10);
        tx.send(2).unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), 20);
        // 3 gives 20 again: nothing is sent; 4 gives 40.
        tx.send(3).unwrap();
        assert!(futures::FutureExt::now_or_never(s.next()).is_none());
        tx.send(4).unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), 40);
        tx.send(9).unwrap();
        assert_eq!(s.next().await.unwrap().unwrap_err().message(), "9 is gone");
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn several_messages_per_change_and_the_end_of_the_state() {
        let (tx, rx) = watch::channel(0u8);
        let mut s = follow(rx, vec!["a", "b"], |n: &u8| {
            Ok(if *n == 1 { vec!["c", "d"] } else { vec![] })
        });
        for want in ["a", "b"] {
            assert_eq!(s.next().await.unwrap().unwrap(), want);
        }
        tx.send(1).unwrap();
        for want in ["c", "d"] {
            assert_eq!(s.next().await.unwrap().unwrap(), want);
        }
        drop(tx);
        assert!(s.next().await.is_none());
    }
}
