//! A tiny persistent thread pool and the `extern "C"` entry JIT code calls.
//!
//! A pool of `T` threads has `T - 1` workers; the calling thread is the T-th.
//! Workers spin for a short while after a job (cheap back-to-back calls) and
//! then park. Tasks are claimed dynamically, so a kernel split this way must
//! write disjoint outputs per task; then results do not depend on `T` or on
//! which thread ran which task. Nested calls (from inside a task) and calls
//! from a second thread while the pool is busy run serially on the caller.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use super::jit::KernelFn;

/// How long an idle worker spins before parking.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(100);

struct Job {
    f: *const (dyn Fn(usize) + Sync),
    n_tasks: usize,
    next: AtomicUsize,
    panicked: AtomicBool,
    /// Workers that may still join (the submitter is not counted).
    seats: AtomicUsize,
}

impl Job {
    /// Runs tasks until none is left; returns false if a task panicked.
    fn run_tasks(&self) -> bool {
        // SAFETY: `f` outlives the job (the submitter waits for every worker
        // that may have seen it).
        let f = unsafe { &*self.f };
        catch_unwind(AssertUnwindSafe(|| loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n_tasks {
                break;
            }
            f(i);
        }))
        .is_ok()
    }
}

struct Shared {
    epoch: AtomicU64,
    /// The current job, or null once its submitter has run out of tasks.
    job: AtomicPtr<Job>,
    /// Workers that may be looking at `job`.
    active: AtomicUsize,
    sleeping: Vec<AtomicBool>,
    shutdown: AtomicBool,
    spin: Duration,
}

/// A persistent pool; see the module docs.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<(Thread, Option<JoinHandle<()>>)>,
    submit: Mutex<()>,
}

thread_local! {
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

impl ThreadPool {
    /// A pool of `threads` threads in total (the caller included).
    pub fn new(threads: usize) -> Self {
        Self::with_spin(threads, DEFAULT_SPIN)
    }

    pub fn with_spin(threads: usize, spin: Duration) -> Self {
        let n_workers = threads.max(1) - 1;
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            active: AtomicUsize::new(0),
            sleeping: (0..n_workers).map(|_| AtomicBool::new(false)).collect(),
            shutdown: AtomicBool::new(false),
            spin,
        });
        let workers = (0..n_workers)
            .map(|w| {
                let s = shared.clone();
                let h = thread::Builder::new()
                    .name(format!("dropjit-worker-{w}"))
                    .spawn(move || worker_loop(&s, w))
                    .expect("spawn worker");
                (h.thread().clone(), Some(h))
            })
            .collect();
        Self {
            shared,
            workers,
            submit: Mutex::new(()),
        }
    }

    /// Threads in total, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(0), ..., f(n_tasks - 1)`, spread over the pool; returns when all
    /// are done. Re-raises a task's panic.
    pub fn parallel_for(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        self.parallel_for_on(n_tasks, usize::MAX, f)
    }

    /// [`ThreadPool::parallel_for`] on at most `max_threads` threads (the
    /// caller included); tasks are claimed one at a time, so uneven tasks or
    /// a slow thread balance out.
    pub fn parallel_for_on(&self, n_tasks: usize, max_threads: usize, f: &(dyn Fn(usize) + Sync)) {
        let serial = || (0..n_tasks).for_each(f);
        if n_tasks <= 1 || max_threads <= 1 || self.workers.is_empty() || IN_TASK.with(|t| t.get())
        {
            return serial();
        }
        let Ok(_guard) = self.submit.try_lock() else {
            return serial();
        };
        // SAFETY (lifetime erasure): the job, and so `f`, is only used by
        // workers counted in `active`, which we wait for below.
        let f_static: *const (dyn Fn(usize) + Sync) = unsafe {
            std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f)
        };
        let job = Job {
            f: f_static,
            n_tasks,
            next: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            seats: AtomicUsize::new(max_threads - 1),
        };
        let sh = &*self.shared;
        sh.job
            .store(&job as *const Job as *mut Job, Ordering::SeqCst);
        sh.epoch.fetch_add(1, Ordering::SeqCst);
        for (w, (t, _)) in self.workers.iter().enumerate() {
            if sh.sleeping[w].load(Ordering::SeqCst) {
                t.unpark();
            }
        }
        IN_TASK.with(|t| t.set(true));
        let ok = job.run_tasks();
        IN_TASK.with(|t| t.set(false));
        // Every task is claimed now. Retract the job: a worker that wakes up
        // later sees null and never touches it; wait for those that did see
        // it (they finish their tasks first). A parked worker therefore costs
        // the caller nothing beyond running its share of the tasks.
        sh.job.store(std::ptr::null_mut(), Ordering::SeqCst);
        let t0 = Instant::now();
        let mut spins = 0u32;
        while sh.active.load(Ordering::SeqCst) != 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && t0.elapsed() > Duration::from_micros(50) {
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if !ok || job.panicked.load(Ordering::Relaxed) {
            resume_unwind(Box::new("a parallel_for task panicked"));
        }
    }

    /// Splits `0..total` into `min(n_threads, total)` contiguous, nearly equal
    /// chunks and runs `kernel(args, keys, begin, end)` on each.
    ///
    /// # Safety
    /// `kernel` must be safe to call with `args`/`keys` on each chunk, and
    /// chunks must write disjoint memory.
    pub unsafe fn run_kernel(
        &self,
        kernel: KernelFn,
        args: *const *mut f32,
        keys: *const u64,
        total: i64,
        n_threads: usize,
    ) {
        if total <= 0 {
            return;
        }
        let n = (n_threads.max(1) as i64).min(total);
        if n == 1 {
            return kernel(args, keys, 0, total);
        }
        let (a, k) = (args as usize, keys as usize);
        self.parallel_for(n as usize, &|t| {
            let t = t as i64;
            let (b, e) = (total * t / n, total * (t + 1) / n);
            kernel(a as *const *mut f32, k as *const u64, b, e);
        });
    }
}

fn worker_loop(sh: &Shared, w: usize) {
    let mut seen = 0u64;
    loop {
        let t0 = Instant::now();
        let mut spins = 0u32;
        loop {
            let e = sh.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            if sh.shutdown.load(Ordering::Acquire) {
                return;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || t0.elapsed() < sh.spin {
                std::hint::spin_loop();
                continue;
            }
            sh.sleeping[w].store(true, Ordering::SeqCst);
            if sh.epoch.load(Ordering::SeqCst) == seen && !sh.shutdown.load(Ordering::SeqCst) {
                thread::park();
            }
            sh.sleeping[w].store(false, Ordering::SeqCst);
        }
        // Announce ourselves before looking at the job (see `parallel_for`).
        sh.active.fetch_add(1, Ordering::SeqCst);
        let p = sh.job.load(Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: the submitter keeps the job alive until `active` is 0.
            let job = unsafe { &*p };
            let seated = job
                .seats
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| s.checked_sub(1))
                .is_ok();
            if seated {
                IN_TASK.with(|t| t.set(true));
                if !job.run_tasks() {
                    job.panicked.store(true, Ordering::Relaxed);
                }
                IN_TASK.with(|t| t.set(false));
            }
        }
        sh.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for (t, h) in &mut self.workers {
            t.unpark();
            if let Some(h) = h.take() {
                let _ = h.join();
            }
        }
    }
}

/// The process-wide pool used by the `extern "C"` entries: as many threads as
/// the machine has cores.
pub fn global_pool() -> &'static ThreadPool {
    static POOL: OnceLock<ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| ThreadPool::new(thread::available_parallelism().map_or(1, |n| n.get())))
}

/// `extern "C"` entry for JIT code: runs `kernel` over `0..total_outer` split
/// into `n_threads` contiguous chunks on the global pool, joining before return.
///
/// # Safety
/// As [`ThreadPool::run_kernel`].
pub unsafe extern "C" fn dropjit_parallel_for(
    kernel: KernelFn,
    args: *const *mut f32,
    keys: *const u64,
    total_outer: i64,
    n_threads: usize,
) {
    global_pool().run_kernel(kernel, args, keys, total_outer, n_threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_for_runs_every_task_once() {
        let pool = ThreadPool::new(2);
        for n in [0usize, 1, 2, 3, 7, 64] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..50 {
                pool.parallel_for(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 50));
        }
    }

    #[test]
    fn pool_wakes_after_parking() {
        let pool = ThreadPool::with_spin(2, Duration::from_micros(1));
        let count = AtomicUsize::new(0);
        for _ in 0..5 {
            thread::sleep(Duration::from_millis(2));
            pool.parallel_for(4, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(count.load(Ordering::Relaxed), 20);
    }

    #[test]
    fn nested_calls_run_serially() {
        let pool = ThreadPool::new(2);
        let count = AtomicUsize::new(0);
        pool.parallel_for(2, &|_| {
            pool.parallel_for(3, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(count.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn task_panic_is_reraised_and_pool_survives() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.parallel_for(4, &|i| {
                if i == 3 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.parallel_for(4, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn chunks_cover_range_contiguously() {
        unsafe extern "C" fn record(args: *const *mut f32, _k: *const u64, b: i64, e: i64) {
            let out = *args;
            for i in b..e {
                *out.add(i as usize) += 1.0 + b as f32 * 0.0;
            }
        }
        let pool = ThreadPool::new(2);
        for total in [1i64, 2, 3, 5, 128] {
            for t in [1usize, 2, 3] {
                let mut v = vec![0f32; total as usize];
                let args = [v.as_mut_ptr()];
                unsafe { pool.run_kernel(record, args.as_ptr(), std::ptr::null(), total, t) };
                assert!(v.iter().all(|x| *x == 1.0), "total {total} threads {t}");
            }
        }
    }
}

#[cfg(test)]
mod worker_tests {
    use super::*;

    #[test]
    fn parallel_for_on_keeps_to_its_thread_limit() {
        let pool = ThreadPool::new(4);
        for limit in [1, 2, 3] {
            let ids = Mutex::new(std::collections::HashSet::new());
            let done = AtomicUsize::new(0);
            pool.parallel_for_on(64, limit, &|_| {
                ids.lock().unwrap().insert(thread::current().id());
                let t = Instant::now();
                while t.elapsed() < Duration::from_micros(200) {
                    std::hint::spin_loop();
                }
                done.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(done.load(Ordering::Relaxed), 64);
            let used = ids.lock().unwrap().len();
            assert!(
                used >= 1 && used <= limit,
                "limit {limit}: {used} threads ran tasks"
            );
        }
    }

    #[test]
    fn worker_threads_take_part() {
        let pool = ThreadPool::new(2);
        let mut saw_two = false;
        for _ in 0..5 {
            let ids = Mutex::new(vec![]);
            // Each task waits (up to a second: the machine may be busy with
            // other tests) for the other to start, so a worker that takes
            // part always gets its own task.
            pool.parallel_for(2, &|_| {
                ids.lock().unwrap().push(thread::current().id());
                let t = Instant::now();
                while ids.lock().unwrap().len() < 2 && t.elapsed() < Duration::from_secs(1) {
                    std::hint::spin_loop();
                }
            });
            let mut v = ids.into_inner().unwrap();
            v.dedup();
            if v.len() == 2 {
                saw_two = true;
                break;
            }
        }
        assert!(saw_two, "the worker never ran a task");
    }
}
