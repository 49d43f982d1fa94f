//! The one door: what an executor needs a person to approve (a [`Gate`]), and the checks that
//! bind a decision to exactly that executor. An approval authorises one executor only: its
//! kind, subject, action hash and risk are fixed by the executor when it opens the approval,
//! `decide_with` by the policy for that kind and risk, and consuming checks every one of them.
//! A generic `approval_request` approval can never pass a gate, and a question asked for one
//! call (an MRTR [`Ticket`]) cannot answer another.

use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Approval, ApprovalError, Channel, DecideWith, Kind, NewApproval, Risk, canonical};
use crate::audit::Actor;
use crate::macros::string_enum;

string_enum!(
    /// Everything that runs only after a person approved it. Each executor describes its gate;
    /// none asks the person itself. A new executor is added here and to the gate's property
    /// test (`src/approval/tests.rs`).
    Executor {
        /// `remediation_review` (and the installer tools): writes a proposal's files.
        RemediationApply => "remediation_apply",
        /// `remediation_rollback`: restores an applied proposal's files from their backups.
        RemediationRollback => "remediation_rollback",
        /// A gated tool of a child instance (`<instance>__<tool>`, `instance_call_tool`).
        ChildToolCall => "child_tool_call",
        /// `instance_tool_review`: offers a changed or flagged child tool definition.
        ToolReview => "tool_review",
        /// An approval stage of a pipeline run.
        PipelineStage => "pipeline_stage",
    }
);

impl Executor {
    /// The approval kind this executor's approvals are stored under. Never `generic`.
    pub fn kind(self) -> Kind {
        match self {
            Executor::RemediationApply | Executor::RemediationRollback => Kind::Remediation,
            Executor::ChildToolCall | Executor::ToolReview => Kind::InstanceToolCall,
            Executor::PipelineStage => Kind::PipelineStage,
        }
    }

    /// Every executor, for tests and documentation.
    pub const ALL: [Executor; 5] = [
        Executor::RemediationApply,
        Executor::RemediationRollback,
        Executor::ChildToolCall,
        Executor::ToolReview,
        Executor::PipelineStage,
    ];
}

/// What one executor needs approved, exactly. Built by the executor from its own state (never
/// from an approval it was handed), so it is the yardstick an approval is measured against.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub executor: Executor,
    /// What the action is about: a proposal id, `<instance>__<tool>`, `<type>/<tool>`,
    /// `<run>/<stage>`.
    pub subject_id: String,
    /// One line a person reads.
    pub summary: String,
    /// Exactly what will run.
    pub action: Value,
    /// The executor's own judgement of the risk.
    pub risk: Risk,
    /// What will change, for the person.
    pub preview: Option<String>,
}

impl Gate {
    pub fn kind(&self) -> Kind {
        self.executor.kind()
    }

    pub fn action_hash(&self) -> String {
        canonical::action_hash(&self.action)
    }

    /// The approval request this gate opens.
    pub fn new_approval(&self, requested_by: &Actor) -> NewApproval {
        NewApproval {
            kind: self.kind(),
            subject_id: self.subject_id.clone(),
            summary: self.summary.clone(),
            action: self.action.clone(),
            risk: self.risk,
            preview: self.preview.clone(),
            requested_by: requested_by.clone(),
            expires_in_seconds: None,
        }
    }
}

/// What a sealed MRTR `requestState` carries: which question was asked, by which tool, about
/// which approval of which executor. The server seals it; the client only echoes it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Ticket {
    pub approval_id: String,
    /// The tool whose call asked the question; only a retry of that tool may answer it.
    pub asked_by: String,
    pub kind: Kind,
    pub subject_id: String,
    pub action_hash: String,
    /// One-time handle, redeemed with the answer.
    pub nonce: String,
}

impl Ticket {
    /// A ticket for a question about `approval`, asked by `tool`.
    pub fn for_question(approval: &Approval, tool: &str, nonce: String) -> Self {
        Ticket {
            approval_id: approval.id.clone(),
            asked_by: tool.to_string(),
            kind: approval.kind,
            subject_id: approval.subject_id.clone(),
            action_hash: approval.action_hash.clone(),
            nonce,
        }
    }

    /// Refuses a ticket presented to another tool, for another gate, or naming an approval
    /// that is not the one it was issued about.
    pub fn check(
        &self,
        tool: &str,
        gate: Option<&Gate>,
        approval: &Approval,
    ) -> Result<(), ApprovalError> {
        let refuse = |why: String| Err(ApprovalError::Question(why));
        if self.asked_by != tool {
            return refuse(format!(
                "it was issued by {} about approval {}, not by {tool}",
                self.asked_by, self.approval_id
            ));
        }
        if approval.id != self.approval_id
            || approval.kind != self.kind
            || approval.subject_id != self.subject_id
            || approval.action_hash != self.action_hash
        {
            return refuse(format!(
                "approval {} is not the approval this question was asked about",
                approval.id
            ));
        }
        if let Some(gate) = gate
            && (self.kind != gate.kind()
                || self.subject_id != gate.subject_id
                || self.action_hash != gate.action_hash())
        {
            return refuse(format!(
                "it answers approval {} ({} of {}), which is not what this call needs approved ({} of {}, action {})",
                self.approval_id,
                self.kind,
                self.subject_id,
                gate.kind(),
                gate.subject_id,
                gate.action_hash()
            ));
        }
        Ok(())
    }
}

/// Why an approval does not authorise a gate, or `Ok` when it does (whatever its state).
/// `required` is what the executor's policy asks of this kind and risk now.
pub fn binding(approval: &Approval, gate: &Gate, required: DecideWith) -> Result<(), String> {
    if approval.kind != gate.kind() {
        return Err(format!(
            "approval {} is a {} approval; this needs a {} approval",
            approval.id,
            approval.kind,
            gate.kind()
        ));
    }
    if approval.subject_id != gate.subject_id {
        return Err(format!(
            "approval {} is about {:?}, not {:?}",
            approval.id, approval.subject_id, gate.subject_id
        ));
    }
    let hash = gate.action_hash();
    if approval.action_hash != hash {
        return Err(format!(
            "approval {} authorises action {} but this action hashes to {hash}",
            approval.id, approval.action_hash
        ));
    }
    if approval.risk != gate.risk {
        return Err(format!(
            "approval {} was asked as {} risk; this action is {} risk",
            approval.id, approval.risk, gate.risk
        ));
    }
    if strength(approval.decide_with) < strength(required) {
        return Err(format!(
            "approval {} could be decided in the client, but policy now requires an out-of-band decision for {} {} actions",
            approval.id, gate.risk, approval.kind
        ));
    }
    if let Some(d) = &approval.decision
        && required == DecideWith::OutOfBand
        && d.via == Channel::ElicitationForm
        && approval.state == super::State::Approved
    {
        return Err(format!(
            "approval {} was approved in the client, but policy requires an out-of-band decision",
            approval.id
        ));
    }
    Ok(())
}

/// Out-of-band is the stronger requirement.
fn strength(d: DecideWith) -> u8 {
    match d {
        DecideWith::Elicitation => 0,
        DecideWith::OutOfBand => 1,
    }
}
