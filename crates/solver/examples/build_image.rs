//! Builds a Dockerfile through rbuild's library API and prints the image
//! digest.
//!
//! ```sh
//! cargo run -p rbuild-solver --example build_image -- examples/hello /tmp/rbuild-store
//! ```
//!
//! Arguments: the context directory (its `Dockerfile` is used) and the
//! store root (default `$RBUILD_ROOT`, else `/tmp/rbuild-example`).

use std::process::ExitCode;

use rbuild_solver::{build, BuildRequest, ProgressEvent, ProgressSink};

/// Prints one line per finished or cached step.
struct Lines;

impl ProgressSink for Lines {
    fn event(&self, event: ProgressEvent<'_>) {
        match event {
            ProgressEvent::Cached(s) => eprintln!("{} {} CACHED", s.label(), s.instruction),
            ProgressEvent::Finished(s, d) => {
                eprintln!(
                    "{} {} DONE {:.2}s",
                    s.label(),
                    s.instruction,
                    d.as_secs_f64()
                )
            }
            ProgressEvent::Output(_, data) => eprint!("{}", String::from_utf8_lossy(data)),
            ProgressEvent::Warning(w) => eprintln!("WARNING: {w}"),
            _ => {}
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let context = args.next().unwrap_or_else(|| "examples/hello".into());
    let root = args
        .next()
        .or_else(|| std::env::var("RBUILD_ROOT").ok())
        .unwrap_or_else(|| "/tmp/rbuild-example".into());
    let request = BuildRequest::new(context, root);
    match build(&request, &Lines) {
        Ok(result) => {
            println!("{}", result.manifest_digest);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
