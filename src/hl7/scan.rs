//! The cheap structural pass behind [`super::assess`]'s fast path.
//!
//! [`clean_msh_line`] decides, in one pass over the raw bytes and without
//! allocating, whether a message is certainly one that the full path
//! ([`super::decode`] then [`super::Message::parse`]) would accept with text
//! byte-identical to the input, and if so returns its MSH line. Only the MSH
//! line then needs parsing.
//!
//! It is conservative: it answers `None` for anything unusual (a BOM or
//! leading whitespace, bytes that are not UTF-8, an MSH-18 other than the
//! ASCII, UTF-8 and ISO 8859-1 labels, a line that is not a 3-character
//! `[A-Z0-9]` segment name followed by the field separator, a bare segment
//! name, a blank-looking line with spaces, a second MSH). The caller then
//! takes the full path, which gives exactly the same answer as before,
//! errors included. It never panics.
//!
//! Why the fast path agrees with the full path on what it accepts:
//! - Charset: for valid UTF-8 with no label or one of the labels above,
//!   `decode` returns the bytes unchanged before normalising endings.
//! - Endings: every `'\r'`, `"\r\n"` and `'\n'` here is followed by an empty
//!   line, the end, or `[A-Z0-9]{3}` plus the field separator, so `decode`
//!   treats each as a segment end and drops the empty lines; the normalised
//!   text holds no `'\n'`.
//! - Segments: `Message::parse` reads a segment as a 3-alphanumeric name, the
//!   field separator, then fields that never fail (everything up to `'\r'`),
//!   so every checked segment is read and the whole text is consumed.

use super::charset::{is_segment_id, msh18};

/// The MSH line (without its ending) when `raw` is structurally clean (see the
/// module doc), else `None`.
pub(crate) fn clean_msh_line(raw: &[u8]) -> Option<&str> {
    if !raw.starts_with(b"MSH") {
        return None;
    }
    let sep = *raw.get(3)?;
    if !sep.is_ascii_punctuation() {
        return None;
    }
    let text = std::str::from_utf8(raw).ok()?;
    if !charset_keeps_utf8(raw) {
        return None;
    }
    let bytes = text.as_bytes();
    let msh_end = line_end(bytes, 0);
    let mut at = msh_end;
    while at < bytes.len() {
        // `bytes[at]` is '\r' or '\n': skip this ending (one "\r\n" counts once).
        let bare_lf = bytes[at] == b'\n';
        at += if bytes[at] == b'\r' && bytes.get(at + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        if at >= bytes.len() || matches!(bytes[at], b'\r' | b'\n') {
            continue; // empty line or end of text
        }
        let name = bytes.get(at..at + 3)?;
        // (after a bare '\n', `decode` ends a segment of a message whose
        // segments end in CR only before a known segment id: `00A|` there is
        // data of the segment before, so such a name takes the full path)
        if !name
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            || (bare_lf && !is_segment_id(name))
            || name == b"MSH"
            || bytes.get(at + 3) != Some(&sep)
        {
            return None;
        }
        at = line_end(bytes, at + 4);
    }
    text.get(..msh_end)
}

/// Offset of the next '\r' or '\n' at or after `from`, or the length.
fn line_end(bytes: &[u8], from: usize) -> usize {
    bytes[from..]
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .map_or(bytes.len(), |p| from + p)
}

/// No MSH-18, or a label under which `decode` keeps valid UTF-8 text as is.
fn charset_keeps_utf8(raw: &[u8]) -> bool {
    match msh18(raw) {
        None => true,
        Some(label) => KEEPS_UTF8.iter().any(|k| label.eq_ignore_ascii_case(k)),
    }
}

/// MSH-18 labels under which `decode` returns valid UTF-8 input unchanged
/// (ASCII-only input included). Other labels may name encodings that are not
/// ASCII-compatible, so they take the full path.
const KEEPS_UTF8: [&str; 13] = [
    "ASCII",
    "ISO IR6",
    "US-ASCII",
    "UNICODE UTF-8",
    "UNICODE",
    "UTF-8",
    "UTF8",
    "8859/1",
    "ISO IR100",
    "ISO-8859-1",
    "ISO8859-1",
    "LATIN1",
    "LATIN-1",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_messages_give_their_msh_line() {
        let msh = "MSH|^~\\&|PAS|RAL|||20240501||ADT^A01|X1|P|2.4";
        for rest in [
            "",
            "\r",
            "\rPID|1\r",
            "\nPID|1\n\n",
            "\r\nPID|1\r\n",
            "\r\r\rZ01|x\rOBX|",
        ] {
            let raw = format!("{msh}{rest}");
            assert_eq!(clean_msh_line(raw.as_bytes()), Some(msh), "{raw:?}");
        }
        let utf8 = format!("{msh}||||||UNICODE UTF-8\rPID|Zoë\r");
        assert!(clean_msh_line(utf8.as_bytes()).is_some());
        let latin = format!("{msh}||||||8859/1\rPID|Zoë\r");
        assert!(clean_msh_line(latin.as_bytes()).is_some());
    }

    #[test]
    fn anything_unusual_takes_the_full_path() {
        let msh = "MSH|^~\\&|PAS|RAL|||20240501||ADT^A01|X1|P|2.4";
        for rest in [
            "\rPIDX|1",
            "\rPID",
            "\rpid|1",
            "\r PID|1",
            "\r \rPID|1",
            "\rMSH|^~\\&|A",
            "\nnot a segment",
            "\rPI",
            "||||||8859/15\rPID|1",
        ] {
            let raw = format!("{msh}{rest}");
            assert_eq!(clean_msh_line(raw.as_bytes()), None, "{raw:?}");
        }
        for raw in [
            &b""[..],
            b"MS",
            b"MSH",
            b"MSHA^~\\&",
            b" MSH|^~\\&|A",
            b"\xEF\xBB\xBFMSH|^~\\&|A",
            b"MSH|^~\\&|A\rPID|Zo\xeb",
            b"PID|1",
        ] {
            assert_eq!(clean_msh_line(raw), None, "{raw:?}");
        }
    }

    use proptest::prelude::*;

    /// Message-like bytes: an MSH (sometimes odd) then segments, endings and
    /// content drawn from what breaks parsers.
    fn messageish() -> impl Strategy<Value = Vec<u8>> {
        let msh = prop_oneof![
            Just(b"MSH|^~\\&|PAS|RAL|EPR|HUB|20240501||ADT^A01^ADT_A01|C1|P|2.5.1".to_vec()),
            Just(
                b"MSH|^~\\&#|PAS|RAL|||20240501||ORU^R01|C\\F\\2|P|2.7|||AL|NE||UNICODE UTF-8"
                    .to_vec()
            ),
            Just(b"MSH|^~\\&|A|B|||1||ADT^A01|X1|P|2.3||||||8859/1".to_vec()),
            Just(b"MSH|^~\\&|A|B|||1||ADT^A01||P|2.4".to_vec()),
            Just(b"MSH|^~\\&|A|B|||1|||X1|P|2.4||||||ASCII".to_vec()),
            Just(b"MSH#^~\\&#A#B###1##ADT^A01#X2#P#2.4".to_vec()),
            Just(b"MSH|^~|A".to_vec()),
        ];
        let piece = prop_oneof![
            Just(b"\r".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"PID|".to_vec()),
            Just(b"OBX#".to_vec()),
            Just(b"Z01|".to_vec()),
            Just(b"MSH|".to_vec()),
            Just(b"PID".to_vec()),
            Just(b"pid|".to_vec()),
            Just(b"PIDX|".to_vec()),
            Just(b"|^~\\&".to_vec()),
            Just(b" ".to_vec()),
            Just("Zoë".as_bytes().to_vec()),
            Just(vec![0xEB]),
            Just(vec![0x0B, 0x1C]),
            "[A-Z0-9|^ ]{0,6}".prop_map(String::into_bytes),
        ];
        (msh, prop::collection::vec(piece, 0..16))
            .prop_map(|(msh, pieces)| [msh, pieces.concat()].concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Whenever the structural pass vouches for a message, the fast path
        /// answers exactly as the full decode-and-parse path does.
        #[test]
        fn fast_path_agrees_with_full_parse(raw in messageish()) {
            if clean_msh_line(&raw).is_some() {
                prop_assert_eq!(super::super::assess(&raw), super::super::ack::assess_full(&raw));
            }
        }

        #[test]
        fn fast_path_never_panics(raw in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = clean_msh_line(&raw);
        }
    }
}
