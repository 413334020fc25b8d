//! What a tap asks for, decided by pure functions: which requests match,
//! how many a second pass, and how much of the path is shown.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use linkerd2_proxy_api::http_types::{http_method, scheme};
use linkerd2_proxy_api::tap::observe_request::{Match, r#match};

/// A match deeper or larger than this is refused: the control plane builds
/// small ones, and a deep one would only cost stack on the request path.
pub const MAX_DEPTH: usize = 16;
pub const MAX_TERMS: usize = 256;

/// Why a tap's match was refused (INVALID_ARGUMENT, naming the term).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("the match nests deeper than {MAX_DEPTH} levels; flatten it")]
    TooDeep,
    #[error("the match has more than {MAX_TERMS} terms; ask for fewer")]
    TooLarge,
    #[error("a match term names no condition; give each term one")]
    Empty,
    #[error("a netmask names no address; give the address to match")]
    NoAddress,
    #[error("netmask /{mask} is longer than the address ({bits} bits); use a prefix up to /{bits}")]
    Mask { mask: u32, bits: u32 },
    #[error("port range {min}-{max} is not a range of ports; use 0-65535 with min <= max")]
    Ports { min: u32, max: u32 },
    #[error("the HTTP method is empty or not a method: {0:?}")]
    Method(String),
    #[error(
        "route label {0:?}: this proxy knows no routes; match on addresses, destination labels or HTTP"
    )]
    RouteLabel(String),
}

/// A compiled match: every term checked, nothing left to parse per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
    Source(Tcp),
    Destination(Tcp),
    /// `workload` (ns/name), `namespace` or `server_id` of the destination.
    DestinationLabel {
        key: String,
        value: String,
    },
    Method(String),
    Scheme(String),
    Authority(Text),
    Path(Text),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tcp {
    Net { ip: IpAddr, prefix: u32 },
    Ports { min: u16, max: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    Exact(String),
    Prefix(String),
}

/// One request as a filter sees it (the path without its query).
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub workload: &'a str,
    pub server_id: Option<&'a str>,
    pub method: &'a str,
    pub scheme: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
}

/// No match at all taps everything.
pub fn compile(m: Option<&Match>) -> Result<Filter, FilterError> {
    let mut terms = 0;
    match m {
        None => Ok(Filter::All(Vec::new())),
        Some(m) => compile_in(m, 0, &mut terms),
    }
}

fn compile_in(m: &Match, depth: usize, terms: &mut usize) -> Result<Filter, FilterError> {
    use r#match::Match as M;
    if depth >= MAX_DEPTH {
        return Err(FilterError::TooDeep);
    }
    *terms += 1;
    if *terms > MAX_TERMS {
        return Err(FilterError::TooLarge);
    }
    let seq = |s: &r#match::Seq, terms: &mut usize| {
        s.matches
            .iter()
            .map(|m| compile_in(m, depth + 1, terms))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match m.r#match.as_ref().ok_or(FilterError::Empty)? {
        M::All(s) => Filter::All(seq(s, terms)?),
        M::Any(s) => Filter::Any(seq(s, terms)?),
        M::Not(m) => Filter::Not(Box::new(compile_in(m, depth + 1, terms)?)),
        M::Source(t) => Filter::Source(tcp(t)?),
        M::Destination(t) => Filter::Destination(tcp(t)?),
        M::DestinationLabel(l) => Filter::DestinationLabel {
            key: l.key.clone(),
            value: l.value.clone(),
        },
        M::RouteLabel(l) => return Err(FilterError::RouteLabel(l.key.clone())),
        M::Http(h) => http(h)?,
    })
}

fn tcp(t: &r#match::Tcp) -> Result<Tcp, FilterError> {
    use r#match::tcp::Match as T;
    match t.r#match.as_ref().ok_or(FilterError::Empty)? {
        T::Netmask(n) => {
            let ip: IpAddr =
                n.ip.and_then(|ip| ip.try_into().ok())
                    .ok_or(FilterError::NoAddress)?;
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            if n.mask > bits {
                return Err(FilterError::Mask { mask: n.mask, bits });
            }
            Ok(Tcp::Net { ip, prefix: n.mask })
        }
        T::Ports(p) => {
            // An absent bound is the other one (a single port).
            let (min, max) = match (p.min, p.max) {
                (0, m) => (m, m),
                (m, 0) => (m, m),
                (a, b) => (a, b),
            };
            match (u16::try_from(min), u16::try_from(max)) {
                (Ok(lo), Ok(hi)) if lo <= hi => Ok(Tcp::Ports { min: lo, max: hi }),
                _ => Err(FilterError::Ports { min, max }),
            }
        }
    }
}

fn http(h: &r#match::Http) -> Result<Filter, FilterError> {
    use r#match::http::Match as H;
    use r#match::http::string_match::Match as S;
    let text = |s: &r#match::http::StringMatch| match s.r#match.as_ref() {
        Some(S::Exact(e)) => Ok(Text::Exact(e.clone())),
        Some(S::Prefix(p)) => Ok(Text::Prefix(p.clone())),
        None => Err(FilterError::Empty),
    };
    Ok(match h.r#match.as_ref().ok_or(FilterError::Empty)? {
        H::Method(m) => {
            let name = match m.r#type.clone() {
                Some(http_method::Type::Unregistered(s)) => s,
                Some(t) => http::Method::try_from(t)
                    .map(|m| m.as_str().to_string())
                    .map_err(|e| FilterError::Method(e.to_string()))?,
                None => return Err(FilterError::Method(String::new())),
            };
            if http::Method::from_bytes(name.as_bytes()).is_err() {
                return Err(FilterError::Method(name));
            }
            Filter::Method(name)
        }
        H::Scheme(s) => Filter::Scheme(match s.r#type.clone() {
            Some(scheme::Type::Registered(1)) => "https".into(),
            Some(scheme::Type::Registered(_)) => "http".into(),
            Some(scheme::Type::Unregistered(s)) => s.to_ascii_lowercase(),
            None => return Err(FilterError::Empty),
        }),
        H::Authority(s) => Filter::Authority(text(s)?),
        H::Path(s) => Filter::Path(text(s)?),
    })
}

/// Whether `f` matches the request.
pub fn matches(f: &Filter, r: &Facts<'_>) -> bool {
    match f {
        Filter::All(fs) => fs.iter().all(|f| matches(f, r)),
        Filter::Any(fs) => fs.iter().any(|f| matches(f, r)),
        Filter::Not(f) => !matches(f, r),
        Filter::Source(t) => tcp_matches(t, r.src),
        Filter::Destination(t) => tcp_matches(t, r.dst),
        Filter::DestinationLabel { key, value } => match key.as_str() {
            "workload" => r.workload == value,
            "namespace" => r.workload.split('/').next() == Some(value.as_str()),
            "server_id" => r.server_id == Some(value.as_str()),
            _ => false,
        },
        Filter::Method(m) => r.method == m,
        Filter::Scheme(s) => r.scheme.eq_ignore_ascii_case(s),
        Filter::Authority(t) => text_matches(t, r.authority),
        Filter::Path(t) => text_matches(t, r.path),
    }
}

fn text_matches(t: &Text, s: &str) -> bool {
    match t {
        Text::Exact(e) => s == e,
        Text::Prefix(p) => s.starts_with(p.as_str()),
    }
}

fn tcp_matches(t: &Tcp, a: SocketAddr) -> bool {
    match t {
        Tcp::Ports { min, max } => (*min..=*max).contains(&a.port()),
        Tcp::Net { ip, prefix } => in_net(*ip, *prefix, a.ip()),
    }
}

fn in_net(net: IpAddr, prefix: u32, ip: IpAddr) -> bool {
    let (n, i, bits) = match (net, ip.to_canonical()) {
        (IpAddr::V4(n), IpAddr::V4(i)) => (u32::from(n) as u128, u32::from(i) as u128, 32),
        (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
        _ => return false,
    };
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix.min(bits);
    (n >> shift) == (i >> shift)
}

/// A one-second window of admitted requests, for `--max-rps`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    start: Option<Instant>,
    taken: u32,
}

/// Admits one request under `max_rps` (None: no limit), updating `w`.
pub fn admit(w: &mut Window, max_rps: Option<u32>, now: Instant) -> bool {
    let Some(max) = max_rps else { return true };
    let fresh = w
        .start
        .is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1));
    if fresh {
        *w = Window {
            start: Some(now),
            taken: 0,
        };
    }
    if w.taken < max {
        w.taken += 1;
        true
    } else {
        false
    }
}

/// The path as shown: without its query unless the reader asked for it.
pub fn shown_path(path_and_query: &str, show_query: bool) -> &str {
    if show_query {
        return path_and_query;
    }
    path_and_query
        .split_once('?')
        .map_or(path_and_query, |(p, _)| p)
}

/// `true`, or the reason there was no TLS: never a bare `false`.
pub fn tls_label(tls: bool, no_tls_reason: &str) -> &str {
    match (tls, no_tls_reason) {
        (true, _) => "true",
        (false, "") => "no_identity",
        (false, r) => r,
    }
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
