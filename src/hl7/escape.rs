//! HL7 escape sequences: decoding values read from a message, encoding values
//! written into one (ACKs).
//!
//! Decoding (`unescape`), with `\` standing for the message's escape character:
//! - `\F\ \S\ \T\ \R\ \E\` become the field, component, subcomponent,
//!   repetition and escape characters; `\P\` (v2.7 truncation) becomes `#`.
//! - `\Xhh…\` becomes the bytes `hh…` (with those of `\X..\` sequences right
//!   after it, a character escaped byte by byte, unless MSH-18 names a
//!   single-byte set), read as UTF-8 when they are valid UTF-8
//!   and otherwise in the character set MSH-18 names ([`Separators::hex`]),
//!   windows-1252 when it names none (as `charset::decode` reads the bytes).
//! - Formatted text (FT, HL7 2.7.6) as plain text: `\.br\` ends the line
//!   (`"\n"`); `\.spN\` ends it and skips N lines (`\.sp\`: one), so N + 1
//!   line breaks; `\.ce\` (centre the next line) ends the line; `\.skN\` is N
//!   spaces (`\.sk\`: one).
//! - Formatting-only sequences are dropped: `\H\` `\N\` (highlight on/off) and
//!   the other `\.xx\` formatting commands (`.fi` `.nf` `.in` `.ti`).
//! - Anything else (`\Zxx\` local escapes, `\Cxxyy\` `\Mxxyyzz\` character-set
//!   switches, malformed `\X\` hex, an escape character with no closing one)
//!   is kept verbatim, so nothing a sender wrote silently disappears.
//!
//! `hl7-parser`'s `Separators::decode` (used before our own tree replaced that
//! crate) was not used either: it slices the value by
//! character index as if it were a byte index (wrong, and able to panic, on
//! non-ASCII text), turns `\.br\` into `"\r"`, drops unknown escapes and drops
//! everything after an unterminated escape.
//!
//! Invariant: both functions borrow (no allocation) when there is nothing to do.

use std::borrow::Cow;

use super::tree::Separators;

/// Decodes HL7 escape sequences in `raw` (see the module doc for the rules).
pub fn unescape<'r>(raw: &'r str, separators: &Separators) -> Cow<'r, str> {
    let esc = separators.escape;
    if !has_escape(raw, esc) {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    // the bytes of `\Xhh\` sequences written one after another, read
    // together: a sender that escapes a UTF-8 character byte by byte
    // (`\XC3\\XBC\`) means one character
    let mut hex: Vec<u8> = Vec::new();
    let mut rest = raw;
    while let Some(start) = rest.find(esc) {
        if start > 0 {
            flush_hex(&mut hex, separators, &mut out);
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + esc.len_utf8()..];
        let Some(len) = after.find(esc) else {
            // No closing escape character: keep the remainder as it is.
            flush_hex(&mut hex, separators, &mut out);
            out.push_str(&rest[start..]);
            return Cow::Owned(out);
        };
        let body = &after[..len];
        let whole = &rest[start..start + esc.len_utf8() * 2 + len];
        match body.strip_prefix('X').and_then(hex_bytes) {
            // (runs are joined only when no single-byte character set is
            // named: under 8859/2, `\XD3\\XA3\` is `ÓŁ`, two characters
            // whose bytes happen to be valid UTF-8 together)
            Some(bytes) if separators.hex.is_some() => {
                hex.extend(bytes);
                flush_hex(&mut hex, separators, &mut out);
            }
            Some(bytes) => hex.extend(bytes),
            None => {
                flush_hex(&mut hex, separators, &mut out);
                decode_sequence(body, whole, separators, &mut out);
            }
        }
        rest = &after[len + esc.len_utf8()..];
    }
    flush_hex(&mut hex, separators, &mut out);
    out.push_str(rest);
    Cow::Owned(out)
}

/// Writes the bytes of `\Xhh\` sequences read so far as text: UTF-8 when
/// they are valid UTF-8; otherwise in the character set MSH-18 names, else
/// windows-1252 (ISO 8859-1 but for 0x80-0x9F), as the message's own bytes
/// are read.
fn flush_hex(hex: &mut Vec<u8>, seps: &Separators, out: &mut String) {
    if hex.is_empty() {
        return;
    }
    match std::str::from_utf8(hex) {
        Ok(text) => out.push_str(text),
        Err(_) => {
            let encoding = seps.hex.unwrap_or(encoding_rs::WINDOWS_1252);
            out.push_str(&encoding.decode_without_bom_handling(hex).0);
        }
    }
    hex.clear();
}

/// Does `raw` hold the escape character? A byte search when it is ASCII (it
/// always is in practice): `str::contains(char)` sets up a UTF-8 searcher, which
/// costs more than the short values of a message take to scan.
#[inline]
pub(crate) fn has_escape(raw: &str, esc: char) -> bool {
    if esc.is_ascii() {
        let e = esc as u8;
        raw.as_bytes().contains(&e)
    } else {
        raw.contains(esc)
    }
}

fn decode_sequence(body: &str, whole: &str, seps: &Separators, out: &mut String) {
    match body {
        "F" => out.push(seps.field),
        "S" => out.push(seps.component),
        "T" => out.push(seps.subcomponent),
        "R" => out.push(seps.repetition),
        "E" => out.push(seps.escape),
        "P" => out.push('#'),
        "H" | "N" => {}
        ".br" | ".ce" => out.push('\n'),
        _ if body.starts_with(".sp") => {
            let n = body[3..].trim().parse::<usize>().unwrap_or(1).min(100);
            out.extend(std::iter::repeat_n('\n', n + 1));
        }
        _ if body.starts_with(".sk") => {
            let n = body[3..].trim().parse::<usize>().unwrap_or(1).clamp(1, 100);
            out.extend(std::iter::repeat_n(' ', n));
        }
        ".fi" | ".nf" => {}
        _ if body.starts_with(".in") || body.starts_with(".ti") => {}
        // (valid `\Xhh\` is read by `unescape`, with the ones next to it)
        _ => out.push_str(whole),
    }
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

/// Encodes `value` for use as one HL7 value: every separator, the escape
/// character and line endings become escape sequences.
pub fn escape<'v>(value: &'v str, separators: &Separators) -> Cow<'v, str> {
    escape_with(value, separators, true)
}

/// Like [`escape`], but leaves component and subcomponent separators alone:
/// for re-emitting a whole field that was rendered with its structure
/// (e.g. MSH-3 `PAS^1.2.3^ISO` when addressing an ACK).
pub fn escape_field<'v>(value: &'v str, separators: &Separators) -> Cow<'v, str> {
    escape_with(value, separators, false)
}

fn escape_with<'v>(value: &'v str, seps: &Separators, components: bool) -> Cow<'v, str> {
    let special = |c: char| {
        c == seps.field
            || c == seps.repetition
            || c == seps.escape
            || c == '\r'
            || c == '\n'
            || (components && (c == seps.component || c == seps.subcomponent))
    };
    if !value.contains(special) {
        return Cow::Borrowed(value);
    }
    let e = seps.escape;
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if !special(c) {
            out.push(c);
            continue;
        }
        let code = match c {
            '\r' => "X0D",
            '\n' => "X0A",
            c if c == seps.field => "F",
            c if c == seps.repetition => "R",
            c if c == seps.escape => "E",
            c if c == seps.component => "S",
            _ => "T",
        };
        out.push(e);
        out.push_str(code);
        out.push(e);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        let seps = Separators::default();
        assert_eq!(unescape(input, &seps), expected, "unescape {input:?}");
    }

    #[test]
    fn separators_and_escape_character() {
        check(r"a\F\b\S\c\T\d\R\e\E\f", "a|b^c&d~e\\f");
        check(r"Pierre DuRho\S\ne \T\ Cie", "Pierre DuRho^ne & Cie");
    }

    #[test]
    fn plain_text_is_borrowed() {
        let seps = Separators::default();
        assert!(matches!(unescape("DOE", &seps), Cow::Borrowed("DOE")));
        assert!(matches!(escape("DOE", &seps), Cow::Borrowed("DOE")));
    }

    #[test]
    fn hex_as_utf8_or_latin1() {
        check(r"Zo\XC3AB\", "Zoë");
        check(r"Zo\XEB\", "Zoë");
        check(r"line\X0D0A\end", "line\r\nend");
        check(r"\X0A\", "\n");
    }

    #[test]
    fn formatting_commands() {
        check(r"one\.br\two", "one\ntwo");
        // .sp ends the line and skips lines: a blank line between, two with .sp2
        check(r"one\.sp\two", "one\n\ntwo");
        check(r"one\.sp2\two", "one\n\n\ntwo");
        check(r"one\.sp0\two", "one\ntwo");
        check(r"HEADING\.ce\text", "HEADING\ntext");
        check(r"Name:\.sk3\X", "Name:   X");
        check(r"\H\bold\N\ text", "bold text");
        check(r"\.in+4\indented\.fi\", "indented");
    }

    #[test]
    fn unknown_and_malformed_kept_verbatim() {
        check(r"a\Zlocal\b", r"a\Zlocal\b");
        check(r"a\XZZ\b", r"a\XZZ\b");
        check(r"a\X123\b", r"a\X123\b");
        check(r"trailing \F", r"trailing \F");
        check(r"\", r"\");
        check(r"\\", r"\\");
    }

    #[test]
    fn non_ascii_around_escapes() {
        check(r"Ó Súilleabháin\S\Zoë", "Ó Súilleabháin^Zoë");
        check(r"é\F\é\Fé", r"é|é\Fé");
    }

    /// Hex bytes that are not UTF-8 are read in the character set MSH-18
    /// names (`\\XA4\\` is `€` in ISO 8859-15, `¤` in 8859-1), windows-1252
    /// when it names none; UTF-8 bytes are UTF-8 whatever it says.
    #[test]
    fn hex_follows_the_declared_charset() {
        let seps = |hex| Separators {
            hex,
            ..Separators::default()
        };
        let latin9 = seps(Some(encoding_rs::ISO_8859_15));
        assert_eq!(unescape(r"\XA4\10", &latin9), "€10");
        assert_eq!(unescape(r"Zo\XC3AB\", &latin9), "Zoë");
        assert_eq!(unescape(r"\XA4\10", &seps(None)), "¤10");
        assert_eq!(unescape(r"\X80\10", &seps(None)), "€10");
        // one UTF-8 character escaped byte by byte, and two next to each other
        assert_eq!(unescape(r"M\XC3\\XBC\LLER", &seps(None)), "MüLLER");
        assert_eq!(unescape(r"\XC3\\XA9\\XC3A8\!", &seps(None)), "éè!");
        // under a single-byte set each is read alone: SOKÓŁ in 8859/2, one
        // escape per character, is not taken for UTF-8
        let latin2 = seps(Some(encoding_rs::ISO_8859_2));
        assert_eq!(unescape(r"SOK\XD3\\XA3\", &latin2), "SOKÓŁ");
        // not next to each other: each alone
        assert_eq!(unescape(r"\XC3\x\XBC\", &seps(None)), "Ãx¼");
        let message =
            "MSH|^~\\&|LAB|RAL|LCR|LCR|20260101||ORU^R01|1|P|2.5||||||8859/15\rNTE|1||\\XA4\\10\r";
        let parsed = crate::hl7::Message::parse(message).unwrap();
        assert_eq!(parsed.get("NTE-3").unwrap().as_deref(), Some("€10"));
        let undeclared = message.replace("8859/15", "");
        let parsed = crate::hl7::Message::parse(&undeclared).unwrap();
        assert_eq!(parsed.get("NTE-3").unwrap().as_deref(), Some("¤10"));
    }

    #[test]
    fn other_separators() {
        let seps = Separators {
            field: '#',
            component: '!',
            subcomponent: '$',
            repetition: '*',
            escape: '?',
            hex: None,
        };
        assert_eq!(unescape("a?F?b?S?c?E?", &seps), "a#b!c?");
        assert_eq!(escape("a#b!c?d$e*", &seps), "a?F?b?S?c?E?d?T?e?R?");
    }

    #[test]
    fn escape_round_trips() {
        let seps = Separators::default();
        for value in ["a|b^c&d~e\\f", "line\r\nbreak", "plain", "Zoë|Ó"] {
            assert_eq!(unescape(&escape(value, &seps), &seps), value);
        }
        assert_eq!(escape_field("PAS^1.2&x|y", &seps), r"PAS^1.2&x\F\y");
    }
}
