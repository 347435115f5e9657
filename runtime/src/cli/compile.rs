use std::process::ExitCode;

use clap::{Args, ValueEnum};

use dropjit_graph::step::{training_step, SgdConfig};

use super::dropout_args::DropoutArgs;
use super::{CliError, GraphArgs};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Emit {
    /// The forward graph, one node a line.
    Graph,
    /// Graphviz DOT of the forward graph.
    Dot,
    /// Forward + backward graph with a gradient output per parameter.
    Backward,
    /// The whole training step: backward graph + SGD and BatchNorm updates.
    Step,
    /// The evaluation graph: no dropout, BatchNorm on running statistics.
    Eval,
    /// The training step's launches, fusion groups and arena plan.
    Plan,
    /// The evaluation pass's launches and arena plan.
    EvalPlan,
    /// Cranelift IR of every kernel of the training step (fixed x86-64 target).
    Clif,
    /// Cranelift IR of every kernel of the evaluation pass.
    EvalClif,
}

#[derive(Args, Debug)]
pub struct CompileArgs {
    #[command(flatten)]
    pub graph: GraphArgs,
    /// Which stage to print.
    #[arg(long, value_enum, default_value = "graph")]
    pub emit: Emit,
    #[command(flatten)]
    pub dropout: DropoutArgs,
    /// Batch size the plan and kernels are built for (default: the recipe's).
    #[arg(long)]
    pub batch: Option<usize>,
}

pub fn run(args: &CompileArgs) -> Result<ExitCode, CliError> {
    let g = args.graph.load()?;
    let text = match args.emit {
        Emit::Graph => dropjit_graph::print::graph_text(&g),
        Emit::Dot => dropjit_graph::dot::graph_dot(&g),
        Emit::Backward => {
            let b = dropjit_graph::autodiff::backward(&g, &args.dropout.config()?)?;
            dropjit_graph::print::graph_text(&b)
        }
        Emit::Step => {
            let s = training_step(&g, &args.dropout.config()?, &SgdConfig::from_recipe(&g))?;
            dropjit_graph::print::graph_text(&s)
        }
        Emit::Eval => dropjit_graph::print::graph_text(&dropjit_graph::eval::evaluation(&g)?),
        Emit::Plan | Emit::EvalPlan | Emit::Clif | Emit::EvalClif => {
            let batch = args.batch.unwrap_or(g.recipe.batch_size);
            if batch == 0 {
                return Err("--batch must be at least 1".into());
            }
            let layout = dropjit_codegen::StateLayout::new(&g);
            let target = if matches!(args.emit, Emit::Plan | Emit::Clif) {
                training_step(&g, &args.dropout.config()?, &SgdConfig::from_recipe(&g))?
            } else {
                dropjit_graph::eval::evaluation(&g)?
            };
            if matches!(args.emit, Emit::Plan | Emit::EvalPlan) {
                dropjit_codegen::plan_text(
                    &target,
                    batch,
                    &layout,
                    dropjit_codegen::ConvIsa::selected()?,
                )?
            } else {
                dropjit_codegen::clif_text(&target, batch, &layout)?
            }
        }
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
