//! The command-line grammar: clap definitions of every subcommand and its
//! flags, and the argv rewrite that makes `build` the default subcommand
//! (`rbuild -t app .` is `rbuild build -t app .`, as with `docker build`).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// rbuild: build OCI images from Dockerfiles, without a daemon.
#[derive(Debug, Parser)]
#[command(name = "rbuild", version, about, max_term_width = 100)]
pub struct Cli {
    /// Image store directory [default: $RBUILD_ROOT, else $XDG_DATA_HOME/rbuild,
    /// else /var/lib/rbuild for root, else ~/.local/share/rbuild]
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// What to do; `build` when the first argument is not a subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile (the default subcommand)
    Build(Box<BuildArgs>),
    /// List images in the store
    #[command(visible_alias = "ls")]
    Images(ImagesArgs),
    /// Give an image another name
    Tag(TagArgs),
    /// Remove image names (and the images no name refers to any more)
    Rmi(RmiArgs),
    /// Show an image's details as JSON
    Inspect(InspectArgs),
    /// Show the history of an image's layers
    History(HistoryArgs),
    /// Write images to an OCI or docker-archive tarball
    Save(SaveArgs),
    /// Load images from an OCI or docker-archive tarball
    Load(LoadArgs),
    /// Create an image from a root filesystem tarball
    Import(ImportArgs),
    /// Log in to a registry (the credentials are checked, then saved)
    Login(crate::registry::LoginArgs),
    /// Remove the saved credentials of a registry
    Logout(crate::registry::LogoutArgs),
    /// Pull an image from a registry into the store
    Pull(crate::registry::PullArgs),
    /// Push an image from the store to a registry
    Push(crate::registry::PushArgs),
    /// Inspect the Dockerfile parser (parse tree, word expansion)
    Debug(crate::debug::DebugArgs),
    /// Print the build's step graph (DOT or SVG), marking cached steps
    Graph(crate::graph::GraphArgs),
    /// Verify the store (blobs, images, cache, leases, temp files, mounts)
    Check(crate::maintenance::CheckArgs),
    /// Show disk use: images, layers, build cache, cache mounts, snapshots
    Du(crate::maintenance::DuArgs),
    /// Remove unused build cache and blobs (--all: untagged images, cache mounts)
    Prune(crate::maintenance::PruneArgs),
}

/// `rbuild build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Name and optionally tag the image (NAME[:TAG]); repeatable
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    pub tags: Vec<String>,

    /// The Dockerfile [default: CONTEXT/Dockerfile]; `-` reads it from stdin
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Set a build-time variable; KEY alone takes the value from the environment
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    pub build_args: Vec<String>,

    /// Build this stage (name or index) instead of the last one
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,

    /// Ignore the step cache
    #[arg(long)]
    pub no_cache: bool,

    /// When to look up base images in their registries: `--pull` (or
    /// `=always`) every time, `=missing` when the store has none (default),
    /// `=never` (offline: the store only)
    #[arg(
        long,
        value_name = "POLICY",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "always",
        default_value = "missing",
        value_parser = parse_pull_policy
    )]
    pub pull: rbuild_solver::PullPolicy,

    /// Set a label on the image; repeatable
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,

    /// Write the image ID to this file
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,

    /// Print only the image ID on success
    #[arg(short, long)]
    pub quiet: bool,

    /// Output: type=oci|docker|local|tar|image,dest=PATH[,tar=false][,name=N], or a directory
    #[arg(short = 'o', long = "output", value_name = "OUTPUT")]
    pub outputs: Vec<String>,

    /// Explain each step's cache key and what changed since the previous build
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "text"
    )]
    pub explain: Option<ExplainFormat>,

    /// Target platform (only the host's platform can be built)
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,

    /// A secret for RUN --mount=type=secret: id=ID[,src=PATH|,env=VAR]; repeatable
    #[arg(long = "secret", value_name = "SPEC")]
    pub secrets: Vec<String>,

    /// Network for RUN steps
    #[arg(long, value_enum, default_value_t = NetworkMode::Default)]
    pub network: NetworkMode,

    /// Progress output
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,

    /// How many steps may run at once [default: number of cores]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,

    /// Layer compression
    #[arg(long, value_enum, default_value_t = CompressionKind::Gzip)]
    pub compression: CompressionKind,

    /// Compression level (gzip 0-9, zstd 1-22) [default: the algorithm's default]
    #[arg(long, value_name = "N")]
    pub compression_level: Option<i32>,

    /// How RUN steps see their filesystem [default: overlay when available]
    #[arg(long, value_enum)]
    pub snapshotter: Option<SnapshotterChoice>,

    /// Push the image to its registry under every -t name (same as -o type=image,push=true)
    #[arg(long)]
    pub push: bool,

    /// Export the step cache: type=registry,ref=REF[,mode=min|max] or type=local,dest=DIR[,mode=..]; repeatable
    #[arg(long = "cache-to", value_name = "SPEC")]
    pub cache_to: Vec<String>,

    /// Import a step cache: type=registry,ref=REF or type=local,src=DIR; repeatable
    #[arg(long = "cache-from", value_name = "SPEC")]
    pub cache_from: Vec<String>,

    /// Allow plain HTTP to this registry (host[:port]); repeatable. Loopback registries always may
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,

    /// The build context directory; `-` reads a context tarball (plain or
    /// compressed), or else a Dockerfile with an empty context, from stdin
    #[arg(value_name = "CONTEXT")]
    pub context: PathBuf,
}

/// `--explain` formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainFormat {
    /// Human-readable text on stderr.
    Text,
    /// One JSON document on stdout.
    Json,
}

/// `--network` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkMode {
    /// The sandbox's own network namespace with the host's connectivity.
    Default,
    /// No network at all.
    None,
    /// The host's network namespace.
    Host,
}

/// `--progress` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// tty when stderr is a terminal, plain otherwise.
    Auto,
    /// A live view of running steps.
    Tty,
    /// BuildKit-style log lines.
    Plain,
    /// Nothing but the image ID.
    Quiet,
}

/// `--compression` algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionKind {
    /// gzip (`tar+gzip` layers), readable by every tool.
    Gzip,
    /// zstd (`tar+zstd` layers), faster; needs a recent consumer.
    Zstd,
}

/// `--snapshotter` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SnapshotterChoice {
    /// overlayfs mounts over unpacked layers.
    Overlay,
    /// Plain directory copies.
    Native,
}

/// `rbuild images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Only show image IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Show full image IDs
    #[arg(long)]
    pub no_trunc: bool,
    /// Show manifest digests
    #[arg(long)]
    pub digests: bool,
    /// Only images whose repository matches (NAME or NAME:TAG)
    #[arg(value_name = "REPOSITORY[:TAG]")]
    pub filter: Option<String>,
}

/// `rbuild tag`.
#[derive(Debug, Args)]
pub struct TagArgs {
    /// Existing image: name, ID or ID prefix
    #[arg(value_name = "SOURCE_IMAGE")]
    pub source: String,
    /// New name
    #[arg(value_name = "TARGET_IMAGE[:TAG]")]
    pub target: String,
}

/// `rbuild rmi`.
#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Remove an image by ID even when several names refer to it, or while a running build uses it
    #[arg(short, long)]
    pub force: bool,
    /// Image names or IDs
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<String>,
}

/// `rbuild inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image names or IDs
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<String>,
}

/// `rbuild history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Do not truncate the CREATED BY column
    #[arg(long)]
    pub no_trunc: bool,
    /// Image name or ID
    #[arg(value_name = "IMAGE")]
    pub image: String,
}

/// `rbuild save`.
#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Archive format
    #[arg(long, value_enum, default_value_t = ArchiveFormat::Oci)]
    pub format: ArchiveFormat,
    /// Write to this file (`-` for stdout)
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Image names or IDs
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<String>,
}

/// Archive formats for `save`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArchiveFormat {
    /// An OCI image layout tarball.
    Oci,
    /// A docker-archive tarball (`docker load` format).
    Docker,
}

/// `rbuild load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Read from this file [default: stdin]
    #[arg(short, long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Print nothing
    #[arg(short, long)]
    pub quiet: bool,
}

/// `rbuild import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Root filesystem tarball (plain or compressed); `-` for stdin
    #[arg(value_name = "ROOTFS_TAR")]
    pub source: PathBuf,
    /// Name for the new image [default: untagged]
    #[arg(value_name = "NAME[:TAG]")]
    pub name: Option<String>,
    /// A Dockerfile instruction to apply to the image config (CMD,
    /// ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL, ONBUILD, USER, VOLUME,
    /// WORKDIR); repeatable
    #[arg(short = 'c', long = "change", value_name = "INSTRUCTION")]
    pub changes: Vec<String>,
    /// The history comment [default: "Imported from SOURCE"]
    #[arg(short = 'm', long = "message")]
    pub message: Option<String>,
}

/// Global options that take a value in the next argument; the argv rewrite
/// must skip that value when it looks for the first non-global argument.
const GLOBAL_OPTIONS_WITH_VALUE: &[&str] = &["--root"];

/// Inserts `build` when the first argument that is not a global option is not
/// a subcommand name, so that `rbuild -t app .` means `rbuild build -t app .`.
/// Help and version flags and a bare `rbuild` are left alone.
pub fn rewrite_default_subcommand(args: Vec<OsString>) -> Vec<OsString> {
    let command = Cli::command();
    let is_subcommand = |word: &str| {
        word == "help"
            || command
                .get_subcommands()
                .any(|s| s.get_name() == word || s.get_all_aliases().any(|a| a == word))
    };
    let mut i = 1;
    while i < args.len() {
        let Some(arg) = args[i].to_str() else {
            break;
        };
        if GLOBAL_OPTIONS_WITH_VALUE.contains(&arg) {
            i += 2;
            continue;
        }
        if GLOBAL_OPTIONS_WITH_VALUE
            .iter()
            .any(|o| arg.strip_prefix(o).is_some_and(|r| r.starts_with('=')))
        {
            i += 1;
            continue;
        }
        if matches!(arg, "-h" | "--help" | "-V" | "--version") || is_subcommand(arg) {
            return args;
        }
        break;
    }
    if i >= args.len() {
        return args;
    }
    let mut out = args;
    out.insert(i, OsString::from("build"));
    out
}

/// `--pull` values: buildah's policy names, and docker's booleans.
fn parse_pull_policy(s: &str) -> Result<rbuild_solver::PullPolicy, String> {
    use rbuild_solver::PullPolicy;
    match s {
        "always" | "true" => Ok(PullPolicy::Always),
        "missing" | "false" => Ok(PullPolicy::Missing),
        "never" => Ok(PullPolicy::Never),
        _ => Err(format!("expected always, missing or never, not {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(args: &[&str]) -> Vec<String> {
        let v = args.iter().map(OsString::from).collect();
        rewrite_default_subcommand(v)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn build_is_inserted_before_the_first_non_global_argument() {
        assert_eq!(
            rewrite(&["rbuild", "-t", "x", "."]),
            ["rbuild", "build", "-t", "x", "."]
        );
        assert_eq!(rewrite(&["rbuild", "."]), ["rbuild", "build", "."]);
        assert_eq!(
            rewrite(&["rbuild", "--root", "/s", "-t", "x", "."]),
            ["rbuild", "--root", "/s", "build", "-t", "x", "."]
        );
        assert_eq!(
            rewrite(&["rbuild", "--root=/s", "."]),
            ["rbuild", "--root=/s", "build", "."]
        );
    }

    #[test]
    fn subcommands_help_and_empty_are_untouched() {
        for args in [
            &["rbuild", "images"][..],
            &["rbuild", "--root", "/s", "ls"],
            &["rbuild", "build", "."],
            &["rbuild", "--help"],
            &["rbuild", "-V"],
            &["rbuild", "help", "build"],
            &["rbuild"],
            &["rbuild", "--root", "/s"],
        ] {
            assert_eq!(rewrite(args), args, "{args:?}");
        }
    }

    #[test]
    fn root_is_global_before_or_after_the_subcommand() {
        for args in [
            &["rbuild", "--root", "/s", "build", "."][..],
            &["rbuild", "build", "--root", "/s", "."],
            &["rbuild", "build", ".", "--root=/s"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(cli.root, Some(PathBuf::from("/s")), "{args:?}");
            assert!(matches!(cli.command, Command::Build(_)));
        }
    }

    #[test]
    fn explain_takes_an_optional_attached_value() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Command::Build(b) => (b.explain, b.context),
            _ => unreachable!(),
        };
        assert_eq!(
            parse(&["rbuild", "build", "--explain", "."]),
            (Some(ExplainFormat::Text), ".".into())
        );
        assert_eq!(
            parse(&["rbuild", "build", "--explain=json", "ctx"]),
            (Some(ExplainFormat::Json), "ctx".into())
        );
        assert_eq!(parse(&["rbuild", "build", "ctx"]).0, None);
    }

    #[test]
    fn repeatable_build_flags() {
        let cli = Cli::try_parse_from([
            "rbuild",
            "build",
            "-t",
            "a",
            "-t",
            "b:1",
            "--build-arg",
            "X=1",
            "--build-arg",
            "Y",
            "--label",
            "l=v",
            "-o",
            "type=oci,dest=o.tar",
            "-o",
            "dir",
            "-q",
            "--jobs",
            "3",
            ".",
        ])
        .unwrap();
        let Command::Build(b) = cli.command else {
            unreachable!()
        };
        assert_eq!(b.tags, ["a", "b:1"]);
        assert_eq!(b.build_args, ["X=1", "Y"]);
        assert_eq!(b.outputs.len(), 2);
        assert!(b.quiet);
        assert_eq!(b.jobs, Some(3));
        assert!(Cli::try_parse_from(["rbuild", "build", "--jobs", "0", "."]).is_err());
    }

    #[test]
    fn pull_takes_a_policy_or_none() {
        use rbuild_solver::PullPolicy;
        let pull = |args: &[&str]| {
            let mut argv = vec!["rbuild", "build"];
            argv.extend_from_slice(args);
            argv.push(".");
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Build(b)) => Ok(b.pull),
                Ok(_) => unreachable!(),
                Err(e) => Err(e),
            }
        };
        assert_eq!(pull(&[]).unwrap(), PullPolicy::Missing);
        assert_eq!(pull(&["--pull"]).unwrap(), PullPolicy::Always);
        assert_eq!(pull(&["--pull=never"]).unwrap(), PullPolicy::Never);
        assert_eq!(pull(&["--pull=false"]).unwrap(), PullPolicy::Missing);
        assert!(pull(&["--pull=sometimes"]).is_err());
    }
}
