//! What the instance tools return: the catalog (`instance_types`) and instances as
//! `instance_list` and `instance_get` show them, with the details only the owner knows.

use std::collections::HashMap;
use std::time::Instant;

use schemars::JsonSchema;
use serde::Serialize;

use super::child::procfs;
use super::policy::{self, ToolAccess};
use super::{HiddenTool, InstanceError, InstanceService, catalog, lock};
use crate::store::StoreError;
use crate::store::instance::{self as sql, InstanceRow};

/// Summary of an instance type for `instance_types`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TypeView {
    pub name: String,
    pub description: String,
    pub transport: catalog::Transport,
    /// The command line (stdio) or URL (HTTP). Secret references are shown as references.
    pub launch: String,
    /// Environment variable names the child gets (values are not shown).
    pub env: Vec<String>,
    /// The variables `instance_start` may set with `overrides.env`; no others.
    pub overridable: Vec<String>,
    /// Secrets the type needs from the store, and whether each is there.
    pub secrets: Vec<SecretNeed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    pub autostart: bool,
    pub policy: policy::ToolPolicy,
    pub limits: catalog::LimitsConfig,
    /// Live instances of this type (in any process).
    pub live_instances: u32,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SecretNeed {
    pub name: String,
    pub present: bool,
}

/// An instance as `instance_list` and `instance_get` show it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct InstanceView {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub status: String,
    /// The coordinator process that runs it (`host:pid:session`).
    pub owner: String,
    /// Whether this coordinator process runs it (only the owner can call or stop it).
    pub owned_here: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
    pub restarts: i64,
    /// `ok`, `failing (n/threshold)`, or `unknown`.
    pub health: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Tools offered through the coordinator.
    pub tools: i64,
    /// Seconds the current connection has been up (owner only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<f64>,
    /// `instance_get` only: details the owner knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<InstanceDetail>,
}

/// What only the owning process knows about an instance.
#[derive(Debug, Serialize, JsonSchema)]
pub struct InstanceDetail {
    /// Resident memory and CPU time of the child's process group, from /proc.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// The last lines the child wrote to stderr.
    pub stderr_tail: Vec<String>,
    /// `closed`, `open (...)` or `half_open`.
    pub breaker: String,
    pub tools: Vec<ToolView>,
    pub hidden_tools: Vec<HiddenTool>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Resources {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub processes: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ToolView {
    /// The name to call through the coordinator.
    pub name: String,
    /// The child's own name.
    pub tool: String,
    /// `allowed` or `approval`.
    pub access: ToolAccess,
    pub read_only: bool,
}

impl InstanceService {
    /// The catalog.
    pub fn types(&self) -> Result<Vec<TypeView>, InstanceError> {
        let counts: HashMap<String, u32> = {
            let rows = self
                .inner
                .audit
                .store()
                .read(|tx| sql::list(tx, true, 10_000))?;
            let mut m = HashMap::new();
            for r in rows {
                *m.entry(r.type_name).or_insert(0) += 1;
            }
            m
        };
        let mut out = Vec::new();
        for (name, t) in &self.inner.types {
            let mut secrets = Vec::new();
            for s in t.required_secrets() {
                let present = self
                    .inner
                    .secrets
                    .exists(&s)
                    .map_err(|e| InstanceError::Secret(e.to_string()))?;
                secrets.push(SecretNeed { name: s, present });
            }
            let launch = match (&t.command, &t.url) {
                (Some(c), _) => std::iter::once(c.clone())
                    .chain(t.args.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(" "),
                (None, Some(u)) => u.clone(),
                (None, None) => String::new(),
            };
            out.push(TypeView {
                name: name.clone(),
                description: t.description.clone(),
                transport: t.transport(),
                launch,
                env: t.env.keys().cloned().collect(),
                overridable: t.overridable.clone(),
                secrets,
                ttl_seconds: t.ttl_seconds,
                autostart: t.autostart,
                policy: t.policy.clone(),
                limits: t.limits.clone(),
                live_instances: counts.get(name).copied().unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// Instances in the database (every process), newest first.
    pub fn list(&self, all: bool, limit: u32) -> Result<Vec<InstanceView>, InstanceError> {
        let rows = self
            .inner
            .audit
            .store()
            .read(|tx| sql::list(tx, !all, limit))?;
        Ok(rows.iter().map(|r| self.view(r, false)).collect())
    }

    /// One instance by name (the live one, else the newest) or id, with details if run here.
    pub fn get(&self, name_or_id: &str) -> Result<InstanceView, InstanceError> {
        if let Some(live) = self.live_get(name_or_id) {
            return Ok(self.view(&live.row(), true));
        }
        let row = self
            .inner
            .audit
            .store()
            .read(|tx| match sql::get(tx, name_or_id)? {
                Some(r) => Ok::<_, StoreError>(Some(r)),
                None => sql::newest_by_name(tx, name_or_id),
            })?;
        match row {
            Some(r) => Ok(self.view(&r, true)),
            None => Err(InstanceError::NotFound(name_or_id.into())),
        }
    }

    pub(super) fn view(&self, row: &InstanceRow, detail: bool) -> InstanceView {
        let live = self.live_get(&row.name).filter(|l| l.id == row.id);
        let (row, uptime) = match &live {
            Some(l) => (
                l.row(),
                lock(&l.up_since).map(|t| t.elapsed().as_secs_f64()),
            ),
            None => (row.clone(), None),
        };
        let detail = match (&live, detail) {
            (Some(l), true) => {
                let conn = l.conn();
                let resources = row
                    .pid
                    .filter(|_| conn.is_some())
                    .and_then(|p| procfs::group_stats(p as u32))
                    .map(|s| Resources {
                        rss_bytes: s.rss_bytes,
                        cpu_seconds: s.cpu_seconds,
                        processes: s.processes,
                    });
                let (tools, hidden_tools) = match &conn {
                    Some(c) => {
                        let mut tools: Vec<ToolView> = c
                            .table
                            .by_part
                            .values()
                            .map(|t| ToolView {
                                name: t.exposed.clone(),
                                tool: t.original.clone(),
                                access: t.access,
                                read_only: t.read_only,
                            })
                            .collect();
                        tools.sort_by(|a, b| a.name.cmp(&b.name));
                        (tools, c.table.hidden.clone())
                    }
                    None => (Vec::new(), Vec::new()),
                };
                Some(InstanceDetail {
                    resources,
                    stderr_tail: lock(&l.stderr).lines(),
                    breaker: lock(&l.breaker).state(Instant::now()),
                    tools,
                    hidden_tools,
                })
            }
            _ => None,
        };
        InstanceView {
            owned_here: row.owner == self.inner.owner.id,
            id: row.id,
            name: row.name,
            type_name: row.type_name,
            status: row.status.to_string(),
            owner: row.owner,
            pid: row.pid,
            started_at: row.started_at,
            expires_at: row.expires_at,
            stopped_at: row.stopped_at,
            restarts: row.restarts,
            health: row.health,
            last_error: row.last_error,
            tools: row.tools,
            uptime_seconds: uptime,
            detail,
        }
    }
}
