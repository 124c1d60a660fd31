//! `junction retry <delivery-id>`, `junction retry --dead [--destination D]` or
//! `junction retry --now --destination D`: queues a dead (or withheld)
//! delivery again, due now with its attempts reset, or cuts a pending one's
//! backoff short (`POST /api/deliveries/{id}/retry`); every dead delivery of
//! one destination or of all (`POST /api/dead-letters/retry`); every pending
//! delivery of a destination due now, e.g. once it is back
//! (`POST /api/queues/{destination}/retry`).
//!
//! A pending delivery given by id is said to be one ("not dead: still pending,
//! made due now"), not "queued again".
//!
//! A retried row's patient's later messages at the same destination (delivered,
//! on their way, or retried in the same call) are queued again after it, in
//! the order they arrived, so the destination ends with the newest; the
//! answer lists them.
//!
//! Exit codes: 0 queued again (or made due); 1 the engine refused (no such delivery, not
//! dead), or a later message of the patient could not be queued again after it; 2 it
//! could not be reached or the arguments are wrong.

use std::process::ExitCode;

use serde_json::Value;

use super::api_client::{call, table, ApiArgs};
use super::dead_letters::{row, HEADER};

#[derive(Debug, clap::Args)]
pub struct RetryArgs {
    /// The delivery to retry (an id from `junction dead-letters`).
    #[arg(
        value_name = "DELIVERY-ID",
        required_unless_present_any = ["dead", "now"],
        conflicts_with_all = ["dead", "now"]
    )]
    pub id: Option<i64>,
    /// Retry every dead letter (of `--destination`, or of all destinations).
    #[arg(long, conflicts_with = "now")]
    pub dead: bool,
    /// Make every pending delivery of `--destination` due now (skip the backoff).
    #[arg(long, requires = "destination")]
    pub now: bool,
    /// With --dead: only this destination's dead letters. With --now: the destination.
    #[arg(long, value_name = "ID", conflicts_with = "id")]
    pub destination: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub fn run(args: RetryArgs) -> anyhow::Result<ExitCode> {
    let answer = match args.id {
        None if args.now => call(
            &args.api.url(),
            reqwest::Method::POST,
            &format!(
                "/api/queues/{}/retry",
                args.destination.as_deref().unwrap_or_default()
            ),
            &[],
        )?,
        Some(id) => call(
            &args.api.url(),
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
                &args.api.url(),
                reqwest::Method::POST,
                "/api/dead-letters/retry",
                &query,
            )?
        }
    };
    if let Some(code) = answer.finish_early(args.api.json) {
        return Ok(code);
    }
    let count = |key| answer.body.get(key).and_then(Value::as_u64);
    match (count("retried"), count("due_now")) {
        (Some(n), _) => {
            println!("{n} dead letter(s) queued again");
            if let Some(left) = count("still_dead").filter(|left| *left > 0) {
                println!(
                    "{left} still dead: delivered once, their documents are gone (a MESH \
                     report said the recipient never got them); `junction dead-letters` \
                     lists them, `junction replay <message> --destination <id>` sends one again"
                );
            }
        }
        (_, Some(n)) => println!("{n} pending deliveries due now"),
        _ => {
            let was = answer.body.get("was").and_then(Value::as_str);
            if was == Some("pending") {
                println!("not dead: still pending, made due now (its backoff cut short):");
            } else {
                println!("queued again:");
            }
            println!("{}", table(HEADER, &[row(&answer.body)]));
        }
    }
    if print_requeued(&answer.body) {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}

/// The patient's later messages queued again after the retried row
/// (`requeued` of the answer). False when
/// one of them could not be: the destination may then end with an older
/// document than the newest.
fn print_requeued(body: &Value) -> bool {
    let Some(requeued) = body.get("requeued").and_then(Value::as_array) else {
        return true;
    };
    if requeued.is_empty() {
        return true;
    }
    let failed = requeued.iter().filter(|r| r.get("error").is_some()).count();
    if failed == 0 {
        println!(
            "{} later message(s) of the same patient (delivered, on their way, or retried too) \
             queued again after the retried delivery, in the order they arrived, so the \
             destination ends with the newest:",
            requeued.len()
        );
    } else {
        println!(
            "{} later message(s) of the same patient (delivered, on their way, or retried too) \
             to queue again after the retried delivery; {failed} of them could NOT be, so the \
             destination may end with an older document than the newest (replay them by hand \
             once the retried one is delivered):",
            requeued.len()
        );
    }
    for r in requeued {
        let num = |key: &str| r.get(key).and_then(Value::as_i64).unwrap_or_default();
        let destination = r.get("destination").and_then(Value::as_str).unwrap_or("");
        let rows: Vec<String> = r
            .get("deliveries")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_i64)
            .map(|d| d.to_string())
            .collect();
        match r.get("error").and_then(Value::as_str) {
            Some(why) => println!(
                "  message {} to {destination} (was delivery {}): not queued: {why}",
                num("message_id"),
                num("was_delivery")
            ),
            None => println!(
                "  message {} to {destination} (was delivery {}): delivery {} after delivery {}",
                num("message_id"),
                num("was_delivery"),
                rows.join(", "),
                num("after")
            ),
        }
    }
    failed == 0
}
