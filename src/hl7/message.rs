//! A parsed HL7 v2 message: the checked text, its structure as byte ranges
//! ([`super::tree`]), its decoded header, and values addressed by [`Path`].
//!
//! # Invariants
//! - A `Message` always starts with a valid MSH: a usable field separator and
//!   four (or five, with the v2.7 truncation character) distinct encoding
//!   characters. `segment(0)` is that MSH.
//! - Every segment of the text is in `segments()` (nothing after a bad
//!   segment is silently dropped), every segment name is three ASCII
//!   alphanumerics, and there is exactly one MSH.
//! - Field numbers are HL7's for every segment, MSH included:
//!   `segment.field(n)` is `SEG-n`; MSH-1 and MSH-2 are single values (the
//!   delimiters), never split.
//!
//! Values returned by [`Message::get`] are escape-decoded; the HL7 explicit
//! null `""` is returned as the two quote characters so callers can tell
//! "delete this" from "absent".

use std::borrow::Cow;

use super::charset::ends_segment;
use super::error::{snippet, Hl7Error};
use super::path::Path;
use super::tree::{Element, Segment, Separators, Stop, Tree};

/// A parsed message borrowing the text it was parsed from.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    text: &'a str,
    tree: Tree<'a>,
    separators: Separators,
    /// MSH-2 exactly as received (4 or 5 characters).
    encoding_characters: &'a str,
}

/// The decoded MSH fields intake, routing and ACKs need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    pub field_separator: char,
    pub encoding_characters: String,
    /// MSH-3 (whole field, decoded; components joined as received).
    pub sending_application: String,
    /// MSH-4.
    pub sending_facility: String,
    /// MSH-5.
    pub receiving_application: String,
    /// MSH-6.
    pub receiving_facility: String,
    /// MSH-9.1, e.g. "ADT".
    pub message_code: String,
    /// MSH-9.2, e.g. "A01".
    pub trigger_event: String,
    /// MSH-9.3, may be empty.
    pub message_structure: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-11.1.
    pub processing_id: String,
    /// MSH-12.1, e.g. "2.5.1".
    pub version: String,
    /// MSH-7.1, the time of the message as sent (`20261124120000+0000`).
    pub timestamp: String,
    /// MSH-15 (AL/NE/ER/SU).
    pub accept_ack_type: Option<String>,
    /// MSH-16.
    pub application_ack_type: Option<String>,
    /// MSH-18 (first repetition).
    pub charset: Option<String>,
    /// MSH-3, MSH-4 and MSH-10 as sent (escapes and separators as they are):
    /// what an ACK echoes, so a sender matches MSA-2 to its MSH-10 byte for
    /// byte (`A^1` stays `A^1`, `PAS\T\X` stays escaped).
    pub as_sent: AsSent,
}

/// Header fields as sent, undecoded (see [`Header::as_sent`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AsSent {
    pub sending_application: String,
    pub sending_facility: String,
    pub control_id: String,
}

impl Header {
    /// "ADT^A01", or "ADT" when there is no trigger event.
    pub fn message_type(&self) -> String {
        if self.trigger_event.is_empty() {
            self.message_code.clone()
        } else {
            format!("{}^{}", self.message_code, self.trigger_event)
        }
    }

    /// "MSH-3^MSH-4", e.g. "PAS^RAL": with MSH-10, the key for duplicates.
    pub fn sender(&self) -> String {
        format!("{}^{}", self.sending_application, self.sending_facility)
    }
}

/// MSH-12.1 as senders write it (`2.4`, ` 2.4  ` from fixed-width exports,
/// `V2.4`) made the version id (`2.4`).
fn normalise_version(v: String) -> String {
    let t = v.trim();
    let t = t
        .strip_prefix(['V', 'v'])
        .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or(t);
    if t.len() == v.len() {
        v
    } else {
        t.to_string()
    }
}

impl<'a> Message<'a> {
    /// Parses `text` as produced by [`super::decode`] (segments end in `'\r'`).
    pub fn parse(text: &'a str) -> Result<Message<'a>, Hl7Error> {
        let encoding_characters = check_msh_prefix(text)?;
        check_line_feeds(text)?;
        if u32::try_from(text.len()).is_err() {
            return Err(Hl7Error::Syntax {
                offset: u32::MAX as usize,
                found: String::new(),
            });
        }
        let (tree, stop) = Tree::build(text, encoding_characters.len());
        check_stop(text, &tree, stop)?;
        let e = encoding_characters.as_bytes();
        let separators = Separators {
            field: char::from(text.as_bytes()[3]),
            component: char::from(e[0]),
            repetition: char::from(e[1]),
            escape: char::from(e[2]),
            subcomponent: char::from(e[3]),
            hex: None,
        };
        let mut message = Message {
            text,
            tree,
            separators,
            encoding_characters,
        };
        // MSH-18 straight from the tree (no scan of the text): most senders
        // leave it empty
        let label = message
            .segment(0)
            .and_then(|msh| msh.field(18))
            .and_then(|f| f.part(1))
            .map(|r| r.raw())
            .filter(|l| !l.is_empty());
        message.separators.hex = label.and_then(super::charset::hex_charset);
        Ok(message)
    }

    /// The text the message was parsed from.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The message's separators.
    pub fn separators(&self) -> &Separators {
        &self.separators
    }

    /// MSH-2 exactly as received.
    pub fn encoding_characters(&self) -> &'a str {
        self.encoding_characters
    }

    /// How many segments, MSH included.
    pub fn segment_count(&self) -> usize {
        self.tree.segment_count()
    }

    /// Segment `i` (0-based; 0 is MSH).
    pub fn segment(&self, i: usize) -> Option<Segment<'_>> {
        Segment::new(&self.tree, i)
    }

    /// The segments in order, MSH first.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'_>> {
        (0..self.segment_count()).filter_map(|i| self.segment(i))
    }

    /// The first segment named `name` (then [`Segment::next_same`] for the others).
    pub fn first_segment(&self, name: &str) -> Option<Segment<'_>> {
        self.segments().find(|s| s.name() == name)
    }

    /// The decoded MSH fields.
    pub fn header(&self) -> Result<Header, Hl7Error> {
        let msh = self.segment(0).ok_or(Hl7Error::Empty)?;
        let seps = self.separators();
        let field = |n: usize| -> String {
            msh.field(n)
                .and_then(|f| f.part(1))
                .map(|r| r.text(seps).into_owned())
                .unwrap_or_default()
        };
        let component = |n: usize, c: usize| -> String {
            msh.field(n)
                .and_then(|f| f.part(1))
                .and_then(|r| r.part(c))
                .map(|c| c.text(seps).into_owned())
                .unwrap_or_default()
        };
        let optional = |s: String| (!s.is_empty()).then_some(s);
        let raw = |n: usize| -> String {
            msh.field(n)
                .map(|f| f.raw().to_string())
                .unwrap_or_default()
        };
        // v2.1/2.2-style senders give an ADT's event in EVN-1 and only the
        // message type in MSH-9 (`ADT`): the trigger is EVN-1 then, so the
        // message is routed and mapped as the ADT^A08 it is (EVN is an ADT
        // segment: another type's EVN-1 is not taken)
        let mut trigger_event = component(9, 2);
        if trigger_event.trim().is_empty() && component(9, 1).trim().eq_ignore_ascii_case("ADT") {
            if let Some(evn) = self.first_segment("EVN") {
                if let Some(code) = evn.field(1).and_then(|f| f.part(1)) {
                    trigger_event = code.text(seps).trim().to_string();
                }
            }
        }
        Ok(Header {
            field_separator: seps.field,
            encoding_characters: self.encoding_characters.to_owned(),
            sending_application: field(3),
            sending_facility: field(4),
            receiving_application: field(5),
            receiving_facility: field(6),
            message_code: component(9, 1),
            trigger_event,
            message_structure: component(9, 3),
            // the whole field: MSH-10 is ST, a `~` in it does not start a
            // repetition (two ids differing after it are two messages)
            control_id: msh
                .field(10)
                .map(|f| f.text(seps).into_owned())
                .unwrap_or_default(),
            processing_id: component(11, 1).trim().to_string(),
            version: normalise_version(component(12, 1)),
            timestamp: component(7, 1).trim().to_string(),
            accept_ack_type: optional(field(15)),
            application_ack_type: optional(field(16)),
            charset: optional(field(18)),
            as_sent: AsSent {
                sending_application: raw(3),
                sending_facility: raw(4),
                control_id: raw(10),
            },
        })
    }

    /// The escape-decoded value at `path` (see [`Path`]); `None` when absent or empty.
    pub fn get(&self, path: &str) -> Result<Option<String>, Hl7Error> {
        let path = Path::parse(path)?;
        Ok(self.get_path(&path).map(Cow::into_owned))
    }

    /// [`Message::get`] with a pre-parsed path; borrows when nothing needs decoding.
    pub fn get_path(&self, path: &Path) -> Option<Cow<'a, str>> {
        let mut segment = self.first_segment(&path.segment)?;
        for _ in 1..path.occurrence {
            segment = segment.next_same()?;
        }
        if segment.index() == 0 && path.field <= 2 {
            // MSH-1 and MSH-2 are the delimiters themselves: never split or decoded.
            let value = if path.field == 1 {
                &self.text[3..4]
            } else {
                self.encoding_characters
            };
            let whole = path.repetition.unwrap_or(1) == 1
                && path.component.unwrap_or(1) == 1
                && path.subcomponent.unwrap_or(1) == 1;
            return whole.then_some(Cow::Borrowed(value));
        }
        let seps = &self.separators;
        let repeat = segment
            .field(path.field)?
            .part(path.repetition.unwrap_or(1))?;
        let element: Element<'_> = match path.component {
            None => repeat,
            Some(c) => {
                let component = repeat.part(c)?;
                match path.subcomponent {
                    None => component,
                    Some(s) => component.part(s)?,
                }
            }
        };
        let value = match element.text(seps) {
            // the element borrows from the message's text, which lives for 'a
            Cow::Borrowed(_) => Cow::Borrowed(&self.text[element.range()]),
            Cow::Owned(s) => Cow::Owned(s),
        };
        (!value.is_empty()).then_some(value)
    }
}

/// Checks the MSH start (what hl7-parser used to get wrong silently) and
/// returns MSH-2 as received.
fn check_msh_prefix(text: &str) -> Result<&str, Hl7Error> {
    if text.trim().is_empty() {
        return Err(Hl7Error::Empty);
    }
    if !text.starts_with("MSH") {
        return Err(Hl7Error::MissingMsh {
            offset: 0,
            found: snippet(text, 3),
        });
    }
    let Some(sep) = text[3..].chars().next() else {
        return Err(Hl7Error::BadFieldSeparator {
            offset: 3,
            found: String::new(),
        });
    };
    if !sep.is_ascii_punctuation() {
        return Err(Hl7Error::BadFieldSeparator {
            offset: 3,
            found: snippet(&text[3..], 1),
        });
    }
    let rest = &text[4..];
    let end = rest.find([sep, '\r', '\n']).unwrap_or(rest.len());
    let encoding = &rest[..end];
    let bad = |expected| {
        Err(Hl7Error::BadEncodingCharacters {
            offset: 4,
            found: snippet(encoding, 6),
            expected,
        })
    };
    if encoding.len() < 4 || encoding.len() > 5 || !encoding.is_ascii() {
        return bad("4 characters (component, repetition, escape, subcomponent), or 5 with the truncation character");
    }
    let chars: Vec<char> = encoding.chars().collect();
    if chars.iter().any(|c| !c.is_ascii_punctuation()) {
        return bad("punctuation characters such as ^~\\&");
    }
    for (i, c) in chars.iter().enumerate() {
        if chars[..i].contains(c) {
            return bad("distinct characters");
        }
    }
    Ok(encoding)
}

/// Rejects text whose segments end in '\n' (not from `decode`): split
/// strictly on '\r', such text would read as one long MSH.
fn check_line_feeds(text: &str) -> Result<(), Hl7Error> {
    let bytes = text.as_bytes();
    let sep = bytes[3];
    let cr = super::ends_in_cr(bytes);
    let mut from = 0;
    while let Some(pos) = text[from..].find('\n') {
        let at = from + pos;
        if ends_segment(bytes, at + 1, sep, cr) {
            return Err(Hl7Error::UnnormalisedText { offset: at });
        }
        from = at + 1;
    }
    Ok(())
}

/// Turns what stopped [`Tree::build`] into the error `hl7-parser`'s reading
/// plus our checks gave: a second MSH, or a line that is not a segment.
fn check_stop(text: &str, tree: &Tree<'_>, stop: Stop) -> Result<(), Hl7Error> {
    let index = tree.segment_count() + 1;
    let consumed = match stop {
        Stop::Complete => return Ok(()),
        Stop::SecondMsh { offset } => {
            return Err(Hl7Error::BadSegment {
                index,
                offset,
                found: snippet(&text[offset..], 4),
                expected:
                    "one MSH per message (several messages go in separate frames, or in a batch with BHS and BTS)",
            })
        }
        Stop::BadLine { consumed } => consumed,
    };
    match bad_line(text, consumed, index) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The error for what follows the last good segment, which ended at `consumed`:
/// `None` when only line endings follow, else segment `index` is not a segment
/// (bad name, a blank line before it, or no field separator after its name).
pub(crate) fn bad_line(text: &str, consumed: usize, index: usize) -> Option<Hl7Error> {
    let rest = &text[consumed..];
    let skipped = rest.len() - rest.trim_start_matches(['\r', '\n']).len();
    let offset = consumed + skipped;
    let line = &text[offset..];
    if line.is_empty() {
        return None;
    }
    let line = &line[..line.find(['\r', '\n']).unwrap_or(line.len())];
    let name_ok = line.len() >= 3 && line.as_bytes()[..3].iter().all(u8::is_ascii_alphanumeric);
    let expected = if !name_ok {
        "a 3-character segment name (A-Z, 0-9)"
    } else if skipped >= 2 {
        "no blank line between segments"
    } else {
        "the field separator after the segment name"
    };
    Some(Hl7Error::BadSegment {
        index,
        offset,
        found: snippet(line, 4),
        expected,
    })
}

/// Whether `a` and `b`, as received, are the same message apart from how
/// their segments end (`\r`, `\r\n`, `\n`), trailing white space, and MSH-7
/// (the time of the message, which some senders set anew when they resend).
/// Bytes are compared as they are: the same text in another character set
/// counts as different.
pub fn same_message(a: &[u8], b: &[u8]) -> bool {
    fn segments(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
        raw.split(|&b| b == b'\r' || b == b'\n')
            .map(<[u8]>::trim_ascii)
            .filter(|s| !s.is_empty())
    }
    /// MSH without its field 7: the prefix up to the sixth field separator
    /// after the name, and what follows the seventh.
    fn without_msh_7(segment: &[u8]) -> (&[u8], &[u8]) {
        let Some(&sep) = segment.get(3).filter(|_| segment.starts_with(b"MSH")) else {
            return (segment, &[]);
        };
        let seps: Vec<usize> = segment
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == sep)
            .map(|(i, _)| i)
            .take(7)
            .collect();
        match (seps.get(5), seps.get(6)) {
            (Some(&start), Some(&end)) => (&segment[..=start], &segment[end..]),
            _ => (segment, &[]),
        }
    }
    let mut a = segments(a);
    let mut b = segments(b);
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if x.starts_with(b"MSH") && y.starts_with(b"MSH") => {
                if without_msh_7(x) != without_msh_7(y) {
                    return false;
                }
            }
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_message_whatever_its_line_ends_and_msh_7() {
        let a = b"MSH|^~\\&|PAS|RAL|JUNCTION|LCR|20261123101500||ADT^A01|C1|P|2.4\rPID|1||123\r";
        let crlf =
            b"MSH|^~\\&|PAS|RAL|JUNCTION|LCR|20261123101500||ADT^A01|C1|P|2.4\r\nPID|1||123\r\n";
        let later = b"MSH|^~\\&|PAS|RAL|JUNCTION|LCR|20261123101733||ADT^A01|C1|P|2.4\nPID|1||123";
        assert!(same_message(a, a));
        assert!(same_message(a, crlf));
        assert!(same_message(a, later), "MSH-7 set anew on a resend");
        let other_patient =
            b"MSH|^~\\&|PAS|RAL|JUNCTION|LCR|20261123101500||ADT^A01|C1|P|2.4\rPID|1||124\r";
        let other_event =
            b"MSH|^~\\&|PAS|RAL|JUNCTION|LCR|20261123101500||ADT^A08|C1|P|2.4\rPID|1||123\r";
        let more = b"MSH|^~\\&|PAS|RAL|JUNCTION|LCR|20261123101500||ADT^A01|C1|P|2.4\rPID|1||123\rPV1|1|I\r";
        assert!(!same_message(a, other_patient));
        assert!(!same_message(a, other_event));
        assert!(!same_message(a, more));
        assert!(!same_message(more, a));
        // short or odd headers compare as they are
        assert!(same_message(b"MSH|^~\\&|X", b"MSH|^~\\&|X\r"));
        assert!(!same_message(b"MSH|^~\\&|X", b"MSH|^~\\&|Y"));
        assert!(same_message(b"", b"\r\n"));
    }

    const ADT: &str = "MSH|^~\\&|PAS|RAL|EPR|HUB|20240501120000||ADT^A01^ADT_A01|MSG0001|P|2.5.1|||AL|NE||8859/1\r\
EVN|A01|20240501120000\r\
PID|1||RAL123^^^RAL^MR~9449305552^^^NHS^NH||O'BRIEN^ZOË^^^MS||19800101|F|||1 HIGH ST^^LONDON^^E1 1AA\r\
PV1|1|I|WARD1^BED2\r\
OBX|1|ST|CODE1||first\r\
OBX|2|TX|CODE2||a\\F\\b\\S\\c\\.br\\d\r\
ZPI|1|custom^value\r";

    fn check(text: &str, path: &str, expected: Option<&str>) {
        let message = Message::parse(text).expect("test message parses");
        assert_eq!(
            message.get(path).expect("test path parses").as_deref(),
            expected,
            "{path}"
        );
    }

    fn check_err(text: &str, expected: &str) {
        assert_eq!(
            Message::parse(text).map(|_| ()).map_err(|e| e.to_string()),
            Err(expected.to_owned()),
            "{text:?}"
        );
    }

    #[test]
    fn a_trigger_only_in_evn_1_is_the_trigger() {
        let text = ADT
            .replacen("ADT^A01^ADT_A01", "ADT", 1)
            .replacen("EVN|A01|", "EVN|A08|", 1);
        let header = Message::parse(&text).unwrap().header().unwrap();
        assert_eq!(
            (header.message_code.as_str(), header.trigger_event.as_str()),
            ("ADT", "A08")
        );
        // not an ADT: EVN-1 is not its trigger
        let oru = ADT
            .replacen("ADT^A01^ADT_A01", "ORU", 1)
            .replacen("EVN|A01|", "EVN|R01|", 1);
        assert_eq!(
            Message::parse(&oru)
                .unwrap()
                .header()
                .unwrap()
                .trigger_event,
            ""
        );
        // MSH-9.2 given: it wins
        let header = Message::parse(&ADT.replacen("EVN|A01|", "EVN|A08|", 1))
            .unwrap()
            .header()
            .unwrap();
        assert_eq!(header.trigger_event, "A01");
    }

    #[test]
    fn paths() {
        check(ADT, "PID-3", Some("RAL123^^^RAL^MR"));
        check(ADT, "PID-3[2]", Some("9449305552^^^NHS^NH"));
        check(ADT, "PID-3[2].1", Some("9449305552"));
        check(ADT, "PID-3[2].5", Some("NH"));
        check(ADT, "PID-3[3].1", None);
        check(ADT, "PID-5.1", Some("O'BRIEN"));
        check(ADT, "PID-5.2", Some("ZOË"));
        check(ADT, "PID-5.3", None);
        check(ADT, "PID-5.1.1", Some("O'BRIEN"));
        check(ADT, "PID-5.1.2", None);
        check(ADT, "PID-99", None);
        check(ADT, "PV1-3.2", Some("BED2"));
        check(ADT, "OBX-5", Some("first"));
        check(ADT, "OBX[2]-5", Some("a|b^c\nd"));
        check(ADT, "OBX[3]-5", None);
        check(ADT, "ZPI-2.2", Some("value"));
        check(ADT, "NK1-1", None);
    }

    #[test]
    fn msh_numbering() {
        check(ADT, "MSH-1", Some("|"));
        check(ADT, "MSH-2", Some("^~\\&"));
        check(ADT, "MSH-2.2", None);
        check(ADT, "MSH-3", Some("PAS"));
        check(ADT, "MSH-9", Some("ADT^A01^ADT_A01"));
        check(ADT, "MSH-9.2", Some("A01"));
        check(ADT, "MSH-10", Some("MSG0001"));
        check(ADT, "MSH-12", Some("2.5.1"));
        check(ADT, "MSH-18", Some("8859/1"));
        let truncation = "MSH|^~\\&#|PAS|RAL|||20240501||ADT^A01|X1|P|2.7\rPID|1";
        check(truncation, "MSH-2", Some("^~\\&#"));
        check(truncation, "MSH-3", Some("PAS"));
        check(truncation, "MSH-10", Some("X1"));
        let other = "MSH#!*?$#PAS#RAL#####ADT!A01#X2#P#2.3\rPID#1##A!B?T?C";
        check(other, "MSH-1", Some("#"));
        check(other, "MSH-9.2", Some("A01"));
        check(other, "PID-3.2", Some("B$C"));
    }

    #[test]
    fn header() {
        let header = Message::parse(ADT)
            .and_then(|m| m.header())
            .expect("header");
        assert_eq!(
            header,
            Header {
                field_separator: '|',
                encoding_characters: "^~\\&".into(),
                sending_application: "PAS".into(),
                sending_facility: "RAL".into(),
                receiving_application: "EPR".into(),
                receiving_facility: "HUB".into(),
                message_code: "ADT".into(),
                trigger_event: "A01".into(),
                message_structure: "ADT_A01".into(),
                control_id: "MSG0001".into(),
                processing_id: "P".into(),
                version: "2.5.1".into(),
                timestamp: "20240501120000".into(),
                accept_ack_type: Some("AL".into()),
                application_ack_type: Some("NE".into()),
                charset: Some("8859/1".into()),
                as_sent: AsSent {
                    sending_application: "PAS".into(),
                    sending_facility: "RAL".into(),
                    control_id: "MSG0001".into(),
                },
            }
        );
        assert_eq!(header.message_type(), "ADT^A01");
        assert_eq!(header.sender(), "PAS^RAL");
    }

    #[test]
    fn parse_errors_say_where() {
        check_err("", "empty message: expected a segment starting with 'MSH'");
        check_err(
            "PID|1\r",
            "byte 0: expected 'MSH' at the start of the message, found 'PID'",
        );
        check_err(
            "MSH",
            "byte 3: MSH-1 (field separator) '' is not usable, expected a punctuation character such as '|'",
        );
        check_err(
            "MSHA^~\\&",
            "byte 3: MSH-1 (field separator) 'A' is not usable, expected a punctuation character such as '|'",
        );
        check_err(
            "MSH|^~\\|A",
            "byte 4: MSH-2 (encoding characters) '^~\\' is not usable, expected 4 characters (component, repetition, escape, subcomponent), or 5 with the truncation character",
        );
        check_err(
            "MSH|^^\\&|A",
            "byte 4: MSH-2 (encoding characters) '^^\\&' is not usable, expected distinct characters",
        );
        check_err(
            "MSH|^~\\&|A\rPID|1\rPIDX|2\r",
            "segment 3 at byte 17: expected the field separator after the segment name, found 'PIDX'",
        );
        check_err(
            "MSH|^~\\&|A\rPID|1\r|2\r",
            "segment 3 at byte 17: expected a 3-character segment name (A-Z, 0-9), found '|2'",
        );
        check_err(
            "MSH|^~\\&|A\rPID|1\r\rNK1|2\r",
            "segment 3 at byte 18: expected no blank line between segments, found 'NK1|'",
        );
        check_err(
            "MSH|^~\\&|A\rÄBC|1\r",
            "segment 2 at byte 11: expected a 3-character segment name (A-Z, 0-9), found 'ÄBC|'",
        );
        check_err(
            "MSH|^~\\&|A\rPID|1\rMSH|^~\\&|B\r",
            "segment 3 at byte 17: expected one MSH per message (several messages go in separate frames, or in a batch with BHS and BTS), found 'MSH|'",
        );
        check_err(
            "MSH|^~\\&|A\nPID|1\n",
            "byte 10: a line feed ends a segment here, expected text from hl7::decode() (segments ending in '\\r')",
        );
    }

    #[test]
    fn minimal_messages() {
        check("MSH|^~\\&", "MSH-2", Some("^~\\&"));
        check("MSH|^~\\&", "MSH-3", None);
        check("MSH|^~\\&\r", "MSH-3", None);
        check("MSH|^~\\&|\rPV2|\r", "PV2-1", None);
    }

    #[test]
    fn bad_paths_are_errors() {
        let message = Message::parse(ADT).expect("parses");
        assert!(matches!(
            message.get("PID-0"),
            Err(Hl7Error::BadPath { position: 4, .. })
        ));
    }

    #[test]
    fn line_feed_inside_a_value_is_data() {
        check(
            "MSH|^~\\&|A\rOBX|1|TX|||one\ntwo\r",
            "OBX-5",
            Some("one\ntwo"),
        );
    }

    #[test]
    fn explicit_null_is_kept() {
        check("MSH|^~\\&|A\rPID|1|\"\"\r", "PID-2", Some("\"\""));
    }
}
