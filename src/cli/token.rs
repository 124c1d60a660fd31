//! `junction token add NAME --role ops|clinical`, `token list`, `token
//! revoke NAME` (each with `--config junction.toml`): API tokens for the
//! HTTP server, kept in the record store named by `[store] records`.
//!
//! `add` prints the new token once on stdout (nothing else goes to stdout,
//! so `TOKEN=$(junction token add ...)` works); only its SHA-256 hash is
//! stored. `list` shows names, roles, when made and last used, never hashes.
//! These work while the engine runs (SQLite WAL); a revoked token stops
//! working within seconds.
//!
//! Exit codes: 0 done; 1 the name is taken (`add`) or unknown (`revoke`);
//! 2 could not run (bad config, bad name, unopenable store).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::access::{tokens, AccessError, Role};
use crate::config;
use crate::store::{RecordStore, RecordStoreConfig};

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub action: TokenAction,
    /// The engine configuration file (its `[store] records` holds the tokens).
    #[arg(long, short, default_value = "junction.toml", global = true)]
    pub config: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenAction {
    /// Make a token and print it once (only its hash is kept).
    Add {
        /// A name for the token (who or what uses it), e.g. `gp-portal`.
        name: String,
        /// `clinical`: FHIR reads (/fhir). `ops`: operations API (/api, including the audit trail).
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// List tokens: name, role, created, last used (to the minute: a token's use is
    /// written at most once a minute), never the token or its hash.
    List,
    /// Revoke a token: it stops working within seconds.
    Revoke {
        /// The token's name.
        name: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Ops,
    Clinical,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Ops => Role::Ops,
            RoleArg::Clinical => Role::Clinical,
        }
    }
}

/// Loads the config at `path` and opens its record store (used by
/// `token` and `objections`). `Ok(None)` when the config has errors (they
/// are printed).
pub(super) fn open_record_store(path: &Path) -> anyhow::Result<Option<RecordStore>> {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            eprintln!(
                "error: {} has {} error(s)",
                path.display(),
                diagnostics.error_count()
            );
            return Ok(None);
        }
    };
    let store = RecordStore::open(&RecordStoreConfig::of(&config.store))
        .context("cannot open the record store")?;
    Ok(Some(store))
}

pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let Some(store) = open_record_store(&args.config)? else {
        return Ok(ExitCode::from(2));
    };
    match args.action {
        TokenAction::Add { name, role } => {
            let role = Role::from(role);
            match tokens::create(&store, &name, role) {
                Ok(token) => {
                    println!("{token}");
                    eprintln!(
                        "token `{name}` (role {role}) added to {}; it is shown only now: \
                         keep it somewhere safe (only its SHA-256 hash is stored)",
                        store.location()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(err @ AccessError::TokenExists { .. }) => {
                    eprintln!("error: {err}");
                    Ok(ExitCode::from(1))
                }
                Err(err) => Err(err.into()),
            }
        }
        TokenAction::List => {
            let tokens = tokens::list(&store)?;
            if tokens.is_empty() {
                eprintln!("no tokens in {}", store.location());
                return Ok(ExitCode::SUCCESS);
            }
            let width = tokens
                .iter()
                .map(|t| t.name.len())
                .max()
                .unwrap_or(4)
                .max(4);
            println!(
                "{:<width$}  {:<8}  {:<24}  LAST USED",
                "NAME", "ROLE", "CREATED"
            );
            for t in tokens {
                println!(
                    "{:<width$}  {:<8}  {:<24}  {}",
                    t.name,
                    t.role,
                    t.created_at,
                    t.last_used_at.as_deref().unwrap_or("never")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenAction::Revoke { name } => match tokens::revoke(&store, &name) {
            Ok(()) => {
                eprintln!("token `{name}` revoked (a running engine refuses it within seconds)");
                Ok(ExitCode::SUCCESS)
            }
            Err(err @ AccessError::NoSuchToken { .. }) => {
                eprintln!("error: {err}");
                Ok(ExitCode::from(1))
            }
            Err(err) => Err(err.into()),
        },
    }
}
