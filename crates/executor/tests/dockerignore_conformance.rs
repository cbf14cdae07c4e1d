//! `.dockerignore` conformance: every row of the shared tables
//! (`../shared/conformance/dockerignore-cases.{jsonl,tsv}`), produced by
//! running moby/patternmatcher itself.

use std::path::PathBuf;

use rbuild_executor::dockerignore::{read_ignore_file, Matcher};

fn conformance_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance");
    if dir.join("dockerignore-cases.jsonl").is_file() {
        Some(dir)
    } else {
        println!("skipped: {} is absent", dir.display());
        None
    }
}

/// Decodes the four escapes of the shared TSV format.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            other => panic!("unexpected escape \\{other:?} in {field:?}"),
        }
    }
    out
}

/// `Some(excluded)` or `None` for an error, as moby/patternmatcher's
/// `New` + `MatchesOrParentMatches` would answer.
fn verdict(patterns: &[String], path: &str) -> Option<bool> {
    Matcher::new(patterns).ok()?.excluded(path).ok()
}

/// The same question answered the way a walker asks it: each parent
/// directory in turn, then the path, carrying the per-pattern state.
fn walker_verdict(patterns: &[String], path: &str) -> Option<bool> {
    let m = Matcher::new(patterns).ok()?;
    let comps: Vec<&str> = path.split('/').collect();
    let mut state = Default::default();
    let mut verdict = false;
    for n in 1..=comps.len() {
        let prefix = comps[..n].join("/");
        let (v, s) = m.excluded_in(&prefix, &state).ok()?;
        verdict = v;
        state = s;
    }
    Some(verdict)
}

#[test]
fn jsonl_cases() {
    let Some(dir) = conformance_dir() else { return };
    let text = std::fs::read_to_string(dir.join("dockerignore-cases.jsonl")).expect("read jsonl");
    let (mut pass, mut fail) = (0, Vec::new());
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let case: serde_json::Value = serde_json::from_str(line).expect("jsonl row");
        let patterns: Vec<String> = case["patterns"]
            .as_array()
            .expect("patterns")
            .iter()
            .map(|p| p.as_str().expect("pattern").to_string())
            .collect();
        let path = case["path"].as_str().expect("path");
        let want = if case["error"].as_bool() == Some(true) {
            None
        } else {
            Some(case["excluded"].as_bool().expect("excluded"))
        };
        let got = verdict(&patterns, path);
        if got == want {
            pass += 1;
        } else {
            fail.push(format!(
                "line {}: {patterns:?} {path:?}: want {want:?} got {got:?}",
                n + 1
            ));
        }
    }
    println!(
        "dockerignore-cases.jsonl: {pass} passed, {} failed",
        fail.len()
    );
    assert!(fail.is_empty(), "{}", fail.join("\n"));
}

#[test]
fn tsv_cases() {
    let Some(dir) = conformance_dir() else { return };
    let text = std::fs::read_to_string(dir.join("dockerignore-cases.tsv")).expect("read tsv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (c_name, c_file, c_pats, c_path, c_result) = (
        col("name"),
        col("dockerignore"),
        col("patterns"),
        col("path"),
        col("result"),
    );
    let (mut pass, mut fail) = (0, Vec::new());
    for line in lines.filter(|l| !l.is_empty()) {
        let fields: Vec<String> = line.split('\t').map(unescape).collect();
        let name = &fields[c_name];
        let want_patterns: Vec<String> =
            serde_json::from_str(&fields[c_pats]).expect("patterns column");
        let read = read_ignore_file(&fields[c_file]);
        if read != want_patterns {
            fail.push(format!("{name}: read {read:?}, want {want_patterns:?}"));
            continue;
        }
        let path = &fields[c_path];
        let want = match fields[c_result].as_str() {
            "excluded" => Some(true),
            "included" => Some(false),
            "error" => None,
            other => panic!("{name}: unknown result {other:?}"),
        };
        let got = verdict(&read, path);
        let walked = walker_verdict(&read, path);
        if got == want && walked == want {
            pass += 1;
        } else {
            fail.push(format!(
                "{name}: {read:?} {path:?}: want {want:?} got {got:?} (walker {walked:?})"
            ));
        }
    }
    println!(
        "dockerignore-cases.tsv: {pass} passed, {} failed",
        fail.len()
    );
    assert!(fail.is_empty(), "{}", fail.join("\n"));
}

#[test]
fn error_messages_name_the_problem() {
    let err = Matcher::new(&["ok", "!"]).unwrap_err();
    assert_eq!(err.to_string(), "illegal exclusion pattern: \"!\"");
    let err = Matcher::new(&["a[x-]"]).unwrap_err();
    assert!(
        err.to_string().starts_with("syntax error in pattern"),
        "{err}"
    );
    assert!(err.to_string().contains("a[x-]"), "{err}");
}
