//! The database a test's coordinators share: SQLite (the data directory's `coordinator.db`, no
//! extra arguments) or PostgreSQL (a fresh database on the test cluster, `--db URL` for every
//! coordinator and CLI command), and [`both_backends!`](crate::common::both_backends), which
//! turns one test body into a `NAME::sqlite` and a `NAME::postgres` test. Tests that read or
//! tamper with rows from outside a coordinator do it here, with rusqlite or tokio-postgres.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use tokio_postgres::types::{ToSql, Type};

/// Writes one test body for both backends:
/// `both_backends! { #[tokio::test] async fn name(db: Db) { ... } }` makes the module `name`
/// with the tests `sqlite` and `postgres` (`cargo test --test queue postgres` runs the
/// PostgreSQL half). The attributes (the test attribute first, doc comments) go on both; a
/// plain `#[test] fn name(db: Db)` works the same way.
#[allow(unused_macros)]
macro_rules! both_backends {
    ($(#[$attr:meta])* async fn $name:ident($db:ident: Db) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn body($db: crate::common::db::Db) $body
            $(#[$attr])*
            async fn sqlite() {
                body(crate::common::db::Db::sqlite()).await
            }
            $(#[$attr])*
            async fn postgres() {
                body(crate::common::db::Db::postgres(stringify!($name))).await
            }
        }
    };
    ($(#[$attr:meta])* fn $name:ident($db:ident: Db) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn body($db: crate::common::db::Db) $body
            $(#[$attr])*
            fn sqlite() {
                body(crate::common::db::Db::sqlite())
            }
            $(#[$attr])*
            fn postgres() {
                body(crate::common::db::Db::postgres(stringify!($name)))
            }
        }
    };
}
pub(crate) use both_backends;

/// Where a test's coordinators keep their state.
#[derive(Debug, Clone)]
pub enum Db {
    /// `coordinator.db` in each coordinator's data directory (or the file `--db` names).
    Sqlite,
    /// An SQLite file elsewhere, named with `--db` (a database shared by coordinators with
    /// data directories of their own).
    SqliteFile(PathBuf),
    /// A database of its own on the test cluster.
    Postgres { url: String },
}

impl Db {
    pub fn sqlite() -> Db {
        Db::Sqlite
    }

    /// A fresh, empty PostgreSQL database named after `label`.
    pub fn postgres(label: &str) -> Db {
        Db::Postgres {
            url: mcp_coordinator::store::testing::fresh_database(label),
        }
    }

    /// The database coordinators with data directories of their own share: the SQLite file
    /// `file`, or this PostgreSQL database.
    pub fn shared(&self, file: &Path) -> Db {
        match self {
            Db::Sqlite | Db::SqliteFile(_) => Db::SqliteFile(file.to_path_buf()),
            Db::Postgres { .. } => self.clone(),
        }
    }

    /// Another database of the same kind, for a coordinator that must not share this one:
    /// on SQLite the data directory's own file (give it a data directory of its own), on
    /// PostgreSQL a fresh database.
    pub fn another(&self, label: &str) -> Db {
        match self {
            Db::Sqlite | Db::SqliteFile(_) => Db::Sqlite,
            Db::Postgres { .. } => Db::postgres(label),
        }
    }

    /// The SQLite file coordinators on `data_dir` use.
    fn file(&self, data_dir: &Path) -> PathBuf {
        match self {
            Db::SqliteFile(f) => f.clone(),
            _ => super::db_path(data_dir),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Db::Sqlite | Db::SqliteFile(_) => "sqlite",
            Db::Postgres { .. } => "postgres",
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres { .. })
    }

    /// The arguments that put a coordinator or a CLI command on this database: `--db URL`
    /// on PostgreSQL, nothing on SQLite (the data directory's file).
    pub fn args(&self) -> Vec<&str> {
        match self {
            Db::Sqlite => Vec::new(),
            Db::SqliteFile(f) => vec!["--db", f.to_str().unwrap()],
            Db::Postgres { url } => vec!["--db", url],
        }
    }

    /// [`args`](Self::args), then `extra`.
    pub fn with<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut all = self.args();
        all.extend_from_slice(extra);
        all
    }

    /// The `--db` value of this database as coordinators on `data_dir` use it: the URL, or
    /// the data directory's file.
    pub fn location(&self, data_dir: &Path) -> String {
        match self {
            Db::Sqlite | Db::SqliteFile(_) => self.file(data_dir).display().to_string(),
            Db::Postgres { url } => url.clone(),
        }
    }

    /// A coordinator command on this database ([`super::command`]).
    pub fn command(&self, data_dir: &Path, extra: &[&str]) -> tokio::process::Command {
        super::command(data_dir, &self.with(extra))
    }

    /// A coordinator on this database with a client in `era` ([`super::connect`]).
    pub async fn connect(&self, data_dir: &Path, extra: &[&str], era: super::Era) -> super::Client {
        super::connect(data_dir, &self.with(extra), era).await
    }

    /// A CLI command on this database ([`super::cli`]).
    pub fn cli(&self, data_dir: &Path, args: &[&str]) -> (i32, String, String) {
        super::cli(data_dir, &self.with(args))
    }

    /// A raw JSON-RPC server on this database ([`super::RawServer::spawn_with`]).
    pub fn raw_server(&self, data_dir: &Path, extra: &[&str]) -> super::RawServer {
        super::RawServer::spawn_with(data_dir, &self.with(extra))
    }

    /// A plain connection to this database as coordinators on `data_dir` use it, for tests
    /// that read rows from outside, or change them as someone with the database would.
    pub fn raw(&self, data_dir: &Path) -> Raw {
        match self {
            Db::Sqlite | Db::SqliteFile(_) => {
                Raw::Sqlite(rusqlite::Connection::open(self.file(data_dir)).unwrap())
            }
            Db::Postgres { url } => Raw::Postgres(PgConn::connect(url)),
        }
    }

    /// The first column of the first row of `sql`, read from outside (`None` when the query
    /// fails, as while a coordinator creates the database).
    pub fn query_i64(&self, data_dir: &Path, sql: &str) -> Option<i64> {
        match self {
            Db::Sqlite | Db::SqliteFile(_) => rusqlite::Connection::open(self.file(data_dir))
                .and_then(|c| c.query_row(sql, [], |r| r.get::<_, i64>(0)))
                .ok(),
            Db::Postgres { url } => PgConn::try_connect(url)
                .ok()?
                .try_rows(sql, &[])
                .ok()?
                .first()
                .and_then(|r| r.first())
                .and_then(Cell::as_i64),
        }
    }

    /// The newest event of the chain (0 when empty) and the newest signed head.
    pub fn heads(&self, data_dir: &Path) -> Option<(i64, i64)> {
        let head = self.query_i64(data_dir, "SELECT COALESCE(MAX(seq), 0) FROM audit_events")?;
        let signed = self.query_i64(
            data_dir,
            "SELECT COALESCE(MAX(seq), 0) FROM audit_signatures",
        )?;
        Some((head, signed))
    }

    /// [`super::settle_audit`] on this database.
    pub fn settle_audit(&self, data_dir: &Path) {
        super::settle(|| {
            self.query_i64(data_dir, "SELECT COALESCE(MAX(seq), 0) FROM audit_events")
                .unwrap_or(-1)
        });
    }

    /// [`super::settle_signed`] on this database: settled, then the head signed (5 s at most).
    pub fn settle_signed(&self, data_dir: &Path) {
        self.settle_audit(data_dir);
        self.wait_signed(data_dir);
    }

    /// Waits until the head of the chain is signed (5 s at most).
    pub fn wait_signed(&self, data_dir: &Path) {
        let started = std::time::Instant::now();
        loop {
            if let Some((head, signed)) = self.heads(data_dir)
                && head == signed
            {
                return;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "the audit head was not signed within 5 s ({})",
                self.name()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// A connection holding the database's write lock, as another process's write would,
    /// until `batch("COMMIT")` or drop: SQLite's `BEGIN IMMEDIATE`, or on PostgreSQL the
    /// advisory lock every coordinator's write transaction takes first (`WRITE_LOCK` in
    /// src/store/pg/mod.rs).
    pub fn hold_write_lock(&self, data_dir: &Path) -> Raw {
        const WRITE_LOCK: i64 = 0x6d63_7063_7772_6974;
        let raw = self.raw(data_dir);
        match &raw {
            Raw::Sqlite(_) => raw.batch("BEGIN IMMEDIATE"),
            Raw::Postgres(_) => raw.batch(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
            )),
        }
        raw
    }

    /// A copy of this database (coordinators on `data_dir` wrote it; none may be running on a
    /// PostgreSQL one) named `name`, opened with the audit tables' guard triggers dropped, as
    /// someone with write access to the database would. Returns the copy's `--db` value and
    /// the connection.
    pub fn tamper_copy(&self, data_dir: &Path, name: &str) -> (String, Raw) {
        match self {
            Db::Sqlite | Db::SqliteFile(_) => {
                let src = rusqlite::Connection::open(self.file(data_dir)).unwrap();
                let dst: PathBuf = data_dir.join(name);
                src.execute("VACUUM INTO ?1", [dst.to_str().unwrap()])
                    .unwrap();
                let conn = rusqlite::Connection::open(&dst).unwrap();
                conn.execute_batch(
                    "DROP TRIGGER audit_events_no_update; DROP TRIGGER audit_events_no_delete;
                     DROP TRIGGER audit_signatures_no_update; DROP TRIGGER audit_signatures_no_delete;",
                )
                .unwrap();
                (dst.display().to_string(), Raw::Sqlite(conn))
            }
            Db::Postgres { url } => {
                let copy = self.copy_database(url, name);
                let conn = PgConn::connect(&copy);
                conn.batch(
                    "DROP TRIGGER audit_events_no_update ON audit_events;
                     DROP TRIGGER audit_events_no_delete ON audit_events;
                     DROP TRIGGER audit_signatures_no_update ON audit_signatures;
                     DROP TRIGGER audit_signatures_no_delete ON audit_signatures;",
                );
                (copy, Raw::Postgres(conn))
            }
        }
    }

    /// `CREATE DATABASE ... TEMPLATE` of the database at `url`: its URL. PostgreSQL refuses a
    /// template someone is connected to, so a coordinator that just stopped may still be
    /// leaving: wait for it (10 s at most).
    fn copy_database(&self, url: &str, name: &str) -> String {
        let mut src = url::Url::parse(url).unwrap();
        let from = src.path().trim_start_matches('/').to_string();
        let to = format!(
            "{from}_{}",
            mcp_coordinator::store::testing::name_part(name)
        );
        src.set_path("/postgres");
        let admin = PgConn::connect(src.as_str());
        let started = std::time::Instant::now();
        loop {
            match admin.try_batch(&format!("CREATE DATABASE {to} TEMPLATE {from}")) {
                Ok(()) => break,
                Err(e) if started.elapsed() < std::time::Duration::from_secs(10) => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => panic!("CREATE DATABASE {to} TEMPLATE {from}: {e}"),
            }
        }
        src.set_path(&format!("/{to}"));
        src.to_string()
    }
}

/// A value read by [`Raw`].
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
}

impl Cell {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Cell::Int(i) => Some(*i),
            Cell::Text(s) => s.parse().ok(),
            Cell::Null => None,
        }
    }

    pub fn text(&self) -> String {
        match self {
            Cell::Int(i) => i.to_string(),
            Cell::Text(s) => s.clone(),
            Cell::Null => panic!("NULL where text was expected"),
        }
    }
}

/// A value sent by [`Raw`].
#[derive(Debug, Clone)]
pub enum Arg {
    Int(i64),
    Text(String),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(v.to_string())
    }
}

impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(v)
    }
}

impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Arg::Text(v.clone())
    }
}

/// `[Arg::from(a), ...]`, for [`Raw::exec`] and [`Raw::rows`].
#[allow(unused_macros)]
macro_rules! sql_args {
    ($($a:expr),* $(,)?) => { &[$($crate::common::db::Arg::from($a)),*] };
}
pub(crate) use sql_args;

/// A plain connection to a test's database, outside any coordinator. SQL is written once with
/// SQLite's `?1` placeholders (sent as `$1` to PostgreSQL).
pub enum Raw {
    Sqlite(rusqlite::Connection),
    Postgres(PgConn),
}

impl Raw {
    /// Runs one statement; panics with the database's message when it fails.
    pub fn exec(&self, sql: &str, args: &[Arg]) -> usize {
        self.try_exec(sql, args)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs one statement; the database's message when it fails.
    pub fn try_exec(&self, sql: &str, args: &[Arg]) -> Result<usize, String> {
        match self {
            Raw::Sqlite(c) => c
                .execute(sql, rusqlite::params_from_iter(args.iter().map(lite_arg)))
                .map_err(|e| e.to_string()),
            Raw::Postgres(c) => c.try_execute(&dollars(sql), args),
        }
    }

    /// Runs several statements (no arguments).
    pub fn batch(&self, sql: &str) {
        match self {
            Raw::Sqlite(c) => c.execute_batch(sql).unwrap(),
            Raw::Postgres(c) => c.batch(sql),
        }
    }

    /// Every row of a query.
    pub fn rows(&self, sql: &str, args: &[Arg]) -> Vec<Vec<Cell>> {
        match self {
            Raw::Sqlite(c) => {
                let mut stmt = c.prepare(sql).unwrap();
                let n = stmt.column_count();
                stmt.query_map(rusqlite::params_from_iter(args.iter().map(lite_arg)), |r| {
                    (0..n)
                        .map(|i| {
                            Ok(match r.get_ref(i)? {
                                rusqlite::types::ValueRef::Null => Cell::Null,
                                rusqlite::types::ValueRef::Integer(v) => Cell::Int(v),
                                rusqlite::types::ValueRef::Text(t) => {
                                    Cell::Text(String::from_utf8_lossy(t).into_owned())
                                }
                                other => panic!("unexpected column value {other:?}"),
                            })
                        })
                        .collect()
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
            }
            Raw::Postgres(c) => c
                .try_rows(&dollars(sql), args)
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        }
    }

    /// The first row of a query, which must have one.
    pub fn row(&self, sql: &str, args: &[Arg]) -> Vec<Cell> {
        self.rows(sql, args)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no row: {sql}"))
    }
}

fn lite_arg(a: &Arg) -> rusqlite::types::Value {
    match a {
        Arg::Int(i) => rusqlite::types::Value::Integer(*i),
        Arg::Text(s) => rusqlite::types::Value::Text(s.clone()),
    }
}

/// `?N` placeholders as PostgreSQL's `$N` (the tests' SQL has no `?` in its literals).
fn dollars(sql: &str) -> String {
    sql.replace('?', "$")
}

/// A tokio-postgres connection driven on a runtime of its own, waited on with a plain
/// executor, so sync and async tests (whatever their runtime) use it alike.
pub struct PgConn {
    client: tokio_postgres::Client,
}

fn pg_runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    })
}

impl PgConn {
    pub fn connect(url: &str) -> PgConn {
        PgConn::try_connect(url).unwrap_or_else(|e| panic!("connect to {url}: {e}"))
    }

    pub fn try_connect(url: &str) -> Result<PgConn, String> {
        let url = url.to_string();
        let client = futures_executor::block_on(pg_runtime().spawn(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok::<_, String>(client)
        }))
        .map_err(|e| e.to_string())??;
        Ok(PgConn { client })
    }

    fn try_batch(&self, sql: &str) -> Result<(), String> {
        futures_executor::block_on(self.client.batch_execute(sql)).map_err(describe)
    }

    pub fn batch(&self, sql: &str) {
        self.try_batch(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn try_execute(&self, sql: &str, args: &[Arg]) -> Result<usize, String> {
        let params = pg_args(args);
        futures_executor::block_on(self.client.execute_typed(sql, &params))
            .map(|n| n as usize)
            .map_err(describe)
    }

    fn try_rows(&self, sql: &str, args: &[Arg]) -> Result<Vec<Vec<Cell>>, String> {
        let params = pg_args(args);
        let rows =
            futures_executor::block_on(self.client.query_typed(sql, &params)).map_err(describe)?;
        Ok(rows
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| match *r.columns()[i].type_() {
                        Type::INT8 => r.get::<_, Option<i64>>(i).map_or(Cell::Null, Cell::Int),
                        Type::INT4 => r
                            .get::<_, Option<i32>>(i)
                            .map_or(Cell::Null, |v| Cell::Int(v.into())),
                        Type::BOOL => r
                            .get::<_, Option<bool>>(i)
                            .map_or(Cell::Null, |v| Cell::Int(v.into())),
                        _ => r.get::<_, Option<String>>(i).map_or(Cell::Null, Cell::Text),
                    })
                    .collect()
            })
            .collect())
    }
}

fn pg_args(args: &[Arg]) -> Vec<(&(dyn ToSql + Sync), Type)> {
    args.iter()
        .map(|a| match a {
            Arg::Int(i) => (i as &(dyn ToSql + Sync), Type::INT8),
            Arg::Text(s) => (s as &(dyn ToSql + Sync), Type::TEXT),
        })
        .collect()
}

/// The server's message (a `DbError` says more than tokio-postgres's `Display`).
fn describe(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}
