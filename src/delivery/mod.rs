//! Delivery: the per-destination durable queue and the destinations documents
//! go to (DESIGN.md §2 step 5).
//!
//! This file is the contract between the parts:
//! - [`DestinationConfig`] / [`SourceConfig`]: the `[destinations.<id>]` and
//!   `[sources.<id>]` tables (`config/` assembles and checks them).
//! - [`Deliver`]: what a destination does with one queued item. Destination
//!   kinds (store, mesh, fhir, mllp, file) implement it, one file each
//!   ([`file`], [`store`], ...); [`build::build`] makes one from its table.
//! - [`DeliveryItem`], [`Delivered`], [`DeliveryError`]: what the queue hands
//!   a destination and what it gets back.
//! - [`Objections`]: the register the queue asks before anything goes to an
//!   `external = true` destination.
//!
//! It does not decide *when* to deliver (the queue's scheduler does) nor
//! *where* (routes do).
//!
//! The queue around the contract: [`pipeline`] turns journaled messages into
//! routing outcomes and queued documents, [`scheduler`] runs one destination
//! (heads of line, retries, dead letters, objections), [`queue`] starts and
//! stops them and offers the operations (depths, retry, replay). The rows
//! live in the journal (`journal/queue.rs`).

pub mod background;
pub mod build;
pub mod fhir;
pub mod file;
pub mod mesh;
pub mod mllp;
pub mod pipeline;
pub mod queue;
pub mod scheduler;
pub mod store;
#[cfg(test)]
mod testing;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::Deserialize;

/// What kind of destination a `[destinations.<id>]` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationKind {
    /// The local record store (`[store] records`).
    Store,
    /// A MESH mailbox of a neighbour, sent from one of `[mesh.mailboxes]`.
    Mesh,
    /// A FHIR server: the transaction Bundle is POSTed to its base URL.
    Fhir,
    /// The original HL7 message forwarded over MLLP, waiting for its ACK.
    Mllp,
    /// Documents written atomically into a folder.
    File,
}

word_enum!(DestinationKind { "store" => DestinationKind::Store, "mesh" => DestinationKind::Mesh, "fhir" => DestinationKind::Fhir, "mllp" => DestinationKind::Mllp, "file" => DestinationKind::File });

impl DestinationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Store => "store",
            DestinationKind::Mesh => "mesh",
            DestinationKind::Fhir => "fhir",
            DestinationKind::Mllp => "mllp",
            DestinationKind::File => "file",
        }
    }
}

/// `[destinations.<id>]`. One flat table (no internally tagged enum: it would
/// lose the location of typos); which keys a kind needs is checked by `config/`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    pub kind: DestinationKind,
    /// Leaves the organisation: patients who object to sharing are withheld.
    /// Unset: a MESH destination is external (it sends to another
    /// organisation's mailbox), any other kind is not. See [`Self::is_external`].
    #[serde(default)]
    pub external: Option<bool>,

    // --- mesh ---
    /// `[mesh.mailboxes.<id>]` we send from.
    #[serde(default)]
    pub mailbox: Option<String>,
    /// The recipient mailbox id (`mex-To`).
    #[serde(default)]
    pub to: Option<String>,
    /// `mex-WorkflowID`.
    #[serde(default)]
    pub workflow_id: Option<String>,
    /// `mex-Subject` (never patient data).
    #[serde(default)]
    pub subject: Option<String>,

    // --- fhir ---
    /// Base URL the Bundle is POSTed to.
    #[serde(default)]
    pub url: Option<String>,
    /// Environment variable holding a bearer token for the FHIR server.
    #[serde(default)]
    pub token_env: Option<String>,
    /// File holding a bearer token for the FHIR server.
    #[serde(default)]
    pub token_file: Option<PathBuf>,

    // --- mllp ---
    /// `host:port` of the downstream MLLP listener.
    #[serde(default)]
    pub address: Option<String>,
    /// MLLP inside TLS: the PEM CA file the listener's certificate must chain to.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for a listener that asks for one (with `tls_key_file`).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// The name the listener's certificate must carry (default: the host of `address`).
    #[serde(default)]
    pub tls_server_name: Option<String>,

    // --- file ---
    /// Folder the documents are written into.
    #[serde(default)]
    pub dir: Option<PathBuf>,

    // --- mesh and file ---
    /// What is sent: the mapped document (default) or the message as it was
    /// received (`original`: HL7 v2 to a neighbour that wants HL7).
    #[serde(default)]
    pub payload: Payload,

    // --- every kind ---
    /// Timeout of one delivery attempt, in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Attempts before an item is dead-lettered. Unset (the default): no limit
    /// but `max_age_secs`, so a destination down for hours or days (a MESH
    /// outage, a password being changed) dead-letters nothing and its queue
    /// drains in order when it returns; an error about the document itself (a
    /// 4xx) dead-letters it at once whatever this says.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Age (since it was queued) after which a failing item is dead-lettered.
    #[serde(default = "default_max_age_secs")]
    pub max_age_secs: u64,
    /// First retry delay; doubled per attempt, with jitter, up to `backoff_max_ms`.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Items delivered at once (each for a different patient).
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
}

/// What a mesh or file destination sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Payload {
    /// The document the route's mapping made (a FHIR Bundle), `.json`.
    #[default]
    Document,
    /// The message as it was journaled (HL7 v2, byte for byte), `.hl7`.
    Original,
}

word_enum!(Payload { "document" => Payload::Document, "original" => Payload::Original });

impl Payload {
    /// The bytes of `item` to send.
    pub fn bytes(self, item: &DeliveryItem) -> &Bytes {
        match self {
            Payload::Document => &item.document,
            Payload::Original => &item.raw,
        }
    }

    /// The file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Payload::Document => "json",
            Payload::Original => "hl7",
        }
    }

    /// The media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Payload::Document => "application/fhir+json",
            Payload::Original => "x-application/hl7-v2+er7",
        }
    }
}

fn default_timeout_secs() -> u64 {
    30
}
fn default_max_age_secs() -> u64 {
    7 * 24 * 3600
}
fn default_backoff_initial_ms() -> u64 {
    1_000
}
fn default_backoff_max_ms() -> u64 {
    300_000
}
fn default_concurrency() -> u32 {
    4
}

impl DestinationConfig {
    /// Whether documents sent here leave the organisation (objections are
    /// honoured): as configured, else true for MESH, which always sends to
    /// another organisation's mailbox (a forgotten `external = true` on the next
    /// neighbour added must not send objecting patients across the border).
    pub fn is_external(&self) -> bool {
        self.external.unwrap_or(self.kind == DestinationKind::Mesh)
    }

    /// A config of `kind` with every optional key unset and default limits.
    pub fn new(kind: DestinationKind) -> Self {
        DestinationConfig {
            kind,
            external: None,
            mailbox: None,
            to: None,
            workflow_id: None,
            subject: None,
            url: None,
            token_env: None,
            token_file: None,
            address: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_server_name: None,
            dir: None,
            payload: Payload::Document,
            timeout_secs: default_timeout_secs(),
            max_attempts: None,
            max_age_secs: default_max_age_secs(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            concurrency: default_concurrency(),
        }
    }
}

/// What kind of source a `[sources.<id>]` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Polls a MESH mailbox's inbox; received documents go through routes.
    MeshInbox,
}

word_enum!(SourceKind { "mesh_inbox" => SourceKind::MeshInbox });

/// `[sources.<id>]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// `[mesh.mailboxes.<id>]` whose inbox is polled.
    pub mailbox: String,
    /// Seconds between inbox polls.
    #[serde(default = "default_poll_interval_secs")]
    pub poll_interval_secs: u64,
    /// The largest message taken, in bytes once decompressed (a gzip of a few
    /// hundred KB can hold gigabytes): a larger one is not read further, kept
    /// as rejected with what arrived of it, and acknowledged.
    #[serde(default = "default_source_max_message_bytes")]
    pub max_message_bytes: usize,
    /// The mailboxes whose messages are taken (`mex-From`); empty: any. A
    /// message from another is kept as rejected and acknowledged, whatever it
    /// holds (HL7 over MESH names its own sender in MSH-3, which no route
    /// can check against the mailbox).
    #[serde(default)]
    pub senders: Vec<String>,
    /// The workflow ids taken (`mex-WorkflowID`); empty: any. Others alike.
    #[serde(default)]
    pub workflows: Vec<String>,
}

fn default_poll_interval_secs() -> u64 {
    60
}

impl SourceConfig {
    /// 32 MiB: far beyond a care-record Bundle, room for scanned documents in one.
    pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
}

fn default_source_max_message_bytes() -> usize {
    SourceConfig::DEFAULT_MAX_MESSAGE_BYTES
}

/// One queued (document, destination) pair handed to a destination.
#[derive(Debug, Clone)]
pub struct DeliveryItem {
    /// Queue row id; unique and stable across restarts.
    pub id: i64,
    /// Journal row of the message the document came from.
    pub message_id: i64,
    /// `[destinations.<id>]`.
    pub destination: String,
    /// What orders deliveries (the Patient resource id, or a per-message key).
    pub patient_key: String,
    /// MSH-10 (or the MESH message id for documents from a MESH inbox).
    pub control_id: String,
    /// `ADT^A01`, `ORU^R01`, ... (empty for documents without an HL7 header).
    pub message_type: String,
    /// The document: the FHIR transaction Bundle as JSON bytes.
    pub document: Bytes,
    /// The original message bytes as journaled (what an MLLP forward sends).
    pub raw: Bytes,
    /// 1 for the first attempt (again after a retry by hand).
    pub attempt: u32,
    /// The row was retried by hand (`junction retry`): its attempt count
    /// started again, but an attempt before may have reached the destination.
    pub retried: bool,
    /// When the row was queued (Unix milliseconds); never changes.
    pub queued_at_ms: i64,
}

impl DeliveryItem {
    /// A local id for MESH (`mex-LocalID`) and file names: stable per queue
    /// row, no patient data. It carries the queue time as well as the row id:
    /// row ids start again in a new journal, and MESH's tracking by local id
    /// must never mistake an old message for this one (it would count a
    /// document as delivered that never left).
    pub fn local_id(&self) -> String {
        format!("junction-{}-{}", self.id, self.queued_at_ms)
    }
}

/// A successful delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivered {
    /// What the destination called it (a MESH message id, a file name, a
    /// FHIR response location), for the message's trail.
    pub remote_ref: Option<String>,
}

/// A failed delivery attempt. `message` is for ops: no patient data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// Retry later (destination down, timeout, 5xx) rather than dead-letter
    /// now (the destination refused this document: 4xx, AR, bad document).
    pub retryable: bool,
    pub message: String,
}

impl DeliveryError {
    pub fn retry(message: impl Into<String>) -> Self {
        DeliveryError {
            retryable: true,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        DeliveryError {
            retryable: false,
            message: message.into(),
        }
    }
}

/// A destination. Implementations must be safe to call again with the same
/// item (delivery is at least once: a crash after delivering and before the
/// queue recorded it repeats the item).
pub trait Deliver: Send + Sync + 'static {
    fn deliver<'a>(
        &'a self,
        item: &'a DeliveryItem,
    ) -> BoxFuture<'a, Result<Delivered, DeliveryError>>;

    /// How long one attempt at `item` may take, given the destination's
    /// `timeout_secs`: that, unless the destination sends the item in several
    /// requests (MESH chunks: `timeout_secs` each, so a large document on a
    /// slow link can finish at all).
    fn attempt_timeout(&self, _item: &DeliveryItem, configured: Duration) -> Duration {
        configured
    }
}

/// The objections register (kept in the record store).
pub trait Objections: Send + Sync + 'static {
    /// Whether the person with this NHS number objects to sharing.
    fn is_objecting(&self, nhs_number: &str) -> Result<bool, String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mesh_destination_is_external_unless_it_says_not() {
        let parse = |text: &str| -> DestinationConfig { toml::from_str(text).expect("config") };
        assert!(parse("kind = \"mesh\"").is_external());
        assert!(!parse("kind = \"mesh\"\nexternal = false").is_external());
        assert!(!parse("kind = \"file\"\ndir = \"x\"").is_external());
        assert!(parse("kind = \"fhir\"\nurl = \"https://x\"\nexternal = true").is_external());
        assert!(!parse("kind = \"store\"").is_external());
    }
}
