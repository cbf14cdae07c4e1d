//! The `rbuild` binary: parses the command line, resolves the store root and
//! hands each subcommand to the library crates. It owns presentation only
//! (flags, progress, tables, error rendering); build and store logic live in
//! the libraries.

mod build;
mod cli;
mod debug;
mod diagnostics;
mod explain;
mod export;
mod graph;
mod images;
mod maintenance;
mod outputs;
mod progress;
mod registry;
mod root;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use rbuild_image::Store;

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

pub(crate) fn open_store(root: &Path) -> Result<Store> {
    Store::open(root).with_context(|| format!("opening image store {}", root.display()))
}

fn run(cli: Cli) -> Result<()> {
    let flag = cli.root;
    // Resolved only by commands that use the store (`debug` does not).
    let root = || root::resolve(&root::RootInputs::from_env(flag.clone()));
    let store = || open_store(&root()?);
    match cli.command {
        Command::Build(args) => {
            // A signal must stop the running step and unwind through the
            // snapshots' cleanup rather than kill rbuild with mounts in place.
            rbuild_executor::sandbox::handle_interrupts()
                .context("installing the SIGINT/SIGTERM handlers")?;
            build::run(&args, &root()?)
        }
        Command::Images(args) => images::images(&store()?, &args),
        Command::Tag(args) => images::tag(&store()?, &args),
        Command::Rmi(args) => images::rmi(&store()?, &args),
        Command::Inspect(args) => images::inspect(&store()?, &args),
        Command::History(args) => images::history(&store()?, &args),
        Command::Save(args) => export::save(&store()?, &args),
        Command::Load(args) => export::load(&store()?, &args),
        Command::Import(args) => export::import(&store()?, &args),
        Command::Login(args) => registry::login(&args),
        Command::Logout(args) => registry::logout(&args),
        Command::Pull(args) => registry::pull(&store()?, &args),
        Command::Push(args) => registry::push(&store()?, &args),
        Command::Debug(args) => debug::run(&args),
        Command::Graph(args) => graph::run(&args, &root()?),
        Command::Check(args) => maintenance::check(&root()?, &args),
        Command::Du(args) => maintenance::du(&root()?, &args),
        Command::Prune(args) => maintenance::prune(&root()?, &args),
    }
}
