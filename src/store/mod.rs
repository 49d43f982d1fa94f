//! The store: everything the coordinator keeps, behind one surface. SQLite today (`open.rs`:
//! WAL, busy handler, migrations); one module per table group (`task.rs`, `approval.rs`, ...)
//! whose functions take the [`Tx`] handle the domain gets from [`Store::write`] or
//! [`Store::read`]; errors that say what happened (`error.rs`); lock-wait budgets
//! (`budget.rs`). Only this folder names rusqlite or holds SQL: a second backend implements
//! the same functions. Depends on nothing in the crate but the domains' leaf value types
//! (status enums).

pub mod access;
pub mod agent;
pub mod approval;
pub mod assessment;
pub mod audit;
pub mod budget;
mod checkpointer;
mod closed;
mod error;
pub mod instance;
mod open;
pub mod overseer;
pub mod pipeline;
pub mod remediation;
pub mod secret;
pub mod task;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::Instant;

use rusqlite::Connection;

use error::LOCKED;
/// The database path that means "no file": state lives in memory and dies with the process.
pub use error::StoreError;
use open::MIGRATIONS;
pub use open::create_private_dir;
use open::{migrate, open_connection, open_connection_with};

pub const MEMORY: &str = ":memory:";

/// The database as the domain sees it inside [`Store::write`] or [`Store::read`]: a handle it
/// passes to the functions of `store/`'s table modules and cannot otherwise use. Only `store/`
/// reaches the connection under it, so no domain file names rusqlite, and a second backend
/// implements the same functions over its own handle.
pub struct Tx<'c> {
    conn: &'c Connection,
}

impl<'c> Tx<'c> {
    /// The connection under the handle: for the table modules only.
    pub(in crate::store) fn conn(&self) -> &'c Connection {
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
    pub(in crate::store) fn lock(&self) -> MutexGuard<'_, Connection> {
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

    /// Runs one SQL statement as it is: for domain tests that tamper with rows the way an
    /// attacker with the file would.
    #[cfg(test)]
    pub(crate) fn execute_for_test(&self, sql: &str) -> Result<usize, StoreError> {
        Ok(self.lock().execute(sql, [])?)
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

    /// Sets SQLite's automatic checkpoint threshold on this handle's connection (0 turns it
    /// off): for the benchmark's diagnostics of what checkpoints cost. The service never
    /// changes it.
    pub fn set_wal_autocheckpoint(&self, frames: i64) -> Result<(), StoreError> {
        Ok(self
            .lock()
            .pragma_update(None, "wal_autocheckpoint", frames)?)
    }

    /// Checkpoints the whole WAL into the database file and truncates it; returns the page
    /// size. For the benchmark, which measures the WAL a workload writes.
    pub fn checkpoint_truncate(&self) -> Result<u64, StoreError> {
        let conn = self.lock();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        Ok(conn.pragma_query_value(None, "page_size", |r| r.get(0))?)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rusqlite_migration::Migrations;

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
            tx.conn().execute("INSERT INTO t VALUES (1)", [])?;
            Err("refused".into())
        });
        assert!(failed.is_err());
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.write(|tx| -> Result<(), StoreError> {
                tx.conn()
                    .execute("INSERT INTO t VALUES (2)", [])
                    .map_err(StoreError::from_sqlite)?;
                panic!("a bug in the closure")
            })
        }));
        assert!(panicked.is_err());
        store.write(|tx| -> Result<(), StoreError> {
            tx.conn()
                .execute("INSERT INTO t VALUES (3)", [])
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
                tx.conn().execute("INSERT INTO t VALUES (1)", [])?;
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
            tx.conn()
                .execute("INSERT INTO t VALUES (zeroblob(100000))", [])?;
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

    /// 0011 rebuilds `approvals` (for the `console` channel): rows, the questions that
    /// reference them, the final-decision triggers and the foreign key all survive it.
    #[test]
    fn migration_0011_keeps_approvals_questions_and_their_rules()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.db");
        let mut conn = Connection::open(&path)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Migrations::from_slice(&MIGRATIONS[..10]).to_latest(&mut conn)?;
        let row = |id: &str, state: &str, decided: Option<&str>| {
            conn.execute(
                "INSERT INTO approvals (id, kind, subject_id, summary, action, action_hash, risk, \
                 requested_by, created_at, expires_at, decide_with, state, decided_by, \
                 decided_via, decided_at) VALUES (?1, 'generic', '', 's', '{}', 'h', 'low', \
                 'client:t', '2026-01-01T00:00:00Z', '2099-01-01T00:00:00Z', 'elicitation', \
                 ?2, ?3, ?4, ?3)",
                rusqlite::params![id, state, decided, decided.map(|_| "cli")],
            )
        };
        row("a1", "pending", None)?;
        row("a2", "approved", Some("2026-01-02T00:00:00Z"))?;
        conn.execute(
            "INSERT INTO approval_questions (nonce, approval_id, asked_at) VALUES ('n1', 'a1', 'x')",
            [],
        )?;
        drop(conn);

        let store = Store::open(&Location::File(path))?;
        let conn = store.lock();
        let count: i64 = conn.query_row("SELECT COUNT(*) FROM approvals", [], |r| r.get(0))?;
        assert_eq!(count, 2);
        let via: String = conn.query_row(
            "SELECT decided_via FROM approvals WHERE id = 'a2'",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(via, "cli");
        // The console channel is now accepted...
        conn.execute(
            "UPDATE approvals SET state = 'approved', decided_by = 'overseer:x', \
             decided_via = 'console', decided_at = 'y' WHERE id = 'a1'",
            [],
        )?;
        // ...an unknown one still is not, decisions stay final, and nothing is deleted.
        let unknown = conn.execute(
            "UPDATE approvals SET decided_via = 'carrier-pigeon' WHERE id = 'a2'",
            [],
        );
        assert!(unknown.is_err());
        let refinal = conn.execute(
            "UPDATE approvals SET state = 'rejected' WHERE id = 'a2'",
            [],
        );
        assert!(
            refinal.is_err_and(|e| e.to_string().contains("final")),
            "decisions are final"
        );
        assert!(
            conn.execute("DELETE FROM approvals WHERE id = 'a2'", [])
                .is_err()
        );
        // The question still points at its approval, and the foreign key still holds.
        let q: String = conn.query_row(
            "SELECT approval_id FROM approval_questions WHERE nonce = 'n1'",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(q, "a1");
        let orphan = conn.execute(
            "INSERT INTO approval_questions (nonce, approval_id, asked_at) VALUES ('n2', 'nope', 'x')",
            [],
        );
        assert!(orphan.is_err(), "the foreign key to approvals holds");
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
