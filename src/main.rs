//! `entra-gateway`: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: per-thread free lists suit the many short-lived, small allocations of a proxy
/// (headers, bodies' frames), and it returns memory to the OS.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    entra_gateway::cli::run(entra_gateway::cli::Cli::parse())
}
