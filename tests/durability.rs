//! Acceptance: no acknowledged message is lost when the engine is SIGKILLed.
//!
//! Three rounds on the same data folder (cumulative): start `junction serve`
//! with `sync = "full"` (and, in a second test, `"normal"`), send on 8
//! connections as fast as ACKs come back (each message with a unique control
//! id), record every control id that got AA together with the ACK bytes,
//! SIGKILL the engine mid-stream after 1,500–3,000 ACKs, restart it on the
//! same journal and resend some acknowledged messages: each must get the very
//! same ACK bytes back. At the end the SQLite journal is opened directly and
//! every acknowledged control id must be there exactly once (and no control id
//! sent more than once).
//!
//! Bounded: each round stops after its ACK target or a deadline; each ACK is
//! awaited at most [`ACK_TIMEOUT`].

mod harness;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use harness::Engine;
use junction::mllp::codec::MllpCodec;

const CONNECTIONS: usize = 8;
const ROUNDS: usize = 3;
/// ACKs to collect (across all connections) before each SIGKILL, plus up to as
/// many again at random, so the kill lands at a different point each round.
const ACKS_BEFORE_KILL: usize = 1500;
const ROUND_DEADLINE: Duration = Duration::from_secs(90);
const ACK_TIMEOUT: Duration = Duration::from_secs(20);
/// Sending application/facility of every message here (MSH-3, MSH-4).
const SENDING_APP: &str = "DURAPAS";
const SENDING_FACILITY: &str = "RDU01";
/// Previously acknowledged messages resent after each restart.
const RESENDS: usize = 24;

/// A realistic ADT^A01 (v2.4) with the given control id; test NHS number.
fn message(control_id: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|{SENDING_APP}|{SENDING_FACILITY}|JUNCTION|SCR|20260101120000||ADT^A01^ADT_A01|{control_id}|P|2.4\r\
         EVN|A01|20260101120000\r\
         PID|1||9449305552^^^NHS^NH~D{control_id}^^^RDU01^MR||TESTPATIENT^DURABLE^^^MR||19700101|F|||1 TEST STREET^^LUTON^^LU1 1AA^GBR||01582000000\r\
         PV1|1|I|WARD1^BED2^^RDU01||||C1234567^CONSULTANT^TEST|||MED||||19|||||V{control_id}|||||||||||||||||||||||||20260101115500\r"
    )
    .into_bytes()
}

/// (MSA-1, MSA-2) of an ACK, read with the field separator from its MSH.
fn msa(ack: &[u8]) -> Option<(String, String)> {
    let text = String::from_utf8_lossy(ack);
    let sep = text.strip_prefix("MSH")?.chars().next()?;
    let seg = text.split(['\r', '\n']).find(|s| s.starts_with("MSA"))?;
    let fields: Vec<&str> = seg.split(sep).collect();
    Some((fields.get(1)?.to_string(), fields.get(2)?.to_string()))
}

/// What one connection saw in one round.
#[derive(Default)]
struct ConnOutcome {
    /// Control ids written to the socket (acknowledged or not).
    sent: Vec<String>,
    /// Control id → ACK bytes, for every AA.
    acked: Vec<(String, Bytes)>,
    /// ACKs that were not AA or had the wrong MSA-2 (must stay empty).
    wrong: Vec<String>,
}

/// Sends messages back to back until `stop` is set or the connection breaks.
async fn drive_connection(
    addr: std::net::SocketAddr,
    round: usize,
    conn: usize,
    acks: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> ConnOutcome {
    let mut out = ConnOutcome::default();
    let Ok(stream) = TcpStream::connect(addr).await else {
        return out;
    };
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, MllpCodec::new(1024 * 1024));
    for seq in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let control_id = format!("DUR{round}C{conn}N{seq:06}");
        out.sent.push(control_id.clone());
        if framed.send(message(&control_id)).await.is_err() {
            break;
        }
        let reply = match tokio::time::timeout(ACK_TIMEOUT, framed.next()).await {
            Ok(Some(Ok(reply))) => reply,
            // Closed, reset by the kill, framing error or timeout: this connection is done.
            _ => break,
        };
        match msa(&reply) {
            Some((code, id)) if code == "AA" && id == control_id => {
                out.acked.push((control_id, reply));
                acks.fetch_add(1, Ordering::Relaxed);
            }
            other => out.wrong.push(format!("{control_id}: {other:?}")),
        }
    }
    out
}

/// Resends each message and returns the ACK bytes, one connection, in order.
async fn resend(addr: std::net::SocketAddr, ids: &[String]) -> Vec<(String, Bytes)> {
    let stream = TcpStream::connect(addr).await.expect("connect for resend");
    let mut framed = Framed::new(stream, MllpCodec::new(1024 * 1024));
    let mut out = Vec::new();
    for id in ids {
        framed.send(message(id)).await.expect("resend");
        let reply = tokio::time::timeout(ACK_TIMEOUT, framed.next())
            .await
            .unwrap_or_else(|_| panic!("no ACK within {ACK_TIMEOUT:?} for resent {id}"))
            .unwrap_or_else(|| panic!("connection closed before the ACK for resent {id}"))
            .unwrap_or_else(|e| panic!("framing error on the ACK for resent {id}: {e}"));
        out.push((id.clone(), reply));
    }
    out
}

/// Resends a spread of acknowledged messages and asserts byte-identical ACKs.
fn check_resends(rt: &tokio::runtime::Runtime, engine: &Engine, acked: &BTreeMap<String, Bytes>) {
    let step = (acked.len() / RESENDS).max(1);
    let ids: Vec<String> = acked.keys().step_by(step).take(RESENDS).cloned().collect();
    for (id, reply) in rt.block_on(resend(engine.mllp, &ids)) {
        assert_eq!(
            reply,
            acked[&id],
            "resent {id} after restart: the ACK differs from the first one\nfirst: {:?}\nagain: {:?}",
            String::from_utf8_lossy(&acked[&id]),
            String::from_utf8_lossy(&reply)
        );
    }
}

#[test]
fn every_acknowledged_message_survives_sigkill_exactly_once() {
    survives_sigkill("full");
}

/// `sync = "normal"` skips the fsync per commit: a power loss may lose the last
/// commits, but a crash of the engine alone (SIGKILL) must lose nothing.
#[test]
fn sync_normal_also_survives_sigkill_of_the_engine() {
    survives_sigkill("normal");
}

fn survives_sigkill(sync: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut acked: BTreeMap<String, Bytes> = BTreeMap::new();
    let mut sent: HashSet<String> = HashSet::new();

    for round in 0..ROUNDS {
        let mut engine = Engine::start(dir.path(), sync);
        if !acked.is_empty() {
            check_resends(&rt, &engine, &acked);
        }

        let acks = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let target = ACKS_BEFORE_KILL + fastrand::usize(0..1500);
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|conn| {
                rt.spawn(drive_connection(
                    engine.mllp,
                    round,
                    conn,
                    acks.clone(),
                    stop.clone(),
                ))
            })
            .collect();

        // Wait for the ACK target, then SIGKILL while every connection is mid-stream.
        let started = Instant::now();
        while acks.load(Ordering::Relaxed) < target && started.elapsed() < ROUND_DEADLINE {
            if !engine.is_running() {
                panic!(
                    "engine exited by itself in round {round}\n--- engine log ---\n{}",
                    engine.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let reached = acks.load(Ordering::Relaxed);
        engine.kill();
        stop.store(true, Ordering::Relaxed);
        assert!(
            reached >= target,
            "round {round}: only {reached} of {target} ACKs within {ROUND_DEADLINE:?}\n--- engine log ---\n{}",
            engine.log_text()
        );

        let outcomes: Vec<ConnOutcome> = rt.block_on(async {
            let mut outcomes = Vec::new();
            for task in tasks {
                outcomes.push(task.await.expect("connection task"));
            }
            outcomes
        });
        for (conn, outcome) in outcomes.into_iter().enumerate() {
            assert!(
                outcome.wrong.is_empty(),
                "round {round} connection {conn}: unexpected ACKs {:?}",
                outcome.wrong
            );
            assert!(
                !outcome.acked.is_empty(),
                "round {round}: connection {conn} got no ACK before the kill"
            );
            sent.extend(outcome.sent);
            acked.extend(outcome.acked);
        }
        eprintln!(
            "sync = {sync}, round {round}: SIGKILL after {reached} ACKs ({:.1?}); {} acknowledged so far",
            started.elapsed(),
            acked.len()
        );
    }

    // Restart once more: resent messages get their original ACK, and the API agrees.
    let mut engine = Engine::start(dir.path(), sync);
    check_resends(&rt, &engine, &acked);
    for id in acked.keys().step_by((acked.len() / 10).max(1)) {
        let rows = engine.messages_with_control_id(id);
        assert_eq!(rows.len(), 1, "GET /api/messages?control_id={id}: {rows:?}");
        assert_eq!(rows[0]["status"], "accepted", "{id}: {:?}", rows[0]);
        assert_eq!(rows[0]["ack_code"], "AA", "{id}: {:?}", rows[0]);
    }
    let journal = engine.journal_path();
    engine.kill();

    // The journal itself: every acknowledged control id exactly once.
    let db = rusqlite::Connection::open_with_flags(
        &journal,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE, // a WAL reader may need to recover the -shm
    )
    .unwrap_or_else(|e| panic!("open the journal {}: {e}", journal.display()));
    let mut stmt = db
        .prepare("SELECT control_id, COUNT(*) FROM messages WHERE control_id LIKE 'DUR%' GROUP BY control_id")
        .expect("query the messages table");
    let counts: HashMap<String, i64> = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("query rows")
        .collect::<Result<_, _>>()
        .expect("read rows");

    let missing: Vec<&String> = acked
        .keys()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged message(s) missing from the journal after SIGKILL, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let doubled: Vec<(&String, &i64)> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        doubled.is_empty(),
        "control ids journaled more than once: {:?}",
        &doubled[..doubled.len().min(10)]
    );
    let unknown: Vec<&String> = counts.keys().filter(|id| !sent.contains(*id)).collect();
    assert!(unknown.is_empty(), "journal rows never sent: {unknown:?}");
    eprintln!(
        "sync = {sync}: {} acknowledged, {} sent, {} journaled; every acknowledged one exactly once",
        acked.len(),
        sent.len(),
        counts.len()
    );
}
