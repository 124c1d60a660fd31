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

/// What a condition is evaluated against: the message header and, once mapped,
/// the document (`Json::Null` before mapping).
pub(crate) struct Facts<'a> {
    pub input: &'a RouteInput<'a>,
    pub document: Document<'a>,
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

    /// The parsed document; text that is not JSON reads as `Json::Null` (no values).
    fn get(&self) -> &Json {
        match self {
            Document::Parsed(j) => j,
            Document::Text(text, parsed) => {
                parsed.get_or_init(|| serde_json::from_str(text).unwrap_or(Json::Null))
            }
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
