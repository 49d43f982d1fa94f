//! One PostgreSQL connection as the store uses it: tokio-postgres driven by the thread that
//! runs the statement (`io.rs`), every statement sent with its values' types in one round
//! trip, rows decoded by column type, and errors named as [`StoreError`] names them. The
//! listener, which waits for notifications between statements, runs on a small runtime here.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::Poll;
use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use super::io::{self, Connection, Driver, Stopped};
use crate::store::StoreError;
use crate::store::budget;
use crate::store::sql::{Param, Val, Value, dollar_placeholders};

/// The runtime the listening connection runs on (one thread).
fn runtime() -> Result<&'static tokio::runtime::Runtime, StoreError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("mcpc-postgres")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| StoreError::Unavailable {
            message: format!("cannot start the PostgreSQL runtime: {e}"),
        })
}

/// Spawns `f` on the PostgreSQL runtime.
pub(super) fn spawn(f: impl Future<Output = ()> + Send + 'static) -> Result<(), StoreError> {
    runtime()?.spawn(f);
    Ok(())
}

/// A statement put off to the next round trip, with its values.
struct Later {
    statement: tokio_postgres::Statement,
    kept: Vec<Value>,
    /// Its text, when it is a one-row insert that may be merged with others
    /// ([`Client::execute_later_row`]).
    row: Option<&'static str>,
}

/// The most rows one merged insert carries (a statement is prepared per row count).
const MERGED_ROWS: usize = 100;

/// `sql`, a one-row `INSERT ... VALUES (...)` with `width` values `?1`..`?width`, as an
/// insert of `rows` rows: the row repeated, its placeholders numbered on for each.
fn multi_row(sql: &str, rows: usize, width: usize) -> String {
    let (head, row) = sql.rsplit_once("VALUES").unwrap_or((sql, ""));
    let rows: Vec<String> = (0..rows)
        .map(|r| shift_placeholders(row.trim(), r * width))
        .collect();
    format!("{head}VALUES {}", rows.join(", "))
}

/// `?N` becomes `?{N + by}` outside quotes.
fn shift_placeholders(sql: &str, by: usize) -> String {
    crate::store::sql::map_placeholders(sql, |out, n| {
        out.push('?');
        out.push_str(&(n as usize + by).to_string());
    })
}

/// One connection.
pub struct Client {
    inner: tokio_postgres::Client,
    /// The connection half, polled by whoever runs a statement; `None` once it ended.
    conn: RefCell<Option<Connection>>,
    driver: Driver,
    /// Statements prepared on this connection, by their text (as the table modules write it)
    /// and their values' types: the server parses and plans a statement once per
    /// connection, and each run is one Bind/Execute round trip.
    statements: RefCell<HashMap<String, Vec<Prepared>>>,
    /// Statements put off until the next round trip ([`Client::execute_later`]).
    later: RefCell<Vec<Later>>,
    /// The audit chain's head as this transaction last read or wrote it
    /// ([`crate::store::audit::head`]); read with the BEGIN of a write transaction.
    pub(in crate::store) audit_head: RefCell<Option<crate::store::audit::Head>>,
    /// A transaction is open on it. Still set when the connection goes back to the pool (the
    /// closure of a write panicked), it marks the connection broken: the pool drops it and
    /// the server rolls the transaction back.
    pub(in crate::store) in_tx: Cell<bool>,
}

impl Client {
    /// Connects; `shown` names the database in errors (the URL without its password).
    pub(in crate::store) fn connect(
        config: &tokio_postgres::Config,
        shown: &str,
    ) -> Result<Self, StoreError> {
        let timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT);
        let (inner, conn, driver) =
            io::connect(config, timeout).map_err(|e| StoreError::Unavailable {
                message: format!("cannot connect to {shown}: {e}"),
            })?;
        let client = Client {
            inner,
            conn: RefCell::new(Some(conn)),
            driver,
            statements: RefCell::new(HashMap::new()),
            later: RefCell::new(Vec::new()),
            audit_head: RefCell::new(None),
            in_tx: Cell::new(false),
        };
        // A session that stops talking mid-transaction (its machine lost, a partition)
        // gives back the write lock within a minute rather than when the server's TCP
        // keepalive notices; no statement runs forever.
        client
            .batch(
                "SET idle_in_transaction_session_timeout = '60s'; SET statement_timeout = '300s'",
            )
            .map_err(|e| StoreError::Unavailable {
                message: format!("cannot set up a connection to {shown}: {e}"),
            })?;
        Ok(client)
    }

    /// Waits for `f`, driving the connection meanwhile. Statements put off with
    /// [`execute_later`](Self::execute_later) go first, in the same round trip; the first
    /// of their errors, if any, is `f`'s error (the transaction is lost either way).
    fn wait<T>(
        &self,
        f: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        let later = std::mem::take(&mut *self.later.borrow_mut());
        let batch = self.merged(later)?;
        self.pipeline(&batch, f).map(|(_, answer)| answer)
    }

    /// Sends the statements of `batch` in order, then `f`, in one round trip, and waits for
    /// every answer: the rows each statement of `batch` changed, and `f`'s. The first error
    /// met, in that order, is the error.
    fn pipeline<T>(
        &self,
        batch: &[(tokio_postgres::Statement, Vec<Value>)],
        f: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<(Vec<u64>, T), StoreError> {
        let vals: Vec<Vec<Val<'_>>> = batch
            .iter()
            .map(|(_, kept)| kept.iter().map(Param::val).collect())
            .collect();
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = vals.iter().map(|v| values(v)).collect();
        let mut sent: Vec<_> = batch
            .iter()
            .zip(&params)
            .map(|((statement, _), p)| Some(Box::pin(self.inner.execute(statement, p))))
            .collect();
        let mut counts = vec![0u64; batch.len()];
        let mut failed = None;
        let mut f = pin!(f);
        let mut answer = None;
        // Each statement is sent the first time it is polled, so in order, `f` last.
        let all = std::future::poll_fn(|cx| {
            for (slot, count) in sent.iter_mut().zip(counts.iter_mut()) {
                if let Some(fut) = slot
                    && let Poll::Ready(done) = fut.as_mut().poll(cx)
                {
                    *slot = None;
                    match done {
                        Ok(n) => *count = n,
                        Err(e) => {
                            if failed.is_none() {
                                failed = Some(e);
                            }
                        }
                    }
                }
            }
            if answer.is_none()
                && let Poll::Ready(a) = f.as_mut().poll(cx)
            {
                answer = Some(a);
            }
            if answer.is_some() && sent.iter().all(Option::is_none) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let ran = self.driver.run(&mut self.conn.borrow_mut(), all, None);
        let e = match (ran, failed, answer) {
            (Ok(()), Some(e), _) | (Ok(()), None, Some(Err(e))) => e,
            (Ok(()), None, Some(Ok(a))) => return Ok((counts, a)),
            (Err(Stopped::Ended(Some(e))), _, _) => e,
            (Err(s), _, _) => return Err(lost(&s)),
            (Ok(()), None, None) => return Err(lost(&Stopped::Ended(None))),
        };
        self.forget_if_stale(e.as_db_error().map(|d| d.code()));
        Err(from_pg(e))
    }

    /// Puts off a statement whose count nobody reads (an audit event's insert, a task's
    /// final update) until the next statement that needs an answer, or the commit, and sends
    /// it in that statement's round trip. Only inside a write transaction: outside one it
    /// runs at once (nothing would be sure to send it). An error it meets fails the next
    /// statement instead, which fails the transaction, as it would have.
    pub fn execute_later(&self, sql: &str, args: &[Val<'_>]) -> Result<(), StoreError> {
        self.put_off(sql, args, None)
    }

    /// [`execute_later`](Self::execute_later) for a one-row `INSERT INTO t (..) VALUES (..)`
    /// that may go out with others of its text as one multi-row insert (see
    /// [`merged`](Self::merged)): for a table no other put-off insert refers to.
    pub fn execute_later_row(&self, sql: &'static str, args: &[Val<'_>]) -> Result<(), StoreError> {
        self.put_off(sql, args, Some(sql))
    }

    fn put_off(
        &self,
        sql: &str,
        args: &[Val<'_>],
        row: Option<&'static str>,
    ) -> Result<(), StoreError> {
        if !self.in_tx.get() {
            return self.execute(sql, args).map(|_| ());
        }
        let statement = self.statement(sql, args)?;
        let kept = args.iter().map(Val::kept).collect();
        self.later.borrow_mut().push(Later {
            statement,
            kept,
            row,
        });
        Ok(())
    }

    /// The put-off statements as they go out: each run of one-row inserts
    /// ([`execute_later_row`](Self::execute_later_row)) as one multi-row insert per text and
    /// types (up to [`MERGED_ROWS`] rows), in the order each first appears. Why: on the
    /// server each statement costs its own executor start, several times a row's insert.
    /// Rows of one table keep their order; inserts into different tables commute (none of
    /// these refers to another's rows); anything else stays where it was.
    fn merged(
        &self,
        later: Vec<Later>,
    ) -> Result<Vec<(tokio_postgres::Statement, Vec<Value>)>, StoreError> {
        let mut out = Vec::with_capacity(later.len());
        let mut run = Vec::new();
        for l in later {
            if l.row.is_some() {
                run.push(l);
                continue;
            }
            self.merge_run(std::mem::take(&mut run), &mut out)?;
            out.push((l.statement, l.kept));
        }
        self.merge_run(run, &mut out)?;
        Ok(out)
    }

    fn merge_run(
        &self,
        run: Vec<Later>,
        out: &mut Vec<(tokio_postgres::Statement, Vec<Value>)>,
    ) -> Result<(), StoreError> {
        let mut groups: Vec<(&'static str, Vec<Later>)> = Vec::new();
        for l in run {
            let sql = l.row.unwrap_or_default();
            match groups
                .iter_mut()
                .find(|(s, g)| *s == sql && g[0].statement.params() == l.statement.params())
            {
                Some((_, g)) => g.push(l),
                None => groups.push((sql, vec![l])),
            }
        }
        for (sql, rows) in groups {
            let mut rows = rows.into_iter().peekable();
            while rows.peek().is_some() {
                let chunk: Vec<Later> = rows.by_ref().take(MERGED_ROWS).collect();
                if chunk.len() == 1 {
                    out.extend(chunk.into_iter().map(|l| (l.statement, l.kept)));
                    continue;
                }
                let one: Vec<Type> = chunk[0].statement.params().to_vec();
                let types: Vec<Type> = one
                    .iter()
                    .cycle()
                    .take(one.len() * chunk.len())
                    .cloned()
                    .collect();
                let statement =
                    self.statement_typed(&multi_row(sql, chunk.len(), one.len()), types)?;
                out.push((statement, chunk.into_iter().flat_map(|l| l.kept).collect()));
            }
        }
        Ok(())
    }

    /// Sends the put-off statements now and waits for them.
    pub fn flush_later(&self) -> Result<(), StoreError> {
        if self.later.borrow().is_empty() {
            return Ok(());
        }
        self.wait(async { Ok(()) })
    }

    /// Rolls the open transaction back, dropping what was put off unsent; the connection is
    /// marked out of its transaction only if the server confirmed it (otherwise the pool
    /// drops the connection).
    pub(super) fn rollback(&self) {
        self.discard_later();
        if self.batch("ROLLBACK").is_ok() {
            self.in_tx.set(false);
        }
    }

    /// Drops the put-off statements unsent (the transaction is being rolled back).
    pub(in crate::store) fn discard_later(&self) {
        self.later.borrow_mut().clear();
    }

    /// Whether the connection is gone (the server closed it, or the network dropped it):
    /// reads what arrived meanwhile first, without waiting.
    pub(super) fn is_closed(&self) -> bool {
        let mut conn = self.conn.borrow_mut();
        self.driver.pump(&mut conn);
        conn.is_none() || self.inner.is_closed()
    }

    /// The prepared form of `sql` for values of `args`' types, prepared on first use.
    fn statement(
        &self,
        sql: &str,
        args: &[Val<'_>],
    ) -> Result<tokio_postgres::Statement, StoreError> {
        self.statement_typed(sql, args.iter().map(Val::pg_type).collect())
    }

    /// The prepared form of `sql` for values of `types`, prepared on first use.
    fn statement_typed(
        &self,
        sql: &str,
        types: Vec<Type>,
    ) -> Result<tokio_postgres::Statement, StoreError> {
        if let Some(found) = self
            .statements
            .borrow()
            .get(sql)
            .and_then(|forms| forms.iter().find(|(t, _)| *t == types))
        {
            return Ok(found.1.clone());
        }
        let prepared = self.wait(self.inner.prepare_typed(&dollar_placeholders(sql), &types))?;
        let mut statements = self.statements.borrow_mut();
        // Built SQL (a list's filters) could grow this without end; starting over is cheap.
        if statements.len() >= STATEMENT_CACHE {
            statements.clear();
        }
        statements
            .entry(sql.to_string())
            .or_default()
            .push((types, prepared.clone()));
        Ok(prepared)
    }

    /// Forgets the prepared statements when the server says one no longer fits the schema
    /// (another coordinator migrated it), so the next transaction prepares them again.
    fn forget_if_stale(&self, code: Option<&SqlState>) {
        if code.is_some_and(|c| {
            *c == SqlState::FEATURE_NOT_SUPPORTED || *c == SqlState::INVALID_SQL_STATEMENT_NAME
        }) {
            self.statements.borrow_mut().clear();
        }
    }

    /// Runs one statement; returns the rows it changed.
    pub fn execute(&self, sql: &str, args: &[Val<'_>]) -> Result<usize, StoreError> {
        let statement = self.statement(sql, args)?;
        let params = values(args);
        let n = self.wait(self.inner.execute(&statement, &params))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Runs one query; returns its rows.
    pub fn query(
        &self,
        sql: &str,
        args: &[Val<'_>],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let statement = self.statement(sql, args)?;
        let params = values(args);
        self.wait(self.inner.query(&statement, &params))
    }

    /// Runs statements separated by `;` without values (DDL, BEGIN/COMMIT, NOTIFY).
    pub fn batch(&self, sql: &str) -> Result<(), StoreError> {
        self.wait(self.inner.batch_execute(sql))
    }

    /// Opens a write transaction with `begin` (statements without values: BEGIN, the lock)
    /// and reads the audit chain's head in the same round trip, for the transaction to
    /// remember ([`audit_head`](Self::audit_head)): nearly every write appends an event.
    pub(super) fn begin_write(&self, begin: &str) -> Result<(), StoreError> {
        self.audit_head.replace(None);
        let messages = self.wait(
            self.inner
                .simple_query(&format!("{begin}; {}", crate::store::audit::HEAD_SQL)),
        )?;
        let head = messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) if r.len() == 3 => Some(crate::store::audit::Head {
                seq: r.get(0)?.parse().ok()?,
                hash: r.get(1)?.to_string(),
                ts: r.get(2)?.to_string(),
            }),
            _ => None,
        });
        self.audit_head.replace(head);
        Ok(())
    }

    /// Runs statements without values and returns the first column of the first row any of
    /// them answered.
    pub(super) fn simple_first(&self, sql: &str) -> Result<Option<String>, StoreError> {
        let messages = self.wait(self.inner.simple_query(sql))?;
        Ok(messages.into_iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        }))
    }
}

/// A statement prepared for values of these types.
type Prepared = (Vec<Type>, tokio_postgres::Statement);

/// How many prepared statements a connection keeps.
const STATEMENT_CACHE: usize = 512;

fn values<'a>(args: &'a [Val<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    args.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// The connection ended under a statement.
fn lost(s: &Stopped) -> StoreError {
    StoreError::Unavailable {
        message: format!(
            "the connection to PostgreSQL was lost: {}",
            io::stopped(s, "during a statement")
        ),
    }
}

/// Column `idx` of `r` by its type: the integer, float, text and byte types the schema uses
/// (and booleans, which comparisons answer, as 0 or 1).
pub fn value(r: &tokio_postgres::Row, idx: usize) -> Result<Value, StoreError> {
    let Some(col) = r.columns().get(idx) else {
        return Err(StoreError::Postgres {
            message: format!("no column {idx} in a row of {}", r.len()),
        });
    };
    let ty = col.type_();
    let decode = |e: tokio_postgres::Error| StoreError::Postgres {
        message: format!("column {} ({ty}): {e}", col.name()),
    };
    let v = if *ty == Type::INT8 {
        r.try_get::<_, Option<i64>>(idx).map(|v| v.map(Value::Int))
    } else if *ty == Type::INT4 {
        r.try_get::<_, Option<i32>>(idx)
            .map(|v| v.map(|i| Value::Int(i.into())))
    } else if *ty == Type::INT2 {
        r.try_get::<_, Option<i16>>(idx)
            .map(|v| v.map(|i| Value::Int(i.into())))
    } else if *ty == Type::BOOL {
        r.try_get::<_, Option<bool>>(idx)
            .map(|v| v.map(|b| Value::Int(b.into())))
    } else if *ty == Type::FLOAT8 {
        r.try_get::<_, Option<f64>>(idx).map(|v| v.map(Value::Real))
    } else if *ty == Type::FLOAT4 {
        r.try_get::<_, Option<f32>>(idx)
            .map(|v| v.map(|f| Value::Real(f.into())))
    } else if *ty == Type::BYTEA {
        r.try_get::<_, Option<Vec<u8>>>(idx)
            .map(|v| v.map(Value::Blob))
    } else if [
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::UNKNOWN,
    ]
    .contains(ty)
    {
        r.try_get::<_, Option<String>>(idx)
            .map(|v| v.map(Value::Text))
    } else {
        return Err(StoreError::Postgres {
            message: format!(
                "column {} has type {ty}, which the store does not read (CAST it to BIGINT, DOUBLE PRECISION or TEXT)",
                col.name()
            ),
        });
    };
    Ok(v.map_err(decode)?.unwrap_or(Value::Null))
}

/// A PostgreSQL error as the store names it: a duplicate key is a conflict, a lock wait past
/// its timeout is busy, a full disk is full, a lost connection is unavailable (retryable).
pub(super) fn from_pg(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::UNIQUE_VIOLATION {
            // The message names the constraint; the detail would repeat the key's value.
            return StoreError::Conflict {
                detail: db.message().to_string(),
            };
        }
        if *code == SqlState::LOCK_NOT_AVAILABLE {
            let (waited, timeout) = budget::waited();
            return StoreError::Busy { waited, timeout };
        }
        if *code == SqlState::DISK_FULL {
            return StoreError::Full {
                path: "the PostgreSQL database".into(),
            };
        }
    }
    if e.is_closed() {
        return StoreError::Unavailable {
            message: format!("the connection to PostgreSQL was lost: {}", describe(&e)),
        };
    }
    StoreError::Postgres {
        message: describe(&e),
    }
}

/// What an error says, with the server's message, detail and code where it sent them
/// (tokio-postgres's own text is only "db error").
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        // Not the detail: for a NOT NULL or CHECK failure it is the whole row ("Failing row
        // contains ..."), which may hold what the audit log redacts.
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                s.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            s
        }
    }
}

/// How long a connection attempt may take before the store reports the database unreachable.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_row_insert_becomes_a_multi_row_one_with_its_placeholders_numbered_on() {
        let sql = "INSERT INTO t (a, b, c, d) VALUES (?1, 'it''s ?1', ?2, ?1)";
        assert_eq!(
            multi_row(sql, 3, 2),
            "INSERT INTO t (a, b, c, d) VALUES (?1, 'it''s ?1', ?2, ?1), \
             (?3, 'it''s ?1', ?4, ?3), (?5, 'it''s ?1', ?6, ?5)"
        );
    }
}
