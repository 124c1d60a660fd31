//! The objections register: NHS numbers of people who object to their
//! records being shared beyond the organisation (DESIGN.md §6). Kept in the
//! record store; managed with `junction objections` and `/api/objections`;
//! asked by the delivery queue before anything goes to an `external`
//! destination.
//!
//! # Invariants
//! - Only NHS numbers that pass the modulus 11 check enter the register, as
//!   10 digits (spaces and hyphens given by a person are dropped), so a
//!   lookup of the same number written differently finds it.
//! - Nothing here logs an NHS number.
//! - Every change to the register is recorded with who made it, in the same
//!   transaction as the change (`objection_changes` in the record store).

use crate::delivery::Objections;
use crate::store::{Objection, ObjectionChange, RecordStore};

use super::AccessError;

/// A checked NHS number: 10 digits passing the modulus 11 check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NhsNumber(String);

impl NhsNumber {
    /// Accepts `9434765919`, `943 476 5919` or `943-476-5919`.
    pub fn parse(text: &str) -> Result<NhsNumber, AccessError> {
        crate::mapping::transform::nhs_number(text.trim())
            .map(NhsNumber)
            .ok_or_else(|| AccessError::InvalidNhsNumber {
                value: text.to_string(),
            })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NhsNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Adds `nhs_number` to the register; `Ok(false)` when it was already there
/// (a given note then replaces the old one). `changed_by` says who (see
/// [`ObjectionChange::changed_by`]).
pub fn add(
    store: &RecordStore,
    nhs_number: &NhsNumber,
    note: Option<&str>,
    changed_by: &str,
) -> Result<bool, AccessError> {
    Ok(store.add_objection(nhs_number.as_str(), note, changed_by)?)
}

/// Removes `nhs_number`; `Ok(false)` when it was not in the register.
pub fn remove(
    store: &RecordStore,
    nhs_number: &NhsNumber,
    changed_by: &str,
) -> Result<bool, AccessError> {
    Ok(store.remove_objection(nhs_number.as_str(), changed_by)?)
}

/// The changes to the register, newest first (of one NHS number, or all).
pub fn changes(
    store: &RecordStore,
    nhs_number: Option<&NhsNumber>,
    limit: u32,
) -> Result<Vec<ObjectionChange>, AccessError> {
    Ok(store.objection_changes(nhs_number.map(NhsNumber::as_str), limit)?)
}

/// The register, by NHS number.
pub fn list(store: &RecordStore) -> Result<Vec<Objection>, AccessError> {
    Ok(store.list_objections()?)
}

/// The register as the delivery queue asks it. Blocks on one indexed SQLite
/// read (async callers use `spawn_blocking`). A value that is not a valid NHS
/// number cannot be in the register and answers `false`; callers that need
/// to withhold documents without a valid NHS number decide that themselves.
impl Objections for RecordStore {
    fn is_objecting(&self, nhs_number: &str) -> Result<bool, String> {
        match NhsNumber::parse(nhs_number) {
            Ok(number) => self
                .has_objection(number.as_str())
                .map_err(|err| format!("cannot read the objections register: {err}")),
            Err(_) => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RecordStoreConfig, SyncPolicy};

    #[test]
    fn nhs_numbers() {
        for (text, expected) in [
            ("9434765919", Ok("9434765919")),
            ("943 476 5919", Ok("9434765919")),
            (" 943-476-5919 ", Ok("9434765919")),
            ("9434765918", Err(())),
            ("943476591", Err(())),
            ("abcdefghij", Err(())),
            ("", Err(())),
        ] {
            let got = NhsNumber::parse(text);
            match expected {
                Ok(digits) => assert_eq!(got.unwrap().as_str(), digits, "{text:?}"),
                Err(()) => assert_eq!(
                    got.unwrap_err().to_string(),
                    format!(
                        "`{text}` is not a valid NHS number, expected 10 digits passing the modulus 11 check"
                    )
                ),
            }
        }
    }

    #[test]
    fn register_add_remove_and_the_delivery_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(&RecordStoreConfig {
            path: dir.path().join("records.db"),
            sync: SyncPolicy::Normal,
            postgres: None,
        })
        .unwrap();
        let number = NhsNumber::parse("943 476 5919").unwrap();
        assert_eq!(store.is_objecting("9434765919"), Ok(false));
        assert!(add(&store, &number, Some("letter 2026-03-01"), "cli test").unwrap());
        assert!(!add(&store, &number, None, "cli test").unwrap());
        assert_eq!(store.is_objecting("9434765919"), Ok(true));
        assert_eq!(store.is_objecting("943-476-5919"), Ok(true));
        assert_eq!(store.is_objecting("not a number"), Ok(false));
        let listed = list(&store).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].nhs_number, "9434765919");
        assert_eq!(listed[0].note.as_deref(), Some("letter 2026-03-01"));
        assert!(remove(&store, &number, "token desk").unwrap());
        assert!(!remove(&store, &number, "token desk").unwrap());
        assert_eq!(store.is_objecting("9434765919"), Ok(false));
    }

    #[test]
    fn every_change_is_recorded_with_who_made_it_and_nothing_else_is() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(&RecordStoreConfig {
            path: dir.path().join("records.db"),
            sync: SyncPolicy::Normal,
            postgres: None,
        })
        .unwrap();
        let number = NhsNumber::parse("9434765919").unwrap();
        let other = NhsNumber::parse("9990000018").unwrap();
        add(&store, &number, Some("letter 2026-03-01"), "cli alice").unwrap();
        // the same again, and no note: nothing changed, nothing recorded
        add(&store, &number, Some("letter 2026-03-01"), "cli alice").unwrap();
        add(&store, &number, None, "cli alice").unwrap();
        add(&store, &other, None, "token desk").unwrap();
        add(&store, &number, Some("phone call 2026-03-04"), "token desk").unwrap();
        remove(&store, &number, "loopback API (no token)").unwrap();
        // removing what is not there changes nothing
        remove(&store, &number, "cli alice").unwrap();

        let mine: Vec<(String, Option<String>, String)> = changes(&store, Some(&number), 100)
            .unwrap()
            .into_iter()
            .map(|c| (c.action, c.note, c.changed_by))
            .collect();
        assert_eq!(
            mine,
            [
                ("removed".into(), None, "loopback API (no token)".into()),
                (
                    "note changed".into(),
                    Some("phone call 2026-03-04".into()),
                    "token desk".into()
                ),
                (
                    "added".into(),
                    Some("letter 2026-03-01".into()),
                    "cli alice".into()
                ),
            ]
        );
        let all = changes(&store, None, 100).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(changes(&store, None, 2).unwrap().len(), 2);
        assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        assert!(all.iter().all(|c| c.at.ends_with('Z')), "{all:?}");
    }
}
