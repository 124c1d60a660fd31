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
            // Low priority: applying documents must not slow intake's ACKs.
            let apply =
                super::background::run(move || records.apply_bundle(&bundle, event_time));
            let outcome = match tokio::time::timeout(self.timeout, apply).await {
                Err(_) => {
                    return Err(DeliveryError::retry(format!(
                        "destination `{}`: the record store did not answer within {} s",
                        self.id,
                        self.timeout.as_secs()
                    )))
                }
                Ok(Err(join)) => {
                    return Err(DeliveryError::retry(format!(
                        "destination `{}`: the record store task failed: {join}",
                        self.id
                    )))
                }
                Ok(Ok(Err(err))) if err.is_permanent() => {
                    return Err(DeliveryError::permanent(format!(
                        "destination `{}`: the record store refused the document: {err}",
                        self.id
                    )))
                }
                Ok(Ok(Err(err))) => {
                    return Err(DeliveryError::retry(format!(
                        "destination `{}`: {err}",
                        self.id
                    )))
                }
                Ok(Ok(Ok(outcome))) => outcome,
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
