//! The published figures (`results/paper.json`, built into the binary; a
//! different file can be given with `--paper`): looked up by model, data set,
//! mode and ratios, never typed into the report code.

use std::path::Path;

use serde::Deserialize;

const SHIPPED: &str = include_str!("../../../results/paper.json");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaperResults {
    pub source: String,
    /// How the paper's ratios map onto `fwd` / `bwd`.
    #[serde(default)]
    pub convention: Option<String>,
    pub results: Vec<PaperEntry>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaperEntry {
    pub model: String,
    pub dataset: String,
    pub mode: String,
    pub fwd: f64,
    pub bwd: f64,
    pub accuracy: f64,
    #[serde(default)]
    pub table: Option<String>,
}

impl PaperResults {
    pub fn shipped() -> PaperResults {
        serde_json::from_str(SHIPPED).expect("results/paper.json is valid (tested)")
    }

    pub fn load(path: &Path) -> Result<PaperResults, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The published accuracy of a cell, if the paper has one.
    pub fn lookup(
        &self,
        model: &str,
        dataset: &str,
        mode: &str,
        fwd: f64,
        bwd: f64,
    ) -> Option<f64> {
        let same = |a: f64, b: f64| (a - b).abs() < 1e-9;
        self.results
            .iter()
            .find(|e| {
                e.model == model
                    && e.dataset == dataset
                    && e.mode == mode
                    && same(e.fwd, fwd)
                    && same(e.bwd, bwd)
            })
            .map(|e| e.accuracy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_figures_parse_and_answer_the_tables_cells() {
        let p = PaperResults::shipped();
        assert_eq!(p.results.len(), 62);
        assert_eq!(
            p.lookup("convnet_quick", "cifar10", "plain", 0.0, 0.0),
            Some(0.7579)
        );
        assert_eq!(
            p.lookup("convnet_quick", "cifar10", "forward", 0.3, 0.0),
            Some(0.6908)
        );
        assert_eq!(
            p.lookup("resnet20", "cifar10", "backward", 0.0, 0.005),
            Some(0.9146)
        );
        assert_eq!(
            p.lookup("resnet20", "cifar100", "augmented", 0.2, 0.0001),
            Some(0.6770)
        );
        assert_eq!(
            p.lookup("convnet_quick", "svhn", "standard", 0.3, 0.0),
            Some(0.9249)
        );
        assert_eq!(
            p.lookup("convnet_quick", "cifar10", "forward", 0.25, 0.0),
            None
        );
    }
}

#[cfg(test)]
mod shipped_sweeps {
    use std::path::Path;

    use super::PaperResults;
    use crate::sweep::Plan;

    /// Every cell of the sweep files that reproduce the paper's tables has
    /// its published figure, so the report can put them side by side.
    #[test]
    fn the_paper_sweeps_expand_to_the_tables_cells() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sweeps");
        let paper = PaperResults::shipped();
        let expected = [
            ("convnet_quick-cifar10-modes", 57),
            ("resnet20-cifar10-modes", 57),
            ("convnet_quick-svhn-augmented", 18),
            ("convnet_quick-cifar10-augmented", 18),
            ("resnet20-svhn-augmented", 18),
            ("resnet20-cifar10-augmented", 18),
            ("resnet20-cifar100-augmented", 18),
            ("convnet_quick-cifar10-results", 27),
        ];
        for (name, runs) in expected {
            let tmp = tempfile::tempdir().unwrap();
            let plan = Plan::prepare(&root.join(format!("{name}.json")), tmp.path()).unwrap();
            assert_eq!(plan.runs.len(), runs, "{name}");
            for c in &plan.cells {
                let fig = paper.lookup(&plan.model_name, &plan.dataset, &c.mode, c.fwd, c.bwd);
                assert!(fig.is_some(), "{name}: no published figure for {}", c.name);
            }
        }
        let quarter = Plan::prepare(
            &root.join("resnet20-cifar10-quarter.json"),
            tempfile::tempdir().unwrap().path(),
        )
        .unwrap();
        assert_eq!(quarter.cells[0].train.schedule_scale, Some(0.25));
    }
}
