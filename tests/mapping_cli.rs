//! `junction map` and `junction test` as a person runs them: the real binary, the
//! shipped mappings and samples, stdout/stderr and exit codes.

mod mapping_support;

use std::path::Path;
use std::process::{Command, Output};

use mapping_support::*;

fn junction(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_junction"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run junction")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn map_prints_the_document_and_the_unread_fields() {
    let out = junction(&["map", "samples/adt_a01_admission.hl7"], &repo());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    // stdout is exactly the document the library makes, pretty-printed.
    let expected = map_file(&mappings(), &repo().join("samples/adt_a01_admission.hl7"));
    assert_eq!(stdout, format!("{}\n", pretty(&expected[0].1.value())));
    assert!(stderr.contains("mapped with `"), "{stderr}");
    let unread = stderr
        .lines()
        .find(|l| l.starts_with("unread: "))
        .unwrap_or_else(|| panic!("no unread line in {stderr}"));
    assert!(unread.contains("ZPI-"), "{unread}");
    // Chosen by the shipped routes, which send it to the local store.
    assert!(stderr.contains("mapped with `adt` (route"), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("destinations: ") && l.contains("store")),
        "{stderr}"
    );
}

#[test]
fn map_falls_back_to_the_message_type_when_no_route_matches() {
    let empty_routes = tempfile::tempdir().expect("temp dir");
    let out = junction(
        &[
            "map",
            "--routes-dir",
            empty_routes.path().to_str().expect("utf-8"),
            "samples/adt_a02_transfer.hl7",
        ],
        &repo(),
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("no route matches"), "{stderr}");
    assert!(
        stderr.contains("mapped with `adt` (no route matches (the engine would keep it as unrouted); the mapping declared for ADT^A02)"),
        "{stderr}"
    );
    assert!(!stderr.contains("destinations:"), "{stderr}");
}

#[test]
fn map_honours_the_charset_and_a_named_mapping() {
    let out = junction(
        &["map", "--mapping", "adt", "samples/adt_a31_latin1.hl7"],
        &repo(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let document: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(document.to_string().contains("ZOË"));
}

#[test]
fn map_reads_stdin_with_a_dash() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_junction"))
        .args(["map", "-"])
        .current_dir(repo())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn junction");
    let raw = std::fs::read(repo().join("samples/adt_a08_lf_endings.hl7")).expect("sample");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&raw)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let document: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(document["resourceType"], "Bundle");
    assert!(text(&out.stderr).starts_with("<stdin>: mapped with `adt`"));
}

#[test]
fn map_of_a_batch_prints_one_document_per_message() {
    let out = junction(&["map", "samples/batch_adt.hl7"], &repo());
    assert!(out.status.success(), "{}", text(&out.stderr));
    // stdout is one JSON value, whatever a validator or `jq` is given
    let documents: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("one JSON array of documents");
    assert_eq!(documents.len(), 3);
    assert!(documents.iter().all(|d| d["resourceType"] == "Bundle"));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("(message 3 of 3)"), "{stderr}");
    assert!(
        stderr.contains("3 documents: printed as a JSON array"),
        "{stderr}"
    );
    // a batch of which one message maps is still an array (a script reads one
    // shape), and the one that did not makes the exit status 1
    let batch = std::fs::read_to_string(repo().join("samples/batch_adt.hl7")).unwrap();
    let mut messages = batch.split("MSH|").skip(1);
    let first = messages.next().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one_maps.hl7");
    let unknown = "MSH|^~\\&|X|Y|||20261120120000||ZZZ^Z99|Z1|P|2.5\r";
    std::fs::write(&file, format!("BHS|^~\\&\rMSH|{first}{unknown}BTS|2\r")).unwrap();
    let out = junction(&["map", file.to_str().unwrap()], &repo());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let documents: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("an array of the one document");
    assert_eq!(documents.len(), 1);
    // so is a batch of one message, and one of which nothing maps is `[]`
    for (rest, expected) in [(format!("MSH|{first}"), 1), (unknown.to_string(), 0)] {
        std::fs::write(&file, format!("BHS|^~\\&\r{rest}BTS|1\r")).unwrap();
        let out = junction(&["map", file.to_str().unwrap()], &repo());
        let documents: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("a batch is an array");
        assert_eq!(documents.len(), expected, "{}", text(&out.stderr));
    }
}

#[test]
fn map_warns_about_a_bad_nhs_number() {
    let out = junction(
        &["map", "tests/bad-input/nhs_number_bad_checksum.hl7"],
        &repo(),
    );
    assert!(out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("warning: ") && l.to_lowercase().contains("nhs")),
        "{stderr}"
    );
}

#[test]
fn map_fails_clearly_on_bad_input() {
    for (args, expected) in [
        (
            vec!["map", "tests/bad-input/no_msh.hl7"],
            "no_msh.hl7: not an HL7 message",
        ),
        (
            vec!["map", "tests/bad-input/empty_msh9.hl7"],
            "MSH-9 (message type) is empty",
        ),
        (
            vec!["map", "tests/bad-input/random_bytes.bin"],
            "random_bytes.bin: not an HL7 message",
        ),
        (
            vec!["map", "tests/bad-input/oru_r01_two_patients.hl7"],
            "takes at most one PID segment per message (`at_most_one`); this message has 2",
        ),
        (
            vec![
                "map",
                "--mapping",
                "no-such-mapping",
                "samples/adt_a01_admission.hl7",
            ],
            "no mapping named `no-such-mapping`",
        ),
    ] {
        let out = junction(&args, &repo());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: no document on stdout");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn map_says_when_no_mapping_covers_the_message_type() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("siu.hl7");
    std::fs::write(
        &file,
        "MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20261120143512||SIU^S12|X1|P|2.4\rPID|1||9990000018^^^NHS^NH\r",
    )
    .expect("write");
    let mappings_dir = repo().join("mappings");
    let out = junction(
        &[
            "map",
            "--mappings-dir",
            mappings_dir.to_str().expect("utf-8 path"),
            file.to_str().expect("utf-8 path"),
        ],
        dir.path(),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no mapping applies to SIU^S12"), "{stderr}");
}

#[test]
fn test_runs_the_shipped_cases_and_they_pass() {
    let out = junction(&["test"], &repo());
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let last = stdout.lines().last().unwrap_or_default();
    let passed: usize = last
        .strip_suffix(" passed, 0 failed")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("last line is not `N passed, 0 failed`: {last}"));
    // Every shipped mapping file declares cases.
    for entry in std::fs::read_dir(repo().join("mappings")).expect("mappings/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .to_string();
            assert!(
                stdout
                    .lines()
                    .any(|l| l.split_whitespace().nth(1) == Some(name.as_str())),
                "no [[test]] case ran for mappings/{name}.toml:\n{stdout}"
            );
        }
    }
    assert!(
        stdout.lines().any(|l| l.starts_with("ok   routes/")),
        "the route cases ran too:\n{stdout}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok   ")).count(),
        passed
    );
}

#[test]
fn test_reports_a_failing_case_with_the_missing_fragment() {
    // A copy of the shipped mappings beside the samples, plus one case that cannot pass.
    let dir = tempfile::tempdir().expect("temp dir");
    let mappings_dir = dir.path().join("mappings");
    std::fs::create_dir(&mappings_dir).expect("mkdir");
    for entry in std::fs::read_dir(repo().join("mappings")).expect("mappings/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(&path, mappings_dir.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    std::os::unix::fs::symlink(repo().join("samples"), dir.path().join("samples"))
        .expect("symlink samples");
    let adt = mappings_dir.join("adt.toml");
    let mut toml = std::fs::read_to_string(&adt).expect("adt.toml");
    toml.push_str(
        "\n[[test]]\nname = \"deliberately wrong gender\"\n\
         message = \"../samples/adt_a01_admission.hl7\"\n\
         expect = [{ resourceType = \"Patient\", gender = \"male\" }]\n",
    );
    std::fs::write(&adt, toml).expect("write adt.toml");

    let out = junction(&["test", "--mappings-dir", "mappings"], dir.path());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let fail = stdout
        .lines()
        .find(|l| l.starts_with("FAIL "))
        .unwrap_or_else(|| panic!("no FAIL line: {stdout}"));
    assert!(
        fail.contains("adt") && fail.contains("deliberately wrong gender"),
        "{fail}"
    );
    assert!(
        fail.contains("missing") && fail.contains("\"male\""),
        "{fail}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.ends_with(" passed, 1 failed"), "{last}");
}

#[test]
fn test_reports_mapping_errors_with_file_line_and_column() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("broken.toml"),
        "[mapping]\nname = \"broken\"\nmessages = [\"ADT^A01\"]\nbogus_key = 1\n",
    )
    .expect("write");
    let out = junction(
        &[
            "test",
            "--mappings-dir",
            dir.path().to_str().expect("utf-8"),
        ],
        dir.path(),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("broken.toml:4:"), "{stderr}");
}

/// `map` reads a batch as the listener does: each message decoded by its own
/// MSH-18 (a Latin-1 message, then a UTF-8 one, in one file).
#[test]
fn map_of_a_batch_decodes_each_message_by_its_own_charset() {
    let dir = tempfile::tempdir().unwrap();
    let mut batch = b"FHS|^~\\&|PAS|RAL01\rBHS|^~\\&|PAS|RAL01\r".to_vec();
    batch.extend_from_slice(
        b"MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20261124101500||ADT^A08|CS-L1|P|2.4||||||8859/1\r\
EVN|A08|20261124101500\rPID|1||9990000026^^^NHS^NH||\xd3 BRIAIN^SI\xc2N||19800101|F\r",
    );
    batch.extend_from_slice(
        "MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20261124101501||ADT^A08|CS-U8|P|2.4||||||UNICODE UTF-8\r\
EVN|A08|20261124101501\rPID|1||9990000026^^^NHS^NH||\u{d3} BRIAIN^SI\u{c2}N||19800101|F\r"
            .as_bytes(),
    );
    batch.extend_from_slice(b"BTS|2\rFTS|1\r");
    let file = dir.path().join("batch.hl7");
    std::fs::write(&file, &batch).unwrap();
    let out = junction(&["map", file.to_str().unwrap()], &repo());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let documents: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(documents.len(), 2);
    for document in &documents {
        let family = document["entry"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["resource"]["resourceType"] == "Patient")
            .map(|e| e["resource"]["name"][0]["family"].clone())
            .unwrap();
        assert_eq!(family, "\u{d3} BRIAIN");
    }
}

/// A dry run of a message a listener would refuse still maps it, and says so.
#[test]
fn map_says_when_a_listener_would_refuse_the_message() {
    let a40 = std::fs::read_to_string(repo().join("samples/adt_a40_merge.hl7")).unwrap();
    let without_mrg: Vec<&str> = a40
        .split(['\r', '\n'])
        .filter(|s| !s.is_empty() && !s.starts_with("MRG"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a40_without_mrg.hl7");
    std::fs::write(&file, without_mrg.join("\r") + "\r").unwrap();
    let out = junction(&["map", file.to_str().unwrap()], &repo());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("a listener would not accept it: AE 100"),
        "{stderr}"
    );
    let out = junction(&["map", "samples/adt_a40_merge.hl7"], &repo());
    assert!(
        !text(&out.stderr).contains("would not accept"),
        "{}",
        text(&out.stderr)
    );
}
