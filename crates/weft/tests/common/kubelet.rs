//! The kubelet's part for a stand-in, from the pod object the API server
//! stored: its volumes materialised in a per-pod directory (projected
//! tokens by TokenRequest bound to the pod with the spec's audience and
//! expiry, ConfigMap keys, downward-API fields; written as the kubelet's
//! atomic writer does, `..data` swapped by rename), its init containers run
//! in order (a native sidecar started and probed before the next), each
//! with exactly the spec's argv and environment (plus the runtime's PATH
//! and HOSTNAME), its user, bounding capabilities, no-new-privs and
//! read-only root.
//!
//! Mounts use the spec's paths verbatim: `ip netns exec` gives each
//! container a private mount namespace, where the volume directories are
//! bind-mounted at their mount paths (the mount points are created on the
//! host as a runtime creates them in an image). `/etc/hosts` is the
//! kubelet's (localhost, the pod) plus, standing in for cluster DNS and
//! kube-proxy (neither runs here), the control plane's Service names at the
//! address of the one process serving them. Probes are HTTP GETs on the pod
//! IP from the node (the cp namespace), polled every 100 ms rather than
//! every `periodSeconds` so the time to ready is measured.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use testbed::k8s::api::{self, BoundTo};
use testbed::k8s::k8s_openapi::api::core::v1::{ConfigMap, Pod};
use testbed::k8s::kube::Client;
use testbed::k8s::kube::api::Api;

use super::kube::API_AUDIENCE;
use super::pod_spec::{self, Container, HttpProbe, Image, Source, Volume};
use super::proc::Proc;

const DEADLINE: Duration = Duration::from_secs(60);
/// A container image's default PATH (the weft image sets none).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Pod-level fields the stand-in honours, or that change nothing its
/// processes can observe (scheduling, the API server's defaults).
const POD_FIELDS: &[&str] = &[
    "containers",
    "initContainers",
    "volumes",
    "serviceAccountName",
    "serviceAccount",
    "nodeName",
    "restartPolicy",
    "dnsPolicy",
    "schedulerName",
    "securityContext",
    "terminationGracePeriodSeconds",
    "tolerations",
    "priority",
    "enableServiceLinks",
    "preemptionPolicy",
];

/// Refuses a pod whose spec asks for what the stand-in cannot do.
fn pod_level(pod: &Value) -> Result<()> {
    let spec = &pod["spec"];
    for k in spec.as_object().into_iter().flat_map(|o| o.keys()) {
        ensure!(
            POD_FIELDS.contains(&k.as_str()),
            "pod spec field {k} is not supported by the stand-in (supported: {POD_FIELDS:?})"
        );
    }
    // A pod-level user, group or fsGroup would change every container's.
    let sc = spec["securityContext"].as_object();
    ensure!(
        sc.is_none_or(|o| o.is_empty()),
        "pod securityContext {} is not supported by the stand-in",
        spec["securityContext"]
    );
    Ok(())
}

/// File contents and mode, by path in the volume.
type Payload = BTreeMap<String, (Vec<u8>, u32)>;

/// What every pod's kubelet shares.
pub struct Kubelet {
    pub images: BTreeMap<String, Image>,
    /// Extra `/etc/hosts` lines (the DNS stand-in).
    pub hosts: String,
    /// The node's network namespace, where probes come from.
    pub node_netns: String,
    pub root: PathBuf,
}

/// One pod's volumes and containers.
pub struct PodRun {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pod: Value,
    dir: PathBuf,
    node_netns: String,
    volumes: BTreeMap<String, (Volume, Payload, u32)>,
    pub containers: Vec<Container>,
}

/// `'…'` for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The kubelet's atomic writer: the payload in a new `..N` directory,
/// `..data` swapped to it by rename, each file a symlink through `..data`.
fn write_atomic(dir: &Path, payload: &Payload, generation: u32) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let ts = format!("..{generation}");
    let new = dir.join(&ts);
    std::fs::create_dir_all(&new)?;
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755))?;
    for (path, (bytes, mode)) in payload {
        let f = new.join(path);
        if let Some(p) = f.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(&f, bytes)?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&ts, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    for path in payload.keys() {
        let top = path.split('/').next().unwrap_or(path);
        let link = dir.join(top);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{top}"), &link)?;
        }
    }
    if generation > 0 {
        let _ = std::fs::remove_dir_all(dir.join(format!("..{}", generation - 1)));
    }
    Ok(())
}

async fn config_map_key(client: &Client, ns: &str, name: &str, key: &str) -> Result<Vec<u8>> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .with_context(|| format!("ConfigMap {ns}/{name}: the kubelet could not mount it"))?;
    cm.data
        .and_then(|mut d| d.remove(key))
        .map(String::into_bytes)
        .with_context(|| format!("ConfigMap {ns}/{name} has no key {key}"))
}

impl Kubelet {
    /// Runs `pod`'s init containers (stand-in netns `netns`, address `ip`):
    /// returns the pod and its sidecars, running and ready.
    pub fn start(
        &self,
        rt: &tokio::runtime::Runtime,
        client: &Client,
        netns: &str,
        ip: Ipv4Addr,
        pod: &Pod,
    ) -> Result<(PodRun, Vec<(String, Proc)>)> {
        let pod = serde_json::to_value(pod)?;
        pod_level(&pod)?;
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or("pod")
            .to_string();
        let dir = self.root.join(&name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("hosts"),
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost\n{ip}\t{name}\n{}",
                self.hosts
            ),
        )?;
        std::fs::set_permissions(dir.join("hosts"), std::fs::Permissions::from_mode(0o644))?;
        let containers = pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| pod_spec::container(&pod, c, &self.images))
            .collect::<Result<Vec<_>>>()?;
        let mut run = PodRun {
            name,
            netns: netns.to_string(),
            ip,
            pod,
            dir,
            node_netns: self.node_netns.clone(),
            volumes: BTreeMap::new(),
            containers,
        };
        let mut sidecars = Vec::new();
        for c in run.containers.clone() {
            for m in &c.mounts {
                if !run.volumes.contains_key(&m.volume) {
                    let v = pod_spec::volume(&run.pod, &m.volume)?;
                    let payload = rt.block_on(run.payload(client, &v))?;
                    write_atomic(&run.dir.join("volumes").join(&v.name), &payload, 0)?;
                    run.volumes.insert(v.name.clone(), (v, payload, 0));
                }
            }
            if c.sidecar {
                let t0 = Instant::now();
                let mut p = run.spawn(&c);
                run.until_ready(&c, &mut p)?;
                println!(
                    "{}: sidecar {} ready {:.1?} after it started",
                    run.name,
                    c.name,
                    t0.elapsed()
                );
                sidecars.push((c.name.clone(), p));
            } else {
                let out = run.command(&c).output()?;
                ensure!(
                    out.status.success(),
                    "{}: init container {} failed ({}):\n{}{}",
                    run.name,
                    c.name,
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok((run, sidecars))
    }
}

impl PodRun {
    fn field(&self, path: &str) -> Result<String> {
        pod_spec::field(&self.pod, path)
    }

    async fn payload(&self, client: &Client, v: &Volume) -> Result<Payload> {
        let ns = self.field("metadata.namespace")?;
        let mut out = Payload::new();
        for (path, source, mode) in &v.files {
            let bytes = match source {
                Source::Token { audience, expiry_s } => {
                    let sa = self.field("spec.serviceAccountName")?;
                    let bound = BoundTo {
                        kind: "Pod",
                        name: self.name.clone(),
                        uid: self.field("metadata.uid")?,
                    };
                    let audience = audience.as_deref().unwrap_or(API_AUDIENCE);
                    let expiry = Duration::from_secs(*expiry_s);
                    api::token(client, &ns, &sa, audience, Some(bound), expiry)
                        .await?
                        .into_bytes()
                }
                Source::ConfigMapKey { name, key } => {
                    config_map_key(client, &ns, name, key).await?
                }
                Source::Field(f) => self.field(f)?.into_bytes(),
            };
            out.insert(path.clone(), (bytes, *mode));
        }
        Ok(out)
    }

    /// As the kubelet's sync: every ConfigMap-backed file rewritten (one
    /// atomic swap per volume) when its object changed. Returns the
    /// volumes rewritten.
    pub fn sync(&mut self, rt: &tokio::runtime::Runtime, client: &Client) -> Result<Vec<String>> {
        let ns = self.field("metadata.namespace")?;
        let mut changed = Vec::new();
        for (name, (v, payload, generation)) in &mut self.volumes {
            let mut next = payload.clone();
            for (path, source, mode) in &v.files {
                if let Source::ConfigMapKey { name: cm, key } = source {
                    let bytes = rt.block_on(config_map_key(client, &ns, cm, key))?;
                    next.insert(path.clone(), (bytes, *mode));
                }
            }
            if next != *payload {
                *generation += 1;
                write_atomic(&self.dir.join("volumes").join(name), &next, *generation)?;
                *payload = next;
                changed.push(name.clone());
            }
        }
        Ok(changed)
    }

    /// The contents of `file` in volume `volume` as the containers see it.
    pub fn volume_file(&self, volume: &str, file: &str) -> Result<String> {
        let p = self.dir.join("volumes").join(volume).join(file);
        std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))
    }

    /// Container `c` of the pod, in its namespace, mounts and user.
    pub fn command(&self, c: &Container) -> Command {
        let mut mounts = c.mounts.clone();
        // Parents before children, as a runtime mounts them.
        mounts.sort_by_key(|m| m.path.matches('/').count());
        let mut script = String::from("set -e\n");
        for m in &mounts {
            let src = self.dir.join("volumes").join(&m.volume);
            let (src, path) = (quote(&src.to_string_lossy()), quote(&m.path));
            script.push_str(&format!("mkdir -p {path}\nmount --bind {src} {path}\n"));
            if m.read_only {
                script.push_str(&format!("mount -o remount,bind,ro {path}\n"));
            }
        }
        let hosts = quote(&self.dir.join("hosts").to_string_lossy());
        script.push_str(&format!("mount --bind {hosts} /etc/hosts\n"));
        if c.read_only_root {
            script.push_str("mount -o remount,bind,ro /\n");
        }
        if let Some(w) = &c.working_dir {
            script.push_str(&format!("cd {}\n", quote(w)));
        }
        script.push_str("exec \"$@\"\n");
        let mut caps = String::from("-all");
        for cap in &c.caps {
            caps.push_str(&format!(",+{}", cap.to_lowercase()));
        }
        let mut cmd = Command::new("ip");
        cmd.env_clear()
            .args(["netns", "exec", &self.netns, "/bin/sh", "-c", &script, "sh"])
            .args(["/usr/bin/env", "-i"])
            .arg(format!("PATH={PATH}"))
            .arg(format!("HOSTNAME={}", self.name))
            .args(c.env.iter().map(|(k, v)| format!("{k}={v}")))
            .arg("/usr/bin/setpriv")
            .arg(format!("--reuid={}", c.uid))
            .arg(format!("--regid={}", c.gid))
            .arg("--clear-groups")
            .arg(format!("--bounding-set={caps}"))
            .arg("--inh-caps=-all");
        if c.no_new_privs {
            cmd.arg("--no-new-privs");
        }
        cmd.arg("--").args(&c.argv);
        cmd
    }

    /// Starts container `c` (a sidecar).
    pub fn spawn(&self, c: &Container) -> Proc {
        Proc::spawn_cmd(self.command(c))
    }

    /// One probe from the node: its status code, if it answered.
    pub fn probe(&self, p: &HttpProbe) -> Result<Option<u16>> {
        let to = SocketAddr::from((self.ip, p.port));
        let path = p.path.clone();
        testbed::in_ns(&self.node_netns, move || {
            super::proc::http_get(to, &path).ok().map(|(code, _)| code)
        })
    }

    /// Polls `c`'s startup, then readiness probe (then liveness once) until
    /// each passes.
    pub fn until_ready(&self, c: &Container, proc: &mut Proc) -> Result<()> {
        let end = Instant::now() + DEADLINE;
        for p in [&c.startup, &c.readiness, &c.liveness]
            .into_iter()
            .flatten()
        {
            loop {
                let got = self.probe(p)?;
                if got.is_some_and(|code| (200..400).contains(&code)) {
                    break;
                }
                let exited = proc.child.try_wait().ok().flatten();
                if exited.is_some() || Instant::now() > end {
                    bail!(
                        "{}: {} probe GET :{}{} answered {got:?} (exited: {exited:?}):\n{}",
                        self.name,
                        c.name,
                        p.port,
                        p.path,
                        proc.output()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The sidecar named `name` as the spec gives it.
    pub fn container(&self, name: &str) -> Result<&Container> {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .with_context(|| format!("{} has no container {name}", self.name))
    }
}
