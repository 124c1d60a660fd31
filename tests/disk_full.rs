//! The journal's disk fills up under a sender, then has room again: every
//! message acknowledged is kept, no message is acknowledged that was not
//! written, and intake (and routing) resume by themselves once there is room.
//!
//! How the disk is filled: the real `junction serve` runs with a limit on the
//! size of the files it writes (`RLIMIT_FSIZE`, set on the running process with
//! `prlimit`, and `SIGXFSZ` ignored), so the journal's writes fail as they
//! would on a full disk (the kernel answers `EFBIG` instead of `ENOSPC`; SQLite
//! fails the commit either way). This needs no privileges, unlike mounting a
//! small file system, so it runs wherever the tests run. Raising the limit
//! again is the disk getting room. The engine is then killed with SIGKILL and
//! started again on the same folder, and the journal is read back.

mod harness;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::time::Duration;

use harness::{http_get, repo_root, Engine};

/// An A01 of about 10 KB (a Z segment of padding), so the files grow quickly.
fn message(control_id: &str) -> Vec<u8> {
    let sample = std::fs::read_to_string(repo_root().join("samples/adt_a01_admission.hl7"))
        .expect("the A01 sample");
    let mut text = sample
        .trim_end()
        .replace("RAL20261120143512001", control_id);
    text.push_str("\rZPD|1|");
    text.push_str(&"X".repeat(10_000));
    text.push('\r');
    text.into_bytes()
}

/// What a sender saw: the ACK's MSA-1, or `None` when the connection closed
/// (or said nothing) without one.
fn send(addr: SocketAddr, control_id: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .ok()?;
    let mut frame = vec![0x0b];
    frame.extend_from_slice(&message(control_id));
    frame.extend_from_slice(&[0x1c, 0x0d]);
    stream.write_all(&frame).ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !reply.contains(&0x1c) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    let end = reply.iter().position(|&b| b == 0x1c).unwrap_or(reply.len());
    let text = String::from_utf8_lossy(&reply[..end]);
    let msa = text.split('\r').find(|s| s.starts_with("MSA|"))?;
    let code = msa.split('|').nth(1)?.to_string();
    assert_eq!(msa.split('|').nth(2), Some(control_id), "{text}");
    Some(code)
}

/// Sets the soft limit on the size of files `pid` writes (`None`: none).
fn limit_file_size(pid: u32, bytes: Option<u64>) {
    let limit = libc::rlimit {
        rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a plain system call on a process of ours, with a valid struct.
    let done = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(done, 0, "prlimit: {}", std::io::Error::last_os_error());
}

fn file_size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn a_full_disk_loses_nothing_acknowledged_and_intake_resumes_when_there_is_room() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("engine");
    let config = |mllp: SocketAddr, api: SocketAddr| {
        format!(
            "[listeners.pas]\nbind = \"{mllp}\"\n\n[store]\npath = \"data/junction.db\"\n\
             sync = \"full\"\n\n[api]\nbind = \"{api}\"\n"
        )
    };
    let ignore_sigxfsz = |command: &mut std::process::Command| {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
    };
    let mut engine = Engine::start_prepared(&dir, &[], config, ignore_sigxfsz);
    let pid = engine.pid().expect("the engine's pid");
    let data = dir.join("data");

    // A few messages with room, then the disk "fills": no file may grow more
    // than 300 KB past the largest the journal has now.
    let mut acked = BTreeSet::new();
    let mut refused = Vec::new();
    for i in 0..3 {
        let id = format!("FULL{i:04}");
        assert_eq!(send(engine.mllp, &id).as_deref(), Some("AA"), "{id}");
        acked.insert(id);
    }
    let largest = ["junction.db", "junction.db-wal"]
        .iter()
        .map(|f| file_size(&data.join(f)))
        .max()
        .unwrap();
    limit_file_size(pid, Some(largest + 300 * 1024));
    for i in 3..400 {
        let id = format!("FULL{i:04}");
        match send(engine.mllp, &id) {
            Some(code) => {
                assert_eq!(code, "AA", "{id}: only AA, or no answer at all");
                acked.insert(id);
            }
            None => refused.push(id),
        }
        if refused.len() >= 3 {
            break;
        }
    }
    assert!(
        refused.len() >= 3,
        "the journal never failed to grow ({} acknowledged)",
        acked.len()
    );
    eprintln!(
        "disk full after {} acknowledged; {} refused (no ACK)",
        acked.len(),
        refused.len()
    );
    // While it is full the engine says it is not ready, and why, and it keeps
    // saying so: the pipeline's small routing writes (it polls every second)
    // may still fit, and must not make it ready while messages do not.
    let mut refused_at = None;
    for i in 0..20 {
        let id = format!("FULLR{i:02}");
        if let Some(code) = send(engine.mllp, &id) {
            // (a checkpoint may have made room for one more)
            assert_eq!(code, "AA", "{id}");
            acked.insert(id);
            continue;
        }
        refused.push(id);
        refused_at = Some(std::time::Instant::now());
        break;
    }
    assert!(refused_at.is_some(), "no message refused while full");
    for _ in 0..6 {
        let (status, body) = http_get(engine.api, "/ready").unwrap();
        assert_eq!(status, 503, "ready while full: {body}");
        assert!(body.contains("journal is not healthy"), "{body}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Room again: the senders' resends and new messages are taken, with no restart.
    limit_file_size(pid, None);
    for id in refused
        .iter()
        .cloned()
        .chain((0..5).map(|i| format!("MORE{i}")))
    {
        assert_eq!(send(engine.mllp, &id).as_deref(), Some("AA"), "{id}");
        acked.insert(id);
    }
    let (status, body) = http_get(engine.api, "/ready").unwrap();
    assert_eq!(status, 200, "{body}");
    // and the pipeline, whose writes failed too, routed every message (no routes:
    // each is `unrouted`, which is an outcome written to the journal)
    let routed = |engine: &Engine, id: &str| {
        let found = engine.messages_with_control_id(id);
        found.len() == 1 && found[0]["routing"] == "unrouted"
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !acked.iter().all(|id| routed(&engine, id)) {
        assert!(
            std::time::Instant::now() < deadline,
            "not every message was routed after the disk had room"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = engine.log_text();
    assert!(log.contains("journal commit failed"), "{log}");
    assert!(!log.contains("9990000018"), "no patient data in the log");

    // kill -9 and start again: every acknowledged message is there, once
    engine.kill();
    let engine = Engine::start_custom(&dir, &[], config);
    for id in &acked {
        let found = engine.messages_with_control_id(id);
        assert_eq!(found.len(), 1, "{id}: {found:?}");
        assert_eq!(found[0]["status"], "accepted", "{id}");
    }
}
