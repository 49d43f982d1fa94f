//! SQL for child MCP instances (one row per instance, written whole by its supervisor) and for
//! the pinned definitions of their tools.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::StoreError;

/// One row of `instances`.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    pub id: String,
    pub name: String,
    pub type_name: String,
    pub status: String,
    /// `host:pid:session` of the coordinator process that runs it.
    pub owner: String,
    pub owner_host: String,
    pub owner_pid: i64,
    pub pid: Option<i64>,
    /// JSON object: the overrides given at start.
    pub overrides: String,
    pub ttl_seconds: Option<i64>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub expires_at: Option<String>,
    pub stopped_at: Option<String>,
    pub restarts: i64,
    pub health: String,
    pub last_error: Option<String>,
    pub tools: i64,
    /// Stopped only because its coordinator exited: the next coordinator starts it again.
    pub resume: bool,
    pub updated_at: String,
}

const COLUMNS: &str = "id, name, type, status, owner, owner_host, owner_pid, pid, overrides, \
    ttl_seconds, created_at, started_at, expires_at, stopped_at, restarts, health, last_error, \
    tools, resume, updated_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<InstanceRow> {
    Ok(InstanceRow {
        id: r.get(0)?,
        name: r.get(1)?,
        type_name: r.get(2)?,
        status: r.get(3)?,
        owner: r.get(4)?,
        owner_host: r.get(5)?,
        owner_pid: r.get(6)?,
        pid: r.get(7)?,
        overrides: r.get(8)?,
        ttl_seconds: r.get(9)?,
        created_at: r.get(10)?,
        started_at: r.get(11)?,
        expires_at: r.get(12)?,
        stopped_at: r.get(13)?,
        restarts: r.get(14)?,
        health: r.get(15)?,
        last_error: r.get(16)?,
        tools: r.get(17)?,
        resume: r.get::<_, i64>(18)? != 0,
        updated_at: r.get(19)?,
    })
}

/// Inserts a new instance. A live instance with the same name is a `Conflict`.
pub fn insert(conn: &Connection, row: &InstanceRow) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT INTO instances ({COLUMNS}) VALUES \
         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
    ))?
    .execute(params![
        row.id,
        row.name,
        row.type_name,
        row.status,
        row.owner,
        row.owner_host,
        row.owner_pid,
        row.pid,
        row.overrides,
        row.ttl_seconds,
        row.created_at,
        row.started_at,
        row.expires_at,
        row.stopped_at,
        row.restarts,
        row.health,
        row.last_error,
        row.tools,
        row.resume as i64,
        row.updated_at
    ])
    .map_err(StoreError::from_sqlite)?;
    Ok(())
}

/// Writes every mutable column of `row` (status, owner, pid, times, counters).
pub fn update(conn: &Connection, row: &InstanceRow) -> Result<(), StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE instances SET status = ?2, owner = ?3, owner_host = ?4, owner_pid = ?5, \
             pid = ?6, started_at = ?7, expires_at = ?8, stopped_at = ?9, restarts = ?10, \
             health = ?11, last_error = ?12, tools = ?13, resume = ?14, updated_at = ?15 \
             WHERE id = ?1",
        )?
        .execute(params![
            row.id,
            row.status,
            row.owner,
            row.owner_host,
            row.owner_pid,
            row.pid,
            row.started_at,
            row.expires_at,
            row.stopped_at,
            row.restarts,
            row.health,
            row.last_error,
            row.tools,
            row.resume as i64,
            row.updated_at
        ])
        .map_err(StoreError::from_sqlite)?;
    if n == 0 {
        return Err(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows));
    }
    Ok(())
}

/// Takes an instance over from `old_owner` (compare and swap): true if this caller won.
pub fn claim(
    conn: &Connection,
    id: &str,
    old_owner: &str,
    new_owner: (&str, &str, i64),
    now: &str,
) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE instances SET owner = ?3, owner_host = ?4, owner_pid = ?5, resume = 0, \
             updated_at = ?6 WHERE id = ?1 AND owner = ?2",
        )?
        .execute(params![
            id,
            old_owner,
            new_owner.0,
            new_owner.1,
            new_owner.2,
            now
        ])
        .map_err(StoreError::from_sqlite)?;
    Ok(n == 1)
}

pub fn get(conn: &Connection, id: &str) -> Result<Option<InstanceRow>, StoreError> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM instances WHERE id = ?1"))?
        .query_row([id], from_row)
        .optional()
        .map_err(StoreError::from_sqlite)
}

/// The live instance with this name, if any.
pub fn live_by_name(conn: &Connection, name: &str) -> Result<Option<InstanceRow>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM instances WHERE name = ?1 \
         AND status NOT IN ('stopped', 'expired', 'failed')"
    ))?
    .query_row([name], from_row)
    .optional()
    .map_err(StoreError::from_sqlite)
}

/// The newest instance with this name, live or not.
pub fn newest_by_name(conn: &Connection, name: &str) -> Result<Option<InstanceRow>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM instances WHERE name = ?1 ORDER BY created_at DESC LIMIT 1"
    ))?
    .query_row([name], from_row)
    .optional()
    .map_err(StoreError::from_sqlite)
}

/// Instances, newest first: live ones only, or all (at most `limit`).
pub fn list(
    conn: &Connection,
    live_only: bool,
    limit: u32,
) -> Result<Vec<InstanceRow>, StoreError> {
    let filter = if live_only {
        "WHERE status NOT IN ('stopped', 'expired', 'failed')"
    } else {
        ""
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM instances {filter} ORDER BY created_at DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map([limit], from_row)?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::from_sqlite)
}

/// Candidates for restoring at start: live rows, and rows stopped only because their
/// coordinator exited.
pub fn restorable(conn: &Connection) -> Result<Vec<InstanceRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM instances WHERE status NOT IN ('stopped', 'expired', 'failed') \
         OR (status = 'stopped' AND resume = 1) ORDER BY created_at"
    ))?;
    let rows = stmt.query_map([], from_row)?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::from_sqlite)
}

/// One row of `instance_tool_pins`.
#[derive(Debug, Clone, PartialEq)]
pub struct PinRow {
    pub type_name: String,
    pub tool: String,
    /// `pinned` or `quarantined`.
    pub status: String,
    /// The approved definition's hash (none for a tool quarantined when first seen).
    pub hash: Option<String>,
    pub definition: Option<String>,
    /// JSON array of prompt-injection flags of the approved definition.
    pub flags: String,
    pub pending_hash: Option<String>,
    pub pending_definition: Option<String>,
    pub pending_flags: Option<String>,
    pub approval_id: Option<String>,
    pub first_seen_at: String,
    pub updated_at: String,
}

const PIN_COLUMNS: &str = "type, tool, status, hash, definition, flags, pending_hash, \
    pending_definition, pending_flags, approval_id, first_seen_at, updated_at";

fn pin_from_row(r: &Row<'_>) -> rusqlite::Result<PinRow> {
    Ok(PinRow {
        type_name: r.get(0)?,
        tool: r.get(1)?,
        status: r.get(2)?,
        hash: r.get(3)?,
        definition: r.get(4)?,
        flags: r.get(5)?,
        pending_hash: r.get(6)?,
        pending_definition: r.get(7)?,
        pending_flags: r.get(8)?,
        approval_id: r.get(9)?,
        first_seen_at: r.get(10)?,
        updated_at: r.get(11)?,
    })
}

pub fn pins(conn: &Connection, type_name: &str) -> Result<Vec<PinRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {PIN_COLUMNS} FROM instance_tool_pins WHERE type = ?1 ORDER BY tool"
    ))?;
    let rows = stmt.query_map([type_name], pin_from_row)?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::from_sqlite)
}

pub fn pin(conn: &Connection, type_name: &str, tool: &str) -> Result<Option<PinRow>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {PIN_COLUMNS} FROM instance_tool_pins WHERE type = ?1 AND tool = ?2"
    ))?
    .query_row([type_name, tool], pin_from_row)
    .optional()
    .map_err(StoreError::from_sqlite)
}

/// Inserts or replaces a pin.
pub fn put_pin(conn: &Connection, p: &PinRow) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO instance_tool_pins ({PIN_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
    ))?
    .execute(params![
        p.type_name,
        p.tool,
        p.status,
        p.hash,
        p.definition,
        p.flags,
        p.pending_hash,
        p.pending_definition,
        p.pending_flags,
        p.approval_id,
        p.first_seen_at,
        p.updated_at
    ])
    .map_err(StoreError::from_sqlite)?;
    Ok(())
}
