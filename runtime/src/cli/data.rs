//! `dropjit data fetch|list`, and the data root of `train` / `eval`, fetched
//! when the model's data set is missing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::CliError;
use crate::data::{choose_data_dir, locate_dataset, DataError, DatasetKind, DATA_ENV};
use crate::fetch::{fetch, manual_help, status, FetchError, FetchOptions, Status};

#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Download a data set's official files, verify their checksums and unpack them.
    Fetch {
        /// cifar10, cifar100, svhn, mnist or fashion-mnist.
        name: DatasetKind,
        /// Data directory [default: $DROPJIT_DATA, else ./data].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Which data sets a data directory holds, and whether dropjit verified them.
    List {
        /// Data directory [default: $DROPJIT_DATA, else ./data].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

pub fn run(args: &DataArgs) -> Result<ExitCode, CliError> {
    match &args.command {
        DataCommand::Fetch { name, dir } => {
            let root = data_root(dir.as_deref());
            let dest = fetch_or_explain(*name, &root)?;
            println!("{name} is in {}", dest.display());
        }
        DataCommand::List { dir } => {
            let root = data_root(dir.as_deref());
            println!("data directory {}", root.display());
            for s in DatasetKind::ALL {
                let state = match status(s, &root) {
                    Status::Verified => "fetched and verified",
                    Status::Present => "present (not fetched by dropjit, not verified)",
                    Status::Absent => "absent",
                };
                println!("  {:<14} {:<22} {state}", s.name(), s.subdir());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `flag`, else `$DROPJIT_DATA`, else `./data`.
pub fn data_root(flag: Option<&Path>) -> PathBuf {
    let env = std::env::var_os(DATA_ENV);
    choose_data_dir(flag, env.as_deref().map(Path::new)).0
}

fn fetch_or_explain(source: DatasetKind, root: &Path) -> Result<PathBuf, CliError> {
    let opts = FetchOptions::from_env()?;
    fetch(source, root, &opts).map_err(|e| match e {
        FetchError::Network { .. } => format!("{e}. {}", manual_help(source, root)).into(),
        e => e.into(),
    })
}

/// The data root of a run on `kind`. When `kind` is not found there it is
/// fetched into the root first (saying so), unless `download` is false.
pub fn data_root_for(
    kind: DatasetKind,
    flag: Option<&Path>,
    download: bool,
) -> Result<PathBuf, CliError> {
    let root = data_root(flag);
    match locate_dataset(&root, Some(kind)) {
        Ok(_) => Ok(root),
        Err(DataError::NotFound { .. }) if download => {
            eprintln!(
                "{kind} not found in {}: fetching it (--no-download to stop this)",
                root.display()
            );
            fetch_or_explain(kind, &root)?;
            Ok(root)
        }
        Err(e @ DataError::NotFound { .. }) => Err(format!(
            "{e}\nor fetch it: dropjit data fetch {kind} --dir {}",
            root.display()
        )
        .into()),
        Err(e) => Err(e.into()),
    }
}
