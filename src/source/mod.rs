//! Sources: documents that arrive other than over MLLP (`[sources.<id>]`).
//!
//! Today there is one kind, the MESH inbox ([`mesh_inbox`]): it polls a MESH
//! mailbox, journals each document it downloads under the source's id (as a
//! listener journals an HL7 message under its own), and only then
//! acknowledges it in MESH. From the journal on, a document from a source
//! takes the same path as any message: the delivery pipeline routes it
//! (passthrough routes, `routes/mesh.toml`) and queues it for destinations.
//!
//! What it does not do: route, map or deliver; parse config files (`config/`
//! does); decide what a journal row means downstream.
//!
//! # Invariants
//! - A document is acknowledged to its sender (MESH) only after it is
//!   committed to the journal, as an MLLP ACK is written only after the commit.
//! - A crash between commit and acknowledgement re-downloads the document on
//!   the next poll; the journal's (sender, control id) uniqueness makes that a
//!   no-op, and the document is acknowledged then.
//! - A source never panics on what it receives and never logs document
//!   content: ids, types, sizes and outcomes only.

pub mod mesh_inbox;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::error;

use crate::delivery::{SourceConfig, SourceKind};
use crate::journal::Journal;
use crate::mesh::MeshMailboxConfig;
use crate::telemetry::events::EventBus;
use crate::telemetry::metrics::Metrics;

pub use mesh_inbox::{MeshInbox, MeshInboxError, PollSummary};

/// What every source is given: the journal it writes, the record store whose
/// lease a MESH inbox polls under, the event stream and the metrics.
pub struct Shared<'a> {
    pub journal: &'a Journal,
    pub records: &'a crate::store::RecordStore,
    pub events: &'a EventBus,
    pub metrics: &'a Arc<Metrics>,
}

/// Starts every `[sources.<id>]` (`sources`, with the `[mesh.mailboxes]` they
/// name) as a task on `tracker`; each stops (between two documents) once
/// `stop` is cancelled. Returns how many were started. A source whose mailbox
/// is missing (which `config/` already refuses) is logged and skipped. A
/// MESH inbox polls under `records`' lease on its mailbox, so of the nodes
/// sharing a PostgreSQL store one polls it at a time.
pub fn spawn_all(
    sources: &BTreeMap<String, SourceConfig>,
    mailboxes: &BTreeMap<String, MeshMailboxConfig>,
    shared: &Shared<'_>,
    stop: &CancellationToken,
    tracker: &TaskTracker,
) -> usize {
    let &Shared {
        journal,
        records,
        events,
        metrics,
    } = shared;
    let mut started = 0;
    for (id, source) in sources {
        match source.kind {
            SourceKind::MeshInbox => {
                let Some(mailbox) = mailboxes.get(&source.mailbox) else {
                    error!(source = %id, mailbox = %source.mailbox,
                        "source names an unknown [mesh.mailboxes.<id>]; not started");
                    continue;
                };
                let inbox = MeshInbox::new(
                    id,
                    source,
                    mailbox.clone(),
                    journal.clone(),
                    events.clone(),
                    Arc::clone(metrics),
                )
                .with_lease(records.clone());
                tracker.spawn(inbox.run(stop.clone()));
                started += 1;
            }
        }
    }
    started
}
