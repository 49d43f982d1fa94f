//! The PostgreSQL backend (`--db postgres://...`): a pool of connections (r2d2, sized from the
//! config), writes serialised across every coordinator by one advisory lock (so the domain's
//! read-then-write transactions mean on PostgreSQL what `BEGIN IMMEDIATE` means on SQLite),
//! `LISTEN/NOTIFY` for "something changed", and the embedded schema (`migrate.rs`).

mod conn;
mod io;
mod migrate;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use conn::{CONNECT_TIMEOUT, describe};
pub use conn::{Client, value};

use super::{StoreError, Tx, budget};

/// The advisory lock every write transaction takes first: one writer at a time across every
/// coordinator on the database. Why one lock and not row locks: the domain's transactions read
/// and then write (the audit chain's head, a task's status, an approval's consumption), written
/// for SQLite's single writer; one lock keeps every one of them correct on PostgreSQL without
/// a second set of reasoning, and a write holds it for a few round trips.
const WRITE_LOCK: i64 = 0x6d63_7063_7772_6974; // "mcpcwrit"

/// How long background work (no lock-wait budget of its own) queues for [`WRITE_LOCK`].
const BACKGROUND_WAIT: Duration = Duration::from_millis(250);

/// How often the queue's vacuum looks whether it is due, and after how many commits it is.
const VACUUM_CHECK: Duration = Duration::from_secs(2);
const VACUUM_AFTER: u64 = 1_000;

/// The channel every commit notifies: waiters in every coordinator wake on it.
const CHANNEL: &str = "mcp_coordinator";

/// A `postgres://` URL, kept whole for connecting and shown without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    full: String,
    shown: String,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PgUrl {
    /// Parses a `postgres://` or `postgresql://` URL. The error never repeats the password.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        let bad = |why: String| StoreError::Postgres {
            message: format!("--db: not a usable PostgreSQL URL: {why}"),
        };
        let mut url = url::Url::parse(s).map_err(|e| bad(e.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(bad(format!("scheme {:?}", url.scheme())));
        }
        let config = s
            .parse::<tokio_postgres::Config>()
            .map_err(|e| bad(e.to_string()))?;
        // Asked for TLS, a plain connection would be a surprise: say so before connecting.
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(bad(
                "sslmode=require: this build does not encrypt connections to PostgreSQL; \
                 reach the database over a private network, loopback or a tunnel, and drop \
                 sslmode (or set sslmode=disable)"
                    .into(),
            ));
        }
        // Settings this build's connector does not follow: say so rather than ignore them.
        if config.get_target_session_attrs() == tokio_postgres::config::TargetSessionAttrs::ReadOnly
        {
            return Err(bad(
                "target_session_attrs=read-only: a coordinator writes; name a primary, or use \
                 target_session_attrs=read-write to skip standbys"
                    .into(),
            ));
        }
        if config.get_load_balance_hosts() != tokio_postgres::config::LoadBalanceHosts::Disable {
            return Err(bad(
                "load_balance_hosts: hosts are tried in the order the URL lists them; drop the \
                 parameter"
                    .into(),
            ));
        }
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        // libpq's URLs may carry the password as a parameter too.
        if url
            .query_pairs()
            .any(|(k, _)| k.eq_ignore_ascii_case("password"))
        {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k.eq_ignore_ascii_case("password") {
                        "***".to_string()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        Ok(PgUrl {
            full: s.to_string(),
            shown: url.to_string(),
        })
    }

    /// The URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// The r2d2 side of a connection: how to make one and when it is broken.
pub struct Manager {
    config: tokio_postgres::Config,
    shown: String,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Client;
    type Error = StoreError;

    fn connect(&self) -> Result<Client, StoreError> {
        Client::connect(&self.config, &self.shown)
    }

    fn is_valid(&self, conn: &mut Client) -> Result<(), StoreError> {
        conn.batch("")
    }

    fn has_broken(&self, conn: &mut Client) -> bool {
        conn.is_closed() || conn.in_tx.get()
    }
}

/// Reports connection failures of the pool's own attempts (it retries them itself).
#[derive(Debug)]
struct LogErrors;

impl r2d2::HandleError<StoreError> for LogErrors {
    fn handle_error(&self, error: StoreError) {
        tracing::warn!(error = %error, "PostgreSQL: a pooled connection could not be made (retrying)");
    }
}

/// The PostgreSQL side of a [`Store`](super::Store).
pub(super) struct Pg {
    /// Shared with the queue's vacuum thread only weakly, so dropping the store closes it.
    pool: Arc<r2d2::Pool<Manager>>,
    config: tokio_postgres::Config,
    shown: String,
    /// Notifications seen on [`CHANNEL`] (and reconnects of the listener).
    notified: Arc<AtomicU64>,
    /// Ends the listener when the store is dropped.
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A pooled connection.
pub type Pooled = r2d2::PooledConnection<Manager>;

impl Pg {
    /// Connects (once, so a wrong URL or password is reported as such), applies the schema,
    /// and makes the pool of `pool_size` connections.
    pub(super) fn open(url: &PgUrl, pool_size: u32) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config =
            url.full
                .parse()
                .map_err(|e: tokio_postgres::Error| StoreError::Postgres {
                    message: format!("--db: {}", describe(&e)),
                })?;
        if config.get_application_name().is_none() {
            config.application_name("mcp-coordinator");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A peer that vanishes (a lost machine, a partition) is noticed in about a minute, not
        // after the operating system's two hours.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3);
        let shown = url.shown.clone();
        let first = Client::connect(&config, &shown)?;
        migrate::run(&first, &shown)?;
        let manager = Manager {
            config: config.clone(),
            shown: shown.clone(),
        };
        let pool = r2d2::Pool::builder()
            .max_size(pool_size.max(1))
            .min_idle(Some(1))
            // A dead connection fails its statement and is dropped then (has_broken); a check
            // on every checkout would add a round trip to every statement.
            .test_on_check_out(false)
            .connection_timeout(CONNECT_TIMEOUT)
            .error_handler(Box::new(LogErrors))
            .build_unchecked(manager);
        drop(first);
        let pg = Pg {
            pool: Arc::new(pool),
            config,
            shown,
            notified: Arc::new(AtomicU64::new(0)),
            stop: tokio_util::sync::CancellationToken::new(),
        };
        pg.start_listening()?;
        pg.start_vacuuming();
        Ok(pg)
    }

    /// A connection from the pool, waiting at most the current budget (or the connect
    /// timeout) for one to come free.
    pub(super) fn get(&self) -> Result<Pooled, StoreError> {
        let limit = budget::current()
            .map(|b| b.remaining())
            .filter(|r| !r.is_zero())
            .unwrap_or(CONNECT_TIMEOUT);
        let started = Instant::now();
        // After a server restart every idle connection is dead; their connection tasks have
        // already seen the socket close, so skipping them costs no round trip.
        for _ in 0..=self.pool.max_size() {
            let got = self.pool.get_timeout(limit);
            budget::charge(started.elapsed());
            let conn = got.map_err(|e| StoreError::Unavailable {
                message: format!(
                    "no PostgreSQL connection to {} within {:.1} s: {e}",
                    self.shown,
                    limit.as_secs_f64()
                ),
            })?;
            if !conn.is_closed() {
                return Ok(conn);
            }
            tracing::warn!(database = %self.shown, "PostgreSQL: a pooled connection was closed by the server or the network; taking another");
        }
        Err(StoreError::Unavailable {
            message: format!("every PostgreSQL connection to {} was closed", self.shown),
        })
    }

    pub(super) fn read<T>(&self, f: impl FnOnce(&Tx<'_>) -> T) -> T {
        match self.get() {
            Ok(conn) => f(&Tx::pg(&conn)),
            // The closure's first statement reports it.
            Err(e) => f(&Tx::down(&e.to_string())),
        }
    }

    /// One transaction holding [`WRITE_LOCK`]: rolled back when `f` fails, committed
    /// otherwise, with a notification when it wrote anything (a claim on an empty queue
    /// wakes nobody). Returns whether it wrote.
    pub(super) fn write<T, E>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<(T, bool), E>
    where
        E: From<StoreError>,
    {
        let mut conn = self.get()?;
        if let Err(e) = self.begin(&conn) {
            // A pooled connection the server or the network dropped meanwhile fails at BEGIN,
            // before anything of this transaction ran: try once more on a fresh one.
            if !matches!(e, StoreError::Unavailable { .. }) {
                return Err(e.into());
            }
            tracing::warn!(database = %self.shown, error = %e, "PostgreSQL: a connection was lost; retrying on a new one");
            drop(conn);
            conn = self.get()?;
            self.begin(&conn)?;
        }
        match f(&Tx::pg(&conn)) {
            Ok(value) => {
                // One round trip: whether the transaction has an id (it wrote), the
                // notification only then, and the commit.
                let committed = conn.simple_first(&format!(
                    "SELECT CASE WHEN txid_current_if_assigned() IS NULL THEN 'n' ELSE 'w' END;
                     SELECT pg_notify('{CHANNEL}', '') WHERE txid_current_if_assigned() IS NOT NULL;
                     COMMIT"
                ));
                let wrote = match committed {
                    Ok(w) => w,
                    Err(e) => {
                        // A put-off statement failed (so the COMMIT after it rolled back), or
                        // the connection is gone: end the transaction if it is still open so
                        // the connection stays usable.
                        conn.rollback();
                        return Err(e.into());
                    }
                };
                conn.in_tx.set(false);
                Ok((value, wrote.as_deref() != Some("n")))
            }
            Err(e) => {
                conn.rollback();
                Err(e)
            }
        }
    }

    /// BEGIN and the write lock, waiting for it within the current budget; background work
    /// (no budget) waits at most [`BACKGROUND_WAIT`].
    fn begin(&self, conn: &Client) -> Result<(), StoreError> {
        budget::ensure(|budget| {
            conn.in_tx.set(true);
            // Background work (no budget: sweeps, pipeline ticks) does not wait on SQLite;
            // here it queues briefly. PostgreSQL hands the lock out in arrival order, so a try
            // that gave up at once would lose to steady call traffic every time, and leases
            // would not expire nor pipelines advance while a team is busy.
            let background = budget.limit().is_zero();
            let ms = if background {
                BACKGROUND_WAIT.as_millis()
            } else {
                budget.remaining().as_millis().max(1)
            };
            let started = Instant::now();
            let locked = conn.begin_write(&format!(
                "BEGIN; SET LOCAL lock_timeout = {ms}; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
            ));
            let waited = started.elapsed();
            if !background && waited > Duration::from_millis(1) {
                budget.charge(waited);
            }
            locked.map_err(|e| {
                conn.rollback();
                match e {
                    StoreError::Busy { .. } if background => StoreError::Busy {
                        waited: Duration::ZERO,
                        timeout: Duration::ZERO,
                    },
                    StoreError::Busy { .. } => StoreError::Busy {
                        waited: budget.spent(),
                        timeout: budget.limit(),
                    },
                    e => e,
                }
            })
        })
    }

    /// A number that changes whenever any coordinator commits (the notifications seen by a
    /// listening connection of this process, which starts at open).
    pub(super) fn data_version(&self) -> Result<u64, StoreError> {
        Ok(self.notified.load(Ordering::Relaxed))
    }

    /// Starts the listener: a connection of its own on [`CHANNEL`], counting notifications and
    /// reconnecting when it is lost. Every LISTEN that takes effect counts as a change too, so
    /// nothing committed while it was not listening is missed for long. Does not wait for it.
    fn start_listening(&self) -> Result<(), StoreError> {
        let config = self.config.clone();
        let notified = self.notified.clone();
        let shown = self.shown.clone();
        let stop = self.stop.clone();
        conn::spawn(async move {
            loop {
                let ended = tokio::select! {
                    () = stop.cancelled() => return,
                    ended = listen_once(&config, &notified) => ended,
                };
                match ended {
                    Ok(()) => {
                        tracing::warn!(database = %shown, "PostgreSQL: the listening connection ended; reconnecting")
                    }
                    Err(e) => {
                        tracing::warn!(database = %shown, error = %e, "PostgreSQL: cannot listen for changes; retrying in 1 s");
                    }
                }
                notified.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        })
    }

    /// Starts the queue's vacuum: every [`VACUUM_CHECK`], when at least [`VACUUM_AFTER`]
    /// commits were seen since the last one, `VACUUM (ANALYZE) tasks` on a pooled connection.
    /// Why: a claimed task's entry stays in the queue index (dead) until a vacuum removes it,
    /// and every claim reads the queue index from its head, so between autovacuum's visits
    /// (a minute apart at best) claims slow down with every task claimed (3 ms a claim after
    /// 20,000); ANALYZE keeps the queue's statistics as current. A thread of its own: the
    /// vacuum takes as long as it takes and blocks no caller (it takes no lock a write waits for).
    fn start_vacuuming(&self) {
        let pool = Arc::downgrade(&self.pool);
        let notified = self.notified.clone();
        let stop = self.stop.clone();
        let shown = self.shown.clone();
        // Counted from here, not from when the thread gets going: on a busy machine its first
        // query may come after many commits.
        let mut seen = notified.load(Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("mcpc-pg-vacuum".into())
            .spawn(move || {
                if !may_vacuum(&pool, &shown) {
                    return;
                }
                while !stop.is_cancelled() {
                    std::thread::sleep(VACUUM_CHECK);
                    let now = notified.load(Ordering::Relaxed);
                    if now.wrapping_sub(seen) < VACUUM_AFTER || stop.is_cancelled() {
                        continue;
                    }
                    seen = now;
                    let Some(pool) = pool.upgrade() else {
                        return;
                    };
                    let vacuumed = pool
                        .get_timeout(CONNECT_TIMEOUT)
                        .map_err(|e| e.to_string())
                        // SKIP_LOCKED: another coordinator's vacuum of it is as good.
                        .and_then(|c| {
                            c.batch("VACUUM (ANALYZE, SKIP_LOCKED) tasks")
                                .map_err(|e| e.to_string())
                        });
                    if let Err(e) = vacuumed {
                        tracing::warn!(database = %shown, error = %e, "PostgreSQL: the queue's vacuum failed; trying again later");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "PostgreSQL: cannot start the queue's vacuum; autovacuum alone will keep it");
        }
    }

    pub(super) fn schema_version(&self) -> Result<i64, StoreError> {
        migrate::version(&*self.get()?)
    }

    pub(super) fn health(&self) -> Result<String, StoreError> {
        let conn = self.get()?;
        let version = conn
            .simple_first("SHOW server_version")?
            .unwrap_or_default();
        let state = self.pool.state();
        Ok(format!(
            "ok (postgresql {version}, {} of {} connections open)",
            state.connections,
            self.pool.max_size()
        ))
    }
}

/// Whether this coordinator's database user may vacuum the queue table (PostgreSQL only
/// warns, and skips it, for a user that does not own it); says so once when it may not.
fn may_vacuum(pool: &std::sync::Weak<r2d2::Pool<Manager>>, shown: &str) -> bool {
    let Some(pool) = pool.upgrade() else {
        return false;
    };
    let owns = pool
        .get_timeout(CONNECT_TIMEOUT)
        .map_err(|e| e.to_string())
        .and_then(|c| {
            c.simple_first(
                "SELECT CASE WHEN pg_has_role(current_user, tableowner, 'USAGE') THEN 'y' ELSE 'n' END
                 FROM pg_tables WHERE tablename = 'tasks' AND schemaname = current_schema()",
            )
            .map_err(|e| e.to_string())
        });
    match owns {
        Ok(Some(y)) if y == "y" => true,
        Ok(_) => {
            tracing::warn!(database = %shown, "PostgreSQL: this coordinator's database user does not own the tasks table, so it cannot vacuum it; claims slow down between autovacuum's visits (give the tables to this user, or vacuum tasks often)");
            false
        }
        Err(e) => {
            tracing::warn!(database = %shown, error = %e, "PostgreSQL: cannot tell whether the tasks table may be vacuumed; leaving it to autovacuum");
            false
        }
    }
}

/// One listening connection, until it ends.
async fn listen_once(config: &tokio_postgres::Config, notified: &AtomicU64) -> Result<(), String> {
    use futures_util::StreamExt;
    use tokio_postgres::AsyncMessage;

    let (client, mut connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| describe(&e))?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {CHANNEL}");
    {
        let listen = client.batch_execute(&statement);
        tokio::pin!(listen);
        // The connection must be polled for LISTEN to be answered.
        loop {
            tokio::select! {
                done = &mut listen => {
                    done.map_err(|e| describe(&e))?;
                    break;
                }
                m = messages.next() => match m {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(describe(&e)),
                    None => return Ok(()),
                },
            }
        }
    }
    notified.fetch_add(1, Ordering::Relaxed);
    while let Some(m) = messages.next().await {
        match m {
            Ok(AsyncMessage::Notification(_)) => {
                notified.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => return Err(describe(&e)),
        }
    }
    drop(client);
    Ok(())
}

/// The schema version recorded in the database at `url`, read without creating or changing
/// anything: `None` when it holds no coordinator schema. For `store copy`, which must neither
/// migrate the database it copies from nor apply a schema before it has checked the target.
pub(super) fn schema_version_at(url: &PgUrl) -> Result<Option<i64>, StoreError> {
    let mut config: tokio_postgres::Config =
        url.full
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Postgres {
                message: format!("{}: {}", url.shown, describe(&e)),
            })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let c = Client::connect(&config, &url.shown)?;
    let found = c.query(
        "SELECT COUNT(*) FROM information_schema.tables
         WHERE table_schema = current_schema() AND table_name = 'mcp_coordinator_schema'",
        &[],
    )?;
    match found.first().map(|r| value(r, 0)).transpose()? {
        Some(crate::store::sql::Value::Int(n)) if n > 0 => migrate::version(&c).map(Some),
        _ => Ok(None),
    }
}

/// Runs `sql` as it is (tests that tamper with rows).
#[cfg(test)]
pub(super) fn execute_raw(pg: &Pg, sql: &str) -> Result<usize, StoreError> {
    pg.get()?.execute(sql, &[])
}

#[cfg(test)]
mod tests {
    use super::PgUrl;

    #[test]
    fn a_url_is_shown_without_its_password_and_tls_is_not_promised() {
        let url = PgUrl::parse("postgres://coord:hunter2@db.internal:5432/coord")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(url.shown(), "postgres://coord:***@db.internal:5432/coord");
        assert_eq!(format!("{url:?}"), url.shown());
        let param = PgUrl::parse("postgres://coord@db/coord?password=hunter2&application_name=x")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!param.shown().contains("hunter2"), "{}", param.shown());
        assert!(
            param.shown().contains("application_name=x"),
            "{}",
            param.shown()
        );
        let refused = PgUrl::parse("postgres://coord:hunter2@db/coord?sslmode=require")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(refused.contains("sslmode=require"), "{refused}");
        assert!(!refused.contains("hunter2"), "{refused}");
        for unfollowed in [
            "target_session_attrs=read-only",
            "load_balance_hosts=random",
        ] {
            let refused = PgUrl::parse(&format!("postgres://coord:hunter2@db/coord?{unfollowed}"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            let name = unfollowed.split('=').next().unwrap_or_default();
            assert!(refused.contains(name), "{refused}");
            assert!(!refused.contains("hunter2"), "{refused}");
        }
        let other = PgUrl::parse("mysql://x/y").err().map(|e| e.to_string());
        assert!(other.is_some_and(|e| e.contains("scheme")));
    }
}
