//! Progress events a build emits while it runs, and the [`ProgressSink`]
//! trait a front end implements to render them (plain lines, a live tty
//! view, or nothing). The solver never prints.

use std::time::Duration;

use rbuild_cache::Digest;

/// Identifies one step of the build for display: where it is, and what it
/// does. Steps are numbered like BuildKit's progress: `[stage K/M]`, where
/// step 1 of each stage is its `FROM`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepInfo {
    /// Sequence number over the whole build (stable for one build; plain
    /// progress prints it as `#N`).
    pub id: usize,
    /// Index of the stage in the Dockerfile (0-based).
    pub stage_index: usize,
    /// The stage's name (`AS name`), or `stage-N` for unnamed stages.
    pub stage_name: String,
    /// Whether the Dockerfile has more than one stage (plain progress shows
    /// `[stage-0 1/3]` then, and `[1/3]` for a single unnamed stage).
    pub multi_stage: bool,
    /// Whether the stage was named with `AS`.
    pub named: bool,
    /// 1-based index of the step within its stage (the FROM is 1).
    pub index: usize,
    /// Number of steps in the stage, the FROM included.
    pub count: usize,
    /// The instruction after variable expansion, e.g. `COPY a.txt /a`,
    /// as BuildKit shows it.
    pub instruction: String,
    /// 1-based Dockerfile line of the instruction (0 for steps with no
    /// line, such as ONBUILD triggers of a base image).
    pub line: usize,
}

impl StepInfo {
    /// The BuildKit-style label: `[builder 2/5]`, `[stage-1 1/3]`, `[2/3]`.
    pub fn label(&self) -> String {
        if self.named || self.multi_stage {
            format!("[{} {}/{}]", self.stage_name, self.index, self.count)
        } else {
            format!("[{}/{}]", self.index, self.count)
        }
    }
}

/// One thing that happened during a build.
#[derive(Debug, Clone, Copy)]
pub enum ProgressEvent<'a> {
    /// The Dockerfile was parsed and checked; `steps` steps will be looked
    /// up or run (pruned stages excluded).
    Planned {
        /// Number of steps, FROMs included.
        steps: usize,
    },
    /// A step started (looked up and missed, or `--no-cache`): it runs now.
    Started(&'a StepInfo),
    /// A step's result came from the cache.
    Cached(&'a StepInfo),
    /// Output of a running step (RUN's stdout and stderr, interleaved as
    /// written).
    Output(&'a StepInfo, &'a [u8]),
    /// A step finished running.
    Finished(&'a StepInfo, Duration),
    /// A step failed; the build's error follows as the result of `build`.
    Failed(&'a StepInfo, &'a str),
    /// A non-fatal problem, like Docker's `[Warning] One or more build-args
    /// ... were not consumed`.
    Warning(&'a str),
    /// A base image is being pulled from its registry (while the build is
    /// planned, before any step runs).
    Pulling {
        /// The image as the Dockerfile names it (after expansion).
        image: &'a str,
        /// The platform pulled (`linux/amd64`).
        platform: &'a str,
    },
    /// A base image was pulled.
    Pulled {
        /// The image as the Dockerfile names it.
        image: &'a str,
        /// The manifest digest the build uses.
        manifest: &'a Digest,
    },
    /// The final image is being written.
    Exporting,
    /// The final image was written.
    Exported {
        /// Manifest digest.
        manifest: &'a Digest,
        /// Config digest (the image ID).
        config: &'a Digest,
    },
}

/// Receives progress events. Called from the threads that run steps, so an
/// implementation must be `Sync`; events of one step arrive in order.
pub trait ProgressSink: Sync {
    /// Handles one event.
    fn event(&self, event: ProgressEvent<'_>);
}

/// A sink that ignores everything (for embedders that only want the result).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn event(&self, _event: ProgressEvent<'_>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(named: bool, multi: bool) -> StepInfo {
        StepInfo {
            id: 3,
            stage_index: 1,
            stage_name: if named {
                "builder".into()
            } else {
                "stage-1".into()
            },
            multi_stage: multi,
            named,
            index: 2,
            count: 5,
            instruction: "COPY a /a".into(),
            line: 4,
        }
    }

    #[test]
    fn labels_like_buildkit() {
        assert_eq!(info(true, true).label(), "[builder 2/5]");
        assert_eq!(info(false, true).label(), "[stage-1 2/5]");
        assert_eq!(info(false, false).label(), "[2/5]");
        assert_eq!(info(true, false).label(), "[builder 2/5]");
    }
}
