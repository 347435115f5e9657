//! `dropjit report SWEEP_DIR` and `dropjit plot RUN_DIR...`: a sweep's
//! results per cell (mean ± standard deviation over seeds) beside the
//! published figures of `results/paper.json`, and the plots a person would
//! rather look at: accuracy against dropout ratio per mode, and training
//! curves.

pub mod collect;
pub mod paper;
pub mod plot;
pub mod table;

pub use collect::{collect, CellResult, RunCurve};
pub use paper::PaperResults;
