//! Slash-path helpers with the exact semantics of Go's `path/filepath` on
//! Unix: `Clean`, `Dir` and `Match`; and [`path_order`], the order of
//! relative paths by components that contexts and layers are kept in.
//!
//! Docker and BuildKit are written in Go and their user-visible rules (how a
//! `.dockerignore` line is normalised, which context files a `COPY src*`
//! wildcard selects) are defined by these functions, quirks included. This
//! module owns only those three primitives; the `.dockerignore` matcher lives
//! in [`crate::dockerignore`] and COPY source selection in [`crate::context`].

/// The pattern is malformed (Go's `filepath.ErrBadPattern`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("syntax error in pattern")]
pub struct BadPattern;

/// Compares slash-separated relative paths component by component, as
/// `a.split('/').cmp(b.split('/'))` does but without splitting: a directory
/// sorts right before its contents, and those before its next sibling
/// (`a`, `a/b`, `a-c`), so a depth-first walk that visits each directory's
/// entries by name produces this order with no sort. Paths hold no NUL and
/// no empty components.
///
/// ```
/// use rbuild_executor::pathmatch::path_order;
/// use std::cmp::Ordering;
/// assert_eq!(path_order("a/b", "a-c"), Ordering::Less);
/// assert_eq!(path_order("a", "a/b"), Ordering::Less);
/// assert_eq!(path_order("ab", "a/z"), Ordering::Greater);
/// ```
pub fn path_order(a: &str, b: &str) -> std::cmp::Ordering {
    // With `/` below every byte a name may hold, byte order is component order.
    let key = |c: u8| if c == b'/' { 0 } else { c };
    a.bytes().map(key).cmp(b.bytes().map(key))
}

/// Go's `filepath.Clean` for slash-separated paths: collapses repeated
/// slashes, removes `.` elements, resolves `..` against the preceding
/// element (dropping it at the root of an absolute path) and removes a
/// trailing slash. The empty path cleans to `.`.
///
/// ```
/// use rbuild_executor::pathmatch::clean;
/// assert_eq!(clean("a//b/./../c/"), "a/c");
/// assert_eq!(clean("/../x"), "/x");
/// assert_eq!(clean("../../x"), "../../x");
/// assert_eq!(clean(""), ".");
/// ```
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => match parts.last() {
                Some(last) if *last != ".." => {
                    parts.pop();
                }
                // `..` at the root of an absolute path is the root itself.
                _ if rooted => {}
                _ => parts.push(".."),
            },
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Go's `filepath.Dir`: everything before the last slash, cleaned (`.` when
/// there is no slash).
///
/// ```
/// use rbuild_executor::pathmatch::dir;
/// assert_eq!(dir("a/b/c"), "a/b");
/// assert_eq!(dir("file/"), "file");
/// assert_eq!(dir("file"), ".");
/// assert_eq!(dir("/"), "/");
/// ```
pub fn dir(path: &str) -> String {
    match path.rfind('/') {
        Some(i) => clean(&path[..=i]),
        None => ".".to_string(),
    }
}

/// Go's `filepath.Match`: whether `name` matches the shell pattern.
///
/// `*` matches any run of non-`/` characters, `?` one non-`/` character,
/// `[...]` a class (`[^...]` negated, ranges `a-z`), `\` escapes the next
/// character. Like Go, the whole pattern is checked for syntax even when the
/// match fails early, so a malformed pattern is always an error.
///
/// ```
/// use rbuild_executor::pathmatch::filepath_match;
/// assert_eq!(filepath_match("*.go", "main.go"), Ok(true));
/// assert_eq!(filepath_match("*", "a/b"), Ok(false));
/// assert!(filepath_match("[x-", "x").is_err());
/// ```
pub fn filepath_match(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    let mut pattern = pattern.as_bytes();
    let mut name = name.as_bytes();
    'pattern: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            // A trailing `*` matches the rest of the name unless it has a `/`.
            return Ok(!name.contains(&b'/'));
        }
        let (t, ok, err) = match_chunk(chunk, name);
        // The last chunk must consume the whole name; otherwise keep trying
        // later positions through the star.
        if ok && (t.is_empty() || !pattern.is_empty()) {
            name = t;
            continue;
        }
        if err {
            return Err(BadPattern);
        }
        if star {
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                let (t, ok, err) = match_chunk(chunk, &name[i + 1..]);
                if ok {
                    if pattern.is_empty() && !t.is_empty() {
                        i += 1;
                        continue;
                    }
                    name = t;
                    continue 'pattern;
                }
                if err {
                    return Err(BadPattern);
                }
                i += 1;
            }
        }
        // No match: still report a syntax error anywhere in the rest.
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            if match_chunk(chunk, b"").2 {
                return Err(BadPattern);
            }
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Splits off leading stars and the following chunk up to the next star
/// outside a bracket expression.
fn scan_chunk(mut pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut star = false;
    while let Some(b'*') = pattern.first() {
        pattern = &pattern[1..];
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pattern[..i], &pattern[i..])
}

/// Decodes one UTF-8 character: the character, its length, and whether the
/// bytes were valid. Invalid bytes decode as U+FFFD of length 1, as in Go.
fn decode_rune(s: &[u8]) -> (char, usize, bool) {
    let len = match s.first() {
        None => return ('\u{FFFD}', 0, false),
        Some(b) if *b < 0x80 => 1,
        Some(b) if *b >= 0xF0 => 4,
        Some(b) if *b >= 0xE0 => 3,
        Some(b) if *b >= 0xC0 => 2,
        Some(_) => 1,
    };
    match s
        .get(..len)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|t| t.chars().next())
    {
        Some(c) => (c, len, true),
        None => ('\u{FFFD}', 1, false),
    }
}

/// Matches one chunk at the start of `s`. Returns the rest of `s`, whether
/// it matched, and whether the chunk is malformed. After a mismatch the chunk
/// is still parsed to the end so that syntax errors are always found.
fn match_chunk<'a>(mut chunk: &[u8], mut s: &'a [u8]) -> (&'a [u8], bool, bool) {
    let mut failed = false;
    while !chunk.is_empty() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match chunk[0] {
            b'[' => {
                let mut r = '\0';
                if !failed {
                    let (c, n, _) = decode_rune(s);
                    r = c;
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let mut negated = false;
                if chunk.first() == Some(&b'^') {
                    negated = true;
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut nrange = 0;
                loop {
                    if chunk.first() == Some(&b']') && nrange > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let Some((lo, rest)) = class_char(chunk) else {
                        return (&[], false, true);
                    };
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        let Some((h, rest)) = class_char(&chunk[1..]) else {
                            return (&[], false, true);
                        };
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    nrange += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    let (_, n, _) = decode_rune(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            c => {
                let mut lit = c;
                if c == b'\\' {
                    chunk = &chunk[1..];
                    match chunk.first() {
                        Some(b) => lit = *b,
                        None => return (&[], false, true),
                    }
                }
                if !failed {
                    if lit != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    if failed {
        (&[], false, false)
    } else {
        (s, true, false)
    }
}

/// One (possibly escaped) character of a bracket expression and the rest of
/// the chunk; `None` when malformed (Go's `getEsc`), including when nothing
/// follows it, since a class must still be closed.
fn class_char(chunk: &[u8]) -> Option<(char, &[u8])> {
    let mut chunk = chunk;
    match chunk.first() {
        None | Some(b'-') | Some(b']') => return None,
        Some(b'\\') => {
            chunk = &chunk[1..];
            if chunk.is_empty() {
                return None;
            }
        }
        Some(_) => {}
    }
    let (r, n, valid) = decode_rune(chunk);
    let rest = &chunk[n..];
    if !valid || rest.is_empty() {
        return None;
    }
    Some((r, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_order_is_component_order() {
        // Every pair of paths over names built from bytes around `/`
        // ('-' and '.' sort below it, letters above).
        let names = ["a", "a-", "a.b", "ab", "b", "-", "a0"];
        let mut paths: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        for x in names {
            for y in names {
                paths.push(format!("{x}/{y}"));
                for z in ["a", "-"] {
                    paths.push(format!("{x}/{y}/{z}"));
                }
            }
        }
        for a in &paths {
            for b in &paths {
                assert_eq!(
                    path_order(a, b),
                    a.split('/').cmp(b.split('/')),
                    "{a:?} vs {b:?}"
                );
            }
        }
    }

    #[test]
    fn go_match_table() {
        // Cases from Go's filepath match tests (behaviour, not text).
        let cases: &[(&str, &str, Result<bool, BadPattern>)] = &[
            ("abc", "abc", Ok(true)),
            ("*", "abc", Ok(true)),
            ("*c", "abc", Ok(true)),
            ("a*", "a", Ok(true)),
            ("a*", "abc", Ok(true)),
            ("a*", "ab/c", Ok(false)),
            ("a*/b", "abc/b", Ok(true)),
            ("a*/b", "a/c/b", Ok(false)),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", Ok(true)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", Ok(true)),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", Ok(false)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", Ok(false)),
            ("a*b?c*x", "abxbbxdbxebxczzx", Ok(true)),
            ("a*b?c*x", "abxbbxdbxebxczzy", Ok(false)),
            ("ab[c]", "abc", Ok(true)),
            ("ab[b-d]", "abc", Ok(true)),
            ("ab[e-g]", "abc", Ok(false)),
            ("ab[^c]", "abc", Ok(false)),
            ("ab[^b-d]", "abc", Ok(false)),
            ("ab[^e-g]", "abc", Ok(true)),
            ("a\\*b", "a*b", Ok(true)),
            ("a\\*b", "ab", Ok(false)),
            ("a?b", "a☺b", Ok(true)),
            ("a[^a]b", "a☺b", Ok(true)),
            ("a???b", "a☺b", Ok(false)),
            ("a[^a][^a][^a]b", "a☺b", Ok(false)),
            ("[a-ζ]*", "α", Ok(true)),
            ("*[a-ζ]", "A", Ok(false)),
            ("a?b", "a/b", Ok(false)),
            ("a*b", "a/b", Ok(false)),
            ("[\\]a]", "]", Ok(true)),
            ("[\\-]", "-", Ok(true)),
            ("[x\\-]", "x", Ok(true)),
            ("[x\\-]", "-", Ok(true)),
            ("[x\\-]", "z", Ok(false)),
            ("[\\-x]", "x", Ok(true)),
            ("[\\-x]", "-", Ok(true)),
            ("[\\-x]", "a", Ok(false)),
            ("[]a]", "]", Err(BadPattern)),
            ("[-]", "-", Err(BadPattern)),
            ("[x-]", "x", Err(BadPattern)),
            ("[x-]", "-", Err(BadPattern)),
            ("[x-]", "z", Err(BadPattern)),
            ("[-x]", "x", Err(BadPattern)),
            ("[-x]", "-", Err(BadPattern)),
            ("[-x]", "a", Err(BadPattern)),
            ("\\", "a", Err(BadPattern)),
            ("[a-b-c]", "a", Err(BadPattern)),
            ("[", "a", Err(BadPattern)),
            ("[^", "a", Err(BadPattern)),
            ("[^bc", "a", Err(BadPattern)),
            ("a[", "a", Err(BadPattern)),
            ("a[", "ab", Err(BadPattern)),
            ("a[", "x", Err(BadPattern)),
            ("a/b[", "x", Err(BadPattern)),
            ("*x", "xxx", Ok(true)),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(
                &filepath_match(pattern, name),
                want,
                "pattern {pattern:?} name {name:?}"
            );
        }
    }

    #[test]
    fn clean_and_dir() {
        for (input, want) in [
            ("", "."),
            ("/", "/"),
            ("abc/", "abc"),
            ("a/../..", ".."),
            ("/../..", "/"),
            ("a/./b//c/..", "a/b"),
            ("!foo/../bar", "bar"),
        ] {
            assert_eq!(clean(input), want, "clean({input:?})");
        }
        assert_eq!(dir("a/b/"), "a/b");
        assert_eq!(dir("/a"), "/");
    }
}
