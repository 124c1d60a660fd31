//! `junction load` (not yet written).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct LoadArgs {}

pub fn run(_args: LoadArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`junction load` is not implemented yet")
}
