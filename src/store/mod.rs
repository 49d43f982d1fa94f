//! SQLite storage: opening the database (WAL, busy timeout, foreign keys), the embedded numbered
//! migrations, and one module per table group.

pub mod agent;
pub mod approval;
pub mod assessment;
pub mod audit;
pub mod budget;
mod checkpointer;
pub mod instance;
pub mod overseer;
pub mod pipeline;
pub mod remediation;
pub mod secret;
pub mod task;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use rusqlite_migration::{M, Migrations};

/// The database path that means "no file": state lives in memory and dies with the process.
pub const MEMORY: &str = ":memory:";

/// The numbered migrations, embedded at compile time and applied in order on open.
/// Append only: a shipped migration is never edited.
const MIGRATIONS: &[M<'static>] = &[
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
];

/// The database as the domain sees it inside [`Store::write`] or [`Store::read`]: a handle it
/// passes to the functions of `store/`'s table modules and cannot otherwise use. Only `store/`
/// reaches the connection under it, so no domain file names rusqlite, and a second backend
/// implements the same functions over its own handle.
pub struct Tx<'c> {
    conn: &'c Connection,
}

impl<'c> Tx<'c> {
    /// The connection under the handle: for the table modules only.
    #[allow(dead_code)] // TEMPORARY (issue 21): used once the table modules take `&Tx`
    pub(in crate::store) fn conn(&self) -> &'c Connection {
        self.conn
    }
}

// TEMPORARY (issue 21, while the table modules move to `&Tx`): removed once no domain file
// needs the connection.
impl std::ops::Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

/// An open transaction on a connection: rolled back when dropped uncommitted (the closure of
/// [`Store::write`] failed or panicked). BEGIN and COMMIT come from the statement cache:
/// rusqlite's `Transaction` parses them again on every transaction, a few microseconds each
/// on a path that runs three transactions per task.
struct Open<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> Open<'c> {
    fn begin(conn: &'c Connection, begin: &str) -> Result<Self, StoreError> {
        conn.prepare_cached(begin)?
            .execute([])
            .map_err(StoreError::from_sqlite)?;
        Ok(Open { conn, open: true })
    }

    fn commit(mut self) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("COMMIT")?
            .execute([])
            .map_err(StoreError::from_sqlite)?;
        self.open = false;
        Ok(())
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        // A failed COMMIT (or statement) may already have ended the transaction.
        if self.open && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// WAL frames between automatic checkpoints (see open_connection).
pub const WAL_AUTOCHECKPOINT: i64 = 8_192;

/// Domain tables whose row counts `coordinator_status` reports, with the query that counts them.
/// A later migration that adds a domain table adds it here.
const DOMAIN_TABLES: &[(&str, &str)] = &[
    // Sequence numbers are gapless by construction (and `audit_verify` proves it), so the
    // newest one is the count, read from the primary key instead of scanning a million rows.
    (
        "audit_events",
        "SELECT COALESCE(MAX(seq), 0) FROM audit_events",
    ),
    ("audit_signatures", "SELECT COUNT(*) FROM audit_signatures"),
    ("approvals", "SELECT COUNT(*) FROM approvals"),
    (
        "agents",
        "SELECT COUNT(*) FROM agents WHERE deregistered_at IS NULL",
    ),
    ("tasks", "SELECT COUNT(*) FROM tasks"),
    (
        "pipelines",
        "SELECT COUNT(*) FROM pipelines WHERE deleted_at IS NULL",
    ),
    ("pipeline_runs", "SELECT COUNT(*) FROM pipeline_runs"),
    ("assessments", "SELECT COUNT(*) FROM assessments"),
    ("remediations", "SELECT COUNT(*) FROM remediations"),
    ("secrets", "SELECT COUNT(*) FROM secrets"),
    (
        "instances",
        "SELECT COUNT(*) FROM instances WHERE status NOT IN ('stopped', 'expired', 'failed')",
    ),
    (
        "instance_tool_pins",
        "SELECT COUNT(*) FROM instance_tool_pins",
    ),
];

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
        "--db: `{scheme}://...` looks like a database URL, and this build stores state only in SQLite files; give a file path, or :memory:"
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
}

impl StoreError {
    /// Whether trying the same operation again may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, StoreError::Busy { .. } | StoreError::Full { .. })
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
    static LOCKED: std::cell::RefCell<Option<Arc<Location>>> = const { std::cell::RefCell::new(None) };
}

impl From<rusqlite::Error> for StoreError {
    /// Busy and a full disk by what happened (see [`StoreError::from_sqlite`]).
    fn from(err: rusqlite::Error) -> Self {
        StoreError::from_sqlite(err)
    }
}

/// A handle to the coordinator database, cheap to clone. One connection per process, guarded by
/// a mutex: SQLite calls here take microseconds, and a single writer per process keeps the
/// audit chain's head consistent without extra locking.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    location: Arc<Location>,
    /// A second connection that only asks `PRAGMA data_version` (opened on first use), so
    /// long polls notice commits of any process without touching the main connection.
    watch: Arc<OnceLock<Mutex<Connection>>>,
    /// Commits through this handle: what a `:memory:` database has instead of data_version.
    commits: Arc<AtomicU64>,
    /// The background checkpointer, once started (see [`Store::start_checkpointer`]).
    checkpointer: Arc<OnceLock<checkpointer::Nudge>>,
}

/// Where the database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A file on disk (WAL mode).
    File(PathBuf),
    /// Process memory only (`--db :memory:`).
    Memory,
}

impl Location {
    /// Parses the `--db` argument: `:memory:` or a path. A URL (`postgres://...`, any
    /// `scheme://`) is refused rather than taken as a relative directory named `scheme:`.
    pub fn from_arg(arg: &str) -> Result<Self, StoreError> {
        if arg == MEMORY {
            return Ok(Location::Memory);
        }
        if let Some((scheme, _)) = arg.split_once("://")
            && let Some(first) = scheme.chars().next()
            && first.is_ascii_alphabetic()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Err(StoreError::Url {
                scheme: scheme.to_string(),
            });
        }
        Ok(Location::File(PathBuf::from(arg)))
    }

    /// Human-readable form: the path, or `:memory:`.
    pub fn display(&self) -> String {
        match self {
            Location::File(p) => p.display().to_string(),
            Location::Memory => MEMORY.to_string(),
        }
    }
}

impl Store {
    /// Opens (creating if needed) the database, sets WAL, busy timeout and foreign keys, and
    /// applies pending migrations.
    pub fn open(location: &Location) -> Result<Self, StoreError> {
        let mut conn = open_connection(location)?;
        migrate(&mut conn, location)?;
        Ok(Store::from_connection(conn, location))
    }

    fn from_connection(conn: Connection, location: &Location) -> Self {
        Store {
            conn: Arc::new(Mutex::new(conn)),
            location: Arc::new(location.clone()),
            watch: Arc::new(OnceLock::new()),
            commits: Arc::new(AtomicU64::new(0)),
            checkpointer: Arc::new(OnceLock::new()),
        }
    }

    /// Moves WAL checkpoints of a database file to a thread of their own (see
    /// `store/checkpointer.rs`): for a long-running server, whose callers should not wait for
    /// the copying and the fsync. Once per handle; nothing for `:memory:`.
    pub fn start_checkpointer(&self) -> Result<(), StoreError> {
        if matches!(*self.location, Location::Memory) || self.checkpointer.get().is_some() {
            return Ok(());
        }
        let nudge = checkpointer::start(&self.location)?;
        // A second start racing this one drops its nudge, which ends its thread.
        let _ = self.checkpointer.set(nudge);
        Ok(())
    }

    /// How many transactions were committed through this handle (and its clones).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Counts a commit through this handle and tells the checkpointer.
    fn committed(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        if let Some(nudge) = self.checkpointer.get() {
            nudge.commit();
        }
    }

    /// Opens a database that must already exist, for commands that only read: a missing file
    /// is [`StoreError::Missing`], and neither it nor its directory is created.
    pub fn open_existing(location: &Location) -> Result<Self, StoreError> {
        if let Location::File(path) = location
            && !path.is_file()
        {
            return Err(StoreError::Missing {
                path: location.display(),
            });
        }
        let mut conn = open_connection_with(location, false)?;
        migrate(&mut conn, location)?;
        Ok(Store::from_connection(conn, location))
    }

    /// Opens a second, independent connection to the same file, for long reads (verifying the
    /// whole chain, exporting) that should not hold up tool calls. For `:memory:` there is no
    /// second connection to the same data, so the shared one is used.
    pub fn reader(&self) -> Result<ReadConn<'_>, StoreError> {
        match &*self.location {
            Location::File(_) => Ok(ReadConn::Own(open_connection(&self.location)?)),
            Location::Memory => Ok(ReadConn::Shared(self.lock())),
        }
    }

    /// Where this store lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Locks the process's connection. A poisoned lock (a panic while holding it) is recovered:
    /// SQLite rolls back any transaction left open, so the data is consistent.
    /// A wait for it (another thread of this process is using it) counts against the current
    /// lock-wait budget ([`budget`]).
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        LOCKED.with_borrow_mut(|locked| {
            if !locked
                .as_ref()
                .is_some_and(|l| Arc::ptr_eq(l, &self.location))
            {
                *locked = Some(self.location.clone());
            }
        });
        match self.conn.try_lock() {
            Ok(conn) => conn,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                let started = Instant::now();
                let conn = self
                    .conn
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                budget::charge(started.elapsed());
                conn
            }
        }
    }

    /// Runs `f` on the process's connection without opening a transaction: each statement
    /// reads a consistent snapshot of its own. For lookups and lists; see [`write`](Self::write)
    /// for anything that changes a row.
    pub fn read<T>(&self, f: impl FnOnce(&Tx<'_>) -> T) -> T {
        let conn = self.lock();
        f(&Tx { conn: &conn })
    }

    /// Runs `f` inside one `BEGIN IMMEDIATE` transaction and commits it; any error rolls back.
    /// IMMEDIATE takes the write lock up front, so two processes never deadlock upgrading a read.
    pub fn write<T, E>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let conn = self.lock_for_write()?;
        let tx = Open {
            conn: &conn,
            open: true,
        };
        let value = f(&Tx { conn: &conn })?;
        tx.commit()?;
        self.committed();
        Ok(value)
    }

    /// Locks the connection with a `BEGIN IMMEDIATE` transaction open on it. While another
    /// process holds the write lock this waits, within the current budget, with the connection
    /// released: the other threads of this process (reads, other calls) go on meanwhile, and
    /// a background job under [`Budget::none`](budget::Budget::none) gives up at once.
    fn lock_for_write(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        budget::ensure(|budget| {
            let mut attempt = 0;
            loop {
                let conn = self.lock();
                let begun =
                    budget::without_waiting(|| conn.prepare_cached("BEGIN IMMEDIATE")?.execute([]));
                match begun.map_err(StoreError::from_sqlite) {
                    Ok(_) => return Ok(conn),
                    Err(StoreError::Busy { .. }) => {}
                    Err(e) => return Err(e),
                }
                drop(conn);
                let nap = budget::pause(attempt).min(budget.remaining());
                if nap.is_zero() {
                    return Err(StoreError::Busy {
                        waited: budget.spent(),
                        timeout: budget.limit(),
                    });
                }
                std::thread::sleep(nap);
                budget.charge(nap);
                attempt += 1;
            }
        })
    }

    /// Like [`write`](Self::write) for work that often writes nothing (a claim on an empty
    /// queue): `f` runs in a DEFERRED transaction, which reads without the write lock and
    /// takes it only at its first write, so a run that writes nothing never blocks another
    /// writer, never waits for one, and adds nothing to the WAL. Upgrading a read to a write
    /// fails at once with SQLITE_BUSY when another process holds the lock or wrote since `f`
    /// began reading (SQLite does not wait there: waiting could deadlock); then `f` runs again
    /// from the start under IMMEDIATE, as `write` would have. `busy` says whether an error of
    /// `f` is that failure.
    pub fn write_lazily<T, E>(
        &self,
        f: impl Fn(&Tx<'_>) -> Result<T, E>,
        busy: impl Fn(&E) -> bool,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        {
            let conn = self.lock();
            let before = conn.total_changes();
            let tx = Open::begin(&conn, "BEGIN DEFERRED")?;
            match f(&Tx { conn: &conn }) {
                Ok(value) => {
                    let wrote = conn.total_changes() != before;
                    tx.commit()?;
                    if wrote {
                        self.committed();
                    }
                    return Ok(value);
                }
                Err(e) if busy(&e) => {} // dropped: rolled back; try again below
                Err(e) => return Err(e),
            }
        }
        self.write(f)
    }

    /// A number that changes whenever any connection, in any process, commits a change to the
    /// database (`PRAGMA data_version` on a connection of its own, for files; commits through
    /// this handle, for `:memory:`). Cheap enough to poll every few milliseconds.
    pub fn data_version(&self) -> Result<u64, StoreError> {
        let local = self.commits.load(Ordering::Relaxed);
        if matches!(*self.location, Location::Memory) {
            return Ok(local);
        }
        let watch = match self.watch.get() {
            Some(w) => w,
            None => {
                let conn = open_connection(&self.location)?;
                self.watch.get_or_init(|| Mutex::new(conn))
            }
        };
        let conn = watch.lock().unwrap_or_else(|p| p.into_inner());
        let version: i64 = conn.pragma_query_value(None, "data_version", |r| r.get(0))?;
        Ok(version as u64)
    }

    /// The schema version (number of migrations applied).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .lock()
            .prepare_cached("PRAGMA user_version")?
            .query_row([], |r| r.get(0))?)
    }

    /// The number of migrations this build knows.
    pub fn known_schema_version() -> usize {
        MIGRATIONS.len()
    }

    /// A cheap health probe: the journal mode and a trivial query.
    pub fn health(&self) -> Result<String, StoreError> {
        let conn = self.lock();
        // Cached statements: `coordinator_status` asks on every call.
        let mode: String = conn
            .prepare_cached("PRAGMA journal_mode")?
            .query_row([], |r| r.get(0))?;
        let one: i64 = conn
            .prepare_cached("SELECT 1")?
            .query_row([], |r| r.get(0))?;
        if one != 1 {
            return Ok("degraded".into());
        }
        Ok(format!("ok (journal_mode={mode})"))
    }

    /// Row counts of the domain tables, in [`DOMAIN_TABLES`] order.
    pub fn table_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let conn = self.lock();
        DOMAIN_TABLES
            .iter()
            .map(|(table, count_sql)| {
                let n: i64 = conn
                    .prepare_cached(count_sql)?
                    .query_row([], |r| r.get(0))?;
                Ok((table.to_string(), n))
            })
            .collect()
    }
}

/// A connection for long reads: its own (file databases) or the shared one (`:memory:`).
pub enum ReadConn<'a> {
    Own(Connection),
    Shared(MutexGuard<'a, Connection>),
}

impl ReadConn<'_> {
    /// The handle the table modules' functions take.
    pub fn tx(&self) -> Tx<'_> {
        Tx {
            conn: match self {
                ReadConn::Own(c) => c,
                ReadConn::Shared(c) => c,
            },
        }
    }
}

impl std::ops::Deref for ReadConn<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        match self {
            ReadConn::Own(c) => c,
            ReadConn::Shared(c) => c,
        }
    }
}

fn open_connection(location: &Location) -> Result<Connection, StoreError> {
    open_connection_with(location, true)
}

/// Opens one connection; `create` makes the file and its directory when missing.
fn open_connection_with(location: &Location, create: bool) -> Result<Connection, StoreError> {
    let path_str = location.display();
    let open_err = |cause| StoreError::Open {
        path: path_str.clone(),
        cause,
    };
    let conn = match location {
        Location::Memory => Connection::open_in_memory().map_err(open_err)?,
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

fn migrate(conn: &mut Connection, location: &Location) -> Result<(), StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        assert!(Migrations::from_slice(MIGRATIONS).validate().is_ok());
    }

    #[test]
    fn open_file_sets_wal_and_schema() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let loc = Location::File(dir.path().join("sub/c.db"));
        let store = Store::open(&loc)?;
        let mode: String = store
            .lock()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))?;
        assert_eq!(mode, "wal");
        assert_eq!(store.schema_version()?, MIGRATIONS.len() as i64);
        let fk: i64 = store
            .lock()
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
        assert_eq!(fk, 1);
        let checkpoint: i64 = store
            .lock()
            .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))?;
        assert_eq!(checkpoint, WAL_AUTOCHECKPOINT);
        // Opening again is a no-op migration.
        let again = Store::open(&loc)?;
        assert_eq!(again.schema_version()?, MIGRATIONS.len() as i64);
        Ok(())
    }

    #[test]
    fn processes_opening_a_fresh_file_at_once_all_migrate() -> Result<(), Box<dyn std::error::Error>>
    {
        for _ in 0..20 {
            let dir = tempfile::tempdir()?;
            let loc = Location::File(dir.path().join("c.db"));
            let barrier = Arc::new(std::sync::Barrier::new(4));
            let openers: Vec<_> = (0..4)
                .map(|_| {
                    let (loc, barrier) = (loc.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        Store::open(&loc).map(|_| ()).map_err(|e| e.to_string())
                    })
                })
                .collect();
            for opener in openers {
                let opened = opener.join().map_err(|_| "an opener panicked")?;
                assert!(opened.is_ok(), "{opened:?}");
            }
        }
        Ok(())
    }

    /// A write whose closure fails or panics leaves nothing behind, and the next one runs.
    #[test]
    fn a_failed_or_panicking_write_leaves_nothing() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&Location::File(dir.path().join("c.db")))?;
        store.lock().execute_batch("CREATE TABLE t (x INTEGER)")?;
        let failed: Result<(), Box<dyn std::error::Error>> = store.write(|tx| {
            tx.execute("INSERT INTO t VALUES (1)", [])?;
            Err("refused".into())
        });
        assert!(failed.is_err());
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.write(|tx| -> Result<(), StoreError> {
                tx.execute("INSERT INTO t VALUES (2)", [])
                    .map_err(StoreError::from_sqlite)?;
                panic!("a bug in the closure")
            })
        }));
        assert!(panicked.is_err());
        store.write(|tx| -> Result<(), StoreError> {
            tx.execute("INSERT INTO t VALUES (3)", [])
                .map_err(StoreError::from_sqlite)?;
            Ok(())
        })?;
        let rows: Vec<i64> = store
            .lock()
            .prepare("SELECT x FROM t")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        assert_eq!(rows, [3]);
        Ok(())
    }

    /// While another process holds the write lock, a write waits no longer than its budget,
    /// says how long it waited, and leaves the connection to the process's other threads
    /// meanwhile; background work (no budget) fails at once.
    #[test]
    fn a_write_waits_one_budget_with_the_connection_free() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.db");
        let store = Store::open(&Location::File(path.clone()))?;
        store.lock().execute_batch("CREATE TABLE t (x INTEGER)")?;
        let holder = Connection::open(&path)?;
        holder.execute_batch("BEGIN EXCLUSIVE")?;
        let insert = |store: &Store| {
            store.write(|tx| -> Result<(), StoreError> {
                tx.execute("INSERT INTO t VALUES (1)", [])?;
                Ok(())
            })
        };

        let started = std::time::Instant::now();
        let reads = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                // Reads through the same connection go on while the write waits.
                std::thread::sleep(Duration::from_millis(100));
                let read = std::time::Instant::now();
                let n: i64 = store
                    .lock()
                    .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                    .unwrap_or(-1);
                (n, read.elapsed())
            });
            let budget = budget::Budget::new(Duration::from_millis(600));
            let written = budget::sync_scope(budget, || insert(&store));
            (written, reader.join())
        });
        let took = started.elapsed();
        let (written, read) = reads;
        let (n, read_took) = read.map_err(|_| "the reader panicked")?;
        assert_eq!(n, 0);
        assert!(read_took < Duration::from_millis(100), "{read_took:?}");
        match written {
            Err(StoreError::Busy { waited, timeout }) => {
                assert_eq!(timeout, Duration::from_millis(600));
                assert!(waited >= Duration::from_millis(550), "{waited:?}");
            }
            other => return Err(format!("expected busy, got {other:?}").into()),
        }
        assert!(
            (Duration::from_millis(550)..Duration::from_millis(900)).contains(&took),
            "{took:?}"
        );
        let message = insert_error_message(budget::sync_scope(
            budget::Budget::new(Duration::from_millis(200)),
            || insert(&store),
        ));
        assert_eq!(
            message,
            "database is busy: waited 0.2 s for another process's write lock (busy timeout 0.2 s)"
        );

        let started = std::time::Instant::now();
        let skipped = budget::sync_scope(budget::Budget::none(), || insert(&store));
        assert!(
            skipped.as_ref().is_err_and(StoreError::is_busy),
            "{skipped:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(50));

        holder.execute_batch("ROLLBACK")?;
        budget::sync_scope(budget::Budget::none(), || insert(&store))?;
        Ok(())
    }

    fn insert_error_message(r: Result<(), StoreError>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    /// A full disk (here the database's page limit) is the retryable `Full`, naming the file.
    #[test]
    fn a_full_database_is_retryable_and_named() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.db");
        let store = Store::open(&Location::File(path.clone()))?;
        store.lock().execute_batch("CREATE TABLE t (x BLOB)")?;
        let pages: i64 = store
            .lock()
            .query_row("PRAGMA page_count", [], |r| r.get(0))?;
        store
            .lock()
            .pragma_update(None, "max_page_count", pages + 2)?;
        let full = store.write(|tx| -> Result<(), StoreError> {
            tx.execute("INSERT INTO t VALUES (zeroblob(100000))", [])?;
            Ok(())
        });
        let Err(e) = full else {
            return Err("a write past the page limit succeeded".into());
        };
        assert!(matches!(e, StoreError::Full { .. }), "{e:?}");
        assert!(e.retryable());
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        // Nothing half-written, and a small write still fits.
        let rows: i64 = store
            .lock()
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?;
        assert_eq!(rows, 0);
        Ok(())
    }

    #[test]
    fn newer_schema_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let loc = Location::File(dir.path().join("c.db"));
        drop(Store::open(&loc)?);
        let conn = Connection::open(dir.path().join("c.db"))?;
        conn.pragma_update(None, "user_version", 99)?;
        drop(conn);
        match Store::open(&loc) {
            Err(StoreError::TooNew { found: 99, .. }) => Ok(()),
            Err(other) => Err(format!("wrong error: {other}").into()),
            Ok(_) => Err("a newer schema was accepted".into()),
        }
    }
}
