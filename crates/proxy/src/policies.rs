//! Inbound policy from the control plane: one `WatchPort` stream per port of
//! this workload, kept current for as long as the proxy runs.
//!
//! A new port waits briefly for its first policy, then uses the last default
//! the control plane sent for this workload, else denies. A stream that drops
//! keeps the last policy in force; a refusal (the workload is unknown or not
//! ours) replaces it with a denial: never "allow" on an error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use linkerd2_proxy_api::inbound::PortSpec;
use linkerd2_proxy_api::inbound::inbound_server_policies_client::InboundServerPoliciesClient;
use policy::Server;
use tokio::sync::watch;

use crate::control::ControlPlane;
use crate::follow::Event;

pub type PolicyRx = watch::Receiver<Option<Arc<Server>>>;

/// Ports followed at once; beyond this the least recently used one that no
/// connection is using is dropped.
const MAX_PORTS: usize = 1024;

struct Slot {
    /// Connections subscribe here; its receiver count is how many use it.
    tx: watch::Sender<Option<Arc<Server>>>,
    task: tokio::task::AbortHandle,
    used: Instant,
}

/// How the policy in force for a connection was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    ControlPlane,
    /// No answer in time: the last default the control plane sent.
    LastDefault,
    /// No answer in time and no default known.
    Deny,
}

/// A port's policy as the proxy holds it now.
#[derive(Debug, Clone)]
pub enum Held {
    /// Followed, and the control plane's latest answer.
    Current(Arc<Server>),
    /// Followed, no answer yet: connections wait, then use the last default or deny.
    Waiting,
    /// No connection has arrived on the port; the last default the control
    /// plane sent (what a first connection would get without an answer).
    NotFollowed(Option<Arc<Server>>),
}

pub struct Policies {
    pub addr: String,
    pub control: ControlPlane,
    /// `{"ns":..,"external_workload":..}` or `{"ns":..,"pod":..}`
    pub workload: String,
    pub timeout: Duration,
    ports: Mutex<HashMap<u16, Slot>>,
    last_default: Mutex<Option<Arc<Server>>>,
}

/// The server that denies everything; `why` is logged where it is used.
pub fn deny_server(_why: &str) -> Server {
    Server::deny()
}

impl Policies {
    pub fn new(
        addr: String,
        control: ControlPlane,
        workload: &crate::WorkloadRef,
        timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            addr,
            control,
            workload: workload.policy_json(),
            timeout,
            ports: Mutex::new(HashMap::new()),
            last_default: Mutex::new(None),
        })
    }

    /// The policy for `port` now, where it came from, and a receiver that
    /// sees every later change (to re-judge open connections).
    pub async fn port(self: &Arc<Self>, port: u16) -> (Arc<Server>, Source, PolicyRx) {
        let mut rx = self.follow_port(port);
        let first = tokio::time::timeout(self.timeout, rx.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|s| s.clone()));
        if let Some(s) = first {
            return (s, Source::ControlPlane, rx);
        }
        let fallback = self
            .last_default
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match fallback {
            Some(s) => (s, Source::LastDefault, rx),
            None => (
                Arc::new(deny_server("no policy from the control plane yet")),
                Source::Deny,
                rx,
            ),
        }
    }

    /// What this proxy holds for `port` now, without following it: the
    /// admin endpoint's answer (`weft diagnostics policy`).
    pub fn held(&self, port: u16) -> Held {
        let ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        match ports.get(&port).map(|s| s.tx.borrow().clone()) {
            Some(Some(s)) => Held::Current(s),
            Some(None) => Held::Waiting,
            None => Held::NotFollowed(
                self.last_default
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            ),
        }
    }

    fn follow_port(self: &Arc<Self>, port: u16) -> PolicyRx {
        let mut ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = ports.get_mut(&port) {
            slot.used = Instant::now();
            return slot.tx.subscribe();
        }
        if ports.len() >= MAX_PORTS {
            // Only a port no connection is using may be forgotten: one in use
            // must keep telling its connections about policy changes.
            let idle = ports
                .iter()
                .filter(|(_, s)| s.tx.receiver_count() == 0)
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| *k);
            match idle.and_then(|k| ports.remove(&k)) {
                Some(old) => old.task.abort(),
                None => {
                    tracing::warn!(
                        port,
                        max = MAX_PORTS,
                        "too many ports in use at once to follow another one's policy; denying"
                    );
                    let (_, rx) = watch::channel(Some(Arc::new(deny_server(
                        "too many ports in use at once",
                    ))));
                    return rx;
                }
            }
        }
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(self.clone().follow(port, tx.clone())).abort_handle();
        ports.insert(
            port,
            Slot {
                tx,
                task,
                used: Instant::now(),
            },
        );
        rx
    }

    async fn follow(self: Arc<Self>, port: u16, tx: watch::Sender<Option<Arc<Server>>>) {
        let workload = self.workload.clone();
        let open = move |channel| {
            let workload = workload.clone();
            async move {
                InboundServerPoliciesClient::new(channel)
                    .watch_port(PortSpec {
                        workload,
                        port: u32::from(port),
                    })
                    .await
                    .map(tonic::Response::into_inner)
            }
        };
        let on = |event| match event {
            Event::Opened => {}
            Event::Message(server) => self.take(port, server, &tx),
            Event::Refused(why) => {
                tracing::warn!(
                    port,
                    "the control plane refused this port's policy: {why}; denying"
                );
                tx.send_replace(Some(Arc::new(deny_server(&why))));
            }
        };
        let what = format!("policy for port {port}");
        crate::follow::follow(self.control.clone(), self.addr.clone(), what, open, on).await;
    }

    /// A policy from the control plane, converted once on receipt: in force
    /// for the port, and remembered as the last default when it is one.
    fn take(
        &self,
        port: u16,
        message: linkerd2_proxy_api::inbound::Server,
        tx: &watch::Sender<Option<Arc<Server>>>,
    ) {
        let Some(server) = receive(port, message, tx) else {
            return;
        };
        if server.is_default() {
            *self.last_default.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Arc::new(server.clone()));
        }
        tx.send_if_modified(|cur| {
            let changed = cur.as_deref() != Some(&server);
            if changed {
                tracing::info!(port, server = %server.name, "inbound policy updated");
                *cur = Some(Arc::new(server));
            }
            changed
        });
    }
}

/// Converts a message once, where it arrives. A malformed one is refused
/// and logged: the last good policy stays, or deny if there is none.
fn receive(
    port: u16,
    message: linkerd2_proxy_api::inbound::Server,
    tx: &watch::Sender<Option<Arc<Server>>>,
) -> Option<Server> {
    match Server::try_from(message) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(port, error = %e, "refused a malformed policy from the control plane; keeping the last good one (deny if none)");
            tx.send_if_modified(|cur| {
                let none = cur.is_none();
                if none {
                    *cur = Some(Arc::new(Server::deny()));
                }
                none
            });
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control plane that never answers: the proxy has no certificate.
    fn silent() -> Arc<Policies> {
        let (_tx, own) = watch::channel(None);
        let now = time::OffsetDateTime::now_utc();
        let root = pki::create::create(
            &pki::create::NewCert {
                subject: "root".into(),
                profile: pki::create::Profile::RootCa,
                sans: vec![],
                not_before: now,
                not_after: now + time::Duration::days(1),
                key: pki::create::KeySpec::EcdsaP256,
            },
            None,
        )
        .unwrap();
        let pem = pki::cert::to_pem(std::slice::from_ref(&root.cert));
        let (_, trust) = watch::channel(Arc::new(crate::trust::Trust::new(None, &pem).unwrap()));
        let control = ControlPlane::new(
            "weft-identity.weft.serviceaccount.identity.weft.cluster.local"
                .parse()
                .unwrap(),
            trust,
            own,
        )
        .unwrap();
        Policies::new(
            "127.0.0.1:1".into(),
            control,
            &"demo/backend".parse().unwrap(),
            Duration::from_millis(50),
        )
    }

    #[tokio::test]
    async fn no_answer_denies_then_uses_the_last_default() {
        let p = silent();
        assert_eq!(p.workload, r#"{"external_workload":"backend","ns":"demo"}"#);
        let (server, source, _) = p.port(8080).await;
        assert_eq!(source, Source::Deny);
        let c = policy::Client {
            identity: None,
            tls: false,
            ip: "10.0.0.1".parse().unwrap(),
        };
        let v = policy::judge(
            &server,
            policy::Facts::default(),
            &c,
            policy::Traffic::NotHttp,
        );
        assert!(!v.allowed);

        let mut default = deny_server("x");
        default.name.name = "all-unauthenticated".into();
        *p.last_default.lock().unwrap() = Some(Arc::new(default.clone()));
        let (server, source, _) = p.port(8081).await;
        assert_eq!(source, Source::LastDefault);
        assert_eq!(*server, default);
    }

    #[test]
    fn a_malformed_message_is_refused_and_the_last_good_policy_stays() {
        use linkerd2_proxy_api::inbound as api;
        let message = |protocol: bool| api::Server {
            protocol: protocol.then_some(api::ProxyProtocol {
                kind: Some(api::proxy_protocol::Kind::Opaque(
                    api::proxy_protocol::Opaque {},
                )),
            }),
            labels: [
                ("kind".to_string(), "server".to_string()),
                ("name".to_string(), "db".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        // Nothing yet: a malformed first message denies.
        let (tx, rx) = watch::channel(None);
        assert!(receive(5432, message(false), &tx).is_none());
        assert_eq!(rx.borrow().as_deref(), Some(&Server::deny()));
        // A good policy in force stays through a malformed one.
        let good = receive(5432, message(true), &tx).expect("well formed");
        tx.send_replace(Some(Arc::new(good.clone())));
        assert!(receive(5432, message(false), &tx).is_none());
        assert_eq!(rx.borrow().as_deref(), Some(&good));
    }

    #[test]
    fn resource_servers_are_not_defaults() {
        let mut s = deny_server("x");
        assert!(s.is_default());
        s.name.kind = "server".into();
        assert!(!s.is_default());
    }
}
