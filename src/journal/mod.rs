//! The journal: durable intake of every message received, in one SQLite file,
//! and (`queue.rs`, schema versions 2 to 5) each message's routing outcome,
//! the delivery queue, and each patient's GP registration as last routed.
//!
//! Writes go through one dedicated writer thread that owns the write
//! connection and does *group commit*: it blocks for the first request, drains
//! every other request already queued (up to [`MAX_GROUP_MESSAGES`]), writes
//! them all in one transaction, commits (one fsync under `sync = "full"`) and
//! only then answers each waiter. Thirty-two connections waiting at once share
//! one fsync instead of paying for thirty-two. Delivery-queue writes go
//! through the same thread ([`Journal::queue_write`]), committed after the
//! intake drained with them, so the two never contend for SQLite's write
//! lock and an ACK never waits for them. Reads (the HTTP API) use a small
//! pool of separate read-only connections on blocking threads; WAL mode lets
//! them run while the writer writes.
//!
//! It does not parse HL7, build ACKs or decide what is accepted: callers hand
//! in [`Incoming`] rows already assessed, with the ACK they will send.
//!
//! # Invariants
//! - [`Journal::commit`] returns only after the transaction holding its rows
//!   has committed (and, under `sync = "full"`, the WAL has been fsynced).
//!   The listener writes the ACK only after that, so an ACK never precedes
//!   durability. A `kill -9` at any point loses nothing that was committed:
//!   SQLite replays the WAL on the next open.
//! - Raw bytes are stored exactly as received (a BLOB, never re-encoded).
//! - (sender, control id) is unique among accepted messages with a non-empty
//!   control id (a partial UNIQUE index): a resend gets the stored ACK back
//!   ([`Committed::Duplicate`]) and is not stored twice. A "resend" whose
//!   content differs (`hl7::same_message`: a sender reusing control ids) is
//!   answered the same way and not processed, but its bytes are kept as a
//!   rejected row saying so. Rejected and garbage rows are kept for
//!   inspection but take no part in duplicate detection.
//! - The stored ACK is character for character the ACK that was (or will be)
//!   sent, which goes out encoded in the character set its MSH-18 declares
//!   (the sender's own).
//! - The request channel is bounded ([`QUEUE_DEPTH`]): when the disk is slower
//!   than the senders, `commit` waits, and so do the senders for their ACKs.

mod queue;
mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::db::ReaderPool;
use crate::telemetry::metrics::Metrics;

pub use queue::{
    format_ms, DeliveryFilter, DeliveryRow, DeliveryStatus, DueDelivery, NewDelivery, NewRouting,
    NewerThere, Overtaken, PendingMessage, QueueDepth, QueueOp, QueueOutcome, Registration,
    RetryPlan, RetryWhat, RoutingOutcome, RoutingRecord, StoredRegistration, APPLICATION_ACK,
};

/// Most messages written in one group-commit transaction.
pub const MAX_GROUP_MESSAGES: usize = 2048;
/// Most bytes (raw + ACK) written in one group-commit transaction; a single
/// request larger than this still goes through, alone.
pub const MAX_GROUP_BYTES: usize = 32 * 1024 * 1024;
/// Commit requests that may wait for the writer before `commit` blocks.
pub const QUEUE_DEPTH: usize = 4096;
/// Default and largest number of rows a search returns.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;
/// Messages deleted per transaction by [`Journal::prune`].
pub const PRUNE_BATCH: usize = 500;

/// `[store]`: where the journal lives and how hard it syncs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite database file (relative paths are relative to the config file's folder).
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// `full`: fsync on every group commit before any ACK (default). `normal`:
    /// WAL without fsync on commit; a power loss (not a process crash) may lose
    /// the last commits.
    #[serde(default)]
    pub sync: SyncPolicy,
    /// SQLite file of the record store (FHIR resources, objections, API
    /// tokens, audit): its own file, so clinical reads never contend with intake.
    #[serde(default = "default_records_path")]
    pub records: PathBuf,
    /// Retention of the journal, in days: messages older than this whose
    /// story is over are deleted (see [`QueueOp::Prune`]); a message with a
    /// delivery still to make or dead-lettered is kept, however old. Unset
    /// (the default): nothing is ever deleted. The record store is not pruned.
    #[serde(default)]
    pub retain_days: Option<u32>,
    /// `postgres://user@host:port/database`: the record store (records and
    /// their history, the objections register, API tokens, the audit trail)
    /// in this PostgreSQL database instead of `records`, shared by every node
    /// that names it. The journal and the delivery queue stay in `path`.
    #[serde(default)]
    pub url: Option<String>,
    /// Environment variable holding the PostgreSQL password (with `url`).
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the PostgreSQL password, its first line (with `url`).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA the PostgreSQL server's certificate must come from
    /// (with `url`): every connection is then TLS, checked against the URL's host.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

fn default_path() -> PathBuf {
    PathBuf::from("data/junction.db")
}

fn default_records_path() -> PathBuf {
    PathBuf::from("data/records.db")
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_path(),
            sync: SyncPolicy::default(),
            records: default_records_path(),
            retain_days: None,
            url: None,
            password_env: None,
            password_file: None,
            tls_ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    #[default]
    Full,
    Normal,
}

word_enum!(SyncPolicy { "full" => SyncPolicy::Full, "normal" => SyncPolicy::Normal });

impl SyncPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncPolicy::Full => "full",
            SyncPolicy::Normal => "normal",
        }
    }
}

/// A search of the journal (`GET /api/messages`). Empty fields match all.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MessageQuery {
    pub control_id: Option<String>,
    /// `PAS^RAL` (exact), or just `PAS` (every facility of that application).
    pub sender: Option<String>,
    /// `ADT^A01`, or just `ADT`.
    #[serde(rename = "type")]
    pub message_type: Option<String>,
    /// A remote reference: a delivery's (the MESH message id a document was
    /// sent as), or the MESH message id a source's document came in as.
    pub remote_ref: Option<String>,
    /// `accepted`, `rejected` or `garbage`.
    pub status: Option<String>,
    /// The latest routing outcome: `routed`, `unrouted` or `failed`.
    pub routing: Option<String>,
    /// Received at or after this time (inclusive).
    #[serde(skip)]
    pub since: Option<jiff::Timestamp>,
    /// Received before this time (exclusive).
    #[serde(skip)]
    pub until: Option<jiff::Timestamp>,
    /// Default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`].
    pub limit: Option<u32>,
    /// Only messages older than this journal id (exclusive): the cursor of
    /// the next page, which times cannot be (`received_at` repeats).
    #[serde(skip)]
    pub before: Option<i64>,
}

/// One row of a journal search.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MessageSummary {
    pub id: i64,
    pub listener: String,
    /// `MSH-3^MSH-4` as received (empty if there was no usable MSH).
    pub sender: String,
    pub control_id: String,
    #[serde(rename = "type")]
    pub message_type: String,
    /// RFC 3339, UTC.
    pub received_at: String,
    pub ack_code: String,
    /// `accepted`, `rejected` (AR/AE: kept for inspection), `garbage` (framing error).
    pub status: String,
    /// The latest routing outcome (`routed`, `unrouted`, `failed`); `None`
    /// until the pipeline has routed an accepted message (and for rejected ones).
    pub routing: Option<String>,
}

/// One message with its raw content.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MessageDetail {
    #[serde(flatten)]
    pub summary: MessageSummary,
    pub peer: String,
    /// MSH-12 as received (empty if unknown).
    pub version: String,
    pub size_bytes: usize,
    /// The raw bytes, as UTF-8 where they are (lossy otherwise).
    pub raw: String,
    /// The ACK that was sent back, if any.
    pub ack: Option<String>,
    pub error: Option<String>,
}

/// What became of a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Acknowledged with AA/CA (or an enhanced-mode accept without ACK).
    Accepted,
    /// Answered with AR/AE (CR/CE); kept for inspection.
    Rejected,
    /// Not an MLLP frame at all (framing error); the connection was closed.
    Garbage,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Accepted => "accepted",
            Status::Rejected => "rejected",
            Status::Garbage => "garbage",
        }
    }
}

/// One message (or garbage) to journal, assessed and answered beforehand.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Listener id (`[listeners.<id>]`).
    pub listener: String,
    /// Peer socket address.
    pub peer: String,
    pub received_at: jiff::Timestamp,
    /// `MSH-3^MSH-4`, empty when there is no usable MSH.
    pub sender: String,
    /// MSH-10, empty when unknown.
    pub control_id: String,
    /// `ADT^A01`, empty when unknown.
    pub message_type: String,
    /// MSH-12, empty when unknown.
    pub version: String,
    pub status: Status,
    /// AA/AE/AR/CA/CE/CR, or `None` when nothing is sent back.
    pub ack_code: Option<String>,
    /// The ACK text exactly as it will be sent (without MLLP framing).
    pub ack: Option<String>,
    /// What was wrong, for rejected and garbage rows.
    pub error: Option<String>,
    /// The bytes exactly as received (for garbage: the bounded prefix kept).
    pub raw: Bytes,
}

/// The outcome of journaling one [`Incoming`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Stored as a new row.
    Stored { id: i64 },
    /// An accepted message with the same sender and control id was already
    /// journaled: nothing was stored; answer with its ACK.
    Duplicate {
        id: i64,
        ack_code: Option<String>,
        ack: Option<String>,
        /// When the resend's content differs from the original's (apart from
        /// line ends and MSH-7: [`crate::hl7::same_message`]), the id of the
        /// rejected row that keeps its bytes.
        differing: Option<i64>,
    },
}

impl Committed {
    /// The row id of the stored (or original) message.
    pub fn id(&self) -> i64 {
        match self {
            Committed::Stored { id } | Committed::Duplicate { id, .. } => *id,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot create the journal folder {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the journal {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the journal {} is in {mode:?} journal mode, expected \"wal\"", path.display())]
    NotWal { path: PathBuf, mode: String },
    #[error("the journal has schema version {found}, this build supports up to {supported}")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("journal commit failed: {0}")]
    Commit(Arc<rusqlite::Error>),
    #[error("journal read failed: {0}")]
    Read(#[from] rusqlite::Error),
    #[error("cannot start the journal writer thread: {0}")]
    Spawn(std::io::Error),
    #[error("the journal writer has stopped")]
    WriterStopped,
    #[error("journal read task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A request to the writer thread: rows to write and where to answer.
/// Intake and queue requests share the writer (and so never contend for
/// SQLite's write lock); of the requests drained together, the intake ones
/// commit first in one transaction, the queue ones after in another, so an
/// ACK never waits for delivery writes.
enum WriteRequest {
    /// Received messages ([`Journal::commit`]).
    Intake {
        items: Vec<Incoming>,
        reply: oneshot::Sender<Result<Vec<Committed>, JournalError>>,
    },
    /// Routing outcomes and delivery-queue changes ([`Journal::queue_write`]).
    /// Applied under a savepoint: a failing request is rolled back alone and
    /// does not fail the intake sharing its transaction.
    Queue {
        ops: Vec<QueueOp>,
        reply: oneshot::Sender<Result<Vec<QueueOutcome>, JournalError>>,
    },
}

/// How long a failed commit keeps the journal unhealthy when no intake
/// commit has succeeded since. The pipeline's small routing writes can still
/// fit on a disk too full for messages; without the hold, one of them
/// succeeding made the engine ready for a moment while senders got no ACK.
pub const UNHEALTHY_HOLD: std::time::Duration = std::time::Duration::from_secs(10);

/// Shared between the handles and the writer thread.
#[derive(Debug)]
struct WriterState {
    /// False once the writer thread has exited (for whatever reason).
    alive: AtomicBool,
    /// When the writer started; `last_failure_ms` counts from then.
    started: std::time::Instant,
    /// Commits so far (the writer thread numbers each outcome it records).
    commits: AtomicU64,
    /// The number of the last failed commit of any kind (0: none yet), and
    /// 1 + ms since `started` of when it failed.
    last_failure: AtomicU64,
    last_failure_ms: AtomicU64,
    /// The number of the last commit that stored messages (0: none yet).
    last_stored: AtomicU64,
}

impl WriterState {
    fn new() -> WriterState {
        WriterState {
            alive: AtomicBool::new(true),
            started: std::time::Instant::now(),
            commits: AtomicU64::new(0),
            last_failure: AtomicU64::new(0),
            last_failure_ms: AtomicU64::new(0),
            last_stored: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        1 + u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// A commit's outcome (called by the writer thread only, in commit
    /// order); `stored` when it stored messages.
    fn record(&self, ok: bool, stored: bool) {
        let n = self.commits.fetch_add(1, Ordering::AcqRel) + 1;
        if !ok {
            self.last_failure_ms.store(self.now_ms(), Ordering::Release);
            self.last_failure.store(n, Ordering::Release);
        } else if stored {
            self.last_stored.store(n, Ordering::Release);
        }
    }

    /// Healthy unless the writer stopped, or a commit failed less than
    /// [`UNHEALTHY_HOLD`] ago and no intake commit has succeeded since.
    fn healthy(&self) -> bool {
        if !self.alive.load(Ordering::Acquire) {
            return false;
        }
        let failed = self.last_failure.load(Ordering::Acquire);
        if failed == 0 || self.last_stored.load(Ordering::Acquire) > failed {
            return true;
        }
        let failed_at = self.last_failure_ms.load(Ordering::Acquire);
        let hold = u64::try_from(UNHEALTHY_HOLD.as_millis()).unwrap_or(u64::MAX);
        self.now_ms().saturating_sub(failed_at) >= hold
    }
}

/// A handle on the journal. Cheap to clone; every clone talks to the same
/// writer thread. The writer stops when the last handle is dropped.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    sync: SyncPolicy,
    tx: mpsc::Sender<WriteRequest>,
    state: Arc<WriterState>,
    readers: ReaderPool,
    /// Woken after every commit that stored accepted messages: the delivery
    /// pipeline waits on it.
    accepted: Arc<tokio::sync::Notify>,
    /// This journal's own id (schema version 8): the engine node it belongs to.
    node_id: String,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.inner.path)
            .field("sync", &self.inner.sync)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens (creating if needed, with its parent folders) the journal at
    /// `cfg.path` as given (callers resolve relative paths), with its own
    /// metrics registry.
    pub fn open(cfg: &StoreConfig) -> Result<Journal, JournalError> {
        Journal::open_with_metrics(cfg, Arc::new(Metrics::new()))
    }

    /// Like [`Journal::open`], recording commit latency and batch sizes in `metrics`.
    pub fn open_with_metrics(
        cfg: &StoreConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Journal, JournalError> {
        let path = cfg.path.clone();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| JournalError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let conn = sqlite::open_writer(&path, cfg.sync)?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let state = Arc::new(WriterState::new());
        let thread_state = Arc::clone(&state);
        let accepted = Arc::new(tokio::sync::Notify::new());
        let thread_accepted = Arc::clone(&accepted);
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || sqlite::writer_loop(conn, rx, thread_state, metrics, thread_accepted))
            .map_err(JournalError::Spawn)?;
        // Open one reader now so a broken file shows up at start, not at the first search.
        let reader = sqlite::open_reader(&path)?;
        let node_id: String = reader
            .query_row("SELECT id FROM node", [], |row| row.get(0))
            .map_err(|source| JournalError::Open {
                path: path.clone(),
                source,
            })?;
        Ok(Journal {
            inner: Arc::new(Inner {
                path,
                sync: cfg.sync,
                tx,
                state,
                readers: ReaderPool::new(cfg.path.clone(), reader),
                accepted,
                node_id,
            }),
        })
    }

    /// This journal's own id, made once with the file: it names the engine
    /// node that writes it (to the other nodes sharing its record store).
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Bytes an unprivileged writer may still use on the journal's file
    /// system (`statvfs`: available blocks × fragment size); `None` when it
    /// cannot be read.
    pub fn disk_free_bytes(&self) -> Option<u64> {
        use std::os::unix::ffi::OsStrExt;
        let dir = self
            .inner
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a
        // writable statvfs; it is read only when the call succeeded.
        let stat = unsafe {
            if libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) != 0 {
                return None;
            }
            stat.assume_init()
        };
        stat.f_bavail.checked_mul(stat.f_frsize)
    }

    pub fn sync_policy(&self) -> SyncPolicy {
        self.inner.sync
    }

    /// True while the writer thread runs, unless a commit failed (a full
    /// disk) less than [`UNHEALTHY_HOLD`] ago and no commit of messages has
    /// succeeded since.
    pub fn is_healthy(&self) -> bool {
        self.inner.state.healthy()
    }

    /// Journals `items` durably, in order, and says for each whether it was
    /// stored or is a duplicate of an accepted message. Returns only once the
    /// commit is durable (per the sync policy). Several callers' items share
    /// one transaction when they arrive together.
    pub async fn commit(&self, items: Vec<Incoming>) -> Result<Vec<Committed>, JournalError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(WriteRequest::Intake { items, reply })
            .await
            .map_err(|_| JournalError::WriterStopped)?;
        answer.await.map_err(|_| JournalError::WriterStopped)?
    }

    /// Applies routing outcomes and delivery-queue changes in one transaction
    /// (shared with other queue requests waiting at the same time, after the
    /// intake waiting with them). All of `ops` are applied, or none. Returns
    /// once durable.
    pub async fn queue_write(&self, ops: Vec<QueueOp>) -> Result<Vec<QueueOutcome>, JournalError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(WriteRequest::Queue { ops, reply })
            .await
            .map_err(|_| JournalError::WriterStopped)?;
        answer.await.map_err(|_| JournalError::WriterStopped)?
    }

    /// Deletes the messages received before `before` whose story is over
    /// ([`QueueOp::Prune`]), in transactions of [`PRUNE_BATCH`] so intake's
    /// commits interleave with them. Returns how many were deleted.
    pub async fn prune(&self, before: jiff::Timestamp) -> Result<usize, JournalError> {
        let before = sqlite::format_timestamp(before);
        let mut total = 0;
        loop {
            let outcome = self
                .queue_write(vec![QueueOp::Prune {
                    before: before.clone(),
                    limit: PRUNE_BATCH,
                }])
                .await?;
            let n = match outcome.first() {
                Some(QueueOutcome::Updated(n)) => *n,
                _ => 0,
            };
            total += n;
            if n < PRUNE_BATCH {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Notified after each commit that stored accepted messages (a permit is
    /// kept when nobody waits, so no commit is missed by a single waiter).
    pub fn accepted_notify(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.inner.accepted)
    }

    /// The last message id the pipeline routed (not counting replays); 0 when none.
    pub async fn routing_cursor(&self) -> Result<i64, JournalError> {
        self.with_reader(queue::routing_cursor).await
    }

    /// The GP registrations learned under any of a patient's `keys`: (key,
    /// the message it was learned from, a JSON array of Identifiers). Read on
    /// the calling thread: for the pipeline's routing, which runs on a
    /// background thread already.
    pub fn registrations_blocking(
        &self,
        keys: &[String],
    ) -> Result<Vec<StoredRegistration>, JournalError> {
        self.inner.readers.with(sqlite::open_reader, |conn| {
            queue::registrations(conn, keys).map_err(JournalError::Read)
        })
    }

    /// Accepted messages after `after`, in id order, at most `limit`.
    pub async fn accepted_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<PendingMessage>, JournalError> {
        self.with_reader(move |conn| queue::accepted_after(conn, after, limit))
            .await
    }

    /// One accepted message (for a replay), or a differing resend kept as
    /// rejected (a new message under a reused control id: replaying it is
    /// how it gets processed once someone has looked); `None` otherwise.
    pub async fn accepted_message(&self, id: i64) -> Result<Option<PendingMessage>, JournalError> {
        self.with_reader(move |conn| queue::accepted_message(conn, id))
            .await
    }

    /// Pending deliveries of `destination` that are due at `now_ms` and head
    /// of their patient's line, soonest first, at most `limit`.
    pub async fn due_deliveries(
        &self,
        destination: String,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<DueDelivery>, JournalError> {
        self.with_reader(move |conn| queue::due_deliveries(conn, &destination, now_ms, limit))
            .await
    }

    /// When the next head-of-line delivery of `destination` is due (unix ms).
    pub async fn next_due_at(&self, destination: String) -> Result<Option<i64>, JournalError> {
        self.with_reader(move |conn| queue::next_due_at(conn, &destination))
            .await
    }

    /// Queue depths per destination and status, with the oldest pending item.
    pub async fn queue_depths(&self) -> Result<Vec<QueueDepth>, JournalError> {
        self.with_reader(queue::depths).await
    }

    /// Deliveries matching `filter`, newest first.
    pub async fn deliveries(
        &self,
        filter: DeliveryFilter,
    ) -> Result<Vec<DeliveryRow>, JournalError> {
        self.with_reader(move |conn| queue::deliveries(conn, &filter))
            .await
    }

    /// What a retry by hand of `what` would queue again, and which later
    /// messages of the same patients after them (see [`queue::retry_plan`]).
    pub async fn retry_plan(&self, what: RetryWhat) -> Result<RetryPlan, JournalError> {
        self.with_reader(move |conn| queue::retry_plan(conn, &what))
            .await
    }

    /// For each of `rows`, the patient's newer messages (by message id)
    /// delivered or pending at its destination ([`queue::newer_there`]).
    pub async fn newer_there(&self, rows: Vec<i64>) -> Result<Vec<NewerThere>, JournalError> {
        self.with_reader(move |conn| queue::newer_there(conn, &rows))
            .await
    }

    /// One delivery row.
    pub async fn delivery(&self, id: i64) -> Result<Option<DeliveryRow>, JournalError> {
        self.with_reader(move |conn| queue::delivery(conn, id))
            .await
    }

    /// Every routing outcome of a message (the first, then replays), oldest first.
    pub async fn routings(&self, message_id: i64) -> Result<Vec<RoutingRecord>, JournalError> {
        self.with_reader(move |conn| queue::routings(conn, message_id))
            .await
    }

    /// The newest messages matching `q`, newest first.
    pub async fn search(&self, q: MessageQuery) -> Result<Vec<MessageSummary>, JournalError> {
        self.with_reader(move |conn| sqlite::search(conn, &q)).await
    }

    /// One message with its raw content and ACK.
    pub async fn get(&self, id: i64) -> Result<Option<MessageDetail>, JournalError> {
        self.with_reader(move |conn| sqlite::get(conn, id)).await
    }

    /// The raw bytes of one message exactly as received (for replay and export).
    pub async fn raw(&self, id: i64) -> Result<Option<Vec<u8>>, JournalError> {
        self.with_reader(move |conn| sqlite::raw(conn, id)).await
    }

    /// Runs `f` on a pooled read connection on a blocking thread.
    async fn with_reader<T, F>(&self, f: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            inner.readers.with(sqlite::open_reader, |conn| {
                f(conn).map_err(JournalError::Read)
            })
        })
        .await?
    }
}

#[cfg(test)]
mod tests;
