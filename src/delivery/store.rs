//! Store destination: applies a document to the local record store.
//!
//! The document is parsed as JSON and handed to
//! [`RecordStore::apply_bundle`] on a blocking thread (SQLite blocks). The
//! event time that guards against an older event overwriting newer data is
//! taken from the document itself: the first Provenance entry's
//! `occurredDateTime`, else its `recorded`, else (inside the store) the
//! Bundle's `timestamp`. Documents from a MESH inbox go through this same
//! destination.
//!
//! It does not check objections or routes, and it never logs document
//! content: only counts of what was written.
//!
//! A document is applied whole once begun: the apply cannot be stopped, so a
//! slow one (a Patient with 20,000 identifiers, a report of thousands of
//! results) is waited for, with a warning once it takes longer than the
//! destination's timeout, rather than given up and started again beside the
//! first (each retry another copy of the same work on the background threads).
//! At most as many documents as there are background threads are applied or
//! waiting for a thread at a time ([`APPLY_LANES`]), so a routing job queues
//! behind that many applies at most, not behind every delivery the
//! scheduler has in flight. (Keeping one thread for routing alone was
//! measured: the ACK rate fell 23% and the store drained 16% slower under
//! load, BENCHMARKS.md; not done.)
//!
//! # Invariants
//! - A document the store refuses ([`crate::store::StoreError::is_permanent`],
//!   or not JSON at all) is a permanent error: retrying cannot help. Database
//!   errors (locked, disk full, I/O) are retryable.
//! - Applying the same item twice is harmless: the store finds the content
//!   unchanged and writes no new version.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::Value;

use super::{Deliver, Delivered, DeliveryError, DeliveryItem};
use crate::store::{ApplyOutcome, RecordStore};

/// Documents applied (or waiting for a background thread) at once: as many
/// as there are background threads.
static APPLY_LANES: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();

/// Writes documents into the record store.
#[derive(Debug)]
pub struct StoreDestination {
    id: String,
    records: RecordStore,
    timeout: Duration,
}

impl StoreDestination {
    pub fn new(id: &str, records: RecordStore, timeout: Duration) -> Self {
        StoreDestination {
            id: id.to_string(),
            records,
            timeout,
        }
    }
}

impl Deliver for StoreDestination {
    /// An apply cannot be stopped once begun: the scheduler waits for it
    /// (a day at most, a store that never answers), and this destination
    /// says when it is slow (`timeout_secs`, above). Abandoned at the
    /// scheduler's timeout it would run on, and the retry would start it again
    /// beside itself.
    fn attempt_timeout(&self, _item: &DeliveryItem, _configured: Duration) -> Duration {
        Duration::from_secs(24 * 3600)
    }

    fn deliver<'a>(
        &'a self,
        item: &'a DeliveryItem,
    ) -> BoxFuture<'a, Result<Delivered, DeliveryError>> {
        async move {
            let bundle: Value = serde_json::from_slice(&item.document).map_err(|e| {
                // serde_json's message names a line and column, never content.
                DeliveryError::permanent(format!(
                    "destination `{}`: the document is not JSON: {e}",
                    self.id
                ))
            })?;
            let event_time = event_time(&bundle);
            let records = self.records.clone();
            let _lane = APPLY_LANES
                .get_or_init(|| {
                    tokio::sync::Semaphore::new(super::background::threads())
                })
                .acquire()
                .await
                .map_err(|_| DeliveryError::retry(format!("destination `{}`: stopping", self.id)))?;
            // Low priority: applying documents must not slow intake's ACKs.
            let started = std::time::Instant::now();
            let mut apply = std::pin::pin!(super::background::run(move || {
                records.apply_bundle(&bundle, event_time)
            }));
            let applied = match tokio::time::timeout(self.timeout, &mut apply).await {
                Ok(applied) => applied,
                Err(_) => {
                    tracing::warn!(destination = %self.id, control_id = %item.control_id,
                        size_bytes = item.document.len(), timeout_secs = self.timeout.as_secs(),
                        "the record store is slow with this document: still applying it (not started again)");
                    apply.await
                }
            };
            if started.elapsed() > self.timeout {
                tracing::info!(destination = %self.id, control_id = %item.control_id,
                    secs = started.elapsed().as_secs(), "slow document applied");
            }
            let outcome = match applied {
                Err(join) => {
                    return Err(DeliveryError::retry(format!(
                        "destination `{}`: the record store task failed: {join}",
                        self.id
                    )))
                }
                Ok(Err(err)) if err.is_permanent() => {
                    return Err(DeliveryError::permanent(format!(
                        "destination `{}`: the record store refused the document: {err}",
                        self.id
                    )))
                }
                Ok(Err(err)) => {
                    return Err(DeliveryError::retry(format!(
                        "destination `{}`: {err}",
                        self.id
                    )))
                }
                Ok(Ok(outcome)) => outcome,
            };
            let summary = summary(&outcome);
            tracing::debug!(destination = %self.id, control_id = %item.control_id, outcome = %summary, "document stored");
            Ok(Delivered {
                remote_ref: Some(summary),
            })
        }
        .boxed()
    }
}

/// The time that orders a document among others about the same records: the
/// first Provenance's `recorded` (when the sender recorded the event: the
/// shipped mappings write EVN-2, else MSH-7), else its `occurredDateTime`.
/// Not the time the event occurred first: a discharge keyed at 12:00 for a
/// patient who left at 09:00 (EVN-6) is newer than an update recorded at
/// 10:00, and must not be taken for stale. `None` leaves the choice to the
/// store (the Bundle's `timestamp`, else arrival order). Values that are not
/// full FHIR instants (a date alone) are skipped.
pub fn event_time(bundle: &Value) -> Option<jiff::Timestamp> {
    let provenance = bundle
        .get("entry")?
        .as_array()?
        .iter()
        .filter_map(|entry| entry.get("resource"))
        .find(|r| r.get("resourceType").and_then(Value::as_str) == Some("Provenance"))?;
    ["recorded", "occurredDateTime"]
        .iter()
        .filter_map(|key| provenance.get(*key).and_then(Value::as_str))
        .find_map(|text| text.parse::<jiff::Timestamp>().ok())
}

/// `3 written, 1 stale` (zero counts other than `written` left out).
fn summary(outcome: &ApplyOutcome) -> String {
    let mut parts = vec![format!("{} written", outcome.written())];
    for (count, what) in [
        (outcome.stale(), "stale"),
        (outcome.unchanged(), "unchanged"),
        (outcome.deleted(), "deleted"),
    ] {
        if count > 0 {
            parts.push(format!("{count} {what}"));
        }
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(bundle: Value, expected: Option<&str>) {
        assert_eq!(
            event_time(&bundle),
            expected.map(|t| t.parse::<jiff::Timestamp>().unwrap()),
            "{bundle}"
        );
    }

    #[test]
    fn event_time_from_provenance() {
        let provenance = |fields: Value| {
            let mut resource = json!({"resourceType": "Provenance", "id": "p"});
            for (k, v) in fields.as_object().unwrap() {
                resource[k] = v.clone();
            }
            json!({"resourceType": "Bundle", "entry": [
                {"resource": {"resourceType": "Patient", "id": "x"}},
                {"resource": resource}
            ]})
        };
        // recorded (EVN-2) first: a discharge keyed after an update is newer
        // than it, whenever the patient left
        check(
            provenance(
                json!({"occurredDateTime": "2026-11-20T14:20:00+00:00", "recorded": "2026-11-20T14:35:12+00:00"}),
            ),
            Some("2026-11-20T14:35:12Z"),
        );
        check(
            provenance(json!({"occurredDateTime": "2026-11-20T14:20:00+00:00"})),
            Some("2026-11-20T14:20:00Z"),
        );
        check(
            provenance(json!({"recorded": "2026-11-20T15:35:12+01:00"})),
            Some("2026-11-20T14:35:12Z"),
        );
        check(
            provenance(
                json!({"occurredDateTime": "2026-11-20", "recorded": "2026-11-20T14:35:12Z"}),
            ),
            Some("2026-11-20T14:35:12Z"),
        );
        check(provenance(json!({})), None);
        check(json!({"resourceType": "Bundle"}), None);
        check(json!({"entry": "nope"}), None);
        check(json!([1, 2]), None);
    }
}
