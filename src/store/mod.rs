//! The care-record store: applies documents (FHIR R4 transaction Bundles) as
//! versioned records in an embedded SQLite file (`sqlite.rs`), or in a
//! PostgreSQL database that several engine nodes share (`postgres.rs`,
//! `[store] url`), and answers the FHIR reads.
//!
//! A document's entries are upserts by `(resourceType, id)`: each change makes
//! a new version (`meta.versionId` 1, 2, …, `meta.lastUpdated` set here) and
//! every version is kept in a history table. `urn:uuid:` references between
//! entries are rewritten to `Type/id`. Each record remembers the time of the
//! event (HL7 EVN-2 / MSH-7) that wrote it, so an older event arriving late
//! never overwrites newer data. The patient each record belongs to and the
//! identifiers of each Patient are indexed for the searches the FHIR API needs.
//!
//! The same file (or database) keeps the access tables (`access.rs`: API token hashes,
//! the audit trail of FHIR reads, the objections register) so that clinical
//! data and who read it live and are backed up together.
//!
//! It does not route, queue or retry deliveries, check tokens or decide who
//! may read: callers (the store destination, `api::fhir`, `access/`) do
//! that. It never logs resource content.
//!
//! # Invariants
//! - A document is applied whole or not at all: every entry is checked
//!   before anything is written, and a database error rolls the whole
//!   transaction back. ([`RecordStore::apply_bundles`] puts several documents
//!   in one transaction; a wrong document is left out, alone.)
//! - A resource's versions are 1, 2, 3, … without gaps; the current version is
//!   also in the history table, so `history` lists every version.
//! - Applying the same document twice changes nothing the second time: a
//!   resource whose content (without `meta`) equals its current version gets
//!   no new version.
//! - A PUT or DELETE whose event time is older than the stored record's is
//!   skipped for that resource and reported as [`EntryResult::Stale`]. When
//!   either time is unknown, the document is applied (arrival order decides).
//! - Search indexes (patient links, patient identifiers) always describe the
//!   current, non-deleted version of each record.

mod access;
mod apply;
mod plan;
mod postgres;
mod sqlite;
pub use postgres::Copied;
#[doc(hidden)]
pub mod testing;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::db::ReaderPool;
use serde_json::Value;

pub use crate::journal::SyncPolicy;
pub use access::{
    now_instant, AuditEntry, AuditQuery, NewAuditEntry, Objection, ObjectionChange, StoredToken,
    TokenInfo,
};
pub use plan::{is_id, is_resource_type, nhs_number_of};

/// The record store's own settings (`config/` assembles them from `[store]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordStoreConfig {
    /// SQLite database file of the records (its own file, not the journal's).
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// `full`: fsync on every document (default). `normal`: WAL without fsync
    /// on commit; a power loss (not a process crash) may lose the last documents.
    #[serde(default)]
    pub sync: SyncPolicy,
    /// The records in this PostgreSQL database instead of `path` (`[store] url`).
    #[serde(skip)]
    pub postgres: Option<PostgresTarget>,
}

fn default_path() -> PathBuf {
    PathBuf::from("data/records.db")
}

impl Default for RecordStoreConfig {
    fn default() -> Self {
        RecordStoreConfig {
            path: default_path(),
            sync: SyncPolicy::default(),
            postgres: None,
        }
    }
}

impl RecordStoreConfig {
    /// The record store of a `[store]` table: its SQLite file, or the
    /// PostgreSQL database its `url` names.
    pub fn of(store: &crate::journal::StoreConfig) -> RecordStoreConfig {
        RecordStoreConfig {
            path: store.records.clone(),
            sync: store.sync,
            postgres: store.url.as_ref().map(|url| PostgresTarget {
                url: url.clone(),
                password_env: store.password_env.clone(),
                password_file: store.password_file.clone(),
                tls_ca_file: store.tls_ca_file.clone(),
            }),
        }
    }
}

/// A PostgreSQL database for the record store. The password, when the server
/// asks for one, comes from an environment variable or a file, never from
/// the URL (`config/` refuses a URL holding one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresTarget {
    /// `postgres://user@host:port/database` (or a key=value connection string).
    pub url: String,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password (its first line).
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA(s) the server's certificate must come from: with
    /// it, every connection is TLS; without it, plain.
    pub tls_ca_file: Option<PathBuf>,
}

impl PostgresTarget {
    /// The password, read now from the environment or the file.
    fn password(&self) -> Result<Option<String>, StoreError> {
        if let Some(var) = &self.password_env {
            return match std::env::var(var) {
                Ok(value) => Ok(Some(value)),
                Err(_) => Err(StoreError::Password(format!(
                    "the environment variable {var} (password_env) is not set"
                ))),
            };
        }
        if let Some(path) = &self.password_file {
            return match std::fs::read_to_string(path) {
                Ok(text) => Ok(Some(text.lines().next().unwrap_or("").to_string())),
                Err(e) => Err(StoreError::Password(format!(
                    "cannot read the password file {} (password_file): {e}",
                    path.display()
                ))),
            };
        }
        Ok(None)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the record store folder {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the record store {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the record store {} is in {mode:?} journal mode, expected \"wal\"", path.display())]
    NotWal { path: PathBuf, mode: String },
    #[error("the record store has schema version {found}, this build supports up to {supported}")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("record store database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("record store (PostgreSQL): {what}: {source}")]
    Postgres {
        what: String,
        source: ::postgres::Error,
    },
    #[error("record store (PostgreSQL): {0}")]
    Password(String),
    #[error("record store (PostgreSQL): {0}")]
    Tls(String),
    #[error("record store: internal error: {0}")]
    Internal(&'static str),
    #[error("the PostgreSQL record store already holds {rows} row(s) of records, tokens, audit or objections: records are only copied into an empty one")]
    NotEmpty { rows: i64 },
    #[error("the record store is not in PostgreSQL (`[store] url` is not set)")]
    NotPostgres,
    #[error("there is no SQLite record store at {}", path.display())]
    NoSuchFile { path: PathBuf },
    #[error("a stored record is not valid JSON: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("the document is not a Bundle: resourceType is {found}, expected \"Bundle\"")]
    NotABundle { found: String },
    #[error("the Bundle has type {found}, expected \"transaction\"")]
    NotATransaction { found: String },
    #[error("the Bundle's `entry` is not an array")]
    EntriesNotArray,
    #[error("the Bundle's timestamp {found} is not a FHIR instant (e.g. 2026-01-02T10:00:00Z)")]
    InvalidTimestamp { found: String },
    #[error("entry {index}: {problem}")]
    InvalidEntry { index: usize, problem: EntryProblem },
}

impl StoreError {
    /// True when the document itself is wrong: applying it again can never
    /// succeed, so a delivery should dead-letter it rather than retry.
    /// Database errors (disk full, locked, I/O) are worth retrying.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            StoreError::NotABundle { .. }
                | StoreError::NotATransaction { .. }
                | StoreError::EntriesNotArray
                | StoreError::InvalidTimestamp { .. }
                | StoreError::InvalidEntry { .. }
        )
    }
}

/// What is wrong with one entry of a document (inside [`StoreError::InvalidEntry`]).
/// The texts never quote what the sender wrote, beyond words of FHIR's own
/// (a resource type, a Bundle type, an HTTP method: `plan::describe`): they go
/// to the log, the event stream and the delivery's error, and a neighbour's
/// Bundle may carry patient data in any of its values (a conditional URL
/// `Patient?identifier=…|<NHS number>`, a Patient id that is the NHS number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryProblem {
    #[error("not a JSON object")]
    NotAnObject,
    #[error("request.method {method} is not supported, expected PUT or DELETE")]
    UnsupportedMethod { method: String },
    #[error("request.url ({found}) is not a `Type/id` URL")]
    InvalidUrl { found: String },
    #[error("a PUT entry has no resource object")]
    MissingResource,
    #[error("resource.resourceType {found} is not a FHIR R4 resource type")]
    InvalidResourceType { found: String },
    #[error("{found} is not kept in the care record (a server's, identity or definition resource, not a record about a patient or their care)")]
    NotARecordType { found: String },
    #[error("resource.id {found} is not a FHIR id (1-64 of A-Z a-z 0-9 - .)")]
    InvalidId { found: String },
    #[error("request.url ({found}) does not name the entry's resource, expected `{resource_type}/` and its resource.id")]
    UrlMismatch {
        found: String,
        resource_type: String,
    },
    #[error("the {resource_type} is in more than one entry of the Bundle (the same id)")]
    Duplicate { resource_type: String },
    #[error("{path} is not a valid FHIR {expected}")]
    InvalidValue {
        /// Where, by element names (`Encounter.period.start`): never the value.
        path: String,
        expected: &'static str,
    },
    #[error("a `urn:uuid:` reference matches no entry's fullUrl")]
    UnresolvedReference,
    #[error("the Patient holds another NHS number (or none, or a second one): a Patient's NHS number never changes under its id")]
    NhsNumberChanged,
    #[error("the Patient is new here under its own id, but its NHS number is already the record of another Patient: a second record of someone the store knows would split their record (write to the id this store has, or leave the Patient out)")]
    NhsNumberHeldElsewhere,
    #[error("it is filed under a Patient (its subject, patient or target) that is neither in the document nor stored here: a record filed under no one would be found from no one (send the Patient with it, or name one this store has)")]
    UnknownPatient,
    #[error("its subject, patient or target names a Patient by a reference this store cannot resolve (a conditional `Patient?…`, an identifier alone, `patient/` in another case): send `Patient/<id>`, or the Patient with it")]
    UnresolvablePatient,
}

/// What applying one entry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum EntryResult {
    /// A new record, version 1 (or the first version after a delete).
    Created { version: i64 },
    /// A new version of an existing record.
    Updated { version: i64 },
    /// The content equals the current version: no new version.
    Unchanged { version: i64 },
    /// The stored record came from a newer event; this entry was skipped.
    Stale { version: i64 },
    /// A tombstone version was written.
    Deleted { version: i64 },
    /// DELETE of a record that does not exist or is already deleted.
    AlreadyAbsent,
}

/// The outcome for one entry, in the Bundle's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryOutcome {
    pub resource_type: String,
    pub id: String,
    #[serde(flatten)]
    pub result: EntryResult,
}

/// What applying a document did, entry by entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyOutcome {
    pub entries: Vec<EntryOutcome>,
}

impl ApplyOutcome {
    /// Entries that created or updated a record (new versions that are not tombstones).
    pub fn written(&self) -> usize {
        self.count(|r| matches!(r, EntryResult::Created { .. } | EntryResult::Updated { .. }))
    }

    /// Entries skipped because the stored record came from a newer event.
    pub fn stale(&self) -> usize {
        self.count(|r| matches!(r, EntryResult::Stale { .. }))
    }

    /// Entries whose content equalled the current version.
    pub fn unchanged(&self) -> usize {
        self.count(|r| matches!(r, EntryResult::Unchanged { .. }))
    }

    /// Entries that wrote a tombstone.
    pub fn deleted(&self) -> usize {
        self.count(|r| matches!(r, EntryResult::Deleted { .. }))
    }

    fn count(&self, pred: impl Fn(&EntryResult) -> bool) -> usize {
        self.entries.iter().filter(|e| pred(&e.result)).count()
    }
}

/// The ids of the Patients a stored resource belongs to: a Patient's own id,
/// else the `Patient/<id>` references in `subject`, `patient` or `target`.
pub fn patients_of(resource: &Value) -> Vec<String> {
    let resource_type = resource.get("resourceType").and_then(Value::as_str);
    let id = resource.get("id").and_then(Value::as_str);
    match (resource_type, id) {
        (Some(resource_type), Some(id)) => plan::patients_of(resource_type, id, resource),
        _ => Vec::new(),
    }
}

/// One version of a record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    /// `meta.lastUpdated` of this version (FHIR instant, UTC, milliseconds).
    pub last_updated: String,
    /// The event time this version came from, when known.
    pub event_time: Option<jiff::Timestamp>,
    /// The resource with `meta.versionId` and `meta.lastUpdated`; `None` for a
    /// tombstone (a deleted record).
    pub resource: Option<Value>,
}

impl Record {
    pub fn is_deleted(&self) -> bool {
        self.resource.is_none()
    }
}

/// A handle on the record store. Cheap to clone; clones share one write
/// connection (documents are applied one at a time) and a pool of read
/// connections. Every method blocks on SQLite: async callers use
/// `tokio::task::spawn_blocking`.
#[derive(Clone)]
pub struct RecordStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    sync: SyncPolicy,
    backend: Backend,
}

enum Backend {
    Sqlite {
        writer: Mutex<rusqlite::Connection>,
        readers: ReaderPool,
    },
    Postgres(postgres::PgStore),
}

/// The check [`RecordStore::apply_bundle`] makes of each entry's resource's
/// values ([`EntryProblem::InvalidValue`]): where the first value its
/// element's FHIR type does not allow is, and that type
/// (`Encounter.period.start is not a valid FHIR dateTime`); `None` when every
/// value is allowed. (Public for the benchmarks.)
pub fn invalid_value(resource: &serde_json::Value) -> Option<String> {
    crate::mapping::fhir_elements::invalid_value(resource).map(|invalid| {
        EntryProblem::InvalidValue {
            path: invalid.path,
            expected: invalid.expected,
        }
        .to_string()
    })
}

/// Who has a MESH message, among the nodes sharing a record store
/// ([`RecordStore::claim_mesh_message`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshClaim {
    /// Nobody had it: now the asking node has.
    Fresh,
    /// Node `node` (its journal's id; empty: not known yet) claimed it and
    /// has not said it journaled it: it is at work on it, or died before
    /// saying so. Only that node can tell, from its own journal.
    Taking { node: String },
    /// A node journaled it: only its acknowledgement is left.
    Taken,
}

/// Held by [`RecordStore::try_lease`]: the connection whose session holds
/// the lock. Drop it on a blocking thread (a PostgreSQL client's drop blocks).
pub struct Lease {
    _held: Option<Mutex<::postgres::Client>>,
}

impl Lease {
    /// Whether other nodes share it (PostgreSQL): only such a lease can be
    /// lost, so only it is worth checking.
    pub fn is_shared(&self) -> bool {
        self._held.is_some()
    }

    /// Whether the lease is still held: its session answers. A session the
    /// server ended (a restart, a terminated backend) has lost the lock, and
    /// another node may hold it now. Blocking.
    pub fn still_held(&self) -> bool {
        match &self._held {
            None => true,
            Some(client) => {
                let mut client = client.lock().unwrap_or_else(|p| p.into_inner());
                !client.is_closed() && client.simple_query("SELECT 1").is_ok()
            }
        }
    }
}

impl Drop for Lease {
    /// Off the async runtime: the client's drop blocks on a runtime of its own.
    fn drop(&mut self) {
        if let Some(client) = self._held.take() {
            postgres::off_runtime(move || drop(client));
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RecordStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordStore")
            .field("location", &self.location())
            .field("sync", &self.inner.sync)
            .finish_non_exhaustive()
    }
}

impl RecordStore {
    /// Opens (creating if needed, with its parent folders) the store at
    /// `cfg.path` as given (callers resolve relative paths).
    pub fn open(cfg: &RecordStoreConfig) -> Result<RecordStore, StoreError> {
        if let Some(target) = &cfg.postgres {
            let store = postgres::PgStore::open(target, cfg.sync)?;
            return Ok(RecordStore {
                inner: Arc::new(Inner {
                    path: cfg.path.clone(),
                    sync: cfg.sync,
                    backend: Backend::Postgres(store),
                }),
            });
        }
        let path = cfg.path.clone();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let writer = sqlite::open_writer(&path, cfg.sync)?;
        // One reader now, so a broken file shows up at start, not at the first read.
        let reader = sqlite::open_reader(&path)?;
        Ok(RecordStore {
            inner: Arc::new(Inner {
                path,
                sync: cfg.sync,
                backend: Backend::Sqlite {
                    writer: Mutex::new(writer),
                    readers: ReaderPool::new(cfg.path.clone(), reader),
                },
            }),
        })
    }

    /// A lease on `key` among every engine node that shares this store, for
    /// work only one of them may do at a time (polling one MESH inbox):
    /// `None` when another node holds it. In PostgreSQL a session advisory
    /// lock on its own connection, released when the [`Lease`] is dropped or
    /// the node dies (its session ends with it); in SQLite, which one node
    /// alone uses, always granted. Blocking: call it (and drop the lease) on a
    /// blocking thread.
    pub fn try_lease(&self, key: &str) -> Result<Option<Lease>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite { .. } => Ok(Some(Lease { _held: None })),
            Backend::Postgres(pg) => Ok(pg.try_lease(key)?.map(|client| Lease {
                _held: Some(Mutex::new(client)),
            })),
        }
    }

    /// Claims MESH message `message_id` of inbox `source` (the lease key: the
    /// same on every node) for `node` (its journal's id), so that of the
    /// nodes sharing this store one alone journals it, even when one dies
    /// between journaling and acknowledging it. In SQLite, which one node
    /// alone uses (its journal finds a message it took before), always
    /// [`MeshClaim::Fresh`]. Blocking.
    pub fn claim_mesh_message(
        &self,
        source: &str,
        message_id: &str,
        node: &str,
    ) -> Result<MeshClaim, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite { .. } => Ok(MeshClaim::Fresh),
            Backend::Postgres(pg) => pg.claim_mesh_message(source, message_id, node),
        }
    }

    /// Says that a claimed MESH message is journaled: any node may now
    /// acknowledge it, none journals it again. Blocking.
    pub fn mesh_message_taken(&self, source: &str, message_id: &str) -> Result<(), StoreError> {
        match &self.inner.backend {
            Backend::Sqlite { .. } => Ok(()),
            Backend::Postgres(pg) => pg.mesh_message_taken(source, message_id),
        }
    }

    /// Forgets the claim on a MESH message: it was acknowledged or is gone,
    /// or its claimer did not journal it and leaves it to whoever polls next.
    /// Blocking.
    pub fn release_mesh_message(&self, source: &str, message_id: &str) -> Result<(), StoreError> {
        match &self.inner.backend {
            Backend::Sqlite { .. } => Ok(()),
            Backend::Postgres(pg) => pg.release_mesh_message(source, message_id),
        }
    }

    /// Forgets the claims on inbox `source`'s MESH messages made more than
    /// `days` ago: MESH has expired those messages long since (it keeps one
    /// five days), so a claim a node left when it died, or one whose release
    /// failed, does not stay for ever. Blocking.
    pub fn forget_old_mesh_claims(&self, source: &str, days: i32) -> Result<u64, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite { .. } => Ok(0),
            Backend::Postgres(pg) => pg.forget_old_mesh_claims(source, days),
        }
    }

    /// The SQLite file (for a PostgreSQL store, the file it would have used).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Where the records live, for logs and messages: the SQLite file, or
    /// `postgres user@host:port/db` (never a password).
    pub fn location(&self) -> String {
        match &self.inner.backend {
            Backend::Sqlite { .. } => self.inner.path.display().to_string(),
            Backend::Postgres(pg) => pg.describe().to_string(),
        }
    }

    /// Copies every row of the SQLite record store at `path` (upgraded to
    /// the current schema first, if older) into this store's PostgreSQL
    /// database, in one transaction, keeping ids and versions: for a trust
    /// moving a node's records (and its objections register, tokens and
    /// audit trail) to PostgreSQL. Refuses unless this store is PostgreSQL
    /// and still empty.
    pub fn copy_from_sqlite(&self, path: &Path) -> Result<postgres::Copied, StoreError> {
        let Some(pg) = self.postgres() else {
            return Err(StoreError::NotPostgres);
        };
        if !path.is_file() {
            return Err(StoreError::NoSuchFile {
                path: path.to_path_buf(),
            });
        }
        let from = sqlite::open_writer(path, SyncPolicy::Normal)?;
        pg.copy_from(&from)
    }

    /// The PostgreSQL store, when the records live there.
    fn postgres(&self) -> Option<&postgres::PgStore> {
        match &self.inner.backend {
            Backend::Postgres(pg) => Some(pg),
            Backend::Sqlite { .. } => None,
        }
    }

    pub fn sync_policy(&self) -> SyncPolicy {
        self.inner.sync
    }

    /// Applies a FHIR R4 transaction Bundle atomically.
    ///
    /// `event_time` is the time of the event the document describes (HL7
    /// EVN-2, else MSH-7). When `None`, the Bundle's `timestamp` is used if
    /// present (mappings set it to the event time, never to the time of
    /// mapping); otherwise the event time is unknown and the document is
    /// applied in arrival order.
    ///
    /// Errors in the document ([`StoreError::InvalidEntry`] and the other
    /// document errors) are permanent: retrying the same document fails the
    /// same way. Database errors may be transient.
    pub fn apply_bundle(
        &self,
        bundle: &Value,
        event_time: Option<jiff::Timestamp>,
    ) -> Result<ApplyOutcome, StoreError> {
        let plan = plan::plan(bundle, event_time)?;
        // `write` answers one outcome per plan.
        self.write(&[&plan])?
            .pop()
            .unwrap_or_else(|| Ok(ApplyOutcome::default()))
    }

    /// Applies several documents in order in one SQLite transaction, so they
    /// share one fsync (for a delivery that drains a queue in batches).
    ///
    /// Each document is still all-or-nothing: one that is wrong gets its
    /// error in its slot and the others are applied. A database error fails
    /// the whole call and nothing is applied (retry them all).
    pub fn apply_bundles(
        &self,
        documents: &[(&Value, Option<jiff::Timestamp>)],
    ) -> Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError> {
        let planned: Vec<Result<plan::Plan, StoreError>> = documents
            .iter()
            .map(|(bundle, event_time)| plan::plan(bundle, *event_time))
            .collect();
        let plans: Vec<&plan::Plan> = planned.iter().filter_map(|p| p.as_ref().ok()).collect();
        let mut outcomes = self.write(&plans)?.into_iter();
        Ok(planned
            .into_iter()
            .map(|planned| match planned {
                // `write` answers one outcome per plan, in order.
                Ok(_) => outcomes
                    .next()
                    .unwrap_or_else(|| Ok(ApplyOutcome::default())),
                Err(err) => Err(err),
            })
            .collect())
    }

    /// Applies checked plans in one transaction on the write connection: an
    /// outcome per plan, or the error that refused it (a plan the store
    /// refuses while applying it is rolled back alone); a database error
    /// fails them all.
    fn write(
        &self,
        plans: &[&plan::Plan],
    ) -> Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError> {
        if plans.is_empty() {
            return Ok(Vec::new());
        }
        let now = jiff::Timestamp::now();
        let outcomes = match self.postgres() {
            Some(pg) => pg.apply(plans, now)?,
            None => self.with_writer(|conn| sqlite::apply(conn, plans, now))?,
        };
        for outcome in outcomes.iter().flatten() {
            tracing::debug!(
                entries = outcome.entries.len(),
                written = outcome.written(),
                unchanged = outcome.unchanged(),
                stale = outcome.stale(),
                deleted = outcome.deleted(),
                "document applied to the record store"
            );
        }
        Ok(outcomes)
    }

    /// The current version of a record (a tombstone if it was deleted), or
    /// `None` if there never was one.
    pub fn read(&self, resource_type: &str, id: &str) -> Result<Option<Record>, StoreError> {
        if let Some(pg) = self.postgres() {
            return pg.read(resource_type, id);
        }
        self.with_reader(|conn| sqlite::read(conn, resource_type, id))
    }

    /// Every version of a record, newest first (empty if there never was one).
    pub fn history(&self, resource_type: &str, id: &str) -> Result<Vec<Record>, StoreError> {
        if let Some(pg) = self.postgres() {
            return pg.history(resource_type, id);
        }
        self.with_reader(|conn| sqlite::history(conn, resource_type, id))
    }

    /// Current Patients with an identifier `value`, in `system` when given
    /// (`Some("")` matches identifiers without a system), ordered by id.
    pub fn search_patient_by_identifier(
        &self,
        system: Option<&str>,
        value: &str,
    ) -> Result<Vec<Value>, StoreError> {
        if let Some(pg) = self.postgres() {
            return pg.search_patient_by_identifier(system, value);
        }
        self.with_reader(|conn| sqlite::search_patient_by_identifier(conn, system, value))
    }

    /// Current records of `resource_type` that belong to Patient `patient_id`
    /// (by `subject` or `patient`; for `Patient`, the Patient itself), ordered by id.
    pub fn search_by_patient(
        &self,
        resource_type: &str,
        patient_id: &str,
    ) -> Result<Vec<Value>, StoreError> {
        if let Some(pg) = self.postgres() {
            return pg.search_by_patient(resource_type, patient_id);
        }
        self.with_reader(|conn| sqlite::search_by_patient(conn, resource_type, patient_id))
    }

    /// The Patient followed by every current record that belongs to it
    /// (ordered by type, then id); `None` when the Patient does not exist or
    /// is deleted.
    pub fn everything(&self, patient_id: &str) -> Result<Option<Vec<Value>>, StoreError> {
        if let Some(pg) = self.postgres() {
            return pg.everything(patient_id);
        }
        self.with_reader(|conn| sqlite::everything(conn, patient_id))
    }

    /// Runs `f` on the write connection (one writer at a time in this process;
    /// other processes wait on SQLite's lock up to the busy timeout).
    fn with_writer<T>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Backend::Sqlite { writer, .. } = &self.inner.backend else {
            return Err(StoreError::Internal("a SQLite write on a PostgreSQL store"));
        };
        let mut conn = writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut conn)
    }

    /// Runs `f` on a pooled read connection.
    fn with_reader<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Backend::Sqlite { readers, .. } = &self.inner.backend else {
            return Err(StoreError::Internal("a SQLite read on a PostgreSQL store"));
        };
        readers.with(sqlite::open_reader, f)
    }
}

#[cfg(test)]
mod tests;
