//! `weft certs`: the certificate toolkit, shaped like `step certificate`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use pki::bundle::Bundle;
use pki::create::{KeySpec, NewCert, Profile, San, Signer, create};
use pki::files::{KEY_MODE, PUBLIC_MODE, write_atomic};
use pki::info::{CertInfo, rfc3339, time_left};
use pki::{CertificateDer, Purpose, load_certs, verify};
use serde::Serialize;
use time::OffsetDateTime;

use super::duration::parse_time;
use super::{CmdResult, Failure, Output};

#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Create a trust anchor, an issuer or a leaf certificate with a new key.
    Create(CreateArgs),
    /// Show what a certificate (or every certificate in a bundle) holds.
    Inspect(InspectArgs),
    /// Verify a certificate against trust anchors: exit 0 valid, 1 invalid.
    Verify(VerifyArgs),
    /// Edit and list trust-anchor bundles.
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// Get a workload certificate from the control plane (Certify), for a
    /// service on a plain host or to try the identity service by hand
    Request(super::request::RequestArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProfileArg {
    RootCa,
    IntermediateCa,
    Leaf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kty {
    #[value(name = "EC", alias = "ec")]
    Ec,
    #[value(name = "RSA", alias = "rsa")]
    Rsa,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Curve {
    #[value(name = "P-256", alias = "p256")]
    P256,
    #[value(name = "P-384", alias = "p384")]
    P384,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Subject common name, e.g. root.linkerd.cluster.local
    pub subject: String,
    /// Where to write the certificate (PEM)
    pub crt_file: PathBuf,
    /// Where to write the private key (PKCS#8 PEM, mode 0600)
    pub key_file: PathBuf,
    /// What to create
    #[arg(long, value_enum)]
    pub profile: ProfileArg,
    /// End of validity: a duration from now (87600h, 365d) or an RFC 3339 time.
    /// Defaults: root-ca 10 years, intermediate-ca 1 year, leaf 24h
    #[arg(long, allow_hyphen_values = true)]
    pub not_after: Option<String>,
    /// Start of validity: a duration from now (may be negative, -1h) or an RFC 3339 time
    #[arg(long, allow_hyphen_values = true)]
    pub not_before: Option<String>,
    /// The signing CA's certificate (for intermediate-ca and leaf)
    #[arg(long, requires = "ca_key")]
    pub ca: Option<PathBuf>,
    /// The signing CA's private key
    #[arg(long, requires = "ca")]
    pub ca_key: Option<PathBuf>,
    /// Subject alternative name (DNS name, IP, e-mail or URI); repeatable.
    /// A leaf without --san gets the subject (and its SPIFFE ID if it is a mesh identity)
    #[arg(long)]
    pub san: Vec<String>,
    /// Key type
    #[arg(long, value_enum, default_value = "EC")]
    pub kty: Kty,
    /// Curve for EC keys
    #[arg(long, value_enum, default_value = "P-256")]
    pub crv: Curve,
    /// Bits for RSA keys: 2048, 3072 or 4096
    #[arg(long, default_value_t = 2048)]
    pub size: u32,
    /// Replace existing output files
    #[arg(long)]
    pub force: bool,
    /// Accepted for `step` compatibility: keys are never encrypted
    #[arg(long)]
    pub no_password: bool,
    /// Accepted for `step` compatibility
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A PEM or DER certificate file, or a bundle
    pub file: PathBuf,
    /// Output format: text or json
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The certificate to verify (leaf or issuer); further certificates in
    /// the file are used as intermediates
    pub cert: PathBuf,
    /// The trust-anchor bundle
    #[arg(long)]
    pub roots: PathBuf,
    /// Intermediate CA certificates
    #[arg(long)]
    pub intermediates: Option<PathBuf>,
    /// Verify at this time (RFC 3339, or an offset such as 720h) instead of now
    #[arg(long, allow_hyphen_values = true)]
    pub at: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum BundleCmd {
    /// Add anchors to a bundle (created if absent); repeated anchors are skipped
    Add {
        /// The bundle file (PEM)
        bundle: PathBuf,
        /// Anchor certificates to add
        #[arg(required = true)]
        certs: Vec<PathBuf>,
    },
    /// Remove the anchor with this SHA-256 fingerprint (a unique prefix will do)
    Remove {
        /// The bundle file (PEM)
        bundle: PathBuf,
        /// SHA-256 fingerprint of the anchor, as `list` prints it (a unique prefix will do)
        fingerprint: String,
    },
    /// List the anchors in a bundle
    List {
        /// The bundle file (PEM)
        bundle: PathBuf,
        /// Output format: text or json
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: Output,
    },
}

pub fn run(cmd: CertsCmd) -> CmdResult {
    match cmd {
        CertsCmd::Create(a) => run_create(a),
        CertsCmd::Inspect(a) => run_inspect(a),
        CertsCmd::Verify(a) => run_verify(a),
        CertsCmd::Bundle(b) => run_bundle(b),
        CertsCmd::Request(a) => super::request::run(a),
    }
}

fn run_create(a: CreateArgs) -> CmdResult {
    let now = OffsetDateTime::now_utc();
    let profile = match a.profile {
        ProfileArg::RootCa => Profile::RootCa,
        ProfileArg::IntermediateCa => Profile::IntermediateCa,
        ProfileArg::Leaf => Profile::Leaf,
    };
    let key = match (a.kty, a.crv) {
        (Kty::Ec, Curve::P256) => KeySpec::EcdsaP256,
        (Kty::Ec, Curve::P384) => KeySpec::EcdsaP384,
        (Kty::Rsa, _) => KeySpec::Rsa(a.size),
    };
    let not_before = match &a.not_before {
        Some(s) => parse_time(s, now).map_err(|e| Failure::input(format!("--not-before: {e}")))?,
        None => now,
    };
    let not_after = match &a.not_after {
        Some(s) => parse_time(s, now).map_err(|e| Failure::input(format!("--not-after: {e}")))?,
        None => now + profile.default_lifetime(),
    };
    let sans = a
        .san
        .iter()
        .map(|s| s.parse::<San>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::input)?;
    // Refuse before any work: never overwrite without --force, never leave one
    // of the pair written and the other not.
    if a.crt_file == a.key_file {
        return Err(Failure::input("the certificate and key files must differ"));
    }
    if !a.force {
        for p in [&a.crt_file, &a.key_file] {
            if p.symlink_metadata().is_ok() {
                return Err(Failure::input(format!(
                    "{}: already exists; pass --force to replace it",
                    p.display()
                )));
            }
        }
    }
    let signer = match (&a.ca, &a.ca_key) {
        (Some(c), Some(k)) => Some(Signer::load(c, k).map_err(Failure::input)?),
        _ => None,
    };
    let created = create(
        &NewCert {
            subject: a.subject.clone(),
            profile,
            sans,
            not_before,
            not_after,
            key,
        },
        signer.as_ref(),
    )
    .map_err(Failure::input)?;
    let cert_pem = pki::cert::to_pem(std::slice::from_ref(&created.cert));
    write_atomic(&a.crt_file, cert_pem.as_bytes(), PUBLIC_MODE, a.force).map_err(Failure::input)?;
    if let Err(e) = write_atomic(
        &a.key_file,
        created.key.serialize_pem().as_bytes(),
        KEY_MODE,
        a.force,
    ) {
        let _ = std::fs::remove_file(&a.crt_file);
        return Err(Failure::input(e));
    }
    if let Some(t) = created.clamped_to {
        eprintln!(
            "note: NotAfter was cut to {} so it does not outlive the signing CA",
            rfc3339(t)
        );
    }
    let info = CertInfo::from_der(&created.cert).map_err(Failure::input)?;
    outln!(
        "Your certificate has been saved in {}.",
        a.crt_file.display()
    );
    outln!(
        "Your private key has been saved in {}.",
        a.key_file.display()
    );
    outln!(
        "{} {} valid until {} ({}), SHA-256 {}",
        a.profile
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default(),
        info.subject,
        rfc3339(info.not_after),
        time_left(now, info.not_after),
        info.sha256_fingerprint
    );
    Ok(())
}

#[derive(Serialize)]
struct InspectJson<'a> {
    file: String,
    index: usize,
    time_left: String,
    #[serde(flatten)]
    info: &'a CertInfo,
}

fn run_inspect(a: InspectArgs) -> CmdResult {
    let certs = load_certs(&a.file).map_err(Failure::input)?;
    let now = OffsetDateTime::now_utc();
    let infos = certs
        .iter()
        .map(|c| CertInfo::from_der(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::input(format!("{}: {e}", a.file.display())))?;
    match a.output {
        Output::Json => {
            let out: Vec<_> = infos
                .iter()
                .enumerate()
                .map(|(i, info)| InspectJson {
                    file: a.file.display().to_string(),
                    index: i + 1,
                    time_left: time_left(now, info.not_after),
                    info,
                })
                .collect();
            outln!(
                "{}",
                serde_json::to_string_pretty(&out).map_err(Failure::input)?
            );
        }
        Output::Text => {
            for (i, info) in infos.iter().enumerate() {
                if i > 0 {
                    outln!();
                }
                outln!(
                    "{}: certificate {} of {}",
                    a.file.display(),
                    i + 1,
                    infos.len()
                );
                print_info(info, now);
            }
        }
    }
    Ok(())
}

fn print_info(info: &CertInfo, now: OffsetDateTime) {
    let row = |k: &str, v: &str| outln!("  {k:<15} {v}");
    row("Subject:", &info.subject);
    let self_signed = if info.self_signed {
        " (self-signed)"
    } else {
        ""
    };
    row("Issuer:", &format!("{}{self_signed}", info.issuer));
    row("Serial:", &info.serial);
    if !info.subject_alt_names.is_empty() {
        row("SANs:", &info.subject_alt_names.join(", "));
    }
    row("Not before:", &rfc3339(info.not_before));
    let left = time_left(now, info.not_after);
    let left = if left.starts_with("expired") {
        left
    } else {
        format!("{left} left")
    };
    row(
        "Not after:",
        &format!("{} ({left})", rfc3339(info.not_after)),
    );
    row("Key:", &info.key_algorithm);
    row("Signature:", &info.signature_algorithm);
    row(
        "CA:",
        &match (info.is_ca, info.path_len) {
            (true, Some(n)) => format!("yes, pathLen {n}"),
            (true, None) => "yes, no pathLen limit".to_string(),
            (false, _) => "no".to_string(),
        },
    );
    if !info.key_usage.is_empty() {
        row("Key usage:", &info.key_usage.join(", "));
    }
    if !info.extended_key_usage.is_empty() {
        row("Ext key usage:", &info.extended_key_usage.join(", "));
    }
    if let Some(k) = &info.subject_key_id {
        row("Subject key ID:", k);
    }
    if let Some(k) = &info.authority_key_id {
        row("Auth. key ID:", k);
    }
    row("SHA-256:", &info.sha256_fingerprint);
}

fn run_verify(a: VerifyArgs) -> CmdResult {
    let mut certs = load_certs(&a.cert).map_err(Failure::input)?;
    let target = certs.remove(0);
    let mut intermediates = certs;
    if let Some(p) = &a.intermediates {
        intermediates.extend(load_certs(p).map_err(Failure::input)?);
    }
    let roots = Bundle::load(&a.roots).map_err(Failure::input)?;
    let now = OffsetDateTime::now_utc();
    let at = match &a.at {
        Some(s) => parse_time(s, now).map_err(|e| Failure::input(format!("--at: {e}")))?,
        None => now,
    };
    match verify(&target, &intermediates, roots.certs(), at, Purpose::Auto) {
        Ok(chain) => {
            let path: Vec<String> = chain.links.iter().map(|(s, _)| s.clone()).collect();
            outln!("valid: {} (anchor)", path.join(" -> "));
            Ok(())
        }
        Err(e) => Err(Failure::invalid(format!(
            "invalid: {}: {e}",
            a.cert.display()
        ))),
    }
}

fn run_bundle(cmd: BundleCmd) -> CmdResult {
    match cmd {
        BundleCmd::Add { bundle, certs } => {
            let mut b = if bundle.exists() {
                Bundle::load(&bundle).map_err(Failure::input)?
            } else {
                Bundle::default()
            };
            let (mut seen, mut added) = (0, 0);
            for path in &certs {
                for c in load_certs(path).map_err(Failure::input)? {
                    check_anchor(path, &c)?;
                    seen += 1;
                    if b.add(c) {
                        added += 1;
                    }
                }
            }
            write_atomic(&bundle, b.to_pem().as_bytes(), PUBLIC_MODE, true)
                .map_err(Failure::input)?;
            outln!(
                "{}: added {added} anchor(s), {} skipped as already present; {} in the bundle",
                bundle.display(),
                seen - added,
                b.len()
            );
            Ok(())
        }
        BundleCmd::Remove {
            bundle,
            fingerprint,
        } => {
            let mut b = Bundle::load(&bundle).map_err(Failure::input)?;
            let removed = b
                .remove(&fingerprint)
                .map_err(|e| Failure::input(format!("{}: {e}", bundle.display())))?;
            write_atomic(&bundle, b.to_pem().as_bytes(), PUBLIC_MODE, true)
                .map_err(Failure::input)?;
            let info = CertInfo::from_der(&removed).map_err(Failure::input)?;
            outln!(
                "{}: removed {} ({}); {} anchor(s) left",
                bundle.display(),
                info.subject,
                info.sha256_fingerprint,
                b.len()
            );
            Ok(())
        }
        BundleCmd::List { bundle, output } => {
            let b = Bundle::load(&bundle).map_err(Failure::input)?;
            let now = OffsetDateTime::now_utc();
            let list = b.list();
            match output {
                Output::Json => outln!(
                    "{}",
                    serde_json::to_string_pretty(&list).map_err(Failure::input)?
                ),
                Output::Text => {
                    outln!(
                        "{:<64}  {:<20}  {:<14}  SUBJECT",
                        "SHA-256",
                        "NOT AFTER",
                        "LEFT"
                    );
                    for i in &list {
                        outln!(
                            "{:<64}  {:<20}  {:<14}  {}",
                            i.sha256_fingerprint,
                            rfc3339(i.not_after),
                            time_left(now, i.not_after),
                            i.subject
                        );
                    }
                }
            }
            Ok(())
        }
    }
}

fn check_anchor(path: &Path, c: &CertificateDer<'_>) -> CmdResult {
    let info =
        CertInfo::from_der(c).map_err(|e| Failure::input(format!("{}: {e}", path.display())))?;
    if !info.is_ca {
        return Err(Failure::input(format!(
            "{}: {} is not a CA certificate, so it cannot be a trust anchor; add the root (or issuing CA) certificate",
            path.display(),
            info.subject
        )));
    }
    Ok(())
}
