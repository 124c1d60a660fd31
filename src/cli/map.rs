//! `junction map` (not yet written).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct MapArgs {}

pub fn run(_args: MapArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`junction map` is not implemented yet")
}
