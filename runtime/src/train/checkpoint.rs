//! Checkpoints: `checkpoint.safetensors` (weights, PyTorch names),
//! `optimizer.safetensors` (momentum buffers) and `state.json` (iteration,
//! position, metrics so far).
//!
//! The three files change together or not at all, whenever the process dies:
//! the two tensor files are first written under staged names
//! (`.checkpoint-<iteration>.safetensors`), then `state.json` is replaced
//! atomically (the commit), then the staged files are renamed into place.
//! [`recover`] finishes an interrupted rename or drops uncommitted files.
//! Every file is fsynced before its rename and the directory after it
//! (`crate::durable`), so after a power loss the committed `state.json` never
//! points at tensor files the disk does not hold.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dropjit_graph::Graph;
use serde::{Deserialize, Serialize};

use super::error::TrainError;
use super::evaluate::EvalResult;
use super::files;
use super::metrics::Accum;
use crate::tensors::{self, Out, TensorFileError};

pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
const STAGED: [(&str, &str); 2] = [
    (".checkpoint-", CHECKPOINT_FILE),
    (".optimizer-", OPTIMIZER_FILE),
];

/// Tensors by `ParamId`.
pub type Tensors = Vec<Vec<f32>>;

/// `state.json`: where the run stands at its last checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Iterations completed; the next step uses mask step `iteration`.
    pub iteration: usize,
    /// Epochs completed (`iteration / iterations_per_epoch`).
    pub epoch: usize,
    /// Images of the current epoch already trained on.
    pub position: usize,
    /// All iterations are done (`final.safetensors` and `summary.json` follow).
    pub finished: bool,
    /// Wall-clock seconds of all sessions so far.
    pub wall_seconds: f64,
    /// Length of `metrics.jsonl` at this checkpoint; a resumed run cuts it there.
    pub metrics_bytes: u64,
    /// Training sums of the whole run, of the current epoch, of the current
    /// logging interval.
    pub total: Accum,
    pub epoch_stats: Accum,
    pub interval_stats: Accum,
    /// Training sums of the last completed epoch.
    pub last_epoch: Accum,
    pub best_test_accuracy: Option<f64>,
    pub best_test_iteration: Option<usize>,
    /// The latest evaluation and the iteration it was made at.
    pub last_test: Option<(usize, EvalResult)>,
}

fn staged(dir: &Path, prefix: &str, iteration: usize) -> PathBuf {
    dir.join(format!("{prefix}{iteration}.safetensors"))
}

/// Where [`save`] stages the weights and the momentum of `iteration` before the commit.
pub fn staged_paths(dir: &Path, iteration: usize) -> [PathBuf; 2] {
    STAGED.map(|(prefix, _)| staged(dir, prefix, iteration))
}

/// Writes a checkpoint of `params` and `momentum` (by `ParamId`) with `state`.
pub fn save(
    dir: &Path,
    g: &Graph,
    params: &[Vec<f32>],
    momentum: &[Vec<f32>],
    state: &RunState,
) -> Result<(), TrainError> {
    let it = state.iteration;
    let weights = staged(dir, STAGED[0].0, it);
    crate::weights::save(g, params, it as u64, &weights)?;
    save_momentum(g, momentum, it, &staged(dir, STAGED[1].0, it))?;
    files::write_json(&dir.join(STATE_FILE), state)?;
    for (prefix, target) in STAGED {
        let from = staged(dir, prefix, it);
        std::fs::rename(&from, dir.join(target)).map_err(|e| TrainError::io(&from, "rename", e))?;
    }
    crate::durable::sync_dir(dir).map_err(|e| TrainError::io(dir, "sync", e))
}

fn save_momentum(
    g: &Graph,
    momentum: &[Vec<f32>],
    iteration: usize,
    path: &Path,
) -> Result<(), TrainError> {
    let out: Vec<(String, Vec<usize>, Out<'_>)> = g
        .params
        .iter()
        .zip(momentum)
        .filter(|(p, _)| p.trainable)
        .map(|(p, v)| (p.name.clone(), p.dims.clone(), Out::F32(v)))
        .collect();
    let meta = HashMap::from([
        ("model".to_string(), g.name.clone()),
        ("iteration".to_string(), iteration.to_string()),
        ("content".to_string(), "SGD momentum buffers".to_string()),
    ]);
    Ok(tensors::write(path, &out, Some(meta))?)
}

/// Reads `state.json` after completing or discarding an interrupted checkpoint.
pub fn recover(dir: &Path) -> Result<RunState, TrainError> {
    let path = dir.join(STATE_FILE);
    if !path.is_file() {
        return Err(TrainError::Config(format!(
            "{}: no checkpoint to resume from ({} is missing)",
            dir.display(),
            path.display()
        )));
    }
    let state: RunState = files::read_json(&path)?;
    for (prefix, target) in STAGED {
        let from = staged(dir, prefix, state.iteration);
        if from.is_file() {
            std::fs::rename(&from, dir.join(target))
                .map_err(|e| TrainError::io(&from, "rename", e))?;
        }
    }
    crate::durable::sync_dir(dir).map_err(|e| TrainError::io(dir, "sync", e))?;
    let entries = std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, "list", e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if STAGED.iter().any(|(p, _)| name.starts_with(p)) || name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(state)
}

/// Parameters and momentum buffers of the checkpoint in `dir`, by `ParamId`;
/// the optimizer file must belong to `iteration`.
pub fn load(dir: &Path, g: &Graph, iteration: usize) -> Result<(Tensors, Tensors), TrainError> {
    let params = crate::weights::load(g, &dir.join(CHECKPOINT_FILE))?;
    let path = dir.join(OPTIMIZER_FILE);
    let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, "read", e))?;
    let saved_at = safetensors::SafeTensors::read_metadata(&bytes)
        .ok()
        .and_then(|(_, m)| m.metadata().as_ref()?.get("iteration").cloned());
    if saved_at.as_deref() != Some(iteration.to_string().as_str()) {
        return Err(TrainError::Config(format!(
            "{}: written at iteration {}, but {STATE_FILE} says {iteration}",
            path.display(),
            saved_at.as_deref().unwrap_or("?")
        )));
    }
    let mut all = tensors::read(&path)?;
    let momentum = g
        .params
        .iter()
        .map(|p| {
            if p.trainable {
                tensors::take_f32(&mut all, &path, &p.name, &p.dims)
            } else {
                Ok(Vec::new())
            }
        })
        .collect::<Result<Vec<_>, TensorFileError>>()?;
    if let Some(name) = all.keys().next() {
        return Err(TensorFileError::Unexpected {
            path,
            name: name.clone(),
            hint: format!("not a trainable tensor of model {}", g.name),
        }
        .into());
    }
    Ok((params, momentum))
}
