//! Assessments of the MCP client configs on this machine: find the files (`crate::clients`),
//! apply the rules of one assessment type (`rules`, with the `policy`), and record the request
//! and its findings. Requests are recorded first and run afterwards; a cancelled assessment
//! never gets results.
//!
//! What lives here: the service and its types (this file), the assessment status (`status`,
//! a leaf the store parses into), the policy file (`policy`) and the rules, one file per
//! family (`rules/`). It may depend on `clients` (the config model, the actions a finding
//! suggests), `audit`, `store` (its `assessment` table module, through `Tx`) and small shared
//! helpers (`glob`, `macros`); never on `remediation` (which builds on it), `server`, rmcp or
//! the database driver.

pub mod policy;
pub mod rules;
pub mod status;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::chain::now_ts;
use crate::audit::{Action as AuditAction, Actor, AuditLog, NewEvent, Outcome};
use crate::clients::action::Action;
use crate::clients::{Client, ConfigFile, Roots};
use crate::fault::{ErrorCode, Fault, IntoFault};
use crate::macros::string_enum;
use crate::store::StoreError;
use crate::store::assessment as sql;
// The client-config model moved to `crate::clients`; these keep its old paths working.
pub use crate::clients::{self, launch};
use policy::Policy;
pub use status::AssessmentStatus;
use std::str::FromStr;

string_enum!(
    /// How bad a finding is.
    Severity {
        Info => "info",
        Low => "low",
        Medium => "medium",
        High => "high",
        Critical => "critical",
    }
);

impl Severity {
    pub fn rank(self) -> u8 {
        match self {
            Severity::Info => 0,
            Severity::Low => 1,
            Severity::Medium => 2,
            Severity::High => 3,
            Severity::Critical => 4,
        }
    }
}

string_enum!(
    /// What an assessment looks for.
    AssessmentType {
        /// Secrets, unpinned packages, dangerous launches, broad roots, plain HTTP, duplicates,
        /// policy lists.
        Security => "security",
        /// The policy file's rules: lists, required pins, allowed registries.
        Compliance => "compliance",
        /// Files that do not parse, commands not found, incomplete or disabled entries,
        /// duplicates.
        Health => "health",
    }
);

/// A suggested fix: words, and the typed remediation action when one applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SuggestedFix {
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
}

impl SuggestedFix {
    pub fn text(s: &str) -> Self {
        SuggestedFix {
            summary: s.into(),
            action: None,
        }
    }
    pub fn action(s: &str, action: Action) -> Self {
        SuggestedFix {
            summary: s.into(),
            action: Some(action),
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Finding {
    /// The rule that found it (`secret-in-env`, `unpinned-package`...).
    pub rule: String,
    pub severity: Severity,
    /// The config file.
    pub file: String,
    /// JSON pointer within the file.
    pub pointer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    pub message: String,
    /// What was seen, with secrets masked.
    pub evidence: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<SuggestedFix>,
}

/// What an assessment looks at.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// One config file (default: every config found under the roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// One server entry of `file` (or of every file, by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The client format of `file` when its path does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Client>,
    /// The home directory to search (default: the configured one, or $HOME).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    /// Project directories to search (default: the configured ones and the working directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projects: Option<Vec<String>>,
}

/// A config file an assessment read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FileSeen {
    pub path: String,
    pub client: Client,
    pub sha256: String,
    pub servers: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An assessment and (once done) its findings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Assessment {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: AssessmentType,
    pub target: Target,
    pub status: AssessmentStatus,
    pub requested_by: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The policy file applied, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_file: Option<String>,
    pub files: Vec<FileSeen>,
    /// Findings per severity.
    pub counts: BTreeMap<String, usize>,
    /// Most severe first.
    pub findings: Vec<Finding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `[assessments]` in the config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AssessmentsConfig {
    /// Home directory whose user-scope client configs are assessed (default: $HOME).
    pub home: Option<PathBuf>,
    /// Project directories whose project-scope configs are assessed, besides the directory the
    /// coordinator runs in.
    pub projects: Vec<PathBuf>,
    /// The policy file (TOML; see schemas/policy.schema.json). Default: the built-in policy
    /// (require pins, no lists).
    pub policy_file: Option<PathBuf>,
    /// npm registry asked for the newest version when pinning (default
    /// https://registry.npmjs.org).
    pub npm_registry: Option<String>,
    /// PyPI JSON API base (default https://pypi.org/pypi).
    pub pypi_registry: Option<String>,
    /// Config files outside the standard locations that remediations and the installer may
    /// change (absolute paths). The standard client configs under `home` and `projects` (and
    /// the directory the coordinator runs in) need no entry.
    #[serde(default)]
    pub files: Vec<PathBuf>,
}

/// Errors of assessments.
#[derive(Debug, thiserror::Error)]
pub enum AssessmentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("assessment {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl IntoFault for AssessmentError {
    fn into_fault(self) -> Fault {
        match self {
            AssessmentError::Store(e) => Fault::Store(e),
            AssessmentError::NotFound(ref id) => Fault::new(ErrorCode::NotFound, self.to_string())
                .with_details(serde_json::json!({"assessment_id": id})),
            AssessmentError::Conflict(m) => Fault::new(ErrorCode::Conflict, m),
            AssessmentError::Invalid { field, message } => Fault::invalid(field, message),
        }
    }
}

/// Assessments on one database.
#[derive(Clone)]
pub struct AssessmentService {
    audit: AuditLog,
    config: AssessmentsConfig,
}

impl AssessmentService {
    pub fn new(audit: AuditLog, config: AssessmentsConfig) -> Self {
        AssessmentService { audit, config }
    }

    pub fn config(&self) -> &AssessmentsConfig {
        &self.config
    }

    /// The roots a target searches.
    pub fn roots(&self, target: &Target) -> Roots {
        let home = target
            .home
            .as_ref()
            .map(PathBuf::from)
            .or_else(|| self.config.home.clone())
            .or_else(|| std::env::var_os("HOME").map(PathBuf::from));
        let projects = match &target.projects {
            Some(p) => p.iter().map(PathBuf::from).collect(),
            None => {
                let mut p = self.config.projects.clone();
                if let Ok(cwd) = std::env::current_dir()
                    && !p.contains(&cwd)
                {
                    p.push(cwd);
                }
                p
            }
        };
        Roots { home, projects }
    }

    /// Whether a remediation or the installer may write `path`: a standard client config
    /// location under the configured roots (never a root a tool call named), or a file listed
    /// in `[assessments] files`. Compared after resolving symbolic links in the directories, so
    /// `..` and links cannot walk out. The error says how to allow the path.
    pub fn may_change(&self, path: &Path) -> Result<(), String> {
        if !path.is_absolute() {
            return Err(format!(
                "{} is not an absolute path; give the config file's full path",
                path.display()
            ));
        }
        let wanted = resolved(path);
        let roots = self.roots(&Target::default());
        let allowed = clients::standard_locations(&roots)
            .into_iter()
            .chain(self.config.files.iter().cloned());
        for candidate in allowed {
            if resolved(&candidate) == wanted {
                return Ok(());
            }
        }
        let projects: Vec<String> = roots
            .projects
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        Err(format!(
            "{path} is not a client config this coordinator may change: remediations and the installer write only the clients' standard config files under the home directory ({home}) and the configured projects ({projects}), and files listed in the config file. To allow it, a person adds it to the coordinator's config file first: [assessments] files = [\"{path}\"] (or its project directory to [assessments] projects)",
            path = path.display(),
            home = roots
                .home
                .as_ref()
                .map_or("unknown".to_string(), |h| h.display().to_string()),
            projects = if projects.is_empty() {
                "none".to_string()
            } else {
                projects.join(", ")
            },
        ))
    }

    /// The policy in force: the configured file, or the built-in default.
    pub fn policy(&self) -> Result<Policy, AssessmentError> {
        match &self.config.policy_file {
            Some(p) => Policy::load(p).map_err(|message| AssessmentError::Invalid {
                field: "policy_file",
                message,
            }),
            None => Ok(Policy::default()),
        }
    }

    /// The files a target covers, read now.
    pub fn files(&self, target: &Target) -> Result<Vec<ConfigFile>, AssessmentError> {
        let mut files = match &target.file {
            Some(path) => vec![
                clients::read_path(std::path::Path::new(path), target.client).map_err(
                    |message| AssessmentError::Invalid {
                        field: "target.file",
                        message,
                    },
                )?,
            ],
            None => clients::discover(&self.roots(target)),
        };
        if let Some(server) = &target.server {
            for f in &mut files {
                f.servers.retain(|s| &s.name == server);
            }
            files.retain(|f| !f.servers.is_empty());
            if files.is_empty() {
                return Err(AssessmentError::Invalid {
                    field: "target.server",
                    message: format!("no config file found defines a server named {server:?}"),
                });
            }
        }
        Ok(files)
    }

    /// Records a request (status running). Validates the target first.
    pub fn request(
        &self,
        kind: AssessmentType,
        target: Target,
        by: &Actor,
    ) -> Result<Assessment, AssessmentError> {
        self.policy()?;
        let a = Assessment {
            id: format!("asm_{}", uuid::Uuid::new_v4().simple()),
            kind,
            target,
            status: AssessmentStatus::Running,
            requested_by: by.render(),
            created_at: now_ts(),
            finished_at: None,
            policy_file: self
                .config
                .policy_file
                .as_ref()
                .map(|p| p.display().to_string()),
            files: Vec::new(),
            counts: BTreeMap::new(),
            findings: Vec::new(),
            error: None,
        };
        self.audit
            .store()
            .write(|tx| -> Result<(), AssessmentError> {
                sql::insert_assessment(
                    tx,
                    &a.id,
                    a.kind.as_str(),
                    a.status,
                    &a.created_at,
                    &doc(&a),
                )?;
                self.audit.append_in(
                    tx,
                    &NewEvent {
                        actor: by.clone(),
                        action: AuditAction::AssessmentRequested,
                        subject: a.id.clone(),
                        outcome: Outcome::Ok,
                        detail: json!({"type": a.kind.as_str(), "target": a.target}),
                        critical: false,
                    },
                )?;
                Ok(())
            })?;
        Ok(a)
    }

    /// Runs a recorded request and stores the results, unless it was cancelled meanwhile.
    pub fn run(&self, id: &str) -> Result<Assessment, AssessmentError> {
        let mut a = self.get(id)?;
        if a.status != AssessmentStatus::Running {
            return Ok(a);
        }
        let outcome = self.evaluate(&a);
        match outcome {
            Ok((files, findings)) => {
                a.files = files;
                a.counts = BTreeMap::new();
                for f in &findings {
                    *a.counts.entry(f.severity.as_str().to_string()).or_insert(0) += 1;
                }
                a.findings = findings;
                a.status = AssessmentStatus::Completed;
            }
            Err(e) => {
                a.status = AssessmentStatus::Failed;
                a.error = Some(e.to_string());
            }
        }
        a.finished_at = Some(now_ts());
        let stored = self.audit.store().write(|tx| -> Result<bool, AssessmentError> {
            if !sql::finish_assessment(tx, id, a.status, &doc(&a))? {
                return Ok(false);
            }
            self.audit.append_in(
                tx,
                &NewEvent {
                    actor: Actor::system(),
                    action: AuditAction::AssessmentFinished,
                    subject: id.to_string(),
                    outcome: if a.status == AssessmentStatus::Completed { Outcome::Ok } else { Outcome::Error },
                    detail: json!({"status": a.status.as_str(), "files": a.files.len(), "counts": a.counts, "error": a.error}),
                    critical: false,
                },
            )?;
            Ok(true)
        })?;
        if stored { Ok(a) } else { self.get(id) }
    }

    fn evaluate(&self, a: &Assessment) -> Result<(Vec<FileSeen>, Vec<Finding>), AssessmentError> {
        let policy = self.policy()?;
        let files = self.files(&a.target)?;
        let home = self.roots(&a.target).home.map(|h| h.display().to_string());
        let path_dirs = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        let ctx = rules::RuleContext {
            policy: &policy,
            home: home.as_deref(),
            path_dirs,
        };
        let findings = rules::assess(&files, &[a.kind], &ctx);
        let seen = files
            .iter()
            .map(|f| FileSeen {
                path: f.path.clone(),
                client: f.client,
                sha256: f.sha256.clone(),
                servers: f.servers.len(),
                error: f.error.clone(),
            })
            .collect();
        Ok((seen, findings))
    }

    pub fn get(&self, id: &str) -> Result<Assessment, AssessmentError> {
        let text = self
            .audit
            .store()
            .read(|tx| sql::get_doc(tx, id))?
            .ok_or_else(|| AssessmentError::NotFound(id.into()))?;
        serde_json::from_str(&text).map_err(|e| {
            AssessmentError::Conflict(format!("stored assessment {id} is unreadable: {e}"))
        })
    }

    /// Assessments, newest first (without their findings: `assessment_get` has them).
    pub fn list(
        &self,
        status: Option<AssessmentStatus>,
        limit: u32,
    ) -> Result<Vec<Assessment>, AssessmentError> {
        let rows = self
            .audit
            .store()
            .read(|tx| sql::list_docs(tx, status, i64::from(limit)))?;
        rows.iter()
            .map(|t| {
                serde_json::from_str::<Assessment>(t)
                    .map(|mut a| {
                        a.findings.clear();
                        a
                    })
                    .map_err(|e| AssessmentError::Conflict(e.to_string()))
            })
            .collect()
    }

    /// Cancels a running assessment: it will never get results.
    pub fn cancel(&self, id: &str, by: &Actor) -> Result<Assessment, AssessmentError> {
        let mut a = self.get(id)?;
        if a.status != AssessmentStatus::Running {
            return Err(AssessmentError::Conflict(format!(
                "assessment {id} is already {}; only a running assessment can be cancelled",
                a.status
            )));
        }
        a.status = AssessmentStatus::Cancelled;
        a.finished_at = Some(now_ts());
        self.audit
            .store()
            .write(|tx| -> Result<(), AssessmentError> {
                if !sql::finish_assessment(tx, id, a.status, &doc(&a))? {
                    return Err(AssessmentError::Conflict(format!(
                        "assessment {id} finished before it could be cancelled"
                    )));
                }
                self.audit.append_in(
                    tx,
                    &NewEvent {
                        actor: by.clone(),
                        action: AuditAction::AssessmentFinished,
                        subject: id.to_string(),
                        outcome: Outcome::Ok,
                        detail: json!({"status": "cancelled"}),
                        critical: false,
                    },
                )?;
                Ok(())
            })?;
        Ok(a)
    }
}

fn doc(a: &Assessment) -> String {
    serde_json::to_string(a).unwrap_or_else(|_| "{}".into())
}

/// `path` with its directory's symbolic links and `..` resolved as far as the directories
/// exist (the file itself may not exist yet, and is not followed: a link in its place is
/// replaced by a write, never written through).
fn resolved(path: &Path) -> PathBuf {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return path.to_path_buf();
    };
    let mut existing = dir.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(last)) => {
                rest.push(last.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut out = std::fs::canonicalize(&existing).unwrap_or(existing);
    for part in rest.into_iter().rev() {
        if part == ".." {
            out.pop();
        } else if part != "." {
            out.push(part);
        }
    }
    out.push(name);
    out
}
