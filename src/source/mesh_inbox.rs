//! The MESH inbox source: polls a MESH mailbox, journals what it downloads,
//! then acknowledges it.
//!
//! Every `poll_interval_secs` (and once at start; at once again after a poll
//! that listed a full page) [`MeshInbox::poll_once`] lists the inbox (every
//! page), and for each message in turn downloads it
//! (every chunk, gunzipped), commits its journal rows and, only after the
//! commit, acknowledges it in MESH:
//!
//! | downloaded | journal row | |
//! |---|---|---|
//! | `DATA` whose body is a JSON FHIR Bundle | `accepted`: listener = source id, sender = `mex-From`, control id = MESH message id, type `MESH^<workflow id>`, raw = the body | the pipeline routes it (passthrough routes) |
//! | `DATA` that is HL7 v2 (`MSH`, or an `FHS`/`BHS` batch) | a row per message, as an MLLP listener makes it: listener = source id, sender = MSH-3^MSH-4, control id = MSH-10, type = MSH-9, raw = that message's bytes; `accepted`, or `rejected` with the reason when its header is unusable (then sender = `mex-From`, control id = the MESH message id, `/<n>` in a batch) | the pipeline routes each by its header, through routes naming this source |
//! | `DATA` that is neither | `rejected`, raw = the body, error says why | kept for inspection |
//! | `REPORT` (a MESH delivery report on something we sent) | `rejected` (not a document), type `MESH^REPORT`, error = linked message id, status code and description | logged: warning when the code is not `00`; then the delivery that sent the linked message (its `remote_ref`) is dead-lettered with the reason: the recipient never got it (`junction replay <message> --destination <d>` sends it again) |
//!
//! Every row's peer is `mesh:<mex-From>/<MESH message id>`: a message is
//! found by the MESH id it came in (`remote_ref` in a message search).
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
//! downloaded (a chunk MESH will not serve, an HTTP 500 for that message) is
//! left in the inbox, logged, and the other messages go on; three such
//! failures in a row end the poll (MESH is down, not one message). A message
//! that failed is tried after the others at the next polls, so a few that
//! never download cannot hold up those behind them. Under a lease (several
//! nodes), the lease is checked before each message: a poll whose lease
//! session ended stops, as another node may hold it now. One whose content cannot be used as sent (a chunk
//! labelled gzip that is not, a checksum that does not match) is journaled as
//! rejected with its bytes and the reason, and acknowledged: downloading it
//! again would give the same bytes. Nothing is acknowledged that is not in the
//! journal, so nothing is lost.
//!
//! # Invariants
//! - Acknowledge only after the journal commit returned (durable).
//! - Re-downloading a message journaled before (a crash between commit and
//!   acknowledge, or an acknowledge that failed) adds no row: an accepted
//!   document or HL7 message is a duplicate by (sender, control id) in the
//!   journal (an HL7 message sent again in another MESH message too); a
//!   rejected one or a report is looked up first. It is then acknowledged.
//! - All the rows of one MESH message are committed together, before it is
//!   acknowledged.
//! - Of the nodes sharing a record store, one alone journals a message: the
//!   one whose claim it is (`taking`, by its journal's id). It says when the
//!   message is journaled (`taken`); any node may then acknowledge it, none
//!   journals it again. A claim of another node's that is not `taken` is left
//!   alone (only that node's journal can tell whether it has the message); the
//!   claimer finds its own claim again at its next poll and its journal
//!   decides. The claim is forgotten once the message is acknowledged, gone,
//!   or was not journaled.
//! - Stop is graceful: checked between messages, never in the middle of one.
//! - No document content in logs or events; REPORT fields are MESH metadata.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::delivery::SourceConfig;
use crate::hl7;
use crate::journal::{
    Committed, DeliveryFilter, DeliveryStatus, Incoming, Journal, JournalError, MessageQuery,
    QueueOp, QueueOutcome, Status,
};
use crate::mesh::{MeshClient, MeshError, MeshMailboxConfig, MessageId, MessageType, Received};
use crate::store::MeshClaim;
use crate::telemetry::events::{self, DeliveryEvent, Event, EventBus, MeshEvent};
use crate::telemetry::metrics::{
    DeliveryLabel, ListenerLabel, Metrics, SourceLabel, SourcePollLabel,
};

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
    /// The lease that lets one node alone poll this mailbox could not be
    /// asked for (the shared PostgreSQL store is down): not polled, so no two
    /// nodes take one message; the messages wait in MESH.
    #[error("mesh inbox `{source_id}`: cannot ask the record store for the inbox's lease, not polled: {error}")]
    Lease {
        source_id: String,
        #[source]
        error: Box<crate::store::StoreError>,
    },
    /// The lease was lost during the poll (its session ended: the server
    /// restarted, or an administrator ended it): the poll stops before the
    /// next message, as another node may be polling now; the messages left
    /// wait in MESH.
    #[error("mesh inbox `{source_id}`: the inbox's lease was lost during the poll (its database session ended); the poll stops, the {left} message(s) not taken stay in the inbox")]
    LeaseLost { source_id: String, left: usize },
    /// The shared record store could not be asked or told about a message's
    /// claim (PostgreSQL down): the message stays in the inbox, and the poll
    /// ends.
    #[error("mesh inbox `{source_id}`: cannot {what} message `{message_id}` in the record store, left in the inbox: {error}")]
    Claim {
        source_id: String,
        message_id: String,
        what: &'static str,
        #[source]
        error: Box<crate::store::StoreError>,
    },
    /// Another node sharing the record store claimed the message and has not
    /// said it journaled it: it is at work on it, or it stopped before it
    /// could say so, and only it can tell from its own journal (when it polls
    /// again). Left in the inbox meanwhile.
    #[error("mesh inbox `{source_id}`: message `{message_id}` is claimed by another node ({node}), which has not said it journaled it: left in the inbox for it")]
    ClaimedElsewhere {
        source_id: String,
        message_id: String,
        node: String,
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

/// Claims older than this are forgotten at each poll: MESH expires a message
/// not downloaded after five days, so its claim has long been moot.
const CLAIMS_KEPT_DAYS: i32 = 30;

/// Retryable failures of consecutive messages that end a poll: MESH is down
/// rather than one message unfetchable.
const FAILURES_IN_A_ROW: usize = 3;

impl MeshInboxError {
    /// Whether the rest of this poll is pointless (MESH unreachable, the
    /// credentials or the journal broken) rather than a problem of one message.
    fn stops_poll(&self) -> bool {
        match self {
            MeshInboxError::Client { .. }
            | MeshInboxError::List { .. }
            | MeshInboxError::Lease { .. }
            | MeshInboxError::LeaseLost { .. }
            | MeshInboxError::Claim { .. }
            | MeshInboxError::Journal { .. } => true,
            MeshInboxError::ClaimedElsewhere { .. } => false,
            // one message's download or acknowledge failing (a chunk MESH
            // answers 500 for) is that message's: the others go on, unless
            // MESH refuses the credentials (every one would fail alike)
            MeshInboxError::Download { error, .. } | MeshInboxError::Acknowledge { error, .. } => {
                error.is_auth()
            }
        }
    }

    /// Whether trying again later may succeed (MESH busy or unreachable).
    fn is_retryable(&self) -> bool {
        match self {
            MeshInboxError::Download { error, .. } | MeshInboxError::Acknowledge { error, .. } => {
                error.is_retryable()
            }
            _ => false,
        }
    }

    /// Whether MESH refused our credentials (the client is rebuilt, so new
    /// secrets are read, before the next poll).
    fn is_auth(&self) -> bool {
        match self {
            MeshInboxError::Client { .. }
            | MeshInboxError::Lease { .. }
            | MeshInboxError::LeaseLost { .. }
            | MeshInboxError::Claim { .. }
            | MeshInboxError::ClaimedElsewhere { .. }
            | MeshInboxError::Journal { .. } => false,
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
    /// Messages journaled as accepted: Bundles, or HL7 v2 of which at least
    /// one message was new and accepted.
    pub accepted: usize,
    /// Messages journaled before (re-downloaded), acknowledged now.
    pub duplicates: usize,
    /// Bodies that are neither a FHIR Bundle nor usable HL7 v2, journaled as
    /// rejected.
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

/// What became of a claimed message ([`MeshInbox::claim_step`]).
#[derive(Debug, Clone, Copy)]
enum ClaimStep {
    /// Journaled: only its acknowledgement is left.
    Taken,
    /// Acknowledged, gone, or not journaled: the claim is forgotten.
    Release,
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
    /// The largest message read, once decompressed (`max_message_bytes`).
    max_message_bytes: usize,
    /// The mailboxes and workflow ids taken (empty: any).
    senders: Vec<String>,
    workflows: Vec<String>,
    /// Ids asked for per inbox page: a poll that lists at least this many
    /// may have left more behind, so the next one starts at once.
    page_size: usize,
    source: ClientSource,
    client: Option<Arc<MeshClient>>,
    last_handshake: Option<std::time::Instant>,
    journal: Journal,
    events: EventBus,
    metrics: Arc<Metrics>,
    /// The store the engine nodes share, whose lease on this mailbox a poll
    /// holds (`None`: polled without one, as one node alone).
    lease: Option<crate::store::RecordStore>,
    /// What the lease is on: the MESH mailbox id, the same on every node.
    lease_key: String,
    /// Messages whose receiving failed at an earlier poll (tried last).
    failing: std::collections::HashSet<MessageId>,
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
            max_message_bytes: config.max_message_bytes.max(1),
            senders: config.senders.clone(),
            workflows: config.workflows.clone(),
            page_size: usize::try_from(mailbox.inbox_page_size).unwrap_or(usize::MAX),
            lease_key: format!("mesh-inbox:{}", mailbox.mailbox.trim().to_ascii_uppercase()),
            source: ClientSource::Config(Box::new(mailbox)),
            client: None,
            last_handshake: None,
            journal,
            events,
            metrics,
            lease: None,
            failing: std::collections::HashSet::new(),
        }
        .with_series()
    }

    /// At most `bytes` a message, once decompressed (the config's
    /// `max_message_bytes`).
    pub fn with_max_message_bytes(mut self, bytes: usize) -> MeshInbox {
        self.max_message_bytes = bytes.max(1);
        self
    }

    /// Only messages from these mailboxes under these workflow ids (the
    /// config's `senders` and `workflows`; empty: any).
    pub fn with_allowed(mut self, senders: Vec<String>, workflows: Vec<String>) -> MeshInbox {
        self.senders = senders;
        self.workflows = workflows;
        self
    }

    /// Why a message with these headers is not taken (`None`: it is).
    fn refused(&self, headers: &crate::mesh::ReceivedHeaders) -> Option<String> {
        let listed = |list: &[String], v: &str| {
            list.is_empty() || list.iter().any(|x| x.eq_ignore_ascii_case(v.trim()))
        };
        // a REPORT comes from MESH itself (its sender is empty or the
        // system's): about a message this node sent, never refused as a sender
        if headers.message_type == MessageType::Report {
            return None;
        }
        if !listed(&self.senders, &headers.from) {
            return Some(format!(
                "mesh message from mailbox `{}`, which is not among the source's senders ({}): not taken",
                headers.from,
                self.senders.join(", ")
            ));
        }
        if !listed(&self.workflows, &headers.workflow_id) {
            return Some(format!(
                "mesh message under workflow `{}`, which is not among the source's workflows ({}): not taken",
                headers.workflow_id,
                self.workflows.join(", ")
            ));
        }
        None
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
            max_message_bytes: crate::delivery::SourceConfig::DEFAULT_MAX_MESSAGE_BYTES,
            senders: Vec::new(),
            workflows: Vec::new(),
            page_size: usize::try_from(MeshMailboxConfig::new("", "").inbox_page_size)
                .unwrap_or(usize::MAX),
            source: ClientSource::Fixed(Arc::clone(&client)),
            client: Some(client),
            last_handshake: None,
            journal,
            events,
            metrics,
            lease: None,
            lease_key: format!("mesh-inbox:{id}"),
            failing: std::collections::HashSet::new(),
        }
        .with_series()
    }

    /// Each poll holds `store`'s lease on this mailbox (its MESH id): of the
    /// engine nodes sharing one PostgreSQL store and configured alike, one
    /// polls at a time, so no MESH message is journaled and processed by two.
    /// A node that finds the lease held skips that poll.
    pub fn with_lease(mut self, store: crate::store::RecordStore) -> MeshInbox {
        self.lease = Some(store);
        self
    }

    /// [`Self::with_lease`] on `key` rather than the mailbox's id (tests).
    pub fn with_lease_key(mut self, key: &str) -> MeshInbox {
        self.lease_key = format!("mesh-inbox:{key}");
        self
    }

    /// Its poll metrics exported from the start (the last good poll at 0, the
    /// counts at 0): an alert on them fires also for an inbox that has never
    /// polled successfully since the engine started.
    fn with_series(self) -> MeshInbox {
        for outcome in ["ok", "failed"] {
            self.metrics
                .source_polls
                .get_or_create(&SourcePollLabel {
                    source: self.id.clone(),
                    outcome: outcome.to_string(),
                })
                .inc_by(0);
        }
        self.metrics
            .source_last_success
            .get_or_create(&SourceLabel {
                source: self.id.clone(),
            })
            .set(0);
        self
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
        let lease = match self.take_lease().await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                debug!(source = %self.id, "mesh inbox: another engine node is polling this mailbox; not polled");
                self.count_poll(true);
                return Ok(PollSummary::default());
            }
            Err(err) => {
                self.count_poll(false);
                return Err(err);
            }
        };
        let lease = lease.map(Arc::new);
        let result = self.poll_inner(stop, lease.as_ref()).await;
        // (a PostgreSQL client's drop blocks)
        if let Some(lease) = lease {
            let _ = tokio::task::spawn_blocking(move || drop(lease)).await;
        }
        self.count_poll(result.is_ok());
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

    /// The lease on this mailbox for one poll: `Ok(None)` when another node
    /// holds it, `Ok(Some(None))` when there is no store to ask.
    async fn take_lease(&self) -> Result<Option<Option<crate::store::Lease>>, MeshInboxError> {
        let Some(store) = self.lease.clone() else {
            return Ok(Some(None));
        };
        let key = self.lease_key.clone();
        let lease_err = |error| MeshInboxError::Lease {
            source_id: self.id.clone(),
            error: Box::new(error),
        };
        match tokio::task::spawn_blocking(move || store.try_lease(&key)).await {
            Ok(Ok(lease)) => Ok(lease.map(Some)),
            Ok(Err(error)) => Err(lease_err(error)),
            Err(_) => Err(lease_err(crate::store::StoreError::Internal(
                "the lease's thread failed",
            ))),
        }
    }

    async fn poll_inner(
        &mut self,
        stop: &CancellationToken,
        lease: Option<&Arc<crate::store::Lease>>,
    ) -> Result<PollSummary, MeshInboxError> {
        let client = self.client()?;
        self.handshake_if_due(&client).await;
        self.forget_old_claims().await;
        let mut ids = client.inbox().await.map_err(|error| MeshInboxError::List {
            source_id: self.id.clone(),
            error: Box::new(error),
        })?;
        // messages that would not download at an earlier poll go last, so
        // a few that never will cannot hold up the ones behind them
        self.failing.retain(|id| ids.contains(id));
        ids.sort_by_key(|id| self.failing.contains(id));
        let mut summary = PollSummary {
            listed: ids.len(),
            ..PollSummary::default()
        };
        // MESH unreachable fails every message alike: after this many in a
        // row the poll ends (the rest are tried at the next one)
        let mut failed_in_a_row = 0;
        for message_id in &ids {
            if stop.is_cancelled() {
                info!(source = %self.id, left = ids.len() - summary_done(&summary),
                    "mesh inbox: stopping between messages; the rest stay in the inbox");
                break;
            }
            // the lease still held: a session the server ended has lost it,
            // and another node may be polling now
            if let Some(lease) = lease.filter(|l| l.is_shared()) {
                let lease = Arc::clone(lease);
                let held = tokio::task::spawn_blocking(move || lease.still_held())
                    .await
                    .unwrap_or(false);
                if !held {
                    return Err(MeshInboxError::LeaseLost {
                        source_id: self.id.clone(),
                        left: ids.len() - summary_done(&summary),
                    });
                }
            }
            let received = self.receive(&client, message_id).await;
            if received.is_err() {
                self.failing.insert(message_id.clone());
            } else {
                self.failing.remove(message_id);
            }
            match received {
                Ok(Some(outcome)) => {
                    match outcome {
                        Outcome::Accepted => summary.accepted += 1,
                        Outcome::Duplicate => summary.duplicates += 1,
                        Outcome::Rejected => summary.rejected += 1,
                        Outcome::Report => summary.reports += 1,
                    }
                    summary.acknowledged += 1;
                    failed_in_a_row = 0;
                }
                Ok(None) => summary.gone += 1,
                Err(err) if err.stops_poll() => return Err(err),
                Err(err) if err.is_retryable() && failed_in_a_row + 1 >= FAILURES_IN_A_ROW => {
                    return Err(err)
                }
                Err(err) => {
                    if err.is_retryable() {
                        failed_in_a_row += 1;
                    }
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
        // Of the nodes sharing a record store, the one whose claim this is
        // journals the message; the others leave it, or acknowledge it once
        // it is journaled.
        match self.claim(message_id).await? {
            MeshClaim::Fresh => {}
            MeshClaim::Taken => return self.acknowledge_journaled(client, message_id).await,
            MeshClaim::Taking { node } if node == self.journal.node_id() => {
                // this node claimed it and stopped (or failed) before saying
                // it journaled it: its journal tells
                let found = self.journaled_from(message_id).await.map_err(|error| {
                    MeshInboxError::Journal {
                        source_id: self.id.clone(),
                        message_id: message_id.to_string(),
                        error: Box::new(error),
                    }
                })?;
                if found {
                    self.claim_step(message_id, ClaimStep::Taken).await?;
                    return self.acknowledge_journaled(client, message_id).await;
                }
            }
            MeshClaim::Taking { node } => {
                return Err(MeshInboxError::ClaimedElsewhere {
                    source_id: self.id.clone(),
                    message_id: message_id.to_string(),
                    node: if node.is_empty() {
                        "claiming it now".to_string()
                    } else {
                        node
                    },
                })
            }
        }
        let received = match client
            .download_at_most(message_id, self.max_message_bytes)
            .await
        {
            Ok(received) => received,
            Err(MeshError::NotFound { .. } | MeshError::Gone { .. }) => {
                debug!(source = %self.id, message_id = %message_id, "mesh inbox: message gone before download");
                self.release_claim(message_id).await;
                return Ok(None);
            }
            Err(error) => {
                // not journaled: whoever polls next may take it
                self.release_claim(message_id).await;
                return Err(MeshInboxError::Download {
                    source_id: self.id.clone(),
                    message_id: message_id.to_string(),
                    error: Box::new(error),
                });
            }
        };
        let headers = &received.headers;
        let (rows, outcome) = self.journal_rows(message_id, &received);
        let messages = rows.len();
        let size = received.body.len();
        let journal_err = |error| MeshInboxError::Journal {
            source_id: self.id.clone(),
            message_id: message_id.to_string(),
            error: Box::new(error),
        };
        // An accepted row is deduplicated by the journal itself; a rejected
        // row or a report is not, so look for an earlier one first.
        let mut fresh = Vec::with_capacity(rows.len());
        let mut before = Vec::new();
        for row in rows {
            if row.status == Status::Accepted {
                fresh.push(row);
                continue;
            }
            match self
                .journaled_before(&row.sender, &row.control_id)
                .await
                .map_err(journal_err)?
            {
                Some(id) => before.push(id),
                None => fresh.push(row),
            }
        }
        let fresh_accepted: Vec<bool> = fresh
            .iter()
            .map(|row| row.status == Status::Accepted)
            .collect();
        let committed = if fresh.is_empty() {
            Vec::new()
        } else {
            self.journal.commit(fresh).await.map_err(journal_err)?
        };
        // The journal answers once per row given.
        if committed.len() != fresh_accepted.len() {
            return Err(journal_err(JournalError::WriterStopped));
        }
        let stored: Vec<(i64, bool)> = committed
            .iter()
            .zip(&fresh_accepted)
            .filter_map(|(c, accepted)| match c {
                Committed::Stored { id } => Some((*id, *accepted)),
                Committed::Duplicate { .. } => None,
            })
            .collect();
        // A resend whose content differs from the original's (a corrected
        // result under a reused control id): kept as a rejected row, not
        // processed. Said as the MLLP listener says it, not as a re-download.
        let differing: Vec<(i64, i64)> = committed
            .iter()
            .filter_map(|c| match c {
                Committed::Duplicate {
                    id,
                    differing: Some(kept),
                    ..
                } => Some((*id, *kept)),
                _ => None,
            })
            .collect();
        for (original, kept) in &differing {
            warn!(source = %self.id, message_id = %message_id, from = %headers.from,
                original, kept,
                "mesh message: a resend whose content differs from the original's (same \
                 sender and control id): not processed, kept as a rejected row \
                 (does the sender reuse control ids?)");
        }
        let journal_id = stored
            .first()
            .map(|(id, _)| *id)
            .or_else(|| differing.first().map(|(_, kept)| *kept))
            .or_else(|| committed.first().map(Committed::id))
            .or_else(|| before.first().copied())
            .unwrap_or_default();
        // Nothing new: a re-download (or a differing resend: rejected).
        // Something new and accepted: accepted (a batch may hold rejected
        // messages too: each has its own row).
        let outcome = if stored.is_empty() {
            if differing.is_empty() {
                Outcome::Duplicate
            } else {
                Outcome::Rejected
            }
        } else if stored.iter().any(|(_, accepted)| *accepted) {
            Outcome::Accepted
        } else {
            outcome
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
                workflow = %headers.workflow_id, journal_id, bytes = size, messages,
                chunks = headers.chunk_count, outcome = outcome.as_str(), "mesh message received");
        }
        self.events.publish(Event::MeshReceived(event.clone()));
        // A report that something we sent was not delivered: the delivery
        // that sent it is dead-lettered (also when the report is read again
        // after a crash: a delivery already dead is left as it is).
        if headers.message_type == MessageType::Report {
            self.report_not_delivered(&received)
                .await
                .map_err(journal_err)?;
        }
        // journaled: no other node journals it again, whatever happens next
        self.claim_step(message_id, ClaimStep::Taken).await?;

        self.acknowledge(client, message_id).await?;
        debug!(source = %self.id, message_id = %message_id, journal_id, "mesh message acknowledged");
        self.events.publish(Event::MeshAcknowledged(MeshEvent {
            at: events::now(),
            ..event
        }));
        Ok(Some(outcome))
    }

    /// Acknowledges a journaled message in MESH (one already gone is fine)
    /// and forgets its claim.
    async fn acknowledge(
        &self,
        client: &MeshClient,
        message_id: &MessageId,
    ) -> Result<(), MeshInboxError> {
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
        self.release_claim(message_id).await;
        Ok(())
    }

    /// Claims `message_id` in the record store the nodes share (see
    /// [`crate::store::RecordStore::claim_mesh_message`]); with no shared
    /// store, this node's alone.
    async fn claim(&self, message_id: &MessageId) -> Result<MeshClaim, MeshInboxError> {
        let Some(store) = self.lease.clone() else {
            return Ok(MeshClaim::Fresh);
        };
        let (key, id, node) = (
            self.lease_key.clone(),
            message_id.to_string(),
            self.journal.node_id().to_string(),
        );
        let claimed =
            tokio::task::spawn_blocking(move || store.claim_mesh_message(&key, &id, &node)).await;
        self.claim_result(message_id, "claim", claimed)
    }

    /// Forgets claims older than [`CLAIMS_KEPT_DAYS`] (their messages expired
    /// in MESH long ago); a failure is only logged.
    async fn forget_old_claims(&self) {
        let Some(store) = self.lease.clone() else {
            return;
        };
        let key = self.lease_key.clone();
        let forgot = tokio::task::spawn_blocking(move || {
            store.forget_old_mesh_claims(&key, CLAIMS_KEPT_DAYS)
        })
        .await;
        match forgot {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                info!(source = %self.id, claims = n, days = CLAIMS_KEPT_DAYS,
                    "mesh inbox: forgot claims on messages long expired in MESH")
            }
            Ok(Err(err)) => {
                warn!(source = %self.id, error = %err, "mesh inbox: old claims not forgotten")
            }
            Err(_) => warn!(source = %self.id, "mesh inbox: old claims not forgotten"),
        }
    }

    /// Tells the shared record store what became of a claimed message.
    async fn claim_step(
        &self,
        message_id: &MessageId,
        step: ClaimStep,
    ) -> Result<(), MeshInboxError> {
        let Some(store) = self.lease.clone() else {
            return Ok(());
        };
        let (key, id) = (self.lease_key.clone(), message_id.to_string());
        let done = tokio::task::spawn_blocking(move || match step {
            ClaimStep::Taken => store.mesh_message_taken(&key, &id),
            ClaimStep::Release => store.release_mesh_message(&key, &id),
        })
        .await;
        let what = match step {
            ClaimStep::Taken => "mark as journaled",
            ClaimStep::Release => "release the claim on",
        };
        self.claim_result(message_id, what, done)
    }

    fn claim_result<T>(
        &self,
        message_id: &MessageId,
        what: &'static str,
        done: Result<Result<T, crate::store::StoreError>, tokio::task::JoinError>,
    ) -> Result<T, MeshInboxError> {
        let error = match done {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => error,
            Err(_) => crate::store::StoreError::Internal("the claim's thread failed"),
        };
        Err(MeshInboxError::Claim {
            source_id: self.id.clone(),
            message_id: message_id.to_string(),
            what,
            error: Box::new(error),
        })
    }

    /// Releases this node's claim on a message it did not journal, or that
    /// has left the inbox. A failure is only logged: the claim then left is
    /// this node's, which its next poll sets right from its journal.
    async fn release_claim(&self, message_id: &MessageId) {
        if let Err(err) = self.claim_step(message_id, ClaimStep::Release).await {
            warn!(source = %self.id, message_id = %message_id, error = %err,
                "mesh inbox: claim not released; set right at the next poll");
        }
    }

    /// Whether this source's journal has rows from MESH message `message_id`.
    async fn journaled_from(&self, message_id: &MessageId) -> Result<bool, JournalError> {
        let rows = self
            .journal
            .search(MessageQuery {
                remote_ref: Some(message_id.to_string()),
                limit: Some(crate::journal::MAX_LIMIT),
                ..MessageQuery::default()
            })
            .await?;
        Ok(rows.iter().any(|r| r.listener == self.id))
    }

    /// Acknowledges a message a node (this one, before it stopped, or
    /// another) journaled already, and forgets its claim: it is not journaled
    /// again.
    async fn acknowledge_journaled(
        &self,
        client: &MeshClient,
        message_id: &MessageId,
    ) -> Result<Option<Outcome>, MeshInboxError> {
        self.acknowledge(client, message_id).await?;
        self.count(Outcome::Duplicate);
        info!(source = %self.id, message_id = %message_id, outcome = Outcome::Duplicate.as_str(),
            "mesh message journaled before (by this node or another sharing the record store): acknowledged, not journaled again");
        Ok(Some(Outcome::Duplicate))
    }

    /// The journal rows for a downloaded message and how it is classified:
    /// one row, or one per HL7 v2 message of a body that is HL7.
    fn journal_rows(
        &self,
        message_id: &MessageId,
        received: &Received,
    ) -> (Vec<Incoming>, Outcome) {
        let headers = &received.headers;
        let mut row = Incoming {
            listener: self.id.clone(),
            // the mailbox and the MESH message it came in (searchable:
            // `remote_ref`)
            peer: format!("mesh:{}/{}", headers.from, message_id),
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
        // (a look at the first byte, for anything not framed)
        let unframed = mllp_unframed(&received.body);
        let outcome = match &headers.message_type {
            // from a mailbox, or under a workflow, the source does not take
            // (a REPORT comes from the system: its sender is not checked)
            _ if self.refused(headers).is_some() => {
                row.status = Status::Rejected;
                row.error = self.refused(headers);
                Outcome::Rejected
            }
            // content that cannot be used as sent (not the gzip it says, a
            // checksum that does not match): kept, rejected, and acknowledged,
            // never downloaded again at every poll until MESH expires it
            _ if received.problem.is_some() => {
                row.status = Status::Rejected;
                row.error = Some(format!(
                    "mesh message from `{}` cannot be used as sent: {}",
                    headers.from,
                    received.problem.as_deref().unwrap_or_default()
                ));
                Outcome::Rejected
            }
            MessageType::Report => {
                row.status = Status::Rejected;
                row.message_type = "MESH^REPORT".to_string();
                row.error = Some(report_text(received));
                Outcome::Report
            }
            MessageType::Data | MessageType::Other(_) if hl7::looks_like_hl7(&received.body) => {
                return hl7_rows(row, &received.body);
            }
            // HL7 still in its MLLP frames (a sender that writes what it would
            // have sent over TCP): the messages of the frames
            MessageType::Data | MessageType::Other(_) if unframed.is_some() => {
                return hl7_rows(row, unframed.as_ref().unwrap_or(&received.body));
            }
            MessageType::Data | MessageType::Other(_) => match bundle_problem(&received.body) {
                None => Outcome::Accepted,
                Some(problem) => {
                    row.status = Status::Rejected;
                    row.error = Some(format!(
                        "mesh message from `{}` is neither HL7 v2 nor a FHIR Bundle: {problem}",
                        headers.from
                    ));
                    Outcome::Rejected
                }
            },
        };
        (vec![row], outcome)
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

    /// A poll's outcome in the metrics, and when the last good one was.
    fn count_poll(&self, ok: bool) {
        let label = SourcePollLabel {
            source: self.id.clone(),
            outcome: if ok { "ok" } else { "failed" }.to_string(),
        };
        self.metrics.source_polls.get_or_create(&label).inc();
        if ok {
            let now = jiff::Timestamp::now().as_second();
            self.metrics
                .source_last_success
                .get_or_create(&SourceLabel {
                    source: self.id.clone(),
                })
                .set(now);
        }
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

    /// For a REPORT whose status code is not `00`: the delivery that sent
    /// the message it reports on (found by its remote reference, the MESH
    /// message id) did not reach its recipient, so it is dead-lettered with
    /// the report's reason and how to send it again. The number of
    /// deliveries dead-lettered.
    async fn report_not_delivered(&self, received: &Received) -> Result<usize, JournalError> {
        let h = &received.headers;
        let code = h.status_code.as_deref().unwrap_or("");
        let Some(linked) = h.linked_message_id.as_deref().filter(|l| !l.is_empty()) else {
            return Ok(0);
        };
        if code.is_empty() || code == "00" {
            return Ok(0);
        }
        let rows = self
            .journal
            .deliveries(DeliveryFilter {
                status: Some(DeliveryStatus::Delivered),
                remote_ref: Some(linked.to_string()),
                ..DeliveryFilter::default()
            })
            .await?;
        let description = h
            .status_description
            .as_deref()
            .map(|d| format!(", {}", truncate(d)))
            .unwrap_or_default();
        let mut dead = 0;
        for row in rows {
            let error = format!(
                "mesh report on MESH message `{linked}`: status code {code}{description}; the \
                 recipient did not get it: send it again with `junction replay {} \
                 --destination {}`",
                row.message_id, row.destination
            );
            let outcome = self
                .journal
                .queue_write(vec![QueueOp::NotDelivered {
                    id: row.id,
                    error: error.clone(),
                    at_ms: jiff::Timestamp::now().as_millisecond(),
                }])
                .await?;
            if !matches!(outcome.first(), Some(QueueOutcome::Updated(1))) {
                continue;
            }
            dead += 1;
            warn!(source = %self.id, delivery_id = row.id, journal_id = row.message_id,
                destination = %row.destination, linked_message_id = linked, status_code = code,
                "mesh report: a delivered document did not reach its recipient; dead-lettered");
            self.metrics
                .deliveries
                .get_or_create(&DeliveryLabel {
                    destination: row.destination.clone(),
                    outcome: "dead".to_string(),
                })
                .inc();
            self.events.publish(Event::DeadLettered(DeliveryEvent {
                delivery_id: row.id,
                journal_id: row.message_id,
                destination: row.destination,
                control_id: row.control_id,
                message_type: row.message_type,
                attempt: row.attempts,
                outcome: "dead".to_string(),
                error: Some(error),
                retry_at: None,
                remote_ref: Some(linked.to_string()),
                at: events::now(),
            }));
        }
        Ok(dead)
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

/// The rows of an HL7 v2 body (one message, or a batch of them), each like
/// a message an MLLP listener journals: sender (MSH-3^MSH-4), control id
/// (MSH-10), type and version from its header, so a re-download, or the same
/// message sent again in another MESH message, is a duplicate. A message
/// whose header is unusable is rejected with the reason, keyed by the MESH
/// message id (`<id>/<n>` in a batch) and the sending mailbox from `template`.
/// Accepted when any message is.
/// The messages of `body` when it is nothing but MLLP frames holding HL7 (read
/// as a listener reads them, [`crate::mllp::codec::frames_of`]), one after
/// another as a file of messages; `None` otherwise.
fn mllp_unframed(body: &[u8]) -> Option<bytes::Bytes> {
    let frames = crate::mllp::codec::frames_of(body)?;
    let mut out = Vec::with_capacity(body.len());
    for message in &frames {
        if !hl7::looks_like_hl7(message) {
            return None;
        }
        out.extend_from_slice(message);
        if !message.ends_with(b"\r") && !message.ends_with(b"\n") {
            out.push(b'\r');
        }
    }
    Some(bytes::Bytes::from(out))
}

/// A listener's checks of one message's content: [`hl7::assess`], no query,
/// a patient named (not MLLP's UTF-16 refusal nor a listener's MSH-11).
#[allow(clippy::result_large_err)]
fn checked(raw: &[u8]) -> Result<hl7::Header, hl7::Rejection> {
    hl7::assess(raw).and_then(|header| hl7::check_content(header, raw))
}

fn hl7_rows(template: Incoming, body: &bytes::Bytes) -> (Vec<Incoming>, Outcome) {
    let parts = hl7::split_batch_bytes(body)
        .filter(|parts| !parts.is_empty())
        .unwrap_or_else(|| vec![body.clone()]);
    let many = parts.len() > 1;
    let mut outcome = Outcome::Rejected;
    let rows = parts
        .into_iter()
        .enumerate()
        // a listener's checks but those of MLLP (UTF-16, which MLLP cannot
        // frame) and of its config (MSH-11): a query, or a message about no
        // patient, kept as rejected here too
        .map(|(k, raw)| match checked(&raw) {
            Ok(header) => {
                outcome = Outcome::Accepted;
                Incoming {
                    sender: header.sender(),
                    control_id: header.control_id.clone(),
                    message_type: header.message_type(),
                    version: header.version.clone(),
                    raw,
                    ..template.clone()
                }
            }
            Err(rejection) => {
                let header = rejection.header.as_ref();
                let (control_id, which) = if many {
                    (
                        format!("{}/{}", template.control_id, k + 1),
                        format!(" (message {} of the batch)", k + 1),
                    )
                } else {
                    (template.control_id.clone(), String::new())
                };
                Incoming {
                    control_id,
                    message_type: header
                        .map(hl7::Header::message_type)
                        .unwrap_or_else(|| template.message_type.clone()),
                    version: header.map(|h| h.version.clone()).unwrap_or_default(),
                    status: Status::Rejected,
                    error: Some(format!(
                        "HL7 v2 from mesh mailbox `{}`{which}: {}",
                        template.sender,
                        rejection.error.summary()
                    )),
                    raw,
                    ..template.clone()
                }
            }
        })
        .collect();
    (rows, outcome)
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
    // a UTF-8 byte order mark, as Windows senders write (RFC 8259 §8.1: may be ignored)
    let json: Json = match serde_json::from_slice(hl7::strip_utf8_bom(body)) {
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

    #[test]
    fn hl7_in_mllp_frames_is_unframed() {
        let a = b"MSH|^~\\&|LAB|RRV|||20261123||ORU^R01|1|P|2.4\rPID|1\r";
        let b = b"MSH|^~\\&|LAB|RRV|||20261123||ORU^R01|2|P|2.4\rPID|1";
        let mut framed = vec![0x0B];
        framed.extend_from_slice(a);
        framed.extend_from_slice(&[0x1C, 0x0D, b'\n', 0x0B]);
        framed.extend_from_slice(b);
        framed.extend_from_slice(&[0x1C]);
        let unframed = mllp_unframed(&framed).expect("frames");
        let mut expected = a.to_vec();
        expected.extend_from_slice(b);
        expected.push(b'\r');
        assert_eq!(&unframed[..], &expected[..]);
        // not only frames, or frames of something else: not unframed
        assert_eq!(mllp_unframed(a), None);
        assert_eq!(
            mllp_unframed(b"\x0b{\"resourceType\":\"Bundle\"}\x1c\r"),
            None
        );
        assert_eq!(mllp_unframed(b"\x0bMSH|^~\\&|A\r"), None, "no end block");
        assert_eq!(mllp_unframed(b""), None);
    }

    #[test]
    fn a_bundle_after_a_byte_order_mark_is_a_bundle() {
        let body = b"\xEF\xBB\xBF{\"resourceType\":\"Bundle\",\"type\":\"transaction\"}";
        assert_eq!(bundle_problem(body), None);
        assert_eq!(hl7::strip_utf8_bom(b"\xEF\xBB\xBFx"), b"x");
        assert_eq!(hl7::strip_utf8_bom(b"x"), b"x");
    }

    fn check(body: &str, expected: Option<&str>) {
        assert_eq!(
            bundle_problem(body.as_bytes()).as_deref(),
            expected,
            "{body}"
        );
    }

    fn template() -> Incoming {
        Incoming {
            listener: "mesh_inbox".into(),
            peer: "mesh:X26ABC2".into(),
            received_at: jiff::Timestamp::now(),
            sender: "X26ABC2".into(),
            control_id: "20261123_MESHID".into(),
            message_type: "MESH^LAB_RESULTS".into(),
            version: String::new(),
            status: Status::Accepted,
            ack_code: None,
            ack: None,
            error: None,
            raw: bytes::Bytes::new(),
        }
    }

    #[test]
    fn hl7_bodies_become_a_row_per_message() {
        let one = bytes::Bytes::from_static(
            b"MSH|^~\\&|LIMS|RAL|JUNCTION|LCR|20261123||ORU^R01|LAB1|P|2.4\rPID|1||L1^^^RAL^MR\r",
        );
        let (rows, outcome) = hl7_rows(template(), &one);
        assert_eq!(outcome, Outcome::Accepted);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(
            (
                row.sender.as_str(),
                row.control_id.as_str(),
                row.message_type.as_str()
            ),
            ("LIMS^RAL", "LAB1", "ORU^R01")
        );
        assert_eq!(
            (row.listener.as_str(), row.peer.as_str()),
            ("mesh_inbox", "mesh:X26ABC2")
        );
        assert_eq!(row.raw, one);
        assert_eq!(row.version, "2.4");

        // a batch: each message its own row; one without MSH-9 is rejected,
        // keyed by the MESH message id and its place in the batch
        let batch = bytes::Bytes::from_static(
            b"BHS|^~\\&|LIMS|RAL\rMSH|^~\\&|LIMS|RAL|||20261123||ORU^R01|LAB2|P|2.4\rPID|1||L2^^^RAL^MR\r\
              MSH|^~\\&|LIMS|RAL|||20261123|||LAB3|P|2.4\rPID|1\rBTS|2\r",
        );
        let (rows, outcome) = hl7_rows(template(), &batch);
        assert_eq!(outcome, Outcome::Accepted);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].status, Status::Accepted);
        assert_eq!(rows[0].control_id, "LAB2");
        assert_eq!(rows[1].status, Status::Rejected);
        assert_eq!(rows[1].control_id, "20261123_MESHID/2");
        assert_eq!(rows[1].sender, "X26ABC2");
        let error = rows[1].error.as_deref().unwrap();
        assert!(error.contains("message 2 of the batch"), "{error}");
        assert!(error.contains("MSH-9"), "{error}");
        assert!(!error.contains("PID"), "no content: {error}");

        // one broken message alone: rejected, keyed by the MESH message id
        let broken = bytes::Bytes::from_static(b"MSH|^~\\&|not a message");
        let (rows, outcome) = hl7_rows(template(), &broken);
        assert_eq!(outcome, Outcome::Rejected);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].control_id, "20261123_MESHID");
        assert_eq!(rows[0].raw, broken);
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
