//! `junction objections add NHS_NUMBER [--note TEXT]`, `objections remove
//! NHS_NUMBER`, `objections list`, `objections history [NHS_NUMBER]` (each with
//! `--config junction.toml`): the register of people who object to their
//! records being shared beyond the organisation, kept in the record store named
//! by `[store] records`, and the trail of its changes. Documents about them are
//! withheld from every `external = true` destination.
//!
//! A change made here is recorded as made by `cli <user>` (the login name of
//! the person running the command: `$USER`, else `$LOGNAME`, else `uid <n>`).
//!
//! NHS numbers must pass the modulus 11 check (spaces and hyphens are
//! allowed: `943 476 5919`). Works while the engine runs (SQLite WAL).
//!
//! Exit codes: 0 done; 1 `remove` of a number not in the register; 2 could
//! not run (an invalid NHS number, bad config, unopenable store).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::access::{objections, NhsNumber};

use super::api_client::printable;
use super::token::open_record_store;

#[derive(Debug, clap::Args)]
pub struct ObjectionsArgs {
    #[command(subcommand)]
    pub action: ObjectionsAction,
    /// The engine configuration file (its `[store] records` holds the register).
    #[arg(long, short, default_value = "junction.toml", global = true)]
    pub config: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
pub enum ObjectionsAction {
    /// Register an objection: this person's documents no longer leave the organisation.
    Add {
        /// The NHS number (10 digits, modulus 11 checked).
        nhs_number: String,
        /// Where the objection came from (e.g. a letter's date and reference).
        #[arg(long)]
        note: Option<String>,
    },
    /// Remove an objection.
    Remove {
        /// The NHS number.
        nhs_number: String,
    },
    /// List the register: NHS number, when added, note.
    List,
    /// The changes to the register, newest first: when, what, who, note.
    History {
        /// Only this NHS number's changes.
        nhs_number: Option<String>,
        /// Most changes shown.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

/// Who makes a change from the command line: `cli <login name>`, else (no
/// `$USER` or `$LOGNAME`, as under some service managers) `cli uid <n>`.
fn changed_by() -> String {
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.trim().is_empty()));
    match user {
        Some(user) => format!("cli {user}"),
        // SAFETY: getuid has no preconditions and cannot fail
        None => format!("cli uid {}", unsafe { libc::getuid() }),
    }
}

pub fn run(args: ObjectionsArgs) -> anyhow::Result<ExitCode> {
    // Check the argument before touching any file.
    let number = match &args.action {
        ObjectionsAction::Add { nhs_number, .. }
        | ObjectionsAction::Remove { nhs_number }
        | ObjectionsAction::History {
            nhs_number: Some(nhs_number),
            ..
        } => Some(NhsNumber::parse(nhs_number)?),
        ObjectionsAction::List | ObjectionsAction::History { .. } => None,
    };
    let Some(store) = open_record_store(&args.config)? else {
        return Ok(ExitCode::from(2));
    };
    match (args.action, number) {
        (ObjectionsAction::Add { note, .. }, Some(number)) => {
            let note = note.filter(|n| !n.trim().is_empty());
            if objections::add(&store, &number, note.as_deref(), &changed_by())? {
                eprintln!("objection registered for {number}");
            } else {
                eprintln!("{number} was already in the objections register");
            }
            Ok(ExitCode::SUCCESS)
        }
        (ObjectionsAction::Remove { .. }, Some(number)) => {
            if objections::remove(&store, &number, &changed_by())? {
                eprintln!("objection removed for {number}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("error: {number} is not in the objections register");
                Ok(ExitCode::from(1))
            }
        }
        (ObjectionsAction::History { limit, .. }, number) => {
            let changes = objections::changes(&store, number.as_ref(), limit.max(1))?;
            if changes.is_empty() {
                eprintln!("no change to the objections register");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<24}  {:<10}  {:<12}  {:<24}  NOTE",
                "AT", "NHS NUMBER", "ACTION", "BY"
            );
            for c in changes {
                println!(
                    "{:<24}  {:<10}  {:<12}  {:<24}  {}",
                    c.at,
                    c.nhs_number,
                    c.action,
                    printable(&c.changed_by),
                    printable(c.note.as_deref().unwrap_or(""))
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            let register = objections::list(&store)?;
            if register.is_empty() {
                eprintln!("the objections register is empty");
                return Ok(ExitCode::SUCCESS);
            }
            println!("{:<10}  {:<24}  NOTE", "NHS NUMBER", "ADDED");
            for o in register {
                println!(
                    "{:<10}  {:<24}  {}",
                    o.nhs_number,
                    o.added_at,
                    printable(o.note.as_deref().unwrap_or(""))
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
