//! System tools: `coordinator_status`, `audit_query`, `audit_verify`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Coordinator;
use super::session::{Call, Era};
use super::tool::{ErrorCode, Failure, Route, ToolError, ToolSpec, failure, route};
use crate::audit::{Outcome, Page, Query, VerifyReport};
use crate::auth::Permission;
use crate::config::{ToolGroup, Toolset};
use crate::overseer::{OverseerError, OverseerService, unprotected_warning};
use crate::store::{Store, StoreError};

pub fn routes() -> Vec<Route> {
    vec![
        route(
            ToolSpec {
                name: "coordinator_status",
                permission: Permission::Status,
                title: "Coordinator status",
                description: include_str!("../../tools/coordinator_status.md"),
                group: ToolGroup::System,
                read_only: true,
                destructive: false,
                idempotent: true,
                open_world: false,
            },
            status,
        ),
        route(
            ToolSpec {
                name: "audit_query",
                permission: Permission::AuditRead,
                title: "Query the audit log",
                description: include_str!("../../tools/audit_query.md"),
                group: ToolGroup::Audit,
                read_only: true,
                destructive: false,
                idempotent: true,
                open_world: false,
            },
            audit_query,
        ),
        route(
            ToolSpec {
                name: "audit_verify",
                permission: Permission::AuditRead,
                title: "Verify the audit chain",
                description: include_str!("../../tools/audit_verify.md"),
                group: ToolGroup::Audit,
                read_only: true,
                destructive: false,
                idempotent: true,
                open_world: false,
            },
            audit_verify,
        ),
    ]
}

/// `coordinator_status` takes no arguments.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusInput {}

/// The database as `coordinator_status` reports it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DatabaseStatus {
    /// The database file, or `:memory:`.
    pub path: String,
    /// `ok (journal_mode=wal)` when a trivial query succeeds and every tool call so far is in
    /// the audit log; `degraded: ...` with the reason while calls go unaudited (the database
    /// is locked by another process, read-only or full: calls that only read are still
    /// served, and their `tool.call` events wait to be written).
    pub health: String,
    /// Tool calls whose `tool.call` event is not in the audit log: waiting to be written, or
    /// given up (more than 10,000 waited) since this process started.
    pub unaudited_calls: u64,
    /// Migrations applied to this database.
    pub schema_version: i64,
    /// Migrations this build knows.
    pub known_schema_version: usize,
}

/// Whether approving at the CLI needs the overseer's passphrase.
#[derive(Debug, Serialize, JsonSchema)]
pub struct OverseerStatus {
    /// Whether an overseer is set for this database.
    pub set: bool,
    /// The overseer's name, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Until when wrong passphrases have locked approving at the CLI, if they have.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<String>,
    /// Present while no overseer is set: CLI approvals are unprotected, and how to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// What `coordinator_status` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct StatusOutput {
    pub name: String,
    pub version: String,
    /// The protocol version of this request.
    pub protocol_version: String,
    /// `legacy` (initialize handshake) or `stateless` (2026-07-28).
    pub era: Era,
    /// The client as the audit log names it.
    pub client: String,
    /// This coordinator process's session id (it tags this process's audit events).
    pub session_id: String,
    pub pid: u32,
    /// Where the signing key (and by default the database) lives.
    pub data_dir: String,
    /// The config file in effect, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_file: Option<String>,
    pub database: DatabaseStatus,
    /// The overseer credential that guards approving at the CLI.
    pub overseer: OverseerStatus,
    /// Rows per domain table.
    pub counts: BTreeMap<String, i64>,
    /// Tools this coordinator offers in all (every toolset; the config's disabled groups
    /// left out).
    pub tools_enabled: usize,
    /// The toolsets this connection has on (`toolsets` lists every one and switches them).
    pub toolsets: Vec<Toolset>,
    /// Tools this connection is offered now (its `tools/list`).
    pub tools_offered: usize,
    /// Tool groups switched off by the config file.
    pub disabled_groups: Vec<ToolGroup>,
    pub uptime_seconds: f64,
    /// The coordinator processes on this database: this one first (`this_process`), then
    /// every other one not stopped (live ones first), then the last 4 to stop; 16 at most.
    /// How each is reached, and its health from its heartbeat's age (`ok`, `stale` after
    /// 30 s, `gone` after 5 minutes without one, `stopped` after a clean exit).
    pub fleet: Vec<crate::fleet::Member>,
    /// Coordinators not in `fleet` (stopped earlier, or past 16); the console lists them all.
    pub fleet_unlisted: usize,
}

async fn status(c: Coordinator, _input: StatusInput, call: Call) -> Result<StatusOutput, Failure> {
    let db = c.quick(|c| -> Result<_, StoreError> {
        let store: &Store = c.store();
        Ok((
            store.health()?,
            store.schema_version()?,
            store.table_counts()?,
            c.fleet().for_status()?,
        ))
    });
    let (mut health, schema_version, counts, (fleet, fleet_unlisted)) =
        db.map_err(|e| ToolError::store(&e))?;
    let unaudited = c.unaudited_calls();
    if let Some(u) = &unaudited {
        health = format!(
            "degraded: {} tool calls are not in the audit log ({} waiting to be written, {} given up){}",
            u.waiting + u.dropped,
            u.waiting,
            u.dropped,
            u.error
                .as_ref()
                .map(|e| format!("; the last write failed: {e}"))
                .unwrap_or_default()
        );
    }
    let settings = c.settings();
    let overseer = c
        .quick(|c| OverseerService::new(c.audit().clone()).status())
        .map_err(|e| match e {
            OverseerError::Store(e) => ToolError::store(&e),
            other => ToolError::new(ErrorCode::StorageError, other.to_string()),
        })?;
    let overseer = OverseerStatus {
        set: overseer.overseer.is_some(),
        warning: match (&overseer.overseer, settings.cli_prefix()) {
            (None, Some(cli)) => Some(unprotected_warning(&cli)),
            _ => None,
        },
        name: overseer.overseer.map(|o| o.name),
        locked_until: overseer.locked_until,
    };
    Ok(StatusOutput {
        name: "mcp-coordinator".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        protocol_version: call.protocol_version,
        era: call.era,
        client: call.actor.render(),
        session_id: call.session_id,
        pid: std::process::id(),
        data_dir: settings.data_dir.display().to_string(),
        config_file: settings
            .config_path
            .as_ref()
            .map(|p| p.display().to_string()),
        database: DatabaseStatus {
            path: settings.db.display(),
            health,
            unaudited_calls: unaudited.map_or(0, |u| u.waiting + u.dropped),
            schema_version,
            known_schema_version: Store::known_schema_version(),
        },
        overseer,
        counts: counts.into_iter().collect(),
        tools_enabled: c.enabled_tool_count(),
        toolsets: {
            let (mut sets, children) = c.toolsets().enabled();
            if children {
                sets.push(Toolset::Children);
            }
            sets
        },
        tools_offered: c.offered_count(call.principal.as_ref()),
        disabled_groups: settings.config.tools.disabled_groups.clone(),
        uptime_seconds: c.uptime().as_secs_f64(),
        fleet,
        fleet_unlisted,
    })
}

/// Arguments of `audit_query`. Text filters match exactly, or as a prefix when they end in `*`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQueryInput {
    /// Only events at or after this time (RFC 3339, for example `2026-11-21T09:00:00Z`).
    #[schemars(extend("format" = "date-time"))]
    pub since: Option<String>,
    /// Only events before this time (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub until: Option<String>,
    /// Who: `client:claude-code/2.1.0`, or a prefix such as `client:*` or `user:*`.
    pub actor: Option<String>,
    /// What: `tool.call`, or a prefix such as `tool.*`.
    pub action: Option<String>,
    /// On what: a tool name, an id, or a prefix such as `audit_*`.
    pub subject: Option<String>,
    /// How it ended: `ok`, `error` (the tool returned an error) or `invalid` (refused before
    /// it ran).
    pub outcome: Option<Outcome>,
    /// Events per page, 1 to 500 (default 50).
    #[schemars(range(min = crate::limits::PAGE.min, max = crate::limits::PAGE.max))]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page, to continue with older events.
    #[schemars(regex(pattern = r"^[1-9][0-9]*$"))]
    pub cursor: Option<String>,
}

async fn audit_query(c: Coordinator, input: AuditQueryInput, _call: Call) -> Result<Page, Failure> {
    let q = Query {
        since: input.since,
        until: input.until,
        actor: input.actor,
        action: input.action,
        subject: input.subject,
        outcome: input.outcome,
        limit: input.limit,
        cursor: input.cursor,
    };
    c.blocking(move |c| {
        c.flush_audit();
        c.audit().query(&q)
    })
    .await?
    .map_err(|e| failure("audit_query", e))
}

/// `audit_verify` takes no arguments: it always checks the whole chain.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyInput {}

async fn audit_verify(
    c: Coordinator,
    _input: VerifyInput,
    _call: Call,
) -> Result<VerifyReport, Failure> {
    c.blocking(|c| {
        c.flush_audit();
        c.audit().verify()
    })
    .await?
    .map_err(|e| failure("audit_verify", e))
}
