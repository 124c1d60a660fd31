//! Applying one document's checked plan, entry by entry, the same on every
//! backend: what each entry does (create-only, stale, unchanged, a new
//! version, a tombstone) is decided here, and the backends (`sqlite.rs`,
//! `postgres.rs`) only read and write rows through [`Rows`], inside a
//! transaction they opened.
//!
//! It does no I/O of its own and opens no transaction.

use serde_json::{Map, Value};

use super::plan::{self, Op, Plan};
use super::{ApplyOutcome, EntryOutcome, EntryResult};

/// The current row of a record.
pub(super) struct Current {
    pub version: i64,
    /// Microseconds since the epoch.
    pub event_time: Option<i64>,
    /// `None` for a tombstone.
    pub content: Option<String>,
}

/// The row operations a backend offers, inside its open transaction.
pub(super) trait Rows {
    type Error: From<serde_json::Error>;

    fn current(&mut self, resource_type: &str, id: &str) -> Result<Option<Current>, Self::Error>;

    /// Writes a new current version and its history row (`content` `None`: a tombstone).
    fn write_version(&mut self, version: &Version<'_>) -> Result<(), Self::Error>;

    /// Remembers a newer event time without making a new version.
    fn set_event_time(
        &mut self,
        resource_type: &str,
        id: &str,
        event_time: Option<i64>,
    ) -> Result<(), Self::Error>;

    /// Replaces the record's patient links with `patients` (none: unlinked).
    fn link_patients(
        &mut self,
        resource_type: &str,
        id: &str,
        patients: &[String],
    ) -> Result<(), Self::Error>;

    /// Replaces a Patient's indexed identifiers, `(system, value)`.
    fn index_identifiers(
        &mut self,
        patient_id: &str,
        identifiers: &[(String, String)],
    ) -> Result<(), Self::Error>;
}

/// One version of a record as it is written.
pub(super) struct Version<'v> {
    pub resource_type: &'v str,
    pub id: &'v str,
    pub version: i64,
    pub last_updated: &'v str,
    pub event_time: Option<i64>,
    pub content: Option<&'v str>,
}

/// Applies one document's plan through `rows` (inside the caller's transaction).
pub(super) fn apply_plan<R: Rows>(
    rows: &mut R,
    plan: &Plan,
    last_updated: &str,
) -> Result<ApplyOutcome, R::Error> {
    let event_time = plan.event_time.map(|t| t.as_microsecond());
    let mut outcome = ApplyOutcome::default();
    for entry in &plan.entries {
        let (resource_type, id) = (entry.resource_type.as_str(), entry.id.as_str());
        let current = rows.current(resource_type, id)?;
        let create_only = matches!(
            entry.op,
            Op::Put {
                create_only: true,
                ..
            }
        );
        let result = match decide(current.as_ref(), create_only, event_time) {
            Decision::Skip(result) => result,
            Decision::Write { event_time } => {
                let at = At {
                    resource_type,
                    id,
                    current: current.as_ref(),
                    last_updated,
                    event_time,
                };
                match &entry.op {
                    Op::Put {
                        resource,
                        patients,
                        identifiers,
                        ..
                    } => put(rows, &at, resource, patients, identifiers)?,
                    Op::Delete => delete(rows, &at)?,
                }
            }
        };
        outcome.entries.push(EntryOutcome {
            resource_type: entry.resource_type.clone(),
            id: entry.id.clone(),
            result,
        });
    }
    Ok(outcome)
}

/// What to do with one entry, decided before touching the record.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Leave the record as it is (create-only over an existing record, or an
    /// older event than the stored one).
    Skip(EntryResult),
    /// Write (or delete), remembering this event time.
    Write { event_time: Option<i64> },
}

/// `ifNoneMatch: "*"` leaves an existing record alone; an older event never
/// overwrites a newer one; the newest event time is kept.
fn decide(current: Option<&Current>, create_only: bool, incoming: Option<i64>) -> Decision {
    match (current, incoming) {
        (Some(cur), _) if create_only && cur.content.is_some() => {
            Decision::Skip(EntryResult::Unchanged {
                version: cur.version,
            })
        }
        (Some(cur), Some(incoming)) if cur.event_time.is_some_and(|s| incoming < s) => {
            Decision::Skip(EntryResult::Stale {
                version: cur.version,
            })
        }
        _ => Decision::Write {
            event_time: match current.and_then(|c| c.event_time) {
                // A create-only record is a placeholder: it takes no event
                // time, so the authoritative document (e.g. the ADT that
                // arrives after the lab result) replaces it whatever its age.
                stored if create_only => stored,
                Some(stored) => Some(incoming.map_or(stored, |i| i.max(stored))),
                None => incoming,
            },
        },
    }
}

/// The record an entry writes, and when.
struct At<'a> {
    resource_type: &'a str,
    id: &'a str,
    current: Option<&'a Current>,
    last_updated: &'a str,
    event_time: Option<i64>,
}

impl At<'_> {
    /// Remembers the event time when it changed (no write otherwise, so a
    /// redelivered document costs no page writes).
    fn touch<R: Rows>(&self, rows: &mut R, current: &Current) -> Result<(), R::Error> {
        if self.event_time == current.event_time {
            return Ok(());
        }
        rows.set_event_time(self.resource_type, self.id, self.event_time)
    }

    fn version<'v>(&'v self, version: i64, content: Option<&'v str>) -> Version<'v> {
        Version {
            resource_type: self.resource_type,
            id: self.id,
            version,
            last_updated: self.last_updated,
            event_time: self.event_time,
            content,
        }
    }
}

fn put<R: Rows>(
    rows: &mut R,
    at: &At<'_>,
    resource: &Value,
    patients: &[String],
    identifiers: &[(String, String)],
) -> Result<EntryResult, R::Error> {
    if let Some(cur) = at.current {
        if let Some(content) = &cur.content {
            let stored: Value = serde_json::from_str(content)?;
            if plan::without_meta(&stored) == plan::without_meta(resource) {
                at.touch(rows, cur)?;
                return Ok(EntryResult::Unchanged {
                    version: cur.version,
                });
            }
        }
    }
    let version = at.current.map_or(1, |cur| cur.version + 1);
    let content = stamped(resource, version, at.last_updated)?;
    rows.write_version(&at.version(version, Some(&content)))?;
    rows.link_patients(at.resource_type, at.id, patients)?;
    if at.resource_type == "Patient" {
        rows.index_identifiers(at.id, identifiers)?;
    }
    let was_live = at.current.is_some_and(|cur| cur.content.is_some());
    Ok(if was_live {
        EntryResult::Updated { version }
    } else {
        EntryResult::Created { version }
    })
}

fn delete<R: Rows>(rows: &mut R, at: &At<'_>) -> Result<EntryResult, R::Error> {
    let Some(cur) = at.current.filter(|cur| cur.content.is_some()) else {
        if let Some(cur) = at.current {
            at.touch(rows, cur)?;
        }
        return Ok(EntryResult::AlreadyAbsent);
    };
    let version = cur.version + 1;
    rows.write_version(&at.version(version, None))?;
    rows.link_patients(at.resource_type, at.id, &[])?;
    if at.resource_type == "Patient" {
        rows.index_identifiers(at.id, &[])?;
    }
    Ok(EntryResult::Deleted { version })
}

/// The stored text of a new version: the resource with `meta.versionId` and
/// `meta.lastUpdated` set.
fn stamped(
    resource: &Value,
    version: i64,
    last_updated: &str,
) -> Result<String, serde_json::Error> {
    let mut stored = resource.clone();
    if let Value::Object(object) = &mut stored {
        let meta = object
            .entry("meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(meta) = meta {
            meta.insert("versionId".into(), Value::String(version.to_string()));
            meta.insert(
                "lastUpdated".into(),
                Value::String(last_updated.to_string()),
            );
        }
    }
    serde_json::to_string(&stored)
}
