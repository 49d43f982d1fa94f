//! What an agent is and says about itself: the closed sets stored with each agent, shared by
//! the agent service and the store's row mapping. A leaf: it depends on nothing but std, serde
//! and the crate's macros.

use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::macros::string_enum;

string_enum!(
    /// What an agent is for.
    AgentType {
        /// Runs tasks.
        Worker => "worker",
        /// Splits work and submits tasks for others.
        Orchestrator => "orchestrator",
        /// Checks the results of others.
        Validator => "validator",
    }
);

string_enum!(
    /// What the agent says about itself.
    AgentStatus {
        /// Can take work.
        Ready => "ready",
        /// Working, may take more if its load allows.
        Busy => "busy",
        /// Finishing what it has; takes no new tasks.
        Draining => "draining",
    }
);
