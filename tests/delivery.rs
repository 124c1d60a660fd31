//! Acceptance of the delivery queue, end to end: the real `junction serve`
//! binary with real routes and mappings, a file destination into a temp
//! folder, and a FHIR destination pointed at a real HTTP server (axum) run by
//! the test, which answers 503 while "down", 400 for a document it refuses,
//! and 201 otherwise.
//!
//! - A FHIR server that is down keeps documents queued (the file destination
//!   gets them meanwhile); once up, every document arrives, in order per
//!   patient. A replay queues a message's documents anew.
//! - A 400 dead-letters that document only; the patient's later documents and
//!   other patients' go on; a retry of the dead letter delivers it, and then the
//!   patient's later document again, so the server ends with the newest.
//! - A message no route takes is kept as unrouted and visible in the API.
//!
//! Every wait is a poll with a generous deadline.

mod harness;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use bytes::Bytes;
use serde_json::Value;

use harness::{http_post, Engine};
use junction::mllp::client::MllpClient;

const DEADLINE: Duration = Duration::from_secs(90);

/// The FHIR server under the test's control.
#[derive(Default)]
struct Fhir {
    /// Answer 503 to everything.
    down: AtomicBool,
    /// Answer 400 to the documents with these control ids.
    refuse: Mutex<Vec<String>>,
    /// Every POST, answered or not.
    attempts: AtomicUsize,
    /// (patient id, control id) of each document accepted, in arrival order.
    accepted: Mutex<Vec<(String, String)>>,
}

/// The Patient id and the control id (from the Provenance) of a Bundle.
fn ids(bundle: &Value) -> (String, String) {
    let mut patient = String::new();
    let mut control = String::new();
    for entry in bundle["entry"].as_array().into_iter().flatten() {
        let r = &entry["resource"];
        match r["resourceType"].as_str() {
            Some("Patient") => patient = r["id"].as_str().unwrap_or_default().to_string(),
            Some("Provenance") => {
                control = r["entity"][0]["what"]["identifier"]["value"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            }
            _ => {}
        }
    }
    (patient, control)
}

impl Fhir {
    /// The control ids of the documents accepted, in arrival order.
    fn controls(&self) -> Vec<String> {
        let accepted = self.accepted.lock().unwrap();
        accepted.iter().map(|(_, c)| c.clone()).collect()
    }
}

async fn post_bundle(State(fhir): State<Arc<Fhir>>, body: Bytes) -> axum::response::Response {
    fhir.attempts.fetch_add(1, Ordering::SeqCst);
    if fhir.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance").into_response();
    }
    let Ok(bundle) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let (patient, control) = ids(&bundle);
    if fhir.refuse.lock().unwrap().contains(&control) {
        let outcome = serde_json::json!({"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invalid"}]});
        return (StatusCode::BAD_REQUEST, axum::Json(outcome)).into_response();
    }
    let mut accepted = fhir.accepted.lock().unwrap();
    accepted.push((patient, control));
    let location = format!("http://fhir.test/Bundle/{}", accepted.len());
    (
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, location)],
        "{\"resourceType\":\"Bundle\",\"type\":\"transaction-response\"}",
    )
        .into_response()
}

async fn fhir_server(fhir: Arc<Fhir>) -> SocketAddr {
    let app = axum::Router::new()
        .route("/fhir", axum::routing::post(post_bundle))
        .with_state(fhir);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A valid (modulus 11) test-range NHS number per patient.
fn nhs_number(patient: u32) -> String {
    let mut k = patient;
    loop {
        let body = format!("999{:06}", 500_000 + k % 500_000);
        let sum: u32 = body
            .chars()
            .zip((2..=10).rev())
            .map(|(c, w)| c.to_digit(10).unwrap() * w)
            .sum();
        let check = (11 - sum % 11) % 11;
        if check != 10 {
            return format!("{body}{check}");
        }
        k += 1_000;
    }
}

/// The A01 sample for patient `patient`, with control id `control`.
fn a01(control: &str, patient: u32) -> String {
    std::fs::read_to_string(harness::repo_root().join("samples/adt_a01_admission.hl7"))
        .unwrap()
        .replace("RAL20261120143512001", control)
        .replace("9990000018", &nhs_number(patient))
        .replace("RAL1234567", &format!("RAL{patient:07}"))
}

/// Routes (as given) and the shipped mappings, in the engine's folder.
fn routes(dir: &Path, toml: &str) {
    std::fs::create_dir_all(dir.join("routes")).unwrap();
    std::fs::write(dir.join("routes/test.toml"), toml).unwrap();
    std::os::unix::fs::symlink(harness::repo_root().join("mappings"), dir.join("mappings"))
        .unwrap();
}

/// Sends each message and asserts it is acknowledged AA.
async fn send(engine: &Engine, messages: &[String]) {
    let mut client = MllpClient::connect(&engine.mllp.to_string(), Duration::from_secs(10))
        .await
        .unwrap()
        .with_ack_timeout(Duration::from_secs(30));
    for m in messages {
        let ack = client.send(m.as_bytes()).await.unwrap();
        let ack = String::from_utf8_lossy(&ack);
        assert!(ack.contains("MSA|AA"), "not acknowledged: {ack}");
    }
}

/// Runs the junction binary; (exit code, stdout).
fn junction(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_junction"))
        .args(args)
        .output()
        .expect("run junction");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `junction retry --now --destination fhir`: the FHIR destination's
/// backoff cut short, as ops do once the server is back.
fn fhir_back_up(engine: &Engine) {
    let api = format!("http://{}", engine.api);
    let (code, stdout) = junction(&["retry", "--now", "--destination", "fhir", "--api", &api]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("pending deliveries due now"), "{stdout}");
}

fn json(engine: &Engine, path: &str) -> Value {
    let (status, body) = engine.get(path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// `GET /api/queues` as destination → (pending, delivered, dead).
fn queues(engine: &Engine) -> BTreeMap<String, (u64, u64, u64)> {
    json(engine, "/api/queues")["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["destination"].as_str().unwrap().to_string(),
                (
                    q["pending"].as_u64().unwrap(),
                    q["delivered"].as_u64().unwrap(),
                    q["dead"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

/// Polls `check` until it holds or the deadline passes (then panics with the log).
async fn eventually(engine: &Engine, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for: {what}\nqueues: {:?}\n--- engine log ---\n{}",
                queues(engine),
                engine.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn destinations(out: &Path, fhir: SocketAddr) -> String {
    format!(
        r#"
[destinations.files]
kind = "file"
dir = "{}"

[destinations.fhir]
kind = "fhir"
url = "http://{fhir}/fhir"
timeout_secs = 10
max_attempts = 1000
backoff_initial_ms = 50
backoff_max_ms = 400
concurrency = 4
"#,
        out.display()
    )
}

const A01_TO_BOTH: &str = r#"
[routes.a01]
messages = ["ADT^A01"]
mapping = "adt"
destinations = ["files", "fhir"]
"#;

/// An engine in `tmp/engine` sending A01s to files in `tmp/out` and to a
/// FHIR server that behaves as `fhir` says.
async fn a01s_to_files_and(tmp: &Path, fhir: Fhir) -> (Engine, Arc<Fhir>) {
    let fhir = Arc::new(fhir);
    let addr = fhir_server(Arc::clone(&fhir)).await;
    let dir = tmp.join("engine");
    routes(&dir, A01_TO_BOTH);
    let engine = Engine::start_with(&dir, "normal", &destinations(&tmp.join("out"), addr));
    (engine, fhir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fhir_server_that_is_down_keeps_documents_queued_then_gets_them_in_order_per_patient() {
    let tmp = tempfile::tempdir().unwrap();
    let fhir = Fhir::default();
    fhir.down.store(true, Ordering::SeqCst);
    let (engine, fhir) = a01s_to_files_and(tmp.path(), fhir).await;
    let out = tmp.path().join("out");

    // Three patients, four events each, interleaved.
    let mut messages = Vec::new();
    for seq in 1..=4 {
        for patient in 1..=3 {
            messages.push(a01(&format!("P{patient}-{seq:03}"), patient));
        }
    }
    send(&engine, &messages).await;

    eventually(
        &engine,
        "files delivered while the FHIR server is down",
        || queues(&engine).get("files").map(|q| q.1) == Some(12),
    )
    .await;
    eventually(&engine, "the FHIR server tried a few times", || {
        fhir.attempts.load(Ordering::SeqCst) >= 6
    })
    .await;
    let q = queues(&engine);
    assert_eq!(q["fhir"], (12, 0, 0), "{q:?}");
    let failing = json(&engine, "/api/deliveries?destination=fhir&status=pending");
    let failing = failing["deliveries"].as_array().unwrap();
    assert_eq!(failing.len(), 12);
    assert!(
        failing.iter().any(|d| d["attempts"].as_u64().unwrap() >= 1
            && d["last_error"].as_str().unwrap_or_default().contains("503")),
        "{failing:?}"
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 12);

    fhir.down.store(false, Ordering::SeqCst);
    // Ops cut the backoff short once the server is back.
    fhir_back_up(&engine);
    eventually(
        &engine,
        "every document delivered to the FHIR server",
        || queues(&engine).get("fhir").map(|q| q.1) == Some(12),
    )
    .await;
    let accepted = fhir.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 12, "{accepted:?}");
    let mut per_patient: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (patient, control) in &accepted {
        per_patient
            .entry(patient.clone())
            .or_default()
            .push(control.clone());
    }
    assert_eq!(per_patient.len(), 3, "{per_patient:?}");
    for controls in per_patient.values() {
        let prefix = &controls[0][..3];
        let expected: Vec<String> = (1..=4).map(|s| format!("{prefix}{s:03}")).collect();
        assert_eq!(controls, &expected, "order per patient: {accepted:?}");
    }

    // The trail of one message: routed to both, both delivered.
    let found = json(&engine, "/api/messages?control_id=P1-001");
    let id = found["messages"][0]["id"].as_i64().unwrap();
    assert_eq!(found["messages"][0]["routing"], "routed");
    let detail = json(&engine, &format!("/api/messages/{id}"));
    assert_eq!(detail["routing"][0]["outcome"], "routed");
    assert_eq!(detail["routing"][0]["routes"], serde_json::json!(["a01"]));
    let trail = detail["deliveries"].as_array().unwrap();
    assert_eq!(trail.len(), 2);
    assert!(
        trail.iter().all(|d| d["status"] == "delivered"),
        "{trail:?}"
    );
    assert!(trail.iter().any(|d| d["remote_ref"]
        .as_str()
        .unwrap_or_default()
        .contains("fhir.test/Bundle/")));

    // A replay queues the message's documents anew, and they are delivered.
    let (status, body) = http_post(engine.api, &format!("/api/messages/{id}/replay")).unwrap();
    assert_eq!(status, 200, "{body}");
    let replayed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(replayed["outcome"], "routed");
    assert_eq!(replayed["deliveries"].as_array().unwrap().len(), 2);
    eventually(&engine, "the replayed documents delivered", || {
        let q = queues(&engine);
        q["fhir"].1 == 13 && q["files"].1 == 13
    })
    .await;
    assert_eq!(
        json(&engine, &format!("/api/messages/{id}"))["routing"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // The metrics count what happened.
    let (_, metrics) = engine.get("/metrics");
    assert!(
        metrics.contains(r#"junction_deliveries_total{destination="fhir",outcome="retry"}"#),
        "{metrics}"
    );
}

/// A patient first sent with an MRN alone, then traced (the NHS number
/// added: their Patient id, the queue's patient key, changes): while the
/// FHIR server is down both keys' documents queue; once it is up, every
/// document sent before the trace arrives before every one after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_patient_traced_while_their_documents_wait_gets_them_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let fhir = Fhir::default();
    fhir.down.store(true, Ordering::SeqCst);
    let (engine, fhir) = a01s_to_files_and(tmp.path(), fhir).await;
    let untraced =
        |control: &str| a01(control, 7).replace(&format!("{}^^^NHS^NH~", nhs_number(7)), "");
    let mut messages: Vec<String> = (1..=4).map(|s| untraced(&format!("T-{s:03}"))).collect();
    messages.extend((5..=8).map(|s| a01(&format!("T-{s:03}"), 7)));
    send(&engine, &messages).await;
    eventually(&engine, "the FHIR server tried a few times", || {
        fhir.attempts.load(Ordering::SeqCst) >= 2
    })
    .await;
    fhir.down.store(false, Ordering::SeqCst);
    fhir_back_up(&engine);
    eventually(
        &engine,
        "every document delivered to the FHIR server",
        || queues(&engine).get("fhir").map(|q| q.1) == Some(8),
    )
    .await;
    let accepted = fhir.accepted.lock().unwrap().clone();
    let patients: std::collections::BTreeSet<&String> = accepted.iter().map(|(p, _)| p).collect();
    assert_eq!(patients.len(), 2, "two keys: {accepted:?}");
    let expected: Vec<String> = (1..=8).map(|s| format!("T-{s:03}")).collect();
    assert_eq!(fhir.controls(), expected, "{accepted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_document_is_dead_lettered_alone_and_a_retry_delivers_it() {
    let tmp = tempfile::tempdir().unwrap();
    let fhir = Fhir::default();
    *fhir.refuse.lock().unwrap() = vec!["P1-002".to_string()];
    let (engine, fhir) = a01s_to_files_and(tmp.path(), fhir).await;

    let unrouted =
        std::fs::read_to_string(harness::repo_root().join("samples/adt_a08_update.hl7")).unwrap();
    send(
        &engine,
        &[
            a01("P1-001", 1),
            a01("P1-002", 1),
            a01("P1-003", 1),
            a01("P2-001", 2),
            unrouted,
        ],
    )
    .await;
    eventually(&engine, "one dead letter, three delivered", || {
        let q = queues(&engine);
        q.get("fhir") == Some(&(0, 3, 1))
    })
    .await;
    let dead = json(&engine, "/api/dead-letters");
    let dead = dead["deliveries"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["control_id"], "P1-002");
    assert_eq!(dead[0]["destination"], "fhir");
    assert_eq!(dead[0]["attempts"], 1);
    let why = dead[0]["last_error"].as_str().unwrap();
    assert!(
        why.starts_with("permanent error:") && why.contains("400"),
        "{why}"
    );
    // The patient's line moved on past the dead letter; the other went on.
    let order = fhir.controls();
    assert!(order.contains(&"P1-003".to_string()) && order.contains(&"P2-001".to_string()));

    // The unrouted message is kept and visible.
    eventually(&engine, "the A08 recorded as unrouted", || {
        json(&engine, "/api/messages?routing=unrouted")["messages"]
            .as_array()
            .is_some_and(|m| !m.is_empty())
    })
    .await;
    let unrouted = json(&engine, "/api/messages?routing=unrouted");
    let unrouted = unrouted["messages"].as_array().unwrap();
    assert_eq!(unrouted.len(), 1, "{unrouted:?}");
    assert_eq!(unrouted[0]["type"], "ADT^A08");
    let id = unrouted[0]["id"].as_i64().unwrap();
    let detail = json(&engine, &format!("/api/messages/{id}"));
    assert_eq!(detail["routing"][0]["outcome"], "unrouted");
    assert_eq!(detail["deliveries"], serde_json::json!([]));

    // The operations CLI shows the same.
    let api = format!("http://{}", engine.api);
    let (code, stdout) = junction(&["dead-letters", "--api", &api]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("P1-002") && stdout.contains("permanent error"),
        "{stdout}"
    );
    // a destination that is not configured is said so, not shown as empty
    let (code, stdout) = junction(&["dead-letters", "--destination", "fihr", "--api", &api]);
    assert_eq!(code, 1, "{stdout}");
    let (code, stdout) = junction(&["queues", "--api", &api]);
    assert_eq!(code, 0, "{stdout}");
    let fhir_line = stdout
        .lines()
        .find(|l| l.starts_with("fhir "))
        .unwrap_or_default();
    assert!(fhir_line.contains("running"), "{stdout}");
    // the unrouted message found by type and time, and shown with its trail
    let (code, stdout) = junction(&[
        "messages",
        "--routing",
        "unrouted",
        "--type",
        "ADT^A08",
        "--since",
        "2020-01-01",
        "--api",
        &api,
    ]);
    assert_eq!(code, 0, "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("ID  RECEIVED"), "{stdout}");
    assert!(
        lines[1].starts_with(&format!("{id}  ")) && lines[1].ends_with("accepted  AA   unrouted"),
        "{stdout}"
    );
    let (code, stdout) = junction(&["messages", "--since", "2999-01-01", "--api", &api]);
    assert_eq!((code, stdout.trim()), (0, "no messages"));
    // a bad argument the engine refuses: the command could not run
    let (code, stdout) = junction(&["messages", "--since", "yesterday", "--api", &api]);
    assert_eq!(code, 2, "{stdout}");
    let (code, stdout) = junction(&["messages", "show", &id.to_string(), "--api", &api]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("type        ADT^A08"), "{stdout}");
    assert!(stdout.contains("\nMSA|AA|"), "the ACK sent: {stdout}");
    assert!(stdout.contains("first  unrouted"), "{stdout}");
    assert!(
        !stdout.contains("as received"),
        "no message content unless asked"
    );
    let (code, stdout) = junction(&["messages", "show", &id.to_string(), "--raw", "--api", &api]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("as received:\nMSH|"), "{stdout}");
    // --json alike: the message itself only with --raw
    let (code, stdout) = junction(&["messages", "show", &id.to_string(), "--json", "--api", &api]);
    assert_eq!(code, 0, "{stdout}");
    let shown: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(shown["id"], id, "{shown}");
    assert!(shown.get("raw").is_none(), "{shown}");
    let (code, stdout) = junction(&[
        "messages",
        "show",
        &id.to_string(),
        "--json",
        "--raw",
        "--api",
        &api,
    ]);
    assert_eq!(code, 0, "{stdout}");
    let shown: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert!(
        shown["raw"].as_str().is_some_and(|r| r.starts_with("MSH|")),
        "{shown}"
    );
    let (code, _) = junction(&["messages", "show", "999999", "--api", &api]);
    assert_eq!(code, 1);
    let (code, stdout) = junction(&["replay", &id.to_string(), "--api", &api]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("unrouted"), "{stdout}");
    // Bad requests get clear answers.
    assert_eq!(engine.get("/api/deliveries?status=bogus").0, 400);
    assert_eq!(
        http_post(engine.api, "/api/deliveries/999999/retry")
            .unwrap()
            .0,
        404
    );
    // a parameter these take none of is refused, not ignored
    // and an empty destination is refused, not read as every destination
    for path in [
        "/api/deliveries/999999/retry?dry_run=true",
        "/api/queues/fhir/retry?dry_run=1",
        "/api/messages/1/replay?destination=",
        "/api/dead-letters/retry?destination=",
    ] {
        assert_eq!(http_post(engine.api, path).unwrap().0, 400, "{path}");
    }
    assert_eq!(
        http_post(engine.api, "/api/messages/999999/replay")
            .unwrap()
            .0,
        404
    );
    let (code, _) = junction(&["retry", "999999", "--api", &api]);
    assert_eq!(code, 1);

    // Retrying a delivered row is refused; the dead letter, once fixed, is delivered.
    let delivered = json(&engine, "/api/deliveries?status=delivered&destination=fhir");
    let delivered_id = delivered["deliveries"][0]["id"].as_i64().unwrap();
    let (status, _) =
        http_post(engine.api, &format!("/api/deliveries/{delivered_id}/retry")).unwrap();
    assert_eq!(status, 409);
    // the server goes down, and the patient's next message waits for it
    fhir.down.store(true, Ordering::SeqCst);
    send(&engine, &[a01("P1-004", 1)]).await;
    eventually(&engine, "P1-004 pending", || {
        queues(&engine).get("fhir") == Some(&(1, 3, 1))
    })
    .await;
    fhir.refuse.lock().unwrap().clear();
    let dead_id = dead[0]["id"].as_i64().unwrap();
    let (code, stdout) = junction(&["retry", &dead_id.to_string(), "--api", &api]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("queued again"), "{stdout}");
    // P1-003, the patient's later message, had reached the server before it,
    // and P1-004 waits behind: both queued again after it, so the server ends
    // with the newest (P2's is not)
    assert!(
        stdout.contains("2 later message(s) of the same patient"),
        "{stdout}"
    );
    fhir.down.store(false, Ordering::SeqCst);
    eventually(
        &engine,
        "the retried dead letter, then the later ones again",
        || queues(&engine).get("fhir") == Some(&(0, 7, 0)),
    )
    .await;
    let accepted = fhir.accepted.lock().unwrap().clone();
    let controls: Vec<&str> = accepted.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(
        controls[controls.len() - 4..],
        ["P1-002", "P1-004", "P1-003", "P1-004"],
        "{controls:?}"
    );
    assert_eq!(
        controls.iter().filter(|c| **c == "P2-001").count(),
        1,
        "{controls:?}"
    );
}

/// Two dead letters of one patient with a delivered message between them,
/// retried together: the destination gets the patient's messages again in
/// their order after the retried ones, and ends with the newest (before, the
/// middle one was sent last). Then a retry of a dead letter whose later
/// message was replayed since.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_retried_together_leave_the_destination_with_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let fhir = Fhir::default();
    *fhir.refuse.lock().unwrap() = vec!["P3-001".to_string(), "P3-003".to_string()];
    let (engine, fhir) = a01s_to_files_and(tmp.path(), fhir).await;
    let api = format!("http://{}", engine.api);
    send(
        &engine,
        &[a01("P3-001", 3), a01("P3-002", 3), a01("P3-003", 3)],
    )
    .await;
    eventually(&engine, "two dead letters, one delivered", || {
        queues(&engine).get("fhir") == Some(&(0, 1, 2))
    })
    .await;
    fhir.refuse.lock().unwrap().clear();
    let (code, stdout) = junction(&["retry", "--dead", "--destination", "fhir", "--api", &api]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("2 dead letter(s) queued again"), "{stdout}");
    eventually(&engine, "the retried ones and their follow-ups", || {
        queues(&engine).get("fhir") == Some(&(0, 5, 0))
    })
    .await;
    let controls = fhir.controls();
    assert_eq!(
        controls,
        ["P3-002", "P3-001", "P3-003", "P3-002", "P3-003"],
        "the retried rows, then the later messages by arrival"
    );

    // P4: the second refused; the first replayed since (a newer row of an
    // older message) and delivered; the second retried: nothing follows it
    // (before, the replayed first was queued again after it, by row order)
    *fhir.refuse.lock().unwrap() = vec!["P4-002".to_string()];
    send(&engine, &[a01("P4-001", 4), a01("P4-002", 4)]).await;
    eventually(&engine, "P4's dead letter", || {
        queues(&engine).get("fhir") == Some(&(0, 6, 1))
    })
    .await;
    let first = json(&engine, "/api/messages?control_id=P4-001")["messages"][0]["id"]
        .as_i64()
        .unwrap();
    let replay_first = || {
        junction(&[
            "replay",
            &first.to_string(),
            "--destination",
            "fhir",
            "--api",
            &api,
        ])
    };
    let (code, stdout) = replay_first();
    assert_eq!(code, 0, "{stdout}");
    eventually(&engine, "the replay delivered", || {
        queues(&engine).get("fhir") == Some(&(0, 7, 1))
    })
    .await;
    fhir.refuse.lock().unwrap().clear();
    let dead = json(&engine, "/api/dead-letters");
    let dead_id = dead["deliveries"][0]["id"].as_i64().unwrap();
    let (code, stdout) = junction(&["retry", &dead_id.to_string(), "--api", &api]);
    assert_eq!(code, 0, "{stdout}");
    assert!(!stdout.contains("later message"), "{stdout}");
    eventually(&engine, "P4-002 delivered", || {
        queues(&engine).get("fhir") == Some(&(0, 8, 0))
    })
    .await;
    let accepted = fhir.accepted.lock().unwrap().clone();
    let last: Vec<&str> = accepted[accepted.len() - 2..]
        .iter()
        .map(|(_, c)| c.as_str())
        .collect();
    assert_eq!(last, ["P4-001", "P4-002"], "{accepted:?}");
    // a replay by hand of the older message queues nothing after it: it says
    // the destination will end with the older document
    let (code, stdout) = replay_first();
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("note: fhir already has newer messages of this patient"),
        "{stdout}"
    );
}

/// A message whose mapping gives a warning (its NHS number fails modulus 11) is
/// still routed; the warning is counted in `/metrics` and on the routing log
/// line, and its text (which names the number) is in neither the log nor the
/// event stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_warning_is_counted_and_its_text_never_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("engine");
    let out = tmp.path().join("out");
    routes(
        &dir,
        r#"
[routes.a04]
messages = ["ADT^A04"]
mapping = "adt"
destinations = ["files"]
"#,
    );
    let extra = format!(
        "[destinations.files]\nkind = \"file\"\ndir = \"{}\"\n",
        out.display()
    );
    let engine = Engine::start_with(&dir, "normal", &extra);
    let message = std::fs::read_to_string(
        harness::repo_root().join("tests/bad-input/nhs_number_bad_checksum.hl7"),
    )
    .unwrap();
    send(&engine, &[message]).await;
    eventually(&engine, "the message routed", || {
        json(&engine, "/api/messages?control_id=RALBAD0000000004")["messages"][0]["routing"]
            == "routed"
    })
    .await;
    let (_, metrics) = engine.get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "junction_mapping_warnings_total 1"),
        "{metrics}"
    );
    let log = engine.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("message routed") && l.contains("RALBAD0000000004"))
        .unwrap_or_else(|| panic!("no routing line:\n{log}"));
    assert!(line.contains("warnings=1"), "{line}");
    assert!(
        !log.contains("9990160822"),
        "the NHS number is logged:\n{log}"
    );
    assert!(
        !log.contains("modulus"),
        "a warning's text is logged:\n{log}"
    );
    // the document went out, the number kept as a local identifier
    eventually(&engine, "the document written", || {
        std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0) == 1
    })
    .await;
}
