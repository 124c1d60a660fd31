//! The `junction` binary: parse the command line and hand over to [`junction::cli::run`].

use clap::Parser;

/// mimalloc instead of glibc's malloc: profiles of intake and mapping showed
/// 13% (intake) and 35–40% (parse+map) of instructions in malloc/free; see
/// BENCHMARKS.md for the measured effect.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = junction::cli::Cli::parse();
    junction::cli::run(cli)
}
