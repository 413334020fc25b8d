//! A readable description of a certificate, for `weft certs inspect` and checks.

use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use crate::cert::{DerError, fingerprint, hex, parse_x509};
use crate::key::KeyAlgorithm;

/// RFC 3339 in whole seconds, as certificates hold time.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// "3y 112d", "41d 3h", "5h 2m", "expired 2d ago": how long until `until`.
pub fn time_left(now: OffsetDateTime, until: OffsetDateTime) -> String {
    let secs = (until - now).whole_seconds();
    let (prefix, suffix, s) = if secs < 0 {
        ("expired ", " ago", -secs)
    } else {
        ("", "", secs)
    };
    let (d, h, m) = (s / 86400, (s % 86400) / 3600, (s % 3600) / 60);
    let body = if d >= 365 {
        format!("{}y {}d", d / 365, d % 365)
    } else if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m {}s", s % 60)
    };
    format!("{prefix}{body}{suffix}")
}

#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub subject_alt_names: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    pub key_algorithm: String,
    pub signature_algorithm: String,
    pub is_ca: bool,
    pub path_len: Option<u32>,
    pub key_usage: Vec<String>,
    pub extended_key_usage: Vec<String>,
    pub subject_key_id: Option<String>,
    pub authority_key_id: Option<String>,
    pub self_signed: bool,
    pub sha256_fingerprint: String,
    pub spki_sha256: String,
}

impl CertInfo {
    pub fn from_der(der: &[u8]) -> Result<Self, DerError> {
        let c = parse_x509(der)?;
        let mut sans = Vec::new();
        let mut skid = None;
        let mut akid = None;
        let mut key_usage = Vec::new();
        let mut eku = Vec::new();
        for ext in c.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    sans.extend(san.general_names.iter().map(describe_name));
                }
                ParsedExtension::SubjectKeyIdentifier(k) => skid = Some(hex(k.0)),
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    akid = a.key_identifier.as_ref().map(|k| hex(k.0));
                }
                ParsedExtension::KeyUsage(ku) => {
                    key_usage = ku.to_string().split(", ").map(str::to_string).collect();
                }
                ParsedExtension::ExtendedKeyUsage(e) => {
                    let pairs = [
                        (e.any, "any"),
                        (e.server_auth, "serverAuth"),
                        (e.client_auth, "clientAuth"),
                        (e.code_signing, "codeSigning"),
                        (e.email_protection, "emailProtection"),
                        (e.time_stamping, "timeStamping"),
                        (e.ocsp_signing, "OCSPSigning"),
                    ];
                    eku = pairs
                        .iter()
                        .filter(|(on, _)| *on)
                        .map(|(_, n)| n.to_string())
                        .chain(e.other.iter().map(|o| o.to_id_string()))
                        .collect();
                }
                _ => {}
            }
        }
        let (is_ca, path_len) = match c.basic_constraints() {
            Ok(Some(bc)) => (bc.value.ca, bc.value.path_len_constraint),
            _ => (false, None),
        };
        let sig_oid = &c.signature_algorithm.algorithm;
        let signature_algorithm =
            x509_parser::objects::oid2sn(sig_oid, x509_parser::objects::oid_registry())
                .map(str::to_string)
                .unwrap_or_else(|_| sig_oid.to_id_string());
        let self_signed =
            c.subject().as_raw() == c.issuer().as_raw() && c.verify_signature(None).is_ok();
        Ok(Self {
            subject: c.subject().to_string(),
            issuer: c.issuer().to_string(),
            serial: serial_hex(&c.serial.to_bytes_be()),
            subject_alt_names: sans,
            not_before: c.validity().not_before.to_datetime(),
            not_after: c.validity().not_after.to_datetime(),
            key_algorithm: KeyAlgorithm::of(c.public_key()).to_string(),
            signature_algorithm,
            is_ca,
            path_len,
            key_usage,
            extended_key_usage: eku,
            subject_key_id: skid,
            authority_key_id: akid,
            self_signed,
            sha256_fingerprint: fingerprint(der),
            spki_sha256: crate::cert::sha256_hex(c.public_key().raw),
        })
    }

    /// The subject's common name, or the whole subject when it has none.
    pub fn common_name(&self) -> &str {
        self.subject
            .split(", ")
            .find_map(|p| p.strip_prefix("CN="))
            .unwrap_or(&self.subject)
    }
}

/// A serial number as colon-separated hex, without DER's sign byte.
pub fn serial_hex(bytes: &[u8]) -> String {
    let start = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    bytes[start..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn describe_name(n: &GeneralName<'_>) -> String {
    match n {
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        GeneralName::IPAddress(b) => match b.len() {
            4 => format!(
                "IP:{}",
                std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())
            ),
            16 => format!(
                "IP:{}",
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())
            ),
            _ => format!("IP:{}", hex(b)),
        },
        other => format!("{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn time_left_is_readable() {
        let now = datetime!(2026-01-01 0:00 UTC);
        assert_eq!(time_left(now, datetime!(2036-01-01 0:00 UTC)), "10y 2d");
        assert_eq!(time_left(now, datetime!(2026-02-11 3:00 UTC)), "41d 3h");
        assert_eq!(time_left(now, datetime!(2026-01-01 5:02 UTC)), "5h 2m");
        assert_eq!(
            time_left(now, datetime!(2025-12-30 0:00 UTC)),
            "expired 2d 0h ago"
        );
    }
}
