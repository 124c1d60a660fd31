//! The delivery queue as a running service: the pipeline task, one
//! scheduler per destination, the queue-depth gauges, and the operations the
//! HTTP API offers (queue depths, retry, replay).
//!
//! The rows themselves live in the journal (`journal::queue`, written through
//! the journal's writer thread so intake and queue share group commit).
//!
//! Destinations that could not be built (e.g. a MESH mailbox whose secret is
//! missing from the environment) get no scheduler: their rows are still
//! queued, with the build error as `last_error`, and wait for a restart with
//! a working configuration. They never stop the engine.
//!
//! # Invariants
//! - Stopping stops taking new work first, then waits (bounded) for work in
//!   flight; whatever is abandoned stays pending in the journal.
//! - Nothing here logs or publishes message content.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::pipeline::{self, now_ms, Router};
use super::scheduler::{self, Destination};
use crate::journal::{
    DeliveryRow, DeliveryStatus, Journal, JournalError, NewerThere, QueueOp, QueueOutcome,
    RetryPlan, RetryWhat, RoutingOutcome,
};
use crate::telemetry::events::EventBus;
use crate::telemetry::metrics::{Metrics, QueueLabel};

/// How often the queue-depth gauges are refreshed.
pub const DEPTH_REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("the routing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Background(#[from] super::background::BackgroundError),
    #[error("no accepted message with id {0}")]
    NoMessage(i64),
    #[error("no delivery with id {0}")]
    NoDelivery(i64),
    #[error("delivery {id} is delivered; replay its message to send it again")]
    NotRetryable { id: i64 },
    /// A dead delivery whose document was dropped when it was delivered (a
    /// MESH report said the recipient never got it): made again by a replay.
    #[error(
        "delivery {id} was delivered once and its document dropped; send it again with \
         `junction replay {message_id} --destination {destination}`"
    )]
    DocumentDropped {
        id: i64,
        message_id: i64,
        destination: String,
    },
    #[error(
        "message {message_id} is not routed to `{destination}` (its routes do not send it \
         there now); nothing was queued"
    )]
    NotRoutedTo {
        message_id: i64,
        destination: String,
    },
    /// Each time a retry was prepared, its patients' queues had changed
    /// before it could be written (a new message, another retry).
    #[error(
        "the patients' queues kept changing while the retry was prepared ({tries} tries); \
         nothing was queued, try again"
    )]
    Busy { tries: usize },
}

/// How many times a retry by hand is prepared before giving up on queues
/// that keep changing under it ([`QueueError::Busy`]).
pub const RETRY_TRIES: usize = 5;

/// What the pipeline, the schedulers and the API share.
pub(crate) struct Shared {
    pub(crate) journal: Journal,
    pub(crate) router: Arc<Router>,
    pub(crate) events: EventBus,
    pub(crate) metrics: Arc<Metrics>,
    /// One per destination with a scheduler.
    wakers: BTreeMap<String, Arc<Notify>>,
}

impl Shared {
    /// Tells a destination's scheduler that rows may have become due.
    pub(crate) fn wake(&self, destination: &str) {
        if let Some(waker) = self.wakers.get(destination) {
            waker.notify_one();
        }
    }
}

/// A configured destination and whether it runs.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DestinationState {
    pub id: String,
    /// `store`, `mesh`, `fhir`, `mllp`, `file`.
    pub kind: String,
    pub external: bool,
    /// False when it could not be built: its rows wait.
    pub available: bool,
    /// Why it is not available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One destination's queue, for `GET /api/queues`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QueueSummary {
    pub destination: String,
    /// Empty for rows of a destination no longer configured.
    pub kind: String,
    pub external: bool,
    pub available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub pending: u64,
    pub delivered: u64,
    pub dead: u64,
    pub withheld: u64,
    /// Seconds since the oldest pending row was queued.
    pub oldest_pending_age_secs: Option<u64>,
}

/// The result of a replay.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Replayed {
    pub message_id: i64,
    pub routing_id: i64,
    pub outcome: RoutingOutcome,
    pub routes: Vec<String>,
    /// The new delivery rows.
    pub deliveries: Vec<i64>,
    /// Failed only: why (may quote the message; the API is for ops).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// New rows whose destination already has newer messages of the patient:
    /// it will end with this older document (unlike a retry, a replay queues
    /// nothing after it; replay the newest after it if that is not meant).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub newer_there: Vec<NewerThere>,
}

/// A row queued again by hand ([`DeliveryHandle::retry`]).
#[derive(Debug, Clone, Serialize)]
pub struct Retried {
    /// What it was: `dead`/`withheld` (queued again) or `pending` (its
    /// backoff cut short).
    pub was: DeliveryStatus,
    /// The row as it is now.
    pub row: DeliveryRow,
    /// The patient's later messages queued again after it.
    pub requeued: Vec<Requeued>,
}

/// A later message of a retried row's patient, already delivered to the
/// row's destination, queued again after it so that the destination ends
/// with the newest.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Requeued {
    /// The retried row it is queued after.
    pub after: i64,
    pub destination: String,
    pub message_id: i64,
    /// Its delivery that overtook the retried row.
    pub was_delivery: i64,
    /// The new delivery rows (none when the routes no longer send it there).
    pub deliveries: Vec<i64>,
    /// Why nothing was queued (may quote the message, as a replay's error
    /// does: the API is for ops).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The operations the HTTP API offers. Cheap to clone.
#[derive(Clone)]
pub struct DeliveryHandle {
    shared: Arc<Shared>,
    destinations: Arc<Vec<DestinationState>>,
}

impl std::fmt::Debug for DeliveryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryHandle")
            .field("destinations", &self.destinations)
            .finish_non_exhaustive()
    }
}

impl DeliveryHandle {
    /// Every configured destination, by id.
    pub fn destinations(&self) -> &[DestinationState] {
        &self.destinations
    }

    /// The routes the pipeline routes by.
    pub fn routes(&self) -> &crate::route::RouteSet {
        self.shared.router.routes()
    }

    /// Depths per destination (every configured one, plus any with rows).
    pub async fn queues(&self) -> Result<Vec<QueueSummary>, QueueError> {
        let depths = self.shared.journal.queue_depths().await?;
        let now = now_ms();
        let mut out: BTreeMap<String, QueueSummary> = self
            .destinations
            .iter()
            .map(|d| {
                (
                    d.id.clone(),
                    QueueSummary {
                        destination: d.id.clone(),
                        kind: d.kind.clone(),
                        external: d.external,
                        available: d.available,
                        error: d.error.clone(),
                        pending: 0,
                        delivered: 0,
                        dead: 0,
                        withheld: 0,
                        oldest_pending_age_secs: None,
                    },
                )
            })
            .collect();
        for depth in depths {
            let q = out
                .entry(depth.destination.clone())
                .or_insert_with(|| QueueSummary {
                    destination: depth.destination.clone(),
                    kind: String::new(),
                    external: false,
                    available: false,
                    error: Some("not configured in [destinations]".to_string()),
                    pending: 0,
                    delivered: 0,
                    dead: 0,
                    withheld: 0,
                    oldest_pending_age_secs: None,
                });
            match depth.status {
                DeliveryStatus::Pending => {
                    q.pending = depth.count;
                    q.oldest_pending_age_secs = depth
                        .oldest_ms
                        .map(|at| u64::try_from(now.saturating_sub(at) / 1000).unwrap_or(0));
                }
                DeliveryStatus::Delivered => q.delivered = depth.count,
                DeliveryStatus::Dead => q.dead = depth.count,
                DeliveryStatus::Withheld => q.withheld = depth.count,
            }
        }
        Ok(out.into_values().collect())
    }

    /// Delivery row `id`.
    async fn row(&self, id: i64) -> Result<DeliveryRow, QueueError> {
        self.shared
            .journal
            .delivery(id)
            .await?
            .ok_or(QueueError::NoDelivery(id))
    }

    /// Queues a dead (or withheld) delivery again, due now with its attempts
    /// reset; a pending one waiting for its backoff is made due now.
    /// A retried dead or withheld row's patient's later messages that reached
    /// its destination meanwhile are queued again after it (see
    /// [`Self::queue_again`]).
    pub async fn retry(&self, id: i64) -> Result<Retried, QueueError> {
        let row = self.row(id).await?;
        let now_ms = now_ms();
        let requeued = match row.status {
            DeliveryStatus::Delivered => return Err(QueueError::NotRetryable { id }),
            DeliveryStatus::Pending => {
                self.shared
                    .journal
                    .queue_write(vec![QueueOp::DueNow {
                        destination: row.destination.clone(),
                        id: Some(id),
                        now_ms,
                    }])
                    .await?;
                Vec::new()
            }
            DeliveryStatus::Dead | DeliveryStatus::Withheld => {
                let (retried, requeued) =
                    self.queue_again(RetryWhat::Ids(vec![id]), now_ms).await?;
                if retried.is_empty() {
                    // not retryable after all: its document was dropped when
                    // it was delivered, or another retry took it first (then
                    // this call did nothing, and says what it found)
                    let now = self.row(id).await?;
                    if now.status == DeliveryStatus::Dead {
                        return Err(QueueError::DocumentDropped {
                            id,
                            message_id: row.message_id,
                            destination: row.destination,
                        });
                    }
                    tracing::info!(delivery_id = id, destination = %row.destination, "delivery already queued again by another retry");
                    self.shared.wake(&row.destination);
                    return Ok(Retried {
                        was: now.status,
                        row: now,
                        requeued,
                    });
                }
                requeued
            }
        };
        tracing::info!(delivery_id = id, destination = %row.destination, requeued = requeued.len(), "delivery retried by hand");
        self.shared.wake(&row.destination);
        let now = self.row(id).await?;
        Ok(Retried {
            was: row.status,
            row: now,
            requeued,
        })
    }

    /// Queues every dead delivery (of one destination, or all) again, but
    /// those whose document was dropped when they were delivered. Their
    /// patients' later messages that reached the destinations meanwhile are
    /// queued again after them, as for [`Self::retry`].
    pub async fn retry_dead(
        &self,
        destination: Option<String>,
    ) -> Result<(usize, Vec<Requeued>), QueueError> {
        let (retried, requeued) = self
            .queue_again(RetryWhat::Dead(destination.clone()), now_ms())
            .await?;
        tracing::info!(
            destination = destination.as_deref().unwrap_or("*"),
            retried = retried.len(),
            requeued = requeued.len(),
            "dead letters retried by hand"
        );
        match destination {
            Some(d) => self.shared.wake(&d),
            None => self.shared.wakers.values().for_each(|w| w.notify_one()),
        }
        Ok((retried.len(), requeued))
    }

    /// Queues `what` again and, in the same journal transaction, the later
    /// messages of their patients that reached the same destination while
    /// they were dead or withheld (and those still waiting behind them there),
    /// made again from the journaled message for that destination alone: their
    /// new rows queue behind the retried one, so the destination ends with the
    /// newest (destinations are idempotent: a document sent again is an
    /// update to what it holds). All or nothing: a crash or a client gone
    /// mid-way leaves either the retry with its follow-ups, or neither.
    /// The rows queued again, and the follow-ups (one whose message cannot be
    /// made for that destination any more says why). The plan is read, the
    /// follow-ups made, and the write refused when a line changed meanwhile
    /// (then all of it is done again, at most [`RETRY_TRIES`] times).
    async fn queue_again(
        &self,
        what: RetryWhat,
        now_ms: i64,
    ) -> Result<(Vec<i64>, Vec<Requeued>), QueueError> {
        for _ in 0..RETRY_TRIES {
            let plan = self.shared.journal.retry_plan(what.clone()).await?;
            if plan.retryable.is_empty() {
                return Ok((Vec::new(), Vec::new()));
            }
            if let Some(done) = self.write_plan(&plan, now_ms).await? {
                return Ok(done);
            }
            tracing::info!(
                retried = plan.retryable.len(),
                "a patient's queue changed while a retry was prepared; preparing it again"
            );
        }
        Err(QueueError::Busy { tries: RETRY_TRIES })
    }

    /// Makes `plan`'s follow-ups and writes them with its retries, in one
    /// request guarded by [`RetryPlan::guard`]; `None` when the plan was out
    /// of date (nothing written).
    async fn write_plan(
        &self,
        plan: &RetryPlan,
        now_ms: i64,
    ) -> Result<Option<(Vec<i64>, Vec<Requeued>)>, QueueError> {
        let mut routed = Vec::new();
        let mut requeued = Vec::with_capacity(plan.overtaken.len());
        for o in &plan.overtaken {
            let error = match self.shared.journal.accepted_message(o.message_id).await? {
                None => Some(format!(
                    "message {} is no longer in the journal",
                    o.message_id
                )),
                Some(message) => {
                    let mut r = pipeline::route_for(
                        &self.shared,
                        vec![message],
                        true,
                        Some(&o.destination),
                    )
                    .await?;
                    match r.pop() {
                        Some(r) if !r.routing.deliveries.is_empty() => {
                            routed.push(r);
                            None
                        }
                        Some(r) => Some(r.routing.error.clone().unwrap_or_else(|| {
                            format!(
                                "its routes do not send it to `{}` now ({})",
                                o.destination,
                                r.routing.outcome.as_str()
                            )
                        })),
                        None => Some("not routed".to_string()),
                    }
                }
            };
            requeued.push(Requeued {
                after: o.retried,
                destination: o.destination.clone(),
                message_id: o.message_id,
                was_delivery: o.delivery_id,
                deliveries: Vec::new(),
                error,
            });
        }
        let mut before = vec![plan.guard()];
        before.extend(
            plan.retryable
                .iter()
                .map(|&id| QueueOp::Retry { id, now_ms }),
        );
        let (outcomes, written) = pipeline::write_routed(&self.shared, before, routed).await?;
        if outcomes.first() != Some(&QueueOutcome::Updated(1)) {
            return Ok(None);
        }
        let retried: Vec<i64> = plan
            .retryable
            .iter()
            .zip(&outcomes[1..])
            .filter(|(_, o)| matches!(o, QueueOutcome::Updated(n) if *n > 0))
            .map(|(id, _)| *id)
            .collect();
        let mut written = written.into_iter();
        for r in requeued.iter_mut().filter(|r| r.error.is_none()) {
            if let Some(w) = written.next() {
                r.deliveries = w.deliveries;
            }
        }
        for r in &requeued {
            tracing::info!(
                retried = r.after,
                message_id = r.message_id,
                destination = %r.destination,
                deliveries = ?r.deliveries,
                queued = r.error.is_none(),
                "a later message of the retried delivery's patient queued again after it"
            );
        }
        Ok(Some((retried, requeued)))
    }

    /// Makes every pending delivery of `destination` due now (e.g. when the
    /// destination is back and its rows are waiting out their backoff).
    /// Attempts and ages are kept.
    pub async fn retry_pending(&self, destination: String) -> Result<usize, QueueError> {
        let outcome = self
            .shared
            .journal
            .queue_write(vec![QueueOp::DueNow {
                destination: destination.clone(),
                id: None,
                now_ms: now_ms(),
            }])
            .await?;
        let n = match outcome.first() {
            Some(QueueOutcome::Updated(n)) => *n,
            _ => 0,
        };
        tracing::info!(destination = %destination, due_now = n, "pending deliveries made due by hand");
        self.shared.wake(&destination);
        Ok(n)
    }

    /// Routes and maps an accepted message again and queues its documents
    /// anew: for every destination its routes name, or for `destination`
    /// alone (an error, with nothing queued, when they do not name it).
    pub async fn replay(
        &self,
        message_id: i64,
        destination: Option<String>,
    ) -> Result<Replayed, QueueError> {
        let message = self
            .shared
            .journal
            .accepted_message(message_id)
            .await?
            .ok_or(QueueError::NoMessage(message_id))?;
        let mut written =
            pipeline::route_and_write(&self.shared, vec![message], true, destination.as_deref())
                .await?;
        let w = written.pop().ok_or(QueueError::NoMessage(message_id))?;
        let newer_there = self
            .shared
            .journal
            .newer_there(w.deliveries.clone())
            .await?;
        Ok(Replayed {
            message_id,
            routing_id: w.routing_id,
            outcome: w.routed.routing.outcome,
            routes: w.routed.routing.routes.clone(),
            deliveries: w.deliveries,
            error: w.routed.routing.error.clone(),
            newer_there,
        })
    }
}

/// The running pipeline and schedulers.
pub struct DeliveryQueue {
    handle: DeliveryHandle,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for DeliveryQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryQueue")
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

/// A destination that could not be built, and why.
#[derive(Debug, Clone)]
pub struct Unavailable {
    pub id: String,
    pub kind: String,
    pub external: bool,
    pub error: String,
}

impl DeliveryQueue {
    /// Starts the pipeline, a scheduler per built destination and the depth
    /// gauges. Must run inside a tokio runtime.
    pub fn start(
        journal: Journal,
        events: EventBus,
        metrics: Arc<Metrics>,
        mut router: Router,
        built: Vec<(Destination, String)>,
        unavailable: Vec<Unavailable>,
    ) -> DeliveryQueue {
        for u in &unavailable {
            router.set_unavailable(&u.id, format!("destination not available: {}", u.error));
        }
        let wakers: BTreeMap<String, Arc<Notify>> = built
            .iter()
            .map(|(d, _)| (d.id.clone(), Arc::new(Notify::new())))
            .collect();
        let mut states: Vec<DestinationState> = built
            .iter()
            .map(|(d, kind)| DestinationState {
                id: d.id.clone(),
                kind: kind.clone(),
                external: d.external,
                available: true,
                error: None,
            })
            .chain(unavailable.iter().map(|u| DestinationState {
                id: u.id.clone(),
                kind: u.kind.clone(),
                external: u.external,
                available: false,
                error: Some(u.error.clone()),
            }))
            .collect();
        states.sort_by(|a, b| a.id.cmp(&b.id));
        let shared = Arc::new(Shared {
            journal,
            router: Arc::new(router),
            events,
            metrics,
            wakers,
        });
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(pipeline::run(
            Arc::clone(&shared),
            stop.clone(),
        )));
        for (dest, _) in built {
            // Every built destination has a waker (made from the same list).
            let wake = shared
                .wakers
                .get(&dest.id)
                .cloned()
                .unwrap_or_else(|| Arc::new(Notify::new()));
            tasks.push(tokio::spawn(scheduler::run(
                Arc::clone(&shared),
                dest,
                wake,
                stop.clone(),
            )));
        }
        if !unavailable.is_empty() {
            let shared = Arc::clone(&shared);
            let ops: Vec<QueueOp> = unavailable
                .iter()
                .map(|u| QueueOp::NoteUnavailable {
                    destination: u.id.clone(),
                    error: format!("destination not available: {}", u.error),
                })
                .collect();
            tasks.push(tokio::spawn(async move {
                if let Err(err) = shared.journal.queue_write(ops).await {
                    tracing::error!(error = %err, "cannot note unavailable destinations on their rows");
                }
            }));
        }
        let handle = DeliveryHandle {
            shared: Arc::clone(&shared),
            destinations: Arc::new(states),
        };
        tasks.push(tokio::spawn(refresh_depths(handle.clone(), stop.clone())));
        DeliveryQueue {
            handle,
            stop,
            tasks,
        }
    }

    pub fn handle(&self) -> DeliveryHandle {
        self.handle.clone()
    }

    /// Stops taking new work and waits up to `timeout` for deliveries in
    /// flight; what is still running then is abandoned (it stays pending).
    pub async fn stop(self, timeout: Duration) {
        self.stop.cancel();
        let aborts: Vec<_> = self.tasks.iter().map(JoinHandle::abort_handle).collect();
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!(
                timeout_secs = timeout.as_secs(),
                "delivery shutdown timeout: abandoning deliveries in flight (they stay queued)"
            );
            for abort in aborts {
                abort.abort();
            }
        }
    }
}

/// Keeps the `queue_depth` gauges current until `stop`.
async fn refresh_depths(handle: DeliveryHandle, stop: CancellationToken) {
    loop {
        match handle.queues().await {
            Ok(queues) => {
                let gauges = &handle.shared.metrics.queue_depth;
                for q in queues {
                    for (status, n) in [
                        ("pending", q.pending),
                        ("delivered", q.delivered),
                        ("dead", q.dead),
                        ("withheld", q.withheld),
                    ] {
                        gauges
                            .get_or_create(&QueueLabel {
                                destination: q.destination.clone(),
                                status: status.to_string(),
                            })
                            .set(i64::try_from(n).unwrap_or(i64::MAX));
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot read queue depths"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(DEPTH_REFRESH) => {}
        }
    }
}
