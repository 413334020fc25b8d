//! The design: "the proxy never uses the identity service's code". Checked
//! over the proxy's manifest and, transitively, every workspace crate it
//! depends on (so `cargo tree -p proxy` shows no `identity`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The names in a manifest's normal and build dependency sections.
fn dependencies(manifest: &Path) -> Vec<String> {
    let text =
        std::fs::read_to_string(manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    let mut section = String::new();
    let mut names = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if (section == "[dependencies]" || section == "[build-dependencies]") && !line.is_empty() {
            let name = line.split(['=', '.', ' ']).next().unwrap_or_default();
            names.push(name.to_string());
        }
    }
    names
}

#[test]
fn the_proxy_does_not_link_the_identity_service() {
    let crates = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut seen = BTreeSet::new();
    let mut todo = vec![("proxy".to_string(), vec!["proxy".to_string()])];
    while let Some((name, path)) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let manifest = crates.join(&name).join("Cargo.toml");
        for dep in dependencies(&manifest) {
            let mut via = path.clone();
            via.push(dep.clone());
            assert_ne!(
                dep,
                "identity",
                "the proxy reaches the identity service crate through {}; move what it needs into pki or the proxy",
                via.join(" -> ")
            );
            // Follow workspace crates only: external crates cannot name ours.
            if crates.join(&dep).join("Cargo.toml").is_file() {
                todo.push((dep, via));
            }
        }
    }
    assert!(seen.contains("pki"), "the walk reached pki: {seen:?}");
}
