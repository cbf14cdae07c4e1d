//! `.dockerignore`: reading the file and matching context paths against it,
//! with the semantics of Docker and BuildKit (moby/patternmatcher), which are
//! not those of `.gitignore`.
//!
//! - Patterns are anchored at the context root: `foo` is only `./foo`;
//!   `**/foo` is `foo` at any depth.
//! - A path is excluded when it or one of its parent directories matches; the
//!   last matching line wins and `!` lines re-include.
//! - `*` and `?` never match `/` (but do match a leading dot), `**` matches
//!   any number of directories, `[...]` is a class (`[^a]` negates, `[!a]`
//!   does not), `\` escapes the next character. A trailing `/` does not
//!   restrict a pattern to directories.
//! - A malformed pattern makes the whole file invalid; a reversed range such
//!   as `[Local-Only]` is only detected when the pattern is evaluated.
//!
//! Walking the context is [`crate::context`]'s job; this module only decides
//! about one slash-separated relative path at a time.

use crate::goregex;
use crate::pathmatch::{clean, dir, filepath_match};

/// Why a set of ignore patterns cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// A line consisting of `!` alone.
    #[error("illegal exclusion pattern: \"!\"")]
    IllegalExclusion,
    /// A malformed glob (bad class, trailing backslash, reversed range).
    #[error("syntax error in pattern {pattern:?}")]
    Syntax {
        /// The offending pattern, as cleaned.
        pattern: String,
    },
}

/// Reads an ignore file the way Docker does (`ignorefile.ReadAll`): a UTF-8
/// BOM is dropped; a line starting with `#` in its very first column is a
/// comment; lines are trimmed and empty ones dropped; a leading `!` marks a
/// re-inclusion (the rest trimmed again); the pattern is path-cleaned and a
/// leading `/` removed. Returns the patterns in file order, `!` kept as a
/// prefix.
///
/// ```
/// use rbuild_executor::dockerignore::read_ignore_file;
/// let pats = read_ignore_file("\u{feff}# comment\n /a/./b/ \n! /keep\n #x\n");
/// assert_eq!(pats, ["a/b", "!keep", "#x"]);
/// ```
pub fn read_ignore_file(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines: Vec<&str> = text.split('\n').collect();
    // A final newline ends the last line rather than starting an empty one.
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let mut patterns = Vec::new();
    for line in lines {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        if invert {
            cleaned.insert(0, '!');
        }
        patterns.push(cleaned);
    }
    patterns
}

/// How a pattern is evaluated (as moby/patternmatcher classifies it).
#[derive(Debug)]
enum Compiled {
    /// No wildcard: the path must equal the pattern.
    Exact(String),
    /// Literal text followed by a final `**`: a prefix test.
    Prefix(String),
    /// A leading `**` followed by literal text: a suffix test.
    Suffix(String),
    /// Anything else, as an anchored regular expression.
    Regex(regex::Regex),
}

/// One pattern of a [`Matcher`].
#[derive(Debug)]
pub struct Pattern {
    text: String,
    exclusion: bool,
    /// The compiled form, or the error that evaluating it raises. Docker
    /// compiles lazily, so an error surfaces only when the pattern is
    /// actually evaluated; keeping the result reproduces that.
    compiled: Result<Compiled, PatternError>,
}

impl Pattern {
    /// The cleaned pattern, without its `!`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether this is a `!` re-inclusion.
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    fn matches(&self, path: &str) -> Result<bool, PatternError> {
        Ok(match self.compiled.as_ref().map_err(Clone::clone)? {
            Compiled::Exact(p) => path == p,
            Compiled::Prefix(p) => path.starts_with(p.as_str()),
            Compiled::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    // `**/foo` also matches `foo` itself.
                    || suffix.strip_prefix('/') == Some(path)
            }
            Compiled::Regex(re) => re.is_match(path),
        })
    }

    /// The literal text before the first wildcard or escape.
    fn literal_prefix(&self) -> &str {
        let end = self
            .text
            .find(['*', '?', '[', '\\'])
            .unwrap_or(self.text.len());
        &self.text[..end]
    }
}

/// Turns a cleaned pattern into Docker's regular expression and classifies
/// it, exactly as moby/patternmatcher's `compile` does (including which
/// literal-only shapes skip the regular expression).
fn compile(pattern: &str) -> Result<Compiled, PatternError> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut re = String::from("^");
    let mut kind = Kind::Exact;
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    let mut index = 0;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                // `**/` is treated as `**`.
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i == chars.len() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        re.push_str(".*");
                        kind = Kind::Regex;
                    }
                } else {
                    re.push_str("(.*/)?");
                    kind = Kind::Regex;
                }
                if index == 0 {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                kind = Kind::Regex;
            }
            '?' => {
                re.push_str("[^/]");
                kind = Kind::Regex;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => match chars.get(i) {
                Some(next) => {
                    re.push('\\');
                    re.push(*next);
                    i += 1;
                    kind = Kind::Regex;
                }
                None => re.push('\\'),
            },
            '[' | ']' => {
                re.push(ch);
                kind = Kind::Regex;
            }
            _ => re.push(ch),
        }
        index += 1;
    }
    let syntax = || PatternError::Syntax {
        pattern: pattern.to_string(),
    };
    Ok(match kind {
        Kind::Exact => Compiled::Exact(pattern.to_string()),
        Kind::Prefix => Compiled::Prefix(pattern[..pattern.len() - 2].to_string()),
        Kind::Suffix => Compiled::Suffix(pattern[2..].to_string()),
        Kind::Regex => {
            re.push('$');
            let rust = goregex::translate(&re).map_err(|_| syntax())?;
            Compiled::Regex(regex::Regex::new(&rust).map_err(|_| syntax())?)
        }
    })
}

/// A compiled list of ignore patterns.
///
/// ```
/// use rbuild_executor::dockerignore::Matcher;
/// let m = Matcher::new(&["docs", "**/*.tmp", "!docs/keep.md"]).unwrap();
/// assert!(m.excluded("docs/a.md").unwrap());
/// assert!(!m.excluded("docs/keep.md").unwrap());
/// assert!(m.excluded("a/b/c.tmp").unwrap());
/// assert!(!m.excluded("src/docs").unwrap()); // anchored at the root
/// ```
#[derive(Debug)]
pub struct Matcher {
    patterns: Vec<Pattern>,
}

/// Per-pattern results for a directory, handed to its children by a walker
/// ([`Matcher::excluded_in`]) so parents are not re-matched for every file.
#[derive(Debug, Clone, Default)]
pub struct MatchState {
    parent_matched: Vec<bool>,
}

impl Matcher {
    /// Compiles patterns as returned by [`read_ignore_file`] (each is trimmed
    /// and cleaned again; a leading `!` marks a re-inclusion). Fails on a lone
    /// `!` or a pattern that is not a valid glob.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Matcher, PatternError> {
        let mut out = Vec::with_capacity(patterns.len());
        for p in patterns {
            let p = p.as_ref().trim();
            if p.is_empty() {
                continue;
            }
            // Docker cleans before looking at `!`, so `!a/../b` loses its `!`.
            let mut p = clean(p);
            let mut exclusion = false;
            if let Some(rest) = p.strip_prefix('!') {
                if rest.is_empty() {
                    return Err(PatternError::IllegalExclusion);
                }
                exclusion = true;
                p = rest.to_string();
            }
            if filepath_match(&p, ".").is_err() {
                return Err(PatternError::Syntax { pattern: p });
            }
            let compiled = compile(&p);
            out.push(Pattern {
                text: p,
                exclusion,
                compiled,
            });
        }
        Ok(Matcher { patterns: out })
    }

    /// Reads and compiles an ignore file's text.
    pub fn from_ignore_file(text: &str) -> Result<Matcher, PatternError> {
        Matcher::new(&read_ignore_file(text))
    }

    /// The compiled patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether there are no patterns at all (nothing is ever excluded).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any `!` pattern exists.
    pub fn has_exclusions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }

    /// Whether the slash-separated relative `path` is excluded: it or one of
    /// its parent directories matches, the last matching pattern deciding
    /// (patternmatcher's `MatchesOrParentMatches`).
    pub fn excluded(&self, path: &str) -> Result<bool, PatternError> {
        let parent = dir(path);
        let parent_dirs: Vec<&str> = parent.split('/').collect();
        let mut matched = false;
        for pattern in &self.patterns {
            // An inclusion cannot change an excluded path and an exclusion
            // cannot change an included one: skip (and never evaluate) it.
            if pattern.exclusion != matched {
                continue;
            }
            let mut hit = pattern.matches(path)?;
            if !hit && parent != "." {
                hit = (1..=parent_dirs.len()).any(|n| {
                    pattern
                        .matches(&parent_dirs[..n].join("/"))
                        .unwrap_or(false)
                });
            }
            if hit {
                matched = !pattern.exclusion;
            }
        }
        Ok(matched)
    }

    /// Like [`Matcher::excluded`] for a walker that visits parents first:
    /// `parent` is the state returned for the entry's parent directory, or
    /// `MatchState::default()` for entries directly under the context root.
    /// Returns the verdict and the state to hand to this entry's children
    /// (patternmatcher's `MatchesUsingParentResults`).
    pub fn excluded_in(
        &self,
        path: &str,
        parent: &MatchState,
    ) -> Result<(bool, MatchState), PatternError> {
        let mut matched = false;
        let mut state = MatchState {
            parent_matched: vec![false; self.patterns.len()],
        };
        for (i, pattern) in self.patterns.iter().enumerate() {
            // A pattern that matched a parent matches everything below it.
            let mut hit = parent.parent_matched.get(i).copied().unwrap_or(false);
            if !hit {
                if pattern.exclusion != matched {
                    continue;
                }
                hit = pattern.matches(path)?;
            }
            state.parent_matched[i] = hit;
            if hit {
                matched = !pattern.exclusion;
            }
        }
        Ok((matched, state))
    }

    /// Whether a `!` pattern could re-include something strictly inside the
    /// directory `dir` (slash-separated, relative). A walker must descend into
    /// an excluded directory when this is true; when false the whole subtree
    /// is excluded and can be skipped. Conservative: any wildcard before the
    /// directory's depth counts as "could".
    pub fn may_reinclude_under(&self, dir: &str) -> bool {
        let dir_slash = format!("{dir}/");
        self.patterns.iter().filter(|p| p.exclusion).any(|p| {
            let lit = p.literal_prefix();
            if lit.len() == p.text.len() {
                // A literal pattern re-includes only itself (and its subtree).
                p.text.starts_with(&dir_slash)
            } else {
                lit.starts_with(&dir_slash) || dir_slash.starts_with(lit)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every short pattern over the glob metacharacters: compiling and
    /// matching never panics, and a pattern is rejected up front exactly
    /// when Go's `filepath.Match` rejects it.
    #[test]
    fn exhaustive_short_patterns_never_panic() {
        let alphabet = ['*', '?', '[', ']', '^', '!', '\\', '-', 'a', '/', '.'];
        let paths = ["a", "a/b", ".a", "]", "-", "a/.", "^", "a\\"];
        let mut patterns = vec![String::new()];
        for _ in 0..3 {
            let mut next = Vec::new();
            for p in &patterns {
                for c in alphabet {
                    next.push(format!("{p}{c}"));
                }
            }
            for p in &next {
                let cleaned = clean(p.trim());
                let bare = cleaned.strip_prefix('!').unwrap_or(&cleaned);
                match Matcher::new(&[p.as_str()]) {
                    Ok(m) => {
                        assert!(filepath_match(bare, ".").is_ok(), "{p:?} accepted");
                        for path in paths {
                            let _ = m.excluded(path);
                        }
                    }
                    Err(PatternError::IllegalExclusion) => assert_eq!(cleaned, "!"),
                    Err(PatternError::Syntax { .. }) => {
                        assert!(filepath_match(bare, ".").is_err(), "{p:?} rejected")
                    }
                }
            }
            patterns = next;
        }
    }
}
