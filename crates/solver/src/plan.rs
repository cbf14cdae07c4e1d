//! From a parsed Dockerfile to a [`Plan`]: stages with their base (scratch,
//! an earlier stage, or a stored image), `--target` and pruning, variable
//! scopes, ONBUILD triggers, and every step with its instruction expanded,
//! the stage config before and after it, and its history text.
//!
//! Planning reads no context files and runs nothing; it fails on the first
//! problem anywhere in the stages to build, so a typo on line 40 stops the
//! build before line 1 runs. Cache keys are computed afterwards, in
//! `graph`.

use std::collections::BTreeMap;

use petgraph::graphmap::DiGraphMap;
use petgraph::visit::Dfs;
use rbuild_cache::Digest;
use rbuild_image::{ImageConfig, LayerDescriptor};
use rbuild_parser::{Dockerfile, Expanded, InlineSource, Instruction, Mount, MountType, Spanned};

use crate::config::StageConfig;
use crate::error::BuildError;
use crate::progress::StepInfo;
use crate::request::{NetworkMode, Platform};
use crate::scope::{platform_args, BuildArgs, GlobalScope, StageScope};

/// An image from the store (or, later, a registry) used as a base or as a
/// `--from` source.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// The name as written (after expansion).
    pub name: String,
    /// Its manifest digest.
    pub manifest_digest: Digest,
    /// Its config.
    pub config: ImageConfig,
    /// Its layers, lowest first.
    pub layers: Vec<LayerDescriptor>,
}

/// Finds an image by name for a platform (the store, else its registry);
/// the line is the Dockerfile line that names it, for errors. `Ok(None)`
/// means "no such image".
pub type ResolveImage<'a> =
    &'a (dyn Fn(&str, &Platform, usize) -> Result<Option<BaseImage>, BuildError> + Sync);

/// What a stage starts from.
#[derive(Debug, Clone)]
pub enum Base {
    /// `FROM scratch`.
    Scratch,
    /// An earlier stage.
    Stage(usize),
    /// A stored image.
    Image(Box<BaseImage>),
}

/// The source of `COPY --from` or `RUN --mount=from=`.
#[derive(Debug, Clone)]
pub enum FromRef {
    /// An earlier stage's result.
    Stage(usize),
    /// A stored image.
    Image(Box<BaseImage>),
}

/// A COPY or ADD, expanded.
#[derive(Debug, Clone)]
pub struct CopyOp {
    /// ADD (extracts local archives, downloads URLs) rather than COPY.
    pub add: bool,
    /// Source paths (context, or the `from` rootfs), URLs for ADD.
    pub sources: Vec<String>,
    /// Heredoc files.
    pub inline: Vec<InlineSource>,
    /// Destination.
    pub dest: String,
    /// `--from`.
    pub from: Option<FromRef>,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude`.
    pub exclude: Vec<String>,
    /// ADD `--checksum`.
    pub checksum: Option<String>,
    /// ADD `--unpack` (None: default, extract local archives).
    pub unpack: Option<bool>,
}

/// A RUN mount with its resolved `from`.
#[derive(Debug, Clone)]
pub struct RunMount {
    /// The parsed mount.
    pub mount: Mount,
    /// `from=` resolved (None: the build context for bind mounts).
    pub from: Option<FromRef>,
}

/// A RUN, expanded.
#[derive(Debug, Clone)]
pub struct RunOp {
    /// The argv (shell prepended for shell form).
    pub args: Vec<String>,
    /// Mounts.
    pub mounts: Vec<RunMount>,
    /// The network it runs with.
    pub network: NetworkMode,
    /// The environment: ENV, then in-scope ARGs, then proxy args.
    pub env: Vec<String>,
    /// A heredoc script run by its own interpreter (`RUN <<EOF` whose body
    /// starts with `#!`): its path in the sandbox (`/dev/pipes/<name>`,
    /// as BuildKit mounts it) and its content, mounted read-only, mode 0755.
    pub script: Option<(String, String)>,
}

/// What executing a step does.
#[derive(Debug, Clone)]
pub enum Op {
    /// The FROM of a stage: nothing to do.
    From,
    /// A config change only.
    Meta,
    /// WORKDIR: create the directory when missing.
    Workdir(String),
    /// COPY or ADD.
    Copy(Box<CopyOp>),
    /// RUN.
    Run(Box<RunOp>),
}

impl Op {
    /// Whether the step may produce a layer.
    pub fn touches_rootfs(&self) -> bool {
        matches!(self, Op::Workdir(_) | Op::Copy(_) | Op::Run(_))
    }
}

/// One step of a stage.
#[derive(Debug, Clone)]
pub struct Step {
    /// Display information (stage, index, instruction, line).
    pub info: StepInfo,
    /// What to do.
    pub op: Op,
    /// The config before the step (the environment it runs in).
    pub before: StageConfig,
    /// The config after it.
    pub after: StageConfig,
    /// Build args in scope with values (for the key).
    pub args: BTreeMap<String, String>,
    /// The history `created_by` text.
    pub created_by: String,
}

/// One stage of the plan.
#[derive(Debug, Clone)]
pub struct StagePlan {
    /// Index in the Dockerfile.
    pub index: usize,
    /// Name for display (`AS name`, else `stage-N`).
    pub name: String,
    /// What it starts from.
    pub base: Base,
    /// Its steps; step 0 is the FROM. Empty for stages that are not built.
    pub steps: Vec<Step>,
    /// Stages it needs (base, `--from`, mounts), without duplicates.
    pub deps: Vec<usize>,
    /// Whether the target needs it.
    pub needed: bool,
    /// The platform of `FROM --platform=...`; `None`: the build's target
    /// platform.
    pub platform: Option<Platform>,
}

/// The planned build.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every stage of the Dockerfile (pruned ones have no steps).
    pub stages: Vec<StagePlan>,
    /// The target stage's index.
    pub target: usize,
    /// Warnings (unused build args).
    pub warnings: Vec<String>,
}

/// Inputs to planning besides the Dockerfile.
pub struct PlanInput<'a> {
    /// `--build-arg` values.
    pub build_args: &'a BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<&'a str>,
    /// Target platform.
    pub platform: &'a Platform,
    /// Default network for RUN.
    pub network: NetworkMode,
    /// Finds base images.
    pub resolve: ResolveImage<'a>,
}

struct RawStage<'a> {
    from: &'a Spanned<Instruction>,
    name: Option<String>,
    body: &'a [Spanned<Instruction>],
}

fn expansion_error(line: usize, e: impl std::fmt::Display) -> BuildError {
    BuildError::Expansion {
        line,
        message: e.to_string(),
    }
}

/// Finds a stage by name (case-insensitive, as BuildKit lowercases stage
/// names) or index, among the stages before `current`.
fn find_stage(stages: &[RawStage<'_>], current: usize, reference: &str) -> Option<usize> {
    if let Ok(i) = reference.parse::<usize>() {
        return (i < current).then_some(i);
    }
    let lower = reference.to_lowercase();
    stages[..current]
        .iter()
        .position(|s| s.name.as_deref() == Some(lower.as_str()))
}

/// Plans the build of `df`.
pub fn plan(df: &Dockerfile, input: &PlanInput<'_>) -> Result<Plan, BuildError> {
    let host = Platform::host();
    let mut build_args = BuildArgs::new(input.build_args.clone());
    let mut global = GlobalScope::new(platform_args(input.platform, &host));

    // Split into global ARGs and stages.
    let mut stages: Vec<RawStage<'_>> = Vec::new();
    let first_from = df
        .instructions
        .iter()
        .position(|i| matches!(i.value, Instruction::From(_)))
        .ok_or(BuildError::Invalid {
            line: 1,
            message: "no build stage in current context".into(),
        })?;
    for inst in &df.instructions[..first_from] {
        if let Instruction::Arg(defs) = &inst.value {
            for d in defs {
                let default = d
                    .default
                    .as_deref()
                    .map(|v| expand_word(df, v, &global.vars(), inst.span.line))
                    .transpose()?;
                global.declare(&d.name, default, &mut build_args);
            }
        }
    }
    let froms: Vec<usize> = df
        .instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| matches!(i.value, Instruction::From(_)))
        .map(|(n, _)| n)
        .collect();
    for (k, &start) in froms.iter().enumerate() {
        let end = froms.get(k + 1).copied().unwrap_or(df.instructions.len());
        let from = &df.instructions[start];
        let name = match &from.value {
            Instruction::From(f) => f.stage_name.clone(),
            _ => None,
        };
        if let Some(n) = &name {
            if let Some(prev) = stages.iter().find(|s| s.name.as_deref() == Some(n)) {
                return Err(BuildError::Invalid {
                    line: from.span.line,
                    message: format!(
                        "duplicate stage name {n:?} (first defined on line {})",
                        prev.from.span.line
                    ),
                });
            }
        }
        stages.push(RawStage {
            from,
            name,
            body: &df.instructions[start + 1..end],
        });
    }

    let target = match input.target {
        None => stages.len() - 1,
        Some(t) => {
            find_stage(&stages, stages.len(), t).ok_or_else(|| BuildError::UnknownTarget {
                target: t.to_string(),
                available: stages
                    .iter()
                    .enumerate()
                    .map(|(i, s)| s.name.clone().unwrap_or_else(|| i.to_string()))
                    .collect(),
            })?
        }
    };

    // Pass 1: which stages does each stage reference? Expanded with the
    // stage's ARGs (ENV of base images is not known yet; BuildKit resolves
    // stage references the same way, before dispatching).
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(stages.len());
    for (i, st) in stages.iter().enumerate() {
        let mut d = Vec::new();
        let base = from_image(df, st.from, &global)?;
        if let Some(s) = find_stage(&stages, i, &base) {
            d.push(s);
        }
        let mut scope = StageScope::default();
        let mut scratch_args = build_args.clone();
        for inst in st.body {
            let vars = scope.vars(&[]);
            if let Instruction::Arg(defs) = &inst.value {
                for def in defs {
                    let default = def
                        .default
                        .as_deref()
                        .and_then(|v| expand_word(df, v, &vars, inst.span.line).ok());
                    scope.declare(&def.name, default, &global, &mut scratch_args);
                }
                continue;
            }
            let Ok(e) = inst.value.expand(&vars, df.escape) else {
                continue;
            };
            for r in from_refs(&e) {
                if let Some(s) = find_stage(&stages, i, &r) {
                    d.push(s);
                }
            }
        }
        d.sort_unstable();
        d.dedup();
        deps.push(d);
    }
    let needed = reachable(&deps, target);

    // Pass 2: plan the needed stages in order.
    let mut planned: Vec<StagePlan> = Vec::with_capacity(stages.len());
    let multi = stages.len() > 1;
    let mut next_id = 1;
    for (i, st) in stages.iter().enumerate() {
        let display = st.name.clone().unwrap_or_else(|| format!("stage-{i}"));
        if !needed[i] {
            planned.push(StagePlan {
                index: i,
                name: display,
                base: Base::Scratch,
                steps: Vec::new(),
                deps: deps[i].clone(),
                needed: false,
                platform: None,
            });
            continue;
        }
        let sp = plan_stage(
            df,
            input,
            &stages,
            &planned,
            i,
            display,
            multi,
            &global,
            &mut build_args,
            &mut next_id,
        )?;
        planned.push(sp);
    }

    let mut warnings = Vec::new();
    let unused = build_args.unused();
    if !unused.is_empty() {
        warnings.push(format!(
            "One or more build-args [{}] were not consumed",
            unused.join(" ")
        ));
    }
    Ok(Plan {
        stages: planned,
        target,
        warnings,
    })
}

/// Stages reachable from `target` through `deps` (the target included).
pub fn reachable(deps: &[Vec<usize>], target: usize) -> Vec<bool> {
    let mut g = DiGraphMap::<usize, ()>::new();
    for (i, d) in deps.iter().enumerate() {
        g.add_node(i);
        for &j in d {
            g.add_edge(i, j, ());
        }
    }
    let mut out = vec![false; deps.len()];
    let mut dfs = Dfs::new(&g, target);
    while let Some(n) = dfs.next(&g) {
        out[n] = true;
    }
    out
}

fn expand_word(
    df: &Dockerfile,
    word: &str,
    vars: &BTreeMap<String, String>,
    line: usize,
) -> Result<String, BuildError> {
    rbuild_parser::Lexer::new(df.escape)
        .process_word(word, vars)
        .map(|e| e.result)
        .map_err(|e| expansion_error(line, e))
}

/// The FROM image name, expanded with the global scope.
fn from_image(
    df: &Dockerfile,
    from: &Spanned<Instruction>,
    global: &GlobalScope,
) -> Result<String, BuildError> {
    let e = from
        .value
        .expand(&global.vars(), df.escape)
        .map_err(|e| expansion_error(from.span.line, e))?;
    match e.instruction {
        Instruction::From(f) if !f.image.trim().is_empty() => Ok(f.image),
        _ => Err(BuildError::Invalid {
            line: from.span.line,
            message: "base name (FROM) should not be blank".into(),
        }),
    }
}

/// The platform a FROM asks for with `--platform` (expanded with the global
/// scope, where BuildKit's predefined platform args are visible).
fn from_platform(
    df: &Dockerfile,
    from: &Spanned<Instruction>,
    global: &GlobalScope,
) -> Result<Option<Platform>, BuildError> {
    let e = from
        .value
        .expand(&global.vars(), df.escape)
        .map_err(|e| expansion_error(from.span.line, e))?;
    let Instruction::From(f) = e.instruction else {
        return Ok(None);
    };
    f.platform
        .map(|p| {
            Platform::parse(&p).ok_or_else(|| BuildError::Invalid {
                line: from.span.line,
                message: format!("invalid --platform {p:?}: expected os/arch[/variant]"),
            })
        })
        .transpose()
}

/// Stage or image names an expanded instruction reads from.
fn from_refs(e: &Expanded) -> Vec<String> {
    let mut out = Vec::new();
    if let Instruction::Copy(c) = &e.instruction {
        out.extend(c.from.clone());
    }
    for m in &e.mounts {
        out.extend(m.from.clone());
    }
    out
}

/// Resolves a `--from` reference: an earlier stage, else a stored image.
fn resolve_from(
    stages: &[RawStage<'_>],
    current: usize,
    reference: &str,
    line: usize,
    resolve: ResolveImage<'_>,
    platform: &Platform,
) -> Result<FromRef, BuildError> {
    if let Some(s) = find_stage(stages, current, reference) {
        return Ok(FromRef::Stage(s));
    }
    let unknown = || BuildError::UnknownFrom {
        line,
        reference: reference.to_string(),
    };
    if reference.parse::<usize>().is_ok() {
        return Err(unknown());
    }
    match resolve(reference, platform, line)? {
        Some(img) => Ok(FromRef::Image(Box::new(img))),
        None => Err(unknown()),
    }
}

/// The stage config a stage starts from, with the base image's author.
fn base_config(
    base: &Base,
    planned: &[StagePlan],
) -> (rbuild_image::ContainerConfig, Option<String>) {
    match base {
        Base::Scratch => Default::default(),
        Base::Image(img) => (img.config.config.clone(), img.config.author.clone()),
        Base::Stage(s) => planned[*s]
            .steps
            .last()
            .map(|st| (st.after.config.clone(), st.after.author.clone()))
            .unwrap_or_default(),
    }
}

#[allow(clippy::too_many_arguments)]
fn plan_stage(
    df: &Dockerfile,
    input: &PlanInput<'_>,
    stages: &[RawStage<'_>],
    planned: &[StagePlan],
    i: usize,
    display: String,
    multi: bool,
    global: &GlobalScope,
    build_args: &mut BuildArgs,
    next_id: &mut usize,
) -> Result<StagePlan, BuildError> {
    let st = &stages[i];
    let from_line = st.from.span.line;
    let image = from_image(df, st.from, global)?;
    let platform = from_platform(df, st.from, global)?;
    let stage_platform = platform.as_ref().unwrap_or(input.platform);
    let base = if image == "scratch" {
        Base::Scratch
    } else if let Some(s) = find_stage(stages, i, &image) {
        Base::Stage(s)
    } else {
        match (input.resolve)(&image, stage_platform, from_line)? {
            Some(img) => Base::Image(Box::new(img)),
            None => {
                return Err(BuildError::BaseImageNotFound {
                    line: from_line,
                    image,
                })
            }
        }
    };
    let (base_cfg, author) = base_config(&base, planned);
    let (mut cfg, triggers) = StageConfig::start(base_cfg, author);

    // ONBUILD triggers of the base run first, parsed as instructions of
    // their own (at the FROM's line, for messages).
    let mut trigger_insts: Vec<Spanned<Instruction>> = Vec::new();
    for t in &triggers {
        let parsed = rbuild_parser::parse(&format!("FROM scratch\n{t}\n")).map_err(|e| {
            BuildError::Invalid {
                line: from_line,
                message: format!("ONBUILD trigger {t:?} of the base image: {}", e.message),
            }
        })?;
        for mut inst in parsed.instructions.into_iter().skip(1) {
            inst.span = st.from.span;
            trigger_insts.push(inst);
        }
    }
    let body: Vec<&Spanned<Instruction>> = trigger_insts.iter().chain(st.body.iter()).collect();
    let count = body.len() + 1;
    let mut make_info = |index: usize, instruction: String, line: usize| {
        let info = StepInfo {
            id: *next_id,
            stage_index: i,
            stage_name: display.clone(),
            multi_stage: multi,
            named: st.name.is_some(),
            index,
            count,
            instruction,
            line,
        };
        *next_id += 1;
        info
    };

    let mut scope = StageScope::default();
    let mut steps = Vec::with_capacity(count);
    let mut deps: Vec<usize> = Vec::new();
    if let Base::Stage(s) = base {
        deps.push(s);
    }
    let from_text = match &st.name {
        Some(n) => format!("FROM {image} AS {n}"),
        None => format!("FROM {image}"),
    };
    steps.push(Step {
        info: make_info(1, from_text, from_line),
        op: Op::From,
        before: cfg.clone(),
        after: cfg.clone(),
        args: BTreeMap::new(),
        created_by: String::new(),
    });

    for (n, inst) in body.iter().enumerate() {
        let line = inst.span.line;
        let vars = scope.vars(&cfg.config.env);
        let e = inst
            .value
            .expand(&vars, df.escape)
            .map_err(|e| expansion_error(line, e))?;
        let before = cfg.clone();
        let invalid = |message: String| BuildError::Invalid { line, message };
        let (op, text, created_by) = match &e.instruction {
            Instruction::From(_) => return Err(invalid("FROM inside a stage".into())),
            Instruction::Arg(defs) => {
                let mut parts = Vec::new();
                for d in defs {
                    let v = scope.declare(&d.name, d.default.clone(), global, build_args);
                    parts.push(match v {
                        Some(v) => format!("{}={v}", d.name),
                        None => d.name.clone(),
                    });
                }
                let t = format!("ARG {}", parts.join(" "));
                (Op::Meta, t.clone(), t)
            }
            Instruction::Workdir(w) => {
                let abs = cfg.set_workdir(w);
                let t = format!("WORKDIR {abs}");
                (Op::Workdir(abs), t.clone(), t)
            }
            Instruction::Copy(c) => {
                let from = c
                    .from
                    .as_deref()
                    .map(|r| resolve_from(stages, i, r, line, input.resolve, stage_platform))
                    .transpose()?;
                let op = CopyOp {
                    add: false,
                    sources: c.sources.clone(),
                    inline: c.inline.clone(),
                    dest: c.dest.clone(),
                    from,
                    chown: c.chown.clone(),
                    chmod: c.chmod.clone(),
                    link: c.link,
                    parents: c.parents,
                    exclude: c.exclude.clone(),
                    checksum: None,
                    unpack: None,
                };
                let t = copy_text(&op, c.from.as_deref());
                (Op::Copy(Box::new(op)), t.clone(), format!("{t} # buildkit"))
            }
            Instruction::Add(a) => {
                let op = CopyOp {
                    add: true,
                    sources: a.sources.clone(),
                    inline: a.inline.clone(),
                    dest: a.dest.clone(),
                    from: None,
                    chown: a.chown.clone(),
                    chmod: a.chmod.clone(),
                    link: a.link,
                    parents: false,
                    exclude: a.exclude.clone(),
                    checksum: a.checksum.clone(),
                    unpack: a.unpack,
                };
                let t = copy_text(&op, None);
                (Op::Copy(Box::new(op)), t.clone(), format!("{t} # buildkit"))
            }
            Instruction::Run(r) => {
                let (args, script) = run_args(r, &cfg);
                let mut mounts = Vec::new();
                for m in &e.mounts {
                    let from = match (&m.from, m.kind) {
                        (Some(f), MountType::Bind | MountType::Cache) => Some(resolve_from(
                            stages,
                            i,
                            f,
                            line,
                            input.resolve,
                            stage_platform,
                        )?),
                        _ => None,
                    };
                    mounts.push(RunMount {
                        mount: m.clone(),
                        from,
                    });
                }
                let network = match r.network {
                    None => input.network,
                    Some(rbuild_parser::NetworkMode::Default) => input.network,
                    Some(rbuild_parser::NetworkMode::None) => NetworkMode::None,
                    Some(rbuild_parser::NetworkMode::Host) => NetworkMode::Host,
                };
                let mut text = String::from("RUN");
                for m in &e.mounts {
                    text.push_str(&format!(" --mount={m}"));
                }
                if let Some(n) = r.network {
                    text.push_str(&format!(" --network={}", network_name(n)));
                }
                text.push(' ');
                text.push_str(&args.join(" "));
                // The argv only names a script file: its body must be in
                // the key (and the display) as an inline body is.
                if let Some((_, body)) = &script {
                    text.push('\n');
                    text.push_str(body);
                }
                let in_scope = scope.args();
                let prefix = if in_scope.is_empty() {
                    String::new()
                } else {
                    let kv: Vec<String> =
                        in_scope.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("|{} {} ", kv.len(), kv.join(" "))
                };
                let created = format!("RUN {prefix}{} # buildkit", args.join(" "));
                let op = RunOp {
                    args,
                    mounts,
                    network,
                    env: scope.run_env(&cfg.config.env, build_args),
                    script,
                };
                (Op::Run(Box::new(op)), text, created)
            }
            meta => {
                let (text, created_by) = cfg
                    .apply_meta(meta)
                    .map_err(invalid)?
                    .ok_or_else(|| invalid(format!("{} is not supported here", meta.name())))?;
                (Op::Meta, text, created_by)
            }
        };
        let refs: Vec<usize> = match &op {
            Op::Copy(c) => match &c.from {
                Some(FromRef::Stage(s)) => vec![*s],
                _ => vec![],
            },
            Op::Run(r) => r
                .mounts
                .iter()
                .filter_map(|m| match m.from {
                    Some(FromRef::Stage(s)) => Some(s),
                    _ => None,
                })
                .collect(),
            _ => vec![],
        };
        deps.extend(refs);
        steps.push(Step {
            info: make_info(n + 2, text, line),
            op,
            before,
            after: cfg.clone(),
            args: scope.args(),
            created_by,
        });
    }
    deps.sort_unstable();
    deps.dedup();
    Ok(StagePlan {
        index: i,
        name: display,
        base,
        steps,
        deps,
        needed: true,
        platform,
    })
}

fn network_name(n: rbuild_parser::NetworkMode) -> &'static str {
    match n {
        rbuild_parser::NetworkMode::Default => "default",
        rbuild_parser::NetworkMode::None => "none",
        rbuild_parser::NetworkMode::Host => "host",
    }
}

/// Where BuildKit mounts a heredoc script that has its own interpreter.
const HEREDOC_SCRIPT_DIR: &str = "/dev/pipes";

/// The argv of a RUN, and the script file it needs: exec form as is; shell
/// form through the stage's SHELL, with heredoc bodies appended so the
/// shell reads them itself. `RUN <<EOF` alone runs the body as the script;
/// a body starting with `#!` is instead mounted as an executable file that
/// the shell runs, so the kernel starts the interpreter the body names,
/// as BuildKit's `dispatchRun` does.
fn run_args(r: &rbuild_parser::Run, cfg: &StageConfig) -> (Vec<String>, Option<(String, String)>) {
    if !r.command.prepend_shell {
        return (r.command.args.clone(), None);
    }
    let line = r.command.args.join(" ");
    let mut file = None;
    let script = match r.heredocs.as_slice() {
        [] => line,
        [h] if line.trim() == format!("<<{}", h.name)
            || line.trim() == format!("<<-{}", h.name)
            || line.trim() == format!("<<\"{}\"", h.name)
            || line.trim() == format!("<<'{}'", h.name) =>
        {
            let body = h.data();
            if body.starts_with("#!") {
                let path = format!("{HEREDOC_SCRIPT_DIR}/{}", h.name);
                file = Some((path.clone(), body));
                path
            } else {
                body
            }
        }
        docs => {
            let mut s = line;
            s.push('\n');
            for h in docs {
                s.push_str(&h.content);
                s.push_str(&h.name);
                s.push('\n');
            }
            s
        }
    };
    let mut args = cfg.shell();
    args.push(script);
    (args, file)
}

/// The display and key text of a COPY/ADD: flags then sources and dest.
fn copy_text(op: &CopyOp, from: Option<&str>) -> String {
    let mut t = String::from(if op.add { "ADD" } else { "COPY" });
    if let Some(f) = from {
        t.push_str(&format!(" --from={f}"));
    }
    for (flag, v) in [
        ("chown", &op.chown),
        ("chmod", &op.chmod),
        ("checksum", &op.checksum),
    ] {
        if let Some(v) = v {
            t.push_str(&format!(" --{flag}={v}"));
        }
    }
    if op.link {
        t.push_str(" --link");
    }
    if op.parents {
        t.push_str(" --parents");
    }
    if let Some(u) = op.unpack {
        t.push_str(&format!(" --unpack={u}"));
    }
    for x in &op.exclude {
        t.push_str(&format!(" --exclude={x}"));
    }
    for s in &op.sources {
        t.push(' ');
        t.push_str(s);
    }
    for f in &op.inline {
        t.push_str(&format!(" <<{}", f.path));
    }
    t.push(' ');
    t.push_str(&op.dest);
    t
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn no_images(
        _: &str,
        _: &Platform,
        _: usize,
    ) -> Result<Option<BaseImage>, BuildError> {
        Ok(None)
    }

    pub(crate) fn plan_text(
        text: &str,
        args: &[(&str, &str)],
        target: Option<&str>,
        resolve: ResolveImage<'_>,
    ) -> Result<Plan, BuildError> {
        let df = rbuild_parser::parse(text).expect("test Dockerfile parses");
        let build_args: BTreeMap<String, String> = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let platform = Platform::parse("linux/amd64").unwrap();
        plan(
            &df,
            &PlanInput {
                build_args: &build_args,
                target,
                platform: &platform,
                network: NetworkMode::Default,
                resolve,
            },
        )
    }

    #[test]
    fn from_platform_selects_the_image_and_the_stage_platform() {
        // The resolver sees the FROM's line and platform, expanded with the
        // predefined platform args.
        let asked = std::sync::Mutex::new(Vec::new());
        let resolve = |name: &str, p: &Platform, line: usize| {
            asked
                .lock()
                .unwrap()
                .push((name.to_string(), p.to_string(), line));
            Ok(Some(BaseImage {
                name: name.into(),
                manifest_digest: Digest::of_bytes(name.as_bytes()),
                config: ImageConfig::default(),
                layers: Vec::new(),
            }))
        };
        let text = "FROM --platform=$BUILDPLATFORM base AS b\n\
                    FROM --platform=linux/arm64 scratch AS s\n\
                    FROM img\nCOPY --from=other /x /y\n";
        let p = plan_text(text, &[], None, &resolve).unwrap();
        let host = Platform::host().to_string();
        assert_eq!(
            *asked.lock().unwrap(),
            vec![
                ("img".to_string(), "linux/amd64".to_string(), 3),
                ("other".to_string(), "linux/amd64".to_string(), 4),
            ]
        );
        let p2 = plan_text(text, &[], Some("b"), &resolve).unwrap();
        assert_eq!(
            asked.lock().unwrap()[2],
            ("base".to_string(), host.clone(), 1)
        );
        assert_eq!(
            p2.stages[0].platform.as_ref().map(|p| p.to_string()),
            Some(host)
        );
        let p3 = plan_text(text, &[], Some("s"), &resolve).unwrap();
        assert_eq!(
            p3.stages[1]
                .platform
                .as_ref()
                .map(|p| p.to_string())
                .as_deref(),
            Some("linux/arm64")
        );
        assert_eq!(p.stages[2].platform, None);
        let e = plan_text("FROM --platform=linux scratch\n", &[], None, &no_images).unwrap_err();
        assert!(e.to_string().contains("invalid --platform"), "{e}");
    }

    fn last_env(p: &Plan) -> Vec<String> {
        p.stages[p.target]
            .steps
            .last()
            .unwrap()
            .after
            .config
            .env
            .clone()
    }

    fn run_env(p: &Plan, stage: usize, step: usize) -> Vec<String> {
        match &p.stages[stage].steps[step].op {
            Op::Run(r) => r.env.clone(),
            other => panic!("not a RUN: {other:?}"),
        }
    }

    #[test]
    fn global_arg_in_from_and_redeclared() {
        let p = plan_text(
            "ARG BASE=scratch\nARG V=1\nFROM ${BASE}\nARG V\nRUN echo $V\n",
            &[],
            None,
            &no_images,
        )
        .unwrap();
        assert!(matches!(p.stages[0].base, Base::Scratch));
        assert!(run_env(&p, 0, 2).contains(&"V=1".to_string()));
        // ARG never reaches the image's Env.
        assert!(!last_env(&p).iter().any(|e| e.starts_with("V=")));
        assert!(last_env(&p).iter().any(|e| e.starts_with("PATH=")));
    }

    #[test]
    fn build_arg_env_and_history() {
        let p = plan_text(
            "FROM scratch\nARG A=def\nENV E=$A\nARG A\nENV A=fromenv\nRUN x\n",
            &[("A", "cli"), ("UNUSED", "1")],
            None,
            &no_images,
        )
        .unwrap();
        let s = &p.stages[0];
        assert_eq!(s.steps[1].created_by, "ARG A=cli");
        assert_eq!(s.steps[2].created_by, "ENV E=cli");
        // ENV shadows the ARG in RUN's environment.
        let env = run_env(&p, 0, 5);
        assert!(env.contains(&"A=fromenv".to_string()));
        assert!(!env.contains(&"A=cli".to_string()));
        assert_eq!(
            s.steps[5].created_by,
            "RUN |1 A=cli /bin/sh -c x # buildkit"
        );
        assert_eq!(
            p.warnings,
            vec!["One or more build-args [UNUSED] were not consumed"]
        );
    }

    #[test]
    fn pruning_skips_stages_the_target_does_not_need() {
        let text = "FROM scratch AS a\nCOPY x /x\nFROM missing-image AS b\nFROM scratch AS c\nCOPY --from=a /x /y\nFROM scratch\n";
        // Target c needs a only: b's missing base image is never looked at.
        let p = plan_text(text, &[], Some("c"), &no_images).unwrap();
        let needed: Vec<bool> = p.stages.iter().map(|s| s.needed).collect();
        assert_eq!(needed, vec![true, false, true, false]);
        assert_eq!(p.stages[2].deps, vec![0]);
        assert!(p.stages[1].steps.is_empty());
        // By index too.
        let p = plan_text(text, &[], Some("0"), &no_images).unwrap();
        assert_eq!(p.target, 0);
        // Building b fails, naming the image and the line.
        let e = plan_text(text, &[], Some("b"), &no_images).unwrap_err();
        assert!(
            matches!(&e, BuildError::BaseImageNotFound { line: 3, image } if image == "missing-image"),
            "{e}"
        );
    }

    #[test]
    fn unknown_target_and_from() {
        let e = plan_text("FROM scratch AS a\n", &[], Some("nope"), &no_images).unwrap_err();
        assert!(matches!(e, BuildError::UnknownTarget { .. }), "{e}");
        let e = plan_text(
            "FROM scratch\nCOPY --from=ghost /a /b\n",
            &[],
            None,
            &no_images,
        )
        .unwrap_err();
        assert!(
            matches!(&e, BuildError::UnknownFrom { line: 2, reference } if reference == "ghost"),
            "{e}"
        );
    }

    #[test]
    fn stage_base_inherits_config_and_mount_from_is_a_dependency() {
        let p = plan_text(
            "FROM scratch AS base\nENV A=1\nWORKDIR /w\nFROM base\nRUN --mount=type=bind,from=base,target=/m true\nRUN pwd\n",
            &[],
            None,
            &no_images,
        )
        .unwrap();
        assert!(matches!(p.stages[1].base, Base::Stage(0)));
        assert_eq!(p.stages[1].deps, vec![0]);
        let last = p.stages[1].steps.last().unwrap();
        assert_eq!(last.before.workdir(), "/w");
        assert!(last.before.config.env.contains(&"A=1".to_string()));
    }

    fn image_with_onbuild(
        name: &str,
        _: &Platform,
        _: usize,
    ) -> Result<Option<BaseImage>, BuildError> {
        if name != "parent" {
            return Ok(None);
        }
        let mut config = ImageConfig::default();
        config.config.on_build = vec!["ENV FROM_TRIGGER=1".into(), "COPY a.txt /a".into()];
        config.config.cmd = Some(vec!["sh".into()]);
        Ok(Some(BaseImage {
            name: name.into(),
            manifest_digest: Digest::of_bytes(b"parent"),
            config,
            layers: Vec::new(),
        }))
    }

    #[test]
    fn onbuild_triggers_run_first_and_are_not_inherited() {
        let p = plan_text(
            "FROM parent\nONBUILD RUN echo child\nENTRYPOINT [\"/app\"]\n",
            &[],
            None,
            &image_with_onbuild,
        )
        .unwrap();
        let s = &p.stages[0];
        let texts: Vec<&str> = s
            .steps
            .iter()
            .map(|s| s.info.instruction.as_str())
            .collect();
        assert_eq!(
            texts,
            vec![
                "FROM parent",
                "ENV FROM_TRIGGER=1",
                "COPY a.txt /a",
                "ONBUILD RUN echo child",
                "ENTRYPOINT [\"/app\"]"
            ]
        );
        assert!(matches!(s.steps[2].op, Op::Copy(_)));
        let last = &s.steps.last().unwrap().after;
        assert_eq!(last.config.on_build, vec!["RUN echo child"]);
        // ENTRYPOINT cleared the CMD inherited from the base.
        assert_eq!(last.config.cmd, None);
    }

    #[test]
    fn metadata_instructions_shape_the_config() {
        let p = plan_text(
            "FROM scratch\nSHELL [\"/bin/bash\", \"-c\"]\nCMD echo hi\nEXPOSE 80 53/udp\nVOLUME /data\nUSER app\nLABEL a=b\nSTOPSIGNAL SIGTERM\nMAINTAINER me\nHEALTHCHECK --interval=5s CMD true\n",
            &[],
            None,
            &no_images,
        )
        .unwrap();
        let s = &p.stages[0];
        let c = &s.steps.last().unwrap().after;
        assert_eq!(
            c.config.cmd,
            Some(vec!["/bin/bash".into(), "-c".into(), "echo hi".into()])
        );
        assert_eq!(
            c.config.exposed_ports.keys().collect::<Vec<_>>(),
            vec!["53/udp", "80/tcp"]
        );
        assert!(c.config.volumes.contains_key("/data"));
        assert_eq!(c.config.user, "app");
        assert_eq!(c.config.labels["a"], "b");
        assert_eq!(c.config.stop_signal, "SIGTERM");
        assert_eq!(c.author.as_deref(), Some("me"));
        let hc = c.config.healthcheck.as_ref().unwrap();
        assert_eq!(hc.interval, 5_000_000_000);
        assert_eq!(s.steps[2].created_by, r#"CMD ["/bin/bash" "-c" "echo hi"]"#);
        assert_eq!(s.steps[3].created_by, "EXPOSE map[53/udp:{} 80/tcp:{}]");
    }

    #[test]
    fn predefined_platform_args_need_declaring() {
        let p = plan_text(
            "FROM scratch\nRUN a\nARG TARGETARCH\nRUN b\n",
            &[],
            None,
            &no_images,
        )
        .unwrap();
        assert!(!run_env(&p, 0, 1)
            .iter()
            .any(|e| e.starts_with("TARGETARCH=")));
        assert!(run_env(&p, 0, 3).contains(&"TARGETARCH=amd64".to_string()));
    }

    #[test]
    fn expansion_errors_name_the_line() {
        let e = plan_text(
            "FROM scratch\nENV A=1\nWORKDIR ${MISSING:?is required}\n",
            &[],
            None,
            &no_images,
        )
        .unwrap_err();
        assert_eq!(e.line(), Some(3), "{e}");
    }
}
