//! `rbuild debug`: look inside the parser.
//!
//! - `rbuild debug parse [--format buildkit|json] FILE`: `buildkit` prints the low-level parse
//!   tree exactly like BuildKit's `result` test files; `json` prints the typed AST.
//! - `rbuild debug expand [--env K=V]... [--words] [--escape C] WORD`: prints WORD expanded
//!   (with `--words`, one word per line).
//!
//! Parse errors are rendered as `FILE:LINE:COL: message`, the source line and a caret
//! (`rbuild_parser::ParseError::render`).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use rbuild_parser::lowlevel::check_bytes;

/// `rbuild debug`.
#[derive(Debug, Args)]
pub struct DebugArgs {
    /// What to inspect.
    #[command(subcommand)]
    pub command: DebugCommand,
}

/// The `debug` subcommands.
#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Parse a Dockerfile and print its tree
    Parse {
        /// Output format
        #[arg(long, value_enum, default_value_t = DumpFormat::Buildkit)]
        format: DumpFormat,
        /// The Dockerfile
        file: PathBuf,
    },
    /// Expand a shell word with BuildKit's rules
    Expand {
        /// A variable, NAME=value (NAME alone defines it empty); repeatable
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Split the result into words, one per line
        #[arg(long)]
        words: bool,
        /// The escape character
        #[arg(long, default_value_t = '\\', value_parser = parse_escape)]
        escape: char,
        /// The word to expand
        #[arg(allow_hyphen_values = true)]
        word: String,
    },
}

/// The format of `rbuild debug parse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DumpFormat {
    /// BuildKit's parse-tree dump (the `result` test-file format)
    Buildkit,
    /// The typed AST as JSON
    Json,
}

fn parse_escape(s: &str) -> Result<char, String> {
    match s {
        "\\" | "`" => Ok(s.chars().next().unwrap_or('\\')),
        _ => Err("the escape character is \\ or `".into()),
    }
}

/// Runs a `debug` subcommand, printing its output to stdout.
pub fn run(args: &DebugArgs) -> Result<()> {
    let out = match &args.command {
        DebugCommand::Parse { format, file } => parse_output(file, *format)?,
        DebugCommand::Expand {
            env,
            words,
            escape,
            word,
        } => expand_output(word, env, *words, *escape)?,
    };
    print!("{out}");
    Ok(())
}

/// The text `rbuild debug parse` prints for `file`; a parse error is rendered with the
/// source line and a caret.
pub fn parse_output(file: &Path, format: DumpFormat) -> Result<String> {
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let name = file.display().to_string();
    let text = check_bytes(&data)
        .map_err(|e| anyhow!(e.render(&name, &String::from_utf8_lossy(&data))))?;
    let rendered = |e: rbuild_parser::ParseError| anyhow!(e.render(&name, text));
    Ok(match format {
        DumpFormat::Buildkit => {
            let parsed = rbuild_parser::parse_nodes(text).map_err(rendered)?;
            rbuild_parser::dump_buildkit(&parsed.nodes)
        }
        DumpFormat::Json => {
            let df = rbuild_parser::parse(text).map_err(rendered)?;
            let mut s = serde_json::to_string_pretty(&df)?;
            s.push('\n');
            s
        }
    })
}

/// The text `rbuild debug expand` prints; an expansion error is returned with its message.
pub fn expand_output(word: &str, env: &[String], words: bool, escape: char) -> Result<String> {
    let env = rbuild_parser::env_from_pairs(env);
    let lex = rbuild_parser::Lexer::new(escape);
    if words {
        let ws = lex.process_words(word, &env).map_err(|e| anyhow!(e))?;
        Ok(ws.iter().map(|w| format!("{w}\n")).collect())
    } else {
        match lex.process_word(word, &env) {
            Ok(r) => Ok(format!("{}\n", r.result)),
            Err(e) => bail!(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(content: &[u8]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), content).expect("write");
        f
    }

    #[test]
    fn parse_buildkit_dump() {
        let f = write(b"FROM busybox AS b\nRUN [\"echo\", \"hi\"]\nENV A=1 B=\"2 3\"\n");
        let out = parse_output(f.path(), DumpFormat::Buildkit).unwrap();
        assert_eq!(
            out,
            "(from \"busybox\" \"AS\" \"b\")\n(run \"echo\" \"hi\")\n(env \"A\" \"1\" \"=\" \"B\" \"\\\"2 3\\\"\" \"=\")\n"
        );
    }

    #[test]
    fn parse_json_and_errors() {
        let f = write(b"FROM scratch\nCOPY --chown=1:1 a /b\n");
        let out = parse_output(f.path(), DumpFormat::Json).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["instructions"][1]["value"]["instruction"], "COPY");
        assert_eq!(v["instructions"][1]["value"]["args"]["chown"], "1:1");

        let f = write(b"FROM scratch\n\nFROBNICATE x\n");
        let err = parse_output(f.path(), DumpFormat::Json)
            .unwrap_err()
            .to_string();
        let name = f.path().display().to_string();
        assert_eq!(
            err,
            format!("{name}:3:1: unknown instruction: FROBNICATE\n   3 | FROBNICATE x\n     | ^\n")
        );

        let f = write(b"FROM scratch\nRUN a\xffb\n");
        let err = parse_output(f.path(), DumpFormat::Buildkit)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "{name}:2:6: invalid UTF-8",
                name = f.path().display()
            )),
            "{err}"
        );
    }

    #[test]
    fn expand_word_and_words() {
        let env = vec!["A=x y".to_string(), "E=".to_string()];
        assert_eq!(
            expand_output("${A}-${E:-d}", &env, false, '\\').unwrap(),
            "x y-d\n"
        );
        assert_eq!(
            expand_output("$A 'q r'", &env, true, '\\').unwrap(),
            "x\ny\nq r\n"
        );
        let err = expand_output("${U:?unset!}", &env, false, '\\').unwrap_err();
        assert!(err.to_string().contains("U: unset!"), "{err}");
    }
}
