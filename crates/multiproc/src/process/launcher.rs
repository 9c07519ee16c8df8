//! The launcher thread: where children are created.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that created a child ends, not
//! the process. A child created from a short-lived thread (a test of
//! `cargo test`, a recycled worker of an async runtime) would be killed when
//! that thread ends. So children are created from the main thread, which
//! lives as long as the process, or else from this one long-lived thread.

use std::sync::mpsc;

use crate::sys;
use crate::sys::fork_local::ForkLocal;

type Job = Box<dyn FnOnce() + Send>;

static LAUNCHER: ForkLocal<Option<(i32, mpsc::Sender<Job>)>> = ForkLocal::new(|| None);

/// Runs `f` on a thread that lives as long as the process, and returns its
/// result.
pub(crate) fn run<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    if sys::process::is_main_thread() {
        return f();
    }
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = reply_tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    let sender = {
        let mut guard = LAUNCHER.lock();
        let me = sys::process::pid();
        match &*guard {
            Some((pid, tx)) if *pid == me => tx.clone(),
            _ => {
                let (tx, rx) = mpsc::channel::<Job>();
                std::thread::Builder::new()
                    .name("multiproc-launcher".into())
                    .spawn(move || {
                        for job in rx {
                            job();
                        }
                    })?;
                *guard = Some((me, tx.clone()));
                tx
            }
        }
    };
    sender
        .send(job)
        .expect("multiproc: the launcher thread is gone");
    match reply_rx
        .recv()
        .expect("multiproc: the launcher thread dropped a job")
    {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
