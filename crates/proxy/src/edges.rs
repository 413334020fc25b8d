//! The edges this proxy has seen (who talked to whom, with or without
//! mTLS), counted since it started and reported on the mesh stream, so
//! `weft edges` can show every hop and prove none was plaintext. Bounded:
//! at most `MAX_EDGES` are kept; the rest are counted as dropped, never lost
//! silently (the control plane treats drops as "cannot prove").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_api::v1::Edge;

/// Edges one proxy keeps at most.
pub const MAX_EDGES: usize = 256;
/// An edge idle this long may make room for a new one: no window
/// `weft edges --since` can ask about reaches back that far.
pub const FORGET_IDLE: Duration = Duration::from_secs(3600);

/// Who the peer was: its identity when it proved one, else its address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub inbound: bool,
    pub peer_identity: Option<pki::Identity>,
    /// An IP inbound (never the ephemeral port: that would make every
    /// connection a new edge), IP:port outbound; empty with an identity.
    pub peer_addr: String,
    pub mtls: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub connections: u64,
    pub requests: u64,
    pub failures: u64,
    pub no_tls_reason: String,
}

struct Entry {
    counts: Counts,
    last: Instant,
}

#[derive(Default)]
struct Table {
    map: HashMap<Key, Entry>,
    dropped: u64,
}

/// Shared by the listeners that see connections and the mesh link that
/// reports them.
#[derive(Clone, Default)]
pub struct Edges(Arc<Mutex<Table>>);

/// The key of an inbound client: its identity with mTLS, else its IP.
pub fn inbound_key(client: &policy::Client) -> Key {
    Key {
        inbound: true,
        peer_identity: client.identity.clone(),
        peer_addr: match client.identity {
            Some(_) => String::new(),
            None => client.ip.to_string(),
        },
        mtls: client.tls && client.identity.is_some(),
    }
}

impl Edges {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `f` to the edge's counts, making room (or counting a drop)
    /// when it is new and the table is full.
    fn with(&self, key: Key, now: Instant, f: impl FnOnce(&mut Counts)) {
        let mut t = self.lock();
        if !t.map.contains_key(&key) && t.map.len() >= MAX_EDGES {
            t.map
                .retain(|_, e| now.saturating_duration_since(e.last) < FORGET_IDLE);
            if t.map.len() >= MAX_EDGES {
                t.dropped += 1;
                return;
            }
        }
        let e = t.map.entry(key).or_insert_with(|| Entry {
            counts: Counts::default(),
            last: now,
        });
        e.last = now;
        f(&mut e.counts);
    }

    /// An inbound connection from `client`; `no_tls_reason` empty with mTLS.
    pub fn inbound(&self, client: &policy::Client, no_tls_reason: &str) {
        self.with(inbound_key(client), Instant::now(), |c| {
            c.connections += 1;
            if c.no_tls_reason.is_empty() {
                c.no_tls_reason = no_tls_reason.to_string();
            }
        });
    }

    /// An inbound HTTP request from `client`, answered with `status`.
    pub fn request(&self, client: &policy::Client, status: u16) {
        self.with(inbound_key(client), Instant::now(), |c| {
            c.requests += 1;
            if status >= 500 {
                c.failures += 1;
            }
        });
    }

    /// A plaintext connection out to an unmeshed `addr`.
    pub fn outbound_plain(&self, addr: std::net::SocketAddr, no_tls_reason: &str) {
        let key = Key {
            inbound: false,
            peer_identity: None,
            peer_addr: addr.to_string(),
            mtls: false,
        };
        self.with(key, Instant::now(), |c| {
            c.connections += 1;
            c.no_tls_reason = no_tls_reason.to_string();
        });
    }

    /// Every edge kept (cumulative counts) and how many could not be kept.
    pub fn report(&self) -> (Vec<Edge>, u64) {
        let t = self.lock();
        let edges = t
            .map
            .iter()
            .map(|(k, e)| Edge {
                inbound: k.inbound,
                peer_identity: k
                    .peer_identity
                    .as_ref()
                    .map(|i| i.to_string())
                    .unwrap_or_default(),
                peer_addr: k.peer_addr.clone(),
                mtls: k.mtls,
                no_tls_reason: e.counts.no_tls_reason.clone(),
                connections: e.counts.connections,
                requests: e.counts.requests,
                failures: e.counts.failures,
            })
            .collect();
        (edges, t.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(ip: &str, id: Option<&str>) -> policy::Client {
        policy::Client {
            identity: id.map(|i| i.parse().unwrap()),
            tls: id.is_some(),
            ip: ip.parse().unwrap(),
        }
    }

    #[test]
    fn counts_connections_and_requests_per_peer_not_per_port() {
        let e = Edges::default();
        let f = client(
            "10.0.0.2",
            Some("frontend.demo.serviceaccount.identity.weft.cluster.local"),
        );
        e.inbound(&f, "");
        e.inbound(&client("10.0.0.3", None), "not_provided_by_remote");
        e.request(&f, 200);
        e.request(&f, 503);
        let (mut edges, dropped) = e.report();
        edges.sort_by_key(|x| x.mtls);
        assert_eq!(dropped, 0);
        assert_eq!(edges.len(), 2);
        assert_eq!(edges[0].peer_addr, "10.0.0.3");
        assert!(!edges[0].mtls);
        assert_eq!(edges[0].no_tls_reason, "not_provided_by_remote");
        assert!(edges[1].mtls && edges[1].peer_addr.is_empty());
        assert_eq!(
            (edges[1].connections, edges[1].requests, edges[1].failures),
            (1, 2, 1)
        );
    }

    #[test]
    fn a_full_table_counts_drops_and_keeps_what_it_has() {
        let e = Edges::default();
        for i in 0..MAX_EDGES + 5 {
            let ip = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256);
            e.inbound(&client(&ip, None), "not_provided_by_remote");
        }
        let (edges, dropped) = e.report();
        assert_eq!(edges.len(), MAX_EDGES);
        assert_eq!(dropped, 5);
        // A known edge still counts when the table is full.
        e.inbound(&client("10.0.0.0", None), "not_provided_by_remote");
        let (edges, dropped) = e.report();
        assert_eq!(dropped, 5);
        let first = edges.iter().find(|x| x.peer_addr == "10.0.0.0").unwrap();
        assert_eq!(first.connections, 2);
    }

    #[test]
    fn idle_edges_make_room() {
        let e = Edges::default();
        for i in 0..MAX_EDGES {
            e.inbound(
                &client(&format!("10.1.{}.{}", i / 256, i % 256), None),
                "not_provided_by_remote",
            );
        }
        let later = Instant::now() + FORGET_IDLE + Duration::from_secs(1);
        let key = inbound_key(&client("10.9.9.9", None));
        e.with(key, later, |c| c.connections += 1);
        let (edges, dropped) = e.report();
        assert_eq!(dropped, 0);
        assert_eq!(edges.len(), 1);
    }
}
