//! `GET /api/events[?listener=<id>]`: the engine's live events as
//! Server-Sent Events, what `junction tail` reads.
//!
//! Each event is sent as `event: <name>` (e.g. `MessageAcked`) and
//! `data: <json>` (the [`Event`] with its `event` field). A comment line is
//! sent every 15 s so proxies and clients can tell a quiet engine from a dead
//! connection. With `listener=`, only that listener's events (and `Lagged`
//! notices) are sent.
//!
//! It does not replay past events: a subscriber sees what happens after it
//! connects (the journal, `GET /api/messages`, has the history).
//!
//! # Invariants
//! - A slow client never slows the intake: it receives a `Lagged` event
//!   saying how many events it missed (see [`crate::telemetry::events`]).
//! - Events carry no patient data, so neither does this stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::Deserialize;

use super::{ApiError, ApiState};
use crate::telemetry::events::{Event, Subscription};

/// How often a keep-alive comment is sent on a quiet stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The query string of `GET /api/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventParams {
    listener: Option<String>,
}

pub(super) async fn stream(
    State(state): State<ApiState>,
    params: Result<Query<EventParams>, QueryRejection>,
) -> Response {
    let Query(params) = match params {
        Ok(params) => params,
        Err(rejection) => {
            return ApiError::BadRequest(format!("invalid query: {}", rejection.body_text()))
                .into_response()
        }
    };
    let listener = params.listener;
    // a typo must not look like a quiet listener, a stream that never says anything
    if let Some(l) = &listener {
        if !state.origins.is_empty() && !state.origins.contains(l) {
            return ApiError::BadRequest(format!(
                "unknown listener `{l}`, expected one of {}",
                state
                    .origins
                    .iter()
                    .map(|o| format!("`{o}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into_response();
        }
    }
    tracing::debug!(
        listener = listener.as_deref().unwrap_or("*"),
        "event stream opened"
    );
    let events = sse_events(state.events.subscribe(), listener);
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response()
}

/// The subscription as SSE events, filtered to `listener` when given. Ends
/// when the bus is dropped (the engine stopped).
fn sse_events(
    subscription: Subscription,
    listener: Option<String>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    stream::unfold(
        (subscription, listener),
        |(mut subscription, listener)| async move {
            loop {
                let event = subscription.recv().await?;
                let wanted = match (&listener, event.listener()) {
                    (Some(want), Some(got)) => want == got,
                    _ => true,
                };
                if wanted {
                    return Some((Ok(to_sse(&event)), (subscription, listener)));
                }
            }
        },
    )
}

fn to_sse(event: &Event) -> SseEvent {
    let sse = SseEvent::default().event(event.name());
    match serde_json::to_string(event) {
        Ok(json) => sse.data(json),
        // Serializing plain strings and numbers cannot fail; keep the stream alive anyway.
        Err(err) => sse.comment(format!("event could not be serialized: {err}")),
    }
}
