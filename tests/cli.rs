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
    // The shipped mappings are checked too: ", N mapping(s)" follows.
    assert!(
        stdout.starts_with("junction.toml: ok, 1 listener(s), store data/junction.db (sync=full)"),
        "{stdout}"
    );
}

#[test]
fn mapping_problems_are_reported_with_config_problems() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("junction.toml"),
        "[listeners.pas]\nbind = \"127.0.0.1:12575\"\nbogus = 1\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("mappings/bad.toml"),
        "[mapping]\nname = \"bad\"\nmessages = [\"ADT^A01\"]\ncolour = \"blue\"\n",
    )
    .unwrap();
    let out = junction(&["check"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("junction.toml:3:1: error: unknown field `bogus`"),
        "{stderr}"
    );
    let at = stderr
        .find("mappings/bad.toml:4:1: error: ")
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(stderr[at..].contains("`colour`"), "{stderr}");
    assert!(
        stderr.contains(" 4 | colour = \"blue\"\n   | ^^^^^^\n"),
        "{stderr}"
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
        "junction.toml: ok, 2 listener(s), store db/j.db (sync=normal), 1 warning(s)"
    );
    // (as `serve` says at start: with no routes every message is kept, unrouted)
    assert!(
        stderr.contains("warning: no routes folder (")
            && stderr.contains("every message will be unrouted"),
        "{stderr}"
    );
}

/// Routes that name mappings, and no `mappings/` folder: `check` names each
/// route's mapping as unknown (as with an empty folder), and `serve` refuses
/// to start rather than take messages it cannot map (s24b tester, M2).
#[test]
fn routes_naming_mappings_with_no_mappings_folder_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("junction.toml");
    std::fs::write(
        &config,
        "[listeners.pas]\nbind = \"127.0.0.1:0\"\n[store]\npath = \"db/j.db\"\n[api]\nbind = \"127.0.0.1:0\"\n[destinations.store]\nkind = \"store\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("routes")).unwrap();
    std::fs::write(
        dir.path().join("routes/adt.toml"),
        "[routes.adt]\nmessages = [\"ADT^A01\"]\nmapping = \"adt\"\ndestinations = [\"store\"]\n",
    )
    .unwrap();
    // `junction <command>` fails, saying `said` on stderr
    let refused = |command: &str, said: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_junction"))
            .arg(command)
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{command}: {stderr}");
        assert!(stderr.contains(said), "{command}: {stderr}");
    };
    refused(
        "check",
        "routes/adt.toml:3:11: error: route `adt` uses unknown mapping `adt`, and there is none in mappings/",
    );
    refused("serve", "route `adt` uses unknown mapping `adt`");
    // a file named `mappings`: said so (s24d and s24e testers)
    std::fs::write(dir.path().join("mappings"), "not a folder").unwrap();
    let not_a_folder = "is not a folder, expected the folder of mapping files";
    refused("check", &format!("mappings: error: {not_a_folder}"));
    refused("serve", not_a_folder);
}

#[test]
fn unknown_key_is_named_with_line_and_column() {
    let (code, stdout, stderr) =
        check("[listeners.pas]\nbind = \"127.0.0.1:2575\"\n  idle_timout_secs = 30\n");
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("junction.toml:3:3: error: unknown field `idle_timout_secs`"),
        "{stderr}"
    );
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
        stderr.contains("junction.toml:3:19: error: invalid type: string \"lots\", expected usize"),
        "{stderr}"
    );
}

#[test]
fn duplicate_bind_is_an_error() {
    let (code, _, stderr) = check(
        "[listeners.pas]\nbind = \"127.0.0.1:2575\"\n\n[listeners.lab]\nbind = \"127.0.0.1:2575\"\n",
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("junction.toml:2:8: error: listener `pas` binds 127.0.0.1:2575, which listener `lab` already uses"),
        "{stderr}"
    );
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
        ("max_message_bytes is 0", "junction.toml:5:21"),
        ("unknown variant `always`", "junction.toml:9:8"),
        ("which listener `pas` already uses", "junction.toml:12:8"),
        ("max_connections is 0", "junction.toml:16:19"),
    ];
    for (message, location) in expected {
        // `file:line:col: error: message` on one line
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("{location}: error: ")) && l.contains(message)),
            "{message:?} should be at {location}:\n{stderr}"
        );
    }
    // `max_message_bytes = 0` is checked beside the unknown `retries` (which
    // misspells no key of a listener): 6 errors in total.
    assert!(stderr.contains("6 error(s)"), "{stderr}");
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
    assert!(stderr.contains("junction.toml:1:"), "{stderr}");

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

/// A tiny MLLP peer on a std thread: for each connection, answers frames
/// with `script(connection_number, frame_number, control_id)`; `None` closes
/// the connection without answering.
fn scripted_peer(
    script: fn(usize, usize, &str) -> Option<String>,
) -> (String, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let mut received = Vec::new();
        for (conn, stream) in listener.incoming().enumerate() {
            let mut stream = stream.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let mut frame_no = 0;
            'conn: loop {
                while let Some(end) = buf.windows(2).position(|w| w == b"\x1c\r") {
                    let frame = String::from_utf8_lossy(&buf[1..end]).into_owned();
                    buf.drain(..end + 2);
                    let control_id = frame.split('|').nth(9).unwrap_or("").to_string();
                    received.push(frame);
                    match script(conn, frame_no, &control_id) {
                        Some(ack) => {
                            stream
                                .write_all(format!("\x0b{ack}\x1c\r").as_bytes())
                                .unwrap();
                        }
                        None => break 'conn,
                    }
                    frame_no += 1;
                }
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            if conn == 1 {
                return received;
            }
        }
        received
    });
    (addr, handle)
}

#[test]
fn send_reconnects_after_a_lost_connection_and_reports_naks() {
    let (addr, peer) = scripted_peer(|conn, frame, id| {
        match (conn, frame) {
        (0, 0) => Some(format!("MSH|^~\\&|P|F|||2026||ACK|A|P|2.4\rMSA|AA|{id}\r")),
        // The first connection dies on its second message.
        (0, _) => None,
        // The second connection rejects with an ERR segment.
        _ => Some(format!(
            "MSH|^~\\&|P|F|||2026||ACK|A|P|2.5\rMSA|AR|{id}\rERR|||101^Required field missing^HL70357|E||||PID-3 is empty\r"
        )),
    }
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("three.hl7"),
        "MSH|^~\\&|PAS|RAL|||2026||ADT^A01|ONE|P|2.4\nPID|1\n\nMSH|^~\\&|PAS|RAL|||2026||ADT^A01|TWO|P|2.4\nPID|1\nMSH|^~\\&|PAS|RAL|||2026||ADT^A01|THREE|P|2.4\nPID|1\n",
    )
    .unwrap();
    let out = junction(
        &["send", "--to", &addr, "--timeout-secs", "5", "three.hl7"],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "three.hl7  ONE  AA");
    assert!(
        lines[1].starts_with("three.hl7  TWO  ERROR ")
            && lines[1].contains("closed the connection"),
        "{stdout}"
    );
    assert_eq!(lines[2], "three.hl7  THREE  AR  PID-3 is empty");
    assert_eq!(lines[3], "3 sent: 1 AA/CA, 0 AE/CE, 1 AR/CR, 1 errors");
    // Segment endings were normalised to CR before sending.
    let received = peer.join().unwrap();
    assert_eq!(received.len(), 3);
    assert_eq!(
        received[0],
        "MSH|^~\\&|PAS|RAL|||2026||ADT^A01|ONE|P|2.4\rPID|1\r"
    );
}

/// Output piped into something that stops reading (`junction map … | head`)
/// ends the command as SIGPIPE ends any Unix tool: no panic, no message.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for args in [
        &["map", "samples/oru_r01_fbc_ue.hl7"][..],
        &["parse", "samples/oru_r01_fbc_ue.hl7"][..],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_junction"))
            .args(args)
            .current_dir(repo)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // the reader goes away before anything is written
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {stderr}"
        );
    }
}
