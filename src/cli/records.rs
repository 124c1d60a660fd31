//! `junction records copy-to-postgres [--config junction.toml]`: copies a
//! node's SQLite record store (`[store] records`: records and their history,
//! the objections register and its trail, API tokens, the audit trail) into
//! the PostgreSQL database of `[store] url`, for a trust moving from one node
//! to several. One transaction, ids and versions kept; refused unless the
//! database is still empty, so it never mixes two stores.
//!
//! Prints the number of rows copied per table (never their content).
//! Exit codes: 0 copied; 1 refused (the database is not empty, no SQLite
//! file); 2 could not run (bad config, no `url`, database unreachable).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config;
use crate::store::{RecordStore, RecordStoreConfig, StoreError};

#[derive(Debug, clap::Args)]
pub struct RecordsArgs {
    #[command(subcommand)]
    pub action: RecordsAction,
    /// The engine configuration file (its `[store] records` is copied into its `[store] url`).
    #[arg(long, short, default_value = "junction.toml", global = true)]
    pub config: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
pub enum RecordsAction {
    /// Copy the SQLite record store (`[store] records`) into the empty PostgreSQL database of `[store] url`.
    CopyToPostgres,
}

pub fn run(args: RecordsArgs) -> anyhow::Result<ExitCode> {
    let config = match config::load(&args.config) {
        Ok(config) => config,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            return Ok(ExitCode::from(2));
        }
    };
    let RecordsAction::CopyToPostgres = args.action;
    if config.store.url.is_none() {
        eprintln!(
            "error: {} has no `[store] url`: name the PostgreSQL database to copy into",
            args.config.display()
        );
        return Ok(ExitCode::from(2));
    }
    let store = match RecordStore::open(&RecordStoreConfig::of(&config.store)) {
        Ok(store) => store,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(ExitCode::from(2));
        }
    };
    let from = &config.store.records;
    match store.copy_from_sqlite(from) {
        Ok(copied) => {
            for (table, rows) in &copied.0 {
                println!("{table:<20} {rows}");
            }
            eprintln!("copied {} into {}", from.display(), store.location());
            Ok(ExitCode::SUCCESS)
        }
        Err(err @ (StoreError::NotEmpty { .. } | StoreError::NoSuchFile { .. })) => {
            eprintln!("error: {err}");
            Ok(ExitCode::from(1))
        }
        Err(err) => {
            eprintln!("error: {err}");
            Ok(ExitCode::from(2))
        }
    }
}
