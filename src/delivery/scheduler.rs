//! The scheduler of one destination: hands due queue rows to the destination,
//! records each attempt's outcome, and decides when to retry.
//!
//! Only the head of each patient's line is handed out (the journal keeps one
//! head per (destination, patient key): its oldest pending row), and at most
//! `concurrency` rows are in flight at once, each for a different patient.
//! So documents of one patient arrive in order, while a patient whose document
//! keeps failing holds up nobody else.
//!
//! After a failure the row waits `backoff_initial_ms · 2^(attempt-1)`, capped
//! at `backoff_max_ms`, with jitter (the wait is drawn from the upper half of
//! that: never less than half, never more). It is dead-lettered after
//! `max_attempts` attempts, once older than `max_age_secs`, or at once on a
//! permanent error. For `external = true` destinations every NHS number in the
//! row is checked against the objections register first: an objecting
//! patient's document is withheld, never sent; when the register cannot be
//! read the attempt fails (and is retried) rather than risk sending.
//!
//! It does not route, map or build destinations.
//!
//! # Invariants
//! - At least once: an attempt's outcome is written only after the attempt;
//!   a crash in between leaves the row pending and it is tried again.
//! - An attempt is counted (`attempts`) before it is made, so the attempt
//!   after a crash carries a number above 1 and a destination that must not
//!   blindly repeat (MESH: check tracking by local id first) knows it.
//! - Never two rows of one patient in flight to one destination.
//! - On stop no new row is taken; rows in flight finish (the engine bounds
//!   the wait by `shutdown_timeout_secs`; an abandoned row stays pending).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Deliver, DeliveryError, DeliveryItem, DestinationConfig, Objections};
use crate::journal::{DueDelivery, QueueOp};
use crate::telemetry::events::{self, DeliveryEvent, Event};
use crate::telemetry::metrics::DeliveryLabel;

use super::pipeline::now_ms;
use super::queue::Shared;

/// Longest a scheduler sleeps without looking at its queue (rows made due by
/// a retry on another engine node, clock jumps).
pub const POLL: Duration = Duration::from_secs(2);

/// When to retry and when to give up (from a `[destinations.<id>]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub max_age_ms: i64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

impl RetryPolicy {
    pub fn from_config(c: &DestinationConfig) -> RetryPolicy {
        RetryPolicy {
            max_attempts: c.max_attempts.map_or(u32::MAX, |n| n.max(1)),
            max_age_ms: i64::try_from(c.max_age_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            backoff_initial_ms: c.backoff_initial_ms.max(1),
            backoff_max_ms: c.backoff_max_ms.max(c.backoff_initial_ms.max(1)),
        }
    }

    /// The wait after the `attempts`-th failed attempt (1-based), with
    /// `jitter` in [0, 1): between half and all of the capped exponential delay.
    pub fn backoff_ms(&self, attempts: u32, jitter: f64) -> u64 {
        let doublings = attempts.saturating_sub(1).min(62);
        let base = self
            .backoff_initial_ms
            .saturating_mul(1u64 << doublings)
            .min(self.backoff_max_ms);
        let half = base / 2;
        let jitter = jitter.clamp(0.0, 1.0);
        // `base - half` fits in f64 exactly for any practical delay.
        half + ((base - half) as f64 * jitter) as u64
    }

    /// What to do after attempt number `attempts` failed with `error`.
    pub fn after_failure(
        &self,
        attempts: u32,
        age_from_ms: i64,
        now_ms: i64,
        error: &DeliveryError,
        jitter: f64,
    ) -> Decision {
        if !error.retryable {
            return Decision::Dead(format!("permanent error: {}", error.message));
        }
        if attempts >= self.max_attempts {
            return Decision::Dead(format!(
                "gave up after {attempts} attempt(s): {}",
                error.message
            ));
        }
        let age = now_ms.saturating_sub(age_from_ms);
        if age >= self.max_age_ms {
            return Decision::Dead(format!(
                "gave up after {}s queued (max_age_secs {}): {}",
                age / 1000,
                self.max_age_ms / 1000,
                error.message
            ));
        }
        let wait = i64::try_from(self.backoff_ms(attempts, jitter)).unwrap_or(i64::MAX);
        Decision::Retry {
            at_ms: now_ms.saturating_add(wait),
        }
    }
}

/// The scheduler's verdict on a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Retry { at_ms: i64 },
    Dead(String),
}

/// One destination as its scheduler runs it.
#[derive(Clone)]
pub struct Destination {
    pub id: String,
    pub external: bool,
    pub concurrency: usize,
    pub timeout: Duration,
    pub policy: RetryPolicy,
    pub deliver: Arc<dyn Deliver>,
    /// Consulted before every delivery to an external destination.
    pub objections: Option<Arc<dyn Objections>>,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("id", &self.id)
            .field("external", &self.external)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// What an attempt came to.
enum Attempt {
    Delivered(Option<String>),
    Failed(DeliveryError),
    Withheld(String),
}

/// The scheduler task of one destination: runs until `stop`, then waits for
/// the rows in flight.
pub(crate) async fn run(
    shared: Arc<Shared>,
    dest: Destination,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let dest = Arc::new(dest);
    let concurrency = dest.concurrency.max(1);
    // Row id → patient key, for the rows in flight.
    let mut in_flight: BTreeMap<i64, String> = BTreeMap::new();
    // Task → row id, to free the row of a task that panicked.
    let mut task_rows: HashMap<tokio::task::Id, i64> = HashMap::new();
    let mut tasks: JoinSet<()> = JoinSet::new();
    tracing::info!(destination = %dest.id, concurrency, "delivery scheduler started");
    loop {
        if stop.is_cancelled() {
            break;
        }
        let mut failed_read = false;
        if in_flight.len() < concurrency {
            let want = concurrency + in_flight.len();
            match shared
                .journal
                .due_deliveries(dest.id.clone(), now_ms(), u32::try_from(want).unwrap_or(64))
                .await
            {
                Ok(rows) => {
                    let busy: BTreeSet<String> = in_flight.values().cloned().collect();
                    let mut take = Vec::new();
                    for row in rows {
                        if in_flight.len() + take.len() >= concurrency {
                            break;
                        }
                        let twice = take
                            .iter()
                            .any(|r: &DueDelivery| r.patient_key == row.patient_key);
                        if in_flight.contains_key(&row.id)
                            || busy.contains(&row.patient_key)
                            || twice
                        {
                            continue;
                        }
                        take.push(row);
                    }
                    // Count the attempts as started before making them, so that
                    // after a crash mid-attempt the next one knows it is a repeat
                    // (MESH checks tracking before sending again).
                    if !take.is_empty() {
                        let ids = take.iter().map(|r| r.id).collect();
                        if let Err(err) = shared
                            .journal
                            .queue_write(vec![QueueOp::Start { ids }])
                            .await
                        {
                            tracing::error!(destination = %dest.id, error = %err, "cannot record attempts as started");
                            take.clear();
                            failed_read = true;
                        }
                    }
                    for row in take {
                        in_flight.insert(row.id, row.patient_key.clone());
                        let shared = Arc::clone(&shared);
                        let dest = Arc::clone(&dest);
                        let id = row.id;
                        let handle = tasks.spawn(async move {
                            attempt(&shared, &dest, row).await;
                        });
                        task_rows.insert(handle.id(), id);
                    }
                }
                Err(err) => {
                    tracing::error!(destination = %dest.id, error = %err, "cannot read the delivery queue");
                    failed_read = true;
                }
            }
        }
        let sleep_for = if failed_read || in_flight.len() >= concurrency {
            POLL
        } else {
            match shared.journal.next_due_at(dest.id.clone()).await {
                Ok(Some(at)) => {
                    let wait = at.saturating_sub(now_ms()).max(0);
                    // In-flight heads are "due" too: do not spin on them.
                    let wait = if wait == 0 && !in_flight.is_empty() {
                        POLL.as_millis() as i64
                    } else {
                        wait
                    };
                    Duration::from_millis(u64::try_from(wait).unwrap_or(0)).min(POLL)
                }
                Ok(None) => POLL,
                Err(_) => POLL,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                forget(&mut in_flight, &mut task_rows, done);
                // Take whatever else finished meanwhile.
                while let Some(done) = tasks.try_join_next_with_id() {
                    forget(&mut in_flight, &mut task_rows, done);
                }
            }
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep_for) => {}
        }
    }
    if !tasks.is_empty() {
        tracing::info!(destination = %dest.id, in_flight = tasks.len(), "waiting for deliveries in flight");
    }
    while let Some(done) = tasks.join_next_with_id().await {
        forget(&mut in_flight, &mut task_rows, done);
    }
    tracing::info!(destination = %dest.id, "delivery scheduler stopped");
}

/// Frees the row of a finished task.
fn forget(
    in_flight: &mut BTreeMap<i64, String>,
    task_rows: &mut HashMap<tokio::task::Id, i64>,
    done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) {
    let task = match done {
        Ok((task, ())) => task,
        Err(err) => {
            // A panicking destination: its row stays pending and is retried.
            tracing::error!(error = %err, "a delivery task failed");
            err.id()
        }
    };
    if let Some(row) = task_rows.remove(&task) {
        in_flight.remove(&row);
    }
}

/// One attempt at one row: objections, delivery with a timeout, the outcome
/// written back, an event and a count.
async fn attempt(shared: &Shared, dest: &Destination, row: DueDelivery) {
    let attempt_no = row.attempts.saturating_add(1);
    let outcome = match check_objections(dest, &row).await {
        Err(err) => Attempt::Failed(err),
        Ok(Some(reason)) => Attempt::Withheld(reason),
        Ok(None) => {
            let item = DeliveryItem {
                id: row.id,
                message_id: row.message_id,
                destination: row.destination.clone(),
                patient_key: row.patient_key.clone(),
                control_id: row.control_id.clone(),
                message_type: row.message_type.clone(),
                document: row.document.clone(),
                raw: row.raw.clone(),
                attempt: attempt_no,
                // a retry by hand restarts the age from then (and the count)
                retried: row.age_from_ms != row.created_at_ms,
                queued_at_ms: row.created_at_ms,
            };
            let limit = dest.deliver.attempt_timeout(&item, dest.timeout);
            match tokio::time::timeout(limit, dest.deliver.deliver(&item)).await {
                Ok(Ok(done)) => Attempt::Delivered(done.remote_ref),
                Ok(Err(err)) => Attempt::Failed(err),
                Err(_) => Attempt::Failed(DeliveryError::retry(format!(
                    "no answer within {}s (timeout_secs)",
                    limit.as_secs()
                ))),
            }
        }
    };
    let now = now_ms();
    let mut event = DeliveryEvent {
        delivery_id: row.id,
        journal_id: row.message_id,
        destination: dest.id.clone(),
        control_id: row.control_id.clone(),
        message_type: row.message_type.clone(),
        attempt: attempt_no,
        outcome: String::new(),
        error: None,
        retry_at: None,
        remote_ref: None,
        at: events::now(),
    };
    let (op, event) = match outcome {
        Attempt::Delivered(remote_ref) => {
            event.outcome = "delivered".to_string();
            event.remote_ref = remote_ref.clone();
            (
                QueueOp::Delivered {
                    id: row.id,
                    attempts: attempt_no,
                    remote_ref,
                    at_ms: now,
                },
                Event::Delivered(event),
            )
        }
        Attempt::Withheld(reason) => {
            event.outcome = "withheld".to_string();
            event.error = Some(reason.clone());
            (
                QueueOp::Withheld {
                    id: row.id,
                    reason,
                    at_ms: now,
                },
                Event::Withheld(event),
            )
        }
        Attempt::Failed(err) => {
            match dest
                .policy
                .after_failure(attempt_no, row.age_from_ms, now, &err, fastrand::f64())
            {
                Decision::Retry { at_ms } => {
                    event.outcome = "retry".to_string();
                    event.error = Some(err.message.clone());
                    event.retry_at = Some(crate::journal::format_ms(at_ms));
                    (
                        QueueOp::Failed {
                            id: row.id,
                            attempts: attempt_no,
                            next_attempt_at_ms: at_ms,
                            error: err.message,
                        },
                        Event::DeliveryFailed(event),
                    )
                }
                Decision::Dead(reason) => {
                    event.outcome = "dead".to_string();
                    event.error = Some(reason.clone());
                    (
                        QueueOp::Dead {
                            id: row.id,
                            attempts: attempt_no,
                            error: reason,
                            at_ms: now,
                        },
                        Event::DeadLettered(event),
                    )
                }
            }
        }
    };
    let (outcome, detail) = match &event {
        Event::Delivered(e)
        | Event::Withheld(e)
        | Event::DeliveryFailed(e)
        | Event::DeadLettered(e) => (e.outcome.clone(), e.error.clone().unwrap_or_default()),
        _ => (String::new(), String::new()),
    };
    match shared.journal.queue_write(vec![op]).await {
        Ok(_) => {
            shared
                .metrics
                .deliveries
                .get_or_create(&DeliveryLabel {
                    destination: dest.id.clone(),
                    outcome: outcome.clone(),
                })
                .inc();
            if outcome == "delivered" {
                tracing::info!(destination = %dest.id, delivery_id = row.id, journal_id = row.message_id,
                    control_id = %row.control_id, message_type = %row.message_type, attempt = attempt_no,
                    outcome = %outcome, "delivery");
            } else {
                tracing::warn!(destination = %dest.id, delivery_id = row.id, journal_id = row.message_id,
                    control_id = %row.control_id, message_type = %row.message_type, attempt = attempt_no,
                    outcome = %outcome, error = %detail, "delivery");
            }
            shared.events.publish(event);
        }
        Err(err) => {
            // The row stays pending and is tried again (at least once). Hold
            // the slot a while so a journal that cannot write (disk full) does
            // not turn into a tight loop of repeated deliveries.
            tracing::error!(destination = %dest.id, delivery_id = row.id, error = %err,
                "cannot record a delivery outcome; the delivery will be repeated");
            tokio::time::sleep(POLL).await;
        }
    }
}

/// For an external destination: `Ok(Some(reason))` when the patient objects,
/// `Err` when the register cannot answer (never send on doubt).
async fn check_objections(
    dest: &Destination,
    row: &DueDelivery,
) -> Result<Option<String>, DeliveryError> {
    if !dest.external {
        return Ok(None);
    }
    let Some(register) = dest.objections.clone() else {
        return Err(DeliveryError::retry(
            "the objections register is not available, so nothing is sent to this external destination",
        ));
    };
    if row.nhs_numbers.is_empty() {
        return Ok(None);
    }
    let numbers = row.nhs_numbers.clone();
    let answer = tokio::task::spawn_blocking(move || {
        for number in &numbers {
            if register.is_objecting(number)? {
                return Ok(true);
            }
        }
        Ok::<bool, String>(false)
    })
    .await
    .map_err(|e| DeliveryError::retry(format!("objections check failed: {e}")))?;
    match answer {
        Ok(true) => Ok(Some(
            "withheld: the patient objects to sharing and the destination is external".to_string(),
        )),
        Ok(false) => Ok(None),
        Err(e) => Err(DeliveryError::retry(format!(
            "cannot read the objections register: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests;
