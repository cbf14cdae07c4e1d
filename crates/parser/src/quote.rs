//! Go string helpers the BuildKit formats depend on: `strconv.Quote` (used by the parse-tree
//! dump) and Go's simple case mapping (`strings.ToLower`/`ToUpper`/`EqualFold`, used for
//! case-insensitive keywords). Rust's own case functions use full Unicode mappings, which
//! differ on a few characters (`İ`, `ß`), so keyword matching goes through these.

use unicode_general_category::{get_general_category, GeneralCategory};

/// Go's `unicode.IsPrint`: letters, marks, numbers, punctuation, symbols and ASCII space.
fn is_print(c: char) -> bool {
    use GeneralCategory::*;
    if c == ' ' {
        return true;
    }
    !matches!(
        get_general_category(c),
        Control
            | Format
            | Surrogate
            | PrivateUse
            | Unassigned
            | SpaceSeparator
            | LineSeparator
            | ParagraphSeparator
    )
}

/// Quotes `s` exactly like Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if is_print(c) => out.push(c),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Go's `unicode.ToLower` for one rune (simple mapping).
pub fn go_lower_char(c: char) -> char {
    let mut it = c.to_lowercase();
    match (it.next(), it.next()) {
        (Some(l), None) => l,
        // Only U+0130 has a multi-rune full lowercase; its simple mapping is `i`.
        _ if c == '\u{130}' => 'i',
        _ => c,
    }
}

/// Go's `unicode.ToUpper` for one rune (simple mapping).
pub fn go_upper_char(c: char) -> char {
    let mut it = c.to_uppercase();
    match (it.next(), it.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

/// Go's `strings.ToLower`.
pub fn go_lower(s: &str) -> String {
    s.chars().map(go_lower_char).collect()
}

/// Go's `strings.ToUpper`.
pub fn go_upper(s: &str) -> String {
    s.chars().map(go_upper_char).collect()
}

/// Go's `strings.EqualFold` (simple case folding).
pub fn go_equal_fold(a: &str, b: &str) -> bool {
    let fold = |c: char| go_lower_char(go_upper_char(c));
    a.chars().count() == b.chars().count()
        && a.chars()
            .zip(b.chars())
            .all(|(x, y)| x == y || fold(x) == fold(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_go() {
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(go_quote("\t\n\u{0}\u{7f}"), r#""\t\n\x00\x7f""#);
        assert_eq!(go_quote("\u{a0}é한"), "\"\\u00a0é한\"");
    }

    #[test]
    fn case_mapping_is_simple() {
        assert_eq!(go_lower("RUN\u{130}"), "runi");
        assert_eq!(go_upper("ß"), "ß");
        assert!(go_equal_fold("As", "aS"));
        assert!(go_equal_fold("a\u{17f}", "AS"));
    }
}
