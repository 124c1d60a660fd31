//! Routes: which mapping turns a message into a document, and which destinations
//! that document goes to. Rules are read from `routes/*.toml`.
//!
//! ```toml
//! [routes.adt_to_store]
//! description = "every ADT event into the local care record"
//! listeners = ["pas"]                 # or sources = ["mesh_inbox"]; neither = any listener
//! messages = ["ADT^*"]                # CODE^TRIGGER, `*` for any part
//! sending_facilities = ["RAL01"]      # MSH-4; also sending_applications (MSH-3)
//! when = "patient.gp_practice | lookup(practice_ics) = 'HWE'"   # on the document
//! mapping = "adt"                     # a mapping name from mappings/
//! destinations = ["store", "mesh_hwe"]
//!
//! [tables.practice_ics]               # lookup tables, shared by every route file
//! E82061 = "HWE"
//! ```
//!
//! Routing happens in two steps, so a message is mapped once per *mapping*, not
//! once per route:
//! 1. [`RouteSet::select`] matches the header criteria (origin, message type,
//!    sending application and facility) *before* mapping, and groups the routes that
//!    match by mapping ([`Selection::groups`]). No route matching is **unrouted**.
//! 2. For each group the caller applies the mapping once, then
//!    [`MappingGroup::destinations_for`] evaluates each route's `when` against the
//!    document and returns the destinations. No destination at all (every condition
//!    false) is also unrouted.
//!
//! # Semantics when several routes match
//! **Every matching route applies** (there is no "first match wins"): a message's
//! destinations are the union of the destinations of all routes whose criteria
//! and condition hold, each destination once per document (with the routes that
//! sent it there). A list criterion left out matches anything; values in one list
//! are alternatives; different criteria must all hold. Routes are kept in file
//! order (files sorted by name), which only decides the order of the results.
//!
//! # What this module does not do
//! It maps nothing, queues nothing and delivers nothing: the caller records an
//! unrouted message (it is never dropped), applies mappings and enqueues one delivery
//! per [`DestinationRef`]. Its only I/O is in `load.rs`: reading route files
//! ([`RouteSet::load_dir`], [`check_dir`]) and the message files of `[[test]]` cases
//! ([`run_tests`]). It logs nothing (conditions read patient data).
//!
//! `[[test]]` cases in route files name a sample message, an origin and every
//! destination expected; [`run_tests`] runs them through the real mappings.
//!
//! # Invariants
//! - Loading reports *every* problem of *every* file as `file:line:col: message`.
//! - A loaded set is consistent: route ids and table names are unique across files,
//!   every table a condition looks up exists, every pattern is well formed.
//! - Selection and evaluation never panic and do no I/O.

mod condition;
mod document;
mod load;
mod parse;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value as Json;

use condition::{normalise, Condition, Tables};
use document::{Document, Facts};

pub use document::{
    merge_registration, one_patient_views, patient_registrations, routing_view, routing_view_of,
    set_first_patient_registration, PatientRegistration, GP_SYSTEMS, NHS_NUMBER_SYSTEM, ODS_SYSTEM,
};

/// Every route of a folder, in file order, with the lookup tables.
#[derive(Debug, Default)]
pub struct RouteSet {
    routes: Vec<Route>,
    /// Routes with problems of their own (never used to route): their
    /// references are checked too, so one run shows every problem.
    broken: Vec<Route>,
    tables: Tables,
    tests: Vec<RouteTest>,
}

/// A `[[test]]` case of a route file: a sample message and the destinations it
/// must reach through the routes and mappings (run by [`run_tests`]).
#[derive(Debug, Clone)]
pub struct RouteTest {
    pub name: String,
    /// The route file declaring it.
    pub file: PathBuf,
    /// The message file, already joined to the route file's folder.
    pub message: PathBuf,
    message_at: Location,
    /// Where the message is taken to come in.
    pub origin: TestOrigin,
    /// For a document from a source: the message type it is journaled under
    /// (`MESH^<workflow id>`).
    pub message_type: Option<String>,
    /// For such a document: its sender (a MESH document's sending mailbox).
    pub sender: Option<String>,
    /// Every destination expected, in any order; empty means unrouted.
    pub expect: Vec<String>,
}

/// The origin of a [`RouteTest`] message (owned form of [`Origin`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestOrigin {
    Listener(String),
    Source(String),
    Unknown,
}

impl TestOrigin {
    pub fn as_origin(&self) -> Origin<'_> {
        match self {
            TestOrigin::Listener(id) => Origin::Listener(id),
            TestOrigin::Source(id) => Origin::Source(id),
            TestOrigin::Unknown => Origin::Unknown,
        }
    }
}

/// The outcome of one [`RouteTest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    pub file: PathBuf,
    pub name: String,
    /// The destinations reached, sorted; `Err` when the case could not run (the
    /// message file is unreadable or does not parse, a mapping fails).
    pub got: Result<Vec<String>, String>,
    /// The destinations expected, sorted.
    pub expected: Vec<String>,
}

impl TestOutcome {
    pub fn passed(&self) -> bool {
        self.got.as_ref() == Ok(&self.expected)
    }
}

impl fmt::Display for TestOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "nothing (unrouted)".to_string()
            } else {
                v.iter()
                    .map(|d| format!("`{d}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let status = if self.passed() { "ok" } else { "FAILED" };
        write!(f, "{} / {}: {status}", self.file.display(), self.name)?;
        match &self.got {
            Ok(_) if self.passed() => Ok(()),
            Ok(got) => write!(f, ": expected {}, got {}", list(&self.expected), list(got)),
            Err(e) => write!(f, ": {e}"),
        }
    }
}

/// Runs every `[[test]]` case of `routes` through `mappings`: reads each message
/// file, selects routes on its header, maps once per mapping and collects the
/// destinations. Reads files; logs nothing.
pub fn run_tests(routes: &RouteSet, mappings: &crate::mapping::MappingSet) -> Vec<TestOutcome> {
    routes
        .tests
        .iter()
        .map(|t| {
            let mut expected = t.expect.clone();
            expected.sort();
            expected.dedup();
            TestOutcome {
                file: t.file.clone(),
                name: t.name.clone(),
                got: load::run_test(routes, mappings, t),
                expected,
            }
        })
        .collect()
}

/// One route, compiled.
#[derive(Debug, Clone)]
pub struct Route {
    id: String,
    description: Option<String>,
    file: PathBuf,
    listeners: Vec<Spanned>,
    sources: Vec<Spanned>,
    messages: Vec<MessagePattern>,
    sending_applications: Vec<String>,
    sending_facilities: Vec<String>,
    when: Option<(String, Condition)>,
    mapping: Spanned,
    destinations: Vec<Spanned>,
}

/// A string value with where it is written, for reference checks.
#[derive(Debug, Clone)]
struct Spanned {
    value: String,
    at: Location,
}

/// A place in a route file.
#[derive(Debug, Clone)]
struct Location {
    file: PathBuf,
    source: Arc<str>,
    span: Range<usize>,
}

impl Location {
    fn error(&self, message: String) -> RouteError {
        RouteError::at(&self.file, &self.source, self.span.clone(), message)
    }
}

/// `CODE^TRIGGER`, each part normalised to upper case or `*`.
#[derive(Debug, Clone)]
struct MessagePattern {
    code: String,
    trigger: String,
    /// Where it is written (`None` for patterns declared by a mapping).
    at: Option<Location>,
}

impl MessagePattern {
    fn matches(&self, code: &str, trigger: &str) -> bool {
        let part = |p: &str, v: &str| p == "*" || p.eq_ignore_ascii_case(v.trim());
        part(&self.code, code) && part(&self.trigger, trigger)
    }

    /// Whether every message this pattern matches is matched by `other`.
    fn covered_by(&self, other: &MessagePattern) -> bool {
        let part = |mine: &str, theirs: &str| theirs == "*" || theirs == mine;
        part(&self.code, &other.code) && part(&self.trigger, &other.trigger)
    }
}

impl Route {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The file the route is defined in.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The mapping name; `""` for a passthrough route.
    pub fn mapping(&self) -> &str {
        &self.mapping.value
    }

    /// A route whose origin is `sources` alone and that names no mapping: the
    /// document is the Bundle the source received, routed as it is.
    pub fn is_passthrough(&self) -> bool {
        self.mapping.value.is_empty()
    }

    /// The `[sources.<id>]` ids it accepts documents from.
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().map(|s| s.value.as_str())
    }

    /// The destination ids, as written (without duplicates).
    pub fn destinations(&self) -> impl Iterator<Item = &str> {
        self.destinations.iter().map(|d| d.value.as_str())
    }

    /// The message patterns, as `CODE^TRIGGER`.
    pub fn messages(&self) -> Vec<String> {
        self.messages
            .iter()
            .map(|m| format!("{}^{}", m.code, m.trigger))
            .collect()
    }

    /// The `when` condition as written, if any.
    pub fn condition(&self) -> Option<&str> {
        self.when.as_ref().map(|(text, _)| text.as_str())
    }

    /// Whether the header criteria (everything but `when`) hold.
    fn matches(&self, input: &RouteInput<'_>) -> bool {
        let origin_ok = match input.origin {
            // A dry run maps HL7; passthrough routes take documents from sources only.
            Origin::Unknown => !self.is_passthrough(),
            // no origin named: every listener (never a source)
            Origin::Listener(_) if self.listeners.is_empty() && self.sources.is_empty() => true,
            Origin::Listener(id) => self.listeners.iter().any(|l| l.value == id),
            // What a source brings (a neighbour's documents, HL7 a lab sent over
            // MESH) goes only where a route names that source: a catch-all route
            // must not send it on, back to the ICS it came from, say.
            Origin::Source(id) => self.sources.iter().any(|s| s.value == id),
        };
        origin_ok
            && self
                .messages
                .iter()
                .any(|m| m.matches(input.message_code, input.trigger))
            && hd_matches(&self.sending_applications, input.sending_application)
            && hd_matches(&self.sending_facilities, input.sending_facility)
    }
}

/// An HD criterion (MSH-3, MSH-4): empty matches anything; otherwise the value, or
/// its first component, equals one of the list (ignoring case and spaces).
fn hd_matches(list: &[String], value: &str) -> bool {
    if list.is_empty() {
        return true;
    }
    let whole = normalise(value);
    let first = normalise(value.split('^').next().unwrap_or(""));
    list.iter().any(|v| *v == whole || *v == first)
}

/// Where a message came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin<'a> {
    /// A `[listeners.<id>]` (MLLP).
    Listener(&'a str),
    /// A `[sources.<id>]` (e.g. a MESH inbox).
    Source(&'a str),
    /// Not known (a dry run such as `junction map`): `listeners` and `sources`
    /// criteria are not applied.
    Unknown,
}

impl<'a> Origin<'a> {
    /// The listener or source id.
    pub fn id(&self) -> Option<&'a str> {
        match *self {
            Origin::Listener(id) | Origin::Source(id) => Some(id),
            Origin::Unknown => None,
        }
    }
}

/// What routes match on before mapping: where the message came from and its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInput<'a> {
    pub origin: Origin<'a>,
    /// MSH-9.1, e.g. `ADT`.
    pub message_code: &'a str,
    /// MSH-9.2, e.g. `A01`; empty when the message has none.
    pub trigger: &'a str,
    /// MSH-3: the whole field or its first component (both are compared).
    pub sending_application: &'a str,
    /// MSH-4: the whole field or its first component (both are compared).
    pub sending_facility: &'a str,
}

impl<'a> RouteInput<'a> {
    /// The input for a document received through a source (a MESH inbox): its
    /// journaled message type `CODE^TRIGGER` (`MESH^<workflow id>`) and sender
    /// (the sending mailbox), compared like MSH-9 and MSH-3; no facility.
    pub fn for_document(
        origin: Origin<'a>,
        message_type: &'a str,
        sender: &'a str,
    ) -> RouteInput<'a> {
        let (message_code, trigger) = message_type.split_once('^').unwrap_or((message_type, ""));
        RouteInput {
            origin,
            message_code,
            trigger,
            sending_application: sender,
            sending_facility: "",
        }
    }

    /// The input for a parsed message header.
    pub fn from_header(header: &'a crate::hl7::Header, origin: Origin<'a>) -> RouteInput<'a> {
        RouteInput {
            origin,
            message_code: &header.message_code,
            trigger: &header.trigger_event,
            sending_application: &header.sending_application,
            sending_facility: &header.sending_facility,
        }
    }
}

/// A destination a document goes to, and the routes that send it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationRef {
    /// The destination id (`[destinations.<id>]`).
    pub id: String,
    /// Ids of the routes that chose it, in route order.
    pub routes: Vec<String>,
}

/// The routes whose header criteria matched a message, grouped by mapping.
#[derive(Debug)]
pub struct Selection<'a> {
    set: &'a RouteSet,
    input: RouteInput<'a>,
    groups: Vec<(&'a str, Vec<&'a Route>)>,
}

impl<'a> Selection<'a> {
    /// No route matched: the caller records the message as unrouted.
    pub fn is_unrouted(&self) -> bool {
        self.groups.is_empty()
    }

    /// One group per mapping, in the order of the first route naming it.
    pub fn groups(&self) -> impl Iterator<Item = MappingGroup<'_>> {
        self.groups
            .iter()
            .map(move |(mapping, routes)| MappingGroup {
                selection: self,
                mapping,
                routes,
            })
    }

    /// Every matching route, in route order.
    pub fn routes(&self) -> impl Iterator<Item = &'a Route> + '_ {
        let mut all: Vec<&'a Route> = self.groups.iter().flat_map(|(_, r)| r.clone()).collect();
        all.sort_by_key(|r| self.set.position(r));
        all.into_iter()
    }
}

/// The routes of a [`Selection`] that share one mapping.
#[derive(Debug, Clone, Copy)]
pub struct MappingGroup<'s> {
    selection: &'s Selection<'s>,
    mapping: &'s str,
    routes: &'s [&'s Route],
}

impl<'s> MappingGroup<'s> {
    /// The mapping to apply (once) for these routes; `""` for passthrough
    /// routes (the document is the received Bundle, applied as it is).
    pub fn mapping(&self) -> &'s str {
        self.mapping
    }

    /// Whether these are passthrough routes (no mapping).
    pub fn is_passthrough(&self) -> bool {
        self.mapping.is_empty()
    }

    /// The routes of the group, in route order.
    pub fn routes(&self) -> impl Iterator<Item = &'s Route> {
        self.routes.iter().copied()
    }

    /// The destinations of the routes whose `when` holds for `document` (the
    /// Bundle this group's mapping produced), each once. Empty means the document
    /// is unrouted.
    pub fn destinations_for(&self, document: &Json) -> Vec<DestinationRef> {
        self.destinations_with(Document::Parsed(document)).0
    }

    /// [`Self::destinations_for`], with the tables a route condition's
    /// `lookup` found no entry in for a value of the document (a GP practice
    /// missing from `practice_ics`: the patient's record stays local that
    /// should perhaps go to a neighbour), each once.
    pub fn destinations_and_misses_for(
        &self,
        document: &Json,
    ) -> (Vec<DestinationRef>, Vec<String>) {
        self.destinations_with(Document::Parsed(document))
    }

    /// [`Self::destinations_for`] a document given as JSON text (what a mapping
    /// writes): it is parsed only if some route's condition reads the document.
    pub fn destinations_for_text(&self, document: &str) -> Vec<DestinationRef> {
        self.destinations_with(Document::text(document)).0
    }

    fn destinations_with(&self, document: Document<'_>) -> (Vec<DestinationRef>, Vec<String>) {
        let facts = Facts {
            input: &self.selection.input,
            document,
            misses: Default::default(),
        };
        let tables = &self.selection.set.tables;
        let mut out: Vec<DestinationRef> = Vec::new();
        for route in self.routes {
            if let Some((_, cond)) = &route.when {
                if !cond.eval(&facts, tables) {
                    continue;
                }
            }
            for dest in route.destinations() {
                match out.iter_mut().find(|d| d.id == dest) {
                    Some(d) => {
                        if !d.routes.iter().any(|r| r == route.id()) {
                            d.routes.push(route.id().to_string());
                        }
                    }
                    None => out.push(DestinationRef {
                        id: dest.to_string(),
                        routes: vec![route.id().to_string()],
                    }),
                }
            }
        }
        (out, facts.misses.into_inner())
    }
}

impl RouteSet {
    /// Loads every `*.toml` in `dir` (sorted by file name). All problems of all
    /// files are returned at once.
    pub fn load_dir(dir: &Path) -> Result<RouteSet, Vec<RouteError>> {
        load::load_dir(dir)
    }

    /// Compiles route files given as `(file, text)`, in the given order. Pure:
    /// `file` is only used in diagnostics.
    pub fn from_sources(files: &[(PathBuf, String)]) -> Result<RouteSet, Vec<RouteError>> {
        parse::compile(files)
    }

    /// The `[[test]]` cases of every file, in file order.
    pub fn tests(&self) -> &[RouteTest] {
        &self.tests
    }

    /// Every route, in file order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route with this id.
    pub fn get(&self, id: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.id == id)
    }

    /// The names of the lookup tables.
    pub fn table_names(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(String::as_str)
    }

    fn position(&self, route: &Route) -> usize {
        self.routes
            .iter()
            .position(|r| std::ptr::eq(r, route))
            .unwrap_or(usize::MAX)
    }

    /// The routes whose header criteria match, grouped by mapping (step 1).
    pub fn select<'a>(&'a self, input: &RouteInput<'a>) -> Selection<'a> {
        let mut groups: Vec<(&'a str, Vec<&'a Route>)> = Vec::new();
        for route in self.routes.iter().filter(|r| r.matches(input)) {
            match groups.iter_mut().find(|(m, _)| *m == route.mapping()) {
                Some((_, routes)) => routes.push(route),
                None => groups.push((route.mapping(), vec![route])),
            }
        }
        Selection {
            set: self,
            input: *input,
            groups,
        }
    }

    /// The mapping the routes would apply first (for `junction map`'s default);
    /// `None` when the message is unrouted or only passthrough routes match.
    pub fn mapping_for(&self, input: &RouteInput<'_>) -> Option<&str> {
        self.routes
            .iter()
            .find(|r| !r.is_passthrough() && r.matches(input))
            .map(Route::mapping)
    }

    /// Every route naming a mapping not in `mappings`, or a destination not in
    /// `destinations`, pointing at the value.
    pub fn check_references(&self, mappings: &[&str], destinations: &[&str]) -> Vec<RouteError> {
        let mut errors = self.check_mappings(mappings);
        errors.extend(self.check_destinations(destinations));
        errors
    }

    /// Every route naming a source not in `sources` (`[sources.<id>]`).
    pub fn check_sources(&self, sources: &[&str]) -> Vec<RouteError> {
        self.routes
            .iter()
            .chain(&self.broken)
            .flat_map(|r| r.sources.iter().map(move |s| (r, s)))
            .filter(|(_, s)| !sources.contains(&s.value.as_str()))
            .map(|(r, s)| {
                s.at.error(format!(
                    "route `{}` names unknown source `{}`{}",
                    r.id,
                    s.value,
                    expected(&s.value, sources, "`[sources.<id>]`")
                ))
            })
            .collect()
    }

    /// Every route naming a listener not in `listeners` (`[listeners.<id>]`).
    pub fn check_listeners(&self, listeners: &[&str]) -> Vec<RouteError> {
        self.routes
            .iter()
            .chain(&self.broken)
            .flat_map(|r| r.listeners.iter().map(move |l| (r, l)))
            .filter(|(_, l)| !listeners.contains(&l.value.as_str()))
            .map(|(r, l)| {
                l.at.error(format!(
                    "route `{}` names unknown listener `{}`{}",
                    r.id,
                    l.value,
                    expected(&l.value, listeners, "`[listeners.<id>]`")
                ))
            })
            .collect()
    }

    /// Checks routes against the compiled mappings: the mapping exists, and it
    /// declares (in its `messages`) every message type the route sends it, so a
    /// route cannot feed an A11 to a mapping written for A01.
    pub fn check_against_mappings(&self, mappings: &crate::mapping::MappingSet) -> Vec<RouteError> {
        let names: Vec<&str> = mappings.plans().map(|p| p.name()).collect();
        let mut errors = self.check_mappings(&names);
        for route in self.routes.iter().filter(|r| !r.is_passthrough()) {
            let Some(plan) = mappings.get(route.mapping()) else {
                continue;
            };
            let declared_text = plan.messages();
            let declared: Vec<MessagePattern> = declared_text
                .iter()
                .filter_map(|m| parse::parse_pattern(m).ok())
                .collect();
            for p in &route.messages {
                if declared.iter().any(|d| p.covered_by(d)) {
                    continue;
                }
                if let Some(at) = &p.at {
                    errors.push(at.error(format!(
                        "route `{}` sends `{}^{}` to mapping `{}`, which does not declare it (its `messages` are {}), expected message types the mapping handles",
                        route.id,
                        p.code,
                        p.trigger,
                        plan.name(),
                        declared_text
                            .iter()
                            .map(|m| format!("`{m}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
        errors
    }

    /// Like [`RouteSet::check_references`], for mappings only.
    pub fn check_mappings(&self, mappings: &[&str]) -> Vec<RouteError> {
        self.routes
            .iter()
            .chain(&self.broken)
            .filter(|r| !r.is_passthrough() && !mappings.contains(&r.mapping()))
            .map(|r| {
                r.mapping.at.error(format!(
                    "route `{}` uses unknown mapping `{}`{}",
                    r.id,
                    r.mapping.value,
                    expected(&r.mapping.value, mappings, "mappings/")
                ))
            })
            .collect()
    }

    /// Like [`RouteSet::check_references`], for destinations only.
    pub fn check_destinations(&self, destinations: &[&str]) -> Vec<RouteError> {
        self.routes
            .iter()
            .chain(&self.broken)
            .flat_map(|r| r.destinations.iter().map(move |d| (r, d)))
            .filter(|(_, d)| !destinations.contains(&d.value.as_str()))
            .map(|(r, d)| {
                d.at.error(format!(
                    "route `{}` sends to unknown destination `{}`{}",
                    r.id,
                    d.value,
                    expected(&d.value, destinations, "`[destinations.<id>]`")
                ))
            })
            .collect()
    }
}

/// `, expected one of `a`, `b` (did you mean `a`?)` for an unknown name.
fn expected(name: &str, known: &[&str], where_: &str) -> String {
    if known.is_empty() {
        return format!(", and there is none in {where_}");
    }
    let mut sorted: Vec<&str> = known.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if let [only] = sorted.as_slice() {
        return format!(", expected `{only}`");
    }
    let list = sorted
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let guess = sorted
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default();
    format!(", expected one of {list}{guess}")
}

/// Levenshtein distance (names are short).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// What route references are checked against by [`check_dir`]; `None` skips that
/// check (e.g. there is no `[destinations.<id>]` config yet).
#[derive(Debug, Default, Clone, Copy)]
pub struct Known<'a> {
    /// The compiled mappings of `mappings/`.
    pub mappings: Option<&'a crate::mapping::MappingSet>,
    /// `[listeners.<id>]` ids.
    pub listeners: Option<&'a [&'a str]>,
    /// `[sources.<id>]` ids.
    pub sources: Option<&'a [&'a str]>,
    /// `[destinations.<id>]` ids.
    pub destinations: Option<&'a [&'a str]>,
}

/// Loads the routes of `dir` and checks their references against `known`. All
/// problems, sorted by file and position. A folder that does not exist has no
/// routes and no problem.
pub fn check_dir(dir: &Path, known: &Known<'_>) -> Vec<RouteError> {
    if !dir.exists() {
        return Vec::new();
    }
    // References are checked on the routes that compiled, so a typo in one route
    // does not hide a bad reference in another.
    let (set, mut errors) = load::load_dir_partial(dir);
    if let Some(m) = known.mappings {
        errors.extend(set.check_against_mappings(m));
    }
    if let Some(l) = known.listeners {
        errors.extend(set.check_listeners(l));
    }
    if let Some(s) = known.sources {
        errors.extend(set.check_sources(s));
    }
    if let Some(d) = known.destinations {
        errors.extend(set.check_destinations(d));
    }
    for t in &set.tests {
        if !t.message.is_file() {
            errors.push(t.message_at.error(format!(
                "test `{}`: message file {} not found, expected a path relative to the route file's folder",
                t.name,
                t.message.display()
            )));
        }
    }
    errors.sort_by(|a, b| (&a.file, a.span.start).cmp(&(&b.file, b.span.start)));
    errors
}

/// A problem in a route file, displayed as `file:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{col}: {message}", file.display())]
pub struct RouteError {
    pub file: PathBuf,
    /// 1-based (1 for a problem with the file as a whole, such as an unreadable file).
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    /// What is wrong and what was expected. Lowercase.
    pub message: String,
    /// Byte span in the file text.
    span: Range<usize>,
    /// The file text (shared), for rendering a snippet.
    text: Option<Arc<str>>,
}

impl RouteError {
    fn at(file: &Path, source: &Arc<str>, span: Range<usize>, message: String) -> RouteError {
        let start = floor_boundary(source, span.start);
        let before = &source[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = source[line_start..start].chars().count() + 1;
        RouteError {
            file: file.to_path_buf(),
            line,
            col,
            message,
            span: start..span.end.max(start),
            text: Some(source.clone()),
        }
    }

    fn whole_file(file: &Path, message: String) -> RouteError {
        RouteError {
            file: file.to_path_buf(),
            line: 1,
            col: 1,
            message,
            span: 0..0,
            text: None,
        }
    }

    /// The byte span of the problem in the file text.
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// The file text, when the problem is inside it (for rendering a snippet);
    /// `None` for a problem with the file as a whole.
    pub fn source(&self) -> Option<&str> {
        self.text.as_deref()
    }
}

fn floor_boundary(s: &str, offset: usize) -> usize {
    let mut i = offset.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Listener(id) => write!(f, "listener `{id}`"),
            Origin::Source(id) => write!(f, "source `{id}`"),
            Origin::Unknown => f.write_str("unknown origin"),
        }
    }
}

#[cfg(test)]
mod tests;
