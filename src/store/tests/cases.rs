// The record store's behaviour, the same on every backend: included by
// `sqlite.rs` and `postgres.rs`, each of which defines `open() -> Fixture`.

const PATIENT: &str = "8f1c1a4e-54a7-5b43-9a3c-3c2f0f4d8a11";
const OTHER_PATIENT: &str = "1d5b8f0e-0c8e-5f6e-8d1e-6a0b2b6c9e22";
const ENCOUNTER: &str = "2b7c9d10-6f1e-5c3a-b2d4-7e8f9a0b1c33";
const OBSERVATION: &str = "3c8d0e21-7a2f-5d4b-c3e5-8f9a0b1c2d44";
const NHS: &str = "https://fhir.nhs.uk/Id/nhs-number";
const MRN: &str = "https://fhir.example-trust.nhs.uk/Id/mrn";

fn at(text: &str) -> Option<jiff::Timestamp> {
    Some(text.parse().unwrap())
}

/// A Provenance saying the document records HL7 v2 event `code` (A01, A08, …),
/// as the shipped mappings write it.
fn event(code: &str) -> serde_json::Value {
    json!({
        "resourceType": "Provenance",
        "id": format!("prov-{code}"),
        "target": [{"reference": format!("Patient/{PATIENT}")}],
        "recorded": "2026-03-01T12:00:00Z",
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0003", "code": code}]}
    })
}

/// A transaction Bundle of PUT entries, each with `fullUrl urn:uuid:<id>`.
fn bundle(resources: &[serde_json::Value]) -> serde_json::Value {
    let entries: Vec<_> = resources.iter().map(put_entry).collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn put_entry(resource: &serde_json::Value) -> serde_json::Value {
    let rtype = resource["resourceType"].as_str().unwrap();
    let id = resource["id"].as_str().unwrap();
    json!({
        "fullUrl": format!("urn:uuid:{id}"),
        "resource": resource,
        "request": {"method": "PUT", "url": format!("{rtype}/{id}")}
    })
}

fn delete_entry(url: &str) -> serde_json::Value {
    json!({"request": {"method": "DELETE", "url": url}})
}

fn patient(id: &str, nhs: &str, family: &str) -> serde_json::Value {
    json!({
        "resourceType": "Patient",
        "id": id,
        "identifier": [
            {"system": NHS, "value": nhs},
            {"system": MRN, "value": format!("MRN-{nhs}")}
        ],
        "name": [{"family": family, "given": ["Jane"]}],
        "gender": "female",
        "birthDate": "1980-02-29"
    })
}

fn encounter(id: &str, patient_id: &str, status: &str) -> serde_json::Value {
    json!({
        "resourceType": "Encounter",
        "id": id,
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": format!("urn:uuid:{patient_id}")}
    })
}

fn observation(id: &str, patient_id: &str, encounter_id: &str) -> serde_json::Value {
    json!({
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "code": {"text": "Haemoglobin"},
        "subject": {"reference": format!("urn:uuid:{patient_id}")},
        "encounter": {"reference": format!("urn:uuid:{encounter_id}")},
        "valueQuantity": {"value": 131, "unit": "g/L"}
    })
}

fn results(outcome: &ApplyOutcome) -> Vec<(&str, EntryResult)> {
    outcome
        .entries
        .iter()
        .map(|e| (e.resource_type.as_str(), e.result.clone()))
        .collect()
}

fn current(store: &RecordStore, rtype: &str, id: &str) -> serde_json::Value {
    store
        .read(rtype, id)
        .unwrap()
        .unwrap_or_else(|| panic!("{rtype}/{id} not stored"))
        .resource
        .unwrap_or_else(|| panic!("{rtype}/{id} is deleted"))
}

#[test]
fn create_sets_version_one_and_last_updated() {
    let f = open();
    let outcome = f
        .store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "Smith")]), None)
        .unwrap();
    assert_eq!(
        results(&outcome),
        vec![("Patient", EntryResult::Created { version: 1 })]
    );
    assert_eq!(outcome.written(), 1);
    let record = f.store.read("Patient", PATIENT).unwrap().unwrap();
    assert_eq!(record.version, 1);
    let resource = record.resource.unwrap();
    assert_eq!(resource["meta"]["versionId"], "1");
    let last_updated = resource["meta"]["lastUpdated"].as_str().unwrap();
    assert_eq!(last_updated, record.last_updated);
    // A FHIR instant, UTC, milliseconds.
    assert!(
        last_updated.parse::<jiff::Timestamp>().is_ok(),
        "{last_updated}"
    );
    assert!(
        last_updated.ends_with('Z') && last_updated.len() == 24,
        "{last_updated}"
    );
    assert_eq!(resource["name"][0]["family"], "Smith");
    assert_eq!(f.store.history("Patient", PATIENT).unwrap().len(), 1);
}

#[test]
fn update_makes_version_two_and_keeps_history() {
    let f = open();
    f.store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "Smith")]), None)
        .unwrap();
    let outcome = f
        .store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "Jones")]), None)
        .unwrap();
    assert_eq!(
        results(&outcome),
        vec![("Patient", EntryResult::Updated { version: 2 })]
    );
    let now = current(&f.store, "Patient", PATIENT);
    assert_eq!(now["meta"]["versionId"], "2");
    assert_eq!(now["name"][0]["family"], "Jones");
    let history = f.store.history("Patient", PATIENT).unwrap();
    let versions: Vec<i64> = history.iter().map(|r| r.version).collect();
    assert_eq!(versions, vec![2, 1]);
    let old = history[1].resource.as_ref().unwrap();
    assert_eq!(old["name"][0]["family"], "Smith");
    assert_eq!(old["meta"]["versionId"], "1");
}

#[test]
fn identical_replay_makes_no_new_version() {
    let f = open();
    let mut doc = bundle(&[
        patient(PATIENT, "9434765919", "Smith"),
        encounter(ENCOUNTER, PATIENT, "in-progress"),
    ]);
    f.store
        .apply_bundle(&doc, at("2026-03-01T10:00:00Z"))
        .unwrap();
    // The sender's own meta (versionId, source) is not content.
    doc["entry"][0]["resource"]["meta"] = json!({"versionId": "7", "source": "PAS#42"});
    let outcome = f
        .store
        .apply_bundle(&doc, at("2026-03-01T10:00:00Z"))
        .unwrap();
    assert_eq!(
        results(&outcome),
        vec![
            ("Patient", EntryResult::Unchanged { version: 1 }),
            ("Encounter", EntryResult::Unchanged { version: 1 }),
        ]
    );
    assert_eq!(outcome.unchanged(), 2);
    assert_eq!(f.store.history("Patient", PATIENT).unwrap().len(), 1);
    assert_eq!(f.store.history("Encounter", ENCOUNTER).unwrap().len(), 1);
}

#[test]
fn older_event_never_overwrites_newer_data() {
    let f = open();
    // The 11:00 A08 arrives first…
    f.store
        .apply_bundle(
            &bundle(&[patient(PATIENT, "9434765919", "Newer")]),
            at("2026-03-01T11:00:00Z"),
        )
        .unwrap();
    // …then the 10:00 one: skipped.
    let outcome = f
        .store
        .apply_bundle(
            &bundle(&[patient(PATIENT, "9434765919", "Older")]),
            at("2026-03-01T10:00:00Z"),
        )
        .unwrap();
    assert_eq!(
        results(&outcome),
        vec![("Patient", EntryResult::Stale { version: 1 })]
    );
    assert_eq!(outcome.stale(), 1);
    assert_eq!(
        current(&f.store, "Patient", PATIENT)["name"][0]["family"],
        "Newer"
    );
    let record = f.store.read("Patient", PATIENT).unwrap().unwrap();
    assert_eq!(record.event_time, at("2026-03-01T11:00:00Z"));

    // The same event time wins (last writer), a newer one too.
    let same = f
        .store
        .apply_bundle(
            &bundle(&[patient(PATIENT, "9434765919", "Same")]),
            at("2026-03-01T11:00:00Z"),
        )
        .unwrap();
    assert_eq!(
        results(&same),
        vec![("Patient", EntryResult::Updated { version: 2 })]
    );

    // An unchanged replay at a newer time moves the clock forward, so an
    // event between the two is now stale too.
    let replay = f
        .store
        .apply_bundle(
            &bundle(&[patient(PATIENT, "9434765919", "Same")]),
            at("2026-03-01T13:00:00Z"),
        )
        .unwrap();
    assert_eq!(replay.unchanged(), 1);
    let between = f
        .store
        .apply_bundle(
            &bundle(&[patient(PATIENT, "9434765919", "Between")]),
            at("2026-03-01T12:00:00Z"),
        )
        .unwrap();
    assert_eq!(between.stale(), 1);

    // Unknown event time: applied in arrival order, the stored time kept.
    let unknown = f
        .store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "Unknown")]), None)
        .unwrap();
    assert_eq!(unknown.written(), 1);
    let record = f.store.read("Patient", PATIENT).unwrap().unwrap();
    assert_eq!(record.event_time, at("2026-03-01T13:00:00Z"));
}

#[test]
fn an_event_time_ahead_of_the_clock_does_not_freeze_the_record() {
    let f = open();
    // a sender's clock ten years out (MSH-7 2036): taken as now, not as 2036
    f.store
        .apply_bundle(
            &bundle(&[patient(PATIENT, "9434765919", "Black")]),
            at("2036-11-24T02:00:00Z"),
        )
        .unwrap();
    let record = f.store.read("Patient", PATIENT).unwrap().unwrap();
    assert!(record.event_time < at("2036-01-01T00:00:00Z"), "{:?}", record.event_time);
    // so the next correct update (sent a little later) is applied, not stale
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1);
    let outcome = f
        .store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "Grey")]), Some(later))
        .unwrap();
    assert_eq!(outcome.written(), 1, "{:?}", results(&outcome));
    assert_eq!(
        current(&f.store, "Patient", PATIENT)["name"][0]["family"],
        "Grey"
    );
}

#[test]
fn an_update_that_names_no_gp_keeps_the_registered_one() {
    let f = open();
    let gp = json!([{"type": "Organization", "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "E82061"}}]);
    let mut registered = patient(PATIENT, "9434765919", "Smith");
    registered["generalPractitioner"] = gp.clone();
    f.store
        .apply_bundle(&bundle(&[registered]), at("2026-03-01T10:00:00Z"))
        .unwrap();
    // an A08 without PD1: a new name, no GP
    f.store
        .apply_bundle(
            &bundle(&[patient(PATIENT, "9434765919", "Smith-Jones")]),
            at("2026-03-01T11:00:00Z"),
        )
        .unwrap();
    let now = current(&f.store, "Patient", PATIENT);
    assert_eq!(now["name"][0]["family"], "Smith-Jones");
    assert_eq!(now["generalPractitioner"], gp, "{now}");
    // a new practice replaces it
    let mut moved = patient(PATIENT, "9434765919", "Smith-Jones");
    moved["generalPractitioner"] = json!([{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "F84003"}}]);
    f.store
        .apply_bundle(&bundle(&[moved]), at("2026-03-01T12:00:00Z"))
        .unwrap();
    let now = current(&f.store, "Patient", PATIENT);
    assert_eq!(now["generalPractitioner"][0]["identifier"]["value"], "F84003");

    // out of order: the newer message without PD1 first, the older with it
    // after (stale): the record still gets the GP, as in order
    let g = open();
    g.store
        .apply_bundle(
            &bundle(&[patient(PATIENT, "9434765919", "Smith-Jones")]),
            at("2026-03-01T11:00:00Z"),
        )
        .unwrap();
    let mut older = patient(PATIENT, "9434765919", "Smith");
    older["generalPractitioner"] = gp.clone();
    let outcome = g
        .store
        .apply_bundle(&bundle(&[older]), at("2026-03-01T10:00:00Z"))
        .unwrap();
    assert_eq!(outcome.stale(), 1);
    let now = current(&g.store, "Patient", PATIENT);
    assert_eq!(now["name"][0]["family"], "Smith-Jones");
    assert_eq!(now["generalPractitioner"], gp, "{now}");
}

/// A sender that deletes the GP registration (PD1-3 `""`, said by the
/// mapping's tag) takes it off the record; an update that then names none
/// keeps it off, and so does an older message naming the GP that arrives
/// late; a new registration puts one back.
#[test]
fn a_deleted_gp_registration_is_dropped_and_stays_dropped() {
    let f = open();
    let gp = |ods: &str| json!([{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": ods}}]);
    let (system, code) = crate::fhir_types::GP_REGISTRATION_DELETED;
    let mut registered = patient(PATIENT, "9434765919", "Smith");
    registered["generalPractitioner"] = gp("E82061");
    f.store.apply_bundle(&bundle(&[registered.clone()]), at("2026-03-01T10:00:00Z")).unwrap();
    let mut deleted = patient(PATIENT, "9434765919", "Smith");
    deleted["meta"] = json!({"tag": [{"system": system, "code": code}]});
    f.store.apply_bundle(&bundle(&[deleted]), at("2026-03-01T11:00:00Z")).unwrap();
    let gone = |f: &Fixture| current(&f.store, "Patient", PATIENT).get("generalPractitioner").is_none();
    assert!(gone(&f), "{}", current(&f.store, "Patient", PATIENT));
    f.store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "Smith-Jones")]), at("2026-03-01T12:00:00Z"))
        .unwrap();
    assert!(gone(&f), "an update naming none: {}", current(&f.store, "Patient", PATIENT));
    let outcome = f.store.apply_bundle(&bundle(&[registered]), at("2026-03-01T09:00:00Z")).unwrap();
    assert_eq!(outcome.stale(), 1);
    assert!(gone(&f), "an older message late: {}", current(&f.store, "Patient", PATIENT));
    let mut again = patient(PATIENT, "9434765919", "Smith-Jones");
    again["generalPractitioner"] = gp("F84003");
    f.store.apply_bundle(&bundle(&[again]), at("2026-03-01T13:00:00Z")).unwrap();
    let now = current(&f.store, "Patient", PATIENT);
    assert_eq!(now["generalPractitioner"], gp("F84003"), "{now}");
    assert!(!crate::fhir_types::gp_registration_deleted(&now), "{now}");
    // the practice deleted with a GP named (PD1-4): the next update naming
    // none keeps that GP and the deletion
    let gmp = json!([{"identifier": {"system": "https://fhir.hl7.org.uk/Id/gmp-number", "value": "G1234567"}}]);
    let mut left = patient(PATIENT, "9434765919", "Smith-Jones");
    left["meta"] = json!({"tag": [{"system": system, "code": code}]});
    left["generalPractitioner"] = gmp.clone();
    f.store.apply_bundle(&bundle(&[left]), at("2026-03-01T14:00:00Z")).unwrap();
    f.store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "Smith-Jones")]), at("2026-03-01T15:00:00Z"))
        .unwrap();
    let now = current(&f.store, "Patient", PATIENT);
    assert_eq!(now["generalPractitioner"], gmp, "{now}");
    assert!(crate::fhir_types::gp_registration_deleted(&now), "{now}");
    // registered again, practice and GP; then the GP alone deleted (PD1-4
    // `""`, PD1-3 not sent): the practice stays
    let both = json!([gp("E82061")[0], gmp[0]]);
    let mut again = patient(PATIENT, "9434765919", "Smith-Jones");
    again["generalPractitioner"] = both;
    f.store.apply_bundle(&bundle(&[again]), at("2026-03-01T16:00:00Z")).unwrap();
    let (system, code) = crate::fhir_types::GP_DELETED;
    let mut no_gp = patient(PATIENT, "9434765919", "Smith-Jones");
    no_gp["meta"] = json!({"tag": [{"system": system, "code": code}]});
    f.store.apply_bundle(&bundle(&[no_gp]), at("2026-03-01T17:00:00Z")).unwrap();
    let now = current(&f.store, "Patient", PATIENT);
    assert_eq!(now["generalPractitioner"], gp("E82061"), "{now}");
}

#[test]
fn stale_is_decided_per_resource() {
    let f = open();
    f.store
        .apply_bundle(
            &bundle(&[
                encounter(ENCOUNTER, PATIENT, "finished"),
                patient(PATIENT, "9434765919", "A"),
            ]),
            at("2026-03-01T11:00:00Z"),
        )
        .unwrap();
    // An older document that also brings a resource the store has not seen.
    let outcome = f
        .store
        .apply_bundle(
            &bundle(&[
                patient(PATIENT, "9434765919", "B"),
                encounter(ENCOUNTER, PATIENT, "in-progress"),
                observation(OBSERVATION, PATIENT, ENCOUNTER),
            ]),
            at("2026-03-01T10:00:00Z"),
        )
        .unwrap();
    assert_eq!(
        results(&outcome),
        vec![
            ("Patient", EntryResult::Stale { version: 1 }),
            ("Encounter", EntryResult::Stale { version: 1 }),
            ("Observation", EntryResult::Created { version: 1 }),
        ]
    );
    assert_eq!(
        current(&f.store, "Encounter", ENCOUNTER)["status"],
        "finished"
    );
}

#[test]
fn bundle_timestamp_is_the_event_time_when_none_is_given() {
    let f = open();
    let mut newer = bundle(&[patient(PATIENT, "9434765919", "Newer")]);
    newer["timestamp"] = json!("2026-03-01T11:00:00+00:00");
    f.store.apply_bundle(&newer, None).unwrap();
    let mut older = bundle(&[patient(PATIENT, "9434765919", "Older")]);
    older["timestamp"] = json!("2026-03-01T10:30:00+01:00");
    assert_eq!(f.store.apply_bundle(&older, None).unwrap().stale(), 1);
    // An explicit event time wins over the Bundle's.
    older["timestamp"] = json!("2026-03-01T09:00:00Z");
    let forced = f
        .store
        .apply_bundle(&older, at("2026-03-01T12:00:00Z"))
        .unwrap();
    assert_eq!(forced.written(), 1);

    let mut bad = bundle(&[patient(PATIENT, "9434765919", "Bad")]);
    bad["timestamp"] = json!("20260301");
    assert!(matches!(
        f.store.apply_bundle(&bad, None),
        Err(StoreError::InvalidTimestamp { found }) if found == "a text of 8 characters"
    ));
}

#[test]
fn urn_uuid_references_are_rewritten() {
    let f = open();
    f.store
        .apply_bundle(
            &bundle(&[
                patient(PATIENT, "9434765919", "Smith"),
                encounter(ENCOUNTER, PATIENT, "in-progress"),
                observation(OBSERVATION, PATIENT, ENCOUNTER),
            ]),
            None,
        )
        .unwrap();
    let obs = current(&f.store, "Observation", OBSERVATION);
    assert_eq!(obs["subject"]["reference"], format!("Patient/{PATIENT}"));
    assert_eq!(
        obs["encounter"]["reference"],
        format!("Encounter/{ENCOUNTER}")
    );
    let enc = current(&f.store, "Encounter", ENCOUNTER);
    assert_eq!(enc["subject"]["reference"], format!("Patient/{PATIENT}"));
    // References already relative, or to things outside the Bundle, are left alone.
    let mut doc = bundle(&[encounter(ENCOUNTER, PATIENT, "finished")]);
    doc["entry"][0]["resource"]["subject"]["reference"] = json!(format!("Patient/{PATIENT}"));
    doc["entry"][0]["resource"]["serviceProvider"] =
        json!({"reference": "https://example.org/Organization/RAL"});
    f.store.apply_bundle(&doc, None).unwrap();
    let enc = current(&f.store, "Encounter", ENCOUNTER);
    assert_eq!(enc["subject"]["reference"], format!("Patient/{PATIENT}"));
    assert_eq!(
        enc["serviceProvider"]["reference"],
        "https://example.org/Organization/RAL"
    );
}

#[test]
fn an_unresolved_urn_uuid_reference_stores_nothing() {
    let f = open();
    let doc = bundle(&[
        patient(PATIENT, "9434765919", "Smith"),
        encounter(ENCOUNTER, OTHER_PATIENT, "in-progress"),
    ]);
    let err = f.store.apply_bundle(&doc, None).unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::InvalidEntry {
                index: 1,
                problem: EntryProblem::UnresolvedReference
            }
        ),
        "{err}"
    );
    assert!(f.store.read("Patient", PATIENT).unwrap().is_none());
}

/// Documents with one bad entry: the error, and nothing stored.
#[test]
fn a_bundle_with_one_bad_entry_stores_nothing() {
    let good = put_entry(&patient(PATIENT, "9434765919", "Smith"));
    let enc = encounter(ENCOUNTER, PATIENT, "in-progress");
    let cases: Vec<(serde_json::Value, String)> = vec![
        (
            json!({"resource": enc, "request": {"method": "POST", "url": "Encounter"}}),
            "entry 1: request.method \"POST\" is not supported, expected PUT or DELETE".to_string(),
        ),
        (
            json!({"resource": enc}),
            "entry 1: request.method (missing) is not supported, expected PUT or DELETE".to_string(),
        ),
        (
            json!({"resource": enc, "request": {"method": "PUT", "url": "Encounter/other"}}),
            "entry 1: request.url (a text of 15 characters) does not name the entry's resource, expected `Encounter/` and its resource.id".to_string(),
        ),
        (
            json!({"request": {"method": "PUT", "url": "Encounter/x"}}),
            "entry 1: a PUT entry has no resource object".to_string(),
        ),
        (
            json!({"resource": {"resourceType": "Encounter", "id": "bad id!"},
                   "request": {"method": "PUT", "url": "Encounter/bad id!"}}),
            "entry 1: resource.id a text of 7 characters is not a FHIR id (1-64 of A-Z a-z 0-9 - .)".to_string(),
        ),
        (
            json!({"resource": {"resourceType": "encounter", "id": "e1"},
                   "request": {"method": "PUT", "url": "encounter/e1"}}),
            "entry 1: resource.resourceType \"encounter\" is not a FHIR R4 resource type".to_string(),
        ),
        (
            json!({"request": {"method": "DELETE", "url": "Encounter?identifier=x"}}),
            "entry 1: request.url (a text of 22 characters) is not a `Type/id` URL".to_string(),
        ),
        (
            good.clone(),
            "entry 1: the Patient is in more than one entry of the Bundle (the same id)".to_string(),
        ),
        (json!("text"), "entry 1: not a JSON object".to_string()),
    ];
    for (bad, expected) in cases {
        let f = open();
        let doc = json!({"resourceType": "Bundle", "type": "transaction", "entry": [good, bad]});
        let err = f.store.apply_bundle(&doc, None).unwrap_err();
        assert_eq!(err.to_string(), expected);
        assert!(err.is_permanent(), "{expected}");
        assert!(
            f.store.read("Patient", PATIENT).unwrap().is_none(),
            "{expected}"
        );
    }
}

#[test]
fn a_new_patient_under_another_id_for_a_known_nhs_number_is_refused() {
    // our PAS's patient, then a neighbour's Bundle making its own Patient
    // (create-only, its own id) for the same NHS number: a second live record
    // of one person would split theirs, so the document is refused whole
    let f = open();
    f.store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "Smith")]), at("2026-11-23T10:00:00Z"))
        .unwrap();
    let create_only = |resource: serde_json::Value| {
        let mut entry = put_entry(&resource);
        entry["request"]["ifNoneMatch"] = json!("*");
        entry
    };
    let neighbours = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        create_only(patient(OTHER_PATIENT, "9434765919", "Smith")),
        put_entry(&encounter(ENCOUNTER, OTHER_PATIENT, "finished")),
    ]});
    let err = f.store.apply_bundle(&neighbours, None).unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert!(
        err.to_string()
            .starts_with("entry 0: the Patient is new here under its own id, but its NHS number is already the record of another Patient"),
        "{err}"
    );
    assert!(!err.to_string().contains("9434765919"), "{err}");
    // nor when the neighbour writes the number spaced or with dashes
    for written in ["943 476 5919", "943-476-5919", "9434765919 "] {
        let spaced = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            create_only(patient(OTHER_PATIENT, written, "Smith")),
        ]});
        let err = f.store.apply_bundle(&spaced, None).unwrap_err();
        assert!(
            err.to_string().contains("already the record of another Patient"),
            "{written:?}: {err}"
        );
    }
    // nor under the NHS number system written with a trailing slash
    let mut slashed = patient(OTHER_PATIENT, "9434765919", "Smith");
    slashed["identifier"] =
        json!([{"system": "https://fhir.nhs.uk/Id/nhs-number/", "value": "9434765919"}]);
    let err = f
        .store
        .apply_bundle(
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": [create_only(slashed)]}),
            None,
        )
        .unwrap_err();
    assert!(err.to_string().contains("already the record of another Patient"), "{err}");
    assert!(f.store.read("Patient", OTHER_PATIENT).unwrap().is_none());
    assert!(f.store.read("Encounter", ENCOUNTER).unwrap().is_none());
    // a placeholder under the id the number makes here (a lab result's, by
    // the shipped mappings) is that record, never refused
    let canonical = crate::mapping::transform::uuid5("Patient", "nhs|9434765919");
    let lab = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        create_only(patient(&canonical, "9434765919", "Smith")),
    ]});
    f.store.apply_bundle(&lab, None).unwrap();
    // nor is one for an NHS number no one holds yet
    let new = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        create_only(patient(OTHER_PATIENT, "9990000018", "Jones")),
    ]});
    f.store.apply_bundle(&new, None).unwrap();
}

#[test]
fn a_neighbours_patient_stored_first_is_retired_by_the_record_its_nhs_number_makes() {
    // the other order of the test above: a neighbour's Bundle (its Patient
    // under an id of its own, an Encounter filed under it) before any record
    // of ours holds the number; then our PAS's Patient under the id the
    // number makes here. One person, one live record: the neighbour's is
    // retired in favour of ours, and what was filed under it is found from ours.
    let f = open();
    let mut neighbours_patient = patient(OTHER_PATIENT, "9434765919", "Smith");
    neighbours_patient["identifier"] =
        json!([{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}]);
    let mut entry = put_entry(&neighbours_patient);
    entry["request"]["ifNoneMatch"] = json!("*");
    let neighbours = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry,
        put_entry(&encounter(ENCOUNTER, OTHER_PATIENT, "finished")),
    ]});
    f.store.apply_bundle(&neighbours, None).unwrap();
    let canonical = crate::mapping::transform::uuid5("Patient", "nhs|9434765919");
    // a lab's placeholder under our id (create-only) retires nothing: it would
    // leave the person's live record without what the neighbour knows
    let mut placeholder = put_entry(&patient(&canonical, "9434765919", "Smith"));
    placeholder["request"]["ifNoneMatch"] = json!("*");
    f.store
        .apply_bundle(
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": [placeholder]}),
            None,
        )
        .unwrap();
    assert_eq!(current(&f.store, "Patient", OTHER_PATIENT).get("active"), None);
    // the PAS's record
    f.store
        .apply_bundle(&bundle(&[patient(&canonical, "9434765919", "Smith")]), at("2026-11-23T10:00:00Z"))
        .unwrap();
    let old = current(&f.store, "Patient", OTHER_PATIENT);
    assert_eq!(old["active"], false, "{old}");
    assert_eq!(old["link"][0]["type"], "replaced-by");
    assert_eq!(old["link"][0]["other"]["reference"], format!("Patient/{canonical}"));
    let ours = current(&f.store, "Patient", &canonical);
    assert_eq!(ours.get("active"), None, "{ours}");
    assert_eq!(ours.get("link"), None, "{ours}");
    let everything = f.store.everything(&canonical).unwrap().unwrap();
    assert!(everything.iter().any(|r| r["id"] == ENCOUNTER), "{everything:?}");
    // a Patient of ours under another id (not the number's) retires no one
    let f = open();
    f.store.apply_bundle(&neighbours, None).unwrap();
    f.store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "Smith")]), None)
        .unwrap();
    assert_eq!(current(&f.store, "Patient", OTHER_PATIENT).get("active"), None);
}

/// A neighbour's Bundle: its Patient (create-only, its own id) with the NHS
/// number written as `written` under `system`, and an Encounter filed under it.
fn neighbours_bundle(system: &str, written: &str) -> serde_json::Value {
    let mut neighbours_patient = patient(OTHER_PATIENT, "9434765919", "Smith");
    neighbours_patient["identifier"] = json!([{"system": system, "value": written}]);
    let mut entry = put_entry(&neighbours_patient);
    entry["request"]["ifNoneMatch"] = json!("*");
    json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry,
        put_entry(&encounter(ENCOUNTER, OTHER_PATIENT, "finished")),
    ]})
}

/// The Patients a search by NHS number 9434765919 finds (by its digits).
fn holding_9434765919(store: &RecordStore) -> Vec<serde_json::Value> {
    store
        .search_patient_by_identifier(Some("https://fhir.nhs.uk/Id/nhs-number"), "9434765919")
        .unwrap()
}

#[test]
fn a_neighbours_patient_with_its_nhs_number_written_otherwise_is_retired_all_the_same() {
    // the neighbour's Patient (stored first) writes the number spaced, with
    // dashes, or under the system with a trailing slash: it is still that
    // number, found by its ten digits, and retired by the record it makes here
    let canonical = crate::mapping::transform::uuid5("Patient", "nhs|9434765919");
    for (system, written) in [
        ("https://fhir.nhs.uk/Id/nhs-number", "943 476 5919"),
        ("https://fhir.nhs.uk/Id/nhs-number", "943-476-5919"),
        ("https://fhir.nhs.uk/Id/nhs-number/", "9434765919"),
    ] {
        let f = open();
        f.store
            .apply_bundle(&neighbours_bundle(system, written), None)
            .unwrap();
        let found = holding_9434765919(&f.store);
        assert_eq!(found.len(), 1, "{written:?}: {found:?}");
        assert_eq!(found[0]["id"], OTHER_PATIENT);
        f.store
            .apply_bundle(&bundle(&[patient(&canonical, "9434765919", "Smith")]), at("2026-11-23T10:00:00Z"))
            .unwrap();
        let old = current(&f.store, "Patient", OTHER_PATIENT);
        assert_eq!(old["active"], false, "{written:?}: {old}");
        // as the neighbour wrote it: the store indexes the number, it does
        // not rewrite it
        assert_eq!(old["identifier"][0]["value"], written);
        let everything = f.store.everything(&canonical).unwrap().unwrap();
        assert!(everything.iter().any(|r| r["id"] == ENCOUNTER), "{written:?}");
    }
}

#[test]
fn a_record_filed_under_a_patient_no_one_has_is_refused() {
    // a neighbour's Encounter whose subject names a Patient neither in its
    // document nor stored here (`Patient/<an NHS number>`): refused whole,
    // before anything is written; the same Encounter under a stored Patient,
    // or with its Patient in the document, is taken
    let f = open();
    let mut stray = encounter(ENCOUNTER, PATIENT, "finished");
    stray["subject"] = json!({"reference": "Patient/9434765919"});
    let mut result = observation("o-1", PATIENT, ENCOUNTER);
    result["subject"] = json!({"reference": format!("Patient/{PATIENT}")});
    result["encounter"] = json!({"reference": format!("Encounter/{ENCOUNTER}")});
    let err = f
        .store
        .apply_bundle(&bundle(&[stray.clone(), result.clone()]), None)
        .unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert!(
        err.to_string().starts_with("entry 0: it is filed under a Patient"),
        "{err}"
    );
    assert!(f.store.read("Encounter", ENCOUNTER).unwrap().is_none());
    // with the Patient in the document
    f.store
        .apply_bundle(&bundle(&[encounter(ENCOUNTER, PATIENT, "finished"), patient(PATIENT, "9434765919", "Smith")]), None)
        .unwrap();
    // under the stored Patient
    f.store.apply_bundle(&bundle(&[result]), None).unwrap();
    // an Encounter moved to a Patient no one has: refused, the visit stays put
    let err = f.store.apply_bundle(&bundle(&[stray]), None).unwrap_err();
    assert!(err.to_string().contains("neither in the document nor stored"), "{err}");
    let visit = current(&f.store, "Encounter", ENCOUNTER);
    assert_eq!(visit["subject"]["reference"], format!("Patient/{PATIENT}"));
    // other shapes of a reference to a Patient no one has, or none can resolve
    for subject in [
        json!({"reference": "https://other.nhs.example/fhir/Patient/9434765919"}),
        json!({"reference": "Patient/9434765919/_history/1"}),
        json!({"reference": "Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919"}),
        json!({"reference": format!("patient/{PATIENT}")}),
        json!({"type": "Patient", "identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}}),
    ] {
        let mut other = encounter("e-other", PATIENT, "finished");
        other["subject"] = subject.clone();
        let err = f.store.apply_bundle(&bundle(&[other]), None).unwrap_err();
        assert!(err.is_permanent(), "{subject}: {err}");
        assert!(err.to_string().contains("Patient"), "{subject}: {err}");
        assert!(!err.to_string().contains("9434765919"), "{err}");
    }
    assert!(f.store.read("Encounter", "e-other").unwrap().is_none());
    // a versioned or absolute reference to the stored Patient: filed under it
    for (id, subject) in [
        ("e-versioned", format!("Patient/{PATIENT}/_history/1")),
        ("e-absolute", format!("https://records.example/fhir/Patient/{PATIENT}")),
    ] {
        let mut filed = encounter(id, PATIENT, "finished");
        filed["subject"] = json!({"reference": subject});
        f.store.apply_bundle(&bundle(&[filed]), None).unwrap();
        let everything = f.store.everything(PATIENT).unwrap().unwrap();
        assert!(everything.iter().any(|r| r["id"] == id), "{id}");
    }
}

#[test]
fn a_placeholder_mrn_many_patients_share_retires_no_one() {
    // twelve unknown patients a PAS registered under one default MRN, then a
    // traced patient with that MRN: strangers, not one person's records, so
    // none is retired into it; one untraced record under a real MRN still is
    let f = open();
    for i in 0..12 {
        let mut unknown = patient(&format!("unknown-{i}"), "9434765919", "Unknown");
        unknown["identifier"] = json!([{"system": MRN, "value": "UNKNOWN"}]);
        f.store.apply_bundle(&bundle(&[unknown]), None).unwrap();
    }
    let mut traced = patient(PATIENT, "9434765919", "Smith");
    traced["identifier"][1]["value"] = json!("UNKNOWN");
    f.store.apply_bundle(&bundle(&[traced]), None).unwrap();
    for i in 0..12 {
        let record = current(&f.store, "Patient", &format!("unknown-{i}"));
        assert_eq!(record.get("active"), None, "unknown-{i}: {record}");
    }
    // nor is the next unknown patient under it written retired into the one
    // traced patient who holds it
    let mut next = patient("unknown-12", "9434765919", "Unknown");
    next["identifier"] = json!([{"system": MRN, "value": "UNKNOWN"}]);
    f.store.apply_bundle(&bundle(&[next]), None).unwrap();
    let record = current(&f.store, "Patient", "unknown-12");
    assert_eq!(record.get("active"), None, "{record}");
    let mut untraced = patient(OTHER_PATIENT, "9990000018", "Jones");
    untraced["identifier"] = json!([{"system": MRN, "value": "MRN-9990000018"}]);
    f.store.apply_bundle(&bundle(&[untraced]), None).unwrap();
    f.store
        .apply_bundle(&bundle(&[patient("traced-jones", "9990000018", "Jones")]), None)
        .unwrap();
    assert_eq!(current(&f.store, "Patient", OTHER_PATIENT)["active"], false);
}

#[test]
fn a_value_its_element_does_not_allow_refuses_the_document_without_quoting_it() {
    // a neighbour's Encounter whose period.start is free text (a name and an
    // NHS number pasted into it): the whole document is refused, permanently,
    // and the reason names the element, never the value
    let f = open();
    let mut bad = encounter(ENCOUNTER, PATIENT, "finished");
    bad["period"] = json!({"start": "QXSURNAME 9434765919"});
    let err = f
        .store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "Smith"), bad]), None)
        .unwrap_err();
    assert!(err.is_permanent(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("entry 1: Encounter.period.start is not a valid FHIR dateTime"),
        "{text}"
    );
    assert!(!text.contains("9434765919") && !text.contains("QXSURNAME"), "{text}");
    assert!(f.store.read("Patient", PATIENT).unwrap().is_none());
}

#[test]
fn a_patients_nhs_number_never_changes_under_its_id() {
    let f = open();
    f.store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "Smith")]), at("2026-11-23T09:00:00Z"))
        .unwrap();
    // another person's NHS number under this id (a neighbour's document): the
    // whole document is refused, and nothing of it stored
    let other = patient(PATIENT, "9990000018", "Overwritten");
    let enc = encounter(ENCOUNTER, PATIENT, "in-progress");
    let err = f
        .store
        .apply_bundle(&bundle(&[enc, other]), at("2026-11-23T10:00:00Z"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "entry 1: the Patient holds another NHS number (or none, or a second one): a Patient's NHS number never changes under its id"
    );
    assert!(err.is_permanent());
    assert_eq!(current(&f.store, "Patient", PATIENT)["name"][0]["family"], "Smith");
    assert!(f.store.read("Encounter", ENCOUNTER).unwrap().is_none());
    // nor can it be dropped (to name another in a second step), nor a second added
    let mut none = patient(PATIENT, "9434765919", "Dropped");
    none["identifier"] = json!([{"system": MRN, "value": "MRN-9434765919"}]);
    let mut two = patient(PATIENT, "9434765919", "Two");
    two["identifier"]
        .as_array_mut()
        .unwrap()
        .push(json!({"system": NHS, "value": "9990000018"}));
    for bad in [none, two] {
        let err = f
            .store
            .apply_bundle(&bundle(&[bad]), at("2026-11-23T10:30:00Z"))
            .unwrap_err();
        assert!(err.is_permanent(), "{err}");
    }
    assert_eq!(current(&f.store, "Patient", PATIENT)["name"][0]["family"], "Smith");
    // a placeholder (create-only, a neighbour's or a lab's) made under the id our
    // PAS will use, with another number, does not lock the PAS's patient out:
    // the first version written with authority replaces it
    let squatted = "0a0a0a0a-0000-5000-8000-000000000099";
    let mut placeholder = put_entry(&patient(squatted, "9990000018", "Squatter"));
    placeholder["request"]["ifNoneMatch"] = json!("*");
    let doc = json!({"resourceType": "Bundle", "type": "transaction", "entry": [placeholder]});
    f.store.apply_bundle(&doc, None).unwrap();
    f.store
        .apply_bundle(&bundle(&[patient(squatted, "9434765919", "Smith")]), at("2026-11-23T10:45:00Z"))
        .unwrap();
    let now = current(&f.store, "Patient", squatted);
    assert_eq!(now["identifier"][0]["value"], "9434765919", "{now}");
    // the same number with new details is an update
    f.store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "Smyth")]), at("2026-11-23T11:00:00Z"))
        .unwrap();
    assert_eq!(current(&f.store, "Patient", PATIENT)["name"][0]["family"], "Smyth");
}

#[test]
fn documents_that_are_not_transactions_are_refused() {
    let f = open();
    let cases = [
        (
            json!({"resourceType": "Patient"}),
            "the document is not a Bundle: resourceType is \"Patient\", expected \"Bundle\"",
        ),
        (
            json!({}),
            "the document is not a Bundle: resourceType is (missing), expected \"Bundle\"",
        ),
        (
            json!({"resourceType": "Bundle", "type": "collection"}),
            "the Bundle has type \"collection\", expected \"transaction\"",
        ),
        (
            json!({"resourceType": "Bundle", "type": "transaction", "entry": {}}),
            "the Bundle's `entry` is not an array",
        ),
    ];
    for (doc, expected) in cases {
        let err = f.store.apply_bundle(&doc, None).unwrap_err();
        assert_eq!(err.to_string(), expected);
        assert!(err.is_permanent(), "{expected}");
    }
    let transient = StoreError::Sqlite(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
        None,
    ));
    assert!(!transient.is_permanent());
    // a resource type FHIR R4 does not have (a neighbour's made-up one, a
    // mapping's typo) is refused, and nothing of the Bundle is written
    for made_up in ["Xyzzy", "Flagg"] {
        let doc = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:11111111-2222-5333-8444-555555555555",
             "resource": {"resourceType": made_up, "id": "11111111-2222-5333-8444-555555555555", "junk": {"a": [1]}},
             "request": {"method": "PUT", "url": format!("{made_up}/11111111-2222-5333-8444-555555555555")}}
        ]});
        let err = f.store.apply_bundle(&doc, None).unwrap_err();
        assert!(err.is_permanent());
        assert!(
            err.to_string()
                .contains("resource.resourceType a text of 5 characters is not a FHIR R4 resource type"),
            "{err}"
        );
    }
    // nor a server's own resource, nor a made-up one hidden in `contained`
    let id = "11111111-2222-5333-8444-555555555555";
    for (resource, says) in [
        (json!({"resourceType": "AuditEvent", "id": id}), "AuditEvent is not kept in the care record"),
        (json!({"resourceType": "Bundle", "id": id, "type": "collection"}), "Bundle is not kept in the care record"),
        (
            json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "x"},
                   "contained": [{"resourceType": "Xyzzy", "id": "x1"}]}),
            "a text of 5 characters (contained) is not a FHIR R4 resource type",
        ),
        (
            json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "x"},
                   "contained": [{"resourceType": "Bundle", "id": "b1"}]}),
            "Bundle (contained) is not kept in the care record",
        ),
    ] {
        let t = resource["resourceType"].as_str().unwrap().to_string();
        let doc = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": format!("urn:uuid:{id}"), "resource": resource,
             "request": {"method": "PUT", "url": format!("{t}/{id}")}}
        ]});
        let err = f.store.apply_bundle(&doc, None).unwrap_err();
        assert!(err.is_permanent());
        assert!(err.to_string().contains(says), "{err}");
    }
    // An empty transaction is fine and does nothing.
    let empty = json!({"resourceType": "Bundle", "type": "transaction"});
    assert_eq!(
        f.store.apply_bundle(&empty, None).unwrap(),
        ApplyOutcome::default()
    );
}

#[test]
fn delete_writes_a_tombstone_version() {
    let f = open();
    f.store
        .apply_bundle(
            &bundle(&[
                patient(PATIENT, "9434765919", "Smith"),
                encounter(ENCOUNTER, PATIENT, "in-progress"),
            ]),
            at("2026-03-01T10:00:00Z"),
        )
        .unwrap();
    let cancel = json!({"resourceType": "Bundle", "type": "transaction",
        "entry": [delete_entry(&format!("Encounter/{ENCOUNTER}"))]});
    let outcome = f
        .store
        .apply_bundle(&cancel, at("2026-03-01T10:05:00Z"))
        .unwrap();
    assert_eq!(
        results(&outcome),
        vec![("Encounter", EntryResult::Deleted { version: 2 })]
    );
    let record = f.store.read("Encounter", ENCOUNTER).unwrap().unwrap();
    assert!(record.is_deleted());
    assert_eq!(record.version, 2);
    assert!(f
        .store
        .search_by_patient("Encounter", PATIENT)
        .unwrap()
        .is_empty());
    assert_eq!(f.store.everything(PATIENT).unwrap().unwrap().len(), 1);
    let history = f.store.history("Encounter", ENCOUNTER).unwrap();
    assert_eq!(history.len(), 2);
    assert!(history[0].is_deleted() && !history[1].is_deleted());

    // Deleting again, or something never stored, does nothing.
    let again = f
        .store
        .apply_bundle(&cancel, at("2026-03-01T10:06:00Z"))
        .unwrap();
    assert_eq!(again.entries[0].result, EntryResult::AlreadyAbsent);
    let never = json!({"resourceType": "Bundle", "type": "transaction",
        "entry": [delete_entry("Condition/never-stored")]});
    assert_eq!(
        f.store.apply_bundle(&never, None).unwrap().entries[0].result,
        EntryResult::AlreadyAbsent
    );
    assert!(f.store.read("Condition", "never-stored").unwrap().is_none());

    // The admission replayed late (older event) does not bring it back…
    let mut late = bundle(&[encounter(ENCOUNTER, PATIENT, "in-progress")]);
    late["entry"][0]["resource"]["subject"]["reference"] = json!(format!("Patient/{PATIENT}"));
    let outcome = f
        .store
        .apply_bundle(&late, at("2026-03-01T10:00:00Z"))
        .unwrap();
    assert_eq!(outcome.stale(), 1);
    // …a newer one does, as a new version.
    let outcome = f
        .store
        .apply_bundle(&late, at("2026-03-01T11:00:00Z"))
        .unwrap();
    assert_eq!(
        outcome.entries[0].result,
        EntryResult::Created { version: 3 }
    );
    assert_eq!(
        f.store
            .search_by_patient("Encounter", PATIENT)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn patient_search_by_identifier_follows_the_current_version() {
    let f = open();
    f.store
        .apply_bundle(
            &bundle(&[
                patient(PATIENT, "9434765919", "Smith"),
                patient(OTHER_PATIENT, "9876543210", "Brown"),
            ]),
            None,
        )
        .unwrap();
    let ids = |found: Vec<serde_json::Value>| -> Vec<String> {
        found
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect()
    };
    let store = &f.store;
    assert_eq!(
        ids(store
            .search_patient_by_identifier(Some(NHS), "9434765919")
            .unwrap()),
        vec![PATIENT]
    );
    assert_eq!(
        ids(store
            .search_patient_by_identifier(None, "9434765919")
            .unwrap()),
        vec![PATIENT]
    );
    assert_eq!(
        ids(store
            .search_patient_by_identifier(Some(MRN), "MRN-9876543210")
            .unwrap()),
        vec![OTHER_PATIENT]
    );
    assert!(store
        .search_patient_by_identifier(Some(MRN), "9434765919")
        .unwrap()
        .is_empty());
    assert!(store
        .search_patient_by_identifier(Some(""), "9434765919")
        .unwrap()
        .is_empty());

    // The MRN changes (a correction): the old one no longer finds her. (An NHS
    // number never changes under a Patient's id: a_patients_nhs_number_never_changes_under_its_id.)
    let mut corrected = patient(PATIENT, "9434765919", "Smith");
    corrected["identifier"][1]["value"] = json!("MRN-CORRECTED");
    store.apply_bundle(&bundle(&[corrected]), None).unwrap();
    assert!(store
        .search_patient_by_identifier(Some(MRN), "MRN-9434765919")
        .unwrap()
        .is_empty());
    let found = store
        .search_patient_by_identifier(Some(MRN), "MRN-CORRECTED")
        .unwrap();
    assert_eq!(ids(found.clone()), vec![PATIENT]);
    assert_eq!(found[0]["meta"]["versionId"], "2");

    // Identifiers without a system are found with `Some("")`.
    let mut local = patient(PATIENT, "9434765919", "Smith");
    local["identifier"] = json!([{"system": NHS, "value": "9434765919"}, {"value": "LOCAL-1"}]);
    store.apply_bundle(&bundle(&[local]), None).unwrap();
    assert_eq!(
        ids(store
            .search_patient_by_identifier(Some(""), "LOCAL-1")
            .unwrap()),
        vec![PATIENT]
    );
}

#[test]
fn everything_and_search_by_patient() {
    let f = open();
    let condition = json!({
        "resourceType": "Condition", "id": "c1",
        "code": {"text": "Asthma"},
        "subject": {"reference": format!("urn:uuid:{PATIENT}")}
    });
    let allergy = json!({
        "resourceType": "AllergyIntolerance", "id": "a1",
        "code": {"text": "Penicillin"},
        "patient": {"reference": format!("urn:uuid:{PATIENT}")}
    });
    let provenance = json!({
        "resourceType": "Provenance", "id": "p1",
        "recorded": "2026-03-01T10:00:00Z",
        "target": [{"reference": format!("urn:uuid:{PATIENT}")}, {"reference": format!("urn:uuid:{ENCOUNTER}")}],
        "agent": [{"who": {"display": "PAS"}}]
    });
    f.store
        .apply_bundle(
            &bundle(&[
                patient(PATIENT, "9434765919", "Smith"),
                encounter(ENCOUNTER, PATIENT, "in-progress"),
                observation(OBSERVATION, PATIENT, ENCOUNTER),
                condition,
                allergy,
                provenance,
                patient(OTHER_PATIENT, "9876543210", "Brown"),
                encounter("e-other", OTHER_PATIENT, "finished"),
            ]),
            None,
        )
        .unwrap();
    let everything = f.store.everything(PATIENT).unwrap().unwrap();
    let names: Vec<String> = everything
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            format!("Patient/{PATIENT}"),
            "AllergyIntolerance/a1".to_string(),
            "Condition/c1".to_string(),
            format!("Encounter/{ENCOUNTER}"),
            format!("Observation/{OBSERVATION}"),
            "Provenance/p1".to_string(),
        ]
    );
    assert!(f.store.everything("unknown").unwrap().is_none());

    let encounters = f
        .store
        .search_by_patient("Encounter", OTHER_PATIENT)
        .unwrap();
    assert_eq!(encounters.len(), 1);
    assert_eq!(encounters[0]["id"], "e-other");
    assert_eq!(
        f.store.search_by_patient("Patient", PATIENT).unwrap().len(),
        1
    );
    assert!(f
        .store
        .search_by_patient("Condition", OTHER_PATIENT)
        .unwrap()
        .is_empty());
    assert!(f
        .store
        .search_by_patient("Observation", "unknown")
        .unwrap()
        .is_empty());

    // Moving the encounter to the other patient moves its link.
    f.store
        .apply_bundle(
            &bundle(&[
                patient(OTHER_PATIENT, "9876543210", "Brown"),
                encounter(ENCOUNTER, OTHER_PATIENT, "in-progress"),
            ]),
            None,
        )
        .unwrap();
    assert!(f
        .store
        .search_by_patient("Encounter", PATIENT)
        .unwrap()
        .is_empty());
    assert_eq!(
        f.store
            .search_by_patient("Encounter", OTHER_PATIENT)
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn apply_bundles_shares_a_transaction_but_not_a_fate() {
    let f = open();
    let first = bundle(&[
        patient(PATIENT, "9434765919", "Smith"),
        encounter(ENCOUNTER, PATIENT, "in-progress"),
    ]);
    // Refers to a patient that is not in it: refused, alone.
    let wrong = bundle(&[encounter("e-wrong", OTHER_PATIENT, "finished")]);
    let update = bundle(&[patient(PATIENT, "9434765919", "Jones")]);
    let older = bundle(&[patient(PATIENT, "9434765919", "Older")]);
    // refused while it is applied (after its first entry is written: the
    // Encounter, then a Patient with another NHS number under our id): its
    // writes are rolled back, alone
    let mut moved = encounter(ENCOUNTER, PATIENT, "finished");
    moved["subject"] = json!({"reference": format!("Patient/{PATIENT}")});
    let renumbered = bundle(&[moved, patient(PATIENT, "9990000018", "Jones")]);
    let results = f
        .store
        .apply_bundles(&[
            (&first, at("2026-03-01T10:00:00Z")),
            (&wrong, at("2026-03-01T10:01:00Z")),
            (&update, at("2026-03-01T11:00:00Z")),
            (&older, at("2026-03-01T10:30:00Z")),
            (&renumbered, at("2026-03-01T12:00:00Z")),
        ])
        .unwrap();
    assert_eq!(results.len(), 5);
    let err = results[4].as_ref().unwrap_err();
    assert!(err.to_string().contains("another NHS number"), "{err}");
    assert_eq!(current(&f.store, "Encounter", ENCOUNTER)["status"], "in-progress");
    assert_eq!(results[0].as_ref().unwrap().written(), 2);
    let err = results[1].as_ref().unwrap_err();
    assert!(err.is_permanent(), "{err}");
    // Later documents in the batch see the earlier ones.
    assert_eq!(
        results[2].as_ref().unwrap().entries[0].result,
        EntryResult::Updated { version: 2 }
    );
    assert_eq!(results[3].as_ref().unwrap().stale(), 1);
    assert_eq!(
        current(&f.store, "Patient", PATIENT)["name"][0]["family"],
        "Jones"
    );
    assert!(f.store.read("Encounter", "e-wrong").unwrap().is_none());
    assert!(f.store.apply_bundles(&[]).unwrap().is_empty());
}

#[test]
fn create_only_puts_create_a_missing_record_and_never_replace_one() {
    let f = open();
    let create_only = |resource: &serde_json::Value| {
        let mut entry = put_entry(resource);
        entry["request"]["ifNoneMatch"] = json!("*");
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [entry]})
    };
    // A lab result arrives first: its thin Patient is created.
    let mut thin = patient(PATIENT, "9434765919", "SMITH");
    thin.as_object_mut().unwrap().remove("gender");
    let outcome = f
        .store
        .apply_bundle(&create_only(&thin), at("2026-11-20T09:00:00Z"))
        .unwrap();
    assert_eq!(outcome.written(), 1);
    // The PAS's ADT then replaces it with the full demographics (a plain
    // PUT), even though its event is older: the placeholder took no event time.
    let mut full = patient(PATIENT, "9434765919", "SMITH");
    full["address"] = json!([{"line": ["1 HIGH STREET"], "postalCode": "NW3 2QG"}]);
    let outcome = f
        .store
        .apply_bundle(&bundle(&[full.clone()]), at("2026-11-20T08:00:00Z"))
        .unwrap();
    assert_eq!(outcome.written(), 1, "{outcome:?}");
    // A later lab result's Patient (newer event time) leaves them alone.
    let outcome = f
        .store
        .apply_bundle(&create_only(&thin), at("2026-11-20T11:00:00Z"))
        .unwrap();
    assert_eq!(outcome.unchanged(), 1, "{outcome:?}");
    let stored = f.store.read("Patient", PATIENT).unwrap().unwrap();
    assert_eq!(stored.version, 2);
    let content = stored.resource.unwrap();
    assert_eq!(content["address"][0]["postalCode"], "NW3 2QG");
    assert_eq!(content["gender"], "female");
    // Any other ifNoneMatch is refused, not ignored.
    let mut odd = put_entry(&thin);
    odd["request"]["ifNoneMatch"] = json!("W/\"1\"");
    let refused = f.store.apply_bundle(
        &json!({"resourceType": "Bundle", "type": "transaction", "entry": [odd]}),
        None,
    );
    assert!(refused.is_err());
}

fn entry(token: &str, patients: &[&str], status: u16) -> NewAuditEntry {
    NewAuditEntry {
        at: now_instant(),
        token_name: Some(token.to_string()),
        role: Some("clinical".to_string()),
        method: "GET".to_string(),
        path: "/fhir/Patient".to_string(),
        query: Some("identifier=9434765919".to_string()),
        patients: patients.iter().map(|p| p.to_string()).collect(),
        status,
        purpose: "unspecified".to_string(),
    }
}

#[test]
fn audit_rows_filter_by_patient_and_token_newest_first() {
    let f = open();
    let store = &f.store;
    let a = store.append_audit(&entry("gp", &["p1"], 200)).unwrap();
    let b = store
        .append_audit(&entry("ward", &["p1", "p2"], 200))
        .unwrap();
    let c = store.append_audit(&entry("gp", &[], 404)).unwrap();
    let ids = |query: AuditQuery| -> Vec<i64> {
        store.audit(&query).unwrap().iter().map(|e| e.id).collect()
    };
    let q = |patient: Option<&str>, token: Option<&str>, limit| AuditQuery {
        patient: patient.map(str::to_string),
        token: token.map(str::to_string),
        limit,
        before: None,
    };
    assert_eq!(ids(q(None, None, 10)), vec![c, b, a]);
    assert_eq!(ids(q(None, None, 2)), vec![c, b]);
    // the next page: older than the last row of the one before, on every filter
    let older = |mut query: AuditQuery, before| {
        query.before = Some(before);
        ids(query)
    };
    assert_eq!(older(q(None, None, 2), b), vec![a]);
    assert_eq!(older(q(None, Some("gp"), 10), c), vec![a]);
    assert_eq!(older(q(Some("p1"), None, 10), b), vec![a]);
    assert_eq!(ids(q(Some("p1"), None, 10)), vec![b, a]);
    assert_eq!(ids(q(Some("p2"), None, 10)), vec![b]);
    assert_eq!(ids(q(Some("p1"), Some("gp"), 10)), vec![a]);
    assert_eq!(ids(q(None, Some("gp"), 10)), vec![c, a]);
    let rows = store.audit(&q(Some("p2"), None, 10)).unwrap();
    assert_eq!(rows[0].entry.patients, vec!["p1", "p2"]);
    assert_eq!(
        rows[0].entry.query.as_deref(),
        Some("identifier=9434765919")
    );
}

#[test]
fn tokens_are_kept_as_hashes_listed_touched_and_revoked() {
    let f = open();
    let store = &f.store;
    assert!(store.add_token("ward", "clinical", &[7; 32]).unwrap());
    assert!(!store.add_token("ward", "ops", &[8; 32]).unwrap(), "a name is taken once");
    assert!(store.add_token("ops", "ops", &[9; 32]).unwrap());
    let live = store.live_tokens().unwrap();
    assert_eq!(live.len(), 2);
    assert!(live
        .iter()
        .any(|t| t.name == "ward" && t.role == "clinical" && t.hash == [7; 32]));
    let listed = store.list_tokens().unwrap();
    assert_eq!(
        listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["ops", "ward"]
    );
    assert!(listed.iter().all(|t| t.last_used_at.is_none()));
    store.touch_token("ward").unwrap();
    let listed = store.list_tokens().unwrap();
    assert!(listed[1].last_used_at.is_some());
    assert!(store.revoke_token("ward").unwrap());
    assert!(!store.revoke_token("ward").unwrap());
    assert_eq!(store.live_tokens().unwrap().len(), 1);
}

#[test]
fn objections_and_the_trail_of_their_changes() {
    let f = open();
    let store = &f.store;
    assert!(!store.has_objection("9434765919").unwrap());
    assert!(store
        .add_objection("9434765919", Some("letter"), "cli test")
        .unwrap());
    assert!(!store
        .add_objection("9434765919", Some("letter"), "cli test")
        .unwrap());
    assert!(!store
        .add_objection("9434765919", Some("phone call"), "token ops")
        .unwrap());
    assert!(store.has_objection("9434765919").unwrap());
    let listed = store.list_objections().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].note.as_deref(), Some("phone call"));
    assert!(store.remove_objection("9434765919", "cli test").unwrap());
    assert!(!store.remove_objection("9434765919", "cli test").unwrap());
    assert!(!store.has_objection("9434765919").unwrap());
    let changes = store.objection_changes(Some("9434765919"), 10).unwrap();
    let actions: Vec<(&str, &str)> = changes
        .iter()
        .map(|c| (c.action.as_str(), c.changed_by.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("removed", "cli test"),
            ("note changed", "token ops"),
            ("added", "cli test")
        ]
    );
    assert_eq!(store.objection_changes(None, 2).unwrap().len(), 2);
    assert!(store
        .objection_changes(Some("9999999999"), 10)
        .unwrap()
        .is_empty());
}

#[test]
fn decimals_keep_the_precision_they_were_sent_with() {
    // a FHIR decimal's trailing zeros are significant (a lab's `1.10` is not `1.1`)
    let f = open();
    let text = format!(
        r#"{{"resourceType": "Observation", "id": "{OBSERVATION}", "status": "final",
            "code": {{"text": "INR"}}, "valueQuantity": {{"value": 1.10}},
            "referenceRange": [{{"low": {{"value": 0.80}}, "high": {{"value": 123456789012345678901234567890.000}}}}]}}"#
    );
    let observation: serde_json::Value = serde_json::from_str(&text).unwrap();
    f.store.apply_bundle(&bundle(&[observation]), None).unwrap();
    let stored = serde_json::to_string(&current(&f.store, "Observation", OBSERVATION)).unwrap();
    for kept in [
        "\"value\":1.10",
        "\"value\":0.80",
        "\"value\":123456789012345678901234567890.000",
    ] {
        assert!(stored.contains(kept), "{kept} in {stored}");
    }
}

fn untraced_patient(id: &str, mrn: &str, family: &str) -> serde_json::Value {
    json!({
        "resourceType": "Patient",
        "id": id,
        "identifier": [{"system": MRN, "value": mrn}],
        "name": [{"family": family}]
    })
}

/// The merged patient of an A40 as the mapping writes it: an MRN, inactive,
/// `replaced-by` the survivor.
fn merged_patient(id: &str, mrn: &str, family: &str, survivor: &str) -> serde_json::Value {
    let mut merged = untraced_patient(id, mrn, family);
    merged["active"] = json!(false);
    merged["link"] =
        json!([{"other": {"reference": format!("Patient/{survivor}")}, "type": "replaced-by"}]);
    merged
}

#[test]
fn a_traced_patient_retires_the_record_made_before_the_trace() {
    // An unknown patient in ED is registered by MRN (the mappings key them by it);
    // the PAS then traces them and sends the NHS number: a new Patient id. The
    // first record is retired in favour of the traced one, and what was filed
    // under it is found from the traced one.
    let f = open();
    let untraced = "0a0a0a0a-0000-5000-8000-000000000001";
    let condition = json!({
        "resourceType": "Condition", "id": "c-ed",
        "code": {"text": "Head injury"},
        "subject": {"reference": format!("urn:uuid:{untraced}")}
    });
    f.store
        .apply_bundle(&bundle(&[untraced_patient(untraced, "MRN-9434765919", "UNKNOWN"), condition]), None)
        .unwrap();
    assert_eq!(current(&f.store, "Patient", untraced).get("active"), None);

    // the trace: the same MRN, now with the NHS number (`patient` gives both)
    f.store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "Smith")]), None)
        .unwrap();
    let old = current(&f.store, "Patient", untraced);
    assert_eq!(old["active"], false, "{old}");
    assert_eq!(old["link"][0]["type"], "replaced-by");
    assert_eq!(old["link"][0]["other"]["reference"], format!("Patient/{PATIENT}"));
    assert_eq!(old["name"][0]["family"], "UNKNOWN", "the old record is kept, not wiped");
    let everything = f.store.everything(PATIENT).unwrap().unwrap();
    assert!(everything.iter().any(|r| r["id"] == "c-ed"), "{everything:?}");
    assert_eq!(f.store.search_by_patient("Condition", PATIENT).unwrap().len(), 1);

    // what is filed under the old record later (a lab's result by MRN), or sent
    // again, is found from the traced one too
    let result = json!({
        "resourceType": "Observation", "id": "o-late", "status": "final",
        "code": {"text": "Hb"},
        "subject": {"reference": format!("Patient/{untraced}")}
    });
    let mut condition_again = json!({
        "resourceType": "Condition", "id": "c-ed",
        "code": {"text": "Head injury, minor"},
        "subject": {"reference": format!("Patient/{untraced}")}
    });
    f.store
        .apply_bundle(&bundle(&[result, condition_again.clone()]), None)
        .unwrap();
    let everything = f.store.everything(PATIENT).unwrap().unwrap();
    for id in ["o-late", "c-ed"] {
        assert!(everything.iter().any(|r| r["id"] == id), "{id} in {everything:?}");
    }
    condition_again["code"]["text"] = json!("Head injury");
    f.store
        .apply_bundle(&bundle(&[condition_again]), None)
        .unwrap();
    assert_eq!(f.store.search_by_patient("Condition", PATIENT).unwrap().len(), 1);

    // a later message that knows only the MRN (a lab, a PAS update without the
    // NHS number) does not bring the untraced record back to life
    f.store
        .apply_bundle(&bundle(&[untraced_patient(untraced, "MRN-9434765919", "UNKNOWN")]), None)
        .unwrap();
    let old = current(&f.store, "Patient", untraced);
    assert_eq!(old["active"], false, "{old}");
    let lab = "0a0a0a0a-0000-5000-8000-000000000002";
    f.store
        .apply_bundle(&bundle(&[untraced_patient(lab, "MRN-9434765919", "SMITH")]), None)
        .unwrap();
    let lab_patient = current(&f.store, "Patient", lab);
    assert_eq!(lab_patient["active"], false, "{lab_patient}");
    assert_eq!(lab_patient["link"][0]["other"]["reference"], format!("Patient/{PATIENT}"));
    // the traced record is untouched
    let traced = current(&f.store, "Patient", PATIENT);
    assert_eq!(traced.get("active"), None, "{traced}");
    assert_eq!(traced.get("link"), None, "{traced}");
}

#[test]
fn a_create_only_placeholder_never_retires_the_pas_record() {
    // the PAS's record of an untraced patient (by MRN); then a lab result (or a
    // cancellation) carries a placeholder Patient with the NHS number and the
    // same MRN: it is created, but the named record stays the live one
    let f = open();
    let untraced = "0a0a0a0a-0000-5000-8000-000000000009";
    f.store
        .apply_bundle(&bundle(&[untraced_patient(untraced, "MRN-9434765919", "SMITH")]), None)
        .unwrap();
    let mut placeholder = patient(PATIENT, "9434765919", "");
    placeholder.as_object_mut().unwrap().remove("name");
    let mut entry = put_entry(&placeholder);
    entry["request"]["ifNoneMatch"] = json!("*");
    let doc = json!({"resourceType": "Bundle", "type": "transaction", "entry": [entry]});
    f.store.apply_bundle(&doc, None).unwrap();
    assert!(f.store.read("Patient", PATIENT).unwrap().is_some());
    let named = current(&f.store, "Patient", untraced);
    assert_eq!(named.get("active"), None, "{named}");
    // the PAS's own traced update still retires it
    f.store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "SMITH")]), None)
        .unwrap();
    assert_eq!(current(&f.store, "Patient", untraced)["active"], false);
}

#[test]
fn a_shared_mrn_never_retires_a_patient_with_another_nhs_number() {
    let f = open();
    let mut other = patient(OTHER_PATIENT, "9876543210", "Brown");
    other["identifier"][1]["value"] = json!("MRN-9434765919");
    f.store.apply_bundle(&bundle(&[other]), None).unwrap();
    f.store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "Smith")]), None)
        .unwrap();
    for id in [PATIENT, OTHER_PATIENT] {
        let p = current(&f.store, "Patient", id);
        assert_eq!(p.get("active"), None, "{p}");
        assert_eq!(p.get("link"), None, "{p}");
    }
    // and an MRN-only record that two traced patients share is left alone
    let untraced = "0a0a0a0a-0000-5000-8000-000000000003";
    f.store
        .apply_bundle(&bundle(&[untraced_patient(untraced, "MRN-9434765919", "X")]), None)
        .unwrap();
    assert_eq!(current(&f.store, "Patient", untraced).get("active"), None);
}

#[test]
fn a_merged_patients_records_are_found_from_the_survivor() {
    // an A40: the merged record is `replaced-by` the survivor
    let f = open();
    let merged = "0a0a0a0a-0000-5000-8000-000000000004";
    let allergy = json!({
        "resourceType": "AllergyIntolerance", "id": "a-merged",
        "code": {"text": "Penicillin"},
        "patient": {"reference": format!("urn:uuid:{merged}")}
    });
    f.store
        .apply_bundle(&bundle(&[patient(merged, "9876543210", "Brown"), allergy]), None)
        .unwrap();
    let retired = merged_patient(merged, "OLD-1", "Brown", PATIENT);
    f.store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "Smith"), retired]), None)
        .unwrap();
    let everything = f.store.everything(PATIENT).unwrap().unwrap();
    assert!(everything.iter().any(|r| r["id"] == "a-merged"), "{everything:?}");
    // the A40 said little of the merged patient: their record is kept, retired
    let merged_now = current(&f.store, "Patient", merged);
    assert_eq!(merged_now["active"], false, "{merged_now}");
    assert_eq!(merged_now["name"][0]["family"], "Brown", "{merged_now}");
    assert_eq!(merged_now["birthDate"], "1980-02-29", "{merged_now}");
    let values: Vec<&str> = merged_now["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["value"].as_str())
        .collect();
    assert!(values.contains(&"9876543210") && values.contains(&"OLD-1"), "{values:?}");
    // and a result filed under the merged id afterwards is the survivor's too
    let result = json!({
        "resourceType": "Observation", "id": "o-after-merge", "status": "final",
        "code": {"text": "Hb"},
        "subject": {"reference": format!("Patient/{merged}")}
    });
    f.store.apply_bundle(&bundle(&[result]), None).unwrap();
    let observations = f.store.search_by_patient("Observation", PATIENT).unwrap();
    assert!(observations.iter().any(|r| r["id"] == "o-after-merge"), "{observations:?}");
}

/// Two merges into one survivor (two A40s): it replaces both records.
#[test]
fn a_second_merge_into_a_survivor_keeps_the_first() {
    let f = open();
    let (s, m1, m2) = (
        "0a0a0a0a-0000-5000-8000-0000000000c1",
        "0a0a0a0a-0000-5000-8000-0000000000c2",
        "0a0a0a0a-0000-5000-8000-0000000000c3",
    );
    let survivor = |merged: &str| {
        let mut p = untraced_patient(s, "CYS1", "Sims");
        p["active"] = json!(true);
        p["link"] = json!([{"other": {"reference": format!("Patient/{merged}")}, "type": "replaces"}]);
        p
    };
    f.store
        .apply_bundle(&bundle(&[survivor(m1), merged_patient(m1, "CYM1", "Sims", s)]), None)
        .unwrap();
    f.store
        .apply_bundle(&bundle(&[survivor(m2), merged_patient(m2, "CYM2", "Sims", s)]), None)
        .unwrap();
    let now = current(&f.store, "Patient", s);
    let others: Vec<&str> = now["link"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["other"]["reference"].as_str())
        .collect();
    assert_eq!(others, [format!("Patient/{m2}"), format!("Patient/{m1}")], "{now}");
}

/// A merge undone the other way (an A40 B into A, then one A into B, as an
/// operator puts a wrong merge right): the survivor of the latest is live, the
/// other retired in its favour; never both retired, linked round in a circle.
#[test]
fn a_merge_undone_the_other_way_leaves_the_latest_survivor_live() {
    let (a, b) = (
        "0a0a0a0a-0000-5000-8000-00000000000a",
        "0a0a0a0a-0000-5000-8000-00000000000b",
    );
    let survivor = |id: &str, mrn: &str, family: &str, merged: &str| {
        let mut p = untraced_patient(id, mrn, family);
        p["active"] = json!(true);
        p["link"] =
            json!([{"other": {"reference": format!("Patient/{merged}")}, "type": "replaces"}]);
        p
    };
    // the reverse merge's entries in either order
    for survivor_first in [true, false] {
        let f = open();
        let both = [untraced_patient(a, "CYA15", "Ayres"), untraced_patient(b, "CYB15", "Bell")];
        f.store.apply_bundle(&bundle(&both), None).unwrap();
        let first = [survivor(a, "CYA15", "Ayres", b), merged_patient(b, "CYB15", "Bell", a)];
        f.store.apply_bundle(&bundle(&first), None).unwrap();
        assert_eq!(current(&f.store, "Patient", b)["active"], false);
        let mut reverse = vec![survivor(b, "CYB15", "Bell", a), merged_patient(a, "CYA15", "Ayres", b)];
        if !survivor_first {
            reverse.reverse();
        }
        f.store.apply_bundle(&bundle(&reverse), None).unwrap();
        let (now_a, now_b) = (current(&f.store, "Patient", a), current(&f.store, "Patient", b));
        assert_eq!(now_b["active"], true, "{survivor_first}: {now_b}");
        assert_eq!(now_b["link"][0]["type"], "replaces", "{now_b}");
        assert_eq!(now_a["active"], false, "{now_a}");
        assert_eq!(now_a["link"][0]["type"], "replaced-by", "{now_a}");
        assert_eq!(now_a["link"][0]["other"]["reference"], format!("Patient/{b}"), "{now_a}");
        // and B's next update is applied to a live record
        let mut update = untraced_patient(b, "CYB15", "Bell-Jones");
        update["active"] = json!(true);
        f.store.apply_bundle(&bundle(&[update]), None).unwrap();
        let now_b = current(&f.store, "Patient", b);
        assert_eq!(now_b["active"], true, "{now_b}");
        // (an update that says nothing of the merge keeps the survivor's link)
        assert_eq!(now_b["link"][0]["type"], "replaces", "{now_b}");
        assert_eq!(now_b["name"][0]["family"], "Bell-Jones", "{now_b}");
        assert_eq!(now_b["name"][0]["family"], "Bell-Jones", "{now_b}");
    }
}

/// A chain of merges round three records (B into A, A into C, C into B): the
/// survivor of the latest is live, never all three retired in a circle.
#[test]
fn a_chain_of_merges_round_three_records_leaves_the_latest_survivor_live() {
    let f = open();
    let ids = [
        "0a0a0a0a-0000-5000-8000-0000000000a1",
        "0a0a0a0a-0000-5000-8000-0000000000b1",
        "0a0a0a0a-0000-5000-8000-0000000000c1",
    ];
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let survivor = |id: &str, mrn: &str, merged: &str| {
        let mut p = untraced_patient(id, mrn, "Chain");
        p["active"] = json!(true);
        p["link"] =
            json!([{"other": {"reference": format!("Patient/{merged}")}, "type": "replaces"}]);
        p
    };
    let all = [
        untraced_patient(a, "CHA", "Chain"),
        untraced_patient(b, "CHB", "Chain"),
        untraced_patient(c, "CHC", "Chain"),
    ];
    f.store.apply_bundle(&bundle(&all), at("2026-03-01T09:00:00Z")).unwrap();
    let merges = [
        (a, "CHA", b, "CHB", "2026-03-01T10:00:00Z"),
        (c, "CHC", a, "CHA", "2026-03-01T11:00:00Z"),
        (b, "CHB", c, "CHC", "2026-03-01T12:00:00Z"),
    ];
    for (kept, kept_mrn, gone, gone_mrn, when) in merges {
        let entries = [survivor(kept, kept_mrn, gone), merged_patient(gone, gone_mrn, "Chain", kept)];
        f.store.apply_bundle(&bundle(&entries), at(when)).unwrap();
    }
    let live: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| current(&f.store, "Patient", id)["active"] != false)
        .collect();
    assert_eq!(live, [b], "the last survivor alone is live");
    assert_eq!(current(&f.store, "Patient", c)["link"][0]["other"]["reference"], format!("Patient/{b}"));
}

#[test]
fn an_a40_naming_the_merged_record_by_mrn_alone_retires_the_record_that_holds_it() {
    // the retired record is keyed by its NHS number; the A40's MRG gives only its
    // MRN, so the mapping's merged id is another (MRN-keyed) one
    let f = open();
    let encounter_of_other = encounter("e-of-other", OTHER_PATIENT, "finished");
    f.store
        .apply_bundle(
            &bundle(&[patient(OTHER_PATIENT, "9876543210", "Brown"), encounter_of_other]),
            None,
        )
        .unwrap();
    let ghost = "0a0a0a0a-0000-5000-8000-000000000005";
    let merged = merged_patient(ghost, "MRN-9876543210", "Brown", PATIENT);
    f.store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "Smith"), merged]), None)
        .unwrap();
    let other = current(&f.store, "Patient", OTHER_PATIENT);
    assert_eq!(other["active"], false, "{other}");
    assert_eq!(other["link"][0]["other"]["reference"], format!("Patient/{PATIENT}"));
    assert_eq!(other["name"][0]["family"], "Brown");
    let encounters = f.store.search_by_patient("Encounter", PATIENT).unwrap();
    assert!(encounters.iter().any(|e| e["id"] == "e-of-other"), "{encounters:?}");
    // the A40's own merged record names the survivor it named
    let ghost_now = current(&f.store, "Patient", ghost);
    assert_eq!(ghost_now["link"][0]["other"]["reference"], format!("Patient/{PATIENT}"));
    // a late message under the merged identity (its A08, with a newer event) does
    // not bring the retired record back: it stays retired, and what it files is
    // the survivor's too
    let late = encounter("e-late", OTHER_PATIENT, "in-progress");
    f.store
        .apply_bundle(
            &bundle(&[patient(OTHER_PATIENT, "9876543210", "Brown-Smith"), late]),
            at("2030-01-01T00:00:00Z"),
        )
        .unwrap();
    let other = current(&f.store, "Patient", OTHER_PATIENT);
    assert_eq!(other["active"], false, "{other}");
    assert_eq!(other["link"][0]["other"]["reference"], format!("Patient/{PATIENT}"));
    assert_eq!(other["name"][0]["family"], "Brown-Smith", "the update is applied");
    let encounters = f.store.search_by_patient("Encounter", PATIENT).unwrap();
    assert!(encounters.iter().any(|e| e["id"] == "e-late"), "{encounters:?}");
    // the survivor is untouched
    let survivor = current(&f.store, "Patient", PATIENT);
    assert_eq!(survivor.get("active"), None, "{survivor}");
}

#[test]
fn a_preliminary_version_after_the_final_one_is_stale() {
    let f = open();
    // the patient the results are filed under, stored before
    f.store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "Smith")]), None)
        .unwrap();
    let result = |status: &str, value: i64| {
        let mut o = observation("o-k", PATIENT, ENCOUNTER);
        o["status"] = json!(status);
        o["valueQuantity"] = json!({"value": value});
        o["subject"] = json!({"reference": format!("Patient/{PATIENT}")});
        o["encounter"] = json!({"reference": format!("Encounter/{ENCOUNTER}")});
        o
    };
    f.store
        .apply_bundle(&bundle(&[result("final", 4)]), at("2026-03-01T10:00:00Z"))
        .unwrap();
    // the preliminary again, flushed from a queue with a newer MSH-7
    let outcome = f
        .store
        .apply_bundle(&bundle(&[result("preliminary", 7)]), at("2026-03-01T11:00:00Z"))
        .unwrap();
    assert_eq!(outcome.stale(), 1, "{:?}", results(&outcome));
    let now = current(&f.store, "Observation", "o-k");
    assert_eq!((now["status"].as_str(), now["valueQuantity"]["value"].as_i64()), (Some("final"), Some(4)));
    // a correction, or a withdrawal, still applies
    for status in ["corrected", "entered-in-error"] {
        let outcome = f
            .store
            .apply_bundle(&bundle(&[result(status, 5)]), at("2026-03-01T12:00:00Z"))
            .unwrap();
        assert_eq!(outcome.written(), 1, "{status}");
    }
}

/// A cancelled admission (A11: `entered-in-error`) is not brought back by a
/// later A08 that still carries the visit in its PV1; an admission of another
/// start under the same visit number is a new one and applies.
#[test]
fn a_cancelled_visit_stays_cancelled_against_later_updates_of_it() {
    let f = open();
    // the visit in `status`, admitted at `start` (none: sent without PV1-44)
    let with = |status: &str, start: Option<&str>| {
        let mut e = encounter("e-cancel", PATIENT, status);
        if let Some(start) = start {
            e["period"] = json!({"start": start});
        }
        e
    };
    let visit = |status: &str, start: &str| with(status, Some(start));
    let status = |f: &Fixture| current(&f.store, "Encounter", "e-cancel")["status"].clone();
    let p = patient(PATIENT, "9434765919", "Smith");
    let admitted = "2026-03-01T08:00:00+00:00";
    f.store
        .apply_bundle(&bundle(&[p.clone(), visit("in-progress", admitted)]), at("2026-03-01T08:00:00Z"))
        .unwrap();
    f.store
        .apply_bundle(&bundle(&[p.clone(), visit("entered-in-error", admitted)]), at("2026-03-01T09:00:00Z"))
        .unwrap();
    let outcome = f
        .store
        .apply_bundle(&bundle(&[p.clone(), visit("in-progress", admitted)]), at("2026-03-01T12:00:00Z"))
        .unwrap();
    assert_eq!(outcome.stale(), 1, "{:?}", results(&outcome));
    assert_eq!(status(&f), "entered-in-error");
    let readmitted = "2026-03-02T10:00:00+00:00";
    f.store
        .apply_bundle(&bundle(&[p.clone(), visit("in-progress", readmitted)]), at("2026-03-02T10:00:00Z"))
        .unwrap();
    assert_eq!(status(&f), "in-progress");
    // an A11 sent without the admit time, then the A08 that has it; and the
    // same instant written with another offset: the same visit
    for (cancel_start, update_start) in [
        (None, Some(admitted)),
        (Some(admitted), Some("2026-03-01T09:00:00+01:00")),
    ] {
        let f = open();
        f.store
            .apply_bundle(&bundle(&[p.clone(), with("entered-in-error", cancel_start)]), at("2026-03-01T09:00:00Z"))
            .unwrap();
        f.store
            .apply_bundle(&bundle(&[p.clone(), with("in-progress", update_start)]), at("2026-03-01T12:00:00Z"))
            .unwrap();
        assert_eq!(status(&f), "entered-in-error", "{cancel_start:?} {update_start:?}");
    }
    // an A11 without the admit time after the A01 that had it: the cancellation
    // keeps the admission's start, so a new admission under the same number
    // (another start) applies, and an update of the cancelled one does not
    let f = open();
    f.store
        .apply_bundle(&bundle(&[p.clone(), with("in-progress", Some(admitted))]), at("2026-03-01T08:00:00Z"))
        .unwrap();
    f.store
        .apply_bundle(&bundle(&[p.clone(), with("entered-in-error", None)]), at("2026-03-01T09:00:00Z"))
        .unwrap();
    f.store
        .apply_bundle(&bundle(&[p.clone(), with("in-progress", Some(admitted))]), at("2026-03-01T10:00:00Z"))
        .unwrap();
    assert_eq!(status(&f), "entered-in-error");
    f.store
        .apply_bundle(&bundle(&[p.clone(), with("in-progress", Some("2026-03-01T12:55:00+00:00"))]), at("2026-03-01T13:00:00Z"))
        .unwrap();
    assert_eq!(status(&f), "in-progress", "a new admission under the same number");
    // the other arrival order: the later A08 first, then the cancellation (an
    // older event): cancelled all the same, so the record converges
    let f = open();
    f.store
        .apply_bundle(&bundle(&[p.clone(), visit("in-progress", admitted)]), at("2026-03-01T12:00:00Z"))
        .unwrap();
    f.store
        .apply_bundle(&bundle(&[p.clone(), visit("entered-in-error", admitted)]), at("2026-03-01T09:00:00Z"))
        .unwrap();
    assert_eq!(status(&f), "entered-in-error");
    // a mistaken cancellation: the PAS sends the admission (A01) again, with the
    // same admit time. An update (A08) of it is still stale; the admission
    // event admits the visit again, as its Provenance says it is one.
    // Each version of the visit, its event, the time it was recorded, and
    // the status the record then has
    let story = |steps: &[(&str, &str, &str, &str, &str)]| {
        let f = open();
        let p = patient(PATIENT, "9434765919", "Smith");
        for (status_sent, start, code, time, expected) in steps {
            f.store
                .apply_bundle(&bundle(&[p.clone(), visit(status_sent, start), event(code)]), at(time))
                .unwrap();
            assert_eq!(status(&f), *expected, "{code} at {time}");
        }
    };
    story(&[
        ("in-progress", admitted, "A01", "2026-03-01T08:00:00Z", "in-progress"),
        ("entered-in-error", admitted, "A11", "2026-03-01T09:00:00Z", "entered-in-error"),
        ("in-progress", admitted, "A08", "2026-03-01T10:00:00Z", "entered-in-error"),
        ("in-progress", admitted, "A01", "2026-03-01T11:00:00Z", "in-progress"),
    ]);
    // a pre-admission cancelled (A38: `cancelled`) alike: an A08 still carrying
    // it does not book it again; the pre-admission sent again (A05) does
    let booked = "2026-12-01T09:00:00+00:00";
    story(&[
        ("planned", booked, "A05", "2026-03-01T08:00:00Z", "planned"),
        ("cancelled", booked, "A38", "2026-03-01T09:00:00Z", "cancelled"),
        ("planned", booked, "A08", "2026-03-01T10:00:00Z", "cancelled"),
        // (nor an A08 with another admit date: an update is no new booking)
        ("in-progress", "2026-12-02T09:00:00+00:00", "A08", "2026-03-01T10:30:00Z", "cancelled"),
        ("planned", booked, "A05", "2026-03-01T11:00:00Z", "planned"),
    ]);
}

/// A cancellation (A11) arriving after an admission sent later than it (the
/// A01 sent again after a mistaken A11) does not cancel the visit: in order,
/// that admission admitted the patient after all. After an update (A08) it
/// still does. Whether the admission sent again changed the visit or not, and
/// whatever updates it had since.
#[test]
fn a_late_cancellation_does_not_cancel_an_admission_sent_after_it() {
    let p = patient(PATIENT, "9434765919", "Smith");
    let admitted = "2026-03-01T08:00:00+00:00";
    let visit = |status: &str, ward: &str| {
        let mut e = encounter("e-late", PATIENT, status);
        e["period"] = json!({"start": admitted});
        e["location"] = json!([{"location": {"display": ward}}]);
        e
    };
    // each message as it arrives: the visit's status and ward, its event, its
    // event time, and the status the record then has
    let story = |steps: &[(&str, &str, &str, &str, &str)]| {
        let f = open();
        for (status_sent, ward, code, time, expected) in steps {
            f.store
                .apply_bundle(&bundle(&[p.clone(), visit(status_sent, ward), event(code)]), at(time))
                .unwrap();
            let stored = current(&f.store, "Encounter", "e-late");
            assert_eq!(stored["status"], *expected, "{code} at {time}: {steps:?}");
        }
    };
    // sent A01 08:00, A11 09:00, A01 11:00 (unchanged, or to another ward)
    for ward in ["Ward 1", "Ward 2"] {
        story(&[
            ("in-progress", "Ward 1", "A01", "2026-03-01T08:00:00Z", "in-progress"),
            ("in-progress", ward, "A01", "2026-03-01T11:00:00Z", "in-progress"),
            ("entered-in-error", "Ward 1", "A11", "2026-03-01T09:00:00Z", "in-progress"),
        ]);
        // and an update after the admission sent again, before the A11 arrives
        story(&[
            ("in-progress", "Ward 1", "A01", "2026-03-01T08:00:00Z", "in-progress"),
            ("in-progress", ward, "A01", "2026-03-01T11:00:00Z", "in-progress"),
            ("in-progress", "Ward 3", "A08", "2026-03-01T12:00:00Z", "in-progress"),
            ("entered-in-error", "Ward 1", "A11", "2026-03-01T09:00:00Z", "in-progress"),
        ]);
    }
    // the re-admission itself arriving after a newer update (and so stale):
    // still remembered, so the late A11 does not cancel (s24 tester, H1)
    for (first, second) in [("A01", "A08"), ("A08", "A01")] {
        let (t1, t2) = ("2026-03-01T11:00:00Z", "2026-03-01T12:00:00Z");
        let (a, b) = if first == "A01" { (t1, t2) } else { (t2, t1) };
        story(&[
            ("in-progress", "Ward 1", "A01", "2026-03-01T08:00:00Z", "in-progress"),
            ("in-progress", "Ward 2", first, a, "in-progress"),
            ("in-progress", "Ward 2", second, b, "in-progress"),
            ("entered-in-error", "Ward 1", "A11", "2026-03-01T09:00:00Z", "in-progress"),
        ]);
    }
    // the newer update first, then the late A11 (applied: nothing said
    // otherwise yet), then the admission sent between them: the visit as
    // before the cancellation, the update's (s24c tester, H1's remainder)
    for update in ["A08", "A03"] {
        let status = if update == "A03" { "finished" } else { "in-progress" };
        story(&[
            ("in-progress", "Ward 1", "A01", "2026-03-01T08:00:00Z", "in-progress"),
            (status, "Ward 2", update, "2026-03-01T12:00:00Z", status),
            ("entered-in-error", "Ward 1", "A11", "2026-03-01T09:00:00Z", "entered-in-error"),
            ("in-progress", "Ward 1", "A01", "2026-03-01T11:00:00Z", status),
        ]);
    }
    // sent A01, A11, A01 again, A11 again; the second A11 arriving before
    // the re-admission finds the visit cancelled already, and is still the
    // newest cancellation: the late re-admission does not undo it (s25
    // tester, R1)
    story(&[
        ("in-progress", "Ward 1", "A01", "2026-03-01T08:00:00Z", "in-progress"),
        ("entered-in-error", "Ward 1", "A11", "2026-03-01T09:00:00Z", "entered-in-error"),
        ("entered-in-error", "Ward 1", "A11", "2026-03-01T12:00:00Z", "entered-in-error"),
        ("in-progress", "Ward 1", "A01", "2026-03-01T11:00:00Z", "entered-in-error"),
    ]);
    // (an admission sent before the cancellation, arriving after it, does not)
    story(&[
        ("in-progress", "Ward 1", "A01", "2026-03-01T08:00:00Z", "in-progress"),
        ("in-progress", "Ward 2", "A08", "2026-03-01T12:00:00Z", "in-progress"),
        ("entered-in-error", "Ward 1", "A11", "2026-03-01T09:00:00Z", "entered-in-error"),
        ("in-progress", "Ward 1", "A01", "2026-03-01T08:30:00Z", "entered-in-error"),
    ]);
    // an update (not an admission) after the A11's time: cancelled as before
    story(&[
        ("in-progress", "Ward 1", "A01", "2026-03-01T08:00:00Z", "in-progress"),
        ("in-progress", "Ward 2", "A08", "2026-03-01T11:00:00Z", "in-progress"),
        ("entered-in-error", "Ward 1", "A11", "2026-03-01T09:00:00Z", "entered-in-error"),
    ]);
    // a late A11 sent without the admit time (PV1-44) keeps the stored
    // start, as in order (s24 tester, M2)
    let f = open();
    f.store
        .apply_bundle(&bundle(&[p.clone(), visit("in-progress", "Ward 1"), event("A01")]), at("2026-03-01T08:00:00Z"))
        .unwrap();
    f.store
        .apply_bundle(&bundle(&[p.clone(), visit("in-progress", "Ward 1"), event("A08")]), at("2026-03-01T12:00:00Z"))
        .unwrap();
    let mut no_start = visit("entered-in-error", "Ward 1");
    no_start.as_object_mut().unwrap().remove("period");
    f.store
        .apply_bundle(&bundle(&[p.clone(), no_start, event("A11")]), at("2026-03-01T09:00:00Z"))
        .unwrap();
    let stored = current(&f.store, "Encounter", "e-late");
    assert_eq!(stored["status"], "entered-in-error", "{stored}");
    assert_eq!(stored["period"]["start"], admitted, "{stored}");
    // the first admission sent after the A11 (their clocks, or a resend):
    // in order, the A11 had nothing to cancel and the A01 admitted
    story(&[
        ("in-progress", "Ward 1", "A01", "2026-03-01T10:00:00Z", "in-progress"),
        ("entered-in-error", "Ward 1", "A11", "2026-03-01T09:00:00Z", "in-progress"),
    ]);
}

/// An update whose PID leaves out the address and telephone numbers (an
/// A02's short PID) keeps them; one whose sender deleted them (`""`, a tag
/// from the mapping) drops them, and a later update that leaves them out
/// does not bring them back (s24d tester, HIGH).
#[test]
fn an_update_that_leaves_out_the_address_and_phones_keeps_them() {
    let f = open();
    let mut full = patient(PATIENT, "9434765919", "Smith");
    full["address"] = json!([{"line": ["4 Flat"], "postalCode": "NW3 2QG"}]);
    full["telecom"] = json!([{"system": "phone", "value": "020 7946 0123"}]);
    f.store.apply_bundle(&bundle(&[full.clone()]), at("2026-03-01T08:00:00Z")).unwrap();
    let short = patient(PATIENT, "9434765919", "Smith");
    f.store.apply_bundle(&bundle(std::slice::from_ref(&short)), at("2026-03-01T09:00:00Z")).unwrap();
    let stored = current(&f.store, "Patient", PATIENT);
    assert_eq!(stored["address"], full["address"], "{stored}");
    assert_eq!(stored["telecom"], full["telecom"], "{stored}");
    // the address deleted, the phones left out: the phones stay
    let mut deleted = short.clone();
    deleted["meta"] = json!({"tag": [{"system": "urn:junction:tag", "code": "address-deleted"}]});
    f.store.apply_bundle(&bundle(&[deleted]), at("2026-03-01T10:00:00Z")).unwrap();
    let stored = current(&f.store, "Patient", PATIENT);
    assert!(stored.get("address").is_none(), "{stored}");
    assert_eq!(stored["telecom"], full["telecom"], "{stored}");
    f.store.apply_bundle(&bundle(std::slice::from_ref(&short)), at("2026-03-01T11:00:00Z")).unwrap();
    let stored = current(&f.store, "Patient", PATIENT);
    assert!(stored.get("address").is_none(), "{stored}");
    // (nor does the older full version, arriving late: the deletion stays said)
    f.store.apply_bundle(&bundle(&[full.clone()]), at("2026-03-01T08:30:00Z")).unwrap();
    let stored = current(&f.store, "Patient", PATIENT);
    assert!(stored.get("address").is_none(), "{stored}");
    assert!(crate::fhir_types::has_tag(&stored, crate::fhir_types::ADDRESS_DELETED), "{stored}");
    // the other order: the short update first, the full one late: the
    // record has what the full one said, as in order (s24e tester)
    let g = open();
    g.store.apply_bundle(&bundle(std::slice::from_ref(&short)), at("2026-03-01T09:00:00Z")).unwrap();
    g.store.apply_bundle(&bundle(&[full.clone()]), at("2026-03-01T08:00:00Z")).unwrap();
    let stored = current(&g.store, "Patient", PATIENT);
    assert_eq!(stored["address"], full["address"], "{stored}");
    assert_eq!(stored["telecom"], full["telecom"], "{stored}");
    // sent full, deleted, short; arriving short, the deletion, the full one:
    // in order the address is deleted, and so it stays
    let h = open();
    h.store.apply_bundle(&bundle(std::slice::from_ref(&short)), at("2026-03-01T11:00:00Z")).unwrap();
    let mut deletion = short.clone();
    deletion["meta"] = json!({"tag": [{"system": "urn:junction:tag", "code": "address-deleted"}]});
    h.store.apply_bundle(&bundle(&[deletion]), at("2026-03-01T10:00:00Z")).unwrap();
    h.store.apply_bundle(&bundle(&[full.clone()]), at("2026-03-01T08:00:00Z")).unwrap();
    let stored = current(&h.store, "Patient", PATIENT);
    assert!(stored.get("address").is_none(), "{stored}");
    assert_eq!(stored["telecom"], full["telecom"], "{stored}");
    // a new address replaces the old one
    let mut moved = patient(PATIENT, "9434765919", "Smith");
    moved["address"] = json!([{"line": ["9 Road"], "postalCode": "E1 6AN"}]);
    f.store.apply_bundle(&bundle(&[moved.clone()]), at("2026-03-01T12:00:00Z")).unwrap();
    let stored = current(&f.store, "Patient", PATIENT);
    assert_eq!(stored["address"], moved["address"], "{stored}");
}

/// A second hospital's PAS writes the patient with its own MRN: the first
/// hospital's MRN stays on the record (and still finds it), while a sender's
/// own identifier (same system) is the sender's to change.
#[test]
fn identifiers_of_other_assigners_are_kept() {
    let f = open();
    const OTHER: &str = "urn:junction:local-id:rc1:mr";
    let mut first = patient(PATIENT, "9434765919", "Smith");
    f.store.apply_bundle(&bundle(&[first.clone()]), at("2026-03-01T08:00:00Z")).unwrap();
    let mut second = patient(PATIENT, "9434765919", "Smith");
    second["identifier"] = json!([{"system": NHS, "value": "9434765919"}, {"system": OTHER, "value": "RC1B1"}]);
    f.store.apply_bundle(&bundle(&[second]), at("2026-03-01T09:00:00Z")).unwrap();
    let values = |f: &Fixture| -> Vec<String> {
        current(&f.store, "Patient", PATIENT)["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["value"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(values(&f), ["9434765919", "RC1B1", "MRN-9434765919"]);
    let found = f
        .store
        .search_patient_by_identifier(Some(MRN), "MRN-9434765919")
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    // the first hospital gives its patient a new MRN: it replaces its own
    first["identifier"][1]["value"] = json!("MRN-NEW");
    f.store.apply_bundle(&bundle(&[first]), at("2026-03-01T10:00:00Z")).unwrap();
    assert_eq!(values(&f), ["9434765919", "MRN-NEW", "RC1B1"]);
}

/// An update with a partial PV1 after a discharge (an A08 carrying only the
/// class and visit number, as some PAS send once the patient is home) keeps
/// what it does not say, and does not take the finished stay back to
/// in-progress; a cancelled discharge (A13) does.
#[test]
fn an_update_after_a_discharge_keeps_the_finished_stay() {
    let f = open();
    let p = patient(PATIENT, "9434765919", "Smith");
    let mut admitted = encounter("e-stay", PATIENT, "in-progress");
    admitted["period"] = json!({"start": "2026-03-01T08:00:00+00:00"});
    admitted["location"] = json!([{"status": "active", "location": {"display": "Ward 3"}}]);
    let mut discharged = admitted.clone();
    discharged["status"] = json!("finished");
    discharged["period"]["end"] = json!("2026-03-04T14:00:00+00:00");
    discharged["location"][0]["status"] = json!("completed");
    discharged["hospitalization"] = json!({"dischargeDisposition": {"text": "home"}});
    let mut partial = encounter("e-stay", PATIENT, "in-progress");
    partial.as_object_mut().unwrap().remove("period");
    f.store
        .apply_bundle(&bundle(&[p.clone(), admitted, event("A01")]), at("2026-03-01T08:00:00Z"))
        .unwrap();
    f.store
        .apply_bundle(&bundle(&[p.clone(), discharged, event("A03")]), at("2026-03-04T14:00:00Z"))
        .unwrap();
    f.store
        .apply_bundle(&bundle(&[p.clone(), partial, event("A08")]), at("2026-03-05T09:00:00Z"))
        .unwrap();
    let stay = current(&f.store, "Encounter", "e-stay");
    assert_eq!(stay["status"], "finished", "{stay}");
    assert_eq!(stay["period"]["start"], "2026-03-01T08:00:00+00:00", "{stay}");
    assert_eq!(stay["period"]["end"], "2026-03-04T14:00:00+00:00", "{stay}");
    assert_eq!(stay["location"][0]["location"]["display"], "Ward 3", "{stay}");
    assert_eq!(stay["location"][0]["status"], "completed", "{stay}");
    assert_eq!(stay["hospitalization"]["dischargeDisposition"]["text"], "home", "{stay}");
    // the admission sent again after the discharge (same start) does not
    // reopen it
    let mut again = encounter("e-stay", PATIENT, "in-progress");
    again["period"] = json!({"start": "2026-03-01T08:00:00+00:00"});
    f.store
        .apply_bundle(&bundle(&[p.clone(), again, event("A01")]), at("2026-03-05T09:30:00Z"))
        .unwrap();
    assert_eq!(current(&f.store, "Encounter", "e-stay")["status"], "finished");
    // the discharge cancelled (A13): in progress again, without its end or
    // its discharge disposition
    let mut reopened = encounter("e-stay", PATIENT, "in-progress");
    reopened["period"] = json!({"start": "2026-03-01T08:00:00+00:00"});
    f.store
        .apply_bundle(&bundle(&[p, reopened, event("A13")]), at("2026-03-05T10:00:00Z"))
        .unwrap();
    let stay = current(&f.store, "Encounter", "e-stay");
    assert_eq!(stay["status"], "in-progress", "{stay}");
    assert!(stay["period"].get("end").is_none(), "{stay}");
    assert!(stay.get("hospitalization").is_none(), "{stay}");
    assert_eq!(stay["location"][0]["location"]["display"], "Ward 3", "{stay}");
    // (the A13 named no ward: the patient is back in the last one)
    assert_eq!(stay["location"][0]["status"], "active", "{stay}");
}

/// One stay's Encounters as the ADT mapping makes them: admitted to WARDA
/// (A01), discharged (A03 at 10:00), the discharge cancelled (A13, naming
/// WARDA or no ward), transferred to WARDB (A02), the transfer cancelled (A12).
struct StayMessages {
    admitted: Value,
    discharged: Value,
    reopened: Value,
    no_ward: Value,
    transferred: Value,
    cancelled_transfer: Value,
}

fn stay_messages() -> StayMessages {
    let visit = |status: &str, locations: Vec<Value>| {
        let mut e = encounter("e", PATIENT, status);
        e["period"] = json!({"start": "2026-03-01T08:00:00+00:00"});
        e["location"] = Value::Array(locations);
        e
    };
    let tagged = |mut e: Value, code: &str| {
        e["meta"] = json!({"tag": [{"system": "urn:junction:tag", "code": code}]});
        e
    };
    let mut discharged = visit("finished", vec![place("WARDA", "completed")]);
    discharged["period"]["end"] = json!("2026-03-01T10:00:00+00:00");
    discharged["hospitalization"] = json!({"dischargeDisposition": {"text": "home"}});
    let reopened = tagged(
        visit("in-progress", vec![place("WARDA", "active")]),
        "discharge-cancelled",
    );
    let mut no_ward = reopened.clone();
    no_ward.as_object_mut().unwrap().remove("location");
    StayMessages {
        admitted: visit("in-progress", vec![place("WARDA", "active")]),
        discharged,
        reopened,
        no_ward,
        transferred: visit(
            "in-progress",
            vec![place("WARDB", "active"), place("WARDA", "completed")],
        ),
        cancelled_transfer: tagged(
            visit("in-progress", vec![place("WARDA", "active")]),
            "transfer-cancelled",
        ),
    }
}

/// Applies the messages `sent` (each Encounter, its event, its event time)
/// in `order`, each Encounter under id `id`, with Patient `p`.
fn send_as(f: &Fixture, p: &Value, id: &str, sent: &[(Value, &str, &str)], order: &[usize]) {
    for &k in order {
        let (resource, code, time) = &sent[k];
        let mut resource = resource.clone();
        resource["id"] = json!(id);
        f.store
            .apply_bundle(&bundle(&[p.clone(), resource, event(code)]), at(time))
            .unwrap();
    }
}

/// A cancelled discharge (A13) that arrives after a transfer sent after it
/// (A02) reopens the stay in the ward the patient moved to, not the A13's:
/// sent A01, A03, A13, A02; arriving with the A13 last (s24c tester, N1: the
/// patient was put back on the ward they had left). Each order ends as the
/// order they were sent in does.
#[test]
fn a_late_cancelled_discharge_keeps_a_transfer_sent_after_it() {
    let f = open();
    let p = patient(PATIENT, "9434765919", "Smith");
    let StayMessages {
        admitted,
        discharged,
        reopened,
        no_ward,
        transferred,
        cancelled_transfer,
    } = stay_messages();
    // (status, each ward's status) of visit `id` after the messages `sent`
    // (resource, event, event time) arrive in `order`
    let outcome = |id: &str, sent: &[(Value, &str, &str)], order: &[usize]| {
        send_as(&f, &p, id, sent, order);
        let stay = current(&f.store, "Encounter", id);
        let mut wards = wards_of(&f, id);
        wards.sort();
        (stay["status"].as_str().unwrap().to_string(), wards, stay)
    };
    let moved = vec![
        ("WARDA".to_string(), "completed".to_string()),
        ("WARDB".to_string(), "active".to_string()),
    ];
    // sent A01, A03, A13, A02; then the same with an A13 that names no ward
    // (s25 tester, Y1: no ward was left active); then with the transfer
    // cancelled after (A12), which a late A13 does not bring back (s25
    // tester, Y2)
    let stories = [
        (reopened, &moved, &[[0, 1, 3, 2], [0, 3, 1, 2], [3, 0, 1, 2], [1, 3, 0, 2]][..]),
        (no_ward, &moved, &[[0, 1, 3, 2], [0, 3, 1, 2], [3, 0, 1, 2], [1, 3, 0, 2]][..]),
    ];
    for (n, (a13, expected, orders)) in stories.iter().enumerate() {
        let sent = [
            (admitted.clone(), "A01", "2026-03-01T08:00:00Z"),
            (discharged.clone(), "A03", "2026-03-01T10:00:00Z"),
            (a13.clone(), "A13", "2026-03-01T11:00:00Z"),
            (transferred.clone(), "A02", "2026-03-01T12:00:00Z"),
        ];
        let (status, wards, stay) = outcome(&format!("e-{n}-sent"), &sent, &[0, 1, 2, 3]);
        assert_eq!(status, "in-progress", "{stay}");
        assert_eq!(&wards, *expected, "in order: {stay}");
        for (k, order) in orders.iter().enumerate() {
            let (status, wards, stay) = outcome(&format!("e-{n}-late{k}"), &sent, order);
            assert_eq!(status, "in-progress", "{order:?}: {stay}");
            assert_eq!(&wards, *expected, "{order:?}: {stay}");
        }
    }
    // (with an A13 that names a ward, and with one that names none: s25b
    // tester, N2, where no ward was left active)
    for (n, a13) in [&stories[0].0, &stories[1].0].into_iter().enumerate() {
    let sent = [
        (admitted.clone(), "A01", "2026-03-01T08:00:00Z"),
        (discharged.clone(), "A03", "2026-03-01T10:00:00Z"),
        (a13.clone(), "A13", "2026-03-01T11:00:00Z"),
        (transferred.clone(), "A02", "2026-03-01T12:00:00Z"),
        (cancelled_transfer.clone(), "A12", "2026-03-01T13:00:00Z"),
    ];
    // (the ward the patient is in; the cancelled one is in the history of
    // some orders only: the location history's order is not covered)
    let active = |wards: &[(String, String)]| -> Vec<String> {
        wards
            .iter()
            .filter(|(_, status)| status == "active")
            .map(|(w, _)| w.clone())
            .collect()
    };
    let (_, wards, stay) = outcome(&format!("e-a12-{n}-sent"), &sent, &[0, 1, 2, 3, 4]);
    assert_eq!(active(&wards), ["WARDA"], "in order: {stay}");
    for (k, order) in [[0, 1, 3, 4, 2], [0, 3, 4, 1, 2], [3, 0, 1, 4, 2], [0, 3, 1, 4, 2]].iter().enumerate() {
        let (status, wards, stay) = outcome(&format!("e-a12-{n}-late{k}"), &sent, order);
        assert_eq!(status, "in-progress", "{order:?}: {stay}");
        assert_eq!(active(&wards), ["WARDA"], "{order:?}: {stay}");
    }
    }
}

/// A discharge (A03) arriving after a newer update that did not say the stay
/// ended (an A08 sent after it, without PV1-45) ends the stay as in order: its
/// end, disposition, and wards completed; the wards of a late admission are
/// filled into a visit that named none. Not when a newer cancelled discharge
/// (A13) reopened the stay, even after an update over the A13.
#[test]
fn a_discharge_arriving_late_ends_the_stay_unless_it_was_cancelled() {
    let f = open();
    let p = patient(PATIENT, "9434765919", "Smith");
    let mut admitted = encounter("e-late", PATIENT, "in-progress");
    admitted["period"] = json!({"start": "2026-03-01T08:00:00+00:00"});
    admitted["location"] = json!([{"status": "active", "location": {"display": "AMU"}}]);
    let mut discharged = admitted.clone();
    discharged["status"] = json!("finished");
    discharged["period"]["end"] = json!("2026-03-04T14:00:00+00:00");
    discharged["location"][0]["status"] = json!("completed");
    discharged["hospitalization"] = json!({"dischargeDisposition": {"text": "home"}});
    let mut update = encounter("e-late", PATIENT, "in-progress");
    update["period"] = json!({"start": "2026-03-01T08:00:00+00:00"});
    // the update after the discharge arrives first, then the admission and
    // the discharge, late (the whole stay backwards)
    f.store
        .apply_bundle(&bundle(&[p.clone(), update.clone(), event("A08")]), at("2026-03-05T09:00:00Z"))
        .unwrap();
    f.store
        .apply_bundle(&bundle(&[p.clone(), discharged.clone(), event("A03")]), at("2026-03-04T14:00:00Z"))
        .unwrap();
    f.store
        .apply_bundle(&bundle(&[p.clone(), admitted.clone(), event("A01")]), at("2026-03-01T08:00:00Z"))
        .unwrap();
    let stay = current(&f.store, "Encounter", "e-late");
    assert_eq!(stay["status"], "finished", "{stay}");
    // (in order: a discharge naming no ward leaves none active)
    let mut no_ward = discharged.clone();
    no_ward["id"] = json!("e-noward");
    no_ward.as_object_mut().unwrap().remove("location");
    let mut admitted_nw = admitted.clone();
    admitted_nw["id"] = json!("e-noward");
    f.store
        .apply_bundle(&bundle(&[p.clone(), admitted_nw, event("A01")]), at("2026-03-01T08:00:00Z"))
        .unwrap();
    f.store
        .apply_bundle(&bundle(&[p.clone(), no_ward, event("A03")]), at("2026-03-04T14:00:00Z"))
        .unwrap();
    let ended = current(&f.store, "Encounter", "e-noward");
    assert_eq!(ended["location"][0]["status"], "completed", "{ended}");
    assert_eq!(stay["period"]["end"], "2026-03-04T14:00:00+00:00", "{stay}");
    assert_eq!(stay["hospitalization"]["dischargeDisposition"]["text"], "home", "{stay}");
    assert_eq!(stay["location"][0]["location"]["display"], "AMU", "{stay}");
    assert_eq!(stay["location"][0]["status"], "completed", "{stay}");

    // another stay: discharged, the discharge cancelled (A13) and an update
    // after that, then the discharge sent again late: still in progress
    let mut cancelled = update.clone();
    cancelled["id"] = json!("e-late2");
    cancelled["meta"] = json!({"tag": [{"system": "urn:junction:tag", "code": "discharge-cancelled"}]});
    let mut update2 = update.clone();
    update2["id"] = json!("e-late2");
    let mut admitted2 = admitted.clone();
    admitted2["id"] = json!("e-late2");
    let mut discharged2 = discharged.clone();
    discharged2["id"] = json!("e-late2");
    f.store
        .apply_bundle(&bundle(&[p.clone(), admitted2, event("A01")]), at("2026-03-01T08:00:00Z"))
        .unwrap();
    f.store
        .apply_bundle(&bundle(&[p.clone(), cancelled, event("A13")]), at("2026-03-05T10:00:00Z"))
        .unwrap();
    f.store
        .apply_bundle(&bundle(&[p.clone(), update2, event("A08")]), at("2026-03-05T11:00:00Z"))
        .unwrap();
    let stay = current(&f.store, "Encounter", "e-late2");
    assert!(
        crate::fhir_types::discharge_cancelled(&stay),
        "the cancellation stays said over the update: {stay}"
    );
    f.store
        .apply_bundle(&bundle(&[p.clone(), discharged2, event("A03")]), at("2026-03-04T14:00:00Z"))
        .unwrap();
    let stay = current(&f.store, "Encounter", "e-late2");
    assert_eq!(stay["status"], "in-progress", "{stay}");
    assert!(stay["period"].get("end").is_none(), "{stay}");
    // sent A01, A03, A13, A08; arriving A01, A08, the A13 (late), the A03
    // (later still): in order the stay is open, and so it stays (s24
    // tester, M1: the late A13 was dropped, so the A03 ended the stay)
    let mut a13_late = update.clone();
    a13_late["id"] = json!("e-late5");
    a13_late["meta"] = json!({"tag": [{"system": "urn:junction:tag", "code": "discharge-cancelled"}]});
    let renamed = |e: &Value| {
        let mut e = e.clone();
        e["id"] = json!("e-late5");
        e
    };
    for (visit, code, time) in [
        (renamed(&admitted), "A01", "2026-03-01T08:00:00Z"),
        (renamed(&update), "A08", "2026-03-05T11:00:00Z"),
        (a13_late, "A13", "2026-03-05T10:00:00Z"),
        (renamed(&discharged), "A03", "2026-03-04T14:00:00Z"),
    ] {
        f.store
            .apply_bundle(&bundle(&[p.clone(), visit, event(code)]), at(time))
            .unwrap();
    }
    let stay = current(&f.store, "Encounter", "e-late5");
    assert_eq!(stay["status"], "in-progress", "{stay}");
    assert!(stay["period"].get("end").is_none(), "{stay}");
    // a third stay: admitted, discharged, then an update recorded after the
    // discharge's cancellation (A13) arrives before the A13: the late A13
    // still reopens the stay; a discharge after the A13 is not undone by it
    let id = |e: &Value, to: &str| {
        let mut e = e.clone();
        e["id"] = json!(to);
        e
    };
    let mut a13 = update.clone();
    a13["meta"] = json!({"tag": [{"system": "urn:junction:tag", "code": "discharge-cancelled"}]});
    for (visit, a03_again) in [("e-late3", None), ("e-late4", Some("2026-03-05T12:00:00Z"))] {
        f.store
            .apply_bundle(&bundle(&[p.clone(), id(&admitted, visit), event("A01")]), at("2026-03-01T08:00:00Z"))
            .unwrap();
        f.store
            .apply_bundle(&bundle(&[p.clone(), id(&discharged, visit), event("A03")]), at("2026-03-04T14:00:00Z"))
            .unwrap();
        if let Some(when) = a03_again {
            let mut again = id(&discharged, visit);
            again["period"]["end"] = json!("2026-03-05T12:00:00+00:00");
            f.store
                .apply_bundle(&bundle(&[p.clone(), again, event("A03")]), at(when))
                .unwrap();
        }
        f.store
            .apply_bundle(&bundle(&[p.clone(), id(&update, visit), event("A08")]), at("2026-03-05T13:00:00Z"))
            .unwrap();
        f.store
            .apply_bundle(&bundle(&[p.clone(), id(&a13, visit), event("A13")]), at("2026-03-05T10:00:00Z"))
            .unwrap();
        let stay = current(&f.store, "Encounter", visit);
        if a03_again.is_none() {
            assert_eq!(stay["status"], "in-progress", "{stay}");
            assert!(stay["period"].get("end").is_none(), "{stay}");
            assert!(crate::fhir_types::discharge_cancelled(&stay), "{stay}");
        } else {
            assert_eq!(stay["status"], "finished", "{stay}");
            assert_eq!(stay["period"]["end"], "2026-03-05T12:00:00+00:00", "{stay}");
        }
    }
    // a fifth: discharged, the discharge cancelled (A13 at 10:00), then
    // discharged again (A03 at 12:00), which arrives after a newer update
    // (13:00): the new discharge ends the stay, as in order; the old one,
    // sent again late, did not (above)
    let visit = "e-late5";
    let mut again = id(&discharged, visit);
    again["period"]["end"] = json!("2026-03-05T12:00:00+00:00");
    again["hospitalization"] = json!({"dischargeDisposition": {"text": "care home"}});
    // each (resource, event, event time), in the order it arrives
    let send = |messages: Vec<(Value, &str, &str)>| {
        for (resource, code, when) in messages {
            f.store
                .apply_bundle(&bundle(&[p.clone(), resource, event(code)]), at(when))
                .unwrap();
        }
    };
    send(vec![
        (id(&admitted, visit), "A01", "2026-03-01T08:00:00Z"),
        (id(&discharged, visit), "A03", "2026-03-04T14:00:00Z"),
        (id(&a13, visit), "A13", "2026-03-05T10:00:00Z"),
        (id(&update, visit), "A08", "2026-03-05T13:00:00Z"),
    ]);
    let stay = current(&f.store, "Encounter", visit);
    assert_eq!(stay["status"], "in-progress", "{stay}");
    assert_eq!(
        crate::fhir_types::tag_event_time(&stay, crate::fhir_types::DISCHARGE_CANCELLED),
        at("2026-03-05T10:00:00Z"),
        "the cancellation is kept with its time over the update: {stay}"
    );
    send(vec![(id(&discharged, visit), "A03", "2026-03-04T14:00:00Z")]);
    assert_eq!(current(&f.store, "Encounter", visit)["status"], "in-progress");
    send(vec![(again, "A03", "2026-03-05T12:00:00Z")]);
    let stay = current(&f.store, "Encounter", visit);
    assert_eq!(stay["status"], "finished", "{stay}");
    assert_eq!(stay["period"]["end"], "2026-03-05T12:00:00+00:00", "{stay}");
    assert_eq!(stay["hospitalization"]["dischargeDisposition"]["text"], "care home", "{stay}");
    assert!(!crate::fhir_types::discharge_cancelled(&stay), "{stay}");
    assert_eq!(stay["location"][0]["status"], "completed", "{stay}");

    // a sixth: an update after the discharge that says the stay ended
    // (PV1-45) but not how (no PV1-36) arrives before the discharge: the
    // discharge's disposition is kept, as in order
    let visit = "e-late6";
    let mut ended = id(&update, visit);
    ended["status"] = json!("finished");
    ended["period"]["end"] = json!("2026-03-04T14:00:00+00:00");
    send(vec![
        (id(&admitted, visit), "A01", "2026-03-01T08:00:00Z"),
        (ended, "A08", "2026-03-05T09:00:00Z"),
        (id(&discharged, visit), "A03", "2026-03-04T14:00:00Z"),
    ]);
    let stay = current(&f.store, "Encounter", visit);
    assert_eq!(stay["status"], "finished", "{stay}");
    assert_eq!(stay["period"]["end"], "2026-03-04T14:00:00+00:00", "{stay}");
    assert_eq!(stay["hospitalization"]["dischargeDisposition"]["text"], "home", "{stay}");
}

/// A location of ward `ward` (`RAJ/<ward>`) with `status`.
fn place(ward: &str, status: &str) -> Value {
    json!({"status": status, "location": {"identifier": {"value": format!("RAJ/{ward}")}, "display": ward}})
}

/// The wards of Encounter `id` as (display, status).
fn wards_of(f: &Fixture, id: &str) -> Vec<(String, String)> {
    current(&f.store, "Encounter", id)["location"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["location"]["display"].as_str().unwrap().to_string(),
                l["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(w, s)| (w.to_string(), s.to_string()))
        .collect()
}

/// A transfer arriving after a newer update that named no ward (an A08
/// without PV1-3, which kept the admission ward) moves the patient as in
/// order: the ward left completed, the new one active; a transfer the visit
/// has already heard of is history only.
#[test]
fn a_transfer_arriving_late_moves_the_patient() {
    let f = open();
    let p = patient(PATIENT, "9434765919", "Smith");
    let stay = |locations: Option<Value>| {
        let mut e = encounter("e-late-move", PATIENT, "in-progress");
        e["period"] = json!({"start": "2026-03-01T08:00:00+00:00"});
        if let Some(locations) = locations {
            e["location"] = locations;
        }
        e
    };
    let apply = |e: Value, trigger: &str, when: &str| {
        f.store
            .apply_bundle(&bundle(&[p.clone(), e, event(trigger)]), at(when))
            .unwrap();
    };
    apply(stay(Some(json!([place("AMU", "active")]))), "A01", "2026-03-01T08:00:00Z");
    apply(stay(None), "A08", "2026-03-01T15:00:00Z");
    apply(
        stay(Some(json!([place("WARD 3", "active"), place("AMU", "completed")]))),
        "A02",
        "2026-03-01T12:00:00Z",
    );
    // (as the A02 listed them, as in order)
    let wards = |f: &Fixture| wards_of(f, "e-late-move");
    assert_eq!(wards(&f), pairs(&[("WARD 3", "active"), ("AMU", "completed")]));
    // then an older transfer to WARD 3 again (sent twice): nothing new
    apply(
        stay(Some(json!([place("WARD 3", "active"), place("AMU", "completed")]))),
        "A02",
        "2026-03-01T11:00:00Z",
    );
    assert_eq!(wards(&f), pairs(&[("WARD 3", "active"), ("AMU", "completed")]));
    // a transfer cancelled (A12, back to WARD 3) and an update, then the
    // cancelled transfer (to WARD 7) arriving late: it does not move the
    // patient, and the cancellation stays said over the update
    let mut cancelled = stay(Some(json!([place("WARD 3", "active")])));
    cancelled["meta"] = json!({"tag": [{"system": "urn:junction:tag", "code": "transfer-cancelled"}]});
    apply(cancelled, "A12", "2026-03-02T10:00:00Z");
    apply(stay(None), "A08", "2026-03-02T11:00:00Z");
    apply(
        stay(Some(json!([place("WARD 7", "active"), place("WARD 3", "completed")]))),
        "A02",
        "2026-03-02T09:00:00Z",
    );
    assert_eq!(wards(&f), pairs(&[("AMU", "completed"), ("WARD 3", "active")]));
    let visit = current(&f.store, "Encounter", "e-late-move");
    assert!(crate::fhir_types::transfer_cancelled(&visit), "{visit}");
    // a new transfer (in order) ends what the cancellation said
    apply(
        stay(Some(json!([place("WARD 9", "active"), place("WARD 3", "completed")]))),
        "A02",
        "2026-03-02T12:00:00Z",
    );
    let visit = current(&f.store, "Encounter", "e-late-move");
    assert!(!crate::fhir_types::transfer_cancelled(&visit), "{visit}");
}

/// Transfers and updates that name only where the patient is now (no PV1-6)
/// keep the wards before in the location history; a cancelled transfer (A12)
/// drops the ward the patient never went to; a bed move inside a ward is no
/// ward left, and the ward alone keeps the stored bed; an update after the
/// discharge that leaves out the disposition keeps it.
#[test]
fn the_location_history_keeps_earlier_wards() {
    let f = open();
    let p = patient(PATIENT, "9434765919", "Smith");
    let stay = |locations: Value, status: &str| {
        let mut e = encounter("e-moves", PATIENT, status);
        e["period"] = json!({"start": "2026-03-01T08:00:00+00:00"});
        e["location"] = locations;
        e
    };
    let wards = |f: &Fixture| wards_of(f, "e-moves");
    // (the locations sent, the trigger, when, the wards expected after)
    type Step<'a> = (Value, &'a str, &'a str, &'a [(&'a str, &'a str)]);
    let steps: [Step; 9] = [
        (json!([place("AMU", "active")]), "A01", "2026-03-01T08:00:00Z", &[("AMU", "active")]),
        // a transfer without PV1-6
        (json!([place("WARD 3", "active")]), "A02", "2026-03-01T12:00:00Z", &[("AMU", "completed"), ("WARD 3", "active")]),
        // a transfer with it
        (
            json!([place("WARD 7", "active"), place("WARD 3", "completed")]),
            "A02",
            "2026-03-02T12:00:00Z",
            &[("AMU", "completed"), ("WARD 3", "completed"), ("WARD 7", "active")],
        ),
        // an update naming where the patient is
        (
            json!([place("WARD 7", "active")]),
            "A08",
            "2026-03-02T13:00:00Z",
            &[("AMU", "completed"), ("WARD 3", "completed"), ("WARD 7", "active")],
        ),
        // the last transfer cancelled: back on WARD 3, WARD 7 gone
        (json!([place("WARD 3", "active")]), "A12", "2026-03-02T14:00:00Z", &[("AMU", "completed"), ("WARD 3", "active")]),
        // a bed of WARD 3, and then a transfer whose PV1-6 names the ward
        // alone: one place said more or less finely, not two
        (json!([place("WARD 3/BED 4", "active")]), "A08", "2026-03-02T15:00:00Z", &[("AMU", "completed"), ("WARD 3/BED 4", "active")]),
        (
            json!([place("WARD 9", "active"), place("WARD 3", "completed")]),
            "A02",
            "2026-03-02T16:00:00Z",
            &[("AMU", "completed"), ("WARD 3", "completed"), ("WARD 9", "active")],
        ),
        // an update naming the site alone (PV1-3 `^^^RAJ`) is no coarser form
        // of every ward: the history stays
        (
            json!([{"status": "active", "location": {"identifier": {"value": "RAJ"}, "display": "SITE"}}]),
            "A08",
            "2026-03-02T17:00:00Z",
            &[("AMU", "completed"), ("WARD 3", "completed"), ("WARD 9", "completed"), ("SITE", "active")],
        ),
        (
            json!([place("WARD 9", "active")]),
            "A08",
            "2026-03-02T18:00:00Z",
            &[("AMU", "completed"), ("WARD 3", "completed"), ("SITE", "completed"), ("WARD 9", "active")],
        ),
    ];
    for (locations, trigger, when, expected) in steps {
        f.store
            .apply_bundle(&bundle(&[p.clone(), stay(locations, "in-progress"), event(trigger)]), at(when))
            .unwrap();
        assert_eq!(wards(&f), pairs(expected), "after the {trigger} at {when}");
    }
    // a bed move inside WARD 9 whose PV1-6 names the ward alone: the patient
    // did not leave WARD 9; then updates naming the ward alone keep the bed
    let beds: [Step; 3] = [
        (json!([place("WARD 9/BED 1", "active")]), "A08", "2026-03-02T19:00:00Z", &[("AMU", "completed"), ("WARD 3", "completed"), ("SITE", "completed"), ("WARD 9/BED 1", "active")]),
        (
            json!([place("WARD 9/BED 2", "active"), place("WARD 9", "completed")]),
            "A02",
            "2026-03-02T20:00:00Z",
            &[("AMU", "completed"), ("WARD 3", "completed"), ("SITE", "completed"), ("WARD 9/BED 1", "completed"), ("WARD 9/BED 2", "active")],
        ),
        (
            json!([place("WARD 9", "active")]),
            "A08",
            "2026-03-02T21:00:00Z",
            &[("AMU", "completed"), ("WARD 3", "completed"), ("SITE", "completed"), ("WARD 9/BED 1", "completed"), ("WARD 9/BED 2", "active")],
        ),
    ];
    for (locations, trigger, when, expected) in beds {
        f.store
            .apply_bundle(&bundle(&[p.clone(), stay(locations, "in-progress"), event(trigger)]), at(when))
            .unwrap();
        assert_eq!(wards(&f), pairs(expected), "after the {trigger} at {when}");
    }
    // the discharge from WARD 9, then an A08 with the discharge time and no
    // disposition
    let mut discharged = stay(json!([place("WARD 9/BED 2", "completed")]), "finished");
    discharged["period"]["end"] = json!("2026-03-04T14:00:00+00:00");
    discharged["hospitalization"] = json!({"dischargeDisposition": {"text": "home"}});
    f.store
        .apply_bundle(&bundle(&[p.clone(), discharged, event("A03")]), at("2026-03-04T14:00:00Z"))
        .unwrap();
    let mut update = stay(json!([place("WARD 9/BED 2", "completed")]), "finished");
    update["period"]["end"] = json!("2026-03-04T14:00:00+00:00");
    update["hospitalization"] = json!({"admitSource": {"text": "GP"}});
    f.store
        .apply_bundle(&bundle(&[p, update, event("A08")]), at("2026-03-05T09:00:00Z"))
        .unwrap();
    assert_eq!(
        wards(&f),
        pairs(&[("AMU", "completed"), ("WARD 3", "completed"), ("SITE", "completed"), ("WARD 9/BED 1", "completed"), ("WARD 9/BED 2", "completed")])
    );
    let now = current(&f.store, "Encounter", "e-moves");
    assert_eq!(now["hospitalization"]["dischargeDisposition"]["text"], "home", "{now}");
    assert_eq!(now["hospitalization"]["admitSource"]["text"], "GP", "{now}");
}

/// A correction marked on the report alone (OBR-25 C, its results still F),
/// with no issue time anywhere: the older final report sent again is stale,
/// and so are the results it carries, so the result keeps its corrected value.
#[test]
fn a_stale_report_takes_its_results_with_it() {
    let f = open();
    let result = |value: i64| {
        let mut o = observation("o-r", PATIENT, ENCOUNTER);
        o["status"] = json!("final");
        o["valueQuantity"] = json!({"value": value});
        o["subject"] = json!({"reference": format!("Patient/{PATIENT}")});
        o["encounter"] = json!({"reference": format!("Encounter/{ENCOUNTER}")});
        o
    };
    let report = |status: &str| {
        json!({"resourceType": "DiagnosticReport", "id": "r-r", "status": status,
               "code": {"text": "FBC"}, "subject": {"reference": format!("Patient/{PATIENT}")},
               "result": [{"reference": "Observation/o-r"}]})
    };
    let p = patient(PATIENT, "9434765919", "Smith");
    let e = encounter(ENCOUNTER, PATIENT, "in-progress");
    f.store
        .apply_bundle(&bundle(&[p.clone(), e.clone(), report("final"), result(110)]), at("2026-03-07T11:10:00Z"))
        .unwrap();
    f.store
        .apply_bundle(&bundle(&[p.clone(), e.clone(), report("corrected"), result(120)]), at("2026-03-07T11:20:00Z"))
        .unwrap();
    let outcome = f
        .store
        .apply_bundle(&bundle(&[p, e, report("final"), result(110)]), at("2026-03-07T11:30:00Z"))
        .unwrap();
    assert_eq!(outcome.stale(), 2, "the report and its result: {:?}", results(&outcome));
    let now = current(&f.store, "Observation", "o-r");
    assert_eq!(now["valueQuantity"]["value"], 120, "{now}");
    assert_eq!(current(&f.store, "DiagnosticReport", "r-r")["status"], "corrected");
}

/// A final result flushed again after its correction (a fresh MSH-7, the same
/// issue time) is stale: HL7 v2 never goes from C back to F. A final issued
/// after the correction is a new report and applies.
#[test]
fn a_final_version_after_its_correction_is_stale_unless_issued_later() {
    let f = open();
    // the patient the results are filed under, stored before
    f.store
        .apply_bundle(&bundle(&[patient(PATIENT, "9434765919", "Smith")]), None)
        .unwrap();
    let result = |status: &str, value: i64, issued: &str| {
        let mut o = observation("o-c", PATIENT, ENCOUNTER);
        o["status"] = json!(status);
        o["valueQuantity"] = json!({"value": value});
        o["issued"] = json!(issued);
        o["subject"] = json!({"reference": format!("Patient/{PATIENT}")});
        o["encounter"] = json!({"reference": format!("Encounter/{ENCOUNTER}")});
        o
    };
    let value = |f: &Fixture| {
        let now = current(&f.store, "Observation", "o-c");
        (now["status"].as_str().map(str::to_string), now["valueQuantity"]["value"].as_i64())
    };
    // one version of the result: its status, value and issue time (OBR-22),
    // sent at `sent` (MSH-7)
    let send = |status: &str, value: i64, issued: &str, sent: &str| {
        f.store
            .apply_bundle(&bundle(&[result(status, value, issued)]), at(sent))
            .unwrap()
    };
    send("final", 110, "2026-03-07T11:10:00+00:00", "2026-03-07T11:10:00Z");
    send("corrected", 120, "2026-03-07T11:20:00+00:00", "2026-03-07T11:20:00Z");
    // the final flushed again from a queue, with a fresh MSH-7
    let outcome = send("final", 110, "2026-03-07T11:10:00+00:00", "2026-03-07T11:30:00Z");
    assert_eq!(outcome.stale(), 1, "{:?}", results(&outcome));
    assert_eq!(value(&f), (Some("corrected".into()), Some(120)));
    // the same issue time as the correction: still not after it
    let outcome = send("final", 110, "2026-03-07T11:20:00+00:00", "2026-03-07T11:31:00Z");
    assert_eq!(outcome.stale(), 1, "{:?}", results(&outcome));
    // a final issued after the correction (a new report) applies
    let outcome = send("final", 125, "2026-03-07T11:40:00+00:00", "2026-03-07T11:40:00Z");
    assert_eq!(outcome.written(), 1, "{:?}", results(&outcome));
    assert_eq!(value(&f), (Some("final".into()), Some(125)));
    // and once it is stored, an older issue sent again is stale whatever its
    // status (a correction the lab marked on the report alone leaves its
    // results F: this keeps them from being taken back)
    let outcome = send("final", 110, "2026-03-07T11:10:00+00:00", "2026-03-07T11:45:00Z");
    assert_eq!(outcome.stale(), 1, "an older issue: {:?}", results(&outcome));
    assert_eq!(value(&f), (Some("final".into()), Some(125)));
    let outcome = send("final", 130, "2026-03-07T12:00:00+00:00", "2026-03-07T12:00:00Z");
    assert_eq!(outcome.written(), 1, "{:?}", results(&outcome));
    assert_eq!(value(&f), (Some("final".into()), Some(130)));
}

#[test]
fn an_allergen_withdraws_the_no_known_allergies_statement() {
    let f = open();
    let snomed = |code: &str| json!({"coding": [{"system": "http://snomed.info/sct", "code": code}]});
    let allergy = |id: &str, code: Value, category: &str| {
        json!({
            "resourceType": "AllergyIntolerance", "id": id,
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
            "category": [category],
            "code": code,
            "patient": {"reference": format!("Patient/{PATIENT}")}
        })
    };
    let status = |id: &str| {
        let a = current(&f.store, "AllergyIntolerance", id);
        (
            a["clinicalStatus"]["coding"][0]["code"].as_str().map(str::to_string),
            a["verificationStatus"]["coding"][0]["code"].as_str().map(str::to_string),
        )
    };
    let active = (Some("active".to_string()), None);
    let refuted = (Some("inactive".to_string()), Some("refuted".to_string()));
    f.store
        .apply_bundle(
            &bundle(&[
                patient(PATIENT, "9434765919", "Smith"),
                allergy("nka", snomed("716186003"), "food"),
                allergy("nkda", snomed("409137002"), "medication"),
            ]),
            at("2026-03-01T10:00:00Z"),
        )
        .unwrap();
    assert_eq!((status("nka"), status("nkda")), (active.clone(), active.clone()));
    // a food allergy: "no known allergy" is refuted, "no known drug allergy" stands
    f.store
        .apply_bundle(&bundle(&[allergy("nut", json!({"text": "Peanut"}), "food")]), at("2026-03-01T11:00:00Z"))
        .unwrap();
    assert_eq!((status("nka"), status("nkda")), (refuted.clone(), active.clone()));
    // a drug allergy refutes that one too
    f.store
        .apply_bundle(&bundle(&[allergy("pen", json!({"text": "Penicillin"}), "medication")]), at("2026-03-01T12:00:00Z"))
        .unwrap();
    assert_eq!((status("nka"), status("nkda")), (refuted.clone(), refuted));
    assert_eq!(status("pen"), active);
}

/// A text report (a radiology report: its lines the results, its text the
/// `text/plain` presented form) corrected is sent whole: a line the correction
/// no longer has was retracted, and is withdrawn (`entered-in-error`), not
/// left as a final result beside the corrected ones; the corrected text is
/// the report's presented form.
#[test]
fn a_corrected_text_report_replaces_its_lines() {
    let f = open();
    let line = |id: &str, status: &str| {
        let mut o = observation(id, PATIENT, ENCOUNTER);
        o["status"] = json!(status);
        o["subject"] = json!({"reference": format!("Patient/{PATIENT}")});
        o["encounter"] = json!({"reference": format!("Encounter/{ENCOUNTER}")});
        o
    };
    let report = |status: &str, lines: &[&str], text: &str| {
        json!({
            "resourceType": "DiagnosticReport", "id": "ct1", "status": status,
            "code": {"text": "CT chest abdomen pelvis"},
            "subject": {"reference": format!("Patient/{PATIENT}")},
            "result": lines.iter().map(|id| json!({"reference": format!("Observation/{id}")})).collect::<Vec<_>>(),
            "presentedForm": [{"contentType": "text/plain; charset=utf-8", "data": text}]
        })
    };
    f.store
        .apply_bundle(
            &bundle(&[
                patient(PATIENT, "9434765919", "Smith"),
                encounter(ENCOUNTER, PATIENT, "in-progress"),
                report("final", &["l1", "l2", "l3", "l4"], "ZmluYWw="),
                line("l1", "final"),
                line("l2", "final"),
                line("l3", "final"),
                line("l4", "final"),
            ]),
            at("2026-11-23T09:00:00Z"),
        )
        .unwrap();
    f.store
        .apply_bundle(
            &bundle(&[
                report("corrected", &["l1", "l2", "l3"], "Y29ycmVjdGVk"),
                line("l1", "corrected"),
                line("l2", "corrected"),
                line("l3", "corrected"),
            ]),
            at("2026-11-23T11:00:00Z"),
        )
        .unwrap();
    let l4 = current(&f.store, "Observation", "l4");
    assert_eq!(l4["status"], "entered-in-error", "{l4}");
    let ct = current(&f.store, "DiagnosticReport", "ct1");
    assert_eq!(ct["result"].as_array().map(Vec::len), Some(3), "{ct}");
    assert_eq!(ct["presentedForm"][0]["data"], "Y29ycmVjdGVk", "{ct}");
    // a screen of text results that are tests of their own (each its code),
    // one of them corrected alone: the others stay final, and the report's
    let test = |id: &str, code: &str, status: &str| {
        let mut o = line(id, status);
        o["code"] = json!({"coding": [{"system": "urn:lab", "code": code}]});
        o
    };
    let mut screen = report("final", &["v1", "v2", "v3"], "c2NyZWVu");
    screen["id"] = json!("vir1");
    f.store
        .apply_bundle(
            &bundle(&[screen, test("v1", "HIV", "final"), test("v2", "HBSAG", "final"), test("v3", "HCV", "final")]),
            at("2026-11-23T09:00:00Z"),
        )
        .unwrap();
    let mut corrected = report("corrected", &["v2"], "SEJzQWc=");
    corrected["id"] = json!("vir1");
    f.store
        .apply_bundle(&bundle(&[corrected, test("v2", "HBSAG", "corrected")]), at("2026-11-23T11:00:00Z"))
        .unwrap();
    for id in ["v1", "v3"] {
        assert_eq!(current(&f.store, "Observation", id)["status"], "final", "{id}");
    }
    let screen = current(&f.store, "DiagnosticReport", "vir1");
    assert_eq!(screen["result"].as_array().map(Vec::len), Some(3), "{screen}");
    // a culture's two organisms (one code, told apart by OBX-4), the second
    // corrected alone: a partial correction, the first stays final
    let mut culture = report("final", &["g1", "g2"], "Y3VsdHVyZQ==");
    culture["id"] = json!("cul1");
    f.store
        .apply_bundle(
            &bundle(&[culture, test("g1", "ORG", "final"), test("g2", "ORG", "final")]),
            at("2026-11-23T09:00:00Z"),
        )
        .unwrap();
    let mut corrected = report("corrected", &["g2"], "b3JnIDI=");
    corrected["id"] = json!("cul1");
    f.store
        .apply_bundle(&bundle(&[corrected, test("g2", "ORG", "corrected")]), at("2026-11-23T11:00:00Z"))
        .unwrap();
    assert_eq!(current(&f.store, "Observation", "g1")["status"], "final");
}

#[test]
fn a_final_report_cancels_the_preliminary_results_it_no_longer_names() {
    let f = open();
    let result = |id: &str, status: &str| {
        let mut o = observation(id, PATIENT, ENCOUNTER);
        o["status"] = json!(status);
        o["subject"] = json!({"reference": format!("Patient/{PATIENT}")});
        o["encounter"] = json!({"reference": format!("Encounter/{ENCOUNTER}")});
        o["meta"] = json!({"profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Observation"]});
        o
    };
    let report = |status: &str, results: &[&str]| {
        json!({
            "resourceType": "DiagnosticReport", "id": "r1", "status": status,
            "code": {"text": "Histology"},
            "subject": {"reference": format!("Patient/{PATIENT}")},
            "result": results.iter().map(|id| json!({"reference": format!("Observation/{id}")})).collect::<Vec<_>>()
        })
    };
    f.store
        .apply_bundle(
            &bundle(&[
                patient(PATIENT, "9434765919", "Smith"),
                encounter(ENCOUNTER, PATIENT, "in-progress"),
                report("preliminary", &["o1", "o2", "o3"]),
                result("o1", "preliminary"),
                result("o2", "preliminary"),
                result("o3", "preliminary"),
                result("o-final", "final"),
            ]),
            at("2026-11-23T09:00:00Z"),
        )
        .unwrap();
    // the final names o1 and o2 only; o3 ("report to follow") was withdrawn
    f.store
        .apply_bundle(
            &bundle(&[report("final", &["o1", "o2"]), result("o1", "final"), result("o2", "final")]),
            at("2026-11-23T11:00:00Z"),
        )
        .unwrap();
    let o3 = current(&f.store, "Observation", "o3");
    assert_eq!(o3["status"], "cancelled", "{o3}");
    assert_eq!(o3["meta"]["profile"][0], "https://fhir.hl7.org.uk/StructureDefinition/UKCore-Observation");
    assert_eq!(current(&f.store, "Observation", "o1")["status"], "final");
    // a corrected report that names only what it corrects (results, not a
    // text sent whole) leaves final results alone
    f.store
        .apply_bundle(
            &bundle(&[report("corrected", &["o2"]), result("o2", "corrected")]),
            at("2026-11-23T12:00:00Z"),
        )
        .unwrap();
    assert_eq!(current(&f.store, "Observation", "o1")["status"], "final");
    // ... and in the report: o1 is still one of its results (o3, withdrawn, is not)
    let names = |store: &RecordStore| -> Vec<String> {
        current(store, "DiagnosticReport", "r1")["result"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| r["reference"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(names(&f.store), ["Observation/o2", "Observation/o1"]);
    // the same correction again changes nothing
    let again = f
        .store
        .apply_bundle(
            &bundle(&[report("corrected", &["o2"]), result("o2", "corrected")]),
            at("2026-11-23T12:00:00Z"),
        )
        .unwrap();
    assert!(
        results(&again)
            .iter()
            .all(|(_, r)| matches!(r, EntryResult::Unchanged { .. })),
        "{:?}",
        results(&again)
    );
    // and a report still preliminary withdraws nothing
    let f2 = open();
    f2.store
        .apply_bundle(
            &bundle(&[
                patient(PATIENT, "9434765919", "Smith"),
                encounter(ENCOUNTER, PATIENT, "in-progress"),
                report("preliminary", &["o1", "o2"]),
                result("o1", "preliminary"),
                result("o2", "preliminary"),
            ]),
            at("2026-11-23T09:00:00Z"),
        )
        .unwrap();
    f2.store
        .apply_bundle(&bundle(&[report("partial", &["o1"])]), at("2026-11-23T10:00:00Z"))
        .unwrap();
    assert_eq!(current(&f2.store, "Observation", "o2")["status"], "preliminary");
    assert_eq!(names(&f2.store), ["Observation/o1", "Observation/o2"]);
}

/// Every arrival order of a stay's messages ends as the order they were sent
/// in does: the whole Encounter, its locations and their order, tags and
/// all. The stories: a stay discharged, its discharge cancelled (A13, naming
/// its ward or none) and the patient transferred (A02); the same with the
/// transfer cancelled after (A12; s25 tester, Y3: the A12 arriving before
/// the transfer it cancels, after a discharge); a transfer cancelled and an
/// update after it (Y3 too); and a transfer cancelled and made again after a
/// reopened discharge (s25b tester, N1: the A13 arriving last put the
/// patient back on WARDA); and an admission cancelled by mistake and made
/// again before a discharge (s26 tester, H2r).
#[test]
fn every_arrival_order_of_a_stay_ends_as_sent() {
    let f = open();
    let p = patient(PATIENT, "9434765919", "Smith");
    let m = stay_messages();
    // each story: its name and what was sent (resource, event, event time)
    let step = |resource: &Value, code: &'static str, time: &'static str| {
        (resource.clone(), code, time)
    };
    let opening = [
        step(&m.admitted, "A01", "2026-03-01T08:00:00Z"),
        step(&m.discharged, "A03", "2026-03-01T10:00:00Z"),
    ];
    let story = |a13: &Value, a12: bool| {
        let mut sent = opening.to_vec();
        sent.push(step(a13, "A13", "2026-03-01T11:00:00Z"));
        sent.push(step(&m.transferred, "A02", "2026-03-01T12:00:00Z"));
        if a12 {
            sent.push(step(&m.cancelled_transfer, "A12", "2026-03-01T13:00:00Z"));
        }
        sent
    };
    let mut update = m.admitted.clone();
    update.as_object_mut().unwrap().remove("location");
    let mut cancelled = m.admitted.clone();
    cancelled["status"] = json!("entered-in-error");
    let stories = [
        ("a13-a02", story(&m.reopened, false)),
        ("noward-a02", story(&m.no_ward, false)),
        ("a13-a02-a12", story(&m.reopened, true)),
        ("noward-a02-a12", story(&m.no_ward, true)),
        (
            "a02-a12-a08",
            vec![
                step(&m.admitted, "A01", "2026-03-01T08:00:00Z"),
                step(&m.transferred, "A02", "2026-03-01T09:00:00Z"),
                step(&m.cancelled_transfer, "A12", "2026-03-01T10:00:00Z"),
                step(&update, "A08", "2026-03-01T11:00:00Z"),
            ],
        ),
        ("a13-a02-a12-a02", {
            let mut sent = story(&m.reopened, true);
            sent.push(step(&m.transferred, "A02", "2026-03-01T14:00:00Z"));
            sent
        }),
        // a cancellation sent at the same time as what it cancels follows
        // it, whichever arrives first (s26 tester, T1)
        (
            "tie-a03-a13",
            vec![
                step(&m.admitted, "A01", "2026-03-01T08:00:00Z"),
                step(&m.discharged, "A03", "2026-03-01T10:00:00Z"),
                step(&m.reopened, "A13", "2026-03-01T10:00:00Z"),
            ],
        ),
        (
            "tie-a02-a12",
            vec![
                step(&m.admitted, "A01", "2026-03-01T08:00:00Z"),
                step(&m.transferred, "A02", "2026-03-01T10:00:00Z"),
                step(&m.cancelled_transfer, "A12", "2026-03-01T10:00:00Z"),
            ],
        ),
        (
            "tie-a01-a11",
            vec![
                step(&m.admitted, "A01", "2026-03-01T08:00:00Z"),
                step(&cancelled, "A11", "2026-03-01T08:00:00Z"),
            ],
        ),
        // an admission cancelled by mistake (A11) and made again (A01), the
        // patient discharged after (s26 tester, H2r: the A01 arriving last
        // left the discharge out)
        (
            "a01-a11-a01-a03",
            vec![
                step(&m.admitted, "A01", "2026-03-01T08:00:00Z"),
                step(&cancelled, "A11", "2026-03-01T09:00:00Z"),
                step(&m.admitted, "A01", "2026-03-01T09:30:00Z"),
                step(&m.discharged, "A03", "2026-03-01T10:00:00Z"),
            ],
        ),
    ];
    fn perms(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in perms(n - 1) {
            for i in 0..=p.len() {
                let mut q = p.clone();
                q.insert(i, n - 1);
                out.push(q);
            }
        }
        out
    }
    let mut counter = 0;
    for (name, sent) in &stories {
        let mut run = |order: &[usize]| {
            counter += 1;
            let id = format!("x{counter}");
            send_as(&f, &p, &id, sent, order);
            let mut stay = current(&f.store, "Encounter", &id);
            stay["id"] = json!("x");
            crate::store::plan::without_meta(&stay)
        };
        let in_order: Vec<usize> = (0..sent.len()).collect();
        let want = run(&in_order);
        for order in perms(sent.len()) {
            let got = run(&order);
            assert_eq!(got, want, "{name}: {order:?}");
        }
    }
}

/// A visit with more messages than are kept (`MAX_SENT`) forgets the older
/// half, keeping the visit they made: a late message among the newer ones
/// is put in its place as ever, and the visit ends as in order; one sent
/// before what was forgotten ended, arriving now, is stale.
#[test]
fn a_visit_with_more_messages_than_are_kept_still_ends_as_sent() {
    let f = open();
    let p = patient(PATIENT, "9434765919", "Smith");
    let n = crate::store::apply::MAX_SENT as usize + 20;
    let time = |i: usize| {
        let t = jiff::Timestamp::from_second(1_772_352_000 + 3600 * i as i64).unwrap();
        t.to_string()
    };
    let times: Vec<String> = (0..n).map(time).collect();
    let transfer = |i: usize| {
        let mut e = encounter("e", PATIENT, "in-progress");
        e["period"] = json!({"start": "2026-03-01T08:00:00+00:00"});
        let ward = format!("W{i}");
        e["location"] = match i {
            0 => json!([place(&ward, "active")]),
            _ => json!([place(&ward, "active"), place(&format!("W{}", i - 1), "completed")]),
        };
        e
    };
    let sent: Vec<(Value, &str, &str)> = (0..n)
        .map(|i| (transfer(i), if i == 0 { "A01" } else { "A02" }, times[i].as_str()))
        .collect();
    let in_order: Vec<usize> = (0..n).collect();
    // the last two swapped: the newest arrives before the one sent before it
    let mut late = in_order.clone();
    late.swap(n - 1, n - 2);
    send_as(&f, &p, "kept-in-order", &sent, &in_order);
    send_as(&f, &p, "kept-late", &sent, &late);
    let visit = |id: &str| {
        let mut v = current(&f.store, "Encounter", id);
        v["id"] = json!("x");
        crate::store::plan::without_meta(&v)
    };
    assert_eq!(visit("kept-late"), visit("kept-in-order"));
    assert_eq!(
        wards_of(&f, "kept-late").iter().filter(|(_, s)| s == "active").count(),
        1
    );
    // a transfer sent in the forgotten half, arriving now: stale
    let before = visit("kept-late");
    send_as(&f, &p, "kept-late", &[(transfer(900), "A02", times[3].as_str())], &[0]);
    assert_eq!(visit("kept-late"), before);
    // and many (the whole visit sent again): none is kept, so none moves
    // what is forgotten past a transfer sent after it that arrives late
    // (s26b tester, F1)
    let resent: Vec<(Value, &str, &str)> = (0..120)
        .map(|i| (transfer(1000 + i), "A02", times[i].as_str()))
        .collect();
    send_as(&f, &p, "kept-late", &resent, &(0..120).collect::<Vec<_>>());
    assert_eq!(visit("kept-late"), before);
    let half_past = time(130).replace(":00:00Z", ":30:00Z");
    send_as(&f, &p, "kept-late", &[(transfer(999), "A02", half_past.as_str())], &[0]);
    assert!(
        wards_of(&f, "kept-late").iter().any(|(w, _)| w == "W999"),
        "{:?}",
        wards_of(&f, "kept-late")
    );
}
