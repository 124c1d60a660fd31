//! `junction queues [--api URL] [--json]`: every destination's delivery
//! queue: pending, delivered, dead and withheld documents, the age of the
//! oldest pending one, and whether the destination runs (`GET /api/queues`).
//!
//! Exit codes: 0 shown; 1 the engine answered an error about it; 2 it could not be
//! reached, or refused the request (no or the wrong token).

use std::process::ExitCode;

use serde_json::Value;

use super::api_client::{call, table, text, ApiArgs};

#[derive(Debug, clap::Args)]
pub struct QueuesArgs {
    #[command(flatten)]
    pub api: ApiArgs,
}

pub fn run(args: QueuesArgs) -> anyhow::Result<ExitCode> {
    let answer = call(&args.api.url(), reqwest::Method::GET, "/api/queues", &[])?;
    if let Some(code) = answer.finish_early(args.api.json) {
        return Ok(code);
    }
    let queues = answer
        .body
        .get("queues")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|q| {
            let oldest = match q.get("oldest_pending_age_secs").and_then(Value::as_u64) {
                Some(secs) => format!("{secs}s"),
                None => "-".to_string(),
            };
            let state = if q.get("available").and_then(Value::as_bool) == Some(true) {
                "running".to_string()
            } else {
                format!("NOT RUNNING: {}", text(q, "error"))
            };
            vec![
                text(q, "destination"),
                text(q, "kind"),
                text(q, "pending"),
                text(q, "delivered"),
                text(q, "dead"),
                text(q, "withheld"),
                oldest,
                state,
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "DESTINATION",
                "KIND",
                "PENDING",
                "DELIVERED",
                "DEAD",
                "WITHHELD",
                "OLDEST",
                "STATE"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}
