//! `junction test` (not yet written).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct TestArgs {}

pub fn run(_args: TestArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`junction test` is not implemented yet")
}
