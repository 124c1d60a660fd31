//! The live event stream: what the intake did, as it happens, for
//! `GET /api/events` and `junction tail`.
//!
//! [`EventBus`] is a bounded `tokio::sync::broadcast` channel. The intake
//! calls [`EventBus::publish`] next to each outcome it logs; that costs one
//! atomic load when nobody subscribes and never waits. A subscriber that falls
//! more than [`CAPACITY`] events behind loses the oldest ones and receives one
//! [`Event::Lagged`] saying how many it missed — the intake is never slowed.
//!
//! It does not store events (the journal is the record) and does not log
//! them: the caller logs and counts each outcome where it publishes it.
//!
//! # Invariants
//! - No patient data, ever: events carry listener, peer, sender, control id,
//!   message type, ACK code, sizes, journal id and timings only. The ERR text
//!   of a rejection can quote message bytes (`found '...'`), so a rejection
//!   carries only the error's location (`MSH-9`) and HL7 table 0357 code.
//! - Event names are in the past tense (`MessageAcked`).

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How many events a slow subscriber may fall behind before it misses some.
pub const CAPACITY: usize = 1024;

/// One thing the engine did. Serialized as JSON with an `event` field naming
/// the variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum Event {
    /// A message was journaled and answered with an accept code (AA/CA), or
    /// accepted without an answer because the sender asked for none.
    MessageAcked(MessageOutcome),
    /// A message was journaled as rejected and answered AE/AR (CE/CR).
    MessageRejected(MessageOutcome),
    /// Bytes that were not a valid frame; the connection was closed.
    FramingError {
        listener: String,
        peer: String,
        reason: String,
        bytes: usize,
        at: String,
    },
    ConnectionOpened {
        listener: String,
        peer: String,
        at: String,
    },
    /// A connection closed before any frame: its peer is not in
    /// `allowed_peers`, or its TLS handshake failed or timed out (`reason`
    /// names which; never anything the peer sent).
    ConnectionRefused {
        listener: String,
        peer: String,
        reason: String,
        at: String,
    },
    ConnectionClosed {
        listener: String,
        peer: String,
        at: String,
    },
    /// A message was routed: documents were queued for these destinations.
    MessageRouted(RoutingEvent),
    /// No route (or no route's condition) took the message; it stays in the
    /// journal as unrouted.
    MessageUnrouted(RoutingEvent),
    /// The message could not be parsed or mapped (the error is in the journal).
    RoutingFailed(RoutingEvent),
    /// A document reached a destination.
    Delivered(DeliveryEvent),
    /// A delivery attempt failed; it is retried at `retry_at`.
    DeliveryFailed(DeliveryEvent),
    /// A delivery was given up on (attempts, age or a permanent error).
    DeadLettered(DeliveryEvent),
    /// A document was not sent to an external destination because the
    /// patient objects to sharing.
    Withheld(DeliveryEvent),
    /// A MESH message was downloaded from a source's inbox and journaled.
    MeshReceived(MeshEvent),
    /// A journaled MESH message was acknowledged: it has left the inbox.
    MeshAcknowledged(MeshEvent),
    /// Sent to a subscriber that fell behind: `missed` events were dropped for it.
    Lagged { missed: u64 },
}

/// One MESH inbox message, by its ids. No content: the body is in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshEvent {
    /// The `[sources.<id>]` whose inbox it came from.
    pub source: String,
    /// The MESH message id (the journal's control id).
    pub message_id: String,
    /// The sending mailbox (`mex-From`).
    pub from: String,
    /// `mex-WorkflowID`.
    pub workflow_id: String,
    /// How it was journaled: `accepted` (a Bundle), `duplicate` (journaled
    /// before), `rejected` (not a Bundle) or `report` (a MESH REPORT).
    pub outcome: String,
    /// The journal row (the original one for a duplicate).
    pub journal_id: i64,
    pub size_bytes: usize,
    pub at: String,
}

/// What routing did with one message. No content: header identifiers and config ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingEvent {
    /// The listener (or source) the message came in on.
    pub listener: String,
    pub journal_id: i64,
    pub control_id: String,
    pub message_type: String,
    /// Routes that chose a destination (routed), or that matched (failed).
    pub routes: Vec<String>,
    pub destinations: Vec<String>,
    /// A replay asked for through the API, not the first pass.
    pub replay: bool,
    /// Failed only: the stage that failed (`parse`, `map`, `document`), never the error text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Warnings the mapping gave (counted only: their text may hold patient data).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warnings: u32,
    pub at: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What happened to one queued delivery. No content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryEvent {
    pub delivery_id: i64,
    pub journal_id: i64,
    pub destination: String,
    pub control_id: String,
    pub message_type: String,
    /// The attempt this event is about (1 for the first).
    pub attempt: u32,
    /// `delivered`, `retry`, `dead`, `withheld`.
    pub outcome: String,
    /// The destination's error, written for ops (destinations keep patient
    /// data out of it); `None` when delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Failed only: when the next attempt is due (RFC 3339 UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
    /// Delivered only: what the destination called it (MESH message id, file name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ref: Option<String>,
    pub at: String,
}

/// What happened to one message. No content: only header identifiers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageOutcome {
    pub listener: String,
    pub peer: String,
    /// MSH-3^MSH-4 style sender, as the journal records it.
    pub sender: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-9, e.g. `ADT^A01`.
    pub message_type: String,
    /// The code answered (`AA`, `AE`, ...), `None` when no ACK was wanted.
    pub ack_code: Option<String>,
    pub size_bytes: usize,
    pub journal_id: i64,
    /// A resend of an accepted message, answered with the stored ACK.
    pub duplicate: bool,
    /// From receiving the frame to the journal commit.
    pub elapsed_us: u64,
    /// RFC 3339 UTC.
    pub at: String,
    /// Rejections only: where the error is, e.g. `MSH-9`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_location: Option<String>,
    /// Rejections only: the HL7 table 0357 code, e.g. `101`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

impl Event {
    /// The SSE `event:` name: the variant name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::MessageAcked(_) => "MessageAcked",
            Event::MessageRejected(_) => "MessageRejected",
            Event::FramingError { .. } => "FramingError",
            Event::ConnectionOpened { .. } => "ConnectionOpened",
            Event::ConnectionRefused { .. } => "ConnectionRefused",
            Event::ConnectionClosed { .. } => "ConnectionClosed",
            Event::MessageRouted(_) => "MessageRouted",
            Event::MessageUnrouted(_) => "MessageUnrouted",
            Event::RoutingFailed(_) => "RoutingFailed",
            Event::Delivered(_) => "Delivered",
            Event::DeliveryFailed(_) => "DeliveryFailed",
            Event::DeadLettered(_) => "DeadLettered",
            Event::Withheld(_) => "Withheld",
            Event::MeshReceived(_) => "MeshReceived",
            Event::MeshAcknowledged(_) => "MeshAcknowledged",
            Event::Lagged { .. } => "Lagged",
        }
    }

    /// The listener the event is about; `None` for [`Event::Lagged`] and
    /// delivery events (they are about a destination).
    pub fn listener(&self) -> Option<&str> {
        match self {
            Event::MessageAcked(m) | Event::MessageRejected(m) => Some(&m.listener),
            Event::FramingError { listener, .. }
            | Event::ConnectionOpened { listener, .. }
            | Event::ConnectionRefused { listener, .. }
            | Event::ConnectionClosed { listener, .. } => Some(listener),
            Event::MessageRouted(r) | Event::MessageUnrouted(r) | Event::RoutingFailed(r) => {
                Some(&r.listener)
            }
            Event::MeshReceived(m) | Event::MeshAcknowledged(m) => Some(&m.source),
            Event::Delivered(_)
            | Event::DeliveryFailed(_)
            | Event::DeadLettered(_)
            | Event::Withheld(_)
            | Event::Lagged { .. } => None,
        }
    }
}

/// The current time as RFC 3339 UTC, for `at`.
pub fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// Splits the journal's one-line error (`MSH-9: text (101)`, see the
/// listener's `describe`) into its location and code, dropping the text,
/// which may quote message bytes. Anything not in that exact shape yields
/// `None` rather than a guess.
pub fn error_location_and_code(described: &str) -> (Option<String>, Option<String>) {
    let code = described
        .strip_suffix(')')
        .and_then(|rest| rest.rsplit_once(" ("))
        .map(|(_, code)| code)
        .filter(|code| {
            !code.is_empty() && code.len() <= 4 && code.bytes().all(|b| b.is_ascii_digit())
        })
        .map(str::to_string);
    let location = described
        .split_once(": ")
        .map(|(location, _)| location)
        .filter(|location| is_location(location))
        .map(str::to_string);
    (location, code)
}

/// `SEG` or `SEG-<field>`: a three-character segment id of capitals and digits.
fn is_location(text: &str) -> bool {
    let (segment, field) = match text.split_once('-') {
        Some((segment, field)) => (segment, Some(field)),
        None => (text, None),
    };
    segment.len() == 3
        && segment
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && field
            .is_none_or(|f| !f.is_empty() && f.len() <= 4 && f.bytes().all(|b| b.is_ascii_digit()))
}

/// The engine's event channel. Cheap to clone (all clones share one channel).
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Event>,
    /// Cancelled by [`EventBus::close`]: every subscription ends.
    closed: CancellationToken,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(CAPACITY)
    }
}

impl EventBus {
    /// A bus that keeps at most `capacity` (at least 1) events per subscriber.
    pub fn new(capacity: usize) -> EventBus {
        let (sender, _) = broadcast::channel(capacity.max(1));
        EventBus {
            sender,
            closed: CancellationToken::new(),
        }
    }

    /// Ends every subscription (now and later), e.g. so open event streams
    /// let the HTTP server shut down. Publishing afterwards is harmless.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Sends `event` to every subscriber; never waits. With no subscriber
    /// the event is dropped; callers can skip building it by checking
    /// [`EventBus::has_subscribers`] first.
    pub fn publish(&self, event: Event) {
        if self.sender.receiver_count() > 0 {
            // Err only means the last subscriber left meanwhile: nothing to do.
            let _ = self.sender.send(event);
        }
    }

    /// Whether anyone listens, so callers can skip building an event.
    pub fn has_subscribers(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// A new subscriber, seeing events published from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            receiver: self.sender.subscribe(),
            closed: self.closed.clone(),
        }
    }
}

/// One subscriber's view of the bus.
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Event>,
    closed: CancellationToken,
}

impl Subscription {
    /// The next event, [`Event::Lagged`] after events were dropped for this
    /// subscriber, or `None` once the bus is closed or every [`EventBus`]
    /// clone is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        let received = tokio::select! {
            _ = self.closed.cancelled() => return None,
            received = self.receiver.recv() => received,
        };
        match received {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Event::Lagged { missed }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(n: usize) -> Event {
        Event::ConnectionOpened {
            listener: "pas".to_string(),
            peer: format!("127.0.0.1:{n}"),
            at: now(),
        }
    }

    #[test]
    fn publish_without_subscribers_drops_the_event() {
        let bus = EventBus::new(4);
        assert!(!bus.has_subscribers());
        bus.publish(opened(1));
        let mut sub = bus.subscribe();
        bus.publish(opened(2));
        let got = tokio_test_block_on(sub.recv());
        opened_like(&got, 2);
    }

    /// Asserts `got` is the opened event of peer port `n`.
    fn opened_like(got: &Option<Event>, n: usize) {
        match got {
            Some(Event::ConnectionOpened { peer, .. }) if *peer == format!("127.0.0.1:{n}") => {}
            other => panic!("expected ConnectionOpened from port {n}, got {other:?}"),
        }
    }

    fn tokio_test_block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
            .block_on(future)
    }

    #[test]
    fn a_slow_subscriber_gets_one_lagged_notice_then_the_newest_events() {
        let bus = EventBus::new(4);
        let mut slow = bus.subscribe();
        let mut fast = bus.subscribe();
        // Publishing never blocks, however far behind `slow` is.
        for n in 0..10 {
            bus.publish(opened(n));
            let got = tokio_test_block_on(fast.recv());
            opened_like(&got, n);
        }
        assert_eq!(
            tokio_test_block_on(slow.recv()),
            Some(Event::Lagged { missed: 6 })
        );
        for n in 6..10 {
            let got = tokio_test_block_on(slow.recv());
            opened_like(&got, n);
        }
        drop(bus);
        assert_eq!(tokio_test_block_on(slow.recv()), None);
    }

    #[test]
    fn close_ends_every_subscription() {
        let bus = EventBus::new(4);
        let mut sub = bus.subscribe();
        let keep = bus.clone();
        keep.close();
        assert_eq!(tokio_test_block_on(sub.recv()), None);
        assert_eq!(tokio_test_block_on(bus.subscribe().recv()), None);
    }

    #[test]
    fn events_serialize_with_their_name_and_no_error_text() {
        let (location, code) =
            error_location_and_code("MSH-9: message type missing, found 'SMITH^JOHN' (101)");
        let event = Event::MessageRejected(MessageOutcome {
            listener: "pas".to_string(),
            peer: "127.0.0.1:5012".to_string(),
            sender: "PAS^RAL".to_string(),
            control_id: "RAL123".to_string(),
            message_type: String::new(),
            ack_code: Some("AR".to_string()),
            size_bytes: 1108,
            journal_id: 7,
            duplicate: false,
            elapsed_us: 3200,
            at: now(),
            error_location: location,
            error_code: code,
        });
        let json = serde_json::to_string(&event).expect("serializable");
        assert!(json.starts_with(r#"{"event":"MessageRejected""#), "{json}");
        assert!(json.contains(r#""error_location":"MSH-9""#), "{json}");
        assert!(json.contains(r#""error_code":"101""#), "{json}");
        assert!(!json.contains("SMITH"), "{json}");
        let back: Event = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, event);
        assert_eq!(event.name(), "MessageRejected");
        assert_eq!(event.listener(), Some("pas"));
    }

    #[test]
    fn error_parts_are_only_taken_from_the_exact_shape() {
        assert_eq!(
            error_location_and_code("MSH: segment missing (100)"),
            (Some("MSH".to_string()), Some("100".to_string()))
        );
        assert_eq!(
            error_location_and_code("byte 0: expected 'MSH', found 'PID|x' (100)"),
            (None, Some("100".to_string()))
        );
        assert_eq!(error_location_and_code("SMITH: JOHN (x)"), (None, None));
        assert_eq!(error_location_and_code(""), (None, None));
    }
}
