//! HTTP request paths as routes judge them and applications read them: one
//! normal form, so `/public/../admin` cannot match `/public` and then be
//! served as `/admin`. The proxy forwards exactly the path it judged.
//!
//! The normal form (RFC 3986 §6.2.2): percent-encoded unreserved characters
//! decoded, other escapes upper-cased, repeated slashes merged, `.` and `..`
//! segments removed (never above the root). What cannot be normalised
//! safely is refused: NUL, a malformed escape, and (unless the Server keeps
//! them) an encoded `/` or `\`, which applications disagree about.

use thiserror::Error;

/// The Server annotation that keeps `%2F` and `%5C` verbatim (for APIs that
/// put them in path segments); routes then see them as escapes.
pub const KEEP_ENCODED_SLASHES: &str = "policy.weft.dev/keep-encoded-slashes";

/// A path in normal form: what routes match and what the application reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized(pub String);

impl Normalized {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a path was refused (the client gets 400 with this reason).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathRefusal {
    #[error("the path {raw:?} does not start with '/': send an origin-form path (e.g. /api/x)")]
    NotAbsolute { raw: String },
    #[error(
        "the path contains a NUL byte (%00) at byte {at}: no application reads it safely; remove it"
    )]
    Nul { at: usize },
    #[error(
        "the path has a malformed escape at byte {at}: '%' must be followed by two hex digits; encode '%' as %25"
    )]
    MalformedEscape { at: usize },
    #[error(
        "the path contains an encoded {which} ({escape}) at byte {at}, which applications split differently; send it unencoded, or annotate the Server {KEEP_ENCODED_SLASHES}: \"true\" to keep it verbatim"
    )]
    EncodedSlash {
        which: &'static str,
        escape: String,
        at: usize,
    },
}

/// The path of a request target as a client may send it: origin form
/// (`/a?q`) or absolute form (`http://host/a?q`); the query is not part of it.
/// (The proxy gets this from its HTTP parser; explain takes a typed target.)
pub fn target_path(target: &str) -> &str {
    let rest = match target.split_once("://") {
        Some((scheme, rest)) if !scheme.is_empty() && !scheme.contains('/') => {
            rest.find('/').map_or("", |i| &rest[i..])
        }
        _ => target,
    };
    rest.split(['?', '#']).next().unwrap_or("")
}

/// The normal form of `raw` (a request path, without the query), or why it
/// cannot be given one. `*` (as in `OPTIONS *`) is kept as it is.
pub fn normalize(raw: &str, keep_encoded_slashes: bool) -> Result<Normalized, PathRefusal> {
    if raw == "*" {
        return Ok(Normalized(raw.to_string()));
    }
    if raw.is_empty() {
        return Ok(Normalized("/".to_string()));
    }
    if !raw.starts_with('/') {
        return Err(PathRefusal::NotAbsolute {
            raw: raw.to_string(),
        });
    }
    let decoded = decode_unreserved(raw, keep_encoded_slashes)?;
    Ok(Normalized(remove_dot_segments(&decoded)))
}

/// Decodes escapes of unreserved characters; upper-cases the others.
fn decode_unreserved(raw: &str, keep_encoded_slashes: bool) -> Result<String, PathRefusal> {
    let b = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            0 => return Err(PathRefusal::Nul { at: i }),
            b'%' => {
                let hex = |j: usize| b.get(j).and_then(|c| (*c as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                    return Err(PathRefusal::MalformedEscape { at: i });
                };
                let byte = (hi * 16 + lo) as u8;
                match byte {
                    0 => return Err(PathRefusal::Nul { at: i }),
                    b'/' | b'\\' if !keep_encoded_slashes => {
                        return Err(PathRefusal::EncodedSlash {
                            which: if byte == b'/' { "'/'" } else { "'\\'" },
                            escape: raw[i..i + 3].to_string(),
                            at: i,
                        });
                    }
                    c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                        out.push(c as char);
                    }
                    c => out.push_str(&format!("%{c:02X}")),
                }
                i += 3;
            }
            _ => {
                // A whole UTF-8 character (paths from hyper are ASCII, but
                // explain takes any string).
                let ch = raw[i..].chars().next().unwrap_or('\u{FFFD}');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    Ok(out)
}

/// Merges repeated slashes and removes `.` and `..` segments; `..` at the
/// root stays at the root. A path ending in `/`, `.` or `..` keeps a
/// trailing slash.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in path.split('/').skip(1) {
        trailing = false;
        match seg {
            "" | "." => trailing = true,
            ".." => {
                segments.pop();
                trailing = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
#[path = "path_tests.rs"]
mod tests;
