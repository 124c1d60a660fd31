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

use crate::delivery::Objections;
use crate::store::{Objection, RecordStore};

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
/// (a given note then replaces the old one).
pub fn add(
    store: &RecordStore,
    nhs_number: &NhsNumber,
    note: Option<&str>,
) -> Result<bool, AccessError> {
    Ok(store.add_objection(nhs_number.as_str(), note)?)
}

/// Removes `nhs_number`; `Ok(false)` when it was not in the register.
pub fn remove(store: &RecordStore, nhs_number: &NhsNumber) -> Result<bool, AccessError> {
    Ok(store.remove_objection(nhs_number.as_str())?)
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
        })
        .unwrap();
        let number = NhsNumber::parse("943 476 5919").unwrap();
        assert_eq!(store.is_objecting("9434765919"), Ok(false));
        assert!(add(&store, &number, Some("letter 2026-03-01")).unwrap());
        assert!(!add(&store, &number, None).unwrap());
        assert_eq!(store.is_objecting("9434765919"), Ok(true));
        assert_eq!(store.is_objecting("943-476-5919"), Ok(true));
        assert_eq!(store.is_objecting("not a number"), Ok(false));
        let listed = list(&store).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].nhs_number, "9434765919");
        assert_eq!(listed[0].note.as_deref(), Some("letter 2026-03-01"));
        assert!(remove(&store, &number).unwrap());
        assert!(!remove(&store, &number).unwrap());
        assert_eq!(store.is_objecting("9434765919"), Ok(false));
    }
}
