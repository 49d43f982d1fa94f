//! The checkpointer: copies the WAL back into the database file on a thread and connection of
//! its own, so that the copying and its fsync happen beside the commits instead of inside one.
//!
//! Without it SQLite checkpoints in whichever commit pushes the WAL past its threshold, and
//! that caller waits for every changed page to be copied and the file to be synced. A
//! PASSIVE checkpoint here never waits for readers or writers and changes nothing about
//! durability: a commit is durable once it is in the WAL either way. The automatic checkpoint
//! stays on as a backstop for when this thread falls behind.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use rusqlite::Connection;

use super::{Location, StoreError};

/// How long after a commit the checkpointer waits for more before it copies: under load, one
/// checkpoint per this many commits' worth of WAL rather than one per commit.
const SETTLE: Duration = Duration::from_millis(50);

/// Tells the checkpointer that something was committed.
#[derive(Debug)]
pub(super) struct Nudge(SyncSender<()>);

impl Nudge {
    pub(super) fn commit(&self) {
        // Full means a nudge is already waiting: nothing to add.
        if let Err(TrySendError::Disconnected(())) = self.0.try_send(()) {
            tracing::debug!("the checkpointer has stopped");
        }
    }
}

/// Starts the checkpointer for the database at `location` (a file). It ends when the last
/// [`Nudge`] is dropped.
pub(super) fn start(location: &Location) -> Result<Nudge, StoreError> {
    let conn = super::open_connection(location)?;
    let (nudge, nudged) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("checkpointer".into())
        .spawn(move || run(&conn, &nudged))
        .map_err(|e| StoreError::Open {
            path: location.display(),
            cause: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
        })?;
    Ok(Nudge(nudge))
}

fn run(conn: &Connection, nudged: &Receiver<()>) {
    while nudged.recv().is_ok() {
        std::thread::sleep(SETTLE);
        while nudged.try_recv().is_ok() {}
        // A checkpoint that could not copy everything (a reader still needs old pages) is
        // continued at the next nudge.
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        if let Err(e) = done {
            tracing::debug!(error = %e, "background checkpoint failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::store::{Location, Store, StoreError};

    /// With the writing connection's automatic checkpoints off, committed pages reach the
    /// database file only if the checkpointer copies them there.
    #[test]
    fn commits_reach_the_database_file_without_the_writer_checkpointing()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.db");
        let store = Store::open(&Location::File(path.clone()))?;
        store
            .lock()
            .execute_batch("PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (x BLOB);")?;
        let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let insert = |n: usize| -> Result<(), StoreError> {
            for _ in 0..n {
                store.write(|tx| {
                    tx.conn()
                        .execute("INSERT INTO t VALUES (zeroblob(4000))", [])
                        .map_err(StoreError::from_sqlite)
                })?;
            }
            Ok(())
        };
        let before = size();
        insert(200)?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(size(), before, "nothing copies the WAL back yet");

        store.start_checkpointer()?;
        insert(200)?;
        let started = Instant::now();
        while size() < before + 1_500_000 && started.elapsed().as_secs() < 5 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            size() >= before + 1_500_000,
            "the database file has {} bytes, {before} before 400 rows of 4 KB",
            size()
        );
        Ok(())
    }
}
