//! Port lists in annotations, and which ports are opaque: one reading for
//! the destination service's hint and for `weft policy explain`.

use std::collections::{BTreeMap, BTreeSet};

pub const ANN_OPAQUE: &str = "config.linkerd.io/opaque-ports";
/// Linkerd's default opaque ports (server-speaks-first protocols).
pub const DEFAULT_OPAQUE: &[u16] = &[25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

/// `8080, 9000-9010` → the ports; a bad entry is an error naming it.
pub fn parse_ports(list: &str) -> Result<BTreeSet<u16>, String> {
    let mut out = BTreeSet::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("{part:?} is not a port or a range like 9000-9010");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u16, u16) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                if a > b || a == 0 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(part.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?);
            }
        }
    }
    Ok(out)
}

/// A workload's opaque ports: its annotation, else its namespace's, else
/// Linkerd's defaults.
pub fn opaque_ports(
    workload: &BTreeMap<String, String>,
    namespace: Option<&BTreeMap<String, String>>,
) -> Result<BTreeSet<u16>, String> {
    match workload
        .get(ANN_OPAQUE)
        .or_else(|| namespace.and_then(|n| n.get(ANN_OPAQUE)))
    {
        Some(v) => parse_ports(v).map_err(|e| format!("annotation {ANN_OPAQUE}: {e}")),
        None => Ok(DEFAULT_OPAQUE.iter().copied().collect()),
    }
}
