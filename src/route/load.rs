//! Reading route files from a folder: the only I/O of the route module.
//! Compiling stays pure ([`super::parse::compile`]).

use std::path::{Path, PathBuf};

use super::{RouteError, RouteSet};

/// Loads every `*.toml` in `dir`, sorted by file name; all problems of all files
/// are returned together.
pub(crate) fn load_dir(dir: &Path) -> Result<RouteSet, Vec<RouteError>> {
    let (set, errors) = load_dir_partial(dir);
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

/// The routes that compiled, and every problem (unreadable files included).
pub(crate) fn load_dir_partial(dir: &Path) -> (RouteSet, Vec<RouteError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            let error = RouteError::whole_file(dir, format!("cannot read route folder: {e}"));
            return (RouteSet::default(), vec![error]);
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    paths.sort();
    let mut errors = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        match std::fs::read(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => files.push((path, text)),
                Err(e) => {
                    let valid = e.utf8_error().valid_up_to();
                    let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
                    errors.push(RouteError::at(
                        &path,
                        &std::sync::Arc::from(lossy.as_str()),
                        valid..valid + 1,
                        "invalid UTF-8 in route file (TOML files must be UTF-8)".to_string(),
                    ));
                }
            },
            Err(e) => errors.push(RouteError::whole_file(
                &path,
                format!("cannot read route file: {e}"),
            )),
        }
    }
    let (set, mut more) = super::parse::compile_partial(&files);
    errors.append(&mut more);
    (set, errors)
}

/// Runs one test case: the destinations reached, sorted and without duplicates.
pub(crate) fn run_test(
    routes: &RouteSet,
    mappings: &crate::mapping::MappingSet,
    test: &super::RouteTest,
) -> Result<Vec<String>, String> {
    let bytes = std::fs::read(&test.message)
        .map_err(|e| format!("cannot read {}: {e}", test.message.display()))?;
    // A source may deliver documents (JSON Bundles, e.g. a MESH inbox) rather than HL7.
    if let super::TestOrigin::Source(source) = &test.origin {
        if bytes.trim_ascii_start().starts_with(b"{") {
            return run_document_test(routes, test, source, &bytes);
        }
    }
    let text = crate::hl7::decode(&bytes)
        .map_err(|e| format!("cannot decode {}: {e}", test.message.display()))?;
    let message = crate::hl7::Message::parse(&text)
        .map_err(|e| format!("cannot parse {}: {e}", test.message.display()))?;
    let header = message
        .header()
        .map_err(|e| format!("cannot read the header of {}: {e}", test.message.display()))?;
    let input = super::RouteInput::from_header(&header, test.origin.as_origin());
    let selection = routes.select(&input);
    let mut got = Vec::new();
    for group in selection.groups() {
        if group.is_passthrough() {
            return Err(format!(
                "{} is an HL7 message, but routes `{}` pass documents through without a mapping, expected a route with a `mapping`",
                test.message.display(),
                group.routes().map(|r| r.id()).collect::<Vec<_>>().join("`, `")
            ));
        }
        let plan = mappings
            .get(group.mapping())
            .ok_or_else(|| format!("mapping `{}` not found in mappings/", group.mapping()))?;
        let output = plan.apply(&message).map_err(|e| e.to_string())?;
        got.extend(
            group
                .destinations_for_text(&output.document)
                .into_iter()
                .map(|d| d.id),
        );
    }
    got.sort();
    got.dedup();
    Ok(got)
}

/// A test of a document (a JSON FHIR Bundle) arriving through `source`: routed
/// by its `message_type`; only passthrough routes can take it.
fn run_document_test(
    routes: &RouteSet,
    test: &super::RouteTest,
    source: &str,
    bytes: &[u8],
) -> Result<Vec<String>, String> {
    let document: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "{} is not a JSON document (a source delivers FHIR Bundles): {e}",
            test.message.display()
        )
    })?;
    if document.get("resourceType").and_then(|t| t.as_str()) != Some("Bundle") {
        return Err(format!(
            "{} is not a FHIR Bundle, expected `\"resourceType\": \"Bundle\"`",
            test.message.display()
        ));
    }
    let message_type = test.message_type.as_deref().ok_or_else(|| {
        "a document test needs `message_type`, expected e.g. `message_type = \"MESH^TEST_WORKFLOW\"`"
            .to_string()
    })?;
    let input = super::RouteInput::for_document(
        super::Origin::Source(source),
        message_type,
        test.sender.as_deref().unwrap_or(""),
    );
    let selection = routes.select(&input);
    let mut got = Vec::new();
    for group in selection.groups() {
        if !group.is_passthrough() {
            return Err(format!(
                "routes `{}` would map the document with `{}`, but mappings read HL7 messages, expected passthrough routes (no `mapping`) for documents from sources",
                group.routes().map(|r| r.id()).collect::<Vec<_>>().join("`, `"),
                group.mapping()
            ));
        }
        got.extend(group.destinations_for(&document).into_iter().map(|d| d.id));
    }
    got.sort();
    got.dedup();
    Ok(got)
}
