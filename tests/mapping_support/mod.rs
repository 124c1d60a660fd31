//! Shared by the mapping test files: load the shipped mappings and map sample files
//! the way `junction map` does (decode the charset, split a batch, parse, select the
//! mapping by message type and trigger, apply).

#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};

use junction::hl7;
use junction::mapping::{MapOutput, MappingSet};
use serde_json::Value;

pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped mappings; fails the test with every load problem.
pub fn mappings() -> MappingSet {
    let dir = repo().join("mappings");
    match MappingSet::load_dir(&dir) {
        Ok(set) => set,
        Err(errors) => {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!("the shipped mappings do not load:\n{}", lines.join("\n"));
        }
    }
}

/// Every good sample (`samples/*.hl7`) plus the bad-checksum one, which is a
/// well-formed message and must map; sorted, so test output is stable.
pub fn sample_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("samples"))
        .expect("samples/ is readable")
        .map(|entry| entry.expect("samples/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "hl7"))
        .collect();
    files.push(repo().join("tests/bad-input/nhs_number_bad_checksum.hl7"));
    files.sort();
    files
}

/// Maps every message of a file with the mapping selected by its type; one
/// `(name, output)` per message, named by the file stem (`_1`, `_2`… in a batch).
pub fn map_file(set: &MappingSet, path: &Path) -> Vec<(String, MapOutput)> {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("sample names are UTF-8")
        .to_string();
    let messages = messages(&raw, path);
    let batch = messages.len() > 1;
    messages
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let name = if batch {
                format!("{stem}_{}", i + 1)
            } else {
                stem.clone()
            };
            (name, map_text(set, text, path))
        })
        .collect()
}

/// Decodes a file and splits a batch into its messages.
pub fn messages(raw: &[u8], path: &Path) -> Vec<String> {
    let text =
        hl7::decode(raw).unwrap_or_else(|e| panic!("{}: cannot decode: {e}", path.display()));
    let messages: Vec<String> = hl7::split_batch(&text)
        .unwrap_or_else(|e| panic!("{}: cannot split: {e}", path.display()))
        .into_iter()
        .map(|m| m.to_string())
        .collect();
    assert!(!messages.is_empty(), "{}: no message", path.display());
    messages
}

/// Parses one message and applies the mapping selected for its type and trigger.
pub fn map_text(set: &MappingSet, text: &str, path: &Path) -> MapOutput {
    let message = hl7::Message::parse(text)
        .unwrap_or_else(|e| panic!("{}: does not parse: {e}", path.display()));
    let header = message
        .header()
        .unwrap_or_else(|e| panic!("{}: bad header: {e}", path.display()));
    let plan = set
        .select(&header.message_code, &header.trigger_event)
        .unwrap_or_else(|| {
            panic!(
                "{}: no mapping for {}^{}",
                path.display(),
                header.message_code,
                header.trigger_event
            )
        });
    plan.apply(&message)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The document exactly as `junction map` prints it.
pub fn pretty(document: &Value) -> String {
    serde_json::to_string_pretty(document).expect("a serde_json::Value always serializes")
}

/// The resources of a Bundle of one type.
pub fn resources<'d>(document: &'d Value, resource_type: &str) -> Vec<&'d Value> {
    document["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|entry| &entry["resource"])
                .filter(|resource| resource["resourceType"] == resource_type)
                .collect()
        })
        .unwrap_or_default()
}

/// NHS Data Dictionary modulus 11: weights 10..2 over the first nine digits.
pub fn nhs_number_valid(number: &str) -> bool {
    let digits: Vec<u32> = number.chars().filter_map(|c| c.to_digit(10)).collect();
    if digits.len() != 10 || number.len() != 10 {
        return false;
    }
    let sum: u32 = digits[..9]
        .iter()
        .zip((2..=10).rev())
        .map(|(d, w)| d * w)
        .sum();
    let check = match 11 - sum % 11 {
        11 => 0,
        10 => return false,
        c => c,
    };
    check == digits[9]
}

/// Paths of empty strings, objects and arrays in a document (pruning must leave none).
pub fn empty_elements(value: &Value, at: &str, found: &mut Vec<String>) {
    match value {
        Value::String(s) if s.trim().is_empty() => found.push(at.to_string()),
        Value::Object(map) => {
            if map.is_empty() {
                found.push(at.to_string());
            }
            for (key, item) in map {
                empty_elements(item, &format!("{at}.{key}"), found);
            }
        }
        Value::Array(items) => {
            if items.is_empty() {
                found.push(at.to_string());
            }
            for (i, item) in items.iter().enumerate() {
                empty_elements(item, &format!("{at}[{i}]"), found);
            }
        }
        _ => {}
    }
}
