//! Resource files: multi-document YAML, refused as a whole when any document
//! in them is bad, so a half-read file never replaces a whole good one.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::de::{FieldError, child_path, from_value, type_name};
use super::policy_check;
use super::problem::{Problem, Severity};
use super::types::{
    ExternalWorkload, ExternalWorkloadSpec, Kind, Meta, Namespace, Object, ObjectKey,
    parse_identity,
};

/// Kubernetes name limits (RFC 1123): a label for namespaces, a subdomain for
/// other names.
const MAX_LABEL: usize = 63;
const MAX_SUBDOMAIN: usize = 253;

/// Parses every document of one file. All or nothing: any problem refuses the
/// whole file, and every problem found is reported, not just the first.
pub fn parse_file(path: &Path, text: &str) -> Result<Vec<Object>, Vec<Problem>> {
    let docs = read_documents(text).map_err(|msg| vec![Problem::error(path, msg)])?;
    parse_values(path, &docs)
}

/// Parses documents a source already holds as values (a Kubernetes watch
/// delivers objects, not text), with the same rules as a file.
pub fn parse_values(path: &Path, docs: &[Value]) -> Result<Vec<Object>, Vec<Problem>> {
    let mut objects: Vec<(usize, Object)> = Vec::new();
    let mut problems = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let mut ctx = Doc {
            file: path,
            document: i + 1,
            objects: &mut objects,
            problems: &mut problems,
        };
        ctx.parse(doc, "", true);
    }
    // An object defined twice in this file is left to the snapshot, which
    // refuses every definition of a conflicted object wherever they are.
    if problems.is_empty() {
        Ok(objects.into_iter().map(|(_, o)| o).collect())
    } else {
        Err(problems)
    }
}

/// Warnings about objects that load but are probably not what was meant,
/// judged against this control plane's names.
pub fn lint(
    path: &Path,
    objects: &[Object],
    control_plane_ns: &str,
    trust_domain: &str,
) -> Vec<Problem> {
    let ours = format!("identity.{control_plane_ns}.{trust_domain}");
    let mut warnings = Vec::new();
    for object in objects {
        let Object::ExternalWorkload(w) = object else {
            continue;
        };
        let warn = |field: &str, message: String| Problem {
            severity: Severity::Warning,
            file: path.to_path_buf(),
            document: None,
            resource: Some(object.key().to_string()),
            field: Some(field.to_string()),
            message,
        };
        let written = &w.spec.mesh_tls.identity;
        match w.identity(control_plane_ns) {
            Err(e) => warnings.push(warn(
                "spec.meshTLS.identity",
                format!("cannot be used in this mesh: {e}"),
            )),
            Ok(id) if id.mesh_suffix() != ours => warnings.push(warn(
                "spec.meshTLS.identity",
                format!(
                    "{written:?} is under {:?}, but this control plane's identities are under {ours:?}; the workload loads but no certificate from this mesh matches it",
                    id.mesh_suffix()
                ),
            )),
            Ok(id) if w.spec.mesh_tls.server_name != id.to_string() => warnings.push(warn(
                "spec.meshTLS.serverName",
                format!(
                    "{:?} differs from the identity {:?}; a weft proxy answers only to its own identity as TLS server name, so set serverName to it",
                    w.spec.mesh_tls.server_name,
                    id.to_string()
                ),
            )),
            Ok(_) => {}
        }
    }
    warnings
}

/// The addresses ExternalWorkload documents in `text` claim, read leniently
/// (for a file that was refused as a whole): `(namespace/name, ip)`. None when
/// the text is not even YAML.
pub fn claimed_addresses(text: &str) -> Option<Vec<(String, std::net::IpAddr)>> {
    let docs = read_documents(text).ok()?;
    let mut out = Vec::new();
    for d in docs {
        if d.get("kind").and_then(Value::as_str) != Some("ExternalWorkload") {
            continue;
        }
        let meta = d.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("?");
        let ns = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let ips = d
            .get("spec")
            .and_then(|s| s.get("workloadIPs"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|w| w.get("ip").and_then(Value::as_str))
            .filter_map(|ip| ip.trim().parse().ok());
        out.extend(ips.map(|ip| (format!("{ns}/{name}"), ip)));
    }
    Some(out)
}

/// `(kind, namespace)` of every document in `text`, read leniently (for a
/// refused file). None when the text is not even YAML.
pub fn claimed_kinds(text: &str) -> Option<Vec<(String, String)>> {
    let docs = read_documents(text).ok()?;
    Some(
        docs.iter()
            .map(|d| {
                let kind = d
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let ns = d
                    .get("metadata")
                    .and_then(|m| m.get("namespace"))
                    .and_then(Value::as_str)
                    .unwrap_or("default")
                    .to_string();
                (kind, ns)
            })
            .collect(),
    )
}

/// Splits the YAML stream into documents, empty ones skipped. Never panics:
/// a panic inside the YAML library on hostile input is caught and reported.
pub(crate) fn read_documents(text: &str) -> Result<Vec<Value>, String> {
    let parse = || {
        let options = serde_saphyr::options! { with_snippet: false };
        serde_saphyr::from_multiple_with_options::<Value>(text, options)
    };
    match std::panic::catch_unwind(parse) {
        Ok(Ok(docs)) => Ok(docs),
        Ok(Err(e)) => Err(format!("not valid YAML: {}", one_line(&e.to_string()))),
        Err(_) => Err("not valid YAML: the YAML reader failed on this input".to_string()),
    }
}

/// Error text from libraries can span lines; a problem is one line.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The metadata fields weft reads; any others are ignored.
#[derive(Deserialize)]
struct RawMeta {
    name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
}

/// One document being parsed, and where its results go.
struct Doc<'a> {
    file: &'a Path,
    document: usize,
    objects: &'a mut Vec<(usize, Object)>,
    problems: &'a mut Vec<Problem>,
}

impl Doc<'_> {
    fn problem(&mut self, resource: Option<&str>, field: Option<String>, message: String) {
        self.problems.push(Problem {
            severity: Severity::Error,
            file: self.file.to_path_buf(),
            document: Some(self.document),
            resource: resource.map(str::to_string),
            field: field.filter(|f| !f.is_empty()),
            message,
        });
    }

    fn field_error(&mut self, resource: Option<&str>, e: FieldError) {
        self.problem(resource, e.path, e.message);
    }

    /// `base` is the document's path within the file's document: "" or, for
    /// an item of a `List`, `items[i]`.
    fn parse(&mut self, doc: &Value, base: &str, allow_list: bool) {
        let Value::Object(map) = doc else {
            self.problem(
                None,
                Some(base.to_string()),
                format!(
                    "expected a Kubernetes object (a mapping with apiVersion, kind and metadata), found {}",
                    type_name(doc)
                ),
            );
            return;
        };
        let (Some(api_version), Some(kind)) = (
            self.type_field(map, base, "apiVersion"),
            self.type_field(map, base, "kind"),
        ) else {
            return;
        };
        if allow_list && api_version == "v1" && kind == "List" {
            self.parse_list(map, base);
            return;
        }
        let kind = match Kind::resolve(api_version, kind) {
            Ok(k) => k,
            Err(msg) => {
                // A known kind at the wrong version is the apiVersion's fault.
                let known = Kind::ALL.iter().any(|k| k.name() == kind);
                let field = if known { "apiVersion" } else { "kind" };
                self.problem(None, Some(child_path(base, field)), msg);
                return;
            }
        };
        let resource = label(kind, map);
        let resource = resource.as_deref();
        let meta = self.meta(kind, map, base, resource);
        let object = match kind {
            Kind::Namespace => meta.map(|meta| Object::Namespace(Namespace { meta })),
            Kind::ExternalWorkload => {
                let spec = self.external_workload_spec(map, base, resource);
                match (meta, spec) {
                    (Some(meta), Some(spec)) => {
                        Some(Object::ExternalWorkload(ExternalWorkload { meta, spec }))
                    }
                    _ => None,
                }
            }
            Kind::Pod | Kind::Service | Kind::EndpointSlice => meta.and_then(|meta| {
                super::core_kinds::read(kind, map, base, meta)
                    .map_err(|e| self.field_error(resource, e))
                    .ok()
            }),
            _ => {
                let path = child_path(base, "spec");
                match policy_check::read_spec(kind, map.get("spec"), &path) {
                    Some(Ok(spec)) => meta.map(|meta| spec.into_object(meta)),
                    Some(Err(errors)) => {
                        errors
                            .into_iter()
                            .for_each(|e| self.field_error(resource, e));
                        None
                    }
                    None => None,
                }
            }
        };
        if let Some(object) = object {
            self.objects.push((self.document, object));
        }
    }

    /// `apiVersion` or `kind`, which every document must state as a string.
    fn type_field<'m>(
        &mut self,
        map: &'m Map<String, Value>,
        base: &str,
        name: &str,
    ) -> Option<&'m str> {
        let why = match map.get(name) {
            Some(Value::String(s)) if !s.is_empty() => return Some(s),
            None | Some(Value::Null) => "is missing".to_string(),
            Some(Value::String(_)) => "is empty".to_string(),
            Some(other) => format!("must be a string, found {}", type_name(other)),
        };
        self.problem(
            None,
            Some(child_path(base, name)),
            format!("{why}; every document must say what it is (e.g. apiVersion: workload.linkerd.io/v1beta1, kind: ExternalWorkload)"),
        );
        None
    }

    /// `kind: List` (what `kubectl get -o yaml` prints for several objects).
    fn parse_list(&mut self, map: &Map<String, Value>, base: &str) {
        let path = child_path(base, "items");
        match map.get("items") {
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    self.parse(item, &format!("{path}[{i}]"), false);
                }
            }
            None | Some(Value::Null) => {}
            Some(other) => self.problem(
                None,
                Some(path),
                format!("expected a list of objects, found {}", type_name(other)),
            ),
        }
    }

    fn meta(
        &mut self,
        kind: Kind,
        map: &Map<String, Value>,
        base: &str,
        resource: Option<&str>,
    ) -> Option<Meta> {
        let path = child_path(base, "metadata");
        let raw: RawMeta = match map.get("metadata") {
            None | Some(Value::Null) => {
                self.problem(
                    resource,
                    Some(path),
                    "missing; every object needs metadata.name".to_string(),
                );
                return None;
            }
            Some(v) => match from_value(v, &path) {
                Ok(raw) => raw,
                Err(e) => {
                    self.field_error(resource, e);
                    return None;
                }
            },
        };
        let name_path = child_path(&path, "name");
        let Some(name) = raw.name.filter(|n| !n.is_empty()) else {
            self.problem(
                resource,
                Some(name_path),
                "missing; every object needs a name".to_string(),
            );
            return None;
        };
        // A namespace's name is itself a namespace name, so a label.
        let name_max = if kind == Kind::Namespace {
            MAX_LABEL
        } else {
            MAX_SUBDOMAIN
        };
        if let Err(why) = check_name(&name, name_max) {
            self.problem(resource, Some(name_path), why);
            return None;
        }
        let namespace = if kind.namespaced() {
            let ns = raw
                .namespace
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".to_string());
            if let Err(why) = check_name(&ns, MAX_LABEL) {
                self.problem(resource, Some(child_path(&path, "namespace")), why);
                return None;
            }
            Some(ns)
        } else {
            None
        };
        Some(Meta {
            name,
            namespace,
            labels: raw.labels.unwrap_or_default(),
            annotations: raw.annotations.unwrap_or_default(),
        })
    }

    fn external_workload_spec(
        &mut self,
        map: &Map<String, Value>,
        base: &str,
        resource: Option<&str>,
    ) -> Option<ExternalWorkloadSpec> {
        let path = child_path(base, "spec");
        let spec: ExternalWorkloadSpec = match map.get("spec") {
            None | Some(Value::Null) => {
                self.problem(
                    resource,
                    Some(path),
                    "missing; an ExternalWorkload needs spec.meshTLS (identity, serverName)"
                        .to_string(),
                );
                return None;
            }
            Some(v) => match from_value(v, &path) {
                Ok(spec) => spec,
                Err(e) => {
                    self.field_error(resource, e);
                    return None;
                }
            },
        };
        let before = self.problems.len();
        let tls = child_path(&path, "meshTLS");
        // The control-plane namespace is unknown here; any valid one checks
        // the rest of a SPIFFE ID, and `lint` judges it against the real one.
        if let Err(e) = parse_identity(
            &spec.mesh_tls.identity,
            pki::identity::DEFAULT_CONTROL_PLANE_NS,
        ) {
            self.problem(resource, Some(child_path(&tls, "identity")), e.to_string());
        }
        if spec.mesh_tls.server_name.is_empty() {
            self.problem(
                resource,
                Some(child_path(&tls, "serverName")),
                "is empty; set it to the workload's identity".to_string(),
            );
        }
        for (i, ip) in spec.workload_ips.iter().enumerate() {
            if ip.ip.is_unspecified() {
                self.problem(
                    resource,
                    Some(format!("{}[{i}].ip", child_path(&path, "workloadIPs"))),
                    format!("{} is not a workload address", ip.ip),
                );
            }
        }
        for (i, port) in spec.ports.iter().enumerate() {
            if port.port == 0 {
                self.problem(
                    resource,
                    Some(format!("{}[{i}].port", child_path(&path, "ports"))),
                    "0 is not a port; use 1-65535".to_string(),
                );
            }
        }
        (self.problems.len() == before).then_some(spec)
    }
}

/// `Kind ns/name` read leniently from the raw document, so even an object
/// whose metadata is refused can be named in the problem.
fn label(kind: Kind, map: &Map<String, Value>) -> Option<String> {
    let meta = map.get("metadata")?;
    let name = meta.get("name")?.as_str().filter(|n| !n.is_empty())?;
    let namespace = kind.namespaced().then(|| {
        meta.get("namespace")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_string()
    });
    Some(
        ObjectKey {
            kind,
            namespace,
            name: name.to_string(),
        }
        .to_string(),
    )
}

/// RFC 1123 name: lower-case alphanumerics, '-' and (in a subdomain) '.',
/// each dot-separated part starting and ending alphanumeric.
fn check_name(name: &str, max: usize) -> Result<(), String> {
    if name.len() > max {
        return Err(format!(
            "{name:?} is {} characters long; at most {max} are allowed",
            name.len()
        ));
    }
    let dots_allowed = max > MAX_LABEL;
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !p.starts_with('-')
            && !p.ends_with('-')
    };
    let ok = if dots_allowed {
        name.split('.').all(ok_part)
    } else {
        ok_part(name)
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: use lower-case letters, digits and '-'{}, starting and ending with a letter or digit",
            if dots_allowed { " (and '.')" } else { "" }
        ))
    }
}
