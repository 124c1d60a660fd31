//! `junction test`: runs the `[[test]]` cases declared in mapping and route files.
//!
//! A mapping case names a message file and JSON fragments; it passes when the
//! message maps (through the mapping that declares the case) and every fragment is
//! contained in the document ([`crate::mapping::contains_fragment`]). A route case
//! names a message file and the destinations it must reach through the routes and
//! mappings ([`crate::route::run_tests`]). One line per case (`ok   adt  a01
//! admission`, or `FAIL …` with the first missing fragment or the destinations
//! reached), then exactly `N passed, N failed`.
//!
//! Exit codes: 0 every case passed; 1 a case failed; 2 the mappings or routes could
//! not be loaded.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::mapping::{self, Plan, TestCase};

use crate::route;

use super::map::{decode_messages, load_mappings, load_routes};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The folder of mapping files (*.toml).
    #[arg(long, value_name = "DIR", default_value = "mappings")]
    pub mappings_dir: PathBuf,
    /// The folder of route files (*.toml); skipped when it does not exist.
    #[arg(long, value_name = "DIR", default_value = "routes")]
    pub routes_dir: PathBuf,
}

pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let set = match load_mappings(&args.mappings_dir) {
        Ok(set) => set,
        Err(code) => return Ok(code),
    };
    let routes = match load_routes(&args.routes_dir) {
        Ok(routes) => routes,
        Err(code) => return Ok(code),
    };

    // (who declared the case, case name, outcome)
    let mut results: Vec<(String, String, Result<(), String>)> = Vec::new();
    for plan in set.plans() {
        for case in plan.tests() {
            results.push((
                plan.name().to_string(),
                case.name.clone(),
                run_case(plan, case),
            ));
        }
    }
    if let Some(routes) = &routes {
        for outcome in route::run_tests(routes, &set) {
            let file = outcome
                .file
                .file_name()
                .map(|f| format!("routes/{}", f.to_string_lossy()))
                .unwrap_or_else(|| outcome.file.display().to_string());
            let result = match &outcome.got {
                _ if outcome.passed() => Ok(()),
                Ok(got) => Err(format!(
                    "expected {}, reached {}",
                    destinations(&outcome.expected),
                    destinations(got)
                )),
                Err(e) => Err(e.clone()),
            };
            results.push((file, outcome.name.clone(), result));
        }
    }

    let width = results
        .iter()
        .map(|(who, _, _)| who.len())
        .max()
        .unwrap_or(0);
    let (mut passed, mut failed) = (0usize, 0usize);
    for (who, name, result) in &results {
        match result {
            Ok(()) => {
                passed += 1;
                println!("ok   {who:width$} {name}");
            }
            Err(why) => {
                failed += 1;
                println!("FAIL {who:width$} {name}: {why}");
            }
        }
    }
    if results.is_empty() {
        eprintln!(
            "note: no [[test]] cases in the mappings under {} or the routes under {}",
            args.mappings_dir.display(),
            args.routes_dir.display()
        );
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Maps the case's message with `plan` and checks every fragment. A batch file's
/// documents are searched together: a fragment passes if any of them contains it.
fn run_case(plan: &Plan, case: &TestCase) -> Result<(), String> {
    let raw = std::fs::read(&case.message)
        .map_err(|e| format!("cannot read {}: {e}", case.message.display()))?;
    let messages = decode_messages(&raw).map_err(|e| format!("{}: {e}", case.message.display()))?;
    let mut documents = Vec::with_capacity(messages.len());
    for text in &messages {
        let document = apply(plan, text).map_err(|e| format!("{}: {e}", case.message.display()))?;
        documents.push(document);
    }
    if case.expect.is_empty() {
        return Err("the case expects nothing (add `expect` fragments)".to_string());
    }
    for fragment in &case.expect {
        if !documents
            .iter()
            .any(|doc| mapping::contains_fragment(doc, fragment))
        {
            return Err(format!("missing {fragment}"));
        }
    }
    Ok(())
}

/// Parses a message and applies exactly `plan`, whatever the message's type: a test
/// case is run by the mapping that declares it, not by selection.
fn apply(plan: &Plan, text: &str) -> Result<serde_json::Value, String> {
    let message =
        crate::hl7::Message::parse(text).map_err(|e| format!("the message does not parse: {e}"))?;
    plan.apply(&message)
        .map(|output| output.value())
        .map_err(|e| e.to_string())
}

/// `store`, `mesh_hwe` or "nothing (unrouted)".
fn destinations(list: &[String]) -> String {
    if list.is_empty() {
        "nothing (unrouted)".to_string()
    } else {
        list.iter()
            .map(|d| format!("`{d}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
