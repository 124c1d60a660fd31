//! Command line: one file per subcommand. Only `cli/` uses `anyhow`; everything
//! below it returns typed errors.
//!
//! Exit codes: 0 success; 1 the command ran but found problems (a NAK, a
//! config diagnostic, a failed test case); 2 it could not run (bad arguments,
//! unreadable files, engine failed to start).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod api_client;
pub mod check;
pub mod dead_letters;
pub mod load;
pub mod map;
pub mod messages;
pub mod objections;
pub mod parse;
pub mod queues;
pub mod records;
pub mod replay;
pub mod retry;
pub mod send;
pub mod serve;
pub mod tail;
pub mod test;
pub mod token;

/// Junction: HL7 v2 / MESH integration engine for NHS shared care records.
#[derive(Debug, Parser)]
#[command(name = "junction", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the engine (MLLP listeners, journal, HTTP server).
    Serve(serve::ServeArgs),
    /// Validate the config, routes and mappings; print every problem as file:line:col.
    Check(check::CheckArgs),
    /// Send HL7 files (or every file in directories) over MLLP and print each ACK.
    Send(send::SendArgs),
    /// Generate MLLP load and report msgs/s and ACK latency percentiles.
    Load(load::LoadArgs),
    /// Parse an HL7 file and print its segments and fields as a tree.
    Parse(parse::ParseArgs),
    /// Dry-run a mapping: the document on stdout (several: one JSON array), unread parts on stderr.
    Map(map::MapArgs),
    /// Run the [[test]] cases declared in mapping and route files.
    Test(test::TestArgs),
    /// Follow a running engine's live events (no patient data).
    Tail(tail::TailArgs),
    /// Manage API tokens: add (printed once), list, revoke.
    Token(token::TokenArgs),
    /// Manage the objections register (people who object to sharing): add, remove, list.
    Objections(objections::ObjectionsArgs),
    /// The record store: copy a node's SQLite records into PostgreSQL (`copy-to-postgres`).
    Records(records::RecordsArgs),
    /// List journaled messages (by control id, sender, type, status, routing, time), or show one with its trail.
    Messages(messages::MessagesArgs),
    /// Show each destination's delivery queue (pending, dead, oldest).
    Queues(queues::QueuesArgs),
    /// List the deliveries given up on, with why.
    DeadLetters(dead_letters::DeadLettersArgs),
    /// Queue a dead delivery (or every dead letter) again.
    Retry(retry::RetryArgs),
    /// Route and map a journaled message again and queue its documents anew
    /// (also a resend kept because its content differed: it is then processed).
    Replay(replay::ReplayArgs),
}

/// Runs one subcommand and turns its outcome into an exit code.
pub fn run(cli: Cli) -> ExitCode {
    if !matches!(cli.command, Command::Serve(_)) {
        quiet_on_closed_stdout();
    }
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Check(args) => check::run(args),
        Command::Send(args) => send::run(args),
        Command::Load(args) => load::run(args),
        Command::Parse(args) => parse::run(args),
        Command::Map(args) => map::run(args),
        Command::Test(args) => test::run(args),
        Command::Tail(args) => tail::run(args),
        Command::Token(args) => token::run(args),
        Command::Objections(args) => objections::run(args),
        Command::Records(args) => records::run(args),
        Command::Messages(args) => messages::run(args),
        Command::Queues(args) => queues::run(args),
        Command::DeadLetters(args) => dead_letters::run(args),
        Command::Retry(args) => retry::run(args),
        Command::Replay(args) => replay::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// A command's output piped into something that stops reading
/// (`junction tail | head`, `junction map m.hl7 | head`) ends the command
/// quietly, as any Unix tool does, instead of a panic on the failed write:
/// Rust ignores SIGPIPE, so the default action is put back. Sockets are not
/// affected (Rust writes to them with MSG_NOSIGNAL), and `serve` keeps the
/// signal ignored: it writes its log to stdout and must outlive a reader.
fn quiet_on_closed_stdout() {
    // SAFETY: setting a signal's disposition to the default before any
    // thread starts; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
