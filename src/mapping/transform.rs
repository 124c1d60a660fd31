//! Transforms (`| trim`, `| datetime(Europe/London)`, `| nhs_number`, ...): how they
//! are resolved at load, and the pure string functions behind them.
//!
//! # Invariants
//! - Everything that can fail at load (regex, time zone, table name, argument count)
//!   fails in [`build`], so applying a transform never compiles or looks up anything.
//! - The text functions here never panic on any input.

use jiff::tz::TimeZone;
use regex::Regex;

use super::expr::Cond;

/// The data-type built-ins: an HL7 composite to a FHIR element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataType {
    /// CX → Identifier.
    Cx,
    /// XPN → HumanName.
    Xpn,
    /// XAD → Address.
    Xad,
    /// XTN → ContactPoint.
    Xtn,
    /// `XTN('work')`: XTN → ContactPoint whose `use` is `work` when XTN.2 says
    /// nothing (PID-14, the business phone).
    XtnWork,
    /// CE/CWE/CNE → CodeableConcept.
    Cwe,
    /// CE/CWE → Coding.
    Coding,
    /// XCN → Reference to a Practitioner by identifier.
    Xcn,
    /// NDL (OBR-32 to OBR-35 from v2.3: the person is component 1, a CNN whose
    /// parts are subcomponents) → as XCN; an NDL sent in XCN's shape alike.
    Ndl,
    /// XON → Reference to an Organization by ODS code.
    Xon,
}

/// Which bound of a reference range `range_low` / `range_high` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    Low,
    High,
}

#[derive(Debug, Clone)]
pub(crate) enum Transform {
    Trim,
    Upper,
    Lower,
    Date,
    /// `| time`: HL7 TM to a FHIR time.
    Time,
    DateTime(TimeZone),
    /// `| instant(tz)`: a `datetime` that has a time of day (FHIR `instant`).
    Instant(TimeZone),
    Lookup(usize),
    NhsNumber,
    RegexReplace(Regex, String),
    Default(String),
    Number,
    Uuid5(String),
    Join(String),
    /// `| parts('sep')`: a composite's components and subcomponents as one
    /// text, their non-empty texts between `sep`s, whatever separators the
    /// sender's MSH-2 declares (`12.50&GBP` and `12.50%GBP` both `12.50 GBP`
    /// with `parts(' ')`); a text that is no message element is kept as it is.
    Parts(String),
    /// `| lines`: the texts as lines of one text (`\n` between them), the sender's
    /// layout kept: a blank line between lines stays, indentation stays; trailing
    /// white space, and blank lines before the first line and after the last, go.
    Lines,
    /// `| range_low`, `| range_high`: a bound of a reference range.
    Range(Bound),
    /// `| url_encode`: percent-encoding, for text that goes into a URI.
    UrlEncode,
    /// `coding_system`: an HL7 coding system name (table 0396) as a FHIR system URI.
    CodingSystem,
    /// `| comparator`: the `<`, `<=`, `>` or `>=` a value starts with (`<5`).
    Comparator,
    /// `| strip_comparator`: the value after its comparator (`<5` → `5`).
    StripComparator,
    /// `| base64`: the text's UTF-8 bytes in Base64 (an ED sent with encoding `A`).
    Base64,
    /// `| hex_to_base64`: hexadecimal bytes re-encoded as Base64 (an ED sent with
    /// encoding `Hex`).
    HexToBase64,
    /// `| base64_check`: Base64 as sent (an ED sent with encoding `Base64`),
    /// white space (line wraps) dropped, kept only when it decodes.
    Base64Check,
    /// `| warn('message')`: no value, and a warning (the message, where the value
    /// came from) when there was one: what a mapping cannot use, said rather than
    /// dropped in silence.
    Warn(String),
    /// `| when(cond)`: keeps the value only if the condition holds.
    When(Box<Cond>),
    Builtin(DataType, TimeZone),
}

/// Every transform name, for "expected one of" messages.
pub(crate) const NAMES: &str = "trim, upper, lower, date, time, datetime(Europe/London), lookup(table), \
instant(Europe/London), nhs_number, regex_replace('pattern', 'replacement'), default('value'), number, uuid5('kind'), \
join('separator'), parts('separator'), lines, warn('message'), range_low, range_high, url_encode, coding_system, comparator, strip_comparator, base64, hex_to_base64, base64_check, when(condition), CX, XPN, XAD, XTN, XTN('work'), CE, CWE, CNE, CODING, XCN, NDL, XON, TS, DTM";

/// Builds a transform from its name and raw arguments. `tables` are the names of
/// the file's `[tables.*]`, by index.
pub(crate) fn build(
    name: &str,
    args: &[(String, usize)],
    tables: &[String],
) -> Result<Transform, String> {
    let argc = |n: usize| -> Result<(), String> {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!(
                "`{name}` takes {n} argument{}, found {}",
                if n == 1 { "" } else { "s" },
                args.len()
            ))
        }
    };
    let london = || london_tz();
    Ok(match name {
        "trim" => argc(0).map(|_| Transform::Trim)?,
        "upper" => argc(0).map(|_| Transform::Upper)?,
        "lower" => argc(0).map(|_| Transform::Lower)?,
        "date" => argc(0).map(|_| Transform::Date)?,
        "time" => argc(0).map(|_| Transform::Time)?,
        "number" => argc(0).map(|_| Transform::Number)?,
        "nhs_number" => argc(0).map(|_| Transform::NhsNumber)?,
        "range_low" => argc(0).map(|_| Transform::Range(Bound::Low))?,
        "url_encode" => argc(0).map(|_| Transform::UrlEncode)?,
        "coding_system" => argc(0).map(|_| Transform::CodingSystem)?,
        "lines" => argc(0).map(|_| Transform::Lines)?,
        "comparator" => argc(0).map(|_| Transform::Comparator)?,
        "strip_comparator" => argc(0).map(|_| Transform::StripComparator)?,
        "base64" => argc(0).map(|_| Transform::Base64)?,
        "hex_to_base64" => argc(0).map(|_| Transform::HexToBase64)?,
        "base64_check" => argc(0).map(|_| Transform::Base64Check)?,
        "range_high" => argc(0).map(|_| Transform::Range(Bound::High))?,
        "datetime" | "instant" => {
            let tz = match args.len() {
                0 => london()?,
                1 => TimeZone::get(&args[0].0).map_err(|_| {
                    format!(
                        "unknown time zone `{}`, expected an IANA name like `Europe/London`",
                        args[0].0
                    )
                })?,
                _ => return Err(format!("`{name}` takes 1 argument, found {}", args.len())),
            };
            if name == "instant" {
                Transform::Instant(tz)
            } else {
                Transform::DateTime(tz)
            }
        }
        "lookup" => {
            argc(1)?;
            let t = &args[0].0;
            match tables.iter().position(|n| n == t) {
                Some(i) => Transform::Lookup(i),
                None => {
                    return Err(format!(
                        "unknown table `{t}`, expected one of {}",
                        if tables.is_empty() {
                            "the [tables.*] of this file (there are none)".to_string()
                        } else {
                            tables.join(", ")
                        }
                    ))
                }
            }
        }
        "regex_replace" => {
            argc(2)?;
            let re = Regex::new(&args[0].0).map_err(|e| {
                format!("bad regex `{}`: {}", args[0].0, first_line(&e.to_string()))
            })?;
            if let Some(group) = missing_group(&re, &args[1].0) {
                return Err(format!(
                    "the replacement names group `{group}`, which the regex `{}` does not have \
                     (it has {} group(s); write `$$` for a `$`)",
                    args[0].0,
                    re.captures_len() - 1
                ));
            }
            Transform::RegexReplace(re, args[1].0.clone())
        }
        "warn" => {
            argc(1)?;
            Transform::Warn(args[0].0.clone())
        }
        "default" => {
            argc(1)?;
            Transform::Default(args[0].0.clone())
        }
        "uuid5" => match args.len() {
            0 => Transform::Uuid5(String::new()),
            1 => Transform::Uuid5(args[0].0.clone()),
            n => return Err(format!("`uuid5` takes 0 or 1 argument, found {n}")),
        },
        "parts" => {
            argc(1)?;
            Transform::Parts(args[0].0.replace("\\n", "\n"))
        }
        "join" => match args.len() {
            0 => Transform::Join(" ".to_string()),
            1 => Transform::Join(args[0].0.replace("\\n", "\n")),
            n => return Err(format!("`join` takes 0 or 1 argument, found {n}")),
        },
        "XTN" if !args.is_empty() => {
            argc(1)?;
            if args[0].0 != "work" {
                return Err(format!(
                    "`XTN` takes no argument or 'work' (the use when XTN.2 says none), found '{}'",
                    args[0].0
                ));
            }
            Transform::Builtin(DataType::XtnWork, london()?)
        }
        "CX" | "XPN" | "XAD" | "XTN" | "CE" | "CWE" | "CNE" | "CODING" | "XCN" | "NDL" | "XON" => {
            argc(0)?;
            let dt = match name {
                "CX" => DataType::Cx,
                "XPN" => DataType::Xpn,
                "XAD" => DataType::Xad,
                "XTN" => DataType::Xtn,
                "CE" | "CWE" | "CNE" => DataType::Cwe,
                "CODING" => DataType::Coding,
                "XCN" => DataType::Xcn,
                "NDL" => DataType::Ndl,
                _ => DataType::Xon,
            };
            Transform::Builtin(dt, london()?)
        }
        "TS" | "DTM" => argc(0).and_then(|_| Ok(Transform::DateTime(london()?)))?,
        _ => {
            return Err(format!(
                "unknown transform `{name}`, expected one of {NAMES}"
            ))
        }
    })
}

fn first_line(s: &str) -> String {
    s.lines().last().unwrap_or(s).trim().to_string()
}

fn london_tz() -> Result<TimeZone, String> {
    TimeZone::get("Europe/London")
        .map_err(|e| format!("time zone `Europe/London` is not available: {e}"))
}

/// `lines`: texts (a TX result's repetitions, an NTE's lines) as one text, a line
/// each, as the sender laid them out: a blank line between two lines is kept (a
/// report's paragraphs), and so is indentation; white space and control characters
/// at the end of a line go, and so do blank lines before the first line and after
/// the last. A text that holds line breaks itself (FT `\.br\`) is lines too.
/// `None` when every line is blank.
pub(crate) fn lines<S: AsRef<str>>(texts: &[S]) -> Option<String> {
    let blank_end = |c: char| c.is_whitespace() || c.is_control();
    let mut out = String::new();
    // blank lines seen since the last line written (written only before another)
    let mut blanks = 0usize;
    let mut any = false;
    for text in texts {
        for line in text.as_ref().split('\n') {
            let line = line.trim_end_matches(blank_end);
            if line.is_empty() {
                blanks += usize::from(any);
                continue;
            }
            if any {
                out.push('\n');
                for _ in 0..blanks {
                    out.push('\n');
                }
            }
            out.push_str(line);
            blanks = 0;
            any = true;
        }
    }
    any.then_some(out)
}

/// The namespace of every deterministic id Junction mints.
pub(crate) const ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6a75_6e63_7469_5f6f_8e6e_6d61_7070_696e);

/// UUIDv5 of `kind|value` in [`ID_NAMESPACE`] (just `value` when `kind` is empty).
///
/// RFC 9562 §5.5, computed with the `sha1` crate (which uses the CPU's SHA
/// instructions where it has them) rather than `uuid::Uuid::new_v5`, whose
/// portable SHA-1 was a tenth of the cost of mapping a lab report; the unit test
/// `uuid5_is_rfc_v5` checks the two agree.
pub(crate) fn uuid5(kind: &str, value: &str) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(ID_NAMESPACE.as_bytes());
    if !kind.is_empty() {
        h.update(kind.as_bytes());
        h.update(b"|");
    }
    h.update(value.as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x50; // version 5
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    let mut buf = uuid::Uuid::encode_buffer();
    String::from(
        &*uuid::Uuid::from_bytes(bytes)
            .hyphenated()
            .encode_lower(&mut buf),
    )
}

/// A bound of a reference range as labs write it in OBX-7: `3.5-5.0` (both),
/// `>3.5` or `>=3.5` (low only), `<5.0` or `<=5.0` (high only); white space
/// around the parts is allowed, bounds of a `low-high` range may be signed, and
/// the whole may be in brackets (`(3.5-5.0)`, `[3.5-5.0]`, as some labs print it).
/// Between the bounds, a hyphen, an en or em dash (`115–165`, pasted from a word
/// processor into a lab's tables) or `to` (`-2 to 2`). A range whose low bound is
/// above its high one (`5.3-3.5`) has neither: FHIR's rng-2 forbids it, and which
/// was meant is not known (the text keeps it).
/// `None` for anything else. The number is returned as written (`| number` reads it).
pub(crate) fn range_bound(s: &str, bound: Bound) -> Option<&str> {
    let t = unbracket(s.trim());
    let one_sided = match bound {
        Bound::Low => t.strip_prefix('>'),
        Bound::High => t.strip_prefix('<'),
    };
    if let Some(rest) = one_sided {
        let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
        let n = number_len(rest, false)?;
        return (n == rest.len()).then_some(rest);
    }
    let a = number_len(t, true)?;
    let between = t[a..].trim_start();
    let rest = ["-", "\u{2013}", "\u{2014}"]
        .iter()
        .find_map(|dash| between.strip_prefix(dash))
        .or_else(|| {
            // `to` as a word, white space on both sides
            let after = between.strip_prefix("to").or(between.strip_prefix("TO"))?;
            (between.len() < t[a..].len() && after.starts_with([' ', '\t'])).then_some(after)
        })?
        .trim_start();
    let b = number_len(rest, true)?;
    if b != rest.len() {
        return None;
    }
    let value = |n: &str| n.parse::<f64>().ok();
    if matches!((value(&t[..a]), value(rest)), (Some(low), Some(high)) if low > high) {
        return None;
    }
    Some(match bound {
        Bound::Low => &t[..a],
        Bound::High => rest,
    })
}

/// A value split after the comparator it starts with, as labs send results beyond
/// a method's range (`<5`, `>= 90`): the comparator (`<`, `<=`, `>`, `>=`, or empty
/// when there is none) and the rest, both without surrounding white space.
pub(crate) fn split_comparator(s: &str) -> (&'static str, &str) {
    let t = s.trim();
    for c in ["<=", ">=", "<", ">"] {
        if let Some(rest) = t.strip_prefix(c) {
            return (c, rest.trim_start());
        }
    }
    ("", t)
}

/// `s` without one pair of round or square brackets around it (and the white
/// space inside them).
fn unbracket(s: &str) -> &str {
    match s.as_bytes() {
        [b'(', .., b')'] | [b'[', .., b']'] => s[1..s.len() - 1].trim(),
        _ => s,
    }
}

/// The UTF-8 bytes of `s` in standard Base64 with padding (FHIR `base64Binary`).
pub(crate) fn base64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// Hexadecimal text (either case; white space between the digits, as senders
/// wrap long values, is ignored) re-encoded as standard Base64. `None` when it is
/// not an even number of hex digits.
pub(crate) fn hex_to_base64(s: &str) -> Option<String> {
    use base64::Engine;
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let bytes = hex::decode(digits).ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Base64 text with its white space (line wraps) dropped, when it is standard
/// Base64 that decodes (FHIR `base64Binary`); `None` when it does not: a value
/// cut short by a size limit, or not Base64 at all.
pub(crate) fn base64_check(s: &str) -> Option<String> {
    use base64::Engine;
    let text: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .ok()
        .map(|_| text)
}

/// `s` percent-encoded (RFC 3986): every byte but the unreserved `A-Z a-z 0-9 - .
/// _ ~` as `%XX`, so local identifier systems stay valid URIs (no spaces) whatever
/// an assigning authority is called. Borrows when nothing needs encoding.
pub(crate) fn url_encode(s: &str) -> std::borrow::Cow<'_, str> {
    let keep = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if s.bytes().all(keep) {
        return std::borrow::Cow::Borrowed(s);
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The length of the decimal number at the start of `s`: digits with an optional
/// fraction, or a bare fraction (`.5`), after a sign when `signed`.
fn number_len(s: &str, signed: bool) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = usize::from(signed && matches!(b.first(), Some(b'-' | b'+')));
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let int = digits(i);
    i += int;
    if b.get(i) == Some(&b'.') {
        let frac = digits(i + 1);
        if frac > 0 {
            return Some(i + 1 + frac);
        }
    }
    (int > 0).then_some(i)
}

/// The NHS number in `s` (spaces and hyphens ignored) if it is 10 digits, passes
/// the modulus 11 check and is not one digit ten times (`0000000000`,
/// `1111111111`, `9999999999` pass modulus 11 but are no one's: systems send
/// them for "not known", and taken as NHS numbers they would make every
/// unknown patient one person).
pub(crate) fn nhs_number(s: &str) -> Option<String> {
    // (on the stack: asked for several times in every message)
    let mut digits = [0u8; 10];
    let mut n = 0;
    for b in s.bytes() {
        match b {
            b' ' | b'-' => {}
            b'0'..=b'9' if n < 10 => {
                digits[n] = b;
                n += 1;
            }
            _ => return None,
        }
    }
    if n != 10 || digits.iter().all(|d| *d == digits[0]) {
        // not ten digits, or a placeholder (`is_placeholder`)
        return None;
    }
    let sum: u32 = digits[..9]
        .iter()
        .zip((2..=10u32).rev())
        .map(|(d, weight)| u32::from(d - b'0') * weight)
        .sum();
    let check = match 11 - (sum % 11) {
        11 => 0,
        10 => return None,
        c => c,
    };
    if check != u32::from(digits[9] - b'0') {
        return None;
    }
    // ten ASCII digits
    Some(digits.iter().map(|d| char::from(*d)).collect())
}

/// Ten digits all the same (spaces and hyphens ignored: `999 999 9999`): what
/// senders send for "NHS number not known". It passes modulus 11 but is no
/// one's; it keys no patient, in the mappings, the routing memory or intake.
pub(crate) fn is_placeholder(s: &str) -> bool {
    let mut digits = s.chars().filter(|c| *c != ' ' && *c != '-');
    let Some(first) = digits.next().filter(char::is_ascii_digit) else {
        return false;
    };
    let mut n = 1;
    for c in digits {
        if c != first {
            return false;
        }
        n += 1;
    }
    n == 10
}

/// Why `s` is not an NHS number ([`nhs_number`] gave none), for a warning.
pub(crate) fn nhs_number_problem(s: &str) -> &'static str {
    if is_placeholder(s) {
        "is a placeholder (one digit ten times), not an NHS number"
    } else {
        "fails modulus 11"
    }
}

/// HL7 DT/TS (`YYYY[MM[DD[...]]]`) to a FHIR date (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`).
pub(crate) fn hl7_date(s: &str) -> Result<String, String> {
    let s = s.split('^').next().unwrap_or("").trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let bad = || {
        format!("`{s}` is not an HL7 date, expected YYYY[MM[DD]] (or a timestamp: YYYYMMDD[HH[MM[SS[.S]]]][+/-ZZZZ])")
    };
    let d = &s[..digits];
    // after the digits only a zone (`+0100`), or the rest of a TS's time: not
    // `2026-11-01`, whose `2026` is not the date that was meant
    let rest = &s[digits..];
    let zone = |r: &str| {
        r.len() == 5 && r.starts_with(['+', '-']) && r[1..].bytes().all(|b| b.is_ascii_digit())
    };
    if !(rest.is_empty() || zone(rest) || digits > 8) {
        return Err(bad());
    }
    // a TS read as its date: its time must be one too (`20261120250000` is
    // no timestamp, and its date is not taken on trust)
    if digits > 8 && hl7_datetime(s, &jiff::tz::TimeZone::UTC).is_err() {
        return Err(bad());
    }
    // FHIR has no year 0000 (its date pattern starts at 0001)
    if digits >= 4 && num(&d[0..4]) == 0 {
        return Err(bad());
    }
    match digits {
        4 => {
            let y: i16 = d.parse().map_err(|_| bad())?;
            jiff::civil::Date::new(y, 1, 1).map_err(|_| bad())?;
            Ok(d.to_string())
        }
        6 => {
            let (y, m) = (num(&d[0..4]), num(&d[4..6]));
            jiff::civil::Date::new(y, m as i8, 1).map_err(|_| bad())?;
            Ok(format!("{}-{}", &d[0..4], &d[4..6]))
        }
        n if n >= 8 => {
            let (y, m, dd) = (num(&d[0..4]), num(&d[4..6]), num(&d[6..8]));
            jiff::civil::Date::new(y, m as i8, dd as i8).map_err(|_| bad())?;
            Ok(format!("{}-{}-{}", &d[0..4], &d[4..6], &d[6..8]))
        }
        _ => Err(bad()),
    }
}

/// HL7 TM (`HH[MM[SS[.S[S[S[S]]]]]][+/-ZZZZ]`) to a FHIR time (`hh:mm:ss[.s]`):
/// missing minutes and seconds are zero. A FHIR time has no zone, so an offset
/// after the time is dropped.
pub(crate) fn hl7_time(s: &str) -> Result<String, String> {
    let s = s.split('^').next().unwrap_or("").trim();
    let bad = || format!("`{s}` is not an HL7 time, expected HH[MM[SS[.SSSS]]]");
    let t = match s.find(['+', '-']) {
        Some(at) => {
            let zone = &s[at + 1..];
            if zone.len() != 4 || !zone.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            &s[..at]
        }
        None => s,
    };
    let (hms, frac) = match t.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (t, None),
    };
    if !hms.bytes().all(|b| b.is_ascii_digit()) || !matches!(hms.len(), 2 | 4 | 6) {
        return Err(bad());
    }
    let part = |i: usize| hms.get(i..i + 2).map_or(0, num);
    let (h, m, sec) = (part(0), part(2), part(4));
    if h > 23 || m > 59 || sec > 59 {
        return Err(bad());
    }
    let mut out = format!("{h:02}:{m:02}:{sec:02}");
    if let Some(frac) = frac {
        if hms.len() != 6
            || frac.is_empty()
            || frac.len() > 4
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        out.push('.');
        out.push_str(frac);
    }
    Ok(out)
}

/// A number of at most 4 ASCII digits (already checked).
fn num(s: &str) -> i16 {
    s.bytes().fold(0i16, |acc, b| {
        acc.saturating_mul(10).saturating_add((b - b'0') as i16)
    })
}

/// HL7 TS/DTM to a FHIR dateTime. Date-only values stay dates; a time gets seconds
/// and an offset: the explicit `+hhmm` of the value when present, otherwise the
/// offset of `tz` at that local time (GMT or BST for Europe/London).
pub(crate) fn hl7_datetime(s: &str, tz: &TimeZone) -> Result<String, String> {
    let s = s.split('^').next().unwrap_or("").trim();
    let bad =
        || format!("`{s}` is not an HL7 timestamp, expected YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]");
    let b = s.as_bytes();
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    let mut rest = &s[digits..];
    let mut frac = "";
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || digits != 14 {
            return Err(bad());
        }
        frac = &r[..n];
        rest = &r[n..];
    }
    let offset = if rest.is_empty() {
        None
    } else {
        let sign = match rest.as_bytes()[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return Err(bad()),
        };
        let o = &rest[1..];
        if o.len() != 4 || !o.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        let (h, m) = (num(&o[0..2]), num(&o[2..4]));
        if h > 14 || m > 59 {
            return Err(bad());
        }
        Some(sign * (h as i32 * 3600 + m as i32 * 60))
    };
    let d = &s[..digits];
    match digits {
        4 | 6 | 8 if frac.is_empty() => return hl7_date(d),
        10 | 12 | 14 => {}
        _ => return Err(bad()),
    }
    let (y, mo, dd) = (num(&d[0..4]), num(&d[4..6]), num(&d[6..8]));
    // FHIR has no year 0000
    if y == 0 {
        return Err(bad());
    }
    let h = num(&d[8..10]);
    let mi = if digits >= 12 { num(&d[10..12]) } else { 0 };
    let sec = if digits >= 14 { num(&d[12..14]) } else { 0 };
    let civil = jiff::civil::DateTime::new(y, mo as i8, dd as i8, h as i8, mi as i8, sec as i8, 0)
        .map_err(|_| bad())?;
    // without an explicit offset, local time in `tz`; a time in the spring-forward
    // gap moves forward (02:30 BST for 01:30 on the last Sunday of March)
    let (civil, offset_secs) = match offset {
        Some(o) => (civil, o),
        None => match civil.to_zoned(tz.clone()) {
            // a local mean time before standard time (London until 1847:
            // -00:01:15) has seconds a FHIR offset cannot say: the same instant
            // in UTC, rather than one 15 s off
            Ok(zoned) if zoned.offset().seconds() % 60 != 0 => {
                (zoned.timestamp().to_zoned(TimeZone::UTC).datetime(), 0)
            }
            Ok(zoned) => (zoned.datetime(), zoned.offset().seconds()),
            // at the end of time (`99991231235959`, the "no end" some PAS
            // send) the zone cannot place it: its offset at the last instant
            // there is
            Err(_) if y == 9999 => (civil, tz.to_offset(jiff::Timestamp::MAX).seconds()),
            Err(_) => return Err(bad()),
        },
    };
    let (y, mo, dd, h, mi, sec) = (
        civil.year(),
        civil.month(),
        civil.day(),
        civil.hour(),
        civil.minute(),
        civil.second(),
    );
    let sign = if offset_secs < 0 { '-' } else { '+' };
    let abs = offset_secs.unsigned_abs();
    // written by hand: this runs for every timestamp of every message
    let mut out = String::with_capacity(32);
    push_digits(&mut out, y as u32, 4);
    out.push('-');
    push_digits(&mut out, mo as u32, 2);
    out.push('-');
    push_digits(&mut out, dd as u32, 2);
    out.push('T');
    push_digits(&mut out, h as u32, 2);
    out.push(':');
    push_digits(&mut out, mi as u32, 2);
    out.push(':');
    push_digits(&mut out, sec as u32, 2);
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    out.push(sign);
    push_digits(&mut out, abs / 3600, 2);
    out.push(':');
    push_digits(&mut out, (abs % 3600) / 60, 2);
    Ok(out)
}

/// Appends `n` zero-padded to `width` digits (`n` has at most `width` digits here).
fn push_digits(out: &mut String, n: u32, width: u32) {
    let mut div = 10u32.pow(width.saturating_sub(1));
    let mut n = n % (div * 10);
    while div > 0 {
        out.push(char::from(b'0' + (n / div) as u8));
        n %= div;
        div /= 10;
    }
}

/// The JSON text of an HL7 NM: the decimal with the digits as sent, in JSON's
/// grammar. FHIR's decimal keeps its precision (`1.10` is not `1.1`: the number of
/// decimals a lab reports is its method's precision), so nothing goes through
/// `f64`: a `+` is dropped, leading zeros of the whole part are dropped (JSON
/// allows none), `.5` is `0.5`, `140.` (which NM allows) is the integer `140`,
/// and a zero has no sign. Trailing zeros and any number of digits are kept.
/// `None` when the text is not a number (exponents are not NM).
pub(crate) fn number_text(s: &str) -> Option<NumberText> {
    let t = s.trim();
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (int, frac) = match body.find('.') {
        // `140.` is an integer
        Some(p) if p + 1 == body.len() && p > 0 => (&body[..p], None),
        Some(p) => (&body[..p], Some(&body[p + 1..])),
        None => (body, None),
    };
    let ok_int = !int.is_empty() && int.bytes().all(|b| b.is_ascii_digit());
    let ok_frac = frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
    let ok_lead = int.is_empty() && frac.is_some_and(|f| !f.is_empty());
    if !((ok_int || ok_lead) && ok_frac) {
        return None;
    }
    let int = match int.trim_start_matches('0') {
        "" => "0",
        rest => rest,
    };
    let zero = int == "0" && frac.is_none_or(|f| f.bytes().all(|b| b == b'0'));
    let sign = neg && !zero;
    let len = usize::from(sign) + int.len() + frac.map_or(0, |f| f.len() + 1);
    // the usual case: the text as sent is already JSON (`11.8`, `3.80`, `-2`):
    // the same length, sign and digits means nothing was dropped or added
    if len == t.len() && neg == sign && !t.starts_with('+') {
        let at = s.len() - s.trim_start().len();
        return Some(NumberText::At(at, at + len));
    }
    let mut out = String::with_capacity(len);
    if sign {
        out.push('-');
    }
    out.push_str(int);
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    Some(NumberText::Owned(out))
}

/// The JSON text of a number: a range of the text it was read from, or new text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NumberText {
    At(usize, usize),
    Owned(String),
}

impl NumberText {
    /// The text, given what [`number_text`] was called with.
    pub(crate) fn text<'s>(&'s self, s: &'s str) -> &'s str {
        match self {
            NumberText::At(a, b) => s.get(*a..*b).unwrap_or(""),
            NumberText::Owned(o) => o,
        }
    }
}

/// A group a `regex_replace` replacement names (`$2`, `${2}`, `$name`) that the
/// regex does not have: the `regex` crate would put nothing there, silently.
fn missing_group(re: &Regex, replacement: &str) -> Option<String> {
    let bytes = replacement.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'$') {
            i += 2;
            continue;
        }
        let (name, next) = if bytes.get(i + 1) == Some(&b'{') {
            match replacement[i + 2..].find('}') {
                Some(end) => (&replacement[i + 2..i + 2 + end], i + 3 + end),
                None => return None,
            }
        } else {
            // as the crate reads it: the longest run of [_0-9A-Za-z]
            let len = replacement[i + 1..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            (&replacement[i + 1..i + 1 + len], i + 1 + len)
        };
        if !name.is_empty() {
            let known = match name.parse::<usize>() {
                Ok(n) => n < re.captures_len(),
                Err(_) => re.capture_names().flatten().any(|n| n == name),
            };
            if !known {
                return Some(name.to_string());
            }
        }
        i = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_naming_a_group_the_regex_lacks_is_found() {
        let re = Regex::new("(a)(?P<b>x)?").unwrap();
        for ok in ["$1", "${1}", "$b", "${b}x", "$$2", "plain", "$0", "$1$b"] {
            assert_eq!(missing_group(&re, ok), None, "{ok}");
        }
        assert_eq!(missing_group(&re, "$3"), Some("3".into()));
        assert_eq!(missing_group(&re, "${c}"), Some("c".into()));
        // `$1x` is group `1x` to the regex crate: none, so empty
        assert_eq!(missing_group(&re, "$1x"), Some("1x".into()));
        let shipped = Regex::new("^([a-z]+/[a-z0-9][a-z0-9.+-]*)$|.*").unwrap();
        assert_eq!(missing_group(&shipped, "$1"), None);
    }

    fn check_nhs(input: &str, expected: Option<&str>) {
        assert_eq!(nhs_number(input).as_deref(), expected, "input {input:?}");
    }

    #[test]
    fn lines_keep_the_layout() {
        // a report's paragraphs and indentation, as sent in TX repetitions
        let report = [
            "",
            "CT HEAD:  ",
            "",
            "  No acute bleed.",
            "   ",
            "",
            "Impression:\t",
            "",
        ];
        assert_eq!(
            lines(&report).as_deref(),
            Some("CT HEAD:\n\n  No acute bleed.\n\n\nImpression:")
        );
        // a text that holds line breaks itself (FT `\\.br\\`), controls at the end
        assert_eq!(
            lines(&["a \n\n b\u{0}", "c"]).as_deref(),
            Some("a\n\n b\nc")
        );
        assert_eq!(lines(&["", "  ", "\n"]), None);
        assert_eq!(lines::<&str>(&[]), None);
    }

    #[test]
    fn nhs_number_modulus_11() {
        check_nhs("9434765919", Some("9434765919"));
        check_nhs("943 476 5919", Some("9434765919"));
        check_nhs("943-476-5919", Some("9434765919"));
        check_nhs("9434765918", None); // wrong check digit
        check_nhs("1234567890", None); // check digit would be 10
        check_nhs("943476591", None); // 9 digits
        check_nhs("94347659190", None);
        check_nhs("94347659a9", None);
        check_nhs("", None);
        check_nhs("4010232137", Some("4010232137"));
        check_nhs("9999999998", None);
        // placeholders that pass modulus 11
        for d in 0..10 {
            let placeholder = d.to_string().repeat(10);
            check_nhs(&placeholder, None);
            assert!(nhs_number_problem(&placeholder).contains("placeholder"));
        }
        assert_eq!(nhs_number_problem("9434765918"), "fails modulus 11");
    }

    fn check_date(input: &str, expected: Result<&str, ()>) {
        assert_eq!(
            hl7_date(input).map_err(|_| ()),
            expected.map(str::to_string),
            "{input:?}"
        );
    }

    #[test]
    fn dates() {
        check_date("19650412", Ok("1965-04-12"));
        check_date("196504", Ok("1965-04"));
        check_date("1965", Ok("1965"));
        check_date("20240229", Ok("2024-02-29"));
        check_date("202402291230", Ok("2024-02-29"));
        check_date("20230229", Err(()));
        check_date("19651304", Err(()));
        check_date("19", Err(()));
        check_date("abc", Err(()));
        check_date("", Err(()));
        check_date("19650412^D", Ok("1965-04-12"));
        check_date("19650412+0100", Ok("1965-04-12"));
        check_date("20261123103000.5+0000", Ok("2026-11-23"));
        // not HL7: the leading digits are not the date meant
        check_date("2026-11-01", Err(()));
        check_date("01/11/2026", Err(()));
        check_date("20261101 ", Ok("2026-11-01"));
        check_date("20261101x", Err(()));
        // a TS whose time is no time: not taken as its date either
        check_date("20261120250000", Err(()));
        check_date("2026112015304", Err(()));
        check_date("20261120153045+1500", Err(()));
        // FHIR has no year 0000
        check_date("0000", Err(()));
        check_date("000001", Err(()));
        check_date("00000101", Err(()));
        check_date("0001", Ok("0001"));
    }

    fn check_dt(input: &str, expected: Result<&str, ()>) {
        let tz = london_tz().unwrap();
        assert_eq!(
            hl7_datetime(input, &tz).map_err(|_| ()),
            expected.map(str::to_string),
            "{input:?}"
        );
    }

    #[test]
    fn datetimes_in_gmt_and_bst() {
        check_dt("20240115093000", Ok("2024-01-15T09:30:00+00:00")); // GMT
        check_dt("20240715093000", Ok("2024-07-15T09:30:00+01:00")); // BST
        check_dt("202407150930", Ok("2024-07-15T09:30:00+01:00"));
        check_dt("2024071509", Ok("2024-07-15T09:00:00+01:00"));
        check_dt("20240715093000.1234", Ok("2024-07-15T09:30:00.1234+01:00"));
        check_dt("20240715093000-0500", Ok("2024-07-15T09:30:00-05:00")); // explicit wins
        check_dt("20240115093000+0000", Ok("2024-01-15T09:30:00+00:00"));
        check_dt("20240715", Ok("2024-07-15"));
        check_dt("202407", Ok("2024-07"));
        // the spring-forward gap (01:30 does not exist on 31 March 2024) moves forward
        check_dt("20240331013000", Ok("2024-03-31T02:30:00+01:00"));
        // the autumn fold (01:30 happens twice on 27 October 2024): the earlier, BST
        check_dt("20241027013000", Ok("2024-10-27T01:30:00+01:00"));
        check_dt("20241315093000", Err(()));
        check_dt("2024071509300", Err(()));
        check_dt("20240715093000+25", Err(()));
        check_dt("20240715093000+2500", Err(()));
        check_dt("x", Err(()));
        check_dt("", Err(()));
        check_dt("0000", Err(()));
        check_dt("00000101120000", Err(()));
        // the "no end" some PAS send: the last instant, GMT in London
        check_dt("99991231235959", Ok("9999-12-31T23:59:59+00:00"));
        // London's local mean time before 1847 (-00:01:15): the same instant in UTC
        check_dt("18000101120000", Ok("1800-01-01T12:01:15+00:00"));
        check_dt("18470101", Ok("1847-01-01"));
    }

    #[test]
    fn numbers() {
        let check = |s: &str, e: Option<&str>| {
            assert_eq!(number_text(s).as_ref().map(|n| n.text(s)), e, "{s:?}")
        };
        check("5", Some("5"));
        check(" 5.30 ", Some("5.30"));
        check("1.10", Some("1.10"));
        check("0.090", Some("0.090"));
        check("-0.5", Some("-0.5"));
        check("+7", Some("7"));
        check(".5", Some("0.5"));
        check("-.50", Some("-0.50"));
        check("007", Some("7"));
        check("00.50", Some("0.50"));
        check("5.", Some("5"));
        check("-5.", Some("-5"));
        check("-0", Some("0"));
        check("-0.00", Some("0.00"));
        check(
            "99999999999999999999999999999999999999",
            Some("99999999999999999999999999999999999999"),
        );
        check(".", None);
        check("-.", None);
        check("1e5", None);
        check("", None);
        check(">5", None);
        check("abc", None);
        check("1.2.3", None);
    }

    #[test]
    fn uuid5_is_deterministic_and_kind_scoped() {
        assert_eq!(uuid5("Patient", "x"), uuid5("Patient", "x"));
        assert_ne!(uuid5("Patient", "x"), uuid5("Encounter", "x"));
        assert_eq!(uuid5("", "x").len(), 36);
    }

    /// What the ORU mapping computed with `regex_replace` before `range_low` and
    /// `range_high` existed: the two must agree on every input.
    fn range_by_regex(s: &str, bound: Bound) -> String {
        let re = match bound {
            Bound::Low => {
                r"^\s*([-+]?[0-9]*\.?[0-9]+)\s*(?:-|\x{2013}|\x{2014}|\s(?:to|TO)\s)\s*[-+]?[0-9]*\.?[0-9]+\s*$|^\s*>=?\s*([0-9]*\.?[0-9]+)\s*$|^.*$"
            }
            Bound::High => {
                r"^\s*[-+]?[0-9]*\.?[0-9]+\s*(?:-|\x{2013}|\x{2014}|\s(?:to|TO)\s)\s*([-+]?[0-9]*\.?[0-9]+)\s*$|^\s*<=?\s*([0-9]*\.?[0-9]+)\s*$|^.*$"
            }
        };
        Regex::new(re)
            .unwrap()
            .replace_all(s, "${1}${2}")
            .into_owned()
    }

    fn check_range(s: &str) {
        // (a reversed range has no bounds: the regex reads them, then they
        // are compared)
        let low = range_by_regex(s, Bound::Low);
        let high = range_by_regex(s, Bound::High);
        let reversed = matches!(
            (low.parse::<f64>(), high.parse::<f64>()),
            (Ok(l), Ok(h)) if l > h
        );
        for (bound, expected) in [(Bound::Low, &low), (Bound::High, &high)] {
            let ours = range_bound(s, bound).unwrap_or("");
            let expected = if reversed { "" } else { expected.as_str() };
            assert_eq!(ours, expected, "{s:?} {bound:?}");
        }
    }

    #[test]
    fn range_bounds() {
        for s in [
            "3.5-5.0",
            " 3.5 - 5.0 ",
            "-5--1",
            "+1-+2",
            ".5-1.",
            "1.-2",
            "1-2-3",
            ">3",
            ">= 3.5",
            "<5",
            "<=.5",
            "< 5",
            ">-3",
            "<+3",
            "135-145",
            "0.0-0.4",
            "",
            "-",
            "abc",
            "3.5",
            "1 - x",
            ">",
            "<=",
            "1..2-3",
            "4.5-",
            "115\u{2013}165",
            "115 \u{2014} 165",
            "-2 to 2",
            "3.5 TO 5.3",
            "3.5to5.3",
            "3.5 to",
            "5.3-3.5",
            "-1--2",
        ] {
            check_range(s);
        }
        assert_eq!(range_bound("-2 to 2", Bound::Low), Some("-2"));
        assert_eq!(range_bound("115\u{2013}165", Bound::High), Some("165"));
        assert_eq!(range_bound("5.3-3.5", Bound::Low), None);
        assert_eq!(range_bound("3.5-5.0", Bound::Low), Some("3.5"));
        assert_eq!(range_bound("3.5-5.0", Bound::High), Some("5.0"));
        assert_eq!(range_bound(">=2", Bound::Low), Some("2"));
        assert_eq!(range_bound(">=2", Bound::High), None);
        // in brackets, as some labs print ranges: the same as without them
        for (bracketed, plain) in [
            ("(3.5-5.3)", "3.5-5.3"),
            ("[ 133 - 146 ]", "133 - 146"),
            ("(>90)", ">90"),
            ("(<5)", "<5"),
            ("()", ""),
        ] {
            for bound in [Bound::Low, Bound::High] {
                assert_eq!(range_bound(bracketed, bound), range_bound(plain, bound));
            }
        }
        assert_eq!(range_bound("(3.5-5.3]", Bound::Low), None);
        assert_eq!(range_bound("(3.5)-5.3", Bound::High), None);
    }

    /// `number_text` against what it promises, checked independently: `None`
    /// exactly when the text is not a decimal; otherwise JSON that `serde_json`
    /// (with `arbitrary_precision`, as built) reads and writes back unchanged,
    /// the same value as the text, and as many decimals as were sent.
    fn check_number_text(s: &str) {
        let t = s.trim();
        let body = t.strip_prefix(['+', '-']).unwrap_or(t);
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        let valid = !body.is_empty()
            && body != "."
            && body.bytes().filter(|&b| b == b'.').count() <= 1
            && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit());
        let got = number_text(s);
        let Some(n) = got.as_ref().map(|n| n.text(s)) else {
            assert!(!valid, "{s:?} is a number");
            return;
        };
        assert!(valid, "{s:?} is not a number, got {n:?}");
        let json: serde_json::Number = serde_json::from_str(n).expect(n);
        assert_eq!(json.to_string(), n, "{s:?}");
        let value = |x: &str| x.parse::<f64>().unwrap_or_else(|_| panic!("{x:?}"));
        let sent = if body.ends_with('.') {
            &t[..t.len() - 1]
        } else {
            t
        };
        assert_eq!(value(n), value(sent), "{s:?}");
        assert_eq!(
            n.split_once('.').map_or(0, |(_, f)| f.len()),
            frac.len(),
            "{s:?}"
        );
    }

    #[test]
    fn number_text_keeps_the_digits_sent() {
        for s in [
            "128",
            "11.8",
            "4.0",
            "3.80",
            "007",
            "+5",
            "-5",
            "-0",
            "+0",
            "0",
            "000",
            "5.",
            ".5",
            "-.5",
            "00.5",
            "-00.50",
            "0.38",
            "100.00",
            "0.0",
            "-0.0",
            "0.00001",
            "0.0001",
            "0.00012",
            "123456789012345",
            "1234567890123456",
            "12345678.1234567",
            "12345678.12345678",
            "999999999999999999",
            "9999999999999999999",
            " 42 ",
            "1.2.3",
            "",
            "-",
            ".",
            "1e5",
            "abc",
            "0.1",
            "0.30000000000000004",
            "1000000000000000.0",
            "99999999999999.9",
            "2.5e",
            "١٢",
            "4.50000000000000000000",
            "0.",
            "-0.",
            "140.",
        ] {
            check_number_text(s);
        }
    }

    proptest::proptest! {
        #[test]
        fn number_text_keeps_value_and_precision(s in "[ +-]?[0-9]{0,20}(\\.[0-9]{0,20})?") {
            check_number_text(&s);
        }

        #[test]
        fn short_decimals_keep_value_and_precision(
            s in "-?0{0,2}[0-9]{0,8}\\.[0-9]{0,7}0{0,3}|-?0?\\.0{0,6}[1-9][0-9]{0,14}"
        ) {
            check_number_text(&s);
        }
    }

    proptest::proptest! {
        #[test]
        fn range_bounds_agree_with_the_regex(s in "[ <>=+.0-9toTO\u{2013}-]{0,14}") {
            check_range(&s);
        }
    }

    #[test]
    fn hl7_time_to_fhir_time() {
        assert_eq!(hl7_time("1230").as_deref(), Ok("12:30:00"));
        assert_eq!(hl7_time("09").as_deref(), Ok("09:00:00"));
        assert_eq!(hl7_time("235959").as_deref(), Ok("23:59:59"));
        assert_eq!(hl7_time("123045.25").as_deref(), Ok("12:30:45.25"));
        assert_eq!(hl7_time(" 1230+0100 ").as_deref(), Ok("12:30:00"));
        assert_eq!(hl7_time("1230-0500").as_deref(), Ok("12:30:00"));
        for bad in [
            "",
            "1",
            "123",
            "2400",
            "1260",
            "123060",
            "12:30",
            "1230.5",
            "123045.",
            "123045.12345",
            "1230+01",
            "abcd",
        ] {
            assert!(hl7_time(bad).is_err(), "{bad:?}");
        }
        // only the first component is read
        assert_eq!(hl7_time("1230^x").as_deref(), Ok("12:30:00"));
    }

    #[test]
    fn split_comparator_takes_the_leading_comparator() {
        assert_eq!(split_comparator("<5"), ("<", "5"));
        assert_eq!(split_comparator(" >= 90 "), (">=", "90"));
        assert_eq!(split_comparator("<=0.5"), ("<=", "0.5"));
        assert_eq!(split_comparator(">"), (">", ""));
        assert_eq!(split_comparator("4.5"), ("", "4.5"));
        assert_eq!(split_comparator("5<6"), ("", "5<6"));
        assert_eq!(split_comparator("=5"), ("", "=5"));
        assert_eq!(split_comparator(""), ("", ""));
    }

    #[test]
    fn base64_encodes_the_utf8_bytes() {
        assert_eq!(base64("Line one\r\nLine two"), "TGluZSBvbmUNCkxpbmUgdHdv");
        assert_eq!(base64("tŷ"), "dMW3");
        assert_eq!(base64(""), "");
    }

    #[test]
    fn base64_check_drops_white_space_and_refuses_what_does_not_decode() {
        assert_eq!(
            base64_check("JVBERi0x\r\nLjQK").as_deref(),
            Some("JVBERi0xLjQK")
        );
        assert_eq!(base64_check("JVBERi0=").as_deref(), Some("JVBERi0="));
        assert_eq!(base64_check("!!!notbase64"), None);
        assert_eq!(base64_check("JVBERi0xLj"), None, "cut short");
    }

    #[test]
    fn hex_to_base64_decodes_hex_and_refuses_the_rest() {
        // `%PDF-` in hex, upper and lower case, wrapped
        assert_eq!(hex_to_base64("255044462D").as_deref(), Some("JVBERi0="));
        assert_eq!(hex_to_base64("2550 4446\n2d").as_deref(), Some("JVBERi0="));
        assert_eq!(hex_to_base64("").as_deref(), Some(""));
        assert_eq!(hex_to_base64("255"), None);
        assert_eq!(hex_to_base64("25XY"), None);
        assert_eq!(hex_to_base64("2-50"), None);
    }

    #[test]
    fn url_encode_keeps_unreserved_and_encodes_the_rest() {
        assert_eq!(url_encode("ral-01.x_y~z"), "ral-01.x_y~z");
        assert_eq!(url_encode("st  mary's"), "st%20%20mary%27s");
        assert_eq!(url_encode("tŷ"), "t%C5%B7");
        assert_eq!(url_encode(""), "");
    }

    #[test]
    fn uuid5_is_rfc_v5() {
        for (kind, value) in [
            ("Patient", "nhs|9434765919"),
            ("", ""),
            ("", "x"),
            ("Observation", &"long key ".repeat(40)),
            ("Encounter", "visit|RAL|V1 é"),
        ] {
            let name = if kind.is_empty() {
                value.to_string()
            } else {
                format!("{kind}|{value}")
            };
            let expected = uuid::Uuid::new_v5(&ID_NAMESPACE, name.as_bytes());
            assert_eq!(
                uuid5(kind, value),
                expected.hyphenated().to_string(),
                "{name}"
            );
        }
    }

    fn check_build(name: &str, args: &[&str], expected_err: Option<&str>) {
        let args: Vec<(String, usize)> = args.iter().map(|a| (a.to_string(), 0)).collect();
        let r = build(name, &args, &["gender".to_string()]);
        match expected_err {
            None => assert!(r.is_ok(), "{name}: {:?}", r.err()),
            Some(e) => assert!(
                r.as_ref().err().is_some_and(|m| m.contains(e)),
                "{name}: {:?}",
                r.err()
            ),
        }
    }

    #[test]
    fn building_transforms() {
        check_build("trim", &[], None);
        check_build("trim", &["x"], Some("takes 0 arguments"));
        check_build("lookup", &["gender"], None);
        check_build(
            "lookup",
            &["sex"],
            Some("unknown table `sex`, expected one of gender"),
        );
        check_build("datetime", &["Europe/London"], None);
        check_build("datetime", &["Mars/Olympus"], Some("unknown time zone"));
        check_build("regex_replace", &["[", "x"], Some("bad regex"));
        check_build("regex_replace", &["\\s+", ""], None);
        check_build(
            "uppercse",
            &[],
            Some("unknown transform `uppercse`, expected one of trim"),
        );
        check_build("XPN", &[], None);
    }
}
