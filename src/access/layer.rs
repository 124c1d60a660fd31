//! The authentication and audit layer in front of every HTTP route
//! (`router.layer(axum::middleware::from_fn_with_state(access, guard))`).
//!
//! Which rule applies is decided from the request path alone, before any
//! route is matched, so a route added later is covered without touching
//! this file:
//! - `/health`, `/ready`, `/metrics`, and the dashboard page itself (`/`,
//!   `/dashboard.js`, `/dashboard.css`: static, no data; its data calls go
//!   to `/api` like any other client's): open.
//! - `/fhir` and `/fhir/...`: a `clinical` token; 401 (with
//!   `WWW-Authenticate: Bearer` and an OperationOutcome) when it is missing
//!   or not valid, 403 for an `ops` token. Every request, allowed or
//!   refused, gets an audit row before its answer goes out.
//! - `/api/audit...`: an `ops` token, always.
//! - everything else (`/api/...`, unknown paths): an `ops`
//!   token, unless operations are open (the server is bound to loopback);
//!   there a request with no token passes, and one with a token has it
//!   checked as anywhere else (so a change names who made it).
//!
//! # Invariants
//! - A `/fhir` answer leaves only after its audit row is committed; when the
//!   row cannot be written the answer is replaced by a 500 OperationOutcome.
//! - Logs carry the area, the status and the token's name, never the path,
//!   query, token or patient ids (those are in the audit trail).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::tokens::{Access, AuthFailure};
use super::{blocking, Role};
use crate::api::fhir::{PatientsRead, FHIR_JSON};
use crate::store::{now_instant, NewAuditEntry};

/// The purpose of use recorded when the request names none.
pub const UNSPECIFIED_PURPOSE: &str = "unspecified";

/// The header a client names its purpose of use in.
pub const PURPOSE_HEADER: &str = "x-purpose-of-use";

/// Longest purpose of use kept (longer values are cut).
const MAX_PURPOSE_CHARS: usize = 200;

/// Which rule a path falls under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Open,
    Fhir,
    /// `always_token`: a token even when operations are open (`/api/audit`).
    Operations {
        always_token: bool,
    },
}

/// The rule for `path` (see the module docs).
pub fn area(path: &str) -> Area {
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    match path {
        "/health" | "/ready" | "/metrics" => Area::Open,
        // The dashboard's static page, script and style: no data in them.
        "/" | "/dashboard.js" | "/dashboard.css" => Area::Open,
        _ if under("/fhir") => Area::Fhir,
        _ => Area::Operations {
            always_token: under("/api/audit"),
        },
    }
}

/// The middleware: applies the rule of the request's path.
pub async fn guard(State(access): State<Access>, request: Request, next: Next) -> Response {
    match area(request.uri().path()) {
        Area::Open => next.run(request).await,
        Area::Fhir => fhir(&access, request, next).await,
        Area::Operations { always_token } => operations(&access, always_token, request, next).await,
    }
}

fn authorization(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
}

/// `X-Purpose-Of-Use`, trimmed and cut to [`MAX_PURPOSE_CHARS`], else
/// [`UNSPECIFIED_PURPOSE`].
fn purpose(headers: &HeaderMap) -> String {
    let given = headers
        .get(PURPOSE_HEADER)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).trim().to_string())
        .unwrap_or_default();
    if given.is_empty() {
        UNSPECIFIED_PURPOSE.to_string()
    } else {
        given.chars().take(MAX_PURPOSE_CHARS).collect()
    }
}

/// `WWW-Authenticate` for a 401 (RFC 6750 §3).
fn challenge(failure: &AuthFailure) -> HeaderValue {
    HeaderValue::from_static(match failure {
        AuthFailure::Invalid => "Bearer realm=\"junction\", error=\"invalid_token\"",
        _ => "Bearer realm=\"junction\"",
    })
}

/// An OperationOutcome answer.
fn outcome(status: StatusCode, code: &str, diagnostics: &str) -> Response {
    let body = json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]
    });
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON))],
        body.to_string(),
    )
        .into_response()
}

async fn fhir(access: &Access, request: Request, next: Next) -> Response {
    let at = now_instant();
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().map(str::to_string);
    let purpose = purpose(request.headers());
    let caller = access.authenticate(authorization(request.headers())).await;
    let (token_name, role, response) = match caller {
        Ok(caller) if caller.role == Role::Clinical => {
            let (name, role) = (caller.name.clone(), caller.role);
            let mut request = request;
            request.extensions_mut().insert(caller);
            (Some(name), Some(role), next.run(request).await)
        }
        Ok(caller) => {
            let mut response = outcome(
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!(
                    "token `{}` has role {}; /fhir needs a token with role clinical",
                    caller.name, caller.role
                ),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"junction\", error=\"insufficient_scope\""),
            );
            (Some(caller.name), Some(caller.role), response)
        }
        Err(AuthFailure::Store(err)) => {
            tracing::error!(error = %err, "cannot check a FHIR request's token");
            let response = outcome(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "the token store could not be read",
            );
            (None, None, response)
        }
        Err(failure) => {
            let mut response = outcome(StatusCode::UNAUTHORIZED, "login", &failure.to_string());
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge(&failure));
            (None, None, response)
        }
    };
    let status = response.status().as_u16();
    // what was read; for a request refused or failed, the patients it asked
    // for, so the trail of a patient shows the attempts too
    let mut patients = response
        .extensions()
        .get::<PatientsRead>()
        .map(|read| read.0.clone())
        .unwrap_or_else(|| patients_asked_for(&path, query.as_deref()));
    // a refused `Patient?identifier=` search by NHS number (the usual way
    // to name a patient) names the Patients holding that number
    if patients.is_empty() && status >= 400 {
        let asked = identifiers_asked_for(&path, query.as_deref());
        if !asked.is_empty() {
            let store = access.store().clone();
            match blocking(move || resolve_identifiers(&store, &asked)).await {
                Ok(ids) => patients = ids,
                Err(err) => tracing::warn!(
                    error = %err,
                    "cannot resolve a refused identifier search's patients; audited without them"
                ),
            }
        }
    }
    let entry = NewAuditEntry {
        at,
        token_name: token_name.clone(),
        role: role.map(|r| r.as_str().to_string()),
        method,
        path,
        query,
        patients,
        status,
        purpose,
    };
    let store = access.store().clone();
    match blocking(move || store.append_audit(&entry)).await {
        Ok(_) => {
            let token = token_name.as_deref().unwrap_or("-");
            if status < 400 {
                tracing::debug!(token, status, "FHIR read audited");
            } else {
                tracing::info!(token, status, "FHIR request refused or failed (audited)");
            }
            response
        }
        Err(err) => {
            tracing::error!(
                error = %err,
                status,
                "cannot write the audit row of a FHIR request; answering 500 instead"
            );
            outcome(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "the request could not be audited, so it is not served",
            )
        }
    }
}

/// The patients a `/fhir` request names: `Patient/{id}` in its path, and
/// the `patient` and `subject` search values (`Patient/{id}` or an id; a
/// comma between several), as written (percent-decoded); each once.
fn patients_asked_for(path: &str, query: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |id: &str| {
        // `Patient/{id}`, or a whole URL of one (`http://host/fhir/Patient/{id}`)
        let id = id.rsplit_once("Patient/").map_or(id, |(_, id)| id).trim();
        if !id.is_empty() && !id.contains('/') && !out.iter().any(|o| o == id) {
            out.push(id.to_string());
        }
    };
    // (read as a URL, so the path's and query's escapes are decoded)
    let Ok(url) = reqwest::Url::parse(&format!(
        "http://fhir{path}{}",
        query.map(|q| format!("?{q}")).unwrap_or_default()
    )) else {
        return out;
    };
    let mut parts = url.path_segments().into_iter().flatten();
    if let (Some("fhir"), Some("Patient"), Some(id)) = (parts.next(), parts.next(), parts.next()) {
        if !id.starts_with('$') && !id.starts_with('_') {
            add(id);
        }
    }
    for (key, value) in url.query_pairs() {
        let name = key.split(':').next().unwrap_or("");
        if matches!(name, "patient" | "subject") {
            value.split(',').for_each(&mut add);
        }
    }
    out
}

/// The most NHS numbers of a refused search that are resolved.
const MAX_RESOLVED_IDENTIFIERS: usize = 10;

/// The most Patient ids one refused search is audited under (an NHS number
/// is held by one live Patient and those it retired).
const MAX_RESOLVED_PATIENTS: usize = 10;

/// The NHS numbers (`identifier=https://fhir.nhs.uk/Id/nhs-number|N`, commas
/// between alternatives) of a `/fhir/Patient` search, as ten digits, at most
/// [`MAX_RESOLVED_IDENTIFIERS`]. Only NHS numbers: they name one person, where
/// a local identifier may be shared by thousands (a placeholder MRN), and a
/// request with no token must not make the node read and audit them all.
fn identifiers_asked_for(path: &str, query: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if path.trim_end_matches('/') != "/fhir/Patient" {
        return out;
    }
    let Some(query) = query else {
        return out;
    };
    let Ok(url) = reqwest::Url::parse(&format!("http://fhir{path}?{query}")) else {
        return out;
    };
    for (key, value) in url.query_pairs() {
        if key != "identifier" {
            continue;
        }
        for one in value.split(',') {
            let Some((system, value)) = one.split_once('|') else {
                continue;
            };
            if let Some(digits) = crate::store::nhs_number_of(system, value) {
                if out.len() < MAX_RESOLVED_IDENTIFIERS && !out.contains(&digits) {
                    out.push(digits);
                }
            }
        }
    }
    out
}

/// The ids of the Patients holding any of the NHS numbers `numbers`, each
/// once, at most [`MAX_RESOLVED_PATIENTS`].
fn resolve_identifiers(
    store: &crate::store::RecordStore,
    numbers: &[String],
) -> Result<Vec<String>, crate::store::StoreError> {
    let mut ids: Vec<String> = Vec::new();
    for number in numbers {
        let holders =
            store.search_patient_by_identifier(Some(crate::route::NHS_NUMBER_SYSTEM), number)?;
        for patient in holders {
            if let Some(id) = patient["id"].as_str() {
                if !ids.iter().any(|i| i == id) && ids.len() < MAX_RESOLVED_PATIENTS {
                    ids.push(id.to_string());
                }
            }
        }
    }
    Ok(ids)
}

/// A JSON `{"error": ...}` answer, as the rest of `/api` answers.
fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn operations(access: &Access, always_token: bool, request: Request, next: Next) -> Response {
    // (a request with a token is the token's to answer for, whatever host it
    // names: one through a proxy at `public_url`; s24b tester, I1. A web page
    // of another origin cannot send one without a preflight, which is not
    // answered)
    if !always_token && access.open_operations() && authorization(request.headers()).is_none() {
        if let Some(refusal) = not_addressed_to_loopback(request.headers()) {
            tracing::info!(status = 403, "open operations request refused: {refusal}");
            return json_error(StatusCode::FORBIDDEN, refusal);
        }
        // no token asked; one given is checked all the same below (a
        // clinical, revoked or unknown token is refused, not ignored) and
        // names who made a change (the objection trail)
        return next.run(request).await;
    }
    match access.authenticate(authorization(request.headers())).await {
        Ok(caller) if caller.role == Role::Ops => {
            let mut request = request;
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Ok(caller) => {
            tracing::info!(token = %caller.name, status = 403, "operations request refused");
            let mut response = json_error(
                StatusCode::FORBIDDEN,
                &format!(
                    "token `{}` has role {}; this endpoint needs a token with role ops",
                    caller.name, caller.role
                ),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"junction\", error=\"insufficient_scope\""),
            );
            response
        }
        Err(AuthFailure::Store(err)) => {
            tracing::error!(error = %err, "cannot check an operations request's token");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the token store could not be read",
            )
        }
        Err(failure) => {
            tracing::info!(status = 401, "operations request refused: {failure}");
            let mut response = json_error(StatusCode::UNAUTHORIZED, &failure.to_string());
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge(&failure));
            response
        }
    }
}

/// The open (token-less) operations API answers only requests addressed to
/// it as a loopback host, and none a web page of another origin sends: a page
/// on the internet whose name is made to resolve to 127.0.0.1 (DNS rebinding)
/// or that posts across sites must not read messages or replay them through a
/// browser on this machine.
fn not_addressed_to_loopback(headers: &HeaderMap) -> Option<&'static str> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if host.is_some_and(|h| !is_loopback_authority(h)) {
        return Some(
            "the open loopback API answers requests to a loopback address only (the Host header names another host)",
        );
    }
    let origin = headers.get(header::ORIGIN).and_then(|h| h.to_str().ok());
    let cross_site = origin.is_some_and(|o| {
        let rest = o
            .strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"));
        !rest.is_some_and(is_loopback_authority)
    });
    cross_site
        .then_some("the open loopback API does not answer requests from web pages of other origins")
}

/// `localhost`, `127.x.y.z`, `[::1]`, with or without a port.
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_search_is_resolved_by_its_nhs_numbers_only() {
        let nhs = "https://fhir.nhs.uk/Id/nhs-number";
        let q = |query: &str| identifiers_asked_for("/fhir/Patient", Some(query));
        assert_eq!(q(&format!("identifier={nhs}%7C9434765919")), ["9434765919"]);
        // spaced, and alternatives, each once
        assert_eq!(
            q(&format!(
                "identifier={nhs}|943 476 5919,{nhs}|9434765919,{nhs}|4010232137"
            )),
            ["9434765919", "4010232137"]
        );
        // a local identifier (a placeholder MRN thousands share), or no system
        assert!(q("identifier=urn:local|RAL1234567").is_empty());
        assert!(q("identifier=RAL1234567").is_empty());
        assert!(identifiers_asked_for("/fhir/Observation", Some("identifier=x")).is_empty());
        let many: Vec<String> = (0..20).map(|_| format!("{nhs}|9434765919")).collect();
        assert_eq!(q(&format!("identifier={}", many.join(","))).len(), 1);
    }

    #[test]
    fn the_open_api_answers_loopback_addressed_requests_only() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        for ok in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "[::1]:8080",
            "127.1.2.3",
        ] {
            assert_eq!(
                not_addressed_to_loopback(&headers(&[("host", ok)])),
                None,
                "{ok}"
            );
        }
        assert_eq!(not_addressed_to_loopback(&HeaderMap::new()), None);
        for bad in [
            "evil.example:8080",
            "10.0.0.1:8080",
            "127.0.0.1.evil.example",
        ] {
            assert!(
                not_addressed_to_loopback(&headers(&[("host", bad)])).is_some(),
                "{bad}"
            );
        }
        let same = [
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ];
        assert_eq!(not_addressed_to_loopback(&headers(&same)), None);
        let cross = [
            ("host", "127.0.0.1:8080"),
            ("origin", "https://evil.example"),
        ];
        assert!(not_addressed_to_loopback(&headers(&cross)).is_some());
        let null = [("host", "127.0.0.1:8080"), ("origin", "null")];
        assert!(not_addressed_to_loopback(&headers(&null)).is_some());
    }

    #[test]
    fn areas() {
        for (path, expected) in [
            ("/health", Area::Open),
            ("/ready", Area::Open),
            ("/metrics", Area::Open),
            (
                "/metrics/x",
                Area::Operations {
                    always_token: false,
                },
            ),
            ("/fhir", Area::Fhir),
            ("/fhir/", Area::Fhir),
            ("/fhir/Patient/1", Area::Fhir),
            (
                "/fhirx",
                Area::Operations {
                    always_token: false,
                },
            ),
            (
                "/api/messages",
                Area::Operations {
                    always_token: false,
                },
            ),
            ("/api/audit", Area::Operations { always_token: true }),
            ("/api/audit/", Area::Operations { always_token: true }),
            (
                "/api/auditx",
                Area::Operations {
                    always_token: false,
                },
            ),
            ("/", Area::Open),
            ("/dashboard.js", Area::Open),
            (
                "/dashboard.jsx",
                Area::Operations {
                    always_token: false,
                },
            ),
            (
                "//fhir/Patient",
                Area::Operations {
                    always_token: false,
                },
            ),
        ] {
            assert_eq!(area(path), expected, "{path}");
        }
    }

    #[test]
    fn purpose_of_use() {
        let mut headers = HeaderMap::new();
        assert_eq!(purpose(&headers), "unspecified");
        headers.insert(PURPOSE_HEADER, HeaderValue::from_static("  "));
        assert_eq!(purpose(&headers), "unspecified");
        headers.insert(PURPOSE_HEADER, HeaderValue::from_static(" TREAT "));
        assert_eq!(purpose(&headers), "TREAT");
        let long = "x".repeat(500);
        headers.insert(PURPOSE_HEADER, HeaderValue::from_str(&long).unwrap());
        assert_eq!(purpose(&headers).len(), MAX_PURPOSE_CHARS);
    }

    /// A refused or failed request is audited with the patients it asked for.
    #[test]
    fn the_patients_a_request_asks_for() {
        let asked = |path: &str, query: Option<&str>| patients_asked_for(path, query);
        assert_eq!(asked("/fhir/Patient/p1", None), ["p1"]);
        assert_eq!(
            asked("/fhir/Patient/p1/$everything", Some("_type=Foo")),
            ["p1"]
        );
        assert_eq!(asked("/fhir/Patient/p1/_history/2", None), ["p1"]);
        assert_eq!(
            asked(
                "/fhir/Observation",
                Some("patient=Patient%2Fp2,p3&subject:Patient=p2")
            ),
            ["p2", "p3"]
        );
        assert!(asked("/fhir/Patient", Some("identifier=a|b")).is_empty());
        assert!(asked("/fhir/metadata", None).is_empty());
        assert_eq!(
            asked(
                "/fhir/Observation",
                Some("subject=http%3A%2F%2Fh%2Ffhir%2FPatient%2Fp4")
            ),
            ["p4"]
        );
    }
}
