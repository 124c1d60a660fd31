//! Prometheus metrics: one registry, encoded in text format for `GET /metrics`.
//!
//! Counters are labelled by listener id only (never by anything from a
//! message), so cardinality is bounded by the config.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AckLabel {
    pub listener: String,
    /// AA, AE, AR, CA, CE, CR.
    pub code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    /// A routes' lookup table (`practice_ics`).
    pub table: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `routed`, `unrouted`, `failed`.
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabel {
    pub destination: String,
    /// `delivered`, `retry`, `dead`, `withheld`.
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourcePollLabel {
    pub source: String,
    /// `ok`, `failed`.
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    pub destination: String,
    /// `pending`, `delivered`, `dead`, `withheld`.
    pub status: String,
}

/// Every metric the engine exports.
pub struct Metrics {
    registry: Registry,
    /// Frames received (including ones later rejected).
    pub received: Family<ListenerLabel, Counter>,
    /// ACKs written, by code.
    pub acked: Family<AckLabel, Counter>,
    /// Messages rejected (AR/AE/CR/CE) or framing errors.
    pub rejected: Family<ListenerLabel, Counter>,
    /// Resends of already-journaled messages answered from the journal.
    pub duplicates: Family<ListenerLabel, Counter>,
    /// Open MLLP connections.
    pub open_connections: Family<ListenerLabel, Gauge>,
    /// Connections closed at once: the peer is not in `allowed_peers`.
    pub connections_refused: Family<ListenerLabel, Counter>,
    /// Connections closed because their TLS handshake failed or timed out.
    pub tls_handshake_failures: Family<ListenerLabel, Counter>,
    /// Framing errors (also in `messages_rejected`): what a peer sent that
    /// is not MLLP, or a frame over the size limit; its bytes are journaled
    /// as garbage.
    pub framing_errors: Family<ListenerLabel, Counter>,
    /// Seconds per journal group commit.
    pub commit_seconds: Histogram,
    /// Messages per journal group commit.
    pub commit_batch_size: Histogram,
    /// Accepted messages routed, by outcome.
    pub routed: Family<OutcomeLabel, Counter>,
    /// Delivery attempts' outcomes, by destination.
    pub deliveries: Family<DeliveryLabel, Counter>,
    /// Queue depth by destination and status (refreshed every few seconds).
    pub queue_depth: Family<QueueLabel, Gauge>,
    /// Warnings mappings gave (an NHS number failing modulus 11, ...): a count,
    /// as their text may hold patient data.
    pub mapping_warnings: Counter,
    /// Route conditions' lookups that found no entry for a document's code,
    /// by table (a GP practice missing from `practice_ics`): the record went
    /// only where the other routes took it.
    pub route_lookup_misses: Family<TableLabel, Counter>,
    /// Messages deleted from the journal by retention (`[store] retain_days`).
    pub journal_pruned: Counter,
    /// Bytes the engine may still write on the journal's file system (read
    /// at each scrape): what to alert on before a full disk stops intake.
    pub journal_disk_free: Gauge,
    /// Polls of a source (a MESH inbox), by outcome: a failing inbox (wrong
    /// password, MESH down) is seen here, not only in the log.
    pub source_polls: Family<SourcePollLabel, Counter>,
    /// When a source last polled successfully (Unix seconds): alert when it
    /// falls behind (neighbours' documents wait in MESH, which expires them).
    pub source_last_success: Family<SourceLabel, Gauge>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("junction");
        let received = Family::<ListenerLabel, Counter>::default();
        let acked = Family::<AckLabel, Counter>::default();
        let rejected = Family::<ListenerLabel, Counter>::default();
        let duplicates = Family::<ListenerLabel, Counter>::default();
        let open_connections = Family::<ListenerLabel, Gauge>::default();
        let connections_refused = Family::<ListenerLabel, Counter>::default();
        let tls_handshake_failures = Family::<ListenerLabel, Counter>::default();
        let framing_errors = Family::<ListenerLabel, Counter>::default();
        let commit_seconds = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ]);
        let commit_batch_size =
            Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]);
        registry.register(
            "messages_received",
            "MLLP frames received",
            received.clone(),
        );
        registry.register("messages_acked", "ACKs sent, by code", acked.clone());
        registry.register(
            "messages_rejected",
            "Messages rejected or framing errors",
            rejected.clone(),
        );
        registry.register(
            "messages_duplicate",
            "Resends answered with the stored ACK",
            duplicates.clone(),
        );
        registry.register(
            "open_connections",
            "Open MLLP connections",
            open_connections.clone(),
        );
        registry.register(
            "connections_refused",
            "MLLP connections closed at once: the peer is not in allowed_peers, or max_connections are open",
            connections_refused.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "MLLP connections closed because the TLS handshake failed or timed out",
            tls_handshake_failures.clone(),
        );
        registry.register(
            "framing_errors",
            "Bytes on an MLLP connection that are not MLLP, or frames over the size limit (also counted in messages_rejected; the bytes are kept in the journal as garbage)",
            framing_errors.clone(),
        );
        registry.register(
            "journal_commit_seconds",
            "Journal group commit latency",
            commit_seconds.clone(),
        );
        registry.register(
            "journal_commit_batch_size",
            "Messages per journal group commit",
            commit_batch_size.clone(),
        );
        let routed = Family::<OutcomeLabel, Counter>::default();
        let deliveries = Family::<DeliveryLabel, Counter>::default();
        let queue_depth = Family::<QueueLabel, Gauge>::default();
        registry.register(
            "messages_routed",
            "Accepted messages routed, by outcome",
            routed.clone(),
        );
        registry.register(
            "deliveries",
            "Delivery attempt outcomes, by destination",
            deliveries.clone(),
        );
        registry.register(
            "queue_depth",
            "Delivery queue rows by destination and status",
            queue_depth.clone(),
        );
        let mapping_warnings = Counter::default();
        registry.register(
            "mapping_warnings",
            "Warnings given by mappings (e.g. an NHS number failing modulus 11)",
            mapping_warnings.clone(),
        );
        let route_lookup_misses = Family::<TableLabel, Counter>::default();
        registry.register(
            "route_lookup_misses",
            "Route condition lookups that found no entry for a document's code, by table",
            route_lookup_misses.clone(),
        );
        let journal_pruned = Counter::default();
        registry.register(
            "journal_pruned_messages",
            "Messages deleted from the journal by retention ([store] retain_days)",
            journal_pruned.clone(),
        );
        let journal_disk_free = Gauge::default();
        registry.register(
            "journal_disk_free_bytes",
            "Bytes free to the engine on the journal's file system (at the scrape)",
            journal_disk_free.clone(),
        );
        let source_polls = Family::<SourcePollLabel, Counter>::default();
        registry.register(
            "source_polls",
            "Polls of a source (a MESH inbox), by outcome",
            source_polls.clone(),
        );
        let source_last_success = Family::<SourceLabel, Gauge>::default();
        registry.register(
            "source_last_success_timestamp_seconds",
            "When a source (a MESH inbox) last polled successfully, Unix seconds",
            source_last_success.clone(),
        );
        Metrics {
            registry,
            journal_disk_free,
            source_polls,
            source_last_success,
            mapping_warnings,
            route_lookup_misses,
            journal_pruned,
            routed,
            deliveries,
            queue_depth,
            received,
            acked,
            rejected,
            duplicates,
            open_connections,
            connections_refused,
            tls_handshake_failures,
            framing_errors,
            commit_seconds,
            commit_batch_size,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn listener(id: &str) -> ListenerLabel {
        ListenerLabel {
            listener: id.to_string(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}
