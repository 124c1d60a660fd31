//! Unit tests of the mapping language: paths, groups, conditions, transforms,
//! built-ins, compile errors, unread fields, determinism. Each area goes through
//! one `check` helper so the cases read as data.

use std::path::Path;

use serde_json::{json, Value};

use super::*;

const MESSAGE: &str = "MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20240715093000||ADT^A01|CTRL1|P|2.4\r\
PID|1||9434765919^^^NHS^NH~RX1^^^RAL^MR~1234567890^^^NHS^NH||SMITH^JOHN^PAUL^^MR^^L~JONES^J||19650412|M|||1 HIGH ST^FLAT 2^LEEDS^W YORKS^LS1 1AA^GBR^H||0113 496 0000^PRN^PH~^NET^Internet^j@example.org\r\
PV1|1|I|WARD1^^BED2||||G1234567^WHO^DOC^^^DR\r\
OBR|1||F1|CODE^Name\r\
OBX|1|NM|A^Alpha||5|mmol/L\r\
NTE|1||note a\r\
OBX|2|ST|B^Beta||x\\T\\y\r\
OBR|2||F2|CODE2\r\
OBX|1|NM|C^Gamma||7\r\
ZPI|1|Z\\S\\val|SURGERY^^Y12345\r";

const HEADER: &str = r#"
[mapping]
messages = ["ADT^A01"]

[tables.t]
A = "alpha"
"*" = "other"

[tables.plain]
M = "male"
"#;

/// Compiled without checking the bodies against FHIR: these tests are of the
/// language, with made-up elements (`fhir_bodies_are_checked_at_load` checks).
fn compile_str(src: &str) -> Result<Plan, Vec<MappingError>> {
    super::compile::compile_checked(Path::new("m.toml"), src, false)
}

fn apply_str(src: &str, message: &str) -> MapOutput {
    let plan = compile_str(src).unwrap_or_else(|e| {
        panic!(
            "{}",
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    let text = crate::hl7::decode(message.as_bytes()).unwrap();
    let parsed = crate::hl7::Message::parse(&text).unwrap();
    plan.apply(&parsed).unwrap()
}

/// The body of the one resource of a mapping with `body` as its `[resource.body]`.
fn body(body: &str, message: &str) -> (Value, MapOutput) {
    let src = format!(
        "{HEADER}\n[[resource]]\ntype = \"Basic\"\nid = \"'x'\"\n[resource.body]\n{body}\n"
    );
    let out = apply_str(&src, message);
    let resource = out.value()["entry"][0]["resource"].clone();
    (resource, out)
}

/// Evaluates `expr` as the value of element `v`; `Value::Null` when left out.
fn check(expr: &str, expected: Value) {
    let toml_str = toml::Value::String(expr.to_string()).to_string();
    let (resource, _) = body(&format!("v = {toml_str}"), MESSAGE);
    assert_eq!(
        resource.get("v").cloned().unwrap_or(Value::Null),
        expected,
        "expr: {expr}"
    );
}

#[test]
fn paths() {
    check("PID-3[2].1", json!("RX1"));
    check("PID-3.1", json!("9434765919"));
    check("PID-3[*].1", json!(["9434765919", "RX1", "1234567890"]));
    check("PID-3[.5 = 'MR'].4", json!("RAL"));
    check(
        "PID-3[.4 = 'NHS' and .1 != '9434765919'].1",
        json!("1234567890"),
    );
    check("PID-3[.5='XX'].1", Value::Null);
    check("PID-5.1", json!("SMITH"));
    check("PID-5[2].1", json!("JONES"));
    check("PID-5[3].1", Value::Null);
    check("PID-11.1.1", json!("1 HIGH ST"));
    check("MSH-9.2", json!("A01"));
    check("MSH-3", json!("PAS"));
    check("ZPI-2", json!("Z^val"));
    check("PID-99", Value::Null);
    check("AL1-3", Value::Null);
    check(".1", Value::Null);
    check("OBX-3.1", json!("A"));
}

#[test]
fn alternatives_and_terms() {
    check("AL1-3 | PID-8", json!("M"));
    check("PID-8 | AL1-3", json!("M"));
    check("AL1-3 | 'fallback'", json!("fallback"));
    check("concat('a-', PID-8, '-', MSH-10)", json!("a-M-CTRL1"));
    check("concat('a-', AL1-3)", Value::Null);
    check(
        "concat_ws(', ', PV1-3.1, PV1-3.2, PV1-3.3)",
        json!("WARD1, BED2"),
    );
    check("concat_ws(', ', AL1-1)", Value::Null);
    check("(AL1-3 | 'x') | upper", json!("X"));
    check("'it\\'s'", json!("it's"));
}

#[test]
fn transforms() {
    check("'  a b  ' | trim", json!("a b"));
    check("PID-5.1 | lower", json!("smith"));
    check("'abc' | upper", json!("ABC"));
    check("PID-7 | date", json!("1965-04-12"));
    check(
        "MSH-7 | datetime(Europe/London)",
        json!("2024-07-15T09:30:00+01:00"),
    );
    check("MSH-7 | datetime", json!("2024-07-15T09:30:00+01:00"));
    check("MSH-7 | TS", json!("2024-07-15T09:30:00+01:00"));
    check("'A' | lookup(t)", json!("alpha"));
    check("'B' | lookup(t)", json!("other"));
    check("'F' | lookup(plain)", Value::Null);
    check("PID-8 | lookup(plain)", json!("male"));
    check("PID-3.1 | nhs_number", json!("9434765919"));
    check("PID-3[3].1 | nhs_number", Value::Null);
    check("'01-23' | regex_replace('[^0-9]', '')", json!("0123"));
    check("AL1-3 | default('none')", json!("none"));
    check("PID-8 | default('none')", json!("M"));
    check("OBX-5 | number", json!(5));
    // the precision as sent (a FHIR decimal's trailing zeros are significant)
    check("'4.50' | number", serde_json::from_str("4.50").unwrap());
    check("'+07.0' | number", serde_json::from_str("7.0").unwrap());
    check("'high' | number", Value::Null);
    check("PID-3[*].5 | join('/')", json!("NH/MR/NH"));
    // lines: repetitions as lines, blank ones between kept, ends trimmed
    check("PID-3[*].5 | lines", json!("NH\nMR\nNH"));
    check("PID-3[*].9 | lines", Value::Null);
    check(
        "PID-3[*].1 | upper",
        json!(["9434765919", "RX1", "1234567890"]),
    );
    check("'x' | when(PID-8 = 'M')", json!("x"));
    check("'x' | when(PID-8 = 'F')", Value::Null);
    let id = transform::uuid5("Patient", "9434765919");
    check("PID-3.1 | uuid5('Patient')", json!(id));
    check("'0930' | time", json!("09:30:00"));
    check("'2430' | time", Value::Null);
    check("'<= 5' | comparator", json!("<="));
    check("'5' | comparator", Value::Null);
    check("' >90' | strip_comparator | number", json!(90));
    check("'4.5' | strip_comparator", json!("4.5"));
    check("'(3.5-5.0)' | range_low | number", json!(3.5));
    check("'tŷ' | base64", json!("dMW3"));
    check("'255044462D' | hex_to_base64", json!("JVBERi0="));
    check("'2550F' | hex_to_base64", Value::Null);
    check(
        "'I10' | coding_system",
        json!("http://hl7.org/fhir/sid/icd-10"),
    );
    check("'sct' | coding_system", json!("http://snomed.info/sct"));
    check(
        "'HL70078' | coding_system",
        json!("http://terminology.hl7.org/CodeSystem/v2-0078"),
    );
    check("'LOCAL' | coding_system", Value::Null);
    // parts: the non-empty components and subcomponents, unescaped, between the
    // separator given, whatever the sender's separators
    check(
        "PID-11 | parts(', ')",
        json!("1 HIGH ST, FLAT 2, LEEDS, W YORKS, LS1 1AA, GBR, H"),
    );
    check("PV1-7 | parts(' ')", json!("G1234567 WHO DOC DR"));
    check("ZPI-2 | parts('/')", json!("Z^val"));
    check(
        "PID-3[*] | parts('/')",
        json!(["9434765919/NHS/NH", "RX1/RAL/MR", "1234567890/NHS/NH"]),
    );
    check("PID-9 | parts(' ')", Value::Null);
    check("'a^b' | parts(' ')", json!("a^b"));
}

/// `parts` reads a composite the same under any encoding characters.
#[test]
fn parts_do_not_depend_on_the_senders_separators() {
    let src = format!(
        "{HEADER}\n[[resource]]\ntype = \"Basic\"\nid = \"'x'\"\n[resource.body]\nv = \"OBX-5 | parts(' ')\"\n"
    );
    for message in [
        "MSH|^~\\&|LAB|RAL|J|LCR|20240715093000||ADT^A01|C1|P|2.4\rOBX|1|CP|PRICE||12.50&GBP^^^^^^ \r",
        "MSH|$~\\%|LAB|RAL|J|LCR|20240715093000||ADT$A01|C1|P|2.4\rOBX|1|CP|PRICE||12.50%GBP$$$$$$ \r",
    ] {
        let out = apply_str(&src, message);
        assert_eq!(out.value()["entry"][0]["resource"]["v"], json!("12.50 GBP"), "{message:?}");
    }
}

#[test]
fn hex_that_is_not_hex_is_a_warning() {
    let (_, out) = body("v = \"'25ZZ' | hex_to_base64\"", MESSAGE);
    assert_eq!(
        out.warnings,
        vec!["not hexadecimal (an even number of 0-9 A-F digits); left out"]
    );
}

#[test]
fn cx_knows_the_nhs_by_its_hd_or_oid() {
    // CX.4 sent as a whole HD (`NHS&OID&ISO`), or only the OID; no CX.5
    let message = "MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20240715093000||ADT^A01|CTRL1|P|2.4\r\
PID|1||9434765919^^^NHS&2.16.840.1.113883.2.1.4.1&ISO~9434765919^^^&2.16.840.1.113883.2.1.4.1&ISO~X1^^^LOCAL&9.9.9&ISO~9434765919^^^NHSNBR~9434765919^^^^NHS\r";
    let nhs = json!({"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"});
    for (path, expected) in [
        ("PID-3[1] | CX", nhs.clone()),
        ("PID-3[2] | CX", nhs.clone()),
        // the labels senders use besides `NHS` and `NH`
        ("PID-3[4] | CX", nhs.clone()),
        ("PID-3[5] | CX", nhs),
        (
            "PID-3[3] | CX",
            json!({"value": "X1", "assigner": {"display": "LOCAL"}}),
        ),
    ] {
        let (resource, _) = body(&format!("v = \"{path}\""), message);
        assert_eq!(resource["v"], expected, "{path}");
    }
}

#[test]
fn ndl_reads_the_person_from_its_subcomponents() {
    // OBR-32 as v2.3+ sends it (the person a CNN in component 1), with no ID, and
    // in XCN's shape
    let message = "MSH|^~\\&|CRIS|RAL01|JUNCTION|LCR|20240715093000||ORU^R01|CTRL1|P|2.4\r\
OBR|1|||XCHES||||||||||||||||||||||||||||C1234567&SHAH&RITA&&&DR^20240715~&JONES&AMY~C7654321^LEE^TOM\r";
    let (resource, _) = body("v = \"OBR-32[*] | NDL\"", message);
    assert_eq!(
        resource["v"],
        json!([
            {"display": "DR RITA SHAH", "type": "Practitioner",
             "identifier": {"system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": "1234567"}},
            {"display": "AMY JONES", "type": "Practitioner"},
            {"display": "TOM LEE", "type": "Practitioner",
             "identifier": {"system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": "7654321"}},
        ])
    );
}

#[test]
fn nhs_number_failure_is_a_warning() {
    let (_, out) = body("v = \"PID-3[3].1 | nhs_number\"", MESSAGE);
    assert_eq!(
        out.warnings,
        vec!["PID-3[3]: NHS number 1234567890 fails modulus 11; kept as a local identifier"]
    );
}

#[test]
fn data_type_builtins() {
    check(
        "PID-3 | CX",
        json!({"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}),
    );
    check(
        "PID-3[2] | CX",
        json!({"value": "RX1", "assigner": {"display": "RAL"},
               "type": {"coding": [{"code": "MR", "system": "http://terminology.hl7.org/CodeSystem/v2-0203"}]}}),
    );
    check(
        "PID-5 | XPN",
        json!({"use": "official", "family": "SMITH", "given": ["JOHN", "PAUL"], "prefix": ["MR"]}),
    );
    check(
        "PID-11 | XAD",
        json!({"use": "home", "line": ["1 HIGH ST", "FLAT 2"], "city": "LEEDS", "district": "W YORKS",
               "postalCode": "LS1 1AA", "country": "GBR"}),
    );
    check(
        "PID-13[*] | XTN",
        json!([{"system": "phone", "use": "home", "value": "0113 496 0000"},
               {"system": "email", "value": "j@example.org"}]),
    );
    // a business phone (PID-14): `work` unless XTN.2 says otherwise
    check(
        "PID-13[*] | XTN('work')",
        json!([{"system": "phone", "use": "home", "value": "0113 496 0000"},
               {"system": "email", "value": "j@example.org"}]),
    );
    check(
        "'0113 496 0001' | XTN('work')",
        json!({"system": "phone", "use": "work", "value": "0113 496 0001"}),
    );
    check(
        "OBX-3 | CWE",
        json!({"coding": [{"code": "A", "display": "Alpha"}], "text": "Alpha"}),
    );
    check("OBX-3 | CODING", json!({"code": "A", "display": "Alpha"}));
    check(
        "PV1-7 | XCN",
        json!({"type": "Practitioner", "display": "DR DOC WHO",
               "identifier": {"system": "https://fhir.hl7.org.uk/Id/gmp-number", "value": "G1234567"}}),
    );
    check(
        "ZPI-3 | XON",
        json!({"type": "Organization", "display": "SURGERY",
               "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y12345"}}),
    );
    check("'free text' | CWE", json!({"text": "free text"}));
    check("AL1-3 | XPN", Value::Null);
}

#[test]
fn groups_and_each() {
    let (r, _) = body(
        r#"obs = [{ for = "OBR > OBX", code = "OBX-3.1", order = "OBR-3", note = "NTE-3", n = "position()" }]
ids = [{ each = "PID-3[*]", when = ".5 = 'NH'", v = ".1", n = "position()" }]"#,
        MESSAGE,
    );
    assert_eq!(
        r["obs"],
        json!([
            {"code": "A", "order": "F1", "note": "note a", "n": "1"},
            {"code": "B", "order": "F1", "n": "2"},
            {"code": "C", "order": "F2", "n": "1"},
        ])
    );
    assert_eq!(
        r["ids"],
        json!([{"v": "9434765919", "n": "1"}, {"v": "1234567890", "n": "3"}])
    );
}

#[test]
fn position_by_key_counts_the_groups_of_the_same_key() {
    // in a group: the occurrence of its key among the groups of its iteration so
    // far (OBX-1 says nothing); outside one, the iteration position
    let message = "MSH|^~\\&|LAB|RAL|JUNCTION|LCR|20240715093000||ORU^R01|C1|P|2.4\r\
PID|1||A^^^X~B^^^X~A^^^X\r\
OBR|1||F1|P^Panel\r\
OBX|7|TX|COMM^Comment||line one\r\
OBX|3|NM|K^Potassium||4.1\r\
OBX|7|TX|COMM^Comment||line two\r\
OBX|1|TX|COMM^Comment|2|other sub-id\r\
OBX|1|TX|COMM^Comment||line three\r\
OBR|2||F2|P^Panel\r\
OBX|1|TX|COMM^Comment||again first\r";
    let (r, _) = body(
        r#"obs = [{ for = "OBR > OBX", v = "OBX-5", n = "position(OBX-3.1, OBX-4)" }]
again = [{ for = "OBR > OBX", n = "position(OBX-3.1, OBX-4)" }]
ids = [{ each = "PID-3[*]", n = "position(.1)" }]
top = "position(MSH-10)""#,
        message,
    );
    assert_eq!(
        r["obs"],
        json!([
            {"v": "line one", "n": "1"},
            {"v": "4.1", "n": "1"},
            {"v": "line two", "n": "2"},
            {"v": "other sub-id", "n": "1"},
            {"v": "line three", "n": "3"},
            {"v": "again first", "n": "1"},
        ])
    );
    // a second pass over the same groups gives the same positions
    assert_eq!(
        r["again"],
        json!([{"n": "1"}, {"n": "1"}, {"n": "2"}, {"n": "1"}, {"n": "3"}, {"n": "1"}])
    );
    assert_eq!(r["top"], json!("1"));
    assert_eq!(r["ids"], json!([{"n": "1"}, {"n": "2"}, {"n": "3"}]));
}

#[test]
fn a_consultant_code_is_the_gmc_number_however_it_is_labelled() {
    let message = "MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20240715093000||ADT^A01|C1|P|2.4\r\
PV1|1|I|||||C1234567^HOUSE^GREGORY^^^DR^^^GMC|C1234567^HOUSE^GREGORY^^^DR|1234567^HOUSE^GREGORY\r";
    let (r, _) = body(
        r#"v = ["PV1-7 | XCN", "PV1-8 | XCN", "PV1-9 | XCN"]"#,
        message,
    );
    let gmc = json!({"system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": "1234567"});
    for i in 0..3 {
        assert_eq!(r["v"][i]["identifier"], gmc, "{}", r["v"][i]);
    }
}

#[test]
fn for_gathers_over_groups() {
    let (r, _) = body(
        r#"notes = "for('OBR > OBX > NTE', NTE-3) | join(';')"
codes = "for('OBR > OBX', OBX-3.1) | join(',')"
none = "for('OBR > OBX > SPM', SPM-2)"
per_order = [{ for = "OBR", codes = "for('OBX', OBX-3.1) | join(',')", noted = "for('OBX > NTE', OBX-3.1) | join(',')" }]"#,
        MESSAGE,
    );
    assert_eq!(r["notes"], json!("note a"));
    assert_eq!(r["codes"], json!("A,B,C"));
    assert_eq!(r.get("none"), None);
    assert_eq!(
        r["per_order"],
        json!([{"codes": "A,B", "noted": "A"}, {"codes": "C"}])
    );
}

#[test]
fn a_practice_code_alone_in_xon_1_is_the_ods_code() {
    let message = "MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20240715093000||ADT^A01|C1|P|2.4\r\
PD1|||E82061|\r\
ZPI|1|ROYAL FREE|B12345^^RAL01|THE SURGERY^^12345\r";
    let (r, _) = body(
        r#"v = ["PD1-3 | XON", "ZPI-2 | XON", "ZPI-3 | XON", "ZPI-4 | XON"]"#,
        message,
    );
    let ods = |code: &str| json!({"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": code});
    assert_eq!(r["v"][0]["identifier"], ods("E82061"), "{}", r["v"][0]);
    // a name is not a code
    assert_eq!(r["v"][1].get("identifier"), None, "{}", r["v"][1]);
    // XON.3 wins over a code-like XON.1
    assert_eq!(r["v"][2]["identifier"], ods("RAL01"), "{}", r["v"][2]);
    // a sender's own number in XON.3 is kept, but not as an ODS code
    assert_eq!(
        r["v"][3]["identifier"],
        json!({"value": "12345"}),
        "{}",
        r["v"][3]
    );
}

#[test]
fn a_phone_number_in_parts_is_dialable() {
    let message = "MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20240715093000||ADT^A01|C1|P|2.4\r\
PID|1||||||||||||^PRN^PH^^44^20^79460123~^PRN^CP^^0044^7700^900123~^WPN^PH^^^0113^4960000^22\r";
    let (r, _) = body(r#"v = ["PID-13[*] | XTN"]"#, message);
    let values: Vec<&str> = r["v"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["value"].as_str().unwrap())
        .collect();
    assert_eq!(
        values,
        ["+44 20 79460123", "+44 7700 900123", "0113 4960000 ext 22"]
    );
}

#[test]
fn conditions() {
    let cases = [
        ("PV1-2 = 'I'", true),
        ("PV1-2 != 'I'", false),
        ("PV1-2 in ('O', 'I')", true),
        ("PV1-2 in ('O', 'E')", false),
        ("empty(PV1-4)", true),
        ("not empty(PV1-3)", true),
        ("empty(AL1)", true),
        ("empty(PID)", false),
        ("PV1-2 = 'I' and (PV1-3.1 = 'X' or PV1-3.3 = 'BED2')", true),
        ("PV1-2 = 'I' and not (PV1-3.1 = 'WARD1')", false),
        ("PID-3[*].5 = 'MR'", true),
        ("PV1-2", true),
        ("PV1-5", false),
        ("PID-8 | lower = 'm'", true),
        ("MSH-9.2 = $trigger", true),
        // ordering: numbers as numbers, times as instants, dates as dates;
        // anything else (or a side empty) is never in order
        ("'9' < '10'", true),
        ("'10' < '9'", false),
        ("'-2' < '1.5'", true),
        ("'3.50' <= '3.5'", true),
        ("'3.5' > '3.4'", true),
        ("'3.5' >= '3.6'", false),
        (
            "'2026-03-01T09:00:00+01:00' < '2026-03-01T08:30:00+00:00'",
            true,
        ),
        ("'2026-03-01' < '2026-03-02'", true),
        ("'2026-03-01' < '2026-03-01T08:00:00Z'", false),
        // a year, a month or a day is the whole of it (s25e tester, H1-H3)
        ("'2025' < '2026-11-24'", true),
        ("'2026-11' < '2026-11-24'", false),
        ("'2026-11-24' < '2026-11-25T12:00:00+00:00'", true),
        ("'2025-01' < '2025-06'", true),
        ("'2024' < '2025-06-01'", true),
        ("'2025-06-01' < '2024'", false),
        ("'2025' >= '2025-06-01'", false),
        ("'abc' < 'abd'", false),
        ("PV1-4 < '1'", false),
        ("not (PV1-4 < '1')", true),
    ];
    for (cond, expected) in cases {
        let toml_cond = toml::Value::String(cond.to_string()).to_string();
        let src = format!(
            "{HEADER}\n[let]\ntrigger = \"'A01'\"\n[[resource]]\ntype = \"Basic\"\nid = \"'x'\"\n[resource.body]\nv = {{ when = {toml_cond}, w = \"'y'\" }}\nz = \"'z'\"\n"
        );
        let out = apply_str(&src, MESSAGE);
        let got = out.value()["entry"][0]["resource"].get("v").is_some();
        assert_eq!(got, expected, "condition: {cond}");
    }
}

/// `deleted(expr)` tells HL7's explicit null `""` (the sender deletes the
/// stored value) from a value left out or empty, which `empty` does not.
#[test]
fn deleted_is_the_explicit_null_only() {
    let message = "MSH|^~\\&|PAS|RAL|LCR|LCR|20260101||ADT^A08|1|P|2.4\rPID|1||123^^^RAL^MR\rPD1|||\"\"|G1||\"\"^x\r";
    let (v, _) = body(
        r#"three = { when = "deleted(PD1-3)", w = "'y'" }
four = { when = "deleted(PD1-4)", w = "'y'" }
five = { when = "deleted(PD1-5)", w = "'y'" }
six = { when = "deleted(PD1-6)", w = "'y'" }
nine = { when = "deleted(PD1-9)", w = "'y'" }
empty = { when = "empty(PD1-3)", w = "'y'" }"#,
        message,
    );
    let has = |k: &str| v.get(k).is_some();
    assert!(has("three") && has("empty"), "{v}");
    assert!(
        !has("four") && !has("five") && !has("six") && !has("nine"),
        "{v}"
    );
}

/// Compiles `src` (after the header) and expects exactly these `line:col: message`
/// prefixes, in order.
fn check_errors(src: &str, expected: &[(usize, usize, &str)]) {
    check_errors_of(compile_str(src), expected);
}

fn check_errors_of(compiled: Result<Plan, Vec<MappingError>>, expected: &[(usize, usize, &str)]) {
    let errors = compiled.err().unwrap_or_default();
    let got: Vec<(usize, usize, String)> = errors
        .iter()
        .map(|e| (e.line, e.col, e.message.clone()))
        .collect();
    assert_eq!(got.len(), expected.len(), "errors: {got:#?}");
    for ((l, c, m), (el, ec, em)) in got.iter().zip(expected) {
        assert_eq!((l, c), (el, ec), "{m}");
        assert!(m.starts_with(em), "`{m}` does not start with `{em}`");
    }
}

/// A resource body is FHIR: an element its type does not have (a misspelt
/// `birthdate`), an object where FHIR has a primitive, or text where it has a
/// complex type are refused at load, at the element, with a near name.
#[test]
fn fhir_bodies_are_checked_at_load() {
    let checked = |src: &str| compile(Path::new("m.toml"), src);
    let base = "[mapping]\nmessages = [\"ADT^A01\"]\n[[resource]]\ntype = \"Patient\"\nid = \"'x'\"\n[resource.body]\n";
    check_errors_of(
        checked(&format!(
            "{base}birthdate = \"PID-7 | date\"\nmaritalStatus = \"'M'\"\ngender = {{ code = \"PID-8\" }}\n\
             name = [{{ family = \"PID-5.1\", givn = \"PID-5.2\" }}]\n\
             contact = [{{ relationship = [{{ text = \"NK1-3.2\" }}], telecom = [\"NK1-5 | XTN\"], phone = \"NK1-5\" }}]\n\
             zzzzzz = \"PID-1\"\n"
        )),
        &[
            (7, 1, "`birthdate` is not an element of Patient, did you mean `birthDate`?"),
            (8, 17, "`Patient.maritalStatus` is a CodeableConcept in FHIR, not text"),
            (9, 10, "`Patient.gender` is a primitive in FHIR"),
            (10, 31, "`givn` is not an element of Patient.name (a HumanName), did you mean `given`?"),
            (11, 80, "`phone` is not an element of Patient.contact, expected an element of PatientContact"),
            (12, 1, "`zzzzzz` is not an element of Patient"),
        ],
    );
    // a TOML number or boolean, or text, where FHIR has an object
    check_errors_of(
        checked(&format!(
            "{base}name = true\ntelecom = [1, 2.5]\n_birthDate = \"'x'\"\nactive = true\nmultipleBirthInteger = 2\n"
        )),
        &[
            (7, 8, "`Patient.name` is a HumanName in FHIR, not a boolean"),
            (8, 12, "`Patient.telecom` is a ContactPoint in FHIR, not a number"),
            (8, 15, "`Patient.telecom` is a ContactPoint in FHIR, not a number"),
            (9, 14, "`Patient._birthDate` is an Element in FHIR, not text"),
        ],
    );
    // what the shipped mappings write is FHIR: a built-in, a macro, a lookup
    // (a table may hold objects), an extension of a primitive, a type the
    // table does not check
    let fine = format!(
        "{base}maritalStatus = \"PID-16 | CWE\"\ngeneralPractitioner = [\"$gp\"]\n_birthDate = {{ extension = [{{ url = \"'u'\", valueString = \"PID-7\" }}] }}\n\
         communication = [{{ language = \"PID-15 | lookup(lang)\" }}]\n[let]\ngp = \"PD1-4 | XCN\"\n[tables.lang]\nENG = {{ text = \"English\" }}\n"
    );
    assert!(checked(&fine).is_ok(), "{:?}", checked(&fine).err());
    // `each` over a field with no repetition named: its first alone, refused
    check_errors_of(
        checked(&format!(
            "{base}identifier = [{{ each = \"PID-3\", value = \".1\" }}]\n"
        )),
        &[(
            7,
            24,
            "`each` over `PID-3` goes over its first repetition alone, expected `PID-3[*]`",
        )],
    );
    // alike through parentheses, a macro, or a component
    check_errors_of(
        checked(&format!(
            "{base}identifier = [{{ each = \"(PID-3)\", value = \".1\" }}, {{ each = \"$ids\", value = \".1\" }}, {{ each = \"PID-3.1\", value = \".\" }}]\n[let]\nids = \"PID-3\"\n"
        )),
        &[
            (7, 24, "`each` over `PID-3` goes over its first repetition alone"),
            (7, 60, "`each` over `PID-3` goes over its first repetition alone"),
            (7, 93, "`each` over `PID-3.1` goes over its first repetition alone, expected `PID-3[*].1`"),
        ],
    );
    // nesting beyond reason is an error, not a stack overflow
    let deep = format!("{}PID-8{}", "(".repeat(1000), ")".repeat(1000));
    let nots = format!("{}empty(PID-8)", "not ".repeat(20_000));
    for (key, e) in [
        ("gender", deep),
        ("active", format!("'true' | when({nots})")),
    ] {
        let errors = checked(&format!("{base}{key} = \"{e}\"\n")).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .message
                .starts_with("nested more than 64 levels deep"),
            "{errors:?}"
        );
    }
    // a cycle of three, and a macro naming itself
    check_errors_of(
        checked(&format!(
            "{base}[let]\npid = \"$a\"\na = \"$b\"\nb = \"$pid\"\nc = \"$c | 'x'\"\n"
        )),
        &[
            (
                8,
                7,
                "macro `$pid` is in a cycle ($pid -> $a -> $b -> $pid)",
            ),
            (9, 5, "macro `$a` is in a cycle ($a -> $b -> $pid -> $a)"),
            (10, 5, "macro `$b` is in a cycle ($b -> $pid -> $a -> $b)"),
            (11, 5, "macro `$c` refers to itself"),
        ],
    );
    // a chain of macros each naming the next twice compiles at once (their
    // dependencies were walked once per use: 2^16 walks)
    let mut chain = String::from("[let]\n");
    for i in 0..15 {
        chain.push_str(&format!(
            "m{i} = \"($m{n} | when(PID-8 = 'X')) | $m{n}\"\n",
            n = i + 1
        ));
    }
    chain.push_str("m15 = \"PID-8\"\n");
    let plan = checked(&format!("{base}gender = \"$m0 | lower\"\n{chain}")).unwrap();
    let text = crate::hl7::decode(
        b"MSH|^~\\&|PAS|RAL|||20260101||ADT^A01|C1|P|2.4\rPID|1||1^^^RAL^MR||A^B||19800101|F\r",
    )
    .unwrap();
    let out = plan
        .apply(&crate::hl7::Message::parse(&text).unwrap())
        .unwrap();
    assert_eq!(out.value()["entry"][0]["resource"]["gender"], "f");
    // a misspelt type is one error, not two
    check_errors_of(
        checked("[mapping]\nmessages = [\"ADT^A01\"]\n[[resource]]\ntype = \"Patiant\"\nid = \"'x'\"\n[resource.body]\nbirthDate = \"PID-7\"\n"),
        &[(4, 8, "bad resource type `Patiant`")],
    );
}

/// A chain of macros each naming the next is bounded at load: the longest
/// allowed, each nested as deep as allowed, maps on a background thread's
/// stack; a longer one (2,000 overflowed that stack) is refused at load.
#[test]
fn a_chain_of_macros_is_bounded_to_fit_the_stack() {
    let base = "[mapping]\nmessages = [\"ADT^A01\"]\n[[resource]]\ntype = \"Patient\"\nid = \"'x'\"\n[resource.body]\ngender = \"$m0 | lower\"\n[let]\n";
    let chain = |n: usize, nest: usize| {
        let mut src = String::from(base);
        for i in 0..n - 1 {
            src.push_str(&format!(
                "m{i} = \"{}$m{} | PID-9{}\"\n",
                "(".repeat(nest),
                i + 1,
                ")".repeat(nest)
            ));
        }
        src.push_str(&format!("m{} = \"PID-8\"\n", n - 1));
        src
    };
    let plan = compile_str(&chain(16, 63)).unwrap();
    let text = crate::hl7::decode(
        b"MSH|^~\\&|PAS|RAL|||20260101||ADT^A01|C1|P|2.4\rPID|1||1^^^RAL^MR||A^B||19800101|F\r",
    )
    .unwrap();
    let gender = std::thread::Builder::new()
        .stack_size(crate::delivery::background::STACK_BYTES)
        .spawn(move || {
            let message = crate::hl7::Message::parse(&text).unwrap();
            plan.apply(&message).unwrap().value()["entry"][0]["resource"]["gender"].clone()
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(gender, "f");
    for n in [17, 2_000] {
        check_errors_of(
            compile_str(&chain(n, 1)),
            &[(
                9,
                6,
                &format!("macro `$m0` names macros {n} deep, expected at most 16"),
            )],
        );
    }
}

/// An id that is no FHIR id (a name, an MRN with a `/`) fails the document
/// with an error that names the type, not the text; any FHIR id is kept.
#[test]
fn an_id_that_is_no_fhir_id_fails_the_document() {
    let message =
        "MSH|^~\\&|PAS|RAL|||20260101||ADT^A01|C1|P|2.4\rPID|1||RAL/123^^^RAL^MR||SMITH^JANE\r";
    let src = |id: &str| {
        format!("{HEADER}\n[[resource]]\ntype = \"Patient\"\nid = \"{id}\"\n[resource.body]\nactive = \"'true'\"\n")
    };
    for id in [
        "PID-5",
        "PID-3.1",
        "concat('x', PID-5.1, '|')",
        "'..'",
        "'.'",
    ] {
        let plan = compile_str(&src(id)).unwrap();
        let text = crate::hl7::decode(message.as_bytes()).unwrap();
        let parsed = crate::hl7::Message::parse(&text).unwrap();
        let err = plan.apply(&parsed).unwrap_err().to_string();
        assert!(
            err.contains("made a Patient id that is not a FHIR id"),
            "{err}"
        );
        assert!(!err.contains("SMITH") && !err.contains("123"), "{err}");
    }
    let out = apply_str(&src("concat('p-', PID-5.1) | lower"), message);
    assert_eq!(out.value()["entry"][0]["resource"]["id"], "p-smith");
}

#[test]
fn compile_errors_point_at_line_and_column() {
    let base = "[mapping]\nmessages = [\"ADT^A01\"]\n[[resource]]\ntype = \"Patient\"\nid = \"'x'\"\n[resource.body]\n";
    // unknown transform: column of the transform name
    check_errors(
        &format!("{base}gender = \"PID-8 | uppercse\"\n"),
        &[(
            7,
            19,
            "unknown transform `uppercse`, expected one of trim, upper",
        )],
    );
    check_errors(
        &format!("{base}telecom = \"PID-14 | XTN('home')\"\n"),
        &[(7, 21, "`XTN` takes no argument or 'work'")],
    );
    // bad path
    check_errors(
        &format!("{base}x = \"PID-x\"\n"),
        &[(7, 10, "expected a field number, found `x`")],
    );
    // unknown key in a resource, and in the file
    check_errors(
        "[mapping]\nmessages = [\"ADT^A01\"]\nfoo = 1\n[[resource]]\ntype = \"Patient\"\nid = \"'x'\"\nbodyy = {}\n",
        &[
            (3, 1, "unknown key `foo` in [mapping]"),
            (4, 1, "[[resource]] without `body`"),
            (7, 1, "unknown key `bodyy` in [[resource]], expected one of type, id, for, each, when, create_only, body"),
        ],
    );
    // unknown table, bad condition, unknown macro: all reported at once
    check_errors(
        &format!("{base}a = \"PID-8 | lookup(sex)\"\nb = {{ when = \"PID-8 = \", c = \"'x'\" }}\nd = \"$nope\"\n"),
        &[
            (7, 14, "unknown table `sex`"),
            (8, 23, "expected a path"),
            (9, 6, "unknown macro `$nope`"),
        ],
    );
    // the name that marks application acknowledgements in the queue
    check_errors(
        &format!("[mapping]\nname = \"(application ack)\"\n{}", &base[10..]),
        &[(2, 8, "mapping name `(application ack)` is reserved")],
    );
    check_errors(
        &format!("{base}x = \"PID-3 | regex_replace('[', 'y')\"\n"),
        &[(7, 14, "bad regex `[`")],
    );
    check_errors(
        &format!("{base}x = \"PID-3 | datetime(Mars/Base)\"\n"),
        &[(7, 14, "unknown time zone `Mars/Base`")],
    );
    // a bad chain in for(...): the column of the segment name in it
    check_errors(
        &format!("{base}x = \"for('OBR > obx', OBX-3)\"\n"),
        &[(7, 17, "bad segment name `obx` in `for`")],
    );
    check_errors(
        "[mapping]\nmessages = [\"ADT-A01\"]\n[let]\na = \"$b\"\nb = \"$a\"\n[[resource]]\ntype = \"Patient\"\nid = \"$a\"\n[resource.body]\n",
        &[
            (2, 13, "bad message type `ADT-A01`"),
            (4, 5, "macro `$a` is in a cycle ($a -> $b -> $a)"),
            (5, 5, "macro `$b` is in a cycle ($b -> $a -> $b)"),
        ],
    );
    // a syntax error alone: not the missing tables and stray keys that follow from it
    check_errors("[mapping\n", &[(1, 9, "unclosed table, expected `]`")]);
    check_errors(
        "[mapping\nname = \"x\"\nmessages = [\"ADT^A01\"]\n[[resource]]\ntype = \"Patient\"\nid = \"'x'\"\n[resource.body]\n",
        &[(1, 9, "unclosed table, expected `]`")],
    );
}

#[test]
fn unread_fields_are_reported() {
    let src = format!(
        "{HEADER}\nignore = []\n[[resource]]\ntype = \"Basic\"\nid = \"'x'\"\n[resource.body]\nv = \"PID-3[*].1\"\nw = \"MSH-10\"\nx = [{{ for = \"OBX\", v = \"OBX-5\" }}]\n"
    )
    .replacen("ignore = []\n", "", 1);
    let out = apply_str(&src, MESSAGE);
    for expected in [
        "PID-5", "PID-8", "PV1-2", "OBX[1]-3", "OBX[3]-1", "ZPI-2", "MSH-3",
    ] {
        assert!(
            out.unread.contains(&expected.to_string()),
            "{expected} in {:?}",
            out.unread
        );
    }
    for not_expected in [
        "MSH-1", "MSH-2", "MSH-10", "PID-3", "OBX[1]-5", "OBX[2]-5", "PID-4",
    ] {
        assert!(
            !out.unread.contains(&not_expected.to_string()),
            "{not_expected} in {:?}",
            out.unread
        );
    }
    // `ignore` leaves fields and whole segments out
    let src = src.replace(
        "messages = [\"ADT^A01\"]",
        "messages = [\"ADT^A01\"]\nignore = [\"PID-5\", \"ZPI\"]",
    );
    let out = apply_str(&src, MESSAGE);
    assert!(
        !out.unread
            .iter()
            .any(|u| u == "PID-5" || u.starts_with("ZPI")),
        "{:?}",
        out.unread
    );
    // an alternative not needed still counts as read
    let (_, out) = body("v = \"PID-8 | PID-7\"", MESSAGE);
    assert!(!out.unread.contains(&"PID-7".to_string()));
    // so does a path whose `when` does not hold (the path itself is not read)
    let (r, out) = body("v = \"PID-7 | when(PID-8 = 'F') | date\"", MESSAGE);
    assert_eq!(r.get("v"), None);
    assert!(!out.unread.contains(&"PID-7".to_string()));
    let (r, _) = body("v = \"PID-7 | when(PID-8 = 'M') | date\"", MESSAGE);
    assert_eq!(r["v"], json!("1965-04-12"));
}

#[test]
fn bundle_shape_ids_and_determinism() {
    let src = format!(
        "{HEADER}\n[let]\npid = \"PID-3.1 | uuid5('Patient')\"\n[[resource]]\ntype = \"Patient\"\nid = \"$pid\"\n[resource.body]\ngender = \"PID-8 | lookup(plain)\"\nempty = {{ a = \"AL1-3\", b = [] }}\n[[resource]]\ntype = \"Encounter\"\nid = \"'e1'\"\n[resource.body]\nsubject = {{ reference = \"concat('Patient/', $pid)\" }}\n"
    );
    let a = apply_str(&src, MESSAGE);
    let b = apply_str(&src, MESSAGE);
    assert_eq!(a.document, b.document);
    let id = transform::uuid5("Patient", "9434765919");
    assert_eq!(
        a.value(),
        json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"fullUrl": format!("urn:uuid:{id}"),
                 "resource": {"resourceType": "Patient", "id": id, "gender": "male"},
                 "request": {"method": "PUT", "url": format!("Patient/{id}")}},
                {"fullUrl": "urn:uuid:e1",
                 "resource": {"resourceType": "Encounter", "id": "e1", "subject": {"reference": format!("Patient/{id}")}},
                 "request": {"method": "PUT", "url": "Encounter/e1"}},
            ]
        })
    );
}

#[test]
fn no_resource_is_an_error_and_odd_messages_do_not_panic() {
    let src = format!("{HEADER}\n[[resource]]\ntype = \"Patient\"\nid = \"PID-3.1\"\n[resource.body]\nname = \"PID-5[*] | XPN\"\nx = [{{ for = \"OBR > OBX\", v = \"OBX-5 | number\" }}]\n");
    let plan = compile_str(&src).unwrap();
    let odd = [
        "MSH|^~\\&|",
        "MSH|^~\\&|||||||||\rPID|||||||\r",
        "MSH|^~\\&|A\rPID|1||^^^^^^^~~~|\"\"|\\X41\\\\Zq\\\\X4\\|\u{e9}\u{e9}\\S\\|\r",
        "MSH|^~\\&|A\rOBX|1|NM|||\rOBR\rOBX|||||x\r",
    ];
    for m in odd {
        let text = crate::hl7::decode(m.as_bytes()).unwrap();
        let parsed = crate::hl7::Message::parse(&text).unwrap();
        match plan.apply(&parsed) {
            Ok(_) => {}
            Err(e) => assert!(
                matches!(&e, MapError::NoResources { mapping, .. } if mapping == "m"),
                "{e:?}"
            ),
        }
    }
}

#[test]
fn no_resource_names_the_types_without_an_id() {
    let src = format!(
        "{HEADER}\n[[resource]]\ntype = \"Patient\"\nid = \"PID-3.1\"\n[resource.body]\ngender = \"PID-8\"\n\
         [[resource]]\ntype = \"Basic\"\nid = \"'b'\"\nwhen = \"not empty(ZZZ)\"\n[resource.body]\n"
    );
    let plan = compile_str(&src).unwrap();
    let text = "MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20240715093000||ADT^A01|CTRL1|P|2.4\rPID|1||||SMITH^JOHN|||M\r";
    let parsed = crate::hl7::Message::parse(text).unwrap();
    let e = plan.apply(&parsed).unwrap_err();
    assert_eq!(
        e,
        MapError::NoResources {
            mapping: "m".into(),
            without_id: vec!["Patient".into()],
        }
    );
    // the reason names types only, never what the message holds
    assert_eq!(
        e.to_string(),
        "mapping `m` produced no resource for this message; no id could be made for Patient \
         (the fields ids are made from are empty)"
    );
}

#[test]
fn selecting_a_plan_by_message_type() {
    let a = compile_str(&format!(
        "{HEADER}[[resource]]\ntype = \"Basic\"\nid = \"'x'\"\n[resource.body]\n"
    ))
    .unwrap();
    let b = compile_str(
        "[mapping]\nname = \"any\"\nmessages = [\"ADT^*\"]\n[[resource]]\ntype = \"Basic\"\nid = \"'x'\"\n[resource.body]\n",
    )
    .unwrap();
    let set = MappingSet::from_plans(vec![b, a]);
    assert_eq!(set.select("ADT", "A01").map(Plan::name), Some("m"));
    assert_eq!(set.select("ADT", "A08").map(Plan::name), Some("any"));
    assert_eq!(set.select("ORU", "R01").map(Plan::name), None);
}

#[test]
fn fragments() {
    let doc = json!({"entry": [{"resource": {"resourceType": "Patient", "name": [{"family": "A", "given": ["B", "C"]}]}}]});
    let cases = [
        (json!({"resourceType": "Patient"}), true),
        (
            json!({"resourceType": "Patient", "name": [{"given": ["C"]}]}),
            true,
        ),
        (
            json!({"resourceType": "Patient", "name": [{"given": ["D"]}]}),
            false,
        ),
        (json!({"resourceType": "Encounter"}), false),
        (json!({"family": "A"}), true),
        (json!("B"), true),
        (json!(1), false),
    ];
    for (fragment, expected) in cases {
        assert_eq!(contains_fragment(&doc, &fragment), expected, "{fragment}");
    }
}

/// Macros are computed once per distinct input: the element of `each`, the group,
/// the position. A cached value must never leak into another element or group.
#[test]
fn macro_values_follow_their_scope() {
    let src = format!(
        "{HEADER}\n[let]\nfirst = \".1\"\ncode = \"OBX-3.1\"\npos = \"position()\"\nkey = \"concat(OBR-3, '/', $code, '/', $pos)\"\n[[resource]]\ntype = \"Basic\"\nid = \"'x'\"\n[resource.body]\nids = [{{ each = \"PID-3[*]\", v = \"$first\", again = \"$first\" }}]\nobs = [{{ for = \"OBR > OBX\", k = \"$key\", again = \"$key\" }}]\nreport = [{{ for = \"OBR\", results = [{{ for = \"OBX\", k = \"$key\" }}] }}]\n"
    );
    let out = apply_str(&src, MESSAGE);
    let doc = out.value();
    let r = &doc["entry"][0]["resource"];
    assert_eq!(
        r["ids"],
        json!([
            {"v": "9434765919", "again": "9434765919"},
            {"v": "RX1", "again": "RX1"},
            {"v": "1234567890", "again": "1234567890"},
        ])
    );
    assert_eq!(
        r["obs"],
        json!([
            {"k": "F1/A/1", "again": "F1/A/1"},
            {"k": "F1/B/2", "again": "F1/B/2"},
            {"k": "F2/C/1", "again": "F2/C/1"},
        ])
    );
    assert_eq!(
        r["report"],
        json!([
            {"results": [{"k": "F1/A/1"}, {"k": "F1/B/2"}]},
            {"results": [{"k": "F2/C/1"}]},
        ])
    );
}

#[test]
fn macro_values_stay_right_past_the_cache_bound() {
    // 300 results: more values than a macro's cache holds (the oldest are replaced,
    // buckets are shared), read in three passes; every one must be its own result's
    let mut message = String::from(
        "MSH|^~\\&|LAB|RAL|JUNCTION|LCR|20240715093000||ORU^R01|C3|P|2.4\rPID|1||X1^^^RAL^MR\rOBR|1||F1\r",
    );
    for k in 1..=300 {
        message.push_str(&format!("OBX|{k}|NM|T{k}||{k}\r"));
    }
    let src = format!(
        "{HEADER}\n[let]\nkey = \"concat(OBX-3.1, '=', OBX-5)\"\n[[resource]]\ntype = \"Basic\"\nid = \"'x'\"\n[resource.body]\na = [{{ for = \"OBX\", k = \"$key\" }}]\nb = [{{ for = \"OBR > OBX\", k = \"$key\" }}]\nc = [{{ for = \"OBX\", k = \"$key\" }}]\n"
    );
    let out = apply_str(&src, &message);
    let doc = out.value();
    let r = &doc["entry"][0]["resource"];
    let expected: Vec<Value> = (1..=300)
        .map(|k| json!({ "k": format!("T{k}={k}") }))
        .collect();
    for pass in ["a", "b", "c"] {
        assert_eq!(r[pass], json!(expected), "{pass}");
    }
}

#[test]
fn for_before_stops_at_the_first_stop_segment() {
    let message = "MSH|^~\\&|LAB|RAL|JUNCTION|LCR|20240715093000||ORU^R01|C2|P|2.4\r\
PID|1||9434765919^^^NHS^NH\r\
OBR|1||F1|A^Alpha\r\
NTE|1||order note 1\r\
NTE|2||order note 2\r\
OBX|1|NM|A^Alpha||5\r\
NTE|1||result note\r\
OBR|2||F2|B^Beta\r\
OBX|1|NM|B^Beta||6\r\
NTE|1||second result note\r";
    let src = format!(
        "{HEADER}\n[[resource]]\ntype = \"ServiceRequest\"\nfor = \"OBR\"\nid = \"OBR-3\"\n[resource.body]\nnote = [{{ for = \"NTE before OBX\", text = \"NTE-3\" }}]\nresults = [{{ for = \"OBX\", notes = [{{ for = \"NTE\", text = \"NTE-3\" }}] }}]\n"
    );
    let src = src.replace("ADT^A01", "ORU^R01");
    let out = apply_str(&src, message);
    let doc = out.value();
    let first = &doc["entry"][0]["resource"];
    assert_eq!(
        first["note"],
        json!([{"text": "order note 1"}, {"text": "order note 2"}])
    );
    assert_eq!(
        first["results"],
        json!([{"notes": [{"text": "result note"}]}])
    );
    // an OBR without notes of its own gets none, not its result's
    let second = &doc["entry"][1]["resource"];
    assert!(second.get("note").is_none(), "{second}");
    assert!(
        !out.unread
            .iter()
            .any(|u| u.starts_with("NTE") && u.ends_with("-3")),
        "{:?}",
        out.unread
    );
}

#[test]
fn for_after_gives_each_group_the_lead_in_before_its_head() {
    // an ORC per order, the order numbers only in the ORC
    let own = "MSH|^~\\&|LAB|RAL|JUNCTION|LCR|20240715093000||ORU^R01|C3|P|2.4\r\
PID|1||9434765919^^^NHS^NH\r\
ORC|RE|P1|F1\r\
OBR|1|||A^Alpha\r\
OBX|1|NM|A^Alpha||5\r\
NTE|1||result note\r\
ORC|RE|P2|F2\r\
OBR|2|||B^Beta\r\
TQ1|1\r\
OBX|1|NM|B^Beta||6\r\
OBX|2|NM|C^Gamma||7\r";
    // one ORC shared by two OBRs
    let shared = "MSH|^~\\&|LAB|RAL|JUNCTION|LCR|20240715093000||ORU^R01|C4|P|2.4\r\
PID|1||9434765919^^^NHS^NH\r\
ORC|RE|P1|F1\r\
OBR|1|||A^Alpha\r\
OBX|1|NM|A^Alpha||5\r\
OBR|2|||B^Beta\r\
OBX|1|NM|B^Beta||6\r";
    let src = format!(
        "{HEADER}\n[[resource]]\ntype = \"Basic\"\nid = \"'x'\"\n[resource.body]\nafter = [{{ for = \"OBR after ORC\", order = \"ORC-3\", test = \"OBR-4.1\", position = \"position()\", timing = \"TQ1-1\", results = [{{ for = \"OBX\", order = \"ORC-3\", test = \"OBX-3.1\", notes = \"NTE-3\" }}] }}]\nnested = [{{ for = \"OBR after ORC > OBX\", order = \"ORC-3\", test = \"OBX-3.1\" }}]\nplain = [{{ for = \"OBR\", order = \"ORC-3\" }}]\n"
    )
    .replace("ADT^A01", "ORU^R01");
    let doc = apply_str(&src, own).value();
    let r = &doc["entry"][0]["resource"];
    assert_eq!(
        r["after"],
        json!([
            {"order": "F1", "test": "A", "position": "1", "results": [{"order": "F1", "test": "A", "notes": "result note"}]},
            {"order": "F2", "test": "B", "position": "2", "timing": "1", "results": [{"order": "F2", "test": "B"}, {"order": "F2", "test": "C"}]},
        ])
    );
    assert_eq!(
        r["nested"],
        json!([
            {"order": "F1", "test": "A"},
            {"order": "F2", "test": "B"},
            {"order": "F2", "test": "C"},
        ])
    );
    // without `after`, the next order's ORC is inside the first OBR's group
    assert_eq!(r["plain"], json!([{"order": "F2"}, {"order": "F1"}]));

    let doc = apply_str(&src, shared).value();
    let r = &doc["entry"][0]["resource"];
    assert_eq!(
        r["after"],
        json!([
            {"order": "F1", "test": "A", "position": "1", "results": [{"order": "F1", "test": "A"}]},
            {"order": "F1", "test": "B", "position": "2", "results": [{"order": "F1", "test": "B"}]},
        ])
    );

    // a sender that puts each ORC after its OBR: an ORC is a lead-in only directly
    // before an OBR, so no result is lost to a lead-in
    let after_obr = shared.replace(
        "ORC|RE|P1|F1\rOBR|1|||A^Alpha\r",
        "OBR|1|||A^Alpha\rORC|RE|P1|F1\r",
    );
    let after_obr = after_obr.replace("OBR|2|||B^Beta\r", "OBR|2|||B^Beta\rORC|RE|P2|F2\r");
    let doc = apply_str(&src, &after_obr).value();
    let r = &doc["entry"][0]["resource"];
    assert_eq!(
        r["nested"],
        json!([
            {"order": "F1", "test": "A"},
            {"order": "F2", "test": "B"},
        ])
    );
}

#[test]
fn at_most_one_refuses_a_message_with_the_segment_twice() {
    let src = format!(
        "{HEADER}\n[[resource]]\ntype = \"Basic\"\nid = \"'x'\"\n[resource.body]\nv = \"PID-8\"\n"
    )
    .replace(
        "messages = [\"ADT^A01\"]",
        "messages = [\"ADT^A01\"]\nat_most_one = [\"PID\", \"MRG\"]",
    );
    let plan = compile_str(&src).unwrap();
    let once = crate::hl7::Message::parse(MESSAGE).unwrap();
    assert!(plan.apply(&once).is_ok());
    let twice_text = MESSAGE.replace("PV1|", "PID|1||9434765919^^^NHS^NH\rPV1|");
    let twice = crate::hl7::Message::parse(&twice_text).unwrap();
    let err = plan.apply(&twice).unwrap_err().to_string();
    assert!(
        err.contains("at most one PID segment") && err.contains("has 2"),
        "{err}"
    );
    // a bad entry is reported at load
    let bad = src.replace("[\"PID\", \"MRG\"]", "[\"pid\"]");
    let errors = compile_str(&bad).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("bad segment `pid` in `at_most_one`")),
        "{errors:?}"
    );
}

#[test]
fn requires_refuses_a_document_without_the_type() {
    let src = format!(
        "{HEADER}\n[[resource]]\ntype = \"Patient\"\nid = \"PID-3.1\"\n[resource.body]\nv = \"PID-8\"\n\n[[resource]]\ntype = \"Basic\"\nid = \"'x'\"\n[resource.body]\nv = \"PID-8\"\n"
    )
    .replace(
        "messages = [\"ADT^A01\"]",
        "messages = [\"ADT^A01\"]\nrequires = [\"Patient\"]",
    );
    let plan = compile_str(&src).unwrap();
    let with = crate::hl7::Message::parse(MESSAGE).unwrap();
    assert!(plan.apply(&with).is_ok());
    let without_text = MESSAGE.replace("PID|1||9434765919", "PID|1||");
    let no_id = crate::hl7::Message::parse(&without_text).unwrap();
    let err = plan.apply(&no_id).unwrap_err().to_string();
    assert!(
        err.contains("requires a Patient") && err.contains("no id could be made for Patient"),
        "{err}"
    );
    // a type no resource makes, or that is no type, is reported at load
    for (bad, says) in [
        ("[\"Encounter\"]", "no [[resource]] makes a Encounter"),
        ("[\"patient\"]", "bad resource type `patient` in `requires`"),
        ("[\"Flagg\"]", "bad resource type `Flagg` in `requires`"),
    ] {
        let errors = compile_str(&src.replace("[\"Patient\"]", bad)).unwrap_err();
        assert!(
            errors.iter().any(|e| e.message.contains(says)),
            "{errors:?}"
        );
    }
}

#[test]
fn occurrence_is_the_segment_in_the_message_from_any_group() {
    let message = "MSH|^~\\&|LAB|RAL|JUNCTION|LCR|20240715093000||ORU^R01|C1|P|2.4\r\
PID|1||A^^^X\r\
OBR|1||F1|P^Panel\r\
OBX|1|TX|COMM^Comment||one\r\
OBX|2|TX|COMM^Comment||two\r\
OBR|2||F2|P^Panel\r\
OBX|1|TX|COMM^Comment||three\r";
    let (r, _) = body(
        r#"obx = [{ for = "OBR > OBX", n = "occurrence(OBR)", p = "position()" }]
obr = [{ for = "OBR", n = "occurrence(OBR)" }]
top = "occurrence(PID)"
none = "occurrence(ZZZ)""#,
        message,
    );
    assert_eq!(
        r["obx"],
        json!([{"n": "1", "p": "1"}, {"n": "1", "p": "2"}, {"n": "2", "p": "1"}])
    );
    assert_eq!(r["obr"], json!([{"n": "1"}, {"n": "2"}]));
    assert_eq!(r["top"], json!("1"));
    assert_eq!(r.get("none"), None);
    let errors = compile_str(&format!(
        "{HEADER}\n[[resource]]\ntype = \"Basic\"\nid = \"'x'\"\n[resource.body]\nv = \"occurrence(obr)\"\n"
    ))
    .unwrap_err();
    assert!(
        errors.iter().any(|e| e
            .message
            .contains("expected a segment name like `OBR` in occurrence(")),
        "{errors:?}"
    );
}

#[test]
fn fast_paths_write_what_the_general_evaluation_writes() {
    // `(E) | when('a' = 'a')` is always evaluated the general way (a value, then
    // written); `E` alone may take a fast path (a path read straight to its
    // element, a built-in written in place). Same bytes, warnings and read marks.
    let general = |e: &str| format!("({e}) | when('a' = 'a')");
    for e in [
        "PID-8",
        "PID-5.1",
        "PID-3[2].1",
        "PID-3[3].1",
        "MSH-10",
        "OBX-5",
        "ZPI-2",
        "PID-99",
        "PID-5[*] | XPN",
        "PID-5 | XPN",
        "PID-5[2] | XPN",
        "PID-11[*] | XAD",
        "PID-13[*] | XTN",
        "PV1-7 | XCN",
        "ZPI-3 | XON",
        "PID-3 | CX",
        "PID-3[*] | CX",
        "PID-3[3] | CX",
        "OBR-4 | CWE",
        "(OBX-3 | CWE) | ('unknown' | CWE)",
        "(PID-99 | CWE) | ('unknown' | CWE)",
        "(PID-99 | CWE) | PID-8",
    ] {
        let escaped = |e: &str| e.replace('\\', "\\\\").replace('"', "\\\"");
        for (fast, slow) in [
            (
                format!("v = \"{}\"", escaped(e)),
                format!("v = \"{}\"", escaped(&general(e))),
            ),
            (
                format!("v = [\"{}\"]", escaped(e)),
                format!("v = [\"{}\"]", escaped(&general(e))),
            ),
            (
                format!("code = \"{}\"", escaped(e)),
                format!("code = \"{}\"", escaped(&general(e))),
            ),
        ] {
            let (_, a) = body(&fast, MESSAGE);
            let (_, b) = body(&slow, MESSAGE);
            assert_eq!(a.document, b.document, "{fast}");
            assert_eq!(a.warnings, b.warnings, "{fast}");
            assert_eq!(a.unread, b.unread, "{fast}");
        }
    }
}

#[test]
fn a_for_array_takes_each_chain_in_turn() {
    // results with no order first, then an order's: each chain in the array's order
    let message = "MSH|^~\\&|POCT|RAL|JUNCTION|LCR|20240715093000||ORU^R01|C9|P|2.3\r\
PID|1||9434765919^^^NHS^NH\r\
OBX|1|NM|PH^pH||7.31\r\
NTE|1||arterial\r\
OBX|2|NM|LAC^Lactate||3.4\r\
OBR|1||F1|BG^Blood gas\r\
OBX|1|NM|K^Potassium||4.1\r";
    let src = format!(
        "{HEADER}\n[[resource]]\ntype = \"Basic\"\nid = \"'x'\"\n[resource.body]\nresults = [{{ for = [\"OBX before OBR\", \"OBR > OBX\"], code = \"OBX-3.1\", at = \"position()\", order = \"OBR-3\", notes = [{{ for = \"NTE\", text = \"NTE-3\" }}] }}]\n"
    )
    .replace("ADT^A01", "ORU^R01");
    let out = apply_str(&src, message);
    assert_eq!(
        out.value()["entry"][0]["resource"]["results"],
        json!([
            {"code": "PH", "at": "1", "notes": [{"text": "arterial"}]},
            {"code": "LAC", "at": "2"},
            {"code": "K", "at": "1", "order": "F1"}
        ])
    );
    // an empty array, and a bad chain in one, are errors at load
    let base = "[mapping]\nmessages = [\"ORU^R01\"]\n[[resource]]\ntype = \"Basic\"\nid = \"'x'\"\n[resource.body]\n";
    for (bad, message) in [
        ("[]", "`for` is an empty array"),
        ("[\"OBX before OBR\", \"OBR >\"]", "in `for`"),
        ("[\"OBX\", 3]", "expected a string, found integer"),
    ] {
        let errors =
            compile_str(&format!("{base}n = [{{ for = {bad}, t = \"OBX-3\" }}]\n")).expect_err(bad);
        assert!(
            errors
                .iter()
                .any(|e| e.line == 7 && e.message.contains(message)),
            "{bad}: {errors:?}"
        );
    }
}

#[test]
fn bad_for_is_reported_at_load() {
    let base = "[mapping]\nmessages = [\"ORU^R01\"]\n[[resource]]\ntype = \"Basic\"\nid = \"'x'\"\n[resource.body]\n";
    for bad in [
        "NTE before",
        "NTE beyond OBX",
        "NTE before obx",
        "NTE before OBX OBR",
        "OBR after",
        "OBR after orc",
        "OBR after ORC before OBX",
    ] {
        let src = format!("{base}n = [{{ for = \"{bad}\", t = \"NTE-3\" }}]\n");
        let errors = compile_str(&src).expect_err(bad);
        assert!(
            errors
                .iter()
                .any(|e| e.line == 7 && e.message.contains("in `for`")),
            "{bad}: {errors:?}"
        );
    }
}

#[test]
fn xpn_keeps_a_first_given_name_whole_and_splits_further_names() {
    let message = "MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20240715093000||ADT^A01|CTRL1|P|2.4\r\
PID|1||9434765919^^^NHS^NH||SMITH^MR \\T\\ MRS^J R^^^^L~JONES^^ANNE MARIE~BERG&VAN DER^PIETER~VAN DER BERG&VAN DER^ANNA\r";
    let src = format!(
        "{HEADER}\n[[resource]]\ntype = \"Patient\"\nid = \"'p'\"\n[resource.body]\nname = \"PID-5[*] | XPN\"\n"
    );
    let out = apply_str(&src, message);
    assert_eq!(
        out.value()["entry"][0]["resource"]["name"],
        json!([
            {"use": "official", "family": "SMITH", "given": ["MR & MRS", "J", "R"]},
            {"family": "JONES", "given": ["ANNE", "MARIE"]},
            {"family": "VAN DER BERG", "given": ["PIETER"]},
            {"family": "VAN DER BERG", "given": ["ANNA"]}
        ])
    );
}

#[test]
fn instant_needs_a_time_of_day() {
    let src = format!(
        "{HEADER}\n[[resource]]\ntype = \"Basic\"\nid = \"'x'\"\n[resource.body]\nfull = \"MSH-7 | instant(Europe/London)\"\nday = \"PID-7 | instant(Europe/London)\"\n"
    );
    let out = apply_str(&src, MESSAGE);
    let doc = out.value();
    let r = &doc["entry"][0]["resource"];
    assert_eq!(r["full"], json!("2024-07-15T09:30:00+01:00"));
    assert!(r.get("day").is_none(), "{r}");
    assert!(
        out.warnings.iter().any(|w| w.contains("no time of day")),
        "{:?}",
        out.warnings
    );
}

#[test]
fn names_and_addresses_keep_their_validity_dates() {
    let message = "MSH|^~\\&|PAS|RAL01|JUNCTION|LCR|20240715093000||ADT^A08|C1|P|2.5\r\
PID|1||9434765919^^^NHS^NH||SMITH^ANNE^^^^^L~JONES^ANNE^^^^^M^^^^^^20001231~OLD^A^^^^^^^^20000101&20051231||19800101|F|||1 OLD ST^^LEEDS^^LS1 1AA^GBR^H^^^^^^20190101^20251031~2 NEW ST^^LEEDS^^LS2 2BB^GBR^H^^^^^20251101&20261231\r";
    let src = format!(
        "{HEADER}\n[[resource]]\ntype = \"Patient\"\nid = \"'p'\"\n[resource.body]\nname = \"PID-5[*] | XPN\"\naddress = \"PID-11[*] | XAD\"\n"
    );
    let doc = apply_str(&src, message).value();
    let r = &doc["entry"][0]["resource"];
    assert_eq!(r["name"][0].get("period"), None);
    assert_eq!(r["name"][1]["period"], json!({"end": "2000-12-31"}));
    // v2.3/2.4: the validity range XPN.10 and XAD.12 (DR)
    assert_eq!(
        r["name"][2]["period"],
        json!({"start": "2000-01-01", "end": "2005-12-31"})
    );
    assert_eq!(
        r["address"][0]["period"],
        json!({"start": "2019-01-01", "end": "2025-10-31"})
    );
    assert_eq!(
        r["address"][1]["period"],
        json!({"start": "2025-11-01", "end": "2026-12-31"})
    );
}

/// A resource `type` that FHIR R4 does not have (a typo) is a load error at its
/// place, not a resource the store would then hold under a made-up type.
#[test]
fn a_resource_type_fhir_r4_does_not_have_is_refused_at_load() {
    let src = format!(
        "{HEADER}\n[[resource]]\ntype = \"Flagg\"\nid = \"PID-3.1\"\n[resource.body]\nv = \"PID-8\"\n"
    );
    let errors = compile_str(&src).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("bad resource type `Flagg`")
                && e.message.contains("FHIR R4 resource type")
                && e.line > 0
                && e.col > 0),
        "{errors:?}"
    );
    assert!(compile_str(&src.replace("Flagg", "Flag")).is_ok());
}

/// The text a transform takes (`default`, `warn`, `join`, `regex_replace`)
/// is a quoted literal: unquoted, `default(PID-3.1)` would silently be the words
/// "PID-3.1", never the field.
#[test]
fn an_unquoted_literal_argument_is_refused_at_load() {
    let src = format!(
        "{HEADER}\n[[resource]]\ntype = \"Patient\"\nid = \"PID-3.1\"\n[resource.body]\nv = \"PID-8 | default(PID-3.1)\"\n"
    );
    let errors = compile_str(&src).unwrap_err();
    assert!(
        errors.iter().any(|e| e
            .message
            .contains("the argument of `default` is a quoted 'literal', found `PID-3.1`")),
        "{errors:?}"
    );
    assert!(compile_str(&src.replace("default(PID-3.1)", "default('x')")).is_ok());
}

/// A table defined twice in a mapping file is one error naming the first, and
/// a key given twice is named; other mistakes of the file are still reported.
#[test]
fn a_table_or_key_given_twice_is_named_once() {
    let src = format!(
        "{HEADER}\n[tables.t]\na = 'b'\n\n[tables.t]\nc = 'd'\n\n[[resource]]\ntype = \"Patient\"\nid = \"PID-3.1\"\n[resource.body]\nv = \"PID-8 | nope\"\n\n[[resource]]\ntype = \"Flag\"\nid = \"'x'\"\n[resource.body]\nstatus = \"'active'\"\n"
    );
    let errors = compile_str(&src).unwrap_err();
    let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("table `[tables.t]` is already defined at line")),
        "{messages:?}"
    );
    assert!(messages.iter().any(|m| m.contains("nope")), "{messages:?}");
    assert!(
        !messages.iter().any(|m| m.contains("duplicate key")),
        "{messages:?}"
    );
}

/// A mapping's name is one a route can name, whether it is set or taken from
/// the file's name.
#[test]
fn a_mapping_name_is_one_routes_can_name() {
    let body = "messages = [\"ADT^A01\"]\n[[resource]]\ntype = \"Patient\"\nid = \"'x'\"\n[resource.body]\nactive = \"'true'\"\n";
    for bad in ["", "siu.v2", "bad name!", "mé"] {
        check_errors_of(
            crate::mapping::compile::compile_checked(
                Path::new("m.toml"),
                &format!("[mapping]\nname = \"{bad}\"\n{body}"),
                false,
            ),
            &[(
                2,
                8,
                "bad mapping name, expected 1 to 64 letters, digits, `-` or `_`",
            )],
        );
    }
    let plan = crate::mapping::compile::compile_checked(
        Path::new("mappings/siu_v2-1.toml"),
        &format!("[mapping]\n{body}"),
        false,
    )
    .unwrap();
    assert_eq!(plan.name(), "siu_v2-1");
    check_errors_of(
        crate::mapping::compile::compile_checked(
            Path::new("mappings/bad name!.toml"),
            &format!("[mapping]\n{body}"),
            false,
        ),
        &[(
            1,
            1,
            "the mapping is named by its file, `bad name!`, which is no mapping name",
        )],
    );
}
