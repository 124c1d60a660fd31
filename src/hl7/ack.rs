//! ACK building and the intake gate ([`assess`]).
//!
//! An ACK answers one message: MSH addressed back to the sender (sending and
//! receiving application/facility swapped), MSA with the code and the original
//! control id, and, on error, an ERR segment. The ERR layout follows the
//! version the sender spoke (MSH-12): ERR-2/3/4 from v2.5 on, ERR-1 (ELD)
//! before, plus MSA-3 (text message) before v2.5. MSH-9 is `ACK^<trigger>^ACK`
//! from v2.3.1 on (the message-structure component does not exist before) and
//! `ACK^<trigger>` for v2.1–v2.3.
//!
//! An *application* acknowledgement (enhanced mode, asked for by MSH-16:
//! [`application_ack_wanted`]) is the same ACK as a message of its own, with
//! MSH-15 `AL` and MSH-16 `NE` ([`build_application_ack`]).
//!
//! Not done here: choosing between original and enhanced mode for the accept
//! acknowledgement (the listener picks the [`AckCode`] from MSH-15/16),
//! control-id generation, clocks, I/O.
//!
//! Invariant: the ACK uses the original message's separators, and every value
//! written into it is HL7-escaped, so a hostile MSH-10 cannot forge segments.

use std::fmt;

use super::tree::Separators;

use super::charset::decode;
use super::error::Hl7Error;
use super::escape::{escape, escape_field};
use super::message::{Header, Message};
use super::scan::clean_msh_line;

/// MSA-1 acknowledgment codes (HL7 table 0008).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AckCode {
    /// Original mode: application accept.
    AA,
    /// Original mode: application error.
    AE,
    /// Original mode: application reject.
    AR,
    /// Enhanced mode: commit accept.
    CA,
    /// Enhanced mode: commit error.
    CE,
    /// Enhanced mode: commit reject.
    CR,
}

impl AckCode {
    /// The two-letter code.
    pub fn as_str(&self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }

    /// AA and CA: the message was accepted.
    pub fn is_success(&self) -> bool {
        matches!(self, AckCode::AA | AckCode::CA)
    }

    /// The code for the same outcome in enhanced (commit) mode: AA→CA, AE→CE, AR→CR.
    pub fn to_commit(self) -> AckCode {
        match self {
            AckCode::AA | AckCode::CA => AckCode::CA,
            AckCode::AE | AckCode::CE => AckCode::CE,
            AckCode::AR | AckCode::CR => AckCode::CR,
        }
    }

    /// Parses a two-letter code (as found in MSA-1).
    pub fn parse(code: &str) -> Option<AckCode> {
        Some(match code {
            "AA" => AckCode::AA,
            "AE" => AckCode::AE,
            "AR" => AckCode::AR,
            "CA" => AckCode::CA,
            "CE" => AckCode::CE,
            "CR" => AckCode::CR,
            _ => return None,
        })
    }
}

impl fmt::Display for AckCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong, for an ERR segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckError {
    /// HL7 table 0357: "100" segment sequence error, "101" required field
    /// missing, "102" data type error, "103" table value not found, "200"
    /// unsupported message type, "207" application internal error.
    pub code: &'static str,
    /// Human-readable explanation (no patient data).
    pub text: String,
    /// Segment id, e.g. "MSH".
    pub segment: Option<String>,
    /// Segment occurrence, 1-based.
    pub sequence: Option<u32>,
    /// Field number.
    pub field: Option<u32>,
    /// 'E' error, 'W' warning, 'I' information.
    pub severity: char,
}

impl AckError {
    /// The error as one line, for a journal row: `MSH-9: message type
    /// missing (101)`. The journal row is what operators read (`junction
    /// messages`, the dashboard): text quoted from the message is shown only
    /// when it is a header field's value (`MSH-18 'KLINGON'`); anything else
    /// quoted (`found 'GAR'`, the start of a name cut by a stray byte) is left
    /// out, as it may be patient data. The ACK's ERR, for the sender, keeps it.
    pub fn summary(&self) -> String {
        let text = if self.field.is_some() {
            std::borrow::Cow::Borrowed(self.text.as_str())
        } else {
            std::borrow::Cow::Owned(unquoted(&self.text))
        };
        match (&self.segment, self.field) {
            (Some(segment), Some(field)) => {
                format!("{segment}-{field}: {text} ({})", self.code)
            }
            (Some(segment), None) => format!("{segment}: {text} ({})", self.code),
            _ => format!("{text} ({})", self.code),
        }
    }
}

/// An ACK as operators are shown it without asking for the message: what its
/// MSA and ERR segments quote of the message (`found 'CRP'`) replaced by
/// `'…'`, the header as it is.
pub fn ack_unquoted(ack: &str) -> String {
    ack.split('\r')
        .map(|segment| {
            if segment.starts_with("MSH") {
                segment.to_string()
            } else {
                unquoted(segment)
            }
        })
        .collect::<Vec<_>>()
        .join("\r")
}

/// `text` with what it quotes in single quotes (`found 'GAR'`) replaced by
/// `'…'`: a quotation of the message, which may be patient data.
fn unquoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('\'') {
        let Some(close) = rest[open + 1..].find('\'') else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str("'…'");
        rest = &rest[open + 1 + close + 1..];
    }
    out.push_str(rest);
    out
}

impl AckError {
    /// An error with no location and severity 'E'.
    pub fn new(code: &'static str, text: impl Into<String>) -> AckError {
        AckError {
            code,
            text: text.into(),
            segment: None,
            sequence: None,
            field: None,
            severity: 'E',
        }
    }

    /// The same error located at `segment`'s `sequence`-th occurrence, field `field`.
    pub fn at(mut self, segment: &str, sequence: u32, field: Option<u32>) -> AckError {
        self.segment = Some(segment.to_owned());
        self.sequence = Some(sequence);
        self.field = field;
        self
    }
}

/// Builds an ACK (see the module doc). Every segment ends with `'\r'`, the
/// last one too, as HL7 has it (and as a batch's ACKs always did; s24d
/// tester, I1). `timestamp` is MSH-7 (YYYYMMDDHHMMSS), `control_id` the
/// ACK's own MSH-10. With `original = None` the ACK is addressed to nobody,
/// uses default separators and version 2.5, and MSA-2 is empty.
pub fn build_ack(
    original: Option<&Header>,
    code: AckCode,
    error: Option<&AckError>,
    control_id: &str,
    timestamp: &str,
) -> String {
    let empty = Header::default();
    let h = original.unwrap_or(&empty);
    let (seps, encoding) = separators_of(h);
    let f = seps.field;
    // the sender's version, when it is an HL7 v2 one (an ACK to `9.9` is
    // not itself a `9.9` message)
    let version = if is_version(&h.version) && is_v2_version(&h.version) {
        h.version.as_str()
    } else {
        "2.5"
    };
    let v = version_number(version);
    let processing = if h.processing_id.is_empty() {
        "P"
    } else {
        h.processing_id.as_str()
    };
    let e = |s: &str| escape(s, &seps).into_owned();
    let ef = |s: &str| escape_field(s, &seps).into_owned();
    // a field echoed as the sender wrote it, when the ACK is written in the
    // sender's own delimiters (so the bytes mean what they meant); else
    // escaped again from its decoded text
    let own_delimiters = original.is_some()
        && seps.field == h.field_separator
        && h.encoding_characters.starts_with(encoding.as_str());
    let echo = |as_sent: &str, decoded: &str, escaped: &dyn Fn(&str) -> String| {
        if own_delimiters && !as_sent.is_empty() && !as_sent.contains(['\r', '\n']) {
            as_sent.to_string()
        } else {
            escaped(decoded)
        }
    };

    let mut message_type = String::from("ACK");
    if !h.trigger_event.is_empty() {
        message_type.push(seps.component);
        message_type.push_str(&e(&h.trigger_event));
        if v >= (2, 3, 1) {
            message_type.push(seps.component);
            message_type.push_str("ACK");
        }
    }

    let mut out = String::with_capacity(256);
    out.push_str("MSH");
    out.push(f);
    out.push_str(&encoding);
    for value in [
        ef(&h.receiving_application),
        ef(&h.receiving_facility),
        echo(&h.as_sent.sending_application, &h.sending_application, &ef),
        echo(&h.as_sent.sending_facility, &h.sending_facility, &ef),
        e(timestamp),
        String::new(),
        message_type,
        e(control_id),
        e(processing),
        e(version),
    ] {
        out.push(f);
        out.push_str(&value);
    }
    // the sender's character set, declared as it declared it (MSH-18): the
    // ACK is written in it (`encode_text` on the way out), so names echoed in
    // MSH-5/6 read back as the sender wrote them
    if let Some(charset) = h.charset.as_deref().filter(|c| !c.trim().is_empty()) {
        for _ in 13..18 {
            out.push(f);
        }
        out.push(f);
        out.push_str(&e(charset.trim()));
    }

    out.push_str("\rMSA");
    out.push(f);
    out.push_str(code.as_str());
    out.push(f);
    out.push_str(&echo(&h.as_sent.control_id, &h.control_id, &e));
    let Some(error) = error else {
        out.push('\r');
        return out;
    };
    let c = seps.component;
    let s = seps.subcomponent;
    let location = |with_field: bool| {
        let mut loc = String::new();
        if let Some(segment) = &error.segment {
            loc.push_str(&e(segment));
            loc.push(c);
            loc.push_str(&error.sequence.unwrap_or(1).to_string());
            if let (true, Some(field)) = (with_field, error.field) {
                loc.push(c);
                loc.push_str(&field.to_string());
            }
        }
        loc
    };
    if v >= (2, 5, 0) {
        // ERR-1 empty, ERR-2 location (ERL), ERR-3 code (CWE), ERR-4 severity.
        out.push_str("\rERR");
        out.push(f);
        out.push(f);
        out.push_str(&location(true));
        out.push(f);
        out.push_str(&e(error.code));
        out.push(c);
        out.push_str(&e(&error.text));
        out.push(c);
        out.push_str("HL70357");
        out.push(f);
        out.push_str(&e(&error.severity.to_string()));
    } else {
        // MSA-3 text message, then ERR-1 (ELD): segment^sequence^field^code&text&table.
        out.push(f);
        out.push_str(&e(&error.text));
        out.push_str("\rERR");
        out.push(f);
        let mut eld = location(false);
        if error.segment.is_some() {
            eld.push(c);
            if let Some(field) = error.field {
                eld.push_str(&field.to_string());
            }
        } else {
            eld.push(c);
            eld.push(c);
        }
        eld.push(c);
        eld.push_str(&e(error.code));
        eld.push(s);
        eld.push_str(&e(&error.text));
        eld.push(s);
        eld.push_str("HL70357");
        out.push_str(&eld);
    }
    out.push('\r');
    out
}

/// MSH-16 in enhanced mode: whether an *application* acknowledgement is
/// wanted for a message whose processing succeeded (`success`) or not. `AL`
/// always, `ER` on error only, `SU` on success only; `NE` never, and empty
/// never either (a sender that asks only for accept acknowledgements, MSH-15,
/// did not ask for this one). Original mode (MSH-15 and MSH-16 both empty):
/// never, the one original-mode ACK already said AA/AE/AR.
pub fn application_ack_wanted(h: &Header, success: bool) -> bool {
    let upper = |v: &Option<String>| v.as_deref().map(|v| v.trim().to_ascii_uppercase());
    match upper(&h.application_ack_type).as_deref() {
        Some("AL") => true,
        Some("ER") => !success,
        Some("SU") => success,
        _ => false,
    }
}

/// An application acknowledgement (enhanced mode, asked for by MSH-16): the
/// ACK [`build_ack`] writes, with MSH-15 `AL` and MSH-16 `NE`. It is a message
/// of its own, sent to the original sender, which answers it with an accept
/// acknowledgement (CA) and never with another application acknowledgement.
/// `code` is AA, AE or AR.
pub fn build_application_ack(
    original: &Header,
    code: AckCode,
    error: Option<&AckError>,
    control_id: &str,
    timestamp: &str,
) -> String {
    let ack = build_ack(Some(original), code, error, control_id, timestamp);
    // MSH-15 and MSH-16 set in place, whatever fields the MSH has (it may end
    // after MSH-12, or carry MSH-18, the sender's character set)
    let f = separators_of(original).0.field;
    let msh_end = ack.find('\r').unwrap_or(ack.len());
    // fields[0] is "MSH", fields[n] is MSH-(n+1) (MSH-1 is the separator itself)
    let mut fields: Vec<&str> = ack[..msh_end].split(f).collect();
    if fields.len() < 16 {
        fields.resize(16, "");
    }
    fields[14] = "AL";
    fields[15] = "NE";
    let sep = f.to_string();
    fields.join(&sep) + &ack[msh_end..]
}

/// The separators of `h` when they are usable, otherwise the defaults; and the
/// MSH-2 to write (the four encoding characters, without a truncation character).
fn separators_of(h: &Header) -> (Separators, String) {
    let chars: Vec<char> = h.encoding_characters.chars().take(4).collect();
    let mut all = chars.clone();
    all.push(h.field_separator);
    let usable = chars.len() == 4
        && all.iter().all(|c| c.is_ascii_punctuation())
        && all.iter().enumerate().all(|(i, c)| !all[..i].contains(c));
    if !usable {
        return (Separators::default(), "^~\\&".to_owned());
    }
    let seps = Separators {
        field: h.field_separator,
        component: chars[0],
        repetition: chars[1],
        escape: chars[2],
        subcomponent: chars[3],
        hex: None,
    };
    (seps, chars.into_iter().collect())
}

/// An HL7 v2 version id (table 0104): `2.` and one digit (`2.1` ... `2.9`),
/// then at most a `.` and one digit (`2.3.1`, `2.5.1`, `2.8.2`; a sender's
/// `2.4.0`), or `2.0D`. Not `2.10`, `2.05`, `2.99` or `2.5.1.1`: no version.
fn is_v2_version(v: &str) -> bool {
    match v.as_bytes() {
        [b'2', b'.', m] => m.is_ascii_digit(),
        [b'2', b'.', b'0', b'D'] => true,
        [b'2', b'.', m, b'.', p] => m.is_ascii_digit() && p.is_ascii_digit(),
        _ => false,
    }
}

/// Every check a listener makes of a message before it takes it, in its
/// order: [`assess`] (UTF-16 refused, [`refuse_utf16_over_mllp`]), MSH-11
/// among `processing_ids` ([`check_processing_id`]; `None`: not checked, as
/// `junction map` has no listener's config at hand), no query
/// ([`check_not_a_query`]), a patient named ([`check_patient_named`]).
#[allow(clippy::result_large_err)]
pub fn check_intake(raw: &[u8], processing_ids: Option<&[String]>) -> Result<Header, Rejection> {
    let header = refuse_utf16_over_mllp(raw, assess(raw))?;
    let header = match processing_ids {
        Some(accepted) => check_processing_id(header, accepted)?,
        None => header,
    };
    check_content(header, raw)
}

/// The checks of what a message says, whatever carried it (MLLP, MESH): no
/// query ([`check_not_a_query`]), a patient named ([`check_patient_named`]).
#[allow(clippy::result_large_err)]
pub fn check_content(header: Header, raw: &[u8]) -> Result<Header, Rejection> {
    check_not_a_query(header).and_then(|header| check_patient_named(header, raw))
}

/// MSH-11.1 must be one of `accepted` (an AR, HL7's error 202): a listener of
/// the live record refuses training (`T`) and debugging (`D`) messages when
/// configured to. An empty MSH-11 is taken as it comes.
#[allow(clippy::result_large_err)]
pub fn check_processing_id(header: Header, accepted: &[String]) -> Result<Header, Rejection> {
    if header.processing_id.is_empty() || accepted.contains(&header.processing_id) {
        return Ok(header);
    }
    let error = Hl7Error::UnsupportedProcessingId {
        value: super::error::snippet(&header.processing_id, 40),
        expected: accepted
            .iter()
            .map(|p| format!("'{p}'"))
            .collect::<Vec<_>>()
            .join(" or "),
    };
    Err(Rejection {
        code: AckCode::AR,
        header: Some(header),
        error: error.ack_error(),
    })
}

/// The listener's other gate: a query (QRY, QBP; queries by parameter and
/// the original query messages) is refused with AR and ERR code 200
/// (unsupported message type), since its answer would be a response message
/// that Junction does not make: acknowledging it would leave the querying
/// system waiting for one.
#[allow(clippy::result_large_err)]
pub fn check_not_a_query(header: Header) -> Result<Header, Rejection> {
    let code = header.message_code.trim().to_ascii_uppercase();
    if !matches!(
        code.as_str(),
        "QRY"
            | "QBP"
            | "QSB"
            | "QCN"
            | "QVR"
            | "SPQ"
            | "VXQ"
            | "RQI"
            | "RQQ"
            | "RQA"
            | "RQC"
            | "RQP"
    ) {
        return Ok(header);
    }
    let error = Hl7Error::UnsupportedQuery {
        value: super::error::snippet(&header.message_type(), 40),
    };
    Err(Rejection {
        code: AckCode::AR,
        header: Some(header),
        error: error.ack_error(),
    })
}

/// An ADT message (but A20, a bed status, about no one) or an ORU^R01 must
/// name its patient as the mappings key one: a PID segment with an
/// identifier in PID-3 (not a placeholder of one digit ten times), or a
/// valid NHS number in PID-2 tagged as the NHS's (CX.4 or CX.5) or alone in
/// PID-19 (where v2.3 senders put it). One that
/// does not can never reach the record, and is refused with AE (ERR 100: the
/// segment missing; 101: no identifier) rather than acknowledged AA and left
/// to fail unseen behind the ACK. Read from the raw bytes (an
/// ASCII-compatible encoding; others are left to the pipeline).
#[allow(clippy::result_large_err)]
pub fn check_patient_named(header: Header, raw: &[u8]) -> Result<Header, Rejection> {
    let code = header.message_code.trim().to_ascii_uppercase();
    let trigger = header.trigger_event.trim().to_ascii_uppercase();
    let about_a_patient = match code.as_str() {
        "ADT" => trigger != "A20",
        "ORU" => trigger == "R01",
        _ => false,
    };
    if !about_a_patient {
        return Ok(header);
    }
    let ascii_compatible = !raw.iter().take(16).any(|&b| b == 0);
    let chars = header.encoding_characters.as_bytes();
    let (Ok(sep), Some(&component), Some(&repetition), Some(&subcomponent)) = (
        u8::try_from(header.field_separator),
        chars.first(),
        chars.get(1),
        chars.get(3),
    ) else {
        return Ok(header);
    };
    if !ascii_compatible {
        return Ok(header);
    }
    // the first PID, and how many there are (one pass)
    let mut pids = raw
        .split(|&b| b == b'\r' || b == b'\n')
        .map(|line| line.trim_ascii_start())
        .filter(|line| line.len() > 3 && line.starts_with(b"PID") && line[3] == sep);
    let pid = pids.next();
    let count = usize::from(pid.is_some()) + pids.count();
    let error = match pid {
        None => Hl7Error::MissingSegment {
            segment: "PID",
            message_type: super::error::snippet(&header.message_type(), 40),
        },
        Some(line) => {
            let fields: Vec<&[u8]> = line.split(|&b| b == sep).collect();
            fn text(b: &[u8]) -> &str {
                std::str::from_utf8(b.trim_ascii()).unwrap_or_default()
            }
            let reps = |n: usize| {
                fields
                    .get(n)
                    .into_iter()
                    .flat_map(move |field| field.split(move |&b| b == repetition))
            };
            fn parts(rep: &[u8], component: u8) -> Vec<&str> {
                rep.split(|&b| b == component).map(text).collect()
            }
            let valid = |id: &str| crate::mapping::transform::nhs_number(id).is_some();
            // PID-3 an identifier that is not a placeholder; PID-2 a valid
            // number assigned by the NHS (as the mappings and the CX data type
            // read it); PID-19 a bare valid number
            let pid3 = reps(3).any(|rep| {
                names_someone(parts(rep, component).first().copied().unwrap_or_default())
            });
            let pid2 = reps(2).any(|rep| {
                let p = parts(rep, component);
                let part = |i: usize| p.get(i).copied().unwrap_or_default();
                let mut hd = part(3).split(char::from(subcomponent));
                let (hd1, hd2) = (hd.next().unwrap_or_default(), hd.next().unwrap_or_default());
                crate::mapping::datatypes::nhs_assigned(hd1, hd2, part(4)) && valid(part(0))
            });
            let pid19 = fields
                .get(19)
                .is_some_and(|f| !f.contains(&component) && valid(text(f)));
            let identified = pid3 || pid2 || pid19;
            if identified {
                if let Some(error) = more_patients(&code, &trigger, &header, count) {
                    return Err(Rejection {
                        code: AckCode::AE,
                        header: Some(header),
                        error: error.ack_error(),
                    });
                }
                return match merged_record(&trigger, &header, raw, sep, component, repetition) {
                    Some(error) => Err(Rejection {
                        code: AckCode::AE,
                        header: Some(header),
                        error: error.ack_error(),
                    }),
                    None => Ok(header),
                };
            }
            // (PID-3 that holds something, all of it placeholders: said so,
            // not "empty", which the sender's team would find untrue)
            let placeholders = reps(3).any(|rep| {
                let id = parts(rep, component).first().copied().unwrap_or_default();
                !id.is_empty() && id != "\"\""
            });
            match placeholders {
                true => Hl7Error::PlaceholderOnly {
                    segment: "PID",
                    field: 3,
                    name: "patient identifier list",
                },
                false => Hl7Error::EmptyField {
                    segment: "PID",
                    field: 3,
                    name: "patient identifier list",
                },
            }
        }
    };
    Err(Rejection {
        code: AckCode::AE,
        header: Some(header),
        error: error.ack_error(),
    })
}

/// An ADT or ORU^R01 with more than one PID (`count` of them), when its event is about one
/// patient: every ADT event but those that link, unlink, merge or move
/// records between patients (A24, A34–A37, A39–A47, A49–A51: a PID per
/// patient). (An ORU's PATIENT_RESULT group may repeat in HL7; the shipped
/// mappings make one patient's document, so such a message is refused at
/// intake, where the sender hears of it, not after an AA.)
fn more_patients(code: &str, trigger: &str, header: &Header, count: usize) -> Option<Hl7Error> {
    let several_allowed = code == "ADT"
        && matches!(
            trigger,
            "A24"
                | "A34"
                | "A35"
                | "A36"
                | "A37"
                | "A39"
                | "A40"
                | "A41"
                | "A42"
                | "A43"
                | "A44"
                | "A45"
                | "A46"
                | "A47"
                | "A49"
                | "A50"
                | "A51"
        );
    if several_allowed {
        return None;
    }
    (count > 1).then(|| Hl7Error::MorePatients {
        message_type: super::error::snippet(&header.message_type(), 40),
        count,
    })
}

/// Whether an identifier's value (CX.1, trimmed) tells someone: not empty,
/// not HL7's null `""`, not a placeholder such as `0000000000`.
fn names_someone(id: &str) -> bool {
    !id.is_empty() && id != "\"\"" && !crate::mapping::transform::is_placeholder(id)
}

/// For a patient merge (A34, A35, A36, A39, A40): its error when no MRG
/// names a record to merge (an MRG-1 repetition whose identifier is not
/// empty nor a placeholder); `None` for other events, or when one does.
fn merged_record(
    trigger: &str,
    header: &Header,
    raw: &[u8],
    sep: u8,
    component: u8,
    repetition: u8,
) -> Option<Hl7Error> {
    if !matches!(trigger, "A34" | "A35" | "A36" | "A39" | "A40") {
        return None;
    }
    // each merge is a PID and the MRG after it (ADT_A39's PATIENT group
    // repeats): every PID must have one that names a record
    let mut found = false;
    let mut open = false;
    for line in raw
        .split(|&b| b == b'\r' || b == b'\n')
        .map(|line| line.trim_ascii_start())
        .filter(|line| line.len() > 3 && line[3] == sep)
    {
        if line.starts_with(b"PID") {
            if open {
                break;
            }
            open = true;
        } else if line.starts_with(b"MRG") {
            found = true;
            let mrg1 = line.split(|&b| b == sep).nth(1).unwrap_or_default();
            let named = mrg1.split(|&b| b == repetition).any(|rep| {
                let id = rep.split(|&b| b == component).next().unwrap_or_default();
                names_someone(std::str::from_utf8(id.trim_ascii()).unwrap_or_default())
            });
            if named {
                open = false;
            }
        }
    }
    if !open {
        return None;
    }
    Some(Hl7Error::NoMergedRecord {
        message_type: super::error::snippet(&header.message_type(), 40),
        segment_found: found,
    })
}

/// Whether a message is itself an answer (HL7 table 0076): an acknowledgement
/// (MSH-9.1 `ACK`, `MCF`, a master file's `MFK` or `MFD`), an application
/// acknowledgement of an order or a report (`ORR`, `ORL`, `ORG`, `ORI`, `ORP`,
/// `ORS`, `ORN`, `ORD`, `ORB`, `ORA`, `OPR`, `BRP`, `BRT`, `RRA`, `RRD`,
/// `RRE`, `RRG`, `RRO`, `SRR`, `EAR`), or the response to a query (`ADR`,
/// `ARD`, `DOC`, `DSR`, `EDR`, `ERP`, `MFR`, `ORF`, `OSR`, `QCK`, `RCI`, `RCL`,
/// `RDY`, `RPA`, `RPI`, `RPL`, `RPR`, `RRI`, `RSP`, `RTB`, `SQR`, `TBR`,
/// `VXR`, `VXX`, the pharmacy responses `RAR` `RDR` `RER` `RGR` `ROR`, the
/// patient care responses `PPT` `PPV` `PRR` `PTR`). HL7 never acknowledges one
/// in original mode: an ACK of an ACK invites two engines to answer each other
/// for ever, and a response is itself the answer to its query (whose sender
/// does not wait for an ACK of it).
pub fn is_acknowledgement(header: &Header) -> bool {
    const ANSWERS: &[&str] = &[
        "ACK", "MCF", "MFK", "MFD", "ORR", "ORL", "ORG", "ORI", "ORP", "ORS", "ORN", "ORD", "ORB",
        "ORA", "OPR", "BRP", "BRT", "RRA", "RRD", "RRE", "RRG", "RRO", "SRR", "EAR", "ADR", "ARD",
        "DOC", "DSR", "EDR", "ERP", "MFR", "ORF", "OSR", "QCK", "RCI", "RCL", "RDY", "RPA", "RPI",
        "RPL", "RPR", "RRI", "RSP", "RTB", "SQR", "TBR", "VXR", "VXX", "RAR", "RDR", "RER", "RGR",
        "ROR", "PPT", "PPV", "PRR", "PTR",
    ];
    let code = header.message_code.trim();
    ANSWERS.iter().any(|c| code.eq_ignore_ascii_case(c))
}

fn is_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 12
        && v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// "2.5.1" → (2, 5, 1); missing parts are 0.
fn version_number(v: &str) -> (u32, u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        parts.next().unwrap_or(2),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// Why [`assess`] refused a message, and how to address the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// AR (no usable MSH, undecodable bytes, broken structure, a required
    /// header field empty).
    pub code: AckCode,
    /// The header, when one could be read, so the ACK can be addressed.
    pub header: Option<Header>,
    /// What goes into the ERR segment.
    pub error: AckError,
}

/// The listener's gate: decode, parse, and check what intake needs (MSH-9.1
/// and MSH-10 present). A batch (FHS/BHS) is refused here: split it first.
// The Err side is large (a Header), but rejections are the rare path and the
// shape is the API the listener codes against.
#[allow(clippy::result_large_err)]
pub fn assess(raw: &[u8]) -> Result<Header, Rejection> {
    match fast_header(raw) {
        Some(header) => refuse_frame_byte(raw, check_required(header)),
        None => assess_full(raw),
    }
}

/// A message otherwise taken that holds a 0x1C (MLLP's end block, never HL7
/// data: the message was cut or corrupted on the way; `mllp::codec` keeps such
/// a frame whole) is refused with AR, its header kept for the answer.
#[allow(clippy::result_large_err)]
fn refuse_frame_byte(raw: &[u8], assessed: Result<Header, Rejection>) -> Result<Header, Rejection> {
    // (in UTF-16, a 0x1C is half of a character: `М` is `1C 04`; such a
    // message never comes framed, `refuse_utf16_over_mllp`)
    if is_utf16(raw) {
        return assessed;
    }
    match (assessed, memchr::memchr(0x1C, raw)) {
        (Ok(header), Some(offset)) => Err(Rejection {
            code: AckCode::AR,
            header: Some(header),
            error: Hl7Error::FrameByte { offset }.ack_error(),
        }),
        (assessed, _) => assessed,
    }
}

/// Whether `raw` is UTF-16, by its byte order mark or its first segment's
/// name ([`super::charset::utf16_order`]).
pub fn is_utf16(raw: &[u8]) -> bool {
    super::charset::utf16_order(raw).is_some()
}

/// The MLLP listener's refusal of a UTF-16 message (AR, ERR 203 at MSH-18),
/// its header read for the answer: a frame's end block can be inside its
/// bytes (U+0D1C is `1C 0D` in UTF-16LE), so what a frame of it holds may be
/// a message cut short, and acknowledging it could lose the rest. MLLP
/// (Release 2) supports single-byte encodings and UTF-8; the sender is told
/// to send UTF-8 (the ACK goes back in UTF-16 so it can read it).
#[allow(clippy::result_large_err)]
pub fn refuse_utf16_over_mllp(
    raw: &[u8],
    assessed: Result<Header, Rejection>,
) -> Result<Header, Rejection> {
    if !is_utf16(raw) {
        return assessed;
    }
    let header = match assessed {
        Ok(header) => Some(header),
        Err(rejection) => rejection.header,
    };
    Err(Rejection {
        code: AckCode::AR,
        header,
        error: Hl7Error::Utf16OverMllp.ack_error(),
    })
}

/// [`assess`] by decoding and parsing the whole message: the path for
/// anything the structural pass does not vouch for, and the reference the
/// fast path is tested against.
#[allow(clippy::result_large_err)]
pub(super) fn assess_full(raw: &[u8]) -> Result<Header, Rejection> {
    let reject = |code, header, error: Hl7Error| Rejection {
        code,
        header,
        error: error.ack_error(),
    };
    let text = match decode(raw) {
        Ok(text) => text,
        Err(err) => {
            let lossy = String::from_utf8_lossy(raw);
            return Err(reject(AckCode::AR, salvage_header(&lossy), err));
        }
    };
    let message = match Message::parse(&text) {
        Ok(message) => message,
        Err(err) => return Err(reject(AckCode::AR, salvage_header(&text), err)),
    };
    let header = match message.header() {
        Ok(header) => header,
        Err(err) => return Err(reject(AckCode::AR, None, err)),
    };
    refuse_frame_byte(raw, check_required(header))
}

/// The header of a structurally clean message from its MSH line alone (see
/// [`super::scan`]); `None` sends the message down the full path.
fn fast_header(raw: &[u8]) -> Option<Header> {
    let line = clean_msh_line(raw)?;
    Message::parse(line).and_then(|m| m.header()).ok()
}

/// MSH-12, when given, must be an HL7 v2 version id (an AR, HL7's error 203,
/// with the header for the ACK): a header whose fields are shifted or garbled
/// (segments run together, a frame restarted) shows there first. Then MSH-9,
/// MSH-10 and MSH-12 must not be empty (error 101): an AR too, as HL7 (v2.5
/// §2.9.2.1) has the protocol layer answer a failed header edit; an AE would
/// tell a sender that retries on AE to send again a message that can never be
/// taken. MSH-7, when given, must be an HL7 timestamp (error 102, data type):
/// the record orders a patient's events by it when there is no EVN-2, and a
/// message of no readable time would be ordered by guess. (An empty MSH-7 is
/// taken, as many test tools and some old senders leave it out; its events
/// are ordered by EVN-2, else as they arrive.)
#[allow(clippy::result_large_err)]
fn check_required(header: Header) -> Result<Header, Rejection> {
    if !is_absent(&header.version) && !is_v2_version(&header.version) {
        let error = Hl7Error::UnsupportedVersion {
            value: super::error::snippet(&header.version, 40),
        };
        return Err(Rejection {
            code: AckCode::AR,
            header: Some(header),
            error: error.ack_error(),
        });
    }
    let missing = if is_absent(&header.message_code) {
        Some((9, "message type"))
    } else if is_absent(&header.control_id) {
        Some((10, "message control id"))
    } else if is_absent(&header.version) {
        Some((12, "version id"))
    } else {
        None
    };
    let time = &header.timestamp;
    if missing.is_none()
        && !is_absent(time)
        && crate::mapping::transform::hl7_datetime(time, &jiff::tz::TimeZone::UTC).is_err()
    {
        let error = Hl7Error::BadMessageTime {
            value: super::error::snippet(time, 40),
        };
        return Err(Rejection {
            code: AckCode::AR,
            header: Some(header),
            error: error.ack_error(),
        });
    }
    match missing {
        Some((field, name)) => Err(Rejection {
            code: AckCode::AR,
            header: Some(header),
            error: Hl7Error::EmptyField {
                segment: "MSH",
                field,
                name,
            }
            .ack_error(),
        }),
        None => Ok(header),
    }
}

/// A required header value that is not there: empty, blank, or HL7's explicit
/// null `""` (as the listener judges MSH-9 and MSH-10).
pub fn is_absent(value: &str) -> bool {
    matches!(value.trim(), "" | "\"\"")
}

/// The header of the MSH line alone, for addressing a rejection of a message
/// whose later segments (or bytes) are broken.
fn salvage_header(text: &str) -> Option<Header> {
    let text = text.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    let line = &text[..text.find(['\r', '\n']).unwrap_or(text.len())];
    Message::parse(line)
        .and_then(|m| m.header())
        .ok()
        .or_else(|| fields_by_position(line))
}

/// The header's addressing fields read by position alone, when the MSH does
/// not parse (its encoding characters unusable, `MSH|^~\|`) but its field
/// separator does: so the AR names the message it refuses (MSA-2) and is
/// addressed to its sender. Values are taken as written, undecoded (first
/// components); the ACK is written in the default delimiters and escapes
/// what it echoes.
fn fields_by_position(line: &str) -> Option<Header> {
    let sep = line.strip_prefix("MSH")?.chars().next()?;
    if !sep.is_ascii_punctuation() {
        return None;
    }
    // parts[n - 1] is MSH-n (MSH-1 is the separator itself)
    let parts: Vec<&str> = line.split(sep).collect();
    let field = |n: usize| parts.get(n - 1).map_or("", |v| v.trim()).to_string();
    let first = |v: String| {
        v.split(|c: char| c.is_ascii_punctuation() && c != '.' && c != '-' && c != '_')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let control_id = field(10);
    if control_id.is_empty() {
        return None;
    }
    let version = first(field(12));
    Some(Header {
        field_separator: '|',
        encoding_characters: "^~\\&".into(),
        sending_application: first(field(3)),
        sending_facility: first(field(4)),
        receiving_application: first(field(5)),
        receiving_facility: first(field(6)),
        message_code: first(field(9)),
        control_id: control_id.clone(),
        processing_id: first(field(11)),
        version: if is_version(&version) {
            version
        } else {
            String::new()
        },
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: &str = "20240501120001";

    fn header(msh: &str) -> Header {
        Message::parse(msh)
            .and_then(|m| m.header())
            .expect("test MSH parses")
    }

    fn check(original: Option<&str>, code: AckCode, error: Option<AckError>, expected: &[&str]) {
        let h = original.map(header);
        let ack = build_ack(h.as_ref(), code, error.as_ref(), "ACK0001", TS);
        assert_eq!(ack, expected.join("\r") + "\r");
    }

    const V251: &str =
        "MSH|^~\\&|PAS|RAL^1.2.3^ISO|EPR|HUB|20240501120000||ADT^A01^ADT_A01|MSG0001|P|2.5.1";

    /// MSA-2 is the sender's MSH-10 as sent, and MSH-5/6 its MSH-3/4: a
    /// sender matches its ACK byte for byte, delimiters and escapes included.
    #[test]
    fn header_fields_are_echoed_as_sent() {
        for (control_id, sender) in [
            ("A^1", "PAS"),
            ("B&1", "PAS\\T\\X"),
            ("C~1", "PAS^RAL"),
            ("D\\E\\1", "P\\F\\Q"),
        ] {
            let msh = format!(
                "MSH|^~\\&|{sender}|RAL|EPR|HUB|20240501120000||ADT^A01|{control_id}|P|2.4"
            );
            let ack = build_ack(Some(&header(&msh)), AckCode::AA, None, "ACK0001", TS);
            let fields: Vec<&str> = ack.split('\r').next().unwrap().split('|').collect();
            assert_eq!(fields[4], sender, "{ack}");
            assert!(ack.ends_with(&format!("\rMSA|AA|{control_id}\r")), "{ack}");
        }
        // in other delimiters than the ACK's (unusable ones): escaped again
        let h = Header {
            control_id: "A^1".into(),
            as_sent: crate::hl7::message::AsSent {
                control_id: "A^1".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let ack = build_ack(Some(&h), AckCode::AA, None, "ACK0001", TS);
        assert!(ack.ends_with("MSA|AA|A\\S\\1\r"), "{ack}");
    }

    /// An ADT that names no patient (no PID, or no identifier in it) gets AE
    /// at intake; one identified in PID-2 or PID-4 (v2.3), an A20 (a bed, no
    /// patient) and other message types pass.
    #[test]
    fn an_adt_must_name_its_patient() {
        let msh = "MSH|^~\\&|PAS|RAL|EPR|HUB|20240501120000||ADT^A01|C1|P|2.4";
        let check = |rest: &str| {
            let raw = format!("{msh}\r{rest}");
            check_patient_named(header(msh), raw.as_bytes()).map_err(|r| (r.code, r.error.code))
        };
        assert_eq!(check("EVN|A01\rPV1|1|I").err(), Some((AckCode::AE, "100")));
        assert_eq!(
            check("PID|1||^^^RAL^MR~\"\"\rPV1|1|I").err(),
            Some((AckCode::AE, "101"))
        );
        assert!(check("PID|1||RAL1^^^RAL^MR\rPV1|1|I").is_ok());
        assert!(check("PID|1|9434765919^^^NHS\rPV1|1|I").is_ok());
        // an untagged number in PID-2 keys no patient (the mappings read PID-2
        // only when tagged); nor does a spaced placeholder in PID-3
        assert_eq!(
            check("PID|1|9434765919\rPV1|1|I").err(),
            Some((AckCode::AE, "101"))
        );
        assert_eq!(
            check("PID|1||999 999 9999^^^NHS^NH").err(),
            Some((AckCode::AE, "101"))
        );
        assert!(check("PID|1||~RAL1^^^RAL^MR").is_ok());
        // a v2.3 local id in PID-2 keys no patient; a placeholder neither
        assert_eq!(
            check("PID|1|LOCAL123\rPV1|1|I").err(),
            Some((AckCode::AE, "101"))
        );
        assert_eq!(
            check("PID|1||0000000000^^^NHS^NH").err(),
            Some((AckCode::AE, "101"))
        );
        // and the sender is told which: empty, or placeholders alone
        let text = |rest: &str| {
            let raw = format!("{msh}\r{rest}");
            check_patient_named(header(msh), raw.as_bytes())
                .unwrap_err()
                .error
                .text
        };
        assert_eq!(
            text("PID|1||0000000000^^^T^MR~999 999 9999^^^NHS^NH"),
            "PID-3 (patient identifier list) holds only a placeholder (one digit ten times, such as `0000000000`), not an identifier of a patient"
        );
        assert_eq!(
            text("PID|1||^^^RAL^MR"),
            "PID-3 (patient identifier list) is empty"
        );
        assert!(check(&format!("PID|1{}9434765919", "|".repeat(18))).is_ok());
        let a20 = "MSH|^~\\&|PAS|RAL|EPR|HUB|20240501120000||ADT^A20|C1|P|2.4";
        assert!(check_patient_named(header(a20), format!("{a20}\rNPU|1").as_bytes()).is_ok());
        let oru = "MSH|^~\\&|LAB|RAL|EPR|HUB|20240501120000||ORU^R01|C1|P|2.4";
        let err = check_patient_named(header(oru), format!("{oru}\rOBR|1").as_bytes()).unwrap_err();
        assert_eq!((err.code, err.error.code), (AckCode::AE, "100"));
        let mdm = "MSH|^~\\&|EPR|RAL|EPR|HUB|20240501120000||MDM^T02|C1|P|2.4";
        assert!(check_patient_named(header(mdm), format!("{mdm}\rTXA|1").as_bytes()).is_ok());
        // one patient per message: a second PID is refused, at the second PID
        let err = check_patient_named(
            header(oru),
            format!("{oru}\rPID|1||A1^^^RAL^MR\rOBR|1\rPID|2||B2^^^RAL^MR\rOBR|1").as_bytes(),
        )
        .unwrap_err();
        assert_eq!((err.code, err.error.code), (AckCode::AE, "100"));
        assert_eq!(
            (err.error.segment.as_deref(), err.error.sequence),
            (Some("PID"), Some(2))
        );
        assert!(
            err.error.text.contains("has 2 PID segments"),
            "{}",
            err.error.text
        );
        assert_eq!(
            check("PID|1||RAL1^^^RAL^MR\rPV1|1|I\rPID|2||RAL2^^^RAL^MR").err(),
            Some((AckCode::AE, "100"))
        );
        // but a link (A24) names two patients, as merges do
        let a24 = "MSH|^~\\&|PAS|RAL|EPR|HUB|20240501120000||ADT^A24|C1|P|2.4";
        assert!(check_patient_named(
            header(a24),
            format!("{a24}\rPID|1||A1^^^RAL^MR\rPID|2||B2^^^RAL^MR").as_bytes()
        )
        .is_ok());
        // a merge must name the record it retires: an MRG with an identifier in MRG-1
        let a40 = "MSH|^~\\&|PAS|RAL|EPR|HUB|20240501120000||ADT^A40|C1|P|2.4";
        let merge = |rest: &str| {
            check_patient_named(
                header(a40),
                format!("{a40}\rPID|1||RAL1^^^RAL^MR\r{rest}").as_bytes(),
            )
            .map_err(|e| (e.code, e.error.code, e.error.field))
        };
        assert!(merge("MRG|RAL2^^^RAL^MR").is_ok());
        assert!(merge("MRG|\"\"~RAL2^^^RAL^MR").is_ok());
        assert_eq!(merge("PV1|1|I").err(), Some((AckCode::AE, "100", None)));
        assert_eq!(merge("MRG|").err(), Some((AckCode::AE, "101", Some(1))));
        assert_eq!(
            merge("MRG|^^^RAL^MR").err(),
            Some((AckCode::AE, "101", Some(1)))
        );
        assert_eq!(
            merge("MRG|0000000000").err(),
            Some((AckCode::AE, "101", Some(1)))
        );
        // two merges in one message: each PID has its own MRG
        assert!(merge("MRG|RAL2^^^RAL^MR\rPID|1||RAL3^^^RAL^MR\rMRG|RAL4^^^RAL^MR").is_ok());
        assert_eq!(
            merge("MRG|RAL2^^^RAL^MR\rPID|1||RAL3^^^RAL^MR").err(),
            Some((AckCode::AE, "101", Some(1)))
        );
        assert_eq!(
            merge("MRG|RAL2^^^RAL^MR\rPID|1||RAL3^^^RAL^MR\rMRG|").err(),
            Some((AckCode::AE, "101", Some(1)))
        );
    }

    #[test]
    fn an_ack_shown_without_the_message_quotes_none_of_it() {
        let ack = "MSH|^~\\&|JUNCTION|LCR|PAS|RAL|20240501||ACK|A1|P|2.4\rMSA|AR|C1|segment 6: found 'CRP'\rERR|^^^100&found 'CRP'&HL70357";
        assert_eq!(
            ack_unquoted(ack),
            "MSH|^~\\&|JUNCTION|LCR|PAS|RAL|20240501||ACK|A1|P|2.4\rMSA|AR|C1|segment 6: found '…'\rERR|^^^100&found '…'&HL70357"
        );
    }

    /// A message whose MSH-2 cannot be used is refused with an AR that still
    /// names it (MSA-2) and its sender, read by position.
    #[test]
    fn an_unusable_msh_2_is_refused_naming_the_message() {
        let raw = b"MSH|^~\\|PAS|RAL01|JUNCTION|LCR|20261124||ADT^A01|S16-E03|P|2.4\rPID|1||X";
        let rejection = assess(raw).unwrap_err();
        assert_eq!(rejection.code, AckCode::AR);
        let ack = build_ack(
            rejection.header.as_ref(),
            rejection.code,
            Some(&rejection.error),
            "A1",
            TS,
        );
        assert!(
            ack.starts_with("MSH|^~\\&|JUNCTION|LCR|PAS|RAL01|"),
            "{ack}"
        );
        assert!(ack.contains("|P|2.4\rMSA|AR|S16-E03"), "{ack}");
    }

    #[test]
    fn versions_and_processing_ids_are_checked() {
        for good in ["2.3", "2.3.1", "2.5.1", "2.8.2", "2.0D", "2.9", "2.4.0"] {
            assert!(is_v2_version(good), "{good}");
        }
        for bad in [
            "", "9.9", "3.0", "LCR", "2.", "2.x", "2.5 1", "2.10", "2.05", "2.99", "2.5.1.1",
            "2.5.",
        ] {
            assert!(!is_v2_version(bad), "{bad}");
        }
        let msh = |pid: &str, ver: &str| {
            format!("MSH|^~\\&|PAS|RAL|EPR|HUB|20240501120000||ADT^A01|M1|{pid}|{ver}\rEVN|A01\r")
        };
        let rejected = assess(msh("P", "LCR").as_bytes()).unwrap_err();
        assert_eq!((rejected.code, rejected.error.code), (AckCode::AR, "203"));
        assert_eq!(rejected.header.unwrap().control_id, "M1");
        // blanks and a `V` are how senders write it, not another version
        assert_eq!(
            assess(msh("P", " V2.4  ").as_bytes()).unwrap().version,
            "2.4"
        );
        // an empty MSH-12 (required in every version) is refused: 101 at MSH-12
        for empty in ["", "\"\"", " "] {
            let refused = assess(msh("P", empty).as_bytes()).unwrap_err();
            assert_eq!((refused.code, refused.error.code), (AckCode::AR, "101"));
            assert_eq!(refused.error.field, Some(12), "{empty:?}");
        }
        // MSH-7 when given must be a timestamp (102 at MSH-7); any precision
        // HL7 allows, and an empty one, is taken
        let at = |time: &str| msh("P", "2.4").replace("20240501120000", time);
        for bad in ["notadate", "20241340", "2024050112000", "20240501120000+01"] {
            let refused = assess(at(bad).as_bytes()).unwrap_err();
            assert_eq!(
                (refused.code, refused.error.code),
                (AckCode::AR, "102"),
                "{bad}"
            );
            assert_eq!(refused.error.field, Some(7), "{bad}");
            assert!(refused.error.text.contains(bad), "{}", refused.error.text);
        }
        for good in [
            "",
            "2024",
            "202405",
            "2024050112",
            "20240501120000.1234+0100",
            "20240501120000^S",
        ] {
            assert!(assess(at(good).as_bytes()).is_ok(), "{good}");
        }
        let only_p = ["P".to_string()];
        let t = assess(msh("T", "2.4").as_bytes()).unwrap();
        let refused = check_processing_id(t, &only_p).unwrap_err();
        assert_eq!((refused.code, refused.error.code), (AckCode::AR, "202"));
        assert!(refused.error.text.contains("'T'"), "{}", refused.error.text);
        let p = assess(msh("P^T", "2.4").as_bytes()).unwrap();
        assert!(check_processing_id(p, &only_p).is_ok());
        // 0x1C inside: refused whole, with the header for the answer
        let fs = msh("P", "2.4").replace("EVN|A01", "EVN|A0\x1c1");
        let refused = assess(fs.as_bytes()).unwrap_err();
        assert_eq!((refused.code, refused.error.code), (AckCode::AR, "102"));
        assert_eq!(refused.header.unwrap().control_id, "M1");
    }
    const V23: &str = "MSH|^~\\&|LIMS|RAL|EPR|HUB|20240501120000||ORU^R01|L77|T|2.3";

    #[test]
    fn a_journal_summary_quotes_header_values_only() {
        let cut = AckError {
            code: "100",
            text: "byte 0: expected 'MSH' at the start of the message, found 'GAR'".into(),
            segment: Some("MSH".into()),
            sequence: Some(1),
            field: None,
            severity: 'E',
        };
        assert_eq!(
            cut.summary(),
            "MSH: byte 0: expected '…' at the start of the message, found '…' (100)"
        );
        let charset = AckError {
            code: "103",
            text: "MSH-18 (character set) 'KLINGON' is not supported".into(),
            segment: Some("MSH".into()),
            sequence: Some(1),
            field: Some(18),
            severity: 'E',
        };
        assert!(charset.summary().contains("'KLINGON'"));
    }

    #[test]
    fn application_ack_asks_for_an_accept_ack_and_no_application_ack() {
        let h = header(&format!("{V251}|||AL|AL"));
        let ack = build_application_ack(&h, AckCode::AA, None, "JA1", TS);
        assert_eq!(
            ack,
            "MSH|^~\\&|EPR|HUB|PAS|RAL^1.2.3^ISO|20240501120001||ACK^A01^ACK|JA1|P|2.5.1|||AL|NE\rMSA|AA|MSG0001\r"
        );
        let error = AckError::new("207", "not processed");
        let ack = build_application_ack(&header(V23), AckCode::AE, Some(&error), "JA2", TS);
        let msh = ack.split('\r').next().unwrap_or_default();
        assert!(msh.ends_with("|ACK^R01|JA2|T|2.3|||AL|NE"), "{msh}");
        assert!(ack.contains("\rMSA|AE|L77|not processed\rERR|"), "{ack}");
        // a sender that fills MSH-18 gets it back, and MSH-15/16 stay in place
        let h = header(&format!("{V251}|||AL|AL|GBR|8859/1"));
        let ack = build_application_ack(&h, AckCode::AA, None, "JA3", TS);
        let msh = ack.split('\r').next().unwrap_or_default();
        let fields: Vec<&str> = msh.split('|').collect();
        assert_eq!((fields[14], fields[15]), ("AL", "NE"), "{msh}");
        assert_eq!(fields.get(17), Some(&"8859/1"), "{msh}");
        assert!(fields.len() <= 18, "nothing after MSH-18: {msh}");
    }

    #[test]
    fn application_ack_follows_msh_16() {
        for (msh16, on_success, on_error) in [
            ("AL", true, true),
            ("al ", true, true),
            ("ER", false, true),
            ("SU", true, false),
            ("NE", false, false),
            ("", false, false),
            ("XX", false, false),
        ] {
            let h = header(&format!("{V251}|||AL|{msh16}"));
            assert_eq!(application_ack_wanted(&h, true), on_success, "{msh16:?}");
            assert_eq!(application_ack_wanted(&h, false), on_error, "{msh16:?}");
        }
        assert!(!application_ack_wanted(&header(V251), false));
    }

    #[test]
    fn accept_v251() {
        check(
            Some(V251),
            AckCode::AA,
            None,
            &[
                "MSH|^~\\&|EPR|HUB|PAS|RAL^1.2.3^ISO|20240501120001||ACK^A01^ACK|ACK0001|P|2.5.1",
                "MSA|AA|MSG0001",
            ],
        );
    }

    #[test]
    fn error_v251_uses_err_2_3_4() {
        let error =
            AckError::new("101", "MSH-10 (message control id) is empty").at("MSH", 1, Some(10));
        check(
            Some(V251),
            AckCode::AE,
            Some(error),
            &[
                "MSH|^~\\&|EPR|HUB|PAS|RAL^1.2.3^ISO|20240501120001||ACK^A01^ACK|ACK0001|P|2.5.1",
                "MSA|AE|MSG0001",
                "ERR||MSH^1^10|101^MSH-10 (message control id) is empty^HL70357|E",
            ],
        );
    }

    #[test]
    fn error_v23_uses_err_1() {
        let error = AckError::new("207", "store & forward failed").at("PID", 1, Some(3));
        check(
            Some(V23),
            AckCode::AR,
            Some(error),
            &[
                "MSH|^~\\&|EPR|HUB|LIMS|RAL|20240501120001||ACK^R01|ACK0001|T|2.3",
                "MSA|AR|L77|store \\T\\ forward failed",
                "ERR|PID^1^3^207&store \\T\\ forward failed&HL70357",
            ],
        );
        check(
            Some(V23),
            AckCode::AE,
            Some(AckError::new("100", "bad")),
            &[
                "MSH|^~\\&|EPR|HUB|LIMS|RAL|20240501120001||ACK^R01|ACK0001|T|2.3",
                "MSA|AE|L77|bad",
                "ERR|^^^100&bad&HL70357",
            ],
        );
    }

    #[test]
    fn no_original() {
        check(
            None,
            AckCode::AR,
            Some(AckError::new("100", "byte 0: expected 'MSH'")),
            &[
                "MSH|^~\\&|||||20240501120001||ACK|ACK0001|P|2.5",
                "MSA|AR|",
                "ERR|||100^byte 0: expected 'MSH'^HL70357|E",
            ],
        );
    }

    #[test]
    fn values_are_escaped_and_separators_kept() {
        check(
            Some("MSH#!*?$#PAS#RAL#####ADT!A01#A|B#P#2.4"),
            AckCode::CA,
            None,
            &[
                "MSH#!*?$###PAS#RAL#20240501120001##ACK!A01!ACK#ACK0001#P#2.4",
                "MSA#CA#A|B",
            ],
        );
        check(
            Some("MSH|^~\\&|A|B|||x||ADT^A01|1\\F\\2|P|garbage"),
            AckCode::AA,
            None,
            &[
                "MSH|^~\\&|||A|B|20240501120001||ACK^A01^ACK|ACK0001|P|2.5",
                "MSA|AA|1\\F\\2",
            ],
        );
    }

    fn check_assess(raw: &[u8], expected: Result<&str, (AckCode, &str, bool)>) {
        match (assess(raw), expected) {
            (Ok(h), Ok(control_id)) => assert_eq!(h.control_id, control_id),
            (Err(r), Err((code, text, has_header))) => {
                assert_eq!(r.code, code, "{r:?}");
                assert_eq!(r.error.text, text);
                assert_eq!(r.header.is_some(), has_header, "{r:?}");
            }
            (got, want) => panic!(
                "{:?}: got {got:?}, want {want:?}",
                String::from_utf8_lossy(raw)
            ),
        }
    }

    #[test]
    fn assess_accepts_good_messages() {
        check_assess(format!("{V251}\rPID|1\r").as_bytes(), Ok("MSG0001"));
        check_assess(format!("{V23}\nPID|1\n\n").as_bytes(), Ok("L77"));
    }

    #[test]
    fn assess_rejections() {
        check_assess(
            b"PID|1||123\r",
            Err((
                AckCode::AR,
                "byte 0: expected 'MSH' at the start of the message, found 'PID'",
                false,
            )),
        );
        check_assess(
            b"",
            Err((
                AckCode::AR,
                "empty message: expected a segment starting with 'MSH'",
                false,
            )),
        );
        check_assess(
            b"MSH|^~\\&|PAS|RAL|||20240501||ADT^A01||P|2.4\rPID|1\r",
            Err((AckCode::AR, "MSH-10 (message control id) is empty", true)),
        );
        check_assess(
            b"MSH|^~\\&|PAS|RAL|||20240501|||X1|P|2.4\rPID|1\r",
            Err((AckCode::AR, "MSH-9 (message type) is empty", true)),
        );
        // blank, or the explicit null, is empty too (it was AA, journaled unrouted)
        for msh in [
            &b"MSH|^~\\&|PAS|RAL|||20240501|| |X1|P|2.4\rPID|1\r"[..],
            b"MSH|^~\\&|PAS|RAL|||20240501||\"\"|X1|P|2.4\rPID|1\r",
        ] {
            check_assess(
                msh,
                Err((AckCode::AR, "MSH-9 (message type) is empty", true)),
            );
        }
        check_assess(
            b"MSH|^~\\&|PAS|RAL|||20240501||ADT^A01|\"\"|P|2.4\rPID|1\r",
            Err((AckCode::AR, "MSH-10 (message control id) is empty", true)),
        );
        check_assess(
            b"\x00\x9f\xff garbage \x0b\x1c",
            Err((
                AckCode::AR,
                "byte 0: expected 'MSH' at the start of the message, found '\u{178}\u{ff} '",
                false,
            )),
        );
        check_assess(
            b"MSH|^~\\&|PAS|RAL|||20240501||ADT^A01|X1|P|2.4\rPIDX|1\r",
            Err((
                AckCode::AR,
                "segment 2 at byte 46: expected the field separator after the segment name, found 'PIDX'",
                true,
            )),
        );
        check_assess(
            b"MSH|^~\\&|PAS|RAL|||20240501||ADT^A01|X1|P|2.4||||||UNICODE UTF-8\rPID|Zo\xeb\r",
            Err((AckCode::AR, "byte 71: invalid UTF-8 byte sequence", true)),
        );
        check_assess(
            b"BHS|^~\\&\rMSH|^~\\&|A\r",
            Err((
                AckCode::AR,
                "byte 0: expected 'MSH' at the start of the message, found 'BHS'",
                false,
            )),
        );
    }

    #[test]
    fn rejection_error_locations() {
        let r = assess(b"MSH|^~\\&|PAS|RAL|||20240501|||X1|P|2.4\r").expect_err("rejected");
        assert_eq!(
            (r.error.code, r.error.segment.as_deref(), r.error.field),
            ("101", Some("MSH"), Some(9))
        );
        let ack = build_ack(r.header.as_ref(), r.code, Some(&r.error), "A1", TS);
        assert_eq!(
            ack,
            "MSH|^~\\&|||PAS|RAL|20240501120001||ACK|A1|P|2.4\rMSA|AR|X1|MSH-9 (message type) is empty\rERR|MSH^1^9^101&MSH-9 (message type) is empty&HL70357\r"
        );
    }
}
