//! Shell-word expansion with the semantics of BuildKit's word lexer.
//!
//! This module owns variable expansion (`$v`, `${v}`, `${v:-w}`, `${v#p}`, `${v/a/b}` ...),
//! quote removal, escapes with the active escape character and word splitting. It does not
//! know about instructions: the instruction layer decides which words are expanded.
//!
//! The behaviour follows BuildKit's lexer exactly, quirks included, because a Dockerfile must
//! mean the same thing under rbuild as under BuildKit:
//! - only `*` and `?` are pattern wildcards (`[...]` is literal);
//! - `$1`, `$@`, `$$` and friends expand to the empty string (and count as unset names);
//! - [`Lexer::process_words`] drops empty words, even quoted ones;
//! - inside double quotes the escape character only escapes `"`, `$` and itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use unicode_general_category::{get_general_category, GeneralCategory};

/// Where variable values come from during expansion.
pub trait Env {
    /// The value of `name`, or `None` when the variable is not set (set-but-empty is `Some("")`).
    fn get(&self, name: &str) -> Option<&str>;
}

impl Env for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        BTreeMap::get(self, name).map(String::as_str)
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        HashMap::get(self, name).map(String::as_str)
    }
}

impl<E: Env + ?Sized> Env for &E {
    fn get(&self, name: &str) -> Option<&str> {
        (**self).get(name)
    }
}

/// An environment with no variables at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEnv;

impl Env for NoEnv {
    fn get(&self, _name: &str) -> Option<&str> {
        None
    }
}

/// Builds an environment from `NAME=value` strings; a later duplicate wins and an entry
/// without `=` defines the name with an empty value (as BuildKit's `EnvsFromSlice`).
pub fn env_from_pairs<I, S>(pairs: I) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    pairs
        .into_iter()
        .map(|p| {
            let p = p.as_ref();
            match p.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (p.to_string(), String::new()),
            }
        })
        .collect()
}

/// An expansion failure: the word that failed and BuildKit's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to process {}: {message}", crate::quote::go_quote(.word))]
pub struct ExpandError {
    /// The word being expanded.
    pub word: String,
    /// What went wrong (`syntax error: missing '}'`, `NAME: is not allowed to be unset`, ...).
    pub message: String,
}

/// The result of expanding one word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The expanded word.
    pub result: String,
    /// Names that were looked up and set.
    pub matched: BTreeSet<String>,
    /// Names that were looked up and not set (special parameters such as `$1` included).
    pub unmatched: BTreeSet<String>,
}

/// A shell-word lexer configured with an escape character and BuildKit's lexer options.
#[derive(Debug, Clone, Copy)]
pub struct Lexer {
    escape: char,
    /// Keep quote characters in the output (used to detect quoted heredoc delimiters).
    pub raw_quotes: bool,
    /// Keep escape characters in the output.
    pub raw_escapes: bool,
    /// Leave references to unset variables as written instead of expanding them to "".
    pub skip_unset_env: bool,
    /// Treat quote characters as ordinary characters (heredoc bodies of COPY/ADD).
    pub skip_process_quotes: bool,
}

impl Lexer {
    /// A lexer with the given escape character (`\` or `` ` ``) and default options.
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
            skip_process_quotes: false,
        }
    }

    /// The escape character.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Expands `word` as one word (BuildKit `ProcessWordWithMatches`): quotes removed,
    /// variables expanded, whitespace kept.
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<Expansion, ExpandError> {
        let mut st = State::new(self, word, env, true);
        match st.process_stop_on(None, self.raw_escapes) {
            Ok((result, _)) => Ok(Expansion {
                result,
                matched: st.matched,
                unmatched: st.unmatched,
            }),
            Err(message) => Err(ExpandError {
                word: word.to_string(),
                message,
            }),
        }
    }

    /// Expands `word` and splits the result into words (BuildKit `ProcessWords`); empty words
    /// are dropped.
    pub fn process_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, ExpandError> {
        let mut st = State::new(self, word, env, false);
        match st.process_stop_on(None, self.raw_escapes) {
            Ok((_, words)) => Ok(words),
            Err(message) => Err(ExpandError {
                word: word.to_string(),
                message,
            }),
        }
    }
}

/// Go's `unicode.IsSpace` (the same set as Rust's `char::is_whitespace`).
pub(crate) fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// Go's `unicode.IsLetter`.
fn is_letter(c: char) -> bool {
    use GeneralCategory::*;
    matches!(
        get_general_category(c),
        UppercaseLetter | LowercaseLetter | TitlecaseLetter | ModifierLetter | OtherLetter
    )
}

/// Go's `unicode.IsDigit`.
fn is_digit(c: char) -> bool {
    get_general_category(c) == GeneralCategory::DecimalNumber
}

fn is_special_param(c: char) -> bool {
    matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// Go's `string(rune)` for the scanner's EOF marker: the replacement character.
fn rune_str(c: Option<char>) -> char {
    c.unwrap_or('\u{FFFD}')
}

/// Word-splitting state; the byte buffer itself lives in [`State::words_buf`] because
/// BuildKit shares one buffer between nested `${...}` scans (a nested scan resets it).
#[derive(Default)]
struct Words {
    words: Vec<String>,
    in_word: bool,
}

struct State<'a> {
    lex: &'a Lexer,
    chars: Vec<char>,
    pos: usize,
    env: &'a dyn Env,
    raw_escapes: bool,
    capture: bool,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
    words_buf: String,
    /// How many `${...}` enclose the current position: each level recurses,
    /// so hostile nesting must end in an error, not a stack overflow.
    depth: usize,
}

/// Deepest `${...}` nesting expanded; real Dockerfiles nest two or three.
const MAX_SUBSTITUTION_DEPTH: usize = 100;

impl<'a> State<'a> {
    fn new(lex: &'a Lexer, word: &str, env: &'a dyn Env, capture: bool) -> Self {
        let mut chars: Vec<char> = word.chars().collect();
        // Go's text/scanner skips a byte-order mark at the very start of its input.
        if chars.first() == Some(&'\u{FEFF}') {
            chars.remove(0);
        }
        State {
            lex,
            chars,
            pos: 0,
            env,
            raw_escapes: lex.raw_escapes,
            capture,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
            words_buf: String::new(),
            depth: 0,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.chars.get(self.pos).copied();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn add_char(&mut self, w: &mut Words, ch: char) {
        if is_space(ch) {
            if w.in_word && !self.words_buf.is_empty() {
                w.words.push(std::mem::take(&mut self.words_buf));
                w.in_word = false;
            }
        } else {
            self.add_raw_char(w, ch);
        }
    }

    fn add_raw_char(&mut self, w: &mut Words, ch: char) {
        self.words_buf.push(ch);
        w.in_word = true;
    }

    fn add_string(&mut self, w: &mut Words, s: &str) {
        for ch in s.chars() {
            self.add_char(w, ch);
        }
    }

    fn add_raw_string(&mut self, w: &mut Words, s: &str) {
        self.words_buf.push_str(s);
        w.in_word = true;
    }

    fn get_words(&mut self, mut w: Words) -> Vec<String> {
        if !self.words_buf.is_empty() {
            w.words.push(std::mem::take(&mut self.words_buf));
        }
        w.words
    }

    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), String> {
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let r = self.scan_until(stop);
        self.raw_escapes = saved;
        r
    }

    fn scan_until(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), String> {
        let mut result = String::new();
        self.words_buf.clear();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if stop == Some(ch) {
                self.next();
                let w = self.get_words(words);
                return Ok((result, w));
            }
            match ch {
                '$' => {
                    let tmp = self.process_dollar()?;
                    result.push_str(&tmp);
                    self.add_string(&mut words, &tmp);
                }
                '<' => {
                    let tmp = self.process_possible_heredoc();
                    result.push_str(&tmp);
                    self.add_raw_string(&mut words, &tmp);
                }
                '\'' if !self.lex.skip_process_quotes => {
                    let tmp = self.process_single_quote()?;
                    result.push_str(&tmp);
                    self.add_raw_string(&mut words, &tmp);
                }
                '"' if !self.lex.skip_process_quotes => {
                    let tmp = self.process_double_quote()?;
                    result.push_str(&tmp);
                    self.add_raw_string(&mut words, &tmp);
                }
                _ => {
                    self.next();
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            self.add_raw_char(&mut words, ch);
                            result.push(ch);
                        }
                        // The escape character escapes the next one, except at the end.
                        match self.next() {
                            None => break,
                            Some(c) => {
                                self.add_raw_char(&mut words, c);
                                result.push(c);
                            }
                        }
                    } else {
                        self.add_char(&mut words, ch);
                        result.push(ch);
                    }
                }
            }
        }
        if let Some(stop) = stop {
            return Err(format!(
                "unexpected end of statement while looking for matching {stop}"
            ));
        }
        let w = self.get_words(words);
        Ok((result, w))
    }

    fn process_single_quote(&mut self) -> Result<String, String> {
        // Everything up to the next single quote is literal; a single quote cannot be escaped.
        let mut result = String::new();
        let q = self.next();
        if self.lex.raw_quotes {
            result.push(rune_str(q));
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    )
                }
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, String> {
        let mut result = String::new();
        let q = self.next();
        if self.lex.raw_quotes {
            result.push(rune_str(q));
        }
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    )
                }
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let v = self.process_dollar()?;
                    result.push_str(&v);
                }
                Some(_) => {
                    let mut ch = rune_str(self.next());
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            // An escape at the very end is dropped; the missing quote is
                            // reported by the next iteration.
                            None => continue,
                            Some(c) if c == '"' || c == '$' || c == self.lex.escape => {
                                ch = c;
                                self.next();
                            }
                            // Any other escaped character keeps the escape character.
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn lookup(&mut self, name: &str) -> Option<String> {
        let v = self.env.get(name).map(str::to_string);
        if self.capture {
            if v.is_some() {
                self.matched.insert(name.to_string());
            } else {
                self.unmatched.insert(name.to_string());
            }
        }
        v
    }

    fn process_dollar(&mut self) -> Result<String, String> {
        if self.depth >= MAX_SUBSTITUTION_DEPTH {
            return Err(format!(
                "syntax error: substitutions nested more than {MAX_SUBSTITUTION_DEPTH} deep"
            ));
        }
        self.depth += 1;
        let r = self.process_dollar_inner();
        self.depth -= 1;
        r
    }

    fn process_dollar_inner(&mut self) -> Result<String, String> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.lookup(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.next();
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{') | Some('}') | Some(':') => {
                return Err("syntax error: bad substitution".into())
            }
            _ => {}
        }
        let name = self.process_name();
        let first = self.next();
        let mut chs = String::from(rune_str(first));
        let mut op = first;
        let mut null_is_unset = false;
        match first {
            Some('}') => {
                return Ok(match self.lookup(&name) {
                    Some(v) => v,
                    None if self.lex.skip_unset_env => format!("${{{name}}}"),
                    None => String::new(),
                });
            }
            Some('/') => return self.process_replace(&name),
            Some(':') => {
                null_is_unset = true;
                op = self.next();
                chs.push(rune_str(op));
            }
            Some('+' | '-' | '?' | '#' | '%') => {}
            _ => return Err(format!("unsupported modifier ({chs}) in substitution")),
        }
        // `${v:X...}` continues here whatever X is, as in BuildKit: the word is scanned and
        // the variable looked up before an unknown modifier is reported.
        let raw = matches!(op, Some('#' | '%'));
        if null_is_unset && raw {
            return Err(format!("unsupported modifier ({chs}) in substitution"));
        }
        let word = match self.process_stop_on(Some('}'), raw) {
            Ok((w, _)) => w,
            Err(e) => {
                if self.peek().is_none() {
                    return Err("syntax error: missing '}'".into());
                }
                return Err(e);
            }
        };
        let value = self.lookup(&name);
        if self.lex.skip_unset_env && value.is_none() {
            return Ok(format!("${{{name}{chs}{word}}}"));
        }
        let empty_or_unset = match &value {
            None => true,
            Some(v) => null_is_unset && v.is_empty(),
        };
        match op {
            Some('-') => Ok(if empty_or_unset {
                word
            } else {
                value.unwrap_or_default()
            }),
            Some('+') => Ok(if empty_or_unset { String::new() } else { word }),
            Some('?') => match value {
                None => Err(format!(
                    "{name}: {}",
                    if word.is_empty() {
                        "is not allowed to be unset"
                    } else {
                        &word
                    }
                )),
                Some(v) if null_is_unset && v.is_empty() => Err(format!(
                    "{name}: {}",
                    if word.is_empty() {
                        "is not allowed to be empty"
                    } else {
                        &word
                    }
                )),
                Some(v) => Ok(v),
            },
            Some(c @ ('%' | '#')) => {
                let (pattern, greedy) = match word.strip_prefix(c) {
                    Some(rest) => (rest.to_string(), true),
                    None => (word, false),
                };
                let value = value.unwrap_or_default();
                if c == '%' {
                    trim_suffix(&pattern, &value, greedy)
                } else {
                    trim_prefix(&pattern, &value, greedy)
                }
            }
            _ => Err(format!("unsupported modifier ({chs}) in substitution")),
        }
    }

    fn process_replace(&mut self, name: &str) -> Result<String, String> {
        let replace_all = self.peek() == Some('/');
        if replace_all {
            self.next();
        }
        let pattern = match self.process_stop_on(Some('/'), true) {
            Ok((p, _)) => p,
            Err(e) => {
                if self.peek().is_none() {
                    return Err("syntax error: missing '/' in ${}".into());
                }
                return Err(e);
            }
        };
        let replacement = match self.process_stop_on(Some('}'), true) {
            Ok((r, _)) => r,
            Err(e) => {
                if self.peek().is_none() {
                    return Err("syntax error: missing '}'".into());
                }
                return Err(e);
            }
        };
        let value = self.lookup(name);
        if self.lex.skip_unset_env && value.is_none() {
            return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
        }
        let value = value.unwrap_or_default();
        let re = pattern_to_regex(&pattern, true, false)
            .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
        if replace_all {
            // Go's ReplaceAllString expands `$n`/`${name}` in the replacement, as does regex.
            Ok(re.replace_all(&value, replacement.as_str()).into_owned())
        } else {
            Ok(match re.find(&value) {
                Some(m) => format!(
                    "{}{}{}",
                    &value[..m.start()],
                    replacement,
                    &value[m.end()..]
                ),
                None => value,
            })
        }
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_digit(ch) {
                while let Some(d) = self.peek().filter(|c| is_digit(*c)) {
                    name.push(d);
                    self.next();
                }
                return name;
            }
            if name.is_empty() && is_special_param(ch) {
                self.next();
                return ch.to_string();
            }
            if !is_letter(ch) && !is_digit(ch) && ch != '_' {
                break;
            }
            name.push(ch);
            self.next();
        }
        name
    }

    fn process_possible_heredoc(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".into();
        }
        self.next();
        // A heredoc may have spaces between `<<` and its delimiter word; keep them in the
        // same word so the heredoc detector sees `<<  EOF` as one word.
        let mut out = String::from("<<");
        while let Some(c) = self.peek().filter(|c| matches!(c, '\t' | '\r' | ' ')) {
            out.push(c);
            self.next();
        }
        out
    }
}

/// Converts a shell pattern (`*`, `?`, `\` escapes; no bracket expressions) to a regex.
fn pattern_to_regex(pattern: &str, greedy: bool, anchored: bool) -> Result<regex::Regex, String> {
    let mut chars: Vec<char> = pattern.chars().collect();
    if chars.first() == Some(&'\u{FEFF}') {
        chars.remove(0);
    }
    let mut out = String::with_capacity(pattern.len() + 4);
    if anchored {
        out.push('^');
    }
    let star = if greedy { ".*" } else { ".*?" };
    let mut i = 0;
    while i < chars.len() {
        let mut tok = chars[i];
        i += 1;
        match tok {
            '*' => {
                out.push_str(star);
                continue;
            }
            '?' => {
                out.push('.');
                continue;
            }
            '\\' => {
                // `\}` and `\/` were needed to write the pattern inside `${}`: the escape is
                // not part of the pattern.
                if matches!(chars.get(i), Some('}' | '/')) {
                    continue;
                }
                out.push('\\');
                let next = chars.get(i).copied();
                i += 1;
                match next {
                    Some(c @ ('*' | '?' | '\\')) => tok = c,
                    other => return Err(format!("invalid escape '\\{}'", rune_str(other))),
                }
            }
            '[' | ']' | '{' | '}' | '.' | '+' | '(' | ')' | '|' | '^' | '$' => out.push('\\'),
            _ => {}
        }
        out.push(tok);
    }
    regex::Regex::new(&out).map_err(|e| e.to_string())
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let re = pattern_to_regex(pattern, greedy, true)
        .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
    Ok(match re.find(value) {
        Some(m) => value[m.end()..].to_string(),
        None => value.to_string(),
    })
}

/// Reverses a pattern without splitting escapes: `a\*c` becomes `c\*a`.
fn reverse_pattern(pattern: &str) -> String {
    let p: Vec<char> = pattern.chars().collect();
    let mut out = vec!['\0'; p.len()];
    let last = p.len().wrapping_sub(1);
    let mut i = 0;
    while i < p.len() {
        let out_idx = last - i;
        if p[i] == '\\' && i != last {
            out[out_idx - 1] = '\\';
            out[out_idx] = p[i + 1];
            i += 2;
        } else {
            out[out_idx] = p[i];
            i += 1;
        }
    }
    out.into_iter().collect()
}

fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    // Regexes cannot find the shortest rightmost match, so both sides are reversed and the
    // suffix becomes a prefix.
    let rp = reverse_pattern(pattern);
    let rv: String = value.chars().rev().collect();
    let r = trim_prefix(&rp, &rv, greedy)?;
    Ok(r.chars().rev().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        env_from_pairs(["A=a b", "E=", "P=/usr/local/bin"])
    }

    #[test]
    fn expands_basic_forms() {
        let l = Lexer::new('\\');
        let e = env();
        let w = |s: &str| l.process_word(s, &e).map(|x| x.result);
        assert_eq!(w("$A-${A}").unwrap(), "a b-a b");
        assert_eq!(w("${E:-x}${E-y}").unwrap(), "x");
        assert_eq!(w("${P##*/}|${P%/*}").unwrap(), "bin|/usr/local");
        assert_eq!(w("${P//\\//:}").unwrap(), ":usr:local:bin");
        assert_eq!(w("'$A'\"$A\"").unwrap(), "$Aa b");
        assert!(w("${U:?must be set}")
            .unwrap_err()
            .to_string()
            .contains("U: must be set"));
    }

    #[test]
    fn words_split_and_drop_empty() {
        let l = Lexer::new('\\');
        let e = env();
        assert_eq!(
            l.process_words("x $A \"\" 'c d'", &e).unwrap(),
            vec!["x", "a", "b", "c d"]
        );
    }

    #[test]
    fn reports_matches() {
        let l = Lexer::new('\\');
        let r = l.process_word("$A $NOPE $1", &env()).unwrap();
        assert_eq!(r.matched.into_iter().collect::<Vec<_>>(), vec!["A"]);
        assert_eq!(
            r.unmatched.into_iter().collect::<Vec<_>>(),
            vec!["1", "NOPE"]
        );
    }

    #[test]
    fn reverse_pattern_keeps_escapes() {
        assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
        assert_eq!(reverse_pattern(""), "");
    }
}
