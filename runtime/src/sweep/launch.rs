//! One run of a sweep as a child `dropjit train` process: a fresh start, or
//! `--resume` from its last checkpoint; its output appended to the run's
//! `train.log`; a failure recorded in the run directory.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use super::plan::Plan;
use super::spec::PlannedRun;
use super::status::{log_tail, run_status, RunStatus, FAILED_FILE, LOG_FILE};
use super::SweepError;
use crate::train::checkpoint::STATE_FILE;

/// What every run of one sweep invocation shares.
pub struct Launcher<'a> {
    pub plan: &'a Plan,
    pub dir: &'a Path,
    pub data_root: PathBuf,
    /// The `dropjit` binary to run (this one).
    pub exe: PathBuf,
}

/// A started run: its process and the lock on its directory.
pub struct Running {
    pub child: Child,
    _lock: File,
}

pub const LOCK_FILE: &str = ".sweep-lock";

/// An exclusive `flock` on the run directory, or `None` if another process
/// holds it. The `train` child inherits the locked descriptor, so the lock
/// lasts until the run's process is gone even when the sweep that started it
/// was killed: a restarted sweep (or a requeued Slurm task) waits for the old
/// process's last checkpoint instead of resuming under its feet.
pub fn lock_run(run_dir: &Path) -> Result<Option<File>, SweepError> {
    let path = run_dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| SweepError::io(&path, e))?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(SweepError::io(&path, format!("cannot lock: {e}")));
        }
    }
    Ok(Some(f))
}

/// How a child ended.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Finished(RunStatus),
    /// Stopped by SIGINT/SIGTERM after writing a checkpoint: resumable.
    Interrupted,
    Failed(String),
}

impl Launcher<'_> {
    pub fn run_dir(&self, run: &PlannedRun) -> PathBuf {
        self.plan.run_dir(self.dir, run)
    }

    /// The `dropjit` arguments that start or continue `run`.
    pub fn train_args(&self, run: &PlannedRun, threads: usize) -> Result<Vec<String>, SweepError> {
        let rd = self.run_dir(run);
        let path = |p: &Path| p.display().to_string();
        let common = [
            "--data".to_string(),
            path(&self.data_root),
            "--threads".to_string(),
            threads.to_string(),
        ];
        if rd.join(STATE_FILE).is_file() {
            let mut v = vec!["train".to_string(), "--resume".into(), path(&rd)];
            v.extend(common);
            return Ok(v);
        }
        // An attempt that never reached its first checkpoint leaves at most
        // config.json and a log: start again from nothing (keeping the log).
        for f in ["config.json", "metrics.jsonl"] {
            let p = rd.join(f);
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| SweepError::io(&p, e))?;
            }
        }
        let cell = self.plan.cell(&run.cell);
        let mut v = vec![
            "train".to_string(),
            "--graph".into(),
            path(&self.plan.model_for(self.dir, cell)),
            "--out".into(),
            path(&rd),
            "--seed".into(),
            run.seed.to_string(),
            "--no-download".into(),
        ];
        v.extend(common);
        if let Some(d) = &self.plan.dataset_flag {
            v.extend(["--dataset".to_string(), d.clone()]);
        }
        v.extend(cell.dropout_flags());
        v.extend(cell.train.flags());
        Ok(v)
    }

    /// Starts `run`, its output appended to the run's `train.log`; `None`
    /// while another process holds the run (see [`lock_run`]).
    pub fn spawn(&self, run: &PlannedRun, threads: usize) -> Result<Option<Running>, SweepError> {
        let rd = self.run_dir(run);
        std::fs::create_dir_all(&rd).map_err(|e| SweepError::io(&rd, e))?;
        let Some(lock) = lock_run(&rd)? else {
            return Ok(None);
        };
        let failed = rd.join(FAILED_FILE);
        if failed.exists() {
            std::fs::remove_file(&failed).map_err(|e| SweepError::io(&failed, e))?;
        }
        let args = self.train_args(run, threads)?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(&args).stdin(Stdio::null());
        let path = rd.join(LOG_FILE);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| SweepError::io(&path, e))?;
        writeln!(f, "== dropjit {}", args.join(" ")).map_err(|e| SweepError::io(&path, e))?;
        let err = f.try_clone().map_err(|e| SweepError::io(&path, e))?;
        cmd.stdout(f).stderr(err);
        child_setup(&mut cmd, &lock);
        let child = cmd
            .spawn()
            .map_err(|e| SweepError::io(&self.exe, format!("cannot start: {e}")))?;
        Ok(Some(Running { child, _lock: lock }))
    }

    /// Reads how `run` ended; a failure is written into its directory.
    pub fn ended(&self, run: &PlannedRun, status: ExitStatus) -> Result<Ended, SweepError> {
        let rd = self.run_dir(run);
        if status.success() {
            return Ok(match run_status(&rd) {
                s @ RunStatus::Done(_) => Ended::Finished(s),
                other => self.failed(
                    run,
                    &format!("exited without finishing ({})", other.describe()),
                )?,
            });
        }
        if interrupted(status) {
            return Ok(Ended::Interrupted);
        }
        let tail = log_tail(&rd, 1);
        let why = match status.code() {
            Some(c) => format!("exit status {c}"),
            None => format!("{status}"),
        };
        self.failed(run, &format!("{why}: {tail}"))
    }

    fn failed(&self, run: &PlannedRun, message: &str) -> Result<Ended, SweepError> {
        let path = self.run_dir(run).join(FAILED_FILE);
        let text = format!(
            "{message}\n(the whole output is in {})\n",
            self.run_dir(run).join(LOG_FILE).display()
        );
        crate::durable::write(&path, text.as_bytes()).map_err(|e| SweepError::io(&path, e))?;
        Ok(Ended::Failed(message.to_string()))
    }
}

/// `train` exits 130 after checkpointing on SIGINT/SIGTERM; a signal that
/// killed it outright (a second Ctrl-C, SIGKILL) leaves the last checkpoint.
fn interrupted(status: ExitStatus) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if matches!(
            status.signal(),
            Some(libc::SIGINT | libc::SIGTERM | libc::SIGKILL)
        ) {
            return true;
        }
    }
    status.code() == Some(130)
}

/// The child gets its own process group, so a terminal's Ctrl-C reaches the
/// sweep alone, which passes on exactly one SIGTERM (a second signal would
/// end `train` at once, without its checkpoint). If the sweep itself is
/// killed (SIGKILL, a lost allocation), the child gets SIGTERM, checkpoints
/// and stops, instead of training on unseen. It keeps the run's lock.
fn child_setup(cmd: &mut Command, lock: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let fd = lock.as_raw_fd();
        // SAFETY: setpgid, prctl and fcntl are async-signal-safe and touch no
        // memory of ours.
        unsafe {
            cmd.pre_exec(move || {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // Keep the locked descriptor open across exec (clear CLOEXEC).
                libc::fcntl(fd, libc::F_SETFD, 0);
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (cmd, lock);
}
