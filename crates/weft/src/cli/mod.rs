//! The `weft` command line: one module per command.

pub mod certs;
pub mod check;
pub mod duration;

use clap::ValueEnum;

/// Output format shared by commands that print reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// A refusal from a command: printed as one line, with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// Bad input: files that cannot be read or used, wrong arguments.
    pub fn input(message: impl std::fmt::Display) -> Self {
        Self {
            code: 2,
            message: message.to_string(),
        }
    }
    /// The thing checked is not valid.
    pub fn invalid(message: impl std::fmt::Display) -> Self {
        Self {
            code: 1,
            message: message.to_string(),
        }
    }
}

pub type CmdResult = Result<(), Failure>;
