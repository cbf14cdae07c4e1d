//! The low-level parse: physical lines to a list of [`Node`]s, as BuildKit's `parser.Parse`.
//!
//! This layer owns parser directives, comments, line continuations with the active escape
//! character, heredoc bodies and the per-instruction argument splitting (JSON or shell form,
//! key/value pairs, whitespace-separated words). It does not check arguments or flags: an
//! unknown keyword is still a node here. [`dump_buildkit`] prints the tree in the format of
//! BuildKit's `result` test files.

use pest::Parser as _;
use serde::Serialize;

use crate::error::{ErrorKind, ParseError};
use crate::grammar::{DockerfileGrammar, Rule};
use crate::quote::{go_lower, go_quote};
use crate::shell::{is_space, Lexer, NoEnv};
use crate::Span;

/// Longest line BuildKit's line scanner accepts (Go's `bufio.MaxScanTokenSize`).
const MAX_LINE: usize = 64 * 1024;

/// The parser directives found in the leading comment block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directives {
    /// `# syntax=` value, if any.
    pub syntax: Option<String>,
    /// `# check=` value, if any.
    pub check: Option<String>,
    /// The escape character: `\` unless `# escape=`` ` `` was given.
    pub escape: char,
    /// Every directive in order, with its 1-based line.
    pub all: Vec<Directive>,
}

/// One parser directive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directive {
    /// Lower-cased name: `syntax`, `escape` or `check`.
    pub name: String,
    /// The value, trimmed.
    pub value: String,
    /// 1-based line.
    pub line: usize,
}

/// A heredoc attached to an instruction (BuildKit `parser.Heredoc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter word with quotes removed (`EOF`).
    pub name: String,
    /// The file descriptor written before `<<` (0 when none).
    pub fd: u64,
    /// False when any part of the delimiter was quoted: the body is then not expanded.
    pub expand: bool,
    /// True for `<<-`: leading tabs are removed from each body line when it is used.
    pub chomp: bool,
    /// The raw body, every line with its line ending, tabs not yet removed.
    pub content: String,
}

impl Heredoc {
    /// The body as it is used: with leading tabs removed from every line for `<<-`.
    pub fn data(&self) -> String {
        if self.chomp {
            chomp_tabs(&self.content)
        } else {
            self.content.clone()
        }
    }
}

/// Removes leading tabs from every line (BuildKit `ChompHeredocContent`).
pub(crate) fn chomp_tabs(s: &str) -> String {
    s.split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

/// One argument of a [`Node`]: a word, or (for `ONBUILD`) a nested instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeArg {
    /// A word (JSON element decoded; shell-form text as written).
    Word(String),
    /// The instruction wrapped by `ONBUILD`.
    Nested(Box<Node>),
}

/// One instruction of the low-level tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The keyword as written (`run`, `RUN`, or an unknown word).
    pub keyword: String,
    /// `--flag[=value]` words before the arguments, as written (quotes removed).
    pub flags: Vec<String>,
    /// The arguments, split the way this instruction splits them.
    pub args: Vec<NodeArg>,
    /// True when the arguments came from a JSON array.
    pub json: bool,
    /// Heredoc bodies read after this instruction.
    pub heredocs: Vec<Heredoc>,
    /// The instruction line after joining continuations.
    pub original: String,
    /// Comment lines directly above the instruction (for doc comments).
    pub comments: Vec<String>,
    /// Where the instruction is.
    pub span: Span,
}

impl Node {
    /// The lower-cased keyword used for dispatch.
    pub fn command(&self) -> String {
        go_lower(&self.keyword)
    }

    /// This node in BuildKit's `Node.Dump` format, without the surrounding parentheses.
    pub fn dump(&self) -> String {
        let mut s = go_lower(&self.keyword);
        if !self.flags.is_empty() {
            let f: Vec<String> = self.flags.iter().map(|f| go_quote(f)).collect();
            s.push_str(&format!(" [{}]", f.join(" ")));
        }
        for a in &self.args {
            s.push(' ');
            match a {
                NodeArg::Word(w) => s.push_str(&go_quote(w)),
                NodeArg::Nested(n) => {
                    s.push('(');
                    s.push_str(&n.dump());
                    s.push(')');
                }
            }
        }
        s.trim_matches(is_space).to_string()
    }

    /// The flattened argument list of BuildKit's instruction layer: a nested instruction
    /// contributes its keyword and then its own arguments.
    pub fn flat_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for a in &self.args {
            match a {
                NodeArg::Word(w) => out.push(w.clone()),
                NodeArg::Nested(n) => {
                    out.push(n.keyword.clone());
                    out.extend(n.flat_args());
                }
            }
        }
        out
    }

    fn can_contain_heredoc(&self) -> bool {
        let mut node = self;
        if node.command() == "onbuild" {
            if let Some(NodeArg::Nested(n)) = node.args.first() {
                node = n;
            }
        }
        matches!(node.command().as_str(), "add" | "copy" | "run") && !node.json
    }
}

/// The output of the low-level parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParsedNodes {
    /// Parser directives from the leading comment block.
    pub directives: Directives,
    /// Instructions in order.
    pub nodes: Vec<Node>,
    /// Non-fatal findings (empty continuation lines).
    pub warnings: Vec<Warning>,
}

/// A non-fatal finding of the low-level parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// 1-based line.
    pub line: usize,
    /// What was found.
    pub message: String,
}

/// Dumps nodes in the format of BuildKit's `result` files: one parenthesised line each.
pub fn dump_buildkit(nodes: &[Node]) -> String {
    let mut out = String::new();
    for n in nodes {
        out.push('(');
        out.push_str(&n.dump());
        out.push_str(")\n");
    }
    out
}

/// Checks raw bytes: UTF-8 and no NUL byte. Errors are located at the offending byte.
pub fn check_bytes(data: &[u8]) -> Result<&str, ParseError> {
    let locate = |offset: usize| {
        let before = &data[..offset];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let start = before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1);
        let column = String::from_utf8_lossy(&data[start..offset])
            .chars()
            .count()
            + 1;
        (line, column)
    };
    let text = match std::str::from_utf8(data) {
        Ok(t) => t,
        Err(e) => {
            let (line, column) = locate(e.valid_up_to());
            return Err(ParseError::new(
                ErrorKind::Encoding,
                line,
                column,
                "invalid UTF-8 in Dockerfile",
            ));
        }
    };
    if let Some(p) = data.iter().position(|b| *b == 0) {
        let (line, column) = locate(p);
        return Err(ParseError::new(
            ErrorKind::Encoding,
            line,
            column,
            "NUL byte in Dockerfile",
        ));
    }
    Ok(text)
}

/// Parser state that changes while reading: the directive block and the escape character.
struct State {
    escape: char,
    directives: Directives,
    directive_lines_seen: usize,
    directives_done: bool,
}

impl State {
    /// BuildKit `DirectiveParser.ParseLine`: a directive counts only while every line so far
    /// was a directive.
    fn directive(&mut self, line: &str) -> Result<bool, String> {
        self.directive_lines_seen += 1;
        if self.directives_done {
            return Ok(false);
        }
        let Some((name, value)) = match_directive(line) else {
            self.directives_done = true;
            return Ok(false);
        };
        let name = name.to_ascii_lowercase();
        if !matches!(name.as_str(), "syntax" | "escape" | "check") {
            self.directives_done = true;
            return Ok(false);
        }
        if self.directives.all.iter().any(|d| d.name == name) {
            return Err(format!("only one {name} parser directive can be used"));
        }
        self.directives.all.push(Directive {
            name: name.clone(),
            value: value.clone(),
            line: self.directive_lines_seen,
        });
        match name.as_str() {
            "escape" => {
                let esc = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(format!(
                            "invalid escape token '{value}' does not match ` or \\"
                        ))
                    }
                };
                self.escape = esc;
                self.directives.escape = esc;
            }
            "syntax" => self.directives.syntax = Some(value),
            _ => self.directives.check = Some(value),
        }
        Ok(true)
    }

    /// Removes a trailing continuation character; returns the line and whether the
    /// instruction ends here (BuildKit's continuation regex, `[ \t]*` allowed after it).
    fn trim_continuation<'a>(&self, line: &'a str) -> (&'a str, bool) {
        let body = line.trim_end_matches([' ', '\t']);
        match body.strip_suffix(self.escape) {
            // `x\\` (an escaped escape character) is not a continuation; a lone `\` is.
            Some(rest) if rest.is_empty() => (rest, false),
            Some(rest) if !rest.ends_with(self.escape) => (rest, false),
            _ => (line, true),
        }
    }
}

fn match_directive(line: &str) -> Option<(String, String)> {
    let mut pairs = DockerfileGrammar::parse(Rule::directive, line).ok()?;
    let mut inner = pairs.next()?.into_inner();
    let name = inner.next()?.as_str().to_string();
    let raw = inner.next()?.as_str();
    // `\s*(.+?)\s*$`: at least one character, surrounding RE2 whitespace removed.
    let re_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\x0c' | '\r');
    if raw.is_empty() {
        return None;
    }
    let trimmed = raw.trim_matches(re_space);
    let value = if trimmed.is_empty() {
        raw.chars().last().map(String::from).unwrap_or_default()
    } else {
        trimmed.to_string()
    };
    Some((name, value))
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    line.trim_start_matches(is_space).starts_with('#')
}

/// Splits on runs of `[\t\v\f\r ]` like Go's `regexp.Split(s, -1)` on trimmed text.
fn split_ws(s: &str) -> Vec<String> {
    s.split([' ', '\t', '\x0b', '\x0c', '\r'])
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// The physical lines of `text`, each with its line ending.
struct Lines<'a> {
    rest: &'a str,
}

impl<'a> Lines<'a> {
    fn next_line(&mut self, line_no: usize) -> Result<Option<&'a str>, ParseError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (line, rest) = match self.rest.find('\n') {
            Some(i) => self.rest.split_at(i + 1),
            None => (self.rest, ""),
        };
        let too_long = if line.ends_with('\n') {
            line.len() > MAX_LINE
        } else {
            line.len() >= MAX_LINE
        };
        if too_long {
            return Err(ParseError::new(
                ErrorKind::LineTooLong,
                line_no,
                1,
                format!(
                    "dockerfile line greater than max allowed size of {}",
                    MAX_LINE - 1
                ),
            ));
        }
        self.rest = rest;
        Ok(Some(line))
    }
}

/// Parses Dockerfile text into the low-level tree.
pub fn parse_nodes(text: &str) -> Result<ParsedNodes, ParseError> {
    let mut st = State {
        escape: '\\',
        directives: Directives {
            syntax: None,
            check: None,
            escape: '\\',
            all: Vec::new(),
        },
        directive_lines_seen: 0,
        directives_done: false,
    };
    let mut lines = Lines { rest: text };
    let mut nodes = Vec::new();
    let mut warnings = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let mut current = 0usize;

    while let Some(raw) = lines.next_line(current + 1)? {
        let raw = if current == 0 {
            raw.strip_prefix('\u{FEFF}').unwrap_or(raw)
        } else {
            raw
        };
        if is_comment(raw) {
            let mut cs = raw.chars();
            cs.next();
            let c = cs.as_str().trim_matches(is_space);
            if c.is_empty() {
                comments.clear();
            } else {
                comments.push(c.to_string());
            }
        }
        let processed = trim_newline(raw).trim_start_matches(is_space);
        let is_directive = st
            .directive(processed)
            .map_err(|m| ParseError::new(ErrorKind::Directive, current + 1, 1, m))?;
        if is_directive {
            comments.pop();
        }
        let processed = if is_comment(processed) { "" } else { processed };
        current += 1;
        let start_line = current;
        let column = trim_newline(raw)
            .chars()
            .take_while(|c| is_space(*c))
            .count()
            + 1;

        let (first, mut eol) = st.trim_continuation(processed);
        if eol && first.is_empty() {
            continue;
        }
        let mut buf = first.to_string();
        let mut empty_continuation = false;
        while !eol {
            let Some(raw) = lines.next_line(current + 1)? else {
                break;
            };
            let p = trim_newline(raw);
            st.directive(p)
                .map_err(|m| ParseError::new(ErrorKind::Directive, current + 1, 1, m))?;
            current += 1;
            if is_comment(raw) {
                continue;
            }
            if p.trim_start_matches(is_space).is_empty() {
                empty_continuation = true;
                continue;
            }
            let (p, e) = st.trim_continuation(p);
            eol = e;
            buf.push_str(p);
        }
        if empty_continuation {
            warnings.push(Warning {
                line: current,
                message: format!("Empty continuation line found in: {buf}"),
            });
        }
        let mut span = Span {
            line: start_line,
            column,
            end_line: current,
        };
        let mut node = node_from_line(&buf, st.escape, std::mem::take(&mut comments), span)
            .map_err(|(kind, m)| ParseError::at(kind, span, m))?;

        if node.can_contain_heredoc() && buf.contains("<<") {
            let heredocs = heredocs_from_line(&buf)
                .map_err(|m| ParseError::at(ErrorKind::Heredoc, span, m))?;
            for mut h in heredocs {
                let mut content = String::new();
                let mut terminated = false;
                while let Some(raw) = lines.next_line(current + 1)? {
                    current += 1;
                    let mut candidate = trim_newline(raw);
                    if h.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == h.name {
                        terminated = true;
                        break;
                    }
                    content.push_str(raw);
                }
                if !terminated {
                    span.end_line = current;
                    return Err(ParseError::at(
                        ErrorKind::Heredoc,
                        span,
                        "unterminated heredoc",
                    ));
                }
                h.content = content;
                node.heredocs.push(h);
            }
        }
        span.end_line = current;
        node.span = span;
        if let Some(NodeArg::Nested(n)) = node.args.first_mut() {
            n.span = span;
        }
        nodes.push(node);
    }
    if nodes.is_empty() {
        return Err(ParseError::new(
            ErrorKind::Empty,
            current.max(1),
            1,
            "file with no instructions",
        ));
    }
    Ok(ParsedNodes {
        directives: st.directives,
        nodes,
        warnings,
    })
}

type NodeResult<T> = Result<T, (ErrorKind, String)>;

/// BuildKit `newNodeFromLine`: keyword, flags, then the instruction's argument splitter.
fn node_from_line(line: &str, escape: char, comments: Vec<String>, span: Span) -> NodeResult<Node> {
    let trimmed = line.trim_matches(is_space);
    let (keyword, rest) = split_command(trimmed);
    let (args_text, flags) = match rest {
        Some(r) => extract_flags(r, escape),
        None => (String::new(), Vec::new()),
    };
    let args_text = args_text.trim_matches(is_space);
    let (args, json) = match go_lower(&keyword).as_str() {
        "add" | "copy" | "volume" => parse_maybe_json_to_list(args_text)?,
        "arg" => (words_to_args(parse_words(args_text, escape)), false),
        "cmd" | "entrypoint" | "run" | "shell" => parse_maybe_json(args_text)?,
        "env" => (parse_name_val(args_text, "ENV", escape)?, false),
        "label" => (parse_name_val(args_text, "LABEL", escape)?, false),
        "expose" | "from" => (parse_whitespace_words(args_text), false),
        "healthcheck" => parse_health_config(args_text)?,
        "maintainer" | "stopsignal" | "user" | "workdir" => (parse_string(args_text), false),
        "onbuild" => {
            if args_text.is_empty() {
                (Vec::new(), false)
            } else {
                let child = node_from_line(args_text, escape, Vec::new(), span)?;
                (vec![NodeArg::Nested(Box::new(child))], false)
            }
        }
        // Unknown instructions keep one empty argument, as BuildKit's `parseIgnore`; the
        // instruction layer rejects them.
        _ => (vec![NodeArg::Word(String::new())], false),
    };
    Ok(Node {
        keyword,
        flags,
        args,
        json,
        heredocs: Vec::new(),
        original: line.to_string(),
        comments,
        span,
    })
}

fn split_command(trimmed: &str) -> (String, Option<&str>) {
    match DockerfileGrammar::parse(Rule::command_line, trimmed) {
        Ok(mut pairs) => {
            let mut inner = pairs.next().map(|p| p.into_inner()).into_iter().flatten();
            let keyword = inner
                .next()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            let rest = inner.next().map(|p| p.as_str());
            (keyword, rest)
        }
        // The rule accepts every string; keep the whole line as the keyword if it ever did not.
        Err(_) => (trimmed.to_string(), None),
    }
}

fn words_to_args(words: Vec<String>) -> Vec<NodeArg> {
    words.into_iter().map(NodeArg::Word).collect()
}

/// BuildKit `extractBuilderFlags`: leading `--name[=value]` words, quote- and escape-aware.
/// Works byte by byte like BuildKit (a non-ASCII byte becomes the rune of that value).
fn extract_flags(line: &str, escape: char) -> (String, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let b = line.as_bytes();
    let esc = if escape.is_ascii() { escape as u8 } else { 0 };
    let is_ws = |c: u8| matches!(c, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' | 0x85 | 0xa0);
    let rest_from = |pos: usize| String::from_utf8_lossy(&b[pos..]).into_owned();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = 0u8;
    let mut blank_ok = false;
    let mut pos = 0usize;
    while pos <= b.len() {
        let ch = if pos < b.len() { b[pos] } else { 0 };
        if phase == Phase::Spaces {
            if pos == b.len() {
                break;
            }
            if is_ws(ch) {
                pos += 1;
                continue;
            }
            if ch != b'-' || pos + 1 == b.len() || b[pos + 1] != b'-' {
                return (rest_from(pos), words);
            }
            phase = Phase::Word;
        }
        if pos == b.len() {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if is_ws(ch) {
                phase = Phase::Spaces;
                if word == "--" {
                    return (rest_from(pos), words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == b'\'' || ch == b'"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            let mut c = ch;
            if c == esc {
                if pos + 1 == b.len() {
                    pos += 1;
                    continue;
                }
                pos += 1;
                c = b[pos];
            }
            word.push(c as char);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        let mut c = ch;
        if c == esc {
            if pos + 1 == b.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            c = b[pos];
        }
        word.push(c as char);
        pos += 1;
    }
    (String::new(), words)
}

/// BuildKit `parseWords`: whitespace-separated words with quotes and escapes kept as written.
pub(crate) fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut word = String::new();
    let mut pos = 0usize;
    while pos <= chars.len() {
        let at_end = pos == chars.len();
        let mut ch = if at_end { '\0' } else { chars[pos] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if is_space(ch) {
                pos += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if is_space(ch) {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                // An escape outside quotes keeps itself and the next character, even a quote.
                word.push(ch);
                pos += 1;
                ch = chars[pos];
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            word.push(ch);
            ch = chars[pos];
        }
        word.push(ch);
        pos += 1;
    }
    words
}

/// ENV/LABEL: `k=v k2=v2` (three nodes per pair, separator `=`) or legacy `k rest of line`
/// (separator ``).
fn parse_name_val(rest: &str, key: &str, escape: char) -> NodeResult<Vec<NodeArg>> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Ok(Vec::new());
    }
    if !words[0].contains('=') {
        let mut parts = rest.splitn(2, [' ', '\t', '\x0b', '\x0c', '\r']);
        let k = parts.next().unwrap_or_default();
        let Some(v) = parts.next() else {
            return Err((
                ErrorKind::Arguments,
                format!("{key} must have two arguments"),
            ));
        };
        let v = v.trim_start_matches([' ', '\t', '\x0b', '\x0c', '\r']);
        return Ok(vec![
            NodeArg::Word(k.to_string()),
            NodeArg::Word(v.to_string()),
            NodeArg::Word(String::new()),
        ]);
    }
    let mut out = Vec::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err((
                ErrorKind::Syntax,
                format!(
                    "Syntax error - can't find = in {}. Must be of the form: name=value",
                    go_quote(&w)
                ),
            ));
        };
        out.push(NodeArg::Word(k.to_string()));
        out.push(NodeArg::Word(v.to_string()));
        out.push(NodeArg::Word("=".to_string()));
    }
    Ok(out)
}

fn parse_whitespace_words(rest: &str) -> Vec<NodeArg> {
    if rest.is_empty() {
        return Vec::new();
    }
    words_to_args(split_ws(rest))
}

fn parse_string(rest: &str) -> Vec<NodeArg> {
    if rest.is_empty() {
        Vec::new()
    } else {
        vec![NodeArg::Word(rest.to_string())]
    }
}

/// The outcome of trying to read arguments as a JSON array.
enum Json {
    Strings(Vec<String>),
    NotStrings,
    Invalid,
}

/// Deepest nesting the JSON grammar is run on; deeper input is treated as not JSON.
const MAX_JSON_DEPTH: usize = 200;

fn parse_json(rest: &str) -> Json {
    let rest = rest.trim_start_matches(is_space);
    if !rest.starts_with('[') {
        return Json::Invalid;
    }
    let mut depth = 0usize;
    let mut max = 0usize;
    for c in rest.chars() {
        match c {
            '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if max > MAX_JSON_DEPTH {
        return Json::Invalid;
    }
    let Ok(mut pairs) = DockerfileGrammar::parse(Rule::json_array, rest) else {
        return Json::Invalid;
    };
    let Some(array) = pairs.next() else {
        return Json::Invalid;
    };
    let mut out = Vec::new();
    for el in array.into_inner() {
        if el.as_rule() != Rule::json_element {
            continue;
        }
        let Some(inner) = el.into_inner().next() else {
            continue;
        };
        if inner.as_rule() != Rule::json_string {
            return Json::NotStrings;
        }
        out.push(decode_json_string(inner));
    }
    Json::Strings(out)
}

fn decode_json_string(pair: pest::iterators::Pair<'_, Rule>) -> String {
    let mut out = String::new();
    let mut pending_high: Option<u32> = None;
    let flush = |out: &mut String, p: &mut Option<u32>| {
        if p.take().is_some() {
            out.push('\u{FFFD}');
        }
    };
    for part in pair.into_inner() {
        match part.as_rule() {
            Rule::json_plain => {
                flush(&mut out, &mut pending_high);
                out.push_str(part.as_str());
            }
            Rule::json_escape => {
                let e = &part.as_str()[1..];
                if let Some(hex) = e.strip_prefix('u') {
                    let u = u32::from_str_radix(hex, 16).unwrap_or(0xFFFD);
                    if (0xD800..0xDC00).contains(&u) {
                        flush(&mut out, &mut pending_high);
                        pending_high = Some(u);
                    } else if (0xDC00..0xE000).contains(&u) {
                        match pending_high.take() {
                            Some(h) => {
                                let c = 0x10000 + ((h - 0xD800) << 10) + (u - 0xDC00);
                                out.push(char::from_u32(c).unwrap_or('\u{FFFD}'));
                            }
                            None => out.push('\u{FFFD}'),
                        }
                    } else {
                        flush(&mut out, &mut pending_high);
                        out.push(char::from_u32(u).unwrap_or('\u{FFFD}'));
                    }
                } else {
                    flush(&mut out, &mut pending_high);
                    out.push(match e {
                        "b" => '\u{8}',
                        "f" => '\u{c}',
                        "n" => '\n',
                        "r" => '\r',
                        "t" => '\t',
                        other => other.chars().next().unwrap_or('\u{FFFD}'),
                    });
                }
            }
            _ => {}
        }
    }
    flush(&mut out, &mut pending_high);
    out
}

const NOT_STRING_ARRAY: &str =
    "when using JSON array syntax, arrays must be comprised of strings only";

fn parse_maybe_json(rest: &str) -> NodeResult<(Vec<NodeArg>, bool)> {
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    match parse_json(rest) {
        Json::Strings(s) => Ok((words_to_args(s), true)),
        Json::NotStrings => Err((ErrorKind::Json, NOT_STRING_ARRAY.into())),
        Json::Invalid => Ok((vec![NodeArg::Word(rest.to_string())], false)),
    }
}

fn parse_maybe_json_to_list(rest: &str) -> NodeResult<(Vec<NodeArg>, bool)> {
    match parse_json(rest) {
        Json::Strings(s) => Ok((words_to_args(s), true)),
        Json::NotStrings => Err((ErrorKind::Json, NOT_STRING_ARRAY.into())),
        Json::Invalid => Ok((parse_whitespace_words(rest), false)),
    }
}

/// HEALTHCHECK: the type word (`CMD`, `NONE`, ...) then the command like CMD. BuildKit scans
/// bytes here, so a UTF-8 continuation byte 0x85 or 0xA0 counts as a space.
fn parse_health_config(rest: &str) -> NodeResult<(Vec<NodeArg>, bool)> {
    let b = rest.as_bytes();
    let is_ws = |c: u8| matches!(c, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' | 0x85 | 0xa0);
    let sep = b.iter().position(|c| is_ws(*c)).unwrap_or(b.len());
    let next = b[sep..]
        .iter()
        .position(|c| !is_ws(*c))
        .map_or(b.len(), |p| sep + p);
    if sep == 0 {
        return Ok((Vec::new(), false));
    }
    let typ = String::from_utf8_lossy(&b[..sep]).into_owned();
    let cmd_text = String::from_utf8_lossy(&b[next..]).into_owned();
    let (cmd, json) = parse_maybe_json(&cmd_text)?;
    let mut args = vec![NodeArg::Word(typ)];
    args.extend(cmd);
    Ok((args, json))
}

/// BuildKit `heredocsFromLine`: every word of the line that is a heredoc marker.
fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, String> {
    let mut lex = Lexer::new('\\');
    lex.raw_quotes = true;
    lex.raw_escapes = true;
    lex.skip_unset_env = true;
    let words = lex.process_words(line, &NoEnv).unwrap_or_default();
    let mut out = Vec::new();
    for w in words {
        if let Some(h) = parse_heredoc(&w)? {
            out.push(h);
        }
    }
    Ok(out)
}

/// Parses one heredoc marker word (`<<EOF`, `<<-"EOF"`, `3<<EOF`); `Ok(None)` when the word
/// is not one.
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, String> {
    let Ok(mut pairs) = DockerfileGrammar::parse(Rule::heredoc_word, word) else {
        return Ok(None);
    };
    let Some(p) = pairs.next() else {
        return Ok(None);
    };
    let mut inner = p.into_inner();
    let (Some(fd), Some(chomp), Some(rest)) = (inner.next(), inner.next(), inner.next()) else {
        return Ok(None);
    };
    let fd = match fd.as_str() {
        "" => 0,
        digits => digits.parse::<u64>().unwrap_or(u64::MAX),
    };
    let chomp = chomp.as_str() == "-";
    let rest = rest.as_str();
    if rest.is_empty() {
        return Ok(None);
    }
    let mut lex = Lexer::new('\\');
    lex.skip_unset_env = true;
    let words = lex.process_words(rest, &NoEnv).map_err(|e| e.to_string())?;
    if words.len() != 1 {
        return Ok(None);
    }
    lex.raw_quotes = true;
    let raw = lex.process_words(rest, &NoEnv).map_err(|e| e.to_string())?;
    if raw.len() != words.len() {
        return Err(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        ));
    }
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    let name = words[0].clone();
    Ok(Some(Heredoc {
        expand: quotes(&name) == quotes(&raw[0]),
        name,
        fd,
        chomp,
        content: String::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_whitespace_like_go() {
        assert_eq!(split_ws("a  b\tc"), vec!["a", "b", "c"]);
        assert_eq!(split_ws("x"), vec!["x"]);
    }

    #[test]
    fn flags_stop_at_first_non_flag() {
        let (rest, flags) = extract_flags("--a=1 --b=\"x y\" -- --c d", '\\');
        assert_eq!(flags, vec!["--a=1", "--b=x y"]);
        assert_eq!(rest, " --c d");
    }

    #[test]
    fn heredoc_words() {
        let h = parse_heredoc("<<-'EOF'").unwrap().unwrap();
        assert_eq!((h.name.as_str(), h.chomp, h.expand), ("EOF", true, false));
        assert!(parse_heredoc("<<").unwrap().is_none());
        assert_eq!(parse_heredoc("3<<X").unwrap().unwrap().fd, 3);
    }
}
