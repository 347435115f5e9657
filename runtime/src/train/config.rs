//! `config.json`: everything needed to rerun (or resume) a run — the model
//! file, the resolved recipe, dropout, seed, data, normalisation statistics,
//! engine and dropjit version.

use std::path::{Path, PathBuf};

use dropjit_graph::dropout::DropoutConfig;
use dropjit_graph::recipe::{LrSchedule, Normalize};
use dropjit_graph::DropoutMode;
use serde::{Deserialize, Serialize};

use super::error::TrainError;
use super::files;
use crate::data::{NormStats, Normalization};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub dropjit_version: String,
    /// The command line that started the run (for the record; resume reads the fields).
    pub command: Vec<String>,
    pub model: ModelConfig,
    pub recipe: RecipeConfig,
    pub dropout: DropoutSetting,
    pub seed: u64,
    pub data: DataConfig,
    pub engine: String,
    pub threads: usize,
    /// Evaluate on the test split every this many iterations (and at the end).
    pub eval_every: usize,
    /// Write a `train` record to `metrics.jsonl` every this many iterations.
    pub log_every: usize,
    /// Extra checkpoints every this many iterations (besides every epoch and the end).
    pub checkpoint_every: Option<usize>,
    /// Initial weights file (`--init`); `None`: the model's initialisation from `seed`.
    pub init: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Absolute path of the model file.
    pub path: PathBuf,
    pub name: String,
    /// FNV-1a 64 of the file's bytes: resume refuses a model file that changed.
    pub fingerprint: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecipeConfig {
    pub source: String,
    pub dataset: String,
    pub batch_size: usize,
    /// Total iterations of the run (resolved from `epochs` when the length is in epochs).
    pub iterations: usize,
    /// The requested length in epochs, when it was given in epochs.
    pub epochs: Option<usize>,
    /// Training batches per epoch (the last partial batch is dropped).
    pub iterations_per_epoch: usize,
    pub base_lr: f64,
    /// The schedule as run (after `--schedule-scale`).
    pub schedule: ScheduleConfig,
    /// `--schedule-scale`: the recipe's length and milestones were multiplied by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_scale: Option<f64>,
    pub momentum: f64,
    pub weight_decay: f64,
    pub shuffle: bool,
    pub augment: Option<AugmentConfig>,
    /// `mean_image`, `channel_mean_std` or `none` (the model format's names).
    pub normalize: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScheduleConfig {
    Constant,
    Multistep { milestones: Vec<usize>, gamma: f64 },
    Cosine { min_lr: f64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AugmentConfig {
    pub crop_padding: usize,
    pub flip: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DropoutSetting {
    pub mode: String,
    pub fwd: f64,
    pub bwd: f64,
    /// `augmented(fwd=0.2,bwd=0.0001)`: for people.
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataConfig {
    /// The data root (`--data`, `DROPJIT_DATA` or `./data`), absolute.
    pub dir: PathBuf,
    /// The directory the files were read from.
    pub dataset_dir: PathBuf,
    pub classes: usize,
    /// Images used (after `--limit-train` / `--limit-test`).
    pub train_images: usize,
    pub test_images: usize,
    pub limit_train: Option<usize>,
    pub limit_test: Option<usize>,
    pub normalization: NormSummary,
}

/// The normalisation statistics, summarised (the mean image as per-channel
/// averages); resume recomputes them and checks they agree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NormSummary {
    pub kind: String,
    /// Per channel (R, G, B): the mean (0..1 scale), or for `mean-image` the
    /// average of the mean image's channel plane (0..255 scale).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation (`channel-mean-std` only).
    pub std: Vec<f32>,
}

impl NormSummary {
    pub fn of(stats: &NormStats) -> NormSummary {
        let kind = stats.normalization().name().to_string();
        match stats {
            NormStats::MeanImage { mean } => {
                let plane = mean.len() / 3;
                let mean = mean
                    .chunks(plane.max(1))
                    .map(|c| (c.iter().map(|&v| v as f64).sum::<f64>() / plane as f64) as f32)
                    .collect();
                NormSummary {
                    kind,
                    mean,
                    std: vec![],
                }
            }
            NormStats::ChannelMeanStd { mean, std, .. } => NormSummary {
                kind,
                mean: mean.to_vec(),
                std: std.to_vec(),
            },
            NormStats::None => NormSummary {
                kind,
                mean: vec![],
                std: vec![],
            },
        }
    }
}

impl ScheduleConfig {
    pub fn of(s: &LrSchedule) -> ScheduleConfig {
        match s {
            LrSchedule::Constant => ScheduleConfig::Constant,
            LrSchedule::MultiStep { milestones, gamma } => ScheduleConfig::Multistep {
                milestones: milestones.clone(),
                gamma: *gamma,
            },
            LrSchedule::Cosine { min_lr } => ScheduleConfig::Cosine { min_lr: *min_lr },
        }
    }

    pub fn schedule(&self) -> LrSchedule {
        match self {
            ScheduleConfig::Constant => LrSchedule::Constant,
            ScheduleConfig::Multistep { milestones, gamma } => LrSchedule::MultiStep {
                milestones: milestones.clone(),
                gamma: *gamma,
            },
            ScheduleConfig::Cosine { min_lr } => LrSchedule::Cosine { min_lr: *min_lr },
        }
    }
}

pub fn normalize_name(n: Normalize) -> &'static str {
    match n {
        Normalize::MeanImage => "mean_image",
        Normalize::ChannelMeanStd => "channel_mean_std",
        Normalize::None => "none",
    }
}

/// The data module's normalisation for a model-format name.
pub fn normalization(name: &str) -> Option<Normalization> {
    match name {
        "mean_image" => Some(Normalization::MeanImage),
        "channel_mean_std" => Some(Normalization::ChannelMeanStd),
        "none" => Some(Normalization::None),
        _ => None,
    }
}

impl DropoutSetting {
    pub fn of(d: &DropoutConfig) -> DropoutSetting {
        DropoutSetting {
            mode: d.mode.name().to_string(),
            fwd: d.fwd,
            bwd: d.bwd,
            description: d.describe(),
        }
    }

    pub fn config(&self) -> Result<DropoutConfig, TrainError> {
        let mode = DropoutMode::parse(&self.mode)
            .ok_or_else(|| TrainError::Config(format!("unknown dropout mode '{}'", self.mode)))?;
        let cfg = DropoutConfig {
            mode,
            fwd: self.fwd,
            bwd: self.bwd,
        };
        cfg.validate()
            .map_err(|e| TrainError::Config(format!("dropout: {e}")))?;
        Ok(cfg)
    }
}

/// FNV-1a 64 of `bytes`, as 16 hex digits.
pub fn fingerprint(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The default run directory name: `<model>-<mode>-f<fwd>-b<bwd>-s<seed>`.
pub fn default_run_name(model: &str, d: &DropoutConfig, seed: u64) -> String {
    format!("{model}-{}-f{}-b{}-s{seed}", d.mode.name(), d.fwd, d.bwd)
}

pub const CONFIG_FILE: &str = "config.json";

impl RunConfig {
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        files::write_json(&dir.join(CONFIG_FILE), self)
    }

    pub fn load(dir: &Path) -> Result<RunConfig, TrainError> {
        files::read_json(&dir.join(CONFIG_FILE))
    }
}
