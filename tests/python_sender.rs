//! Acceptance: an independent sender gets AA for every sample.
//!
//! Runs the real `junction serve`, then `tests/python/send_with_python_hl7.py`
//! from the repository's `.venv` (made by `tests/python/setup-venv.sh`) sends
//! every message in `samples/` (not `tests/bad-input/`; batch files are split into
//! their messages) through software that is not ours — python-hl7's
//! `hl7.client.MLLPClient`, and hl7apy's parser/serialiser on a plain socket —
//! and checks that each reply is AA with MSA-2 equal to that message's MSH-10.
//! The test then checks the journal: the raw bytes kept (read from the SQLite
//! file) are exactly the bytes framed, and `GET /api/messages` lists each
//! message as accepted with the ACK code the sender saw.
//!
//! A missing venv is a failure naming the setup script, never a silent skip.

mod harness;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use harness::{repo_root, venv_python, Engine};

/// File names in samples/ that are documentation, not messages (mirrors the
/// python script's skip list; the test asserts both see the same files).
const SKIP_SUFFIXES: [&str; 6] = [".md", ".txt", ".json", ".toml", ".py", ".sh"];

/// Every sample file (relative to samples/), skipping samples/bad and docs.
fn sample_files(samples: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.expect("dir entry");
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                if name != "bad" {
                    walk(root, &path, out);
                }
            } else if !SKIP_SUFFIXES
                .iter()
                .any(|s| name.to_ascii_lowercase().ends_with(s))
            {
                let rel = path.strip_prefix(root).expect("under samples");
                out.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(samples, samples, &mut out);
    out
}

/// Whether a sample file is an FHS/BHS batch.
fn is_batch(path: &Path) -> bool {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let start = bytes
        .strip_prefix(b"\xef\xbb\xbf")
        .unwrap_or(&bytes)
        .trim_ascii_start();
    start.starts_with(b"FHS") || start.starts_with(b"BHS")
}

/// Runs the python sender (`client`, plus `extra` arguments) against a fresh
/// engine and checks every reply and the journal. With `only_batches`, only
/// the batch files are expected to be sent.
fn send_every_sample(client: &str, extra: &[&str], only_batches: bool) {
    let python = venv_python();
    let samples = repo_root().join("samples");
    let mut files = sample_files(&samples);
    if only_batches {
        files.retain(|f| is_batch(&samples.join(f)));
    }
    assert!(
        !files.is_empty(),
        "no sample messages under {}",
        samples.display()
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::start(dir.path(), "full");

    let output = Command::new(&python)
        .arg(repo_root().join("tests/python/send_with_python_hl7.py"))
        .args(["--client", client, "--host", "127.0.0.1"])
        .args(["--port", &engine.mllp.port().to_string()])
        .args(extra)
        .arg(&samples)
        .output()
        .expect("run send_with_python_hl7.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = || {
        format!(
            "--- sender stdout ---\n{stdout}\n--- sender stderr ---\n{stderr}\n--- engine log ---\n{}",
            engine.log_text()
        )
    };

    let results: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect();
    let failures: Vec<&serde_json::Value> = results.iter().filter(|r| r["ok"] != true).collect();
    assert!(
        failures.is_empty() && output.status.success(),
        "{client}: {} of {} message(s) did not get AA with MSA-2 = MSH-10 (exit {}):\n{}",
        failures.len(),
        results.len(),
        output.status,
        context()
    );

    // The sender saw exactly the files we expect, and each file gave at least one message.
    let sent_files: BTreeSet<String> = results
        .iter()
        .map(|r| r["file"].as_str().expect("file").to_string())
        .collect();
    assert_eq!(
        sent_files,
        files,
        "sender and test disagree on the sample files\n{}",
        context()
    );

    // The journal kept each message's bytes exactly as the sender framed them.
    let journal = rusqlite::Connection::open(engine.journal_path())
        .unwrap_or_else(|e| panic!("open {}: {e}", engine.journal_path().display()));
    let mut compared = 0;
    for r in results.iter().filter(|r| r["sent_hex"].is_string()) {
        let control_id = r["control_id"].as_str().expect("control_id");
        let sent = from_hex(r["sent_hex"].as_str().expect("hex"));
        let raw: Vec<u8> = journal
            .query_row(
                "SELECT raw FROM messages WHERE control_id = ?1 AND status = 'accepted'",
                [control_id],
                |row| row.get(0),
            )
            .unwrap_or_else(|e| panic!("journal row for {control_id}: {e}\n{}", context()));
        assert!(
            raw == sent,
            "{client}: {} (control id {control_id}): the journal's raw bytes differ from the bytes sent\n\
             sent:    {:?}\njournal: {:?}",
            r["file"],
            String::from_utf8_lossy(&sent),
            String::from_utf8_lossy(&raw)
        );
        compared += 1;
    }
    if !only_batches {
        assert_eq!(
            compared,
            results.len(),
            "every message was sent in its own frame"
        );
    }

    // Every acknowledged message is in the journal, accepted, with the ACK code sent.
    for r in &results {
        let control_id = r["control_id"].as_str().expect("control_id");
        assert!(!control_id.is_empty(), "sample without MSH-10: {r}");
        let rows = engine.messages_with_control_id(control_id);
        assert!(
            rows.iter().any(|m| m["control_id"] == control_id
                && m["status"] == "accepted"
                && m["ack_code"] == r["ack_code"]),
            "{client}: {} (control id {control_id}) got {} but the journal shows {rows:?}",
            r["file"],
            r["ack_code"]
        );
    }
}

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex byte"))
        .collect()
}

#[test]
fn python_hl7_mllp_client_gets_aa_for_every_sample() {
    send_every_sample("hl7", &[], false);
}

#[test]
fn hl7apy_sender_gets_aa_for_every_sample() {
    send_every_sample("hl7apy", &[], false);
}

/// A batch file sent as one frame gets one batch ACK with each message's ACK in order.
#[test]
fn python_hl7_gets_a_batch_ack_for_a_whole_batch_file() {
    send_every_sample("hl7", &["--batches", "whole", "--only-batches"], true);
}
