use super::*;

const T0_OFFSET: Duration = Duration::from_secs(1000);

fn limits(per_client: &str, global: &str, peer: &str, max_keys: usize) -> CertifyLimits {
    CertifyLimits {
        per_client: per_client.parse().unwrap(),
        global: global.parse().unwrap(),
        refusals_per_peer: peer.parse().unwrap(),
        max_keys,
    }
}

fn key(n: usize) -> ClientKey {
    ClientKey::JoinToken(format!("jti-{n}"))
}

/// Requests at `every` for `span`, counting those admitted.
fn admitted(l: &mut Limiter, k: &ClientKey, t0: Instant, every: Duration, span: Duration) -> u64 {
    let mut n = 0;
    let mut t = t0;
    while t < t0 + span {
        if l.admit_issue(k, t).is_ok() {
            n += 1;
        }
        t += every;
    }
    n
}

#[test]
fn rates_parse_and_print_back() {
    let r: Rate = "6/m:3".parse().unwrap();
    assert_eq!(r.count, 6);
    assert_eq!(r.period, Duration::from_secs(60));
    assert_eq!(r.burst, 3);
    assert_eq!(r.to_string(), "6/m:3");
    assert_eq!(
        "200/s:100".parse::<Rate>().unwrap().to_string(),
        "200/s:100"
    );
    for bad in ["", "6/m", "0/s:1", "1/s:0", "6/d:1", "x/s:1", "6:3"] {
        let e = bad.parse::<Rate>().unwrap_err();
        assert!(e.to_string().contains("COUNT/UNIT:BURST"), "{bad}: {e}");
    }
}

#[test]
fn a_client_gets_its_burst_then_its_rate() {
    let t0 = Instant::now() + T0_OFFSET;
    let mut l = Limiter::new(limits("6/m:3", "1000/s:1000", "10/s:20", 100));
    let k = key(1);
    // Hammered every 10 ms for 60 s: the burst plus one per 10 s.
    let n = admitted(
        &mut l,
        &k,
        t0,
        Duration::from_millis(10),
        Duration::from_secs(60),
    );
    assert!((8..=9).contains(&n), "{n}");
    // Another client is untouched.
    assert!(l.admit_issue(&key(2), t0 + Duration::from_secs(60)).is_ok());
}

#[test]
fn a_refusal_names_the_kind_the_limit_and_when_to_retry() {
    let t0 = Instant::now() + T0_OFFSET;
    let mut l = Limiter::new(limits("6/m:1", "1000/s:1000", "10/s:20", 100));
    let k = key(1);
    l.admit_issue(&k, t0).unwrap();
    let e = l.admit_issue(&k, t0 + Duration::from_secs(1)).unwrap_err();
    assert_eq!(e.kind, KeyKind::JoinToken);
    assert_eq!(e.retry_after, Duration::from_secs(9));
    let msg = e.to_string();
    assert!(msg.contains("this join token"), "{msg}");
    assert!(msg.contains("6/m"), "{msg}");
    assert!(msg.contains("retry in 9s"), "{msg}");
    // Once the wait is over it conforms again.
    assert!(l.admit_issue(&k, t0 + Duration::from_secs(10)).is_ok());
}

#[test]
fn the_global_ceiling_caps_all_clients_together() {
    let t0 = Instant::now() + T0_OFFSET;
    let mut l = Limiter::new(limits("6/m:3", "10/s:5", "10/s:20", 10_000));
    let mut n = 0;
    // 1,000 distinct clients at once, then 10 s of new ones every ms.
    for i in 0..11_000usize {
        let t = t0 + Duration::from_millis(i.saturating_sub(1000) as u64);
        if l.admit_issue(&key(i), t).is_ok() {
            n += 1;
        }
    }
    assert!((100..=106).contains(&n), "{n}");
    let e = l.admit_issue(&key(99_999), t0).unwrap_err();
    assert_eq!(e.kind, KeyKind::Global);
}

#[test]
fn a_client_over_its_limit_spends_nothing_of_the_global_ceiling() {
    let t0 = Instant::now() + T0_OFFSET;
    let mut l = Limiter::new(limits("6/m:3", "10/s:10", "10/s:20", 100));
    let hammer = key(1);
    for i in 0..1000 {
        let _ = l.admit_issue(&hammer, t0 + Duration::from_micros(i));
    }
    // Three taken by the hammer; the other seven of the burst remain.
    let others = (2..20)
        .filter(|i| {
            l.admit_issue(&key(*i), t0 + Duration::from_millis(1))
                .is_ok()
        })
        .count();
    assert_eq!(others, 7);
}

#[test]
fn distinct_keys_never_grow_the_table_past_its_cap() {
    let t0 = Instant::now() + T0_OFFSET;
    let cap = 200;
    let mut l = Limiter::new(limits("6/m:3", "1000000/s:1000000", "10/s:20", cap));
    for i in 0..20_000 {
        let t = t0 + Duration::from_micros(i as u64);
        let _ = l.admit_issue(&key(i), t);
        let _ = l.admit_peer(
            IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
            t,
        );
        let (clients, peers) = l.held();
        assert!(clients <= cap && peers <= cap, "{clients} {peers} at {i}");
    }
    // The newest keys are the ones held: a recent client is still limited.
    let recent = key(19_999);
    assert!(
        l.check_claimed(&recent, t0 + Duration::from_millis(50))
            .is_ok()
    );
    l.admit_issue(&recent, t0 + Duration::from_millis(50))
        .unwrap();
    l.admit_issue(&recent, t0 + Duration::from_millis(50))
        .unwrap();
    assert!(
        l.admit_issue(&recent, t0 + Duration::from_millis(50))
            .is_err()
    );
}

#[test]
fn refilled_buckets_are_dropped_before_any_live_one() {
    let t0 = Instant::now() + T0_OFFSET;
    let mut l = Limiter::new(limits("1/s:1", "1000000/s:1000000", "10/s:20", 3));
    l.admit_issue(&key(1), t0).unwrap();
    l.admit_issue(&key(2), t0).unwrap();
    // Key 3 arrives once 1 and 2 have refilled: both go, 3 is held.
    let later = t0 + Duration::from_secs(2);
    let ms = Duration::from_millis(1);
    l.admit_issue(&key(3), later).unwrap();
    l.admit_issue(&key(4), later + ms).unwrap();
    l.admit_issue(&key(5), later + ms * 2).unwrap();
    assert_eq!(l.held().0, 3);
    // The table is full of live buckets: the one closest to refilled (3)
    // makes room for 6, while 4 and 5 are still limited.
    let now = later + ms * 3;
    l.admit_issue(&key(6), now).unwrap();
    assert_eq!(l.held().0, 3);
    assert!(l.admit_issue(&key(4), now).is_err());
    assert!(l.admit_issue(&key(5), now).is_err());
    assert!(l.admit_issue(&key(6), now).is_err());
}

#[test]
fn a_peer_is_refused_once_its_refusals_are_spent() {
    let t0 = Instant::now() + T0_OFFSET;
    let mut l = Limiter::new(limits("6/m:3", "10/s:10", "10/s:20", 100));
    let (bad, good) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
    let mut refused_work = 0;
    let mut t = t0;
    // One wrong request per ms for 10 s: work is done for 20 + 10/s.
    while t < t0 + Duration::from_secs(10) {
        if l.admit_peer(bad, t).is_ok() {
            refused_work += 1;
        }
        // A good peer's requests are given back: it is never refused.
        l.admit_peer(good, t).unwrap();
        l.refund_peer(good);
        t += Duration::from_millis(1);
    }
    assert!((119..=121).contains(&refused_work), "{refused_work}");
    // Between two refills the bad peer is refused outright.
    let e = l.admit_peer(bad, t - Duration::from_millis(1)).unwrap_err();
    assert_eq!(e.kind, KeyKind::Peer);
    assert!(e.to_string().contains("refused requests from your address"));
}

#[test]
fn calls_in_flight_at_once_cannot_overshoot_a_peer_budget() {
    let t0 = Instant::now() + T0_OFFSET;
    let mut l = Limiter::new(limits("6/m:3", "10/s:10", "10/s:20", 100));
    let peer = IpAddr::from([10, 0, 0, 1]);
    // 100 calls admitted before any is settled: only the burst gets in.
    let admitted = (0..100).filter(|_| l.admit_peer(peer, t0).is_ok()).count();
    assert_eq!(admitted, 20);
}

#[test]
fn a_claimed_key_is_looked_up_never_inserted() {
    let t0 = Instant::now() + T0_OFFSET;
    let mut l = Limiter::new(limits("6/m:1", "10/s:10", "10/s:20", 100));
    for i in 0..1000 {
        assert!(l.check_claimed(&key(i), t0).is_ok());
    }
    assert_eq!(l.held().0, 0);
    l.admit_issue(&key(1), t0).unwrap();
    assert_eq!(
        l.check_claimed(&key(1), t0).unwrap_err().kind,
        KeyKind::JoinToken
    );
}

#[test]
fn token_verifications_have_their_own_ceiling() {
    let t0 = Instant::now() + T0_OFFSET;
    let mut l = Limiter::new(limits("6/m:3", "10/s:5", "10/s:20", 100));
    let verified = (0..100).filter(|_| l.admit_verify(t0).is_ok()).count();
    assert_eq!(verified, 5);
    assert_eq!(l.admit_verify(t0).unwrap_err().kind, KeyKind::GlobalVerify);
    // Issuance is a separate ceiling: renewals are not starved by them.
    let id: Identity = "web.demo.serviceaccount.identity.weft.cluster.local"
        .parse()
        .unwrap();
    assert!(l.admit_issue(&ClientKey::Renewal(id, None), t0).is_ok());
}
