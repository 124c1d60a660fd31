//! `junction send` (not yet written).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct SendArgs {}

pub fn run(_args: SendArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`junction send` is not implemented yet")
}
