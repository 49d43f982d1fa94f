//! SQL for agents: insert or refresh a registration, heartbeats, lookups, discovery, and
//! deregistration.

use super::sql::Row;
use super::{StoreError, Tx, closed};
use crate::agent::status::{AgentStatus, AgentType};
use crate::args;

/// One row of `agents`, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRow {
    pub id: String,
    pub name: String,
    pub agent_type: AgentType,
    pub capabilities: String,
    pub endpoints: String,
    pub resources: String,
    pub metadata: String,
    pub status: AgentStatus,
    pub load: f64,
    pub registered_at: String,
    pub last_heartbeat_ms: i64,
    pub token_generation: i64,
    pub deregistered_at: Option<String>,
}

const COLUMNS: &str = "id, name, agent_type, capabilities, endpoints, resources, metadata, \
    status, load, registered_at, last_heartbeat_ms, token_generation, deregistered_at";

fn from_row(r: &Row<'_>) -> Result<AgentRow, StoreError> {
    Ok(AgentRow {
        id: r.get(0)?,
        name: r.get(1)?,
        agent_type: closed::get(r, 2, "agents.agent_type")?,
        capabilities: r.get(3)?,
        endpoints: r.get(4)?,
        resources: r.get(5)?,
        metadata: r.get(6)?,
        status: closed::get(r, 7, "agents.status")?,
        load: r.get(8)?,
        registered_at: r.get(9)?,
        last_heartbeat_ms: r.get(10)?,
        token_generation: r.get(11)?,
        deregistered_at: r.get(12)?,
    })
}

pub fn get(tx: &Tx<'_>, id: &str) -> Result<Option<AgentRow>, StoreError> {
    tx.one(
        &format!("SELECT {COLUMNS} FROM agents WHERE id = ?1"),
        args![id],
        from_row,
    )
}

pub fn by_name(tx: &Tx<'_>, name: &str) -> Result<Option<AgentRow>, StoreError> {
    tx.one(
        &format!("SELECT {COLUMNS} FROM agents WHERE name = ?1"),
        args![name],
        from_row,
    )
}

/// Inserts a new agent, or replaces every field of the agent with this id (a refresh).
pub fn upsert(tx: &Tx<'_>, a: &AgentRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO agents (id, name, agent_type, capabilities, endpoints, resources, metadata,
             status, load, registered_at, last_heartbeat_ms, token_generation, deregistered_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, agent_type = excluded.agent_type,
             capabilities = excluded.capabilities, endpoints = excluded.endpoints,
             resources = excluded.resources, metadata = excluded.metadata, status = excluded.status,
             load = excluded.load, last_heartbeat_ms = excluded.last_heartbeat_ms,
             token_generation = excluded.token_generation, deregistered_at = NULL",
        args![
            a.id,
            a.name,
            a.agent_type.as_str(),
            a.capabilities,
            a.endpoints,
            a.resources,
            a.metadata,
            a.status.as_str(),
            a.load,
            a.registered_at,
            a.last_heartbeat_ms,
            a.token_generation,
            a.deregistered_at
        ],
    )?;
    Ok(())
}

/// Records a heartbeat; capabilities only when given.
pub fn heartbeat(
    tx: &Tx<'_>,
    id: &str,
    now_ms: i64,
    load: f64,
    status: AgentStatus,
    capabilities: Option<&str>,
) -> Result<(), StoreError> {
    tx.exec(
        "UPDATE agents SET last_heartbeat_ms = ?2, load = ?3, status = ?4,
             capabilities = COALESCE(?5, capabilities)
         WHERE id = ?1",
        args![id, now_ms, load, status.as_str(), capabilities],
    )?;
    Ok(())
}

/// Records an agent's current load (reported with a claim).
pub fn set_load(tx: &Tx<'_>, id: &str, load: f64) -> Result<(), StoreError> {
    tx.exec("UPDATE agents SET load = ?2 WHERE id = ?1", args![id, load])?;
    Ok(())
}

/// Marks an agent deregistered and revokes its tokens (bumps the generation).
pub fn deregister(tx: &Tx<'_>, id: &str, at: &str) -> Result<(), StoreError> {
    tx.exec(
        "UPDATE agents SET deregistered_at = ?2, token_generation = token_generation + 1
         WHERE id = ?1",
        args![id, at],
    )?;
    Ok(())
}

/// Registered (not deregistered) agents, by name; filters applied by the caller.
pub fn list_registered(tx: &Tx<'_>) -> Result<Vec<AgentRow>, StoreError> {
    tx.all(
        &format!("SELECT {COLUMNS} FROM agents WHERE deregistered_at IS NULL ORDER BY name"),
        args![],
        from_row,
    )
}

/// Ids of registered agents whose last heartbeat is older than `before_ms`.
pub fn silent_since(tx: &Tx<'_>, before_ms: i64) -> Result<Vec<String>, StoreError> {
    tx.all(
        "SELECT id FROM agents WHERE deregistered_at IS NULL AND last_heartbeat_ms < ?1",
        args![before_ms],
        |r| r.get(0),
    )
}
