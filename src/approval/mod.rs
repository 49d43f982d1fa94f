//! The approval service: the one mechanism every gated action goes through. An approval names
//! exactly the action it authorises (by the SHA-256 of its canonical JSON), waits for a
//! person's final decision, expires, and lets the approved action execute at most once.
//!
//! What lives here: the service and its types (this file), the canonical JSON an approval's
//! hash covers (`canonical.rs`), the gate every executor passes (`gate.rs`: an approval opened
//! for exactly one action, consumed once by it), the risk policy (`policy.rs`) and finding
//! approvals (`search.rs`). It may
//! depend on `audit` and `store` (its table through `store::approval`, inside a `store::Tx`);
//! never on `server`, rmcp or the database driver: asking a person is the server's job.

pub mod canonical;
pub mod gate;
pub mod policy;
mod search;

use std::str::FromStr;

use crate::store::Tx;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::audit::chain::{format_ts, now_ts};
use crate::audit::{Action, Actor, AuditLog, NewEvent, Outcome};
use crate::fault::{ErrorCode, Fault, IntoFault};
use crate::macros::string_enum;
use crate::store::approval::{self as sql, ApprovalRow, DecisionRow, Redeemed};
use crate::store::budget::{self, Budget};
use crate::store::{Store, StoreError};
pub use gate::{Executor, Gate, Ticket};
pub use policy::ApprovalPolicy;
pub use search::{ApprovalPage, ListFilter, SearchFilter};

string_enum!(
    /// What an approval gates.
    Kind {
        /// Applying a remediation proposal.
        Remediation => "remediation",
        /// Calling a gated tool of a child MCP server, or offering a child tool whose
        /// definition changed or was flagged (tool pinning; the action says which).
        InstanceToolCall => "instance_tool_call",
        /// Running an approval-gated pipeline stage.
        PipelineStage => "pipeline_stage",
        /// Anything else an assistant asks a person to allow.
        Generic => "generic",
    }
);

string_enum!(
    /// How much could go wrong.
    Risk {
        /// Easily undone, affects nothing shared.
        Low => "low",
        /// Undoable with some effort.
        Medium => "medium",
        /// Hard to undo, or affects shared state.
        High => "high",
        /// Irreversible or security-relevant; by default only the CLI can approve it.
        Critical => "critical",
    }
);

string_enum!(
    /// Where an approval is in its life. Every state but `pending` is final.
    State {
        /// Waiting for a person.
        Pending => "pending",
        /// A person allowed exactly this action.
        Approved => "approved",
        /// A person refused it (or declined to answer).
        Rejected => "rejected",
        /// Nobody decided before the expiry.
        Expired => "expired",
        /// The person dismissed the question without deciding.
        Cancelled => "cancelled",
    }
);

string_enum!(
    /// Which channels may decide an approval (from the policy).
    DecideWith {
        /// A person answering an elicitation in the MCP client suffices; the CLI works too.
        Elicitation => "elicitation",
        /// Only an out-of-band decision (the CLI) counts.
        OutOfBand => "out_of_band",
    }
);

string_enum!(
    /// How a decision was made.
    Channel {
        /// A form elicitation answered in the MCP client.
        ElicitationForm => "elicitation_form",
        /// `mcp-coordinator approvals approve|reject` by a person at the machine.
        Cli => "cli",
        /// The oversight console (`mcp-coordinator console`), by the overseer logged in there.
        Console => "console",
        /// Nobody decided in time.
        Expiry => "expiry",
    }
);

impl Channel {
    /// Whether a decision through this channel is made outside the MCP client, by a person the
    /// model cannot impersonate (the CLI and the console both need the overseer's passphrase).
    pub fn is_out_of_band(self) -> bool {
        matches!(self, Channel::Cli | Channel::Console)
    }
}

/// Errors of the approval service.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("approval {0} not found")]
    NotFound(String),
    /// Decisions are final.
    #[error("approval {id} is already {state}; decisions are final")]
    AlreadyDecided { id: String, state: State },
    /// The approval expired before this decision.
    #[error("approval {id} expired at {expires_at}; it can no longer be approved")]
    Expired { id: String, expires_at: String },
    /// The policy needs an out-of-band decision (the console or the CLI) for this approval.
    #[error(
        "approval {id} is {risk} risk and policy requires an out-of-band decision: a person must approve it in the oversight console (its approval page) or run `mcp-coordinator approvals approve {id}`"
    )]
    OutOfBandRequired { id: String, risk: Risk },
    /// A gated action was not approved, does not match, or already ran.
    #[error("{0}")]
    NotExecutable(String),
    /// A caller-supplied value is unusable.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// An MRTR question handle was already used, or never issued.
    #[error("{0}")]
    Question(String),
}

impl IntoFault for ApprovalError {
    fn into_fault(self) -> Fault {
        let with = |code, e: &ApprovalError, details| {
            Fault::new(code, e.to_string()).with_details(details)
        };
        match self {
            ApprovalError::Store(e) | ApprovalError::Audit(crate::audit::AuditError::Store(e)) => {
                Fault::Store(e)
            }
            ApprovalError::Audit(e) => Fault::new(ErrorCode::StorageError, e.to_string()),
            ApprovalError::Invalid { field, message } => Fault::invalid(field, message),
            ApprovalError::NotFound(ref id) => {
                with(ErrorCode::NotFound, &self, json!({"approval_id": id}))
            }
            ApprovalError::AlreadyDecided { ref id, state } => with(
                ErrorCode::Conflict,
                &self,
                json!({"approval_id": id, "state": state}),
            ),
            ApprovalError::Expired { ref id, .. } => with(
                ErrorCode::Conflict,
                &self,
                json!({"approval_id": id, "state": "expired"}),
            ),
            ApprovalError::OutOfBandRequired { ref id, risk } => with(
                ErrorCode::Forbidden,
                &self,
                json!({"approval_id": id, "risk": risk}),
            ),
            ApprovalError::NotExecutable(_) => with(ErrorCode::Forbidden, &self, json!({})),
            ApprovalError::Question(message) => Fault::Refused(message),
        }
    }
}

/// A person's decision (or an expiry), as stored.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Decision {
    /// Who decided: `client:NAME/VERSION` (elicitation), `overseer:NAME (user:OS@HOST)` (CLI,
    /// with the overseer's passphrase), `user:OS@HOST` (CLI, no overseer set), or
    /// `system:mcp-coordinator` (expiry).
    pub by: String,
    pub via: Channel,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// The person's reason, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why it ended this way when no one chose: declined, cancelled, expired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// An approval as tools and the CLI show it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Approval {
    pub id: String,
    pub kind: Kind,
    /// What the action is about (a proposal id, an instance id, a run id), or empty.
    pub subject_id: String,
    /// One line a person reads.
    pub summary: String,
    /// Exactly what is authorised.
    pub action: Value,
    /// Hex SHA-256 of the action's canonical JSON.
    pub action_hash: String,
    pub risk: Risk,
    /// What will change (a diff or description), if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
    /// Who asked.
    pub requested_by: String,
    pub created_at: String,
    pub expires_at: String,
    /// Which channels may decide it.
    pub decide_with: DecideWith,
    pub state: State,
    /// Present once the approval is no longer pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// When the approved action ran (it runs at most once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executed_at: Option<String>,
}

impl Approval {
    pub fn from_row(r: ApprovalRow) -> Result<Self, StoreError> {
        let bad = StoreError::unreadable;
        let state = State::from_str(&r.state).map_err(|_| bad("state", &r.state))?;
        let decision = match (&r.decided_by, &r.decided_via, &r.decided_at) {
            (Some(by), Some(via), Some(at)) => Some(Decision {
                by: by.clone(),
                via: Channel::from_str(via).map_err(|_| bad("decided_via", via))?,
                at: at.clone(),
                reason: r.reason.clone(),
                cause: r.cause.clone(),
            }),
            _ => None,
        };
        Ok(Approval {
            kind: Kind::from_str(&r.kind).map_err(|_| bad("kind", &r.kind))?,
            risk: Risk::from_str(&r.risk).map_err(|_| bad("risk", &r.risk))?,
            decide_with: DecideWith::from_str(&r.decide_with)
                .map_err(|_| bad("decide_with", &r.decide_with))?,
            action: serde_json::from_str(&r.action).unwrap_or(Value::String(r.action)),
            id: r.id,
            subject_id: r.subject_id,
            summary: r.summary,
            action_hash: r.action_hash,
            preview: r.preview,
            requested_by: r.requested_by,
            created_at: r.created_at,
            expires_at: r.expires_at,
            state,
            decision,
            executed_at: r.executed_at,
        })
    }

    pub fn is_expired_at(&self, now: &str) -> bool {
        self.state == State::Pending && self.expires_at.as_str() <= now
    }
}

/// A request for a person's decision.
#[derive(Debug, Clone)]
pub struct NewApproval {
    pub kind: Kind,
    pub subject_id: String,
    pub summary: String,
    pub action: Value,
    pub risk: Risk,
    pub preview: Option<String>,
    pub requested_by: Actor,
    /// Overrides the policy's expiry (capped at the policy's maximum).
    pub expires_in_seconds: Option<u64>,
}

/// A person's answer.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// `Approved`, `Rejected` or `Cancelled`.
    pub state: State,
    pub by: Actor,
    pub via: Channel,
    pub reason: Option<String>,
    pub cause: Option<String>,
    /// Extra audit detail (client session, host).
    pub context: Value,
}

/// Approvals on one database, audited in the same transactions.
#[derive(Clone)]
pub struct ApprovalService {
    audit: AuditLog,
    policy: ApprovalPolicy,
}

impl ApprovalService {
    pub fn new(audit: AuditLog, policy: ApprovalPolicy) -> Self {
        ApprovalService { audit, policy }
    }

    fn store(&self) -> &Store {
        self.audit.store()
    }

    pub fn policy(&self) -> &ApprovalPolicy {
        &self.policy
    }

    /// Records a pending generic approval (what `approval_request` asks), or returns the
    /// pending one for exactly the same subject and action (asking twice does not create two
    /// questions). A generic approval authorises no executor.
    pub fn request(&self, new: NewApproval) -> Result<Approval, ApprovalError> {
        self.store().write(|tx| self.request_in(tx, &new))
    }

    /// [`request`](Self::request) inside the caller's write transaction, so the approval and
    /// the state change that needs it commit together.
    pub fn request_in(&self, tx: &Tx<'_>, new: &NewApproval) -> Result<Approval, ApprovalError> {
        validate(new)?;
        if new.kind != Kind::Generic {
            // Approvals that let something run are opened by that executor's gate, with the
            // kind, subject, action and risk it fixes (`open`), never described by a caller.
            return Err(ApprovalError::Invalid {
                field: "kind",
                message: format!(
                    "a {} approval is opened by its executor's gate, not requested directly",
                    new.kind
                ),
            });
        }
        expire_due_in(&self.audit, tx)?;
        let hash = canonical::action_hash(&new.action);
        if let Some(existing) = sql::find_pending(tx, new.kind.as_str(), &new.subject_id, &hash)? {
            return Ok(Approval::from_row(existing)?);
        }
        self.insert_in(tx, new)
    }

    /// Records a new pending approval (no search for an existing one), with its audit event.
    fn insert_in(&self, tx: &Tx<'_>, new: &NewApproval) -> Result<Approval, ApprovalError> {
        validate(new)?;
        let resolved = self.policy.resolve(new.kind, new.risk);
        let expiry = new
            .expires_in_seconds
            .unwrap_or(resolved.expiry_seconds)
            .min(policy::MAX_EXPIRY_SECONDS);
        let now = OffsetDateTime::now_utc();
        let expires = now + time::Duration::seconds(expiry as i64);
        let row = ApprovalRow {
            id: format!("apr_{}", uuid::Uuid::new_v4().simple()),
            kind: new.kind.as_str().into(),
            subject_id: new.subject_id.clone(),
            summary: new.summary.trim().to_string(),
            action: canonical::canonical_json(&new.action),
            action_hash: canonical::action_hash(&new.action),
            risk: new.risk.as_str().into(),
            preview: new.preview.clone(),
            requested_by: new.requested_by.render(),
            created_at: format_ts(now),
            expires_at: format_ts(expires),
            decide_with: resolved.decide_with.as_str().into(),
            state: State::Pending.as_str().into(),
            decided_by: None,
            decided_via: None,
            decided_at: None,
            reason: None,
            cause: None,
            executed_at: None,
        };
        sql::insert(tx, &row)?;
        self.audit.append_in(
            tx,
            &NewEvent {
                actor: new.requested_by.clone(),
                action: Action::ApprovalRequested,
                subject: row.id.clone(),
                outcome: Outcome::Ok,
                detail: json!({
                    "kind": row.kind, "subject_id": row.subject_id, "summary": row.summary,
                    "risk": row.risk, "action_hash": row.action_hash,
                    "decide_with": row.decide_with, "expires_at": row.expires_at,
                }),
                critical: false,
            },
        )?;
        Ok(Approval::from_row(row)?)
    }

    /// What the policy requires of this gate's approvals now.
    pub fn required(&self, gate: &Gate) -> DecideWith {
        self.policy.resolve(gate.kind(), gate.risk).decide_with
    }

    /// The approval that can let this gate through: the newest one of exactly this executor's
    /// kind, subject, action and risk, opened under the current policy, that is pending or
    /// approved and not yet run; else a new pending one. Asking twice opens one question.
    pub fn open(&self, gate: &Gate, requested_by: &Actor) -> Result<Approval, ApprovalError> {
        self.store()
            .write(|tx| self.open_in(tx, gate, requested_by))
    }

    /// [`open`](Self::open) inside the caller's write transaction.
    pub fn open_in(
        &self,
        tx: &Tx<'_>,
        gate: &Gate,
        requested_by: &Actor,
    ) -> Result<Approval, ApprovalError> {
        expire_due_in(&self.audit, tx)?;
        let required = self.required(gate);
        for row in sql::find_open(
            tx,
            gate.kind().as_str(),
            &gate.subject_id,
            &gate.action_hash(),
        )? {
            let a = Approval::from_row(row)?;
            if gate::binding(&a, gate, required).is_ok() {
                return Ok(a);
            }
        }
        self.insert_in(tx, &gate.new_approval(requested_by))
    }

    /// One approval (expired first if its time has passed).
    pub fn get(&self, id: &str) -> Result<Approval, ApprovalError> {
        self.expire_due_if_free()?;
        let row = self.store().read(|tx| sql::get(tx, id))?;
        row.map(Approval::from_row)
            .transpose()?
            .ok_or_else(|| ApprovalError::NotFound(id.to_string()))
    }

    /// The state of one approval without expiring anything: the cheap poll of waiting loops.
    pub fn peek_state(&self, id: &str) -> Result<State, ApprovalError> {
        let state = self
            .store()
            .read(|tx| sql::state(tx, id))?
            .ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
        State::from_str(&state).map_err(|e| ApprovalError::Invalid {
            field: "state",
            message: e,
        })
    }

    /// Marks every pending approval past its expiry as `expired`, each with its audit event.
    /// Lazily: when none is due (almost always) it takes no write lock, so it never waits.
    pub fn expire_due(&self) -> Result<usize, ApprovalError> {
        Ok(self
            .store()
            .write_lazily(|tx| expire_due_in(&self.audit, tx), StoreError::is_busy)?)
    }

    /// [`expire_due`](Self::expire_due) for reads: skipped, not waited for, when another
    /// process holds the write lock (a read serves what is stored; the next read or a write
    /// records the expiry).
    fn expire_due_if_free(&self) -> Result<(), ApprovalError> {
        match budget::sync_scope(Budget::none(), || self.expire_due()) {
            Err(ApprovalError::Store(e)) if e.is_busy() => {
                tracing::debug!(error = %e, "expiring due approvals skipped");
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// Records a person's final decision. Refused when the approval is already decided, has
    /// expired (it is marked expired), or the policy needs a channel other than `via`.
    pub fn decide(&self, id: &str, verdict: Verdict) -> Result<Approval, ApprovalError> {
        check_verdict(&verdict)?;
        // The expiry must commit even when the decision is refused, so it runs first.
        self.expire_due()?;
        self.store()
            .write(|tx| self.decide_in(tx, id, &verdict, None))
    }

    /// Records the client's answer to a question asked with an input-required result (MRTR).
    /// The ticket must have been issued by `tool`, about this approval, and, for an executor's
    /// call, about exactly that executor's `gate`; its one-time nonce is redeemed in the same
    /// transaction. A ticket presented anywhere else is refused and records nothing.
    pub fn answer(
        &self,
        ticket: &Ticket,
        tool: &str,
        gate: Option<&Gate>,
        verdict: Verdict,
    ) -> Result<Approval, ApprovalError> {
        check_verdict(&verdict)?;
        self.expire_due()?;
        self.store().write(|tx| {
            let row = sql::get(tx, &ticket.approval_id)?
                .ok_or_else(|| ApprovalError::NotFound(ticket.approval_id.clone()))?;
            let approval = Approval::from_row(row)?;
            ticket.check(tool, gate, &approval)?;
            if let Some(gate) = gate {
                gate::binding(&approval, gate, self.required(gate))
                    .map_err(ApprovalError::Question)?;
            }
            self.decide_in(tx, &ticket.approval_id, &verdict, Some(&ticket.nonce))
        })
    }

    /// Records a decision inside the caller's write transaction (a pipeline run being
    /// cancelled withdraws its pending stage approvals this way).
    pub fn decide_in(
        &self,
        tx: &Tx<'_>,
        id: &str,
        verdict: &Verdict,
        nonce: Option<&str>,
    ) -> Result<Approval, ApprovalError> {
        {
            let row = sql::get(tx, id)?.ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
            let approval = Approval::from_row(row)?;
            // The question handle first: a replayed answer is named as such, whatever the state.
            if let Some(nonce) = nonce {
                match sql::redeem(tx, nonce, id, &now_ts())? {
                    Redeemed::Fresh => {}
                    Redeemed::Replayed => {
                        return Err(ApprovalError::Question(format!(
                            "this answer to approval {id} was already submitted once (replayed requestState)"
                        )));
                    }
                    Redeemed::Unknown => {
                        return Err(ApprovalError::Question(format!(
                            "no question was asked about approval {id} with this requestState"
                        )));
                    }
                }
            }
            if approval.state == State::Expired {
                return Err(ApprovalError::Expired {
                    id: id.to_string(),
                    expires_at: approval.expires_at,
                });
            }
            if approval.state != State::Pending {
                return Err(ApprovalError::AlreadyDecided {
                    id: id.to_string(),
                    state: approval.state,
                });
            }
            // Approving through the client is refused when policy needs the CLI; rejecting or
            // cancelling is always allowed (saying no is never the risky direction).
            if verdict.state == State::Approved
                && !verdict.via.is_out_of_band()
                && approval.decide_with == DecideWith::OutOfBand
            {
                return Err(ApprovalError::OutOfBandRequired {
                    id: id.to_string(),
                    risk: approval.risk,
                });
            }
            let at = now_ts();
            let by = verdict.by.render();
            let decided = sql::decide(
                tx,
                id,
                &DecisionRow {
                    state: verdict.state.as_str(),
                    decided_by: &by,
                    decided_via: verdict.via.as_str(),
                    decided_at: &at,
                    reason: verdict.reason.as_deref(),
                    cause: verdict.cause.as_deref(),
                },
            )?;
            if !decided {
                return Err(ApprovalError::AlreadyDecided {
                    id: id.to_string(),
                    state: approval.state,
                });
            }
            self.audit.append_in(
                tx,
                &NewEvent {
                    actor: verdict.by.clone(),
                    action: match verdict.state {
                        State::Approved => Action::ApprovalApproved,
                        State::Rejected => Action::ApprovalRejected,
                        _ => Action::ApprovalCancelled,
                    },
                    subject: id.to_string(),
                    outcome: Outcome::Ok,
                    detail: json!({
                        "via": verdict.via.as_str(), "reason": verdict.reason,
                        "cause": verdict.cause, "action_hash": approval.action_hash,
                        "risk": approval.risk.as_str(), "context": verdict.context,
                    }),
                    // Decisions are critical: the chain head is signed with them.
                    critical: true,
                },
            )?;
            let row = sql::get(tx, id)?.ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
            Ok(Approval::from_row(row)?)
        }
    }

    /// The door every executor passes: succeeds once, and only if approval `id` is approved
    /// for exactly this `gate` (kind, subject, action hash, risk, and the policy's channel).
    /// Runs inside the executor's own write transaction, so the state change it guards and
    /// the mark commit together.
    pub fn consume_in(
        &self,
        tx: &Tx<'_>,
        id: &str,
        gate: &Gate,
        executor: &Actor,
    ) -> Result<Approval, ApprovalError> {
        let row = sql::get(tx, id)?.ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
        let approval = Approval::from_row(row)?;
        let refuse = |why: String| Err(ApprovalError::NotExecutable(why));
        if let Err(why) = gate::binding(&approval, gate, self.required(gate)) {
            return refuse(why);
        }
        if approval.state != State::Approved {
            return refuse(format!(
                "approval {id} is {}, not approved",
                approval.state.as_str()
            ));
        }
        let hash = gate.action_hash();
        if !sql::mark_executed(tx, id, &hash, &now_ts())? {
            return refuse(format!("the action approved by {id} already ran"));
        }
        self.audit.append_in(
            tx,
            &NewEvent {
                actor: executor.clone(),
                action: Action::ApprovalExecuted,
                subject: id.to_string(),
                outcome: Outcome::Ok,
                detail: json!({"action_hash": hash, "executor": gate.executor.as_str()}),
                critical: true,
            },
        )?;
        let row = sql::get(tx, id)?.ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
        Ok(Approval::from_row(row)?)
    }

    /// [`consume_in`](Self::consume_in) in a transaction of its own.
    pub fn consume(
        &self,
        id: &str,
        gate: &Gate,
        executor: &Actor,
    ) -> Result<Approval, ApprovalError> {
        self.store()
            .write(|tx| self.consume_in(tx, id, gate, executor))
    }

    /// Records that a question about `id` was asked with a fresh nonce, and returns the nonce.
    pub fn ask(&self, id: &str) -> Result<String, ApprovalError> {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        self.store()
            .write(|tx| sql::ask(tx, &nonce, id, &now_ts()))?;
        Ok(nonce)
    }
}

/// A decision approves, rejects or cancels.
fn check_verdict(verdict: &Verdict) -> Result<(), ApprovalError> {
    if matches!(
        verdict.state,
        State::Approved | State::Rejected | State::Cancelled
    ) {
        Ok(())
    } else {
        Err(ApprovalError::Invalid {
            field: "state",
            message: "a decision approves, rejects or cancels".into(),
        })
    }
}

/// What every new approval needs: words for the person and an action object.
fn validate(new: &NewApproval) -> Result<(), ApprovalError> {
    if new.summary.trim().is_empty() {
        return Err(ApprovalError::Invalid {
            field: "summary",
            message: "must say in words what will happen".into(),
        });
    }
    if !new.action.is_object() {
        return Err(ApprovalError::Invalid {
            field: "action",
            message: "must be a JSON object describing exactly what will be done".into(),
        });
    }
    Ok(())
}

/// Expires due approvals inside a write transaction.
pub fn expire_due_in(audit: &AuditLog, tx: &Tx<'_>) -> Result<usize, StoreError> {
    let now = now_ts();
    let due = sql::due_for_expiry(tx, &now)?;
    let system = Actor::system();
    for id in &due {
        sql::decide(
            tx,
            id,
            &DecisionRow {
                state: State::Expired.as_str(),
                decided_by: &system.render(),
                decided_via: Channel::Expiry.as_str(),
                decided_at: &now,
                reason: None,
                cause: Some("expired before anyone decided"),
            },
        )?;
        audit.append_in(
            tx,
            &NewEvent {
                actor: system.clone(),
                action: Action::ApprovalExpired,
                subject: id.clone(),
                outcome: Outcome::Ok,
                detail: json!({}),
                critical: true,
            },
        )?;
    }
    Ok(due.len())
}

#[cfg(test)]
mod tests;
