//! Junction: an HL7 v2 / MESH integration engine for NHS shared care records.
//!
//! Data flow: an MLLP listener ([`mllp`]) de-frames HL7 v2 messages, the
//! [`hl7`] core reads their header, the [`journal`] commits the raw bytes
//! durably (group commit, one fsync shared by every connection waiting), and
//! only then is the ACK written back. Mapping ([`mapping`]) turns a parsed
//! message into a FHIR R4 transaction Bundle (the *document*). Behind the
//! ACK, the delivery pipeline routes each journaled message ([`route`]), maps
//! it and queues one document per destination in the journal; a scheduler
//! per destination delivers them (retries, dead letters, order per patient,
//! objections) to the record store, MESH, FHIR servers, MLLP or files.
//!
//! Module map:
//! - [`hl7`]: pure parsing, paths, escapes, charsets, batches, ACK building.
//! - [`mllp`]: MLLP framing codec, listener, client.
//! - [`journal`]: durable intake and the delivery queue (SQLite, WAL, group commit).
//! - [`store`]: the care-record store (versioned FHIR records, SQLite) and its reads.
//! - [`mapping`]: declarative TOML mappings compiled to plans. Pure.
//! - [`delivery`]: the queue contract, the pipeline, the schedulers and the destinations.
//! - [`route`]: routes (`routes/*.toml`) choose a mapping and destinations. Pure.
//! - [`source`]: documents from elsewhere than MLLP (the MESH inbox) into the journal.
//! - [`config`]: loads `junction.toml`; diagnostics with file:line:col.
//! - [`api`]: the HTTP server (health, metrics, operations API, FHIR reads).
//! - [`access`]: API tokens, the authentication and audit layer, objections.
//! - [`telemetry`]: tracing setup and Prometheus metrics.
//! - [`cli`]: one file per subcommand.
//! - [`fhir_types`]: the FHIR R4 resource types (what a mapping may make, the store takes).

/// `Deserialize` for a config enum of words (`sync = "full"`): one of its
/// words, else serde's `unknown variant` error; a value of another type is
/// said as such (`invalid type: integer `1`, expected `text` or `json``)
/// where the derive's said only "wanted string or table" (s24b tester, L5).
macro_rules! word_enum {
    ($ty:ty { $($word:literal => $variant:expr),+ $(,)? }) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                const WORDS: &[&str] = &[$($word),+];
                struct Words;
                impl serde::de::Visitor<'_> for Words {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        $crate::config::expected_words(f, WORDS)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        match v {
                            $($word => Ok($variant),)+
                            other => Err(E::unknown_variant(other, WORDS)),
                        }
                    }
                }
                d.deserialize_any(Words)
            }
        }
    };
}

pub mod access;
pub mod api;
pub mod cli;
pub mod config;
mod db;
pub mod delivery;
pub mod engine;
pub mod fhir_types;
pub mod hl7;
pub mod journal;
pub mod mapping;
pub mod mesh;
pub mod mllp;
pub mod route;
pub mod source;
pub mod store;
pub mod telemetry;
