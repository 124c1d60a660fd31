//! The pipeline: accepted journal rows → parse → route → map → queued
//! deliveries (DESIGN.md §2 steps 3–5).
//!
//! [`Router::route`] is the pure part: one journaled message in, its routing
//! outcome and the delivery rows to queue out. `run` is the task that feeds
//! it: it takes accepted rows not yet routed in id order, routes a batch, and
//! writes the outcomes with their deliveries through the journal's writer (one
//! transaction), then wakes the destinations' schedulers.
//!
//! Messages from a listener are HL7 v2: decoded, parsed, routed with
//! `Origin::Listener`, and mapped once per mapping group. Messages from a
//! `[sources.<id>]` (a MESH inbox) are already documents (FHIR Bundle JSON):
//! routed with `Origin::Source`, the journaled message type (`MESH^<workflow
//! id>`) and sender (the sending mailbox); passthrough routes (no mapping)
//! queue them as received. A source's row that is HL7 v2 (a lab's results
//! sent over MESH; `hl7::looks_like_hl7`) is routed as a listener's is, with
//! `Origin::Source`, so routes naming that source and a mapping take it.
//!
//! It does not deliver (the schedulers do) and logs no message content:
//! errors go to the journal's routing row, events carry ids only.
//!
//! # Invariants
//! - A message's outcome and all its deliveries are written in one
//!   transaction, or not at all: a crash never half-routes a message.
//! - Restart resumes after the last message routed (the highest message id
//!   with a first-pass routing row); rows are taken in id order, so none is
//!   skipped.
//! - A message is never dropped: no route, or no route's condition true,
//!   is recorded as `unrouted`; a parse or mapping error as `failed` (and
//!   none of its documents is queued: all of them, or none).
//! - A message that asks in MSH-16 for an application acknowledgement, from
//!   a listener with `application_ack`, gets it as one more delivery in the
//!   same transaction (AA routed or unrouted, AE failed); a replay does not.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;

use crate::hl7::{AckCode, AckError};
use crate::journal::{
    NewDelivery, NewRouting, PendingMessage, QueueOp, QueueOutcome, Registration, RoutingOutcome,
    APPLICATION_ACK,
};
use crate::mapping::MappingSet;
use crate::route::{Origin, RouteInput, RouteSet, NHS_NUMBER_SYSTEM};
use crate::telemetry::events::{self, Event, RoutingEvent};
use crate::telemetry::metrics::{OutcomeLabel, TableLabel};

use super::queue::Shared;

/// Most messages routed (and written) in one batch.
pub const BATCH: u32 = 32;
/// How often the pipeline looks for new rows when nothing woke it.
pub const POLL: Duration = Duration::from_secs(1);

/// Routes and mappings compiled at start, with what the pipeline must know
/// about origins and destinations.
#[derive(Debug)]
pub struct Router {
    routes: RouteSet,
    mappings: MappingSet,
    /// `[sources.<id>]` ids: their rows are documents, not HL7.
    sources: BTreeSet<String>,
    /// Configured destinations, with the reason when one cannot deliver now
    /// (it could not be built): written as the new rows' `last_error`.
    destinations: BTreeMap<String, Option<String>>,
    /// Listener id → the MLLP destination its senders' application
    /// acknowledgements (MSH-16) are queued to (`application_ack`).
    application_acks: BTreeMap<String, String>,
}

/// One message routed: what to write, and what to tell.
#[derive(Debug)]
pub struct Routed {
    pub routing: NewRouting,
    /// The event for this outcome (no content).
    pub event: Event,
    /// The tables a route condition's `lookup` found no entry in for a value
    /// of the document (a practice missing from `practice_ics`): logged and
    /// counted by table, never with the value (a patient's practice).
    pub lookup_misses: Vec<String>,
}

/// What routing remembers of patients between messages: each one's GP
/// registration as a message from a listener (the local PAS) last stated it
/// (the journal's `registrations`), so a patient's later messages that do not
/// say it (lab results rarely carry PD1; a PAS sends A11 without it) are
/// routed as their registration says.
pub trait KnownPatients {
    /// What was learned under any of `keys` (a Patient id, or
    /// `identifier|<system>|<value>`).
    fn registrations(&mut self, keys: &[String]) -> Result<Vec<Known>, String>;
}

/// A registration learned under one key of a patient.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    pub key: String,
    /// `generalPractitioner` identifiers (FHIR Identifier JSON).
    pub identifiers: Vec<Json>,
    /// The NHS number of the patient it was learned for (empty: none known).
    pub nhs_number: String,
    /// When the sender recorded what said it (ms; 0 unknown).
    pub recorded_at: i64,
    /// The message it was learned from.
    pub message_id: i64,
}

impl Known {
    fn order(&self) -> (i64, i64) {
        (self.recorded_at, self.message_id)
    }
}

/// Knows no patient: routing reads only what each document states.
pub struct NoneKnown;

impl KnownPatients for NoneKnown {
    fn registrations(&mut self, _: &[String]) -> Result<Vec<Known>, String> {
        Ok(Vec::new())
    }
}

/// The journal's registrations, with what earlier messages of the batch being
/// routed learned (not yet written), by key. A failed read is kept: the
/// batch is then not written, and routed again after a pause (a message is
/// never failed for the journal's hiccup).
struct Remembered {
    journal: crate::journal::Journal,
    learned: BTreeMap<String, Known>,
    failure: Option<crate::journal::JournalError>,
}

impl Remembered {
    /// Takes in what a routed message learned (over what is known of a key
    /// only when recorded no earlier, as the journal's write does).
    fn learn(&mut self, message_id: i64, registrations: &[Registration]) {
        for r in registrations {
            let Ok(identifiers) = serde_json::from_str(&r.identifiers) else {
                continue;
            };
            let new = Known {
                key: r.patient_key.clone(),
                identifiers,
                nhs_number: r.nhs_number.clone(),
                recorded_at: r.recorded_at,
                message_id,
            };
            match self.learned.get(&r.patient_key) {
                Some(old) if old.order() > new.order() => {}
                _ => {
                    self.learned.insert(r.patient_key.clone(), new);
                }
            }
        }
    }
}

impl KnownPatients for Remembered {
    fn registrations(&mut self, keys: &[String]) -> Result<Vec<Known>, String> {
        let stored = match self.journal.registrations_blocking(keys) {
            Ok(stored) => stored,
            Err(e) => {
                let text = e.to_string();
                self.failure = Some(e);
                return Err(text);
            }
        };
        let mut out: Vec<Known> = stored
            .into_iter()
            .filter_map(|r| {
                Some(Known {
                    identifiers: serde_json::from_str(&r.identifiers).ok()?,
                    key: r.patient_key,
                    nhs_number: r.nhs_number,
                    recorded_at: r.recorded_at,
                    message_id: r.message_id,
                })
            })
            .collect();
        for key in keys {
            if let Some(learned) = self.learned.get(key) {
                match out.iter_mut().find(|k| &k.key == key) {
                    Some(k) if k.order() > learned.order() => {}
                    Some(k) => *k = learned.clone(),
                    None => out.push(learned.clone()),
                }
            }
        }
        Ok(out)
    }
}

/// Why a message could not be routed: the stage for events, the text for the journal.
struct Failure {
    stage: &'static str,
    error: String,
    routes: Vec<String>,
}

impl Failure {
    fn new(stage: &'static str, error: impl Into<String>) -> Failure {
        Failure {
            stage,
            error: error.into(),
            routes: Vec::new(),
        }
    }
}

/// The documents of one message, before they become rows.
struct Documents {
    deliveries: Vec<NewDelivery>,
    /// Routes that matched the header.
    matched: Vec<String>,
    /// Warnings the mappings gave (an NHS number failing modulus 11, a value that
    /// is not a number): counted, never logged, as their text may hold patient data.
    warnings: u32,
    /// GP registrations the documents stated.
    registrations: Vec<Registration>,
    /// NHS numbers a remembered registration was learned with, for a
    /// document that carries none of its own: added to its deliveries', so
    /// objections are asked about them.
    nhs_numbers: Vec<String>,
    /// Tables a route condition's `lookup` missed in (see [`Routed`]).
    lookup_misses: Vec<String>,
}

impl Documents {
    /// The GP registrations of `document`'s patients (a routing view).
    ///
    /// The first Patient (the document's subject), when every other Patient
    /// of it is a merged record (`active: false`: the same person, an A40's
    /// MRG), is read with what it does not state (the practice, the GP) as
    /// last learned under any key of any Patient of the document (so a merge
    /// reaches the region that knew the merged record); never in a document
    /// about several live patients (an A40 of two merges), where one
    /// patient's registration must not take another's record to its region.
    /// What was learned for another NHS number than the patient's (an MRN
    /// reused) is not taken, and what was learned with an NHS number is read
    /// with what that number learned since (a move stated under other
    /// identifiers). Taken from memory, the NHS number it was learned with
    /// is added to the document's, so objections are honoured for a result
    /// sent with an MRN alone.
    ///
    /// With `learn` (a message from a listener: the local PAS, never a
    /// neighbour's document), what each Patient then has is remembered under
    /// every key of it that does not have it already, as recorded at
    /// `recorded_at` (so a patient traced since, known by its MRN, is known by
    /// its NHS number too).
    ///
    /// Returns the identifiers of the patient the document is keyed by (see
    /// [`identities_of`]), read from the same walk of its Patients.
    fn registrations(
        &mut self,
        document: &mut Json,
        known: &mut dyn KnownPatients,
        learn: bool,
        recorded_at: i64,
    ) -> Result<Vec<String>, String> {
        let failed =
            |e: String| format!("cannot read the patient's GP registration from the journal: {e}");
        let patients = crate::route::patient_registrations(document);
        let identities = identities_of(&patients);
        let alone = patients.iter().skip(1).all(|p| !p.active);
        let everyone: Vec<String> = patients.iter().flat_map(|p| p.keys.clone()).collect();
        let nhs_key = |n: &str| format!("identifier|{NHS_NUMBER_SYSTEM}|{n}");
        for (i, patient) in patients.iter().enumerate() {
            let subject = i == 0 && alone;
            let says = !patient.stated.is_empty() || patient.deleted || patient.gp_deleted;
            if patient.keys.is_empty() || (!subject && (!learn || !says)) {
                continue;
            }
            let own_nhs: Option<&str> = patient.keys.iter().find_map(|k| {
                k.strip_prefix("identifier|")
                    .and_then(|k| k.strip_prefix(NHS_NUMBER_SYSTEM))
                    .and_then(|k| k.strip_prefix('|'))
            });
            let keys = if subject { &everyone } else { &patient.keys };
            let mut found = known.registrations(keys).map_err(failed)?;
            // not what was learned for someone else (an MRN given again): and
            // with `learn`, that key is now this patient's (learned empty
            // below, unless this patient has a registration to give it)
            let mut moved: Vec<String> = Vec::new();
            found.retain(|k| {
                let theirs =
                    k.nhs_number.is_empty() || own_nhs.is_none_or(|own| own == k.nhs_number);
                if !theirs && patient.keys.contains(&k.key) {
                    moved.push(k.key.clone());
                }
                theirs
            });
            // what the NHS number it was learned with has learned since
            let numbers: Vec<String> = found
                .iter()
                .map(|k| nhs_key(&k.nhs_number))
                .filter(|k| !k.ends_with('|') && !keys.contains(k))
                .collect();
            if !numbers.is_empty() {
                found.extend(known.registrations(&numbers).map_err(failed)?);
            }
            let latest = found.iter().max_by_key(|k| k.order());
            // (a registration deleted: only what this message states, if anything)
            let effective = if patient.deleted {
                patient.stated.clone()
            } else {
                // (the GP deleted: only the practice is read from what was learned)
                let known: Vec<Json> = latest
                    .map(|k| k.identifiers.as_slice())
                    .unwrap_or_default()
                    .iter()
                    .filter(|i| {
                        !patient.gp_deleted
                            || i.get("system").and_then(Json::as_str)
                                == Some(crate::route::ODS_SYSTEM)
                    })
                    .cloned()
                    .collect();
                crate::route::merge_registration(&patient.stated, &known)
            };
            if subject && effective != patient.stated {
                crate::route::set_first_patient_registration(document, &effective);
                if let Some(k) = latest.filter(|k| !k.nhs_number.is_empty()) {
                    if !self.nhs_numbers.contains(&k.nhs_number) {
                        self.nhs_numbers.push(k.nhs_number.clone());
                    }
                }
            }
            if !learn {
                continue;
            }
            let own_nhs_number = own_nhs.unwrap_or_default().to_string();
            if effective.is_empty() {
                // forgotten under every key of the patient when its sender
                // deleted it; else under the keys now someone else's
                let forget = if patient.deleted {
                    patient.keys.clone()
                } else {
                    moved
                };
                for key in forget {
                    self.learn(Registration {
                        patient_key: key,
                        identifiers: "[]".to_string(),
                        nhs_number: own_nhs_number.clone(),
                        recorded_at,
                    });
                }
                continue;
            }
            // stated (in part): as this message recorded it; else as learned
            let recorded = match (patient.stated.is_empty(), latest) {
                (true, Some(k)) => k.recorded_at,
                _ => recorded_at,
            };
            let nhs_number = own_nhs
                .map(str::to_string)
                .or_else(|| latest.map(|k| k.nhs_number.clone()))
                .unwrap_or_default();
            let identifiers = Json::Array(effective.clone()).to_string();
            for key in &patient.keys {
                // (a key that has it, learned with the NHS number known now)
                let has_it = found.iter().any(|k| {
                    &k.key == key && k.identifiers == effective && k.nhs_number == nhs_number
                });
                if !has_it {
                    self.learn(Registration {
                        patient_key: key.clone(),
                        identifiers: identifiers.clone(),
                        nhs_number: nhs_number.clone(),
                        recorded_at: recorded,
                    });
                }
            }
        }
        Ok(identities)
    }

    /// Remembers `learned` (over what this message learned of its key before).
    fn learn(&mut self, learned: Registration) {
        match self
            .registrations
            .iter_mut()
            .find(|r| r.patient_key == learned.patient_key)
        {
            Some(r) => *r = learned,
            None => self.registrations.push(learned),
        }
    }
}

impl Router {
    /// A router over compiled routes and mappings. `sources` are the
    /// `[sources.<id>]` ids; `destinations` the `[destinations.<id>]` ids.
    pub fn new(
        routes: RouteSet,
        mappings: MappingSet,
        sources: impl IntoIterator<Item = String>,
        destinations: impl IntoIterator<Item = String>,
    ) -> Router {
        Router {
            routes,
            mappings,
            sources: sources.into_iter().collect(),
            destinations: destinations.into_iter().map(|d| (d, None)).collect(),
            application_acks: BTreeMap::new(),
        }
    }

    /// The same router, queueing application acknowledgements for the
    /// messages of these listeners (listener id, destination id) that ask for
    /// them in MSH-16. Only for listeners in enhanced (`auto`) ACK mode: in
    /// original mode the ACK the listener sent was already the application's.
    pub fn with_application_acks(
        mut self,
        acks: impl IntoIterator<Item = (String, String)>,
    ) -> Router {
        self.application_acks = acks.into_iter().collect();
        self
    }

    /// The routes loaded at start (for `GET /api/routes`).
    pub fn routes(&self) -> &RouteSet {
        &self.routes
    }

    /// Marks a destination as unable to deliver (its rows are still queued,
    /// with `reason` as their last error).
    pub fn set_unavailable(&mut self, destination: &str, reason: String) {
        self.destinations
            .insert(destination.to_string(), Some(reason));
    }

    /// Routes one journaled message, knowing no patient's registration. Pure
    /// apart from the clock value given.
    pub fn route(&self, message: &PendingMessage, replay: bool, at_ms: i64) -> Routed {
        self.route_knowing(message, replay, at_ms, &mut NoneKnown)
    }

    /// Routes one journaled message; a Patient whose document states no GP
    /// registration is routed by the one `known` remembers.
    pub fn route_knowing(
        &self,
        message: &PendingMessage,
        replay: bool,
        at_ms: i64,
        known: &mut dyn KnownPatients,
    ) -> Routed {
        let mut routed = self.route_only(message, replay, at_ms, known);
        // a replay does not answer again: the sender has had its answer
        if !replay {
            let failed_stage = match &routed.event {
                Event::RoutingFailed(e) => Some(e.stage.as_deref().unwrap_or("routing")),
                _ => None,
            };
            if let Some(ack) = self.application_ack(message, failed_stage) {
                routed.routing.deliveries.push(ack);
            }
        }
        routed
    }

    /// The application acknowledgement a message asked for (MSH-16), as a
    /// delivery to its listener's `application_ack` destination: AA once it is
    /// routed and its documents are queued (or no route wanted it), AE when it
    /// could not be parsed, mapped or routed (`failed_stage`). The ERR names
    /// the stage and the journal id, never the error text, which may quote
    /// the message. `None` when the listener has no such destination or the
    /// message did not ask for this outcome.
    fn application_ack(
        &self,
        message: &PendingMessage,
        failed_stage: Option<&str>,
    ) -> Option<NewDelivery> {
        let destination = self.application_acks.get(&message.listener)?;
        // the listener's MSH-only read (it passed it at intake), not a second
        // parse of the whole message
        let header = crate::hl7::assess(&message.raw).ok()?;
        let (code, error) = match failed_stage {
            None => (AckCode::AA, None),
            Some(stage) => (
                AckCode::AE,
                Some(AckError::new(
                    "207",
                    format!(
                        "not processed: the {stage} stage failed (Junction message {})",
                        message.id
                    ),
                )),
            ),
        };
        if !crate::hl7::application_ack_wanted(&header, code.is_success()) {
            return None;
        }
        let ack = crate::hl7::build_application_ack(
            &header,
            code,
            error.as_ref(),
            &crate::mllp::listener::next_control_id(),
            &crate::mllp::listener::ack_timestamp(),
        );
        let bytes = crate::hl7::encode_text(&ack, header.charset.as_deref());
        Some(NewDelivery {
            destination: destination.clone(),
            mapping: APPLICATION_ACK.to_string(),
            routes: Vec::new(),
            // its own line: an acknowledgement neither waits for the
            // patient's documents nor holds them up
            patient_key: format!("application-ack:{}", message.id),
            identities: Vec::new(),
            nhs_numbers: Vec::new(),
            document: Bytes::from(bytes),
            last_error: self.waits_because(destination),
        })
    }

    /// Why a new row for `destination` cannot be delivered now (it could not
    /// be built, or is not configured), or `None`.
    fn waits_because(&self, destination: &str) -> Option<String> {
        match self.destinations.get(destination) {
            Some(reason) => reason.clone(),
            None => Some(format!(
                "destination `{destination}` is not configured in [destinations]"
            )),
        }
    }

    /// [`Self::route`] without the application acknowledgement.
    fn route_only(
        &self,
        message: &PendingMessage,
        replay: bool,
        at_ms: i64,
        known: &mut dyn KnownPatients,
    ) -> Routed {
        // A source's row is a document (a FHIR Bundle), or HL7 v2 that came
        // through the source (a lab's results over MESH): routed as HL7 then,
        // by its header, from that source.
        let result = if !self.sources.contains(&message.listener) {
            self.route_hl7(message, Origin::Listener(&message.listener), known)
        } else if crate::hl7::looks_like_hl7(&message.raw) {
            self.route_hl7(message, Origin::Source(&message.listener), known)
        } else {
            self.route_document(message, known)
        };
        let at = events::now();
        let mut event = RoutingEvent {
            listener: message.listener.clone(),
            journal_id: message.id,
            control_id: message.control_id.clone(),
            message_type: message.message_type.clone(),
            routes: Vec::new(),
            destinations: Vec::new(),
            replay,
            stage: None,
            warnings: 0,
            at,
        };
        let mut routing = NewRouting {
            message_id: message.id,
            replay,
            outcome: RoutingOutcome::Unrouted,
            routes: Vec::new(),
            error: None,
            at_ms,
            deliveries: Vec::new(),
            registrations: Vec::new(),
        };
        match result {
            Ok(docs) if docs.deliveries.is_empty() => {
                event.warnings = docs.warnings;
                routing.registrations = docs.registrations;
                routing.routes = docs.matched;
                event.routes = routing.routes.clone();
                Routed {
                    routing,
                    event: Event::MessageUnrouted(event),
                    lookup_misses: docs.lookup_misses,
                }
            }
            Ok(docs) => {
                let mut routes: Vec<String> = Vec::new();
                let mut destinations: Vec<String> = Vec::new();
                for d in &docs.deliveries {
                    for r in &d.routes {
                        if !routes.contains(r) {
                            routes.push(r.clone());
                        }
                    }
                    if !destinations.contains(&d.destination) {
                        destinations.push(d.destination.clone());
                    }
                }
                event.warnings = docs.warnings;
                routing.registrations = docs.registrations;
                routing.outcome = RoutingOutcome::Routed;
                routing.routes = routes.clone();
                routing.deliveries = docs.deliveries;
                event.routes = routes;
                event.destinations = destinations;
                Routed {
                    routing,
                    event: Event::MessageRouted(event),
                    lookup_misses: docs.lookup_misses,
                }
            }
            Err(failure) => {
                routing.outcome = RoutingOutcome::Failed;
                routing.routes = failure.routes.clone();
                routing.error = Some(failure.error);
                event.routes = failure.routes;
                event.stage = Some(failure.stage.to_string());
                Routed {
                    routing,
                    event: Event::RoutingFailed(event),
                    lookup_misses: Vec::new(),
                }
            }
        }
    }

    /// An HL7 v2 message from a listener or a source: parse, select, map per
    /// group.
    fn route_hl7(
        &self,
        message: &PendingMessage,
        origin: Origin<'_>,
        known: &mut dyn KnownPatients,
    ) -> Result<Documents, Failure> {
        let text = crate::hl7::decode(&message.raw)
            .map_err(|e| Failure::new("parse", format!("cannot decode the message: {e}")))?;
        let parsed = crate::hl7::Message::parse(&text)
            .map_err(|e| Failure::new("parse", format!("the message does not parse: {e}")))?;
        let header = parsed
            .header()
            .map_err(|e| Failure::new("parse", format!("the message header is unusable: {e}")))?;
        let input = RouteInput::from_header(&header, origin);
        let selection = self.routes.select(&input);
        let matched: Vec<String> = selection.routes().map(|r| r.id().to_string()).collect();
        let mut docs = Documents {
            deliveries: Vec::new(),
            matched,
            warnings: 0,
            registrations: Vec::new(),
            nhs_numbers: Vec::new(),
            lookup_misses: Vec::new(),
        };
        for group in selection.groups() {
            let route_ids = || {
                group
                    .routes()
                    .map(|r| r.id().to_string())
                    .collect::<Vec<_>>()
            };
            let fail = |stage, error: String| Failure {
                stage,
                error,
                routes: route_ids(),
            };
            if group.mapping().is_empty() {
                return Err(fail(
                    "map",
                    format!(
                        "route `{}` has no mapping, but the message from `{}` is HL7 v2 and \
                         needs one to become a document",
                        route_ids().join("`, `"),
                        message.listener
                    ),
                ));
            }
            let plan = self.mappings.get(group.mapping()).ok_or_else(|| {
                fail(
                    "map",
                    format!(
                        "route `{}` names mapping `{}`, which is not loaded",
                        route_ids().join("`, `"),
                        group.mapping()
                    ),
                )
            })?;
            // the engine's path: no unread report (nobody reads it here)
            let output = plan
                .document(&parsed)
                .map_err(|e| fail("map", e.to_string()))?;
            docs.warnings = docs.warnings.saturating_add(output.warnings.len() as u32);
            // the queue needs the patient (ordering key, NHS numbers) and the
            // routes may read the document: its routing view (the Patient and
            // what its GP reference names, read from their place in the text;
            // the rest known from the mapping) is read once here; the text is queued
            let mut document = crate::route::routing_view_of(&output);
            let learn = matches!(origin, Origin::Listener(_));
            let identities = docs
                .registrations(&mut document, known, learn, recorded_ms(&output))
                .map_err(|e| fail("route", e))?;
            let refs = destinations_for_each_patient(&group, &document, &mut docs.lookup_misses);
            self.push_deliveries(
                &mut docs,
                message.id,
                group.mapping(),
                (&document, &identities),
                Bytes::from(output.document.into_bytes()),
                refs,
            );
        }
        Ok(docs)
    }

    /// A document from a source (MESH inbox): a FHIR Bundle as JSON.
    fn route_document(
        &self,
        message: &PendingMessage,
        known: &mut dyn KnownPatients,
    ) -> Result<Documents, Failure> {
        // the document as sent, without a byte order mark before it
        let bom = message.raw.len() - crate::hl7::strip_utf8_bom(&message.raw).len();
        let bytes = message.raw.slice(bom..);
        let mut document: Json = serde_json::from_slice(&bytes).map_err(|e| {
            Failure::new(
                "document",
                format!(
                    "the document from source `{}` is not JSON: {e}",
                    message.listener
                ),
            )
        })?;
        let kind = document.get("resourceType").and_then(Json::as_str);
        if kind != Some("Bundle") {
            return Err(Failure::new(
                "document",
                format!(
                    "the document from source `{}` is not a FHIR Bundle (resourceType {:?})",
                    message.listener,
                    kind.unwrap_or("missing")
                ),
            ));
        }
        // A neighbour contributes to the record; it does not administer it: a
        // document from a source that deletes is refused whole (visible as a
        // failed routing, its bytes kept), never applied to the store.
        let deletes = document["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| {
                e["request"]["method"]
                    .as_str()
                    .is_some_and(|m| m.eq_ignore_ascii_case("DELETE"))
            })
            .count();
        if deletes > 0 {
            return Err(Failure::new(
                "document",
                format!(
                    "the document from source `{}` deletes ({deletes} DELETE entr{}): a \
                     document from outside never deletes from the record; refused whole",
                    message.listener,
                    if deletes == 1 { "y" } else { "ies" }
                ),
            ));
        }
        // Nor does it master our patients' demographics (the local PAS and PDS
        // do): its Patients are create-only, so they make the record of someone
        // we do not know yet and never replace the one we have.
        let bytes = if create_only_patients(&mut document) {
            Bytes::from(serde_json::to_vec(&document).map_err(|e| {
                Failure::new(
                    "document",
                    format!("the document could not be written: {e}"),
                )
            })?)
        } else {
            bytes
        };
        // A source journals the document's type (`MESH^<workflow id>`) and
        // sender (the sending mailbox); routes match on those.
        let input = RouteInput::for_document(
            Origin::Source(&message.listener),
            &message.message_type,
            &message.sender,
        );
        let selection = self.routes.select(&input);
        let matched: Vec<String> = selection.routes().map(|r| r.id().to_string()).collect();
        let mut docs = Documents {
            deliveries: Vec::new(),
            matched,
            warnings: 0,
            registrations: Vec::new(),
            nhs_numbers: Vec::new(),
            lookup_misses: Vec::new(),
        };
        // (the bytes to deliver are made: what is added here is for the
        // routes; a neighbour's document states nothing routing remembers)
        let identities = docs
            .registrations(&mut document, known, false, 0)
            .map_err(|e| Failure::new("route", e))?;
        for group in selection.groups() {
            if !group.mapping().is_empty() {
                let ids: Vec<&str> = group.routes().map(|r| r.id()).collect();
                return Err(Failure {
                    stage: "map",
                    error: format!(
                        "route `{}` names mapping `{}`, but a document from source `{}` is \
                         already FHIR; routes for sources pass documents through (no mapping)",
                        ids.join("`, `"),
                        group.mapping(),
                        message.listener
                    ),
                    routes: ids.into_iter().map(str::to_string).collect(),
                });
            }
            let refs = destinations_for_each_patient(&group, &document, &mut docs.lookup_misses);
            let patient = (&document, &identities[..]);
            self.push_deliveries(&mut docs, message.id, "", patient, bytes.clone(), refs);
        }
        Ok(docs)
    }

    /// Queues `bytes` for each of `refs`, with the document's patient key,
    /// the patient's identifiers (`identities`) and NHS numbers (and those its
    /// remembered registration was learned with).
    fn push_deliveries(
        &self,
        docs: &mut Documents,
        message_id: i64,
        mapping: &str,
        (document, identities): (&Json, &[String]),
        bytes: Bytes,
        refs: Vec<crate::route::DestinationRef>,
    ) {
        if refs.is_empty() {
            return;
        }
        let patient_key = patient_key(document).unwrap_or_else(|| format!("message:{message_id}"));
        let mut nhs_numbers = nhs_numbers(document);
        for n in &docs.nhs_numbers {
            if !nhs_numbers.contains(n) {
                nhs_numbers.push(n.clone());
            }
        }
        for dest in refs {
            let last_error = self.waits_because(&dest.id);
            docs.deliveries.push(NewDelivery {
                destination: dest.id,
                mapping: mapping.to_string(),
                routes: dest.routes,
                patient_key: patient_key.clone(),
                identities: identities.to_vec(),
                nhs_numbers: nhs_numbers.clone(),
                document: bytes.clone(),
                last_error,
            });
        }
    }
}

/// The destinations `group`'s routes choose for `document`; for a document
/// about several live patients (an A40 of two merges), only those they choose
/// for each patient alone (`route::one_patient_views`): one patient's
/// registration must not take another's record to its region.
fn destinations_for_each_patient(
    group: &crate::route::MappingGroup<'_>,
    document: &Json,
    lookup_misses: &mut Vec<String>,
) -> Vec<crate::route::DestinationRef> {
    let (mut refs, misses) = group.destinations_and_misses_for(document);
    for table in misses {
        if !lookup_misses.contains(&table) {
            lookup_misses.push(table);
        }
    }
    if let Some(views) = crate::route::one_patient_views(document) {
        let each: Vec<Vec<String>> = views
            .iter()
            .map(|v| {
                group
                    .destinations_for(v)
                    .into_iter()
                    .map(|d| d.id)
                    .collect()
            })
            .collect();
        refs.retain(|d| each.iter().all(|ids| ids.contains(&d.id)));
    }
    refs
}

/// When the sender recorded the event a mapped document records: its
/// Provenance's `recorded` (the mappings write EVN-2, else MSH-7), as unix
/// ms; 0 when it has none.
fn recorded_ms(output: &crate::mapping::MapOutput) -> i64 {
    output
        .entries
        .iter()
        .filter(|e| e.resource_type == "Provenance")
        .filter_map(|e| output.document.get(e.resource.clone()))
        .filter_map(|text| serde_json::from_str::<Json>(text).ok())
        .find_map(|p| p["recorded"].as_str()?.parse::<jiff::Timestamp>().ok())
        .map_or(0, |t| t.as_millisecond())
}

/// The Bundle's resources.
fn resources(document: &Json) -> impl Iterator<Item = &Json> {
    document
        .get("entry")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("resource"))
}

/// The id of the (first) Patient resource in the Bundle.
pub fn patient_key(document: &Json) -> Option<String> {
    resources(document)
        .filter(|r| r.get("resourceType").and_then(Json::as_str) == Some("Patient"))
        .find_map(|r| r.get("id").and_then(Json::as_str))
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

/// The identifiers of the patient a document is keyed by (of `patients`, its
/// Patients: the first with an id, as [`patient_key`]), as routing remembers
/// them (`identifier|<system>|<value>`, placeholders and failed NHS numbers
/// left out): a document of a patient whose key changed joins the line of
/// their documents still queued under the old key (`journal::queue::line_of`).
fn identities_of(patients: &[crate::route::PatientRegistration]) -> Vec<String> {
    patients
        .iter()
        .find(|p| {
            p.keys
                .first()
                .is_some_and(|k| !k.starts_with("identifier|"))
        })
        .map(|p| p.keys[1..].to_vec())
        .unwrap_or_default()
}

/// Every NHS number on the Bundle's Patient resources, once each: the
/// identifiers under the NHS number system, and those typed `NH` (HL7 table
/// 0203: a second NHS number a sender gave, kept under a local system) whose
/// value passes modulus 11, so the objections register is asked about every
/// number the document carries, not only the one it is keyed by.
pub fn nhs_numbers(document: &Json) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for patient in resources(document)
        .filter(|r| r.get("resourceType").and_then(Json::as_str) == Some("Patient"))
    {
        let identifiers = patient
            .get("identifier")
            .and_then(Json::as_array)
            .into_iter()
            .flatten();
        for identifier in identifiers {
            let Some(value) = identifier.get("value").and_then(Json::as_str) else {
                continue;
            };
            let value =
                if identifier.get("system").and_then(Json::as_str) == Some(NHS_NUMBER_SYSTEM) {
                    value.chars().filter(|c| !c.is_whitespace()).collect()
                } else if typed_nh(identifier) {
                    match crate::mapping::transform::nhs_number(value) {
                        Some(number) => number,
                        None => continue,
                    }
                } else {
                    continue;
                };
            if !value.is_empty() && !out.contains(&value) {
                out.push(value);
            }
        }
    }
    out
}

/// Marks every Patient PUT of a Bundle create-only (`ifNoneMatch: "*"`); true
/// when it changed any.
fn create_only_patients(document: &mut Json) -> bool {
    let mut changed = false;
    for entry in document["entry"].as_array_mut().into_iter().flatten() {
        let put = entry["request"]["method"]
            .as_str()
            .is_some_and(|m| m.eq_ignore_ascii_case("PUT"));
        if put
            && entry["resource"]["resourceType"] == "Patient"
            && entry["request"]["ifNoneMatch"] != "*"
        {
            entry["request"]["ifNoneMatch"] = Json::String("*".into());
            changed = true;
        }
    }
    changed
}

/// An identifier typed `NH` (national health number, HL7 table 0203).
fn typed_nh(identifier: &Json) -> bool {
    identifier["type"]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["code"].as_str() == Some("NH"))
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Publishes a routing event, counts it and logs one line (ids only).
pub(crate) fn report(shared: &Shared, routed: &Routed, routing_id: Option<i64>) {
    let outcome = routed.routing.outcome.as_str();
    shared
        .metrics
        .routed
        .get_or_create(&OutcomeLabel {
            outcome: outcome.to_string(),
        })
        .inc();
    match &routed.event {
        Event::MessageRouted(e) | Event::MessageUnrouted(e) | Event::RoutingFailed(e) => {
            if e.warnings > 0 {
                shared
                    .metrics
                    .mapping_warnings
                    .inc_by(u64::from(e.warnings));
            }
            tracing::info!(
                journal_id = e.journal_id,
                control_id = %e.control_id,
                message_type = %e.message_type,
                listener = %e.listener,
                routing_id,
                outcome,
                routes = %e.routes.join(","),
                destinations = %e.destinations.join(","),
                stage = e.stage.as_deref().unwrap_or(""),
                warnings = e.warnings,
                replay = e.replay,
                "message routed"
            );
            // a code a route's table lacks (a new practice): the record went
            // only where the other routes took it. The table, never the
            // code (a patient's practice), which `messages show` gives
            for table in &routed.lookup_misses {
                shared
                    .metrics
                    .route_lookup_misses
                    .get_or_create(&TableLabel {
                        table: table.clone(),
                    })
                    .inc();
                tracing::warn!(
                    journal_id = e.journal_id,
                    control_id = %e.control_id,
                    table = %table,
                    "a route condition looked up a code its table has no entry for: \
                     add it to the table if the routes should know it"
                );
            }
        }
        _ => {}
    }
    shared.events.publish(routed.event.clone());
}

/// The pipeline task: routes accepted rows in id order until `stop`.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let accepted = shared.journal.accepted_notify();
    let mut cursor = loop {
        match shared.journal.routing_cursor().await {
            Ok(cursor) => break cursor,
            Err(err) => {
                tracing::error!(error = %err, "pipeline cannot read where it stopped; retrying");
                if pause(&stop, POLL).await {
                    return;
                }
            }
        }
    };
    tracing::info!(after_message = cursor, "pipeline started");
    loop {
        if stop.is_cancelled() {
            break;
        }
        let rows = match shared.journal.accepted_after(cursor, BATCH).await {
            Ok(rows) => rows,
            Err(err) => {
                tracing::error!(error = %err, "pipeline cannot read the journal; retrying");
                if pause(&stop, POLL).await {
                    break;
                }
                continue;
            }
        };
        if rows.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = accepted.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            continue;
        }
        let last = rows.last().map_or(cursor, |m| m.id);
        match route_and_write(&shared, rows, false, None).await {
            Ok(_) => cursor = last,
            Err(err) => {
                tracing::error!(error = %err, "pipeline cannot write routing outcomes; retrying");
                if pause(&stop, POLL).await {
                    break;
                }
            }
        }
    }
    tracing::info!(after_message = cursor, "pipeline stopped");
}

/// One message routed and written.
pub(crate) struct Written {
    pub routed: Routed,
    pub routing_id: i64,
    /// The delivery rows queued.
    pub deliveries: Vec<i64>,
}

/// Routes `rows`, writes their outcomes and deliveries in one transaction,
/// then reports them and wakes the destinations.
pub(crate) async fn route_and_write(
    shared: &Arc<Shared>,
    rows: Vec<PendingMessage>,
    replay: bool,
    only: Option<&str>,
) -> Result<Vec<Written>, super::queue::QueueError> {
    let routed = route_for(shared, rows, replay, only).await?;
    if let Some(only) = only {
        if let Some(r) = routed.iter().find(|r| {
            r.routing.outcome == RoutingOutcome::Routed && r.routing.deliveries.is_empty()
        }) {
            return Err(super::queue::QueueError::NotRoutedTo {
                message_id: r.routing.message_id,
                destination: only.to_string(),
            });
        }
    }
    Ok(write_routed(shared, Vec::new(), routed).await?.1)
}

/// Routes and maps `rows` (for `only` that destination: its deliveries alone,
/// none when the routes no longer take the message there), writing nothing.
pub(crate) async fn route_for(
    shared: &Arc<Shared>,
    rows: Vec<PendingMessage>,
    replay: bool,
    only: Option<&str>,
) -> Result<Vec<Routed>, super::queue::QueueError> {
    let router = Arc::clone(&shared.router);
    let mut known = Remembered {
        journal: shared.journal.clone(),
        learned: BTreeMap::new(),
        failure: None,
    };
    // Mapping is the CPU-heavy part behind the ACK: low priority, so a burst
    // of intake is answered first and the queue catches up after. Rows are
    // routed in id order, each knowing what the ones before it learned.
    let (mut routed, failure): (Vec<Routed>, _) = super::background::run(move || {
        let at = now_ms();
        let routed = rows
            .iter()
            .map(|m| {
                let routed = router.route_knowing(m, replay, at, &mut known);
                known.learn(m.id, &routed.routing.registrations);
                routed
            })
            .collect();
        (routed, known.failure)
    })
    .await?;
    // the journal could not be read: nothing is written, the batch is routed
    // again (the message is not failed for the journal's hiccup)
    if let Some(failure) = failure {
        return Err(failure.into());
    }
    // A replay to one destination: its deliveries only, or nothing written.
    // A destination the message went to before but would not go to now (the
    // patient has since moved to another practice's region) is given the
    // document it had then, made anew by the same mapping: resending what a
    // neighbour never collected must not depend on where the patient is now.
    if let Some(only) = only {
        for r in &mut routed {
            if !r.routing.deliveries.iter().any(|d| d.destination == only) {
                let before = shared
                    .journal
                    .deliveries(crate::journal::DeliveryFilter {
                        destination: Some(only.to_string()),
                        message_id: Some(r.routing.message_id),
                        limit: Some(1),
                        ..Default::default()
                    })
                    .await?;
                if let Some(before) = before.first() {
                    let again = r
                        .routing
                        .deliveries
                        .iter()
                        .find(|d| d.mapping == before.mapping)
                        .map(|d| NewDelivery {
                            destination: only.to_string(),
                            routes: before.routes.clone(),
                            last_error: shared.router.waits_because(only),
                            ..d.clone()
                        });
                    r.routing.deliveries.extend(again);
                }
            }
            r.routing.deliveries.retain(|d| d.destination == only);
        }
    }
    Ok(routed)
}

/// Writes `before` and then the routing outcomes of `routed` in one journal
/// request (one transaction: all or none), and wakes their destinations.
/// `before`'s outcomes come back first.
pub(crate) async fn write_routed(
    shared: &Arc<Shared>,
    before: Vec<QueueOp>,
    routed: Vec<Routed>,
) -> Result<(Vec<QueueOutcome>, Vec<Written>), super::queue::QueueError> {
    let n = before.len();
    let ops = before
        .into_iter()
        .chain(routed.iter().map(|r| QueueOp::Route(r.routing.clone())))
        .collect();
    let mut outcomes = shared.journal.queue_write(ops).await?;
    let routed_outcomes = outcomes.split_off(n.min(outcomes.len()));
    let mut woken: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::with_capacity(routed.len());
    for (r, outcome) in routed.into_iter().zip(routed_outcomes) {
        let (routing_id, deliveries) = match outcome {
            QueueOutcome::Routed {
                routing_id,
                deliveries,
            } => (routing_id, deliveries),
            QueueOutcome::Updated(_) | QueueOutcome::Stale => (0, Vec::new()),
        };
        report(shared, &r, Some(routing_id));
        woken.extend(r.routing.deliveries.iter().map(|d| d.destination.clone()));
        out.push(Written {
            routed: r,
            routing_id,
            deliveries,
        });
    }
    for destination in &woken {
        shared.wake(destination);
    }
    Ok((outcomes, out))
}

/// Sleeps `d` unless stopped first; true when stopped.
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests;
