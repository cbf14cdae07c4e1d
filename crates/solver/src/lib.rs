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
//! Base images come from the store, or are pulled from their registries
//! (always with `BuildRequest::pull`), for the stage's platform. The step
//! cache can be shared between machines: `BuildRequest::cache_to` exports
//! it to a registry or an OCI layout, `BuildRequest::cache_from` imports
//! it, fetching layers only when a step or the final image needs them.
//!
//! ```no_run
//! use rbuild_solver::{build, BuildRequest, NoProgress};
//! let req = BuildRequest::new("examples/hello", "/tmp/rbuild-store");
//! let result = build(&req, &NoProgress).unwrap();
//! println!("{}", result.manifest_digest);
//! ```

mod changes;
mod config;
mod error;
mod exec;
mod explain;
mod graph;
mod key;
mod plan;
mod progress;
mod pull;
mod remote_cache;
mod request;
mod result;
mod sched;
mod scope;

pub use changes::{apply_changes, ChangeError};
pub use error::{BuildError, ExitReason, Inner, StepLocation};
pub use explain::{BuildRecord, Difference, FileChange, RecordedStep, StepExplain, VarChange};
pub use graph::{BuildGraph, Edge, StepNode};
pub use key::{FileInput, KeyInputs, ParentInput, SourceInput};
pub use progress::{NoProgress, ProgressEvent, ProgressSink, StepInfo};
pub use remote_cache::{
    CacheError, CacheExport, CacheLocation, CacheMode, CACHE_CONFIG_MEDIA_TYPE,
};
pub use request::{
    BuildRequest, CompressionChoice, DockerfileSource, NetworkMode, Platform, PullPolicy,
    SecretSource, SnapshotterChoice,
};
pub use result::{BuildResult, StepReport, StepStatus};

/// Builds the Dockerfile of `request` and writes the image into the store.
///
/// The whole Dockerfile is checked before any step runs. Nothing is tagged
/// (the caller tags `BuildResult::manifest_digest`); the image is listed in
/// the store as untagged. On failure no image is written (the cached
/// results of steps that succeeded are kept, as BuildKit keeps them).
pub fn build(
    request: &BuildRequest,
    progress: &dyn ProgressSink,
) -> Result<BuildResult, BuildError> {
    let prepared = prepare(request, progress)?;
    let (lease, keys) = take_lease(request, &prepared.graph)?;
    let result = run(request, prepared, progress);
    // Records hit or written now count as recently used for `prune`.
    if let Ok(cache) = rbuild_cache::CacheIndex::open(&request.root) {
        for key in &keys {
            let _ = cache.touch(&rbuild_cache::CacheKey::from(*key));
        }
    }
    drop(lease);
    result
}

/// Registers the running build in the store's leases: the images its steps
/// start from or copy from, and its cache keys, so `rmi` refuses to drop
/// them and prune keeps them while it runs.
fn take_lease(
    request: &BuildRequest,
    graph: &BuildGraph,
) -> Result<(rbuild_cache::Lease, Vec<rbuild_cache::Digest>), BuildError> {
    let mut manifests = std::collections::BTreeSet::new();
    let mut keys = Vec::new();
    for node in graph.graph.node_weights() {
        keys.push(node.key);
        if let ParentInput::Image { digest, .. } = &node.inputs.parent {
            manifests.insert(*digest);
        }
        for source in &node.inputs.sources {
            if let SourceInput::Image { digest, .. } = source {
                manifests.insert(*digest);
            }
        }
    }
    let lease = rbuild_cache::Lease::acquire(
        &request.root,
        "build",
        manifests.into_iter().collect(),
        Vec::new(),
        keys.clone(),
    )
    .map_err(store_err)?;
    Ok((lease, keys))
}

/// Plans the build and computes every step's cache key without running
/// anything (for `rbuild graph`): the step DAG with keys, and whether each
/// key is in the cache.
pub fn graph(request: &BuildRequest) -> Result<(BuildGraph, Vec<bool>), BuildError> {
    let p = prepare(request, &NoProgress)?;
    let cached = p
        .graph
        .graph
        .node_weights()
        .map(|n| {
            p.cache
                .get::<exec::StepRecord>(&rbuild_cache::CacheKey::from(n.key))
                .ok()
                .flatten()
                .is_some()
        })
        .collect();
    Ok((p.graph, cached))
}

struct Prepared {
    store: rbuild_image::Store,
    cache: rbuild_cache::CacheIndex,
    plan: plan::Plan,
    graph: BuildGraph,
    sources: exec::ContextSources,
    identity: String,
    imported: remote_cache::ImportedCache,
}

/// Registry settings for base image pulls and registry caches.
fn registry_options(request: &BuildRequest) -> rbuild_image::registry::ClientOptions {
    rbuild_image::registry::ClientOptions {
        insecure_registries: request.insecure_registries.clone(),
        ..Default::default()
    }
}

fn store_err(e: impl Into<Inner>) -> BuildError {
    BuildError::Store(e.into())
}

fn read_dockerfile(request: &BuildRequest) -> Result<(String, String, Option<String>), BuildError> {
    match &request.dockerfile {
        DockerfileSource::Path(p) => {
            let text = std::fs::read(p).map_err(|source| BuildError::ReadDockerfile {
                path: p.clone(),
                source,
            })?;
            let text = String::from_utf8(text).map_err(|_| BuildError::Parse {
                name: p.display().to_string(),
                source: "the Dockerfile is not valid UTF-8".into(),
            })?;
            // `<Dockerfile>.dockerignore` beside the Dockerfile wins over the
            // context's `.dockerignore`.
            let mut own = p.clone().into_os_string();
            own.push(".dockerignore");
            let ignore = std::fs::read_to_string(own)
                .or_else(|_| std::fs::read_to_string(request.context.join(".dockerignore")))
                .ok();
            let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
            Ok((abs.display().to_string(), text, ignore))
        }
        DockerfileSource::Text { name, text } => {
            let ignore = std::fs::read_to_string(request.context.join(".dockerignore")).ok();
            Ok((name.clone(), text.clone(), ignore))
        }
    }
}

fn prepare(request: &BuildRequest, progress: &dyn ProgressSink) -> Result<Prepared, BuildError> {
    let (name, text, ignore) = read_dockerfile(request)?;
    let df = rbuild_parser::parse(&text).map_err(|e| BuildError::Parse {
        name: name.clone(),
        source: Box::new(e),
    })?;
    df.validate(&request.build_args)
        .map_err(|e| BuildError::Parse {
            name: name.clone(),
            source: Box::new(e),
        })?;
    let store = rbuild_image::Store::open(&request.root).map_err(store_err)?;
    let cache = rbuild_cache::CacheIndex::open(&request.root).map_err(store_err)?;
    let bases = pull::BaseImages {
        store: &store,
        policy: request.pull,
        options: registry_options(request),
        progress,
    };
    let resolve =
        |image: &str, platform: &Platform, line: usize| bases.resolve(image, platform, line);
    let mut p = plan::plan(
        &df,
        &plan::PlanInput {
            build_args: &request.build_args,
            target: request.target.as_deref(),
            platform: &request.platform,
            network: request.network,
            resolve: &resolve,
        },
    )?;
    let context_err = |e: Inner| BuildError::Context {
        path: request.context.clone(),
        source: e,
    };
    let context = rbuild_executor::context::BuildContext::open(&request.context, ignore.as_deref())
        .map_err(|e| context_err(e.into()))?;
    let abs_context =
        std::fs::canonicalize(&request.context).unwrap_or_else(|_| request.context.clone());
    let stat_cache =
        rbuild_cache::StatCache::load(&request.root, &abs_context.display().to_string())
            .map_err(store_err)?;
    let sources = exec::ContextSources {
        context,
        stat_cache,
        downloads: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        tmp: request.root.join("tmp"),
    };
    let graph = graph::build_graph(&p, &request.platform.to_string(), &sources)?;
    // Hashing may have learnt new file digests: keep them for next time.
    sources.stat_cache.save().map_err(store_err)?;
    let identity = format!("{name}\0{}", abs_context.display());
    let imported = remote_cache::ImportedCache::load(
        &request.cache_from,
        &registry_options(request),
        store.blobs(),
        &mut p.warnings,
    );
    Ok(Prepared {
        store,
        cache,
        plan: p,
        graph,
        sources,
        identity,
        imported,
    })
}

fn layer_options(request: &BuildRequest) -> rbuild_image::LayerOptions {
    let compression = match request.compression {
        CompressionChoice::Gzip => rbuild_image::Compression::Gzip {
            level: request
                .compression_level
                .and_then(|l| u32::try_from(l).ok())
                .unwrap_or(6)
                .min(9),
        },
        CompressionChoice::Zstd => rbuild_image::Compression::Zstd {
            level: request.compression_level.unwrap_or(3),
        },
        CompressionChoice::None => rbuild_image::Compression::None,
    };
    rbuild_image::LayerOptions {
        compression,
        source_date_epoch: request.source_date_epoch,
    }
}

fn run(
    request: &BuildRequest,
    p: Prepared,
    progress: &dyn ProgressSink,
) -> Result<BuildResult, BuildError> {
    let steps: usize = p.plan.stages.iter().map(|s| s.steps.len()).sum();
    progress.event(ProgressEvent::Planned { steps });
    for w in &p.plan.warnings {
        progress.event(ProgressEvent::Warning(w));
    }
    let kind = match request.snapshotter {
        SnapshotterChoice::Auto => {
            rbuild_executor::snapshot::SnapshotterKind::detect(&request.root)
        }
        SnapshotterChoice::Overlay => rbuild_executor::snapshot::SnapshotterKind::Overlay,
        SnapshotterChoice::Native => rbuild_executor::snapshot::SnapshotterKind::Native,
    };
    let snapshotter =
        rbuild_executor::snapshot::Snapshotter::new(&request.root, p.store.blobs().clone(), kind)
            .map_err(store_err)?;
    let target_name = p.plan.stages[p.plan.target].name.clone();
    let record_path = BuildRecord::path(&request.root, &p.identity, &target_name);
    // Only `--explain` compares with the previous build; the record of a
    // big context is megabytes of JSON, too much to parse for nothing.
    let previous = if request.explain {
        BuildRecord::load(&record_path)
    } else {
        BuildRecord::default()
    };
    let created = request.source_date_epoch.map(|e| {
        rbuild_image::config::rfc3339(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(e).unwrap_or(0)),
        )
    });
    let runner = exec::Runner {
        plan: &p.plan,
        graph: &p.graph,
        sources: &p.sources,
        cache: &p.cache,
        imported: &p.imported,
        blobs: p.store.blobs(),
        snapshotter: &snapshotter,
        layer_options: layer_options(request),
        no_cache: request.no_cache,
        created: created.clone(),
        secrets: request
            .secrets
            .iter()
            .map(|s| (s.id.clone(), s.path.clone()))
            .collect(),
        root: &request.root,
        progress,
        previous: request.explain.then_some(&previous),
    };
    let deps: Vec<Vec<usize>> = p.plan.stages.iter().map(|s| s.deps.clone()).collect();
    let want: Vec<bool> = p.plan.stages.iter().map(|s| s.needed).collect();
    let results = sched::run_dag(&deps, &want, request.jobs, |i, inputs| {
        runner.run_stage(i, inputs)
    });
    // Downloaded ADD URLs were copied into layers (or the build failed):
    // they are not kept.
    for (path, _) in p
        .sources
        .downloads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
    {
        let _ = std::fs::remove_file(path);
    }
    let results = results?;
    let target = results[p.plan.target]
        .clone()
        .expect("the target stage is needed and was built");

    // The image config: the target stage's final config, layers, history.
    progress.event(ProgressEvent::Exporting);
    let last = p.plan.stages[p.plan.target]
        .steps
        .last()
        .expect("a stage has its FROM step");
    let platform = p.plan.stages[p.plan.target]
        .platform
        .as_ref()
        .unwrap_or(&request.platform);
    let mut config = rbuild_image::ImageConfig {
        created: created
            .clone()
            .or_else(|| target.history.last().and_then(|h| h.created.clone())),
        author: last.after.author.clone(),
        architecture: platform.architecture.clone(),
        variant: (!platform.variant.is_empty()).then(|| platform.variant.clone()),
        os: platform.os.clone(),
        config: last.after.config.clone(),
        history: target.history.clone(),
        ..Default::default()
    };
    config.rootfs.diff_ids = target.layers.iter().map(|l| l.diff_id).collect();
    for (k, v) in &request.labels {
        config.config.labels.insert(k.clone(), v.clone());
    }
    // Layers that came from an imported cache are fetched now, if no step
    // needed them earlier.
    p.imported
        .ensure_layers(p.store.blobs(), &target.layers)
        .map_err(store_err)?;
    let image = p
        .store
        .put_image(&config, &target.layers)
        .map_err(store_err)?;
    p.store
        .register(&image.manifest_digest)
        .map_err(store_err)?;
    progress.event(ProgressEvent::Exported {
        manifest: &image.manifest_digest,
        config: &image.config_digest,
    });
    for export in &request.cache_to {
        let records = remote_cache::records_for(export.mode, &p.plan, &p.graph, &p.cache);
        remote_cache::export(
            export,
            &records,
            p.store.blobs(),
            &p.imported,
            &registry_options(request),
        )
        .map_err(|e| BuildError::CacheExport {
            destination: export.location.to_string(),
            source: e.into(),
        })?;
    }

    // Remember this build's key inputs for the next `--explain`.
    let mut reports = Vec::new();
    let mut steps = Vec::new();
    for (i, r) in results.iter().enumerate() {
        let Some(r) = r else { continue };
        for (n, rep) in r.reports.iter().enumerate() {
            let node = &p.graph.graph[p.graph.stages[i][n]];
            steps.push((rep.info.stage_name.as_str(), rep.info.index, &node.inputs));
        }
        reports.extend(r.reports.iter().cloned());
    }
    BuildRecord::store(&record_path, &steps).map_err(store_err)?;
    Ok(BuildResult {
        manifest_digest: image.manifest_digest,
        config_digest: image.config_digest,
        target: target_name,
        steps: reports,
        warnings: p.plan.warnings.clone(),
    })
}
