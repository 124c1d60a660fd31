//! MLLP listener: accepts connections, de-frames HL7 messages, journals each
//! one and answers it with an ACK.
//!
//! One [`Listener`] per `[listeners.<id>]`. Each connection is one task that
//! handles its frames strictly in order (pipelined frames are answered in
//! order); concurrency comes from many connections sharing the journal's group
//! commit.
//!
//! Per frame:
//! - a message [`hl7::assess`] accepts is answered `AA` (original mode) or
//!   `CA` (enhanced mode, see below) — after it is committed;
//! - a message it rejects gets `AR`/`AE` (`CR`/`CE`) with an ERR segment, is
//!   journaled as `rejected` with its raw bytes, and the connection stays open;
//! - a batch (a frame starting with `FHS` or `BHS`) is split into messages,
//!   all journaled in one commit, and answered with one batch ACK:
//!   `[FHS] BHS`, then each message's own ACK (MSH/MSA[/ERR]) in order, then
//!   `BTS` (and `FTS`). Answering each message separately would break senders
//!   that wait for exactly one reply per frame;
//! - a framing error (bytes outside a frame that are not MLLP, a frame over
//!   `max_message_bytes`, EOF inside a frame, or `idle_timeout_secs` with no
//!   byte received inside an unfinished frame or after stray bytes) journals
//!   the bytes kept as `garbage`, logs one warning and closes that connection
//!   only. So does a frame not finished `frame_timeout_secs` (600 by default)
//!   after its first byte (keep-alive CR and LF before it do not count): a sender that trickles a frame a byte at a time,
//!   each within the idle timeout, would otherwise hold a connection (and its
//!   buffer) for as long as it likes. A frame the sender abandoned by starting a new one (`0x0B` before
//!   the end block) is kept the same way, and the connection goes on with the
//!   new frame; so are a few stray bytes that arrive before a start block and
//!   message header, in the same read or an earlier one (a sender's stack that
//!   writes something before each frame; see `codec.rs`). Stray bytes (not
//!   keep-alive CR/LF) with no start block within `STRAY_GRACE` (5 s) after
//!   the last of them are not MLLP: kept, logged, the connection closed. The
//!   idle timeout counts from the last byte received, not from the start
//!   of a frame: a large message arriving slowly is not cut off for that
//!   (only by the far longer frame timeout);
//! - a resend of an accepted message (same MSH-3/MSH-4 and MSH-10) gets the
//!   ACK stored the first time, byte for byte, and is not journaled again.
//!
//! Enhanced mode (`ack_mode = "auto"`, the default): when MSH-15 or MSH-16 is
//! valued, the accept acknowledgement follows MSH-15: `AL` (or empty) always,
//! `NE` never, `ER` only on error, `SU` only on success. MSH-16 asks for an
//! *application* acknowledgement: this listener does not send it (it answers
//! before the message is processed); with `application_ack = "<destination>"`
//! the pipeline queues it to that MLLP destination once the message is routed
//! and mapped (`delivery/pipeline.rs`). `ack_mode = "original"` ignores
//! MSH-15/16 and always answers AA/AE/AR.
//!
//! A UTF-16 message (by its byte order mark) is refused, AR with ERR 203 at
//! MSH-18: its bytes can hold the end block (U+0D1C is `1C 0D` in UTF-16LE),
//! so a frame of it may end inside it, and MLLP (Release 2) supports
//! single-byte encodings and UTF-8 only. The AR goes back in UTF-16, with the
//! sender's byte order mark, so it can read it.
//!
//! Before any frame: a peer outside `allowed_peers` (when set) is closed at
//! once; with `[listeners.<id>.tls]` the TLS handshake comes first (see
//! `tls.rs`), and a sender speaking plain MLLP to the TLS port has what it sent
//! kept as `garbage`, like any bytes that are not a message.
//!
//! It does not parse beyond the header, route or deliver anything.
//!
//! # Invariants
//! - An ACK is written only after the message is committed to the journal.
//!   Until then the sender waits; that wait is our backpressure.
//! - If the journal cannot commit, no ACK is sent: the connection is closed so
//!   the sender resends later. Never an AA for something not on disk.
//! - At most `max_connections` connections are served per listener: one
//!   accepted beyond that is closed at once, with a log line, a `refused` count
//!   and a `ConnectionRefused` event (the sender sees the close and tries again
//!   later, rather than waiting in the kernel's backlog for an answer).
//! - Logs carry listener, peer, control id, type, sender, sizes, ACK code and
//!   timings — never message content.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::hl7::{self, AckCode, Header};
use crate::journal::{Committed, Incoming, Journal, JournalError, Status};
use crate::mllp::codec::{next_frame, MllpCodec, MllpError, KEPT_BYTES, VT};
use crate::mllp::tls::{PeerNet, ServerTlsConfig, TlsFileError};
use crate::telemetry::events::{self, Event, EventBus, MessageOutcome};
use crate::telemetry::metrics::{AckLabel, Metrics};

/// `[listeners.<id>]`: one MLLP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// The longest a frame may take from its first byte to its end block;
    /// longer, and it is kept as garbage and the connection closed.
    #[serde(default = "default_frame_timeout_secs")]
    pub frame_timeout_secs: u64,
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// `auto` (default): enhanced mode when MSH-15/16 ask for it, else
    /// original. `original`: always AA/AE/AR.
    #[serde(default)]
    pub ack_mode: AckMode,
    /// `[listeners.<id>.tls]`: MLLP inside TLS (see `tls.rs`).
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
    /// Addresses and networks (`10.1.2.3`, `10.1.0.0/16`) that may connect;
    /// any other peer's connection is closed at once with a log line. Empty
    /// (the default): any peer.
    #[serde(default)]
    pub allowed_peers: Vec<PeerNet>,
    /// A `[destinations.<id>]` of kind `mllp` (the sender's own listener):
    /// where the application acknowledgements that messages ask for in MSH-16
    /// (enhanced mode) are queued once the pipeline has routed and mapped
    /// them. Unset: none are sent (see the module doc).
    #[serde(default)]
    pub application_ack: Option<String>,
    /// MSH-11.1 values (HL7 table 0103) taken; any other is answered AR with
    /// HL7's error 202. Default: `P` (production), `D` (debugging) and `T`
    /// (training). A listener feeding the live record sets `["P"]` so a
    /// sender's test messages never reach it.
    #[serde(default = "default_processing_ids")]
    pub processing_ids: Vec<String>,
}

fn default_processing_ids() -> Vec<String> {
    ["P", "D", "T"].map(String::from).to_vec()
}

fn default_max_connections() -> usize {
    256
}
fn default_idle_timeout_secs() -> u64 {
    300
}
fn default_frame_timeout_secs() -> u64 {
    600
}
fn default_max_message_bytes() -> usize {
    4 * 1024 * 1024
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AckMode {
    #[default]
    Auto,
    Original,
}

word_enum!(AckMode { "auto" => AckMode::Auto, "original" => AckMode::Original });

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("listener `{id}` cannot bind {addr}: {source}")]
    Bind {
        id: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener `{id}`: TLS {source}")]
    Tls { id: String, source: TlsFileError },
}

/// A bound, not yet running, MLLP listener.
pub struct Listener {
    id: String,
    cfg: ListenerConfig,
    socket: TcpListener,
    local_addr: SocketAddr,
    events: EventBus,
    tls: Option<TlsReload>,
}

/// A TLS listener's acceptor, which [`TlsReload::reload`] replaces from the
/// files (a renewed certificate, on SIGHUP) without closing anything: new
/// connections get the new certificate, open ones keep theirs.
#[derive(Clone)]
pub struct TlsReload {
    id: String,
    cfg: ServerTlsConfig,
    acceptor: Arc<std::sync::RwLock<TlsAcceptor>>,
}

impl TlsReload {
    /// The listener's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reads the files again; on success new connections use them, on
    /// failure (a file half-written, a key that does not match) the acceptor
    /// in use stays and the error says why.
    pub fn reload(&self) -> Result<(), ListenerError> {
        let fresh = self.cfg.acceptor().map_err(|source| ListenerError::Tls {
            id: self.id.clone(),
            source,
        })?;
        // a poisoned lock only means a reader panicked; the acceptor is whole
        *self.acceptor.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    fn current(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("id", &self.id)
            .field("local_addr", &self.local_addr)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Reads the TLS files and binds the socket now, so that every such problem
    /// shows before anything runs.
    pub async fn bind(id: &str, cfg: ListenerConfig) -> Result<Listener, ListenerError> {
        let tls = match &cfg.tls {
            Some(tls) => Some(TlsReload {
                id: id.to_string(),
                cfg: tls.clone(),
                acceptor: Arc::new(std::sync::RwLock::new(tls.acceptor().map_err(
                    |source| ListenerError::Tls {
                        id: id.to_string(),
                        source,
                    },
                )?)),
            }),
            None => None,
        };
        let bind_err = |source| ListenerError::Bind {
            id: id.to_string(),
            addr: cfg.bind,
            source,
        };
        let socket = TcpListener::bind(cfg.bind).await.map_err(bind_err)?;
        let local_addr = socket.local_addr().map_err(bind_err)?;
        Ok(Listener {
            id: id.to_string(),
            cfg,
            socket,
            local_addr,
            events: EventBus::default(),
            tls,
        })
    }

    /// Publishes this listener's outcomes on `events` (the engine's bus).
    pub fn with_events(mut self, events: EventBus) -> Listener {
        self.events = events;
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The handle that reloads this listener's TLS files (`None`: no TLS).
    pub fn tls_reload(&self) -> Option<TlsReload> {
        self.tls.clone()
    }

    /// The address actually bound (the port is real even when `bind` said `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepts connections until `cancel` fires. Each connection runs as a
    /// task on `tracker`; on cancel they finish the frame in hand and close.
    pub async fn run(
        self,
        journal: Journal,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) {
        let span = info_span!("listener", id = %self.id);
        async move {
            let ctx = Arc::new(ConnContext {
                listener: self.id.clone(),
                journal,
                counters: ListenerCounters::new(&metrics, &self.id),
                metrics,
                idle_timeout: Duration::from_secs(self.cfg.idle_timeout_secs.max(1)),
                frame_timeout: Duration::from_secs(self.cfg.frame_timeout_secs.max(1)),
                max_message_bytes: self.cfg.max_message_bytes,
                processing_ids: self.cfg.processing_ids.clone(),
                ack_mode: self.cfg.ack_mode,
                events: self.events.clone(),
                sends_application_acks: self.cfg.application_ack.is_some(),
            });
            let permits = Arc::new(Semaphore::new(self.cfg.max_connections.max(1)));
            info!(
                addr = %self.local_addr,
                tls = self.tls.is_some(),
                client_certificates = self.cfg.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()),
                allowed_peers = self.cfg.allowed_peers.len(),
                "listening"
            );
            loop {
                let (stream, peer) = tokio::select! {
                    _ = cancel.cancelled() => break,
                    accepted = self.socket.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(err) => {
                            // E.g. out of file descriptors: back off instead of spinning.
                            warn!(error = %err, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                if !self.cfg.allowed_peers.is_empty()
                    && !self.cfg.allowed_peers.iter().any(|n| n.contains(peer.ip()))
                {
                    // the peer's address is not patient data; nothing was read
                    warn!(%peer, "connection refused: the peer is not in allowed_peers");
                    ctx.counters.refused.inc();
                    refused(&ctx, &peer.to_string(), "not in allowed_peers".to_string());
                    drop(stream);
                    continue;
                }
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    warn!(
                        %peer,
                        max_connections = self.cfg.max_connections,
                        "connection refused: the listener is at max_connections"
                    );
                    ctx.counters.refused.inc();
                    refused(&ctx, &peer.to_string(), "at max_connections".to_string());
                    drop(stream);
                    continue;
                };
                // ACK latency matters more than packet count.
                let _ = stream.set_nodelay(true);
                let ctx = Arc::clone(&ctx);
                let cancel = cancel.clone();
                let tls = self.tls.as_ref().map(TlsReload::current);
                let conn_span = info_span!("conn", %peer);
                tracker.spawn(
                    async move {
                        match tls {
                            None => serve_connection(stream, peer, &ctx, &cancel).await,
                            Some(acceptor) => {
                                let peer_text = peer.to_string();
                                if let Some(stream) =
                                    handshake(&acceptor, stream, &peer_text, &ctx, &cancel).await
                                {
                                    serve_connection(stream, peer, &ctx, &cancel).await;
                                }
                            }
                        }
                        drop(permit);
                    }
                    .instrument(conn_span),
                );
            }
            info!("stopped accepting");
        }
        .instrument(span)
        .await
    }
}

/// What every connection of one listener shares.
struct ConnContext {
    listener: String,
    journal: Journal,
    metrics: Arc<Metrics>,
    counters: ListenerCounters,
    idle_timeout: Duration,
    /// `frame_timeout_secs`.
    frame_timeout: Duration,
    max_message_bytes: usize,
    /// MSH-11 values taken (`processing_ids`).
    processing_ids: Vec<String>,
    ack_mode: AckMode,
    events: EventBus,
    /// Whether application acknowledgements are sent (`application_ack`).
    sends_application_acks: bool,
}

/// This listener's counters, looked up once instead of per message.
struct ListenerCounters {
    received: Counter,
    rejected: Counter,
    duplicates: Counter,
    open_connections: Gauge,
    refused: Counter,
    tls_failed: Counter,
    framing: Counter,
}

impl ListenerCounters {
    fn new(metrics: &Metrics, id: &str) -> Self {
        let label = Metrics::listener(id);
        ListenerCounters {
            received: metrics.received.get_or_create(&label).clone(),
            rejected: metrics.rejected.get_or_create(&label).clone(),
            duplicates: metrics.duplicates.get_or_create(&label).clone(),
            open_connections: metrics.open_connections.get_or_create(&label).clone(),
            refused: metrics.connections_refused.get_or_create(&label).clone(),
            tls_failed: metrics.tls_handshake_failures.get_or_create(&label).clone(),
            framing: metrics.framing_errors.get_or_create(&label).clone(),
        }
    }
}

/// Decrements the open-connections gauge however the connection ends.
struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Why a connection's loop ended.
enum Next {
    Continue,
    Close,
}

/// How long a sender may take to complete the TLS handshake (at most the
/// listener's idle timeout).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The TLS handshake of a new connection: the stream, or `None` (logged,
/// counted, connection closed) when it fails, times out or the engine stops.
/// A sender speaking plain MLLP to the TLS port (its first byte is MLLP's start
/// block, never a TLS record's) is told apart in the log, and what it sent is
/// kept in the journal as `garbage`, as any other bytes that are not a message.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: &str,
    ctx: &ConnContext,
    cancel: &CancellationToken,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let limit = ctx.idle_timeout.min(HANDSHAKE_TIMEOUT);
    // one deadline for the first byte and the handshake together
    let deadline = tokio::time::Instant::now() + limit;
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        _ = cancel.cancelled() => return None,
        peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)) => peeked,
    };
    if let Ok(Ok(1)) = peeked {
        if first[0] == crate::mllp::codec::VT {
            plain_on_tls(stream, peer, ctx).await;
            return None;
        }
    }
    let outcome = tokio::select! {
        _ = cancel.cancelled() => return None,
        outcome = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => outcome,
    };
    match outcome {
        Ok(Ok(stream)) => {
            let (_, session) = stream.get_ref();
            let version = session
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("?");
            match session.peer_certificates().and_then(|chain| chain.first()) {
                // the sender's identity (a system's certificate, never a
                // person's data): who connected, for ops
                Some(cert) => info!(
                    tls = version,
                    client_certificate = %crate::mllp::tls::subject(cert),
                    "TLS connection"
                ),
                None => info!(tls = version, "TLS connection"),
            }
            Some(stream)
        }
        Ok(Err(err)) => {
            // rustls' reason (no client certificate, unknown CA, not TLS at
            // all): about the connection, never about a message
            let err = crate::mllp::tls::handshake_error(&err);
            warn!(error = %err, "TLS handshake failed, connection closed");
            ctx.counters.tls_failed.inc();
            refused(ctx, peer, format!("TLS handshake failed: {err}"));
            None
        }
        Err(_) => {
            warn!(
                timeout_secs = limit.as_secs(),
                "TLS handshake not completed in time, connection closed"
            );
            ctx.counters.tls_failed.inc();
            refused(ctx, peer, "TLS handshake not completed in time".to_string());
            None
        }
    }
}

/// Publishes a [`Event::ConnectionRefused`] for a connection closed before
/// any frame.
fn refused(ctx: &ConnContext, peer: &str, reason: String) {
    ctx.events.publish(Event::ConnectionRefused {
        listener: ctx.listener.clone(),
        peer: peer.to_string(),
        reason,
        at: events::now(),
    });
}

/// Keeps what a plain-MLLP sender sent to a TLS listener (what has arrived,
/// up to [`KEPT_BYTES`]) and closes: no ACK, so the sender keeps the message.
async fn plain_on_tls(mut stream: TcpStream, peer: &str, ctx: &ConnContext) {
    use tokio::io::AsyncReadExt;
    ctx.counters.tls_failed.inc();
    let mut kept = vec![0u8; KEPT_BYTES];
    let n = match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut kept)).await {
        Ok(Ok(n)) => n,
        _ => 0,
    };
    kept.truncate(n);
    keep_garbage(
        ctx,
        peer,
        Bytes::from(kept),
        n,
        "plain MLLP sent to a TLS listener: the sender does not use TLS",
        true,
    )
    .await;
}

/// How long a connection still reads after a shutdown began: a frame begun
/// (bytes of it read) gets up to [`DRAIN_FRAME`] to arrive whole and be
/// answered; with nothing begun, [`DRAIN_PEEK`] for one already in the
/// socket's buffer. A sender waiting for its ACK is answered, not cut off.
fn drain_until(nothing_begun: bool) -> Instant {
    Instant::now()
        + if nothing_begun {
            DRAIN_PEEK
        } else {
            DRAIN_FRAME
        }
}

/// See [`drain_until`].
const DRAIN_FRAME: Duration = Duration::from_secs(5);
/// How long bytes outside a frame (not keep-alive CR/LF) may wait for the
/// start block (0x0B) of the frame they come before: a sender's stack that
/// writes something before each frame sends the frame at once; a peer that
/// is not speaking MLLP gets its connection closed, with a log line, rather
/// than held until the idle timeout.
const STRAY_GRACE: Duration = Duration::from_secs(5);
/// See [`drain_until`].
const DRAIN_PEEK: Duration = Duration::from_millis(200);

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    ctx: &ConnContext,
    cancel: &CancellationToken,
) {
    ctx.counters.open_connections.inc();
    let _open = OpenGuard(ctx.counters.open_connections.clone());
    let peer_text = peer.to_string();
    let mut framed = Framed::new(Watched::new(stream), MllpCodec::new(ctx.max_message_bytes));
    debug!("connection opened");
    ctx.events.publish(Event::ConnectionOpened {
        listener: ctx.listener.clone(),
        peer: peer_text.clone(),
        at: events::now(),
    });
    // Shutting down: until when what has already arrived is still read and
    // answered (see `drain_until`).
    let mut draining: Option<Instant> = None;
    loop {
        // Idle means no byte for `idle_timeout`: the wait starts again from the
        // last byte read, so a large frame arriving slowly is not cut off for
        // that; a frame begun has until `frame_timeout` after its first byte.
        let watched = framed.get_ref();
        let mut wait = ctx.idle_timeout.saturating_sub(watched.last_read.elapsed());
        // (a frame not begun yet may begin during this wait: it is looked at
        // again at least every `frame_timeout`, so a shorter frame timeout
        // than the idle one still cuts in time)
        wait = wait.min(match watched.frame_started {
            Some(started) => ctx.frame_timeout.saturating_sub(started.elapsed()),
            None => ctx.frame_timeout,
        });
        // (bytes outside a frame may arrive during this wait too: looked at
        // again at least every `STRAY_GRACE`)
        wait = wait.min(match stray_pending(framed.read_buffer()) {
            true => STRAY_GRACE.saturating_sub(watched.last_read.elapsed()),
            false => STRAY_GRACE,
        });
        let next = match draining {
            Some(deadline) => {
                match tokio::time::timeout_at(deadline.into(), next_frame(&mut framed)).await {
                    Ok(next) => Ok(next),
                    Err(_) => {
                        // the shutdown's grace is over: a frame still unfinished
                        // is kept, as any abandoned bytes are
                        let pending = framed.read_buffer();
                        if !pending.is_empty() {
                            let kept =
                                Bytes::copy_from_slice(&pending[..pending.len().min(KEPT_BYTES)]);
                            let reason = format!(
                                "shutdown inside an unfinished frame after {} byte(s)",
                                pending.len()
                            );
                            keep_garbage(ctx, &peer_text, kept, pending.len(), &reason, true).await;
                        }
                        debug!("closing for shutdown");
                        break;
                    }
                }
            }
            None => tokio::select! {
                // Only taken while waiting for a frame: a frame in hand is always answered.
                _ = cancel.cancelled() => {
                    draining = Some(drain_until(framed.read_buffer().is_empty()));
                    continue;
                }
                next = tokio::time::timeout(wait, next_frame(&mut framed)) => next,
            },
        };
        // a frame the sender abandoned by starting a new one: kept, and the
        // connection goes on with the new frame
        for stray in framed.codec_mut().take_stray() {
            let size = stray.len();
            keep_garbage(
                ctx,
                &peer_text,
                stray,
                size,
                "bytes outside a frame, before a start block (0x0B): kept, the frame after them read",
                false,
            )
            .await;
        }
        for abandoned in framed.codec_mut().take_abandoned() {
            let size = abandoned.len();
            keep_garbage(
                ctx,
                &peer_text,
                abandoned,
                size,
                "a new start block (0x0B) began before this frame's end block: the sender abandoned it",
                false,
            )
            .await;
        }
        let outcome = match next {
            Err(_elapsed)
                if framed
                    .get_ref()
                    .frame_started
                    .is_some_and(|at| at.elapsed() >= ctx.frame_timeout)
                    && !framed.read_buffer().is_empty() =>
            {
                let pending = framed.read_buffer();
                let kept = Bytes::copy_from_slice(&pending[..pending.len().min(KEPT_BYTES)]);
                let reason = format!(
                    "a frame not finished {}s after its first byte ({} byte(s) so far): closed (frame_timeout_secs)",
                    ctx.frame_timeout.as_secs(),
                    pending.len()
                );
                keep_garbage(ctx, &peer_text, kept, pending.len(), &reason, true).await;
                Next::Close
            }
            Err(_elapsed)
                if stray_pending(framed.read_buffer())
                    && framed.get_ref().last_read.elapsed() >= STRAY_GRACE =>
            {
                let pending = framed.read_buffer();
                let kept = Bytes::copy_from_slice(&pending[..pending.len().min(KEPT_BYTES)]);
                let reason = format!(
                    "{} byte(s) outside a frame and no start block (0x0B) within {}s after them: not MLLP",
                    pending.len(),
                    STRAY_GRACE.as_secs()
                );
                keep_garbage(ctx, &peer_text, kept, pending.len(), &reason, true).await;
                Next::Close
            }
            Err(_elapsed) if framed.get_ref().last_read.elapsed() < ctx.idle_timeout => {
                // bytes read but none left to frame (stray bytes dropped): no
                // frame is begun
                if framed.read_buffer().is_empty() {
                    framed.get_mut().frame_started = None;
                }
                continue;
            }
            Err(_elapsed) => {
                let pending = framed.read_buffer();
                if pending.is_empty() {
                    info!(
                        idle_secs = ctx.idle_timeout.as_secs(),
                        "idle connection closed"
                    );
                } else {
                    let kept = Bytes::copy_from_slice(&pending[..pending.len().min(KEPT_BYTES)]);
                    let reason = if pending[0] == VT {
                        format!(
                            "idle timeout of {}s inside an unfinished frame after {} byte(s)",
                            ctx.idle_timeout.as_secs(),
                            pending.len()
                        )
                    } else {
                        format!(
                            "idle timeout of {}s after {} byte(s) outside a frame, with no start block (0x0B) after them",
                            ctx.idle_timeout.as_secs(),
                            pending.len()
                        )
                    };
                    keep_garbage(ctx, &peer_text, kept, pending.len(), &reason, true).await;
                }
                Next::Close
            }
            Ok(None) => {
                debug!("connection closed by peer");
                Next::Close
            }
            Ok(Some(Err(MllpError::Io(err)))) => {
                debug!(error = %err, "connection error");
                Next::Close
            }
            Ok(Some(Err(err))) => {
                let kept = err.kept_bytes().cloned().unwrap_or_default();
                let size = err.received_bytes().max(kept.len());
                keep_garbage(ctx, &peer_text, kept, size, &err.to_string(), true).await;
                Next::Close
            }
            Ok(Some(Ok(frame))) => {
                let next = handle_frame(ctx, &peer_text, frame, &mut framed).await;
                // idle counts from the answer too: a commit that waited (a
                // full disk) must not make the sender look idle; the next
                // frame, when part of it is read already, begins now
                let begun = framed.read_buffer().iter().any(|b| !is_keep_alive(*b));
                let (watched, now) = (framed.get_mut(), Instant::now());
                watched.last_read = now;
                watched.frame_started = begun.then_some(now);
                next
            }
        };
        if let Next::Close = outcome {
            break;
        }
        // shutting down, the frame in flight answered: nothing more is read
        if draining.is_some() && framed.read_buffer().is_empty() {
            debug!("closing for shutdown");
            break;
        }
    }
    debug!("connection closed");
    ctx.events.publish(Event::ConnectionClosed {
        listener: ctx.listener.clone(),
        peer: peer_text,
        at: events::now(),
    });
}

/// A byte a sender writes between frames to keep the connection open, or
/// after its end block (CR, LF, FS): it begins no frame.
fn is_keep_alive(b: u8) -> bool {
    matches!(b, b'\r' | b'\n' | 0x1C)
}

/// Whether `pending` (read, not yet framed) is bytes outside a frame that
/// are not keep-alive, with no start block among them yet ([`STRAY_GRACE`]).
fn stray_pending(pending: &[u8]) -> bool {
    !pending.is_empty() && !pending.contains(&VT) && !pending.iter().all(|&b| is_keep_alive(b))
}

/// A connection's stream that remembers when it last read a byte (what the
/// idle timeout is measured from; the connection loop also sets it when a
/// frame has been answered).
struct Watched<S> {
    inner: S,
    last_read: Instant,
    /// When the first byte after the last frame answered was read that is
    /// not a keep-alive (CR, LF, FS: the frame timeout counts from it);
    /// `None` while nothing else is read since.
    frame_started: Option<Instant>,
}

impl<S> Watched<S> {
    fn new(inner: S) -> Self {
        Watched {
            inner,
            last_read: Instant::now(),
            frame_started: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            let now = Instant::now();
            self.last_read = now;
            // a keep-alive (CR, LF, a stray end block) begins no frame
            if read.iter().any(|b| !is_keep_alive(*b)) {
                self.frame_started.get_or_insert(now);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Journals the bytes of a framing error and logs one warning; `closing`: the
/// caller closes the connection (else it goes on).
async fn keep_garbage(
    ctx: &ConnContext,
    peer: &str,
    kept: Bytes,
    seen: usize,
    reason: &str,
    closing: bool,
) {
    let outcome = if closing {
        "framing error, connection closed"
    } else {
        "framing error, connection kept open"
    };
    ctx.counters.received.inc();
    ctx.counters.rejected.inc();
    ctx.counters.framing.inc();
    let kept_len = kept.len();
    ctx.events.publish(Event::FramingError {
        listener: ctx.listener.clone(),
        peer: peer.to_string(),
        reason: reason.to_string(),
        bytes: seen,
        at: events::now(),
    });
    let item = Incoming {
        listener: ctx.listener.clone(),
        peer: peer.to_string(),
        received_at: jiff::Timestamp::now(),
        sender: String::new(),
        control_id: String::new(),
        message_type: String::new(),
        version: String::new(),
        status: Status::Garbage,
        ack_code: None,
        ack: None,
        error: Some(reason.to_string()),
        raw: kept,
    };
    match ctx.journal.commit(vec![item]).await {
        Ok(committed) => warn!(
            bytes = seen,
            kept_bytes = kept_len,
            journal_id = committed.first().map(Committed::id),
            reason,
            "{outcome}"
        ),
        Err(err) => warn!(
            bytes = seen,
            reason,
            error = %err,
            "{outcome}; the bytes could not be journaled"
        ),
    }
}

/// Handles one complete frame: assess, journal, answer.
async fn handle_frame<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &ConnContext,
    peer: &str,
    frame: Bytes,
    framed: &mut Framed<S, MllpCodec>,
) -> Next {
    let started = Instant::now();
    let received_at = jiff::Timestamp::now();
    // A frame that is not a well-formed batch is assessed as one message
    // (it has no MSH first, so it gets AR naming that).
    let (batch, messages) = match batch_envelope(&frame) {
        Some(envelope) => match hl7::split_batch_bytes(&frame) {
            Some(messages) => (Some(envelope), messages),
            None => (None, vec![frame.clone()]),
        },
        None => (None, vec![frame.clone()]),
    };
    let items: Vec<Incoming> = messages
        .into_iter()
        .map(|raw| assess(ctx, peer, received_at, raw))
        .collect();
    ctx.counters.received.inc_by(items.len() as u64);
    // how each message was read (UTF-16 by its byte order mark, or
    // windows-1252 when no charset was declared and the bytes are not UTF-8):
    // their ACKs go back the same way
    let read_as: Vec<ReadAs> = items.iter().map(|i| ReadAs::of(&i.raw)).collect();
    // What the log line and the reply need, copied before the items move to
    // the journal (cheaper than cloning whole items).
    let views: Vec<ItemView> = items.iter().map(ItemView::of).collect();
    let committed = match ctx.journal.commit(items).await {
        Ok(committed) => committed,
        Err(err) => {
            journal_failed(&err, &views);
            return Next::Close;
        }
    };
    // The ACK of each message: the one built now, or the stored one for a resend.
    let mut acks: Vec<(Option<String>, Option<String>)> = Vec::with_capacity(views.len());
    for (mut item, outcome) in views.into_iter().zip(&committed) {
        let elapsed_us = started.elapsed().as_micros() as u64;
        let (code, ack, duplicate) = match outcome {
            Committed::Stored { .. } => (item.ack_code.take(), item.ack.take(), false),
            Committed::Duplicate {
                id,
                ack_code,
                ack,
                differing,
            } => {
                ctx.counters.duplicates.inc();
                if let Some(kept) = differing {
                    ctx.counters.rejected.inc();
                    warn!(
                        control_id = %item.control_id,
                        sender = %item.sender,
                        size = item.size,
                        original = id,
                        kept = kept,
                        "a resend whose content differs from the original's: answered with \
                         the original's ACK, not processed, kept as a rejected row \
                         (does the sender reuse control ids?)"
                    );
                }
                match ack {
                    Some(ack) => (ack_code.clone(), Some(ack.clone()), true),
                    // the original asked for no answer (MSH-15 NE) and none was
                    // kept; this copy asks for one: it gets the answer built
                    // for it now (the original was accepted)
                    None => (
                        item.ack_code.take().or(ack_code.clone()),
                        item.ack.take(),
                        true,
                    ),
                }
            }
        };
        if item.status == Status::Rejected {
            ctx.counters.rejected.inc();
        }
        // (a resend that differs is kept as a rejected row of its own: the
        // line tells that row, as the warning above does)
        let (status, journal_id) = match outcome {
            Committed::Duplicate {
                differing: Some(kept),
                ..
            } => (Status::Rejected.as_str(), *kept),
            _ => (item.status.as_str(), outcome.id()),
        };
        info!(
            control_id = %item.control_id,
            message_type = %item.message_type,
            sender = %item.sender,
            ack_code = code.as_deref().unwrap_or("none"),
            status,
            answered = ack.is_some(),
            duplicate,
            size = item.size,
            journal_id,
            elapsed_us,
            "message"
        );
        if ctx.events.has_subscribers() {
            ctx.events.publish(message_event(
                ctx,
                peer,
                &item,
                &code,
                duplicate,
                outcome.id(),
                elapsed_us,
            ));
        }
        acks.push((code, ack));
    }
    if let Some(declared) = batch.as_ref().and_then(|b| b.declared) {
        if declared != acks.len() as u64 {
            warn!(
                peer,
                declared,
                received = acks.len(),
                "a batch whose BTS-1 count differs from the messages it held (cut short?); \
                 each message was answered, BTS-2 of the batch ACK says so"
            );
        }
    }
    let reply = match &batch {
        Some(envelope) => Some(Reply::Bytes(batch_ack(envelope, &acks, &read_as))),
        None => acks
            .first()
            .and_then(|(_, ack)| ack.clone())
            .map(Reply::Text),
    };
    if let Some(reply) = reply {
        let bytes = match reply {
            // a batch ACK is written piece by piece (`batch_ack`)
            Reply::Bytes(bytes) => bytes,
            Reply::Text(reply) => encode_ack(&reply, read_as.first().copied().unwrap_or_default()),
        };
        // A peer that does not read its ACKs must not pin this task forever.
        match tokio::time::timeout(ctx.idle_timeout, framed.send(bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                debug!(error = %err, "could not write the ACK; closing");
                return Next::Close;
            }
            Err(_elapsed) => {
                warn!(
                    idle_secs = ctx.idle_timeout.as_secs(),
                    "peer is not reading its ACKs; closing"
                );
                return Next::Close;
            }
        }
        for (code, ack) in &acks {
            if let (Some(code), Some(_)) = (code, ack) {
                ctx.metrics
                    .acked
                    .get_or_create(&AckLabel {
                        listener: ctx.listener.clone(),
                        code: code.clone(),
                    })
                    .inc();
            }
        }
    }
    Next::Continue
}

/// The event for one journaled message: header identifiers only, no content.
fn message_event(
    ctx: &ConnContext,
    peer: &str,
    item: &ItemView,
    code: &Option<String>,
    duplicate: bool,
    journal_id: i64,
    elapsed_us: u64,
) -> Event {
    let (error_location, error_code) = item
        .error
        .as_deref()
        .map(events::error_location_and_code)
        .unwrap_or_default();
    let outcome = MessageOutcome {
        listener: ctx.listener.clone(),
        peer: peer.to_string(),
        sender: item.sender.clone(),
        control_id: item.control_id.clone(),
        message_type: item.message_type.clone(),
        ack_code: code.clone(),
        size_bytes: item.size,
        journal_id,
        duplicate,
        elapsed_us,
        at: events::now(),
        error_location,
        error_code,
    };
    if item.status == Status::Rejected {
        Event::MessageRejected(outcome)
    } else {
        Event::MessageAcked(outcome)
    }
}

/// The parts of an [`Incoming`] the listener still needs after the journal
/// has taken it: the log line's fields and the ACK to send.
struct ItemView {
    control_id: String,
    message_type: String,
    sender: String,
    status: Status,
    ack_code: Option<String>,
    ack: Option<String>,
    size: usize,
    /// The journal's one-line error of a rejection, for its event.
    error: Option<String>,
}

impl ItemView {
    fn of(item: &Incoming) -> Self {
        ItemView {
            control_id: item.control_id.clone(),
            message_type: item.message_type.clone(),
            sender: item.sender.clone(),
            status: item.status,
            ack_code: item.ack_code.clone(),
            ack: item.ack.clone(),
            size: item.raw.len(),
            error: item.error.clone(),
        }
    }
}

fn journal_failed(err: &JournalError, items: &[ItemView]) {
    tracing::error!(
        error = %err,
        messages = items.len(),
        control_id = items.first().map(|i| i.control_id.as_str()).unwrap_or(""),
        "journal commit failed: no ACK sent, closing the connection so the sender resends"
    );
}

/// Assesses one message and builds the ACK it gets if it is new. `ack` is
/// `None` when the sender asked for no accept acknowledgement (enhanced
/// mode NE/ER/SU): then none is stored either, and a resend that asks for
/// none gets none (one that asks gets the answer built for it).
#[allow(clippy::result_large_err)]
fn assess(ctx: &ConnContext, peer: &str, received_at: jiff::Timestamp, raw: Bytes) -> Incoming {
    let timestamp = ack_timestamp();
    let control_id = next_control_id();
    let assessed = hl7::check_intake(&raw, Some(&ctx.processing_ids));
    match assessed {
        Ok(header) => {
            let enhanced = enhanced_mode(ctx.ack_mode, &header);
            let (code, answer) = if enhanced {
                (AckCode::CA, accept_ack_wanted(&header, true))
            } else {
                (AckCode::AA, true)
            };
            // an acknowledgement sent to the listener is kept, and answered
            // only when it asks for an accept acknowledgement itself (an
            // application ACK sent in enhanced mode with MSH-15 AL or SU:
            // its sender waits for the CA and would resend it for ever);
            // our CA leaves MSH-15/16 empty, so it is never answered in
            // turn. Otherwise its row says none was sent: no ACK code.
            let inbound_ack = hl7::is_acknowledgement(&header) && !asks_commit(&header);
            let answer = answer && !inbound_ack;
            // a sender waiting for an application acknowledgement (MSH-16)
            // this listener never sends: said, not left to wait in silence
            if enhanced
                && !inbound_ack
                && !ctx.sends_application_acks
                && (hl7::application_ack_wanted(&header, true)
                    || hl7::application_ack_wanted(&header, false))
            {
                warn!(control_id = %header.control_id, sender = %header.sender(),
                    "the message asks for an application acknowledgement (MSH-16), which this \
                     listener does not send: name a destination in its `application_ack`");
            }
            let ack =
                answer.then(|| hl7::build_ack(Some(&header), code, None, &control_id, &timestamp));
            Incoming {
                listener: ctx.listener.clone(),
                peer: peer.to_string(),
                received_at,
                sender: header.sender(),
                control_id: header.control_id.clone(),
                message_type: header.message_type(),
                version: header.version.clone(),
                status: Status::Accepted,
                // the code of the ACK sent: none for one not sent (MSH-15 NE,
                // an inbound acknowledgement), so the row says what the
                // sender got
                ack_code: ack.as_ref().map(|_| code.as_str().to_string()),
                ack,
                error: None,
                raw,
            }
        }
        Err(rejection) => {
            let header = rejection.header.as_ref();
            let enhanced = header.is_some_and(|h| enhanced_mode(ctx.ack_mode, h));
            // a sender that asked for no accept acknowledgement (MSH-15 NE) but
            // for an application acknowledgement on error (MSH-16 AL/ER) is
            // answered with the application-level reject now: a refused message
            // never goes on to the application that would send it, and silence
            // would read as success
            let application_answer = header.is_some_and(|h| {
                enhanced && !accept_ack_wanted(h, false) && hl7::application_ack_wanted(h, false)
            });
            let code = if enhanced && !application_answer {
                rejection.code.to_commit()
            } else {
                rejection.code
            };
            let answer = match header {
                Some(h) if enhanced => accept_ack_wanted(h, false) || application_answer,
                _ => true,
            };
            let ack = answer.then(|| {
                hl7::build_ack(
                    header,
                    code,
                    Some(&rejection.error),
                    &control_id,
                    &timestamp,
                )
            });
            Incoming {
                listener: ctx.listener.clone(),
                peer: peer.to_string(),
                received_at,
                sender: header.map(Header::sender).unwrap_or_default(),
                control_id: header.map(|h| h.control_id.clone()).unwrap_or_default(),
                message_type: header.map(Header::message_type).unwrap_or_default(),
                version: header.map(|h| h.version.clone()).unwrap_or_default(),
                status: Status::Rejected,
                ack_code: ack.as_ref().map(|_| code.as_str().to_string()),
                ack,
                error: Some(rejection.error.summary()),
                raw,
            }
        }
    }
}

/// Enhanced mode applies when MSH-15 or MSH-16 is valued (and the listener honours it).
fn enhanced_mode(mode: AckMode, header: &Header) -> bool {
    let valued = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.trim().is_empty());
    mode == AckMode::Auto
        && (valued(&header.accept_ack_type) || valued(&header.application_ack_type))
}

/// MSH-15 in enhanced mode: AL (or empty) always, NE never, ER on error, SU on success.
/// MSH-15 says AL or SU in so many words (an empty MSH-15 is "always" only
/// for a message that is not itself an acknowledgement).
fn asks_commit(header: &Header) -> bool {
    header
        .accept_ack_type
        .as_deref()
        .is_some_and(|v| matches!(v.trim().to_ascii_uppercase().as_str(), "AL" | "SU"))
}

fn accept_ack_wanted(header: &Header, success: bool) -> bool {
    match header
        .accept_ack_type
        .as_deref()
        .map(|v| v.trim().to_ascii_uppercase())
        .as_deref()
    {
        Some("NE") => false,
        Some("ER") => !success,
        Some("SU") => success,
        _ => true,
    }
}

/// A new ACK control id (MSH-10): a per-process random prefix and a counter,
/// at most 20 characters (the v2.3 length of MSH-10).
pub(crate) fn next_control_id() -> String {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        let mut p = String::from("J");
        for _ in 0..6 {
            p.push(fastrand::alphanumeric().to_ascii_uppercase());
        }
        p
    });
    format!("{prefix}{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// MSH-7 of an ACK: local time, `YYYYMMDDHHMMSS`.
pub(crate) fn ack_timestamp() -> String {
    jiff::Zoned::now().strftime("%Y%m%d%H%M%S").to_string()
}

/// How a message's bytes were read, when it was not by what its MSH-18
/// declares: its ACK is written the same way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ReadAs {
    /// As MSH-18 declares (UTF-8 when it declares nothing).
    #[default]
    Declared,
    /// No character set (or ASCII) declared, and not UTF-8: windows-1252.
    Windows1252,
    /// UTF-16, little-endian (`FF FE`) or big-endian, with a byte order mark
    /// or without.
    Utf16 { little_endian: bool, bom: bool },
}

impl ReadAs {
    fn of(raw: &[u8]) -> ReadAs {
        if let Some(order) = hl7::utf16_order(raw) {
            return ReadAs::Utf16 {
                little_endian: order.little_endian,
                bom: order.bom,
            };
        }
        let undeclared = hl7::msh18(raw).as_deref().is_none_or(|c| {
            matches!(
                c.trim().to_ascii_uppercase().as_str(),
                "ASCII" | "ISO IR6" | "US-ASCII"
            )
        });
        if undeclared && std::str::from_utf8(raw).is_err() {
            ReadAs::Windows1252
        } else {
            ReadAs::Declared
        }
    }
}

/// An ACK's bytes: in the character set its MSH-18 declares (the sender's
/// own), as windows-1252 for a sender whose message was read so, or in
/// UTF-16 in the byte order of a sender that wrote it (with its byte order
/// mark when it wrote one), so MSA-2 and
/// MSH-5/6 are its own bytes and its reader reads the ACK as it wrote.
/// (`encoding_rs` decodes UTF-16 but encodes it as UTF-8: written here.)
fn encode_ack(ack: &str, read_as: ReadAs) -> Vec<u8> {
    match read_as {
        ReadAs::Windows1252 => hl7::encode_text(ack, Some("windows-1252")),
        ReadAs::Utf16 { little_endian, bom } => {
            let mut out = Vec::with_capacity(2 + ack.len() * 2);
            let mark = bom.then_some(0xFEFF);
            for unit in mark.into_iter().chain(ack.encode_utf16()) {
                out.extend(if little_endian {
                    unit.to_le_bytes()
                } else {
                    unit.to_be_bytes()
                });
            }
            out
        }
        ReadAs::Declared => match hl7::msh18(ack.as_bytes()) {
            Some(charset) => hl7::encode_text(ack, Some(&charset)),
            None => ack.as_bytes().to_vec(),
        },
    }
}

/// What a frame is answered with: one message's ACK (encoded when sent), or
/// a batch ACK already written as bytes.
enum Reply {
    Text(String),
    Bytes(Vec<u8>),
}

/// The batch header segments of a frame that starts a batch, if it does.
struct BatchEnvelope {
    /// The FHS fields, when the batch is a file.
    fhs: Option<Vec<String>>,
    /// The BHS fields, if any.
    bhs: Option<Vec<String>>,
    field_sep: char,
    encoding: String,
    /// How many messages the batch says it holds: the BTS-1 counts, added up
    /// over its batches (`None` when a BTS is missing or its count unreadable).
    declared: Option<u64>,
    /// The batches of a file (each BHS, its messages and its BTS-1), in order.
    groups: Vec<BatchGroup>,
    /// The header was not UTF-8 (read, and answered, as windows-1252).
    latin: bool,
}

/// One batch (BHS … BTS) of a frame.
struct BatchGroup {
    bhs: Option<Vec<String>>,
    messages: usize,
    declared: Option<u64>,
}

/// Reads the FHS/BHS of a frame that begins with one (after a BOM or whitespace).
fn batch_envelope(frame: &[u8]) -> Option<BatchEnvelope> {
    // white space and byte order marks, in any order, before the header
    let mut start = frame;
    loop {
        let blank = start.iter().take_while(|b| b.is_ascii_whitespace()).count();
        let rest = hl7::strip_utf8_bom(&start[blank..]);
        if rest.len() == start.len() {
            break;
        }
        start = rest;
    }
    if !(start.starts_with(b"FHS") || start.starts_with(b"BHS")) {
        return None;
    }
    // Batch headers are mostly ASCII; a non-UTF-8 one (a Latin-1 file name)
    // is read as windows-1252, as an undeclared message is, and answered so
    let (text, latin) = match std::str::from_utf8(start) {
        Ok(text) => (std::borrow::Cow::Borrowed(text), false),
        Err(_) => (
            encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(start)
                .0,
            true,
        ),
    };
    let text = text.as_ref();
    let field_sep = text[3..].chars().next()?;
    let mut envelope = BatchEnvelope {
        fhs: None,
        bhs: None,
        field_sep,
        encoding: String::from("^~\\&"),
        declared: declared_count(text, field_sep),
        groups: Vec::new(),
        latin,
    };
    let mut in_message = false;
    for segment in text.split(['\r', '\n']).filter(|s| !s.is_empty()) {
        let segment = segment.trim_start_matches(['\u{feff}', ' ', '\t']);
        let name = segment.get(..3).unwrap_or(segment);
        if !matches!(name, "FHS" | "BHS" | "MSH" | "BTS" | "FTS") {
            continue;
        }
        let fields: Vec<String> = segment.split(field_sep).map(str::to_string).collect();
        match name {
            "FHS" if envelope.fhs.is_none() && !in_message => {
                if let Some(enc) = fields.get(1) {
                    envelope.encoding = enc.clone();
                }
                envelope.fhs = Some(fields);
            }
            "BHS" => {
                if envelope.bhs.is_none() && !in_message {
                    if let Some(enc) = fields.get(1) {
                        envelope.encoding = enc.clone();
                    }
                    envelope.bhs = Some(fields.clone());
                }
                envelope.groups.push(BatchGroup {
                    bhs: Some(fields),
                    messages: 0,
                    declared: None,
                });
            }
            "MSH" => {
                in_message = true;
                if envelope.groups.is_empty() {
                    envelope.groups.push(BatchGroup {
                        bhs: None,
                        messages: 0,
                        declared: None,
                    });
                }
                if let Some(group) = envelope.groups.last_mut() {
                    group.messages += 1;
                }
            }
            "BTS" => {
                if let Some(group) = envelope.groups.last_mut() {
                    group.declared = fields.get(1).and_then(|c| c.trim().parse().ok());
                }
            }
            _ => {}
        }
    }
    Some(envelope)
}

/// The messages a batch's trailers declare (BTS-1, over all its BTS), when
/// every BTS gives a count.
fn declared_count(text: &str, field_sep: char) -> Option<u64> {
    let mut total: Option<u64> = None;
    for segment in text.split(['\r', '\n']) {
        let mut fields = segment.split(field_sep);
        if fields.next() != Some("BTS") {
            continue;
        }
        let count: u64 = fields.next()?.trim().parse().ok()?;
        total = Some(total.unwrap_or(0) + count);
    }
    total
}

/// The batch ACK: `[FHS] BHS`, each message's ACK in order, `BTS` `[FTS]`.
/// When the batch's BTS-1 declared another number of messages than it held
/// (a file cut short in transfer), BTS-2 says so: the sender can tell what
/// never arrived.
/// Header fields are swapped (our receiving side becomes the sender), the
/// reference control id points at the incoming batch's control id.
fn batch_ack(
    envelope: &BatchEnvelope,
    acks: &[(Option<String>, Option<String>)],
    read_as: &[ReadAs],
) -> Vec<u8> {
    // each ACK with how its message was read
    let acks: Vec<(Option<&str>, ReadAs)> = acks
        .iter()
        .enumerate()
        .map(|(i, (_, ack))| (ack.as_deref(), read_as.get(i).copied().unwrap_or_default()))
        .collect();
    let acks = acks.as_slice();
    let sep = envelope.field_sep;
    let timestamp = ack_timestamp();
    let field = |fields: &Option<Vec<String>>, n: usize| -> String {
        fields
            .as_ref()
            .and_then(|f| f.get(n - 1))
            .cloned()
            .unwrap_or_default()
    };
    let header = |name: &str, fields: &Option<Vec<String>>| -> String {
        // FHS/BHS-3..6: sending app, facility, receiving app, facility;
        // -7 time; -11 control id; -12 reference control id.
        format!(
            "{name}{sep}{enc}{sep}{ra}{sep}{rf}{sep}{sa}{sep}{sf}{sep}{ts}{sep}{sep}{sep}{sep}{cid}{sep}{refid}\r",
            enc = envelope.encoding,
            ra = field(fields, 5),
            rf = field(fields, 6),
            sa = field(fields, 3),
            sf = field(fields, 4),
            ts = timestamp,
            cid = next_control_id(),
            refid = field(fields, 11),
        )
    };
    let mut out = Out {
        bytes: Vec::new(),
        latin: envelope.latin,
    };
    if envelope.fhs.is_some() {
        out.push_str(&header("FHS", &envelope.fhs));
    }
    // a file of no batch and no message: its FHS answered, nothing invented
    if envelope.groups.is_empty() && acks.is_empty() {
        if envelope.fhs.is_some() {
            out.push_str(&format!("FTS{sep}0\r"));
        }
        return out.bytes;
    }
    // a file of several batches: each answered by its own BHS (BHS-12 its
    // BHS-11) and BTS, FTS-1 counting them
    let groups = &envelope.groups;
    if groups.len() > 1 && groups.iter().map(|g| g.messages).sum::<usize>() == acks.len() {
        let mut rest = acks;
        for group in groups {
            let (mine, later) = rest.split_at(group.messages);
            rest = later;
            // messages sent under the FHS before any BHS: answered there,
            // under no batch that never existed
            if group.bhs.is_none() {
                for &(ack, latin) in mine {
                    if let Some(ack) = ack {
                        out.push_ack(ack, latin);
                    }
                }
                continue;
            }
            out.push_str(&header("BHS", &group.bhs));
            out.push_batch(mine, group.declared, sep);
        }
        if envelope.fhs.is_some() {
            let batches = groups.iter().filter(|g| g.bhs.is_some()).count();
            out.push_str(&format!("FTS{sep}{batches}\r"));
        }
        return out.bytes;
    }
    out.push_str(&header(
        "BHS",
        &envelope.bhs.clone().or_else(|| envelope.fhs.clone()),
    ));
    out.push_batch(acks, envelope.declared, sep);
    if envelope.fhs.is_some() {
        out.push_str(&format!("FTS{sep}1\r"));
    }
    out.bytes
}

/// A batch ACK as it is written: its own segments in the batch header's
/// character set (windows-1252 when the header was not UTF-8), each message's
/// ACK in the character set its own MSH-18 names, as when it is sent alone.
struct Out {
    bytes: Vec<u8>,
    latin: bool,
}

impl Out {
    fn push_str(&mut self, text: &str) {
        if self.latin {
            self.bytes
                .extend(hl7::encode_text(text, Some("windows-1252")));
        } else {
            self.bytes.extend_from_slice(text.as_bytes());
        }
    }

    /// A batch's messages' ACKs and its BTS: BTS-1 counts the ACKs sent;
    /// when the batch declared (BTS-1) another number of messages than it
    /// held, BTS-2 says so.
    fn push_batch(&mut self, acks: &[(Option<&str>, ReadAs)], declared: Option<u64>, sep: char) {
        let mut count = 0;
        for &(ack, latin) in acks {
            if let Some(ack) = ack {
                count += 1;
                self.push_ack(ack, latin);
            }
        }
        match declared {
            Some(declared) if declared != acks.len() as u64 => self.push_str(&format!(
                "BTS{sep}{count}{sep}the batch declared {declared} messages (BTS-1); {} received\r",
                acks.len()
            )),
            _ => self.push_str(&format!("BTS{sep}{count}\r")),
        }
    }

    fn push_ack(&mut self, ack: &str, read_as: ReadAs) {
        self.bytes.extend(encode_ack(ack, read_as));
        if !ack.ends_with('\r') {
            self.bytes.push(b'\r');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_ids_are_unique_and_short() {
        let a = next_control_id();
        let b = next_control_id();
        assert_ne!(a, b);
        assert!(a.len() <= 20, "{a}");
    }

    #[test]
    fn batch_envelope_reads_fhs_and_bhs() {
        let frame = b"FHS|^~\\&|LAB|RAL|JUNCTION|HUB|20260101||||F1\rBHS|^~\\&|LAB|RAL|JUNCTION|HUB|20260101||||B1\rMSH|^~\\&|LAB|RAL\rBTS|1\rFTS|1\r";
        let env = batch_envelope(frame).expect("a batch");
        assert_eq!(env.declared, Some(1));
        assert_eq!(env.fhs.as_ref().unwrap()[10], "F1");
        assert_eq!(env.bhs.as_ref().unwrap()[2], "LAB");
        assert!(batch_envelope(b"MSH|^~\\&|X").is_none());
        assert!(batch_envelope(&[0xff, 0xfe]).is_none());
        let ack = String::from_utf8(batch_ack(
            &env,
            &[(Some("AA".into()), Some("MSH|x\rMSA|AA|1".into()))],
            &[],
        ))
        .unwrap();
        let segments: Vec<&str> = ack.split('\r').collect();
        assert!(
            segments[0].starts_with("FHS|^~\\&|JUNCTION|HUB|LAB|RAL|"),
            "{ack}"
        );
        assert!(segments[0].ends_with("|F1"), "{ack}");
        assert!(
            segments[1].starts_with("BHS|^~\\&|JUNCTION|HUB|LAB|RAL|"),
            "{ack}"
        );
        assert!(segments[1].ends_with("|B1"), "{ack}");
        assert_eq!(&segments[2..6], &["MSH|x", "MSA|AA|1", "BTS|1", "FTS|1"]);
    }

    #[test]
    fn a_batch_cut_short_says_so_in_its_ack() {
        // BTS-1 says 3, one message arrived (a file cut short in transfer)
        let frame = b"BHS|^~\\&|LAB|RAL|JUNCTION|HUB|20260101||||B1\rMSH|^~\\&|LAB|RAL\rBTS|3\r";
        let env = batch_envelope(frame).expect("a batch");
        assert_eq!(env.declared, Some(3));
        let ack = String::from_utf8(batch_ack(
            &env,
            &[(Some("AA".into()), Some("MSH|x\rMSA|AA|1".into()))],
            &[],
        ))
        .unwrap();
        assert!(
            ack.contains("\rBTS|1|the batch declared 3 messages (BTS-1); 1 received\r"),
            "{ack}"
        );
        // two batches in a file: their counts add up; a BTS without a count: unknown
        let two = "FHS|^~\\&\rBHS|^~\\&\rMSH|a\rBTS|1\rBHS|^~\\&\rMSH|b\rMSH|c\rBTS|2\rFTS|2\r";
        assert_eq!(declared_count(two, '|'), Some(3));
        assert_eq!(declared_count("BHS|^~\\&\rMSH|a\rBTS\r", '|'), None);
        assert_eq!(declared_count("BHS|^~\\&\rMSH|a\r", '|'), None);
    }

    #[test]
    fn each_batch_of_a_file_gets_its_own_bhs_and_bts() {
        let frame = b"FHS|^~\\&|LAB|RAL|||||||F1\rBHS|^~\\&|LAB|RAL|||||||B7A\rMSH|a\rBTS|1\rBHS|^~\\&|LAB|RAL|||||||B7B\rMSH|b\rMSH|c\rBTS|2\rFTS|2\r";
        let env = batch_envelope(frame).expect("a batch");
        let acks: Vec<(Option<String>, Option<String>)> = ["a", "b", "c"]
            .iter()
            .map(|c| (Some("AA".into()), Some(format!("MSH|x\rMSA|AA|{c}"))))
            .collect();
        let ack = String::from_utf8(batch_ack(&env, &acks, &[])).unwrap();
        let segments: Vec<&str> = ack.split('\r').filter(|s| !s.is_empty()).collect();
        let names: Vec<&str> = segments.iter().map(|s| &s[..3]).collect();
        assert_eq!(
            names,
            ["FHS", "BHS", "MSH", "MSA", "BTS", "BHS", "MSH", "MSA", "MSH", "MSA", "BTS", "FTS"],
            "{ack}"
        );
        assert!(
            segments[1].ends_with("|B7A") && segments[5].ends_with("|B7B"),
            "{ack}"
        );
        assert_eq!(
            (segments[4], segments[10], segments[11]),
            ("BTS|1", "BTS|2", "FTS|2")
        );
        // a message under the FHS before the first BHS: answered there, no BHS made up
        let frame = b"FHS|^~\\&|LAB|RAL|||||||F3\rMSH|a\rBHS|^~\\&|LAB|RAL|||||||B3A\rMSH|b\rBTS|1\rFTS|1\r";
        let env = batch_envelope(frame).expect("a batch");
        let acks: Vec<(Option<String>, Option<String>)> = ["a", "b"]
            .iter()
            .map(|c| (Some("AA".into()), Some(format!("MSH|x\rMSA|AA|{c}"))))
            .collect();
        let ack = String::from_utf8(batch_ack(&env, &acks, &[])).unwrap();
        let names: Vec<&str> = ack
            .split('\r')
            .filter(|s| !s.is_empty())
            .map(|s| &s[..3])
            .collect();
        assert_eq!(
            names,
            ["FHS", "MSH", "MSA", "BHS", "MSH", "MSA", "BTS", "FTS"],
            "{ack}"
        );
        assert!(ack.contains("|B3A\r") && ack.ends_with("FTS|1\r"), "{ack}");
        // a file with no batch and no message: its FHS and FTS|0, no invented BHS
        let env = batch_envelope(b"FHS|^~\\&|LAB|RAL|||||||FILE10\rFTS|0\r").expect("a file");
        let ack = String::from_utf8(batch_ack(&env, &[], &[])).unwrap();
        let segments: Vec<&str> = ack.split('\r').filter(|s| !s.is_empty()).collect();
        assert_eq!(segments.len(), 2, "{ack}");
        assert!(segments[0].starts_with("FHS|") && segments[0].ends_with("|FILE10"));
        assert_eq!(segments[1], "FTS|0");
    }
}
