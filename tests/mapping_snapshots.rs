//! Snapshots of the document every sample maps to (tests/snapshots/, reviewed like
//! code), and the document-level promises: determinism, stable Patient ids across
//! messages, NHS numbers only when modulus 11 passes.
//!
//! Update after an intended change: `INSTA_UPDATE=always cargo test --test
//! mapping_snapshots`, then review the diff of tests/snapshots/.

mod mapping_support;

use mapping_support::*;
use serde_json::Value;
use std::path::Path;

/// One snapshot per message of a sample file (a batch gives `_1`, `_2`, …).
fn snapshot(file: &str) {
    let set = mappings();
    let outputs = map_file(&set, &repo().join(file));
    for (name, output) in outputs {
        insta::assert_snapshot!(name, pretty(&output.value()));
    }
}

macro_rules! snapshots {
    ($($test:ident => $file:literal,)*) => {
        $( #[test] fn $test() { snapshot($file) } )*

        /// Every sample file has a snapshot test above.
        #[test]
        fn every_sample_has_a_snapshot_test() {
            let covered = [$($file),*];
            for path in sample_files() {
                let rel = path.strip_prefix(repo()).expect("under the repo");
                let rel = rel.to_string_lossy().replace('\\', "/");
                assert!(covered.contains(&rel.as_str()), "{rel} has no snapshot test");
            }
        }
    };
}

snapshots! {
    adt_a01_admission => "samples/adt_a01_admission.hl7",
    adt_a02_transfer => "samples/adt_a02_transfer.hl7",
    adt_a03_discharge => "samples/adt_a03_discharge.hl7",
    adt_a04_outpatient_enhanced_ack => "samples/adt_a04_outpatient_enhanced_ack.hl7",
    adt_a05_preadmit_escapes => "samples/adt_a05_preadmit_escapes.hl7",
    adt_a08_update => "samples/adt_a08_update.hl7",
    adt_a08_lf_endings => "samples/adt_a08_lf_endings.hl7",
    adt_a11_cancel_admit => "samples/adt_a11_cancel_admit.hl7",
    adt_a13_cancel_discharge => "samples/adt_a13_cancel_discharge.hl7",
    adt_a28_add_person => "samples/adt_a28_add_person.hl7",
    adt_a31_update_person_v28_utf8 => "samples/adt_a31_update_person_v28_utf8.hl7",
    adt_a31_latin1 => "samples/adt_a31_latin1.hl7",
    adt_a40_merge => "samples/adt_a40_merge.hl7",
    oru_r01_fbc_ue => "samples/oru_r01_fbc_ue.hl7",
    oru_r01_microbiology => "samples/oru_r01_microbiology.hl7",
    oru_r01_order_notes => "samples/oru_r01_order_notes.hl7",
    oru_r01_orc_numbers => "samples/oru_r01_orc_numbers.hl7",
    oru_r01_point_of_care => "samples/oru_r01_point_of_care.hl7",
    oru_r01_device_report => "samples/oru_r01_device_report.hl7",
    adt_a08_untraced_nhs_first => "samples/adt_a08_untraced_nhs_first.hl7",
    oru_r01_sn_forms => "samples/oru_r01_sn_forms.hl7",
    adt_a40_two_merges => "samples/adt_a40_two_merges.hl7",
    oru_r01_precision_and_text => "samples/oru_r01_precision_and_text.hl7",
    adt_a03_v23_diagnoses => "samples/adt_a03_v23_diagnoses.hl7",
    oru_r01_shared_lab_number => "samples/oru_r01_shared_lab_number.hl7",
    oru_r01_radiology_report => "samples/oru_r01_radiology_report.hl7",
    adt_a12_cancel_transfer => "samples/adt_a12_cancel_transfer.hl7",
    oru_r01_micro_susceptibility => "samples/oru_r01_micro_susceptibility.hl7",
    adt_a38_cancel_preadmit => "samples/adt_a38_cancel_preadmit.hl7",
    adt_a08_v28_bare_mrn => "samples/adt_a08_v28_bare_mrn.hl7",
    adt_a11_cancel_hwe_practice => "samples/adt_a11_cancel_hwe_practice.hl7",
    batch_adt => "samples/batch_adt.hl7",
    nhs_number_bad_checksum => "tests/bad-input/nhs_number_bad_checksum.hl7",
}

fn map_one(file: &str) -> junction::mapping::MapOutput {
    let set = mappings();
    let mut outputs = map_file(&set, &repo().join(file));
    assert_eq!(outputs.len(), 1, "{file} holds one message");
    let (_, output) = outputs.remove(0);
    output
}

fn only<'d>(document: &'d Value, resource_type: &str) -> &'d Value {
    let found = resources(document, resource_type);
    assert_eq!(
        found.len(),
        1,
        "expected one {resource_type}, found {}",
        found.len()
    );
    found[0]
}

fn identifiers(patient: &Value) -> Vec<(String, String)> {
    patient["identifier"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .map(|id| {
                    (
                        id["system"].as_str().unwrap_or_default().to_string(),
                        id["value"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn mapping_twice_gives_identical_bytes() {
    // Two independently loaded sets, so nothing cached in a plan can hide a difference.
    let (first, second) = (mappings(), mappings());
    for path in sample_files() {
        let a = map_file(&first, &path);
        let b = map_file(&second, &path);
        let again = map_file(&first, &path);
        assert_eq!(a.len(), b.len());
        for ((name, x), ((_, y), (_, z))) in a.iter().zip(b.iter().zip(again.iter())) {
            // the documents' own bytes, as the engine queues them
            assert_eq!(x.document, y.document, "{name}: differs between loads");
            assert_eq!(x.document, z.document, "{name}: differs between runs");
            // and that text is canonical: what serde_json writes for its own value
            assert_eq!(
                serde_json::to_string(&x.value()).unwrap(),
                x.document,
                "{name}: not serde_json's own form"
            );
            assert_eq!(x.unread, y.unread, "{name}: unread differs");
            assert_eq!(x.warnings, y.warnings, "{name}: warnings differ");
        }
    }
}

#[test]
fn the_engines_path_gives_the_same_document_without_the_unread_report() {
    let set = mappings();
    for path in sample_files() {
        let raw = std::fs::read(&path).unwrap();
        for text in messages(&raw, &path) {
            let message = junction::hl7::Message::parse(&text).unwrap();
            let plan = set.select_for(&message).expect("a mapping");
            let applied = plan.apply(&message).unwrap();
            let engine = plan.document(&message).unwrap();
            let name = path.display();
            assert_eq!(applied.document, engine.document, "{name}");
            assert_eq!(applied.entries, engine.entries, "{name}");
            assert_eq!(applied.warnings, engine.warnings, "{name}");
            assert!(engine.unread.is_empty(), "{name}");
        }
    }
}

#[test]
fn the_same_patient_gets_the_same_patient_id_across_messages() {
    let a01 = map_one("samples/adt_a01_admission.hl7");
    let a08 = map_one("samples/adt_a08_update.hl7");
    let a08_lf = map_one("samples/adt_a08_lf_endings.hl7");
    let oru = map_one("samples/oru_r01_fbc_ue.hl7");
    let id = only(&a01.value(), "Patient")["id"].clone();
    assert!(id.is_string(), "the A01 Patient has an id");
    assert_eq!(only(&a08.value(), "Patient")["id"], id, "A08 vs A01");
    assert_eq!(
        only(&a08_lf.value(), "Patient")["id"],
        id,
        "A08 (LF) vs A01"
    );
    assert_eq!(only(&oru.value(), "Patient")["id"], id, "ORU vs A01");
    // The A08 changed the address, and the LF copy must read exactly like the CR one.
    assert_eq!(
        only(&a08.value(), "Patient"),
        only(&a08_lf.value(), "Patient"),
        "LF endings change nothing in the Patient"
    );
    assert_ne!(
        only(&a01.value(), "Patient")["address"],
        only(&a08.value(), "Patient")["address"],
        "the A08 carries the new address"
    );
}

#[test]
fn the_visit_maps_to_the_same_encounter_id_across_messages() {
    let a01 = map_one("samples/adt_a01_admission.hl7");
    let a11 = map_one("samples/adt_a11_cancel_admit.hl7");
    let a03 = map_one("samples/adt_a03_discharge.hl7");
    let a13 = map_one("samples/adt_a13_cancel_discharge.hl7");
    assert_eq!(
        only(&a01.value(), "Encounter")["id"],
        only(&a11.value(), "Encounter")["id"],
        "A11 cancels the A01's encounter"
    );
    assert_eq!(
        only(&a03.value(), "Encounter")["id"],
        only(&a13.value(), "Encounter")["id"],
        "A13 reverts the A03's encounter"
    );
}

#[test]
fn a_bad_checksum_is_not_an_nhs_number_and_warns() {
    let output = map_one("tests/bad-input/nhs_number_bad_checksum.hl7");
    let document = output.value();
    let patient = only(&document, "Patient");
    let ids = identifiers(patient);
    assert!(
        !ids.iter().any(|(system, _)| system == NHS_NUMBER_SYSTEM),
        "no NHS-number identifier for 9990160822: {ids:?}"
    );
    assert!(
        ids.iter().any(|(_, value)| value == "9990160822"),
        "the number stays as a local identifier: {ids:?}"
    );
    assert!(
        output
            .warnings
            .iter()
            .any(|w| w.to_lowercase().contains("nhs")),
        "a warning names the NHS number problem: {:?}",
        output.warnings
    );
}

#[test]
fn every_nhs_number_identifier_passes_modulus_11() {
    let set = mappings();
    let mut seen = 0;
    for path in sample_files() {
        for (name, output) in map_file(&set, &path) {
            for resource_type in ["Patient", "RelatedPerson"] {
                for resource in resources(&output.value(), resource_type) {
                    for (system, value) in identifiers(resource) {
                        if system == NHS_NUMBER_SYSTEM {
                            seen += 1;
                            assert!(nhs_number_valid(&value), "{name}: {value} fails modulus 11");
                        }
                    }
                }
            }
        }
    }
    assert!(seen >= 15, "NHS numbers were mapped ({seen} seen)");
}

#[test]
fn valid_sample_nhs_numbers_are_mapped_without_warnings() {
    let output = map_one("samples/adt_a01_admission.hl7");
    let ids = identifiers(only(&output.value(), "Patient"));
    assert!(ids.contains(&(NHS_NUMBER_SYSTEM.to_string(), "9990000018".to_string())));
    assert!(
        !output
            .warnings
            .iter()
            .any(|w| w.to_lowercase().contains("nhs")),
        "{:?}",
        output.warnings
    );
}

#[test]
fn gender_is_mapped_from_hl7_and_nhs_codes() {
    for (file, expected) in [
        ("samples/adt_a01_admission.hl7", "female"),  // F
        ("samples/adt_a03_discharge.hl7", "male"),    // M
        ("samples/adt_a28_add_person.hl7", "female"), // NHS 2
        ("samples/adt_a31_update_person_v28_utf8.hl7", "male"), // NHS 1
    ] {
        let output = map_one(file);
        assert_eq!(
            only(&output.value(), "Patient")["gender"],
            expected,
            "{file}"
        );
    }
}

/// An NK1 for an organisation (NK1-13) names its contact person in NK1-30 to
/// NK1-32: that person is the RelatedPerson (s24e tester, LOW: it was dropped);
/// beside a person the NK1 names, a RelatedPerson of their own.
#[test]
fn a_next_of_kin_organisation_s_contact_person_is_the_related_person() {
    let set = mappings();
    let output = map_text(
        &set,
        "MSH|^~\\&|PAS|RAL|JUNCTION|LCR|20261124090000||ADT^A28|NK1|P|2.5\r\
         EVN|A28|20261124090000\r\
         PID|1||9990000069^^^NHS^NH||EVANS^MAIR||19580630|F\r\
         NK1|1||||||C^Emergency contact^HL70131||||||ACME CARE LTD|||||||||||||||||JONES^MARY|020 7946 0000|1 HIGH ST^^LONDON^^N1 1AA\r",
        Path::new("inline.hl7"),
    );
    let document = output.value();
    let related = resources(&document, "RelatedPerson");
    assert_eq!(related.len(), 1, "{}", pretty(&document));
    let person = related[0];
    assert_eq!(person["name"][0]["family"], "JONES", "{person}");
    assert_eq!(person["telecom"][0]["value"], "020 7946 0000", "{person}");
    assert_eq!(person["telecom"][0]["use"], "work", "{person}");
    assert_eq!(person["address"][0]["city"], "LONDON", "{person}");
    assert_eq!(
        person["relationship"][0]["coding"][0]["code"], "C",
        "{person}"
    );
    assert_eq!(person["active"], true, "{person}");
    // beside a person of the NK1's own (a resident's son, and the care home's
    // manager with the home's phone), the contact is a RelatedPerson of their
    // own, the phone theirs (s25e tester, M2: the contact was left out)
    let output = map_text(
        &set,
        "MSH|^~\\&|PAS|RAL|JUNCTION|LCR|20261124090000||ADT^A01|NK9|P|2.5\r\
         EVN|A01|20261124090000\r\
         PID|1||9990000069^^^NHS^NH||EVANS^MAIR||19580630|F\r\
         NK1|1|KING^AL|SON^Son^HL70063||||||||||Sunny Care Home|||||||||||||||||JONES^MARY|^WPN^PH^^^^^^^^^01632960001\r",
        Path::new("inline.hl7"),
    );
    assert!(output.unread.is_empty(), "{:?}", output.unread);
    let document = output.value();
    let people = resources(&document, "RelatedPerson");
    assert_eq!(people.len(), 2, "{}", pretty(&document));
    assert_eq!(people[0]["name"][0]["family"], "KING");
    assert_eq!(people[0].get("telecom"), None);
    assert_eq!(people[1]["name"][0]["family"], "JONES");
    assert_eq!(people[1]["telecom"][0]["value"], "01632960001");
    assert_eq!(people[1]["relationship"][0]["coding"][0]["code"], "CP");
    assert_eq!(
        people[1]["relationship"][0]["text"],
        "Contact person of Sunny Care Home"
    );
}

/// Reference ranges with an en dash or `to` between their bounds have them,
/// a reversed one has none (FHIR's rng-2); an OBX-14 that is no time falls
/// back to the report's OBR-7 (s25c tester, 7 and 11).
#[test]
fn ranges_as_labs_write_them_and_a_bad_result_time_falls_back() {
    let set = mappings();
    let output = map_text(
        &set,
        "MSH|^~\\&|LAB|RAL|JUNCTION|LCR|20261125101000||ORU^R01|RG1|P|2.4|||||||UNICODE UTF-8\r\
         PID|1||9990000018^^^NHS^NH||SMITH^MARGARET\r\
         OBR|1||L1|U^U&E^L|||20261125083000\r\
         OBX|1|NM|HB^Hb^L||120|g/L|115\u{2013}165||||F|||20261131083000\r\
         OBX|2|NM|BE^Base excess^L||1|mmol/L|-2 to 2||||F\r\
         OBX|3|NM|K^Potassium^L||4.1|mmol/L|5.3-3.5||||F\r",
        Path::new("inline.hl7"),
    );
    let obs = observations(&output.value());
    let get = |code: &str| obs.iter().find(|(c, _, _)| c == code).unwrap().2.clone();
    let range = |code: &str| get(code)["referenceRange"][0].clone();
    assert_eq!(range("HB")["low"]["value"], 115);
    assert_eq!(range("HB")["high"]["value"], 165);
    assert_eq!(range("BE")["low"]["value"], -2);
    assert_eq!(range("BE")["high"]["value"], 2);
    assert_eq!(range("K").get("low"), None);
    assert_eq!(range("K")["text"], "5.3-3.5");
    assert_eq!(get("HB")["effectiveDateTime"], "2026-11-25T08:30:00+00:00");
}

/// Contradictory times and ranges make no FHIR that breaks an invariant: a
/// discharge before the admission gives the stay no end, with a warning
/// (per-1); an SN range whose low is above its high is its text, not a Range
/// (rng-2) (s25c tester, 5).
#[test]
fn a_period_and_a_range_out_of_order_break_no_invariant() {
    let set = mappings();
    let output = map_text(
        &set,
        "MSH|^~\\&|PAS|RAL|JUNCTION|LCR|20261124090000||ADT^A03|D1|P|2.4\r\
         EVN|A03|20261124090000\r\
         PID|1||9990000069^^^NHS^NH||EVANS^MAIR||19580630|F\r\
         PV1|1|I|AMU^BAY 1^BED 1^RAL||||||||||||||||V200|||||||||||||||||||||||||20261124083000|20261123083000\r",
        Path::new("inline.hl7"),
    );
    let document = output.value();
    let visit = only(&document, "Encounter");
    assert_eq!(
        visit["period"],
        serde_json::json!({"start": "2026-11-24T08:30:00+00:00"}),
        "{visit}"
    );
    assert_eq!(
        output.warnings,
        ["PV1-45: a discharge time (PV1-45) before the admit time (PV1-44): the stay is given no end"]
    );
    let output = map_text(
        &set,
        "MSH|^~\\&|LAB|RAL|JUNCTION|LCR|20261125101000||ORU^R01|SN1|P|2.4\r\
         PID|1||9990000018^^^NHS^NH||SMITH^MARGARET\r\
         OBR|1||L2|T^Titres^L|||20261125083000\r\
         OBX|1|SN|UP^In order^L||^5^-^10|mg/L|||||F\r\
         OBX|2|SN|DOWN^Reversed^L||^10^-^5|mg/L|||||F\r\
         OBX|3|SN|COMMA^Not numbers^L||^1,000^-^2,000|mg/L|||||F\r\
         OBX|4|SN|EMPTY^No numbers^L||^^-^|mg/L|||||F\r",
        Path::new("inline.hl7"),
    );
    let obs = observations(&output.value());
    let get = |code: &str| obs.iter().find(|(c, _, _)| c == code).unwrap().2.clone();
    assert_eq!(get("UP")["valueRange"]["low"]["value"], 5);
    assert_eq!(get("UP")["valueRange"]["high"]["value"], 10);
    assert_eq!(get("DOWN").get("valueRange"), None);
    assert_eq!(get("DOWN")["valueString"], "10-5 mg/L");
    // (bounds that are no numbers: the text, not an empty Range; s25e tester, M3)
    assert_eq!(get("COMMA").get("valueRange"), None);
    assert_eq!(get("COMMA")["valueString"], "1,000-2,000 mg/L");
    // (one with no number at all is no value, not a `-` that reads as
    // "negative": s25f tester, M1')
    let empty = get("EMPTY");
    assert_eq!(empty.get("valueString"), None, "{empty}");
    assert_eq!(empty.get("valueRange"), None, "{empty}");
}

/// An order whose OBX all follow its SPM (a sender that puts the specimen
/// straight after the OBR) is said in a warning: HL7 makes those OBX the
/// specimen's, left out, and they must not be lost in silence (s25c tester, 1);
/// so are OBX after an SPM put between results, and a second SPM.
#[test]
fn results_sent_after_the_specimen_are_a_warning_not_lost_in_silence() {
    let set = mappings();
    // (the segments after the PID and ORC, the warning, the resources made of a type)
    let cases = [
        (
            "OBR|1|ICE059^ICE|26I0059^LAB|HB^Hb^LAB|||20261125083000|||||||||||||||20261125101000|||F\r\
             SPM|1|ICE059-S1&ICE^26I0059-1&LAB||BLD^Blood^HL70487\r\
             OBX|1|NM|HB^Hb^LAB||120|g/L|115-165|N|||F\r",
            "an order whose OBX all come after its SPM: read as observations of the specimen, not results, and left out",
            ("Observation", 0),
        ),
        // an SPM between results (s25d tester, M3): the result after it said too
        (
            "OBR|1|ICE059^ICE|26I0059^LAB|UE^U+E^LAB|||20261125083000|||||||||||||||20261125101000|||F\r\
             OBX|1|NM|NA^Sodium^LAB||140|mmol/L|133-146|N|||F\r\
             SPM|1|ICE059-S1&ICE^26I0059-1&LAB||BLD^Blood^HL70487\r\
             OBX|2|NM|K^Potassium^LAB||4.1|mmol/L|3.5-5.3|N|||F\r",
            "an order with OBX after its SPM as well as before it: those after are read as observations of the specimen, not results, and left out",
            ("Observation", 1),
        ),
        // a second SPM (a blood culture's two bottles; s25d tester, M4): said too
        (
            "OBR|1|ICE059^ICE|26I0059^LAB|BC^Blood culture^LAB|||20261125083000|||||||||||||||20261125101000|||F\r\
             OBX|1|ST|BC^Blood culture^LAB||No growth||||||F\r\
             SPM|1|ICE059-S1&ICE^26I0059-1&LAB||BLDA^Aerobic bottle^L\r\
             SPM|2|ICE059-S2&ICE^26I0059-2&LAB||BLDN^Anaerobic bottle^L\r",
            "an order with more than one SPM: its Specimen is the first, the others are left out",
            ("Specimen", 1),
        ),
    ];
    for (order, warning, (kind, made)) in cases {
        let message = format!(
            "MSH|^~\\&|LAB|RAL|JUNCTION|LCR|20261125101000||ORU^R01^ORU_R01|SPM1|P|2.5.1\r\
             PID|1||9990000018^^^NHS^NH||SMITH^MARGARET\r\
             ORC|RE|ICE059^ICE|26I0059^LAB||CM\r{order}"
        );
        let output = map_text(&set, &message, Path::new("inline.hl7"));
        assert_eq!(output.warnings, [warning], "{order}");
        assert_eq!(resources(&output.value(), kind).len(), made, "{order}");
    }
}

/// A visit sent with an empty PV1-2 and no visit number but its admit time
/// (PV1-44) is an Encounter, keyed by that time, of unknown class (s25c
/// tester, 6: it made none, silently).
#[test]
fn a_visit_with_no_class_and_no_number_is_kept_by_its_admit_time() {
    let set = mappings();
    let output = map_text(
        &set,
        "MSH|^~\\&|PAS|RAL|JUNCTION|LCR|20261124090000||ADT^A01|NV1|P|2.4\r\
         EVN|A01|20261124090000\r\
         PID|1||9990000069^^^NHS^NH||EVANS^MAIR||19580630|F\r\
         PV1|1||AMU^BAY 1^BED 1^RAL|||||||||||||||||||||||||||||||||||||||||20261124083000\r",
        Path::new("inline.hl7"),
    );
    let document = output.value();
    let visits = resources(&document, "Encounter");
    assert_eq!(visits.len(), 1, "{}", pretty(&document));
    assert_eq!(visits[0]["class"]["code"], "UNK");
    assert_eq!(visits[0]["period"]["start"], "2026-11-24T08:30:00+00:00");
}

/// An NK1's dates, sex and birth date are read: one with an end date is a
/// relationship that has ended (s25c tester, 3: a former spouse was shown as
/// the current next of kin); and a diagnosis sent as text alone is a
/// Condition (s25c tester, 2: it was left out).
#[test]
fn an_ended_next_of_kin_is_inactive_and_a_text_diagnosis_is_kept() {
    let set = mappings();
    let output = map_text(
        &set,
        "MSH|^~\\&|PAS|RAL|JUNCTION|LCR|20261124090000||ADT^A01|NK2|P|2.5\r\
         EVN|A01|20261124090000\r\
         PID|1||9990000069^^^NHS^NH||EVANS^MAIR||19580630|F\r\
         NK1|1|EX^PARTNER|SPO^Spouse^HL70063||||NOK^Next of kin^HL70131|20100101|20240101||||||M|19560101\r\
         PV1|1|I|AMU^BAY 1^BED 1^RAL||||||||||||||||V100\r\
         DG1|1||^Chest infection||20261124|W\r",
        Path::new("inline.hl7"),
    );
    let document = output.value();
    let related = resources(&document, "RelatedPerson");
    assert_eq!(related.len(), 1, "{}", pretty(&document));
    let person = related[0];
    assert_eq!(person["active"], false, "{person}");
    assert_eq!(
        person["period"],
        serde_json::json!({"start": "2010-01-01", "end": "2024-01-01"}),
        "{person}"
    );
    assert_eq!(person["gender"], "male", "{person}");
    assert_eq!(person["birthDate"], "1956-01-01", "{person}");
    let conditions = resources(&document, "Condition");
    assert_eq!(conditions.len(), 1, "{}", pretty(&document));
    assert_eq!(conditions[0]["code"]["text"], "Chest infection");
    assert!(output.warnings.is_empty(), "{:?}", output.warnings);

    // an end date after the message's day still holds (a guardian until
    // 2030); one before the start is left out with a warning (per-1); a
    // person's own NK1 does not take its organisation contact's phone (s25d
    // tester, H1, H2, M1)
    let output = map_text(
        &set,
        "MSH|^~\\&|PAS|RAL|JUNCTION|LCR|20261124090000||ADT^A28|NK3|P|2.5\r\
         EVN|A28|20261124090000\r\
         PID|1||9990000069^^^NHS^NH||EVANS^MAIR||19580630|F\r\
         NK1|1|GUARD^IAN|GRD^Guardian^HL70063||||||20300101\r\
         NK1|2|SLIP^PERSON|FND^Friend^HL70063|||||20200101|20100101\r\
         NK1|4|YEAR^ONLY|SPO^Spouse^HL70063|||||2010|2025\r\
         NK1|5|MONTH^SLIP|FND^Friend^HL70063|||||202506|202501\r\
         NK1|3|OWN^PERSON|SIS^Sister^HL70063||||||||||||||||||||||||||JONES^MARY|020 7946 0000\r",
        Path::new("inline.hl7"),
    );
    let document = output.value();
    let related = resources(&document, "RelatedPerson");
    let named = |family: &str| {
        *related
            .iter()
            .find(|r| r["name"][0]["family"] == family)
            .unwrap_or_else(|| panic!("{family}: {}", pretty(&document)))
    };
    assert_eq!(named("GUARD")["active"], true);
    assert_eq!(named("GUARD")["period"]["end"], "2030-01-01");
    assert_eq!(
        named("SLIP")["period"],
        serde_json::json!({"start": "2020-01-01"})
    );
    assert_eq!(named("OWN").get("telecom"), None, "{}", named("OWN"));
    // a year or a month is the whole of it (s25e tester, H1, H2)
    assert_eq!(named("YEAR")["active"], false);
    assert_eq!(
        named("MONTH")["period"],
        serde_json::json!({"start": "2025-06"})
    );
    assert_eq!(named("MONTH")["active"], true);
    assert_eq!(
        output.warnings,
        [
            "NK1[2]-9: an end date (NK1-9) before the start date (NK1-8): the relationship is given no end",
            "NK1[4]-9: an end date (NK1-9) before the start date (NK1-8): the relationship is given no end"
        ]
    );
}

#[test]
fn gender_as_a_word_is_read_and_an_unknown_code_is_a_warning() {
    let set = mappings();
    let message = |sex: &str| {
        format!(
            "MSH|^~\\&|PAS|RAL|JUNCTION|LCR|20261124090000||ADT^A28|G1|P|2.4\r\
             EVN|A28|20261124090000\r\
             PID|1||9990000069^^^NHS^NH||EVANS^MAIR||19580630|{sex}\r"
        )
    };
    let output = map_text(&set, &message("Female"), Path::new("inline.hl7"));
    assert_eq!(only(&output.value(), "Patient")["gender"], "female");
    assert!(output.warnings.is_empty(), "{:?}", output.warnings);
    let output = map_text(&set, &message("I"), Path::new("inline.hl7"));
    assert_eq!(only(&output.value(), "Patient").get("gender"), None);
    assert_eq!(
        output.warnings,
        ["PID-8: a sex (PID-8) that is none of M, F, U, O, A, N, 1, 2, 9, 0, X: no gender"]
    );
}

#[test]
fn non_ascii_names_survive_their_charsets() {
    let latin1 = map_one("samples/adt_a31_latin1.hl7");
    let text = pretty(only(&latin1.value(), "Patient"));
    assert!(
        text.contains("ZOË") && text.contains("O'SÚILLEABHÁIN"),
        "{text}"
    );
    let utf8 = map_one("samples/adt_a31_update_person_v28_utf8.hl7");
    assert!(pretty(&utf8.value()).contains("Tŷ Siân"));
    let escapes = map_one("samples/adt_a05_preadmit_escapes.hl7");
    let text = pretty(&escapes.value());
    assert!(text.contains("ROSE^MARY"), "\\S\\ decodes to ^: {text}");
    let related = pretty(only(&escapes.value(), "RelatedPerson"));
    assert!(related.contains('&'), "\\T\\ decodes to &: {related}");
    assert!(
        !text.contains("\\T\\") && !text.contains("\\S\\"),
        "no escape left: {text}"
    );
}

#[test]
fn the_lab_report_has_one_observation_per_result_obx() {
    // 4 OBR groups, 20 OBX: 19 results become Observations; the ED (a PDF) cannot be an
    // Observation value in R4, so it is the U&E report's presentedForm.
    let output = map_one("samples/oru_r01_fbc_ue.hl7");
    let document = output.value();
    let reports = resources(&document, "DiagnosticReport");
    assert_eq!(reports.len(), 4);
    assert_eq!(resources(&output.value(), "Observation").len(), 19);
    let results: usize = reports
        .iter()
        .map(|r| r["result"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(results, 19, "every Observation is a result of its report");
    let pdf = reports
        .iter()
        .filter_map(|r| r["presentedForm"].as_array())
        .flatten()
        .find(|a| a["contentType"] == "application/pdf")
        .expect("the ED is a presentedForm attachment");
    assert!(pdf["data"]
        .as_str()
        .is_some_and(|d| d.starts_with("JVBERi0x")));
}

/// Every literal reference `Type/id` in a document, with where it was found.
fn references(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("reference", Value::String(r)) => out.push((at.to_string(), r.clone())),
                    _ => references(v, &format!("{at}.{k}"), out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| references(v, at, out)),
        _ => {}
    }
}

#[test]
fn lab_orders_and_specimens_are_referenced_within_the_bundle() {
    // The ServiceRequest, Specimen and Observation a lab result refers to are in the
    // same Bundle (Patient and Encounter may come from the PAS instead).
    let set = mappings();
    let mut checked = 0;
    for file in [
        "samples/oru_r01_fbc_ue.hl7",
        "samples/oru_r01_microbiology.hl7",
        "samples/oru_r01_order_notes.hl7",
        "samples/oru_r01_orc_numbers.hl7",
        "samples/oru_r01_point_of_care.hl7",
        "samples/oru_r01_device_report.hl7",
    ] {
        for (name, output) in map_file(&set, &repo().join(file)) {
            let document = output.value();
            let entries = document["entry"].as_array().expect("entries");
            let ids: Vec<String> = entries
                .iter()
                .map(|e| {
                    format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str().unwrap(),
                        e["resource"]["id"].as_str().unwrap()
                    )
                })
                .collect();
            let mut refs = Vec::new();
            references(&document, "", &mut refs);
            for (at, r) in refs {
                if ["ServiceRequest/", "Specimen/", "Observation/"]
                    .iter()
                    .any(|t| r.starts_with(t))
                {
                    checked += 1;
                    assert!(ids.contains(&r), "{name}: {at} -> {r} is not in the Bundle");
                }
            }
            // one order per OBR, each the basis of that OBR's report
            let orders = resources(&document, "ServiceRequest");
            let reports = resources(&document, "DiagnosticReport");
            assert_eq!(
                orders.len(),
                reports.len(),
                "{name}: a ServiceRequest per OBR"
            );
            for report in reports {
                assert!(
                    report["basedOn"][0]["reference"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("ServiceRequest/")),
                    "{name}: {report}"
                );
            }
        }
    }
    assert!(checked >= 40, "references were checked ({checked})");
}

#[test]
fn order_notes_sample_reads_the_order_fields_and_keeps_notes_apart() {
    let output = map_one("samples/oru_r01_order_notes.hl7");
    let document = output.value();
    for field in [
        "ORC[1]-5",
        "ORC[1]-9",
        "ORC[1]-12",
        "ORC[2]-5",
        "ORC[2]-9",
        "ORC[2]-12",
        "OBR[1]-14",
        "OBR[1]-15",
        "OBR[1]-16",
    ] {
        assert!(
            !output.unread.contains(&field.to_string()),
            "{field} unread: {:?}",
            output.unread
        );
    }
    // two orders, each read from its own ORC; one OBR with specimen fields
    let orders = resources(&document, "ServiceRequest");
    assert_eq!(orders.len(), 2);
    let who = |o: &Value| {
        o["requester"]["identifier"]["value"]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(orders[0]["code"]["coding"][0]["code"], "LFT");
    assert_eq!(who(orders[0]).as_deref(), Some("G2233445"), "OBR-16");
    assert_eq!(orders[0]["authoredOn"], "2026-11-21T09:15:00+00:00");
    assert_eq!(orders[1]["code"]["coding"][0]["code"], "TSH");
    assert_eq!(
        who(orders[1]).as_deref(),
        Some("G2233452"),
        "its own ORC-12"
    );
    assert_eq!(orders[1]["authoredOn"], "2026-11-21T09:18:00+00:00");
    let specimen = only(&document, "Specimen");
    let specimen_ref = format!("Specimen/{}", specimen["id"].as_str().unwrap());
    let reports = resources(&document, "DiagnosticReport");
    assert_eq!(
        reports[0]["specimen"][0]["reference"],
        specimen_ref.as_str()
    );
    assert!(
        reports[1].get("specimen").is_none(),
        "the TSH OBR has no specimen fields"
    );
    // The NTE after the ALT result is that Observation's note, and nowhere else.
    let comment = "ALT raised: suggest repeat in 4 weeks.";
    let with_comment: Vec<&Value> = document["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r.to_string().contains(comment))
        .collect();
    assert_eq!(with_comment.len(), 1, "{with_comment:?}");
    assert_eq!(with_comment[0]["resourceType"], "Observation");
    assert_eq!(with_comment[0]["code"]["coding"][0]["code"], "ALT");
    assert_eq!(
        with_comment[0]["specimen"]["reference"],
        specimen_ref.as_str()
    );
    // The clinical details after the OBR are never put on a result or report either.
    for kind in ["Observation", "DiagnosticReport"] {
        for r in resources(&document, kind) {
            assert!(!r.to_string().contains("atorvastatin"), "{r}");
        }
    }
}

#[test]
fn unread_fields_are_reported() {
    // The ZPI segment of the A01 is read by no shipped mapping.
    let output = map_one("samples/adt_a01_admission.hl7");
    assert!(
        output.unread.iter().any(|u| u.starts_with("ZPI")),
        "{:?}",
        output.unread
    );
}

#[test]
fn documents_have_no_empty_elements() {
    let set = mappings();
    for path in sample_files() {
        for (name, output) in map_file(&set, &path) {
            let mut found = Vec::new();
            empty_elements(&output.value(), "", &mut found);
            assert!(found.is_empty(), "{name}: empty elements at {found:?}");
        }
    }
}

#[test]
fn a_deleted_or_wrong_pdf_is_not_the_reports_presented_form() {
    // The FBC sample's cumulative report (OBX 17, ED, Base64) is final: the report
    // presents it and its status counts as read. Sent again as deleted (D) or in
    // error (W), it is not presented.
    let set = mappings();
    let path = repo().join("samples/oru_r01_fbc_ue.hl7");
    let text = messages(&std::fs::read(&path).expect("the sample"), &path).remove(0);
    let with_status = |status: &str| {
        let segments: Vec<String> = text
            .split('\r')
            .map(|s| {
                if s.starts_with("OBX|17|ED|") {
                    let mut fields: Vec<&str> = s.split('|').collect();
                    fields[11] = status;
                    fields.join("|")
                } else {
                    s.to_string()
                }
            })
            .collect();
        map_text(&set, &segments.join("\r"), &path)
    };
    let presented = |output: &junction::mapping::MapOutput| {
        resources(&output.value(), "DiagnosticReport")
            .iter()
            .filter(|r| r.get("presentedForm").is_some())
            .count()
    };
    let final_pdf = with_status("F");
    assert_eq!(presented(&final_pdf), 1);
    assert!(
        !final_pdf.unread.iter().any(|u| u.ends_with("-11")),
        "{:?}",
        final_pdf.unread
    );
    for status in ["D", "W"] {
        assert_eq!(presented(&with_status(status)), 0, "status {status}");
    }
}

/// A cancellation from a PAS that leaves PV1-2 empty but names the visit
/// (PV1-19) still cancels that visit's Encounter; a pre-admission (PV1-2 `P`)
/// updated by an A08 stays planned, not `in-progress`.
#[test]
fn the_visit_is_read_from_its_number_and_a_preadmission_stays_planned() {
    let set = mappings();
    let path = Path::new("inline.hl7");
    let cancel = map_text(
        &set,
        "MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20261120150000||ADT^A11^ADT_A09|C1|P|2.4\r\
         EVN|A11|20261120150000\rPID|1||9990000018^^^NHS^NH||SMITH^MARGARET\r\
         PV1|1||||||||||||||||||V2026112001^^^RAL01^VN\r",
        path,
    );
    let encounter = only(&cancel.value(), "Encounter").clone();
    assert_eq!(encounter["status"], "entered-in-error", "{encounter}");
    let update = map_text(
        &set,
        "MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20261120150000||ADT^A08^ADT_A01|U1|P|2.4\r\
         EVN|A08|20261120150000\rPID|1||9990000018^^^NHS^NH||SMITH^MARGARET\r\
         PV1|1|P|||||||||||||||||V2026112009^^^RAL01^VN\r",
        path,
    );
    assert_eq!(only(&update.value(), "Encounter")["status"], "planned");
}

/// The ids and values of a document's Observations, by code.
fn observations(document: &Value) -> Vec<(String, String, Value)> {
    resources(document, "Observation")
        .into_iter()
        .map(|o| {
            let code = o["code"]["coding"][0]["code"].as_str().unwrap_or_default();
            let id = o["id"].as_str().unwrap_or_default();
            (code.to_string(), id.to_string(), o.clone())
        })
        .collect()
}

#[test]
fn a_final_report_updates_the_preliminary_results_even_when_set_ids_shift() {
    let set = mappings();
    let path = Path::new("inline.hl7");
    let head = "MSH|^~\\&|WINPATH|RAL|JUNCTION|LCR|20261123090000||ORU^R01|P1|P|2.4\r\
                PID|1||9990000018^^^NHS^NH~RAL1^^^RAL^MR||SMITH^MARGARET\r\
                OBR|1|ICE1^ICE|WP1^WINPATH|UE^Urea and electrolytes^WINPATH|||20261123080000";
    let prelim = map_text(
        &set,
        &format!(
            "{head}||||||||||||||||||P\r\
             OBX|1|NM|NA^Sodium^WINPATH||139|mmol/L|||||P\r\
             OBX|2|NM|K^Potassium^WINPATH||6.9|mmol/L||HH|||P\r"
        ),
        path,
    );
    // the final report adds urea between them: potassium's set id becomes 3
    let final_ = map_text(
        &set,
        &format!(
            "{head}||||||||||||||||||F\r\
             OBX|1|NM|NA^Sodium^WINPATH||139|mmol/L|||||F\r\
             OBX|2|NM|UREA^Urea^WINPATH||5.1|mmol/L|||||F\r\
             OBX|3|NM|K^Potassium^WINPATH||4.1|mmol/L|||||C\r"
        ),
        path,
    );
    let before = observations(&prelim.value());
    let after = observations(&final_.value());
    for code in ["NA", "K"] {
        let id = |obs: &[(String, String, Value)]| {
            obs.iter()
                .find(|(c, _, _)| c == code)
                .map(|(_, id, _)| id.clone())
        };
        assert_eq!(id(&before), id(&after), "{code} keeps its id");
        assert!(id(&before).is_some());
    }
    let k = after.iter().find(|(c, _, _)| c == "K").expect("potassium");
    assert_eq!(k.2["status"], "corrected");
}

#[test]
fn text_lines_of_one_code_are_observations_of_their_own() {
    let output = map_one("samples/oru_r01_precision_and_text.hl7");
    let obs = observations(&output.value());
    let comments: Vec<_> = obs.iter().filter(|(c, _, _)| c == "COMM").collect();
    assert_eq!(comments.len(), 2, "{obs:?}");
    assert_ne!(comments[0].1, comments[1].1);
    assert_eq!(comments[0].2["valueString"], "Sample haemolysed.");
    assert_eq!(comments[1].2["valueString"], "Repeat advised.");
}

#[test]
fn decimals_keep_the_precision_the_lab_sent() {
    let output = map_one("samples/oru_r01_precision_and_text.hl7");
    // the text, not a parsed value: `1.10` must not become `1.1`
    for text in [
        "\"value\":1.10",
        "\"value\":0.090",
        "\"value\":0.80",
        "\"value\":1.20",
        "\"value\":0.045",
        "\"value\":0.084",
    ] {
        assert!(
            output.document.contains(text),
            "{text} in {}",
            output.document
        );
    }
    // and as a value read back (serde_json with arbitrary_precision)
    let obs = observations(&output.value());
    let inr = obs.iter().find(|(c, _, _)| c == "INR").expect("INR");
    assert_eq!(inr.2["valueQuantity"]["value"].to_string(), "1.10");
}

#[test]
fn values_that_do_not_read_as_their_type_are_kept_as_text() {
    let output = map_one("samples/oru_r01_precision_and_text.hl7");
    let obs = observations(&output.value());
    let value = |code: &str| {
        obs.iter()
            .find(|(c, _, _)| c == code)
            .map(|(_, _, o)| o["valueString"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(value("PLT"), "1,234 10*9/L");
    assert_eq!(value("COLL"), "20261123253000");
    assert_eq!(value("LMP"), "2026-11-01");
}

#[test]
fn every_merge_of_an_a40_is_mapped() {
    let output = map_one("samples/adt_a40_two_merges.hl7");
    let document = output.value();
    let patients = resources(&document, "Patient");
    assert_eq!(patients.len(), 4, "two survivors, two retired");
    let retired: Vec<_> = patients.iter().filter(|p| p["active"] == false).collect();
    assert_eq!(retired.len(), 2);
    for p in &retired {
        assert_eq!(p["link"][0]["type"], "replaced-by", "{p}");
    }
    let survivors: Vec<_> = patients.iter().filter(|p| p["active"] == true).collect();
    for p in &survivors {
        assert_eq!(p["link"][0]["type"], "replaces", "{p}");
    }
    // each survivor replaces its own retired record
    let names: Vec<_> = survivors
        .iter()
        .map(|p| {
            let other = p["link"][0]["other"]["reference"]
                .as_str()
                .unwrap_or_default();
            let id = other.trim_start_matches("Patient/");
            let retired = retired.iter().find(|r| r["id"] == id).expect("linked");
            (
                p["name"][0]["family"].clone(),
                retired["identifier"][0]["value"].clone(),
            )
        })
        .collect();
    assert!(
        names.contains(&(Value::from("EVANS"), Value::from("RAL9900112"))),
        "{names:?}"
    );
    assert!(
        names.contains(&(Value::from("AHMED"), Value::from("RAL9900113"))),
        "{names:?}"
    );
}

#[test]
fn a_v23_diagnosis_keeps_its_description_and_code_system() {
    let output = map_one("samples/adt_a03_v23_diagnoses.hl7");
    let document = output.value();
    let conditions = resources(&document, "Condition");
    assert_eq!(conditions.len(), 2);
    let coded = conditions
        .iter()
        .find(|c| c["code"]["coding"].is_array())
        .expect("a coded diagnosis");
    assert_eq!(coded["code"]["coding"][0]["code"], "J18.9");
    assert_eq!(
        coded["code"]["coding"][0]["system"],
        "http://hl7.org/fhir/sid/icd-10"
    );
    assert_eq!(coded["code"]["text"], "Pneumonia, unspecified");
    let text_only = conditions
        .iter()
        .find(|c| !c["code"]["coding"].is_array())
        .expect("a description-only diagnosis");
    assert_eq!(text_only["code"]["text"], "Community acquired pneumonia");
}

#[test]
fn the_comment_after_a_printed_report_is_its_conclusion() {
    // the shipped microbiology report: an NTE after the ED (the PDF's comment)
    let output = map_one("samples/oru_r01_microbiology.hl7");
    let document = output.value();
    let report = only(&document, "DiagnosticReport");
    assert_eq!(
        report["conclusion"],
        "Significant bacteriuria. Treat according to sensitivities."
    );
    assert!(output.unread.is_empty(), "{:?}", output.unread);
    // an ED sent with no order is a DocumentReference: its note is the description
    let set = mappings();
    let device = map_text(
        &set,
        "MSH|^~\\&|CARDIO|RAL|JUNCTION|LCR|20261123090000||ORU^R01|D1|P|2.4\r\
         PID|1||9990000018^^^NHS^NH||SMITH^MARGARET\r\
         OBX|1|ED|ECG^ECG report^L||^TEXT^PLAIN^A^sinus rhythm||||||F\r\
         NTE|1|L|Reviewed by the cardiology registrar.\r",
        Path::new("inline.hl7"),
    );
    let document = device.value();
    let reference = only(&document, "DocumentReference");
    assert_eq!(
        reference["description"],
        "Reviewed by the cardiology registrar."
    );
}

#[test]
fn every_gp_and_practice_of_pd1_is_kept() {
    let set = mappings();
    let output = map_text(
        &set,
        "MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20261123090000||ADT^A08^ADT_A01|G1|P|2.4\r\
         EVN|A08|20261123090000\r\
         PID|1||9990000018^^^NHS^NH||SMITH^MARGARET\r\
         PD1|||PRIMROSE HILL SURGERY^^F84003~E82061|G8234567^OKAFOR^CHI^^^DR~G1234567^WHO^DOC^^^DR\r",
        Path::new("inline.hl7"),
    );
    let document = output.value();
    let patient = only(&document, "Patient");
    let values: Vec<&str> = patient["generalPractitioner"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["identifier"]["value"].as_str())
        .collect();
    assert_eq!(values, ["F84003", "E82061", "G8234567", "G1234567"]);
}

#[test]
fn a_date_range_is_a_period_and_a_numeric_array_its_values() {
    let set = mappings();
    let output = map_text(
        &set,
        "MSH|^~\\&|LAB|RAL|JUNCTION|LCR|20261123090000||ORU^R01|DR1|P|2.3\r\
         PID|1||9990000018^^^NHS^NH||SMITH^MARGARET\r\
         OBR|1||F9|WARF^Warfarin clinic^L|||20261123080000\r\
         OBX|1|DR|DOSE^Dosing period^L||20261101^20261115||||||F\r\
         OBX|2|DR|OLD^Period as v2.3 TS^L||20261101&D^20261115&D||||||F\r\
         OBX|3|NA|INR3^Last three INRs^L||2.1^2.4^2.9||||||F\r\
         OBX|4|DR|BAD^Bad range^L||sometime^later||||||F\r\
         OBX|5|NA|K2^Two potassiums^L||4.1^4.3|mmol/L|||||F\r\
         OBX|6|NM|PLT^Platelets^L||1.5E3|10*9/L|||||F\r\
         OBX|7|NM|EQ^Equal^L||=5|mmol/L|||||F\r\
         OBX|11|NM|NEG^Signed exponent^L||-1.5E3|mmol/L|||||F\r\
         OBX|8|NM|SP^Spaced^L||1 234|U/L|||||F\r\
         OBX|9|NM|PC^Percent^L||45%|%|||||F\r\
         OBX|10|NM|FL^Flagged^L||12.5 H|g/L|||||F\r",
        Path::new("inline.hl7"),
    );
    let document = output.value();
    let obs = observations(&document);
    let get = |code: &str| {
        obs.iter()
            .find(|(c, _, _)| c == code)
            .map(|(_, _, o)| o.clone())
            .unwrap()
    };
    let period = json_of(&get("DOSE"), "valuePeriod");
    assert_eq!(
        period,
        serde_json::json!({"start": "2026-11-01", "end": "2026-11-15"})
    );
    assert_eq!(json_of(&get("OLD"), "valuePeriod"), period);
    assert_eq!(get("INR3")["valueString"], "2.1, 2.4, 2.9");
    // its parts, between spaces: not the sender's separators
    assert_eq!(get("BAD")["valueString"], "sometime later");
    assert_eq!(get("BAD").get("valuePeriod"), None);
    // with their units (s24d tester, LOW: they were dropped)
    assert_eq!(get("K2")["valueString"], "4.1, 4.3 mmol/L");
    assert_eq!(get("PLT")["valueString"], "1.5E3 10*9/L");
    // a number's digits with no letters or `%` of their own: with the units
    // (s25c tester, 8); one that says its own (a `%`, a flag) as sent
    assert_eq!(get("EQ")["valueString"], "=5 mmol/L");
    assert_eq!(get("NEG")["valueString"], "-1.5E3 mmol/L");
    assert_eq!(get("SP")["valueString"], "1 234 U/L");
    assert_eq!(get("PC")["valueString"], "45%");
    assert_eq!(get("FL")["valueString"], "12.5 H");
}

fn json_of(resource: &Value, key: &str) -> Value {
    resource.get(key).cloned().unwrap_or(Value::Null)
}

/// Results sent with no order (a blood gas analyser's) are each patient's own: two
/// patients' pH are two Observations, and so are two samples of one patient.
#[test]
fn results_with_no_order_belong_to_their_patient_and_time() {
    let set = mappings();
    let path = repo().join("samples/oru_r01_point_of_care.hl7");
    let text = messages(&std::fs::read(&path).expect("the sample"), &path).remove(0);
    let ph_id = |text: &str| {
        let output = map_text(&set, text, &path);
        let obs = observations(&output.value());
        obs.iter()
            .find(|(c, _, _)| c == "PH")
            .map(|(_, id, _)| id.clone())
            .expect("a pH")
    };
    let first = ph_id(&text);
    assert_eq!(first, ph_id(&text), "the same message converges");
    let other_patient = text.replace(
        "9990123713^^^NHS^NH~RAL7788990^^^RAL^MR",
        "9990000018^^^NHS^NH~RAL1234567^^^RAL^MR",
    );
    assert_ne!(first, ph_id(&other_patient), "another patient's pH");
    let later = text.replace("20261122034500", "20261122051500");
    assert_ne!(first, ph_id(&later), "a later sample");
}

/// UK labs give one lab number (OBR-3) to every test set of a sample: each OBR is
/// still its own report, with its own results, however their codes repeat.
#[test]
fn test_sets_sharing_a_lab_number_are_reports_of_their_own() {
    let output = map_one("samples/oru_r01_shared_lab_number.hl7");
    let document = output.value();
    let reports = resources(&document, "DiagnosticReport");
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert_ne!(reports[0]["id"], reports[1]["id"]);
    let results = |r: &Value| r["result"].as_array().map_or(0, Vec::len);
    assert_eq!((results(reports[0]), results(reports[1])), (3, 6));
    let obs = observations(&document);
    let comments: Vec<_> = obs.iter().filter(|(c, _, _)| c == "COMM").collect();
    assert_eq!(comments.len(), 2, "both reports' comments");
    assert_ne!(comments[0].1, comments[1].1);
    // each test set its own Specimen (a U&E's serum is not a urine culture's pot)
    let specimens = resources(&document, "Specimen");
    assert_eq!(specimens.len(), 2);
    assert_ne!(reports[0]["specimen"], reports[1]["specimen"]);
    // v2.8 flags are CWE: coded by their first component
    let plt = obs.iter().find(|(c, _, _)| c == "PLT").expect("platelets");
    assert_eq!(plt.2["interpretation"][0]["coding"][0]["code"], "LL");
    assert_eq!(plt.2["interpretation"][1]["coding"][0]["code"], "A");
    let esr = obs.iter().find(|(c, _, _)| c == "ESR").expect("ESR");
    assert_eq!(esr.2["status"], "amended");
    // a titre's comparator; a range with one bound; a word where a number was due
    let myco = obs.iter().find(|(c, _, _)| c == "MYCO").expect("titre");
    assert_eq!(myco.2["valueRatio"]["numerator"]["comparator"], "<");
    let rf = obs.iter().find(|(c, _, _)| c == "RF").expect("RF");
    assert_eq!(rf.2["valueRange"].get("high"), None, "{}", rf.2);
    let crp = obs.iter().find(|(c, _, _)| c == "CRP").expect("CRP");
    assert_eq!(crp.2["valueString"], "TNP");
    // formatted text as lines; a form feed a line break, never a control character
    let note = obs.iter().find(|(c, _, _)| c == "NOTE").expect("note");
    assert_eq!(
        note.2["valueString"],
        "HISTORY\nJoint pain.\n\nPage 1\nPage 2"
    );
    // a PDF with no encoding (ED.4) or subtype (ED.3): Base64 it is, with a type
    let pdf = &reports[1]["presentedForm"][0];
    assert_eq!(pdf["data"], "JVBERi0xLjQK");
    assert_eq!(pdf["contentType"], "application/octet-stream");
}

/// Two OBRs with no order numbers: each report keeps its own results, found by
/// which OBR of the message it is, not by the result's place in its report.
#[test]
fn reports_with_no_numbers_are_told_apart_by_their_place_in_the_message() {
    let set = mappings();
    let output = map_text(
        &set,
        "MSH|^~\\&|LIMS|RAL|JUNCTION|LCR|20261123090000||ORU^R01|N1|P|2.4\r\
         PID|1||9990000018^^^NHS^NH||SMITH^MARGARET\r\
         OBR|1|||FBC^Full blood count^L\r\
         OBX|1|TX|COMM^Comment^L||FBC comment||||||F\r\
         OBR|2|||COAG^Clotting^L\r\
         OBX|1|TX|COMM^Comment^L||INR high, contact clinic||||||F\r",
        Path::new("inline.hl7"),
    );
    let document = output.value();
    let obs = observations(&document);
    assert_eq!(obs.len(), 2, "{obs:?}");
    assert_ne!(obs[0].1, obs[1].1);
    let reports = resources(&document, "DiagnosticReport");
    assert_eq!(reports.len(), 2);
    for (report, (_, id, _)) in reports.iter().zip(&obs) {
        assert_eq!(
            report["result"][0]["reference"],
            format!("Observation/{id}"),
            "{report}"
        );
    }
}

/// Results, visits and merges name a patient: a message whose PID gives no
/// identifier is refused at `map` (an error to see and replay), not filed under
/// no one.
#[test]
fn a_message_about_no_identifiable_patient_is_not_mapped() {
    let set = mappings();
    for text in [
        "MSH|^~\\&|LIMS|RAL|JUNCTION|LCR|20261123090000||ORU^R01|X1|P|2.4\r\
         PID|1||||SMITH^A||19480312|F\r\
         OBR|1|ICE1^ICE|WP1^WINPATH|UE^U and E^L\rOBX|1|NM|K^Potassium^L||4.1|mmol/L|||||F\r",
        "MSH|^~\\&|PAS|RAL|JUNCTION|LCR|20261123090000||ADT^A01|X2|P|2.4\r\
         EVN|A01|20261123090000\rPID|1||||SMITH^A\rPV1|1|I|||||||||||||||||V1^^^RAL^VN\r",
        // an identifier that decodes to nothing is no identifier
        "MSH|^~\\&|PAS|RAL|JUNCTION|LCR|20261123090000||ADT^A01|X3|P|2.4\r\
         EVN|A01|20261123090000\rPID|1||\\X00\\^^^RAL^MR||SMITH^A\r\
         PV1|1|I|||||||||||||||||V1^^^RAL^VN\r",
        // a merge whose survivor has no identifier retires no one
        "MSH|^~\\&|PAS|RAL|JUNCTION|LCR|20261123090000||ADT^A40^ADT_A39|X4|P|2.4\r\
         EVN|A40|20261123090000\rPID|1||||BEGUM^NASIMA\rMRG|RAL7654321^^^RAL^MR\r",
    ] {
        let message = junction::hl7::Message::parse(text).expect("parses");
        let header = message.header().expect("a header");
        let plan = set
            .select(&header.message_code, &header.trigger_event)
            .expect("a mapping");
        let err = plan.apply(&message).expect_err("refused").to_string();
        assert!(
            err.contains("requires a Patient") || err.contains("no id could be made for Patient"),
            "{err}"
        );
    }
}

/// v2.7 made PID-8, PV1-2 and DG1-6 coded (CWE): read by their code. A bare MRN
/// and an empty MSH-4 (both optional) still give an identifier system and a
/// Provenance; an A08 for a pre-admission (`P^Preadmit^HL70004`) keeps it
/// planned.
#[test]
fn coded_v28_fields_bare_mrns_and_an_empty_msh_4() {
    let output = map_one("samples/adt_a08_v28_bare_mrn.hl7");
    let document = output.value();
    let patient = only(&document, "Patient");
    assert_eq!(patient["gender"], "male");
    assert_eq!(
        patient["identifier"][1]["system"],
        "urn:junction:local-id:pas:id"
    );
    let encounter = only(&document, "Encounter");
    assert_eq!(encounter["class"]["code"], "PRENC");
    assert_eq!(encounter["status"], "planned");
    let condition = only(&document, "Condition");
    assert_eq!(
        condition["verificationStatus"]["coding"][0]["code"],
        "confirmed"
    );
    let provenance = only(&document, "Provenance");
    assert_eq!(
        provenance["entity"][0]["what"]["identifier"]["system"],
        "urn:junction:control-id:pas"
    );
}

/// A cancellation carries its patient create-only, with the GP practice the
/// routes to a neighbour read.
#[test]
fn a_cancellation_carries_its_patient_create_only() {
    let output = map_one("samples/adt_a11_cancel_hwe_practice.hl7");
    let document = output.value();
    let entry = document["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["resource"]["resourceType"] == "Patient")
        .expect("a Patient");
    assert_eq!(entry["request"]["ifNoneMatch"], "*");
    assert_eq!(
        entry["resource"]["generalPractitioner"][0]["identifier"]["value"],
        "E82061"
    );
}

/// "No known allergies" in AL1-3 (by code or by text) is the SNOMED CT statement
/// UK Core uses, never an allergy to something coded `NKA`.
#[test]
fn no_known_allergies_is_a_statement_not_an_allergen() {
    let set = mappings();
    let output = map_text(
        &set,
        "MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20261123090000||ADT^A01|N1|P|2.4\r\
         EVN|A01|20261123090000\rPID|1||9990000018^^^NHS^NH||SMITH^A\r\
         PV1|1|I|||||||||||||||||V77^^^RAL^VN\r\
         AL1|1|DA|NKA^No known allergies\rAL1|2||^NO KNOWN DRUG ALLERGIES\r\
         AL1|3|DA|PEN^Penicillin^L\r",
        Path::new("inline.hl7"),
    );
    let document = output.value();
    let codes: Vec<_> = resources(&document, "AllergyIntolerance")
        .iter()
        .map(|a| {
            a["code"]["coding"][0]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(codes, ["716186003", "409137002", "PEN"]);
}

/// An ED sent as its data alone (no ED components) or with `Base-64` as its
/// encoding is the report's presented form, not silently dropped.
#[test]
fn a_pdf_sent_bare_or_with_an_odd_encoding_name_is_kept() {
    let set = mappings();
    let output = map_text(
        &set,
        "MSH|^~\\&|LIMS|RAL|JUNCTION|LCR|20261123090000||ORU^R01|E1|P|2.4\r\
         PID|1||9990000018^^^NHS^NH||SMITH^A\r\
         OBR|1|ICE1^ICE|WP1^WINPATH|REP^Report^L\r\
         OBX|1|ED|PDF^Report^L||JVBERi0xLjQK||||||F\r\
         OBX|2|ED|PDF2^Report two^L||^AP^PDF^Base-64^JVBERi0xLjQK||||||F\r\
         OBX|3|ED|PDF3^Report three^L||^AP^application/pdf^Base64^JVBERi0xLjQK||||||F\r\
         OBX|4|ED|PDF4^Report four^L||^application/pdf^X-UNKNOWN^Base64^JVBERi0xLjQK||||||F\r",
        Path::new("inline.hl7"),
    );
    let document = output.value();
    let report = only(&document, "DiagnosticReport");
    let forms = report["presentedForm"].as_array().expect("presented forms");
    assert_eq!(forms.len(), 4, "{report}");
    assert_eq!(forms[1]["contentType"], "application/pdf");
    // a whole media type in ED.3, or (ED.3 unknown) in ED.2
    assert_eq!(forms[2]["contentType"], "application/pdf");
    assert_eq!(forms[3]["contentType"], "application/pdf");
    assert!(forms.iter().all(|f| f["data"] == "JVBERi0xLjQK"));
}

#[test]
fn a_pdf_in_an_encoding_no_one_can_read_is_a_warning_not_silence() {
    let set = mappings();
    let output = map_text(
        &set,
        "MSH|^~\\&|LIMS|RAL|JUNCTION|LCR|20261124090000||ORU^R01|E2|P|2.4\r\
         PID|1||9990000018^^^NHS^NH||SMITH^A\r\
         OBR|1|ICE1^ICE|WP1^WINPATH|REP^Report^L\r\
         OBX|1|ED|PDF^Report^L||LIMS^AP^PDF^BINARY^JVBERi0xLjQK||||||F\r\
         OBX|2|ED|PDF^Report^L||LIMS^AP^PDF^Base64^JVBERi0xLjQK||||||F\r",
        Path::new("inline.hl7"),
    );
    let document = output.value();
    let report = only(&document, "DiagnosticReport");
    let forms = report["presentedForm"].as_array().expect("presented forms");
    assert_eq!(forms.len(), 1, "only the Base64 one: {report}");
    assert_eq!(
        output.warnings,
        ["OBX[1]-5: an ED encoding (ED.4) that is not Base64, A or Hex: the document is left out"]
    );
}

#[test]
fn a_text_report_keeps_its_paragraphs_and_indentation() {
    let set = mappings();
    let outputs = map_file(&set, &repo().join("samples/oru_r01_radiology_report.hl7"));
    let document = outputs[0].1.value();
    let observation = only(&document, "Observation");
    assert_eq!(
        observation["valueString"],
        "XR CHEST PA\n\nClinical details: cough, 3 weeks.\n\nFindings:\n  1. No focal \
         consolidation.\n  2. Heart size normal.\n\nImpression: normal chest radiograph."
    );
    assert_eq!(
        observation["note"][0]["text"],
        "Addendum: compared with 2024 film.\n\nNo interval change."
    );
}

#[test]
fn a_v23_nhs_number_in_pid_2_or_pid_19_is_read_only_when_it_passes() {
    let set = mappings();
    let message = |pid2: &str, pid19: &str| {
        format!(
            "MSH|^~\\&|PAS|RAL|JUNCTION|LCR|20261124090000||ADT^A28|V1|P|2.3\r\
             EVN|A28|20261124090000\r\
             PID|1|{pid2}|RAL123^^^RAL^MR||EVANS^MAIR||19580630|F|||||||||||{pid19}\r"
        )
    };
    let identifiers = |pid2: &str, pid19: &str| {
        let output = map_text(&set, &message(pid2, pid19), Path::new("inline.hl7"));
        let patient = only(&output.value(), "Patient").clone();
        let ids: Vec<(String, String)> = patient["identifier"]
            .as_array()
            .expect("identifiers")
            .iter()
            .map(|i| {
                let s = i["system"].as_str().unwrap_or_default();
                (
                    s.to_string(),
                    i["value"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        (ids, output.warnings)
    };
    let nhs = |v: &str| {
        (
            "https://fhir.nhs.uk/Id/nhs-number".to_string(),
            v.to_string(),
        )
    };
    let local = |s: &str, v: &str| (format!("urn:junction:local-id:ral:{s}"), v.to_string());
    // PID-2 tagged as the NHS's
    let (ids, _) = identifiers("9990000069^^^NHS^NH", "");
    assert_eq!(ids, [nhs("9990000069"), local("mr", "RAL123")]);
    // PID-2 bare: a local identifier, never taken for an NHS number
    let (ids, _) = identifiers("9990000069", "");
    assert_eq!(ids, [local("mr", "RAL123"), local("id", "9990000069")]);
    // PID-19, the field v2.3 UK feeds used for it
    let (ids, _) = identifiers("", "9990000069");
    assert_eq!(ids, [nhs("9990000069"), local("mr", "RAL123")]);
    // one that fails modulus 11 stays a local identifier, with a warning
    let (ids, warnings) = identifiers("", "9990000068");
    assert_eq!(ids, [local("mr", "RAL123"), local("ssn", "9990000068")]);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("PID-19: "), "{warnings:?}");
}

#[test]
fn nhs_numbers_are_found_under_the_labels_senders_use() {
    let set = mappings();
    for pid3 in [
        "RFH1000009^^^RFH^MRN~9990000069^^^NHSNBR^NHSNBR",
        "9990000069^^^^NHS~RFH1000009^^^RFH^MRN",
        "RFH1000009^^^RFH^MRN~9990000069^^^NHS Number",
    ] {
        let text = format!(
            "MSH|^~\\&|PAS|RFH|JUNCTION|LCR|20261124090000||ADT^A28|L1|P|2.3\r\
             EVN|A28|20261124090000\r\
             PID|1||{pid3}||EVANS^MAIR||19580630|F\r"
        );
        let output = map_text(&set, &text, Path::new("inline.hl7"));
        let patient = only(&output.value(), "Patient").clone();
        let ids = patient["identifier"]
            .as_array()
            .expect("identifiers")
            .clone();
        assert_eq!(ids.len(), 2, "{pid3}: {ids:?}");
        assert_eq!(
            ids[0]["system"], "https://fhir.nhs.uk/Id/nhs-number",
            "{pid3}"
        );
        assert_eq!(ids[0]["value"], "9990000069", "{pid3}");
        // `MRN` is the type MR; the MRN is the local identifier
        assert_eq!(ids[1]["value"], "RFH1000009", "{pid3}");
        assert_eq!(ids[1]["type"]["coding"][0]["code"], "MR", "{pid3}");
    }
    // a label that is no identifier type of table 0203 is the type's text
    let output = map_text(
        &set,
        "MSH|^~\\&|PAS|RFH|JUNCTION|LCR|20261124090000||ADT^A28|L2|P|2.3\r\
         EVN|A28|20261124090000\r\
         PID|1||9990000069^^^NHS^NH~H123^^^RFH^HOSP||EVANS^MAIR||19580630|F\r",
        Path::new("inline.hl7"),
    );
    let patient = only(&output.value(), "Patient").clone();
    assert_eq!(
        patient["identifier"][1]["type"],
        serde_json::json!({"text": "HOSP"})
    );
}

#[test]
fn a_result_sent_as_st_keeps_its_units() {
    let set = mappings();
    let output = map_text(
        &set,
        "MSH|^~\\&|TELEPATH|RAL|JUNCTION|LCR|20261124090000||ORU^R01|S1|P|2.3\r\
         PID|1||9990000069^^^NHS^NH||EVANS^MAIR\r\
         OBR|1|ICE1^ICE|TP1^TELEPATH|UE^U and E^L\r\
         OBX|1|ST|CREA^Creatinine^L||65|umol/L|45-84||||F\r\
         OBX|2|ST|COMM^Comment^L||Haemolysed||||||F\r",
        Path::new("inline.hl7"),
    );
    let document = output.value();
    let values: Vec<&Value> = document["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Observation")
        .map(|e| &e["resource"]["valueString"])
        .collect();
    assert_eq!(
        values,
        [&Value::from("65 umol/L"), &Value::from("Haemolysed")]
    );
}

#[test]
fn observations_of_the_specimen_are_not_results_of_the_report() {
    // v2.5.1's SPECIMEN group: an OBX after the SPM is about the sample (its
    // temperature on arrival), not a result of the test
    let set = mappings();
    let output = map_text(
        &set,
        "MSH|^~\\&|EPIC|RGT|JUNCTION|LCR|20261124130000||ORU^R01^ORU_R01|SP1|P|2.5.1\r\
         PID|1||9990000018^^^NHS^NH||SMITH^A\r\
         OBR|1|EPORD1^EPC|EPLAB1^BEAKER|GLU^Glucose^LN|||20261124081500\r\
         OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L|||||F\r\
         SPM|1|SP1&EPC^SP1LAB&BEAKER||SER^Serum^HL70487\r\
         OBX|2|NM|TEMP^Specimen temperature^L||4|Cel^^UCUM|||||F\r",
        Path::new("inline.hl7"),
    );
    let document = output.value();
    let codes: Vec<&str> = document["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Observation")
        .map(|e| {
            e["resource"]["code"]["coding"][0]["code"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(codes, ["2345-7"]);
    let report = only(&document, "DiagnosticReport");
    assert_eq!(
        report["result"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert!(
        output.unread.iter().any(|u| u == "OBX[2]-5"),
        "{:?}",
        output.unread
    );
}

/// A text report sent one line per OBX (WinPath histology, CRIS): each line is a
/// result, and the report is also presented whole, laid out as sent: its blank
/// lines and indentation, which a result's (trimmed) text loses. A report that
/// mixes text with other results is not given a text form.
#[test]
fn a_text_report_sent_line_by_line_is_presented_as_laid_out() {
    use base64::Engine as _;
    let set = mappings();
    let text = "MSH|^~\\&|WINPATH|RXH01|ICE|RXH01|20261120101500||ORU^R01|WP0001|P|2.4\r\
        PID|1||9990000158^^^NHS^NH||TESTER^TEXT||19700101|F\r\
        OBR|1|PL1|FL1|HIST^Histology^WP|||20261120090000|||||||||||||||20261120100000||SP|F\r\
        OBX|1|TX|HIST^Histology^WP||MACROSCOPY:||||||F\r\
        OBX|2|TX|HIST^Histology^WP||  Skin ellipse 20 x 8 mm.||||||F\r\
        OBX|3|TX|HIST^Histology^WP||||||||F\r\
        OBX|4|TX|HIST^Histology^WP||MICROSCOPY:||||||F\r\
        OBX|5|TX|HIST^Histology^WP||  Basal cell carcinoma.||||||F\r\
        OBX|6|TX|HIST^Histology^WP||    Margins clear (2 mm).   ||||||F\r";
    let path = Path::new("histology.hl7");
    let output = map_text(&set, text, path);
    let document = output.value();
    let report = only(&document, "DiagnosticReport");
    let forms = report["presentedForm"]
        .as_array()
        .expect("a presented form");
    assert_eq!(forms.len(), 1, "{forms:?}");
    assert_eq!(forms[0]["contentType"], "text/plain; charset=utf-8");
    assert_eq!(forms[0]["title"], "Histology");
    let data = base64::engine::general_purpose::STANDARD
        .decode(forms[0]["data"].as_str().expect("data"))
        .expect("Base64");
    assert_eq!(
        String::from_utf8(data).expect("UTF-8"),
        "MACROSCOPY:\n  Skin ellipse 20 x 8 mm.\n\nMICROSCOPY:\n  Basal cell carcinoma.\n    Margins clear (2 mm)."
    );
    assert_eq!(
        report["result"].as_array().map(Vec::len),
        Some(6),
        "every line is still a result"
    );
    // a withdrawn line is left out of the text
    let withdrawn = text.replace(
        "Basal cell carcinoma.||||||F",
        "Basal cell carcinoma.||||||W",
    );
    let document = map_text(&set, &withdrawn, path).value();
    let form = &only(&document, "DiagnosticReport")["presentedForm"][0]["data"];
    let data = base64::engine::general_purpose::STANDARD
        .decode(form.as_str().expect("data"))
        .expect("Base64");
    assert!(!String::from_utf8_lossy(&data).contains("carcinoma"));
    // a report with a number among its text lines has no text form
    let mixed = text.replace("OBX|3|TX|HIST^Histology^WP||", "OBX|3|NM|SIZE^Size^WP||20");
    let document = map_text(&set, &mixed, path).value();
    assert!(only(&document, "DiagnosticReport")
        .get("presentedForm")
        .is_none());
}

/// Labs send one susceptibility panel (a child OBR) per organism, often with the
/// same order numbers and test code: OBR-26 (the parent result) keeps them two
/// reports, and each antibiotic result stays its organism's.
#[test]
fn two_organisms_susceptibility_panels_are_two_reports() {
    let set = mappings();
    let path = repo().join("samples/oru_r01_micro_susceptibility.hl7");
    let text = messages(&std::fs::read(&path).expect("the sample"), &path)
        .remove(0)
        .replace("26M0004512-S1", "26M0004512");
    let organism = "OBX|2|ST|CFU^Colony count^WINPATH|1|>100000|CFU/mL|||||F\r";
    assert!(text.contains(organism));
    let text = text.replace(
        organism,
        &format!(
            "{organism}OBX|3|CWE|ORG^Organism^WINPATH|2|3092008^Staphylococcus aureus^SCT||||||F\r"
        ),
    ) + "ORC|RE|ICE880012^ICE|26M0004512^WINPATH||CM\r\
        OBR|3|ICE880012^ICE|26M0004512^WINPATH|SENS^Susceptibility^WINPATH|||20261123080000|||||||||G8888888^PATEL^ANIL||||||20261124141000|||F|ORG&Organism&WINPATH^2^Staphylococcus aureus|||ICE880012&ICE^26M0004512&WINPATH\r\
        OBX|1|CWE|FLUC^Flucloxacillin^WINPATH|1|S^Susceptible^HL70078||||||F\r\
        OBX|2|CWE|AMOX^Amoxicillin^WINPATH|1|R^Resistant^HL70078||||||F\r";
    let output = map_text(&set, &text, &path);
    assert!(output.warnings.is_empty(), "{:?}", output.warnings);
    let document = output.value();
    let reports = resources(&document, "DiagnosticReport");
    assert_eq!(reports.len(), 3, "the culture and two panels: {reports:?}");
    let results: Vec<usize> = reports
        .iter()
        .map(|r| r["result"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(results, [3, 3, 2]);
    let amoxicillin: Vec<String> = resources(&document, "Observation")
        .into_iter()
        .filter(|o| o["code"]["coding"][0]["code"] == "AMOX")
        .map(|o| {
            o["derivedFrom"][0]["display"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(
        amoxicillin,
        [
            "Organism 1: Escherichia coli",
            "Organism 2: Staphylococcus aureus"
        ]
    );
    // a parent result without a sub-id (the organism's name tells them apart),
    // and child orders that name no parent result at all: still two panels
    let no_sub_id = text
        .replace("^1^Escherichia coli|", "^^Escherichia coli|")
        .replace("^2^Staphylococcus aureus|", "^^Staphylococcus aureus|");
    let no_parent = text
        .replace("ORG&Organism&WINPATH^1^Escherichia coli|", "|")
        .replace("ORG&Organism&WINPATH^2^Staphylococcus aureus|", "|");
    for (what, variant) in [("no sub-id", no_sub_id), ("no OBR-26", no_parent)] {
        assert_ne!(variant, text, "{what}");
        let document = map_text(&set, &variant, &path).value();
        let reports = resources(&document, "DiagnosticReport");
        assert_eq!(reports.len(), 3, "{what}: {reports:?}");
        let amox = resources(&document, "Observation")
            .into_iter()
            .filter(|o| o["code"]["coding"][0]["code"] == "AMOX")
            .count();
        assert_eq!(amox, 2, "{what}: each organism's amoxicillin");
    }
}

/// UK labs often send a test's name with a bare `&` (`U&E`), which HL7 would
/// read as a subcomponent separator: a CWE's text is a primitive, so it is kept
/// whole (`U&E`, not `U`).
#[test]
fn an_unescaped_ampersand_in_a_tests_name_is_kept() {
    let set = mappings();
    let text = "MSH|^~\\&|WINPATH|RXH01|ICE|RXH01|20261120101500||ORU^R01|WPAMP1|P|2.4\r\
        PID|1||9990000158^^^NHS^NH||TESTER^TEXT||19700101|F\r\
        OBR|1|PL1|FL1|UE^U&E^WP|||20261120090000|||||||||||||||20261120100000||CH|F\r\
        OBX|1|NM|NA^Sodium (U&E)^WP||140|mmol/L|133-146||||F\r";
    let document = map_text(&set, text, Path::new("amp.hl7")).value();
    let report = only(&document, "DiagnosticReport");
    assert_eq!(report["code"]["text"], "U&E", "{report}");
    assert_eq!(report["code"]["coding"][0]["display"], "U&E", "{report}");
    let result = only(&document, "Observation");
    assert_eq!(result["code"]["text"], "Sodium (U&E)", "{result}");
    assert_eq!(result["code"]["coding"][0]["code"], "NA", "{result}");
}

#[test]
fn a_repeated_value_the_mapping_does_not_read_is_said_and_so_is_an_empty_first_one() {
    // an SN whose first repetition is empty (`~<^5`), and one sent twice
    let set = mappings();
    let output = map_text(
        &set,
        "MSH|^~\\&|LAB|RAL|JUNCTION|LCR|20261124130000||ORU^R01|RP1|P|2.4\r\
         PID|1||9990000018^^^NHS^NH||SMITH^A\r\
         OBR|1||F1|CRP^CRP^L|||20261124081500\r\
         OBX|1|SN|CRP^CRP^L||~<^5|mg/L|||||F\r\
         OBX|2|SN|ESR^ESR^L||^12~^14|mm/h|||||F\r\
         OBX|3|CP|FEE^Fee^L||12.50&GBP|||||F\r",
        Path::new("inline.hl7"),
    );
    let said = |text: &str| output.warnings.iter().filter(|w| w.contains(text)).count();
    assert_eq!(
        said("OBX[1]-5[2]: an OBX-5 of this value type whose first repetition is empty"),
        1,
        "{:?}",
        output.warnings
    );
    assert_eq!(
        said("OBX[2]-5[2]: a repeated OBX-5 of this value type: only its first repetition is read"),
        1,
        "{:?}",
        output.warnings
    );
    assert_eq!(said("OBX[1]-5[2]: a repeated"), 0, "{:?}", output.warnings);
    // a value of a type not mapped: its parts, not the sender's separators
    let document = output.value();
    let fee = observations(&document)
        .into_iter()
        .find(|(c, _, _)| c == "FEE")
        .unwrap()
        .2;
    assert_eq!(fee["valueString"], "12.50 GBP");
}
