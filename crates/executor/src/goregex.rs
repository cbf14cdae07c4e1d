//! Translation of Go RE2 regular expressions (the `regexp` package with its
//! default Perl flags) into equivalent `regex` crate syntax.
//!
//! Docker's `.dockerignore` matcher turns each pattern into a Go regular
//! expression and lets Go's parser decide what it means: a `[...]` in an
//! ignore pattern is a Go character class, with Go's rules for `]` and `-`,
//! POSIX names, `\d`, `\pL`, octal and hex escapes, and Go's errors (a
//! reversed range `[z-a]` fails only when the pattern is compiled). This
//! module parses that Go syntax and re-emits it in a form whose meaning is
//! unambiguous in Rust's `regex` crate (every literal as `\x{..}`, every
//! class as explicit ranges), so that matching is linear-time and identical.
//! It covers the whole syntax such a translated pattern can contain; other
//! Go constructs (flags groups, counted repetition) are rejected.

/// The Go regular expression is invalid (Go's `regexp.Compile` would fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InvalidRegex;

type Result<T> = std::result::Result<T, InvalidRegex>;

/// Translates a Go regular expression into `regex` crate syntax.
pub(crate) fn translate(go: &str) -> Result<String> {
    let mut p = Parser {
        s: go.chars().collect(),
        i: 0,
    };
    let out = p.sequence(0)?;
    if p.i != p.s.len() {
        // Only an unmatched `)` stops a top-level sequence early.
        return Err(InvalidRegex);
    }
    Ok(out)
}

struct Parser {
    s: Vec<char>,
    i: usize,
}

fn lit(c: char, out: &mut String) {
    out.push_str(&format!("\\x{{{:X}}}", c as u32));
}

fn range(lo: char, hi: char, out: &mut String) {
    lit(lo, out);
    if hi != lo {
        out.push('-');
        lit(hi, out);
    }
}

/// Go's Perl classes are ASCII-only.
fn perl_class(c: char) -> Option<&'static str> {
    Some(match c {
        'd' => r"[\x{30}-\x{39}]",
        'D' => r"[^\x{30}-\x{39}]",
        's' => r"[\x{9}\x{A}\x{C}\x{D}\x{20}]",
        'S' => r"[^\x{9}\x{A}\x{C}\x{D}\x{20}]",
        'w' => r"[\x{30}-\x{39}\x{41}-\x{5A}\x{61}-\x{7A}\x{5F}]",
        'W' => r"[^\x{30}-\x{39}\x{41}-\x{5A}\x{61}-\x{7A}\x{5F}]",
        _ => return None,
    })
}

const POSIX_CLASSES: &[&str] = &[
    "alnum", "alpha", "ascii", "blank", "cntrl", "digit", "graph", "lower", "print", "punct",
    "space", "upper", "word", "xdigit",
];

impl Parser {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.s.get(self.i + n).copied()
    }

    fn next(&mut self) -> Result<char> {
        let c = self.peek().ok_or(InvalidRegex)?;
        self.i += 1;
        Ok(c)
    }

    /// A sequence of alternatives up to the end or an unconsumed `)`.
    fn sequence(&mut self, depth: usize) -> Result<String> {
        let mut out = String::new();
        // Whether there is an operand for a repetition operator, and whether
        // the previous item was itself a repetition (Go rejects `**`).
        let mut operand = false;
        let mut last_repeat = false;
        while let Some(c) = self.peek() {
            let mut repeat = false;
            match c {
                ')' if depth > 0 => break,
                ')' => return Err(InvalidRegex),
                '|' => {
                    self.i += 1;
                    out.push('|');
                    operand = false;
                }
                '(' => {
                    self.i += 1;
                    if self.peek() == Some('?') {
                        return Err(InvalidRegex);
                    }
                    let inner = self.sequence(depth + 1)?;
                    if self.next()? != ')' {
                        return Err(InvalidRegex);
                    }
                    out.push_str("(?:");
                    out.push_str(&inner);
                    out.push(')');
                    operand = true;
                }
                '*' | '+' | '?' => {
                    if !operand || last_repeat {
                        return Err(InvalidRegex);
                    }
                    self.i += 1;
                    out.push(c);
                    if self.peek() == Some('?') {
                        self.i += 1;
                        out.push('?');
                    }
                    repeat = true;
                }
                '.' => {
                    self.i += 1;
                    out.push_str(r"[^\x{A}]");
                    operand = true;
                }
                '^' => {
                    self.i += 1;
                    out.push_str(r"(?:\A)");
                    operand = true;
                }
                '$' => {
                    self.i += 1;
                    out.push_str(r"(?:\z)");
                    operand = true;
                }
                '[' => {
                    self.i += 1;
                    self.class(&mut out)?;
                    operand = true;
                }
                '\\' => {
                    self.i += 1;
                    self.escape(&mut out)?;
                    operand = true;
                }
                other => {
                    // `{` is literal unless it forms a counted repetition,
                    // which translated ignore patterns never contain.
                    self.i += 1;
                    lit(other, &mut out);
                    operand = true;
                }
            }
            last_repeat = repeat;
        }
        Ok(out)
    }

    /// An escape outside a class; the backslash is consumed.
    fn escape(&mut self, out: &mut String) -> Result<()> {
        match self.peek() {
            Some('A') => {
                self.i += 1;
                out.push_str(r"(?:\A)");
            }
            Some('z') => {
                self.i += 1;
                out.push_str(r"(?:\z)");
            }
            Some('b') => {
                self.i += 1;
                out.push_str(r"(?-u:\b)");
            }
            Some('B') => {
                self.i += 1;
                out.push_str(r"(?-u:\B)");
            }
            Some('Q') => {
                self.i += 1;
                let mut group = String::from("(?:");
                while let Some(c) = self.peek() {
                    if c == '\\' && self.peek_at(1) == Some('E') {
                        self.i += 2;
                        break;
                    }
                    self.i += 1;
                    lit(c, &mut group);
                }
                group.push(')');
                out.push_str(&group);
            }
            Some('p') | Some('P') => {
                let mut class = String::from("[");
                self.unicode_class(&mut class)?;
                class.push(']');
                out.push_str(&class);
            }
            Some(c) if perl_class(c).is_some() => {
                self.i += 1;
                out.push_str(perl_class(c).unwrap_or_default());
            }
            _ => {
                let c = self.escaped_char()?;
                out.push_str("(?:");
                lit(c, out);
                out.push(')');
            }
        }
        Ok(())
    }

    /// `\p{Name}`, `\pL`, `\P...`, `\p{^Name}` with the `\` not yet consumed
    /// past (`self.i` is at `p` or `P`).
    fn unicode_class(&mut self, out: &mut String) -> Result<()> {
        let mut negated = self.next()? == 'P';
        let name = match self.next()? {
            '{' => {
                let mut name = String::new();
                loop {
                    match self.next()? {
                        '}' => break,
                        c => name.push(c),
                    }
                }
                name
            }
            c => c.to_string(),
        };
        let name = match name.strip_prefix('^') {
            Some(rest) => {
                negated = !negated;
                rest.to_string()
            }
            None => name,
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(InvalidRegex);
        }
        out.push_str(if negated { r"\P{" } else { r"\p{" });
        out.push_str(&name);
        out.push('}');
        Ok(())
    }

    /// A single escaped character (Go's `parseEscape`); the backslash is
    /// consumed.
    fn escaped_char(&mut self) -> Result<char> {
        let c = self.next()?;
        let octal = |c: Option<char>| matches!(c, Some('0'..='7'));
        match c {
            '1'..='7' | '0' => {
                // A lone non-zero digit would be a backreference: unsupported.
                if c != '0' && !octal(self.peek()) {
                    return Err(InvalidRegex);
                }
                let mut r = c as u32 - '0' as u32;
                for _ in 1..3 {
                    if !octal(self.peek()) {
                        break;
                    }
                    r = r * 8 + (self.next()? as u32 - '0' as u32);
                }
                char::from_u32(r).ok_or(InvalidRegex)
            }
            'x' => {
                let first = self.next()?;
                if first == '{' {
                    let mut r: u32 = 0;
                    let mut digits = 0;
                    loop {
                        let d = self.next()?;
                        if d == '}' {
                            break;
                        }
                        r = r * 16 + d.to_digit(16).ok_or(InvalidRegex)?;
                        if r > 0x10FFFF {
                            return Err(InvalidRegex);
                        }
                        digits += 1;
                    }
                    if digits == 0 {
                        return Err(InvalidRegex);
                    }
                    return char::from_u32(r).ok_or(InvalidRegex);
                }
                let second = self.next()?;
                let x = first.to_digit(16).ok_or(InvalidRegex)?;
                let y = second.to_digit(16).ok_or(InvalidRegex)?;
                char::from_u32(x * 16 + y).ok_or(InvalidRegex)
            }
            'a' => Ok('\x07'),
            'f' => Ok('\x0C'),
            'n' => Ok('\n'),
            'r' => Ok('\r'),
            't' => Ok('\t'),
            'v' => Ok('\x0B'),
            // Escaped ASCII punctuation is always itself; other letters,
            // digits and non-ASCII characters are errors in Go.
            c if c.is_ascii() && !c.is_ascii_alphanumeric() => Ok(c),
            _ => Err(InvalidRegex),
        }
    }

    /// A bracket class; the `[` is consumed.
    fn class(&mut self, out: &mut String) -> Result<()> {
        let mut body = String::new();
        let mut negated = false;
        if self.peek() == Some('^') {
            self.i += 1;
            negated = true;
        }
        // `]` (and `-`) are ordinary as the first character of a class.
        let mut first = true;
        loop {
            let c = self.peek().ok_or(InvalidRegex)?;
            if c == ']' && !first {
                self.i += 1;
                break;
            }
            first = false;
            if c == '[' && self.peek_at(1) == Some(':') {
                if let Some(item) = self.posix_class()? {
                    body.push_str(&item);
                    continue;
                }
            }
            if c == '\\' {
                match self.peek_at(1) {
                    Some('p') | Some('P') => {
                        self.i += 1;
                        self.unicode_class(&mut body)?;
                        continue;
                    }
                    Some(p) if perl_class(p).is_some() => {
                        self.i += 2;
                        body.push_str(perl_class(p).unwrap_or_default());
                        continue;
                    }
                    _ => {}
                }
            }
            let lo = self.class_char()?;
            let mut hi = lo;
            // `[a-]` is `a` and `-`: a dash before the closing bracket is literal.
            if self.peek() == Some('-') && self.peek_at(1).is_some_and(|c| c != ']') {
                self.i += 1;
                hi = self.class_char()?;
                if hi < lo {
                    return Err(InvalidRegex);
                }
            }
            range(lo, hi, &mut body);
        }
        if body.is_empty() {
            return Err(InvalidRegex);
        }
        out.push('[');
        if negated {
            out.push('^');
        }
        out.push_str(&body);
        out.push(']');
        Ok(())
    }

    /// `[:name:]` or `[:^name:]` at the cursor; `None` (cursor unchanged)
    /// when there is no closing `:]`, in which case `[` is an ordinary
    /// character.
    fn posix_class(&mut self) -> Result<Option<String>> {
        let rest: String = self.s[self.i + 2..].iter().collect();
        let Some(end) = rest.find(":]") else {
            return Ok(None);
        };
        let name = &rest[..end];
        let bare = name.strip_prefix('^').unwrap_or(name);
        if !POSIX_CLASSES.contains(&bare) {
            return Err(InvalidRegex);
        }
        let item = format!("[:{name}:]");
        self.i += 2 + name.chars().count() + 2;
        Ok(Some(item))
    }

    fn class_char(&mut self) -> Result<char> {
        match self.next()? {
            '\\' => self.escaped_char(),
            c => Ok(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go_matches(go: &str, text: &str) -> Option<bool> {
        let rust = translate(go).ok()?;
        Some(regex::Regex::new(&rust).ok()?.is_match(text))
    }

    #[test]
    fn go_class_rules() {
        assert_eq!(go_matches("^[]a]$", "]"), Some(true));
        assert_eq!(go_matches("^[a-]$", "-"), Some(true));
        assert_eq!(go_matches("^[^a]$", "\n"), Some(true));
        assert_eq!(go_matches("^.$", "\n"), Some(false));
        assert_eq!(go_matches("^[[:alpha:]]$", "q"), Some(true));
        assert_eq!(go_matches("^[[^/]*]$", "[^/]"), Some(true));
        assert_eq!(go_matches(r"^\d$", "٣"), Some(false));
        assert_eq!(go_matches(r"^\pL$", "é"), Some(true));
        assert_eq!(go_matches(r"^\Q.*\E$", ".*"), Some(true));
        assert_eq!(go_matches(r"^a\x41$", "aA"), Some(true));
        assert_eq!(go_matches(r"^[a&&b]$", "&"), Some(true));
        assert_eq!(go_matches("^a^b$", "ab"), Some(false));
        assert_eq!(translate("^[Local-Only]$"), Err(InvalidRegex));
        assert_eq!(translate("a**"), Err(InvalidRegex));
        assert_eq!(translate(r"\1"), Err(InvalidRegex));
        assert_eq!(translate(r"\é"), Err(InvalidRegex));
        assert_eq!(translate("[[:nope:]]"), Err(InvalidRegex));
    }
}
