//! Headless Chromium (Debian's `chromium`) on the control plane's web view:
//! the DOM once the page's script has run, and a screenshot kept under the
//! test's output directory (target/tmp). CI installs it; elsewhere a
//! missing browser skips loudly unless WEFT_REQUIRE_ROOT=1.

use std::path::PathBuf;
use std::process::Command;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Whether the browser is here; panics when CI requires it and it is not.
pub fn have_chromium(test: &str) -> bool {
    if std::path::Path::new(CHROMIUM).exists() {
        return true;
    }
    assert!(
        std::env::var("WEFT_REQUIRE_ROOT").as_deref() != Ok("1"),
        "{test}: {CHROMIUM} is missing; install Debian's chromium package (.ci/run does)"
    );
    eprintln!("SKIPPED {test}: {CHROMIUM} is missing (apt-get install chromium)");
    false
}

/// `chromium --headless` with `args` and `url`, as `wrap` runs it (e.g. in a
/// network namespace): its stdout.
fn run(wrap: impl Fn(&str) -> Command, args: &[&str], url: &str) -> String {
    let profile = tempfile::tempdir().expect("a browser profile directory");
    let out = wrap(CHROMIUM)
        .args([
            "--headless",
            // Root in a test: Chromium's own sandbox needs a user namespace.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,1400",
            // Let the page's fetches and script finish before the dump.
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium {args:?} {url}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The page's DOM after its script ran.
pub fn dump_dom(wrap: impl Fn(&str) -> Command, url: &str) -> String {
    run(wrap, &["--dump-dom"], url)
}

/// A PNG of the page at `name` under target/tmp/web-view/; its path.
pub fn screenshot(wrap: impl Fn(&str) -> Command, url: &str, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-view");
    std::fs::create_dir_all(&dir).expect("the screenshot directory");
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    run(wrap, &[&format!("--screenshot={}", path.display())], url);
    assert!(
        path.exists(),
        "chromium wrote no screenshot at {}",
        path.display()
    );
    path
}

/// The `data-*` attributes of each element that has `marker` among its
/// attributes in `dom` (Chromium's serialisation: attributes in double
/// quotes, `&quot;`/`&amp;`/`&lt;`/`&gt;` escaped), in document order.
pub fn rows(dom: &str, marker: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut out = Vec::new();
    for tag in dom.split('<').skip(1) {
        let Some(head) = tag.split('>').next() else {
            continue;
        };
        let attrs = attributes(head);
        if attrs.contains_key(marker) {
            out.push(
                attrs
                    .into_iter()
                    .filter(|(k, _)| k.starts_with("data-"))
                    .collect(),
            );
        }
    }
    out
}

fn attributes(head: &str) -> std::collections::BTreeMap<String, String> {
    let mut attrs = std::collections::BTreeMap::new();
    let mut rest = head.split_once(char::is_whitespace).map_or("", |(_, r)| r);
    while let Some((name, after)) = rest.split_once("=\"") {
        let Some((value, next)) = after.split_once('"') else {
            break;
        };
        let value = value
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&");
        attrs.insert(name.trim().to_string(), value);
        rest = next;
    }
    attrs
}
