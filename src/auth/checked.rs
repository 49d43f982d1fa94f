//! What a local token's check remembers between requests: the token's row, for as long as no
//! revocation has been made on the database since, and at most a minute.
//!
//! Reading the row on every request cost a SQLite read transaction per request, behind the
//! audit log's writes (a third of an HTTP call's time under load). A revocation is still seen
//! at the next request, in every process on the database: each revocation appends a byte to
//! a file beside the SQLite database (`<database>.revocations`, after its commit), and a check
//! uses a remembered row only while that file's identity and length are what they were before
//! the row was read: one `stat` per request. The minute bounds a change made to the database
//! some other way. Rows of a PostgreSQL database, shared by machines that see no common file,
//! are read on every request as before.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::store::Location;
use crate::store::access::AccessRow;

/// The longest a remembered row is used without reading it again.
const MAX_AGE: Duration = Duration::from_secs(60);
/// Rows remembered at most; past this the stale ones go, then all.
const MAX_ROWS: usize = 4096;

/// What says whether a revocation was made: the revocations file's inode, length and change
/// time (zeros while there is none; the time, because a file deleted and made again can get
/// the same inode and length), and this process's own count of revocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    file: (u64, u64, i64, i64),
    here: u64,
}

/// What a check found for one bearer: its row, and the expiry its JWT says (none for an API
/// key).
#[derive(Debug, Clone)]
pub(super) struct Remembered {
    pub row: AccessRow,
    pub exp: Option<i64>,
}

/// The rows remembered, and where revocations are signalled.
#[derive(Debug)]
pub(super) struct Checked {
    /// `None`: nothing is remembered (PostgreSQL).
    mode: Option<Signal>,
    rows: Mutex<HashMap<String, (Remembered, Stamp, Instant)>>,
    here: AtomicU64,
}

#[derive(Debug)]
enum Signal {
    /// The revocations file beside a SQLite database.
    File(PathBuf),
    /// An in-memory database: one process, whose own count is enough.
    Process,
}

/// The revocations file of the SQLite database at `database`: beside the file it names once
/// links are followed, as SQLite's own `-wal` is, so that every process on one database finds
/// the same one whatever path it was given.
pub fn revocations_file(database: &Path) -> PathBuf {
    let database = std::fs::canonicalize(database).unwrap_or_else(|_| database.to_path_buf());
    let mut name = database.as_os_str().to_owned();
    name.push(".revocations");
    PathBuf::from(name)
}

impl Checked {
    pub(super) fn new(location: &Location) -> Self {
        let mode = match location {
            Location::File(path) => Some(Signal::File(revocations_file(path))),
            Location::Memory => Some(Signal::Process),
            Location::Postgres(_) => None,
        };
        Checked {
            mode,
            rows: Mutex::default(),
            here: AtomicU64::new(0),
        }
    }

    /// The stamp now, taken before a row is read; `None` when nothing may be remembered (or
    /// the file cannot be looked at).
    pub(super) fn stamp(&self) -> Option<Stamp> {
        let here = self.here.load(Ordering::Acquire);
        let file = match self.mode.as_ref()? {
            Signal::Process => (0, 0, 0, 0),
            Signal::File(path) => match std::fs::metadata(path) {
                Ok(m) => {
                    use std::os::unix::fs::MetadataExt;
                    (m.ino(), m.len(), m.ctime(), m.ctime_nsec())
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, 0, 0, 0),
                Err(_) => return None,
            },
        };
        Some(Stamp { file, here })
    }

    /// What was remembered under `key`, if its row was read when the stamp was `now`'s and
    /// less than [`MAX_AGE`] ago.
    pub(super) fn get(&self, key: &str, now: Stamp) -> Option<Remembered> {
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        rows.get(key)
            .filter(|(_, seen, at)| *seen == now && at.elapsed() < MAX_AGE)
            .map(|(row, _, _)| row.clone())
    }

    /// Remembers `found`, whose row was read after the stamp was `seen`.
    pub(super) fn put(&self, key: String, found: Remembered, seen: Stamp) {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        if rows.len() >= MAX_ROWS {
            rows.retain(|_, (_, _, at)| at.elapsed() < MAX_AGE);
            if rows.len() >= MAX_ROWS {
                rows.clear();
            }
        }
        rows.insert(key, (found, seen, Instant::now()));
    }

    /// Opens the revocations file before a revocation is written, so that one that could
    /// not be signalled is not made.
    pub(super) fn prepare(&self) -> std::io::Result<Option<std::fs::File>> {
        let Some(Signal::File(path)) = &self.mode else {
            return Ok(None);
        };
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map(Some)
    }

    /// Signals a revocation just committed: to this process, and through `file` (from
    /// [`prepare`](Self::prepare)) to every other.
    pub(super) fn revoked(&self, file: Option<std::fs::File>) -> std::io::Result<()> {
        self.here.fetch_add(1, Ordering::AcqRel);
        self.rows.lock().unwrap_or_else(|p| p.into_inner()).clear();
        match file {
            Some(mut f) => f.write_all(b"."),
            None => Ok(()),
        }
    }

    /// Where revocations are signalled, for error messages.
    pub(super) fn file(&self) -> Option<&Path> {
        match &self.mode {
            Some(Signal::File(path)) => Some(path),
            _ => None,
        }
    }
}
