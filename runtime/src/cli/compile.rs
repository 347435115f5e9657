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
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
