//! The terminal progress bar: the library's [`Progress`] of `check`, `replay` and `simulate`
//! drawn on stderr, only when stderr is a terminal (and `TERM` is not `dumb`); otherwise not
//! one byte is written. Each stage leaves a one-line summary once it ends, and the bar is
//! cleared before the command prints its report.

use std::io::{self, IsTerminal as _, Write};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use converge::progress::{Progress, Unit};
use converge::redact::RedactingStderr;
use indicatif::{
    HumanBytes, HumanCount, ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle,
};

/// The bar on screen, if any: log lines are written past it ([`log_writer`]).
static ON_SCREEN: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn on_screen() -> MutexGuard<'static, Option<ProgressBar>> {
    ON_SCREEN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How often the bar is redrawn while nothing advances, so its clock and spinner still move.
const TICK: Duration = Duration::from_millis(200);

/// A [`Progress`] drawn as a bar on stderr.
#[derive(Debug)]
pub(crate) struct Bar {
    bar: ProgressBar,
    /// The current stage's name and unit, for its summary line.
    stage: Mutex<Option<(&'static str, Unit)>>,
}

impl Bar {
    /// A bar on stderr if it is a terminal; one that draws nothing otherwise.
    pub(crate) fn stderr() -> Self {
        Self::shown_if(true)
    }

    /// A bar on stderr if `wanted` and stderr is a terminal; one that draws nothing otherwise.
    pub(crate) fn shown_if(wanted: bool) -> Self {
        let bar = if wanted && io::stderr().is_terminal() {
            // Hidden as well when TERM is unset or `dumb`.
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        }
        // Dropped on an error: cleared, so the error reads alone.
        .with_finish(ProgressFinish::AndClear)
        // Nothing until the first stage says what is counted.
        .with_style(blank());
        if !bar.is_hidden() {
            *on_screen() = Some(bar.clone());
        }
        Self {
            bar,
            stage: Mutex::new(None),
        }
    }

    /// Ends the last stage with its summary line and clears the bar, before the report.
    pub(crate) fn finish(&self) {
        self.summarise();
        self.bar.finish_and_clear();
        *on_screen() = None;
    }

    fn lock_stage(&self) -> MutexGuard<'_, Option<(&'static str, Unit)>> {
        self.stage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the current stage's summary above the bar, e.g. `checking: 200 of 200 histories
    /// in 2.1s (14,000 orders, 98,765 decisions)`.
    fn summarise(&self) {
        let Some((name, unit)) = self.lock_stage().take() else {
            return;
        };
        if self.bar.is_hidden() {
            return;
        }
        let count = |n: u64| match unit {
            Unit::Bytes => HumanBytes(n).to_string(),
            Unit::Items(_) | Unit::Nothing => HumanCount(n).to_string(),
        };
        let done = self.bar.position();
        let mut line = match (self.bar.length(), unit) {
            (_, Unit::Nothing) => format!("{name}: done"),
            (None, Unit::Bytes) => format!("{name}: {}", count(done)),
            (None, Unit::Items(items)) => format!("{name}: {} {items}", count(done)),
            (Some(total), Unit::Bytes) => format!("{name}: {} of {}", count(done), count(total)),
            (Some(total), Unit::Items(items)) => {
                format!("{name}: {} of {} {items}", count(done), count(total))
            }
        };
        line.push_str(&format!(" in {:.1?}", self.bar.elapsed()));
        let note = self.bar.message();
        if !note.is_empty() {
            line.push_str(&format!(" ({note})"));
        }
        self.bar.println(line);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if !self.bar.is_hidden() {
            *on_screen() = None;
        }
    }
}

impl Progress for Bar {
    fn stage(&self, name: &'static str, unit: Unit, total: Option<u64>) {
        if self.bar.is_hidden() {
            return;
        }
        self.summarise();
        *self.lock_stage() = Some((name, unit));
        // Each change below redraws: blank until the stage's look is complete.
        self.bar.set_style(blank());
        match total {
            Some(total) => self.bar.set_length(total),
            None => self.bar.unset_length(),
        }
        self.bar.set_message("");
        self.bar.set_prefix(name);
        self.bar.reset();
        self.bar.set_style(style(unit, total.is_some()));
        // Drawn now, whatever the rate limit: even a stage that ends at once was shown.
        self.bar.force_draw();
        self.bar.enable_steady_tick(TICK);
    }

    fn advance(&self, done: u64) {
        // An atomic add; indicatif redraws at most 20 times a second.
        self.bar.inc(done);
    }

    fn note(&self, note: std::fmt::Arguments<'_>) {
        if !self.bar.is_hidden() {
            self.bar.set_message(note.to_string());
        }
    }
}

/// A bar that draws nothing.
fn blank() -> ProgressStyle {
    ProgressStyle::with_template("").unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// The bar's look for a stage counting `unit`, toward a total or not.
fn style(unit: Unit, total: bool) -> ProgressStyle {
    let template = match (unit, total) {
        (Unit::Bytes, true) => "{prefix:>10} [{bar:30}] {binary_bytes}/{binary_total_bytes} \
             {binary_bytes_per_sec} eta {eta} {msg}"
            .to_owned(),
        (Unit::Bytes, false) => {
            "{spinner} {prefix:>8} {binary_bytes} {binary_bytes_per_sec} {elapsed} {msg}".to_owned()
        }
        (Unit::Items(items), true) => format!(
            "{{prefix:>10}} [{{bar:30}}] {{human_pos}}/{{human_len}} {items} \
             {{per_sec:0}} eta {{eta}} {{msg}}"
        ),
        (Unit::Nothing, _) => "{spinner} {prefix:>8} {elapsed} {msg}".to_owned(),
        (Unit::Items(items), false) => {
            format!(
                "{{spinner}} {{prefix:>8}} {{human_pos}} {items} {{per_sec:0}} {{elapsed}} {{msg}}"
            )
        }
    };
    ProgressStyle::with_template(&template)
        .map(|style| style.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// A writer for `tracing_subscriber::fmt().with_writer(...)`: a log line redacted as
/// [`converge::redact::stderr_writer`] writes it, but past the bar when one is on screen, so a
/// warning during a replay does not leave half a bar above it.
pub(crate) fn log_writer() -> LogLine {
    LogLine(Some(converge::redact::stderr_writer()))
}

/// One log line on its way to stderr; written when dropped.
#[derive(Debug)]
pub(crate) struct LogLine(Option<RedactingStderr>);

impl Write for LogLine {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            Some(line) => line.write(bytes),
            None => Ok(bytes.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let line = self.0.take();
        let bar = on_screen().clone();
        match bar {
            Some(bar) => bar.suspend(|| drop(line)),
            None => drop(line),
        }
    }
}
