//! HTTP/1 connections to the application for requests a client proxy
//! carried as HTTP/2 (`orig_proto`): one HTTP/2 connection holds many
//! requests at once, and HTTP/1 serves one at a time per connection, so
//! each request takes a kept connection that is ready (its last response
//! done) or opens one. Readiness is read from the connection itself, so no
//! task per request waits to give a connection back.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::http::{H1Sender, connect_h1};

type Sent = Pin<
    Box<
        dyn Future<
                Output = Result<
                    Response<Incoming>,
                    hyper::client::conn::TrySendError<Request<Incoming>>,
                >,
            > + Send,
    >,
>;

/// Connections kept per inbound HTTP/2 connection (busy or idle); a request
/// that finds none ready beyond this gets a connection of its own.
const MAX_CONNS: usize = 32;

pub struct AppPool {
    port: u16,
    conns: Mutex<Vec<H1Sender>>,
}

impl AppPool {
    pub fn new(port: u16) -> Arc<Self> {
        Arc::new(Self {
            port,
            conns: Mutex::default(),
        })
    }

    /// Sends the request on a kept connection that is ready (its last
    /// response is done), dropping those the application closed; `None`
    /// (the request left in place) if none is.
    fn send_on_ready(&self, req: &mut Option<Request<Incoming>>) -> Option<Sent> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|s| !s.is_closed());
        let s = conns.iter_mut().find(|s| s.is_ready())?;
        Some(Box::pin(s.try_send_request(req.take()?)))
    }

    fn keep(&self, s: H1Sender) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns.len() < MAX_CONNS {
            conns.push(s);
        }
    }

    /// Sends `req` to the application. A kept connection the application
    /// closed before the request was written is replaced by a new one.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, String> {
        let mut req = Some(req);
        loop {
            let (sent, reused) = match self.send_on_ready(&mut req) {
                Some(sent) => (sent, true),
                None => {
                    let Some(r) = req.take() else {
                        return Err("the request was taken without being sent".into());
                    };
                    let mut s = connect_h1(self.port).await?;
                    let sent: Sent = Box::pin(s.try_send_request(r));
                    self.keep(s);
                    (sent, false)
                }
            };
            match sent.await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => req = Some(r),
                    _ => return Err(e.into_error().to_string()),
                },
            }
        }
    }
}
