//! The pest grammar (`dockerfile.pest`): directives, instruction heads, heredoc markers and
//! JSON exec form. The line-oriented driver lives in `lowlevel.rs`.

/// The generated pest parser for `dockerfile.pest`.
#[derive(pest_derive::Parser)]
#[grammar = "dockerfile.pest"]
pub struct DockerfileGrammar;
