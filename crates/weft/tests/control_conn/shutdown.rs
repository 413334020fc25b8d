//! Issue 13, control-plane shutdown: SIGTERM stops accepting, sends GOAWAY
//! to streaming clients, closes what remains after the grace period and
//! exits 0; the clients attach again to the restarted control plane.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use super::common::Scratch;
use super::common::mesh::workload;
use super::common::proc::{http_get, poll};
use super::common::watch::watch_backend;

const ATTACHED: usize = 100;
const GRACE: Duration = Duration::from_secs(3);
const DEADLINE: Duration = Duration::from_secs(30);

fn certify_backend(s: &Scratch, identity_addr: SocketAddr) {
    let tok = s.token("backend");
    s.weft(&[
        "certs",
        "request",
        "backend.demo.serviceaccount.identity.weft.cluster.local",
        "backend.crt",
        "backend.key",
        "--control-plane",
        &identity_addr.to_string(),
        "--roots",
        "ca.crt",
        "--token-file",
        &tok,
    ])
    .ok();
}

fn ready(admin: SocketAddr) {
    poll("ready", DEADLINE, || {
        matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
    });
}

/// `ATTACHED` destination watches, each on its own connection.
async fn attach(
    s: &Scratch,
    da: SocketAddr,
) -> Vec<tonic::Streaming<linkerd2_proxy_api::destination::Update>> {
    let mut watches = Vec::with_capacity(ATTACHED);
    for _ in 0..ATTACHED {
        watches.push(watch_backend(s, da).await);
    }
    watches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_watch_streams_after_the_grace_period_and_exits_0() {
    use tokio::task::block_in_place;
    let s = Scratch::new();
    s.guide_material();
    std::fs::create_dir(s.path("resources")).unwrap();
    s.write("resources/demo.yaml", workload("backend", 7000, 4143, ""));
    let grace = format!("{}s", GRACE.as_secs());
    let args = [
        "--resources",
        "resources",
        "--shutdown-grace-period",
        &grace,
    ];
    let mut cp = s.control_plane(&args);
    block_in_place(|| ready(cp.addr("admin listening on")));
    block_in_place(|| certify_backend(&s, cp.addr("identity listening on")));
    let da = cp.addr("destination listening on");
    let watches = attach(&s, da).await;

    let t = Instant::now();
    let pid = cp.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Not accepting: the listener is closed well within the grace period.
    let refused = block_in_place(|| {
        poll("the destination listener to close", DEADLINE, || {
            TcpStream::connect_timeout(&da, Duration::from_secs(1))
                .is_err()
                .then(|| t.elapsed())
        })
    });
    let code = block_in_place(|| cp.wait_exit(GRACE + Duration::from_secs(2)));
    let exited = t.elapsed();
    println!(
        "SIGTERM with {ATTACHED} attached watch streams: new connections refused after {refused:?}, exit {code:?} after {exited:?} (grace {GRACE:?})"
    );
    assert_eq!(code, Some(0), "{}", cp.output());
    assert!(
        exited >= GRACE,
        "the streams were cut before the grace period ended"
    );
    assert!(cp.output().contains("GOAWAY sent"), "{}", cp.output());
    assert!(cp.output().contains("closing the connections still open"));

    // Every watch has ended (its connection closed), none hangs.
    let mut ending = tokio::task::JoinSet::new();
    for mut w in watches {
        ending.spawn(async move { tokio::time::timeout(DEADLINE, w.message()).await });
    }
    let ends = ending.join_all().await;
    let hung = ends.iter().filter(|e| e.is_err()).count();
    let updates = ends.iter().filter(|e| matches!(e, Ok(Ok(Some(_))))).count();
    assert_eq!(hung, 0, "{hung} watches still open");
    assert_eq!(
        updates, 0,
        "{updates} watches got an update instead of their end"
    );

    // The clients attach again to the restarted control plane, all of them.
    let cp = s.control_plane(&args);
    block_in_place(|| ready(cp.addr("admin listening on")));
    let t = Instant::now();
    let again = attach(&s, cp.addr("destination listening on")).await;
    println!(
        "{} watches attached again to the restarted control plane in {:?}",
        again.len(),
        t.elapsed()
    );
    assert_eq!(again.len(), ATTACHED);
}
