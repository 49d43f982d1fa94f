//! Remediation proposals: typed actions on MCP client config files (from an assessment's
//! findings or given explicitly), each proposal with its risk and a unified diff per file;
//! execution once a person approved exactly that proposal (hash check of every file, backups,
//! atomic writes, results per action, never twice); and rollback from the backups.

pub mod actions;
pub mod diff;
pub mod edit;
pub mod files;
#[cfg(test)]
mod layout_tests;
pub mod status;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::approval::{ApprovalError, ApprovalService, Executor, Gate, Risk};
use crate::assessment::{AssessmentError, AssessmentService, AssessmentStatus, Severity};
use crate::audit::chain::now_ts;
use crate::audit::{Action as AuditAction, Actor, AuditLog, NewEvent, Outcome};
use crate::clients::launch::{self, Ecosystem};
use crate::clients::{self, Client, ConfigFile};
use crate::secret::{SecretError, SecretStore};
use crate::store::StoreError;
use crate::store::Tx;
use crate::store::remediation as sql;
use actions::{Action, Context, MovedSecret};
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

    /// Builds, previews and records a proposal.
    pub fn propose(&self, new: NewProposal, by: &Actor) -> Result<Proposal, RemediationError> {
        let mut actions = new.actions.clone();
        let mut notes = Vec::new();
        if let Some(aid) = &new.assessment_id {
            let a = self.assessments.get(aid)?;
            if a.status != AssessmentStatus::Completed {
                return Err(RemediationError::Conflict(format!(
                    "assessment {aid} is {}; only a completed assessment's findings can be proposed",
                    a.status
                )));
            }
            let threshold = match new.min_severity {
                Some(s) => s,
                None => self.assessments.policy()?.severity_threshold,
            };
            let mut skipped = 0;
            for f in &a.findings {
                if f.severity.rank() < threshold.rank() {
                    continue;
                }
                match f.fix.as_ref().and_then(|x| x.action.clone()) {
                    Some(action) if !actions.contains(&action) => actions.push(action),
                    Some(_) => {}
                    None => skipped += 1,
                }
            }
            if skipped > 0 {
                notes.push(format!(
                    "{skipped} finding(s) at or above {threshold} have no automatic fix; their suggested fixes are in assessment_get"
                ));
            }
        }
        if actions.is_empty() {
            return Err(invalid(
                "actions",
                "nothing to propose: give actions, or an assessment with findings that have automatic fixes",
            ));
        }
        let given = new.actions.len();
        let origin = |i: usize| {
            if i < given {
                Origin::Given(i)
            } else {
                Origin::Finding
            }
        };
        self.unique_secret_names(&mut actions, given)?;
        // Resolve versions to pin now, so the diff shows them and the approval covers them.
        let mut resolved = Vec::with_capacity(actions.len());
        let mut origins = Vec::with_capacity(actions.len());
        for (i, action) in actions.into_iter().enumerate() {
            match self.resolve(action) {
                Ok(a) => {
                    resolved.push(a);
                    origins.push(origin(i));
                }
                Err(RemediationError::Registry(m)) if new.assessment_id.is_some() => notes.push(m),
                Err(e) => return Err(origin(i).blame(e)),
            }
        }
        if resolved.is_empty() {
            return Err(invalid(
                "actions",
                format!("no action could be prepared: {}", notes.join("; ")),
            ));
        }
        let (plans, _, risk, risk_notes) = self.plan(&resolved, &origins)?;
        let at = now_ts();
        let summary = new
            .summary
            .clone()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| {
                let mut s: Vec<String> = resolved.iter().map(Action::describe).collect();
                if s.len() > 3 {
                    let more = s.len() - 3;
                    s.truncate(3);
                    s.push(format!("and {more} more"));
                }
                format!("{} in {} file(s)", s.join("; "), plans.len())
            });
        let p = Proposal {
            id: format!("rem_{}", uuid::Uuid::new_v4().simple()),
            status: RemediationStatus::Proposed,
            summary,
            actions: resolved,
            risk,
            risk_notes,
            files: plans,
            notes,
            assessment_id: new.assessment_id.clone(),
            proposed_by: by.render(),
            created_at: at.clone(),
            updated_at: at.clone(),
            approval_id: None,
            executed_at: None,
            results: Vec::new(),
            backups: Vec::new(),
            error: None,
            rollback_approval_id: None,
            rolled_back_at: None,
        };
        self.audit.store().write(|tx| -> Result<(), RemediationError> {
            sql::insert_remediation(tx, &p.id, p.status, p.assessment_id.as_deref(), &at, &doc(&p))?;
            self.audit.append_in(
                tx,
                &NewEvent {
                    actor: by.clone(),
                    action: AuditAction::RemediationProposed,
                    subject: p.id.clone(),
                    outcome: Outcome::Ok,
                    detail: json!({"actions": p.actions.iter().map(|a| json!({"type": a.kind(), "file": a.file(), "server": a.server()})).collect::<Vec<_>>(),
                                   "risk": p.risk.as_str(), "files": p.files.len(), "assessment_id": p.assessment_id}),
                    critical: false,
                },
            )?;
            Ok(())
        })?;
        Ok(p)
    }

    /// Secret names must be new: two moves into one name (or a name already in the store)
    /// would hand one server another's secret. An explicit action is refused; a suggested one
    /// gets a unique name.
    fn unique_secret_names(
        &self,
        actions: &mut [Action],
        explicit: usize,
    ) -> Result<(), RemediationError> {
        let mut used = std::collections::HashSet::new();
        for (i, a) in actions.iter_mut().enumerate() {
            let Action::MoveSecretToStore {
                secret_name,
                server,
                via: actions::SecretVia::Exec,
                ..
            } = a
            else {
                continue;
            };
            let origin = if i < explicit {
                Origin::Given(i)
            } else {
                Origin::Finding
            };
            crate::secret::check_name(secret_name)
                .map_err(|e| origin.blame(invalid("secret_name", e.to_string())))?;
            let taken = |n: &str, used: &std::collections::HashSet<String>| {
                used.contains(n) || self.secrets.exists(n).unwrap_or(false)
            };
            if taken(secret_name, &used) {
                if i < explicit {
                    return Err(origin.blame(invalid(
                        "secret_name",
                        format!(
                            "secret {secret_name} already exists in the store or is used twice in this proposal; choose another secret_name"
                        ),
                    )));
                }
                let base = actions::secret_name_for(server, secret_name);
                let mut name = base.clone();
                let mut n = 2;
                while taken(&name, &used) {
                    name = format!("{base}_{n}");
                    n += 1;
                }
                *secret_name = name;
            }
            used.insert(secret_name.clone());
        }
        Ok(())
    }

    /// Fills in what an action needs before it can be previewed (a pin's version).
    fn resolve(&self, action: Action) -> Result<Action, RemediationError> {
        match action {
            Action::PinPackageVersion {
                file,
                server,
                version,
                lookup_latest,
            } => {
                let version = match version {
                    Some(v) if !v.trim().is_empty() => v.trim().to_string(),
                    _ if lookup_latest => {
                        let cf = self.read(&file, None)?;
                        let entry = cf.server(&server).ok_or_else(|| {
                            invalid("server", format!("{file} has no server named {server:?}"))
                        })?;
                        let pkg = launch::package(entry.command.as_deref().unwrap_or(""), &entry.args)
                            .ok_or_else(|| invalid("server", format!("server {server:?} does not launch a package through npx, uvx, pip or docker")))?;
                        self.latest(&pkg)?
                    }
                    _ => {
                        return Err(invalid(
                            "version",
                            format!(
                                "pin_package_version for {server:?} needs `version`, or `lookup_latest: true` to ask the registry"
                            ),
                        ));
                    }
                };
                Ok(Action::PinPackageVersion {
                    file,
                    server,
                    version: Some(version),
                    lookup_latest: false,
                })
            }
            other => Ok(other),
        }
    }

    /// The newest release of a package, from its registry.
    fn latest(&self, pkg: &launch::Package) -> Result<String, RemediationError> {
        let cfg = self.assessments.config();
        let url = match pkg.ecosystem {
            Ecosystem::Npm => format!(
                "{}/{}/latest",
                cfg.npm_registry
                    .as_deref()
                    .unwrap_or("https://registry.npmjs.org")
                    .trim_end_matches('/'),
                pkg.name.replace('/', "%2F")
            ),
            Ecosystem::PyPi => format!(
                "{}/{}/json",
                cfg.pypi_registry
                    .as_deref()
                    .unwrap_or("https://pypi.org/pypi")
                    .trim_end_matches('/'),
                pkg.name
            ),
            Ecosystem::Docker => {
                return Err(RemediationError::Registry(format!(
                    "cannot look up Docker image {}: give the digest (sha256:...) as version",
                    pkg.name
                )));
            }
        };
        let unreachable = |e: String| {
            RemediationError::Registry(format!(
                "could not ask the registry for the newest version of {} ({url}): {e}; give `version` instead",
                pkg.name
            ))
        };
        let client = crate::net::client().map_err(unreachable)?;
        let request = async {
            let response = client
                .get(&url)
                .timeout(std::time::Duration::from_secs(10))
                .send()
                .await?
                .error_for_status()?;
            response.text().await
        };
        let text = crate::net::block_on(request)
            .map_err(unreachable)?
            .map_err(|e| unreachable(crate::net::describe(e)))?;
        let body: Value =
            serde_json::from_str(&text).map_err(|e| unreachable(format!("not JSON: {e}")))?;
        let version = match pkg.ecosystem {
            Ecosystem::Npm => body.get("version"),
            _ => body.pointer("/info/version"),
        }
        .and_then(Value::as_str)
        .ok_or_else(|| unreachable("the answer has no version".into()))?;
        Ok(version.to_string())
    }

    fn read(&self, path: &str, client: Option<Client>) -> Result<ConfigFile, RemediationError> {
        let f = clients::read_path(Path::new(path), client).map_err(|m| invalid("file", m))?;
        if let Some(e) = &f.error {
            return Err(invalid(
                "file",
                format!("{path} cannot be changed safely: {e}"),
            ));
        }
        Ok(f)
    }

    /// Applies the actions to the files as they are now: per file, the new text and its plan;
    /// and the secrets to store; the overall risk and its notes.
    #[allow(clippy::type_complexity)]
    fn plan(
        &self,
        actions: &[Action],
        origins: &[Origin],
    ) -> Result<
        (
            Vec<FilePlan>,
            Vec<(String, String, Vec<MovedSecret>)>,
            Risk,
            Vec<String>,
        ),
        RemediationError,
    > {
        let mut by_file: BTreeMap<String, Vec<(&Action, Origin)>> = BTreeMap::new();
        for (i, a) in actions.iter().enumerate() {
            let origin = origins.get(i).copied().unwrap_or(Origin::Given(i));
            by_file
                .entry(a.file().to_string())
                .or_default()
                .push((a, origin));
        }
        let ctx = Context {
            exec_prefix: &self.exec_prefix,
        };
        let mut plans = Vec::new();
        let mut writes = Vec::new();
        let mut notes = Vec::new();
        let mut risk = Risk::Low;
        for (path, acts) in by_file {
            // A problem with the file is blamed on the first action that names it.
            let first = acts.first().map_or(Origin::Given(0), |(_, o)| *o);
            let file_error = |m: String| first.blame(invalid("file", m));
            // Only the user's own client configs, never any file a caller names.
            self.assessments
                .may_change(Path::new(&path))
                .map_err(file_error)?;
            let creating = !Path::new(&path).exists();
            let (file, before) = if creating {
                let client = acts.iter().find_map(|(a, _)| match a {
                    Action::InstallServer { client, .. } => *client,
                    _ => None,
                });
                let client = client.ok_or_else(|| {
                    file_error(format!(
                        "{path} does not exist; to create it with install_server, give `client`"
                    ))
                })?;
                if let Some((_, o)) = acts
                    .iter()
                    .find(|(a, _)| !matches!(a, Action::InstallServer { .. }))
                {
                    return Err(o.blame(invalid("file", format!("{path} does not exist"))));
                }
                let key = if client == Client::Vscode {
                    "servers"
                } else {
                    "mcpServers"
                };
                (
                    ConfigFile {
                        document: json!({}),
                        ..ConfigFile::empty(path.clone(), client, clients::Scope::Project, key)
                    },
                    String::new(),
                )
            } else {
                let f = self.read(&path, None).map_err(|e| first.blame(e))?;
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| file_error(format!("cannot read {path}: {e}")))?;
                // The document is the text's, read once: the edit and the hash both start from
                // exactly these bytes.
                let (doc, _) = clients::parse(&text)
                    .map_err(|e| file_error(format!("{path} cannot be changed safely: {e}")))?;
                (reparse(&f, &doc), text)
            };
            let mut doc = file.document.clone();
            let mut moved = Vec::new();
            for (a, origin) in &acts {
                // Later actions see the document as earlier ones left it.
                let current = ConfigFile {
                    document: doc.clone(),
                    ..reparse(&file, &doc)
                };
                let version = match a {
                    Action::PinPackageVersion { version, .. } => version.as_deref(),
                    _ => None,
                };
                moved.extend(
                    actions::apply(&mut doc, &current, a, &ctx, version)
                        .map_err(|e| origin.blame(e))?,
                );
                let (r, note) = action_risk(a);
                if risk_rank(r) > risk_rank(risk) {
                    risk = r;
                }
                notes.push(note);
            }
            let after = if creating {
                edit::render_new(&doc)
            } else {
                edit::edit(&before, &doc).unwrap_or_else(|why| {
                    notes.push(format!(
                        "{path} could not be edited in place ({why}); it is written whole, without its comments"
                    ));
                    edit::render_new(&doc)
                })
            };
            if after == before {
                notes.push(format!("{path}: no change"));
                continue;
            }
            plans.push(FilePlan {
                path: path.clone(),
                client: file.client,
                existed: !creating,
                before_sha256: (!creating).then(|| files::sha256(before.as_bytes())),
                after_sha256: files::sha256(after.as_bytes()),
                diff: diff::unified_diff(&path, &before, &after),
            });
            writes.push((path, after, moved));
        }
        notes.dedup();
        if plans.is_empty() {
            return Err(invalid("actions", "the actions change nothing"));
        }
        Ok((plans, writes, risk, notes))
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
        let mut results = Vec::new();
        let mut backups: Vec<Backup> = Vec::new();
        let mut failure = None;
        let dir = self.backups_dir.join(&p.id);
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
        for (i, a) in p.actions.iter().enumerate() {
            let written = backups.iter().any(|b| b.path == a.file());
            results.push(ActionResult {
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
            });
        }
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
    fn refuse_if_changed(
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
}

impl RemediationService {
    /// Copies the file at `path` into `dir`, sealed under the secret store (a config file's
    /// backup holds its secrets as they were). Returns the backup's path.
    fn back_up(&self, path: &str, dir: &Path, n: usize) -> Result<String, String> {
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
    fn backed_up(&self, backup: &str, path: &str) -> Result<Vec<u8>, String> {
        let bytes = std::fs::read(backup).map_err(|e| format!("cannot read {backup}: {e}"))?;
        if !crate::secret::is_sealed(&bytes) {
            return Ok(bytes);
        }
        self.secrets
            .open_file(path, &bytes)
            .map_err(|e| e.to_string())
    }
}

/// The file's server list as a document changed in memory has it.
fn reparse(file: &ConfigFile, doc: &Value) -> ConfigFile {
    clients::from_document(
        &file.path,
        file.client,
        file.scope,
        &file.servers_key,
        doc.clone(),
    )
}

fn risk_rank(r: Risk) -> u8 {
    match r {
        Risk::Low => 0,
        Risk::Medium => 1,
        Risk::High => 2,
        Risk::Critical => 3,
    }
}

/// The risk of one action, and why.
fn action_risk(a: &Action) -> (Risk, String) {
    match a {
        Action::PinPackageVersion {
            server, version, ..
        } => (
            Risk::Low,
            format!(
                "{server} will run version {} until someone changes the pin",
                version.as_deref().unwrap_or("?")
            ),
        ),
        Action::MoveSecretToStore { server, via, .. } => (
            Risk::Medium,
            match via {
                actions::SecretVia::Exec => format!(
                    "{server} will be launched through mcp-coordinator exec; it stops starting if the coordinator's master key is missing"
                ),
                actions::SecretVia::VscodeInput => {
                    format!("VS Code will ask for {server}'s secret when it starts the server")
                }
            },
        ),
        Action::RemoveServer { server, .. } => (
            Risk::High,
            format!(
                "{server} disappears from the client; anything that uses its tools stops working"
            ),
        ),
        Action::DisableServer { server, .. } => (
            Risk::Medium,
            format!("{server} stops being started by clients that honour `disabled`"),
        ),
        Action::SetServerField { server, field, .. } => {
            (Risk::Medium, format!("{server}'s {field} changes"))
        }
        Action::InstallServer { server, .. } => (
            Risk::High,
            format!("{server} will be started by the client and can run code on this machine"),
        ),
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
