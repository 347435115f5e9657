//! Running a sweep on this machine: up to `jobs` runs at once, the threads
//! divided between them; finished runs skipped, interrupted ones resumed; a
//! failed run reported while the others go on. Ctrl-C (or SIGTERM) lets each
//! running child checkpoint, and the same command continues the sweep.

use std::io::IsTerminal;
use std::process::Child;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::launch::{Ended, Launcher, Running};
use super::spec::PlannedRun;
use super::status::{live_progress, run_status, LOG_FILE};
use super::SweepError;
use crate::train::interrupt;

#[derive(Debug, PartialEq)]
pub struct LocalOutcome {
    pub done: usize,
    pub failed: Vec<(String, String)>,
    pub interrupted: bool,
}

struct Active<'r> {
    run: &'r PlannedRun,
    running: Running,
}

/// Every run of `launcher`'s plan not yet finished, `jobs` at a time with
/// `threads` threads each.
pub fn run_local(
    launcher: &Launcher,
    jobs: usize,
    threads: usize,
) -> Result<LocalOutcome, SweepError> {
    let plan = launcher.plan;
    let total = plan.runs.len();
    let mut queue: Vec<&PlannedRun> = Vec::new();
    let mut done = 0;
    for run in &plan.runs {
        if run_status(&launcher.run_dir(run)).is_done() {
            done += 1;
        } else {
            queue.push(run);
        }
    }
    println!(
        "sweep {}: {total} runs ({done} already finished), {jobs} at a time with {threads} \
         thread(s) each; directory {}",
        plan.name,
        launcher.dir.display()
    );
    // Seed by seed: every cell's first seed before any cell's second, so a
    // sweep stopped part-way has the whole table at fewer seeds.
    let seed_rank = |r: &PlannedRun| plan.seeds.iter().position(|&s| s == r.seed);
    queue.sort_by_key(|r| (seed_rank(r), r.index));
    queue.reverse(); // pop() takes them in that order
    let progress = SweepProgress::new(total, done);
    interrupt::install();
    let mut active: Vec<Active> = Vec::new();
    let mut failed = Vec::new();
    let mut stopping = false;
    let mut forwarded = false;
    let mut waiting_on = 0;
    loop {
        if !stopping && interrupt::received().is_some() {
            stopping = true;
            progress.line("interrupted: letting the running runs checkpoint; run the same command to continue");
        }
        if stopping && !forwarded {
            // Children run in their own process groups (see `launch`): they
            // hear of the signal from us, once.
            for a in &active {
                forward_sigterm(&a.running.child);
            }
            forwarded = true;
        }
        let mut held = Vec::new();
        while !stopping && active.len() < jobs {
            let Some(run) = queue.pop() else { break };
            match launcher.spawn(run, threads)? {
                Some(running) => {
                    progress.line(&format!(
                        "start  {} (log: {})",
                        run.name,
                        launcher.run_dir(run).join(LOG_FILE).display()
                    ));
                    active.push(Active { run, running });
                }
                None => held.push(run),
            }
        }
        if !held.is_empty() && held.len() != waiting_on {
            let names: Vec<&str> = held.iter().map(|r| r.name.as_str()).collect();
            progress.line(&format!(
                "waiting: {} held by another process (an earlier sweep's run finishing \
                 its checkpoint, or another sweep on this directory)",
                names.join(", ")
            ));
        }
        waiting_on = held.len();
        // Held runs go back to the front of the queue, to be tried again.
        queue.extend(held.into_iter().rev());
        if active.is_empty() {
            if queue.is_empty() || stopping {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        let mut i = 0;
        while i < active.len() {
            let status = active[i]
                .running
                .child
                .try_wait()
                .map_err(|e| SweepError::Other(format!("waiting for a run: {e}")))?;
            let Some(status) = status else {
                i += 1;
                continue;
            };
            let a = active.swap_remove(i);
            match launcher.ended(a.run, status)? {
                Ended::Finished(s) => {
                    done += 1;
                    progress.finished(done);
                    progress.line(&format!("done   {}: {}", a.run.name, s.describe()));
                }
                Ended::Interrupted => {
                    progress.line(&format!("paused {} at its last checkpoint", a.run.name));
                    stopping = true;
                }
                Ended::Failed(m) => {
                    progress.line(&format!("FAILED {}: {m}", a.run.name));
                    failed.push((a.run.name.clone(), m));
                }
            }
        }
        progress.show_active(launcher, &active);
        std::thread::sleep(Duration::from_millis(200));
    }
    progress.finish();
    Ok(LocalOutcome {
        done,
        failed,
        interrupted: stopping,
    })
}

fn forward_sigterm(child: &Child) {
    #[cfg(unix)]
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    #[cfg(not(unix))]
    let _ = child;
}

/// A bar over the sweep's runs on a terminal; otherwise a line per event and
/// one every minute with the running runs' iterations.
struct SweepProgress {
    bar: Option<ProgressBar>,
    last_line: std::cell::Cell<Instant>,
}

impl SweepProgress {
    fn new(total: usize, done: usize) -> SweepProgress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let style = ProgressStyle::with_template("sweep [{bar:20}] {pos}/{len} runs  {msg}")
                .map(|s| s.progress_chars("=> "))
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr())
                .with_style(style)
                .with_position(done as u64)
        });
        SweepProgress {
            bar,
            last_line: std::cell::Cell::new(Instant::now()),
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None => println!("{text}"),
        }
    }

    fn finished(&self, done: usize) {
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
        }
    }

    fn show_active(&self, launcher: &Launcher, active: &[Active]) {
        let parts: Vec<String> = active
            .iter()
            .map(|a| match live_progress(&launcher.run_dir(a.run)) {
                Some((it, n)) => format!("{} {it}/{n}", a.run.name),
                None => format!("{} starting", a.run.name),
            })
            .collect();
        let msg = parts.join(", ");
        match &self.bar {
            Some(b) => b.set_message(msg),
            None if self.last_line.get().elapsed() >= Duration::from_secs(60) => {
                self.last_line.set(Instant::now());
                eprintln!("running: {msg}");
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
