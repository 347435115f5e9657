//! `metrics.jsonl` (one JSON record per logging interval, epoch and evaluation)
//! and the running sums they are made of.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::TrainError;

pub const METRICS_FILE: &str = "metrics.jsonl";

/// Running sums over some training iterations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Accum {
    pub loss_sum: f64,
    pub correct: u64,
    pub images: u64,
    pub iterations: u64,
    /// Seconds spent in training steps (data loading and evaluation excluded).
    pub seconds: f64,
}

impl Accum {
    pub fn add(&mut self, loss: f32, correct: usize, images: usize, seconds: f64) {
        self.loss_sum += loss as f64;
        self.correct += correct as u64;
        self.images += images as u64;
        self.iterations += 1;
        self.seconds += seconds;
    }

    /// Mean of the per-batch losses.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.iterations.max(1) as f64
    }

    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.images.max(1) as f64
    }

    pub fn images_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.images as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// `train` (a logging interval), `epoch` (a whole epoch's training) or `test`.
    pub kind: String,
    /// Iterations completed when the record was written.
    pub iteration: usize,
    /// Epochs completed, fractional: `iteration / iterations_per_epoch`.
    pub epoch: f64,
    pub loss: f64,
    pub accuracy: f64,
    /// Learning rate of the last iteration.
    pub lr: f64,
    /// Training: images per second of training steps; test: of evaluation.
    pub images_per_second: f64,
    /// Images the record covers.
    pub images: u64,
    /// Wall-clock seconds of the run so far (all sessions of a resumed run).
    pub wall_seconds: f64,
}

/// Appends records to `metrics.jsonl`, one line each, flushed at once.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
    len: u64,
}

impl MetricsLog {
    /// Opens `dir/metrics.jsonl` for appending after its first `keep` bytes
    /// (what the last checkpoint had seen; later lines belong to iterations that
    /// will be redone). A fresh run passes 0.
    pub fn open(dir: &Path, keep: u64) -> Result<MetricsLog, TrainError> {
        let path = dir.join(METRICS_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, "open", e))?;
        let have = file
            .metadata()
            .map_err(|e| TrainError::io(&path, "read", e))?
            .len();
        if have < keep {
            return Err(TrainError::Config(format!(
                "{}: has {have} bytes but the checkpoint recorded {keep}; the run directory was modified",
                path.display()
            )));
        }
        file.set_len(keep)
            .map_err(|e| TrainError::io(&path, "truncate", e))?;
        let mut log = MetricsLog {
            path,
            file,
            len: keep,
        };
        log.seek_end()?;
        Ok(log)
    }

    fn seek_end(&mut self) -> Result<(), TrainError> {
        use std::io::{Seek, SeekFrom};
        self.file
            .seek(SeekFrom::Start(self.len))
            .map_err(|e| TrainError::io(&self.path, "seek", e))?;
        Ok(())
    }

    pub fn write(&mut self, record: &Record) -> Result<(), TrainError> {
        let mut line = serde_json::to_string(record)
            .map_err(|e| TrainError::Config(format!("cannot encode a metrics record: {e}")))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| TrainError::io(&self.path, "write", e))?;
        self.len += line.len() as u64;
        Ok(())
    }

    /// Bytes written so far (saved with each checkpoint).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
