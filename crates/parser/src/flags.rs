//! Instruction flags (`--name[=value]`) with BuildKit's `BFlags` rules: flag names are
//! case-sensitive, booleans take only `true`/`false` (any case) or no value, strings need a
//! value, repeatable flags collect every value, `--` ends the flags.

use std::collections::BTreeMap;

/// How a flag takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlagKind {
    Bool,
    Str,
    Strs,
}

/// The parsed flags of one instruction.
#[derive(Debug, Default)]
pub(crate) struct Flags {
    bools: BTreeMap<&'static str, bool>,
    strs: BTreeMap<&'static str, String>,
    lists: BTreeMap<&'static str, Vec<String>>,
}

impl Flags {
    /// `Some(value)` when the boolean flag was given.
    pub(crate) fn bool(&self, name: &str) -> Option<bool> {
        self.bools.get(name).copied()
    }

    /// `Some(value)` when the string flag was given (possibly empty).
    pub(crate) fn string(&self, name: &str) -> Option<String> {
        self.strs.get(name).cloned()
    }

    /// Every value of a repeatable flag, in order.
    pub(crate) fn list(&self, name: &str) -> Vec<String> {
        self.lists.get(name).cloned().unwrap_or_default()
    }
}

/// Parses `args` (the node's flag words) against the flags an instruction defines.
pub(crate) fn parse_flags(
    args: &[String],
    defined: &[(&'static str, FlagKind)],
) -> Result<Flags, String> {
    let mut out = Flags::default();
    let mut used: Vec<&str> = Vec::new();
    for a in args {
        if a == "--" {
            break;
        }
        let Some(body) = a.strip_prefix("--") else {
            return Err(format!("arg should start with -- : {a}"));
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let flag_name = format!("--{name}");
        let Some(&(key, kind)) = defined.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = defined.iter().map(|(n, _)| *n).collect();
            return Err(with_suggestion(
                format!("unknown flag: {flag_name}"),
                name,
                &names,
                true,
            ));
        };
        if used.contains(&key) && kind != FlagKind::Strs {
            return Err(format!("duplicate flag specified: {flag_name}"));
        }
        used.push(key);
        match kind {
            FlagKind::Bool => {
                if value == Some("") {
                    return Err(format!("missing a value on flag: {flag_name}"));
                }
                let v = match value.map(str::to_ascii_lowercase).as_deref() {
                    None | Some("true") => true,
                    Some("false") => false,
                    _ => {
                        return Err(format!(
                            "expecting boolean value for flag {flag_name}, not: {}",
                            value.unwrap_or_default()
                        ))
                    }
                };
                out.bools.insert(key, v);
            }
            FlagKind::Str => {
                let Some(v) = value else {
                    return Err(format!("missing a value on flag: {flag_name}"));
                };
                out.strs.insert(key, v.to_string());
            }
            FlagKind::Strs => {
                let Some(v) = value else {
                    return Err(format!("missing a value on flag: {flag_name}"));
                };
                out.lists.entry(key).or_default().push(v.to_string());
            }
        }
    }
    Ok(out)
}

/// Appends ` (did you mean X?)` when an option is within edit distance 2 (BuildKit `suggest`).
pub(crate) fn with_suggestion(
    msg: String,
    value: &str,
    options: &[&str],
    case_sensitive: bool,
) -> String {
    let norm = |s: &str| {
        if case_sensitive {
            s.to_string()
        } else {
            crate::quote::go_lower(s)
        }
    };
    let v = norm(value);
    let mut best: Option<String> = None;
    let mut min = 3;
    for opt in options {
        let o = norm(opt);
        if o == v {
            return msg;
        }
        let d = levenshtein(&v, &o);
        if d < min {
            min = d;
            best = Some(if case_sensitive {
                o
            } else if value == crate::quote::go_lower(value) {
                crate::quote::go_lower(opt)
            } else if value == crate::quote::go_upper(value) {
                crate::quote::go_upper(opt)
            } else {
                opt.to_string()
            });
        }
    }
    match best {
        Some(b) => format!("{msg} (did you mean {b}?)"),
        None => msg,
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn bool_and_string_flags() {
        let def = [("link", FlagKind::Bool), ("from", FlagKind::Str)];
        let f = parse_flags(&s(&["--link=TRUE", "--from="]), &def).unwrap();
        assert_eq!(f.bool("link"), Some(true));
        assert_eq!(f.string("from").as_deref(), Some(""));
        assert_eq!(
            parse_flags(&s(&["--from"]), &def).unwrap_err(),
            "missing a value on flag: --from"
        );
        assert_eq!(
            parse_flags(&s(&["--lnk"]), &def).unwrap_err(),
            "unknown flag: --lnk (did you mean link?)"
        );
        assert_eq!(
            parse_flags(&s(&["--from=a", "--from=b"]), &def).unwrap_err(),
            "duplicate flag specified: --from"
        );
    }
}
