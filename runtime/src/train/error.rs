//! Errors of a training run. Each names the file, flag or iteration concerned.

use std::path::{Path, PathBuf};

use crate::data::DataError;
use crate::engine::EngineError;
use crate::tensors::TensorFileError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Tensors(#[from] TensorFileError),
    #[error("cannot {action} {path}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A setting, a run file or a check that does not hold.
    #[error("{0}")]
    Config(String),
    /// The loss became NaN or infinite; nothing was written after the last checkpoint.
    #[error(
        "training diverged: loss is {loss} at iteration {iteration} (epoch {epoch}); stopped. \
         {checkpoint}"
    )]
    Diverged {
        iteration: usize,
        epoch: usize,
        loss: f32,
        /// What is left on disk, e.g. the last checkpoint and its iteration.
        checkpoint: String,
    },
}

impl TrainError {
    pub fn io(path: &Path, action: &'static str, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
}
