//! Test-set evaluation through an [`Engine`]: loss, accuracy, per-class accuracy.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::{for_each_eval_batch, DatasetKind, NormStats, Split};
use crate::engine::{Engine, EngineError};

/// The result of one pass over a split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Mean loss per image.
    pub loss: f64,
    pub accuracy: f64,
    pub correct: u64,
    pub images: u64,
    /// `(correct, images)` per class.
    pub per_class: Vec<(u64, u64)>,
    pub seconds: f64,
}

impl EvalResult {
    pub fn images_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.images as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The index of the largest logit of each row (the first on ties; a row with a
/// NaN predicts nothing).
pub fn predictions(logits: &[f32], classes: usize) -> impl Iterator<Item = Option<usize>> + '_ {
    logits.chunks(classes.max(1)).map(|row| {
        let mut best: Option<(usize, f32)> = None;
        for (i, &v) in row.iter().enumerate() {
            if v.is_nan() {
                return None;
            }
            if best.is_none_or(|(_, b)| v > b) {
                best = Some((i, v));
            }
        }
        best.map(|(i, _)| i)
    })
}

/// How many rows of `logits` predict their label.
pub fn count_correct(logits: &[f32], labels: &[u32], classes: usize) -> usize {
    predictions(logits, classes)
        .zip(labels)
        .filter(|(p, &l)| *p == Some(l as usize))
        .count()
}

/// Evaluates the whole `split` in batches of `batch_size` (the last may be smaller).
pub fn evaluate(
    engine: &mut dyn Engine,
    split: &Split,
    stats: &NormStats,
    batch_size: usize,
) -> Result<EvalResult, EngineError> {
    let classes = split.num_classes;
    let start = Instant::now();
    let mut loss_sum = 0f64;
    let mut per_class = vec![(0u64, 0u64); classes];
    let mut labels = Vec::with_capacity(batch_size);
    for_each_eval_batch(split, stats, batch_size, |images, raw| {
        labels.clear();
        labels.extend(raw.iter().map(|&l| l as u32));
        let (loss, logits) = engine.eval_batch(images, &labels)?;
        loss_sum += loss as f64 * labels.len() as f64;
        for (p, &l) in predictions(&logits, classes).zip(&labels) {
            let c = &mut per_class[l as usize];
            c.1 += 1;
            if p == Some(l as usize) {
                c.0 += 1;
            }
        }
        Ok::<(), EngineError>(())
    })?;
    let images = split.len() as u64;
    let correct = per_class.iter().map(|c| c.0).sum();
    Ok(EvalResult {
        loss: loss_sum / images.max(1) as f64,
        accuracy: correct as f64 / images.max(1) as f64,
        correct,
        images,
        per_class,
        seconds: start.elapsed().as_secs_f64(),
    })
}

const CIFAR10_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Class names for reports: CIFAR-10's names, SVHN's digits, else indices.
pub fn class_names(kind: DatasetKind, classes: usize) -> Vec<String> {
    (0..classes)
        .map(|c| match kind {
            DatasetKind::Cifar10 if classes == 10 => CIFAR10_NAMES[c].to_string(),
            DatasetKind::Svhn => format!("digit {c}"),
            _ => format!("class {c}"),
        })
        .collect()
}

/// The per-class table printed by `eval` and at the end of `train`.
pub fn per_class_table(result: &EvalResult, names: &[String]) -> String {
    let width = names.iter().map(|n| n.len()).max().unwrap_or(5).max(5);
    let mut out = format!(
        "{:<width$}  {:>7}  {:>7}  {:>8}\n",
        "class", "correct", "images", "accuracy"
    );
    for (i, &(c, n)) in result.per_class.iter().enumerate() {
        let name = names.get(i).map(String::as_str).unwrap_or("?");
        let acc = if n > 0 {
            format!("{:.4}", c as f64 / n as f64)
        } else {
            "-".to_string()
        };
        out += &format!("{name:<width$}  {c:>7}  {n:>7}  {acc:>8}\n");
    }
    out
}
