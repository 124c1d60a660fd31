//! Every sample's document, validated by an independent FHIR implementation:
//! PyPI `fhir.resources` (R4B models) through `tests/python/validate_fhir.py`, which
//! also checks the Bundle rules fhir.resources does not (transaction, fullUrl
//! `urn:uuid:`, `PUT Type/id`, references resolve, required code bindings, pruning).
//!
//! The Python comes from the repository's venv: `$JUNCTION_VENV/bin/python`, else
//! `.venv/bin/python`. Without either the test fails and says how to create it
//! (`tests/python/setup-venv.sh`); it never skips silently.

mod mapping_support;

use std::path::PathBuf;
use std::process::Command;

use mapping_support::*;

fn venv_python() -> PathBuf {
    let candidates: Vec<PathBuf> = std::env::var_os("JUNCTION_VENV")
        .map(|venv| PathBuf::from(venv).join("bin/python"))
        .into_iter()
        .chain([repo().join(".venv/bin/python")])
        .collect();
    candidates
        .iter()
        .find(|python| python.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no Python venv for the FHIR validator (looked at {candidates:?}); \
                 run `bash tests/python/setup-venv.sh` (or set JUNCTION_VENV)"
            )
        })
}

#[test]
fn every_sample_document_is_valid_fhir() {
    let python = venv_python();
    let set = mappings();
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut written = 0;
    for path in sample_files() {
        for (name, output) in map_file(&set, &path) {
            let file = dir.path().join(format!("{name}.json"));
            std::fs::write(&file, pretty(&output.value())).expect("write the document");
            written += 1;
        }
    }
    assert!(
        written >= 19,
        "every sample was mapped ({written} documents)"
    );

    let run = Command::new(&python)
        .arg(repo().join("tests/python/validate_fhir.py"))
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "fhir.resources rejected documents ({}):\n{stdout}\n{stderr}",
        run.status
    );
    assert!(
        stdout.contains(&format!("{written} passed, 0 failed")),
        "the validator saw every document:\n{stdout}"
    );
}

/// The validator itself rejects what it must: a check that it is not a no-op.
#[test]
fn the_validator_rejects_a_broken_bundle() {
    let python = venv_python();
    let dir = tempfile::tempdir().expect("a temp dir");
    let broken = serde_json::json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{
            "fullUrl": "urn:uuid:00000000-0000-5000-8000-000000000001",
            "resource": {"resourceType": "Patient", "id": "p1", "birthDate": "1948-13-45",
                         "gender": "femme", "name": [{}]},
            "request": {"method": "PUT", "url": "Patient/p2"}
        }]
    });
    std::fs::write(dir.path().join("broken.json"), broken.to_string()).expect("write");
    let run = Command::new(&python)
        .arg(repo().join("tests/python/validate_fhir.py"))
        .arg(dir.path())
        .output()
        .expect("run the validator");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{stdout}");
    for expected in [
        "birthDate",
        "gender",
        "name[0]",
        "request.url",
        "0 passed, 1 failed",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
}
