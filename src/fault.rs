//! What a client is told when a domain refuses or fails a call: the closed set of error codes
//! clients branch on, and [`IntoFault`], which each domain error implements next to its
//! definition (the server turns a [`Fault`] into the tool result, `server/tool.rs`). A leaf:
//! it depends on nothing in the crate but the store's error.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::store::StoreError;

/// A closed set of domain error codes, stable for clients to branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// An argument is missing, unknown, of the wrong type or out of bounds: `details.field`
    /// names it and the message says what was expected. Correct the call and send it again.
    InvalidArgument,
    /// The request is well-formed but asks for something impossible (an empty time range).
    InvalidRequest,
    /// The thing named does not exist.
    NotFound,
    /// The request clashes with the current state (already decided, expired).
    Conflict,
    /// Policy does not allow this here (for example approving a critical action in the client).
    Forbidden,
    /// The client or a child could not be reached; try again or use another channel.
    Unavailable,
    /// The agent token is missing, forged, expired or revoked.
    Unauthorized,
    /// The reporting agent does not hold the task's lease (it expired or was reassigned).
    NotLeaseholder,
    /// The database was locked by another process for too long; try again.
    StorageBusy,
    /// The disk holding the database is full; nothing was written. Try again once there is
    /// room.
    StorageFull,
    /// The database failed; see the message.
    StorageError,
    /// The tool's toolset is not enabled on this connection; `details.enable_with` says the
    /// `toolsets` call that enables it.
    ToolsetDisabled,
    /// A bug or an unexpected state in the coordinator.
    Internal,
}

/// A domain error as the client is to see it.
#[derive(Debug)]
pub enum Fault {
    /// A failure with its code, message and machine-readable details. `retryable` overrides
    /// what the code says (busy, full and unavailable are retryable) when set.
    Error {
        code: ErrorCode,
        message: String,
        details: Value,
        retryable: Option<bool>,
    },
    /// An argument to correct: the field (its path in the arguments) and what was expected.
    Invalid { field: String, message: String },
    /// The store failed: busy, full, or broken.
    Store(StoreError),
    /// A request state the client sent back (a question's handle) that this server did not
    /// give or that was used already: a protocol error, not the model's to correct.
    Refused(String),
}

impl Fault {
    /// A failure with `code` and `message`, no details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Fault::Error {
            code,
            message: message.into(),
            details: json!({}),
            retryable: None,
        }
    }

    /// An argument to correct.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Fault::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same failure with machine-readable details.
    pub fn with_details(mut self, value: Value) -> Self {
        if let Fault::Error { details, .. } = &mut self {
            *details = value;
        }
        self
    }

    /// The same failure, retryable or not whatever its code says.
    pub fn retryable(mut self, yes: bool) -> Self {
        if let Fault::Error { retryable, .. } = &mut self {
            *retryable = Some(yes);
        }
        self
    }
}

/// How a domain error is told to the client. Implemented next to each domain error, so a new
/// variant cannot be added without saying what the client sees.
pub trait IntoFault {
    fn into_fault(self) -> Fault;
}

impl IntoFault for StoreError {
    fn into_fault(self) -> Fault {
        Fault::Store(self)
    }
}
