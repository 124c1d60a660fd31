//! The record store's access tables (schema versions 2 and 3): API tokens,
//! the audit trail of FHIR reads, the objections register and the trail of
//! its changes.
//!
//! This is storage only. It does not generate or check tokens, decide who
//! may do what, or validate NHS numbers: `access/` does, and hands this
//! module values it has already checked (a token's SHA-256 hash, a role
//! name, an NHS number of 10 digits).
//!
//! # Invariants
//! - A token is stored as its SHA-256 hash only; nothing here ever sees or
//!   returns the token itself, and [`TokenInfo`] (what is listed) carries no
//!   hash.
//! - An audit row is written in one transaction with its patient index rows,
//!   and committed (under the store's sync policy) before the call returns.
//!   Audit rows are never updated or deleted.
//! - A change to the objections register and its `objection_changes` row are
//!   written in one transaction; a call that changes nothing writes no row.
//!   Those rows are never updated or deleted.
//! - The audit trail holds clinical data (paths and queries may contain NHS
//!   numbers); nothing here logs it.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use super::{RecordStore, StoreError};

/// A live API token as the authenticator needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub name: String,
    /// `ops` or `clinical` (as `access::Role` writes it).
    pub role: String,
    /// SHA-256 of the token.
    pub hash: [u8; 32],
}

/// A token as `junction token list` shows it: never its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub name: String,
    pub role: String,
    /// FHIR instant (UTC).
    pub created_at: String,
    /// When it last authenticated a request (updated at most once a minute
    /// or so per token), if ever.
    pub last_used_at: Option<String>,
}

/// One audited `/fhir` request, to be written (and, with its row id, as listed:
/// [`AuditEntry`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewAuditEntry {
    /// FHIR instant (UTC) of the request.
    pub at: String,
    /// The token's name and role; `None` when none or an unknown one was given.
    #[serde(rename = "token")]
    pub token_name: Option<String>,
    pub role: Option<String>,
    pub method: String,
    /// The request path, without the query.
    pub path: String,
    /// The query string as sent (may hold an NHS number).
    pub query: Option<String>,
    /// Ids of the Patients whose data the answer returned.
    pub patients: Vec<String>,
    /// HTTP status of the answer.
    pub status: u16,
    /// `X-Purpose-Of-Use`, else `unspecified`.
    pub purpose: String,
}

/// One audit row as `GET /api/audit` lists it: its id and what was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(flatten)]
    pub entry: NewAuditEntry,
}

/// What `GET /api/audit` asks for: rows about a patient and/or by a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// A Patient id (not an NHS number).
    pub patient: Option<String>,
    /// A token name.
    pub token: Option<String>,
    /// Most rows returned (newest first).
    pub limit: u32,
    /// Only rows older than this audit id (the cursor of the next page: the
    /// last id of the page before).
    pub before: Option<i64>,
}

/// One change to the objections register, as `objection_changes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectionChange {
    pub id: i64,
    /// FHIR instant (UTC).
    pub at: String,
    pub nhs_number: String,
    /// `added`, `note changed` or `removed`.
    pub action: String,
    /// The note as it was after the change (`added`, `note changed`).
    pub note: Option<String>,
    /// Who: `token <name>` for the API, `loopback API (no token)` when the
    /// API is open on loopback, `cli <user>` for `junction objections`.
    pub changed_by: String,
}

/// One entry of the objections register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Objection {
    pub nhs_number: String,
    pub note: Option<String>,
    /// FHIR instant (UTC).
    pub added_at: String,
}

/// Now as a FHIR instant in UTC with milliseconds (how every time in these
/// tables is written).
pub fn now_instant() -> String {
    let now = jiff::Timestamp::now();
    let rounded = now.round(jiff::Unit::Millisecond).unwrap_or(now);
    format!("{rounded:.3}")
}

impl RecordStore {
    /// Adds a token. `Ok(false)` when a token of that name already exists
    /// (nothing is changed); a hash already in use is a database error (the
    /// chance of that for a random 32-byte token is nil).
    pub fn add_token(&self, name: &str, role: &str, hash: &[u8; 32]) -> Result<bool, StoreError> {
        if let Some(pg) = self.postgres() {
            return pg.add_token(name, role, hash);
        }
        self.with_writer(|conn| {
            let added = conn.execute(
                "INSERT INTO api_tokens (name, role, hash, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO NOTHING",
                params![name, role, &hash[..], now_instant()],
            )?;
            Ok(added == 1)
        })
    }

    /// Revokes (deletes) the token `name`; `Ok(false)` when there is none.
    pub fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        if let Some(pg) = self.postgres() {
            return pg.revoke_token(name);
        }
        self.with_writer(|conn| {
            let removed = conn.execute("DELETE FROM api_tokens WHERE name = ?1", params![name])?;
            Ok(removed == 1)
        })
    }

    /// Every token (without hashes), by name.
    pub fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        if let Some(pg) = self.postgres() {
            return pg.list_tokens();
        }
        self.with_reader(|conn| {
            let mut stmt = conn.prepare(
                "SELECT name, role, created_at, last_used_at FROM api_tokens ORDER BY name",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(TokenInfo {
                    name: row.get(0)?,
                    role: row.get(1)?,
                    created_at: row.get(2)?,
                    last_used_at: row.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Every live token with its hash, for the authenticator. Rows whose hash
    /// is not 32 bytes cannot exist (a CHECK constraint) and are skipped.
    pub fn live_tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        if let Some(pg) = self.postgres() {
            return pg.live_tokens();
        }
        self.with_reader(|conn| {
            let mut stmt = conn.prepare("SELECT name, role, hash FROM api_tokens")?;
            let rows = stmt.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Vec<u8>>(2)?,
                ))
            })?;
            let mut tokens = Vec::new();
            for row in rows {
                let (name, role, hash) = row?;
                if let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) {
                    tokens.push(StoredToken { name, role, hash });
                }
            }
            Ok(tokens)
        })
    }

    /// Records that token `name` was just used.
    pub fn touch_token(&self, name: &str) -> Result<(), StoreError> {
        if let Some(pg) = self.postgres() {
            return pg.touch_token(name);
        }
        self.with_writer(|conn| {
            conn.execute(
                "UPDATE api_tokens SET last_used_at = ?2 WHERE name = ?1",
                params![name, now_instant()],
            )?;
            Ok(())
        })
    }

    /// Writes one audit row (and its patient index rows) and commits it.
    /// Returns the row id.
    pub fn append_audit(&self, entry: &NewAuditEntry) -> Result<i64, StoreError> {
        if let Some(pg) = self.postgres() {
            return pg.append_audit(entry);
        }
        let patients = serde_json::to_string(&entry.patients)?;
        self.with_writer(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO audit (at, token_name, role, method, path, query, patients, status, purpose)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    entry.at,
                    entry.token_name,
                    entry.role,
                    entry.method,
                    entry.path,
                    entry.query,
                    patients,
                    entry.status,
                    entry.purpose
                ],
            )?;
            let id = tx.last_insert_rowid();
            for patient in &entry.patients {
                tx.execute(
                    "INSERT OR IGNORE INTO audit_patients (patient_id, audit_id) VALUES (?1, ?2)",
                    params![patient, id],
                )?;
            }
            tx.commit()?;
            Ok(id)
        })
    }

    /// Audit rows matching `query`, newest first.
    pub fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        if let Some(pg) = self.postgres() {
            return pg.audit(query);
        }
        self.with_reader(|conn| audit_rows(conn, query))
    }

    /// Adds an NHS number (10 digits, already checked) to the objections
    /// register; `Ok(false)` when it was already there (its note is then
    /// replaced when a new one is given). The change, with `changed_by`, is
    /// recorded in the same transaction (nothing when nothing changed).
    pub fn add_objection(
        &self,
        nhs_number: &str,
        note: Option<&str>,
        changed_by: &str,
    ) -> Result<bool, StoreError> {
        if let Some(pg) = self.postgres() {
            return pg.add_objection(nhs_number, note, changed_by);
        }
        self.with_writer(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing: Option<Option<String>> = tx
                .query_row(
                    "SELECT note FROM objections WHERE nhs_number = ?1",
                    params![nhs_number],
                    |row| row.get(0),
                )
                .optional()?;
            let at = now_instant();
            let change = match &existing {
                Some(old) => match note {
                    Some(note) if old.as_deref() != Some(note) => {
                        tx.execute(
                            "UPDATE objections SET note = ?2 WHERE nhs_number = ?1",
                            params![nhs_number, note],
                        )?;
                        Some("note changed")
                    }
                    _ => None,
                },
                None => {
                    tx.execute(
                        "INSERT INTO objections (nhs_number, note, added_at) VALUES (?1, ?2, ?3)",
                        params![nhs_number, note, at],
                    )?;
                    Some("added")
                }
            };
            if let Some(action) = change {
                record_change(&tx, &at, nhs_number, action, note, changed_by)?;
            }
            tx.commit()?;
            Ok(existing.is_none())
        })
    }

    /// Removes an NHS number from the register; `Ok(false)` when it was not
    /// there. The removal, with `changed_by`, is recorded in the same transaction.
    pub fn remove_objection(&self, nhs_number: &str, changed_by: &str) -> Result<bool, StoreError> {
        if let Some(pg) = self.postgres() {
            return pg.remove_objection(nhs_number, changed_by);
        }
        self.with_writer(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let removed = tx.execute(
                "DELETE FROM objections WHERE nhs_number = ?1",
                params![nhs_number],
            )? == 1;
            if removed {
                record_change(&tx, &now_instant(), nhs_number, "removed", None, changed_by)?;
            }
            tx.commit()?;
            Ok(removed)
        })
    }

    /// Changes to the register, newest first: of one NHS number, or of all.
    pub fn objection_changes(
        &self,
        nhs_number: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ObjectionChange>, StoreError> {
        if let Some(pg) = self.postgres() {
            return pg.objection_changes(nhs_number, limit);
        }
        self.with_reader(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id, at, nhs_number, action, note, changed_by FROM objection_changes
                 WHERE ?1 IS NULL OR nhs_number = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![nhs_number, limit], |row| {
                Ok(ObjectionChange {
                    id: row.get(0)?,
                    at: row.get(1)?,
                    nhs_number: row.get(2)?,
                    action: row.get(3)?,
                    note: row.get(4)?,
                    changed_by: row.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// The whole register, by NHS number.
    pub fn list_objections(&self) -> Result<Vec<Objection>, StoreError> {
        if let Some(pg) = self.postgres() {
            return pg.list_objections();
        }
        self.with_reader(|conn| {
            let mut stmt = conn
                .prepare("SELECT nhs_number, note, added_at FROM objections ORDER BY nhs_number")?;
            let rows = stmt.query_map([], |row| {
                Ok(Objection {
                    nhs_number: row.get(0)?,
                    note: row.get(1)?,
                    added_at: row.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Whether `nhs_number` (10 digits) is in the register.
    pub fn has_objection(&self, nhs_number: &str) -> Result<bool, StoreError> {
        if let Some(pg) = self.postgres() {
            return pg.has_objection(nhs_number);
        }
        self.with_reader(|conn| {
            Ok(conn
                .query_row(
                    "SELECT 1 FROM objections WHERE nhs_number = ?1",
                    params![nhs_number],
                    |_| Ok(()),
                )
                .optional()?
                .is_some())
        })
    }
}

/// One row of `objection_changes`, inside the caller's transaction.
fn record_change(
    tx: &rusqlite::Transaction<'_>,
    at: &str,
    nhs_number: &str,
    action: &str,
    note: Option<&str>,
    changed_by: &str,
) -> Result<(), rusqlite::Error> {
    tx.execute(
        "INSERT INTO objection_changes (at, nhs_number, action, note, changed_by)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![at, nhs_number, action, note, changed_by],
    )?;
    Ok(())
}

fn audit_rows(conn: &Connection, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
    const COLUMNS: &str =
        "a.id, a.at, a.token_name, a.role, a.method, a.path, a.query, a.patients, a.status, a.purpose";
    let limit = i64::from(query.limit);
    let before = query.before;
    let mut stmt;
    let rows = match (&query.patient, &query.token) {
        (Some(patient), token) => {
            stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM audit_patients p CROSS JOIN audit a ON a.id = p.audit_id
                 WHERE p.patient_id = ?1 AND (?2 IS NULL OR a.token_name = ?2)
                   AND (?4 IS NULL OR a.id < ?4)
                 ORDER BY a.id DESC LIMIT ?3"
            ))?;
            stmt.query_map(params![patient, token, limit, before], audit_from_row)?
        }
        (None, Some(token)) => {
            stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM audit a WHERE a.token_name = ?1
                   AND (?3 IS NULL OR a.id < ?3)
                 ORDER BY a.id DESC LIMIT ?2"
            ))?;
            stmt.query_map(params![token, limit, before], audit_from_row)?
        }
        (None, None) => {
            stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM audit a WHERE (?2 IS NULL OR a.id < ?2)
                 ORDER BY a.id DESC LIMIT ?1"
            ))?;
            stmt.query_map(params![limit, before], audit_from_row)?
        }
    };
    let mut entries = Vec::new();
    for row in rows {
        let (mut row, patients) = row?;
        row.entry.patients = serde_json::from_str(&patients)?;
        entries.push(row);
    }
    Ok(entries)
}

/// A row, with its `patients` JSON still to parse.
fn audit_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(AuditEntry, String)> {
    Ok((
        AuditEntry {
            id: row.get(0)?,
            entry: NewAuditEntry {
                at: row.get(1)?,
                token_name: row.get(2)?,
                role: row.get(3)?,
                method: row.get(4)?,
                path: row.get(5)?,
                query: row.get(6)?,
                patients: Vec::new(),
                status: row.get(8)?,
                purpose: row.get(9)?,
            },
        },
        row.get(7)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RecordStoreConfig, SyncPolicy};

    fn open(path: &std::path::Path) -> RecordStore {
        RecordStore::open(&RecordStoreConfig {
            path: path.to_path_buf(),
            sync: SyncPolicy::Normal,
            postgres: None,
        })
        .unwrap()
    }

    #[test]
    fn a_version_1_file_is_upgraded_and_keeps_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(super::super::sqlite::SCHEMA_V1).unwrap();
            conn.execute(
                "INSERT INTO resources (type, id, version, last_updated, event_time, deleted, content)
                 VALUES ('Patient', 'p1', 1, '2026-01-01T00:00:00.000Z', NULL, 0, ?1)",
                params![r#"{"resourceType":"Patient","id":"p1"}"#],
            )
            .unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let store = open(&path);
        assert_eq!(store.read("Patient", "p1").unwrap().unwrap().version, 1);
        assert!(store.add_token("t", "ops", &[7; 32]).unwrap());
        let version: i64 = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, 6);
        drop(store);
        // Reopening a version 6 file changes nothing.
        let store = open(&path);
        assert_eq!(store.list_tokens().unwrap().len(), 1);
    }
}
