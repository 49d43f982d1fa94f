//! SQL for child MCP instances (one row per instance, written whole by its supervisor) and for
//! the pinned definitions of their tools.

use super::sql::Row;
use super::{StoreError, Tx, closed};
use crate::args;
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
        status: closed::get(r, 3, "instances.status")?,
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
        resume: r.get::<i64>(18)? != 0,
        updated_at: r.get(19)?,
    })
}

/// Inserts a new instance. A live instance with the same name is a `Conflict`.
pub fn insert(tx: &Tx<'_>, row: &InstanceRow) -> Result<(), StoreError> {
    tx.exec(
        &format!(
            "INSERT INTO instances ({COLUMNS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
        ),
        args![
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
        row.resume,
        row.updated_at
        ],
    )?;
    Ok(())
}

/// Writes every mutable column of `row` (status, owner, pid, times, counters).
pub fn update(tx: &Tx<'_>, row: &InstanceRow) -> Result<(), StoreError> {
    let n = tx.exec(
        "UPDATE instances SET status = ?2, owner = ?3, owner_host = ?4, owner_pid = ?5, \
         pid = ?6, started_at = ?7, expires_at = ?8, stopped_at = ?9, restarts = ?10, \
         health = ?11, last_error = ?12, tools = ?13, resume = ?14, updated_at = ?15 \
         WHERE id = ?1",
        args![
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
            row.resume,
            row.updated_at
        ],
    )?;
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
    let n = tx.exec(
        "UPDATE instances SET owner = ?3, owner_host = ?4, owner_pid = ?5, resume = 0, \
         updated_at = ?6 WHERE id = ?1 AND owner = ?2",
        args![id, old_owner, new_owner.0, new_owner.1, new_owner.2, now],
    )?;
    Ok(n == 1)
}

pub fn get(tx: &Tx<'_>, id: &str) -> Result<Option<InstanceRow>, StoreError> {
    tx.one(
        &format!("SELECT {COLUMNS} FROM instances WHERE id = ?1"),
        args![id],
        from_row,
    )
}

/// The live instance with this name, if any.
pub fn live_by_name(tx: &Tx<'_>, name: &str) -> Result<Option<InstanceRow>, StoreError> {
    tx.one(
        &format!(
            "SELECT {COLUMNS} FROM instances WHERE name = ?1 \
             AND status NOT IN ('stopped', 'expired', 'failed')"
        ),
        args![name],
        from_row,
    )
}

/// The newest instance with this name, live or not.
pub fn newest_by_name(tx: &Tx<'_>, name: &str) -> Result<Option<InstanceRow>, StoreError> {
    tx.one(
        &format!(
            "SELECT {COLUMNS} FROM instances WHERE name = ?1 ORDER BY created_at DESC LIMIT 1"
        ),
        args![name],
        from_row,
    )
}

/// Instances, newest first: live ones only, or all (at most `limit`).
pub fn list(tx: &Tx<'_>, live_only: bool, limit: u32) -> Result<Vec<InstanceRow>, StoreError> {
    let filter = if live_only {
        "WHERE status NOT IN ('stopped', 'expired', 'failed')"
    } else {
        ""
    };
    tx.all(
        &format!("SELECT {COLUMNS} FROM instances {filter} ORDER BY created_at DESC LIMIT ?1"),
        args![limit],
        from_row,
    )
}

/// Candidates for restoring at start: live rows, and rows stopped only because their
/// coordinator exited.
pub fn restorable(tx: &Tx<'_>) -> Result<Vec<InstanceRow>, StoreError> {
    tx.all(
        &format!(
            "SELECT {COLUMNS} FROM instances WHERE status NOT IN ('stopped', 'expired', 'failed') \
             OR (status = 'stopped' AND resume = 1) ORDER BY created_at"
        ),
        args![],
        from_row,
    )
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
        status: closed::get(r, 2, "instance_tool_pins.status")?,
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
    tx.all(
        &format!("SELECT {PIN_COLUMNS} FROM instance_tool_pins WHERE type = ?1 ORDER BY tool"),
        args![type_name],
        pin_from_row,
    )
}

pub fn pin(tx: &Tx<'_>, type_name: &str, tool: &str) -> Result<Option<PinRow>, StoreError> {
    tx.one(
        &format!("SELECT {PIN_COLUMNS} FROM instance_tool_pins WHERE type = ?1 AND tool = ?2"),
        args![type_name, tool],
        pin_from_row,
    )
}

/// Inserts or replaces a pin: every column of the pin of this type and tool is written.
pub fn put_pin(tx: &Tx<'_>, p: &PinRow) -> Result<(), StoreError> {
    // PostgreSQL has no INSERT OR REPLACE: the same row, every column written on a conflict.
    let (verb, upsert) = if tx.is_postgres() {
        (
            "INSERT",
            " ON CONFLICT (type, tool) DO UPDATE SET status = excluded.status, \
             hash = excluded.hash, definition = excluded.definition, flags = excluded.flags, \
             pending_hash = excluded.pending_hash, \
             pending_definition = excluded.pending_definition, \
             pending_flags = excluded.pending_flags, approval_id = excluded.approval_id, \
             first_seen_at = excluded.first_seen_at, updated_at = excluded.updated_at",
        )
    } else {
        ("INSERT OR REPLACE", "")
    };
    let sql = format!(
        "{verb} INTO instance_tool_pins ({PIN_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12){upsert}"
    );
    tx.exec(
        &sql,
        args![
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
        ],
    )?;
    Ok(())
}

/// Writes the owner's snapshot of an instance (a JSON document; see
/// `instance/snapshot.rs`). Touches nothing else of the row.
pub fn set_snapshot(tx: &Tx<'_>, id: &str, snapshot: &str) -> Result<(), StoreError> {
    tx.exec(
        "UPDATE instances SET snapshot = ?2 WHERE id = ?1",
        args![id, snapshot],
    )?;
    Ok(())
}

/// The newest instances (live ones first, then by creation, newest first) with their owners'
/// snapshots, for the console.
pub fn recent_with_snapshots(
    tx: &Tx<'_>,
    limit: u32,
) -> Result<Vec<(InstanceRow, Option<String>)>, StoreError> {
    // Live first: `IN` is 0 or 1 on SQLite and a boolean on PostgreSQL, false first on both.
    tx.all(
        &format!(
            "SELECT {COLUMNS}, snapshot FROM instances \
             ORDER BY status IN ('stopped', 'expired', 'failed'), created_at DESC, id DESC \
             LIMIT ?1"
        ),
        args![limit],
        |r| Ok((from_row(r)?, r.get(20)?)),
    )
}

/// Tool definitions of `type_name` waiting for a person's review (quarantined pins).
pub fn quarantined_pins(tx: &Tx<'_>, type_name: &str) -> Result<Vec<PinRow>, StoreError> {
    tx.all(
        &format!(
            "SELECT {PIN_COLUMNS} FROM instance_tool_pins \
             WHERE type = ?1 AND status = 'quarantined' ORDER BY tool"
        ),
        args![type_name],
        pin_from_row,
    )
}

/// Instances by status, with the restarts of each status's instances summed (for `/metrics`).
pub fn status_counts(tx: &Tx<'_>) -> Result<Vec<(Status, i64, i64)>, StoreError> {
    tx.all(
        if tx.is_postgres() {
            // SUM of a BIGINT is a NUMERIC on PostgreSQL, which the store does not read.
            "SELECT status, COUNT(*), CAST(COALESCE(SUM(restarts), 0) AS BIGINT) FROM instances \
             GROUP BY status"
        } else {
            "SELECT status, COUNT(*), COALESCE(SUM(restarts), 0) FROM instances GROUP BY status"
        },
        args![],
        |r| Ok((closed::get(r, 0, "instances.status")?, r.get(1)?, r.get(2)?)),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::testing::both;

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

    fn pin_row(tool: &str, status: PinStatus) -> PinRow {
        PinRow {
            type_name: "echo".into(),
            tool: tool.into(),
            status,
            hash: Some("h1".into()),
            definition: Some("{}".into()),
            flags: "[]".into(),
            pending_hash: None,
            pending_definition: None,
            pending_flags: None,
            approval_id: None,
            first_seen_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    /// A status this build does not know is reported as unreadable, naming the column and
    /// the value, rather than handed to the domain to guess at.
    #[test]
    fn an_unknown_status_is_unreadable() {
        for (backend, store) in both("instance_unknown") {
            store.write(|tx| insert(tx, &row("i1"))).unwrap();
            assert_eq!(
                store.read(|tx| get(tx, "i1")).unwrap().map(|r| r.status),
                Some(Status::Running),
                "{backend}"
            );
            // As a newer build might write it: this one's CHECK constraint would refuse it.
            if store.is_postgres() {
                for sql in [
                    "ALTER TABLE instances DROP CONSTRAINT instances_status_check",
                    "UPDATE instances SET status = 'paused' WHERE id = 'i1'",
                ] {
                    store.execute_for_test(sql).unwrap();
                }
            } else {
                store
                    .write(|tx| {
                        tx.sqlite()
                            .unwrap()
                            .execute_batch(
                                "PRAGMA ignore_check_constraints = ON; \
                                 UPDATE instances SET status = 'paused' WHERE id = 'i1'; \
                                 PRAGMA ignore_check_constraints = OFF;",
                            )
                            .map_err(StoreError::from)
                    })
                    .unwrap();
            }
            let err = store.read(|tx| get(tx, "i1")).unwrap_err();
            assert!(
                matches!(&err, StoreError::Unreadable { column: "instances.status", value } if value == "paused"),
                "{backend}: {err}"
            );
            let err = store.read(status_counts).unwrap_err();
            assert!(
                matches!(&err, StoreError::Unreadable { .. }),
                "{backend}: {err}"
            );
        }
    }

    /// Writing back an instance that has no row says so by name.
    #[test]
    fn updating_a_missing_instance_is_not_found() {
        for (backend, store) in both("instance_missing") {
            let err = store.write(|tx| update(tx, &row("gone"))).unwrap_err();
            assert!(
                matches!(&err, StoreError::NotFound { what: "instance", id } if id == "gone"),
                "{backend}: {err}"
            );
        }
    }

    /// A row reads back as written; a second live instance of a name is a conflict, a stopped
    /// one frees it; an update writes every mutable column; a claim takes an instance from its
    /// owner once.
    #[test]
    fn instances_round_trip_and_names_stay_unique_while_live() {
        for (backend, store) in both("instance_rows") {
            let mut first = InstanceRow {
                pid: Some(42),
                ttl_seconds: Some(60),
                started_at: Some("2026-01-01T00:00:01Z".into()),
                expires_at: Some("2026-01-01T00:01:01Z".into()),
                last_error: Some("none yet".into()),
                resume: true,
                ..row("i1")
            };
            store.write(|tx| insert(tx, &first)).unwrap();
            assert_eq!(
                store.read(|tx| get(tx, "i1")).unwrap(),
                Some(first.clone()),
                "{backend}"
            );
            let err = store.write(|tx| insert(tx, &row("i2"))).unwrap_err();
            assert!(err.is_conflict(), "{backend}: {err}");

            first.status = Status::Stopped;
            first.stopped_at = Some("2026-01-01T00:00:05Z".into());
            first.restarts = 3;
            first.tools = 7;
            first.health = "healthy".into();
            store.write(|tx| update(tx, &first)).unwrap();
            assert_eq!(
                store.read(|tx| get(tx, "i1")).unwrap(),
                Some(first.clone()),
                "{backend}"
            );
            let second = InstanceRow {
                created_at: "2026-01-02T00:00:00Z".into(),
                ..row("i2")
            };
            store.write(|tx| insert(tx, &second)).unwrap();
            let live = |name: &str| store.read(|tx| live_by_name(tx, name)).unwrap();
            assert_eq!(live("echo").map(|r| r.id), Some("i2".into()), "{backend}");
            assert_eq!(live("other"), None, "{backend}");
            let newest = store.read(|tx| newest_by_name(tx, "echo")).unwrap();
            assert_eq!(newest.map(|r| r.id), Some("i2".into()), "{backend}");

            let ids = |rows: Vec<InstanceRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
            assert_eq!(
                ids(store.read(|tx| list(tx, false, 10)).unwrap()),
                ["i2", "i1"]
            );
            assert_eq!(ids(store.read(|tx| list(tx, false, 1)).unwrap()), ["i2"]);
            assert_eq!(ids(store.read(|tx| list(tx, true, 10)).unwrap()), ["i2"]);
            // The stopped one asked to be resumed.
            assert_eq!(
                ids(store.read(restorable).unwrap()),
                ["i1", "i2"],
                "{backend}"
            );

            let won = |owner: &str| {
                store
                    .write(|tx| claim(tx, "i2", owner, ("b:2:t", "b", 2), "2026-01-03T00:00:00Z"))
                    .unwrap()
            };
            assert!(won("host:1:s"), "{backend}");
            assert!(!won("host:1:s"), "{backend}");
            let claimed = store.read(|tx| get(tx, "i2")).unwrap().unwrap();
            assert_eq!(
                (
                    claimed.owner.as_str(),
                    claimed.owner_host.as_str(),
                    claimed.owner_pid
                ),
                ("b:2:t", "b", 2),
                "{backend}"
            );

            store
                .write(|tx| set_snapshot(tx, "i1", "{\"rss\":1}"))
                .unwrap();
            let recent = store.read(|tx| recent_with_snapshots(tx, 10)).unwrap();
            let got: Vec<(String, Option<String>)> =
                recent.into_iter().map(|(r, s)| (r.id, s)).collect();
            assert_eq!(
                got,
                [
                    ("i2".into(), None),
                    ("i1".into(), Some("{\"rss\":1}".into()))
                ],
                "{backend}: live first"
            );

            let mut counts = store.read(status_counts).unwrap();
            counts.sort_by_key(|c| c.0.as_str());
            assert_eq!(
                counts,
                [(Status::Running, 1, 0), (Status::Stopped, 1, 3)],
                "{backend}"
            );
        }
    }

    /// A pin put again replaces every column of the pin of that type and tool.
    #[test]
    fn pins_are_replaced_whole() {
        for (backend, store) in both("instance_pins") {
            store
                .write(|tx| {
                    put_pin(tx, &pin_row("b", PinStatus::Pinned))?;
                    put_pin(tx, &pin_row("a", PinStatus::Pinned))
                })
                .unwrap();
            let replaced = PinRow {
                status: PinStatus::Quarantined,
                hash: None,
                definition: None,
                flags: "[\"x\"]".into(),
                pending_hash: Some("h2".into()),
                pending_definition: Some("{\"v\":2}".into()),
                pending_flags: Some("[]".into()),
                approval_id: Some("apr_1".into()),
                first_seen_at: "2026-01-02T00:00:00Z".into(),
                updated_at: "2026-01-03T00:00:00Z".into(),
                ..pin_row("b", PinStatus::Pinned)
            };
            store.write(|tx| put_pin(tx, &replaced)).unwrap();
            assert_eq!(
                store.read(|tx| pin(tx, "echo", "b")).unwrap(),
                Some(replaced.clone()),
                "{backend}"
            );
            let tools = |rows: Vec<PinRow>| rows.into_iter().map(|p| p.tool).collect::<Vec<_>>();
            assert_eq!(
                tools(store.read(|tx| pins(tx, "echo")).unwrap()),
                ["a", "b"]
            );
            assert_eq!(
                store.read(|tx| quarantined_pins(tx, "echo")).unwrap(),
                [replaced],
                "{backend}"
            );
            assert!(store.read(|tx| pins(tx, "other")).unwrap().is_empty());
            assert_eq!(store.read(|tx| pin(tx, "echo", "c")).unwrap(), None);
        }
    }
}
