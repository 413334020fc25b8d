//! A trust-anchor rotation on Kubernetes: the anchors are the trust-roots
//! ConfigMap, the issuer the issuer Secret (both replaced only with a
//! resourceVersion precondition), the rotation's state the ConfigMap
//! `weft-rotation`, the issuer in force before activate the Secret
//! `weft-rotation-issuer`, and the lock the Lease `weft-rotation`, renewed
//! while a command runs: a run on another machine that stopped frees it
//! when its renewal runs out, one on this machine as soon as its process
//! is gone.

use std::path::PathBuf;
use std::time::Duration;

use control_plane::k8s::issuer::BUNDLE_KEY;
use control_plane::k8s::lease::may_take;
use k8s_openapi::ByteString;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::cluster::{Call, Cluster, pair_of, with_pair};
use super::progress::{Source, Target};
use super::state::Rotation;
use super::store::Store;
use super::{AtArgs, Plane};
use crate::cli::{Failure, Output};

/// The state ConfigMap's and the lock Lease's name.
pub const ROTATION: &str = "weft-rotation";
const STATE_KEY: &str = "rotation.json";
/// The Secret holding the issuer in force before activate.
pub const KEPT_ISSUER: &str = "weft-rotation-issuer";
/// How long the lock holds without a renewal, and how often it is renewed.
const LOCK_FOR: Duration = Duration::from_secs(30);
const RENEW_EVERY: Duration = Duration::from_secs(10);

pub struct ClusterStore {
    pub cluster: Cluster,
    kubeconfig: PathBuf,
    timeout: Duration,
    output: Output,
}

/// The lock's holder as the Lease names it: this machine and process.
fn me() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!("{host}/{}", std::process::id())
}

/// A holder on this machine whose process is gone. Pure but for /proc.
fn gone(holder: &str, mine: &str) -> bool {
    let host = |h: &str| h.rsplit_once('/').map(|(h, _)| h.to_string());
    match holder.rsplit_once('/').map(|(_, pid)| pid.parse::<u32>()) {
        Some(Ok(pid)) if host(holder) == host(mine) => {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => false,
    }
}

/// Releases the Lease when dropped; meanwhile a thread renews it.
struct Held {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Renews the Lease until told to stop, then deletes it if still ours. Its
/// own client: the command's runtime is not driven while it waits.
async fn keep_renewing(
    kubeconfig: PathBuf,
    namespace: String,
    me: String,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(client) = control_plane::k8s::client(Some(&kubeconfig)).await else {
        return;
    };
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    loop {
        let stopped = tokio::time::timeout(RENEW_EVERY, &mut stop).await.is_ok();
        let Ok(Some(mut lease)) = api.get_opt(ROTATION).await else {
            continue;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(me.as_str()) {
            return;
        }
        if stopped {
            let _ = api.delete(ROTATION, &DeleteParams::default()).await;
            return;
        }
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        let _ = api.replace(ROTATION, &PostParams::default(), &lease).await;
    }
}

fn lease_spec(me: &str, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(me.into()),
        lease_duration_seconds: Some(LOCK_FOR.as_secs() as i32),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        ..Default::default()
    }
}

/// An object of the control plane's namespace these calls read and write.
trait Object:
    kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
{
}

impl<K> Object for K where
    K: kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
{
}

impl ClusterStore {
    pub fn connect(at: &AtArgs, kubeconfig: PathBuf) -> Result<Self, Failure> {
        let cluster = Cluster::connect(Some(&kubeconfig), &at.namespace).map_err(Failure::fatal)?;
        Ok(Self {
            cluster,
            kubeconfig,
            timeout: at.timeout,
            output: at.output,
        })
    }

    fn ns(&self) -> &str {
        self.cluster.namespace()
    }

    fn call<'a>(&'a self, verb: &'static str, resource: &'static str, name: &'a str) -> Call<'a> {
        Call {
            verb,
            resource,
            name,
            namespace: self.cluster.namespace(),
        }
    }

    fn api<K: Object>(&self) -> Api<K> {
        Api::namespaced(self.cluster.client.clone(), self.ns())
    }

    fn get<K: Object>(&self, resource: &'static str, name: &str) -> Result<Option<K>, Failure> {
        self.cluster
            .rt
            .block_on(self.api::<K>().get_opt(name))
            .map_err(|e| Failure::fatal(self.call("get", resource, name).refused(e)))
    }

    /// Replaces `obj` (a compare-and-swap on its resourceVersion) or, when
    /// it has none, creates it.
    fn put<K: Object>(&self, resource: &'static str, name: &str, obj: &K) -> Result<K, Failure> {
        let api = self.api::<K>();
        let pp = PostParams::default();
        let (verb, r) = match obj.meta().resource_version {
            Some(_) => (
                "update",
                self.cluster.rt.block_on(api.replace(name, &pp, obj)),
            ),
            None => ("create", self.cluster.rt.block_on(api.create(&pp, obj))),
        };
        r.map_err(|e| Failure::fatal(self.call(verb, resource, name).refused(e)))
    }

    fn delete<K: Object>(&self, resource: &'static str, name: &str) -> Result<(), Failure> {
        match self
            .cluster
            .rt
            .block_on(self.api::<K>().delete(name, &DeleteParams::default()))
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(Failure::fatal(
                self.call("delete", resource, name).refused(e),
            )),
        }
    }

    fn meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(self.ns().into()),
            labels: Some([("app.kubernetes.io/managed-by".into(), "weft".into())].into()),
            ..Default::default()
        }
    }

    fn trust_roots(&self) -> Result<ConfigMap, Failure> {
        let name = &self.cluster.names.configmap;
        self.get::<ConfigMap>("configmaps", name)?.ok_or_else(|| {
            Failure::input(format!(
                "{} does not exist; the rotation needs the trust anchors as `weft install` creates them",
                self.cluster.names.configmap_object()
            ))
        })
    }

    fn issuer_secret(&self) -> Result<Secret, Failure> {
        self.get::<Secret>("secrets", &self.cluster.names.secret)?
            .ok_or_else(|| {
                Failure::input(format!(
                    "{} does not exist; the rotation needs the issuer as `weft install` creates it",
                    self.cluster.names.secret_object()
                ))
            })
    }

    fn locked(&self, holder: &str, renewed: Option<&MicroTime>) -> Failure {
        let ago = renewed
            .and_then(|MicroTime(t)| Timestamp::now().since(*t).ok())
            .map(|d| format!(", renewed {}s ago", d.get_seconds()))
            .unwrap_or_default();
        Failure::fatal(format!(
            "another trust-anchor rotation is running ({holder}; Lease {}/{ROTATION}{ago}); wait for it to finish, or stop it and re-run this command to resume (a stopped run's lock is free {}s after its last renewal)",
            self.ns(),
            LOCK_FOR.as_secs()
        ))
    }

    /// Takes the Lease: absent, ours, run out, or held by a process of
    /// this machine that is gone. Some(holder): a lock taken over.
    fn take(&self, me: &str) -> Result<Option<String>, Failure> {
        let now = Timestamp::now();
        let Some(mut lease) = self.get::<Lease>("leases", ROTATION)? else {
            let fresh = Lease {
                metadata: self.meta(ROTATION),
                spec: Some(lease_spec(me, now)),
            };
            return match self.put("leases", ROTATION, &fresh) {
                Ok(_) => Ok(None),
                Err(_) => Err(self.locked("a run that started just now", None)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if !may_take(&spec, me, now) && !gone(&holder, me) {
            return Err(self.locked(&holder, spec.renew_time.as_ref()));
        }
        lease.spec = Some(lease_spec(me, now));
        self.put("leases", ROTATION, &lease)
            .map_err(|_| self.locked("a run that took it just now", None))?;
        Ok((!holder.is_empty() && holder != me).then_some(holder))
    }
}

impl Plane for ClusterStore {
    /// The pair the Secret held, and the Secret as written.
    type Saved = (Option<(Vec<u8>, Vec<u8>)>, Secret);

    fn target(&self) -> Target<'_> {
        Target {
            source: Source::Cluster(&self.cluster),
            timeout: self.timeout,
        }
    }

    fn anchors_label(&self) -> String {
        self.cluster.names.configmap_object()
    }

    fn holder(&self) -> String {
        self.cluster.names.secret_object()
    }

    fn install(&self, new: &(Vec<u8>, Vec<u8>)) -> Result<Self::Saved, Failure> {
        let read = self.issuer_secret()?;
        let written = self
            .cluster
            .replace_secret(&with_pair(&read, &new.0, &new.1))
            .map_err(|e| Failure::fatal(format!("{e}; nothing was changed")))?;
        Ok((pair_of(&read), written))
    }

    fn put_back(&self, (old, written): Self::Saved) -> Result<(), Failure> {
        let old = old.ok_or_else(|| {
            Failure::fatal(format!("{} held no issuer pair to put back", self.holder()))
        })?;
        self.cluster
            .replace_secret(&with_pair(&written, &old.0, &old.1))
            .map(|_| ())
            .map_err(Failure::fatal)
    }

    fn renew_now(&self) -> super::Answers {
        self.cluster.renew_now()
    }
}

impl Store for ClusterStore {
    fn lock(&self) -> Result<(super::store::Guard, Option<String>), Failure> {
        let me = me();
        let taken_over = self.take(&me)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (kubeconfig, ns) = (self.kubeconfig.clone(), self.ns().to_string());
        let thread = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(keep_renewing(kubeconfig, ns, me, rx));
            }
        });
        let held = Held {
            stop: Some(tx),
            thread: Some(thread),
        };
        Ok((Box::new(held), taken_over))
    }

    fn load(&self) -> Result<Option<Rotation>, Failure> {
        let Some(cm) = self.get::<ConfigMap>("configmaps", ROTATION)? else {
            return Ok(None);
        };
        let text = cm.data.as_ref().and_then(|d| d.get(STATE_KEY));
        let parsed = text
            .map(|t| serde_json::from_str(t).map_err(|e| e.to_string()))
            .unwrap_or_else(|| Err(format!("it has no key {STATE_KEY}")));
        parsed.map(Some).map_err(|e| {
            Failure::input(format!(
                "ConfigMap {}/{ROTATION}: {e}; it holds the trust-anchor rotation's state; restore it, or delete it and run `weft rotate trust-anchor status` to see what is in force",
                self.ns()
            ))
        })
    }

    fn save(&self, r: &Rotation) -> Result<(), Failure> {
        let mut cm = self
            .get::<ConfigMap>("configmaps", ROTATION)?
            .unwrap_or_else(|| ConfigMap {
                metadata: self.meta(ROTATION),
                ..Default::default()
            });
        let text = serde_json::to_string_pretty(r).unwrap_or_default();
        cm.data = Some([(STATE_KEY.to_string(), text)].into());
        cm.metadata.managed_fields = None;
        self.put("configmaps", ROTATION, &cm).map(|_| ())
    }

    fn clear(&self) -> Result<(), Failure> {
        self.delete::<ConfigMap>("configmaps", ROTATION)
    }

    fn anchors(&self) -> Result<String, Failure> {
        let cm = self.trust_roots()?;
        cm.data
            .as_ref()
            .and_then(|d| d.get(BUNDLE_KEY))
            .cloned()
            .ok_or_else(|| {
                Failure::input(format!(
                    "{} has no key {BUNDLE_KEY}",
                    self.cluster.names.configmap_object()
                ))
            })
    }

    fn issuer_cert(&self) -> Result<Vec<u8>, Failure> {
        pair_of(&self.issuer_secret()?)
            .map(|(crt, _)| crt)
            .ok_or_else(|| Failure::input(format!("{} holds no issuer pair", self.holder())))
    }

    fn write_anchors(&self, pem: &str) -> Result<bool, Failure> {
        let mut cm = self.trust_roots()?;
        let data = cm.data.get_or_insert_with(Default::default);
        if data.get(BUNDLE_KEY).is_some_and(|s| s == pem) {
            return Ok(false);
        }
        data.insert(BUNDLE_KEY.into(), pem.into());
        cm.metadata.managed_fields = None;
        let name = self.cluster.names.configmap.clone();
        self.put("configmaps", &name, &cm)?;
        Ok(true)
    }

    fn keep_issuer(&self) -> Result<(), Failure> {
        let secret = self.issuer_secret()?;
        let (crt, key) = pair_of(&secret)
            .ok_or_else(|| Failure::input(format!("{} holds no issuer pair", self.holder())))?;
        let label = PathBuf::from(self.holder());
        let in_secret = pki::parse_certs(&label, &crt)
            .ok()
            .and_then(|c| c.first().map(|c| pki::fingerprint(c)))
            .unwrap_or_default();
        let v = self.cluster.fleet().map_err(Failure::fatal)?;
        if let Some(served) = v.bundle.as_ref().map(|b| &b.issuer_sha256)
            && *served != in_secret
        {
            return Err(Failure::fatal(format!(
                "{} holds issuer {}, but the control plane serves issuer {}: an edit it has not taken or refused (see `weft check`); nothing was changed: put the issuer in force back into {}, or wait until the control plane takes it, then re-run",
                self.holder(),
                &in_secret[..12.min(in_secret.len())],
                &served[..12.min(served.len())],
                self.holder()
            )));
        }
        let mut kept = self
            .get::<Secret>("secrets", KEPT_ISSUER)?
            .unwrap_or_else(|| Secret {
                metadata: self.meta(KEPT_ISSUER),
                type_: Some("kubernetes.io/tls".into()),
                ..Default::default()
            });
        kept.metadata.managed_fields = None;
        kept.data = Some(
            [
                ("tls.crt".to_string(), ByteString(crt)),
                ("tls.key".to_string(), ByteString(key)),
            ]
            .into(),
        );
        self.put("secrets", KEPT_ISSUER, &kept).map(|_| ())
    }

    fn kept_issuer(&self) -> Result<(Vec<u8>, Vec<u8>), Failure> {
        self.get::<Secret>("secrets", KEPT_ISSUER)?
            .as_ref()
            .and_then(pair_of)
            .ok_or_else(|| {
                Failure::fatal(format!(
                    "Secret {}/{KEPT_ISSUER}, where activate kept the issuer in force before it, is missing or holds no pair; put that issuer back with `weft rotate issuer --cert … --key …`",
                    self.ns()
                ))
            })
    }

    fn drop_kept_issuer(&self) {
        let _ = self.delete::<Secret>("secrets", KEPT_ISSUER);
    }

    fn output(&self) -> Output {
        self.output
    }

    fn flags(&self) -> String {
        format!(
            "--kubeconfig {} --namespace {}",
            self.kubeconfig.display(),
            self.ns()
        )
    }

    fn new_issuer_files(&self) -> (PathBuf, PathBuf) {
        ("issuer-new.crt".into(), "issuer-new.key".into())
    }

    fn renew_hint(&self) -> String {
        "a restart of its pod (`kubectl rollout restart` on its workload)".into()
    }

    fn restart_hint(&self) -> String {
        format!(
            "restarted: its pod reads the trust anchors from {} when it starts (`kubectl rollout restart` on its workload)",
            self.cluster.names.configmap_object()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_of_this_machine_is_free_once_its_process_is_gone() {
        let mine = me();
        let host = mine.rsplit_once('/').map(|(h, _)| h).unwrap_or_default();
        assert!(!gone(&mine, &mine), "this process is alive");
        assert!(gone(&format!("{host}/4194303999"), &mine));
        assert!(!gone("another-host/4194303999", &mine));
        assert!(!gone("no pid here", &mine));
    }
}
