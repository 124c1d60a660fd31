//! Acceptance: a `kill -9` during intake and delivery loses no document.
//!
//! The real `junction serve` binary, routes sending every A01 to a file
//! destination. Three rounds on the same data folder: start the engine, send
//! on 4 connections (unique control ids, 25 patients), record every control
//! id acknowledged AA, and SIGKILL the engine — in the first round mid-load,
//! in the second right after a burst (while the pipeline and the scheduler
//! are working through it), in the third mid-load again. Then a final start
//! without a kill: every acknowledged message's document must end up in the
//! folder (at least once: files are counted by distinct control id), and the
//! queue must hold nothing pending or dead.
//!
//! Bounded: every round and wait has a deadline.

mod harness;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use harness::Engine;
use junction::mllp::client::MllpClient;

const CONNECTIONS: usize = 4;
const PATIENTS: usize = 25;
const DEADLINE: Duration = Duration::from_secs(120);

/// An ADT^A01 for patient `n % PATIENTS` with a unique control id.
fn message(control_id: &str, n: usize) -> Vec<u8> {
    let patient = n % PATIENTS;
    format!(
        "MSH|^~\\&|CRASHPAS|RCR01|JUNCTION|SCR|20260101120000||ADT^A01^ADT_A01|{control_id}|P|2.4\r\
         EVN|A01|20260101120000\r\
         PID|1||CR{patient:05}^^^RCR01^MR||TESTPATIENT^CRASH{patient}^^^MR||19700101|F|||1 TEST STREET^^LUTON^^LU1 1AA^GBR\r\
         PV1|1|I|WARD1^BED2^^RCR01||||C1234567^CONSULTANT^TEST|||MED||||19|||||V{control_id}|||||||||||||||||||||||||20260101115500\r"
    )
    .into_bytes()
}

fn setup(dir: &Path, out: &Path) -> String {
    std::fs::create_dir_all(dir.join("routes")).unwrap();
    std::fs::write(
        dir.join("routes/test.toml"),
        "[routes.a01]\nmessages = [\"ADT^A01\"]\nmapping = \"adt\"\ndestinations = [\"files\"]\n",
    )
    .unwrap();
    if !dir.join("mappings").exists() {
        std::os::unix::fs::symlink(harness::repo_root().join("mappings"), dir.join("mappings"))
            .unwrap();
    }
    format!(
        "[destinations.files]\nkind = \"file\"\ndir = \"{}\"\nconcurrency = 2\n",
        out.display()
    )
}

/// Sends `count` new messages (control ids `R<round>-<n>`) on [`CONNECTIONS`]
/// connections, recording each acknowledged control id, until done or the
/// engine dies. Returns when every sender has stopped.
async fn send_round(
    engine_mllp: String,
    round: usize,
    count: usize,
    acked: Arc<Mutex<Vec<String>>>,
) {
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let addr = engine_mllp.clone();
        let acked = Arc::clone(&acked);
        tasks.push(tokio::spawn(async move {
            let Ok(client) = MllpClient::connect(&addr, Duration::from_secs(5)).await else {
                return;
            };
            let mut client = client.with_ack_timeout(Duration::from_secs(20));
            for n in (c..count).step_by(CONNECTIONS) {
                let control = format!("R{round}-{n:05}");
                match client.send(&message(&control, n)).await {
                    Ok(ack) if String::from_utf8_lossy(&ack).contains("MSA|AA") => {
                        acked.lock().unwrap().push(control);
                    }
                    Ok(ack) => panic!("{control} not accepted: {}", String::from_utf8_lossy(&ack)),
                    // The engine was killed.
                    Err(_) => return,
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// The control ids of the documents in `out` (each file's Provenance).
fn delivered(out: &Path) -> (usize, BTreeSet<String>) {
    let mut files = 0;
    let mut ids = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(out) else {
        return (0, ids);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue; // a temp file of an interrupted write
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let doc: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{} is not whole JSON: {e}", path.display()));
        files += 1;
        for entry in doc["entry"].as_array().into_iter().flatten() {
            let r = &entry["resource"];
            if r["resourceType"] == "Provenance" {
                if let Some(id) = r["entity"][0]["what"]["identifier"]["value"].as_str() {
                    ids.insert(id.to_string());
                }
            }
        }
    }
    (files, ids)
}

fn files_queue(engine: &Engine) -> Option<(u64, u64, u64)> {
    let (status, body) = engine.get("/api/queues");
    if status != 200 {
        return None;
    }
    let json: Value = serde_json::from_str(&body).ok()?;
    json["queues"].as_array()?.iter().find_map(|q| {
        (q["destination"] == "files").then(|| {
            (
                q["pending"].as_u64().unwrap_or(0),
                q["delivered"].as_u64().unwrap_or(0),
                q["dead"].as_u64().unwrap_or(0),
            )
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_intake_and_delivery_loses_no_document() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("engine");
    let out = tmp.path().join("out");
    let extra = setup(&dir, &out);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));

    for round in 0..3 {
        let mut engine = Engine::start_with(&dir, "full", &extra);
        let before = acked.lock().unwrap().len();
        let sender = tokio::spawn(send_round(
            engine.mllp.to_string(),
            round,
            if round == 1 { 400 } else { 5_000 },
            Arc::clone(&acked),
        ));
        let deadline = Instant::now() + DEADLINE;
        if round == 1 {
            // A burst, then the kill while it is routed and delivered.
            while !sender.is_finished() {
                assert!(
                    Instant::now() < deadline,
                    "round {round}: burst not acknowledged"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            // Mid-load: after some hundreds of ACKs.
            let target = before + 200 + fastrand::usize(0..200);
            while acked.lock().unwrap().len() < target {
                assert!(
                    Instant::now() < deadline && !sender.is_finished(),
                    "round {round}: only {} ACKs\n{}",
                    acked.lock().unwrap().len(),
                    engine.log_text()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let at_kill = files_queue(&engine);
        engine.kill();
        let _ = sender.await;
        eprintln!(
            "round {round}: {} acknowledged so far; files queue at the kill (pending, delivered, dead) = {at_kill:?}",
            acked.lock().unwrap().len()
        );
    }

    // Final start: everything acknowledged must reach the folder.
    let engine = Engine::start_with(&dir, "full", &extra);
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(acked.len() >= 800, "only {} acknowledged", acked.len());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, ids) = delivered(&out);
        let queue = files_queue(&engine);
        let done = acked.is_subset(&ids) && matches!(queue, Some((0, _, 0)));
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the last restart: {} of {} acknowledged documents delivered, queue {queue:?}\n{}",
            acked.intersection(&ids).count(),
            acked.len(),
            engine.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (files, ids) = delivered(&out);
    let (_, delivered_rows, dead) = files_queue(&engine).unwrap();
    eprintln!(
        "{} acknowledged, {} distinct documents in {files} files, {delivered_rows} rows delivered",
        acked.len(),
        ids.len()
    );
    assert_eq!(dead, 0);
    // Every journaled message (acknowledged, or committed just before a kill
    // without its ACK reaching us) was routed exactly once: one row each,
    // one file per row (a repeated delivery rewrites the same file).
    assert_eq!(
        delivered_rows as usize,
        ids.len(),
        "one delivery row per message"
    );
    assert_eq!(delivered_rows as usize, files, "one file per delivery row");
    // No control id is delivered that was never sent.
    assert!(ids.iter().all(|id| id.starts_with('R')), "{ids:?}");
}
