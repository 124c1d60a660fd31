//! `junction retry <delivery-id>` or `junction retry --dead [--destination D]`:
//! queues a dead (or withheld) delivery again, due now with its attempts
//! reset (`POST /api/deliveries/{id}/retry`), or every dead delivery of one
//! destination or of all (`POST /api/dead-letters/retry`).
//!
//! Exit codes: 0 queued again; 1 the engine refused (no such delivery, not
//! dead); 2 it could not be reached or the arguments are wrong.

use std::process::ExitCode;

use serde_json::Value;

use super::api_client::{call, table, ApiArgs};
use super::dead_letters::{row, HEADER};

#[derive(Debug, clap::Args)]
pub struct RetryArgs {
    /// The delivery to retry (an id from `junction dead-letters`).
    #[arg(
        value_name = "DELIVERY-ID",
        required_unless_present = "dead",
        conflicts_with = "dead"
    )]
    pub id: Option<i64>,
    /// Retry every dead letter (of `--destination`, or of all destinations).
    #[arg(long)]
    pub dead: bool,
    /// With --dead: only this destination's dead letters.
    #[arg(long, value_name = "ID", requires = "dead")]
    pub destination: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub fn run(args: RetryArgs) -> anyhow::Result<ExitCode> {
    let answer = match args.id {
        Some(id) => call(
            &args.api.api,
            reqwest::Method::POST,
            &format!("/api/deliveries/{id}/retry"),
            &[],
        )?,
        None => {
            let query: Vec<(&str, String)> = args
                .destination
                .iter()
                .map(|d| ("destination", d.clone()))
                .collect();
            call(
                &args.api.api,
                reqwest::Method::POST,
                "/api/dead-letters/retry",
                &query,
            )?
        }
    };
    if !answer.ok() {
        eprintln!("error: {}", answer.error());
        return Ok(ExitCode::from(1));
    }
    if args.api.json {
        println!("{}", answer.body);
        return Ok(ExitCode::SUCCESS);
    }
    match answer.body.get("retried").and_then(Value::as_u64) {
        Some(n) => println!("{n} dead letter(s) queued again"),
        None => {
            println!("queued again:");
            println!("{}", table(HEADER, &[row(&answer.body)]));
        }
    }
    Ok(ExitCode::SUCCESS)
}
