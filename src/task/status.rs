//! Where a task is: the closed set of task statuses, shared by the queue and the store's row
//! mapping. A leaf: it depends on nothing but std, serde and the crate's macros.

use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::macros::string_enum;

string_enum!(
    /// Where a task is: `queued` -> `leased` -> `running` -> a final state. Failed and
    /// timed-out attempts go back to `queued` (with backoff) until retries run out: `dead`.
    TaskStatus {
        /// Waiting for an agent.
        Queued => "queued",
        /// Claimed by an agent, not started yet.
        Leased => "leased",
        /// The agent reported progress.
        Running => "running",
        /// Finished with a result.
        Completed => "completed",
        /// Failed with an error that is not worth retrying.
        Failed => "failed",
        /// The lease expired (only seen in the audit log; the task is requeued or dead).
        TimedOut => "timed_out",
        /// Cancelled before it finished.
        Cancelled => "cancelled",
        /// Retries exhausted: the dead-letter state. `task_requeue` can put it back.
        Dead => "dead",
    }
);

impl TaskStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled | TaskStatus::Dead
        )
    }
}
