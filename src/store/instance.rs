//! SQL for child MCP instances (one row per instance, written whole by its supervisor) and for
//! the pinned definitions of their tools.

use rusqlite::{Params, Row, params};

use super::{StoreError, Tx, closed};
use crate::instance::status::{PinStatus, Status};

/// One row of `instances`.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    pub id: String,
    pub name: String,
    pub type_name: String,
    pub status: Status,
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

fn from_row(r: &Row<'_>) -> Result<InstanceRow, StoreError> {
    Ok(InstanceRow {
        id: r.get(0)?,
        name: r.get(1)?,
        type_name: r.get(2)?,
        status: closed::get_lite(r, 3, "instances.status").map_err(closed::error)?,
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
pub fn insert(tx: &Tx<'_>, row: &InstanceRow) -> Result<(), StoreError> {
    tx.conn().prepare_cached(&format!(
        "INSERT INTO instances ({COLUMNS}) VALUES \
         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
    ))?
    .execute(params![
        row.id,
        row.name,
        row.type_name,
        row.status.as_str(),
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
pub fn update(tx: &Tx<'_>, row: &InstanceRow) -> Result<(), StoreError> {
    let n = tx
        .conn()
        .prepare_cached(
            "UPDATE instances SET status = ?2, owner = ?3, owner_host = ?4, owner_pid = ?5, \
             pid = ?6, started_at = ?7, expires_at = ?8, stopped_at = ?9, restarts = ?10, \
             health = ?11, last_error = ?12, tools = ?13, resume = ?14, updated_at = ?15 \
             WHERE id = ?1",
        )?
        .execute(params![
            row.id,
            row.status.as_str(),
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
        return Err(StoreError::NotFound {
            what: "instance",
            id: row.id.clone(),
        });
    }
    Ok(())
}

/// Takes an instance over from `old_owner` (compare and swap): true if this caller won.
pub fn claim(
    tx: &Tx<'_>,
    id: &str,
    old_owner: &str,
    new_owner: (&str, &str, i64),
    now: &str,
) -> Result<bool, StoreError> {
    let n = tx
        .conn()
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

pub fn get(tx: &Tx<'_>, id: &str) -> Result<Option<InstanceRow>, StoreError> {
    let mut stmt = tx
        .conn()
        .prepare_cached(&format!("SELECT {COLUMNS} FROM instances WHERE id = ?1"))?;
    first(&mut stmt, [id], from_row)
}

/// The live instance with this name, if any.
pub fn live_by_name(tx: &Tx<'_>, name: &str) -> Result<Option<InstanceRow>, StoreError> {
    let mut stmt = tx.conn().prepare_cached(&format!(
        "SELECT {COLUMNS} FROM instances WHERE name = ?1 \
         AND status NOT IN ('stopped', 'expired', 'failed')"
    ))?;
    first(&mut stmt, [name], from_row)
}

/// The newest instance with this name, live or not.
pub fn newest_by_name(tx: &Tx<'_>, name: &str) -> Result<Option<InstanceRow>, StoreError> {
    let mut stmt = tx.conn().prepare_cached(&format!(
        "SELECT {COLUMNS} FROM instances WHERE name = ?1 ORDER BY created_at DESC LIMIT 1"
    ))?;
    first(&mut stmt, [name], from_row)
}

/// Instances, newest first: live ones only, or all (at most `limit`).
pub fn list(tx: &Tx<'_>, live_only: bool, limit: u32) -> Result<Vec<InstanceRow>, StoreError> {
    let filter = if live_only {
        "WHERE status NOT IN ('stopped', 'expired', 'failed')"
    } else {
        ""
    };
    let mut stmt = tx.conn().prepare_cached(&format!(
        "SELECT {COLUMNS} FROM instances {filter} ORDER BY created_at DESC LIMIT ?1"
    ))?;
    all(&mut stmt, [limit], from_row)
}

/// Candidates for restoring at start: live rows, and rows stopped only because their
/// coordinator exited.
pub fn restorable(tx: &Tx<'_>) -> Result<Vec<InstanceRow>, StoreError> {
    let mut stmt = tx.conn().prepare_cached(&format!(
        "SELECT {COLUMNS} FROM instances WHERE status NOT IN ('stopped', 'expired', 'failed') \
         OR (status = 'stopped' AND resume = 1) ORDER BY created_at"
    ))?;
    all(&mut stmt, [], from_row)
}

/// One row of `instance_tool_pins`.
#[derive(Debug, Clone, PartialEq)]
pub struct PinRow {
    pub type_name: String,
    pub tool: String,
    pub status: PinStatus,
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

fn pin_from_row(r: &Row<'_>) -> Result<PinRow, StoreError> {
    Ok(PinRow {
        type_name: r.get(0)?,
        tool: r.get(1)?,
        status: closed::get_lite(r, 2, "instance_tool_pins.status").map_err(closed::error)?,
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

pub fn pins(tx: &Tx<'_>, type_name: &str) -> Result<Vec<PinRow>, StoreError> {
    let mut stmt = tx.conn().prepare_cached(&format!(
        "SELECT {PIN_COLUMNS} FROM instance_tool_pins WHERE type = ?1 ORDER BY tool"
    ))?;
    all(&mut stmt, [type_name], pin_from_row)
}

pub fn pin(tx: &Tx<'_>, type_name: &str, tool: &str) -> Result<Option<PinRow>, StoreError> {
    let mut stmt = tx.conn().prepare_cached(&format!(
        "SELECT {PIN_COLUMNS} FROM instance_tool_pins WHERE type = ?1 AND tool = ?2"
    ))?;
    first(&mut stmt, [type_name, tool], pin_from_row)
}

/// Inserts or replaces a pin.
pub fn put_pin(tx: &Tx<'_>, p: &PinRow) -> Result<(), StoreError> {
    tx.conn()
        .prepare_cached(&format!(
            "INSERT OR REPLACE INTO instance_tool_pins ({PIN_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        ))?
        .execute(params![
            p.type_name,
            p.tool,
            p.status.as_str(),
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

/// Writes the owner's snapshot of an instance (a JSON document; see
/// `instance/snapshot.rs`). Touches nothing else of the row.
pub fn set_snapshot(tx: &Tx<'_>, id: &str, snapshot: &str) -> Result<(), StoreError> {
    tx.conn()
        .prepare_cached("UPDATE instances SET snapshot = ?2 WHERE id = ?1")?
        .execute(params![id, snapshot])
        .map_err(StoreError::from_sqlite)?;
    Ok(())
}

/// The newest instances (live ones first, then by creation, newest first) with their owners'
/// snapshots, for the console.
pub fn recent_with_snapshots(
    tx: &Tx<'_>,
    limit: u32,
) -> Result<Vec<(InstanceRow, Option<String>)>, StoreError> {
    let mut stmt = tx.conn().prepare_cached(&format!(
        "SELECT {COLUMNS}, snapshot FROM instances \
         ORDER BY status IN ('stopped', 'expired', 'failed'), created_at DESC, id DESC LIMIT ?1"
    ))?;
    let mut rows = stmt.query([limit])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push((from_row(r)?, r.get(20)?));
    }
    Ok(out)
}

/// Tool definitions of `type_name` waiting for a person's review (quarantined pins).
pub fn quarantined_pins(tx: &Tx<'_>, type_name: &str) -> Result<Vec<PinRow>, StoreError> {
    let mut stmt = tx.conn().prepare_cached(&format!(
        "SELECT {PIN_COLUMNS} FROM instance_tool_pins \
         WHERE type = ?1 AND status = 'quarantined' ORDER BY tool"
    ))?;
    all(&mut stmt, [type_name], pin_from_row)
}

/// The first row of a query, mapped, if there is one.
fn first<T>(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl Params,
    map: fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut rows = stmt.query(params)?;
    match rows.next()? {
        Some(r) => map(r).map(Some),
        None => Ok(None),
    }
}

/// Every row of a query, mapped.
fn all<T>(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl Params,
    map: fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(map(r)?);
    }
    Ok(out)
}

/// Instances by status, with the restarts of each status's instances summed (for `/metrics`).
pub fn status_counts(tx: &Tx<'_>) -> Result<Vec<(Status, i64, i64)>, StoreError> {
    let mut stmt = tx.conn().prepare_cached(
        "SELECT status, COUNT(*), COALESCE(SUM(restarts), 0) FROM instances GROUP BY status",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            closed::get_lite(r, 0, "instances.status")?,
            r.get(1)?,
            r.get(2)?,
        ))
    })?;
    rows.collect::<Result<Vec<_>, _>>().map_err(closed::error)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::{Location, Store};

    fn row(id: &str) -> InstanceRow {
        InstanceRow {
            id: id.into(),
            name: "echo".into(),
            type_name: "echo".into(),
            status: Status::Running,
            owner: "host:1:s".into(),
            owner_host: "host".into(),
            owner_pid: 1,
            pid: None,
            overrides: "{}".into(),
            ttl_seconds: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            started_at: None,
            expires_at: None,
            stopped_at: None,
            restarts: 0,
            health: "unknown".into(),
            last_error: None,
            tools: 0,
            resume: false,
            updated_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    /// A status this build does not know is reported as unreadable, naming the column and
    /// the value, rather than handed to the domain to guess at.
    #[test]
    fn an_unknown_status_is_unreadable() {
        let store = Store::open(&Location::Memory).unwrap();
        store.write(|tx| insert(tx, &row("i1"))).unwrap();
        assert_eq!(
            store.read(|tx| get(tx, "i1")).unwrap().map(|r| r.status),
            Some(Status::Running)
        );
        // As a newer build might write it: this one's CHECK constraint would refuse it.
        store
            .write(|tx| {
                tx.conn()
                    .execute_batch(
                        "PRAGMA ignore_check_constraints = ON; \
                         UPDATE instances SET status = 'paused' WHERE id = 'i1'; \
                         PRAGMA ignore_check_constraints = OFF;",
                    )
                    .map_err(StoreError::from)
            })
            .unwrap();
        let err = store.read(|tx| get(tx, "i1")).unwrap_err();
        assert!(
            matches!(&err, StoreError::Unreadable { column: "instances.status", value } if value == "paused"),
            "{err}"
        );
    }

    /// Writing back an instance that has no row says so by name.
    #[test]
    fn updating_a_missing_instance_is_not_found() {
        let store = Store::open(&Location::Memory).unwrap();
        let err = store.write(|tx| update(tx, &row("gone"))).unwrap_err();
        assert!(
            matches!(&err, StoreError::NotFound { what: "instance", id } if id == "gone"),
            "{err}"
        );
    }
}
