//! Where a run of a sweep stands, read from its directory alone (so Slurm
//! array tasks on other machines and a later `--status` agree): finished
//! (`summary.json`), part-way (`state.json`), failed (the marker the sweep
//! leaves when a run exits with an error) or not started.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::train::checkpoint::{RunState, STATE_FILE};
use crate::train::config::{RunConfig, CONFIG_FILE};
use crate::train::files;
use crate::train::metrics::METRICS_FILE;
use crate::train::summary::{Summary, SUMMARY_FILE};

/// Written into a run directory when its `train` process failed; removed
/// when the run is started again.
pub const FAILED_FILE: &str = "sweep-failed.txt";
/// The `train` process's output, appended by each attempt.
pub const LOG_FILE: &str = "train.log";

#[derive(Clone, Debug, PartialEq)]
pub enum RunStatus {
    Pending,
    /// Checkpointed at `iteration` of `iterations`.
    Partial {
        iteration: usize,
        iterations: usize,
    },
    Done(Box<Summary>),
    /// The last attempt failed; `iteration` is its last checkpoint, if any.
    Failed {
        message: String,
        iteration: Option<usize>,
    },
}

impl RunStatus {
    pub fn is_done(&self) -> bool {
        matches!(self, RunStatus::Done(_))
    }

    /// One word and a detail, for tables.
    pub fn describe(&self) -> String {
        match self {
            RunStatus::Pending => "pending".into(),
            RunStatus::Partial {
                iteration,
                iterations,
            } => format!("partial {iteration}/{iterations}"),
            RunStatus::Done(s) => format!("done, test accuracy {:.4}", s.final_test_accuracy),
            RunStatus::Failed { message, iteration } => match iteration {
                Some(i) => format!("failed after iteration {i}: {message}"),
                None => format!("failed: {message}"),
            },
        }
    }
}

pub fn run_status(dir: &Path) -> RunStatus {
    if let Ok(s) = files::read_json::<Summary>(&dir.join(SUMMARY_FILE)) {
        return RunStatus::Done(Box::new(s));
    }
    let checkpointed = files::read_json::<RunState>(&dir.join(STATE_FILE))
        .ok()
        .map(|s| s.iteration);
    if let Ok(message) = std::fs::read_to_string(dir.join(FAILED_FILE)) {
        return RunStatus::Failed {
            message: message.lines().next().unwrap_or("").to_string(),
            iteration: checkpointed,
        };
    }
    match checkpointed {
        Some(iteration) => RunStatus::Partial {
            iteration,
            iterations: files::read_json::<RunConfig>(&dir.join(CONFIG_FILE))
                .map_or(0, |c| c.recipe.iterations),
        },
        None => RunStatus::Pending,
    }
}

/// The latest iteration a running run has logged, and its total, from the
/// tail of `metrics.jsonl` (cheaper than waiting for a checkpoint).
pub fn live_progress(dir: &Path) -> Option<(usize, usize)> {
    let total = files::read_json::<RunConfig>(&dir.join(CONFIG_FILE))
        .ok()?
        .recipe
        .iterations;
    let mut f = std::fs::File::open(dir.join(METRICS_FILE)).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = String::new();
    f.read_to_string(&mut tail).ok()?;
    let done = tail
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["iteration"].as_u64())
        .unwrap_or(0);
    Some((done as usize, total))
}

/// The last `n` lines of a run's log, for a failure message.
pub fn log_tail(dir: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(dir.join(LOG_FILE)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
