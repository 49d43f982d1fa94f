//! The coordinator's settings: where data lives (data directory, database, config file) and the
//! optional TOML config file (tool groups switched off, log level).

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::agent::AgentsConfig;
use crate::approval::ApprovalPolicy;
use crate::store::Location;
use crate::task::TasksConfig;

/// Environment variable that overrides the data directory.
pub const DATA_DIR_ENV: &str = "MCP_COORDINATOR_DATA_DIR";
/// The database file's name inside the data directory.
pub const DB_FILE: &str = "coordinator.db";
/// The config file's name inside the config directory.
pub const CONFIG_FILE: &str = "config.toml";

/// A group of tools that can be switched off together in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolGroup {
    /// `coordinator_status`.
    System,
    /// `audit_query`, `audit_verify`.
    Audit,
    /// `approval_request`, `approval_list`, `approval_get`.
    Approvals,
    /// `agent_register`, `agent_heartbeat`, `agent_list`, `agent_deregister`.
    Agents,
    /// `task_submit`, `task_get`, `task_list`, `task_cancel`, `task_claim`, `task_report`,
    /// `task_requeue`, `queue_stats`, `queue_purge`.
    Tasks,
    /// `pipeline_create`, `pipeline_get`, `pipeline_list`, `pipeline_delete`, `pipeline_run`,
    /// `pipeline_run_get`, `pipeline_run_cancel`.
    Pipelines,
    /// `assessment_request`, `assessment_get`, `assessment_list`, `assessment_cancel`.
    Assessments,
    /// `remediation_propose`, `remediation_get`, `remediation_list`, `remediation_review`,
    /// `remediation_withdraw`, `remediation_rollback`.
    Remediation,
    /// `mcp_config_list`, `mcp_server_install`, `mcp_server_remove`.
    Configs,
    /// `instance_types`, `instance_start`, `instance_list`, `instance_get`, `instance_stop`,
    /// `instance_restart`, `instance_call_tool`, `instance_tool_review`, and the tools of
    /// running instances (`<instance>__<tool>`).
    Instances,
}

impl ToolGroup {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolGroup::System => "system",
            ToolGroup::Audit => "audit",
            ToolGroup::Approvals => "approvals",
            ToolGroup::Agents => "agents",
            ToolGroup::Tasks => "tasks",
            ToolGroup::Pipelines => "pipelines",
            ToolGroup::Assessments => "assessments",
            ToolGroup::Remediation => "remediation",
            ToolGroup::Configs => "configs",
            ToolGroup::Instances => "instances",
        }
    }
}

/// The config file (TOML). Every field is optional; unknown keys are refused so a typo is
/// reported instead of silently ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Log filter for stderr when `--log-level` is not given: `error`, `warn`, `info`,
    /// `debug`, `trace`, or a tracing filter such as `mcp_coordinator=debug`.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Tool settings.
    #[serde(default)]
    pub tools: ToolsConfig,
    /// The database: how long a call may wait for another process's lock.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// Approval policy: which channel may decide what, and how long approvals stay open.
    #[serde(default)]
    pub approvals: ApprovalPolicy,
    /// Agents: heartbeat interval, load ceiling, token lifetime.
    #[serde(default)]
    pub agents: AgentsConfig,
    /// Tasks: default timeout and retries, retry backoff.
    #[serde(default)]
    pub tasks: TasksConfig,
    /// Pipelines: completion webhooks.
    #[serde(default)]
    pub pipelines: crate::pipeline::PipelinesConfig,
    /// Assessments: where MCP client configs are looked for, the policy file, registries.
    #[serde(default)]
    pub assessments: crate::assessment::AssessmentsConfig,
    /// Sizes: the largest payload a tool argument may hold, the largest result, how much of a
    /// call's arguments its audit event keeps.
    #[serde(default)]
    pub limits: crate::limits::SizeLimits,
    /// Child MCP instances: restore on start, stop grace, how many at once.
    #[serde(default)]
    pub instances: crate::instance::catalog::InstancesConfig,
    /// The oversight console: whether `serve` serves it too, where it listens, TLS or proxy.
    #[serde(default)]
    pub console: crate::console::ConsoleConfig,
    /// MCP over streamable HTTP (`serve --http`): where it listens, TLS or proxy, browser
    /// origins, sessions and per-principal limits.
    #[serde(default)]
    pub http: crate::http::HttpConfig,
    /// Who may call over HTTP: the identity provider, where roles are in its tokens, and the
    /// client the console logs people in with.
    #[serde(default)]
    pub auth: crate::auth::AuthConfig,
    /// The catalog of child MCP servers the coordinator may run, by type name
    /// (`[instance_types.NAME]`).
    #[serde(default)]
    pub instance_types: std::collections::BTreeMap<String, crate::instance::catalog::InstanceType>,
}

impl ToolGroup {
    /// The toolset a client enables to see this group's tools.
    pub fn toolset(self) -> Toolset {
        match self {
            ToolGroup::System | ToolGroup::Audit => Toolset::System,
            ToolGroup::Approvals => Toolset::Approvals,
            ToolGroup::Assessments | ToolGroup::Remediation => Toolset::Assessments,
            ToolGroup::Configs => Toolset::Installer,
            ToolGroup::Agents | ToolGroup::Tasks => Toolset::Agents,
            ToolGroup::Pipelines => Toolset::Pipelines,
            ToolGroup::Instances => Toolset::Instances,
        }
    }
}

/// What a client's `tools/list` offers, chosen per connection: by default a few toolsets, so
/// that a conversation does not pay for every tool's schema before it starts; the `toolsets`
/// tool enables the others on demand.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Toolset {
    /// Status and the audit log: `coordinator_status`, `audit_query`, `audit_verify`.
    System,
    /// A person's decisions: `approval_request`, `approval_list`, `approval_get`.
    Approvals,
    /// Assessing MCP client configs and fixing them: `assessment_*`, `remediation_*`.
    Assessments,
    /// Adding and removing servers in MCP client configs: `mcp_config_list`,
    /// `mcp_server_install`, `mcp_server_remove`.
    Installer,
    /// Worker agents and the task queue: `agent_*`, `task_*`, `queue_stats`, `queue_purge`.
    Agents,
    /// DAG pipelines and their runs: `pipeline_*`.
    Pipelines,
    /// Starting and supervising child MCP servers: `instance_*`.
    Instances,
    /// The tools of every running child (`<instance>__<tool>`); `child:<instance>` is one
    /// child's.
    Children,
    /// Every toolset.
    All,
}

impl Toolset {
    /// The toolsets that hold tools of their own (all but `children`, which stands for the
    /// running children's, and `all`).
    pub const BUILT_IN: [Toolset; 7] = [
        Toolset::System,
        Toolset::Approvals,
        Toolset::Assessments,
        Toolset::Installer,
        Toolset::Agents,
        Toolset::Pipelines,
        Toolset::Instances,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Toolset::System => "system",
            Toolset::Approvals => "approvals",
            Toolset::Assessments => "assessments",
            Toolset::Installer => "installer",
            Toolset::Agents => "agents",
            Toolset::Pipelines => "pipelines",
            Toolset::Instances => "instances",
            Toolset::Children => "children",
            Toolset::All => "all",
        }
    }

    /// One line saying what the toolset is for, as the `toolsets` tool lists it.
    pub fn summary(self) -> &'static str {
        match self {
            Toolset::System => "coordinator status and the audit log (query, verify)",
            Toolset::Approvals => "ask a person to approve an action; list and read approvals",
            Toolset::Assessments => {
                "assess MCP client configs; propose, review, roll back remediations"
            }
            Toolset::Installer => "list MCP client configs; add or remove a server in one",
            Toolset::Agents => "register worker agents; submit, claim, report and manage tasks",
            Toolset::Pipelines => "define DAG pipelines of tasks, run them, follow their runs",
            Toolset::Instances => "start, stop and inspect child MCP servers; call their tools",
            Toolset::Children => "the tools of every running child MCP server",
            Toolset::All => "every toolset",
        }
    }

    pub fn from_name(name: &str) -> Option<Toolset> {
        <Toolset as clap::ValueEnum>::from_str(name, false).ok()
    }
}

/// The toolsets a connection starts with when neither the config nor `--toolsets` says:
/// what an assistant needs to start (17 tools, under 40 KB of `tools/list`), and the tools of
/// the children it starts.
pub const DEFAULT_TOOLSETS: [Toolset; 4] = [
    Toolset::System,
    Toolset::Approvals,
    Toolset::Assessments,
    Toolset::Children,
];

/// `[tools]` in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    /// Tool groups to switch off: their tools are not listed and cannot be called, and no
    /// toolset brings them back.
    #[serde(default)]
    pub disabled_groups: Vec<ToolGroup>,
    /// The toolsets a client's connection starts with (default `["system", "approvals",
    /// "assessments", "children"]`; `["all"]` for every tool). The `toolsets` tool enables
    /// the others for one connection; `--toolsets` overrides this list.
    #[serde(default = "default_toolsets")]
    pub toolsets: Vec<Toolset>,
}

fn default_toolsets() -> Vec<Toolset> {
    DEFAULT_TOOLSETS.to_vec()
}

impl Default for ToolsConfig {
    fn default() -> Self {
        ToolsConfig {
            disabled_groups: Vec::new(),
            toolsets: default_toolsets(),
        }
    }
}

/// `[database]` in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// The most one tool call (or one command's write) waits, in total, for another process's
    /// lock on the database, in milliseconds (default 10000); then it fails with the
    /// retryable `storage_busy`. Background work never waits.
    #[schemars(range(min = crate::limits::BUSY_TIMEOUT_MS.min, max = crate::limits::BUSY_TIMEOUT_MS.max))]
    pub busy_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            busy_timeout_ms: crate::store::budget::DEFAULT_BUSY_TIMEOUT.as_millis() as u64,
        }
    }
}

impl DatabaseConfig {
    pub fn validate(&self) -> Result<(), String> {
        crate::limits::BUSY_TIMEOUT_MS.check("database.busy_timeout_ms", self.busy_timeout_ms)
    }

    /// The busy timeout.
    pub fn busy_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.busy_timeout_ms)
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The cause is in the message and deliberately not the error's `source`, so a chain
    // printed with `{:#}` says it once.
    #[error("cannot read config file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("no data directory: HOME is not set; pass --data-dir DIR or set {DATA_DIR_ENV}")]
    NoDataDir,
    /// `--db` is not something this build can store in (a URL).
    #[error(transparent)]
    Db(#[from] crate::store::StoreError),
}

impl ConfigFile {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        let config: ConfigFile = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config
            .approvals
            .validate()
            .and_then(|()| config.database.validate())
            .and_then(|()| config.agents.validate())
            .and_then(|()| config.tasks.validate())
            .and_then(|()| config.pipelines.validate())
            .and_then(|()| config.limits.validate())
            .and_then(|()| config.instances.validate())
            .and_then(|()| config.http.validate())
            .and_then(|()| {
                config
                    .instance_types
                    .iter()
                    .try_for_each(|(name, t)| t.validate(name))
            })
            .map_err(|message| ConfigError::Invalid {
                path: path.to_path_buf(),
                message,
            })?;
        Ok(config)
    }
}

/// Resolved locations and settings for one process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Holds the audit signing key and (by default) the database.
    pub data_dir: PathBuf,
    /// The database.
    pub db: Location,
    /// The config file that was loaded, if any.
    pub config_path: Option<PathBuf>,
    pub config: ConfigFile,
    /// The URL of an oversight console serving this database, once one listens (this
    /// process's own, or `[console] public_url`): pending approvals link to it.
    pub console_url: Option<String>,
}

/// The platform data directory (`$XDG_DATA_HOME/mcp-coordinator` on Linux), if there is a home.
pub fn default_data_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "mcp-coordinator").map(|d| d.data_dir().to_path_buf())
}

/// Quotes a path for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%=,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

impl Settings {
    /// The start of a CLI command that reaches this process's database and signing key:
    /// `mcp-coordinator`, plus `--data-dir` and `--db` where they differ from the defaults (a
    /// PostgreSQL URL without its password, which the person running it fills in). `None` for
    /// `:memory:`, which no other process can reach.
    pub fn cli_prefix(&self) -> Option<String> {
        let db = match &self.db {
            Location::Memory => return None,
            Location::File(db) => {
                (*db != self.data_dir.join(DB_FILE)).then(|| db.display().to_string())
            }
            Location::Postgres(url) => Some(url.shown().to_string()),
        };
        let mut cmd = String::from("mcp-coordinator");
        if default_data_dir().as_ref() != Some(&self.data_dir) {
            cmd.push_str(" --data-dir ");
            cmd.push_str(&shell_quote(&self.data_dir.display().to_string()));
        }
        if let Some(db) = db {
            cmd.push_str(" --db ");
            cmd.push_str(&shell_quote(&db));
        }
        Some(cmd)
    }

    /// The argv that runs `mcp-coordinator exec` against this process's data directory and
    /// database: this binary's absolute path, `--data-dir`, and `--db` when it is not the
    /// default. MCP client configs launch servers through it (`exec --secret NAME -- ...`).
    pub fn exec_argv(&self) -> Vec<String> {
        let bin = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "mcp-coordinator".into());
        let mut argv = vec![
            bin,
            "--data-dir".into(),
            self.data_dir.display().to_string(),
        ];
        if let Location::File(db) = &self.db
            && *db != self.data_dir.join(DB_FILE)
        {
            argv.push("--db".into());
            argv.push(db.display().to_string());
        }
        argv
    }

    /// Resolves the data directory (`--data-dir`, then `MCP_COORDINATOR_DATA_DIR`, then the
    /// platform data directory: `$XDG_DATA_HOME/mcp-coordinator` on Linux), the database
    /// (`--db`, else `coordinator.db` in the data directory) and the config file (`--config`,
    /// which must exist, else `config.toml` in the platform config directory if present).
    pub fn resolve(
        data_dir: Option<PathBuf>,
        db: Option<String>,
        config: Option<PathBuf>,
    ) -> Result<Self, ConfigError> {
        let dirs = directories::ProjectDirs::from("", "", "mcp-coordinator");
        let data_dir = match data_dir {
            Some(d) => d,
            None => default_data_dir().ok_or(ConfigError::NoDataDir)?,
        };
        let db = match db {
            Some(arg) => Location::from_arg(&arg)?,
            None => Location::File(data_dir.join(DB_FILE)),
        };
        let config_path = match config {
            Some(p) => Some(p),
            None => dirs
                .as_ref()
                .map(|d| d.config_dir().join(CONFIG_FILE))
                .filter(|p| p.is_file()),
        };
        let config = match &config_path {
            Some(p) => ConfigFile::load(p)?,
            None => ConfigFile::default(),
        };
        let console_url = config.console.public_url.clone();
        Ok(Settings {
            data_dir,
            db,
            config_path,
            config,
            console_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_prefix_names_non_default_locations() {
        let s = Settings {
            data_dir: PathBuf::from("/tmp/my data"),
            db: Location::File(PathBuf::from("/tmp/my data/coordinator.db")),
            config_path: None,
            config: ConfigFile::default(),
            console_url: None,
        };
        assert_eq!(
            s.cli_prefix().as_deref(),
            Some("mcp-coordinator --data-dir '/tmp/my data'")
        );
        let s = Settings {
            db: Location::File(PathBuf::from("/srv/team.db")),
            ..s
        };
        assert_eq!(
            s.cli_prefix().as_deref(),
            Some("mcp-coordinator --data-dir '/tmp/my data' --db /srv/team.db")
        );
        // A PostgreSQL database (a coordinator of a team): its URL, never its password.
        let url = "postgres://coord:s3cret@db.internal:5432/coord";
        let s = Settings {
            db: Location::from_arg(url)
                .map_err(|e| e.to_string())
                .unwrap_or(Location::Memory),
            ..s
        };
        let prefix = s.cli_prefix().unwrap_or_default();
        assert!(
            prefix.starts_with("mcp-coordinator --data-dir '/tmp/my data' --db 'postgres://coord:")
                && prefix.ends_with("@db.internal:5432/coord'")
                && !prefix.contains("s3cret"),
            "{prefix}"
        );
        let s = Settings {
            db: Location::Memory,
            ..s
        };
        assert_eq!(s.cli_prefix(), None);
    }

    #[test]
    fn config_parses_and_rejects_typos() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let good = dir.path().join("good.toml");
        std::fs::write(
            &good,
            "log_level = \"debug\"\n[tools]\ndisabled_groups = [\"audit\"]\n",
        )?;
        let c = ConfigFile::load(&good)?;
        assert_eq!(c.tools.disabled_groups, vec![ToolGroup::Audit]);
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[tools]\ndisabled_groups = [\"audits\"]\n")?;
        let err = ConfigFile::load(&bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("audits") && err.contains("system"), "{err}");
        let typo = dir.path().join("typo.toml");
        std::fs::write(&typo, "log_levle = \"debug\"\n")?;
        let err = ConfigFile::load(&typo)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("log_levle"), "{err}");
        Ok(())
    }
}
