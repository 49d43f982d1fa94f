//! Work a domain does on a clock, beside the requests (a lease sweep, a pipeline tick): each
//! domain describes its own as [`Periodic`] values, and the server's worker owner
//! (`server/workers.rs`) runs them until shutdown. A leaf: it depends on nothing in the crate.

use std::time::Duration;

/// One piece of periodic work: what it is called in logs, how often it runs, and one run.
pub struct Periodic {
    /// What the logs call it ("task sweep").
    pub name: &'static str,
    /// Time between the starts of two runs; the first runs at once.
    pub every: Duration,
    /// One run. It is called on a blocking thread with no lock-wait budget: a run that finds
    /// the database busy says so with [`Skipped::busy`], and the next tick tries again.
    pub run: Box<dyn Fn() -> Result<(), Skipped> + Send + Sync>,
}

/// Why a run did not do its work.
#[derive(Debug)]
pub struct Skipped {
    /// The database was busy (another process held its lock): expected, logged at debug.
    pub busy: bool,
    /// What went wrong, for the log.
    pub message: String,
}

impl Skipped {
    /// A run that failed, `busy` when the cause was a lock another process held.
    pub fn new(busy: bool, error: impl std::fmt::Display) -> Self {
        Skipped {
            busy,
            message: error.to_string(),
        }
    }
}

impl Periodic {
    /// Describes a piece of periodic work.
    pub fn new(
        name: &'static str,
        every: Duration,
        run: impl Fn() -> Result<(), Skipped> + Send + Sync + 'static,
    ) -> Self {
        Periodic {
            name,
            every,
            run: Box::new(run),
        }
    }
}
