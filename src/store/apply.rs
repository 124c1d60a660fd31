//! Applying one document's checked plan, entry by entry, the same on every
//! backend: what each entry does (create-only, stale, unchanged, a new
//! version, a tombstone) is decided here, and the backends (`sqlite.rs`,
//! `postgres.rs`) only read and write rows through [`Rows`], inside a
//! transaction they opened. So is a Patient's continuity: a record retired in
//! favour of another (an A40's merge, a record made before the patient was
//! traced) and what is filed under it are found from the survivor. An
//! Encounter is what its messages make of it in the order they were sent,
//! whatever order they arrive in: each is kept as sent ([`Sent`]), and a
//! late one is put in its place and the visit made again
//! ([`visit_in_order`]).
//!
//! It does no I/O of its own and opens no transaction.

use crate::fhir_types::gp_registration_deleted;
use serde_json::{Map, Value};

use super::plan::{self, Op, Plan};
use super::{ApplyOutcome, EntryOutcome, EntryProblem, EntryResult, StoreError};
use crate::route::NHS_NUMBER_SYSTEM;

/// The current row of a record.
pub(super) struct Current {
    pub version: i64,
    /// Microseconds since the epoch.
    pub event_time: Option<i64>,
    /// `None` for a tombstone.
    pub content: Option<String>,
}

/// What one message sent of a record (an Encounter, [`visit_in_order`]), as
/// it was sent, before it was applied over what was stored.
pub(super) struct Sent {
    /// Its place in arrival order (as read back; not written).
    pub seq: i64,
    /// Microseconds since the epoch: the message's event time (for one in
    /// order, the later of it and the stored one's, as [`decide`] keeps).
    pub event_time: Option<i64>,
    /// The HL7 v2 event (`A02`), when known.
    pub event: Option<String>,
    /// `None`: a delete (or, for `seed`, a tombstone).
    pub content: Option<String>,
    /// The record as it stood when its messages began to be kept (stored by
    /// an older build, or a create-only placeholder), not a message.
    pub seed: bool,
}

/// The row operations a backend offers, inside its open transaction.
pub(super) trait Rows {
    type Error: From<serde_json::Error> + From<StoreError>;

    fn current(&mut self, resource_type: &str, id: &str) -> Result<Option<Current>, Self::Error>;

    /// Writes a new current version and its history row (`content` `None`: a tombstone).
    fn write_version(&mut self, version: &Version<'_>) -> Result<(), Self::Error>;

    /// Remembers a newer event time without making a new version.
    fn set_event_time(
        &mut self,
        resource_type: &str,
        id: &str,
        event_time: Option<i64>,
    ) -> Result<(), Self::Error>;

    /// Keeps what a message sent of the record, unless the same (event
    /// time, event, content) is kept already: a message sent again.
    fn record_sent(
        &mut self,
        resource_type: &str,
        id: &str,
        sent: &Sent,
    ) -> Result<(), Self::Error>;

    /// How many messages sent of the record are kept.
    fn sent_count(&mut self, resource_type: &str, id: &str) -> Result<i64, Self::Error>;

    /// Forgets the kept messages of the record with these `seq`s.
    fn forget_sent(
        &mut self,
        resource_type: &str,
        id: &str,
        seqs: &[i64],
    ) -> Result<(), Self::Error>;

    /// What the messages sent of the record, in the order they were sent:
    /// by event time (none first), a cancellation ([`CANCELLATIONS`]) after
    /// the others sent at the same time, then in the order they arrived.
    fn sent(&mut self, resource_type: &str, id: &str) -> Result<Vec<Sent>, Self::Error>;

    /// Replaces the record's patient links with `patients` (none: unlinked).
    /// A record other than a Patient is linked to the survivor of each of them
    /// too: a Patient linked to another Patient (a retired one, to the one that
    /// replaced it) is in that one's compartment.
    fn link_patients(
        &mut self,
        resource_type: &str,
        id: &str,
        patients: &[String],
    ) -> Result<(), Self::Error>;

    /// Replaces a Patient's indexed identifiers, `(system, value)`.
    fn index_identifiers(
        &mut self,
        patient_id: &str,
        identifiers: &[(String, String)],
    ) -> Result<(), Self::Error>;

    /// The live Patients with the identifier `(system, value)`, by id; with
    /// `untraced`, only those without an NHS number (by the index, which
    /// holds every NHS number as its ten digits: a local identifier a
    /// thousand traced patients share, a PAS's placeholder MRN, is not
    /// read a thousand times).
    fn patients_with_identifier(
        &mut self,
        system: &str,
        value: &str,
        untraced: bool,
    ) -> Result<Vec<String>, Self::Error>;

    /// Whether more than `n` Patients (live or not) hold the identifier
    /// `(system, value)`: asked before reading them, so a placeholder a
    /// thousand patients share is found without walking them all.
    fn held_by_more_than(
        &mut self,
        system: &str,
        value: &str,
        n: usize,
    ) -> Result<bool, Self::Error>;

    /// Links every record linked to Patient `from` (but Patients) to Patient
    /// `to` as well, keeping the links it has.
    fn share_patient_links(&mut self, from: &str, to: &str) -> Result<(), Self::Error>;

    /// The ids of the live records of `resource_type` linked to `patient`.
    fn linked_ids(
        &mut self,
        patient: &str,
        resource_type: &str,
    ) -> Result<Vec<String>, Self::Error>;
}

/// One version of a record as it is written.
pub(super) struct Version<'v> {
    pub resource_type: &'v str,
    pub id: &'v str,
    pub version: i64,
    pub last_updated: &'v str,
    pub event_time: Option<i64>,
    pub content: Option<&'v str>,
}

/// Applies one document's plan through `rows` (inside the caller's transaction).
pub(super) fn apply_plan<R: Rows>(
    rows: &mut R,
    plan: &Plan,
    last_updated: &str,
) -> Result<ApplyOutcome, R::Error> {
    let event_time = plan.event_time.map(|t| t.as_microsecond());
    let mut outcome = ApplyOutcome::default();
    // the results a stale report of this document names: stale with it (a
    // report taken back from corrected to final, a resend with no issue time
    // to tell, must not take its results back either)
    let mut stale_results: Vec<String> = Vec::new();
    refuse_unknown_patients(rows, plan)?;
    for (index, entry) in plan.entries.iter().enumerate() {
        let (resource_type, id) = (entry.resource_type.as_str(), entry.id.as_str());
        let current = rows.current(resource_type, id)?;
        if resource_type == "Observation" && stale_results.iter().any(|r| r == id) {
            if let Some(cur) = current.as_ref().filter(|c| c.content.is_some()) {
                outcome.entries.push(EntryOutcome {
                    resource_type: entry.resource_type.clone(),
                    id: entry.id.clone(),
                    result: EntryResult::Stale {
                        version: cur.version,
                    },
                });
                continue;
            }
        }
        let create_only = matches!(
            entry.op,
            Op::Put {
                create_only: true,
                ..
            }
        );
        let visit = resource_type == "Encounter" && !create_only;
        // (the entry's own event time: a write takes the one `decide` keeps)
        let at = At {
            index,
            resource_type,
            id,
            current: current.as_ref(),
            last_updated,
            event_time,
            create_only,
            event: plan.event.as_deref(),
        };
        let result = match decide(current.as_ref(), create_only, event_time) {
            // an Encounter's messages are kept as sent, and one arriving
            // late is put in its place among them (`visit_in_order`)
            decision if visit => visit_in_order(rows, &at, &entry.op, decision)?,
            Decision::Skip(EntryResult::Stale { version }) if resource_type == "Patient" => {
                // an older message that named the GP, arriving after a newer one
                // that named none: the GP it names is still the latest known
                // (as when they arrive in order), so the record converges
                if let (Some(cur), Op::Put { resource, .. }) = (current.as_ref(), &entry.op) {
                    fill_in_gp(rows, cur, id, resource, last_updated)?;
                }
                EntryResult::Stale { version }
            }
            Decision::Skip(result) => result,
            Decision::Write { event_time } => {
                let at = At { event_time, ..at };
                match &entry.op {
                    Op::Put {
                        resource,
                        patients,
                        identifiers,
                        ..
                    } => put(rows, &at, resource, patients, identifiers)?,
                    Op::Delete => delete(rows, &at)?,
                }
            }
        };
        if resource_type == "DiagnosticReport" && matches!(result, EntryResult::Stale { .. }) {
            if let Op::Put { resource, .. } = &entry.op {
                stale_results.extend(result_ids(resource).into_iter().map(str::to_string));
            }
        }
        outcome.entries.push(EntryOutcome {
            resource_type: entry.resource_type.clone(),
            id: entry.id.clone(),
            result,
        });
    }
    Ok(outcome)
}

/// What to do with one entry, decided before touching the record.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Leave the record as it is (create-only over an existing record, or an
    /// older event than the stored one).
    Skip(EntryResult),
    /// Write (or delete), remembering this event time.
    Write { event_time: Option<i64> },
}

/// `ifNoneMatch: "*"` leaves an existing record alone; an older event never
/// overwrites a newer one; the newest event time is kept.
/// Refuses the document, before anything of it is written, when a record in
/// it is filed under a Patient (`subject`, `patient`, `target`) that is
/// neither one of its entries nor stored (in any version): a neighbour's
/// Encounter naming `Patient/<an NHS number>` would move the visit off its
/// patient to no one, found by no search. The shipped mappings send the
/// Patient with every document, so theirs never ask the database.
fn refuse_unknown_patients<R: Rows>(rows: &mut R, plan: &Plan) -> Result<(), R::Error> {
    // (collected once: a document has a Patient or two, and forty entries)
    let in_document: Vec<&str> = plan
        .entries
        .iter()
        .filter(|e| e.resource_type == "Patient")
        .map(|e| e.id.as_str())
        .collect();
    for (index, entry) in plan.entries.iter().enumerate() {
        let Op::Put { patients, .. } = &entry.op else {
            continue;
        };
        if entry.resource_type == "Patient" {
            continue;
        }
        for patient in patients {
            if !in_document.contains(&patient.as_str())
                && rows.current("Patient", patient)?.is_none()
            {
                return Err(StoreError::InvalidEntry {
                    index,
                    problem: EntryProblem::UnknownPatient,
                }
                .into());
            }
        }
    }
    Ok(())
}

fn decide(current: Option<&Current>, create_only: bool, incoming: Option<i64>) -> Decision {
    match (current, incoming) {
        (Some(cur), _) if create_only && cur.content.is_some() => {
            Decision::Skip(EntryResult::Unchanged {
                version: cur.version,
            })
        }
        (Some(cur), Some(incoming)) if cur.event_time.is_some_and(|s| incoming < s) => {
            Decision::Skip(EntryResult::Stale {
                version: cur.version,
            })
        }
        _ => Decision::Write {
            event_time: match current.and_then(|c| c.event_time) {
                // A create-only record is a placeholder: it takes no event
                // time, so the authoritative document (e.g. the ADT that
                // arrives after the lab result) replaces it whatever its age.
                stored if create_only => stored,
                Some(stored) => Some(incoming.map_or(stored, |i| i.max(stored))),
                None => incoming,
            },
        },
    }
}

/// The record an entry writes, and when.
#[derive(Clone, Copy)]
struct At<'a> {
    /// The entry's place in the Bundle (for its error).
    index: usize,
    resource_type: &'a str,
    id: &'a str,
    current: Option<&'a Current>,
    last_updated: &'a str,
    event_time: Option<i64>,
    /// Written as a create-only placeholder (`ifNoneMatch`).
    create_only: bool,
    /// The HL7 v2 event the document records (`Plan::event`).
    event: Option<&'a str>,
}

impl At<'_> {
    /// Remembers the event time when it changed (no write otherwise, so a
    /// redelivered document costs no page writes).
    fn touch<R: Rows>(&self, rows: &mut R, current: &Current) -> Result<(), R::Error> {
        if self.event_time == current.event_time {
            return Ok(());
        }
        rows.set_event_time(self.resource_type, self.id, self.event_time)
    }

    fn version<'v>(&'v self, version: i64, content: Option<&'v str>) -> Version<'v> {
        Version {
            resource_type: self.resource_type,
            id: self.id,
            version,
            last_updated: self.last_updated,
            event_time: self.event_time,
            content,
        }
    }
}

/// An Encounter's entry (not a create-only placeholder). What each message
/// sent of the visit is kept as it was sent, with its event time and event
/// ([`Rows::record_sent`]). One in order (not older than the stored visit)
/// is applied over the stored visit ([`put`], [`next_visit`]). One that
/// arrives after a message sent later than it is put in its place among
/// them, and the visit is made again from all of them in the order they
/// were sent ([`replay_visit`]): whatever order a PAS's A01, A02, A03, A12,
/// A13 arrive in, the visit ends as their order of sending makes it (two
/// sent at the same time: in the order they arrived).
fn visit_in_order<R: Rows>(
    rows: &mut R,
    at: &At<'_>,
    op: &Op,
    decision: Decision,
) -> Result<EntryResult, R::Error> {
    // a visit stored before its messages were kept (by an older build, or
    // as a lab's placeholder): what is kept begins with it as it stands
    let kept = rows.sent_count(at.resource_type, at.id)?;
    if let Some(cur) = at.current {
        if kept == 0 {
            rows.record_sent(
                at.resource_type,
                at.id,
                &Sent {
                    seq: 0,
                    event_time: cur.event_time,
                    event: None,
                    content: cur.content.clone(),
                    seed: true,
                },
            )?;
        }
    }
    let content = match op {
        Op::Put { resource, .. } => Some(serde_json::to_string(resource)?),
        Op::Delete => None,
    };
    let event_time = match decision {
        Decision::Write { event_time } => event_time,
        Decision::Skip(_) => at.event_time,
    };
    // (a late message sent before a seed: the seed stands for it, so it is
    // stale, and not kept, where it would only fill the visit's room and move
    // the seed past messages later than it, s26b tester F1)
    if let (Decision::Skip(_), Some(cur), Some(t)) = (&decision, at.current, event_time) {
        let kept = rows.sent(at.resource_type, at.id)?;
        if kept
            .iter()
            .any(|s| s.seed && s.event_time.is_some_and(|seed| seed > t))
        {
            return Ok(EntryResult::Stale {
                version: cur.version,
            });
        }
    }
    let sent = Sent {
        seq: 0,
        event_time,
        event: at.event.map(str::to_string),
        content,
        seed: false,
    };
    rows.record_sent(at.resource_type, at.id, &sent)?;
    if kept >= MAX_SENT {
        forget_oldest_sent(rows, at)?;
    }
    // (sent at the same time as a cancellation kept already: before it)
    let before_a_cancellation = match (&decision, at.current) {
        (Decision::Write { event_time }, Some(cur))
            if *event_time == cur.event_time && !is_cancellation(at.event) =>
        {
            rows.sent(at.resource_type, at.id)?
                .iter()
                .any(|s| s.event_time == *event_time && is_cancellation(s.event.as_deref()))
        }
        _ => false,
    };
    match (decision, op) {
        (Decision::Skip(_), _) => replay_visit(rows, at),
        _ if before_a_cancellation => replay_visit(rows, at),
        (
            Decision::Write { event_time },
            Op::Put {
                resource,
                patients,
                identifiers,
                ..
            },
        ) => put(
            rows,
            &At { event_time, ..*at },
            resource,
            patients,
            identifiers,
        ),
        (Decision::Write { event_time }, Op::Delete) => delete(rows, &At { event_time, ..*at }),
    }
}

/// A visit made again from every message of it kept, in the order they were
/// sent, each applied as it would have been in that order
/// ([`next_visit`]); written (with the stored event time) when that is not
/// the visit stored.
fn replay_visit<R: Rows>(rows: &mut R, at: &At<'_>) -> Result<EntryResult, R::Error> {
    let Some(cur) = at.current else {
        return Ok(EntryResult::AlreadyAbsent);
    };
    let visit = made_from(&rows.sent(at.resource_type, at.id)?)?;
    let stored: Option<Value> = match cur.content.as_deref() {
        Some(text) => Some(serde_json::from_str(text)?),
        None => None,
    };
    let same = match (&visit, &stored) {
        (Some(a), Some(b)) => plan::without_meta(a) == plan::without_meta(b),
        (a, b) => a.is_none() && b.is_none(),
    };
    if same {
        return Ok(EntryResult::Stale {
            version: cur.version,
        });
    }
    let at = At {
        event_time: cur.event_time,
        ..*at
    };
    let version = cur.version + 1;
    match &visit {
        Some(visit) => {
            rewrite(
                rows,
                at.resource_type,
                at.id,
                cur,
                visit,
                at.last_updated,
                cur.event_time,
            )?;
            let patients = plan::patients_of(at.resource_type, at.id, visit);
            rows.link_patients(at.resource_type, at.id, &patients)?;
        }
        None => {
            rows.write_version(&at.version(version, None))?;
            rows.link_patients(at.resource_type, at.id, &[])?;
        }
    }
    Ok(EntryResult::Updated { version })
}

/// The events that cancel another (A11 an admission, A12 a transfer, A13 a
/// discharge, A38 a pre-admission): sent at the same time as the event they
/// cancel, they are taken to follow it, whatever order the two arrive in.
const CANCELLATIONS: [&str; 4] = ["A11", "A12", "A13", "A38"];

fn is_cancellation(event: Option<&str>) -> bool {
    event.is_some_and(|e| CANCELLATIONS.contains(&e))
}

/// At most this many messages of one visit are kept (a long stay sends a
/// few dozen): beyond it, the older half are forgotten, and the visit they
/// made is kept in their stead ([`forget_oldest_sent`]). So a sender that
/// files every visit under one number costs bounded work per message.
pub(super) const MAX_SENT: i64 = 256;

/// Forgets the older half of a visit's kept messages (by the order they
/// were sent, never parting two sent at the same time), keeping the visit
/// they made as a `seed` with the latest event time among them: a message
/// sent before that which arrives later still is stale.
fn forget_oldest_sent<R: Rows>(rows: &mut R, at: &At<'_>) -> Result<(), R::Error> {
    let sent = rows.sent(at.resource_type, at.id)?;
    let mut half = sent.len() / 2;
    while half < sent.len() && half > 0 && sent[half].event_time == sent[half - 1].event_time {
        half += 1;
    }
    if half == 0 || half >= sent.len() {
        return Ok(());
    }
    let (older, _) = sent.split_at(half);
    let visit = made_from(older)?;
    let seqs: Vec<i64> = older.iter().map(|s| s.seq).collect();
    rows.forget_sent(at.resource_type, at.id, &seqs)?;
    let seed = Sent {
        seq: 0,
        event_time: older.last().and_then(|s| s.event_time),
        event: None,
        content: visit.as_ref().map(serde_json::to_string).transpose()?,
        seed: true,
    };
    rows.record_sent(at.resource_type, at.id, &seed)
}

/// The visit `sent` (in the order they were sent) make, each applied as
/// [`next_visit`] does; `None`: none, or deleted.
fn made_from(sent: &[Sent]) -> Result<Option<Value>, serde_json::Error> {
    let mut visit: Option<Value> = None;
    for sent in sent {
        let content: Option<Value> = match &sent.content {
            Some(text) => Some(serde_json::from_str(text)?),
            None => None,
        };
        visit = match content {
            Some(resource) if !sent.seed => next_visit(
                visit.as_ref(),
                &resource,
                sent.event.as_deref(),
                sent.event_time,
            )
            .or(visit),
            // the visit as it stood when its messages began to be kept, or
            // a delete
            content => content,
        };
    }
    Ok(visit)
}

/// What an Encounter message (`sent`, of HL7 v2 event `event`, at
/// `event_time`) makes of the stored visit when applied in order; `None`:
/// nothing, it is stale whatever its event time:
/// - a cancelled visit (A11: `entered-in-error`, which FHIR says should
///   never have existed; A38: a pre-admission `cancelled`) is not brought
///   back by a later message that still carries its PV1 (an A08 with the
///   last visit): only an admission event (an A01 sent again after a
///   mistaken A11: the patient was admitted after all), or an admission of
///   another start under the same visit number, is new (and an update, an
///   event that is not an admission, never brings a cancelled visit back,
///   whatever start it gives: an A08 with another admit date is not a new
///   booking);
/// - otherwise the visit as [`with_visit_kept`] merges it, a cancelled
///   discharge recorded with its event time.
fn next_visit(
    stored: Option<&Value>,
    sent: &Value,
    event: Option<&str>,
    event_time: Option<i64>,
) -> Option<Value> {
    if let Some(stored) = stored {
        let update_of_cancelled =
            event.is_some() && is_cancelled_visit(stored) && !is_cancelled_visit(sent);
        if !plan::is_admission(event) && (cancels_visit(stored, sent) || update_of_cancelled) {
            return None;
        }
    }
    let mut visit = stored
        .and_then(|stored| with_visit_kept(stored, sent, event))
        .unwrap_or_else(|| sent.clone());
    stamp_tag(
        &mut visit,
        crate::fhir_types::DISCHARGE_CANCELLED,
        event_time,
    );
    Some(visit)
}

fn put<R: Rows>(
    rows: &mut R,
    at: &At<'_>,
    resource: &Value,
    patients: &[String],
    identifiers: &[(String, String)],
) -> Result<EntryResult, R::Error> {
    let traced = !plan::nhs_numbers(identifiers).is_empty();
    // a retirement the document itself makes (an A40's merged patient)
    let merged_into = match at.resource_type {
        "Patient" => retirement(resource),
        _ => None,
    };
    // the stored version, read once (continuity, the unchanged check, a report's results)
    let stored: Option<Value> = match at.current.and_then(|cur| cur.content.as_deref()) {
        Some(text) => Some(serde_json::from_str(text)?),
        None => None,
    };
    // a result or report already reported (final, corrected, amended) is not
    // taken back to preliminary by a preliminary version that arrives after it
    // (a queue flushed again by an interface engine, with a fresh MSH-7): that
    // version is stale, whatever its event time
    if let (Some(cur), Some(stored)) = (at.current, &stored) {
        if matches!(at.resource_type, "Observation" | "DiagnosticReport")
            && matches!(
                stored["status"].as_str(),
                Some("final" | "corrected" | "amended" | "appended")
            )
            && matches!(
                resource["status"].as_str(),
                Some("registered" | "preliminary" | "partial")
            )
        {
            return Ok(EntryResult::Stale {
                version: cur.version,
            });
        }
        // a result or report issued (OBR-22) before the stored version was is
        // an older issue of it, sent again (a queue flushed with a fresh MSH-7):
        // stale whatever its status, so a correction the lab marked on the
        // report alone (OBR-25 C, the results still F) is not undone either
        if matches!(at.resource_type, "Observation" | "DiagnosticReport")
            && issued_after(stored, resource)
        {
            return Ok(EntryResult::Stale {
                version: cur.version,
            });
        }
        // nor is a corrected (or amended) one taken back to the final version
        // it corrected: HL7 v2 never goes from C back to F (a later correction
        // is C again), so a final that is not issued after the correction is
        // that queue flushed again; a final issued later is a new report
        if matches!(at.resource_type, "Observation" | "DiagnosticReport")
            && matches!(stored["status"].as_str(), Some("corrected" | "amended"))
            && resource["status"].as_str() == Some("final")
            && !issued_after(resource, stored)
        {
            return Ok(EntryResult::Stale {
                version: cur.version,
            });
        }
    }
    let owned = match at.resource_type {
        "Patient" => continuity(
            rows,
            at,
            resource,
            identifiers,
            stored.as_ref(),
            traced,
            merged_into.as_deref(),
        )?,
        _ => None,
    };
    let owned =
        match (at.resource_type, &stored) {
            ("Patient", Some(stored)) => {
                let owned = with_gp_from(owned.as_ref().unwrap_or(resource), stored).or(owned);
                // (not a placeholder's: a lab's create-only Patient adds nothing to
                // the PAS's record, whichever arrives first)
                let owned = match at.current.is_some_and(|c| c.event_time.is_some()) {
                    true => with_other_assigners_kept(owned.as_ref().unwrap_or(resource), stored)
                        .or(owned),
                    false => owned,
                };
                let owned = match at.current.is_some_and(|c| c.event_time.is_some()) {
                    true => with_contact_details_kept(owned.as_ref().unwrap_or(resource), stored)
                        .or(owned),
                    false => owned,
                };
                with_merges_kept(owned.as_ref().unwrap_or(resource), stored).or(owned)
            }
            ("DiagnosticReport", Some(stored)) => with_kept_results(rows, stored, resource)?,
            ("Encounter", stored) => {
                match next_visit(stored.as_ref(), resource, at.event, at.event_time) {
                    Some(visit) => Some(visit),
                    // (its event time is the visit's newest all the same: an
                    // admission sent before it that arrives after it, an A01
                    // after a mistaken A11, is put in its place before it,
                    // s26 tester H2r)
                    None => {
                        if let Some(cur) = at.current {
                            at.touch(rows, cur)?;
                        }
                        return Ok(EntryResult::Stale {
                            version: at.current.map_or(0, |cur| cur.version),
                        });
                    }
                }
            }
            _ => owned,
        };
    let resource = owned.as_ref().unwrap_or(resource);
    let merged_identifiers;
    let identifiers = match &owned {
        Some(resource) => {
            merged_identifiers = plan::identifiers_of(resource);
            &merged_identifiers
        }
        None => identifiers,
    };
    // a Patient's NHS number never changes under its id (ids are made from it),
    // as written (after continuity, which keeps what a retirement does not say):
    // a version that names another NHS number, a second one, or none (a
    // neighbour's document, a sender's mistake; dropping it first and naming
    // another next is the same change in two steps) is refused, the whole
    // document with it
    // (against a record written with authority: a placeholder, written
    // create-only with no event time, a lab's or a neighbour's, is replaced by
    // the first authoritative version, so one made under an id our PAS will use,
    // with another number, cannot lock that PAS's patient out)
    let authoritative = at.current.is_some_and(|c| c.event_time.is_some());
    if let (Some(stored), "Patient", true) = (&stored, at.resource_type, authoritative) {
        let before = plan::nhs_numbers(&plan::identifiers_of(stored));
        let now = plan::nhs_numbers(identifiers);
        if !before.is_empty() && now != before {
            return Err(StoreError::InvalidEntry {
                index: at.index,
                problem: EntryProblem::NhsNumberChanged,
            }
            .into());
        }
    }
    // a new create-only Patient (a neighbour's, a lab's placeholder) under an
    // id other than the one its NHS number makes here, for an NHS number a
    // live Patient already holds: a second record of someone we know, which
    // would split their record (a search by the number finding two). Refused,
    // the whole document with it; a placeholder under the id the number makes
    // (the shipped mappings') is the same record, never refused.
    if at.resource_type == "Patient"
        && at.create_only
        && at.current.is_none_or(|c| c.content.is_none())
    {
        // (by its ten digits, as every Patient's NHS number is indexed:
        // `999 000 1103`, `999-000-1103`, a system with a trailing `/`)
        for digits in plan::nhs_numbers(identifiers) {
            if at.id == nhs_number_patient_id(&digits) {
                continue;
            }
            let holders = rows.patients_with_identifier(NHS_NUMBER_SYSTEM, &digits, false)?;
            if holders.iter().any(|other| other != at.id) {
                return Err(StoreError::InvalidEntry {
                    index: at.index,
                    problem: EntryProblem::NhsNumberHeldElsewhere,
                }
                .into());
            }
        }
    }
    // a retired Patient is also in its survivor's compartment: what is filed
    // under it later is found from the survivor too (`Rows::link_patients`)
    let mut linked = patients.to_vec();
    if at.resource_type == "Patient" {
        if let Some(survivor) = replaced_by(resource) {
            if !linked.contains(&survivor) {
                linked.push(survivor);
            }
        }
    }
    // (also when this version is the one stored: a placeholder of a lab's
    // under this id may have said all of it before)
    if at.resource_type == "Patient" && traced && !at.create_only && retirement(resource).is_none()
    {
        retire_holding_nhs_number(rows, at, identifiers)?;
    }
    if let (Some(cur), Some(stored)) = (at.current, &stored) {
        if plan::without_meta(stored) == plan::without_meta(resource) {
            at.touch(rows, cur)?;
            return Ok(EntryResult::Unchanged {
                version: cur.version,
            });
        }
    }
    let version = at.current.map_or(1, |cur| cur.version + 1);
    let content = stamped(resource, version, at.last_updated)?;
    rows.write_version(&at.version(version, Some(&content)))?;
    rows.link_patients(at.resource_type, at.id, &linked)?;
    if at.resource_type == "Patient" {
        rows.index_identifiers(at.id, identifiers)?;
        if let Some(survivor) = replaced_by(resource) {
            // a merged record (an A40's MRG): what was filed under it is the
            // survivor's too
            rows.share_patient_links(at.id, &survivor)?;
        }
        // a placeholder (the identifiers and GP a lab result or a cancellation
        // carries) never retires the record the PAS made: it would leave the
        // person's only live record without a name
        if traced && !at.create_only && retirement(resource).is_none() {
            retire_sharing(rows, at, identifiers, at.id, true)?;
        }
        if let Some(survivor) = merged_into {
            // an A40 whose MRG names the retired record by its MRN alone: the
            // record keyed otherwise (by an NHS number) that holds that MRN is
            // the one meant, and is retired too (not left active beside a ghost)
            retire_sharing(rows, at, identifiers, &survivor, false)?;
        }
    }
    if at.resource_type == "DiagnosticReport" {
        if let Some(previous) = &stored {
            withdraw_dropped_results(rows, at, previous, resource)?;
        }
    }
    if at.resource_type == "AllergyIntolerance" {
        withdraw_no_known_allergy(rows, at, resource, patients)?;
    }
    let was_live = at.current.is_some_and(|cur| cur.content.is_some());
    Ok(if was_live {
        EntryResult::Updated { version }
    } else {
        EntryResult::Created { version }
    })
}

/// What a Patient is written as, when not as the document says (`None`): a
/// retired record stays retired (a late or repeated message under the merged
/// identity updates it, and it still names its survivor, rather than bringing
/// a second record of the patient back); a record with no NHS number whose
/// MRN a traced Patient holds is written retired in its favour
/// ([`traced_twin`]); and a retirement (an A40's MRG, a record made before a
/// trace) keeps the record it retires, `meta` included: an A40 says little of
/// the merged patient, and replacing the record with that would wipe their
/// demographics.
fn continuity<R: Rows>(
    rows: &mut R,
    at: &At<'_>,
    resource: &Value,
    identifiers: &[(String, String)],
    stored: Option<&Value>,
    traced: bool,
    merged_into: Option<&str>,
) -> Result<Option<Value>, R::Error> {
    if merged_into.is_none() {
        if let Some(survivor) = stored.and_then(retirement) {
            // unless an A40 names this record the survivor (a merge undone the
            // other way, or a chain B into A, A into C, C into B): it lives
            // again and the record it replaces is retired in its favour, rather
            // than leaving the person with no live record and links round in a
            // circle (an older A40 sent again is stale by its event time)
            if !is_survivor(resource) {
                return Ok(Some(retire(resource.clone(), &survivor)));
            }
        }
    }
    let mut owned = None;
    if !traced && merged_into.is_none() {
        if let Some(survivor) = traced_twin(rows, at.id, identifiers)? {
            owned = Some(retire(resource.clone(), &survivor));
        }
    }
    let incoming = owned.as_ref().unwrap_or(resource);
    if let (Some(survivor), Some(stored)) = (retirement(incoming), stored) {
        let kept = with_identifiers(stored.clone(), incoming);
        owned = Some(retire(kept, &survivor));
    }
    Ok(owned)
}

/// An Encounter as an update writes it over the stored visit (`None`: as it
/// is). HL7 v2 says an omitted field leaves the old value, and PAS send
/// updates (A08, A02, A31) with partial PV1s, as after a discharge:
/// - what it does not say (its location, participants, service provider,
///   `period.start`; its hospitalization, or the parts of it it leaves out,
///   unless it reopens the visit) is kept from the stored visit, and the
///   wards before the ones it names stay in the location history
///   ([`with_location_history`]);
/// - a finished visit stays finished (its end, discharge disposition and
///   destination kept, its locations completed) unless the event reopens it:
///   a cancelled discharge (A13), or an admission with another start (a new
///   stay under the same visit number), not an A01 or A05 sent again;
/// - a cancellation is [`with_admission_kept`].
fn with_visit_kept(stored: &Value, encounter: &Value, event: Option<&str>) -> Option<Value> {
    if is_cancelled_visit(encounter) {
        return with_admission_kept(stored, encounter);
    }
    // a cancelled discharge reopens the stay; an admission only when it is
    // another one under the same visit number (another start): an A01 or
    // A05 sent again after the discharge does not
    let start = |e: &Value| {
        e["period"]["start"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    };
    let another_start = matches!((start(encounter), start(stored)), (Some(a), Some(b)) if a != b);
    let reopens = event == Some("A13") || (plan::is_admission(event) && another_start);
    let mut kept = encounter.clone();
    let mut changed = false;
    let mut keep = |kept: &mut Value, key: &str| {
        if kept.get(key).is_none() {
            if let Some(v) = stored.get(key) {
                kept[key] = v.clone();
                changed = true;
            }
        }
    };
    for key in ["location", "participant", "serviceProvider"] {
        keep(&mut kept, key);
    }
    if !reopens {
        keep(&mut kept, "hospitalization");
    }
    if let Some(history) = with_location_history(stored, &kept, event) {
        kept["location"] = history;
        changed = true;
    }
    if !reopens {
        // (and what a hospitalization it does carry leaves out: an A08
        // after a discharge with PV1-45 but no PV1-36 keeps the disposition)
        if let (Some(mine), Some(theirs)) = (
            kept.get_mut("hospitalization")
                .and_then(Value::as_object_mut),
            stored["hospitalization"].as_object(),
        ) {
            for (key, value) in theirs {
                if !mine.contains_key(key) {
                    mine.insert(key.clone(), value.clone());
                    changed = true;
                }
            }
        }
    }
    if kept["period"]["start"].is_null() {
        if let Some(start) = stored["period"]["start"].as_str() {
            kept["period"]["start"] = Value::String(start.to_string());
            changed = true;
        }
    }
    let ends = |e: &Value| {
        matches!(
            e["status"].as_str(),
            Some("finished") | Some("cancelled") | Some("entered-in-error")
        )
    };
    // a cancelled discharge stays said until the visit ends again; a
    // cancelled transfer until a new transfer or the end of the visit (so a
    // reader can tell; a late message needs no tag, `visit_in_order`)
    // (the stored tag itself, with the time it was recorded)
    let kept_tags = [
        (crate::fhir_types::DISCHARGE_CANCELLED, !ends(&kept)),
        (
            crate::fhir_types::TRANSFER_CANCELLED,
            !ends(&kept) && event != Some("A02"),
        ),
    ];
    for (tag, keeps) in kept_tags {
        if keeps && !crate::fhir_types::has_tag(&kept, tag) {
            changed |= copy_tag(&mut kept, stored, tag);
        }
    }
    if stored["status"] == "finished" && !reopens && !ends(&kept) {
        end_visit(&mut kept, stored);
        changed = true;
    }
    // a cancelled discharge that names no ward (PV1-3 left out): the patient
    // is back where the stay ended, its last ward
    if event == Some("A13") && !ends(&kept) {
        if let Some(locations) = kept["location"].as_array_mut() {
            if !locations.iter().any(is_active_location) {
                if let Some(last) = locations.last_mut() {
                    last["status"] = Value::String("active".into());
                    changed = true;
                }
            }
        }
    }
    // a discharge that names no ward (PV1-3 left out) leaves none active: the
    // ward kept from the stored visit was left too
    if kept["status"] == "finished" {
        changed |= complete_wards(&mut kept);
    }
    changed.then_some(kept)
}

/// The locations of a visit an update names, after the stored visit's
/// earlier ones (`None`: as they are): a transfer (A02) or an update that
/// names only where the patient is now (no PV1-6) does not drop the wards
/// before. A stored location the update does not name is kept, `completed`
/// (the patient left it), ahead of the update's own; a cancelled transfer
/// (A12) drops the stored `active` one it does not name (the transfer's
/// destination, where the patient never stayed). A location is known by its
/// identifier, else its display.
///
/// One place said more or less finely is one place: an update naming the
/// ward alone where the stored visit has the bed (`RAL01/AMU`, then
/// `RAL01/AMU/BAY 1/BED 2`) keeps the bed; a bed move inside a ward whose
/// PV1-6 names that ward alone does not say the patient left the ward.
fn with_location_history(stored: &Value, encounter: &Value, event: Option<&str>) -> Option<Value> {
    let theirs: &[Value] = stored["location"].as_array().map_or(&[], Vec::as_slice);
    let sent = encounter["location"].as_array()?;
    let key = location_key;
    let same = same_place;
    // `a` is `b` or a coarser form of it
    let within = |a: &str, b: &str| a.len() <= b.len() && same(a, b);
    let is_active = is_active_location;
    let mut changed = false;
    // the update's own: a ward it says was left that is (a coarser form of)
    // where it says the patient is now is no ward left (a bed move inside
    // the ward, with a PV1-6 naming the ward alone)
    let now_keys: Vec<String> = sent
        .iter()
        .filter(|l| is_active(l))
        .filter_map(key)
        .collect();
    let mut mine: Vec<Value> = Vec::with_capacity(sent.len());
    for l in sent {
        let left_for_itself =
            !is_active(l) && key(l).is_some_and(|k| now_keys.iter().any(|n| within(&k, n)));
        if left_for_itself {
            changed = true;
        } else {
            mine.push(l.clone());
        }
    }
    // where the patient is now, said more coarsely than the stored visit
    // says it (the ward alone, the bed stored): the stored, finer form
    for l in mine.iter_mut().filter(|l| is_active(l)) {
        let Some(k) = key(l) else {
            continue;
        };
        let finer = theirs.iter().find(|s| {
            is_active(s) && key(s).is_some_and(|sk| sk.len() > k.len() && within(&k, &sk))
        });
        if let Some(finer) = finer {
            *l = finer.clone();
            changed = true;
        }
    }
    let named: Vec<String> = mine.iter().filter_map(key).collect();
    let mut history = Vec::new();
    for location in theirs {
        let Some(k) = key(location) else {
            continue;
        };
        if named.iter().any(|n| same(n, &k)) {
            continue;
        }
        let active = is_active(location);
        if active && event == Some("A12") {
            continue;
        }
        let mut earlier = location.clone();
        if active {
            earlier["status"] = Value::String("completed".into());
        }
        history.push(earlier);
    }
    if history.is_empty() && !changed {
        return None;
    }
    // the wards left before, then the ones it says were left, then where
    // the patient is
    let (left, now): (Vec<Value>, Vec<Value>) = mine.into_iter().partition(|l| !is_active(l));
    history.extend(left.into_iter().chain(now));
    Some(Value::Array(history))
}

/// A location's key: its identifier, else its display or reference.
fn location_key(l: &Value) -> Option<String> {
    let place = &l["location"];
    place["identifier"]["value"]
        .as_str()
        .or_else(|| place["display"].as_str())
        .or_else(|| place["reference"].as_str())
        .map(str::to_string)
}

/// Whether two location keys are the same place said more or less finely
/// (`RAL01/AMU` for a bed of it, `RAL01/AMU/BAY 1/BED 2`: a PV1-6 naming the
/// ward alone). A site alone, `RAL01`, is no coarser form of its wards: it
/// says nothing of where in it the patient is.
fn same_place(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    long == short
        || (short.contains('/') && long.starts_with(short) && long[short.len()..].starts_with('/'))
}

fn is_active_location(l: &Value) -> bool {
    l["status"] != "completed"
}

/// The `meta.tag` `(system, code)` of `resource`.
fn tag_of<'r>(resource: &'r mut Value, (system, code): (&str, &str)) -> Option<&'r mut Value> {
    resource["meta"]["tag"]
        .as_array_mut()?
        .iter_mut()
        .find(|t| t["system"] == system && t["code"] == code)
}

/// Whether `resource` carries the `meta.tag` `tag` with no event time
/// recorded on it ([`crate::fhir_types::TAG_EVENT_TIME`]).
fn unstamped(resource: &Value, tag: (&str, &str)) -> bool {
    crate::fhir_types::has_tag(resource, tag)
        && crate::fhir_types::tag_event_time(resource, tag).is_none()
}

/// Records event time `at` (microseconds) on `resource`'s `meta.tag` `tag`
/// when it has none ([`crate::fhir_types::TAG_EVENT_TIME`]).
fn stamp_tag(resource: &mut Value, tag: (&str, &str), at: Option<i64>) {
    let Some(when) = at.and_then(|t| jiff::Timestamp::from_microsecond(t).ok()) else {
        return;
    };
    if !unstamped(resource, tag) {
        return;
    }
    if let Some(coding) = tag_of(resource, tag) {
        let time = serde_json::json!({
            "url": crate::fhir_types::TAG_EVENT_TIME,
            "valueInstant": when.to_string(),
        });
        match coding["extension"].as_array_mut() {
            Some(extensions) => extensions.push(time),
            None => coding["extension"] = Value::Array(vec![time]),
        }
    }
}

/// Adds `from`'s `meta.tag` `tag` (with what it records) to `to`; whether
/// `from` had it.
fn copy_tag(to: &mut Value, from: &Value, tag: (&str, &str)) -> bool {
    match crate::fhir_types::find_tag(from, tag) {
        Some(found) => {
            push_tag(to, found.clone());
            true
        }
        None => false,
    }
}

/// Appends `tag` (a Coding) to `resource`'s `meta.tag`.
fn push_tag(resource: &mut Value, tag: Value) {
    match resource["meta"]["tag"].as_array_mut() {
        Some(tags) => tags.push(tag),
        None => resource["meta"]["tag"] = Value::Array(vec![tag]),
    }
}

/// Adds the `meta.tag` `(system, code)` with `display` to `resource`.
fn add_tag(resource: &mut Value, (system, code): (&str, &str), display: &str) {
    push_tag(
        resource,
        serde_json::json!({"system": system, "code": code, "display": display}),
    );
}

/// Ends `visit` as the finished `discharge` says: `finished`, and the end,
/// discharge disposition and destination it does not have from `discharge`;
/// its active wards completed.
fn end_visit(visit: &mut Value, discharge: &Value) {
    visit["status"] = Value::String("finished".into());
    if visit["period"]["end"].is_null() {
        if let Some(end) = discharge["period"]["end"].as_str() {
            visit["period"]["end"] = Value::String(end.to_string());
        }
    }
    for key in ["dischargeDisposition", "destination"] {
        if visit["hospitalization"].get(key).is_none() {
            if let Some(v) = discharge["hospitalization"].get(key) {
                visit["hospitalization"][key] = v.clone();
            }
        }
    }
    complete_wards(visit);
}

/// Marks `visit`'s active wards completed; whether there was one.
fn complete_wards(visit: &mut Value) -> bool {
    let mut any = false;
    for location in visit["location"].as_array_mut().into_iter().flatten() {
        if location["status"] == "active" {
            location["status"] = Value::String("completed".into());
            any = true;
        }
    }
    any
}

/// A visit's cancellation (A11) sent without the admit time (PV1-44): the
/// stored admission's start is kept on it (`None`: nothing to add), so the
/// cancellation names the admission it cancels, and a later admission under
/// the same visit number with another start is new (`cancels_visit`).
fn with_admission_kept(stored: &Value, encounter: &Value) -> Option<Value> {
    if !is_cancelled_visit(encounter) || !encounter["period"]["start"].is_null() {
        return None;
    }
    let start = stored["period"]["start"].as_str()?;
    let mut kept = encounter.clone();
    kept["period"]["start"] = Value::String(start.to_string());
    Some(kept)
}

/// Whether Encounter `cancelled` (`entered-in-error`: an A11; `cancelled`: an A38) is the
/// cancellation of the same visit as `other`, which is not cancelled: the same
/// admission (`period.start` the same instant, or missing on either side).
/// Such a visit stays cancelled whatever the arrival order of the two.
fn cancels_visit(cancelled: &Value, other: &Value) -> bool {
    let start = |e: &Value| e["period"]["start"].as_str().map(str::to_string);
    let same_start = match (start(cancelled), start(other)) {
        // a side without an admit time (an A11 sent without PV1-44): the visit
        // number is all there is to go by, and it is the same
        (None, _) | (_, None) => true,
        (Some(a), Some(b)) => {
            a == b
                || matches!(
                    (a.parse::<jiff::Timestamp>(), b.parse::<jiff::Timestamp>()),
                    (Ok(a), Ok(b)) if a == b
                )
        }
    };
    is_cancelled_visit(cancelled) && !is_cancelled_visit(other) && same_start
}

/// A visit cancelled: `entered-in-error` (an A11's admission) or `cancelled`
/// (an A38's pre-admission).
fn is_cancelled_visit(encounter: &Value) -> bool {
    matches!(
        encounter["status"].as_str(),
        Some("entered-in-error" | "cancelled")
    )
}

/// Whether `resource` was issued (`issued`, an instant) after `stored`; not
/// when either has no readable `issued`.
fn issued_after(resource: &Value, stored: &Value) -> bool {
    let issued = |r: &Value| {
        r["issued"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    };
    matches!((issued(resource), issued(stored)), (Some(new), Some(old)) if new > old)
}

/// `patient` with the GP of `other` when it names none and `other` does
/// (`None`: nothing to add). PD1 is optional in every ADT message, and many
/// PAS send it on the A01, A04 and A28 only: an update that names no GP keeps
/// the registered one (HL7 v2: an omitted field leaves the old value), and an
/// older message that named it, arriving after such an update, still gives it
/// (the record converges whatever the arrival order).
///
/// A deletion is kept alike: a `patient` whose sender deleted the GP
/// registration ([`gp_registration_deleted`]: PD1-3 `""`) takes none, and
/// one that says nothing of it, over `other` that deleted it, takes the
/// deletion's tag (and the GP `other` named with it, if any: PD1-4 sent with
/// the practice deleted) rather than an older GP.
fn with_gp_from(patient: &Value, other: &Value) -> Option<Value> {
    if patient.get("generalPractitioner").is_some() || gp_registration_deleted(patient) {
        return None;
    }
    let mut kept = patient.clone();
    let deleted = gp_registration_deleted(other);
    if deleted {
        add_tag(
            &mut kept,
            crate::fhir_types::GP_REGISTRATION_DELETED,
            crate::fhir_types::GP_REGISTRATION_DELETED_DISPLAY,
        );
    }
    match other.get("generalPractitioner") {
        // the GP deleted (PD1-4 `""`): the practice alone is kept
        Some(gp) if crate::fhir_types::gp_deleted(patient) => {
            let practices: Vec<Value> = gp
                .as_array()
                .into_iter()
                .flatten()
                .filter(|g| g["identifier"]["system"] == crate::route::ODS_SYSTEM)
                .cloned()
                .collect();
            if practices.is_empty() {
                return deleted.then_some(kept);
            }
            kept["generalPractitioner"] = Value::Array(practices);
        }
        Some(gp) => kept["generalPractitioner"] = gp.clone(),
        None if deleted => {}
        None => return None,
    }
    Some(kept)
}

/// `patient` with the `address` and `telecom` of `other` it leaves out,
/// unless its sender deleted them ([`crate::fhir_types::ADDRESS_DELETED`],
/// [`crate::fhir_types::TELECOM_DELETED`]: PID-11, PID-13/14 sent as `""`):
/// in HL7 v2 a field left out is unchanged (an A02's short PID, an A08 sent
/// with the fields that changed), as PD1 is for the GP ([`with_gp_from`]).
/// Where `other` has none but deleted it, its deletion's tag. Used both ways:
/// a new version over the stored one, and the stored one over an older
/// version arriving late (`fill_in_gp`). `None` when nothing is added.
fn with_contact_details_kept(patient: &Value, other: &Value) -> Option<Value> {
    let mut kept: Option<Value> = None;
    for (key, deleted) in [
        ("address", crate::fhir_types::ADDRESS_DELETED),
        ("telecom", crate::fhir_types::TELECOM_DELETED),
    ] {
        if patient.get(key).is_some() || crate::fhir_types::has_tag(patient, deleted) {
            continue;
        }
        match (other.get(key), crate::fhir_types::find_tag(other, deleted)) {
            (Some(value), _) => {
                kept.get_or_insert_with(|| patient.clone())[key] = value.clone();
            }
            // the deletion stays said over an update that says nothing of
            // it, so an older version arriving late does not bring it back
            (None, Some(tag)) => push_tag(kept.get_or_insert_with(|| patient.clone()), tag.clone()),
            (None, None) => {}
        }
    }
    kept
}

/// Whether a Patient has an NHS number ([`plan::nhs_number_of`]).
fn has_nhs_number(patient: &Value) -> bool {
    patient["identifier"].as_array().is_some_and(|ids| {
        ids.iter().any(|id| {
            let system = id["system"].as_str().unwrap_or("");
            let value = id["value"].as_str().unwrap_or("");
            plan::nhs_number_of(system, value).is_some()
        })
    })
}

/// A Patient written with no NHS number while a live Patient with one shares
/// one of its local identifiers (a lab that sends only the MRN of a patient the
/// PAS has traced; a PAS update that left the NHS number out): that Patient's
/// id when there is exactly one, and the record is written retired in its favour.
fn traced_twin<R: Rows>(
    rows: &mut R,
    id: &str,
    identifiers: &[(String, String)],
) -> Result<Option<String>, R::Error> {
    let mut found: Option<String> = None;
    for (system, value) in identifiers {
        if system.is_empty() || value.is_empty() {
            continue;
        }
        // a placeholder (see `retire_sharing`) is no one's twin
        if rows.held_by_more_than(system, value, SHARED_IDENTIFIER_HOLDERS)? {
            continue;
        }
        for other in rows.patients_with_identifier(system, value, false)? {
            if other == id || found.as_deref() == Some(other.as_str()) {
                continue;
            }
            let Some(content) = rows.current("Patient", &other)?.and_then(|c| c.content) else {
                continue;
            };
            let other_resource: Value = serde_json::from_str(&content)?;
            if !has_nhs_number(&other_resource) || other_resource["active"] == false {
                continue;
            }
            if found.is_some() {
                // two traced patients share the identifier: not for the store to choose
                return Ok(None);
            }
            found = Some(other);
        }
    }
    Ok(found)
}

/// The survivor a Patient written inactive and `replaced-by` it names: a
/// retirement.
fn retirement(resource: &Value) -> Option<String> {
    (resource["active"] == false)
        .then(|| replaced_by(resource))
        .flatten()
}

/// `patient` with the stored identifiers of assigners it says nothing of
/// (`None`: nothing to add): a second hospital's PAS writes the patient with
/// its own MRN, and the first hospital's MRN stays (UK Core keeps every local
/// identifier; the lab results filed by it must still find their patient). An
/// identifier under a system the version gives is the sender's to change;
/// the NHS number is never added (a version without it is refused). Only
/// from a record written with authority (not a lab's create-only
/// placeholder, which never adds to the PAS's record).
fn with_other_assigners_kept(patient: &Value, stored: &Value) -> Option<Value> {
    let given: Vec<&str> = patient["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["system"].as_str())
        .collect();
    let kept: Vec<&Value> = stored["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| {
            i["system"]
                .as_str()
                .is_some_and(|s| !s.is_empty() && s != NHS_NUMBER_SYSTEM && !given.contains(&s))
                && i["value"].as_str().is_some_and(|v| !v.is_empty())
        })
        .collect();
    if kept.is_empty() {
        return None;
    }
    let mut out = patient.clone();
    if !out["identifier"].is_array() {
        out["identifier"] = Value::Array(Vec::new());
    }
    if let Some(ids) = out["identifier"].as_array_mut() {
        ids.extend(kept.into_iter().cloned());
    }
    Some(out)
}

/// A merge's survivor updated by a message that says nothing of the merge (an
/// A03 after the A40): it keeps its `replaces` links and `active: true`, so
/// a reader of the survivor alone still sees the records it replaced
/// (`None`: nothing to keep). A second merge into the same survivor (its own
/// `replaces` links only) keeps the first's too; a version retiring the
/// record (`replaced-by`) is left as it is.
fn with_merges_kept(patient: &Value, stored: &Value) -> Option<Value> {
    let given: Vec<&Value> = patient["link"].as_array().into_iter().flatten().collect();
    if given.iter().any(|l| l["type"] != "replaces") {
        return None;
    }
    let replaces: Vec<Value> = stored["link"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["type"] == "replaces")
        .filter(|l| !given.iter().any(|g| g["other"] == l["other"]))
        .cloned()
        .collect();
    if replaces.is_empty() {
        return None;
    }
    let mut kept = patient.clone();
    let mut links: Vec<Value> = given.into_iter().cloned().collect();
    links.extend(replaces);
    kept["link"] = Value::Array(links);
    if kept.get("active").is_none() && stored["active"] == true {
        kept["active"] = Value::Bool(true);
    }
    Some(kept)
}

/// `base` with the identifiers of `other` it does not have (by system and value).
fn with_identifiers(mut base: Value, other: &Value) -> Value {
    let Some(extra) = other["identifier"].as_array() else {
        return base;
    };
    let same = |a: &Value, b: &Value| a["system"] == b["system"] && a["value"] == b["value"];
    if let Value::Object(object) = &mut base {
        let ids = object
            .entry("identifier")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(ids) = ids {
            for id in extra {
                if !ids.iter().any(|have| same(have, id)) {
                    ids.push(id.clone());
                }
            }
        }
    }
    base
}

/// `patient` made inactive, `replaced-by` Patient `survivor`.
fn retire(mut patient: Value, survivor: &str) -> Value {
    if let Value::Object(object) = &mut patient {
        object.insert("active".into(), Value::Bool(false));
        object.insert(
            "link".into(),
            serde_json::json!([{
                "other": {"reference": format!("Patient/{survivor}")},
                "type": "replaced-by"
            }]),
        );
    }
    patient
}

/// Whether a Patient is an A40's survivor: active, with a `link` of type
/// `replaces`.
fn is_survivor(resource: &Value) -> bool {
    resource["active"] != false
        && resource["link"]
            .as_array()
            .is_some_and(|links| links.iter().any(|l| l["type"] == "replaces"))
}

/// The most Patients one person's local identifier is expected to be held
/// by (the record made before a trace, the traced one, those earlier merges
/// retired): beyond, [`retire_sharing`] takes it for a placeholder.
const SHARED_IDENTIFIER_HOLDERS: usize = 10;

/// The Patient id a Patient's `link` of type `replaced-by` names, if any.
fn replaced_by(resource: &Value) -> Option<String> {
    resource["link"].as_array()?.iter().find_map(|link| {
        (link["type"] == "replaced-by")
            .then(|| link["other"]["reference"].as_str())
            .flatten()
            .and_then(|r| r.strip_prefix("Patient/"))
            .map(str::to_string)
    })
}

/// Retires in favour of `survivor` every other live Patient that shares one of
/// `identifiers`' local identifiers (an MRN: the same system and value), is
/// not retired or linked already, and (`only_untraced`) has no NHS number.
///
/// A Patient written with an NHS number so retires the record its PAS made
/// before the patient was traced (an unknown patient in ED, a newborn, a lab
/// that sent only the MRN), which the mappings key by MRN while the traced one
/// is keyed by NHS number; an A40's retirement so retires the record its MRG
/// names by MRN alone. The old record becomes `active: false` with a `link`
/// `replaced-by` the survivor, and what was filed under it is linked to the
/// survivor too, so its `$everything` and searches find it. With
/// `only_untraced`, a record with another NHS number is never touched (a
/// shared MRN is then a data problem for people, not for the store).
///
/// An identifier more than [`SHARED_IDENTIFIER_HOLDERS`] Patients hold is a
/// placeholder (a PAS's `UNKNOWN`, a default MRN), not one person's: it
/// retires no one, as it would merge strangers into one record.
fn retire_sharing<R: Rows>(
    rows: &mut R,
    at: &At<'_>,
    identifiers: &[(String, String)],
    survivor: &str,
    only_untraced: bool,
) -> Result<(), R::Error> {
    let mut seen: Vec<String> = Vec::new();
    for (system, value) in identifiers {
        if system.is_empty()
            || system == NHS_NUMBER_SYSTEM
            || value.is_empty()
            || plan::nhs_number_of(system, value).is_some()
        {
            continue;
        }
        if rows.held_by_more_than(system, value, SHARED_IDENTIFIER_HOLDERS)? {
            tracing::warn!(
                system = %system,
                holders_over = SHARED_IDENTIFIER_HOLDERS,
                "a local identifier held by more patients than one person's records would be: a placeholder, not used to retire a record"
            );
            continue;
        }
        for other in rows.patients_with_identifier(system, value, only_untraced)? {
            if other == at.id || other == survivor || seen.contains(&other) {
                continue;
            }
            seen.push(other.clone());
            retire_other(rows, at, &other, survivor, only_untraced)?;
        }
    }
    Ok(())
}

/// Retires in favour of the Patient being written, `at` (the record its NHS
/// number makes here, `Patient/<uuid5 of nhs|number>`, written with
/// authority), every other live Patient that holds that NHS number: a record
/// a neighbour or a lab made under an id of its own before any of ours held
/// the number (the other order is refused: `NhsNumberHeldElsewhere`). One
/// person, one live record: the other becomes `active: false`, `replaced-by`
/// this one, and what was filed under it is found from this one.
fn retire_holding_nhs_number<R: Rows>(
    rows: &mut R,
    at: &At<'_>,
    identifiers: &[(String, String)],
) -> Result<(), R::Error> {
    for digits in plan::nhs_numbers(identifiers) {
        if at.id != nhs_number_patient_id(&digits) {
            continue;
        }
        for other in rows.patients_with_identifier(NHS_NUMBER_SYSTEM, &digits, false)? {
            if other != at.id {
                retire_other(rows, at, &other, at.id, false)?;
            }
        }
    }
    Ok(())
}

/// The id the shipped mappings give the Patient of NHS number `digits`
/// (`uuid5("Patient", "nhs|<digits>")`): the record that number makes here.
fn nhs_number_patient_id(digits: &str) -> String {
    crate::mapping::transform::uuid5("Patient", &format!("nhs|{digits}"))
}

/// Retires live Patient `other` in favour of `survivor` (see
/// [`retire_sharing`]), unless it is retired or linked already, or
/// (`only_untraced`) has an NHS number.
fn retire_other<R: Rows>(
    rows: &mut R,
    at: &At<'_>,
    other: &str,
    survivor: &str,
    only_untraced: bool,
) -> Result<(), R::Error> {
    let Some(current) = rows.current("Patient", other)? else {
        return Ok(());
    };
    let Some(content) = &current.content else {
        return Ok(());
    };
    let old: Value = serde_json::from_str(content)?;
    let skip = (only_untraced && has_nhs_number(&old))
        || old["active"] == false
        || old.get("link").is_some();
    if skip {
        return Ok(());
    }
    let old = retire(old, survivor);
    // the retiring event's time, so an older message is stale for it
    let event_time = current.event_time.max(at.event_time);
    rewrite(
        rows,
        "Patient",
        other,
        &current,
        &old,
        at.last_updated,
        event_time,
    )?;
    rows.link_patients("Patient", other, &[other.to_string(), survivor.to_string()])?;
    rows.share_patient_links(other, survivor)?;
    Ok(())
}

/// The Observation ids a DiagnosticReport's `result` names.
fn result_ids(report: &Value) -> Vec<&str> {
    report["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["reference"].as_str())
        .filter_map(|r| r.strip_prefix("Observation/"))
        .collect()
}

/// A report version that leaves out results its stored version named, as a lab
/// that sends only the result it corrects (OBX-11 `C`) does: those results stay
/// the report's (`None` when it names them all, or they are gone). A result is
/// let go only when it is cancelled or entered in error, or when the report is
/// made final while the result is still preliminary
/// ([`withdraw_dropped_results`] then cancels it). Not for a text report sent
/// whole ([`is_text_report`]): its correction is the whole report again.
fn with_kept_results<R: Rows>(
    rows: &mut R,
    stored: &Value,
    report: &Value,
) -> Result<Option<Value>, R::Error> {
    let done = matches!(
        report["status"].as_str(),
        Some("final" | "corrected" | "amended" | "appended")
    );
    let now = result_ids(report);
    // a text report sent whole (its lines the results, its text the
    // presented form): a line of the same text it no longer has is not kept
    let lines = if done && is_text_report(report) {
        Some(named_codes(rows, &now)?)
    } else {
        None
    };
    let mut kept = Vec::new();
    for id in result_ids(stored) {
        if now.contains(&id) || kept.contains(&id) {
            continue;
        }
        let Some(current) = rows.current("Observation", id)? else {
            continue;
        };
        let Some(content) = &current.content else {
            continue;
        };
        let observation: Value = serde_json::from_str(content)?;
        if let (Some(lines), Some(code)) = (&lines, code_of(&observation)) {
            if is_line_of(lines, &code) {
                continue;
            }
        }
        let keep = match observation["status"].as_str() {
            Some("cancelled" | "entered-in-error") => false,
            Some("preliminary" | "registered") => !done,
            _ => true,
        };
        if keep {
            kept.push(id);
        }
    }
    if kept.is_empty() {
        return Ok(None);
    }
    let mut owned = report.clone();
    if !owned["result"].is_array() {
        owned["result"] = Value::Array(Vec::new());
    }
    if let Some(results) = owned["result"].as_array_mut() {
        for id in kept {
            results.push(serde_json::json!({ "reference": format!("Observation/{id}") }));
        }
    }
    Ok(Some(owned))
}

/// An Observation's code, to tell the lines of one text (which share it)
/// from tests of their own: its first coding's system and code, else its text.
fn code_of(observation: &Value) -> Option<String> {
    let code = &observation["code"];
    match code["coding"].as_array().and_then(|c| c.first()) {
        Some(c) => c["code"]
            .as_str()
            .map(|v| format!("{}|{v}", c["system"].as_str().unwrap_or_default())),
        None => code["text"].as_str().map(str::to_string),
    }
}

/// Whether a result with `code` is a line of the text a report version sends
/// whole: at least two of the version's results (`lines`, their codes) share
/// it. A correction sending one result alone (one organism of a culture,
/// OBX-4 telling them apart) is a partial correction, whatever its code.
fn is_line_of(lines: &[String], code: &str) -> bool {
    lines.iter().filter(|c| c.as_str() == code).count() >= 2
}

/// The codes of the stored Observations `ids` (those stored already).
fn named_codes<R: Rows>(rows: &mut R, ids: &[&str]) -> Result<Vec<String>, R::Error> {
    let mut codes = Vec::new();
    for id in ids {
        if let Some(content) = rows.current("Observation", id)?.and_then(|c| c.content) {
            let observation: Value = serde_json::from_str(&content)?;
            codes.extend(code_of(&observation));
        }
    }
    Ok(codes)
}

/// Whether a report is a text report sent whole: it carries its text as a
/// `text/plain` presented form (the shipped ORU mapping makes one when the
/// report's results are text, TX/FT: a radiology or histology report, whose
/// correction is the whole report again).
fn is_text_report(report: &Value) -> bool {
    report["presentedForm"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|f| {
            f["contentType"]
                .as_str()
                .is_some_and(|t| t.starts_with("text/plain"))
        })
}

/// A report made final (or corrected, amended, appended) that no longer names a
/// result its previous version named: that result, if it is still preliminary
/// (or registered), was withdrawn by the lab, and is written `cancelled` rather
/// than left beside the final results as if current (a preliminary critical
/// value). A result already final is not touched (a lab may send only the
/// results it corrects), but for a text report sent whole
/// ([`is_text_report`]): a line of its text (the code of lines it still has,
/// [`is_line_of`]) that its correction no longer has was retracted (`Conclusion:
/// metastatic disease.`), and is written `entered-in-error`; a test of its
/// own (a virology screen's HIV beside the corrected HBsAg) is left alone.
fn withdraw_dropped_results<R: Rows>(
    rows: &mut R,
    at: &At<'_>,
    previous: &Value,
    report: &Value,
) -> Result<(), R::Error> {
    let done = matches!(
        report["status"].as_str(),
        Some("final" | "corrected" | "amended" | "appended")
    );
    if !done {
        return Ok(());
    }
    let now = result_ids(report);
    let lines = if is_text_report(report) {
        named_codes(rows, &now)?
    } else {
        Vec::new()
    };
    for id in result_ids(previous) {
        if now.contains(&id) {
            continue;
        }
        let Some(current) = rows.current("Observation", id)? else {
            continue;
        };
        let Some(content) = &current.content else {
            continue;
        };
        let mut observation: Value = serde_json::from_str(content)?;
        let status = match observation["status"].as_str() {
            Some("preliminary" | "registered") => "cancelled",
            Some("final" | "corrected" | "amended")
                if code_of(&observation).is_some_and(|c| is_line_of(&lines, &c)) =>
            {
                "entered-in-error"
            }
            _ => continue,
        };
        observation["status"] = Value::String(status.into());
        let event_time = current.event_time.max(at.event_time);
        rewrite(
            rows,
            "Observation",
            id,
            &current,
            &observation,
            at.last_updated,
            event_time,
        )?;
    }
    Ok(())
}

/// What a stale Patient version says that the stored record would have kept
/// had they arrived in order, written into it: its GP where the record names
/// none ([`with_gp_from`]), its identifiers of assigners the record has none
/// of ([`with_other_assigners_kept`]). A new version, the stored event time
/// kept, its identifiers indexed; nothing when there is nothing to add.
fn fill_in_gp<R: Rows>(
    rows: &mut R,
    current: &Current,
    id: &str,
    stale: &Value,
    last_updated: &str,
) -> Result<(), R::Error> {
    let Some(content) = &current.content else {
        return Ok(());
    };
    let stored: Value = serde_json::from_str(content)?;
    let filled = with_gp_from(&stored, stale);
    let filled = with_other_assigners_kept(filled.as_ref().unwrap_or(&stored), stale).or(filled);
    // (its address and phones where the record has none and deleted none, or
    // its deletion of them where the record has none: as in order)
    let filled = with_contact_details_kept(filled.as_ref().unwrap_or(&stored), stale).or(filled);
    let Some(filled) = filled else {
        return Ok(());
    };
    rewrite(
        rows,
        "Patient",
        id,
        current,
        &filled,
        last_updated,
        current.event_time,
    )?;
    rows.index_identifiers(id, &plan::identifiers_of(&filled))
}

/// Writes `resource` as the next version of a record other than the entry's
/// own (one the entry retires, cancels, withdraws or completes).
fn rewrite<R: Rows>(
    rows: &mut R,
    resource_type: &str,
    id: &str,
    current: &Current,
    resource: &Value,
    last_updated: &str,
    event_time: Option<i64>,
) -> Result<(), R::Error> {
    let version = current.version + 1;
    let content = stamped(resource, version, last_updated)?;
    rows.write_version(&Version {
        resource_type,
        id,
        version,
        last_updated,
        event_time,
        content: Some(&content),
    })
}

/// SNOMED CT "no known allergy" and "no known drug allergy", as UK Core
/// records the statements.
const NO_KNOWN_ALLERGY: &str = "716186003";
const NO_KNOWN_DRUG_ALLERGY: &str = "409137002";

/// The "no known (drug) allergy" SNOMED CT code an AllergyIntolerance states,
/// if it is such a statement.
fn no_known_allergy_code(allergy: &Value) -> Option<&str> {
    allergy["code"]["coding"].as_array()?.iter().find_map(|c| {
        let code = c["code"].as_str()?;
        (c["system"] == "http://snomed.info/sct"
            && (code == NO_KNOWN_ALLERGY || code == NO_KNOWN_DRUG_ALLERGY))
            .then_some(code)
    })
}

fn clinical_status(allergy: &Value) -> Option<&str> {
    allergy["clinicalStatus"]["coding"][0]["code"].as_str()
}

/// An allergen recorded for a patient (an active AllergyIntolerance that is not
/// itself a "no known allergies" statement) withdraws the patient's active
/// "no known allergy" statement, and a drug allergy (category `medication`)
/// their "no known drug allergy": written `inactive` and `refuted`, rather than
/// left beside a penicillin anaphylaxis as if current. An allergy not active, or
/// refuted or entered in error, withdraws nothing.
fn withdraw_no_known_allergy<R: Rows>(
    rows: &mut R,
    at: &At<'_>,
    allergy: &Value,
    patients: &[String],
) -> Result<(), R::Error> {
    if no_known_allergy_code(allergy).is_some()
        || clinical_status(allergy).is_some_and(|s| s != "active")
        || matches!(
            allergy["verificationStatus"]["coding"][0]["code"].as_str(),
            Some("refuted" | "entered-in-error")
        )
    {
        return Ok(());
    }
    let drug = allergy["category"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c == "medication"));
    for patient in patients {
        for id in rows.linked_ids(patient, "AllergyIntolerance")? {
            if id == at.id {
                continue;
            }
            let Some(current) = rows.current("AllergyIntolerance", &id)? else {
                continue;
            };
            let Some(content) = &current.content else {
                continue;
            };
            let mut statement: Value = serde_json::from_str(content)?;
            let withdrawn = match no_known_allergy_code(&statement) {
                Some(NO_KNOWN_ALLERGY) => true,
                Some(_) => drug,
                None => false,
            };
            if !withdrawn || clinical_status(&statement) == Some("inactive") {
                continue;
            }
            statement["clinicalStatus"] = serde_json::json!({"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                "code": "inactive"
            }]});
            statement["verificationStatus"] = serde_json::json!({"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                "code": "refuted"
            }]});
            let event_time = current.event_time.max(at.event_time);
            rewrite(
                rows,
                "AllergyIntolerance",
                &id,
                &current,
                &statement,
                at.last_updated,
                event_time,
            )?;
        }
    }
    Ok(())
}

fn delete<R: Rows>(rows: &mut R, at: &At<'_>) -> Result<EntryResult, R::Error> {
    let Some(cur) = at.current.filter(|cur| cur.content.is_some()) else {
        if let Some(cur) = at.current {
            at.touch(rows, cur)?;
        }
        return Ok(EntryResult::AlreadyAbsent);
    };
    let version = cur.version + 1;
    rows.write_version(&at.version(version, None))?;
    rows.link_patients(at.resource_type, at.id, &[])?;
    if at.resource_type == "Patient" {
        rows.index_identifiers(at.id, &[])?;
    }
    Ok(EntryResult::Deleted { version })
}

/// The stored text of a new version: the resource with `meta.versionId` and
/// `meta.lastUpdated` set.
fn stamped(
    resource: &Value,
    version: i64,
    last_updated: &str,
) -> Result<String, serde_json::Error> {
    let mut stored = resource.clone();
    if let Value::Object(object) = &mut stored {
        let meta = object
            .entry("meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(meta) = meta {
            meta.insert("versionId".into(), Value::String(version.to_string()));
            meta.insert(
                "lastUpdated".into(),
                Value::String(last_updated.to_string()),
            );
        }
    }
    serde_json::to_string(&stored)
}
