//! The elements of every FHIR type, for checking the bodies of mapping files at
//! load: a misspelt element (`birthdate`), an element a type does not have, an
//! object where FHIR has a primitive, or text where it has a complex type.
//!
//! The table (`fhir_elements.txt`) is generated from the FHIR models of
//! `fhir.resources` (its R4B package, the one the tests validate Bundles with)
//! by `tests/python/gen_fhir_elements.py`: one type a line, its elements as
//! `name:Type`, `*` when it repeats, `-` for a primitive followed by its FHIR
//! type (`-DateTime`) where the models say it. R4B differs from R4 in
//! a few resources Junction does not map (evidence, subscriptions, medicinal
//! products); a type missing from the table is not checked.
//!
//! The same table checks the primitive values of a resource the record store
//! is given ([`invalid_value`]: a `dateTime` that is not one, a boolean sent
//! as text), so a neighbour's document cannot make `/fhir` serve invalid FHIR.
//!
//! It does not check cardinality, required elements, value sets, references or
//! invariants: the validator in the tests does (`tests/fhir_validation.rs`).

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::Value;

const TABLE: &str = include_str!("fhir_elements.txt");

/// What an element of a type is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Element {
    /// Its type: `None` for a primitive (string, code, dateTime...).
    pub ty: Option<&'static str>,
    /// A primitive's FHIR type as the models name it (`DateTime`, `Code`,
    /// `Boolean`); empty when not known or not a primitive.
    pub primitive: &'static str,
}

/// The answer for one element name of a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The type is not in the table (or is `Resource`, any resource): not checked.
    Unchecked,
    Found(Element),
    Missing,
}

type Types = HashMap<&'static str, Vec<(&'static str, Element)>>;

/// The same table by type and element name, for checking values (a resource
/// has dozens of members, each looked up).
type Index = FxHashMap<&'static str, FxHashMap<&'static str, Element>>;

static INDEX: LazyLock<Index> = LazyLock::new(|| {
    TYPES
        .iter()
        .map(|(ty, elements)| (*ty, elements.iter().copied().collect()))
        .collect()
});

type FxHashMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

static TYPES: LazyLock<Types> = LazyLock::new(|| {
    TABLE
        .lines()
        .filter_map(|line| {
            let mut words = line.split(' ');
            let name = words.next().filter(|n| !n.is_empty())?;
            let elements = words
                .filter_map(|w| {
                    let (el, ty) = w.split_once(':')?;
                    let el = el.trim_end_matches('*');
                    let (ty, primitive) = match ty.strip_prefix('-') {
                        Some(primitive) => (None, primitive),
                        None => (Some(ty), ""),
                    };
                    Some((el, Element { ty, primitive }))
                })
                .collect();
            Some((name, elements))
        })
        .collect()
});

/// The table's name of a FHIR type (`None`: not in the table).
pub(crate) fn known_type(name: &str) -> Option<&'static str> {
    TYPES.get_key_value(name).map(|(k, _)| *k)
}

/// Element `name` of type `ty`. A name starting with `_` is the extension of
/// a primitive element (`_birthDate`), known when that element is one.
pub(crate) fn element(ty: &str, name: &str) -> Lookup {
    if ty == "Resource" {
        return Lookup::Unchecked;
    }
    let Some(elements) = TYPES.get(ty) else {
        return Lookup::Unchecked;
    };
    if let Some(primitive) = name.strip_prefix('_') {
        return match elements.iter().find(|(n, _)| *n == primitive) {
            Some((_, e)) if e.ty.is_none() => Lookup::Found(Element {
                ty: Some("Element"),
                primitive: "",
            }),
            _ => Lookup::Missing,
        };
    }
    match elements.iter().find(|(n, _)| *n == name) {
        Some((_, e)) => Lookup::Found(*e),
        None => Lookup::Missing,
    }
}

/// A value of a resource that its FHIR type does not allow: where it is
/// (`Encounter.period.start`) and what it should have been (`dateTime`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InvalidValue {
    pub path: String,
    pub expected: &'static str,
}

/// The first primitive value of `resource` (its `contained` resources
/// included) that is not of its element's FHIR type: text where FHIR has a
/// boolean or a number, a `date`, `dateTime`, `instant` or `time` not in
/// FHIR's format, a `code` or `id` not shaped as one. Elements and types the
/// table does not know are not looked at (an R4 element R4B renamed, an
/// extension's value is checked as its `value[x]` says). Never looks at
/// what a text says beyond its shape.
pub(crate) fn invalid_value(resource: &Value) -> Option<InvalidValue> {
    let ty = resource["resourceType"].as_str()?;
    // the element names down to where the walk is (joined only for a problem)
    let mut path = vec![ty];
    let expected = check_object(ty, resource, &mut path)?;
    Some(InvalidValue {
        path: path.join("."),
        expected,
    })
}

/// The FHIR type of the first value under `value` (of type `ty`) that is not
/// one, with `path` left naming where it is.
fn check_object<'v>(ty: &str, value: &'v Value, path: &mut Vec<&'v str>) -> Option<&'static str> {
    let Value::Object(members) = value else {
        return None;
    };
    let elements = INDEX.get(ty)?;
    for (name, child) in members {
        let Some(element) = elements.get(name.as_str()) else {
            continue;
        };
        path.push(name);
        let items = match child {
            Value::Array(items) => items.as_slice(),
            one => std::slice::from_ref(one),
        };
        for item in items {
            let found = match element.ty {
                Some("Resource") => match item["resourceType"].as_str() {
                    Some(inner) => check_object(inner, item, path),
                    None => None,
                },
                Some(inner) => check_object(inner, item, path),
                None => {
                    (!primitive_ok(element.primitive, item)).then(|| fhir_name(element.primitive))
                }
            };
            if found.is_some() {
                return found;
            }
        }
        path.pop();
    }
    None
}

/// Whether `value` is a valid JSON form of FHIR primitive `primitive` (as
/// the models name it; one not known here: any JSON string, number or
/// boolean).
fn primitive_ok(primitive: &str, value: &Value) -> bool {
    use regex::Regex;
    use std::sync::LazyLock;
    const YEAR: &str = "([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)";
    const TIME: &str = "([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\\.[0-9]+)?";
    const ZONE: &str = "(Z|(\\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))";
    static DATE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(&format!(
            "^{YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?$"
        ))
        .expect("a valid regex")
    });
    static DATE_TIME: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(&format!(
            "^{YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T{TIME}{ZONE})?)?)?$"
        ))
        .expect("a valid regex")
    });
    static INSTANT: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(&format!(
            "^{YEAR}-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T{TIME}{ZONE}$"
        ))
        .expect("a valid regex")
    });
    static TIME_OF_DAY: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(&format!("^{TIME}$")).expect("a valid regex"));
    let text = value.as_str();
    match primitive {
        "Boolean" => value.is_boolean(),
        "Integer" | "Integer64" => value.as_i64().is_some(),
        "PositiveInt" => value.as_u64().is_some_and(|n| n > 0),
        "UnsignedInt" => value.as_u64().is_some(),
        "Decimal" => value.is_number(),
        "Date" => text.is_some_and(|t| DATE.is_match(t)),
        "DateTime" => text.is_some_and(|t| DATE_TIME.is_match(t)),
        "Instant" => text.is_some_and(|t| INSTANT.is_match(t)),
        "Time" => text.is_some_and(|t| TIME_OF_DAY.is_match(t)),
        // `[^\s]+( [^\s]+)*`: no white space at either end, single spaces inside
        "Code" => text.is_some_and(|t| {
            !t.is_empty()
                && !t.starts_with(' ')
                && !t.ends_with(' ')
                && !t.contains("  ")
                && !t.contains(|c: char| c.is_whitespace() && c != ' ')
        }),
        "Id" => text.is_some_and(crate::store::is_id),
        // `\S*`, and never empty (no FHIR value is)
        "Uri" | "Url" | "Canonical" | "Oid" | "UuidVersion" => {
            text.is_some_and(|t| !t.is_empty() && !t.contains(char::is_whitespace))
        }
        // (the table names xhtml, Narrative.div, with no type of its own):
        // its shape, not a whole XHTML check: one `div` element, and no
        // script (FHIR's narrative rules, txt-1 and txt-2)
        "" => text.is_some_and(|t| {
            let t = t.trim();
            t.starts_with("<div")
                && t.ends_with("</div>")
                && !t.to_ascii_lowercase().contains("<script")
        }),
        "String" | "Markdown" | "EncodedBytes" => text.is_some_and(|t| !t.is_empty()),
        _ => value.is_string() || value.is_number() || value.is_boolean(),
    }
}

/// FHIR's name of a primitive type (`DateTime` -> `dateTime`).
fn fhir_name(primitive: &'static str) -> &'static str {
    match primitive {
        "Boolean" => "boolean",
        "Integer" => "integer",
        "Integer64" => "integer64",
        "PositiveInt" => "positiveInt",
        "UnsignedInt" => "unsignedInt",
        "Decimal" => "decimal",
        "Date" => "date",
        "DateTime" => "dateTime",
        "Instant" => "instant",
        "Time" => "time",
        "Code" => "code",
        "Id" => "id",
        "String" => "string",
        "Markdown" => "markdown",
        "Uri" => "uri",
        "Url" => "url",
        "Canonical" => "canonical",
        "Oid" => "oid",
        "UuidVersion" => "uuid",
        "EncodedBytes" => "base64Binary",
        "" => "xhtml",
        _ => "a primitive value",
    }
}

/// The element of `ty` closest to `name` (the same but for case, or at most two
/// edits away), for "did you mean".
pub(crate) fn suggest(ty: &str, name: &str) -> Option<&'static str> {
    let elements = TYPES.get(ty)?;
    if let Some((n, _)) = elements.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        return Some(n);
    }
    elements
        .iter()
        .map(|(n, _)| (distance(n, name), *n))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, n)| n)
}

/// Levenshtein distance (element names are short).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_are_found_with_their_types() {
        assert_eq!(
            element("Patient", "birthDate"),
            Lookup::Found(Element {
                ty: None,
                primitive: "Date"
            })
        );
        assert_eq!(
            element("Patient", "maritalStatus"),
            Lookup::Found(Element {
                ty: Some("CodeableConcept"),
                primitive: ""
            })
        );
        assert_eq!(
            element("Encounter", "location"),
            Lookup::Found(Element {
                ty: Some("EncounterLocation"),
                primitive: ""
            })
        );
        assert_eq!(
            element("Observation", "valueQuantity"),
            Lookup::Found(Element {
                ty: Some("Quantity"),
                primitive: ""
            })
        );
        assert_eq!(element("Patient", "birthdate"), Lookup::Missing);
        assert_eq!(
            element("Patient", "_birthDate"),
            Lookup::Found(Element {
                ty: Some("Element"),
                primitive: ""
            })
        );
        assert_eq!(element("Patient", "_name"), Lookup::Missing);
        assert_eq!(element("NoSuchType", "x"), Lookup::Unchecked);
        assert_eq!(element("Resource", "x"), Lookup::Unchecked);
    }

    #[test]
    fn values_are_checked_against_their_elements_types() {
        use serde_json::json;
        let invalid = |r: Value| invalid_value(&r).map(|i| format!("{} {}", i.path, i.expected));
        let encounter = |start: Value| {
            json!({"resourceType": "Encounter", "id": "e", "status": "finished",
                   "class": {"code": "IMP"}, "period": {"start": start}})
        };
        for good in [
            "2026",
            "2026-11",
            "2026-11-23",
            "2026-11-23T10:00:00Z",
            "2026-11-23T10:00:00.123+01:00",
        ] {
            assert_eq!(invalid(encounter(json!(good))), None, "{good}");
        }
        for bad in [
            json!("QXSURNAME 9434765919"),
            json!("2026-11-23T10:00"),
            json!("2026-13-01"),
            json!(20261123),
            json!(""),
        ] {
            assert_eq!(
                invalid(encounter(bad.clone())).as_deref(),
                Some("Encounter.period.start dateTime"),
                "{bad}"
            );
        }
        // in arrays, choice types, backbone elements and contained resources
        let patient = json!({"resourceType": "Patient", "id": "p",
            "name": [{"family": "Smith"}], "birthDate": "1948-03-12",
            "active": true, "deceasedBoolean": false,
            "contained": [{"resourceType": "Practitioner", "id": "gp", "active": "yes"}]});
        assert_eq!(
            invalid(patient).as_deref(),
            Some("Patient.contained.active boolean")
        );
        let observation = json!({"resourceType": "Observation", "id": "o", "status": "final ",
            "code": {"text": "Hb"}});
        assert_eq!(
            invalid(observation).as_deref(),
            Some("Observation.status code")
        );
        let observation = json!({"resourceType": "Observation", "id": "o", "status": "final",
            "code": {"text": "Hb"}, "issued": "2026-11-23",
            "valueQuantity": {"value": 128, "unit": "g/L"}});
        assert_eq!(
            invalid(observation).as_deref(),
            Some("Observation.issued instant")
        );
        let observation = json!({"resourceType": "Observation", "id": "o", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
            "valueQuantity": {"value": "128"}});
        assert_eq!(
            invalid(observation).as_deref(),
            Some("Observation.valueQuantity.value decimal")
        );
        // nor a narrative's xhtml
        let patient = json!({"resourceType": "Patient", "id": "p",
            "text": {"status": "generated", "div": ""}});
        assert_eq!(invalid(patient).as_deref(), Some("Patient.text.div xhtml"));
        for div in [
            "   ",
            "x",
            "<p>x</p>",
            "<div>",
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><SCRIPT>x</SCRIPT></div>",
        ] {
            let patient = json!({"resourceType": "Patient", "id": "p",
                "text": {"status": "generated", "div": div}});
            assert_eq!(
                invalid(patient).as_deref(),
                Some("Patient.text.div xhtml"),
                "{div}"
            );
        }
        let patient = json!({"resourceType": "Patient", "id": "p", "text": {"status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Jane</p></div>"}});
        assert_eq!(invalid(patient), None);
        // a string is never empty
        let observation = json!({"resourceType": "Observation", "id": "o", "status": "final",
            "code": {"text": ""}});
        assert_eq!(
            invalid(observation).as_deref(),
            Some("Observation.code.text string")
        );
        // a uri holds no white space (`\S*`), and is never empty either
        let observation = json!({"resourceType": "Observation", "id": "o", "status": "final",
            "code": {"coding": [{"system": "http://lo inc.org", "code": "718-7"}]}});
        assert_eq!(
            invalid(observation).as_deref(),
            Some("Observation.code.coding.system uri")
        );
        // what the table does not know is not looked at; a primitive's
        // extension (`_birthDate`) neither
        let unknown = json!({"resourceType": "Patient", "id": "p", "notAnElement": {"x": 1},
            "_birthDate": {"extension": []}, "extension": [{"url": "u", "valueDateTime": "2026"}]});
        assert_eq!(invalid(unknown), None);
        let extension = json!({"resourceType": "Patient", "id": "p",
            "extension": [{"url": "u", "valueDateTime": "yesterday"}]});
        assert_eq!(
            invalid(extension).as_deref(),
            Some("Patient.extension.valueDateTime dateTime")
        );
    }

    #[test]
    fn near_names_are_suggested() {
        assert_eq!(suggest("Patient", "birthdate"), Some("birthDate"));
        assert_eq!(suggest("Patient", "genderr"), Some("gender"));
        assert_eq!(suggest("Patient", "zzzzzzzz"), None);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
