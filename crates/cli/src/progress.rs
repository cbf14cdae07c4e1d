//! Rendering build progress on stderr: BuildKit-style plain lines for logs,
//! a live indicatif view for terminals, or nothing (`-q`). The solver emits
//! [`ProgressEvent`]s; this module only draws them.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use rbuild_solver::{ProgressEvent, ProgressSink, StepInfo};

/// How many output lines of a running step the tty view keeps on screen.
const TTY_TAIL_LINES: usize = 5;

/// The progress renderer chosen by `--progress`.
pub enum Progress {
    /// Nothing at all (`-q`, `--progress quiet`).
    Quiet,
    /// BuildKit-like `#N ...` lines.
    Plain(Mutex<Plain>),
    /// A live terminal view.
    Tty(Box<Tty>),
}

impl Progress {
    /// A quiet renderer.
    pub fn quiet() -> Progress {
        Progress::Quiet
    }

    /// A plain renderer writing to stderr.
    pub fn plain() -> Progress {
        Progress::Plain(Mutex::new(Plain::new(Box::new(std::io::stderr()))))
    }

    /// A live view on stderr.
    pub fn tty() -> Progress {
        Progress::Tty(Box::new(Tty::new()))
    }

    /// Reports the export phase's extra work done by the CLI after the solver
    /// returned (`naming to NAME`, `writing oci archive to F`).
    pub fn export_line(&self, text: &str) {
        match self {
            Progress::Quiet => {}
            Progress::Plain(p) => lock(p).export_line(text),
            Progress::Tty(t) => t.export_line(text),
        }
    }

    /// Ends the display: closes the export step and prints the summary.
    pub fn finish(&self, summary: &Summary) {
        match self {
            Progress::Quiet => {}
            Progress::Plain(p) => lock(p).finish(summary),
            Progress::Tty(t) => t.finish(summary),
        }
    }

    /// Stops the display after a failed build, leaving what was drawn.
    pub fn abandon(&self) {
        if let Progress::Tty(t) = self {
            t.abandon();
        }
    }
}

/// Numbers for the closing summary line.
#[derive(Debug, Default)]
pub struct Summary {
    /// Steps that ran.
    pub executed: usize,
    /// Steps served from the cache.
    pub cached: usize,
    /// Wall time of the whole command.
    pub elapsed: Duration,
}

impl ProgressSink for Progress {
    fn event(&self, event: ProgressEvent<'_>) {
        match self {
            Progress::Quiet => {}
            Progress::Plain(p) => lock(p).event(event),
            Progress::Tty(t) => t.event(event),
        }
    }
}

/// A poisoned lock only means another thread panicked while drawing; the
/// display state is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The width of the terminal on stderr (80 when it cannot be told).
fn term_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize struct owned by this frame.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        80
    }
}

/// `line` cut to `width` characters, ending in `...` when cut.
fn fit(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    let keep = width.saturating_sub(3);
    let mut out: String = line.chars().take(keep).collect();
    out.push_str("...");
    out
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The plain, line-oriented renderer. Each step gets BuildKit's `#N` prefix;
/// the export phase takes the number after the last step.
pub struct Plain {
    out: Box<dyn Write + Send>,
    start: Instant,
    /// Partial output lines per step, until their newline arrives.
    partial: HashMap<usize, Vec<u8>>,
    /// Step start times, for `DONE` durations and output timestamps.
    started: HashMap<usize, Instant>,
    last_id: usize,
    export: Option<(usize, Instant)>,
}

impl Plain {
    fn new(out: Box<dyn Write + Send>) -> Plain {
        Plain {
            out,
            start: Instant::now(),
            partial: HashMap::new(),
            started: HashMap::new(),
            last_id: 0,
            export: None,
        }
    }

    fn header(&mut self, step: &StepInfo) {
        self.last_id = self.last_id.max(step.id);
        let _ = writeln!(
            self.out,
            "\n#{} {} {}",
            step.id,
            step.label(),
            step.instruction
        );
    }

    fn event(&mut self, event: ProgressEvent<'_>) {
        // Write errors on stderr are not worth failing a build for.
        match event {
            ProgressEvent::Planned { .. } => {}
            ProgressEvent::Started(step) => {
                self.started.insert(step.id, Instant::now());
                self.header(step);
            }
            ProgressEvent::Cached(step) => {
                self.header(step);
                let _ = writeln!(self.out, "#{} CACHED", step.id);
            }
            ProgressEvent::Output(step, bytes) => {
                let t0 = self.started.get(&step.id).copied().unwrap_or(self.start);
                let stamp = t0.elapsed().as_secs_f64();
                let buf = self.partial.entry(step.id).or_default();
                buf.extend_from_slice(bytes);
                let mut lines = Vec::new();
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    lines.push(String::from_utf8_lossy(&line[..nl]).into_owned());
                }
                for line in lines {
                    let _ = writeln!(self.out, "#{} {stamp:.3} {line}", step.id);
                }
            }
            ProgressEvent::Finished(step, took) => {
                self.flush_partial(step.id);
                let _ = writeln!(self.out, "#{} DONE {}", step.id, secs(took));
            }
            ProgressEvent::Failed(step, message) => {
                self.flush_partial(step.id);
                let _ = writeln!(self.out, "#{} ERROR: {message}", step.id);
            }
            ProgressEvent::Warning(message) => {
                let _ = writeln!(self.out, "\nWARNING: {message}");
            }
            // Pulls happen before the steps are numbered: they are #0.
            ProgressEvent::Pulling { image, platform } => {
                let _ = writeln!(self.out, "#0 pulling {image} for {platform}");
            }
            ProgressEvent::Pulled { image, manifest } => {
                let _ = writeln!(self.out, "#0 pulled {image}@{manifest} done");
            }
            ProgressEvent::Exporting => {
                let id = self.last_id + 1;
                self.export = Some((id, Instant::now()));
                let _ = writeln!(self.out, "\n#{id} exporting to image");
            }
            ProgressEvent::Exported { manifest, config } => {
                let id = self.export_id();
                let _ = writeln!(self.out, "#{id} writing image {config} done");
                let _ = writeln!(self.out, "#{id} writing manifest {manifest} done");
            }
        }
    }

    fn flush_partial(&mut self, id: usize) {
        if let Some(rest) = self.partial.remove(&id).filter(|b| !b.is_empty()) {
            let stamp = self
                .started
                .get(&id)
                .map_or(0.0, |t| t.elapsed().as_secs_f64());
            let _ = writeln!(
                self.out,
                "#{id} {stamp:.3} {}",
                String::from_utf8_lossy(&rest)
            );
        }
    }

    fn export_id(&mut self) -> usize {
        match self.export {
            Some((id, _)) => id,
            None => {
                let id = self.last_id + 1;
                self.export = Some((id, Instant::now()));
                let _ = writeln!(self.out, "\n#{id} exporting to image");
                id
            }
        }
    }

    fn export_line(&mut self, text: &str) {
        let id = self.export_id();
        let _ = writeln!(self.out, "#{id} {text} done");
    }

    fn finish(&mut self, summary: &Summary) {
        if let Some((id, t)) = self.export.take() {
            let _ = writeln!(self.out, "#{id} DONE {}", secs(t.elapsed()));
        }
        let _ = writeln!(
            self.out,
            "\n{} steps executed, {} cached in {}",
            summary.executed,
            summary.cached,
            secs(summary.elapsed)
        );
        let _ = self.out.flush();
    }
}

/// The live view: one line per step (spinner and elapsed time while it
/// runs, `CACHED` or `DONE` when finished), the last output lines of each
/// running step under it, and a summary at the end.
pub struct Tty {
    multi: MultiProgress,
    state: Mutex<TtyState>,
    running: ProgressStyle,
    tail: ProgressStyle,
}

#[derive(Default)]
struct TtyState {
    steps: HashMap<usize, TtyStep>,
    export: Option<ProgressBar>,
    /// Finished steps in completion order: the final frame, printed when
    /// the live view is cleared (a rate-limited terminal may never have
    /// drawn their last state).
    /// Each line is its text and its status (`CACHED`, `DONE 1.2s`), kept
    /// apart so that cutting a long line to the terminal keeps the status.
    done: Vec<(String, String)>,
    /// Bars of finished steps. They live until the view is cleared: a
    /// dropped bar becomes one of indicatif's "zombies", and a zombie at the
    /// top of the view is left on screen for good, where the final frame
    /// would then repeat it.
    finished: Vec<ProgressBar>,
}

struct TtyStep {
    bar: ProgressBar,
    tail_bar: Option<ProgressBar>,
    tail: Vec<String>,
    partial: Vec<u8>,
}

impl Tty {
    fn new() -> Tty {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let style = |t: &str| {
            ProgressStyle::with_template(t).unwrap_or_else(|_| ProgressStyle::default_spinner())
        };
        Tty {
            multi,
            state: Mutex::new(TtyState::default()),
            running: style("{spinner:.cyan} {prefix:.bold} {wide_msg} {elapsed:>4}"),
            tail: style("{wide_msg:.dim}"),
        }
    }

    /// The style of a finished step: the instruction is cut to the width
    /// of the terminal, never its status (`CACHED`, `DONE 1.2s`).
    fn done_style(status: String) -> ProgressStyle {
        ProgressStyle::with_template("  {prefix:.bold} {wide_msg} {status}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
            .with_key(
                "status",
                move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&status);
                },
            )
    }

    fn step_bar(&self, step: &StepInfo, style: &ProgressStyle) -> ProgressBar {
        let bar = self
            .multi
            .add(ProgressBar::new_spinner().with_style(style.clone()));
        bar.set_prefix(format!("#{} {}", step.id, step.label()));
        // A heredoc RUN spans lines; the live view has one per step.
        let mut lines = step.instruction.lines();
        let first = lines.next().unwrap_or_default();
        bar.set_message(if lines.next().is_some() {
            format!("{first} ...")
        } else {
            first.to_string()
        });
        bar
    }

    fn event(&self, event: ProgressEvent<'_>) {
        let mut st = lock(&self.state);
        match event {
            ProgressEvent::Planned { .. } | ProgressEvent::Exported { .. } => {}
            ProgressEvent::Started(step) => {
                let bar = self.step_bar(step, &self.running);
                bar.enable_steady_tick(Duration::from_millis(100));
                st.steps.insert(
                    step.id,
                    TtyStep {
                        bar,
                        tail_bar: None,
                        tail: Vec::new(),
                        partial: Vec::new(),
                    },
                );
            }
            ProgressEvent::Cached(step) => {
                let bar = self.step_bar(step, &Self::done_style("CACHED".into()));
                bar.finish();
                st.finished.push(bar);
                st.done.push((
                    format!("#{} {} {}", step.id, step.label(), step.instruction),
                    "CACHED".into(),
                ));
            }
            ProgressEvent::Output(step, bytes) => {
                let Some(s) = st.steps.get_mut(&step.id) else {
                    return;
                };
                s.partial.extend_from_slice(bytes);
                while let Some(nl) = s.partial.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = s.partial.drain(..=nl).collect();
                    // One terminal line each: a wrapped line would make
                    // the live view miscount what it has to redraw.
                    let text = String::from_utf8_lossy(&line[..nl]).into_owned();
                    s.tail.push(fit(&text, term_width().saturating_sub(4)));
                }
                let excess = s.tail.len().saturating_sub(TTY_TAIL_LINES);
                s.tail.drain(..excess);
                if s.tail.is_empty() {
                    return;
                }
                let text = s
                    .tail
                    .iter()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n");
                let tail_bar = s.tail_bar.get_or_insert_with(|| {
                    self.multi.insert_after(
                        &s.bar,
                        ProgressBar::new_spinner().with_style(self.tail.clone()),
                    )
                });
                tail_bar.set_message(text);
            }
            ProgressEvent::Finished(step, took) => {
                if let Some(s) = st.steps.remove(&step.id) {
                    if let Some(t) = s.tail_bar {
                        t.finish_and_clear();
                    }
                    s.bar
                        .set_style(Self::done_style(format!("DONE {}", secs(took))));
                    s.bar.finish();
                    st.finished.push(s.bar);
                }
                st.done.push((
                    format!("#{} {} {}", step.id, step.label(), step.instruction),
                    format!("DONE {}", secs(took)),
                ));
            }
            ProgressEvent::Failed(step, message) => {
                if let Some(s) = st.steps.remove(&step.id) {
                    // The output tail stays visible: it is why the step failed.
                    if let Some(t) = s.tail_bar {
                        t.abandon();
                    }
                    s.bar
                        .set_style(Self::done_style(format!("ERROR: {message}")));
                    s.bar.abandon();
                }
            }
            ProgressEvent::Warning(message) => {
                let _ = self.multi.println(format!("WARNING: {message}"));
            }
            ProgressEvent::Pulling { image, platform } => {
                let _ = self
                    .multi
                    .println(format!("pulling {image} for {platform}"));
            }
            ProgressEvent::Pulled { image, manifest } => {
                let _ = self.multi.println(format!("pulled {image}@{manifest}"));
            }
            ProgressEvent::Exporting => {
                let bar = self
                    .multi
                    .add(ProgressBar::new_spinner().with_style(self.running.clone()));
                bar.set_prefix("exporting to image");
                bar.enable_steady_tick(Duration::from_millis(100));
                st.export = Some(bar);
            }
        }
    }

    fn export_line(&self, text: &str) {
        let mut st = lock(&self.state);
        if let Some(bar) = &st.export {
            bar.set_message(text.to_string());
        }
        st.done.push((text.to_string(), "done".into()));
    }

    fn finish(&self, summary: &Summary) {
        let mut st = lock(&self.state);
        // Stop the export spinner without a redraw of its own: a redraw the
        // rate limit drops would leave the view's line count one short of
        // what is on screen, and one stale line above the final frame.
        if let Some(bar) = st.export.take() {
            bar.disable_steady_tick();
        }
        let _ = self.multi.clear();
        let width = term_width();
        let mut err = std::io::stderr().lock();
        for (text, status) in &st.done {
            let first = text.lines().next().unwrap_or_default();
            let room = width.saturating_sub(status.chars().count() + 2);
            let _ = writeln!(err, "{}  {status}", fit(first, room));
        }
        let _ = writeln!(
            err,
            "{} steps executed, {} cached in {}",
            summary.executed,
            summary.cached,
            secs(summary.elapsed)
        );
    }

    fn abandon(&self) {
        let mut st = lock(&self.state);
        for (_, s) in st.steps.drain() {
            s.bar.abandon();
        }
        if let Some(bar) = st.export.take() {
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer that keeps what was written, for checking plain output.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn step(id: usize, index: usize, instruction: &str) -> StepInfo {
        StepInfo {
            id,
            stage_index: 0,
            stage_name: "stage-0".into(),
            multi_stage: false,
            named: false,
            index,
            count: 3,
            instruction: instruction.into(),
            line: index,
        }
    }

    #[test]
    fn plain_output_looks_like_buildkit() {
        let out = Captured::default();
        let mut p = Plain::new(Box::new(out.clone()));
        let (a, b, c) = (
            step(1, 1, "FROM scratch"),
            step(2, 2, "COPY a /a"),
            step(3, 3, "RUN x"),
        );
        p.event(ProgressEvent::Cached(&a));
        p.event(ProgressEvent::Cached(&b));
        p.event(ProgressEvent::Started(&c));
        p.event(ProgressEvent::Output(&c, b"hel"));
        p.event(ProgressEvent::Output(&c, b"lo\nwor"));
        p.event(ProgressEvent::Output(&c, b"ld"));
        p.event(ProgressEvent::Finished(&c, Duration::from_millis(300)));
        let d = rbuild_cache::Digest::of_bytes(b"x");
        p.event(ProgressEvent::Exported {
            manifest: &d,
            config: &d,
        });
        p.export_line("naming to docker.io/library/app:1");
        p.finish(&Summary::default());
        let text = String::from_utf8(lock(&out.0).clone()).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines[0], "#1 [1/3] FROM scratch");
        assert_eq!(lines[1], "#1 CACHED");
        assert_eq!(lines[2], "#2 [2/3] COPY a /a");
        assert_eq!(lines[4], "#3 [3/3] RUN x");
        assert!(
            lines[5].starts_with("#3 ") && lines[5].ends_with(" hello"),
            "{}",
            lines[5]
        );
        assert!(
            lines[6].starts_with("#3 ") && lines[6].ends_with(" world"),
            "{}",
            lines[6]
        );
        assert_eq!(lines[7], "#3 DONE 0.3s");
        assert_eq!(lines[8], "#4 exporting to image");
        assert_eq!(lines[9], format!("#4 writing image {d} done"));
        assert_eq!(lines[11], "#4 naming to docker.io/library/app:1 done");
        assert!(lines[12].starts_with("#4 DONE "));
    }
}
