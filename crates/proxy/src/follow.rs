//! One keyed stream from the control plane, kept open for as long as the
//! proxy runs: destination watches and policy watches are both this. The
//! stream rides the shared connection to its address, moves at once to a
//! new connection when the leaf or bundle changes, and after a failure
//! comes back with jittered backoff, to another replica first.

use std::future::Future;

use tonic::Streaming;
use tonic::transport::Channel;

use crate::control::{ControlPlane, Lease, backoff, is_refusal};

/// What the follower hands its owner.
pub enum Event<M> {
    /// A stream was (re)opened: its first messages restate the whole answer.
    Opened,
    /// A message on the stream.
    Message(M),
    /// The control plane's answer was a refusal (the message says why).
    Refused(String),
}

enum End {
    /// The connection was replaced: re-open on the new one now.
    Moved,
    Refused(String),
    Transport(String),
}

fn classify(s: tonic::Status) -> End {
    if is_refusal(&s) {
        End::Refused(s.message().to_string())
    } else {
        End::Transport(format!("{:?}: {}", s.code(), s.message()))
    }
}

/// Follows the stream `open` makes on the connection to `addr`, forever.
/// `what` names it in logs.
pub async fn follow<M, O, F>(
    control: ControlPlane,
    addr: String,
    what: String,
    mut open: O,
    mut on: impl FnMut(Event<M>),
) where
    O: FnMut(Channel) -> F,
    F: Future<Output = Result<Streaming<M>, tonic::Status>>,
{
    let mut failures: u32 = 0;
    loop {
        match once(&control, &addr, &mut open, &mut on, &mut failures).await {
            End::Moved => {
                failures = 0;
                continue;
            }
            End::Refused(why) => {
                failures = failures.saturating_add(1);
                on(Event::Refused(why));
            }
            End::Transport(why) => {
                failures = failures.saturating_add(1);
                tracing::debug!(%what, error = %why, "stream lost; keeping the last answer");
            }
        }
        tokio::time::sleep(backoff(failures)).await;
    }
}

async fn once<M, O, F>(
    control: &ControlPlane,
    addr: &str,
    open: &mut O,
    on: &mut impl FnMut(Event<M>),
    failures: &mut u32,
) -> End
where
    O: FnMut(Channel) -> F,
    F: Future<Output = Result<Streaming<M>, tonic::Status>>,
{
    let lease = match control.channel(addr).await {
        Ok(c) => c,
        Err(e) => return End::Transport(e.to_string()),
    };
    let end = on_lease(control, &lease, open, on, failures).await;
    // A connection that failed under a stream: its replica goes last for
    // the next connection of every stream.
    if let End::Transport(why) = &end {
        control.failed(addr, &lease, why).await;
    }
    end
}

async fn on_lease<M, O, F>(
    control: &ControlPlane,
    lease: &Lease,
    open: &mut O,
    on: &mut impl FnMut(Event<M>),
    failures: &mut u32,
) -> End
where
    O: FnMut(Channel) -> F,
    F: Future<Output = Result<Streaming<M>, tonic::Status>>,
{
    let moved = control.moved(lease);
    tokio::pin!(moved);
    let mut stream = tokio::select! {
        s = open(lease.channel.clone()) => match s {
            Ok(s) => s,
            Err(s) => return classify(s),
        },
        () = &mut moved => return End::Moved,
    };
    on(Event::Opened);
    loop {
        tokio::select! {
            m = stream.message() => match m {
                Ok(Some(m)) => {
                    // A stream that answers is healthy: the next drop retries soon.
                    *failures = 0;
                    on(Event::Message(m));
                }
                Ok(None) => return End::Transport("stream ended".into()),
                Err(s) => return classify(s),
            },
            () = &mut moved => return End::Moved,
        }
    }
}
