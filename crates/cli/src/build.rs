//! `rbuild build`: turns the flags into a [`BuildRequest`], runs the solver
//! with the chosen progress display, then names the image and writes the
//! requested outputs.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use rbuild_image::{Reference, Store};
use rbuild_solver::{
    BuildRequest, BuildResult, CompressionChoice, DockerfileSource, Platform, SecretSource,
    StepStatus,
};

use crate::cli::{
    BuildArgs, CompressionKind, ExplainFormat, NetworkMode, ProgressMode, SnapshotterChoice,
};
use crate::diagnostics::{render_build_error, DockerfileText};
use crate::outputs::{OutputKind, OutputSpec};
use crate::progress::{Progress, Summary};
use crate::{explain, export};

/// The Dockerfile name BuildKit shows for a Dockerfile read from stdin.
const STDIN_DOCKERFILE_NAME: &str = "Dockerfile";

/// Runs `rbuild build`.
pub fn run(args: &BuildArgs, root: &Path) -> Result<()> {
    let started = Instant::now();
    let outputs = args
        .outputs
        .iter()
        .map(|o| OutputSpec::parse(o).with_context(|| format!("invalid --output {o:?}")))
        .collect::<Result<Vec<_>>>()?;
    // Names are checked before the build so a typo does not cost a build.
    let mut names = args
        .tags
        .iter()
        .map(|t| Reference::parse(t).map_err(|e| anyhow!("invalid tag {t:?}: {e}")))
        .collect::<Result<Vec<_>>>()?;
    // `--push` pushes every -t name; `-o type=image,push=true` its own
    // names, or the -t names when it has none (as buildx does).
    let mut push: Vec<Reference> = if args.push { names.clone() } else { Vec::new() };
    for o in outputs.iter().filter(|o| o.kind == OutputKind::Image) {
        let mut own = Vec::new();
        for n in &o.names {
            own.push(Reference::parse(n).map_err(|e| anyhow!("invalid output name {n:?}: {e}"))?);
        }
        if o.push {
            push.extend(if own.is_empty() {
                names.clone()
            } else {
                own.clone()
            });
        }
        names.extend(own);
    }
    let mut seen = std::collections::BTreeSet::new();
    push.retain(|r| seen.insert(r.to_string()));
    if (args.push || outputs.iter().any(|o| o.push)) && push.is_empty() {
        bail!("--push needs an image name: add -t NAME or -o type=image,name=NAME,push=true");
    }
    let Prepared {
        req: request,
        name: dockerfile_name,
        stdin_text: dockerfile_text,
        _stdin_context,
    } = request_from_args(args, root, &|k| std::env::var(k).ok())?;
    let progress = progress_for(args);
    let result = match rbuild_solver::build(&request, &progress) {
        Ok(r) => r,
        Err(err) => {
            progress.abandon();
            // Re-read the file for the caret display; the solver already
            // read it, and a failure here only loses the source line.
            let text = dockerfile_text.or_else(|| match &request.dockerfile {
                DockerfileSource::Path(p) => std::fs::read_to_string(p).ok(),
                DockerfileSource::Text { text, .. } => Some(text.clone()),
            });
            let file = DockerfileText {
                name: &dockerfile_name,
                text: text.as_deref(),
            };
            bail!(render_build_error(&err, &file));
        }
    };

    let store =
        Store::open(root).with_context(|| format!("opening image store {}", root.display()))?;
    for name in &names {
        store
            .tag(name, &result.manifest_digest)
            .with_context(|| format!("naming image {name}"))?;
        progress.export_line(&format!("naming to {name}"));
    }
    for o in &outputs {
        if let Some(what) = export::write_output(&store, &result, o, &names)? {
            progress.export_line(&what);
        }
    }
    if !push.is_empty() {
        for line in crate::registry::push_built(
            &store,
            &result.manifest_digest,
            &push,
            &args.insecure_registries,
        )? {
            progress.export_line(&line);
        }
    }
    if let Some(path) = &args.iidfile {
        write_iidfile(path, &result)?;
    }
    let (executed, cached) = result
        .steps
        .iter()
        .fold((0, 0), |(e, c), s| match s.status {
            StepStatus::Executed => (e + 1, c),
            StepStatus::Cached => (e, c + 1),
        });
    progress.finish(&Summary {
        executed,
        cached,
        elapsed: started.elapsed(),
    });
    match args.explain {
        Some(ExplainFormat::Json) => println!("{}", explain::to_json(&result)?),
        Some(ExplainFormat::Text) => eprint!("{}", explain::to_text(&result)),
        None => {}
    }
    let stdout_taken = outputs
        .iter()
        .any(|o| o.dest == Some(crate::outputs::Dest::Stdout));
    if is_quiet(args) && args.explain != Some(ExplainFormat::Json) && !stdout_taken {
        println!("{}", result.config_digest);
    } else if !is_quiet(args) {
        eprintln!("image {}", result.config_digest);
    }
    Ok(())
}

fn is_quiet(args: &BuildArgs) -> bool {
    args.quiet || args.progress == ProgressMode::Quiet
}

fn progress_for(args: &BuildArgs) -> Progress {
    if is_quiet(args) {
        return Progress::quiet();
    }
    let terminal = std::io::stderr().is_terminal();
    match args.progress {
        ProgressMode::Tty | ProgressMode::Auto if terminal => Progress::tty(),
        // A live view needs a terminal to redraw; without one it degrades to
        // plain lines rather than failing the build.
        _ => Progress::plain(),
    }
}

/// Docker writes the image ID (the config digest) without a newline.
fn write_iidfile(path: &Path, result: &BuildResult) -> Result<()> {
    std::fs::write(path, result.config_digest.to_string())
        .with_context(|| format!("writing --iidfile {}", path.display()))
}

/// Builds the solver request from the flags, reading stdin for `-f -` or a
/// `-` context.
fn request_from_args(
    args: &BuildArgs,
    root: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Prepared> {
    let stdin_file = args.file.as_ref().is_some_and(|f| f.as_os_str() == "-");
    let stdin_context = if args.context.as_os_str() == "-" {
        if stdin_file {
            bail!("cannot read both the build context and the Dockerfile from stdin");
        }
        Some(StdinContext::read(std::io::stdin().lock(), root)?)
    } else {
        let meta = std::fs::metadata(&args.context)
            .with_context(|| format!("build context {}", args.context.display()))?;
        if !meta.is_dir() {
            bail!(
                "build context {} is not a directory",
                args.context.display()
            );
        }
        None
    };
    let context = stdin_context
        .as_ref()
        .map_or_else(|| args.context.clone(), StdinContext::dir);
    let mut req = BuildRequest::new(&context, root);
    let mut stdin_text = None;
    let from_stdin = match &stdin_context {
        Some(c) => c.dockerfile.clone(),
        None if stdin_file => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the Dockerfile from stdin")?;
            Some(text)
        }
        None => None,
    };
    let name = match (from_stdin, &args.file) {
        (Some(text), _) => {
            req.dockerfile = DockerfileSource::Text {
                name: STDIN_DOCKERFILE_NAME.into(),
                text: text.clone(),
            };
            stdin_text = Some(text);
            STDIN_DOCKERFILE_NAME.to_string()
        }
        (None, Some(f)) => {
            // With a context tarball on stdin, -f names a file inside it.
            let path = match &stdin_context {
                Some(_) if f.is_relative() => context.join(f),
                _ => f.clone(),
            };
            req.dockerfile = DockerfileSource::Path(path);
            f.display().to_string()
        }
        (None, None) => {
            let p = context.join("Dockerfile");
            let name = match &stdin_context {
                Some(_) => "Dockerfile".to_string(),
                None => p.display().to_string(),
            };
            req.dockerfile = DockerfileSource::Path(p);
            name
        }
    };
    req.build_args = parse_build_args(&args.build_args, env)?;
    req.labels = args
        .labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.clone(), String::new()),
        })
        .collect();
    req.target = args.target.clone();
    req.no_cache = args.no_cache;
    if let Some(p) = &args.platform {
        req.platform = Platform::parse(p)
            .ok_or_else(|| anyhow!("invalid --platform {p:?}: expected os/arch[/variant]"))?;
    }
    req.secrets = args
        .secrets
        .iter()
        .map(|s| parse_secret(s))
        .collect::<Result<_>>()?;
    req.network = match args.network {
        NetworkMode::Default => rbuild_solver::NetworkMode::Default,
        NetworkMode::None => rbuild_solver::NetworkMode::None,
        NetworkMode::Host => rbuild_solver::NetworkMode::Host,
    };
    if let Some(j) = args.jobs {
        req.jobs = j as usize;
    }
    req.compression = match args.compression {
        CompressionKind::Gzip => CompressionChoice::Gzip,
        CompressionKind::Zstd => CompressionChoice::Zstd,
    };
    req.compression_level = args.compression_level;
    req.snapshotter = match args.snapshotter {
        None => rbuild_solver::SnapshotterChoice::Auto,
        Some(SnapshotterChoice::Overlay) => rbuild_solver::SnapshotterChoice::Overlay,
        Some(SnapshotterChoice::Native) => rbuild_solver::SnapshotterChoice::Native,
    };
    req.source_date_epoch = source_date_epoch(&req.build_args, env)?;
    req.explain = args.explain.is_some();
    req.pull = args.pull;
    req.insecure_registries = args.insecure_registries.clone();
    req.cache_to = args
        .cache_to
        .iter()
        .map(|c| crate::registry::parse_cache_to(c))
        .collect::<Result<_>>()?;
    req.cache_from = args
        .cache_from
        .iter()
        .map(|c| crate::registry::parse_cache_from(c))
        .collect::<Result<_>>()?;
    Ok(Prepared {
        req,
        name,
        stdin_text,
        _stdin_context: stdin_context,
    })
}

/// The solver request and what the CLI keeps beside it.
struct Prepared {
    req: BuildRequest,
    /// The Dockerfile's display name.
    name: String,
    /// The Dockerfile text when it came from stdin.
    stdin_text: Option<String>,
    /// A context read from stdin; its directory lives as long as this.
    _stdin_context: Option<StdinContext>,
}

/// A build context given as `-` (as `docker build -`): stdin is a tarball
/// (plain or compressed) holding the context, or else a Dockerfile, and the
/// context is empty. Unpacked under the store's `tmp/` (same filesystem,
/// cleaned by `check --repair` should rbuild be killed) and removed on drop.
struct StdinContext {
    tmp: tempfile::TempDir,
    /// The Dockerfile text when stdin was not an archive.
    dockerfile: Option<String>,
}

impl StdinContext {
    fn read(mut input: impl Read, root: &Path) -> Result<StdinContext> {
        let tmp_root = root.join("tmp");
        std::fs::create_dir_all(&tmp_root)
            .with_context(|| format!("creating {}", tmp_root.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix(rbuild_cache::TEMP_PREFIX)
            .tempdir_in(&tmp_root)
            .with_context(|| format!("creating a temp dir in {}", tmp_root.display()))?;
        // Spooled to a file first: whether it is an archive is known only
        // after the first header, and a Dockerfile must then be read again.
        let spool = tmp.path().join("stdin");
        let mut file = std::fs::File::create(&spool)
            .with_context(|| format!("creating {}", spool.display()))?;
        std::io::copy(&mut input, &mut file).context("reading the build context from stdin")?;
        let ctx = tmp.path().join("context");
        std::fs::create_dir(&ctx).with_context(|| format!("creating {}", ctx.display()))?;
        let archive = std::fs::File::open(&spool)?;
        let is_archive = rbuild_image::extract_archive(archive, &ctx, "/")
            .context("unpacking the build context from stdin")?;
        let dockerfile =
            if is_archive {
                None
            } else {
                let bytes = std::fs::read(&spool)?;
                Some(String::from_utf8(bytes).map_err(|_| {
                    anyhow!("stdin is neither a tar archive nor a UTF-8 Dockerfile")
                })?)
            };
        std::fs::remove_file(&spool)?;
        Ok(StdinContext { tmp, dockerfile })
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join("context")
    }
}

/// `--build-arg K=V` values; `K` alone takes `K`'s value from the
/// environment and is dropped when the environment has none, as the docker
/// CLI does.
pub(crate) fn parse_build_args(
    list: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in list {
        let (k, v) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (item.as_str(), env(item)),
        };
        if k.is_empty() {
            bail!("invalid --build-arg {item:?}: the name is empty");
        }
        if let Some(v) = v {
            out.insert(k.to_string(), v);
        }
    }
    Ok(out)
}

/// `SOURCE_DATE_EPOCH` from `--build-arg` (BuildKit's way) or else the
/// environment (buildx passes it through).
fn source_date_epoch(
    build_args: &BTreeMap<String, String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<i64>> {
    let Some(v) = build_args
        .get("SOURCE_DATE_EPOCH")
        .cloned()
        .or_else(|| env("SOURCE_DATE_EPOCH"))
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    let secs: i64 = v
        .parse()
        .map_err(|_| anyhow!("invalid SOURCE_DATE_EPOCH {v:?}: expected seconds since 1970"))?;
    if secs < 0 {
        bail!("invalid SOURCE_DATE_EPOCH {v:?}: negative");
    }
    Ok(Some(secs))
}

/// `--secret id=ID,src=PATH` (also `source=`, and `type=file`).
fn parse_secret(spec: &str) -> Result<SecretSource> {
    let mut id = None;
    let mut path = None;
    for field in spec.split(',') {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid --secret {spec:?}: {field:?} is not key=value"))?;
        match k {
            "id" => id = Some(v.to_string()),
            "src" | "source" => path = Some(PathBuf::from(v)),
            "type" if v == "file" => {}
            "type" => bail!("invalid --secret {spec:?}: only type=file is supported"),
            other => bail!("invalid --secret {spec:?}: unknown key {other:?}"),
        }
    }
    let id = id.ok_or_else(|| anyhow!("invalid --secret {spec:?}: id= is required"))?;
    let path = path.ok_or_else(|| anyhow!("invalid --secret {spec:?}: src= is required"))?;
    Ok(SecretSource { id, path })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn env(k: &str) -> Option<String> {
        match k {
            "FROM_ENV" => Some("env-value".into()),
            "SOURCE_DATE_EPOCH" => Some("100".into()),
            _ => None,
        }
    }

    #[test]
    fn build_args_from_flags_and_environment() {
        let list = ["A=1", "B=", "FROM_ENV", "UNSET", "C=x=y"].map(String::from);
        let m = parse_build_args(&list, &env).unwrap();
        assert_eq!(
            m,
            BTreeMap::from([
                ("A".into(), "1".into()),
                ("B".into(), "".into()),
                ("C".into(), "x=y".into()),
                ("FROM_ENV".into(), "env-value".into()),
            ])
        );
        assert!(parse_build_args(&["=v".into()], &env).is_err());
    }

    #[test]
    fn source_date_epoch_build_arg_wins_over_environment() {
        let none = |_: &str| None;
        assert_eq!(source_date_epoch(&BTreeMap::new(), &none).unwrap(), None);
        assert_eq!(
            source_date_epoch(&BTreeMap::new(), &env).unwrap(),
            Some(100)
        );
        let args = BTreeMap::from([("SOURCE_DATE_EPOCH".to_string(), "7".to_string())]);
        assert_eq!(source_date_epoch(&args, &env).unwrap(), Some(7));
        let bad = BTreeMap::from([("SOURCE_DATE_EPOCH".to_string(), "soon".to_string())]);
        assert!(source_date_epoch(&bad, &none).is_err());
    }

    #[test]
    fn secrets() {
        let s = parse_secret("id=tok,src=/run/tok").unwrap();
        assert_eq!((s.id.as_str(), s.path), ("tok", PathBuf::from("/run/tok")));
        assert!(parse_secret("src=/x").is_err());
        assert!(parse_secret("id=x,env=Y").is_err());
    }

    #[test]
    fn request_carries_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().to_str().unwrap();
        let cli = Cli::try_parse_from([
            "rbuild",
            "build",
            "--build-arg",
            "FROM_ENV",
            "--label",
            "a=b",
            "--label",
            "flag",
            "--target",
            "t",
            "--no-cache",
            "--platform",
            "linux/arm64",
            "--network",
            "none",
            "--jobs",
            "2",
            "--compression",
            "zstd",
            "--snapshotter",
            "native",
            "--explain",
            ctx,
        ])
        .unwrap();
        let Command::Build(b) = cli.command else {
            unreachable!()
        };
        let Prepared {
            req,
            name,
            stdin_text: text,
            ..
        } = request_from_args(&b, Path::new("/store"), &env).unwrap();
        assert_eq!(
            req.dockerfile,
            DockerfileSource::Path(dir.path().join("Dockerfile"))
        );
        assert_eq!(name, format!("{ctx}/Dockerfile"));
        assert_eq!(text, None);
        assert_eq!(req.root, PathBuf::from("/store"));
        assert_eq!(req.build_args["FROM_ENV"], "env-value");
        assert_eq!(req.labels["flag"], "");
        assert_eq!(req.target.as_deref(), Some("t"));
        assert!(req.no_cache && req.explain);
        assert_eq!(req.platform.architecture, "arm64");
        assert_eq!(req.network, rbuild_solver::NetworkMode::None);
        assert_eq!(req.jobs, 2);
        assert_eq!(req.compression, CompressionChoice::Zstd);
        assert_eq!(req.snapshotter, rbuild_solver::SnapshotterChoice::Native);
        assert_eq!(req.source_date_epoch, Some(100));
    }

    #[test]
    fn context_must_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        for ctx in [file, dir.path().join("missing")] {
            let cli = Cli::try_parse_from(["rbuild", "build", ctx.to_str().unwrap()]).unwrap();
            let Command::Build(b) = cli.command else {
                unreachable!()
            };
            assert!(request_from_args(&b, Path::new("/s"), &env).is_err());
        }
    }
}
