//! The issuance record in Kubernetes mode: IssuanceRecord objects
//! ("parts", see record_parts) in the control plane's namespace, shared by
//! every replica, so no replica keeps local state and `/fleet` answers the
//! same everywhere.
//!
//! Group commit: Certify queues its entry and waits; one writer per
//! replica writes what is queued (up to 500 entries) as soon as the last
//! write is done, with resourceVersion compare-and-swap on the replica's
//! own part, and only then answers the waiting calls. A failed write
//! refuses them all (UNAVAILABLE with the reason; `/ready` says it) until
//! a write succeeds. Every replica watches every part, so each knows every
//! live certificate (renewal lines for join-token revocation included),
//! also after a restart. Measured through one replica against the test
//! API server (k8s_record test: 1000 Certify renewals, 200 at once, on a
//! 2-core machine shared with other builds): 64 to 104 Certify/s in three
//! runs, over 5 million certificates a day (a batch of up to 500 entries
//! is one write; where the time goes was not profiled): enough for 3
//! million proxies renewing 24 h leaves at 70% of their life. The cap on live
//! entries (--max-live-certificates, 100 000 by default) binds first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use identity::record::{BoxFuture, Cap, Record, RecordRefusal};
use identity::state::Issuance;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::lease::status;
use super::proofs::api_error;
use super::record_parts::{
    MAX_BATCH, api_resource, by_window, entries_of, expired_parts, expires_at, fits, from_entry,
    part_name, part_object, replica_tag, to_entry, window_secs,
};

/// A write that takes longer fails (and is retried by the next batch).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Conflicts re-read and retried before a write gives up.
const ATTEMPTS: usize = 5;
/// Entries queued beyond the one being written (Certify then waits).
const QUEUE: usize = 4096;

type Done = oneshot::Sender<Result<(), String>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What this replica knows: every live entry seen (own writes and the
/// watch), kept until it expires even if its part vanishes, and the parts
/// with when they expire.
#[derive(Default)]
struct View {
    entries: HashMap<String, Issuance>,
    parts: HashMap<String, i64>,
}

#[derive(Default)]
struct Health {
    /// Every part has been listed once.
    loaded: bool,
    read_error: Option<String>,
    write_error: Option<String>,
}

/// The part this replica is filling for one expiry window.
struct OwnPart {
    seq: u32,
    rv: Option<String>,
    entries: Vec<Value>,
}

pub struct KubeRecord {
    api: Api<DynamicObject>,
    namespace: String,
    tag: String,
    window: i64,
    cap: Cap,
    queue: mpsc::Sender<(Issuance, Done)>,
    pending: AtomicUsize,
    view: Mutex<View>,
    health: Mutex<Health>,
}

/// Counts a queued entry until its Certify is answered (or dropped).
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl KubeRecord {
    /// The record and the task that writes and follows its parts.
    pub fn start(
        client: kube::Client,
        namespace: &str,
        cap: Cap,
        leaf_life: Duration,
    ) -> (Arc<Self>, BoxFuture<'static, ()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut random = [0u8; 4];
        let _ = aws_lc_rs::rand::fill(&mut random);
        let instance = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_default();
        let rec = Arc::new(Self {
            api: Api::namespaced_with(client, namespace, &api_resource()),
            namespace: namespace.to_string(),
            tag: replica_tag(&instance, u32::from_be_bytes(random)),
            window: window_secs(leaf_life),
            cap,
            queue: tx,
            pending: AtomicUsize::new(0),
            view: Mutex::default(),
            health: Mutex::default(),
        });
        let r = rec.clone();
        let task = Box::pin(async move {
            tokio::join!(r.clone().follow(), r.write_loop(rx));
        });
        (rec, task)
    }

    fn write_refused(&self, what: &str, name: &str, e: &kube::Error) -> String {
        let hint = match status(e) {
            Some(401 | 403) => {
                "the control plane needs get, create, update and delete on issuancerecords.internal.weft.dev in its namespace: apply rbac.yaml"
            }
            Some(404) => "is the IssuanceRecord CRD installed? apply crds.yaml",
            Some(_) => "the API server refused the write; see its message",
            None => "is the API server reachable? issuing resumes once a write succeeds",
        };
        format!(
            "cannot {what} IssuanceRecord {}/{name}: {}; {hint}",
            self.namespace,
            api_error(e)
        )
    }

    /// Follows every part, adding what it holds to the view.
    async fn follow(self: Arc<Self>) {
        let mut events = watcher::watcher(self.api.clone(), watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(ev) = events.next().await {
            match ev {
                Ok(Event::Init) => {}
                Ok(Event::InitApply(o) | Event::Apply(o)) => self.absorb(&o),
                Ok(Event::InitDone) => {
                    let mut h = lock(&self.health);
                    if !h.loaded {
                        let v = lock(&self.view);
                        tracing::info!(
                            certificates = v.entries.len(),
                            parts = v.parts.len(),
                            "issuance record read from the Kubernetes API"
                        );
                    }
                    h.loaded = true;
                    h.read_error = None;
                }
                Ok(Event::Delete(o)) => {
                    lock(&self.view)
                        .parts
                        .remove(&o.metadata.name.unwrap_or_default());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch IssuanceRecords; retrying with backoff, the entries seen are kept");
                    lock(&self.health).read_error = Some(e.to_string());
                }
            }
        }
    }

    fn absorb(&self, o: &DynamicObject) {
        let mut v = lock(&self.view);
        if let (Some(name), Some(end)) = (o.metadata.name.clone(), expires_at(o)) {
            v.parts.insert(name, end);
        }
        for e in entries_of(o).iter().filter_map(from_entry) {
            v.entries.insert(e.serial.clone(), e);
        }
    }

    /// Writes queued entries in batches, answering each batch's callers.
    async fn write_loop(self: Arc<Self>, mut rx: mpsc::Receiver<(Issuance, Done)>) {
        let mut own: HashMap<i64, OwnPart> = HashMap::new();
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let entries: Vec<Issuance> = batch.iter().map(|(e, _)| e.clone()).collect();
            let result = match tokio::time::timeout(
                WRITE_TIMEOUT,
                self.write_batch(&mut own, &entries),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => {
                    // The part's state is unknown: re-read before the next write.
                    own.clear();
                    Err(format!(
                        "writing IssuanceRecords in {} took over {WRITE_TIMEOUT:?}; is the API server reachable?",
                        self.namespace
                    ))
                }
            };
            match &result {
                Ok(()) => {
                    let mut v = lock(&self.view);
                    for e in entries {
                        v.entries.insert(e.serial.clone(), e);
                    }
                    drop(v);
                    let mut h = lock(&self.health);
                    if h.write_error.take().is_some() {
                        tracing::info!("the issuance record can be written again; issuing");
                    }
                }
                Err(why) => {
                    tracing::error!(error = %why, entries = batch.len(), "cannot write the issuance record; refusing those certificates");
                    lock(&self.health).write_error = Some(why.clone());
                }
            }
            for (_, done) in batch {
                let _ = done.send(result.clone());
            }
        }
    }

    async fn write_batch(
        &self,
        own: &mut HashMap<i64, OwnPart>,
        entries: &[Issuance],
    ) -> Result<(), String> {
        for (end, group) in by_window(entries, self.window) {
            let values: Vec<Value> = group.iter().map(|e| to_entry(e)).collect();
            let part = own.entry(end).or_insert(OwnPart {
                seq: 0,
                rv: None,
                entries: Vec::new(),
            });
            self.write_part(end, part, &values).await?;
        }
        Ok(())
    }

    /// Appends `values` to this replica's part for window `end`, rolling to
    /// the next part when full; compare-and-swap, re-read on conflict.
    async fn write_part(
        &self,
        end: i64,
        part: &mut OwnPart,
        mut values: &[Value],
    ) -> Result<(), String> {
        let mut conflicts = 0;
        while !values.is_empty() {
            let take = fits(part.entries.len(), values.len());
            if take == 0 {
                *part = OwnPart {
                    seq: part.seq + 1,
                    rv: None,
                    entries: Vec::new(),
                };
                continue;
            }
            let name = part_name(&self.tag, end, part.seq);
            let mut next = part.entries.clone();
            next.extend_from_slice(&values[..take]);
            let obj = part_object(&name, &self.tag, end, &next, part.rv.clone());
            let pp = PostParams::default();
            let written = match part.rv {
                None => self.api.create(&pp, &obj).await,
                Some(_) => self.api.replace(&name, &pp, &obj).await,
            };
            match written {
                Ok(o) => {
                    part.rv = o.metadata.resource_version;
                    part.entries = next;
                    values = &values[take..];
                    conflicts = 0;
                }
                // Changed, created or deleted under us: re-read and retry.
                Err(e) if matches!(status(&e), Some(404 | 409)) && conflicts < ATTEMPTS => {
                    conflicts += 1;
                    match self.api.get_opt(&name).await {
                        Ok(Some(o)) => {
                            part.entries = entries_of(&o);
                            part.rv = o.metadata.resource_version;
                        }
                        Ok(None) => {
                            part.entries.clear();
                            part.rv = None;
                        }
                        Err(e) => return Err(self.write_refused("read", &name, &e)),
                    }
                }
                Err(e) => return Err(self.write_refused("write", &name, &e)),
            }
        }
        Ok(())
    }

    fn live_count(&self, now: i64) -> usize {
        lock(&self.view)
            .entries
            .values()
            .filter(|e| e.not_after > now)
            .count()
    }

    /// Deletes the parts past every entry's notAfter, and forgets those entries.
    async fn drop_expired(&self, now: i64) -> Result<(), String> {
        let expired = expired_parts(&lock(&self.view).parts, now);
        for name in expired {
            match self.api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(part = %name, "deleted an expired issuance record part"),
                Err(e) if status(&e) == Some(404) => {}
                Err(e) => return Err(self.write_refused("delete", &name, &e)),
            }
            lock(&self.view).parts.remove(&name);
        }
        lock(&self.view).entries.retain(|_, e| e.not_after > now);
        Ok(())
    }

    /// Whether a write would be accepted now (a dry-run create).
    async fn probe(&self) -> Result<(), String> {
        let name = format!("issuances-probe-{}", self.tag);
        let pp = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let obj = part_object(&name, &self.tag, 0, &[], None);
        match self.api.create(&pp, &obj).await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(409) => Ok(()),
            Err(e) => Err(self.write_refused("create", &name, &e)),
        }
    }
}

impl Record for KubeRecord {
    fn record<'a>(&'a self, entry: &'a Issuance) -> BoxFuture<'a, Result<(), RecordRefusal>> {
        Box::pin(async move {
            if !lock(&self.health).loaded {
                return Err(RecordRefusal::Unavailable(
                    self.failure().unwrap_or_default(),
                ));
            }
            let queued = self.pending.load(Ordering::Relaxed);
            let known = lock(&self.view).entries.len();
            self.cap
                .check(known + queued, || self.live_count(entry.issued_at) + queued)?;
            let (done, answer) = oneshot::channel();
            self.pending.fetch_add(1, Ordering::Relaxed);
            let _queued = Queued(&self.pending);
            let stopped =
                || RecordRefusal::Unavailable("the issuance record's writer stopped".into());
            self.queue
                .send((entry.clone(), done))
                .await
                .map_err(|_| stopped())?;
            answer
                .await
                .map_err(|_| stopped())?
                .map_err(RecordRefusal::Unavailable)
        })
    }

    fn origin_of(&self, serial: &str) -> Option<String> {
        lock(&self.view)
            .entries
            .get(serial)
            .map(|e| e.origin.clone())
            .filter(|o| !o.is_empty())
    }

    fn live(&self, now: i64) -> Vec<Issuance> {
        let mut v: Vec<Issuance> = lock(&self.view)
            .entries
            .values()
            .filter(|e| e.not_after > now)
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.issued_at, &a.serial).cmp(&(b.issued_at, &b.serial)));
        v
    }

    fn failure(&self) -> Option<String> {
        let h = lock(&self.health);
        if !h.loaded {
            return Some(format!(
                "the IssuanceRecords in {} have not been read yet{}; until every replica's issuances are known none is issued (list and watch on issuancerecords.internal.weft.dev, see rbac.yaml and crds.yaml)",
                self.namespace,
                h.read_error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
        h.write_error.clone()
    }

    fn compact(&self, now: i64) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.drop_expired(now).await?;
            if lock(&self.health).write_error.is_none() {
                return Ok(());
            }
            match self.probe().await {
                Ok(()) => {
                    lock(&self.health).write_error = None;
                    Ok(())
                }
                Err(why) => {
                    lock(&self.health).write_error = Some(why.clone());
                    Err(why)
                }
            }
        })
    }

    fn compact_every(&self) -> Duration {
        Duration::from_secs(self.window.unsigned_abs())
    }
}
