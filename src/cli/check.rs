//! `junction check [--config junction.toml]`: load and validate the config,
//! print every diagnostic (`file:line:col: error: message`, then the line) on stderr.
//!
//! What is checked: the config file itself (see [`crate::config`]), the
//! mapping files in the `mappings/` folder next to it when there is one, and
//! the route files in `routes/` ([`check_routes`]) (every problem of every
//! file, with its line and column).
//!
//! Exit 0 with a one-line summary on stdout when there is no error (warnings
//! are printed and do not fail the check); 1 when there is any error.
//!
//! Extension point: routes (issue 4) add their own
//! `fn check_xxx(config_dir: &Path, diags: &mut Diagnostics) -> usize` like
//! [`check_mappings`] and call it from [`run`], so one run shows every
//! problem of every file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{self, Config, Diagnostic, Diagnostics, Severity};
use crate::mapping::MappingSet;

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
    let dir = config::config_dir(&args.config);
    let mappings = check_mappings(&dir, &mut diags);
    // Further checks (routes) extend `diags` here.
    check_routes(&args.config, &dir, config.as_ref(), &mut diags);
    diags.sort();
    print_diagnostics(&diags);
    match config {
        Some(config) if !diags.has_errors() => {
            println!("{}", summary(&args.config, &config, mappings, &diags));
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!(
                "error: checking {} found {} error(s){}",
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

/// Compiles every mapping in `<config folder>/mappings` (when that folder
/// exists) and adds each problem to `diags`; returns how many mappings compiled.
fn check_mappings(config_dir: &Path, diags: &mut Diagnostics) -> Option<usize> {
    let dir = if config_dir == Path::new(".") {
        PathBuf::from("mappings")
    } else {
        config_dir.join("mappings")
    };
    if !dir.is_dir() {
        // (a file of that name: `serve` would refuse to read it as a folder)
        if dir.exists() {
            diags.push(Diagnostic::whole_file(
                Severity::Error,
                &display_path(&dir),
                "is not a folder, expected the folder of mapping files (`mappings/*.toml`)",
            ));
        }
        return None;
    }
    match MappingSet::load_dir(&dir) {
        Ok(set) => Some(set.plans().count()),
        Err(errors) => {
            for err in errors {
                let file = display_path(&err.file);
                let diagnostic = match std::fs::read_to_string(&err.file) {
                    Ok(source) => Diagnostic::at_line_col(
                        Severity::Error,
                        &file,
                        &source,
                        err.line,
                        err.col,
                        err.message,
                    ),
                    Err(_) => Diagnostic::whole_file(Severity::Error, &file, err.message),
                };
                diags.push(diagnostic);
            }
            Some(0)
        }
    }
}

/// `junction.toml: ok, 1 listener(s), store data/junction.db (sync=full)`,
/// plus `, N mapping(s)` when there is a mappings folder.
fn summary(file: &Path, config: &Config, mappings: Option<usize>, diags: &Diagnostics) -> String {
    let sync = match config.store.sync {
        crate::journal::SyncPolicy::Full => "full",
        crate::journal::SyncPolicy::Normal => "normal",
    };
    let mappings = mappings
        .map(|n| format!(", {n} mapping(s)"))
        .unwrap_or_default();
    // the URL as written: config/ refuses one holding a password
    let records = config
        .store
        .url
        .as_ref()
        .map(|url| format!(", records in PostgreSQL {url}"))
        .unwrap_or_default();
    format!(
        "{}: ok, {} listener(s), store {} (sync={sync}){records}{mappings}{}",
        file.display(),
        config.listeners.len(),
        display_path(&config.store.path).display(),
        warnings_suffix(diags)
    )
}

fn as_strs(ids: Option<&[String]>) -> Option<Vec<&str>> {
    ids.map(|v| v.iter().map(String::as_str).collect())
}

/// The path relative to the current folder when it is under it (not when
/// that folder is the root: `/tmp/x` stays absolute, not `tmp/x`).
fn display_path(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .filter(|cwd| cwd.parent().is_some())
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
}

// ---- routes/ (issue 4) ------------------------------------------------------------

/// Loads `<config folder>/routes/*.toml` (when that folder exists) and adds each
/// problem to `diags`: file syntax, unknown keys, bad patterns and conditions, and
/// references to mappings (checked when the mappings compile: the name exists and
/// declares the route's message types) and to the config's listeners (when the
/// config loads) and its `[destinations.<id>]`.
fn check_routes(
    config_file: &Path,
    config_dir: &Path,
    config: Option<&Config>,
    diags: &mut Diagnostics,
) {
    let in_dir = |name: &str| {
        if config_dir == Path::new(".") {
            PathBuf::from(name)
        } else {
            config_dir.join(name)
        }
    };
    // (no folder: no mapping, so a route naming one is told so; a folder
    // whose mappings do not compile: their own errors say it, and routes
    // are not checked against them)
    let mappings_dir = in_dir("mappings");
    let mappings = match mappings_dir.exists() {
        true => MappingSet::load_dir(&mappings_dir).ok(),
        false => Some(MappingSet::default()),
    };
    // With a config that has errors of its own, the ids it declares still say
    // which names a route may use (every problem in one run).
    let declared = match config {
        Some(_) => config::DeclaredIds::default(),
        None => std::fs::read_to_string(config_file)
            .map(|source| config::declared_ids(&source))
            .unwrap_or_default(),
    };
    let ids = |typed: Option<Vec<String>>, raw: Option<Vec<String>>| typed.or(raw);
    let listeners = ids(
        config.map(|c| c.listeners.keys().cloned().collect()),
        declared.listeners,
    );
    let destinations = ids(
        config.map(|c| c.destinations.keys().cloned().collect()),
        declared.destinations,
    );
    let sources = ids(
        config.map(|c| c.sources.keys().cloned().collect()),
        declared.sources,
    );
    let (listeners, destinations, sources) = (
        as_strs(listeners.as_deref()),
        as_strs(destinations.as_deref()),
        as_strs(sources.as_deref()),
    );
    let known = crate::route::Known {
        mappings: mappings.as_ref(),
        listeners: listeners.as_deref(),
        sources: sources.as_deref(),
        destinations: destinations.as_deref(),
    };
    let routes_dir = in_dir("routes");
    if !routes_dir.exists() {
        diags.push(Diagnostic::whole_file(
            Severity::Warning,
            &display_path(config_file),
            format!(
                "no routes folder ({}): every message will be unrouted (kept in the journal, sent nowhere)",
                display_path(&routes_dir).display()
            ),
        ));
    }
    for err in crate::route::check_dir(&routes_dir, &known) {
        let file = display_path(&err.file);
        diags.push(match err.source() {
            Some(source) => Diagnostic::error(&file, source, err.span(), &err.message),
            None => Diagnostic::whole_file(Severity::Error, &file, &err.message),
        });
    }
}
