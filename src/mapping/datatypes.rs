//! Data-type built-ins: HL7 v2 composites (CX, XPN, XAD, XTN, CE/CWE, XCN, XON) to
//! FHIR R4 elements (Identifier, HumanName, Address, ContactPoint, CodeableConcept,
//! Reference), following the HL7 v2-to-FHIR concept maps and UK Core identifier systems.
//!
//! # Invariants
//! - Output objects never contain empty members; `None` when nothing is left.
//! - Only codes FHIR accepts are emitted for coded elements (`use`, `system`);
//!   anything unknown is left out rather than guessed.

use std::borrow::Cow;

use jiff::tz::TimeZone;
use serde_json::{Map, Value};

use super::eval::{Node, TrimFast};
use super::transform::{self, DataType};
use crate::hl7::Separators;

pub(crate) const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
pub(crate) const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
pub(crate) const GMC_SYSTEM: &str = "https://fhir.hl7.org.uk/Id/gmc-number";
pub(crate) const GMP_SYSTEM: &str = "https://fhir.hl7.org.uk/Id/gmp-number";

/// Applies a built-in to a message element.
pub(crate) fn build(
    dt: DataType,
    n: Node<'_>,
    seps: &Separators,
    _tz: &TimeZone,
    warnings: &mut Vec<String>,
) -> Option<Value> {
    let t = |i: usize| n.part_text(i, seps);
    let out = match dt {
        DataType::Cx => {
            let value = t(1);
            let authority = n.sub_text(4, 1, seps);
            let kind = t(5);
            let mut m = Map::new();
            let nhs = authority.eq_ignore_ascii_case("NHS") || kind.eq_ignore_ascii_case("NH");
            if nhs {
                match transform::nhs_number(&value) {
                    Some(v) => {
                        put(&mut m, "system", NHS_NUMBER_SYSTEM);
                        put(&mut m, "value", &v);
                        return Some(Value::Object(m));
                    }
                    None => warnings.push(format!(
                        "NHS number {value} fails modulus 11; kept as a local identifier"
                    )),
                }
            }
            if !kind.is_empty() && !nhs {
                m.insert("type".into(), codeable(&kind, "", "HL70203", ""));
            }
            put(&mut m, "value", &value);
            if !authority.is_empty() {
                let mut a = Map::new();
                put(&mut a, "display", &authority);
                m.insert("assigner".into(), Value::Object(a));
            }
            m
        }
        DataType::Xpn => {
            let mut m = Map::new();
            put(&mut m, "use", name_use(&t(7)));
            put(&mut m, "family", &n.sub_text(1, 1, seps));
            // XPN-2 is one given name even with spaces in it ("MARY ANN"); XPN-3
            // holds the further given names, which HL7 separates with spaces
            let first = t(2);
            let further = t(3);
            let given: Vec<Value> = std::iter::once(first.as_ref())
                .filter(|g| !g.is_empty())
                .chain(further.split_whitespace())
                .map(|g| Value::String(g.to_string()))
                .collect();
            if !given.is_empty() {
                m.insert("given".into(), Value::Array(given));
            }
            put_list(&mut m, "prefix", &[t(5).as_ref()]);
            put_list(&mut m, "suffix", &[t(4).as_ref(), t(6).as_ref()]);
            if !m.contains_key("family") && !m.contains_key("given") {
                return None;
            }
            m
        }
        DataType::Xad => {
            let mut m = Map::new();
            let code = t(7).to_ascii_uppercase();
            let (use_, type_) = match code.as_str() {
                "H" | "P" => ("home", ""),
                "B" | "O" => ("work", ""),
                "C" => ("temp", ""),
                "BA" | "BAD" => ("old", ""),
                "M" => ("", "postal"),
                "SH" => ("", "physical"),
                _ => ("", ""),
            };
            put(&mut m, "use", use_);
            put(&mut m, "type", type_);
            put_list(
                &mut m,
                "line",
                &[n.sub_text(1, 1, seps).as_ref(), t(2).as_ref()],
            );
            put(&mut m, "city", &t(3));
            put(&mut m, "district", &t(4));
            put(&mut m, "postalCode", &t(5));
            put(&mut m, "country", &t(6));
            if m.keys().all(|k| k == "use" || k == "type") {
                return None;
            }
            m
        }
        DataType::Xtn => {
            let mut m = Map::new();
            let use_code = t(2).to_ascii_uppercase();
            let equip = t(3).to_ascii_uppercase();
            let email = t(4);
            let is_email =
                use_code == "NET" || equip == "INTERNET" || equip == "X.400" || !email.is_empty();
            let value = if is_email && !email.is_empty() {
                email.into_owned()
            } else {
                let v1 = t(1);
                if !v1.is_empty() {
                    v1.into_owned()
                } else if !t(12).is_empty() {
                    t(12).into_owned()
                } else {
                    let parts = [t(5), t(6), t(7)];
                    let mut s = parts
                        .iter()
                        .filter(|p| !p.is_empty())
                        .map(|p| p.as_ref())
                        .collect::<Vec<_>>()
                        .join(" ");
                    if !t(8).is_empty() {
                        s.push_str(" ext ");
                        s.push_str(&t(8));
                    }
                    s
                }
            };
            if value.trim_fast().is_empty() {
                return None;
            }
            let system = if is_email || value.contains('@') {
                "email"
            } else {
                match equip.as_str() {
                    "FX" => "fax",
                    "BP" => "pager",
                    "MD" => "other",
                    _ => "phone",
                }
            };
            let use_ = match (use_code.as_str(), equip.as_str()) {
                (_, "CP") | ("PRS", _) => "mobile",
                ("PRN" | "ORN", _) => "home",
                ("WPN", _) => "work",
                ("VHN", _) => "temp",
                _ => "",
            };
            put(&mut m, "system", system);
            put(&mut m, "value", value.trim_fast());
            put(&mut m, "use", use_);
            m
        }
        DataType::Cwe => return cwe(n, seps),
        DataType::Coding => return coding(&t(1), &t(2), &t(3)),
        DataType::Xcn => {
            let id = t(1);
            let authority = n.sub_text(9, 1, seps).to_ascii_uppercase();
            let id_type = t(13).to_ascii_uppercase();
            let mut m = Map::new();
            put(&mut m, "type", "Practitioner");
            if !id.is_empty() {
                let mut ident = Map::new();
                let hint = format!("{authority} {id_type}");
                let (system, value) = practitioner_system(&id, &hint);
                put(&mut ident, "system", system);
                put(&mut ident, "value", &value);
                m.insert("identifier".into(), Value::Object(ident));
            }
            let display: Vec<String> = [t(6), t(3), n.sub_text(2, 1, seps)]
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| s.to_string())
                .collect();
            put(&mut m, "display", &display.join(" "));
            if m.len() == 1 {
                return None;
            }
            m
        }
        DataType::Xon => {
            let code = {
                let c10 = t(10);
                if c10.is_empty() {
                    t(3)
                } else {
                    c10
                }
            };
            let mut m = Map::new();
            put(&mut m, "type", "Organization");
            if !code.is_empty() {
                let mut ident = Map::new();
                put(&mut ident, "system", ODS_SYSTEM);
                put(&mut ident, "value", &code.to_ascii_uppercase());
                m.insert("identifier".into(), Value::Object(ident));
            }
            put(&mut m, "display", &t(1));
            if m.len() == 1 {
                return None;
            }
            m
        }
    };
    (!out.is_empty()).then_some(Value::Object(out))
}

/// Applies a built-in to plain text (a value already transformed): the text is
/// taken as the identifying part of the composite.
pub(crate) fn build_text(dt: DataType, text: &str) -> Option<Value> {
    if text.is_empty() {
        return None;
    }
    let mut m = Map::new();
    match dt {
        DataType::Cx => put(&mut m, "value", text),
        DataType::Xpn => put(&mut m, "text", text),
        DataType::Xad => put(&mut m, "text", text),
        DataType::Xtn => {
            put(
                &mut m,
                "system",
                if text.contains('@') { "email" } else { "phone" },
            );
            put(&mut m, "value", text);
        }
        DataType::Cwe => put(&mut m, "text", text),
        DataType::Coding => put(&mut m, "code", text),
        DataType::Xcn => {
            put(&mut m, "type", "Practitioner");
            put(&mut m, "display", text);
        }
        DataType::Xon => {
            put(&mut m, "type", "Organization");
            put(&mut m, "display", text);
        }
    }
    Some(Value::Object(m))
}

/// The identifier system of a practitioner code: GMP (`G` + 7 digits), GMC
/// (7 digits, or a consultant code `C` + 7 digits), or none when unknown.
fn practitioner_system(id: &str, hint: &str) -> (&'static str, String) {
    let digits7 = |s: &str| s.len() == 7 && s.bytes().all(|b| b.is_ascii_digit());
    let upper = id.to_ascii_uppercase();
    if hint.contains("GMP") || (upper.starts_with('G') && digits7(&upper[1..])) {
        (GMP_SYSTEM, upper)
    } else if hint.contains("GMC") || digits7(&upper) {
        (GMC_SYSTEM, upper)
    } else if upper.starts_with('C') && digits7(&upper[1..]) {
        (GMC_SYSTEM, upper[1..].to_string())
    } else {
        ("", id.to_string())
    }
}

fn cwe(n: Node<'_>, seps: &Separators) -> Option<Value> {
    let t = |i: usize| n.part_text(i, seps);
    let mut codings = Vec::new();
    codings.extend(coding(&t(1), &t(2), &t(3)));
    codings.extend(coding(&t(4), &t(5), &t(6)));
    let mut m = Map::new();
    if !codings.is_empty() {
        m.insert("coding".into(), Value::Array(codings));
    }
    let text = [t(9), t(2), t(5)].into_iter().find(|s| !s.is_empty());
    if let Some(text) = text {
        put(&mut m, "text", &text);
    } else if m.is_empty() {
        // a bare value that is not a code: keep it as text
        put(&mut m, "text", &n.text(seps));
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

fn codeable(code: &str, display: &str, system: &str, text: &str) -> Value {
    let mut m = Map::new();
    if let Some(c) = coding(code, display, system) {
        m.insert("coding".into(), Value::Array(vec![c]));
    }
    put(&mut m, "text", text);
    Value::Object(m)
}

fn coding(code: &str, display: &str, system: &str) -> Option<Value> {
    if code.is_empty() {
        return None;
    }
    let mut m = Map::new();
    put(&mut m, "system", &coding_system(system));
    put(&mut m, "code", code);
    put(&mut m, "display", display);
    Some(Value::Object(m))
}

/// The FHIR system URI of an HL7 v2 coding system name (table 0396), or "" when unknown.
pub(crate) fn coding_system(name: &str) -> Cow<'static, str> {
    let name = name.trim_fast();
    if name.is_empty() {
        return Cow::Borrowed("");
    }
    let upper = name.to_ascii_uppercase();
    let s = match upper.as_str() {
        "SCT" | "SNOMED" | "SNOMEDCT" | "SNOMED-CT" | "SNOMED CT" | "SCT2" => {
            "http://snomed.info/sct"
        }
        "LN" | "LOINC" => "http://loinc.org",
        "I10" | "ICD10" | "ICD-10" | "I10C" => "http://hl7.org/fhir/sid/icd-10",
        "I9" | "I9C" | "ICD9" => "http://hl7.org/fhir/sid/icd-9-cm",
        "UCUM" => "http://unitsofmeasure.org",
        "READ" | "RD2" | "READ2" => "http://read.info/readv2",
        "CTV3" | "RD3" => "http://read.info/ctv3",
        _ => {
            if let Some(table) = upper.strip_prefix("HL7") {
                if table.len() == 4 && table.bytes().all(|b| b.is_ascii_digit()) {
                    return Cow::Owned(format!("http://terminology.hl7.org/CodeSystem/v2-{table}"));
                }
            }
            ""
        }
    };
    Cow::Borrowed(s)
}

fn name_use(code: &str) -> &'static str {
    match code.to_ascii_uppercase().as_str() {
        "L" => "official",
        "D" | "A" => "usual",
        "M" => "maiden",
        "N" => "nickname",
        "S" => "anonymous",
        "B" | "BAD" | "NOUSE" => "old",
        "T" => "usual",
        _ => "",
    }
}

fn put(m: &mut Map<String, Value>, key: &str, value: &str) {
    let v = value.trim_fast();
    if !v.is_empty() && v != "\"\"" {
        m.insert(key.to_string(), Value::String(v.to_string()));
    }
}

fn put_list(m: &mut Map<String, Value>, key: &str, values: &[&str]) {
    let items: Vec<Value> = values
        .iter()
        .map(|v| v.trim_fast())
        .filter(|v| !v.is_empty() && *v != "\"\"")
        .map(|v| Value::String(v.to_string()))
        .collect();
    if !items.is_empty() {
        m.insert(key.to_string(), Value::Array(items));
    }
}
