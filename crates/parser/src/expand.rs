//! Expansion of an instruction's words with the variables in scope, word for word as
//! BuildKit's `dockerfile2llb` does it.
//!
//! Expanded: FROM image and `--platform`; COPY/ADD sources, destination, `--chown`,
//! `--chmod`, `--from` (COPY), `--checksum` (ADD) and unquoted-delimiter heredoc bodies; ENV
//! and LABEL keys and values; EXPOSE (split into words); USER; WORKDIR; VOLUME; STOPSIGNAL;
//! ARG defaults; RUN `--mount` option values. Not expanded: RUN/CMD/ENTRYPOINT/SHELL
//! commands (the shell does that), HEALTHCHECK, ONBUILD, MAINTAINER.

use std::collections::BTreeSet;

use crate::instruction::{Add, ArgDef, Copy, From, InlineSource, Instruction, KeyValue};
use crate::mount::{parse_mount, Mount};
use crate::shell::{Env, ExpandError, Lexer};

/// An instruction with its words expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    /// The instruction with expanded words (quotes removed from expanded words).
    pub instruction: Instruction,
    /// For RUN: the `--mount`s, expanded and parsed. Empty otherwise.
    pub mounts: Vec<Mount>,
    /// Variables that were used and set.
    pub matched: BTreeSet<String>,
    /// Variables that were used but not set (BuildKit warns about these build args).
    pub unmatched: BTreeSet<String>,
}

struct Expander<'a> {
    lex: Lexer,
    env: &'a dyn Env,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

impl Expander<'_> {
    fn word(&mut self, w: &str) -> Result<String, ExpandError> {
        let r = self.lex.process_word(w, self.env)?;
        self.matched.extend(r.matched);
        self.unmatched.extend(r.unmatched);
        Ok(r.result)
    }

    fn opt(&mut self, w: &Option<String>) -> Result<Option<String>, ExpandError> {
        w.as_deref().map(|w| self.word(w)).transpose()
    }

    fn all(&mut self, ws: &[String]) -> Result<Vec<String>, ExpandError> {
        ws.iter().map(|w| self.word(w)).collect()
    }

    fn kvs(&mut self, kvs: &[KeyValue]) -> Result<Vec<KeyValue>, ExpandError> {
        kvs.iter()
            .map(|kv| {
                Ok(KeyValue {
                    key: self.word(&kv.key)?,
                    value: self.word(&kv.value)?,
                    legacy: kv.legacy,
                })
            })
            .collect()
    }

    /// Heredoc bodies of COPY/ADD: BuildKit uses `\` as the escape character whatever the
    /// `# escape=` directive says, and keeps quotes literally.
    fn inline(&mut self, files: &[InlineSource]) -> Result<Vec<InlineSource>, ExpandError> {
        let mut lex = Lexer::new('\\');
        lex.skip_process_quotes = true;
        files
            .iter()
            .map(|f| {
                if !f.expand {
                    return Ok(f.clone());
                }
                let r = lex.process_word(&f.data, self.env)?;
                self.matched.extend(r.matched);
                self.unmatched.extend(r.unmatched);
                Ok(InlineSource {
                    data: r.result,
                    ..f.clone()
                })
            })
            .collect()
    }
}

impl Instruction {
    /// Expands exactly the words BuildKit expands for this instruction, with `env` as the
    /// variables in scope and `escape` the Dockerfile's escape character
    /// ([`crate::Dockerfile::escape`]).
    ///
    /// ```
    /// use rbuild_parser::{env_from_pairs, parse, Instruction};
    /// let df = parse("FROM scratch\nWORKDIR /src/${APP:-x}\n").unwrap();
    /// let env = env_from_pairs(["APP=web"]);
    /// let e = df.instructions[1].value.expand(&env, df.escape).unwrap();
    /// assert_eq!(e.instruction, Instruction::Workdir("/src/web".into()));
    /// ```
    pub fn expand(&self, env: &dyn Env, escape: char) -> Result<Expanded, ExpandError> {
        let mut x = Expander {
            lex: Lexer::new(escape),
            env,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        };
        let mut mounts = Vec::new();
        let instruction = match self {
            Instruction::From(f) => Instruction::From(From {
                image: x.word(&f.image)?,
                platform: x.opt(&f.platform)?,
                stage_name: f.stage_name.clone(),
            }),
            Instruction::Copy(c) => Instruction::Copy(Copy {
                sources: x.all(&c.sources)?,
                inline: x.inline(&c.inline)?,
                dest: x.word(&c.dest)?,
                from: x.opt(&c.from)?,
                chown: x.opt(&c.chown)?,
                chmod: x.opt(&c.chmod)?,
                ..c.clone()
            }),
            Instruction::Add(a) => Instruction::Add(Add {
                sources: x.all(&a.sources)?,
                inline: x.inline(&a.inline)?,
                dest: x.word(&a.dest)?,
                chown: x.opt(&a.chown)?,
                chmod: x.opt(&a.chmod)?,
                checksum: x.opt(&a.checksum)?,
                ..a.clone()
            }),
            Instruction::Env(kvs) => Instruction::Env(x.kvs(kvs)?),
            Instruction::Label(kvs) => Instruction::Label(x.kvs(kvs)?),
            Instruction::Expose(ports) => {
                let mut out = Vec::new();
                for p in ports {
                    let ws = x.lex.process_words(p, x.env)?;
                    out.extend(ws);
                }
                Instruction::Expose(out)
            }
            Instruction::User(u) => Instruction::User(x.word(u)?),
            Instruction::Workdir(w) => Instruction::Workdir(x.word(w)?),
            Instruction::Volume(v) => Instruction::Volume(x.all(v)?),
            Instruction::StopSignal(s) => Instruction::StopSignal(x.word(s)?),
            Instruction::Arg(defs) => Instruction::Arg(
                defs.iter()
                    .map(|d| {
                        Ok(ArgDef {
                            name: d.name.clone(),
                            default: x.opt(&d.default)?,
                        })
                    })
                    .collect::<Result<_, ExpandError>>()?,
            ),
            Instruction::Run(r) => {
                for raw in &r.mounts {
                    let mut exp = |v: &str| x.word(v).map(Some).map_err(|e| e.to_string());
                    let m = parse_mount(raw, Some(&mut exp)).map_err(|message| ExpandError {
                        word: raw.clone(),
                        message,
                    })?;
                    mounts.push(m);
                }
                self.clone()
            }
            other => other.clone(),
        };
        Ok(Expanded {
            instruction,
            mounts,
            matched: x.matched,
            unmatched: x.unmatched,
        })
    }
}
