//! Checks a transaction Bundle and turns it into a plan of upserts and
//! deletes, before anything touches the database. Pure: no I/O.
//!
//! Every entry is checked first, so a document with one bad entry is refused
//! as a whole. References equal to an entry's `fullUrl` are rewritten to that
//! entry's `Type/id`; an `urn:uuid:` reference that matches no entry is an
//! error (it could never be resolved later).

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::{EntryProblem, StoreError};
use crate::route::NHS_NUMBER_SYSTEM;

/// The checked document.
#[derive(Debug)]
pub(super) struct Plan {
    pub event_time: Option<jiff::Timestamp>,
    /// The HL7 v2 event the document records ([`event_of`]): `A01`, `A13`, ….
    pub event: Option<String>,
    pub entries: Vec<Planned>,
}

/// HL7 v2 events (table 0003) that admit or register a patient's visit: an
/// admission, a registration, a pre-admission, a change of a visit's class.
const ADMISSION_EVENTS: &[&str] = &["A01", "A04", "A05", "A06", "A07", "A14"];
const V2_EVENTS: &str = "http://terminology.hl7.org/CodeSystem/v2-0003";

/// Whether `event` admits or registers a visit ([`ADMISSION_EVENTS`]): an
/// admission sent again after a mistaken cancellation (A01 after A11) admits
/// the visit again, where an update (A08) still carrying the cancelled visit
/// does not bring it back.
pub(super) fn is_admission(event: Option<&str>) -> bool {
    event.is_some_and(|e| ADMISSION_EVENTS.contains(&e))
}

/// The HL7 v2 event `bundle` records: the first Provenance's `activity` code
/// under v2-0003 (the shipped mappings write MSH-9.2 there), upper case.
fn event_of(bundle: &Value) -> Option<String> {
    let entries = bundle.get("entry").and_then(Value::as_array);
    entries
        .into_iter()
        .flatten()
        .map(|entry| &entry["resource"])
        .filter(|r| r["resourceType"] == "Provenance")
        .flat_map(|r| r["activity"]["coding"].as_array().into_iter().flatten())
        .find(|c| c["system"] == V2_EVENTS)
        .and_then(|c| c["code"].as_str())
        .map(|code| code.trim().to_ascii_uppercase())
}

/// One checked entry.
#[derive(Debug)]
pub(super) struct Planned {
    pub resource_type: String,
    pub id: String,
    pub op: Op,
}

#[derive(Debug)]
pub(super) enum Op {
    Put {
        /// References rewritten; `meta.versionId` and `meta.lastUpdated`
        /// removed (the store sets them).
        resource: Value,
        /// Ids of the Patients this resource belongs to.
        patients: Vec<String>,
        /// (system, value) of a Patient's identifiers; system "" when absent.
        identifiers: Vec<(String, String)>,
        /// `request.ifNoneMatch = "*"`: create it only if it does not exist
        /// (a lab result's Patient must not replace the PAS's demographics).
        create_only: bool,
    },
    Delete,
}

/// An event time no later than `now`: a sender whose clock is wrong (an MSH-7 in
/// 2036) must not make its document newer than every correct one after it, so
/// that each later update of the record is skipped as stale. Taken as `now`, it
/// orders as what it is: the document that arrived then.
fn not_ahead_of(time: jiff::Timestamp, now: jiff::Timestamp) -> jiff::Timestamp {
    if time > now {
        tracing::warn!(
            ahead_secs = (time.as_second() - now.as_second()),
            "a document's event time is ahead of this clock; ordered as if it happened now"
        );
        now
    } else {
        time
    }
}

/// Checks `bundle` and plans its entries (see the module docs).
pub(super) fn plan(
    bundle: &Value,
    event_time: Option<jiff::Timestamp>,
) -> Result<Plan, StoreError> {
    let resource_type = bundle.get("resourceType").and_then(Value::as_str);
    if resource_type != Some("Bundle") {
        return Err(StoreError::NotABundle {
            found: describe(bundle.get("resourceType")),
        });
    }
    let bundle_type = bundle.get("type").and_then(Value::as_str);
    if bundle_type != Some("transaction") {
        return Err(StoreError::NotATransaction {
            found: describe(bundle.get("type")),
        });
    }
    let event_time = match event_time {
        Some(time) => Some(time),
        None => bundle_timestamp(bundle)?,
    }
    .map(|time| not_ahead_of(time, jiff::Timestamp::now()));
    let event = event_of(bundle);
    let entries = match bundle.get("entry") {
        None | Some(Value::Null) => {
            return Ok(Plan {
                event_time,
                event,
                entries: Vec::new(),
            })
        }
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(StoreError::EntriesNotArray),
    };

    // First pass: the shape of each entry, and the fullUrl → Type/id map.
    let mut checked = Vec::with_capacity(entries.len());
    let mut seen = HashSet::new();
    let mut full_urls: HashMap<&str, String> = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let invalid = |problem| StoreError::InvalidEntry { index, problem };
        let shape = check_entry(entry).map_err(invalid)?;
        let url = format!("{}/{}", shape.resource_type, shape.id);
        if !seen.insert(url.clone()) {
            return Err(invalid(EntryProblem::Duplicate {
                resource_type: shape.resource_type.clone(),
            }));
        }
        if let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) {
            if !full_url.is_empty() {
                full_urls.insert(full_url, url);
            }
        }
        checked.push(shape);
    }

    // Second pass: rewrite references and extract what the indexes need.
    let mut planned = Vec::with_capacity(checked.len());
    for (index, shape) in checked.into_iter().enumerate() {
        let op = match shape.resource {
            None => Op::Delete,
            Some(resource) => {
                let mut resource = resource.clone();
                rewrite_references(&mut resource, &full_urls)
                    .map_err(|problem| StoreError::InvalidEntry { index, problem })?;
                strip_store_meta(&mut resource);
                let (patients, unresolvable) =
                    patient_references(&shape.resource_type, &shape.id, &resource);
                if unresolvable {
                    return Err(StoreError::InvalidEntry {
                        index,
                        problem: EntryProblem::UnresolvablePatient,
                    });
                }
                let identifiers = if shape.resource_type == "Patient" {
                    identifiers_of(&resource)
                } else {
                    Vec::new()
                };
                Op::Put {
                    resource,
                    patients,
                    identifiers,
                    create_only: shape.create_only,
                }
            }
        };
        planned.push(Planned {
            resource_type: shape.resource_type,
            id: shape.id,
            op,
        });
    }
    Ok(Plan {
        event_time,
        event,
        entries: planned,
    })
}

/// An entry whose shape is right: a PUT with its resource, or a DELETE.
struct Shape<'a> {
    resource_type: String,
    id: String,
    /// `None` for DELETE.
    resource: Option<&'a Value>,
    /// A PUT with `ifNoneMatch: "*"`.
    create_only: bool,
}

fn check_entry(entry: &Value) -> Result<Shape<'_>, EntryProblem> {
    let entry = entry.as_object().ok_or(EntryProblem::NotAnObject)?;
    let request = entry.get("request");
    let method = request.and_then(|r| r.get("method"));
    let url = request
        .and_then(|r| r.get("url"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    match method.and_then(Value::as_str) {
        Some("PUT") => {
            let resource = entry
                .get("resource")
                .filter(|r| r.is_object())
                .ok_or(EntryProblem::MissingResource)?;
            let resource_type = resource.get("resourceType").and_then(Value::as_str);
            let resource_type = resource_type
                .filter(|t| is_resource_type(t))
                .ok_or_else(|| EntryProblem::InvalidResourceType {
                    found: describe(resource.get("resourceType")),
                })?;
            check_record_type(resource_type, resource)?;
            let id = resource.get("id").and_then(Value::as_str);
            let id = id
                .filter(|id| is_id(id))
                .ok_or_else(|| EntryProblem::InvalidId {
                    found: describe(resource.get("id")),
                })?;
            let expected = format!("{resource_type}/{id}");
            if url != expected {
                return Err(EntryProblem::UrlMismatch {
                    found: describe_text(url),
                    resource_type: resource_type.to_string(),
                });
            }
            // a value its element's FHIR type does not allow (a neighbour's
            // `period.start` of free text): `/fhir` would serve it as stored
            if let Some(invalid) = crate::mapping::fhir_elements::invalid_value(resource) {
                return Err(EntryProblem::InvalidValue {
                    path: invalid.path,
                    expected: invalid.expected,
                });
            }
            let create_only = match request.and_then(|r| r.get("ifNoneMatch")) {
                None | Some(Value::Null) => false,
                Some(Value::String(s)) if s == "*" => true,
                Some(other) => {
                    return Err(EntryProblem::UnsupportedMethod {
                        method: format!("PUT with ifNoneMatch {}", describe(Some(other))),
                    })
                }
            };
            Ok(Shape {
                resource_type: resource_type.to_string(),
                id: id.to_string(),
                resource: Some(resource),
                create_only,
            })
        }
        Some("DELETE") => {
            let (resource_type, id) = split_url(url).ok_or_else(|| EntryProblem::InvalidUrl {
                found: describe_text(url),
            })?;
            Ok(Shape {
                resource_type: resource_type.to_string(),
                id: id.to_string(),
                resource: None,
                create_only: false,
            })
        }
        _ => Err(EntryProblem::UnsupportedMethod {
            method: describe(method),
        }),
    }
}

/// The FHIR R4 types the store keeps: records about patients and their care,
/// and who and where gave it. Not a server's own resources (a Bundle inside a
/// Bundle, an AuditEvent, a MessageHeader), identity administration (Person,
/// Linkage), definitions and knowledge (Questionnaire, Library, PlanDefinition,
/// ValueSet, StructureDefinition, …) or bare content (Binary): a neighbour
/// contributes records; it does not write the server's audit, its identity
/// links or its definitions. Sorted.
const RECORDS: &[&str] = &[
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "Basic",
    "BodyStructure",
    "CarePlan",
    "CareTeam",
    "ClinicalImpression",
    "Communication",
    "CommunicationRequest",
    "Composition",
    "Condition",
    "Consent",
    "Coverage",
    "DetectedIssue",
    "Device",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "Encounter",
    "EpisodeOfCare",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "List",
    "Location",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationRequest",
    "MedicationStatement",
    "MolecularSequence",
    "NutritionOrder",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "RiskAssessment",
    "ServiceRequest",
    "Specimen",
    "Task",
    "VisionPrescription",
];

/// A resource the store keeps: one of [`RECORDS`], and every resource it
/// contains (`contained`) one too, containing none itself.
fn check_record_type(resource_type: &str, resource: &Value) -> Result<(), EntryProblem> {
    if RECORDS.binary_search(&resource_type).is_err() {
        return Err(EntryProblem::NotARecordType {
            found: resource_type.to_string(),
        });
    }
    for inner in resource["contained"].as_array().into_iter().flatten() {
        let t = inner["resourceType"].as_str().unwrap_or_default();
        if !is_resource_type(t) {
            return Err(EntryProblem::InvalidResourceType {
                found: format!("{} (contained)", describe(inner.get("resourceType"))),
            });
        }
        if RECORDS.binary_search(&t).is_err() || inner.get("contained").is_some() {
            return Err(EntryProblem::NotARecordType {
                found: format!("{t} (contained)"),
            });
        }
    }
    Ok(())
}

/// `Type/id` → (Type, id) when both are valid.
fn split_url(url: &str) -> Option<(&str, &str)> {
    let (resource_type, id) = url.split_once('/')?;
    (is_resource_type(resource_type) && is_id(id)).then_some((resource_type, id))
}

/// A FHIR R4 resource type ([`crate::fhir_types`]).
pub fn is_resource_type(s: &str) -> bool {
    crate::fhir_types::is_r4_resource_type(s)
}

/// A FHIR id: 1-64 of `A-Z a-z 0-9 - .`.
pub fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A short description of a JSON value for error messages.
/// What a value is, for an error: a word of FHIR's own quoted (a resource
/// type, in any case; a Bundle type; an HTTP method), anything else by its
/// shape alone, never its text, which may be patient data.
fn describe(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "(missing)".to_string(),
        Some(Value::String(s)) => describe_text(s),
        Some(Value::Bool(_)) => "a boolean".to_string(),
        Some(Value::Number(_)) => "a number".to_string(),
        Some(Value::Array(_)) => "an array".to_string(),
        Some(Value::Object(_)) => "an object".to_string(),
    }
}

fn describe_text(s: &str) -> String {
    const WORDS: &[&str] = &[
        "transaction",
        "batch",
        "document",
        "message",
        "collection",
        "searchset",
        "history",
        "transaction-response",
        "batch-response",
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "DELETE",
        "PATCH",
    ];
    let known = WORDS.contains(&s)
        || crate::fhir_types::R4_RESOURCE_TYPES
            .iter()
            .any(|t| t.eq_ignore_ascii_case(s));
    if known {
        format!("{s:?}")
    } else if s.is_empty() {
        "empty".to_string()
    } else {
        format!("a text of {} characters", s.chars().count())
    }
}

fn bundle_timestamp(bundle: &Value) -> Result<Option<jiff::Timestamp>, StoreError> {
    match bundle.get("timestamp") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => {
            text.parse::<jiff::Timestamp>()
                .map(Some)
                .map_err(|_| StoreError::InvalidTimestamp {
                    found: describe(Some(&Value::String(text.clone()))),
                })
        }
        Some(other) => Err(StoreError::InvalidTimestamp {
            found: describe(Some(other)),
        }),
    }
}

/// Rewrites every `reference` equal to a fullUrl of the Bundle to `Type/id`.
fn rewrite_references(
    value: &mut Value,
    full_urls: &HashMap<&str, String>,
) -> Result<(), EntryProblem> {
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                match item {
                    Value::String(reference) if key == "reference" => {
                        if let Some(target) = full_urls.get(reference.as_str()) {
                            *reference = target.clone();
                        } else if reference.starts_with("urn:uuid:") {
                            return Err(EntryProblem::UnresolvedReference);
                        }
                    }
                    _ => rewrite_references(item, full_urls)?,
                }
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter_mut()
            .try_for_each(|item| rewrite_references(item, full_urls)),
        _ => Ok(()),
    }
}

/// Removes `meta.versionId` and `meta.lastUpdated` (and `meta` if nothing
/// else is left in it): they belong to the store.
fn strip_store_meta(resource: &mut Value) {
    strip_meta(resource, &["versionId", "lastUpdated"]);
}

/// Removes `keys` from `meta` (and `meta` if nothing else is left in it).
fn strip_meta(resource: &mut Value, keys: &[&str]) {
    let Some(object) = resource.as_object_mut() else {
        return;
    };
    let now_empty = match object.get_mut("meta") {
        Some(Value::Object(meta)) => {
            keys.iter().for_each(|k| {
                meta.remove(*k);
            });
            meta.is_empty()
        }
        _ => false,
    };
    if now_empty {
        object.remove("meta");
    }
}

/// The resource without the bookkeeping in its `meta` (`versionId`,
/// `lastUpdated`, `source`: the store's or the sender's), for comparing
/// content across versions: a change of tags, security labels or profiles
/// alone is a change (a tag that says a discharge was cancelled).
pub(super) fn without_meta(resource: &Value) -> Value {
    let mut compared = resource.clone();
    strip_meta(&mut compared, &["versionId", "lastUpdated", "source"]);
    compared
}

/// Elements that tie a resource to its patient: `subject` (Encounter,
/// Observation, DiagnosticReport, Condition, …), `patient` (AllergyIntolerance,
/// RelatedPerson, …) and `target` (Provenance).
const PATIENT_ELEMENTS: &[&str] = &["subject", "patient", "target"];

/// Ids of the Patients `resource` belongs to, without duplicates.
pub(super) fn patients_of(resource_type: &str, id: &str, resource: &Value) -> Vec<String> {
    patient_references(resource_type, id, resource).0
}

/// The Patients `resource` belongs to ([`patients_of`]), and whether it
/// names one the store cannot resolve ([`PatientRef::Unresolvable`]).
fn patient_references(resource_type: &str, id: &str, resource: &Value) -> (Vec<String>, bool) {
    if resource_type == "Patient" {
        return (vec![id.to_string()], false);
    }
    let mut patients: Vec<String> = Vec::new();
    let mut unresolvable = false;
    for element in PATIENT_ELEMENTS {
        let references: Vec<&Value> = match resource.get(*element) {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(item @ Value::Object(_)) => vec![item],
            _ => Vec::new(),
        };
        for reference in references {
            let found = match reference.get("reference").and_then(Value::as_str) {
                Some(text) => patient_reference(text),
                // a Patient named by its identifier alone (a logical
                // reference): nothing here to file it under
                None if *element == "patient" || reference["type"] == "Patient" => {
                    PatientRef::Unresolvable
                }
                None => PatientRef::Other,
            };
            match found {
                PatientRef::Id(patient) => {
                    if !patients.iter().any(|p| p == patient) {
                        patients.push(patient.to_string());
                    }
                }
                PatientRef::Unresolvable => unresolvable = true,
                PatientRef::Other => {}
            }
        }
    }
    (patients, unresolvable)
}

/// What a reference's text says of a Patient.
#[derive(Debug, PartialEq)]
enum PatientRef<'a> {
    /// `Patient/<id>`, also versioned (`/_history/<v>`) or absolute
    /// (`https://…/fhir/Patient/<id>`): the Patient with that id here.
    Id(&'a str),
    /// A Patient this store cannot resolve: a conditional reference
    /// (`Patient?identifier=…`), another spelling of the type (`patient/…`),
    /// an id that is no FHIR id.
    Unresolvable,
    /// Not a Patient (a Group, a Location, a contained `#id`).
    Other,
}

fn patient_reference(text: &str) -> PatientRef<'_> {
    if text.starts_with('#') {
        return PatientRef::Other;
    }
    // `[base/]Patient/<id>[/_history/<version>]`, nothing else around it
    let segments: Vec<&str> = text.split('/').collect();
    let (id, tail) = match segments.as_slice() {
        [.., "Patient", id] => (Some(*id), 2),
        [.., "Patient", id, "_history", version]
            if !version.is_empty()
                && version
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') =>
        {
            (Some(*id), 4)
        }
        _ => (None, 0),
    };
    // relative (nothing before `Patient`), or absolute with no empty segment
    let base_ok = segments.len() == tail
        || text
            .split_once("://")
            .is_some_and(|(_, rest)| rest.split('/').all(|s| !s.is_empty()));
    match id {
        Some(id) if is_id(id) && base_ok => PatientRef::Id(id),
        // anything else with a Patient segment (a conditional `Patient?…`,
        // `patient/`, a trailing `/`, `Patient//X`, ` Patient/X`, an
        // operation): a Patient, but none this store can tell
        _ if text
            .split(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .any(|segment| segment.eq_ignore_ascii_case("Patient")) =>
        {
            PatientRef::Unresolvable
        }
        _ => PatientRef::Other,
    }
}

/// (system, value) of every Patient identifier with a value.
pub(super) fn identifiers_of(resource: &Value) -> Vec<(String, String)> {
    let mut identifiers: Vec<(String, String)> = Vec::new();
    let Some(Value::Array(items)) = resource.get("identifier") else {
        return identifiers;
    };
    for item in items {
        let Some(value) = item.get("value").and_then(Value::as_str) else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        let system = item.get("system").and_then(Value::as_str).unwrap_or("");
        let pair = (system.to_string(), value.to_string());
        if !identifiers.contains(&pair) {
            identifiers.push(pair);
        }
        // and as the NHS number it is, so a search by the number, a
        // refusal and a retirement find it however it was written
        if let Some(digits) = nhs_number_of(system, value) {
            let canonical = (NHS_NUMBER_SYSTEM.to_string(), digits);
            if !identifiers.contains(&canonical) {
                identifiers.push(canonical);
            }
        }
    }
    identifiers
}

/// The NHS numbers among `identifiers` ([`nhs_number_of`]), sorted, each once.
pub(super) fn nhs_numbers(identifiers: &[(String, String)]) -> Vec<String> {
    let mut numbers: Vec<String> = identifiers
        .iter()
        .filter_map(|(system, value)| nhs_number_of(system, value))
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    numbers
}

/// The ten digits of an identifier that is an NHS number however a sender
/// wrote it: the NHS number system (`https://fhir.nhs.uk/Id/nhs-number`,
/// also with a trailing `/`, surrounding spaces or another letter case) and
/// a value that is ten digits once spaces and dashes are taken out
/// (`943 476 5919`, `943-476-5919`). `None` for every other identifier. The
/// check digit is not looked at: a number is the same number either way.
pub fn nhs_number_of(system: &str, value: &str) -> Option<String> {
    let system = system.trim();
    let system = system.strip_suffix('/').unwrap_or(system);
    if !system.eq_ignore_ascii_case(NHS_NUMBER_SYSTEM) {
        return None;
    }
    let mut digits = String::with_capacity(10);
    for c in value.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else if !(c.is_whitespace() || c == '-') {
            return None;
        }
    }
    (digits.len() == 10).then_some(digits)
}

#[cfg(test)]
mod record_type_tests {
    use super::*;

    #[test]
    fn patient_references_are_read_in_every_shape() {
        use PatientRef::*;
        for (text, expected) in [
            ("Patient/p1", Id("p1")),
            ("Patient/p1/_history/3", Id("p1")),
            ("https://x.nhs.uk/fhir/Patient/p1", Id("p1")),
            ("https://x.nhs.uk/fhir/Patient/p1/_history/3", Id("p1")),
            ("Patient?identifier=a|b", Unresolvable),
            ("https://x.nhs.uk/fhir/Patient?identifier=a|b", Unresolvable),
            ("patient/p1", Unresolvable),
            ("Patient/not an id", Unresolvable),
            ("Group/g1", Other),
            ("Location/l1/_history/1", Other),
            ("#contained", Other),
            ("Patient", Unresolvable),
            ("Patient/p1/", Unresolvable),
            ("Patient//p1", Unresolvable),
            (" Patient/p1", Unresolvable),
            ("Patient/p1/_history", Unresolvable),
            ("Patient/p1/_history/1/x", Unresolvable),
            ("Patient/p1/$everything", Unresolvable),
            ("Patient/p1?x=1", Unresolvable),
            ("https://x.nhs.uk/fhir/Patient/p1/", Unresolvable),
            ("https://x.nhs.uk//Patient/p1", Unresolvable),
            ("/Patient/p1", Unresolvable),
            ("Location/patient-lounge", Other),
        ] {
            assert_eq!(patient_reference(text), expected, "{text}");
        }
    }

    #[test]
    fn the_record_types_are_sorted_fhir_r4_types() {
        assert!(RECORDS.windows(2).all(|w| w[0] < w[1]));
        assert!(RECORDS
            .iter()
            .all(|t| crate::fhir_types::is_r4_resource_type(t)));
    }
}
