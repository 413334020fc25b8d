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
use crate::verify::{Purpose, VerifyError, verify};

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
    fn ok(description: impl Into<String>) -> Self {
        Self {
            description: description.into(),
            result: Status::Success,
            error: String::new(),
            hint: String::new(),
        }
    }
    fn fail(
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
    fn warn(
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
    let mut issuer_certs = load_certs(issuer).map_err(|e| e.to_string())?;
    let issuer_cert = issuer_certs.remove(0);
    let issuer_key = issuer_key
        .map(load_key)
        .transpose()
        .map_err(|e| e.to_string())?;
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
    if secs % 86400 == 0 {
        let days = secs / 86400;
        format!("{days} day{}", if days == 1 { "" } else { "s" })
    } else if secs % 3600 == 0 {
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
                e,
                "re-create the trust anchor file",
            )];
        }
    };
    let issuer = match CertInfo::from_der(&m.issuer) {
        Ok(i) => i,
        Err(e) => {
            return vec![CheckResult::fail(
                CONFIG_VALID,
                e,
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
    out.push(match issued_by(m, &issuer, now) {
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
/// validity checks report): a lapsed issuer is re-checked inside its validity.
fn issued_by(
    m: &IdentityMaterial,
    issuer: &CertInfo,
    now: OffsetDateTime,
) -> Result<(), VerifyError> {
    let check = |at| verify(&m.issuer, &m.issuer_chain, &m.anchors, at, Purpose::Auto).map(|_| ());
    match check(now) {
        Err(VerifyError::Expired { subject, .. }) if subject == issuer.subject => {
            check(issuer.not_after - time::Duration::seconds(1))
        }
        Err(VerifyError::NotYetValid { subject, .. }) if subject == issuer.subject => {
            check(issuer.not_before + time::Duration::seconds(1))
        }
        other => other,
    }
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
