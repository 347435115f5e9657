//! `dropjit train`: runs a model file's recipe (every field overridable by a
//! flag), or continues a run with `--resume DIR`. Everything is checked before
//! the first step. The guide is `docs/training.md`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use dropjit_graph::recipe::{Augment, Length, LrSchedule, Normalize, Recipe};
use dropjit_graph::step::SgdConfig;
use dropjit_graph::{Graph, GraphLoadOptions};

use super::data::data_root_for;
use super::dropout_args::DropoutArgs;
use super::CliError;
use crate::data::DatasetKind;
use crate::engine::{self, Engine, EngineKind, EngineSpec};
use crate::train::checkpoint::{self, RunState};
use crate::train::config::{
    self, default_run_name, fingerprint, AugmentConfig, DataConfig, DropoutSetting, ModelConfig,
    NormSummary, RecipeConfig, RunConfig, ScheduleConfig,
};
use crate::train::metrics::MetricsLog;
use crate::train::setup::{load_data, Limits, RunData};
use crate::train::{Outcome, Trainer};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ScheduleArg {
    Constant,
    Multistep,
    Cosine,
}

#[derive(Args, Debug, Default)]
pub struct TrainArgs {
    /// Model file (JSON graph) whose recipe to run, e.g. models/convnet_quick.json
    /// (with --resume: the run's own, unless the file moved).
    #[arg(long)]
    pub graph: Option<PathBuf>,
    /// Reject graphs whose training buffers would exceed this many GiB.
    #[arg(long, default_value_t = 8.0)]
    pub memory_limit_gib: f64,
    /// Data directory (default: $DROPJIT_DATA, else ./data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Fail instead of fetching the data set when it is not in the data directory.
    #[arg(long)]
    pub no_download: bool,
    /// Data set (default: the recipe's).
    #[arg(long, value_parser = ["cifar10", "cifar100", "svhn", "mnist", "fashion-mnist"])]
    pub dataset: Option<String>,
    #[command(flatten)]
    pub dropout: DropoutArgs,
    /// Run length in epochs.
    #[arg(long, conflicts_with = "iterations")]
    pub epochs: Option<usize>,
    /// Run length in iterations (batches).
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Batch size.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Base learning rate.
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Learning-rate schedule.
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    /// Multistep milestones (iterations), e.g. 32000,48000.
    #[arg(long, value_delimiter = ',')]
    pub milestones: Option<Vec<usize>>,
    /// Multistep factor at each milestone, in (0, 1).
    #[arg(long, allow_negative_numbers = true)]
    pub gamma: Option<f64>,
    /// Scale the run length and every milestone together (0.25: a quarter-length recipe).
    #[arg(long, allow_negative_numbers = true)]
    pub schedule_scale: Option<f64>,
    /// Cosine schedule's final learning rate.
    #[arg(long, allow_negative_numbers = true)]
    pub min_lr: Option<f64>,
    /// Weight decay (L2, added to the gradient).
    #[arg(long, allow_negative_numbers = true)]
    pub wd: Option<f64>,
    /// SGD momentum.
    #[arg(long, allow_negative_numbers = true)]
    pub momentum: Option<f64>,
    /// Random crop (pad 4) + horizontal flip, unless the recipe sets its own.
    #[arg(long, conflicts_with = "no_augment")]
    pub augment: bool,
    /// No augmentation.
    #[arg(long)]
    pub no_augment: bool,
    /// Shuffle the training set every epoch.
    #[arg(long, conflicts_with = "no_shuffle")]
    pub shuffle: bool,
    /// Visit the training set in file order.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Input normalisation.
    #[arg(long, value_parser = ["mean_image", "channel_mean_std", "none"])]
    pub normalize: Option<String>,
    /// Run seed: initialisation, data order, augmentation and dropout masks [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads for the engine [default: all cores] (the interpreter uses one).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Evaluate on the test set every N iterations [default: once per epoch].
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Write a training record to metrics.jsonl (and, when stderr is not a terminal, a
    /// progress line to stderr) every N iterations [default: min(100, epoch)].
    #[arg(long)]
    pub log_every: Option<usize>,
    /// Also checkpoint every N iterations (always: every epoch and at the end).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Run directory [default: runs/<model>-<mode>-f<fwd>-b<bwd>-s<seed>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in DIR from its last checkpoint (settings from DIR/config.json).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Initial weights (safetensors, PyTorch names) instead of the model's initialisation.
    #[arg(long, value_name = "W.safetensors")]
    pub init: Option<PathBuf>,
    /// Executor [default: jit; interp is the slow reference interpreter].
    #[arg(long, value_enum)]
    pub engine: Option<EngineKind>,
    /// Smoke tests: train on the first N training images only (statistics too).
    #[arg(long)]
    pub limit_train: Option<usize>,
    /// Smoke tests: evaluate on the first N test images only.
    #[arg(long)]
    pub limit_test: Option<usize>,
    /// Stop after N iterations as if interrupted, leaving a checkpoint to --resume (for tests).
    #[arg(long)]
    pub stop_after: Option<usize>,
}

/// Default engine of `train` and `eval`.
pub const DEFAULT_ENGINE: EngineKind = EngineKind::Jit;

pub fn run(args: &TrainArgs) -> Result<ExitCode, CliError> {
    match &args.resume {
        Some(dir) => resume(args, dir),
        None => start(args),
    }
}

fn positive(flag: &str, v: Option<usize>) -> Result<(), CliError> {
    match v {
        Some(0) => Err(format!("{flag} must be at least 1, got 0").into()),
        _ => Ok(()),
    }
}

fn in_range(flag: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<(), CliError> {
    match v {
        Some(x) if !(lo..hi).contains(&x) => {
            Err(format!("{flag} must be in [{lo}, {hi}), got {x}").into())
        }
        _ => Ok(()),
    }
}

/// The simple checks of every flag, before anything is loaded.
fn check_flags(a: &TrainArgs) -> Result<(), CliError> {
    for (flag, v) in [
        ("--epochs", a.epochs),
        ("--iterations", a.iterations),
        ("--batch", a.batch),
        ("--threads", a.threads),
        ("--eval-every", a.eval_every),
        ("--log-every", a.log_every),
        ("--checkpoint-every", a.checkpoint_every),
        ("--limit-train", a.limit_train),
        ("--limit-test", a.limit_test),
        ("--stop-after", a.stop_after),
    ] {
        positive(flag, v)?;
    }
    if let Some(lr) = a.lr {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(format!("--lr must be a positive number, got {lr}").into());
        }
    }
    in_range("--momentum", a.momentum, 0.0, 1.0)?;
    in_range("--wd", a.wd, 0.0, 1.0)?;
    in_range("--gamma", a.gamma, 0.0, 1.0)?;
    if let Some(m) = &a.milestones {
        if m.contains(&0) || m.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!(
                "--milestones must be increasing iteration numbers >= 1, got {m:?}"
            )
            .into());
        }
    }
    if let Some(s) = a.schedule_scale {
        if !(s.is_finite() && s > 0.0) {
            return Err(format!("--schedule-scale must be a positive number, got {s}").into());
        }
    }
    if let Some(m) = a.min_lr {
        if !(m.is_finite() && m >= 0.0) {
            return Err(format!("--min-lr must be >= 0, got {m}").into());
        }
    }
    if a.memory_limit_gib.is_nan() || a.memory_limit_gib <= 0.0 {
        return Err(format!(
            "--memory-limit-gib must be positive, got {}",
            a.memory_limit_gib
        )
        .into());
    }
    Ok(())
}

fn load_graph(path: &Path, memory_limit_gib: f64) -> Result<(Graph, String), CliError> {
    let opts = GraphLoadOptions {
        memory_limit_bytes: (memory_limit_gib * (1u64 << 30) as f64) as u64,
    };
    let g = dropjit_graph::load(path, opts)?;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok((g, fingerprint(&bytes)))
}

/// The model's recipe with every flag applied.
fn resolve_recipe(base: &Recipe, a: &TrainArgs) -> Result<Recipe, CliError> {
    let mut r = base.clone();
    if let Some(d) = &a.dataset {
        r.dataset = d.clone();
    }
    if let Some(n) = a.batch {
        r.batch_size = n;
    }
    match (a.epochs, a.iterations) {
        (Some(e), _) => r.length = Length::Epochs(e),
        (_, Some(i)) => r.length = Length::Iterations(i),
        _ => {}
    }
    if let Some(lr) = a.lr {
        r.base_lr = lr;
    }
    r.schedule = match (a.schedule, r.schedule) {
        (Some(ScheduleArg::Constant), _) => LrSchedule::Constant,
        (Some(ScheduleArg::Multistep), _) => LrSchedule::MultiStep {
            milestones: vec![],
            gamma: 0.1,
        },
        (Some(ScheduleArg::Cosine), _) => LrSchedule::Cosine { min_lr: 0.0 },
        (None, s) => s,
    };
    match &mut r.schedule {
        LrSchedule::MultiStep { milestones, gamma } => {
            if let Some(m) = &a.milestones {
                *milestones = m.clone();
            }
            if let Some(g) = a.gamma {
                *gamma = g;
            }
        }
        s => {
            if a.milestones.is_some() || a.gamma.is_some() {
                return Err(format!(
                    "--milestones and --gamma need --schedule multistep (the schedule is {})",
                    schedule_name(s)
                )
                .into());
            }
        }
    }
    match &mut r.schedule {
        LrSchedule::Cosine { min_lr } => {
            if let Some(m) = a.min_lr {
                *min_lr = m;
            }
            if *min_lr > r.base_lr {
                return Err(format!(
                    "--min-lr {min_lr} is above the base learning rate {}",
                    r.base_lr
                )
                .into());
            }
        }
        s => {
            if a.min_lr.is_some() {
                return Err(format!(
                    "--min-lr needs --schedule cosine (the schedule is {})",
                    schedule_name(s)
                )
                .into());
            }
        }
    }
    if let Some(m) = a.momentum {
        r.momentum = m;
    }
    if let Some(wd) = a.wd {
        r.weight_decay = wd;
    }
    if a.no_augment {
        r.augment = None;
    } else if a.augment && r.augment.is_none() {
        r.augment = Some(Augment {
            crop_padding: 4,
            flip: true,
        });
    }
    if a.shuffle || a.no_shuffle {
        r.shuffle = a.shuffle;
    }
    if let Some(n) = &a.normalize {
        r.normalize = match n.as_str() {
            "mean_image" => Normalize::MeanImage,
            "none" => Normalize::None,
            _ => Normalize::ChannelMeanStd,
        };
    }
    Ok(r)
}

/// `--schedule-scale S`: the run length and every milestone times `S`,
/// rounded to whole iterations; refuses a scale that leaves no iteration or
/// merges two milestones (the decays would no longer be the recipe's).
fn scale_schedule(
    iterations: usize,
    schedule: &LrSchedule,
    scale: f64,
) -> Result<(usize, LrSchedule), CliError> {
    let scaled = |n: usize| (n as f64 * scale).round() as usize;
    let total = scaled(iterations);
    if total == 0 {
        return Err(format!(
            "--schedule-scale {scale} leaves no iteration of the {iterations}-iteration run"
        )
        .into());
    }
    let schedule = match schedule {
        LrSchedule::MultiStep { milestones, gamma } => {
            let m: Vec<usize> = milestones.iter().map(|&m| scaled(m)).collect();
            if m.contains(&0) || m.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!(
                    "--schedule-scale {scale} turns the milestones {milestones:?} into {m:?}; \
                     choose a larger scale"
                )
                .into());
            }
            LrSchedule::MultiStep {
                milestones: m,
                gamma: *gamma,
            }
        }
        s => s.clone(),
    };
    Ok((total, schedule))
}

fn schedule_name(s: &LrSchedule) -> &'static str {
    match s {
        LrSchedule::Constant => "constant",
        LrSchedule::MultiStep { .. } => "multistep",
        LrSchedule::Cosine { .. } => "cosine",
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn build_engine(
    kind: EngineKind,
    g: &Graph,
    cfg: &RunConfig,
    threads: usize,
    params: Vec<Vec<f32>>,
) -> Result<Box<dyn Engine>, CliError> {
    let spec = EngineSpec {
        graph: g,
        dropout: cfg.dropout.config()?,
        sgd: SgdConfig {
            momentum: cfg.recipe.momentum as f32,
            weight_decay: cfg.recipe.weight_decay as f32,
        },
        seed: cfg.seed,
        threads,
        params,
    };
    Ok(engine::create(kind, spec)?)
}

/// A fresh run.
fn start(a: &TrainArgs) -> Result<ExitCode, CliError> {
    let graph_path = a
        .graph
        .as_deref()
        .ok_or("--graph FILE is required (or --resume DIR to continue a run)")?;
    let dropout = a.dropout.config()?;
    check_flags(a)?;
    let (g, fp) = load_graph(graph_path, a.memory_limit_gib)?;
    let recipe = resolve_recipe(&g.recipe, a)?;
    let seed = a.seed.unwrap_or(0);
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(default_run_name(&g.name, &dropout, seed)));
    if dir.join(config::CONFIG_FILE).exists() || dir.join(checkpoint::STATE_FILE).exists() {
        return Err(format!(
            "{} already holds a run; continue it with --resume {} or choose another --out",
            dir.display(),
            dir.display()
        )
        .into());
    }
    let kind: DatasetKind = recipe.dataset.parse()?;
    let root = data_root_for(kind, a.data.as_deref(), !a.no_download)?;
    let limits = Limits {
        train: a.limit_train,
        test: a.limit_test,
    };
    let norm = config::normalization(config::normalize_name(recipe.normalize)).expect("known name");
    let data = load_data(&root, Some(kind), limits, norm, &g)?;
    let train_len = data.dataset.train.len();
    let ipe = train_len / recipe.batch_size;
    if ipe == 0 {
        return Err(format!(
            "batch size {} is larger than the training set ({train_len} images); lower --batch",
            recipe.batch_size
        )
        .into());
    }
    let (iterations, epochs) = match recipe.length {
        Length::Iterations(n) => (n, None),
        Length::Epochs(e) => (e * ipe, Some(e)),
    };
    let (iterations, schedule) = match a.schedule_scale {
        Some(s) => scale_schedule(iterations, &recipe.schedule, s)?,
        None => (iterations, recipe.schedule.clone()),
    };
    let params = match &a.init {
        Some(w) => crate::weights::load(&g, w)?,
        None => dropjit_graph::init::init_params(&g, seed),
    };
    let engine_kind = a.engine.unwrap_or(DEFAULT_ENGINE);
    let threads = a.threads.unwrap_or_else(default_threads);
    let cfg = RunConfig {
        dropjit_version: env!("CARGO_PKG_VERSION").to_string(),
        command: std::env::args().collect(),
        model: ModelConfig {
            path: absolute(graph_path),
            name: g.name.clone(),
            fingerprint: fp,
        },
        recipe: RecipeConfig {
            source: recipe.source.clone(),
            dataset: recipe.dataset.clone(),
            batch_size: recipe.batch_size,
            iterations,
            epochs,
            iterations_per_epoch: ipe,
            base_lr: recipe.base_lr,
            schedule: ScheduleConfig::of(&schedule),
            schedule_scale: a.schedule_scale,
            momentum: recipe.momentum,
            weight_decay: recipe.weight_decay,
            shuffle: recipe.shuffle,
            augment: recipe.augment.map(|x| AugmentConfig {
                crop_padding: x.crop_padding,
                flip: x.flip,
            }),
            normalize: config::normalize_name(recipe.normalize).to_string(),
        },
        dropout: DropoutSetting::of(&dropout),
        seed,
        data: data_config(&root, &data, limits),
        engine: engine_kind.name().to_string(),
        threads,
        eval_every: a.eval_every.unwrap_or(ipe),
        log_every: a.log_every.unwrap_or(ipe.min(100)),
        checkpoint_every: a.checkpoint_every,
        init: a.init.as_deref().map(absolute),
    };
    let mut engine = build_engine(engine_kind, &g, &cfg, threads, params)?;

    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    cfg.save(&dir)?;
    let mut metrics = MetricsLog::open(&dir, 0)?;
    let trainer = Trainer {
        dir: &dir,
        config: &cfg,
        graph: &g,
        data: &data,
        stop_after: a.stop_after,
    };
    let mut state = RunState::default();
    trainer.checkpoint(engine.as_ref(), &mut state, &metrics)?;
    print_header(&cfg, &data, &dir, "training");
    crate::train::interrupt::install();
    let outcome = trainer.run(engine.as_mut(), state, &mut metrics)?;
    Ok(report(outcome, &dir))
}

fn data_config(root: &Path, data: &RunData, limits: Limits) -> DataConfig {
    let ds = &data.dataset;
    DataConfig {
        dir: absolute(root),
        dataset_dir: absolute(&ds.dir),
        classes: ds.num_classes,
        train_images: ds.train.len(),
        test_images: ds.test.len(),
        limit_train: limits.train,
        limit_test: limits.test,
        normalization: NormSummary::of(&data.stats),
    }
}

/// `--resume DIR`: the run's settings, its data (checked to be the same) and
/// its last checkpoint.
fn resume(a: &TrainArgs, dir: &Path) -> Result<ExitCode, CliError> {
    let fixed = fixed_flags_given(a);
    if !fixed.is_empty() {
        return Err(format!(
            "--resume continues the run with the settings in {}; drop {} (allowed: --graph, \
             --data, --engine, --threads, --stop-after, --memory-limit-gib)",
            dir.join(config::CONFIG_FILE).display(),
            fixed.join(", ")
        )
        .into());
    }
    check_flags(a)?;
    if !dir.is_dir() {
        return Err(format!("--resume {}: no such run directory", dir.display()).into());
    }
    let cfg = RunConfig::load(dir)?;
    let state = checkpoint::recover(dir)?;
    let graph_path = a.graph.clone().unwrap_or_else(|| cfg.model.path.clone());
    let (g, fp) = load_graph(&graph_path, a.memory_limit_gib)?;
    if fp != cfg.model.fingerprint {
        return Err(format!(
            "{} changed since the run started (fingerprint {fp}, the run has {}); \
             resume needs the same model file",
            graph_path.display(),
            cfg.model.fingerprint
        )
        .into());
    }
    let kind: DatasetKind = cfg.recipe.dataset.parse()?;
    let root = a.data.clone().unwrap_or_else(|| cfg.data.dir.clone());
    let limits = Limits {
        train: cfg.data.limit_train,
        test: cfg.data.limit_test,
    };
    let norm = config::normalization(&cfg.recipe.normalize)
        .ok_or_else(|| format!("unknown normalisation '{}'", cfg.recipe.normalize))?;
    let data = load_data(&root, Some(kind), limits, norm, &g)?;
    let now = data_config(&root, &data, limits);
    if (now.train_images, now.test_images, &now.normalization)
        != (
            cfg.data.train_images,
            cfg.data.test_images,
            &cfg.data.normalization,
        )
    {
        return Err(format!(
            "the data in {} differs from the run's ({} train / {} test images, statistics {:?}; \
             now {} / {}, {:?})",
            root.display(),
            cfg.data.train_images,
            cfg.data.test_images,
            cfg.data.normalization,
            now.train_images,
            now.test_images,
            now.normalization
        )
        .into());
    }
    let engine_kind = match a.engine {
        Some(k) => k,
        None => EngineKind::parse(&cfg.engine)
            .ok_or_else(|| format!("unknown engine '{}' in config.json", cfg.engine))?,
    };
    if engine_kind.name() != cfg.engine {
        eprintln!(
            "note: the run started with engine {}, continuing with {}: the weights will not be \
             bit-identical to an uninterrupted run",
            cfg.engine,
            engine_kind.name()
        );
    }
    let (params, momentum) = checkpoint::load(dir, &g, state.iteration)?;
    let threads = a.threads.unwrap_or(cfg.threads);
    let mut engine = build_engine(engine_kind, &g, &cfg, threads, params.clone())?;
    engine.set_state(&params, &momentum)?;
    let mut metrics = MetricsLog::open(dir, state.metrics_bytes)?;
    let trainer = Trainer {
        dir,
        config: &cfg,
        graph: &g,
        data: &data,
        stop_after: a.stop_after,
    };
    if state.iteration >= cfg.recipe.iterations {
        println!(
            "{}: the run is complete; rewriting its final files",
            dir.display()
        );
        trainer.finish(engine.as_ref(), &state)?;
        return Ok(ExitCode::SUCCESS);
    }
    print_header(
        &cfg,
        &data,
        dir,
        &format!("resuming at iteration {}", state.iteration),
    );
    crate::train::interrupt::install();
    let outcome = trainer.run(engine.as_mut(), state, &mut metrics)?;
    Ok(report(outcome, dir))
}

/// Flags that would change a run's settings, which `--resume` takes from config.json.
fn fixed_flags_given(a: &TrainArgs) -> Vec<&'static str> {
    let d = &a.dropout;
    [
        ("--dataset", a.dataset.is_some()),
        ("--dropout", d.dropout.is_some()),
        ("--fwd", d.fwd.is_some()),
        ("--bwd", d.bwd.is_some()),
        ("--epochs", a.epochs.is_some()),
        ("--iterations", a.iterations.is_some()),
        ("--batch", a.batch.is_some()),
        ("--lr", a.lr.is_some()),
        ("--schedule", a.schedule.is_some()),
        ("--milestones", a.milestones.is_some()),
        ("--gamma", a.gamma.is_some()),
        ("--schedule-scale", a.schedule_scale.is_some()),
        ("--min-lr", a.min_lr.is_some()),
        ("--wd", a.wd.is_some()),
        ("--momentum", a.momentum.is_some()),
        ("--augment", a.augment),
        ("--no-augment", a.no_augment),
        ("--shuffle", a.shuffle),
        ("--no-shuffle", a.no_shuffle),
        ("--normalize", a.normalize.is_some()),
        ("--seed", a.seed.is_some()),
        ("--eval-every", a.eval_every.is_some()),
        ("--log-every", a.log_every.is_some()),
        ("--checkpoint-every", a.checkpoint_every.is_some()),
        ("--out", a.out.is_some()),
        ("--init", a.init.is_some()),
        ("--limit-train", a.limit_train.is_some()),
        ("--limit-test", a.limit_test.is_some()),
    ]
    .into_iter()
    .filter_map(|(f, given)| given.then_some(f))
    .collect()
}

fn print_header(cfg: &RunConfig, data: &RunData, dir: &Path, what: &str) {
    let r = &cfg.recipe;
    let ds = &data.dataset;
    println!(
        "{} ({}), {what}: {}, seed {}, engine {}; {} iterations ({} per epoch) of batch {}, \
         lr {} ({}); {} {} train / {} test images from {}; run directory {}",
        cfg.model.name,
        cfg.model.path.display(),
        cfg.dropout.description,
        cfg.seed,
        cfg.engine,
        r.iterations,
        r.iterations_per_epoch,
        r.batch_size,
        r.base_lr,
        match &r.schedule {
            ScheduleConfig::Constant => "constant".to_string(),
            ScheduleConfig::Multistep { milestones, gamma } =>
                format!("x{gamma} at {milestones:?}"),
            ScheduleConfig::Cosine { min_lr } => format!("cosine to {min_lr}"),
        },
        ds.kind,
        ds.train.len(),
        ds.test.len(),
        ds.dir.display(),
        dir.display()
    );
    if let ScheduleConfig::Multistep { milestones, .. } = &r.schedule {
        let late: Vec<usize> = milestones
            .iter()
            .copied()
            .filter(|&m| m >= r.iterations)
            .collect();
        if !late.is_empty() {
            // Milestones are absolute iteration numbers; a shortened run
            // keeps them, which is rarely what was meant.
            println!(
                "note: lr milestone(s) {late:?} are not before the last iteration ({}): that \
                 decay never happens; --schedule-scale S shortens the run and its milestones together",
                r.iterations
            );
        }
    }
}

fn report(outcome: Outcome, dir: &Path) -> ExitCode {
    match outcome {
        Outcome::Finished(_) => ExitCode::SUCCESS,
        Outcome::Stopped { iteration } => {
            println!(
                "stopped after iteration {iteration} as asked (--stop-after); continue with \
                 `dropjit train --resume {}`",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Outcome::Interrupted { iteration, signal } => {
            eprintln!(
                "interrupted by {signal}: checkpoint written after iteration {iteration}; \
                 continue with `dropjit train --resume {}`",
                dir.display()
            );
            // The shell's convention for a run ended by SIGINT.
            ExitCode::from(130)
        }
    }
}
