use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use dropjit_graph::gradcheck::{
    grad_check, GradCheckOptions, NOISE_MULT, ROUNDING_ULPS, UNCHECKABLE_MODES,
};
use dropjit_graph::init::{generic_point, init_params};

use super::dropout_args::{DropoutArgs, ModeArg};
use super::{CliError, GraphArgs};

const AFTER_HELP: &str = "\
Method: each sampled element's central difference quotient is taken on a ladder
of steps (--max-step, a tenth of it, ... down to --min-step); the first pair of
neighbouring steps whose quotients agree (to a tenth of the tolerance, or to the
loss's rounding) gives the quotient and, from their difference, an estimate of
its own error. An element whose quotients disagree at every step sits at a
ReLU or max-pool kink and is replaced (the `kinks` column).

Each parameter's error is the largest over its sampled elements of
|fd - ad| / max(S, K noise / tolerance), S = max(||fd||, ||ad||) the tensor's
gradient scale over the samples, K = 10: an element passes when it is within
the tolerance relative to S, or within K times its own quotient's estimated
error, whichever is larger (so a zero gradient, e.g. of a conv bias before
BatchNorm, passes when its derived value is within K times the noise of the
quotient). `rel. diff` is ||fd - ad|| / S; `resolution` is K times the largest
noise over S. A parameter without a usable element fails.

Only plain and standard dropout (F = B at every site) have a loss whose
gradient the update is.";

#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP)]
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
    /// Largest central-difference step tried; the next ones are tenths of it.
    #[arg(long, default_value_t = 1e-4)]
    pub max_step: f64,
    /// Smallest step tried.
    #[arg(long, default_value_t = 1e-9)]
    pub min_step: f64,
    /// Pass when every parameter's error (see below) is below this.
    #[arg(long, default_value_t = 1e-6)]
    pub tolerance: f64,
    /// Plain, or standard with --fwd P: the modes with F = B.
    #[command(flatten)]
    pub dropout: DropoutArgs,
}

pub fn run(args: &GradcheckArgs) -> Result<ExitCode, CliError> {
    let g = args.graph.load()?;
    let mode = match args.dropout.dropout {
        Some(m) => m,
        // The shared flags default to augmented when a ratio is given.
        None if args.dropout.fwd.is_some() || args.dropout.bwd.is_some() => ModeArg::Augmented,
        None => ModeArg::Plain,
    };
    if !matches!(mode, ModeArg::Plain | ModeArg::Standard) {
        return Err(format!(
            "gradcheck cannot check --dropout {}{}: {UNCHECKABLE_MODES}. Give --dropout plain, \
             or --dropout standard --fwd P.",
            match mode {
                ModeArg::Forward => "forward",
                ModeArg::Backward => "backward",
                _ => "augmented",
            },
            if args.dropout.dropout.is_none() {
                " (--fwd or --bwd without --dropout)"
            } else {
                ""
            }
        )
        .into());
    }
    if args.batch == 0 || args.samples == 0 {
        return Err("--batch and --samples must be at least 1".into());
    }
    if args.tolerance.is_nan() || args.tolerance <= 0.0 {
        return Err("--tolerance must be positive".into());
    }
    let mut dropout = args.dropout.config()?;
    if dropout.mode == dropjit_graph::DropoutMode::Plain {
        dropout.fwd = 0.0;
    }
    let opts = GradCheckOptions {
        batch: args.batch,
        seed: args.seed,
        samples: args.samples,
        dropout,
        max_step: args.max_step,
        min_step: args.min_step,
        tolerance: args.tolerance,
        progress: true,
        ..GradCheckOptions::default()
    };
    opts.steps()?;
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
        "loss {:.6}, worst error {worst:.3e} (tolerance {:.1e}; noise multiple {NOISE_MULT}, \
         rounding level {ROUNDING_ULPS} ulps), {} parameters, {:.1} s",
        report.loss,
        args.tolerance,
        report.params.len(),
        t.elapsed().as_secs_f64()
    );
    if report.passed() {
        println!("gradcheck passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("gradcheck FAILED");
        Ok(ExitCode::from(2))
    }
}
