//! What goes wrong in the store, named by what happened (busy, full, not found, conflict)
//! rather than by SQLite's or PostgreSQL's codes, so the domain can tell them apart without naming rusqlite.

use std::sync::Arc;
use std::time::Duration;

use super::{Location, budget};

/// What went wrong in the store, named by what happened rather than by SQLite's code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or created.
    // The cause is in the message, not the error's `source`, so `{:#}` says it once.
    #[error("cannot open database {path}: {cause}")]
    Open {
        path: String,
        cause: rusqlite::Error,
    },
    /// A command that only reads was pointed at a database file that does not exist.
    #[error(
        "database {path} does not exist (nothing was created): check --db or --data-dir; a coordinator creates it on first start"
    )]
    Missing { path: String },
    /// `--db` names a URL: no backend for it exists in this build. Only the scheme is kept,
    /// as the rest of a URL may carry a password.
    #[error(
        "--db: `{scheme}://...` is a URL this build has no backend for; give a postgres:// URL, a file path, or :memory:"
    )]
    Url { scheme: String },
    /// A migration failed; the database is left at its previous version.
    #[error("cannot migrate database {path}: {message}")]
    Migration { path: String, message: String },
    /// The database was written by a newer coordinator than this one.
    #[error(
        "database {path} has schema version {found}, newer than this build knows ({known}); upgrade mcp-coordinator"
    )]
    TooNew {
        path: String,
        found: i64,
        known: usize,
    },
    /// Another process held the lock for longer than this operation's budget (see
    /// [`budget`]): how long it waited in all, and the busy timeout.
    #[error("{}", busy_message(*waited, *timeout))]
    Busy { waited: Duration, timeout: Duration },
    /// The disk (or the database's size limit) is full: nothing was written.
    #[error(
        "database {path} is full: the disk has no room left (nothing was written; free some space and try again)"
    )]
    Full { path: String },
    /// The row asked for does not exist.
    #[error("no {what} {id:?}")]
    NotFound { what: &'static str, id: String },
    /// A row with the same key already exists (a unique or primary key constraint): nothing
    /// was written.
    #[error("already exists: {detail}")]
    Conflict { detail: String },
    /// A stored value this build cannot read (a status it does not know): the row was written
    /// by something else, or by a newer build.
    #[error("unreadable {column} {value:?} in the database")]
    Unreadable { column: &'static str, value: String },
    /// Any other SQLite failure.
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    /// PostgreSQL could not be reached, or the connection was lost: trying again may succeed.
    #[error("database unavailable: {message}")]
    Unavailable { message: String },
    /// Any other PostgreSQL failure, with the server's message and code.
    #[error("database error: {message}")]
    Postgres { message: String },
}

impl StoreError {
    /// Whether trying the same operation again may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Busy { .. } | StoreError::Full { .. } | StoreError::Unavailable { .. }
        )
    }

    /// A stored status (or other closed value) that does not parse: see [`StoreError::Unreadable`].
    pub fn unreadable(column: &'static str, value: &str) -> Self {
        StoreError::Unreadable {
            column,
            value: value.to_string(),
        }
    }

    /// Whether another process held the lock too long.
    pub fn is_busy(&self) -> bool {
        matches!(self, StoreError::Busy { .. })
    }

    /// Whether a row with the same key already exists.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    /// Turns SQLite's busy code into [`StoreError::Busy`] (with the current operation's wait),
    /// a full disk into [`StoreError::Full`], a duplicate key into [`StoreError::Conflict`],
    /// everything else into `Sqlite`.
    pub fn from_sqlite(err: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(e, detail) = &err
            && matches!(
                e.extended_code,
                rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            )
        {
            return StoreError::Conflict {
                detail: detail.clone().unwrap_or_else(|| e.to_string()),
            };
        }
        match err.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                let (waited, timeout) = budget::waited();
                StoreError::Busy { waited, timeout }
            }
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::Full {
                path: LOCKED
                    .with_borrow(|l| l.as_ref().map(|l| l.display()))
                    .unwrap_or_else(|| "(unknown)".into()),
            },
            _ => StoreError::Sqlite(err),
        }
    }
}

/// What [`StoreError::Busy`] says: how long the operation waited, in tenths of a second, and
/// its budget (`10 s`, `2.5 s`); background work, which has none, says so instead.
fn busy_message(waited: Duration, timeout: Duration) -> String {
    if timeout.is_zero() {
        return "database is busy: another process holds the write lock (background work does not wait for it)".into();
    }
    format!(
        "database is busy: waited {:.1} s for another process's write lock (busy timeout {} s)",
        waited.as_secs_f64(),
        timeout.as_secs_f64()
    )
}

thread_local! {
    /// The database whose connection this thread locked last ([`Store::lock`]): the one a
    /// full-disk error on this thread is about (SQLite's error does not say which file).
    pub(super) static LOCKED: std::cell::RefCell<Option<Arc<Location>>> = const { std::cell::RefCell::new(None) };
}

impl From<rusqlite::Error> for StoreError {
    /// Busy and a full disk by what happened (see [`StoreError::from_sqlite`]).
    fn from(err: rusqlite::Error) -> Self {
        StoreError::from_sqlite(err)
    }
}
