//! The [`BuildGraph`]: every planned step as a node of a petgraph DAG, with
//! edges for the parent step, a `FROM <stage>` base, `COPY --from` and
//! `RUN --mount ... from=`, and every step's cache key.
//!
//! Keys are computed in dependency order: a step's key covers its parent's
//! key (or the base image's manifest digest), so changing an input changes
//! that step's key and the keys of everything after it in the stage and of
//! the stages that use it, and nothing else.

use petgraph::graph::{DiGraph, NodeIndex};
use rbuild_cache::Digest;
use serde::Serialize;

use crate::error::{BuildError, Inner, StepLocation};
use crate::key::{FileInput, KeyInputs, ParentInput, SourceInput};
use crate::plan::{Base, FromRef, Op, Plan, Step};
use crate::progress::StepInfo;
use crate::request::NetworkMode;

/// Why one step depends on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Edge {
    /// The previous step of the same stage.
    Parent,
    /// `FROM <stage>`: the last step of the base stage.
    BaseStage,
    /// `COPY --from=<stage>`.
    CopyFrom,
    /// `RUN --mount=...,from=<stage>`.
    MountFrom,
}

/// One step in the graph.
#[derive(Debug, Clone, Serialize)]
pub struct StepNode {
    /// Which step.
    pub info: StepInfo,
    /// Its cache key.
    pub key: Digest,
    /// The inputs of the key.
    pub inputs: KeyInputs,
    /// Whether this is a stage's FROM: nothing runs and nothing is stored
    /// in the cache, so a build always reports it cached.
    pub is_from: bool,
}

/// The DAG of the steps to build (pruned stages are absent). Edges point
/// from a step to the step it depends on.
#[derive(Debug, Clone)]
pub struct BuildGraph {
    /// The graph.
    pub graph: DiGraph<StepNode, Edge>,
    /// The nodes of each stage in order (empty for pruned stages).
    pub stages: Vec<Vec<NodeIndex>>,
    /// The target stage.
    pub target: usize,
}

impl BuildGraph {
    /// The node of a stage's last step.
    pub fn last(&self, stage: usize) -> Option<&StepNode> {
        self.stages[stage].last().map(|n| &self.graph[*n])
    }

    /// The graph in Graphviz DOT: one cluster per stage (the target's label
    /// says so), one box per step marked `CACHED` (filled grey) or `to run`
    /// by `cached(key)` (a FROM is always cached, as a build reports it),
    /// base images and `--from` images as ellipses, and
    /// edges from each step to what it depends on: solid for the previous
    /// step, bold for `FROM <stage>`, dashed for `--from`.
    pub fn to_dot(&self, cached: &dyn Fn(&Digest) -> bool) -> String {
        let mut s = String::from(
            "digraph build {\n  rankdir=TB;\n  node [shape=box, fontname=monospace];\n",
        );
        let mut images: Vec<(String, String)> = Vec::new();
        let mut image_node = |name: &str, digest: &Digest| -> String {
            let label = format!("{name}\n{}", short(digest));
            match images.iter().position(|(l, _)| *l == label) {
                Some(i) => images[i].1.clone(),
                None => {
                    let id = format!("img{}", images.len());
                    images.push((label, id.clone()));
                    id
                }
            }
        };
        let mut image_edges = String::new();
        for (i, nodes) in self.stages.iter().enumerate() {
            let Some(first) = nodes.first() else {
                continue;
            };
            let name = &self.graph[*first].info.stage_name;
            let title = if i == self.target {
                format!("{name} (target)")
            } else {
                name.clone()
            };
            s.push_str(&format!(
                "  subgraph cluster_{i} {{\n    label={};\n",
                dot_label(&[&title])
            ));
            for n in nodes {
                let node = &self.graph[*n];
                let (state, attrs) = if node.is_from || cached(&node.key) {
                    ("CACHED", ", style=filled, fillcolor=lightgrey")
                } else {
                    ("to run", "")
                };
                let text = format!("{} {}", node.info.label(), shorten(&node.info.instruction));
                s.push_str(&format!(
                    "    n{} [label={}{attrs}];\n",
                    n.index(),
                    dot_label(&[&text, state])
                ));
                let mut froms: Vec<(&str, &Digest, &str)> = Vec::new();
                if let ParentInput::Image { name, digest } = &node.inputs.parent {
                    froms.push((name, digest, "bold"));
                }
                for src in &node.inputs.sources {
                    if let SourceInput::Image { name, digest, .. } = src {
                        froms.push((name, digest, "dashed"));
                    }
                }
                for (name, digest, style) in froms {
                    let id = image_node(name, digest);
                    image_edges.push_str(&format!("  {id} -> n{} [style={style}];\n", n.index()));
                }
            }
            s.push_str("  }\n");
        }
        for (label, id) in &images {
            let parts: Vec<&str> = label.split('\n').collect();
            s.push_str(&format!(
                "  {id} [shape=ellipse, label={}];\n",
                dot_label(&parts)
            ));
        }
        s.push_str(&image_edges);
        for e in self.graph.edge_indices() {
            let (a, b) = self.graph.edge_endpoints(e).expect("edge exists");
            let style = match self.graph[e] {
                Edge::Parent => "solid",
                Edge::BaseStage => "bold",
                Edge::CopyFrom | Edge::MountFrom => "dashed",
            };
            s.push_str(&format!(
                "  n{} -> n{} [style={style}];\n",
                b.index(),
                a.index()
            ));
        }
        s.push_str("}\n");
        s
    }
}

/// A DOT string literal of `lines`, one per label line: quotes and
/// backslashes of the text are escaped, so a `\n` written in a RUN stays
/// text and only the joins break lines.
fn dot_label(lines: &[&str]) -> String {
    let escaped: Vec<String> = lines
        .iter()
        .map(|l| {
            l.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', " ")
        })
        .collect();
    format!("\"{}\"", escaped.join("\\n"))
}

/// Long instructions (a RUN with a script) are cut so boxes stay readable.
fn shorten(instruction: &str) -> String {
    const MAX: usize = 60;
    match instruction.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &instruction[..at]),
        None => instruction.to_string(),
    }
}

/// `sha256:` and the first 12 hex digits, as `docker images` shows IDs.
fn short(d: &Digest) -> String {
    let full = d.to_string();
    full.chars().take("sha256:".len() + 12).collect()
}

/// Digests of sources that live outside the plan: context selections and
/// downloads. Implemented over the executor's build context for real
/// builds, and by tables in tests.
pub trait SourceDigests: Sync {
    /// The digest and per-file digests of context `patterns` (expanded
    /// COPY/ADD sources, or a bind mount's source), minus `excludes`.
    fn context(
        &self,
        patterns: &[String],
        excludes: &[String],
    ) -> Result<(Digest, Vec<FileInput>), Inner>;

    /// The content digest of a URL (the checksum when given, else the
    /// downloaded content's digest).
    fn url(&self, url: &str, checksum: Option<&str>) -> Result<Digest, Inner>;
}

/// Whether an ADD source is a URL.
pub fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// The [`StepLocation`] of a step, for errors.
pub fn location(info: &StepInfo) -> StepLocation {
    StepLocation {
        stage: info.stage_name.clone(),
        index: info.index,
        count: info.count,
        instruction: info.instruction.clone(),
        line: info.line,
    }
}

fn network_name(n: NetworkMode) -> &'static str {
    match n {
        NetworkMode::Default => "default",
        NetworkMode::None => "none",
        NetworkMode::Host => "host",
    }
}

/// Computes the key inputs of every step of the plan and builds the graph.
pub fn build_graph(
    plan: &Plan,
    platform: &str,
    sources: &dyn SourceDigests,
) -> Result<BuildGraph, BuildError> {
    let mut graph: DiGraph<StepNode, Edge> = DiGraph::new();
    let mut stage_nodes: Vec<Vec<NodeIndex>> = vec![Vec::new(); plan.stages.len()];
    for sp in plan.stages.iter().filter(|s| s.needed) {
        let mut prev: Option<NodeIndex> = None;
        for step in &sp.steps {
            let (parent, parent_edge) = match (prev, &step.op) {
                (Some(p), _) => (
                    ParentInput::Step { key: graph[p].key },
                    Some((p, Edge::Parent)),
                ),
                (None, _) => match &sp.base {
                    Base::Scratch => (ParentInput::Scratch, None),
                    Base::Image(img) => (
                        ParentInput::Image {
                            name: img.name.clone(),
                            digest: img.manifest_digest,
                        },
                        None,
                    ),
                    Base::Stage(s) => {
                        let last = *stage_nodes[*s].last().ok_or_else(|| BuildError::Invalid {
                            line: step.info.line,
                            message: format!("base stage {s} has no steps"),
                        })?;
                        (
                            ParentInput::Step {
                                key: graph[last].key,
                            },
                            Some((last, Edge::BaseStage)),
                        )
                    }
                },
            };
            let (srcs, from_edges) = step_sources(step, &stage_nodes, &graph, sources)?;
            let inputs = KeyInputs {
                parent,
                // A stage's own `FROM --platform` wins over the build's.
                platform: sp
                    .platform
                    .as_ref()
                    .map_or_else(|| platform.to_string(), ToString::to_string),
                instruction: step.info.instruction.clone(),
                args: step.args.clone(),
                env: rbuild_parser::env_from_pairs(&step.before.config.env),
                workdir: step.before.workdir().to_string(),
                user: step.before.config.user.clone(),
                shell: step.before.shell(),
                network: match &step.op {
                    Op::Run(r) => network_name(r.network).to_string(),
                    _ => String::new(),
                },
                sources: srcs,
            };
            let node = graph.add_node(StepNode {
                info: step.info.clone(),
                key: inputs.key(),
                inputs,
                is_from: matches!(step.op, Op::From),
            });
            if let Some((p, e)) = parent_edge {
                graph.add_edge(node, p, e);
            }
            for (n, e) in from_edges {
                graph.add_edge(node, n, e);
            }
            stage_nodes[sp.index].push(node);
            prev = Some(node);
        }
    }
    Ok(BuildGraph {
        graph,
        stages: stage_nodes,
        target: plan.target,
    })
}

type Sources = (Vec<SourceInput>, Vec<(NodeIndex, Edge)>);

fn from_source(
    from: &FromRef,
    paths: Vec<String>,
    stage_nodes: &[Vec<NodeIndex>],
    graph: &DiGraph<StepNode, Edge>,
    edge: Edge,
    edges: &mut Vec<(NodeIndex, Edge)>,
) -> SourceInput {
    match from {
        FromRef::Stage(s) => {
            let last = *stage_nodes[*s]
                .last()
                .expect("referenced stages are planned before their users");
            edges.push((last, edge));
            SourceInput::Stage {
                stage: graph[last].info.stage_name.clone(),
                key: graph[last].key,
                paths,
            }
        }
        FromRef::Image(img) => SourceInput::Image {
            name: img.name.clone(),
            digest: img.manifest_digest,
            paths,
        },
    }
}

fn step_sources(
    step: &Step,
    stage_nodes: &[Vec<NodeIndex>],
    graph: &DiGraph<StepNode, Edge>,
    sources: &dyn SourceDigests,
) -> Result<Sources, BuildError> {
    let mut out = Vec::new();
    let mut edges = Vec::new();
    let copy_err = |source: Inner| BuildError::CopySource {
        step: location(&step.info),
        source,
    };
    match &step.op {
        Op::Copy(c) => {
            if let Some(from) = &c.from {
                out.push(from_source(
                    from,
                    c.sources.clone(),
                    stage_nodes,
                    graph,
                    Edge::CopyFrom,
                    &mut edges,
                ));
            } else {
                let (urls, local): (Vec<String>, Vec<String>) =
                    c.sources.iter().cloned().partition(|s| c.add && is_url(s));
                if !local.is_empty() {
                    let (digest, files) = sources.context(&local, &c.exclude).map_err(copy_err)?;
                    out.push(SourceInput::Context {
                        patterns: local,
                        digest,
                        files,
                    });
                }
                for u in urls {
                    let digest = sources.url(&u, c.checksum.as_deref()).map_err(copy_err)?;
                    out.push(SourceInput::Url { url: u, digest });
                }
            }
            for f in &c.inline {
                out.push(SourceInput::Inline {
                    name: f.path.clone(),
                    digest: Digest::of_bytes(f.data.as_bytes()),
                });
            }
        }
        Op::Run(r) => {
            for m in &r.mounts {
                if m.mount.kind != rbuild_parser::MountType::Bind {
                    continue;
                }
                let src = m.mount.source.clone().unwrap_or_else(|| ".".into());
                match &m.from {
                    Some(from) => out.push(from_source(
                        from,
                        vec![src],
                        stage_nodes,
                        graph,
                        Edge::MountFrom,
                        &mut edges,
                    )),
                    None => {
                        let (digest, files) = sources
                            .context(std::slice::from_ref(&src), &[])
                            .map_err(|source| BuildError::Step {
                                step: location(&step.info),
                                source,
                            })?;
                        out.push(SourceInput::Context {
                            patterns: vec![src],
                            digest,
                            files,
                        });
                    }
                }
            }
        }
        _ => {}
    }
    Ok((out, edges))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{no_images, plan_text};
    use std::collections::BTreeMap;

    /// The graph's keys by stage and step index.
    fn keys_by_step(g: &BuildGraph) -> BTreeMap<(String, usize), Digest> {
        g.graph
            .node_weights()
            .map(|n| ((n.info.stage_name.clone(), n.info.index), n.key))
            .collect()
    }

    /// Context files as a table: path -> content.
    struct Files(BTreeMap<String, String>);

    impl SourceDigests for Files {
        fn context(
            &self,
            patterns: &[String],
            _excludes: &[String],
        ) -> Result<(Digest, Vec<FileInput>), Inner> {
            let mut files = Vec::new();
            for p in patterns {
                let p = p.trim_start_matches('/');
                let hits: Vec<_> = self
                    .0
                    .iter()
                    .filter(|(k, _)| p == "." || *k == p || k.starts_with(&format!("{p}/")))
                    .collect();
                if hits.is_empty() {
                    return Err(format!("{p}: not found").into());
                }
                for (k, v) in hits {
                    files.push(FileInput {
                        path: k.clone(),
                        digest: Digest::of_bytes(v.as_bytes()),
                    });
                }
            }
            let mut h = rbuild_cache::Hasher::new();
            for f in &files {
                h.update(f.path.as_bytes());
                h.update(f.digest.as_raw());
            }
            Ok((h.finish(), files))
        }

        fn url(&self, url: &str, _checksum: Option<&str>) -> Result<Digest, Inner> {
            Ok(Digest::of_bytes(url.as_bytes()))
        }
    }

    fn files(pairs: &[(&str, &str)]) -> Files {
        Files(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    const DF: &str = "FROM scratch AS build\nCOPY src /src\nRUN make\nFROM scratch\nCOPY a.txt /a\nENV X=1\nCOPY b.txt /b\nCOPY --from=build /out /out\n";

    fn keys(args: &[(&str, &str)], f: &Files) -> BTreeMap<(String, usize), Digest> {
        let p = plan_text(DF, args, None, &no_images).unwrap();
        keys_by_step(&build_graph(&p, "linux/amd64", f).unwrap())
    }

    fn changed(
        a: &BTreeMap<(String, usize), Digest>,
        b: &BTreeMap<(String, usize), Digest>,
    ) -> Vec<String> {
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(*v))
            .map(|((s, i), _)| format!("{s}/{i}"))
            .collect()
    }

    #[test]
    fn keys_are_stable_and_touching_a_file_invalidates_from_its_copy() {
        let base = files(&[("a.txt", "a"), ("b.txt", "b"), ("src/m.c", "m")]);
        let k1 = keys(&[], &base);
        assert_eq!(k1, keys(&[], &base));
        assert_eq!(k1.len(), 8);
        // b.txt changes: only the COPY that selects it and what follows.
        let k2 = keys(
            &[],
            &files(&[("a.txt", "a"), ("b.txt", "B"), ("src/m.c", "m")]),
        );
        assert_eq!(changed(&k1, &k2), vec!["stage-1/4", "stage-1/5"]);
        // A source of the other stage: that stage from its COPY, and the
        // COPY --from that reads it.
        let k3 = keys(
            &[],
            &files(&[("a.txt", "a"), ("b.txt", "b"), ("src/m.c", "M")]),
        );
        assert_eq!(changed(&k1, &k3), vec!["build/2", "build/3", "stage-1/5"]);
    }

    #[test]
    fn build_arg_feeding_env_invalidates_later_copy() {
        let df = "FROM scratch\nARG V=1\nENV E=$V\nCOPY a.txt /a\n";
        let f = files(&[("a.txt", "a")]);
        let g = |args: &[(&str, &str)]| {
            let p = plan_text(df, args, None, &no_images).unwrap();
            keys_by_step(&build_graph(&p, "linux/amd64", &f).unwrap())
        };
        let (k1, k2) = (g(&[]), g(&[("V", "2")]));
        assert_eq!(
            changed(&k1, &k2),
            vec!["stage-0/2", "stage-0/3", "stage-0/4"]
        );
    }

    #[test]
    fn missing_copy_source_names_the_step() {
        let p = plan_text("FROM scratch\nCOPY nope /x\n", &[], None, &no_images).unwrap();
        let e = build_graph(&p, "linux/amd64", &files(&[])).unwrap_err();
        match e {
            BuildError::CopySource { step, .. } => {
                assert_eq!(step.line, 2);
                assert_eq!(step.instruction, "COPY nope /x");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn dot_labels_escape_quotes_and_backslashes() {
        assert_eq!(
            dot_label(&[r#"RUN printf "a\nb""#, "to run"]),
            r#""RUN printf \"a\\nb\"\nto run""#
        );
        assert_eq!(shorten(&"x".repeat(61)), format!("{}...", "x".repeat(60)));
    }

    #[test]
    fn graph_has_from_edges_and_renders_dot() {
        let p = plan_text(DF, &[], None, &no_images).unwrap();
        let g = build_graph(
            &p,
            "linux/amd64",
            &files(&[("a.txt", "a"), ("b.txt", "b"), ("src/m.c", "m")]),
        )
        .unwrap();
        let from_edges = g
            .graph
            .edge_weights()
            .filter(|e| **e == Edge::CopyFrom)
            .count();
        assert_eq!(from_edges, 1);
        assert!(petgraph::algo::toposort(&g.graph, None).is_ok());
        let build_last = g.stages[0].last().unwrap().index();
        let copy_from = g.stages[1].last().unwrap().index();
        let first_copy = g.graph[g.stages[1][1]].key;
        let dot = g.to_dot(&|k| *k == first_copy);
        assert!(
            dot.contains("subgraph cluster_0 {\n    label=\"build\";"),
            "{dot}"
        );
        assert!(dot.contains("label=\"stage-1 (target)\""), "{dot}");
        assert!(
            dot.contains(&format!("n{build_last} -> n{copy_from} [style=dashed];")),
            "{dot}"
        );
        assert!(
            dot.contains("[label=\"[stage-1 2/5] COPY a.txt /a\\nCACHED\", style=filled"),
            "{dot}"
        );
        assert!(
            dot.contains("[label=\"[stage-1 3/5] ENV X=1\\nto run\"]"),
            "{dot}"
        );
        // The cached COPY and the two FROMs.
        assert_eq!(dot.matches("CACHED").count(), 3, "{dot}");
    }
}
