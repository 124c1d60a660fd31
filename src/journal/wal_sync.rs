//! Pipelined durability for `sync = "full"`: the syncer thread fsyncs the
//! WAL file after the writer has committed, so the writer can build the next
//! transaction while the disk flushes the previous one.
//!
//! SQLite itself runs with `synchronous = NORMAL` (in WAL mode: no fsync on
//! commit; the WAL is synced before every checkpoint, the database after it,
//! and the WAL header when the WAL is reused). The syncer adds the missing
//! per-commit fsync, off the writer's critical path:
//!
//! 1. the writer commits group N (frames are in the WAL file, in the page
//!    cache) and hands the group's waiters to the syncer;
//! 2. the syncer takes every group handed over so far, calls `fdatasync` on
//!    the WAL file once — that flushes every frame written before the call,
//!    so every group it holds — and only then answers their waiters;
//! 3. meanwhile the writer is already writing group N+1.
//!
//! # Invariants
//! - No waiter is answered `Ok` before an `fdatasync` that started after its
//!   group committed has returned successfully.
//! - The WAL file synced is the one SQLite writes: after each sync the inode
//!   of the open handle is compared with the path's; on a mismatch the file is
//!   reopened and synced again (with its directory).
//! - An fsync error is fail-stop: the waiters get an error, the journal is
//!   marked failed and refuses every later commit (after a failed fsync the
//!   kernel may have dropped the dirty pages; retrying could claim durability
//!   that does not exist). A restart is required.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Instant;

use super::{Committed, JournalError, Reply, WriterState};
use crate::telemetry::metrics::Metrics;

/// Groups committed by the writer and waiting for their fsync.
pub(super) struct Pending {
    pub(super) waiters: Vec<(Reply, Vec<Committed>)>,
    /// When the writer started on this group (for the commit latency metric).
    pub(super) started: Instant,
}

/// How many committed groups may wait for the syncer before the writer blocks.
pub(super) const PENDING_DEPTH: usize = 256;

/// The WAL file of the database at `db`.
pub(super) fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// The open WAL file and the inode it had when opened.
struct WalHandle {
    file: File,
    inode: u64,
}

fn open_wal(path: &Path) -> std::io::Result<WalHandle> {
    let file = File::open(path)?;
    let inode = file.metadata()?.ino();
    // Make the WAL file's directory entry durable too (once per open).
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(WalHandle { file, inode })
}

/// Syncs the WAL, making sure it is still the file SQLite writes.
fn sync_wal(handle: &mut Option<WalHandle>, path: &Path) -> std::io::Result<()> {
    for _ in 0..2 {
        let wal = match handle {
            Some(wal) => wal,
            None => handle.insert(open_wal(path)?),
        };
        wal.file.sync_data()?;
        if std::fs::metadata(path)?.ino() == wal.inode {
            return Ok(());
        }
        // The WAL was replaced since we opened it: sync the new one.
        *handle = None;
    }
    Err(std::io::Error::other(format!(
        "the WAL file {} keeps being replaced while syncing",
        path.display()
    )))
}

/// The syncer thread: until the writer goes away.
pub(super) fn syncer_loop(
    rx: std_mpsc::Receiver<Pending>,
    wal: PathBuf,
    state: Arc<WriterState>,
    metrics: Arc<Metrics>,
) {
    let mut handle: Option<WalHandle> = None;
    let mut batch: Vec<Pending> = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        batch.extend(rx.try_iter());
        let result = if state.sync_failed.load(Ordering::Acquire) {
            Err(None)
        } else {
            sync_wal(&mut handle, &wal).map_err(Some)
        };
        match result {
            Ok(()) => {
                for pending in batch.drain(..) {
                    metrics
                        .commit_seconds
                        .observe(pending.started.elapsed().as_secs_f64());
                    for (reply, outcome) in pending.waiters {
                        let _ = reply.send(Ok(outcome));
                    }
                }
            }
            Err(err) => {
                let err = match err {
                    Some(err) => {
                        tracing::error!(
                            wal = %wal.display(),
                            error = %err,
                            "journal fsync failed: refusing all further commits until restart"
                        );
                        state.sync_failed.store(true, Ordering::Release);
                        state.last_commit_ok.store(false, Ordering::Release);
                        Arc::new(err)
                    }
                    None => Arc::new(std::io::Error::other("an earlier journal fsync failed")),
                };
                for pending in batch.drain(..) {
                    for (reply, _) in pending.waiters {
                        let _ = reply.send(Err(JournalError::Sync(Arc::clone(&err))));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use tokio::sync::oneshot;

    use super::*;

    fn state() -> Arc<WriterState> {
        Arc::new(WriterState {
            alive: AtomicBool::new(true),
            last_commit_ok: AtomicBool::new(true),
            sync_failed: AtomicBool::new(false),
        })
    }

    fn pending() -> (
        Pending,
        oneshot::Receiver<Result<Vec<Committed>, JournalError>>,
    ) {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            waiters: vec![(reply, vec![Committed::Stored { id: 7 }])],
            started: Instant::now(),
        };
        (pending, answer)
    }

    #[test]
    fn wal_path_appends_the_suffix() {
        assert_eq!(
            wal_path(Path::new("data/junction.db")),
            PathBuf::from("data/junction.db-wal")
        );
    }

    #[test]
    fn a_replaced_wal_file_is_reopened_and_synced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db-wal");
        std::fs::write(&path, b"one").unwrap();
        let mut handle = None;
        sync_wal(&mut handle, &path).unwrap();
        let first = handle.as_ref().unwrap().inode;
        let replacement = dir.path().join("new");
        std::fs::write(&replacement, b"two").unwrap();
        std::fs::rename(&replacement, &path).unwrap();
        sync_wal(&mut handle, &path).unwrap();
        let second = handle.as_ref().unwrap().inode;
        assert_ne!(first, second);
        assert_eq!(second, std::fs::metadata(&path).unwrap().ino());
    }

    #[test]
    fn waiters_are_answered_after_a_successful_sync() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("j.db-wal");
        std::fs::write(&wal, b"frames").unwrap();
        let (tx, rx) = std_mpsc::sync_channel(PENDING_DEPTH);
        let (p1, a1) = pending();
        let (p2, a2) = pending();
        tx.send(p1).unwrap();
        tx.send(p2).unwrap();
        drop(tx);
        let state = state();
        syncer_loop(rx, wal, Arc::clone(&state), Arc::new(Metrics::new()));
        assert_eq!(
            a1.blocking_recv().unwrap().unwrap(),
            vec![Committed::Stored { id: 7 }]
        );
        assert!(a2.blocking_recv().unwrap().is_ok());
        assert!(!state.sync_failed.load(Ordering::Acquire));
    }

    #[test]
    fn a_failed_sync_is_fail_stop() {
        let dir = tempfile::tempdir().unwrap();
        // No WAL file at all: opening it fails like a broken disk would.
        let wal = dir.path().join("missing.db-wal");
        let (tx, rx) = std_mpsc::sync_channel(PENDING_DEPTH);
        let state = state();
        let thread_state = Arc::clone(&state);
        let syncer = std::thread::spawn(move || {
            syncer_loop(rx, wal, thread_state, Arc::new(Metrics::new()))
        });
        let (p1, a1) = pending();
        tx.send(p1).unwrap();
        assert!(matches!(
            a1.blocking_recv().unwrap(),
            Err(JournalError::Sync(_))
        ));
        assert!(state.sync_failed.load(Ordering::Acquire));
        // Even once the file exists, nothing more is acknowledged.
        std::fs::write(dir.path().join("missing.db-wal"), b"x").unwrap();
        let (p2, a2) = pending();
        tx.send(p2).unwrap();
        assert!(matches!(
            a2.blocking_recv().unwrap(),
            Err(JournalError::Sync(_))
        ));
        drop(tx);
        syncer.join().unwrap();
    }
}
