//! Ctrl-C (SIGINT) and SIGTERM (what Slurm and `kill` send) during `train`:
//! the first one is noted and the run stops after the current iteration with
//! a checkpoint; a second one ends the process at once (the handler is
//! installed with `SA_RESETHAND`), and the last checkpoint is still intact.

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal received, or 0.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn note(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    RECEIVED.store(signal, Ordering::SeqCst);
}

/// Installs the handlers (once per process; harmless to repeat).
pub fn install() {
    #[cfg(unix)]
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a plain sigaction with a handler that only stores an atomic.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = note as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// The name of the signal received since [`install`], if any.
pub fn received() -> Option<&'static str> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s if s == libc::SIGINT => Some("SIGINT (Ctrl-C)"),
        s if s == libc::SIGTERM => Some("SIGTERM"),
        _ => Some("a signal"),
    }
}
