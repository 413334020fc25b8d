//! Helpers shared by the end-to-end tests: run the real `weft` binary and
//! openssl in a scratch directory.
#![allow(dead_code)]
// Test support: a panic is the failure report.
#![allow(clippy::unwrap_used)]

pub mod browser;
pub mod certify;
pub mod direct;
pub mod injected_mesh;
pub mod injector;
pub mod join;
pub mod kube;
pub mod kubelet;
pub mod mesh;
pub mod netmesh;
pub mod operator;
pub mod pipe;
pub mod pod_spec;
pub mod proc;
pub mod rotation;
pub mod stand_in_app;
pub mod stand_ins;
pub mod traffic;
pub mod watch;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The flags naming the guide material [`Scratch::guide_material`] writes
/// (`linkerd install`'s three files), as install, check and the control
/// plane take them.
pub const GUIDE_FILES: [&str; 6] = [
    "--identity-trust-anchors-file",
    "ca.crt",
    "--identity-issuer-certificate-file",
    "issuer.crt",
    "--identity-issuer-key-file",
    "issuer.key",
];

#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// A refusal: the exit code, a single error line, no panic.
    #[track_caller]
    pub fn refused(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "panic: {}", self.stderr);
        self
    }
}

pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn weft(&self, args: &[&str]) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run weft");
        Run::from(out)
    }

    /// `weft policy explain` on the resource directory `res` for a client
    /// at 127.0.0.1, plus `extra` flags; a verdict (exit 0 or 1), never an error.
    #[track_caller]
    pub fn explain(&self, from: &str, to: &str, extra: &[&str]) -> Run {
        let mut args = vec![
            "policy",
            "explain",
            "--resources",
            "res",
            "--from",
            from,
            "--from-ip",
            "127.0.0.1",
            "--to",
            to,
        ];
        args.extend_from_slice(extra);
        let r = self.weft(&args);
        assert!(
            r.code == 0 || r.code == 1,
            "explain {args:?}: {}\n{}",
            r.stdout,
            r.stderr
        );
        r
    }

    pub fn openssl(&self, args: &[&str]) -> Run {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run openssl (is it installed?)");
        Run::from(out)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    /// Replaces a file at once (write beside, rename), as an operator's
    /// tooling should, so readers never see it half-written.
    pub fn replace(&self, name: &str, contents: &str) {
        let tmp = self.path(&format!(".{name}.new"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, self.path(name)).unwrap();
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }

    pub fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A join token for service account `sa` in namespace demo, written by
    /// `weft token create` to `<sa>.token`; returns that file name.
    pub fn token(&self, sa: &str) -> String {
        let file = format!("{sa}.token");
        // The control plane's state directory; it may not have started yet.
        std::fs::create_dir_all(self.path("state")).expect("state dir");
        self.weft(&[
            "token",
            "create",
            "-n",
            "demo",
            "--service-account",
            sa,
            "--state-dir",
            "state",
            "--out",
            &file,
        ])
        .ok();
        file
    }

    /// `weft control-plane` on loopback (every listener on an ephemeral port)
    /// with the guide's material in this directory, plus `extra` flags (a
    /// flag given there replaces the default above).
    pub fn control_plane(&self, extra: &[&str]) -> proc::Proc {
        let mut args = vec!["control-plane"];
        args.extend(GUIDE_FILES);
        args.extend(LOOPBACK_LISTENERS);
        replace_defaults(&mut args, extra);
        proc::Proc::spawn(self.dir.path(), &args)
    }

    /// The guide's two commands, with `weft certs create` for `step certificate create`.
    pub fn guide_material(&self) {
        self.guide_material_for("87600h", "8760h");
    }

    /// The guide's material with these lifetimes (anchor, issuer).
    pub fn guide_material_for(&self, anchor: &str, issuer: &str) {
        self.anchor("ca", "root.linkerd.cluster.local", anchor);
        self.issuer("issuer", issuer, "ca");
    }

    /// The guide's anchor command: `name`.crt/.key (root-ca, `subject`,
    /// valid for `not_after`).
    pub fn anchor(&self, name: &str, subject: &str, not_after: &str) {
        let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
        self.weft(&[
            "certs",
            "create",
            subject,
            &crt,
            &key,
            "--profile",
            "root-ca",
            "--no-password",
            "--insecure",
            "--not-after",
            not_after,
        ])
        .ok();
    }

    /// The guide's issuer command: `name`.crt/.key (intermediate-ca, valid
    /// for `not_after`) signed by `ca`.crt/`ca`.key.
    pub fn issuer(&self, name: &str, not_after: &str, ca: &str) {
        let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
        let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
        self.weft(&[
            "certs",
            "create",
            "identity.linkerd.cluster.local",
            &crt,
            &key,
            "--profile",
            "intermediate-ca",
            "--not-after",
            not_after,
            "--no-password",
            "--insecure",
            "--ca",
            &ca_crt,
            "--ca-key",
            &ca_key,
        ])
        .ok();
    }

    /// An anchor and issuer made with openssl alone, as enterprise PKI might.
    pub fn openssl_material(&self, prefix: &str) {
        let ext = self.write(
            &format!("{prefix}-ext.cnf"),
            "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
        );
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{prefix}-ca.key"),
            "-out",
            &format!("{prefix}-ca.crt"),
            "-subj",
            "/CN=openssl-root",
            "-days",
            "3650",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
        .ok();
        // SEC1 ("EC PRIVATE KEY") issuer key, as step and older openssl write them.
        self.openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &format!("{prefix}-issuer.key"),
        ])
        .ok();
        self.openssl(&[
            "req",
            "-new",
            "-key",
            &format!("{prefix}-issuer.key"),
            "-out",
            &format!("{prefix}-issuer.csr"),
            "-subj",
            "/CN=openssl-issuer",
        ])
        .ok();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{prefix}-issuer.csr"),
            "-CA",
            &format!("{prefix}-ca.crt"),
            "-CAkey",
            &format!("{prefix}-ca.key"),
            "-CAcreateserial",
            "-days",
            "365",
            "-out",
            &format!("{prefix}-issuer.crt"),
            "-extfile",
            ext.to_str().unwrap(),
        ])
        .ok();
    }
}

/// The state dir and every control-plane listener on an ephemeral port of
/// the loopback (the address is printed at start-up).
pub const LOOPBACK_LISTENERS: [&str; 10] = [
    "--state-dir",
    "state",
    "--identity-addr",
    "127.0.0.1:0",
    "--destination-addr",
    "127.0.0.1:0",
    "--policy-addr",
    "127.0.0.1:0",
    "--admin-addr",
    "127.0.0.1:0",
];

pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Appends `extra` to `args`, first removing each flag (and its value) that
/// `extra` gives again, so callers override defaults rather than repeat them.
pub fn replace_defaults<S: AsRef<str> + PartialEq<S> + Clone>(args: &mut Vec<S>, extra: &[S]) {
    for flag in extra.iter().filter(|f| f.as_ref().starts_with("--")) {
        if let Some(i) = args.iter().position(|a| a == flag) {
            args.drain(i..i + 2);
        }
    }
    args.extend_from_slice(extra);
}
