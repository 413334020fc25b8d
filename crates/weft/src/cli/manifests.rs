//! Kubernetes manifests as `weft inject`/`uninject` read and write them: a
//! multi-document YAML stream split at its document markers (so an error
//! names the document and the file's line, and a document nothing changed
//! is written back byte for byte), and the pod templates inside workloads.

use serde_json::Value;

/// One document of the stream.
pub struct Doc {
    /// 1-based position in the stream.
    pub index: usize,
    /// The document's text as read, written back when nothing changed.
    pub text: String,
    /// None for an empty (or comment-only) document.
    pub value: Option<Value>,
    /// Set when the value was changed: written out re-serialized.
    pub changed: bool,
}

/// A line that starts or ends a document. YAML forbids these at the start
/// of a line inside any scalar, so splitting here is exact.
fn marker(line: &str) -> Option<&str> {
    for m in ["---", "..."] {
        if let Some(rest) = line.strip_prefix(m)
            && (rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
        {
            return Some(if m == "---" { rest } else { "" });
        }
    }
    None
}

/// Splits `text` into (first line number, document text) chunks.
fn split(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = vec![(1, String::new())];
    for (i, line) in text.split_inclusive('\n').enumerate() {
        match marker(line.trim_end_matches('\n')) {
            Some(rest) => {
                // What follows the marker on its line belongs to the new
                // document; pad it so columns in errors stay right.
                let pad = " ".repeat(line.len() - rest.len() - line.ends_with('\n') as usize);
                // A bare marker: the document starts on the next line.
                let (start, first) = if rest.trim().is_empty() {
                    (i + 2, String::new())
                } else {
                    (i + 1, format!("{pad}{rest}\n"))
                };
                out.push((start, first));
            }
            None => {
                if let Some(last) = out.last_mut() {
                    last.1.push_str(line);
                }
            }
        }
    }
    out
}

/// Error text from libraries can span lines; a problem is one line.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Parses every document; the first that is not valid YAML is named with
/// its number and the line in `source`.
pub fn read(source: &str, text: &str) -> Result<Vec<Doc>, String> {
    let mut docs = Vec::new();
    for (first_line, chunk) in split(text) {
        let parse = || {
            let options = serde_saphyr::options! { with_snippet: false };
            serde_saphyr::from_multiple_with_options::<Value>(&chunk, options)
        };
        let index = docs.len() + 1;
        let values = match std::panic::catch_unwind(parse) {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                // The library counts lines within the document; say the file's.
                let line = e
                    .location()
                    .map(|l| {
                        let line = first_line as u64 + l.line().saturating_sub(1);
                        format!(", line {line}, column {}", l.column())
                    })
                    .unwrap_or_default();
                let mut msg = one_line(&e.to_string());
                if let Some(at) = msg.rfind(" at line ") {
                    msg.truncate(at);
                }
                return Err(format!(
                    "{source}: document {index}{line}: not valid YAML: {msg}; fix that document and run again"
                ));
            }
            Err(_) => {
                return Err(format!(
                    "{source}: document {index} (from line {first_line}): not valid YAML: the YAML reader failed on it"
                ));
            }
        };
        let values: Vec<Value> = values.into_iter().filter(|v| !v.is_null()).collect();
        if values.is_empty() {
            if !chunk.trim().is_empty() {
                docs.push(Doc {
                    index,
                    text: chunk,
                    value: None,
                    changed: false,
                });
            }
            continue;
        }
        let one = values.len() == 1;
        for value in values {
            docs.push(Doc {
                index: docs.len() + 1,
                text: chunk.clone(),
                value: Some(value),
                // Several documents in one chunk cannot be written back as text.
                changed: !one,
            });
        }
    }
    Ok(docs)
}

/// The stream written back: unchanged documents as read, changed ones as YAML.
pub fn write(docs: &[Doc]) -> Result<String, String> {
    let mut parts = Vec::new();
    for d in docs {
        let text = match (&d.value, d.changed) {
            (Some(v), true) => serde_saphyr::to_string(v)
                .map_err(|e| format!("document {}: cannot write YAML: {e}", d.index))?,
            _ => d.text.clone(),
        };
        let text = if text.ends_with('\n') {
            text
        } else {
            format!("{text}\n")
        };
        parts.push(text);
    }
    Ok(parts.join("---\n"))
}

/// Where a kind keeps its pod template (a JSON pointer; "" is the Pod itself).
pub fn template_pointer(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Pod" => "",
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => "/spec/template",
        "CronJob" => "/spec/jobTemplate/spec/template",
        _ => return None,
    })
}

/// `kind/name` of an object, for notes.
pub fn describe(obj: &Value) -> String {
    let s = |k: &str| obj.pointer(k).and_then(Value::as_str).unwrap_or("?");
    format!(
        "{}/{}",
        s("/kind").to_ascii_lowercase(),
        s("/metadata/name")
    )
}

/// Calls `f` on every pod template in `obj` (the items of a `List` too);
/// notes objects with no pod template. Returns whether anything changed.
pub fn each_template(
    obj: &mut Value,
    notes: &mut Vec<String>,
    f: &mut dyn FnMut(&str, &mut Value) -> Result<bool, String>,
) -> Result<bool, String> {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind == "List" || (kind.ends_with("List") && obj.get("items").is_some_and(Value::is_array)) {
        let mut changed = false;
        if let Some(items) = obj.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                changed |= each_template(item, notes, f)?;
            }
        }
        return Ok(changed);
    }
    let what = describe(obj);
    match template_pointer(kind) {
        Some(ptr) => match obj.pointer_mut(ptr) {
            Some(t) if t.is_object() => f(&what, t),
            _ => Err(format!("{what}: no pod template at {ptr:?}")),
        },
        None => {
            notes.push(format!(
                "{what}: {} has no pod template; passed through unchanged",
                if kind.is_empty() {
                    "an object without a kind"
                } else {
                    kind
                }
            ));
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_at_markers_and_errors_name_the_document_and_line() {
        let text = "# a comment\napiVersion: v1\nkind: ConfigMap\n---\nkind: Pod\n--- # two\nkind: Service\nmetadata: a: b\nspec: {}\n";
        let err = read("in.yaml", text).err().expect("invalid");
        assert!(err.contains("document 3"), "{err}");
        assert!(err.contains("line 8"), "{err}");
        let err = read("in.yaml", "kind: A\n---\nkind: B\nbad: a: b\n")
            .err()
            .expect("invalid");
        assert!(
            err.contains("document 2") && err.contains("line 4"),
            "{err}"
        );
        let docs = read("in.yaml", "kind: A\n---\n---\nkind: B\n...\n").unwrap();
        let kinds: Vec<&str> = docs
            .iter()
            .map(|d| d.value.as_ref().unwrap()["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["A", "B"]);
    }

    #[test]
    fn unchanged_documents_are_written_back_byte_for_byte() {
        let text = "# keep me\nkind: Thing   # odd spacing\nspec: {a: 1}\n---\nkind: Other\n";
        let docs = read("-", text).unwrap();
        assert_eq!(write(&docs).unwrap(), text);
    }

    #[test]
    fn changed_documents_round_trip_through_yaml() {
        let mut docs = read("-", "kind: Pod\nmetadata:\n  annotations:\n    a: \"5432\"\n    b: \"true\"\n    c: \"null\"\n").unwrap();
        docs[0].changed = true;
        let out = write(&docs).unwrap();
        let again = read("-", &out).unwrap();
        assert_eq!(again[0].value, docs[0].value, "{out}");
    }
}
