//! What a successful build returns: the image and a report per step.

use std::time::Duration;

use rbuild_cache::Digest;
use serde::{Deserialize, Serialize};

use crate::explain::StepExplain;
use crate::progress::StepInfo;

/// Whether a step's result came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Found in the cache index; nothing ran.
    Cached,
    /// Run (a miss, or `--no-cache`).
    Executed,
}

/// One step of the build as it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    /// Which step.
    pub info: StepInfo,
    /// Cached or executed.
    pub status: StepStatus,
    /// Time spent on the step (lookup, or run and commit).
    pub duration: Duration,
    /// The step's cache key.
    pub key: Digest,
    /// The layer the step produced, if any (its diffID).
    pub layer: Option<Digest>,
    /// Key inputs and differences from the previous build, when the
    /// request asked for `explain`.
    pub explain: Option<StepExplain>,
}

/// The outcome of a successful build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildResult {
    /// The image's manifest digest (what `--iidfile`/`-q` print and tags
    /// point at).
    pub manifest_digest: Digest,
    /// The image's config digest (Docker's image ID).
    pub config_digest: Digest,
    /// The stage that was built.
    pub target: String,
    /// Every step looked up or run, in Dockerfile order (pruned stages are
    /// absent).
    pub steps: Vec<StepReport>,
    /// Warnings (unused build args, undefined variables), also sent as
    /// progress events.
    pub warnings: Vec<String>,
}
