//! End to end: the real `junction serve` (through tests/harness) and the real
//! `junction tail --json` as a child process. Messages are sent with
//! [`MllpClient`]; the test reads what `tail` prints and checks the events
//! name each message by control id, type and ACK code — and that none of the
//! message's patient data reaches the stream.

mod harness;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harness::{repo_root, Engine};
use junction::mllp::client::{read_ack, MllpClient};

/// A running `junction tail`, its stdout and stderr lines arriving on channels.
struct Tail {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Tail {
    fn start(args: &[&str]) -> Tail {
        let mut child = Command::new(env!("CARGO_BIN_EXE_junction"))
            .arg("tail")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run junction tail");
        let lines = |pipe: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.stdout.take().expect("piped stdout")));
        let stderr = lines(Box::new(child.stderr.take().expect("piped stderr")));
        Tail {
            child,
            stdout,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Waits for the `connected` notice on stderr.
    fn wait_connected(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut notes = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains("connected to") => return,
                Ok(line) => notes.push(line),
                Err(_) => break,
            }
        }
        panic!("tail did not connect within 20s; stderr: {notes:#?}");
    }

    /// Reads stdout lines until `done` holds for what was seen, or 20 s pass.
    fn read_until(&mut self, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(&self.seen) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                panic!("tail output incomplete after 20s: {:#?}", self.seen);
            };
            match self.stdout.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("tail output incomplete after 20s: {:#?}", self.seen),
            }
        }
    }

    /// SIGINT (as Ctrl-C does) and the exit code.
    fn interrupt(mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for tail") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tail did not exit within 10s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_sample(path: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(repo_root().join(path)).expect("read sample");
    text.replace("\r\n", "\r").replace('\n', "\r").into_bytes()
}

fn events(seen: &[String]) -> Vec<serde_json::Value> {
    seen.iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

fn find<'a>(
    events: &'a [serde_json::Value],
    name: &str,
    control_id: &str,
) -> Option<&'a serde_json::Value> {
    events
        .iter()
        .find(|e| e["event"] == name && e["control_id"] == control_id)
}

#[tokio::test]
async fn tail_shows_acked_and_rejected_messages_without_patient_data() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path(), "normal");
    let api = format!("http://{}", engine.api);
    let mut tail = Tail::start(&["--json", "--api", &api]);
    tail.wait_connected();

    let good = read_sample("samples/adt_a01_admission.hl7");
    let bad = read_sample("tests/bad-input/empty_msh9.hl7");
    let good_id = "RAL20261120143512001";
    let bad_id = "RALBAD0000000002";
    let text = String::from_utf8_lossy(&good);
    assert!(text.contains(good_id) && text.contains("SMITH^MARGARET"));

    let mut client = MllpClient::connect(&engine.mllp.to_string(), Duration::from_secs(10))
        .await
        .unwrap();
    let ack = client.send(&good).await.unwrap();
    assert_eq!(read_ack(&ack).unwrap().code, "AA");
    let ack = client.send(&bad).await.unwrap();
    let code = read_ack(&ack).unwrap().code;
    assert!(code == "AR" || code == "AE", "{code}");
    drop(client);

    tail.read_until(|seen| {
        let events = events(seen);
        find(&events, "MessageAcked", good_id).is_some()
            && find(&events, "MessageRejected", bad_id).is_some()
            && events.iter().any(|e| e["event"] == "ConnectionClosed")
    });
    let all = events(&tail.seen);
    let acked = find(&all, "MessageAcked", good_id).unwrap();
    assert_eq!(acked["listener"], "pas");
    assert_eq!(acked["message_type"], "ADT^A01");
    assert_eq!(acked["ack_code"], "AA");
    assert_eq!(acked["size_bytes"].as_u64(), Some(good.len() as u64));
    assert!(
        acked["journal_id"].as_i64().is_some_and(|id| id > 0),
        "{acked}"
    );
    let rejected = find(&all, "MessageRejected", bad_id).unwrap();
    assert_eq!(rejected["ack_code"], code.as_str());
    assert_eq!(rejected["error_location"], "MSH-9", "{rejected}");
    assert!(all.iter().any(|e| e["event"] == "ConnectionOpened"));

    // PID-5 (name), PID-3 (NHS number), PID-11 (address) of both messages.
    let output = tail.seen.join("\n");
    for secret in ["SMITH", "MARGARET", "9990000018", "ACACIA", "NW3 2QG"] {
        assert!(
            !output.contains(secret),
            "`{secret}` in tail output:\n{output}"
        );
    }

    assert_eq!(tail.interrupt(), Some(0));
}

#[test]
fn tail_reconnects_when_the_engine_comes_up_later() {
    // Start tail against an API port nobody listens on yet, then start an
    // engine there: tail must connect without being restarted.
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path(), "normal");
    let api = engine.api;
    drop(engine);
    let mut tail = Tail::start(&["--api", &format!("http://{api}")]);
    let first = tail
        .stderr
        .recv_timeout(Duration::from_secs(20))
        .expect("a notice on stderr");
    assert!(first.contains("cannot reach"), "{first}");

    // Same folder and API port: a new engine, as after a restart.
    let config = dir.path().join("junction.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains(&api.to_string()));
    let mut engine = Command::new(env!("CARGO_BIN_EXE_junction"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run junction serve");
    let connected = (|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match tail.stderr.recv_timeout(left) {
                Ok(line) if line.contains("connected to") => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    })();
    let _ = engine.kill();
    let _ = engine.wait();
    assert!(connected, "tail did not reconnect within 30s");
    tail.seen.clear();
    assert_eq!(tail.interrupt(), Some(0));
}

/// An engine that refuses the token (401/403) is not retried forever: `tail`
/// says what the engine said and exits 2.
#[test]
fn tail_stops_with_the_reason_when_the_token_is_refused() {
    use std::io::{Read, Write};
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = server.accept() {
            let mut request = [0u8; 2048];
            let _ = stream.read(&mut request);
            let body = r#"{"error":"no bearer token"}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let out = Command::new(env!("CARGO_BIN_EXE_junction"))
        .args(["tail", "--api", &format!("http://{addr}")])
        .env_remove("JUNCTION_API_TOKEN")
        .output()
        .expect("run junction tail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("401") && stderr.contains("no bearer token"),
        "{stderr}"
    );
}

/// `[log] format = "json"`: every line is a JSON object, and a message's
/// outcome line names its listener (in `spans`, as the text format's
/// `listener{id=pas}` prefix does), with no patient data.
#[tokio::test]
async fn json_log_lines_name_the_listener_and_no_patient() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start_custom(dir.path(), &[], |mllp, api| {
        format!(
            "[listeners.pas]\nbind = \"{mllp}\"\n[store]\npath = \"data/junction.db\"\nsync = \"normal\"\n[api]\nbind = \"{api}\"\n[log]\nformat = \"json\"\n"
        )
    });
    let good = read_sample("samples/adt_a01_admission.hl7");
    let mut client = MllpClient::connect(&engine.mllp.to_string(), Duration::from_secs(10))
        .await
        .unwrap();
    let ack = client.send(&good).await.unwrap();
    assert_eq!(read_ack(&ack).unwrap().code, "AA");
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        let log = engine.log_text();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("RAL20261120143512001") && l.contains("\"message\":\"message\""))
        {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no message line in:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
    let spans = value["spans"]
        .as_array()
        .unwrap_or_else(|| panic!("{line}"));
    assert!(
        spans
            .iter()
            .any(|s| s["name"] == "listener" && s["id"] == "pas"),
        "{line}"
    );
    for line in engine.log_text().lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            !line.contains("SMITH") && !line.contains("9434765919"),
            "{line}"
        );
    }
}
