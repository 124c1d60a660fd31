//! SQLite connections as Junction opens them, for the journal and the record
//! store alike: WAL journal mode, the configured sync policy, a busy timeout,
//! and a versioned schema (`PRAGMA user_version`).
//!
//! It knows no schema and no error type of its callers: each caller passes its
//! schema and turns an [`OpenProblem`] into its own error.
//!
//! # Invariants
//! - A writer connection is in WAL mode or is refused ([`OpenProblem::NotWal`]).
//! - `synchronous = FULL` under [`SyncPolicy::Full`]: in WAL mode the WAL is
//!   fsynced at every commit, before the commit returns. `NORMAL` does not
//!   fsync on commit (only around checkpoints): a crash of the process loses
//!   nothing, a power loss may lose the last commits.
//! - A file with a newer schema than this build knows is refused, never touched.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::journal::SyncPolicy;

/// How long a connection waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a database could not be opened; callers map it to their own error.
#[derive(Debug)]
pub(crate) enum OpenProblem {
    Sqlite(rusqlite::Error),
    /// The file is in another journal mode and could not be switched to WAL.
    NotWal(String),
    /// The file's schema version is newer than this build supports.
    SchemaTooNew {
        found: i64,
        supported: i64,
    },
}

impl From<rusqlite::Error> for OpenProblem {
    fn from(err: rusqlite::Error) -> Self {
        OpenProblem::Sqlite(err)
    }
}

/// Opens the write connection: WAL, the sync policy, and the schema at
/// `version` (created by `schema_v1` on an empty file).
pub(crate) fn open_writer(
    path: &Path,
    sync: SyncPolicy,
    version: i64,
    schema_v1: &str,
) -> Result<Connection, OpenProblem> {
    let conn = open_wal(path, sync)?;
    migrate(&conn, version, &[schema_v1])?;
    Ok(conn)
}

/// Like [`open_writer`] for a schema with several versions: `migrations[0]`
/// creates version 1 on an empty file, `migrations[n]` upgrades version `n`
/// to `n + 1`. Each step runs in its own transaction and sets
/// `user_version`, so a crash between steps resumes at the next open.
pub(crate) fn open_writer_migrating(
    path: &Path,
    sync: SyncPolicy,
    migrations: &[&str],
) -> Result<Connection, OpenProblem> {
    let conn = open_wal(path, sync)?;
    // The number of migrations is a small constant of the caller.
    migrate(&conn, migrations.len() as i64, migrations)?;
    Ok(conn)
}

fn open_wal(path: &Path, sync: SyncPolicy) -> Result<Connection, OpenProblem> {
    create_private(path);
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenProblem::NotWal(mode));
    }
    let synchronous = match sync {
        SyncPolicy::Full => "FULL",
        SyncPolicy::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    Ok(conn)
}

/// Creates the database file readable by its owner only (0600) when it does
/// not exist yet: it holds patient data, and SQLite gives its `-wal` and
/// `-shm` files the main file's permissions. An existing file keeps the
/// permissions its operator gave it; a failure here is left to SQLite's open
/// to report.
fn create_private(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
}

/// Opens a read-only connection.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, rusqlite::Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Creates or upgrades the schema to `supported` by running the steps of
/// `migrations` the file has not had yet, refusing files newer than this build.
fn migrate(conn: &Connection, supported: i64, migrations: &[&str]) -> Result<(), OpenProblem> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > supported {
        return Err(OpenProblem::SchemaTooNew { found, supported });
    }
    for (step, sql) in migrations.iter().enumerate() {
        let to = step as i64 + 1;
        if found < to && to <= supported {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {sql} PRAGMA user_version = {to}; COMMIT;"
            ))?;
        }
    }
    // a new file is no upgrade; an older one is said once
    if found > 0 && found < supported {
        tracing::info!(
            file = %conn.path().unwrap_or_default(),
            from = found,
            to = supported,
            "database schema upgraded"
        );
    }
    Ok(())
}

/// Most idle read connections a [`ReaderPool`] keeps.
const IDLE_READERS: usize = 4;

/// A few read-only connections to one database file, reused across reads.
/// WAL mode lets them read while the writer writes.
pub(crate) struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    /// A pool holding `first` (opened by the caller, so that a broken file shows
    /// up at start rather than at the first read).
    pub(crate) fn new(path: PathBuf, first: Connection) -> Self {
        ReaderPool {
            path,
            idle: Mutex::new(vec![first]),
        }
    }

    /// Runs `f` on an idle connection, or on one made by `open` when none is
    /// idle, then keeps the connection for the next read. Blocks: async callers
    /// run it on a blocking thread.
    pub(crate) fn with<T, E>(
        &self,
        open: impl FnOnce(&Path) -> Result<Connection, E>,
        f: impl FnOnce(&Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        let pooled = self.lock().pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open(&self.path)?,
        };
        let result = f(&conn);
        let mut idle = self.lock();
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        // A panic while holding the lock cannot leave the Vec inconsistent.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
