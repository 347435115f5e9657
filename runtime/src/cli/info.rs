use std::process::ExitCode;

use super::{CliError, GraphArgs};

pub fn run(args: &GraphArgs) -> Result<ExitCode, CliError> {
    let g = args.load()?;
    print!("{}", dropjit_graph::info::info_text(&g));
    Ok(ExitCode::SUCCESS)
}
