//! Turns a parsed Dockerfile into a graph of cached steps and runs it.
//!
//! The entry point is [`build`]: it reads the Dockerfile of a
//! [`BuildRequest`], resolves stages, `--target` and variable scopes,
//! computes every step's cache key, runs the steps that miss (independent
//! stages concurrently), writes the image into the store and returns a
//! [`BuildResult`]. Progress goes to a [`ProgressSink`]; failures are a
//! [`BuildError`] naming the step and Dockerfile line. Tagging the result is
//! the caller's job (`Store::tag` with `BuildResult::manifest_digest`).
//!
//! ```no_run
//! use rbuild_solver::{build, BuildRequest, NoProgress};
//! let req = BuildRequest::new("examples/hello", "/tmp/rbuild-store");
//! let result = build(&req, &NoProgress).unwrap();
//! println!("{}", result.manifest_digest);
//! ```

mod error;
mod explain;
mod key;
mod progress;
mod request;
mod result;

pub use error::{BuildError, ExitReason, Inner, StepLocation};
pub use explain::{BuildRecord, Difference, FileChange, RecordedStep, StepExplain, VarChange};
pub use key::{FileInput, KeyInputs, ParentInput, SourceInput};
pub use progress::{NoProgress, ProgressEvent, ProgressSink, StepInfo};
pub use request::{
    BuildRequest, CompressionChoice, DockerfileSource, NetworkMode, Platform, SecretSource,
    SnapshotterChoice,
};
pub use result::{BuildResult, StepReport, StepStatus};

/// Builds the Dockerfile of `request` and writes the image into the store.
///
/// The whole Dockerfile is checked before any step runs. Nothing is tagged;
/// on failure the store holds no new image (cached step results of steps
/// that succeeded are kept, as BuildKit keeps them).
pub fn build(
    request: &BuildRequest,
    progress: &dyn ProgressSink,
) -> Result<BuildResult, BuildError> {
    let _ = (request, progress);
    Err(BuildError::Invalid {
        line: 0,
        message: "the build engine is not wired to the parser yet".into(),
    })
}
