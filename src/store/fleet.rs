//! SQL for the fleet: the coordinator processes sharing this database (`coordinators`), each
//! registering itself, heartbeating and marking its clean exit; the list with each one's
//! heartbeat age, and the pruning of long-gone rows. Times of heartbeats are the database's
//! clock (a team's machines may disagree by seconds; the database is the one clock they share),
//! unless a caller (a test) gives one.

use super::sql::Row;
use super::{StoreError, Tx};
use crate::args;

/// One row of `coordinators`, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct CoordinatorRow {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub version: String,
    /// JSON object.
    pub transports: String,
    /// JSON object.
    pub capabilities: String,
    /// JSON array.
    pub toolsets: String,
    pub started_at: String,
    pub heartbeat_ms: i64,
    pub stopped_at: Option<String>,
}

/// A row with how long ago its last heartbeat was, by the same clock that wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub row: CoordinatorRow,
    pub heartbeat_age_ms: i64,
}

const COLUMNS: &str = "id, host, pid, version, transports, capabilities, toolsets, started_at, \
    heartbeat_ms, stopped_at";

/// The database's clock in milliseconds since the epoch.
fn now_ms(tx: &Tx<'_>) -> &'static str {
    if tx.is_postgres() {
        "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
    } else {
        "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
    }
}

fn from_row(r: &Row<'_>) -> Result<CoordinatorRow, StoreError> {
    Ok(CoordinatorRow {
        id: r.get(0)?,
        host: r.get(1)?,
        pid: r.get(2)?,
        version: r.get(3)?,
        transports: r.get(4)?,
        capabilities: r.get(5)?,
        toolsets: r.get(6)?,
        started_at: r.get(7)?,
        heartbeat_ms: r.get(8)?,
        stopped_at: r.get(9)?,
    })
}

/// Registers a coordinator, or refreshes every field of the one with this id (a row pruned
/// or lost while it ran comes back): it is live again, with a heartbeat at `at_ms` (`None`:
/// the database's clock). `row.heartbeat_ms` and `row.stopped_at` are not read.
pub fn upsert(tx: &Tx<'_>, row: &CoordinatorRow, at_ms: Option<i64>) -> Result<(), StoreError> {
    tx.exec(
        &format!(
            "INSERT INTO coordinators (id, host, pid, version, transports, capabilities, toolsets,
                 started_at, heartbeat_ms, stopped_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, COALESCE(CAST(?9 AS BIGINT), {now}), NULL)
             ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,
                 version = excluded.version, transports = excluded.transports,
                 capabilities = excluded.capabilities, toolsets = excluded.toolsets,
                 started_at = excluded.started_at, heartbeat_ms = excluded.heartbeat_ms,
                 stopped_at = NULL",
            now = now_ms(tx)
        ),
        args![
            row.id,
            row.host,
            row.pid,
            row.version,
            row.transports,
            row.capabilities,
            row.toolsets,
            row.started_at,
            at_ms
        ],
    )?;
    Ok(())
}

/// Records a live coordinator's heartbeat at `at_ms` (`None`: the database's clock). Returns
/// whether its row was there to update (a stopped one is left stopped).
pub fn heartbeat(tx: &Tx<'_>, id: &str, at_ms: Option<i64>) -> Result<bool, StoreError> {
    let n = tx.exec(
        &format!(
            "UPDATE coordinators SET heartbeat_ms = COALESCE(CAST(?2 AS BIGINT), {now})
             WHERE id = ?1 AND stopped_at IS NULL",
            now = now_ms(tx)
        ),
        args![id, at_ms],
    )?;
    Ok(n > 0)
}

/// Marks a coordinator stopped (a clean exit) at `stopped_at`, with a last heartbeat then.
pub fn stop(
    tx: &Tx<'_>,
    id: &str,
    stopped_at: &str,
    at_ms: Option<i64>,
) -> Result<bool, StoreError> {
    let n = tx.exec(
        &format!(
            "UPDATE coordinators SET stopped_at = ?2,
                 heartbeat_ms = COALESCE(CAST(?3 AS BIGINT), {now})
             WHERE id = ?1 AND stopped_at IS NULL",
            now = now_ms(tx)
        ),
        args![id, stopped_at, at_ms],
    )?;
    Ok(n > 0)
}

/// Every coordinator, live ones first, each kind in the order they started, with its
/// heartbeat's age at `now_ms` (`None`: the database's clock).
pub fn list(tx: &Tx<'_>, now_ms_at: Option<i64>) -> Result<Vec<Listed>, StoreError> {
    tx.all(
        &format!(
            "SELECT {COLUMNS}, COALESCE(CAST(?1 AS BIGINT), {now}) - heartbeat_ms
             FROM coordinators
             ORDER BY stopped_at IS NOT NULL, started_at, id",
            now = now_ms(tx)
        ),
        args![now_ms_at],
        |r| {
            Ok(Listed {
                row: from_row(r)?,
                heartbeat_age_ms: r.get(10)?,
            })
        },
    )
}

/// What a status lists, without reading a day of stopped rows: the coordinators still running
/// (at most `running`: `this` first, then those heard from within `fresh_ms` in the order they
/// started, then the silent ones) and the last `stopped` to stop (newest first by the
/// database's clock), each with its heartbeat's age; and how many rows there are in all.
pub fn list_recent(
    tx: &Tx<'_>,
    this: &str,
    fresh_ms: i64,
    running: i64,
    stopped: i64,
) -> Result<(Vec<Listed>, i64), StoreError> {
    let now = now_ms(tx);
    let listed = |r: &Row<'_>| {
        Ok(Listed {
            row: from_row(r)?,
            heartbeat_age_ms: r.get(10)?,
        })
    };
    let mut rows = tx.all(
        &format!(
            "SELECT {COLUMNS}, {now} - heartbeat_ms FROM coordinators
             WHERE stopped_at IS NULL
             ORDER BY id = ?2 DESC, {now} - heartbeat_ms > ?3, started_at, id
             LIMIT ?1"
        ),
        args![running, this, fresh_ms],
        listed,
    )?;
    // `stop` sets the last heartbeat from the database's clock: the order every machine agrees
    // on, where `stopped_at` is each one's own clock.
    rows.extend(tx.all(
        &format!(
            "SELECT {COLUMNS}, {now} - heartbeat_ms FROM coordinators
             WHERE stopped_at IS NOT NULL
             ORDER BY heartbeat_ms DESC, id
             LIMIT ?1"
        ),
        args![stopped],
        listed,
    )?);
    let total = tx
        .one("SELECT COUNT(*) FROM coordinators", args![], |r| {
            r.get::<i64>(0)
        })?
        .unwrap_or(0);
    Ok((rows, total))
}

/// Deletes coordinators whose last heartbeat is more than `older_than_ms` before `now_ms`
/// (`None`: the database's clock); returns how many.
pub fn prune(tx: &Tx<'_>, older_than_ms: i64, now_ms_at: Option<i64>) -> Result<usize, StoreError> {
    tx.exec(
        &format!(
            "DELETE FROM coordinators
             WHERE heartbeat_ms < COALESCE(CAST(?1 AS BIGINT), {now}) - ?2",
            now = now_ms(tx)
        ),
        args![now_ms_at, older_than_ms],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, testing};

    fn row(id: &str, started_at: &str) -> CoordinatorRow {
        CoordinatorRow {
            id: id.into(),
            host: "host-a".into(),
            pid: 4242,
            version: "1.2.3".into(),
            transports: r#"{"stdio":true}"#.into(),
            capabilities: r#"{"tool_groups":["system"]}"#.into(),
            toolsets: r#"["system"]"#.into(),
            started_at: started_at.into(),
            heartbeat_ms: 0,
            stopped_at: None,
        }
    }

    fn listed(store: &Store, now: Option<i64>) -> Vec<Listed> {
        store
            .read(|tx| list(tx, now))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Register, heartbeat, stop, list and prune on both backends, with explicit times and
    /// with the database's clock.
    #[test]
    fn the_fleet_on_both_backends() {
        for (name, store) in testing::both("fleet") {
            assert_eq!(
                store.schema_version().ok(),
                Some(Store::known_schema_version() as i64),
                "{name}"
            );
            let w = |f: &dyn Fn(&Tx<'_>) -> Result<(), StoreError>| {
                store
                    .write(|tx| f(tx))
                    .unwrap_or_else(|e| panic!("{name}: {e}"))
            };
            w(&|tx| upsert(tx, &row("a", "2026-01-01T00:00:01.000000Z"), Some(10_000)));
            w(&|tx| upsert(tx, &row("b", "2026-01-01T00:00:02.000000Z"), Some(20_000)));
            let l = listed(&store, Some(25_000));
            assert_eq!(l.len(), 2, "{name}");
            assert_eq!(l[0].row.id, "a", "{name}: in the order they started");
            assert_eq!(l[0].heartbeat_age_ms, 15_000, "{name}");
            assert_eq!(l[1].heartbeat_age_ms, 5_000, "{name}");
            assert_eq!(
                l[0].row,
                CoordinatorRow {
                    heartbeat_ms: 10_000,
                    ..row("a", "2026-01-01T00:00:01.000000Z")
                },
                "{name}: read back as written"
            );

            // A heartbeat moves it; a stop marks it and takes it to the end of the list.
            let beat = store.write(|tx| heartbeat(tx, "a", Some(24_000)));
            assert_eq!(beat.ok(), Some(true), "{name}");
            let stopped =
                store.write(|tx| stop(tx, "a", "2026-01-01T00:01:00.000000Z", Some(26_000)));
            assert_eq!(stopped.ok(), Some(true), "{name}");
            let l = listed(&store, Some(30_000));
            assert_eq!(l[1].row.id, "a", "{name}: stopped ones last");
            assert_eq!(
                l[1].row.stopped_at.as_deref(),
                Some("2026-01-01T00:01:00.000000Z"),
                "{name}"
            );
            assert_eq!(l[1].heartbeat_age_ms, 4_000, "{name}");
            // A stopped coordinator neither heartbeats nor stops again; registering revives it.
            assert_eq!(
                store.write(|tx| heartbeat(tx, "a", None)).ok(),
                Some(false),
                "{name}"
            );
            assert_eq!(
                store.write(|tx| stop(tx, "a", "later", None)).ok(),
                Some(false),
                "{name}"
            );
            assert_eq!(
                store.write(|tx| heartbeat(tx, "zz", None)).ok(),
                Some(false),
                "{name}"
            );

            // Pruning drops what is older than the cut, and only that.
            let pruned = store.write(|tx| prune(tx, 5_000, Some(30_000)));
            assert_eq!(
                pruned.ok(),
                Some(1),
                "{name}: b's heartbeat at 20 s is 10 s old"
            );
            let l = listed(&store, Some(30_000));
            assert_eq!(
                l.iter().map(|c| c.row.id.as_str()).collect::<Vec<_>>(),
                ["a"],
                "{name}"
            );

            // The database's clock: now, in milliseconds since the epoch.
            let local = crate::agent::now_ms();
            w(&|tx| upsert(tx, &row("a", "2026-01-01T00:00:03.000000Z"), None));
            let l = listed(&store, None);
            let a = &l[0];
            assert_eq!(a.row.stopped_at, None, "{name}: live again");
            assert!(
                (a.row.heartbeat_ms - local).abs() < 5_000,
                "{name}: {} is not about {local}",
                a.row.heartbeat_ms
            );
            assert!((0..5_000).contains(&a.heartbeat_age_ms), "{name}: {a:?}");
            let pruned = store.write(|tx| prune(tx, 60_000, None));
            assert_eq!(pruned.ok(), Some(0), "{name}");
        }
    }

    /// A status's list: the asker first, then the running heard from lately in the order they
    /// started, then the silent; the last to stop newest first by the database's clock; each
    /// kind to its limit, and the count of every row.
    #[test]
    fn the_recent_list_on_both_backends() {
        for (name, store) in testing::both("fleet_recent") {
            store
                .write(|tx| {
                    // run0 and run1 went silent long ago; run2..run4 beat at 100_000.
                    for i in 0..5 {
                        let started = format!("2026-01-01T00:00:0{i}.000000Z");
                        let beat = if i < 2 { 1_000 } else { 100_000 };
                        upsert(tx, &row(&format!("run{i}"), &started), Some(beat))?;
                    }
                    for i in 0..12 {
                        let id = format!("stop{i:02}");
                        upsert(tx, &row(&id, "2026-01-01T00:00:00.000000Z"), Some(1_000))?;
                        // Stopped in an order unrelated to their ids.
                        let at_ms = 50_000 + ((i * 5) % 12) * 1_000;
                        stop(tx, &id, "2026-01-01T01:00:00.000000Z", Some(at_ms))?;
                    }
                    Ok::<_, StoreError>(())
                })
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            // Judged by the database's clock (now, years after these times), every running row
            // is silent: the order is then the asker, then by start.
            let (rows, total) = store
                .read(|tx| list_recent(tx, "run3", 30_000, 3, 4))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(total, 17, "{name}");
            let ids: Vec<&str> = rows.iter().map(|l| l.row.id.as_str()).collect();
            assert_eq!(&ids[..3], ["run3", "run0", "run1"], "{name}");
            let beats: Vec<i64> = rows[3..].iter().map(|l| l.row.heartbeat_ms).collect();
            assert_eq!(
                beats,
                [61_000, 60_000, 59_000, 58_000],
                "{name}: the last to stop, newest first"
            );
            // With a freshness window that reaches back past 100_000 but not 1_000, the ones
            // still beating come before the silent.
            let fresh = store
                .read(|tx| {
                    let now: i64 = tx
                        .one(&format!("SELECT {}", now_ms(tx)), args![], |r| r.get(0))?
                        .unwrap_or(0);
                    list_recent(tx, "nobody", now - 50_000, 3, 0)
                })
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let ids: Vec<&str> = fresh.0.iter().map(|l| l.row.id.as_str()).collect();
            assert_eq!(ids, ["run2", "run3", "run4"], "{name}");
        }
    }
}
