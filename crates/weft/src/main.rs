//! `weft`: one binary for the whole mesh.

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
    /// Install (or remove, or list) the iptables rules that steer traffic through the proxy
    Init(cli::init::InitArgs),
    /// Authorization policy tools
    #[command(subcommand)]
    Policy(cli::policy::PolicyCmd),
    /// Run the sidecar proxy for one workload
    Proxy(Box<cli::proxy::ProxyArgs>),
    /// Create and revoke join tokens for workloads' first certificates
    #[command(subcommand)]
    Token(cli::token::TokenCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One crypto provider for every TLS user in the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let result = match cli.cmd {
        Cmd::Certs(c) => cli::certs::run(c),
        Cmd::Check(c) => cli::check::run(c),
        Cmd::ControlPlane(c) => cli::control_plane::run(*c),
        Cmd::Token(c) => cli::token::run(c),
        Cmd::Proxy(c) => cli::proxy::run(*c),
        Cmd::Demo(c) => cli::demo::run(c),
        Cmd::Init(c) => cli::init::run(c),
        Cmd::Policy(c) => cli::policy::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                if f.verdict {
                    println!("{}", f.message);
                } else {
                    eprintln!("error: {}", f.message);
                }
            }
            ExitCode::from(f.code)
        }
    }
}
