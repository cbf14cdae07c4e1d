//! The `rbuild` binary: parses the command line, resolves the store root and
//! hands each subcommand to the library crates. It owns presentation only
//! (flags, progress, tables, error rendering); build and store logic live in
//! the libraries.

mod cli;
mod outputs;
mod root;

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let args = cli::rewrite_default_subcommand(std::env::args_os().collect());
    let cli = Cli::parse_from(args);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = root::resolve(&root::RootInputs::from_env(cli.root))?;
    match cli.command {
        Command::Build(args) => {
            for o in &args.outputs {
                outputs::OutputSpec::parse(o)?;
            }
            bail!(
                "building needs the solver, which is not wired in yet (store {})",
                root.display()
            )
        }
        other => bail!("{other:?} needs the image store, which is not wired in yet"),
    }
}
