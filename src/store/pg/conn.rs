//! One PostgreSQL connection as the store uses it: tokio-postgres driven on a runtime of its
//! own (so the store's synchronous surface can wait on it from any thread, a tokio worker
//! included, without nesting runtimes), every statement sent with its values' types in one
//! round trip, rows decoded by column type, and errors named as [`StoreError`] names them.

use std::cell::Cell;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::store::StoreError;
use crate::store::budget;
use crate::store::sql::{Val, Value, dollar_placeholders};

/// The runtime that drives every PostgreSQL connection of this process (one thread): the
/// connections' I/O runs there; callers wait for their answers with a plain executor.
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

/// Waits for `f` on this thread. The futures of a tokio-postgres client only pass messages to
/// its connection task, so they need no reactor here.
pub(super) fn wait<F: Future>(f: F) -> F::Output {
    futures_executor::block_on(f)
}

/// Runs `f` on the PostgreSQL runtime (for what needs its reactor: connecting, listening) and
/// waits for it.
pub(super) fn on_runtime<T: Send + 'static>(
    f: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let handle = runtime()?.spawn(f);
    wait(handle).map_err(|e| StoreError::Unavailable {
        message: format!("the PostgreSQL task failed: {e}"),
    })?
}

/// Spawns `f` on the PostgreSQL runtime.
pub(super) fn spawn(f: impl Future<Output = ()> + Send + 'static) -> Result<(), StoreError> {
    runtime()?.spawn(f);
    Ok(())
}

/// One connection.
pub struct Client {
    inner: tokio_postgres::Client,
    /// A transaction is open on it. Still set when the connection goes back to the pool (the
    /// closure of a write panicked), it marks the connection broken: the pool drops it and
    /// the server rolls the transaction back.
    pub(super) in_tx: Cell<bool>,
}

impl Client {
    /// Connects; `shown` names the database in errors (the URL without its password).
    pub(in crate::store) fn connect(
        config: &tokio_postgres::Config,
        shown: &str,
    ) -> Result<Self, StoreError> {
        let config = config.clone();
        let shown_owned = shown.to_string();
        on_runtime(async move {
            let (client, connection) =
                config
                    .connect(NoTls)
                    .await
                    .map_err(|e| StoreError::Unavailable {
                        message: format!("cannot connect to {shown_owned}: {}", describe(&e)),
                    })?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %describe(&e), "a PostgreSQL connection ended");
                }
            });
            // A session that stops talking mid-transaction (its machine lost, a partition)
            // gives back the write lock within a minute rather than when the server's TCP
            // keepalive notices; no statement runs forever.
            client
                .batch_execute(
                    "SET idle_in_transaction_session_timeout = '60s'; SET statement_timeout = '300s'",
                )
                .await
                .map_err(|e| StoreError::Unavailable {
                    message: format!("cannot set up a connection to {shown_owned}: {}", describe(&e)),
                })?;
            Ok(client)
        })
        .map(|inner| Client {
            inner,
            in_tx: Cell::new(false),
        })
    }

    /// Whether the connection is gone (the server closed it, or the network dropped it).
    pub(super) fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Runs one statement; returns the rows it changed.
    pub fn execute(&self, sql: &str, args: &[Val<'_>]) -> Result<usize, StoreError> {
        let sql = dollar_placeholders(sql);
        let params = typed(args);
        let n = wait(self.inner.execute_typed(&sql, &params)).map_err(from_pg)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Runs one query; returns its rows.
    pub fn query(
        &self,
        sql: &str,
        args: &[Val<'_>],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let sql = dollar_placeholders(sql);
        let params = typed(args);
        wait(self.inner.query_typed(&sql, &params)).map_err(from_pg)
    }

    /// Runs statements separated by `;` without values (DDL, BEGIN/COMMIT, NOTIFY).
    pub fn batch(&self, sql: &str) -> Result<(), StoreError> {
        wait(self.inner.batch_execute(sql)).map_err(from_pg)
    }

    /// Runs statements without values and returns the first column of the first row any of
    /// them answered.
    pub(super) fn simple_first(&self, sql: &str) -> Result<Option<String>, StoreError> {
        let messages = wait(self.inner.simple_query(sql)).map_err(from_pg)?;
        Ok(messages.into_iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        }))
    }
}

fn typed<'a>(args: &'a [Val<'a>]) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    args.iter()
        .map(|v| (v as &(dyn ToSql + Sync), v.pg_type()))
        .collect()
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
