//! FHS/BHS batches: split a text into its messages.
//!
//! A message runs from its MSH up to the next MSH or batch segment (FHS, BHS,
//! BTS, FTS) or the end of the text. Batch segments are dropped. Works for
//! FHS+BHS, BHS only, missing BTS/FTS, and plain files of concatenated messages
//! without any batch header. A text that is one message comes back whole.
//!
//! Counts are not checked here: the listener compares BTS-1 with the messages
//! a batch held and says so in the batch ACK's BTS-2 (a file cut short), but
//! takes the messages either way (senders get counts wrong, and the messages
//! are what matter). Batch headers are not interpreted.
//!
//! Segment endings are recognised as [`super::decode`] does (`'\r'`, `"\r\n"`,
//! and a `'\n'` followed by a segment), so a file can be split before or after
//! decoding, and a line feed inside a value never starts a message.

use bytes::Bytes;

use super::charset::ends_segment;
use super::error::{snippet, Hl7Error};

/// Returns the messages of `text` as slices of it, each starting with "MSH".
pub fn split_batch(text: &str) -> Result<Vec<&str>, Hl7Error> {
    let mut messages = Vec::new();
    let mut current: Option<usize> = None;
    let mut batch = false;
    for (line_start, content) in lines(text) {
        if content.chars().all(|c| c.is_whitespace() || c.is_control()) {
            continue;
        }
        // blanks before a segment's name (where a byte order mark was) are
        // part of neither message
        let blank = content.len() - content.trim_start().len();
        let (start, content) = (line_start + blank, &content[blank..]);
        let name = content.get(..3).unwrap_or(content);
        match name {
            "MSH" => {
                if let Some(from) = current.replace(start) {
                    messages.push(&text[from..line_start]);
                }
            }
            "FHS" | "BHS" | "BTS" | "FTS" => {
                batch = true;
                if let Some(from) = current.take() {
                    messages.push(&text[from..line_start]);
                }
            }
            _ if current.is_none() => {
                return Err(Hl7Error::Batch {
                    offset: start,
                    found: snippet(content, 3),
                    expected: if batch {
                        "'MSH' or a batch segment (BHS, BTS, FTS)"
                    } else {
                        "'MSH' at the start of the message (or FHS/BHS for a batch)"
                    },
                });
            }
            _ => {}
        }
    }
    if let Some(from) = current {
        messages.push(&text[from..]);
    }
    if messages.is_empty() && !batch {
        return Err(Hl7Error::Empty);
    }
    Ok(messages)
}

/// The segments of `text` with their byte offsets, without their endings.
/// `'\r'`, `"\r\n"` and a `'\n'` followed by something that looks like a
/// segment end a segment, as in [`super::decode`]; other `'\n'` are data.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let bytes = text.as_bytes();
    let sep = match bytes.get(3) {
        Some(&b) if b.is_ascii_punctuation() => b,
        _ => b'|',
    };
    let cr = super::ends_in_cr(bytes);
    let mut start = 0;
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'\r' || (b == b'\n' && ends_segment(bytes, i + 1, sep, cr)) {
                let line = (start, &text[start..i]);
                i += 1;
                if b == b'\r' && bytes.get(i) == Some(&b'\n') {
                    i += 1;
                }
                start = i;
                return Some(line);
            }
            i += 1;
        }
        if start < bytes.len() {
            let line = (start, &text[start..]);
            start = bytes.len();
            return Some(line);
        }
        None
    })
}

/// Splits a batch (an MLLP frame, a file, a MESH message) into its messages,
/// each an exact slice of its bytes, whatever their character sets: the
/// batch's structure (segment names, segment ends) is ASCII, so it is found in
/// a copy where every other byte is a placeholder and a UTF-8 byte order mark
/// (a Windows-written file, or files joined together) is blank. Each message
/// is then decoded by its own MSH-18, as when it is sent alone: a Latin-1
/// message after a UTF-8 one is read as Latin-1, and one whose bytes do not
/// decode is that message's problem only. `None` when it does not split
/// (text before the first MSH).
pub fn split_batch_bytes(frame: &Bytes) -> Option<Vec<Bytes>> {
    let mut view = Vec::with_capacity(frame.len());
    let mut i = 0;
    while i < frame.len() {
        if frame[i..].starts_with(b"\xef\xbb\xbf") {
            view.extend_from_slice(b"   ");
            i += 3;
            continue;
        }
        let b = frame[i];
        view.push(if b.is_ascii() { b } else { b'?' });
        i += 1;
    }
    let text = std::str::from_utf8(&view).ok()?;
    let parts = split_batch(text).ok()?;
    Some(
        parts
            .into_iter()
            .map(|p| {
                let from = p.as_ptr() as usize - text.as_ptr() as usize;
                frame.slice(from..from + p.len())
            })
            .collect(),
    )
}

/// Whether `raw` looks like HL7 v2 (an optional UTF-8 byte order mark and
/// white space, then `MSH`, `FHS` or `BHS` and a field separator), as opposed
/// to a document (JSON, XML) or anything else.
pub fn looks_like_hl7(raw: &[u8]) -> bool {
    let start = raw.strip_prefix(b"\xef\xbb\xbf").unwrap_or(raw);
    let start = &start[start.iter().take_while(|b| b.is_ascii_whitespace()).count()..];
    [b"MSH", b"FHS", b"BHS"].iter().any(|name| {
        start.starts_with(*name)
            && start
                .get(3)
                .is_some_and(|&sep| sep.is_ascii_punctuation() || sep == b' ')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each message of a batch keeps its own bytes (its own MSH-18 decodes it),
    /// and byte order marks before the batch or a message do not hide them.
    #[test]
    fn a_batch_splits_into_each_messages_own_bytes() {
        let latin1 =
            b"MSH|^~\\&|PAS|RAL|||20260101||ADT^A08|L1|P|2.4||||||8859/1\rPID|1||1||\xd3 BRIAIN\r";
        let utf8 = "MSH|^~\\&|PAS|RAL|||20260101||ADT^A08|U8|P|2.4||||||UNICODE UTF-8\rPID|1||2||\u{d3} BRIAIN\r";
        let mut frame = b"\xef\xbb\xbfFHS|^~\\&\rBHS|^~\\&\r".to_vec();
        frame.extend_from_slice(latin1);
        frame.extend_from_slice(b"\xef\xbb\xbf");
        frame.extend_from_slice(utf8.as_bytes());
        frame.extend_from_slice(b"BTS|2\rFTS|1\r");
        let parts = split_batch_bytes(&Bytes::from(frame.clone())).expect("splits");
        assert_eq!(parts.len(), 2);
        // a line feed, then a byte order mark, before the batch
        let mut led = b"\n".to_vec();
        led.extend_from_slice(&frame);
        assert_eq!(
            split_batch_bytes(&Bytes::from(led)).expect("splits").len(),
            2
        );
        assert_eq!(&parts[0][..], &latin1[..]);
        assert_eq!(&parts[1][..], utf8.as_bytes());
        let first = crate::hl7::decode(&parts[0]).unwrap();
        let second = crate::hl7::decode(&parts[1]).unwrap();
        assert!(first.contains("\u{d3} BRIAIN") && second.contains("\u{d3} BRIAIN"));
    }

    #[test]
    fn what_looks_like_hl7() {
        for yes in [
            &b"MSH|^~\\&|PAS"[..],
            b"\xef\xbb\xbfMSH|^~\\&|",
            b"\r\n  FHS|^~\\&|",
            b"BHS|^~\\&|",
            b"MSH!^~\\&!",
        ] {
            assert!(looks_like_hl7(yes), "{yes:?}");
        }
        for no in [
            &b"{\"resourceType\":\"Bundle\"}"[..],
            b"<ClinicalDocument/>",
            b"MSHA|",
            b"MSH",
            b"",
            b"PID|1",
        ] {
            assert!(!looks_like_hl7(no), "{no:?}");
        }
    }

    #[test]
    fn a_batch_splits_into_slices_of_itself() {
        let raw = Bytes::from_static(
            b"FHS|^~\\&|LAB\rBHS|^~\\&|LAB\rMSH|^~\\&|A|1\rPID|1\rMSH|^~\\&|B|2\rBTS|2\rFTS|1\r",
        );
        let parts = split_batch_bytes(&raw).expect("splits");
        assert_eq!(parts.len(), 2);
        assert_eq!(&parts[0][..], b"MSH|^~\\&|A|1\rPID|1\r");
        assert_eq!(&parts[1][..], b"MSH|^~\\&|B|2\r");
        // zero-copy: each part lies inside the batch
        let start = raw.as_ptr() as usize;
        assert!(parts
            .iter()
            .all(|p| p.as_ptr() as usize >= start
                && p.as_ptr() as usize + p.len() <= start + raw.len()));
        assert!(split_batch_bytes(&Bytes::from_static(b"PID|1\rMSH|^~\\&|\r")).is_none());
    }

    fn check(input: &str, expected: Result<&[&str], Hl7Error>) {
        assert_eq!(
            split_batch(input),
            expected.map(<[&str]>::to_vec),
            "{input:?}"
        );
    }

    const A: &str = "MSH|^~\\&|A|||||||ADT^A01|1|P|2.4\rPID|1\r";
    const B: &str = "MSH|^~\\&|A|||||||ADT^A08|2|P|2.4\rPID|2\rPV1|1\r";

    #[test]
    fn single_message_comes_back_whole() {
        check(A, Ok(&[A]));
        check("MSH|^~\\&", Ok(&["MSH|^~\\&"]));
    }

    #[test]
    fn full_batch() {
        let text = format!("FHS|^~\\&|PAS\rBHS|^~\\&|PAS\r{A}{B}BTS|2\rFTS|1\r");
        check(&text, Ok(&[A, B]));
    }

    #[test]
    fn bhs_only_and_missing_trailers() {
        check(&format!("BHS|^~\\&|PAS\r{A}{B}"), Ok(&[A, B]));
        check(
            &format!("FHS|^~\\&\rBHS|^~\\&\r{A}BTS|1\rBHS|^~\\&\r{B}"),
            Ok(&[A, B]),
        );
    }

    #[test]
    fn concatenated_messages_and_line_feeds() {
        check(&format!("{A}{B}"), Ok(&[A, B]));
        // A line feed inside a value is data, even when it looks like a segment.
        let with_data = "MSH|^~\\&|A\rOBX|1|TX|||see\nMSH below\r";
        check(with_data, Ok(&[with_data]));
        let a = A.replace('\r', "\n");
        let b = B.replace('\r', "\r\n");
        check(
            &format!("\n{a}\n{b}\n"),
            Ok(&[&format!("{a}\n"), &format!("{b}\n")]),
        );
    }

    #[test]
    fn empty_batch() {
        check("BHS|^~\\&\rBTS|0\r", Ok(&[]));
    }

    #[test]
    fn errors() {
        check("", Err(Hl7Error::Empty));
        check("\r\n  \n", Err(Hl7Error::Empty));
        check(
            "PID|1\r",
            Err(Hl7Error::Batch {
                offset: 0,
                found: "PID".into(),
                expected: "'MSH' at the start of the message (or FHS/BHS for a batch)",
            }),
        );
        check(
            &format!("BHS|^~\\&\r{A}BTS|1\rPID|9\r"),
            Err(Hl7Error::Batch {
                offset: 9 + A.len() + 6,
                found: "PID".into(),
                expected: "'MSH' or a batch segment (BHS, BTS, FTS)",
            }),
        );
    }
}
