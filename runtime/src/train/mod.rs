//! Training runs: settings (`config.json`), data set-up, the loop over any
//! [`Engine`](crate::engine::Engine), evaluation, metrics, checkpoints and
//! resume. The command line lives in `cli/train.rs` and `cli/eval.rs`; the
//! user's guide in `docs/training.md`.

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod evaluate;
pub mod files;
pub mod interrupt;
pub mod metrics;
pub mod progress;
pub mod setup;
pub mod summary;
pub mod trainer;

pub use checkpoint::RunState;
pub use config::RunConfig;
pub use error::TrainError;
pub use trainer::{Outcome, Trainer};
