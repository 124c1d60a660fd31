//! Compiling route files (`(file, text)` pairs) into a [`RouteSet`]. Pure.
//!
//! Each file is parsed into a spanned tree with error recovery (every syntax
//! error is reported); each `[routes.<id>]` is deserialized on its own with
//! `deny_unknown_fields`, and after an error the offending key is removed and the
//! route tried again, so one typo does not hide the next. Semantic checks (message
//! patterns, ids, conditions) point at the value, inside the `when` string when
//! the problem is there. Cross-file checks (unique ids and table names, tables a
//! condition looks up) run once every file is read.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use super::condition::{normalise, Condition, Tables};
use super::{
    Location, MessagePattern, Route, RouteError, RouteSet, RouteTest, Spanned, TestOrigin,
};

/// A `[routes.<id>]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteToml {
    /// Free text shown by `junction check` and the dashboard.
    description: Option<String>,
    /// `[listeners.<id>]` the message may come in through.
    #[serde(default)]
    listeners: Vec<toml::Spanned<String>>,
    /// `[sources.<id>]` (MESH inboxes) the document may come in through.
    #[serde(default)]
    sources: Vec<toml::Spanned<String>>,
    /// `CODE^TRIGGER` patterns; `*` matches any part.
    messages: toml::Spanned<Vec<toml::Spanned<String>>>,
    /// MSH-3 values.
    #[serde(default)]
    sending_applications: Vec<toml::Spanned<String>>,
    /// MSH-4 values.
    #[serde(default)]
    sending_facilities: Vec<toml::Spanned<String>>,
    /// A condition on the document.
    when: Option<toml::Spanned<String>>,
    /// The mapping name; may be left out only by a route that names `sources`
    /// and no `listeners` (passthrough: the document is the received Bundle).
    mapping: Option<toml::Spanned<String>>,
    /// Destination ids.
    destinations: toml::Spanned<Vec<toml::Spanned<String>>>,
}

/// A `[[test]]` case as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestToml {
    name: String,
    /// The message file, relative to the route file's folder.
    message: toml::Spanned<String>,
    /// The listener the message is taken to come in through.
    listener: Option<toml::Spanned<String>>,
    /// Or the source.
    source: Option<toml::Spanned<String>>,
    /// For a document (a JSON Bundle) arriving through a source: the message
    /// type the source journals it under, e.g. `MESH^TEST_WORKFLOW`.
    message_type: Option<toml::Spanned<String>>,
    /// For such a document: who sent it (a MESH document's sending mailbox,
    /// what `sending_applications` matches).
    sender: Option<toml::Spanned<String>>,
    /// Every destination expected (any order); empty for "unrouted".
    expect: Vec<toml::Spanned<String>>,
}

const TOP_LEVEL: &[&str] = &["routes", "tables", "test"];

/// Where a route or table was first defined, for "already defined" errors.
struct Defined {
    file: PathBuf,
    line: usize,
}

/// A table a condition looks up, and where its name is written.
struct TableRef {
    route: String,
    table: String,
    at: Location,
}

struct Compiler {
    errors: Vec<RouteError>,
    routes: Vec<Route>,
    /// Routes with problems of their own: kept only so their references
    /// (listeners, sources, mapping, destinations) are checked in the same run.
    broken: Vec<Route>,
    route_defs: BTreeMap<String, Defined>,
    tables: Tables,
    table_defs: BTreeMap<String, Defined>,
    table_refs: Vec<TableRef>,
    tests: Vec<RouteTest>,
}

pub(crate) fn compile(files: &[(PathBuf, String)]) -> Result<RouteSet, Vec<RouteError>> {
    let (set, errors) = compile_partial(files);
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

/// Compiles what it can: the routes without problems (so their references can
/// still be checked) and every problem found.
pub(crate) fn compile_partial(files: &[(PathBuf, String)]) -> (RouteSet, Vec<RouteError>) {
    let mut c = Compiler {
        errors: Vec::new(),
        routes: Vec::new(),
        broken: Vec::new(),
        route_defs: BTreeMap::new(),
        tables: Tables::new(),
        table_defs: BTreeMap::new(),
        table_refs: Vec::new(),
        tests: Vec::new(),
    };
    for (file, text) in files {
        c.file(file, Arc::from(text.as_str()));
    }
    for r in std::mem::take(&mut c.table_refs) {
        if !c.tables.contains_key(&r.table) {
            let known: Vec<&str> = c.tables.keys().map(String::as_str).collect();
            c.errors.push(r.at.error(format!(
                "route `{}` looks up unknown table `{}`{}",
                r.route,
                r.table,
                super::expected(&r.table, &known, "`[tables.<name>]` of any route file")
            )));
        }
    }
    // In file order, then by position in the file.
    let index = |e: &RouteError| files.iter().position(|(f, _)| *f == e.file);
    c.errors.sort_by_key(|e| (index(e), e.span.start));
    (
        RouteSet {
            routes: c.routes,
            broken: c.broken,
            tables: c.tables,
            tests: c.tests,
        },
        c.errors,
    )
}

/// File-level context for errors.
struct File<'a> {
    path: &'a PathBuf,
    source: Arc<str>,
}

impl File<'_> {
    fn at(&self, span: Range<usize>) -> Location {
        Location {
            file: self.path.clone(),
            source: self.source.clone(),
            span,
        }
    }

    fn error(&self, span: Range<usize>, message: impl Into<String>) -> RouteError {
        RouteError::at(self.path, &self.source, span, message.into())
    }
}

/// Ids name routes, tables and destinations in logs, metrics and the API.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Compiler {
    fn file(&mut self, path: &PathBuf, source: Arc<str>) {
        let file = File {
            path,
            source: source.clone(),
        };
        // a table defined twice: one error, and the rest of the file still checked
        let (text, duplicates) = crate::config::without_duplicate_tables(&source);
        for (span, message) in duplicates {
            self.errors.push(file.error(span, message));
        }
        let (root, errors) = DeTable::parse_recoverable(&text);
        if !errors.is_empty() {
            // a key given twice (the first is kept) leaves the rest readable
            let only_duplicates = errors.iter().all(|e| e.message().trim() == "duplicate key");
            for e in errors {
                let span = e.span().unwrap_or(0..0);
                let message = crate::config::toml_error(e.message(), &source, &span);
                self.errors.push(file.error(span, message));
            }
            if !only_duplicates {
                return;
            }
        }
        let root = root.get_ref();
        for (key, value) in sorted(root) {
            match key.get_ref().as_ref() {
                "routes" => self.routes_table(&file, value),
                "tables" => self.tables_table(&file, value),
                "test" => self.tests(&file, value),
                other => {
                    let hint = if other == "route" {
                        " (a route is a table named by its id: `[routes.<id>]`)"
                    } else {
                        ""
                    };
                    self.errors.push(file.error(
                        key.span(),
                        format!(
                            "unknown field `{other}`{hint}, expected {}",
                            quoted_list(TOP_LEVEL)
                        ),
                    ));
                }
            }
        }
    }

    fn routes_table(&mut self, file: &File<'_>, value: &toml::Spanned<DeValue<'_>>) {
        let Some(table) = value.get_ref().as_table() else {
            self.errors.push(file.error(
                value.span(),
                format!(
                    "invalid type: {}, expected tables of routes such as `[routes.adt_to_store]`",
                    value.get_ref().type_str()
                ),
            ));
            return;
        };
        for (id, route) in sorted(table) {
            let id_text = id.get_ref().to_string();
            let mut ok = true;
            if !valid_id(&id_text) {
                self.errors.push(file.error(
                    id.span(),
                    format!("invalid route id `{id_text}`, expected letters, digits, `-` or `_`"),
                ));
                ok = false;
            }
            let line = RouteError::at(file.path, &file.source, id.span(), String::new()).line;
            if let Some(first) = self.route_defs.get(&id_text) {
                self.errors.push(file.error(
                    id.span(),
                    format!(
                        "route id `{id_text}` is already defined at {}:{}, expected unique route ids across route files",
                        first.file.display(),
                        first.line
                    ),
                ));
                ok = false;
            } else {
                self.route_defs.insert(
                    id_text.clone(),
                    Defined {
                        file: file.path.clone(),
                        line,
                    },
                );
            }
            if route.get_ref().as_table().is_none() {
                self.errors.push(file.error(
                    route.span(),
                    format!(
                        "invalid type: {}, expected a table `[routes.{id_text}]`",
                        route.get_ref().type_str()
                    ),
                ));
                continue;
            }
            let Some(raw) = deserialize_all::<RouteToml>(file, route, &mut self.errors) else {
                continue;
            };
            let (r, valid) = self.route(file, &id_text, raw, id.span());
            if ok && valid {
                self.routes.push(r);
            } else {
                self.broken.push(r);
            }
        }
    }

    /// Semantic checks of one route: the route, and whether every check
    /// passed (errors pushed for those that did not; what could be read of a
    /// route that failed is still returned, for its references' checks).
    fn route(
        &mut self,
        file: &File<'_>,
        id: &str,
        raw: RouteToml,
        route_span: Range<usize>,
    ) -> (Route, bool) {
        let before = self.errors.len();
        let listeners = self.ids(file, &raw.listeners, "listener");
        let sources = self.ids(file, &raw.sources, "source");
        if raw.messages.get_ref().is_empty() {
            self.errors.push(file.error(
                raw.messages.span(),
                format!("route `{id}` has an empty `messages` list, expected at least one pattern such as `ADT^A01`, `ADT^*` or `*^*`"),
            ));
        }
        let messages: Vec<MessagePattern> = raw
            .messages
            .get_ref()
            .iter()
            .filter_map(|m| match parse_pattern(m.get_ref()) {
                Ok(mut p) => {
                    p.at = Some(file.at(m.span()));
                    Some(p)
                }
                Err(msg) => {
                    self.errors.push(file.error(m.span(), msg));
                    None
                }
            })
            .collect();
        let sending_applications = self.hd_values(file, &raw.sending_applications, "MSH-3");
        let sending_facilities = self.hd_values(file, &raw.sending_facilities, "MSH-4");
        let mapping = match &raw.mapping {
            Some(m) => {
                let name = m.get_ref().trim();
                let valid = valid_id(name);
                if !valid {
                    self.errors.push(file.error(
                        m.span(),
                        format!("invalid mapping name `{name}`, expected the name of a mapping in mappings/ (letters, digits, `-` or `_`)"),
                    ));
                }
                Spanned {
                    // (an invalid name is not looked up again as unknown)
                    value: if valid { name } else { "" }.to_string(),
                    at: file.at(m.span()),
                }
            }
            // Passthrough: documents from a source are already Bundles.
            None if !sources.is_empty() && listeners.is_empty() => Spanned {
                value: String::new(),
                at: sources[0].at.clone(),
            },
            None => {
                let why = if sources.is_empty() {
                    "a route without `sources` maps HL7 messages"
                } else {
                    "a route that also names `listeners` receives HL7 messages there"
                };
                self.errors.push(file.error(
                    route_span.clone(),
                    format!("route `{id}` has no `mapping`, expected the name of a mapping in mappings/ ({why}; only a route whose origin is `sources` alone may omit it and pass the received document through)"),
                ));
                Spanned {
                    value: String::new(),
                    at: file.at(route_span),
                }
            }
        };
        if raw.destinations.get_ref().is_empty() {
            self.errors.push(file.error(
                raw.destinations.span(),
                format!("route `{id}` has an empty `destinations` list, expected at least one destination id"),
            ));
        }
        let mut destinations: Vec<Spanned> = Vec::new();
        for d in raw.destinations.get_ref() {
            let v = d.get_ref().trim();
            if !valid_id(v) {
                self.errors.push(file.error(
                    d.span(),
                    format!("invalid destination id `{v}`, expected letters, digits, `-` or `_`"),
                ));
            } else if !destinations.iter().any(|x| x.value == v) {
                destinations.push(Spanned {
                    value: v.to_string(),
                    at: file.at(d.span()),
                });
            }
        }
        let when = raw.when.as_ref().and_then(|w| self.condition(file, id, w));
        let valid = self.errors.len() == before;
        let route = Route {
            id: id.to_string(),
            description: raw.description,
            file: file.path.clone(),
            listeners,
            sources,
            messages,
            sending_applications,
            sending_facilities,
            when,
            mapping,
            destinations,
        };
        (route, valid)
    }

    fn ids(
        &mut self,
        file: &File<'_>,
        values: &[toml::Spanned<String>],
        what: &str,
    ) -> Vec<Spanned> {
        let mut out = Vec::new();
        for v in values {
            let id = v.get_ref().trim();
            if valid_id(id) {
                out.push(Spanned {
                    value: id.to_string(),
                    at: file.at(v.span()),
                });
            } else {
                self.errors.push(file.error(
                    v.span(),
                    format!("invalid {what} id `{id}`, expected letters, digits, `-` or `_`"),
                ));
            }
        }
        out
    }

    fn hd_values(
        &mut self,
        file: &File<'_>,
        values: &[toml::Spanned<String>],
        field: &str,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for v in values {
            let n = normalise(v.get_ref());
            if n.is_empty() {
                self.errors.push(file.error(
                    v.span(),
                    format!(
                        "empty {field} value, expected a sending system such as `PAS` or `RAL01`"
                    ),
                ));
            } else {
                out.push(n);
            }
        }
        out
    }

    fn condition(
        &mut self,
        file: &File<'_>,
        route: &str,
        w: &toml::Spanned<String>,
    ) -> Option<(String, Condition)> {
        let text = w.get_ref();
        match Condition::parse(text) {
            Ok(cond) => {
                for (table, offset) in cond.tables() {
                    let start = content_offset(&file.source, w.span(), text, offset);
                    self.table_refs.push(TableRef {
                        route: route.to_string(),
                        table: table.to_string(),
                        at: file.at(start..start + table.len()),
                    });
                }
                Some((text.clone(), cond))
            }
            Err(e) => {
                let start = content_offset(&file.source, w.span(), text, e.offset);
                self.errors.push(file.error(
                    start..start + e.len.max(1),
                    format!("in `when` of route `{route}`: {}", e.message),
                ));
                None
            }
        }
    }

    fn tests(&mut self, file: &File<'_>, value: &toml::Spanned<DeValue<'_>>) {
        let Some(cases) = value.get_ref().as_array() else {
            self.errors.push(file.error(
                value.span(),
                format!(
                    "invalid type: {}, expected `[[test]]` tables",
                    value.get_ref().type_str()
                ),
            ));
            return;
        };
        for case in cases.iter() {
            let Some(raw) = deserialize_all::<TestToml>(file, case, &mut self.errors) else {
                continue;
            };
            let origin = match (&raw.listener, &raw.source) {
                (Some(_), Some(s)) => {
                    self.errors.push(file.error(
                        s.span(),
                        format!(
                            "test `{}` names both a listener and a source, expected one of them",
                            raw.name
                        ),
                    ));
                    continue;
                }
                (Some(l), None) => {
                    Some((false, self.ids(file, std::slice::from_ref(l), "listener")))
                }
                (None, Some(s)) => Some((true, self.ids(file, std::slice::from_ref(s), "source"))),
                (None, None) => None,
            };
            let origin = match origin {
                None => TestOrigin::Unknown,
                Some((_, ids)) if ids.is_empty() => continue,
                Some((false, mut ids)) => TestOrigin::Listener(ids.remove(0).value),
                Some((true, mut ids)) => TestOrigin::Source(ids.remove(0).value),
            };
            let message_type = match &raw.message_type {
                Some(t) if !matches!(origin, TestOrigin::Source(_)) => {
                    self.errors.push(file.error(
                        t.span(),
                        format!(
                            "test `{}` gives a `message_type` without a `source`, expected `source = \"<id>\"` (only documents from a source carry one)",
                            raw.name
                        ),
                    ));
                    continue;
                }
                Some(t) => match parse_pattern(t.get_ref()) {
                    Ok(p) if p.code != "*" && p.trigger != "*" => {
                        Some(format!("{}^{}", p.code, p.trigger))
                    }
                    _ => {
                        self.errors.push(file.error(
                            t.span(),
                            format!(
                                "invalid message type `{}`, expected `CODE^TRIGGER` without wildcards such as `MESH^TEST_WORKFLOW`",
                                t.get_ref()
                            ),
                        ));
                        continue;
                    }
                },
                None => None,
            };
            if let (Some(sender), None) = (&raw.sender, &message_type) {
                self.errors.push(file.error(
                    sender.span(),
                    format!(
                        "test `{}` gives a `sender` without a `message_type`, expected both for a document from a source (an HL7 message's sender is its MSH-3)",
                        raw.name
                    ),
                ));
                continue;
            }
            let expect = self.ids(file, &raw.expect, "destination");
            if expect.len() != raw.expect.len() {
                continue;
            }
            let folder = file.path.parent().unwrap_or(std::path::Path::new(""));
            self.tests.push(RouteTest {
                name: raw.name,
                file: file.path.clone(),
                message: folder.join(raw.message.get_ref()),
                message_at: file.at(raw.message.span()),
                origin,
                message_type,
                sender: raw.sender.map(|s| s.into_inner()),
                expect: expect.into_iter().map(|s| s.value).collect(),
            });
        }
    }

    fn tables_table(&mut self, file: &File<'_>, value: &toml::Spanned<DeValue<'_>>) {
        let Some(table) = value.get_ref().as_table() else {
            self.errors.push(file.error(
                value.span(),
                format!(
                    "invalid type: {}, expected lookup tables such as `[tables.practice_ics]`",
                    value.get_ref().type_str()
                ),
            ));
            return;
        };
        for (name, entries) in sorted(table) {
            let name_text = name.get_ref().to_string();
            if !valid_id(&name_text) {
                self.errors.push(file.error(
                    name.span(),
                    format!(
                        "invalid table name `{name_text}`, expected letters, digits, `-` or `_`"
                    ),
                ));
                continue;
            }
            let Some(entries) = entries.get_ref().as_table() else {
                self.errors.push(file.error(
                    entries.span(),
                    format!(
                        "invalid type: {}, expected a table of `KEY = \"value\"` pairs `[tables.{name_text}]`",
                        entries.get_ref().type_str()
                    ),
                ));
                continue;
            };
            let line = RouteError::at(file.path, &file.source, name.span(), String::new()).line;
            if let Some(first) = self.table_defs.get(&name_text) {
                self.errors.push(file.error(
                    name.span(),
                    format!(
                        "table `{name_text}` is already defined at {}:{}, expected unique table names across route files",
                        first.file.display(),
                        first.line
                    ),
                ));
                continue;
            }
            self.table_defs.insert(
                name_text.clone(),
                Defined {
                    file: file.path.clone(),
                    line,
                },
            );
            let mut map: BTreeMap<String, String> = BTreeMap::new();
            let mut keys: BTreeMap<String, String> = BTreeMap::new();
            for (key, v) in sorted(entries) {
                let Some(s) = v.get_ref().as_str() else {
                    self.errors.push(file.error(
                        v.span(),
                        format!(
                            "invalid type: {}, expected a string value in table `{name_text}`",
                            v.get_ref().type_str()
                        ),
                    ));
                    continue;
                };
                let k = normalise(key.get_ref());
                if let Some(other) = keys.get(&k) {
                    self.errors.push(file.error(
                        key.span(),
                        format!(
                            "key `{}` repeats `{other}` in table `{name_text}` (keys are compared ignoring case and spaces), expected unique keys",
                            key.get_ref()
                        ),
                    ));
                    continue;
                }
                keys.insert(k.clone(), key.get_ref().to_string());
                map.insert(k, s.to_string());
            }
            self.tables.insert(name_text, map);
        }
    }
}

/// `ADT^A01`, `ADT^*`, `*^*`.
pub(crate) fn parse_pattern(text: &str) -> Result<MessagePattern, String> {
    let bad = || {
        format!(
            "invalid message pattern `{text}`, expected `CODE^TRIGGER` such as `ADT^A01`, `ADT^*` or `ORU^R01`"
        )
    };
    let mut parts = text.trim().split('^');
    let (Some(code), Some(trigger), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    // `_` and `-` for MESH workflow ids (`MESH^TOC_FHIR_DISCHARGE`).
    let part_ok = |p: &str| {
        p == "*"
            || (!p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    };
    if !part_ok(code) || !part_ok(trigger) {
        return Err(bad());
    }
    Ok(MessagePattern {
        code: code.to_ascii_uppercase(),
        trigger: trigger.to_ascii_uppercase(),
        at: None,
    })
}

/// The byte offset in the file of byte `k` of a string value's content: exact
/// when the string is written without escapes, else the start of the value.
fn content_offset(source: &str, span: Range<usize>, content: &str, k: usize) -> usize {
    let raw = source.get(span.clone()).unwrap_or("");
    let mut prefix = if raw.starts_with("\"\"\"") || raw.starts_with("'''") {
        3
    } else if raw.starts_with('"') || raw.starts_with('\'') {
        1
    } else {
        return span.start;
    };
    // A newline right after the opening delimiter of a multi-line string is trimmed.
    if prefix == 3 {
        if raw[3..].starts_with("\r\n") {
            prefix += 2;
        } else if raw[3..].starts_with('\n') {
            prefix += 1;
        }
    }
    if raw
        .get(prefix..)
        .is_some_and(|rest| rest.starts_with(content))
    {
        span.start + prefix + k
    } else {
        span.start
    }
}

/// Table entries in file order (toml's map is sorted by key).
fn sorted<'t, 'i>(
    table: &'t DeTable<'i>,
) -> Vec<(
    &'t toml::Spanned<std::borrow::Cow<'i, str>>,
    &'t toml::Spanned<DeValue<'i>>,
)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    entries
}

/// Deserializes `value` as `T`, reporting every error (see
/// [`crate::config::deserialize_recovering`]) as a route file error.
fn deserialize_all<T: DeserializeOwned>(
    file: &File<'_>,
    value: &toml::Spanned<DeValue<'_>>,
    errors: &mut Vec<RouteError>,
) -> Option<T> {
    crate::config::deserialize_recovering(value, &mut |span, message| {
        errors.push(file.error(span, message))
    })
}

fn quoted_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}
