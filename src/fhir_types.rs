//! The resource types of FHIR R4 (4.0.1): what a mapping may make and what the
//! record store takes. A name outside this list (a typo, `Flagg`; a made-up
//! `Xyzzy` in a neighbour's Bundle) is refused where it enters: at mapping load
//! (`file:line:col`) and by the store (the entry's problem, the delivery dead).
//!
//! What this module does not do: validate a resource's content.

/// Every concrete resource type of FHIR R4 4.0.1, sorted (the value set
/// `http://hl7.org/fhir/ValueSet/resource-types` without the abstract
/// `Resource` and `DomainResource`).
pub const R4_RESOURCE_TYPES: &[&str] = &[
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

/// Whether `name` is a FHIR R4 resource type (exactly, case included).
pub fn is_r4_resource_type(name: &str) -> bool {
    R4_RESOURCE_TYPES.binary_search(&name).is_ok()
}

/// The `meta.tag` (system, code) a Patient carries when its sender deleted
/// the GP registration (PD1-3 sent as HL7's explicit null `""`: the patient
/// left the practice), as the shipped ADT mapping writes it. Without it, a
/// Patient that names no GP says nothing of one (PD1 left out keeps the old
/// value, as HL7 v2 has it); with it, the store drops the GP it has and
/// routing forgets the registration it remembers.
pub const GP_REGISTRATION_DELETED: (&str, &str) = ("urn:junction:tag", "gp-registration-deleted");

/// The `meta.tag` (system, code) a Patient carries when its sender deleted
/// the address (PID-11 sent as `""`), as the shipped ADT mapping writes it:
/// a Patient with no `address` otherwise says nothing of it (PID-11 left
/// out: the store keeps the stored one).
pub const ADDRESS_DELETED: (&str, &str) = ("urn:junction:tag", "address-deleted");

/// The `meta.tag` (system, code) a Patient carries when its sender deleted
/// the telephone numbers (PID-13 or PID-14 sent as `""`), as
/// [`ADDRESS_DELETED`] for `telecom`.
pub const TELECOM_DELETED: (&str, &str) = ("urn:junction:tag", "telecom-deleted");

/// The display of the [`GP_REGISTRATION_DELETED`] tag.
pub const GP_REGISTRATION_DELETED_DISPLAY: &str =
    "GP registration deleted by the sender (PD1-3 \"\")";

/// The `meta.tag` (system, code) a Patient carries when its sender deleted
/// the GP (PD1-4 sent as `""`), the practice left as it is: the store drops
/// the GP (GMP/GMC) it holds and keeps the practice, and routing forgets the
/// GP it remembers.
pub const GP_DELETED: (&str, &str) = ("urn:junction:tag", "gp-deleted");

/// Whether `patient` carries the [`GP_DELETED`] tag.
pub fn gp_deleted(patient: &serde_json::Value) -> bool {
    has_tag(patient, GP_DELETED)
}

/// Whether `patient` carries the [`GP_REGISTRATION_DELETED`] tag.
pub fn gp_registration_deleted(patient: &serde_json::Value) -> bool {
    has_tag(patient, GP_REGISTRATION_DELETED)
}

/// The `meta.tag` (system, code) an Encounter carries when its sender
/// cancelled the discharge (A13), as the shipped cancel mapping writes it,
/// kept by the store over later updates until the visit ends again: a
/// discharge older than the cancellation that arrives after it does not end
/// the visit again.
pub const DISCHARGE_CANCELLED: (&str, &str) = ("urn:junction:tag", "discharge-cancelled");

/// The display of the [`DISCHARGE_CANCELLED`] tag.
pub const DISCHARGE_CANCELLED_DISPLAY: &str = "discharge cancelled by the sender (A13)";

/// Whether `encounter` carries the [`DISCHARGE_CANCELLED`] tag.
pub fn discharge_cancelled(encounter: &serde_json::Value) -> bool {
    has_tag(encounter, DISCHARGE_CANCELLED)
}

/// The `meta.tag` (system, code) an Encounter carries when its sender
/// cancelled a transfer (A12), as the shipped ADT mapping writes it, kept by
/// the store over later updates until a new transfer or the end of the
/// visit: a transfer older than the cancellation that arrives after it is
/// the one cancelled (or an earlier one), and does not move the patient.
pub const TRANSFER_CANCELLED: (&str, &str) = ("urn:junction:tag", "transfer-cancelled");

/// The display of the [`TRANSFER_CANCELLED`] tag.
pub const TRANSFER_CANCELLED_DISPLAY: &str = "transfer cancelled by the sender (A12)";

/// Whether `encounter` carries the [`TRANSFER_CANCELLED`] tag.
pub fn transfer_cancelled(encounter: &serde_json::Value) -> bool {
    has_tag(encounter, TRANSFER_CANCELLED)
}

/// The extension the store puts on a cancellation tag ([`DISCHARGE_CANCELLED`])
/// when it records it: the event time of the message that made the
/// cancellation (`valueInstant`), so a discharge recorded after the
/// cancellation that arrives late is told from the one cancelled.
pub const TAG_EVENT_TIME: &str = "urn:junction:event-time";

/// The event time [`TAG_EVENT_TIME`] on the `meta.tag` `(system, code)` of
/// `resource` (`None`: no such tag, or none recorded on it).
pub fn tag_event_time(
    resource: &serde_json::Value,
    (system, code): (&str, &str),
) -> Option<jiff::Timestamp> {
    find_tag(resource, (system, code))?["extension"]
        .as_array()?
        .iter()
        .find(|x| x["url"] == TAG_EVENT_TIME)?["valueInstant"]
        .as_str()?
        .parse()
        .ok()
}

/// Whether `resource` carries the `meta.tag` `(system, code)`.
pub fn has_tag(resource: &serde_json::Value, tag: (&str, &str)) -> bool {
    find_tag(resource, tag).is_some()
}

/// The `meta.tag` `(system, code)` of `resource`, as it is (with what it
/// records: its display, [`TAG_EVENT_TIME`]).
pub fn find_tag<'r>(
    resource: &'r serde_json::Value,
    (system, code): (&str, &str),
) -> Option<&'r serde_json::Value> {
    resource["meta"]["tag"]
        .as_array()?
        .iter()
        .find(|t| t["system"] == system && t["code"] == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_sorted_complete_and_exact() {
        assert!(R4_RESOURCE_TYPES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(R4_RESOURCE_TYPES.len(), 146);
        for t in [
            "Patient",
            "Observation",
            "DiagnosticReport",
            "Flag",
            "VisionPrescription",
        ] {
            assert!(is_r4_resource_type(t), "{t}");
        }
        for t in [
            "Flagg",
            "patient",
            "Xyzzy",
            "Resource",
            "DomainResource",
            "",
            "SubscriptionTopic",
        ] {
            assert!(!is_r4_resource_type(t), "{t}");
        }
    }
}
