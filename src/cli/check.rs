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

use crate::config::{self, Config, Diagnostic, Diagnostics, Severity};

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
    diags.extend(check_mappings_and_routes(&args.config, config.as_ref()));
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

// ---- mappings/ and routes/ (next to the config file) ----------------------------

/// Every problem of `mappings/*.toml` and `routes/*.toml` as diagnostics. Routes are
/// checked against the mappings (when they load) and the config's listeners (when
/// it loads). Destination ids are not checked yet: `[destinations.<id>]` does not
/// exist in the config. A missing `routes/` folder means no routes, not an error.
fn check_mappings_and_routes(config_file: &Path, config: Option<&Config>) -> Diagnostics {
    let base = config_file.parent().unwrap_or(Path::new(""));
    let mut diags = Diagnostics::new();
    let mappings_dir = base.join("mappings");
    let mappings = if mappings_dir.is_dir() {
        match crate::mapping::MappingSet::load_dir(&mappings_dir) {
            Ok(set) => Some(set),
            Err(errors) => {
                for e in errors {
                    diags.push(line_col_diagnostic(&e.file, e.line, e.col, &e.message));
                }
                None
            }
        }
    } else {
        None
    };
    let listeners: Option<Vec<&str>> =
        config.map(|c| c.listeners.keys().map(String::as_str).collect());
    let known = crate::route::Known {
        mappings: mappings.as_ref(),
        listeners: listeners.as_deref(),
        destinations: None,
    };
    for e in crate::route::check_dir(&base.join("routes"), &known) {
        diags.push(match e.source() {
            Some(text) => Diagnostic::error(&e.file, text, e.span(), &e.message),
            None => Diagnostic::whole_file(Severity::Error, &e.file, &e.message),
        });
    }
    diags
}

/// A diagnostic for a problem reported as 1-based line and column (mapping files).
fn line_col_diagnostic(file: &Path, line: usize, col: usize, message: &str) -> Diagnostic {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Diagnostic::whole_file(Severity::Error, file, message);
    };
    let line_start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    let offset = text[line_start.min(text.len())..]
        .char_indices()
        .nth(col.saturating_sub(1))
        .map_or(text.len(), |(i, _)| line_start + i);
    Diagnostic::error(file, &text, offset..offset + 1, message)
}
