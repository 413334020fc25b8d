//! Resource YAML: the control plane reads any file in its resource directory
//! (`policy::resources::read_document`) and, in Kubernetes mode, judges each
//! object alone (`read_export`, through `read_value`, the watch's path).
//! Nothing an operator or a hostile file writes may panic; a refusal always
//! names what was wrong.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use policy::resources::{FileOutcome, read_document, read_export};

const NS: &str = "weft";
const TRUST_DOMAIN: &str = "cluster.local";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Path::new("/fuzz/policy.yaml").to_path_buf();
    if let FileOutcome::Refused(problems) = read_document(&origin, text, NS, TRUST_DOMAIN) {
        assert!(!problems.is_empty(), "a file refused without a reason");
    }
    for (_, outcome, refused_text) in read_export(&origin, text, NS, TRUST_DOMAIN) {
        match outcome {
            FileOutcome::Refused(problems) => {
                assert!(!problems.is_empty(), "an object refused without a reason");
                assert!(refused_text.is_some(), "a refused object without its text");
            }
            FileOutcome::Parsed { .. } | FileOutcome::Settling => {
                assert!(refused_text.is_none())
            }
        }
    }
});
