//! `junction check [--config junction.toml]`: load and validate the config,
//! print every diagnostic (rustc style) on stderr.
//!
//! Exit 0 with a one-line summary on stdout when there is no error (warnings
//! are printed and do not fail the check); 1 when there is any error.
//!
//! Extension point: routes and mappings (issues 3 and 4) add their own
//! `fn check_xxx(&Config, &Path) -> Diagnostics` and call it from [`run`]
//! next to `config::load_with_warnings`, so one run shows every problem of
//! every file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{self, Config, Diagnostics};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The config file to check.
    #[arg(long, short, default_value = "junction.toml")]
    pub config: PathBuf,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let (config, mut diags) = match config::load_with_warnings(&args.config) {
        Ok((config, warnings)) => (Some(config), warnings),
        Err(diags) => (None, diags),
    };
    // Further checks (routes, mappings) extend `diags` here.
    diags.sort();
    print_diagnostics(&diags);
    match config {
        Some(config) if !diags.has_errors() => {
            println!("{}", summary(&args.config, &config, &diags));
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!(
                "error: {}: {} error(s){}",
                args.config.display(),
                diags.error_count(),
                warnings_suffix(&diags)
            );
            Ok(ExitCode::from(1))
        }
    }
}

fn print_diagnostics(diags: &Diagnostics) {
    for d in diags {
        eprintln!("{d}\n");
    }
}

fn warnings_suffix(diags: &Diagnostics) -> String {
    match diags.warning_count() {
        0 => String::new(),
        n => format!(", {n} warning(s)"),
    }
}

/// `junction.toml: ok, 1 listener(s), store data/junction.db (sync=full)`.
fn summary(file: &Path, config: &Config, diags: &Diagnostics) -> String {
    let sync = match config.store.sync {
        crate::journal::SyncPolicy::Full => "full",
        crate::journal::SyncPolicy::Normal => "normal",
    };
    format!(
        "{}: ok, {} listener(s), store {} (sync={sync}){}",
        file.display(),
        config.listeners.len(),
        display_path(&config.store.path).display(),
        warnings_suffix(diags)
    )
}

/// The path relative to the current folder when it is under it.
fn display_path(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
}
