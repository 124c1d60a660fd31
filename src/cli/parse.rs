//! `junction parse` (not yet written).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ParseArgs {}

pub fn run(_args: ParseArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`junction parse` is not implemented yet")
}
