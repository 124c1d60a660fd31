//! The journal: durable intake of every message received (not yet written).
//!
//! # Invariants
//! - A message is committed (and fsynced per `[store] sync`) before the call
//!   that journals it returns; the listener writes the ACK only after that.
//! - Raw bytes are stored exactly as received.
//! - (sender, control id) is unique among accepted messages: a resend gets the
//!   stored ACK back and is not stored twice.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[store]`: where the journal lives and how hard it syncs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite database file (relative paths are relative to the config file's folder).
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// `full`: fsync on every group commit (default). `normal`: WAL without
    /// fsync on commit; a power loss (not a process crash) may lose the last commits.
    #[serde(default)]
    pub sync: SyncPolicy,
}

fn default_path() -> PathBuf {
    PathBuf::from("data/junction.db")
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_path(),
            sync: SyncPolicy::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    #[default]
    Full,
    Normal,
}

/// A search of the journal (`GET /api/messages`). Empty fields match all.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MessageQuery {
    pub control_id: Option<String>,
    pub sender: Option<String>,
    /// `ADT^A01`, or just `ADT`.
    #[serde(rename = "type")]
    pub message_type: Option<String>,
    pub status: Option<String>,
    pub limit: Option<u32>,
}

/// One row of a journal search.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MessageSummary {
    pub id: i64,
    pub listener: String,
    /// `MSH-3^MSH-4` as received (empty if there was no usable MSH).
    pub sender: String,
    pub control_id: String,
    #[serde(rename = "type")]
    pub message_type: String,
    /// RFC 3339, UTC.
    pub received_at: String,
    pub ack_code: String,
    /// `accepted`, `rejected` (AR/AE: kept for inspection), `garbage` (framing error).
    pub status: String,
}

/// One message with its raw content.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MessageDetail {
    #[serde(flatten)]
    pub summary: MessageSummary,
    pub peer: String,
    pub size_bytes: usize,
    /// The raw bytes, as UTF-8 where they are (lossy otherwise).
    pub raw: String,
    /// The ACK that was sent back, if any.
    pub ack: Option<String>,
    pub error: Option<String>,
}
