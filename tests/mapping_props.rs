//! Property tests: no shipped mapping panics on arbitrary parsed messages, and no
//! document ever carries an empty string, object or array (pruning).
//!
//! Messages are HL7-ish text: an MSH whose type is one the shipped mappings cover
//! (or not), then random segments from PID/PD1/PV1/PV2/NK1/DG1/AL1/MRG/ORC/OBR/OBX/NTE
//! and Z segments, with random fields, components, subcomponents, repetitions,
//! escape sequences (valid and broken), dates (valid and not), NHS-number-shaped
//! digits and non-ASCII text. Every plan is applied to every message that parses,
//! not only the plan the message's type selects.

mod mapping_support;

use std::sync::OnceLock;

use junction::hl7;
use junction::mapping::MappingSet;
use mapping_support::{empty_elements, mappings};
use proptest::prelude::*;

fn shipped() -> &'static MappingSet {
    static SET: OnceLock<MappingSet> = OnceLock::new();
    SET.get_or_init(mappings)
}

/// Whole values that mean something to a mapping.
fn token() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "9990000018",
        "9990160822",
        "999000001",
        "NHS",
        "NH",
        "MR",
        "RAL",
        "NSTS01",
        "NSTS08",
        "NSTS99",
        "M",
        "F",
        "U",
        "O",
        "1",
        "2",
        "9",
        "X",
        "NM",
        "ST",
        "TX",
        "FT",
        "CE",
        "CWE",
        "SN",
        "DT",
        "TS",
        "DTM",
        "ED",
        "RP",
        "XYZ",
        "H",
        "L",
        "N",
        "HH",
        "A",
        "F",
        "P",
        "I",
        "O",
        "E",
        "20261120143512",
        "20261120143512+0100",
        "19480312",
        "1948",
        "194803",
        "20261340",
        "2026112025",
        "20260714163204.1234",
        "-12",
        "3.14",
        "1e5",
        "<",
        ">=",
        "<^5",
        "^10^-^20",
        "g/L",
        "10*9/L",
        "115-165",
        "<1.0",
        "Base64",
        "JVBERi0x",
        "PENICILLIN",
        "SV",
        "DA",
        "F84003",
        "G8234567",
        "C4512345",
        "W",
        "SPO",
        "NOK",
    ])
    .prop_map(str::to_string)
}

/// Escape sequences, well formed and broken.
fn escape() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "\\T\\",
        "\\S\\",
        "\\F\\",
        "\\R\\",
        "\\E\\",
        "\\X41\\",
        "\\Xe9\\",
        "\\X4\\",
        "\\.br\\",
        "\\H\\",
        "\\N\\",
        "\\Z123\\",
        "\\",
        "\\\\",
        "\\Cxxyy\\",
        "\\M\\",
    ])
    .prop_map(str::to_string)
}

/// Free text with non-ASCII letters, no delimiters.
fn text() -> impl Strategy<Value = String> {
    "[A-Za-z0-9 .,'/()*-]{0,10}|[éÁŷßØ中文😀Zoë ]{1,6}".prop_map(|s| s.to_string())
}

/// A component: tokens, text and escapes glued together; subcomponents with `&`.
fn component() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof![4 => token(), 4 => text(), 1 => escape()], 0..3)
        .prop_map(|parts| parts.concat())
        .prop_flat_map(|first| {
            prop::collection::vec(text(), 0..2).prop_map(move |subs| {
                let mut all = vec![first.clone()];
                all.extend(subs);
                all.join("&")
            })
        })
}

/// One repetition: components joined with `^`.
fn repetition() -> impl Strategy<Value = String> {
    prop::collection::vec(component(), 0..6).prop_map(|c| c.join("^"))
}

/// A field: repetitions (`~`) of components (`^`).
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        2 => token(),
        4 => repetition(),
        1 => prop::collection::vec(repetition(), 1..4).prop_map(|r| r.join("~")),
    ]
}

fn segment() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec![
        "EVN", "PID", "PD1", "PV1", "PV2", "NK1", "DG1", "AL1", "MRG", "ORC", "OBR", "OBX", "OBX",
        "OBX", "NTE", "ZPI", "ZXX", "ZU1",
    ]);
    (name, prop::collection::vec(field(), 0..46)).prop_map(|(name, fields)| {
        let mut segment = name.to_string();
        for field in fields {
            segment.push('|');
            segment.push_str(&field);
        }
        segment
    })
}

fn message() -> impl Strategy<Value = String> {
    let kind = prop::sample::select(vec![
        "ADT^A01^ADT_A01",
        "ADT^A02",
        "ADT^A03",
        "ADT^A04",
        "ADT^A05",
        "ADT^A08^ADT_A01",
        "ADT^A11",
        "ADT^A13",
        "ADT^A28^ADT_A05",
        "ADT^A31",
        "ADT^A40^ADT_A39",
        "ORU^R01",
        "ORU^R01^ORU_R01",
        "ADT^A99",
        "SIU^S12",
        "ADT",
    ]);
    let version = prop::sample::select(vec!["2.3", "2.4", "2.5", "2.5.1", "2.8", "", "9"]);
    (
        kind,
        version,
        field(),
        field(),
        prop::collection::vec(segment(), 0..14),
    )
        .prop_map(|(kind, version, app, control, segments)| {
            let mut text = format!(
                "MSH|^~\\&|{app}|RAL01|JUNCTION|LCR|20261120143512||{kind}|{control}|P|{version}\r"
            );
            for segment in segments {
                text.push_str(&segment);
                text.push('\r');
            }
            text
        })
}

fn check_every_plan(text: &str) -> Result<(), TestCaseError> {
    let Ok(message) = hl7::Message::parse(text) else {
        // Not a message: nothing to map (the parser's own property tests cover this).
        return Ok(());
    };
    for plan in shipped().plans() {
        // the engine's path (no read tracking) gives what `junction map` gives,
        // less the unread report
        let applied = plan.apply(&message);
        let engine = plan.document(&message);
        match (&applied, &engine) {
            (Ok(a), Ok(e)) => {
                prop_assert_eq!(&a.document, &e.document);
                prop_assert_eq!(&a.entries, &e.entries);
                prop_assert_eq!(&a.warnings, &e.warnings);
                prop_assert!(e.unread.is_empty());
            }
            (Err(a), Err(e)) => prop_assert_eq!(a.to_string(), e.to_string()),
            _ => prop_assert!(false, "`{}`: apply and document disagree", plan.name()),
        }
        // An `Err` (no resource applies) is a fine answer; a panic is not.
        if let Ok(output) = applied {
            // the text parses, and is exactly what serde_json writes for what it
            // parses to: keys sorted and unique, the same escapes and numbers
            let document: serde_json::Value =
                serde_json::from_str(&output.document).map_err(|e| {
                    TestCaseError::fail(format!("`{}` wrote bad JSON: {e}", plan.name()))
                })?;
            prop_assert_eq!(
                serde_json::to_string(&document).expect("serializes"),
                output.document.as_str()
            );
            let mut empty = Vec::new();
            empty_elements(&document, "", &mut empty);
            prop_assert!(
                empty.is_empty(),
                "mapping `{}` left empty elements at {:?}",
                plan.name(),
                empty
            );
            prop_assert_eq!(document["resourceType"].as_str(), Some("Bundle"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn no_mapping_panics_or_leaves_empty_elements(text in message()) {
        check_every_plan(&text)?;
    }

    /// Each sample with one field replaced by arbitrary content: realistic structure,
    /// hostile values.
    #[test]
    fn samples_with_a_mangled_field_still_map(
        sample in 0usize..64,
        segment in 0usize..64,
        position in 1usize..40,
        value in field(),
    ) {
        let files = mapping_support::sample_files();
        let path = &files[sample % files.len()];
        let raw = std::fs::read(path).expect("sample readable");
        let text = mapping_support::messages(&raw, path).remove(0);
        let mut segments: Vec<String> = text
            .split('\r')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let index = 1 + segment % (segments.len().saturating_sub(1)).max(1);
        if let Some(target) = segments.get_mut(index) {
            let mut fields: Vec<String> = target.split('|').map(str::to_string).collect();
            if fields.len() <= position {
                fields.resize(position + 1, String::new());
            }
            fields[position] = value;
            *target = fields.join("|");
        }
        check_every_plan(&(segments.join("\r") + "\r"))?;
    }
}
