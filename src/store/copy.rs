//! `store copy`: every row of one coordinator database into another, empty one, on either
//! backend (SQLite to PostgreSQL when a team starts sharing, and back). Tables go parents
//! first; columns by name, as the target has them; rows in primary-key order, read from one
//! snapshot of the source and written in multi-row INSERTs inside one transaction on the
//! target, so a copy that fails (or whose check fails) leaves the target as empty as it was.
//! The audit chain is copied like any other table, row by row; the caller verifies it inside
//! the same transaction (see [`copy`]).

use std::collections::BTreeSet;

use super::sql::{Kind, Param, Val, Value, values_list};
use super::{Location, Store, StoreError, Tx, pg};

/// One table of the coordinator database: its name and primary key (the order rows are read
/// and written in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    pub key: &'static [&'static str],
    /// The row the schema itself inserts (`overseer_lock`'s one row), as a condition: such a
    /// row is not data, and the copy writes over it rather than beside it.
    seed: Option<&'static str>,
}

impl Table {
    /// Its primary key's columns, quoted, as `ORDER BY` and `ON CONFLICT` take them.
    fn key_list(&self) -> String {
        self.key
            .iter()
            .map(|k| quoted(k))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

const fn table(name: &'static str, key: &'static [&'static str]) -> Table {
    Table {
        name,
        key,
        seed: None,
    }
}

/// Every table, parents before the tables whose foreign keys point at them. A migration that
/// adds a table adds it here (a test compares this list with both schemas).
pub const TABLES: &[Table] = &[
    table("audit_events", &["seq"]),
    table("audit_signatures", &["seq"]),
    table("approvals", &["id"]),
    table("approval_questions", &["nonce"]),
    table("agents", &["id"]),
    table("tasks", &["id"]),
    table("pipelines", &["id"]),
    table("pipeline_versions", &["pipeline_id", "version"]),
    table("pipeline_runs", &["id"]),
    table("pipeline_stage_runs", &["run_id", "stage"]),
    table("secrets", &["name"]),
    table("assessments", &["id"]),
    table("remediations", &["id"]),
    table("instances", &["id"]),
    table("instance_tool_pins", &["type", "tool"]),
    table("overseer_credentials", &["seq"]),
    Table {
        name: "overseer_lock",
        key: &["id"],
        seed: Some("id = 1 AND failures = 0 AND locked_until IS NULL"),
    },
    table("access_tokens", &["id"]),
    // The fleet's rows travel too: the target's `coordinator_status` shows the source's
    // coordinators as stopped or gone, which is their history.
    table("coordinators", &["id"]),
];

/// Rows per INSERT (fewer for wide tables, to stay under [`MAX_PARAMS`]).
const ROWS_PER_BATCH: usize = 500;
/// Bound values per statement at most: SQLite allows 32,766, PostgreSQL 65,535.
const MAX_PARAMS: usize = 30_000;

/// What a copy wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Rows per table, in [`TABLES`] order, every table (those with none too).
    pub tables: Vec<(&'static str, u64)>,
    /// The audit chain's newest event on the target: its sequence number and hash.
    pub head: Option<(i64, String)>,
}

impl Copied {
    /// Rows written in all.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }
}

/// Which database of a copy an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "the source",
            Side::Target => "the target",
        })
    }
}

/// Why a copy did not happen. Nothing was written to the target in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source holds no coordinator database.
    #[error("{db} holds no coordinator database (nothing was created)")]
    NoSource { db: String },
    /// A database at another schema version than this build's: copying column by column
    /// between two versions would drop or invent columns.
    #[error("{}", schema_message(*side, db, *found, *known))]
    SchemaVersion {
        side: Side,
        db: String,
        found: i64,
        known: i64,
    },
    /// The target already holds data: a copy never merges two histories.
    #[error(
        "the target {db} already holds data ({}): store copy writes only into an empty database, so two histories are never merged; give a new database",
        shown_counts(tables)
    )]
    NotEmpty {
        db: String,
        tables: Vec<(&'static str, i64)>,
    },
    /// A table whose columns differ between the two databases.
    #[error(
        "table {table}: the columns differ (only in the source: {only_source:?}; only in the target: {only_target:?})"
    )]
    Columns {
        table: &'static str,
        only_source: Vec<String>,
        only_target: Vec<String>,
    },
    /// Reading or writing one table failed.
    #[error("table {table}: {source}")]
    Table {
        table: &'static str,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn schema_message(side: Side, db: &str, found: i64, known: i64) -> String {
    let advice = if found > known {
        "upgrade mcp-coordinator to the version that wrote it"
    } else if side == Side::Source {
        "open it once with this build (any command on it, such as `mcp-coordinator audit verify --db ...`, migrates it), then copy"
    } else {
        "give an empty database"
    };
    format!("{side} {db} has schema version {found} and this build's is {known}: {advice}")
}

fn shown_counts(tables: &[(&str, i64)]) -> String {
    tables
        .iter()
        .map(|(t, n)| format!("{t}: {n} row{}", if *n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// This build's schema version.
fn known_version() -> i64 {
    i64::try_from(Store::known_schema_version()).unwrap_or(i64::MAX)
}

/// The schema version of the database at `location`, read without creating, migrating or
/// changing anything: `None` when there is no coordinator database there (no file; a
/// PostgreSQL database without the coordinator's schema).
pub fn schema_version_at(location: &Location) -> Result<Option<i64>, StoreError> {
    match location {
        Location::Memory => Ok(None),
        Location::Postgres(url) => pg::schema_version_at(url),
        Location::File(path) if !path.exists() => Ok(None),
        Location::File(path) => {
            let conn = rusqlite::Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|cause| StoreError::Open {
                path: location.display(),
                cause,
            })?;
            let version: i64 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(|cause| StoreError::Open {
                    path: location.display(),
                    cause,
                })?;
            Ok((version > 0).then_some(version))
        }
    }
}

/// Opens the database to copy from: it must exist and be at this build's schema version (it
/// is neither created nor migrated).
pub fn open_source(location: &Location) -> Result<Store, CopyError> {
    let db = location.display();
    match schema_version_at(location)? {
        None => Err(CopyError::NoSource { db }),
        Some(found) if found != known_version() => Err(CopyError::SchemaVersion {
            side: Side::Source,
            db,
            found,
            known: known_version(),
        }),
        Some(_) => Ok(Store::open_existing(location)?),
    }
}

/// Opens (creating when missing) the database to copy into: a new one, or one at this build's
/// schema version; whether it is empty is checked inside the copy's transaction.
pub fn open_target(location: &Location) -> Result<Store, CopyError> {
    match schema_version_at(location)? {
        Some(found) if found != known_version() => Err(CopyError::SchemaVersion {
            side: Side::Target,
            db: location.display(),
            found,
            known: known_version(),
        }),
        // A new file is created (its directory too, private) like any coordinator database.
        _ => Ok(Store::open_with_pool(location, 2)?),
    }
}

/// Copies every row of `source` into `target`, which must hold none, in one transaction on
/// the target; `check` runs inside that transaction once every row is in (the audit chain's
/// verification), and an error from it, like any other, rolls the whole copy back. The source
/// is read from one snapshot, so a coordinator still writing to it does not tear the copy.
pub fn copy<T, E>(
    source: &Store,
    target: &Store,
    check: impl FnOnce(&Tx<'_>, &Copied) -> Result<T, E>,
) -> Result<(Copied, T), E>
where
    E: From<CopyError> + From<StoreError>,
{
    let reader = source.reader()?;
    let snapshot = Snapshot::begin(reader.tx())?;
    let db = target.location().display();
    let copied = target.write(|to| {
        refuse_data(to, &db)?;
        let mut tables = Vec::with_capacity(TABLES.len());
        for t in TABLES {
            let n = copy_table(&snapshot.tx, to, t)?;
            tables.push((t.name, n));
        }
        let copied = Copied {
            tables,
            head: chain_head(to)?,
        };
        let checked = check(to, &copied)?;
        Ok::<_, E>((copied, checked))
    })?;
    snapshot.end()?;
    Ok(copied)
}

/// A read transaction on the source: one snapshot for every table (SQLite's deferred
/// transaction in WAL mode; PostgreSQL's repeatable read). Rolled back when dropped unended.
struct Snapshot<'c> {
    tx: Tx<'c>,
    open: bool,
}

impl<'c> Snapshot<'c> {
    fn begin(tx: Tx<'c>) -> Result<Self, StoreError> {
        tx.exec(
            if tx.is_postgres() {
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
            } else {
                "BEGIN"
            },
            &[],
        )?;
        Ok(Snapshot { tx, open: true })
    }

    fn end(mut self) -> Result<(), StoreError> {
        self.open = false;
        self.tx.exec("COMMIT", &[]).map(|_| ())
    }
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.tx.exec("ROLLBACK", &[]);
        }
    }
}

/// Refuses a target with any row in any table (but the rows its schema inserts itself),
/// naming every such table.
fn refuse_data(to: &Tx<'_>, db: &str) -> Result<(), CopyError> {
    let mut found = Vec::new();
    for t in TABLES {
        let sql = match t.seed {
            Some(seed) => format!("SELECT COUNT(*) FROM {} WHERE NOT ({seed})", t.name),
            None => format!("SELECT COUNT(*) FROM {}", t.name),
        };
        let n = to
            .one(&sql, &[], |r| r.get::<i64>(0))
            .map_err(|source| CopyError::Table {
                table: t.name,
                source,
            })?
            .unwrap_or(0);
        if n > 0 {
            found.push((t.name, n));
        }
    }
    if found.is_empty() {
        Ok(())
    } else {
        Err(CopyError::NotEmpty {
            db: db.to_string(),
            tables: found,
        })
    }
}

/// The columns of `table` as the database has them, in order, with the kind of value each
/// holds.
fn columns(tx: &Tx<'_>, table: &'static str) -> Result<Vec<(String, Kind)>, CopyError> {
    let sql = if tx.is_postgres() {
        "SELECT CAST(column_name AS TEXT), CAST(data_type AS TEXT) FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = ?1 ORDER BY ordinal_position"
    } else {
        "SELECT name, type FROM pragma_table_info(?1) ORDER BY cid"
    };
    let in_table = |source| CopyError::Table { table, source };
    let found: Vec<(String, String)> = tx
        .all(sql, crate::args![table], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(in_table)?;
    if found.is_empty() {
        return Err(in_table(StoreError::NotFound {
            what: "table",
            id: table.to_string(),
        }));
    }
    found
        .into_iter()
        .map(|(name, ty)| match kind_of(&ty) {
            Some(kind) => Ok((name, kind)),
            None => Err(in_table(StoreError::unreadable(
                "column type",
                &format!("{name} {ty}"),
            ))),
        })
        .collect()
}

/// The kind of value a column of declared type `ty` holds: SQLite's affinity rules, and
/// PostgreSQL's type names (those the schema uses).
fn kind_of(ty: &str) -> Option<Kind> {
    let ty = ty.to_ascii_lowercase();
    if ty.contains("int") {
        Some(Kind::Int)
    } else if ty.contains("char") || ty.contains("clob") || ty.contains("text") {
        Some(Kind::Text)
    } else if ty.is_empty() || ty.contains("blob") || ty == "bytea" {
        Some(Kind::Blob)
    } else if ty.contains("real") || ty.contains("floa") || ty.contains("doub") {
        Some(Kind::Real)
    } else {
        None
    }
}

/// Double-quotes a name for SQL (both dialects).
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Copies one table's rows, a batch at a time in primary-key order; returns how many.
fn copy_table(from: &Tx<'_>, to: &Tx<'_>, t: &Table) -> Result<u64, CopyError> {
    let in_table = |source| CopyError::Table {
        table: t.name,
        source,
    };
    let cols = columns(to, t.name)?;
    let source_cols: BTreeSet<String> = columns(from, t.name)?.into_iter().map(|c| c.0).collect();
    let target_cols: BTreeSet<String> = cols.iter().map(|c| c.0.clone()).collect();
    if source_cols != target_cols {
        return Err(CopyError::Columns {
            table: t.name,
            only_source: source_cols.difference(&target_cols).cloned().collect(),
            only_target: target_cols.difference(&source_cols).cloned().collect(),
        });
    }
    let key_at: Vec<usize> = t
        .key
        .iter()
        .map(|k| {
            cols.iter().position(|(c, _)| c == k).ok_or_else(|| {
                in_table(StoreError::NotFound {
                    what: "key column",
                    id: (*k).to_string(),
                })
            })
        })
        .collect::<Result<_, _>>()?;
    let names = cols
        .iter()
        .map(|(c, _)| quoted(c))
        .collect::<Vec<_>>()
        .join(", ");
    let key = t.key_list();
    let per_batch = (MAX_PARAMS / cols.len()).clamp(1, ROWS_PER_BATCH);
    let first = format!(
        "SELECT {names} FROM {} ORDER BY {key} LIMIT {per_batch}",
        t.name
    );
    let after = values_list(1, t.key.len(), 1);
    let next = format!(
        "SELECT {names} FROM {} WHERE ({key}) > {after} ORDER BY {key} LIMIT {per_batch}",
        t.name
    );
    let mut last: Option<Vec<Value>> = None;
    let mut copied = 0u64;
    loop {
        let read = |r: &super::sql::Row<'_>| (0..r.len()).map(|i| r.value(i)).collect();
        let rows: Vec<Vec<Value>> = match &last {
            None => from.all(&first, &[], read),
            Some(k) => {
                let args: Vec<Val<'_>> = k.iter().map(Param::val).collect();
                from.all(&next, &args, read)
            }
        }
        .map_err(in_table)?;
        let Some(tail) = rows.last() else { break };
        insert(to, t, &cols, &names, &rows).map_err(in_table)?;
        copied += rows.len() as u64;
        if rows.len() < per_batch {
            break;
        }
        last = Some(key_at.iter().map(|&i| tail[i].clone()).collect());
    }
    Ok(copied)
}

/// One multi-row INSERT of `rows` (values in `cols` order). NULLs are bound with the target
/// column's type, which PostgreSQL needs; an integer bound for a floating-point column is
/// bound as one. The seeded table's rows overwrite the seed.
fn insert(
    to: &Tx<'_>,
    t: &Table,
    cols: &[(String, Kind)],
    names: &str,
    rows: &[Vec<Value>],
) -> Result<(), StoreError> {
    let mut sql = format!(
        "INSERT INTO {} ({names}) VALUES {}",
        t.name,
        values_list(rows.len(), cols.len(), 1)
    );
    if t.seed.is_some() {
        let key = t.key_list();
        let set = cols
            .iter()
            .filter(|(c, _)| !t.key.contains(&c.as_str()))
            .map(|(c, _)| format!("{0} = excluded.{0}", quoted(c)))
            .collect::<Vec<_>>()
            .join(", ");
        sql.push_str(&format!(" ON CONFLICT ({key}) DO UPDATE SET {set}"));
    }
    let mut args: Vec<Val<'_>> = Vec::with_capacity(rows.len() * cols.len());
    for row in rows {
        for (v, (_, kind)) in row.iter().zip(cols) {
            args.push(match (v, kind) {
                (Value::Null, kind) => Val::Null(*kind),
                (Value::Int(i), Kind::Real) => Val::Real(*i as f64),
                (v, _) => v.val(),
            });
        }
    }
    to.exec(&sql, &args).map(|_| ())
}

/// The newest event of the audit chain: its sequence number and hash.
fn chain_head(tx: &Tx<'_>) -> Result<Option<(i64, String)>, StoreError> {
    tx.one(
        "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
        &[],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
