//! Remediation proposals: typed actions on MCP client config files (from an assessment's
//! findings or given explicitly), each proposal with its risk and a unified diff per file;
//! execution once a person approved exactly that proposal (hash check of every file, backups,
//! atomic writes, results per action, never twice); and rollback from the backups.
//!
//! What lives here: the types and the service's bookkeeping (this file), making a proposal
//! (`propose`), running and rolling one back (`execute`), applying one action to a document
//! (`actions`), editing JSONC in place (`edit`), diffs (`diff`), file writes and backups
//! (`files`) and the proposal status (`status`, a leaf the store parses into). It may depend
//! on `clients` (the config model and the action types), `assessment` (a proposal made from
//! an assessment's findings reads that assessment; the dependency runs this way only),
//! `approval` (the gate every write passes), `secret`, `audit`, `store` (its `remediation`
//! table module, through `Tx`) and `net` (registry lookups); never on `server`, rmcp or
//! the database driver.

pub mod actions;
pub mod diff;
pub mod edit;
mod execute;
pub mod files;
#[cfg(test)]
mod layout_tests;
mod periodic;
mod propose;
pub mod status;

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::approval::{ApprovalError, ApprovalService, Executor, Gate, Risk};
use crate::assessment::{AssessmentError, AssessmentService, Severity};
use crate::audit::chain::now_ts;
use crate::audit::{Action as AuditAction, Actor, AuditLog, NewEvent, Outcome};
use crate::clients::Client;
use crate::fault::{ErrorCode, Fault, IntoFault};
use crate::secret::{SecretError, SecretStore};
use crate::store::StoreError;
use crate::store::Tx;
use crate::store::remediation as sql;
use actions::Action;
pub use status::RemediationStatus;

/// The change a proposal makes to one file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FilePlan {
    pub path: String,
    pub client: Client,
    /// False when the installer creates the file.
    pub existed: bool,
    /// SHA-256 of the file when the preview was made (execution refuses if it changed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before_sha256: Option<String>,
    /// SHA-256 of what will be written.
    pub after_sha256: String,
    /// Unified diff, secrets masked.
    pub diff: String,
}

/// What happened to one action at execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ActionResult {
    pub index: usize,
    pub action: String,
    pub file: String,
    pub server: String,
    pub ok: bool,
    pub message: String,
}

/// A backup taken before a file was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Backup {
    pub path: String,
    /// `None` when the file did not exist (rollback deletes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_path: Option<String>,
    /// What the remediation wrote (rollback refuses if the file changed since).
    pub written_sha256: String,
}

/// A remediation proposal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Proposal {
    pub id: String,
    pub status: RemediationStatus,
    pub summary: String,
    pub actions: Vec<Action>,
    /// The highest risk of its actions.
    pub risk: Risk,
    /// Why, in words (one line per concern).
    pub risk_notes: Vec<String>,
    pub files: Vec<FilePlan>,
    /// Things worth knowing: versions looked up, findings left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assessment_id: Option<String>,
    pub proposed_by: String,
    pub created_at: String,
    pub updated_at: String,
    /// The approval that allowed it to run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executed_at: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<ActionResult>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<Backup>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_approval_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_back_at: Option<String>,
}

impl Proposal {
    /// What an approval of this proposal covers: its id, its actions, and every file's hash
    /// before and after. A person approves exactly this.
    pub fn approval_action(&self) -> Value {
        json!({
            "remediation": self.id,
            "actions": self.actions,
            "files": self.files.iter().map(|f| json!({"path": f.path, "before_sha256": f.before_sha256, "after_sha256": f.after_sha256})).collect::<Vec<_>>(),
        })
    }

    /// What an approval of its rollback covers.
    pub fn rollback_action(&self) -> Value {
        json!({
            "rollback": self.id,
            "restore": self.backups.iter().map(|b| json!({"path": b.path, "from": b.backup_path, "expect_sha256": b.written_sha256})).collect::<Vec<_>>(),
        })
    }

    /// What a person must approve before this proposal is applied (`rollback` false) or
    /// undone (`rollback` true): the remediation executor's gate, built from the proposal.
    pub fn gate(&self, rollback: bool) -> Gate {
        if rollback {
            Gate {
                executor: Executor::RemediationRollback,
                subject_id: self.id.clone(),
                summary: format!(
                    "Undo remediation {}: restore {} file(s) from their backups ({})",
                    self.id,
                    self.backups.len(),
                    self.summary
                ),
                action: self.rollback_action(),
                risk: self.risk,
                preview: Some(
                    self.backups
                        .iter()
                        .map(|b| {
                            format!(
                                "restore {} from {}",
                                b.path,
                                b.backup_path
                                    .as_deref()
                                    .unwrap_or("(delete: it did not exist)")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
            }
        } else {
            Gate {
                executor: Executor::RemediationApply,
                subject_id: self.id.clone(),
                summary: format!("Apply remediation {}: {}", self.id, self.summary),
                action: self.approval_action(),
                risk: self.risk,
                preview: Some(format!(
                    "{}\nRisk notes:\n- {}",
                    self.preview(),
                    self.risk_notes.join("\n- ")
                )),
            }
        }
    }

    /// Every file's diff, for the person.
    pub fn preview(&self) -> String {
        self.files
            .iter()
            .map(|f| f.diff.clone())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A proposal to make.
#[derive(Debug, Clone, Default)]
pub struct NewProposal {
    pub summary: Option<String>,
    pub actions: Vec<Action>,
    /// Take the suggested actions of this assessment's findings at or above `min_severity`
    /// (default: the policy's threshold).
    pub assessment_id: Option<String>,
    pub min_severity: Option<Severity>,
}

/// Errors of remediations.
#[derive(Debug, thiserror::Error)]
pub enum RemediationError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Approval(#[from] ApprovalError),
    #[error(transparent)]
    Assessment(#[from] AssessmentError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("remediation {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// A file changed since the preview: nothing was written.
    #[error("{0}")]
    Stale(String),
    /// A package registry could not be asked.
    #[error("{0}")]
    Registry(String),
}

impl IntoFault for RemediationError {
    fn into_fault(self) -> Fault {
        use serde_json::json;
        match self {
            RemediationError::Store(e) => Fault::Store(e),
            RemediationError::Assessment(e) => e.into_fault(),
            RemediationError::Approval(e) => Fault::new(ErrorCode::Forbidden, e.to_string()),
            RemediationError::Secret(e) => Fault::new(ErrorCode::Unavailable, e.to_string())
                .with_details(
                    json!({"hint": "mcp-coordinator secrets --help explains the master key"}),
                ),
            RemediationError::NotFound(ref id) => Fault::new(ErrorCode::NotFound, self.to_string())
                .with_details(json!({"remediation_id": id})),
            RemediationError::Conflict(m) => Fault::new(ErrorCode::Conflict, m),
            RemediationError::Stale(m) => {
                Fault::new(ErrorCode::Conflict, m).with_details(json!({"reason": "file_changed"}))
            }
            RemediationError::Registry(m) => Fault::new(ErrorCode::Unavailable, m)
                .with_details(json!({"reason": "registry_unreachable"})),
            RemediationError::Invalid { field, message } => Fault::invalid(field, message),
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> RemediationError {
    RemediationError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Where an action of a proposal came from, so that an error names the argument to fix.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// `actions[i]` of the call.
    Given(usize),
    /// The suggested fix of a finding of `assessment_id`.
    Finding,
}

impl Origin {
    /// An action's error (naming its own field, `server`) as the caller's argument:
    /// `actions[2].server`, or `assessment_id` for a finding's fix.
    fn blame(self, e: RemediationError) -> RemediationError {
        match (self, e) {
            (Origin::Given(i), RemediationError::Invalid { field, message }) => {
                invalid(format!("actions[{i}].{field}"), message)
            }
            (Origin::Finding, RemediationError::Invalid { message, .. }) => invalid(
                "assessment_id",
                format!("a finding's suggested fix cannot be prepared: {message}"),
            ),
            (_, e) => e,
        }
    }
}

/// Remediations on one database.
#[derive(Clone)]
pub struct RemediationService {
    audit: AuditLog,
    approvals: ApprovalService,
    assessments: AssessmentService,
    secrets: SecretStore,
    /// Where backups go: `<data dir>/backups/<proposal id>/`.
    backups_dir: PathBuf,
    /// `mcp-coordinator [--data-dir D] [--db P]` as argv, for `exec`.
    exec_prefix: Vec<String>,
}

impl RemediationService {
    pub fn new(
        audit: AuditLog,
        approvals: ApprovalService,
        assessments: AssessmentService,
        secrets: SecretStore,
        data_dir: &Path,
        exec_prefix: Vec<String>,
    ) -> Self {
        RemediationService {
            audit,
            approvals,
            assessments,
            secrets,
            backups_dir: data_dir.join("backups"),
            exec_prefix,
        }
    }

    pub fn approvals(&self) -> &ApprovalService {
        &self.approvals
    }

    pub fn get(&self, id: &str) -> Result<Proposal, RemediationError> {
        let text = self
            .audit
            .store()
            .read(|tx| sql::get_doc(tx, id))?
            .ok_or_else(|| RemediationError::NotFound(id.into()))?;
        serde_json::from_str(&text).map_err(|e| {
            RemediationError::Conflict(format!("stored proposal {id} is unreadable: {e}"))
        })
    }

    pub fn list(
        &self,
        status: Option<RemediationStatus>,
        limit: u32,
    ) -> Result<Vec<Proposal>, RemediationError> {
        self.audit
            .store()
            .read(|tx| sql::list_docs(tx, status, i64::from(limit)))?
            .iter()
            .map(|t| serde_json::from_str(t).map_err(|e| RemediationError::Conflict(e.to_string())))
            .collect()
    }

    fn save(
        &self,
        tx: &Tx<'_>,
        p: &Proposal,
        from: RemediationStatus,
    ) -> Result<(), RemediationError> {
        if !sql::move_remediation(tx, &p.id, from, p.status, &p.updated_at, &doc(p))? {
            return Err(RemediationError::Conflict(format!(
                "remediation {} is no longer {from}; it was changed by someone else",
                p.id
            )));
        }
        Ok(())
    }

    /// Saves a status change and its audit event in one transaction.
    fn save_with_event(
        &self,
        p: &Proposal,
        from: RemediationStatus,
        event: NewEvent,
    ) -> Result<(), RemediationError> {
        self.audit
            .store()
            .write(|tx| -> Result<(), RemediationError> {
                self.save(tx, p, from)?;
                self.audit.append_in(tx, &event)?;
                Ok(())
            })
    }

    /// Records which approval covers a proposal (asked for by `remediation_review`).
    pub fn set_approval(
        &self,
        id: &str,
        approval_id: &str,
        rollback: bool,
    ) -> Result<Proposal, RemediationError> {
        let mut p = self.get(id)?;
        if rollback {
            p.rollback_approval_id = Some(approval_id.into());
        } else {
            p.approval_id = Some(approval_id.into());
        }
        p.updated_at = now_ts();
        let from = p.status;
        self.audit.store().write(|tx| self.save(tx, &p, from))?;
        Ok(p)
    }

    pub fn withdraw(&self, id: &str, by: &Actor) -> Result<Proposal, RemediationError> {
        let mut p = self.get(id)?;
        if p.status != RemediationStatus::Proposed {
            return Err(RemediationError::Conflict(format!(
                "remediation {id} is {}; only a proposed one can be withdrawn",
                p.status
            )));
        }
        p.status = RemediationStatus::Withdrawn;
        p.updated_at = now_ts();
        self.save_with_event(
            &p,
            RemediationStatus::Proposed,
            NewEvent {
                actor: by.clone(),
                action: AuditAction::RemediationWithdrawn,
                subject: id.into(),
                outcome: Outcome::Ok,
                detail: json!({}),
                critical: false,
            },
        )?;
        Ok(p)
    }
}

fn doc(p: &Proposal) -> String {
    serde_json::to_string(p).unwrap_or_else(|_| "{}".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::audit::AuditSigner;
    use crate::store::{Location, Store};
    use std::sync::Arc;

    #[test]
    fn a_remediation_left_executing_is_failed_with_its_backups_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Location::Memory).unwrap();
        let signer = AuditSigner::from_key(ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]));
        let audit = AuditLog::new(store, Arc::new(signer));
        let approvals = ApprovalService::new(audit.clone(), Default::default());
        let assessments = AssessmentService::new(audit.clone(), Default::default());
        let secrets = SecretStore::new(audit.clone(), dir.path().to_path_buf());
        let svc = RemediationService::new(
            audit.clone(),
            approvals,
            assessments,
            secrets,
            dir.path(),
            vec!["mcp-coordinator".into()],
        );
        let p = Proposal {
            id: "rem_stuck".into(),
            status: RemediationStatus::Executing,
            summary: "x".into(),
            actions: Vec::new(),
            risk: Risk::Low,
            risk_notes: Vec::new(),
            files: Vec::new(),
            notes: Vec::new(),
            assessment_id: None,
            proposed_by: "client:t".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            approval_id: None,
            executed_at: None,
            results: Vec::new(),
            backups: Vec::new(),
            error: None,
            rollback_approval_id: None,
            rolled_back_at: None,
        };
        audit
            .store()
            .write(|tx| {
                sql::insert_remediation(
                    tx,
                    &p.id,
                    RemediationStatus::Executing,
                    None,
                    &p.created_at,
                    &doc(&p),
                )
            })
            .unwrap();
        std::fs::create_dir_all(dir.path().join("backups/rem_stuck")).unwrap();
        std::fs::write(dir.path().join("backups/rem_stuck/0-mcp.json"), "{}").unwrap();
        assert_eq!(
            svc.fail_interrupted(std::time::Duration::from_secs(60))
                .unwrap(),
            1
        );
        let now = svc.get("rem_stuck").unwrap();
        assert_eq!(now.status, RemediationStatus::Failed);
        let error = now.error.unwrap();
        assert!(
            error.contains("interrupted") && error.contains("0-mcp.json"),
            "{error}"
        );
        // A fresh one (just started elsewhere) is left alone.
        assert_eq!(
            svc.fail_interrupted(std::time::Duration::from_secs(60))
                .unwrap(),
            0
        );
    }
}
