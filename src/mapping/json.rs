//! Writing JSON text straight into a `String`, byte for byte what `serde_json`
//! writes for the same value (compact, object keys in sorted order, the same string
//! escapes and number formatting), so a mapped document never exists as a
//! `serde_json::Value` tree.
//!
//! What this module does not do: it does not sort keys; callers write members in
//! key order (the compiled templates are sorted). It does not check that a key is
//! written once.
//!
//! # Invariants
//! - `push_str` escapes exactly what `serde_json` escapes: `"`, `\`, and the
//!   control characters below U+0020 (`\b \f \n \r \t` by name, the others as
//!   `\u00xx` with lowercase hex). Everything else, non-ASCII included, is copied.
//! - `push_text`, for text from a message, differs only there: the control
//!   characters FHIR forbids in a string are left out (a form feed or vertical
//!   tab is a line break), never written as `\u00xx`.

use std::fmt::Write as _;

use serde_json::Value;

/// Whether any of the 8 bytes of `w` needs escaping: below 0x20, `"` or `\`
/// (the classic "has a zero byte" / "has a byte less than" word tricks).
#[inline]
fn word_needs_escape(w: u64) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(LO) & !x & HI;
    let below_space = w.wrapping_sub(LO * 0x20) & !w & HI;
    (below_space | has_zero(w ^ (LO * u64::from(b'"'))) | has_zero(w ^ (LO * u64::from(b'\\'))))
        != 0
}

/// The index of the first byte of `bytes` at or after `from` that needs escaping.
#[inline]
fn next_escape(bytes: &[u8], mut from: usize) -> Option<usize> {
    // eight bytes at a time while none needs escaping (nearly all text)
    while let Some(chunk) = bytes.get(from..from + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        if word_needs_escape(u64::from_le_bytes(w)) {
            break;
        }
        from += 8;
    }
    bytes
        .get(from..)?
        .iter()
        .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
        .map(|i| from + i)
}

/// Appends `s` as a JSON string literal.
#[inline]
pub(crate) fn push_str(out: &mut String, s: &str) {
    push_escaped::<false>(out, s);
}

/// Appends `s` as a FHIR string: as [`push_str`], except that the control
/// characters FHIR does not allow in a string (below U+0020 but tab, line feed
/// and carriage return: a NUL, a `\X1B\` escape) are left out, and a form feed
/// or vertical tab (a page break in a lab's print file) is written as a line
/// break. For trimmed text that is not empty: writes nothing and returns false
/// when, those left out, only white space would be left (no FHIR string is
/// empty).
#[inline]
pub(crate) fn push_text(out: &mut String, s: &str) -> bool {
    let at = out.len();
    push_escaped::<true>(out, s);
    // escaped or left out (rare): is anything left but white space?
    if out.len() != at + s.len() + 2 && !s.chars().any(|c| !c.is_whitespace() && !c.is_control()) {
        out.truncate(at);
        return false;
    }
    true
}

#[inline]
fn push_escaped<const FHIR: bool>(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    while let Some(i) = next_escape(bytes, start) {
        // the byte at `i` is ASCII, so `i` is a char boundary
        out.push_str(&s[start..i]);
        match bytes[i] {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x0b | 0x0c if FHIR => out.push_str("\\n"),
            _ if FHIR => {}
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            b => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Appends `"key":` for a key that needs no escaping (a FHIR element name).
#[inline]
pub(crate) fn push_key(out: &mut String, key: &str) {
    out.push('"');
    out.push_str(key);
    out.push_str("\":");
}

/// Appends `n` in decimal, as itoa (serde_json's integer writer) does.
pub(crate) fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// Appends a `serde_json::Value` as `serde_json::to_string` would write it.
pub(crate) fn push_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        // `Number`'s Display is its JSON form (itoa / shortest round-trip float);
        // writing to a String cannot fail
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                push_u64(out, u);
            } else if let Some(i) = n.as_i64() {
                // negative (a non-negative one is a u64 above)
                out.push('-');
                push_u64(out, i.unsigned_abs());
            } else {
                let _ = write!(out, "{n}");
            }
        }
        Value::String(s) => push_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_str(out, k);
                out.push(':');
                push_value(out, item);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ours(v: &Value) -> String {
        let mut s = String::new();
        push_value(&mut s, v);
        s
    }

    #[test]
    fn escapes_as_serde_json_does() {
        for s in [
            "",
            "plain",
            "quote \" and \\ back",
            "\u{0}\u{1}\u{8}\u{9}\u{a}\u{b}\u{c}\u{d}\u{1f}\u{7f}",
            "Tŷ Siân — 東京 😀",
            "</script>",
        ] {
            let v = Value::String(s.to_string());
            assert_eq!(ours(&v), serde_json::to_string(&v).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn numbers_and_nesting_as_serde_json_does() {
        let v = serde_json::json!({
            "b": [1, -2, 0, i64::MIN, u64::MAX, 3.5, 1e300, 0.1, -0.0, 12345678901234567890u64, true, false, null],
            "a": {"z": "x", "A": [], "m": {}},
        });
        assert_eq!(ours(&v), serde_json::to_string(&v).unwrap());
    }

    #[test]
    fn fhir_text_leaves_out_what_fhir_forbids() {
        let text = |s: &str| {
            let mut out = String::new();
            push_text(&mut out, s).then_some(out)
        };
        assert_eq!(text("a\u{0}b\u{1b}c").as_deref(), Some("\"abc\""));
        assert_eq!(
            text("page 1\u{c}page 2").as_deref(),
            Some("\"page 1\\npage 2\"")
        );
        assert_eq!(
            text("tab\there\r\n\"q\"").as_deref(),
            Some("\"tab\\there\\r\\n\\\"q\\\"\"")
        );
        assert_eq!(text("\u{0}"), None);
        assert_eq!(text("\u{0} \u{7}"), None);
        assert_eq!(text("Zoë").as_deref(), Some("\"Zoë\""));
    }

    proptest! {
        #[test]
        fn fhir_text_is_json_without_forbidden_controls(s in any::<String>()) {
            // callers write trimmed text that is not empty
            prop_assume!(!s.trim().is_empty());
            let mut out = String::new();
            if push_text(&mut out, &s) {
                let back: String = serde_json::from_str(&out).unwrap();
                prop_assert!(!back.chars().any(|c| c < ' ' && !matches!(c, '\t' | '\n' | '\r')));
                prop_assert!(back.chars().any(|c| !c.is_whitespace()));
            } else {
                prop_assert!(out.is_empty());
            }
        }

        #[test]
        fn any_string_as_serde_json(s in any::<String>()) {
            let v = Value::String(s);
            prop_assert_eq!(ours(&v), serde_json::to_string(&v).unwrap());
        }

        #[test]
        fn any_float_as_serde_json(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            let v = serde_json::json!(f);
            prop_assert_eq!(ours(&v), serde_json::to_string(&v).unwrap());
        }
    }
}
