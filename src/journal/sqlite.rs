//! The SQLite side of the journal: schema, the group-commit writer loop, reads.
//!
//! Schema versions are kept in `PRAGMA user_version`; [`migrate`] brings an
//! older file up to [`SCHEMA_VERSION`] and refuses a newer one.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::db::{self, OpenProblem};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use tokio::sync::mpsc;

use super::{
    Committed, Incoming, JournalError, MessageDetail, MessageQuery, MessageSummary, QueueOp,
    QueueOutcome, Status, SyncPolicy, WriteRequest, WriterState, DEFAULT_LIMIT, MAX_GROUP_BYTES,
    MAX_GROUP_MESSAGES, MAX_LIMIT,
};
use crate::telemetry::metrics::Metrics;

/// The schema this build writes: version 1 (messages), version 2 (routing
/// outcomes and the delivery queue, [`super::queue::SCHEMA_V2`]), version 3
/// (delivered documents dropped, [`super::queue::SCHEMA_V3`]), version 4
/// (deliveries indexed by remote reference, [`super::queue::SCHEMA_V4`]),
/// version 5 (patients' GP registrations, [`super::queue::SCHEMA_V5`]),
/// version 6 (deliveries indexed by patient, [`super::queue::SCHEMA_V6`]),
/// version 7 (queued patients' identifiers, [`super::queue::SCHEMA_V7`]),
/// version 8 (the journal's node id, [`super::queue::SCHEMA_V8`]).
pub(super) const SCHEMA_VERSION: i64 = 8;

pub(super) const SCHEMA_V1: &str = "
CREATE TABLE messages (
    id           INTEGER PRIMARY KEY,
    listener     TEXT NOT NULL,
    peer         TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    sender       TEXT NOT NULL,
    control_id   TEXT NOT NULL,
    message_type TEXT NOT NULL,
    version      TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('accepted', 'rejected', 'garbage')),
    ack_code     TEXT,
    ack          TEXT,
    error        TEXT,
    raw          BLOB NOT NULL,
    size         INTEGER NOT NULL
);
CREATE UNIQUE INDEX messages_accepted_sender_control_id
    ON messages (sender, control_id)
    WHERE status = 'accepted' AND control_id <> '';
CREATE INDEX messages_control_id ON messages (control_id);
";

const FIND_ACCEPTED: &str = "SELECT id, ack_code, ack, raw FROM messages
     WHERE sender = ?1 AND control_id = ?2 AND status = 'accepted' AND control_id <> ''";

/// Inserts a row unless it is an accepted resend (the partial UNIQUE index):
/// then nothing changes and [`FIND_ACCEPTED`] fetches the original.
const INSERT: &str = "INSERT INTO messages
     (listener, peer, received_at, sender, control_id, message_type, version,
      status, ack_code, ack, error, raw, size, resend_of)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
     ON CONFLICT (sender, control_id) WHERE status = 'accepted' AND control_id <> ''
     DO NOTHING";

/// The last column is the latest routing outcome (NULL: not routed yet).
const SUMMARY_COLUMNS: &str =
    "id, listener, sender, control_id, message_type, received_at, ack_code, status,
     (SELECT r.outcome FROM routings r WHERE r.message_id = messages.id ORDER BY r.id DESC LIMIT 1)";

/// Opens the write connection: WAL, the sync policy, the current schema
/// (see [`crate::db`]).
pub(super) fn open_writer(path: &Path, sync: SyncPolicy) -> Result<Connection, JournalError> {
    let migrations = [
        SCHEMA_V1,
        super::queue::SCHEMA_V2,
        super::queue::SCHEMA_V3,
        super::queue::SCHEMA_V4,
        super::queue::SCHEMA_V5,
        super::queue::SCHEMA_V6,
        super::queue::SCHEMA_V7,
        super::queue::SCHEMA_V8,
    ];
    debug_assert_eq!(migrations.len() as i64, SCHEMA_VERSION);
    db::open_writer_migrating(path, sync, &migrations).map_err(|problem| match problem {
        OpenProblem::Sqlite(source) => JournalError::Open {
            path: path.to_path_buf(),
            source,
        },
        OpenProblem::NotWal(mode) => JournalError::NotWal {
            path: path.to_path_buf(),
            mode,
        },
        OpenProblem::SchemaTooNew { found, supported } => {
            JournalError::SchemaTooNew { found, supported }
        }
    })
}

/// Opens a read-only connection.
pub(super) fn open_reader(path: &Path) -> Result<Connection, JournalError> {
    db::open_reader(path).map_err(|source| JournalError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Marks the writer as gone when the loop ends, however it ends.
struct AliveGuard(Arc<WriterState>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
    }
}

/// The writer thread: group commit until every [`super::Journal`] handle is dropped.
pub(super) fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<WriteRequest>,
    state: Arc<WriterState>,
    metrics: Arc<Metrics>,
    accepted: Arc<tokio::sync::Notify>,
) {
    let _guard = AliveGuard(Arc::clone(&state));
    let mut group: Vec<WriteRequest> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut messages = request_items(&first);
        let mut bytes = request_bytes(&first);
        group.push(first);
        // Take whatever else is already waiting: they all share this commit.
        while messages < MAX_GROUP_MESSAGES && bytes < MAX_GROUP_BYTES {
            match rx.try_recv() {
                Ok(req) => {
                    messages += request_items(&req);
                    bytes += request_bytes(&req);
                    group.push(req);
                }
                Err(_) => break,
            }
        }
        // Intake first, in its own transaction: an ACK never waits for the
        // delivery queue's writes (documents can be large). Queue requests
        // that arrived in the same drain follow in a second transaction.
        let (intake, queue): (Vec<WriteRequest>, Vec<WriteRequest>) = group
            .drain(..)
            .partition(|r| matches!(r, WriteRequest::Intake { .. }));
        for part in [intake, queue] {
            if !part.is_empty() {
                commit_and_answer(&mut conn, part, &state, &metrics, &accepted);
            }
        }
    }
    tracing::debug!("journal writer stopped");
}

/// Writes one group in one transaction and answers each of its requests.
fn commit_and_answer(
    conn: &mut Connection,
    mut group: Vec<WriteRequest>,
    state: &WriterState,
    metrics: &Metrics,
    accepted: &tokio::sync::Notify,
) {
    let messages: usize = group.iter().map(request_items).sum();
    let started = Instant::now();
    let result = write_group(conn, &group);
    metrics
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.commit_batch_size.observe(messages as f64);
    match result {
        Ok(outcomes) => {
            // (a group of resends only stores nothing: it shows no room)
            let stored = outcomes.iter().any(|outcome| {
                matches!(outcome, Outcome::Intake(committed)
                    if committed.iter().any(|c| matches!(c, Committed::Stored { .. })))
            });
            state.record(true, stored);
            let mut stored_accepted = false;
            for (req, outcome) in group.drain(..).zip(outcomes) {
                // A waiter that went away (connection closed) still had its
                // rows committed; a resend will be answered as a duplicate.
                match (req, outcome) {
                    (WriteRequest::Intake { items, reply }, Outcome::Intake(outcome)) => {
                        stored_accepted |= items.iter().zip(&outcome).any(|(item, c)| {
                            item.status == Status::Accepted && matches!(c, Committed::Stored { .. })
                        });
                        let _ = reply.send(Ok(outcome));
                    }
                    (WriteRequest::Queue { reply, .. }, Outcome::Queue(result)) => {
                        let _ = reply.send(result);
                    }
                    // write_group answers each request with its own kind.
                    _ => tracing::error!("journal writer: request and outcome kinds differ"),
                }
            }
            if stored_accepted {
                accepted.notify_one();
            }
        }
        Err(err) => {
            state.record(false, false);
            tracing::error!(error = %err, messages, "journal commit failed");
            let err = Arc::new(err);
            for req in group.drain(..) {
                let failed = JournalError::Commit(Arc::clone(&err));
                match req {
                    WriteRequest::Intake { reply, .. } => {
                        let _ = reply.send(Err(failed));
                    }
                    WriteRequest::Queue { reply, .. } => {
                        let _ = reply.send(Err(failed));
                    }
                }
            }
        }
    }
}

fn request_items(req: &WriteRequest) -> usize {
    match req {
        WriteRequest::Intake { items, .. } => items.len(),
        WriteRequest::Queue { ops, .. } => ops.len(),
    }
}

fn request_bytes(req: &WriteRequest) -> usize {
    match req {
        WriteRequest::Intake { items, .. } => items
            .iter()
            .map(|m| m.raw.len() + m.ack.as_ref().map_or(0, String::len))
            .sum(),
        WriteRequest::Queue { ops, .. } => ops.iter().map(QueueOp::size_bytes).sum(),
    }
}

/// What [`write_group`] did for one request.
enum Outcome {
    Intake(Vec<Committed>),
    /// A queue request that failed was rolled back alone (its savepoint).
    Queue(Result<Vec<QueueOutcome>, JournalError>),
}

/// Writes every request of a group in one transaction.
fn write_group(
    conn: &mut Connection,
    group: &[WriteRequest],
) -> Result<Vec<Outcome>, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(group.len());
    {
        let mut find = tx.prepare_cached(FIND_ACCEPTED)?;
        let mut insert = tx.prepare_cached(INSERT)?;
        for req in group {
            match req {
                WriteRequest::Intake { items, .. } => {
                    let mut results = Vec::with_capacity(items.len());
                    for item in items {
                        results.push(write_one(&tx, &mut find, &mut insert, item)?);
                    }
                    outcomes.push(Outcome::Intake(results));
                }
                WriteRequest::Queue { ops, .. } => {
                    tx.execute_batch("SAVEPOINT queue_request")?;
                    match super::queue::apply(&tx, ops) {
                        Ok(done) if done.last() == Some(&super::queue::QueueOutcome::Stale) => {
                            tx.execute_batch("ROLLBACK TO queue_request; RELEASE queue_request")?;
                            outcomes.push(Outcome::Queue(Ok(done)));
                        }
                        Ok(done) => {
                            tx.execute_batch("RELEASE queue_request")?;
                            outcomes.push(Outcome::Queue(Ok(done)));
                        }
                        Err(err) => {
                            tx.execute_batch("ROLLBACK TO queue_request; RELEASE queue_request")?;
                            tracing::error!(error = %err, "delivery queue write failed");
                            outcomes.push(Outcome::Queue(Err(JournalError::Commit(Arc::new(err)))));
                        }
                    }
                }
            }
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Inserts `item` with the given status, ACK and error, and (for a kept
/// differing resend) the id of the message it collided with (the INSERT does
/// nothing for an accepted resend); the rows changed.
fn insert_row(
    insert: &mut rusqlite::CachedStatement<'_>,
    item: &Incoming,
    status: Status,
    ack_code: Option<&str>,
    ack: Option<&str>,
    error: Option<&str>,
    resend_of: Option<i64>,
) -> Result<usize, rusqlite::Error> {
    insert.execute(params![
        item.listener,
        item.peer,
        format_timestamp(item.received_at),
        item.sender,
        item.control_id,
        item.message_type,
        item.version,
        status.as_str(),
        ack_code,
        ack,
        error,
        &item.raw[..],
        // A frame is bounded by max_message_bytes, far below i64::MAX.
        item.raw.len() as i64,
        resend_of,
    ])
}

fn write_one(
    tx: &rusqlite::Transaction<'_>,
    find: &mut rusqlite::CachedStatement<'_>,
    insert: &mut rusqlite::CachedStatement<'_>,
    item: &Incoming,
) -> Result<Committed, rusqlite::Error> {
    let changed = insert_row(
        insert,
        item,
        item.status,
        item.ack_code.as_deref(),
        item.ack.as_deref(),
        item.error.as_deref(),
        None,
    )?;
    if changed == 1 {
        return Ok(Committed::Stored {
            id: tx.last_insert_rowid(),
        });
    }
    // Only an accepted message with a control id can conflict: a resend.
    let (id, ack_code, ack, raw): (i64, Option<String>, Option<String>, Vec<u8>) = find
        .query_row(params![item.sender, item.control_id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?;
    // A "resend" that is another message (a sender whose control ids started
    // again after a restart, say) is still answered and not processed, as
    // resends are; its bytes are kept as a rejected row that says so, so it
    // is seen rather than lost without a trace.
    let differing = if crate::hl7::same_message(&raw, &item.raw) {
        None
    } else if let Some(kept) = kept_before(tx, item, id)? {
        // this very copy was kept before (sent again after a lost ACK, or a
        // MESH message downloaded again after a crash before its
        // acknowledge): the row it has, not another
        Some(kept)
    } else {
        let error = format!(
            "a resend of message {id} (the same MSH-3/MSH-4 and MSH-10) whose content \
             differs: not processed, answered with that message's ACK; does the sender \
             reuse control ids? `junction replay` of this row processes it"
        );
        // the ACK this copy gets: the original's, or (the original asked for
        // none, MSH-15 NE) the one built for this copy, which is sent now
        let (sent_code, sent) = match &ack {
            Some(_) => (ack_code.as_deref(), ack.as_deref()),
            None => (item.ack_code.as_deref(), item.ack.as_deref()),
        };
        insert_row(
            insert,
            item,
            Status::Rejected,
            sent_code,
            sent,
            Some(&error),
            Some(id),
        )?;
        Some(tx.last_insert_rowid())
    };
    Ok(Committed::Duplicate {
        id,
        ack_code,
        ack,
        differing,
    })
}

/// The row that already keeps `item` as a differing resend of message
/// `original`, if there is one (the same message, by `hl7::same_message`).
fn kept_before(
    tx: &rusqlite::Transaction<'_>,
    item: &Incoming,
    original: i64,
) -> Result<Option<i64>, rusqlite::Error> {
    let mut stmt = tx.prepare_cached(
        "SELECT id, raw FROM messages WHERE control_id = ?1 AND sender = ?2 AND resend_of = ?3",
    )?;
    let rows = stmt.query_map(params![item.control_id, item.sender, original], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
    })?;
    for row in rows {
        let (id, raw) = row?;
        if crate::hl7::same_message(&raw, &item.raw) {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// RFC 3339 in UTC with fixed microsecond precision, so text order is time order.
pub(super) fn format_timestamp(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// `column = ?n`, or, for a value without `^`, also every `value^…`.
fn component_match(column: &str, value: &str, n: usize) -> String {
    if value.contains('^') {
        format!("{column} = ?{n}")
    } else {
        format!("({column} = ?{n} OR substr({column}, 1, length(?{n}) + 1) = ?{n} || '^')")
    }
}

pub(super) fn search(
    conn: &Connection,
    q: &MessageQuery,
) -> Result<Vec<MessageSummary>, rusqlite::Error> {
    let mut clauses: Vec<String> = Vec::new();
    let mut values: Vec<String> = Vec::new();
    if let Some(v) = non_empty(&q.control_id) {
        values.push(v.to_string());
        clauses.push(format!("control_id = ?{}", values.len()));
    }
    if let Some(v) = non_empty(&q.sender) {
        values.push(v.to_string());
        clauses.push(component_match("sender", v, values.len()));
    }
    // a remote reference: what a destination called a delivery (a MESH
    // message id), or the MESH message a row came in (its peer's end; the
    // control id of a Bundle journaled before peers named it). Each term has
    // its index (SCHEMA_V4), as the same expression and condition.
    if let Some(v) = non_empty(&q.remote_ref) {
        values.push(v.to_string());
        let n = values.len();
        clauses.push(format!(
            "(id IN (SELECT message_id FROM deliveries WHERE remote_ref = ?{n}) \
             OR (peer LIKE 'mesh:%/%' AND substr(peer, instr(peer, '/') + 1) = ?{n}) \
             OR (control_id = ?{n} AND peer LIKE 'mesh:%'))"
        ));
    }
    if let Some(v) = non_empty(&q.message_type) {
        values.push(v.to_string());
        clauses.push(component_match("message_type", v, values.len()));
    }
    if let Some(v) = non_empty(&q.status) {
        values.push(v.to_ascii_lowercase());
        clauses.push(format!("status = ?{}", values.len()));
    }
    if let Some(v) = non_empty(&q.routing) {
        values.push(v.to_ascii_lowercase());
        clauses.push(format!(
            "(SELECT r.outcome FROM routings r WHERE r.message_id = messages.id \
             ORDER BY r.id DESC LIMIT 1) = ?{}",
            values.len()
        ));
    }
    // received_at is fixed-width UTC text (format_timestamp): it sorts as time
    if let Some(t) = q.since {
        values.push(format_timestamp(t));
        clauses.push(format!("received_at >= ?{}", values.len()));
    }
    if let Some(t) = q.until {
        values.push(format_timestamp(t));
        clauses.push(format!("received_at < ?{}", values.len()));
    }
    if let Some(before) = q.before {
        values.push(before.to_string());
        clauses.push(format!("id < CAST(?{} AS INTEGER)", values.len()));
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM messages");
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(values.iter()), summary_from_row)?;
    rows.collect()
}

fn summary_from_row(row: &rusqlite::Row<'_>) -> Result<MessageSummary, rusqlite::Error> {
    Ok(MessageSummary {
        id: row.get(0)?,
        listener: row.get(1)?,
        sender: row.get(2)?,
        control_id: row.get(3)?,
        message_type: row.get(4)?,
        received_at: row.get(5)?,
        ack_code: row.get::<_, Option<String>>(6)?.unwrap_or_default(),
        status: row.get(7)?,
        routing: row.get(8)?,
    })
}

pub(super) fn get(conn: &Connection, id: i64) -> Result<Option<MessageDetail>, rusqlite::Error> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS}, peer, version, size, raw, ack, error FROM messages WHERE id = ?1"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    stmt.query_row([id], |row| {
        let raw: Vec<u8> = row.get(12)?;
        let size: i64 = row.get(11)?;
        Ok(MessageDetail {
            summary: summary_from_row(row)?,
            peer: row.get(9)?,
            version: row.get(10)?,
            size_bytes: usize::try_from(size).unwrap_or(raw.len()),
            raw: String::from_utf8_lossy(&raw).into_owned(),
            ack: row.get(13)?,
            error: row.get(14)?,
        })
    })
    .optional()
}

/// The raw bytes of one message exactly as stored.
pub(super) fn raw(conn: &Connection, id: i64) -> Result<Option<Vec<u8>>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached("SELECT raw FROM messages WHERE id = ?1")?;
    stmt.query_row([id], |row| row.get(0)).optional()
}
