//! Bytes as received → UTF-8 text with segments ending in `'\r'`.
//!
//! # Character set
//! Chosen in this order:
//! 1. A byte-order mark: UTF-8 (`EF BB BF`) or UTF-16 LE/BE. The BOM wins over
//!    MSH-18 (the bytes say what they are) and is stripped.
//! 2. MSH-18 (HL7 table 0211), read from the raw bytes of the first MSH
//!    before anything is decoded; only its first repetition counts.
//!    - absent, empty, `ASCII`, `ISO IR6`: UTF-8 if the bytes are valid UTF-8
//!      (ASCII is a subset), otherwise windows-1252 (senders that say ASCII
//!      or nothing and send Latin-1 / windows-1252 names are common).
//!    - `UNICODE UTF-8`, `UNICODE`, `UTF-8`: UTF-8; invalid bytes are an error.
//!    - `8859/1`, `ISO IR100`: ISO 8859-1, read as windows-1252 (as browsers
//!      read the label: the same but for 0x80-0x9F, which are C1 controls in
//!      8859-1 and `’`, `–`, `€` from Windows senders). `8859/2`..`8859/9`,
//!      `8859/15`: through `encoding_rs`. Exception: when the bytes contain
//!      non-ASCII and are valid UTF-8, they are read as UTF-8 (a sender that
//!      declares Latin-1 but sends UTF-8 is far more likely than Latin-1 text
//!      that happens to form valid multi-byte UTF-8).
//!    - `GB 18030-2000`, `BIG-5`, `KS X 1001`, `ISO IR87`, and any label
//!      `encoding_rs` knows (`windows-1252`, `iso-8859-1`, …).
//!    - anything else: accepted if the bytes are valid UTF-8, otherwise
//!      [`Hl7Error::UnsupportedCharset`].
//!
//! # Segment endings
//! `\r` and `\r\n` end a segment. A lone `\n`:
//! - in a message whose first line (MSH) ends in `\r`, is data (HL7 v2's
//!   segment terminator is the carriage return: report writers and comment
//!   boxes put raw line feeds in text, with lines such as `NAD`, `150` or a
//!   blank one), unless a known segment (an HL7 segment id, or `Z..`) follows
//!   with its field separator (`\nPV1|`: a segment pasted with a line feed),
//!   or only white space follows;
//! - in a message whose lines end in `\n`, ends a segment when what follows
//!   looks like one (three characters `A-Z`/`0-9` followed by the field
//!   separator or a line end) or a blank line; otherwise it is kept as data.
//!
//! Blank and whitespace-only lines (including trailing ones) are dropped,
//! leading whitespace is dropped, a bare segment name such as `PV2` gets its
//! field separator (`PV2|`, which `Message::parse` requires), and every segment,
//! including the last, ends with `'\r'`.
//!
//! Not done here: any parsing or validation of the HL7 structure.

use encoding_rs::Encoding;

use super::error::Hl7Error;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// `raw` without a leading UTF-8 byte-order mark (Windows senders write one;
/// RFC 8259 §8.1 lets a JSON reader ignore it too).
pub fn strip_utf8_bom(raw: &[u8]) -> &[u8] {
    raw.strip_prefix(UTF8_BOM).unwrap_or(raw)
}

/// Decodes `raw` to UTF-8 text and normalises segment endings (see the module doc).
pub fn decode(raw: &[u8]) -> Result<String, Hl7Error> {
    let text = to_utf8(raw)?;
    Ok(normalise(&text))
}

/// Encodes `text` (e.g. an ACK) for a peer whose messages declare `charset`
/// in MSH-18: the inverse of [`decode`] for writing back. UTF-8 for none,
/// ASCII, UNICODE UTF-8 and labels this engine does not know; ISO 8859-1 byte
/// for byte for `8859/1`; otherwise through `encoding_rs`. Characters the
/// target cannot represent become `?` (8859/1) or numeric character
/// references (`encoding_rs`); ACK text is ASCII in practice.
pub fn encode_text(text: &str, charset: Option<&str>) -> Vec<u8> {
    let Some(label) = charset.map(str::trim).filter(|l| !l.is_empty()) else {
        return text.as_bytes().to_vec();
    };
    let key = label.to_ascii_uppercase();
    match key.as_str() {
        "8859/1" | "ISO IR100" | "ISO-8859-1" | "ISO8859-1" | "LATIN1" | "LATIN-1" => text
            .chars()
            .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
            .collect(),
        "ASCII" | "ISO IR6" | "US-ASCII" | "UNICODE UTF-8" | "UNICODE" | "UTF-8" | "UTF8" => {
            text.as_bytes().to_vec()
        }
        _ => match hl7_label(&key).or_else(|| Encoding::for_label(label.as_bytes())) {
            Some(encoding) => encoding.encode(text).0.into_owned(),
            None => text.as_bytes().to_vec(),
        },
    }
}

/// The charset label in MSH-18 of the first MSH in `raw`, trimmed, if present
/// and not empty. Reads raw bytes; no decoding needed since the label is ASCII.
pub fn msh18(raw: &[u8]) -> Option<String> {
    let start = find_msh(raw)?;
    let line = &raw[start..];
    let line = &line[..line
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(line.len())];
    let sep = *line.get(3)?;
    let repetition = line.get(5).copied();
    // parts[0] = "MSH", parts[1] = MSH-2, parts[k] = MSH-(k+1).
    let field = line.split(|&b| b == sep).nth(17)?;
    let field = match repetition {
        Some(r) if r != sep => field.split(|&b| b == r).next().unwrap_or(field),
        _ => field,
    };
    let label = String::from_utf8_lossy(field).trim().to_owned();
    (!label.is_empty()).then_some(label)
}

/// Offset of the first "MSH" at the start of `raw` (after any whitespace or
/// control bytes) or of a line.
fn find_msh(raw: &[u8]) -> Option<usize> {
    let lead = raw
        .iter()
        .take_while(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        .count();
    let mut from = 0;
    while let Some(pos) = raw[from..].windows(3).position(|w| w == b"MSH") {
        let at = from + pos;
        if at == lead || (at > 0 && matches!(raw[at - 1], b'\r' | b'\n')) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// A UTF-16 message's byte order, and whether it starts with a byte order
/// mark (`FF FE`, `FE FF`) or, without one, is told by its first segment's
/// name (`MSH`, `FHS`, `BHS`) written a byte each other (`M 00 S 00 H 00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utf16Order {
    pub little_endian: bool,
    pub bom: bool,
}

/// [`Utf16Order`] of `raw`, when it is UTF-16.
pub fn utf16_order(raw: &[u8]) -> Option<Utf16Order> {
    let order = |little_endian, bom| Some(Utf16Order { little_endian, bom });
    if raw.starts_with(b"\xFF\xFE") {
        return order(true, true);
    }
    if raw.starts_with(b"\xFE\xFF") {
        return order(false, true);
    }
    let head = raw.get(..6)?;
    for name in [b"MSH", b"FHS", b"BHS"] {
        if head.iter().step_by(2).eq(name.iter()) && head.iter().skip(1).step_by(2).all(|&b| b == 0)
        {
            return order(true, false);
        }
        if head.iter().skip(1).step_by(2).eq(name.iter()) && head.iter().step_by(2).all(|&b| b == 0)
        {
            return order(false, false);
        }
    }
    None
}

fn to_utf8(raw: &[u8]) -> Result<String, Hl7Error> {
    if let Some(rest) = raw.strip_prefix(UTF8_BOM) {
        return utf8_strict(rest, "UTF-8", UTF8_BOM.len());
    }
    if let Some(order) = utf16_order(raw) {
        let encoding = if order.little_endian {
            encoding_rs::UTF_16LE
        } else {
            encoding_rs::UTF_16BE
        };
        let skip = if order.bom { 2 } else { 0 };
        return with_encoding(&raw[skip..], encoding, skip);
    }
    let label = msh18(raw);
    let Some(label) = label else {
        return Ok(utf8_or_1252(raw));
    };
    let key = label.to_ascii_uppercase();
    match key.as_str() {
        "ASCII" | "ISO IR6" | "US-ASCII" => Ok(utf8_or_1252(raw)),
        "UNICODE UTF-8" | "UNICODE" | "UTF-8" | "UTF8" => utf8_strict(raw, "UTF-8", 0),
        "8859/1" | "ISO IR100" | "ISO-8859-1" | "ISO8859-1" | "LATIN1" | "LATIN-1" => {
            Ok(match utf8_with_non_ascii(raw) {
                Some(text) => text,
                // read as windows-1252, as the WHATWG Encoding standard reads the
                // label ISO-8859-1: the same for every byte but 0x80-0x9F, which in
                // 8859-1 are invisible C1 controls no one means, and which Windows
                // front-ends send for ’ – € (an `O’BRIEN` must not become
                // `O\u{92}BRIEN`, which no search finds)
                None => encoding_rs::WINDOWS_1252
                    .decode_without_bom_handling(raw)
                    .0
                    .into_owned(),
            })
        }
        _ => {
            let encoding = hl7_label(&key).or_else(|| Encoding::for_label(label.as_bytes()));
            match encoding {
                Some(encoding) if encoding == encoding_rs::UTF_8 => utf8_strict(raw, "UTF-8", 0),
                Some(encoding) => match utf8_with_non_ascii(raw) {
                    Some(text) => Ok(text),
                    None => with_encoding(raw, encoding, 0),
                },
                None => match std::str::from_utf8(raw) {
                    Ok(text) => Ok(text.to_owned()),
                    Err(_) => Err(Hl7Error::UnsupportedCharset { value: label }),
                },
            }
        }
    }
}

/// The character set a message's `\Xhh\` escapes are read in (when not
/// UTF-8) by its MSH-18 `label`: what [`decode`] reads its bytes in (8859/1
/// as windows-1252); `None` for none, ASCII, UTF-8 and UTF-16 (and labels
/// not known), read as windows-1252.
pub(crate) fn hex_charset(label: &str) -> Option<&'static Encoding> {
    let label = label.trim();
    // (the labels senders write most, known without an allocation)
    let utf8 = ["UNICODE UTF-8", "UNICODE", "UTF-8", "ASCII"];
    if label.is_empty() || utf8.iter().any(|u| u.eq_ignore_ascii_case(label)) {
        return None;
    }
    if label.eq_ignore_ascii_case("8859/1") {
        return Some(encoding_rs::WINDOWS_1252);
    }
    let key = label.to_ascii_uppercase();
    match key.as_str() {
        "ASCII" | "ISO IR6" | "US-ASCII" | "UNICODE UTF-8" | "UNICODE" | "UTF-8" | "UTF8" => None,
        "8859/1" | "ISO IR100" => Some(encoding_rs::WINDOWS_1252),
        _ => hl7_label(&key)
            .or_else(|| Encoding::for_label(label.as_bytes()))
            .filter(|e| {
                ![
                    encoding_rs::UTF_8,
                    encoding_rs::UTF_16LE,
                    encoding_rs::UTF_16BE,
                ]
                .contains(e)
            }),
    }
}

/// HL7 table 0211 names that are not WHATWG labels.
fn hl7_label(key: &str) -> Option<&'static Encoding> {
    if let Some(n) = key.strip_prefix("8859/") {
        return Encoding::for_label(format!("iso-8859-{n}").as_bytes());
    }
    Some(match key {
        "GB 18030-2000" => encoding_rs::GB18030,
        "BIG-5" => encoding_rs::BIG5,
        "KS X 1001" => encoding_rs::EUC_KR,
        "ISO IR87" | "ISO 2022-1994" => encoding_rs::ISO_2022_JP,
        "ISO IR13" => encoding_rs::SHIFT_JIS,
        _ => return None,
    })
}

fn utf8_strict(raw: &[u8], charset: &str, base: usize) -> Result<String, Hl7Error> {
    match std::str::from_utf8(raw) {
        Ok(text) => Ok(text.to_owned()),
        Err(err) => Err(Hl7Error::InvalidBytes {
            offset: base + err.valid_up_to(),
            charset: charset.to_owned(),
        }),
    }
}

fn utf8_or_1252(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(text) => text.to_owned(),
        Err(_) => encoding_rs::WINDOWS_1252
            .decode_without_bom_handling(raw)
            .0
            .into_owned(),
    }
}

/// `Some` when `raw` is valid UTF-8 that is not plain ASCII.
fn utf8_with_non_ascii(raw: &[u8]) -> Option<String> {
    if raw.is_ascii() {
        return None;
    }
    std::str::from_utf8(raw).ok().map(str::to_owned)
}

fn with_encoding(raw: &[u8], encoding: &'static Encoding, base: usize) -> Result<String, Hl7Error> {
    match encoding.decode_without_bom_handling_and_without_replacement(raw) {
        Some(text) => Ok(text.into_owned()),
        None => Err(Hl7Error::InvalidBytes {
            offset: base + decoder_error_offset(encoding, raw).unwrap_or(0),
            charset: encoding.name().to_owned(),
        }),
    }
}

/// Byte offset of the first malformed sequence for `encoding`.
fn decoder_error_offset(encoding: &'static Encoding, raw: &[u8]) -> Option<usize> {
    let mut decoder = encoding.new_decoder_without_bom_handling();
    let mut out = String::with_capacity(
        decoder
            .max_utf8_buffer_length_without_replacement(raw.len())
            .unwrap_or(raw.len() * 4),
    );
    let mut read_total = 0;
    loop {
        let (result, read) =
            decoder.decode_to_string_without_replacement(&raw[read_total..], &mut out, true);
        read_total += read;
        match result {
            encoding_rs::DecoderResult::InputEmpty => return None,
            encoding_rs::DecoderResult::Malformed(bad, _) => {
                return Some(read_total.saturating_sub(usize::from(bad)));
            }
            encoding_rs::DecoderResult::OutputFull => {
                out.reserve(raw.len().max(16));
            }
        }
    }
}

/// Whitespace and control characters only (e.g. a DOS end-of-file `0x1A`, NULs).
fn is_blank(line: &str) -> bool {
    line.chars().all(|c| c.is_whitespace() || c.is_control())
}

/// Normalises segment endings to `'\r'` (see the module doc).
fn normalise(text: &str) -> String {
    let text =
        text.trim_start_matches(|c: char| c.is_whitespace() || c.is_control() || c == '\u{feff}');
    let bytes = text.as_bytes();
    let sep = match bytes.get(3) {
        Some(&b) if b.is_ascii_punctuation() => b,
        _ => b'|',
    };
    let cr = ends_in_cr(bytes);
    let mut out = String::with_capacity(text.len() + 2);
    let mut line_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\r' || (b == b'\n' && ends_segment(bytes, i + 1, sep, cr)) {
            push_line(&mut out, &text[line_start..i], sep);
            i += 1;
            if b == b'\r' && bytes.get(i) == Some(&b'\n') {
                i += 1;
            }
            line_start = i;
        } else {
            i += 1;
        }
    }
    push_line(&mut out, &text[line_start..], sep);
    out
}

/// Whether a message ends its segments in `'\r'`: its first line does.
pub(crate) fn ends_in_cr(bytes: &[u8]) -> bool {
    bytes.iter().find(|&&b| b == b'\r' || b == b'\n') == Some(&b'\r')
}

/// HL7 v2 segment ids (v2.1 to v2.9), for telling a segment pasted after a
/// lone line feed from a line of text in a message whose segments end in CR.
const SEGMENT_IDS: &[&[u8; 3]] = &[
    b"ABS", b"ACC", b"ADD", b"ADJ", b"AFF", b"AIG", b"AIL", b"AIP", b"AIS", b"AL1", b"APR", b"ARQ",
    b"ARV", b"AUT", b"BHS", b"BLC", b"BLG", b"BPO", b"BPX", b"BTS", b"BTX", b"BUI", b"CDM", b"CDO",
    b"CER", b"CM0", b"CM1", b"CM2", b"CNS", b"CON", b"CSP", b"CSR", b"CSS", b"CTD", b"CTI", b"DB1",
    b"DG1", b"DMI", b"DON", b"DPS", b"DRG", b"DSC", b"DSP", b"ECD", b"ECR", b"EDU", b"EQP", b"EQU",
    b"ERR", b"EVN", b"FAC", b"FHS", b"FT1", b"FTS", b"GOL", b"GP1", b"GP2", b"GT1", b"IAM", b"IAR",
    b"IIM", b"ILT", b"IN1", b"IN2", b"IN3", b"INV", b"IPC", b"IPR", b"ISD", b"ITM", b"IVC", b"IVT",
    b"LAN", b"LCC", b"LCH", b"LDP", b"LOC", b"LRL", b"MCP", b"MFA", b"MFE", b"MFI", b"MRG", b"MSA",
    b"MSH", b"NCK", b"NDS", b"NK1", b"NPU", b"NSC", b"NST", b"NTE", b"OBR", b"OBX", b"ODS", b"ODT",
    b"OM1", b"OM2", b"OM3", b"OM4", b"OM5", b"OM6", b"OM7", b"ORC", b"ORG", b"OVR", b"PAC", b"PCE",
    b"PCR", b"PD1", b"PDA", b"PDC", b"PEO", b"PES", b"PID", b"PKG", b"PMT", b"PR1", b"PRA", b"PRB",
    b"PRC", b"PRD", b"PRT", b"PSG", b"PSH", b"PTH", b"PV1", b"PV2", b"PYE", b"QAK", b"QID", b"QPD",
    b"QRD", b"QRF", b"QRI", b"RCP", b"RDF", b"RDT", b"REL", b"RF1", b"RFI", b"RGS", b"RMI", b"ROL",
    b"RQ1", b"RQD", b"RXA", b"RXC", b"RXD", b"RXE", b"RXG", b"RXO", b"RXR", b"RXV", b"SAC", b"SCD",
    b"SCH", b"SCP", b"SDD", b"SFT", b"SGH", b"SGT", b"SHP", b"SID", b"SLT", b"SPM", b"STF", b"STZ",
    b"TCC", b"TCD", b"TQ1", b"TQ2", b"TXA", b"UAC", b"UB1", b"UB2", b"URD", b"URS", b"VAR", b"VND",
];

/// A segment id: one of [`SEGMENT_IDS`], or `Z` and two letters or digits.
pub(crate) fn is_segment_id(name: &[u8]) -> bool {
    let alnum = |b: &u8| b.is_ascii_uppercase() || b.is_ascii_digit();
    match name {
        [b'Z', rest @ ..] if rest.len() == 2 => rest.iter().all(alnum),
        [a, b, c] => SEGMENT_IDS.contains(&&[*a, *b, *c]),
        _ => false,
    }
}

/// Whether a `'\n'` followed by `bytes[at..]` ends a segment, in a message
/// whose segments end in CR (`cr`, [`ends_in_cr`]) or in LF (see the module
/// doc). Text from [`decode`] never holds such a `'\n'`.
pub(crate) fn ends_segment(bytes: &[u8], at: usize, sep: u8, cr: bool) -> bool {
    let rest = &bytes[at..];
    if cr {
        return rest
            .iter()
            .all(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            || (rest.len() >= 4 && rest[3] == sep && is_segment_id(&rest[..3]));
    }
    // Blank line or end of text.
    let line_end = rest
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(rest.len());
    if rest[..line_end]
        .iter()
        .all(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return true;
    }
    rest.len() >= 3
        && rest[..3]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && matches!(rest.get(3), None | Some(b'\r') | Some(b'\n'))
        || (rest.len() >= 4
            && rest[..3]
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && rest[3] == sep)
}

fn push_line(out: &mut String, line: &str, sep: u8) {
    if is_blank(line) {
        return;
    }
    out.push_str(line);
    if line.len() == 3
        && line
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        out.push(char::from(sep));
    }
    out.push('\r');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &[u8], expected: Result<&str, Hl7Error>) {
        assert_eq!(
            decode(input).as_deref().map_err(Clone::clone),
            expected,
            "decode {:?}",
            String::from_utf8_lossy(input)
        );
    }

    fn latin1(s: &str) -> Vec<u8> {
        s.chars()
            .map(|c| u8::try_from(u32::from(c)).expect("latin-1 test text"))
            .collect()
    }

    const MSH_8859: &str = "MSH|^~\\&|PAS|RAL|EPR|RAL|20240101||ADT^A01|1|P|2.4||||||8859/1\r";

    #[test]
    fn segment_endings() {
        check(b"MSH|^~\\&|A\rPID|1", Ok("MSH|^~\\&|A\rPID|1\r"));
        check(b"MSH|^~\\&|A\nPID|1\n", Ok("MSH|^~\\&|A\rPID|1\r"));
        check(b"MSH|^~\\&|A\r\nPID|1\r\n", Ok("MSH|^~\\&|A\rPID|1\r"));
        check(
            b"MSH|^~\\&|A\r\nPID|1\r\n\r\n\n  \n",
            Ok("MSH|^~\\&|A\rPID|1\r"),
        );
        check(b"\r\n  MSH|^~\\&|A\r\rPID|1", Ok("MSH|^~\\&|A\rPID|1\r"));
        check(
            b"\0MSH|^~\\&|A\r\nPID|1\r\n\x1a",
            Ok("MSH|^~\\&|A\rPID|1\r"),
        );
    }

    #[test]
    fn line_feed_inside_text_is_data() {
        check(
            b"MSH|^~\\&|A\rOBX|1|TX|||first line\nsecond line\rNTE|1",
            Ok("MSH|^~\\&|A\rOBX|1|TX|||first line\nsecond line\rNTE|1\r"),
        );
        // in a message whose segments end in CR, lines that look like segment
        // names, numbers and blank lines are text too (HL7's terminator is CR)
        for text in [
            "Heart size normal.\nConclusion:\nNAD||||||C",
            "Repeat count on citrate:\n150",
            "Tests requested:\nFBC\nCRP\nplease repeat",
            "Para one.\n\nPara two.",
        ] {
            let raw = format!("MSH|^~\\&|A\rOBX|1|TX|||{text}\rNTE|1");
            check(raw.as_bytes(), Ok(&format!("{raw}\r")));
        }
        // but a segment pasted after a lone line feed is one, and a trailing
        // line feed ends the message
        check(
            b"MSH|^~\\&|A\rPID|1\nPV1|1|I\nZPD|x\n",
            Ok("MSH|^~\\&|A\rPID|1\rPV1|1|I\rZPD|x\r"),
        );
        // a message whose lines end in LF still reads a short line as a segment
        check(
            b"MSH|^~\\&|A\nPID|1\nPV2\n",
            Ok("MSH|^~\\&|A\rPID|1\rPV2|\r"),
        );
    }

    #[test]
    fn bare_segment_name_gets_separator() {
        check(b"MSH|^~\\&|A\rPV2\rZPI|1", Ok("MSH|^~\\&|A\rPV2|\rZPI|1\r"));
        check(b"MSH#^~\\&#A\nPV2\n", Ok("MSH#^~\\&#A\rPV2#\r"));
    }

    #[test]
    fn byte_order_marks() {
        check(b"\xEF\xBB\xBFMSH|^~\\&|A\r", Ok("MSH|^~\\&|A\r"));
        let mut utf16 = vec![0xFF, 0xFE];
        for unit in "MSH|^~\\&|Zoë\r".encode_utf16() {
            utf16.extend_from_slice(&unit.to_le_bytes());
        }
        check(&utf16, Ok("MSH|^~\\&|Zoë\r"));
        // without a byte order mark, either order, told by `MSH`
        check(&utf16[2..], Ok("MSH|^~\\&|Zoë\r"));
        let big: Vec<u8> = "MSH|^~\\&|Zoë\r"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        check(&big, Ok("MSH|^~\\&|Zoë\r"));
        check(
            b"\xEF\xBB\xBFMSH|^~\\&|\xFF\r",
            Err(Hl7Error::InvalidBytes {
                offset: 12,
                charset: "UTF-8".into(),
            }),
        );
    }

    #[test]
    fn latin1_names() {
        let raw = latin1(&format!("{MSH_8859}PID|||1||Ó Súilleabháin^Zoë\r"));
        check(
            &raw,
            Ok(&format!("{MSH_8859}PID|||1||Ó Súilleabháin^Zoë\r")),
        );
        // Declared 8859/1 but actually UTF-8: read as UTF-8.
        let raw = format!("{MSH_8859}PID|||1||Zoë\r");
        check(raw.as_bytes(), Ok(&raw));
        // Declared 8859/1, written by Windows: 0x92 is ’, not the control U+0092
        let mut raw = MSH_8859.as_bytes().to_vec();
        raw.extend_from_slice(b"PID|||1||O\x92BRIEN^S\xE9AN\r");
        check(&raw, Ok(&format!("{MSH_8859}PID|||1||O’BRIEN^SéAN\r")));
    }

    #[test]
    fn undeclared_falls_back_to_windows_1252() {
        check(
            b"MSH|^~\\&|A\rPID|||1||Zo\xEB \x80\r",
            Ok("MSH|^~\\&|A\rPID|||1||Zoë €\r"),
        );
        check(
            b"MSH|^~\\&|A|||||||||||||||ASCII\rPID|||1||Zo\xEB\r",
            Ok("MSH|^~\\&|A|||||||||||||||ASCII\rPID|||1||Zoë\r"),
        );
    }

    #[test]
    fn declared_utf8_must_be_utf8() {
        let msh = "MSH|^~\\&|A|||||||||||||||UNICODE UTF-8\r";
        check(
            format!("{msh}PID|Zoë\r").as_bytes(),
            Ok(&format!("{msh}PID|Zoë\r")),
        );
        let mut raw = format!("{msh}PID|Zo").into_bytes();
        raw.push(0xEB);
        check(
            &raw,
            Err(Hl7Error::InvalidBytes {
                offset: msh.len() + 6,
                charset: "UTF-8".into(),
            }),
        );
    }

    #[test]
    fn other_charsets() {
        let msh = "MSH|^~\\&|A|||||||||||||||8859/15~UNICODE UTF-8\r";
        let mut raw = format!("{msh}PID|").into_bytes();
        raw.push(0xA4); // euro sign in 8859-15
        check(&raw, Ok(&format!("{msh}PID|€\r")));
        let msh = "MSH|^~\\&|A|||||||||||||||KLINGON\r";
        check(
            format!("{msh}PID|x").as_bytes(),
            Ok(&format!("{msh}PID|x\r")),
        );
        check(
            format!("{msh}PID|\u{0}\u{1}").as_bytes(),
            Ok(&format!("{msh}PID|\u{0}\u{1}\r")),
        );
        let mut raw = format!("{msh}PID|").into_bytes();
        raw.push(0xFF);
        check(
            &raw,
            Err(Hl7Error::UnsupportedCharset {
                value: "KLINGON".into(),
            }),
        );
    }

    #[test]
    fn encode_text_for_peer() {
        assert_eq!(encode_text("Zoë €", None), "Zoë €".as_bytes());
        assert_eq!(encode_text("Zoë €", Some("8859/1")), b"Zo\xEB ?");
        assert_eq!(encode_text("Zoë €", Some("8859/15")), b"Zo\xEB \xA4");
        assert_eq!(encode_text("Zoë", Some("UNICODE UTF-8")), "Zoë".as_bytes());
        let text = "MSA|AA|Zoë €";
        for label in ["8859/1", "8859/15", "windows-1252", "UNICODE UTF-8"] {
            let msh = format!("MSH|^~\\&|A|||||||||||||||{label}\r");
            let raw = encode_text(&format!("{msh}{text}"), Some(label));
            let back = decode(&raw).expect("decodes");
            let want = if label == "8859/1" {
                "MSA|AA|Zoë ?"
            } else {
                text
            };
            assert_eq!(back, format!("{msh}{want}\r"), "{label}");
        }
    }

    #[test]
    fn msh18_is_read_from_raw_bytes() {
        assert_eq!(msh18(MSH_8859.as_bytes()), Some("8859/1".into()));
        assert_eq!(msh18(b"MSH|^~\\&|A"), None);
        assert_eq!(
            msh18(b"FHS|^~\\&\rMSH|^~\\&|||||||||||||||| UNICODE UTF-8 ~8859/1\r"),
            Some("UNICODE UTF-8".into())
        );
        assert_eq!(msh18(b"XMSH|^~\\&|||||||||||||||8859/1"), None);
        assert_eq!(
            msh18(format!("\n\x0b{MSH_8859}").as_bytes()),
            Some("8859/1".into())
        );
    }
}
