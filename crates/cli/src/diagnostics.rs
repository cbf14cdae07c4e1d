//! Rendering build failures for people: parse and check errors as
//! `Dockerfile:LINE:COL: message` with the source line and a caret (the
//! parser's renderer), failing steps with their stage, step, instruction,
//! exit status and last output lines.

use rbuild_parser::{ErrorKind, ParseError};
use rbuild_solver::{BuildError, StepLocation};

/// How many trailing output lines of a failed RUN are shown.
const OUTPUT_TAIL: usize = 10;

/// The Dockerfile a build read, for locating errors in it.
pub struct DockerfileText<'a> {
    /// The name shown in messages (`Dockerfile`, `sub/Dockerfile.dev`).
    pub name: &'a str,
    /// Its text, when it could be read.
    pub text: Option<&'a str>,
}

/// Renders a build error as the multi-line message printed after `error: `.
pub fn render_build_error(err: &BuildError, file: &DockerfileText<'_>) -> String {
    let located = |line: usize, message: String| -> String {
        let text = file.text.unwrap_or("");
        let column = rbuild_parser::source_line(text, line).map_or(1, |l| {
            l.chars().take_while(|c| c.is_whitespace()).count() + 1
        });
        ParseError {
            line,
            column,
            end_line: line,
            kind: ErrorKind::Invalid,
            message,
        }
        .render(file.name, text)
    };
    let at_step = |step: &StepLocation, message: String| -> String {
        let message = format!(
            "[{} {}/{}] {}: {message}",
            step.stage, step.index, step.count, step.instruction
        );
        if step.line > 0 {
            located(step.line, message)
        } else {
            // ONBUILD triggers of a base image have no line in this file.
            format!("{}: {message}\n", file.name)
        }
    };
    let out = match err {
        BuildError::Parse { source, .. } => match source.downcast_ref::<ParseError>() {
            Some(p) => p.render(file.name, file.text.unwrap_or("")),
            None => format!("{}: {source}\n", file.name),
        },
        BuildError::Invalid { line, message } | BuildError::Expansion { line, message } => {
            located(*line, message.clone())
        }
        BuildError::UnknownFrom { line, reference } => located(
            *line,
            format!("{reference:?} is not a build stage defined before this one, nor an image in the store"),
        ),
        BuildError::Circular { line, stage } => {
            located(*line, format!("circular dependency on stage {stage:?}"))
        }
        BuildError::BaseImageNotFound { line, image } => located(
            *line,
            format!("base image {image:?} not found in the local store nor in its registry"),
        ),
        BuildError::Pull {
            line,
            image,
            source,
        } => located(
            *line,
            format!(
                "pulling base image {image:?}: {}",
                error_chain(source.as_ref())
            ),
        ),
        BuildError::CopySource { step, source } | BuildError::Step { step, source } => {
            at_step(step, error_chain(source.as_ref()))
        }
        BuildError::RunFailed {
            step,
            reason,
            output_tail,
        } => {
            let mut out = at_step(
                step,
                format!("process did not complete successfully: {reason}"),
            );
            let skip = output_tail.len().saturating_sub(OUTPUT_TAIL);
            if output_tail.len() > skip {
                out.push_str("last output:\n");
                for line in &output_tail[skip..] {
                    out.push_str("  ");
                    out.push_str(line);
                    out.push('\n');
                }
            }
            out
        }
        other => format!("{}\n", error_chain(other)),
    };
    out.trim_end().to_string()
}

/// An error and its sources, `outer: inner: innermost`, skipping a source
/// whose text the outer message already contains.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbuild_solver::ExitReason;

    const SRC: &str = "FROM scratch\n\n  COPY missing /x\nRUN false\n";

    fn file() -> DockerfileText<'static> {
        DockerfileText {
            name: "Dockerfile",
            text: Some(SRC),
        }
    }

    #[test]
    fn line_errors_show_the_line_and_a_caret() {
        let err = BuildError::BaseImageNotFound {
            line: 1,
            image: "nope:1".into(),
        };
        let out = render_build_error(&err, &file());
        assert_eq!(
            out,
            "Dockerfile:1:1: base image \"nope:1\" not found in the local store nor in its registry\n   1 | FROM scratch\n     | ^"
        );
    }

    #[test]
    fn step_errors_name_stage_step_and_source() {
        let step = StepLocation {
            stage: "stage-0".into(),
            index: 2,
            count: 3,
            instruction: "COPY missing /x".into(),
            line: 3,
        };
        let err = BuildError::CopySource {
            step,
            source: "source \"missing\" not found in the build context".into(),
        };
        let out = render_build_error(&err, &file());
        let mut lines = out.lines();
        assert_eq!(
            lines.next().unwrap(),
            "Dockerfile:3:3: [stage-0 2/3] COPY missing /x: source \"missing\" not found in the build context"
        );
        assert_eq!(lines.next().unwrap(), "   3 |   COPY missing /x");
        assert_eq!(lines.next().unwrap(), "     |   ^");
    }

    #[test]
    fn run_failures_show_exit_status_and_output_tail() {
        let step = StepLocation {
            stage: "build".into(),
            index: 3,
            count: 3,
            instruction: "RUN false".into(),
            line: 4,
        };
        let err = BuildError::RunFailed {
            step,
            reason: ExitReason::Code(1),
            output_tail: (0..15).map(|i| format!("line {i}")).collect(),
        };
        let out = render_build_error(&err, &file());
        assert!(out.starts_with("Dockerfile:4:1: [build 3/3] RUN false: process did not complete successfully: exit code 1\n"));
        assert!(out.contains("last output:\n  line 5\n"), "{out}");
        assert!(!out.contains("  line 4\n"), "{out}");
        assert!(out.ends_with("  line 14"));
    }
}
