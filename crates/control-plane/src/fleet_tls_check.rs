//! Whether every two connected proxies can complete a handshake: a site
//! that narrows the TLS 1.3 cipher suites or key exchange groups of some
//! pods (`config.weft.dev/tls-*` annotations) and not others can leave two
//! proxies with nothing in common, and every connection between them fails
//! in the handshake. Judged from what each proxy reports it offers.

use std::collections::BTreeMap;

use pki::check::CheckResult;

use crate::fleet::{MeshTlsView, ProxyView};

fn shares(a: &[String], b: &[String]) -> bool {
    a.iter().any(|x| b.contains(x))
}

fn settings(t: &MeshTlsView) -> String {
    format!(
        "cipher-suites={} key-exchange={}",
        t.cipher_suites.join(","),
        t.key_exchange.join(",")
    )
}

/// Up to three workloads, then how many more.
fn some(workloads: &[&str]) -> String {
    let mut s = workloads
        .iter()
        .take(3)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if workloads.len() > 3 {
        s.push_str(&format!(" and {} more", workloads.len() - 3));
    }
    s
}

/// One line per two settings in force that share no cipher suite or no key
/// exchange group, naming the proxies on each side.
fn disjoint(groups: &BTreeMap<&MeshTlsView, Vec<&str>>) -> Vec<String> {
    let all: Vec<_> = groups.iter().collect();
    let mut out = Vec::new();
    for (i, (a, on_a)) in all.iter().enumerate() {
        for (b, on_b) in &all[i + 1..] {
            let suite = shares(&a.cipher_suites, &b.cipher_suites);
            let group = shares(&a.key_exchange, &b.key_exchange);
            let missing = match (suite, group) {
                (true, true) => continue,
                (false, true) => "no cipher suite",
                (true, false) => "no key exchange group",
                (false, false) => "neither a cipher suite nor a key exchange group",
            };
            out.push(format!(
                "{} ({}) and {} ({}) share {missing}",
                some(on_a),
                settings(a),
                some(on_b),
                settings(b)
            ));
        }
    }
    out
}

pub fn tls_check(connected: &[&ProxyView]) -> CheckResult {
    let mut groups: BTreeMap<&MeshTlsView, Vec<&str>> = BTreeMap::new();
    for p in connected {
        if let Some(t) = &p.tls {
            groups.entry(t).or_default().push(p.workload.as_str());
        }
    }
    let saying: usize = groups.values().map(Vec::len).sum();
    let silent = connected.len() - saying;
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let desc = format!(
        "every two connected proxies share a TLS cipher suite and key exchange group ({} among {}{})",
        plural(groups.len(), "setting", "settings"),
        plural(saying, "proxy", "proxies"),
        if silent > 0 {
            format!(
                "; {} not say",
                plural(silent, "older proxy does", "older proxies do")
            )
        } else {
            String::new()
        }
    );
    let problems = disjoint(&groups);
    if problems.is_empty() {
        return CheckResult::ok(desc);
    }
    CheckResult::fail(
        desc,
        problems.join("; "),
        "every connection between them fails in the handshake: give their pods' config.weft.dev/tls-cipher-suites and config.weft.dev/tls-key-exchange annotations (`weft proxy --tls-cipher-suites`, `--tls-key-exchange`) at least one entry in common, then restart those pods",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pki::check::Status;

    fn tls(suites: &str, groups: &str) -> Option<MeshTlsView> {
        let v = |s: &str| s.split(',').map(str::to_string).collect();
        Some(MeshTlsView {
            cipher_suites: v(suites),
            key_exchange: v(groups),
        })
    }

    fn on(workload: &str, tls: Option<MeshTlsView>) -> ProxyView {
        let mut p = crate::fleet_check::tests::proxy(workload, 2, "connected");
        p.tls = tls;
        p
    }

    fn judge(proxies: &[ProxyView]) -> CheckResult {
        tls_check(&proxies.iter().collect::<Vec<_>>())
    }

    const ALL: &str = "TLS_AES_256_GCM_SHA384,TLS_AES_128_GCM_SHA256,TLS_CHACHA20_POLY1305_SHA256";
    const KX: &str = "X25519MLKEM768,X25519,secp256r1,secp384r1";

    #[test]
    fn narrowed_lists_that_still_overlap_pass() {
        let r = judge(&[
            on("demo/a", tls(ALL, KX)),
            on("demo/b", tls("TLS_AES_128_GCM_SHA256", "secp256r1")),
            on("demo/c", tls(ALL, KX)),
            on("demo/old", None),
        ]);
        assert_eq!(r.result, Status::Success, "{r:?}");
        assert!(
            r.description
                .contains("(2 settings among 3 proxies; 1 older proxy does not say)"),
            "{r:?}"
        );
        assert_eq!(judge(&[]).result, Status::Success);
    }

    #[test]
    fn settings_with_nothing_in_common_are_named_with_their_proxies() {
        let r = judge(&[
            on("demo/a", tls(ALL, KX)),
            on("fips/x", tls("TLS_AES_256_GCM_SHA384", "secp384r1")),
            on("fips/y", tls("TLS_AES_256_GCM_SHA384", "secp384r1")),
            on("pq/z", tls("TLS_AES_128_GCM_SHA256", "X25519MLKEM768")),
            on("legacy/w", tls("TLS_CHACHA20_POLY1305_SHA256", "X25519")),
        ]);
        assert_eq!(r.result, Status::Error);
        let e = &r.error;
        // Each pair once; a proxy on the defaults shares with everyone.
        assert!(!e.contains("demo/a"), "{e}");
        assert!(
            e.contains(
                "fips/x, fips/y (cipher-suites=TLS_AES_256_GCM_SHA384 key-exchange=secp384r1) and pq/z (cipher-suites=TLS_AES_128_GCM_SHA256 key-exchange=X25519MLKEM768) share neither a cipher suite nor a key exchange group"
            ) || e.contains("pq/z (cipher-suites=TLS_AES_128_GCM_SHA256 key-exchange=X25519MLKEM768) and fips/x, fips/y"),
            "{e}"
        );
        assert_eq!(e.matches(" share ").count(), 3, "{e}");
        assert!(r.hint.contains("config.weft.dev/tls-cipher-suites"));

        let only_groups = judge(&[
            on("demo/a", tls(ALL, "X25519MLKEM768")),
            on("demo/b", tls(ALL, "X25519")),
        ]);
        assert_eq!(only_groups.result, Status::Error);
        assert!(only_groups.error.ends_with("share no key exchange group"));
        let only_suites = judge(&[
            on("demo/a", tls("TLS_AES_128_GCM_SHA256", KX)),
            on("demo/b", tls("TLS_AES_256_GCM_SHA384", KX)),
        ]);
        assert!(only_suites.error.ends_with("share no cipher suite"));
    }

    #[test]
    fn many_proxies_on_one_side_are_counted_not_listed() {
        let mut ps: Vec<ProxyView> = (0..5)
            .map(|i| on(&format!("fips/p{i}"), tls(ALL, "secp384r1")))
            .collect();
        ps.push(on("pq/z", tls(ALL, "X25519MLKEM768")));
        let r = judge(&ps);
        assert!(
            r.error.contains("fips/p0, fips/p1, fips/p2 and 2 more"),
            "{r:?}"
        );
    }
}
