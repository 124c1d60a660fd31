//! Issue 4's MESH acceptance, end to end: the real `junction serve` binary with
//! the shipped routes and mappings, NHS England's MESH sandbox (`AUTH_MODE=full`,
//! `STORE_MODE=file`) started by each test, and NHS's own Python client
//! (`mesh_client`, tests/python/mesh_tool.py) as the neighbouring ICS.
//!
//! - ADT over MLLP for a Hertfordshire patient reaches X26ABC2's inbox and NHS's
//!   client downloads exactly the document Junction queued;
//! - a 20 MB document goes in chunks and arrives byte-identical;
//! - wrong credentials: a clear auth error, the document stays queued, a restart
//!   with the right secret delivers it;
//! - the sandbox stopped: documents stay queued, and go in order when it returns;
//! - a Bundle a neighbour sends to Junction's inbox is downloaded, acknowledged
//!   and stored.
//!
//! Every wait polls with a generous deadline (the machine is loaded); each test
//! has its own sandbox, ports and folders. Needs the venv made by
//! `bash tests/python/setup-venv.sh` (`.venv`, or `$JUNCTION_VENV`).

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use harness::mesh::{self, start_engine, EngineSetup, Sandbox, PASSWORD};
use harness::Engine;
use serde_json::Value;

const JUNCTION: &str = "X26ABC1";
const HWE: &str = "X26ABC2";
/// Up to this long for anything that crosses the engine and the sandbox.
const DEADLINE: Duration = Duration::from_secs(90);

/// A route copying every document the `adt` / `oru_r01` mappings make for a
/// Hertfordshire patient to the `copy` file destination: the same document
/// (mapped once per mapping) as `mesh_hwe` gets, to compare bytes with.
const COPY_ROUTES: &str = r#"
[routes.copy_adt_hwe]
messages = ["ADT^A05", "ADT^A08"]
when = "patient.gp_practice | lookup(practice_ics) = 'HWE'"
mapping = "adt"
destinations = ["copy"]

[routes.copy_oru_hwe]
messages = ["ORU^R01"]
when = "patient.gp_practice | lookup(practice_ics) = 'HWE'"
mapping = "oru_r01"
destinations = ["copy"]
"#;

/// The engine with the shipped config and routes, its MESH mailboxes on a
/// sandbox of its own (the engine first: it is dropped, and stopped, first).
fn engine_and_sandbox() -> (Engine, Sandbox, tempfile::TempDir) {
    let sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(
        dir.path(),
        &EngineSetup {
            sandbox_url: &sandbox.url,
            ..EngineSetup::default()
        },
    );
    (engine, sandbox, dir)
}

/// Polls `check` until it gives a value or `DEADLINE` passes (then panics with
/// `what` and the engine's log).
fn wait_for<T>(engine: &Engine, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}\n--- engine log ---\n{}",
            engine.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Sends one HL7 message over MLLP and returns the ACK text.
fn mllp_send(addr: SocketAddr, message: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the MLLP listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut frame = vec![0x0b];
    frame.extend_from_slice(message);
    frame.extend_from_slice(&[0x1c, 0x0d]);
    stream.write_all(&frame).unwrap();
    let mut ack = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).unwrap() == 1 {
        ack.push(byte[0]);
        if ack.ends_with(&[0x1c, 0x0d]) {
            break;
        }
    }
    String::from_utf8_lossy(&ack).into_owned()
}

/// Sends and asserts the ACK is AA.
fn send_accepted(engine: &Engine, message: &[u8]) {
    let ack = mllp_send(engine.mllp, message);
    assert!(ack.contains("MSA|AA|"), "expected AA, got {ack:?}");
}

/// `GET /api/deliveries?destination=…`, oldest first.
fn deliveries(engine: &Engine, destination: &str) -> Vec<Value> {
    let (status, body) = engine.get(&format!(
        "/api/deliveries?destination={destination}&limit=1000"
    ));
    assert_eq!(status, 200, "GET /api/deliveries: {body}");
    let json: Value = serde_json::from_str(&body).expect("deliveries JSON");
    let mut rows = json["deliveries"].as_array().cloned().unwrap_or_default();
    rows.sort_by_key(|r| r["id"].as_i64());
    rows
}

/// The A05 sample (a patient of practice E82061, Hertfordshire) with its own
/// control id and event time.
fn a05(control_id: &str, minute: u32) -> Vec<u8> {
    let text =
        std::fs::read_to_string(harness::repo_root().join("samples/adt_a05_preadmit_escapes.hl7"))
            .unwrap();
    text.replace("RAL20261119110245019", control_id)
        .replace("20261119110240", &format!("2026111911{minute:02}40"))
        .into_bytes()
}

/// Every file the `copy` destination wrote, by name.
fn copies(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let folder = dir.join("out/copy");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&folder)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path()).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Downloads every message in X26ABC2's inbox with NHS's client (acknowledging
/// them): (message id, body), in the inbox's order.
fn download_all(sandbox: &Sandbox, dir: &Path) -> Vec<(String, Vec<u8>)> {
    mesh::inbox(&sandbox.url, HWE)
        .into_iter()
        .map(|id| {
            let out = dir.join(format!("{id}.body"));
            let headers = mesh::download(&sandbox.url, HWE, &id, &out);
            assert_eq!(headers["workflow_id"], "TEST_WORKFLOW", "{headers}");
            assert_eq!(headers["sender"], JUNCTION, "{headers}");
            (id, std::fs::read(&out).unwrap())
        })
        .collect()
}

fn delivered(rows: &[Value]) -> bool {
    !rows.is_empty() && rows.iter().all(|r| r["status"] == "delivered")
}

#[test]
fn an_hwe_patient_reaches_the_neighbours_inbox_byte_identical() {
    let sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(
        dir.path(),
        &EngineSetup {
            sandbox_url: &sandbox.url,
            extra_routes: &[("zz_copy.toml", COPY_ROUTES)],
            ..EngineSetup::default()
        },
    );
    send_accepted(&engine, &a05("MESHE2E0001", 2));
    let rows = wait_for(&engine, "the mesh_hwe delivery", || {
        let rows = deliveries(&engine, "mesh_hwe");
        delivered(&rows).then_some(rows)
    });
    assert_eq!(rows.len(), 1);
    let remote = rows[0]["remote_ref"]
        .as_str()
        .expect("MESH message id")
        .to_string();

    let received = download_all(&sandbox, dir.path());
    assert_eq!(received.len(), 1, "exactly one message in X26ABC2's inbox");
    assert_eq!(received[0].0, remote, "the MESH id Junction recorded");
    let copy = wait_for(&engine, "the copy destination's file", || {
        let files = copies(dir.path());
        (!files.is_empty()).then_some(files)
    });
    assert_eq!(copy.len(), 1);
    assert!(
        received[0].1 == copy[0].1,
        "NHS's client downloaded exactly the document Junction queued"
    );
    let document: Value = serde_json::from_slice(&received[0].1).unwrap();
    assert_eq!(document["resourceType"], "Bundle");
    assert_eq!(
        rows[0]["size_bytes"].as_u64(),
        Some(received[0].1.len() as u64)
    );
    // Nothing went to BLMK.
    assert!(mesh::inbox(&sandbox.url, "X26ABC3").is_empty());
    // And back: the neighbour's MESH message id finds the message it came from.
    let (status, body) = engine.get(&format!("/api/messages?remote_ref={remote}"));
    assert_eq!(status, 200, "{body}");
    let found: Value = serde_json::from_str(&body).unwrap();
    let control_ids: Vec<&str> = found["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["control_id"].as_str().unwrap())
        .collect();
    assert_eq!(control_ids, ["MESHE2E0001"]);
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_junction"))
        .args(["messages", "--remote-ref", &remote, "--api"])
        .arg(format!("http://{}", engine.api))
        .output()
        .expect("run junction messages");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("MESHE2E0001"), "{listed}");
}

#[test]
fn a_mesh_report_dead_letters_what_the_recipient_never_got_and_a_replay_sends_it_again() {
    let (engine, sandbox, _dir) = engine_and_sandbox();
    send_accepted(&engine, &a05("MESHREP0001", 3));
    let rows = wait_for(&engine, "the mesh_hwe delivery", || {
        let rows = deliveries(&engine, "mesh_hwe");
        delivered(&rows).then_some(rows)
    });
    let delivery_id = rows[0]["id"].as_i64().unwrap();
    let message_id = rows[0]["message_id"].as_i64().unwrap();
    let first_ref = rows[0]["remote_ref"].as_str().unwrap().to_string();

    // MESH tells Junction's mailbox that X26ABC2 never collected it.
    sandbox.add_report(JUNCTION, &first_ref, "14");
    let dead = wait_for(&engine, "the delivery dead-lettered by the report", || {
        let rows = deliveries(&engine, "mesh_hwe");
        (rows.len() == 1 && rows[0]["status"] == "dead").then_some(rows)
    });
    let error = dead[0]["last_error"].as_str().unwrap();
    assert!(
        error.contains("status code 14")
            && error.contains(&format!(
                "junction replay {message_id} --destination mesh_hwe"
            )),
        "{error}"
    );
    let api = format!("http://{}", engine.api);
    let junction = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_junction"))
            .args(args)
            .args(["--api", &api])
            .output()
            .expect("run junction")
    };
    // A retry would send an empty body (the document went when it was
    // delivered): refused, saying what to do instead.
    let retry = junction(&["retry", &delivery_id.to_string()]);
    assert_eq!(retry.status.code(), Some(1));
    let said = String::from_utf8_lossy(&retry.stderr);
    assert!(said.contains("junction replay"), "{said}");
    // and retrying every dead letter leaves it, saying so
    let all = junction(&["retry", "--dead", "--destination", "mesh_hwe"]);
    assert!(all.status.success());
    let said = String::from_utf8_lossy(&all.stdout);
    assert!(
        said.contains("0 dead letter(s) queued again") && said.contains("1 still dead"),
        "{said}"
    );
    // A destination the message's routes do not name: refused, nothing queued.
    let elsewhere = junction(&[
        "replay",
        &message_id.to_string(),
        "--destination",
        "mesh_blmk",
    ]);
    assert_eq!(elsewhere.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&elsewhere.stderr).contains("not routed"));
    // The replay to mesh_hwe sends it again, and nothing else.
    let replay = junction(&[
        "replay",
        &message_id.to_string(),
        "--destination",
        "mesh_hwe",
    ]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let again = wait_for(&engine, "the document sent again", || {
        let rows = deliveries(&engine, "mesh_hwe");
        (rows.len() == 2 && rows[1]["status"] == "delivered").then_some(rows)
    });
    assert_ne!(again[1]["remote_ref"].as_str(), Some(first_ref.as_str()));
    // the reported one is settled by the replay's delivery: no dead letter
    // left that nobody could clear, its reason and remote reference kept
    assert_eq!(again[0]["status"], "delivered", "{again:?}");
    assert_eq!(again[0]["remote_ref"].as_str(), Some(first_ref.as_str()));
    assert!(
        again[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("settled: delivered again as delivery")),
        "{again:?}"
    );
    assert_eq!(deliveries(&engine, "store").len(), 1);
    assert_eq!(mesh::inbox(&sandbox.url, HWE).len(), 2);
}

#[test]
fn a_twenty_megabyte_document_goes_in_chunks() {
    let sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(
        dir.path(),
        &EngineSetup {
            sandbox_url: &sandbox.url,
            max_message_bytes: 64 * 1024 * 1024,
            chunk_size_bytes: 8 * 1024 * 1024,
            extra_routes: &[("zz_copy.toml", COPY_ROUTES)],
            ..EngineSetup::default()
        },
    );
    // An ORU for a Hertfordshire patient with a 20 MB base64 PDF (ED) result.
    let mut seed = 0x2545_f491_u32;
    let pdf: Vec<u8> = (0..15_000_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed & 0xff) as u8
        })
        .collect();
    let base64 = base64_encode(&pdf);
    let message = format!(
        "MSH|^~\\&|WINPATH|RAL^RAL^ODS|JUNCTION|LCR|20261120162544+0000||ORU^R01^ORU_R01|MESHBIG0001|P|2.5.1|||||GBR\r\
         PID|1||9990049491^^^NHS^NH~RAL3456789^^^RAL^MR||O'NEIL^ROSE^^^MRS^^L||19570422|F\r\
         PD1|||BRIDGE END SURGERY^^E82061^^^^^^^E82061\r\
         OBR|1|ICE9912399^ICE|26H0129999^WINPATH|RPT^Scanned report^WINPATH|||20261120151000|||||||20261120153207||||||||20261120162500|||F\r\
         OBX|1|ED|RPT^Scanned report^WINPATH||^AP^PDF^Base64^{base64}||||||F|||20261120151000\r"
    );
    assert!(message.len() > 20_000_000);
    send_accepted(&engine, message.as_bytes());
    let rows = wait_for(&engine, "the 20 MB mesh_hwe delivery", || {
        let rows = deliveries(&engine, "mesh_hwe");
        delivered(&rows).then_some(rows)
    });
    assert!(
        rows[0]["size_bytes"].as_u64().unwrap() > 20_000_000,
        "{rows:?}"
    );
    let received = download_all(&sandbox, dir.path());
    assert_eq!(received.len(), 1);
    let copy = copies(dir.path());
    assert_eq!(copy.len(), 1);
    assert!(received[0].1 == copy[0].1, "20 MB arrive byte-identical");
    let log = plain(&engine.log_text());
    assert!(
        log.contains("mesh message sent") && log.contains("bytes=200") && log.contains("chunks=3"),
        "sent in 3 chunks of at most 8 MiB\n{log}"
    );
}

#[test]
fn wrong_credentials_keep_the_document_queued_until_fixed() {
    let sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    let mut engine = start_engine(
        dir.path(),
        &EngineSetup {
            sandbox_url: &sandbox.url,
            password: "not-the-password",
            ..EngineSetup::default()
        },
    );
    send_accepted(&engine, &a05("MESHAUTH0001", 3));
    let error = wait_for(&engine, "an auth error on the mesh_hwe delivery", || {
        let rows = deliveries(&engine, "mesh_hwe");
        rows.first()
            .and_then(|r| r["last_error"].as_str().map(str::to_string))
            .filter(|e| e.contains("refused the credentials"))
    });
    assert!(error.contains("X26ABC1"), "{error}");
    assert!(
        !error.contains("not-the-password"),
        "never the secret: {error}"
    );
    assert!(!engine.log_text().contains("not-the-password"));
    let rows = deliveries(&engine, "mesh_hwe");
    assert_eq!(rows[0]["status"], "pending", "stays queued: {rows:?}");
    assert!(mesh::inbox(&sandbox.url, HWE).is_empty());
    // Its inbox polling says so too, clearly.
    assert!(engine
        .log_text()
        .contains("mesh refused the credentials of mailbox `X26ABC1`"));

    engine.kill();
    let engine = start_engine(
        dir.path(),
        &EngineSetup {
            sandbox_url: &sandbox.url,
            password: PASSWORD,
            ..EngineSetup::default()
        },
    );
    let rows = wait_for(&engine, "delivery after the secret is fixed", || {
        let rows = deliveries(&engine, "mesh_hwe");
        delivered(&rows).then_some(rows)
    });
    assert_eq!(
        rows.len(),
        1,
        "the same queued document, nothing lost or doubled"
    );
    let received = download_all(&sandbox, dir.path());
    assert_eq!(received.len(), 1);
    assert_eq!(Some(received[0].0.as_str()), rows[0]["remote_ref"].as_str());
}

#[test]
fn a_stopped_sandbox_keeps_documents_queued_then_delivers_in_order() {
    let mut sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(
        dir.path(),
        &EngineSetup {
            sandbox_url: &sandbox.url,
            ..EngineSetup::default()
        },
    );
    sandbox.stop();
    for (n, control_id) in ["MESHDOWN0001", "MESHDOWN0002", "MESHDOWN0003"]
        .iter()
        .enumerate()
    {
        send_accepted(&engine, &a05(control_id, 10 + n as u32));
    }
    wait_for(&engine, "a retryable error on the queued documents", || {
        let rows = deliveries(&engine, "mesh_hwe");
        (rows.len() == 3
            && rows.iter().all(|r| r["status"] == "pending")
            && rows[0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("unavailable")))
        .then_some(())
    });
    sandbox.restart();
    let rows = wait_for(&engine, "all three delivered", || {
        let rows = deliveries(&engine, "mesh_hwe");
        (rows.len() == 3 && delivered(&rows)).then_some(rows)
    });
    // In order for the patient: each delivered no earlier than the one before.
    let times: Vec<&str> = rows
        .iter()
        .map(|r| r["delivered_at"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "delivered in queue order: {rows:?}");
    let received = download_all(&sandbox, dir.path());
    assert_eq!(received.len(), 3);
    let mut remote: Vec<&str> = rows
        .iter()
        .map(|r| r["remote_ref"].as_str().unwrap())
        .collect();
    let mut got: Vec<&str> = received.iter().map(|(id, _)| id.as_str()).collect();
    remote.sort();
    got.sort();
    assert_eq!(remote, got, "every queued document arrived once");
}

#[test]
fn a_bundle_in_junctions_inbox_is_acknowledged_and_stored() {
    let (engine, sandbox, _dir) = engine_and_sandbox();
    let sample = harness::repo_root().join("samples/mesh_bundle_from_hwe.json");
    let id = mesh::send(&sandbox.url, HWE, JUNCTION, &sample);
    // Downloaded, journaled under the source, acknowledged (gone from the inbox).
    let row = wait_for(&engine, "the document journaled", || {
        engine.messages_with_control_id(&id).into_iter().next()
    });
    assert_eq!(row["listener"], "mesh_inbox");
    assert_eq!(row["sender"], HWE);
    assert_eq!(row["type"], "MESH^TEST_WORKFLOW");
    assert_eq!(row["status"], "accepted");
    wait_for(&engine, "the inbox to empty", || {
        mesh::inbox(&sandbox.url, JUNCTION).is_empty().then_some(())
    });
    let (_, detail) = engine.get(&format!("/api/messages/{}", row["id"]));
    let detail: Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(
        detail["raw"].as_str().unwrap().as_bytes(),
        std::fs::read(&sample).unwrap(),
        "journaled byte for byte"
    );
    // Routed (passthrough) to the store and applied there.
    let stored = wait_for(&engine, "the store delivery", || {
        let rows = deliveries(&engine, "store");
        delivered(&rows).then_some(rows)
    });
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["routes"][0], "mesh_inbox_to_store");
    assert!(plain(&engine.log_text()).contains("mesh message received"));

    // A clinician reads it from the care record.
    let token = cli(&engine, &["token", "add", "mesh-e2e", "--role", "clinical"]);
    let token = token.trim();
    let (status, body) = get_with_token(
        &engine,
        "/fhir/Patient/5b0f6c1e-8a43-5f2e-9d71-2f4c8e0a6b11",
        token,
    );
    assert_eq!(status, 200, "{body}");
    let patient: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(patient["resourceType"], "Patient");
    assert_eq!(patient["identifier"][0]["value"], "9990002002");
    assert_eq!(patient["address"][0]["city"], "WATFORD");
    let (status, body) = get_with_token(
        &engine,
        "/fhir/Encounter?patient=5b0f6c1e-8a43-5f2e-9d71-2f4c8e0a6b11",
        token,
    );
    assert_eq!(status, 200, "{body}");
    let bundle: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(bundle["entry"].as_array().map(Vec::len), Some(1), "{body}");
}

#[test]
fn hl7_results_in_junctions_inbox_are_mapped_and_stored_and_never_sent_on() {
    let (engine, sandbox, _dir) = engine_and_sandbox();
    // A neighbouring trust's lab sends an ORU^R01 to Junction's mailbox.
    let sample = harness::repo_root().join("samples/oru_r01_fbc_ue.hl7");
    let mesh_id = mesh::send(&sandbox.url, HWE, JUNCTION, &sample);
    let row = wait_for(&engine, "the message journaled", || {
        engine
            .messages_with_control_id("WP26112016254400123")
            .into_iter()
            .next()
    });
    assert_eq!(row["listener"], "mesh_inbox");
    assert_eq!(row["type"], "ORU^R01");
    assert_eq!(row["status"], "accepted");
    // found by the MESH message it came in, too
    let (_, body) = engine.get(&format!("/api/messages?remote_ref={mesh_id}"));
    let found: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(found["messages"][0]["id"], row["id"], "{body}");
    // Mapped by the route for that source (the shipped mesh.toml) into the
    // store only: lab.toml's routes take listeners' messages, so neither the
    // FHIR endpoint nor a neighbour's mailbox gets it.
    let stored = wait_for(&engine, "the store delivery", || {
        let rows = deliveries(&engine, "store");
        delivered(&rows).then_some(rows)
    });
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["routes"][0], "mesh_results_to_store");
    for elsewhere in ["fhir_lab", "mesh_hwe", "mesh_blmk"] {
        assert!(deliveries(&engine, elsewhere).is_empty(), "{elsewhere}");
    }
    // A clinician reads the results from the care record.
    let token = cli(&engine, &["token", "add", "mesh-hl7", "--role", "clinical"]);
    let (status, body) = get_with_token(
        &engine,
        "/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number%7C9990000018",
        token.trim(),
    );
    assert_eq!(status, 200, "{body}");
    let found: Value = serde_json::from_str(&body).unwrap();
    let patient = found["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = get_with_token(
        &engine,
        &format!("/fhir/Observation?patient={patient}&category=laboratory"),
        token.trim(),
    );
    assert_eq!(status, 200, "{body}");
    let results: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(results["total"], 19, "{body}");
}

#[test]
fn an_objecting_patient_never_reaches_the_neighbour() {
    let (engine, sandbox, dir) = engine_and_sandbox();
    // The A05 patient (NHS number 999 004 9491) objects to sharing.
    cli(
        &engine,
        &["objections", "add", "9990049491", "--note", "letter 20/11"],
    );
    send_accepted(&engine, &a05("MESHOBJ0001", 4));
    // Stored locally, withheld from the external MESH destination.
    wait_for(&engine, "the store delivery", || {
        delivered(&deliveries(&engine, "store")).then_some(())
    });
    let withheld = wait_for(&engine, "mesh_hwe withheld", || {
        let rows = deliveries(&engine, "mesh_hwe");
        (rows.len() == 1 && rows[0]["status"] == "withheld").then_some(rows)
    });
    assert!(withheld[0]["remote_ref"].is_null(), "{withheld:?}");
    // A patient who does not object still goes (so the inbox is being watched).
    let other = String::from_utf8(a05("MESHOBJ0002", 5))
        .unwrap()
        .replace("9990049491", "9990061866");
    send_accepted(&engine, other.as_bytes());
    let rows = wait_for(&engine, "the other patient delivered", || {
        let rows = deliveries(&engine, "mesh_hwe");
        rows.iter()
            .any(|r| r["status"] == "delivered")
            .then_some(rows)
    });
    let sent: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["remote_ref"].as_str())
        .collect();
    assert_eq!(
        mesh::inbox(&sandbox.url, HWE),
        sent,
        "only the other patient's document"
    );
    let received = download_all(&sandbox, dir.path());
    assert!(
        !String::from_utf8_lossy(&received[0].1).contains("9990049491"),
        "the objecting patient's NHS number never left"
    );
}

/// `count` NHS numbers that pass modulus 11, from 999 000 1000 up (the
/// test range).
fn nhs_numbers(count: usize) -> Vec<String> {
    (999_000_100_u64..)
        .filter_map(|base| {
            let digits: Vec<u64> = base
                .to_string()
                .bytes()
                .map(|b| u64::from(b - b'0'))
                .collect();
            let sum: u64 = digits.iter().zip((2..=10).rev()).map(|(d, w)| d * w).sum();
            match 11 - sum % 11 {
                11 => Some(format!("{base}0")),
                10 => None,
                check => Some(format!("{base}{check}")),
            }
        })
        .take(count)
        .collect()
}

#[test]
fn a_kill_during_inbox_polling_loses_and_doubles_nothing() {
    let sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    // Thirty Bundles from HWE, each its own patient (its own NHS number: the
    // store refuses a second Patient for one), waiting in Junction's inbox.
    let template =
        std::fs::read_to_string(harness::repo_root().join("samples/mesh_bundle_from_hwe.json"))
            .unwrap();
    let mut sent = Vec::new();
    for (n, nhs) in nhs_numbers(30).into_iter().enumerate() {
        let body = template
            .replace("9990002002", &nhs)
            .replace(
                "5b0f6c1e-8a43-5f2e-9d71-2f4c8e0a6b11",
                &format!("5b0f6c1e-8a43-5f2e-9d71-{n:012}"),
            )
            .replace(
                "0c7d2b94-3e15-5a86-b0f2-71d9a4c3e828",
                &format!("0c7d2b94-3e15-5a86-b0f2-{n:012}"),
            );
        let file = dir.path().join(format!("bundle-{n}.json"));
        std::fs::write(&file, body).unwrap();
        sent.push(mesh::send(&sandbox.url, HWE, JUNCTION, &file));
    }
    let setup = EngineSetup {
        sandbox_url: &sandbox.url,
        ..EngineSetup::default()
    };
    let mut engine = start_engine(dir.path(), &setup);
    // SIGKILL as soon as the first document is journaled: the poll is mid-way.
    wait_for(&engine, "the first document received", || {
        plain(&engine.log_text())
            .contains("mesh message received")
            .then_some(())
    });
    engine.kill();
    let left = mesh::inbox(&sandbox.url, JUNCTION).len();
    eprintln!("killed with {left} of 30 documents still in the inbox");

    let engine = start_engine(dir.path(), &setup);
    wait_for(&engine, "the inbox to empty", || {
        mesh::inbox(&sandbox.url, JUNCTION).is_empty().then_some(())
    });
    // Every document journaled exactly once and stored once.
    for id in &sent {
        let rows = engine.messages_with_control_id(id);
        assert_eq!(rows.len(), 1, "{id}: {rows:?}");
        assert_eq!(rows[0]["status"], "accepted");
    }
    let stored = wait_for(&engine, "thirty store deliveries", || {
        let rows = deliveries(&engine, "store");
        (rows.len() == 30 && delivered(&rows)).then_some(rows)
    });
    assert_eq!(stored.len(), 30);
}

#[test]
fn without_mesh_secrets_the_engine_runs_and_says_why_mesh_waits() {
    let sandbox = Sandbox::start();
    let dir = tempfile::tempdir().unwrap();
    let engine = start_engine(
        dir.path(),
        &EngineSetup {
            sandbox_url: &sandbox.url,
            password: "",
            ..EngineSetup::default()
        },
    );
    send_accepted(&engine, &a05("MESHNOSECRET1", 6));
    wait_for(&engine, "the store delivery", || {
        delivered(&deliveries(&engine, "store")).then_some(())
    });
    let log = wait_for(&engine, "the inbox source's error", || {
        let log = plain(&engine.log_text());
        log.contains("mesh inbox poll failed").then_some(log)
    });
    assert!(
        log.contains("JUNCTION_MESH_PASSWORD"),
        "the error names the missing variable\n{log}"
    );
    let rows = deliveries(&engine, "mesh_hwe");
    assert_eq!(rows[0]["status"], "pending", "{rows:?}");
}

/// Runs `junction <args> --config <engine config>` and returns its stdout.
fn cli(engine: &Engine, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_junction"))
        .args(args)
        .arg("--config")
        .arg(&engine.config)
        .output()
        .expect("run junction");
    assert!(
        out.status.success(),
        "junction {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `GET path` with a bearer token (HTTP/1.0, no client crate): status and body.
fn get_with_token(engine: &Engine, path: &str, token: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(engine.api).expect("connect to the API");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nX-Purpose-Of-Use: DIRECT-CARE\r\nConnection: close\r\n\r\n",
        engine.api
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

/// The log without terminal colour codes (`ESC [ … m`).
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Standard base64 with padding (no dependency for one test).
fn base64_encode(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
