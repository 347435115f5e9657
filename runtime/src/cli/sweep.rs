//! `dropjit sweep SPEC`: runs a sweep file's runs here (`--jobs N`), as a
//! Slurm job array (`--slurm`), one of them (`--run-index I`, what the array
//! tasks call), or shows where they stand (`--status`). The guide is
//! `docs/sweeps.md`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::data::data_root_for;
use super::CliError;
use crate::data::DatasetKind;
use crate::sweep::launch::{lock_run, Ended, Launcher};
use crate::sweep::local::run_local;
use crate::sweep::plan::Plan;
use crate::sweep::slurm::{absolute_dir, run_array_task, submit};
use crate::sweep::spec::SlurmSettings;
use crate::sweep::status::{live_progress, run_status, RunStatus};

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Sweep file (JSON), e.g. sweeps/convnet_quick-cifar10.json.
    pub spec: PathBuf,
    /// Sweep directory [default: runs/<the sweep's name>].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Data directory (default: $DROPJIT_DATA, else ./data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Fail instead of fetching the data set when it is not in the data directory.
    #[arg(long)]
    pub no_download: bool,
    /// Runs at once on this machine.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Threads in all [default: all cores], divided between the --jobs runs;
    /// with --run-index, the run's threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Show each run's state and stop.
    #[arg(long, conflicts_with_all = ["run_index", "slurm"])]
    pub status: bool,
    /// Run only the run at this position (what Slurm's array tasks call).
    #[arg(long, conflicts_with = "slurm")]
    pub run_index: Option<usize>,
    /// Submit the unfinished runs as a Slurm job array (one task per run).
    #[arg(long)]
    pub slurm: bool,
    /// With --slurm: write and print the batch script, do not submit it.
    #[arg(long, requires = "slurm")]
    pub dry_run: bool,
    /// With --slurm: partition (default: the sweep file's, else Slurm's default).
    #[arg(long, requires = "slurm")]
    pub partition: Option<String>,
    /// With --slurm: time limit per run, Slurm's format (e.g. 04:00:00).
    #[arg(long, requires = "slurm")]
    pub time: Option<String>,
    /// With --slurm: CPUs per array task (the run's threads) [default: 1].
    #[arg(long, requires = "slurm")]
    pub cpus_per_task: Option<usize>,
    /// With --slurm: at most this many array tasks at once.
    #[arg(long, requires = "slurm")]
    pub max_concurrent: Option<usize>,
    /// With --slurm: an extra `#SBATCH` line (repeatable), e.g. --sbatch=--mem=4G.
    #[arg(long, requires = "slurm", allow_hyphen_values = true)]
    pub sbatch: Vec<String>,
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn run(a: &SweepArgs) -> Result<ExitCode, CliError> {
    for (flag, v) in [
        ("--jobs", Some(a.jobs)),
        ("--threads", a.threads),
        ("--cpus-per-task", a.cpus_per_task),
        ("--max-concurrent", a.max_concurrent),
    ] {
        if v == Some(0) {
            return Err(format!("{flag} must be at least 1, got 0").into());
        }
    }
    // The directory is fixed before the plan is read so that per-cell model
    // copies land in it; its default needs the sweep's name.
    let name = crate::sweep::SweepSpec::load(&a.spec)?.name;
    let dir = a
        .dir
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(&name));
    if a.status {
        let plan = Plan::prepare(&a.spec, &dir)?;
        return Ok(print_status(&plan, &dir));
    }
    let dir = absolute_dir(&dir)?;
    let plan = Plan::prepare(&a.spec, &dir)?;
    let kind: DatasetKind = plan.dataset.parse()?;
    // Fetched once, here: the runs (and array tasks) are started with --no-download.
    // Array tasks never download: many start at once, and the submission
    // fetched the data already.
    let download = !a.no_download && a.run_index.is_none();
    let data_root = data_root_for(kind, a.data.as_deref(), download)?;
    let data_root = std::fs::canonicalize(&data_root).unwrap_or(data_root);
    let launcher = Launcher {
        plan: &plan,
        dir: &dir,
        data_root,
        exe: this_binary()?,
    };
    if let Some(index) = a.run_index {
        let threads = a.threads.unwrap_or_else(cores);
        return Ok(match run_array_task(&launcher, index, threads)? {
            Ended::Finished(_) => ExitCode::SUCCESS,
            Ended::Interrupted => ExitCode::from(130),
            Ended::Failed(_) => ExitCode::FAILURE,
        });
    }
    // Written by the invocation that coordinates (local or submitting), never
    // by array tasks: many of them start at once on the same directory.
    plan.save(&dir)?;
    if a.slurm {
        let from_file = &plan.slurm;
        let settings = SlurmSettings {
            partition: a.partition.clone().or_else(|| from_file.partition.clone()),
            time: a.time.clone().or_else(|| from_file.time.clone()),
            cpus_per_task: a.cpus_per_task.or(from_file.cpus_per_task),
            max_concurrent: a.max_concurrent.or(from_file.max_concurrent),
            sbatch: from_file.sbatch.iter().chain(&a.sbatch).cloned().collect(),
        };
        submit(&launcher, &settings, a.dry_run)?;
        return Ok(ExitCode::SUCCESS);
    }
    let total = a.threads.unwrap_or_else(cores);
    let threads = (total / a.jobs).max(1);
    let outcome = run_local(&launcher, a.jobs, threads)?;
    println!(
        "sweep {}: {} of {} runs finished{}",
        plan.name,
        outcome.done,
        plan.runs.len(),
        if outcome.failed.is_empty() {
            String::new()
        } else {
            format!(", {} failed", outcome.failed.len())
        }
    );
    for (run, message) in &outcome.failed {
        println!("  failed: {run}: {message}");
    }
    if outcome.interrupted {
        eprintln!(
            "interrupted: the running runs stopped at a checkpoint; continue with the same command"
        );
        return Ok(ExitCode::from(130));
    }
    if !outcome.failed.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    println!("report: dropjit report {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The path of this binary. Linux names a binary replaced on disk while it
/// runs (a rebuild during a long sweep) `PATH (deleted)`; the runs it starts
/// from then on use the binary now at `PATH`.
fn this_binary() -> Result<PathBuf, CliError> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the dropjit binary: {e}"))?;
    let text = exe.display().to_string();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

fn print_status(plan: &Plan, dir: &Path) -> ExitCode {
    let mut counts = [0usize; 4];
    println!("sweep {} in {}", plan.name, dir.display());
    let mut running = 0;
    for run in &plan.runs {
        let rd = plan.run_dir(dir, run);
        let s = run_status(&rd);
        counts[match s {
            RunStatus::Done(_) => 0,
            RunStatus::Partial { .. } => 1,
            RunStatus::Failed { .. } => 2,
            RunStatus::Pending => 3,
        }] += 1;
        // A process holds the run's lock: it is being trained right now.
        let live = !s.is_done() && rd.is_dir() && matches!(lock_run(&rd), Ok(None));
        let what = match (live, live_progress(&rd)) {
            (true, Some((it, n))) => format!("running, iteration {it}/{n}"),
            (true, None) => "running, starting".to_string(),
            (false, _) => s.describe(),
        };
        running += live as usize;
        println!("{:>4}  {:<32} {what}", run.index, run.name);
    }
    println!(
        "{} runs: {} done, {} partial, {} failed, {} pending ({running} running now)",
        plan.runs.len(),
        counts[0],
        counts[1],
        counts[2],
        counts[3]
    );
    ExitCode::SUCCESS
}
