//! What a kubelet reads from a pod object, as plain data: each container's
//! program, arguments, environment (`valueFrom.fieldRef` resolved from the
//! pod, `$(VAR)` expanded), user, capabilities, mounts and probes, and the
//! volumes those mounts need. Pure, so the stand-ins run exactly what the
//! API server stored (after the webhook mutated it).
//!
//! Every field is either honoured, or listed in [`NOT_EMULATED`] (it changes
//! nothing a test can observe here), or refused: a spec feature the
//! stand-in does not know fails the test, naming it, instead of being
//! silently skipped.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// Container fields a stand-in does not emulate: scheduling and runtime
/// bookkeeping that the processes cannot observe.
pub const NOT_EMULATED: &[&str] = &[
    "imagePullPolicy",
    "resources",
    "terminationMessagePolicy",
    "terminationMessagePath",
];
/// Container fields honoured (see [`Container`]).
const HONOURED: &[&str] = &[
    "name",
    "image",
    "command",
    "args",
    "env",
    "volumeMounts",
    "securityContext",
    "restartPolicy",
    "ports",
    "startupProbe",
    "readinessProbe",
    "livenessProbe",
    "workingDir",
];
/// The capabilities a container runtime grants by default (containerd's).
const DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// An image's entrypoint and default user, as the image config gives them.
#[derive(Debug, Clone)]
pub struct Image {
    pub entrypoint: PathBuf,
    pub uid: u32,
}

/// One volume mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub volume: String,
    pub path: String,
    pub read_only: bool,
}

/// An HTTP probe: GET `path` on the pod IP at `port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    pub path: String,
    pub port: u16,
}

/// A container as the kubelet would run it.
#[derive(Debug, Clone)]
pub struct Container {
    pub name: String,
    /// argv: the entrypoint (the image's, or `command`) and the arguments.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub uid: u32,
    pub gid: u32,
    /// The bounding set, upper-case names without `CAP_`.
    pub caps: Vec<String>,
    pub no_new_privs: bool,
    pub read_only_root: bool,
    pub mounts: Vec<Mount>,
    pub working_dir: Option<String>,
    /// `restartPolicy: Always` on an init container: a native sidecar.
    pub sidecar: bool,
    pub startup: Option<HttpProbe>,
    pub readiness: Option<HttpProbe>,
    pub liveness: Option<HttpProbe>,
}

/// One file of a volume's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A service-account token (TokenRequest bound to the pod).
    Token {
        audience: Option<String>,
        expiry_s: u64,
    },
    /// A key of a ConfigMap in the pod's namespace (followed when it changes).
    ConfigMapKey { name: String, key: String },
    /// A downward-API field of the pod.
    Field(String),
}

/// A volume: files (path in the volume, source, mode), or an empty dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub files: Vec<(String, Source, u32)>,
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn keys_within(what: &str, v: &Value, known: &[&str]) -> Result<()> {
    for k in v.as_object().into_iter().flat_map(|o| o.keys()) {
        ensure!(
            known.contains(&k.as_str()),
            "{what}: field {k} is not supported by the stand-in (supported: {known:?}); teach tests/common/pod_spec.rs what a kubelet does with it"
        );
    }
    Ok(())
}

/// A `fieldRef.fieldPath` resolved from the pod object, as the kubelet does.
pub fn field(pod: &Value, path: &str) -> Result<String> {
    let got = match path {
        "metadata.name" => str_at(&pod["metadata"], "name"),
        "metadata.namespace" => str_at(&pod["metadata"], "namespace"),
        "metadata.uid" => str_at(&pod["metadata"], "uid"),
        "spec.serviceAccountName" => str_at(&pod["spec"], "serviceAccountName"),
        "spec.nodeName" => str_at(&pod["spec"], "nodeName"),
        "status.podIP" => str_at(&pod["status"], "podIP"),
        "status.hostIP" => str_at(&pod["status"], "hostIP"),
        _ => {
            let (map, key) = path
                .strip_prefix("metadata.labels['")
                .map(|k| ("labels", k))
                .or_else(|| {
                    path.strip_prefix("metadata.annotations['")
                        .map(|k| ("annotations", k))
                })
                .with_context(|| format!("fieldRef {path} is not supported by the stand-in"))?;
            let key = key.strip_suffix("']").context("fieldRef: unclosed ['")?;
            return Ok(str_at(&pod["metadata"][map], key)
                .unwrap_or_default()
                .to_string());
        }
    };
    got.map(str::to_string)
        .with_context(|| format!("the pod object has no {path}"))
}

/// `$(VAR)` references to variables defined before, as the kubelet expands
/// them; `$$` is a literal `$`; unknown references stay as written.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, v)) = env.iter().rev().find(|(k, _)| *k == inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn env_of(pod: &Value, c: &Value) -> Result<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_array().into_iter().flatten() {
        keys_within("env", e, &["name", "value", "valueFrom"])?;
        let name = str_at(e, "name").context("an env entry without a name")?;
        let value = match (e.get("value"), e.get("valueFrom")) {
            (_, Some(from)) => {
                keys_within(&format!("env {name} valueFrom"), from, &["fieldRef"])?;
                let path = str_at(&from["fieldRef"], "fieldPath")
                    .with_context(|| format!("env {name}: fieldRef without fieldPath"))?;
                field(pod, path)?
            }
            (Some(v), None) => expand(v.as_str().unwrap_or_default(), &env),
            (None, None) => String::new(),
        };
        env.push((name.to_string(), value));
    }
    Ok(env)
}

fn probe(what: &str, c: &Value, p: &Value) -> Result<Option<HttpProbe>> {
    if p.is_null() {
        return Ok(None);
    }
    keys_within(
        what,
        p,
        &[
            "httpGet",
            "periodSeconds",
            "failureThreshold",
            "timeoutSeconds",
            "successThreshold",
            "initialDelaySeconds",
        ],
    )?;
    let get = &p["httpGet"];
    keys_within(&format!("{what}.httpGet"), get, &["path", "port", "scheme"])?;
    ensure!(
        str_at(get, "scheme").unwrap_or("HTTP") == "HTTP",
        "{what}: only HTTP probes are supported"
    );
    let port = match &get["port"] {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(name) => c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| str_at(p, "name") == Some(name))
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|n| u16::try_from(n).ok()),
        _ => None,
    }
    .with_context(|| {
        format!(
            "{what}: port {} is not a port of the container",
            get["port"]
        )
    })?;
    Ok(Some(HttpProbe {
        path: str_at(get, "path").unwrap_or("/").to_string(),
        port,
    }))
}

fn security(c: &Value, image: &Image, out: &mut Container) -> Result<()> {
    let sc = &c["securityContext"];
    keys_within(
        "securityContext",
        sc,
        &[
            "runAsUser",
            "runAsGroup",
            "runAsNonRoot",
            "privileged",
            "allowPrivilegeEscalation",
            "readOnlyRootFilesystem",
            "capabilities",
            "seccompProfile",
        ],
    )?;
    let num = |k: &str| sc[k].as_u64().and_then(|n| u32::try_from(n).ok());
    out.uid = num("runAsUser").unwrap_or(image.uid);
    out.gid = num("runAsGroup").unwrap_or(out.uid);
    ensure!(
        !(sc["runAsNonRoot"] == Value::Bool(true) && out.uid == 0),
        "{}: runAsNonRoot with uid 0: the kubelet would refuse to start it",
        out.name
    );
    ensure!(
        sc["privileged"] != Value::Bool(true),
        "{}: privileged containers are not supported by the stand-in",
        out.name
    );
    // seccomp RuntimeDefault filters syscalls no weft process makes.
    let seccomp = str_at(&sc["seccompProfile"], "type").unwrap_or("RuntimeDefault");
    ensure!(
        seccomp == "RuntimeDefault",
        "{}: seccompProfile {seccomp} is not supported by the stand-in",
        out.name
    );
    out.no_new_privs = sc["allowPrivilegeEscalation"] == Value::Bool(false);
    out.read_only_root = sc["readOnlyRootFilesystem"] == Value::Bool(true);
    let caps = &sc["capabilities"];
    keys_within("capabilities", caps, &["add", "drop"])?;
    let list = |k: &str| -> Vec<String> {
        caps[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|s| s.trim_start_matches("CAP_").to_uppercase())
            .collect()
    };
    let drop = list("drop");
    let mut set: Vec<String> = if drop.iter().any(|d| d == "ALL") {
        Vec::new()
    } else {
        DEFAULT_CAPS
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    set.extend(list("add"));
    set.sort();
    set.dedup();
    out.caps = set;
    Ok(())
}

/// Container `c` of `pod` as the kubelet would run it, `images` giving each
/// image's entrypoint (an unknown image fails).
pub fn container(pod: &Value, c: &Value, images: &BTreeMap<String, Image>) -> Result<Container> {
    let name = str_at(c, "name").context("a container without a name")?;
    for k in c.as_object().into_iter().flat_map(|o| o.keys()) {
        ensure!(
            HONOURED.contains(&k.as_str()) || NOT_EMULATED.contains(&k.as_str()),
            "container {name}: field {k} is not supported by the stand-in; teach tests/common/pod_spec.rs what a kubelet does with it"
        );
    }
    let image_ref = str_at(c, "image").context("a container without an image")?;
    let image = images.get(image_ref).with_context(|| {
        format!(
            "container {name}: image {image_ref} is not one the stand-in knows ({:?})",
            images.keys()
        )
    })?;
    let env = env_of(pod, c)?;
    let strings = |k: &str| -> Vec<String> {
        c[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|s| expand(s, &env))
            .collect()
    };
    let command = strings("command");
    let mut argv = if command.is_empty() {
        vec![image.entrypoint.to_string_lossy().into_owned()]
    } else {
        command
    };
    argv.extend(strings("args"));
    let mounts = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            keys_within("volumeMounts", m, &["name", "mountPath", "readOnly"])?;
            Ok(Mount {
                volume: str_at(m, "name").context("a mount without a name")?.into(),
                path: str_at(m, "mountPath")
                    .context("a mount without a path")?
                    .into(),
                read_only: m["readOnly"] == Value::Bool(true),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let restart = str_at(c, "restartPolicy");
    ensure!(
        matches!(restart, None | Some("Always")),
        "container {name}: restartPolicy {restart:?} is not supported by the stand-in"
    );
    let mut out = Container {
        name: name.to_string(),
        argv,
        env,
        uid: 0,
        gid: 0,
        caps: Vec::new(),
        no_new_privs: false,
        read_only_root: false,
        mounts,
        working_dir: str_at(c, "workingDir").map(str::to_string),
        sidecar: restart == Some("Always"),
        startup: probe(&format!("{name} startupProbe"), c, &c["startupProbe"])?,
        readiness: probe(&format!("{name} readinessProbe"), c, &c["readinessProbe"])?,
        liveness: probe(&format!("{name} livenessProbe"), c, &c["livenessProbe"])?,
    };
    security(c, image, &mut out)?;
    Ok(out)
}

fn mode(v: &Value, default: u32) -> u32 {
    v.as_u64()
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(default)
}

fn config_map_items(
    cm: &Value,
    default_mode: u32,
    files: &mut Vec<(String, Source, u32)>,
) -> Result<()> {
    keys_within("configMap", cm, &["name", "items", "defaultMode"])?;
    let name = str_at(cm, "name").context("a configMap volume without a name")?;
    let items = cm["items"].as_array().with_context(|| {
        format!(
            "configMap {name}: a volume of every key is not supported by the stand-in; list items"
        )
    })?;
    for i in items {
        keys_within("configMap item", i, &["key", "path", "mode"])?;
        let key = str_at(i, "key").context("an item without a key")?;
        files.push((
            str_at(i, "path").unwrap_or(key).to_string(),
            Source::ConfigMapKey {
                name: name.into(),
                key: key.into(),
            },
            mode(&i["mode"], mode(&cm["defaultMode"], default_mode)),
        ));
    }
    Ok(())
}

fn projected(name: &str, p: &Value, files: &mut Vec<(String, Source, u32)>) -> Result<()> {
    keys_within("projected", p, &["sources", "defaultMode"])?;
    let default_mode = mode(&p["defaultMode"], 0o644);
    for src in p["sources"].as_array().into_iter().flatten() {
        if let Some(t) = src.get("serviceAccountToken") {
            keys_within(
                "serviceAccountToken",
                t,
                &["audience", "expirationSeconds", "path"],
            )?;
            files.push((
                str_at(t, "path").context("a token without a path")?.into(),
                Source::Token {
                    audience: str_at(t, "audience").map(str::to_string),
                    expiry_s: t["expirationSeconds"].as_u64().unwrap_or(3600),
                },
                default_mode,
            ));
        } else if let Some(cm) = src.get("configMap") {
            config_map_items(cm, default_mode, files)?;
        } else if let Some(d) = src.get("downwardAPI") {
            keys_within("downwardAPI", d, &["items"])?;
            for i in d["items"].as_array().into_iter().flatten() {
                keys_within("downwardAPI item", i, &["path", "fieldRef", "mode"])?;
                let path = str_at(&i["fieldRef"], "fieldPath").context("no fieldPath")?;
                files.push((
                    str_at(i, "path").context("no path")?.into(),
                    Source::Field(path.into()),
                    mode(&i["mode"], default_mode),
                ));
            }
        } else {
            bail!("volume {name}: projected source {src} is not supported by the stand-in");
        }
    }
    Ok(())
}

/// Volume `name` of `pod`.
pub fn volume(pod: &Value, name: &str) -> Result<Volume> {
    let v = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| str_at(v, "name") == Some(name))
        .with_context(|| format!("a mount of volume {name}, which the pod does not have"))?;
    let mut files = Vec::new();
    if let Some(p) = v.get("projected") {
        projected(name, p, &mut files)?;
    } else if let Some(cm) = v.get("configMap") {
        config_map_items(cm, 0o644, &mut files)?;
    } else if let Some(e) = v.get("emptyDir") {
        keys_within("emptyDir", e, &[])?;
    } else {
        bail!(
            "volume {name}: {v} is not a kind the stand-in supports (projected, configMap, emptyDir)"
        );
    }
    Ok(Volume {
        name: name.into(),
        files,
    })
}
