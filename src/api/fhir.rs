//! FHIR R4 reads of the record store (`/fhir/...`), as `application/fhir+json`.
//!
//! Routes (DESIGN.md §5):
//! - `GET /fhir/Patient?identifier=system|value` (or `identifier=value`, any
//!   system; `|value`, no system): a `searchset` Bundle of matching Patients.
//! - `GET /fhir/{Type}?patient={id}` (`id` or `Patient/id`): a `searchset`
//!   Bundle of that patient's current records of that type, narrowed by the
//!   type's token and date parameters (`code`, `category`, `status`, `date`,
//!   …: `fhir_search.rs`).
//! - `GET /fhir/{Type}/{id}`: the current version, with `ETag: W/"n"`;
//!   410 with an OperationOutcome when it was deleted.
//! - `GET /fhir/Patient/{id}/$everything`: a `searchset` Bundle of the
//!   Patient and every current record that belongs to it.
//! - `GET /fhir/{Type}/{id}/_history`: a `history` Bundle, newest first.
//! - `GET /fhir/metadata`: the CapabilityStatement saying all of the above.
//!
//! Every interaction takes `_pretty=true` (indented JSON) and `_format` of
//! JSON; searches and `$everything` take `_count`, `_offset` and
//! `_summary=count`; a search by patient takes `_sort` by a date
//! (`_sort=-date`: newest first).
//!
//! Unknown ids answer 404 and bad parameters 400, each with an
//! OperationOutcome. Searches refuse parameters they do not understand rather
//! than ignore them (a typo must not widen a search), and a search with no
//! criteria is refused: the store is never listed wholesale.
//!
//! # Authentication and audit
//! Not in the handlers: [`crate::access::guard`], layered around the whole
//! server, lets only `clinical` tokens through and writes an audit row per
//! request. To let it record *which patient* was read without parsing
//! bodies, every successful response carries a [`PatientsRead`] extension
//! listing the Patient ids whose data it returns.
//!
//! # Invariants
//! - Read only: nothing here writes to the store.
//! - Logs name the route and outcome, never identifiers or resource content.
//! - The router has no fallback, so it can be merged into the main server's
//!   router (axum refuses to merge two fallbacks); unknown `/fhir/...` paths
//!   get a 404 OperationOutcome from explicit routes instead (`/fhir` and
//!   anything deeper than an operation).

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::fhir_search::{self, Filter, Sort};
use crate::store::{is_id, patients_of, Record, RecordStore, StoreError};

/// The content type of every answer.
pub const FHIR_JSON: &str = "application/fhir+json";

/// Response extension: the ids of the Patients whose data a successful
/// response returns (for the audit layer; empty when nothing matched).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatientsRead(pub Vec<String>);

/// The `/fhir` routes over `store` (see the module docs). Merge into the
/// main server's router; wrap with the authentication and audit layer.
pub fn router(store: RecordStore, public_url: Option<Arc<str>>) -> Router {
    Router::new()
        .route("/fhir/metadata", get(metadata))
        .route("/fhir/{resource_type}", get(search))
        .route("/fhir/{resource_type}/{id}", get(read))
        .route("/fhir/{resource_type}/{id}/{operation}", get(operation))
        .route("/fhir/{resource_type}/{id}/_history/{version}", get(vread))
        .route("/fhir", get(unknown_route))
        .route("/fhir/", get(unknown_route))
        .route(
            "/fhir/{resource_type}/{id}/{operation}/{*rest}",
            get(unknown_route),
        )
        .layer(axum::middleware::from_fn(json_acceptable))
        .layer(axum::Extension(PublicUrl(public_url)))
        .with_state(store)
}

/// `[api] public_url` (without a trailing `/`), as a request extension.
#[derive(Debug, Clone)]
struct PublicUrl(Option<Arc<str>>);

/// The server's FHIR base URL for this request (`…/fhir`): from `[api]
/// public_url` when set, else [`base_url`] of its `Host` header.
struct Base(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Base {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Base(match parts.extensions.get::<PublicUrl>() {
            Some(PublicUrl(Some(public))) => format!("{public}/fhir"),
            _ => base_url(&parts.headers),
        }))
    }
}

/// A client whose `Accept` admits no JSON (only `application/fhir+xml`, say)
/// gets 406 and an OperationOutcome (in JSON, the one format served) rather
/// than a 200 whose body it cannot read. No `Accept`, `*/*`, `application/*`
/// or any JSON type go through.
async fn json_acceptable(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    if let Some(accept) = accept.filter(|a| !accepts_json(a)) {
        return FhirError::NotAcceptable(format!(
            "this server answers in JSON only (application/fhir+json); the request accepts `{}`",
            accept.chars().take(100).collect::<String>()
        ))
        .into_response();
    }
    // `_pretty=true` (a FHIR parameter of every interaction): indented JSON
    let pretty = match pretty_param(request.uri()) {
        Ok(pretty) => pretty,
        Err(e) => return e.into_response(),
    };
    let response = next.run(request).await;
    if !pretty {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return FhirError::BadRequest("the answer could not be read back".into()).into_response();
    };
    let text = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .map(axum::body::Body::from)
        .unwrap_or_else(|| axum::body::Body::from(bytes));
    Response::from_parts(parts, text)
}

/// `_pretty` from a query: `true` or `false` (absent: false).
fn pretty_param(uri: &Uri) -> Result<bool, FhirError> {
    let mut pretty = false;
    for (name, value) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if name == "_pretty" {
            pretty = match value.as_ref() {
                "true" => true,
                "false" => false,
                other => {
                    return Err(FhirError::BadRequest(format!(
                        "_pretty `{other}`, expected true or false"
                    )))
                }
            };
        }
    }
    Ok(pretty)
}

/// Whether an `Accept` value admits JSON (a media range not weighted `q=0`).
fn accepts_json(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        !refused
            && (media.is_empty()
                || media == "*/*"
                || media == "application/*"
                || media.ends_with("/json")
                || media.ends_with("+json")
                // FHIR DSTU2's name for it, which older clients still send
                || media == "application/json+fhir")
    })
}

/// An error answer: a status and an OperationOutcome.
#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("the record store could not be read")]
    Store(#[from] StoreError),
    #[error("the record store read did not finish")]
    Task(#[from] tokio::task::JoinError),
}

impl FhirError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            FhirError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid"),
            FhirError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            FhirError::Gone(_) => (StatusCode::GONE, "deleted"),
            FhirError::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, "not-supported"),
            FhirError::Store(_) | FhirError::Task(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "exception")
            }
        }
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            FhirError::Store(err) => tracing::error!(error = %err, "FHIR read failed"),
            FhirError::Task(err) => tracing::error!(error = %err, "FHIR read task failed"),
            _ => tracing::debug!(status = status.as_u16(), "FHIR read refused"),
        }
        let outcome = json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "error",
                "code": code,
                "diagnostics": self.to_string(),
            }]
        });
        fhir_json(status, &outcome)
    }
}

/// `value` as an `application/fhir+json` response.
fn fhir_json(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON))],
        value.to_string(),
    )
        .into_response()
}

/// A successful answer with the [`PatientsRead`] extension.
fn answer(value: &Value, patients: Vec<String>) -> Response {
    let mut response = fhir_json(StatusCode::OK, value);
    response.extensions_mut().insert(PatientsRead(patients));
    response
}

/// Runs a store read on a blocking thread.
async fn blocking<T, F>(store: RecordStore, f: F) -> Result<T, FhirError>
where
    T: Send + 'static,
    F: FnOnce(&RecordStore) -> Result<T, StoreError> + Send + 'static,
{
    Ok(tokio::task::spawn_blocking(move || f(&store)).await??)
}

/// `http://host/fhir`, from the request's Host header (only when it looks
/// like a host name or address; `localhost` otherwise).
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("http://{host}/fhir")
}

/// A name shaped like a resource type (a capital, then letters); whether
/// anything of that type is served is the route's answer (404 when not),
/// so a FHIR type the store never holds and a misspelt one read alike.
fn check_type(resource_type: &str) -> Result<(), FhirError> {
    let mut chars = resource_type.chars();
    let shaped = matches!(chars.next(), Some(c) if c.is_ascii_uppercase())
        && resource_type.len() <= 64
        && chars.all(|c| c.is_ascii_alphabetic());
    if shaped {
        Ok(())
    } else {
        Err(FhirError::BadRequest(format!(
            "`{resource_type}` is not a resource type, expected a name like Patient or Observation"
        )))
    }
}

fn check_id(id: &str) -> Result<(), FhirError> {
    if is_id(id) {
        Ok(())
    } else {
        Err(FhirError::BadRequest(format!(
            "`{id}` is not a FHIR id, expected 1-64 of A-Z a-z 0-9 - ."
        )))
    }
}

fn path_error(rejection: PathRejection) -> FhirError {
    FhirError::BadRequest(format!("invalid path: {}", rejection.body_text()))
}

/// A `searchset` Bundle of `resources`, each a `match`.
fn searchset(base: &str, links: Vec<Value>, total: usize, resources: &[Value]) -> Value {
    let entries: Vec<Value> = resources
        .iter()
        .map(|resource| {
            json!({
                "fullUrl": resource_url(base, resource),
                "resource": resource,
                "search": {"mode": "match"},
            })
        })
        .collect();
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": now_instant()},
        "type": "searchset",
        "total": total,
        "link": links,
    });
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    bundle
}

fn resource_url(base: &str, resource: &Value) -> String {
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let id = resource
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    format!("{base}/{resource_type}/{id}")
}

fn now_instant() -> String {
    let now = jiff::Timestamp::now();
    let rounded = now.round(jiff::Unit::Millisecond).unwrap_or(now);
    format!("{rounded:.3}")
}

/// The request's own URL, for the `self` link.
fn self_url(base: &str, uri: &Uri) -> String {
    let origin = base.trim_end_matches("/fhir");
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    format!("{origin}{path}")
}

/// Most entries one page of a search holds (a larger `_count` is lowered).
const MAX_COUNT: usize = 1000;

/// Which part of a search's matches a response holds: `_count` of them (all
/// when not given) from `_offset` (0 first). Matches come in the store's order
/// (the order they were first stored), so pages do not overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Page {
    count: Option<usize>,
    offset: usize,
    /// `_summary=count`: the total only, no entries.
    total_only: bool,
}

impl Page {
    /// Takes `_count`, `_offset` and `_summary` out of `params`.
    fn take(params: &mut Vec<(String, String)>) -> Result<Page, FhirError> {
        let mut page = Page::default();
        let mut error = None;
        params.retain(|(name, value)| {
            let number = || {
                value.trim().parse::<usize>().map_err(|_| {
                    FhirError::BadRequest(format!(
                        "{name} `{value}` is not a number, expected 0 or more"
                    ))
                })
            };
            match name.as_str() {
                "_count" => match number() {
                    Ok(n) => page.count = Some(n.min(MAX_COUNT)),
                    Err(e) => error = Some(e),
                },
                "_offset" => match number() {
                    Ok(n) => page.offset = n,
                    Err(e) => error = Some(e),
                },
                "_summary" => match value.as_str() {
                    "count" => page.total_only = true,
                    "false" => {}
                    other => {
                        error = Some(FhirError::BadRequest(format!(
                            "_summary `{other}` is not supported, expected count or false"
                        )))
                    }
                },
                _ => return true,
            }
            false
        });
        match error {
            Some(e) => Err(e),
            None => Ok(page),
        }
    }

    /// Entries a page holds: `_count`, else [`MAX_COUNT`] (never unbounded:
    /// a patient with years of results is paged like any other).
    fn page_size(&self) -> usize {
        self.count.unwrap_or(MAX_COUNT)
    }

    /// The range of `total` matches this page holds.
    fn range(&self, total: usize) -> std::ops::Range<usize> {
        let start = self.offset.min(total);
        if self.total_only {
            return start..start;
        }
        start..start.saturating_add(self.page_size()).min(total)
    }

    /// The Bundle's links: `self`, and `previous`/`next` when there are pages
    /// before or after, as the request's own URL with `_offset` changed.
    fn links(&self, base: &str, uri: &Uri, total: usize) -> Vec<Value> {
        let mut links = vec![json!({"relation": "self", "url": self_url(base, uri)})];
        let count = self.page_size();
        if count == 0 || self.total_only {
            return links;
        }
        let at = |offset: usize| {
            let origin = base.trim_end_matches("/fhir");
            let kept = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                .filter(|(name, _)| name != "_offset")
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect::<Vec<_>>();
            let query = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(kept)
                .append_pair("_offset", &offset.to_string())
                .finish();
            format!("{origin}{}?{query}", uri.path())
        };
        if self.offset > 0 {
            let previous = self.offset.saturating_sub(count).min(total);
            links.push(json!({"relation": "previous", "url": at(previous)}));
        }
        if self.offset.saturating_add(count) < total {
            links.push(json!({"relation": "next", "url": at(self.offset + count)}));
        }
        links
    }
}

/// `_format`: JSON is what this server answers.
fn check_format(value: &str) -> Result<(), FhirError> {
    if value == "json" || accepts_json(value) && !value.contains('*') {
        return Ok(());
    }
    Err(FhirError::BadRequest(format!(
        "unsupported _format `{value}`, expected json or application/fhir+json"
    )))
}

/// The parameters of `$everything` or `_history` other than paging: `_pretty`
/// and `_format` as everywhere, and, where `takes_type`, `_type` (a comma list
/// of resource types, returned); anything else is a 400 (never ignored: a
/// client asking for less must not be handed more without being told).
fn operation_params(
    operation: &str,
    params: Vec<(String, String)>,
    takes_type: bool,
) -> Result<Vec<String>, FhirError> {
    let mut types = Vec::new();
    for (name, value) in params {
        match name.as_str() {
            "_pretty" => {}
            "_format" => check_format(&value)?,
            "_type" if takes_type => {
                for t in value.split(',') {
                    check_type(t)?;
                    // a misspelt type must not read as "none of those"
                    if !crate::fhir_types::is_r4_resource_type(t) {
                        return Err(FhirError::BadRequest(format!(
                            "`{t}` in _type is not a FHIR R4 resource type"
                        )));
                    }
                    types.push(t.to_string());
                }
            }
            _ => {
                let expected = if takes_type {
                    "_type, _count, _offset, _summary=count"
                } else {
                    "_count, _offset, _summary=count"
                };
                return Err(FhirError::BadRequest(format!(
                    "unsupported parameter `{name}` for {operation}, expected {expected}"
                )));
            }
        }
    }
    Ok(types)
}

/// What a search asks for.
enum Criteria {
    /// `system|value` or `value` alternatives (commas are OR).
    Identifier(Vec<(Option<String>, String)>),
    /// A patient's records, those every filter accepts, in `_sort`'s order.
    Patient(String, Vec<Filter>, Option<Sort>),
}

/// Parses the search parameters of `GET /fhir/{resource_type}`.
fn criteria(resource_type: &str, params: Vec<(String, String)>) -> Result<Criteria, FhirError> {
    let mut identifier = None;
    let mut patient = None;
    let mut filters = Vec::new();
    let mut sort = None;
    for (name, value) in params {
        if resource_type != "Patient" && name == "_sort" {
            if sort.is_some() {
                return Err(FhirError::BadRequest(
                    "search parameter `_sort` given more than once, expected one".to_string(),
                ));
            }
            sort = Some(
                fhir_search::parse_sort(resource_type, &value).map_err(FhirError::BadRequest)?,
            );
            continue;
        }
        if resource_type != "Patient" {
            if let Some(filter) =
                fhir_search::parse(resource_type, &name, &value).map_err(FhirError::BadRequest)?
            {
                filters.push(filter);
                continue;
            }
        }
        let slot = match name.as_str() {
            "identifier" if resource_type == "Patient" => &mut identifier,
            // `subject` too, as clients ask for Observation and the like
            "patient" | "subject" | "subject:Patient" if resource_type != "Patient" => &mut patient,
            // (the middleware indents the answer)
            "_pretty" => continue,
            "_format" => {
                check_format(&value)?;
                continue;
            }
            _ => {
                let expected = if resource_type == "Patient" {
                    "`identifier`".to_string()
                } else {
                    std::iter::once("`patient`".to_string())
                        .chain(
                            fhir_search::capability(resource_type)
                                .map(|(name, _, _)| format!("`{name}`")),
                        )
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(FhirError::BadRequest(format!(
                    "unsupported search parameter `{name}` for {resource_type}, expected {expected}"
                )));
            }
        };
        if slot.is_some() {
            return Err(FhirError::BadRequest(format!(
                "search parameter `{name}` given more than once, expected one"
            )));
        }
        *slot = Some(value);
    }
    if let Some(identifier) = identifier {
        let mut alternatives = Vec::new();
        for one in identifier.split(',') {
            let (system, value) = match one.split_once('|') {
                Some((system, value)) => (Some(system.to_string()), value.to_string()),
                None => (None, one.to_string()),
            };
            if value.is_empty() {
                return Err(FhirError::BadRequest(
                    "identifier has no value, expected `system|value` or `value` (commas between alternatives)".to_string(),
                ));
            }
            alternatives.push((system, value));
        }
        return Ok(Criteria::Identifier(alternatives));
    }
    if let Some(patient) = patient {
        let id = patient.strip_prefix("Patient/").unwrap_or(&patient);
        if !is_id(id) {
            return Err(FhirError::BadRequest(format!(
                "patient `{patient}` is not a Patient id, expected `id` or `Patient/id`"
            )));
        }
        return Ok(Criteria::Patient(id.to_string(), filters, sort));
    }
    Err(FhirError::BadRequest(if resource_type == "Patient" {
        "a Patient search needs `identifier=system|value`".to_string()
    } else {
        format!("a search of {resource_type} needs `patient={{id}}`")
    }))
}

async fn search(
    State(store): State<RecordStore>,
    resource_type: Result<Path<String>, PathRejection>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
    Base(base): Base,
    uri: Uri,
) -> Result<Response, FhirError> {
    let Path(resource_type) = resource_type.map_err(path_error)?;
    check_type(&resource_type)?;
    // a type this server keeps no searchable records of (a typo such as
    // `AllergyIntolerances`, or one no mapping writes) is not "no matches"
    if resource_type != "Patient" && !PATIENT_TYPES.contains(&resource_type.as_str()) {
        return Err(FhirError::NotFound(format!(
            "`{resource_type}` is not searched here, expected Patient or one of {}",
            PATIENT_TYPES.join(", ")
        )));
    }
    let Query(mut params) = params.map_err(|rejection| {
        FhirError::BadRequest(format!("invalid query: {}", rejection.body_text()))
    })?;
    let page = Page::take(&mut params)?;
    let (resources, patients) = match criteria(&resource_type, params)? {
        Criteria::Identifier(alternatives) => {
            // commas are OR: each alternative's matches, each patient once
            let found = blocking(store, move |s| {
                let mut found: Vec<Value> = Vec::new();
                for (system, value) in &alternatives {
                    for patient in s.search_patient_by_identifier(system.as_deref(), value)? {
                        let id = patient.get("id").cloned();
                        if !found.iter().any(|p| p.get("id") == id.as_ref()) {
                            found.push(patient);
                        }
                    }
                }
                Ok(found)
            })
            .await?;
            // (the Patients read are those of the page shown, below)
            (found, Vec::new())
        }
        Criteria::Patient(patient, filters, sort) => {
            let id = patient.clone();
            let rtype = resource_type.clone();
            let mut found = blocking(store, move |s| s.search_by_patient(&rtype, &id)).await?;
            found.retain(|resource| filters.iter().all(|f| f.matches(resource)));
            if let Some(sort) = sort {
                sort.apply(&mut found);
            }
            // the patient asked about, also when nothing matched: "no
            // allergies" is an answer about them too
            (found, vec![patient])
        }
    };
    let total = resources.len();
    tracing::debug!(resource_type, total, "FHIR search");
    let links = page.links(&base, &uri, total);
    let shown = resources.get(page.range(total)).unwrap_or_default();
    // a Patient search reads the Patients of the page it shows (a shared
    // identifier matches thousands; `_count=1` shows one), or, when it shows
    // none (`_summary=count`, a page past the end), learns that the first
    // ten of them exist
    let patients = if resource_type == "Patient" {
        let audited = if shown.is_empty() {
            &resources[..resources.len().min(10)]
        } else {
            shown
        };
        audited
            .iter()
            .filter_map(|p| p.get("id").and_then(Value::as_str).map(str::to_string))
            .collect()
    } else {
        patients
    };
    let bundle = searchset(&base, links, total, shown);
    Ok(answer(&bundle, patients))
}

async fn read(
    State(store): State<RecordStore>,
    path: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let Path((resource_type, id)) = path.map_err(path_error)?;
    check_type(&resource_type)?;
    check_id(&id)?;
    read_params(params)?;
    let (rtype, rid) = (resource_type.clone(), id.clone());
    let record = blocking(store, move |s| s.read(&rtype, &rid)).await?;
    let Some(Record {
        version, resource, ..
    }) = record
    else {
        return Err(FhirError::NotFound(format!(
            "no {resource_type}/{id} in the record store"
        )));
    };
    let Some(resource) = resource else {
        return Err(FhirError::Gone(format!(
            "{resource_type}/{id} was deleted (version {version})"
        )));
    };
    let patients = patients_read(&resource_type, id, &resource);
    let etag = format!("W/\"{version}\"");
    // a conditional read of the version the client has: 304, no body (the
    // read is still audited as one, by the layer around this handler)
    let unchanged = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == etag || tag == &etag[2..] || tag == "*"
        });
    let last_modified = http_date(&resource);
    let mut response = if unchanged {
        let mut r = answer(&resource, patients);
        *r.status_mut() = axum::http::StatusCode::NOT_MODIFIED;
        *r.body_mut() = axum::body::Body::empty();
        r.headers_mut().remove(header::CONTENT_LENGTH);
        r
    } else {
        answer(&resource, patients)
    };
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    if let Some(Ok(modified)) = last_modified.map(|m| HeaderValue::from_str(&m)) {
        response
            .headers_mut()
            .insert(header::LAST_MODIFIED, modified);
    }
    Ok(response)
}

/// Whose record a read of `resource_type/id` touched (for the audit): the
/// Patient itself, or the patients another resource names.
fn patients_read(resource_type: &str, id: String, resource: &Value) -> Vec<String> {
    if resource_type == "Patient" {
        vec![id]
    } else {
        patients_of(resource)
    }
}

/// A resource's `meta.lastUpdated` as an HTTP date (`Last-Modified`).
fn http_date(resource: &Value) -> Option<String> {
    resource["meta"]["lastUpdated"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string())
}

/// A read takes `_pretty` and `_format` (JSON) only: `_summary`, `_elements`
/// or a typo is refused, never ignored (the whole resource is not what was
/// asked for).
fn read_params(
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<(), FhirError> {
    let Query(params) = params.map_err(|rejection| {
        FhirError::BadRequest(format!("invalid query: {}", rejection.body_text()))
    })?;
    for (name, value) in params {
        match name.as_str() {
            "_pretty" => {}
            "_format" => check_format(&value)?,
            _ => {
                return Err(FhirError::BadRequest(format!(
                    "unsupported parameter `{name}` for a read, expected _format or _pretty"
                )))
            }
        }
    }
    Ok(())
}

/// `GET /fhir/{type}/{id}/_history/{version}`: that version (vread), as the
/// history Bundle lists them; 410 for a version that is a deletion.
async fn vread(
    State(store): State<RecordStore>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, FhirError> {
    let Path((resource_type, id, version)) = path.map_err(path_error)?;
    check_type(&resource_type)?;
    check_id(&id)?;
    let Ok(wanted) = version.parse::<i64>() else {
        return Err(FhirError::BadRequest(format!(
            "`{version}` is not a version id, expected a number from the record's history"
        )));
    };
    read_params(params)?;
    let (rtype, rid) = (resource_type.clone(), id.clone());
    let versions = blocking(store, move |s| s.history(&rtype, &rid)).await?;
    let Some(record) = versions.into_iter().find(|r| r.version == wanted) else {
        return Err(FhirError::NotFound(format!(
            "no version {wanted} of {resource_type}/{id} in the record store"
        )));
    };
    let Some(resource) = record.resource else {
        return Err(FhirError::Gone(format!(
            "version {wanted} of {resource_type}/{id} is its deletion"
        )));
    };
    let patients = patients_read(&resource_type, id, &resource);
    let mut response = answer(&resource, patients);
    if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{wanted}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    if let Some(Ok(modified)) = http_date(&resource).map(|m| HeaderValue::from_str(&m)) {
        response
            .headers_mut()
            .insert(header::LAST_MODIFIED, modified);
    }
    Ok(response)
}

async fn operation(
    State(store): State<RecordStore>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Base(base): Base,
    uri: Uri,
) -> Result<Response, FhirError> {
    let Path((resource_type, id, operation)) = path.map_err(path_error)?;
    check_type(&resource_type)?;
    check_id(&id)?;
    match operation.as_str() {
        "$everything" if resource_type == "Patient" => {
            everything(store, id, &base, &uri).await
        }
        "_history" => history(store, resource_type, id, &base, &uri).await,
        _ => Err(FhirError::NotFound(format!(
            "unknown operation `{operation}` on {resource_type}, expected $everything (Patient) or _history"
        ))),
    }
}

async fn everything(
    store: RecordStore,
    id: String,
    base: &str,
    uri: &Uri,
) -> Result<Response, FhirError> {
    let pid = id.clone();
    let (found, record) = blocking(store, move |s| {
        let found = s.everything(&pid)?;
        // Only to tell "deleted" (410) from "never existed" (404).
        let record = match found {
            Some(_) => None,
            None => s.read("Patient", &pid)?,
        };
        Ok((found, record))
    })
    .await?;
    let Some(resources) = found else {
        return Err(match record {
            Some(record) => FhirError::Gone(format!(
                "Patient/{id} was deleted (version {})",
                record.version
            )),
            None => FhirError::NotFound(format!("no Patient/{id} in the record store")),
        });
    };
    // `_count` and `_offset` page it as they do a search
    let mut params: Vec<(String, String)> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let page = Page::take(&mut params)?;
    let types = operation_params("$everything", params, true)?;
    let mut resources = resources;
    if !types.is_empty() {
        resources.retain(|r| {
            r.get("resourceType")
                .and_then(Value::as_str)
                .is_some_and(|t| types.iter().any(|w| w == t))
        });
    }
    let total = resources.len();
    tracing::debug!(total, "FHIR Patient $everything");
    let links = page.links(base, uri, total);
    let shown = resources.get(page.range(total)).unwrap_or_default();
    let bundle = searchset(base, links, total, shown);
    Ok(answer(&bundle, vec![id]))
}

async fn history(
    store: RecordStore,
    resource_type: String,
    id: String,
    base: &str,
    uri: &Uri,
) -> Result<Response, FhirError> {
    let mut params: Vec<(String, String)> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let page = Page::take(&mut params)?;
    operation_params("_history", params, false)?;
    let (rtype, rid) = (resource_type.clone(), id.clone());
    let versions = blocking(store, move |s| s.history(&rtype, &rid)).await?;
    if versions.is_empty() {
        return Err(FhirError::NotFound(format!(
            "no {resource_type}/{id} in the record store"
        )));
    }
    let mut patients: Vec<String> = Vec::new();
    let total = versions.len();
    let shown = versions.get(page.range(total)).unwrap_or_default();
    let entries: Vec<Value> = shown
        .iter()
        .map(|record| {
            let url = format!("{}/{}", record.resource_type, record.id);
            let full_url = format!("{base}/{url}");
            match &record.resource {
                Some(resource) => {
                    let ids = if record.resource_type == "Patient" {
                        vec![record.id.clone()]
                    } else {
                        patients_of(resource)
                    };
                    for pid in ids {
                        if !patients.contains(&pid) {
                            patients.push(pid);
                        }
                    }
                    let (method, status) = if record.version == 1 {
                        ("POST", "201 Created")
                    } else {
                        ("PUT", "200 OK")
                    };
                    json!({
                        "fullUrl": full_url,
                        "resource": resource,
                        "request": {"method": method, "url": if method == "POST" { record.resource_type.clone() } else { url }},
                        "response": {
                            "status": status,
                            "etag": format!("W/\"{}\"", record.version),
                            "lastModified": record.last_updated,
                        },
                    })
                }
                None => json!({
                    "fullUrl": full_url,
                    "request": {"method": "DELETE", "url": url},
                    "response": {
                        "status": "204 No Content",
                        "etag": format!("W/\"{}\"", record.version),
                        "lastModified": record.last_updated,
                    },
                }),
            }
        })
        .collect();
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": now_instant()},
        "type": "history",
        "total": total,
        "link": page.links(base, uri, total),
    });
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    Ok(answer(&bundle, patients))
}

/// The resource types the shipped mappings write that belong to a patient
/// (searchable by `patient`). Other types can still be read by id.
const PATIENT_TYPES: &[&str] = &[
    "AllergyIntolerance",
    "Condition",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "Observation",
    "Provenance",
    "RelatedPerson",
    "ServiceRequest",
    "Specimen",
];

async fn metadata(Base(base): Base) -> Response {
    let read = json!({"code": "read"});
    let search = json!({"code": "search-type"});
    let history = json!({"code": "history-instance"});
    let vread = json!({"code": "vread"});
    let mut resources = vec![json!({
        "type": "Patient",
        "interaction": [read, vread, search, history],
        "versioning": "versioned",
        "readHistory": true,
        "conditionalRead": "not-match",
        "searchParam": [{
            "name": "identifier",
            "type": "token",
            "documentation": "system|value, value (any system) or |value (no system)"
        }],
        "operation": [{
            "name": "everything",
            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"
        }]
    })];
    resources.extend(PATIENT_TYPES.iter().map(|resource_type| {
        let mut params = vec![
            json!({
                "name": "patient",
                "type": "reference",
                "documentation": "id or Patient/id (required)"
            }),
            json!({
                "name": "subject",
                "type": "reference",
                "documentation": "the same as patient"
            }),
        ];
        params.extend(
            fhir_search::capability(resource_type).map(|(name, kind, documentation)| {
                json!({"name": name, "type": kind, "documentation": documentation})
            }),
        );
        params.push(json!({
            "name": "_count",
            "type": "number",
            "documentation": "entries per page (at most 1000), with next/previous links (_offset)"
        }));
        if fhir_search::capability(resource_type).any(|(_, kind, _)| kind == "date") {
            params.push(json!({
                "name": "_sort",
                "type": "special",
                "documentation": "one of the date parameters above, `-` first for newest first"
            }));
        }
        params.push(json!({
            "name": "_summary",
            "type": "token",
            "documentation": "count: the total only"
        }));
        json!({
            "type": resource_type,
            "interaction": [read, vread, search, history],
            "versioning": "versioned",
            "readHistory": true,
            "conditionalRead": "not-match",
            "searchParam": params
        })
    }));
    let statement = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now_instant(),
        "kind": "instance",
        "software": {"name": "Junction", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {
            "description": "Junction care-record store (read only)",
            "url": base
        },
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON],
        "rest": [{
            "mode": "server",
            "documentation": "Every resource type can be read by id; \
                              searches need identifier (Patient) or patient.",
            "resource": resources
        }]
    });
    fhir_json(StatusCode::OK, &statement)
}

pub(super) async fn unknown_route() -> FhirError {
    // (the path is not repeated: it may hold an identifier someone typed)
    FhirError::NotFound(
        "no FHIR route for this path, expected /fhir/{Type}, /fhir/{Type}/{id}, \
         /fhir/{Type}/{id}/_history[/{n}] or /fhir/Patient/{id}/$everything"
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// `criteria` as text: the parsed criteria or the error message.
    fn check(resource_type: &str, query: &[(&str, &str)], expected: &str) {
        let got = match criteria(resource_type, pairs(query)) {
            Ok(Criteria::Identifier(alternatives)) => alternatives
                .iter()
                .map(|(system, value)| format!("identifier {system:?} {value}"))
                .collect::<Vec<_>>()
                .join(" or "),
            Ok(Criteria::Patient(id, filters, None)) if filters.is_empty() => {
                format!("patient {id}")
            }
            Ok(Criteria::Patient(id, filters, sort)) => format!(
                "patient {id}, {} filters{}",
                filters.len(),
                if sort.is_some() { ", sorted" } else { "" }
            ),
            Err(err) => format!("error: {err}"),
        };
        assert_eq!(got, expected, "{resource_type} {query:?}");
    }

    #[test]
    fn search_criteria() {
        let nhs = "https://fhir.nhs.uk/Id/nhs-number";
        check(
            "Patient",
            &[("identifier", &format!("{nhs}|9434765919"))],
            &format!("identifier Some(\"{nhs}\") 9434765919"),
        );
        check(
            "Patient",
            &[("identifier", "9434765919")],
            "identifier None 9434765919",
        );
        check(
            "Patient",
            &[("identifier", "|L1")],
            "identifier Some(\"\") L1",
        );
        check(
            "Patient",
            &[("identifier", "sys|")],
            "error: identifier has no value, expected `system|value` or `value` (commas between alternatives)",
        );
        check(
            "Patient",
            &[("identifier", "a"), ("identifier", "b")],
            "error: search parameter `identifier` given more than once, expected one",
        );
        check(
            "Patient",
            &[],
            "error: a Patient search needs `identifier=system|value`",
        );
        check(
            "Patient",
            &[("name", "Smith")],
            "error: unsupported search parameter `name` for Patient, expected `identifier`",
        );
        check("Observation", &[("patient", "p1")], "patient p1");
        check(
            "Observation",
            &[("patient", "Patient/p1"), ("_format", "json")],
            "patient p1",
        );
        check(
            "Observation",
            &[("patient", "Group/g1")],
            "error: patient `Group/g1` is not a Patient id, expected `id` or `Patient/id`",
        );
        check(
            "Observation",
            &[("identifier", "x")],
            "error: unsupported search parameter `identifier` for Observation, expected \
             `patient`, `code`, `category`, `status`, `date`",
        );
        check(
            "Observation",
            &[
                ("patient", "p1"),
                ("code", "http://loinc.org|718-7"),
                ("date", "ge2026-01-01"),
                ("date", "lt2027"),
            ],
            "patient p1, 3 filters",
        );
        check(
            "Observation",
            &[("patient", "p1"), ("_sort", "-date")],
            "patient p1, 0 filters, sorted",
        );
        check(
            "Observation",
            &[("patient", "p1"), ("_sort", "date"), ("_sort", "-date")],
            "error: search parameter `_sort` given more than once, expected one",
        );
        check(
            "Patient",
            &[("identifier", "x"), ("_sort", "date")],
            "error: unsupported search parameter `_sort` for Patient, expected `identifier`",
        );
        check(
            "Observation",
            &[("patient", "p1"), ("date", "last week")],
            "error: date `last week` is not a date, expected an optional prefix (eq, ne, gt, \
             lt, ge, le, sa, eb) and YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss][zone]",
        );
        check(
            "Provenance",
            &[("patient", "p1"), ("code", "x")],
            "error: unsupported search parameter `code` for Provenance, expected `patient`",
        );
        check(
            "Encounter",
            &[],
            "error: a search of Encounter needs `patient={id}`",
        );
        check(
            "Encounter",
            &[("patient", "p1"), ("_format", "xml")],
            "error: unsupported _format `xml`, expected json or application/fhir+json",
        );
    }

    #[test]
    fn accept_must_admit_json() {
        for yes in [
            "",
            "*/*",
            "application/fhir+json",
            "application/json",
            "application/fhir+xml, application/fhir+json;q=0.9",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "application/*",
            "APPLICATION/FHIR+JSON; fhirVersion=4.0",
            "application/json+fhir",
        ] {
            assert!(accepts_json(yes), "{yes:?}");
        }
        for no in [
            "application/fhir+xml",
            "application/xml, text/xml",
            "text/html",
            "application/fhir+json;q=0, application/fhir+xml",
        ] {
            assert!(!accepts_json(no), "{no:?}");
        }
    }

    #[test]
    fn format_and_pretty_are_taken_by_every_search() {
        for format in [
            "json",
            "application/json",
            "application/fhir+json",
            "application/json+fhir",
        ] {
            check(
                "Observation",
                &[("patient", "p1"), ("_format", format), ("_pretty", "true")],
                "patient p1",
            );
        }
        check(
            "Observation",
            &[("patient", "p1"), ("_format", "xml")],
            "error: unsupported _format `xml`, expected json or application/fhir+json",
        );
        let uri = |q: &str| -> Uri { format!("/fhir/Patient/x?{q}").parse().unwrap() };
        assert!(pretty_param(&uri("_pretty=true")).unwrap());
        assert!(!pretty_param(&uri("_pretty=false")).unwrap());
        assert!(!pretty_param(&uri("a=b")).unwrap());
        assert!(pretty_param(&uri("_pretty=yes")).is_err());
    }

    #[test]
    fn subject_is_patient_for_other_types() {
        check("Observation", &[("subject", "Patient/p1")], "patient p1");
        check(
            "DocumentReference",
            &[("subject:Patient", "p1")],
            "patient p1",
        );
        check(
            "Observation",
            &[("subject", "p1"), ("patient", "p1")],
            "error: search parameter `patient` given more than once, expected one",
        );
        check(
            "Patient",
            &[("subject", "p1")],
            "error: unsupported search parameter `subject` for Patient, expected `identifier`",
        );
    }

    #[test]
    fn count_and_offset_page_a_search() {
        let take = |query: &[(&str, &str)]| {
            let mut params = pairs(query);
            let page = Page::take(&mut params).map_err(|e| e.to_string());
            (page, params.len())
        };
        assert_eq!(
            take(&[("patient", "p"), ("_count", "2"), ("_offset", "3")]),
            (
                Ok(Page {
                    count: Some(2),
                    offset: 3,
                    total_only: false,
                }),
                1
            )
        );
        let counted = take(&[("patient", "p"), ("_summary", "count")]).0.unwrap();
        assert!(counted.total_only);
        assert_eq!(counted.range(5), 0..0);
        assert_eq!(
            take(&[("_summary", "text")]).0,
            Err("_summary `text` is not supported, expected count or false".to_string())
        );
        assert_eq!(
            take(&[("_count", "50000")]).0.unwrap().count,
            Some(MAX_COUNT)
        );
        assert_eq!(
            take(&[("_count", "-1")]).0,
            Err("_count `-1` is not a number, expected 0 or more".to_string())
        );
        let page = |count, offset| Page {
            count,
            offset,
            total_only: false,
        };
        assert_eq!(page(None, 0).range(5), 0..5);
        assert_eq!(page(Some(2), 4).range(5), 4..5);
        assert_eq!(page(Some(2), 9).range(5), 5..5);
        assert_eq!(page(Some(0), 0).range(5), 0..0);

        let base = "http://127.0.0.1:8080/fhir";
        let uri: Uri = "/fhir/Observation?patient=p%201&_offset=2&_count=2"
            .parse()
            .unwrap();
        let links = page(Some(2), 2).links(base, &uri, 5);
        let url = |relation: &str| {
            links
                .iter()
                .find(|l| l["relation"] == relation)
                .map(|l| l["url"].as_str().unwrap().to_string())
        };
        assert_eq!(
            url("self").unwrap(),
            "http://127.0.0.1:8080/fhir/Observation?patient=p%201&_offset=2&_count=2"
        );
        assert_eq!(
            url("previous").unwrap(),
            "http://127.0.0.1:8080/fhir/Observation?patient=p+1&_count=2&_offset=0"
        );
        assert_eq!(
            url("next").unwrap(),
            "http://127.0.0.1:8080/fhir/Observation?patient=p+1&_count=2&_offset=4"
        );
        // the last page has no next; `_count=0` (the total only) no paging links
        assert!(page(Some(2), 4)
            .links(base, &uri, 5)
            .iter()
            .all(|l| l["relation"] != "next"));
        assert_eq!(page(Some(0), 0).links(base, &uri, 5).len(), 1);
    }

    #[test]
    fn base_url_comes_from_a_sane_host_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(base_url(&headers), "http://localhost/fhir");
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert_eq!(base_url(&headers), "http://127.0.0.1:8080/fhir");
        headers.insert(header::HOST, HeaderValue::from_static("evil.org/x?y"));
        assert_eq!(base_url(&headers), "http://localhost/fhir");
    }
}
