//! `--explain`: the build record kept under `<root>/history/` for each
//! Dockerfile and target, and the comparison of a step's [`KeyInputs`] with
//! the same step of the previous build, which says why a step missed the
//! cache.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rbuild_cache::Digest;
use serde::{Deserialize, Serialize};

use crate::key::{KeyInputs, ParentInput, SourceInput};

/// A variable whose value differs between two builds (`None`: unset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VarChange {
    /// The name.
    pub name: String,
    /// The value in the previous build.
    pub old: Option<String>,
    /// The value now.
    pub new: Option<String>,
}

/// A source file whose digest differs between two builds (`None`: the
/// file was not selected).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    /// Path relative to the context root.
    pub path: String,
    /// Digest in the previous build.
    pub old: Option<Digest>,
    /// Digest now.
    pub new: Option<Digest>,
}

/// One way a step's key inputs differ from the previous build's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    /// The instruction text (after expansion) changed.
    Instruction {
        /// Before.
        old: String,
        /// Now.
        new: String,
    },
    /// Context files selected by COPY/ADD (or a bind mount) changed.
    Files {
        /// The changed paths.
        changes: Vec<FileChange>,
    },
    /// Another source changed: a `--from` stage or image, a URL's content,
    /// an inline file.
    Source {
        /// Before, described.
        old: String,
        /// Now, described.
        new: String,
    },
    /// Build args in scope changed.
    BuildArgs {
        /// The changed args.
        changes: Vec<VarChange>,
    },
    /// ENV changed.
    Env {
        /// The changed variables.
        changes: Vec<VarChange>,
    },
    /// WORKDIR, USER, SHELL, network or platform changed.
    Config {
        /// Which (`workdir`, `user`, `shell`, `network`, `platform`).
        field: String,
        /// Before.
        old: String,
        /// Now.
        new: String,
    },
    /// The parent (previous step, base image or source stage) changed.
    Parent {
        /// Before.
        old: ParentInput,
        /// Now.
        new: ParentInput,
    },
}

/// Why a step was or was not cached, for `--explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepExplain {
    /// The inputs of the step's key.
    pub inputs: KeyInputs,
    /// Whether the previous build of this Dockerfile and target had a step
    /// at this position to compare with.
    pub has_previous: bool,
    /// Differences from that step, the step's own inputs first and the
    /// parent last (the first entry is the first difference). Empty for a
    /// step whose inputs did not change.
    pub differences: Vec<Difference>,
}

fn var_changes(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<VarChange> {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    names
        .into_iter()
        .filter(|n| old.get(*n) != new.get(*n))
        .map(|n| VarChange {
            name: n.clone(),
            old: old.get(n).cloned(),
            new: new.get(n).cloned(),
        })
        .collect()
}

fn describe_source(s: &SourceInput) -> String {
    match s {
        SourceInput::Context {
            patterns, digest, ..
        } => format!("context {} ({digest})", patterns.join(" ")),
        SourceInput::Stage { stage, key, paths } => {
            format!("stage {stage} {} (key {key})", paths.join(" "))
        }
        SourceInput::Image {
            name,
            digest,
            paths,
        } => format!("image {name}@{digest} {}", paths.join(" ")),
        SourceInput::Url { url, digest } => format!("{url} ({digest})"),
        SourceInput::Inline { name, digest } => format!("inline {name} ({digest})"),
    }
}

fn file_changes(old: &[SourceInput], new: &[SourceInput]) -> Vec<FileChange> {
    let files = |v: &[SourceInput]| -> BTreeMap<String, Digest> {
        v.iter()
            .flat_map(|s| match s {
                SourceInput::Context { files, .. } => files.as_slice(),
                _ => &[],
            })
            .map(|f| (f.path.clone(), f.digest))
            .collect()
    };
    let (old, new) = (files(old), files(new));
    let paths: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    paths
        .into_iter()
        .filter(|p| old.get(*p) != new.get(*p))
        .map(|p| FileChange {
            path: p.clone(),
            old: old.get(p).copied(),
            new: new.get(p).copied(),
        })
        .collect()
}

/// The differences between the previous inputs of a step and the current
/// ones, the step's own inputs first, the parent last.
pub fn compare(old: &KeyInputs, new: &KeyInputs) -> Vec<Difference> {
    let mut out = Vec::new();
    if old.instruction != new.instruction {
        out.push(Difference::Instruction {
            old: old.instruction.clone(),
            new: new.instruction.clone(),
        });
    }
    let changes = file_changes(&old.sources, &new.sources);
    if !changes.is_empty() {
        out.push(Difference::Files { changes });
    }
    // Sources other than context file lists: compare pairwise by position
    // with their digests (context selections are covered by the file list,
    // unless only their patterns or metadata-only entries changed).
    let n = old.sources.len().max(new.sources.len());
    for i in 0..n {
        let (o, w) = (old.sources.get(i), new.sources.get(i));
        let same = match (o, w) {
            (
                Some(SourceInput::Context {
                    patterns: p1,
                    digest: d1,
                    ..
                }),
                Some(SourceInput::Context {
                    patterns: p2,
                    digest: d2,
                    ..
                }),
            ) => {
                p1 == p2 && (d1 == d2 || out.iter().any(|d| matches!(d, Difference::Files { .. })))
            }
            (a, b) => a == b,
        };
        if !same {
            out.push(Difference::Source {
                old: o.map(describe_source).unwrap_or_else(|| "none".into()),
                new: w.map(describe_source).unwrap_or_else(|| "none".into()),
            });
        }
    }
    let changes = var_changes(&old.args, &new.args);
    if !changes.is_empty() {
        out.push(Difference::BuildArgs { changes });
    }
    let changes = var_changes(&old.env, &new.env);
    if !changes.is_empty() {
        out.push(Difference::Env { changes });
    }
    let fields = [
        ("workdir", &old.workdir, &new.workdir),
        ("user", &old.user, &new.user),
        ("network", &old.network, &new.network),
        ("platform", &old.platform, &new.platform),
    ];
    for (field, o, n) in fields {
        if o != n {
            out.push(Difference::Config {
                field: field.into(),
                old: o.clone(),
                new: n.clone(),
            });
        }
    }
    if old.shell != new.shell {
        out.push(Difference::Config {
            field: "shell".into(),
            old: old.shell.join(" "),
            new: new.shell.join(" "),
        });
    }
    if old.parent != new.parent {
        out.push(Difference::Parent {
            old: old.parent.clone(),
            new: new.parent.clone(),
        });
    }
    out
}

/// One step in a build record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedStep {
    /// Stage name (`AS name` or `stage-N`).
    pub stage: String,
    /// 1-based index within the stage.
    pub index: usize,
    /// The step's key inputs.
    pub inputs: KeyInputs,
}

/// The per-step key inputs of one build of a Dockerfile and target, kept
/// under `<root>/history/` so the next build can explain its misses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    /// Every step that was looked up or run.
    pub steps: Vec<RecordedStep>,
}

impl BuildRecord {
    /// The record file for a Dockerfile identity (its absolute path or
    /// display name plus the context) and target.
    pub fn path(root: &Path, identity: &str, target: &str) -> PathBuf {
        let mut h = rbuild_cache::Hasher::new();
        for part in [identity, target] {
            h.update(&(part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        root.join("history")
            .join(format!("{}.json", h.finish().hex()))
    }

    /// Writes the record of a build's steps (stage name, 1-based index, key
    /// inputs), unless the record on disk already holds the same: a no-op
    /// rebuild of a big context then neither serialises megabytes of JSON
    /// nor rewrites them. The check reads only a small fingerprint file
    /// beside the record, written after it.
    pub fn store(path: &Path, steps: &[(&str, usize, &KeyInputs)]) -> rbuild_cache::Result<()> {
        let mut h = rbuild_cache::Hasher::new();
        for (stage, index, inputs) in steps {
            h.update_field(stage.as_bytes());
            h.update(&(*index as u64).to_le_bytes());
            h.update(inputs.key().as_raw());
            // Image names are shown by --explain but are not in the key;
            // per-file digests are, through each selection's digest.
            let sources = inputs.sources.iter().filter_map(|s| match s {
                SourceInput::Image { name, .. } => Some(name),
                _ => None,
            });
            let parent = match &inputs.parent {
                ParentInput::Image { name, .. } => Some(name),
                _ => None,
            };
            for name in parent.into_iter().chain(sources) {
                h.update_field(name.as_bytes());
            }
        }
        let fingerprint = h.finish().hex();
        let sum_path = path.with_extension("sum");
        if std::fs::read(&sum_path).ok().as_deref() == Some(fingerprint.as_bytes()) {
            return Ok(());
        }
        let record = BuildRecord {
            steps: steps
                .iter()
                .map(|(stage, index, inputs)| RecordedStep {
                    stage: stage.to_string(),
                    index: *index,
                    inputs: (*inputs).clone(),
                })
                .collect(),
        };
        let json = serde_json::to_vec(&record).expect("a build record serialises");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| rbuild_cache::Error::io("create directory", dir, e))?;
        }
        rbuild_cache::write_atomic(path, &json)?;
        rbuild_cache::write_atomic(&sum_path, fingerprint.as_bytes())
    }

    /// Reads a record; a missing or unreadable one is an empty record (it
    /// only feeds explanations, never results).
    pub fn load(path: &Path) -> BuildRecord {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The recorded step at this position, if any.
    pub fn step(&self, stage: &str, index: usize) -> Option<&RecordedStep> {
        self.steps
            .iter()
            .find(|s| s.stage == stage && s.index == index)
    }

    /// Explains a step's key inputs against this (previous) record.
    pub fn explain(&self, stage: &str, index: usize, inputs: &KeyInputs) -> StepExplain {
        let prev = self.step(stage, index);
        StepExplain {
            inputs: inputs.clone(),
            has_previous: prev.is_some(),
            differences: prev.map(|p| compare(&p.inputs, inputs)).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::tests::sample;
    use crate::key::FileInput;

    #[test]
    fn unchanged_has_no_differences() {
        assert!(compare(&sample(), &sample()).is_empty());
    }

    #[test]
    fn changed_file_is_named_with_both_digests() {
        let mut new = sample();
        let nd = Digest::of_bytes(b"new");
        new.sources = vec![SourceInput::Context {
            patterns: vec!["a".into()],
            digest: Digest::of_bytes(b"sel2"),
            files: vec![FileInput {
                path: "a".into(),
                digest: nd,
            }],
        }];
        let d = compare(&sample(), &new);
        assert_eq!(
            d,
            vec![Difference::Files {
                changes: vec![FileChange {
                    path: "a".into(),
                    old: Some(Digest::of_bytes(b"a")),
                    new: Some(nd),
                }]
            }]
        );
    }

    #[test]
    fn own_changes_come_before_parent() {
        let mut new = sample();
        new.args.insert("B".into(), "2".into());
        new.args.remove("A");
        new.parent = ParentInput::Step {
            key: Digest::of_bytes(b"p"),
        };
        let d = compare(&sample(), &new);
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[0],
            Difference::BuildArgs {
                changes: vec![
                    VarChange {
                        name: "A".into(),
                        old: Some("1".into()),
                        new: None
                    },
                    VarChange {
                        name: "B".into(),
                        old: None,
                        new: Some("2".into())
                    },
                ]
            }
        );
        assert!(matches!(d[1], Difference::Parent { .. }));
    }

    #[test]
    fn record_round_trip_and_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let path = BuildRecord::path(dir.path(), "/ctx/Dockerfile", "");
        assert_ne!(path, BuildRecord::path(dir.path(), "/ctx/Dockerfile", "t"));
        assert_eq!(BuildRecord::load(&path), BuildRecord::default());
        let rec = BuildRecord {
            steps: vec![RecordedStep {
                stage: "stage-0".into(),
                index: 2,
                inputs: sample(),
            }],
        };
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();
        let back = BuildRecord::load(&path);
        assert_eq!(back, rec);
        let mut now = sample();
        now.env.insert("E".into(), "x".into());
        let e = back.explain("stage-0", 2, &now);
        assert!(e.has_previous);
        assert_eq!(e.differences.len(), 1);
        assert!(!back.explain("stage-0", 3, &now).has_previous);
    }
}
