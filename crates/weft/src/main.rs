//! `weft`: one binary for the whole mesh.

/// `println!` for command output: a reader that went away (`weft … | head`)
/// ends the command quietly with the shell's SIGPIPE status, never a panic.
macro_rules! outln {
    () => {
        $crate::write_stdout(format_args!(""), true)
    };
    ($($t:tt)*) => {
        $crate::write_stdout(format_args!($($t)*), true)
    };
}

/// `print!` with the same rule as `outln!`.
macro_rules! out {
    ($($t:tt)*) => {
        $crate::write_stdout(format_args!($($t)*), false)
    };
}

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "weft",
    version,
    about = "weft: every connection between services mutually authenticated, encrypted, and allowed only by policy",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    operator: cli::operator_tls::OperatorArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create, inspect and verify certificates and trust-anchor bundles
    #[command(subcommand)]
    Certs(cli::certs::CertsCmd),
    /// Check identity material (anchors, issuer, key) and report problems
    Check(cli::check::CheckArgs),
    /// Run the control plane: the identity service (Certify) and admin
    ControlPlane(Box<cli::control_plane::ControlPlaneArgs>),
    /// Run the whole mesh on 127.0.0.1 and show a request over mutual TLS
    Demo(cli::demo::DemoArgs),
    /// What a workload's proxies hold right now: their metrics, the policy of a port beside the resources'
    #[command(subcommand)]
    Diagnostics(cli::diagnostics::DiagnosticsCmd),
    /// Every edge the proxies saw (client → server) with counts and whether it was mTLS; `--plaintext` is a compliance gate
    Edges(cli::edges::EdgesArgs),
    /// The certificate chain a workload's proxies serve right now, read from the proxies themselves
    Identity(cli::identity::IdentityArgs),
    /// Install (or remove, or list) the iptables rules that steer traffic through the proxy
    Init(cli::init::InitArgs),
    /// Mesh the workloads in Kubernetes manifests: add linkerd.io/inject: enabled, or the proxy itself with --manual
    Inject(cli::inject::InjectArgs),
    /// Print the control plane's Kubernetes manifests for `kubectl apply -f -` (`--crds` first)
    Install(cli::install::InstallArgs),
    /// Authorization policy tools
    #[command(subcommand)]
    Policy(cli::policy::PolicyCmd),
    /// Run the sidecar proxy for one workload
    Proxy(Box<cli::proxy::ProxyArgs>),
    /// Print what `weft install` created, for `kubectl delete -f -`
    Uninstall(cli::install::UninstallArgs),
    /// Print a running installation's manifests again (e.g. with a new --image), keeping the cluster's identity objects
    Upgrade(cli::install::UpgradeArgs),
    /// Remove what `weft inject` added (the annotation or the proxy) from Kubernetes manifests
    Uninject(cli::inject::UninjectArgs),
    /// Live requests through a workload's proxies, one line per event like `linkerd viz tap` (tls=true, or why not)
    Tap(cli::tap::TapArgs),
    /// Create and revoke join tokens for workloads' first certificates
    #[command(subcommand)]
    Token(cli::token::TokenCmd),
    /// Rotate identity material without a step skipped: `rotate issuer` judges the new issuer, installs it and waits until every proxy serves a leaf from it
    #[command(subcommand)]
    Rotate(cli::rotate::RotateCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One crypto provider for every TLS user in the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let result = cli::operator_tls::install(&cli.operator).and_then(|()| match cli.cmd {
        Cmd::Certs(c) => cli::certs::run(c),
        Cmd::Check(c) => cli::check::run(c),
        Cmd::ControlPlane(c) => cli::control_plane::run(*c),
        Cmd::Token(c) => cli::token::run(c),
        Cmd::Rotate(c) => cli::rotate::run(c),
        Cmd::Proxy(c) => cli::proxy::run(*c),
        Cmd::Demo(c) => cli::demo::run(c),
        Cmd::Init(c) => cli::init::run(c),
        Cmd::Edges(c) => cli::edges::run(c),
        Cmd::Diagnostics(c) => cli::diagnostics::run(c),
        Cmd::Identity(c) => cli::identity::run(c),
        Cmd::Tap(c) => cli::tap::run(c),
        Cmd::Inject(c) => cli::inject::run_inject(c),
        Cmd::Install(c) => cli::install::run_install(c),
        Cmd::Uninstall(c) => cli::install::run_uninstall(c),
        Cmd::Upgrade(c) => cli::install::run_upgrade(c),
        Cmd::Uninject(c) => cli::inject::run_uninject(c),
        Cmd::Policy(c) => cli::policy::run(c),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                if f.verdict {
                    outln!("{}", f.message);
                } else {
                    eprintln!("error: {}", f.message);
                }
            }
            ExitCode::from(f.code)
        }
    }
}

/// Exit status of a process killed by SIGPIPE, as a shell reports it.
const EXIT_PIPE: i32 = 128 + 13;

fn write_stdout(args: std::fmt::Arguments, newline: bool) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(EXIT_PIPE),
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    fn undocumented(cmd: &clap::Command, path: &str, found: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if a.is_hide_set() || id == "help" || id == "version" {
                continue;
            }
            if a.get_help().is_none() && a.get_long_help().is_none() {
                found.push(format!("{path} {id}"));
            }
        }
        for s in cmd.get_subcommands() {
            if s.get_about().is_none() && s.get_name() != "help" {
                found.push(format!("{path} {} (command)", s.get_name()));
            }
            undocumented(s, &format!("{path} {}", s.get_name()), found);
        }
    }

    /// Every command's flags are consistent (unique names, valid
    /// defaults): clap checks this only when a command is first used.
    #[test]
    fn every_command_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    /// `weft … --help` explains every flag and command.
    #[test]
    fn every_flag_has_help_text() {
        let mut found = Vec::new();
        undocumented(&super::Cli::command(), "weft", &mut found);
        assert!(found.is_empty(), "without help text:\n{}", found.join("\n"));
    }

    /// `-o` is the output format wherever it exists; files get `--out`.
    #[test]
    fn short_o_is_the_output_format() {
        fn walk(cmd: &clap::Command, path: &str, bad: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                if a.get_short() == Some('o') && a.get_long() != Some("output") {
                    bad.push(format!("{path} --{}", a.get_long().unwrap_or("?")));
                }
            }
            for s in cmd.get_subcommands() {
                walk(s, &format!("{path} {}", s.get_name()), bad);
            }
        }
        let mut bad = Vec::new();
        walk(&super::Cli::command(), "weft", &mut bad);
        assert!(bad.is_empty(), "-o that is not --output: {bad:?}");
    }
}
