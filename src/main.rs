//! `entra-gateway`: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc (default feature): per-thread free lists suit the many short-lived, small
/// allocations of a proxy (headers, bodies' frames), and it returns memory to the OS. With
/// `MIMALLOC_ARENA_EAGER_COMMIT=0` (the image sets it) its arenas are committed as used, which
/// keeps the idle resident size near glibc's.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    entra_gateway::cli::run(entra_gateway::cli::Cli::parse())
}
