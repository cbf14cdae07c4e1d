//! BuildKit conformance: the parser test files, the shell-expansion tables and the
//! heredoc/instruction tables under `../shared/conformance` (relative to the workspace root).
//! Each table prints `passed/total`; a missing folder prints a skip reason.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use rbuild_parser::{dump_buildkit, env_from_pairs, parse, parse_nodes, Instruction, Lexer, NoEnv};
use serde_json::{json, Value};

fn shared() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance");
    if p.is_dir() {
        Some(p)
    } else {
        println!(
            "SKIP: {} is absent (a clone outside the workspace layout)",
            p.display()
        );
        None
    }
}

/// Decodes the four escapes of the TSV tables.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('\\') => out.push('\\'),
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn read_tsv(path: &PathBuf) -> Vec<BTreeMap<String, String>> {
    let text = fs::read_to_string(path).expect("table is readable");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split('\t').collect();
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            header
                .iter()
                .zip(l.split('\t'))
                .map(|(h, v)| (h.to_string(), unescape(v)))
                .collect()
        })
        .collect()
}

struct Tally {
    name: &'static str,
    total: usize,
    failures: Vec<String>,
}

impl Tally {
    fn new(name: &'static str) -> Self {
        Tally {
            name,
            total: 0,
            failures: Vec::new(),
        }
    }

    fn check(&mut self, case: &str, ok: bool, detail: impl FnOnce() -> String) {
        self.total += 1;
        if !ok {
            self.failures.push(format!("{case}: {}", detail()));
        }
    }

    fn finish(self) {
        println!(
            "{}: {}/{} passed",
            self.name,
            self.total - self.failures.len(),
            self.total
        );
        for f in &self.failures {
            println!("  FAIL {f}");
        }
        assert!(
            self.failures.is_empty(),
            "{} failures in {}",
            self.failures.len(),
            self.name
        );
    }
}

#[test]
fn buildkit_positive_testfiles() {
    let Some(root) = shared() else { return };
    let mut t = Tally::new("parser/testfiles");
    let mut dirs: Vec<_> = fs::read_dir(root.join("buildkit/parser/testfiles"))
        .expect("testfiles dir")
        .map(|e| e.expect("entry").path())
        .collect();
    dirs.sort();
    for d in dirs {
        let name = d
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let src = fs::read(d.join("Dockerfile")).expect("Dockerfile");
        let want = fs::read_to_string(d.join("result")).expect("result");
        let text = String::from_utf8(src).expect("utf-8 test file");
        match parse_nodes(&text) {
            Ok(p) => {
                let got = dump_buildkit(&p.nodes);
                t.check(&name, got == want, || {
                    format!("dump differs:\n{got}---\n{want}")
                });
            }
            Err(e) => t.check(&name, false, || format!("parse failed: {e}")),
        }
    }
    t.finish();
}

#[test]
fn buildkit_negative_testfiles() {
    let Some(root) = shared() else { return };
    let mut t = Tally::new("parser/testfiles-negative");
    for e in fs::read_dir(root.join("buildkit/parser/testfiles-negative")).expect("dir") {
        let d = e.expect("entry").path();
        let name = d
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let text = fs::read_to_string(d.join("Dockerfile")).expect("Dockerfile");
        match parse(&text) {
            Ok(_) => t.check(&name, false, || "parsed, expected an error".into()),
            Err(e) => t.check(&name, e.line >= 1 && e.column >= 1, || {
                format!("unlocated: {e:?}")
            }),
        }
    }
    t.finish();
}

#[test]
fn buildkit_testfile_line() {
    let Some(root) = shared() else { return };
    let mut t = Tally::new("parser/testfile-line");
    let text = fs::read_to_string(root.join("buildkit/parser/testfile-line/Dockerfile"))
        .expect("Dockerfile");
    let p = parse_nodes(&text).expect("parses");
    let spans: Vec<(usize, usize)> = p
        .nodes
        .iter()
        .map(|n| (n.span.line, n.span.end_line))
        .collect();
    t.check("spans", spans == vec![(5, 5), (11, 12), (17, 31)], || {
        format!("{spans:?}")
    });
    t.finish();
}

#[test]
fn buildkit_env_var_test() {
    let Some(root) = shared() else { return };
    let mut t = Tally::new("shell/envVarTest");
    let env = env_from_pairs(["PWD=/home", "SHELL=bash", "KOREAN=한국어", "NULL="]);
    let lex = Lexer::new('\\');
    let text = fs::read_to_string(root.join("buildkit/shell/envVarTest")).expect("envVarTest");
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = l.splitn(3, '|').collect();
        if f.len() != 3 || !matches!(f[0].trim(), "A" | "U") {
            continue;
        }
        let (input, want) = (f[1].trim(), f[2].trim());
        let got = lex.process_word(input, &env);
        let case = format!("line {} {input:?}", i + 1);
        if want == "error" {
            t.check(&case, got.is_err(), || {
                format!("expected error, got {got:?}")
            });
        } else {
            t.check(
                &case,
                got.as_ref().map(|r| r.result.as_str()) == Ok(want),
                || format!("want {want:?}, got {got:?}"),
            );
        }
    }
    t.finish();
}

#[test]
fn buildkit_words_test() {
    let Some(root) = shared() else { return };
    let mut t = Tally::new("shell/wordsTest");
    let mut env = BTreeMap::new();
    let lex = Lexer::new('\\');
    let text = fs::read_to_string(root.join("buildkit/shell/wordsTest")).expect("wordsTest");
    for (i, line) in text.lines().enumerate() {
        if let Some(rest) = line.strip_prefix("ENV ") {
            let rest = rest.trim_start();
            if let Some((k, v)) = rest.split_once('=') {
                env.insert(k.to_string(), v.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((input, want)) = line.split_once('|') else {
            continue;
        };
        let (input, want) = (input.trim(), want.trim_start());
        let got = lex.process_words(input, &env);
        let case = format!("line {} {input:?}", i + 1);
        if want == "error" {
            t.check(&case, got.is_err(), || {
                format!("expected error, got {got:?}")
            });
        } else {
            let joined = got.as_ref().map(|w| w.join(","));
            t.check(&case, joined.as_deref() == Ok(want), || {
                format!("want {want:?}, got {got:?}")
            });
        }
    }
    t.finish();
}

#[test]
fn shell_expansion_cases() {
    let Some(root) = shared() else { return };
    let mut t = Tally::new("shell-expansion-cases.tsv");
    for row in read_tsv(&root.join("shell-expansion-cases.tsv")) {
        let name = row["name"].clone();
        let escape = row["escape"].chars().next().unwrap_or('\\');
        let env_list: Vec<String> = serde_json::from_str(&row["env"]).expect("env JSON");
        let env = env_from_pairs(&env_list);
        let lex = Lexer::new(escape);
        let input = &row["input"];
        if row["mode"] == "word" {
            let got = lex.process_word(input, &env);
            if row["expect"] == "error" {
                t.check(&name, got.is_err(), || {
                    format!("expected error, got {got:?}")
                });
                continue;
            }
            let ok = match &got {
                Ok(r) => {
                    let m: Vec<&str> = r.matched.iter().map(String::as_str).collect();
                    let u: Vec<&str> = r.unmatched.iter().map(String::as_str).collect();
                    r.result == row["result"]
                        && m.join(",") == row["matched"]
                        && u.join(",") == row["unmatched"]
                }
                Err(_) => false,
            };
            t.check(&name, ok, || {
                format!(
                    "want {:?} m={} u={}, got {got:?}",
                    row["result"], row["matched"], row["unmatched"]
                )
            });
        } else {
            let got = lex.process_words(input, &env);
            if row["expect"] == "error" {
                t.check(&name, got.is_err(), || {
                    format!("expected error, got {got:?}")
                });
                continue;
            }
            let want: Vec<String> = serde_json::from_str(&row["result"]).expect("result JSON");
            t.check(&name, got.as_ref() == Ok(&want), || {
                format!("want {want:?}, got {got:?}")
            });
        }
    }
    t.finish();
}

/// The per-instruction view of heredoc-cases.tsv's `instructions` column.
fn instruction_json(node: &rbuild_parser::Node) -> Value {
    let inst = match node.instruction() {
        Ok(i) => i,
        Err(e) => return json!({ "error": e.message }),
    };
    let env = env_from_pairs(["name=world", "NAME=me"]);
    let files = |n: &rbuild_parser::Node| -> Value {
        if n.heredocs.is_empty() {
            return Value::Null;
        }
        n.heredocs
            .iter()
            .map(|h| json!({"name": h.name, "data": h.content, "chomp": h.chomp}))
            .collect()
    };
    let cmdline = |args: &Vec<String>| {
        if args.is_empty() {
            Value::Null
        } else {
            json!(args)
        }
    };
    match &inst {
        Instruction::Run(r) => {
            json!({"cmdline": cmdline(&r.command.args), "prepend_shell": r.command.prepend_shell, "files": files(node)})
        }
        Instruction::Cmd(c) | Instruction::Entrypoint(c) => {
            json!({"cmdline": cmdline(&c.args), "prepend_shell": c.prepend_shell, "files": files(node)})
        }
        Instruction::Copy(_) | Instruction::Add(_) => {
            let (dest, srcs, inline) = match &inst {
                Instruction::Copy(c) => (&c.dest, &c.sources, &c.inline),
                Instruction::Add(a) => (&a.dest, &a.sources, &a.inline),
                _ => unreachable!("matched above"),
            };
            let expanded = inst.expand(&env, '\\');
            let contents: Vec<Value> = inline
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let mut v = json!({"path": f.path, "data": f.data, "expand": f.expand});
                    match &expanded {
                        Ok(e) => {
                            let data = match &e.instruction {
                                Instruction::Copy(c) => c.inline[i].data.clone(),
                                Instruction::Add(a) => a.inline[i].data.clone(),
                                _ => String::new(),
                            };
                            v["expanded"] = json!(data);
                        }
                        Err(e) => v["expanded_err"] = json!(e.to_string()),
                    }
                    v
                })
                .collect();
            json!({"dest": dest, "src_paths": srcs, "src_contents": contents})
        }
        Instruction::Onbuild(o) => json!({"expression": o.expression}),
        _ => Value::Null,
    }
}

/// Compares expected JSON with ours, treating missing/null/empty-array alike and ignoring
/// keys we do not produce (`expanded_err` text).
fn json_matches(want: &Value, got: &Value) -> bool {
    let empty = |v: &Value| v.is_null() || v.as_array().is_some_and(|a| a.is_empty());
    match (want, got) {
        (w, g) if empty(w) && empty(g) => true,
        (Value::Object(w), Value::Object(g)) => w.iter().all(|(k, wv)| match k.as_str() {
            "expanded_err" => g.contains_key("expanded_err"),
            _ => json_matches(wv, g.get(k).unwrap_or(&Value::Null)),
        }),
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| json_matches(a, b))
        }
        (w, g) => w == g,
    }
}

#[test]
fn heredoc_cases() {
    let Some(root) = shared() else { return };
    let mut t = Tally::new("heredoc-cases.tsv");
    for row in read_tsv(&root.join("heredoc-cases.tsv")) {
        let name = row["name"].clone();
        let parsed = parse_nodes(&row["dockerfile"]);
        if row["expect"] == "error" {
            t.check(&name, parsed.is_err(), || "expected a parse error".into());
            continue;
        }
        let p = match parsed {
            Ok(p) => p,
            Err(e) => {
                t.check(&name, false, || format!("parse failed: {e}"));
                continue;
            }
        };
        let dump = dump_buildkit(&p.nodes);
        let heredocs: Value = p
            .nodes
            .iter()
            .map(|n| {
                if n.heredocs.is_empty() {
                    Value::Null
                } else {
                    n.heredocs
                        .iter()
                        .map(|h| json!({"name": h.name, "fd": h.fd, "expand": h.expand, "chomp": h.chomp, "content": h.content}))
                        .collect()
                }
            })
            .collect();
        let insts: Value = p.nodes.iter().map(instruction_json).collect();
        let want_h: Value = serde_json::from_str(&row["heredocs"]).expect("heredocs JSON");
        let want_i: Value = serde_json::from_str(&row["instructions"]).expect("instructions JSON");
        let ok = dump == row["dump"]
            && json_matches(&want_h, &heredocs)
            && json_matches(&want_i, &insts);
        t.check(&name, ok, || {
            format!(
                "\n dump got  {dump:?}\n dump want {:?}\n heredocs got  {heredocs}\n heredocs want {want_h}\n insts got  {insts}\n insts want {want_i}",
                row["dump"]
            )
        });
    }
    t.finish();
}

#[test]
fn instruction_errors() {
    let Some(root) = shared() else { return };
    let mut t = Tally::new("instruction-errors.tsv");
    for row in read_tsv(&root.join("instruction-errors.tsv")) {
        let name = row["name"].clone();
        let text = &row["dockerfile"];
        if let Err(e) = parse_nodes(text) {
            t.check(&name, false, || {
                format!("low-level parse must accept it: {e}")
            });
            continue;
        }
        let result = parse(text).and_then(|d| d.validate(&NoEnv).map(|_| d));
        let reject = row["expect"] == "error" || row["convert"] != "ok";
        match result {
            Ok(_) => t.check(&name, !reject, || {
                format!(
                    "accepted; want rejection: {}",
                    if row["message"].is_empty() {
                        &row["convert"]
                    } else {
                        &row["message"]
                    }
                )
            }),
            Err(e) => {
                let line_ok = row["line"].is_empty() || row["line"] == e.line.to_string();
                t.check(&name, reject && line_ok, || {
                    format!("rejected with {e} (want line {:?})", row["line"])
                })
            }
        }
    }
    t.finish();
}
