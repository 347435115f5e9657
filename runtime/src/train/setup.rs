//! Loading and checking what a run reads before its first step: the data set
//! (optionally cut to its first images for smoke tests), its normalisation
//! statistics, and their fit to the model.

use std::path::Path;

use dropjit_graph::Graph;

use super::error::TrainError;
use crate::data::{
    load_dataset, DataLoadOptions, Dataset, DatasetKind, NormStats, Normalization, Split,
};

/// The data of a run: both splits (after the limits) and the statistics of the
/// training split used to normalise every image.
pub struct RunData {
    pub dataset: Dataset,
    pub stats: NormStats,
}

/// Which images to use.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// Train on the first N training images only.
    pub train: Option<usize>,
    /// Evaluate on the first N test images only.
    pub test: Option<usize>,
}

/// Reads the data set under `root`, applies `limits`, computes the statistics of
/// `norm` on the (limited) training split and checks the model can read it.
pub fn load_data(
    root: &Path,
    kind: Option<DatasetKind>,
    limits: Limits,
    norm: Normalization,
    g: &Graph,
) -> Result<RunData, TrainError> {
    let mut dataset = load_dataset(
        root,
        &DataLoadOptions {
            kind,
            ..Default::default()
        },
    )?;
    limit(
        &mut dataset.train,
        limits.train,
        "--limit-train",
        "training",
    )?;
    limit(&mut dataset.test, limits.test, "--limit-test", "test")?;
    check_fit(g, &dataset)?;
    let stats = NormStats::compute(norm, &dataset.train);
    Ok(RunData { dataset, stats })
}

fn limit(split: &mut Split, n: Option<usize>, flag: &str, what: &str) -> Result<(), TrainError> {
    let Some(n) = n else { return Ok(()) };
    if n == 0 {
        return Err(TrainError::Config(format!("{flag} must be at least 1")));
    }
    if n > split.len() {
        return Err(TrainError::Config(format!(
            "{flag} {n}: the {what} split has only {} images",
            split.len()
        )));
    }
    let per_image = split.images.len() / split.len().max(1);
    split.images.truncate(n * per_image);
    split.labels.truncate(n);
    Ok(())
}

/// The model's image input must be the data set's image shape, and its class
/// count the data set's.
pub fn check_fit(g: &Graph, ds: &Dataset) -> Result<(), TrainError> {
    let want = ds.train.shape.dims();
    let dims = g.image_dims().unwrap_or(&[]);
    if dims != want {
        return Err(TrainError::Config(format!(
            "model {} takes images of shape {dims:?}, but {} images are {want:?}",
            g.name, ds.kind
        )));
    }
    let classes = g.classes().unwrap_or(0);
    if classes != ds.num_classes {
        return Err(TrainError::Config(format!(
            "model {} has {classes} classes, but {} ({}) has {}",
            g.name,
            ds.kind,
            ds.dir.display(),
            ds.num_classes
        )));
    }
    Ok(())
}
