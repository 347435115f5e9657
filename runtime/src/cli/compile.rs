use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::{CliError, GraphArgs};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Emit {
    /// The forward graph, one node a line.
    Graph,
    /// Graphviz DOT of the forward graph.
    Dot,
}

#[derive(Args, Debug)]
pub struct CompileArgs {
    #[command(flatten)]
    pub graph: GraphArgs,
    /// Which stage to print.
    #[arg(long, value_enum, default_value = "graph")]
    pub emit: Emit,
}

pub fn run(args: &CompileArgs) -> Result<ExitCode, CliError> {
    let g = args.graph.load()?;
    let text = match args.emit {
        Emit::Graph => dropjit_graph::print::graph_text(&g),
        Emit::Dot => dropjit_graph::dot::graph_dot(&g),
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
