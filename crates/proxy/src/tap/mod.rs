//! Tap: live request events for the control plane's `Tap.Observe` calls.
//! Nothing is built on the request path unless a tap is open (one atomic
//! load); each tap has a bounded channel, and an event that does not fit is
//! dropped and counted, so a slow reader never slows traffic.

pub mod body;
pub mod filter;
pub mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use hyper::Request;
use linkerd2_proxy_api::net::TcpAddress;
use linkerd2_proxy_api::tap::tap_event::{self, EndpointMeta, ProxyDirection, http as ev};
use linkerd2_proxy_api::tap::{Eos, TapEvent};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use filter::{Facts, Filter, Window};

/// Events a tap may have queued before new ones are dropped.
pub const QUEUE: usize = 512;

/// The label on the next delivered event saying how many were dropped
/// before it (the API has no field for it).
pub const DROPPED_LABEL: &str = "weft_dropped_before";

#[derive(Debug, Clone, Default)]
pub struct TapMetrics {
    pub events: Counter,
    pub dropped: Counter,
    pub open: Gauge,
}

impl TapMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "tap_events",
            "Tap events queued for a reader",
            self.events.clone(),
        );
        r.register(
            "tap_events_dropped",
            "Tap events dropped because a reader was not keeping up",
            self.dropped.clone(),
        );
        r.register("tap_open", "Taps open now", self.open.clone());
    }
}

/// The taps open on this proxy.
#[derive(Debug, Clone)]
pub struct Taps {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    open: AtomicUsize,
    taps: RwLock<Vec<Arc<Tap>>>,
    /// Linkerd's stream id: a random base per process, a counter.
    base: u32,
    next: AtomicU64,
    metrics: TapMetrics,
}

/// One open tap.
#[derive(Debug)]
pub struct Tap {
    filter: Filter,
    max_rps: Option<u32>,
    window: Mutex<Window>,
    /// Requests still to tap (the request's `limit`; None: no limit).
    remaining: Option<AtomicU64>,
    show_query: bool,
    tx: mpsc::Sender<TapEvent>,
    /// Dropped since the last event delivered.
    dropped: AtomicU64,
    metrics: TapMetrics,
}

/// What a reader asked for.
#[derive(Debug, Clone)]
pub struct Ask {
    pub filter: Filter,
    pub limit: Option<u64>,
    pub max_rps: Option<u32>,
    pub show_query: bool,
}

/// Unregisters its tap when dropped (the reader went away).
#[derive(Debug)]
pub struct Registration {
    taps: Taps,
    /// Weak: once the registry and the requests in flight let go of the tap
    /// (its limit was reached), its sender drops and the reader's stream ends.
    tap: std::sync::Weak<Tap>,
}

impl Registration {
    /// Dropped since the last call (for the label on the next event).
    pub fn take_dropped(&self) -> u64 {
        self.tap.upgrade().map_or(0, |t| t.take_dropped())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut taps = self
            .taps
            .inner
            .taps
            .write()
            .unwrap_or_else(|e| e.into_inner());
        taps.retain(|t| !std::ptr::eq(Arc::as_ptr(t), self.tap.as_ptr()));
        self.taps.publish(taps.len());
    }
}

/// This proxy, as its inbound tap events name the destination.
#[derive(Debug)]
pub struct Local {
    pub identity: pki::Identity,
    pub workload: String,
}

/// The connection a request came on, as tap events name it.
#[derive(Debug, Clone, Copy)]
pub struct ConnMeta<'a> {
    pub direction: ProxyDirection,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// `true` or the reason there was no TLS.
    pub tls: &'a str,
    pub client_id: Option<&'a pki::Identity>,
    pub server_id: Option<&'a pki::Identity>,
    pub workload: &'a str,
}

impl Taps {
    pub fn new(metrics: TapMetrics) -> Self {
        let mut b = [0u8; 4];
        let _ = rustls::crypto::aws_lc_rs::default_provider()
            .secure_random
            .fill(&mut b);
        Self {
            inner: Arc::new(Inner {
                open: AtomicUsize::new(0),
                taps: RwLock::new(Vec::new()),
                base: u32::from_be_bytes(b),
                next: AtomicU64::new(0),
                metrics,
            }),
        }
    }

    /// Opens a tap; events arrive on the receiver until the registration
    /// is dropped or the limit is reached.
    pub fn open(&self, ask: Ask) -> (Registration, mpsc::Receiver<TapEvent>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let tap = Arc::new(Tap {
            filter: ask.filter,
            max_rps: ask.max_rps,
            window: Mutex::new(Window::default()),
            remaining: ask.limit.map(AtomicU64::new),
            show_query: ask.show_query,
            tx,
            dropped: AtomicU64::new(0),
            metrics: self.inner.metrics.clone(),
        });
        let mut taps = self.inner.taps.write().unwrap_or_else(|e| e.into_inner());
        taps.push(tap.clone());
        self.publish(taps.len());
        drop(taps);
        let reg = Registration {
            taps: self.clone(),
            tap: Arc::downgrade(&tap),
        };
        (reg, rx)
    }

    fn remove(&self, tap: &Arc<Tap>) {
        let mut taps = self.inner.taps.write().unwrap_or_else(|e| e.into_inner());
        taps.retain(|t| !Arc::ptr_eq(t, tap));
        self.publish(taps.len());
    }

    fn publish(&self, open: usize) {
        self.inner.open.store(open, Ordering::Release);
        self.inner.metrics.open.set(open as i64);
    }

    /// The taps that take this request, with its request-init event sent;
    /// None (without allocating) when no tap is open or none matches.
    pub fn request<B>(&self, conn: &ConnMeta<'_>, req: &Request<B>) -> Option<Tapped> {
        if self.inner.open.load(Ordering::Acquire) == 0 {
            return None;
        }
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                req.headers()
                    .get(hyper::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        let server_id = conn.server_id.map(ToString::to_string);
        let facts = Facts {
            src: conn.src,
            dst: conn.dst,
            workload: conn.workload,
            server_id: server_id.as_deref(),
            method: req.method().as_str(),
            scheme: req.uri().scheme_str().unwrap_or("http"),
            authority,
            path: filter::shown_path(pq, false),
        };
        let now = Instant::now();
        let taken: Vec<Arc<Tap>> = {
            let taps = self.inner.taps.read().unwrap_or_else(|e| e.into_inner());
            taps.iter()
                .filter(|t| t.takes(&facts, now))
                .cloned()
                .collect()
        };
        for t in taken.iter().filter(|t| t.spent()) {
            self.remove(t);
        }
        if taken.is_empty() {
            return None;
        }
        let id = ev::StreamId {
            base: self.inner.base,
            stream: self.inner.next.fetch_add(1, Ordering::Relaxed),
        };
        let template = template(conn);
        for t in &taken {
            let init = ev::RequestInit {
                id: Some(id),
                method: Some(req.method().clone().into()),
                scheme: Some(facts.scheme.into()),
                authority: authority.to_string(),
                path: filter::shown_path(pq, t.show_query).to_string(),
                headers: None,
            };
            t.send(with(&template, ev::Event::RequestInit(init)));
        }
        Some(Tapped {
            taps: taken,
            template,
            id,
            start: now,
        })
    }
}

impl Tap {
    /// Matches, and admitted under the rate and the limit.
    fn takes(&self, facts: &Facts<'_>, now: Instant) -> bool {
        if !filter::matches(&self.filter, facts) {
            return false;
        }
        // The rate first: a request it turns away must not use up the limit.
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if !filter::admit(&mut w, self.max_rps, now) {
            return false;
        }
        drop(w);
        self.remaining.as_ref().is_none_or(|r| {
            r.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
        })
    }

    /// Its limit is used up: no more requests are tapped.
    fn spent(&self) -> bool {
        self.remaining
            .as_ref()
            .is_some_and(|r| r.load(Ordering::Acquire) == 0)
    }

    /// Queues an event, or drops and counts it when the reader is behind.
    fn send(&self, e: TapEvent) {
        match self.tx.try_send(e) {
            Ok(()) => {
                self.metrics.events.inc();
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.metrics.dropped.inc();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Dropped since the last call (for the label on the next event).
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

/// A tapped request in flight.
#[derive(Debug)]
pub struct Tapped {
    taps: Vec<Arc<Tap>>,
    template: TapEvent,
    id: ev::StreamId,
    start: Instant,
}

impl Tapped {
    /// Sends response-init; the returned end sends response-end when the
    /// body is done (or dropped).
    pub fn response(self, status: u16, grpc_status: Option<u32>) -> body::End {
        let since = self.start.elapsed();
        let init = ev::ResponseInit {
            id: Some(self.id),
            since_request_init: since.try_into().ok(),
            http_status: u32::from(status),
            headers: None,
        };
        for t in &self.taps {
            t.send(with(&self.template, ev::Event::ResponseInit(init.clone())));
        }
        body::End::new(self, grpc_status)
    }

    fn end(&self, bytes: u64, since_rsp: std::time::Duration, eos: Option<Eos>) {
        let end = ev::ResponseEnd {
            id: Some(self.id),
            since_request_init: self.start.elapsed().try_into().ok(),
            since_response_init: since_rsp.try_into().ok(),
            response_bytes: bytes,
            eos,
            trailers: None,
        };
        for t in &self.taps {
            t.send(with(&self.template, ev::Event::ResponseEnd(end.clone())));
        }
    }
}

fn addr(a: SocketAddr) -> TcpAddress {
    TcpAddress {
        ip: Some(a.ip().into()),
        port: u32::from(a.port()),
    }
}

/// The event's connection part, shared by a request's events.
fn template(c: &ConnMeta<'_>) -> TapEvent {
    let mut src = HashMap::from([("tls".to_string(), c.tls.to_string())]);
    if let Some(id) = c.client_id {
        src.insert("client_id".into(), id.to_string());
    }
    let mut dst = HashMap::from([("workload".to_string(), c.workload.to_string())]);
    if let Some(id) = c.server_id {
        dst.insert("server_id".into(), id.to_string());
    }
    TapEvent {
        source: Some(addr(c.src)),
        source_meta: Some(EndpointMeta { labels: src }),
        route_meta: None,
        destination: Some(addr(c.dst)),
        destination_meta: Some(EndpointMeta { labels: dst }),
        proxy_direction: c.direction as i32,
        event: None,
    }
}

fn with(t: &TapEvent, e: ev::Event) -> TapEvent {
    TapEvent {
        event: Some(tap_event::Event::Http(tap_event::Http { event: Some(e) })),
        ..t.clone()
    }
}

#[cfg(test)]
#[path = "tap_tests.rs"]
mod tests;
