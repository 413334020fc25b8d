//! `weft init`: the redirect rules of Linkerd's proxy-init, as argument lists
//! built by a pure function (tested) and applied with `iptables -w`.

use std::process::Command;

pub const REDIRECT_CHAIN: &str = "PROXY_INIT_REDIRECT";
pub const OUTPUT_CHAIN: &str = "PROXY_INIT_OUTPUT";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitConfig {
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// The proxy's own ports (inbound, admin): never redirected inbound.
    pub proxy_ports: Vec<u16>,
    pub proxy_uid: u32,
    pub skip_inbound_ports: Vec<String>,
    pub skip_outbound_ports: Vec<String>,
    pub skip_subnets: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("no iptables found; install the iptables package")]
    NoIptables,
    #[error("`{cmd}` failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("{0:?} is not a port or port range (e.g. 8080 or 9000:9010)")]
    BadPort(String),
    #[error("{0:?} is not an IPv4 subnet (e.g. 10.0.0.0/8)")]
    BadSubnet(String),
}

/// Checks `8080` or `9000:9010` (iptables syntax; `-` also accepted).
pub fn check_port_spec(s: &str) -> Result<String, InitError> {
    let norm = s.trim().replace('-', ":");
    let ok = match norm.split_once(':') {
        Some((a, b)) => {
            matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a > 0 && a <= b)
        }
        None => matches!(norm.parse::<u16>(), Ok(p) if p > 0),
    };
    if ok {
        Ok(norm)
    } else {
        Err(InitError::BadPort(s.to_string()))
    }
}

pub fn check_subnet(s: &str) -> Result<String, InitError> {
    let (ip, len) = s
        .trim()
        .split_once('/')
        .ok_or_else(|| InitError::BadSubnet(s.to_string()))?;
    // IPv4 only: the rules are installed with iptables, not ip6tables.
    let ok = ip.parse::<std::net::Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32);
    if ok {
        Ok(s.trim().to_string())
    } else {
        Err(InitError::BadSubnet(s.to_string()))
    }
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// The rules to append (after the chains are created or flushed), in order.
pub fn rules(cfg: &InitConfig) -> Vec<Vec<String>> {
    let mut r = Vec::new();
    let mut inbound_skips: Vec<String> = cfg.proxy_ports.iter().map(u16::to_string).collect();
    inbound_skips.extend(cfg.skip_inbound_ports.iter().cloned());
    for p in &inbound_skips {
        r.push(args(&[
            "-A",
            REDIRECT_CHAIN,
            "-p",
            "tcp",
            "--dport",
            p,
            "-j",
            "RETURN",
        ]));
    }
    r.push(args(&[
        "-A",
        REDIRECT_CHAIN,
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-port",
        &cfg.inbound_port.to_string(),
    ]));
    let uid = cfg.proxy_uid.to_string();
    r.push(args(&[
        "-A",
        OUTPUT_CHAIN,
        "-m",
        "owner",
        "--uid-owner",
        &uid,
        "-j",
        "RETURN",
    ]));
    r.push(args(&["-A", OUTPUT_CHAIN, "-o", "lo", "-j", "RETURN"]));
    for p in &cfg.skip_outbound_ports {
        r.push(args(&[
            "-A",
            OUTPUT_CHAIN,
            "-p",
            "tcp",
            "--dport",
            p,
            "-j",
            "RETURN",
        ]));
    }
    for s in &cfg.skip_subnets {
        r.push(args(&["-A", OUTPUT_CHAIN, "-d", s, "-j", "RETURN"]));
    }
    r.push(args(&[
        "-A",
        OUTPUT_CHAIN,
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-port",
        &cfg.outbound_port.to_string(),
    ]));
    r
}

/// The nat-table transaction for `iptables-restore --noflush`: declaring the
/// chains creates them or empties them, then the rules, then any missing jump.
pub fn restore_script(
    cfg: &InitConfig,
    add_prerouting_jump: bool,
    add_output_jump: bool,
) -> String {
    let mut out = String::from("*nat\n");
    out.push_str(&format!(
        ":{REDIRECT_CHAIN} - [0:0]\n:{OUTPUT_CHAIN} - [0:0]\n"
    ));
    for r in rules(cfg) {
        out.push_str(&r.join(" "));
        out.push('\n');
    }
    let [pre, outj] = jumps();
    if add_prerouting_jump {
        out.push_str(&format!("-A {}\n", pre.join(" ")));
    }
    if add_output_jump {
        out.push_str(&format!("-A {}\n", outj.join(" ")));
    }
    out.push_str("COMMIT\n");
    out
}

/// The jumps from the built-in chains.
pub fn jumps() -> [Vec<String>; 2] {
    [
        args(&["PREROUTING", "-j", REDIRECT_CHAIN]),
        args(&["OUTPUT", "-j", OUTPUT_CHAIN]),
    ]
}

/// Which iptables to use: the backend that already has rules, preferring nft.
pub fn detect_backend() -> Result<String, InitError> {
    let count = |bin: &str| -> Option<usize> {
        let out = Command::new(format!("{bin}-save")).output().ok()?;
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("-A"))
                .count()
        })
    };
    let has = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    match (
        has("iptables-legacy")
            .then(|| count("iptables-legacy"))
            .flatten(),
        has("iptables-nft"),
    ) {
        (Some(n), _) if n > 0 => Ok("iptables-legacy".into()),
        (_, true) => Ok("iptables-nft".into()),
        _ if has("iptables") => Ok("iptables".into()),
        _ => Err(InitError::NoIptables),
    }
}

pub struct Iptables {
    pub bin: String,
}

impl Iptables {
    fn nat(&self, a: &[String]) -> Result<String, InitError> {
        let out = Command::new(&self.bin)
            .arg("-w")
            .args(["-t", "nat"])
            .args(a)
            .output()
            .map_err(|_| InitError::NoIptables)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(InitError::Failed {
                cmd: format!("{} -w -t nat {}", self.bin, a.join(" ")),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    fn chain_exists(&self, chain: &str) -> bool {
        self.nat(&args(&["-L", chain, "-n"])).is_ok()
    }

    /// Installs (or re-installs: idempotent) the chains, rules and jumps in
    /// one `iptables-restore --noflush` transaction: there is never a moment
    /// with half the rules, so a failure cannot leave traffic unredirected.
    pub fn install(&self, cfg: &InitConfig) -> Result<(), InitError> {
        let [pre, out] = jumps();
        let has = |j: &[String]| {
            let mut check = vec!["-C".to_string()];
            check.extend(j.iter().cloned());
            self.nat(&check).is_ok()
        };
        let script = restore_script(cfg, !has(&pre), !has(&out));
        let restore = format!("{}-restore", self.bin);
        let mut child = Command::new(&restore)
            .args(["-w", "--noflush"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|_| InitError::NoIptables)?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            let _ = stdin.write_all(script.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|_| InitError::NoIptables)?;
        if !out.status.success() {
            return Err(InitError::Failed {
                cmd: format!("{restore} -w --noflush"),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    pub fn uninstall(&self) -> Result<(), InitError> {
        for j in jumps() {
            let mut del = vec!["-D".to_string()];
            del.extend(j.iter().cloned());
            while self.nat(&del).is_ok() {}
        }
        for chain in [REDIRECT_CHAIN, OUTPUT_CHAIN] {
            if self.chain_exists(chain) {
                self.nat(&args(&["-F", chain]))?;
                self.nat(&args(&["-X", chain]))?;
            }
        }
        Ok(())
    }

    /// The rules in force, as `iptables -S` prints them.
    pub fn list(&self) -> Result<Vec<String>, InitError> {
        let mut out = Vec::new();
        for chain in [REDIRECT_CHAIN, OUTPUT_CHAIN] {
            if self.chain_exists(chain) {
                out.extend(self.nat(&args(&["-S", chain]))?.lines().map(str::to_string));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_exempt_the_proxy_and_skips() {
        let cfg = InitConfig {
            inbound_port: 4143,
            outbound_port: 4140,
            proxy_ports: vec![4143, 4191],
            proxy_uid: 2102,
            skip_inbound_ports: vec!["22".into()],
            skip_outbound_ports: vec!["443".into()],
            skip_subnets: vec!["10.96.0.0/12".into()],
        };
        let r: Vec<String> = rules(&cfg).iter().map(|a| a.join(" ")).collect();
        assert_eq!(
            r,
            vec![
                "-A PROXY_INIT_REDIRECT -p tcp --dport 4143 -j RETURN",
                "-A PROXY_INIT_REDIRECT -p tcp --dport 4191 -j RETURN",
                "-A PROXY_INIT_REDIRECT -p tcp --dport 22 -j RETURN",
                "-A PROXY_INIT_REDIRECT -p tcp -j REDIRECT --to-port 4143",
                "-A PROXY_INIT_OUTPUT -m owner --uid-owner 2102 -j RETURN",
                "-A PROXY_INIT_OUTPUT -o lo -j RETURN",
                "-A PROXY_INIT_OUTPUT -p tcp --dport 443 -j RETURN",
                "-A PROXY_INIT_OUTPUT -d 10.96.0.0/12 -j RETURN",
                "-A PROXY_INIT_OUTPUT -p tcp -j REDIRECT --to-port 4140",
            ]
        );
    }

    #[test]
    fn one_transaction() {
        let cfg = InitConfig {
            inbound_port: 4143,
            outbound_port: 4140,
            proxy_ports: vec![4143],
            proxy_uid: 7,
            skip_inbound_ports: vec![],
            skip_outbound_ports: vec![],
            skip_subnets: vec![],
        };
        let s = restore_script(&cfg, true, false);
        assert!(
            s.starts_with("*nat\n:PROXY_INIT_REDIRECT - [0:0]\n:PROXY_INIT_OUTPUT - [0:0]\n"),
            "{s}"
        );
        assert!(s.contains("-A PREROUTING -j PROXY_INIT_REDIRECT\n"), "{s}");
        assert!(!s.contains("-A OUTPUT -j"), "{s}");
        assert!(s.ends_with("COMMIT\n"));
    }

    #[test]
    fn specs() {
        assert_eq!(check_port_spec("9000-9010").unwrap(), "9000:9010");
        assert!(check_port_spec("0").is_err());
        assert!(check_port_spec("90:80").is_err());
        assert!(check_port_spec("http").is_err());
        assert!(check_subnet("10.0.0.0/8").is_ok());
        assert!(check_subnet("10.0.0.0").is_err());
        assert!(check_subnet("10.0.0.0/64").is_err());
        assert!(check_subnet("fd00::/8").is_err());
    }
}
