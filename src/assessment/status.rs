//! Where an assessment is: a leaf the store parses stored rows into (depends on nothing of
//! the crate but its macros).

use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::macros::string_enum;

string_enum!(
    /// Where an assessment is.
    AssessmentStatus {
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);
