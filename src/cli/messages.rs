//! `junction messages [filters] [--api URL] [--json]`: the journal's messages,
//! newest first (`GET /api/messages`); `junction messages show ID [--raw]`:
//! one message with its ACK and trail, routing outcomes and deliveries
//! (`GET /api/messages/{id}`), and with `--raw` the message itself.
//!
//! The list shows ids, senders, types and outcomes only. `show --raw` prints
//! the message as received, which holds patient data: it is for the operator
//! at the terminal who asked for it, never for a log. Text a sender wrote is
//! printed with its control characters escaped (`\u{1b}`): they reach an
//! operator's terminal (`--json` has the bytes as JSON escapes).
//!
//! Exit codes: 0 shown; 1 the engine answered an error about it (no such
//! message); 2 it could not be reached, or refused the request (a bad filter,
//! no or the wrong token).

use std::process::ExitCode;

use serde_json::Value;

use super::api_client::{call, printable, table, text, ApiArgs};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MessagesArgs {
    #[command(subcommand)]
    pub command: Option<MessagesCommand>,
    #[command(flatten)]
    pub filters: Filters,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum MessagesCommand {
    /// One message: its header, ACK, routing outcomes and deliveries.
    Show {
        /// The journal id (the first column of `junction messages`).
        id: i64,
        /// Also print the message as received (patient data: for the terminal).
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// What `junction messages` lists: every filter given must hold.
#[derive(Debug, Default, clap::Args)]
pub struct Filters {
    /// MSH-10.
    #[arg(long, value_name = "ID")]
    pub control_id: Option<String>,
    /// `MSH-3^MSH-4` (`PAS^RAL01`), or the application alone (`PAS`).
    #[arg(long)]
    pub sender: Option<String>,
    /// `ADT^A01`, or the message code alone (`ADT`).
    #[arg(long = "type", value_name = "TYPE")]
    pub message_type: Option<String>,
    /// accepted, rejected or garbage.
    #[arg(long)]
    pub status: Option<String>,
    /// The latest routing outcome: routed, unrouted or failed.
    #[arg(long)]
    pub routing: Option<String>,
    /// What a destination called a delivery (the MESH message id a document
    /// went as), or the MESH message id a document came in as: the message
    /// behind it.
    #[arg(long, value_name = "REF")]
    pub remote_ref: Option<String>,
    /// Received at or after this time (RFC 3339, or a date: midnight UTC).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Received before this time (RFC 3339, or a date).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Only messages older than this id: the next page after one whose last
    /// id this is (the answer's `next_before` with `--json`).
    #[arg(long, value_name = "ID")]
    pub before: Option<i64>,
}

impl Filters {
    fn query(&self) -> Vec<(&'static str, String)> {
        [
            ("control_id", &self.control_id),
            ("sender", &self.sender),
            ("type", &self.message_type),
            ("status", &self.status),
            ("routing", &self.routing),
            ("remote_ref", &self.remote_ref),
            ("since", &self.since),
            ("until", &self.until),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .chain(self.limit.map(|l| ("limit", l.to_string())))
        .chain(self.before.map(|b| ("before", b.to_string())))
        .collect()
    }
}

pub fn run(args: MessagesArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(MessagesCommand::Show { id, raw, api }) => show(id, raw, &api),
        None => list(&args.filters, &args.api),
    }
}

fn list(filters: &Filters, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let answer = call(
        &api.url(),
        reqwest::Method::GET,
        "/api/messages",
        &filters.query(),
    )?;
    if let Some(code) = answer.finish_early(api.json) {
        return Ok(code);
    }
    let rows: Vec<Vec<String>> = answer
        .body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|m| {
            vec![
                text(m, "id"),
                text(m, "received_at"),
                text(m, "listener"),
                text(m, "sender"),
                text(m, "type"),
                text(m, "control_id"),
                text(m, "status"),
                text(m, "ack_code"),
                text(m, "routing"),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no messages");
    } else {
        println!(
            "{}",
            table(
                &[
                    "ID",
                    "RECEIVED",
                    "LISTENER",
                    "SENDER",
                    "TYPE",
                    "CONTROL ID",
                    "STATUS",
                    "ACK",
                    "ROUTING"
                ],
                &rows
            )
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn show(id: i64, raw: bool, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let answer = call(
        &api.url(),
        reqwest::Method::GET,
        &format!("/api/messages/{id}"),
        &[],
    )?;
    let mut answer = answer;
    // with --json the answer as the engine gave it, but the message itself (patient
    // data) only with --raw, as in the table
    if !raw {
        if let Some(m) = answer.body.as_object_mut() {
            m.remove("raw");
        }
    }
    if let Some(code) = answer.finish_early(api.json) {
        return Ok(code);
    }
    let m = &answer.body;
    for (label, key) in [
        ("id", "id"),
        ("received", "received_at"),
        ("listener", "listener"),
        ("peer", "peer"),
        ("sender", "sender"),
        ("type", "type"),
        ("control id", "control_id"),
        ("version", "version"),
        ("size", "size_bytes"),
        ("status", "status"),
        ("ack code", "ack_code"),
        ("error", "error"),
    ] {
        println!("{label:<11} {}", text(m, key));
    }
    if let Some(ack) = m.get("ack").and_then(Value::as_str) {
        // what the ACK quotes of the message (`found 'CRP'`) is shown only
        // with --raw, as the message itself is
        let ack = if raw {
            ack.to_string()
        } else {
            crate::hl7::ack_unquoted(ack)
        };
        println!("\nACK sent:\n{}", segments(&ack));
    }
    let routings: Vec<Vec<String>> = m
        .get("routing")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                text(r, "routed_at"),
                if r.get("replay").and_then(Value::as_bool) == Some(true) {
                    "replay".to_string()
                } else {
                    "first".to_string()
                },
                text(r, "outcome"),
                list_of(r, "routes"),
                text(r, "error"),
            ]
        })
        .collect();
    println!();
    if routings.is_empty() {
        // only accepted messages are routed (a rejected one is, once replayed)
        match m.get("status").and_then(Value::as_str) {
            Some("accepted") => println!("not routed yet"),
            Some("garbage") => println!("not routed: not an HL7 message (kept as received)"),
            _ => println!("not routed: rejected (see its error)"),
        }
    } else {
        println!(
            "{}",
            table(&["ROUTED", "PASS", "OUTCOME", "ROUTES", "ERROR"], &routings)
        );
    }
    let deliveries: Vec<Vec<String>> = m
        .get("deliveries")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|d| {
            vec![
                text(d, "id"),
                text(d, "destination"),
                text(d, "mapping"),
                text(d, "status"),
                text(d, "attempts"),
                text(d, "remote_ref"),
                text(d, "last_error"),
            ]
        })
        .collect();
    if !deliveries.is_empty() {
        println!(
            "\n{}",
            table(
                &[
                    "DELIVERY",
                    "DESTINATION",
                    "MAPPING",
                    "STATUS",
                    "ATTEMPTS",
                    "REMOTE REF",
                    "LAST ERROR"
                ],
                &deliveries
            )
        );
    }
    if raw {
        if let Some(text) = m.get("raw").and_then(Value::as_str) {
            println!("\nas received:\n{}", segments(text));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// HL7 text with one segment a line.
fn segments(text: &str) -> String {
    let lines = text
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .trim_end()
        .to_string();
    printable(&lines).into_owned()
}

/// A JSON array of strings as `a, b` (`-` when empty).
fn list_of(value: &Value, key: &str) -> String {
    let items: Vec<&str> = value
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if items.is_empty() {
        "-".to_string()
    } else {
        items.join(", ")
    }
}
