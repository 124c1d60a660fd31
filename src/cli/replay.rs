//! `junction replay <message-id>`: routes and maps a journaled message again
//! and queues its documents anew (`POST /api/messages/{id}/replay`), e.g.
//! after a mapping or route was fixed. Documents are idempotent upserts, so a
//! replay converges on the same records. `--destination D` queues the
//! document for that destination only (a MESH message the recipient never
//! got, say); the engine refuses when the message's routes do not send it
//! there. A destination that already has newer messages of the patient is
//! named in a note: it will end with this older document (a replay, unlike a
//! retry, queues nothing after it).
//!
//! Exit codes: 0 replayed (whatever the routing outcome, which is printed);
//! 1 the engine refused (no accepted message with that id, or not routed to
//! that destination); 2 it could not be
//! reached.

use std::process::ExitCode;

use serde_json::Value;

use super::api_client::{call, text, ApiArgs};

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The journal id of the message (from `GET /api/messages`).
    #[arg(value_name = "MESSAGE-ID")]
    pub id: i64,
    /// Queue the document for this `[destinations.<id>]` only.
    #[arg(long, value_name = "ID")]
    pub destination: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let answer = call(
        &args.api.url(),
        reqwest::Method::POST,
        &format!("/api/messages/{}/replay", args.id),
        &args
            .destination
            .iter()
            .map(|d| ("destination", d.clone()))
            .collect::<Vec<_>>(),
    )?;
    if let Some(code) = answer.finish_early(args.api.json) {
        return Ok(code);
    }
    let b = &answer.body;
    let deliveries = listed(b, "deliveries");
    println!(
        "message {}: {} (routing {}){}",
        args.id,
        text(b, "outcome"),
        text(b, "routing_id"),
        if deliveries.is_empty() {
            String::new()
        } else {
            format!(", new deliveries {}", deliveries.join(", "))
        }
    );
    if b.get("error").is_some_and(|e| !e.is_null()) {
        println!("error: {}", text(b, "error"));
    }
    for n in b
        .get("newer_there")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let messages = listed(n, "messages");
        let count = n.get("count").and_then(Value::as_u64).unwrap_or(0) as usize;
        let shown = match count > messages.len() {
            true => format!("{count}, the newest {}", messages.join(", ")),
            false => messages.join(", "),
        };
        println!(
            "note: {} already has newer messages of this patient ({shown}); it will end with \
             this older document unless you replay the newest after it",
            text(n, "destination"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The items of array `key` of `v` as text (none when it is not an array).
fn listed(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(Value::to_string)
        .collect()
}
