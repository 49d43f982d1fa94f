//! The PostgreSQL schema: `schema.sql` is SQLite's migrations 0001–0013 as one file, applied
//! to an empty database; a later migration is added to both backends under the same number.
//! Coordinators starting at once on one database take turns under an advisory lock.

use super::Client;
use crate::store::StoreError;
use crate::store::sql::Value;

/// SQLite's migrations 0001–0013, as PostgreSQL.
const SCHEMA: &str = include_str!("schema.sql");
/// The SQLite migration `SCHEMA` brings a database to.
const SCHEMA_VERSION: i64 = 13;
/// Later migrations (number, SQL), in order; each has a SQLite twin of the same number.
const LATER: &[(i64, &str)] = &[(14, COORDINATORS)];

/// 0014 (`migrations/0014_coordinators.sql`): the coordinator processes sharing the database.
const COORDINATORS: &str = r#"
CREATE TABLE coordinators (
    id            TEXT COLLATE "C" PRIMARY KEY,     -- the process's session id: random per start
    host          TEXT COLLATE "C" NOT NULL,
    pid           BIGINT NOT NULL,
    version       TEXT COLLATE "C" NOT NULL,
    transports    TEXT COLLATE "C" NOT NULL,        -- JSON object: stdio, http, url, console
    capabilities  TEXT COLLATE "C" NOT NULL,        -- JSON object
    toolsets      TEXT COLLATE "C" NOT NULL,        -- JSON array
    started_at    TEXT COLLATE "C" NOT NULL,
    heartbeat_ms  BIGINT NOT NULL,                  -- the database's clock, ms since the epoch
    stopped_at    TEXT COLLATE "C"                  -- set on a clean exit
);
CREATE INDEX coordinators_heartbeat ON coordinators (heartbeat_ms);
"#;

/// The lock migrations take, so that coordinators starting at once apply them one at a time.
const MIGRATE_LOCK: i64 = 0x6d63_7063_6d69_6772; // "mcpcmigr"

/// The schema version recorded in the database (0 for an empty one).
pub(super) fn version(c: &Client) -> Result<i64, StoreError> {
    let rows = c.query(
        "SELECT version FROM mcp_coordinator_schema ORDER BY version DESC LIMIT 1",
        &[],
    )?;
    match rows.first() {
        Some(r) => match super::value(r, 0)? {
            Value::Int(v) => Ok(v),
            other => Err(StoreError::Postgres {
                message: format!("mcp_coordinator_schema.version holds {other:?}"),
            }),
        },
        None => Ok(0),
    }
}

/// Brings the database to this build's schema, or refuses one newer than it.
pub(super) fn run(c: &Client, shown: &str) -> Result<(), StoreError> {
    let known = LATER.last().map_or(SCHEMA_VERSION, |(v, _)| *v);
    let failed = |e: StoreError| StoreError::Migration {
        path: shown.to_string(),
        message: e.to_string(),
    };
    // Current already (every start but the first): nothing to create, so a role without
    // CREATE on the schema can run a coordinator on a database someone else set up.
    match version(c) {
        Ok(found) if found == known => return Ok(()),
        Ok(found) if found > known => {
            return Err(StoreError::TooNew {
                path: shown.to_string(),
                found,
                known: usize::try_from(known).unwrap_or(usize::MAX),
            });
        }
        _ => {}
    }
    c.batch(&format!(
        "BEGIN; SELECT pg_advisory_xact_lock({MIGRATE_LOCK});
         CREATE TABLE IF NOT EXISTS mcp_coordinator_schema (version BIGINT NOT NULL)"
    ))
    .map_err(failed)?;
    let result = (|| {
        let found = version(c)?;
        if found > known {
            return Err(StoreError::TooNew {
                path: shown.to_string(),
                found,
                known: usize::try_from(known).unwrap_or(usize::MAX),
            });
        }
        if found == 0 {
            c.batch(SCHEMA).map_err(failed)?;
        }
        for (v, sql) in LATER.iter().filter(|(v, _)| *v > found.max(SCHEMA_VERSION)) {
            c.batch(sql).map_err(|e| StoreError::Migration {
                path: shown.to_string(),
                message: format!("migration {v}: {e}"),
            })?;
        }
        if found != known {
            c.batch(&format!(
                "DELETE FROM mcp_coordinator_schema; INSERT INTO mcp_coordinator_schema VALUES ({known})"
            ))
            .map_err(failed)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => c.batch("COMMIT").map_err(failed),
        Err(e) => {
            let _ = c.batch("ROLLBACK");
            Err(e)
        }
    }
}
