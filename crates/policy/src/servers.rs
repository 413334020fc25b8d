//! Which Servers apply to a workload's port: one selection, shared by the
//! policy the proxy enforces and the opaque hint discovery gives clients.

use std::collections::BTreeSet;

use crate::resources::{Kind, Object, ProxyProtocol, Server, ServerPort, Snapshot, Workload};

/// The Servers in `w`'s namespace that select it on `port` (by number, or
/// by the name `w` gives the port), sorted by name: the first is in force
/// at a cold start when several claim the port.
pub fn servers_for<'a>(snap: &'a Snapshot, w: &Workload, port: u16) -> Vec<&'a Server> {
    let ns = w.namespace();
    let port_name = w.port_name(port);
    let mut servers: Vec<&Server> = snap
        .of_kind(Kind::Server)
        .filter_map(|s| match &s.object {
            Object::Server(s) => Some(s),
            _ => None,
        })
        .filter(|s| s.meta.namespace.as_deref() == Some(ns))
        .filter(|s| w.selected_by(s))
        .filter(|s| match &s.spec.port {
            ServerPort::Number(n) => *n == port,
            ServerPort::Name(n) => port_name == Some(n.as_str()),
        })
        .collect();
    servers.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
    servers
}

/// The ports of `w` whose Server in force declares `proxyProtocol: opaque`.
/// Discovery adds them to the opaque-ports annotation's, so a client proxy
/// does not wait to detect a protocol the server will not read (a server
/// that speaks first would wait for the detection timeout).
pub fn opaque_by_server(snap: &Snapshot, w: &Workload) -> BTreeSet<u16> {
    let ns = w.namespace();
    let candidates: BTreeSet<u16> = snap
        .of_kind(Kind::Server)
        .filter_map(|s| match &s.object {
            Object::Server(s) if s.meta.namespace.as_deref() == Some(ns) => Some(s),
            _ => None,
        })
        .filter(|s| s.spec.proxy_protocol == ProxyProtocol::Opaque && w.selected_by(s))
        .flat_map(|s| match &s.spec.port {
            ServerPort::Number(n) => vec![*n],
            ServerPort::Name(n) => w
                .ports
                .iter()
                .filter(|(_, name)| name.as_deref() == Some(n.as_str()))
                .map(|(p, _)| *p)
                .collect(),
        })
        .collect();
    candidates
        .into_iter()
        .filter(|p| {
            servers_for(snap, w, *p)
                .first()
                .is_some_and(|s| s.spec.proxy_protocol == ProxyProtocol::Opaque)
        })
        .collect()
}
