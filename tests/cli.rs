//! The `junction` binary end to end: `check` on good and bad configs.
//! (`send` and `load` against a running engine are in tests/api.rs.)

use std::path::Path;
use std::process::{Command, Output};

fn junction(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_junction"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run the junction binary")
}

/// Writes `config` to a temp dir as junction.toml and runs `junction check` there.
fn check(config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("junction.toml"), config).unwrap();
    let out = junction(&["check", "--config", "junction.toml"], dir.path());
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn shipped_config_checks_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = junction(&["check"], root);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        stdout.trim(),
        "junction.toml: ok, 1 listener(s), store data/junction.db (sync=full)"
    );
}

#[test]
fn good_config_in_a_temp_dir() {
    let (code, stdout, stderr) = check(
        "[listeners.pas]\nbind = \"127.0.0.1:12575\"\n[listeners.lab]\nbind = \"127.0.0.1:12576\"\n[store]\npath = \"db/j.db\"\nsync = \"normal\"\n",
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        "junction.toml: ok, 2 listener(s), store db/j.db (sync=normal)"
    );
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn unknown_key_is_named_with_line_and_column() {
    let (code, stdout, stderr) =
        check("[listeners.pas]\nbind = \"127.0.0.1:2575\"\n  idle_timout_secs = 30\n");
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("error: unknown field `idle_timout_secs`"),
        "{stderr}"
    );
    assert!(stderr.contains("--> junction.toml:3:3\n"), "{stderr}");
    assert!(
        stderr.contains(" 3 |   idle_timout_secs = 30\n"),
        "{stderr}"
    );
    assert!(stderr.contains("   |   ^^^^^^^^^^^^^^^^\n"), "{stderr}");
}

#[test]
fn wrong_type_points_at_the_value() {
    let (code, _, stderr) =
        check("[listeners.pas]\nbind = \"127.0.0.1:2575\"\nmax_connections = \"lots\"\n");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("error: invalid type: string \"lots\", expected usize"),
        "{stderr}"
    );
    assert!(stderr.contains("--> junction.toml:3:19"), "{stderr}");
}

#[test]
fn duplicate_bind_is_an_error() {
    let (code, _, stderr) = check(
        "[listeners.pas]\nbind = \"127.0.0.1:2575\"\n\n[listeners.lab]\nbind = \"127.0.0.1:2575\"\n",
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("listener `pas` binds 127.0.0.1:2575, which listener `lab` already uses"),
        "{stderr}"
    );
    assert!(stderr.contains("--> junction.toml:2:8"), "{stderr}");
}

#[test]
fn several_problems_are_all_reported() {
    let (code, _, stderr) = check(
        "colour = \"blue\"\n\n[listeners.lab]\nbind = \"127.0.0.1:2576\"\nmax_message_bytes = 0\nretries = 3\n\n[store]\nsync = \"always\"\n\n[api]\nbind = \"127.0.0.1:2575\"\n\n[listeners.pas]\nbind = \"127.0.0.1:2575\"\nmax_connections = 0\n",
    );
    assert_eq!(code, 1, "{stderr}");
    let expected = [
        ("unknown field `colour`", "junction.toml:1:1"),
        ("unknown field `retries`", "junction.toml:6:1"),
        ("unknown variant `always`", "junction.toml:9:8"),
        ("which listener `pas` already uses", "junction.toml:12:8"),
        ("max_connections is 0", "junction.toml:16:19"),
    ];
    for (message, location) in expected {
        let at = stderr
            .find(message)
            .unwrap_or_else(|| panic!("missing {message:?} in:\n{stderr}"));
        let after = &stderr[at..];
        assert!(
            after.lines().nth(1).is_some_and(|l| l.ends_with(location)),
            "{message:?} should be at {location}:\n{stderr}"
        );
    }
    // `max_message_bytes = 0` is in a listener that failed to deserialize
    // (because of `retries`), so it cannot be checked: 5 errors in total.
    assert!(stderr.contains("5 error(s)"), "{stderr}");
}

#[test]
fn zero_limits_are_errors() {
    let (code, _, stderr) = check(
        "[listeners.pas]\nbind = \"127.0.0.1:2575\"\nmax_message_bytes = 0\nmax_connections = 0\n",
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("max_message_bytes is 0"), "{stderr}");
    assert!(stderr.contains("max_connections is 0"), "{stderr}");
    assert!(stderr.contains("2 error(s)"), "{stderr}");
}

#[test]
fn syntax_error_and_missing_file() {
    let (code, _, stderr) = check("[listeners.pas\nbind = \"127.0.0.1:2575\"\n");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--> junction.toml:1:"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let out = junction(&["check", "--config", "absent.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read config file"), "{stderr}");
}

/// A port nothing listens on (free a moment ago).
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[test]
fn send_and_load_exit_2_when_they_cannot_connect() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let to = closed_port();
    let out = junction(
        &["send", "--to", &to, "samples/adt_a01_admission.hl7"],
        root,
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot connect to {to}")),
        "{stderr}"
    );

    let out = junction(&["load", "--to", &to, "--messages", "5"], root);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn send_finds_no_message_in_a_file_without_msh() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "nothing to see\n").unwrap();
    let out = junction(&["send", "--to", &closed_port(), "notes.txt"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("skipped notes.txt: not HL7 v2"), "{stderr}");
    assert!(stderr.contains("no HL7 message"), "{stderr}");
}
