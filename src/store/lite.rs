//! The SQLite backend: one connection per process behind a mutex, `BEGIN IMMEDIATE` writes
//! that wait for other processes within the current lock-wait budget, lazy writes, the
//! `data_version` watch, and the background checkpointer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::Instant;

use rusqlite::Connection;

use super::error::LOCKED;
use super::open::open_connection;
use super::{Location, StoreError, Tx, budget, checkpointer};

/// The SQLite side of a [`Store`](super::Store): one connection per process, guarded by a
/// mutex. SQLite calls here take microseconds, and a single writer per process keeps the
/// audit chain's head consistent without extra locking.
#[derive(Clone)]
pub(super) struct Lite {
    conn: Arc<Mutex<Connection>>,
    location: Arc<Location>,
    /// A second connection (opened on first use) for `PRAGMA data_version`, so long polls
    /// notice commits of any process without touching the main connection, and for the
    /// point reads of [`Lite::read_aside`].
    watch: Arc<OnceLock<Mutex<Connection>>>,
    /// The background checkpointer, once started (see [`Lite::start_checkpointer`]).
    checkpointer: Arc<OnceLock<checkpointer::Nudge>>,
}

/// An open transaction on a connection: rolled back when dropped uncommitted (the closure of
/// [`Lite::write`] failed or panicked). BEGIN and COMMIT come from the statement cache:
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

impl Lite {
    pub(super) fn new(conn: Connection, location: Arc<Location>) -> Self {
        Lite {
            conn: Arc::new(Mutex::new(conn)),
            location,
            watch: Arc::new(OnceLock::new()),
            checkpointer: Arc::new(OnceLock::new()),
        }
    }

    pub(super) fn start_checkpointer(&self) -> Result<(), StoreError> {
        if matches!(*self.location, Location::Memory) || self.checkpointer.get().is_some() {
            return Ok(());
        }
        let nudge = checkpointer::start(&self.location)?;
        // A second start racing this one drops its nudge, which ends its thread.
        let _ = self.checkpointer.set(nudge);
        Ok(())
    }

    /// Tells the checkpointer of a commit.
    pub(super) fn committed(&self) {
        if let Some(nudge) = self.checkpointer.get() {
            nudge.commit();
        }
    }

    /// Locks the process's connection. A poisoned lock (a panic while holding it) is recovered:
    /// SQLite rolls back any transaction left open, so the data is consistent.
    /// A wait for it (another thread of this process is using it) counts against the current
    /// lock-wait budget ([`budget`]).
    pub(super) fn lock(&self) -> MutexGuard<'_, Connection> {
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

    /// Runs `f`'s statements in one read transaction: they see one snapshot (the counts of
    /// `coordinator_status` agree with each other), and WAL's read lock, two `fcntl` calls, is
    /// taken once rather than once per statement (a sixth of a status call's time before).
    pub(super) fn read<T>(&self, f: impl FnOnce(&Tx<'_>) -> T) -> T {
        let conn = self.lock();
        // Should BEGIN fail, the statements run as before, each in a snapshot of its own.
        let snapshot = Open::begin(&conn, "BEGIN").ok();
        let value = f(&Tx::lite(&conn));
        // Nothing read here writes (that is `write`'s, whose BEGIN IMMEDIATE waits for the
        // lock: a write in this transaction would fail at once if another process had written
        // since it began). A failed COMMIT rolls back when the guard drops.
        if let Some(snapshot) = snapshot {
            let _ = snapshot.commit();
        }
        value
    }

    /// One `BEGIN IMMEDIATE` transaction: IMMEDIATE takes the write lock up front, so two
    /// processes never deadlock upgrading a read. Returns whether it committed.
    pub(super) fn write<T, E>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let conn = self.lock_for_write()?;
        let tx = Open {
            conn: &conn,
            open: true,
        };
        let value = f(&Tx::lite(&conn))?;
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

    /// See [`Store::write_lazily`](super::Store::write_lazily). Returns the value and whether
    /// anything was committed.
    pub(super) fn write_lazily<T, E>(
        &self,
        f: impl Fn(&Tx<'_>) -> Result<T, E>,
        busy: impl Fn(&E) -> bool,
    ) -> Result<(T, bool), E>
    where
        E: From<StoreError>,
    {
        {
            let conn = self.lock();
            let before = conn.total_changes();
            let tx = Open::begin(&conn, "BEGIN DEFERRED")?;
            match f(&Tx::lite(&conn)) {
                Ok(value) => {
                    let wrote = conn.total_changes() != before;
                    tx.commit()?;
                    if wrote {
                        self.committed();
                    }
                    return Ok((value, wrote));
                }
                Err(e) if busy(&e) => {} // dropped: rolled back; try again below
                Err(e) => return Err(e),
            }
        }
        self.write(f).map(|v| (v, true))
    }

    /// The second connection (files only), opened on first use.
    fn watch(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        let watch = match self.watch.get() {
            Some(w) => w,
            None => {
                let conn = open_connection(&self.location)?;
                self.watch.get_or_init(|| Mutex::new(conn))
            }
        };
        Ok(watch.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// `PRAGMA data_version` on a connection of its own (files only).
    pub(super) fn data_version(&self) -> Result<u64, StoreError> {
        let version: i64 = self
            .watch()?
            .pragma_query_value(None, "data_version", |r| r.get(0))?;
        Ok(version as u64)
    }

    /// A short read on the second connection (the shared one for `:memory:`): never behind
    /// this process's writes, which hold the main connection, and in WAL mode never waiting
    /// for another process's.
    pub(super) fn read_aside<T>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if matches!(*self.location, Location::Memory) {
            return self.read(f);
        }
        let conn = self.watch()?;
        f(&Tx::lite(&conn))
    }

    pub(super) fn set_wal_autocheckpoint(&self, frames: i64) -> Result<(), StoreError> {
        Ok(self
            .lock()
            .pragma_update(None, "wal_autocheckpoint", frames)?)
    }

    pub(super) fn checkpoint_truncate(&self) -> Result<u64, StoreError> {
        let conn = self.lock();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        Ok(conn.pragma_query_value(None, "page_size", |r| r.get(0))?)
    }

    pub(super) fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .lock()
            .prepare_cached("PRAGMA user_version")?
            .query_row([], |r| r.get(0))?)
    }

    pub(super) fn health(&self) -> Result<String, StoreError> {
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

    /// A connection for long reads: its own (files), or the shared one (`:memory:`).
    pub(super) fn reader(&self) -> Result<LiteReader<'_>, StoreError> {
        match &*self.location {
            Location::File(_) => Ok(LiteReader::Own(open_connection(&self.location)?)),
            _ => Ok(LiteReader::Shared(self.lock())),
        }
    }
}

/// A SQLite connection for long reads.
pub enum LiteReader<'a> {
    Own(Connection),
    Shared(MutexGuard<'a, Connection>),
}

impl LiteReader<'_> {
    pub(super) fn conn(&self) -> &Connection {
        match self {
            LiteReader::Own(c) => c,
            LiteReader::Shared(c) => c,
        }
    }
}

/// Counts commits through one handle: what a `:memory:` database has instead of
/// `data_version`, and what the benchmark reads.
pub(super) fn bump(commits: &AtomicU64) {
    commits.fetch_add(1, Ordering::Relaxed);
}
