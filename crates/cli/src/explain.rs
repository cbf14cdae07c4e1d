//! `--explain` rendering: the solver's per-step key inputs and differences
//! from the previous build, as text for people or one JSON document for
//! tools.

use std::fmt::Write as _;

use rbuild_solver::{
    BuildResult, Difference, KeyInputs, ParentInput, SourceInput, StepReport, StepStatus, VarChange,
};
use serde::Serialize;

/// How many selected files a text explanation lists per source before
/// summarising the rest (a `COPY . /app` may select thousands).
const MAX_FILES_LISTED: usize = 20;

/// The JSON document of `--explain=json`.
#[derive(Serialize)]
struct ExplainDoc<'a> {
    /// The image ID (config digest).
    image_id: String,
    /// The manifest digest.
    manifest_digest: String,
    /// The stage built.
    target: &'a str,
    /// Every step with its status, key and explanation.
    steps: &'a [StepReport],
}

/// The `--explain=json` document for a finished build.
pub fn to_json(result: &BuildResult) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&ExplainDoc {
        image_id: result.config_digest.to_string(),
        manifest_digest: result.manifest_digest.to_string(),
        target: &result.target,
        steps: &result.steps,
    })
}

/// The text explanation of a finished build.
pub fn to_text(result: &BuildResult) -> String {
    let mut out = String::new();
    for step in &result.steps {
        write_step(&mut out, step);
    }
    out
}

fn write_step(out: &mut String, step: &StepReport) {
    let status = match step.status {
        StepStatus::Cached => "CACHED",
        StepStatus::Executed => "EXECUTED",
    };
    let _ = writeln!(
        out,
        "#{} {} {}: {status}",
        step.info.id,
        step.info.label(),
        step.info.instruction
    );
    let _ = writeln!(out, "    key: {}", step.key);
    let Some(explain) = &step.explain else {
        return;
    };
    write_inputs(out, &explain.inputs);
    if step.status == StepStatus::Cached {
        return;
    }
    if !explain.has_previous {
        let _ = writeln!(
            out,
            "    why: no previous build of this step to compare with"
        );
    } else if explain.differences.is_empty() {
        let _ = writeln!(
            out,
            "    why: inputs unchanged (cache entry missing, or --no-cache)"
        );
    } else {
        for (i, d) in explain.differences.iter().enumerate() {
            let lead = if i == 0 { "why:" } else { "    " };
            write_difference(out, lead, d);
        }
    }
}

fn describe_parent(p: &ParentInput) -> String {
    match p {
        ParentInput::Scratch => "scratch".into(),
        ParentInput::Image { name, digest } => format!("image {name} ({digest})"),
        ParentInput::Step { key } => format!("step {key}"),
    }
}

fn vars(m: &std::collections::BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn write_inputs(out: &mut String, k: &KeyInputs) {
    let _ = writeln!(out, "    parent: {}", describe_parent(&k.parent));
    let _ = writeln!(out, "    platform: {}", k.platform);
    if !k.workdir.is_empty() {
        let _ = writeln!(out, "    workdir: {}", k.workdir);
    }
    if !k.user.is_empty() {
        let _ = writeln!(out, "    user: {}", k.user);
    }
    if !k.network.is_empty() {
        let _ = writeln!(out, "    network: {}", k.network);
    }
    if !k.args.is_empty() {
        let _ = writeln!(out, "    args: {}", vars(&k.args));
    }
    if !k.env.is_empty() {
        let _ = writeln!(out, "    env: {}", vars(&k.env));
    }
    for s in &k.sources {
        match s {
            SourceInput::Context {
                patterns,
                digest,
                files,
            } => {
                let _ = writeln!(
                    out,
                    "    source: context {} -> {digest} ({} files)",
                    patterns.join(" "),
                    files.len()
                );
                for f in files.iter().take(MAX_FILES_LISTED) {
                    let _ = writeln!(out, "        {} {}", f.path, f.digest);
                }
                if files.len() > MAX_FILES_LISTED {
                    let _ = writeln!(
                        out,
                        "        ... and {} more",
                        files.len() - MAX_FILES_LISTED
                    );
                }
            }
            SourceInput::Stage { stage, key, paths } => {
                let _ = writeln!(
                    out,
                    "    source: stage {stage} {} (key {key})",
                    paths.join(" ")
                );
            }
            SourceInput::Image {
                name,
                digest,
                paths,
            } => {
                let _ = writeln!(
                    out,
                    "    source: image {name} ({digest}) {}",
                    paths.join(" ")
                );
            }
            SourceInput::Url { url, digest } => {
                let _ = writeln!(out, "    source: {url} -> {digest}");
            }
            SourceInput::Inline { name, digest } => {
                let _ = writeln!(out, "    source: inline {name} -> {digest}");
            }
        }
    }
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "(none)".to_string(), T::to_string)
}

fn write_vars(out: &mut String, lead: &str, what: &str, changes: &[VarChange]) {
    for c in changes {
        let _ = writeln!(
            out,
            "    {lead} {what} {}: {} -> {}",
            c.name,
            opt(&c.old),
            opt(&c.new)
        );
    }
}

fn write_difference(out: &mut String, lead: &str, d: &Difference) {
    match d {
        Difference::Instruction { old, new } => {
            let _ = writeln!(out, "    {lead} instruction changed: {old:?} -> {new:?}");
        }
        Difference::Files { changes } => {
            for c in changes {
                let _ = writeln!(
                    out,
                    "    {lead} file {} changed: {} -> {}",
                    c.path,
                    opt(&c.old),
                    opt(&c.new)
                );
            }
        }
        Difference::Source { old, new } => {
            let _ = writeln!(out, "    {lead} source changed: {old} -> {new}");
        }
        Difference::BuildArgs { changes } => write_vars(out, lead, "build arg", changes),
        Difference::Env { changes } => write_vars(out, lead, "env", changes),
        Difference::Config { field, old, new } => {
            let _ = writeln!(out, "    {lead} {field} changed: {old:?} -> {new:?}");
        }
        Difference::Parent { old, new } => {
            let _ = writeln!(
                out,
                "    {lead} parent changed: {} -> {}",
                describe_parent(old),
                describe_parent(new)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbuild_cache::Digest;
    use rbuild_solver::{FileChange, FileInput, StepExplain, StepInfo};
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn report(status: StepStatus, differences: Vec<Difference>) -> StepReport {
        let inputs = KeyInputs {
            parent: ParentInput::Scratch,
            platform: "linux/amd64".into(),
            instruction: "COPY a.txt /a".into(),
            args: BTreeMap::from([("V".into(), "1".into())]),
            env: BTreeMap::new(),
            workdir: "/".into(),
            user: String::new(),
            shell: vec![],
            network: String::new(),
            sources: vec![SourceInput::Context {
                patterns: vec!["a.txt".into()],
                digest: Digest::of_bytes(b"sel"),
                files: vec![FileInput {
                    path: "a.txt".into(),
                    digest: Digest::of_bytes(b"new"),
                }],
            }],
        };
        StepReport {
            info: StepInfo {
                id: 2,
                stage_index: 0,
                stage_name: "stage-0".into(),
                multi_stage: false,
                named: false,
                index: 2,
                count: 2,
                instruction: "COPY a.txt /a".into(),
                line: 2,
            },
            status,
            duration: Duration::from_millis(5),
            key: inputs.key(),
            layer: None,
            explain: Some(StepExplain {
                inputs,
                has_previous: true,
                differences,
            }),
        }
    }

    #[test]
    fn a_miss_names_the_changed_file_with_both_digests() {
        let (old, new) = (Digest::of_bytes(b"old"), Digest::of_bytes(b"new"));
        let r = report(
            StepStatus::Executed,
            vec![Difference::Files {
                changes: vec![FileChange {
                    path: "a.txt".into(),
                    old: Some(old),
                    new: Some(new),
                }],
            }],
        );
        let mut text = String::new();
        write_step(&mut text, &r);
        assert!(
            text.starts_with("#2 [2/2] COPY a.txt /a: EXECUTED\n"),
            "{text}"
        );
        assert!(text.contains("    args: V=1\n"), "{text}");
        assert!(text.contains("        a.txt sha256:"), "{text}");
        assert!(
            text.contains(&format!("    why: file a.txt changed: {old} -> {new}\n")),
            "{text}"
        );
    }

    #[test]
    fn a_hit_has_no_why() {
        let mut text = String::new();
        write_step(&mut text, &report(StepStatus::Cached, vec![]));
        assert!(text.contains(": CACHED\n"));
        assert!(!text.contains("why:"));
    }

    #[test]
    fn json_document_carries_ids_and_steps() {
        let d = Digest::of_bytes(b"m");
        let result = BuildResult {
            manifest_digest: d,
            config_digest: d,
            target: "stage-0".into(),
            steps: vec![report(StepStatus::Cached, vec![])],
            warnings: vec![],
        };
        let v: serde_json::Value = serde_json::from_str(&to_json(&result).unwrap()).unwrap();
        assert_eq!(v["image_id"], d.to_string());
        assert_eq!(v["steps"][0]["status"], "cached");
        assert_eq!(
            v["steps"][0]["explain"]["inputs"]["instruction"],
            "COPY a.txt /a"
        );
    }
}
