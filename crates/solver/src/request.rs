//! What a build is asked to do: [`BuildRequest`] and the small value types
//! its fields use. Nothing here does work; `build` reads it.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where the Dockerfile comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerfileSource {
    /// A file on disk (`-f FILE`, or `CONTEXT/Dockerfile` by default). Its
    /// name also locates `<name>.dockerignore` beside it, which takes
    /// precedence over the context's `.dockerignore`.
    Path(PathBuf),
    /// Dockerfile text given directly (`-f -`), with a display name for
    /// error messages and for the `--explain` history record.
    Text {
        /// A name for messages (e.g. `<stdin>`).
        name: String,
        /// The Dockerfile itself.
        text: String,
    },
}

/// A target or build platform, `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// Go's architecture name: `amd64`, `arm64`, `arm`, `386`, ...
    pub architecture: String,
    /// `v7` for `arm/v7`, empty when there is none.
    pub variant: String,
}

impl Platform {
    /// The platform of the machine rbuild runs on, named the way Go (and so
    /// Docker) names it.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", ""),
            "aarch64" => ("arm64", ""),
            "x86" => ("386", ""),
            "arm" => ("arm", "v7"),
            "powerpc64" => ("ppc64le", ""),
            "s390x" => ("s390x", ""),
            "riscv64" => ("riscv64", ""),
            other => (other, ""),
        };
        Platform {
            os: "linux".to_string(),
            architecture: architecture.to_string(),
            variant: variant.to_string(),
        }
    }

    /// Parses `os/arch[/variant]` (e.g. `linux/arm/v7`).
    pub fn parse(s: &str) -> Option<Platform> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?;
        let architecture = parts.next().filter(|p| !p.is_empty())?;
        let variant = parts.next().unwrap_or("");
        if parts.next().is_some() {
            return None;
        }
        Some(Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.to_string(),
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

/// The network RUN steps get unless a step says otherwise with
/// `RUN --network=...` (`rbuild build --network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// The host's network, as Docker's default builder gives (package
    /// managers work).
    #[default]
    Default,
    /// A fresh network namespace with only loopback.
    None,
    /// The host's network namespace.
    Host,
}

/// A secret for `RUN --mount=type=secret,id=ID` (`--secret id=ID,src=FILE`).
/// Secrets never enter a cache key, a layer or a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSource {
    /// The id a Dockerfile names.
    pub id: String,
    /// The file holding the value.
    pub path: PathBuf,
}

/// Layer compression (`--compression`, `--compression-level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressionChoice {
    /// gzip (the default, read by every tool).
    #[default]
    Gzip,
    /// zstd (`application/vnd.oci.image.layer.v1.tar+zstd`).
    Zstd,
    /// Uncompressed tar.
    None,
}

/// When base images are looked up in their registries (`--pull`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Only when the store has no image of that name and platform (the
    /// default, as docker build).
    #[default]
    Missing,
    /// Always, even when the store has one (`--pull`).
    Always,
    /// Never: a base image must be in the store (offline builds).
    Never,
}

/// How `RUN` and snapshot steps get their root filesystems (`--snapshotter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotterChoice {
    /// Overlay when the host can mount it, otherwise native.
    #[default]
    Auto,
    /// overlayfs over unpacked layers.
    Overlay,
    /// Plain directory copies, diffed by walking both trees.
    Native,
}

/// Everything a build needs to know. Make one with [`BuildRequest::new`] and
/// set the public fields; new fields get defaults, so callers that set only
/// what they need keep compiling.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile (default `CONTEXT/Dockerfile`).
    pub dockerfile: DockerfileSource,
    /// The store root (`--root`).
    pub root: PathBuf,
    /// `--build-arg K=V` values. A name given without a value on the
    /// command line is resolved from the environment by the caller.
    pub build_args: BTreeMap<String, String>,
    /// `--target`: the stage to build (default: the last one).
    pub target: Option<String>,
    /// `--no-cache`: run every step; results are still recorded.
    pub no_cache: bool,
    /// `--label K=V`: added to the final image's labels (last wins).
    pub labels: BTreeMap<String, String>,
    /// The target platform (default: the host's). Only the host platform
    /// can run RUN steps; this sets the platform args and the config.
    pub platform: Platform,
    /// Snapshotter choice for RUN.
    pub snapshotter: SnapshotterChoice,
    /// Network for RUN steps without `--network`.
    pub network: NetworkMode,
    /// Secrets for `RUN --mount=type=secret`.
    pub secrets: Vec<SecretSource>,
    /// Layer compression.
    pub compression: CompressionChoice,
    /// Compression level (`None`: the algorithm's default).
    pub compression_level: Option<i32>,
    /// Maximum number of steps running at once (stages that do not depend
    /// on each other build concurrently). At least 1.
    pub jobs: usize,
    /// `SOURCE_DATE_EPOCH`: clamps layer mtimes and sets the config's
    /// `created` and history times, so two builds give the same digest.
    pub source_date_epoch: Option<i64>,
    /// Collect `--explain` data (the inputs of every key, and for each miss
    /// the first difference from the previous build of this Dockerfile and
    /// target). Build records for the comparison are always written.
    pub explain: bool,
    /// `--pull`: when base images are looked up in their registries.
    pub pull: PullPolicy,
    /// `--insecure-registry HOST`: registries besides loopback ones that may
    /// be reached over plain HTTP (base image pulls and registry caches).
    pub insecure_registries: Vec<String>,
    /// `--cache-from`: step caches to consult when the local cache misses;
    /// their layers are fetched only when a step or the export needs them.
    pub cache_from: Vec<crate::remote_cache::CacheLocation>,
    /// `--cache-to`: where to export this build's step cache.
    pub cache_to: Vec<crate::remote_cache::CacheExport>,
}

impl BuildRequest {
    /// A request for `context` with `CONTEXT/Dockerfile`, the store at
    /// `root`, and defaults everywhere else (host platform, gzip, jobs =
    /// number of cores).
    pub fn new(context: impl Into<PathBuf>, root: impl Into<PathBuf>) -> BuildRequest {
        let context = context.into();
        BuildRequest {
            dockerfile: DockerfileSource::Path(context.join("Dockerfile")),
            context,
            root: root.into(),
            build_args: BTreeMap::new(),
            target: None,
            no_cache: false,
            labels: BTreeMap::new(),
            platform: Platform::host(),
            snapshotter: SnapshotterChoice::Auto,
            network: NetworkMode::Default,
            secrets: Vec::new(),
            compression: CompressionChoice::Gzip,
            compression_level: None,
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            source_date_epoch: None,
            explain: false,
            pull: PullPolicy::Missing,
            insecure_registries: Vec::new(),
            cache_from: Vec::new(),
            cache_to: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_round_trip() {
        let p = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(p.variant, "v7");
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert_eq!(
            Platform::parse("linux/amd64").unwrap().to_string(),
            "linux/amd64"
        );
        assert!(Platform::parse("linux").is_none());
        assert!(Platform::parse("a/b/c/d").is_none());
    }
}
