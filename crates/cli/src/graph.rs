//! `rbuild graph`: the step DAG of a Dockerfile in Graphviz DOT (or SVG
//! rendered by graphviz's `dot`), with every step marked cached or to run
//! from a dry computation of the cache keys against the store. Nothing is
//! built; the plan, the keys and the drawing come from the solver
//! (`rbuild_solver::graph`, `BuildGraph::to_dot`).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use rbuild_solver::{BuildRequest, DockerfileSource, Platform};

use crate::cli::NetworkMode;
use crate::diagnostics::{render_build_error, DockerfileText};

/// `rbuild graph`.
#[derive(Debug, Args)]
pub struct GraphArgs {
    /// The Dockerfile [default: CONTEXT/Dockerfile]
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Set a build-time variable; KEY alone takes the value from the environment
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    pub build_args: Vec<String>,

    /// Draw the steps of this stage (name or index) and what it needs
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,

    /// Target platform (part of every cache key)
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,

    /// Network for RUN steps (part of their cache keys)
    #[arg(long, value_enum, default_value_t = NetworkMode::Default)]
    pub network: NetworkMode,

    /// Output format
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    pub format: GraphFormat,

    /// The build context directory
    #[arg(value_name = "CONTEXT")]
    pub context: PathBuf,
}

/// `rbuild graph --format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    /// Graphviz DOT text.
    Dot,
    /// SVG rendered by graphviz's `dot -Tsvg`.
    Svg,
}

/// Runs `rbuild graph`: prints the DOT (or SVG) on stdout.
pub fn run(args: &GraphArgs, root: &Path) -> Result<()> {
    if !args.context.is_dir() {
        bail!(
            "build context {} is not a directory",
            args.context.display()
        );
    }
    let mut req = BuildRequest::new(&args.context, root);
    let dockerfile = args
        .file
        .clone()
        .unwrap_or_else(|| args.context.join("Dockerfile"));
    req.dockerfile = DockerfileSource::Path(dockerfile.clone());
    req.build_args = crate::build::parse_build_args(&args.build_args, &|k| std::env::var(k).ok())?;
    req.target = args.target.clone();
    if let Some(p) = &args.platform {
        req.platform = Platform::parse(p)
            .ok_or_else(|| anyhow!("invalid --platform {p:?}: expected os/arch[/variant]"))?;
    }
    req.network = match args.network {
        NetworkMode::Default => rbuild_solver::NetworkMode::Default,
        NetworkMode::None => rbuild_solver::NetworkMode::None,
        NetworkMode::Host => rbuild_solver::NetworkMode::Host,
    };
    let (graph, cached) = rbuild_solver::graph(&req).map_err(|err| {
        let text = std::fs::read_to_string(&dockerfile).ok();
        let name = dockerfile.display().to_string();
        let file = DockerfileText {
            name: &name,
            text: text.as_deref(),
        };
        anyhow!(render_build_error(&err, &file))
    })?;
    let hits: HashSet<_> = graph
        .graph
        .node_weights()
        .zip(&cached)
        .filter(|(_, c)| **c)
        .map(|(n, _)| n.key)
        .collect();
    let dot = graph.to_dot(&|k| hits.contains(k));
    let out = match args.format {
        GraphFormat::Dot => dot.into_bytes(),
        GraphFormat::Svg => render_svg(&dot)?,
    };
    std::io::stdout()
        .write_all(&out)
        .context("writing the graph to stdout")
}

/// Pipes DOT through graphviz's `dot -Tsvg`.
fn render_svg(dot: &str) -> Result<Vec<u8>> {
    let mut child = match Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "--format svg needs graphviz's `dot` command, which is not installed \
             (Debian: apt-get install graphviz); `--format dot` prints the DOT text"
        ),
        Err(e) => return Err(e).context("starting graphviz `dot`"),
    };
    // `dot` reads all its input before writing, so writing first cannot
    // deadlock on a full pipe.
    child
        .stdin
        .take()
        .expect("stdin was piped")
        .write_all(dot.as_bytes())
        .context("writing to graphviz `dot`")?;
    let out = child
        .wait_with_output()
        .context("waiting for graphviz `dot`")?;
    if !out.status.success() {
        bail!(
            "graphviz `dot -Tsvg` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}
