//! Opening the database: one connection's settings (WAL, busy handler, checkpoints, foreign
//! keys, statement cache), the embedded numbered migrations and how they are applied, and
//! the private data directory.

use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use rusqlite_migration::{M, Migrations};

use super::{Location, StoreError, WAL_AUTOCHECKPOINT, budget};

/// The numbered migrations, embedded at compile time and applied in order on open.
/// Append only: a shipped migration is never edited.
pub(super) const MIGRATIONS: &[M<'static>] = &[
    M::up(include_str!("migrations/0001_audit.sql")),
    M::up(include_str!("migrations/0002_approvals.sql")),
    M::up(include_str!("migrations/0003_agents_tasks.sql")),
    M::up(include_str!("migrations/0004_pipelines.sql")),
    M::up(include_str!("migrations/0005_secrets.sql")),
    M::up(include_str!("migrations/0006_assessments.sql")),
    M::up(include_str!("migrations/0007_instances.sql")),
    M::up(include_str!("migrations/0008_overseer.sql")),
    M::up(include_str!("migrations/0009_task_indexes.sql")),
    M::up(include_str!("migrations/0010_fewer_index_pages.sql")),
    M::up(include_str!("migrations/0011_console_decisions.sql")),
    M::up(include_str!("migrations/0012_instance_snapshots.sql")),
    M::up(include_str!("migrations/0013_access_tokens.sql")),
    M::up(include_str!("migrations/0014_coordinators.sql")),
];

pub(super) fn open_connection(location: &Location) -> Result<Connection, StoreError> {
    open_connection_with(location, true)
}

/// Opens one connection; `create` makes the file and its directory when missing.
pub(super) fn open_connection_with(
    location: &Location,
    create: bool,
) -> Result<Connection, StoreError> {
    let path_str = location.display();
    let open_err = |cause| StoreError::Open {
        path: path_str.clone(),
        cause,
    };
    let conn = match location {
        // Not a SQLite database: the caller opens it with `pg`.
        Location::Postgres(_) | Location::Memory => {
            Connection::open_in_memory().map_err(open_err)?
        }
        Location::File(path) => {
            if let Some(parent) = path
                .parent()
                .filter(|p| create && !p.as_os_str().is_empty())
            {
                create_private_dir(parent).map_err(|e| StoreError::Open {
                    path: path_str.clone(),
                    cause: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
                })?;
            }
            let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI;
            if create {
                flags |= OpenFlags::SQLITE_OPEN_CREATE;
            }
            Connection::open_with_flags(path, flags).map_err(open_err)?
        }
    };
    // Waits for other processes' locks draw on the current operation's budget (budget.rs).
    conn.busy_handler(Some(budget::on_busy)).map_err(open_err)?;
    if matches!(location, Location::File(_)) {
        // WAL lets readers (the CLI, a second coordinator) work while one process writes.
        // Switching a fresh file to WAL answers SQLITE_BUSY at once, without the busy handler,
        // while another process switches it too: wait and retry here instead.
        let started = std::time::Instant::now();
        loop {
            match conn.pragma_update_and_check(None, "journal_mode", "wal", |_| Ok(())) {
                Err(ref e)
                    if matches!(
                        e.sqlite_error_code(),
                        Some(
                            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                        )
                    ) && started.elapsed() < budget::default_limit() =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other.map_err(open_err)?,
            }
        }
        // NORMAL in WAL mode is durable against process kills; only an OS crash can lose the
        // last commits, and the chain stays consistent either way.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        // A checkpoint copies every page changed since the last one back into the database
        // file and fsyncs it. A server checkpoints on a thread of its own (checkpointer.rs);
        // this automatic one, in whichever commit crosses the threshold, is for processes
        // without it and a backstop when it falls behind. Hot pages (the queue's index
        // leaves, the audit chain's right edge) change in every transaction, so 8,192 frames
        // instead of SQLite's 1,000 copies each of them an eighth as often. Durability is the
        // same: a commit is in the WAL either way. The WAL grows to about 32 MB at most
        // between checkpoints, and is cut back to 64 MB after one that a long reader held up.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT)
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
            .map_err(open_err)?;
    }
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(open_err)?;
    // Room for every statement the services prepare (about a hundred): an evicted statement
    // is parsed again on its next use.
    conn.set_prepared_statement_cache_capacity(128);
    // Plans that do not depend on the values bound. Without this, SQLite (built with STAT4)
    // plans a statement with `LIMIT ?` for the limit bound at the time and marks it stale on
    // every new bind, so the claim's candidate queries were parsed again on every claim (18%
    // of a task's time). Our plans are fixed by INDEXED BY anyway.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(open_err)?;
    Ok(conn)
}

pub(super) fn migrate(conn: &mut Connection, location: &Location) -> Result<(), StoreError> {
    let path = location.display();
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > MIGRATIONS.len() as i64 {
        return Err(StoreError::TooNew {
            path,
            found,
            known: MIGRATIONS.len(),
        });
    }
    // Two processes may start on a fresh file at once: IMMEDIATE makes the second wait for the
    // first's migration instead of failing to upgrade its read lock.
    conn.set_transaction_behavior(TransactionBehavior::Immediate);
    let migrations = Migrations::from_slice(MIGRATIONS);
    let mut seen = found;
    let mut result = migrations.to_latest(conn);
    // rusqlite_migration reads user_version before it takes the write lock, so the second of
    // two processes may run a migration the first has just committed ("table already exists").
    // When the version moved meanwhile, that is what happened: try again from the new version.
    while result.is_err() {
        let now: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if now <= seen {
            break;
        }
        seen = now;
        result = migrations.to_latest(conn);
    }
    conn.set_transaction_behavior(TransactionBehavior::Deferred);
    result.map_err(|e| StoreError::Migration {
        path,
        message: e.to_string(),
    })
}

/// Creates a directory (and parents) readable only by the owner, as the data directory holds
/// the signing key and the database.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
