//! Tracing setup and Prometheus metrics.
//!
//! [`init`] installs the global tracing subscriber: readable text on stderr by
//! default, one JSON object per line with `[log] format = "json"`. The filter
//! comes from `RUST_LOG` when set, else `[log] level`, else `info`.
//!
//! This module does not decide what is logged; callers never log patient data
//! (only control id, message type, sender, sizes, route and outcome).

pub mod events;
pub mod metrics;

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// `[log]`: how the engine logs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default, readable) or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `junction=debug`; `RUST_LOG` overrides it.
    #[serde(default)]
    pub level: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

word_enum!(LogFormat { "text" => LogFormat::Text, "json" => LogFormat::Json });

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter `{filter}` (from {origin}): {reason}")]
    BadFilter {
        filter: String,
        origin: &'static str,
        reason: String,
    },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Parses a tracing filter directive string (`info`, `junction=debug,warn`).
pub fn parse_filter(filter: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder()
        .parse(filter)
        .map_err(|err| err.to_string())
}

/// The crate's modules, the targets of its log lines after `junction::`
/// (kept in step with `src/` by the test `the_log_targets_are_the_modules`;
/// test-only modules, `tests` and `testing`, are left out).
const MODULES: &[&str] = &[
    "access",
    "access::http",
    "access::layer",
    "access::objections",
    "access::tokens",
    "api",
    "api::dashboard",
    "api::delivery",
    "api::events",
    "api::fhir",
    "api::fhir_search",
    "cli",
    "cli::api_client",
    "cli::check",
    "cli::dead_letters",
    "cli::load",
    "cli::map",
    "cli::messages",
    "cli::objections",
    "cli::parse",
    "cli::queues",
    "cli::records",
    "cli::replay",
    "cli::retry",
    "cli::send",
    "cli::serve",
    "cli::tail",
    "cli::test",
    "cli::token",
    "config",
    "config::diagnostic",
    "db",
    "delivery",
    "delivery::background",
    "delivery::build",
    "delivery::fhir",
    "delivery::file",
    "delivery::mesh",
    "delivery::mllp",
    "delivery::pipeline",
    "delivery::queue",
    "delivery::scheduler",
    "delivery::store",
    "engine",
    "fhir_types",
    "hl7",
    "hl7::ack",
    "hl7::batch",
    "hl7::charset",
    "hl7::error",
    "hl7::escape",
    "hl7::message",
    "hl7::path",
    "hl7::scan",
    "hl7::tree",
    "journal",
    "journal::queue",
    "journal::sqlite",
    "mapping",
    "mapping::compile",
    "mapping::datatypes",
    "mapping::eval",
    "mapping::expr",
    "mapping::fhir_elements",
    "mapping::json",
    "mapping::load",
    "mapping::transform",
    "mesh",
    "mesh::auth",
    "mesh::client",
    "mesh::config",
    "mesh::payload",
    "mllp",
    "mllp::client",
    "mllp::codec",
    "mllp::listener",
    "mllp::tls",
    "route",
    "route::condition",
    "route::document",
    "route::load",
    "route::parse",
    "source",
    "source::mesh_inbox",
    "store",
    "store::access",
    "store::apply",
    "store::plan",
    "store::postgres",
    "store::sqlite",
    "telemetry",
    "telemetry::events",
    "telemetry::metrics",
];

/// The target a filter directive names (`junction::mllp` of
/// `junction::mllp=debug`), empty for a bare level.
fn target_of(directive: &str) -> &str {
    directive.split(['=', '[']).next().unwrap_or_default()
}

/// Why `target` (`junction::` and `module`, which is none of [`MODULES`])
/// matches no line: with the parts of the deepest module it does name
/// (`store::nope`: those of `store`), else the top ones.
fn no_such_module(target: &str, module: &str) -> String {
    let mut parent = Some(module);
    while let Some(p) = parent {
        parent = p.rsplit_once("::").map(|(head, _)| head);
        if parent.is_some_and(|head| MODULES.contains(&head)) {
            break;
        }
    }
    let parts: Vec<String> = MODULES
        .iter()
        .filter_map(|m| match parent {
            Some(head) => m.strip_prefix(head)?.strip_prefix("::").map(|p| (p, *m)),
            None => Some((*m, *m)),
        })
        .filter(|(part, _)| !part.contains("::"))
        .map(|(_, m)| m.to_string())
        .collect();
    match parent {
        Some(head) if parts.is_empty() => format!(
            "`{target}` names no part of the engine, so it would match no line; `junction::{head}` has no parts of its own"
        ),
        _ => format!(
            "`{target}` names no part of the engine, so it would match no line; its parts: {}",
            parts.join(", ")
        ),
    }
}

/// Parses `[log] level`: a tracing filter as [`parse_filter`] takes it, but
/// every directive without `=` must be a level (`trace`, `debug`, `info`,
/// `warn`, `error`, `off`). A bare word is a target to tracing (`warning`
/// would show that target's lines alone, so the engine logged nothing at
/// all); a target is written with its level (`junction=debug`).
pub fn parse_level(level: &str) -> Result<EnvFilter, String> {
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
    // (white space around a directive and its `=` dropped: tracing takes none)
    let directives: Vec<String> = level
        .split(',')
        .map(|d| d.split('=').map(str::trim).collect::<Vec<_>>().join("="))
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return Err("it is empty (leave the key out for `info`)".into());
    }
    for directive in &directives {
        // a target inside the engine names one of its modules (`junction::mlp`
        // would match no line, and say nothing of it)
        let target = target_of(directive);
        // (a module path has its colons in pairs: `junction:mlp` is a typo)
        if target.replace("::", "").contains(':') {
            return Err(format!(
                "`{target}` is no target: a module path is written with `::`, as in `junction::mllp`"
            ));
        }
        if let Some(module) = target.strip_prefix("junction::") {
            if !MODULES.contains(&module) {
                return Err(no_such_module(target, module));
            }
        }
        let directive = directive.as_str();
        if directive.ends_with('=') {
            return Err(format!(
                "`{directive}` gives no level after `=`, as in `junction::mllp=debug`"
            ));
        }
        if !directive.contains('=')
            && !directive.contains('[')
            && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive))
        {
            return Err(format!(
                "`{directive}` is not a level (trace, debug, info, warn, error, off); a target takes one after `=`, as in `junction=debug`"
            ));
        }
    }
    // with no level for every target, one must be given for the engine's own
    // lines (`juncton=debug` alone would switch them all off)
    let bare = directives
        .iter()
        .any(|d| !d.contains('=') && !d.contains('['));
    let own = directives.iter().any(|d| {
        let target = target_of(d);
        target == "junction" || target.starts_with("junction::")
    });
    if !bare && !own {
        return Err(
            "it gives no level for `junction`'s own lines, so the engine would log nothing; add one, as in `info,hyper=debug`"
                .into(),
        );
    }
    // (the directives as read, white space around them dropped: tracing
    // takes none)
    parse_filter(&directives.join(","))
}

/// The filter to use: `RUST_LOG` (when set and not empty), else `level`, else `info`.
fn choose_filter(
    rust_log: Option<String>,
    level: Option<&str>,
) -> Result<EnvFilter, TelemetryError> {
    let (filter, origin) = match (rust_log, level) {
        (Some(env), _) if !env.trim().is_empty() => (env, "RUST_LOG"),
        (_, Some(level)) => (level.to_string(), "[log] level"),
        _ => ("info".to_string(), "the default"),
    };
    let parsed = match origin {
        "[log] level" => parse_level(&filter),
        _ => parse_filter(&filter),
    };
    parsed.map_err(|reason| TelemetryError::BadFilter {
        filter,
        origin,
        reason,
    })
}

/// Installs the global tracing subscriber described by `cfg`, writing to stderr
/// as plain text (or JSON): no colour codes, and a sender's control characters
/// (a control id or an application name can hold an ESC) written escaped
/// (`\x1b`), so a line a sender chose cannot recolour, hide or rewrite what an
/// operator's terminal shows, nor set its title.
pub fn init(cfg: &LogConfig) -> Result<(), TelemetryError> {
    let filter = choose_filter(std::env::var("RUST_LOG").ok(), cfg.level.as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(|| Escaping(std::io::stderr()));
    let result = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
    result.map_err(|_| TelemetryError::AlreadyInstalled)
}

/// The bidirectional formatting characters (U+202A–U+202E, U+2066–U+2069,
/// U+200E, U+200F): a right-to-left override makes a line read other than it
/// is. Escaped with the control characters wherever a sender's text reaches a
/// terminal (the log here, the CLI's output).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

/// A writer that writes control characters (C0 but tab, DEL, C1; a line
/// feed but the one that ends the line) and bidirectional formatting
/// characters as `\x1b`, `\x0a`, `\u{202e}`: what a log line holds of a
/// sender's text reaches a terminal inert, and a line feed in a control id
/// (`\X0A\` in MSH-10) cannot start a line of the sender's making. (tracing
/// writes each event, one line, in one call.)
struct Escaping<W>(W);

impl<W: std::io::Write> std::io::Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        let Ok(text) = std::str::from_utf8(body) else {
            // (tracing writes text; bytes that are not, escaped byte by byte)
            let mut out = Vec::with_capacity(buf.len() + 16);
            for &b in body {
                if (b < 0x20 && b != b'\t') || b >= 0x7f {
                    out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
                } else {
                    out.push(b);
                }
            }
            out.extend_from_slice(end);
            return self.0.write_all(&out).map(|()| buf.len());
        };
        let escape = |c: char| (c.is_control() && c != '\t') || is_bidi_control(c);
        if !text.chars().any(escape) {
            return self.0.write_all(buf).map(|()| buf.len());
        }
        let mut out = String::with_capacity(text.len() + 16);
        for c in text.chars() {
            if escape(c) {
                if (c as u32) < 0x100 {
                    out.push_str(&format!("\\x{:02x}", c as u32));
                } else {
                    out.push_str(&c.escape_unicode().to_string());
                }
            } else {
                out.push(c);
            }
        }
        out.push_str(if end.is_empty() { "" } else { "\n" });
        self.0.write_all(out.as_bytes()).map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_carry_a_senders_control_bytes_escaped() {
        use std::io::Write;
        let mut out = Escaping(Vec::new());
        out.write_all(b"control_id=ESC\x1b[31mRED\x07 ok\tx\n")
            .unwrap();
        assert_eq!(out.0, b"control_id=ESC\\x1b[31mRED\\x07 ok\tx\n");
        // a line feed inside the line (a control id's `\X0A\`): escaped, so
        // the sender cannot start a line of its own; the line's end is kept
        let mut out = Escaping(Vec::new());
        out.write_all(b"control_id=A\n2026-11-24T09:00:00Z  INFO fake\r line\n")
            .unwrap();
        assert_eq!(
            out.0,
            b"control_id=A\\x0a2026-11-24T09:00:00Z  INFO fake\\x0d line\n"
        );
    }

    fn check(rust_log: Option<&str>, level: Option<&str>, expected: Result<&str, &str>) {
        let got = choose_filter(rust_log.map(str::to_string), level)
            .map(|f| f.to_string())
            .map_err(|e| e.to_string());
        match (got, expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
            (got, want) => panic!("got {got:?}, expected {want:?}"),
        }
    }

    /// The targets `[log] level` takes under `junction::` are the modules
    /// of `src/`, each a file or a folder's `mod.rs`.
    #[test]
    fn the_log_targets_are_the_modules() {
        fn walk(dir: &std::path::Path, prefix: &str, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_stem().unwrap().to_string_lossy().to_string();
                let module = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}::{name}")
                };
                if path.is_dir() {
                    out.push(module.clone());
                    walk(&path, &module, out);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && !(prefix.is_empty() && (name == "lib" || name == "main"))
                    && name != "mod"
                {
                    out.push(module);
                }
                // (test-only modules are no targets of a running engine)
                out.retain(|m| !m.split("::").any(|p| p == "tests" || p == "testing"));
            }
        }
        let mut found = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            "",
            &mut found,
        );
        found.sort();
        // (a module in a file beside a folder of its own: `pipeline.rs`, `pipeline/`)
        found.dedup();
        let mut listed: Vec<String> = super::MODULES.iter().map(|m| m.to_string()).collect();
        listed.sort();
        assert_eq!(listed, found);
    }

    #[test]
    fn filter_precedence() {
        check(None, None, Ok("info"));
        check(None, Some("debug"), Ok("debug"));
        check(Some("warn"), Some("debug"), Ok("warn"));
        check(Some("  "), Some("junction=debug"), Ok("junction=debug"));
        check(None, Some("junction=loud"), Err("from [log] level"));
        // a bare word that is no level would switch every other target off
        for typo in ["warning", "loud", "inf0", "info,warnings"] {
            check(None, Some(typo), Err("is not a level"));
        }
        check(None, Some(""), Err("it is empty"));
        check(None, Some("juncton=debug"), Err("no level for `junction`"));
        check(None, Some("hyper=debug,info"), Ok("hyper=debug,info"));
        check(
            None,
            Some("junction::mllp=debug"),
            Ok("junction::mllp=debug"),
        );
        check(None, Some("WARN,junction=debug"), Ok("junction=debug,warn"));
        // a misspelt module of the engine matches no line (s24e tester, LOW)
        check(
            None,
            Some("info,junction::mlp=debug"),
            Err("names no part of the engine"),
        );
        // (nor does one deeper in, or one with a single colon: s25 tester, L3)
        check(
            None,
            Some("info,junction::store::nope=debug"),
            Err("its parts: store::access, store::apply"),
        );
        check(None, Some("info,junction:mlp=debug"), Err("is no target"));
        check(None, Some("junction:mlp=debug"), Err("is no target"));
        check(
            None,
            Some("info,junction = debug"),
            Ok("junction=debug,info"),
        );
        check(
            None,
            Some("info,junction::mllp = "),
            Err("gives no level after `=`"),
        );
        check(
            None,
            Some("info,junction::db::x=debug"),
            Err("has no parts of its own"),
        );
        check(
            None,
            Some("info,junction::store::tests=debug"),
            Err("names no part"),
        );
        // (white space after a comma is no error: s25d tester, L2)
        check(
            None,
            Some("info, junction::mllp=debug"),
            Ok("junction::mllp=debug,info"),
        );
        check(
            None,
            Some("info,junction::store::sqlite=trace"),
            Ok("junction::store::sqlite=trace,info"),
        );
        check(Some("x=[[["), None, Err("from RUST_LOG"));
    }
}
