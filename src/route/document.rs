//! The facts a route condition can read: named fields of the document (the FHIR R4
//! Bundle a mapping produced) and of the message header ([`super::RouteInput`]).
//!
//! Fields are a fixed list, not a path language: each one says where it looks in
//! the Bundle, so a route reads the same whichever mapping built the document.
//! A field is a list of strings; a missing element gives no value, never an error.
//!
//! # Invariants
//! - Reading a field never panics, whatever shape the JSON has.
//! - Values are returned as written in the document; normalisation for comparison
//!   happens in `condition.rs`.

use serde_json::Value as Json;

use super::RouteInput;

/// `https://fhir.nhs.uk/Id/nhs-number`
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
/// `https://fhir.nhs.uk/Id/ods-organization-code`
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
/// GP identifiers: the GMP (prescriber) and GMC (doctor) numbers.
pub const GP_SYSTEMS: &[&str] = &[
    "https://fhir.hl7.org.uk/Id/gmp-number",
    "https://fhir.hl7.org.uk/Id/gmc-number",
];

/// A field a condition can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    /// Every Patient's `identifier` value with the NHS number system.
    PatientNhsNumber,
    /// The ODS code of every Patient's registered GP practice:
    /// `generalPractitioner.identifier` with the ODS system, or the ODS identifier
    /// of the Organization in the Bundle that `generalPractitioner.reference` names.
    PatientGpPractice,
    /// The GMP/GMC number of every Patient's GP, found the same way.
    PatientGp,
    /// Every Patient's `address.postalCode`.
    PatientPostcode,
    /// The `resourceType` of every entry of the Bundle.
    DocumentResourceTypes,
    /// `CODE^TRIGGER`, e.g. `ADT^A01`.
    MessageType,
    MessageCode,
    MessageTrigger,
    /// MSH-3 (namespace id).
    MessageSendingApplication,
    /// MSH-4 (namespace id).
    MessageSendingFacility,
    /// The id of the listener or source the message came in through.
    MessageOrigin,
}

const FIELDS: &[(Field, &str)] = &[
    (Field::PatientNhsNumber, "patient.nhs_number"),
    (Field::PatientGpPractice, "patient.gp_practice"),
    (Field::PatientGp, "patient.gp"),
    (Field::PatientPostcode, "patient.postcode"),
    (Field::DocumentResourceTypes, "document.resource_types"),
    (Field::MessageType, "message.type"),
    (Field::MessageCode, "message.code"),
    (Field::MessageTrigger, "message.trigger"),
    (
        Field::MessageSendingApplication,
        "message.sending_application",
    ),
    (Field::MessageSendingFacility, "message.sending_facility"),
    (Field::MessageOrigin, "message.origin"),
];

impl Field {
    pub fn from_name(name: &str) -> Option<Field> {
        FIELDS.iter().find(|(_, n)| *n == name).map(|(f, _)| *f)
    }

    #[cfg(test)]
    pub fn name(self) -> &'static str {
        FIELDS
            .iter()
            .find(|(f, _)| *f == self)
            .map_or("?", |(_, n)| n)
    }

    /// Every field name, quoted, for "expected one of" messages.
    pub fn list() -> String {
        FIELDS
            .iter()
            .map(|(_, n)| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What routing and the delivery queue read of a document given as JSON text:
/// the same JSON with only `resourceType`, `id`, `fullUrl`, `identifier`,
/// `address.postalCode`, `generalPractitioner`, `active` and `meta.tag`
/// (system and code) kept (of the Bundle, its entries
/// and their resources). Reading only those is several times cheaper than parsing
/// the whole Bundle into a `Json` tree; every field of [`Field`] reads the same
/// values from it. Text that does not have that shape is parsed whole; text that
/// is not JSON gives `Json::Null`.
pub fn routing_view(text: &str) -> Json {
    match serde_json::from_str::<view::Resource<'_>>(text) {
        Ok(r) => r.into_json(),
        Err(_) => serde_json::from_str(text).unwrap_or(Json::Null),
    }
}

/// [`routing_view`] of a mapped document, reading only the resources routing looks
/// into: the Patients, and the resources their `generalPractitioner` references
/// name. Every other entry is known by its type (from the mapping, which wrote
/// it) without reading its text.
pub fn routing_view_of(output: &crate::mapping::MapOutput) -> Json {
    let read = |e: &crate::mapping::MappedEntry| {
        output
            .document
            .get(e.resource.clone())
            .map_or(Json::Null, routing_view)
    };
    let mut resources: Vec<Option<Json>> = output
        .entries
        .iter()
        .map(|e| (e.resource_type == "Patient").then(|| read(e)))
        .collect();
    // the resources a Patient's GP reference names, by fullUrl or Type/id
    let named: Vec<String> = resources
        .iter()
        .flatten()
        .flat_map(|p| array(p, "generalPractitioner"))
        .filter_map(|gp| str_at(gp, "reference"))
        .map(str::to_string)
        .collect();
    for (e, slot) in output.entries.iter().zip(resources.iter_mut()) {
        if slot.is_none()
            && named.iter().any(|r| {
                r.strip_prefix("urn:uuid:") == Some(e.id.as_str())
                    || r.strip_prefix(e.resource_type.as_str())
                        .and_then(|rest| rest.strip_prefix('/'))
                        == Some(e.id.as_str())
            })
        {
            *slot = Some(read(e));
        }
    }
    let entries = output
        .entries
        .iter()
        .zip(resources)
        .map(|(e, resource)| {
            let mut entry = serde_json::Map::new();
            match resource {
                Some(resource) => {
                    entry.insert("fullUrl".into(), Json::String(format!("urn:uuid:{}", e.id)));
                    entry.insert("resource".into(), resource);
                }
                // nothing names it and routing reads nothing of it but its type
                None => {
                    let mut r = serde_json::Map::new();
                    r.insert("resourceType".into(), Json::String(e.resource_type.clone()));
                    entry.insert("resource".into(), Json::Object(r));
                }
            }
            Json::Object(entry)
        })
        .collect();
    serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": Json::Array(entries)})
}

/// The typed subset [`routing_view`] reads (everything else is skipped unread).
mod view {
    use std::borrow::Cow;

    use serde::Deserialize;
    use serde_json::{Map, Value as Json};

    #[derive(Deserialize)]
    pub struct Resource<'a> {
        #[serde(rename = "resourceType", borrow, default)]
        resource_type: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        id: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        identifier: Option<Vec<Identifier<'a>>>,
        #[serde(borrow, default)]
        address: Option<Vec<Address<'a>>>,
        #[serde(rename = "generalPractitioner", borrow, default)]
        general_practitioner: Option<Vec<Reference<'a>>>,
        /// A Patient's: a merged record is `false` (the pipeline's
        /// registrations tell a merge's survivor from a second patient).
        #[serde(default)]
        active: Option<bool>,
        /// Its tags' systems and codes: a Patient whose sender deleted the
        /// GP registration says so in one
        /// (`crate::fhir_types::GP_REGISTRATION_DELETED`).
        #[serde(borrow, default)]
        meta: Option<Meta<'a>>,
        #[serde(borrow, default)]
        entry: Option<Vec<Entry<'a>>>,
    }

    #[derive(Deserialize)]
    pub struct Meta<'a> {
        #[serde(borrow, default)]
        tag: Option<Vec<Tag<'a>>>,
    }

    #[derive(Deserialize)]
    pub struct Tag<'a> {
        #[serde(borrow, default)]
        system: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        code: Option<Cow<'a, str>>,
    }

    #[derive(Deserialize)]
    pub struct Entry<'a> {
        #[serde(rename = "fullUrl", borrow, default)]
        full_url: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        resource: Option<Resource<'a>>,
    }

    #[derive(Deserialize)]
    pub struct Identifier<'a> {
        #[serde(borrow, default)]
        system: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        value: Option<Cow<'a, str>>,
        /// Its type's codes: an identifier typed `NH` is an NHS number the
        /// objections register is asked about (`pipeline::nhs_numbers`).
        #[serde(rename = "type", borrow, default)]
        kind: Option<Kind<'a>>,
    }

    #[derive(Deserialize)]
    pub struct Kind<'a> {
        #[serde(borrow, default)]
        coding: Option<Vec<Code<'a>>>,
    }

    #[derive(Deserialize)]
    pub struct Code<'a> {
        #[serde(borrow, default)]
        code: Option<Cow<'a, str>>,
    }

    #[derive(Deserialize)]
    pub struct Address<'a> {
        #[serde(rename = "postalCode", borrow, default)]
        postal_code: Option<Cow<'a, str>>,
    }

    #[derive(Deserialize)]
    pub struct Reference<'a> {
        #[serde(borrow, default)]
        reference: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        identifier: Option<Identifier<'a>>,
    }

    fn put(m: &mut Map<String, Json>, key: &str, v: Option<Cow<'_, str>>) {
        if let Some(v) = v {
            m.insert(key.to_string(), Json::String(v.into_owned()));
        }
    }

    impl Identifier<'_> {
        fn into_json(self) -> Json {
            let mut m = Map::new();
            put(&mut m, "system", self.system);
            put(&mut m, "value", self.value);
            if let Some(codes) = self.kind.and_then(|k| k.coding) {
                let codes = codes
                    .into_iter()
                    .map(|c| {
                        let mut o = Map::new();
                        put(&mut o, "code", c.code);
                        Json::Object(o)
                    })
                    .collect();
                let mut kind = Map::new();
                kind.insert("coding".into(), Json::Array(codes));
                m.insert("type".into(), Json::Object(kind));
            }
            Json::Object(m)
        }
    }

    impl Resource<'_> {
        pub fn into_json(self) -> Json {
            let mut m = Map::new();
            put(&mut m, "resourceType", self.resource_type);
            put(&mut m, "id", self.id);
            if let Some(ids) = self.identifier {
                let ids = ids.into_iter().map(Identifier::into_json).collect();
                m.insert("identifier".into(), Json::Array(ids));
            }
            if let Some(addresses) = self.address {
                let addresses = addresses
                    .into_iter()
                    .map(|a| {
                        let mut o = Map::new();
                        put(&mut o, "postalCode", a.postal_code);
                        Json::Object(o)
                    })
                    .collect();
                m.insert("address".into(), Json::Array(addresses));
            }
            if let Some(active) = self.active {
                m.insert("active".into(), Json::Bool(active));
            }
            if let Some(tags) = self.meta.and_then(|m| m.tag) {
                let tags = tags
                    .into_iter()
                    .map(|t| {
                        let mut o = Map::new();
                        put(&mut o, "system", t.system);
                        put(&mut o, "code", t.code);
                        Json::Object(o)
                    })
                    .collect();
                let mut meta = Map::new();
                meta.insert("tag".into(), Json::Array(tags));
                m.insert("meta".into(), Json::Object(meta));
            }
            if let Some(gps) = self.general_practitioner {
                let gps = gps
                    .into_iter()
                    .map(|g| {
                        let mut o = Map::new();
                        put(&mut o, "reference", g.reference);
                        if let Some(i) = g.identifier {
                            o.insert("identifier".into(), i.into_json());
                        }
                        Json::Object(o)
                    })
                    .collect();
                m.insert("generalPractitioner".into(), Json::Array(gps));
            }
            if let Some(entries) = self.entry {
                let entries = entries
                    .into_iter()
                    .map(|e| {
                        let mut o = Map::new();
                        put(&mut o, "fullUrl", e.full_url);
                        if let Some(r) = e.resource {
                            o.insert("resource".into(), r.into_json());
                        }
                        Json::Object(o)
                    })
                    .collect();
                m.insert("entry".into(), Json::Array(entries));
            }
            Json::Object(m)
        }
    }
}

/// What a condition is evaluated against: the message header and, once mapped,
/// the document (`Json::Null` before mapping).
pub(crate) struct Facts<'a> {
    pub input: &'a RouteInput<'a>,
    pub document: Document<'a>,
    /// The tables a `lookup` found no entry in for a value it was given (a
    /// practice missing from `practice_ics`), each once: said to the
    /// operator, who can add it (the value itself is not kept: a patient's
    /// practice is not for the log).
    pub misses: std::cell::RefCell<Vec<String>>,
}

/// The document a condition reads: already parsed, or JSON text parsed the first
/// time a condition names a document field (a route set whose conditions only
/// read the message header never parses it).
pub(crate) enum Document<'a> {
    Parsed(&'a Json),
    Text(&'a str, std::cell::OnceCell<Json>),
}

impl<'a> Document<'a> {
    pub fn text(text: &'a str) -> Document<'a> {
        Document::Text(text, std::cell::OnceCell::new())
    }

    /// The parsed document (text: its [`routing_view`], all a condition reads);
    /// text that is not JSON reads as `Json::Null` (no values).
    fn get(&self) -> &Json {
        match self {
            Document::Parsed(j) => j,
            Document::Text(text, parsed) => parsed.get_or_init(|| routing_view(text)),
        }
    }
}

impl Facts<'_> {
    pub fn values(&self, field: Field) -> Vec<String> {
        let one = |s: &str| vec![s.to_string()];
        match field {
            Field::MessageType => vec![format!(
                "{}^{}",
                self.input.message_code, self.input.trigger
            )],
            Field::MessageCode => one(self.input.message_code),
            Field::MessageTrigger => one(self.input.trigger),
            Field::MessageSendingApplication => one(self.input.sending_application),
            Field::MessageSendingFacility => one(self.input.sending_facility),
            Field::MessageOrigin => self.input.origin.id().map(one).unwrap_or_default(),
            Field::DocumentResourceTypes => resources(self.document.get())
                .filter_map(|(_, r)| str_at(r, "resourceType"))
                .map(str::to_string)
                .collect(),
            Field::PatientNhsNumber => patients(self.document.get())
                .flat_map(|p| identifiers(p, &[NHS_NUMBER_SYSTEM]))
                .collect(),
            Field::PatientPostcode => patients(self.document.get())
                .flat_map(|p| array(p, "address"))
                .filter_map(|a| str_at(a, "postalCode"))
                .map(str::to_string)
                .collect(),
            Field::PatientGpPractice => self.gp_identifiers(&[ODS_SYSTEM]),
            Field::PatientGp => self.gp_identifiers(GP_SYSTEMS),
        }
    }

    /// Identifier values with one of `systems` of every Patient's
    /// `generalPractitioner`: inline (`identifier`) or through a reference to a
    /// resource in the Bundle.
    fn gp_identifiers(&self, systems: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for patient in patients(self.document.get()) {
            for gp in array(patient, "generalPractitioner") {
                if let Some(id) = gp.get("identifier") {
                    if let Some(v) = matching_value(id, systems) {
                        out.push(v.to_string());
                    }
                }
                if let Some(reference) = str_at(gp, "reference") {
                    if let Some(target) = resolve(self.document.get(), reference) {
                        out.extend(identifiers(target, systems));
                    }
                }
            }
        }
        out
    }
}

/// A Patient of a document, for what routing remembers of it: its keys (its
/// id, then `identifier|<system>|<value>` for each identifier) and the GP
/// registration it states: the identifiers of its `generalPractitioner`
/// (inline, or of the resource in the Bundle a reference names) under the ODS
/// or GP systems, as FHIR Identifiers (empty: it states none).
#[derive(Debug, Clone, PartialEq)]
pub struct PatientRegistration {
    pub keys: Vec<String>,
    pub stated: Vec<Json>,
    /// Not `active: false` (a merged record is).
    pub active: bool,
    /// Its sender deleted the GP registration
    /// ([`crate::fhir_types::gp_registration_deleted`]): what is remembered
    /// is forgotten, not read.
    pub deleted: bool,
    /// Its sender deleted the GP alone ([`crate::fhir_types::gp_deleted`]):
    /// the GP remembered is forgotten, the practice read as before.
    pub gp_deleted: bool,
}

/// Whether an identifier tells one patient from every other, for routing to
/// remember by: not a local copy of an NHS number that failed its check
/// (`…:nh`, which senders fill with `0000000000` for "not known"), nor a
/// placeholder (`transform::is_placeholder`).
fn identifies(system: &str, value: &str) -> bool {
    let lower = system.to_ascii_lowercase();
    let nhs_copy = system != NHS_NUMBER_SYSTEM
        && (lower.ends_with(":nh") || lower.ends_with(":nhs") || lower.contains(":nhs:"));
    !nhs_copy && !crate::mapping::transform::is_placeholder(value)
}

/// Each Patient of `document`, in order (see [`PatientRegistration`]).
pub fn patient_registrations(document: &Json) -> Vec<PatientRegistration> {
    let mut out = Vec::new();
    for patient in patients(document) {
        let mut keys: Vec<String> = Vec::new();
        if let Some(id) = str_at(patient, "id").filter(|id| !id.trim().is_empty()) {
            keys.push(id.to_string());
        }
        for identifier in array(patient, "identifier") {
            if let (Some(system), Some(value)) =
                (str_at(identifier, "system"), str_at(identifier, "value"))
            {
                let (system, value) = (system.trim(), value.trim());
                if !system.is_empty() && !value.is_empty() && identifies(system, value) {
                    let key = format!("identifier|{system}|{value}");
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
            }
        }
        let mut stated: Vec<Json> = Vec::new();
        let mut keep = |identifier: &Json| {
            let Some(system) = str_at(identifier, "system") else {
                return;
            };
            if system != ODS_SYSTEM && !GP_SYSTEMS.contains(&system) {
                return;
            }
            let Some(value) = str_at(identifier, "value").filter(|v| !v.trim().is_empty()) else {
                return;
            };
            let id = serde_json::json!({ "system": system, "value": value });
            if !stated.contains(&id) {
                stated.push(id);
            }
        };
        for gp in array(patient, "generalPractitioner") {
            if let Some(identifier) = gp.get("identifier") {
                keep(identifier);
            }
            if let Some(target) = str_at(gp, "reference").and_then(|r| resolve(document, r)) {
                array(target, "identifier").for_each(&mut keep);
            }
        }
        let active = patient.get("active").and_then(Json::as_bool) != Some(false);
        out.push(PatientRegistration {
            keys,
            stated,
            active,
            deleted: crate::fhir_types::gp_registration_deleted(patient),
            gp_deleted: crate::fhir_types::gp_deleted(patient),
        });
    }
    out
}

/// A registration said in part over one known: the practice (ODS) as
/// `stated` gives it, else as `known` does, and the GP (GMP/GMC) alike. A
/// message that names the GP alone keeps the known practice.
pub fn merge_registration(stated: &[Json], known: &[Json]) -> Vec<Json> {
    let is_practice = |i: &&Json| str_at(i, "system") == Some(ODS_SYSTEM);
    let is_gp = |i: &&Json| str_at(i, "system").is_some_and(|s| GP_SYSTEMS.contains(&s));
    let pick = |class: &dyn Fn(&&Json) -> bool| -> Vec<Json> {
        let said: Vec<Json> = stated.iter().filter(class).cloned().collect();
        if said.is_empty() {
            known.iter().filter(class).cloned().collect()
        } else {
            said
        }
    };
    let mut out = pick(&is_practice);
    out.extend(pick(&is_gp));
    out
}

/// For a document about several live patients (an A40 of two merges: not
/// counting merged records, `active: false`), one view per live patient,
/// each with that patient as its only Patient; `None` for a document about
/// one patient or none. A destination that one patient's record must not
/// reach (another region) is chosen only when the routes choose it for
/// every one of them.
pub fn one_patient_views(document: &Json) -> Option<Vec<Json>> {
    let is_patient = |r: &Json| str_at(r, "resourceType") == Some("Patient");
    let live = |r: &Json| is_patient(r) && r.get("active").and_then(Json::as_bool) != Some(false);
    let entries = document.get("entry").and_then(Json::as_array)?;
    let live_at: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.get("resource").is_some_and(live))
        .map(|(i, _)| i)
        .collect();
    if live_at.len() < 2 {
        return None;
    }
    Some(
        live_at
            .iter()
            .map(|&keep| {
                let mut view = document.clone();
                if let Some(entries) = view.get_mut("entry").and_then(Json::as_array_mut) {
                    let mut i = 0;
                    entries.retain(|e| {
                        let drop = i != keep && e.get("resource").is_some_and(is_patient);
                        i += 1;
                        !drop
                    });
                }
                view
            })
            .collect(),
    )
}

/// Writes `identifiers` as the `generalPractitioner` of the first Patient of
/// `document` (a routing view, for the routes' conditions to read).
pub fn set_first_patient_registration(document: &mut Json, identifiers: &[Json]) {
    let gps: Vec<Json> = identifiers
        .iter()
        .map(|i| serde_json::json!({ "identifier": i }))
        .collect();
    let is_patient = |r: &Json| str_at(r, "resourceType") == Some("Patient");
    let target = match document.get_mut("entry").and_then(Json::as_array_mut) {
        Some(entries) => entries
            .iter_mut()
            .filter_map(|e| e.get_mut("resource"))
            .find(|r| is_patient(r)),
        None => Some(document).filter(|d| is_patient(d)),
    };
    if let Some(patient) = target.and_then(Json::as_object_mut) {
        patient.insert("generalPractitioner".into(), Json::Array(gps));
    }
}

/// `(fullUrl, resource)` of every entry of a Bundle, or the document itself when
/// it is a single resource.
fn resources(document: &Json) -> impl Iterator<Item = (Option<&str>, &Json)> {
    let single = (document.get("resourceType").and_then(Json::as_str) != Some("Bundle")
        && document.get("resourceType").is_some())
    .then_some((None, document));
    let entries = array(document, "entry")
        .filter_map(|e| e.get("resource").map(|r| (str_at(e, "fullUrl"), r)));
    single.into_iter().chain(entries)
}

fn patients(document: &Json) -> impl Iterator<Item = &Json> {
    resources(document)
        .map(|(_, r)| r)
        .filter(|r| str_at(r, "resourceType") == Some("Patient"))
}

/// The resource a reference names: `Type/id` or a `fullUrl` (`urn:uuid:…`).
fn resolve<'d>(document: &'d Json, reference: &str) -> Option<&'d Json> {
    resources(document)
        .find(|(full_url, r)| {
            *full_url == Some(reference)
                || matches!(
                    (str_at(r, "resourceType"), str_at(r, "id")),
                    (Some(t), Some(id)) if reference.strip_prefix(t)
                        .and_then(|rest| rest.strip_prefix('/')) == Some(id)
                )
        })
        .map(|(_, r)| r)
}

fn identifiers(resource: &Json, systems: &[&str]) -> Vec<String> {
    array(resource, "identifier")
        .filter_map(|id| matching_value(id, systems))
        .map(str::to_string)
        .collect()
}

/// The `value` of an Identifier whose `system` is one of `systems`.
fn matching_value<'j>(identifier: &'j Json, systems: &[&str]) -> Option<&'j str> {
    let system = str_at(identifier, "system")?;
    systems
        .contains(&system)
        .then(|| str_at(identifier, "value"))
        .flatten()
}

fn array<'j>(value: &'j Json, key: &str) -> impl Iterator<Item = &'j Json> {
    value
        .get(key)
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
}

fn str_at<'j>(value: &'j Json, key: &str) -> Option<&'j str> {
    value.get(key).and_then(Json::as_str)
}

#[cfg(test)]
mod view_tests {
    use super::*;
    use crate::route::Origin;

    /// Every shipped sample, mapped by the shipped mappings: each route field,
    /// the queue's patient key and NHS numbers read the same from the routing
    /// view as from the whole document.
    #[test]
    fn the_routing_view_reads_like_the_document() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let set = crate::mapping::MappingSet::load_dir(&root.join("mappings")).expect("mappings");
        let mut checked = 0;
        let mut files: Vec<_> = std::fs::read_dir(root.join("samples"))
            .expect("samples")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "hl7"))
            .collect();
        files.sort();
        for path in files {
            let raw = std::fs::read(&path).expect("read");
            let Ok(text) = crate::hl7::decode(&raw) else {
                continue;
            };
            let Ok(message) = crate::hl7::Message::parse(&text) else {
                continue;
            };
            let Ok(header) = message.header() else {
                continue;
            };
            let Some(plan) = set.select(&header.message_code, &header.trigger_event) else {
                continue;
            };
            let Ok(output) = plan.apply(&message) else {
                continue;
            };
            let full: Json = serde_json::from_str(&output.document).expect("json");
            let views = [routing_view(&output.document), routing_view_of(&output)];
            for view in &views {
                assert!(
                    view.to_string().len() < full.to_string().len(),
                    "{}: the view is not smaller",
                    path.display()
                );
            }
            let input = RouteInput {
                origin: Origin::Unknown,
                message_code: &header.message_code,
                trigger: &header.trigger_event,
                sending_application: "PAS",
                sending_facility: "RAL",
            };
            for view in &views {
                for (field, name) in FIELDS {
                    let of = |d: &Json| {
                        Facts {
                            input: &input,
                            document: Document::Parsed(d),
                            misses: Default::default(),
                        }
                        .values(*field)
                    };
                    assert_eq!(of(&full), of(view), "{}: {name}", path.display());
                }
                use crate::delivery::pipeline::{nhs_numbers, patient_key};
                assert_eq!(patient_key(&full), patient_key(view), "{}", path.display());
                assert_eq!(nhs_numbers(&full), nhs_numbers(view), "{}", path.display());
            }
            checked += 1;
        }
        assert!(checked >= 15, "only {checked} samples mapped");
    }

    /// A GP named by reference: the view reads the Organization it names (by
    /// `Type/id` or by fullUrl) and nothing else of the Bundle.
    #[test]
    fn the_routing_view_keeps_what_objections_read() {
        // a second NHS number a sender gave (PID-2), kept as a local identifier
        // typed NH: the objections register is asked about it from the view too
        let text = r#"{"resourceType":"Bundle","type":"transaction","entry":[
            {"fullUrl":"urn:uuid:p1","resource":{"resourceType":"Patient","id":"p1","identifier":[
                {"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9990000018"},
                {"system":"urn:junction:local-id:nhs:nh","value":"9990000026",
                 "type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"NH"}]}}]}}]}"#;
        let full: Json = serde_json::from_str(text).unwrap();
        use crate::delivery::pipeline::nhs_numbers;
        assert_eq!(nhs_numbers(&full), ["9990000018", "9990000026"]);
        assert_eq!(nhs_numbers(&routing_view(text)), nhs_numbers(&full));
    }

    #[test]
    fn the_routing_view_follows_gp_references() {
        let patient = r#"{"generalPractitioner":[{"reference":"Organization/o1"},{"reference":"urn:uuid:p9"}],"id":"p1","resourceType":"Patient"}"#;
        let org = r#"{"id":"o1","identifier":[{"system":"https://fhir.nhs.uk/Id/ods-organization-code","value":"F81001"}],"resourceType":"Organization"}"#;
        let gp = r#"{"id":"p9","identifier":[{"system":"https://fhir.hl7.org.uk/Id/gmp-number","value":"G1234567"}],"resourceType":"Practitioner"}"#;
        let other = r#"{"id":"x1","identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9434765919"}],"resourceType":"Observation"}"#;
        let mut document = String::from(r#"{"entry":["#);
        let mut entries = Vec::new();
        for (i, (kind, id, body)) in [
            ("Patient", "p1", patient),
            ("Organization", "o1", org),
            ("Practitioner", "p9", gp),
            ("Observation", "x1", other),
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                document.push(',');
            }
            document.push_str(&format!(r#"{{"fullUrl":"urn:uuid:{id}","resource":"#));
            let start = document.len();
            document.push_str(body);
            entries.push(crate::mapping::MappedEntry {
                resource_type: kind.into(),
                id: id.into(),
                resource: start..document.len(),
            });
            document.push('}');
        }
        document.push_str(r#"],"resourceType":"Bundle","type":"transaction"}"#);
        let output = crate::mapping::MapOutput {
            document,
            entries,
            unread: Vec::new(),
            warnings: Vec::new(),
        };
        let full: Json = serde_json::from_str(&output.document).expect("json");
        let view = routing_view_of(&output);
        let input = RouteInput {
            origin: Origin::Unknown,
            message_code: "ADT",
            trigger: "A01",
            sending_application: "PAS",
            sending_facility: "RAL",
        };
        let of = |d: &Json, f: Field| {
            Facts {
                input: &input,
                document: Document::Parsed(d),
                misses: Default::default(),
            }
            .values(f)
        };
        assert_eq!(of(&view, Field::PatientGpPractice), vec!["F81001"]);
        assert_eq!(of(&view, Field::PatientGp), vec!["G1234567"]);
        for (field, name) in FIELDS {
            assert_eq!(of(&full, *field), of(&view, *field), "{name}");
        }
        // the Observation was not read: only its type and id are in the view
        assert!(!view.to_string().contains("9434765919"), "{view}");
    }

    #[test]
    fn text_of_another_shape_is_read_whole_and_non_json_is_null() {
        // `identifier` as an object is not FHIR: read whole rather than dropped
        let odd = r#"{"resourceType":"Patient","identifier":{"system":"s","value":"v"}}"#;
        assert_eq!(
            routing_view(odd),
            serde_json::from_str::<Json>(odd).unwrap()
        );
        assert_eq!(routing_view("not json"), Json::Null);
    }
}
