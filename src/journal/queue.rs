//! The delivery side of the journal (schema version 2): each accepted
//! message's routing outcome, and the delivery queue — one row per
//! (message, destination, mapping) holding the document to deliver.
//!
//! Writes ([`QueueOp`]) run on the journal's writer thread inside its group
//! commit (see [`super::Journal::queue_write`]); reads run on the reader pool.
//! It decides nothing: when to deliver and what a failure means is the
//! scheduler's business (`delivery::scheduler`), what to enqueue the
//! pipeline's (`delivery::pipeline`).
//!
//! # Invariants
//! - A message's routing outcome and its delivery rows are written by one
//!   [`QueueOp::Route`], in one transaction: a crash never half-routes.
//! - Among the `pending` rows of one (destination, patient key) exactly one
//!   has `head = 1`: the lowest id. Only heads are handed out, so documents
//!   of one patient reach one destination in the order they were queued.
//! - A delivered row keeps its metadata, not its document (schema v3): the
//!   document is in the destination and a replay makes it again.
//! - Status changes are guarded by the status they expect (`pending` for an
//!   attempt's outcome, `dead`/`withheld` for a retry): a stale update
//!   changes nothing and reports 0 rows.

use bytes::Bytes;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

use super::{DEFAULT_LIMIT, MAX_LIMIT};

/// Schema version 2: routing outcomes and the delivery queue.
pub(super) const SCHEMA_V2: &str = "
CREATE TABLE routings (
    id          INTEGER PRIMARY KEY,
    message_id  INTEGER NOT NULL,
    replay      INTEGER NOT NULL DEFAULT 0,
    outcome     TEXT NOT NULL CHECK (outcome IN ('routed', 'unrouted', 'failed')),
    routes      TEXT NOT NULL,
    error       TEXT,
    routed_at   INTEGER NOT NULL
);
CREATE INDEX routings_message ON routings (message_id);
CREATE INDEX routings_cursor ON routings (replay, message_id);
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY,
    message_id      INTEGER NOT NULL,
    routing_id      INTEGER NOT NULL,
    destination     TEXT NOT NULL,
    mapping         TEXT NOT NULL,
    routes          TEXT NOT NULL,
    patient_key     TEXT NOT NULL,
    nhs_numbers     TEXT NOT NULL,
    document        BLOB NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead', 'withheld')),
    head            INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    age_from        INTEGER NOT NULL,
    last_error      TEXT,
    remote_ref      TEXT,
    delivered_at    INTEGER
);
CREATE INDEX deliveries_due ON deliveries (destination, next_attempt_at)
    WHERE status = 'pending' AND head = 1;
CREATE INDEX deliveries_line ON deliveries (destination, patient_key, id)
    WHERE status = 'pending';
CREATE INDEX deliveries_message ON deliveries (message_id);
CREATE INDEX deliveries_status ON deliveries (status, destination);
";

/// Schema version 3: a document is dropped once delivered (it is in the
/// destination, and a replay makes it again from the raw message); its size
/// is kept for the API.
pub(super) const SCHEMA_V3: &str = "
ALTER TABLE deliveries ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
UPDATE deliveries SET size = length(document);
UPDATE deliveries SET document = X'' WHERE status = 'delivered';
";

/// Version 4: `messages.resend_of`, the message a kept differing resend (a
/// rejected row: same sender and control id, other content) collided with;
/// and messages found by a remote reference (`MessageQuery::remote_ref`):
/// deliveries by what the destination called them (the MESH message id a
/// document went as), and messages from a MESH inbox by the MESH message id
/// they came in (the end of their peer, `mesh:<mailbox>/<message id>`).
pub(super) const SCHEMA_V4: &str = "
CREATE INDEX deliveries_remote_ref ON deliveries (remote_ref) WHERE remote_ref IS NOT NULL;
CREATE INDEX messages_mesh_message_id ON messages (substr(peer, instr(peer, '/') + 1))
    WHERE peer LIKE 'mesh:%/%';
ALTER TABLE messages ADD COLUMN resend_of INTEGER;
";

/// Version 5: each patient's GP registration as last seen in a message from
/// a listener (`generalPractitioner`: the practice's ODS code, the GP's
/// GMP/GMC number, as FHIR Identifier JSON), so routing can follow a patient
/// whose later messages do not say it (lab results rarely carry PD1). Kept
/// under each key of the patient: the Patient id the mappings compute, and
/// `identifier|<system>|<value>` for each of its identifiers (so a patient
/// first sent with an MRN only, then traced, is still known). `message_id`
/// is the message it was learned from and `recorded_at` when its sender
/// recorded the event (ms; 0 unknown): a message recorded earlier (one
/// arriving late, a replay) never overwrites a later one, as the record store
/// orders them. `nhs_number` is the patient's it was learned for (empty:
/// none known), so an MRN reused for another person is not taken for them.
pub(super) const SCHEMA_V5: &str = "
CREATE TABLE registrations (
    patient_key  TEXT PRIMARY KEY,
    identifiers  TEXT NOT NULL,
    nhs_number   TEXT NOT NULL,
    recorded_at  INTEGER NOT NULL,
    message_id   INTEGER NOT NULL,
    learned_at   INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Schema version 6: a patient's rows at a destination, whatever their
/// status, found by index (a retry by hand reads the whole line).
pub(super) const SCHEMA_V6: &str = "
CREATE INDEX deliveries_patient ON deliveries (patient_key, destination, id);
";

/// Schema version 7: the identifiers of each queued document's patient
/// (`identifier|<system>|<value>`, as routing remembers registrations by),
/// per destination, so a document whose patient key changed (a patient sent
/// with an MRN alone, then traced: the key moves to the NHS number) waits
/// behind the patient's documents still queued under the old key (see
/// [`line_of`]).
pub(super) const SCHEMA_V7: &str = "
CREATE TABLE delivery_identities (
    destination TEXT NOT NULL,
    identity    TEXT NOT NULL,
    delivery_id INTEGER NOT NULL,
    PRIMARY KEY (destination, identity, delivery_id)
) WITHOUT ROWID;
CREATE INDEX delivery_identities_row ON delivery_identities (delivery_id);
";

/// Version 8: the journal's own random id, made once when the file is made or
/// upgraded. It names this engine node where nodes share a record store (a
/// MESH message it claimed there, see `source::mesh_inbox`), and stays the
/// same across restarts because it lives with the journal it speaks for.
pub(super) const SCHEMA_V8: &str = "
CREATE TABLE node (id TEXT NOT NULL);
INSERT INTO node (id) VALUES (lower(hex(randomblob(16))));
";

/// What routing made of one accepted message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingOutcome {
    /// At least one document was queued for at least one destination.
    Routed,
    /// No route matched, or no route's condition held: nothing was queued.
    Unrouted,
    /// The message could not be parsed or mapped (see the error).
    Failed,
}

impl RoutingOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingOutcome::Routed => "routed",
            RoutingOutcome::Unrouted => "unrouted",
            RoutingOutcome::Failed => "failed",
        }
    }

    fn parse(text: &str) -> RoutingOutcome {
        match text {
            "routed" => RoutingOutcome::Routed,
            "unrouted" => RoutingOutcome::Unrouted,
            // The CHECK constraint allows only these three.
            _ => RoutingOutcome::Failed,
        }
    }
}

/// Where a queued document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its (next) attempt.
    Pending,
    Delivered,
    /// Given up on (attempts, age, or a permanent error); can be retried.
    Dead,
    /// Not sent: the patient objects to sharing and the destination is external.
    Withheld,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
            DeliveryStatus::Withheld => "withheld",
        }
    }

    /// Parses a status name (`pending`, `delivered`, `dead`, `withheld`).
    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        match text {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "dead" => Some(DeliveryStatus::Dead),
            "withheld" => Some(DeliveryStatus::Withheld),
            _ => None,
        }
    }

    pub const ALL: [DeliveryStatus; 4] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Delivered,
        DeliveryStatus::Dead,
        DeliveryStatus::Withheld,
    ];
}

/// One document to queue for one destination.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub destination: String,
    /// The mapping that made the document (empty: passed through as received).
    pub mapping: String,
    /// The routes that chose this destination.
    pub routes: Vec<String>,
    pub patient_key: String,
    /// The patient's identifiers (`identifier|<system>|<value>`, those that
    /// tell one patient from another): a document whose key has no queued
    /// rows waits behind rows of another key that share one (see [`line_of`]).
    pub identities: Vec<String>,
    /// NHS numbers found in the document (checked against objections).
    pub nhs_numbers: Vec<String>,
    pub document: Bytes,
    /// Set when the destination cannot deliver at the moment (not built).
    pub last_error: Option<String>,
}

/// A message's routing outcome with the deliveries it queues.
#[derive(Debug, Clone)]
pub struct NewRouting {
    pub message_id: i64,
    /// A replay (`POST /api/messages/{id}/replay`), not the pipeline's first pass.
    pub replay: bool,
    pub outcome: RoutingOutcome,
    /// Every route that matched (for routed messages: that chose a destination).
    pub routes: Vec<String>,
    /// Why it failed (journal only: may quote the message).
    pub error: Option<String>,
    pub at_ms: i64,
    pub deliveries: Vec<NewDelivery>,
    /// GP registrations the message's documents said, to remember for the
    /// patient's later messages (written in the same transaction).
    pub registrations: Vec<Registration>,
}

/// A patient's GP registration as a message said it, under one of its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The Patient's id, or `identifier|<system>|<value>`.
    pub patient_key: String,
    /// Its `generalPractitioner` identifiers, a JSON array of FHIR Identifiers.
    pub identifiers: String,
    /// The patient's NHS number (empty: none known).
    pub nhs_number: String,
    /// When the sender recorded what says it (ms; 0 unknown).
    pub recorded_at: i64,
}

/// One change to the routing outcomes or the delivery queue.
#[derive(Debug, Clone)]
pub enum QueueOp {
    /// Record a routing outcome and queue its deliveries.
    Route(NewRouting),
    /// Attempts at these pending deliveries are about to start: each one's
    /// `attempts` goes up by one (so a crash mid-attempt is visible afterwards).
    Start { ids: Vec<i64> },
    /// A pending delivery succeeded.
    Delivered {
        id: i64,
        attempts: u32,
        remote_ref: Option<String>,
        at_ms: i64,
    },
    /// A pending delivery failed and is retried at `next_attempt_at_ms`.
    Failed {
        id: i64,
        attempts: u32,
        next_attempt_at_ms: i64,
        error: String,
    },
    /// A pending delivery is given up on.
    Dead {
        id: i64,
        attempts: u32,
        error: String,
        at_ms: i64,
    },
    /// A pending delivery is not sent (the patient objects).
    Withheld { id: i64, reason: String, at_ms: i64 },
    /// A dead (or withheld) delivery is queued again, due now, with its
    /// attempts and age reset; not one whose document was dropped when it
    /// was delivered ([`QueueOp::NotDelivered`]): `Updated(0)`.
    Retry { id: i64, now_ms: i64 },
    /// Pending deliveries (one, or every one of a destination) due now; their
    /// attempts and age are kept.
    DueNow {
        destination: String,
        id: Option<i64>,
        now_ms: i64,
    },
    /// A guard for a retry by hand, first in its request: the plan it was
    /// made from still holds. Every row of `retryable` is still dead or
    /// withheld with its document, no row was added to `lines` after
    /// `high_water`, and each line still has `dead` rows dead or withheld
    /// (another retry of one of them since changes what must follow). `Updated(1)` when so; otherwise [`QueueOutcome::Stale`],
    /// and nothing of the request is written (the rest is not applied, and
    /// the request's savepoint is rolled back).
    Unchanged {
        retryable: Vec<i64>,
        lines: Vec<(String, String)>,
        dead: Vec<i64>,
        high_water: i64,
    },
    /// Note on the pending deliveries of a destination that cannot deliver
    /// (e.g. it could not be built) why they wait.
    NoteUnavailable { destination: String, error: String },
    /// Retention: deletes at most `limit` messages received before `before`
    /// (the journal's `received_at` text) whose story is over, with their
    /// routings and deliveries: rejected and garbage frames, and accepted
    /// messages that were routed, none of them with a delivery pending or
    /// dead. Never an accepted message not yet routed, any message with a
    /// delivery still to make or dead-lettered (ops may retry it; a replayed
    /// differing resend is a rejected row with deliveries), nor the newest
    /// routed message (the routing cursor stays where it is), nor one
    /// delivered that is newer (by message id) than a dead row of the same
    /// patient and destination (a retry of that row replays it). `Updated(n)`:
    /// messages deleted.
    Prune { before: String, limit: usize },
    /// A delivery the destination took (status `delivered`) did not reach
    /// its recipient after all (a MESH REPORT on the message we sent): it is
    /// dead-lettered with `error`. Its document was dropped when it was
    /// delivered, so it is sent again by replaying its message to its
    /// destination, not by a retry. `Updated(n)`: 0 when it is not
    /// `delivered` (a report read twice changes nothing).
    NotDelivered { id: i64, error: String, at_ms: i64 },
}

impl QueueOp {
    /// Bytes written, for the writer's group size limit.
    pub(super) fn size_bytes(&self) -> usize {
        match self {
            QueueOp::Route(r) => r.deliveries.iter().map(|d| d.document.len()).sum(),
            _ => 64,
        }
    }
}

/// What one [`QueueOp`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueOutcome {
    /// The routing row and the delivery rows (in the order given).
    Routed {
        routing_id: i64,
        deliveries: Vec<i64>,
    },
    /// Rows changed (0: the row was not in the expected status).
    Updated(usize),
    /// A [`QueueOp::Unchanged`] guard found the plan out of date: nothing of
    /// its request was written.
    Stale,
}

/// [`APPLICATION_ACK`] as a literal, for SQL text.
macro_rules! application_ack {
    () => {
        "(application ack)"
    };
}

/// The `mapping` of a delivery that is an application acknowledgement (an
/// HL7 ACK in `document`, made by the pipeline for MSH-16): what an MLLP
/// destination sends for it is that ACK, not the message. A mapping file
/// naming itself so is refused at load.
pub const APPLICATION_ACK: &str = application_ack!();

/// A journaled accepted message, for the pipeline.
#[derive(Debug, Clone)]
pub struct PendingMessage {
    pub id: i64,
    pub listener: String,
    /// `MSH-3^MSH-4`, or the sending mailbox of a MESH document.
    pub sender: String,
    pub control_id: String,
    pub message_type: String,
    pub raw: Bytes,
}

/// A head-of-line pending delivery, due, with what a destination needs.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: i64,
    pub message_id: i64,
    pub destination: String,
    pub patient_key: String,
    pub nhs_numbers: Vec<String>,
    pub control_id: String,
    pub message_type: String,
    pub document: Bytes,
    pub raw: Bytes,
    /// Attempts made so far.
    pub attempts: u32,
    pub next_attempt_at_ms: i64,
    /// Since when its age counts (queued, or last retried by hand).
    pub age_from_ms: i64,
    /// When it was queued (never changes).
    pub created_at_ms: i64,
}

/// One delivery as the operations API shows it (no document content).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeliveryRow {
    pub id: i64,
    pub message_id: i64,
    pub routing_id: i64,
    pub destination: String,
    pub mapping: String,
    pub routes: Vec<String>,
    pub control_id: String,
    #[serde(rename = "type")]
    pub message_type: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// RFC 3339 UTC.
    pub created_at: String,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub remote_ref: Option<String>,
    pub delivered_at: Option<String>,
    pub size_bytes: usize,
}

/// A search of the delivery queue. Empty fields match all.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
    pub destination: Option<String>,
    pub message_id: Option<i64>,
    /// What the destination called it (a MESH message id).
    pub remote_ref: Option<String>,
    pub limit: Option<u32>,
}

/// The depth of one destination's queue in one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    pub destination: String,
    pub status: DeliveryStatus,
    pub count: u64,
    /// Pending only: when the oldest pending item was queued (unix ms).
    pub oldest_ms: Option<i64>,
}

/// A routing outcome as recorded.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RoutingRecord {
    pub id: i64,
    pub message_id: i64,
    pub replay: bool,
    pub outcome: RoutingOutcome,
    pub routes: Vec<String>,
    pub error: Option<String>,
    /// RFC 3339 UTC.
    pub routed_at: String,
}

/// Unix milliseconds as RFC 3339 UTC with exactly three decimals, so that
/// text order is time order (`...07.410Z` sorts before `...07.418Z`).
pub fn format_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

fn join_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_string())
}

fn split_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn count(n: u32) -> i64 {
    i64::from(n)
}

/// Applies `ops` inside the writer's transaction (the caller holds a savepoint).
pub(super) fn apply(
    tx: &Transaction<'_>,
    ops: &[QueueOp],
) -> Result<Vec<QueueOutcome>, rusqlite::Error> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let outcome = apply_one(tx, op)?;
        let stale = outcome == QueueOutcome::Stale;
        out.push(outcome);
        if stale {
            // the caller rolls the request back
            break;
        }
    }
    Ok(out)
}

const LEAVE_PENDING: &str = "UPDATE deliveries
     SET status = ?2, head = 0, attempts = ?3, last_error = ?4, remote_ref = ?5,
         delivered_at = ?6,
         document = CASE WHEN ?2 = 'delivered' THEN X'' ELSE document END
     WHERE id = ?1 AND status = 'pending'";

fn apply_one(tx: &Transaction<'_>, op: &QueueOp) -> Result<QueueOutcome, rusqlite::Error> {
    match op {
        QueueOp::Route(routing) => route(tx, routing),
        QueueOp::Start { ids } => {
            let mut stmt = tx.prepare_cached(
                "UPDATE deliveries SET attempts = attempts + 1 WHERE id = ?1 AND status = 'pending'",
            )?;
            let mut n = 0;
            for id in ids {
                n += stmt.execute([id])?;
            }
            Ok(QueueOutcome::Updated(n))
        }
        QueueOp::Delivered {
            id,
            attempts,
            remote_ref,
            at_ms,
        } => leave_pending(
            tx,
            *id,
            DeliveryStatus::Delivered,
            *attempts,
            None,
            remote_ref.as_deref(),
            Some(*at_ms),
        ),
        QueueOp::NotDelivered { id, error, at_ms } => Ok(QueueOutcome::Updated(
            tx.prepare_cached(
                "UPDATE deliveries SET status = 'dead', last_error = ?2, next_attempt_at = ?3
                 WHERE id = ?1 AND status = 'delivered'",
            )?
            .execute(params![id, error, at_ms])?,
        )),
        QueueOp::Dead {
            id,
            attempts,
            error,
            at_ms,
        } => leave_pending(
            tx,
            *id,
            DeliveryStatus::Dead,
            *attempts,
            Some(error),
            None,
            Some(*at_ms),
        ),
        QueueOp::Withheld { id, reason, at_ms } => {
            let attempts: Option<i64> = tx
                .query_row("SELECT attempts FROM deliveries WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?;
            let attempts = u32::try_from(attempts.unwrap_or(0)).unwrap_or(0);
            leave_pending(
                tx,
                *id,
                DeliveryStatus::Withheld,
                attempts,
                Some(reason),
                None,
                Some(*at_ms),
            )
        }
        QueueOp::Failed {
            id,
            attempts,
            next_attempt_at_ms,
            error,
        } => {
            let n = tx.execute(
                "UPDATE deliveries SET attempts = ?2, next_attempt_at = ?3, last_error = ?4
                 WHERE id = ?1 AND status = 'pending'",
                params![id, count(*attempts), next_attempt_at_ms, error],
            )?;
            Ok(QueueOutcome::Updated(n))
        }
        QueueOp::Retry { id, now_ms } => {
            let key: Option<(String, String)> = tx
                .query_row(
                    "UPDATE deliveries
                     SET status = 'pending', attempts = 0, next_attempt_at = ?2, age_from = ?2,
                         delivered_at = NULL
                     WHERE id = ?1 AND status IN ('dead', 'withheld')
                       AND NOT (length(document) = 0 AND size > 0)
                     RETURNING destination, patient_key",
                    params![id, now_ms],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match key {
                Some((destination, patient_key)) => {
                    fix_head(tx, &destination, &patient_key)?;
                    Ok(QueueOutcome::Updated(1))
                }
                None => Ok(QueueOutcome::Updated(0)),
            }
        }
        QueueOp::Unchanged {
            retryable,
            lines,
            dead,
            high_water,
        } => unchanged(tx, retryable, lines, dead, *high_water),
        QueueOp::DueNow {
            destination,
            id,
            now_ms,
        } => {
            let n = tx.execute(
                "UPDATE deliveries SET next_attempt_at = ?3
                 WHERE destination = ?1 AND status = 'pending' AND (?2 IS NULL OR id = ?2)
                   AND next_attempt_at > ?3",
                params![destination, id, now_ms],
            )?;
            Ok(QueueOutcome::Updated(n))
        }
        QueueOp::Prune { before, limit } => prune(tx, before, *limit),
        QueueOp::NoteUnavailable { destination, error } => {
            let n = tx.execute(
                "UPDATE deliveries SET last_error = ?2
                 WHERE destination = ?1 AND status = 'pending' AND last_error IS NOT ?2",
                params![destination, error],
            )?;
            Ok(QueueOutcome::Updated(n))
        }
    }
}

/// [`QueueOp::Prune`].
fn prune(
    tx: &Transaction<'_>,
    before: &str,
    limit: usize,
) -> Result<QueueOutcome, rusqlite::Error> {
    let ids: Vec<i64> = {
        let mut stmt = tx.prepare_cached(
            "SELECT m.id FROM messages m
             WHERE m.received_at < ?1
               AND NOT EXISTS (SELECT 1 FROM deliveries d
                               WHERE d.message_id = m.id
                                 AND d.status IN ('pending', 'dead'))
               AND NOT EXISTS (SELECT 1 FROM deliveries d JOIN deliveries x
                                 ON x.destination = d.destination
                                AND x.patient_key = d.patient_key
                                AND x.message_id < d.message_id
                                AND x.status = 'dead'
                               WHERE d.message_id = m.id)
               AND (m.status <> 'accepted'
                    OR (EXISTS (SELECT 1 FROM routings r WHERE r.message_id = m.id)
                        AND m.id < (SELECT COALESCE(MAX(message_id), 0) FROM routings
                                    WHERE replay = 0)))
             ORDER BY m.id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![before, limit as i64], |row| row.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut identities = tx.prepare_cached(
        "DELETE FROM delivery_identities WHERE delivery_id IN
         (SELECT id FROM deliveries WHERE message_id = ?1)",
    )?;
    let mut deliveries = tx.prepare_cached("DELETE FROM deliveries WHERE message_id = ?1")?;
    let mut routings = tx.prepare_cached("DELETE FROM routings WHERE message_id = ?1")?;
    let mut messages = tx.prepare_cached("DELETE FROM messages WHERE id = ?1")?;
    for id in &ids {
        identities.execute(params![id])?;
        deliveries.execute(params![id])?;
        routings.execute(params![id])?;
        messages.execute(params![id])?;
    }
    Ok(QueueOutcome::Updated(ids.len()))
}

/// The line (patient key) at `destination` whose pending rows are of a
/// patient with one of `identities`, when there is one: a document of the
/// same patient under a new key (traced since: the key moved from the MRN to
/// the NHS number) joins it, so it is not delivered before the patient's
/// older documents still queued under the old key. The oldest such line when
/// there are several. (A line of the document's own key with pending rows
/// is asked for first, by the caller: then it waits there.)
fn line_of(
    tx: &Transaction<'_>,
    destination: &str,
    identities: &[String],
) -> Result<Option<String>, rusqlite::Error> {
    if identities.is_empty() {
        return Ok(None);
    }
    let mut stmt = tx.prepare_cached(
        "SELECT d.patient_key, d.id FROM delivery_identities i
         JOIN deliveries d ON d.id = i.delivery_id
         WHERE i.destination = ?1 AND i.identity = ?2 AND d.status = 'pending'
         ORDER BY d.id LIMIT 1",
    )?;
    let mut oldest: Option<(String, i64)> = None;
    for key in identities {
        let found: Option<(String, i64)> = stmt
            .query_row(params![destination, key], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        if let Some((line, id)) = found {
            if oldest.as_ref().is_none_or(|(_, o)| id < *o) {
                oldest = Some((line, id));
            }
        }
    }
    Ok(oldest.map(|(line, _)| line))
}

fn route(tx: &Transaction<'_>, r: &NewRouting) -> Result<QueueOutcome, rusqlite::Error> {
    tx.execute(
        "INSERT INTO routings (message_id, replay, outcome, routes, error, routed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            r.message_id,
            r.replay,
            r.outcome.as_str(),
            join_list(&r.routes),
            r.error,
            r.at_ms
        ],
    )?;
    let routing_id = tx.last_insert_rowid();
    let mut ids = Vec::with_capacity(r.deliveries.len());
    let mut in_line = tx.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM deliveries
         WHERE destination = ?1 AND patient_key = ?2 AND status = 'pending')",
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO deliveries
         (message_id, routing_id, destination, mapping, routes, patient_key, nhs_numbers,
          document, status, head, attempts, next_attempt_at, created_at, age_from, last_error,
          size)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9, 0, ?10, ?10, ?10, ?11, ?12)",
    )?;
    let mut identity = tx.prepare_cached(
        "INSERT OR IGNORE INTO delivery_identities (destination, identity, delivery_id)
         VALUES (?1, ?2, ?3)",
    )?;
    for d in &r.deliveries {
        let own: bool =
            in_line.query_row(params![d.destination, d.patient_key], |row| row.get(0))?;
        let (line, waiting) = match own {
            true => (d.patient_key.clone(), true),
            false => match line_of(tx, &d.destination, &d.identities)? {
                Some(other) => (other, true),
                None => (d.patient_key.clone(), false),
            },
        };
        insert.execute(params![
            r.message_id,
            routing_id,
            d.destination,
            d.mapping,
            join_list(&d.routes),
            line,
            d.nhs_numbers.join(" "),
            &d.document[..],
            !waiting,
            r.at_ms,
            d.last_error,
            // A document is far below i64::MAX bytes.
            d.document.len() as i64,
        ])?;
        let id = tx.last_insert_rowid();
        for key in &d.identities {
            identity.execute(params![d.destination, key, id])?;
        }
        ids.push(id);
    }
    let mut learn = tx.prepare_cached(
        "INSERT INTO registrations
             (patient_key, identifiers, nhs_number, recorded_at, message_id, learned_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (patient_key) DO UPDATE SET
             identifiers = excluded.identifiers,
             nhs_number = excluded.nhs_number,
             recorded_at = excluded.recorded_at,
             message_id = excluded.message_id,
             learned_at = excluded.learned_at
         WHERE (excluded.recorded_at, excluded.message_id)
             >= (registrations.recorded_at, registrations.message_id)",
    )?;
    for g in &r.registrations {
        learn.execute(params![
            g.patient_key,
            g.identifiers,
            g.nhs_number,
            g.recorded_at,
            r.message_id,
            r.at_ms
        ])?;
    }
    Ok(QueueOutcome::Routed {
        routing_id,
        deliveries: ids,
    })
}

/// A registration as stored (see [`SCHEMA_V5`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRegistration {
    pub patient_key: String,
    pub identifiers: String,
    pub nhs_number: String,
    pub recorded_at: i64,
    pub message_id: i64,
}

/// The GP registrations learned under any of `keys`.
pub(super) fn registrations(
    conn: &Connection,
    keys: &[String],
) -> Result<Vec<StoredRegistration>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT patient_key, identifiers, nhs_number, recorded_at, message_id
         FROM registrations WHERE patient_key = ?1",
    )?;
    let mut out = Vec::new();
    for key in keys {
        if let Some(row) = stmt
            .query_row([key], |row| {
                Ok(StoredRegistration {
                    patient_key: row.get(0)?,
                    identifiers: row.get(1)?,
                    nhs_number: row.get(2)?,
                    recorded_at: row.get(3)?,
                    message_id: row.get(4)?,
                })
            })
            .optional()?
        {
            out.push(row);
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn leave_pending(
    tx: &Transaction<'_>,
    id: i64,
    status: DeliveryStatus,
    attempts: u32,
    error: Option<&str>,
    remote_ref: Option<&str>,
    at_ms: Option<i64>,
) -> Result<QueueOutcome, rusqlite::Error> {
    let key: Option<(String, String, bool)> = tx
        .query_row(
            "SELECT destination, patient_key, head FROM deliveries
             WHERE id = ?1 AND status = 'pending'",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((destination, patient_key, was_head)) = key else {
        return Ok(QueueOutcome::Updated(0));
    };
    let delivered_at = (status == DeliveryStatus::Delivered)
        .then_some(at_ms)
        .flatten();
    let last_error = match status {
        DeliveryStatus::Delivered => None,
        _ => error,
    };
    let changed = tx.prepare_cached(LEAVE_PENDING)?.execute(params![
        id,
        status.as_str(),
        count(attempts),
        last_error,
        remote_ref,
        delivered_at
    ])?;
    if was_head {
        promote_next(tx, &destination, &patient_key)?;
    }
    if status == DeliveryStatus::Delivered && changed == 1 {
        // the message reached this destination after all (a replay of it,
        // `junction replay <message> --destination <id>`): its dead letters
        // there are settled, not left dead for good (an alarm nobody could
        // clear, a message never pruned)
        tx.prepare_cached(SUPERSEDE_DEAD)?
            .execute(params![id, destination, delivered_at])?;
    }
    if status == DeliveryStatus::Withheld && changed == 1 {
        // a replay of it withheld (the patient objects since): the answer for
        // that document there is final, so its dead letters are settled alike
        tx.prepare_cached(WITHHOLD_DEAD)?
            .execute(params![id, destination])?;
    }
    Ok(QueueOutcome::Updated(changed))
}

/// The dead rows of a withheld row's message and destination, older than it:
/// withheld (by it), their reason kept and the row that withheld it named.
const WITHHOLD_DEAD: &str = "UPDATE deliveries
     SET status = 'withheld',
         last_error = coalesce(last_error || '; ', '') || 'settled: withheld as delivery ' || ?1
     WHERE message_id = (SELECT message_id FROM deliveries WHERE id = ?1)
       AND destination = ?2 AND status = 'dead' AND id < ?1";

/// The dead rows of a delivered row's message and destination, older than it:
/// delivered (by it), their reason kept and the row that delivered named.
const SUPERSEDE_DEAD: &str = "UPDATE deliveries
     SET status = 'delivered', delivered_at = ?3, document = X'',
         last_error = coalesce(last_error || '; ', '') || 'settled: delivered again as delivery ' || ?1
     WHERE message_id = (SELECT message_id FROM deliveries WHERE id = ?1)
       AND destination = ?2 AND status = 'dead' AND id < ?1";

/// Makes the lowest pending row of a line its head.
fn promote_next(
    tx: &Transaction<'_>,
    destination: &str,
    patient_key: &str,
) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "UPDATE deliveries SET head = 1 WHERE id = (
             SELECT id FROM deliveries
             WHERE destination = ?1 AND patient_key = ?2 AND status = 'pending'
             ORDER BY id LIMIT 1)",
    )?
    .execute(params![destination, patient_key])?;
    Ok(())
}

/// Recomputes the head of a line (after rows re-entered it).
fn fix_head(
    tx: &Transaction<'_>,
    destination: &str,
    patient_key: &str,
) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "UPDATE deliveries SET head = (id = (
             SELECT MIN(id) FROM deliveries
             WHERE destination = ?1 AND patient_key = ?2 AND status = 'pending'))
         WHERE destination = ?1 AND patient_key = ?2 AND status = 'pending'",
    )?
    .execute(params![destination, patient_key])?;
    Ok(())
}

// ---- reads ---------------------------------------------------------------------

/// A later message of a retried row's patient that a retry queues again after
/// it: what [`retry_plan`] finds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Overtaken {
    /// The retried row it is queued after (the lowest of its line).
    pub retried: i64,
    pub destination: String,
    pub message_id: i64,
    /// Its newest row there (delivered, pending, or retried now).
    pub delivery_id: i64,
}

/// Which rows a retry by hand takes.
#[derive(Debug, Clone)]
pub enum RetryWhat {
    /// These rows, those of them dead or withheld and holding their document.
    Ids(Vec<i64>),
    /// Every dead row holding its document (of one destination, or of all).
    Dead(Option<String>),
}

/// What a retry by hand does, read before it is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryPlan {
    /// The rows to queue again (dead or withheld, their document kept), by id.
    pub retryable: Vec<i64>,
    /// The messages to queue again after them, by message id (see
    /// [`retry_plan`]).
    pub overtaken: Vec<Overtaken>,
    /// The lines (destination, patient key) the retried rows are in.
    pub lines: Vec<(String, String)>,
    /// Per line, how many of its rows were dead or withheld: one queued again
    /// by another retry since makes the plan out of date.
    pub dead: Vec<i64>,
    /// The highest delivery id when the plan was read: a row above it in
    /// one of `lines` makes the plan out of date ([`QueueOp::Unchanged`]).
    pub high_water: i64,
}

impl RetryPlan {
    /// The guard to write first with the plan.
    pub fn guard(&self) -> QueueOp {
        QueueOp::Unchanged {
            retryable: self.retryable.clone(),
            lines: self.lines.clone(),
            dead: self.dead.clone(),
            high_water: self.high_water,
        }
    }
}

/// [`RetryPlan`] for `what`.
///
/// The destination must end with the newest document of each line the retry
/// touches, and get the patient's messages in their order. Per line, with
/// `oldest` the lowest message id retried there: every message newer than
/// `oldest` with a row there delivered, pending (in flight, perhaps) or
/// retried now is queued again after the retried rows, by message id. A
/// message's id is its arrival order; a row's id is not (a replay or retry
/// of an older message makes a newer row). When there is no such message but
/// a row of an older message is pending behind the retried one (a replay),
/// the oldest retried message itself is queued again after it. Rows of
/// other lines (another patient key, a merged patient) are not looked at.
pub(super) fn retry_plan(
    conn: &Connection,
    what: &RetryWhat,
) -> Result<RetryPlan, rusqlite::Error> {
    use std::collections::{BTreeMap, HashSet};
    const RETRYABLE: &str =
        "status IN ('dead', 'withheld') AND NOT (length(document) = 0 AND size > 0)";
    let high_water: i64 =
        conn.query_row("SELECT COALESCE(MAX(id), 0) FROM deliveries", [], |r| {
            r.get(0)
        })?;
    let rows: Vec<(i64, String, String, i64)> = match what {
        RetryWhat::Ids(ids) => {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT id, destination, patient_key, message_id FROM deliveries
                 WHERE id = ?1 AND {RETRYABLE}"
            ))?;
            let mut out = Vec::new();
            for &id in ids {
                out.extend(
                    stmt.query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                        .optional()?,
                );
            }
            out
        }
        RetryWhat::Dead(destination) => {
            let mut stmt = conn.prepare(&format!(
                "SELECT id, destination, patient_key, message_id FROM deliveries
                 WHERE status = 'dead' AND (?1 IS NULL OR destination = ?1) AND {RETRYABLE}
                 ORDER BY id"
            ))?;
            let rows = stmt.query_map([destination], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
            rows.collect::<Result<_, _>>()?
        }
    };
    let mut plan = RetryPlan {
        retryable: rows.iter().map(|r| r.0).collect(),
        high_water,
        ..RetryPlan::default()
    };
    plan.retryable.sort_unstable();
    plan.retryable.dedup();
    let retried: HashSet<i64> = plan.retryable.iter().copied().collect();
    // (destination, patient key) -> (lowest retried row, oldest retried message)
    let mut lines: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for (id, destination, patient_key, message_id) in rows {
        let line = lines
            .entry((destination, patient_key))
            .or_insert((id, message_id));
        line.0 = line.0.min(id);
        line.1 = line.1.min(message_id);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT id, message_id, status FROM deliveries
         WHERE patient_key = ?1 AND destination = ?2 ORDER BY id",
    )?;
    for ((destination, patient_key), &(first, oldest)) in &lines {
        // newer message -> its newest row in the line
        let mut newer: BTreeMap<i64, i64> = BTreeMap::new();
        let mut older_behind = false;
        let mut dead = 0;
        let mut found = stmt.query(params![patient_key, destination])?;
        while let Some(r) = found.next()? {
            let (id, message_id, status): (i64, i64, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
            dead += i64::from(status == "dead" || status == "withheld");
            let own = retried.contains(&id);
            if !(own || status == "delivered" || status == "pending") {
                continue;
            }
            if message_id > oldest {
                newer.insert(message_id, id);
            } else if message_id < oldest && !own && status == "pending" && id > first {
                older_behind = true;
            }
        }
        if newer.is_empty() && older_behind {
            newer.insert(oldest, first);
        }
        plan.dead.push(dead);
        plan.overtaken.extend(
            newer
                .into_iter()
                .map(|(message_id, delivery_id)| Overtaken {
                    retried: first,
                    destination: destination.clone(),
                    message_id,
                    delivery_id,
                }),
        );
    }
    plan.overtaken
        .sort_by(|a, b| (a.message_id, &a.destination).cmp(&(b.message_id, &b.destination)));
    plan.lines = lines.into_keys().collect();
    Ok(plan)
}

/// [`QueueOp::Unchanged`].
fn unchanged(
    tx: &Transaction<'_>,
    retryable: &[i64],
    lines: &[(String, String)],
    dead: &[i64],
    high_water: i64,
) -> Result<QueueOutcome, rusqlite::Error> {
    let mut still = tx.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM deliveries WHERE id = ?1
             AND status IN ('dead', 'withheld') AND NOT (length(document) = 0 AND size > 0))",
    )?;
    for id in retryable {
        if !still.query_row([id], |r| r.get::<_, bool>(0))? {
            return Ok(QueueOutcome::Stale);
        }
    }
    let mut added = tx.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM deliveries
             WHERE patient_key = ?1 AND destination = ?2 AND id > ?3)",
    )?;
    let mut dead_now = tx.prepare_cached(
        "SELECT COUNT(*) FROM deliveries
         WHERE patient_key = ?1 AND destination = ?2 AND status IN ('dead', 'withheld')",
    )?;
    for ((destination, patient_key), &dead) in lines.iter().zip(dead) {
        if added.query_row(params![patient_key, destination, high_water], |r| {
            r.get::<_, bool>(0)
        })? {
            return Ok(QueueOutcome::Stale);
        }
        if dead_now.query_row(params![patient_key, destination], |r| r.get::<_, i64>(0))? != dead {
            return Ok(QueueOutcome::Stale);
        }
    }
    Ok(QueueOutcome::Updated(1))
}

/// The patient's newer messages at a destination than a row's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewerThere {
    /// The row (a replay's, say).
    pub delivery_id: i64,
    pub destination: String,
    /// How many messages are newer (by message id) than the row's, with a
    /// row in its line delivered or pending.
    pub count: usize,
    /// The newest of them, at most [`NEWER_LISTED`], oldest first (the last is
    /// the one to replay after the row).
    pub messages: Vec<i64>,
}

/// How many of the newer messages [`NewerThere`] lists: a patient's line
/// can hold thousands.
pub const NEWER_LISTED: usize = 10;

/// For each of `rows`, the newer messages of its line ([`NewerThere`]); rows
/// with none are left out.
pub(super) fn newer_there(
    conn: &Connection,
    rows: &[i64],
) -> Result<Vec<NewerThere>, rusqlite::Error> {
    let mut row = conn.prepare_cached(
        "SELECT destination, patient_key, message_id FROM deliveries WHERE id = ?1",
    )?;
    let mut newer = conn.prepare_cached(
        "SELECT DISTINCT message_id FROM deliveries
         WHERE patient_key = ?1 AND destination = ?2 AND message_id > ?3
           AND status IN ('delivered', 'pending')
         ORDER BY message_id DESC",
    )?;
    let mut out = Vec::new();
    for &id in rows {
        let Some((destination, patient_key, message_id)) = row
            .query_row([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .optional()?
        else {
            continue;
        };
        let mut count = 0;
        let mut messages = Vec::new();
        for m in newer.query_map(params![patient_key, destination, message_id], |r| r.get(0))? {
            let m: i64 = m?;
            count += 1;
            if messages.len() < NEWER_LISTED {
                messages.push(m);
            }
        }
        messages.reverse();
        if count > 0 {
            out.push(NewerThere {
                delivery_id: id,
                destination,
                count,
                messages,
            });
        }
    }
    Ok(out)
}

pub(super) fn routing_cursor(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.query_row(
        "SELECT COALESCE(MAX(message_id), 0) FROM routings WHERE replay = 0",
        [],
        |r| r.get(0),
    )
}

fn pending_message(row: &rusqlite::Row<'_>) -> Result<PendingMessage, rusqlite::Error> {
    let raw: Vec<u8> = row.get(4)?;
    Ok(PendingMessage {
        id: row.get(0)?,
        listener: row.get(1)?,
        control_id: row.get(2)?,
        message_type: row.get(3)?,
        raw: Bytes::from(raw),
        sender: row.get(5)?,
    })
}

pub(super) fn accepted_after(
    conn: &Connection,
    after: i64,
    limit: u32,
) -> Result<Vec<PendingMessage>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, listener, control_id, message_type, raw, sender FROM messages
         WHERE id > ?1 AND status = 'accepted' ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit], pending_message)?;
    rows.collect()
}

pub(super) fn accepted_message(
    conn: &Connection,
    id: i64,
) -> Result<Option<PendingMessage>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, listener, control_id, message_type, raw, sender FROM messages
         WHERE id = ?1
           AND (status = 'accepted' OR (status = 'rejected' AND resend_of IS NOT NULL))",
    )?;
    stmt.query_row([id], pending_message).optional()
}

pub(super) fn due_deliveries(
    conn: &Connection,
    destination: &str,
    now_ms: i64,
    limit: u32,
) -> Result<Vec<DueDelivery>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT d.id, d.message_id, d.destination, d.patient_key, d.nhs_numbers,
                m.control_id, m.message_type, d.document,
                CASE WHEN d.mapping = '",
        application_ack!(),
        "' THEN d.document ELSE m.raw END,
                d.attempts, d.next_attempt_at, d.age_from, d.created_at
         FROM deliveries d JOIN messages m ON m.id = d.message_id
         WHERE d.destination = ?1 AND d.status = 'pending' AND d.head = 1
           AND d.next_attempt_at <= ?2
         ORDER BY d.next_attempt_at, d.id LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![destination, now_ms, limit], |row| {
        let nhs: String = row.get(4)?;
        let document: Vec<u8> = row.get(7)?;
        let raw: Vec<u8> = row.get(8)?;
        let attempts: i64 = row.get(9)?;
        Ok(DueDelivery {
            id: row.get(0)?,
            message_id: row.get(1)?,
            destination: row.get(2)?,
            patient_key: row.get(3)?,
            nhs_numbers: nhs.split_whitespace().map(str::to_string).collect(),
            control_id: row.get(5)?,
            message_type: row.get(6)?,
            document: Bytes::from(document),
            raw: Bytes::from(raw),
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            next_attempt_at_ms: row.get(10)?,
            age_from_ms: row.get(11)?,
            created_at_ms: row.get(12)?,
        })
    })?;
    rows.collect()
}

pub(super) fn next_due_at(
    conn: &Connection,
    destination: &str,
) -> Result<Option<i64>, rusqlite::Error> {
    conn.prepare_cached(
        "SELECT MIN(next_attempt_at) FROM deliveries
         WHERE destination = ?1 AND status = 'pending' AND head = 1",
    )?
    .query_row([destination], |r| r.get(0))
}

pub(super) fn depths(conn: &Connection) -> Result<Vec<QueueDepth>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT destination, status, COUNT(*),
                CASE WHEN status = 'pending' THEN MIN(created_at) END
         FROM deliveries GROUP BY status, destination ORDER BY destination, status",
    )?;
    let rows = stmt.query_map([], |row| {
        let status: String = row.get(1)?;
        let count: i64 = row.get(2)?;
        Ok(QueueDepth {
            destination: row.get(0)?,
            status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending),
            count: u64::try_from(count).unwrap_or(0),
            oldest_ms: row.get(3)?,
        })
    })?;
    rows.collect()
}

const DELIVERY_COLUMNS: &str = "d.id, d.message_id, d.routing_id, d.destination, d.mapping,
     d.routes, m.control_id, m.message_type, d.status, d.attempts, d.created_at,
     d.next_attempt_at, d.last_error, d.remote_ref, d.delivered_at, d.size";

fn delivery_row(row: &rusqlite::Row<'_>) -> Result<DeliveryRow, rusqlite::Error> {
    let routes: String = row.get(5)?;
    let status: String = row.get(8)?;
    let status = DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending);
    let attempts: i64 = row.get(9)?;
    let created: i64 = row.get(10)?;
    let next: i64 = row.get(11)?;
    let delivered: Option<i64> = row.get(14)?;
    let size: i64 = row.get(15)?;
    Ok(DeliveryRow {
        id: row.get(0)?,
        message_id: row.get(1)?,
        routing_id: row.get(2)?,
        destination: row.get(3)?,
        mapping: row.get(4)?,
        routes: split_list(&routes),
        control_id: row.get(6)?,
        message_type: row.get(7)?,
        status,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        created_at: format_ms(created),
        next_attempt_at: (status == DeliveryStatus::Pending).then(|| format_ms(next)),
        last_error: row.get(12)?,
        remote_ref: row.get(13)?,
        delivered_at: delivered.map(format_ms),
        size_bytes: usize::try_from(size).unwrap_or(0),
    })
}

pub(super) fn deliveries(
    conn: &Connection,
    filter: &DeliveryFilter,
) -> Result<Vec<DeliveryRow>, rusqlite::Error> {
    let mut clauses: Vec<String> = Vec::new();
    let mut values: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(status) = filter.status {
        values.push(status.as_str().to_string().into());
        clauses.push(format!("d.status = ?{}", values.len()));
    }
    if let Some(destination) = filter.destination.as_deref().filter(|d| !d.is_empty()) {
        values.push(destination.to_string().into());
        clauses.push(format!("d.destination = ?{}", values.len()));
    }
    if let Some(message_id) = filter.message_id {
        values.push(message_id.into());
        clauses.push(format!("d.message_id = ?{}", values.len()));
    }
    if let Some(remote_ref) = filter.remote_ref.as_deref().filter(|r| !r.is_empty()) {
        values.push(remote_ref.to_string().into());
        clauses.push(format!("d.remote_ref = ?{}", values.len()));
    }
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let mut sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN messages m ON m.id = d.message_id"
    );
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    sql.push_str(&format!(" ORDER BY d.id DESC LIMIT {limit}"));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(values), delivery_row)?;
    rows.collect()
}

pub(super) fn delivery(conn: &Connection, id: i64) -> Result<Option<DeliveryRow>, rusqlite::Error> {
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN messages m ON m.id = d.message_id
         WHERE d.id = ?1"
    );
    conn.prepare_cached(&sql)?
        .query_row([id], delivery_row)
        .optional()
}

pub(super) fn routings(
    conn: &Connection,
    message_id: i64,
) -> Result<Vec<RoutingRecord>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, message_id, replay, outcome, routes, error, routed_at FROM routings
         WHERE message_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([message_id], |row| {
        let outcome: String = row.get(3)?;
        let routes: String = row.get(4)?;
        let at: i64 = row.get(6)?;
        Ok(RoutingRecord {
            id: row.get(0)?,
            message_id: row.get(1)?,
            replay: row.get(2)?,
            outcome: RoutingOutcome::parse(&outcome),
            routes: split_list(&routes),
            error: row.get(5)?,
            routed_at: format_ms(at),
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_have_fixed_width_so_text_order_is_time_order() {
        assert_eq!(
            super::format_ms(1_795_000_000_410),
            "2026-11-18T11:06:40.410Z"
        );
        assert_eq!(
            super::format_ms(1_795_000_000_000),
            "2026-11-18T11:06:40.000Z"
        );
        let mut times: Vec<String> = [418, 410, 423, 9]
            .iter()
            .map(|ms| super::format_ms(1_795_000_007_000 + ms))
            .collect();
        times.sort();
        assert!(
            times[0].ends_with(":47.009Z") && times[1].ends_with(":47.410Z"),
            "{times:?}"
        );
    }
}
