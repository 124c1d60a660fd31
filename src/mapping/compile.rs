//! Compiling a mapping file (TOML) into a plan: every key checked, every expression,
//! path, condition, table and transform resolved, every problem collected with its
//! `line:col`.
//!
//! The file is walked through `toml::de::DeTable`, which keeps the span of every key
//! and value, so an error inside an expression points at the exact character.
//!
//! # Invariants
//! - Compiling never stops at the first problem: all of them are returned.
//! - Entries are taken in file order (by span), whatever order the TOML map keeps.
//! - A plan holds no mapping text: only parsed expressions, compiled regexes and
//!   resolved table indices.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::Value;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::expr::{self, Cond, Expr, ExprError, Resolver, Stage, Term};
use super::fhir_elements;
use super::transform::{self, Transform};
use super::{MappingError, Plan, TestCase};

/// A lookup table: keys are short codes, looked up on every message, so they
/// are hashed with `rustc-hash`'s Fx hash (eight bytes a step) rather than the
/// (DoS-resistant, slower) default. The table's keys come from the mapping file,
/// not from the network: a key read from a message is only looked up, so it
/// cannot make the table degrade.
pub(crate) type Table = HashMap<String, Value, rustc_hash::FxBuildHasher>;

/// The compiled content of one mapping file.
#[derive(Debug)]
pub(crate) struct PlanInner {
    pub name: String,
    pub file: PathBuf,
    pub messages: Vec<(String, String)>,
    /// `[mapping] ignore`: fields (`PID-1`) or segments (`ZPI`) deliberately not
    /// mapped, left out of the unread report.
    pub ignore: Vec<(String, Option<usize>)>,
    /// `[mapping] at_most_one`: segments a message may hold once at most (`PID`:
    /// one patient per message); a message with more is not mapped.
    pub at_most_one: Vec<String>,
    /// `[mapping] requires`: resource types every document must hold (`Patient`:
    /// results filed under no patient are refused, not delivered).
    pub requires: Vec<String>,
    pub tables: Vec<Table>,
    pub macros: Vec<Expr>,
    /// What each macro's value depends on, for caching it during one apply.
    pub macro_deps: Vec<MacroDeps>,
    /// Every segment name the macros name (resolved once per scope when a macro
    /// is looked up).
    pub dep_names: Vec<String>,
    pub resources: Vec<Resource>,
    pub tests: Vec<TestCase>,
    /// The longest document this plan wrote so far: the capacity the next one's
    /// text starts with (a hint only; it never changes what is written).
    pub output_hint: std::sync::atomic::AtomicUsize,
    /// The most Bundle entries a message gave so far, the same way: the entry
    /// list and seen-set of the next start with that room.
    pub entries_hint: std::sync::atomic::AtomicUsize,
}

/// One `[[resource]]`.
#[derive(Debug)]
pub(crate) struct Resource {
    pub kind: String,
    pub id: Expr,
    pub iter: Option<Iter>,
    pub when: Option<Cond>,
    /// Members, sorted by key (`id` and `resourceType` are merged in when written).
    pub body: Vec<(Key, Template)>,
    /// Where `id` and `resourceType` go among the sorted members: before the
    /// member at this index (the length: after the last).
    pub id_at: usize,
    pub type_at: usize,
    /// `create_only = true`: the entry's request carries `ifNoneMatch: "*"`.
    pub create_only: bool,
}

/// `for = "OBR > OBX"` (segment groups; an array of such chains: each in
/// turn) or `each = "PID-3[*]"` (elements).
#[derive(Debug)]
pub(crate) enum Iter {
    For(Vec<Vec<super::expr::GroupHead>>),
    Each(Expr),
}

/// A member name with its JSON prefix written once at load: `,"name":`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    /// `,"name":`
    text: String,
    /// The name is `code` (see [`Key::is_code`]), decided once at load.
    code: bool,
}

impl Key {
    /// `name` is a checked FHIR element name: letters and digits, nothing to escape.
    fn new(name: &str) -> Key {
        let mut k = String::with_capacity(name.len() + 4);
        k.push_str(",\"");
        k.push_str(name);
        k.push_str("\":");
        Key {
            text: k,
            code: name == "code",
        }
    }

    pub fn name(&self) -> &str {
        self.text
            .get(2..self.text.len().saturating_sub(2))
            .unwrap_or("")
    }

    /// A member named `code` holds a FHIR `code` (Coding.code, Quantity.code):
    /// text without leading, trailing or repeated white space.
    pub fn is_code(&self) -> bool {
        self.code
    }

    /// What to write before the value: `"name":` for the first member of an
    /// object, `,"name":` after another.
    pub fn prefix(&self, first: bool) -> &str {
        if first {
            self.text.get(1..).unwrap_or("")
        } else {
            &self.text
        }
    }
}

/// A JSON template: strings are expressions.
#[derive(Debug)]
pub(crate) enum Template {
    Expr(Expr),
    Literal(Value),
    /// A constant, already written as JSON text (what [`freeze`] makes of every
    /// `Literal` once a template is folded): applying copies it as is.
    Raw(String),
    Array(Vec<Template>),
    Object(Box<ObjTemplate>),
}

#[derive(Debug)]
pub(crate) struct ObjTemplate {
    pub iter: Option<Iter>,
    pub when: Option<Cond>,
    /// Members, sorted by key (the order they are written in).
    pub fields: Vec<(Key, Template)>,
}

type Entry<'i> = (
    &'i Spanned<std::borrow::Cow<'i, str>>,
    &'i Spanned<DeValue<'i>>,
);

struct Compiler<'s> {
    file: &'s Path,
    source: &'s str,
    errors: Vec<MappingError>,
    macro_names: Vec<String>,
    /// The macros as compiled (once they are; `None` where one failed).
    macro_exprs: Vec<Option<Expr>>,
    table_names: Vec<String>,
    /// Resource bodies checked against FHIR's elements (`fhir_elements`).
    check_fhir: bool,
}

struct NameResolver<'c> {
    macro_names: &'c [String],
    table_names: &'c [String],
}

impl Resolver for NameResolver<'_> {
    fn macro_index(&mut self, name: &str) -> Option<usize> {
        self.macro_names.iter().position(|n| n == name)
    }
    fn transform(&mut self, name: &str, args: &[(String, usize)]) -> Result<Transform, String> {
        transform::build(name, args, self.table_names)
    }
}

/// Compiles one mapping source (pure). `file` is used in errors, as the default
/// name (its stem) and to resolve `[[test]]` message files (its folder).
pub fn compile(file: &Path, source: &str) -> Result<Plan, Vec<MappingError>> {
    compile_checked(file, source, true)
}

/// [`compile`], with the resource bodies' element names checked against FHIR
/// or not (the language's own tests write bodies of made-up elements).
pub(crate) fn compile_checked(
    file: &Path,
    source: &str,
    check_fhir: bool,
) -> Result<Plan, Vec<MappingError>> {
    let mut c = Compiler {
        file,
        source,
        errors: Vec::new(),
        macro_names: Vec::new(),
        macro_exprs: Vec::new(),
        table_names: Vec::new(),
        check_fhir,
    };
    // a table defined twice: one error naming the first, not a cascade
    let (text, duplicates) = crate::config::without_duplicate_tables(source);
    for (span, message) in duplicates {
        c.error(span.start, message);
    }
    let (doc, parse_errors) = DeTable::parse_recoverable(&text);
    // after a syntax error the recovered tree can miss a table or hold keys
    // out of place: "missing [mapping]" or "unknown key" would follow from the
    // syntax error, not add to it, so the file's shape is judged only when it
    // parsed
    let parsed = parse_errors.is_empty();
    for e in parse_errors {
        let span = e.span().unwrap_or(0..0);
        c.error(
            span.start,
            crate::config::toml_error(e.message(), source, &span),
        );
    }
    let root = doc.get_ref();
    let entries = sorted(root);

    let mut name = None;
    let mut messages = Vec::new();
    let mut ignore = Vec::new();
    let mut at_most_one = Vec::new();
    let mut requires = Vec::new();
    let mut requires_v = None;
    let mut tables = Vec::new();
    let mut macro_sources: Vec<(String, &Spanned<DeValue<'_>>)> = Vec::new();
    let mut resources_v = None;
    let mut tests_v = None;
    let mut saw_mapping = false;

    // names first: tables and macros may be used anywhere
    for (k, v) in &entries {
        match k.get_ref().as_ref() {
            "tables" => {
                if let Some(t) = c.table(v, "tables") {
                    for (tk, tv) in sorted(t) {
                        let tname = tk.get_ref().to_string();
                        if let Some(tt) = c.table(tv, &format!("tables.{tname}")) {
                            let mut map = Table::default();
                            for (ek, ev) in sorted(tt) {
                                if let Some(j) = c.literal(ev) {
                                    map.insert(ek.get_ref().to_string(), j);
                                }
                            }
                            c.table_names.push(tname);
                            tables.push(map);
                        }
                    }
                }
            }
            "let" => {
                if let Some(t) = c.table(v, "let") {
                    for (mk, mv) in sorted(t) {
                        c.macro_names.push(mk.get_ref().to_string());
                        macro_sources.push((mk.get_ref().to_string(), mv));
                    }
                }
            }
            _ => {}
        }
    }

    for (k, v) in &entries {
        match k.get_ref().as_ref() {
            "mapping" => {
                saw_mapping = true;
                if let Some(t) = c.table(v, "mapping") {
                    for (mk, mv) in sorted(t) {
                        match mk.get_ref().as_ref() {
                            "name" => {
                                name = c.string(mv).map(str::to_string);
                                if name.as_deref() == Some(crate::journal::APPLICATION_ACK) {
                                    c.error(
                                        mv.span().start,
                                        format!(
                                            "mapping name `{}` is reserved (it marks application \
                                             acknowledgements in the delivery queue)",
                                            crate::journal::APPLICATION_ACK
                                        ),
                                    );
                                } else if name.as_deref().is_some_and(|n| !is_mapping_name(n)) {
                                    c.error(
                                        mv.span().start,
                                        "bad mapping name, expected 1 to 64 letters, digits, `-` or `_` (routes name it)".into(),
                                    );
                                }
                            }
                            "description" => {
                                c.string(mv);
                            }
                            "messages" => messages = c.messages(mv),
                            "ignore" => ignore = c.ignore(mv),
                            "at_most_one" => at_most_one = c.segment_names(mv),
                            "requires" => {
                                requires_v = Some(mv);
                                requires = c.string_list(mv, "requires", "[\"Patient\"]", |s| {
                                    if is_resource_type(s) {
                                        Ok(s.to_string())
                                    } else {
                                        Err(format!(
                                            "bad resource type `{s}` in `requires`, expected a FHIR R4 resource type like `Patient`"
                                        ))
                                    }
                                })
                            }
                            other => c.error(
                                mk.span().start,
                                format!(
                                    "unknown key `{other}` in [mapping], expected one of name, messages, ignore, at_most_one, requires, description"
                                ),
                            ),
                        }
                    }
                }
            }
            "tables" | "let" => {}
            "resource" => resources_v = Some(*v),
            "test" => tests_v = Some(*v),
            _ if !parsed => {}
            other => c.error(
                k.span().start,
                format!(
                    "unknown key `{other}`, expected one of mapping, tables, let, resource, test"
                ),
            ),
        }
    }
    if !saw_mapping && parsed {
        c.error(0, "missing [mapping] table (name, messages)".to_string());
    }

    let mut macros = Vec::new();
    for (_, mv) in &macro_sources {
        let e = c.expr(mv);
        macros.push(e);
    }
    c.check_macro_cycles(&macros, &macro_sources);
    c.macro_exprs = macros.clone();
    let macros: Vec<Expr> = macros
        .into_iter()
        .map(|m| m.unwrap_or_else(empty_expr))
        .collect();

    let mut resources = Vec::new();
    match resources_v {
        Some(v) => match v.get_ref() {
            DeValue::Array(items) => {
                for item in items.iter() {
                    if let Some(r) = c.resource(item) {
                        resources.push(r);
                    }
                }
            }
            _ if !parsed => {}
            _ => c.error(
                v.span().start,
                "`resource` must be an array of tables: [[resource]]".into(),
            ),
        },
        None if parsed => c.error(0, "no [[resource]] declared, expected at least one".into()),
        None => {}
    }
    if let Some(v) = requires_v {
        for kind in &requires {
            if !resources.iter().any(|r| &r.kind == kind) {
                c.error(
                    v.span().start,
                    format!("`requires` names {kind}, but no [[resource]] makes a {kind}"),
                );
            }
        }
    }

    let mut tests = Vec::new();
    if let Some(v) = tests_v {
        match v.get_ref() {
            DeValue::Array(items) => {
                for item in items.iter() {
                    if let Some(t) = c.test(item) {
                        tests.push(t);
                    }
                }
            }
            _ => c.error(
                v.span().start,
                "`test` must be an array of tables: [[test]]".into(),
            ),
        }
    }

    if !c.errors.is_empty() {
        c.errors.sort_by_key(|e| (e.line, e.col));
        return Err(c.errors);
    }
    let name = match name {
        Some(name) => name,
        None => {
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !is_mapping_name(&stem) {
                c.error(
                    0,
                    format!(
                        "the mapping is named by its file, `{stem}`, which is no mapping name \
                         (1 to 64 letters, digits, `-` or `_`): rename the file or set [mapping] name"
                    ),
                );
                return Err(c.errors);
            }
            stem
        }
    };
    let (macro_deps, dep_names) = macro_deps(&macros);
    Ok(Plan {
        inner: PlanInner {
            name,
            file: file.to_path_buf(),
            messages,
            ignore,
            at_most_one,
            requires,
            tables,
            macro_deps,
            dep_names,
            macros,
            resources,
            tests,
            output_hint: std::sync::atomic::AtomicUsize::new(1024),
            entries_hint: std::sync::atomic::AtomicUsize::new(8),
        },
    })
}

/// `Patient`, `DiagnosticReport`: a FHIR R4 resource type.
fn is_resource_type(s: &str) -> bool {
    crate::fhir_types::is_r4_resource_type(s)
}

fn empty_expr() -> Expr {
    Expr {
        first: Term::Literal(String::new()),
        stages: Vec::new(),
    }
}

/// The entries of a table in file order.
/// What FHIR has at a place of a resource body: not known (an element of a
/// type the table does not check, `contained`), a complex type, or a primitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FhirAt {
    Any,
    Type(&'static str),
    Primitive,
}

/// Whether an expression can only give text (or nothing): no built-in, no
/// lookup (a table may hold objects), no macro, on every alternative.
/// The field (segment, field, component) `t` reads the first repetition of
/// alone, seen through parentheses and macros: `PID-3`, `(PID-3.1)`, `$ids`.
fn first_repetition_only<'e>(
    t: &'e Term,
    macros: &'e [Option<Expr>],
    depth: usize,
) -> Option<(&'e str, usize, Option<usize>)> {
    match t {
        Term::Path(expr::Path {
            anchor: expr::Anchor::Field { segment, field },
            rep: expr::RepSel::First,
            comp,
            ..
        }) => Some((segment.as_str(), *field, *comp)),
        Term::Group(e) if depth < MAX_MACRO_CHAIN => {
            first_repetition_only(&e.first, macros, depth + 1)
        }
        Term::Macro(i) if depth < MAX_MACRO_CHAIN => macros
            .get(*i)
            .and_then(Option::as_ref)
            .and_then(|e| first_repetition_only(&e.first, macros, depth + 1)),
        _ => None,
    }
}

/// A mapping's name as routes name it: 1 to 64 letters, digits, `-` or `_`.
fn is_mapping_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// `a CodeableConcept`, `an Identifier`: a FHIR type with its article.
fn a_type(ty: &str) -> String {
    let article = if ty.starts_with(['A', 'E', 'I', 'O', 'U']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {ty}")
}

fn surely_text(e: &Expr) -> bool {
    fn term(t: &Term) -> bool {
        match t {
            Term::Path(_)
            | Term::Literal(_)
            | Term::Concat(_)
            | Term::ConcatWs(..)
            | Term::Position
            | Term::PositionBy(_)
            | Term::Occurrence(_) => true,
            Term::Group(e) => surely_text(e),
            Term::Macro(_) | Term::Gather(..) => false,
        }
    }
    term(&e.first)
        && e.stages.iter().all(|s| match s {
            Stage::Alt(t) => term(t),
            Stage::Transform(t) => !matches!(t, Transform::Builtin(..) | Transform::Lookup(_)),
        })
}

fn sorted<'i>(t: &'i DeTable<'i>) -> Vec<Entry<'i>> {
    let mut v: Vec<Entry<'i>> = t.iter().collect();
    v.sort_by_key(|(k, _)| k.span().start);
    v
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

impl<'s> Compiler<'s> {
    fn error(&mut self, offset: usize, message: String) {
        let (line, col) = line_col(self.source, offset);
        self.errors.push(MappingError {
            file: self.file.to_path_buf(),
            line,
            col,
            message,
        });
    }

    fn table<'i>(&mut self, v: &'i Spanned<DeValue<'i>>, what: &str) -> Option<&'i DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.error(
                    v.span().start,
                    format!("`{what}` must be a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn string<'i>(&mut self, v: &'i Spanned<DeValue<'i>>) -> Option<&'i str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            other => {
                self.error(
                    v.span().start,
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// Byte offset in the file of byte `k` of a string value's content, when the
    /// string is written without escapes (else the value's start).
    fn content_offset(&self, span: &Range<usize>, content: &str, k: usize) -> usize {
        let raw = self.source.get(span.clone()).unwrap_or("");
        for q in ["\"\"\"", "'''", "\"", "'"] {
            if raw.len() >= 2 * q.len() && raw.starts_with(q) && raw.ends_with(q) {
                let inner = &raw[q.len()..raw.len() - q.len()];
                if inner == content {
                    return span.start + q.len() + k;
                }
            }
        }
        span.start
    }

    fn expr_error(&mut self, v: &Spanned<DeValue<'_>>, src: &str, e: ExprError) {
        let at = self.content_offset(&v.span(), src, e.offset);
        self.error(at, e.message);
    }

    fn expr(&mut self, v: &Spanned<DeValue<'_>>) -> Option<Expr> {
        let src = self.string(v)?;
        let names = (self.macro_names.clone(), self.table_names.clone());
        let mut r = NameResolver {
            macro_names: &names.0,
            table_names: &names.1,
        };
        match expr::parse_expr(src, &mut r) {
            Ok(e) => Some(e),
            Err(e) => {
                self.expr_error(v, src, e);
                None
            }
        }
    }

    /// `each = "PATH[*]"`. A field path with no repetition named (`PID-3`,
    /// `PID-3.1`, in parentheses or behind a macro) is its first repetition
    /// alone: refused, as it would quietly drop the others.
    fn each(&mut self, v: &Spanned<DeValue<'_>>) -> Option<Iter> {
        let e = self.expr(v)?;
        if let Some((segment, field, comp)) = first_repetition_only(&e.first, &self.macro_exprs, 0)
        {
            let comp = comp.map(|c| format!(".{c}")).unwrap_or_default();
            self.error(
                v.span().start,
                format!(
                    "`each` over `{segment}-{field}{comp}` goes over its first repetition alone, \
                     expected `{segment}-{field}[*]{comp}` for every repetition (or `{segment}-{field}[1]{comp}` for the first)"
                ),
            );
            return None;
        }
        Some(Iter::Each(e))
    }

    fn cond(&mut self, v: &Spanned<DeValue<'_>>) -> Option<Cond> {
        let src = self.string(v)?;
        let names = (self.macro_names.clone(), self.table_names.clone());
        let mut r = NameResolver {
            macro_names: &names.0,
            table_names: &names.1,
        };
        match expr::parse_cond(src, &mut r) {
            Ok(c) => Some(c),
            Err(e) => {
                self.expr_error(v, src, e);
                None
            }
        }
    }

    /// `for = "OBR > OBX"`, or several such chains in an array, iterated one
    /// after the other (`["OBX before OBR", "OBR > OBX"]`).
    fn iter_for(&mut self, v: &Spanned<DeValue<'_>>) -> Option<Iter> {
        let items: Vec<&Spanned<DeValue<'_>>> = match v.get_ref() {
            DeValue::Array(items) if !items.is_empty() => items.iter().collect(),
            DeValue::Array(_) => {
                self.error(
                    v.span().start,
                    "`for` is an empty array, expected segment groups like `OBR > OBX`".to_string(),
                );
                return None;
            }
            _ => vec![v],
        };
        let mut chains = Vec::with_capacity(items.len());
        for item in items {
            let src = self.string(item)?;
            match expr::parse_for(src) {
                Ok(heads) => chains.push(heads),
                Err(e) => {
                    self.expr_error(item, src, e);
                    return None;
                }
            }
        }
        Some(Iter::For(chains))
    }

    /// An array of strings, each turned into an item by `item` (`Err`: what is
    /// wrong with it, reported at the string); `example` completes "must be an
    /// array like ..." when the value is not an array.
    fn string_list<T>(
        &mut self,
        v: &Spanned<DeValue<'_>>,
        key: &str,
        example: &str,
        item: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        let DeValue::Array(items) = v.get_ref() else {
            self.error(
                v.span().start,
                format!("`{key}` must be an array like {example}"),
            );
            return out;
        };
        for it in items.iter() {
            let Some(s) = self.string(it) else { continue };
            match item(s) {
                Ok(x) => out.push(x),
                Err(message) => self.error(it.span().start, message),
            }
        }
        out
    }

    fn messages(&mut self, v: &Spanned<DeValue<'_>>) -> Vec<(String, String)> {
        if matches!(v.get_ref(), DeValue::Array(items) if items.is_empty()) {
            self.error(
                v.span().start,
                "`messages` is empty, expected the message types the mapping is for, like [\"ADT^A01\"]"
                    .into(),
            );
            return Vec::new();
        }
        let ok = |p: &str| {
            p.len() == 3
                && p.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        };
        self.string_list(v, "messages", "[\"ADT^A01\", \"ADT^*\"]", |s| {
            match s.split_once('^') {
                Some((code, trig)) if ok(code) && (ok(trig) || trig == "*") => {
                    Ok((code.to_string(), trig.to_string()))
                }
                _ => Err(format!(
                    "bad message type `{s}`, expected CODE^TRIGGER like `ADT^A01` or `ADT^*`"
                )),
            }
        })
    }

    fn ignore(&mut self, v: &Spanned<DeValue<'_>>) -> Vec<(String, Option<usize>)> {
        self.string_list(v, "ignore", "[\"PID-1\", \"ZPI\"]", |s| {
            let (seg, field) = match s.split_once('-') {
                Some((seg, f)) => (seg, f.parse::<usize>().ok().filter(|n| *n >= 1).map(Some)),
                None => (s, Some(None)),
            };
            match field {
                Some(f) if expr::is_segment_name(seg) => Ok((seg.to_string(), f)),
                _ => Err(format!(
                    "bad field `{s}` in `ignore`, expected a field like `PID-1` or a segment like `ZPI`"
                )),
            }
        })
    }

    /// `at_most_one = ["PID"]`: segment names.
    fn segment_names(&mut self, v: &Spanned<DeValue<'_>>) -> Vec<String> {
        self.string_list(v, "at_most_one", "[\"PID\"]", |s| {
            if expr::is_segment_name(s) {
                Ok(s.to_string())
            } else {
                Err(format!(
                    "bad segment `{s}` in `at_most_one`, expected a segment like `PID`"
                ))
            }
        })
    }

    /// A TOML value as JSON (tables' entries and test fragments).
    fn literal(&mut self, v: &Spanned<DeValue<'_>>) -> Option<Value> {
        Some(match v.get_ref() {
            DeValue::String(s) => Value::String(s.to_string()),
            DeValue::Boolean(b) => Value::Bool(*b),
            DeValue::Integer(i) => {
                let digits = i.as_str().replace('_', "");
                match i64::from_str_radix(digits.trim_start_matches('+'), i.radix()) {
                    Ok(n) => Value::from(n),
                    Err(_) => {
                        self.error(
                            v.span().start,
                            format!("integer `{}` out of range", i.as_str()),
                        );
                        return None;
                    }
                }
            }
            DeValue::Float(f) => match f
                .as_str()
                .replace('_', "")
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
            {
                Some(n) => Value::Number(n),
                None => {
                    self.error(
                        v.span().start,
                        format!("number `{}` is not finite", f.as_str()),
                    );
                    return None;
                }
            },
            DeValue::Datetime(d) => Value::String(d.to_string()),
            DeValue::Array(items) => {
                Value::Array(items.iter().filter_map(|i| self.literal(i)).collect())
            }
            DeValue::Table(t) => {
                let mut m = serde_json::Map::new();
                for (k, v) in sorted(t) {
                    if let Some(j) = self.literal(v) {
                        m.insert(k.get_ref().to_string(), j);
                    }
                }
                Value::Object(m)
            }
        })
    }

    /// A template at `path`, where FHIR has `at` (its type, as far as known).
    fn template(&mut self, v: &Spanned<DeValue<'_>>, path: &str, at: FhirAt) -> Option<Template> {
        self.template_unfolded(v, path, at).map(fold)
    }

    fn template_unfolded(
        &mut self,
        v: &Spanned<DeValue<'_>>,
        path: &str,
        at: FhirAt,
    ) -> Option<Template> {
        match v.get_ref() {
            DeValue::String(_) => {
                let e = self.expr(v)?;
                if let FhirAt::Type(ty) = at {
                    if surely_text(&e) {
                        self.error(
                            v.span().start,
                            format!(
                                "`{path}` is {} in FHIR, not text, expected an object \
                                 (`{{ ... }}`) or a data-type built-in such as `| CWE`",
                                a_type(ty)
                            ),
                        );
                        return None;
                    }
                }
                Some(Template::Expr(e))
            }
            DeValue::Boolean(_) | DeValue::Integer(_) | DeValue::Float(_) => {
                if let FhirAt::Type(ty) = at {
                    let what = match v.get_ref() {
                        DeValue::Boolean(_) => "a boolean",
                        _ => "a number",
                    };
                    self.error(
                        v.span().start,
                        format!(
                            "`{path}` is {} in FHIR, not {what}, expected an object (`{{ ... }}`)",
                            a_type(ty)
                        ),
                    );
                    return None;
                }
                self.literal(v).map(Template::Literal)
            }
            DeValue::Datetime(_) => {
                self.error(
                    v.span().start,
                    "a TOML date is not an expression, expected a string like \"'2024-01-01'\""
                        .into(),
                );
                None
            }
            DeValue::Array(items) => Some(Template::Array(
                items
                    .iter()
                    .filter_map(|i| self.template(i, path, at))
                    .collect(),
            )),
            DeValue::Table(t) => {
                if at == FhirAt::Primitive {
                    self.error(
                        v.span().start,
                        format!("`{path}` is a primitive in FHIR (text, a code, a date or a number), expected an expression, not an object"),
                    );
                    return None;
                }
                let mut iter = None;
                let mut when = None;
                let mut fields = Vec::new();
                let mut saw_for = None;
                for (k, fv) in sorted(t) {
                    let key = k.get_ref().as_ref();
                    match key {
                        "for" | "each" => {
                            if let Some(prev) = &saw_for {
                                self.error(
                                    k.span().start,
                                    format!(
                                        "`{key}` and `{prev}` together, expected only one of them"
                                    ),
                                );
                                continue;
                            }
                            saw_for = Some(key.to_string());
                            iter = if key == "for" {
                                self.iter_for(fv)
                            } else {
                                self.each(fv)
                            };
                        }
                        "when" => when = self.cond(fv),
                        _ => {
                            if !valid_element(key) {
                                self.error(
                                    k.span().start,
                                    format!(
                                        "bad element name `{key}` in {path}, expected a FHIR element name like `valueQuantity`"
                                    ),
                                );
                                continue;
                            }
                            let Some(child) = self.fhir_element(at, key, k.span().start, path)
                            else {
                                continue;
                            };
                            if let Some(t) = self.template(fv, &format!("{path}.{key}"), child) {
                                fields.push((Key::new(key), t));
                            }
                        }
                    }
                }
                // in key order: the evaluator writes members as it goes, and JSON
                // objects come out with sorted keys (as serde_json's map has them)
                fields.sort_by(|a, b| a.0.name().cmp(b.0.name()));
                Some(Template::Object(Box::new(ObjTemplate {
                    iter,
                    when,
                    fields,
                })))
            }
        }
    }

    /// What FHIR has at element `key` of an object at `at` (`None`, said as an
    /// error at `offset`, when the type has no such element).
    fn fhir_element(&mut self, at: FhirAt, key: &str, offset: usize, path: &str) -> Option<FhirAt> {
        let FhirAt::Type(ty) = at else {
            return Some(FhirAt::Any);
        };
        match fhir_elements::element(ty, key) {
            fhir_elements::Lookup::Unchecked => Some(FhirAt::Any),
            fhir_elements::Lookup::Found(e) => Some(match e.ty {
                Some(child) => FhirAt::Type(child),
                None => FhirAt::Primitive,
            }),
            fhir_elements::Lookup::Missing => {
                // `Patient`, `Patient.contact` (a backbone element), `Patient.name
                // (a HumanName)`
                let place = if path == ty || ty.eq_ignore_ascii_case(&path.replace('.', "")) {
                    path.to_string()
                } else {
                    format!("{path} (a {ty})")
                };
                let hint = match fhir_elements::suggest(ty, key) {
                    Some(near) => format!("did you mean `{near}`?"),
                    None => format!(
                        "expected an element of {ty} (see its page in the FHIR R4 specification)"
                    ),
                };
                self.error(
                    offset,
                    format!("`{key}` is not an element of {place}, {hint}"),
                );
                None
            }
        }
    }

    fn resource(&mut self, v: &Spanned<DeValue<'_>>) -> Option<Resource> {
        let t = self.table(v, "resource")?;
        let mut kind = None;
        let mut id = None;
        let mut iter = None;
        let mut when = None;
        let mut body = Vec::new();
        let mut saw_id = false;
        let mut saw_body = false;
        let mut saw_for: Option<String> = None;
        let mut saw_type = false;
        let mut create_only = false;
        // the body is checked against the FHIR type, wherever `type` is written
        let declared_name = t
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == "type")
            .and_then(|(_, v)| match v.get_ref() {
                DeValue::String(s) => Some(s.as_ref()),
                _ => None,
            })
            .unwrap_or("");
        let declared = match fhir_elements::known_type(declared_name) {
            Some(ty) if self.check_fhir => FhirAt::Type(ty),
            _ => FhirAt::Any,
        };
        for (k, fv) in sorted(t) {
            let key = k.get_ref().as_ref();
            match key {
                "create_only" => match fv.get_ref() {
                    DeValue::Boolean(b) => create_only = *b,
                    _ => self.error(fv.span().start, "bad `create_only`, expected true or false".into()),
                },
                "type" => {
                    saw_type = true;
                    if let Some(s) = self.string(fv) {
                        if is_resource_type(s) {
                            kind = Some(s.to_string());
                        } else {
                            self.error(fv.span().start, format!("bad resource type `{s}`, expected a FHIR R4 resource type like `Patient` or `Flag`"));
                        }
                    }
                }
                "id" => {
                    saw_id = true;
                    id = self.expr(fv);
                }
                "for" | "each" => {
                    if let Some(prev) = &saw_for {
                        self.error(k.span().start, format!("`{key}` and `{prev}` together, expected only one of them"));
                        continue;
                    }
                    saw_for = Some(key.to_string());
                    iter = if key == "for" { self.iter_for(fv) } else { self.each(fv) };
                }
                "when" => when = self.cond(fv),
                "body" => {
                    saw_body = true;
                    if let Some(bt) = self.table(fv, "body") {
                        for (bk, bv) in sorted(bt) {
                            let bkey = bk.get_ref().as_ref();
                            if matches!(bkey, "id" | "resourceType" | "for" | "each" | "when") {
                                self.error(
                                    bk.span().start,
                                    format!("`{bkey}` cannot be set in `body`: use the resource's `type`, `id`, `for`, `each` or `when`"),
                                );
                                continue;
                            }
                            if !valid_element(bkey) {
                                self.error(bk.span().start, format!("bad element name `{bkey}`, expected a FHIR element name like `birthDate`"));
                                continue;
                            }
                            let Some(child) =
                                self.fhir_element(declared, bkey, bk.span().start, declared_name)
                            else {
                                continue;
                            };
                            let path = if declared_name.is_empty() {
                                bkey.to_string()
                            } else {
                                format!("{declared_name}.{bkey}")
                            };
                            if let Some(tpl) = self.template(bv, &path, child) {
                                body.push((Key::new(bkey), freeze(tpl)));
                            }
                        }
                    }
                }
                other => self.error(
                    k.span().start,
                    format!("unknown key `{other}` in [[resource]], expected one of type, id, for, each, when, create_only, body"),
                ),
            }
        }
        if kind.is_none() && !saw_type && !self.has_error_in(v.span()) {
            self.error(
                v.span().start,
                "[[resource]] without `type`, expected e.g. type = \"Patient\"".into(),
            );
        }
        if !saw_id {
            self.error(
                v.span().start,
                "[[resource]] without `id`, expected e.g. id = \"$patient_id\"".into(),
            );
        }
        if !saw_body {
            self.error(
                v.span().start,
                "[[resource]] without `body`, expected a [resource.body] table".into(),
            );
        }
        // in key order, as the evaluator writes them (see ObjTemplate)
        body.sort_by(|a, b| a.0.name().cmp(b.0.name()));
        Some(Resource {
            kind: kind?,
            id: id?,
            iter,
            when,
            id_at: body.partition_point(|(k, _)| k.name() < "id"),
            type_at: body.partition_point(|(k, _)| k.name() < "resourceType"),
            body,
            create_only,
        })
    }

    fn has_error_in(&self, span: Range<usize>) -> bool {
        let (l1, _) = line_col(self.source, span.start);
        let (l2, _) = line_col(self.source, span.end);
        self.errors.iter().any(|e| e.line >= l1 && e.line <= l2)
    }

    fn test(&mut self, v: &Spanned<DeValue<'_>>) -> Option<TestCase> {
        let t = self.table(v, "test")?;
        let mut name = None;
        let mut message = None;
        let mut expect = Vec::new();
        for (k, fv) in sorted(t) {
            match k.get_ref().as_ref() {
                "name" => name = self.string(fv).map(str::to_string),
                "message" => message = self.string(fv).map(str::to_string),
                "expect" => match fv.get_ref() {
                    DeValue::Array(items) => {
                        for i in items.iter() {
                            expect.extend(self.literal(i));
                        }
                    }
                    _ => {
                        expect.extend(self.literal(fv));
                    }
                },
                other => self.error(
                    k.span().start,
                    format!(
                        "unknown key `{other}` in [[test]], expected one of name, message, expect"
                    ),
                ),
            }
        }
        let Some(message) = message else {
            self.error(
                v.span().start,
                "[[test]] without `message`, expected a message file path".into(),
            );
            return None;
        };
        let base = self.file.parent().unwrap_or(Path::new(""));
        Some(TestCase {
            name: name.unwrap_or_else(|| message.clone()),
            message: base.join(&message),
            expect,
        })
    }

    fn check_macro_cycles(
        &mut self,
        macros: &[Option<Expr>],
        sources: &[(String, &Spanned<DeValue<'_>>)],
    ) {
        let deps: Vec<Vec<usize>> = macros
            .iter()
            .map(|m| {
                let mut d = Vec::new();
                if let Some(e) = m {
                    expr_macros(e, &mut d);
                }
                d
            })
            .collect();
        let mut cycles = false;
        for i in 0..macros.len() {
            if deps[i].iter().any(|&d| reaches(d, i, &deps)) {
                cycles = true;
                let (name, v) = &sources[i];
                let message = if deps[i].contains(&i) {
                    format!(
                        "macro `${name}` refers to itself, expected a definition without a cycle"
                    )
                } else {
                    let names: Vec<String> = cycle_through(i, &deps)
                        .iter()
                        .map(|&k| format!("${}", sources.get(k).map_or("?", |(n, _)| n.as_str())))
                        .collect();
                    format!(
                        "macro `${name}` is in a cycle ({}), expected definitions without a cycle",
                        names.join(" -> ")
                    )
                };
                self.error(v.span().start, message);
            }
        }
        if cycles {
            return;
        }
        // a message is mapped by recursion through the macros it names: a
        // chain past MAX_MACRO_CHAIN could overflow a worker thread's stack
        let chains = macro_chains(&deps);
        if let Some(i) = (0..deps.len()).max_by_key(|&i| (chains[i], std::cmp::Reverse(i))) {
            if chains[i] > MAX_MACRO_CHAIN {
                let (name, v) = &sources[i];
                self.error(
                    v.span().start,
                    format!(
                        "macro `${name}` names macros {} deep, expected at most {MAX_MACRO_CHAIN} \
                         (fewer macros each naming the next)",
                        chains[i]
                    ),
                );
            }
        }
    }
}

/// What a macro's value depends on besides the message: the segments its paths
/// name (resolved per scope), the current `each` element, the iteration position.
#[derive(Debug, Clone, Default)]
pub(crate) struct MacroDeps {
    pub segments: Vec<String>,
    /// The same segments, as indices into [`PlanInner::dep_names`].
    pub segment_ids: Vec<usize>,
    pub relative: bool,
    pub position: bool,
    /// Computed again in every scope (it gathers over groups).
    pub uncached: bool,
}

/// What each macro depends on, and every segment name any of them names.
fn macro_deps(macros: &[Expr]) -> (Vec<MacroDeps>, Vec<String>) {
    fn expr(
        e: &Expr,
        in_pred: bool,
        d: &mut MacroDeps,
        all: &[Expr],
        depth: usize,
        seen: &mut [[bool; 2]],
    ) {
        term(&e.first, in_pred, d, all, depth, seen);
        for s in &e.stages {
            match s {
                Stage::Alt(t) => term(t, in_pred, d, all, depth, seen),
                Stage::Transform(Transform::When(c)) => cond(c, in_pred, d, all, depth, seen),
                Stage::Transform(_) => {}
            }
        }
    }
    fn term(
        t: &Term,
        in_pred: bool,
        d: &mut MacroDeps,
        all: &[Expr],
        depth: usize,
        seen: &mut [[bool; 2]],
    ) {
        match t {
            Term::Path(p) => match &p.anchor {
                expr::Anchor::Field { segment, .. } => {
                    if !d.segments.contains(segment) {
                        d.segments.push(segment.clone());
                    }
                    if let expr::RepSel::Pred(c) = &p.rep {
                        cond(c, true, d, all, depth, seen);
                    }
                }
                expr::Anchor::Relative => d.relative |= !in_pred,
            },
            Term::Position => d.position |= !in_pred,
            Term::Occurrence(segment) => {
                if !d.segments.contains(segment) {
                    d.segments.push(segment.clone());
                }
            }
            Term::PositionBy(parts) => {
                d.position |= !in_pred;
                parts
                    .iter()
                    .for_each(|p| expr(p, in_pred, d, all, depth, seen))
            }
            // what it reads is found in groups, not by the segments it names as
            // resolved in the macro's scope: never remembered across scopes
            Term::Gather(_, e) => {
                d.uncached = true;
                expr(e, in_pred, d, all, depth, seen)
            }
            Term::Macro(i) => {
                // cycles are rejected at compile; the depth guard only keeps a
                // broken plan from recursing forever
                // (a macro already walked, in or out of a predicate, adds
                // nothing more: walked again per use, a chain of macros each
                // naming the next twice took exponential time)
                let walked = seen.get_mut(*i).map(|s| &mut s[usize::from(in_pred)]);
                if depth < 64 && walked.is_some_and(|w| !std::mem::replace(w, true)) {
                    if let Some(m) = all.get(*i) {
                        expr(m, in_pred, d, all, depth + 1, seen);
                    }
                }
            }
            Term::Concat(parts) | Term::ConcatWs(_, parts) => parts
                .iter()
                .for_each(|p| expr(p, in_pred, d, all, depth, seen)),
            Term::Group(e) => expr(e, in_pred, d, all, depth, seen),
            Term::Literal(_) => {}
        }
    }
    fn cond(
        c: &Cond,
        in_pred: bool,
        d: &mut MacroDeps,
        all: &[Expr],
        depth: usize,
        seen: &mut [[bool; 2]],
    ) {
        match c {
            Cond::Or(cs) | Cond::And(cs) => cs
                .iter()
                .for_each(|c| cond(c, in_pred, d, all, depth, seen)),
            Cond::Not(c) => cond(c, in_pred, d, all, depth, seen),
            Cond::Empty(e) | Cond::Deleted(e) | Cond::NonEmpty(e) | Cond::In { left: e, .. } => {
                expr(e, in_pred, d, all, depth, seen)
            }
            Cond::Compare { left, right, .. } | Cond::Order { left, right, .. } => {
                expr(left, in_pred, d, all, depth, seen);
                expr(right, in_pred, d, all, depth, seen);
            }
            Cond::NoSegment(s) => {
                if !d.segments.contains(s) {
                    d.segments.push(s.clone());
                }
            }
        }
    }
    let mut deps: Vec<MacroDeps> = macros
        .iter()
        .map(|m| {
            let mut d = MacroDeps::default();
            let mut seen = vec![[false; 2]; macros.len()];
            expr(m, false, &mut d, macros, 0, &mut seen);
            d
        })
        .collect();
    let mut names: Vec<String> = Vec::new();
    for d in &mut deps {
        d.segment_ids = d
            .segments
            .iter()
            .map(|s| match names.iter().position(|n| n == s) {
                Some(k) => k,
                None => {
                    names.push(s.clone());
                    names.len() - 1
                }
            })
            .collect();
    }
    (deps, names)
}

/// How many macros deep a macro may name macros (`$a` naming `$b` naming
/// `$c` is 3 deep). With each expression nested at most 64 levels, a message
/// is mapped within a worker thread's stack.
const MAX_MACRO_CHAIN: usize = 16;

/// Per macro, the longest chain of macros it names, itself counted (1: it
/// names none). `deps` has no cycle. Iterative: chains of thousands are
/// measured without recursion.
fn macro_chains(deps: &[Vec<usize>]) -> Vec<usize> {
    let mut chain = vec![0usize; deps.len()];
    for start in 0..deps.len() {
        if chain[start] > 0 {
            continue;
        }
        // (macro, whether its dependencies are done)
        let mut stack = vec![(start, false)];
        while let Some((n, done)) = stack.pop() {
            if chain[n] > 0 {
                continue;
            }
            if done {
                let below = deps[n]
                    .iter()
                    .filter(|&&d| d < deps.len())
                    .map(|&d| chain[d])
                    .max()
                    .unwrap_or(0);
                chain[n] = below + 1;
            } else {
                stack.push((n, true));
                stack.extend(
                    deps[n]
                        .iter()
                        .filter(|&&d| d < deps.len() && chain[d] == 0)
                        .map(|&d| (d, false)),
                );
            }
        }
    }
    chain
}

/// The shortest cycle from macro `start` back to it: `[start, ..., start]`.
fn cycle_through(start: usize, deps: &[Vec<usize>]) -> Vec<usize> {
    let mut parent = vec![usize::MAX; deps.len()];
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for &d in deps.get(n).into_iter().flatten() {
            if d == start {
                return forwards(start, n, &parent);
            }
            if d < deps.len() && parent[d] == usize::MAX && d != start {
                parent[d] = n;
                queue.push_back(d);
            }
        }
    }
    vec![start, start]
}

/// `start`, the parents' chain down to `last`, and `start` again.
fn forwards(start: usize, last: usize, parent: &[usize]) -> Vec<usize> {
    let mut back = vec![last];
    let mut at = last;
    while at != start {
        at = parent[at];
        back.push(at);
    }
    back.reverse();
    back.push(start);
    back
}

fn reaches(from: usize, to: usize, deps: &[Vec<usize>]) -> bool {
    let mut seen = vec![false; deps.len()];
    let mut stack = vec![from];
    while let Some(n) = stack.pop() {
        if n == to {
            return true;
        }
        if n >= deps.len() || std::mem::replace(&mut seen[n], true) {
            continue;
        }
        stack.extend(deps[n].iter().copied());
    }
    false
}

/// Turns every constant of a folded template into its JSON text.
fn freeze(t: Template) -> Template {
    match t {
        Template::Literal(v) => {
            let mut text = String::new();
            super::json::push_value(&mut text, &v);
            Template::Raw(text)
        }
        Template::Array(items) => Template::Array(items.into_iter().map(freeze).collect()),
        Template::Object(mut o) => {
            o.fields = std::mem::take(&mut o.fields)
                .into_iter()
                .map(|(k, t)| (k, freeze(t)))
                .collect();
            Template::Object(o)
        }
        t @ (Template::Expr(_) | Template::Raw(_)) => t,
    }
}

/// Constant folding: a template without paths, macros or conditions becomes the
/// JSON it always produces (already pruned), so applying it is one clone.
fn fold(t: Template) -> Template {
    match t {
        Template::Expr(Expr {
            first: Term::Literal(s),
            stages,
        }) if stages.is_empty() && !s.trim().is_empty() && s.trim() != "\"\"" => {
            Template::Literal(Value::String(s.trim().to_string()))
        }
        Template::Object(o) if o.iter.is_none() && o.when.is_none() => {
            let constant = |t: &Template| match t {
                Template::Literal(_) => true,
                Template::Array(items) => items
                    .iter()
                    .all(|i| matches!(i, Template::Literal(v) if !v.is_array())),
                _ => false,
            };
            if o.fields.is_empty() || !o.fields.iter().all(|(_, t)| constant(t)) {
                return Template::Object(o);
            }
            let mut map = serde_json::Map::new();
            for (k, t) in o.fields {
                let v = match t {
                    Template::Literal(v) => v,
                    Template::Array(items) => Value::Array(
                        items
                            .into_iter()
                            .filter_map(|i| match i {
                                Template::Literal(v) => Some(v),
                                _ => None,
                            })
                            .collect(),
                    ),
                    _ => continue,
                };
                if !matches!(&v, Value::Array(a) if a.is_empty()) {
                    map.insert(k.name().to_string(), v);
                }
            }
            if map.is_empty() {
                Template::Object(Box::new(ObjTemplate {
                    iter: None,
                    when: None,
                    fields: Vec::new(),
                }))
            } else {
                Template::Literal(Value::Object(map))
            }
        }
        t => t,
    }
}

fn valid_element(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn expr_macros(e: &Expr, out: &mut Vec<usize>) {
    term_macros(&e.first, out);
    for s in &e.stages {
        match s {
            Stage::Alt(t) => term_macros(t, out),
            Stage::Transform(Transform::When(c)) => cond_macros(c, out),
            Stage::Transform(_) => {}
        }
    }
}

fn term_macros(t: &Term, out: &mut Vec<usize>) {
    match t {
        Term::Macro(i) => out.push(*i),
        Term::Concat(parts) | Term::ConcatWs(_, parts) | Term::PositionBy(parts) => {
            parts.iter().for_each(|p| expr_macros(p, out))
        }
        Term::Group(e) | Term::Gather(_, e) => expr_macros(e, out),
        Term::Path(p) => {
            if let expr::RepSel::Pred(c) = &p.rep {
                cond_macros(c, out)
            }
        }
        Term::Literal(_) | Term::Position | Term::Occurrence(_) => {}
    }
}

fn cond_macros(c: &Cond, out: &mut Vec<usize>) {
    match c {
        Cond::Or(cs) | Cond::And(cs) => cs.iter().for_each(|c| cond_macros(c, out)),
        Cond::Not(c) => cond_macros(c, out),
        Cond::Empty(e) | Cond::Deleted(e) | Cond::NonEmpty(e) | Cond::In { left: e, .. } => {
            expr_macros(e, out)
        }
        Cond::Compare { left, right, .. } | Cond::Order { left, right, .. } => {
            expr_macros(left, out);
            expr_macros(right, out);
        }
        Cond::NoSegment(_) => {}
    }
}
