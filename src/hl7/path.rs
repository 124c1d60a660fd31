//! Field paths: `PID-3`, `PID-3[2].1`, `PID-5.1.2`, `OBX[2]-5`, `MSH-9.2`, `ZPI-1`.
//!
//! Grammar: `SEG ['[' occurrence ']'] ('-' | '.') field ['[' repetition ']']
//! ['.' component ['.' subcomponent]]`. `SEG` is three characters `A-Z`/`0-9`
//! (lower case is accepted and upper-cased). Every number is 1-based; the
//! segment occurrence and field repetition default to 1. Field numbers are
//! HL7's: `MSH-1` is the field separator, `MSH-2` the encoding characters.
//!
//! This is the fixed, simple grammar the HL7 core needs; predicates and `[*]`
//! belong to the mapping language. `hl7-parser`'s own query parser is not used:
//! it panics (`todo!()`) on numbers that overflow `usize`.

use std::fmt;
use std::str::FromStr;

use super::error::Hl7Error;

/// A parsed field path. Compile once with [`Path::parse`], use many times with
/// [`super::Message::get_path`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path {
    /// Segment name, three characters, upper case.
    pub segment: String,
    /// Which occurrence of the segment, 1-based.
    pub occurrence: usize,
    /// HL7 field number, 1-based.
    pub field: usize,
    /// Field repetition, 1-based; `None` means the first.
    pub repetition: Option<usize>,
    /// Component, 1-based; `None` means the whole repetition.
    pub component: Option<usize>,
    /// Subcomponent, 1-based; `None` means the whole component.
    pub subcomponent: Option<usize>,
}

impl Path {
    /// Parses a path; the error names the character where it went wrong.
    pub fn parse(path: &str) -> Result<Path, Hl7Error> {
        let mut p = Cursor {
            path,
            chars: path.char_indices().peekable(),
            position: 0,
        };
        let mut segment = String::with_capacity(3);
        for _ in 0..3 {
            match p.peek() {
                Some(c) if c.is_ascii_alphanumeric() => {
                    segment.push(c.to_ascii_uppercase());
                    p.bump();
                }
                _ => return Err(p.error("a 3-character segment name (A-Z, 0-9)")),
            }
        }
        let occurrence = p.index()?.unwrap_or(1);
        match p.peek() {
            Some('-' | '.') => p.bump(),
            _ => return Err(p.error("'-' and a field number")),
        }
        let field = p.number()?;
        let repetition = p.index()?;
        let mut component = None;
        let mut subcomponent = None;
        if p.peek() == Some('.') {
            p.bump();
            component = Some(p.number()?);
            if p.peek() == Some('.') {
                p.bump();
                subcomponent = Some(p.number()?);
            }
        }
        if p.peek().is_some() {
            return Err(p.error("the end of the path"));
        }
        Ok(Path {
            segment,
            occurrence,
            field,
            repetition,
            component,
            subcomponent,
        })
    }
}

impl FromStr for Path {
    type Err = Hl7Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Path::parse(s)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.segment)?;
        if self.occurrence != 1 {
            write!(f, "[{}]", self.occurrence)?;
        }
        write!(f, "-{}", self.field)?;
        if let Some(r) = self.repetition {
            write!(f, "[{r}]")?;
        }
        if let Some(c) = self.component {
            write!(f, ".{c}")?;
        }
        if let Some(s) = self.subcomponent {
            write!(f, ".{s}")?;
        }
        Ok(())
    }
}

struct Cursor<'p> {
    path: &'p str,
    chars: std::iter::Peekable<std::str::CharIndices<'p>>,
    /// Characters consumed so far.
    position: usize,
}

impl Cursor<'_> {
    fn peek(&mut self) -> Option<char> {
        self.chars.peek().map(|&(_, c)| c)
    }

    fn bump(&mut self) {
        if self.chars.next().is_some() {
            self.position += 1;
        }
    }

    fn error(&self, expected: &'static str) -> Hl7Error {
        self.error_at(self.position, expected)
    }

    fn error_at(&self, position: usize, expected: &'static str) -> Hl7Error {
        Hl7Error::BadPath {
            path: self.path.to_owned(),
            position,
            expected,
        }
    }

    /// A number from 1 to 99999.
    fn number(&mut self) -> Result<usize, Hl7Error> {
        const EXPECTED: &str = "a number from 1 to 99999";
        let start = self.position;
        let mut value: usize = 0;
        while let Some(c) = self.peek() {
            let Some(digit) = c.to_digit(10) else { break };
            if self.position - start >= 5 {
                return Err(self.error(EXPECTED));
            }
            value = value * 10 + digit as usize;
            self.bump();
        }
        if self.position == start || value == 0 {
            return Err(self.error_at(start, EXPECTED));
        }
        Ok(value)
    }

    /// An optional `[n]`.
    fn index(&mut self) -> Result<Option<usize>, Hl7Error> {
        if self.peek() != Some('[') {
            return Ok(None);
        }
        self.bump();
        let n = self.number()?;
        if self.peek() != Some(']') {
            return Err(self.error("']'"));
        }
        self.bump();
        Ok(Some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (segment, occurrence, field, [repetition, component, subcomponent]) or the error position.
    type Expected<'e> = Result<(&'e str, usize, usize, [Option<usize>; 3]), usize>;

    fn check(input: &str, expected: Expected<'_>) {
        let got = Path::parse(input);
        match (got, expected) {
            (Ok(path), Ok((segment, occurrence, field, [r, c, s]))) => {
                assert_eq!(
                    path,
                    Path {
                        segment: segment.into(),
                        occurrence,
                        field,
                        repetition: r,
                        component: c,
                        subcomponent: s
                    },
                    "{input}"
                );
            }
            (Err(Hl7Error::BadPath { position, .. }), Err(at)) => {
                assert_eq!(position, at, "error position for {input}")
            }
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn valid_paths() {
        check("PID-3", Ok(("PID", 1, 3, [None, None, None])));
        check("PID-3[2].1", Ok(("PID", 1, 3, [Some(2), Some(1), None])));
        check("PID-5.1.2", Ok(("PID", 1, 5, [None, Some(1), Some(2)])));
        check("OBX[2]-5", Ok(("OBX", 2, 5, [None, None, None])));
        check("MSH-9.2", Ok(("MSH", 1, 9, [None, Some(2), None])));
        check("ZPI-1", Ok(("ZPI", 1, 1, [None, None, None])));
        check("pid.3", Ok(("PID", 1, 3, [None, None, None])));
        check("PV1-99999", Ok(("PV1", 1, 99999, [None, None, None])));
    }

    #[test]
    fn invalid_paths() {
        check("", Err(0));
        check("PI", Err(2));
        check("PID", Err(3));
        check("PID-", Err(4));
        check("PID-0", Err(4));
        check("PID-3[", Err(6));
        check("PID-3[x]", Err(6));
        check("PID-3[2", Err(7));
        check("PID-3.", Err(6));
        check("PID-3.1.2.3", Err(9));
        check("PID-999999999999999999999999", Err(9));
        check("PÏD-3", Err(1));
        check("PID-3 ", Err(5));
    }

    #[test]
    fn display_round_trips() {
        for p in ["PID-3", "PID-3[2].1", "OBX[2]-5.1.2", "MSH-9.2"] {
            assert_eq!(Path::parse(p).map(|p| p.to_string()).as_deref(), Ok(p));
        }
    }

    #[test]
    fn error_message_says_where() {
        assert_eq!(
            Path::parse("PID-3[x]").map_err(|e| e.to_string()),
            Err("path 'PID-3[x]' at character 6: expected a number from 1 to 99999".into())
        );
    }
}
