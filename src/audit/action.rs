//! What an audit event records was done (the closed set of actions, each domain's own) and how
//! it ended.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What was done. A closed set: each later domain adds its own variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Action {
    /// An MCP tool was called (tool, actor, outcome, duration).
    #[serde(rename = "tool.call")]
    ToolCall,
    /// A coordinator's audit signing key entered the chain (subject: the hex public key), just
    /// before the first head it signs: `audit_verify` trusts that key from this event on.
    #[serde(rename = "audit.key_added")]
    AuditKeyAdded,
    /// Someone asked a person to approve an action.
    #[serde(rename = "approval.requested")]
    ApprovalRequested,
    /// A person approved an action (critical: signed).
    #[serde(rename = "approval.approved")]
    ApprovalApproved,
    /// A person rejected or declined an action (critical: signed).
    #[serde(rename = "approval.rejected")]
    ApprovalRejected,
    /// A person dismissed the question (critical: signed).
    #[serde(rename = "approval.cancelled")]
    ApprovalCancelled,
    /// Nobody decided in time (critical: signed).
    #[serde(rename = "approval.expired")]
    ApprovalExpired,
    /// An approved action ran, once (critical: signed).
    #[serde(rename = "approval.executed")]
    ApprovalExecuted,
    /// An agent registered.
    #[serde(rename = "agent.registered")]
    AgentRegistered,
    /// An agent registered again under the same name (old tokens revoked).
    #[serde(rename = "agent.refreshed")]
    AgentRefreshed,
    /// An agent left; its work went back to the queue.
    #[serde(rename = "agent.deregistered")]
    AgentDeregistered,
    /// A task was queued.
    #[serde(rename = "task.submitted")]
    TaskSubmitted,
    /// An agent claimed a task.
    #[serde(rename = "task.leased")]
    TaskLeased,
    /// The leaseholder reported progress for the first time.
    #[serde(rename = "task.running")]
    TaskRunning,
    /// The leaseholder reported a result.
    #[serde(rename = "task.completed")]
    TaskCompleted,
    /// The leaseholder reported an error.
    #[serde(rename = "task.failed")]
    TaskFailed,
    /// A lease expired without a result.
    #[serde(rename = "task.timed_out")]
    TaskTimedOut,
    /// A task went back to the queue (retry, agent gone, or by hand).
    #[serde(rename = "task.requeued")]
    TaskRequeued,
    /// Retries ran out: the task is a dead letter.
    #[serde(rename = "task.dead")]
    TaskDead,
    /// A task was cancelled.
    #[serde(rename = "task.cancelled")]
    TaskCancelled,
    /// Finished tasks were deleted.
    #[serde(rename = "task.purged")]
    TaskPurged,
    /// A pipeline definition was created, or a new version of one.
    #[serde(rename = "pipeline.created")]
    PipelineCreated,
    /// A pipeline was deleted (its versions and runs are kept).
    #[serde(rename = "pipeline.deleted")]
    PipelineDeleted,
    /// A pipeline run started.
    #[serde(rename = "pipeline.run_started")]
    PipelineRunStarted,
    /// A stage of a run was queued as a task or put to a person.
    #[serde(rename = "pipeline.stage_started")]
    PipelineStageStarted,
    /// A stage of a run completed.
    #[serde(rename = "pipeline.stage_completed")]
    PipelineStageCompleted,
    /// A stage of a run failed, was rejected or was cancelled.
    #[serde(rename = "pipeline.stage_failed")]
    PipelineStageFailed,
    /// A stage of a run was skipped because a required stage before it failed.
    #[serde(rename = "pipeline.stage_skipped")]
    PipelineStageSkipped,
    /// A pipeline run finished: completed, failed or cancelled.
    #[serde(rename = "pipeline.run_finished")]
    PipelineRunFinished,
    /// A run's completion webhook was delivered or gave up.
    #[serde(rename = "pipeline.webhook")]
    PipelineWebhook,
    /// A secret was stored or replaced (the event names it; the value is never logged).
    #[serde(rename = "secret.set")]
    SecretSet,
    /// A secret was deleted from the store.
    #[serde(rename = "secret.removed")]
    SecretRemoved,
    /// Every secret was re-encrypted under a new master key.
    #[serde(rename = "secret.key_rotated")]
    SecretKeyRotated,
    /// A secret was decrypted to be handed to a child process (`mcp-coordinator exec`).
    #[serde(rename = "secret.used")]
    SecretUsed,
    /// An assessment of MCP client configs was requested.
    #[serde(rename = "assessment.requested")]
    AssessmentRequested,
    /// An assessment finished (completed, failed or cancelled), with its finding counts.
    #[serde(rename = "assessment.finished")]
    AssessmentFinished,
    /// A remediation proposal was recorded with its diff and risk.
    #[serde(rename = "remediation.proposed")]
    RemediationProposed,
    /// A remediation proposal was withdrawn before it ran.
    #[serde(rename = "remediation.withdrawn")]
    RemediationWithdrawn,
    /// An approved remediation ran: files written, with backups, results per action.
    #[serde(rename = "remediation.executed")]
    RemediationExecuted,
    /// An executed remediation was undone from its backups, after approval.
    #[serde(rename = "remediation.rolled_back")]
    RemediationRolledBack,
    /// A child MCP instance was started and initialized (type, pid, tools).
    #[serde(rename = "instance.started")]
    InstanceStarted,
    /// A child MCP instance was stopped (by whom, why).
    #[serde(rename = "instance.stopped")]
    InstanceStopped,
    /// A child MCP instance exited or became unhealthy on its own (exit status, stderr tail).
    #[serde(rename = "instance.exited")]
    InstanceExited,
    /// A child MCP instance was started again after a crash, a failed health check or a request.
    #[serde(rename = "instance.restarted")]
    InstanceRestarted,
    /// A child MCP instance crashed too often and was left for a person.
    #[serde(rename = "instance.crash_loop")]
    InstanceCrashLoop,
    /// A child MCP instance reached its time to live and was stopped.
    #[serde(rename = "instance.expired")]
    InstanceExpired,
    /// A child MCP instance could not start, or was lost with its coordinator.
    #[serde(rename = "instance.failed")]
    InstanceFailed,
    /// A child tool's definition was seen for the first time and pinned by its hash.
    #[serde(rename = "instance.tool_pinned")]
    InstanceToolPinned,
    /// A child tool's definition changed or looks like a prompt injection; it is hidden until approved.
    #[serde(rename = "instance.tool_quarantined")]
    InstanceToolQuarantined,
    /// A person approved a quarantined child tool definition; it is pinned again and exposed.
    #[serde(rename = "instance.tool_approved")]
    InstanceToolApproved,
    /// An overseer was set for this database (the name; never the passphrase or its hash).
    #[serde(rename = "overseer.set")]
    OverseerSet,
    /// The overseer's passphrase (or name) was changed, with the old passphrase.
    #[serde(rename = "overseer.changed")]
    OverseerChanged,
    /// The overseer's passphrase was reset with the recovery code.
    #[serde(rename = "overseer.reset")]
    OverseerReset,
    /// A wrong overseer passphrase or recovery code was given (and whether it locked the CLI).
    #[serde(rename = "overseer.refused")]
    OverseerRefused,
    /// The overseer logged in to the oversight console (from which address).
    #[serde(rename = "console.login")]
    ConsoleLogin,
    /// An access token or API key for MCP over HTTP was issued (`mcp-coordinator token issue`).
    #[serde(rename = "token.issued")]
    TokenIssued,
    /// An access token or API key was revoked.
    #[serde(rename = "token.revoked")]
    TokenRevoked,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ToolCall => "tool.call",
            Action::ConsoleLogin => "console.login",
            Action::AuditKeyAdded => "audit.key_added",
            Action::ApprovalRequested => "approval.requested",
            Action::ApprovalApproved => "approval.approved",
            Action::ApprovalRejected => "approval.rejected",
            Action::ApprovalCancelled => "approval.cancelled",
            Action::ApprovalExpired => "approval.expired",
            Action::ApprovalExecuted => "approval.executed",
            Action::AgentRegistered => "agent.registered",
            Action::AgentRefreshed => "agent.refreshed",
            Action::AgentDeregistered => "agent.deregistered",
            Action::TaskSubmitted => "task.submitted",
            Action::TaskLeased => "task.leased",
            Action::TaskRunning => "task.running",
            Action::TaskCompleted => "task.completed",
            Action::TaskFailed => "task.failed",
            Action::TaskTimedOut => "task.timed_out",
            Action::TaskRequeued => "task.requeued",
            Action::TaskDead => "task.dead",
            Action::TaskCancelled => "task.cancelled",
            Action::TaskPurged => "task.purged",
            Action::PipelineCreated => "pipeline.created",
            Action::PipelineDeleted => "pipeline.deleted",
            Action::PipelineRunStarted => "pipeline.run_started",
            Action::PipelineStageStarted => "pipeline.stage_started",
            Action::PipelineStageCompleted => "pipeline.stage_completed",
            Action::PipelineStageFailed => "pipeline.stage_failed",
            Action::PipelineStageSkipped => "pipeline.stage_skipped",
            Action::PipelineRunFinished => "pipeline.run_finished",
            Action::PipelineWebhook => "pipeline.webhook",
            Action::SecretSet => "secret.set",
            Action::SecretRemoved => "secret.removed",
            Action::SecretKeyRotated => "secret.key_rotated",
            Action::SecretUsed => "secret.used",
            Action::AssessmentRequested => "assessment.requested",
            Action::AssessmentFinished => "assessment.finished",
            Action::RemediationProposed => "remediation.proposed",
            Action::RemediationWithdrawn => "remediation.withdrawn",
            Action::RemediationExecuted => "remediation.executed",
            Action::RemediationRolledBack => "remediation.rolled_back",
            Action::InstanceStarted => "instance.started",
            Action::InstanceStopped => "instance.stopped",
            Action::InstanceExited => "instance.exited",
            Action::InstanceRestarted => "instance.restarted",
            Action::InstanceCrashLoop => "instance.crash_loop",
            Action::InstanceExpired => "instance.expired",
            Action::InstanceFailed => "instance.failed",
            Action::InstanceToolPinned => "instance.tool_pinned",
            Action::InstanceToolQuarantined => "instance.tool_quarantined",
            Action::InstanceToolApproved => "instance.tool_approved",
            Action::OverseerSet => "overseer.set",
            Action::OverseerChanged => "overseer.changed",
            Action::OverseerReset => "overseer.reset",
            Action::OverseerRefused => "overseer.refused",
            Action::TokenIssued => "token.issued",
            Action::TokenRevoked => "token.revoked",
        }
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It succeeded.
    Ok,
    /// A domain failure (the tool returned `isError` with any code but `invalid_argument`).
    Error,
    /// Refused before it ran: an unknown tool, or an argument the tool refused
    /// (`invalid_argument`).
    Invalid,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Invalid => "invalid",
        }
    }
}
