//! The sweep file (`docs/sweeps.md`): a model, a data set, cells (dropout
//! mode × ratios, per-site overrides allowed), seeds and run settings. It
//! expands into a list of runs, each one ordinary `dropjit train` command.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use dropjit_graph::dropout::{check_ratio, DropoutConfig};
use dropjit_graph::DropoutMode;
use serde::{Deserialize, Serialize};

use super::SweepError;

/// The file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Names the sweep directory (`sweeps/<name>` unless `--dir`).
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Model file, relative to the sweep file.
    pub model: PathBuf,
    /// Data set, when not the model recipe's.
    #[serde(default)]
    pub dataset: Option<String>,
    pub seeds: Vec<u64>,
    /// Run settings of every cell (a cell's own `train` overrides them field by field).
    #[serde(default)]
    pub train: TrainSettings,
    pub cells: Vec<CellSpec>,
    /// Defaults of `--slurm` (its flags override them).
    #[serde(default)]
    pub slurm: SlurmSettings,
}

/// The job array's `#SBATCH` settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Slurm's time format, e.g. `04:00:00` or `1-00:00:00`, per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus_per_task: Option<usize>,
    /// At most this many array tasks at once (`--array=...%N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
    /// Extra lines, each written as `#SBATCH <line>` (e.g. `--mem=4G`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sbatch: Vec<String>,
}

/// Settings passed to `dropjit train` as flags of the same names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milestones: Option<Vec<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_every: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_train: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_test: Option<usize>,
    /// `jit` or `interp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
}

impl TrainSettings {
    /// `self` with every field `over` sets replaced.
    fn merged(&self, over: &TrainSettings) -> TrainSettings {
        macro_rules! pick {
            ($($f:ident),*) => { TrainSettings { $($f: over.$f.clone().or_else(|| self.$f.clone()),)* } };
        }
        pick!(
            schedule_scale,
            iterations,
            epochs,
            batch,
            lr,
            milestones,
            eval_every,
            log_every,
            checkpoint_every,
            limit_train,
            limit_test,
            engine
        )
    }

    /// The `dropjit train` flags.
    pub fn flags(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut flag = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                out.push(format!("--{name}"));
                out.push(v);
            }
        };
        let s = |v: Option<usize>| v.map(|n| n.to_string());
        flag("schedule-scale", self.schedule_scale.map(|x| x.to_string()));
        flag("iterations", s(self.iterations));
        flag("epochs", s(self.epochs));
        flag("batch", s(self.batch));
        flag("lr", self.lr.map(|x| x.to_string()));
        if let Some(m) = &self.milestones {
            // An explicit multistep schedule: milestones alone would be refused
            // for a recipe whose schedule is not multistep.
            flag("schedule", Some("multistep".into()));
            let list: Vec<String> = m.iter().map(|n| n.to_string()).collect();
            flag("milestones", Some(list.join(",")));
        }
        flag("eval-every", s(self.eval_every));
        flag("log-every", s(self.log_every));
        flag("checkpoint-every", s(self.checkpoint_every));
        flag("limit-train", s(self.limit_train));
        flag("limit-test", s(self.limit_test));
        flag("engine", self.engine.clone());
        out
    }

    fn check(&self, at: &str) -> Result<(), SweepError> {
        if let Some(s) = self.schedule_scale {
            if !(s.is_finite() && s > 0.0) {
                return Err(SweepError::spec(
                    at,
                    "schedule_scale",
                    format!("must be a positive number, got {s}"),
                ));
            }
        }
        if self.iterations.is_some() && self.epochs.is_some() {
            return Err(SweepError::spec(
                at,
                "epochs",
                "give iterations or epochs, not both",
            ));
        }
        if let Some(e) = &self.engine {
            if e != "jit" && e != "interp" {
                return Err(SweepError::spec(
                    at,
                    "engine",
                    format!("must be jit or interp, got '{e}'"),
                ));
            }
        }
        Ok(())
    }
}

/// One cell, or a grid of cells (`modes` × `ratios`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellSpec {
    /// Needed when `sites` is given; otherwise derived (`standard-0.3`).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    /// Grid form: every mode at every ratio (the ratio is `fwd` for standard
    /// and forward, `bwd` for backward, `fwd` for augmented with the cell's `bwd`).
    #[serde(default)]
    pub modes: Option<Vec<String>>,
    #[serde(default)]
    pub ratios: Option<Vec<f64>>,
    #[serde(default)]
    pub fwd: Option<f64>,
    #[serde(default)]
    pub bwd: Option<f64>,
    /// Per-site overrides by dropout node name: `{"drop3": {"mode": "plain"}}`.
    #[serde(default)]
    pub sites: BTreeMap<String, SiteOverride>,
    #[serde(default)]
    pub train: Option<TrainSettings>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fwd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bwd: Option<f64>,
}

/// One expanded cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub name: String,
    pub mode: String,
    pub fwd: f64,
    pub bwd: f64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sites: BTreeMap<String, SiteOverride>,
    pub train: TrainSettings,
}

impl Cell {
    pub fn dropout(&self) -> DropoutConfig {
        DropoutConfig {
            mode: DropoutMode::parse(&self.mode).expect("checked at expansion"),
            fwd: self.fwd,
            bwd: self.bwd,
        }
    }

    /// `--dropout MODE` and the ratios the mode uses.
    pub fn dropout_flags(&self) -> Vec<String> {
        let mut v = vec!["--dropout".to_string(), self.mode.clone()];
        let d = self.dropout();
        let (fwd, bwd) = match d.mode {
            DropoutMode::Plain => (false, false),
            DropoutMode::Standard | DropoutMode::Forward => (true, false),
            DropoutMode::Backward => (false, true),
            DropoutMode::Augmented => (true, true),
        };
        if fwd {
            v.extend(["--fwd".to_string(), self.fwd.to_string()]);
        }
        if bwd {
            v.extend(["--bwd".to_string(), self.bwd.to_string()]);
        }
        v
    }
}

/// One run: a cell at a seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedRun {
    /// Position in the sweep (Slurm's array index).
    pub index: usize,
    /// `<cell>-s<seed>`: the run directory's name under `runs/`.
    pub name: String,
    pub cell: String,
    pub seed: u64,
}

fn mode_of(at: &str, field: &str, name: &str) -> Result<DropoutMode, SweepError> {
    DropoutMode::parse(name).ok_or_else(|| {
        SweepError::spec(
            at,
            field,
            format!("unknown mode '{name}' (plain, standard, forward, backward, augmented)"),
        )
    })
}

fn ratio(at: &str, field: &str, p: f64) -> Result<f64, SweepError> {
    check_ratio(p).map_err(|m| SweepError::spec(at, field, m))?;
    Ok(p)
}

/// The name a cell gets when the file does not give one.
fn derived_name(mode: DropoutMode, fwd: f64, bwd: f64) -> String {
    match mode {
        DropoutMode::Plain => "plain".into(),
        DropoutMode::Standard | DropoutMode::Forward => format!("{}-{fwd}", mode.name()),
        DropoutMode::Backward => format!("backward-{bwd}"),
        DropoutMode::Augmented => format!("augmented-{fwd}-{bwd}"),
    }
}

/// One cell from `mode` and the ratios it needs; `at` names it in errors.
fn single(
    at: &str,
    mode: DropoutMode,
    fwd: Option<f64>,
    bwd: Option<f64>,
) -> Result<(f64, f64), SweepError> {
    let need = |field: &str, v: Option<f64>| {
        v.ok_or_else(|| SweepError::spec(at, field, format!("mode {} needs it", mode.name())))
    };
    let unused = |field: &str, v: Option<f64>| match v {
        Some(_) => Err(SweepError::spec(
            at,
            field,
            format!("mode {} does not use it", mode.name()),
        )),
        None => Ok(()),
    };
    let (f, b) = match mode {
        DropoutMode::Plain => {
            unused("fwd", fwd)?;
            unused("bwd", bwd)?;
            (0.0, 0.0)
        }
        DropoutMode::Standard | DropoutMode::Forward => {
            unused("bwd", bwd)?;
            (need("fwd", fwd)?, 0.0)
        }
        DropoutMode::Backward => {
            unused("fwd", fwd)?;
            (0.0, need("bwd", bwd)?)
        }
        DropoutMode::Augmented => (need("fwd", fwd)?, need("bwd", bwd)?),
    };
    Ok((ratio(at, "fwd", f)?, ratio(at, "bwd", b)?))
}

fn check_name(at: &str, field: &str, name: &str) -> Result<(), SweepError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(SweepError::spec(
            at,
            field,
            format!("'{name}' must be letters, digits, '-', '_' or '.' (it names a directory)"),
        ));
    }
    Ok(())
}

impl SweepSpec {
    pub fn load(path: &Path) -> Result<SweepSpec, SweepError> {
        let text = std::fs::read_to_string(path).map_err(|e| SweepError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        serde_json::from_str(&text)
            .map_err(|e| SweepError::Spec(format!("{}: {e}", path.display())))
    }

    /// Every cell, in file order (a grid row by row: modes outer, ratios inner).
    pub fn cells(&self) -> Result<Vec<Cell>, SweepError> {
        check_name("sweep", "name", &self.name)?;
        self.train.check("sweep")?;
        let mut out: Vec<Cell> = Vec::new();
        for (i, c) in self.cells.iter().enumerate() {
            let at = format!("cells[{i}]");
            let train = match &c.train {
                Some(t) => self.train.merged(t),
                None => self.train.clone(),
            };
            train.check(&at)?;
            let mut push = |name: String, mode: DropoutMode, fwd: f64, bwd: f64| {
                out.push(Cell {
                    name,
                    mode: mode.name().to_string(),
                    fwd,
                    bwd,
                    sites: c.sites.clone(),
                    train: train.clone(),
                })
            };
            match (&c.mode, &c.modes, &c.ratios) {
                (Some(m), None, None) => {
                    let mode = mode_of(&at, "mode", m)?;
                    let (f, b) = single(&at, mode, c.fwd, c.bwd)?;
                    let name = match &c.name {
                        Some(n) => n.clone(),
                        None if !c.sites.is_empty() => {
                            return Err(SweepError::spec(
                                &at,
                                "name",
                                "a cell with site overrides needs a name",
                            ))
                        }
                        None => derived_name(mode, f, b),
                    };
                    push(name, mode, f, b);
                }
                (None, Some(modes), Some(ratios)) => {
                    if c.name.is_some() || !c.sites.is_empty() {
                        return Err(SweepError::spec(
                            &at,
                            "modes",
                            "a grid takes no name or sites (list such cells one by one)",
                        ));
                    }
                    if modes.is_empty() || ratios.is_empty() {
                        return Err(SweepError::spec(
                            &at,
                            "modes",
                            "a grid needs modes and ratios",
                        ));
                    }
                    for m in modes {
                        let mode = mode_of(&at, "modes", m)?;
                        for &r in ratios {
                            let (fwd, bwd) = match mode {
                                DropoutMode::Plain => {
                                    return Err(SweepError::spec(
                                        &at,
                                        "modes",
                                        "plain has no ratio: list it as {\"mode\": \"plain\"}",
                                    ))
                                }
                                DropoutMode::Standard | DropoutMode::Forward => (Some(r), None),
                                DropoutMode::Backward => (None, Some(r)),
                                DropoutMode::Augmented => (Some(r), c.bwd),
                            };
                            let (f, b) = single(&at, mode, fwd, bwd)?;
                            push(derived_name(mode, f, b), mode, f, b);
                        }
                    }
                }
                _ => {
                    return Err(SweepError::spec(
                        &at,
                        "mode",
                        "give either mode (one cell) or modes and ratios (a grid)",
                    ))
                }
            }
        }
        if out.is_empty() {
            return Err(SweepError::spec("sweep", "cells", "no cells"));
        }
        let mut seen = BTreeSet::new();
        for (i, c) in out.iter().enumerate() {
            check_name(&format!("cell {i}"), "name", &c.name)?;
            if !seen.insert(c.name.as_str()) {
                return Err(SweepError::spec(
                    "sweep",
                    "cells",
                    format!("two cells are named '{}'", c.name),
                ));
            }
            for (site, o) in &c.sites {
                let at = format!("cell {} site {site}", c.name);
                if let Some(m) = &o.mode {
                    mode_of(&at, "mode", m)?;
                }
                for (field, p) in [("fwd", o.fwd), ("bwd", o.bwd)] {
                    if let Some(p) = p {
                        ratio(&at, field, p)?;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every run: cells in order, seeds inner.
    pub fn runs(&self, cells: &[Cell]) -> Result<Vec<PlannedRun>, SweepError> {
        if self.seeds.is_empty() {
            return Err(SweepError::spec("sweep", "seeds", "no seeds"));
        }
        let distinct: BTreeSet<u64> = self.seeds.iter().copied().collect();
        if distinct.len() != self.seeds.len() {
            return Err(SweepError::spec("sweep", "seeds", "a seed is listed twice"));
        }
        let mut out = Vec::new();
        for c in cells {
            for &seed in &self.seeds {
                out.push(PlannedRun {
                    index: out.len(),
                    name: format!("{}-s{seed}", c.name),
                    cell: c.name.clone(),
                    seed,
                });
            }
        }
        Ok(out)
    }
}
