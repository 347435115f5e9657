//! A sweep resolved against its directory: the cells and runs of the sweep
//! file, the model file of each cell (a copy with the cell's site overrides
//! where it has some), and `sweep.json`, the record `--status`, `report` and
//! Slurm's array tasks read.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spec::{Cell, PlannedRun, SiteOverride, SlurmSettings, SweepSpec};
use super::SweepError;
use crate::train::files;

pub const PLAN_FILE: &str = "sweep.json";
pub const RUNS_DIR: &str = "runs";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The sweep file, absolute.
    pub spec_file: PathBuf,
    /// The model file, absolute.
    pub model: PathBuf,
    /// The model's name (`convnet_quick`).
    pub model_name: String,
    /// The data set every run trains on.
    pub dataset: String,
    /// `--dataset` for each run, when the sweep file overrides the recipe's.
    #[serde(default)]
    pub dataset_flag: Option<String>,
    pub seeds: Vec<u64>,
    pub cells: Vec<Cell>,
    pub runs: Vec<PlannedRun>,
    #[serde(default)]
    pub slurm: SlurmSettings,
}

fn absolute(p: &Path) -> Result<PathBuf, SweepError> {
    std::fs::canonicalize(p).map_err(|e| SweepError::io(p, e))
}

impl Plan {
    /// Reads and expands the sweep file, checks the model (and every cell's
    /// overridden copy, written under `dir/models/`) loads.
    pub fn prepare(spec_file: &Path, dir: &Path) -> Result<Plan, SweepError> {
        let spec = SweepSpec::load(spec_file)?;
        let cells = spec.cells()?;
        let runs = spec.runs(&cells)?;
        let spec_file = absolute(spec_file)?;
        let base = spec_file.parent().unwrap_or(Path::new("."));
        let model = absolute(&base.join(&spec.model)).map_err(|e| {
            SweepError::Spec(format!(
                "model: {e} (the path is relative to the sweep file)"
            ))
        })?;
        let g = load_graph(&model)?;
        if let Some(d) = &spec.dataset {
            d.parse::<crate::data::DatasetKind>()
                .map_err(|e| SweepError::spec("sweep", "dataset", e))?;
        }
        let plan = Plan {
            name: spec.name.clone(),
            description: spec.description.clone(),
            spec_file,
            model,
            model_name: g.name.clone(),
            dataset: spec
                .dataset
                .clone()
                .unwrap_or_else(|| g.recipe.dataset.clone()),
            dataset_flag: spec.dataset.clone(),
            seeds: spec.seeds.clone(),
            cells,
            runs,
            slurm: spec.slurm.clone(),
        };
        for cell in &plan.cells {
            if !cell.sites.is_empty() {
                plan.write_cell_model(dir, cell)?;
            }
        }
        Ok(plan)
    }

    /// Writes `sweep.json` (creating the sweep directory).
    pub fn save(&self, dir: &Path) -> Result<(), SweepError> {
        std::fs::create_dir_all(dir.join(RUNS_DIR)).map_err(|e| SweepError::io(dir, e))?;
        files::write_json(&dir.join(PLAN_FILE), self).map_err(|e| SweepError::Other(e.to_string()))
    }

    pub fn load(dir: &Path) -> Result<Plan, SweepError> {
        let path = dir.join(PLAN_FILE);
        if !path.is_file() {
            return Err(SweepError::Other(format!(
                "{} is not a sweep directory (no {PLAN_FILE}; `dropjit sweep SPEC` writes it)",
                dir.display()
            )));
        }
        files::read_json(&path).map_err(|e| SweepError::Other(e.to_string()))
    }

    pub fn cell(&self, name: &str) -> &Cell {
        self.cells
            .iter()
            .find(|c| c.name == name)
            .expect("every run names one of the plan's cells")
    }

    pub fn run_dir(&self, dir: &Path, run: &PlannedRun) -> PathBuf {
        dir.join(RUNS_DIR).join(&run.name)
    }

    /// The model file a cell trains: the sweep's, or its copy with the cell's site overrides.
    pub fn model_for(&self, dir: &Path, cell: &Cell) -> PathBuf {
        if cell.sites.is_empty() {
            self.model.clone()
        } else {
            dir.join("models").join(format!("{}.json", cell.name))
        }
    }

    /// The model with `cell.sites` set on its dropout nodes. Written only when
    /// the content changes: a resumed run checks the file's fingerprint.
    fn write_cell_model(&self, dir: &Path, cell: &Cell) -> Result<(), SweepError> {
        let text =
            std::fs::read_to_string(&self.model).map_err(|e| SweepError::io(&self.model, e))?;
        let mut json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| SweepError::Other(format!("{}: {e}", self.model.display())))?;
        let nodes = json
            .get_mut("nodes")
            .and_then(|n| n.as_array_mut())
            .ok_or_else(|| SweepError::Other(format!("{}: no nodes", self.model.display())))?;
        for (site, over) in &cell.sites {
            let node = nodes
                .iter_mut()
                .find(|n| n.get("name").and_then(|v| v.as_str()) == Some(site.as_str()))
                .ok_or_else(|| {
                    SweepError::spec(
                        &format!("cell {}", cell.name),
                        "sites",
                        format!("the model has no node '{site}'"),
                    )
                })?;
            if node.get("op").and_then(|v| v.as_str()) != Some("dropout") {
                return Err(SweepError::spec(
                    &format!("cell {}", cell.name),
                    "sites",
                    format!("node '{site}' is not a dropout node"),
                ));
            }
            apply_override(node, over);
        }
        let models = dir.join("models");
        std::fs::create_dir_all(&models).map_err(|e| SweepError::io(&models, e))?;
        let path = self.model_for(dir, cell);
        let out = serde_json::to_string_pretty(&json).expect("a JSON value serialises") + "\n";
        if std::fs::read_to_string(&path).ok().as_deref() != Some(out.as_str()) {
            crate::durable::write(&path, out.as_bytes()).map_err(|e| SweepError::io(&path, e))?;
        }
        load_graph(&path).map(|_| ())
    }
}

fn apply_override(node: &mut serde_json::Value, over: &SiteOverride) {
    let obj = node.as_object_mut().expect("a node is an object");
    if let Some(m) = &over.mode {
        obj.insert("mode".into(), m.clone().into());
    }
    if let Some(p) = over.fwd {
        obj.insert("fwd".into(), p.into());
    }
    if let Some(p) = over.bwd {
        obj.insert("bwd".into(), p.into());
    }
}

fn load_graph(path: &Path) -> Result<dropjit_graph::Graph, SweepError> {
    dropjit_graph::load(path, dropjit_graph::GraphLoadOptions::default())
        .map_err(|e| SweepError::Other(e.to_string()))
}
