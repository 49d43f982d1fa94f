//! The store: everything the coordinator keeps, behind one surface, on SQLite (the embedded
//! default, `lite.rs` and `open.rs`: WAL, busy handler, migrations) or PostgreSQL (`pg/`: a
//! pool, one write lock across coordinators, LISTEN/NOTIFY). One module per table group
//! (`task.rs`, `approval.rs`, ...) whose functions take the [`Tx`] handle the domain gets from
//! [`Store::write`] or [`Store::read`] and write their SQL once against `sql.rs`'s surface;
//! errors that say what happened (`error.rs`); lock-wait budgets (`budget.rs`). Only this
//! folder names rusqlite or tokio-postgres or holds SQL. Depends on nothing in the crate but
//! the domains' leaf value types (status enums).

pub mod access;
pub mod agent;
pub mod approval;
pub mod assessment;
pub mod audit;
pub mod budget;
mod checkpointer;
mod closed;
pub mod copy;
mod error;
pub mod fleet;
pub mod instance;
mod lite;
mod open;
pub mod overseer;
mod pg;
#[cfg(test)]
mod pg_tests;
pub mod pipeline;
pub mod remediation;
pub mod secret;
pub mod sql;
pub mod task;
#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::Connection;

pub use error::StoreError;
use lite::{Lite, LiteReader};
use open::MIGRATIONS;
pub use open::create_private_dir;
use open::{migrate, open_connection, open_connection_with};
pub use pg::PgUrl;
use sql::{Row, Val};

/// The database path that means "no file": state lives in memory and dies with the process.
pub const MEMORY: &str = ":memory:";

/// Connections a PostgreSQL store opens at most, unless the config says otherwise.
pub const DEFAULT_POOL_SIZE: u32 = 8;

/// The database as the domain sees it inside [`Store::write`] or [`Store::read`]: a handle it
/// passes to the functions of `store/`'s table modules and cannot otherwise use. Only `store/`
/// runs statements on it ([`Tx::exec`], [`Tx::one`], [`Tx::all`]), so no domain file names a
/// database client.
pub struct Tx<'c> {
    inner: TxInner<'c>,
}

enum TxInner<'c> {
    Lite(&'c Connection),
    Pg(&'c pg::Client),
    /// No connection could be had (PostgreSQL unreachable): every statement says why.
    Down(&'c str),
}

impl<'c> Tx<'c> {
    fn lite(conn: &'c Connection) -> Self {
        Tx {
            inner: TxInner::Lite(conn),
        }
    }

    fn pg(conn: &'c pg::Client) -> Self {
        Tx {
            inner: TxInner::Pg(conn),
        }
    }

    fn down(why: &'c str) -> Self {
        Tx {
            inner: TxInner::Down(why),
        }
    }

    fn unavailable(why: &str) -> StoreError {
        StoreError::Unavailable {
            message: why.to_string(),
        }
    }

    /// Whether the statements run on PostgreSQL: for the few the dialects spell differently.
    pub(in crate::store) fn is_postgres(&self) -> bool {
        !matches!(self.inner, TxInner::Lite(_))
    }

    /// Runs one statement; returns how many rows it changed.
    pub(in crate::store) fn exec(&self, sql: &str, args: &[Val<'_>]) -> Result<usize, StoreError> {
        match self.inner {
            TxInner::Lite(c) => c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(args.iter()))
                .map_err(StoreError::from_sqlite),
            TxInner::Pg(c) => c.execute(sql, args),
            TxInner::Down(why) => Err(Self::unavailable(why)),
        }
    }

    /// Runs a statement whose count the caller does not need (an audit event's insert, a
    /// task's final update). On PostgreSQL, inside a write transaction, it is sent with the
    /// next statement that needs an answer, or with the commit, saving its own round trip;
    /// an error it meets then fails that statement (the transaction is lost either way), so
    /// it is not for a statement whose error the caller handles (a conflict it expects).
    pub(in crate::store) fn exec_later(
        &self,
        sql: &str,
        args: &[Val<'_>],
    ) -> Result<(), StoreError> {
        match self.inner {
            TxInner::Pg(c) => c.execute_later(sql, args),
            _ => self.exec(sql, args).map(|_| ()),
        }
    }

    /// [`exec_later`](Self::exec_later) for a one-row `INSERT INTO t (..) VALUES (..)` into a
    /// table no other put-off insert refers to: on PostgreSQL the rows of a run of these go
    /// out as one multi-row insert per table.
    pub(in crate::store) fn exec_later_row(
        &self,
        sql: &'static str,
        args: &[Val<'_>],
    ) -> Result<(), StoreError> {
        match self.inner {
            TxInner::Pg(c) => c.execute_later_row(sql, args),
            _ => self.exec(sql, args).map(|_| ()),
        }
    }

    /// Where a PostgreSQL write transaction remembers the audit chain's head (see
    /// [`audit::head`]); `None` on SQLite (its lookup costs no round trip) and outside a
    /// write transaction.
    pub(in crate::store) fn audit_head_memo(&self) -> Option<&'c RefCell<Option<audit::Head>>> {
        match self.inner {
            TxInner::Pg(c) if c.in_tx.get() => Some(&c.audit_head),
            _ => None,
        }
    }

    /// Sends what [`exec_later`](Self::exec_later) put off, now: its error is returned here.
    pub(in crate::store) fn flush_later(&self) -> Result<(), StoreError> {
        match self.inner {
            TxInner::Pg(c) => c.flush_later(),
            _ => Ok(()),
        }
    }

    /// Drops what [`exec_later`](Self::exec_later) put off, unsent (a rollback follows).
    pub(in crate::store) fn discard_later(&self) {
        if let TxInner::Pg(c) = self.inner {
            c.discard_later();
        }
    }

    /// Forgets what the transaction remembered, after a rollback to a savepoint.
    pub(in crate::store) fn forget_memos(&self) {
        if let TxInner::Pg(c) = self.inner {
            c.audit_head.replace(None);
        }
    }

    /// The first row of a query, mapped by `f`; `None` when there is none.
    pub(in crate::store) fn one<T>(
        &self,
        sql: &str,
        args: &[Val<'_>],
        f: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        match self.inner {
            TxInner::Lite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt
                    .query(rusqlite::params_from_iter(args.iter()))
                    .map_err(StoreError::from_sqlite)?;
                match rows.next().map_err(StoreError::from_sqlite)? {
                    Some(r) => f(&Row::Lite(r)).map(Some),
                    None => Ok(None),
                }
            }
            TxInner::Pg(c) => match c.query(sql, args)?.first() {
                Some(r) => f(&Row::Pg(r)).map(Some),
                None => Ok(None),
            },
            TxInner::Down(why) => Err(Self::unavailable(why)),
        }
    }

    /// Every row of a query, mapped by `f`.
    pub(in crate::store) fn all<T>(
        &self,
        sql: &str,
        args: &[Val<'_>],
        mut f: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        self.each(sql, args, |r| {
            out.push(f(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` on every row of a query in turn (on SQLite without holding them all).
    pub(in crate::store) fn each(
        &self,
        sql: &str,
        args: &[Val<'_>],
        mut f: impl FnMut(&Row<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        match self.inner {
            TxInner::Lite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt
                    .query(rusqlite::params_from_iter(args.iter()))
                    .map_err(StoreError::from_sqlite)?;
                while let Some(r) = rows.next().map_err(StoreError::from_sqlite)? {
                    f(&Row::Lite(r))?;
                }
                Ok(())
            }
            TxInner::Pg(c) => {
                for r in &c.query(sql, args)? {
                    f(&Row::Pg(r))?;
                }
                Ok(())
            }
            TxInner::Down(why) => Err(Self::unavailable(why)),
        }
    }

    /// The SQLite connection under the handle, for the few statements only SQLite has
    /// (`EXPLAIN QUERY PLAN` in tests); `None` on PostgreSQL.
    #[cfg(test)]
    pub(in crate::store) fn sqlite(&self) -> Option<&'c Connection> {
        match self.inner {
            TxInner::Lite(c) => Some(c),
            _ => None,
        }
    }

    /// The SQLite connection under the handle, for tests of SQLite itself (WAL, locks,
    /// statements only SQLite has). Panics on PostgreSQL.
    #[cfg(test)]
    pub(in crate::store) fn conn(&self) -> &'c Connection {
        match self.inner {
            TxInner::Lite(c) => c,
            _ => panic!("a SQLite store was expected"),
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
/// A handle to the coordinator database, cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    location: Arc<Location>,
    /// Commits through this handle (and its clones): what a `:memory:` database has instead
    /// of data_version, and what the benchmark counts.
    commits: Arc<AtomicU64>,
}

#[derive(Clone)]
enum Backend {
    Lite(Lite),
    Pg(Arc<pg::Pg>),
}

/// Where the database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A file on disk (WAL mode).
    File(PathBuf),
    /// Process memory only (`--db :memory:`).
    Memory,
    /// A PostgreSQL database shared by every coordinator given the same URL.
    Postgres(PgUrl),
}

impl Location {
    /// Parses the `--db` argument: `:memory:`, a `postgres://` URL, or a path. Another URL
    /// (any `scheme://`) is refused rather than taken as a relative directory named `scheme:`.
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
            if matches!(scheme, "postgres" | "postgresql") {
                return PgUrl::parse(arg).map(Location::Postgres);
            }
            return Err(StoreError::Url {
                scheme: scheme.to_string(),
            });
        }
        Ok(Location::File(PathBuf::from(arg)))
    }

    /// Human-readable form: the path, `:memory:`, or the URL without its password.
    pub fn display(&self) -> String {
        match self {
            Location::File(p) => p.display().to_string(),
            Location::Memory => MEMORY.to_string(),
            Location::Postgres(url) => url.shown().to_string(),
        }
    }

    /// Whether this is a PostgreSQL database.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Location::Postgres(_))
    }
}

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations: SQLite with
    /// WAL, busy timeout and foreign keys; PostgreSQL with a pool of [`DEFAULT_POOL_SIZE`].
    pub fn open(location: &Location) -> Result<Self, StoreError> {
        Store::open_with_pool(location, DEFAULT_POOL_SIZE)
    }

    /// [`open`](Self::open) with the PostgreSQL pool's size (ignored for SQLite).
    pub fn open_with_pool(location: &Location, pool_size: u32) -> Result<Self, StoreError> {
        if let Location::Postgres(url) = location {
            return Ok(Store::on_pg(pg::Pg::open(url, pool_size)?, location));
        }
        let mut conn = open_connection(location)?;
        migrate(&mut conn, location)?;
        Ok(Store::from_connection(conn, location))
    }

    fn from_connection(conn: Connection, location: &Location) -> Self {
        let location = Arc::new(location.clone());
        Store {
            backend: Backend::Lite(Lite::new(conn, location.clone())),
            location,
            commits: Arc::new(AtomicU64::new(0)),
        }
    }

    fn on_pg(pg: pg::Pg, location: &Location) -> Self {
        Store {
            backend: Backend::Pg(Arc::new(pg)),
            location: Arc::new(location.clone()),
            commits: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves WAL checkpoints of a SQLite file to a thread of their own (see
    /// `store/checkpointer.rs`): for a long-running server, whose callers should not wait for
    /// the copying and the fsync. Once per handle; nothing for `:memory:` or PostgreSQL.
    pub fn start_checkpointer(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Lite(l) => l.start_checkpointer(),
            Backend::Pg(_) => Ok(()),
        }
    }

    /// How many transactions were committed through this handle (and its clones).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
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
        if location.is_postgres() {
            return Store::open_with_pool(location, 2);
        }
        let mut conn = open_connection_with(location, false)?;
        migrate(&mut conn, location)?;
        Ok(Store::from_connection(conn, location))
    }

    /// A connection of its own for long reads (verifying the whole chain, exporting) that
    /// should not hold up tool calls. For `:memory:` there is no second connection to the
    /// same data, so the shared one is used.
    pub fn reader(&self) -> Result<ReadConn<'_>, StoreError> {
        match &self.backend {
            Backend::Lite(l) => Ok(ReadConn::Lite(l.reader()?)),
            Backend::Pg(p) => Ok(ReadConn::Pg(Box::new(p.get()?))),
        }
    }

    /// Where this store lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Whether this store is on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Pg(_))
    }

    /// The SQLite connection, locked: for tests that tamper with rows or read SQLite's own
    /// tables.
    #[cfg(test)]
    pub(in crate::store) fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        match &self.backend {
            Backend::Lite(l) => l.lock(),
            Backend::Pg(_) => panic!("a SQLite store was expected"),
        }
    }

    /// Runs SQL statements as they are: for domain tests that tamper with rows the way an
    /// attacker with the database would.
    #[cfg(test)]
    pub(crate) fn execute_for_test(&self, sql: &str) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Lite(l) => Ok(l.lock().execute(sql, [])?),
            Backend::Pg(p) => pg::execute_raw(p, sql),
        }
    }

    /// Runs `f` on a connection without taking the write lock. On SQLite its statements read
    /// one snapshot (a deferred read transaction, which costs nothing but the read lock each
    /// statement would take anyway); on PostgreSQL each reads a snapshot of its own (a
    /// transaction there would cost two round trips). For lookups and lists; see
    /// [`write`](Self::write) for anything that changes a row.
    pub fn read<T>(&self, f: impl FnOnce(&Tx<'_>) -> T) -> T {
        match &self.backend {
            Backend::Lite(l) => l.read(f),
            Backend::Pg(p) => p.read(f),
        }
    }

    /// A short point read that may run on an async thread when the store is SQLite (see
    /// [`is_postgres`](Self::is_postgres)): on a connection of its own, never behind this
    /// process's writes, and in WAL mode never waiting for another process's. On PostgreSQL
    /// it is a network round trip like [`read`](Self::read), for a blocking thread.
    pub fn read_aside<T>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.backend {
            Backend::Lite(l) => l.read_aside(f),
            Backend::Pg(p) => p.read(f),
        }
    }

    /// Runs `f` inside one transaction that holds the database's write lock (SQLite's
    /// `BEGIN IMMEDIATE`; on PostgreSQL an advisory lock every coordinator takes) and commits
    /// it; any error rolls back. Waits for the lock within the current budget.
    pub fn write<T, E>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let (value, wrote) = match &self.backend {
            Backend::Lite(l) => (l.write(f)?, true),
            Backend::Pg(p) => p.write(f)?,
        };
        if wrote {
            lite::bump(&self.commits);
        }
        Ok(value)
    }

    /// Like [`write`](Self::write) for work that often writes nothing (a claim on an empty
    /// queue). On SQLite `f` runs in a DEFERRED transaction, which reads without the write
    /// lock and takes it only at its first write, so a run that writes nothing never blocks
    /// another writer, never waits for one, and adds nothing to the WAL. Upgrading a read to a
    /// write fails at once with SQLITE_BUSY when another process holds the lock or wrote since
    /// `f` began reading (SQLite does not wait there: waiting could deadlock); then `f` runs
    /// again from the start under IMMEDIATE, as `write` would have. `busy` says whether an
    /// error of `f` is that failure. On PostgreSQL it is [`write`](Self::write).
    pub fn write_lazily<T, E>(
        &self,
        f: impl Fn(&Tx<'_>) -> Result<T, E>,
        busy: impl Fn(&E) -> bool,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        match &self.backend {
            Backend::Lite(l) => {
                let (value, wrote) = l.write_lazily(f, busy)?;
                if wrote {
                    lite::bump(&self.commits);
                }
                Ok(value)
            }
            Backend::Pg(_) => self.write(f),
        }
    }

    /// A number that changes whenever any connection, in any process, commits a change to the
    /// database (`PRAGMA data_version` for SQLite files; commits through this handle for
    /// `:memory:`; on PostgreSQL, notifications every commit sends). Cheap enough to poll
    /// every few milliseconds.
    pub fn data_version(&self) -> Result<u64, StoreError> {
        let local = self.commits.load(Ordering::Relaxed);
        match &self.backend {
            Backend::Lite(_) if matches!(*self.location, Location::Memory) => Ok(local),
            Backend::Lite(l) => l.data_version(),
            Backend::Pg(p) => Ok(p.data_version()?.wrapping_add(local)),
        }
    }

    /// Sets SQLite's automatic checkpoint threshold on this handle's connection (0 turns it
    /// off): for the benchmark's diagnostics of what checkpoints cost. The service never
    /// changes it. Nothing on PostgreSQL.
    pub fn set_wal_autocheckpoint(&self, frames: i64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Lite(l) => l.set_wal_autocheckpoint(frames),
            Backend::Pg(_) => Ok(()),
        }
    }

    /// Checkpoints the whole WAL into the database file and truncates it; returns the page
    /// size. For the benchmark, which measures the WAL a workload writes. 0 on PostgreSQL.
    pub fn checkpoint_truncate(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Lite(l) => l.checkpoint_truncate(),
            Backend::Pg(_) => Ok(0),
        }
    }

    /// The schema version (number of migrations applied).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Lite(l) => l.schema_version(),
            Backend::Pg(p) => p.schema_version(),
        }
    }

    /// The number of migrations this build knows.
    pub fn known_schema_version() -> usize {
        MIGRATIONS.len()
    }

    /// A cheap health probe: the backend's state and a trivial query.
    pub fn health(&self) -> Result<String, StoreError> {
        match &self.backend {
            Backend::Lite(l) => l.health(),
            Backend::Pg(p) => p.health(),
        }
    }

    /// Row counts of the domain tables, in [`DOMAIN_TABLES`] order.
    pub fn table_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.read(|tx| {
            DOMAIN_TABLES
                .iter()
                .map(|(table, count_sql)| {
                    let n = tx.one(count_sql, &[], |r| r.get::<i64>(0))?.unwrap_or(0);
                    Ok((table.to_string(), n))
                })
                .collect()
        })
    }
}

/// A connection for long reads: its own (file databases, PostgreSQL) or the shared one
/// (`:memory:`).
pub enum ReadConn<'a> {
    Lite(LiteReader<'a>),
    Pg(Box<pg::Pooled>),
}

impl ReadConn<'_> {
    /// The handle the table modules' functions take.
    pub fn tx(&self) -> Tx<'_> {
        match self {
            ReadConn::Lite(r) => Tx::lite(r.conn()),
            ReadConn::Pg(c) => Tx::pg(c),
        }
    }
}
