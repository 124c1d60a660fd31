//! The one error type of the HL7 core.
//!
//! Every variant says where the problem is (byte offset in the decoded text,
//! segment position, field number, or character in a path) and what was
//! expected. Messages quote at most a few characters of the input, so an error
//! can be logged without carrying patient data.

use super::ack::AckError;

/// What went wrong while decoding, parsing, addressing or splitting HL7.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Hl7Error {
    /// Nothing but whitespace or line endings.
    #[error("empty message: expected a segment starting with 'MSH'")]
    Empty,

    /// The text does not open with an MSH segment.
    #[error("byte {offset}: expected 'MSH' at the start of the message, found '{found}'")]
    MissingMsh { offset: usize, found: String },

    /// MSH-1 is missing or is a character that cannot separate fields.
    #[error(
        "byte {offset}: MSH-1 (field separator) '{found}' is not usable, expected a punctuation character such as '|'"
    )]
    BadFieldSeparator { offset: usize, found: String },

    /// MSH-2 is not four (or five, with the v2.7 truncation character) distinct
    /// punctuation characters.
    #[error(
        "byte {offset}: MSH-2 (encoding characters) '{found}' is not usable, expected {expected}"
    )]
    BadEncodingCharacters {
        offset: usize,
        found: String,
        expected: &'static str,
    },

    /// A segment after MSH could not be read.
    #[error("segment {index} at byte {offset}: expected {expected}, found '{found}'")]
    BadSegment {
        /// 1-based position of the segment in the message (MSH is 1).
        index: usize,
        offset: usize,
        found: String,
        expected: &'static str,
    },

    /// A line feed that ends a segment: the text did not come from `decode()`.
    #[error(
        "byte {offset}: a line feed ends a segment here, expected text from hl7::decode() (segments ending in '\\r')"
    )]
    UnnormalisedText { offset: usize },

    /// The structure cannot be indexed: the text is 4 GiB or more (`offset`
    /// is then `u32::MAX`).
    #[error("byte {offset}: the message structure cannot be parsed, found '{found}'")]
    Syntax { offset: usize, found: String },

    /// Bytes that are not valid in the character set in use.
    #[error("byte {offset}: invalid {charset} byte sequence")]
    InvalidBytes { offset: usize, charset: String },

    /// MSH-18 names a character set this engine cannot decode.
    #[error(
        "MSH-18 (character set) '{value}' is not supported, expected ASCII, UNICODE UTF-8, 8859/1 to 8859/9, 8859/15 or a WHATWG encoding label"
    )]
    UnsupportedCharset { value: String },

    /// A field the caller requires is empty.
    #[error("{segment}-{field} ({name}) is empty")]
    EmptyField {
        segment: &'static str,
        field: u32,
        name: &'static str,
    },

    /// A field the caller requires holds only placeholders (one digit ten
    /// times, `0000000000`): not empty, but naming no one (the value is not
    /// quoted).
    #[error("{segment}-{field} ({name}) holds only a placeholder (one digit ten times, such as `0000000000`), not an identifier of a patient")]
    PlaceholderOnly {
        segment: &'static str,
        field: u32,
        name: &'static str,
    },

    /// A field path such as `PID-3[2].1` is malformed.
    #[error("path '{path}' at character {position}: expected {expected}")]
    BadPath {
        path: String,
        /// 0-based character position in the path.
        position: usize,
        expected: &'static str,
    },

    /// A batch (FHS/BHS) file is not laid out as expected.
    /// A byte that ends MLLP frames (0x1C) inside the message: never HL7 data.
    #[error(
        "byte {offset}: the MLLP end-block byte 0x1C inside the message (a frame ends with 0x1C 0x0D); the message may be cut or corrupted"
    )]
    FrameByte { offset: usize },

    /// A message in UTF-16 received over MLLP: its bytes can hold the frame's
    /// own (U+0D1C is `1C 0D` in UTF-16LE, the end block and CR), so a frame
    /// of it may end inside it; MLLP (Release 2) supports single-byte
    /// encodings and UTF-8 only.
    #[error(
        "the message is UTF-16 (by its byte order mark), which MLLP cannot frame safely (its bytes can hold the end block 0x1C 0x0D): send it in UTF-8 (MSH-18 UNICODE UTF-8)"
    )]
    Utf16OverMllp,

    /// MSH-12 is not an HL7 v2 version.
    #[error("MSH-12 (version id) '{value}' is not an HL7 v2 version, expected one such as '2.3', '2.5.1' or '2.8'")]
    UnsupportedVersion { value: String },

    /// MSH-7 is given but is no HL7 timestamp.
    #[error("MSH-7 (date/time of message) '{value}' is not an HL7 timestamp, expected YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]")]
    BadMessageTime { value: String },

    /// MSH-11 is not a processing id this listener takes.
    #[error("MSH-11 (processing id) '{value}' is not accepted here, expected {expected}")]
    UnsupportedProcessingId { value: String, expected: String },

    /// A query (QRY, QBP): its answer would be a response message Junction
    /// does not make; accepting it would leave the querying system waiting.
    #[error("MSH-9 '{value}' is a query, and Junction answers no queries: send it to the system that holds the data")]
    UnsupportedQuery { value: String },
    /// A patient merge (A34, A35, A36, A39, A40) whose MRG is missing or
    /// names no record (MRG-1): there is nothing to merge.
    #[error("{message_type} names no record to merge (an MRG segment with MRG-1, the prior patient identifier list): a merge must name the record it retires")]
    NoMergedRecord {
        message_type: String,
        segment_found: bool,
    },
    /// An ADT (not one that links or merges records) or ORU^R01 holding more
    /// than one PID: the mappings make one patient's document per message, so
    /// it could never reach the record whole.
    #[error("{message_type} has {count} PID segments: one patient per message is taken here (send each patient's results or events as a message of their own)")]
    MorePatients { message_type: String, count: usize },
    #[error("{message_type} has no {segment} segment: a message about a patient must name one")]
    MissingSegment {
        segment: &'static str,
        message_type: String,
    },

    #[error("byte {offset}: expected {expected}, found '{found}'")]
    Batch {
        offset: usize,
        found: String,
        expected: &'static str,
    },
}

impl Hl7Error {
    /// The ERR segment content for this error: an HL7 table 0357 code, the
    /// location when one is known, and this error's text.
    pub fn ack_error(&self) -> AckError {
        let (code, segment, field): (&'static str, Option<&str>, Option<u32>) = match self {
            Hl7Error::Empty | Hl7Error::MissingMsh { .. } => ("100", Some("MSH"), None),
            Hl7Error::BadFieldSeparator { .. } => ("102", Some("MSH"), Some(1)),
            Hl7Error::BadEncodingCharacters { .. } => ("102", Some("MSH"), Some(2)),
            Hl7Error::BadSegment { .. }
            | Hl7Error::Syntax { .. }
            | Hl7Error::Batch { .. }
            | Hl7Error::UnnormalisedText { .. } => ("100", None, None),
            Hl7Error::InvalidBytes { .. } | Hl7Error::FrameByte { .. } => ("102", None, None),
            Hl7Error::Utf16OverMllp => ("203", Some("MSH"), Some(18)),
            Hl7Error::UnsupportedVersion { .. } => ("203", Some("MSH"), Some(12)),
            Hl7Error::UnsupportedProcessingId { .. } => ("202", Some("MSH"), Some(11)),
            Hl7Error::BadMessageTime { .. } => ("102", Some("MSH"), Some(7)),
            Hl7Error::UnsupportedQuery { .. } => ("200", Some("MSH"), Some(9)),
            Hl7Error::MissingSegment { segment, .. } => ("100", Some(*segment), None),
            Hl7Error::NoMergedRecord {
                segment_found: false,
                ..
            } => ("100", Some("MRG"), None),
            Hl7Error::NoMergedRecord { .. } => ("101", Some("MRG"), Some(1)),
            Hl7Error::MorePatients { .. } => ("100", Some("PID"), None),
            Hl7Error::UnsupportedCharset { .. } => ("103", Some("MSH"), Some(18)),
            Hl7Error::EmptyField { segment, field, .. }
            | Hl7Error::PlaceholderOnly { segment, field, .. } => {
                ("101", Some(*segment), Some(*field))
            }
            Hl7Error::BadPath { .. } => ("207", None, None),
        };
        AckError {
            code,
            text: self.to_string(),
            segment: segment.map(str::to_owned),
            // (the second PID is the one out of place)
            sequence: segment.map(|_| match self {
                Hl7Error::MorePatients { .. } => 2,
                _ => 1,
            }),
            field,
            severity: 'E',
        }
    }
}

/// At most `max` characters of `text`, with line endings and control
/// characters shown escaped, for quoting input in an error message.
pub(crate) fn snippet(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}
