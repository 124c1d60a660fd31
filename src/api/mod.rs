//! The HTTP server: health, readiness, Prometheus metrics and the
//! operations API over the journal.
//!
//! Routes:
//! - `GET /health`: 200 `{"status":"ok"}` while the process runs.
//! - `GET /ready`: 200 when the engine says it is ready (listeners bound) and
//!   the journal is healthy; 503 with the reasons otherwise.
//! - `GET /metrics`: every metric in the OpenMetrics text format.
//! - `GET /api/messages?control_id=&sender=&type=&status=&routing=&remote_ref=&since=&until=&limit=`:
//!   newest journaled messages first, as `{"messages":[...]}`; `routing=unrouted`
//!   lists what no route took; `since` (inclusive) and `until` (exclusive) are
//!   RFC 3339 times, times with no offset (UTC) or dates (midnight UTC).
//! - `GET /api/messages/{id}`: one message with its raw content, ACK and
//!   trail (routing outcomes, deliveries).
//! - `GET /api/events?listener=`: the live event stream as Server-Sent
//!   Events (see [`events`]).
//! - `GET /api/audit`, `GET/POST/DELETE /api/objections`: see
//!   [`crate::access::http`].
//! - `/fhir/...`: FHIR reads of the record store (see [`fhir`]).
//! - Delivery operations (queues, deliveries, dead letters, retry, replay):
//!   see `api/delivery.rs`.
//! - `GET /` (the ops dashboard) and `GET /api/routes`: see [`dashboard`].
//!
//! Errors are JSON `{"error":"..."}` with 400 (bad query or id), 404 (no such
//! message) or 500 (the journal failed; the details go to the log).
//!
//! # Authentication
//! Every route sits behind [`crate::access::guard`]: `/health`, `/ready` and
//! `/metrics` are open; `/fhir/...` needs a `clinical` bearer token and is
//! audited; `/api/audit` needs an `ops` token; the rest of `/api/...` needs
//! an `ops` token unless the server is bound to loopback. Tokens travel in
//! clear: beyond the host, put a TLS-terminating proxy in front.
//!
//! # Invariants
//! - The API writes to the journal only through the delivery queue's
//!   operations (retry, replay); everything else only reads.
//! - Logs name the route and outcome, never message content.

mod dashboard;
mod delivery;
pub mod events;
pub mod fhir;
mod fhir_search;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::journal::{Journal, MessageQuery, MessageSummary, MAX_LIMIT};
use crate::telemetry::events::EventBus;
use crate::telemetry::metrics::Metrics;

/// `[api]`: the HTTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address and port to listen on. Loopback by default: there the
    /// operations endpoints (except `/api/audit`) need no token.
    #[serde(default = "default_bind")]
    pub bind: SocketAddr,
    /// The address clients reach the server by (`https://shcr.example.nhs.uk`,
    /// behind a TLS-terminating proxy): `/fhir` builds its `fullUrl`s, links
    /// and CapabilityStatement url from it. Unset: from the request's `Host`
    /// header, over `http`. `check` holds it to an http(s) URL with no
    /// query, fragment or user info.
    #[serde(default)]
    pub public_url: Option<String>,
}

/// `[api] public_url` as `/fhir` builds on it: written as the URL standard
/// writes it (scheme and host in lower case), without a trailing `/`; or
/// what is wrong with it (for `check`): not an absolute http(s) URL with a
/// host, white space, a user name, a query or a fragment.
pub fn public_base(raw: &str) -> Result<String, String> {
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("holds white space or a control character".into());
    }
    // (the URL standard reads `\` as `/` in an http(s) URL: said, not changed)
    if raw.contains('\\') {
        return Err("holds a backslash".into());
    }
    let lower = raw.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
    else {
        return Err("does not start with `https://` or `http://`".into());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err("names no host".into());
    }
    if authority.contains('@') {
        return Err("holds a user name or password".into());
    }
    let url = reqwest::Url::parse(raw).map_err(|e| format!("is not a URL ({e})"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err("has a query or a fragment".into());
    }
    if url.port() == Some(0) {
        return Err("has port 0".into());
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

fn default_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            bind: default_bind(),
            public_url: None,
        }
    }
}

/// What the handlers read. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiState {
    pub journal: Journal,
    pub metrics: Arc<Metrics>,
    /// Set by the engine once every listener is bound; cleared when it drains.
    pub ready: Arc<AtomicBool>,
    /// The engine's live events, for `GET /api/events`.
    pub events: EventBus,
    /// Tokens, audit and objections over the record store (which `/fhir` reads).
    pub access: Access,
    /// The running delivery queue (retries, replays, depths); `None` when
    /// the engine runs without one (tests of the intake alone).
    pub delivery: Option<crate::delivery::queue::DeliveryHandle>,
    /// The listener and source ids (what an events filter may name; empty:
    /// not checked).
    pub origins: Arc<Vec<String>>,
    /// `[api] public_url`, without a trailing `/` (`None`: from `Host`).
    pub public_url: Option<Arc<str>>,
}

/// The content type of `GET /metrics` (prometheus-client writes OpenMetrics).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format (0.0.4), what `/metrics` serves unless the
/// client asks for OpenMetrics.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `cfg.bind` and serves until `shutdown` is cancelled, then finishes
/// the requests in flight (axum graceful shutdown).
pub async fn serve(
    cfg: ApiConfig,
    state: ApiState,
    shutdown: CancellationToken,
) -> Result<(), std::io::Error> {
    let listener = bind(&cfg).await?;
    serve_on(listener, state, shutdown).await
}

/// Binds the API address (split from [`serve_on`] so callers can learn the
/// port when binding port 0).
pub async fn bind(cfg: &ApiConfig) -> Result<TcpListener, std::io::Error> {
    if !cfg.bind.ip().is_loopback() {
        tracing::warn!(
            bind = %cfg.bind,
            "the HTTP API is not bound to loopback: /api and /fhir need bearer tokens \
             (junction token add), which travel in clear over plain HTTP; \
             put a TLS-terminating proxy in front"
        );
    }
    TcpListener::bind(cfg.bind).await.map_err(|err| {
        std::io::Error::new(
            err.kind(),
            format!("cannot bind the HTTP API on {}: {err}", cfg.bind),
        )
    })
}

/// Serves on an already bound listener until `shutdown` is cancelled.
pub async fn serve_on(
    listener: TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> Result<(), std::io::Error> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "HTTP API listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    tracing::info!(%addr, "HTTP API stopped");
    Ok(())
}

/// Every route behind the access layer, for [`serve_on`] and for tests.
pub fn router(state: ApiState) -> Router {
    let access = state.access.clone();
    let public_url = state.public_url.clone();
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/messages", get(search_messages))
        .route("/api/messages/{id}", get(get_message))
        .route("/api/messages/{id}/replay", post(delivery::replay))
        .route("/api/queues", get(delivery::queues))
        .route(
            "/api/queues/{destination}/retry",
            post(delivery::retry_pending),
        )
        .route("/api/deliveries", get(delivery::deliveries))
        .route("/api/deliveries/{id}/retry", post(delivery::retry))
        .route("/api/dead-letters", get(delivery::dead_letters))
        .route("/api/dead-letters/retry", post(delivery::retry_dead))
        .route("/api/events", get(events::stream))
        .merge(dashboard::routes())
        .fallback(not_found)
        .with_state(state)
        .merge(fhir::router(access.store().clone(), public_url))
        .merge(crate::access::http::router(access.clone()))
        .layer(axum::middleware::from_fn(no_empty_parameters))
        .layer(axum::middleware::from_fn_with_state(
            access,
            crate::access::guard,
        ))
        .layer(axum::middleware::from_fn(method_not_allowed_body))
}

/// An `/api` parameter given with no value (`?control_id=`, `?destination`)
/// is a 400 naming it, on every endpoint: read as "no filter" it would widen
/// a search or an operation beyond what was asked (a script's `?control_id=$X`
/// with `$X` empty would list the whole journal, a replay's `?destination=`
/// would go to every destination). Runs after the access guard, so an
/// unauthenticated request is still a 401. (`/fhir` follows FHIR search,
/// where an empty parameter is ignored.)
async fn no_empty_parameters(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.uri().path().starts_with("/api/") {
        let query = request.uri().query().unwrap_or("").as_bytes();
        if let Some((name, _)) = form_urlencoded::parse(query)
            .find(|(name, value)| !name.is_empty() && value.trim().is_empty())
        {
            return ApiError::BadRequest(format!(
                "`{name}` is empty: give it a value, or leave the parameter out"
            ))
            .into_response();
        }
    }
    next.run(request).await
}

/// axum answers a known path asked with another method 405 with an empty
/// body: give it the body every other error of that area has (an
/// OperationOutcome under `/fhir`, `{"error": ...}` elsewhere), keeping the
/// `Allow` header.
async fn method_not_allowed_body(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let fhir = request.uri().path().starts_with("/fhir");
    let method = request.method().clone();
    let response = next.run(request).await;
    if response.status() != StatusCode::METHOD_NOT_ALLOWED
        || response
            .headers()
            .contains_key(axum::http::header::CONTENT_TYPE)
    {
        return response;
    }
    let allow = response.headers().get(axum::http::header::ALLOW).cloned();
    let message = format!(
        "method {method} is not allowed here, expected {}",
        allow
            .as_ref()
            .and_then(|a| a.to_str().ok())
            .unwrap_or("another method")
    );
    let mut answer = if fhir {
        let outcome = serde_json::json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "not-supported", "diagnostics": message}]
        });
        (
            StatusCode::METHOD_NOT_ALLOWED,
            [(axum::http::header::CONTENT_TYPE, fhir::FHIR_JSON)],
            outcome.to_string(),
        )
            .into_response()
    } else {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            Json(ErrorBody { error: message }),
        )
            .into_response()
    };
    if let Some(allow) = allow {
        answer
            .headers_mut()
            .insert(axum::http::header::ALLOW, allow);
    }
    answer
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("the journal could not be read")]
    Journal(#[from] crate::journal::JournalError),
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(err) => {
                tracing::error!(error = %err, "API request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::Journal(err) => {
                tracing::error!(error = %err, "journal read failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

#[derive(Serialize)]
struct StatusBody {
    status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reasons: Vec<&'static str>,
}

async fn health() -> Json<StatusBody> {
    Json(StatusBody {
        status: "ok",
        reasons: Vec::new(),
    })
}

async fn ready(State(state): State<ApiState>) -> (StatusCode, Json<StatusBody>) {
    let mut reasons = Vec::new();
    if !state.ready.load(Ordering::Acquire) {
        reasons.push("the engine is starting or draining");
    }
    if !state.journal.is_healthy() {
        reasons.push(
            "the journal is not healthy (its writer stopped, or a commit failed in the \
             last 10 s and no message has been stored since: is the disk full?)",
        );
    }
    if reasons.is_empty() {
        (
            StatusCode::OK,
            Json(StatusBody {
                status: "ready",
                reasons,
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(StatusBody {
                status: "not ready",
                reasons,
            }),
        )
    }
}

async fn metrics(State(state): State<ApiState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(free) = state.journal.disk_free_bytes() {
        state
            .metrics
            .journal_disk_free
            .set(i64::try_from(free).unwrap_or(i64::MAX));
    }
    // OpenMetrics to a client that asks for it (Prometheus does); the
    // Prometheus text format (DESIGN) to everything else
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if openmetrics {
        return (
            [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
            state.metrics.encode(),
        )
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        prometheus_text(&state.metrics.encode()),
    )
        .into_response()
}

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter's `# HELP`
/// and `# TYPE` name its samples (`x_total`, where OpenMetrics names the family
/// `x`), `unknown` is `untyped`, and `# UNIT` and `# EOF` go.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .filter(|name| !name.ends_with("_total"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(if prefix == "# TYPE " && tail == "unknown" {
                    "untyped"
                } else {
                    tail
                });
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The query string of `GET /api/messages`; unknown parameters are refused
/// so a typo (`controlid=`) does not silently return everything.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchParams {
    control_id: Option<String>,
    sender: Option<String>,
    #[serde(rename = "type")]
    message_type: Option<String>,
    status: Option<String>,
    routing: Option<String>,
    remote_ref: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<u32>,
    /// Messages older than this journal id: the next page after one ending
    /// there (`received_at` is not unique, so a time does not page reliably).
    before: Option<i64>,
}

/// A `since`/`until` value: an RFC 3339 time (`2026-11-23T09:00:00Z`, with any
/// offset), a time with no offset (`2026-11-23T09:00`, UTC) or a date
/// (`2026-11-23`, midnight UTC). A time is never cut down to its date.
fn search_time(name: &str, value: Option<&str>) -> Result<Option<jiff::Timestamp>, ApiError> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(t) = value.parse::<jiff::Timestamp>() {
        return Ok(Some(t));
    }
    let civil = match value.parse::<jiff::civil::DateTime>() {
        Ok(dt) if value.len() > 10 => Some(dt),
        // a date alone (jiff would also read a date out of a longer text)
        _ if value.len() == 10 => value
            .parse::<jiff::civil::Date>()
            .ok()
            .map(|d| d.to_datetime(jiff::civil::Time::midnight())),
        _ => None,
    };
    civil
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| Some(z.timestamp()))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "invalid {name} `{value}`, expected an RFC 3339 time (2026-11-23T09:00:00Z), a UTC time (2026-11-23T09:00) or a date (2026-11-23)"
            ))
        })
}

const ROUTINGS: &[&str] = &["routed", "unrouted", "failed"];

const STATUSES: &[&str] = &["accepted", "rejected", "garbage"];

impl SearchParams {
    fn into_query(self) -> Result<MessageQuery, ApiError> {
        if let Some(status) = self.status.as_deref() {
            if !STATUSES.contains(&status) {
                return Err(ApiError::BadRequest(format!(
                    "invalid status `{status}`, expected one of accepted, rejected, garbage"
                )));
            }
        }
        if let Some(routing) = self.routing.as_deref() {
            if !ROUTINGS.contains(&routing) {
                return Err(ApiError::BadRequest(format!(
                    "invalid routing `{routing}`, expected one of routed, unrouted, failed"
                )));
            }
        }
        if let Some(limit) = self.limit {
            if limit == 0 || limit > MAX_LIMIT {
                return Err(ApiError::BadRequest(format!(
                    "invalid limit {limit}, expected 1 to {MAX_LIMIT}"
                )));
            }
        }
        Ok(MessageQuery {
            since: search_time("since", self.since.as_deref())?,
            until: search_time("until", self.until.as_deref())?,
            control_id: self.control_id,
            sender: self.sender,
            message_type: self.message_type,
            status: self.status,
            routing: self.routing,
            remote_ref: self.remote_ref,
            limit: self.limit,
            before: self.before,
        })
    }
}

/// The query of an endpoint that takes none: a parameter given (`?raw=true`)
/// is refused, not silently ignored, as everywhere else in `/api`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// [`NoParams`] checked: 400 naming the parameter.
fn no_params(params: Result<Query<NoParams>, QueryRejection>) -> Result<(), ApiError> {
    params.map(|_| ()).map_err(|rejection| {
        ApiError::BadRequest(format!(
            "invalid query: {} (this endpoint takes no parameters)",
            rejection.body_text()
        ))
    })
}

#[derive(Serialize)]
struct MessageList {
    messages: Vec<MessageSummary>,
    /// A full page: the `before` of the next (older) one.
    next_before: Option<i64>,
}

async fn search_messages(
    State(state): State<ApiState>,
    params: Result<Query<SearchParams>, QueryRejection>,
) -> Result<Json<MessageList>, ApiError> {
    let Query(params) = params.map_err(|rejection| {
        ApiError::BadRequest(format!("invalid query: {}", rejection.body_text()))
    })?;
    let query = params.into_query()?;
    let limit = query.limit.unwrap_or(crate::journal::DEFAULT_LIMIT) as usize;
    let messages = state.journal.search(query).await?;
    let next_before = (messages.len() == limit)
        .then(|| messages.last().map(|m| m.id))
        .flatten();
    Ok(Json(MessageList {
        messages,
        next_before,
    }))
}

/// One message with its trail: the message's fields, `routing` every routing
/// outcome (the first pass, then replays) and `deliveries` every delivery it
/// queued. (`routing` is the trail here, not the search list's latest
/// outcome, which is the trail's last entry: one key, not two of one name.)
async fn get_message(
    State(state): State<ApiState>,
    id: Result<Path<i64>, PathRejection>,
    params: Result<Query<NoParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    no_params(params)?;
    let Path(id) = id.map_err(|rejection| {
        ApiError::BadRequest(format!(
            "invalid message id: {}, expected an integer",
            rejection.body_text()
        ))
    })?;
    let Some(detail) = state.journal.get(id).await? else {
        return Err(ApiError::NotFound(format!("no message with id {id}")));
    };
    let routing = state.journal.routings(id).await?;
    let deliveries = state
        .journal
        .deliveries(crate::journal::DeliveryFilter {
            message_id: Some(id),
            limit: Some(MAX_LIMIT),
            ..Default::default()
        })
        .await?;
    let json = |value: Result<serde_json::Value, serde_json::Error>| {
        value.map_err(|e| ApiError::Internal(format!("cannot write the message as JSON: {e}")))
    };
    let mut body = json(serde_json::to_value(&detail))?;
    if let Some(fields) = body.as_object_mut() {
        fields.insert("routing".to_string(), json(serde_json::to_value(&routing))?);
        fields.insert(
            "deliveries".to_string(),
            json(serde_json::to_value(&deliveries))?,
        );
    }
    Ok(Json(body))
}

async fn not_found(uri: axum::http::Uri) -> Response {
    // (a `/fhir` path no FHIR route takes, such as one with an empty segment,
    // `/fhir/Patient/x/`: answered as FHIR answers, an OperationOutcome)
    if uri.path().starts_with("/fhir/") {
        return fhir::unknown_route().await.into_response();
    }
    ApiError::NotFound("no such route".to_string()).into_response()
}

#[cfg(test)]
mod tests;
