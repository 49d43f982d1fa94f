//! The queue's periodic work: returning expired and orphaned leases to the queue.

use std::time::Duration;

use super::TaskService;
use crate::periodic::{Periodic, Skipped};

impl TaskService {
    /// Returns expired and orphaned task leases to the queue every half heartbeat interval
    /// (between 100 ms and 1 s).
    pub fn periodic(&self) -> Vec<Periodic> {
        let half = self.agents().config().heartbeat_interval_ms / 2;
        let tasks = self.clone();
        vec![Periodic::new(
            "task sweep",
            Duration::from_millis(half.clamp(100, 1000)),
            move || match tasks.sweep() {
                Ok((0, 0)) => Ok(()),
                Ok((timed_out, orphaned)) => {
                    tracing::info!(timed_out, orphaned, "returned task leases to the queue");
                    Ok(())
                }
                Err(e) => Err(Skipped::new(e.is_busy(), e)),
            },
        )]
    }
}
