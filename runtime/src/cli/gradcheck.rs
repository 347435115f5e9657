use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use dropjit_graph::gradcheck::{grad_check, GradCheckOptions};
use dropjit_graph::init::{generic_point, init_params};

use super::dropout_args::{DropoutArgs, ModeArg};
use super::{CliError, GraphArgs};

#[derive(Args, Debug)]
pub struct GradcheckArgs {
    #[command(flatten)]
    pub graph: GraphArgs,
    /// Images in the random batch.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Seed of the weights, the batch and the sampled elements.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Elements sampled per parameter.
    #[arg(long, default_value_t = 4)]
    pub samples: usize,
    /// Check at the model's own initialisation instead of a generic point
    /// (He-normal weights, spread biases), where ReLU inputs are not all near 0.
    #[arg(long)]
    pub model_init: bool,
    /// Central-difference step.
    #[arg(long, default_value_t = 1e-6)]
    pub step_size: f64,
    /// Pass when every parameter's relative error is below this.
    #[arg(long, default_value_t = 1e-6)]
    pub tolerance: f64,
    /// Only plain and standard dropout have F = B, i.e. a true gradient to check.
    #[command(flatten)]
    pub dropout: DropoutArgs,
}

pub fn run(args: &GradcheckArgs) -> Result<ExitCode, CliError> {
    let g = args.graph.load()?;
    if !matches!(
        args.dropout.dropout,
        None | Some(ModeArg::Plain) | Some(ModeArg::Standard)
    ) {
        return Err("gradcheck needs --dropout plain or standard: with F != B the derived update is not the gradient of the loss".into());
    }
    if args.batch == 0 || args.samples == 0 {
        return Err("--batch and --samples must be at least 1".into());
    }
    let mut dropout = args.dropout.config()?;
    if args.dropout.dropout.is_none() && (args.dropout.fwd.is_some() || args.dropout.bwd.is_some())
    {
        return Err(
            "gradcheck: give --dropout standard --fwd P (augmented has no true gradient)".into(),
        );
    }
    if dropout.mode == dropjit_graph::DropoutMode::Plain {
        dropout.fwd = 0.0;
    }
    let opts = GradCheckOptions {
        batch: args.batch,
        seed: args.seed,
        samples: args.samples,
        dropout,
        step_size: args.step_size,
        ..GradCheckOptions::default()
    };
    let t = Instant::now();
    let params = if args.model_init {
        init_params(&g, args.seed)
    } else {
        generic_point(&g, args.seed)
    };
    let report = grad_check(&g, &params, &opts)?;
    print!("{}", report.table());
    let worst = report.worst();
    println!(
        "loss {:.6}, worst relative error {worst:.3e} (tolerance {:.1e}), {} parameters, {:.1} s",
        report.loss,
        args.tolerance,
        report.params.len(),
        t.elapsed().as_secs_f64()
    );
    if worst < args.tolerance {
        println!("gradcheck passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("gradcheck FAILED");
        Ok(ExitCode::from(2))
    }
}
