//! `junction map`: a dry run of the mapping step for one message file.
//!
//! Prints the document (the FHIR transaction Bundle) as pretty JSON on stdout, and on
//! stderr which mapping made it and why, the destinations the routes would send it
//! to, its warnings and the fields of the message that no rule read
//! (`unread: ZPI-1, PV2-3`), so a mapping author sees what is being dropped.
//!
//! The mapping is the one named by `--mapping`; else the one(s) the routes in
//! `--routes-dir` pick for the message (one document per distinct mapping, as the
//! engine would make); else, when there are no routes or none matches, the mapping
//! declared for the message type and trigger. A batch file (FHS/BHS) maps every
//! message in it. Stdout is always one JSON value: the document, or, when there
//! are several (a batch, even of one document mapped; routes that pick two
//! mappings), a JSON array of them in the order stderr reports them.
//!
//! A message a listener would refuse (intake's header and patient checks:
//! an AR or AE) is still mapped, with a note saying so.
//!
//! What it does not do: it journals and delivers nothing, and it logs nothing (the
//! output names patient data, and it is for the person running the command).
//!
//! Exit codes: 0 every message mapped; 1 a message did not parse or no mapping
//! applies to it; 2 the mappings, routes or file could not be read.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::hl7;
use crate::mapping::{MapOutput, MappingSet, Plan};
use crate::route::{DestinationRef, Origin, RouteInput, RouteSet};

#[derive(Debug, clap::Args)]
pub struct MapArgs {
    /// Use the mapping with this name instead of the one chosen by message type.
    #[arg(long, value_name = "NAME")]
    pub mapping: Option<String>,
    /// The folder of mapping files (*.toml).
    #[arg(long, value_name = "DIR", default_value = "mappings")]
    pub mappings_dir: PathBuf,
    /// The folder of route files (*.toml): without --mapping, the message is mapped
    /// by the mapping(s) these routes pick. Without the folder, by message type.
    #[arg(long, value_name = "DIR", default_value = "routes")]
    pub routes_dir: PathBuf,
    /// The HL7 v2 message file (a single message or an FHS/BHS batch); `-` reads stdin.
    #[arg(value_name = "MESSAGE")]
    pub message: PathBuf,
}

pub fn run(args: MapArgs) -> anyhow::Result<ExitCode> {
    let set = match load_mappings(&args.mappings_dir) {
        Ok(set) => set,
        Err(code) => return Ok(code),
    };
    // Routes only choose the mapping: with --mapping they are not read at all.
    let routes = if args.mapping.is_some() {
        None
    } else {
        match load_routes(&args.routes_dir) {
            Ok(routes) => routes,
            Err(code) => return Ok(code),
        }
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
    // a batch by its header (FHS or BHS), or by holding several messages
    let batch = messages.len() > 1 || is_batch_file(&raw);
    let mut failed = false;
    let mut documents = Vec::new();
    for (index, text) in messages.iter().enumerate() {
        let label = if batch {
            format!("{file} (message {} of {})", index + 1, messages.len())
        } else {
            file.clone()
        };
        match map_message(&set, routes.as_ref(), args.mapping.as_deref(), text) {
            Ok(mapped) => {
                // a dry run says when a listener would refuse the message
                // (it would then never reach a mapping)
                if let Some(refusal) = intake_refusal(text) {
                    eprintln!("note: {label}: a listener would not accept it: {refusal}");
                }
                for mapped in mapped {
                    report(&label, &mapped);
                    documents.push(mapped.output.value());
                }
            }
            Err(problem) => {
                eprintln!("error: {label}: {problem}");
                failed = true;
            }
        }
    }
    // stdout is always one JSON value: the document, or several (a batch, or
    // routes that pick two mappings) as an array in the order reported above
    // (a batch is always an array, whatever of it could be mapped, so a
    // script reads the same shape)
    let json = match documents.len() {
        0 if batch => Some(Ok("[]".to_string())),
        0 => None,
        1 if !batch => Some(serde_json::to_string_pretty(&documents[0])),
        n => {
            let noun = if n == 1 { "document" } else { "documents" };
            eprintln!("{n} {noun}: printed as a JSON array, in the order above");
            Some(serde_json::to_string_pretty(&documents))
        }
    };
    if let Some(json) = json {
        let json = json.context("cannot render the document as JSON")?;
        match writeln!(std::io::stdout().lock(), "{json}") {
            Ok(()) => {}
            // `junction map x | head`: the reader has gone, nothing more to say.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => return Err(e).context("cannot write the document to stdout"),
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// What a listener would answer a message it refuses (its code and ERR
/// text), by the checks intake makes before it accepts one; `None` when it
/// would take it.
fn intake_refusal(text: &str) -> Option<String> {
    // (MSH-11 is not asked: which processing ids a listener takes is its config's)
    let refused = hl7::check_intake(text.as_bytes(), None).err()?;
    Some(format!(
        "{} {} {}",
        refused.code.as_str(),
        refused.error.code,
        refused.error.text
    ))
}

/// Whether `raw` opens with a batch header (FHS or BHS), after a byte order
/// mark or blanks.
fn is_batch_file(raw: &[u8]) -> bool {
    let text = raw
        .strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(raw)
        .trim_ascii_start();
    text.starts_with(b"FHS") || text.starts_with(b"BHS")
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

/// Loads the route folder if there is one (`Ok(None)` when it does not exist),
/// printing every problem; `Err` carries the exit code.
pub(crate) fn load_routes(dir: &Path) -> Result<Option<RouteSet>, ExitCode> {
    if !dir.is_dir() {
        return Ok(None);
    }
    match RouteSet::load_dir(dir) {
        Ok(routes) => Ok(Some(routes)),
        Err(errors) => {
            for e in &errors {
                eprintln!(
                    "error: {}:{}:{}: {}",
                    e.file.display(),
                    e.line,
                    e.col,
                    e.message
                );
            }
            eprintln!(
                "error: {} problem(s) in the routes under {}",
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
    // split on the bytes first, as the listener does: each message of a batch
    // is decoded by its own MSH-18
    if let Some(parts) = hl7::split_batch_bytes(&bytes::Bytes::copy_from_slice(raw)) {
        if parts.is_empty() {
            return Err("the file holds no message (no MSH segment)".to_string());
        }
        let many = parts.len() > 1;
        return parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                hl7::decode(part).map_err(|e| {
                    if many {
                        format!(
                            "message {} of {}: cannot decode it: {e}",
                            i + 1,
                            parts.len()
                        )
                    } else {
                        format!("cannot decode the message: {e}")
                    }
                })
            })
            .collect();
    }
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

/// One document of a message, with how it was chosen and where it would go.
pub(crate) struct Mapped {
    /// The mapping that made it.
    pub plan: String,
    /// Why that mapping: the routes that chose it, `--mapping`, or the message type.
    pub chosen_by: String,
    /// The destinations the routes would send it to (`None` when no route chose it).
    pub destinations: Option<Vec<DestinationRef>>,
    pub output: MapOutput,
}

/// Parses one message and maps it: with the named mapping; else once per mapping
/// that the routes pick; else (no routes, or none matches) with the mapping
/// declared for its message type and trigger.
pub(crate) fn map_message(
    set: &MappingSet,
    routes: Option<&RouteSet>,
    mapping: Option<&str>,
    text: &str,
) -> Result<Vec<Mapped>, String> {
    let message =
        hl7::Message::parse(text).map_err(|e| format!("the message does not parse: {e}"))?;
    let header = message
        .header()
        .map_err(|e| format!("the message header is unusable: {e}"))?;
    let apply = |plan: &Plan| plan.apply(&message).map_err(|e| e.to_string());

    if let Some(name) = mapping {
        let plan = set.get(name).ok_or_else(|| {
            format!(
                "no mapping named `{name}` (found: {})",
                names(set).unwrap_or_else(|| "none".to_string())
            )
        })?;
        let kind = format!("{}^{}", header.message_code, header.trigger_event);
        let declared = plan
            .messages()
            .iter()
            .any(|m| *m == kind || *m == format!("{}^*", header.message_code) || m == "*^*");
        return Ok(vec![Mapped {
            plan: plan.name().to_string(),
            chosen_by: if declared {
                "--mapping".to_string()
            } else {
                format!(
                    "--mapping (note: `{}` does not declare {kind} in its `messages`, so no route could send it this message)",
                    plan.name()
                )
            },
            destinations: None,
            output: apply(plan)?,
        }]);
    }
    // as the listener sees it: blank or HL7's null `""` is empty (it answers AR)
    if hl7::is_absent(&header.message_code) {
        return Err(
            "MSH-9 (message type) is empty, so no mapping can be chosen; name one with --mapping"
                .to_string(),
        );
    }
    let kind = format!("{}^{}", header.message_code, header.trigger_event);
    let mut unrouted_note = String::new();
    if let Some(routes) = routes {
        // The origin (listener or source) is not known in a dry run, so routes'
        // `listeners`/`sources` criteria are not applied.
        let selection = routes.select(&RouteInput::from_header(&header, Origin::Unknown));
        if !selection.is_unrouted() {
            let mut documents = Vec::new();
            for group in selection.groups() {
                let route_ids: Vec<&str> = group.routes().map(|r| r.id()).collect();
                let plan = set.get(group.mapping()).ok_or_else(|| {
                    format!(
                        "route `{}` names mapping `{}`, which is not in the mappings folder",
                        route_ids.join("`, `"),
                        group.mapping()
                    )
                })?;
                let output = apply(plan)?;
                documents.push(Mapped {
                    plan: plan.name().to_string(),
                    chosen_by: format!(
                        "{} {}",
                        if route_ids.len() == 1 {
                            "route"
                        } else {
                            "routes"
                        },
                        route_ids.join(", ")
                    ),
                    destinations: Some(group.destinations_for_text(&output.document)),
                    output,
                });
            }
            return Ok(documents);
        }
        unrouted_note = "no route matches (the engine would keep it as unrouted); ".to_string();
    }
    let plan = set
        .select(&header.message_code, &header.trigger_event)
        .ok_or_else(|| {
            format!(
                "{unrouted_note}no mapping applies to {kind} (mappings cover: {}); \
             name one with --mapping",
                covered(set).unwrap_or_else(|| "nothing".to_string())
            )
        })?;
    Ok(vec![Mapped {
        plan: plan.name().to_string(),
        chosen_by: format!("{unrouted_note}the mapping declared for {kind}"),
        destinations: None,
        output: apply(plan)?,
    }])
}

fn names(set: &MappingSet) -> Option<String> {
    let names: Vec<&str> = set.plans().map(Plan::name).collect();
    (!names.is_empty()).then(|| names.join(", "))
}

fn covered(set: &MappingSet) -> Option<String> {
    let mut types: Vec<String> = Vec::new();
    for t in set.plans().flat_map(Plan::messages) {
        if !types.contains(&t) {
            types.push(t);
        }
    }
    (!types.is_empty()).then(|| types.join(", "))
}

/// How the document was made, where it would go, its warnings and the unread
/// fields, on stderr.
fn report(label: &str, mapped: &Mapped) {
    eprintln!(
        "{label}: mapped with `{}` ({})",
        mapped.plan, mapped.chosen_by
    );
    if let Some(destinations) = &mapped.destinations {
        if destinations.is_empty() {
            eprintln!("destinations: none (no route's condition holds: unrouted)");
        } else {
            let list: Vec<String> = destinations
                .iter()
                .map(|d| format!("{} (route {})", d.id, d.routes.join(", ")))
                .collect();
            eprintln!("destinations: {}", list.join(", "));
        }
    }
    for warning in &mapped.output.warnings {
        eprintln!("warning: {warning}");
    }
    if mapped.output.unread.is_empty() {
        eprintln!("unread: none");
    } else {
        eprintln!("unread: {}", mapped.output.unread.join(", "));
    }
}
