//! The destinations against real peers: files in a temp folder, a real axum
//! FHIR server, a real Junction MLLP listener (in-process, with its journal)
//! and tiny MLLP servers that refuse or never answer, a real SQLite record
//! store, and NHS England's MESH sandbox read back with NHS's own client.
//!
//! Each destination is made by `delivery::build::build` from a
//! `DestinationConfig`, as the engine makes them.

mod harness;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use junction::delivery::build::{build, BuildContext, BuildError};
use junction::delivery::{Deliver, DeliveryItem, DestinationConfig, DestinationKind, Payload};
use junction::journal::{Journal, MessageQuery, StoreConfig};
use junction::mesh::{MeshClient, MeshMailboxConfig, MessageId, Secret};
use junction::mllp::codec::MllpCodec;
use junction::mllp::listener::{Listener, ListenerConfig};
use junction::store::{RecordStore, RecordStoreConfig};
use junction::telemetry::metrics::Metrics;
use serde_json::{json, Value};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use harness::mesh::{python_download, Sandbox};

fn item(id: i64, document: &[u8], raw: &[u8]) -> DeliveryItem {
    DeliveryItem {
        id,
        message_id: id,
        destination: "test".into(),
        patient_key: "p1".into(),
        control_id: "C1".into(),
        message_type: "ADT^A01".into(),
        document: Bytes::copy_from_slice(document),
        raw: Bytes::copy_from_slice(raw),
        attempt: 1,
        retried: false,
        queued_at_ms: QUEUED_AT_MS,
    }
}

/// When every test item was queued (its local id is `junction-<id>-<this>`).
const QUEUED_AT_MS: i64 = 1_795_000_000_000;

fn make(cfg: &DestinationConfig) -> Arc<dyn Deliver> {
    let mailboxes = BTreeMap::new();
    let ctx = BuildContext {
        records: None,
        mailboxes: &mailboxes,
    };
    build("test", cfg, &ctx).unwrap()
}

fn document(n: usize) -> Vec<u8> {
    // Pretty-printed with a non-ASCII name: byte-identity must hold for any bytes.
    serde_json::to_vec_pretty(&json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [{"fullUrl": format!("urn:uuid:p{n}"),
                   "resource": {"resourceType": "Patient", "id": format!("p{n}"),
                                "name": [{"family": "TESTPATIENT", "given": ["Zoë"]}]},
                   "request": {"method": "PUT", "url": format!("Patient/p{n}")}}]
    }))
    .unwrap()
}

// ---------------------------------------------------------------- build

#[test]
fn build_refuses_what_config_cannot_know() {
    let mailboxes = BTreeMap::new();
    let ctx = BuildContext {
        records: None,
        mailboxes: &mailboxes,
    };
    let err = |cfg: DestinationConfig| match build("d", &cfg, &ctx) {
        Err(e) => e,
        Ok(_) => panic!("{cfg:?} built"),
    };
    let e = err(DestinationConfig::new(DestinationKind::Store));
    assert!(matches!(e, BuildError::NoRecordStore { .. }), "{e}");

    let mut mesh = DestinationConfig::new(DestinationKind::Mesh);
    mesh.mailbox = Some("nope".into());
    mesh.to = Some("X26ABC2".into());
    mesh.workflow_id = Some("W".into());
    let e = err(mesh);
    assert_eq!(
        e.to_string(),
        "destination `d`: unknown mailbox `nope`, expected one of the `[mesh.mailboxes.<id>]` tables"
    );

    let e = err(DestinationConfig::new(DestinationKind::File));
    assert_eq!(
        e.to_string(),
        "destination `d` (kind = \"file\") needs `dir`"
    );

    let mut fhir = DestinationConfig::new(DestinationKind::Fhir);
    fhir.url = Some("http://x".into());
    fhir.token_env = Some("A".into());
    fhir.token_file = Some("b".into());
    assert!(err(fhir).to_string().contains("token_env"));
}

// ---------------------------------------------------------------- file

#[tokio::test]
async fn file_writes_atomically_byte_identical_and_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out/nested");
    let mut cfg = DestinationConfig::new(DestinationKind::File);
    cfg.dir = Some(dir.clone());
    let dest = make(&cfg);

    let doc = document(1);
    let first = item(42, &doc, b"");
    let delivered = dest.deliver(&first).await.unwrap();
    let path = dir.join(format!("junction-42-{QUEUED_AT_MS}.json"));
    assert_eq!(
        delivered.remote_ref.as_deref(),
        Some(path.to_str().unwrap())
    );
    assert_eq!(std::fs::read(&path).unwrap(), doc);

    // The same item again (a repeat after a crash): same name, overwritten, no duplicate.
    let mut again = first.clone();
    again.attempt = 2;
    dest.deliver(&again).await.unwrap();
    dest.deliver(&item(43, &document(2), b"")).await.unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    // No temporary file is left behind.
    assert_eq!(
        names,
        [
            format!("junction-42-{QUEUED_AT_MS}.json"),
            format!("junction-43-{QUEUED_AT_MS}.json")
        ]
    );
    assert_eq!(std::fs::read(&path).unwrap(), doc);
    assert_eq!(
        std::fs::read(dir.join(format!("junction-43-{QUEUED_AT_MS}.json"))).unwrap(),
        document(2)
    );
}

#[tokio::test]
async fn file_into_an_unwritable_place_is_retryable_and_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let mut cfg = DestinationConfig::new(DestinationKind::File);
    cfg.dir = Some(blocker.join("sub"));
    let err = make(&cfg).deliver(&item(1, b"{}", b"")).await.unwrap_err();
    assert!(err.retryable, "{err}");
    assert!(err.message.contains("a-file/sub"), "{err}");
}

// ---------------------------------------------------------------- fhir

#[derive(Default)]
struct FhirSeen {
    requests: Vec<(HeaderMap, Bytes)>,
}

#[derive(Clone)]
struct FhirServer {
    seen: Arc<Mutex<FhirSeen>>,
    mode: Arc<Mutex<&'static str>>,
}

async fn fhir_handler(
    State(server): State<FhirServer>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    server
        .seen
        .lock()
        .unwrap()
        .requests
        .push((headers, body.clone()));
    let mode = *server.mode.lock().unwrap();
    let outcome = |code: &str| {
        json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code,
               "diagnostics": "NHS number 9434765919 of SMITH is not valid"}]})
        .to_string()
    };
    match mode {
        "created" => (
            StatusCode::CREATED,
            [("location", "http://fhir.example/Bundle/resp-1")],
            "{}",
        )
            .into_response(),
        "ok" => (StatusCode::OK, "{}").into_response(),
        "unavailable" => (StatusCode::SERVICE_UNAVAILABLE, outcome("transient")).into_response(),
        "bad" => (StatusCode::BAD_REQUEST, outcome("invalid")).into_response(),
        "unauthorized" => (StatusCode::UNAUTHORIZED, outcome("login")).into_response(),
        _ => {
            // "slow": far longer than the destination's timeout.
            tokio::time::sleep(Duration::from_secs(120)).await;
            (StatusCode::OK, "{}").into_response()
        }
    }
}

async fn fhir_server() -> (String, FhirServer) {
    let server = FhirServer {
        seen: Arc::default(),
        mode: Arc::new(Mutex::new("created")),
    };
    let app = axum::Router::new()
        .route("/fhir", axum::routing::post(fhir_handler))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/fhir"), server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_statuses_map_to_delivered_retry_and_permanent() {
    let (url, server) = fhir_server().await;
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let mut cfg = DestinationConfig::new(DestinationKind::Fhir);
    cfg.url = Some(url);
    cfg.token_file = Some(token_file.clone());
    // Generous for the answers that come at once (the machine may be loaded);
    // a second destination with a short timeout meets the server that stalls.
    cfg.timeout_secs = 60;
    let dest = make(&cfg);
    cfg.timeout_secs = 1;
    let impatient = make(&cfg);
    let doc = document(7);
    let it = item(7, &doc, b"");
    let set = |mode: &'static str| *server.mode.lock().unwrap() = mode;

    let delivered = dest.deliver(&it).await.unwrap();
    assert_eq!(
        delivered.remote_ref.as_deref(),
        Some("http://fhir.example/Bundle/resp-1")
    );
    {
        let seen = server.seen.lock().unwrap();
        let (headers, body) = &seen.requests[0];
        assert_eq!(body.as_ref(), doc.as_slice());
        assert_eq!(headers["content-type"], "application/fhir+json");
        assert_eq!(headers["accept"], "application/fhir+json");
        assert_eq!(headers["authorization"], "Bearer s3cret-token");
    }

    set("ok");
    let delivered = dest.deliver(&it).await.unwrap();
    assert_eq!(delivered.remote_ref.as_deref(), Some("http 200"));

    set("unavailable");
    let err = dest.deliver(&it).await.unwrap_err();
    assert!(err.retryable, "{err}");
    assert!(err.message.contains("http 503"), "{err}");

    set("bad");
    let err = dest.deliver(&it).await.unwrap_err();
    assert!(!err.retryable, "{err}");
    assert!(err.message.contains("http 400"), "{err}");
    assert!(err.message.contains("`invalid`"), "{err}");
    // The OperationOutcome's diagnostics quote patient data: never in the message.
    assert!(
        !err.message.contains("SMITH") && !err.message.contains("9434765919"),
        "{err}"
    );

    set("unauthorized");
    let err = dest.deliver(&it).await.unwrap_err();
    assert!(err.retryable, "{err}");
    assert!(err.message.contains("token"), "{err}");
    assert!(!err.message.contains("s3cret"), "{err}");

    set("slow");
    let err = impatient.deliver(&it).await.unwrap_err();
    assert!(err.retryable, "{err}");
    assert!(err.message.contains("within 1 s"), "{err}");

    // A missing token file: retryable, named, no request made.
    let before = server.seen.lock().unwrap().requests.len();
    std::fs::remove_file(&token_file).unwrap();
    set("created");
    let err = dest.deliver(&it).await.unwrap_err();
    assert!(err.retryable, "{err}");
    assert!(err.message.contains("token_file"), "{err}");
    assert_eq!(server.seen.lock().unwrap().requests.len(), before);
}

#[tokio::test]
async fn fhir_missing_token_variable_and_refused_connection_are_retryable() {
    let mut cfg = DestinationConfig::new(DestinationKind::Fhir);
    cfg.url = Some(format!("http://127.0.0.1:{}/fhir", closed_port()));
    cfg.token_env = Some("JUNCTION_TEST_FHIR_TOKEN_THAT_IS_NEVER_SET".into());
    let err = make(&cfg).deliver(&item(1, b"{}", b"")).await.unwrap_err();
    assert!(err.retryable, "{err}");
    assert!(
        err.message
            .contains("`JUNCTION_TEST_FHIR_TOKEN_THAT_IS_NEVER_SET` (token_env) is not set"),
        "{err}"
    );

    cfg.token_env = None;
    let err = make(&cfg).deliver(&item(1, b"{}", b"")).await.unwrap_err();
    assert!(err.retryable, "{err}");
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------- mllp

/// A real Junction MLLP listener with its journal, in this process.
async fn junction_listener(dir: &Path) -> (SocketAddr, Journal, CancellationToken) {
    let store = StoreConfig {
        path: dir.join("junction.db"),
        sync: Default::default(),
        records: dir.join("records.db"),
        retain_days: None,
        ..Default::default()
    };
    let journal = Journal::open(&store).unwrap();
    let cfg: ListenerConfig = toml::from_str("bind = \"127.0.0.1:0\"").unwrap();
    let listener = Listener::bind("downstream", cfg).await.unwrap();
    let addr = listener.local_addr();
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    tokio::spawn(listener.run(
        journal.clone(),
        Arc::new(Metrics::new()),
        cancel.clone(),
        tracker,
    ));
    (addr, journal, cancel)
}

fn mllp_dest(addr: SocketAddr, timeout_secs: u64) -> Arc<dyn Deliver> {
    let mut cfg = DestinationConfig::new(DestinationKind::Mllp);
    cfg.address = Some(addr.to_string());
    cfg.timeout_secs = timeout_secs;
    make(&cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_forward_to_a_junction_listener_is_acknowledged_and_journaled_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, journal, cancel) = junction_listener(tmp.path()).await;
    let dest = mllp_dest(addr, 30);
    let root = harness::repo_root().join("samples");
    for (n, (sample, control_id)) in [
        ("adt_a01_admission.hl7", "RAL20261120143512001"),
        ("oru_r01_fbc_ue.hl7", ""),
    ]
    .iter()
    .enumerate()
    {
        let raw = std::fs::read(root.join(sample)).unwrap();
        let mut it = item(n as i64 + 1, b"{}", &raw);
        let delivered = dest.deliver(&it).await.unwrap();
        let msa_2 = delivered.remote_ref.unwrap();
        if !control_id.is_empty() {
            assert_eq!(msa_2, *control_id);
        }
        let found = journal
            .search(MessageQuery {
                control_id: Some(msa_2.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(found.len(), 1, "{sample}");
        assert_eq!(found[0].ack_code, "AA");
        assert_eq!(journal.raw(found[0].id).await.unwrap().unwrap(), raw);

        // A repeat (at-least-once) is acknowledged again and not journaled twice.
        it.attempt = 2;
        assert_eq!(dest.deliver(&it).await.unwrap().remote_ref.unwrap(), msa_2);
        let found = journal
            .search(MessageQuery {
                control_id: Some(msa_2),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(found.len(), 1, "{sample}");
    }
    cancel.cancel();
}

/// `raw` with MSH-10 and MSH-15 set.
fn with_msh15(raw: &[u8], control_id: &str, msh15: &str) -> Vec<u8> {
    let text = String::from_utf8(raw.to_vec()).unwrap();
    let (msh, rest) = text.split_once('\r').unwrap();
    let mut fields: Vec<&str> = msh.split('|').collect();
    fields.resize(fields.len().max(16), "");
    fields[9] = control_id;
    fields[14] = msh15;
    format!("{}\r{rest}", fields.join("|")).into_bytes()
}

/// Enhanced mode: a message whose MSH-15 asks for no accept ACK (NE), or for
/// one on error only (ER), is delivered without one, once, instead of being
/// resent at every ACK timeout; an ER message the listener refuses is a NAK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_forward_waits_only_for_the_ack_msh_15_asks_for() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, journal, cancel) = junction_listener(tmp.path()).await;
    let dest = mllp_dest(addr, 30);
    let a01 = std::fs::read(harness::repo_root().join("samples/adt_a01_admission.hl7")).unwrap();
    for (n, (control_id, msh15)) in [("ENH-NE", "NE"), ("ENH-ER", "ER"), ("ENH-NE2", "ne")]
        .into_iter()
        .enumerate()
    {
        let it = item(n as i64 + 1, b"{}", &with_msh15(&a01, control_id, msh15));
        let delivered = tokio::time::timeout(Duration::from_secs(15), dest.deliver(&it))
            .await
            .expect("no waiting for an ACK that is not coming")
            .unwrap();
        assert_eq!(delivered.remote_ref, None, "{control_id}");
        // (with NE the sender does not wait for the commit: the listener
        // journals it a moment later)
        let mut found = Vec::new();
        for _ in 0..100 {
            found = journal
                .search(MessageQuery {
                    control_id: Some(control_id.to_string()),
                    ..Default::default()
                })
                .await
                .unwrap();
            if !found.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(found.len(), 1, "{control_id} journaled once");
        assert_eq!(found[0].status, "accepted");
    }
    // ER and an error (no MSH-10): the listener rejects it (CR: a failed header
    // edit), and that is final
    let broken = with_msh15(&a01, "", "ER");
    let err = dest.deliver(&item(9, b"{}", &broken)).await.unwrap_err();
    assert!(!err.retryable, "{err}");
    assert!(err.message.contains("answered CR"), "{err}");
    cancel.cancel();
}

/// An MLLP server answering every frame with `answer` (or never, when `None`).
async fn mllp_server(answer: Option<&'static str>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut framed = Framed::new(stream, MllpCodec::default());
                while let Some(Ok(_frame)) = framed.next().await {
                    match answer {
                        Some(ack) => {
                            if framed.send(ack.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        None => tokio::time::sleep(Duration::from_secs(300)).await,
                    }
                }
            });
        }
    });
    addr
}

const MSG: &[u8] = b"MSH|^~\\&|PAS|RAL|DS|X|20260101120000||ADT^A01|C1|P|2.5\rPID|1||9434765919^^^NHS^NH||SMITH^JOHN\r";

#[tokio::test]
async fn mllp_forward_refused_is_permanent_without_the_error_text() {
    let addr = mllp_server(Some(
        "MSH|^~\\&|DS|X|PAS|RAL|20260101120001||ACK|A9|P|2.5\rMSA|AR|C1\rERR||PID^1^3|102^Data type error^HL70357|E||||SMITH JOHN 9434765919 is not valid\r",
    ))
    .await;
    let err = mllp_dest(addr, 30)
        .deliver(&item(1, b"{}", MSG))
        .await
        .unwrap_err();
    assert!(!err.retryable, "{err}");
    assert!(
        err.message
            .ends_with("answered AR (error code 102, at PID^1^3)"),
        "{err}"
    );
    assert!(
        !err.message.contains("SMITH") && !err.message.contains("9434765919"),
        "{err}"
    );

    let addr = mllp_server(Some(
        "MSH|^~\\&|DS|X|PAS|RAL|20260101120001||ACK|A9|P|2.3\rMSA|AE|C1|bad\r",
    ))
    .await;
    let err = mllp_dest(addr, 30)
        .deliver(&item(1, b"{}", MSG))
        .await
        .unwrap_err();
    assert!(!err.retryable, "{err}");
    assert!(err.message.ends_with("answered AE"), "{err}");

    // A document with no HL7 original (from a MESH inbox) cannot be forwarded.
    let err = mllp_dest(addr, 30)
        .deliver(&item(1, b"{}", b"{\"resourceType\":\"Bundle\"}"))
        .await
        .unwrap_err();
    assert!(!err.retryable, "{err}");
}

#[tokio::test]
async fn mllp_forward_without_an_ack_or_a_listener_is_retryable() {
    let silent = mllp_server(None).await;
    let err = mllp_dest(silent, 1)
        .deliver(&item(1, b"{}", MSG))
        .await
        .unwrap_err();
    assert!(err.retryable, "{err}");
    // Usually the ACK wait; on a very loaded machine the connect may be what timed out.
    assert!(
        err.message.contains("no ACK") || err.message.contains("timed out"),
        "{err}"
    );

    let refused = SocketAddr::from(([127, 0, 0, 1], closed_port()));
    let err = mllp_dest(refused, 5)
        .deliver(&item(1, b"{}", MSG))
        .await
        .unwrap_err();
    assert!(err.retryable, "{err}");
    assert!(err.message.contains("cannot connect"), "{err}");
}

// ---------------------------------------------------------------- store

/// A Patient and the Provenance of the event, recorded (EVN-2) at `recorded`:
/// the time documents are ordered by.
fn store_document(family: &str, recorded: &str, provenance_id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:pat-1",
             "resource": {"resourceType": "Patient", "id": "pat-1",
                          "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}],
                          "name": [{"family": family}]},
             "request": {"method": "PUT", "url": "Patient/pat-1"}},
            {"fullUrl": format!("urn:uuid:{provenance_id}"),
             "resource": {"resourceType": "Provenance", "id": provenance_id,
                          "target": [{"reference": "urn:uuid:pat-1"}],
                          "occurredDateTime": "2026-03-01T09:00:00+00:00",
                          "recorded": recorded},
             "request": {"method": "PUT", "url": format!("Provenance/{provenance_id}")}}
        ]
    }))
    .unwrap()
}

#[tokio::test]
async fn store_writes_and_an_older_event_does_not_overwrite_newer_data() {
    let tmp = tempfile::tempdir().unwrap();
    let records = RecordStore::open(&RecordStoreConfig {
        path: tmp.path().join("records.db"),
        sync: Default::default(),
        postgres: None,
    })
    .unwrap();
    let mailboxes = BTreeMap::new();
    let ctx = BuildContext {
        records: Some(&records),
        mailboxes: &mailboxes,
    };
    let dest = build(
        "store",
        &DestinationConfig::new(DestinationKind::Store),
        &ctx,
    )
    .unwrap();

    // The event recorded at 11:00 arrives first, then the one recorded at 10:00.
    let newer = store_document("NEWER", "2026-03-01T11:00:00+00:00", "prov-11");
    let delivered = dest.deliver(&item(1, &newer, b"")).await.unwrap();
    assert_eq!(delivered.remote_ref.as_deref(), Some("2 written"));
    let older = store_document("OLDER", "2026-03-01T10:00:00+00:00", "prov-10");
    let delivered = dest.deliver(&item(2, &older, b"")).await.unwrap();
    assert_eq!(delivered.remote_ref.as_deref(), Some("1 written, 1 stale"));
    // The same item again: nothing changes.
    let delivered = dest.deliver(&item(2, &older, b"")).await.unwrap();
    assert_eq!(
        delivered.remote_ref.as_deref(),
        Some("0 written, 1 stale, 1 unchanged")
    );

    // A fresh handle on the same file sees the newer name, version 1.
    drop(dest);
    let reopened = RecordStore::open(&RecordStoreConfig {
        path: tmp.path().join("records.db"),
        sync: Default::default(),
        postgres: None,
    })
    .unwrap();
    let patient = reopened.read("Patient", "pat-1").unwrap().unwrap();
    assert_eq!(patient.version, 1);
    let resource: Value = patient.resource.unwrap();
    assert_eq!(resource["name"][0]["family"], "NEWER");

    // A document the store refuses is permanent; one that is not JSON too.
    let err = build(
        "store",
        &DestinationConfig::new(DestinationKind::Store),
        &ctx,
    )
    .unwrap()
    .deliver(&item(
        3,
        br#"{"resourceType":"Bundle","type":"batch"}"#,
        b"",
    ))
    .await
    .unwrap_err();
    assert!(!err.retryable, "{err}");
    assert!(err.message.contains("transaction"), "{err}");
    let err = build(
        "store",
        &DestinationConfig::new(DestinationKind::Store),
        &ctx,
    )
    .unwrap()
    .deliver(&item(4, b"not json", b""))
    .await
    .unwrap_err();
    assert!(!err.retryable, "{err}");
}

// ---------------------------------------------------------------- mesh

const WORKFLOW: &str = "TEST_WORKFLOW";

/// A `[destinations.hwe]` sending from `[mesh.mailboxes.junction]` (X26ABC1,
/// secrets from files in the sandbox's folder) to X26ABC2.
fn mesh_dest(sandbox: &Sandbox, password: &str) -> (Arc<dyn Deliver>, std::path::PathBuf) {
    mesh_dest_with(sandbox, password, Payload::Document)
}

fn mesh_dest_with(
    sandbox: &Sandbox,
    password: &str,
    payload: Payload,
) -> (Arc<dyn Deliver>, std::path::PathBuf) {
    let password_file = sandbox.dir.path().join("password");
    let key_file = sandbox.dir.path().join("shared-key");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    std::fs::write(&key_file, "TestKey\n").unwrap();
    let mut mailbox = MeshMailboxConfig::new(&sandbox.url, "X26ABC1");
    mailbox.password_file = Some(password_file.clone());
    mailbox.shared_key_file = Some(key_file);
    mailbox.timeout_secs = 60;
    mailbox.max_retries = 1;
    mailbox.retry_backoff_ms = 20;
    let mailboxes = BTreeMap::from([("junction".to_string(), mailbox)]);
    let mut cfg = DestinationConfig::new(DestinationKind::Mesh);
    cfg.mailbox = Some("junction".into());
    cfg.to = Some("X26ABC2".into());
    cfg.workflow_id = Some(WORKFLOW.into());
    cfg.subject = Some("junction document".into());
    cfg.payload = payload;
    let ctx = BuildContext {
        records: None,
        mailboxes: &mailboxes,
    };
    (build("hwe", &cfg, &ctx).unwrap(), password_file)
}

fn receiver(sandbox: &Sandbox) -> MeshClient {
    let mut config = MeshMailboxConfig::new(&sandbox.url, "X26ABC2");
    config.timeout_secs = 60;
    MeshClient::with_secrets(
        &config,
        Secret::new("password".into()),
        Secret::new("TestKey".into()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_delivers_a_document_nhs_client_downloads_byte_identical() {
    let sandbox = Sandbox::start();
    let (dest, _) = mesh_dest(&sandbox, "password");
    let doc = document(5);
    let delivered = dest.deliver(&item(5, &doc, b"")).await.unwrap();
    let id = MessageId::new(delivered.remote_ref.unwrap());

    let (body, headers) = python_download(&sandbox, "X26ABC2", &id, true, &[]);
    assert_eq!(body, doc);
    let text = headers.to_string();
    let local_id = format!("junction-5-{QUEUED_AT_MS}");
    let file_name = format!("{local_id}.json");
    for expected in [
        local_id.as_str(),
        file_name.as_str(),
        WORKFLOW,
        "junction document",
        "X26ABC1",
    ] {
        assert!(text.contains(expected), "{expected} not in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_with_payload_original_sends_the_hl7_as_received() {
    let sandbox = Sandbox::start();
    let (dest, _) = mesh_dest_with(&sandbox, "password", Payload::Original);
    let raw = std::fs::read(harness::repo_root().join("samples/oru_r01_fbc_ue.hl7")).unwrap();
    let delivered = dest.deliver(&item(6, &document(6), &raw)).await.unwrap();
    let id = MessageId::new(delivered.remote_ref.unwrap());
    let (body, headers) = python_download(&sandbox, "X26ABC2", &id, true, &[]);
    assert_eq!(body, raw, "the HL7 byte for byte, not the Bundle");
    let text = headers.to_string();
    for expected in [
        format!("junction-6-{QUEUED_AT_MS}.hl7"),
        "hl7-v2".to_string(),
    ] {
        assert!(text.contains(&expected), "{expected} not in {text}");
    }
}

#[tokio::test]
async fn file_with_payload_original_writes_the_message_as_hl7() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = DestinationConfig::new(DestinationKind::File);
    cfg.dir = Some(tmp.path().to_path_buf());
    cfg.payload = Payload::Original;
    let dest = make(&cfg);
    let raw = b"MSH|^~\\&|LIMS|RAL|||20261123||ORU^R01|L1|P|2.4\rPID|1\r";
    dest.deliver(&item(7, &document(7), raw)).await.unwrap();
    let path = tmp.path().join(format!("junction-7-{QUEUED_AT_MS}.hl7"));
    assert_eq!(std::fs::read(path).unwrap(), raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_wrong_password_is_retryable_and_a_corrected_file_is_picked_up() {
    let sandbox = Sandbox::start();
    let (dest, password_file) = mesh_dest(&sandbox, "wrong-password");
    let doc = document(6);
    let mut it = item(6, &doc, b"");
    let err = dest.deliver(&it).await.unwrap_err();
    assert!(err.retryable, "{err}");
    assert!(err.message.contains("refused the credentials"), "{err}");
    assert!(err.message.contains("X26ABC1"), "{err}");
    assert!(!err.message.contains("wrong-password"), "{err}");

    // A missing password file: retryable, the file named.
    std::fs::remove_file(&password_file).unwrap();
    it.attempt = 2;
    let err = dest.deliver(&it).await.unwrap_err();
    assert!(err.retryable, "{err}");
    assert!(
        err.message.contains(password_file.to_str().unwrap()),
        "{err}"
    );

    // The operator fixes the file: the next attempt delivers, without a restart.
    std::fs::write(&password_file, "password\n").unwrap();
    it.attempt = 3;
    let id = MessageId::new(dest.deliver(&it).await.unwrap().remote_ref.unwrap());
    let received = receiver(&sandbox).download(&id).await.unwrap();
    assert_eq!(received.body.as_ref(), doc.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_a_later_attempt_finds_the_earlier_message_instead_of_duplicating() {
    let sandbox = Sandbox::start();
    let (dest, _) = mesh_dest(&sandbox, "password");
    let doc = document(8);
    let mut it = item(8, &doc, b"");
    let first = dest.deliver(&it).await.unwrap().remote_ref.unwrap();
    // The queue did not record the success (say a crash): attempt 2 of the same item.
    it.attempt = 2;
    let second = dest.deliver(&it).await.unwrap().remote_ref.unwrap();
    assert_eq!(first, second);
    let inbox = receiver(&sandbox).inbox().await.unwrap();
    assert_eq!(inbox, vec![MessageId::new(first.clone())]);
    // Dead-lettered after an ambiguous attempt, then retried by hand: its count
    // starts again at 1, and it still asks tracking rather than posting again.
    it.attempt = 1;
    it.retried = true;
    let retried = dest.deliver(&it).await.unwrap().remote_ref.unwrap();
    assert_eq!(retried, first);
    assert_eq!(receiver(&sandbox).inbox().await.unwrap().len(), 1);

    // Another item is a new message.
    let third = dest
        .deliver(&item(9, &document(9), b""))
        .await
        .unwrap()
        .remote_ref
        .unwrap();
    assert_ne!(third, second);
    assert_eq!(receiver(&sandbox).inbox().await.unwrap().len(), 2);
}

#[tokio::test]
async fn mesh_missing_secret_variable_is_retryable_and_named() {
    let mut mailbox = MeshMailboxConfig::new("http://127.0.0.1:9", "X26ABC1");
    mailbox.password_env = Some("JUNCTION_TEST_MESH_PASSWORD_NEVER_SET".into());
    mailbox.shared_key_env = Some("JUNCTION_TEST_MESH_KEY_NEVER_SET".into());
    let mailboxes = BTreeMap::from([("junction".to_string(), mailbox)]);
    let mut cfg = DestinationConfig::new(DestinationKind::Mesh);
    cfg.mailbox = Some("junction".into());
    cfg.to = Some("X26ABC2".into());
    cfg.workflow_id = Some(WORKFLOW.into());
    let ctx = BuildContext {
        records: None,
        mailboxes: &mailboxes,
    };
    // Building succeeds: the secret is needed only to deliver.
    let dest = build("hwe", &cfg, &ctx).unwrap();
    let err = dest.deliver(&item(1, b"{}", b"")).await.unwrap_err();
    assert!(err.retryable, "{err}");
    assert!(
        err.message
            .contains("JUNCTION_TEST_MESH_PASSWORD_NEVER_SET"),
        "{err}"
    );
}
