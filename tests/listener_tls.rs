//! A listener's TLS and `allowed_peers`, end to end: the real `junction serve`
//! (tests/harness), certificates made for each test by the `openssl` command
//! line (a CA, the listener's certificate for `127.0.0.1`, a client
//! certificate, and a client certificate from a CA the listener does not
//! trust), and senders that are not ours: python-hl7's `MLLPClient` over
//! Python's `ssl` (OpenSSL), plus `junction send --tls-ca`.
//!
//! What is checked: every sample gets AA over TLS; a sender speaking plain MLLP
//! to a TLS listener gets no ACK, is counted, and disturbs nobody; with
//! `client_ca_file` only a certificate from that CA gets an ACK; a peer outside
//! `allowed_peers` is closed without an answer and nothing of it is journaled.

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use harness::pki::Pki;
use harness::{repo_root, venv_python, Engine};

/// A config whose listener speaks TLS with the PKI's certificates (and asks
/// for client certificates from its CA when `mutual`), with `listener_extra`
/// as its other keys (empty: `idle_timeout_secs = 30`).
fn tls_config(
    pki: &Pki,
    mutual: bool,
    listener_extra: &str,
) -> impl Fn(SocketAddr, SocketAddr) -> String {
    let cert = pki.path("server.pem");
    let key = pki.path("server.key");
    let client_ca = if mutual {
        format!("client_ca_file = {:?}\n", pki.path("ca.pem"))
    } else {
        String::new()
    };
    let extra = match listener_extra {
        "" => "idle_timeout_secs = 30".to_string(),
        extra => extra.to_string(),
    };
    move |mllp, api| {
        format!(
            "[listeners.pas]\nbind = \"{mllp}\"\n{extra}\n\
             [listeners.pas.tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n{client_ca}\n\
             [store]\npath = \"data/junction.db\"\nsync = \"normal\"\n\n\
             [api]\nbind = \"{api}\"\n\n[log]\nformat = \"text\"\n"
        )
    }
}

/// A plain (no TLS) listener with `listener_extra`.
fn plain_config(listener_extra: &str) -> impl Fn(SocketAddr, SocketAddr) -> String {
    let extra = listener_extra.to_string();
    move |mllp, api| {
        format!(
            "[listeners.pas]\nbind = \"{mllp}\"\nidle_timeout_secs = 30\n{extra}\n\n\
             [store]\npath = \"data/junction.db\"\nsync = \"normal\"\n\n\
             [api]\nbind = \"{api}\"\n\n[log]\nformat = \"text\"\n"
        )
    }
}

fn sample(name: &str) -> PathBuf {
    repo_root().join("samples").join(name)
}

/// `junction send --to MLLP FILE` with `args` (the TLS ones).
fn junction_send(engine: &Engine, file: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_junction"))
        .args([
            "send",
            "--to",
            &engine.mllp.to_string(),
            "--timeout-secs",
            "10",
        ])
        .args(args)
        .arg(file)
        .output()
        .expect("run junction send")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The value of a metric line (`name{labels} value`) on `GET /metrics`.
fn metric(engine: &Engine, line_start: &str) -> f64 {
    let (status, body) = engine.get("/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{line_start}` in /metrics:\n{body}"))
}

/// Sends one framed message over plain TCP and reads until the peer closes:
/// what came back (no ACK expected).
fn plain_frame_and_drain(addr: SocketAddr, message: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("read timeout");
    let mut frame = vec![0x0b];
    frame.extend_from_slice(message);
    frame.extend_from_slice(&[0x1c, 0x0d]);
    // the listener may already have closed: a failed write is an answer too
    let _ = stream.write_all(&frame);
    let mut back = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => back.extend_from_slice(&buf[..n]),
            // a reset is a close
            Err(e)
                if e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut =>
            {
                break
            }
            Err(e) => panic!("the listener neither answered nor closed within 15 s: {e}"),
        }
    }
    back
}

/// Subscribes to the engine's event stream (`GET /api/events`, open on
/// loopback): the connection, its response headers read.
fn subscribe(engine: &Engine) -> TcpStream {
    let mut stream = TcpStream::connect(engine.api).expect("connect to the API");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("read timeout");
    stream
        .write_all(
            b"GET /api/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
        )
        .expect("send the request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("response headers");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", text(&head));
    stream
}

/// Reads the event stream until an event named `name` has arrived: its
/// `data:` JSON.
fn next_event(stream: &mut TcpStream, name: &str) -> serde_json::Value {
    let mut seen = String::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(at) = seen.find(&format!("event: {name}\n")) {
            let rest = &seen[at..];
            if let Some(end) = rest.find("\n\n") {
                let data = rest[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap_or_else(|| panic!("no data line in {rest}"));
                return serde_json::from_str(data).expect("event data is JSON");
            }
        }
        let n = stream
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("no {name} event (read: {e}); stream so far:\n{seen}"));
        assert!(n > 0, "the event stream ended; so far:\n{seen}");
        seen.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
}

fn control_id(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("read sample");
    text.split(['\r', '\n'])
        .find(|l| l.starts_with("MSH"))
        .and_then(|msh| msh.split('|').nth(9))
        .expect("MSH-10")
        .to_string()
}

#[test]
fn every_sample_gets_aa_over_tls_and_plain_mllp_gets_no_answer() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::start_custom(dir.path(), &[], tls_config(&pki, false, ""));
    let python = venv_python();

    // an independent TLS stack and HL7 sender: every sample, AA with MSA-2 = MSH-10
    let output = Command::new(&python)
        .arg(repo_root().join("tests/python/send_with_python_hl7.py"))
        .args(["--client", "hl7", "--host", "127.0.0.1"])
        .args(["--port", &engine.mllp.port().to_string()])
        .arg("--tls-ca")
        .arg(pki.path("ca.pem"))
        .arg(repo_root().join("samples"))
        .output()
        .expect("run send_with_python_hl7.py");
    let stdout = text(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(" 0 not"),
        "python-hl7 over TLS (exit {}):\n{stdout}\n{}\n--- engine log ---\n{}",
        output.status,
        text(&output.stderr),
        engine.log_text()
    );

    // plain MLLP to the TLS port: no ACK, the connection closed, counted
    let a01 = sample("adt_a01_admission.hl7");
    let before = metric(
        &engine,
        "junction_tls_handshake_failures_total{listener=\"pas\"}",
    );
    let back = plain_frame_and_drain(engine.mllp, &std::fs::read(&a01).expect("read sample"));
    assert!(
        !text(&back).contains("MSA|"),
        "a plain sender got an ACK from a TLS listener: {back:?}"
    );
    let after = metric(
        &engine,
        "junction_tls_handshake_failures_total{listener=\"pas\"}",
    );
    assert_eq!(after, before + 1.0, "the refused connection is counted");
    assert!(
        engine
            .log_text()
            .contains("plain MLLP sent to a TLS listener: the sender does not use TLS"),
        "{}",
        engine.log_text()
    );
    // what it sent is kept for inspection, as garbage (it was never acknowledged)
    let (status, body) = engine.get("/api/messages?status=garbage");
    assert_eq!(status, 200, "{body}");
    let rows: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let rows = rows["messages"].as_array().expect("messages");
    assert_eq!(rows.len(), 1, "{body}");
    let id = rows[0]["id"].as_i64().expect("id");
    let (_, detail) = engine.get(&format!("/api/messages/{id}"));
    let detail: serde_json::Value = serde_json::from_str(&detail).expect("JSON");
    assert!(
        detail["raw"]
            .as_str()
            .is_some_and(|raw| raw.contains("MSH|^~\\&|PAS|RAL01")),
        "{detail}"
    );

    // a client that starts a TLS record but sends garbage instead of a handshake
    let back = {
        let mut stream = TcpStream::connect(engine.mllp).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .expect("read timeout");
        let _ = stream.write_all(b"\x16\x03\x01\x00\x05hello");
        let mut back = Vec::new();
        let _ = stream.read_to_end(&mut back);
        back
    };
    assert!(!text(&back).contains("MSA|"), "{back:?}");
    assert_eq!(
        metric(
            &engine,
            "junction_tls_handshake_failures_total{listener=\"pas\"}"
        ),
        before + 2.0
    );
    assert!(
        engine.log_text().contains("TLS handshake failed"),
        "{}",
        engine.log_text()
    );

    // ... and nobody else is disturbed: our own client, over TLS, gets AA
    let sent = junction_send(
        &engine,
        &a01,
        &["--tls-ca", pki.path("ca.pem").to_str().unwrap()],
    );
    let stdout = text(&sent.stdout);
    assert!(
        sent.status.success() && stdout.contains(&format!("{}  AA", control_id(&a01))),
        "junction send --tls-ca (exit {}):\n{stdout}\n{}",
        sent.status,
        text(&sent.stderr)
    );

    // a client that does not trust the listener's CA refuses it
    let untrusted = junction_send(
        &engine,
        &a01,
        &["--tls-ca", pki.path("rogue-ca.pem").to_str().unwrap()],
    );
    assert_eq!(
        untrusted.status.code(),
        Some(2),
        "{}",
        text(&untrusted.stdout)
    );
    assert!(
        text(&untrusted.stderr).contains("TLS handshake with"),
        "{}",
        text(&untrusted.stderr)
    );
}

#[test]
fn mutual_tls_answers_only_a_client_certificate_from_its_ca() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::start_custom(dir.path(), &[], tls_config(&pki, true, ""));
    let file = sample("oru_r01_fbc_ue.hl7");
    let ca = pki.path("ca.pem");
    let ca = ca.to_str().unwrap();
    let path = |name: &str| pki.path(name).to_str().unwrap().to_string();

    for (who, args) in [
        ("no client certificate", vec!["--tls-ca", ca]),
        (
            "a certificate from another CA",
            vec![
                "--tls-ca",
                ca,
                "--tls-cert",
                &path("rogue.pem"),
                "--tls-key",
                &path("rogue.key"),
            ],
        ),
    ] {
        let refused = junction_send(&engine, &file, &args);
        assert!(
            !refused.status.success() && !text(&refused.stdout).contains("  AA"),
            "{who}: the listener answered (exit {}):\n{}",
            refused.status,
            text(&refused.stdout)
        );
    }
    assert!(
        metric(
            &engine,
            "junction_tls_handshake_failures_total{listener=\"pas\"}"
        ) >= 2.0,
        "both refusals are counted"
    );
    assert!(
        engine
            .messages_with_control_id(&control_id(&file))
            .is_empty(),
        "nothing of a refused sender is journaled"
    );

    let accepted = junction_send(
        &engine,
        &file,
        &[
            "--tls-ca",
            ca,
            "--tls-cert",
            &path("client.pem"),
            "--tls-key",
            &path("client.key"),
        ],
    );
    assert!(
        accepted.status.success() && text(&accepted.stdout).contains("  AA"),
        "the right certificate (exit {}):\n{}\n{}\n--- engine log ---\n{}",
        accepted.status,
        text(&accepted.stdout),
        text(&accepted.stderr),
        engine.log_text()
    );
    assert_eq!(engine.messages_with_control_id(&control_id(&file)).len(), 1);
    // who connected is logged: the client certificate's subject
    let log = engine.log_text();
    assert!(
        log.lines().any(|l| l.contains("TLS connection")
            && l.contains("client_certificate=CN=lab-sender")
            && l.contains("TLSv1_3")),
        "{log}"
    );
}

#[test]
fn a_peer_outside_allowed_peers_is_closed_without_an_answer() {
    let a01 = sample("adt_a01_admission.hl7");
    let message = std::fs::read(&a01).expect("read sample");

    // 192.0.2.0/24 is TEST-NET-1: this test connects from 127.0.0.1
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::start_custom(
        dir.path(),
        &[],
        plain_config("allowed_peers = [\"192.0.2.0/24\", \"2001:db8::/32\"]"),
    );
    let mut events = subscribe(&engine);
    let back = plain_frame_and_drain(engine.mllp, &message);
    assert!(back.is_empty(), "a refused peer got bytes back: {back:?}");
    let event = next_event(&mut events, "ConnectionRefused");
    assert_eq!(event["reason"], "not in allowed_peers", "{event}");
    assert!(
        event["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{event}"
    );
    assert_eq!(
        metric(
            &engine,
            "junction_connections_refused_total{listener=\"pas\"}"
        ),
        1.0
    );
    assert!(
        engine
            .messages_with_control_id(&control_id(&a01))
            .is_empty(),
        "nothing of a refused peer is journaled"
    );
    let log = engine.log_text();
    assert!(log.contains("the peer is not in allowed_peers"), "{log}");
    drop(engine);

    // the same listener allowing loopback answers
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::start_custom(
        dir.path(),
        &[],
        plain_config("allowed_peers = [\"192.0.2.0/24\", \"127.0.0.1\"]"),
    );
    let sent = junction_send(&engine, &a01, &[]);
    assert!(
        sent.status.success() && text(&sent.stdout).contains("  AA"),
        "an allowed peer (exit {}):\n{}",
        sent.status,
        text(&sent.stdout)
    );
}

#[test]
fn check_reports_a_listener_tls_file_it_cannot_use() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("junction.toml");
    std::fs::write(dir.path().join("listener.key"), "not a key\n").expect("write");
    std::fs::write(
        &config,
        "[listeners.pas]\nbind = \"127.0.0.1:2575\"\n\n[listeners.pas.tls]\n\
         cert_file = \"certs/listener.pem\"\nkey_file = \"listener.key\"\n",
    )
    .expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_junction"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("run junction check");
    let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(!output.status.success(), "{all}");
    assert!(
        all.contains("error: listener `pas`: TLS `cert_file`")
            && all.contains("certs/listener.pem: cannot be read")
            && all.contains("junction.toml:5:13"),
        "{all}"
    );
    // the key that is no key is said in the same run, not after the first is fixed
    assert!(
        all.contains("error: listener `pas`: TLS `key_file`") && all.contains("junction.toml:6:12"),
        "{all}"
    );
}

#[test]
fn an_mllp_destination_forwards_over_mutual_tls() {
    let pki = Pki::new();
    // downstream: a listener asking for client certificates from the PKI's CA
    let down_dir = tempfile::tempdir().expect("temp dir");
    let downstream = Engine::start_custom(down_dir.path(), &[], tls_config(&pki, true, ""));

    // upstream: a plain listener, A01s routed through the shipped mapping to an
    // MLLP destination that speaks TLS to the downstream listener
    let up_dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(up_dir.path().join("routes")).expect("routes dir");
    std::fs::write(
        up_dir.path().join("routes/forward.toml"),
        "[routes.forward]\nmessages = [\"ADT^A01\"]\nmapping = \"adt\"\ndestinations = [\"downstream\"]\n",
    )
    .expect("write route");
    std::os::unix::fs::symlink(repo_root().join("mappings"), up_dir.path().join("mappings"))
        .expect("link mappings");
    let destination = format!(
        "[destinations.downstream]\nkind = \"mllp\"\naddress = \"{}\"\ntls_ca_file = {:?}\n\
         tls_cert_file = {:?}\ntls_key_file = {:?}\nbackoff_initial_ms = 100\n",
        downstream.mllp,
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let upstream = Engine::start_with(up_dir.path(), "normal", &destination);

    let a01 = sample("adt_a01_admission.hl7");
    let sent = junction_send(&upstream, &a01, &[]);
    assert!(sent.status.success(), "{}", text(&sent.stdout));
    let control = control_id(&a01);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while downstream.messages_with_control_id(&control).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the message did not arrive downstream over TLS within 30 s\n\
             --- upstream log ---\n{}\n--- downstream log ---\n{}",
            upstream.log_text(),
            downstream.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        metric(
            &downstream,
            "junction_tls_handshake_failures_total{listener=\"pas\"}"
        ),
        0.0,
        "the destination's handshakes all succeeded"
    );
}

#[test]
fn a_client_that_never_starts_the_handshake_is_closed_at_the_idle_timeout() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::start_custom(
        dir.path(),
        &[],
        tls_config(&pki, false, "idle_timeout_secs = 1"),
    );
    let mut events = subscribe(&engine);
    let mut stream = TcpStream::connect(engine.mllp).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("read timeout");
    let mut back = Vec::new();
    // silent: the listener gives up on the handshake and closes (the read
    // timeout only guards against a hung test)
    let read = stream.read_to_end(&mut back);
    assert!(
        !matches!(&read, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the listener did not close the silent connection: {read:?}"
    );
    assert!(back.is_empty(), "{back:?}");
    assert_eq!(
        metric(
            &engine,
            "junction_tls_handshake_failures_total{listener=\"pas\"}"
        ),
        1.0
    );
    assert!(
        engine
            .log_text()
            .contains("TLS handshake not completed in time"),
        "{}",
        engine.log_text()
    );
    // ... and `junction tail` and the dashboard see it
    let event = next_event(&mut events, "ConnectionRefused");
    assert_eq!(event["listener"], "pas");
    assert_eq!(event["reason"], "TLS handshake not completed in time");
}

#[test]
fn sighup_reloads_a_renewed_certificate_and_keeps_the_old_one_when_the_new_is_unusable() {
    let old = Pki::new();
    let renewed = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("tls");
    std::fs::create_dir_all(&certs).expect("certs dir");
    let install = |pki: &Pki| {
        for name in ["server.pem", "server.key"] {
            std::fs::copy(pki.path(name), certs.join(name)).expect("install a certificate");
        }
    };
    install(&old);
    let engine = Engine::start_custom(dir.path(), &[], |mllp, api| {
        format!(
            "[listeners.pas]\nbind = \"{mllp}\"\n\n[listeners.pas.tls]\n\
             cert_file = \"tls/server.pem\"\nkey_file = \"tls/server.key\"\n\n\
             [store]\npath = \"data/junction.db\"\nsync = \"normal\"\n\n\
             [api]\nbind = \"{api}\"\n\n[log]\nformat = \"text\"\n"
        )
    });
    let a01 = sample("adt_a01_admission.hl7");
    let trusting = |pki: &Pki| {
        let ca = pki.path("ca.pem");
        let sent = junction_send(&engine, &a01, &["--tls-ca", ca.to_str().unwrap()]);
        sent.status.success() && text(&sent.stdout).contains("  AA")
    };
    let hup = |want: &str, count: usize| {
        let pid = engine.pid().expect("running").to_string();
        let status = Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while engine.log_text().matches(want).count() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "no `{want}` after SIGHUP:\n{}",
                engine.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(trusting(&old), "{}", engine.log_text());
    assert!(!trusting(&renewed));

    // renewed (here: by another CA) and reloaded without a restart
    install(&renewed);
    hup("TLS certificate reloaded", 1);
    assert!(trusting(&renewed), "{}", engine.log_text());
    assert!(!trusting(&old));

    // a key that does not go with the certificate: the renewed one stays
    std::fs::copy(old.path("server.key"), certs.join("server.key")).expect("break the key");
    hup("TLS reload failed; the certificate in use stays", 1);
    assert!(trusting(&renewed), "{}", engine.log_text());
    assert_eq!(
        engine.get("/ready").0,
        200,
        "SIGHUP did not stop the engine"
    );
}
