//! Loads `junction.toml` into a [`Config`] and cross-checks it.
//!
//! Each component owns its config type (`mllp::listener::ListenerConfig`,
//! `journal::StoreConfig`, `api::ApiConfig`, `telemetry::LogConfig`); this
//! module only assembles them, reports every problem as a [`Diagnostic`] with
//! file:line:col, and resolves relative paths against the config file's folder.
//! Only `config/` knows file paths.
//!
//! # How problems are collected
//! 1. The file is parsed into a spanned tree (`toml::de::DeTable`) with error
//!    recovery: every syntax error is reported. A file with syntax errors
//!    stops there (what follows would be guesswork).
//! 2. Each top-level section, and each `[listeners.<id>]`, is deserialized on
//!    its own, so one bad section does not hide problems in another. Inside a
//!    section, the key serde complained about is removed and the section is
//!    tried again, so an unknown key and a wrong type in the same table are
//!    both reported.
//! 3. Semantic checks (duplicate bind addresses, zero limits, a bad log
//!    filter, a store path that is a directory) run on whatever deserialized,
//!    and point at the offending value through the spanned tree.
//!
//! # Invariants
//! - [`load`] returns a config only when there is no error. Warnings (an API
//!   bound to a non-loopback address, no listener) do not stop it; use
//!   [`load_with_warnings`] to see them.
//! - Paths in the returned config are absolute (relative ones are resolved
//!   against [`config_dir`]), so later joins are no-ops.
//! - Config types never use `#[serde(flatten)]` or internally tagged enums:
//!   both lose the exact location of typos.
//!
//! # Extending
//! A new section: add the field to [`Config`], its name to [`SECTIONS`], and a
//! line in [`assemble`]. Cross-references between files (routes naming
//! mappings and destinations) belong in [`cross_check`].

mod diagnostic;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

pub(crate) use diagnostic::without_duplicate_tables;
pub use diagnostic::{locate, Diagnostic, Diagnostics, Location, Severity, Snippet};

use crate::api::ApiConfig;
use crate::delivery::{DestinationConfig, DestinationKind, SourceConfig};
use crate::journal::StoreConfig;
use crate::mesh::MeshMailboxConfig;
use crate::mllp::listener::ListenerConfig;
use crate::telemetry::LogConfig;

/// The whole engine configuration (`junction.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[listeners.<id>]`: one MLLP listener each.
    #[serde(default)]
    pub listeners: BTreeMap<String, ListenerConfig>,
    /// `[sources.<id>]`: documents that arrive other than over MLLP (MESH inboxes).
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// `[destinations.<id>]`: where routed documents are delivered.
    #[serde(default)]
    pub destinations: BTreeMap<String, DestinationConfig>,
    /// `[mesh.mailboxes.<id>]`: MESH mailboxes we send from and read.
    #[serde(default)]
    pub mesh: MeshConfig,
    /// `[store]`: where the journal (with the delivery queue) and the record store live.
    #[serde(default)]
    pub store: StoreConfig,
    /// `[api]`: the HTTP server.
    #[serde(default)]
    pub api: ApiConfig,
    /// `[log]`: log format and level.
    #[serde(default)]
    pub log: LogConfig,
    /// `[engine]`: engine-wide settings.
    #[serde(default)]
    pub engine: EngineConfig,
}

/// `[mesh]`: MESH mailboxes, by id.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// `[mesh.mailboxes.<id>]`.
    #[serde(default)]
    pub mailboxes: BTreeMap<String, MeshMailboxConfig>,
}

/// `[engine]`: settings of the engine as a whole.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// How long a graceful shutdown may take before remaining work is abandoned
    /// (nothing acknowledged is lost either way: it is in the journal).
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
}

fn default_shutdown_timeout_secs() -> u64 {
    10
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shutdown_timeout_secs: default_shutdown_timeout_secs(),
        }
    }
}

/// The top-level tables of `junction.toml`, in the order they are documented.
pub const SECTIONS: &[&str] = &[
    "listeners",
    "sources",
    "destinations",
    "mesh",
    "store",
    "api",
    "log",
    "engine",
];

/// The largest `max_message_bytes` accepted: beyond this a single frame would
/// be a denial of service rather than a message.
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 1024 * 1024 * 1024;

/// The folder of the config file: relative paths in it are relative to this.
/// `junction.toml` gives `.`.
pub fn config_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Reads, deserializes and cross-checks the config file at `path`.
/// Returns every error (and warning) when there is at least one error.
pub fn load(path: &Path) -> Result<Config, Diagnostics> {
    load_with_warnings(path).map(|(config, _warnings)| config)
}

/// Like [`load`], but also returns the warnings of a config that loaded.
pub fn load_with_warnings(path: &Path) -> Result<(Config, Diagnostics), Diagnostics> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) => {
            let mut diags = Diagnostics::new();
            diags.push(Diagnostic::whole_file(
                Severity::Error,
                path,
                format!("cannot read config file: {err}"),
            ));
            return Err(diags);
        }
    };
    let source = match String::from_utf8(bytes) {
        Ok(source) => source,
        Err(err) => {
            let valid = err.utf8_error().valid_up_to();
            let lossy = String::from_utf8_lossy(err.as_bytes()).into_owned();
            let mut diags = Diagnostics::new();
            diags.push(Diagnostic::error(
                path,
                &lossy,
                valid..valid + 1,
                "invalid UTF-8 in config file (TOML files must be UTF-8)",
            ));
            return Err(diags);
        }
    };
    let (mut config, mut diags) = parse(path, &source);
    if let Some(config) = config.as_mut() {
        resolve_paths(config, &config_dir(path));
        check_filesystem(config, path, &source, &mut diags);
    }
    diags.sort();
    match config {
        Some(config) if !diags.has_errors() => Ok((config, diags)),
        _ => Err(diags),
    }
}

/// Parses and checks config text. `file` is only used in diagnostics; paths
/// are left as written. Returns the config when it deserialized, and every
/// diagnostic found (the config must not be used if any is an error).
pub fn parse(file: &Path, source: &str) -> (Option<Config>, Diagnostics) {
    let mut diags = Diagnostics::new();
    // a table defined twice: one error, and the rest of the file still checked
    let (text, duplicates) = diagnostic::without_duplicate_tables(source);
    for (span, message) in duplicates {
        diags.push(Diagnostic::error(file, source, span, message));
    }
    let (root, errors) = DeTable::parse_recoverable(&text);
    if !errors.is_empty() {
        // a key given twice (the first is kept) leaves the rest of the file
        // readable: it is checked too; any other syntax error stops here
        let only_duplicates = errors.iter().all(|e| e.message().trim() == "duplicate key");
        for err in errors {
            let span = err.span().unwrap_or(0..0);
            let message = toml_error(err.message(), source, &span);
            diags.push(Diagnostic::error(file, source, span, message));
        }
        if !only_duplicates {
            diags.sort();
            return (None, diags);
        }
    }
    let doc = Doc {
        file,
        source,
        root: root.get_ref(),
    };
    let config = assemble(&doc, &mut diags);
    diags.sort();
    (config, diags)
}

/// The ids a config declares (`[listeners.<id>]`, `[sources.<id>]`,
/// `[destinations.<id>]`), read from the TOML alone: what `junction check` checks
/// routes against when the config itself has errors. `None` where the file or
/// that section cannot be read as tables.
#[derive(Debug, Default)]
pub struct DeclaredIds {
    pub listeners: Option<Vec<String>>,
    pub sources: Option<Vec<String>>,
    pub destinations: Option<Vec<String>>,
}

pub fn declared_ids(source: &str) -> DeclaredIds {
    let (root, errors) = DeTable::parse_recoverable(source);
    if !errors.is_empty() {
        return DeclaredIds::default();
    }
    let doc = Doc {
        file: Path::new(""),
        source,
        root: root.get_ref(),
    };
    DeclaredIds {
        listeners: doc.declared(&["listeners"]),
        sources: doc.declared(&["sources"]),
        destinations: doc.declared(&["destinations"]),
    }
}

/// The parsed file, for locating keys and values in diagnostics.
struct Doc<'a> {
    file: &'a Path,
    source: &'a str,
    root: &'a DeTable<'a>,
}

impl Doc<'_> {
    /// The value at `path` (keys from the root), if present.
    fn value(&self, path: &[&str]) -> Option<&Spanned<DeValue<'_>>> {
        let (first, rest) = path.split_first()?;
        let mut value = self.root.get(*first)?;
        for key in rest {
            value = value.get_ref().as_table()?.get(*key)?;
        }
        Some(value)
    }

    /// The ids declared under `path` (`[destinations.<id>]`), whether or not
    /// their tables deserialized: empty when absent, `None` when the value there
    /// is not a table.
    fn declared(&self, path: &[&str]) -> Option<Vec<String>> {
        match self.value(path) {
            None => Some(Vec::new()),
            Some(v) => v
                .get_ref()
                .as_table()
                .map(|t| t.iter().map(|(k, _)| k.get_ref().to_string()).collect()),
        }
    }

    /// The span of the key at `path`, if present.
    fn key_span(&self, path: &[&str]) -> Option<Range<usize>> {
        let (last, parent) = path.split_last()?;
        let table = if parent.is_empty() {
            self.root
        } else {
            self.value(parent)?.get_ref().as_table()?
        };
        table.get_key_value(*last).map(|(k, _)| k.span())
    }

    /// The best span for a problem with the value at `path`: the value, else
    /// the nearest present ancestor's key, else the start of the file.
    fn span(&self, path: &[&str]) -> Range<usize> {
        if let Some(v) = self.value(path) {
            return v.span();
        }
        for n in (1..path.len()).rev() {
            if let Some(span) = self.key_span(&path[..n]) {
                return span;
            }
        }
        0..0
    }

    fn error(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        Diagnostic::error(self.file, self.source, span, message)
    }

    fn warning(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        Diagnostic::warning(self.file, self.source, span, message)
    }
}

/// Deserializes each section on its own and builds the config when every
/// section deserialized.
fn assemble(doc: &Doc<'_>, diags: &mut Diagnostics) -> Option<Config> {
    for (key, _) in doc.root.iter() {
        if !SECTIONS.contains(&key.get_ref().as_ref()) {
            diags.push(doc.error(
                key.span(),
                format!(
                    "unknown field `{}`, expected one of {}",
                    key.get_ref(),
                    expected_list(SECTIONS)
                ),
            ));
        }
    }
    let before = diags.error_count();
    let mut failed = Failed::default();
    let (listeners, listeners_ok) =
        tables::<ListenerConfig>(doc, &["listeners"], "listener", diags);
    failed.listeners = !listeners_ok;
    let (sources, sources_ok) = tables::<SourceConfig>(doc, &["sources"], "source", diags);
    failed.sources = !sources_ok;
    let (destinations, destinations_ok) =
        tables::<DestinationConfig>(doc, &["destinations"], "destination", diags);
    failed.destinations = !destinations_ok;
    let mesh_ok = mesh_section_ok(doc, diags);
    let (mailboxes, mailboxes_ok) =
        tables::<MeshMailboxConfig>(doc, &["mesh", "mailboxes"], "mailbox", diags);
    failed.mailboxes = !(mailboxes_ok && mesh_ok);
    let store = section::<StoreConfig>(doc, "store", diags);
    let api = section::<ApiConfig>(doc, "api", diags);
    failed.api = api.is_none();
    let log = section::<LogConfig>(doc, "log", diags);
    let engine = section::<EngineConfig>(doc, "engine", diags);
    // Cross-checks run on what deserialized (defaults stand in for failed
    // sections, and checks that would read a stand-in are skipped), so that
    // problems elsewhere are still reported.
    let config = Config {
        listeners,
        sources,
        destinations,
        mesh: MeshConfig { mailboxes },
        store: store.unwrap_or_default(),
        api: api.unwrap_or_default(),
        log: log.unwrap_or_default(),
        engine: engine.unwrap_or_default(),
    };
    cross_check(&config, &failed, doc, diags);
    (diags.error_count() == before).then_some(config)
}

/// Sections that did not deserialize (their values in the config are stand-ins).
#[derive(Debug, Default)]
struct Failed {
    listeners: bool,
    sources: bool,
    destinations: bool,
    mailboxes: bool,
    api: bool,
}

fn section<T: DeserializeOwned + Default>(
    doc: &Doc<'_>,
    name: &str,
    diags: &mut Diagnostics,
) -> Option<T> {
    match doc.root.get(name) {
        None => Some(T::default()),
        Some(value) => deserialize_all(doc, value, diags),
    }
}

/// `[mesh]` may hold only `mailboxes`.
fn mesh_section_ok(doc: &Doc<'_>, diags: &mut Diagnostics) -> bool {
    let Some(value) = doc.root.get("mesh") else {
        return true;
    };
    let Some(table) = value.get_ref().as_table() else {
        diags.push(doc.error(
            value.span(),
            format!(
                "invalid type: {}, expected a table such as `[mesh.mailboxes.junction]`",
                value.get_ref().type_str()
            ),
        ));
        return false;
    };
    let mut ok = true;
    for (key, _) in table.iter() {
        if key.get_ref() != "mailboxes" {
            diags.push(doc.error(
                key.span(),
                format!("unknown field `{}`, expected `mailboxes`", key.get_ref()),
            ));
            ok = false;
        }
    }
    ok
}

/// A table of components by id (`[listeners.<id>]`, `[destinations.<id>]`,
/// `[mesh.mailboxes.<id>]`...), each deserialized on its own.
/// Returns the ones that deserialized, and whether all of them did.
fn tables<T: DeserializeOwned>(
    doc: &Doc<'_>,
    path: &[&str],
    what: &str,
    diags: &mut Diagnostics,
) -> (BTreeMap<String, T>, bool) {
    let mut out = BTreeMap::new();
    let Some(value) = doc.value(path) else {
        return (out, true);
    };
    let Some(table) = value.get_ref().as_table() else {
        diags.push(doc.error(
            value.span(),
            format!(
                "invalid type: {}, expected a table of {what}s such as `[{}.example]`",
                value.get_ref().type_str(),
                path.join(".")
            ),
        ));
        return (out, false);
    };
    let mut ok = true;
    for (id, item) in table.iter() {
        if !valid_id(id.get_ref()) {
            diags.push(doc.error(
                id.span(),
                format!(
                    "invalid {what} id `{}`, expected letters, digits, `-` or `_`",
                    id.get_ref()
                ),
            ));
            ok = false;
        }
        match deserialize_all::<T>(doc, item, diags) {
            Some(cfg) => {
                out.insert(id.get_ref().to_string(), cfg);
            }
            None => ok = false,
        }
    }
    (out, ok)
}

/// Ids name listeners in logs, metrics labels and the API.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Deserializes `value` as `T`, reporting every error serde finds: after each
/// error the offending key is removed and deserialization is tried again
/// (bounded), so one typo does not hide the next. `T` also when the only
/// errors were unknown keys (reported): what the table says without them is
/// what it means, so the cross-checks still read it (an unknown key beside a
/// bad `public_url` hid the second error; s24b tester, L1).
fn deserialize_all<T: DeserializeOwned>(
    doc: &Doc<'_>,
    value: &Spanned<DeValue<'_>>,
    diags: &mut Diagnostics,
) -> Option<T> {
    let (value, clean) = recover(value, &mut |span, message| {
        diags.push(doc.error(span, message))
    });
    value.filter(|_| clean != Found::Others)
}

/// Deserializes `value` as `T` and hands every error serde finds to `report`
/// (its span and a message): after each error the offending key is removed
/// and deserialization is tried again (bounded), so one typo does not hide the
/// next. An unknown key close to an expected one gets "did you mean". Returns
/// `T` only when there was no error. Shared by the config and the route files.
pub(crate) fn deserialize_recovering<T: DeserializeOwned>(
    value: &Spanned<DeValue<'_>>,
    report: &mut dyn FnMut(Range<usize>, String),
) -> Option<T> {
    match recover(value, report) {
        (Some(v), Found::Nothing) => Some(v),
        _ => None,
    }
}

/// The errors [`recover`] found in a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Nothing,
    /// Unknown keys only, none of them a misspelling of a known one: the
    /// table without them is what it means.
    UnknownKeys,
    Others,
}

/// [`deserialize_recovering`]'s work: `T` as deserialized once the keys in
/// error were removed (`None`: it never did), and what errors there were.
fn recover<T: DeserializeOwned>(
    value: &Spanned<DeValue<'_>>,
    report: &mut dyn FnMut(Range<usize>, String),
) -> (Option<T>, Found) {
    const MAX_ERRORS_PER_TABLE: usize = 32;
    let mut value = value.clone();
    let mut removed: Vec<String> = Vec::new();
    let mut errors = Found::Nothing;
    for _ in 0..MAX_ERRORS_PER_TABLE {
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(v) => return (Some(v), errors),
            Err(err) => {
                let mut message = toml_message(err.message());
                let guess = misspelt(&message);
                // (a misspelt key is not unknown only: the value it was meant
                // for is missing, which the table without it would say again)
                let unknown = message.starts_with("unknown field `") && guess.is_none();
                errors = match (errors, unknown) {
                    (Found::Nothing | Found::UnknownKeys, true) => Found::UnknownKeys,
                    _ => Found::Others,
                };
                // Removing a key whose value was wrong makes it "missing": that
                // one was already reported. So was a missing key that a reported
                // unknown key misspells.
                let echo = removed.iter().any(|k| {
                    message
                        .strip_prefix("missing field `")
                        .and_then(|m| m.strip_suffix('`'))
                        .is_some_and(|missing| {
                            missing == k || crate::route::edit_distance(missing, k) <= 2
                        })
                });
                if let Some(guess) = guess {
                    message.push_str(&format!(" (did you mean `{guess}`?)"));
                }
                if !echo {
                    report(err.span().unwrap_or_else(|| value.span()), message);
                }
                let Some(span) = err.span() else { break };
                if span == value.span() {
                    break;
                }
                match remove_key_at(&mut value, span.start) {
                    Some(key) => removed.push(key),
                    None => break,
                }
            }
        }
    }
    (None, errors)
}

/// For "unknown field `x`, expected one of `a`, `b`": the expected field closest
/// to `x`, when it is close.
fn misspelt(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected = rest.split_once("expected")?.1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (crate::route::edit_distance(unknown, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k.to_string())
}

/// Removes the innermost key whose key or value contains byte `at`; returns its name.
fn remove_key_at(value: &mut Spanned<DeValue<'_>>, at: usize) -> Option<String> {
    let DeValue::Table(table) = value.get_mut() else {
        return None;
    };
    let key = table
        .iter()
        .find(|(k, v)| k.span().contains(&at) || v.span().contains(&at))
        .map(|(k, _)| k.clone())?;
    if let Some(child) = table.get_mut(key.get_ref().as_ref()) {
        if !key.span().contains(&at) {
            if let Some(inner) = remove_key_at(child, at) {
                return Some(inner);
            }
        }
    }
    table.remove(key.get_ref().as_ref());
    Some(key.get_ref().to_string())
}

/// What a config enum of words expects, as serde says it for an unknown
/// variant: `` `a` ``, `` `a` or `b` ``, `` one of `a`, `b`, `c` `` (for
/// [`word_enum`]).
pub(crate) fn expected_words(f: &mut std::fmt::Formatter<'_>, words: &[&str]) -> std::fmt::Result {
    match words {
        [one] => write!(f, "`{one}`"),
        [a, b] => write!(f, "`{a}` or `{b}`"),
        _ => {
            f.write_str("one of ")?;
            for (i, w) in words.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "`{w}`")?;
            }
            Ok(())
        }
    }
}

/// [`toml_message`] of a parse error at `span` of `source`, a duplicate key
/// named (the parser says only "duplicate key").
pub(crate) fn toml_error(message: &str, source: &str, span: &std::ops::Range<usize>) -> String {
    if message.trim() == "duplicate key" {
        if let Some(key) = source
            .get(span.clone())
            .map(str::trim)
            .filter(|k| !k.is_empty())
        {
            return format!("`{key}` is given twice in this table, expected it once");
        }
    }
    toml_message(message)
}

/// toml's messages end with a newline and sometimes start with a capital: trimmed,
/// first letter lowercased, as every diagnostic (config, routes) words it.
pub(crate) fn toml_message(message: &str) -> String {
    let message = message.trim();
    let mut chars = message.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if first.is_uppercase() && second.is_lowercase() => first
            .to_lowercase()
            .chain(message.chars().skip(1))
            .collect(),
        _ => message.to_string(),
    }
}

fn expected_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that need the whole config: limits, bind addresses, log filter.
///
/// Mappings and routes (issues 3 and 4) add their cross-references here:
/// a route naming an unknown mapping or destination is reported at the
/// route's value through its own file's [`Diagnostic`].
fn cross_check(config: &Config, failed: &Failed, doc: &Doc<'_>, diags: &mut Diagnostics) {
    check_listener_limits(config, doc, diags);
    check_application_acks(config, failed, doc, diags);
    check_binds(config, failed, doc, diags);
    check_log(config, doc, diags);
    check_delivery(config, failed, doc, diags);
    if config.store.retain_days == Some(0) {
        diags.push(doc.error(
            doc.span(&["store", "retain_days"]),
            "retain_days is 0, expected at least 1 (leave it out to keep every message)",
        ));
    }
    check_store_url(config, doc, diags);
    check_public_url(config, doc, diags);
    if config.listeners.is_empty() && !failed.listeners {
        diags.push(Diagnostic::whole_file(
            Severity::Warning,
            doc.file,
            "no `[listeners.<id>]` table: `junction serve` will not accept any messages",
        ));
    }
}

fn check_listener_limits(config: &Config, doc: &Doc<'_>, diags: &mut Diagnostics) {
    for (id, l) in &config.listeners {
        let at = |key: &str| doc.span(&["listeners", id, key]);
        if l.max_connections == 0 {
            diags.push(doc.error(
                at("max_connections"),
                format!("listener `{id}`: max_connections is 0, expected at least 1"),
            ));
        }
        if l.max_message_bytes == 0 {
            diags.push(doc.error(
                at("max_message_bytes"),
                format!("listener `{id}`: max_message_bytes is 0, expected at least 1"),
            ));
        } else if l.max_message_bytes > MAX_MESSAGE_BYTES_LIMIT {
            diags.push(doc.error(
                at("max_message_bytes"),
                format!(
                    "listener `{id}`: max_message_bytes is {}, expected at most {MAX_MESSAGE_BYTES_LIMIT} (1 GiB)",
                    l.max_message_bytes
                ),
            ));
        }
        for (key, secs) in [
            ("idle_timeout_secs", l.idle_timeout_secs),
            ("frame_timeout_secs", l.frame_timeout_secs),
        ] {
            if secs == 0 {
                diags.push(doc.error(
                    at(key),
                    format!("listener `{id}`: {key} is 0, expected at least 1"),
                ));
            }
        }
        if !l.bind.ip().is_loopback() && l.tls.is_none() {
            diags.push(
                doc.warning(
                    at("bind"),
                    format!(
                        "listener `{id}` binds {} without TLS: messages (patient data) cross the network in clear",
                        l.bind
                    ),
                )
                .with_note(format!(
                    "add `[listeners.{id}.tls]` (cert_file, key_file; README: MLLP over TLS) or \
                     terminate TLS in front of it, and name the senders in `allowed_peers`"
                )),
            );
        }
    }
}

/// `[listeners.<id>] application_ack`: an existing destination of kind
/// `mllp` (an ACK is HL7, for the sender's own listener), and a warning when
/// `ack_mode = "original"` means it is never used.
fn check_application_acks(
    config: &Config,
    failed: &Failed,
    doc: &Doc<'_>,
    diags: &mut Diagnostics,
) {
    for (id, l) in &config.listeners {
        let Some(dest) = &l.application_ack else {
            continue;
        };
        let at = doc.span(&["listeners", id, "application_ack"]);
        match config.destinations.get(dest) {
            // declared, but its table did not deserialize (reported already)
            None if failed.destinations
                && doc
                    .declared(&["destinations"])
                    .is_none_or(|ids| ids.contains(dest)) => {}
            None => diags.push(doc.error(
                at,
                format!(
                    "listener `{id}`: application_ack names unknown destination `{dest}`, expected one of the `[destinations.<id>]` of kind \"mllp\" ({})",
                    known_ids(
                        config
                            .destinations
                            .iter()
                            .filter(|(_, d)| d.kind == DestinationKind::Mllp)
                            .map(|(k, _)| k)
                    )
                ),
            )),
            Some(d) if d.kind != DestinationKind::Mllp => diags.push(doc.error(
                at,
                format!(
                    "listener `{id}`: application_ack names destination `{dest}` of kind \"{}\", expected kind \"mllp\": an application acknowledgement is an HL7 message for the sender's own listener",
                    d.kind.as_str()
                ),
            )),
            Some(_) if l.ack_mode == crate::mllp::listener::AckMode::Original => {
                diags.push(doc.warning(
                    at,
                    format!(
                        "listener `{id}`: application_ack is never used with ack_mode = \"original\" (its AA/AE/AR is the application acknowledgement)"
                    ),
                ))
            }
            Some(_) => {}
        }
    }
}

/// Two sockets cannot bind the same port on the same address, nor on a
/// wildcard address and a specific one of the same family.
fn binds_conflict(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 || a.is_ipv4() != b.is_ipv4() {
        return false;
    }
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

fn check_binds(config: &Config, failed: &Failed, doc: &Doc<'_>, diags: &mut Diagnostics) {
    // (what, address, path to its value)
    let mut binds: Vec<(String, SocketAddr, Vec<&str>)> = config
        .listeners
        .iter()
        .map(|(id, l)| {
            (
                format!("listener `{id}`"),
                l.bind,
                vec!["listeners", id.as_str(), "bind"],
            )
        })
        .collect();
    if !failed.api {
        binds.push(("the API".to_string(), config.api.bind, vec!["api", "bind"]));
    }
    for (i, (what, addr, path)) in binds.iter().enumerate() {
        for (other, other_addr, other_path) in &binds[..i] {
            if binds_conflict(*addr, *other_addr) {
                // Point at whichever of the two is written in the file (the
                // API's default bind is not).
                let (span_path, extra) = if doc.value(path).is_some() {
                    (path, "")
                } else {
                    (other_path, " (its default)")
                };
                diags.push(
                    doc.error(
                        doc.span(span_path),
                        format!(
                            "{what} binds {addr}{extra}, which {other} already uses ({other_addr})"
                        ),
                    )
                    .with_note("each listener and the API need their own address and port"),
                );
            }
        }
    }
    if !failed.api && !config.api.bind.ip().is_loopback() {
        diags.push(
            doc.warning(
                doc.span(&["api", "bind"]),
                format!(
                    "the HTTP API binds {}, which is not loopback: /api and /fhir need bearer tokens, sent in clear over plain HTTP",
                    config.api.bind
                ),
            )
            .with_note(
                "make tokens with `junction token add NAME --role ops|clinical`; \
                 put a TLS-terminating proxy in front, or bind 127.0.0.1",
            ),
        );
    }
}

fn check_log(config: &Config, doc: &Doc<'_>, diags: &mut Diagnostics) {
    if let Some(level) = &config.log.level {
        if let Err(err) = crate::telemetry::parse_level(level) {
            diags.push(doc.error(
                doc.span(&["log", "level"]),
                format!("invalid log level `{level}`: {err} (expected e.g. `info` or `junction=debug,warn`)"),
            ));
        }
    }
}

/// Destinations, sources and mailboxes: the keys each kind needs, and the
/// mailboxes and ids they refer to.
fn check_delivery(config: &Config, failed: &Failed, doc: &Doc<'_>, diags: &mut Diagnostics) {
    // A mailbox whose table did not deserialize is still declared (its own
    // problems are reported): only a name declared nowhere is unknown here.
    let mailboxes = doc.declared(&["mesh", "mailboxes"]);
    let mailbox_declared = |name: &String| {
        config.mesh.mailboxes.contains_key(name)
            || (failed.mailboxes && mailboxes.as_ref().is_none_or(|ids| ids.contains(name)))
    };
    for (id, d) in &config.destinations {
        let at = |key: &str| doc.span(&["destinations", id, key]);
        let need = |key: &str, present: bool, diags: &mut Diagnostics| {
            if !present {
                diags.push(doc.error(
                    doc.span(&["destinations", id]),
                    format!(
                        "destination `{id}` (kind = \"{}\") needs `{key}`",
                        d.kind.as_str()
                    ),
                ));
            }
        };
        match d.kind {
            DestinationKind::Store => {}
            DestinationKind::Mesh => {
                need("mailbox", d.mailbox.is_some(), diags);
                need("to", d.to.is_some(), diags);
                need("workflow_id", d.workflow_id.is_some(), diags);
                // MESH mailbox ids are upper-case letters and digits (`X26ABC2`):
                // one written otherwise is sent as written and never arrives
                if let Some(to) = d.to.as_deref() {
                    let ok = !to.is_empty()
                        && to
                            .bytes()
                            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
                    if !ok {
                        let fixed: String = to
                            .trim()
                            .to_ascii_uppercase()
                            .chars()
                            .filter(char::is_ascii_alphanumeric)
                            .collect();
                        diags.push(doc.error(
                            at("to"),
                            format!(
                                "destination `{id}`: `to` {to:?} is not a MESH mailbox id \
                                 (upper-case letters and digits{})",
                                if fixed.is_empty() {
                                    String::new()
                                } else {
                                    format!(": `{fixed}`?")
                                }
                            ),
                        ));
                    }
                }
            }
            DestinationKind::Fhir => need("url", d.url.is_some(), diags),
            DestinationKind::Mllp => {
                need("address", d.address.is_some(), diags);
                let tls_key = [
                    ("tls_cert_file", d.tls_cert_file.is_some()),
                    ("tls_key_file", d.tls_key_file.is_some()),
                    ("tls_server_name", d.tls_server_name.is_some()),
                ]
                .into_iter()
                .find_map(|(key, set)| set.then_some(key));
                if let (Some(key), None) = (tls_key, &d.tls_ca_file) {
                    diags.push(doc.error(
                        at(key),
                        format!("destination `{id}`: the `tls_*` keys need `tls_ca_file` (the CA the listener's certificate chains to)"),
                    ));
                }
                if d.tls_cert_file.is_some() != d.tls_key_file.is_some() {
                    let set = if d.tls_cert_file.is_some() {
                        "tls_cert_file"
                    } else {
                        "tls_key_file"
                    };
                    diags.push(doc.error(
                        at(set),
                        format!(
                            "destination `{id}`: `tls_cert_file` and `tls_key_file` go together"
                        ),
                    ));
                }
            }
            DestinationKind::File => need("dir", d.dir.is_some(), diags),
        }
        if d.payload == crate::delivery::Payload::Original
            && !matches!(d.kind, DestinationKind::Mesh | DestinationKind::File)
        {
            diags.push(doc.error(
                at("payload"),
                format!(
                    "destination `{id}`: payload = \"original\" applies to mesh and file \
                     destinations, expected it left out (an mllp destination always forwards \
                     the original; store and fhir take the document)"
                ),
            ));
        }
        if let Some(url) = &d.url {
            if url_has_password(url) {
                diags.push(doc.error(at("url"), format!("destination `{id}`: {URL_SECRET}")));
            } else if !(url.starts_with("http://") || url.starts_with("https://")) {
                diags.push(doc.error(
                    at("url"),
                    format!("destination `{id}`: url `{url}` must start with http:// or https://"),
                ));
            }
        }
        if let Some(mailbox) = &d.mailbox {
            if !mailbox_declared(mailbox) {
                diags.push(doc.error(
                    at("mailbox"),
                    format!(
                        "destination `{id}`: unknown mailbox `{mailbox}`, expected one of the `[mesh.mailboxes.<id>]` tables ({})",
                        known_ids(config.mesh.mailboxes.keys())
                    ),
                ));
            }
        }
        if d.max_attempts == Some(0) {
            diags.push(doc.error(
                at("max_attempts"),
                format!("destination `{id}`: max_attempts is 0, expected at least 1"),
            ));
        }
        if d.concurrency == 0 {
            diags.push(doc.error(
                at("concurrency"),
                format!("destination `{id}`: concurrency is 0, expected at least 1"),
            ));
        }
        if d.backoff_max_ms < d.backoff_initial_ms {
            diags.push(doc.error(
                at("backoff_max_ms"),
                format!(
                    "destination `{id}`: backoff_max_ms ({}) is less than backoff_initial_ms ({})",
                    d.backoff_max_ms, d.backoff_initial_ms
                ),
            ));
        }
    }
    for (id, s) in &config.sources {
        if !mailbox_declared(&s.mailbox) {
            diags.push(doc.error(
                doc.span(&["sources", id, "mailbox"]),
                format!(
                    "source `{id}`: unknown mailbox `{}`, expected one of the `[mesh.mailboxes.<id>]` tables ({})",
                    s.mailbox,
                    known_ids(config.mesh.mailboxes.keys())
                ),
            ));
        }
        if s.poll_interval_secs == 0 {
            diags.push(doc.error(
                doc.span(&["sources", id, "poll_interval_secs"]),
                format!("source `{id}`: poll_interval_secs is 0, expected at least 1"),
            ));
        }
        if s.max_message_bytes == 0 || s.max_message_bytes > MAX_MESSAGE_BYTES_LIMIT {
            diags.push(doc.error(
                doc.span(&["sources", id, "max_message_bytes"]),
                format!(
                    "source `{id}`: max_message_bytes is {}, expected 1 to {MAX_MESSAGE_BYTES_LIMIT} (1 GiB)",
                    s.max_message_bytes
                ),
            ));
        }
        if config.listeners.contains_key(id) {
            diags.push(doc.error(
                doc.span(&["sources", id]),
                format!("source `{id}` has the same id as a listener; routes name either, so ids must differ"),
            ));
        }
    }
    for (id, m) in &config.mesh.mailboxes {
        if url_has_password(&m.url) {
            diags.push(doc.error(
                doc.span(&["mesh", "mailboxes", id, "url"]),
                format!("mailbox `{id}`: {URL_SECRET}"),
            ));
        }
        if let Err(err) = m.validate() {
            diags.push(doc.error(
                doc.span(&["mesh", "mailboxes", id]),
                format!("mailbox `{id}`: {err}"),
            ));
        }
        if url_has_token(&m.url) {
            diags.push(doc.error(
                doc.span(&["mesh", "mailboxes", id, "url"]),
                format!("mailbox `{id}`: url holds a credential in its query or fragment: secrets are never kept in the config file"),
            ));
        }
        for (what, env, file) in [
            ("password", &m.password_env, &m.password_file),
            ("shared_key", &m.shared_key_env, &m.shared_key_file),
        ] {
            if env.is_none() && file.is_none() {
                diags.push(doc.error(
                    doc.span(&["mesh", "mailboxes", id]),
                    format!("mailbox `{id}`: no {what}: MESH needs one, give `{what}_env` (an environment variable) or `{what}_file`"),
                ));
            }
            let at = ["mesh", "mailboxes", id.as_str()];
            secret_source(
                doc,
                &at,
                &format!("mailbox `{id}`"),
                what,
                env.as_deref(),
                file.is_some(),
                diags,
            );
        }
    }
    for (id, d) in &config.destinations {
        let at = ["destinations", id.as_str()];
        secret_source(
            doc,
            &at,
            &format!("destination `{id}`"),
            "token",
            d.token_env.as_deref(),
            d.token_file.is_some(),
            diags,
        );
        if d.url.as_deref().is_some_and(url_has_token) {
            diags.push(doc.error(
                doc.span(&["destinations", id, "url"]),
                format!("destination `{id}`: url holds a token in its query (`access_token`, `token`, `key`...): secrets are never kept in the config file, give it through `token_env` or `token_file`"),
            ));
        }
    }
}

/// The checks every secret shares (MESH password and shared key, a FHIR
/// destination's token, the PostgreSQL password): given through
/// `<what>_env` or `<what>_file`, not both; and `<what>_env` the name of an
/// environment variable (`[A-Za-z_][A-Za-z0-9_]*`), not the secret typed in
/// its place (said without quoting any of it).
fn secret_source(
    doc: &Doc<'_>,
    at: &[&str],
    owner: &str,
    what: &str,
    env: Option<&str>,
    file: bool,
    diags: &mut Diagnostics,
) {
    let (env_key, file_key) = (format!("{what}_env"), format!("{what}_file"));
    fn path<'k>(at: &[&'k str], key: &'k str) -> Vec<&'k str> {
        at.iter().copied().chain([key]).collect()
    }
    if env.is_some() && file {
        diags.push(doc.error(
            doc.span(&path(at, &file_key)),
            format!("{owner}: give the {what} through `{env_key}` or `{file_key}`, not both"),
        ));
    }
    if env.is_some_and(|n| !is_env_name(n)) {
        diags.push(doc.error(
            doc.span(&path(at, &env_key)),
            format!("{owner}: `{env_key}` is the name of an environment variable (letters, digits and `_`, not starting with a digit), not the secret itself (its value is not shown)"),
        ));
    }
}

/// An environment variable's name as a shell would take it: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether an http(s) URL carries a credential in its query string.
fn url_has_token(url: &str) -> bool {
    let lowered = url.to_ascii_lowercase();
    if lowered.contains("#access_token=") || lowered.contains(";access_token=") {
        return true;
    }
    const NAMES: &[&str] = &[
        "access_token",
        "token",
        "api_key",
        "apikey",
        "key",
        "password",
        "secret",
        "code",
        "sig",
        "client_secret",
        "subscription-key",
        "auth",
        "pwd",
    ];
    reqwest::Url::parse(url).is_ok_and(|u| {
        // a token given as the user name (`https://abc123@host/`)
        (!u.username().is_empty() && u.password().is_none())
            || u.query_pairs()
                .any(|(k, _)| NAMES.contains(&k.to_ascii_lowercase().as_str()))
    })
}

const URL_SECRET: &str = "url holds a password (`user:password@`): secrets are never kept in \
     the config file, give them through an environment variable or a file";

/// Whether an http(s) URL carries a password in its user info.
fn url_has_password(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| u.password().is_some())
}

/// `[api] public_url`: an http(s) URL the FHIR base is built from, so
/// nothing a client could not follow (a query, a fragment, a user).
fn check_public_url(config: &Config, doc: &Doc<'_>, diags: &mut Diagnostics) {
    let Some(url) = &config.api.public_url else {
        return;
    };
    if let Err(problem) = crate::api::public_base(url) {
        diags.push(doc.error(
            doc.span(&["api", "public_url"]),
            format!(
                "public_url {problem}, expected the address clients reach this server by, e.g. `https://shcr.example.nhs.uk` (`/fhir` is added)"
            ),
        ));
    }
}

/// `[store] url`: a PostgreSQL URL without a password (secrets come from
/// `password_env` or `password_file`, never from the config file).
fn check_store_url(config: &Config, doc: &Doc<'_>, diags: &mut Diagnostics) {
    let store = &config.store;
    let Some(url) = &store.url else {
        for (key, given) in [
            ("password_env", store.password_env.is_some()),
            ("password_file", store.password_file.is_some()),
            ("tls_ca_file", store.tls_ca_file.is_some()),
        ] {
            if given {
                diags.push(doc.error(
                    doc.span(&["store", key]),
                    format!("{key} is only used with `url` (a PostgreSQL record store)"),
                ));
            }
        }
        return;
    };
    let at = doc.span(&["store", "url"]);
    match url.parse::<postgres::Config>() {
        Err(e) => diags.push(doc.error(
            at,
            format!(
                "url is not a PostgreSQL connection URL ({e}), expected e.g. `postgres://junction@127.0.0.1:5432/junction`"
            ),
        )),
        Ok(parsed) if parsed.get_password().is_some() => diags.push(doc.error(
            at,
            "url holds a password: secrets are never kept in the config file, give it through `password_env` (an environment variable) or `password_file`",
        )),
        Ok(parsed)
            if parsed.get_ssl_mode() == postgres::config::SslMode::Require
                && store.tls_ca_file.is_none() =>
        {
            diags.push(doc.error(
                at,
                "url asks for sslmode=require: give `tls_ca_file`, the CA the server's certificate must come from",
            ))
        }
        Ok(parsed) if store.tls_ca_file.is_none() && !all_loopback(&parsed) => {
            diags.push(doc.warning(
                at,
                "the record store's PostgreSQL is not on loopback and `tls_ca_file` is not set: records and passwords cross the network unencrypted",
            ))
        }
        Ok(_) => {}
    }
    secret_source(
        doc,
        &["store"],
        "store",
        "password",
        store.password_env.as_deref(),
        store.password_file.is_some(),
        diags,
    );
}

/// Whether every host of a PostgreSQL URL is this machine (a Unix socket,
/// `localhost`, or a loopback address).
fn all_loopback(config: &postgres::Config) -> bool {
    config.get_hosts().iter().all(|host| match host {
        postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        postgres::config::Host::Unix(_) => true,
    })
}

fn known_ids<'a>(ids: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<String> = ids.map(|id| format!("`{id}`")).collect();
    if list.is_empty() {
        "none are defined".to_string()
    } else {
        list.join(", ")
    }
}

fn resolve_paths(config: &mut Config, dir: &Path) {
    config.store.path = absolute(&dir.join(&config.store.path));
    config.store.records = absolute(&dir.join(&config.store.records));
    for file in [
        &mut config.store.password_file,
        &mut config.store.tls_ca_file,
    ]
    .into_iter()
    .flatten()
    {
        *file = absolute(&dir.join(&*file));
    }
    for tls in config.listeners.values_mut().filter_map(|l| l.tls.as_mut()) {
        for path in [&mut tls.cert_file, &mut tls.key_file]
            .into_iter()
            .chain(tls.client_ca_file.as_mut())
        {
            *path = absolute(&dir.join(&*path));
        }
    }
    for d in config.destinations.values_mut() {
        if let Some(path) = d.dir.as_mut() {
            *path = absolute(&dir.join(&*path));
        }
        for path in [
            &mut d.tls_ca_file,
            &mut d.tls_cert_file,
            &mut d.tls_key_file,
        ]
        .into_iter()
        .flatten()
        {
            *path = absolute(&dir.join(&*path));
        }
        if let Some(path) = d.token_file.as_mut() {
            *path = absolute(&dir.join(&*path));
        }
    }
    for m in config.mesh.mailboxes.values_mut() {
        for path in [
            &mut m.password_file,
            &mut m.shared_key_file,
            &mut m.client_cert_file,
            &mut m.client_key_file,
            &mut m.ca_file,
        ]
        .into_iter()
        .flatten()
        {
            *path = absolute(&dir.join(&*path));
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Checks against the file system (only from [`load_with_warnings`]).
fn check_filesystem(config: &Config, file: &Path, source: &str, diags: &mut Diagnostics) {
    let (root, _) = DeTable::parse_recoverable(source);
    let doc = Doc {
        file,
        source,
        root: root.get_ref(),
    };
    // TLS files are read as the engine would read them
    for (id, d) in &config.destinations {
        let Some(ca) = &d.tls_ca_file else { continue };
        let loaded = crate::mllp::tls::ClientTls::load(
            ca,
            d.tls_cert_file.as_deref(),
            d.tls_key_file.as_deref(),
            d.tls_server_name.as_deref(),
        );
        if let Err(err) = loaded {
            // the client side names its inputs as `junction send` does (`tls-ca`)
            let key = match err.field {
                "tls-cert" => "tls_cert_file",
                "tls-key" => "tls_key_file",
                "tls-server-name" => "tls_server_name",
                _ => "tls_ca_file",
            };
            diags.push(doc.error(
                doc.span(&["destinations", id, key]),
                format!(
                    "destination `{id}`: TLS `{key}` {}: {}",
                    err.path.display(),
                    err.problem
                ),
            ));
        }
    }
    for (id, listener) in &config.listeners {
        for err in listener
            .tls
            .as_ref()
            .map(|tls| tls.problems())
            .unwrap_or_default()
        {
            diags.push(doc.error(
                doc.span(&["listeners", id, "tls", err.field]),
                format!("listener `{id}`: TLS {err}"),
            ));
        }
    }
    if config.store.url.is_some() && config.store.records.is_file() {
        // the register of who objects to sharing must not be left behind
        diags.push(doc.warning(
            doc.span(&["store", "url"]),
            format!(
                "{} is a SQLite record store that is not used while `url` is set (its records, objections register and tokens stay there): copy it with `junction records copy-to-postgres`, then move it away",
                config.store.records.display()
            ),
        ));
    }
    if let Some(ca) = config
        .store
        .url
        .as_ref()
        .and(config.store.tls_ca_file.as_ref())
    {
        if let Err(err) = crate::mllp::tls::client_config_trusting("tls_ca_file", ca) {
            diags.push(doc.error(
                doc.span(&["store", "tls_ca_file"]),
                format!("store: TLS {err}"),
            ));
        }
    }
    // secrets as the engine would read them: one that will not resolve is said
    // here (the engine starts all the same; what needs it waits, retrying)
    let mut unresolved =
        |at: Vec<&str>, owner: String, env: &Option<String>, file: &Option<PathBuf>, then: &str| {
            let problem = match (env, file) {
                (Some(var), None) if std::env::var_os(var).is_none() && is_env_name(var) => {
                    Some((format!("environment variable `{var}` is not set"), true))
                }
                (None, Some(file)) => match std::fs::read(file) {
                    Err(e) => Some((format!("cannot read {}: {e}", file.display()), false)),
                    Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {
                        Some((format!("{} is empty", file.display()), false))
                    }
                    Ok(_) => None,
                },
                _ => None,
            };
            if let Some((problem, is_env)) = problem {
                let key = at.last().copied().unwrap_or_default();
                let key = if is_env {
                    format!("{key}_env")
                } else {
                    format!("{key}_file")
                };
                let mut path = at[..at.len() - 1].to_vec();
                path.push(&key);
                diags.push(doc.warning(doc.span(&path), format!("{owner}: {problem}: {then}")));
            }
        };
    for (id, m) in &config.mesh.mailboxes {
        for (what, env, file) in [
            ("password", &m.password_env, &m.password_file),
            ("shared_key", &m.shared_key_env, &m.shared_key_file),
        ] {
            unresolved(
                vec!["mesh", "mailboxes", id, what],
                format!("mailbox `{id}`: its {what}"),
                env,
                file,
                "the mailbox cannot be used until it is",
            );
        }
    }
    for (id, d) in &config.destinations {
        unresolved(
            vec!["destinations", id, "token"],
            format!("destination `{id}`: its token"),
            &d.token_env,
            &d.token_file,
            "its deliveries wait until it is",
        );
    }
    if config.store.url.is_some() {
        unresolved(
            vec!["store", "password"],
            "store: its password".to_string(),
            &config.store.password_env,
            &config.store.password_file,
            "the record store cannot be opened until it is",
        );
    }
    if config.store.path.is_dir() {
        diags.push(doc.error(
            doc.span(&["store", "path"]),
            format!(
                "store path {} is a directory, expected a database file name",
                config.store.path.display()
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `source` and returns the one-line rendering of every diagnostic.
    fn diagnostics(source: &str) -> Vec<String> {
        let (_, diags) = parse(Path::new("junction.toml"), source);
        diags.iter().map(Diagnostic::one_line).collect()
    }

    fn check(source: &str, expected: &[&str]) {
        assert_eq!(diagnostics(source), expected, "for:\n{source}");
    }

    const GOOD: &str =
        "[listeners.pas]\nbind = \"127.0.0.1:2575\"\n\n[api]\nbind = \"127.0.0.1:8080\"\n";

    #[test]
    fn good_config_has_no_diagnostics() {
        let (config, diags) = parse(Path::new("junction.toml"), GOOD);
        assert!(diags.is_empty(), "{diags}");
        let config = config.unwrap();
        assert_eq!(config.listeners["pas"].bind.port(), 2575);
        assert_eq!(config.engine.shutdown_timeout_secs, 10);
    }

    #[test]
    fn shipped_default_config_is_clean() {
        let source = include_str!("../../junction.toml");
        check(source, &[]);
    }

    #[test]
    fn unknown_key_points_at_the_key() {
        check(
            "[listeners.pas]\nbind = \"127.0.0.1:2575\"\nmax_conections = 3\n",
            &["junction.toml:3:1: error: unknown field `max_conections`, expected one of `bind`, `max_connections`, `idle_timeout_secs`, `frame_timeout_secs`, `max_message_bytes`, `ack_mode`, `tls`, `allowed_peers`, `application_ack`, `processing_ids` (did you mean `max_connections`?)"],
        );
    }

    #[test]
    fn retain_days_must_keep_at_least_a_day() {
        check(
            "[listeners.pas]\nbind = \"127.0.0.1:2575\"\n[store]\nretain_days = 0\n",
            &["junction.toml:4:15: error: retain_days is 0, expected at least 1 (leave it out to keep every message)"],
        );
        let (config, diags) = parse(
            Path::new("junction.toml"),
            "[listeners.pas]\nbind = \"127.0.0.1:2575\"\n[store]\nretain_days = 90\n",
        );
        assert!(diags.is_empty(), "{diags}");
        assert_eq!(config.unwrap().store.retain_days, Some(90));
    }

    #[test]
    fn the_public_url_is_an_http_address_a_client_can_follow() {
        // written as the URL standard writes it, without a trailing `/`
        assert_eq!(
            crate::api::public_base("HtTpS://SHCR.Example.nhs.uk:443/records/").unwrap(),
            "https://shcr.example.nhs.uk/records"
        );
        let base = "[listeners.pas]\nbind = \"127.0.0.1:2575\"\n[api]\n";
        for good in [
            "https://shcr.example.nhs.uk",
            "http://10.0.0.1:8080/records/",
        ] {
            check(&format!("{base}public_url = \"{good}\"\n"), &[]);
        }
        let expected = "expected the address clients reach this server by, e.g. `https://shcr.example.nhs.uk` (`/fhir` is added)";
        let no_scheme = "does not start with `https://` or `http://`";
        for (bad, problem) in [
            ("shcr.example.nhs.uk", no_scheme),
            ("ftp://shcr.example.nhs.uk", no_scheme),
            ("https:/shcr.example.nhs.uk", no_scheme),
            ("https:shcr.example.nhs.uk", no_scheme),
            ("https:///path", "names no host"),
            (
                "https://ops@shcr.example.nhs.uk",
                "holds a user name or password",
            ),
            (
                "https://@shcr.example.nhs.uk",
                "holds a user name or password",
            ),
            (
                " https://shcr.example.nhs.uk",
                "holds white space or a control character",
            ),
            (
                "https://shcr.example.nhs.uk/a b",
                "holds white space or a control character",
            ),
            (
                "https://shcr.example.nhs.uk:99999",
                "is not a URL (invalid port number)",
            ),
            (
                "https://shcr.example.nhs.uk/?a=1",
                "has a query or a fragment",
            ),
            (
                "https://shcr.example.nhs.uk/#x",
                "has a query or a fragment",
            ),
            ("https://shcr.example.nhs.uk:0", "has port 0"),
            // (`\\` in the TOML file: one backslash)
            ("https://shcr.example.nhs.uk\\\\fhir", "holds a backslash"),
        ] {
            check(
                &format!("{base}public_url = \"{bad}\"\n"),
                &[&format!(
                    "junction.toml:4:14: error: public_url {problem}, {expected}"
                )],
            );
        }
    }

    #[test]
    fn a_postgres_url_is_checked_where_written_and_never_holds_a_password() {
        let base = "[listeners.pas]\nbind = \"127.0.0.1:2575\"\n[store]\n";
        check(
            &format!("{base}url = \"postgres://junction:s3cret@db.trust.nhs.uk/junction\"\n"),
            &["junction.toml:4:7: error: url holds a password: secrets are never kept in the config file, give it through `password_env` (an environment variable) or `password_file`"],
        );
        let diags = diagnostics(&format!("{base}url = \"postgres://db/junction?port=x\"\n"));
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert!(
            diags[0]
                .starts_with("junction.toml:4:7: error: url is not a PostgreSQL connection URL"),
            "{diags:?}"
        );
        check(
            &format!("{base}url = \"postgres://junction@db.trust.nhs.uk/junction\"\n"),
            &["junction.toml:4:7: warning: the record store's PostgreSQL is not on loopback and `tls_ca_file` is not set: records and passwords cross the network unencrypted"],
        );
        check(
            &format!("{base}url = \"postgres://junction@127.0.0.1:5432/junction\"\n"),
            &[],
        );
        check(
            &format!("{base}url = \"postgres://junction@db/junction?sslmode=require\"\n"),
            &["junction.toml:4:7: error: url asks for sslmode=require: give `tls_ca_file`, the CA the server's certificate must come from"],
        );
        check(
            &format!("{base}tls_ca_file = \"db-ca.pem\"\n"),
            &["junction.toml:4:15: error: tls_ca_file is only used with `url` (a PostgreSQL record store)"],
        );
        check(
            &format!("{base}password_env = \"PGPASS\"\n"),
            &["junction.toml:4:16: error: password_env is only used with `url` (a PostgreSQL record store)"],
        );
        check(
            &format!("{base}url = \"postgres://junction@localhost/junction\"\npassword_env = \"PGPASS\"\npassword_file = \"pg.pass\"\n"),
            &["junction.toml:6:17: error: store: give the password through `password_env` or `password_file`, not both"],
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("junction.toml");
        std::fs::write(
            &file,
            format!("{base}url = \"postgres://junction@db:5433/junction\"\npassword_file = \"secrets/pg.pass\"\n"),
        )
        .unwrap();
        let config = load(&file).unwrap();
        assert_eq!(
            config.store.url.as_deref(),
            Some("postgres://junction@db:5433/junction")
        );
        assert_eq!(
            config.store.password_file,
            Some(dir.path().join("secrets/pg.pass"))
        );
        // a CA file that cannot be used is found by `junction check`
        std::fs::write(
            &file,
            format!(
                "{base}url = \"postgres://junction@db/junction\"\ntls_ca_file = \"db-ca.pem\"\n"
            ),
        )
        .unwrap();
        let diags: Vec<String> = load(&file)
            .unwrap_err()
            .iter()
            .map(Diagnostic::one_line)
            .collect();
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert!(
            diags[0].contains(":5:15: error: store: TLS `tls_ca_file`")
                && diags[0].contains("db-ca.pem: cannot be read"),
            "{diags:?}"
        );
    }

    #[test]
    fn allowed_peers_are_checked_where_written() {
        check(
            "[listeners.pas]\nbind = \"127.0.0.1:2575\"\nallowed_peers = [\"10.0.0.0/8\", \"10.1\"]\n",
            &["junction.toml:3:17: error: invalid peer `10.1`, expected an IP address (`10.1.2.3`) or a network in CIDR form (`10.1.0.0/16`)"],
        );
        let (config, diags) = parse(
            Path::new("junction.toml"),
            "[listeners.pas]\nbind = \"127.0.0.1:2575\"\nallowed_peers = [\"10.0.0.0/8\", \"::1\"]\n",
        );
        assert!(diags.is_empty(), "{diags}");
        let peers = &config.unwrap().listeners["pas"].allowed_peers;
        assert!(peers[0].contains("10.9.8.7".parse().unwrap()));
        assert!(peers[1].contains("::1".parse().unwrap()));
    }

    #[test]
    fn an_mllp_destination_tls_needs_its_ca_and_both_halves_of_its_certificate() {
        check(
            "[destinations.lab]\nkind = \"mllp\"\naddress = \"lab:2575\"\ntls_cert_file = \"c.pem\"\n",
            &[
                "junction.toml:4:17: error: destination `lab`: the `tls_*` keys need `tls_ca_file` (the CA the listener's certificate chains to)",
                "junction.toml:4:17: error: destination `lab`: `tls_cert_file` and `tls_key_file` go together",
                "junction.toml: warning: no `[listeners.<id>]` table: `junction serve` will not accept any messages",
            ],
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("junction.toml");
        std::fs::write(
            &file,
            "[destinations.lab]\nkind = \"mllp\"\naddress = \"lab:2575\"\ntls_ca_file = \"ca.pem\"\n\n\
             [listeners.pas]\nbind = \"127.0.0.1:2575\"\n",
        )
        .unwrap();
        let lines: Vec<String> = load(&file)
            .unwrap_err()
            .iter()
            .map(Diagnostic::one_line)
            .collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("junction.toml:4:15: error: destination `lab`: TLS `tls_ca_file`")
                && lines[0].contains("ca.pem: cannot be read"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_listener_tls_file_that_cannot_be_used_is_reported_at_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("junction.toml");
        std::fs::write(dir.path().join("junk.pem"), "not a key\n").unwrap();
        std::fs::write(
            &file,
            "[listeners.pas]\nbind = \"127.0.0.1:2575\"\n\n[listeners.pas.tls]\n\
             cert_file = \"tls/missing.pem\"\nkey_file = \"junk.pem\"\n",
        )
        .unwrap();
        let diags = load(&file).unwrap_err();
        let lines: Vec<String> = diags.iter().map(Diagnostic::one_line).collect();
        // both files said in one run
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].contains("junction.toml:5:13: error: listener `pas`: TLS `cert_file`")
                && lines[0].contains("tls/missing.pem: cannot be read"),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("junction.toml:6:12: error: listener `pas`: TLS `key_file`"),
            "{lines:?}"
        );
    }

    #[test]
    fn application_ack_names_an_mllp_destination() {
        let listener = |extra: &str| {
            format!(
                "[listeners.pas]\nbind = \"127.0.0.1:2575\"\n{extra}\n\n\
                 [destinations.store]\nkind = \"store\"\n\n\
                 [destinations.pas_acks]\nkind = \"mllp\"\naddress = \"127.0.0.1:3575\"\n"
            )
        };
        check(&listener("application_ack = \"pas_acks\""), &[]);
        check(
            &listener("application_ack = \"pas_ack\""),
            &["junction.toml:3:19: error: listener `pas`: application_ack names unknown destination `pas_ack`, expected one of the `[destinations.<id>]` of kind \"mllp\" (`pas_acks`)"],
        );
        check(
            &listener("application_ack = \"store\""),
            &["junction.toml:3:19: error: listener `pas`: application_ack names destination `store` of kind \"store\", expected kind \"mllp\": an application acknowledgement is an HL7 message for the sender's own listener"],
        );
        check(
            &listener("ack_mode = \"original\"\napplication_ack = \"pas_acks\""),
            &["junction.toml:4:19: warning: listener `pas`: application_ack is never used with ack_mode = \"original\" (its AA/AE/AR is the application acknowledgement)"],
        );
    }

    #[test]
    fn delivery_sections_are_checked() {
        let source = format!(
            "{GOOD}\n[destinations.store]\nkind = \"store\"\n\n\
             [destinations.hwe]\nkind = \"mesh\"\nmailbox = \"nope\"\nto = \"X26ABC2\"\n\n\
             [destinations.lab]\nkind = \"fhir\"\nurll = \"http://x\"\n\n\
             [sources.inbox]\nkind = \"mesh_inbox\"\nmailbox = \"junction\"\n\n\
             [mesh.mailboxes.junction]\nurl = \"http://127.0.0.1:8700\"\nmailbox = \"X26ABC1\"\npassword_env = \"P\"\nshared_key_env = \"K\"\n"
        );
        let found = diagnostics(&source);
        assert_eq!(
            found,
            [
                "junction.toml:10:1: error: destination `hwe` (kind = \"mesh\") needs `workflow_id`",
                "junction.toml:12:11: error: destination `hwe`: unknown mailbox `nope`, expected one of the `[mesh.mailboxes.<id>]` tables (`junction`)",
                "junction.toml:17:1: error: unknown field `urll`, expected one of `kind`, `external`, `mailbox`, `to`, `workflow_id`, `subject`, `url`, `token_env`, `token_file`, `address`, `tls_ca_file`, `tls_cert_file`, `tls_key_file`, `tls_server_name`, `dir`, `payload`, `timeout_secs`, `max_attempts`, `max_age_secs`, `backoff_initial_ms`, `backoff_max_ms`, `concurrency` (did you mean `url`?)",
            ],
            "{source}"
        );
        let fixed = source
            .replace("urll", "url")
            .replace("\"nope\"", "\"junction\"")
            .replace("to = \"X26ABC2\"", "to = \"X26ABC2\"\nworkflow_id = \"W\"");
        let (config, diags) = parse(Path::new("junction.toml"), &fixed);
        assert!(!diags.has_errors(), "{diags}");
        // a recipient written as no MESH mailbox id is (lower case, a space)
        let odd = diagnostics(&fixed.replace("to = \"X26ABC2\"", "to = \"x26abc2 \""));
        assert_eq!(
            odd,
            ["junction.toml:13:6: error: destination `hwe`: `to` \"x26abc2 \" is not a MESH mailbox id (upper-case letters and digits: `X26ABC2`?)"],
        );
        let config = config.unwrap();
        assert_eq!(config.destinations["lab"].kind, DestinationKind::Fhir);
        assert_eq!(config.sources["inbox"].mailbox, "junction");
        assert_eq!(config.mesh.mailboxes["junction"].mailbox, "X26ABC1");
    }

    #[test]
    fn a_broken_mailbox_is_still_declared_and_an_undeclared_one_still_unknown() {
        // the mailbox `junction` has a problem of its own: references to it are
        // fine, a reference to a mailbox declared nowhere is still reported
        let source = format!(
            "{GOOD}\n[destinations.hwe]\nkind = \"mesh\"\nmailbox = \"junction\"\nto = \"X26ABC2\"\nworkflow_id = \"W\"\n\n\
             [sources.inbox]\nkind = \"mesh_inbox\"\nmailbox = \"nowhere\"\n\n\
             [mesh.mailboxes.junction]\nurl = \"http://127.0.0.1:8700\"\nmailbox = \"X26ABC1\"\npassword_env = \"P\"\nshared_key_env = \"K\"\ncolour = 1\n"
        );
        let found = diagnostics(&source);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].contains("source `inbox`: unknown mailbox `nowhere`"),
            "{found:?}"
        );
        assert!(found[1].contains("unknown field `colour`"), "{found:?}");
    }

    #[test]
    fn a_table_defined_twice_is_one_error_and_the_rest_still_checked() {
        let source = format!(
            "{GOOD}\n[listeners.pas]\nbind = \"127.0.0.1:2576\"\n\n[log]\nformat = \"yaml\"\n"
        );
        let found = diagnostics(&source);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found
                .iter()
                .any(|d| d.contains("table `[listeners.pas]` is already defined at line")),
            "{found:?}"
        );
        assert!(found.iter().any(|d| d.contains("yaml")), "{found:?}");
    }

    #[test]
    fn a_key_given_twice_is_named() {
        let found = diagnostics(
            "[listeners.pas]\nbind = \"127.0.0.1:2575\"\nbind = \"127.0.0.1:2576\"\n\n[log]\nformat = \"yaml\"\n",
        );
        assert_eq!(found.len(), 2, "and the rest still checked: {found:?}");
        assert!(found.iter().any(|d| d.contains("yaml")), "{found:?}");
        assert!(
            found[0].contains("`bind` is given twice in this table, expected it once"),
            "{found:?}"
        );
    }

    #[test]
    fn a_mailbox_secret_missing_doubled_or_typed_in_is_an_error() {
        let mailbox = |secrets: &str| {
            format!(
                "{GOOD}\n[mesh.mailboxes.junction]\nurl = \"http://127.0.0.1:8700\"\nmailbox = \"X26ABC1\"\n{secrets}"
            )
        };
        assert!(
            diagnostics(&mailbox("password_env = \"P\"\nshared_key_file = \"k\"\n")).is_empty()
        );
        let cases = [
            ("shared_key_env = \"K\"\n", "mailbox `junction`: no password: MESH needs one, give `password_env` (an environment variable) or `password_file`"),
            ("password_env = \"P\"\n", "mailbox `junction`: no shared_key: MESH needs one"),
            ("password_env = \"P\"\npassword_file = \"p\"\nshared_key_env = \"K\"\n", "mailbox `junction`: give the password through `password_env` or `password_file`, not both"),
            ("password_env = \"hunter2!\"\nshared_key_env = \"K\"\n", "mailbox `junction`: `password_env` is the name of an environment variable"),
        ];
        for (secrets, says) in cases {
            let found = diagnostics(&mailbox(secrets));
            assert!(
                found.iter().any(|d| d.contains(says)),
                "{secrets}: {found:?}"
            );
            assert!(found.iter().all(|d| !d.contains("hunter2")), "{found:?}");
        }
        // a FHIR destination's token: the env name, never the token, and not in the URL
        let fhir = |extra: &str| {
            format!("{GOOD}\n[destinations.lab]\nkind = \"fhir\"\nurl = \"https://fhir.example/r4\"\n{extra}")
        };
        assert!(diagnostics(&fhir("token_env = \"LAB_TOKEN\"\n")).is_empty());
        let found = diagnostics(&fhir("token_env = \"eyJhbGciOi.x.y\"\n"));
        assert!(
            found
                .iter()
                .any(|d| d.contains("`token_env` is the name of an environment variable")),
            "{found:?}"
        );
        assert!(found.iter().all(|d| !d.contains("eyJhbGciOi")), "{found:?}");
        let found = diagnostics(&fhir("token_env = \"T\"\ntoken_file = \"t\"\n"));
        assert!(found.iter().any(|d| d.contains("give the token through `token_env` or `token_file`, not both")), "{found:?}");
        let found = diagnostics(&fhir("").replace("https://", "https://abc123@"));
        assert!(
            found.iter().any(|d| d.contains("url holds a token")),
            "{found:?}"
        );
        let found = diagnostics(&fhir("").replace("/r4\"", "/r4?access_token=abc123\""));
        assert!(
            found
                .iter()
                .any(|d| d.contains("url holds a token in its query")),
            "{found:?}"
        );
        assert!(found.iter().all(|d| !d.contains("abc123")), "{found:?}");
    }

    #[test]
    fn a_password_in_a_mailbox_or_destination_url_is_refused() {
        let source = format!(
            "{GOOD}\n[destinations.lab]\nkind = \"fhir\"\nurl = \"https://lab:s3cret@fhir.example/r4\"\n\n\
             [mesh.mailboxes.junction]\nurl = \"https://X26ABC1:password@mesh.example\"\nmailbox = \"X26ABC1\"\npassword_env = \"P\"\nshared_key_env = \"K\"\n"
        );
        let found = diagnostics(&source);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].contains("destination `lab`: url holds a password"),
            "{found:?}"
        );
        assert!(
            found[1].contains("mailbox `junction`: url holds a password"),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .all(|d| !d.contains("s3cret") && !d.contains("X26ABC1:password")),
            "{found:?}"
        );
        let fine = source
            .replace("lab:s3cret@", "")
            .replace("X26ABC1:password@", "");
        assert!(diagnostics(&fine).is_empty());
    }

    #[test]
    fn payload_original_is_for_mesh_and_file_destinations() {
        let with = |kind_and_keys: &str| {
            format!("{GOOD}\n[destinations.out]\n{kind_and_keys}\npayload = \"original\"\n")
        };
        let found = diagnostics(&with("kind = \"file\"\ndir = \"out\""));
        assert!(found.is_empty(), "{found:?}");
        let found = diagnostics(&with("kind = \"fhir\"\nurl = \"http://x\""));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].ends_with(
                "error: destination `out`: payload = \"original\" applies to mesh and file \
                 destinations, expected it left out (an mllp destination always forwards the \
                 original; store and fhir take the document)"
            ),
            "{found:?}"
        );
        let found = diagnostics(&format!(
            "{GOOD}\n[destinations.out]\nkind = \"file\"\ndir = \"out\"\npayload = \"hl7\"\n"
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("unknown variant `hl7`, expected `document` or `original`"),
            "{found:?}"
        );
    }

    #[test]
    fn unknown_section() {
        check(
            "[listener.pas]\nbind = \"127.0.0.1:2575\"\n",
            &[
                "junction.toml:1:2: error: unknown field `listener`, expected one of `listeners`, `sources`, `destinations`, `mesh`, `store`, `api`, `log`, `engine`",
                "junction.toml: warning: no `[listeners.<id>]` table: `junction serve` will not accept any messages",
            ],
        );
    }

    #[test]
    fn every_error_in_one_table_is_reported() {
        let d =
            diagnostics("[listeners.pas]\nbind = 2575\ntimeout = 3\nmax_connections = \"many\"\n");
        assert_eq!(d.len(), 3, "{d:#?}");
        assert!(
            d[0].starts_with("junction.toml:2:8: error: invalid type: integer `2575`"),
            "{d:#?}"
        );
        assert!(
            d[1].starts_with("junction.toml:3:1: error: unknown field `timeout`"),
            "{d:#?}"
        );
        assert!(
            d[2].starts_with("junction.toml:4:19: error: invalid type: string \"many\""),
            "{d:#?}"
        );
    }

    #[test]
    fn errors_in_several_sections_are_all_reported() {
        let d = diagnostics(
            "[listeners.a]\nbind = \"127.0.0.1:1\"\nbogus = 1\n\n[store]\nsync = \"sometimes\"\n\n[log]\nformat = \"xml\"\n",
        );
        assert_eq!(d.len(), 3, "{d:#?}");
        assert!(d[0].starts_with("junction.toml:3:1: error: unknown field `bogus`"));
        assert!(d[1].starts_with("junction.toml:6:8: error: unknown variant `sometimes`"));
        assert!(d[2].starts_with("junction.toml:9:10: error: unknown variant `xml`"));
    }

    /// An unknown key does not hide what is wrong with the table's other
    /// values (s24b tester, L1): both are reported.
    #[test]
    fn an_unknown_key_does_not_hide_a_bad_value_beside_it() {
        let d = diagnostics("[api]\npublic_url = \"ftp://x\"\nfoo = 1\n");
        let errors: Vec<&String> = d.iter().filter(|m| m.contains("error:")).collect();
        assert_eq!(errors.len(), 2, "{d:#?}");
        assert!(
            errors[0].starts_with("junction.toml:2:14: error: public_url"),
            "{d:#?}"
        );
        assert!(
            errors[1].starts_with("junction.toml:3:1: error: unknown field `foo`"),
            "{d:#?}"
        );
    }

    /// A word setting given another type says what it wants (s24b tester,
    /// L5: it said "wanted string or table").
    #[test]
    fn a_word_setting_of_another_type_says_what_it_wants() {
        let d = diagnostics(
            "[store]\nsync = 1\n\n[log]\nformat = [\"json\"]\n\n[destinations.x]\nkind = true\n",
        );
        assert!(d.len() >= 3, "{d:#?}");
        assert!(
            d[0].contains("invalid type: integer `1`, expected `full` or `normal`"),
            "{d:#?}"
        );
        assert!(
            d[1].contains("invalid type: sequence, expected `text` or `json`"),
            "{d:#?}"
        );
        assert!(
            d[2].contains("expected one of `store`, `mesh`, `fhir`, `mllp`, `file`"),
            "{d:#?}"
        );
    }

    #[test]
    fn missing_bind_is_reported_once() {
        let d = diagnostics("[listeners.pas]\nmax_connections = 3\n");
        assert_eq!(d.len(), 1, "{d:#?}");
        assert!(d[0].contains("missing field `bind`"), "{d:#?}");
    }

    #[test]
    fn syntax_errors_are_all_reported() {
        let d = diagnostics("[api\nbind = \"x\"\n\nfoo = = 1\n");
        assert!(d.len() >= 2, "{d:#?}");
        assert!(d[0].starts_with("junction.toml:1:"), "{d:#?}");
        assert!(
            d.iter().any(|l| l.starts_with("junction.toml:4:")),
            "{d:#?}"
        );
    }

    #[test]
    fn duplicate_binds() {
        check(
            "[listeners.a]\nbind = \"127.0.0.1:2575\"\n[listeners.b]\nbind = \"0.0.0.0:2575\"\n[api]\nbind = \"127.0.0.1:2575\"\n",
            &[
                "junction.toml:4:8: warning: listener `b` binds 0.0.0.0:2575 without TLS: messages (patient data) cross the network in clear",
                "junction.toml:4:8: error: listener `b` binds 0.0.0.0:2575, which listener `a` already uses (127.0.0.1:2575)",
                "junction.toml:6:8: error: the API binds 127.0.0.1:2575, which listener `a` already uses (127.0.0.1:2575)",
                "junction.toml:6:8: error: the API binds 127.0.0.1:2575, which listener `b` already uses (0.0.0.0:2575)",
            ],
        );
    }

    #[test]
    fn listener_on_the_default_api_port() {
        check(
            "[listeners.a]\nbind = \"127.0.0.1:8080\"\n",
            &["junction.toml:2:8: error: the API binds 127.0.0.1:8080 (its default), which listener `a` already uses (127.0.0.1:8080)"],
        );
    }

    #[test]
    fn zero_and_absurd_limits() {
        check(
            "[listeners.a]\nbind = \"127.0.0.1:1\"\nmax_connections = 0\nmax_message_bytes = 0\nidle_timeout_secs = 0\nframe_timeout_secs = 0\n[listeners.b]\nbind = \"127.0.0.1:2\"\nmax_message_bytes = 2000000000000\n",
            &[
                "junction.toml:3:19: error: listener `a`: max_connections is 0, expected at least 1",
                "junction.toml:4:21: error: listener `a`: max_message_bytes is 0, expected at least 1",
                "junction.toml:5:21: error: listener `a`: idle_timeout_secs is 0, expected at least 1",
                "junction.toml:6:22: error: listener `a`: frame_timeout_secs is 0, expected at least 1",
                "junction.toml:9:21: error: listener `b`: max_message_bytes is 2000000000000, expected at most 1073741824 (1 GiB)",
            ],
        );
    }

    #[test]
    fn non_loopback_api_is_a_warning() {
        let (config, diags) = parse(
            Path::new("junction.toml"),
            "[listeners.a]\nbind = \"0.0.0.0:2575\"\n[api]\nbind = \"0.0.0.0:8080\"\n",
        );
        assert!(config.is_some());
        assert_eq!(diags.error_count(), 0, "{diags}");
        // the API's, and the listener's without TLS
        assert_eq!(diags.warning_count(), 2, "{diags}");
        assert!(diags.to_string().contains("not loopback"), "{diags}");
        assert!(diags.to_string().contains("need bearer tokens"), "{diags}");
        assert!(
            diags.to_string().contains(
                "listener `a` binds 0.0.0.0:2575 without TLS: messages (patient data) cross the network in clear"
            ),
            "{diags}"
        );
        assert!(diags.to_string().contains("[listeners.a.tls]"), "{diags}");
    }

    #[test]
    fn bad_log_level_and_bad_listener_id() {
        let d = diagnostics(
            "[listeners.\"p a s\"]\nbind = \"127.0.0.1:1\"\n[log]\nlevel = \"junction=loud\"\n",
        );
        assert_eq!(d.len(), 2, "{d:#?}");
        assert!(
            d[0].starts_with("junction.toml:1:12: error: invalid listener id `p a s`"),
            "{d:#?}"
        );
        assert!(
            d[1].starts_with("junction.toml:4:9: error: invalid log level `junction=loud`"),
            "{d:#?}"
        );
        // a word that is no level: tracing would take it for a target and
        // log nothing else at all (s24 tester, H1)
        check(
            "[listeners.pas]\nbind = \"127.0.0.1:2575\"\n[log]\nlevel = \"warning\"\n",
            &["junction.toml:4:9: error: invalid log level `warning`: `warning` is not a level (trace, debug, info, warn, error, off); a target takes one after `=`, as in `junction=debug` (expected e.g. `info` or `junction=debug,warn`)"],
        );
    }

    #[test]
    fn wrong_type_for_a_whole_section() {
        let d = diagnostics("listeners = 3\nstore = \"x\"\n");
        assert_eq!(d.len(), 2, "{d:#?}");
        assert!(
            d[0].starts_with("junction.toml:1:13: error: invalid type: integer"),
            "{d:#?}"
        );
        assert!(
            d[1].starts_with("junction.toml:2:9: error: invalid type: string"),
            "{d:#?}"
        );
    }

    #[test]
    fn load_resolves_paths_and_reports_unreadable_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("junction.toml");
        std::fs::write(&file, GOOD).unwrap();
        let config = load(&file).unwrap();
        assert_eq!(config.store.path, dir.path().join("data/junction.db"));

        let missing = dir.path().join("nope.toml");
        let err = load(&missing).unwrap_err();
        assert!(err.to_string().contains("cannot read config file"), "{err}");

        std::fs::write(&file, b"[api]\nbind = \"\xff\"\n").unwrap();
        let err = load(&file).unwrap_err();
        assert!(err.to_string().contains("junction.toml:2:9"), "{err}");
        assert!(err.to_string().contains("invalid UTF-8"), "{err}");

        std::fs::create_dir(dir.path().join("db")).unwrap();
        std::fs::write(&file, format!("{GOOD}[store]\npath = \"db\"\n")).unwrap();
        let err = load(&file).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
    }

    #[test]
    fn config_dir_of_bare_and_nested_paths() {
        assert_eq!(config_dir(Path::new("junction.toml")), PathBuf::from("."));
        assert_eq!(config_dir(Path::new("etc/j.toml")), PathBuf::from("etc"));
    }
}
