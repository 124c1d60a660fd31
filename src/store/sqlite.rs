//! The SQLite side of the record store: schema, applying a plan, reads.
//!
//! Schema versions are kept in `PRAGMA user_version`; [`migrate`] brings an
//! older file up to [`SCHEMA_VERSION`] and refuses a newer one. Event times
//! are stored as microseconds since the Unix epoch (UTC), so they compare as
//! integers.

use std::path::Path;

use crate::db::{self, OpenProblem};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::Value;

use super::apply::{self, Current, Version};
use super::plan::Plan;
use super::{ApplyOutcome, Record, StoreError, SyncPolicy};
use crate::route::NHS_NUMBER_SYSTEM;

/// The schema this build writes: 1 the records and their indexes; 2 adds
/// the access tables (API tokens, the audit trail of FHIR reads, the
/// objections register), see [`SCHEMA_V2`]; 3 the trail of changes to the
/// objections register, see [`SCHEMA_V3`]; 4 every Patient's NHS number
/// indexed as its ten digits too, however it was written (no new table:
/// [`index_nhs_numbers`]); 5 when an Encounter was last admitted and
/// cancelled (`resources.admitted_at`, `resources.cancelled_at`: no longer
/// written or read since 6); 6 what each message sent of an Encounter
/// ([`SCHEMA_V6`], see [`apply::Sent`]).
pub(super) const SCHEMA_VERSION: i64 = 6;

/// Version 6: what each message sent of a record, as it was sent (an
/// Encounter's, so one arriving late is put in its place among them), in
/// arrival order (`seq`).
const SCHEMA_V6: &str = "
CREATE TABLE IF NOT EXISTS sent (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    type       TEXT NOT NULL,
    id         TEXT NOT NULL,
    event_time INTEGER,
    event      TEXT,
    seed       INTEGER NOT NULL CHECK (seed IN (0, 1)),
    content    TEXT
);
CREATE INDEX IF NOT EXISTS sent_record ON sent (type, id, event_time, seq);
";

pub(super) const SCHEMA_V1: &str = "
CREATE TABLE resources (
    type         TEXT NOT NULL,
    id           TEXT NOT NULL,
    version      INTEGER NOT NULL,
    last_updated TEXT NOT NULL,
    event_time   INTEGER,
    deleted      INTEGER NOT NULL CHECK (deleted IN (0, 1)),
    content      TEXT,
    PRIMARY KEY (type, id)
) WITHOUT ROWID;
CREATE TABLE history (
    type         TEXT NOT NULL,
    id           TEXT NOT NULL,
    version      INTEGER NOT NULL,
    last_updated TEXT NOT NULL,
    event_time   INTEGER,
    deleted      INTEGER NOT NULL CHECK (deleted IN (0, 1)),
    content      TEXT,
    PRIMARY KEY (type, id, version)
) WITHOUT ROWID;
CREATE TABLE patient_links (
    patient_id TEXT NOT NULL,
    type       TEXT NOT NULL,
    id         TEXT NOT NULL,
    PRIMARY KEY (patient_id, type, id)
) WITHOUT ROWID;
CREATE INDEX patient_links_resource ON patient_links (type, id);
CREATE TABLE patient_identifiers (
    value      TEXT NOT NULL,
    system     TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    PRIMARY KEY (value, system, patient_id)
) WITHOUT ROWID;
CREATE INDEX patient_identifiers_patient ON patient_identifiers (patient_id);
";

/// Version 2: what `store/access.rs` reads and writes. Only SHA-256 hashes
/// of API tokens are kept; audit rows are never updated or deleted here.
pub(super) const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS api_tokens (
    name         TEXT PRIMARY KEY,
    role         TEXT NOT NULL,
    hash         BLOB NOT NULL UNIQUE CHECK (length(hash) = 32),
    created_at   TEXT NOT NULL,
    last_used_at TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    id         INTEGER PRIMARY KEY,
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
CREATE INDEX IF NOT EXISTS audit_token ON audit (token_name, id);
CREATE TABLE IF NOT EXISTS audit_patients (
    patient_id TEXT NOT NULL,
    audit_id   INTEGER NOT NULL,
    PRIMARY KEY (patient_id, audit_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objections (
    nhs_number TEXT PRIMARY KEY,
    note       TEXT,
    added_at   TEXT NOT NULL
) WITHOUT ROWID;
";

/// Version 3: every change to the objections register (added, its note
/// changed, removed), who made it and when. Rows are never updated or deleted
/// here: the register says who objects now, this says how it came to be.
const SCHEMA_V3: &str = "
CREATE TABLE IF NOT EXISTS objection_changes (
    id         INTEGER PRIMARY KEY,
    at         TEXT NOT NULL,
    nhs_number TEXT NOT NULL,
    action     TEXT NOT NULL CHECK (action IN ('added', 'note changed', 'removed')),
    note       TEXT,
    changed_by TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS objection_changes_number ON objection_changes (nhs_number, id);
";

/// Opens the write connection: WAL, the sync policy, the current schema
/// (see [`crate::db`]).
pub(super) fn open_writer(path: &Path, sync: SyncPolicy) -> Result<Connection, StoreError> {
    let mut conn = open_v1(path, sync)?;
    upgrade(&mut conn).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    // the write path's statements are compiled once and kept (`prepare_cached`):
    // room for all of them, so none is compiled again for every document
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Brings a version 1 file (as created by [`db::open_writer`], or written by
/// an older build) up to [`SCHEMA_VERSION`]. The version is read again inside
/// the write transaction, so two processes opening the file at once (the
/// engine and `junction token add`) do not both migrate it.
fn upgrade(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found < 2 {
        tx.execute_batch(SCHEMA_V2)?;
        tx.pragma_update(None, "user_version", 2)?;
    }
    if found < 3 {
        tx.execute_batch(SCHEMA_V3)?;
        tx.pragma_update(None, "user_version", 3)?;
    }
    if found < 4 {
        index_nhs_numbers(&tx)?;
        tx.pragma_update(None, "user_version", 4)?;
    }
    if found < 5 {
        // (rows written before are `NULL`: no admission known; a file whose
        // version was set back by hand may have the column already)
        for column in ["admitted_at", "cancelled_at"] {
            let has: bool = tx.query_row(
                "SELECT count(*) > 0 FROM pragma_table_info('resources') WHERE name = ?1",
                [column],
                |row| row.get(0),
            )?;
            if !has {
                tx.execute_batch(&format!(
                    "ALTER TABLE resources ADD COLUMN {column} INTEGER"
                ))?;
            }
        }
        tx.pragma_update(None, "user_version", 5)?;
    }
    if found < 6 {
        tx.execute_batch(SCHEMA_V6)?;
        tx.pragma_update(None, "user_version", 6)?;
    }
    tx.commit()
}

/// Version 4: indexes every NHS number an older build indexed only as it
/// was written (`943 476 5919`, a system with a trailing `/`) as its ten
/// digits under the NHS number system too, as [`super::plan::identifiers_of`]
/// now does for every write.
fn index_nhs_numbers(conn: &Connection) -> Result<(), rusqlite::Error> {
    let found: Vec<(String, String, String)> = conn
        .prepare("SELECT value, system, patient_id FROM patient_identifiers")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (value, system, patient) in found {
        if let Some(digits) = super::plan::nhs_number_of(&system, &value) {
            conn.execute(
                "INSERT OR IGNORE INTO patient_identifiers (value, system, patient_id)
                 VALUES (?1, ?2, ?3)",
                params![digits, crate::route::NHS_NUMBER_SYSTEM, patient],
            )?;
        }
    }
    Ok(())
}

/// Opens the write connection with the version 1 schema (and refuses files
/// newer than [`SCHEMA_VERSION`]).
fn open_v1(path: &Path, sync: SyncPolicy) -> Result<Connection, StoreError> {
    db::open_writer(path, sync, SCHEMA_VERSION, SCHEMA_V1).map_err(|problem| match problem {
        OpenProblem::Sqlite(source) => StoreError::Open {
            path: path.to_path_buf(),
            source,
        },
        OpenProblem::NotWal(mode) => StoreError::NotWal {
            path: path.to_path_buf(),
            mode,
        },
        OpenProblem::SchemaTooNew { found, supported } => {
            StoreError::SchemaTooNew { found, supported }
        }
    })
}

/// Opens a read-only connection.
pub(super) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    db::open_reader(path).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// `meta.lastUpdated` for `now`: a FHIR instant in UTC with milliseconds.
pub(super) fn instant(now: jiff::Timestamp) -> String {
    // Rounding to milliseconds cannot overflow for any clock reading this
    // century; fall back to the unrounded time rather than fail a document.
    let rounded = now.round(jiff::Unit::Millisecond).unwrap_or(now);
    format!("{rounded:.3}")
}

/// Applies `plans` in order, all in one transaction (one fsync for all).
pub(super) fn apply(
    conn: &mut Connection,
    plans: &[&Plan],
    now: jiff::Timestamp,
) -> Result<Vec<Result<ApplyOutcome, StoreError>>, StoreError> {
    let last_updated = instant(now);
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let [plan] = plans {
        // one document: its transaction is its all-or-nothing
        let outcome = apply::apply_plan(&mut Rows(&tx), plan, &last_updated)?;
        tx.commit()?;
        return Ok(vec![Ok(outcome)]);
    }
    let mut outcomes = Vec::with_capacity(plans.len());
    for plan in plans {
        // each document under a savepoint of its own: one the store refuses
        // while applying it is rolled back alone
        let sp = tx.savepoint()?;
        match apply::apply_plan(&mut Rows(&sp), plan, &last_updated) {
            Ok(outcome) => {
                sp.commit()?;
                outcomes.push(Ok(outcome));
            }
            Err(err) if err.is_permanent() => outcomes.push(Err(err)),
            Err(err) => return Err(err),
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

/// The record rows inside a transaction, for [`apply::apply_plan`].
struct Rows<'c>(&'c Connection);

impl apply::Rows for Rows<'_> {
    type Error = StoreError;

    fn current(&mut self, resource_type: &str, id: &str) -> Result<Option<Current>, StoreError> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT version, event_time, content FROM resources
                 WHERE type = ?1 AND id = ?2",
            )?
            .query_row(params![resource_type, id], |row| {
                Ok(Current {
                    version: row.get(0)?,
                    event_time: row.get(1)?,
                    content: row.get(2)?,
                })
            })
            .optional()?)
    }

    fn write_version(&mut self, v: &Version<'_>) -> Result<(), StoreError> {
        let deleted = i64::from(v.content.is_none());
        let params = params![
            v.resource_type,
            v.id,
            v.version,
            v.last_updated,
            v.event_time,
            deleted,
            v.content
        ];
        self.0
            .prepare_cached(
                "INSERT INTO resources
                 (type, id, version, last_updated, event_time, deleted, content)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (type, id) DO UPDATE SET
                 version = excluded.version, last_updated = excluded.last_updated,
                 event_time = excluded.event_time, deleted = excluded.deleted,
                 content = excluded.content",
            )?
            .execute(params)?;
        self.0
            .prepare_cached(
                "INSERT INTO history (type, id, version, last_updated, event_time, deleted, content)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params)?;
        Ok(())
    }

    fn set_event_time(
        &mut self,
        resource_type: &str,
        id: &str,
        event_time: Option<i64>,
    ) -> Result<(), StoreError> {
        self.0
            .prepare_cached("UPDATE resources SET event_time = ?3 WHERE type = ?1 AND id = ?2")?
            .execute(params![resource_type, id, event_time])?;
        Ok(())
    }

    fn record_sent(
        &mut self,
        resource_type: &str,
        id: &str,
        sent: &apply::Sent,
    ) -> Result<(), StoreError> {
        self.0
            .prepare_cached(
                "INSERT INTO sent (type, id, event_time, event, seed, content)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6
                 WHERE NOT EXISTS (
                     SELECT 1 FROM sent WHERE type = ?1 AND id = ?2 AND event_time IS ?3
                         AND event IS ?4 AND seed = ?5 AND content IS ?6)",
            )?
            .execute(params![
                resource_type,
                id,
                sent.event_time,
                sent.event,
                i64::from(sent.seed),
                sent.content
            ])?;
        Ok(())
    }

    fn sent_count(&mut self, resource_type: &str, id: &str) -> Result<i64, StoreError> {
        Ok(self
            .0
            .prepare_cached("SELECT count(*) FROM sent WHERE type = ?1 AND id = ?2")?
            .query_row(params![resource_type, id], |row| row.get(0))?)
    }

    fn forget_sent(
        &mut self,
        resource_type: &str,
        id: &str,
        seqs: &[i64],
    ) -> Result<(), StoreError> {
        let mut statement = self
            .0
            .prepare_cached("DELETE FROM sent WHERE type = ?1 AND id = ?2 AND seq = ?3")?;
        for seq in seqs {
            statement.execute(params![resource_type, id, seq])?;
        }
        Ok(())
    }

    fn sent(&mut self, resource_type: &str, id: &str) -> Result<Vec<apply::Sent>, StoreError> {
        // (the events that cancel another: `apply::CANCELLATIONS`)
        let mut statement = self.0.prepare_cached(
            "SELECT seq, event_time, event, seed, content FROM sent WHERE type = ?1 AND id = ?2
             ORDER BY event_time ASC NULLS FIRST,
                 coalesce(event IN ('A11', 'A12', 'A13', 'A38'), 0), seq",
        )?;
        let sent = statement
            .query_map(params![resource_type, id], |row| {
                Ok(apply::Sent {
                    seq: row.get(0)?,
                    event_time: row.get(1)?,
                    event: row.get(2)?,
                    seed: row.get::<_, i64>(3)? != 0,
                    content: row.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(sent)
    }

    fn link_patients(
        &mut self,
        resource_type: &str,
        id: &str,
        patients: &[String],
    ) -> Result<(), StoreError> {
        self.0
            .prepare_cached("DELETE FROM patient_links WHERE type = ?1 AND id = ?2")?
            .execute(params![resource_type, id])?;
        for patient in patients {
            self.0
                .prepare_cached(
                    "INSERT OR IGNORE INTO patient_links (patient_id, type, id)
                     VALUES (?1, ?2, ?3)",
                )?
                .execute(params![patient, resource_type, id])?;
            if resource_type != "Patient" {
                // and to the Patient that replaced a retired one
                self.0
                    .prepare_cached(
                        "INSERT OR IGNORE INTO patient_links (patient_id, type, id)
                         SELECT patient_id, ?2, ?3 FROM patient_links
                         WHERE type = 'Patient' AND id = ?1 AND patient_id <> ?1",
                    )?
                    .execute(params![patient, resource_type, id])?;
            }
        }
        Ok(())
    }

    fn index_identifiers(
        &mut self,
        patient_id: &str,
        identifiers: &[(String, String)],
    ) -> Result<(), StoreError> {
        self.0
            .prepare_cached("DELETE FROM patient_identifiers WHERE patient_id = ?1")?
            .execute(params![patient_id])?;
        for (system, value) in identifiers {
            self.0
                .prepare_cached(
                    "INSERT OR IGNORE INTO patient_identifiers (value, system, patient_id)
                     VALUES (?1, ?2, ?3)",
                )?
                .execute(params![value, system, patient_id])?;
        }
        Ok(())
    }

    fn patients_with_identifier(
        &mut self,
        system: &str,
        value: &str,
        untraced: bool,
    ) -> Result<Vec<String>, StoreError> {
        // (an NHS number is indexed as ten digits: `plan::identifiers_of`;
        // the same statement as PostgreSQL's, `?3` switching the filter)
        let ids = self
            .0
            .prepare_cached(
                "SELECT i.patient_id FROM patient_identifiers i
                 JOIN resources r ON r.type = 'Patient' AND r.id = i.patient_id
                 WHERE i.value = ?1 AND i.system = ?2 AND r.deleted = 0
                   AND NOT (?3 AND EXISTS (SELECT 1 FROM patient_identifiers n
                       WHERE n.patient_id = i.patient_id AND n.system = ?4
                         AND length(n.value) = 10 AND n.value NOT GLOB '*[^0-9]*'))
                 ORDER BY i.patient_id",
            )?
            .query_map(params![value, system, untraced, NHS_NUMBER_SYSTEM], |row| {
                row.get(0)
            })?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    fn held_by_more_than(
        &mut self,
        system: &str,
        value: &str,
        n: usize,
    ) -> Result<bool, StoreError> {
        let offset = i64::try_from(n).unwrap_or(i64::MAX);
        Ok(self
            .0
            .prepare_cached(
                "SELECT 1 FROM patient_identifiers WHERE value = ?1 AND system = ?2
                 LIMIT 1 OFFSET ?3",
            )?
            .exists(params![value, system, offset])?)
    }

    fn linked_ids(
        &mut self,
        patient: &str,
        resource_type: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut statement = self.0.prepare_cached(
            "SELECT l.id FROM patient_links l
             JOIN resources r ON r.type = l.type AND r.id = l.id
             WHERE l.patient_id = ?1 AND l.type = ?2 AND r.deleted = 0
             ORDER BY l.id",
        )?;
        let ids = statement
            .query_map(params![patient, resource_type], |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    fn share_patient_links(&mut self, from: &str, to: &str) -> Result<(), StoreError> {
        self.0.execute(
            "INSERT OR IGNORE INTO patient_links (patient_id, type, id)
             SELECT ?2, type, id FROM patient_links WHERE patient_id = ?1 AND type <> 'Patient'",
            params![from, to],
        )?;
        Ok(())
    }
}

fn record_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok(RawRecord {
        resource_type: row.get(0)?,
        id: row.get(1)?,
        version: row.get(2)?,
        last_updated: row.get(3)?,
        event_time: row.get(4)?,
        content: row.get(5)?,
    })
}

/// A row before its JSON is parsed.
struct RawRecord {
    resource_type: String,
    id: String,
    version: i64,
    last_updated: String,
    event_time: Option<i64>,
    content: Option<String>,
}

impl RawRecord {
    fn parse(self) -> Result<Record, StoreError> {
        let resource = match self.content {
            Some(content) => Some(serde_json::from_str(&content)?),
            None => None,
        };
        Ok(Record {
            resource_type: self.resource_type,
            id: self.id,
            version: self.version,
            last_updated: self.last_updated,
            event_time: self
                .event_time
                .and_then(|us| jiff::Timestamp::from_microsecond(us).ok()),
            resource,
        })
    }
}

const RECORD_COLUMNS: &str = "type, id, version, last_updated, event_time, content";

pub(super) fn read(
    conn: &Connection,
    resource_type: &str,
    id: &str,
) -> Result<Option<Record>, StoreError> {
    conn.query_row(
        &format!("SELECT {RECORD_COLUMNS} FROM resources WHERE type = ?1 AND id = ?2"),
        params![resource_type, id],
        record_from_row,
    )
    .optional()?
    .map(RawRecord::parse)
    .transpose()
}

pub(super) fn history(
    conn: &Connection,
    resource_type: &str,
    id: &str,
) -> Result<Vec<Record>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {RECORD_COLUMNS} FROM history WHERE type = ?1 AND id = ?2 ORDER BY version DESC"
    ))?;
    let rows = stmt.query_map(params![resource_type, id], record_from_row)?;
    let mut records = Vec::new();
    for row in rows {
        records.push(row?.parse()?);
    }
    Ok(records)
}

/// Parses the `content` column of every row `sql` returns. (The searches
/// use `CROSS JOIN` to make SQLite start from the small index table: without
/// statistics it would otherwise scan every record of the type.)
fn contents(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Value>, StoreError> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map(params, |row| row.get::<_, String>(0))?;
    let mut resources = Vec::new();
    for row in rows {
        resources.push(serde_json::from_str(&row?)?);
    }
    Ok(resources)
}

pub(super) fn search_patient_by_identifier(
    conn: &Connection,
    system: Option<&str>,
    value: &str,
) -> Result<Vec<Value>, StoreError> {
    match system {
        Some(system) => contents(
            conn,
            "SELECT r.content FROM patient_identifiers i
             CROSS JOIN resources r ON r.type = 'Patient' AND r.id = i.patient_id
             WHERE i.value = ?1 AND i.system = ?2 AND r.deleted = 0
             ORDER BY r.id",
            params![value, system],
        ),
        None => contents(
            conn,
            "SELECT r.content
             FROM (SELECT DISTINCT patient_id FROM patient_identifiers WHERE value = ?1) i
             CROSS JOIN resources r ON r.type = 'Patient' AND r.id = i.patient_id
             WHERE r.deleted = 0
             ORDER BY r.id",
            params![value],
        ),
    }
}

/// The Patient's current content, if it exists and is not deleted.
fn live_patient(conn: &Connection, patient_id: &str) -> Result<Option<Value>, StoreError> {
    Ok(read(conn, "Patient", patient_id)?.and_then(|record| record.resource))
}

pub(super) fn search_by_patient(
    conn: &Connection,
    resource_type: &str,
    patient_id: &str,
) -> Result<Vec<Value>, StoreError> {
    if resource_type == "Patient" {
        return Ok(live_patient(conn, patient_id)?.into_iter().collect());
    }
    contents(
        conn,
        "SELECT r.content FROM patient_links l
         CROSS JOIN resources r ON r.type = l.type AND r.id = l.id
         WHERE l.patient_id = ?1 AND l.type = ?2 AND r.deleted = 0
         ORDER BY r.id",
        params![patient_id, resource_type],
    )
}

pub(super) fn everything(
    conn: &Connection,
    patient_id: &str,
) -> Result<Option<Vec<Value>>, StoreError> {
    let Some(patient) = live_patient(conn, patient_id)? else {
        return Ok(None);
    };
    let mut resources = vec![patient];
    resources.extend(contents(
        conn,
        "SELECT r.content FROM patient_links l
         CROSS JOIN resources r ON r.type = l.type AND r.id = l.id
         WHERE l.patient_id = ?1 AND l.type <> 'Patient' AND r.deleted = 0
         ORDER BY r.type, r.id",
        params![patient_id],
    )?);
    Ok(Some(resources))
}
