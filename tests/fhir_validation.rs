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

    assert_all_valid(&python, dir.path(), written);
}

/// Messages as they arrive in the wild, made from every sample: each segment
/// but MSH left out, sent twice and moved to the end in turn, versions 2.3 and 2.8, LF endings, Z segments after
/// every segment, repeated fields, escape sequences and non-ASCII text in every
/// field, emptied fields, and garbage where dates, numbers and codes go. Whatever a
/// mapping makes of them must still be valid FHIR (an `Err`, no resource at all, is
/// a fine answer; a panic or an invalid Bundle is not).
#[test]
fn wild_variants_of_every_sample_are_valid_fhir() {
    let python = venv_python();
    let set = mappings();
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut written = 0;
    let mut tried = 0;
    for path in sample_files() {
        let raw = std::fs::read(&path).expect("read the sample");
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("x")
            .to_string();
        for (m, text) in messages(&raw, &path).iter().enumerate() {
            for (v, variant) in wild_variants(text).into_iter().enumerate() {
                tried += 1;
                let Ok(message) = junction::hl7::Message::parse(&variant) else {
                    continue;
                };
                let Some(plan) = set.select_for(&message) else {
                    continue;
                };
                let Ok(output) = plan.apply(&message) else {
                    continue;
                };
                let file = dir.path().join(format!("{stem}_{m}_{v}.json"));
                std::fs::write(&file, &output.document).expect("write the document");
                written += 1;
            }
        }
    }
    assert!(
        written >= 3000,
        "most variants map ({written} documents of {tried} variants)"
    );
    assert_all_valid(&python, dir.path(), written);
}

/// The variants of one message (CR-separated segments, `|^~\&`).
fn wild_variants(text: &str) -> Vec<String> {
    let segments: Vec<&str> = text.split('\r').filter(|s| !s.is_empty()).collect();
    let join = |segs: &[String]| segs.join("\r") + "\r";
    let owned: Vec<String> = segments.iter().map(|s| s.to_string()).collect();
    let mut out = Vec::new();
    // each segment (but MSH) left out
    for i in 1..owned.len() {
        let mut v = owned.clone();
        v.remove(i);
        out.push(join(&v));
    }
    // each segment (but MSH) sent twice in a row, and moved to the end
    for i in 1..owned.len() {
        let mut v = owned.clone();
        v.insert(i, owned[i].clone());
        out.push(join(&v));
        let mut v = owned.clone();
        let moved = v.remove(i);
        v.push(moved);
        out.push(join(&v));
    }
    // other versions
    for version in ["2.3", "2.8"] {
        let mut v = owned.clone();
        v[0] = set_field(&v[0], 12, version);
        out.push(join(&v));
    }
    // LF endings
    out.push(owned.join("\n") + "\n");
    // a Z segment after every segment
    out.push(join(
        &owned
            .iter()
            .flat_map(|s| [s.clone(), "ZXX|1|Z value^with^parts|~|\\T\\".to_string()])
            .collect::<Vec<_>>(),
    ));
    // every field of a kind of segment changed in one way, one variant per way
    let edits: [(&str, Edit); 7] = [
        ("repeated", |f| format!("{f}~{f}")),
        ("escaped", |f| format!("A\\T\\B \\S\\ {f} \\F\\ \\E\\")),
        ("unicode", |f| format!("Siân Ŵyn 東京 {f}")),
        ("empty", |_| String::new()),
        ("null", |_| "\"\"".to_string()),
        ("garbage", |_| {
            "2024-13-45T99:99 <5 ,1 x^^^^^^^^^^y".to_string()
        }),
        ("spaces", |f| format!("  {f}  ")),
    ];
    let names: Vec<&str> = {
        let mut n: Vec<&str> = owned.iter().skip(1).filter_map(|s| s.get(..3)).collect();
        n.sort_unstable();
        n.dedup();
        n
    };
    for name in names {
        for (_, edit) in &edits {
            let v: Vec<String> = owned
                .iter()
                .map(|s| {
                    if s.get(..3) != Some(name) {
                        return s.clone();
                    }
                    let mut fields: Vec<String> = s.split('|').map(str::to_string).collect();
                    for f in fields.iter_mut().skip(1) {
                        *f = edit(f);
                    }
                    fields.join("|")
                })
                .collect();
            out.push(join(&v));
        }
    }
    // each field of each segment on its own, given one of the values senders get
    // wrong (rotating through them, so every field meets several over the samples)
    const ODD: [&str; 22] = [
        "",
        "\"\"",
        // a composite of nulls, or of one late component only (a location's
        // status alone): no part a rule reads
        "\"\"^\"\"^\"\"^\"\"",
        "^^^^N",
        "2024-13-45",
        "20241345",
        "2024",
        "20240715250000+2500",
        "<5",
        "1,5",
        ".5",
        "-",
        "x^y^z^w",
        "~~~",
        "A\\T\\B",
        "Ŵ",
        "  spaced  value  ",
        "99999999999999999999999",
        "1e400",
        "^^^^^^^^^^^^^^^^^^^^",
        "&&&",
        "NHS^NH",
    ];
    for i in 0..owned.len() {
        let count = owned[i].split('|').count();
        // MSH-1 and MSH-2 are the separators themselves
        let first = if i == 0 { 3 } else { 1 };
        for k in first..count + 2 {
            let mut v = owned.clone();
            v[i] = set_field(&owned[i], k, ODD[(i * 31 + k * 7) % ODD.len()]);
            out.push(join(&v));
        }
    }
    out
}

/// Runs the validator over every document of `dir`: all `written` must pass.
fn assert_all_valid(python: &std::path::Path, dir: &std::path::Path, written: usize) {
    let run = Command::new(python)
        .arg(repo().join("tests/python/validate_fhir.py"))
        .arg(dir)
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

/// One way of changing a field: repeated, escaped, non-ASCII, emptied, HL7 null,
/// garbage, padded.
type Edit = fn(&str) -> String;

/// Segment text with field `n` (MSH numbering: MSH-12 is the 11th `|` part) set.
fn set_field(segment: &str, n: usize, value: &str) -> String {
    let mut fields: Vec<String> = segment.split('|').map(str::to_string).collect();
    let index = if segment.starts_with("MSH") { n - 1 } else { n };
    while fields.len() <= index {
        fields.push(String::new());
    }
    fields[index] = value.to_string();
    fields.join("|")
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
                         "gender": "femme", "name": [{}],
                         "identifier": [{"system": "urn:junction:local-id:st mary:mr",
                                         "value": "1"}]},
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
        "identifier[0].system",
        "is not a FHIR uri",
        "0 passed, 1 failed",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
}
