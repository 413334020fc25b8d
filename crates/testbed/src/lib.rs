//! A test bed of network-namespace "pods" joined by veth pairs to a bridge
//! that lives in a fabric namespace of its own (never the host's). Each bed
//! is isolated, so beds can run in parallel with the same addresses; every
//! namespace is named `weft-<pid>-<n>-...`, and namespaces left by dead
//! processes are swept when a bed starts. Dropping the bed removes it all.

pub mod http_app;
pub mod k8s;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Every bed's pods live in 10.10.0.0/24 (beds are isolated from each other
/// and from the host, so they may all use it).
pub const BED_NET: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 0);
pub const BED_PREFIX: u8 = 24;

/// Whether root-only tests can run. Without root they skip loudly, unless
/// `WEFT_REQUIRE_ROOT=1` (CI), where missing root is a failure.
pub fn have_root(test: &str) -> bool {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if root {
        return true;
    }
    if std::env::var("WEFT_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!(
            "{test}: needs root (network namespaces, iptables) and WEFT_REQUIRE_ROOT=1 forbids skipping"
        );
    }
    eprintln!(
        "\n*** SKIPPING {test}: needs root for network namespaces and iptables; run as root (CI sets WEFT_REQUIRE_ROOT=1) ***\n"
    );
    false
}

/// Runs a command, failing with its output when it fails.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

/// Deletes `weft-<pid>-...` namespaces whose process is gone.
pub fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("weft-") else {
            continue;
        };
        let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
}

impl Pod {
    /// A command that runs inside this pod's network namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// A command run inside the pod as an unprivileged user.
    pub fn cmd_as(&self, uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg(program);
        c
    }
}

pub struct Bed {
    pub id: String,
    pub fabric: String,
    pub pods: Vec<Pod>,
    /// The fabric-side interface of each pod's veth, for captures.
    pub links: Vec<String>,
    pub dir: PathBuf,
}

impl Bed {
    pub fn new(dir: &Path) -> Result<Self> {
        sweep_stale();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}-{n}", std::process::id());
        let fabric = format!("weft-{id}-fabric");
        ip(&["netns", "add", &fabric])?;
        let bed = Self {
            id,
            fabric,
            pods: Vec::new(),
            links: Vec::new(),
            dir: dir.to_path_buf(),
        };
        ip(&[
            "netns",
            "exec",
            &bed.fabric,
            "ip",
            "link",
            "add",
            "br0",
            "type",
            "bridge",
        ])?;
        ip(&[
            "netns",
            "exec",
            &bed.fabric,
            "ip",
            "link",
            "set",
            "br0",
            "up",
        ])?;
        ip(&[
            "netns",
            "exec",
            &bed.fabric,
            "ip",
            "link",
            "set",
            "lo",
            "up",
        ])?;
        Ok(bed)
    }

    /// Adds a pod at 10.10.0.<k+2>/24.
    pub fn pod(&mut self, name: &str) -> Result<usize> {
        let k = self.pods.len();
        let addr = Ipv4Addr::new(10, 10, 0, u8::try_from(k + 2).context("too many pods")?);
        self.pod_at(name, addr)
    }

    /// Adds a pod with the given address, which must be a free host address
    /// of the bed's subnet (e.g. the IP Kubernetes gave the pod it stands in for).
    pub fn pod_at(&mut self, name: &str, addr: Ipv4Addr) -> Result<usize> {
        let mask = u32::MAX << (32 - BED_PREFIX);
        let host = u32::from(addr) & !mask;
        if u32::from(addr) & mask != u32::from(BED_NET) || host == 0 || host == !mask {
            bail!(
                "{addr} is not a host address of the bed's subnet {BED_NET}/{BED_PREFIX}; pick one inside it"
            );
        }
        if let Some(p) = self.pods.iter().find(|p| p.ip == addr || p.name == name) {
            bail!(
                "pod {name} at {addr}: pod {} already has {}; pick another name and address",
                p.name,
                p.ip
            );
        }
        let k = self.pods.len();
        let ns = format!("weft-{}-{name}", self.id);
        ip(&["netns", "add", &ns])?;
        // Interface names under 15 characters, unique per bed and pod.
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let (inner, outer) = (format!("wp{n}a"), format!("wp{n}b"));
        ip(&[
            "link", "add", &inner, "type", "veth", "peer", "name", &outer,
        ])?;
        ip(&["link", "set", &inner, "netns", &ns])?;
        ip(&["link", "set", &outer, "netns", &self.fabric])?;
        ip(&[
            "netns",
            "exec",
            &self.fabric,
            "ip",
            "link",
            "set",
            &outer,
            "master",
            "br0",
        ])?;
        ip(&[
            "netns",
            "exec",
            &self.fabric,
            "ip",
            "link",
            "set",
            &outer,
            "up",
        ])?;
        ip(&[
            "netns",
            "exec",
            &ns,
            "ip",
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &inner,
        ])?;
        ip(&[
            "netns", "exec", &ns, "ip", "link", "set", &inner, "name", "eth0",
        ])?;
        ip(&["netns", "exec", &ns, "ip", "link", "set", "eth0", "up"])?;
        ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        self.pods.push(Pod {
            name: name.to_string(),
            ns,
            ip: addr,
        });
        self.links.push(outer);
        Ok(k)
    }

    /// Removes a pod: its namespace and with it its veth and iptables
    /// rules (kill what runs inside first; a namespace lives on while a
    /// process holds it). Its address is free again afterwards.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        let i = self
            .pods
            .iter()
            .position(|p| p.name == name)
            .with_context(|| format!("no pod {name} in bed {}", self.id))?;
        let pod = self.pods.remove(i);
        let link = self.links.remove(i);
        let _ = ip(&["netns", "exec", &self.fabric, "ip", "link", "del", &link]);
        ip(&["netns", "del", &pod.ns]).map(|_| ())
    }

    pub fn by_name(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .expect("no such pod")
    }

    /// The fabric-side link of a pod (capture there to see what crosses).
    pub fn link_of(&self, name: &str) -> &str {
        let i = self
            .pods
            .iter()
            .position(|p| p.name == name)
            .expect("no such pod");
        &self.links[i]
    }

    /// A command in the fabric namespace (e.g. tcpdump on a link).
    pub fn fabric_cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.fabric, program]);
        c
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for p in &self.pods {
            let _ = Command::new("ip").args(["netns", "del", &p.ns]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.fabric])
            .output();
    }
}

/// A copy of `bin` that user `uid` can execute, in `dir`.
pub fn executable_copy(bin: &Path, dir: &Path, uid: u32) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dest = dir.join("weft-bin");
    std::fs::copy(bin, &dest)?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::chown(&dest, Some(uid), Some(uid))?;
    Ok(dest)
}

/// Runs `f` on a thread that has entered `ns`'s network namespace, so the
/// sockets it makes live there (an unmodified app inside the pod).
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || -> Result<T> {
        let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .with_context(|| format!("setns {path}"))?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in {ns} panicked"))?
}

/// The future `f` makes, run to completion on a current-thread runtime of
/// its own inside network namespace `ns`.
pub fn block_on_in<T: Send + 'static, F: std::future::Future<Output = T>>(
    ns: &str,
    f: impl FnOnce() -> F + Send + 'static,
) -> Result<T> {
    in_ns(ns, move || -> Result<T> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a runtime for the namespace's thread")?;
        Ok(rt.block_on(f()))
    })?
}

/// Raises this process's open-file soft limit to the hard limit (tests that
/// hold many sockets at once).
pub fn raise_nofile() -> u64 {
    bounds::raise_nofile()
}
