//! HL7 v2 core: character sets, parsing, field paths, escapes, batches, ACKs.
//!
//! Pure: no tokio, no I/O, no config. Bytes in, values and ACK text out.
//!
//! Flow: [`decode`] turns bytes as received into UTF-8 text whose segments end
//! in `'\r'` (MSH-18 honoured); [`split_batch`] cuts FHS/BHS batches into
//! messages; [`Message::parse`] checks one message and indexes its structure
//! in one pass (`tree.rs`: byte ranges in a few flat vectors, nothing copied);
//! [`Message::get`] reads values by path (`PID-3[2].1`); [`assess`] is the
//! listener's gate and [`build_ack`] writes the answer.
//!
//! # Invariants
//! - Nothing here panics on any input (property-tested over arbitrary bytes).
//! - Errors ([`Hl7Error`]) say where: byte offset, segment position, field,
//!   path character; they quote at most a few characters of input.
//! - Field numbering is HL7's everywhere, MSH included (MSH-1 is the field
//!   separator, MSH-2 the encoding characters).
//! - Escape sequences are decoded only when a value is read
//!   ([`Element::text`], [`unescape`]); parsing never copies text.
//!
//! # Why not the `hl7-parser` crate
//! The first versions parsed on `hl7-parser` 0.3. It allocated a `Vec` per
//! field, repetition, component and subcomponent (~300k instructions for a
//! 1 KB ADT, 90% of parse+map time before mapping was optimised; see
//! BENCHMARKS.md), and it got several things wrong, which `tree.rs` and
//! `message.rs` now handle themselves (a differential property test in
//! `tree.rs` checks that they read every message exactly as hl7-parser plus our
//! former work-arounds did; the crate remains a dev-dependency for that test):
//! - It stopped silently at the first segment it could not read (a blank line,
//!   a 4-letter or missing segment name, a bare `PV2` with no field separator)
//!   and returned the segments before it as a complete message. We report the
//!   offending segment with its position and byte offset; [`decode`] drops
//!   blank lines and gives bare segment names their separator.
//! - It accepted segment names of any Unicode alphanumerics (`ÄBC`); we require
//!   ASCII. It read a second MSH as an ordinary segment with shifted field
//!   numbers; we reject it (use [`split_batch`]).
//! - A 5-character MSH-2 (v2.7 truncation character `#`) made the 5th character
//!   an extra field, shifting MSH-3 onwards by one; we do not. MSH-2 shorter
//!   than 4 characters made it take the field separator as a delimiter; we
//!   reject it up front with a clear error.
//! - In lenient-newline mode a `'\n'` inside text always ended a segment; we
//!   split strictly on `'\r'` and let [`decode`] decide which line feeds end
//!   segments.
//! - Its escape decoding mixed character and byte indices (wrong, and able to
//!   panic, on non-ASCII text), mapped `\.br\` to `"\r"` and dropped unknown
//!   escapes; [`unescape`] replaces it. Its query parser panicked (`todo!()`)
//!   on numbers that overflow; [`Path`] replaces it.

mod ack;
mod batch;
mod charset;
mod error;
mod escape;
mod message;
mod path;
mod scan;
mod tree;

pub use ack::{
    ack_unquoted, application_ack_wanted, assess, build_ack, build_application_ack, check_content,
    check_intake, check_not_a_query, check_patient_named, check_processing_id, is_absent,
    is_acknowledgement, is_utf16, refuse_utf16_over_mllp, AckCode, AckError, Rejection,
};
pub use batch::{looks_like_hl7, split_batch, split_batch_bytes};
pub use charset::{decode, encode_text, msh18, strip_utf8_bom, utf16_order, Utf16Order};
pub(crate) use charset::{ends_in_cr, ends_segment};
pub use error::Hl7Error;
pub use escape::{escape, escape_field, unescape};
pub use message::{same_message, AsSent, Header, Message};
pub use path::Path;
pub use tree::{Element, Level, Segment, Separators};

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes that look like HL7 often enough to reach deep code paths.
    fn hl7ish() -> impl Strategy<Value = Vec<u8>> {
        let pieces = prop::collection::vec(
            prop_oneof![
                Just(b"MSH|^~\\&|".to_vec()),
                Just(b"MSH|^~\\&#|".to_vec()),
                Just(b"\rPID|".to_vec()),
                Just(b"\nOBX|".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b"BHS|^~\\&\r".to_vec()),
                Just(b"|||||||||8859/1".to_vec()),
                Just(b"UNICODE UTF-8".to_vec()),
                Just(b"\\X".to_vec()),
                Just(b"\\".to_vec()),
                Just(b"^~&|".to_vec()),
                Just("Zoë".as_bytes().to_vec()),
                Just(vec![0xEF, 0xBB, 0xBF]),
                Just(vec![0xFF, 0xFE]),
                prop::collection::vec(any::<u8>(), 0..8),
            ],
            0..24,
        );
        pieces.prop_map(|p| p.concat())
    }

    fn exercise(raw: &[u8]) {
        let _ = assess(raw);
        let _ = msh18(raw);
        let Ok(text) = decode(raw) else { return };
        if let Ok(messages) = split_batch(&text) {
            for m in messages {
                let _ = Message::parse(m);
            }
        }
        if let Ok(message) = Message::parse(&text) {
            let header = message.header().ok();
            for path in ["MSH-1", "MSH-2", "MSH-9.2", "PID-3[2].1", "OBX[2]-5.1.1"] {
                let _ = message.get(path);
            }
            let err = AckError::new("207", "x").at("PID", 1, Some(3));
            let _ = build_ack(header.as_ref(), AckCode::AE, Some(&err), "1", "2");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..256)) {
            exercise(&raw);
        }

        #[test]
        fn hl7ish_bytes_never_panic(raw in hl7ish()) {
            exercise(&raw);
        }

        #[test]
        fn arbitrary_paths_never_panic(path in "\\PC{0,20}", fancy in "[A-Z0-9]{3}(\\[[0-9]{0,25}\\])?[-.][0-9]{0,25}(\\[[0-9]{0,3}\\])?(\\.[0-9]{0,3}){0,3}") {
            let message = Message::parse("MSH|^~\\&|A\rPID|1|a~b^c&d\r").expect("fixed message");
            let _ = message.get(&path);
            let _ = message.get(&fancy);
        }

        #[test]
        fn decoded_text_is_normalised(raw in hl7ish()) {
            if let Ok(text) = decode(&raw) {
                prop_assert!(!text.contains("\r\r"));
                prop_assert!(text.is_empty() || text.ends_with('\r'));
            }
        }

        #[test]
        fn escape_round_trips(value in "\\PC{0,40}") {
            let seps = Separators::default();
            let escaped = escape(&value, &seps);
            prop_assert_eq!(unescape(&escaped, &seps), value.as_str());
        }
    }

    /// A message built from ACK output parses back to the same header values.
    #[test]
    fn ack_parses_back() {
        let header = Message::parse("MSH|^~\\&|PAS|RAL|EPR|HUB|20240501||ADT^A01|C1|P|2.5.1\r")
            .and_then(|m| m.header())
            .expect("parses");
        let err = AckError::new("207", "a|b^c").at("PID", 1, Some(3));
        let ack = build_ack(
            Some(&header),
            AckCode::AE,
            Some(&err),
            "A9",
            "20240501120000",
        );
        let parsed = Message::parse(&ack).expect("ack parses");
        assert_eq!(parsed.get("MSA-2"), Ok(Some("C1".into())));
        assert_eq!(parsed.get("ERR-3.2"), Ok(Some("a|b^c".into())));
        assert_eq!(parsed.get("MSH-3"), Ok(Some("EPR".into())));
    }
}
