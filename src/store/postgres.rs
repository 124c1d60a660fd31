//! The PostgreSQL side of the record store (`[store] url = "postgres://…"`):
//! the same tables as `sqlite.rs` (records, their history and search indexes;
//! the access tables), in one database that several engine nodes share.
//!
//! What it adds over one SQLite file: every node that names the database
//! reads and writes the same records, objections register, API tokens and
//! audit trail, so a patient's document applied by one node is read on
//! another, an objection added on one is honoured by all, and a token made
//! with `junction token add` on one works on every node's API.
//!
//! With `[store] tls_ca_file` every connection is TLS (rustls), the server's
//! certificate checked against that CA and the URL's host; without it the
//! connection is plain (loopback or a private network only).
//!
//! A pooled connection the server closed meanwhile (a restart, a failover)
//! is noticed at its first use: that call is made once more on a new
//! connection, so a restart of PostgreSQL costs the engine nothing but a
//! reconnect. While the server is down, calls fail (deliveries are retried).
//!
//! What it does not do: the journal and the delivery queue stay in each
//! node's SQLite file (`[store] path`); no client certificate.
//!
//! # Invariants
//! - The schema is created or upgraded in one transaction under an advisory
//!   lock, so nodes starting together do not race; a database whose schema
//!   is newer than this build's is refused, never touched.
//! - Two nodes applying documents that touch the same record serialize on it:
//!   each transaction takes an advisory lock per record (in sorted order, so
//!   two documents never wait on each other in a cycle) before it reads the
//!   record's current version. Versions stay 1, 2, 3, … without gaps.
//!   It also locks each NHS number its Patients hold (`nhs/<digits>`, in the
//!   same sorted order): two records of one person written at once by two
//!   nodes (a neighbour's Patient and ours) take turns, so the second sees
//!   the first and is refused, or retires it.
//! - A change to the objections register is serialized per NHS number the
//!   same way, so its trail row matches what changed.
//! - The password comes from an environment variable or a file, never from
//!   the URL (`config/` refuses a URL holding one); nothing here logs it.
//! - `sync = "full"` sets `synchronous_commit = on` on this store's
//!   connections whatever the server's default (a commit returns after the
//!   server's WAL is flushed); `normal` sets it `off` (a crash of the server
//!   may lose the last commits, never corrupt them).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use postgres::{Client, NoTls, Statement, Transaction};
use serde_json::Value;

use super::access::{
    now_instant, AuditEntry, AuditQuery, NewAuditEntry, Objection, ObjectionChange, StoredToken,
    TokenInfo,
};
use super::apply::{self, Current, Version};
use super::plan::{Op, Plan};
use super::{ApplyOutcome, PostgresTarget, Record, StoreError, SyncPolicy};

/// The schema version this build writes (kept in `junction_schema`): 1, the
/// records and the registers; 2, the MESH messages nodes have claimed
/// ([`SCHEMA_V2`]); 3, every Patient's NHS number indexed as its ten digits
/// too, however it was written (no new table: [`index_nhs_numbers`]); 4, when
/// an Encounter was last admitted and cancelled (`resources.admitted_at`,
/// `resources.cancelled_at`: no longer written or read since 5); 5, what
/// each message sent of an Encounter ([`SCHEMA_V5`], see [`apply::Sent`]).
const SCHEMA_VERSION: i64 = 5;

/// Version 5: what each message sent of a record, as it was sent (an
/// Encounter's, so one arriving late is put in its place among them), in
/// arrival order (`seq`).
const SCHEMA_V5: &str = "
CREATE TABLE IF NOT EXISTS sent (
    seq        BIGSERIAL PRIMARY KEY,
    type       TEXT NOT NULL,
    id         TEXT NOT NULL,
    event_time BIGINT,
    event      TEXT,
    seed       BOOLEAN NOT NULL,
    content    TEXT
);
CREATE INDEX IF NOT EXISTS sent_record ON sent (type, id, event_time, seq);
";

/// Idle connections kept for reuse.
const IDLE_CONNECTIONS: usize = 8;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The advisory lock the schema migration holds (an arbitrary constant: "JNCT").
const SCHEMA_LOCK: i64 = 0x4A4E_4354;

const SCHEMA_V1: &str = "
CREATE TABLE resources (
    type         TEXT NOT NULL,
    id           TEXT NOT NULL,
    version      BIGINT NOT NULL,
    last_updated TEXT NOT NULL,
    event_time   BIGINT,
    deleted      BOOLEAN NOT NULL,
    content      TEXT,
    PRIMARY KEY (type, id)
);
CREATE TABLE history (
    type         TEXT NOT NULL,
    id           TEXT NOT NULL,
    version      BIGINT NOT NULL,
    last_updated TEXT NOT NULL,
    event_time   BIGINT,
    deleted      BOOLEAN NOT NULL,
    content      TEXT,
    PRIMARY KEY (type, id, version)
);
CREATE TABLE patient_links (
    patient_id TEXT NOT NULL,
    type       TEXT NOT NULL,
    id         TEXT NOT NULL,
    PRIMARY KEY (patient_id, type, id)
);
CREATE INDEX patient_links_resource ON patient_links (type, id);
CREATE TABLE patient_identifiers (
    value      TEXT NOT NULL,
    system     TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    PRIMARY KEY (value, system, patient_id)
);
CREATE INDEX patient_identifiers_patient ON patient_identifiers (patient_id);
CREATE TABLE api_tokens (
    name         TEXT PRIMARY KEY,
    role         TEXT NOT NULL,
    hash         BYTEA NOT NULL UNIQUE CHECK (length(hash) = 32),
    created_at   TEXT NOT NULL,
    last_used_at TEXT
);
CREATE TABLE audit (
    id         BIGSERIAL PRIMARY KEY,
    at         TEXT NOT NULL,
    token_name TEXT,
    role       TEXT,
    method     TEXT NOT NULL,
    path       TEXT NOT NULL,
    query      TEXT,
    patients   TEXT NOT NULL,
    status     INTEGER NOT NULL,
    purpose    TEXT NOT NULL
);
CREATE INDEX audit_token ON audit (token_name, id);
CREATE TABLE audit_patients (
    patient_id TEXT NOT NULL,
    audit_id   BIGINT NOT NULL,
    PRIMARY KEY (patient_id, audit_id)
);
CREATE TABLE objections (
    nhs_number TEXT PRIMARY KEY,
    note       TEXT,
    added_at   TEXT NOT NULL
);
CREATE TABLE objection_changes (
    id         BIGSERIAL PRIMARY KEY,
    at         TEXT NOT NULL,
    nhs_number TEXT NOT NULL,
    action     TEXT NOT NULL CHECK (action IN ('added', 'note changed', 'removed')),
    note       TEXT,
    changed_by TEXT NOT NULL
);
CREATE INDEX objection_changes_number ON objection_changes (nhs_number, id);
";

/// The MESH messages engine nodes have claimed and not yet seen acknowledged:
/// `taking` while the claiming node journals one, `taken` once it has (then
/// only its acknowledgement is left, which any node may do). A row lives
/// from a message's claim to its acknowledgement.
const SCHEMA_V2: &str = "
CREATE TABLE mesh_claims (
    source     TEXT NOT NULL,
    message_id TEXT NOT NULL,
    node       TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('taking', 'taken')),
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source, message_id)
);
";

/// A small pool of connections to one database.
pub(super) struct PgStore {
    config: postgres::Config,
    /// TLS to the server (`tls_ca_file`), else plain.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    sync: SyncPolicy,
    /// `user@host:port/db`, for messages (never the password).
    describe: String,
    idle: Mutex<Vec<Conn>>,
}

/// A pooled connection, with the statements `apply` runs prepared on it
/// (once, at its first `apply`): one round trip each instead of two; and the
/// statements the FHIR reads and the audit trail run, prepared at their first
/// use on it (`with_statements`).
struct Conn {
    client: Client,
    prepared: Option<Prepared>,
    statements: HashMap<&'static str, Statement>,
}

/// The statements of [`apply::Rows`] on one connection.
struct Prepared {
    lock: Statement,
    current: Statement,
    write_version: Statement,
    set_event_time: Statement,
    record_sent: Statement,
    sent_count: Statement,
    forget_sent: Statement,
    sent: Statement,
    unlink: Statement,
    link: Statement,
    unindex: Statement,
    index: Statement,
}

impl Prepared {
    fn new(client: &mut Client) -> Result<Prepared, postgres::Error> {
        Ok(Prepared {
            // the keys come sorted: locks are taken in array order
            lock: client.prepare(
                "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest($1::TEXT[]) AS k",
            )?,
            current: client.prepare(
                "SELECT version, event_time, content FROM resources
                 WHERE type = $1 AND id = $2",
            )?,
            // the current row and its history row in one statement
            write_version: client.prepare(
                "WITH current AS (
                     INSERT INTO resources
                         (type, id, version, last_updated, event_time, deleted, content)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (type, id) DO UPDATE SET
                         version = excluded.version, last_updated = excluded.last_updated,
                         event_time = excluded.event_time, deleted = excluded.deleted,
                         content = excluded.content
                     RETURNING type, id, version, last_updated, event_time, deleted, content)
                 INSERT INTO history (type, id, version, last_updated, event_time, deleted, content)
                 SELECT * FROM current",
            )?,
            set_event_time: client
                .prepare("UPDATE resources SET event_time = $3 WHERE type = $1 AND id = $2")?,
            record_sent: client.prepare(
                "INSERT INTO sent (type, id, event_time, event, seed, content)
                 SELECT $1, $2, $3, $4, $5, $6
                 WHERE NOT EXISTS (
                     SELECT 1 FROM sent WHERE type = $1 AND id = $2
                         AND event_time IS NOT DISTINCT FROM $3
                         AND event IS NOT DISTINCT FROM $4 AND seed = $5
                         AND content IS NOT DISTINCT FROM $6)",
            )?,
            sent_count: client.prepare("SELECT count(*) FROM sent WHERE type = $1 AND id = $2")?,
            forget_sent: client
                .prepare("DELETE FROM sent WHERE type = $1 AND id = $2 AND seq = ANY($3)")?,
            // (the events that cancel another: `apply::CANCELLATIONS`)
            sent: client.prepare(
                "SELECT seq, event_time, event, seed, content FROM sent WHERE type = $1 AND id = $2
                 ORDER BY event_time ASC NULLS FIRST,
                     coalesce(event IN ('A11', 'A12', 'A13', 'A38'), false), seq",
            )?,
            unlink: client.prepare("DELETE FROM patient_links WHERE type = $1 AND id = $2")?,
            // the patients given and, for a record other than a Patient, the
            // Patient that replaced any of them that was retired
            link: client.prepare(
                "INSERT INTO patient_links (patient_id, type, id)
                 SELECT p, $2, $3 FROM (
                     SELECT unnest($1::TEXT[]) AS p
                     UNION
                     SELECT l.patient_id FROM patient_links l
                     WHERE $2 <> 'Patient' AND l.type = 'Patient'
                       AND l.id = ANY($1::TEXT[]) AND l.patient_id <> l.id
                 ) AS s",
            )?,
            unindex: client.prepare("DELETE FROM patient_identifiers WHERE patient_id = $1")?,
            index: client.prepare(
                "INSERT INTO patient_identifiers (value, system, patient_id)
                 SELECT DISTINCT v, s, $3 FROM unnest($1::TEXT[], $2::TEXT[]) AS i (v, s)",
            )?,
        })
    }
}

impl PgStore {
    /// Connects (once, so a wrong URL or password shows up at start) and
    /// creates or upgrades the schema.
    pub(super) fn open(target: &PostgresTarget, sync: SyncPolicy) -> Result<PgStore, StoreError> {
        // The engine opens its store from async code (`engine::start`);
        // every other call comes from blocking threads, as for SQLite.
        off_runtime(|| PgStore::open_here(target, sync))
    }

    fn open_here(target: &PostgresTarget, sync: SyncPolicy) -> Result<PgStore, StoreError> {
        let mut config: postgres::Config =
            target
                .url
                .parse()
                .map_err(|source: postgres::Error| StoreError::Postgres {
                    what: "the url is not a PostgreSQL connection URL".to_string(),
                    source,
                })?;
        if let Some(password) = target.password()? {
            config.password(password);
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("junction");
        }
        let tls = match &target.tls_ca_file {
            Some(ca_file) => {
                // a CA given means TLS wanted: never fall back to plain
                config.ssl_mode(postgres::config::SslMode::Require);
                let client = crate::mllp::tls::client_config_trusting("tls_ca_file", ca_file)
                    .map_err(|e| StoreError::Tls(e.to_string()))?;
                Some(tokio_postgres_rustls::MakeRustlsConnect::new(client))
            }
            None => None,
        };
        let mut describe = describe(&config);
        if tls.is_some() {
            describe.push_str(" (TLS)");
        }
        let store = PgStore {
            config,
            tls,
            sync,
            describe,
            idle: Mutex::new(Vec::new()),
        };
        let mut conn = store.connect()?;
        migrate(&mut conn.client).map_err(|failure| match failure {
            Failure::Db(e) => store.error("cannot create the schema", e),
            Failure::Store(e) => e,
        })?;
        store.idle().push(conn);
        Ok(store)
    }

    /// `postgres user@host:port/db`.
    pub(super) fn describe(&self) -> &str {
        &self.describe
    }

    /// The error, with the server's SQLSTATE when it gave one (`23514`: a
    /// check violation; `57P01`: the server shut the connection): enough to
    /// tell causes apart, never the server's message or detail, which can
    /// quote the row (patient data).
    fn error(&self, what: &str, source: postgres::Error) -> StoreError {
        let state = source
            .code()
            .map(|c| format!(", SQLSTATE {}", c.code()))
            .unwrap_or_default();
        StoreError::Postgres {
            what: format!("{what} ({}){state}", self.describe),
            source,
        }
    }

    fn connect(&self) -> Result<Conn, StoreError> {
        let connected = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        };
        let mut client = connected.map_err(|e| self.error("cannot connect", e))?;
        // the fsync policy is the config's, whatever the server's default
        let policy = match self.sync {
            SyncPolicy::Full => "SET synchronous_commit = on",
            SyncPolicy::Normal => "SET synchronous_commit = off",
        };
        client
            .batch_execute(policy)
            .map_err(|e| self.error("cannot set synchronous_commit", e))?;
        Ok(Conn {
            client,
            prepared: None,
            statements: HashMap::new(),
        })
    }

    /// A session advisory lock on `key` (`hashtext`, in a namespace of its
    /// own), on a connection of its own that holds it: `None` when another
    /// session holds it.
    pub(super) fn try_lease(&self, key: &str) -> Result<Option<Client>, StoreError> {
        let mut conn = self.connect()?;
        let held: bool = conn
            .client
            .query_one(
                "SELECT pg_try_advisory_lock(7265, hashtext($1))",
                &[&format!("junction:lease:{key}")],
            )
            .map_err(|e| self.error("cannot take a lease", e))?
            .get(0);
        Ok(held.then_some(conn.client))
    }

    /// Claims MESH message `message_id` of `source` for `node`, or says who
    /// has it (see [`super::MeshClaim`]). One statement: the claim, else the
    /// row that was there.
    pub(super) fn claim_mesh_message(
        &self,
        source: &str,
        message_id: &str,
        node: &str,
    ) -> Result<super::MeshClaim, StoreError> {
        self.with("cannot claim a MESH message", |client| {
            let rows = client.query(
                "WITH ins AS (
                     INSERT INTO mesh_claims (source, message_id, node, state)
                     VALUES ($1, $2, $3, 'taking')
                     ON CONFLICT (source, message_id) DO NOTHING
                     RETURNING node, state, true AS fresh)
                 SELECT node, state, fresh FROM ins
                 UNION ALL
                 SELECT node, state, false FROM mesh_claims
                 WHERE source = $1 AND message_id = $2 AND NOT EXISTS (SELECT 1 FROM ins)",
                &[&source, &message_id, &node],
            )?;
            Ok(match rows.first() {
                Some(row) if row.get::<_, bool>(2) => super::MeshClaim::Fresh,
                Some(row) if row.get::<_, &str>(1) == "taken" => super::MeshClaim::Taken,
                Some(row) => super::MeshClaim::Taking {
                    node: row.get::<_, String>(0),
                },
                // claimed by a transaction that had not committed when this
                // statement began: another node's, in this instant
                None => super::MeshClaim::Taking {
                    node: String::new(),
                },
            })
        })
    }

    /// Marks a claimed MESH message journaled (`taken`).
    pub(super) fn mesh_message_taken(
        &self,
        source: &str,
        message_id: &str,
    ) -> Result<(), StoreError> {
        self.on_mesh_claim(
            "cannot mark a MESH message journaled",
            "UPDATE mesh_claims SET state = 'taken' WHERE source = $1 AND message_id = $2",
            source,
            message_id,
        )
    }

    /// Runs `sql` on the claim of `message_id` of `source` (`$1`, `$2`).
    fn on_mesh_claim(
        &self,
        what: &str,
        sql: &str,
        source: &str,
        message_id: &str,
    ) -> Result<(), StoreError> {
        self.with(what, |client| {
            client.execute(sql, &[&source, &message_id])?;
            Ok(())
        })
    }

    /// Forgets the claims on `source`'s messages made more than `days` ago.
    pub(super) fn forget_old_mesh_claims(
        &self,
        source: &str,
        days: i32,
    ) -> Result<u64, StoreError> {
        self.with("cannot forget old MESH claims", |client| {
            Ok(client.execute(
                "DELETE FROM mesh_claims WHERE source = $1 \
                 AND claimed_at < now() - make_interval(days => $2)",
                &[&source, &days],
            )?)
        })
    }

    /// Forgets the claim on a MESH message (acknowledged, gone, or not
    /// journaled by its claimer after all).
    pub(super) fn release_mesh_message(
        &self,
        source: &str,
        message_id: &str,
    ) -> Result<(), StoreError> {
        self.on_mesh_claim(
            "cannot release a MESH message",
            "DELETE FROM mesh_claims WHERE source = $1 AND message_id = $2",
            source,
            message_id,
        )
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Conn>> {
        // A panic while holding the lock cannot leave the Vec inconsistent.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on an idle connection (or a new one), keeping the connection
    /// for the next call unless it broke.
    pub(super) fn with<T>(
        &self,
        what: &str,
        mut f: impl FnMut(&mut Client) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        self.with_conn(what, |conn| f(&mut conn.client))
    }

    /// [`Self::with`], with `sql` prepared on the connection (once per
    /// connection; then each use is one round trip instead of two).
    fn with_statements<T, const N: usize>(
        &self,
        what: &str,
        sql: [&'static str; N],
        mut f: impl FnMut(&mut Client, &[Statement; N]) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        self.with_conn(what, |conn| {
            let mut statements = Vec::with_capacity(N);
            for text in sql {
                let statement = match conn.statements.get(text) {
                    Some(statement) => statement.clone(),
                    None => {
                        let statement = conn.client.prepare(text)?;
                        conn.statements.insert(text, statement.clone());
                        statement
                    }
                };
                statements.push(statement);
            }
            let statements: [Statement; N] = statements
                .try_into()
                .map_err(|_| Failure::Store(StoreError::Internal("statements not prepared")))?;
            f(&mut conn.client, &statements)
        })
    }

    /// [`Self::with`], with the pooled connection's prepared statements.
    fn with_conn<T>(
        &self,
        what: &str,
        mut f: impl FnMut(&mut Conn) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle().pop();
        let (mut conn, reused) = match pooled {
            Some(conn) if !conn.client.is_closed() => (conn, true),
            _ => (self.connect()?, false),
        };
        let mut result = f(&mut conn);
        // A pooled connection the server has closed since (a restart, a
        // failover, an idle timeout) fails at its first use: the call is made
        // once more, on a new connection. (Should the connection have died
        // after a COMMIT reached the server, the call runs twice: applying a
        // document again changes nothing, an audit row would be written twice.)
        if reused && conn.client.is_closed() && matches!(result, Err(Failure::Db(_))) {
            conn = self.connect()?;
            result = f(&mut conn);
        }
        if !conn.client.is_closed() {
            let mut idle = self.idle();
            if idle.len() < IDLE_CONNECTIONS {
                idle.push(conn);
            }
        }
        result.map_err(|failure| match failure {
            Failure::Db(e) => self.error(what, e),
            Failure::Store(e) => e,
        })
    }

    // ---- records ---------------------------------------------------------------

    /// Applies `plans` in order, all in one transaction.
    pub(super) fn apply(
        &self,
        plans: &[&Plan],
        now: jiff::Timestamp,
    ) -> Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError> {
        let last_updated = super::sqlite::instant(now);
        self.with_conn("cannot apply the document", |conn| {
            if conn.prepared.is_none() {
                conn.prepared = Some(Prepared::new(&mut conn.client)?);
            }
            let Conn {
                client, prepared, ..
            } = conn;
            let Some(st) = prepared.as_ref() else {
                return Err(Failure::Store(StoreError::Internal(
                    "statements not prepared",
                )));
            };
            let mut tx = client.transaction()?;
            // Every record these documents touch, and every NHS number their
            // Patients hold, locked in one order: two nodes writing two
            // records of one person (a neighbour's Patient and ours) take
            // turns, so the second sees the first (a refusal, a retirement).
            let mut keys: Vec<String> = Vec::new();
            for entry in plans.iter().flat_map(|p| p.entries.iter()) {
                keys.push(format!("{}/{}", entry.resource_type, entry.id));
                if let Op::Put { identifiers, .. } = &entry.op {
                    let numbers = super::plan::nhs_numbers(identifiers);
                    keys.extend(numbers.into_iter().map(|n| format!("nhs/{n}")));
                }
            }
            keys.sort_unstable();
            keys.dedup();
            tx.execute(&st.lock, &[&keys])?;
            if let [plan] = plans {
                // one document: its transaction is its all-or-nothing
                let mut rows = Rows { tx: &mut tx, st };
                let outcome = apply::apply_plan(&mut rows, plan, &last_updated)?;
                tx.commit()?;
                return Ok(vec![Ok(outcome)]);
            }
            let mut outcomes = Vec::with_capacity(plans.len());
            for plan in plans {
                // each document under a savepoint of its own: one the store
                // refuses while applying it is rolled back alone
                let mut sp = tx.transaction()?;
                let mut rows = Rows { tx: &mut sp, st };
                match apply::apply_plan(&mut rows, plan, &last_updated) {
                    Ok(outcome) => {
                        sp.commit()?;
                        outcomes.push(Ok(outcome));
                    }
                    Err(Failure::Store(err)) if err.is_permanent() => outcomes.push(Err(err)),
                    Err(err) => return Err(err),
                }
            }
            tx.commit()?;
            Ok(outcomes)
        })
    }

    pub(super) fn read(&self, resource_type: &str, id: &str) -> Result<Option<Record>, StoreError> {
        self.with_statements("cannot read a record", [READ], |client, [read]| {
            client
                .query_opt(read, &[&resource_type, &id])?
                .as_ref()
                .map(record_from_row)
                .transpose()
        })
    }

    pub(super) fn history(&self, resource_type: &str, id: &str) -> Result<Vec<Record>, StoreError> {
        self.with("cannot read a record's history", |client| {
            let rows = client.query(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM history WHERE type = $1 AND id = $2
                     ORDER BY version DESC"
                ),
                &[&resource_type, &id],
            )?;
            rows.iter().map(record_from_row).collect()
        })
    }

    pub(super) fn search_patient_by_identifier(
        &self,
        system: Option<&str>,
        value: &str,
    ) -> Result<Vec<Value>, StoreError> {
        const BY_SYSTEM: &str = "SELECT r.content FROM patient_identifiers i
             JOIN resources r ON r.type = 'Patient' AND r.id = i.patient_id
             WHERE i.value = $1 AND i.system = $2 AND NOT r.deleted
             ORDER BY r.id";
        const ANY_SYSTEM: &str = "SELECT r.content
             FROM (SELECT DISTINCT patient_id FROM patient_identifiers WHERE value = $1) i
             JOIN resources r ON r.type = 'Patient' AND r.id = i.patient_id
             WHERE NOT r.deleted
             ORDER BY r.id";
        let sql = if system.is_some() {
            BY_SYSTEM
        } else {
            ANY_SYSTEM
        };
        self.with_statements("cannot search patients", [sql], |client, [search]| {
            let rows = match system {
                Some(system) => client.query(search, &[&value, &system])?,
                None => client.query(search, &[&value])?,
            };
            contents(&rows)
        })
    }

    pub(super) fn search_by_patient(
        &self,
        resource_type: &str,
        patient_id: &str,
    ) -> Result<Vec<Value>, StoreError> {
        const LINKED: &str = "SELECT r.content FROM patient_links l
             JOIN resources r ON r.type = l.type AND r.id = l.id
             WHERE l.patient_id = $1 AND l.type = $2 AND NOT r.deleted
             ORDER BY r.id";
        if resource_type == "Patient" {
            return Ok(self
                .read("Patient", patient_id)?
                .and_then(|r| r.resource)
                .into_iter()
                .collect());
        }
        self.with_statements("cannot search records", [LINKED], |client, [linked]| {
            let rows = client.query(linked, &[&patient_id, &resource_type])?;
            contents(&rows)
        })
    }

    pub(super) fn everything(&self, patient_id: &str) -> Result<Option<Vec<Value>>, StoreError> {
        const LINKED: &str = "SELECT r.content FROM patient_links l
             JOIN resources r ON r.type = l.type AND r.id = l.id
             WHERE l.patient_id = $1 AND l.type <> 'Patient' AND NOT r.deleted
             ORDER BY r.type, r.id";
        self.with_statements(
            "cannot read a patient's records",
            [READ, LINKED],
            |client, [read, linked]| {
                // One snapshot for the Patient and its records.
                let mut tx = client
                    .build_transaction()
                    .isolation_level(postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()?;
                let patient = tx
                    .query_opt(read, &[&"Patient", &patient_id])?
                    .as_ref()
                    .map(record_from_row)
                    .transpose()?
                    .and_then(|record| record.resource);
                let Some(patient) = patient else {
                    return Ok(None);
                };
                let rows = tx.query(linked, &[&patient_id])?;
                let mut resources = vec![patient];
                resources.extend(contents(&rows)?);
                tx.commit()?;
                Ok(Some(resources))
            },
        )
    }

    // ---- access tables ---------------------------------------------------------

    pub(super) fn add_token(
        &self,
        name: &str,
        role: &str,
        hash: &[u8; 32],
    ) -> Result<bool, StoreError> {
        self.with("cannot add a token", |client| {
            let added = client.execute(
                "INSERT INTO api_tokens (name, role, hash, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO NOTHING",
                &[&name, &role, &&hash[..], &now_instant()],
            )?;
            Ok(added == 1)
        })
    }

    pub(super) fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        self.with("cannot revoke a token", |client| {
            Ok(client.execute("DELETE FROM api_tokens WHERE name = $1", &[&name])? == 1)
        })
    }

    pub(super) fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        self.with("cannot list tokens", |client| {
            let rows = client.query(
                "SELECT name, role, created_at, last_used_at FROM api_tokens ORDER BY name",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|row| TokenInfo {
                    name: row.get(0),
                    role: row.get(1),
                    created_at: row.get(2),
                    last_used_at: row.get(3),
                })
                .collect())
        })
    }

    pub(super) fn live_tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        self.with("cannot read tokens", |client| {
            let rows = client.query("SELECT name, role, hash FROM api_tokens", &[])?;
            Ok(rows
                .iter()
                .filter_map(|row| {
                    let hash: Vec<u8> = row.get(2);
                    let hash = <[u8; 32]>::try_from(hash.as_slice()).ok()?;
                    Some(StoredToken {
                        name: row.get(0),
                        role: row.get(1),
                        hash,
                    })
                })
                .collect())
        })
    }

    pub(super) fn touch_token(&self, name: &str) -> Result<(), StoreError> {
        self.with("cannot record a token's use", |client| {
            client.execute(
                "UPDATE api_tokens SET last_used_at = $2 WHERE name = $1",
                &[&name, &now_instant()],
            )?;
            Ok(())
        })
    }

    pub(super) fn append_audit(&self, entry: &NewAuditEntry) -> Result<i64, StoreError> {
        // the row and its patient index in one statement (one round trip, one
        // commit), all or nothing as any statement is
        const APPEND: &str = "WITH entry AS (
                 INSERT INTO audit (at, token_name, role, method, path, query, patients, status, purpose)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id),
             indexed AS (
                 INSERT INTO audit_patients (patient_id, audit_id)
                 SELECT DISTINCT p, entry.id FROM entry, unnest($10::TEXT[]) AS p
                 ON CONFLICT DO NOTHING)
             SELECT id FROM entry";
        let patients = serde_json::to_string(&entry.patients)?;
        self.with_statements(
            "cannot write the audit trail",
            [APPEND],
            |client, [append]| {
                let row = client.query_one(
                    append,
                    &[
                        &entry.at,
                        &entry.token_name,
                        &entry.role,
                        &entry.method,
                        &entry.path,
                        &entry.query,
                        &patients,
                        &i32::from(entry.status),
                        &entry.purpose,
                        &entry.patients,
                    ],
                )?;
                Ok(row.get(0))
            },
        )
    }

    pub(super) fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        const COLUMNS: &str = "a.id, a.at, a.token_name, a.role, a.method, a.path, a.query, \
                               a.patients, a.status, a.purpose";
        let limit = i64::from(query.limit);
        self.with("cannot read the audit trail", |client| {
            let rows = match (&query.patient, &query.token) {
                (Some(patient), token) => client.query(
                    &format!(
                        "SELECT {COLUMNS} FROM audit_patients p JOIN audit a ON a.id = p.audit_id
                         WHERE p.patient_id = $1 AND ($2::TEXT IS NULL OR a.token_name = $2)
                           AND ($4::BIGINT IS NULL OR a.id < $4)
                         ORDER BY a.id DESC LIMIT $3"
                    ),
                    &[patient, token, &limit, &query.before],
                )?,
                (None, Some(token)) => client.query(
                    &format!(
                        "SELECT {COLUMNS} FROM audit a WHERE a.token_name = $1
                           AND ($3::BIGINT IS NULL OR a.id < $3)
                         ORDER BY a.id DESC LIMIT $2"
                    ),
                    &[token, &limit, &query.before],
                )?,
                (None, None) => client.query(
                    &format!(
                        "SELECT {COLUMNS} FROM audit a WHERE ($2::BIGINT IS NULL OR a.id < $2)
                         ORDER BY a.id DESC LIMIT $1"
                    ),
                    &[&limit, &query.before],
                )?,
            };
            let mut entries = Vec::with_capacity(rows.len());
            for row in &rows {
                let patients: String = row.get(7);
                let status: i32 = row.get(8);
                entries.push(AuditEntry {
                    id: row.get(0),
                    entry: NewAuditEntry {
                        at: row.get(1),
                        token_name: row.get(2),
                        role: row.get(3),
                        method: row.get(4),
                        path: row.get(5),
                        query: row.get(6),
                        patients: serde_json::from_str(&patients)?,
                        status: u16::try_from(status).unwrap_or(0),
                        purpose: row.get(9),
                    },
                });
            }
            Ok(entries)
        })
    }

    pub(super) fn add_objection(
        &self,
        nhs_number: &str,
        note: Option<&str>,
        changed_by: &str,
    ) -> Result<bool, StoreError> {
        self.with("cannot change the objections register", |client| {
            let mut tx = client.transaction()?;
            lock_objection(&mut tx, nhs_number)?;
            let existing: Option<Option<String>> = tx
                .query_opt(
                    "SELECT note FROM objections WHERE nhs_number = $1",
                    &[&nhs_number],
                )?
                .map(|row| row.get(0));
            let at = now_instant();
            let change = match &existing {
                Some(old) => match note {
                    Some(note) if old.as_deref() != Some(note) => {
                        tx.execute(
                            "UPDATE objections SET note = $2 WHERE nhs_number = $1",
                            &[&nhs_number, &note],
                        )?;
                        Some("note changed")
                    }
                    _ => None,
                },
                None => {
                    tx.execute(
                        "INSERT INTO objections (nhs_number, note, added_at) VALUES ($1, $2, $3)",
                        &[&nhs_number, &note, &at],
                    )?;
                    Some("added")
                }
            };
            if let Some(action) = change {
                record_change(&mut tx, &at, nhs_number, action, note, changed_by)?;
            }
            tx.commit()?;
            Ok(existing.is_none())
        })
    }

    pub(super) fn remove_objection(
        &self,
        nhs_number: &str,
        changed_by: &str,
    ) -> Result<bool, StoreError> {
        self.with("cannot change the objections register", |client| {
            let mut tx = client.transaction()?;
            lock_objection(&mut tx, nhs_number)?;
            let removed = tx.execute(
                "DELETE FROM objections WHERE nhs_number = $1",
                &[&nhs_number],
            )? == 1;
            if removed {
                record_change(
                    &mut tx,
                    &now_instant(),
                    nhs_number,
                    "removed",
                    None,
                    changed_by,
                )?;
            }
            tx.commit()?;
            Ok(removed)
        })
    }

    pub(super) fn objection_changes(
        &self,
        nhs_number: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ObjectionChange>, StoreError> {
        self.with("cannot read the objections trail", |client| {
            let rows = client.query(
                "SELECT id, at, nhs_number, action, note, changed_by FROM objection_changes
                 WHERE $1::TEXT IS NULL OR nhs_number = $1 ORDER BY id DESC LIMIT $2",
                &[&nhs_number, &i64::from(limit)],
            )?;
            Ok(rows
                .iter()
                .map(|row| ObjectionChange {
                    id: row.get(0),
                    at: row.get(1),
                    nhs_number: row.get(2),
                    action: row.get(3),
                    note: row.get(4),
                    changed_by: row.get(5),
                })
                .collect())
        })
    }

    pub(super) fn list_objections(&self) -> Result<Vec<Objection>, StoreError> {
        self.with("cannot read the objections register", |client| {
            let rows = client.query(
                "SELECT nhs_number, note, added_at FROM objections ORDER BY nhs_number",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|row| Objection {
                    nhs_number: row.get(0),
                    note: row.get(1),
                    added_at: row.get(2),
                })
                .collect())
        })
    }

    pub(super) fn has_objection(&self, nhs_number: &str) -> Result<bool, StoreError> {
        self.with("cannot read the objections register", |client| {
            Ok(client
                .query_opt(
                    "SELECT 1 FROM objections WHERE nhs_number = $1",
                    &[&nhs_number],
                )?
                .is_some())
        })
    }
}

impl Drop for PgStore {
    /// The idle connections are closed off the async runtime: the last handle
    /// on the store may be dropped by async code (the engine shutting down).
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *self.idle());
        off_runtime(move || drop(idle));
    }
}

/// Runs `f` on a thread of its own when called from inside a tokio runtime:
/// the `postgres` client blocks on a runtime of its own, which tokio refuses
/// to start on a thread that drives async tasks.
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|scope| {
        scope
            .spawn(f)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// What [`PgStore::copy_from`] copied: rows per table, in copy order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied(pub Vec<(&'static str, u64)>);

impl Copied {
    /// The rows copied into `table` (0 for a table not copied).
    pub fn rows(&self, table: &str) -> u64 {
        self.0
            .iter()
            .find(|(t, _)| *t == table)
            .map_or(0, |(_, n)| *n)
    }
}

/// The tables [`PgStore::copy_from`] copies, in order, with their columns
/// (the same names in both schemas) and, for the ones with a serial
/// column (an id sequence), that column.
const COPIED: &[(&str, &str, Option<&str>)] = &[
    (
        "resources",
        "type, id, version, last_updated, event_time, deleted, content, admitted_at, cancelled_at",
        None,
    ),
    (
        "history",
        "type, id, version, last_updated, event_time, deleted, content",
        None,
    ),
    ("patient_links", "patient_id, type, id", None),
    ("patient_identifiers", "value, system, patient_id", None),
    (
        "api_tokens",
        "name, role, hash, created_at, last_used_at",
        None,
    ),
    (
        "audit",
        "id, at, token_name, role, method, path, query, patients, status, purpose",
        Some("id"),
    ),
    ("audit_patients", "patient_id, audit_id", None),
    ("objections", "nhs_number, note, added_at", None),
    (
        "objection_changes",
        "id, at, nhs_number, action, note, changed_by",
        Some("id"),
    ),
    (
        "sent",
        "seq, type, id, event_time, event, seed, content",
        Some("seq"),
    ),
];

/// One SQLite value as a PostgreSQL parameter of the column's type.
#[derive(Debug)]
enum Cell {
    Int(Option<i64>),
    Int4(Option<i32>),
    Bool(bool),
    Text(Option<String>),
    Bytes(Vec<u8>),
}

impl postgres::types::ToSql for Cell {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Cell::Int(v) => v.to_sql(ty, out),
            Cell::Int4(v) => v.to_sql(ty, out),
            Cell::Bool(v) => v.to_sql(ty, out),
            Cell::Text(v) => v.to_sql(ty, out),
            Cell::Bytes(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

impl PgStore {
    /// Copies every row of a SQLite record store (schema v5) into this
    /// database, in one transaction, keeping ids; refuses unless this
    /// database holds no record, token, audit row or objection yet.
    pub(super) fn copy_from(&self, from: &rusqlite::Connection) -> Result<Copied, StoreError> {
        self.with("cannot copy the records", |client| {
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
            let present: i64 = tx
                .query_one(
                    "SELECT (SELECT count(*) FROM resources) + (SELECT count(*) FROM api_tokens)
                          + (SELECT count(*) FROM audit) + (SELECT count(*) FROM objections)
                          + (SELECT count(*) FROM objection_changes)",
                    &[],
                )?
                .get(0);
            if present > 0 {
                return Err(Failure::Store(StoreError::NotEmpty { rows: present }));
            }
            let mut copied = Copied::default();
            for (table, columns, sequence) in COPIED {
                let n = copy_table(&mut tx, from, table, columns)?;
                if let Some(serial) = sequence {
                    tx.execute(
                        &format!(
                            "SELECT setval(pg_get_serial_sequence('{table}', '{serial}'),
                                           GREATEST((SELECT max({serial}) FROM {table}), 1))"
                        ),
                        &[],
                    )?;
                }
                copied.0.push((table, n));
            }
            tx.commit()?;
            Ok(copied)
        })
    }
}

/// Copies one table's rows (read from SQLite, each value converted to the
/// PostgreSQL column's type) with one prepared INSERT.
fn copy_table(
    tx: &mut Transaction<'_>,
    from: &rusqlite::Connection,
    table: &str,
    columns: &str,
) -> Result<u64, Failure> {
    let width = columns.split(',').count();
    let placeholders: Vec<String> = (1..=width).map(|i| format!("${i}")).collect();
    let insert = tx.prepare(&format!(
        "INSERT INTO {table} ({columns}) VALUES ({})",
        placeholders.join(", ")
    ))?;
    let types = insert.params().to_vec();
    let mut select = from
        .prepare(&format!("SELECT {columns} FROM {table}"))
        .map_err(|e| Failure::Store(StoreError::Sqlite(e)))?;
    let mut rows = select
        .query([])
        .map_err(|e| Failure::Store(StoreError::Sqlite(e)))?;
    let mut n = 0;
    while let Some(row) = rows
        .next()
        .map_err(|e| Failure::Store(StoreError::Sqlite(e)))?
    {
        let mut cells = Vec::with_capacity(width);
        for (i, ty) in types.iter().enumerate() {
            let value = row
                .get_ref(i)
                .map_err(|e| Failure::Store(StoreError::Sqlite(e)))?;
            cells.push(cell(value, ty));
        }
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> = cells
            .iter()
            .map(|c| c as &(dyn postgres::types::ToSql + Sync))
            .collect();
        tx.execute(&insert, &params)?;
        n += 1;
    }
    Ok(n)
}

/// A SQLite value as the PostgreSQL column type `ty` wants it.
fn cell(value: rusqlite::types::ValueRef<'_>, ty: &postgres::types::Type) -> Cell {
    use postgres::types::Type;
    use rusqlite::types::ValueRef;
    let int = match value {
        ValueRef::Integer(i) => Some(i),
        _ => None,
    };
    let text = match value {
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(r) => Some(r.to_string()),
        ValueRef::Null => None,
    };
    match *ty {
        Type::BOOL => Cell::Bool(int.is_some_and(|i| i != 0)),
        Type::INT8 => Cell::Int(int),
        Type::INT4 => Cell::Int4(int.and_then(|i| i32::try_from(i).ok())),
        Type::BYTEA => Cell::Bytes(match value {
            ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
            _ => Vec::new(),
        }),
        _ => Cell::Text(text),
    }
}

/// What a call inside [`PgStore::with`] failed on.
pub(super) enum Failure {
    Db(postgres::Error),
    Store(StoreError),
}

impl From<postgres::Error> for Failure {
    fn from(e: postgres::Error) -> Self {
        Failure::Db(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Failure::Store(StoreError::Corrupt(e))
    }
}

/// `user@host:port/db` (no password).
fn describe(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres {}@{host}:{port}/{}",
        config.get_user().unwrap_or("?"),
        config.get_dbname().or(config.get_user()).unwrap_or("?")
    )
}

/// Creates the schema on an empty database; refuses a newer one.
fn migrate(client: &mut Client) -> Result<(), Failure> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
    // (no server NOTICE "already exists, skipping" in the log at every start)
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         CREATE TABLE IF NOT EXISTS junction_schema (version BIGINT NOT NULL)",
    )?;
    let found: Option<i64> = tx
        .query_one("SELECT max(version) FROM junction_schema", &[])?
        .get(0);
    let found = found.unwrap_or(0);
    if found > SCHEMA_VERSION {
        // nothing is touched: the transaction rolls back when dropped
        return Err(Failure::Store(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        }));
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    if found < 1 {
        tx.batch_execute(SCHEMA_V1)?;
    }
    if found < 2 {
        tx.batch_execute(SCHEMA_V2)?;
    }
    if found < 3 {
        index_nhs_numbers(&mut tx)?;
    }
    if found < 4 {
        // (rows written before are `NULL`: no admission known)
        tx.batch_execute(
            "ALTER TABLE resources ADD COLUMN IF NOT EXISTS admitted_at BIGINT;
             ALTER TABLE resources ADD COLUMN IF NOT EXISTS cancelled_at BIGINT",
        )?;
    }
    if found < 5 {
        tx.batch_execute(SCHEMA_V5)?;
    }
    tx.execute(
        "INSERT INTO junction_schema (version) VALUES ($1)",
        &[&SCHEMA_VERSION],
    )?;
    tx.commit()?;
    // a new database is no upgrade; an older one is said once
    if found > 0 {
        tracing::info!(
            from = found,
            to = SCHEMA_VERSION,
            "record store (PostgreSQL) schema upgraded"
        );
    }
    Ok(())
}

/// Version 3: indexes every NHS number an older build indexed only as it
/// was written (`943 476 5919`, a system with a trailing `/`) as its ten
/// digits under the NHS number system too, as [`super::plan::identifiers_of`]
/// now does for every write.
fn index_nhs_numbers(tx: &mut Transaction<'_>) -> Result<(), postgres::Error> {
    let rows = tx.query(
        "SELECT value, system, patient_id FROM patient_identifiers",
        &[],
    )?;
    for row in &rows {
        let (value, system, patient): (&str, &str, &str) = (row.get(0), row.get(1), row.get(2));
        if let Some(digits) = super::plan::nhs_number_of(system, value) {
            tx.execute(
                "INSERT INTO patient_identifiers (value, system, patient_id)
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&digits, &crate::route::NHS_NUMBER_SYSTEM, &patient],
            )?;
        }
    }
    Ok(())
}

fn lock_objection(tx: &mut Transaction<'_>, nhs_number: &str) -> Result<(), postgres::Error> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("objection/{nhs_number}")],
    )?;
    Ok(())
}

fn record_change(
    tx: &mut Transaction<'_>,
    at: &str,
    nhs_number: &str,
    action: &str,
    note: Option<&str>,
    changed_by: &str,
) -> Result<(), postgres::Error> {
    tx.execute(
        "INSERT INTO objection_changes (at, nhs_number, action, note, changed_by)
         VALUES ($1, $2, $3, $4, $5)",
        &[&at, &nhs_number, &action, &note, &changed_by],
    )?;
    Ok(())
}

/// The record rows inside a transaction, for [`apply::apply_plan`].
struct Rows<'t, 'c> {
    tx: &'t mut Transaction<'c>,
    st: &'t Prepared,
}

impl apply::Rows for Rows<'_, '_> {
    type Error = Failure;

    fn current(&mut self, resource_type: &str, id: &str) -> Result<Option<Current>, Failure> {
        Ok(self
            .tx
            .query_opt(&self.st.current, &[&resource_type, &id])?
            .map(|row| Current {
                version: row.get(0),
                event_time: row.get(1),
                content: row.get(2),
            }))
    }

    fn write_version(&mut self, v: &Version<'_>) -> Result<(), Failure> {
        self.tx.execute(
            &self.st.write_version,
            &[
                &v.resource_type,
                &v.id,
                &v.version,
                &v.last_updated,
                &v.event_time,
                &v.content.is_none(),
                &v.content,
            ],
        )?;
        Ok(())
    }

    fn set_event_time(
        &mut self,
        resource_type: &str,
        id: &str,
        event_time: Option<i64>,
    ) -> Result<(), Failure> {
        self.tx
            .execute(&self.st.set_event_time, &[&resource_type, &id, &event_time])?;
        Ok(())
    }

    fn record_sent(
        &mut self,
        resource_type: &str,
        id: &str,
        sent: &apply::Sent,
    ) -> Result<(), Failure> {
        self.tx.execute(
            &self.st.record_sent,
            &[
                &resource_type,
                &id,
                &sent.event_time,
                &sent.event,
                &sent.seed,
                &sent.content,
            ],
        )?;
        Ok(())
    }

    fn sent_count(&mut self, resource_type: &str, id: &str) -> Result<i64, Failure> {
        Ok(self
            .tx
            .query_one(&self.st.sent_count, &[&resource_type, &id])?
            .get(0))
    }

    fn forget_sent(&mut self, resource_type: &str, id: &str, seqs: &[i64]) -> Result<(), Failure> {
        self.tx
            .execute(&self.st.forget_sent, &[&resource_type, &id, &seqs])?;
        Ok(())
    }

    fn sent(&mut self, resource_type: &str, id: &str) -> Result<Vec<apply::Sent>, Failure> {
        let rows = self.tx.query(&self.st.sent, &[&resource_type, &id])?;
        Ok(rows
            .iter()
            .map(|row| apply::Sent {
                seq: row.get(0),
                event_time: row.get(1),
                event: row.get(2),
                seed: row.get(3),
                content: row.get(4),
            })
            .collect())
    }

    fn link_patients(
        &mut self,
        resource_type: &str,
        id: &str,
        patients: &[String],
    ) -> Result<(), Failure> {
        self.tx.execute(&self.st.unlink, &[&resource_type, &id])?;
        if !patients.is_empty() {
            self.tx
                .execute(&self.st.link, &[&patients, &resource_type, &id])?;
        }
        Ok(())
    }

    fn index_identifiers(
        &mut self,
        patient_id: &str,
        identifiers: &[(String, String)],
    ) -> Result<(), Failure> {
        self.tx.execute(&self.st.unindex, &[&patient_id])?;
        if !identifiers.is_empty() {
            let (systems, values): (Vec<&str>, Vec<&str>) = identifiers
                .iter()
                .map(|(system, value)| (system.as_str(), value.as_str()))
                .unzip();
            self.tx
                .execute(&self.st.index, &[&values, &systems, &patient_id])?;
        }
        Ok(())
    }

    // (the two below are rare: once per Patient written with an NHS number, and
    // per merge; not prepared up front)
    fn patients_with_identifier(
        &mut self,
        system: &str,
        value: &str,
        untraced: bool,
    ) -> Result<Vec<String>, Failure> {
        // (an NHS number is indexed as ten digits: `plan::identifiers_of`)
        let rows = self.tx.query(
            "SELECT i.patient_id FROM patient_identifiers i
             JOIN resources r ON r.type = 'Patient' AND r.id = i.patient_id
             WHERE i.value = $1 AND i.system = $2 AND NOT r.deleted
               AND NOT ($3 AND EXISTS (SELECT 1 FROM patient_identifiers n
                   WHERE n.patient_id = i.patient_id AND n.system = $4
                     AND n.value ~ '^[0-9]{10}$'))
             ORDER BY i.patient_id",
            &[&value, &system, &untraced, &crate::route::NHS_NUMBER_SYSTEM],
        )?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn held_by_more_than(&mut self, system: &str, value: &str, n: usize) -> Result<bool, Failure> {
        let offset = i64::try_from(n).unwrap_or(i64::MAX);
        let row = self.tx.query_opt(
            "SELECT 1 FROM patient_identifiers WHERE value = $1 AND system = $2
             LIMIT 1 OFFSET $3",
            &[&value, &system, &offset],
        )?;
        Ok(row.is_some())
    }

    fn linked_ids(&mut self, patient: &str, resource_type: &str) -> Result<Vec<String>, Failure> {
        let rows = self.tx.query(
            "SELECT l.id FROM patient_links l
             JOIN resources r ON r.type = l.type AND r.id = l.id
             WHERE l.patient_id = $1 AND l.type = $2 AND NOT r.deleted
             ORDER BY l.id",
            &[&patient, &resource_type],
        )?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn share_patient_links(&mut self, from: &str, to: &str) -> Result<(), Failure> {
        self.tx.execute(
            "INSERT INTO patient_links (patient_id, type, id)
             SELECT $2, type, id FROM patient_links WHERE patient_id = $1 AND type <> 'Patient'
             ON CONFLICT DO NOTHING",
            &[&from, &to],
        )?;
        Ok(())
    }
}

const RECORD_COLUMNS: &str = "type, id, version, last_updated, event_time, content";

/// One current record (with [`RECORD_COLUMNS`]).
const READ: &str = "SELECT type, id, version, last_updated, event_time, content \
                    FROM resources WHERE type = $1 AND id = $2";

fn record_from_row(row: &postgres::Row) -> Result<Record, Failure> {
    let content: Option<String> = row.get(5);
    let event_time: Option<i64> = row.get(4);
    Ok(Record {
        resource_type: row.get(0),
        id: row.get(1),
        version: row.get(2),
        last_updated: row.get(3),
        event_time: event_time.and_then(|us| jiff::Timestamp::from_microsecond(us).ok()),
        resource: match content {
            Some(content) => Some(serde_json::from_str(&content)?),
            None => None,
        },
    })
}

fn contents(rows: &[postgres::Row]) -> Result<Vec<Value>, Failure> {
    rows.iter()
        .map(|row| {
            let content: String = row.get(0);
            Ok(serde_json::from_str(&content)?)
        })
        .collect()
}
