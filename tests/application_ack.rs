//! Enhanced acknowledgement mode end to end: a sender asks in MSH-16 for an
//! application acknowledgement, and gets it on its own listener once Junction
//! has routed and mapped the message.
//!
//! The real `junction serve` takes messages from python-hl7 (an independent
//! sender), which checks the accept acknowledgement (CA) each one gets on its
//! connection. The sender's own listener is a plain MLLP server on a real TCP
//! socket in this test: it keeps every frame it receives and answers each with
//! a CA, as an enhanced-mode system answers a message that asks for an accept
//! acknowledgement (MSH-15 `AL`).

mod harness;

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use harness::{repo_root, venv_python, Engine};
use serde_json::Value;

/// The sender's listener: every frame it received, in order.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<String>>>);

impl Received {
    fn frames(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// An MLLP server answering every frame with `MSA|CA|<its MSH-10>`.
fn senders_listener() -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the sender's listener");
    let port = listener.local_addr().unwrap().port();
    let received = Received::default();
    let keep = received.clone();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let keep = keep.clone();
            thread::spawn(move || serve(stream, &keep));
        }
    });
    (port, received)
}

fn serve(stream: TcpStream, received: &Received) {
    let mut writer = stream.try_clone().expect("clone the stream");
    let mut bytes = BufReader::new(stream).bytes();
    loop {
        // 0x0B ... 0x1C 0x0D
        let mut frame = Vec::new();
        let mut inside = false;
        loop {
            match bytes.next() {
                Some(Ok(0x0b)) => inside = true,
                Some(Ok(0x1c)) if inside => break,
                Some(Ok(b)) if inside => frame.push(b),
                Some(Ok(_)) => {}
                _ => return,
            }
        }
        let _cr = bytes.next();
        let text = String::from_utf8(frame).expect("an ACK in UTF-8");
        let control_id = field(&text, "MSH", 10);
        received.0.lock().unwrap().push(text);
        let reply = format!(
            "\x0bMSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20261123120000||ACK|C{control_id}|P|2.4\rMSA|CA|{control_id}\x1c\r"
        );
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// Field `n` of the first `segment` (MSH counts its separator as field 1).
fn field(text: &str, segment: &str, n: usize) -> String {
    let line = text
        .split('\r')
        .find(|l| l.starts_with(segment))
        .unwrap_or_else(|| panic!("no {segment} in {text:?}"));
    let index = if segment == "MSH" { n - 1 } else { n };
    line.split('|').nth(index).unwrap_or("").to_string()
}

/// A sample with MSH-10 and MSH-15/16 set.
fn message(sample: &str, control_id: &str, msh15: &str, msh16: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("samples").join(sample)).unwrap();
    let text = text.replace("\r\n", "\r").replace('\n', "\r");
    let (msh, rest) = text.split_once('\r').unwrap();
    let mut fields: Vec<&str> = msh.split('|').collect();
    fields.resize(fields.len().max(16), "");
    fields[9] = control_id;
    fields[14] = msh15;
    fields[15] = msh16;
    format!("{}\r{rest}", fields.join("|"))
}

fn get_json(engine: &Engine, path: &str) -> Value {
    let (status, body) = engine.get(path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// The trail of the message with this control id (`GET /api/messages/{id}`).
fn trail(engine: &Engine, control_id: &str) -> Option<Value> {
    let found = engine.messages_with_control_id(control_id);
    let id = found.first()?["id"].as_i64()?;
    Some(get_json(engine, &format!("/api/messages/{id}")))
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn send_with_python_hl7(port: u16, folder: &Path) {
    let out = Command::new(venv_python())
        .arg(repo_root().join("tests/python/send_with_python_hl7.py"))
        .args(["--port", &port.to_string(), "--client", "hl7"])
        .arg(folder)
        .output()
        .expect("run send_with_python_hl7.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python-hl7 did not get the expected ACKs:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_sender_asking_in_msh_16_gets_its_application_acks_on_its_own_listener() {
    let (peer, received) = senders_listener();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("engine");
    std::fs::create_dir_all(dir.join("routes")).unwrap();
    std::fs::write(
        dir.join("routes/test.toml"),
        "[routes.adt]\nmessages = [\"ADT^A01\"]\nmapping = \"adt\"\ndestinations = [\"docs\"]\n\n\
         [routes.lab]\nmessages = [\"ORU^R01\"]\nmapping = \"oru_r01\"\ndestinations = [\"docs\"]\n",
    )
    .unwrap();
    // the shipped mappings, the ORU's taking one NTE at most: a message with
    // two passes intake and fails at the map stage, behind the accept ack
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    for entry in std::fs::read_dir(repo_root().join("mappings")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replace(
            "at_most_one = [\"PID\"]",
            "at_most_one = [\"PID\", \"NTE\"]",
        );
        std::fs::write(dir.join("mappings").join(path.file_name().unwrap()), text).unwrap();
    }
    let docs = tmp.path().join("docs");
    let engine = Engine::start_custom(&dir, &[], |mllp, api| {
        format!(
            "[listeners.pas]\nbind = \"{mllp}\"\napplication_ack = \"pas_acks\"\n\n\
             [store]\npath = \"data/junction.db\"\n\n[api]\nbind = \"{api}\"\n\n\
             [destinations.docs]\nkind = \"file\"\ndir = \"{}\"\n\n\
             [destinations.pas_acks]\nkind = \"mllp\"\naddress = \"127.0.0.1:{peer}\"\n",
            docs.display()
        )
    });

    // Four messages: two ask for an application ack of this outcome, two do not.
    let oru = message("oru_r01_point_of_care.hl7", "APPACK3", "AL", "ER");
    // two NTEs, which this test's ORU mapping refuses (`at_most_one`)
    let pid = oru.split('\r').find(|s| s.starts_with("PID|")).unwrap();
    let patient_id = field(pid, "PID", 3).split('^').next().unwrap().to_string();
    assert!(!patient_id.is_empty());
    let nte = oru.split('\r').find(|s| s.starts_with("NTE|")).unwrap();
    let oru = oru.replacen(nte, &format!("{nte}\r{nte}"), 1);
    let outbox = tmp.path().join("outbox");
    std::fs::create_dir_all(&outbox).unwrap();
    for (name, text) in [
        (
            "1.hl7",
            message("adt_a01_admission.hl7", "APPACK1", "AL", "AL"),
        ),
        (
            "2.hl7",
            message("adt_a01_admission.hl7", "APPACK2", "AL", "ER"),
        ),
        ("3.hl7", oru),
        ("4.hl7", message("adt_a01_admission.hl7", "APPACK4", "", "")),
    ] {
        std::fs::write(outbox.join(name), text).unwrap();
    }
    // each gets its accept ack (CA; AA for the original-mode one) at once
    send_with_python_hl7(engine.mllp.port(), &outbox);

    // The two application acks reach the sender's listener, and are delivered
    // in the messages' trails; the other two messages have none.
    wait_for("the application acks", Duration::from_secs(30), || {
        received.frames().len() >= 2
    });
    let delivered_ack = |control_id: &str| {
        trail(&engine, control_id).and_then(|t| {
            t["deliveries"]
                .as_array()?
                .iter()
                .find(|d| d["destination"] == "pas_acks" && d["status"] == "delivered")
                .cloned()
        })
    };
    wait_for("the acks' trails", Duration::from_secs(30), || {
        delivered_ack("APPACK1").is_some() && delivered_ack("APPACK3").is_some()
    });
    for control_id in ["APPACK2", "APPACK4"] {
        wait_for("routing", Duration::from_secs(30), || {
            trail(&engine, control_id).is_some_and(|t| !t["routing"].as_array().unwrap().is_empty())
        });
        let t = trail(&engine, control_id).unwrap();
        assert_eq!(t["routing"][0]["outcome"], "routed", "{t}");
        assert!(
            t["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["destination"] != "pas_acks"),
            "{t}"
        );
    }
    let frames = received.frames();
    assert_eq!(frames.len(), 2, "{frames:?}");
    let ack_for = |control_id: &str| {
        frames
            .iter()
            .find(|f| field(f, "MSA", 2) == control_id)
            .unwrap_or_else(|| panic!("no application ack for {control_id}: {frames:?}"))
    };

    let aa = ack_for("APPACK1");
    assert_eq!(field(aa, "MSA", 1), "AA", "{aa}");
    // addressed back to the sender, an ACK^A01 asking for an accept ack only
    assert_eq!(field(aa, "MSH", 5), "PAS", "{aa}");
    assert_eq!(field(aa, "MSH", 6), "RAL01", "{aa}");
    assert_eq!(field(aa, "MSH", 9), "ACK^A01^ACK", "{aa}");
    assert_eq!(
        (field(aa, "MSH", 15), field(aa, "MSH", 16)),
        ("AL".into(), "NE".into())
    );
    // the sender's CA names the ack: the trail keeps it as the remote reference
    let delivered = delivered_ack("APPACK1").unwrap();
    assert_eq!(delivered["remote_ref"], field(aa, "MSH", 10), "{delivered}");
    assert_eq!(
        trail(&engine, "APPACK1").unwrap()["routing"][0]["outcome"],
        "routed"
    );

    let ae = ack_for("APPACK3");
    assert_eq!(field(ae, "MSA", 1), "AE", "{ae}");
    // (a v2.3 message: MSH-9 of its ACK has no message structure)
    assert_eq!(field(ae, "MSH", 9), "ACK^R01", "{ae}");
    assert_eq!(field(ae, "MSH", 12), "2.3", "{ae}");
    let failed = trail(&engine, "APPACK3").unwrap();
    assert_eq!(failed["routing"][0]["outcome"], "failed");
    // the ERR names the stage and the message, and quotes nothing of it
    let id = failed["id"].as_i64().unwrap();
    assert!(
        ae.contains(&format!(
            "not processed: the map stage failed (Junction message {id})"
        )),
        "{ae}"
    );
    let segments: Vec<&str> = ae.split_terminator('\r').map(|s| &s[..3]).collect();
    assert_eq!(segments, ["MSH", "MSA", "ERR"], "{ae}");
    assert!(!ae.contains(&patient_id), "{ae}");

    // the engine's log has no patient data from any of this
    let log = engine.log_text();
    assert!(!log.contains("9990000018"), "{log}");
    // the sender's CA names the ack it was sent, as it should: no warning
    assert!(!log.contains("names another control id"), "{log}");
}

/// `junction send` waits only for the accept acknowledgement a message's
/// MSH-15 asks for: none for NE, one only on error for ER (none came: no
/// error), and the CA for AL; the engine journals all three.
#[test]
fn junction_send_waits_only_for_the_ack_msh_15_asks_for() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::start(&tmp.path().join("engine"), "full");
    let outbox = tmp.path().join("outbox");
    std::fs::create_dir_all(&outbox).unwrap();
    for (name, control_id, msh15) in [
        ("1.hl7", "SEND-NE", "NE"),
        ("2.hl7", "SEND-ER", "ER"),
        ("3.hl7", "SEND-AL", "AL"),
    ] {
        // the last also asks for an application ack, which this listener
        // (no `application_ack`) never sends: the log says so
        let msh16 = if control_id == "SEND-AL" { "AL" } else { "" };
        let text = message("adt_a01_admission.hl7", control_id, msh15, msh16);
        std::fs::write(outbox.join(name), text).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_junction"))
        .args(["send", "--to", &engine.mllp.to_string()])
        .arg(&outbox)
        .output()
        .expect("run junction send");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].ends_with("SEND-NE  sent: no ACK asked (MSH-15 NE)"),
        "{stdout}"
    );
    assert!(
        lines[1].ends_with("SEND-ER  sent: no error reported (MSH-15 ER)"),
        "{stdout}"
    );
    assert!(lines[2].ends_with("SEND-AL  CA"), "{stdout}");
    assert_eq!(
        lines[3],
        "3 sent: 1 AA/CA, 0 AE/CE, 0 AR/CR, 0 errors, 2 without an ACK as MSH-15 asked (NE, or ER with no error)"
    );
    for control_id in ["SEND-NE", "SEND-ER", "SEND-AL"] {
        wait_for(
            "the message in the journal",
            Duration::from_secs(10),
            || engine.messages_with_control_id(control_id).len() == 1,
        );
    }
    let log = engine.log_text();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("asks for an application acknowledgement"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains("SEND-AL"), "{log}");
}
