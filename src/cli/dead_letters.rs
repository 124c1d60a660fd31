//! `junction dead-letters [--destination D] [--limit N] [--api URL] [--json]`:
//! the deliveries given up on, newest first, with why (`GET /api/dead-letters`).
//! Retry them with `junction retry`.
//!
//! Exit codes: 0 shown; 1 the engine answered an error about it; 2 it could not be
//! reached, or refused the request (a bad filter, no or the wrong token).

use std::process::ExitCode;

use serde_json::Value;

use super::api_client::{call, table, text, ApiArgs};

#[derive(Debug, clap::Args)]
pub struct DeadLettersArgs {
    /// Only this destination's dead letters.
    #[arg(long, value_name = "ID")]
    pub destination: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[arg(long)]
    pub limit: Option<u32>,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub fn run(args: DeadLettersArgs) -> anyhow::Result<ExitCode> {
    let mut query = Vec::new();
    if let Some(d) = &args.destination {
        query.push(("destination", d.clone()));
    }
    if let Some(l) = args.limit {
        query.push(("limit", l.to_string()));
    }
    let answer = call(
        &args.api.url(),
        reqwest::Method::GET,
        "/api/dead-letters",
        &query,
    )?;
    if let Some(code) = answer.finish_early(args.api.json) {
        return Ok(code);
    }
    print_deliveries(&answer.body);
    Ok(ExitCode::SUCCESS)
}

/// Prints `{"deliveries": [...]}` as a table (also used by `retry`).
pub(crate) fn print_deliveries(body: &Value) {
    let rows: Vec<Vec<String>> = body
        .get("deliveries")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(row)
        .collect();
    if rows.is_empty() {
        println!("no dead letters");
        return;
    }
    println!("{}", table(HEADER, &rows));
}

pub(crate) const HEADER: &[&str] = &[
    "ID",
    "MESSAGE",
    "DESTINATION",
    "TYPE",
    "CONTROL ID",
    "STATUS",
    "ATTEMPTS",
    "LAST ERROR",
];

pub(crate) fn row(d: &Value) -> Vec<String> {
    vec![
        text(d, "id"),
        text(d, "message_id"),
        text(d, "destination"),
        text(d, "type"),
        text(d, "control_id"),
        text(d, "status"),
        text(d, "attempts"),
        text(d, "last_error"),
    ]
}
