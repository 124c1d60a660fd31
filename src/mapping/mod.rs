//! Declarative mappings: a TOML mapping file is compiled once into a [`Plan`];
//! [`Plan::apply`] turns a parsed HL7 v2 message into the canonical document, a
//! FHIR R4 transaction Bundle (UK Core where UK Core speaks).
//!
//! The language is documented for mapping authors in `mappings/README.md`. In short:
//! a mapping declares `[[resource]]`s whose `body` is a JSON template; every string in
//! a template is an *expression* (`"PID-5[*] | XPN"`, `"'literal'"`), evaluated against
//! the message. Paths, transforms, tables, conditions and macros (`[let]`) are all
//! parsed and resolved by [`compile`]; applying a plan parses nothing of the mapping.
//!
//! What this module does not do: it reads no configuration and does no I/O except
//! [`MappingSet::load_dir`] (in `load.rs`), which reads the mapping files. Route
//! selection beyond [`MappingSet::select`] lives elsewhere.
//!
//! # Invariants
//! - [`compile`] reports *every* problem of a file (unknown key, bad path, unknown
//!   transform or table, bad condition) as `file:line:col: message`, never only the first.
//! - [`Plan::apply`] never panics, whatever the message; it compiles no regex and
//!   parses no expression.
//! - Output is deterministic: the same message gives byte-identical JSON. Resource ids
//!   are UUIDv5 over stable keys, so a resend converges on the same resources.
//! - Empty elements (empty strings, objects, arrays) never appear in the output.

mod compile;
pub(crate) mod datatypes;
mod eval;
mod expr;
pub(crate) mod fhir_elements;
mod json;
mod load;
pub(crate) mod transform;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

pub use compile::compile;
pub use eval::contains_fragment;

pub(crate) use compile::PlanInner;

/// Every compiled mapping of a folder, by name, in file order.
#[derive(Debug, Default)]
pub struct MappingSet {
    plans: Vec<Plan>,
}

impl MappingSet {
    /// A set made of already compiled plans (in the given order).
    pub fn from_plans(plans: Vec<Plan>) -> MappingSet {
        MappingSet { plans }
    }

    /// Loads every `*.toml` in `dir` (sorted by file name). All problems of all files
    /// are returned at once.
    pub fn load_dir(dir: &Path) -> Result<MappingSet, Vec<MappingError>> {
        load::load_dir(dir)
    }

    /// The plan named `name` (the `[mapping] name`, by default the file stem).
    pub fn get(&self, name: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.name() == name)
    }

    /// The plan whose `[mapping] messages` covers this message code and trigger:
    /// an exact `ADT^A01` first, then a wildcard `ADT^*`.
    pub fn select(&self, message_code: &str, trigger: &str) -> Option<&Plan> {
        let exact = self.plans.iter().find(|p| {
            p.inner
                .messages
                .iter()
                .any(|(c, t)| c == message_code && t == trigger)
        });
        exact.or_else(|| {
            self.plans.iter().find(|p| {
                p.inner
                    .messages
                    .iter()
                    .any(|(c, t)| c == message_code && t == "*")
            })
        })
    }

    /// The plan [`Self::select`] picks for a parsed message's type and trigger
    /// (`None` too when its header is unusable).
    pub fn select_for(&self, message: &crate::hl7::Message<'_>) -> Option<&Plan> {
        let header = message.header().ok()?;
        self.select(&header.message_code, &header.trigger_event)
    }

    /// Every plan, in file order.
    pub fn plans(&self) -> impl Iterator<Item = &Plan> {
        self.plans.iter()
    }
}

/// A problem in a mapping file, rendered as `file:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

impl std::error::Error for MappingError {}

/// `; no id could be made for Patient, Encounter` (empty when none).
fn no_id_reason(types: &[String]) -> String {
    if types.is_empty() {
        String::new()
    } else {
        format!(
            "; no id could be made for {} (the fields ids are made from are empty)",
            types.join(", ")
        )
    }
}

/// Why a plan could not produce a document for a message.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MapError {
    /// No resource of the mapping applied (every `when` false, or no ids). The
    /// types left out for want of an id are named (no message data: the fields
    /// an id is made from were empty).
    #[error(
        "mapping `{mapping}` produced no resource for this message{}",
        no_id_reason(without_id)
    )]
    NoResources {
        mapping: String,
        without_id: Vec<String>,
    },
    /// The message holds a segment more than once that the mapping takes once at
    /// most (`[mapping] at_most_one`): several patients in one message.
    #[error(
        "mapping `{mapping}` takes at most one {segment} segment per message (`at_most_one`); \
         this message has {count}, so it is not mapped"
    )]
    Repeated {
        mapping: String,
        segment: String,
        count: usize,
    },
    /// The document holds no resource of a type the mapping requires
    /// (`[mapping] requires`): results with no patient to file them under.
    #[error(
        "mapping `{mapping}` requires a {kind} (`requires`) and made none for this message, so it is not mapped{}",
        no_id_reason(without_id)
    )]
    Missing {
        mapping: String,
        kind: String,
        without_id: Vec<String>,
    },
    /// A resource's `id` gave text that is no FHIR id (1 to 64 of letters,
    /// digits, `-` and `.`): a record store refuses it. Said rather than
    /// delivered to fail there; the text itself is not quoted (it may be a
    /// patient's name).
    #[error(
        "mapping `{mapping}` made a {kind} id that is not a FHIR id (1 to 64 of A-Z a-z 0-9 - .), \
         so the message is not mapped; make ids with `| uuid5('{kind}')`"
    )]
    BadId { mapping: String, kind: String },
}

/// A compiled mapping.
#[derive(Debug)]
pub struct Plan {
    inner: PlanInner,
}

impl Plan {
    /// The mapping's name (`[mapping] name`, by default the file stem).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The message types it declares, as `CODE^TRIGGER` (`ADT^*` for any trigger).
    pub fn messages(&self) -> Vec<String> {
        self.inner
            .messages
            .iter()
            .map(|(c, t)| format!("{c}^{t}"))
            .collect()
    }

    /// The file it was compiled from.
    pub fn file(&self) -> &Path {
        &self.inner.file
    }

    /// The `[[test]]` cases. Each `message` path is resolved against the folder of the
    /// mapping file (a mapping in `mappings/` names `../samples/x.hl7`).
    pub fn tests(&self) -> &[TestCase] {
        &self.inner.tests
    }

    /// Applies the plan to a message, with the report of the fields no rule read
    /// ([`MapOutput::unread`]), as `junction map` and `junction test` show it.
    /// Never panics on any message.
    pub fn apply(&self, message: &crate::hl7::Message<'_>) -> Result<MapOutput, MapError> {
        eval::apply(&self.inner, message, true)
    }

    /// Applies the plan as the engine does on every message: the same document,
    /// entries and warnings as [`Plan::apply`], without tracking which fields were
    /// read (`unread` is empty). The report costs a pass over every field of the
    /// message and a mark per read: about 6% of parse+map for both an ADT^A01 and
    /// an ORU^R01 with 20 OBX (BENCHMARKS.md).
    pub fn document(&self, message: &crate::hl7::Message<'_>) -> Result<MapOutput, MapError> {
        eval::apply(&self.inner, message, false)
    }
}

/// A `[[test]]` case of a mapping file.
#[derive(Debug, Clone, PartialEq)]
pub struct TestCase {
    pub name: String,
    /// The message file, already joined to the mapping file's folder.
    pub message: PathBuf,
    /// Fragments that must each be contained in the Bundle (see [`contains_fragment`]).
    pub expect: Vec<serde_json::Value>,
}

/// The result of applying a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapOutput {
    /// The FHIR R4 transaction Bundle as compact JSON text, exactly what
    /// `serde_json::to_string` gives for it (object keys sorted).
    pub document: String,
    /// The Bundle's entries in order: what each is and where its resource is in
    /// `document`, so a reader can take one resource without parsing the rest.
    pub entries: Vec<MappedEntry>,
    /// Fields present in the message with content that no rule read, as `PID-13`,
    /// `OBX[4]-17` (the bracket is the 1-based occurrence when a segment repeats).
    /// MSH-1 and MSH-2 (the separators) are never listed. Empty from
    /// [`Plan::document`], which does not track reads.
    pub unread: Vec<String>,
    /// Data problems found while mapping (bad NHS number, bad date). These may name
    /// patient data: show them to the person running `junction map`, never log them.
    pub warnings: Vec<String>,
}

/// One entry of a mapped Bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedEntry {
    /// `Patient`, `Observation`, ...
    pub resource_type: String,
    /// The resource id (the entry's `fullUrl` is `urn:uuid:` and this id).
    pub id: String,
    /// The byte range of the resource's JSON object in `MapOutput::document`.
    pub resource: std::ops::Range<usize>,
}

impl MapOutput {
    /// The document parsed into a `serde_json::Value`, for tools and tests that
    /// read it (the engine itself passes the text on as it is).
    pub fn value(&self) -> serde_json::Value {
        // the text is written by this module and always parses; `Null` only if
        // that invariant were ever broken
        serde_json::from_str(&self.document).unwrap_or(serde_json::Value::Null)
    }
}
