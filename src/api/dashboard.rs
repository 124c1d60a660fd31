//! The ops dashboard: one static page at `/` (with `/dashboard.js` and
//! `/dashboard.css`), and `GET /api/routes`, the route list it shows.
//!
//! The page is plain HTML, CSS and JavaScript compiled into the binary
//! (`include_str!`): no build step, no external asset, no CDN. In the browser
//! it reads what any ops client reads — `/ready`, `/metrics`, `/api/queues`,
//! `/api/dead-letters`, `/api/messages`, `/api/routes` and the live
//! `/api/events` stream — and refreshes every few seconds. A destination
//! whose oldest pending document waited 60 s (`/?stuck_after_secs=N`) is
//! shown as stuck; one with dead letters or not available, in red. When `/api`
//! answers 401 it asks for an ops token and keeps it in `sessionStorage`
//! only (gone when the tab closes), sending it as a bearer token.
//!
//! - `GET /`, `/dashboard.js`, `/dashboard.css`: the page; open (see
//!   [`crate::access::layer`]), since it holds no data.
//! - `GET /api/routes`: every route the engine loaded, as `{"routes":[...]}`
//!   with id, description, message patterns, origins, mapping, `when` and
//!   destinations; 503 when the engine runs without a delivery queue.
//!
//! It does not change anything: no retry or replay buttons (those are
//! `junction` commands and `POST /api/...` calls, deliberate acts).
//!
//! # Invariants
//! - The page shows identifiers only (control id, type, sender, destination,
//!   route, ops-facing error texts), never message content: it calls no
//!   endpoint that returns content (`/api/messages/{id}`, `/fhir`).
//! - The page is served with `Cache-Control: no-store` and a Content
//!   Security Policy allowing only same-origin scripts, styles and fetches
//!   (no inline script or style), so injected text cannot run.

use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::{ApiError, ApiState};
use crate::route::Route;

const PAGE: &str = include_str!("dashboard.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// Same-origin only, nothing inline, no framing, no form posts elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes (merged into [`super::router`] before its state).
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(page))
        .route("/dashboard.js", get(script))
        .route("/dashboard.css", get(style))
        .route("/api/routes", get(route_list))
}

/// A static asset with the headers every dashboard file carries.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 6] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    (headers, body).into_response()
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// One route as `GET /api/routes` lists it.
#[derive(Debug, Serialize)]
struct RouteInfo {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    /// `CODE^TRIGGER` patterns (`*` for any).
    messages: Vec<String>,
    /// `[sources.<id>]` it takes documents from (empty: any origin it allows).
    sources: Vec<String>,
    /// The mapping name; empty for a passthrough route.
    mapping: String,
    /// The `when` condition as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    when: Option<String>,
    destinations: Vec<String>,
}

impl From<&Route> for RouteInfo {
    fn from(route: &Route) -> Self {
        RouteInfo {
            id: route.id().to_string(),
            description: route.description().map(str::to_string),
            messages: route.messages(),
            sources: route.sources().map(str::to_string).collect(),
            mapping: route.mapping().to_string(),
            when: route.condition().map(str::to_string),
            destinations: route.destinations().map(str::to_string).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
struct RouteList {
    routes: Vec<RouteInfo>,
}

async fn route_list(
    State(state): State<ApiState>,
    params: Result<axum::extract::Query<super::NoParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RouteList>, ApiError> {
    super::no_params(params)?;
    let delivery = state
        .delivery
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("the delivery queue is not running".to_string()))?;
    Ok(Json(RouteList {
        routes: delivery
            .routes()
            .routes()
            .iter()
            .map(RouteInfo::from)
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_script_and_style() {
        assert!(PAGE.contains(r#"<script src="/dashboard.js" defer></script>"#));
        assert!(PAGE.contains(r#"<link rel="stylesheet" href="/dashboard.css">"#));
        // Nothing inline: the CSP would block it.
        assert!(!PAGE.contains("<script>"));
        assert!(!PAGE.contains("<style"));
        assert!(!PAGE.contains(" style="));
        let handler = regex::Regex::new(r"\son[a-z]+\s*=").unwrap();
        assert!(!handler.is_match(PAGE), "no inline event handlers");
        for text in [PAGE, SCRIPT, STYLE] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
    }

    #[test]
    fn the_script_reads_no_endpoint_that_returns_content() {
        assert!(!SCRIPT.contains("/fhir"));
        // `/api/messages/<id>` returns the raw message; only the search is used.
        assert!(!SCRIPT.contains("/api/messages/"));
        // Rendering goes through textContent, never HTML from data.
        assert!(!SCRIPT.contains("innerHTML"));
    }
}
