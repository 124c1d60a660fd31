//! `junction map`: a dry run of one mapping over one message file.
//!
//! Prints the document (the FHIR transaction Bundle) as pretty JSON on stdout, and on
//! stderr the mapping used, its warnings and the fields of the message that no rule
//! read (`unread: ZPI-1, PV2-3`), so a mapping author sees what is being dropped.
//! A batch file (FHS/BHS) maps every message in it, one Bundle after another.
//!
//! What it does not do: it journals, routes and delivers nothing, and it logs nothing
//! (the output names patient data, and it is for the person running the command).
//!
//! Exit codes: 0 every message mapped; 1 a message did not parse or no mapping
//! applies to it; 2 the mappings or the file could not be read.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::hl7;
use crate::mapping::{MapOutput, MappingSet, Plan};

#[derive(Debug, clap::Args)]
pub struct MapArgs {
    /// Use the mapping with this name instead of the one chosen by message type.
    #[arg(long, value_name = "NAME")]
    pub mapping: Option<String>,
    /// The folder of mapping files (*.toml).
    #[arg(long, value_name = "DIR", default_value = "mappings")]
    pub mappings_dir: PathBuf,
    /// The HL7 v2 message file (a single message or an FHS/BHS batch); `-` reads stdin.
    #[arg(value_name = "MESSAGE")]
    pub message: PathBuf,
}

pub fn run(args: MapArgs) -> anyhow::Result<ExitCode> {
    let set = match load_mappings(&args.mappings_dir) {
        Ok(set) => set,
        Err(code) => return Ok(code),
    };
    let (raw, file) = if args.message.as_os_str() == "-" {
        let mut raw = Vec::new();
        std::io::stdin()
            .read_to_end(&mut raw)
            .context("cannot read the message from stdin")?;
        (raw, "<stdin>".to_string())
    } else {
        let raw = std::fs::read(&args.message)
            .with_context(|| format!("cannot read {}", args.message.display()))?;
        (raw, args.message.display().to_string())
    };

    let messages = match decode_messages(&raw) {
        Ok(messages) => messages,
        Err(problem) => {
            eprintln!("error: {file}: {problem}");
            return Ok(ExitCode::from(1));
        }
    };
    let batch = messages.len() > 1;
    let mut failed = false;
    for (index, text) in messages.iter().enumerate() {
        let label = if batch {
            format!("{file} (message {} of {})", index + 1, messages.len())
        } else {
            file.clone()
        };
        match map_one(&set, args.mapping.as_deref(), text) {
            Ok((plan_name, output)) => {
                let json = serde_json::to_string_pretty(&output.document)
                    .context("cannot render the document as JSON")?;
                println!("{json}");
                report(&label, &plan_name, &output);
            }
            Err(problem) => {
                eprintln!("error: {label}: {problem}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Loads the mapping folder, printing every problem; `Err` carries the exit code.
pub(crate) fn load_mappings(dir: &Path) -> Result<MappingSet, ExitCode> {
    match MappingSet::load_dir(dir) {
        Ok(set) => Ok(set),
        Err(errors) => {
            for error in &errors {
                eprintln!("error: {error}");
            }
            eprintln!(
                "error: {} problem(s) in the mappings under {}",
                errors.len(),
                dir.display()
            );
            Err(ExitCode::from(2))
        }
    }
}

/// Decodes a file's bytes (MSH-18 charset) and splits an FHS/BHS batch into its
/// messages; a plain file gives one message.
pub(crate) fn decode_messages(raw: &[u8]) -> Result<Vec<String>, String> {
    let text = hl7::decode(raw).map_err(|e| format!("cannot decode the message: {e}"))?;
    let messages: Vec<String> = hl7::split_batch(&text)
        .map_err(|e| format!("not an HL7 message or batch: {e}"))?
        .into_iter()
        .map(|m| m.to_string())
        .collect();
    if messages.is_empty() {
        return Err("the file holds no message (no MSH segment)".to_string());
    }
    Ok(messages)
}

/// Parses one message, picks its plan and applies it. Returns the plan's name.
pub(crate) fn map_one(
    set: &MappingSet,
    mapping: Option<&str>,
    text: &str,
) -> Result<(String, MapOutput), String> {
    let message =
        hl7::Message::parse(text).map_err(|e| format!("the message does not parse: {e}"))?;
    let header = message
        .header()
        .map_err(|e| format!("the message header is unusable: {e}"))?;
    let plan = pick_plan(set, mapping, &header.message_code, &header.trigger_event)?;
    let output = plan.apply(&message).map_err(|e| e.to_string())?;
    Ok((plan.name().to_string(), output))
}

/// The plan named on the command line, or the one for this message type and trigger.
fn pick_plan<'s>(
    set: &'s MappingSet,
    mapping: Option<&str>,
    message_code: &str,
    trigger: &str,
) -> Result<&'s Plan, String> {
    if let Some(name) = mapping {
        return set.get(name).ok_or_else(|| {
            format!(
                "no mapping named `{name}` (found: {})",
                names(set).unwrap_or_else(|| "none".to_string())
            )
        });
    }
    if message_code.trim().is_empty() {
        return Err(
            "MSH-9 (message type) is empty, so no mapping can be chosen; name one with --mapping"
                .to_string(),
        );
    }
    // Extension point: once routes exist, `map` must pick the mapping that the
    // default config's routes would pick for this message (source, type, facility,
    // content). Until then the shipped mapping for the type and trigger is used.
    set.select(message_code, trigger).ok_or_else(|| {
        format!(
            "no mapping applies to {message_code}^{trigger} (mappings cover: {}); \
             name one with --mapping",
            covered(set).unwrap_or_else(|| "nothing".to_string())
        )
    })
}

fn names(set: &MappingSet) -> Option<String> {
    let names: Vec<&str> = set.plans().map(Plan::name).collect();
    (!names.is_empty()).then(|| names.join(", "))
}

fn covered(set: &MappingSet) -> Option<String> {
    let types: Vec<String> = set.plans().flat_map(Plan::messages).collect();
    (!types.is_empty()).then(|| types.join(", "))
}

/// Warnings and unread fields on stderr.
fn report(label: &str, plan: &str, output: &MapOutput) {
    eprintln!("{label}: mapped with `{plan}`");
    for warning in &output.warnings {
        eprintln!("warning: {warning}");
    }
    if output.unread.is_empty() {
        eprintln!("unread: none");
    } else {
        eprintln!("unread: {}", output.unread.join(", "));
    }
}
