//! FHIR HTTP destination: POSTs the transaction Bundle to a FHIR server's base URL.
//!
//! One HTTP client per destination (connections are reused), with the
//! destination's `timeout_secs` as the whole-request timeout. The request
//! carries `Content-Type` and `Accept: application/fhir+json` and, when
//! `token_env` or `token_file` is set, `Authorization: Bearer …`. The token is
//! read on every delivery (cheap; a rotated token file is picked up without a
//! restart); a missing one is a retryable error naming the variable or file.
//!
//! It does not follow redirects (a redirect means `url` is wrong: fix it), does
//! not split Bundles, and does not read the transaction-response Bundle beyond
//! the status.
//!
//! # Outcomes
//! - 2xx: delivered; `remote_ref` is the `Location` header, else `http <status>`.
//! - 408, 425, 429, 5xx, timeouts and connection errors: retryable.
//! - 401, 403: retryable, with a message to check the token (credentials can
//!   be fixed; the document is not at fault and must not be dead-lettered).
//! - 3xx: retryable, with a message to fix `url`.
//! - Every other 4xx: permanent (the server refused this document), with the
//!   status and the first OperationOutcome issue `code` (a FHIR code such as
//!   `invalid`, never `diagnostics`, which may quote patient data).
//!
//! # Invariants
//! - Tokens are never logged nor put in error messages.
//! - Messages hold no response text other than a validated FHIR code.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use reqwest::StatusCode;
use serde_json::Value;

use super::{Deliver, Delivered, DeliveryError, DeliveryItem};

const FHIR_JSON: &str = "application/fhir+json";
/// Most of an error response read to find its OperationOutcome.
const MAX_OUTCOME_BYTES: usize = 64 * 1024;
/// Longest `Location` kept as `remote_ref`.
const MAX_REF_CHARS: usize = 300;

/// Where the bearer token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Env(String),
    File(PathBuf),
}

/// POSTs documents to one FHIR server.
#[derive(Debug)]
pub struct FhirDestination {
    id: String,
    url: String,
    token: Option<TokenSource>,
    timeout: Duration,
    http: reqwest::Client,
}

impl FhirDestination {
    /// A destination POSTing to `url`. Fails only if the HTTP client cannot be
    /// built (TLS backend unavailable).
    pub fn new(
        id: &str,
        url: &str,
        token: Option<TokenSource>,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(30)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("junction/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(FhirDestination {
            id: id.to_string(),
            url: url.to_string(),
            token,
            timeout,
            http,
        })
    }

    /// `Bearer <token>` from the configured source, read now.
    fn authorization(&self) -> Result<Option<HeaderValue>, DeliveryError> {
        let token = match &self.token {
            None => return Ok(None),
            Some(TokenSource::Env(var)) => std::env::var(var).map_err(|e| {
                let why = match e {
                    std::env::VarError::NotPresent => "is not set",
                    std::env::VarError::NotUnicode(_) => "is not valid UTF-8",
                };
                DeliveryError::retry(format!(
                    "destination `{}`: environment variable `{var}` (token_env) {why}",
                    self.id
                ))
            })?,
            Some(TokenSource::File(path)) => std::fs::read_to_string(path).map_err(|e| {
                DeliveryError::retry(format!(
                    "destination `{}`: cannot read the token file {} (token_file): {e}",
                    self.id,
                    path.display()
                ))
            })?,
        };
        let token = token.trim();
        let source = match &self.token {
            Some(TokenSource::Env(var)) => format!("environment variable `{var}`"),
            Some(TokenSource::File(path)) => format!("token file {}", path.display()),
            None => String::new(),
        };
        if token.is_empty() {
            return Err(DeliveryError::retry(format!(
                "destination `{}`: the {source} is empty, expected a bearer token",
                self.id
            )));
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            DeliveryError::retry(format!(
                "destination `{}`: the {source} holds characters not allowed in an http header",
                self.id
            ))
        })?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    async fn post(&self, item: &DeliveryItem) -> Result<Delivered, DeliveryError> {
        let mut request = self
            .http
            .post(&self.url)
            .header(CONTENT_TYPE, FHIR_JSON)
            .header(ACCEPT, FHIR_JSON)
            .body(item.document.clone());
        if let Some(auth) = self.authorization()? {
            request = request.header(AUTHORIZATION, auth);
        }
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(MAX_REF_CHARS).collect::<String>());
        if status.is_success() {
            return Ok(Delivered {
                remote_ref: Some(location.unwrap_or_else(|| format!("http {}", status.as_u16()))),
            });
        }
        // The body is read only for the OperationOutcome code, and only so far;
        // failing to read it is fine.
        let body = read_prefix(response, MAX_OUTCOME_BYTES).await;
        let code = outcome_code(&body)
            .map(|c| format!(" (OperationOutcome issue code `{c}`)"))
            .unwrap_or_default();
        let id = &self.id;
        let n = status.as_u16();
        Err(match classify(status) {
            Class::Retry => DeliveryError::retry(format!(
                "destination `{id}`: the fhir server answered http {n}{code}"
            )),
            Class::Auth => DeliveryError::retry(format!(
                "destination `{id}`: the fhir server refused our credentials (http {n}){code}: \
                 check token_env/token_file; the document stays queued"
            )),
            Class::Redirect => DeliveryError::retry(format!(
                "destination `{id}`: the fhir server redirects (http {n}) to {}: set `url` to the address to POST to",
                location.as_deref().unwrap_or("nowhere")
            )),
            Class::Permanent => DeliveryError::permanent(format!(
                "destination `{id}`: the fhir server refused the document: http {n}{code}"
            )),
        })
    }

    fn transport_error(&self, e: &reqwest::Error) -> DeliveryError {
        if e.is_timeout() {
            return DeliveryError::retry(format!(
                "destination `{}`: no answer from {} within {} s",
                self.id,
                self.url,
                self.timeout.as_secs()
            ));
        }
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        DeliveryError::retry(format!("destination `{}`: {text}", self.id))
    }
}

impl Deliver for FhirDestination {
    fn deliver<'a>(
        &'a self,
        item: &'a DeliveryItem,
    ) -> BoxFuture<'a, Result<Delivered, DeliveryError>> {
        self.post(item).boxed()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Class {
    Retry,
    Auth,
    Redirect,
    Permanent,
}

fn classify(status: StatusCode) -> Class {
    match status.as_u16() {
        401 | 403 => Class::Auth,
        408 | 425 | 429 => Class::Retry,
        300..=399 => Class::Redirect,
        400..=499 => Class::Permanent,
        _ => Class::Retry,
    }
}

/// Up to `max` bytes of the response body (what was read when an error cuts it short).
async fn read_prefix(mut response: reqwest::Response, max: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < max {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body
}

/// The first OperationOutcome issue `code`, if it looks like a FHIR code
/// (lowercase letters and `-`, at most 40): nothing else from the body is kept.
fn outcome_code(body: &[u8]) -> Option<String> {
    let json: Value = serde_json::from_slice(body).ok()?;
    if json.get("resourceType").and_then(Value::as_str) != Some("OperationOutcome") {
        return None;
    }
    let code = json.get("issue")?.get(0)?.get("code")?.as_str()?;
    let valid = !code.is_empty()
        && code.len() <= 40
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
    valid.then(|| code.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        for (status, expected) in [
            (400, Class::Permanent),
            (404, Class::Permanent),
            (422, Class::Permanent),
            (408, Class::Retry),
            (425, Class::Retry),
            (429, Class::Retry),
            (500, Class::Retry),
            (503, Class::Retry),
            (401, Class::Auth),
            (403, Class::Auth),
            (302, Class::Redirect),
        ] {
            assert_eq!(
                classify(StatusCode::from_u16(status).unwrap()),
                expected,
                "{status}"
            );
        }
    }

    #[test]
    fn only_a_valid_issue_code_is_kept() {
        let check = |body: &str, expected: Option<&str>| {
            assert_eq!(outcome_code(body.as_bytes()).as_deref(), expected, "{body}");
        };
        check(
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid","diagnostics":"NHS number 9434765919 is wrong"}]}"#,
            Some("invalid"),
        );
        check(
            r#"{"resourceType":"OperationOutcome","issue":[{"code":"SMITH John"}]}"#,
            None,
        );
        check(
            r#"{"resourceType":"Patient","issue":[{"code":"invalid"}]}"#,
            None,
        );
        check("not json", None);
        check(r#"{"resourceType":"OperationOutcome","issue":[]}"#, None);
    }
}
