//! Data-type built-ins: HL7 v2 composites (CX, XPN, XAD, XTN, CE/CWE, XCN, XON) to
//! FHIR R4 elements (Identifier, HumanName, Address, ContactPoint, CodeableConcept,
//! Reference), following the HL7 v2-to-FHIR concept maps and UK Core identifier systems.
//!
//! # Invariants
//! - Output objects never contain empty members; `None` when nothing is left.
//! - Only codes FHIR accepts are emitted for coded elements (`use`, `system`);
//!   anything unknown is left out rather than guessed.

use std::borrow::Cow;

use jiff::tz::TimeZone;

use super::eval::{Node, TrimFast};
use super::json;
use super::transform::{self, DataType};
use crate::hl7::Separators;

pub(crate) const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
pub(crate) const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
pub(crate) const GMC_SYSTEM: &str = "https://fhir.hl7.org.uk/Id/gmc-number";
pub(crate) const GMP_SYSTEM: &str = "https://fhir.hl7.org.uk/Id/gmp-number";

/// One JSON object being written. Members must be added in key order (as
/// `serde_json` sorts them); a member whose value is empty is left out.
struct Obj<'o> {
    out: &'o mut String,
    start: usize,
    n: usize,
}

impl<'o> Obj<'o> {
    fn new(out: &'o mut String) -> Obj<'o> {
        let start = out.len();
        out.push('{');
        Obj { out, start, n: 0 }
    }

    #[inline]
    fn key(&mut self, key: &str) {
        if self.n > 0 {
            self.out.push(',');
        }
        self.n += 1;
        json::push_key(self.out, key);
    }

    /// `key: "value"`, trimmed, unless empty or HL7's `""`.
    #[inline]
    fn str(&mut self, key: &str, value: &str) {
        let v = value.trim_fast();
        if !v.is_empty() && v != "\"\"" {
            let mark = self.out.len();
            self.key(key);
            if !json::push_text(self.out, v) {
                self.out.truncate(mark);
                self.n -= 1;
            }
        }
    }

    /// `key: ["a", "b"]` of the non-empty values, unless there are none.
    fn list<'v>(&mut self, key: &str, values: impl IntoIterator<Item = &'v str>) {
        let mut values = values
            .into_iter()
            .map(str::trim_fast)
            .filter(|v| !v.is_empty() && *v != "\"\"")
            .peekable();
        if values.peek().is_none() {
            return;
        }
        let mark = self.out.len();
        self.key(key);
        self.out.push('[');
        let mut n = 0;
        for v in values {
            let at = self.out.len();
            if n > 0 {
                self.out.push(',');
            }
            if json::push_text(self.out, v) {
                n += 1;
            } else {
                self.out.truncate(at);
            }
        }
        if n == 0 {
            self.out.truncate(mark);
            self.n -= 1;
            return;
        }
        self.out.push(']');
    }

    /// `key: <object>` written by `f`, unless it writes no member.
    fn object(&mut self, key: &str, f: impl FnOnce(&mut Obj<'_>)) {
        let mark = self.out.len();
        self.key(key);
        let mut inner = Obj::new(self.out);
        f(&mut inner);
        if !inner.finish() {
            self.out.truncate(mark);
            self.n -= 1;
        }
    }

    /// Closes the object: false, and nothing left written, when it has no member.
    fn finish(self) -> bool {
        if self.n == 0 {
            self.out.truncate(self.start);
            return false;
        }
        self.out.push('}');
        true
    }
}

/// Applies a built-in to a message element: the FHIR element as JSON text (an
/// object), or `None` when nothing is left of it.
pub(crate) fn build(
    dt: DataType,
    n: Node<'_>,
    seps: &Separators,
    tz: &TimeZone,
    warnings: &mut Vec<String>,
) -> Option<String> {
    let mut text = String::with_capacity(96);
    build_into(dt, n, seps, tz, warnings, &mut text).then_some(text)
}

/// The OID of the NHS number (an HD's universal id, HD.2).
const NHS_NUMBER_OID: &str = "2.16.840.1.113883.2.1.4.1";

/// How senders label an NHS number in CX.4 and CX.5 besides `NHS` (CX.4 may also
/// be `NHS NUMBER`, CX.5 `NH`), as the shipped mappings' `nhs_number` reads them.
const NHS_LABELS: [&str; 4] = ["NHS", "NHSNBR", "NHSNMBR", "NHSNO"];

/// Whether a CX is assigned by the NHS: CX.4 (HD.1) `NHS` or a spelling of
/// it, or its HD.2 the NHS number's OID, or CX.5 `NH` or a spelling of it.
/// Shared with intake's check that a message names its patient
/// (`hl7::check_patient_named`), so both read PID as the mappings do.
pub(crate) fn nhs_assigned(authority: &str, authority_oid: &str, kind: &str) -> bool {
    let label = |l: &str, also: &str| {
        let l = l.trim();
        NHS_LABELS
            .iter()
            .chain([&also])
            .any(|x| l.eq_ignore_ascii_case(x))
    };
    label(authority, "NHS NUMBER") || authority_oid.trim() == NHS_NUMBER_OID || label(kind, "NH")
}

/// [`build`] written at the end of `out`: false, and nothing written, when
/// nothing is left of the element.
pub(crate) fn build_into(
    dt: DataType,
    n: Node<'_>,
    seps: &Separators,
    _tz: &TimeZone,
    warnings: &mut Vec<String>,
    out: &mut String,
) -> bool {
    // an NDL's person is its first component, a CNN whose ID, family and given
    // names are subcomponents (`C1234567&SHAH&RITA`): read as an XCN's components.
    // One sent in XCN's shape (`C1234567^SHAH^RITA`) is read as it is.
    let (dt, n) = match dt {
        DataType::Ndl => match n.part(1) {
            Some(c) if c.raw().contains(seps.subcomponent) => (DataType::Xcn, c),
            _ => (DataType::Xcn, n),
        },
        dt => (dt, n),
    };
    let t = |i: usize| n.part_text(i, seps);
    let mut o = Obj::new(out);
    match dt {
        DataType::Cx => {
            let value = t(1);
            let authority = n.sub_text(4, 1, seps);
            let kind = t(5);
            let nhs = nhs_assigned(&authority, &n.sub_text(4, 2, seps), &kind);
            if nhs {
                match transform::nhs_number(&value) {
                    Some(v) => {
                        o.str("system", NHS_NUMBER_SYSTEM);
                        o.str("value", &v);
                        return o.finish();
                    }
                    None => warnings.push(format!(
                        "NHS number {value} {}; kept as a local identifier",
                        transform::nhs_number_problem(&value)
                    )),
                }
            }
            o.object("assigner", |a| a.str("display", &authority));
            if !kind.is_empty() && !nhs {
                o.object("type", |c| codeable(c, &kind, "", "HL70203", ""));
            }
            o.str("value", &value);
        }
        DataType::Xpn => {
            // XPN-2 is one given name even with spaces in it ("MARY ANN"); XPN-3
            // holds the further given names, which HL7 separates with spaces
            let first = t(2);
            let further = t(3);
            // FN.1 the surname, FN.2 its own prefix (`BERG&VAN DER`): FHIR's family
            // is the whole family name, "VAN DER BERG"
            let surname = n.sub_text(1, 1, seps);
            let prefix = n.sub_text(1, 2, seps);
            match (prefix.trim_fast(), surname.trim_fast()) {
                ("", _) | (_, "") => o.str("family", &surname),
                // a PAS that writes the whole name in FN.1 and the prefix again
                (prefix, surname)
                    if surname
                        .get(..prefix.len())
                        .is_some_and(|head| head.eq_ignore_ascii_case(prefix)) =>
                {
                    o.str("family", surname)
                }
                (prefix, surname) => o.str("family", &format!("{prefix} {surname}")),
            }
            o.list(
                "given",
                std::iter::once(first.as_ref()).chain(further.split_whitespace()),
            );
            // no family and no given name: no name
            if o.n == 0 {
                return o.finish();
            }
            // a name no longer used (a maiden name's end): XPN.12/13 (v2.5+), else
            // the v2.3/2.4 validity range XPN.10 (DR)
            let (start, end) = (t(12), t(13));
            if start.is_empty() && end.is_empty() {
                period(&mut o, &n.sub_text(10, 1, seps), &n.sub_text(10, 2, seps));
            } else {
                period(&mut o, &start, &end);
            }
            o.list("prefix", [t(5).as_ref()]);
            o.list("suffix", [t(4).as_ref(), t(6).as_ref()]);
            o.str("use", name_use(&t(7)));
        }
        DataType::Xad => {
            let code = t(7).to_ascii_uppercase();
            let (use_, type_) = match code.as_str() {
                "H" | "P" => ("home", ""),
                "B" | "O" => ("work", ""),
                "C" => ("temp", ""),
                "BA" | "BAD" => ("old", ""),
                "M" => ("", "postal"),
                "SH" => ("", "physical"),
                _ => ("", ""),
            };
            o.str("city", &t(3));
            o.str("country", &t(6));
            o.str("district", &t(4));
            o.list("line", [n.sub_text(1, 1, seps).as_ref(), t(2).as_ref()]);
            // an address the patient has left is not current: XAD.13/14 (v2.5+),
            // else the v2.3/2.4 validity range XAD.12 (DR)
            let (start, end) = (t(13), t(14));
            let dated = if start.is_empty() && end.is_empty() {
                period(&mut o, &n.sub_text(12, 1, seps), &n.sub_text(12, 2, seps))
            } else {
                period(&mut o, &start, &end)
            };
            o.str("postalCode", &t(5));
            // an address of nothing but its use, type and period is no address
            if o.n == usize::from(dated) {
                o.n = 0;
                return o.finish();
            }
            o.str("type", type_);
            o.str("use", use_);
        }
        DataType::Xtn | DataType::XtnWork => {
            let use_code = t(2).to_ascii_uppercase();
            let equip = t(3).to_ascii_uppercase();
            let email = t(4);
            let is_email =
                use_code == "NET" || equip == "INTERNET" || equip == "X.400" || !email.is_empty();
            let value = if is_email && !email.is_empty() {
                email.into_owned()
            } else {
                let v1 = t(1);
                if !v1.is_empty() {
                    v1.into_owned()
                } else if !t(12).is_empty() {
                    t(12).into_owned()
                } else {
                    // the country code dialled from abroad: `+44` (a number written
                    // `44 20 7946 0123` is not one anyone can dial)
                    let country = t(5);
                    let country = country.trim_fast();
                    let country = match country.strip_prefix("00").unwrap_or(country) {
                        "" => Cow::Borrowed(""),
                        c if c.starts_with('+') => Cow::Owned(c.to_string()),
                        c => Cow::Owned(format!("+{c}")),
                    };
                    let parts = [country, t(6), t(7)];
                    let mut s = parts
                        .iter()
                        .filter(|p| !p.is_empty())
                        .map(|p| p.as_ref())
                        .collect::<Vec<_>>()
                        .join(" ");
                    if !t(8).is_empty() {
                        s.push_str(" ext ");
                        s.push_str(&t(8));
                    }
                    s
                }
            };
            if value.trim_fast().is_empty() {
                return o.finish();
            }
            let system = if is_email || value.contains('@') {
                "email"
            } else {
                match equip.as_str() {
                    "FX" => "fax",
                    "BP" => "pager",
                    "MD" => "other",
                    _ => "phone",
                }
            };
            let use_ = match (use_code.as_str(), equip.as_str()) {
                (_, "CP") | ("PRS", _) => "mobile",
                ("PRN" | "ORN", _) => "home",
                ("WPN", _) => "work",
                ("VHN", _) => "temp",
                ("", _) if dt == DataType::XtnWork => "work",
                _ => "",
            };
            o.str("system", system);
            o.str("use", use_);
            o.str("value", value.trim_fast());
        }
        DataType::Cwe => cwe(&mut o, n, seps),
        DataType::Coding => coding_members(&mut o, &t(1), &t(2), &t(3)),
        // (an NDL is an XCN by here)
        DataType::Xcn | DataType::Ndl => {
            let id = t(1);
            let authority = n.sub_text(9, 1, seps);
            let id_type = t(13);
            // prefix, given name, family name
            let mut display = String::new();
            for part in [t(6), t(3), n.sub_text(2, 1, seps)] {
                if !part.is_empty() {
                    if !display.is_empty() {
                        display.push(' ');
                    }
                    display.push_str(&part);
                }
            }
            o.str("display", &display);
            if !id.is_empty() {
                let (system, value) = practitioner_system(&id, [&authority, &id_type]);
                o.object("identifier", |i| {
                    i.str("system", system);
                    i.str("value", &value);
                });
            }
            // a reference with nothing but its type is no reference
            if o.n == 0 {
                return o.finish();
            }
            o.str("type", "Practitioner");
        }
        DataType::Xon => {
            let name = t(1);
            let code = {
                let c10 = t(10);
                if !c10.is_empty() {
                    c10
                } else if !t(3).is_empty() {
                    t(3)
                } else if is_gp_practice_code(&name) {
                    // a PAS that writes only the practice code, in XON.1
                    Cow::Owned(name.trim().to_string())
                } else {
                    Cow::Borrowed("")
                }
            };
            o.str("display", &name);
            if !code.is_empty() {
                // an ODS code has its shape (`F84003`, `RAL01`, `07L`); a sender's
                // own number for the organisation is kept, but not as one
                let ods = is_ods_shaped(&code);
                o.object("identifier", |i| {
                    if ods {
                        i.str("system", ODS_SYSTEM);
                        i.str("value", &code.to_ascii_uppercase());
                    } else {
                        i.str("value", &code);
                    }
                });
            }
            if o.n == 0 {
                return o.finish();
            }
            o.str("type", "Organization");
        }
    }
    o.finish()
}

/// `period: {start, end}` (FHIR dates) from HL7 dates or timestamps; a value
/// that does not read as a date is left out. Whether anything was written.
fn period(o: &mut Obj<'_>, start: &str, end: &str) -> bool {
    let date = |s: &str| {
        let s = s.trim_fast();
        (!s.is_empty())
            .then(|| transform::hl7_date(s).ok())
            .flatten()
    };
    let (start, end) = (date(start), date(end));
    if start.is_none() && end.is_none() {
        return false;
    }
    // keys in sorted order
    o.object("period", |p| {
        if let Some(end) = &end {
            p.str("end", end);
        }
        if let Some(start) = &start {
            p.str("start", start);
        }
    });
    true
}

/// The shape of an ODS code: 3 to 6 letters and digits, a letter among them
/// (`RAL`, `RAL01`, `07L`, `F84003`); a local number (`12345`) is not one.
fn is_ods_shaped(text: &str) -> bool {
    let b = text.trim().as_bytes();
    (3..=6).contains(&b.len())
        && b.iter().all(u8::is_ascii_alphanumeric)
        && b.iter().any(u8::is_ascii_alphabetic)
}

/// An ODS GP practice code as PAS write it alone: a letter and five digits
/// (`E82061`, `y02345`).
fn is_gp_practice_code(text: &str) -> bool {
    let b = text.trim().as_bytes();
    b.len() == 6 && b[0].is_ascii_alphabetic() && b[1..].iter().all(u8::is_ascii_digit)
}

/// Applies a built-in to plain text (a value already transformed): the text is
/// taken as the identifying part of the composite.
pub(crate) fn build_text(dt: DataType, text: &str) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 32);
    let mut o = Obj::new(&mut out);
    match dt {
        DataType::Cx => o.str("value", text),
        DataType::Xpn | DataType::Xad | DataType::Cwe => o.str("text", text),
        DataType::Xtn | DataType::XtnWork => {
            o.str("system", if text.contains('@') { "email" } else { "phone" });
            if dt == DataType::XtnWork {
                o.str("use", "work");
            }
            o.str("value", text);
        }
        DataType::Coding => o.str("code", text),
        DataType::Xcn | DataType::Ndl => {
            o.str("display", text);
            o.str("type", "Practitioner");
        }
        DataType::Xon => {
            o.str("display", text);
            o.str("type", "Organization");
        }
    }
    o.finish().then_some(out)
}

/// The identifier system of a practitioner code: GMP (`G` + 7 digits), GMC
/// (7 digits, or a consultant code `C` + 7 digits), or none when unknown.
fn practitioner_system(id: &str, hints: [&str; 2]) -> (&'static str, String) {
    let digits7 = |s: &str| s.len() == 7 && s.bytes().all(|b| b.is_ascii_digit());
    let hinted = |what: &str| hints.iter().any(|h| contains_ignore_case(h, what));
    let upper = id.to_ascii_uppercase();
    let consultant = upper.starts_with('C') && digits7(&upper[1..]);
    if hinted("GMP") || (upper.starts_with('G') && digits7(&upper[1..])) {
        (GMP_SYSTEM, upper)
    } else if consultant {
        // a consultant code is `C` + the GMC number, whatever XCN.9 says: the
        // same doctor has one identifier however a sender labels it
        (GMC_SYSTEM, upper[1..].to_string())
    } else if hinted("GMC") || digits7(&upper) {
        (GMC_SYSTEM, upper)
    } else {
        ("", id.to_string())
    }
}

/// Does `haystack` contain the ASCII `needle`, ignoring ASCII case?
fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// CE/CWE/CNE → CodeableConcept members: up to two codings (the identifier and
/// the alternate identifier triplets) and the text.
fn cwe(o: &mut Obj<'_>, n: Node<'_>, seps: &Separators) {
    let t = |i: usize| n.part_text(i, seps);
    // the texts (CWE.2, .5, .9) whole: an `&` in them is the sender's (`U&E`)
    let w = |i: usize| n.whole_text(i, seps);
    let (c1, c2) = (t(1), t(4));
    let has_coding = !c1.is_empty() || !c2.is_empty();
    if has_coding {
        o.key("coding");
        o.out.push('[');
        let mut first = true;
        for (code, display, system) in [(c1, w(2), t(3)), (c2, w(5), t(6))] {
            if code.is_empty() {
                continue;
            }
            if !first {
                o.out.push(',');
            }
            first = false;
            let mut c = Obj::new(o.out);
            coding_members(&mut c, &code, &display, &system);
            c.finish();
        }
        o.out.push(']');
    }
    let text = [w(9), w(2), w(5)].into_iter().find(|s| !s.is_empty());
    if let Some(text) = text {
        o.str("text", &text);
    } else if !has_coding {
        // a bare value that is not a code: keep it as text
        o.str("text", &n.text(seps));
    }
}

/// CodeableConcept members with one coding (when there is a code) and a text.
fn codeable(o: &mut Obj<'_>, code: &str, display: &str, system: &str, text: &str) {
    if !code.is_empty() {
        o.key("coding");
        o.out.push('[');
        let mut c = Obj::new(o.out);
        coding_members(&mut c, code, display, system);
        c.finish();
        o.out.push(']');
    }
    o.str("text", text);
}

/// Coding members (a code is required: nothing without one).
fn coding_members(o: &mut Obj<'_>, code: &str, display: &str, system: &str) {
    if code.is_empty() {
        return;
    }
    o.str("code", &super::eval::collapse_spaces(code));
    o.str("display", display);
    o.str("system", &coding_system(system));
}

/// The FHIR system URI of an HL7 v2 coding system name (table 0396), or "" when unknown.
pub(crate) fn coding_system(name: &str) -> Cow<'static, str> {
    let name = name.trim_fast();
    // every known name is short: upper-cased on the stack, no allocation
    let mut buf = [0u8; 16];
    let Some(b) = buf.get_mut(..name.len()) else {
        return Cow::Borrowed("");
    };
    if name.is_empty() {
        return Cow::Borrowed("");
    }
    b.copy_from_slice(name.as_bytes());
    b.make_ascii_uppercase();
    let Ok(upper) = std::str::from_utf8(b) else {
        return Cow::Borrowed("");
    };
    let s = match upper {
        "SCT" | "SNOMED" | "SNOMEDCT" | "SNOMED-CT" | "SNOMED CT" | "SCT2" => {
            "http://snomed.info/sct"
        }
        "LN" | "LOINC" => "http://loinc.org",
        "I10" | "ICD10" | "ICD-10" | "I10C" => "http://hl7.org/fhir/sid/icd-10",
        "I9" | "I9C" | "ICD9" => "http://hl7.org/fhir/sid/icd-9-cm",
        "UCUM" => "http://unitsofmeasure.org",
        "READ" | "RD2" | "READ2" => "http://read.info/readv2",
        "CTV3" | "RD3" => "http://read.info/ctv3",
        _ => {
            if let Some(table) = upper.strip_prefix("HL7") {
                if table.len() == 4 && table.bytes().all(|b| b.is_ascii_digit()) {
                    let mut uri = String::with_capacity(50);
                    uri.push_str("http://terminology.hl7.org/CodeSystem/v2-");
                    uri.push_str(table);
                    return Cow::Owned(uri);
                }
            }
            ""
        }
    };
    Cow::Borrowed(s)
}

fn name_use(code: &str) -> &'static str {
    const USES: [(&str, &str); 10] = [
        ("L", "official"),
        ("D", "usual"),
        ("A", "usual"),
        ("M", "maiden"),
        ("N", "nickname"),
        ("S", "anonymous"),
        ("B", "old"),
        ("BAD", "old"),
        ("NOUSE", "old"),
        ("T", "usual"),
    ];
    USES.iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(code))
        .map_or("", |(_, u)| u)
}
