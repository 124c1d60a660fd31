//! The parsed structure of a message: byte ranges of segments, fields,
//! repetitions, components and subcomponents, built in one pass over the text.
//!
//! Nothing is copied and nothing is allocated per element: each level is one
//! flat `Vec` of ranges (`u32` offsets into the text), and every element knows
//! the contiguous run of its parts in the next level's `Vec`. Elements are
//! read through the borrowed views [`Segment`] and [`Element`], which cost a
//! pointer and an index each. Escape sequences are not touched here; they are
//! decoded only when a value is read ([`Element::text`], [`super::unescape`]).
//!
//! Splitting rules are those of HL7 (and of `hl7-parser` 0.3, which this
//! replaced on the hot path; the tests compare the two on arbitrary messages):
//! a subcomponent ends at the field, component, subcomponent or repetition
//! separator or at `'\r'`; the escape character does not protect separators
//! (an escaped separator is written `\F\`, `\S\`, …); every element has at
//! least one part, possibly empty. `'\n'` is data: [`super::decode`] has
//! already turned segment-ending line feeds into `'\r'`.
//!
//! # Invariants
//! - Every range lies on UTF-8 character boundaries of the text (separators
//!   are ASCII), so slicing never panics.
//! - The parts of an element tile its range: part ranges in order, one
//!   separator byte between neighbours, the first starting where the element
//!   starts and the last ending where it ends.
//! - Building never panics and is linear in the length of the text.

use std::borrow::Cow;
use std::fmt;

use super::escape::unescape;

/// The delimiters of a message (MSH-1 and MSH-2), and how its `\Xhh\`
/// escapes' bytes are read (by MSH-18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Separators {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: char,
    pub subcomponent: char,
    /// The character set MSH-18 names, for the bytes of a `\Xhh\` escape
    /// that are not UTF-8 (`None`: none named, or UTF-8; windows-1252 then,
    /// as [`super::decode`] reads such a message).
    pub hex: Option<&'static encoding_rs::Encoding>,
}

impl Default for Separators {
    /// `|^~\&`, the separators almost every sender uses.
    fn default() -> Separators {
        Separators {
            field: '|',
            component: '^',
            repetition: '~',
            escape: '\\',
            subcomponent: '&',
            hex: None,
        }
    }
}

/// An element with parts: `start..end` in the text, parts `first..first+count`
/// in the next level.
#[derive(Debug, Clone, Copy, Default)]
struct Node {
    start: u32,
    end: u32,
    first: u32,
    count: u32,
}

/// A subcomponent: a range of text.
#[derive(Debug, Clone, Copy, Default)]
struct Leaf {
    start: u32,
    end: u32,
}

#[derive(Debug, Clone, Copy)]
struct SegNode {
    name: [u8; 3],
    /// The next segment with the same name, or `u32::MAX`.
    next_same: u32,
    node: Node,
}

/// The ranges of one message. Built by [`Tree::build`] for text that
/// [`super::Message::parse`] has already checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tree<'a> {
    text: &'a str,
    /// The first and last offset of the escape character after MSH-2
    /// (`u32::MAX` and 0 when there is none): a value outside that span needs
    /// no decoding and is not searched (most of a message, when a few notes
    /// carry escapes).
    escape_span: (u32, u32),
    segments: Vec<SegNode>,
    fields: Vec<Node>,
    reps: Vec<Node>,
    comps: Vec<Node>,
    subs: Vec<Leaf>,
}

/// The first and last offset of `esc` in `text` from `from` on; `(u32::MAX, 0)`
/// when there is none.
fn escape_span(text: &str, from: usize, esc: u8) -> (u32, u32) {
    let rest = text.as_bytes().get(from..).unwrap_or_default();
    match (memchr::memchr(esc, rest), memchr::memrchr(esc, rest)) {
        (Some(first), Some(last)) => ((from + first) as u32, (from + last) as u32),
        _ => (u32::MAX, 0),
    }
}

/// Byte classes while splitting.
const DATA: u8 = 0;
const SUB: u8 = 1;
const COMP: u8 = 2;
const REP: u8 = 3;
const FIELD: u8 = 4;
const END: u8 = 5;

/// Why building stopped. The segments before the stop are all in the tree, so
/// the bad one is segment `segment_count() + 1`. `BadLine` also covers trailing
/// line endings, which `Message::parse` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Every byte was read.
    Complete,
    /// A line that is not `NAME` + field separator (or only line endings
    /// left). `consumed` is where the last good segment ended, not counting
    /// its `'\r'` — except right after MSH, where it does (this is how
    /// `hl7-parser` counted, and the error messages depend on it).
    BadLine { consumed: usize },
    /// A second MSH at `offset`.
    SecondMsh { offset: usize },
}

struct Splitter<'t> {
    bytes: &'t [u8],
    class: [u8; 256],
}

impl<'a> Tree<'a> {
    /// Splits `text`, which starts with `MSH`, the field separator and 4 (or 5)
    /// distinct ASCII encoding characters (`encoding_len`), and is shorter than
    /// `u32::MAX` bytes. Segments are read up to the first line that is not a
    /// segment; what stopped the reading is returned beside the tree.
    pub(crate) fn build(text: &'a str, encoding_len: usize) -> (Tree<'a>, Stop) {
        let bytes = text.as_bytes();
        let n = bytes.len();
        // Rough sizes for a typical message: fewer reallocations.
        let mut tree = Tree {
            text,
            escape_span: escape_span(text, 4 + encoding_len, bytes[6]),
            segments: Vec::with_capacity(n / 64 + 2),
            fields: Vec::with_capacity(n / 6 + 4),
            reps: Vec::with_capacity(n / 6 + 4),
            comps: Vec::with_capacity(n / 5 + 4),
            subs: Vec::with_capacity(n / 5 + 4),
        };
        let mut class = [DATA; 256];
        // Later assignments win: the checks upstream make these distinct.
        class[bytes[7] as usize] = SUB;
        class[bytes[4] as usize] = COMP;
        class[bytes[5] as usize] = REP;
        class[bytes[3] as usize] = FIELD;
        class[b'\r' as usize] = END;
        let splitter = Splitter { bytes, class };

        // MSH: MSH-1 and MSH-2 are the delimiters, one part each.
        let msh_first = tree.fields.len() as u32;
        tree.single(3, 4);
        tree.single(4, 4 + encoding_len as u32);
        let fs = bytes[3];
        let msh_end = if encoding_len == 5 {
            // hl7-parser read MSH-2 as 4 characters and the 5th (the v2.7
            // truncation character) as a field of its own, which is not HL7's
            // MSH-3: it is dropped. A longer field at that place (`#^x`) is
            // kept, as it was.
            match bytes.get(9) {
                None => 9,
                Some(b'\r') => 9,
                Some(&b) if b == fs => splitter.fields(&mut tree, 10),
                Some(_) => splitter.fields(&mut tree, 8),
            }
        } else {
            // hl7-parser: an optional field separator, then at least one field.
            let at = if bytes.get(8) == Some(&fs) { 9 } else { 8 };
            splitter.fields(&mut tree, at)
        };
        tree.segments.push(SegNode {
            name: *b"MSH",
            next_same: u32::MAX,
            node: Node {
                start: 0,
                end: msh_end as u32,
                first: msh_first,
                count: tree.fields.len() as u32 - msh_first,
            },
        });

        // hl7-parser: an optional '\r' after MSH, then segments separated by '\r'.
        let mut consumed = if msh_end < n { msh_end + 1 } else { msh_end };
        let mut pos = consumed;
        let stop = loop {
            if pos >= n {
                break if consumed >= n {
                    Stop::Complete
                } else {
                    Stop::BadLine { consumed }
                };
            }
            let name = match bytes.get(pos..pos + 4) {
                Some([a, b, c, sep])
                    if *sep == fs
                        && a.is_ascii_alphanumeric()
                        && b.is_ascii_alphanumeric()
                        && c.is_ascii_alphanumeric() =>
                {
                    [*a, *b, *c]
                }
                _ => break Stop::BadLine { consumed },
            };
            if &name == b"MSH" {
                break Stop::SecondMsh { offset: pos };
            }
            let first = tree.fields.len() as u32;
            let end = splitter.fields(&mut tree, pos + 4);
            tree.segments.push(SegNode {
                name,
                next_same: u32::MAX,
                node: Node {
                    start: pos as u32,
                    end: end as u32,
                    first,
                    count: tree.fields.len() as u32 - first,
                },
            });
            consumed = end;
            pos = end + 1;
        };
        tree.link_names();
        (tree, stop)
    }

    /// An element of one part at every level (MSH-1, MSH-2).
    fn single(&mut self, start: u32, end: u32) {
        let node = |first: usize| Node {
            start,
            end,
            first: first as u32,
            count: 1,
        };
        self.subs.push(Leaf { start, end });
        self.comps.push(node(self.subs.len() - 1));
        self.reps.push(node(self.comps.len() - 1));
        self.fields.push(node(self.reps.len() - 1));
    }

    /// Chains each segment to the next one of the same name.
    fn link_names(&mut self) {
        // Few distinct names per message: a short list beats a hash map.
        let mut last: Vec<([u8; 3], usize)> = Vec::with_capacity(16);
        for i in 0..self.segments.len() {
            let name = self.segments[i].name;
            match last.iter_mut().find(|(n, _)| *n == name) {
                Some((_, prev)) => {
                    self.segments[*prev].next_same = i as u32;
                    *prev = i;
                }
                None => last.push((name, i)),
            }
        }
    }

    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

impl Splitter<'_> {
    /// Splits the fields of one segment starting at `start` (at least one
    /// field, possibly empty); returns where the segment ends (`'\r'` or the
    /// end of the text).
    fn fields(&self, tree: &mut Tree<'_>, start: usize) -> usize {
        let bytes = self.bytes;
        let n = bytes.len();
        let mut i = start;
        let (mut field0, mut rep0, mut comp0, mut sub0) = (i, i, i, i);
        let mut rep_first = tree.reps.len();
        let mut comp_first = tree.comps.len();
        let mut sub_first = tree.subs.len();
        loop {
            let class = match bytes.get(i) {
                Some(&b) => self.class[b as usize],
                None => END,
            };
            if class == DATA {
                i += 1;
                continue;
            }
            tree.subs.push(Leaf {
                start: sub0 as u32,
                end: i as u32,
            });
            let next = i + 1;
            if class == SUB {
                sub0 = next;
                i = next;
                continue;
            }
            tree.comps.push(Node {
                start: comp0 as u32,
                end: i as u32,
                first: sub_first as u32,
                count: (tree.subs.len() - sub_first) as u32,
            });
            sub_first = tree.subs.len();
            if class == COMP {
                comp0 = next;
                sub0 = next;
                i = next;
                continue;
            }
            tree.reps.push(Node {
                start: rep0 as u32,
                end: i as u32,
                first: comp_first as u32,
                count: (tree.comps.len() - comp_first) as u32,
            });
            comp_first = tree.comps.len();
            if class == REP {
                rep0 = next;
                comp0 = next;
                sub0 = next;
                i = next;
                continue;
            }
            tree.fields.push(Node {
                start: field0 as u32,
                end: i as u32,
                first: rep_first as u32,
                count: (tree.reps.len() - rep_first) as u32,
            });
            rep_first = tree.reps.len();
            if class == FIELD {
                field0 = next;
                rep0 = next;
                comp0 = next;
                sub0 = next;
                i = next;
                continue;
            }
            return i.min(n);
        }
    }
}

/// The level of an [`Element`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Field,
    Repetition,
    Component,
    Subcomponent,
}

/// One segment of a parsed message.
#[derive(Clone, Copy)]
pub struct Segment<'m> {
    tree: &'m Tree<'m>,
    index: u32,
}

impl fmt::Debug for Segment<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("index", &self.index)
            .field("name", &self.name())
            .finish()
    }
}

impl<'m> Segment<'m> {
    pub(crate) fn new(tree: &'m Tree<'m>, index: usize) -> Option<Segment<'m>> {
        (index < tree.segments.len()).then_some(Segment {
            tree,
            index: index as u32,
        })
    }

    fn seg(&self) -> &'m SegNode {
        &self.tree.segments[self.index as usize]
    }

    /// 0-based position in the message (MSH is 0).
    pub fn index(&self) -> usize {
        self.index as usize
    }

    /// The three-character name (ASCII letters and digits).
    pub fn name(&self) -> &'m str {
        let start = self.seg().node.start as usize;
        // The name is the first three bytes of the segment, checked ASCII.
        self.tree.text.get(start..start + 3).unwrap_or_default()
    }

    /// The name as bytes, for cheap comparisons.
    pub fn name_bytes(&self) -> [u8; 3] {
        self.seg().name
    }

    /// The whole segment, without its `'\r'`.
    pub fn raw(&self) -> &'m str {
        let n = self.seg().node;
        self.tree.slice(n.start, n.end)
    }

    /// Byte offset of the segment in the text.
    pub fn offset(&self) -> usize {
        self.seg().node.start as usize
    }

    /// How many fields the segment has (MSH counts MSH-1 and MSH-2).
    pub fn field_count(&self) -> usize {
        self.seg().node.count as usize
    }

    /// Field `n` in HL7 numbering (`PID-3` is `field(3)`), if present.
    pub fn field(&self, n: usize) -> Option<Element<'m>> {
        let node = self.seg().node;
        let k = n.checked_sub(1)?;
        (k < node.count as usize)
            .then(|| Element::at(self.tree, Level::Field, node.first + k as u32))
    }

    /// Repetition `rep` of field `field`, then its component `comp` and that
    /// component's subcomponent `sub` when given (all 1-based): what chaining
    /// [`Segment::field`] and [`Element::part`] gives, read straight from the
    /// level arrays.
    #[inline]
    pub fn locate(
        &self,
        field: usize,
        rep: usize,
        comp: Option<usize>,
        sub: Option<usize>,
    ) -> Option<Element<'m>> {
        let tree = self.tree;
        // the `k`-th (1-based) of `count` parts from `first`
        let nth = |first: u32, count: u32, k: usize| -> Option<u32> {
            let k = k.checked_sub(1)?;
            (k < count as usize).then(|| first + k as u32)
        };
        let s = self.seg().node;
        let f = tree.fields.get(nth(s.first, s.count, field)? as usize)?;
        let ri = nth(f.first, f.count, rep)?;
        let Some(comp) = comp else {
            return Some(Element::at(tree, Level::Repetition, ri));
        };
        let r = tree.reps.get(ri as usize)?;
        let ci = nth(r.first, r.count, comp)?;
        let Some(sub) = sub else {
            return Some(Element::at(tree, Level::Component, ci));
        };
        let c = tree.comps.get(ci as usize)?;
        let si = nth(c.first, c.count, sub)?;
        Some(Element::at(tree, Level::Subcomponent, si))
    }

    /// The fields in order (the first is field 1).
    pub fn fields(&self) -> impl Iterator<Item = Element<'m>> + 'm {
        let (tree, node) = (self.tree, self.seg().node);
        (node.first..node.first + node.count).map(move |i| Element::at(tree, Level::Field, i))
    }

    /// The next segment with the same name.
    pub fn next_same(&self) -> Option<Segment<'m>> {
        Segment::new(self.tree, self.seg().next_same as usize)
    }
}

impl<'a> Tree<'a> {
    /// `text[start..end]`; empty if the range were ever not on boundaries
    /// (it always is: see the module invariants).
    fn slice(&self, start: u32, end: u32) -> &'a str {
        self.text
            .get(start as usize..end as usize)
            .unwrap_or_default()
    }

    /// The node of element `index` at `level` (a subcomponent is its own part).
    fn node(&self, level: Level, index: u32) -> Node {
        let i = index as usize;
        let found = match level {
            Level::Field => self.fields.get(i),
            Level::Repetition => self.reps.get(i),
            Level::Component => self.comps.get(i),
            Level::Subcomponent => {
                return self
                    .subs
                    .get(i)
                    .map(|l| Node {
                        start: l.start,
                        end: l.end,
                        first: index,
                        count: 1,
                    })
                    .unwrap_or_default()
            }
        };
        found.copied().unwrap_or_default()
    }
}

/// A field, repetition, component or subcomponent: where it is in the tree
/// and, to read it without a lookup, its byte range.
#[derive(Clone, Copy)]
pub struct Element<'m> {
    tree: &'m Tree<'m>,
    index: u32,
    start: u32,
    end: u32,
    level: Level,
}

impl fmt::Debug for Element<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Element")
            .field("level", &self.level)
            .field("range", &self.range())
            .finish()
    }
}

impl<'m> Element<'m> {
    fn at(tree: &'m Tree<'m>, level: Level, index: u32) -> Element<'m> {
        let n = tree.node(level, index);
        Element {
            tree,
            index,
            start: n.start,
            end: n.end,
            level,
        }
    }

    /// Which level this is.
    pub fn level(&self) -> Level {
        self.level
    }

    /// Byte range in the text.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    /// The text as received: separators and escapes not decoded.
    #[inline]
    pub fn raw(&self) -> &'m str {
        self.tree.slice(self.start, self.end)
    }

    /// Number of parts (repetitions of a field, components of a repetition,
    /// subcomponents of a component); 1 for a subcomponent.
    pub fn len(&self) -> usize {
        self.tree.node(self.level, self.index).count as usize
    }

    /// True when every subcomponent under it is empty: the raw text is only
    /// component, repetition and subcomponent separators, or nothing.
    pub fn is_empty(&self) -> bool {
        // the separators, read back from MSH-2 (always there: checked at parse)
        match self.tree.text.as_bytes().get(4..8) {
            Some(&[c, r, _, s]) => self.raw().bytes().all(|x| x == c || x == r || x == s),
            _ => self.raw().is_empty(),
        }
    }

    fn child_level(&self) -> Option<Level> {
        match self.level {
            Level::Field => Some(Level::Repetition),
            Level::Repetition => Some(Level::Component),
            Level::Component => Some(Level::Subcomponent),
            Level::Subcomponent => None,
        }
    }

    /// Part `i` (1-based) one level down; `None` for a subcomponent.
    pub fn part(&self, i: usize) -> Option<Element<'m>> {
        let level = self.child_level()?;
        let n = self.tree.node(self.level, self.index);
        let k = i.checked_sub(1)?;
        (k < n.count as usize).then(|| Element::at(self.tree, level, n.first + k as u32))
    }

    /// The parts one level down, in order (none for a subcomponent).
    pub fn parts(&self) -> impl Iterator<Item = Element<'m>> + 'm {
        let tree = self.tree;
        let (level, range) = match self.child_level() {
            Some(level) => {
                let n = tree.node(self.level, self.index);
                (level, n.first..n.first + n.count)
            }
            None => (Level::Subcomponent, 0..0),
        };
        range.map(move |i| Element::at(tree, level, i))
    }

    /// The first and last subcomponent under this element (indices into the
    /// leaf level, inclusive).
    fn leaves(&self) -> (usize, usize) {
        let (mut first, mut last) = (*self, *self);
        while let (Some(f), Some(l)) = (first.part(1), last.part(last.len())) {
            first = f;
            last = l;
        }
        (first.index as usize, last.index as usize)
    }

    /// Whether the value lies within the span of the message that holds escape
    /// characters (false: it certainly has none).
    #[inline]
    fn may_have_escape(&self) -> bool {
        let (first, last) = self.tree.escape_span;
        self.end > first && self.start <= last
    }

    /// The raw text with escape sequences decoded as one value ([`unescape`]
    /// over the whole range, separators included). Borrows when the value
    /// lies outside the span of the message holding escape characters, without
    /// looking at it; else when a search finds none in it.
    #[inline]
    pub fn unescaped(&self, separators: &Separators) -> Cow<'m, str> {
        let raw = self.raw();
        if !self.may_have_escape() || !super::escape::has_escape(raw, separators.escape) {
            Cow::Borrowed(raw)
        } else {
            unescape(raw, separators)
        }
    }

    /// The value with escapes decoded in each subcomponent and the separators
    /// between parts kept as received. Borrows when there is no escape.
    pub fn text(&self, separators: &Separators) -> Cow<'m, str> {
        let raw = self.raw();
        if !self.may_have_escape() || !super::escape::has_escape(raw, separators.escape) {
            return Cow::Borrowed(raw);
        }
        if self.level == Level::Subcomponent {
            return unescape(raw, separators);
        }
        let (first, last) = self.leaves();
        let mut out = String::with_capacity(raw.len());
        let mut at = self.start;
        for leaf in self.tree.subs.get(first..=last).unwrap_or_default() {
            // the separator between two leaves, as received
            out.push_str(self.tree.slice(at, leaf.start));
            out.push_str(&unescape(self.tree.slice(leaf.start, leaf.end), separators));
            at = leaf.end;
        }
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    //! Differential tests against `hl7-parser` 0.3 (the crate this tree
    //! replaced), with the checks `Message::parse` made on its output before:
    //! on any text, both accept or both reject with the same error, and when
    //! they accept, every segment, field, repetition, component and
    //! subcomponent has the same text.

    use super::super::error::{snippet, Hl7Error};
    use super::super::Message;
    use proptest::prelude::*;

    /// Every raw value, nested: segments → fields → repetitions → components → subcomponents.
    type Shape = Vec<(String, Vec<Vec<Vec<Vec<String>>>>)>;

    fn ours(text: &str) -> Result<Shape, Hl7Error> {
        let m = Message::parse(text)?;
        Ok(m.segments()
            .map(|s| {
                let fields = s
                    .fields()
                    .enumerate()
                    .filter(|(i, _)| !(s.index() == 0 && *i < 2))
                    .map(|(_, f)| {
                        f.parts()
                            .map(|r| {
                                r.parts()
                                    .map(|c| c.parts().map(|x| x.raw().to_owned()).collect())
                                    .collect()
                            })
                            .collect()
                    })
                    .collect();
                (s.name().to_owned(), fields)
            })
            .collect())
    }

    /// The previous `Message::parse`: hl7-parser plus our checks (the prefix
    /// and line-feed checks are shared and run first through `Message::parse`).
    fn theirs(text: &str) -> Result<Shape, Hl7Error> {
        if let Err(e) = Message::parse(text) {
            if !matches!(e, Hl7Error::BadSegment { .. }) {
                return Err(e);
            }
        }
        let enc_len = text[4..]
            .find([text.as_bytes()[3] as char, '\r', '\n'])
            .unwrap_or(text.len() - 4);
        let mut inner = hl7_parser::Message::parse(text).map_err(|_| Hl7Error::Syntax {
            offset: 0,
            found: String::new(),
        })?;
        if enc_len == 5 {
            let msh = &mut inner.segments[0];
            if msh.fields.len() > 2 && msh.fields[2].raw_value() == &text[8..9] {
                msh.fields.remove(2);
            }
        }
        for (i, segment) in inner.segments.iter().enumerate().skip(1) {
            // hl7-parser takes any three characters as a segment name, a
            // line end among them ("𑎐®\r|"); the snippet is of the line.
            let line = &text[segment.range.start..];
            let line = &line[..line.find(['\r', '\n']).unwrap_or(line.len())];
            let bad = |expected| Hl7Error::BadSegment {
                index: i + 1,
                offset: segment.range.start,
                found: snippet(line, 4),
                expected,
            };
            if !segment.name.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(bad("a 3-character segment name (A-Z, 0-9)"));
            }
            if segment.name == "MSH" {
                return Err(bad(
                    "one MSH per message (several messages go in separate frames, or in a batch with BHS and BTS)",
                ));
            }
        }
        let consumed = inner.raw_value().len();
        if let Some(e) = super::super::message::bad_line(text, consumed, inner.segments.len() + 1) {
            return Err(e);
        }
        Ok(inner
            .segments
            .iter()
            .enumerate()
            .map(|(si, s)| {
                let fields = s
                    .fields
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !(si == 0 && *i < 2))
                    .map(|(_, f)| {
                        f.repeats
                            .iter()
                            .map(|r| {
                                r.components
                                    .iter()
                                    .map(|c| {
                                        c.subcomponents.iter().map(|x| x.value.to_owned()).collect()
                                    })
                                    .collect()
                            })
                            .collect()
                    })
                    .collect();
                (s.name.to_owned(), fields)
            })
            .collect())
    }

    /// Every field, repetition and component as read with escapes decoded.
    fn decoded_ours(text: &str) -> Vec<String> {
        let Ok(m) = Message::parse(text) else {
            return Vec::new();
        };
        let seps = *m.separators();
        let mut out = Vec::new();
        for s in m.segments() {
            for (i, f) in s.fields().enumerate() {
                if s.index() == 0 && i < 2 {
                    continue;
                }
                out.push(f.text(&seps).into_owned());
                for r in f.parts() {
                    out.push(r.text(&seps).into_owned());
                    for c in r.parts() {
                        out.push(c.text(&seps).into_owned());
                    }
                }
            }
        }
        out
    }

    /// The same from hl7-parser's tree, the way `field_text`, `repeat_text`
    /// and `component_text` built it before: each subcomponent unescaped,
    /// joined with the message's separators.
    fn decoded_theirs(text: &str) -> Vec<String> {
        let Ok(m) = Message::parse(text) else {
            return Vec::new();
        };
        let seps = *m.separators();
        let Ok(shape) = theirs(text) else {
            return Vec::new();
        };
        let comp = |c: &Vec<String>| {
            c.iter()
                .map(|x| super::super::unescape(x, &seps).into_owned())
                .collect::<Vec<_>>()
                .join(&seps.subcomponent.to_string())
        };
        let rep = |r: &Vec<Vec<String>>| {
            r.iter()
                .map(comp)
                .collect::<Vec<_>>()
                .join(&seps.component.to_string())
        };
        let mut out = Vec::new();
        for (_, fields) in &shape {
            for f in fields {
                out.push(
                    f.iter()
                        .map(rep)
                        .collect::<Vec<_>>()
                        .join(&seps.repetition.to_string()),
                );
                for r in f {
                    out.push(rep(r));
                    for c in r {
                        out.push(comp(c));
                    }
                }
            }
        }
        out
    }

    fn check(text: &str) {
        assert_eq!(ours(text), theirs(text), "{text:?}");
        assert_eq!(decoded_ours(text), decoded_theirs(text), "{text:?}");
    }

    #[test]
    fn same_as_hl7_parser() {
        for text in [
            "MSH|^~\\&|A|B\rPID|1||a~b^c&d||e\\S\\f\r",
            "MSH|^~\\&",
            "MSH|^~\\&|",
            "MSH|^~\\&\r",
            "MSH|^~\\&#|PAS|RAL\rPID|1",
            "MSH|^~\\&#",
            "MSH|^~\\&#\r",
            "MSH|^~\\&#^x|A",
            "MSH#!*?$#PAS#RAL\rPID#1##A!B?T?C",
            "MSH|^~\\&|A\r\rPID|1\r",
            "MSH|^~\\&|A\rPID|1\r\rNK1|2\r",
            "MSH|^~\\&|A\rPID\r",
            "MSH|^~\\&|A\rÄBC|1\r",
            "MSH|^~\\&|A\rPID|1\rMSH|^~\\&|B\r",
            "MSH|^~\\&|A\rOBX|1|TX|||one\ntwo\r",
            "MSH|^~\\&|A\rPID|||||\r\r",
            "MSH|^~\\&|A\rPI|1\r",
        ] {
            check(text);
        }
    }

    /// HL7-ish text: pieces that hit separators, segment starts and odd lines.
    fn hl7ish() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("|".to_owned()),
            Just("^".to_owned()),
            Just("~".to_owned()),
            Just("&".to_owned()),
            Just("\\".to_owned()),
            Just("#".to_owned()),
            Just("\r".to_owned()),
            Just("\n".to_owned()),
            Just("\rPID|".to_owned()),
            Just("\rOBX|".to_owned()),
            Just("\rMSH|".to_owned()),
            Just("\rZ1|".to_owned()),
            Just("\rÄBC|".to_owned()),
            Just("\r\r".to_owned()),
            Just("\"\"".to_owned()),
            Just("Zoë".to_owned()),
            "[A-Za-z0-9 ]{0,4}",
            "\\PC{0,3}",
        ];
        let head = prop_oneof![
            Just("MSH|^~\\&|".to_owned()),
            Just("MSH|^~\\&#|".to_owned()),
            Just("MSH|^~\\&".to_owned()),
            Just("MSH|^~\\&#".to_owned()),
            Just("MSH#!*?$#".to_owned()),
            Just("MSH".to_owned()),
            "\\PC{0,6}",
        ];
        (head, prop::collection::vec(piece, 0..40)).prop_map(|(h, p)| h + &p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn same_as_hl7_parser_on_hl7ish_text(text in hl7ish()) {
            check(&text);
        }

        #[test]
        fn same_as_hl7_parser_on_arbitrary_text(text in "MSH\\PC{0,60}") {
            check(&text);
        }

        #[test]
        fn locate_is_field_then_parts(text in hl7ish()) {
            check_locate(&text);
        }
    }

    /// [`super::Segment::locate`] finds what `field` then `part` find, for every
    /// index up to one past the last at each level.
    fn check_locate(text: &str) {
        let Ok(m) = Message::parse(text) else {
            return;
        };
        let raw = |e: Option<super::Element<'_>>| e.map(|e| (e.raw().to_string(), e.level()));
        for seg in m.segments() {
            for f in 0..=seg.field_count() + 1 {
                let field = seg.field(f);
                for r in 0..=field.map_or(0, |x| x.len()) + 1 {
                    let rep = field.and_then(|x| x.part(r));
                    assert_eq!(raw(seg.locate(f, r, None, None)), raw(rep));
                    for c in 0..=rep.map_or(0, |x| x.len()) + 1 {
                        let comp = rep.and_then(|x| x.part(c));
                        assert_eq!(raw(seg.locate(f, r, Some(c), None)), raw(comp));
                        for k in 0..=comp.map_or(0, |x| x.len()) + 1 {
                            let sub = comp.and_then(|x| x.part(k));
                            assert_eq!(raw(seg.locate(f, r, Some(c), Some(k))), raw(sub));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn locate_on_a_message() {
        check_locate(
            "MSH|^~\\&|A|B\rPID|1||123^^^NHS^NH~X&Y^Z||SMITH^ANN&B^^^MRS|\rOBX|1|NM|A^B|\r",
        );
    }
}
