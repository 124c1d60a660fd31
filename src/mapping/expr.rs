//! The expression language of mapping files: paths, pipelines of transforms, and
//! the boolean conditions of `when` and path predicates. Parsing only; evaluation
//! is in `eval.rs`.
//!
//! ```text
//! expr      := term ( '|' ( term | transform ) )*      left to right; a term after `|`
//!                                                      is an alternative (first non-empty)
//! term      := path | 'literal' | $macro | ( expr ) | concat(expr, ...)
//!            | concat_ws('sep', expr, ...) | position() | position(expr, ...)
//!            | for('SEG > SEG', expr) | occurrence(SEG)
//! path      := SEG '-' field [ '[' (n | '*' | cond) ']' ] [ '.' comp [ '.' sub ] ]
//!            | '.' comp [ '.' sub ]  |  '.'            (relative to the `each` element)
//! transform := name [ '(' arg, ... ')' ]
//! cond      := and ( 'or' and )* ;  and := not ( 'and' not )* ;  not := 'not' not | atom
//! atom      := '(' cond ')' | empty(expr | SEG) | expr ( '=' | '!=' ) expr
//!            | expr 'in' '(' 'a', 'b' ')' | expr        (non-empty)
//! ```
//!
//! # Invariants
//! - A parse error carries the byte offset in the expression text, so the caller
//!   can point at `file:line:col`.
//! - Transform arguments (regexes, tables, time zones) are resolved by the caller
//!   through [`Resolver`], at load time.

use super::transform::Transform;

/// A byte offset in an expression and what went wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExprError {
    pub offset: usize,
    pub message: String,
}

/// A compiled expression: a term followed by stages.
#[derive(Debug, Clone)]
pub(crate) struct Expr {
    pub first: Term,
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone)]
pub(crate) enum Stage {
    /// `| term`: used when the value so far is empty.
    Alt(Term),
    /// `| transform`: applied to the value so far.
    Transform(Transform),
}

#[derive(Debug, Clone)]
pub(crate) enum Term {
    Path(Path),
    Literal(String),
    Macro(usize),
    Concat(Vec<Expr>),
    /// `concat_ws(sep, a, b, ...)`: the non-empty parts joined by `sep`.
    ConcatWs(String, Vec<Expr>),
    /// `( expr )`.
    Group(Box<Expr>),
    /// `position()`: the 1-based position in the enclosing iteration.
    Position,
    /// `position(a, b, ...)`: in a group, the 1-based position among the groups
    /// of its iteration before it (and itself) whose `a, b, ...` give the same
    /// texts: the occurrence of a key, not a place in the message. Elsewhere the
    /// same as `position()`.
    PositionBy(Vec<Expr>),
    /// `for('OBX > NTE', expr)`: the values of `expr` in each group of the chain
    /// within the current scope (as a template's `for` finds them), empty ones
    /// left out: a list.
    Gather(Vec<GroupHead>, Box<Expr>),
    /// `occurrence(OBR)`: which segment of that name the one a path would find
    /// from here is (1-based, in the whole message): the same from an OBR group
    /// and from an OBX group within it, unlike `position()`.
    Occurrence(String),
}

/// Which repetitions of a field a path selects.
#[derive(Debug, Clone)]
pub(crate) enum RepSel {
    /// No brackets: the first repetition.
    First,
    /// `[n]`, 1-based.
    Index(usize),
    /// `[*]`: all repetitions (a list).
    All,
    /// `[cond]`: the first repetition for which the condition holds.
    Pred(Box<Cond>),
}

#[derive(Debug, Clone)]
pub(crate) enum Anchor {
    /// `SEG-n`: field n of the nearest segment named SEG in scope.
    Field { segment: String, field: usize },
    /// `.c.s` / `.`: relative to the current `each` element.
    Relative,
}

#[derive(Debug, Clone)]
pub(crate) struct Path {
    pub anchor: Anchor,
    pub rep: RepSel,
    pub comp: Option<usize>,
    pub sub: Option<usize>,
}

#[derive(Debug, Clone)]
pub(crate) enum Cond {
    Or(Vec<Cond>),
    And(Vec<Cond>),
    Not(Box<Cond>),
    /// `empty(expr)`.
    Empty(Expr),
    /// `deleted(expr)`: the value is HL7's explicit null `""` (the sender
    /// deletes what was stored), not merely empty or left out.
    Deleted(Expr),
    /// `empty(SEG)`: no such segment in scope.
    NoSegment(String),
    /// `a = b` (`eq`) or `a != b`.
    Compare {
        left: Expr,
        eq: bool,
        right: Expr,
    },
    /// `a < b` (`or_equal`: `a <= b`; `a > b` and `a >= b` are read with the
    /// sides swapped): true when both are numbers, or both FHIR times (a
    /// `dateTime` with its offset, or a date), and the left comes first.
    Order {
        left: Expr,
        or_equal: bool,
        right: Expr,
    },
    /// `a in ('x', 'y')`.
    In {
        left: Expr,
        set: Vec<String>,
    },
    /// A bare expression: true when non-empty.
    NonEmpty(Expr),
}

/// Resolves the names an expression refers to (macros, tables, transform args).
pub(crate) trait Resolver {
    fn macro_index(&mut self, name: &str) -> Option<usize>;
    /// Builds a transform from its name and raw arguments; `Err` is the message.
    fn transform(&mut self, name: &str, args: &[(String, usize)]) -> Result<Transform, String>;
}

pub(crate) fn parse_expr(src: &str, resolver: &mut dyn Resolver) -> Result<Expr, ExprError> {
    let mut p = Parser {
        src,
        pos: 0,
        resolver,
        depth: 0,
    };
    let e = p.expr()?;
    p.ws();
    if p.pos < src.len() {
        return Err(p.err(format!(
            "unexpected `{}`, expected `|` or the end of the expression",
            p.rest_token()
        )));
    }
    Ok(e)
}

pub(crate) fn parse_cond(src: &str, resolver: &mut dyn Resolver) -> Result<Cond, ExprError> {
    let mut p = Parser {
        src,
        pos: 0,
        resolver,
        depth: 0,
    };
    let c = p.cond()?;
    p.ws();
    if p.pos < src.len() {
        return Err(p.err(format!(
            "unexpected `{}`, expected `and`, `or` or the end of the condition",
            p.rest_token()
        )));
    }
    Ok(c)
}

/// One level of a `for`: groups headed by segment `name`, optionally only in the
/// part of the enclosing scope before the first `before` segment
/// (`NTE before OBX`: the notes of an order, not those of its results), or each
/// with the `after` segment directly before its head (`OBR after ORC`: the ORC
/// that opens an order belongs to that order's OBR, not to the group of the
/// OBR before it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupHead {
    pub name: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// Parses a `for` value: `SEG` or `SEG > SEG > ...`, each level optionally
/// `SEG before SEG` or `SEG after SEG`.
pub(crate) fn parse_for(src: &str) -> Result<Vec<GroupHead>, ExprError> {
    let mut out = Vec::new();
    let mut offset = 0;
    for part in src.split('>') {
        let lead = part.len() - part.trim_start().len();
        let mut words = part.split_whitespace();
        let bad = |name: &str| {
            ExprError {
            offset: offset + lead,
            message: format!(
                "bad segment name `{name}` in `for`, expected a segment like `OBR`, `OBR > OBX`, `NTE before OBX` or `OBR after ORC`"
            ),
        }
        };
        let name = words.next().unwrap_or("");
        if !is_segment_name(name) {
            return Err(bad(part.trim()));
        }
        let (before, after) = match (words.next(), words.next(), words.next()) {
            (None, _, _) => (None, None),
            (Some("before"), Some(stop), None) if is_segment_name(stop) => {
                (Some(stop.to_string()), None)
            }
            (Some("after"), Some(lead), None) if is_segment_name(lead) => {
                (None, Some(lead.to_string()))
            }
            _ => return Err(bad(part.trim())),
        };
        out.push(GroupHead {
            name: name.to_string(),
            before,
            after,
        });
        offset += part.len() + 1;
    }
    Ok(out)
}

pub(crate) fn is_segment_name(s: &str) -> bool {
    s.len() == 3
        && s.as_bytes()[0].is_ascii_uppercase()
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

struct Parser<'s, 'r> {
    src: &'s str,
    pos: usize,
    resolver: &'r mut dyn Resolver,
    /// How deeply nested the expression or condition being read is.
    depth: usize,
}

/// The deepest nesting of parentheses, `not`s and calls a mapping may write:
/// far beyond any real mapping, and far short of what the parser's recursion
/// (or the evaluator's) could take before it overflowed the stack.
const MAX_DEPTH: usize = 64;

impl Parser<'_, '_> {
    /// One level deeper (an error past [`MAX_DEPTH`]); [`Self::leave`] after.
    fn enter(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(format!(
                "nested more than {MAX_DEPTH} levels deep, expected a flatter expression (use [let] macros)"
            )));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn err(&self, message: String) -> ExprError {
        ExprError {
            offset: self.pos,
            message,
        }
    }

    fn rest_token(&self) -> String {
        self.src[self.pos..]
            .chars()
            .take_while(|c| !c.is_whitespace())
            .take(20)
            .collect()
    }

    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<u8> {
        self.src.as_bytes().get(self.pos + n).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8, what: &str) -> Result<(), ExprError> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(self.err(format!(
                "expected `{}` {what}, found `{}`",
                b as char,
                self.found()
            )))
        }
    }

    fn found(&self) -> String {
        if self.pos >= self.src.len() {
            "end of expression".to_string()
        } else {
            self.rest_token()
        }
    }

    fn ident(&mut self) -> Option<&str> {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        if start < bytes.len() && (bytes[start].is_ascii_alphabetic() || bytes[start] == b'_') {
            let mut end = start + 1;
            while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
                end += 1;
            }
            self.pos = end;
            Some(&self.src[start..end])
        } else {
            None
        }
    }

    fn number(&mut self) -> Option<usize> {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        if start == self.pos {
            return None;
        }
        self.src[start..self.pos].parse().ok()
    }

    /// A positive 1-based number (field, component, repetition).
    fn index(&mut self, what: &str) -> Result<usize, ExprError> {
        let at = self.pos;
        match self.number() {
            Some(n) if (1..=9999).contains(&n) => Ok(n),
            Some(n) => Err(ExprError {
                offset: at,
                message: format!("{what} number {n} out of range, expected 1 to 9999"),
            }),
            None => Err(self.err(format!(
                "expected a {what} number, found `{}`",
                self.found()
            ))),
        }
    }

    fn string(&mut self) -> Result<String, ExprError> {
        // at the opening quote
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        let rest = &self.src[self.pos..];
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\'' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.clone().next() {
                    Some((_, '\'')) => {
                        chars.next();
                        out.push('\'');
                    }
                    Some((_, '\\')) => {
                        chars.next();
                        out.push('\\');
                    }
                    _ => out.push('\\'),
                },
                c => out.push(c),
            }
        }
        Err(ExprError {
            offset: open,
            message: "unterminated string, expected a closing `'`".to_string(),
        })
    }

    fn expr(&mut self) -> Result<Expr, ExprError> {
        self.enter()?;
        let e = self.expr_inner();
        self.leave();
        e
    }

    fn expr_inner(&mut self) -> Result<Expr, ExprError> {
        self.ws();
        let first = match self.term()? {
            Some(t) => t,
            None => {
                return Err(self.err(format!(
                    "expected a path (`PID-3`), a 'literal', a $macro or concat(...), found `{}`",
                    self.found()
                )))
            }
        };
        let mut stages = Vec::new();
        loop {
            self.ws();
            // `||` is not an operator; a single `|` starts a stage
            if self.peek() != Some(b'|') {
                break;
            }
            self.pos += 1;
            self.ws();
            if let Some(t) = self.term()? {
                stages.push(Stage::Alt(t));
            } else {
                stages.push(Stage::Transform(self.transform()?));
            }
        }
        Ok(Expr { first, stages })
    }

    /// A term, or `None` (position unchanged) if the input does not start one.
    fn term(&mut self) -> Result<Option<Term>, ExprError> {
        self.ws();
        match self.peek() {
            Some(b'\'') => Ok(Some(Term::Literal(self.string()?))),
            Some(b'.') => Ok(Some(Term::Path(self.relative_path()?))),
            Some(b'(') => {
                self.pos += 1;
                let e = self.expr()?;
                self.expect(b')', "to close `(`")?;
                Ok(Some(Term::Group(Box::new(e))))
            }
            Some(b'$') => {
                let at = self.pos;
                self.pos += 1;
                let name = match self.ident() {
                    Some(n) => n.to_string(),
                    None => {
                        return Err(self.err("expected a macro name after `$`".to_string()));
                    }
                };
                match self.resolver.macro_index(&name) {
                    Some(i) => Ok(Some(Term::Macro(i))),
                    None => Err(ExprError {
                        offset: at,
                        message: format!(
                            "unknown macro `${name}`, expected a name defined in [let]"
                        ),
                    }),
                }
            }
            Some(b) if b.is_ascii_alphabetic() => {
                let start = self.pos;
                let name = self.ident().unwrap_or_default().to_string();
                if self.peek() == Some(b'-') && is_segment_name(&name) {
                    self.pos = start;
                    return Ok(Some(Term::Path(self.segment_path()?)));
                }
                match name.as_str() {
                    "concat" if self.peek() == Some(b'(') => {
                        self.pos += 1;
                        let mut parts = Vec::new();
                        loop {
                            parts.push(self.expr()?);
                            if self.eat(b',') {
                                continue;
                            }
                            self.expect(b')', "to close concat(")?;
                            break;
                        }
                        Ok(Some(Term::Concat(parts)))
                    }
                    "concat_ws" if self.peek() == Some(b'(') => {
                        self.pos += 1;
                        self.ws();
                        if self.peek() != Some(b'\'') {
                            return Err(self.err(format!(
                                "expected a 'separator' as the first argument of concat_ws, found `{}`",
                                self.found()
                            )));
                        }
                        let sep = self.string()?;
                        let mut parts = Vec::new();
                        while self.eat(b',') {
                            parts.push(self.expr()?);
                        }
                        self.expect(b')', "to close concat_ws(")?;
                        Ok(Some(Term::ConcatWs(sep, parts)))
                    }
                    "for" if self.peek() == Some(b'(') => {
                        self.pos += 1;
                        self.ws();
                        let at = self.pos;
                        if self.peek() != Some(b'\'') {
                            return Err(self.err(format!(
                                "expected a 'chain' of groups as the first argument of for, like 'OBX' or 'OBX > NTE', found `{}`",
                                self.found()
                            )));
                        }
                        let chain = self.string()?;
                        let heads = parse_for(&chain).map_err(|e| ExprError {
                            offset: at + 1 + e.offset,
                            message: e.message,
                        })?;
                        self.expect(b',', "after the chain of for(")?;
                        let e = self.expr()?;
                        self.expect(b')', "to close for(")?;
                        Ok(Some(Term::Gather(heads, Box::new(e))))
                    }
                    "occurrence" if self.peek() == Some(b'(') => {
                        self.pos += 1;
                        self.ws();
                        let at = self.pos;
                        let name = self.ident().map(str::to_string).unwrap_or_default();
                        if !is_segment_name(&name) {
                            self.pos = at;
                            return Err(self.err(format!(
                                "expected a segment name like `OBR` in occurrence(, found `{}`",
                                self.found()
                            )));
                        }
                        self.ws();
                        self.expect(b')', "to close occurrence(")?;
                        Ok(Some(Term::Occurrence(name)))
                    }
                    "position" if self.peek() == Some(b'(') => {
                        self.pos += 1;
                        if self.eat(b')') {
                            return Ok(Some(Term::Position));
                        }
                        let mut parts = vec![self.expr()?];
                        while self.eat(b',') {
                            parts.push(self.expr()?);
                        }
                        self.expect(b')', "to close position(")?;
                        Ok(Some(Term::PositionBy(parts)))
                    }
                    _ => {
                        self.pos = start;
                        Ok(None)
                    }
                }
            }
            _ => Ok(None),
        }
    }

    fn transform(&mut self) -> Result<Transform, ExprError> {
        let at = self.pos;
        let name = match self.ident() {
            Some(n) => n.to_string(),
            None => {
                return Err(self.err(format!(
                    "expected a transform or a term after `|`, found `{}`",
                    self.found()
                )))
            }
        };
        if name == "when" {
            self.expect(b'(', "after `when`")?;
            let c = self.cond()?;
            self.expect(b')', "to close when(")?;
            return Ok(Transform::When(Box::new(c)));
        }
        let mut args = Vec::new();
        if self.peek() == Some(b'(') {
            self.pos += 1;
            loop {
                self.ws();
                if self.peek() == Some(b')') && args.is_empty() {
                    self.pos += 1;
                    break;
                }
                let arg_at = self.pos;
                let arg = if self.peek() == Some(b'\'') {
                    self.string()?
                } else {
                    let start = self.pos;
                    while let Some(b) = self.peek() {
                        if b == b',' || b == b')' || b.is_ascii_whitespace() {
                            break;
                        }
                        self.pos += 1;
                    }
                    if start == self.pos {
                        return Err(self.err(format!(
                            "expected an argument of `{name}`, found `{}`",
                            self.found()
                        )));
                    }
                    let text = &self.src[start..self.pos];
                    // these take text: unquoted, `default(PID-3.1)` would be the
                    // words "PID-3.1", never the field, so it is a mistake
                    if matches!(
                        name.as_str(),
                        "default" | "warn" | "join" | "regex_replace" | "uuid5"
                    ) {
                        self.pos = start;
                        let hint = if name == "default" {
                            format!(" (a field or macro as a fallback is `a | {text}`)")
                        } else {
                            String::new()
                        };
                        return Err(self.err(format!(
                            "the argument of `{name}` is a quoted 'literal', found `{text}`{hint}"
                        )));
                    }
                    text.to_string()
                };
                args.push((arg, arg_at));
                if self.eat(b',') {
                    continue;
                }
                self.expect(b')', &format!("to close the arguments of `{name}`"))?;
                break;
            }
        }
        self.resolver
            .transform(&name, &args)
            .map_err(|message| ExprError {
                offset: at,
                message,
            })
    }

    fn segment_path(&mut self) -> Result<Path, ExprError> {
        let segment = self.ident().unwrap_or_default().to_string();
        // at '-'
        self.pos += 1;
        let field = self.index("field")?;
        let rep = self.rep_sel()?;
        let (comp, sub) = self.comp_sub()?;
        Ok(Path {
            anchor: Anchor::Field { segment, field },
            rep,
            comp,
            sub,
        })
    }

    fn relative_path(&mut self) -> Result<Path, ExprError> {
        let (comp, sub) = if matches!(self.peek_at(1), Some(b'0'..=b'9')) {
            self.comp_sub()?
        } else {
            self.pos += 1; // `.` alone: the element itself
            (None, None)
        };
        Ok(Path {
            anchor: Anchor::Relative,
            rep: RepSel::First,
            comp,
            sub,
        })
    }

    fn comp_sub(&mut self) -> Result<(Option<usize>, Option<usize>), ExprError> {
        let mut comp = None;
        let mut sub = None;
        if self.peek() == Some(b'.') && matches!(self.peek_at(1), Some(b'0'..=b'9')) {
            self.pos += 1;
            comp = Some(self.index("component")?);
            if self.peek() == Some(b'.') && matches!(self.peek_at(1), Some(b'0'..=b'9')) {
                self.pos += 1;
                sub = Some(self.index("subcomponent")?);
            }
        }
        Ok((comp, sub))
    }

    fn rep_sel(&mut self) -> Result<RepSel, ExprError> {
        if self.peek() != Some(b'[') {
            return Ok(RepSel::First);
        }
        self.pos += 1;
        self.ws();
        let sel = match self.peek() {
            Some(b'*') => {
                self.pos += 1;
                RepSel::All
            }
            Some(b'0'..=b'9') => RepSel::Index(self.index("repetition")?),
            _ => RepSel::Pred(Box::new(self.cond()?)),
        };
        self.expect(b']', "to close the repetition selector")?;
        Ok(sel)
    }

    fn keyword(&mut self, kw: &str) -> bool {
        self.ws();
        let rest = &self.src[self.pos..];
        if rest.starts_with(kw) {
            let after = rest.as_bytes().get(kw.len()).copied();
            if !matches!(after, Some(b) if b.is_ascii_alphanumeric() || b == b'_') {
                self.pos += kw.len();
                return true;
            }
        }
        false
    }

    fn cond(&mut self) -> Result<Cond, ExprError> {
        let mut parts = vec![self.and()?];
        while self.keyword("or") {
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Cond::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Cond, ExprError> {
        let mut parts = vec![self.not()?];
        while self.keyword("and") {
            parts.push(self.not()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Cond::And(parts)
        })
    }

    fn not(&mut self) -> Result<Cond, ExprError> {
        if self.keyword("not") {
            self.enter()?;
            let c = self.not();
            self.leave();
            return Ok(Cond::Not(Box::new(c?)));
        }
        self.enter()?;
        let c = self.atom();
        self.leave();
        c
    }

    fn atom(&mut self) -> Result<Cond, ExprError> {
        self.ws();
        if self.eat(b'(') {
            let c = self.cond()?;
            self.expect(b')', "to close `(`")?;
            return Ok(c);
        }
        let save = self.pos;
        if self.keyword("empty") {
            if self.eat(b'(') {
                self.ws();
                let start = self.pos;
                if let Some(name) = self.ident().map(str::to_string) {
                    self.ws();
                    if is_segment_name(&name) && self.peek() == Some(b')') {
                        self.pos += 1;
                        return Ok(Cond::NoSegment(name));
                    }
                }
                self.pos = start;
                let e = self.expr()?;
                self.expect(b')', "to close empty(")?;
                return Ok(Cond::Empty(e));
            }
            self.pos = save;
        }
        if self.keyword("deleted") {
            if self.eat(b'(') {
                let e = self.expr()?;
                self.expect(b')', "to close deleted(")?;
                return Ok(Cond::Deleted(e));
            }
            self.pos = save;
        }
        let left = self.expr()?;
        self.ws();
        if self.peek() == Some(b'!') && self.peek_at(1) == Some(b'=') {
            self.pos += 2;
            let right = self.expr()?;
            return Ok(Cond::Compare {
                left,
                eq: false,
                right,
            });
        }
        if self.peek() == Some(b'=') {
            self.pos += 1;
            let right = self.expr()?;
            return Ok(Cond::Compare {
                left,
                eq: true,
                right,
            });
        }
        if let Some(op @ (b'<' | b'>')) = self.peek() {
            self.pos += 1;
            let or_equal = self.eat(b'=');
            let right = self.expr()?;
            let (left, right) = if op == b'<' {
                (left, right)
            } else {
                (right, left)
            };
            return Ok(Cond::Order {
                left,
                or_equal,
                right,
            });
        }
        if self.keyword("in") {
            self.expect(b'(', "after `in`")?;
            let mut set = Vec::new();
            loop {
                self.ws();
                if self.peek() != Some(b'\'') {
                    return Err(self.err(format!(
                        "expected a 'literal' in the `in` list, found `{}`",
                        self.found()
                    )));
                }
                set.push(self.string()?);
                if self.eat(b',') {
                    continue;
                }
                self.expect(b')', "to close the `in` list")?;
                break;
            }
            return Ok(Cond::In { left, set });
        }
        Ok(Cond::NonEmpty(left))
    }
}
