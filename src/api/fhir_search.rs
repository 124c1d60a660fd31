//! The FHIR search parameters that narrow a `{Type}?patient=` search: token
//! parameters (`code`, `category`, `status`, `clinical-status`, `class`,
//! `type`) and date parameters (`date`, `authored`, `collected`), with FHIR
//! R4's semantics (<https://hl7.org/fhir/R4/search.html>):
//!
//! - a token is `code`, `system|code`, `|code` (no system) or `system|` (any
//!   code of that system), matched against a CodeableConcept's codings, a
//!   Coding, or a plain code;
//! - a date is a prefix (`eq` when none, `ne`, `gt`, `lt`, `ge`, `le`, `sa`,
//!   `eb`) and a FHIR date or dateTime of any precision (`2026`, `2026-03`,
//!   `2026-03-01`, `2026-03-01T09:12`, with seconds, fractions and a zone).
//!   Each is a range (`2026-03` is the whole month); a value with no zone is
//!   in Europe/London, the zone the mappings read HL7 times in. The target's
//!   range is its own precision, or a Period's start to end (an open end is
//!   unbounded);
//! - commas within a value are OR; a parameter given twice is AND
//!   (`date=ge2026-01-01&date=lt2027-01-01`).
//!
//! `_sort` takes one of the type's date parameters, `-` first for newest
//! first (`_sort=-date`).
//!
//! What it does not do: modifiers (`:not`, `:text`, `:missing`: refused),
//! `ap` (approximately: refused), chained parameters, sorting by several keys
//! or by anything but a date. An unknown
//! parameter stays an error in `fhir.rs`, as a typo must not widen a search.
//! Filters run in Rust over the records of one patient that the store
//! returned; they are pure (no I/O).

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};
use jiff::{Timestamp, ToSpan};
use serde_json::Value;

/// What a parameter reads, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Token,
    Date,
}

/// A search parameter of a resource type: its name, kind, the elements it
/// reads (the first present one; `x` ending in `[x]` tries each choice), and
/// what the CapabilityStatement says of it.
struct Param {
    name: &'static str,
    kind: Kind,
    elements: &'static [&'static str],
    documentation: &'static str,
}

const CODE: &str = "token: code, system|code, |code or system|; commas are OR";
const DATE: &str = "date: [eq|ne|gt|lt|ge|le|sa|eb]YYYY[-MM[-DD[Thh:mm[:ss][zone]]]] \
                    (no zone: Europe/London); given twice: both apply";

const fn token(name: &'static str, elements: &'static [&'static str]) -> Param {
    Param {
        name,
        kind: Kind::Token,
        elements,
        documentation: CODE,
    }
}

const fn date(name: &'static str, elements: &'static [&'static str]) -> Param {
    Param {
        name,
        kind: Kind::Date,
        elements,
        documentation: DATE,
    }
}

/// The parameters each type's search takes besides `patient`.
fn params_of(resource_type: &str) -> &'static [Param] {
    const EFFECTIVE: &[&str] = &["effectiveDateTime", "effectivePeriod", "effectiveInstant"];
    // Observation and DiagnosticReport
    const RESULTS: &[Param] = &[
        token("code", &["code"]),
        token("category", &["category"]),
        token("status", &["status"]),
        date("date", EFFECTIVE),
    ];
    const CONDITION: &[Param] = &[
        token("code", &["code"]),
        token("category", &["category"]),
        token("clinical-status", &["clinicalStatus"]),
        token("verification-status", &["verificationStatus"]),
        date("recorded-date", &["recordedDate"]),
    ];
    const ALLERGY_INTOLERANCE: &[Param] = &[
        token("code", &["code"]),
        token("clinical-status", &["clinicalStatus"]),
        token("verification-status", &["verificationStatus"]),
        date("date", &["recordedDate"]),
    ];
    const ENCOUNTER: &[Param] = &[
        token("status", &["status"]),
        token("class", &["class"]),
        token("type", &["type"]),
        date("date", &["period"]),
    ];
    const SERVICE_REQUEST: &[Param] = &[
        token("code", &["code"]),
        token("category", &["category"]),
        token("status", &["status"]),
        date("authored", &["authoredOn"]),
    ];
    const DOCUMENT_REFERENCE: &[Param] = &[
        token("type", &["type"]),
        token("category", &["category"]),
        token("status", &["status"]),
        date("date", &["date"]),
    ];
    const SPECIMEN: &[Param] = &[
        token("type", &["type"]),
        date(
            "collected",
            &["collection.collectedDateTime", "collection.collectedPeriod"],
        ),
    ];
    match resource_type {
        "Observation" | "DiagnosticReport" => RESULTS,
        "Condition" => CONDITION,
        "AllergyIntolerance" => ALLERGY_INTOLERANCE,
        "Encounter" => ENCOUNTER,
        "ServiceRequest" => SERVICE_REQUEST,
        "DocumentReference" => DOCUMENT_REFERENCE,
        "Specimen" => SPECIMEN,
        _ => &[],
    }
}

/// The narrowing parameters of `resource_type` for the CapabilityStatement:
/// `(name, type, documentation)`.
pub(crate) fn capability(
    resource_type: &str,
) -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    params_of(resource_type).iter().map(|p| {
        let kind = match p.kind {
            Kind::Token => "token",
            Kind::Date => "date",
        };
        (p.name, kind, p.documentation)
    })
}

/// One parameter of a request, parsed: a resource matches when any of its
/// values matches (commas are OR).
#[derive(Debug)]
pub(crate) struct Filter {
    elements: &'static [&'static str],
    test: Test,
}

#[derive(Debug)]
enum Test {
    Tokens(Vec<TokenValue>),
    Dates(Vec<(Prefix, Range)>),
}

#[derive(Debug, PartialEq, Eq)]
struct TokenValue {
    /// `None`: any system; `Some("")`: no system.
    system: Option<String>,
    /// `None`: any code (`system|`).
    code: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
}

/// A span of time in milliseconds since the epoch, `[start, end)`; an open
/// end is `i64::MIN` or `i64::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: i64,
    end: i64,
}

/// Parses parameter `name` of a search of `resource_type`: `Ok(None)` when
/// it is not one of the type's narrowing parameters (the caller decides),
/// an error (for a 400) when it is one and its value or modifier is bad.
pub(crate) fn parse(
    resource_type: &str,
    name: &str,
    value: &str,
) -> Result<Option<Filter>, String> {
    let (base, modifier) = match name.split_once(':') {
        Some((base, modifier)) => (base, Some(modifier)),
        None => (name, None),
    };
    let Some(param) = params_of(resource_type).iter().find(|p| p.name == base) else {
        return Ok(None);
    };
    if let Some(modifier) = modifier {
        return Err(format!(
            "search parameter `{base}` with modifier `:{modifier}` is not supported, \
             expected `{base}` alone"
        ));
    }
    let parts = value.split(',').map(str::trim);
    let test = match param.kind {
        Kind::Token => Test::Tokens(
            parts
                .map(|part| parse_token(base, part))
                .collect::<Result<_, _>>()?,
        ),
        Kind::Date => Test::Dates(
            parts
                .map(|part| parse_date_value(base, part))
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(Some(Filter {
        elements: param.elements,
        test,
    }))
}

fn parse_token(name: &str, part: &str) -> Result<TokenValue, String> {
    let value = match part.split_once('|') {
        None if part.is_empty() => {
            return Err(format!(
                "{name} is empty, expected code, system|code, |code or system|"
            ))
        }
        None => TokenValue {
            system: None,
            code: Some(part.to_string()),
        },
        Some((system, code)) => TokenValue {
            system: Some(system.to_string()),
            code: (!code.is_empty()).then(|| code.to_string()),
        },
    };
    if value.code.is_none() && value.system.as_deref().is_none_or(str::is_empty) {
        return Err(format!(
            "{name} `{part}` has neither a code nor a system, expected code, system|code, \
             |code or system|"
        ));
    }
    Ok(value)
}

fn parse_date_value(name: &str, part: &str) -> Result<(Prefix, Range), String> {
    let prefixes = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
    ];
    let (prefix, text) = prefixes
        .iter()
        .find_map(|(p, prefix)| part.strip_prefix(p).map(|rest| (*prefix, rest)))
        .unwrap_or((Prefix::Eq, part));
    if part.starts_with("ap") {
        return Err(format!(
            "{name} prefix `ap` (approximately) is not supported, expected eq, ne, gt, lt, \
             ge, le, sa or eb"
        ));
    }
    let range = date_range(text).ok_or_else(|| {
        format!(
            "{name} `{part}` is not a date, expected an optional prefix (eq, ne, gt, lt, ge, \
             le, sa, eb) and YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss][zone]"
        )
    })?;
    Ok((prefix, range))
}

/// Europe/London, the zone of a date or time given without one; UTC if the
/// machine has no time zone database.
fn local_zone() -> TimeZone {
    TimeZone::get("Europe/London").unwrap_or(TimeZone::UTC)
}

/// The range a FHIR date, dateTime or instant covers at its own precision.
fn date_range(text: &str) -> Option<Range> {
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let mut fields = date.split('-');
    let year: i16 = number(fields.next()?, 4)?;
    let month: Option<i8> = match fields.next() {
        Some(m) => Some(number(m, 2)?),
        None => None,
    };
    let day: Option<i8> = match fields.next() {
        Some(d) => Some(number(d, 2)?),
        None => None,
    };
    if fields.next().is_some() || (day.is_some() && month.is_none()) {
        return None;
    }
    let Some(time) = time else {
        // a date: the whole year, month or day in the local zone
        let start = DateTime::new(year, month.unwrap_or(1), day.unwrap_or(1), 0, 0, 0, 0).ok()?;
        let end = if day.is_some() {
            start.checked_add(1.day()).ok()?
        } else if month.is_some() {
            start.checked_add(1.month()).ok()?
        } else {
            start.checked_add(1.year()).ok()?
        };
        let zone = local_zone();
        return Some(Range {
            start: millis(zone.to_timestamp(start).ok()?),
            end: millis(zone.to_timestamp(end).ok()?),
        });
    };
    let (month, day) = (month?, day?);
    // the zone: `Z`, `+hh:mm` or `-hh:mm` at the end; none is local time
    let (clock, zone) = if let Some(clock) = time.strip_suffix('Z') {
        (clock, TimeZone::UTC)
    } else if let Some(at) = time.rfind(['+', '-']) {
        let (clock, offset) = time.split_at(at);
        (clock, TimeZone::fixed(parse_offset(offset)?))
    } else {
        (time, local_zone())
    };
    let mut parts = clock.split(':');
    let hour: i8 = number(parts.next()?, 2)?;
    let minute: i8 = number(parts.next()?, 2)?;
    let seconds = parts.next();
    if parts.next().is_some() {
        return None;
    }
    let (second, nanos, width_ms) = match seconds {
        None => (0, 0, 60_000),
        Some(s) => match s.split_once('.') {
            None => (number(s, 2)?, 0, 1_000),
            Some((whole, fraction)) => {
                if fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let digits = &fraction[..fraction.len().min(9)];
                let nanos: i32 = format!("{digits:0<9}").parse().ok()?;
                (number(whole, 2)?, nanos, 1)
            }
        },
    };
    let at = DateTime::new(year, month, day, hour, minute, second, nanos).ok()?;
    let start = millis(zone.to_timestamp(at).ok()?);
    Some(Range {
        start,
        end: start.checked_add(width_ms)?,
    })
}

/// `+hh:mm` or `-hh:mm`.
fn parse_offset(text: &str) -> Option<Offset> {
    let sign = match text.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (hours, minutes) = text[1..].split_once(':')?;
    let hours: i32 = number(hours, 2)?;
    let minutes: i32 = number(minutes, 2)?;
    Offset::from_seconds(sign * (hours * 3600 + minutes * 60)).ok()
}

/// Exactly `width` ASCII digits.
fn number<T: std::str::FromStr>(text: &str, width: usize) -> Option<T> {
    if text.len() != width || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn millis(at: Timestamp) -> i64 {
    at.as_millisecond()
}

impl Filter {
    /// Whether `resource` has a value this filter accepts.
    pub(crate) fn matches(&self, resource: &Value) -> bool {
        let values = self
            .elements
            .iter()
            .filter_map(|path| element(resource, path));
        match &self.test {
            Test::Tokens(tokens) => values
                .flat_map(codings)
                .any(|(system, code)| tokens.iter().any(|t| t.matches(system, code))),
            Test::Dates(dates) => values.filter_map(target_range).any(|target| {
                dates
                    .iter()
                    .any(|(prefix, search)| prefix.matches(*search, target))
            }),
        }
    }
}

/// A `_sort` of a `{Type}?patient=` search: by one of the type's date
/// parameters, `-` first for newest first. Resources without that date come
/// last either way; ties keep the store's order.
#[derive(Debug)]
pub(crate) struct Sort {
    elements: &'static [&'static str],
    descending: bool,
}

/// Parses a `_sort` value (`date`, `-date`; one key). An error names the
/// date parameters the type can be sorted by.
pub(crate) fn parse_sort(resource_type: &str, value: &str) -> Result<Sort, String> {
    let dates = || {
        params_of(resource_type)
            .iter()
            .filter(|p| p.kind == Kind::Date)
    };
    let (name, descending) = match value.trim().strip_prefix('-') {
        Some(name) => (name, true),
        None => (value.trim(), false),
    };
    match dates().find(|p| p.name == name) {
        Some(param) => Ok(Sort {
            elements: param.elements,
            descending,
        }),
        None => {
            let names: Vec<String> = dates().map(|p| format!("`{}`", p.name)).collect();
            Err(if names.is_empty() {
                format!("_sort `{value}`: {resource_type} cannot be sorted")
            } else {
                format!(
                    "_sort `{value}` is not supported for {resource_type}, expected {} \
                     (`-` first: newest first)",
                    names.join(" or ")
                )
            })
        }
    }
}

impl Sort {
    /// Sorts `resources` in place.
    pub(crate) fn apply(&self, resources: &mut [Value]) {
        let key = |r: &Value| {
            self.elements
                .iter()
                .filter_map(|path| element(r, path))
                .find_map(target_range)
                .map(|range| range.start)
        };
        resources.sort_by_cached_key(|r| {
            // (Some before None: undated last whichever way)
            match key(r) {
                Some(start) if self.descending => (0, -i128::from(start)),
                Some(start) => (0, i128::from(start)),
                None => (1, 0),
            }
        });
    }
}

/// The element at a dotted path (`collection.collectedDateTime`).
fn element<'a>(resource: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(resource, |v, key| v.get(key))
}

/// Every `(system, code)` an element holds: a CodeableConcept's codings (also
/// in an array of them), a Coding, or a plain code (no system).
fn codings(value: &Value) -> Vec<(Option<&str>, &str)> {
    let mut out = Vec::new();
    collect_codings(value, &mut out);
    out
}

fn collect_codings<'a>(value: &'a Value, out: &mut Vec<(Option<&'a str>, &'a str)>) {
    match value {
        Value::String(code) => out.push((None, code)),
        Value::Array(items) => items.iter().for_each(|item| collect_codings(item, out)),
        Value::Object(object) => {
            if let Some(codings) = object.get("coding").and_then(Value::as_array) {
                codings.iter().for_each(|c| collect_codings(c, out));
            } else if let Some(code) = object.get("code").and_then(Value::as_str) {
                out.push((object.get("system").and_then(Value::as_str), code));
            }
        }
        _ => {}
    }
}

impl TokenValue {
    fn matches(&self, system: Option<&str>, code: &str) -> bool {
        let system_ok = match self.system.as_deref() {
            None => true,
            Some("") => system.is_none(),
            Some(wanted) => system == Some(wanted),
        };
        system_ok && self.code.as_deref().is_none_or(|wanted| wanted == code)
    }
}

/// The range a resource's date element covers: a date, dateTime or instant
/// at its precision, or a Period from its start to its end.
fn target_range(value: &Value) -> Option<Range> {
    match value {
        Value::String(text) => date_range(text),
        Value::Object(period) => {
            let start = period.get("start").and_then(Value::as_str);
            let end = period.get("end").and_then(Value::as_str);
            if start.is_none() && end.is_none() {
                return None;
            }
            Some(Range {
                start: match start {
                    Some(s) => date_range(s)?.start,
                    None => i64::MIN,
                },
                end: match end {
                    Some(e) => date_range(e)?.end,
                    None => i64::MAX,
                },
            })
        }
        _ => None,
    }
}

impl Prefix {
    /// FHIR R4's comparison of a search range and a target range.
    fn matches(self, search: Range, target: Range) -> bool {
        let contains = search.start <= target.start && target.end <= search.end;
        match self {
            Prefix::Eq => contains,
            Prefix::Ne => !contains,
            // the range above the search value overlaps the target
            Prefix::Gt => target.end > search.end,
            // the range below the search value overlaps the target
            Prefix::Lt => target.start < search.start,
            Prefix::Ge => target.end > search.end || contains,
            Prefix::Le => target.start < search.start || contains,
            Prefix::Sa => target.start >= search.end,
            Prefix::Eb => target.end <= search.start,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(resource_type: &str, name: &str, value: &str) -> Filter {
        parse(resource_type, name, value)
            .expect("parses")
            .expect("a narrowing parameter")
    }

    fn observation(effective: Value) -> Value {
        let mut o = json!({
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "laboratory"
            }]}],
            "code": {"coding": [
                {"system": "http://snomed.info/sct", "code": "1022431000000105"},
                {"code": "HB"}
            ]},
        });
        if let Value::Object(e) = effective {
            o.as_object_mut().unwrap().extend(e);
        }
        o
    }

    #[test]
    fn tokens_match_by_system_and_code() {
        let o = observation(json!({}));
        let yes = |name: &str, value: &str| filter("Observation", name, value).matches(&o);
        assert!(yes("code", "1022431000000105"));
        assert!(yes("code", "http://snomed.info/sct|1022431000000105"));
        assert!(yes("code", "http://snomed.info/sct|"));
        assert!(yes("code", "|HB"), "a coding with no system");
        assert!(!yes("code", "|1022431000000105"), "that code has a system");
        assert!(!yes("code", "http://loinc.org|1022431000000105"));
        assert!(!yes("code", "718-7"));
        assert!(yes("code", "718-7,HB"), "commas are OR");
        assert!(yes("category", "laboratory"));
        assert!(!yes("category", "vital-signs"));
        // a plain code (status) and a Coding (Encounter.class)
        assert!(yes("status", "final"));
        assert!(!yes("status", "preliminary"));
        let encounter = json!({"class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}});
        assert!(filter("Encounter", "class", "IMP").matches(&encounter));
        assert!(!filter("Encounter", "class", "AMB").matches(&encounter));
        // no such element: no match
        assert!(!filter("Observation", "code", "x").matches(&json!({})));
    }

    #[test]
    fn dates_compare_as_ranges() {
        let at = observation(json!({"effectiveDateTime": "2026-03-01T09:12:00+00:00"}));
        let yes = |value: &str| filter("Observation", "date", value).matches(&at);
        assert!(yes("2026"));
        assert!(yes("2026-03"));
        assert!(yes("2026-03-01"));
        assert!(yes("eq2026-03-01T09:12Z"));
        assert!(yes("2026-03-01T09:12:00Z"));
        assert!(!yes("2026-03-01T09:13Z"));
        assert!(!yes("2026-02"));
        assert!(yes("ge2026-03-01"));
        assert!(yes("ge2026-02-01"));
        assert!(!yes("ge2026-03-02"));
        assert!(yes("le2026-03-01"));
        assert!(!yes("le2026-02-28"));
        assert!(yes("gt2026-02-28"));
        assert!(!yes("gt2026-03-01"), "on that day, not after it");
        assert!(yes("lt2026-03-02"));
        assert!(!yes("lt2026-03-01"));
        assert!(yes("sa2026-02-28"));
        assert!(!yes("sa2026-03-01"));
        assert!(yes("eb2026-03-02"));
        assert!(yes("ne2026-02"));
        assert!(!yes("ne2026-03"));
        assert!(yes("2025,2026"), "commas are OR");
        // no zone: Europe/London (BST in summer: 00:30 local is 23:30 UTC the day before)
        let summer = observation(json!({"effectiveDateTime": "2026-07-01T23:30:00Z"}));
        assert!(filter("Observation", "date", "2026-07-02").matches(&summer));
        assert!(!filter("Observation", "date", "2026-07-01").matches(&summer));
        assert!(filter("Observation", "date", "2026-07-02T00:30").matches(&summer));
        // a Period: open at the end
        let encounter = json!({"period": {"start": "2026-03-01T08:45:00+00:00"}});
        let e = |value: &str| filter("Encounter", "date", value).matches(&encounter);
        assert!(e("ge2026-06-01"), "still going on");
        assert!(!e("2026-03-01"), "not contained in the day");
        assert!(!e("lt2026-03-01"));
        // (as R4 defines `le`: nothing of it lies before 1 March, and the day
        // does not contain it)
        assert!(!e("le2026-03-01"));
        assert!(e("le2026-03-02"));
        let closed = json!({"period": {"start": "2026-03-01", "end": "2026-03-05"}});
        assert!(filter("Encounter", "date", "2026-03").matches(&closed));
        assert!(!filter("Encounter", "date", "ge2026-03-06").matches(&closed));
    }

    #[test]
    fn bad_values_and_modifiers_are_refused_and_others_are_not_ours() {
        for (name, value) in [
            ("date", "2026-3-1"),
            ("date", "yesterday"),
            ("date", "ap2026"),
            ("date", "2026-03-01T9:00"),
            ("date", "2026-03-01T09:00+1"),
            ("date", "2026--01"),
            ("code", "|"),
            ("code", ""),
            ("code:text", "haemoglobin"),
            ("date:missing", "true"),
        ] {
            let answer = parse("Observation", name, value);
            assert!(answer.is_err(), "{name}={value}: {answer:?}");
        }
        assert!(parse("Observation", "patient", "x").unwrap().is_none());
        assert!(parse("Observation", "performer", "x").unwrap().is_none());
        assert!(parse("Provenance", "code", "x").unwrap().is_none());
        let message = parse("Observation", "date", "ap2026").unwrap_err();
        assert!(message.contains("`ap`"), "{message}");
    }

    #[test]
    fn sorting_by_a_date_newest_first_undated_last() {
        let at = |when: &str| observation(json!({ "effectiveDateTime": when }));
        let mut found = vec![
            at("2026-03-01T09:00:00Z"),
            observation(json!({})),
            at("2026-03-02"),
            at("2025-12-31T23:00:00Z"),
            observation(json!({"effectivePeriod": {"start": "2026-02-01"}})),
        ];
        let order = |found: &[Value]| -> Vec<String> {
            found
                .iter()
                .map(|o| {
                    o.get("effectiveDateTime")
                        .or_else(|| o.get("effectivePeriod").map(|p| &p["start"]))
                        .and_then(Value::as_str)
                        .unwrap_or("-")
                        .to_string()
                })
                .collect()
        };
        parse_sort("Observation", "-date")
            .unwrap()
            .apply(&mut found);
        assert_eq!(
            order(&found),
            [
                "2026-03-02",
                "2026-03-01T09:00:00Z",
                "2026-02-01",
                "2025-12-31T23:00:00Z",
                "-"
            ]
        );
        parse_sort("Observation", "date").unwrap().apply(&mut found);
        assert_eq!(order(&found)[0], "2025-12-31T23:00:00Z");
        assert_eq!(order(&found)[4], "-");
        assert_eq!(
            parse_sort("Observation", "code").unwrap_err(),
            "_sort `code` is not supported for Observation, expected `date` (`-` first: newest first)"
        );
        assert!(parse_sort("Provenance", "date").is_err());
        assert!(parse_sort("ServiceRequest", "-authored").is_ok());
    }

    proptest::proptest! {
        #[test]
        fn no_value_or_resource_makes_it_panic(
            name in "(date|code|_sort|status|date:x)",
            value in "\\PC{0,24}",
            stored in "[-+:TZ0-9.]{0,30}",
        ) {
            if let Ok(Some(filter)) = parse("Observation", &name, &value) {
                let resource = json!({
                    "effectiveDateTime": stored,
                    "effectivePeriod": {"start": stored, "end": value},
                    "code": {"coding": [{"system": value, "code": stored}]},
                });
                let _ = filter.matches(&resource);
            }
            let _ = parse_sort("Observation", &value);
            let _ = date_range(&value);
            let _ = date_range(&stored);
        }
    }

    #[test]
    fn date_ranges_have_their_precision() {
        let r = |text: &str| {
            let range = date_range(text).expect(text);
            range.end - range.start
        };
        assert_eq!(r("2026-03-01T09:12Z"), 60_000);
        assert_eq!(r("2026-03-01T09:12:05Z"), 1_000);
        assert_eq!(r("2026-03-01T09:12:05.250Z"), 1);
        assert_eq!(r("2026-03-01"), 86_400_000);
        // the day the clocks go forward in London has 23 hours
        assert_eq!(r("2026-03-29"), 23 * 3_600_000);
        assert_eq!(r("2026-02"), 28 * 86_400_000);
        assert!(date_range("2026-02-30").is_none());
        assert_eq!(
            date_range("2026-03-01T09:12:00+01:00").unwrap().start,
            date_range("2026-03-01T08:12:00Z").unwrap().start
        );
    }
}
