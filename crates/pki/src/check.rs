//! The identity checks of `weft check`, over certificate material already
//! loaded: pure decisions, so each verdict is unit-tested without files.

use std::path::Path;
use std::time::Duration;

use rcgen::KeyPair;
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use time::OffsetDateTime;

use crate::cert::{load_certs, parse_x509};
use crate::info::{CertInfo, rfc3339};
use crate::key::{KeyAlgorithm, key_matches_cert, load_key};
use crate::verify::{Purpose, VerifyError, verify_at};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Success,
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub description: String,
    pub result: Status,
    /// What is wrong (empty on success).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// What to do about it (empty on success).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

impl CheckResult {
    pub fn ok(description: impl Into<String>) -> Self {
        Self {
            description: description.into(),
            result: Status::Success,
            error: String::new(),
            hint: String::new(),
        }
    }
    pub fn fail(
        description: impl Into<String>,
        error: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            description: description.into(),
            result: Status::Error,
            error: error.into(),
            hint: hint.into(),
        }
    }
    pub fn warn(
        description: impl Into<String>,
        error: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            result: Status::Warning,
            ..Self::fail(description, error, hint)
        }
    }
}

/// The anchors, issuer and issuer key the control plane would be started with.
pub struct IdentityMaterial {
    pub anchors: Vec<CertificateDer<'static>>,
    pub issuer: CertificateDer<'static>,
    /// Further certificates in the issuer file (a chain up to the anchor).
    pub issuer_chain: Vec<CertificateDer<'static>>,
    pub issuer_key: Option<KeyPair>,
}

/// Loads the three files; the error is one line naming the file and problem.
pub fn load_identity_material(
    anchors: &Path,
    issuer: &Path,
    issuer_key: Option<&Path>,
) -> Result<IdentityMaterial, String> {
    let anchors = load_certs(anchors).map_err(|e| e.to_string())?;
    let issuer_certs = load_certs(issuer).map_err(|e| e.to_string())?;
    let issuer_key = issuer_key
        .map(load_key)
        .transpose()
        .map_err(|e| e.to_string())?;
    material(anchors, issuer_certs, issuer_key)
}

/// Like [`load_identity_material`] from objects already read (e.g. a
/// cluster's ConfigMap and Secret); each `(name, bytes)` names its source.
pub fn parse_identity_material(
    anchors: (&Path, &[u8]),
    issuer: (&Path, &[u8]),
    issuer_key: Option<(&Path, &[u8])>,
) -> Result<IdentityMaterial, String> {
    let anchors = crate::parse_certs(anchors.0, anchors.1).map_err(|e| e.to_string())?;
    let issuer_certs = crate::parse_certs(issuer.0, issuer.1).map_err(|e| e.to_string())?;
    let issuer_key = issuer_key
        .map(|(p, b)| crate::parse_key(p, b))
        .transpose()
        .map_err(|e| e.to_string())?;
    material(anchors, issuer_certs, issuer_key)
}

fn material(
    anchors: Vec<CertificateDer<'static>>,
    mut issuer_certs: Vec<CertificateDer<'static>>,
    issuer_key: Option<KeyPair>,
) -> Result<IdentityMaterial, String> {
    if issuer_certs.is_empty() {
        return Err("the issuer holds no certificate".into());
    }
    let issuer_cert = issuer_certs.remove(0);
    Ok(IdentityMaterial {
        anchors,
        issuer: issuer_cert,
        issuer_chain: issuer_certs,
        issuer_key,
    })
}

/// How `weft check` judges material.
#[derive(Debug, Clone, Copy)]
pub struct CheckConfig {
    /// Warn when a certificate expires sooner than this.
    pub expiry_warning: Duration,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            expiry_warning: Duration::from_secs(60 * 86400),
        }
    }
}

fn window_name(d: Duration) -> String {
    let secs = d.as_secs();
    if secs.is_multiple_of(86400) {
        let days = secs / 86400;
        format!("{days} day{}", if days == 1 { "" } else { "s" })
    } else if secs.is_multiple_of(3600) {
        format!("{} hours", secs / 3600)
    } else {
        format!("{secs} seconds")
    }
}

const CONFIG_VALID: &str = "certificate config is valid";

/// Runs every identity check. A material that did not load fails the first
/// check and stops there, since nothing else can be judged.
pub fn identity_checks(
    material: Result<&IdentityMaterial, &str>,
    now: OffsetDateTime,
    cfg: CheckConfig,
) -> Vec<CheckResult> {
    let m = match material {
        Err(e) => {
            return vec![CheckResult::fail(
                CONFIG_VALID,
                e,
                "pass --identity-trust-anchors-file, --identity-issuer-certificate-file and --identity-issuer-key-file as made by `weft certs create` (PEM)",
            )];
        }
        Ok(m) => m,
    };
    let anchors: Vec<CertInfo> = match m.anchors.iter().map(|c| CertInfo::from_der(c)).collect() {
        Ok(a) => a,
        Err(e) => {
            return vec![CheckResult::fail(
                CONFIG_VALID,
                e.to_string(),
                "re-create the trust anchor file",
            )];
        }
    };
    let issuer = match CertInfo::from_der(&m.issuer) {
        Ok(i) => i,
        Err(e) => {
            return vec![CheckResult::fail(
                CONFIG_VALID,
                e.to_string(),
                "re-create the issuer certificate",
            )];
        }
    };
    let window = cfg.expiry_warning;
    let horizon = now + window;
    let mut out = vec![CheckResult::ok(CONFIG_VALID)];

    // Anchors.
    let name = "trust anchors are using supported crypto algorithm";
    let bad: Vec<String> = m
        .anchors
        .iter()
        .zip(&anchors)
        .filter_map(|(der, info)| {
            let alg = parse_x509(der)
                .map(|c| KeyAlgorithm::of(c.public_key()))
                .ok()?;
            (!matches!(
                alg,
                KeyAlgorithm::EcdsaP256 | KeyAlgorithm::Rsa(2048 | 3072 | 4096)
            ))
            .then(|| format!("{} uses {alg}", info.common_name()))
        })
        .collect();
    out.push(if bad.is_empty() {
        CheckResult::ok(name)
    } else {
        CheckResult::fail(
            name,
            format!("unsupported trust anchor algorithm: {}", bad.join("; ")),
            "trust anchors must be ECDSA P-256 or RSA 2048/3072/4096; create one with `weft certs create ROOT ca.crt ca.key --profile root-ca`",
        )
    });

    let name = "trust anchors are within their validity period";
    let invalid: Vec<String> = anchors
        .iter()
        .filter_map(|a| {
            if now > a.not_after {
                Some(format!(
                    "{} expired at {}",
                    a.common_name(),
                    rfc3339(a.not_after)
                ))
            } else if now < a.not_before {
                Some(format!(
                    "{} is not valid before {}",
                    a.common_name(),
                    rfc3339(a.not_before)
                ))
            } else {
                None
            }
        })
        .collect();
    out.push(if invalid.is_empty() {
        CheckResult::ok(name)
    } else if invalid.len() == anchors.len() {
        CheckResult::fail(
            name,
            format!("no trust anchor is valid now ({}): {}", rfc3339(now), invalid.join("; ")),
            "create a new anchor and issuer and rotate to them (see README: rotation)",
        )
    } else {
        CheckResult::warn(
            name,
            format!("some anchors are not valid now: {}", invalid.join("; ")),
            "normal mid-rotation; once every proxy trusts the new anchor, drop the old with `weft certs bundle remove BUNDLE FINGERPRINT`",
        )
    });

    let name = format!(
        "trust anchors are valid for at least {}",
        window_name(window)
    );
    let soon: Vec<String> = anchors
        .iter()
        .filter(|a| now <= a.not_after && a.not_after < horizon)
        .map(|a| format!("{} expires at {}", a.common_name(), rfc3339(a.not_after)))
        .collect();
    out.push(if soon.is_empty() {
        CheckResult::ok(name)
    } else {
        CheckResult::warn(
            name,
            soon.join("; "),
            "plan an anchor rotation now: create a new anchor and add it to the bundle beside the old",
        )
    });

    // Issuer.
    let name = "issuer cert is using supported crypto algorithm";
    let alg = parse_x509(&m.issuer)
        .map(|c| KeyAlgorithm::of(c.public_key()))
        .unwrap_or(KeyAlgorithm::Other("unknown".into()));
    out.push(if alg == KeyAlgorithm::EcdsaP256 {
        CheckResult::ok(name)
    } else {
        CheckResult::fail(
            name,
            format!("issuer certificate uses {alg}; workload certificates are signed with ECDSA P-256"),
            "create an ECDSA P-256 issuer: `weft certs create identity.linkerd.cluster.local issuer.crt issuer.key --profile intermediate-ca --ca ca.crt --ca-key ca.key`",
        )
    });

    let name = "issuer cert is within its validity period";
    out.push(if now > issuer.not_after {
        CheckResult::fail(
            name,
            format!("issuer certificate expired at {} (now {})", rfc3339(issuer.not_after), rfc3339(now)),
            "create a new issuer from the anchor and replace the issuer files; the control plane reloads them",
        )
    } else if now < issuer.not_before {
        CheckResult::fail(
            name,
            format!("issuer certificate is not valid before {} (now {})", rfc3339(issuer.not_before), rfc3339(now)),
            "check this machine's clock, or re-create the issuer",
        )
    } else {
        CheckResult::ok(name)
    });

    let name = format!("issuer cert is valid for at least {}", window_name(window));
    out.push(if now <= issuer.not_after && issuer.not_after < horizon {
        CheckResult::warn(
            name,
            format!("issuer certificate will expire at {}", rfc3339(issuer.not_after)),
            "rotate the issuer now: `weft certs create` a new one from the anchor and replace the issuer files",
        )
    } else {
        CheckResult::ok(name)
    });

    let name = "issuer cert is issued by the trust anchor";
    out.push(match issued_by(m) {
        Ok(()) => CheckResult::ok(name),
        Err(e) => CheckResult::fail(
            name,
            e.to_string(),
            "the issuer must be signed by an anchor in the bundle: re-create it with --ca set to that anchor, or add its anchor to the bundle",
        ),
    });

    // weft's own checks.
    let name = "issuer cert is a CA";
    out.push(if issuer.is_ca {
        CheckResult::ok(name)
    } else {
        CheckResult::fail(
            name,
            format!(
                "{} lacks basicConstraints CA:TRUE, so certificates it signs will not verify",
                issuer.common_name()
            ),
            "create the issuer with `--profile intermediate-ca`",
        )
    });

    if let Some(key) = &m.issuer_key {
        let name = "issuer key matches issuer certificate";
        out.push(if key_matches_cert(key, &m.issuer) {
            CheckResult::ok(name)
        } else {
            CheckResult::fail(
                name,
                "the issuer key is not the private half of the issuer certificate's public key",
                "pass the key file that was created together with the issuer certificate",
            )
        });
    }

    let name = "issuer cert has pathLen 0";
    out.push(match (issuer.is_ca, issuer.path_len) {
        (true, Some(0)) | (false, _) => CheckResult::ok(name),
        (true, other) => CheckResult::warn(
            name,
            match other {
                Some(n) => format!("issuer has pathLen {n}, so it could sign further CAs"),
                None => "issuer has no pathLen, so it could sign further CAs".to_string(),
            },
            "an issuer only signs workload certificates; `weft certs create --profile intermediate-ca` sets pathLen 0",
        ),
    });

    let name = "trust anchors are self-signed";
    let not_self: Vec<&str> = anchors
        .iter()
        .filter(|a| !a.self_signed)
        .map(|a| a.common_name())
        .collect();
    out.push(if not_self.is_empty() {
        CheckResult::ok(name)
    } else {
        CheckResult::warn(
            name,
            format!("not self-signed: {}", not_self.join(", ")),
            "an intermediate used as an anchor works, but its own issuer's expiry and revocation then apply too",
        )
    });
    out
}

/// Whether the issuer chains to an anchor, judged apart from expiry (which the
/// validity checks report).
fn issued_by(m: &IdentityMaterial) -> Result<(), VerifyError> {
    verify_at(&m.issuer, &m.issuer_chain, &m.anchors, None, Purpose::Auto).map(|_| ())
}

/// Summary over a set of results.
pub fn worst(results: &[CheckResult]) -> Status {
    if results.iter().any(|r| r.result == Status::Error) {
        Status::Error
    } else if results.iter().any(|r| r.result == Status::Warning) {
        Status::Warning
    } else {
        Status::Success
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn material(anchors: Vec<CertificateDer<'static>>, issuer: &Ca) -> IdentityMaterial {
        IdentityMaterial {
            anchors,
            issuer: issuer.der.clone(),
            issuer_chain: vec![],
            issuer_key: Some(KeyPair::try_from(issuer.key.serialize_der()).unwrap()),
        }
    }

    fn run(m: &IdentityMaterial) -> Vec<CheckResult> {
        identity_checks(Ok(m), now(), CheckConfig::default())
    }

    fn status_of(results: &[CheckResult], name: &str) -> Status {
        results
            .iter()
            .find(|r| r.description == name)
            .unwrap_or_else(|| panic!("no check {name:?} in {results:#?}"))
            .result
    }

    fn only_problems(results: &[CheckResult]) -> Vec<(&str, Status)> {
        results
            .iter()
            .filter(|r| r.result != Status::Success)
            .map(|r| (r.description.as_str(), r.result))
            .collect()
    }

    #[test]
    fn good_material_passes_every_check() {
        let root = root("root");
        let issuer = sub_ca("issuer", &root, None);
        let r = run(&material(vec![root.der.clone()], &issuer));
        assert_eq!(only_problems(&r), vec![]);
        assert_eq!(worst(&r), Status::Success);
        let names: Vec<_> = r.iter().map(|r| r.description.as_str()).collect();
        assert_eq!(
            &names[..8],
            &[
                "certificate config is valid",
                "trust anchors are using supported crypto algorithm",
                "trust anchors are within their validity period",
                "trust anchors are valid for at least 60 days",
                "issuer cert is using supported crypto algorithm",
                "issuer cert is within its validity period",
                "issuer cert is valid for at least 60 days",
                "issuer cert is issued by the trust anchor",
            ]
        );
    }

    #[test]
    fn load_failure_fails_config_only() {
        let r = identity_checks(
            Err("ca.crt: the file is empty"),
            now(),
            CheckConfig::default(),
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].result, Status::Error);
        assert!(r[0].error.contains("ca.crt"));
    }

    #[test]
    fn issuer_from_another_root() {
        let root = root("root");
        let other = self::root("other");
        let issuer = sub_ca("issuer", &other, None);
        let r = run(&material(vec![root.der.clone()], &issuer));
        assert_eq!(
            only_problems(&r),
            vec![("issuer cert is issued by the trust anchor", Status::Error)]
        );
    }

    #[test]
    fn expired_issuer_fails_validity_not_issuance() {
        let root = root("root");
        let mut p = ca_params("issuer", Some(0));
        p.not_before = now() - time::Duration::days(30);
        p.not_after = now() - time::Duration::days(1);
        let issuer = sub_ca("issuer", &root, Some(p));
        let r = run(&material(vec![root.der.clone()], &issuer));
        assert_eq!(
            only_problems(&r),
            vec![("issuer cert is within its validity period", Status::Error)]
        );
    }

    #[test]
    fn mismatched_key() {
        let root = root("root");
        let issuer = sub_ca("issuer", &root, None);
        let mut m = material(vec![root.der.clone()], &issuer);
        m.issuer_key = Some(KeyPair::generate().unwrap());
        assert_eq!(
            only_problems(&run(&m)),
            vec![("issuer key matches issuer certificate", Status::Error)]
        );
    }

    #[test]
    fn issuer_not_a_ca() {
        let root = root("root");
        let issuer = sub_ca("issuer", &root, Some(leaf_params("issuer")));
        let r = run(&material(vec![root.der.clone()], &issuer));
        assert_eq!(status_of(&r, "issuer cert is a CA"), Status::Error);
        assert_eq!(worst(&r), Status::Error);
    }

    #[test]
    fn p384_issuer_is_refused_rsa_anchor_accepted() {
        let mut p = ca_params("root", Some(1));
        let rsa =
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
        p.not_after = now() + time::Duration::days(3650);
        let der = p.self_signed(&rsa).unwrap().der().clone();
        let root = Ca {
            params: p,
            key: rsa,
            der,
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let params = ca_params("issuer", Some(0));
        let der = params
            .signed_by(&key, &root.issuer())
            .unwrap()
            .der()
            .clone();
        let issuer = Ca { params, key, der };
        let r = run(&material(vec![root.der.clone()], &issuer));
        assert_eq!(
            only_problems(&r),
            vec![(
                "issuer cert is using supported crypto algorithm",
                Status::Error
            )]
        );
    }

    #[test]
    fn expired_anchor_beside_a_valid_one_is_a_warning() {
        let mut p = ca_params("old-root", Some(1));
        p.not_before = now() - time::Duration::days(400);
        p.not_after = now() - time::Duration::days(1);
        let old = root_from(p);
        let new = root("new-root");
        let issuer = sub_ca("issuer", &new, None);
        let r = run(&material(vec![old.der.clone(), new.der.clone()], &issuer));
        assert_eq!(
            only_problems(&r),
            vec![(
                "trust anchors are within their validity period",
                Status::Warning
            )]
        );
        // With only the expired anchor it is a failure.
        let issuer = sub_ca("issuer", &old, None);
        let r = run(&material(vec![old.der.clone()], &issuer));
        assert_eq!(
            status_of(&r, "trust anchors are within their validity period"),
            Status::Error
        );
    }

    #[test]
    fn expiring_soon_warns_per_window() {
        let mut p = ca_params("root", Some(1));
        p.not_after = now() + time::Duration::days(30);
        let root = root_from(p);
        let mut p = ca_params("issuer", Some(0));
        p.not_after = now() + time::Duration::days(20);
        let issuer = sub_ca("issuer", &root, Some(p));
        let m = material(vec![root.der.clone()], &issuer);
        assert_eq!(
            only_problems(&run(&m)),
            vec![
                (
                    "trust anchors are valid for at least 60 days",
                    Status::Warning
                ),
                ("issuer cert is valid for at least 60 days", Status::Warning),
            ]
        );
        let r = identity_checks(
            Ok(&m),
            now(),
            CheckConfig {
                expiry_warning: Duration::from_secs(10 * 86400),
            },
        );
        assert_eq!(only_problems(&r), vec![]);
        assert!(
            r.iter()
                .any(|c| c.description == "issuer cert is valid for at least 10 days")
        );
    }

    #[test]
    fn issuer_path_len_and_foreign_anchor_warn() {
        let root = root("root");
        let issuer = sub_ca("issuer", &root, Some(ca_params("issuer", None)));
        // The issuer used as its own anchor: not self-signed.
        let r = run(&material(
            vec![root.der.clone(), issuer.der.clone()],
            &issuer,
        ));
        assert_eq!(
            only_problems(&r),
            vec![
                ("issuer cert has pathLen 0", Status::Warning),
                ("trust anchors are self-signed", Status::Warning),
            ]
        );
        assert_eq!(worst(&r), Status::Warning);
    }
}
