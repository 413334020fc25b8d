use super::*;

fn bundle(anchors: &[&str], issuer: &str, issuer_anchor: &str, generation: u64) -> LiveBundle {
    LiveBundle {
        version: Version {
            generation,
            sha256: format!("bundle-{generation}"),
        },
        pem: String::new(),
        anchors: anchors.iter().map(|s| s.to_string()).collect(),
        issuer_anchor: issuer_anchor.into(),
        issuer_sha256: issuer.into(),
        anchor_not_after: vec![0; anchors.len()],
        issuer_not_after: 0,
    }
}

/// "a.demo" → a.demo.serviceaccount.identity.weft.cluster.local
fn id(short: &str) -> pki::Identity {
    format!("{short}.serviceaccount.identity.weft.cluster.local")
        .parse()
        .unwrap()
}

fn report(identity: &str, generation: u64, issuer: &str, anchor: &str) -> Report {
    Report {
        identity: id(identity),
        workload: format!("demo/{}", identity.split('.').next().unwrap()),
        bundle: Some(Version {
            generation,
            sha256: format!("bundle-{generation}"),
        }),
        refused: None,
        leaf_serial: "01".into(),
        spki_sha256: "spki".into(),
        issuer_sha256: issuer.into(),
        anchor_sha256: anchor.into(),
        not_after: 2000,
        last_refresh: LastRefresh::Ok,
        last_refresh_at: 900,
        renew_request_id: String::new(),
        admin_addr: String::new(),
        tap_addr: String::new(),
        tls: None,
    }
}

#[test]
fn renewal_only_where_the_new_leaf_would_verify() {
    let b = bundle(&["A", "B"], "issuer-b", "B", 2);
    let old = report("a.demo", 2, "issuer-a", "A");
    let both = vec!["A".to_string(), "B".to_string()];
    let only_a = vec!["A".to_string()];
    assert_eq!(
        renewal_decision(Some(&old), Some(&both), &b, None, false),
        Ok(())
    );
    assert_eq!(
        renewal_decision(Some(&old), Some(&only_a), &b, None, false),
        Err(Skip::BundleLacksIssuerAnchor)
    );
    // An unknown bundle (served before a restart) is not assumed to hold it.
    assert_eq!(
        renewal_decision(Some(&old), None, &b, None, false),
        Err(Skip::BundleLacksIssuerAnchor)
    );
    let current = report("a.demo", 2, "issuer-b", "B");
    assert_eq!(
        renewal_decision(Some(&current), Some(&both), &b, None, false),
        Err(Skip::AlreadyCurrent)
    );
    assert_eq!(
        renewal_decision(Some(&current), Some(&both), &b, None, true),
        Ok(())
    );
    assert_eq!(
        renewal_decision(
            Some(&old),
            Some(&both),
            &b,
            Some(Duration::from_secs(5)),
            false
        ),
        Err(Skip::AskedRecently)
    );
    assert_eq!(
        renewal_decision(None, Some(&both), &b, None, true),
        Err(Skip::NoReport)
    );
}

#[test]
fn connected_stale_and_unmanaged() {
    let b = bundle(&["A", "B"], "issuer-b", "B", 2);
    let fresh = report("a.demo", 2, "issuer-b", "B");
    let behind = report("b.demo", 1, "issuer-a", "A");
    let entries = [
        EntryView {
            identity: &id("a.demo"),
            report: Some(&fresh),
            connected: true,
            since: 100,
            last_report_at: Some(990),
        },
        EntryView {
            identity: &id("b.demo"),
            report: Some(&behind),
            connected: false,
            since: 940,
            last_report_at: Some(930),
        },
    ];
    let issuance = |identity: &str, proof: &str, issued_at: i64| Issuance {
        identity: id(identity),
        serial: format!("{identity}-{issued_at}"),
        spki_sha256: String::new(),
        issuer_sha256: "issuer-a".into(),
        issued_at,
        not_after: 5000,
        proof: proof.into(),
        origin: String::new(),
    };
    let live = vec![
        issuance("a.demo", "renewal", 10),
        issuance("l5d.demo", "token:1", 10),
        issuance("l5d.demo", "token:2", 20),
        issuance("expired.demo", "token:3", 1),
    ];
    let mut live = live;
    live[3].not_after = 500;
    let v = view(1000, Some(&b), &entries, &live);
    assert_eq!(v.proxies.len(), 2);
    let a = &v.proxies[0];
    assert_eq!(
        (a.state.as_str(), a.bundle_current, a.issuer_current),
        ("connected", true, true)
    );
    assert!(a.anchor_in_bundle);
    let s = &v.proxies[1];
    assert_eq!(
        (s.state.as_str(), s.for_s, s.bundle_current),
        ("stale", 60, false)
    );
    assert_eq!(v.unmanaged.len(), 1, "{:?}", v.unmanaged);
    let u = &v.unmanaged[0];
    assert_eq!(
        (&u.identity, u.serial.as_str()),
        (&id("l5d.demo"), "l5d.demo-20")
    );
    assert!(u.token_only && u.note.contains("restart required"));
}

#[test]
fn reconnects_replace_stale_entries_and_silent_streams_vanish() {
    let f = Fleet::default();
    let b = bundle(&["A"], "issuer-a", "A", 1);
    let (tx, _rx) = mpsc::channel(4);
    let first = f.attach(&id("a.demo"), tx.clone(), 10);
    f.report(first, report("a.demo", 1, "issuer-a", "A"), 11);
    f.detach(first, 20);
    assert_eq!(f.view(30, Some(&b), &[]).proxies[0].state, "stale");
    let second = f.attach(&id("a.demo"), tx.clone(), 40);
    f.report(second, report("a.demo", 1, "issuer-a", "A"), 41);
    let v = f.view(50, Some(&b), &[]);
    assert_eq!(v.proxies.len(), 1);
    assert_eq!(v.proxies[0].state, "connected");
    let silent = f.attach(&id("b.demo"), tx, 60);
    f.detach(silent, 61);
    assert_eq!(f.view(70, Some(&b), &[]).proxies.len(), 1);
}

/// A fleet of `n` attached proxies (p0.demo…) whose leaves are from the
/// old issuer, and the bundle of the new one.
fn on_old_issuer(n: usize) -> (Fleet, LiveBundle, Vec<(u64, mpsc::Receiver<RenewNow>)>) {
    let f = Fleet::default();
    let b = bundle(&["A", "B"], "issuer-b", "B", 2);
    f.served(&b);
    let rxs = (0..n)
        .map(|i| {
            let (tx, rx) = mpsc::channel(4);
            let id = f.attach(&id(&format!("p{i}.demo")), tx, 0);
            f.report(id, report(&format!("p{i}.demo"), 2, "issuer-a", "A"), 1);
            (id, rx)
        })
        .collect();
    (f, b, rxs)
}

#[tokio::test]
async fn passes_ask_within_the_limit_and_count_results() {
    let (f, b, mut rxs) = on_old_issuer(3);
    assert_eq!(f.renew_pass(&b, 2), 2);
    assert_eq!(
        f.renew_pass(&b, 2),
        1,
        "the third next time; the first two not again"
    );
    assert_eq!(f.renew_pass(&b, 2), 0);
    let (id, rx) = &mut rxs[0];
    let req = rx.recv().await.expect("a renew-now request");
    let mut done = report("p0.demo", 2, "issuer-b", "B");
    done.renew_request_id = req.request_id;
    f.report(*id, done, 5);
    let renewed = f
        .metrics
        .renew_results
        .get_or_create(&crate::fleet_metrics::ResultLabels {
            trigger: "issuer_change",
            result: "renewed",
        })
        .get();
    assert_eq!(renewed, 1);
    // By hand: everyone connected, even those already current.
    let (marked, skipped) = f.force_renewal(&b);
    assert_eq!((marked, skipped.len()), (3, 0));
}

/// Proxies that never renew are asked again every 30 s; the ones never
/// asked still get their turn first.
#[tokio::test]
async fn proxies_that_do_not_renew_do_not_starve_the_rest() {
    let (f, b, mut rxs) = on_old_issuer(6);
    assert_eq!(f.renew_pass(&b, 2), 2);
    // The first two did not renew and were asked more than 30 s ago.
    let long_ago = Instant::now() - RENEW_AGAIN_AFTER - Duration::from_secs(1);
    for e in f.lock().entries.values_mut().filter(|e| e.asked.is_some()) {
        e.asked = Some(long_ago);
    }
    assert_eq!(f.renew_pass(&b, 2), 2);
    let asked = |rx: &mut mpsc::Receiver<RenewNow>| {
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        n
    };
    let counts: Vec<usize> = rxs.iter_mut().map(|(_, rx)| asked(rx)).collect();
    assert_eq!(
        counts,
        [1, 1, 1, 1, 0, 0],
        "the second pass asked two never asked, not the first two again"
    );
    // Once everyone was asked, those asked longest ago come first.
    assert_eq!(f.renew_pass(&b, 2), 2);
    assert_eq!(f.renew_pass(&b, 2), 2, "the first two, due again");
    let counts: Vec<usize> = rxs.iter_mut().map(|(_, rx)| asked(rx)).collect();
    assert_eq!(counts, [1, 1, 0, 0, 1, 1]);
}

#[test]
fn an_admin_listening_everywhere_is_found_where_its_stream_comes_from() {
    let from = Some("10.10.0.4".parse().unwrap());
    assert_eq!(admin_endpoint("0.0.0.0:4191", from), "10.10.0.4:4191");
    assert_eq!(admin_endpoint("127.0.0.1:4191", from), "127.0.0.1:4191");
    assert_eq!(admin_endpoint("0.0.0.0:4191", None), "");
    assert_eq!(admin_endpoint("", from), "", "an older proxy says nothing");
}
