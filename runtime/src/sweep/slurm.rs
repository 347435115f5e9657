//! `dropjit sweep SPEC --slurm`: a job-array batch script with one task per
//! unfinished run, each calling `dropjit sweep SPEC --run-index I` on the
//! shared sweep directory; submitted with `sbatch` (or printed).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::launch::{Ended, Launcher};
use super::spec::{PlannedRun, SlurmSettings};
use super::status::run_status;
use super::SweepError;
use crate::train::interrupt;

pub const SCRIPT_FILE: &str = "slurm/sweep.sbatch";

/// `sh`-quoted.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `0,2,5-9`: Slurm's array syntax for `indices` (sorted).
pub fn array_ranges(indices: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let mut j = i;
        while j + 1 < indices.len() && indices[j + 1] == indices[j] + 1 {
            j += 1;
        }
        parts.push(if j > i {
            format!("{}-{}", indices[i], indices[j])
        } else {
            indices[i].to_string()
        });
        i = j + 1;
    }
    parts.join(",")
}

/// The batch script for the runs `pending` of `launcher`'s sweep.
pub fn script(
    launcher: &Launcher,
    settings: &SlurmSettings,
    pending: &[&PlannedRun],
) -> Result<String, SweepError> {
    for line in &settings.sbatch {
        if line.contains('\n') {
            return Err(SweepError::Other(format!(
                "--sbatch '{line}': one option per line, without newlines"
            )));
        }
    }
    let plan = launcher.plan;
    let dir = launcher.dir;
    let indices: Vec<usize> = pending.iter().map(|r| r.index).collect();
    let mut array = array_ranges(&indices);
    if let Some(n) = settings.max_concurrent {
        array.push_str(&format!("%{n}"));
    }
    let logs = dir.join("slurm");
    let mut s = String::from("#!/bin/bash\n");
    let mut opt = |line: String| s.push_str(&format!("#SBATCH {line}\n"));
    opt(format!("--job-name=dropjit-{}", plan.name));
    opt(format!("--array={array}"));
    opt(format!(
        "--cpus-per-task={}",
        settings.cpus_per_task.unwrap_or(1)
    ));
    opt(format!("--output={}", logs.join("%A_%a.out").display()));
    if let Some(p) = &settings.partition {
        opt(format!("--partition={p}"));
    }
    if let Some(t) = &settings.time {
        opt(format!("--time={t}"));
    }
    for line in &settings.sbatch {
        opt(line.clone());
    }
    s.push_str(&format!(
        "# {} of the {} runs of sweep {} ({}); each task runs one, resuming it if a\n\
         # previous task left a checkpoint. Written by `dropjit sweep --slurm`.\n",
        pending.len(),
        plan.runs.len(),
        plan.name,
        plan.spec_file.display()
    ));
    s.push_str(&format!(
        "exec {} sweep {} --dir {} --data {} --run-index \"$SLURM_ARRAY_TASK_ID\" \
         --threads \"${{SLURM_CPUS_PER_TASK:-1}}\"\n",
        quote(&launcher.exe.display().to_string()),
        quote(&plan.spec_file.display().to_string()),
        quote(&dir.display().to_string()),
        quote(&launcher.data_root.display().to_string()),
    ));
    Ok(s)
}

/// Writes the script for the unfinished runs and submits it (unless
/// `dry_run`, which prints it). Returns the job id.
pub fn submit(
    launcher: &Launcher,
    settings: &SlurmSettings,
    dry_run: bool,
) -> Result<Option<String>, SweepError> {
    let pending: Vec<&PlannedRun> = launcher
        .plan
        .runs
        .iter()
        .filter(|r| !run_status(&launcher.run_dir(r)).is_done())
        .collect();
    if pending.is_empty() {
        println!(
            "every run of sweep {} is finished; nothing to submit",
            launcher.plan.name
        );
        return Ok(None);
    }
    let text = script(launcher, settings, &pending)?;
    let path: PathBuf = launcher.dir.join(SCRIPT_FILE);
    std::fs::create_dir_all(path.parent().expect("has a parent"))
        .map_err(|e| SweepError::io(&path, e))?;
    crate::durable::write(&path, text.as_bytes()).map_err(|e| SweepError::io(&path, e))?;
    if dry_run {
        print!("{text}");
        println!("# written to {} (not submitted: --dry-run)", path.display());
        return Ok(None);
    }
    let out = Command::new("sbatch")
        .arg("--parsable")
        .arg(&path)
        .output()
        .map_err(|e| {
            SweepError::Other(format!(
                "cannot run sbatch ({e}); is Slurm installed here? The script is {}",
                path.display()
            ))
        })?;
    if !out.status.success() {
        return Err(SweepError::Other(format!(
            "sbatch {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // --parsable prints `jobid` or `jobid;cluster`.
    let id = String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap_or("")
        .to_string();
    let jobs = launcher.dir.join("slurm/jobs.txt");
    let mut known = std::fs::read_to_string(&jobs).unwrap_or_default();
    known.push_str(&format!(
        "{id} {}\n",
        array_ranges(&pending.iter().map(|r| r.index).collect::<Vec<_>>())
    ));
    crate::durable::write(&jobs, known.as_bytes()).map_err(|e| SweepError::io(&jobs, e))?;
    println!(
        "submitted job array {id}: {} runs of sweep {} (script {}; logs in {}); \
         `dropjit sweep {} --status` shows where they stand",
        pending.len(),
        launcher.plan.name,
        path.display(),
        launcher.dir.join("slurm").display(),
        launcher.plan.spec_file.display()
    );
    Ok(Some(id))
}

/// One array task: the run at `index`, resumed if it has a checkpoint,
/// skipped if finished. The run's output goes to its `train.log`; the task's
/// own (Slurm) log gets where it is and how it ended.
pub fn run_array_task(
    launcher: &Launcher,
    index: usize,
    threads: usize,
) -> Result<Ended, SweepError> {
    let run = launcher.plan.runs.get(index).ok_or_else(|| {
        SweepError::Other(format!(
            "--run-index {index}: the sweep has runs 0..{}",
            launcher.plan.runs.len()
        ))
    })?;
    let rd = launcher.run_dir(run);
    if let s @ super::status::RunStatus::Done(_) = run_status(&rd) {
        println!("{} is already finished: {}", run.name, s.describe());
        return Ok(Ended::Finished(s));
    }
    println!(
        "run {index} of sweep {}: {} in {}",
        launcher.plan.name,
        run.name,
        rd.display()
    );
    interrupt::install();
    println!("output: {}", rd.join(super::status::LOG_FILE).display());
    let mut announced = false;
    let mut running = loop {
        if let Some(r) = launcher.spawn(run, threads)? {
            break r;
        }
        if !announced {
            println!(
                "waiting: another process holds {} (a previous task finishing its checkpoint?)",
                rd.display()
            );
            announced = true;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    };
    let child = &mut running.child;
    let mut forwarded = false;
    let status = loop {
        if let Some(s) = child
            .try_wait()
            .map_err(|e| SweepError::Other(format!("waiting for the run: {e}")))?
        {
            break s;
        }
        if !forwarded && interrupt::received().is_some() {
            #[cfg(unix)]
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            forwarded = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let ended = launcher.ended(run, status)?;
    println!(
        "{}\n{}: {ended:?}",
        super::status::log_tail(&rd, 3),
        run.name
    );
    Ok(ended)
}

/// The sweep directory's absolute path as the array tasks will see it.
pub fn absolute_dir(dir: &Path) -> Result<PathBuf, SweepError> {
    std::fs::create_dir_all(dir).map_err(|e| SweepError::io(dir, e))?;
    std::fs::canonicalize(dir).map_err(|e| SweepError::io(dir, e))
}
