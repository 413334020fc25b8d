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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Certs(c) => cli::certs::run(c),
        Cmd::Check(c) => cli::check::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                if f.code == 1 {
                    println!("{}", f.message);
                } else {
                    eprintln!("error: {}", f.message);
                }
            }
            ExitCode::from(f.code)
        }
    }
}
