//! Applying a compiled plan to a parsed message: scopes, path evaluation, transforms,
//! templates, resources, the Bundle written as JSON text (through `json.rs`), and the
//! bookkeeping of unread fields.
//!
//! # Invariants
//! - Nothing here panics on any message: every index is checked, every slice is
//!   taken on char boundaries, recursion depth is bounded by the mapping (not the message).
//! - Nothing here parses mapping text or compiles regexes.
//! - Output objects are written without empty members: an element that turns out
//!   empty is truncated away, so the text is what pruning a built tree would give.
//! - Members are written in key order (sorted at load), so the text is exactly
//!   `serde_json`'s serialization of the same document.
//! - A remembered value (a macro's, a converted timestamp) is keyed by what it was
//!   computed from — the scope id (unique per apply), or the segments, element and
//!   position it read, or the text and zone — so it is always what computing it
//!   again would give. Remembered text lives in a per-apply arena.
//! - The fast paths (a single-repetition path read straight to its element, a
//!   built-in writing in place) give the same bytes, warnings and read marks as
//!   the general evaluation; the snapshot tests hold them to it.

use std::borrow::Cow;
use std::collections::HashSet;

/// Sets of short strings (resource urls, warnings) hashed with `rustc-hash`'s Fx
/// hash, not SipHash: nothing here is keyed by an attacker who could flood one
/// bucket to any effect beyond slowing their own message. (It replaced a
/// byte-at-a-time FNV-1a: inserting the resources' urls was 1.8% of an ORU's time.)
type FastSet = HashSet<String, rustc_hash::FxBuildHasher>;

use std::sync::atomic::Ordering;

use bumpalo::Bump;
use jiff::tz::TimeZone;
use serde_json::Value;

use super::compile::{Iter, Key, MacroDeps, ObjTemplate, PlanInner, Resource, Template};
use super::datatypes;
use super::expr::{Anchor, Cond, Expr, GroupHead, Path, RepSel, Stage, Term};
use super::json;
use super::transform::{self, DataType, Transform};
use super::{MapError, MapOutput, MappedEntry};
use crate::hl7::{Element, Level, Message, Segment, Separators};

/// Where a value came from, for warnings (`PID-3[2]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    seg: u32,
    field: u16,
    rep: u16,
}

/// An element of the message: a field repetition, component or subcomponent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node<'a> {
    pub el: Element<'a>,
    pub loc: Loc,
}

impl<'a> Node<'a> {
    pub fn raw(&self) -> &'a str {
        self.el.raw()
    }

    /// Component `i` of a repetition, subcomponent `i` of a component (1-based);
    /// a subcomponent is its own only part.
    pub fn part(&self, i: usize) -> Option<Node<'a>> {
        let el = match self.el.level() {
            Level::Subcomponent if i == 1 => self.el,
            _ => self.el.part(i)?,
        };
        Some(Node { el, loc: self.loc })
    }

    /// The unescaped text of this node (HL7 `""` reads as empty).
    pub fn text(&self, seps: &Separators) -> Cow<'a, str> {
        let raw = self.raw();
        if raw == "\"\"" {
            return Cow::Borrowed("");
        }
        self.el.unescaped(seps)
    }

    /// The text of part `i`, reading only its first subcomponent when it has several
    /// (the identifying value of a composite), trimmed.
    pub fn part_text(&self, i: usize, seps: &Separators) -> Cow<'a, str> {
        match self.part(i) {
            Some(p) => {
                let leaf = match p.el.level() {
                    Level::Component if p.el.len() > 1 => p.part(1).unwrap_or(p),
                    _ => p,
                };
                trim_cow(leaf.text(seps))
            }
            None => Cow::Borrowed(""),
        }
    }

    /// The whole text of part `i`, trimmed: a text component (CWE.2, a name
    /// of a test) is a primitive, so an `&` in it is the sender's unescaped
    /// ampersand (`U&E`, very common in UK pathology), not a subcomponent
    /// separator, and is kept with what follows it.
    pub fn whole_text(&self, i: usize, seps: &Separators) -> Cow<'a, str> {
        match self.part(i) {
            Some(p) => trim_cow(p.text(seps)),
            None => Cow::Borrowed(""),
        }
    }

    /// Subcomponent `j` of component `i`, trimmed.
    pub fn sub_text(&self, i: usize, j: usize, seps: &Separators) -> Cow<'a, str> {
        match self.part(i).and_then(|p| p.part(j)) {
            Some(p) => trim_cow(p.text(seps)),
            None => Cow::Borrowed(""),
        }
    }

    /// Empty: `""`, only white space, or only `^&~` and spaces or tabs.
    pub fn is_empty(&self) -> bool {
        raw_is_empty(self.raw())
    }
}

/// [`Node::is_empty`] of an element's raw text.
fn raw_is_empty(raw: &str) -> bool {
    // the usual answer at the first byte: a value that starts with a letter or
    // digit is not empty (and a long one, an ED's Base64, is not scanned)
    if raw
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphanumeric)
    {
        return false;
    }
    raw_is_empty_scan(raw)
}

/// [`raw_is_empty`] without the first-byte answer.
fn raw_is_empty_scan(raw: &str) -> bool {
    if raw.is_ascii() {
        // one pass over the bytes for the usual case
        let (mut blank, mut seps) = (true, true);
        for b in raw.bytes() {
            let c = char::from(b);
            blank &= c.is_whitespace();
            seps &= is_sep_or_space(c);
            if !blank && !seps {
                return raw == "\"\"";
            }
        }
        return true;
    }
    raw.trim_fast().is_empty() || !raw.chars().any(|c| !is_sep_or_space(c))
}

fn is_sep_or_space(c: char) -> bool {
    matches!(c, '^' | '&' | '~' | ' ' | '\t')
}

pub(crate) fn trim_cow(c: Cow<'_, str>) -> Cow<'_, str> {
    match c {
        Cow::Borrowed(s) => Cow::Borrowed(s.trim_fast()),
        Cow::Owned(s) => {
            let t = s.trim_fast();
            if t.len() == s.len() {
                Cow::Owned(s)
            } else {
                Cow::Owned(t.to_string())
            }
        }
    }
}

/// A segment's name (as bytes) equals `name` (compared byte by byte: no
/// `memcmp` call for three bytes).
#[inline]
fn same_bytes(a: [u8; 3], name: &str) -> bool {
    matches!(name.as_bytes(), [x, y, z] if *x == a[0] && *y == a[1] && *z == a[2])
}

/// Appends `n` in decimal (what `n.to_string()` gives, without the formatter).
fn push_number(out: &mut String, n: usize) {
    json::push_u64(out, n as u64);
}

/// Trims white space and control characters (a NUL, a `\X1B\` escape: nothing
/// a FHIR string may hold at its ends), with a fast path: text that starts and
/// ends with a visible ASCII character is returned as is without scanning.
pub(crate) trait TrimFast {
    fn trim_fast(&self) -> &str;
}

impl TrimFast for str {
    #[inline]
    fn trim_fast(&self) -> &str {
        match (self.as_bytes().first(), self.as_bytes().last()) {
            (Some(&a), Some(&z)) if a.is_ascii_graphic() && z.is_ascii_graphic() => self,
            (None, _) | (_, None) => self,
            _ => self.trim_matches(|c: char| c.is_whitespace() || c.is_control()),
        }
    }
}

/// Segment name equality without a `memcmp` call for 3-byte names.
#[inline]
fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    match (a, b) {
        ([a0, a1, a2], [b0, b1, b2]) => a0 == b0 && a1 == b1 && a2 == b2,
        _ => a == b,
    }
}

/// A value during evaluation.
#[derive(Debug)]
pub(crate) enum Val<'a> {
    Empty,
    Text(Cow<'a, str>),
    Node(Node<'a>),
    Json(Value),
    /// A FHIR element a data-type built-in wrote: a non-empty JSON object, as text.
    Raw(String),
    /// A number as its JSON text (`number`), often borrowed from the message.
    Num(Cow<'a, str>),
    List(Vec<Val<'a>>),
}

impl Clone for Val<'_> {
    /// Borrowed text and elements (what remembered macro values are) copied in
    /// line; owned values through [`Val::clone_owned`].
    #[inline]
    fn clone(&self) -> Self {
        match self {
            Val::Empty => Val::Empty,
            Val::Text(Cow::Borrowed(s)) => Val::Text(Cow::Borrowed(s)),
            Val::Num(Cow::Borrowed(s)) => Val::Num(Cow::Borrowed(s)),
            Val::Node(n) => Val::Node(*n),
            v => v.clone_owned(),
        }
    }
}

impl Val<'_> {
    #[inline(never)]
    fn clone_owned(&self) -> Self {
        match self {
            Val::Empty => Val::Empty,
            Val::Text(t) => Val::Text(t.clone()),
            Val::Num(t) => Val::Num(t.clone()),
            Val::Node(n) => Val::Node(*n),
            Val::Json(j) => Val::Json(j.clone()),
            Val::Raw(r) => Val::Raw(r.clone()),
            Val::List(l) => Val::List(l.clone()),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Val::Empty => true,
            Val::Text(t) => t.trim_fast().is_empty() || t.as_ref() == "\"\"",
            Val::Node(n) => n.is_empty(),
            Val::Json(v) => json_is_empty(v),
            Val::Raw(_) | Val::Num(_) => false,
            Val::List(l) => l.iter().all(Val::is_empty),
        }
    }
}

fn json_is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim_fast().is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// A range of segments (a group), the current `each` element and iteration position.
#[derive(Clone, Copy)]
struct Scope<'s, 'a> {
    /// Unique in this apply (0: none), so values computed in this scope can be
    /// remembered for it (see `Ctx::memo`).
    id: u32,
    start: usize,
    end: usize,
    parent: Option<&'s Scope<'s, 'a>>,
    elem: Option<&'s Val<'a>>,
    position: usize,
    /// In a group: where the first group of its iteration begins (for
    /// `position(key)`); `NO_SIBLINGS` elsewhere.
    siblings: usize,
}

/// [`Scope::siblings`] of a scope that is not a group.
const NO_SIBLINGS: usize = usize::MAX;

struct Ctx<'a> {
    plan: &'a PlanInner,
    message: &'a Message<'a>,
    /// The segments' names, by position.
    names: Vec<[u8; 3]>,
    seps: Separators,
    /// Bit `f` of `read[i]`: field `f` of segment `i` was read by some rule.
    read: Vec<u128>,
    /// Whether reads are tracked (for the unread report) at all.
    track_reads: bool,
    warnings: Vec<String>,
    warned: FastSet,
    /// The resource types left out because no id could be made for them (said
    /// in the error when the message gives no resource at all).
    without_id: Vec<&'a str>,
    /// The first resource type whose id was no FHIR id (the document fails).
    bad_id: Option<&'a str>,
    /// For `Loc` display: occurrence of each segment among those of its name, and
    /// whether that name repeats.
    occurrence: Vec<(u32, bool)>,
    /// Macro values already computed in this apply, by macro, with whether
    /// computing them read `position()`.
    cache: Vec<MacroCache<'a>>,
    /// How many times `position()` was read so far (to tell whether a macro's
    /// value depends on it).
    position_reads: usize,
    /// Timestamps already converted in this apply (a lab report's OBR-7 and
    /// OBR-22 are read again for every observation): text, time zone, result.
    datetimes: Vec<(&'a str, &'a str, Result<&'a str, String>)>,
    /// Where text computed in this apply is kept, so a remembered value is
    /// handed out again without copying it.
    arena: &'a Bump,
    /// The scope ids handed out so far.
    scopes: u32,
    /// The last value of each macro, by macro: the scope it was computed in,
    /// whether computing it read `position()`, the value. A scope asks for the
    /// same macros again and again (`$units` in three members).
    memo: Vec<(u32, bool, Val<'a>)>,
    /// Where each of the plan's macro dependencies was found, by scope id.
    resolved: Vec<(u32, u32)>,
    /// The keys of `position(key)` counted so far, by expression and iteration.
    keyed: Vec<KeyedGroups<'a>>,
    /// Where `position(key)` writes a key before it is kept.
    key_buf: String,
}

/// The groups of one iteration counted by one `position(key, ...)`, in order.
struct KeyedGroups<'a> {
    /// The key expressions (their address in the plan).
    tag: usize,
    /// Where the iteration's first group begins.
    from: usize,
    /// Where the next group not counted yet begins.
    next: usize,
    /// How many groups so far gave each key.
    counts: std::collections::HashMap<&'a str, usize, rustc_hash::FxBuildHasher>,
    /// Each counted group's start and its position among those of its key.
    found: Vec<(usize, usize)>,
}

/// Converted timestamps kept per apply (the most recent ones).
const DATETIME_MEMO: usize = 8;

/// Values kept per macro (the most recent ones).
const MACRO_CACHE_ENTRIES: usize = 64;

/// Macros naming more segments than this are not cached.
const MACRO_KEY_SEGMENTS: usize = 8;

/// The values remembered for one macro: at most [`MACRO_CACHE_ENTRIES`], the
/// oldest replaced first, found through a direct-mapped index by key fingerprint.
/// A lookup looks at one entry, the newest whose fingerprint fell in that bucket,
/// and compares its whole key: a value whose bucket a newer one took is computed
/// again (the same value: only time is lost), never a wrong one handed out.
struct MacroCache<'a> {
    /// The key, whether computing the value read `position()`, the value.
    entries: Vec<(MacroKey, bool, Val<'a>)>,
    /// Where the next entry goes once `entries` is full.
    next: usize,
    /// By `fp % MACRO_INDEX`: the entry last put in that bucket, or `NONE`.
    index: [u8; MACRO_INDEX],
}

/// Buckets of a macro's index.
const MACRO_INDEX: usize = 128;
// entry positions fit the index's bytes, with `NONE` beyond them
const _: () = assert!(MACRO_CACHE_ENTRIES < u8::MAX as usize);

impl MacroCache<'_> {
    const NONE: u8 = u8::MAX;

    fn new() -> Self {
        MacroCache {
            entries: Vec::new(),
            next: 0,
            index: [Self::NONE; MACRO_INDEX],
        }
    }

    fn bucket(fp: u64) -> usize {
        ((fp ^ (fp >> 29)) as usize) % MACRO_INDEX
    }
}

struct MacroKey {
    fp: u64,
    segments: [u32; MACRO_KEY_SEGMENTS],
    elem: Option<(usize, usize, Loc)>,
    position: usize,
}

/// Applies a plan to a message.
///
/// With `report_unread`, the fields every rule read are tracked and those that
/// none read are listed in [`MapOutput::unread`]; without, that list is empty and
/// nothing is tracked (the engine's path: the document, entries and warnings are
/// the same either way).
pub(crate) fn apply(
    plan: &PlanInner,
    message: &Message<'_>,
    report_unread: bool,
) -> Result<MapOutput, MapError> {
    let names: Vec<[u8; 3]> = message.segments().map(|s| s.name_bytes()).collect();
    for segment in &plan.at_most_one {
        let count = names.iter().filter(|n| same_bytes(**n, segment)).count();
        if count > 1 {
            return Err(MapError::Repeated {
                mapping: plan.name.clone(),
                segment: segment.clone(),
                count,
            });
        }
    }
    // occurrence of each segment among those of its name (linear in the segments:
    // messages may be huge, and the distinct names are few)
    let mut counts: Vec<([u8; 3], u32)> = Vec::with_capacity(16);
    let mut occurrence = Vec::with_capacity(names.len());
    for s in &names {
        let k = match counts.iter().position(|(name, _)| name == s) {
            Some(k) => k,
            None => {
                counts.push((*s, 0));
                counts.len() - 1
            }
        };
        counts[k].1 += 1;
        occurrence.push((counts[k].1, false));
    }
    for (o, s) in occurrence.iter_mut().zip(&names) {
        o.1 = counts.iter().any(|(name, n)| name == s && *n > 1);
    }
    let segment_count = names.len();
    let arena = Bump::new();
    let mut ctx = Ctx {
        plan,
        message,
        names,
        seps: *message.separators(),
        read: vec![0; segment_count],
        track_reads: report_unread,
        warnings: Vec::new(),
        warned: FastSet::default(),
        without_id: Vec::new(),
        bad_id: None,
        occurrence,
        cache: (0..plan.macros.len()).map(|_| MacroCache::new()).collect(),
        datetimes: Vec::new(),
        position_reads: 0,
        arena: &arena,
        scopes: 0,
        memo: vec![(0, false, Val::Empty); plan.macros.len()],
        resolved: vec![(0, u32::MAX); plan.dep_names.len()],
        keyed: Vec::new(),
        key_buf: String::new(),
    };
    let top = Scope {
        id: ctx.scope_id(),
        start: 0,
        end: segment_count,
        parent: None,
        elem: None,
        position: 1,
        siblings: NO_SIBLINGS,
    };
    let mut out = String::with_capacity(plan.output_hint.load(Ordering::Relaxed));
    // keys in sorted order: entry, resourceType, type
    out.push_str("{\"entry\":[");
    // room for as many entries as this mapping's largest document so far, so
    // neither grows (a rehash of `seen` was 1.7% of an ORU's time)
    let room = plan.entries_hint.load(Ordering::Relaxed);
    let mut entries = Vec::with_capacity(room);
    let mut seen = FastSet::with_capacity_and_hasher(room, Default::default());
    for r in &plan.resources {
        ctx.resource(r, &top, &mut out, &mut entries, &mut seen);
    }
    if let Some(kind) = ctx.bad_id {
        return Err(MapError::BadId {
            mapping: plan.name.clone(),
            kind: kind.to_string(),
        });
    }
    let unread = if report_unread {
        ctx.unread()
    } else {
        Vec::new()
    };
    if entries.is_empty() {
        return Err(MapError::NoResources {
            mapping: plan.name.clone(),
            without_id: ctx.without_id.iter().map(|k| k.to_string()).collect(),
        });
    }
    if let Some(kind) = plan
        .requires
        .iter()
        .find(|k| !entries.iter().any(|e| &e.resource_type == *k))
    {
        return Err(MapError::Missing {
            mapping: plan.name.clone(),
            kind: kind.clone(),
            without_id: ctx.without_id.iter().map(|k| k.to_string()).collect(),
        });
    }
    out.push_str("],\"resourceType\":\"Bundle\",\"type\":\"transaction\"}");
    // the next document of this mapping is likely about as long
    plan.output_hint.fetch_max(out.len(), Ordering::Relaxed);
    plan.entries_hint
        .fetch_max(entries.len(), Ordering::Relaxed);
    Ok(MapOutput {
        document: out,
        entries,
        unread,
        warnings: ctx.warnings,
    })
}

/// FHIR's `id`: 1 to 64 of `A-Z a-z 0-9 - .`; not `.` or `..`, which a
/// FHIR server's URL (`Patient/..`) would read as a path step.
fn is_fhir_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `s` with every run of white space made one space (a FHIR `code` matches
/// `[^\s]+(\s[^\s]+)*` once trimmed). Borrows when there is nothing to change.
pub(crate) fn collapse_spaces(s: &str) -> Cow<'_, str> {
    let mut previous_space = false;
    let clean = s.chars().all(|c| {
        let ok = !c.is_whitespace() || (c == ' ' && !previous_space);
        previous_space = c.is_whitespace();
        ok
    });
    if clean {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

/// A comma before every array element or object member but the first.
#[inline]
fn sep(out: &mut String, n: &mut usize) {
    if *n > 0 {
        out.push(',');
    }
    *n += 1;
}

/// Writes text trimmed as a JSON string; false (nothing written) when it is empty
/// or HL7's explicit null `""`.
#[inline]
fn write_text(t: &str, out: &mut String) -> bool {
    let t = t.trim_fast();
    if t.is_empty() || t == "\"\"" {
        return false;
    }
    json::push_text(out, t)
}

impl<'a> Ctx<'a> {
    fn warn(&mut self, loc: Option<Loc>, message: String) {
        let w = match loc {
            Some(l) => format!("{}: {message}", self.loc_name(l)),
            None => message,
        };
        if self.warned.insert(w.clone()) {
            self.warnings.push(w);
        }
    }

    /// [`transform::hl7_datetime`], remembered for the texts seen last in this
    /// apply (by text and zone name: every `datetime(...)` has its own zone).
    fn datetime(&mut self, text: &str, tz: &TimeZone) -> Result<&'a str, String> {
        let zone = tz.iana_name().unwrap_or("");
        if let Some((_, _, r)) = self
            .datetimes
            .iter()
            .find(|(t, z, _)| *t == text && *z == zone)
        {
            return r.clone();
        }
        let r = match transform::hl7_datetime(text, tz) {
            Ok(d) => Ok(&*self.arena.alloc_str(&d)),
            Err(e) => Err(e),
        };
        if self.datetimes.len() >= DATETIME_MEMO {
            let _oldest = self.datetimes.remove(0);
        }
        let key = (&*self.arena.alloc_str(text), &*self.arena.alloc_str(zone));
        self.datetimes.push((key.0, key.1, r.clone()));
        r
    }

    /// Where macro dependency `k` (a segment name, [`PlanInner::dep_names`]) is
    /// found from `scope` (`u32::MAX`: nowhere), found once per scope.
    fn resolve(&mut self, k: usize, scope: &Scope<'_, 'a>) -> u32 {
        if let Some((id, at)) = self.resolved.get(k) {
            if *id == scope.id {
                return *at;
            }
        }
        let plan = self.plan;
        let at = plan
            .dep_names
            .get(k)
            .and_then(|name| self.find_segment(name, scope))
            .map_or(u32::MAX, |x| x as u32);
        if let Some(slot) = self.resolved.get_mut(k) {
            *slot = (scope.id, at);
        }
        at
    }

    /// A fresh scope id.
    fn scope_id(&mut self) -> u32 {
        self.scopes += 1;
        self.scopes
    }

    /// The value with its owned text moved into the arena, so clones of it
    /// borrow instead of copying.
    fn keep(&self, v: Val<'a>) -> Val<'a> {
        match v {
            Val::Text(Cow::Owned(s)) => Val::Text(Cow::Borrowed(self.arena.alloc_str(&s))),
            Val::Num(Cow::Owned(s)) => Val::Num(Cow::Borrowed(self.arena.alloc_str(&s))),
            Val::List(items) => Val::List(items.into_iter().map(|i| self.keep(i)).collect()),
            v => v,
        }
    }

    fn segment(&self, i: usize) -> Option<Segment<'a>> {
        self.message.segment(i)
    }

    /// `PID`, or `OBX[3]` when the segment repeats, appended to `out`.
    fn push_seg_name(&self, out: &mut String, i: usize) {
        out.push_str(self.segment(i).map(|s| s.name()).unwrap_or("?"));
        if let Some((n, true)) = self.occurrence.get(i) {
            out.push('[');
            push_number(out, *n as usize);
            out.push(']');
        }
    }

    /// `PID-3`, `OBX[2]-5[2]`.
    fn loc_name(&self, l: Loc) -> String {
        let mut s = String::with_capacity(16);
        self.push_seg_name(&mut s, l.seg as usize);
        s.push('-');
        push_number(&mut s, l.field as usize);
        if l.rep > 1 {
            s.push('[');
            push_number(&mut s, l.rep as usize);
            s.push(']');
        }
        s
    }

    fn unread(&self) -> Vec<String> {
        let mut out = Vec::new();
        // The `ignore` entries naming the current segment, found once per segment
        // rather than once per field (the list is scanned by name, not indexed).
        let mut ignored: Vec<Option<usize>> = Vec::new();
        for (i, seg) in self.message.segments().enumerate() {
            let read = self.read.get(i).copied().unwrap_or(0);
            ignored.clear();
            ignored.extend(
                self.plan
                    .ignore
                    .iter()
                    .filter(|(s, _)| same_name(s, seg.name()))
                    .map(|(_, f)| *f),
            );
            if ignored.iter().any(Option::is_none) {
                continue;
            }
            for (fi, f) in seg.fields().enumerate() {
                let n = fi + 1;
                if i == 0 && n <= 2 {
                    continue;
                }
                if ignored.contains(&Some(n)) {
                    continue;
                }
                if n < 128 && read & (1u128 << n) != 0 {
                    continue;
                }
                if f.is_empty() || f.raw() == "\"\"" {
                    continue;
                }
                let mut name = String::with_capacity(12);
                self.push_seg_name(&mut name, i);
                name.push('-');
                push_number(&mut name, n);
                out.push(name);
            }
        }
        out
    }

    fn mark(&mut self, seg: usize, field: usize) {
        if self.track_reads && field < 128 {
            if let Some(r) = self.read.get_mut(seg) {
                *r |= 1u128 << field;
            }
        }
    }

    fn find_segment(&self, name: &str, scope: &Scope<'_, 'a>) -> Option<usize> {
        let mut s = Some(scope);
        while let Some(sc) = s {
            let end = sc.end.min(self.names.len());
            if let Some(i) = (sc.start..end).find(|&i| same_bytes(self.names[i], name)) {
                return Some(i);
            }
            s = sc.parent;
        }
        None
    }

    // ---- resources -------------------------------------------------------------

    /// Writes the Bundle entries of one `[[resource]]` (per group or element when it
    /// iterates) to `out`, each preceded by a comma unless it is the first entry.
    fn resource(
        &mut self,
        r: &'a Resource,
        scope: &Scope<'_, 'a>,
        out: &mut String,
        entries: &mut Vec<MappedEntry>,
        seen: &mut FastSet,
    ) {
        let mut emit = |ctx: &mut Self, sc: &Scope<'_, 'a>| {
            if let Some(w) = &r.when {
                if !ctx.cond(w, sc) {
                    return;
                }
            }
            let id = ctx.expr(&r.id, sc);
            let id = ctx.text_of(id);
            let id = id.trim_fast();
            if id.is_empty() {
                ctx.warn(
                    None,
                    format!("{}: no id could be made; resource left out", r.kind),
                );
                if !ctx.without_id.contains(&r.kind.as_str()) {
                    ctx.without_id.push(&r.kind);
                }
                return;
            }
            if !is_fhir_id(id) {
                ctx.bad_id.get_or_insert(&r.kind);
                return;
            }
            let mut url = String::with_capacity(r.kind.len() + 1 + id.len());
            url.push_str(&r.kind);
            url.push('/');
            url.push_str(id);
            // a resource already in the Bundle (same type and id): the first one
            // made wins, this one is neither written nor counted as reading anything.
            // A result or report so left out is data lost: said, as a warning
            // (an order or a patient named twice is the same one, and is not)
            if seen.contains(&url) {
                if matches!(r.kind.as_str(), "Observation" | "DiagnosticReport") {
                    ctx.warn(
                        None,
                        format!(
                            "a second {} with the id of one already made from this message (their keys are the same): left out",
                            r.kind
                        ),
                    );
                }
                return;
            }
            if !entries.is_empty() {
                out.push(',');
            }
            // keys in sorted order: fullUrl, request, resource
            out.push_str("{\"fullUrl\":\"urn:uuid:");
            // `"urn:uuid:" + id` as one JSON string: the id's escaped form minus its
            // opening quote
            let id_start = out.len();
            json::push_str(out, id);
            out.remove(id_start);
            out.push_str(",\"request\":{");
            if r.create_only {
                out.push_str("\"ifNoneMatch\":\"*\",");
            }
            out.push_str("\"method\":\"PUT\",\"url\":");
            json::push_str(out, &url);
            out.push_str("},\"resource\":");
            let resource_start = out.len();
            out.push('{');
            // the body's members with `id` and `resourceType` merged in, in key order
            let (id_at, type_at) = (r.id_at, r.type_at);
            let mut n = 0;
            for (i, (k, t)) in r.body.iter().enumerate() {
                if i == id_at {
                    sep(out, &mut n);
                    json::push_key(out, "id");
                    json::push_str(out, id);
                }
                if i == type_at {
                    sep(out, &mut n);
                    json::push_key(out, "resourceType");
                    json::push_str(out, &r.kind);
                }
                ctx.member(k, t, sc, out, &mut n);
            }
            if id_at == r.body.len() {
                sep(out, &mut n);
                json::push_key(out, "id");
                json::push_str(out, id);
            }
            if type_at == r.body.len() {
                sep(out, &mut n);
                json::push_key(out, "resourceType");
                json::push_str(out, &r.kind);
            }
            out.push('}');
            let resource_end = out.len();
            out.push('}');
            seen.insert(url);
            entries.push(MappedEntry {
                resource_type: r.kind.clone(),
                id: id.to_string(),
                resource: resource_start..resource_end,
            });
        };
        match &r.iter {
            None => emit(self, scope),
            Some(it) => self.iterate(it, scope, &mut emit),
        }
    }

    /// Calls `f` once per group (`for`) or element (`each`), with the inner scope.
    fn iterate(
        &mut self,
        it: &'a Iter,
        scope: &Scope<'_, 'a>,
        f: &mut dyn FnMut(&mut Self, &Scope<'_, 'a>),
    ) {
        match it {
            Iter::For(chains) => {
                for heads in chains {
                    self.groups(heads, scope, f);
                }
            }
            Iter::Each(e) => {
                let v = self.expr(e, scope);
                let items = match v {
                    Val::List(items) => items,
                    v if v.is_empty() => Vec::new(),
                    v => vec![v],
                };
                for (i, item) in items.iter().enumerate() {
                    if item.is_empty() {
                        continue;
                    }
                    let inner = Scope {
                        id: self.scope_id(),
                        start: scope.start,
                        end: scope.end,
                        parent: scope.parent,
                        elem: Some(item),
                        position: i + 1,
                        siblings: NO_SIBLINGS,
                    };
                    f(self, &inner);
                }
            }
        }
    }

    fn groups(
        &mut self,
        heads: &'a [GroupHead],
        scope: &Scope<'_, 'a>,
        f: &mut dyn FnMut(&mut Self, &Scope<'_, 'a>),
    ) {
        let Some((head, rest)) = heads.split_first() else {
            f(self, scope);
            return;
        };
        let mut end = scope.end.min(self.names.len());
        if let Some(stop) = &head.before {
            // only the part of the scope before the first `stop` segment
            if let Some(i) = (scope.start..end).find(|&i| same_bytes(self.names[i], stop)) {
                end = i;
            }
        }
        let next_head = |names: &[[u8; 3]], from: usize| {
            (from..end)
                .find(|&i| names.get(i).is_some_and(|n| same_bytes(*n, &head.name)))
                .unwrap_or(end)
        };
        let first = next_head(&self.names, scope.start);
        // Seen from inside a group, the enclosing scope is only its part before the
        // first group: a segment of a sibling group (the NTE after another OBX) is
        // never found by falling back to the parent.
        let outer = Scope {
            id: self.scope_id(),
            start: scope.start,
            end: first,
            parent: scope.parent,
            elem: scope.elem,
            position: scope.position,
            siblings: scope.siblings,
        };
        // With `after`: where the lead-in of the group headed at `h` begins: at the
        // `after` segment directly before `h` (after `from`), else at `h` (none).
        // Only directly before: a segment between them (an OBX after an ORC that
        // a sender put after its OBR) must stay in the group before, not be lost
        // to a lead-in no group iterates. The lead-in is not part of the group
        // before it, and is searched after the group itself.
        let lead_start = |names: &[[u8; 3]], from: usize, h: usize| match &head.after {
            Some(lead) if h > from && names.get(h - 1).is_some_and(|n| same_bytes(*n, lead)) => {
                h - 1
            }
            _ => h,
        };
        let mut s = first;
        let mut lead = lead_start(&self.names, scope.start, first);
        let mut k = 0;
        while s < end {
            let head_next = next_head(&self.names, s + 1);
            let lead_next = if head_next < end {
                lead_start(&self.names, s + 1, head_next)
            } else {
                head_next
            };
            k += 1;
            let lead_in;
            let parent = if head.after.is_some() {
                lead_in = Scope {
                    id: self.scope_id(),
                    start: lead,
                    end: s,
                    parent: Some(&outer),
                    elem: scope.elem,
                    position: scope.position,
                    siblings: NO_SIBLINGS,
                };
                &lead_in
            } else {
                &outer
            };
            let inner = Scope {
                id: self.scope_id(),
                start: s,
                end: lead_next,
                parent: Some(parent),
                elem: scope.elem,
                position: k,
                siblings: first,
            };
            self.groups(rest, &inner, f);
            s = head_next;
            lead = lead_next;
        }
    }

    // ---- templates -------------------------------------------------------------
    //
    // Templates are written straight to JSON text. An element that turns out empty
    // is taken back (`truncate` to where it began), so empty strings, objects and
    // arrays never appear: the text is what building a `serde_json::Value` and
    // pruning it would have serialized to, without the tree.

    /// Writes `"key":value` (after a comma unless first) unless the value is empty.
    fn member(
        &mut self,
        key: &Key,
        t: &'a Template,
        scope: &Scope<'_, 'a>,
        out: &mut String,
        n: &mut usize,
    ) {
        let mark = out.len();
        out.push_str(key.prefix(*n == 0));
        let written = match t {
            Template::Expr(e) if key.is_code() => self.write_code_member(e, scope, out),
            t => self.write_value(t, scope, out),
        };
        if written {
            *n += 1;
        } else {
            out.truncate(mark);
        }
    }

    /// The value of a member named `code`: text as a FHIR code, a built-in's
    /// element as it is.
    #[inline(never)]
    fn write_code_member(&mut self, e: &'a Expr, scope: &Scope<'_, 'a>, out: &mut String) -> bool {
        if first_builtin(e).is_some() {
            return self.write_first_builtin(e, scope, out, true);
        }
        if builtin_path(e).is_some() {
            return self.write_value_expr(e, scope, out);
        }
        match self.single(e, scope) {
            Some(n) => n.is_some_and(|n| write_text(&collapse_spaces(&n.text(&self.seps)), out)),
            None => {
                let v = self.expr(e, scope);
                self.write_code(v, out)
            }
        }
    }

    /// Writes an object template; false (and nothing written) when it is empty or
    /// its `when` does not hold.
    fn write_object(
        &mut self,
        o: &'a ObjTemplate,
        scope: &Scope<'_, 'a>,
        out: &mut String,
    ) -> bool {
        if let Some(w) = &o.when {
            if !self.cond(w, scope) {
                return false;
            }
        }
        let mark = out.len();
        out.push('{');
        let mut n = 0;
        for (k, t) in &o.fields {
            self.member(k, t, scope, out, &mut n);
        }
        if n == 0 {
            out.truncate(mark);
            return false;
        }
        out.push('}');
        true
    }

    /// Writes the value of a template in an object member position; false (and
    /// nothing written) when it is empty.
    fn write_value(&mut self, t: &'a Template, scope: &Scope<'_, 'a>, out: &mut String) -> bool {
        match t {
            Template::Expr(e) => self.write_value_expr(e, scope, out),
            Template::Literal(v) => {
                json::push_value(out, v);
                true
            }
            Template::Raw(text) => {
                out.push_str(text);
                true
            }
            Template::Object(o) if o.iter.is_none() => self.write_object(o, scope, out),
            Template::Object(_) | Template::Array(_) => {
                let mark = out.len();
                out.push('[');
                let mut n = 0;
                self.write_items(t, scope, out, &mut n);
                if n == 0 {
                    out.truncate(mark);
                    return false;
                }
                out.push(']');
                true
            }
        }
    }

    /// [`Self::write_value`] of an expression.
    #[inline]
    fn write_value_expr(&mut self, e: &'a Expr, scope: &Scope<'_, 'a>, out: &mut String) -> bool {
        // a path alone (`text = "OBX-7"`): its text, without a value between
        if let Some(n) = self.single(e, scope) {
            return n.is_some_and(|n| write_text(&n.text(&self.seps), out));
        }
        // `(OBX-3 | CWE) | ('unknown' | CWE)`: the first built-in writes in
        // place when it gives something (the alternatives still count as read)
        if first_builtin(e).is_some() {
            return self.write_first_builtin(e, scope, out, false);
        }
        // `PD1-3 | XON`, `PID-5[*] | XPN`: the built-in writes in place
        if let Some((p, segment, field, dt, tz)) = builtin_path(e) {
            if is_single(p) {
                return match self.node_at(segment, field, p, scope) {
                    Some(n) if !n.is_empty() => self.build_into(dt, tz, n, out),
                    _ => false,
                };
            }
            let mark = out.len();
            out.push('[');
            let mut n = 0;
            self.builtin_items(p, segment, field, dt, tz, scope, out, &mut n);
            if n == 0 {
                out.truncate(mark);
                return false;
            }
            out.push(']');
            return true;
        }
        let v = self.expr(e, scope);
        self.write_val(v, out)
    }

    /// Writes the values of a template in an array position (flattened), each
    /// after a comma unless it is the first (`n` counts them).
    fn write_items(
        &mut self,
        t: &'a Template,
        scope: &Scope<'_, 'a>,
        out: &mut String,
        n: &mut usize,
    ) {
        match t {
            Template::Expr(e) => {
                if let Some((p, segment, field, dt, tz)) = builtin_path(e) {
                    self.builtin_items(p, segment, field, dt, tz, scope, out, n);
                    return;
                }
                let v = self.expr(e, scope);
                self.write_val_items(v, out, n);
            }
            Template::Literal(v) => {
                sep(out, n);
                json::push_value(out, v);
            }
            Template::Raw(text) => {
                sep(out, n);
                out.push_str(text);
            }
            Template::Array(ts) => {
                for t in ts {
                    self.write_items(t, scope, out, n);
                }
            }
            Template::Object(o) => match &o.iter {
                None => self.write_item_object(o, scope, out, n),
                Some(it) => {
                    let mut f = |ctx: &mut Self, sc: &Scope<'_, 'a>| {
                        ctx.write_item_object(o, sc, out, n);
                    };
                    self.iterate(it, scope, &mut f);
                }
            },
        }
    }

    /// `(PATH | BUILTIN) | alternative ...` in a member position: the built-in
    /// written in place when it gives something (the alternatives still count as
    /// read), else the whole expression as usual (`code`: as a FHIR code).
    fn write_first_builtin(
        &mut self,
        e: &'a Expr,
        scope: &Scope<'_, 'a>,
        out: &mut String,
        code: bool,
    ) -> bool {
        if let Some((Some((p, segment, field, dt, tz)), alts)) =
            first_builtin(e).map(|(inner, alts)| (builtin_path(inner), alts))
        {
            if let Some(n) = self.node_at(segment, field, p, scope) {
                if !n.is_empty() && self.build_into(dt, tz, n, out) {
                    for st in alts {
                        if let Stage::Alt(t) = st {
                            self.touch_term(t, scope);
                        }
                    }
                    return true;
                }
            }
        }
        let v = self.expr(e, scope);
        if code {
            self.write_code(v, out)
        } else {
            self.write_val(v, out)
        }
    }

    /// A data-type built-in applied to `n`, written at the end of `out` (false:
    /// nothing left of it, nothing written); its warnings are the mapping's.
    fn build_into(&mut self, dt: DataType, tz: &TimeZone, n: Node<'a>, out: &mut String) -> bool {
        let mut warnings = Vec::new();
        let written = datatypes::build_into(dt, n, &self.seps, tz, &mut warnings, out);
        for w in warnings {
            self.warn(Some(n.loc), w);
        }
        written
    }

    /// `PATH | BUILTIN` in an array position: the built-in of each element the
    /// path names (every repetition for `[*]`), each written as an item of the
    /// enclosing array after a comma unless it is the first (`n` counts them).
    #[allow(clippy::too_many_arguments)]
    fn builtin_items(
        &mut self,
        p: &'a Path,
        segment: &str,
        field: usize,
        dt: DataType,
        tz: &'a TimeZone,
        scope: &Scope<'_, 'a>,
        out: &mut String,
        n: &mut usize,
    ) {
        let mut item = |ctx: &mut Self, node: Node<'a>, out: &mut String| {
            if node.is_empty() {
                return;
            }
            let mark = out.len();
            if *n > 0 {
                out.push(',');
            }
            if ctx.build_into(dt, tz, node, out) {
                *n += 1;
            } else {
                out.truncate(mark);
            }
        };
        if is_single(p) {
            if let Some(node) = self.node_at(segment, field, p, scope) {
                item(self, node, out);
            }
            return;
        }
        // `[*]`: every repetition
        let Some(si) = self.find_segment(segment, scope) else {
            return;
        };
        self.mark(si, field);
        let Some(f) = self.segment(si).and_then(|s| s.field(field)) else {
            return;
        };
        for (k, r) in f.parts().enumerate() {
            let mut node = Some(Node {
                el: r,
                loc: Loc {
                    seg: si as u32,
                    field: field.min(u16::MAX as usize) as u16,
                    rep: (k + 1).min(u16::MAX as usize) as u16,
                },
            });
            if let Some(c) = p.comp {
                node = node.and_then(|x| x.part(c));
                if let Some(sub) = p.sub {
                    node = node.and_then(|x| x.part(sub));
                }
            }
            if let Some(node) = node {
                item(self, node, out);
            }
        }
    }

    fn write_item_object(
        &mut self,
        o: &'a ObjTemplate,
        scope: &Scope<'_, 'a>,
        out: &mut String,
        n: &mut usize,
    ) {
        let mark = out.len();
        if *n > 0 {
            out.push(',');
        }
        if self.write_object(o, scope, out) {
            *n += 1;
        } else {
            out.truncate(mark);
        }
    }

    /// Writes text as a FHIR `code` (white space inside collapsed to single
    /// spaces); anything else as [`Self::write_val`] does.
    fn write_code(&self, v: Val<'a>, out: &mut String) -> bool {
        match v {
            Val::Text(t) => write_text(&collapse_spaces(&t), out),
            Val::Node(n) => write_text(&collapse_spaces(&n.text(&self.seps)), out),
            v => self.write_val(v, out),
        }
    }

    /// Writes an evaluated value in a member position: text trimmed, lists as
    /// arrays (flattened); false (and nothing written) when it is empty.
    fn write_val(&self, v: Val<'a>, out: &mut String) -> bool {
        match v {
            Val::Empty => false,
            Val::Text(t) => write_text(&t, out),
            Val::Node(n) => write_text(&n.text(&self.seps), out),
            Val::Json(j) => {
                if json_is_empty(&j) {
                    return false;
                }
                json::push_value(out, &j);
                true
            }
            Val::Raw(text) => {
                out.push_str(&text);
                true
            }
            Val::Num(text) => {
                out.push_str(&text);
                true
            }
            Val::List(items) => {
                let mark = out.len();
                out.push('[');
                let mut n = 0;
                for i in items {
                    self.write_val_items(i, out, &mut n);
                }
                if n == 0 {
                    out.truncate(mark);
                    return false;
                }
                out.push(']');
                true
            }
        }
    }

    /// Writes an evaluated value in an array position: lists and JSON arrays are
    /// flattened into the enclosing array.
    fn write_val_items(&self, v: Val<'a>, out: &mut String, n: &mut usize) {
        match v {
            Val::List(items) => {
                for i in items {
                    self.write_val_items(i, out, n);
                }
            }
            Val::Json(Value::Array(a)) => {
                for item in &a {
                    sep(out, n);
                    json::push_value(out, item);
                }
            }
            v => {
                let mark = out.len();
                if *n > 0 {
                    out.push(',');
                }
                if self.write_val(v, out) {
                    *n += 1;
                } else {
                    out.truncate(mark);
                }
            }
        }
    }

    // ---- expressions -----------------------------------------------------------

    fn expr(&mut self, e: &'a Expr, scope: &Scope<'_, 'a>) -> Val<'a> {
        let mut loc = None;
        let mut stages = e.stages.as_slice();
        let mut v = match (&e.first, stages.split_first()) {
            // `PATH | when(cond) ...`: the condition does not look at the value,
            // so it is asked first and the path is only read when it holds (a
            // path has no effect but marking its field read, which is done anyway;
            // a concatenation's parts, a gathering's groups and a parenthesised
            // expression's terms are marked alike, and what they would have warned
            // about is not used)
            (
                Term::Path(_)
                | Term::Literal(_)
                | Term::Concat(_)
                | Term::ConcatWs(..)
                | Term::Gather(..)
                | Term::Group(_),
                Some((Stage::Transform(Transform::When(c)), rest)),
            ) => {
                stages = rest;
                if self.cond(c, scope) {
                    self.term(&e.first, scope, &mut loc)
                } else {
                    self.touch_term(&e.first, scope);
                    Val::Empty
                }
            }
            _ => self.term(&e.first, scope, &mut loc),
        };
        for st in stages {
            match st {
                Stage::Alt(t) => {
                    if v.is_empty() {
                        v = self.term(t, scope, &mut loc);
                    } else {
                        self.touch_term(t, scope);
                    }
                }
                Stage::Transform(t) => v = self.transform(t, v, loc, scope),
            }
        }
        v
    }

    /// A macro's value, computed once per distinct input: the segments it names
    /// as resolved in this scope, the `each` element and position when it uses them.
    fn macro_value(&mut self, i: usize, scope: &Scope<'_, 'a>) -> Val<'a> {
        let plan = self.plan;
        let (Some(e), Some(deps)) = (plan.macros.get(i), plan.macro_deps.get(i)) else {
            return Val::Empty;
        };
        // asked for again in the same scope: the value it had a moment ago
        if let Some((id, used_position, v)) = self.memo.get(i) {
            if *id == scope.id {
                if *used_position {
                    self.position_reads += 1;
                }
                return v.clone();
            }
        }
        let before = self.position_reads;
        let v = self.macro_lookup(i, e, deps, scope);
        let used_position = self.position_reads != before;
        if let Some(slot) = self.memo.get_mut(i) {
            *slot = (scope.id, used_position, v.clone());
        }
        v
    }

    /// [`Self::macro_value`] past the same-scope memo: the value by the segments
    /// the macro names as resolved in this scope (a cache across scopes).
    #[inline(never)]
    fn macro_lookup(
        &mut self,
        i: usize,
        e: &'a Expr,
        deps: &'a MacroDeps,
        scope: &Scope<'_, 'a>,
    ) -> Val<'a> {
        let elem = if deps.relative {
            match scope.elem {
                Some(Val::Node(n)) => Some((n.raw().as_ptr() as usize, n.raw().len(), n.loc)),
                // not a message element: no stable identity, do not cache
                Some(_) => return self.expr(e, scope),
                None => None,
            }
        } else {
            None
        };
        if deps.uncached || deps.segments.len() > MACRO_KEY_SEGMENTS {
            return self.expr(e, scope);
        }
        // a cheap fingerprint compared first: most lookups scan several entries.
        // Without the position: an entry whose computation never read `position()`
        // (an earlier alternative won) serves every position.
        // (Only the slots this macro uses: the rest are always unset.) Made as the
        // slots are resolved, so the slots are not read back straight after being
        // written (a stalled load, measured).
        let mut segments = [u32::MAX; MACRO_KEY_SEGMENTS];
        let mut fp = 0u64;
        let mix = |fp: u64, x: u64| (fp.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
        for (slot, &k) in segments.iter_mut().zip(&deps.segment_ids) {
            let at = self.resolve(k, scope);
            *slot = at;
            fp = mix(fp, u64::from(at));
        }
        if let Some((p, l, _)) = elem {
            fp = mix(fp, (p ^ (l << 40)) as u64);
        }
        let position = if deps.position { scope.position } else { 0 };
        if let Some(c) = self.cache.get(i) {
            let at = c.index[MacroCache::bucket(fp)];
            let hit = c
                .entries
                .get(usize::from(at))
                .filter(|(k, used_position, _)| {
                    k.fp == fp
                        && k.segments == segments
                        && k.elem == elem
                        && (!used_position || k.position == position)
                });
            if let Some((_, used_position, v)) = hit {
                if *used_position {
                    // an enclosing macro's value depends on the position too
                    self.position_reads += 1;
                }
                return v.clone();
            }
        }
        let before = self.position_reads;
        let v = self.expr(e, scope);
        let v = self.keep(v);
        let used_position = self.position_reads != before;
        if let Some(c) = self.cache.get_mut(i) {
            let key = MacroKey {
                fp,
                segments,
                elem,
                position,
            };
            let entry = (key, used_position, v.clone());
            // bounded, so a message with thousands of groups stays linear: once
            // full, the oldest entry is replaced
            let at = if c.entries.len() < MACRO_CACHE_ENTRIES {
                c.entries.push(entry);
                c.entries.len() - 1
            } else {
                let at = c.next;
                c.entries[at] = entry;
                c.next = (at + 1) % MACRO_CACHE_ENTRIES;
                at
            };
            c.index[MacroCache::bucket(fp)] = at as u8;
        }
        v
    }

    /// Marks the fields an alternative that was not needed would have read: a
    /// field named by a rule counts as mapped even when an earlier one won.
    fn touch_term(&mut self, t: &'a Term, scope: &Scope<'_, 'a>) {
        if !self.track_reads {
            return;
        }
        match t {
            Term::Path(p) => {
                if let Anchor::Field { segment, field } = &p.anchor {
                    if let Some(si) = self.find_segment(segment, scope) {
                        self.mark(si, *field);
                    }
                }
            }
            Term::Group(e) => self.touch_expr(e, scope),
            Term::Gather(heads, e) => {
                self.groups(heads, scope, &mut |ctx, inner| ctx.touch_expr(e, inner));
            }
            Term::Concat(parts) | Term::ConcatWs(_, parts) | Term::PositionBy(parts) => {
                for p in parts {
                    self.touch_expr(p, scope);
                }
            }
            Term::Macro(_) | Term::Literal(_) | Term::Position | Term::Occurrence(_) => {}
        }
    }

    fn touch_expr(&mut self, e: &'a Expr, scope: &Scope<'_, 'a>) {
        self.touch_term(&e.first, scope);
        for st in &e.stages {
            if let Stage::Alt(t) = st {
                self.touch_term(t, scope);
            }
        }
    }

    fn term(&mut self, t: &'a Term, scope: &Scope<'_, 'a>, loc: &mut Option<Loc>) -> Val<'a> {
        match t {
            Term::Literal(s) => Val::Text(Cow::Borrowed(s.as_str())),
            Term::Position => {
                self.position_reads += 1;
                let mut s = String::with_capacity(4);
                push_number(&mut s, scope.position);
                Val::Text(Cow::Owned(s))
            }
            Term::PositionBy(parts) => self.position_by(parts, scope),
            Term::Occurrence(name) => match self.find_segment(name, scope) {
                Some(i) => {
                    let mut s = String::with_capacity(4);
                    push_number(&mut s, self.occurrence[i].0 as usize);
                    Val::Text(Cow::Owned(s))
                }
                None => Val::Empty,
            },
            Term::Gather(heads, e) => self.gather(heads, e, scope),
            Term::Macro(i) => self.macro_value(*i, scope),
            Term::Concat(parts) => self.concat(parts, scope),
            Term::ConcatWs(sep, parts) => self.concat_ws(sep, parts, scope),
            Term::Group(e) => self.expr(e, scope),
            Term::Path(p) => {
                let v = self.path(p, scope);
                *loc = match &v {
                    Val::Node(n) => Some(n.loc),
                    Val::List(l) => l.iter().find_map(|x| match x {
                        Val::Node(n) => Some(n.loc),
                        _ => None,
                    }),
                    _ => None,
                };
                v
            }
        }
    }

    /// `for('chain', expr)`: `expr` in each group of the chain, a list; empty
    /// when every group's is. A group whose value is empty keeps its place as an
    /// empty item, so `lines` lays out a report sent one line per segment with its
    /// blank lines (`join`, arrays and texts skip empty items).
    #[inline(never)]
    fn gather(&mut self, heads: &'a [GroupHead], e: &'a Expr, scope: &Scope<'_, 'a>) -> Val<'a> {
        let mut items = Vec::new();
        let mut any = false;
        self.groups(heads, scope, &mut |ctx, inner| {
            let v = ctx.expr(e, inner);
            if v.is_empty() {
                items.push(Val::Empty);
            } else {
                any = true;
                items.push(ctx.keep(v));
            }
        });
        if any {
            Val::List(items)
        } else {
            Val::Empty
        }
    }

    /// `position(key, ...)`: how many groups of this iteration, up to and including
    /// this one, give the same key texts. Each group's key is computed once per
    /// iteration and counted as the groups are reached (`Ctx::keyed`), so a report
    /// of thousands of text lines stays linear.
    #[inline(never)]
    fn position_by(&mut self, parts: &'a [Expr], scope: &Scope<'_, 'a>) -> Val<'a> {
        self.position_reads += 1;
        let head = scope.start;
        let from = scope.siblings;
        let Some(&name) = self.names.get(head) else {
            return Val::Empty;
        };
        let n = if from > head {
            scope.position
        } else {
            let tag = parts.as_ptr() as usize;
            let k = match self
                .keyed
                .iter()
                .position(|c| c.tag == tag && c.from == from)
            {
                Some(k) => k,
                None => {
                    self.keyed.push(KeyedGroups {
                        tag,
                        from,
                        next: from,
                        counts: Default::default(),
                        found: Vec::new(),
                    });
                    self.keyed.len() - 1
                }
            };
            // count the groups not reached yet, up to this one
            while self.keyed[k].next <= head {
                let at = self.keyed[k].next;
                let end = (at + 1..self.names.len())
                    .find(|&j| self.names[j] == name)
                    .unwrap_or(self.names.len());
                let sibling = Scope {
                    id: self.scope_id(),
                    start: at,
                    end: if at == head { scope.end } else { end },
                    parent: scope.parent,
                    elem: scope.elem,
                    position: 0,
                    siblings: NO_SIBLINGS,
                };
                // the key made in a buffer kept across calls, kept in the arena
                let mut buf = std::mem::take(&mut self.key_buf);
                buf.clear();
                for p in parts {
                    let v = self.expr(p, &sibling);
                    buf.push_str(&self.text_of(v));
                    buf.push('\u{0}');
                }
                let key: &'a str = self.arena.alloc_str(&buf);
                self.key_buf = buf;
                let c = &mut self.keyed[k];
                let count = c.counts.entry(key).or_insert(0);
                *count += 1;
                c.found.push((at, *count));
                c.next = end;
            }
            let found = &self.keyed[k].found;
            match found.binary_search_by_key(&head, |(at, _)| *at) {
                Ok(i) => found[i].1,
                Err(_) => scope.position,
            }
        };
        let mut s = String::with_capacity(4);
        push_number(&mut s, n);
        Val::Text(Cow::Owned(s))
    }

    /// `concat(...)`: empty when any part is (kept out of line, as the other
    /// rarer arms of the evaluator are, so the hot ones stay small).
    #[inline(never)]
    fn concat(&mut self, parts: &'a [Expr], scope: &Scope<'_, 'a>) -> Val<'a> {
        let mut out = String::with_capacity(64);
        for p in parts {
            let v = self.expr(p, scope);
            if v.is_empty() {
                return Val::Empty;
            }
            let text = self.text_of(v);
            let text = text.trim_fast();
            // a part that decodes to nothing (`\X00\`) is empty too: no key
            // is made of it
            if text.is_empty() {
                return Val::Empty;
            }
            out.push_str(text);
        }
        Val::Text(Cow::Owned(out))
    }

    /// `concat_ws(sep, ...)`: the non-empty parts joined by `sep`.
    #[inline(never)]
    fn concat_ws(&mut self, sep: &str, parts: &'a [Expr], scope: &Scope<'_, 'a>) -> Val<'a> {
        let mut out = String::with_capacity(64);
        for p in parts {
            let v = self.expr(p, scope);
            if v.is_empty() {
                continue;
            }
            let t = self.text_of(v);
            let t = t.trim_fast();
            if t.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push_str(sep);
            }
            out.push_str(t);
        }
        if out.is_empty() {
            Val::Empty
        } else {
            Val::Text(Cow::Owned(out))
        }
    }

    /// The element a path to one field repetition (`PID-8`, `OBX-5.2`, `PID-3[2].1`)
    /// names, with its field marked read: what [`Self::path`] gives as `Val::Node`,
    /// without building a value. `None` when the message has no such element.
    /// Only for [`is_single`] paths.
    fn node_at(
        &mut self,
        segment: &str,
        field: usize,
        p: &Path,
        scope: &Scope<'_, 'a>,
    ) -> Option<Node<'a>> {
        let si = self.find_segment(segment, scope)?;
        self.mark(si, field);
        let k = match p.rep {
            RepSel::Index(k) => k,
            _ => 1,
        };
        let el = self
            .segment(si)?
            .locate(field, k, p.comp, p.comp.and(p.sub))?;
        Some(Node {
            el,
            loc: Loc {
                seg: si as u32,
                field: field.min(u16::MAX as usize) as u16,
                rep: k.min(u16::MAX as usize) as u16,
            },
        })
    }

    /// An expression that is only a [`is_single`] path: its element, read as
    /// [`Self::expr`] would (`Some(None)`: no such element); `None` when the
    /// expression is anything else.
    #[inline]
    fn single(&mut self, e: &'a Expr, scope: &Scope<'_, 'a>) -> Option<Option<Node<'a>>> {
        match field_path(e) {
            Some((p, segment, field, [])) if is_single(p) => {
                Some(self.node_at(segment, field, p, scope))
            }
            _ => None,
        }
    }

    fn path(&mut self, p: &'a Path, scope: &Scope<'_, 'a>) -> Val<'a> {
        if let Anchor::Field { segment, field } = &p.anchor {
            if is_single(p) {
                return match self.node_at(segment, *field, p, scope) {
                    Some(n) => Val::Node(n),
                    None => Val::Empty,
                };
            }
        }
        self.path_general(p, scope)
    }

    /// [`Self::path`] for relative paths, `[*]` and predicates.
    #[inline(never)]
    fn path_general(&mut self, p: &'a Path, scope: &Scope<'_, 'a>) -> Val<'a> {
        let descend = |n: Node<'a>| -> Option<Node<'a>> {
            let mut n = n;
            if let Some(c) = p.comp {
                n = n.part(c)?;
                if let Some(s) = p.sub {
                    n = n.part(s)?;
                }
            }
            Some(n)
        };
        match &p.anchor {
            Anchor::Relative => match scope.elem {
                Some(Val::Node(n)) => match descend(*n) {
                    Some(n) => Val::Node(n),
                    None => Val::Empty,
                },
                Some(v) if p.comp.is_none() => v.clone(),
                _ => Val::Empty,
            },
            Anchor::Field { segment, field } => {
                let Some(si) = self.find_segment(segment, scope) else {
                    return Val::Empty;
                };
                self.mark(si, *field);
                let Some(f) = self.segment(si).and_then(|s| s.field(*field)) else {
                    return Val::Empty;
                };
                let node = |k: usize, r: Element<'a>| Node {
                    el: r,
                    loc: Loc {
                        seg: si as u32,
                        field: (*field).min(u16::MAX as usize) as u16,
                        rep: k.min(u16::MAX as usize) as u16,
                    },
                };
                match &p.rep {
                    RepSel::First | RepSel::Index(_) => {
                        let k = match p.rep {
                            RepSel::Index(k) => k,
                            _ => 1,
                        };
                        match f.part(k).map(|r| node(k, r)).and_then(descend) {
                            Some(n) => Val::Node(n),
                            None => Val::Empty,
                        }
                    }
                    RepSel::All => Val::List(
                        f.parts()
                            .enumerate()
                            .filter_map(|(k, r)| descend(node(k + 1, r)))
                            .map(Val::Node)
                            .collect(),
                    ),
                    RepSel::Pred(c) => {
                        for (k, r) in f.parts().enumerate() {
                            let elem = Val::Node(node(k + 1, r));
                            let inner = Scope {
                                id: self.scope_id(),
                                start: scope.start,
                                end: scope.end,
                                parent: scope.parent,
                                elem: Some(&elem),
                                position: k + 1,
                                siblings: NO_SIBLINGS,
                            };
                            if self.cond(c, &inner) {
                                return match descend(node(k + 1, r)) {
                                    Some(n) => Val::Node(n),
                                    None => Val::Empty,
                                };
                            }
                        }
                        Val::Empty
                    }
                }
            }
        }
    }

    /// The text of a value (lists: the first non-empty element).
    #[inline]
    fn text_of(&self, v: Val<'a>) -> Cow<'a, str> {
        match v {
            Val::Text(t) => t,
            Val::Node(n) => n.text(&self.seps),
            v => self.text_of_other(v),
        }
    }

    /// [`Self::text_of`] for the values that are neither text nor an element.
    #[inline(never)]
    fn text_of_other(&self, v: Val<'a>) -> Cow<'a, str> {
        match v {
            Val::Empty => Cow::Borrowed(""),
            Val::Text(t) => t,
            Val::Node(n) => n.text(&self.seps),
            Val::Json(Value::String(s)) => Cow::Owned(s),
            Val::Json(Value::Null) => Cow::Borrowed(""),
            Val::Json(j) => Cow::Owned(j.to_string()),
            Val::Raw(text) => Cow::Owned(text),
            Val::Num(text) => text,
            Val::List(items) => items
                .into_iter()
                .find(|i| !i.is_empty())
                .map(|i| self.text_of(i))
                .unwrap_or(Cow::Borrowed("")),
        }
    }

    /// Does `f` hold for some text of the value (lists: each element), trimmed?
    fn any_text(&self, v: Val<'a>, f: &mut dyn FnMut(&str) -> bool) -> bool {
        match v {
            Val::List(items) => items.into_iter().any(|i| self.any_text(i, f)),
            v => f(self.text_of(v).trim_fast()),
        }
    }

    /// Every text of a value (lists: each element), trimmed.
    fn texts(&self, v: Val<'a>, out: &mut Vec<Cow<'a, str>>) {
        match v {
            Val::List(items) => {
                for i in items {
                    self.texts(i, out);
                }
            }
            v => out.push(trim_cow(self.text_of(v))),
        }
    }

    /// The texts of a value as sent, not trimmed (for `lines`).
    fn texts_as_sent(&self, v: Val<'a>, out: &mut Vec<Cow<'a, str>>) {
        match v {
            Val::List(items) => {
                for i in items {
                    self.texts_as_sent(i, out);
                }
            }
            v => out.push(self.text_of(v)),
        }
    }

    /// One stage of a pipeline. The frequent stages on one value (`trim`,
    /// `upper`, `lookup`, `number`, `default`, `when`) are done here; the rest,
    /// and lists, in [`Self::transform_other`], kept out of line so this stays small.
    fn transform(
        &mut self,
        t: &'a Transform,
        v: Val<'a>,
        loc: Option<Loc>,
        scope: &Scope<'_, 'a>,
    ) -> Val<'a> {
        match (t, &v) {
            (Transform::Default(d), _) => {
                if v.is_empty() {
                    Val::Text(Cow::Borrowed(d.as_str()))
                } else {
                    v
                }
            }
            (Transform::When(c), _) => {
                if self.cond(c, scope) {
                    v
                } else {
                    Val::Empty
                }
            }
            (
                Transform::Lookup(_)
                | Transform::Trim
                | Transform::Upper
                | Transform::Lower
                | Transform::Number,
                Val::Node(_) | Val::Text(_),
            ) => {
                if v.is_empty() {
                    return Val::Empty;
                }
                let text = self.text_of(v);
                self.text_transform(t, text, loc)
            }
            _ => self.transform_other(t, v, loc, scope),
        }
    }

    /// [`Self::transform`] on non-empty text for the frequent stages.
    #[inline]
    fn text_transform(
        &mut self,
        t: &'a Transform,
        text: Cow<'a, str>,
        loc: Option<Loc>,
    ) -> Val<'a> {
        match t {
            Transform::Lookup(i) => {
                let key = text.trim_fast();
                match self
                    .plan
                    .tables
                    .get(*i)
                    .and_then(|tb| tb.get(key).or_else(|| tb.get("*")))
                {
                    Some(Value::String(s)) => Val::Text(Cow::Borrowed(s.as_str())),
                    Some(j) => Val::Json(j.clone()),
                    None => Val::Empty,
                }
            }
            Transform::Trim => Val::Text(trim_cow(text)),
            // ASCII text already in the target case is kept as is (no allocation);
            // anything else goes through the full Unicode mapping.
            Transform::Upper
                if text.is_ascii() && !text.bytes().any(|b| b.is_ascii_lowercase()) =>
            {
                Val::Text(text)
            }
            Transform::Lower
                if text.is_ascii() && !text.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                Val::Text(text)
            }
            Transform::Upper => Val::Text(Cow::Owned(text.to_uppercase())),
            Transform::Lower => Val::Text(Cow::Owned(text.to_lowercase())),
            Transform::Number => match transform::number_text(&text) {
                Some(n) => Val::Num(match (&text, n) {
                    (Cow::Borrowed(t), transform::NumberText::At(a, b)) => {
                        Cow::Borrowed(t.get(a..b).unwrap_or(""))
                    }
                    (t, n) => Cow::Owned(n.text(t).to_string()),
                }),
                None => {
                    self.warn(loc, format!("`{}` is not a number", text.trim_fast()));
                    Val::Empty
                }
            },
            _ => Val::Empty,
        }
    }

    /// [`Self::transform`] for lists and the less frequent stages.
    #[inline(never)]
    fn transform_other(
        &mut self,
        t: &'a Transform,
        v: Val<'a>,
        loc: Option<Loc>,
        scope: &Scope<'_, 'a>,
    ) -> Val<'a> {
        // (`default` and `when` never come here: `transform` does them for any value)
        if let Transform::Warn(message) = t {
            if !v.is_empty() {
                let loc = match &v {
                    Val::Node(n) => Some(n.loc),
                    _ => loc,
                };
                self.warn(loc, message.clone());
            }
            return Val::Empty;
        }
        if let Transform::Lines = t {
            let mut texts = Vec::new();
            self.texts_as_sent(v, &mut texts);
            return match transform::lines(&texts) {
                Some(s) => Val::Text(Cow::Owned(s)),
                None => Val::Empty,
            };
        }
        if let Transform::Join(sep) = t {
            let mut texts = Vec::new();
            self.texts(v, &mut texts);
            texts.retain(|t| !t.is_empty());
            return if texts.is_empty() {
                Val::Empty
            } else {
                Val::Text(Cow::Owned(texts.join(sep.as_str())))
            };
        }
        if let Val::List(items) = v {
            return Val::List(
                items
                    .into_iter()
                    .map(|i| {
                        let l = match &i {
                            Val::Node(n) => Some(n.loc),
                            _ => loc,
                        };
                        self.transform(t, i, l, scope)
                    })
                    .filter(|i| !i.is_empty())
                    .collect(),
            );
        }
        if v.is_empty() {
            return Val::Empty;
        }
        if let Transform::Parts(sep) = t {
            return match v {
                Val::Node(n) => {
                    let mut texts = Vec::new();
                    leaf_texts(n.el, &self.seps, &mut texts);
                    match texts.len() {
                        0 => Val::Empty,
                        1 => Val::Text(texts.swap_remove(0)),
                        _ => Val::Text(Cow::Owned(texts.join(sep.as_str()))),
                    }
                }
                v => v,
            };
        }
        if let Transform::Builtin(dt, tz) = t {
            return match v {
                // already a FHIR element (e.g. an alternative built before): keep it
                Val::Json(j) => Val::Json(j),
                Val::Raw(text) => Val::Raw(text),
                Val::Num(text) => Val::Num(text),
                Val::Node(n) => {
                    let mut warnings = Vec::new();
                    let out = datatypes::build(*dt, n, &self.seps, tz, &mut warnings);
                    for w in warnings {
                        self.warn(Some(n.loc), w);
                    }
                    out.map(Val::Raw).unwrap_or(Val::Empty)
                }
                other => {
                    let text = self.text_of(other);
                    datatypes::build_text(*dt, text.trim_fast())
                        .map(Val::Raw)
                        .unwrap_or(Val::Empty)
                }
            };
        }
        let text = self.text_of(v);
        match t {
            Transform::Lookup(_)
            | Transform::Trim
            | Transform::Upper
            | Transform::Lower
            | Transform::Number => self.text_transform(t, text, loc),
            Transform::Date => match transform::hl7_date(&text) {
                Ok(d) => Val::Text(Cow::Owned(d)),
                Err(e) => {
                    self.warn(loc, e);
                    Val::Empty
                }
            },
            Transform::Time => match transform::hl7_time(&text) {
                Ok(t) => Val::Text(Cow::Owned(t)),
                Err(e) => {
                    self.warn(loc, e);
                    Val::Empty
                }
            },
            Transform::DateTime(tz) => match self.datetime(&text, tz) {
                Ok(d) => Val::Text(Cow::Borrowed(d)),
                Err(e) => {
                    self.warn(loc, e);
                    Val::Empty
                }
            },
            Transform::Instant(tz) => match self.datetime(&text, tz) {
                Ok(d) if d.contains('T') => Val::Text(Cow::Borrowed(d)),
                Ok(_) => {
                    self.warn(
                        loc,
                        format!(
                            "`{}` has no time of day, which an instant needs",
                            text.trim_fast()
                        ),
                    );
                    Val::Empty
                }
                Err(e) => {
                    self.warn(loc, e);
                    Val::Empty
                }
            },
            Transform::NhsNumber => match transform::nhs_number(&text) {
                Some(n) => Val::Text(Cow::Owned(n)),
                None => {
                    self.warn(
                        loc,
                        format!(
                            "NHS number {} {}; kept as a local identifier",
                            text.trim_fast(),
                            transform::nhs_number_problem(&text)
                        ),
                    );
                    Val::Empty
                }
            },
            Transform::RegexReplace(re, rep) => match re.replace_all(&text, rep.as_str()) {
                // no match: the text as it was, still borrowed from the message
                Cow::Borrowed(_) => Val::Text(text),
                Cow::Owned(replaced) => Val::Text(Cow::Owned(replaced)),
            },
            Transform::UrlEncode => match transform::url_encode(&text) {
                Cow::Borrowed(_) => Val::Text(text),
                Cow::Owned(encoded) => Val::Text(Cow::Owned(encoded)),
            },
            Transform::CodingSystem => match datatypes::coding_system(&text) {
                Cow::Borrowed("") => Val::Empty,
                Cow::Borrowed(uri) => Val::Text(Cow::Borrowed(uri)),
                Cow::Owned(uri) => Val::Text(Cow::Owned(uri)),
            },
            Transform::Comparator => match transform::split_comparator(&text).0 {
                "" => Val::Empty,
                c => Val::Text(Cow::Borrowed(c)),
            },
            Transform::StripComparator => match &text {
                Cow::Borrowed(t) => Val::Text(Cow::Borrowed(transform::split_comparator(t).1)),
                Cow::Owned(t) => {
                    Val::Text(Cow::Owned(transform::split_comparator(t).1.to_string()))
                }
            },
            Transform::Base64 => Val::Text(Cow::Owned(transform::base64(&text))),
            Transform::HexToBase64 => match transform::hex_to_base64(&text) {
                Some(b) => Val::Text(Cow::Owned(b)),
                None => {
                    self.warn(
                        loc,
                        "not hexadecimal (an even number of 0-9 A-F digits); left out".to_string(),
                    );
                    Val::Empty
                }
            },
            Transform::Base64Check => match transform::base64_check(&text) {
                Some(b) => Val::Text(Cow::Owned(b)),
                None => {
                    self.warn(
                        loc,
                        "not Base64 that decodes (cut short, or another encoding); left out"
                            .to_string(),
                    );
                    Val::Empty
                }
            },
            Transform::Range(bound) => match &text {
                Cow::Borrowed(t) => match transform::range_bound(t, *bound) {
                    Some(n) => Val::Text(Cow::Borrowed(n)),
                    None => Val::Empty,
                },
                Cow::Owned(t) => match transform::range_bound(t, *bound) {
                    Some(n) => Val::Text(Cow::Owned(n.to_string())),
                    None => Val::Empty,
                },
            },
            Transform::Uuid5(kind) => {
                Val::Text(Cow::Owned(transform::uuid5(kind, text.trim_fast())))
            }
            // handled above, or by `transform` (`default`, `when`)
            Transform::Default(_)
            | Transform::Join(_)
            | Transform::Parts(_)
            | Transform::Lines
            | Transform::Warn(_)
            | Transform::When(_)
            | Transform::Builtin(..) => Val::Empty,
        }
    }

    // ---- conditions ------------------------------------------------------------

    fn cond(&mut self, c: &'a Cond, scope: &Scope<'_, 'a>) -> bool {
        match c {
            Cond::Or(cs) => cs.iter().any(|c| self.cond(c, scope)),
            Cond::And(cs) => cs.iter().all(|c| self.cond(c, scope)),
            Cond::Not(c) => !self.cond(c, scope),
            Cond::Empty(e) => match self.single(e, scope) {
                Some(n) => n.is_none_or(|n| n.is_empty()),
                None => self.expr(e, scope).is_empty(),
            },
            Cond::Deleted(e) => match self.single(e, scope) {
                Some(n) => n.is_some_and(|n| n.raw() == "\"\""),
                None => match self.expr(e, scope) {
                    Val::Node(n) => n.raw() == "\"\"",
                    _ => false,
                },
            },
            Cond::NonEmpty(e) => match self.single(e, scope) {
                Some(n) => n.is_some_and(|n| !n.is_empty()),
                None => !self.expr(e, scope).is_empty(),
            },
            Cond::NoSegment(name) => self.find_segment(name, scope).is_none(),
            Cond::Compare {
                left,
                eq,
                right:
                    Expr {
                        first: Term::Literal(lit),
                        stages,
                    },
            } if stages.is_empty() => {
                // the usual `OBX-2 = 'NM'`: the literal needs no evaluation
                let lit = lit.trim_fast();
                if let Some(n) = self.single(left, scope) {
                    let same = match n {
                        Some(n) => n.text(&self.seps).trim_fast() == lit,
                        None => lit.is_empty(),
                    };
                    return same == *eq;
                }
                let l = self.expr(left, scope);
                let any = match l {
                    Val::Node(n) => n.text(&self.seps).trim_fast() == lit,
                    l => self.any_text(l, &mut |a| a == lit),
                };
                any == *eq
            }
            Cond::Compare { left, eq, right } => self.compare(left, right, scope) == *eq,
            Cond::Order {
                left,
                or_equal,
                right,
            } => self.order(left, right, scope).is_some_and(|o| {
                o == std::cmp::Ordering::Less || (*or_equal && o == std::cmp::Ordering::Equal)
            }),
            Cond::In { left, set } => {
                if let Some(n) = self.single(left, scope) {
                    let t = match n {
                        Some(n) => n.text(&self.seps),
                        None => Cow::Borrowed(""),
                    };
                    let t = t.trim_fast();
                    return set.iter().any(|s| s == t);
                }
                match self.expr(left, scope) {
                    Val::Node(n) => {
                        let t = n.text(&self.seps);
                        let t = t.trim_fast();
                        set.iter().any(|s| s == t)
                    }
                    l => self.any_in(l, set),
                }
            }
        }
    }

    /// `left = right` for any two expressions: some text of the left is some
    /// text of the right.
    #[inline(never)]
    fn compare(&mut self, left: &'a Expr, right: &'a Expr, scope: &Scope<'_, 'a>) -> bool {
        let (l, r) = (self.expr(left, scope), self.expr(right, scope));
        match r {
            Val::List(_) => {
                let mut rt = Vec::new();
                self.texts(r, &mut rt);
                self.any_text(l, &mut |a| rt.iter().any(|b| a == b.as_ref()))
            }
            r => {
                let rt = self.text_of(r);
                let rt = rt.trim_fast();
                self.any_text(l, &mut |a| a == rt)
            }
        }
    }

    /// How the texts of `left` and `right` compare: as numbers when both are,
    /// else as FHIR times when both are (a `dateTime` or `instant` with its
    /// offset, compared as instants; or two dates); `None` otherwise.
    #[inline(never)]
    fn order(
        &mut self,
        left: &'a Expr,
        right: &'a Expr,
        scope: &Scope<'_, 'a>,
    ) -> Option<std::cmp::Ordering> {
        let (l, r) = (self.expr(left, scope), self.expr(right, scope));
        let (l, r) = (self.text_of(l), self.text_of(r));
        let (l, r) = (l.trim_fast(), r.trim_fast());
        let number =
            |t: &str| transform::number_text(t).and_then(|n| n.text(t).parse::<f64>().ok());
        if let (Some(a), Some(b)) = (number(l), number(r)) {
            return a.partial_cmp(&b);
        }
        let (a, b) = (time_span(l)?, time_span(r)?);
        // (a time said to the year, month or day is the whole of it: before
        // another when it ends by the other's start; overlapping, neither)
        if a == b {
            Some(std::cmp::Ordering::Equal)
        } else if a.1 <= b.0 {
            Some(std::cmp::Ordering::Less)
        } else if b.1 <= a.0 {
            Some(std::cmp::Ordering::Greater)
        } else {
            None
        }
    }

    /// Some text of `v` is in `set`.
    #[inline(never)]
    fn any_in(&self, v: Val<'a>, set: &[String]) -> bool {
        self.any_text(v, &mut |a| set.iter().any(|s| s == a))
    }
}

/// The span of time a FHIR `instant`, `dateTime` or `date` covers, as
/// `[start, end)`: an instant (with its offset) a nanosecond, a date, a month
/// (`2025-06`) or a year (`2025`) the whole of it, taken in UTC. `None` for
/// anything else.
fn time_span(t: &str) -> Option<(jiff::Timestamp, jiff::Timestamp)> {
    use jiff::{civil, tz::TimeZone, Span, ToSpan};
    if let Ok(at) = t.parse::<jiff::Timestamp>() {
        return Some((at, at.checked_add(Span::new().nanoseconds(1)).ok()?));
    }
    let b = t.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let (start, length) = match b.len() {
        4 if digits(0..4) => (civil::date(t.parse().ok()?, 1, 1), 1.year()),
        7 if digits(0..4) && b[4] == b'-' && digits(5..7) => (
            civil::Date::new(t[..4].parse().ok()?, t[5..].parse().ok()?, 1).ok()?,
            1.month(),
        ),
        10 => (t.parse::<civil::Date>().ok()?, 1.day()),
        _ => return None,
    };
    let from = start.to_zoned(TimeZone::UTC).ok()?;
    let to = from.checked_add(length).ok()?;
    Some((from.timestamp(), to.timestamp()))
}

/// A path to one repetition of a field of a segment (no `[*]`, no predicate).
#[inline]
/// The non-empty texts (unescaped, trimmed, `""` as empty) of the
/// subcomponents under `el`, in order.
fn leaf_texts<'a>(el: Element<'a>, seps: &Separators, out: &mut Vec<Cow<'a, str>>) {
    if el.level() == Level::Subcomponent {
        let text = match el.raw() {
            "\"\"" => Cow::Borrowed(""),
            _ => trim_cow(el.unescaped(seps)),
        };
        if !text.is_empty() {
            out.push(text);
        }
        return;
    }
    for part in el.parts() {
        leaf_texts(part, seps, out);
    }
}

fn is_single(p: &Path) -> bool {
    matches!(p.anchor, Anchor::Field { .. }) && matches!(p.rep, RepSel::First | RepSel::Index(_))
}

/// `PATH | BUILTIN` (`PD1-4 | XCN`, `PID-5[*] | XPN`): the path (one repetition or
/// all of them, no predicate), its segment and field, and the built-in.
#[inline]
fn builtin_path(e: &Expr) -> Option<(&Path, &str, usize, DataType, &TimeZone)> {
    match field_path(e)? {
        (p, segment, field, [Stage::Transform(Transform::Builtin(dt, tz))])
            if !matches!(p.rep, RepSel::Pred(_)) =>
        {
            Some((p, segment, field, *dt, tz))
        }
        _ => None,
    }
}

/// An expression that starts with a path into a segment's field: the path, its
/// segment and field, and the stages after it.
#[inline]
fn field_path(e: &Expr) -> Option<(&Path, &str, usize, &[Stage])> {
    match e {
        Expr {
            first:
                Term::Path(
                    p @ Path {
                        anchor: Anchor::Field { segment, field },
                        ..
                    },
                ),
            stages,
        } => Some((p, segment.as_str(), *field, stages.as_slice())),
        _ => None,
    }
}

/// `(PATH | BUILTIN) | alternative | ...` with a single-repetition path: the
/// group's expression and the alternatives after it.
#[inline]
fn first_builtin(e: &Expr) -> Option<(&Expr, &[Stage])> {
    let Term::Group(inner) = &e.first else {
        return None;
    };
    let (p, ..) = builtin_path(inner)?;
    (is_single(p) && e.stages.iter().all(|s| matches!(s, Stage::Alt(_))))
        .then_some((inner.as_ref(), e.stages.as_slice()))
}

/// Does `document` contain `fragment` somewhere (at the top or at any depth)?
/// At the place it matches: objects match when every member of the fragment is
/// present and matches; arrays when every element of the fragment matches some
/// element; a non-array fragment also matches an array holding a matching element;
/// numbers compare by value (`5` matches `5.0`); other scalars are equal.
pub fn contains_fragment(document: &Value, fragment: &Value) -> bool {
    matches_at(document, fragment)
        || match document {
            Value::Object(m) => m.values().any(|v| contains_fragment(v, fragment)),
            Value::Array(a) => a.iter().any(|v| contains_fragment(v, fragment)),
            _ => false,
        }
}

/// Subset match at this position (no searching deeper).
fn matches_at(document: &Value, fragment: &Value) -> bool {
    match (document, fragment) {
        (Value::Object(d), Value::Object(f)) => f
            .iter()
            .all(|(k, fv)| d.get(k).is_some_and(|dv| matches_at(dv, fv))),
        (Value::Array(d), Value::Array(f)) => {
            f.iter().all(|fv| d.iter().any(|dv| matches_at(dv, fv)))
        }
        (Value::Array(d), f) => d.iter().any(|dv| matches_at(dv, f)),
        (Value::Number(a), Value::Number(b)) => a == b || a.as_f64() == b.as_f64(),
        (d, f) => d == f,
    }
}

#[cfg(test)]
mod helper_tests {
    use super::{push_number, raw_is_empty, raw_is_empty_scan, TrimFast};

    fn check_number(n: usize) {
        let mut s = String::from("x");
        push_number(&mut s, n);
        assert_eq!(s, format!("x{n}"));
    }

    fn check_trim(s: &str) {
        assert_eq!(
            s.trim_fast(),
            s.trim_matches(|c: char| c.is_whitespace() || c.is_control()),
            "{s:?}"
        );
    }

    #[test]
    fn numbers_as_to_string() {
        for n in [0, 1, 9, 10, 99, 100, 12345, usize::MAX] {
            check_number(n);
        }
    }

    #[test]
    fn emptiness_is_known_at_the_first_byte_alike() {
        for raw in [
            "", " ", "^", "^~&", " \t", "\"\"", "a", "1^", "0", "é", " x", "^a", "Z ", "\"x\"",
        ] {
            assert_eq!(raw_is_empty(raw), raw_is_empty_scan(raw), "{raw:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn emptiness_agrees_with_the_scan(raw in "[ a-z0-9^&~\t\"é]{0,6}") {
            proptest::prop_assert_eq!(raw_is_empty(&raw), raw_is_empty_scan(&raw));
        }
    }

    #[test]
    fn trim_fast_is_trim() {
        for s in [
            "",
            " ",
            "a",
            " a",
            "a ",
            "\ta\t",
            "é",
            " é ",
            "a\u{3000}",
            "\u{a0}a",
            "a b",
            "\"\"",
        ] {
            check_trim(s);
        }
    }
}
