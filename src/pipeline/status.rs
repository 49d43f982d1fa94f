//! Where a run, a stage of a run and a run's completion webhook are: the closed sets stored
//! with each run, shared by the pipeline service and the store's row mapping. A leaf: it
//! depends on nothing but std, serde and the crate's macros.

use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::macros::string_enum;

string_enum!(
    /// Where a run is. `running` until no stage can move any more.
    RunStatus {
        /// Stages are queued, running or waiting for a person.
        Running => "running",
        /// Every required stage completed.
        Completed => "completed",
        /// A required stage failed (or its approval was refused); what depended on it was skipped.
        Failed => "failed",
        /// Cancelled by `pipeline_run_cancel`.
        Cancelled => "cancelled",
    }
);

string_enum!(
    /// Where a stage of a run is.
    StageStatus {
        /// Waiting for the stages it depends on.
        Waiting => "waiting",
        /// Its task is in the queue.
        Queued => "queued",
        /// An agent holds its task.
        Running => "running",
        /// An approval stage waiting for a person's decision.
        AwaitingApproval => "awaiting_approval",
        /// Done; its output went to the stages after it.
        Completed => "completed",
        /// Its task failed for good, or its approval was rejected, expired or dismissed.
        Failed => "failed",
        /// Not run because a required stage before it failed.
        Skipped => "skipped",
        /// The run was cancelled before this stage finished.
        Cancelled => "cancelled",
    }
);

impl StageStatus {
    /// Not in a final state yet: waiting, queued, running or waiting for a person.
    pub(super) fn is_open(self) -> bool {
        matches!(
            self,
            StageStatus::Waiting
                | StageStatus::Queued
                | StageStatus::Running
                | StageStatus::AwaitingApproval
        )
    }
}

string_enum!(
    /// Where the delivery of a run's completion webhook is.
    WebhookState {
        /// The run has not finished yet.
        Waiting => "waiting",
        /// Due for delivery (or being delivered), with attempts left.
        Pending => "pending",
        /// An attempt was answered 2xx.
        Delivered => "delivered",
        /// Every attempt failed; no more are made.
        Failed => "failed",
    }
);
