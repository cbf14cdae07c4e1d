//! Dockerfile parser: grammar, typed AST with spans, and shell-word expansion, reading every
//! Dockerfile the way BuildKit's frontend reads it.
//!
//! # Module layout
//! - `dockerfile.pest` + `grammar`: the pest grammar (directives, instruction heads, heredoc
//!   markers, JSON exec form).
//! - [`lowlevel`]: BuildKit's low-level parse: physical lines (directives, comments,
//!   continuations, heredoc bodies) to [`Node`]s; [`dump_buildkit`] prints BuildKit's
//!   `result` format.
//! - `instruction`: nodes to the typed [`Instruction`] enum with flags and argument checks.
//! - `expand`: [`Instruction::expand`]: the words BuildKit expands, expanded.
//! - `validate`: [`Dockerfile::validate`]: the checks BuildKit makes while converting
//!   (mount options, ports, `--chmod`, signals, stage references, platforms).
//! - [`mount`]: `RUN --mount` values to [`Mount`].
//! - [`shell`]: the shell-word lexer ([`Lexer`]).
//! - `error`: [`ParseError`] (`LINE:COL: message`) and its caret rendering.
//!
//! # Layers
//! [`parse`] runs the low-level parse and the instruction layer (BuildKit's
//! `parser.Parse` + `instructions.Parse`). [`Dockerfile::validate`] adds the conversion-time
//! checks so a build can reject a bad line 40 before running line 1. Arguments stay raw; the
//! solver calls [`Instruction::expand`] with the variables in scope.
//!
//! ```
//! let df = rbuild_parser::parse("FROM alpine AS base\nRUN echo $HOME\n").unwrap();
//! assert_eq!(df.instructions.len(), 2);
//! assert_eq!(df.instructions[1].span.line, 2);
//! ```

mod error;
mod expand;
mod flags;
mod grammar;
mod instruction;
pub mod lowlevel;
pub mod mount;
mod quote;
pub mod shell;
mod validate;

use serde::Serialize;

pub use error::{source_line, ErrorKind, ParseError};
pub use expand::Expanded;
pub use instruction::{
    Add, ArgDef, CommandLine, Copy, From, Healthcheck, HealthcheckCmd, InlineSource, Instruction,
    KeyValue, NetworkMode, Onbuild, Run, Security,
};
pub use lowlevel::{dump_buildkit, parse_nodes, Directives, Heredoc, Node, NodeArg};
pub use mount::{Mount, MountType, Sharing};
pub use quote::go_quote;
pub use shell::{env_from_pairs, Env, ExpandError, Expansion, Lexer, NoEnv};

/// Where a node is in the source: 1-based line and column of its first character, and the
/// last physical line it covers (continuations and heredoc bodies included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Span {
    /// First line (1-based).
    pub line: usize,
    /// Column of the first non-blank character on `line` (1-based, in characters).
    pub column: usize,
    /// Last physical line (1-based, inclusive).
    pub end_line: usize,
}

/// A value with its source span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spanned<T> {
    /// Where it is.
    pub span: Span,
    /// The value.
    pub value: T,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dockerfile {
    /// Parser directives (`syntax`, `escape`, `check`) from the leading comment block.
    pub directives: Directives,
    /// The escape character in force (`\` or `` ` ``); pass it to [`Instruction::expand`].
    pub escape: char,
    /// Instructions in order, each with its span.
    pub instructions: Vec<Spanned<Instruction>>,
    /// Non-fatal findings of the low-level parse (empty continuation lines).
    pub warnings: Vec<lowlevel::Warning>,
}

/// Parses Dockerfile text: the low-level parse then the instruction layer.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let parsed = parse_nodes(text)?;
    let mut instructions = Vec::with_capacity(parsed.nodes.len());
    let mut seen_from = false;
    for node in &parsed.nodes {
        let inst = node.instruction()?;
        match inst {
            Instruction::From(_) => seen_from = true,
            Instruction::Arg(_) => {}
            _ if !seen_from => {
                return Err(ParseError::at(
                    ErrorKind::NoStage,
                    node.span,
                    "no build stage in current context",
                ))
            }
            _ => {}
        }
        instructions.push(Spanned {
            span: node.span,
            value: inst,
        });
    }
    Ok(Dockerfile {
        escape: parsed.directives.escape,
        directives: parsed.directives,
        instructions,
        warnings: parsed.warnings,
    })
}

/// Parses a Dockerfile from bytes, rejecting invalid UTF-8 and NUL bytes with a located error.
pub fn parse_bytes(data: &[u8]) -> Result<Dockerfile, ParseError> {
    parse(lowlevel::check_bytes(data)?)
}
