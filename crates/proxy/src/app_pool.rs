//! HTTP/1 connections to the application for requests a client proxy
//! carried as HTTP/2 (`orig_proto`): one HTTP/2 connection holds many
//! requests at once, and HTTP/1 serves one at a time per connection, so
//! each request takes an idle connection or opens one, and gives it back
//! once its response is done.

use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::http::{H1Sender, connect_h1};

/// Idle connections kept per inbound HTTP/2 connection; more are closed.
const MAX_IDLE: usize = 32;

pub struct AppPool {
    port: u16,
    idle: Mutex<Vec<H1Sender>>,
}

impl AppPool {
    pub fn new(port: u16) -> Arc<Self> {
        Arc::new(Self {
            port,
            idle: Mutex::default(),
        })
    }

    fn take(&self) -> Option<H1Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(s) = idle.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    fn give_back(&self, s: H1Sender) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(s);
        }
    }

    /// Sends `req` to the application. An idle connection the application
    /// closed before the request was written is replaced by a new one.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, String> {
        let mut req = req;
        loop {
            let (mut sender, reused) = match self.take() {
                Some(s) => (s, true),
                None => (connect_h1(self.port).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let pool = self.clone();
                    tokio::spawn(async move {
                        // Ready again once the response body is done (and
                        // never after `Connection: close`).
                        if sender.ready().await.is_ok() {
                            pool.give_back(sender);
                        }
                    });
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => req = r,
                    _ => return Err(e.into_error().to_string()),
                },
            }
        }
    }
}
