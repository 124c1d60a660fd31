//! End-to-end intake over real sockets and a real SQLite journal: the engine
//! is started through the library (`engine::start`) on `127.0.0.1:0` with a
//! config file in a temporary folder, and spoken to with plain TCP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use junction::engine::{self, RunningEngine};
use junction::journal::{MessageQuery, MessageSummary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VT: u8 = 0x0B;
const FS: u8 = 0x1C;
const CR: u8 = 0x0D;
/// Guards against a hung test; never an assertion about speed.
const PATIENCE: Duration = Duration::from_secs(15);
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

struct Fixture {
    engine: RunningEngine,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start() -> Fixture {
    start_with("").await
}

/// [`start`], with `listener` (TOML lines) added to the listener's table.
async fn start_with(listener: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("junction.toml");
    // (1 s unless the test gives its own)
    let idle = match listener.contains("idle_timeout_secs") {
        true => "",
        false => "idle_timeout_secs = 1\n",
    };
    std::fs::write(
        &config_path,
        format!(
            "[listeners.pas]\nbind = \"127.0.0.1:0\"\n{idle}{listener}\
             max_message_bytes = {MAX_MESSAGE_BYTES}\nmax_connections = 64\n\n\
             [store]\npath = \"data/journal.db\"\nsync = \"full\"\n\n\
             [api]\nbind = \"127.0.0.1:0\"\n\n[engine]\nshutdown_timeout_secs = 5\n"
        ),
    )
    .unwrap();
    let config = junction::config::load(&config_path).unwrap_or_else(|d| panic!("{d}"));
    let engine = engine::start(config, dir.path()).await.unwrap();
    let addr = engine.listener_addr("pas").unwrap();
    assert!(dir.path().join("data/journal.db").exists());
    Fixture {
        engine,
        addr,
        _dir: dir,
    }
}

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples")
}

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(samples().join(name)).unwrap()
}

/// A deliberately broken input from `tests/bad-input/`.
fn bad_input(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/bad-input")
            .join(name),
    )
    .unwrap()
}

/// The A01 sample with MSH-10 replaced by `control_id`.
fn a01_with_control_id(control_id: &str) -> Vec<u8> {
    let text = String::from_utf8(sample("adt_a01_admission.hl7")).unwrap();
    let original = field(&text, "MSH", 10);
    text.replacen(&format!("|{original}|"), &format!("|{control_id}|"), 1)
        .into_bytes()
}

fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![VT];
    out.extend_from_slice(message);
    out.extend_from_slice(&[FS, CR]);
    out
}

/// Field `n` of the first `segment` (MSH counts its field separator as MSH-1).
fn field(message: &str, segment: &str, n: usize) -> String {
    let line = message
        .split(['\r', '\n'])
        .find(|s| s.starts_with(segment))
        .unwrap_or_else(|| panic!("no {segment} in {message:?}"));
    let parts: Vec<&str> = line.split('|').collect();
    let index = if segment == "MSH" { n - 1 } else { n };
    parts.get(index).copied().unwrap_or("").to_string()
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// Reads one MLLP frame; `None` if the connection closed first.
async fn read_frame(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == [FS, CR]) {
            assert_eq!(buf[0], VT, "reply starts with VT");
            return Some(String::from_utf8(buf[1..end].to_vec()).unwrap());
        }
        // A reset counts as closed.
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut byte))
            .await
            .expect("no reply within the test's patience")
            .unwrap_or_default();
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&byte[..n]);
    }
}

/// The bytes of the next reply, its frame included (a reply that is not UTF-8:
/// a Latin-1 sender's ACK).
async fn read_raw_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(2).any(|w| w == [FS, CR]) {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("no reply within the test's patience")
            .unwrap_or_default();
        assert!(n > 0, "closed without a reply");
        buf.extend_from_slice(&chunk[..n]);
    }
    buf
}

async fn send(stream: &mut TcpStream, message: &[u8]) -> String {
    stream.write_all(&frame(message)).await.unwrap();
    read_frame(stream)
        .await
        .expect("an ACK, not a closed connection")
}

/// Waits for the server to close the connection (EOF or reset).
async fn assert_closed(stream: &mut TcpStream) {
    let mut byte = [0u8; 64];
    let read = tokio::time::timeout(PATIENCE, stream.read(&mut byte))
        .await
        .expect("connection still open after the test's patience");
    match read {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("expected a closed connection, got {n} byte(s)"),
    }
}

async fn search(engine: &RunningEngine, f: impl FnOnce(&mut MessageQuery)) -> Vec<MessageSummary> {
    let mut q = MessageQuery::default();
    f(&mut q);
    engine.journal().search(q).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_adt_gets_aa_naming_its_control_id() {
    let fx = start().await;
    let message = sample("adt_a01_admission.hl7");
    let control_id = field(std::str::from_utf8(&message).unwrap(), "MSH", 10);
    let mut conn = connect(fx.addr).await;
    let ack = send(&mut conn, &message).await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    assert_eq!(field(&ack, "MSA", 2), control_id, "{ack}");
    assert_eq!(field(&ack, "MSH", 9).split('^').next(), Some("ACK"));
    assert_ne!(
        field(&ack, "MSH", 10),
        control_id,
        "the ACK has its own control id"
    );
    let rows = search(&fx.engine, |q| q.control_id = Some(control_id.clone())).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "accepted");
    assert_eq!(rows[0].ack_code, "AA");
    assert_eq!(rows[0].message_type, "ADT^A01");
    let detail = fx.engine.journal().get(rows[0].id).await.unwrap().unwrap();
    assert_eq!(
        detail.ack.as_deref(),
        Some(ack.as_str()),
        "stored ACK is the sent ACK"
    );
    assert_eq!(
        fx.engine.journal().raw(rows[0].id).await.unwrap().unwrap(),
        message,
        "raw bytes kept exactly"
    );
    fx.engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_gets_aa_or_ca() {
    let fx = start().await;
    let mut conn = connect(fx.addr).await;
    let mut sent = 0;
    for entry in std::fs::read_dir(samples()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".hl7") || name.starts_with("batch") {
            continue;
        }
        let ack = send(&mut conn, &std::fs::read(&path).unwrap()).await;
        let code = field(&ack, "MSA", 1);
        assert!(code == "AA" || code == "CA", "{name}: {ack}");
        sent += 1;
    }
    assert!(sent >= 10, "expected the shipped samples, found {sent}");
    fx.engine.stop().await;
}

/// A sender that ends its frames with 0x1C and no 0x0D, and waits for its
/// ACK, gets it at once, not the connection closed at the idle timeout (1 s
/// here); a 0x0D it sends later is white space between frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_without_its_final_cr_is_acknowledged_at_once() {
    let fx = start().await;
    let mut conn = connect(fx.addr).await;
    for (i, control_id) in ["NOCR1", "NOCR2"].into_iter().enumerate() {
        let mut bytes = Vec::new();
        if i > 0 {
            bytes.push(CR);
        }
        bytes.push(VT);
        bytes.extend_from_slice(&a01_with_control_id(control_id));
        bytes.push(FS);
        conn.write_all(&bytes).await.unwrap();
        // (waiting for a CR would end in the idle timeout: no ACK, closed)
        let ack = read_frame(&mut conn)
            .await
            .expect("an ACK, not the connection closed at the idle timeout");
        assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
        assert_eq!(field(&ack, "MSA", 2), control_id, "{ack}");
    }
    fx.engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_resend_gets_identical_ack_and_one_row() {
    let fx = start().await;
    let message = a01_with_control_id("DUP0001");
    let mut first = connect(fx.addr).await;
    let ack1 = send(&mut first, &message).await;
    drop(first);
    // The sender never saw the ACK, say, and resends on a new connection.
    let mut second = connect(fx.addr).await;
    let ack2 = send(&mut second, &message).await;
    assert_eq!(ack1, ack2, "byte-identical ACK for the resend");
    assert_eq!(field(&ack1, "MSA", 1), "AA");
    let rows = search(&fx.engine, |q| q.control_id = Some("DUP0001".into())).await;
    assert_eq!(rows.len(), 1, "journaled once: {rows:?}");
    let metrics = fx.engine.metrics().encode();
    assert!(
        metrics.contains("junction_messages_duplicate_total{listener=\"pas\"} 1"),
        "{metrics}"
    );
    fx.engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_control_id_is_answered_as_a_resend_and_its_message_kept() {
    let fx = start().await;
    let message = a01_with_control_id("REUSED01");
    let mut stream = connect(fx.addr).await;
    let ack1 = send(&mut stream, &message).await;
    // Another patient's admission under the same MSH-10 (the sender's counter
    // started again after a restart)
    let other = String::from_utf8(message.clone())
        .unwrap()
        .replacen("PID|1||", "PID|1||7654321^^^RAL^MR~", 1)
        .into_bytes();
    assert_ne!(other, message);
    let ack2 = send(&mut stream, &other).await;
    assert_eq!(ack1, ack2, "answered as the resend DESIGN.md says it is");
    let rows = search(&fx.engine, |q| q.control_id = Some("REUSED01".into())).await;
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["rejected", "accepted"], "{rows:?}");
    let kept = fx.engine.journal().get(rows[0].id).await.unwrap().unwrap();
    assert!(
        kept.error.as_deref().unwrap().contains("content differs"),
        "{kept:?}"
    );
    let raw = fx.engine.journal().raw(rows[0].id).await.unwrap().unwrap();
    assert_eq!(raw, other, "its bytes kept as received");
    // Someone looks, and replays it: it is routed as a message of its own
    // (no routes here, so unrouted: an outcome recorded against it).
    let replayed = fx.engine.delivery().replay(rows[0].id, None).await.unwrap();
    assert_eq!(replayed.message_id, rows[0].id);
    let routings = fx.engine.journal().routings(rows[0].id).await.unwrap();
    assert_eq!(routings.len(), 1, "{routings:?}");
    fx.engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_msh_gets_ar_with_err_and_the_connection_stays_open() {
    let fx = start().await;
    let bad = bad_input("no_msh.hl7");
    let mut conn = connect(fx.addr).await;
    let nak = send(&mut conn, &bad).await;
    assert_eq!(field(&nak, "MSA", 1), "AR", "{nak}");
    assert!(nak.split('\r').any(|s| s.starts_with("ERR")), "{nak}");
    // Same connection, next message: still served.
    let ack = send(&mut conn, &a01_with_control_id("AFTERAR1")).await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    let rejected = search(&fx.engine, |q| q.status = Some("rejected".into())).await;
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].ack_code, "AR");
    let raw = fx
        .engine
        .journal()
        .raw(rejected[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(raw, bad, "rejected bytes are kept exactly");
    fx.engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_msh9_gets_ar_with_err() {
    let fx = start().await;
    let bad = bad_input("empty_msh9.hl7");
    let control_id = field(std::str::from_utf8(&bad).unwrap(), "MSH", 10);
    let mut conn = connect(fx.addr).await;
    let nak = send(&mut conn, &bad).await;
    // AR: a failed header edit (HL7 v2.5 2.9.2.1), not to be sent again as is
    assert_eq!(field(&nak, "MSA", 1), "AR", "{nak}");
    assert_eq!(field(&nak, "MSA", 2), control_id, "{nak}");
    let err = nak
        .split('\r')
        .find(|s| s.starts_with("ERR"))
        .unwrap_or_else(|| panic!("no ERR in {nak}"));
    assert!(
        err.contains("MSH") && err.contains('9'),
        "ERR names MSH-9: {err}"
    );
    let rows = search(&fx.engine, |q| q.status = Some("rejected".into())).await;
    assert_eq!(rows.len(), 1);
    fx.engine.stop().await;
}

/// Two patients in one ORU (its PATIENT_RESULT group repeated): AE at
/// intake, ERR at the second PID, kept as rejected; not AA and then a
/// routing failure nobody sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_patients_in_one_message_get_ae_naming_the_second_pid() {
    let fx = start().await;
    let text = String::from_utf8(sample("oru_r01_point_of_care.hl7")).unwrap();
    let first = text.split('\r').find(|s| s.starts_with("PID|")).unwrap();
    let second = first
        .replace("9990123713", "9434765919")
        .replace("PID|1|", "PID|2|");
    let two = text.replacen(first, &format!("{first}\r{second}"), 1);
    let mut conn = connect(fx.addr).await;
    let nak = send(&mut conn, two.as_bytes()).await;
    assert_eq!(field(&nak, "MSA", 1), "AE", "{nak}");
    let err = nak.split('\r').find(|s| s.starts_with("ERR")).unwrap();
    assert!(err.contains("PID^2"), "ERR names the second PID: {err}");
    assert!(err.contains("2 PID segments"), "{err}");
    let rows = search(&fx.engine, |q| q.status = Some("rejected".into())).await;
    assert_eq!(rows.len(), 1);
    fx.engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_that_connection_only_and_is_kept() {
    let fx = start().await;
    let mut good = connect(fx.addr).await;
    let ack = send(&mut good, &a01_with_control_id("GOOD0001")).await;
    assert_eq!(field(&ack, "MSA", 1), "AA");
    // every segment of the ACK ends with CR, the last one too
    assert!(ack.ends_with("\rMSA|AA|GOOD0001\r"), "{ack:?}");

    let garbage = bad_input("random_bytes.bin");
    let mut bad = connect(fx.addr).await;
    // Random bytes that happen to start with VT would be a frame; make sure not.
    let mut bytes = vec![b'X'];
    bytes.extend_from_slice(&garbage);
    bad.write_all(&bytes).await.unwrap();
    let ack = send(&mut good, &a01_with_control_id("GOOD0002")).await;
    assert_eq!(
        field(&ack, "MSA", 1),
        "AA",
        "the other connection is still served"
    );
    // (a few stray bytes are held a while for a start block: binary junk with
    // none after it is closed at the idle timeout, 1 s here)
    assert_closed(&mut bad).await;
    let rows = search(&fx.engine, |q| q.status = Some("garbage".into())).await;
    assert_eq!(rows.len(), 1);
    let kept = fx.engine.journal().raw(rows[0].id).await.unwrap().unwrap();
    assert!(
        !kept.is_empty() && bytes.starts_with(&kept),
        "kept bytes are what was sent"
    );
    // counted for ops on their own, not only among the rejected messages
    let metrics = fx.engine.metrics().encode();
    assert!(
        metrics.contains("junction_framing_errors_total{listener=\"pas\"} 1"),
        "{metrics}"
    );
    fx.engine.stop().await;
}

/// Text that is not MLLP (no start block after it) is not held until the
/// idle timeout (60 s here): closed a few seconds after its last byte, with
/// its bytes kept and a reason that says so (s24b tester, L2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_with_no_start_block_after_them_are_closed_before_the_idle_timeout() {
    let fx = start_with("idle_timeout_secs = 60\n").await;
    let mut bad = connect(fx.addr).await;
    let junk = b"hello world\r\n".repeat(10);
    bad.write_all(&junk).await.unwrap();
    assert_closed(&mut bad).await;
    let rows = search(&fx.engine, |q| q.status = Some("garbage".into())).await;
    assert_eq!(rows.len(), 1);
    let detail = fx.engine.journal().get(rows[0].id).await.unwrap().unwrap();
    assert!(
        detail.error.as_deref().unwrap_or("").contains("not MLLP"),
        "{detail:?}"
    );
    let kept = fx.engine.journal().raw(rows[0].id).await.unwrap().unwrap();
    assert_eq!(&kept[..], junk.as_slice());
    // keep-alive alone is no junk: that connection stays, and is answered
    let mut quiet = connect(fx.addr).await;
    quiet.write_all(b"\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let ack = send(&mut quiet, &a01_with_control_id("QUIET001")).await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    fx.engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_over_the_limit_closes_and_keeps_the_bytes() {
    let fx = start().await;
    let mut big = a01_with_control_id("BIG00001");
    big.extend(std::iter::repeat_n(b'Z', MAX_MESSAGE_BYTES + 10));
    let mut conn = connect(fx.addr).await;
    conn.write_all(&frame(&big)).await.ok();
    assert_closed(&mut conn).await;
    let rows = search(&fx.engine, |q| q.status = Some("garbage".into())).await;
    assert_eq!(rows.len(), 1);
    let detail = fx.engine.journal().get(rows[0].id).await.unwrap().unwrap();
    assert!(
        detail.error.as_deref().unwrap_or("").contains("limit"),
        "{detail:?}"
    );
    let kept = fx.engine.journal().raw(rows[0].id).await.unwrap().unwrap();
    assert!(
        kept.len() >= MAX_MESSAGE_BYTES / 2,
        "kept {} bytes",
        kept.len()
    );
    assert!(frame(&big).starts_with(&kept));
    // And the listener still serves.
    let mut next = connect(fx.addr).await;
    let ack = send(&mut next, &a01_with_control_id("AFTERBIG")).await;
    assert_eq!(field(&ack, "MSA", 1), "AA");
    fx.engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_frame_then_silence_is_closed_after_the_idle_timeout() {
    let fx = start().await;
    let message = a01_with_control_id("HALF0001");
    let mut conn = connect(fx.addr).await;
    let mut half = vec![VT];
    half.extend_from_slice(&message[..message.len() / 2]);
    conn.write_all(&half).await.unwrap();
    // idle_timeout_secs = 1 in the test config.
    assert_closed(&mut conn).await;
    let rows = search(&fx.engine, |q| q.status = Some("garbage".into())).await;
    assert_eq!(rows.len(), 1);
    let kept = fx.engine.journal().raw(rows[0].id).await.unwrap().unwrap();
    assert_eq!(kept, half, "the unfinished frame is kept");
    fx.engine.stop().await;
}

/// A 0x1C inside a message (a corrupted byte, an unencoded binary value) is
/// not taken as the frame's end: the message is never cut there and the part
/// before it acknowledged. The whole frame is answered AR and kept, in one
/// write and with the rest of the frame arriving after a pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_block_byte_inside_a_message_is_rejected_whole_never_cut_short() {
    let fx = start().await;
    for (control_id, pause) in [("FSIN1", false), ("FSIN2", true)] {
        let message = String::from_utf8(a01_with_control_id(control_id))
            .unwrap()
            .replacen("MARGARET", "MARG\x1cARET", 1)
            .into_bytes();
        let cut = message.iter().position(|&b| b == FS).unwrap() + 1;
        let mut conn = connect(fx.addr).await;
        let bytes = frame(&message);
        if pause {
            conn.write_all(&bytes[..cut + 1]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            conn.write_all(&bytes[cut + 1..]).await.unwrap();
        } else {
            conn.write_all(&bytes).await.unwrap();
        }
        let ack = read_frame(&mut conn).await.expect("an answer");
        assert_eq!(field(&ack, "MSA", 1), "AR", "{ack}");
        assert_eq!(field(&ack, "MSA", 2), control_id, "{ack}");
        assert!(ack.contains("0x1C inside the message"), "{ack}");
        // the connection stays open for the next message
        let ack = send(&mut conn, &a01_with_control_id(&format!("{control_id}OK"))).await;
        assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    }
    let accepted = search(&fx.engine, |q| q.status = Some("accepted".into())).await;
    assert!(accepted
        .iter()
        .all(|r| !r.control_id.starts_with("FSIN") || r.control_id.ends_with("OK")));
    let rejected = search(&fx.engine, |q| q.status = Some("rejected".into())).await;
    assert_eq!(rejected.len(), 2);
    let whole = a01_with_control_id("FSIN1").len() + 1;
    for row in &rejected {
        let kept = fx.engine.journal().raw(row.id).await.unwrap().unwrap();
        assert!(kept.contains(&FS), "the whole frame is kept");
        assert!(kept.len() >= whole, "the whole frame is kept");
    }
    fx.engine.stop().await;
}

/// A sender that gives up on a frame and starts it again (a new 0x0B before
/// the end block) gets the new message answered under its own control id; the
/// abandoned bytes are kept as garbage and the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_restarted_by_a_new_start_block_is_kept_and_the_new_one_answered() {
    let fx = start().await;
    let message = a01_with_control_id("RESTART1");
    let mut bytes = vec![VT];
    bytes.extend_from_slice(&message[..40]);
    bytes.extend_from_slice(&frame(&message));
    let mut conn = connect(fx.addr).await;
    conn.write_all(&bytes).await.unwrap();
    let ack = read_frame(&mut conn).await.expect("an ACK");
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    assert_eq!(field(&ack, "MSA", 2), "RESTART1", "{ack}");
    let ack = send(&mut conn, &a01_with_control_id("RESTART2")).await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    let garbage = search(&fx.engine, |q| q.status = Some("garbage".into())).await;
    assert_eq!(garbage.len(), 1);
    let kept = fx
        .engine
        .journal()
        .raw(garbage[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept, bytes[..41].to_vec());
    fx.engine.stop().await;
}

/// A sender's stack that writes a few bytes of its own (a keep-alive, a
/// prefix) before a frame, in a write of their own, is not cut off: the bytes
/// are kept as garbage, the frame is answered and the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_before_a_frame_in_their_own_write_are_kept_and_the_frame_answered() {
    let fx = start().await;
    let mut conn = connect(fx.addr).await;
    conn.write_all(b"PING").await.unwrap();
    conn.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    conn.write_all(&frame(&a01_with_control_id("PREFIX01")))
        .await
        .unwrap();
    let ack = read_frame(&mut conn).await.expect("an ACK");
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    assert_eq!(field(&ack, "MSA", 2), "PREFIX01", "{ack}");
    let ack = send(&mut conn, &a01_with_control_id("PREFIX02")).await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    let garbage = search(&fx.engine, |q| q.status = Some("garbage".into())).await;
    assert_eq!(garbage.len(), 1);
    let kept = fx.engine.journal().raw(garbage[0].id).await.unwrap();
    assert_eq!(kept.as_deref(), Some(&b"PING"[..]));
    fx.engine.stop().await;
}

/// The idle timeout (1 s here) counts from the last byte: a frame arriving in
/// pieces over longer than that, never 1 s without a byte, is read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_frame_that_is_never_idle_is_not_cut_off() {
    let fx = start().await;
    let bytes = frame(&a01_with_control_id("SLOW0001"));
    let mut conn = connect(fx.addr).await;
    let piece = bytes.len() / 5 + 1;
    for chunk in bytes.chunks(piece) {
        conn.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let ack = read_frame(&mut conn)
        .await
        .expect("an ACK after ~3 s of sending");
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    fx.engine.stop().await;
}

/// A sender trickling a frame a byte at a time, never idle for the idle
/// timeout, is cut off `frame_timeout_secs` after the frame's first byte: the
/// bytes so far kept as garbage, the connection closed; a frame sent after it
/// on a new connection is answered as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_trickled_past_the_frame_timeout_is_kept_and_closed() {
    let fx = start_with("frame_timeout_secs = 2\n").await;
    let bytes = frame(&a01_with_control_id("TRICKLE1"));
    let mut conn = connect(fx.addr).await;
    let started = std::time::Instant::now();
    let mut sent = 0;
    // a byte every 200 ms (idle: 1 s) would take minutes to send the frame
    for b in &bytes {
        if conn.write_all(&[*b]).await.is_err() {
            break;
        }
        sent += 1;
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(sent < bytes.len(), "cut off before the end block");
    assert_closed(&mut conn).await;
    let rows = search(&fx.engine, |q| q.status = Some("garbage".into())).await;
    assert_eq!(rows.len(), 1);
    let detail = fx.engine.journal().get(rows[0].id).await.unwrap().unwrap();
    let error = detail.error.unwrap_or_default();
    assert!(error.contains("frame_timeout_secs"), "{error}");
    let kept = fx.engine.journal().raw(rows[0].id).await.unwrap().unwrap();
    assert!(
        bytes.starts_with(&kept) && kept.len() > 5,
        "the frame's start is kept"
    );
    let mut conn = connect(fx.addr).await;
    let ack = send(&mut conn, &a01_with_control_id("TRICKLE2")).await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    fx.engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_before_a_frame_does_not_start_its_frame_timeout() {
    // frame timeout 3 s, idle 1 s: a frame ending `FS CR LF` (the LF read
    // with it, left over after its answer), a CR LF keep-alive, then a frame
    // sent in five parts 0.7 s apart (never idle), its last part 3.5 s after
    // the first frame's answer but 2.8 s after its own first byte: answered
    let fx = start_with("frame_timeout_secs = 3\n").await;
    let mut conn = connect(fx.addr).await;
    let mut first = frame(&a01_with_control_id("KEEPALV0"));
    first.push(b'\n');
    conn.write_all(&first).await.unwrap();
    let ack = read_frame(&mut conn).await.expect("answered");
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    tokio::time::sleep(Duration::from_millis(350)).await;
    conn.write_all(b"\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let bytes = frame(&a01_with_control_id("KEEPALV1"));
    for part in bytes.chunks(bytes.len().div_ceil(5)) {
        conn.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let ack = read_frame(&mut conn).await.expect("answered");
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    fx.engine.stop().await;
}

/// MSH-12 that is no HL7 v2 version (a garbled header: fields shifted) gets
/// AR with HL7's error 203; one with trailing blanks or a `V` is read as the
/// version and echoed; a `~` in MSH-10 is part of the control id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_version_and_control_id_are_read_as_senders_write_them() {
    let fx = start().await;
    let mut conn = connect(fx.addr).await;
    let text = String::from_utf8(a01_with_control_id("VER00001")).unwrap();
    let ack = send(&mut conn, text.replacen("|P|2.4|", "|P|LCR|", 1).as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "AR", "{ack}");
    assert!(ack.contains("203"), "{ack}");
    let text = String::from_utf8(a01_with_control_id("VER00002")).unwrap();
    let ack = send(
        &mut conn,
        text.replacen("|P|2.4|", "|P|2.4   |", 1).as_bytes(),
    )
    .await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    assert_eq!(field(&ack, "MSH", 12), "2.4", "{ack}");
    for id in ["REPC~1", "REPC~2"] {
        let ack = send(&mut conn, &a01_with_control_id(id)).await;
        assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
        // echoed as sent: the sender matches MSA-2 to its MSH-10 byte for byte
        assert_eq!(field(&ack, "MSA", 2), id, "{ack}");
    }
    let accepted = search(&fx.engine, |q| q.status = Some("accepted".into())).await;
    assert_eq!(
        accepted
            .iter()
            .filter(|r| r.control_id.starts_with("REPC~"))
            .count(),
        2
    );
    fx.engine.stop().await;
}

/// The ACK to a sender whose MSH-18 is `8859/1` is written in ISO 8859-1 and
/// declares it, so the names it echoes (MSH-5/6) read back as the sender wrote
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ack_speaks_the_senders_character_set() {
    let fx = start().await;
    let mut message = b"MSH|^~\\&|PAS|SAINT-\xC9TIENNE|JUNCTION|LCR|20261120143512||ADT^A08^ADT_A01|LATIN0001|P|2.4|||||GBR|8859/1\r".to_vec();
    message.extend_from_slice(b"EVN|A08|20261120143500\rPID|1||RAL1^^^RAL^MR||D\xC9NIS^ZO\xCB\r");
    let mut conn = connect(fx.addr).await;
    conn.write_all(&frame(&message)).await.unwrap();
    let buf = read_raw_frame(&mut conn).await;
    let ack = &buf[1..buf.len() - 2];
    assert!(
        ack.windows(15).any(|w| w == b"|SAINT-\xC9TIENNE|"),
        "{:?}",
        String::from_utf8_lossy(ack)
    );
    assert!(!ack.windows(2).any(|w| w == [0xC3, 0x89]), "not UTF-8");
    let msh = ack.split(|&b| b == CR).next().unwrap();
    assert!(
        msh.ends_with(b"|8859/1"),
        "{:?}",
        String::from_utf8_lossy(msh)
    );
    assert!(ack.windows(8).any(|w| w == b"MSA|AA|L"));
    fx.engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connections_all_get_aa() {
    let fx = start().await;
    let mut tasks = Vec::new();
    for c in 0..16 {
        let addr = fx.addr;
        tasks.push(tokio::spawn(async move {
            let mut conn = connect(addr).await;
            for m in 0..20 {
                let control_id = format!("C{c:02}M{m:03}");
                let ack = send(&mut conn, &a01_with_control_id(&control_id)).await;
                assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
                assert_eq!(field(&ack, "MSA", 2), control_id);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let rows = search(&fx.engine, |q| {
        q.status = Some("accepted".into());
        q.limit = Some(1000);
    })
    .await;
    assert_eq!(rows.len(), 320);
    fx.engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_frames_are_answered_in_order() {
    let fx = start().await;
    let mut conn = connect(fx.addr).await;
    let mut bytes = Vec::new();
    for i in 0..5 {
        bytes.extend(frame(&a01_with_control_id(&format!("PIPE{i}"))));
    }
    conn.write_all(&bytes).await.unwrap();
    // the ACKs may arrive together in one read: split them from one buffer
    // (`read_frame` keeps only the first frame of what it reads)
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while buf.iter().filter(|&&b| b == FS).count() < 5 {
        let n = tokio::time::timeout(PATIENCE, conn.read(&mut chunk))
            .await
            .expect("no reply within the test's patience")
            .unwrap_or_default();
        assert!(
            n > 0,
            "closed after {} ACK(s)",
            buf.iter().filter(|&&b| b == FS).count()
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    let acks: Vec<String> = buf
        .split(|&b| b == FS)
        .filter_map(|f| f.iter().position(|&b| b == VT).map(|s| &f[s + 1..]))
        .map(|f| String::from_utf8(f.to_vec()).unwrap())
        .collect();
    assert_eq!(acks.len(), 5);
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(field(ack, "MSA", 2), format!("PIPE{i}"));
    }
    fx.engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_gets_one_batch_ack_with_each_message_acknowledged() {
    let fx = start().await;
    let batch = sample("batch_adt.hl7");
    let text = String::from_utf8(batch.clone()).unwrap();
    let control_ids: Vec<String> = text
        .split(['\r', '\n'])
        .filter(|s| s.starts_with("MSH"))
        .map(|s| field(s, "MSH", 10))
        .collect();
    assert!(control_ids.len() >= 2);
    let mut conn = connect(fx.addr).await;
    let ack = send(&mut conn, &batch).await;
    let segments: Vec<&str> = ack.split('\r').filter(|s| !s.is_empty()).collect();
    assert!(segments[0].starts_with("FHS|"), "{ack}");
    assert!(segments[1].starts_with("BHS|"), "{ack}");
    let msas: Vec<&&str> = segments.iter().filter(|s| s.starts_with("MSA")).collect();
    assert_eq!(msas.len(), control_ids.len(), "{ack}");
    for (msa, control_id) in msas.iter().zip(&control_ids) {
        assert_eq!(field(msa, "MSA", 1), "AA", "{ack}");
        assert_eq!(&field(msa, "MSA", 2), control_id);
    }
    assert_eq!(
        segments[segments.len() - 2],
        format!("BTS|{}", control_ids.len())
    );
    assert_eq!(segments[segments.len() - 1], "FTS|1");
    let rows = search(&fx.engine, |q| q.limit = Some(1000)).await;
    assert_eq!(rows.len(), control_ids.len(), "one row per message");
    // A resend of the whole batch is answered from the journal, stored once.
    let again = send(&mut conn, &batch).await;
    let msas_again: Vec<&str> = again.split('\r').filter(|s| s.starts_with("MSA")).collect();
    assert_eq!(msas_again, msas.iter().map(|s| **s).collect::<Vec<_>>());
    let rows = search(&fx.engine, |q| q.limit = Some(1000)).await;
    assert_eq!(rows.len(), control_ids.len());
    fx.engine.stop().await;
}

/// Each message of a batch is its own: decoded by its own MSH-18 (a Latin-1
/// message, then a UTF-8 one) and kept as the bytes it arrived as; a byte order
/// mark before the batch or before a message hides nothing; one message whose
/// bytes do not decode is the only one refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchs_messages_keep_their_own_character_sets() {
    let fx = start().await;
    let latin1: &[u8] =
        b"MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20261124101500||ADT^A08|CS-L1|P|2.4||||||8859/1\r\
        EVN|A08|20261124101500\rPID|1||9990000026^^^NHS^NH||\xd3 BRIAIN^SI\xc2N||19800101|F\r";
    let utf8 =
        "MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20261124101501||ADT^A08|CS-U8|P|2.4||||||UNICODE UTF-8\r\
        EVN|A08|20261124101501\rPID|1||9990000026^^^NHS^NH||\u{d3} BRIAIN^SI\u{c2}N||19800101|F\r";
    let bad: &[u8] = b"MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20261124101502||ADT^A08|CS-BAD|P|2.4||||||UNICODE UTF-8\r\
        EVN|A08|20261124101502\rPID|1||9990000026^^^NHS^NH||\xd3 BRIAIN||19800101|F\r";
    let mut batch = b"\xef\xbb\xbfFHS|^~\\&|PAS|RAL01\rBHS|^~\\&|PAS|RAL01\r".to_vec();
    batch.extend_from_slice(latin1);
    batch.extend_from_slice(b"\xef\xbb\xbf");
    batch.extend_from_slice(utf8.as_bytes());
    batch.extend_from_slice(bad);
    batch.extend_from_slice(b"BTS|3\rFTS|1\r");
    let mut conn = connect(fx.addr).await;
    let ack = send(&mut conn, &batch).await;
    assert!(ack.starts_with("FHS|"), "a batch ACK: {ack}");
    let msas: Vec<&str> = ack.split('\r').filter(|s| s.starts_with("MSA")).collect();
    assert_eq!(msas.len(), 3, "{ack}");
    assert!(msas[0].starts_with("MSA|AA|CS-L1"), "{ack}");
    assert!(msas[1].starts_with("MSA|AA|CS-U8"), "{ack}");
    assert!(msas[2].starts_with("MSA|AR"), "{ack}");
    for (control_id, bytes) in [("CS-L1", latin1), ("CS-U8", utf8.as_bytes())] {
        let rows = search(&fx.engine, |q| q.control_id = Some(control_id.to_string())).await;
        assert_eq!(rows.len(), 1, "{control_id}");
        let kept = fx.engine.journal().raw(rows[0].id).await.unwrap().unwrap();
        assert_eq!(&kept[..], bytes, "{control_id}: the bytes as received");
        let text = junction::hl7::decode(&kept).unwrap();
        assert!(
            text.contains("\u{d3} BRIAIN^SI\u{c2}N"),
            "{control_id}: {text}"
        );
    }
    fx.engine.stop().await;
}

/// A batch file cut short in transfer (BTS-1 says 3, two messages arrived): the
/// two are taken and answered, and the batch ACK's BTS-2 says what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_short_is_taken_and_its_ack_says_so() {
    let fx = start().await;
    let text = String::from_utf8(sample("batch_adt.hl7")).unwrap();
    let third = text.match_indices("MSH|").nth(2).expect("three messages").0;
    let end = text.find("BTS|").expect("a BTS");
    let cut = format!("{}{}", &text[..third], &text[end..]);
    assert!(cut.contains("BTS|3"));
    let mut conn = connect(fx.addr).await;
    let ack = send(&mut conn, cut.as_bytes()).await;
    let msas = ack.split('\r').filter(|s| s.starts_with("MSA|AA")).count();
    assert_eq!(msas, 2, "{ack}");
    assert!(
        ack.contains("\rBTS|2|the batch declared 3 messages (BTS-1); 2 received\r"),
        "{ack}"
    );
    let rows = search(&fx.engine, |q| q.limit = Some(1000)).await;
    assert_eq!(rows.len(), 2);
    fx.engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_mode_accept_ack_is_ca() {
    let fx = start().await;
    let message = sample("adt_a04_outpatient_enhanced_ack.hl7");
    assert_eq!(
        field(std::str::from_utf8(&message).unwrap(), "MSH", 15),
        "AL"
    );
    let mut conn = connect(fx.addr).await;
    let ack = send(&mut conn, &message).await;
    assert_eq!(field(&ack, "MSA", 1), "CA", "{ack}");
    fx.engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_mode_never_means_no_accept_ack_but_the_message_is_kept() {
    let fx = start().await;
    let text = String::from_utf8(sample("adt_a04_outpatient_enhanced_ack.hl7")).unwrap();
    let control_id = field(&text, "MSH", 10);
    let never = text.replacen("|AL|NE|", "|NE|NE|", 1);
    assert_ne!(never, text, "the sample carries MSH-15 AL / MSH-16 NE");
    let mut conn = connect(fx.addr).await;
    conn.write_all(&frame(never.as_bytes())).await.unwrap();
    // The next reply on this connection answers the next message: none came for NE.
    let ack = send(&mut conn, &a01_with_control_id("AFTERNE1")).await;
    assert_eq!(field(&ack, "MSA", 2), "AFTERNE1", "{ack}");
    let rows = search(&fx.engine, |q| q.control_id = Some(control_id.clone())).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "accepted");
    let detail = fx.engine.journal().get(rows[0].id).await.unwrap().unwrap();
    assert_eq!(detail.ack, None, "nothing sent, nothing stored");
    assert_eq!(rows[0].ack_code, "", "no ACK code: none was sent");
    fx.engine.stop().await;
}

/// A sender that declares no character set (MSH-18 empty) but sends Latin-1
/// bytes (a facility `HÔPITAL`, a control id with `É`) gets its ACK in the same
/// bytes: MSA-2 equals its MSH-10 byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_latin1_sender_gets_its_ack_in_its_own_bytes() {
    let fx = start().await;
    let message: &[u8] =
        b"MSH|^~\\&|PAS|H\xd4PITAL|JUNCTION|LCR|20261124101500||ADT^A08|L1-\xc9T\xc9|P|2.4\r\
        EVN|A08|20261124101500\rPID|1||9990000026^^^NHS^NH||CL\xc9MENT^\xc9LISE||19800101|F\r";
    let mut conn = connect(fx.addr).await;
    conn.write_all(&frame(message)).await.unwrap();
    let buf = read_raw_frame(&mut conn).await;
    let has = |needle: &[u8]| buf.windows(needle.len()).any(|w| w == needle);
    assert!(
        has(b"MSA|AA|L1-\xc9T\xc9"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    assert!(
        has(b"|PAS|H\xd4PITAL|"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    fx.engine.stop().await;
}

/// A sender writing UTF-16 (with its byte order mark or without, little- or
/// big-endian) is refused (AR, ERR 203 at MSH-18: MLLP cannot frame UTF-16 safely, as
/// its bytes can hold the end block), in UTF-16 the same way, not in UTF-8
/// bytes it cannot read; a UTF-16 frame after stray bytes, or after one it
/// abandoned, is told apart and answered too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_utf16_sender_is_refused_in_utf16() {
    let fx = start().await;
    let text = "MSH|^~\\&|PAS|H\u{d4}PITAL|JUNCTION|LCR|20261124101500||ADT^A08|U16-\u{c9}|P|2.5||||||UNICODE UTF-16\r\
        EVN|A08|20261124101500\rPID|1||9990000026^^^NHS^NH||CL\u{c9}MENT^\u{c9}LISE||19800101|F\r";
    // with a byte order mark or without, either order
    for (little_endian, bom) in [(true, true), (false, true), (true, false), (false, false)] {
        let mark = bom.then_some(0xFEFF);
        let units = mark.into_iter().chain(text.encode_utf16());
        let message: Vec<u8> = units
            .flat_map(|u| {
                if little_endian {
                    u.to_le_bytes()
                } else {
                    u.to_be_bytes()
                }
            })
            .collect();
        let mut conn = connect(fx.addr).await;
        let mut bytes = b"PING".to_vec();
        bytes.push(VT);
        bytes.extend_from_slice(&message[..20]);
        bytes.extend_from_slice(&frame(&message));
        conn.write_all(&bytes).await.unwrap();
        let buf = read_raw_frame(&mut conn).await;
        let body = &buf[1..buf.len() - 2];
        let mark: &[u8] = match (bom, little_endian) {
            (false, _) => b"",
            (true, true) => b"\xFF\xFE",
            (true, false) => b"\xFE\xFF",
        };
        assert!(body.starts_with(mark), "{body:?}");
        let units: Vec<u16> = body[mark.len()..]
            .chunks(2)
            .map(|c| {
                let pair = [c[0], c[1]];
                if little_endian {
                    u16::from_le_bytes(pair)
                } else {
                    u16::from_be_bytes(pair)
                }
            })
            .collect();
        let ack = String::from_utf16(&units).expect("the ACK is UTF-16");
        assert_eq!(field(&ack, "MSA", 1), "AR", "{ack}");
        assert_eq!(field(&ack, "MSA", 2), "U16-\u{c9}", "{ack}");
        assert_eq!(field(&ack, "MSH", 6), "H\u{d4}PITAL", "{ack}");
        assert!(ack.contains("\rERR|") && ack.contains("203^"), "{ack}");
        assert!(ack.contains("UTF-8"), "{ack}");
    }
    fx.engine.stop().await;
}

/// A batch ACK answers each message in its own character set: a Latin-1
/// message's MSA-2 in Latin-1 bytes, a UTF-8 one's in UTF-8, as when each is
/// sent alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_ack_answers_each_message_in_its_own_charset() {
    let fx = start().await;
    let mut batch = b"FHS|^~\\&|PAS|RAL01\rBHS|^~\\&|PAS|RAL01\r".to_vec();
    batch.extend_from_slice(
        b"MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20261124101500||ADT^A08|L1-\xc9|P|2.4||||||8859/1\r\
          EVN|A08|20261124101500\rPID|1||9990000026^^^NHS^NH||\xd3 BRIAIN||19800101|F\r",
    );
    batch.extend_from_slice(
        "MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20261124101501||ADT^A08|U8-\u{c9}|P|2.4||||||UNICODE UTF-8\r\
         EVN|A08|20261124101501\rPID|1||9990000026^^^NHS^NH||\u{d3} BRIAIN||19800101|F\r"
            .as_bytes(),
    );
    batch.extend_from_slice(b"BTS|2\rFTS|1\r");
    let mut conn = connect(fx.addr).await;
    conn.write_all(&frame(&batch)).await.unwrap();
    let buf = read_raw_frame(&mut conn).await;
    let has = |needle: &[u8]| buf.windows(needle.len()).any(|w| w == needle);
    let shown = String::from_utf8_lossy(&buf).into_owned();
    assert!(has(b"MSA|AA|L1-\xc9\r"), "{shown}");
    assert!(has("MSA|AA|U8-\u{c9}\r".as_bytes()), "{shown}");
    // a message that declares nothing but is Latin-1, inside a batch: its ACK too
    let batch = b"BHS|^~\\&|PAS|RAL01\rMSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20261124101502||ADT^A08|UN-\xc9|P|2.4\r\
        EVN|A08|20261124101502\rPID|1||9990000026^^^NHS^NH||\xd3 BRIAIN||19800101|F\rBTS|1\r";
    conn.write_all(&frame(batch)).await.unwrap();
    let buf = read_raw_frame(&mut conn).await;
    let has = |needle: &[u8]| buf.windows(needle.len()).any(|w| w == needle);
    assert!(
        has(b"MSA|AA|UN-\xc9\r"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    fx.engine.stop().await;
}

/// A 0x0B inside a message that starts no new one (a word processor's manual
/// line break pasted into a name or a report) is data: the message is
/// answered by its own control id, not cut in two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_start_block_byte_in_the_data_does_not_cut_the_message() {
    let fx = start().await;
    let text = String::from_utf8(a01_with_control_id("STRAYVT1")).unwrap();
    let pid5 = field(&text, "PID", 5);
    assert!(pid5.len() > 3, "{pid5}");
    let broken = text.replacen(&pid5, &format!("{}\u{b}{}", &pid5[..3], &pid5[3..]), 1);
    let mut conn = connect(fx.addr).await;
    let ack = send(&mut conn, broken.as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 2), "STRAYVT1", "{ack}");
    let rows = search(&fx.engine, |q| q.limit = Some(100)).await;
    assert_eq!(rows.len(), 1, "one message, no garbage: {rows:?}");
    let kept = fx.engine.journal().raw(rows[0].id).await.unwrap().unwrap();
    assert_eq!(&kept[..], broken.as_bytes());
    fx.engine.stop().await;
}

/// An acknowledgement (or a query's response) sent to the listener is kept
/// but never answered (HL7 does not acknowledge an ACK; two engines that did
/// would answer each other for ever); a query (QRY, QBP) is refused with AR and ERR 200, since
/// Junction makes no query responses and an AA would leave the querying system
/// waiting for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_is_not_answered_and_a_query_is_refused() {
    let fx = start().await;
    let mut conn = connect(fx.addr).await;
    let ack_in =
        "MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20261124101500||ACK^A01^ACK|ACKIN1|P|2.5\rMSA|AA|J123\r";
    conn.write_all(&frame(ack_in.as_bytes())).await.unwrap();
    // the next reply on this connection answers the next message: none came for the ACK
    let ack = send(&mut conn, &a01_with_control_id("AFTERACK1")).await;
    assert_eq!(field(&ack, "MSA", 2), "AFTERACK1", "{ack}");
    let rows = search(&fx.engine, |q| q.control_id = Some("ACKIN1".to_string())).await;
    assert_eq!(rows.len(), 1, "kept");
    assert_eq!(rows[0].status, "accepted");
    let detail = fx.engine.journal().get(rows[0].id).await.unwrap().unwrap();
    assert_eq!(
        (detail.summary.ack_code.as_str(), detail.ack),
        ("", None),
        "nothing sent, none said"
    );
    // an application ACK sent in enhanced mode asking for an accept ACK
    // (MSH-15 AL): its sender waits for the CA, so it gets one, asking for
    // nothing in turn (MSH-15/16 empty: never answered back)
    let app_ack = "MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20261124101500||ACK^A01^ACK|ACKIN2|P|2.5|||AL|NE\rMSA|AA|J124\r";
    let ack = send(&mut conn, app_ack.as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "CA", "{ack}");
    assert_eq!(field(&ack, "MSA", 2), "ACKIN2", "{ack}");
    assert_eq!(
        (field(&ack, "MSH", 15), field(&ack, "MSH", 16)),
        (String::new(), String::new()),
        "{ack}"
    );
    // a query's response (RSP, ADR, MFR, QCK) and an order's application
    // acknowledgement (ORR, ORL) are answers too: kept, not answered
    for (response, control_id) in [
        ("RSP^K22^RSP_K21", "RSPK22"),
        ("ADR^A19", "ADRA19"),
        ("MFR^M01", "MFRM01"),
        ("QCK^Q02", "QCKQ02"),
        ("ORR^O02^ORR_O02", "ORRO02"),
        ("ORL^O22^ORL_O22", "ORLO22"),
    ] {
        let message = format!(
            "MSH|^~\\&|EPR|RAL01|JUNCTION|LCR|20261124101500||{response}|{control_id}|P|2.5\rMSA|AA|Q1\rQAK|Q1|OK\r"
        );
        conn.write_all(&frame(message.as_bytes())).await.unwrap();
        let after = format!("AFTER{control_id}");
        let ack = send(&mut conn, &a01_with_control_id(&after)).await;
        assert_eq!(field(&ack, "MSA", 2), after, "{ack}");
        let rows = search(&fx.engine, |q| q.control_id = Some(control_id.to_string())).await;
        assert_eq!(rows.len(), 1, "kept");
        assert_eq!(
            (rows[0].status.as_str(), rows[0].ack_code.as_str()),
            ("accepted", "")
        );
    }
    for (query, control_id) in [("QRY^A19", "QRYA19"), ("QBP^Q22^QBP_Q21", "QBPQ22")] {
        let message = format!(
            "MSH|^~\\&|EPR|RAL01|JUNCTION|LCR|20261124101500||{query}|{control_id}|P|2.5\rQRD|20261124|R|I|Q1|||1^RD|9990000018|DEM\r"
        );
        let ack = send(&mut conn, message.as_bytes()).await;
        assert_eq!(field(&ack, "MSA", 1), "AR", "{ack}");
        assert_eq!(field(&ack, "MSA", 2), control_id, "{ack}");
        assert!(ack.contains("\rERR|") && ack.contains("200^"), "{ack}");
        let rows = search(&fx.engine, |q| q.control_id = Some(control_id.to_string())).await;
        assert_eq!(rows[0].status, "rejected");
    }
    fx.engine.stop().await;
}

/// A refused message whose sender asked for no accept acknowledgement (MSH-15
/// NE) but for an application acknowledgement on error (MSH-16 AL or ER) is
/// answered with the application-level reject: it never reaches the
/// application that would send one, and silence would read as success. With
/// MSH-16 NE too, nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_that_asked_for_an_application_ack_is_answered() {
    let fx = start().await;
    let text = String::from_utf8(sample("adt_a04_outpatient_enhanced_ack.hl7")).unwrap();
    let broken = |msh16: &str, control_id: &str| {
        let t = text
            .replacen("|AL|NE|", &format!("|NE|{msh16}|"), 1)
            .replacen("\rPV1|", "\rPV1X1|", 1);
        let old = field(&text, "MSH", 10);
        t.replacen(&old, control_id, 1)
    };
    let mut conn = connect(fx.addr).await;
    for (msh16, control_id) in [("AL", "REFUSEDAL"), ("ER", "REFUSEDER")] {
        let ack = send(&mut conn, broken(msh16, control_id).as_bytes()).await;
        assert_eq!(field(&ack, "MSA", 1), "AR", "{ack}");
        assert_eq!(field(&ack, "MSA", 2), control_id, "{ack}");
        assert!(ack.contains("\rERR|"), "{ack}");
    }
    conn.write_all(&frame(broken("NE", "REFUSEDNE").as_bytes()))
        .await
        .unwrap();
    let ack = send(&mut conn, &a01_with_control_id("AFTERREFUSED")).await;
    assert_eq!(
        field(&ack, "MSA", 2),
        "AFTERREFUSED",
        "nothing for NE/NE: {ack}"
    );
    fx.engine.stop().await;
}

/// A resend that asks for an acknowledgement gets one, also when the copy it
/// repeats asked for none (MSH-15 NE): the sender is waiting for it now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_asking_for_an_ack_is_answered_after_a_copy_that_asked_for_none() {
    let fx = start().await;
    let text = String::from_utf8(sample("adt_a04_outpatient_enhanced_ack.hl7")).unwrap();
    let old = field(&text, "MSH", 10);
    let text = text.replacen(&old, "RESENDNE1", 1);
    let never = text.replacen("|AL|NE|", "|NE|NE|", 1);
    let mut conn = connect(fx.addr).await;
    conn.write_all(&frame(never.as_bytes())).await.unwrap();
    // the same message again, asking for an accept acknowledgement
    let ack = send(&mut conn, text.as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "CA", "{ack}");
    assert_eq!(field(&ack, "MSA", 2), "RESENDNE1", "{ack}");
    let rows = search(&fx.engine, |q| q.control_id = Some("RESENDNE1".into())).await;
    // processed once (the copy differs in MSH-15, so it is kept as a rejected row)
    let accepted = rows.iter().filter(|r| r.status == "accepted").count();
    assert_eq!(accepted, 1, "the resend is not processed twice");
    // each row says what its sender got: nothing for the NE copy, the CA sent
    // now for the resend (kept as a rejected row, as it differs)
    for row in &rows {
        let detail = fx.engine.journal().get(row.id).await.unwrap().unwrap();
        if row.status == "accepted" {
            assert_eq!((row.ack_code.as_str(), detail.ack.as_deref()), ("", None));
        } else {
            assert_eq!(row.ack_code, "CA", "{row:?}");
            assert_eq!(detail.ack.as_deref(), Some(ack.as_str()), "{row:?}");
        }
    }
    fx.engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_closes_idle_connections_and_returns() {
    let fx = start().await;
    let mut conn = connect(fx.addr).await;
    let ack = send(&mut conn, &a01_with_control_id("BEFORESTOP")).await;
    assert_eq!(field(&ack, "MSA", 1), "AA");
    let journal = fx.engine.journal().clone();
    fx.engine.stop().await;
    assert_closed(&mut conn).await;
    assert!(
        TcpStream::connect(fx.addr).await.is_err(),
        "no longer accepting"
    );
    let rows = journal.search(MessageQuery::default()).await.unwrap();
    assert_eq!(rows.len(), 1);
}

/// A port free right now (bound then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_binary_config(dir: &Path, mllp_port: u16, api_port: u16) -> PathBuf {
    let path = dir.join("junction.toml");
    std::fs::write(
        &path,
        format!(
            "[listeners.pas]\nbind = \"127.0.0.1:{mllp_port}\"\n\n\
             [store]\npath = \"data/journal.db\"\n\n\
             [api]\nbind = \"127.0.0.1:{api_port}\"\n"
        ),
    )
    .unwrap();
    path
}

fn junction_serve(config: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_junction"))
        .args(["serve", "--config"])
        .arg(config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_answers_then_drains_on_sigterm_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_binary_config(dir.path(), port, free_port());
    let child = junction_serve(&config);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut conn = None;
    for _ in 0..300 {
        if let Ok(c) = TcpStream::connect(addr).await {
            conn = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut conn = conn.expect("junction serve never listened");
    let ack = send(&mut conn, &a01_with_control_id("BIN00001")).await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    // a sender halfway through a message when the shutdown begins: the rest
    // arrives just after, and the message is answered, not cut off
    let mut midway = TcpStream::connect(addr).await.unwrap();
    let framed = frame(&a01_with_control_id("BIN00002"));
    let (first, rest) = framed.split_at(40);
    midway.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    midway.write_all(rest).await.unwrap();
    let ack = read_frame(&mut midway)
        .await
        .expect("the message in flight at the shutdown is answered");
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    assert_eq!(field(&ack, "MSA", 2), "BIN00002", "{ack}");
    assert_closed(&mut midway).await;
    assert_closed(&mut conn).await;
    let exit = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let log = String::from_utf8_lossy(&exit.stderr);
    assert_eq!(exit.status.code(), Some(0), "{log}");
    assert!(log.contains("MLLP listener bound"), "{log}");
    assert!(log.contains("sync"), "{log}");
    assert!(
        log.contains("BIN00001") && log.contains("BIN00002"),
        "one line per message outcome: {log}"
    );
    assert!(dir.path().join("data/journal.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_exits_2_when_the_port_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = write_binary_config(dir.path(), port, free_port());
    let child = junction_serve(&config);
    let exit = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let log = String::from_utf8_lossy(&exit.stderr);
    assert_eq!(exit.status.code(), Some(2), "{log}");
    assert!(
        log.contains(&format!("127.0.0.1:{port}")),
        "names the address: {log}"
    );
    assert!(log.contains("pas"), "names the listener: {log}");
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_finished_messages_at_start_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    // what an earlier run left: a NAKed message 40 days old, one of 10 days
    {
        let journal = junction::journal::Journal::open(&junction::journal::StoreConfig {
            path: dir.path().join("data/journal.db"),
            sync: junction::journal::SyncPolicy::Normal,
            records: dir.path().join("data/records.db"),
            retain_days: None,
            ..Default::default()
        })
        .unwrap();
        for (control_id, days) in [("OLD40", 40), ("OLD10", 10)] {
            journal
                .commit(vec![junction::journal::Incoming {
                    listener: "pas".into(),
                    peer: "127.0.0.1:5000".into(),
                    received_at: jiff::Timestamp::now()
                        - jiff::SignedDuration::from_hours(24 * days),
                    sender: "PAS^RAL".into(),
                    control_id: control_id.into(),
                    message_type: "ADT^A01".into(),
                    version: "2.4".into(),
                    status: junction::journal::Status::Rejected,
                    ack_code: Some("AR".into()),
                    ack: None,
                    error: Some("test".into()),
                    raw: bytes::Bytes::from_static(b"MSH|^~\\&|PAS|RAL"),
                }])
                .await
                .unwrap();
        }
    }
    let config_path = dir.path().join("junction.toml");
    std::fs::write(
        &config_path,
        "[listeners.pas]\nbind = \"127.0.0.1:0\"\n\n\
         [store]\npath = \"data/journal.db\"\nrecords = \"data/records.db\"\nsync = \"normal\"\nretain_days = 30\n\n\
         [api]\nbind = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let config = junction::config::load(&config_path).unwrap_or_else(|d| panic!("{d}"));
    let engine = engine::start(config, dir.path()).await.unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let old = search(&engine, |q| q.control_id = Some("OLD40".into())).await;
        // the count is taken once the batch is committed
        let counted = engine
            .metrics()
            .encode()
            .contains("junction_journal_pruned_messages_total 1");
        if old.is_empty() && counted {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not pruned in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kept = search(&engine, |q| q.control_id = Some("OLD10".into())).await;
    assert_eq!(kept.len(), 1, "within retention: kept");
    engine.stop().await;
}

/// A sender beyond `max_connections` (64 here) is closed at once, not left waiting
/// in the backlog for an answer that never comes; a freed slot takes the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_beyond_the_limit_is_closed_at_once() {
    let f = start().await;
    // (the fixture's idle timeout is 1 s: all of this happens well within it)
    let mut open = Vec::new();
    for _ in 0..64 {
        open.push(connect(f.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = connect(f.addr).await;
    let _ = extra
        .write_all(&frame(&sample("adt_a01_admission.hl7")))
        .await;
    assert_closed(&mut extra).await;
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut next = connect(f.addr).await;
    let ack = send(&mut next, &sample("adt_a01_admission.hl7")).await;
    assert!(ack.contains("MSA|AA|"), "{ack}");
    f.engine.stop().await;
}

/// One engine per journal: a second engine started on the same journal (by
/// mistake, or a restart racing the old process) refuses to start, naming the
/// holder, instead of working the same delivery queue and sending everything
/// twice; once the first has stopped, the journal can be opened again.
#[tokio::test]
async fn a_second_engine_on_the_same_journal_refuses_to_start() {
    let first = start().await;
    let dir = first._dir.path();
    // the journal holds patient data: readable by its owner only
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("data/journal.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let config = junction::config::load(&dir.join("junction.toml")).unwrap();
    let err = engine::start(config, dir)
        .await
        .expect_err("the journal is in use");
    let text = err.to_string();
    assert!(text.contains("in use by another Junction engine"), "{text}");
    assert!(
        text.contains(&format!("(pid {})", std::process::id())),
        "{text}"
    );
    // nor through a symbolic link to its folder, nor a hard link to the file
    std::os::unix::fs::symlink(dir.join("data"), dir.join("alias")).unwrap();
    std::fs::hard_link(dir.join("data/journal.db"), dir.join("hard.db")).unwrap();
    for (path, name) in [("alias/journal.db", "linked"), ("hard.db", "hard")] {
        let text = std::fs::read_to_string(dir.join("junction.toml"))
            .unwrap()
            .replace("data/journal.db", path);
        std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
        let config = junction::config::load(&dir.join(format!("{name}.toml"))).unwrap();
        let err = engine::start(config, dir)
            .await
            .expect_err("the same journal through a link");
        assert!(
            err.to_string()
                .contains("in use by another Junction engine"),
            "{name}: {err}"
        );
    }
    // the first engine still takes messages
    let mut stream = TcpStream::connect(first.addr).await.unwrap();
    let ack = send(&mut stream, &sample("adt_a01_admission.hl7")).await;
    assert!(ack.contains("MSA|AA"), "{ack}");
    drop(stream);
    let Fixture { engine, _dir, .. } = first;
    engine.stop().await;
    let config = junction::config::load(&_dir.path().join("junction.toml")).unwrap();
    let again = engine::start(config, _dir.path())
        .await
        .expect("free again");
    again.stop().await;
}
