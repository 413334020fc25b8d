//! Who may use the operator endpoints from a browser's reach: a page on
//! another site (or a DNS name rebound to this address) must not read the
//! fleet or trigger a renewal. Requests name this listener by an address
//! (or `localhost`), never a foreign name; a foreign `Origin` is refused;
//! a mutation carries a header no form or simple request can send, so a
//! cross-site page would need a CORS preflight, which is never granted.

use std::net::IpAddr;

/// The header every mutating request carries (`weft` sends it).
pub const OPERATOR_HEADER: &str = "x-weft-operator";

/// Why a request was refused before it reached an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "Host {0:?} is not this listener's: the admin listener answers requests addressed to an IP address of its own or localhost (a foreign name is how DNS rebinding reaches it); connect by address, e.g. --admin-addr 127.0.0.1:9990"
    )]
    ForeignHost(String),
    #[error(
        "Origin {0:?} is another site's: the admin listener serves no cross-site page and sends no CORS headers; use weft or curl from the operator's machine"
    )]
    ForeignOrigin(String),
    #[error(
        "{method} needs the {OPERATOR_HEADER} header (any value): mutations carry a header a cross-site form cannot send; weft sends it, with curl add -H '{OPERATOR_HEADER}: 1'"
    )]
    NoOperatorHeader { method: String },
}

impl Refusal {
    /// The reason label of `admin_refusals_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::ForeignHost(_) => "foreign_host",
            Self::ForeignOrigin(_) => "foreign_origin",
            Self::NoOperatorHeader { .. } => "no_operator_header",
        }
    }
}

/// What a request says about where it comes from.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub operator_header: bool,
}

/// The host part of an authority (`host`, `host:port`, `[v6]:port`).
fn host_of(authority: &str) -> &str {
    let a = authority.trim();
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match a.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => a,
    }
}

/// A host a request may name: `localhost`, a loopback address, or the
/// address the client reached (`local`).
fn allowed_host(host: &str, local: IpAddr) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip == local || ip.to_canonical() == local.to_canonical(),
        Err(_) => false,
    }
}

/// The verdict on a request to the admin listener reached at `local`.
pub fn judge(r: &Request<'_>, local: IpAddr) -> Result<(), Refusal> {
    // HTTP/1.0 clients may omit Host; a browser never does.
    if let Some(host) = r.host
        && !allowed_host(host_of(host), local)
    {
        return Err(Refusal::ForeignHost(host.to_string()));
    }
    if let Some(origin) = r.origin {
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        let same = authority.is_some_and(|a| {
            let a = a.trim_end_matches('/');
            allowed_host(host_of(a), local) && r.host.is_some_and(|h| h.eq_ignore_ascii_case(a))
        });
        if !same {
            return Err(Refusal::ForeignOrigin(origin.to_string()));
        }
    }
    let safe = matches!(r.method, "GET" | "HEAD");
    if !safe && !r.operator_header {
        return Err(Refusal::NoOperatorHeader {
            method: r.method.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 5));

    fn req<'a>(method: &'a str, host: Option<&'a str>, origin: Option<&'a str>) -> Request<'a> {
        Request {
            method,
            host,
            origin,
            operator_header: false,
        }
    }

    #[test]
    fn addresses_and_localhost_are_this_listener() {
        for host in [
            "127.0.0.1:9990",
            "127.0.0.1",
            "localhost:9990",
            "LOCALHOST",
            "[::1]:9990",
            "10.0.0.5:9990",
            "127.8.0.1:1",
        ] {
            assert_eq!(
                judge(&req("GET", Some(host), None), LOCAL),
                Ok(()),
                "{host}"
            );
        }
        assert_eq!(judge(&req("GET", None, None), LOCAL), Ok(()));
    }

    #[test]
    fn foreign_names_and_addresses_are_refused() {
        for host in [
            "evil.example:9990",
            "rebind.example",
            "10.0.0.6:9990",
            "localhost.evil.example",
            "",
            "[fe80::1]:9990",
        ] {
            assert!(
                matches!(
                    judge(&req("GET", Some(host), None), LOCAL),
                    Err(Refusal::ForeignHost(_))
                ),
                "{host}"
            );
        }
    }

    #[test]
    fn only_the_same_origin_is_accepted() {
        let host = Some("127.0.0.1:9990");
        assert_eq!(
            judge(&req("GET", host, Some("http://127.0.0.1:9990")), LOCAL),
            Ok(())
        );
        for origin in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:9991",
            "https://localhost:9990",
            "file://",
        ] {
            assert!(
                matches!(
                    judge(&req("GET", host, Some(origin)), LOCAL),
                    Err(Refusal::ForeignOrigin(_))
                ),
                "{origin}"
            );
        }
    }

    #[test]
    fn mutations_need_the_operator_header() {
        let host = Some("127.0.0.1:9990");
        let e = judge(&req("POST", host, None), LOCAL).unwrap_err();
        assert!(e.to_string().contains(OPERATOR_HEADER), "{e}");
        for m in ["PUT", "DELETE", "PATCH", "OPTIONS"] {
            assert!(judge(&req(m, host, None), LOCAL).is_err(), "{m}");
        }
        let mut r = req("POST", host, None);
        r.operator_header = true;
        assert_eq!(judge(&r, LOCAL), Ok(()));
        // A header does not make another site's page welcome.
        r.origin = Some("http://evil.example");
        assert!(judge(&r, LOCAL).is_err());
    }
}
