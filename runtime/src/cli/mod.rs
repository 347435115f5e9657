//! Command-line interface: argument definitions and dispatch.

mod bench;
mod compile;
pub mod data;
mod dropout_args;
mod eval;
mod grad;
mod gradcheck;
mod info;
mod report;
mod sweep;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use dropjit_graph::{Graph, GraphLoadOptions};

/// Any error a command reports: printed in one or two lines, exit code 1.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug)]
#[command(
    name = "dropjit",
    version,
    about = "Static-graph compiler and JIT trainer for dropout with distinct forward and backward masks"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print a compiler stage of a model: the graph, its DOT picture, ...
    Compile(compile::CompileArgs),
    /// Parameter and multiply-add counts, per layer and in total.
    Info(GraphArgs),
    /// Finite-difference check of every parameter's derived gradient (f64 interpreter).
    Gradcheck(gradcheck::GradcheckArgs),
    /// Loss and gradients of one exact batch (safetensors in, safetensors out).
    Grad(grad::GradArgs),
    /// Write a model's initial weights (safetensors, PyTorch names).
    Init(grad::InitArgs),
    /// Train a model with its recipe (flags override it); resume a run.
    Train(Box<train::TrainArgs>),
    /// Test accuracy, loss and per-class accuracy of a weights file.
    Eval(eval::EvalArgs),
    /// Time the JIT-compiled training (or evaluation) step.
    Bench(bench::BenchArgs),
    /// Download and list data sets.
    Data(data::DataArgs),
    /// Run a sweep file's runs (here, or as a Slurm job array); show where they stand.
    Sweep(sweep::SweepArgs),
    /// A sweep's table (mean ± sd over seeds beside the paper's figures) and plots.
    Report(report::ReportArgs),
    /// Training curves of run directories (SVG and PNG).
    Plot(report::PlotArgs),
}

#[derive(Args, Debug, Clone)]
pub struct GraphArgs {
    /// Model file (JSON graph), e.g. models/resnet20.json.
    #[arg(long)]
    pub graph: PathBuf,
    /// Reject graphs whose training buffers would exceed this many GiB.
    #[arg(long, default_value_t = 8.0)]
    pub memory_limit_gib: f64,
}

impl GraphArgs {
    pub fn load(&self) -> Result<Graph, CliError> {
        if self.memory_limit_gib.is_nan() || self.memory_limit_gib <= 0.0 {
            return Err(format!(
                "--memory-limit-gib must be positive, got {}",
                self.memory_limit_gib
            )
            .into());
        }
        let opts = GraphLoadOptions {
            memory_limit_bytes: (self.memory_limit_gib * (1u64 << 30) as f64) as u64,
        };
        Ok(dropjit_graph::load(&self.graph, opts)?)
    }
}

pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Compile(args) => compile::run(&args),
        Command::Info(args) => info::run(&args),
        Command::Gradcheck(args) => gradcheck::run(&args),
        Command::Grad(args) => grad::run_grad(&args),
        Command::Init(args) => grad::run_init(&args),
        Command::Train(args) => train::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Data(args) => data::run(&args),
        Command::Sweep(args) => sweep::run(&args),
        Command::Report(args) => report::run_report(&args),
        Command::Plot(args) => report::run_plot(&args),
    }
}
