//! The elements of every FHIR type, for checking the bodies of mapping files at
//! load: a misspelt element (`birthdate`), an element a type does not have, an
//! object where FHIR has a primitive, or text where it has a complex type.
//!
//! The table (`fhir_elements.txt`) is generated from the FHIR models of
//! `fhir.resources` (its R4B package, the one the tests validate Bundles with)
//! by `tests/python/gen_fhir_elements.py`: one type a line, its elements as
//! `name:Type`, `*` when it repeats, `-` for a primitive. R4B differs from R4 in
//! a few resources Junction does not map (evidence, subscriptions, medicinal
//! products); a type missing from the table is not checked.
//!
//! It does not check cardinality, required elements, value sets or invariants:
//! the validator in the tests does (`tests/fhir_validation.rs`).

use std::collections::HashMap;
use std::sync::LazyLock;

const TABLE: &str = include_str!("fhir_elements.txt");

/// What an element of a type is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Element {
    /// Its type: `None` for a primitive (string, code, dateTime...).
    pub ty: Option<&'static str>,
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
                    let ty = (ty != "-").then_some(ty);
                    Some((el, Element { ty }))
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
            }),
            _ => Lookup::Missing,
        };
    }
    match elements.iter().find(|(n, _)| *n == name) {
        Some((_, e)) => Lookup::Found(*e),
        None => Lookup::Missing,
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
            Lookup::Found(Element { ty: None })
        );
        assert_eq!(
            element("Patient", "maritalStatus"),
            Lookup::Found(Element {
                ty: Some("CodeableConcept")
            })
        );
        assert_eq!(
            element("Encounter", "location"),
            Lookup::Found(Element {
                ty: Some("EncounterLocation")
            })
        );
        assert_eq!(
            element("Observation", "valueQuantity"),
            Lookup::Found(Element {
                ty: Some("Quantity")
            })
        );
        assert_eq!(element("Patient", "birthdate"), Lookup::Missing);
        assert_eq!(
            element("Patient", "_birthDate"),
            Lookup::Found(Element {
                ty: Some("Element")
            })
        );
        assert_eq!(element("Patient", "_name"), Lookup::Missing);
        assert_eq!(element("NoSuchType", "x"), Lookup::Unchecked);
        assert_eq!(element("Resource", "x"), Lookup::Unchecked);
    }

    #[test]
    fn near_names_are_suggested() {
        assert_eq!(suggest("Patient", "birthdate"), Some("birthDate"));
        assert_eq!(suggest("Patient", "genderr"), Some("gender"));
        assert_eq!(suggest("Patient", "zzzzzzzz"), None);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
