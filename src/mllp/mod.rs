//! MLLP: the framing codec, the listener that journals and acknowledges each
//! message, the client used by `junction send` and `junction load`, and TLS for
//! both (`tls.rs`, with a listener's `allowed_peers`).
//!
//! # Invariants
//! - `AA`/`CA` is written only after the message is committed to the journal.
//!   Until then the sender waits; that wait is our backpressure.
//! - A framing error (garbage, a frame over the size limit) closes that
//!   connection only; the offending bytes are kept in the journal.

pub mod client;
pub mod codec;
pub mod listener;
pub mod tls;
