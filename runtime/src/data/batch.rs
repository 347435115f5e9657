//! Batches of f32 NCHW images and i32 labels; training drops the last partial batch,
//! evaluation keeps it.

use std::ops::Range;

use super::augment::{crop_flip_normalize, draw_crop_flip, Augment};
use super::dataset::Split;
use super::normalize::NormStats;
use super::order::epoch_order;

/// What to do with the images left over after the last full batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastBatch {
    /// Skip them (training: every step sees `batch_size` images).
    Drop,
    /// Emit a smaller final batch (evaluation: every image counts).
    Keep,
}

/// Number of batches of `batch_size` in `n` images. `batch_size` must be > 0.
pub fn batches_per_epoch(n: usize, batch_size: usize, last: LastBatch) -> usize {
    assert!(batch_size > 0, "batches_per_epoch: batch_size must be > 0");
    match last {
        LastBatch::Drop => n / batch_size,
        LastBatch::Keep => n.div_ceil(batch_size),
    }
}

/// The index ranges of evaluation batches over `n` images, in order; the last may be smaller.
pub fn eval_batches(n: usize, batch_size: usize) -> impl Iterator<Item = Range<usize>> {
    let count = batches_per_epoch(n, batch_size, LastBatch::Keep);
    (0..count).map(move |b| b * batch_size..((b + 1) * batch_size).min(n))
}

/// Produces batches from one split. Every image is a pure function of
/// (seed, epoch, position in the epoch order), so any batch can be regenerated on its own.
#[derive(Clone, Copy, Debug)]
pub struct BatchLoader<'a> {
    pub split: &'a Split,
    pub stats: &'a NormStats,
    /// `None` for evaluation (no crop, no flip).
    pub augment: Option<Augment>,
    pub seed: u64,
}

impl<'a> BatchLoader<'a> {
    pub fn new(
        split: &'a Split,
        stats: &'a NormStats,
        augment: Option<Augment>,
        seed: u64,
    ) -> Self {
        BatchLoader {
            split,
            stats,
            augment,
            seed,
        }
    }

    /// The visiting order of `epoch` (see [`epoch_order`]).
    pub fn epoch_order(&self, epoch: u64, shuffle: bool) -> Vec<u32> {
        epoch_order(self.seed, epoch, self.split.len(), shuffle)
    }

    /// Training batches per epoch (drop-last).
    pub fn train_batches(&self, batch_size: usize) -> usize {
        batches_per_epoch(self.split.len(), batch_size, LastBatch::Drop)
    }

    /// Fill one batch with the images at positions `start..start + B` of `order`, where
    /// `B = out_labels.len()` and `out_images.len() == B * image length`. Returns how many were
    /// filled: `B`, or fewer at the end of `order` (the rest of the buffers is left untouched).
    pub fn fill_batch(
        &self,
        order: &[u32],
        start: usize,
        epoch: u64,
        out_images: &mut [f32],
        out_labels: &mut [i32],
    ) -> usize {
        let n = self.split.shape.len();
        assert_eq!(
            out_images.len(),
            out_labels.len() * n,
            "fill_batch: image buffer must hold out_labels.len() images"
        );
        let count = out_labels.len().min(order.len().saturating_sub(start));
        for i in 0..count {
            let pos = start + i;
            let index = order[pos] as usize;
            let out = &mut out_images[i * n..(i + 1) * n];
            out_labels[i] = self.fill_image(index, pos as u64, epoch, out);
        }
        count
    }

    /// Write image `index`, visited at `position` of `epoch`, to `out`; returns its label.
    pub fn fill_image(&self, index: usize, position: u64, epoch: u64, out: &mut [f32]) -> i32 {
        let raw = self.split.image(index);
        match &self.augment {
            Some(aug) => {
                let draw = draw_crop_flip(aug, self.seed, epoch, position);
                crop_flip_normalize(raw, self.split.shape, draw, aug.pad, self.stats, out);
            }
            None => self.stats.normalize_image(raw, out),
        }
        i32::from(self.split.labels[index])
    }
}

/// Run `f` on every evaluation batch of `split` in natural order (no augmentation), the last
/// batch possibly smaller. The buffers are allocated once and reused.
pub fn for_each_eval_batch<E>(
    split: &Split,
    stats: &NormStats,
    batch_size: usize,
    mut f: impl FnMut(&[f32], &[i32]) -> Result<(), E>,
) -> Result<(), E> {
    let loader = BatchLoader::new(split, stats, None, 0);
    let n = split.shape.len();
    let mut images = vec![0f32; batch_size * n];
    let mut labels = vec![0i32; batch_size];
    for range in eval_batches(split.len(), batch_size) {
        let len = range.len();
        for (i, index) in range.enumerate() {
            let out = &mut images[i * n..(i + 1) * n];
            labels[i] = loader.fill_image(index, index as u64, 0, out);
        }
        f(&images[..len * n], &labels[..len])?;
    }
    Ok(())
}
