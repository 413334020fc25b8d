//! The shipped Prometheus alert rules (deploy/prometheus): valid and each
//! firing in its unit test under the real `promtool`; every metric they and
//! the Grafana dashboard (deploy/grafana) read really exported by a running
//! control plane and proxy.
//!
//! Needs promtool (Debian's `prometheus` package; `.ci/run` installs it);
//! skips loudly without it unless WEFT_REQUIRE_ROOT=1 (CI) forbids skipping.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::Scratch;
use common::mesh::{free_port, spawn_app, start_proxy, workload};
use common::proc::http_get;

fn rules_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/prometheus"
    ))
}

fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("promtool"))
            .find(|f| f.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("WEFT_REQUIRE_ROOT").as_deref() != Ok("1"),
            "promtool not found and WEFT_REQUIRE_ROOT=1 forbids skipping: install Debian's prometheus package"
        );
        eprintln!(
            "\n*** SKIPPING alert rule tests: promtool not found (apt-get install prometheus) ***\n"
        );
    }
    found
}

#[test]
fn rules_are_valid_and_each_alert_fires_in_its_unit_test() {
    let Some(promtool) = promtool() else { return };
    for args in [
        ["check", "rules", "weft-alerts.yaml"],
        ["test", "rules", "weft-alerts.test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(rules_dir())
            .output()
            .expect("run promtool");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        println!("promtool {}:\n{text}", args.join(" "));
        assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    }
    // Every alert has a case where it fires.
    let rules =
        std::fs::read_to_string(rules_dir().join("weft-alerts.yaml")).expect("the rules file");
    let tests = std::fs::read_to_string(rules_dir().join("weft-alerts.test.yaml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let fires = tests.split("alertname: ").skip(1).any(|t| {
            t.starts_with(alert) && t[alert.len()..].trim_start().starts_with("exp_alerts")
        });
        assert!(fires, "{alert} has no promtool case where it fires");
    }
}

/// PromQL's own words (operators, modifiers, aggregations, which may be
/// followed by `by (…)` rather than their parenthesis), never metric names.
const PROMQL: &[&str] = &[
    "and", "or", "unless", "on", "ignoring", "by", "without", "offset", "bool", "sum", "min",
    "max", "avg", "count", "topk", "bottomk", "group", "stddev", "quantile",
];

/// The metric names an expression reads: identifiers outside `{…}`, `[…]`
/// and the label lists of `on (…)`/`by (…)`, that are neither PromQL's
/// words nor function calls.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut plain = String::new();
    let mut depth = 0;
    for c in expr.chars() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut rest = plain.as_str();
    let mut label_list = false;
    while let Some(start) = rest.find(ident) {
        let after = &rest[start..];
        let end = after.find(|c| !ident(c)).unwrap_or(after.len());
        let (word, tail) = after.split_at(end);
        let call = tail.trim_start().starts_with('(');
        let grouping = ["on", "by", "ignoring", "without"].contains(&word);
        if label_list {
            // Inside `on (…)`: labels until the closing parenthesis.
            if rest[..start].contains(')') {
                label_list = false;
            }
        }
        if !label_list
            && !call
            && !PROMQL.contains(&word)
            && !word.starts_with(|c: char| c.is_ascii_digit())
        {
            names.insert(word.to_string());
        }
        label_list = label_list || grouping;
        rest = tail;
    }
    names
}

/// Every metric the dashboard's panels query.
fn dashboard_metric_names() -> BTreeSet<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/weft-dashboard.json"
    );
    let text = std::fs::read_to_string(path).expect("the dashboard");
    let d: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = d["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets").iter())
        .flat_map(|t| metric_names(t["expr"].as_str().expect("an expr")))
        .collect()
}

fn rule_metric_names() -> BTreeSet<String> {
    let rules =
        std::fs::read_to_string(rules_dir().join("weft-alerts.yaml")).expect("the rules file");
    let mut names = BTreeSet::new();
    let mut lines = rules.lines().peekable();
    while let Some(l) = lines.next() {
        let Some(rest) = l.trim().strip_prefix("expr:") else {
            continue;
        };
        let mut expr = rest.trim().trim_start_matches('|').to_string();
        while let Some(next) = lines.peek() {
            let t = next.trim();
            if t.is_empty() || t.contains(':') && !t.contains('{') && !t.contains('(') {
                break;
            }
            expr.push(' ');
            expr.push_str(t);
            lines.next();
        }
        names.extend(metric_names(&expr));
    }
    names
}

#[test]
fn the_names_are_read_out_of_expressions() {
    assert_eq!(
        metric_names(
            "increase(a_total{result=\"error\"}[15m]) > 0 unless on (job, instance) increase(b_total{x=\"y\"}[15m]) > 60 * 86400"
        ),
        ["a_total", "b_total"].map(String::from).into()
    );
}

/// A standalone control plane and one proxy with a certificate: every name
/// the rules read is a sample in one of their `/metrics`.
#[test]
fn every_metric_the_rules_read_is_exported() {
    let s = Scratch::new();
    s.guide_material();
    std::fs::create_dir(s.path("resources")).unwrap();
    let inbound = free_port();
    s.write(
        "resources/workloads.yaml",
        workload("backend", spawn_app(), inbound, ""),
    );
    let cp = s.control_plane(&["--resources", "resources", "--reread-interval", "1s"]);
    let admin = cp.addr("admin listening on");
    let proxy = start_proxy(&s, "backend", inbound, &cp, &[], &[]);
    let proxy_admin = proxy.addr("admin listening on");
    let mut wanted = rule_metric_names();
    println!("the rules read: {wanted:?}");
    assert!(wanted.len() >= 7, "{wanted:?}");
    wanted.extend(dashboard_metric_names());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text: String = [admin, proxy_admin]
            .iter()
            .filter_map(|a| http_get(*a, "/metrics").ok())
            .map(|(_, body)| body)
            .collect();
        let exported: BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let missing: Vec<String> = wanted
            .iter()
            .filter(|n| !exported.contains(n.as_str()))
            .cloned()
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after 30 s, metrics the rules read that neither /metrics exports: {missing:?}\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
