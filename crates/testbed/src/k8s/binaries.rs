//! The control-plane binaries: found in the cache outside the clone, or
//! built there by `testenv/k8s/build.sh` the first time a test needs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Set to 1 (CI does) to make a missing toolchain a failure instead of a skip.
pub const REQUIRE_ENV: &str = "WEFT_REQUIRE_K8S";

/// One build per test binary at a time (build.sh also holds a file lock, so
/// test binaries running in parallel never build twice either).
static BUILD: Mutex<()> = Mutex::new(());

/// The recipe committed in the repository.
pub fn testenv_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testenv/k8s")
}

/// Where the binaries are, and what getting them cost this time.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub dir: PathBuf,
    /// Time spent in build.sh by this process (zero when they were cached).
    pub build_time: Duration,
    pub built_now: bool,
}

impl Binaries {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The bin dir and its key, as versions.env computes them (one source of truth).
fn locate() -> Result<(PathBuf, String)> {
    let env = testenv_dir().join("versions.env");
    let out = crate::run(Command::new("bash").arg("-c").arg(format!(
        ". '{}' && echo \"${{K8S_BIN_DIR:-$WEFT_K8S_CACHE/bin/$K8S_BIN_KEY}}\" && echo \"$K8S_BIN_KEY\"",
        env.display()
    )))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    match (lines.next(), lines.next()) {
        (Some(dir), Some(key)) if !dir.is_empty() && !key.is_empty() => {
            Ok((PathBuf::from(dir), key.to_string()))
        }
        _ => bail!(
            "{} gave no bin dir and key ({text:?}); it must set WEFT_K8S_CACHE and K8S_BIN_KEY",
            env.display()
        ),
    }
}

/// Straight to stderr, past the test harness's output capture: a skip or a
/// long build must be seen in a plain `cargo test` run.
fn loud(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

fn complete(dir: &Path, key: &str) -> bool {
    std::fs::read_to_string(dir.join(".complete")).is_ok_and(|s| s.trim() == key)
}

fn have_go() -> bool {
    Command::new("go")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The binaries, built first if they are missing. `Ok(None)` means "skip":
/// they are not built and cannot be (no Go), and `WEFT_REQUIRE_K8S` is not 1.
pub fn ensure_built(test: &str) -> Result<Option<Binaries>> {
    let (dir, key) = locate()?;
    if complete(&dir, &key) {
        return Ok(Some(Binaries {
            dir,
            build_time: Duration::ZERO,
            built_now: false,
        }));
    }
    if !have_go() {
        let why = format!(
            "the Kubernetes test environment ({key}) is not built in {} and there is no `go` on PATH to build it \
             (needs Go >= 1.26; then testenv/k8s/build.sh, or just rerun the tests)",
            dir.display()
        );
        if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
            bail!("{test}: {why}; {REQUIRE_ENV}=1 forbids skipping");
        }
        loud(&format!("\n*** SKIPPING {test}: {why} ***\n"));
        return Ok(None);
    }
    let _one = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    if complete(&dir, &key) {
        return Ok(Some(Binaries {
            dir,
            build_time: Duration::ZERO,
            built_now: false,
        }));
    }
    build(test, dir, &key).map(Some)
}

fn build(test: &str, dir: PathBuf, key: &str) -> Result<Binaries> {
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    // one log per process: a second test binary may be waiting on the same build
    let log = dir.with_file_name(format!("{key}.build-{}.log", std::process::id()));
    loud(&format!(
        "{test}: building the Kubernetes test environment into {} (cold: ~10 min on an idle 2-core machine, \
         up to an hour on a busy one; warm Go caches: ~1 min; log: {})",
        dir.display(),
        log.display()
    ));
    let file = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
    let t0 = Instant::now();
    let status = Command::new("bash")
        .arg(testenv_dir().join("build.sh"))
        .env("K8S_BIN_DIR", &dir)
        .stdout(Stdio::null())
        .stderr(file)
        .status()
        .context("spawn bash testenv/k8s/build.sh")?;
    let took = t0.elapsed();
    if !status.success() || !complete(&dir, key) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{test}: testenv/k8s/build.sh failed ({status}) after {took:.0?}; log {}:\n{}\n\
             fix the build (Go >= 1.26, the Go module proxy reachable) and rerun",
            log.display(),
            tail.join("\n")
        );
    }
    loud(&format!(
        "{test}: Kubernetes test environment built in {took:.1?}"
    ));
    Ok(Binaries {
        dir,
        build_time: took,
        built_now: true,
    })
}
