//! `entra-gateway`: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    entra_gateway::cli::run(entra_gateway::cli::Cli::parse())
}
