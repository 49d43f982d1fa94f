//! The closed states of the instance domain as stored: an instance's [`Status`] and a tool
//! pin's [`PinStatus`]. A leaf (std, serde and the macro only), so `store/instance.rs` can
//! parse rows into them without depending on the rest of the domain.

use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::macros::string_enum;

string_enum!(
    /// Where an instance is in its life. `crash_loop` waits for a person; `expired`,
    /// `stopped` and `failed` are final.
    Status {
        /// Launched; waiting for `initialize` and `tools/list`.
        Starting => "starting",
        /// Initialized; its tools are offered.
        Running => "running",
        /// Health checks are failing; it will be restarted at the threshold.
        Unhealthy => "unhealthy",
        /// Exited or failed its health checks; waiting out the backoff before starting again.
        Restarting => "restarting",
        /// Restarted too often within the window; left stopped for a person to look at.
        CrashLoop => "crash_loop",
        /// Reached its time to live and was stopped.
        Expired => "expired",
        /// Stopped on request, or because its coordinator exited.
        Stopped => "stopped",
        /// Could not start, or was lost with its coordinator and not restored.
        Failed => "failed",
    }
);

impl Status {
    /// Whether the instance holds its name (it is not over).
    pub fn is_live(self) -> bool {
        !matches!(self, Status::Expired | Status::Stopped | Status::Failed)
    }
}

string_enum!(
    /// Where a child tool's definition stands for its type.
    PinStatus {
        /// Its definition is pinned (approved, or clean on first sight) and offered.
        Pinned => "pinned",
        /// Changed since it was pinned, or flagged on first sight: hidden until a person
        /// reviews it.
        Quarantined => "quarantined",
    }
);
