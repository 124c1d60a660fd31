//! Diagnostics: problems found in a config file, each tied to a file, line
//! and column. Each is rendered as one `file:line:col: severity: message`
//! line (what DESIGN's `junction check` contract, editors and `grep` expect),
//! then the line it points at, as gcc and clang do:
//!
//! ```text
//! routes/hwe.toml:3:1: error: unknown field `timout_secs`, expected `url` or `timeout_secs`
//!    |
//!  3 | timout_secs = 3
//!    | ^^^^^^^^^^^
//! ```
//!
//! # Invariants
//! - `line` and `col` are 1-based; `col` counts characters, not bytes. A
//!   diagnostic about the file as a whole (it cannot be read, say) has
//!   `line == 0` and `col == 0` and no snippet.
//! - Building a diagnostic from a byte span never panics, whatever the span:
//!   out-of-range offsets are clamped and offsets inside a multi-byte
//!   character are moved back to its start.
//!
//! This module does not decide what is wrong; loaders (config, mappings,
//! routes) do, and collect every problem into one [`Diagnostics`].

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// How bad a diagnostic is: errors stop `junction check` and `junction serve`,
/// warnings are shown and do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Severity::Error => f.write_str("error"),
            Severity::Warning => f.write_str("warning"),
        }
    }
}

/// The source line a diagnostic points into, with the characters to underline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    /// The whole line, without its line ending.
    pub text: String,
    /// 0-based character index of the first underlined character.
    pub start: usize,
    /// Number of characters to underline (at least 1).
    pub len: usize,
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file as the user named it (relative paths stay relative).
    pub file: PathBuf,
    /// 1-based line; 0 when the diagnostic is about the whole file.
    pub line: usize,
    /// 1-based column in characters; 0 when the diagnostic is about the whole file.
    pub col: usize,
    /// What is wrong and, where it helps, what was expected. Lowercase.
    pub message: String,
    pub snippet: Option<Snippet>,
    /// Extra lines rendered as `= note: ...`.
    pub notes: Vec<String>,
    /// Byte offset of the start of the span (for ordering); `usize::MAX` for whole-file ones.
    offset: usize,
}

impl Diagnostic {
    /// An error at byte span `span` of `source` (the text of `file`).
    pub fn error(
        file: &Path,
        source: &str,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> Self {
        Self::at(Severity::Error, file, source, span, message)
    }

    /// A warning at byte span `span` of `source`.
    pub fn warning(
        file: &Path,
        source: &str,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> Self {
        Self::at(Severity::Warning, file, source, span, message)
    }

    /// A diagnostic at byte span `span` of `source`.
    pub fn at(
        severity: Severity,
        file: &Path,
        source: &str,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> Self {
        let start = floor_char_boundary(source, span.start);
        let end = floor_char_boundary(source, span.end.max(span.start));
        let loc = locate(source, start);
        let line_end = source[loc.line_start..]
            .find('\n')
            .map_or(source.len(), |i| loc.line_start + i);
        let raw_line = &source[loc.line_start..line_end];
        let raw_line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
        // Underline to the end of the span or of the line, whichever comes first.
        let underline_end = end.min(loc.line_start + raw_line.len()).max(start);
        let len = source[start..underline_end].chars().count().max(1);
        Diagnostic {
            severity,
            file: file.to_path_buf(),
            line: loc.line,
            col: loc.col,
            message: message.into(),
            snippet: Some(Snippet {
                text: raw_line.to_string(),
                start: loc.col - 1,
                len,
            }),
            notes: Vec::new(),
            offset: start,
        }
    }

    /// A diagnostic at a 1-based `line` and character `col` of `source`, for
    /// loaders that report positions rather than spans. The underline covers
    /// the word (letters, digits, `_`, `-`, `.`) starting there, at least one
    /// character. Positions past the end are clamped.
    pub fn at_line_col(
        severity: Severity,
        file: &Path,
        source: &str,
        line: usize,
        col: usize,
        message: impl Into<String>,
    ) -> Self {
        let mut start = 0;
        for _ in 1..line.max(1) {
            match source[start..].find('\n') {
                Some(i) => start += i + 1,
                None => {
                    start = source.len();
                    break;
                }
            }
        }
        let line_end = source[start..]
            .find('\n')
            .map_or(source.len(), |i| start + i);
        let offset = source[start..line_end]
            .char_indices()
            .nth(col.saturating_sub(1))
            .map_or(line_end, |(i, _)| start + i);
        let word = source[offset..line_end]
            .char_indices()
            .find(|&(_, c)| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')))
            .map_or(line_end - offset, |(i, _)| i);
        Self::at(
            severity,
            file,
            source,
            offset..offset + word.max(1),
            message,
        )
    }

    /// A diagnostic about `file` as a whole (it cannot be read, for example).
    pub fn whole_file(severity: Severity, file: &Path, message: impl Into<String>) -> Self {
        Diagnostic {
            severity,
            file: file.to_path_buf(),
            line: 0,
            col: 0,
            message: message.into(),
            snippet: None,
            notes: Vec::new(),
            // After every located diagnostic of the same file.
            offset: usize::MAX,
        }
    }

    /// Adds a `= note: ...` line.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `file:line:col: severity: message` on one line (for logs and editors).
    pub fn one_line(&self) -> String {
        if self.line == 0 {
            format!(
                "{}: {}: {}",
                self.file.display(),
                self.severity,
                self.message
            )
        } else {
            format!(
                "{}:{}:{}: {}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.severity,
                self.message
            )
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())?;
        let gutter = if self.line == 0 {
            1
        } else {
            self.line.to_string().len() + 1
        };
        let pad = " ".repeat(gutter);
        if let Some(snippet) = &self.snippet {
            let (text, start, len) = expand_tabs(snippet);
            writeln!(f)?;
            writeln!(f, "{pad} |")?;
            writeln!(f, "{:>gutter$} | {}", self.line, text.trim_end())?;
            write!(f, "{pad} | {}{}", " ".repeat(start), "^".repeat(len))?;
        }
        for note in &self.notes {
            writeln!(f)?;
            write!(f, "{pad} = note: {note}")?;
        }
        Ok(())
    }
}

/// Every problem found, in file order. Implements [`std::error::Error`] so a
/// failed load can travel through `?`; its Display renders all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(Vec<Diagnostic>);

impl Diagnostics {
    pub fn new() -> Self {
        Diagnostics(Vec::new())
    }

    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    pub fn error_count(&self) -> usize {
        self.0.iter().filter(|d| d.is_error()).count()
    }

    pub fn warning_count(&self) -> usize {
        self.0.len() - self.error_count()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }

    /// Orders by file, then position in the file (stable for equal positions).
    pub fn sort(&mut self) {
        self.0
            .sort_by(|a, b| a.file.cmp(&b.file).then(a.offset.cmp(&b.offset)));
    }
}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl FromIterator<Diagnostic> for Diagnostics {
    fn from_iter<I: IntoIterator<Item = Diagnostic>>(iter: I) -> Self {
        Diagnostics(iter.into_iter().collect())
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Where a byte offset is: 1-based line and character column, and the byte
/// offset where that line starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub col: usize,
    pub line_start: usize,
}

/// Converts a byte offset into `source` to a 1-based line and character column.
/// Offsets past the end are clamped to the end; offsets inside a character
/// are moved back to its start.
pub fn locate(source: &str, offset: usize) -> Location {
    let offset = floor_char_boundary(source, offset);
    let before = &source[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let col = source[line_start..offset].chars().count() + 1;
    Location {
        line,
        col,
        line_start,
    }
}

fn floor_char_boundary(s: &str, offset: usize) -> usize {
    let mut i = offset.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Replaces tabs by four spaces so that the carets line up in any terminal.
fn expand_tabs(snippet: &Snippet) -> (String, usize, usize) {
    let mut text = String::with_capacity(snippet.text.len());
    let mut start = 0;
    let mut end = 0;
    let mut width = 0;
    for (i, c) in snippet.text.chars().enumerate() {
        if i == snippet.start {
            start = width;
        }
        if i == snippet.start + snippet.len {
            end = width;
        }
        if c == '\t' {
            text.push_str("    ");
            width += 4;
        } else {
            text.push(c);
            width += 1;
        }
    }
    let chars = snippet.text.chars().count();
    if snippet.start >= chars {
        start = width;
    }
    if snippet.start + snippet.len >= chars {
        end = width.max(start + 1);
    }
    (text, start, (end.saturating_sub(start)).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_locate(source: &str, offset: usize, expected: (usize, usize)) {
        let loc = locate(source, offset);
        assert_eq!(
            (loc.line, loc.col),
            expected,
            "offset {offset} in {source:?}"
        );
    }

    #[test]
    fn span_to_line_and_column() {
        let src = "a = 1\nbb = 2\r\n\nc = \"é\" x\n";
        check_locate(src, 0, (1, 1));
        check_locate(src, 4, (1, 5));
        check_locate(src, 5, (1, 6)); // the newline itself
        check_locate(src, 6, (2, 1));
        check_locate(src, 9, (2, 4));
        check_locate(src, 14, (3, 1));
        check_locate(src, 15, (4, 1));
        // `x` comes after a two-byte character: column counts characters.
        let x = src.find('x').unwrap();
        check_locate(src, x, (4, 9));
        // Inside the two-byte character: moved back to its start.
        let e = src.find('é').unwrap();
        check_locate(src, e + 1, (4, 6));
        // Past the end: clamped.
        check_locate(src, 10_000, (5, 1));
        check_locate("", 3, (1, 1));
    }

    fn check_render(source: &str, span: Range<usize>, message: &str, expected: &str) {
        let d = Diagnostic::error(Path::new("junction.toml"), source, span, message);
        assert_eq!(d.to_string(), expected);
    }

    #[test]
    fn renders_location_first_then_the_line() {
        let src = "[api]\nbind = \"127.0.0.1:8080\"\ntimout_secs = 3\n";
        let start = src.find("timout").unwrap();
        check_render(
            src,
            start..start + "timout_secs".len(),
            "unknown field `timout_secs`, expected `bind`",
            "junction.toml:3:1: error: unknown field `timout_secs`, expected `bind`\n   |\n 3 | timout_secs = 3\n   | ^^^^^^^^^^^",
        );
    }

    #[test]
    fn renders_two_digit_lines_and_crlf() {
        let src = "\n".repeat(11) + "x = 1\r\n";
        check_render(
            &src,
            15..16,
            "bad",
            "junction.toml:12:5: error: bad\n    |\n 12 | x = 1\n    |     ^",
        );
    }

    #[test]
    fn multi_line_span_underlines_to_end_of_first_line() {
        check_render(
            "k = [\n 1,\n]\n",
            4..12,
            "bad array",
            "junction.toml:1:5: error: bad array\n   |\n 1 | k = [\n   |     ^",
        );
    }

    #[test]
    fn empty_span_and_span_at_end_of_file() {
        check_render(
            "a = ",
            4..4,
            "expected a value",
            "junction.toml:1:5: error: expected a value\n   |\n 1 | a =\n   |     ^",
        );
    }

    #[test]
    fn tabs_are_expanded_consistently() {
        check_render(
            "\tkey = 1\n",
            1..4,
            "bad",
            "junction.toml:1:2: error: bad\n   |\n 1 |     key = 1\n   |     ^^^",
        );
    }

    #[test]
    fn from_line_and_column() {
        let src = "[mapping]\nname = \"adt\"\nbody = \"PID-99 | trim\"\n";
        let d =
            Diagnostic::at_line_col(Severity::Error, Path::new("m.toml"), src, 3, 9, "bad path");
        assert_eq!(
            d.to_string(),
            "m.toml:3:9: error: bad path\n   |\n 3 | body = \"PID-99 | trim\"\n   |         ^^^^^^"
        );
        // Past the end of the line and of the file: clamped, never a panic.
        let d = Diagnostic::at_line_col(Severity::Error, Path::new("m.toml"), src, 1, 80, "x");
        assert_eq!((d.line, d.col), (1, 10));
        let d = Diagnostic::at_line_col(Severity::Error, Path::new("m.toml"), src, 40, 1, "x");
        assert_eq!((d.line, d.col), (4, 1));
        let d = Diagnostic::at_line_col(Severity::Error, Path::new("m.toml"), "", 0, 0, "x");
        assert_eq!((d.line, d.col), (1, 1));
    }

    #[test]
    fn whole_file_and_notes_and_one_line() {
        let d = Diagnostic::whole_file(Severity::Error, Path::new("x.toml"), "cannot read")
            .with_note("check the path");
        assert_eq!(
            d.to_string(),
            "x.toml: error: cannot read\n  = note: check the path"
        );
        assert_eq!(d.one_line(), "x.toml: error: cannot read");
        let w = Diagnostic::warning(Path::new("x.toml"), "a\nb = 2", 2..3, "odd");
        assert_eq!(w.one_line(), "x.toml:2:1: warning: odd");
    }

    #[test]
    fn collection_counts_sorts_and_renders_all() {
        let src = "a = 1\nb = 2\n";
        let mut all = Diagnostics::new();
        all.push(Diagnostic::warning(Path::new("f"), src, 6..7, "second"));
        all.push(Diagnostic::error(Path::new("f"), src, 0..1, "first"));
        all.sort();
        assert_eq!(all.error_count(), 1);
        assert_eq!(all.warning_count(), 1);
        assert!(all.has_errors());
        let text = all.to_string();
        let first = text.find("error: first").unwrap();
        let second = text.find("warning: second").unwrap();
        assert!(first < second, "{text}");
        assert!(text.contains("f:2:1: warning: second"), "{text}");
    }
}

/// A TOML file's text with every table header that repeats an earlier one
/// (`[routes.adt]` twice) blanked out together with that table's lines, and an
/// error for each such header: "already defined at line N". The TOML parser
/// would instead report "duplicate key" at the header and at each of its keys,
/// naming neither the table nor the first one, and nothing else of the file
/// could be checked. Blanking keeps every byte offset (each blanked byte is a
/// space, line ends stay), so spans into the text are spans into `source`.
/// Array tables (`[[test]]`) repeat by design and are left alone; a header
/// that is not plain (quoted keys) is compared as written.
pub(crate) fn without_duplicate_tables(
    source: &str,
) -> (std::borrow::Cow<'_, str>, Vec<(Range<usize>, String)>) {
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut blank: Vec<Range<usize>> = Vec::new();
    let mut errors = Vec::new();
    let mut offset = 0;
    let mut blanking_from: Option<usize> = None;
    for (number, line) in source.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += line.len();
        let trimmed = line.trim();
        let is_header = trimmed.starts_with('[');
        if !is_header {
            continue;
        }
        if let Some(from) = blanking_from.take() {
            blank.push(from..start);
        }
        if let Some(inner) = trimmed.strip_prefix("[[") {
            // a new element of an array of tables: its sub-tables
            // (`[resource.body]` after each `[[resource]]`) start afresh
            if let Some(end) = inner.find("]]") {
                let array: String = inner[..end]
                    .split('.')
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(".");
                let prefix = format!("{array}.");
                seen.retain(|name, _| !name.starts_with(&prefix));
            }
            continue;
        }
        let Some(end) = trimmed.find(']') else {
            continue;
        };
        // a header is `[key.path]`, then nothing or a comment (not a line of
        // a multi-line array that happens to start with `[`)
        let rest = trimmed[end + 1..].trim_start();
        let key_like = trimmed[1..end]
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | '"' | '\''));
        if !(rest.is_empty() || rest.starts_with('#')) || !key_like {
            continue;
        }
        let name: String = trimmed[1..end]
            .split('.')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(".");
        match seen.get(&name) {
            Some(first) => {
                let at = start + (line.len() - line.trim_start().len());
                errors.push((
                    at..at + end + 1,
                    format!(
                        "table `[{name}]` is already defined at line {first}: this second one is left out, expected each table once (merge the two)"
                    ),
                ));
                blanking_from = Some(start);
            }
            None => {
                seen.insert(name, number + 1);
            }
        }
    }
    if let Some(from) = blanking_from {
        blank.push(from..source.len());
    }
    if blank.is_empty() {
        return (std::borrow::Cow::Borrowed(source), errors);
    }
    let mut bytes = source.as_bytes().to_vec();
    for range in blank {
        for b in &mut bytes[range] {
            if *b != b'\n' && *b != b'\r' {
                *b = b' ';
            }
        }
    }
    // only ASCII spaces replaced whole lines' bytes: still UTF-8
    let text = String::from_utf8(bytes).unwrap_or_else(|_| source.to_string());
    (std::borrow::Cow::Owned(text), errors)
}

#[cfg(test)]
mod duplicate_table_tests {
    use super::*;

    #[test]
    fn a_repeated_table_is_one_error_and_left_out() {
        let source =
            "[a]\nx = 1\n\n[b.c]\ny = 2\n[[t]]\nz = 1\n[ b . c ]\ny = 3\nw = 'é'\n[[t]]\nz = 2\n";
        let (text, errors) = without_duplicate_tables(source);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0]
            .1
            .contains("table `[b.c]` is already defined at line 4"));
        assert_eq!(&source[errors[0].0.clone()], "[ b . c ]");
        assert_eq!(text.len(), source.len());
        assert!(!text.contains("y = 3") && !text.contains('é'));
        assert!(text.contains("[[t]]\nz = 2\n"), "{text}");
        // a sub-table of each element of an array of tables is no repeat
        let (_, none) =
            without_duplicate_tables("[[r]]\n[r.body]\na = 1\n[[r]]\n[r.body]\na = 2\n");
        assert!(none.is_empty(), "{none:?}");
        let (same, none) = without_duplicate_tables("[a]\n[[t]]\n[[t]]\n");
        assert!(none.is_empty() && matches!(same, std::borrow::Cow::Borrowed(_)));
    }
}
