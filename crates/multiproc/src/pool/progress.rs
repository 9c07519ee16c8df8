//! Where a call reports its progress: the terminal bar of
//! [`TaskOptions::progress`](super::TaskOptions::progress), or the user's
//! own [`Progress`].

/// Receives a pool call's progress: give one to
/// [`TaskOptions::progress_to`](super::TaskOptions::progress_to) to drive
/// your own bar, log or metrics instead of the terminal bar of
/// [`progress`](super::TaskOptions::progress). The calls come from the
/// pool's threads, never from a worker.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use multiproc::{Pool, pool::Progress};
///
/// #[derive(Default)]
/// struct Count(AtomicU64, AtomicU64);
///
/// impl Progress for Count {
///     fn set_total(&self, total: u64) {
///         self.0.store(total, Ordering::Relaxed);
///     }
///     fn advance(&self, n: u64) {
///         self.1.fetch_add(n, Ordering::Relaxed);
///     }
///     fn finish(&self) {}
/// }
///
/// fn double(x: u64) -> u64 {
///     2 * x
/// }
///
/// let pool = Pool::new(2)?;
/// let count = Arc::new(Count::default());
/// pool.task(double).progress_to(Arc::clone(&count)).map(0..100u64)?;
/// assert_eq!(count.0.load(Ordering::Relaxed), 100);
/// assert_eq!(count.1.load(Ordering::Relaxed), 100);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Progress: Send + Sync + 'static {
    /// How many items the call has: the input's length from the start
    /// when the input knows it (an exact `size_hint`), else the items read
    /// so far, growing; at the end, the true count.
    fn set_total(&self, total: u64);

    /// `n` more items ended (returned or failed).
    fn advance(&self, n: u64);

    /// The call ended: every item ended, or it failed and stopped short.
    /// Called once, before the call's waiters are woken.
    fn finish(&self);
}

impl<P: Progress> Progress for std::sync::Arc<P> {
    fn set_total(&self, total: u64) {
        (**self).set_total(total);
    }

    fn advance(&self, n: u64) {
        (**self).advance(n);
    }

    fn finish(&self) {
        (**self).finish();
    }
}

/// The terminal bar of `TaskOptions::progress` (hidden when stderr is
/// not a terminal).
pub(crate) struct Bar {
    bar: indicatif::ProgressBar,
}

impl Bar {
    pub(crate) fn new() -> Bar {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Bar { bar }
    }
}

impl Progress for Bar {
    fn set_total(&self, total: u64) {
        self.bar.set_length(total);
    }

    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }

    fn finish(&self) {
        self.bar.finish();
        // indicatif leaves the cursor after the finished bar: end its
        // line, or the next line printed would be glued to it.
        if !self.bar.is_hidden() {
            eprintln!();
        }
    }
}
