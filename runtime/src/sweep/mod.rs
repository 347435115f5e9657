//! `dropjit sweep`: a sweep file expands into ordinary `train` runs under one
//! sweep directory, run here (`--jobs N`) or as a Slurm job array, restartable
//! at any point. The guide is `docs/sweeps.md`.
//!
//! Each run is a child `dropjit train` process: a run that fails or panics
//! cannot take the sweep (or its neighbours) down with it, and a run
//! directory is the same whether a sweep, Slurm or a person started it.

pub mod launch;
pub mod local;
pub mod plan;
pub mod slurm;
pub mod spec;
pub mod status;

use std::path::PathBuf;

pub use plan::Plan;
pub use spec::SweepSpec;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// A sweep file that cannot be run, naming the place and field.
    #[error("sweep file: {0}")]
    Spec(String),
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("{0}")]
    Other(String),
}

impl SweepError {
    pub fn spec(at: &str, field: &str, message: impl std::fmt::Display) -> SweepError {
        SweepError::Spec(format!("{at}: {field}: {message}"))
    }

    pub fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> SweepError {
        SweepError::Io {
            path: path.into(),
            message: e.to_string(),
        }
    }
}
