//! A sweep's results read back from its run directories: final test accuracy
//! per seed, grouped by cell, and each run's curves from `metrics.jsonl`.

use std::path::Path;

use super::paper::PaperResults;
use crate::sweep::spec::Cell;
use crate::sweep::status::{run_status, RunStatus};
use crate::sweep::Plan;
use crate::train::metrics::{Record, METRICS_FILE};

/// One run's curves: (iteration, test accuracy) and (iteration, mean training loss).
#[derive(Clone, Debug, PartialEq)]
pub struct RunCurve {
    pub label: String,
    pub test_accuracy: Vec<(f64, f64)>,
    pub train_loss: Vec<(f64, f64)>,
}

#[derive(Clone, Debug)]
pub struct CellResult {
    pub cell: Cell,
    /// (seed, final test accuracy) of the finished runs.
    pub accuracies: Vec<(u64, f64)>,
    /// Runs of the cell not finished yet.
    pub unfinished: usize,
    pub curves: Vec<RunCurve>,
    /// The published figure for this cell, if any.
    pub paper: Option<f64>,
}

impl CellResult {
    pub fn mean(&self) -> Option<f64> {
        let n = self.accuracies.len();
        (n > 0).then(|| self.accuracies.iter().map(|a| a.1).sum::<f64>() / n as f64)
    }

    /// Sample standard deviation over seeds (n − 1); `None` below two seeds.
    pub fn sd(&self) -> Option<f64> {
        let n = self.accuracies.len();
        let m = self.mean()?;
        (n > 1).then(|| {
            let ss: f64 = self.accuracies.iter().map(|a| (a.1 - m).powi(2)).sum();
            (ss / (n - 1) as f64).sqrt()
        })
    }
}

/// Every cell of `plan` with what its runs in `dir` have produced.
pub fn collect(plan: &Plan, dir: &Path, paper: &PaperResults) -> Vec<CellResult> {
    plan.cells
        .iter()
        .map(|cell| {
            let mut r = CellResult {
                cell: cell.clone(),
                accuracies: vec![],
                unfinished: 0,
                curves: vec![],
                // A cell with site overrides is not one of the paper's.
                paper: if cell.sites.is_empty() {
                    paper.lookup(
                        &plan.model_name,
                        &plan.dataset,
                        &cell.mode,
                        cell.fwd,
                        cell.bwd,
                    )
                } else {
                    None
                },
            };
            for run in plan.runs.iter().filter(|r| r.cell == cell.name) {
                let rd = plan.run_dir(dir, run);
                match run_status(&rd) {
                    RunStatus::Done(s) => r.accuracies.push((run.seed, s.final_test_accuracy)),
                    _ => r.unfinished += 1,
                }
                if let Ok(c) = read_curve(&rd, &format!("seed {}", run.seed)) {
                    r.curves.push(c);
                }
            }
            r
        })
        .collect()
}

/// A run's curves from its `metrics.jsonl`.
pub fn read_curve(run_dir: &Path, label: &str) -> Result<RunCurve, String> {
    let path = run_dir.join(METRICS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut c = RunCurve {
        label: label.to_string(),
        test_accuracy: vec![],
        train_loss: vec![],
    };
    for (i, line) in text.lines().enumerate() {
        let rec: Record = serde_json::from_str(line)
            .map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))?;
        let it = rec.iteration as f64;
        match rec.kind.as_str() {
            "test" => c.test_accuracy.push((it, rec.accuracy)),
            "train" => c.train_loss.push((it, rec.loss)),
            _ => {}
        }
    }
    Ok(c)
}
