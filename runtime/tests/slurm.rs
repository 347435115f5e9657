//! Jobs on a real single-node Slurm cluster, brought up by
//! `tools/slurm_cluster.sh` with all its state in a temporary directory.
//!
//! Where no cluster can be brought up (not Linux, not root, packages missing
//! and no apt, ...) each test prints `skipped: <reason>` and passes, unless
//! `DROPJIT_REQUIRE_SLURM=1` (set by `.ci/run` as root), where it fails.
//!
//! Tests share one cluster: [`LocalSlurm::shared`] hands out the running one
//! while any test holds it and stops it when the last holder drops it.
//! [`LocalSlurm::start`] alone is also safe to call from parallel tests (own
//! state dir, munge socket and ports each).

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

mod support;

use support::{json, repo_root, test_data, text, tiny};

/// A running single-node cluster; `Drop` stops its daemons.
struct LocalSlurm {
    state: tempfile::TempDir,
    /// `KEY=VALUE` lines printed by `slurm_cluster.sh start` (`SLURM_CONF`).
    env: Vec<(String, String)>,
}

impl LocalSlurm {
    /// Brings up a new cluster; `Err` is the reason it cannot run here.
    fn start() -> Result<LocalSlurm, String> {
        if !cfg!(target_os = "linux") {
            return Err("not Linux".to_string());
        }
        // Under /tmp, not $TMPDIR: the munge socket path must stay short.
        let state = tempfile::Builder::new()
            .prefix("dropjit-slurm-")
            .tempdir_in("/tmp")
            .map_err(|e| format!("cannot create a state dir in /tmp: {e}"))?;
        let out = Command::new("bash")
            .arg(repo_root().join("tools/slurm_cluster.sh"))
            .arg("start")
            .arg(state.path())
            .output()
            .map_err(|e| format!("cannot run bash tools/slurm_cluster.sh: {e}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!(
                "tools/slurm_cluster.sh start failed ({}): {}",
                out.status,
                stderr.trim()
            ));
        }
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>();
        if !env.iter().any(|(k, _)| k == "SLURM_CONF") {
            return Err(format!("slurm_cluster.sh printed no SLURM_CONF: {stderr}"));
        }
        Ok(LocalSlurm { state, env })
    }

    /// The cluster of the tests running now, started by the first of them.
    fn shared() -> Result<Arc<LocalSlurm>, String> {
        static SHARED: Mutex<Weak<LocalSlurm>> = Mutex::new(Weak::new());
        // Held across `start`, so tests that arrive together wait for one.
        let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cluster) = slot.upgrade() {
            return Ok(cluster);
        }
        let cluster = Arc::new(LocalSlurm::start()?);
        *slot = Arc::downgrade(&cluster);
        Ok(cluster)
    }

    /// `program` set up to talk to this cluster, run in the state dir (where
    /// jobs without `--output` leave `slurm-%j.out`). Slurm variables of the
    /// caller (say a CI job that is itself a Slurm job) are dropped so they
    /// cannot redirect submissions.
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if ["SLURM_", "SBATCH_", "SQUEUE_", "SALLOC_", "SRUN_"]
                .iter()
                .any(|p| k.starts_with(p))
            {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.state.path());
        cmd
    }

    /// Runs `program args` against this cluster: its stdout, or why it failed.
    fn run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{program} {}: {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until no task of `job_id` is pending or running. `Err` on
    /// timeout, or when a task ended other than COMPLETED (the job's tasks
    /// and states as squeue lists them, so a failure says which and why).
    fn wait_for_job(&self, job_id: &str, timeout: Duration) -> Result<(), String> {
        const ENDED: [&str; 9] = [
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
            "PREEMPTED",
            "BOOT_FAIL",
            "DEADLINE",
        ];
        let start = Instant::now();
        loop {
            // `-t all` keeps ended tasks listed (for MinJobAge, 300 s), so
            // their final states can be checked. A failing squeue (say a
            // timeout on a loaded machine) is retried until `timeout`.
            let (listing, answered) = match self.run(
                "squeue",
                &["-h", "-t", "all", "-j", job_id, "-o", "%i %T %r"],
            ) {
                Ok(s) => (s, true),
                // Purged already: it ended long ago.
                Err(e) if e.contains("Invalid job id") => return Ok(()),
                Err(e) => (e, false),
            };
            let tasks: Vec<(&str, &str)> = listing
                .lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    Some((w.next()?, w.next()?))
                })
                .collect();
            if answered && tasks.iter().all(|(_, st)| ENDED.contains(st)) {
                return if tasks.iter().all(|(_, st)| *st == "COMPLETED") {
                    Ok(())
                } else {
                    Err(format!("job {job_id} ended with:\n{listing}"))
                };
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "job {job_id} still queued after {timeout:?}:\n{listing}"
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for LocalSlurm {
    fn drop(&mut self) {
        let stopped = Command::new("bash")
            .arg(repo_root().join("tools/slurm_cluster.sh"))
            .arg("stop")
            .arg(self.state.path())
            .status();
        if !matches!(stopped, Ok(s) if s.success()) {
            eprintln!(
                "slurm_cluster.sh stop {}: {stopped:?}",
                self.state.path().display()
            );
        }
    }
}

/// The shared cluster, or `None` after printing why the test is skipped.
/// Panics instead under `DROPJIT_REQUIRE_SLURM=1`, so CI cannot skip silently.
fn cluster_or_skip() -> Option<Arc<LocalSlurm>> {
    match LocalSlurm::shared() {
        Ok(cluster) => Some(cluster),
        Err(reason) if std::env::var("DROPJIT_REQUIRE_SLURM").as_deref() == Ok("1") => {
            panic!("DROPJIT_REQUIRE_SLURM=1 but no Slurm cluster: {reason}")
        }
        Err(reason) => {
            eprintln!("skipped: {reason}");
            None
        }
    }
}

/// The contents of every file in `dir`, for failure messages.
fn dump_dir(dir: &Path) -> String {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    entries
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            format!("--- {}\n{text}", p.display())
        })
        .collect()
}

#[test]
fn job_array_runs_every_task() {
    let Some(cluster) = cluster_or_skip() else {
        return;
    };
    let out = tempfile::Builder::new()
        .prefix("dropjit-slurm-out-")
        .tempdir_in("/tmp")
        .expect("output dir");
    let dir = out.path().display().to_string();
    let job = cluster
        .run(
            "sbatch",
            &[
                "--parsable",
                "--array=0-3",
                &format!("--output={dir}/%A_%a.out"),
                "--wrap",
                &format!(
                    "echo task $SLURM_ARRAY_TASK_ID on $(hostname) > {dir}/task_$SLURM_ARRAY_TASK_ID.txt"
                ),
            ],
        )
        .expect("sbatch");
    // `--parsable` prints `ID` or `ID;cluster`.
    let job = job.trim().split(';').next().unwrap_or_default().to_string();
    assert!(
        !job.is_empty() && job.bytes().all(|b| b.is_ascii_digit()),
        "sbatch --parsable printed {job:?}"
    );

    if let Err(e) = cluster.wait_for_job(&job, Duration::from_secs(180)) {
        panic!("{e}\n{}", dump_dir(out.path()));
    }
    for task in 0..4 {
        let path = out.path().join(format!("task_{task}.txt"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), dump_dir(out.path())));
        let host = text
            .trim()
            .strip_prefix(&format!("task {task} on "))
            .unwrap_or_else(|| panic!("{}: unexpected {text:?}", path.display()));
        assert!(!host.is_empty(), "{}: no host name", path.display());
    }
}

/// `dropjit sweep --slurm` end to end: 2 cells x 2 seeds submitted as a job
/// array on the local cluster, each task one run on the shared sweep
/// directory; then `--status` and `report` read the results.
#[test]
fn sweep_runs_as_a_slurm_job_array() {
    let Some(cluster) = cluster_or_skip() else {
        return;
    };
    let (_d, data) = test_data();
    let tmp = tempfile::Builder::new()
        .prefix("dropjit-slurm-sweep-")
        .tempdir_in("/tmp")
        .expect("sweep dir");
    let t = tmp.path();
    let spec = t.join("spec.json");
    std::fs::write(
        &spec,
        format!(
            r#"{{"name": "on-slurm", "model": "{}", "seeds": [0, 1],
  "train": {{"iterations": 6, "limit_train": 256, "limit_test": 64}},
  "cells": [{{"mode": "plain"}}, {{"mode": "standard", "fwd": 0.1}}],
  "slurm": {{"cpus_per_task": 1, "sbatch": ["--mem=500M"]}}}}"#,
            tiny()
        ),
    )
    .unwrap();
    let (spec, dir, data) = (
        spec.display().to_string(),
        t.join("sweep").display().to_string(),
        data.display().to_string(),
    );
    let dropjit = env!("CARGO_BIN_EXE_dropjit");
    let submitted = cluster
        .run(
            dropjit,
            &["sweep", &spec, "--dir", &dir, "--data", &data, "--slurm"],
        )
        .expect("dropjit sweep --slurm");
    let job = submitted
        .split("submitted job array ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .unwrap_or_else(|| panic!("no job id in {submitted:?}"))
        .to_string();
    let logs = t.join("sweep/slurm");
    if let Err(e) = cluster.wait_for_job(&job, Duration::from_secs(300)) {
        panic!("{e}\n{}", dump_dir(&logs));
    }
    let runs = ["plain-s0", "plain-s1", "standard-0.1-s0", "standard-0.1-s1"];
    for (i, run) in runs.iter().enumerate() {
        let summary = t.join("sweep/runs").join(run).join("summary.json");
        assert!(
            summary.is_file(),
            "{run} did not finish\n{}",
            dump_dir(&logs)
        );
        assert_eq!(json(&summary)["iterations"], 6);
        // One task per run, each with its own Slurm log naming its run.
        let log = std::fs::read_to_string(logs.join(format!("{job}_{i}.out"))).unwrap();
        assert!(
            log.contains(&format!("run {i} of sweep on-slurm: {run}")),
            "{log}"
        );
    }
    let out = cluster
        .run(dropjit, &["sweep", &spec, "--dir", &dir, "--status"])
        .unwrap();
    assert!(
        out.contains("4 runs: 4 done, 0 partial, 0 failed, 0 pending"),
        "{out}"
    );
    let report = std::process::Command::new(dropjit)
        .args(["report", &dir])
        .output()
        .unwrap();
    let md = text(&report.stdout);
    assert!(report.status.success(), "{}", text(&report.stderr));
    for cell in ["plain", "standard-0.1"] {
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| {cell} |")))
            .unwrap_or_else(|| panic!("no {cell} row:\n{md}"));
        assert!(row.contains("| 2 |"), "two seeds in {row}");
    }
    // Everything is finished: a second --slurm submits nothing.
    let again = cluster
        .run(
            dropjit,
            &["sweep", &spec, "--dir", &dir, "--data", &data, "--slurm"],
        )
        .unwrap();
    assert!(again.contains("nothing to submit"), "{again}");
}
