//! Parse errors with their location, and the caret rendering used by the CLI.

use serde::Serialize;

/// What kind of problem a [`ParseError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The input is not UTF-8 or contains a NUL byte.
    Encoding,
    /// A line is longer than BuildKit's 64 KiB limit.
    LineTooLong,
    /// A malformed or repeated parser directive (`# escape=x`, two `# syntax=`).
    Directive,
    /// The file has no instructions.
    Empty,
    /// The keyword is not a Dockerfile instruction.
    UnknownInstruction,
    /// Too few or too many arguments.
    Arguments,
    /// An unknown flag, a flag without its value, a bad flag value or a repeated flag.
    Flag,
    /// An unterminated or misplaced heredoc.
    Heredoc,
    /// JSON where JSON is required (`SHELL`), or a JSON array with non-string elements.
    Json,
    /// An instruction other than `ARG` before the first `FROM`.
    NoStage,
    /// A value rejected when the Dockerfile is checked before building (mount options,
    /// ports, `--chmod`, signals, stage references, platforms).
    Invalid,
    /// Anything else the parser rejects.
    Syntax,
}

/// A located Dockerfile error. `Display` is `LINE:COL: message`; the CLI prefixes the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct ParseError {
    /// 1-based line where the problem (or its instruction) starts.
    pub line: usize,
    /// 1-based column (in characters) on `line`.
    pub column: usize,
    /// Last physical line of the instruction involved (equal to `line` for one-line problems).
    pub end_line: usize,
    /// The category, for callers and tests.
    pub kind: ErrorKind,
    /// A short reason, in BuildKit's wording where BuildKit has one.
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(kind: ErrorKind, line: usize, column: usize, msg: impl Into<String>) -> Self {
        ParseError {
            line,
            column,
            end_line: line,
            kind,
            message: msg.into(),
        }
    }

    pub(crate) fn at(kind: ErrorKind, span: crate::Span, msg: impl Into<String>) -> Self {
        ParseError {
            line: span.line,
            column: span.column,
            end_line: span.end_line,
            kind,
            message: msg.into(),
        }
    }

    /// Renders the error for people: `FILE:LINE:COL: message`, the source line, and a caret
    /// under the column.
    ///
    /// ```
    /// let src = "FROM scratch\nFROBNICATE x\n";
    /// let err = rbuild_parser::parse(src).unwrap_err();
    /// assert_eq!(
    ///     err.render("Dockerfile", src),
    ///     "Dockerfile:2:1: unknown instruction: FROBNICATE\n   2 | FROBNICATE x\n     | ^\n"
    /// );
    /// ```
    pub fn render(&self, file: &str, source: &str) -> String {
        let mut out = format!("{file}:{self}\n");
        if let Some(text) = source_line(source, self.line) {
            let num = self.line.to_string();
            let width = num.len().max(4);
            out.push_str(&format!("{num:>width$} | {text}\n"));
            // Tabs in the prefix are kept so the caret lines up in a terminal.
            let pad: String = text
                .chars()
                .take(self.column.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            out.push_str(&format!("{:width$} | {pad}^\n", ""));
        }
        out
    }
}

/// The text of 1-based line `line` of `source`, without its line ending.
pub fn source_line(source: &str, line: usize) -> Option<&str> {
    let l = source.split('\n').nth(line.checked_sub(1)?)?;
    let l = l.strip_suffix('\r').unwrap_or(l);
    Some(if line == 1 {
        l.strip_prefix('\u{FEFF}').unwrap_or(l)
    } else {
        l
    })
}
