//! The shared cases on the real PostgreSQL (a schema of their own each, see
//! `store::testing`), and what is PostgreSQL's own: several engine nodes on
//! one database at once, reopening, a schema newer than this build, secrets.
//! Needs `bash tests/postgres/setup.sh` (the README's test command runs it).

use std::sync::Arc;

use serde_json::json;

use super::super::testing::{test_ca, TestSchema};
use super::super::*;

struct Fixture {
    store: RecordStore,
    _schema: TestSchema,
}

fn open() -> Fixture {
    let schema = TestSchema::create("store");
    let store = RecordStore::open(&config(&schema)).unwrap();
    Fixture {
        store,
        _schema: schema,
    }
}

fn config(schema: &TestSchema) -> RecordStoreConfig {
    RecordStoreConfig {
        path: PathBuf::from("unused.db"),
        sync: SyncPolicy::Normal,
        postgres: Some(schema.target.clone()),
    }
}

include!("cases.rs");

#[test]
fn the_store_says_where_it_is_without_the_password() {
    let f = open();
    let location = f.store.location();
    assert!(
        location.starts_with("postgres junction_test@127.0.0.1:"),
        "{location}"
    );
    let password = std::fs::read_to_string(&f._schema.password_file).unwrap();
    assert!(!location.contains(password.trim()));
}

#[test]
fn two_nodes_updating_one_patient_at_once_make_every_version_once() {
    // Two handles on one database are two engine nodes: each has its own
    // connections. Both apply 25 different versions of the same Patient at
    // once; the advisory lock per record serializes them.
    let f = open();
    let other = RecordStore::open(&config(&f._schema)).unwrap();
    let stores = [f.store.clone(), other];
    let threads: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(node, store)| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let family = format!("Node{node}-{i}");
                    store
                        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", &family)]), None)
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let history = stores[1].history("Patient", PATIENT).unwrap();
    let versions: Vec<i64> = history.iter().map(|r| r.version).collect();
    assert_eq!(versions, (1..=50).rev().collect::<Vec<i64>>());
    let current = stores[0].read("Patient", PATIENT).unwrap().unwrap();
    assert_eq!(current.version, 50);
    // the search index follows the current version, once
    assert_eq!(
        stores[0]
            .search_patient_by_identifier(Some(NHS), "9434765919")
            .unwrap()
            .len(),
        1
    );
}

/// `count` NHS numbers that pass modulus 11, from `start` (nine digits) up.
fn valid_nhs_numbers(start: u64, count: usize) -> Vec<String> {
    (start..)
        .filter_map(|base| {
            let digits: Vec<u64> = format!("{base:09}")
                .bytes()
                .map(|b| u64::from(b - b'0'))
                .collect();
            let sum: u64 = digits.iter().zip((2..=10).rev()).map(|(d, w)| d * w).sum();
            match 11 - sum % 11 {
                10 => None,
                11 => Some(format!("{base:09}0")),
                check => Some(format!("{base:09}{check}")),
            }
        })
        .take(count)
        .collect()
}

#[test]
fn two_nodes_writing_a_neighbours_patient_and_ours_for_one_nhs_number_leave_one_live() {
    // Node A stores a neighbour's Patient (its own id, create-only) while
    // node B stores our PAS's (the id the number makes here), for the same
    // NHS number at the same instant. Both lock the number, so the second
    // sees the first: the neighbour's is refused (ours first) or retired
    // (theirs first). Never two live records of one person.
    let f = open();
    let nodes = [
        f.store.clone(),
        RecordStore::open(&config(&f._schema)).unwrap(),
    ];
    let numbers = valid_nhs_numbers(943_476_580, 40);
    assert!(numbers.contains(&"9434765919".to_string()));
    let start = Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(node, store)| {
            let (store, numbers, start) = (store.clone(), numbers.clone(), Arc::clone(&start));
            std::thread::spawn(move || {
                for (i, number) in numbers.iter().enumerate() {
                    start.wait();
                    if node == 0 {
                        let mut theirs = json!({"resourceType": "Patient", "id": format!("nb-{i}"),
                            "identifier": [{"system": NHS, "value": number}]});
                        theirs["name"] = json!([{"family": "Neighbour"}]);
                        let mut entry = put_entry(&theirs);
                        entry["request"]["ifNoneMatch"] = json!("*");
                        let doc = json!({"resourceType": "Bundle", "type": "transaction", "entry": [entry]});
                        if let Err(e) = store.apply_bundle(&doc, None) {
                            assert!(e.to_string().contains("already the record of another Patient"), "{e}");
                        }
                    } else {
                        let ours = crate::mapping::transform::uuid5("Patient", &format!("nhs|{number}"));
                        store
                            .apply_bundle(&bundle(&[patient(&ours, number, "Ours")]), at("2026-11-25T10:00:00Z"))
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for number in &numbers {
        let live: Vec<_> = nodes[0]
            .search_patient_by_identifier(Some(NHS), number)
            .unwrap()
            .into_iter()
            .filter(|p| p["active"] != false)
            .map(|p| p["id"].clone())
            .collect();
        assert_eq!(live.len(), 1, "{number}: {live:?}");
    }
}

#[test]
fn documents_crossing_the_same_records_in_both_orders_do_not_deadlock() {
    // Node A writes Patient then Encounter, node B Encounter then Patient:
    // the locks are taken in one order, so neither waits on the other forever
    // (a deadlock would fail one of them with an error).
    let f = open();
    let other = RecordStore::open(&config(&f._schema)).unwrap();
    let a = f.store.clone();
    let forward = std::thread::spawn(move || {
        for i in 0..20 {
            let status = if i % 2 == 0 {
                "in-progress"
            } else {
                "finished"
            };
            a.apply_bundle(
                &bundle(&[
                    patient(PATIENT, "9434765919", &format!("A{i}")),
                    encounter(ENCOUNTER, PATIENT, status),
                ]),
                None,
            )
            .unwrap();
        }
    });
    for i in 0..20 {
        let status = if i % 2 == 0 {
            "finished"
        } else {
            "in-progress"
        };
        other
            .apply_bundle(
                &bundle(&[
                    encounter(ENCOUNTER, PATIENT, status),
                    patient(PATIENT, "9434765919", &format!("B{i}")),
                ]),
                None,
            )
            .unwrap();
    }
    forward.join().unwrap();
    let patient_versions = other.history("Patient", PATIENT).unwrap().len();
    assert_eq!(patient_versions, 40);
}

#[test]
fn records_and_access_tables_are_shared_and_survive_reopening() {
    let schema = TestSchema::create("reopen");
    {
        let node_a = RecordStore::open(&config(&schema)).unwrap();
        node_a
            .apply_bundle(
                &bundle(&[patient(PATIENT, "9434765919", "Smith")]),
                at("2026-03-01T10:00:00Z"),
            )
            .unwrap();
        node_a
            .add_objection("9434765919", None, "cli node-a")
            .unwrap();
        node_a.add_token("ward", "clinical", &[3; 32]).unwrap();
    }
    let node_b = RecordStore::open(&RecordStoreConfig {
        sync: SyncPolicy::Full,
        ..config(&schema)
    })
    .unwrap();
    assert_eq!(node_b.sync_policy(), SyncPolicy::Full);
    let record = node_b.read("Patient", PATIENT).unwrap().unwrap();
    assert_eq!(record.version, 1);
    assert_eq!(record.event_time, at("2026-03-01T10:00:00Z"));
    assert!(node_b.has_objection("9434765919").unwrap());
    assert_eq!(node_b.live_tokens().unwrap()[0].hash, [3; 32]);
}

#[test]
fn a_schema_newer_than_this_build_is_refused_and_left_alone() {
    let schema = TestSchema::create("newer");
    drop(RecordStore::open(&config(&schema)).unwrap());
    schema.with_client(|client| {
        client
            .batch_execute("INSERT INTO junction_schema (version) VALUES (99)")
            .unwrap()
    });
    let err = RecordStore::open(&config(&schema)).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
    let tables: i64 = schema.with_client(|client| {
        client
            .query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()",
                &[],
            )
            .unwrap()
            .get(0)
    });
    assert_eq!(tables, 12, "nothing created or dropped");
}

#[test]
fn a_version_1_schema_gets_the_mesh_claims_and_its_nhs_numbers_indexed_on_upgrade() {
    let schema = TestSchema::create("upgrade");
    let spaced = neighbours_bundle("https://fhir.nhs.uk/Id/nhs-number", "943 476 5919");
    RecordStore::open(&config(&schema))
        .unwrap()
        .apply_bundle(&spaced, None)
        .unwrap();
    // what the previous build left: version 1, no claims table, an NHS
    // number indexed only as written, no admission times
    schema.with_client(|client| {
        client
            .batch_execute(
                "DROP TABLE mesh_claims; DELETE FROM junction_schema; \
                 ALTER TABLE resources DROP COLUMN admitted_at; \
                 ALTER TABLE resources DROP COLUMN cancelled_at; \
                 INSERT INTO junction_schema (version) VALUES (1); \
                 DELETE FROM patient_identifiers WHERE value = '9434765919'",
            )
            .unwrap()
    });
    let store = RecordStore::open(&config(&schema)).unwrap();
    // version 3 indexes it by its digits
    assert_eq!(holding_9434765919(&store).len(), 1);
    assert_eq!(
        store
            .claim_mesh_message("mesh-inbox:X", "M1", "node-a")
            .unwrap(),
        crate::store::MeshClaim::Fresh
    );
    let version: i64 = schema.with_client(|client| {
        client
            .query_one("SELECT max(version) FROM junction_schema", &[])
            .unwrap()
            .get(0)
    });
    assert_eq!(version, 5);
}

#[test]
fn nodes_starting_together_create_the_schema_once() {
    let schema = Arc::new(TestSchema::create("race"));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let schema = Arc::clone(&schema);
            std::thread::spawn(move || RecordStore::open(&config(&schema)).map(|_| ()))
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    let versions: i64 = schema.with_client(|client| {
        client
            .query_one("SELECT count(*) FROM junction_schema", &[])
            .unwrap()
            .get(0)
    });
    assert_eq!(versions, 1);
}

#[test]
fn the_sync_policy_is_the_configs_whatever_the_servers_default() {
    let schema = TestSchema::create("sync");
    // a server (here: a database) whose default is the opposite of each policy
    for (sync, default, expected) in [
        (SyncPolicy::Full, "off", "on"),
        (SyncPolicy::Normal, "on", "off"),
    ] {
        schema.with_client(|client| {
            client
                .batch_execute(&format!(
                    "ALTER ROLE junction_test IN DATABASE junction_test SET synchronous_commit = {default}"
                ))
                .unwrap()
        });
        let store = RecordStore::open(&RecordStoreConfig {
            sync,
            ..config(&schema)
        })
        .unwrap();
        let pg = store.postgres().unwrap();
        let setting: String = pg
            .with("test", |client| {
                Ok(client.query_one("SHOW synchronous_commit", &[])?.get(0))
            })
            .unwrap();
        assert_eq!(setting, expected, "{sync:?}");
    }
    schema.with_client(|client| {
        client
            .batch_execute(
                "ALTER ROLE junction_test IN DATABASE junction_test RESET synchronous_commit",
            )
            .unwrap()
    });
}

#[test]
fn a_missing_password_is_a_clear_error() {
    let schema = TestSchema::create("secret");
    let mut cfg = config(&schema);
    if let Some(target) = &mut cfg.postgres {
        target.password_file = None;
        target.password_env = Some("JUNCTION_TEST_NO_SUCH_VARIABLE".to_string());
    }
    let err = RecordStore::open(&cfg).unwrap_err().to_string();
    assert!(err.contains("JUNCTION_TEST_NO_SUCH_VARIABLE"), "{err}");
    if let Some(target) = &mut cfg.postgres {
        target.password_env = None;
        target.password_file = Some(PathBuf::from("/nonexistent/password"));
    }
    let err = RecordStore::open(&cfg).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/password"), "{err}");
    if let Some(target) = &mut cfg.postgres {
        target.password_file = None;
    }
    // no password at all: the server refuses, and the message names the database
    let err = RecordStore::open(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("cannot connect (postgres junction_test@"),
        "{err}"
    );
    // a wrong one: the server's SQLSTATE tells the cause (28P01, invalid
    // password), never the server's message
    let wrong = std::env::temp_dir().join(format!("junction-wrong-{}", std::process::id()));
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    if let Some(target) = &mut cfg.postgres {
        target.password_file = Some(wrong.clone());
    }
    let err = RecordStore::open(&cfg).unwrap_err().to_string();
    let _ = std::fs::remove_file(&wrong);
    assert!(err.contains("SQLSTATE 28P01"), "{err}");
}

#[test]
fn with_a_ca_file_every_connection_is_tls_and_the_server_is_checked() {
    let schema = TestSchema::create("tls");
    let (ca, other_ca) = test_ca();
    let name = format!("junction-tls-{}", uuid::Uuid::new_v4().simple());
    let store = RecordStore::open(&RecordStoreConfig {
        postgres: Some(schema.tls_target(&ca, &name)),
        ..config(&schema)
    })
    .unwrap();
    assert!(store.location().ends_with("(TLS)"), "{}", store.location());
    store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "Smith")]), None)
        .unwrap();
    assert_eq!(store.read("Patient", PATIENT).unwrap().unwrap().version, 1);
    // the server's view of the store's (pooled) connection
    let (connections, over_tls): (i64, i64) = schema.with_client(|client| {
        let row = client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE s.ssl)
                 FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                 WHERE a.application_name = $1",
                &[&name],
            )
            .unwrap();
        (row.get(0), row.get(1))
    });
    assert!(connections >= 1);
    assert_eq!(connections, over_tls);

    // a server whose certificate is not from the CA given: refused
    let err = RecordStore::open(&RecordStoreConfig {
        postgres: Some(schema.tls_target(&other_ca, &name)),
        ..config(&schema)
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot connect"), "{err}");
    // a CA file that is not one: said at open, naming the file
    let err = RecordStore::open(&RecordStoreConfig {
        postgres: Some(schema.tls_target(Path::new("/nonexistent/ca.pem"), &name)),
        ..config(&schema)
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
}

#[test]
fn a_sqlite_record_store_is_copied_whole_into_an_empty_database_once() {
    // a node's SQLite store with a bit of everything
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.db");
    let sqlite = RecordStore::open(&RecordStoreConfig {
        path: path.clone(),
        sync: SyncPolicy::Normal,
        postgres: None,
    })
    .unwrap();
    sqlite
        .apply_bundle(
            &bundle(&[
                patient(PATIENT, "9434765919", "Smith"),
                encounter(ENCOUNTER, PATIENT, "in-progress"),
            ]),
            at("2026-03-01T10:00:00Z"),
        )
        .unwrap();
    sqlite
        .apply_bundle(
            &bundle(&[
                patient(PATIENT, "9434765919", "Smyth"),
                encounter(ENCOUNTER, PATIENT, "finished"),
                observation(OBSERVATION, PATIENT, ENCOUNTER),
            ]),
            at("2026-03-02T10:00:00Z"),
        )
        .unwrap();
    sqlite.add_token("ward", "clinical", &[5; 32]).unwrap();
    sqlite
        .add_objection("9990000018", Some("letter"), "cli test")
        .unwrap();
    let audited = sqlite
        .append_audit(&entry("ward", &[PATIENT], 200))
        .unwrap();

    let f = open();
    let copied = f.store.copy_from_sqlite(&path).unwrap();
    let rows: Vec<u64> = [
        "resources",
        "history",
        "api_tokens",
        "audit",
        "objections",
        "objection_changes",
    ]
    .iter()
    .map(|t| copied.rows(t))
    .collect();
    assert_eq!(rows, [3, 5, 1, 1, 1, 1]);
    // the same answers from both
    for (rtype, id) in [
        ("Patient", PATIENT),
        ("Encounter", ENCOUNTER),
        ("Observation", OBSERVATION),
    ] {
        assert_eq!(
            f.store.read(rtype, id).unwrap(),
            sqlite.read(rtype, id).unwrap()
        );
        assert_eq!(
            f.store.history(rtype, id).unwrap(),
            sqlite.history(rtype, id).unwrap()
        );
    }
    assert_eq!(
        f.store.everything(PATIENT).unwrap(),
        sqlite.everything(PATIENT).unwrap()
    );
    assert_eq!(
        f.store
            .search_patient_by_identifier(Some(NHS), "9434765919")
            .unwrap(),
        sqlite
            .search_patient_by_identifier(Some(NHS), "9434765919")
            .unwrap()
    );
    assert_eq!(
        f.store.live_tokens().unwrap(),
        sqlite.live_tokens().unwrap()
    );
    assert_eq!(
        f.store.list_objections().unwrap(),
        sqlite.list_objections().unwrap()
    );
    assert_eq!(
        f.store.objection_changes(None, 10).unwrap(),
        sqlite.objection_changes(None, 10).unwrap()
    );
    let query = AuditQuery {
        patient: None,
        token: None,
        limit: 10,
        before: None,
    };
    assert_eq!(
        f.store.audit(&query).unwrap(),
        sqlite.audit(&query).unwrap()
    );
    // ids go on after the copied ones
    let next = f.store.append_audit(&entry("ward", &[], 404)).unwrap();
    assert!(next > audited, "{next} after {audited}");
    // the next version of a copied record follows its history
    let updated = f
        .store
        .apply_bundle(
            &bundle(&[patient(PATIENT, "9434765919", "Smithe")]),
            at("2026-03-03T10:00:00Z"),
        )
        .unwrap();
    assert_eq!(
        results(&updated),
        [("Patient", EntryResult::Updated { version: 3 })]
    );

    // never into a database that has data, never from nowhere, never into SQLite
    assert!(matches!(
        f.store.copy_from_sqlite(&path),
        Err(StoreError::NotEmpty { .. })
    ));
    let empty = open();
    assert!(matches!(
        empty.store.copy_from_sqlite(&dir.path().join("none.db")),
        Err(StoreError::NoSuchFile { .. })
    ));
    assert!(!dir.path().join("none.db").exists());
    assert!(matches!(
        sqlite.copy_from_sqlite(&path),
        Err(StoreError::NotPostgres)
    ));
}
