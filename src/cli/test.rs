//! `junction test`: runs the `[[test]]` cases declared in mapping files.
//!
//! Each case names a message file and JSON fragments; the case passes when the
//! message maps (through the mapping that declares the case) and every fragment is
//! contained in the document ([`crate::mapping::contains_fragment`]). One line per
//! case (`ok   adt  a01 admission`, or `FAIL …` with the first missing fragment),
//! then exactly `N passed, N failed`.
//!
//! What it does not do: route test cases (`routes/*.toml`) are not run yet; they will
//! join here once routes exist.
//!
//! Exit codes: 0 every case passed; 1 a case failed; 2 the mappings could not be loaded.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::mapping::{self, Plan, TestCase};

use super::map::{decode_messages, load_mappings};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The folder of mapping files (*.toml).
    #[arg(long, value_name = "DIR", default_value = "mappings")]
    pub mappings_dir: PathBuf,
}

pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let set = match load_mappings(&args.mappings_dir) {
        Ok(set) => set,
        Err(code) => return Ok(code),
    };
    let width = set.plans().map(|p| p.name().len()).max().unwrap_or(0);
    let (mut passed, mut failed) = (0usize, 0usize);
    for plan in set.plans() {
        for case in plan.tests() {
            match run_case(plan, case) {
                Ok(()) => {
                    passed += 1;
                    println!("ok   {:width$} {}", plan.name(), case.name);
                }
                Err(why) => {
                    failed += 1;
                    println!("FAIL {:width$} {}: {why}", plan.name(), case.name);
                }
            }
        }
    }
    if passed + failed == 0 {
        eprintln!(
            "note: no [[test]] cases in the mappings under {}",
            args.mappings_dir.display()
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
        .map(|output| output.document)
        .map_err(|e| e.to_string())
}
