//! The delivery operations of the HTTP API: queue depths, deliveries, dead
//! letters, retries and replays.
//!
//! - `GET /api/queues`: every destination's depth per status and the age of
//!   its oldest pending document, as `{"queues":[...]}`.
//! - `GET /api/deliveries?status=&destination=&message_id=&remote_ref=&limit=`: newest
//!   first, as `{"deliveries":[...]}` (never the document itself).
//! - `GET /api/dead-letters?destination=&limit=`: the dead deliveries.
//! - `POST /api/deliveries/{id}/retry`: a dead (or withheld) delivery queued
//!   again, due now, attempts reset; a pending one made due now (its backoff
//!   cut short); the row with `was` (its status before); 409 when it was delivered.
//! - `POST /api/queues/{destination}/retry`: every pending delivery of a
//!   destination due now: `{"due_now": n}` (after the destination is back).
//! - `POST /api/dead-letters/retry?destination=`: every dead delivery (of
//!   one destination) queued again: `{"retried": n, "still_dead": m}` (`m`:
//!   those delivered once whose document is gone; replay their messages).
//! - `POST /api/messages/{id}/replay[?destination=]`: routes and maps an
//!   accepted message again and queues its documents anew (new delivery
//!   rows), for every destination its routes name or for one (409 when they
//!   do not name it); also a resend
//!   that was kept as rejected because its content differed (a reused
//!   control id): replaying it processes it as the new message it is.
//!
//! The read endpoints need only the journal; the write endpoints need the
//! running delivery queue and answer 503 without one.
//!
//! # Invariants
//! - Answers carry ids, destinations, statuses and ops-facing error texts;
//!   never a document.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState};
use crate::delivery::queue::{DeliveryHandle, QueueError, QueueSummary, Replayed, Requeued};
use crate::journal::{DeliveryFilter, DeliveryRow, DeliveryStatus, MAX_LIMIT};

impl From<QueueError> for ApiError {
    fn from(err: QueueError) -> Self {
        match err {
            QueueError::NoMessage(_) | QueueError::NoDelivery(_) => {
                ApiError::NotFound(err.to_string())
            }
            QueueError::NotRetryable { .. }
            | QueueError::DocumentDropped { .. }
            | QueueError::NotRoutedTo { .. }
            | QueueError::Busy { .. } => ApiError::Conflict(err.to_string()),
            QueueError::Journal(err) => ApiError::Journal(err),
            QueueError::Task(err) => ApiError::Internal(err.to_string()),
            QueueError::Background(err) => ApiError::Internal(err.to_string()),
        }
    }
}

fn running(state: &ApiState) -> Result<&DeliveryHandle, ApiError> {
    state
        .delivery
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("the delivery queue is not running".to_string()))
}

/// Runs a retry or replay to its end in a task of its own, so a client that
/// stops waiting (a CLI's timeout, a closed browser tab) does not cut it off
/// half way: its write is all or nothing, so one cut off had done nothing,
/// and a retry whose follow-ups take long to map would never land.
async fn to_the_end<T, F>(work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, QueueError>> + Send + 'static,
{
    tokio::spawn(work)
        .await
        .map_err(|err| ApiError::Internal(format!("the operation's task failed: {err}")))?
        .map_err(ApiError::from)
}

fn query<T>(params: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    params.map(|Query(p)| p).map_err(|rejection| {
        ApiError::BadRequest(format!("invalid query: {}", rejection.body_text()))
    })
}

fn id(path: Result<Path<i64>, PathRejection>, what: &str) -> Result<i64, ApiError> {
    path.map(|Path(id)| id).map_err(|rejection| {
        ApiError::BadRequest(format!(
            "invalid {what} id: {}, expected an integer",
            rejection.body_text()
        ))
    })
}

/// A `destination` filter names a configured destination (404 otherwise, as
/// a retry's does): a typo must not read as an empty queue. Not checked when
/// the delivery queue does not run (an intake alone).
fn known_destination(state: &ApiState, destination: Option<&str>) -> Result<(), ApiError> {
    match (destination, &state.delivery) {
        (Some(d), Some(handle)) if !handle.destinations().iter().any(|k| k.id == d) => Err(
            ApiError::NotFound(format!("no destination `{d}` in [destinations]")),
        ),
        _ => Ok(()),
    }
}

fn check_limit(limit: Option<u32>) -> Result<Option<u32>, ApiError> {
    match limit {
        Some(l) if l == 0 || l > MAX_LIMIT => Err(ApiError::BadRequest(format!(
            "invalid limit {l}, expected 1 to {MAX_LIMIT}"
        ))),
        other => Ok(other),
    }
}

#[derive(Serialize)]
pub(super) struct Queues {
    queues: Vec<QueueSummary>,
}

pub(super) async fn queues(
    State(state): State<ApiState>,
    params: Result<Query<super::NoParams>, QueryRejection>,
) -> Result<Json<Queues>, ApiError> {
    super::no_params(params)?;
    let queues = running(&state)?.queues().await?;
    Ok(Json(Queues { queues }))
}

/// `GET /api/deliveries`; unknown parameters are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeliveryParams {
    status: Option<String>,
    destination: Option<String>,
    message_id: Option<i64>,
    remote_ref: Option<String>,
    limit: Option<u32>,
}

#[derive(Serialize)]
pub(super) struct Deliveries {
    deliveries: Vec<DeliveryRow>,
}

pub(super) async fn deliveries(
    State(state): State<ApiState>,
    params: Result<Query<DeliveryParams>, QueryRejection>,
) -> Result<Json<Deliveries>, ApiError> {
    let p = query(params)?;
    let status = match p.status.as_deref() {
        None => None,
        Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "invalid status `{s}`, expected one of pending, delivered, dead, withheld"
            ))
        })?),
    };
    known_destination(&state, p.destination.as_deref())?;
    let filter = DeliveryFilter {
        status,
        destination: p.destination,
        message_id: p.message_id,
        remote_ref: p.remote_ref,
        limit: check_limit(p.limit)?,
    };
    let deliveries = state.journal.deliveries(filter).await?;
    Ok(Json(Deliveries { deliveries }))
}

/// `GET /api/dead-letters` and `POST /api/dead-letters/retry`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeadParams {
    destination: Option<String>,
    limit: Option<u32>,
}

pub(super) async fn dead_letters(
    State(state): State<ApiState>,
    params: Result<Query<DeadParams>, QueryRejection>,
) -> Result<Json<Deliveries>, ApiError> {
    let p = query(params)?;
    known_destination(&state, p.destination.as_deref())?;
    let filter = DeliveryFilter {
        status: Some(DeliveryStatus::Dead),
        destination: p.destination,
        message_id: None,
        remote_ref: None,
        limit: check_limit(p.limit)?,
    };
    let deliveries = state.journal.deliveries(filter).await?;
    Ok(Json(Deliveries { deliveries }))
}

/// No query parameters: one given (`?dry_run=true`) is refused, not ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NoParams {}

pub(super) async fn retry(
    State(state): State<ApiState>,
    path: Result<Path<i64>, PathRejection>,
    params: Result<Query<NoParams>, QueryRejection>,
    body: axum::body::Bytes,
) -> Result<Json<RetriedOne>, ApiError> {
    query(params)?;
    no_body(&body)?;
    let id = id(path, "delivery")?;
    let handle = running(&state)?.clone();
    let retried = to_the_end(async move { handle.retry(id).await }).await?;
    Ok(Json(RetriedOne {
        row: retried.row,
        was: retried.was,
        requeued: retried.requeued,
    }))
}

/// `POST /api/deliveries/{id}/retry`: the row as it is now, what it was
/// (`dead`/`withheld`: queued again; `pending`: its backoff cut short), and
/// the patient's later messages there (delivered, on their way, or retried
/// too), queued again after it in the order they arrived, so that the
/// destination ends with the newest.
#[derive(Serialize)]
pub(super) struct RetriedOne {
    #[serde(flatten)]
    row: DeliveryRow,
    was: DeliveryStatus,
    requeued: Vec<Requeued>,
}

#[derive(Serialize)]
pub(super) struct Retried {
    retried: usize,
    /// The retried rows' patients' later messages, queued again after them
    /// (see [`RetriedOne`]).
    requeued: Vec<Requeued>,
    /// Dead letters left (of that destination): those delivered once whose
    /// document is gone (a MESH report said the recipient never got it),
    /// which a replay of their message sends again.
    still_dead: u64,
}

pub(super) async fn retry_dead(
    State(state): State<ApiState>,
    params: Result<Query<DeadParams>, QueryRejection>,
    body: axum::body::Bytes,
) -> Result<Json<Retried>, ApiError> {
    no_body(&body)?;
    let p = query(params)?;
    if p.limit.is_some() {
        return Err(ApiError::BadRequest(
            "`limit` does not apply to a retry: every dead letter is retried".to_string(),
        ));
    }
    let destination = p.destination;
    if let Some(d) = &destination {
        if !running(&state)?
            .destinations()
            .iter()
            .any(|known| &known.id == d)
        {
            return Err(ApiError::NotFound(format!(
                "no destination `{d}` in [destinations]"
            )));
        }
    }
    let handle = running(&state)?.clone();
    let which = destination.clone();
    let (retried, requeued) = to_the_end(async move { handle.retry_dead(which).await }).await?;
    let still_dead = state
        .journal
        .queue_depths()
        .await?
        .iter()
        .filter(|d| d.status == DeliveryStatus::Dead)
        .filter(|d| {
            destination
                .as_deref()
                .is_none_or(|want| d.destination == want)
        })
        .map(|d| d.count)
        .sum();
    Ok(Json(Retried {
        retried,
        requeued,
        still_dead,
    }))
}

/// `POST /api/messages/{id}/replay?destination=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayParams {
    destination: Option<String>,
}

pub(super) async fn replay(
    State(state): State<ApiState>,
    path: Result<Path<i64>, PathRejection>,
    params: Result<Query<ReplayParams>, QueryRejection>,
    body: axum::body::Bytes,
) -> Result<Json<Replayed>, ApiError> {
    no_body(&body)?;
    let id = id(path, "message")?;
    let destination = query(params)?.destination;
    let handle = running(&state)?;
    if let Some(d) = &destination {
        if !handle.destinations().iter().any(|known| &known.id == d) {
            return Err(ApiError::NotFound(format!(
                "no destination `{d}` in [destinations]"
            )));
        }
    }
    let handle = handle.clone();
    Ok(Json(
        to_the_end(async move { handle.replay(id, destination).await }).await?,
    ))
}

#[derive(Serialize)]
pub(super) struct DueNow {
    due_now: usize,
}

pub(super) async fn retry_pending(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<NoParams>, QueryRejection>,
    body: axum::body::Bytes,
) -> Result<Json<DueNow>, ApiError> {
    query(params)?;
    no_body(&body)?;
    let Path(destination) = path.map_err(|rejection| {
        ApiError::BadRequest(format!("invalid destination: {}", rejection.body_text()))
    })?;
    let handle = running(&state)?;
    if !handle.destinations().iter().any(|d| d.id == destination) {
        return Err(ApiError::NotFound(format!(
            "no destination `{destination}` in [destinations]"
        )));
    }
    let due_now = handle.retry_pending(destination).await?;
    Ok(Json(DueNow { due_now }))
}

/// These operations take their parameters in the query string only. A body
/// (`{"destination": "x"}`, say) is refused rather than ignored: ignored, it
/// would replay or retry more than was asked, external destinations included.
fn no_body(body: &axum::body::Bytes) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    Err(ApiError::BadRequest(
        "this operation takes no body: give its parameters in the query string (e.g. `?destination=mesh_hwe`)".to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A client that stops waiting (its request future dropped, as hyper
    /// does when the connection closes) does not stop the operation.
    #[tokio::test]
    async fn an_operation_runs_to_its_end_when_the_client_stops_waiting() {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let request = to_the_end(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            flag.store(true, Ordering::SeqCst);
            Ok(())
        });
        let waited = tokio::time::timeout(Duration::from_millis(20), request).await;
        assert!(waited.is_err(), "the client gave up first");
        for _ in 0..100 {
            if done.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the operation was cut off with its client");
    }
}
