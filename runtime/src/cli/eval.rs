//! `dropjit eval`: test accuracy, loss and per-class accuracy of a weights file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use dropjit_graph::dropout::DropoutConfig;
use dropjit_graph::step::SgdConfig;

use super::data::data_root_for;
use super::train::DEFAULT_ENGINE;
use super::{CliError, GraphArgs};
use crate::data::DatasetKind;
use crate::engine::{self, EngineKind, EngineSpec};
use crate::train::config;
use crate::train::evaluate::{class_names, evaluate, per_class_table};
use crate::train::setup::{load_data, Limits};

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub graph: GraphArgs,
    /// Weights to evaluate (safetensors, PyTorch names), e.g. runs/X/final.safetensors.
    #[arg(long, value_name = "W.safetensors")]
    pub weights: PathBuf,
    /// Data directory (default: $DROPJIT_DATA, else ./data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Fail instead of fetching the data set when it is not in the data directory.
    #[arg(long)]
    pub no_download: bool,
    /// Data set (default: the recipe's).
    #[arg(long, value_parser = ["cifar10", "cifar100", "svhn", "mnist", "fashion-mnist"])]
    pub dataset: Option<String>,
    /// Evaluation batch size [default: the recipe's].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Input normalisation [default: the recipe's]; statistics come from the training split.
    #[arg(long, value_parser = ["mean_image", "channel_mean_std", "none"])]
    pub normalize: Option<String>,
    /// Normalisation statistics from the first N training images (as `train --limit-train N`).
    #[arg(long)]
    pub limit_train: Option<usize>,
    /// Evaluate the first N test images only.
    #[arg(long)]
    pub limit_test: Option<usize>,
    /// Executor [default: jit; interp is the slow reference interpreter].
    #[arg(long, value_enum)]
    pub engine: Option<EngineKind>,
    /// Worker threads for the engine [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(args: &EvalArgs) -> Result<ExitCode, CliError> {
    if args.batch == Some(0) {
        return Err("--batch must be at least 1, got 0".into());
    }
    if args.threads == Some(0) {
        return Err("--threads must be at least 1, got 0".into());
    }
    let g = args.graph.load()?;
    let dataset = args.dataset.as_deref().unwrap_or(&g.recipe.dataset);
    let kind: DatasetKind = dataset.parse()?;
    let norm_name = args
        .normalize
        .as_deref()
        .unwrap_or(config::normalize_name(g.recipe.normalize));
    let norm = config::normalization(norm_name).expect("known name");
    let root = data_root_for(kind, args.data.as_deref(), !args.no_download)?;
    let limits = Limits {
        train: args.limit_train,
        test: args.limit_test,
    };
    let data = load_data(&root, Some(kind), limits, norm, &g)?;
    let params = crate::weights::load(&g, &args.weights)?;
    let kind_engine = args.engine.unwrap_or(DEFAULT_ENGINE);
    let spec = EngineSpec {
        graph: &g,
        dropout: DropoutConfig::PLAIN,
        sgd: SgdConfig::from_recipe(&g),
        seed: 0,
        threads: args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        params,
    };
    let mut engine = engine::create(kind_engine, spec)?;
    let batch = args.batch.unwrap_or(g.recipe.batch_size);
    let ds = &data.dataset;
    let result = evaluate(engine.as_mut(), &ds.test, &data.stats, batch)?;
    print!(
        "{}",
        per_class_table(&result, &class_names(ds.kind, ds.num_classes))
    );
    println!(
        "test accuracy {:.4} ({}/{}), loss {:.4}; {} {} from {}, {} normalisation, engine {}, {:.1} s",
        result.accuracy,
        result.correct,
        result.images,
        result.loss,
        g.name,
        args.weights.display(),
        ds.dir.display(),
        norm_name,
        kind_engine.name(),
        result.seconds
    );
    Ok(ExitCode::SUCCESS)
}
