//! The mesh of injected pods: [`Mesh`] with weft installed and its webhook
//! injecting, stand-ins running what their pod objects say (see
//! `common::kubelet`), ConfigMap volumes following their objects, and a
//! sidecar restarted as the kubelet restarts a container.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use testbed::k8s::K8sEnv;
use testbed::k8s::k8s_openapi::api::core::v1::Service;
use testbed::k8s::kube::Client;
use testbed::k8s::kube::api::{Api, ListParams};

use super::Scratch;
use super::kube::kubeconfig_for;
use super::kubelet::Kubelet;
use super::netmesh::PROXY_UID;
use super::pod_spec::Image;
use super::stand_ins::{IMAGE_UID, Mesh, WEFT_IMAGE, start_cp};

impl<'a> Mesh<'a> {
    /// weft installed (`common::injector::install`): one control plane as
    /// the installed ServiceAccount with `extra` flags (the webhook's), and
    /// stand-ins that run their pod objects' injected spec, the weft image
    /// being this build's binary.
    pub fn start_installed(
        env: &'a K8sEnv,
        rt: &'a tokio::runtime::Runtime,
        client: Client,
        s: &'a Scratch,
        (ns, cp_ns): (&str, &str),
        extra: &[&str],
    ) -> Result<Self> {
        std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let kubeconfig = rt.block_on(kubeconfig_for(env, &client, cp_ns, s))?;
        let cp = start_cp(env, s, cp_ns, &kubeconfig, 0, extra);
        let weft = std::path::Path::new(env!("CARGO_BIN_EXE_weft"));
        let bin = testbed::executable_copy(weft, s.dir.path(), PROXY_UID)?;
        // Cluster DNS and kube-proxy stand-in: the control plane's Services
        // by name, at the one process serving them.
        let services = rt.block_on(
            Api::<Service>::namespaced(client.clone(), cp_ns).list(&ListParams::default()),
        )?;
        let ip = env.cp().ip;
        let hosts = services
            .iter()
            .filter_map(|svc| svc.metadata.name.as_ref())
            .map(|name| format!("{ip}\t{name}.{cp_ns}.svc.cluster.local\n"))
            .collect();
        let image = Image {
            entrypoint: bin.clone(),
            uid: IMAGE_UID,
        };
        let kubelet = Kubelet {
            images: BTreeMap::from([(WEFT_IMAGE.to_string(), image)]),
            hosts,
            node_netns: env.cp().ns.clone(),
            root: s.path("kubelet"),
        };
        Ok(Self {
            env,
            rt,
            client,
            s,
            ns: ns.to_string(),
            cp_ns: cp_ns.to_string(),
            bin,
            stand_ins: BTreeMap::new(),
            proxy_cp: Vec::new(),
            kubelet: Some(kubelet),
            cps: vec![Some(cp)],
        })
    }

    /// As the kubelet's volume sync: every injected stand-in's ConfigMap
    /// files follow their objects. Returns (pod, volume) rewritten.
    pub fn sync_volumes(&mut self) -> Result<Vec<(String, String)>> {
        let mut changed = Vec::new();
        for (name, s) in &mut self.stand_ins {
            if let Some(run) = &mut s.run {
                for v in run.sync(self.rt, &self.client)? {
                    changed.push((name.clone(), v));
                }
            }
        }
        Ok(changed)
    }

    /// A file of a volume as `pod`'s containers see it.
    pub fn volume_file(&self, pod: &str, volume: &str, file: &str) -> Result<String> {
        self.of_pod(pod)
            .find_map(|s| s.run.as_ref())
            .with_context(|| format!("no injected stand-in for {pod}"))?
            .volume_file(volume, file)
    }

    /// SIGKILLs `pod`'s proxy sidecar and starts it again from the same
    /// spec, as the kubelet restarts a container; returns the time from the
    /// restart until its probes passed.
    pub fn restart_sidecar(&mut self, pod: &str) -> Result<Duration> {
        let name = self
            .stand_ins
            .keys()
            .find(|n| n.as_str() == pod || n.starts_with(&format!("{pod}-")))
            .cloned()
            .with_context(|| format!("no stand-in for {pod}"))?;
        let s = self.stand_ins.get_mut(&name).context("stand-in")?;
        let run = s.run.as_ref().context("not an injected stand-in")?;
        s.proxy.child.kill()?;
        s.proxy.child.wait()?;
        let c = run.container(inject::PROXY_CONTAINER)?.clone();
        let t0 = Instant::now();
        let mut proxy = run.spawn(&c);
        run.until_ready(&c, &mut proxy)?;
        let took = t0.elapsed();
        s.proxy = proxy;
        Ok(took)
    }

    /// Waits for a line of the control plane's log (deadline 60 s).
    pub fn wait_cp_line(&self, needle: &str) -> Result<String> {
        let cp = self.cps[0]
            .as_ref()
            .context("the control plane was killed")?;
        Ok(cp.wait_for_line(needle, Duration::from_secs(60)))
    }

    /// `pod`'s proxy sidecar as the stand-in runs it: argv, user, bounding
    /// capabilities, environment and mounts.
    pub fn describe(&self, pod: &str) -> Result<String> {
        let run = self
            .of_pod(pod)
            .find_map(|s| s.run.as_ref())
            .with_context(|| format!("no injected stand-in for {pod}"))?;
        let c = run.container(inject::PROXY_CONTAINER)?;
        let env: Vec<String> = c.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mounts: Vec<String> = c
            .mounts
            .iter()
            .map(|m| format!("{}:{}", m.volume, m.path))
            .collect();
        Ok(format!(
            "argv {:?} uid {} caps {:?}\n  env {env:#?}\n  mounts {mounts:?}",
            c.argv, c.uid, c.caps
        ))
    }
}

impl Mesh<'_> {
    /// Each stand-in's proxy process id, by pod: the same ids later mean
    /// no proxy was restarted.
    pub fn proxy_pids(&mut self) -> Result<BTreeMap<String, u32>> {
        let mut pids = BTreeMap::new();
        for (name, s) in &mut self.stand_ins {
            anyhow::ensure!(s.proxy.child.try_wait()?.is_none(), "{name}'s proxy exited");
            pids.insert(name.clone(), s.proxy.child.id());
        }
        Ok(pids)
    }
}
