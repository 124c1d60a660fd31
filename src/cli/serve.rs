//! `junction serve`: load the config, start logging, run the engine until
//! SIGTERM/SIGINT, drain, exit 0.
//!
//! Exit codes: 0 after a clean shutdown; 2 when the engine could not start
//! (config errors, a port already in use, an unopenable journal).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::config;
use crate::engine;
use crate::telemetry;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The engine configuration file.
    #[arg(long, short, default_value = "junction.toml")]
    pub config: PathBuf,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let (config, warnings) = match config::load_with_warnings(&args.config) {
        Ok(loaded) => loaded,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            eprintln!(
                "error: {} has {} error(s); not starting",
                args.config.display(),
                diagnostics.error_count()
            );
            return Ok(ExitCode::from(2));
        }
    };
    telemetry::init(&config.log).context("cannot set up logging")?;
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!(config = %args.config.display(), "starting junction");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("junction")
        .build()
        .context("cannot start the async runtime")?;
    // in JSON the log's own line says it: a plain one beside it would be the
    // one line of the stream a log shipper cannot read
    let plain_errors = !matches!(config.log.format, crate::telemetry::LogFormat::Json);
    let result = runtime.block_on(engine::serve(config, config::config_dir(&args.config)));
    // Blocking journal reads in flight are short; do not hang on them.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(err) => {
            tracing::error!(error = %err, "engine failed to start");
            if plain_errors {
                eprintln!("error: {err}");
            }
            Ok(ExitCode::from(2))
        }
    }
}
