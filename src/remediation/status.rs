//! Where a remediation proposal is: a leaf the store parses stored rows into (depends on
//! nothing of the crate but its macros).

use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::macros::string_enum;

string_enum!(
    /// Where a proposal is.
    RemediationStatus {
        /// Waiting for review (`remediation_review`).
        Proposed => "proposed",
        /// Withdrawn before it ran.
        Withdrawn => "withdrawn",
        /// Approved and being written (a crash here leaves it so: it never runs again).
        Executing => "executing",
        /// Written; backups kept.
        Executed => "executed",
        /// Refused at execution (a file changed since the preview) or a write failed (and was
        /// undone).
        Failed => "failed",
        /// Restored from its backups.
        RolledBack => "rolled_back",
    }
);
