//! Listening sockets with an accept queue that holds a burst.
//!
//! tokio's `TcpListener::bind` asks for std's backlog of 128. A burst of
//! connections faster than one accept loop (a client opening a thousand at
//! once, a fleet reconnecting) overflowed it: the kernel dropped handshakes
//! and, with SYN cookies, reset connections a proxy had already dialled.
//! The kernel still caps the queue at `net.core.somaxconn`.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel may hold completed before they are accepted.
pub const BACKLOG: u32 = 4096;

/// A listener on `addr` (reusing the address, as tokio's bind does) with
/// `BACKLOG`.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More connections than std's backlog complete while nobody accepts.
    #[tokio::test]
    async fn a_burst_waits_in_the_queue_until_accepted() {
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let mut held = Vec::new();
        let burst = async {
            for _ in 0..300 {
                held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            }
        };
        // Past a full queue the kernel drops SYNs: connects stall for seconds.
        tokio::time::timeout(std::time::Duration::from_secs(10), burst)
            .await
            .expect("300 connections completed without an accept");
        for _ in 0..300 {
            l.accept().await.unwrap();
        }
    }
}
