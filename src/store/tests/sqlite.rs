//! The shared cases on a real SQLite file in a temporary folder, and what is
//! SQLite's own: reopening a file, upgrading an older schema.

use std::path::PathBuf;

use serde_json::json;

use super::super::*;

struct Fixture {
    store: RecordStore,
    _dir: tempfile::TempDir,
}

fn open() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = RecordStore::open(&RecordStoreConfig {
        path: dir.path().join("data").join("records.db"),
        sync: SyncPolicy::Normal,
        postgres: None,
    })
    .unwrap();
    Fixture { store, _dir: dir }
}

include!("cases.rs");

/// A store in `records.db` under `dir`, synced as the tests' are.
fn file_config(dir: &std::path::Path) -> RecordStoreConfig {
    RecordStoreConfig {
        path: dir.join("records.db"),
        sync: SyncPolicy::Normal,
        postgres: None,
    }
}

#[test]
fn records_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RecordStoreConfig {
        path: dir.path().join("records.db"),
        sync: SyncPolicy::Full,
        postgres: None,
    };
    {
        let store = RecordStore::open(&cfg).unwrap();
        store
            .apply_bundle(
                &bundle(&[patient(PATIENT, "9434765919", "Smith")]),
                at("2026-03-01T10:00:00Z"),
            )
            .unwrap();
    }
    let store = RecordStore::open(&cfg).unwrap();
    assert_eq!(store.sync_policy(), SyncPolicy::Full);
    let record = store.read("Patient", PATIENT).unwrap().unwrap();
    assert_eq!(record.version, 1);
    assert_eq!(record.event_time, at("2026-03-01T10:00:00Z"));
}

#[test]
fn config_defaults_and_unknown_keys() {
    let cfg: RecordStoreConfig = toml::from_str("").unwrap();
    assert_eq!(cfg, RecordStoreConfig::default());
    assert_eq!(cfg.path, PathBuf::from("data/records.db"));
    assert_eq!(cfg.sync, SyncPolicy::Full);
    let cfg: RecordStoreConfig = toml::from_str("path = \"x.db\"\nsync = \"normal\"").unwrap();
    assert_eq!(cfg.sync, SyncPolicy::Normal);
    assert!(toml::from_str::<RecordStoreConfig>("pth = \"x.db\"").is_err());
}

#[test]
fn a_version_2_file_gains_the_objection_trail_and_keeps_its_register() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.db");
    {
        // a record store as the previous build left it: schema 2, one objection
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update_and_check(None, "journal_mode", "wal", |_| Ok(()))
            .unwrap();
        conn.execute_batch(sqlite::SCHEMA_V1).unwrap();
        conn.execute_batch(sqlite::SCHEMA_V2).unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.execute(
            "INSERT INTO objections (nhs_number, note, added_at) VALUES ('9434765919', 'letter', '2026-03-01T10:00:00.000Z')",
            [],
        )
        .unwrap();
    }
    let store = RecordStore::open(&RecordStoreConfig {
        path: path.clone(),
        sync: SyncPolicy::Normal,
        postgres: None,
    })
    .unwrap();
    assert!(store.has_objection("9434765919").unwrap());
    assert!(store.objection_changes(None, 10).unwrap().is_empty());
    assert!(store.remove_objection("9434765919", "cli test").unwrap());
    let changes = store.objection_changes(Some("9434765919"), 10).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].action, "removed");
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, sqlite::SCHEMA_VERSION);
}

#[test]
fn a_version_3_file_gets_its_nhs_numbers_indexed_by_their_digits() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_config(dir.path());
    let spaced = neighbours_bundle("https://fhir.nhs.uk/Id/nhs-number", "943 476 5919");
    RecordStore::open(&cfg)
        .unwrap()
        .apply_bundle(&spaced, None)
        .unwrap();
    {
        // what the previous build left: the number indexed only as written
        let conn = rusqlite::Connection::open(&cfg.path).unwrap();
        conn.execute(
            "DELETE FROM patient_identifiers WHERE value = '9434765919'",
            [],
        )
        .unwrap();
        conn.pragma_update(None, "user_version", 3).unwrap();
    }
    let store = RecordStore::open(&cfg).unwrap();
    let found = holding_9434765919(&store);
    assert_eq!(found.len(), 1, "{found:?}");
    let version: i64 = rusqlite::Connection::open(&cfg.path)
        .unwrap()
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, sqlite::SCHEMA_VERSION);
}

/// A visit an older build stored (a version 5 file: no messages kept) is
/// where what is kept of it begins, as it stands: a message sent after it
/// that arrives late is put in its place from there on; one sent before it
/// is stale, as that build had it.
#[test]
fn a_version_5_files_visit_is_where_its_kept_messages_begin() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_config(dir.path());
    let p = patient(PATIENT, "9434765919", "Smith");
    let stay = |locations: Option<Value>, status: &str| {
        let mut e = encounter("e-old", PATIENT, status);
        e["period"] = json!({"start": "2026-03-01T08:00:00+00:00"});
        if let Some(locations) = locations {
            e["location"] = locations;
        }
        e
    };
    let send = |store: &RecordStore, e: Value, trigger: &str, when: &str| {
        store
            .apply_bundle(&bundle(&[p.clone(), e, event(trigger)]), at(when))
            .unwrap()
    };
    {
        let store = RecordStore::open(&cfg).unwrap();
        send(
            &store,
            stay(Some(json!([place("WARDA", "active")])), "in-progress"),
            "A01",
            "2026-03-01T08:00:00Z",
        );
        let moved = json!([place("WARDB", "active"), place("WARDA", "completed")]);
        send(
            &store,
            stay(Some(moved), "in-progress"),
            "A02",
            "2026-03-01T12:00:00Z",
        );
    }
    {
        // what the previous build left: no messages kept
        let conn = rusqlite::Connection::open(&cfg.path).unwrap();
        conn.execute_batch("DROP TABLE sent").unwrap();
        conn.pragma_update(None, "user_version", 5).unwrap();
    }
    let f = Fixture {
        store: RecordStore::open(&cfg).unwrap(),
        _dir: dir,
    };
    let wards = |f: &Fixture| {
        let mut w = wards_of(f, "e-old");
        w.sort();
        w
    };
    // an update in order, then a transfer sent between the two arriving
    // late: it moves the patient, as in order
    send(
        &f.store,
        stay(None, "in-progress"),
        "A08",
        "2026-03-01T14:00:00Z",
    );
    let to_c = json!([place("WARDC", "active"), place("WARDB", "completed")]);
    send(
        &f.store,
        stay(Some(to_c), "in-progress"),
        "A02",
        "2026-03-01T13:00:00Z",
    );
    assert_eq!(
        wards(&f),
        pairs(&[
            ("WARDA", "completed"),
            ("WARDB", "completed"),
            ("WARDC", "active")
        ])
    );
    // a discharge sent before the upgrade's visit, arriving now: stale
    let mut discharged = stay(Some(json!([place("WARDA", "completed")])), "finished");
    discharged["period"]["end"] = json!("2026-03-01T10:00:00+00:00");
    let outcome = send(&f.store, discharged, "A03", "2026-03-01T10:00:00Z");
    assert!(
        outcome.entries.iter().any(
            |e| e.resource_type == "Encounter" && matches!(e.result, EntryResult::Stale { .. })
        ),
        "{outcome:?}"
    );
    assert_eq!(
        current(&f.store, "Encounter", "e-old")["status"],
        "in-progress"
    );
}
