//! The `when` condition of a route: a tiny boolean language over the *document*
//! (the FHIR Bundle the route's mapping produced) and the message's header. No
//! scripting: fields are a fixed list of named accessors, the only transform is a
//! table lookup.
//!
//! ```text
//! cond   := and ( 'or' and )*
//! and    := not ( 'and' not )*
//! not    := 'not' not | atom
//! atom   := '(' cond ')'
//!         | 'empty' '(' value ')'                     no non-blank value
//!         | value ( '=' | '!=' ) value
//!         | value [ 'not' ] 'in' '(' value ( ',' value )* ')'
//!         | value                                     at least one non-blank value
//! value  := ( field | 'literal' ) ( '|' 'lookup' '(' table ')' )*
//! ```
//!
//! A value is a list of strings (a Bundle may hold several Patients, a Patient
//! several GP references): `a = b` holds when *some* value of `a` equals *some* value
//! of `b`, and `a != b` is `not (a = b)`. Comparisons ignore surrounding spaces and
//! ASCII case (codes arrive in either case). `lookup(t)` maps each value through table
//! `t` (keys compared the same way) and drops values the table does not list.
//!
//! # Invariants
//! - Parsing reports the byte offset of the problem in the condition text, so the
//!   loader can point at `file:line:col` inside the TOML string.
//! - Table names are checked by the loader ([`Condition::tables`]) once every file
//!   is read; evaluation of an unknown table (impossible after loading) yields no value.
//! - Evaluation never panics, whatever the document.

use std::collections::BTreeMap;

#[cfg(test)]
use super::document::Document;
use super::document::{Facts, Field};

/// A parsed `when` condition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Condition {
    Or(Vec<Condition>),
    And(Vec<Condition>),
    Not(Box<Condition>),
    Empty(Value),
    NonEmpty(Value),
    Eq(Value, Value),
    In(Value, Vec<Value>),
}

/// A value: a field or literal, then lookups.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Value {
    pub base: Base,
    /// Table names with their byte offset in the condition text.
    pub lookups: Vec<(String, usize)>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Base {
    Field(Field),
    Literal(String),
}

/// A problem at a byte offset of the condition text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConditionError {
    pub offset: usize,
    /// Bytes to underline (at least 1).
    pub len: usize,
    pub message: String,
}

/// Lookup tables by name; keys are normalised (trimmed, ASCII upper case).
pub(crate) type Tables = BTreeMap<String, BTreeMap<String, String>>;

/// Normalises a value for comparison and table keys.
pub(crate) fn normalise(s: &str) -> String {
    s.trim().to_ascii_uppercase()
}

impl Condition {
    /// Parses condition text.
    pub fn parse(text: &str) -> Result<Condition, ConditionError> {
        let tokens = lex(text)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            end: text.len(),
        };
        let cond = p.or()?;
        match p.peek() {
            None => Ok(cond),
            Some(t) => Err(p.error_at(
                t.offset,
                format!(
                    "unexpected {}, expected `and`, `or` or the end of the condition",
                    t.kind.describe()
                ),
            )),
        }
    }

    /// Every table the condition looks up, with its byte offset.
    pub fn tables(&self) -> Vec<(&str, usize)> {
        let mut out = Vec::new();
        self.visit_values(&mut |v: &Value| {
            for (name, offset) in &v.lookups {
                out.push((name.as_str(), *offset));
            }
        });
        out
    }

    fn visit_values<'a>(&'a self, f: &mut impl FnMut(&'a Value)) {
        match self {
            Condition::Or(cs) | Condition::And(cs) => cs.iter().for_each(|c| c.visit_values(f)),
            Condition::Not(c) => c.visit_values(f),
            Condition::Empty(v) | Condition::NonEmpty(v) => f(v),
            Condition::Eq(a, b) => {
                f(a);
                f(b);
            }
            Condition::In(a, bs) => {
                f(a);
                bs.iter().for_each(&mut *f);
            }
        }
    }

    /// Evaluates the condition against what is known of the message and document.
    pub fn eval(&self, facts: &Facts<'_>, tables: &Tables) -> bool {
        match self {
            Condition::Or(cs) => cs.iter().any(|c| c.eval(facts, tables)),
            Condition::And(cs) => cs.iter().all(|c| c.eval(facts, tables)),
            Condition::Not(c) => !c.eval(facts, tables),
            Condition::Empty(v) => v.eval(facts, tables).is_empty(),
            Condition::NonEmpty(v) => !v.eval(facts, tables).is_empty(),
            Condition::Eq(a, b) => intersects(&a.eval(facts, tables), &b.eval(facts, tables)),
            Condition::In(a, bs) => {
                let left = a.eval(facts, tables);
                bs.iter().any(|b| intersects(&left, &b.eval(facts, tables)))
            }
        }
    }
}

fn intersects(a: &[String], b: &[String]) -> bool {
    a.iter().any(|x| b.contains(x))
}

impl Value {
    /// The normalised, non-blank values.
    fn eval(&self, facts: &Facts<'_>, tables: &Tables) -> Vec<String> {
        let mut values: Vec<String> = match &self.base {
            Base::Literal(s) => vec![normalise(s)],
            Base::Field(f) => facts.values(*f).iter().map(|s| normalise(s)).collect(),
        };
        for (name, _) in &self.lookups {
            let Some(table) = tables.get(name) else {
                return Vec::new();
            };
            let known = values.iter().filter(|v| !v.is_empty()).count();
            values = values
                .iter()
                .filter(|v| !v.is_empty())
                .filter_map(|v| table.get(v).map(|s| normalise(s)))
                .collect();
            if values.len() < known {
                let mut misses = facts.misses.borrow_mut();
                if !misses.iter().any(|m| m == name) {
                    misses.push(name.clone());
                }
            }
        }
        values.retain(|v| !v.is_empty());
        values.dedup();
        values
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Word(String),
    Str(String),
    LParen,
    RParen,
    Comma,
    Pipe,
    Eq,
    Ne,
}

impl Kind {
    fn describe(&self) -> String {
        match self {
            Kind::Word(w) => format!("`{w}`"),
            Kind::Str(s) => format!("'{s}'"),
            Kind::LParen => "`(`".into(),
            Kind::RParen => "`)`".into(),
            Kind::Comma => "`,`".into(),
            Kind::Pipe => "`|`".into(),
            Kind::Eq => "`=`".into(),
            Kind::Ne => "`!=`".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    offset: usize,
}

fn lex(text: &str) -> Result<Vec<Token>, ConditionError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        let kind = match c {
            c if c.is_whitespace() => {
                chars.next();
                continue;
            }
            '(' => Kind::LParen,
            ')' => Kind::RParen,
            ',' => Kind::Comma,
            '|' => Kind::Pipe,
            '=' => Kind::Eq,
            '!' => {
                chars.next();
                if chars.peek().map(|&(_, c)| c) != Some('=') {
                    return Err(ConditionError {
                        offset: i,
                        len: 1,
                        message: "unexpected `!`, expected `!=` (use `not` for negation)".into(),
                    });
                }
                Kind::Ne
            }
            '\'' => {
                chars.next();
                let start = i + 1;
                let mut end = None;
                for (j, c) in chars.by_ref() {
                    if c == '\'' {
                        end = Some(j);
                        break;
                    }
                }
                let Some(end) = end else {
                    return Err(ConditionError {
                        offset: i,
                        len: text.len() - i,
                        message: "unterminated string literal, expected a closing `'`".into(),
                    });
                };
                tokens.push(Token {
                    kind: Kind::Str(text[start..end].to_string()),
                    offset: i,
                });
                continue;
            }
            c if c.is_ascii_alphanumeric() || c == '_' => {
                let mut end = i;
                while let Some(&(j, c)) = chars.peek() {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                        end = j + c.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push(Token {
                    kind: Kind::Word(text[i..end].to_string()),
                    offset: i,
                });
                continue;
            }
            other => {
                return Err(ConditionError {
                    offset: i,
                    len: other.len_utf8(),
                    message: format!(
                        "unexpected character `{other}`, expected a field, a 'literal', `(`, `=`, `!=`, `in`, `and`, `or` or `not`"
                    ),
                })
            }
        };
        chars.next();
        tokens.push(Token { kind, offset: i });
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// Offset of the end of the text, for "unexpected end" errors.
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn peek_word(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token { kind: Kind::Word(w), .. }) if w == word)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    fn error_at(&self, offset: usize, message: String) -> ConditionError {
        ConditionError {
            offset,
            len: 1,
            message,
        }
    }

    /// An error at the current token (or the end of the text).
    fn expected(&self, what: &str) -> ConditionError {
        match self.peek() {
            Some(t) => self.error_at(
                t.offset,
                format!("unexpected {}, expected {what}", t.kind.describe()),
            ),
            None => self.error_at(
                self.end,
                format!("unexpected end of condition, expected {what}"),
            ),
        }
    }

    fn expect(&mut self, kind: Kind, what: &str) -> Result<(), ConditionError> {
        match self.peek() {
            Some(t) if t.kind == kind => {
                self.pos += 1;
                Ok(())
            }
            _ => Err(self.expected(what)),
        }
    }

    fn or(&mut self) -> Result<Condition, ConditionError> {
        let mut items = vec![self.and()?];
        while self.peek_word("or") {
            self.next();
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Condition::Or(items)
        })
    }

    fn and(&mut self) -> Result<Condition, ConditionError> {
        let mut items = vec![self.not()?];
        while self.peek_word("and") {
            self.next();
            items.push(self.not()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Condition::And(items)
        })
    }

    fn not(&mut self) -> Result<Condition, ConditionError> {
        if self.peek_word("not") {
            self.next();
            return Ok(Condition::Not(Box::new(self.not()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Condition, ConditionError> {
        if matches!(
            self.peek(),
            Some(Token {
                kind: Kind::LParen,
                ..
            })
        ) {
            self.next();
            let inner = self.or()?;
            self.expect(Kind::RParen, "`)`")?;
            return Ok(inner);
        }
        if self.peek_word("empty")
            && matches!(
                self.tokens.get(self.pos + 1),
                Some(Token {
                    kind: Kind::LParen,
                    ..
                })
            )
        {
            self.next();
            self.next();
            let v = self.value()?;
            self.expect(Kind::RParen, "`)`")?;
            return Ok(Condition::Empty(v));
        }
        let left = self.value()?;
        match self.peek().map(|t| t.kind.clone()) {
            Some(Kind::Eq) => {
                self.next();
                Ok(Condition::Eq(left, self.value()?))
            }
            Some(Kind::Ne) => {
                self.next();
                Ok(Condition::Not(Box::new(Condition::Eq(left, self.value()?))))
            }
            Some(Kind::Word(w)) if w == "in" => {
                self.next();
                Ok(Condition::In(left, self.list()?))
            }
            Some(Kind::Word(w))
                if w == "not"
                    && matches!(
                        self.tokens.get(self.pos + 1),
                        Some(Token { kind: Kind::Word(w), .. }) if w == "in"
                    ) =>
            {
                self.next();
                self.next();
                Ok(Condition::Not(Box::new(Condition::In(left, self.list()?))))
            }
            _ => Ok(Condition::NonEmpty(left)),
        }
    }

    fn list(&mut self) -> Result<Vec<Value>, ConditionError> {
        self.expect(Kind::LParen, "`(` to open the list after `in`")?;
        let mut items = vec![self.value()?];
        loop {
            match self.peek().map(|t| &t.kind) {
                Some(Kind::Comma) => {
                    self.next();
                    items.push(self.value()?);
                }
                Some(Kind::RParen) => {
                    self.next();
                    return Ok(items);
                }
                _ => return Err(self.expected("`,` or `)`")),
            }
        }
    }

    fn value(&mut self) -> Result<Value, ConditionError> {
        const WHAT: &str = "a field such as `patient.gp_practice` or a 'literal'";
        let base = match self.peek().cloned() {
            Some(Token {
                kind: Kind::Str(s), ..
            }) => Base::Literal(s),
            Some(Token {
                kind: Kind::Word(w),
                offset,
            }) => match Field::from_name(&w) {
                Some(f) => Base::Field(f),
                None => {
                    let hint = if w.contains('.') {
                        String::new()
                    } else {
                        format!(" (a literal is quoted: '{w}')")
                    };
                    return Err(ConditionError {
                        offset,
                        len: w.len(),
                        message: format!(
                            "unknown field `{w}`{hint}, expected one of {}",
                            Field::list()
                        ),
                    });
                }
            },
            _ => return Err(self.expected(WHAT)),
        };
        self.next();
        let mut lookups = Vec::new();
        while matches!(
            self.peek(),
            Some(Token {
                kind: Kind::Pipe,
                ..
            })
        ) {
            self.next();
            match self.peek() {
                Some(Token {
                    kind: Kind::Word(w),
                    ..
                }) if w == "lookup" => {
                    self.next();
                }
                Some(t) => {
                    return Err(self.error_at(
                        t.offset,
                        format!(
                            "unknown transform {}, expected `lookup(table)`",
                            t.kind.describe()
                        ),
                    ))
                }
                None => return Err(self.expected("`lookup(table)` after `|`")),
            }
            self.expect(Kind::LParen, "`(` after `lookup`")?;
            match self.peek() {
                Some(Token {
                    kind: Kind::Word(w),
                    offset,
                }) if !w.contains('.') => {
                    lookups.push((w.clone(), *offset));
                    self.next();
                }
                _ => return Err(self.expected("a table name such as `practice_ics`")),
            }
            self.expect(Kind::RParen, "`)` after the table name")?;
        }
        Ok(Value { base, lookups })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text`; on success renders the tree, on failure `offset: message`.
    fn check(text: &str, expected: &str) {
        let got = match Condition::parse(text) {
            Ok(c) => render(&c),
            Err(e) => format!("{}: {}", e.offset, e.message),
        };
        assert_eq!(got, expected, "condition: {text}");
    }

    fn render(c: &Condition) -> String {
        let v = |v: &Value| {
            let mut s = match &v.base {
                Base::Field(f) => f.name().to_string(),
                Base::Literal(l) => format!("'{l}'"),
            };
            for (t, _) in &v.lookups {
                s.push_str(&format!("|{t}"));
            }
            s
        };
        match c {
            Condition::Or(cs) => format!(
                "or({})",
                cs.iter().map(render).collect::<Vec<_>>().join(", ")
            ),
            Condition::And(cs) => format!(
                "and({})",
                cs.iter().map(render).collect::<Vec<_>>().join(", ")
            ),
            Condition::Not(c) => format!("not({})", render(c)),
            Condition::Empty(x) => format!("empty({})", v(x)),
            Condition::NonEmpty(x) => format!("present({})", v(x)),
            Condition::Eq(a, b) => format!("{} = {}", v(a), v(b)),
            Condition::In(a, bs) => format!(
                "{} in [{}]",
                v(a),
                bs.iter().map(v).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    #[test]
    fn parses_the_grammar() {
        check(
            "patient.gp_practice | lookup(practice_ics) = 'HWE'",
            "patient.gp_practice|practice_ics = 'HWE'",
        );
        check(
            "not empty(patient.nhs_number) and message.type in ('ADT^A01', 'ADT^A08')",
            "and(not(empty(patient.nhs_number)), message.type in ['ADT^A01', 'ADT^A08'])",
        );
        check(
            "a_or_b_is_not_a_keyword = 'x'",
            "0: unknown field `a_or_b_is_not_a_keyword` (a literal is quoted: 'a_or_b_is_not_a_keyword'), expected one of `patient.nhs_number`, `patient.gp_practice`, `patient.gp`, `patient.postcode`, `document.resource_types`, `message.type`, `message.code`, `message.trigger`, `message.sending_application`, `message.sending_facility`, `message.origin`",
        );
        check(
            "patient.nhs_number or (message.code != 'ORU' and patient.postcode not in ('AL1 1AA'))",
            "or(present(patient.nhs_number), and(not(message.code = 'ORU'), not(patient.postcode in ['AL1 1AA'])))",
        );
        check("not not patient.gp", "not(not(present(patient.gp)))");
        check(
            "a = b or c = d and e = f",
            "0: unknown field `a` (a literal is quoted: 'a'), expected one of `patient.nhs_number`, `patient.gp_practice`, `patient.gp`, `patient.postcode`, `document.resource_types`, `message.type`, `message.code`, `message.trigger`, `message.sending_application`, `message.sending_facility`, `message.origin`",
        );
    }

    #[test]
    fn reports_the_offset_of_each_problem() {
        check(
            "patient.gp_practice = 'HWE",
            "22: unterminated string literal, expected a closing `'`",
        );
        check(
            "patient.gp_practice == 'HWE'",
            "21: unexpected `=`, expected a field such as `patient.gp_practice` or a 'literal'",
        );
        check(
            "patient.gp_practice = ",
            "22: unexpected end of condition, expected a field such as `patient.gp_practice` or a 'literal'",
        );
        check(
            "patient.gp_practice | upper = 'X'",
            "22: unknown transform `upper`, expected `lookup(table)`",
        );
        check(
            "patient.gp_practice in 'X'",
            "23: unexpected 'X', expected `(` to open the list after `in`",
        );
        check(
            "(patient.gp = 'X'",
            "17: unexpected end of condition, expected `)`",
        );
        check(
            "patient.gp = 'X' 'Y'",
            "17: unexpected 'Y', expected `and`, `or` or the end of the condition",
        );
        check(
            "patient.gp ! 'X'",
            "11: unexpected `!`, expected `!=` (use `not` for negation)",
        );
        check(
            "patient.gp = 'X' && 1",
            "17: unexpected character `&`, expected a field, a 'literal', `(`, `=`, `!=`, `in`, `and`, `or` or `not`",
        );
        check(
            "patient.gp_practice | lookup(a.b) = 'X'",
            "29: unexpected `a.b`, expected a table name such as `practice_ics`",
        );
        check(
            "patient.gp = HWE",
            "13: unknown field `HWE` (a literal is quoted: 'HWE'), expected one of `patient.nhs_number`, `patient.gp_practice`, `patient.gp`, `patient.postcode`, `document.resource_types`, `message.type`, `message.code`, `message.trigger`, `message.sending_application`, `message.sending_facility`, `message.origin`",
        );
        check("", "0: unexpected end of condition, expected a field such as `patient.gp_practice` or a 'literal'");
    }

    proptest::proptest! {
        /// Any text parses or fails with an offset inside it; parsed conditions
        /// evaluate on any JSON without panicking.
        #[test]
        fn never_panics(text in text(), doc in json()) {
            match Condition::parse(&text) {
                Ok(c) => {
                    let input = crate::route::RouteInput {
                        origin: crate::route::Origin::Unknown,
                        message_code: "ADT",
                        trigger: "A01",
                        sending_application: "PAS",
                        sending_facility: "RAL",
                    };
                    let facts = Facts { input: &input, document: Document::Parsed(&doc), misses: Default::default() };
                    let _ = c.eval(&facts, &Tables::new());
                }
                Err(e) => proptest::prop_assert!(e.offset <= text.len() && text.is_char_boundary(e.offset)),
            }
        }
    }

    /// Random characters, or random sequences of real tokens.
    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let token = proptest::sample::select(vec![
            "patient.gp_practice",
            "patient.nhs_number",
            "document.resource_types",
            "message.type",
            "'HWE'",
            "'Patient'",
            "=",
            "!=",
            "in",
            "not",
            "and",
            "or",
            "empty",
            "(",
            ")",
            ",",
            "|",
            "lookup",
            "t",
            "'",
            "!",
        ]);
        prop_oneof![
            "[a-z_. ()|=!,'A-Z0-9-]{0,60}",
            "\\PC{0,40}",
            proptest::collection::vec(token, 0..14).prop_map(|t| t.join(" ")),
        ]
    }

    /// Small JSON values shaped loosely like a Bundle.
    fn json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            "[A-Za-z0-9:/.-]{0,12}".prop_map(serde_json::Value::from),
            Just(serde_json::Value::from("Patient")),
            Just(serde_json::Value::from(super::super::ODS_SYSTEM)),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("resourceType".to_string()),
                        Just("entry".to_string()),
                        Just("resource".to_string()),
                        Just("generalPractitioner".to_string()),
                        Just("identifier".to_string()),
                        Just("system".to_string()),
                        Just("value".to_string()),
                        Just("reference".to_string()),
                        Just("fullUrl".to_string()),
                        Just("address".to_string()),
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn lists_tables_with_offsets() {
        let c = Condition::parse(
            "patient.gp_practice | lookup(practice_ics) in ('HWE') or patient.gp | lookup(gp_ics)",
        )
        .unwrap();
        assert_eq!(c.tables(), vec![("practice_ics", 29), ("gp_ics", 77)]);
    }
}
