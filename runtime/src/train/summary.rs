//! `summary.json`: the numbers a run is remembered by.

use serde::{Deserialize, Serialize};

use super::checkpoint::RunState;
use super::config::RunConfig;

pub const SUMMARY_FILE: &str = "summary.json";
pub const FINAL_FILE: &str = "final.safetensors";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassAccuracy {
    pub class: usize,
    pub name: String,
    pub correct: u64,
    pub images: u64,
    pub accuracy: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub model: String,
    pub dropout: String,
    pub seed: u64,
    pub engine: String,
    pub iterations: usize,
    pub epochs: f64,
    pub final_test_accuracy: f64,
    pub final_test_loss: f64,
    pub best_test_accuracy: f64,
    pub best_test_iteration: usize,
    /// Mean training loss and accuracy (with dropout, augmentation) of the last epoch.
    pub final_train_loss: f64,
    pub final_train_accuracy: f64,
    /// Wall-clock seconds of all sessions, evaluation and checkpoints included.
    pub wall_seconds: f64,
    /// Training images per second of training steps alone.
    pub images_per_second: f64,
    pub per_class_accuracy: Vec<ClassAccuracy>,
}

impl Summary {
    /// From the final state; `None` if the run has no evaluation yet.
    pub fn of(config: &RunConfig, state: &RunState, names: &[String]) -> Option<Summary> {
        let (_, test) = state.last_test.as_ref()?;
        let ipe = config.recipe.iterations_per_epoch.max(1);
        Some(Summary {
            model: config.model.name.clone(),
            dropout: config.dropout.description.clone(),
            seed: config.seed,
            engine: config.engine.clone(),
            iterations: state.iteration,
            epochs: state.iteration as f64 / ipe as f64,
            final_test_accuracy: test.accuracy,
            final_test_loss: test.loss,
            best_test_accuracy: state.best_test_accuracy.unwrap_or(test.accuracy),
            best_test_iteration: state.best_test_iteration.unwrap_or(state.iteration),
            final_train_loss: state.last_epoch.loss(),
            final_train_accuracy: state.last_epoch.accuracy(),
            wall_seconds: state.wall_seconds,
            images_per_second: state.total.images_per_second(),
            per_class_accuracy: test
                .per_class
                .iter()
                .enumerate()
                .map(|(i, &(correct, images))| ClassAccuracy {
                    class: i,
                    name: names
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| format!("class {i}")),
                    correct,
                    images,
                    accuracy: correct as f64 / images.max(1) as f64,
                })
                .collect(),
        })
    }
}
