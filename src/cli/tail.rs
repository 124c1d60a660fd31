//! `junction tail [--api URL] [--listener ID] [--json]`: follow a running
//! engine's live events (`GET /api/events`, Server-Sent Events).
//!
//! Output: one line per event on stdout, e.g.
//! `21:04:05.123 MessageAcked pas 127.0.0.1:5012 ADT^A01 RAL123 AA 1108B 3.2ms`
//! (local time), or with `--json` each event's JSON exactly as sent.
//! Connection notices go to stderr. When the engine is not reachable or the
//! stream ends (engine restart), it reconnects with a backoff from 0.5 s up
//! to 5 s; events while disconnected are not replayed.
//!
//! It shows no patient data because the events carry none. An `ops` token in
//! `JUNCTION_API_TOKEN` is sent as a bearer token (needed when the API is not
//! bound to loopback).
//!
//! Exit codes: 0 on Ctrl-C (SIGINT) or SIGTERM; 2 when it cannot start (bad
//! URL, no runtime) or the engine refuses it (no or the wrong token, a
//! `--listener` it does not have).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::telemetry::events::{DeliveryEvent, Event, MeshEvent, MessageOutcome, RoutingEvent};

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Base URL of the engine's HTTP API [default: $JUNCTION_API, else the
    /// `[api] bind` of ./junction.toml, else http://127.0.0.1:8080].
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
    /// Only this listener's events.
    #[arg(long, value_name = "ID")]
    pub listener: Option<String>,
    /// Print each event's JSON instead of a readable line.
    #[arg(long)]
    pub json: bool,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub fn run(args: TailArgs) -> anyhow::Result<ExitCode> {
    let api = super::api_client::resolve_api(args.api.as_deref());
    let mut url = reqwest::Url::parse(api.trim_end_matches('/')).with_context(|| {
        format!(
            "invalid --api `{}`, expected a URL such as http://127.0.0.1:8080",
            api
        )
    })?;
    url.set_path("/api/events");
    if let Some(listener) = &args.listener {
        url.query_pairs_mut().append_pair("listener", listener);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term =
            signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            refused = follow(url, args.json) => {
                // retrying cannot help: the token is missing, wrong or of the
                // wrong role, or the listener named is none the engine has
                eprintln!("tail: {refused}");
                return Ok(ExitCode::from(2));
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Connects, prints events, reconnects; returns only when the engine refuses
/// the token (401, 403) or the request (400: an unknown `--listener`), with
/// what it said.
async fn follow(url: reqwest::Url, json: bool) -> String {
    // No overall timeout: the stream is meant to stay open.
    let client = reqwest::Client::new();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut request = client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(token) = super::api_client::token_from_env() {
            request = request.bearer_auth(token);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                eprintln!("tail: connected to {url}");
                backoff = FIRST_BACKOFF;
                read_stream(response, json).await;
                eprintln!("tail: stream from {url} ended; reconnecting");
            }
            Ok(response)
                if matches!(
                    response.status(),
                    reqwest::StatusCode::UNAUTHORIZED
                        | reqwest::StatusCode::FORBIDDEN
                        | reqwest::StatusCode::BAD_REQUEST
                ) =>
            {
                let status = response.status();
                let said = response
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|b| b["error"].as_str().map(str::to_string))
                    .unwrap_or_default();
                let hint = if status == reqwest::StatusCode::BAD_REQUEST {
                    ""
                } else {
                    " (give an ops token in JUNCTION_API_TOKEN)"
                };
                return format!("{url} answered {status}: {said}{hint}");
            }
            Ok(response) => {
                eprintln!(
                    "tail: {url} answered {}, expected 200; retrying in {:.1}s",
                    response.status(),
                    backoff.as_secs_f64()
                );
            }
            Err(err) => {
                eprintln!(
                    "tail: cannot reach {url}: {err}; retrying in {:.1}s",
                    backoff.as_secs_f64()
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Reads SSE frames until the body ends or fails.
async fn read_stream(mut response: reqwest::Response, json: bool) {
    let mut parser = SseParser::default();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                for (name, data) in parser.push(&chunk) {
                    println!("{}", render(&name, &data, json));
                }
            }
            Ok(None) => return,
            Err(err) => {
                eprintln!("tail: the event stream failed: {err}");
                return;
            }
        }
    }
}

/// An incremental Server-Sent Events parser: `event:` and `data:` fields,
/// dispatched at a blank line; comments (`:`) and other fields ignored.
#[derive(Debug, Default)]
struct SseParser {
    pending: Vec<u8>,
    name: String,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds bytes; returns each completed `(event name, data)`.
    fn push(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    let name = std::mem::take(&mut self.name);
                    out.push((name, self.data.join("\n")));
                }
                self.name.clear();
                self.data.clear();
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.name = value.to_string(),
                "data" => self.data.push(value.to_string()),
                _ => {}
            }
        }
        out
    }
}

/// One output line for an event.
fn render(name: &str, data: &str, json: bool) -> String {
    if json {
        return data.to_string();
    }
    // (a sender's control characters escaped: they reach an operator's terminal)
    let line = match serde_json::from_str::<Event>(data) {
        Ok(event) => readable(&event),
        // A newer engine may send events this tail does not know.
        Err(_) => format!("{name} {data}"),
    };
    super::api_client::printable_line(&line)
}

fn readable(event: &Event) -> String {
    match event {
        Event::MessageAcked(m) => message_line("MessageAcked", m),
        Event::MessageRejected(m) => {
            let mut line = message_line("MessageRejected", m);
            if let Some(location) = &m.error_location {
                line.push_str(&format!(" at {location}"));
            }
            if let Some(code) = &m.error_code {
                line.push_str(&format!(" (error {code})"));
            }
            line
        }
        Event::FramingError {
            listener,
            peer,
            reason,
            bytes,
            at,
        } => format!(
            "{} FramingError {listener} {peer} {bytes}B: {reason}",
            clock(at)
        ),
        Event::ConnectionOpened { listener, peer, at } => {
            format!("{} ConnectionOpened {listener} {peer}", clock(at))
        }
        Event::ConnectionRefused {
            listener,
            peer,
            reason,
            at,
        } => format!(
            "{} ConnectionRefused {listener} {peer}: {reason}",
            clock(at)
        ),
        Event::ConnectionClosed { listener, peer, at } => {
            format!("{} ConnectionClosed {listener} {peer}", clock(at))
        }
        Event::MessageRouted(r) => routing_line("MessageRouted", r),
        Event::MessageUnrouted(r) => routing_line("MessageUnrouted", r),
        Event::RoutingFailed(r) => routing_line("RoutingFailed", r),
        Event::Delivered(d) => delivery_line("Delivered", d),
        Event::DeliveryFailed(d) => delivery_line("DeliveryFailed", d),
        Event::DeadLettered(d) => delivery_line("DeadLettered", d),
        Event::Withheld(d) => delivery_line("Withheld", d),
        Event::MeshReceived(m) => mesh_line("MeshReceived", m),
        Event::MeshAcknowledged(m) => mesh_line("MeshAcknowledged", m),
        Event::Lagged { missed } => {
            format!("-- {missed} event(s) missed: this tail fell behind --")
        }
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// `12:00:01.002 MessageRouted pas #42 ADT^A01 RAL123 -> store, mesh_hwe (routes adt_to_store)`
fn routing_line(name: &str, r: &RoutingEvent) -> String {
    let mut line = format!(
        "{} {name} {} #{} {} {}",
        clock(&r.at),
        r.listener,
        r.journal_id,
        or_dash(&r.message_type),
        or_dash(&r.control_id),
    );
    if !r.destinations.is_empty() {
        line.push_str(&format!(" -> {}", r.destinations.join(", ")));
    }
    if !r.routes.is_empty() {
        line.push_str(&format!(" (routes {})", r.routes.join(", ")));
    }
    if let Some(stage) = &r.stage {
        line.push_str(&format!(" at {stage}"));
    }
    if r.warnings > 0 {
        let s = if r.warnings == 1 { "" } else { "s" };
        line.push_str(&format!(" [{} mapping warning{s}]", r.warnings));
    }
    if r.replay {
        line.push_str(" replay");
    }
    line
}

/// `12:00:02.100 DeliveryFailed fhir_lab #7 (message 42) ORU^R01 LAB9 attempt 2: HTTP 503; retry at 12:00:04.100`
fn delivery_line(name: &str, d: &DeliveryEvent) -> String {
    let mut line = format!(
        "{} {name} {} #{} (message {}) {} {} attempt {}",
        clock(&d.at),
        d.destination,
        d.delivery_id,
        d.journal_id,
        or_dash(&d.message_type),
        or_dash(&d.control_id),
        d.attempt,
    );
    if let Some(remote) = &d.remote_ref {
        line.push_str(&format!(" as {remote}"));
    }
    if let Some(error) = &d.error {
        line.push_str(&format!(": {error}"));
    }
    if let Some(retry_at) = &d.retry_at {
        line.push_str(&format!("; retry at {}", clock(retry_at)));
    }
    line
}

/// `12:00:03.000 MeshReceived mesh_inbox #43 MESH X26ABC2 TEST_WORKFLOW 20200529155357895317_3573F8 accepted 2048B`
fn mesh_line(name: &str, m: &MeshEvent) -> String {
    format!(
        "{} {name} {} #{} MESH {} {} {} {} {}B",
        clock(&m.at),
        m.source,
        m.journal_id,
        or_dash(&m.from),
        or_dash(&m.workflow_id),
        m.message_id,
        m.outcome,
        m.size_bytes
    )
}

fn message_line(name: &str, m: &MessageOutcome) -> String {
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    format!(
        "{} {name} {} {} {} {} {}{} {}B {:.1}ms",
        clock(&m.at),
        m.listener,
        m.peer,
        or_dash(&m.message_type),
        or_dash(&m.control_id),
        m.ack_code.as_deref().unwrap_or("no-ack"),
        if m.duplicate { " duplicate" } else { "" },
        m.size_bytes,
        m.elapsed_us as f64 / 1000.0
    )
}

/// `HH:MM:SS.mmm` in local time, or the text as sent if it is not a timestamp.
fn clock(at: &str) -> String {
    match at.parse::<jiff::Timestamp>() {
        Ok(ts) => ts
            .to_zoned(jiff::tz::TimeZone::system())
            .strftime("%H:%M:%S%.3f")
            .to_string(),
        Err(_) => at.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_handles_split_chunks_comments_and_crlf() {
        let mut parser = SseParser::default();
        assert!(parser.push(b": keep-alive\n\nevent: Mess").is_empty());
        let got = parser.push(b"ageAcked\r\ndata: {\"a\":1}\r\n\r\nevent: X\ndata: 1\ndata: 2\n\n");
        assert_eq!(
            got,
            vec![
                ("MessageAcked".to_string(), "{\"a\":1}".to_string()),
                ("X".to_string(), "1\n2".to_string()),
            ]
        );
    }

    #[test]
    fn readable_line_names_the_message_not_its_content() {
        let event = Event::MessageAcked(MessageOutcome {
            listener: "pas".to_string(),
            peer: "127.0.0.1:5012".to_string(),
            sender: "PAS^RAL".to_string(),
            control_id: "RAL123".to_string(),
            message_type: "ADT^A01".to_string(),
            ack_code: Some("AA".to_string()),
            size_bytes: 1108,
            journal_id: 3,
            duplicate: false,
            elapsed_us: 3200,
            at: "2026-11-22T21:04:05.123Z".to_string(),
            error_location: None,
            error_code: None,
        });
        let data = serde_json::to_string(&event).unwrap();
        let line = render("MessageAcked", &data, false);
        assert!(
            line.ends_with(" MessageAcked pas 127.0.0.1:5012 ADT^A01 RAL123 AA 1108B 3.2ms"),
            "{line}"
        );
        assert!(line.contains(":04:05.123"), "{line}");
        assert_eq!(render("MessageAcked", &data, true), data);
    }

    #[test]
    fn delivery_lines_name_destination_attempt_and_retry() {
        let event = Event::DeliveryFailed(DeliveryEvent {
            delivery_id: 7,
            journal_id: 42,
            destination: "fhir_lab".to_string(),
            control_id: "LAB9".to_string(),
            message_type: "ORU^R01".to_string(),
            attempt: 2,
            outcome: "retry".to_string(),
            error: Some("HTTP 503".to_string()),
            retry_at: Some("2026-11-22T21:04:07.000Z".to_string()),
            remote_ref: None,
            at: "2026-11-22T21:04:05.123Z".to_string(),
        });
        let line = render(
            "DeliveryFailed",
            &serde_json::to_string(&event).unwrap(),
            false,
        );
        assert!(
            line.contains(" DeliveryFailed fhir_lab #7 (message 42) ORU^R01 LAB9 attempt 2: HTTP 503; retry at "),
            "{line}"
        );
        let routed = Event::MessageUnrouted(RoutingEvent {
            listener: "pas".to_string(),
            journal_id: 3,
            control_id: "X1".to_string(),
            message_type: "ADT^A99".to_string(),
            routes: vec![],
            destinations: vec![],
            replay: false,
            stage: None,
            warnings: 0,
            at: "2026-11-22T21:04:05.123Z".to_string(),
        });
        let line = render(
            "MessageUnrouted",
            &serde_json::to_string(&routed).unwrap(),
            false,
        );
        assert!(
            line.ends_with(" MessageUnrouted pas #3 ADT^A99 X1"),
            "{line}"
        );
        let routed = Event::MessageRouted(RoutingEvent {
            listener: "pas".to_string(),
            journal_id: 4,
            control_id: "X2".to_string(),
            message_type: "ADT^A04".to_string(),
            routes: vec!["a04".to_string()],
            destinations: vec!["store".to_string()],
            replay: false,
            stage: None,
            warnings: 2,
            at: "2026-11-22T21:04:05.123Z".to_string(),
        });
        let line = render(
            "MessageRouted",
            &serde_json::to_string(&routed).unwrap(),
            false,
        );
        assert!(
            line.ends_with(
                " MessageRouted pas #4 ADT^A04 X2 -> store (routes a04) [2 mapping warnings]"
            ),
            "{line}"
        );
    }

    #[test]
    fn mesh_lines_name_source_sender_workflow_and_outcome() {
        let event = Event::MeshReceived(MeshEvent {
            source: "mesh_inbox".to_string(),
            message_id: "20200529155357895317_3573F8".to_string(),
            from: "X26ABC2".to_string(),
            workflow_id: "TEST_WORKFLOW".to_string(),
            outcome: "accepted".to_string(),
            journal_id: 43,
            size_bytes: 2048,
            at: "2026-11-22T21:04:05.123Z".to_string(),
        });
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains(r#""event":"MeshReceived""#), "{json}");
        let line = render("MeshReceived", &json, false);
        assert!(
            line.ends_with(" MeshReceived mesh_inbox #43 MESH X26ABC2 TEST_WORKFLOW 20200529155357895317_3573F8 accepted 2048B"),
            "{line}"
        );
        assert_eq!(event.listener(), Some("mesh_inbox"));
        assert_eq!(event.name(), "MeshReceived");
    }
}
