//! A parsed HL7 v2 message: a checked wrapper over `hl7_parser::Message`, its
//! decoded header, and values addressed by [`Path`].
//!
//! # Invariants
//! - A `Message` always starts with a valid MSH: a usable field separator and
//!   four (or five, with the v2.7 truncation character) distinct encoding
//!   characters. `inner().segments[0]` is that MSH.
//! - Every segment of the text is in `inner().segments` (nothing after a bad
//!   segment is silently dropped), every segment name is three ASCII
//!   alphanumerics, and there is exactly one MSH.
//! - Field numbers are HL7's for every segment, MSH included:
//!   `segment.field(n)` is `SEG-n`.
//!
//! Values returned by [`Message::get`] are escape-decoded; the HL7 explicit
//! null `""` is returned as the two quote characters so callers can tell
//! "delete this" from "absent".

use std::borrow::Cow;

use hl7_parser::message::{Component, Field, Repeat, Segment, Separators};

use super::charset::ends_segment;
use super::error::{snippet, Hl7Error};
use super::escape::unescape;
use super::path::Path;

/// A parsed message borrowing the text it was parsed from.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    text: &'a str,
    inner: hl7_parser::Message<'a>,
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
    /// MSH-15 (AL/NE/ER/SU).
    pub accept_ack_type: Option<String>,
    /// MSH-16.
    pub application_ack_type: Option<String>,
    /// MSH-18 (first repetition).
    pub charset: Option<String>,
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

impl<'a> Message<'a> {
    /// Parses `text` as produced by [`super::decode`] (segments end in `'\r'`).
    pub fn parse(text: &'a str) -> Result<Message<'a>, Hl7Error> {
        let encoding_characters = check_msh_prefix(text)?;
        check_line_feeds(text)?;
        let mut inner = hl7_parser::Message::parse(text).map_err(|err| match err {
            hl7_parser::parser::ParseError::FailedToParse { position, .. } => Hl7Error::Syntax {
                offset: position,
                found: snippet(text.get(position..).unwrap_or_default(), 8),
            },
            hl7_parser::parser::ParseError::IncompleteInput(_) => Hl7Error::Syntax {
                offset: text.len(),
                found: String::new(),
            },
        })?;
        // Work-around: with a 5-character MSH-2 (v2.7 truncation character),
        // hl7-parser reads 4 encoding characters and makes the 5th an extra
        // field, shifting MSH-3 onwards by one. Drop that extra field.
        if encoding_characters.len() == 5 {
            let msh = &mut inner.segments[0];
            if msh.fields.len() > 2 && msh.fields[2].raw_value() == &encoding_characters[4..] {
                msh.fields.remove(2);
            }
        }
        check_segments(text, &inner)?;
        Ok(Message {
            text,
            inner,
            encoding_characters,
        })
    }

    /// The `hl7-parser` view (segments, fields, byte ranges).
    pub fn inner(&self) -> &hl7_parser::Message<'a> {
        &self.inner
    }

    /// The text the message was parsed from.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The message's separators.
    pub fn separators(&self) -> &Separators {
        &self.inner.separators
    }

    /// MSH-2 exactly as received.
    pub fn encoding_characters(&self) -> &'a str {
        self.encoding_characters
    }

    /// The segments in order, MSH first.
    pub fn segments(&self) -> impl Iterator<Item = &Segment<'a>> {
        self.inner.segments.iter()
    }

    /// The decoded MSH fields.
    pub fn header(&self) -> Result<Header, Hl7Error> {
        let msh = self.inner.segments.first().ok_or(Hl7Error::Empty)?;
        let seps = self.separators();
        let field = |n: usize| -> String {
            msh.field(n)
                .and_then(|f| f.repeat(1))
                .map(|r| repeat_text(r, seps).into_owned())
                .unwrap_or_default()
        };
        let component = |n: usize, c: usize| -> String {
            msh.field(n)
                .and_then(|f| f.repeat(1))
                .and_then(|r| r.component(c))
                .map(|c| component_text(c, seps).into_owned())
                .unwrap_or_default()
        };
        let optional = |s: String| (!s.is_empty()).then_some(s);
        Ok(Header {
            field_separator: seps.field,
            encoding_characters: self.encoding_characters.to_owned(),
            sending_application: field(3),
            sending_facility: field(4),
            receiving_application: field(5),
            receiving_facility: field(6),
            message_code: component(9, 1),
            trigger_event: component(9, 2),
            message_structure: component(9, 3),
            control_id: field(10),
            processing_id: component(11, 1),
            version: component(12, 1),
            accept_ack_type: optional(field(15)),
            application_ack_type: optional(field(16)),
            charset: optional(field(18)),
        })
    }

    /// The escape-decoded value at `path` (see [`Path`]); `None` when absent or empty.
    pub fn get(&self, path: &str) -> Result<Option<String>, Hl7Error> {
        let path = Path::parse(path)?;
        Ok(self.get_path(&path).map(Cow::into_owned))
    }

    /// [`Message::get`] with a pre-parsed path; borrows when nothing needs decoding.
    pub fn get_path(&self, path: &Path) -> Option<Cow<'a, str>> {
        let segment = self
            .inner
            .segments
            .iter()
            .filter(|s| s.name == path.segment)
            .nth(path.occurrence.checked_sub(1)?)?;
        if segment.name == "MSH" && path.field <= 2 {
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
        let seps = &self.inner.separators;
        let field = segment.fields.get(path.field.checked_sub(1)?)?;
        let repeat = field
            .repeats
            .get(path.repetition.unwrap_or(1).checked_sub(1)?)?;
        let value = match path.component {
            None => repeat_text(repeat, seps),
            Some(c) => {
                let component = repeat.components.get(c.checked_sub(1)?)?;
                match path.subcomponent {
                    None => component_text(component, seps),
                    Some(s) => {
                        let sub = component.subcomponents.get(s.checked_sub(1)?)?;
                        unescape(sub.value, seps)
                    }
                }
            }
        };
        (!value.is_empty()).then_some(value)
    }
}

/// A whole field (all repetitions) with escapes decoded in each subcomponent
/// and the separators kept as received.
pub fn field_text<'a>(field: &Field<'a>, separators: &Separators) -> Cow<'a, str> {
    rebuild(field.raw_value(), separators, || {
        let mut out = String::with_capacity(field.raw_value().len());
        for (i, repeat) in field.repeats.iter().enumerate() {
            if i > 0 {
                out.push(separators.repetition);
            }
            out.push_str(&repeat_text(repeat, separators));
        }
        out
    })
}

/// One repetition with escapes decoded in each subcomponent and the component
/// and subcomponent separators kept as received.
pub fn repeat_text<'a>(repeat: &Repeat<'a>, separators: &Separators) -> Cow<'a, str> {
    rebuild(repeat.raw_value(), separators, || {
        let mut out = String::with_capacity(repeat.raw_value().len());
        for (i, component) in repeat.components.iter().enumerate() {
            if i > 0 {
                out.push(separators.component);
            }
            out.push_str(&component_text(component, separators));
        }
        out
    })
}

/// One component with escapes decoded in each subcomponent and the
/// subcomponent separators kept as received.
pub fn component_text<'a>(component: &Component<'a>, separators: &Separators) -> Cow<'a, str> {
    rebuild(component.raw_value(), separators, || {
        let mut out = String::with_capacity(component.raw_value().len());
        for (i, sub) in component.subcomponents.iter().enumerate() {
            if i > 0 {
                out.push(separators.subcomponent);
            }
            out.push_str(&unescape(sub.value, separators));
        }
        out
    })
}

fn rebuild<'a>(raw: &'a str, seps: &Separators, build: impl FnOnce() -> String) -> Cow<'a, str> {
    if raw.contains(seps.escape) {
        Cow::Owned(build())
    } else {
        Cow::Borrowed(raw)
    }
}

/// Checks what hl7-parser would silently get wrong about the MSH start and
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

/// Rejects text whose segments end in '\n' (not from `decode`): strict
/// hl7-parser would read such text as one long MSH.
fn check_line_feeds(text: &str) -> Result<(), Hl7Error> {
    let bytes = text.as_bytes();
    let sep = bytes[3];
    let mut from = 0;
    while let Some(pos) = text[from..].find('\n') {
        let at = from + pos;
        if ends_segment(bytes, at + 1, sep) {
            return Err(Hl7Error::UnnormalisedText { offset: at });
        }
        from = at + 1;
    }
    Ok(())
}

/// Checks that hl7-parser read the whole text and that every segment is sound.
fn check_segments(text: &str, inner: &hl7_parser::Message<'_>) -> Result<(), Hl7Error> {
    for (i, segment) in inner.segments.iter().enumerate().skip(1) {
        let bad = |expected| Hl7Error::BadSegment {
            index: i + 1,
            offset: segment.range.start,
            found: snippet(segment.raw_value(), 4),
            expected,
        };
        if !segment.name.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad("a 3-character segment name (A-Z, 0-9)"));
        }
        if segment.name == "MSH" {
            return Err(bad(
                "one MSH per message (split batches and concatenated messages with split_batch)",
            ));
        }
    }
    let consumed = inner.raw_value().len();
    let rest = &text[consumed..];
    let skipped = rest.len() - rest.trim_start_matches(['\r', '\n']).len();
    let offset = consumed + skipped;
    let line = &text[offset..];
    if line.is_empty() {
        return Ok(());
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
    Err(Hl7Error::BadSegment {
        index: inner.segments.len() + 1,
        offset,
        found: snippet(line, 4),
        expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
                accept_ack_type: Some("AL".into()),
                application_ack_type: Some("NE".into()),
                charset: Some("8859/1".into()),
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
            "segment 3 at byte 17: expected one MSH per message (split batches and concatenated messages with split_batch), found 'MSH|'",
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
