//! The operations endpoints of this module (behind [`super::guard`], which
//! checks the `ops` token):
//!
//! - `GET /api/audit?patient=&token=&limit=`: audit rows of `/fhir`
//!   requests, newest first, as `{"audit": [...]}` (`patient` is a Patient
//!   id, `token` a token name; `limit` 1 to [`MAX_AUDIT_LIMIT`], default
//!   [`DEFAULT_AUDIT_LIMIT`]).
//! - `GET /api/objections`: the register, as `{"objections": [...]}`.
//! - `POST /api/objections` with `{"nhs_number": "...", "note": "..."}`:
//!   201 when added, 200 when it was already there.
//! - `DELETE /api/objections/{nhs_number}`: 200 when removed, 404 when it
//!   was not there.
//! - `GET /api/objections/changes?nhs_number=&limit=`: every change to the
//!   register (added, note changed, removed) with when and who (the token's
//!   name, or the open loopback API), newest first, as `{"changes": [...]}`.
//!
//! Errors are JSON `{"error": "..."}`: 400 for bad input (an NHS number
//! failing modulus 11, an unknown parameter), 404, 500 (details logged,
//! without patient data).
//!
//! # Invariants
//! - Answers hold clinical data (NHS numbers, queries); nothing here logs it.
//! - The router has no fallback, so it merges into the main server's router.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::objections::{self, NhsNumber};
use super::tokens::{Access, Caller};
use super::{blocking, AccessError};
use crate::store::{is_id, AuditQuery};

/// Rows `GET /api/audit` returns when no `limit` is given.
pub const DEFAULT_AUDIT_LIMIT: u32 = 100;
/// The largest `limit` accepted.
pub const MAX_AUDIT_LIMIT: u32 = 1000;
/// The longest objection note accepted, in characters.
const MAX_NOTE_CHARS: usize = 1000;

/// `/api/audit` and `/api/objections` over `access`'s store.
pub fn router(access: Access) -> Router {
    Router::new()
        .route("/api/audit", get(audit))
        .route("/api/objections", get(list_objections).post(add_objection))
        .route("/api/objections/changes", get(objection_changes))
        .route("/api/objections/{nhs_number}", delete(remove_objection))
        .with_state(access)
}

#[derive(Debug, thiserror::Error)]
enum HttpError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// A body over the server's limit (413, not 400: the request may be
    /// right, only too big).
    #[error("{0}")]
    TooLarge(String),
    #[error("the record store could not be read or written")]
    Access(#[source] AccessError),
}

impl From<AccessError> for HttpError {
    fn from(err: AccessError) -> Self {
        match err {
            AccessError::InvalidNhsNumber { .. } => HttpError::BadRequest(err.to_string()),
            other => HttpError::Access(other),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = match &self {
            HttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HttpError::NotFound(_) => StatusCode::NOT_FOUND,
            HttpError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::Access(err) => {
                tracing::error!(error = %err, "access API failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let mut response = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // the rest of the body is never read, so the connection cannot
            // carry another request: said, so a client does not reuse it
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

fn bad_query(rejection: QueryRejection) -> HttpError {
    HttpError::BadRequest(format!("invalid query: {}", rejection.body_text()))
}

/// A list's `limit`: [`DEFAULT_AUDIT_LIMIT`] when not given, 1 to [`MAX_AUDIT_LIMIT`].
fn checked_limit(limit: Option<u32>) -> Result<u32, HttpError> {
    let limit = limit.unwrap_or(DEFAULT_AUDIT_LIMIT);
    if limit == 0 || limit > MAX_AUDIT_LIMIT {
        return Err(HttpError::BadRequest(format!(
            "invalid limit {limit}, expected 1 to {MAX_AUDIT_LIMIT}"
        )));
    }
    Ok(limit)
}

/// The query of `GET /api/audit`; unknown parameters are refused so a typo
/// does not silently list everything.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    patient: Option<String>,
    token: Option<String>,
    limit: Option<u32>,
    /// Rows older than this audit id: the next page after one ending there.
    before: Option<i64>,
}

async fn audit(
    State(access): State<Access>,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(params) = params.map_err(bad_query)?;
    let limit = checked_limit(params.limit)?;
    let patient = params.patient;
    if let Some(patient) = &patient {
        let id = patient.strip_prefix("Patient/").unwrap_or(patient);
        if !is_id(id) {
            return Err(HttpError::BadRequest(format!(
                "patient `{patient}` is not a Patient id, expected `id` or `Patient/id`"
            )));
        }
    }
    let query = AuditQuery {
        patient: patient.map(|p| p.strip_prefix("Patient/").unwrap_or(&p).to_string()),
        token: params.token,
        limit,
        before: params.before,
    };
    let store = access.store().clone();
    let rows = blocking(move || store.audit(&query)).await?;
    // a full page: the cursor of the next (older) one
    let next_before = (rows.len() == limit as usize)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(Json(json!({ "audit": rows, "next_before": next_before })).into_response())
}

/// Who made a change, as the objection trail records it: the token the guard
/// let through, or the open API on loopback (no token asked).
fn changed_by(caller: Option<Extension<Caller>>) -> String {
    match caller {
        Some(Extension(caller)) => format!("token {}", caller.name),
        None => "loopback API (no token)".to_string(),
    }
}

/// The query of `GET /api/objections/changes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesParams {
    nhs_number: Option<String>,
    limit: Option<u32>,
}

async fn objection_changes(
    State(access): State<Access>,
    params: Result<Query<ChangesParams>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(params) = params.map_err(bad_query)?;
    let limit = checked_limit(params.limit)?;
    let number = match params.nhs_number {
        Some(text) => Some(NhsNumber::parse(&text)?),
        None => None,
    };
    let store = access.store().clone();
    let rows =
        tokio::task::spawn_blocking(move || objections::changes(&store, number.as_ref(), limit))
            .await
            .map_err(AccessError::from)??;
    Ok(Json(json!({ "changes": rows })).into_response())
}

async fn list_objections(State(access): State<Access>) -> Result<Response, HttpError> {
    let store = access.store().clone();
    let rows = blocking(move || store.list_objections()).await?;
    Ok(Json(json!({ "objections": rows })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewObjection {
    nhs_number: String,
    #[serde(default)]
    note: Option<String>,
}

async fn add_objection(
    State(access): State<Access>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<NewObjection>, JsonRejection>,
) -> Result<Response, HttpError> {
    let Json(body) = body.map_err(|rejection| {
        let text = rejection.body_text();
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                HttpError::TooLarge(format!("the body is too large: {text}"))
            }
            _ => HttpError::BadRequest(format!(
                "invalid body: {text}, expected {{\"nhs_number\": \"...\", \"note\": \"...\"}}"
            )),
        }
    })?;
    let number = NhsNumber::parse(&body.nhs_number)?;
    let note = body.note.filter(|n| !n.trim().is_empty());
    if note
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_NOTE_CHARS)
    {
        return Err(HttpError::BadRequest(format!(
            "the note is longer than {MAX_NOTE_CHARS} characters"
        )));
    }
    let store = access.store().clone();
    let stored = number.clone();
    let by = changed_by(caller);
    let added =
        tokio::task::spawn_blocking(move || objections::add(&store, &stored, note.as_deref(), &by))
            .await
            .map_err(AccessError::from)??;
    tracing::info!(added, "objection registered");
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "nhs_number": number.as_str(), "added": added })),
    )
        .into_response())
}

async fn remove_objection(
    State(access): State<Access>,
    caller: Option<Extension<Caller>>,
    nhs_number: Result<Path<String>, PathRejection>,
) -> Result<Response, HttpError> {
    let Path(nhs_number) = nhs_number.map_err(|rejection| {
        HttpError::BadRequest(format!("invalid path: {}", rejection.body_text()))
    })?;
    let number = NhsNumber::parse(&nhs_number)?;
    let store = access.store().clone();
    let stored = number.clone();
    let by = changed_by(caller);
    let removed = tokio::task::spawn_blocking(move || objections::remove(&store, &stored, &by))
        .await
        .map_err(AccessError::from)??;
    if !removed {
        return Err(HttpError::NotFound(format!(
            "{number} is not in the objections register"
        )));
    }
    tracing::info!("objection removed");
    Ok(Json(json!({ "nhs_number": number.as_str(), "removed": true })).into_response())
}
