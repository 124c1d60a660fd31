//! The MESH inbox source: polls a MESH mailbox, journals what it downloads,
//! then acknowledges it.
//!
//! Every `poll_interval_secs` (and once at start; at once again after a poll
//! that listed a full page) [`MeshInbox::poll_once`] lists the inbox (every
//! page), and for each message in turn downloads it
//! (every chunk, gunzipped), commits one journal row and, only after the
//! commit, acknowledges it in MESH:
//!
//! | downloaded | journal row | |
//! |---|---|---|
//! | `DATA` whose body is a JSON FHIR Bundle | `accepted`: listener = source id, sender = `mex-From`, control id = MESH message id, type `MESH^<workflow id>`, raw = the body | the pipeline routes it (passthrough routes) |
//! | `DATA` that is not a Bundle | `rejected`, raw = the body, error says why | kept for inspection |
//! | `REPORT` (a MESH delivery report on something we sent) | `rejected` (not a document), type `MESH^REPORT`, error = linked message id, status code and description | logged: warning when the code is not `00` |
//!
//! What it does not do: route or deliver (the pipeline reads accepted rows
//! from the journal and is woken by every commit); send (`destination/`);
//! decide the poll interval for production (MESH asks for at most one poll
//! every 5 minutes; the config decides).
//!
//! Failures: the client cannot be built (a secret missing), MESH refuses the
//! credentials, or MESH cannot be reached — the poll ends with a clear error,
//! logged, and the next poll tries again (with the client rebuilt, so a fixed
//! secret file or environment is picked up). A message that cannot be
//! downloaded for a reason of its own (bad gzip, checksum mismatch) is left in
//! the inbox, logged, and the other messages go on. Nothing is acknowledged
//! that is not in the journal, so nothing is lost.
//!
//! # Invariants
//! - Acknowledge only after the journal commit returned (durable).
//! - Re-downloading a message journaled before (a crash between commit and
//!   acknowledge, or an acknowledge that failed) adds no row: an accepted
//!   document is a duplicate by (sender, control id) in the journal; a
//!   rejected one or a report is looked up first. It is then acknowledged.
//! - Stop is graceful: checked between messages, never in the middle of one.
//! - No document content in logs or events; REPORT fields are MESH metadata.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::delivery::SourceConfig;
use crate::journal::{Committed, Incoming, Journal, JournalError, MessageQuery, Status};
use crate::mesh::{MeshClient, MeshError, MeshMailboxConfig, MessageId, MessageType, Received};
use crate::telemetry::events::{self, Event, EventBus, MeshEvent};
use crate::telemetry::metrics::{ListenerLabel, Metrics};

/// How often the mailbox is validated with a handshake (MESH asks for at
/// least one a day).
const HANDSHAKE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Longest text kept from a "not a Bundle" reason or a REPORT description.
const MAX_REASON: usize = 200;

/// Why a poll ended early. Each names the source and what to do.
#[derive(Debug, thiserror::Error)]
pub enum MeshInboxError {
    /// The MESH client could not be built: a secret is missing, a TLS file
    /// unreadable. Fix the configuration or environment; retried every poll.
    #[error("mesh inbox `{source_id}`: cannot set up the mesh client: {error}")]
    Client {
        source_id: String,
        #[source]
        error: Box<MeshError>,
    },
    /// Listing the inbox failed (MESH down, credentials refused).
    #[error("mesh inbox `{source_id}`: cannot list the inbox: {error}")]
    List {
        source_id: String,
        #[source]
        error: Box<MeshError>,
    },
    /// Downloading a message failed in a way that stops the poll (MESH down,
    /// credentials refused); the message stays in the inbox.
    #[error("mesh inbox `{source_id}`: cannot download message `{message_id}`: {error}")]
    Download {
        source_id: String,
        message_id: String,
        #[source]
        error: Box<MeshError>,
    },
    /// Acknowledging failed; the message is journaled and is acknowledged
    /// on a later poll.
    #[error("mesh inbox `{source_id}`: message `{message_id}` is journaled but could not be acknowledged: {error}")]
    Acknowledge {
        source_id: String,
        message_id: String,
        #[source]
        error: Box<MeshError>,
    },
    /// The journal refused the commit (disk full, writer stopped): nothing
    /// is acknowledged; the message stays in the inbox.
    #[error("mesh inbox `{source_id}`: cannot journal message `{message_id}`, left in the inbox: {error}")]
    Journal {
        source_id: String,
        message_id: String,
        #[source]
        error: Box<JournalError>,
    },
}

impl MeshInboxError {
    /// Whether the rest of this poll is pointless (MESH unreachable, the
    /// credentials or the journal broken) rather than a problem of one message.
    fn stops_poll(&self) -> bool {
        match self {
            MeshInboxError::Client { .. }
            | MeshInboxError::List { .. }
            | MeshInboxError::Journal { .. } => true,
            MeshInboxError::Download { error, .. } | MeshInboxError::Acknowledge { error, .. } => {
                error.is_retryable() || error.is_auth()
            }
        }
    }

    /// Whether MESH refused our credentials (the client is rebuilt, so new
    /// secrets are read, before the next poll).
    fn is_auth(&self) -> bool {
        match self {
            MeshInboxError::Client { .. } | MeshInboxError::Journal { .. } => false,
            MeshInboxError::List { error, .. }
            | MeshInboxError::Download { error, .. }
            | MeshInboxError::Acknowledge { error, .. } => error.is_auth(),
        }
    }
}

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollSummary {
    /// Message ids the inbox listed.
    pub listed: usize,
    /// Bundles journaled as accepted documents.
    pub accepted: usize,
    /// Messages journaled before (re-downloaded), acknowledged now.
    pub duplicates: usize,
    /// Bodies that are not a FHIR Bundle, journaled as rejected.
    pub rejected: usize,
    /// MESH REPORT messages journaled.
    pub reports: usize,
    /// Messages acknowledged (they left the inbox).
    pub acknowledged: usize,
    /// Messages gone before we got to them (acknowledged elsewhere, expired).
    pub gone: usize,
    /// Messages left in the inbox after a problem of their own (logged).
    pub failed: usize,
}

/// How one message was journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Duplicate,
    Rejected,
    Report,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected => "rejected",
            Outcome::Report => "report",
        }
    }
}

/// Where the MESH client comes from.
#[derive(Debug)]
enum ClientSource {
    /// Built from the mailbox config (secrets from env or files), rebuilt
    /// after an authentication failure.
    Config(Box<MeshMailboxConfig>),
    /// Given by the caller (secrets it already holds); never rebuilt.
    Fixed(Arc<MeshClient>),
}

/// One `[sources.<id>]` of kind `mesh_inbox`.
#[derive(Debug)]
pub struct MeshInbox {
    id: String,
    poll_interval: Duration,
    /// Ids asked for per inbox page: a poll that lists at least this many
    /// may have left more behind, so the next one starts at once.
    page_size: usize,
    source: ClientSource,
    client: Option<Arc<MeshClient>>,
    last_handshake: Option<std::time::Instant>,
    journal: Journal,
    events: EventBus,
    metrics: Arc<Metrics>,
}

impl MeshInbox {
    /// A source polling `mailbox` (the `[mesh.mailboxes.<id>]` it names).
    /// Nothing is contacted yet: the client is built at the first poll, so a
    /// missing secret is a logged, retried error rather than a failed start.
    pub fn new(
        id: &str,
        config: &SourceConfig,
        mailbox: MeshMailboxConfig,
        journal: Journal,
        events: EventBus,
        metrics: Arc<Metrics>,
    ) -> MeshInbox {
        MeshInbox {
            id: id.to_string(),
            poll_interval: Duration::from_secs(config.poll_interval_secs.max(1)),
            page_size: usize::try_from(mailbox.inbox_page_size).unwrap_or(usize::MAX),
            source: ClientSource::Config(Box::new(mailbox)),
            client: None,
            last_handshake: None,
            journal,
            events,
            metrics,
        }
    }

    /// A source using a client the caller built (e.g. with secrets it holds).
    pub fn with_client(
        id: &str,
        poll_interval: Duration,
        client: Arc<MeshClient>,
        journal: Journal,
        events: EventBus,
        metrics: Arc<Metrics>,
    ) -> MeshInbox {
        MeshInbox {
            id: id.to_string(),
            poll_interval: poll_interval.max(Duration::from_millis(1)),
            page_size: usize::try_from(MeshMailboxConfig::new("", "").inbox_page_size)
                .unwrap_or(usize::MAX),
            source: ClientSource::Fixed(Arc::clone(&client)),
            client: Some(client),
            last_handshake: None,
            journal,
            events,
            metrics,
        }
    }

    /// The source id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Polls now and then every `poll_interval` until `stop`; errors are
    /// logged and the next poll tries again. Never panics, never returns early.
    pub async fn run(mut self, stop: CancellationToken) {
        info!(source = %self.id, poll_interval_secs = self.poll_interval.as_secs(), "mesh inbox source started");
        loop {
            let mut again = false;
            match self.poll_once(&stop).await {
                Ok(summary) => {
                    // A full page may mean more are waiting (MESH's advice:
                    // poll again at once while pages come back full).
                    again = summary.listed >= self.page_size && summary.acknowledged > 0;
                    if summary.listed > 0 {
                        info!(source = %self.id, listed = summary.listed, accepted = summary.accepted,
                            duplicates = summary.duplicates, rejected = summary.rejected,
                            reports = summary.reports, acknowledged = summary.acknowledged,
                            gone = summary.gone, failed = summary.failed, "mesh inbox polled");
                    } else {
                        debug!(source = %self.id, "mesh inbox polled: empty");
                    }
                }
                Err(err) => {
                    error!(source = %self.id, error = %err, retry_in_secs = self.poll_interval.as_secs(),
                        "mesh inbox poll failed; retrying at the next poll");
                }
            }
            if stop.is_cancelled() {
                break;
            }
            if again {
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
        }
        info!(source = %self.id, "mesh inbox source stopped");
    }

    /// One poll: list the whole inbox, then journal and acknowledge each
    /// message in turn, stopping between messages once `stop` is cancelled.
    /// `Err` when the poll could not go on (see [`MeshInboxError`]); problems
    /// of single messages are logged and counted in [`PollSummary::failed`].
    pub async fn poll_once(
        &mut self,
        stop: &CancellationToken,
    ) -> Result<PollSummary, MeshInboxError> {
        let result = self.poll_inner(stop).await;
        if let Err(err) = &result {
            if err.is_auth() {
                // Read the secrets again next time: they may have been fixed.
                if let ClientSource::Config(_) = self.source {
                    self.client = None;
                    self.last_handshake = None;
                }
            }
        }
        result
    }

    async fn poll_inner(
        &mut self,
        stop: &CancellationToken,
    ) -> Result<PollSummary, MeshInboxError> {
        let client = self.client()?;
        self.handshake_if_due(&client).await;
        let ids = client.inbox().await.map_err(|error| MeshInboxError::List {
            source_id: self.id.clone(),
            error: Box::new(error),
        })?;
        let mut summary = PollSummary {
            listed: ids.len(),
            ..PollSummary::default()
        };
        for message_id in &ids {
            if stop.is_cancelled() {
                info!(source = %self.id, left = ids.len() - summary_done(&summary),
                    "mesh inbox: stopping between messages; the rest stay in the inbox");
                break;
            }
            match self.receive(&client, message_id).await {
                Ok(Some(outcome)) => {
                    match outcome {
                        Outcome::Accepted => summary.accepted += 1,
                        Outcome::Duplicate => summary.duplicates += 1,
                        Outcome::Rejected => summary.rejected += 1,
                        Outcome::Report => summary.reports += 1,
                    }
                    summary.acknowledged += 1;
                }
                Ok(None) => summary.gone += 1,
                Err(err) if err.stops_poll() => return Err(err),
                Err(err) => {
                    warn!(source = %self.id, message_id = %message_id, error = %err,
                        "mesh inbox: message left in the inbox; retried at the next poll");
                    summary.failed += 1;
                }
            }
        }
        Ok(summary)
    }

    /// The client, built from the config if there is none yet.
    fn client(&mut self) -> Result<Arc<MeshClient>, MeshInboxError> {
        if let Some(client) = &self.client {
            return Ok(Arc::clone(client));
        }
        let client =
            match &self.source {
                ClientSource::Fixed(client) => Arc::clone(client),
                ClientSource::Config(config) => Arc::new(MeshClient::new(config).map_err(
                    |error| MeshInboxError::Client {
                        source_id: self.id.clone(),
                        error: Box::new(error),
                    },
                )?),
            };
        self.client = Some(Arc::clone(&client));
        Ok(client)
    }

    /// Validates the mailbox once a day; a failure is logged only (the inbox
    /// listing right after says whether MESH can be used).
    async fn handshake_if_due(&mut self, client: &MeshClient) {
        if self
            .last_handshake
            .is_some_and(|at| at.elapsed() < HANDSHAKE_EVERY)
        {
            return;
        }
        match client.handshake().await {
            Ok(()) => {
                debug!(source = %self.id, mailbox = client.mailbox(), "mesh handshake ok");
                self.last_handshake = Some(std::time::Instant::now());
            }
            Err(err) => {
                warn!(source = %self.id, mailbox = client.mailbox(), error = %err, "mesh handshake failed")
            }
        }
    }

    /// Downloads, journals and acknowledges one message. `Ok(None)` when it
    /// was gone before we downloaded it.
    async fn receive(
        &self,
        client: &MeshClient,
        message_id: &MessageId,
    ) -> Result<Option<Outcome>, MeshInboxError> {
        let received = match client.download(message_id).await {
            Ok(received) => received,
            Err(MeshError::NotFound { .. } | MeshError::Gone { .. }) => {
                debug!(source = %self.id, message_id = %message_id, "mesh inbox: message gone before download");
                return Ok(None);
            }
            Err(error) => {
                return Err(MeshInboxError::Download {
                    source_id: self.id.clone(),
                    message_id: message_id.to_string(),
                    error: Box::new(error),
                })
            }
        };
        let headers = &received.headers;
        let (row, outcome) = self.journal_row(message_id, &received);
        let size = row.raw.len();
        let journal_err = |error| MeshInboxError::Journal {
            source_id: self.id.clone(),
            message_id: message_id.to_string(),
            error: Box::new(error),
        };
        // An accepted row is deduplicated by the journal itself; a rejected
        // row or a report is not, so look for an earlier one first.
        let earlier = if outcome == Outcome::Accepted {
            None
        } else {
            self.journaled_before(&row.sender, &row.control_id)
                .await
                .map_err(journal_err)?
        };
        let (journal_id, outcome) = match earlier {
            Some(id) => (id, Outcome::Duplicate),
            None => {
                let committed = self.journal.commit(vec![row]).await.map_err(journal_err)?;
                match committed.first() {
                    Some(Committed::Stored { id }) => (*id, outcome),
                    Some(Committed::Duplicate { id, .. }) => (*id, Outcome::Duplicate),
                    // The journal answers once per row given; one was given.
                    None => {
                        return Err(journal_err(JournalError::WriterStopped));
                    }
                }
            }
        };
        self.count(outcome);
        let event = MeshEvent {
            source: self.id.clone(),
            message_id: message_id.to_string(),
            from: headers.from.clone(),
            workflow_id: headers.workflow_id.clone(),
            outcome: outcome.as_str().to_string(),
            journal_id,
            size_bytes: size,
            at: events::now(),
        };
        if outcome == Outcome::Report {
            self.log_report(&received);
        } else {
            info!(source = %self.id, message_id = %message_id, from = %headers.from,
                workflow = %headers.workflow_id, journal_id, bytes = size,
                chunks = headers.chunk_count, outcome = outcome.as_str(), "mesh message received");
        }
        self.events.publish(Event::MeshReceived(event.clone()));

        match client.acknowledge(message_id).await {
            Ok(()) | Err(MeshError::Gone { .. } | MeshError::NotFound { .. }) => {}
            Err(error) => {
                return Err(MeshInboxError::Acknowledge {
                    source_id: self.id.clone(),
                    message_id: message_id.to_string(),
                    error: Box::new(error),
                })
            }
        }
        debug!(source = %self.id, message_id = %message_id, journal_id, "mesh message acknowledged");
        self.events.publish(Event::MeshAcknowledged(MeshEvent {
            at: events::now(),
            ..event
        }));
        Ok(Some(outcome))
    }

    /// The journal row for a downloaded message and how it is classified.
    fn journal_row(&self, message_id: &MessageId, received: &Received) -> (Incoming, Outcome) {
        let headers = &received.headers;
        let mut row = Incoming {
            listener: self.id.clone(),
            peer: format!("mesh:{}", headers.from),
            received_at: jiff::Timestamp::now(),
            sender: headers.from.clone(),
            control_id: message_id.to_string(),
            message_type: format!("MESH^{}", headers.workflow_id),
            version: String::new(),
            status: Status::Accepted,
            ack_code: None,
            ack: None,
            error: None,
            raw: received.body.clone(),
        };
        let outcome = match &headers.message_type {
            MessageType::Report => {
                row.status = Status::Rejected;
                row.message_type = "MESH^REPORT".to_string();
                row.error = Some(report_text(received));
                Outcome::Report
            }
            MessageType::Data | MessageType::Other(_) => match bundle_problem(&received.body) {
                None => Outcome::Accepted,
                Some(problem) => {
                    row.status = Status::Rejected;
                    row.error = Some(format!(
                        "mesh message from `{}` is not a FHIR Bundle: {problem}",
                        headers.from
                    ));
                    Outcome::Rejected
                }
            },
        };
        (row, outcome)
    }

    /// The id of a row this source journaled earlier for (sender, control id).
    async fn journaled_before(
        &self,
        sender: &str,
        control_id: &str,
    ) -> Result<Option<i64>, JournalError> {
        let rows = self
            .journal
            .search(MessageQuery {
                control_id: Some(control_id.to_string()),
                limit: Some(crate::journal::MAX_LIMIT),
                ..MessageQuery::default()
            })
            .await?;
        Ok(rows
            .iter()
            .find(|r| r.listener == self.id && r.sender == sender && r.control_id == control_id)
            .map(|r| r.id))
    }

    fn count(&self, outcome: Outcome) {
        let label = ListenerLabel {
            listener: self.id.clone(),
        };
        self.metrics.received.get_or_create(&label).inc();
        match outcome {
            Outcome::Accepted | Outcome::Report => {}
            Outcome::Duplicate => {
                self.metrics.duplicates.get_or_create(&label).inc();
            }
            Outcome::Rejected => {
                self.metrics.rejected.get_or_create(&label).inc();
            }
        }
    }

    /// One line per REPORT: MESH metadata only (ids, code, description).
    fn log_report(&self, received: &Received) {
        let h = &received.headers;
        let code = h.status_code.as_deref().unwrap_or("");
        let linked = h.linked_message_id.as_deref().unwrap_or("");
        let description = h.status_description.as_deref().unwrap_or("");
        if code.is_empty() || code == "00" {
            info!(source = %self.id, message_id = %h.message_id, linked_message_id = linked,
                status_code = code, local_id = h.local_id.as_deref().unwrap_or(""),
                "mesh report received");
        } else {
            warn!(source = %self.id, message_id = %h.message_id, linked_message_id = linked,
                status_code = code, local_id = h.local_id.as_deref().unwrap_or(""),
                description = %truncate(description), "mesh report: a message we sent was not delivered");
        }
    }
}

/// Messages handled so far in a poll (for the "stopping" log line).
fn summary_done(s: &PollSummary) -> usize {
    s.accepted + s.duplicates + s.rejected + s.reports + s.gone + s.failed
}

/// The journal's error text for a REPORT.
fn report_text(received: &Received) -> String {
    let h = &received.headers;
    format!(
        "mesh report (not a document) on message `{}`{}: status code {}{}",
        h.linked_message_id.as_deref().unwrap_or("unknown"),
        h.local_id
            .as_deref()
            .map(|l| format!(" (local id `{l}`)"))
            .unwrap_or_default(),
        h.status_code.as_deref().unwrap_or("none"),
        h.status_description
            .as_deref()
            .map(|d| format!(", {}", truncate(d)))
            .unwrap_or_default()
    )
}

/// Why `body` is not a JSON FHIR Bundle; `None` when it is one. The reason
/// never quotes the body (only a `resourceType` value, which is not patient
/// data).
fn bundle_problem(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return Some("the body is empty".to_string());
    }
    let json: Json = match serde_json::from_slice(body) {
        Ok(json) => json,
        Err(e) => return Some(format!("not JSON ({e})")),
    };
    match json.get("resourceType") {
        Some(Json::String(kind)) if kind == "Bundle" => None,
        Some(Json::String(kind)) => Some(format!(
            "resourceType is `{}`, expected `Bundle`",
            truncate(kind)
        )),
        Some(_) => Some("resourceType is not a string, expected `Bundle`".to_string()),
        None if json.is_object() => Some("no resourceType, expected `Bundle`".to_string()),
        None => Some("not a JSON object, expected a FHIR Bundle".to_string()),
    }
}

fn truncate(text: &str) -> String {
    if text.len() <= MAX_REASON {
        return text.to_string();
    }
    let mut end = MAX_REASON;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, expected: Option<&str>) {
        assert_eq!(
            bundle_problem(body.as_bytes()).as_deref(),
            expected,
            "{body}"
        );
    }

    #[test]
    fn what_counts_as_a_bundle() {
        check(r#"{"resourceType":"Bundle","type":"transaction"}"#, None);
        check(
            r#"{"resourceType":"Patient"}"#,
            Some("resourceType is `Patient`, expected `Bundle`"),
        );
        check(
            r#"{"resourceType":7}"#,
            Some("resourceType is not a string, expected `Bundle`"),
        );
        check(
            r#"{"entry":[]}"#,
            Some("no resourceType, expected `Bundle`"),
        );
        check(
            r#"["Bundle"]"#,
            Some("not a JSON object, expected a FHIR Bundle"),
        );
        check("", Some("the body is empty"));
        let not_json = bundle_problem(b"MSH|^~\\&|PAS|RAL").unwrap();
        assert!(not_json.starts_with("not JSON ("), "{not_json}");
        assert!(
            !not_json.contains("PAS"),
            "never quotes the body: {not_json}"
        );
        let long = format!(r#"{{"resourceType":"{}"}}"#, "x".repeat(500));
        assert!(bundle_problem(long.as_bytes()).unwrap().len() < 300);
    }
}
