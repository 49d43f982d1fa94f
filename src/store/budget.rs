//! The lock-wait budget: the most time one operation (a tool call, or a command's or a
//! background job's write) spends, in total, waiting for other processes' locks on the database.
//!
//! SQLite's own busy timeout counts each wait afresh, so a call that ran a sweep, its own
//! transaction and an audit write could wait the timeout three times over. Here a tool call
//! gets one [`Budget`] (the configured busy timeout, see [`set_default`]), installed as a tokio
//! task-local for the whole call ([`scope`]); every wait anywhere under it draws on it:
//! [`Store::write`](super::Store::write) waiting for the write lock, a statement's wait through
//! the connection's busy handler ([`on_busy`]), and waiting for the process's connection
//! mutex. Background work (sweeps, ticks) runs under [`Budget::none`]: when the lock is not
//! free at once it is skipped and runs at its next tick (the audit writer waits 100 ms, then
//! retries later). No wait for another process's lock in `Store::write` holds the process's
//! connection, so nothing in the background holds up a call. Code outside any scope (CLI
//! commands, a child's supervisor) gets a fresh budget of the default size per operation, as
//! before.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The busy timeout when none is configured.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The configured busy timeout, in microseconds: a process-wide setting (one config per
/// process), read by the busy handler, which SQLite calls without any context of ours.
static DEFAULT_US: AtomicU64 = AtomicU64::new(DEFAULT_BUSY_TIMEOUT.as_micros() as u64);

/// Sets the busy timeout: the budget of each tool call, and of each operation outside one.
pub fn set_default(timeout: Duration) {
    DEFAULT_US.store(timeout.as_micros() as u64, Ordering::Relaxed);
}

/// The busy timeout in effect (see [`set_default`]).
pub fn default_limit() -> Duration {
    Duration::from_micros(DEFAULT_US.load(Ordering::Relaxed))
}

/// How long one operation may still wait for locks, and how long it has waited.
#[derive(Debug)]
pub struct Budget {
    limit: Duration,
    spent_us: AtomicU64,
}

impl Budget {
    /// A budget of `limit` in total.
    pub fn new(limit: Duration) -> Arc<Self> {
        Arc::new(Budget {
            limit,
            spent_us: AtomicU64::new(0),
        })
    }

    /// A budget of the configured busy timeout: what a tool call gets.
    pub fn for_call() -> Arc<Self> {
        Budget::new(default_limit())
    }

    /// No waiting at all: background work takes the lock only when it is free at once.
    pub fn none() -> Arc<Self> {
        Budget::new(Duration::ZERO)
    }

    /// The total this budget allows.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// How long the operation has waited so far.
    pub fn spent(&self) -> Duration {
        Duration::from_micros(self.spent_us.load(Ordering::Relaxed))
    }

    /// How long it may still wait.
    pub fn remaining(&self) -> Duration {
        self.limit.saturating_sub(self.spent())
    }

    /// Counts `waited` against the budget.
    pub fn charge(&self, waited: Duration) {
        self.spent_us
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
    }
}

tokio::task_local! {
    /// The budget of the operation running on this task (or, through `sync_scope`, thread).
    static CURRENT: Arc<Budget>;
}

thread_local! {
    /// Set while a transaction is begun by `Store::write`, which waits for the lock itself
    /// (without holding the connection): the busy handler then gives up at once.
    static NO_WAIT: Cell<bool> = const { Cell::new(false) };
    /// Outside any budget: when the current wait began (the busy handler's first call).
    static UNSCOPED_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The budget in effect here, if any.
pub fn current() -> Option<Arc<Budget>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// Runs the future `f` (every poll of it) under `budget`.
pub async fn scope<F: Future>(budget: Arc<Budget>, f: F) -> F::Output {
    CURRENT.scope(budget, f).await
}

/// Runs `f` under `budget`.
pub fn sync_scope<R>(budget: Arc<Budget>, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(budget, f)
}

/// Runs `f` under the current budget, or under a fresh one of the default size.
pub(super) fn ensure<R>(f: impl FnOnce(&Budget) -> R) -> R {
    match current() {
        Some(budget) => f(&budget),
        None => {
            let budget = Budget::for_call();
            sync_scope(budget.clone(), || f(&budget))
        }
    }
}

/// Runs `f` with the busy handler switched off: a lock that is not free fails at once.
pub(super) fn without_waiting<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            NO_WAIT.set(self.0);
        }
    }
    let _restore = Restore(NO_WAIT.replace(true));
    f()
}

/// The pause before the `attempt`th retry: short at first (the usual holder is another
/// coordinator's transaction of a millisecond), then 50 ms.
pub(super) fn pause(attempt: u32) -> Duration {
    const PAUSES_MS: [u64; 7] = [1, 2, 5, 10, 20, 30, 50];
    Duration::from_millis(PAUSES_MS[(attempt as usize).min(PAUSES_MS.len() - 1)])
}

/// The connection's busy handler: sleeps and lets SQLite retry while the current budget (or,
/// outside one, the default for this one wait) lasts.
pub(super) fn on_busy(count: i32) -> bool {
    if NO_WAIT.get() {
        return false;
    }
    let attempt = count.max(0) as u32;
    match current() {
        Some(budget) => {
            let nap = pause(attempt).min(budget.remaining());
            if nap.is_zero() {
                return false;
            }
            std::thread::sleep(nap);
            budget.charge(nap);
            true
        }
        None => {
            let now = Instant::now();
            if attempt == 0 {
                UNSCOPED_SINCE.set(Some(now));
            }
            let since = UNSCOPED_SINCE.get().unwrap_or(now);
            let nap = pause(attempt).min(default_limit().saturating_sub(now - since));
            if nap.is_zero() {
                return false;
            }
            std::thread::sleep(nap);
            true
        }
    }
}

/// How long the current operation waited and its budget, for a busy error.
pub(super) fn waited() -> (Duration, Duration) {
    match current() {
        Some(budget) => (budget.spent(), budget.limit()),
        None => {
            let waited = UNSCOPED_SINCE
                .get()
                .map(|since| since.elapsed().min(default_limit()))
                .unwrap_or_default();
            (waited, default_limit())
        }
    }
}

/// Charges a wait for the process's connection mutex to the current budget, if any.
pub(super) fn charge(waited: Duration) {
    if let Some(budget) = current() {
        budget.charge(waited);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_shared_by_everything_under_it() {
        let budget = Budget::new(Duration::from_millis(100));
        sync_scope(budget.clone(), || {
            charge(Duration::from_millis(30));
            // A nested operation that has its own budget does not draw on this one.
            sync_scope(Budget::none(), || charge(Duration::from_millis(500)));
            ensure(|b| b.charge(Duration::from_millis(30)));
            assert_eq!(waited(), (Duration::from_millis(60), budget.limit()));
        });
        assert_eq!(budget.remaining(), Duration::from_millis(40));
        assert!(current().is_none());
        ensure(|b| assert_eq!(b.limit(), default_limit()));
    }
}
