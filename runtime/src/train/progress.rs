//! What a person watching sees: an indicatif bar on stderr when it is a
//! terminal, else a plain line on stderr every `--log-every` iterations (a
//! redirected log shows progress long before the first epoch ends), and plain
//! lines on stdout (one per epoch) always.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar over `total` iterations starting at `done`, shown only when
    /// stderr is a terminal.
    pub fn new(total: usize, done: usize) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let style =
            ProgressStyle::with_template("{prefix} [{bar:20}] {pos}/{len} it  {msg}  ETA {eta}")
                .map(|s| s.progress_chars("=> "))
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr())
            .with_style(style)
            .with_position(done as u64);
        bar.reset_eta();
        Progress { bar: Some(bar) }
    }

    /// After an iteration: epoch (1-based), iterations done, last loss, images/s.
    pub fn tick(
        &self,
        epoch: usize,
        epochs: usize,
        done: usize,
        loss: f32,
        images_per_second: f64,
    ) {
        if let Some(bar) = &self.bar {
            bar.set_prefix(format!("epoch {epoch}/{epochs}"));
            bar.set_message(format!("loss {loss:.4}  {images_per_second:.0} img/s"));
            bar.set_position(done as u64);
        }
    }

    /// A line on stdout, drawn around the bar.
    pub fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{text}")),
            None => println!("{text}"),
        }
    }

    /// Progress for a log that is not a terminal: a line on stderr. (On a
    /// terminal the bar shows the same.)
    pub fn log_line(&self, text: &str) {
        if self.bar.is_none() {
            eprintln!("{text}");
        }
    }

    /// Removes the bar (end of run, or an error about to be printed).
    pub fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}
