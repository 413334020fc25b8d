use super::*;
use mesh_api::v1::Edge;

fn id(name: &str) -> Identity {
    format!("{name}.demo.serviceaccount.identity.weft.cluster.local")
        .parse()
        .unwrap()
}

fn report(instance: &str, edges: Vec<Edge>, dropped: u64) -> ProxyReport {
    ProxyReport {
        identity: id("backend").to_string(),
        workload: "demo/backend".into(),
        instance: instance.into(),
        edges,
        edges_dropped: dropped,
        ..Default::default()
    }
}

fn meshed(conns: u64, reqs: u64, fails: u64) -> Edge {
    Edge {
        inbound: true,
        peer_identity: id("frontend").to_string(),
        mtls: true,
        connections: conns,
        requests: reqs,
        failures: fails,
        ..Default::default()
    }
}

fn plain(conns: u64) -> Edge {
    Edge {
        inbound: true,
        peer_addr: "10.0.0.9".into(),
        no_tls_reason: "not_provided_by_remote".into(),
        connections: conns,
        ..Default::default()
    }
}

fn all() -> Scope {
    Scope::default()
}

fn record(b: &EdgeBook, r: ProxyReport, now: i64) {
    b.record(Reported::from_proto(&r, &id("backend")), now);
}

#[test]
fn counts_in_the_window_are_deltas_of_cumulative_reports() {
    let b = EdgeBook::default();
    record(&b, report("p1", vec![meshed(1, 10, 0)], 0), 1000);
    record(&b, report("p1", vec![meshed(3, 30, 2)], 0), 1100);
    // Everything since 1000.
    let v = b.window(1110, 600, &all());
    assert_eq!(v.edges.len(), 1);
    let e = &v.edges[0];
    assert_eq!((e.connections, e.requests, e.failures), (3, 30, 2));
    assert_eq!(e.client, Peer::Identity(id("frontend")));
    assert_eq!(e.server, Peer::Identity(id("backend")));
    assert!(e.mtls && !e.unmeshed);
    assert!((e.success_rate.unwrap() - 28.0 / 30.0).abs() < 1e-9);
    // Only what grew in the last 30 s.
    let v = b.window(1110, 30, &all());
    assert_eq!(
        (v.edges[0].connections, v.edges[0].requests),
        (2, 20),
        "{v:?}"
    );
    assert!(plaintext_violations(&v).is_empty());
}

#[test]
fn a_plaintext_edge_fails_the_gate_until_it_leaves_the_window() {
    let b = EdgeBook::default();
    record(&b, report("p1", vec![meshed(1, 1, 0), plain(1)], 0), 1000);
    let v = b.window(1010, 60, &all());
    let bad = plaintext_violations(&v);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].contains("10.0.0.9") && bad[0].contains("not_provided_by_remote"));
    let e = v.edges.iter().find(|e| !e.mtls).unwrap();
    assert!(e.unmeshed);
    assert_eq!(e.client, Peer::Address("10.0.0.9".into()));
    // The plaintext client stops; the meshed one goes on.
    record(&b, report("p1", vec![meshed(2, 2, 0), plain(1)], 0), 1100);
    let v = b.window(1110, 60, &all());
    assert!(plaintext_violations(&v).is_empty(), "{v:?}");
    assert_eq!(v.edges.len(), 1);
}

#[test]
fn a_restarted_proxy_counts_from_zero_again() {
    let b = EdgeBook::default();
    record(&b, report("p1", vec![meshed(5, 0, 0)], 0), 1000);
    // Same instance, counters below the last: a restart.
    record(&b, report("p1", vec![meshed(2, 0, 0)], 0), 1020);
    // Another instance of the same workload adds up.
    record(&b, report("p2", vec![meshed(4, 0, 0)], 0), 1040);
    let v = b.window(1050, 600, &all());
    assert_eq!(v.edges[0].connections, 11);
}

#[test]
fn drops_fail_the_gate_and_the_namespace_narrows() {
    let b = EdgeBook::default();
    record(&b, report("p1", vec![meshed(1, 0, 0)], 3), 1000);
    let v = b.window(1010, 60, &all());
    assert_eq!(
        v.proxy_drops,
        vec![DropView {
            workload: "demo/backend".into(),
            edges: 3
        }]
    );
    assert!(plaintext_violations(&v)[0].contains("could not keep 3 edges"));
    let other = Scope {
        namespace: Some("other".into()),
        ..Scope::default()
    };
    let v = b.window(1010, 60, &other);
    assert!(v.edges.is_empty() && v.proxy_drops.is_empty());
}

#[test]
fn declared_workloads_without_a_proxy_are_unmeshed() {
    let scope = Scope {
        namespace: Some("demo".into()),
        declared: vec!["demo/a".into(), "demo/b".into(), "prod/c".into()],
        meshed: ["demo/a".to_string()].into(),
    };
    let v = EdgeBook::default().window(1000, 60, &scope);
    assert_eq!(v.unmeshed_workloads, vec!["demo/b".to_string()]);
    assert!(plaintext_violations(&v)[0].contains("demo/b"));
}

#[test]
fn memory_is_bounded_and_old_buckets_go() {
    let b = EdgeBook::default();
    let many: Vec<Edge> = (0..MAX_EDGES + 10)
        .map(|i| Edge {
            peer_addr: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
            ..plain(1)
        })
        .collect();
    record(&b, report("p1", many, 0), 1000);
    let v = b.window(1000, 60, &all());
    assert_eq!(v.edges.len(), MAX_EDGES);
    assert_eq!(v.control_plane_drops, 10);
    // Two windows later nothing is kept.
    record(&b, report("p2", vec![], 0), 1000 + 2 * MAX_WINDOW);
    assert!(b.lock().edges.is_empty());
}

#[test]
fn replicas_views_merge_summing_an_edge_seen_through_both() {
    // A proxy reported to replica A, then failed over to B.
    let (a, b) = (EdgeBook::default(), EdgeBook::default());
    record(&a, report("p1", vec![meshed(2, 20, 1)], 0), 1000);
    record(&b, report("p1", vec![meshed(1, 10, 0), plain(1)], 3), 1100);
    let merged = merge_views(
        a.window(1110, 600, &all()),
        vec![b.window(1110, 600, &all())],
    );
    assert_eq!(merged.edges.len(), 2, "{merged:?}");
    let m = merged.edges.iter().find(|e| e.mtls).unwrap();
    assert_eq!((m.connections, m.requests, m.failures), (3, 30, 1));
    assert_eq!(m.success_rate, Some(29.0 / 30.0));
    assert_eq!(merged.proxy_drops.len(), 1);
    assert_eq!(merged.proxy_drops[0].edges, 3);
    // The plaintext edge held by the other replica fails the gate here.
    let v = plaintext_violations(&merged);
    assert!(
        v.iter().any(|l| l.starts_with("plaintext: 10.0.0.9")),
        "{v:?}"
    );
}

#[test]
fn a_replica_that_cannot_be_asked_fails_the_gate() {
    let mut v = EdgeBook::default().window(1000, 600, &all());
    assert!(plaintext_violations(&v).is_empty());
    v.peers.push(crate::fleet_peers::PeerStatus {
        address: "10.0.0.2:8086".into(),
        replica_id: None,
        connected: 0,
        error: Some("10.0.0.2:8086 did not answer within 2s".into()),
    });
    let gate = plaintext_violations(&v);
    assert_eq!(gate.len(), 1, "{gate:?}");
    assert!(
        gate[0].contains("10.0.0.2:8086 could not be asked"),
        "{gate:?}"
    );
}
