//! Running an approved proposal (hash check, backups, atomic writes, results per action,
//! never twice), refusing one whose files changed, failing one a stopped coordinator left
//! executing, and rolling one back from its backups.

use std::path::Path;

use serde_json::json;

use super::actions::{Action, MovedSecret};
use super::{ActionResult, Backup, Origin, files};
use super::{Proposal, RemediationError, RemediationService, RemediationStatus};
use crate::audit::chain::now_ts;
use crate::audit::{Action as AuditAction, Actor, NewEvent, Outcome};

impl RemediationService {
    /// Runs an approved proposal: refuses if any file changed since the preview; consumes
    /// `approval_id` through the proposal's gate and marks the proposal executing in one
    /// transaction (so it never runs twice); stores moved secrets; backs up and atomically
    /// writes each file; records the results. A failed write puts back the files already
    /// written.
    pub fn execute(
        &self,
        id: &str,
        approval_id: &str,
        by: &Actor,
    ) -> Result<Proposal, RemediationError> {
        let mut p = self.get(id)?;
        if p.status != RemediationStatus::Proposed {
            return Err(RemediationError::Conflict(format!(
                "remediation {id} is {}; a proposal runs once, from proposed",
                p.status
            )));
        }
        let approval_id = approval_id.to_string();
        // Every file must be exactly as previewed (checked before the person was asked, and
        // again now: the file may have changed while they looked).
        self.refuse_if_changed(
            &mut p,
            false,
            "the diff the person approved no longer applies",
            by,
        )?;
        let given: Vec<Origin> = (0..p.actions.len()).map(Origin::Given).collect();
        let (_, writes, _, _) = self.plan(&p.actions, &given)?;
        for (path, text, _) in &writes {
            let plan = p.files.iter().find(|f| &f.path == path);
            if plan.map(|f| f.after_sha256.as_str())
                != Some(files::sha256(text.as_bytes()).as_str())
            {
                return Err(RemediationError::Stale(format!(
                    "{path} would not be written as previewed; nothing was written"
                )));
            }
        }
        let gate = p.gate(false);
        p.approval_id = Some(approval_id.clone());
        p.status = RemediationStatus::Executing;
        p.updated_at = now_ts();
        self.audit
            .store()
            .write(|tx| -> Result<(), RemediationError> {
                self.approvals.consume_in(tx, &approval_id, &gate, by)?;
                self.save(tx, &p, RemediationStatus::Proposed)
            })?;
        let (backups, failure) = self.write_files(&p.id, &writes, by);
        let results = action_results(&p.actions, &backups, failure.as_deref());
        if let Some(why) = &failure {
            // Put back what was written, newest first.
            for b in backups.iter().rev() {
                let _ = match &b.backup_path {
                    Some(from) => self.backed_up(from, &b.path).and_then(|bytes| {
                        files::atomic_write(Path::new(&b.path), &bytes).map_err(|e| e.to_string())
                    }),
                    None => std::fs::remove_file(&b.path).map_err(|e| e.to_string()),
                };
            }
            p.status = RemediationStatus::Failed;
            p.error = Some(why.clone());
        } else {
            p.status = RemediationStatus::Executed;
            p.executed_at = Some(now_ts());
        }
        p.results = results;
        p.backups = if failure.is_none() {
            backups
        } else {
            Vec::new()
        };
        p.updated_at = now_ts();
        self.save_with_event(&p, RemediationStatus::Executing, NewEvent {
                actor: by.clone(),
                action: AuditAction::RemediationExecuted,
                subject: p.id.clone(),
                outcome: if failure.is_none() { Outcome::Ok } else { Outcome::Error },
                detail: json!({"approval_id": approval_id, "status": p.status.as_str(), "error": p.error,
                               "files": p.files.iter().map(|f| json!({"path": f.path, "before_sha256": f.before_sha256, "after_sha256": f.after_sha256})).collect::<Vec<_>>(),
                               "backups": p.backups.iter().map(|b| b.backup_path.clone()).collect::<Vec<_>>()}),
                critical: true,
            })?;
        Ok(p)
    }

    /// Stores each file's moved secrets, backs the file up and writes it atomically, in
    /// order, stopping at the first failure: the backups taken (one per file written) and
    /// what failed, if anything.
    fn write_files(
        &self,
        id: &str,
        writes: &[(String, String, Vec<MovedSecret>)],
        by: &Actor,
    ) -> (Vec<Backup>, Option<String>) {
        let mut backups: Vec<Backup> = Vec::new();
        let mut failure = None;
        let dir = self.backups_dir.join(id);
        'files: for (n, (path, text, moved)) in writes.iter().enumerate() {
            for s in moved {
                if let Err(e) = self.secrets.set(&s.name, &s.value, by) {
                    failure = Some(format!("could not store secret {}: {e}", s.name));
                    break 'files;
                }
            }
            let existed = Path::new(path).exists();
            let backup_path = if existed {
                match self.back_up(path, &dir, n) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        failure = Some(format!("could not back up {path}: {e}"));
                        break;
                    }
                }
            } else {
                None
            };
            if let Err(e) = files::atomic_write(Path::new(path), text.as_bytes()) {
                failure = Some(format!("could not write {path}: {e}"));
                break;
            }
            backups.push(Backup {
                path: path.clone(),
                backup_path,
                written_sha256: files::sha256(text.as_bytes()),
            });
        }
        (backups, failure)
    }

    /// Refuses, before anyone is asked, a proposal whose files changed since its preview (or a
    /// rollback of one whose files changed since it wrote them): the approval would describe
    /// files that are no longer there. Nothing is asked, consumed or written; a proposal is
    /// marked failed, since it can never run as previewed. A proposal not in the state its
    /// review needs passes here (the caller reports that).
    pub fn check_unchanged(
        &self,
        id: &str,
        rollback: bool,
        by: &Actor,
    ) -> Result<(), RemediationError> {
        let mut p = self.get(id)?;
        let ready = if rollback {
            RemediationStatus::Executed
        } else {
            RemediationStatus::Proposed
        };
        if p.status != ready {
            return Ok(());
        }
        self.refuse_if_changed(
            &mut p,
            rollback,
            "the diff no longer applies, so nobody was asked",
            by,
        )
    }

    /// Every file of `p` must have the hash it had at the preview (`rollback`: the hash the
    /// remediation wrote). A changed file fails a proposal (saved with its audit event) and
    /// errors with `Stale`; `why` says what that means at this point.
    pub(super) fn refuse_if_changed(
        &self,
        p: &mut Proposal,
        rollback: bool,
        why: &str,
        by: &Actor,
    ) -> Result<(), RemediationError> {
        let now = |path: &str| std::fs::read(path).ok().map(|b| files::sha256(&b));
        if rollback {
            for b in &p.backups {
                if now(&b.path).as_deref() != Some(b.written_sha256.as_str()) {
                    return Err(RemediationError::Stale(format!(
                        "{} changed after the remediation wrote it; rolling back would overwrite those changes, so nothing was restored",
                        b.path
                    )));
                }
            }
            return Ok(());
        }
        let Some(changed) = p.files.iter().find(|f| now(&f.path) != f.before_sha256) else {
            return Ok(());
        };
        let why = format!(
            "{} changed since the preview ({why}); nothing was written. Propose again to see the current diff",
            changed.path
        );
        p.status = RemediationStatus::Failed;
        p.error = Some(why.clone());
        p.updated_at = now_ts();
        self.save_with_event(
            p,
            RemediationStatus::Proposed,
            NewEvent {
                actor: by.clone(),
                action: AuditAction::RemediationExecuted,
                subject: p.id.clone(),
                outcome: Outcome::Error,
                detail: json!({"status": "failed", "error": p.error}),
                critical: false,
            },
        )?;
        Err(RemediationError::Stale(why))
    }

    /// Marks proposals left `executing` for longer than `after` (their coordinator stopped in
    /// the middle) as failed, naming the backups on disk: they never run again, and a person
    /// can see what may have been written. Returns how many.
    pub fn fail_interrupted(&self, after: std::time::Duration) -> Result<usize, RemediationError> {
        let cutoff = time::OffsetDateTime::now_utc() - after;
        let cutoff = crate::audit::chain::format_ts(cutoff);
        let stuck: Vec<Proposal> = self
            .list(Some(RemediationStatus::Executing), 200)?
            .into_iter()
            .filter(|p| p.updated_at < cutoff)
            .collect();
        for mut p in stuck.clone() {
            let dir = self.backups_dir.join(&p.id);
            let backups: Vec<String> = std::fs::read_dir(&dir)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .map(|e| e.path().display().to_string())
                        .collect()
                })
                .unwrap_or_default();
            p.status = RemediationStatus::Failed;
            p.error = Some(format!(
                "interrupted while being applied (the coordinator stopped); it will not run again. Compare the files with the backups taken so far: {}",
                if backups.is_empty() {
                    "none".to_string()
                } else {
                    backups.join(", ")
                }
            ));
            p.updated_at = now_ts();
            self.save_with_event(
                &p,
                RemediationStatus::Executing,
                NewEvent {
                    actor: Actor::system(),
                    action: AuditAction::RemediationExecuted,
                    subject: p.id.clone(),
                    outcome: Outcome::Error,
                    detail: json!({"status": "failed", "error": p.error, "backups": backups}),
                    critical: true,
                },
            )?;
        }
        Ok(stuck.len())
    }

    /// Restores an executed proposal's files from its backups, once `approval_id` passes the
    /// rollback gate (its action names each file and the hash it must still have).
    pub fn rollback(
        &self,
        id: &str,
        approval_id: &str,
        by: &Actor,
    ) -> Result<Proposal, RemediationError> {
        let mut p = self.get(id)?;
        if p.status != RemediationStatus::Executed {
            return Err(RemediationError::Conflict(format!(
                "remediation {id} is {}; only an executed one can be rolled back",
                p.status
            )));
        }
        let approval_id = approval_id.to_string();
        self.refuse_if_changed(&mut p, true, "", by)?;
        // Every backup opens before anything is consumed or written.
        let mut restores = Vec::with_capacity(p.backups.len());
        for b in &p.backups {
            let bytes = match &b.backup_path {
                Some(from) => Some(self.backed_up(from, &b.path).map_err(|e| {
                    RemediationError::Conflict(format!(
                        "cannot read the backup of {}: {e}; nothing was restored",
                        b.path
                    ))
                })?),
                None => None,
            };
            restores.push((b.path.clone(), bytes));
        }
        let gate = p.gate(true);
        self.audit
            .store()
            .write(|tx| -> Result<(), RemediationError> {
                self.approvals.consume_in(tx, &approval_id, &gate, by)?;
                Ok(())
            })?;
        p.rollback_approval_id = Some(approval_id.clone());
        let dir = self.backups_dir.join(&p.id).join("before-rollback");
        for (n, (path, bytes)) in restores.iter().enumerate() {
            let _ = self.back_up(path, &dir, n);
            match bytes {
                Some(bytes) => files::atomic_write(Path::new(path), bytes).map_err(|e| {
                    RemediationError::Conflict(format!("cannot restore {path}: {e}"))
                })?,
                None => std::fs::remove_file(path).map_err(|e| {
                    RemediationError::Conflict(format!("cannot remove {path}: {e}"))
                })?,
            }
        }
        p.status = RemediationStatus::RolledBack;
        p.rolled_back_at = Some(now_ts());
        p.updated_at = now_ts();
        self.save_with_event(&p, RemediationStatus::Executed, NewEvent {
                actor: by.clone(),
                action: AuditAction::RemediationRolledBack,
                subject: p.id.clone(),
                outcome: Outcome::Ok,
                detail: json!({"approval_id": approval_id, "files": p.backups.iter().map(|b| b.path.clone()).collect::<Vec<_>>()}),
                critical: true,
            })?;
        Ok(p)
    }

    /// Copies the file at `path` into `dir`, sealed under the secret store (a config file's
    /// backup holds its secrets as they were). Returns the backup's path.
    pub(super) fn back_up(&self, path: &str, dir: &Path, n: usize) -> Result<String, String> {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let sealed = self
            .secrets
            .seal_file(path, &bytes)
            .map_err(|e| e.to_string())?;
        files::write_backup(&sealed, Path::new(path), dir, n)
            .map(|b| b.display().to_string())
            .map_err(|e| e.to_string())
    }

    /// The exact bytes a backup holds of the file at `path` (a backup taken before backups
    /// were sealed is a plain copy, and read as one).
    pub(super) fn backed_up(&self, backup: &str, path: &str) -> Result<Vec<u8>, String> {
        let bytes = std::fs::read(backup).map_err(|e| format!("cannot read {backup}: {e}"))?;
        if !crate::secret::is_sealed(&bytes) {
            return Ok(bytes);
        }
        self.secrets
            .open_file(path, &bytes)
            .map_err(|e| e.to_string())
    }
}

/// What happened to each action: done when every file was written; otherwise whether its file
/// was written and then undone, or never written.
fn action_results(
    actions: &[Action],
    backups: &[Backup],
    failure: Option<&str>,
) -> Vec<ActionResult> {
    actions
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let written = backups.iter().any(|b| b.path == a.file());
            ActionResult {
                index: i,
                action: a.kind().into(),
                file: a.file().into(),
                server: a.server().into(),
                ok: written && failure.is_none(),
                message: if failure.is_none() {
                    format!("done: {}", a.describe())
                } else if written {
                    "written, then undone because another file failed".into()
                } else {
                    "not written".into()
                },
            }
        })
        .collect()
}
