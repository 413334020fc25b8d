use super::*;
use crate::fleet::LastRefresh;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

fn proxy(workload: &str, state: &str, age: i64, serial: &str) -> ProxyView {
    ProxyView {
        workload: workload.into(),
        identity: format!(
            "{}.demo.serviceaccount.identity.weft.cluster.local",
            workload.rsplit('/').next().unwrap_or(workload)
        )
        .parse()
        .unwrap(),
        state: state.into(),
        for_s: 5,
        last_report_age_s: age,
        bundle: None,
        bundle_current: true,
        refused: None,
        leaf_serial: serial.into(),
        spki_sha256: "k".into(),
        issuer_sha256: "i".into(),
        issuer_current: true,
        anchor_sha256: "a".into(),
        anchor_in_bundle: true,
        not_after: 10_000,
        expires_in_s: 9_000,
        last_refresh: LastRefresh::Ok,
        renew_request_id: String::new(),
        admin_addr: String::new(),
        tls: None,
    }
}

fn view(now: i64, proxies: Vec<ProxyView>) -> FleetView {
    FleetView {
        now,
        bundle: None,
        proxies,
        unmanaged: vec![],
        peers: vec![],
        version: String::new(),
        issuer_refused: None,
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn a_proxy_connected_to_any_replica_shows_connected_newest_report_wins() {
    let local = view(
        100,
        vec![
            proxy("demo/a", "connected", 1, "a-local"),
            proxy("demo/b", "stale", 0, "b-old"),
            proxy("demo/c", "connected", 10, "c-old"),
        ],
    );
    let peer = Ok((
        "peer".to_string(),
        100,
        vec![
            proxy("demo/b", "connected", 5, "b-new"),
            proxy("demo/c", "connected", 2, "c-new"),
            proxy("demo/d", "connected", 1, "d"),
        ],
    ));
    let mut local = local;
    let unmanaged = |name: &str| crate::fleet::UnmanagedView {
        identity: format!("{name}.demo.serviceaccount.identity.weft.cluster.local")
            .parse()
            .unwrap(),
        serial: "u".into(),
        issuer_sha256: "i".into(),
        not_after: 10_000,
        expires_in_s: 9_000,
        token_only: true,
        note: String::new(),
    };
    // d was certified here but streams to the peer: managed after all.
    local.unmanaged = vec![unmanaged("d"), unmanaged("legacy")];
    let v = merge(local, "me", vec![(addr("10.0.0.2:8086"), peer)]);
    let left: Vec<String> = v
        .unmanaged
        .iter()
        .map(|u| u.identity.service_account().to_string())
        .collect();
    assert_eq!(left, ["legacy"]);
    let got: Vec<(&str, &str, &str)> = v
        .proxies
        .iter()
        .map(|p| {
            (
                p.workload.as_str(),
                p.state.as_str(),
                p.leaf_serial.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("demo/a", "connected", "a-local"),
            ("demo/b", "connected", "b-new"),
            ("demo/c", "connected", "c-new"),
            ("demo/d", "connected", "d"),
        ]
    );
    assert_eq!(
        v.peers,
        [PeerStatus {
            address: "10.0.0.2:8086".into(),
            replica_id: Some("peer".into()),
            connected: 3,
            error: None,
        }]
    );
}

#[test]
fn itself_is_skipped_and_an_unreachable_peer_is_named() {
    let local = view(100, vec![proxy("demo/a", "connected", 1, "a")]);
    let v = merge(
        local.clone(),
        "me",
        vec![
            (
                addr("10.0.0.1:8086"),
                Ok(("me".into(), 100, vec![proxy("demo/a", "stale", 0, "x")])),
            ),
            (
                addr("10.0.0.3:8086"),
                Err(PeerError::Timeout {
                    addr: addr("10.0.0.3:8086"),
                }),
            ),
        ],
    );
    assert_eq!(
        v.proxies, local.proxies,
        "its own answer is not merged again"
    );
    assert_eq!(v.peers.len(), 1);
    assert_eq!(v.peers[0].address, "10.0.0.3:8086");
    let why = v.peers[0].error.as_deref().unwrap();
    assert!(why.contains("did not answer"), "{why}");
}

#[test]
fn whichever_replica_merges_the_answer_is_the_same() {
    let a = vec![
        proxy("demo/a", "connected", 1, "a"),
        proxy("demo/b", "stale", 30, "b-old"),
    ];
    let b = vec![proxy("demo/b", "connected", 2, "b")];
    let on_a = merge(
        view(100, a.clone()),
        "A",
        vec![(addr("10.0.0.2:8086"), Ok(("B".into(), 100, b.clone())))],
    );
    let on_b = merge(
        view(100, b),
        "B",
        vec![(addr("10.0.0.1:8086"), Ok(("A".into(), 100, a)))],
    );
    assert_eq!(on_a.proxies, on_b.proxies);
}

fn slice(port: (&str, i32), endpoints: &[(&str, Option<bool>)]) -> EndpointSlice {
    EndpointSlice {
        address_type: "IPv4".into(),
        endpoints: Some(
            endpoints
                .iter()
                .map(|(a, ready)| Endpoint {
                    addresses: vec![a.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some(port.0.into()),
            port: Some(port.1),
            ..Default::default()
        }]),
        metadata: Default::default(),
    }
}

#[test]
fn peers_are_the_ready_endpoints_at_the_named_port() {
    let slices = [
        slice(
            ("destination", 8086),
            &[
                ("10.0.0.1", Some(true)),
                ("10.0.0.2", None),
                ("10.0.0.9", Some(false)),
            ],
        ),
        slice(("destination", 18086), &[("10.0.0.1", Some(true))]),
        slice(("destination", 8086), &[("10.0.0.1", Some(true))]),
    ];
    assert_eq!(
        addresses(&slices, "destination"),
        [
            addr("10.0.0.1:8086"),
            addr("10.0.0.2:8086"),
            addr("10.0.0.1:18086")
        ]
    );
    let mut two_ports = slice(("identity", 8080), &[("10.0.0.1", None)]);
    two_ports.ports.as_mut().unwrap().push(EndpointPort {
        name: Some("other".into()),
        port: Some(1),
        ..Default::default()
    });
    assert!(
        addresses(&[two_ports], "destination").is_empty(),
        "no port of that name among several"
    );
}
