//! A model's published training recipe, carried by the model file so that
//! `dropjit train --graph models/X.json` reproduces the publication.

use serde_json::Value;

use crate::error::Result;
use crate::fields::Fields;

/// How the learning rate changes over a run.
#[derive(Clone, Debug, PartialEq)]
pub enum LrSchedule {
    Constant,
    /// Multiply by `gamma` at each milestone iteration (Caffe's `multistep`;
    /// Caffe-quick's 0.001 then 0.0001 at 4,000 is one milestone with gamma 0.1).
    MultiStep {
        milestones: Vec<usize>,
        gamma: f64,
    },
    /// Cosine from `base` to `min_lr` over the run.
    Cosine {
        min_lr: f64,
    },
}

impl LrSchedule {
    /// Learning rate at `iteration` (0-based) of a run of `total` iterations.
    pub fn lr(&self, base: f64, iteration: usize, total: usize) -> f64 {
        match self {
            LrSchedule::Constant => base,
            LrSchedule::MultiStep { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| iteration >= m).count();
                base * gamma.powi(passed as i32)
            }
            LrSchedule::Cosine { min_lr } => {
                let t = iteration as f64 / total.max(1) as f64;
                min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalize {
    /// Subtract the training set's per-pixel mean image; raw 0..255 scale (Caffe).
    MeanImage,
    /// `(x/255 - mean_c) / std_c` with per-channel statistics of the training set.
    ChannelMeanStd,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    /// Zero padding before the random crop back to the input size.
    pub crop_padding: usize,
    pub flip: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    Iterations(usize),
    Epochs(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    /// Where the recipe comes from (paper, solver file).
    pub source: String,
    pub dataset: String,
    pub batch_size: usize,
    pub length: Length,
    pub base_lr: f64,
    pub schedule: LrSchedule,
    pub momentum: f64,
    pub weight_decay: f64,
    pub shuffle: bool,
    pub augment: Option<Augment>,
    pub normalize: Normalize,
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            source: "dropjit defaults".into(),
            dataset: "cifar10".into(),
            batch_size: 128,
            length: Length::Epochs(10),
            base_lr: 0.01,
            schedule: LrSchedule::Constant,
            momentum: 0.9,
            weight_decay: 0.0,
            shuffle: true,
            augment: None,
            normalize: Normalize::ChannelMeanStd,
        }
    }
}

fn ratio_like(f: &Fields, key: &str, lo: f64, hi: f64) -> Result<Option<f64>> {
    match f.opt_f64(key)? {
        Some(x) if !(lo..hi).contains(&x) => {
            Err(f.error(key, format!("must be in [{lo}, {hi}), got {x}")))
        }
        x => Ok(x),
    }
}

impl Recipe {
    pub fn parse(value: &Value) -> Result<Recipe> {
        let f = Fields::new(None, "recipe", value)?;
        let d = Recipe::default();
        let length = match (f.opt_positive("iterations")?, f.opt_positive("epochs")?) {
            (Some(_), Some(_)) => {
                return Err(f.error("epochs", "give iterations or epochs, not both"))
            }
            (Some(i), None) => Length::Iterations(i),
            (None, Some(e)) => Length::Epochs(e),
            (None, None) => d.length,
        };
        let (base_lr, schedule) = match f.opt_object("lr")? {
            None => (d.base_lr, d.schedule),
            Some(lr) => {
                let base = lr.f64("base")?;
                if base <= 0.0 {
                    return Err(lr.error("base", format!("must be positive, got {base}")));
                }
                let schedule = match lr.opt_str("schedule")?.unwrap_or("constant") {
                    "constant" => LrSchedule::Constant,
                    "multistep" => {
                        let milestones = lr.positive_list("milestones")?.unwrap_or_default();
                        if milestones.windows(2).any(|w| w[0] >= w[1]) {
                            return Err(lr.error("milestones", "must be increasing"));
                        }
                        let gamma = ratio_like(&lr, "gamma", 0.0, 1.0)?.unwrap_or(0.1);
                        LrSchedule::MultiStep { milestones, gamma }
                    }
                    "cosine" => {
                        let min_lr = lr.opt_f64("min_lr")?.unwrap_or(0.0);
                        if !(0.0..=base).contains(&min_lr) {
                            return Err(lr.error(
                                "min_lr",
                                format!("must be in [0, base={base}], got {min_lr}"),
                            ));
                        }
                        LrSchedule::Cosine { min_lr }
                    }
                    other => {
                        return Err(lr.error(
                            "schedule",
                            format!("unknown schedule '{other}' (constant, multistep, cosine)"),
                        ))
                    }
                };
                lr.finish()?;
                (base, schedule)
            }
        };
        let augment = match f.opt_object("augment")? {
            None => None,
            Some(a) => {
                let aug = Augment {
                    crop_padding: a.opt_count("crop_padding")?.unwrap_or(0),
                    flip: a.opt_bool("flip")?.unwrap_or(false),
                };
                a.finish()?;
                Some(aug)
            }
        };
        let normalize = match f.opt_str("normalize")?.unwrap_or("channel_mean_std") {
            "mean_image" => Normalize::MeanImage,
            "channel_mean_std" => Normalize::ChannelMeanStd,
            "none" => Normalize::None,
            other => {
                return Err(f.error(
                    "normalize",
                    format!("unknown normalisation '{other}' (mean_image, channel_mean_std, none)"),
                ))
            }
        };
        let dataset = f.opt_str("dataset")?.unwrap_or("cifar10").to_string();
        const DATASETS: [&str; 5] = ["cifar10", "cifar100", "svhn", "mnist", "fashion-mnist"];
        if !DATASETS.contains(&dataset.as_str()) {
            return Err(f.error(
                "dataset",
                format!("unknown dataset '{dataset}' ({})", DATASETS.join(", ")),
            ));
        }
        let recipe = Recipe {
            source: f.opt_str("source")?.unwrap_or("").to_string(),
            dataset,
            batch_size: f.opt_positive("batch_size")?.unwrap_or(d.batch_size),
            length,
            base_lr,
            schedule,
            momentum: ratio_like(&f, "momentum", 0.0, 1.0)?.unwrap_or(d.momentum),
            weight_decay: ratio_like(&f, "weight_decay", 0.0, 1.0)?.unwrap_or(d.weight_decay),
            shuffle: f.opt_bool("shuffle")?.unwrap_or(d.shuffle),
            augment,
            normalize,
        };
        f.finish()?;
        Ok(recipe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multistep_lr() {
        let s = LrSchedule::MultiStep {
            milestones: vec![32000, 48000],
            gamma: 0.1,
        };
        assert_eq!(s.lr(0.1, 0, 64000), 0.1);
        assert!((s.lr(0.1, 32000, 64000) - 0.01).abs() < 1e-12);
        assert!((s.lr(0.1, 48000, 64000) - 0.001).abs() < 1e-12);
    }

    #[test]
    fn cosine_ends_at_min() {
        let s = LrSchedule::Cosine { min_lr: 0.0 };
        assert_eq!(s.lr(0.1, 0, 100), 0.1);
        assert!(s.lr(0.1, 100, 100).abs() < 1e-12);
    }
}
