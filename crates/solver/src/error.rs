//! [`BuildError`]: why a build failed, with the step and Dockerfile line a
//! user needs to find the cause.

use std::path::PathBuf;

/// Where in the Dockerfile and the build a failing step is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepLocation {
    /// The stage's name (`AS name`, or `stage-N`).
    pub stage: String,
    /// 1-based step index within the stage (the FROM is 1).
    pub index: usize,
    /// Number of steps in the stage.
    pub count: usize,
    /// The instruction as written after expansion.
    pub instruction: String,
    /// 1-based Dockerfile line (0 for ONBUILD triggers of a base image).
    pub line: usize,
}

impl std::fmt::Display for StepLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{} {}/{}] {}",
            self.stage, self.index, self.count, self.instruction
        )?;
        if self.line > 0 {
            write!(f, " (line {})", self.line)?;
        }
        Ok(())
    }
}

/// How a RUN step's process ended when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExitReason {
    /// It exited with this non-zero code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Code(c) => write!(f, "exit code {c}"),
            ExitReason::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// A lower layer's error (store, executor), kept as the source of a
/// [`BuildError`] variant that says which step or object it concerns.
pub type Inner = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a build failed. Every variant that concerns one instruction names its
/// Dockerfile line; step failures carry the [`StepLocation`].
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile could not be read.
    #[error("reading Dockerfile {path}: {source}")]
    ReadDockerfile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The Dockerfile does not parse (the parser's error, with its line and
    /// column).
    #[error("{name}: {source}")]
    Parse {
        /// The Dockerfile's display name.
        name: String,
        /// The parser's located error.
        source: Inner,
    },
    /// An instruction is invalid in a way found before anything runs (bad
    /// flag value, unknown mount type, bad EXPOSE port, ...).
    #[error("Dockerfile line {line}: {message}")]
    Invalid {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Variable expansion failed (e.g. `${X:?message}` with X unset).
    #[error("Dockerfile line {line}: {message}")]
    Expansion {
        /// 1-based line.
        line: usize,
        /// The lexer's message.
        message: String,
    },
    /// `--target` names no stage.
    #[error("target stage {target:?} could not be found (stages: {})", .available.join(", "))]
    UnknownTarget {
        /// The requested target.
        target: String,
        /// The stages there are, by name or index.
        available: Vec<String>,
    },
    /// `COPY --from` or `RUN --mount=from=` names a stage that is not defined
    /// before it (and is not an image in the store).
    #[error("Dockerfile line {line}: {reference:?} is not a build stage defined before this one, nor an image in the store")]
    UnknownFrom {
        /// 1-based line.
        line: usize,
        /// The name or index given.
        reference: String,
    },
    /// A stage depends on itself through `--from`/`FROM`.
    #[error("Dockerfile line {line}: circular dependency on stage {stage:?}")]
    Circular {
        /// 1-based line.
        line: usize,
        /// The stage.
        stage: String,
    },
    /// The base image of a FROM (or an image named by `--from`) is neither
    /// in the local store nor in its registry.
    #[error("Dockerfile line {line}: base image {image:?} not found in the local store nor in its registry")]
    BaseImageNotFound {
        /// 1-based line.
        line: usize,
        /// The image reference as written after expansion.
        image: String,
    },
    /// The base image of a FROM (or an image named by `--from`) could not
    /// be pulled from its registry.
    #[error("Dockerfile line {line}: pulling base image {image:?}: {source}")]
    Pull {
        /// 1-based line.
        line: usize,
        /// The image reference as written after expansion.
        image: String,
        /// The registry error (names the registry).
        source: Inner,
    },
    /// Exporting the step cache (`--cache-to`) failed.
    #[error("exporting cache to {destination}: {source}")]
    CacheExport {
        /// The destination as given (`type=registry,ref=...`).
        destination: String,
        /// What went wrong.
        source: Inner,
    },
    /// A COPY/ADD source is missing or outside the context.
    #[error("{step}: {source}")]
    CopySource {
        /// The failing step.
        step: StepLocation,
        /// The executor's error, naming the source.
        source: Inner,
    },
    /// A RUN step's command failed.
    #[error("{step}: process did not complete successfully: {reason}")]
    RunFailed {
        /// The failing step.
        step: StepLocation,
        /// Exit code or signal.
        reason: ExitReason,
        /// The last lines of its output.
        output_tail: Vec<String>,
    },
    /// Any other failure while executing a step (snapshot, copy, commit).
    #[error("{step}: {source}")]
    Step {
        /// The failing step.
        step: StepLocation,
        /// What went wrong.
        source: Inner,
    },
    /// The store could not be opened, read or written.
    #[error("image store: {0}")]
    Store(#[source] Inner),
    /// The build context could not be opened or walked.
    #[error("build context {path}: {source}")]
    Context {
        /// The context directory.
        path: PathBuf,
        /// What went wrong.
        source: Inner,
    },
}

impl BuildError {
    /// The failing step, when the error belongs to one.
    pub fn step(&self) -> Option<&StepLocation> {
        match self {
            BuildError::CopySource { step, .. }
            | BuildError::RunFailed { step, .. }
            | BuildError::Step { step, .. } => Some(step),
            _ => None,
        }
    }

    /// The Dockerfile line the error is about, when there is one.
    pub fn line(&self) -> Option<usize> {
        match self {
            BuildError::Invalid { line, .. }
            | BuildError::Expansion { line, .. }
            | BuildError::UnknownFrom { line, .. }
            | BuildError::Circular { line, .. }
            | BuildError::BaseImageNotFound { line, .. }
            | BuildError::Pull { line, .. } => Some(*line),
            _ => self.step().map(|s| s.line).filter(|l| *l > 0),
        }
    }
}
