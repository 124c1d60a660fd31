//! MESH destination: sends documents from one of our mailboxes
//! (`[mesh.mailboxes.<mailbox>]`) to a neighbour's mailbox (`to`).
//!
//! Each document goes with `mex-WorkflowID` = `workflow_id`, `mex-Subject` =
//! `subject` (when set), `mex-LocalID` = [`DeliveryItem::local_id`],
//! `mex-FileName` = `<local_id>.json` and `mex-Content-Type` =
//! `application/fhir+json`; gzip, chunking and the checksum are the
//! [`MeshClient`]'s. With `payload = "original"` the message goes as it was
//! received instead (HL7 v2 to a neighbour that wants HL7): `<local_id>.hl7`,
//! `x-application/hl7-v2+er7`.
//!
//! The client is built lazily, on the first delivery, so a missing password or
//! key does not stop the engine: it is a retryable error naming the
//! environment variable or file, and the next delivery tries again. After
//! MESH refuses the credentials (403) the client is dropped and rebuilt on the
//! next delivery, so a corrected password file is picked up without a restart.
//!
//! The first delivery with a new client, and then one a day, begins with a
//! handshake (MESH asks clients to validate their mailbox at least daily).
//!
//! One attempt is bounded by the destination's `timeout_secs` per chunk (so a
//! large document on a slow link can finish); each HTTP request also by the
//! mailbox's own `timeout_secs`. An attempt cut
//! short leaves at most an `uploading` message, which the next attempt finds
//! by tracking and completes.
//!
//! It does not poll inboxes (the MESH inbox source does), read tracking
//! reports, or check objections (the queue does, for `external = true`).
//!
//! # Invariants
//! - Never blindly re-POST: on every attempt after the first
//!   (`item.attempt > 1`, or any attempt of a row retried by hand, whose count
//!   started again) tracking by local id is asked first, and a message
//!   MESH already has counts as delivered (its remaining chunks are sent if it
//!   was left uploading).
//! - Credentials problems (missing secret, 403) and transient failures are
//!   retryable; MESH refusing the message itself (417 and other 4xx) is
//!   permanent.
//! - `mex-LocalID` and `mex-Subject` carry no patient data; document content
//!   and secrets are never logged.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{Deliver, Delivered, DeliveryError, DeliveryItem, Payload};
use crate::mesh::{MeshClient, MeshError, MeshMailboxConfig, SendRequest};

/// MESH asks clients to validate their mailbox (handshake) at least daily.
const HANDSHAKE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Sends documents to one MESH mailbox.
#[derive(Debug)]
pub struct MeshDestination {
    id: String,
    /// The `[mesh.mailboxes.<id>]` id, for messages.
    mailbox_id: String,
    mailbox: MeshMailboxConfig,
    to: String,
    workflow_id: String,
    subject: Option<String>,
    timeout: Duration,
    payload: Payload,
    client: Mutex<Option<Arc<MeshClient>>>,
    /// When the current client last completed a handshake.
    handshake_at: Mutex<Option<Instant>>,
}

impl MeshDestination {
    pub fn new(
        id: &str,
        mailbox_id: &str,
        mailbox: MeshMailboxConfig,
        to: &str,
        workflow_id: &str,
        subject: Option<String>,
        timeout: Duration,
    ) -> Self {
        MeshDestination {
            id: id.to_string(),
            mailbox_id: mailbox_id.to_string(),
            mailbox,
            to: to.to_string(),
            workflow_id: workflow_id.to_string(),
            subject,
            timeout,
            payload: Payload::Document,
            client: Mutex::new(None),
            handshake_at: Mutex::new(None),
        }
    }

    /// What it sends: the document (default) or the original message.
    pub fn with_payload(mut self, payload: Payload) -> Self {
        self.payload = payload;
        self
    }

    /// The client, built on first use from the mailbox configuration.
    fn client(&self) -> Result<Arc<MeshClient>, DeliveryError> {
        // A poisoned lock holds at worst a stale client; rebuilding is safe.
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let client = MeshClient::new(&self.mailbox).map(Arc::new).map_err(|e| {
            DeliveryError::retry(format!(
                "destination `{}`: cannot use mailbox `{}`: {e}",
                self.id, self.mailbox_id
            ))
        })?;
        *slot = Some(client.clone());
        Ok(client)
    }

    fn forget_client(&self) {
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *self.handshake_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Handshakes when the client has not done so in the last day. Any failure
    /// is retryable: it says nothing about the document.
    async fn handshake_if_due(&self, client: &MeshClient) -> Result<(), DeliveryError> {
        let due = self
            .handshake_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|at| at.elapsed() >= HANDSHAKE_EVERY);
        if !due {
            return Ok(());
        }
        match tokio::time::timeout(self.timeout, client.handshake()).await {
            Ok(Ok(())) => {
                *self.handshake_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                Ok(())
            }
            Ok(Err(e)) => {
                let mut error = self.error(e);
                error.retryable = true;
                Err(error)
            }
            Err(_) => Err(DeliveryError::retry(format!(
                "destination `{}`: the mesh handshake did not finish within {} s",
                self.id,
                self.timeout.as_secs()
            ))),
        }
    }

    async fn send(&self, item: &DeliveryItem) -> Result<Delivered, DeliveryError> {
        let client = self.client()?;
        self.handshake_if_due(&client).await?;
        let local_id = item.local_id();
        let request = SendRequest {
            to: self.to.clone(),
            workflow_id: self.workflow_id.clone(),
            file_name: Some(format!("{local_id}.{}", self.payload.extension())),
            local_id,
            subject: self.subject.clone(),
            content_type: Some(self.payload.content_type().to_string()),
            body: self.payload.bytes(item).clone(),
            earlier_attempt: item.attempt > 1 || item.retried,
        };
        let limit = self.attempt_timeout(item, self.timeout);
        match tokio::time::timeout(limit, client.send(&request)).await {
            Ok(Ok(message_id)) => Ok(Delivered {
                remote_ref: Some(message_id.to_string()),
            }),
            Ok(Err(e)) => Err(self.error(e)),
            Err(_) => Err(DeliveryError::retry(format!(
                "destination `{}`: the mesh send of {} bytes did not finish within {} s \
                 (timeout_secs; raise it for large documents); the next attempt asks \
                 tracking before posting again",
                self.id,
                self.payload.bytes(item).len(),
                limit.as_secs()
            ))),
        }
    }

    fn error(&self, e: MeshError) -> DeliveryError {
        let message = format!("destination `{}`: {e}", self.id);
        if e.is_auth() {
            // Re-read the secrets next time: they may have been corrected.
            self.forget_client();
            DeliveryError::retry(message)
        } else if e.is_retryable() {
            DeliveryError::retry(message)
        } else {
            DeliveryError::permanent(message)
        }
    }
}

impl Deliver for MeshDestination {
    fn deliver<'a>(
        &'a self,
        item: &'a DeliveryItem,
    ) -> BoxFuture<'a, Result<Delivered, DeliveryError>> {
        self.send(item).boxed()
    }

    /// `timeout_secs` per chunk: a document of 31 chunks on a slow link
    /// timed out at the same chunk on every attempt and never finished.
    fn attempt_timeout(&self, item: &DeliveryItem, configured: Duration) -> Duration {
        let size = self.payload.bytes(item).len() as u64;
        let chunks = size.div_ceil(self.mailbox.chunk_size_bytes.max(1)).max(1);
        configured.saturating_mul(u32::try_from(chunks).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// An attempt may take `timeout_secs` per chunk the document is sent in.
    #[test]
    fn an_attempt_has_the_timeout_once_per_chunk() {
        let mut mailbox = MeshMailboxConfig::new("https://mesh.example", "X26ABC1");
        mailbox.chunk_size_bytes = 1_000;
        let dest = MeshDestination::new(
            "hwe",
            "junction",
            mailbox,
            "X26ABC2",
            "TEST_WORKFLOW",
            None,
            Duration::from_secs(30),
        );
        let item = |size: usize| DeliveryItem {
            id: 1,
            message_id: 1,
            destination: "hwe".to_string(),
            patient_key: "p".to_string(),
            control_id: "c".to_string(),
            message_type: "ADT^A01".to_string(),
            document: Bytes::from(vec![b'x'; size]),
            raw: Bytes::new(),
            attempt: 1,
            retried: false,
            queued_at_ms: 0,
        };
        let configured = Duration::from_secs(30);
        assert_eq!(dest.attempt_timeout(&item(10), configured), configured);
        assert_eq!(dest.attempt_timeout(&item(0), configured), configured);
        assert_eq!(
            dest.attempt_timeout(&item(3_500), configured),
            configured * 4
        );
    }
}
