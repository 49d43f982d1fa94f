//! Making a proposal: resolving its actions (a pin's newest version, unique secret names),
//! applying them to the files as they are now, and the risk of each action, with the diff a
//! person reviews.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use super::actions::{Action, Context, MovedSecret};
use super::{FilePlan, Origin, actions, diff, doc, edit, files, invalid};
use super::{NewProposal, Proposal, RemediationError, RemediationService, RemediationStatus};
use crate::approval::Risk;
use crate::assessment::AssessmentStatus;
use crate::audit::chain::now_ts;
use crate::audit::{Action as AuditAction, Actor, NewEvent, Outcome};
use crate::clients::launch::{self, Ecosystem};
use crate::clients::{self, Client, ConfigFile};
use crate::store::remediation as sql;

impl RemediationService {
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
    pub(super) fn unique_secret_names(
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
    pub(super) fn resolve(&self, action: Action) -> Result<Action, RemediationError> {
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
    pub(super) fn latest(&self, pkg: &launch::Package) -> Result<String, RemediationError> {
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

    pub(super) fn read(
        &self,
        path: &str,
        client: Option<Client>,
    ) -> Result<ConfigFile, RemediationError> {
        let f = clients::read_path(Path::new(path), client).map_err(|m| invalid("file", m))?;
        if let Some(e) = &f.error {
            return Err(invalid(
                "file",
                format!("{path} cannot be changed safely: {e}"),
            ));
        }
        Ok(f)
    }

    /// The file an action group changes, as it is now, with its text (`creating`: it does not
    /// exist, and install_server makes it empty for its client). Only the user's own client
    /// configs qualify; errors are blamed on `first`, the first action naming the file.
    fn file_as_now(
        &self,
        path: &str,
        acts: &[(&Action, Origin)],
        first: Origin,
    ) -> Result<(ConfigFile, String, bool), RemediationError> {
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
                    ..ConfigFile::empty(path.to_string(), client, clients::Scope::Project, key)
                },
                String::new(),
            )
        } else {
            let f = self.read(path, None).map_err(|e| first.blame(e))?;
            let text = std::fs::read_to_string(path)
                .map_err(|e| file_error(format!("cannot read {path}: {e}")))?;
            // The document is the text's, read once: the edit and the hash both start from
            // exactly these bytes.
            let (doc, _) = clients::parse(&text)
                .map_err(|e| file_error(format!("{path} cannot be changed safely: {e}")))?;
            (reparse(&f, &doc), text)
        };
        Ok((file, before, creating))
    }

    /// Applies the actions to the files as they are now: per file, the new text and its plan;
    /// and the secrets to store; the overall risk and its notes.
    #[allow(clippy::type_complexity)]
    pub(super) fn plan(
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
            let (file, before, creating) = self.file_as_now(&path, &acts, first)?;
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
}

/// The file's server list as a document changed in memory has it.
pub(super) fn reparse(file: &ConfigFile, doc: &Value) -> ConfigFile {
    clients::from_document(
        &file.path,
        file.client,
        file.scope,
        &file.servers_key,
        doc.clone(),
    )
}

pub(super) fn risk_rank(r: Risk) -> u8 {
    match r {
        Risk::Low => 0,
        Risk::Medium => 1,
        Risk::High => 2,
        Risk::Critical => 3,
    }
}

/// The risk of one action, and why.
pub(super) fn action_risk(a: &Action) -> (Risk, String) {
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
