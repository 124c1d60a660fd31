//! [`MeshClient`]: the MESH API v2 calls over HTTPS, with retries and chunking.
//!
//! Every call goes through [`MeshClient::execute`]: it signs the request, sends it,
//! reads the whole body and retries transient failures with exponential backoff and
//! jitter (idempotent calls only). The first chunk of a send is the exception and has
//! its own loop in [`MeshClient::post_first_chunk`].

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE,
};
use reqwest::StatusCode;
use serde_json::Value;
use tracing::{debug, info, warn};

use super::auth::Authenticator;
use super::config::{MeshMailboxConfig, Secret};
use super::payload;
use super::{MeshError, MessageId, MESH_V2};

/// Longest wait between two retries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Longest error text kept from a response body that is not MESH's JSON.
const MAX_ERROR_TEXT: usize = 200;

/// One document to send.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// Recipient mailbox (`mex-To`).
    pub to: String,
    /// Workflow id (`mex-WorkflowID`), agreed with the recipient.
    pub workflow_id: String,
    /// Our reference (`mex-LocalID`), unique per document and destination, e.g. a
    /// delivery id. Must carry NO patient data: MESH operators and tracking see it.
    /// Used to find an earlier attempt, so it must be stable across retries.
    pub local_id: String,
    /// Optional `mex-Subject` (no patient data either).
    pub subject: Option<String>,
    /// Optional `mex-FileName`.
    pub file_name: Option<String>,
    /// Optional content type of the decoded document (`mex-Content-Type`).
    pub content_type: Option<String>,
    /// The whole uncompressed document.
    pub body: Bytes,
    /// Set when an earlier send of this `local_id` may have reached MESH (every
    /// attempt after the first): tracking by local id is asked before posting.
    pub earlier_attempt: bool,
}

/// `DATA` (a document) or `REPORT` (a delivery or error report, empty body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageType {
    Data,
    Report,
    Other(String),
}

/// The `mex-*` headers of a downloaded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedHeaders {
    pub message_id: MessageId,
    pub from: String,
    pub to: String,
    pub workflow_id: String,
    pub message_type: MessageType,
    pub local_id: Option<String>,
    pub subject: Option<String>,
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    /// `mex-Content-Checksum` as the sender gave it.
    pub checksum: Option<String>,
    /// `mex-StatusCode`: `00` on success; for a REPORT the error code.
    pub status_code: Option<String>,
    pub status_description: Option<String>,
    /// For a REPORT: the message it reports on.
    pub linked_message_id: Option<String>,
    /// How many chunks the message came in.
    pub chunk_count: u32,
}

/// A downloaded message: headers and the reassembled, decompressed body.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: ReceivedHeaders,
    pub body: Bytes,
    /// Why the content cannot be used as sent: a chunk labelled gzip that is
    /// not (`body` then holds the chunks as received), or a checksum that does
    /// not match the body. Downloading it again gives the same bytes, so the
    /// receiver keeps it, rejected with this reason, rather than leaving it in
    /// the inbox to be downloaded at every poll.
    pub problem: Option<String>,
}

/// One page of inbox message ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxPage {
    pub messages: Vec<MessageId>,
    /// `links.next`: pass it back to [`MeshClient::inbox_page`] for the next page.
    pub next: Option<String>,
}

/// What tracking says about a message we sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracking {
    pub message_id: MessageId,
    pub local_id: Option<String>,
    pub workflow_id: Option<String>,
    pub recipient: Option<String>,
    /// Lower-cased: `uploading`, `accepted`, `acknowledged`, `undeliverable`, `error`.
    pub status: Option<String>,
    pub status_code: Option<String>,
    pub status_description: Option<String>,
}

/// A response read to the end.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// How one attempt ended, for the retry decision.
enum Attempt {
    Answered(Reply),
    /// The connection could not be made: the request surely never arrived.
    NotConnected(reqwest::Error),
    /// Sent (maybe in part) and then failed: timeout, reset, truncated body.
    Failed(reqwest::Error),
}

/// A client for one MESH mailbox. Cheap to share behind an `Arc`; safe to use
/// from several tasks at once.
#[derive(Debug)]
pub struct MeshClient {
    http: reqwest::Client,
    base: String,
    mailbox: String,
    auth: Authenticator,
    chunk_size: usize,
    max_retries: u32,
    backoff: Duration,
    page_size: u32,
}

impl MeshClient {
    /// Builds a client: validates the configuration, loads the secrets from the
    /// environment or files, reads the TLS material.
    pub fn new(config: &MeshMailboxConfig) -> Result<Self, MeshError> {
        config.validate()?;
        let (password, shared_key) = config.load_secrets()?;
        Self::with_secrets(config, password, shared_key)
    }

    /// Builds a client with secrets the caller already holds (the `*_env` and
    /// `*_file` fields are ignored).
    pub fn with_secrets(
        config: &MeshMailboxConfig,
        password: Secret,
        shared_key: Secret,
    ) -> Result<Self, MeshError> {
        config.validate()?;
        let mailbox = config.mailbox.to_ascii_uppercase();
        let timeout = Duration::from_secs(config.timeout_secs);
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(30)))
            .user_agent(concat!("junction/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_file {
            let pem = read_file(&mailbox, "ca_file", path)?;
            let certificates =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| MeshError::Tls {
                    mailbox: mailbox.clone(),
                    field: "ca_file",
                    path: path.clone(),
                    source,
                })?;
            if certificates.is_empty() {
                return Err(MeshError::InvalidConfig {
                    mailbox,
                    field: "ca_file",
                    problem: format!("`{}` holds no PEM certificate", path.display()),
                });
            }
            // Trust the given bundle only (the NHS CA), not the public web roots.
            builder = builder.tls_built_in_root_certs(false);
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        if let (Some(cert_path), Some(key_path)) =
            (&config.client_cert_file, &config.client_key_file)
        {
            let mut pem = read_file(&mailbox, "client_cert_file", cert_path)?;
            pem.push(b'\n');
            pem.extend(read_file(&mailbox, "client_key_file", key_path)?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|source| MeshError::Tls {
                mailbox: mailbox.clone(),
                field: "client_cert_file",
                path: cert_path.clone(),
                source,
            })?;
            builder = builder.identity(identity);
        }
        if config.insecure_skip_verify {
            warn!(mailbox = %mailbox, "mesh: insecure_skip_verify is set, server certificates are not checked (sandbox only)");
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|source| MeshError::HttpClient {
            mailbox: mailbox.clone(),
            source,
        })?;
        let chunk_size = usize::try_from(config.chunk_size_bytes).unwrap_or(usize::MAX);
        Ok(Self {
            http,
            base: config.url.trim_end_matches('/').to_owned(),
            auth: Authenticator::new(&mailbox, password, shared_key),
            mailbox,
            chunk_size,
            max_retries: config.max_retries,
            backoff: Duration::from_millis(config.retry_backoff_ms),
            page_size: config.inbox_page_size,
        })
    }

    /// Our mailbox id (upper case).
    pub fn mailbox(&self) -> &str {
        &self.mailbox
    }

    /// How many HTTP requests this client has made (each one signed with its own count).
    pub fn requests_sent(&self) -> u64 {
        self.auth.requests_signed()
    }

    fn url(&self, path: &str) -> String {
        format!("{}/messageexchange/{}{path}", self.base, self.mailbox)
    }

    /// Validates the mailbox and credentials (MESH asks for this at least daily).
    pub async fn handshake(&self) -> Result<(), MeshError> {
        const OP: &str = "handshake";
        let os_version = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let url = self.url("");
        let reply = self
            .execute(OP, || {
                self.http
                    .post(&url)
                    .header(
                        "mex-ClientVersion",
                        concat!("junction/", env!("CARGO_PKG_VERSION")),
                    )
                    .header("mex-OSName", std::env::consts::OS)
                    .header("mex-OSArchitecture", std::env::consts::ARCH)
                    .header("mex-OSVersion", header_text(&os_version))
            })
            .await?;
        if reply.status.is_success() {
            debug!(mailbox = %self.mailbox, "mesh handshake ok");
            Ok(())
        } else {
            Err(self.error_from(OP, None, &reply))
        }
    }

    /// Sends one document: gzipped, in chunks of `chunk_size_bytes` (uncompressed)
    /// when larger. Returns the id MESH gave it.
    pub async fn send(&self, request: &SendRequest) -> Result<MessageId, MeshError> {
        validate_send(request)?;
        let pieces = payload::split(&request.body, self.chunk_size);
        let total = u32::try_from(pieces.len()).map_err(|_| MeshError::InvalidRequest {
            field: "body",
            problem: format!("{} chunks is too many", pieces.len()),
        })?;
        let checksum = payload::checksum(&request.body);
        let first = gzip(&pieces[0])?;

        let mut resume_from = 2;
        let message_id = match self.find_earlier(request).await? {
            Some(found) => {
                // MESH already has the first chunk; send the rest again if it is
                // still uploading (a chunk posted twice replaces itself).
                if found.status.as_deref() == Some("uploading") {
                    info!(mailbox = %self.mailbox, local_id = %request.local_id, message_id = %found.message_id,
                        "mesh send: resuming a message an earlier attempt left uploading");
                } else {
                    resume_from = total + 1;
                    info!(mailbox = %self.mailbox, local_id = %request.local_id, message_id = %found.message_id,
                        status = found.status.as_deref().unwrap_or(""), "mesh send: an earlier attempt already sent it");
                }
                found.message_id
            }
            None => {
                self.post_first_chunk(request, first, total, &checksum)
                    .await?
            }
        };

        for (index, piece) in pieces.iter().enumerate().skip((resume_from - 1) as usize) {
            let number = index as u32 + 1;
            self.post_chunk(&message_id, piece, number, total).await?;
        }
        info!(mailbox = %self.mailbox, to = %request.to, workflow = %request.workflow_id,
            local_id = %request.local_id, message_id = %message_id, bytes = request.body.len(),
            chunks = total, "mesh message sent");
        Ok(message_id)
    }

    /// For a send marked `earlier_attempt`: what MESH already has under its local id.
    async fn find_earlier(&self, request: &SendRequest) -> Result<Option<Tracking>, MeshError> {
        if !request.earlier_attempt {
            return Ok(None);
        }
        self.tracking_by_local_id(&request.local_id).await
    }

    /// `POST /outbox` with the first chunk. Never re-posted unless MESH surely did
    /// not take it; after an ambiguous failure tracking by local id decides.
    async fn post_first_chunk(
        &self,
        request: &SendRequest,
        gzipped: Vec<u8>,
        total: u32,
        checksum: &str,
    ) -> Result<MessageId, MeshError> {
        const OP: &str = "send";
        let url = self.url("/outbox");
        let body = Bytes::from(gzipped);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut builder = self
                .http
                .post(&url)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_ENCODING, "gzip")
                .header("mex-To", header_text(&request.to))
                .header("mex-WorkflowID", header_text(&request.workflow_id))
                .header("mex-LocalID", header_text(&request.local_id))
                .header("mex-Chunk-Range", format!("1:{total}"))
                .header("mex-Content-Checksum", checksum);
            if let Some(subject) = &request.subject {
                builder = builder.header("mex-Subject", header_text(subject));
            }
            if let Some(name) = &request.file_name {
                builder = builder.header("mex-FileName", header_text(name));
            }
            if let Some(content_type) = &request.content_type {
                builder = builder.header("mex-Content-Type", header_text(content_type));
            }
            let ambiguity = match self.attempt(builder.body(body.clone())).await {
                Attempt::Answered(reply) if reply.status.is_success() => {
                    return parse_message_id(OP, &reply.body);
                }
                Attempt::Answered(reply) if matches!(reply.status.as_u16(), 425 | 429) => {
                    // Refused before processing: safe to post again.
                    if attempt > self.max_retries {
                        return Err(self.exhausted(OP, attempt, &reply));
                    }
                    warn!(mailbox = %self.mailbox, local_id = %request.local_id, status = reply.status.as_u16(),
                        attempt, "mesh send refused for now, retrying");
                    self.sleep_before_retry(attempt, retry_after(&reply.headers))
                        .await;
                    continue;
                }
                Attempt::Answered(reply) if reply.status.is_server_error() => {
                    format!("http {}", reply.status.as_u16())
                }
                Attempt::Answered(reply) => return Err(self.error_from(OP, None, &reply)),
                Attempt::NotConnected(error) => {
                    if attempt > self.max_retries {
                        return Err(self.unavailable(OP, attempt, None, &error));
                    }
                    warn!(mailbox = %self.mailbox, local_id = %request.local_id, attempt,
                        error = %error_chain(&error), "mesh send could not connect, retrying");
                    self.sleep_before_retry(attempt, None).await;
                    continue;
                }
                Attempt::Failed(error) => error_chain(&error),
            };
            // Ambiguous: MESH may have the message. Ask before posting again.
            warn!(mailbox = %self.mailbox, local_id = %request.local_id, attempt, reason = %ambiguity,
                "mesh send outcome unknown, checking tracking by local id");
            let found = match self.tracking_by_local_id(&request.local_id).await {
                Ok(found) => found,
                Err(MeshError::Unavailable { reason, status, .. }) => {
                    return Err(MeshError::Unavailable {
                        operation: OP,
                        mailbox: self.mailbox.clone(),
                        attempts: attempt,
                        status,
                        reason: format!("{ambiguity}; then tracking by local id failed: {reason}"),
                    })
                }
                Err(other) => return Err(other),
            };
            if let Some(found) = found {
                info!(mailbox = %self.mailbox, local_id = %request.local_id, message_id = %found.message_id,
                    "mesh send: tracking shows the first chunk arrived");
                return Ok(found.message_id);
            }
            if attempt > self.max_retries {
                return Err(MeshError::Unavailable {
                    operation: OP,
                    mailbox: self.mailbox.clone(),
                    attempts: attempt,
                    status: None,
                    reason: ambiguity,
                });
            }
            self.sleep_before_retry(attempt, None).await;
        }
    }

    /// `POST /outbox/{id}/{n}` for chunk n ≥ 2 (retried: a chunk replaces itself).
    async fn post_chunk(
        &self,
        message_id: &MessageId,
        piece: &Bytes,
        number: u32,
        total: u32,
    ) -> Result<(), MeshError> {
        const OP: &str = "send chunk";
        let body = Bytes::from(gzip(piece)?);
        let url = self.url(&format!("/outbox/{}/{number}", message_id.as_str()));
        let reply = self
            .execute(OP, || {
                self.http
                    .post(&url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_ENCODING, "gzip")
                    .header("mex-Chunk-Range", format!("{number}:{total}"))
                    .body(body.clone())
            })
            .await?;
        match reply.status.as_u16() {
            200..=299 => {
                debug!(mailbox = %self.mailbox, message_id = %message_id, chunk = number, total, "mesh chunk sent");
                Ok(())
            }
            // Locked: the message is complete. For the last chunk that means an
            // earlier try of this very request arrived.
            423 if number == total => Ok(()),
            _ => Err(self.error_from(OP, Some(message_id.as_str()), &reply)),
        }
    }

    /// One page of the inbox: the first when `next` is `None`, else the page
    /// `links.next` pointed at.
    pub async fn inbox_page(&self, next: Option<&str>) -> Result<InboxPage, MeshError> {
        const OP: &str = "inbox";
        let url = match next {
            None => self.url(&format!("/inbox?max_results={}", self.page_size)),
            Some(link) => self.resolve_link(OP, link)?,
        };
        let reply = self.execute(OP, || self.http.get(&url)).await?;
        if !reply.status.is_success() {
            return Err(self.error_from(OP, None, &reply));
        }
        let json: Value = serde_json::from_slice(&reply.body).map_err(|e| MeshError::Protocol {
            operation: OP,
            problem: format!("inbox body is not JSON: {e}"),
        })?;
        let messages = json
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| MeshError::Protocol {
                operation: OP,
                problem: "inbox body has no `messages` array".into(),
            })?
            .iter()
            .filter_map(Value::as_str)
            .map(MessageId::new)
            .collect();
        let next = json
            .pointer("/links/next")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        Ok(InboxPage { messages, next })
    }

    /// Every message id waiting in the inbox, following `links.next` to the end.
    pub async fn inbox(&self) -> Result<Vec<MessageId>, MeshError> {
        let mut all = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = self.inbox_page(next.as_deref()).await?;
            all.extend(page.messages);
            match page.next {
                Some(link) if Some(&link) == next.as_ref() => {
                    return Err(MeshError::Protocol {
                        operation: "inbox",
                        problem: format!("`links.next` repeats itself: `{link}`"),
                    })
                }
                Some(link) => next = Some(link),
                None => break,
            }
        }
        debug!(mailbox = %self.mailbox, count = all.len(), "mesh inbox listed");
        Ok(all)
    }

    /// A `links.next` value as a full URL on our server (never another host).
    fn resolve_link(&self, operation: &'static str, link: &str) -> Result<String, MeshError> {
        if link.starts_with('/') {
            let origin = origin_of(&self.base);
            Ok(format!("{origin}{link}"))
        } else if link.starts_with(&format!("{}/", origin_of(&self.base))) {
            Ok(link.to_owned())
        } else {
            Err(MeshError::Protocol {
                operation,
                problem: format!("`links.next` points elsewhere: `{link}`"),
            })
        }
    }

    /// Downloads a message: every chunk, gunzipped and joined. A checksum in our
    /// `sha256:` form is verified.
    pub async fn download(&self, message_id: &MessageId) -> Result<Received, MeshError> {
        self.download_at_most(message_id, usize::MAX).await
    }

    /// [`Self::download`] of at most `limit` bytes, as received and once
    /// decompressed: a larger message is not read further (no more chunks are
    /// fetched, no more is inflated) and comes back with its `problem` said
    /// and the bytes received so far, at most `limit` of them.
    pub async fn download_at_most(
        &self,
        message_id: &MessageId,
        limit: usize,
    ) -> Result<Received, MeshError> {
        const OP: &str = "download";
        let first = self.download_chunk(message_id, 1).await?;
        let chunk_count = match first
            .headers
            .get("mex-chunk-range")
            .and_then(|v| v.to_str().ok())
        {
            // The sandbox labels an empty REPORT `1:0`: one (empty) chunk.
            Some(range) if range.trim() == "1:0" => 1,
            Some(range) => {
                payload::parse_chunk_range(range)
                    .ok_or_else(|| MeshError::Protocol {
                        operation: OP,
                        problem: format!(
                            "bad `mex-Chunk-Range` `{range}` on message `{message_id}`"
                        ),
                    })?
                    .1
            }
            None => 1,
        };
        if first.status == StatusCode::PARTIAL_CONTENT && chunk_count < 2 {
            return Err(MeshError::Protocol {
                operation: OP,
                problem: format!("206 for message `{message_id}` without a chunk range above 1"),
            });
        }
        let headers = received_headers(message_id, &first.headers, chunk_count);
        if chunk_count > MAX_CHUNKS {
            let body: Vec<u8> = first.body.iter().copied().take(limit).collect();
            return Ok(Received {
                headers,
                body: Bytes::from(body),
                problem: Some(format!(
                    "message `{message_id}` comes in {chunk_count} chunks, more than the {MAX_CHUNKS} taken; not read further"
                )),
            });
        }
        let mut message = Assembler::new(message_id, limit, &first);
        message.add(1, &first)?;
        drop(first);
        for number in 2..=chunk_count {
            if message.problem.is_some() {
                break;
            }
            let chunk = self.download_chunk(message_id, number).await?;
            message.add(number, &chunk)?;
        }
        let (body, mut problem) = message.finish();
        if let Some(expected) = headers
            .checksum
            .as_deref()
            .filter(|c| problem.is_none() && c.starts_with(payload::CHECKSUM_PREFIX))
        {
            let actual = payload::checksum(&body);
            if !expected.eq_ignore_ascii_case(&actual) {
                problem = Some(format!(
                    "message `{message_id}` checksum mismatch: sender said `{expected}`, got `{actual}`"
                ));
            }
        }
        debug!(mailbox = %self.mailbox, message_id = %message_id, bytes = body.len(), chunks = chunk_count,
            "mesh message downloaded");
        Ok(Received {
            headers,
            body: Bytes::from(body),
            problem,
        })
    }

    async fn download_chunk(
        &self,
        message_id: &MessageId,
        number: u32,
    ) -> Result<Reply, MeshError> {
        const OP: &str = "download";
        let url = if number == 1 {
            self.url(&format!("/inbox/{}", message_id.as_str()))
        } else {
            self.url(&format!("/inbox/{}/{number}", message_id.as_str()))
        };
        let reply = self
            .execute(OP, || self.http.get(&url).header(ACCEPT_ENCODING, "gzip"))
            .await?;
        match reply.status.as_u16() {
            200 | 206 => Ok(reply),
            _ => Err(self.error_from(OP, Some(message_id.as_str()), &reply)),
        }
    }

    /// Marks a downloaded message as received; it leaves the inbox.
    pub async fn acknowledge(&self, message_id: &MessageId) -> Result<(), MeshError> {
        const OP: &str = "acknowledge";
        let url = self.url(&format!(
            "/inbox/{}/status/acknowledged",
            message_id.as_str()
        ));
        let reply = self.execute(OP, || self.http.put(&url)).await?;
        if reply.status.is_success() {
            debug!(mailbox = %self.mailbox, message_id = %message_id, "mesh message acknowledged");
            Ok(())
        } else {
            Err(self.error_from(OP, Some(message_id.as_str()), &reply))
        }
    }

    /// Tracking of a message we sent, by the id MESH gave it.
    pub async fn tracking(&self, message_id: &MessageId) -> Result<Tracking, MeshError> {
        const OP: &str = "tracking";
        let url = self.url("/outbox/tracking");
        let reply = self
            .execute(OP, || {
                self.http
                    .get(&url)
                    .query(&[("messageID", message_id.as_str())])
            })
            .await?;
        if !reply.status.is_success() {
            return Err(self.error_from(OP, Some(message_id.as_str()), &reply));
        }
        parse_tracking(OP, &reply.body)
    }

    /// Tracking of a message we sent, by our local id (`GET /outbox/tracking/{local_id}`,
    /// deprecated by NHS but the only lookup by local id). `None` when MESH has no
    /// such message.
    pub async fn tracking_by_local_id(
        &self,
        local_id: &str,
    ) -> Result<Option<Tracking>, MeshError> {
        const OP: &str = "tracking by local id";
        let url = self.url(&format!(
            "/outbox/tracking/{}",
            percent_encode_path(local_id)
        ));
        let reply = self.execute(OP, || self.http.get(&url)).await?;
        match reply.status.as_u16() {
            200 => parse_tracking(OP, &reply.body).map(Some),
            404 => Ok(None),
            300 => Err(MeshError::Protocol {
                operation: OP,
                problem: format!(
                    "more than one message has local id `{local_id}`; local ids must be unique"
                ),
            }),
            _ => Err(self.error_from(OP, None, &reply)),
        }
    }

    /// Sends a request built by `make`, retrying transient failures (425, 429, 502,
    /// 503, 504, connection failures, timeouts) up to `max_retries` times. For
    /// idempotent calls and chunk posts only.
    async fn execute(
        &self,
        operation: &'static str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Reply, MeshError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let failure = match self.attempt(make()).await {
                Attempt::Answered(reply) if is_retryable_status(reply.status) => Ok(reply),
                Attempt::Answered(reply) => return Ok(reply),
                Attempt::NotConnected(error) | Attempt::Failed(error) => Err(error),
            };
            if attempt > self.max_retries {
                return Err(match failure {
                    Ok(reply) => self.exhausted(operation, attempt, &reply),
                    Err(error) => self.unavailable(operation, attempt, None, &error),
                });
            }
            let (reason, wait) = match &failure {
                Ok(reply) => (
                    format!("http {}", reply.status.as_u16()),
                    retry_after(&reply.headers),
                ),
                Err(error) => (error_chain(error), None),
            };
            warn!(mailbox = %self.mailbox, operation, attempt, reason = %reason, "mesh request failed, retrying");
            self.sleep_before_retry(attempt, wait).await;
        }
    }

    /// One signed request, read to the end.
    async fn attempt(&self, builder: reqwest::RequestBuilder) -> Attempt {
        let builder = builder
            .header(ACCEPT, MESH_V2)
            .header(AUTHORIZATION, self.auth.next_header());
        let response = match builder.send().await {
            Ok(response) => response,
            Err(error) if error.is_connect() => return Attempt::NotConnected(error),
            Err(error) => return Attempt::Failed(error),
        };
        let status = response.status();
        let headers = response.headers().clone();
        debug!(mailbox = %self.mailbox, path = response.url().path(), status = status.as_u16(), "mesh response");
        match response.bytes().await {
            Ok(body) => Attempt::Answered(Reply {
                status,
                headers,
                body,
            }),
            Err(error) => Attempt::Failed(error),
        }
    }

    /// Waits before retry number `attempt`: the backoff doubled per attempt, with
    /// jitter over its upper half (so clients that failed together spread out), or
    /// the server's `Retry-After` when that is longer; never more than a minute.
    async fn sleep_before_retry(&self, attempt: u32, retry_after: Option<Duration>) {
        let exponential = self
            .backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(MAX_BACKOFF);
        let half = exponential / 2;
        let jitter = Duration::from_millis(fastrand::u64(0..=half.as_millis() as u64));
        let wait = (half + jitter)
            .max(retry_after.unwrap_or_default())
            .min(MAX_BACKOFF);
        tokio::time::sleep(wait).await;
    }

    /// The error for a retryable answer after the last retry, counting the attempts.
    fn exhausted(&self, operation: &'static str, attempts: u32, reply: &Reply) -> MeshError {
        match self.error_from(operation, None, reply) {
            MeshError::Unavailable { status, reason, .. } => MeshError::Unavailable {
                operation,
                mailbox: self.mailbox.clone(),
                attempts,
                status,
                reason,
            },
            other => other,
        }
    }

    fn unavailable(
        &self,
        operation: &'static str,
        attempts: u32,
        status: Option<u16>,
        error: &reqwest::Error,
    ) -> MeshError {
        MeshError::Unavailable {
            operation,
            mailbox: self.mailbox.clone(),
            attempts,
            status,
            reason: error_chain(error),
        }
    }

    /// Turns a non-success reply into the error that says what to do about it.
    fn error_from(
        &self,
        operation: &'static str,
        message_id: Option<&str>,
        reply: &Reply,
    ) -> MeshError {
        let status = reply.status.as_u16();
        let detail = ErrorDetail::parse(&reply.body);
        match status {
            403 => MeshError::Auth {
                mailbox: self.mailbox.clone(),
                operation,
                detail: detail.msg,
            },
            // a 404 or 410 where MESH names no message (the API answers neither
            // to a send, a handshake or an inbox list): something in between
            // (a proxy, a load balancer) answered; worth trying again later, not
            // a reason to dead-letter a document
            404 | 410 if message_id.is_none() => MeshError::Unavailable {
                operation,
                mailbox: self.mailbox.clone(),
                attempts: 1,
                status: Some(status),
                reason: format!(
                    "http {status}, which MESH does not answer to this call (a proxy or \
                     load balancer in between?)"
                ),
            },
            404 => MeshError::NotFound {
                operation,
                message_id: message_id.unwrap_or("").to_owned(),
            },
            410 => MeshError::Gone {
                operation,
                message_id: message_id.unwrap_or("").to_owned(),
            },
            _ if is_retryable_status(reply.status) || reply.status.is_server_error() => {
                MeshError::Unavailable {
                    operation,
                    mailbox: self.mailbox.clone(),
                    attempts: 1,
                    status: Some(status),
                    reason: format!(
                        "http {status}{}",
                        detail.msg.map(|m| format!(": {m}")).unwrap_or_default()
                    ),
                }
            }
            400..=499 => MeshError::Rejected {
                operation,
                status,
                code: detail.code,
                event: detail.event,
                msg: detail.msg.unwrap_or_else(|| "no detail given".into()),
            },
            _ => MeshError::Protocol {
                operation,
                problem: format!("unexpected http status {status}"),
            },
        }
    }
}

/// The useful parts of a MESH error body, whichever version wrote it.
#[derive(Debug, Default, PartialEq, Eq)]
struct ErrorDetail {
    code: Option<String>,
    event: Option<String>,
    msg: Option<String>,
}

impl ErrorDetail {
    fn parse(body: &[u8]) -> Self {
        let text = |v: Option<&Value>| {
            v.and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            let raw = String::from_utf8_lossy(body);
            let raw = raw.trim();
            return Self {
                msg: (!raw.is_empty()).then(|| truncate(raw, MAX_ERROR_TEXT)),
                ..Self::default()
            };
        };
        match json.get("detail") {
            // v2: {"detail": [{"event", "code", "msg"}]}; FastAPI validation: [{"loc", "msg", "type"}]
            Some(Value::Array(items)) if !items.is_empty() => {
                let first = &items[0];
                let msg = match first.get("loc").and_then(Value::as_array) {
                    Some(loc) => text(first.get("msg")).map(|m| {
                        let place: Vec<String> = loc
                            .iter()
                            .map(|p| {
                                p.as_str()
                                    .map(str::to_owned)
                                    .unwrap_or_else(|| p.to_string())
                            })
                            .collect();
                        format!("{m} ({})", place.join("."))
                    }),
                    None => text(first.get("msg")),
                };
                Self {
                    code: text(first.get("code")),
                    event: text(first.get("event")),
                    msg,
                }
            }
            Some(Value::String(s)) => Self {
                msg: Some(truncate(s, MAX_ERROR_TEXT)),
                ..Self::default()
            },
            // v1: {"errorEvent", "errorCode", "errorDescription"}; else {"message"}
            _ => Self {
                code: text(json.get("errorCode")),
                event: text(json.get("errorEvent")),
                msg: text(json.get("errorDescription")).or_else(|| text(json.get("message"))),
            },
        }
    }
}

fn validate_send(request: &SendRequest) -> Result<(), MeshError> {
    let bad =
        |field: &'static str, problem: String| Err(MeshError::InvalidRequest { field, problem });
    for (field, value, max) in [
        ("to", request.to.as_str(), 100),
        ("workflow_id", request.workflow_id.as_str(), 300),
        ("local_id", request.local_id.as_str(), 300),
    ] {
        if value.trim().is_empty() {
            return bad(field, "empty, expected a value".into());
        }
        if value.len() > max {
            return bad(
                field,
                format!("{} characters, expected at most {max}", value.len()),
            );
        }
    }
    for (field, value, max) in [
        ("to", Some(&request.to), 100),
        ("workflow_id", Some(&request.workflow_id), 300),
        ("local_id", Some(&request.local_id), 300),
        ("subject", request.subject.as_ref(), 500),
        ("file_name", request.file_name.as_ref(), 300),
        ("content_type", request.content_type.as_ref(), 300),
    ] {
        if let Some(value) = value {
            if value.len() > max {
                return bad(
                    field,
                    format!("{} characters, expected at most {max}", value.len()),
                );
            }
            if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return bad(
                    field,
                    format!(
                        "`{}` has characters a MESH header cannot carry, expected printable ASCII",
                        value.escape_default()
                    ),
                );
            }
        }
    }
    if request.body.is_empty() {
        return bad("body", "empty, MESH refuses empty messages".into());
    }
    Ok(())
}

fn gzip(piece: &[u8]) -> Result<Vec<u8>, MeshError> {
    payload::gzip(piece).map_err(|e| MeshError::Protocol {
        operation: "send",
        problem: format!("gzip failed: {e}"),
    })
}

/// The most chunks a message is read in: 100 GB (MESH's largest) in 100 MB
/// chunks (its largest) is 1,000; a message of tiny chunks beyond this is no
/// sender's way of sending.
const MAX_CHUNKS: u32 = 10_000;

/// A downloaded message put together chunk by chunk, each chunk's transport
/// encoding undone as it comes (only its bytes are kept, never the reply),
/// then the sender's own gzip (`mex-Content-Compressed: Y`) over the whole
/// (a sender may gzip the message and then cut it in chunks, or gzip each
/// chunk: both read alike, as gzip members run on). At most `limit` bytes
/// as received and decoded; past them, or on bytes that do not decode, a
/// problem, and what was received (at most `limit`) kept instead.
struct Assembler<'m> {
    message_id: &'m MessageId,
    limit: usize,
    sender_gzip: bool,
    body: Vec<u8>,
    raw: Vec<u8>,
    received: usize,
    problem: Option<String>,
}

impl<'m> Assembler<'m> {
    fn new(message_id: &'m MessageId, limit: usize, first: &Reply) -> Self {
        let sender_gzip = first
            .headers
            .get("mex-content-compressed")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("Y"));
        Assembler {
            message_id,
            limit,
            sender_gzip,
            body: Vec::new(),
            raw: Vec::new(),
            received: 0,
            problem: None,
        }
    }

    fn too_big(&self) -> String {
        format!(
            "message `{}` is larger than the source's max_message_bytes ({}) once decompressed; \
             not read further",
            self.message_id, self.limit
        )
    }

    fn add(&mut self, number: u32, chunk: &Reply) -> Result<(), MeshError> {
        self.received += chunk.body.len();
        let room = self.limit - self.raw.len().min(self.limit);
        self.raw
            .extend_from_slice(&chunk.body[..chunk.body.len().min(room)]);
        if self.problem.is_some() {
            return Ok(());
        }
        if self.received > self.limit {
            self.problem = Some(self.too_big());
            return Ok(());
        }
        match decode_chunk(self.message_id, number, chunk, self.limit - self.body.len()) {
            Ok((decoded, false)) => self.body.extend(decoded),
            Ok((_, true)) => self.problem = Some(self.too_big()),
            Err(MeshError::Protocol { problem, .. }) => self.problem = Some(problem),
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// The content, and the problem with it (then: the bytes as received).
    fn finish(mut self) -> (Vec<u8>, Option<String>) {
        if self.problem.is_none() && self.sender_gzip && self.body.starts_with(&[0x1f, 0x8b]) {
            match payload::gunzip_at_most(&self.body, self.limit) {
                Ok((inflated, false)) => self.body = inflated,
                Ok((_, true)) => self.problem = Some(self.too_big()),
                Err(e) => {
                    self.problem = Some(format!(
                    "message `{}` is flagged compressed by its sender but is not valid gzip: {e}",
                    self.message_id
                ))
                }
            }
        }
        match self.problem {
            Some(problem) => (self.raw, Some(problem)),
            None => (self.body, None),
        }
    }
}

/// One chunk's content, its transport encoding (`Content-Encoding: gzip`)
/// undone: at most `limit` bytes (true: there was more).
fn decode_chunk(
    message_id: &MessageId,
    number: u32,
    reply: &Reply,
    limit: usize,
) -> Result<(Vec<u8>, bool), MeshError> {
    let header = |name| {
        reply
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let encoded = header(CONTENT_ENCODING.as_str()).is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    // a sender that compressed the content itself says so in
    // `mex-Content-Compressed: Y` and sends no Content-Encoding; taken as gzip
    // when the bytes are gzip (its magic number)
    if encoded {
        payload::gunzip_at_most(&reply.body, limit).map_err(|e| MeshError::Protocol {
            operation: "download",
            problem: format!("chunk {number} of message `{message_id}` is not valid gzip: {e}"),
        })
    } else {
        let n = reply.body.len();
        Ok((reply.body[..n.min(limit)].to_vec(), n > limit))
    }
}

fn received_headers(
    message_id: &MessageId,
    headers: &HeaderMap,
    chunk_count: u32,
) -> ReceivedHeaders {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let message_type = match get("mex-messagetype")
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        Some("DATA") | None => MessageType::Data,
        Some("REPORT") => MessageType::Report,
        Some(other) => MessageType::Other(other.to_owned()),
    };
    ReceivedHeaders {
        message_id: get("mex-messageid")
            .map(MessageId::new)
            .unwrap_or_else(|| message_id.clone()),
        from: get("mex-from").unwrap_or_default(),
        to: get("mex-to").unwrap_or_default(),
        workflow_id: get("mex-workflowid").unwrap_or_default(),
        message_type,
        local_id: get("mex-localid"),
        subject: get("mex-subject"),
        file_name: get("mex-filename"),
        content_type: get("mex-content-type").or_else(|| get("content-type")),
        checksum: get("mex-content-checksum"),
        status_code: get("mex-statuscode"),
        status_description: get("mex-statusdescription"),
        linked_message_id: get("mex-linkedmsgid"),
        chunk_count,
    }
}

fn parse_message_id(operation: &'static str, body: &[u8]) -> Result<MessageId, MeshError> {
    let json: Value = serde_json::from_slice(body).map_err(|e| MeshError::Protocol {
        operation,
        problem: format!("send answer is not JSON: {e}"),
    })?;
    json.get("message_id")
        .or_else(|| json.get("messageID"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(MessageId::new)
        .ok_or_else(|| MeshError::Protocol {
            operation,
            problem: "send answer has no `message_id`".into(),
        })
}

/// Reads tracking in the v2 (snake_case) or v1 (camelCase) shape.
fn parse_tracking(operation: &'static str, body: &[u8]) -> Result<Tracking, MeshError> {
    let json: Value = serde_json::from_slice(body).map_err(|e| MeshError::Protocol {
        operation,
        problem: format!("tracking answer is not JSON: {e}"),
    })?;
    let field = |names: &[&str]| {
        names
            .iter()
            .find_map(|name| json.get(*name).and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let message_id =
        field(&["message_id", "messageId", "dtsId"]).ok_or_else(|| MeshError::Protocol {
            operation,
            problem: "tracking answer has no message id".into(),
        })?;
    Ok(Tracking {
        message_id: MessageId::new(message_id),
        local_id: field(&["local_id", "localId"]),
        workflow_id: field(&["workflow_id", "workflowId"]),
        recipient: field(&["recipient"]),
        status: field(&["status"]).map(|s| s.to_ascii_lowercase()),
        status_code: field(&["status_code", "statusCode"]),
        status_description: field(&["status_description", "statusDescription"]),
    })
}

/// `Retry-After` in seconds (the HTTP-date form is ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 425 | 429 | 502 | 503 | 504)
}

fn read_file(
    mailbox: &str,
    field: &'static str,
    path: &std::path::Path,
) -> Result<Vec<u8>, MeshError> {
    std::fs::read(path).map_err(|source| MeshError::ReadFile {
        mailbox: mailbox.to_owned(),
        field,
        path: path.to_owned(),
        source,
    })
}

/// A header value from validated text; characters a header cannot carry were
/// refused by [`validate_send`], so the fallback is never used for sends.
fn header_text(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Percent-encodes everything but unreserved characters, for one path segment.
fn percent_encode_path(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `scheme://host[:port]` of a base URL.
fn origin_of(base: &str) -> &str {
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    }
}

/// An error and its causes on one line ("error sending request: connection refused").
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(headers: &[(&'static str, &str)], body: Vec<u8>) -> Reply {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        Reply {
            status: StatusCode::OK,
            headers: map,
            body: Bytes::from(body),
        }
    }

    #[test]
    fn a_chunk_is_gunzipped_by_its_encoding_or_the_senders_compressed_flag() {
        let id = MessageId::new("20261123000000000000_ABCDEF");
        let text = b"MSH|^~\\&|A|B\r".to_vec();
        let gz = payload::gzip(&text).unwrap();
        let cases = [
            (
                vec![("content-encoding", "gzip")],
                gz.clone(),
                Some(text.clone()),
            ),
            (
                vec![("mex-content-compressed", "Y")],
                gz.clone(),
                Some(text.clone()),
            ),
            (
                vec![("mex-content-compressed", "y")],
                gz.clone(),
                Some(text.clone()),
            ),
            // flagged, but not gzip: as sent (the content's own checks decide)
            (
                vec![("mex-content-compressed", "Y")],
                text.clone(),
                Some(text.clone()),
            ),
            (
                vec![("mex-content-compressed", "N")],
                gz.clone(),
                Some(gz.clone()),
            ),
            (vec![], text.clone(), Some(text.clone())),
            // labelled gzip, not gzip: a problem kept with the message
            (vec![("content-encoding", "gzip")], text.clone(), None),
            // compressed by the sender and gzipped again for transport (as
            // NHS's sandbox serves it): both layers undone
            (
                vec![
                    ("content-encoding", "gzip"),
                    ("mex-content-compressed", "Y"),
                ],
                payload::gzip(&gz).unwrap(),
                Some(text.clone()),
            ),
            // not flagged: one layer only (the content is the sender's gzip)
            (
                vec![("content-encoding", "gzip")],
                payload::gzip(&gz).unwrap(),
                Some(gz.clone()),
            ),
        ];
        // the whole message from its chunks (`None`: kept with a problem)
        let assemble = |chunks: &[Reply], limit: usize| -> (Vec<u8>, Option<String>) {
            let mut a = Assembler::new(&id, limit, &chunks[0]);
            for (i, c) in chunks.iter().enumerate() {
                a.add(i as u32 + 1, c).unwrap();
            }
            a.finish()
        };
        for (headers, body, expected) in cases {
            let (got, problem) = assemble(&[reply(&headers, body)], usize::MAX);
            assert_eq!(problem.is_none().then_some(got), expected, "{headers:?}");
        }
        // at most the limit, through both layers: kept as received, a problem
        let double = payload::gzip(&payload::gzip(&vec![b'x'; 100_000]).unwrap()).unwrap();
        let headers = [
            ("content-encoding", "gzip"),
            ("mex-content-compressed", "Y"),
        ];
        let (kept, problem) = assemble(&[reply(&headers, double.clone())], 1000);
        assert!(problem
            .unwrap()
            .contains("larger than the source's max_message_bytes (1000)"));
        assert_eq!(kept, double[..double.len().min(1000)]);
        let (got, problem) = assemble(&[reply(&headers, double)], 100_000);
        assert_eq!((got.len(), problem), (100_000, None));
        let (kept, problem) = assemble(&[reply(&[], text.clone())], 4);
        assert!(problem.is_some());
        assert_eq!(kept, b"MSH|");
        // the sender gzipped the whole message and cut it in chunks (as NHS's
        // mesh_client does), each chunk gzipped again for transport, or not
        let whole = payload::gzip(&vec![b'y'; 50_000]).unwrap();
        let thirds: Vec<&[u8]> = whole.chunks(whole.len() / 3 + 1).collect();
        for transport in [true, false] {
            let mut headers = vec![("mex-content-compressed", "Y")];
            if transport {
                headers.push(("content-encoding", "gzip"));
            }
            let chunks: Vec<Reply> = thirds
                .iter()
                .map(|part| {
                    let body = if transport {
                        payload::gzip(part).unwrap()
                    } else {
                        part.to_vec()
                    };
                    reply(&headers, body)
                })
                .collect();
            let (got, problem) = assemble(&chunks, usize::MAX);
            assert_eq!(
                (got.len(), problem),
                (50_000, None),
                "transport gzip: {transport}"
            );
        }
        // ... or gzipped each chunk on its own (as MESH's guidance says)
        let members: Vec<Reply> = [&b"MSH|"[..], b"^~\\&|A|B\r"]
            .iter()
            .map(|p| {
                reply(
                    &[("mex-content-compressed", "Y")],
                    payload::gzip(p).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            assemble(&members, usize::MAX),
            (b"MSH|^~\\&|A|B\r".to_vec(), None)
        );
    }

    fn check_detail(body: &str, code: Option<&str>, msg: Option<&str>) {
        let detail = ErrorDetail::parse(body.as_bytes());
        assert_eq!(detail.code.as_deref(), code, "{body}");
        assert_eq!(detail.msg.as_deref(), msg, "{body}");
    }

    #[test]
    fn error_bodies_of_every_shape() {
        check_detail(
            r#"{"message_id":"X","detail":[{"event":"SEND","code":"12","msg":"Unregistered recipient"}]}"#,
            Some("12"),
            Some("Unregistered recipient"),
        );
        check_detail(
            r#"{"errorEvent":"SEND","errorCode":"08","errorDescription":"TO_DTS missing"}"#,
            Some("08"),
            Some("TO_DTS missing"),
        );
        check_detail(
            r#"{"detail":[{"loc":["header","mex-to"],"msg":"field required","type":"missing"}]}"#,
            None,
            Some("field required (header.mex-to)"),
        );
        check_detail(r#"{"detail":"Not Found"}"#, None, Some("Not Found"));
        check_detail(
            r#"{"internal_id":"1","message":"Internal error"}"#,
            None,
            Some("Internal error"),
        );
        check_detail("<soap>oops</soap>", None, Some("<soap>oops</soap>"));
        check_detail("", None, None);
    }

    #[test]
    fn tracking_in_both_versions() {
        let v2 = parse_tracking(
            "t",
            br#"{"message_id":"ABC","local_id":"d-1","status":"accepted","recipient":"X26ABC2"}"#,
        )
        .unwrap();
        assert_eq!(v2.message_id.as_str(), "ABC");
        assert_eq!(v2.local_id.as_deref(), Some("d-1"));
        assert_eq!(v2.status.as_deref(), Some("accepted"));
        let v1 = parse_tracking(
            "t",
            br#"{"dtsId":"ABC","messageId":"ABC","localId":"d-1","status":"Uploading"}"#,
        )
        .unwrap();
        assert_eq!(v1.message_id.as_str(), "ABC");
        assert_eq!(v1.status.as_deref(), Some("uploading"));
        assert!(parse_tracking("t", b"{}").is_err());
    }

    #[test]
    fn send_request_validation() {
        let good = SendRequest {
            to: "X26ABC2".into(),
            workflow_id: "TEST_WORKFLOW".into(),
            local_id: "delivery-42".into(),
            subject: None,
            file_name: Some("bundle.json".into()),
            content_type: Some("application/fhir+json".into()),
            body: Bytes::from_static(b"{}"),
            earlier_attempt: false,
        };
        validate_send(&good).unwrap();
        let mut bad = good.clone();
        bad.local_id = String::new();
        assert!(validate_send(&bad)
            .unwrap_err()
            .to_string()
            .contains("local_id"));
        let mut bad = good.clone();
        bad.subject = Some("Zoë\n".into());
        assert!(validate_send(&bad)
            .unwrap_err()
            .to_string()
            .contains("subject"));
        let mut bad = good.clone();
        bad.body = Bytes::new();
        assert!(validate_send(&bad)
            .unwrap_err()
            .to_string()
            .contains("body"));
    }

    #[test]
    fn helpers() {
        assert_eq!(
            origin_of("https://mesh.example:8443/base"),
            "https://mesh.example:8443"
        );
        assert_eq!(origin_of("http://127.0.0.1:8700"), "http://127.0.0.1:8700");
        assert_eq!(percent_encode_path("a b/c"), "a%20b%2Fc");
        assert_eq!(truncate("abcdef", 3), "abc…");
        assert!(is_retryable_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!is_retryable_status(StatusCode::INTERNAL_SERVER_ERROR));
    }
}
