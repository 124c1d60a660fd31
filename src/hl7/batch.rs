//! FHS/BHS batches: split a text into its messages.
//!
//! A message runs from its MSH up to the next MSH or batch segment (FHS, BHS,
//! BTS, FTS) or the end of the text. Batch segments are dropped. Works for
//! FHS+BHS, BHS only, missing BTS/FTS, and plain files of concatenated messages
//! without any batch header. A text that is one message comes back whole.
//!
//! Not done: the BTS-1/FTS-1 counts are not checked (senders get them wrong
//! and the messages are what matter), nor are batch headers interpreted.
//!
//! Segment endings are recognised as [`super::decode`] does (`'\r'`, `"\r\n"`,
//! and a `'\n'` followed by a segment), so a file can be split before or after
//! decoding, and a line feed inside a value never starts a message.

use super::charset::ends_segment;
use super::error::{snippet, Hl7Error};

/// Returns the messages of `text` as slices of it, each starting with "MSH".
pub fn split_batch(text: &str) -> Result<Vec<&str>, Hl7Error> {
    let mut messages = Vec::new();
    let mut current: Option<usize> = None;
    let mut batch = false;
    for (start, content) in lines(text) {
        if content.chars().all(|c| c.is_whitespace() || c.is_control()) {
            continue;
        }
        let name = content.get(..3).unwrap_or(content);
        match name {
            "MSH" => {
                if let Some(from) = current.replace(start) {
                    messages.push(&text[from..start]);
                }
            }
            "FHS" | "BHS" | "BTS" | "FTS" => {
                batch = true;
                if let Some(from) = current.take() {
                    messages.push(&text[from..start]);
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
    let mut start = 0;
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'\r' || (b == b'\n' && ends_segment(bytes, i + 1, sep)) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
