//! The `junction` binary: parse the command line and hand over to [`junction::cli::run`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = junction::cli::Cli::parse();
    junction::cli::run(cli)
}
