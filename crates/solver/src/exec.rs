//! Running a planned, keyed build: each needed stage on the scheduler, its
//! steps in order, each looked up in the cache index by key and run on a
//! snapshot when it misses (COPY/ADD through the executor's copy, RUN in
//! the sandbox, WORKDIR as a mkdir), then committed to a layer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rbuild_cache::{CacheIndex, CacheKey, Digest, StatCache};
use rbuild_executor::context::{BuildContext, Selection};
use rbuild_executor::copy::{self, Chmod, CopyOptions, CopySource};
use rbuild_executor::sandbox::{self, CacheSharing, Network, RunMount as SandboxMount, RunSpec};
use rbuild_executor::snapshot::Snapshotter;
use rbuild_executor::user::{lookup_user, ResolvedUser};
use rbuild_image::{History, LayerDescriptor, LayerOptions};
use rbuild_parser::MountType;
use serde::{Deserialize, Serialize};

use crate::error::{BuildError, ExitReason, Inner};
use crate::explain::BuildRecord;
use crate::graph::{is_url, location, BuildGraph, SourceDigests};
use crate::key::FileInput;
use crate::plan::{Base, CopyOp, FromRef, Op, Plan, RunOp, Step};
use crate::progress::{ProgressEvent, ProgressSink};
use crate::remote_cache::ImportedCache;
use crate::request::NetworkMode;
use crate::result::{StepReport, StepStatus};

/// What the cache index keeps for a step key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    /// The layer the step produced (None: config only, or nothing changed).
    pub layer: Option<LayerDescriptor>,
    /// When the step first ran (its history `created`), so a cached rebuild
    /// yields the same image.
    pub created: String,
}

/// The result of one stage: its layers, history and config.
#[derive(Debug, Clone)]
pub struct StageResult {
    /// Layers, lowest first.
    pub layers: Vec<LayerDescriptor>,
    /// History entries matching the layers.
    pub history: Vec<History>,
    /// Per-step reports.
    pub reports: Vec<StepReport>,
}

/// The build context and the stat cache, shared by key computation and
/// execution.
pub struct ContextSources {
    /// The opened context.
    pub context: BuildContext,
    /// File digests by stat.
    pub stat_cache: StatCache,
    /// Downloaded ADD URLs: url -> (file, digest).
    pub downloads: Mutex<BTreeMap<String, (PathBuf, Digest)>>,
    /// Where downloads go.
    pub tmp: PathBuf,
}

impl ContextSources {
    fn select(&self, patterns: &[String], excludes: &[String]) -> Result<Selection<'_>, Inner> {
        Ok(self.context.select(patterns, excludes, true)?)
    }
}

impl SourceDigests for ContextSources {
    fn context(
        &self,
        patterns: &[String],
        excludes: &[String],
    ) -> Result<(Digest, Vec<FileInput>), Inner> {
        let sel = self.select(patterns, excludes)?;
        let d = sel.digest(&self.stat_cache)?;
        let files = d
            .files
            .into_iter()
            .map(|(path, digest)| FileInput { path, digest })
            .collect();
        Ok((d.digest, files))
    }

    fn url(&self, url: &str, checksum: Option<&str>) -> Result<Digest, Inner> {
        if let Some((_, d)) = self
            .downloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(url)
        {
            return Ok(*d);
        }
        let expected = checksum.map(|c| c.parse::<Digest>()).transpose()?;
        std::fs::create_dir_all(&self.tmp)?;
        let dest = self
            .tmp
            .join(format!("add-{}", Digest::of_bytes(url.as_bytes()).hex()));
        let dl = rbuild_executor::fetch::download(url, expected, &dest)?;
        self.downloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(url.to_string(), (dest, dl.digest));
        Ok(dl.digest)
    }
}

/// Everything steps need while running.
pub struct Runner<'a> {
    /// The plan.
    pub plan: &'a Plan,
    /// Its keys.
    pub graph: &'a BuildGraph,
    /// Context and downloads.
    pub sources: &'a ContextSources,
    /// The cache index.
    pub cache: &'a CacheIndex,
    /// Records from `--cache-from`, consulted when the index misses.
    pub imported: &'a ImportedCache,
    /// Blob presence checks.
    pub blobs: &'a rbuild_cache::BlobStore,
    /// Snapshots.
    pub snapshotter: &'a Snapshotter,
    /// Layer writing options.
    pub layer_options: LayerOptions,
    /// Ignore cache lookups.
    pub no_cache: bool,
    /// Fixed `created` time (SOURCE_DATE_EPOCH), else the time of each run.
    pub created: Option<String>,
    /// Secrets by id.
    pub secrets: BTreeMap<String, PathBuf>,
    /// The store root.
    pub root: &'a Path,
    /// Progress.
    pub progress: &'a dyn ProgressSink,
    /// The previous build record (explain).
    pub previous: Option<&'a BuildRecord>,
}

fn now() -> String {
    rbuild_image::config::rfc3339(std::time::SystemTime::now())
}

impl Runner<'_> {
    /// Builds stage `index`, given the results of the stages it depends on
    /// (in the order of its `deps`).
    pub fn run_stage(
        &self,
        index: usize,
        deps: &[Arc<StageResult>],
    ) -> Result<StageResult, BuildError> {
        let sp = &self.plan.stages[index];
        let dep_result = |s: usize| -> &StageResult {
            let pos = sp
                .deps
                .iter()
                .position(|d| *d == s)
                .expect("dependency listed");
            &deps[pos]
        };
        let (mut layers, mut history) = match &sp.base {
            Base::Scratch => (Vec::new(), Vec::new()),
            Base::Image(img) => (img.layers.clone(), img.config.history.clone()),
            Base::Stage(s) => {
                let r = dep_result(*s);
                (r.layers.clone(), r.history.clone())
            }
        };
        let mut reports = Vec::with_capacity(sp.steps.len());
        for (n, step) in sp.steps.iter().enumerate() {
            let node = &self.graph.graph[self.graph.stages[index][n]];
            let key = node.key;
            let start = Instant::now();
            let explain = self
                .previous
                .map(|p| p.explain(&step.info.stage_name, step.info.index, &node.inputs));
            if matches!(step.op, Op::From) {
                self.progress.event(ProgressEvent::Cached(&step.info));
                reports.push(StepReport {
                    info: step.info.clone(),
                    status: StepStatus::Cached,
                    duration: start.elapsed(),
                    key,
                    layer: None,
                    explain,
                });
                continue;
            }
            let cached = if self.no_cache {
                None
            } else {
                self.lookup(&key)
            };
            let (record, status) = match cached {
                Some(r) => {
                    self.progress.event(ProgressEvent::Cached(&step.info));
                    (r, StepStatus::Cached)
                }
                None => {
                    self.progress.event(ProgressEvent::Started(&step.info));
                    let layer = match self.execute(step, &layers, &|s| dep_result(s).layers.clone())
                    {
                        Ok(l) => l,
                        Err(e) => {
                            self.progress
                                .event(ProgressEvent::Failed(&step.info, &e.to_string()));
                            return Err(e);
                        }
                    };
                    let record = StepRecord {
                        layer,
                        created: self.created.clone().unwrap_or_else(now),
                    };
                    self.cache
                        .put(&CacheKey::from(key), &record)
                        .map_err(|e| BuildError::Store(e.into()))?;
                    self.progress
                        .event(ProgressEvent::Finished(&step.info, start.elapsed()));
                    (record, StepStatus::Executed)
                }
            };
            history.push(History {
                created: Some(self.created.clone().unwrap_or(record.created.clone())),
                created_by: Some(step.created_by.clone()),
                author: None,
                comment: Some("buildkit.dockerfile.v0".into()),
                empty_layer: record.layer.is_none(),
            });
            if let Some(l) = &record.layer {
                layers.push(l.clone());
            }
            reports.push(StepReport {
                info: step.info.clone(),
                status,
                duration: start.elapsed(),
                key,
                layer: record.layer.as_ref().map(|l| l.diff_id),
                explain,
            });
        }
        Ok(StageResult {
            layers,
            history,
            reports,
        })
    }

    fn lookup(&self, key: &Digest) -> Option<StepRecord> {
        let local: Option<StepRecord> = self.cache.get(&CacheKey::from(*key)).ok().flatten();
        // A layer whose blob was removed is a miss: the step runs again.
        if let Some(rec) = local.filter(|r| match &r.layer {
            Some(l) => self.blobs.contains(&l.digest),
            None => true,
        }) {
            return Some(rec);
        }
        // An imported record is a hit even though its layer is not here
        // yet: the blob is fetched only if something needs it.
        let rec = self.imported.lookup(key)?;
        // Kept locally so the next build hits without the import; failing
        // to write it only costs that.
        let _ = self.cache.put(&CacheKey::from(*key), &rec);
        Some(rec)
    }

    /// Fetches the blobs of `layers` that came from an imported cache and
    /// are not in the store yet.
    fn ensure_layers(&self, step: &Step, layers: &[LayerDescriptor]) -> Result<(), BuildError> {
        self.imported
            .ensure_layers(self.blobs, layers)
            .map_err(|e| Self::step_err(step, e))
    }

    fn step_err(step: &Step, source: impl Into<Inner>) -> BuildError {
        BuildError::Step {
            step: location(&step.info),
            source: source.into(),
        }
    }

    /// Runs one step that missed; returns its layer.
    fn execute(
        &self,
        step: &Step,
        layers: &[LayerDescriptor],
        dep_layers: &dyn Fn(usize) -> Vec<LayerDescriptor>,
    ) -> Result<Option<LayerDescriptor>, BuildError> {
        if !step.op.touches_rootfs() {
            return Ok(None);
        }
        self.ensure_layers(step, layers)?;
        let snap = self
            .snapshotter
            .prepare(layers)
            .map_err(|e| Self::step_err(step, e))?;
        let rootfs = snap.rootfs().to_path_buf();
        match &step.op {
            Op::Workdir(path) => {
                let user = step.before.config.user.clone();
                make_workdir(&rootfs, path, &user).map_err(|e| Self::step_err(step, e))?;
            }
            Op::Copy(c) => self.copy(step, c, &rootfs, dep_layers)?,
            Op::Run(r) => self.run(step, r, &rootfs, dep_layers)?,
            Op::From | Op::Meta => {}
        }
        snap.commit(&self.layer_options)
            .map_err(|e| Self::step_err(step, e))
    }

    fn view_of(
        &self,
        step: &Step,
        from: &FromRef,
        dep_layers: &dyn Fn(usize) -> Vec<LayerDescriptor>,
    ) -> Result<rbuild_executor::snapshot::ReadOnlyView, BuildError> {
        let layers = match from {
            FromRef::Stage(s) => dep_layers(*s),
            FromRef::Image(img) => img.layers.clone(),
        };
        self.ensure_layers(step, &layers)?;
        self.snapshotter
            .view(&layers)
            .map_err(|e| Self::step_err(step, e))
    }

    fn copy(
        &self,
        step: &Step,
        c: &CopyOp,
        rootfs: &Path,
        dep_layers: &dyn Fn(usize) -> Vec<LayerDescriptor>,
    ) -> Result<(), BuildError> {
        let chmod = c
            .chmod
            .as_deref()
            .map(Chmod::parse)
            .transpose()
            .map_err(|e| Self::step_err(step, e))?;
        let opts = CopyOptions {
            chown: c.chown.clone(),
            chmod,
            exclude: c.exclude.clone(),
            parents: c.parents,
            link: c.link,
            extract_archives: c.add && c.unpack != Some(false),
        };
        let workdir = step.before.workdir().to_string();
        let copy_err = |e: copy::CopyError| BuildError::CopySource {
            step: location(&step.info),
            source: e.into(),
        };
        if let Some(from) = &c.from {
            let view = self.view_of(step, from, dep_layers)?;
            copy::apply(
                rootfs,
                CopySource::Dir {
                    root: view.path(),
                    paths: &c.sources,
                },
                &c.dest,
                &workdir,
                &opts,
            )
            .map_err(copy_err)?;
        } else {
            let (urls, local): (Vec<String>, Vec<String>) =
                c.sources.iter().cloned().partition(|s| c.add && is_url(s));
            if !local.is_empty() {
                let sel = self.sources.select(&local, &c.exclude).map_err(|source| {
                    BuildError::CopySource {
                        step: location(&step.info),
                        source,
                    }
                })?;
                copy::apply(rootfs, CopySource::Context(&sel), &c.dest, &workdir, &opts)
                    .map_err(copy_err)?;
            }
            for u in urls {
                self.sources
                    .url(&u, c.checksum.as_deref())
                    .map_err(|source| BuildError::CopySource {
                        step: location(&step.info),
                        source,
                    })?;
                let path = self
                    .sources
                    .downloads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&u)
                    .map(|(p, _)| p.clone())
                    .expect("downloaded just now");
                let name = rbuild_executor::fetch::file_name(&u, None);
                let url_opts = CopyOptions {
                    extract_archives: false,
                    ..opts.clone()
                };
                copy::apply(
                    rootfs,
                    CopySource::File {
                        path: &path,
                        name: &name,
                    },
                    &c.dest,
                    &workdir,
                    &url_opts,
                )
                .map_err(copy_err)?;
            }
        }
        for f in &c.inline {
            copy::apply(
                rootfs,
                CopySource::Inline {
                    name: &f.path,
                    data: f.data.as_bytes(),
                },
                &c.dest,
                &workdir,
                &opts,
            )
            .map_err(copy_err)?;
        }
        Ok(())
    }

    fn run(
        &self,
        step: &Step,
        r: &RunOp,
        rootfs: &Path,
        dep_layers: &dyn Fn(usize) -> Vec<LayerDescriptor>,
    ) -> Result<(), BuildError> {
        let user = if step.before.config.user.is_empty() {
            ResolvedUser::root()
        } else {
            lookup_user(rootfs, &step.before.config.user).map_err(|e| Self::step_err(step, e))?
        };
        let mut spec = RunSpec::new(r.args.clone(), self.root);
        spec.env = r
            .env
            .iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.clone(), String::new()),
            })
            .collect();
        spec.cwd = step.before.workdir().to_string();
        spec.user = user;
        spec.network = match r.network {
            NetworkMode::Default => Network::Default,
            NetworkMode::None => Network::None,
            NetworkMode::Host => Network::Host,
        };
        spec.secrets = self.secrets.clone();
        if let Some((target, body)) = &r.script {
            spec.mounts.push(SandboxMount::File {
                target: target.clone(),
                contents: body.clone().into_bytes(),
                mode: 0o755,
            });
        }
        // Views must outlive the run: they are the bind sources.
        let mut views = Vec::new();
        for m in &r.mounts {
            let mm = &m.mount;
            let target = mm.target.clone().unwrap_or_default();
            match mm.kind {
                MountType::Bind => {
                    let src = mm.source.clone().unwrap_or_else(|| ".".into());
                    let source = match &m.from {
                        Some(from) => {
                            let view = self.view_of(step, from, dep_layers)?;
                            let p = rbuild_image::rootfs::resolve(view.path(), &src)
                                .map_err(|e| Self::step_err(step, e))?;
                            views.push(view);
                            p
                        }
                        None => {
                            let sel = self
                                .sources
                                .select(std::slice::from_ref(&src), &[])
                                .map_err(|e| Self::step_err(step, e))?;
                            match sel.sources().first() {
                                Some(s) => sel.host_path(&s.path),
                                None => sel.root().to_path_buf(),
                            }
                        }
                    };
                    spec.mounts.push(SandboxMount::Bind {
                        source,
                        target,
                        readonly: mm.readonly,
                    });
                }
                MountType::Cache => spec.mounts.push(SandboxMount::Cache {
                    id: mm.id.clone().unwrap_or_else(|| target.clone()),
                    target,
                    sharing: match mm.sharing {
                        Some(rbuild_parser::Sharing::Private) => CacheSharing::Private,
                        Some(rbuild_parser::Sharing::Locked) => CacheSharing::Locked,
                        _ => CacheSharing::Shared,
                    },
                    uid: mm.uid.unwrap_or(0),
                    gid: mm.gid.unwrap_or(0),
                    mode: mm.mode.unwrap_or(0o755),
                    readonly: mm.readonly,
                }),
                MountType::Tmpfs => spec.mounts.push(SandboxMount::Tmpfs {
                    target,
                    size: mm.size.and_then(|s| u64::try_from(s).ok()),
                }),
                MountType::Secret => spec.mounts.push(SandboxMount::Secret {
                    id: mm.id.clone().unwrap_or_default(),
                    target: mm.target.clone(),
                    required: mm.required,
                    uid: mm.uid.unwrap_or(0),
                    gid: mm.gid.unwrap_or(0),
                    mode: mm.mode.unwrap_or(0o400),
                }),
                MountType::Ssh => {
                    return Err(BuildError::Invalid {
                        line: step.info.line,
                        message: "RUN --mount=type=ssh is not supported".into(),
                    })
                }
            }
        }
        let tail = Mutex::new(OutputTail::default());
        let mut output = |data: &[u8]| {
            self.progress.event(ProgressEvent::Output(&step.info, data));
            tail.lock().unwrap_or_else(|e| e.into_inner()).push(data);
        };
        let status =
            sandbox::run(rootfs, &spec, &mut output).map_err(|e| Self::step_err(step, e))?;
        drop(views);
        if status.success() {
            return Ok(());
        }
        let reason = match status {
            sandbox::ExitStatus::Code(c) => ExitReason::Code(c),
            sandbox::ExitStatus::Signal(s) => ExitReason::Signal(s),
        };
        Err(BuildError::RunFailed {
            step: location(&step.info),
            reason,
            output_tail: tail.into_inner().unwrap_or_else(|e| e.into_inner()).lines(),
        })
    }
}

/// The last lines of a step's output, for its failure message.
#[derive(Default)]
struct OutputTail {
    buf: Vec<u8>,
}

impl OutputTail {
    const KEEP: usize = 16 * 1024;

    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() > 2 * Self::KEEP {
            self.buf.drain(..self.buf.len() - Self::KEEP);
        }
    }

    fn lines(&self) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.buf);
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines[lines.len().saturating_sub(10)..].to_vec()
    }
}

/// WORKDIR: creates the directory (and missing parents) inside the rootfs,
/// owned by the stage's USER when it is set, as BuildKit's mkdir does.
fn make_workdir(rootfs: &Path, path: &str, user: &str) -> Result<(), Inner> {
    let target = rbuild_image::rootfs::resolve(rootfs, path)?;
    if target.is_dir() {
        return Ok(());
    }
    let owner = if user.is_empty() {
        None
    } else {
        let u = lookup_user(rootfs, user)?;
        Some((u.uid, u.gid))
    };
    // Create component by component, so each new directory gets the owner.
    let mut cur = String::new();
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        cur.push('/');
        cur.push_str(comp);
        let p = rbuild_image::rootfs::resolve(rootfs, &cur)?;
        if p.is_dir() {
            continue;
        }
        std::fs::create_dir(&p)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}
