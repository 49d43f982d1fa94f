//! The fleet: the coordinator processes sharing one database find each other (a team's
//! coordinators on one PostgreSQL, or several processes on one SQLite file). A serving
//! coordinator registers itself (id, host, version, transports and URL, capabilities,
//! toolsets, start time) when it starts, heartbeats every [`HEARTBEAT_EVERY`], and marks
//! itself stopped on a clean exit; every coordinator and the console list the fleet with each
//! one's health from its heartbeat's age ([`Health`]). Rows of coordinators gone for more
//! than a day are pruned by the others' heartbeats.
//!
//! Registrations and heartbeats are not audited: a process coming and going changes nothing
//! the coordinators manage, and a heartbeat every 10 s would fill the chain. Heartbeat times
//! are the database's clock, so machines whose clocks disagree still agree on ages.
//!
//! It depends on `store` (`store::fleet`) and the leaves (`periodic`); `server` owns one
//! [`FleetService`] per process and `cli::serve` joins and leaves.

use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::audit::chain::now_ts;
use crate::macros::string_enum;
use crate::periodic::{Periodic, Skipped};
use crate::store::budget::{self, Budget};
use crate::store::fleet::{self as sql, CoordinatorRow, Listed};
use crate::store::{Store, StoreError};

/// How often a serving coordinator says it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// A coordinator whose last heartbeat is older than this is `stale` (three missed).
pub const STALE_AFTER_MS: i64 = 30_000;
/// A coordinator whose last heartbeat is older than this is `gone` (killed, or its machine
/// or network is down).
pub const GONE_AFTER_MS: i64 = 5 * 60_000;
/// Rows of coordinators gone (or stopped) for more than a day are deleted.
pub const PRUNE_AFTER_MS: i64 = GONE_AFTER_MS + 24 * 3_600_000;
/// How long a clean exit waits, at most, for another process's lock to mark itself stopped.
const LEAVE_BUDGET: Duration = Duration::from_secs(2);

string_enum!(
    /// A coordinator's health, from its heartbeat's age.
    Health {
        /// Heartbeat within the last 30 s.
        Ok => "ok",
        /// No heartbeat for 30 s: busy, paused, or on its way out.
        Stale => "stale",
        /// No heartbeat for 5 minutes, and no clean exit: killed, or unreachable.
        Gone => "gone",
        /// Exited cleanly.
        Stopped => "stopped",
    }
);

impl Health {
    /// The health of a coordinator whose last heartbeat is `age_ms` old.
    pub fn of(age_ms: i64, stopped: bool) -> Health {
        if stopped {
            Health::Stopped
        } else if age_ms > GONE_AFTER_MS {
            Health::Gone
        } else if age_ms > STALE_AFTER_MS {
            Health::Stale
        } else {
            Health::Ok
        }
    }
}

/// How a coordinator is reached.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Transports {
    /// Whether it serves MCP on stdin/stdout (an assistant launched it; only that assistant
    /// reaches it).
    #[serde(default)]
    pub stdio: bool,
    /// Its MCP endpoint over streamable HTTP (`https://HOST/mcp`), when it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Its oversight console, when it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<String>,
}

impl Transports {
    /// Where a person or a client reaches it: the base of its HTTP listener (MCP at `/mcp`,
    /// the console at `/`), else its console.
    pub fn url(&self) -> Option<String> {
        match &self.http {
            Some(mcp) => Some(mcp.strip_suffix("/mcp").unwrap_or(mcp).to_string()),
            None => self.console.clone(),
        }
    }
}

/// What a coordinator can do beyond its version's tools.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Capabilities {
    /// The toolsets that hold enabled tools (the config may switch groups off).
    #[serde(default)]
    pub toolsets: Vec<String>,
    /// The child MCP server types its catalog lets it run (`instance_types`).
    #[serde(default)]
    pub instance_types: Vec<String>,
}

/// What a coordinator says of itself when it joins.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// Random per process start (the session id that tags its audit events).
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub version: String,
    pub capabilities: Capabilities,
    /// The toolsets a client's connection starts with.
    pub toolsets: Vec<String>,
}

impl Identity {
    /// This process: its host, pid and version, with the given id and capabilities.
    pub fn this_process(id: &str, capabilities: Capabilities, toolsets: Vec<String>) -> Self {
        Identity {
            id: id.to_string(),
            host: crate::audit::host_name(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            capabilities,
            toolsets,
        }
    }
}

/// A coordinator of the fleet, as `coordinator_status` and the console show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Member {
    /// Random per process start; the `session_id` of its `coordinator_status`.
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// Its mcp-coordinator version.
    pub version: String,
    pub transports: Transports,
    /// Where it is reached: its HTTP listener's base URL, else its console's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The toolsets a client's connection starts with there.
    pub toolsets: Vec<String>,
    pub capabilities: Capabilities,
    pub started_at: String,
    /// When it exited cleanly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
    /// Seconds since its last heartbeat (every 10 s while it runs).
    pub heartbeat_age_seconds: f64,
    /// `ok` (heartbeat within 30 s), `stale`, `gone` (none for 5 minutes) or `stopped`.
    pub health: Health,
    /// Whether it is the coordinator answering.
    pub this_process: bool,
}

impl Member {
    fn from_listed(l: Listed, this: Option<&str>) -> Member {
        let r = l.row;
        // Written by this build or a newer one: what cannot be read is shown empty rather
        // than hiding the coordinator.
        let transports: Transports = serde_json::from_str(&r.transports).unwrap_or_default();
        Member {
            this_process: this == Some(r.id.as_str()),
            url: transports.url(),
            health: Health::of(l.heartbeat_age_ms, r.stopped_at.is_some()),
            heartbeat_age_seconds: l.heartbeat_age_ms.max(0) as f64 / 1000.0,
            id: r.id,
            host: r.host,
            pid: u32::try_from(r.pid).unwrap_or(0),
            version: r.version,
            transports,
            toolsets: serde_json::from_str(&r.toolsets).unwrap_or_default(),
            capabilities: serde_json::from_str(&r.capabilities).unwrap_or_default(),
            started_at: r.started_at,
            stopped_at: r.stopped_at,
        }
    }
}

/// Every coordinator on `store`'s database, live ones first; `this` marks the one asking.
pub fn members(store: &Store, this: Option<&str>) -> Result<Vec<Member>, StoreError> {
    let listed = store.read(|tx| sql::list(tx, None))?;
    Ok(listed
        .into_iter()
        .map(|l| Member::from_listed(l, this))
        .collect())
}

/// The most coordinators `coordinator_status` lists, and of them the most that have stopped.
pub const STATUS_LISTS: usize = 16;
pub const STATUS_LISTS_STOPPED: usize = 4;

/// The members `coordinator_status` lists: every one not stopped (`this` first, then the ones
/// heard from lately in the order they started, then the silent), then the last
/// [`STATUS_LISTS_STOPPED`] to stop, newest first, [`STATUS_LISTS`] in all; and
/// how many are left out. Stopped rows stay a day, and every stdio session an assistant opens
/// is a coordinator that starts and stops: listing them all made a status call's answer grow
/// by a kilobyte for each (111 KB after the bench's hundred cold starts). The console lists
/// every one.
pub fn for_status(store: &Store, this: Option<&str>) -> Result<(Vec<Member>, usize), StoreError> {
    let (listed, total) = store.read(|tx| {
        sql::list_recent(
            tx,
            this.unwrap_or_default(),
            STALE_AFTER_MS,
            STATUS_LISTS as i64,
            STATUS_LISTS_STOPPED as i64,
        )
    })?;
    let mut members: Vec<Member> = listed
        .into_iter()
        .map(|l| Member::from_listed(l, this))
        .collect();
    members.truncate(STATUS_LISTS);
    let left_out = usize::try_from(total)
        .unwrap_or(0)
        .saturating_sub(members.len());
    Ok((members, left_out))
}

/// One coordinator process's place in the fleet. Cheap to clone.
#[derive(Clone)]
pub struct FleetService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    id: String,
    state: Mutex<State>,
}

/// Held while writing, so that a heartbeat still running at exit cannot bring a stopped
/// coordinator back to life.
struct State {
    row: CoordinatorRow,
    phase: Phase,
    /// When the row was last written.
    written: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not registered: a coordinator that serves nothing (tests, commands) stays here.
    Outside,
    Joined,
    Left,
}

impl FleetService {
    pub fn new(store: Store, me: Identity) -> Self {
        let row = CoordinatorRow {
            id: me.id.clone(),
            host: me.host,
            pid: i64::from(me.pid),
            version: me.version,
            transports: json(&Transports::default()),
            capabilities: json(&me.capabilities),
            toolsets: json(&me.toolsets),
            started_at: now_ts(),
            heartbeat_ms: 0,
            stopped_at: None,
        };
        FleetService {
            inner: Arc::new(Inner {
                store,
                id: me.id,
                state: Mutex::new(State {
                    row,
                    phase: Phase::Outside,
                    written: None,
                }),
            }),
        }
    }

    /// This coordinator's id in the fleet.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers this coordinator, reached through `transports` (blocking: call it off the
    /// async threads). Heartbeats ([`periodic`](Self::periodic)) keep it live from then on.
    pub fn join(&self, transports: &Transports) -> Result<(), StoreError> {
        let mut state = self.state();
        if state.phase == Phase::Left {
            return Ok(());
        }
        state.row.transports = json(transports);
        state.phase = Phase::Joined;
        self.inner
            .store
            .write(|tx| sql::upsert(tx, &state.row, None))?;
        state.written = Some(Instant::now());
        Ok(())
    }

    /// One heartbeat, when joined and the last write is half an interval old: registers
    /// again if the row went missing, and prunes coordinators gone for more than a day.
    pub fn beat(&self) -> Result<(), StoreError> {
        let mut state = self.state();
        if state.phase != Phase::Joined
            || state
                .written
                .is_some_and(|at| at.elapsed() < HEARTBEAT_EVERY / 2)
        {
            return Ok(());
        }
        let pruned = self.inner.store.write(|tx| {
            if !sql::heartbeat(tx, &self.inner.id, None)? {
                sql::upsert(tx, &state.row, None)?;
            }
            sql::prune(tx, PRUNE_AFTER_MS, None)
        })?;
        state.written = Some(Instant::now());
        if pruned > 0 {
            tracing::info!(pruned, "removed coordinators gone for more than a day");
        }
        Ok(())
    }

    /// Marks this coordinator stopped (a clean exit), waiting at most 2 s for another
    /// process's lock; nothing when it never joined. Blocking. Heartbeats end with it.
    pub fn leave(&self) -> Result<(), StoreError> {
        let mut state = self.state();
        let joined = state.phase == Phase::Joined;
        state.phase = Phase::Left;
        if !joined {
            return Ok(());
        }
        budget::sync_scope(Budget::new(LEAVE_BUDGET), || {
            self.inner
                .store
                .write(|tx| sql::stop(tx, &self.inner.id, &now_ts(), None))
        })?;
        Ok(())
    }

    /// Every coordinator on this database, this one marked.
    pub fn members(&self) -> Result<Vec<Member>, StoreError> {
        members(&self.inner.store, Some(&self.inner.id))
    }

    /// What `coordinator_status` lists, and how many it leaves out ([`for_status`]).
    pub fn for_status(&self) -> Result<(Vec<Member>, usize), StoreError> {
        for_status(&self.inner.store, Some(&self.inner.id))
    }

    /// The heartbeat, every [`HEARTBEAT_EVERY`] (nothing until [`join`](Self::join)).
    pub fn periodic(&self) -> Vec<Periodic> {
        let fleet = self.clone();
        vec![Periodic::new(
            "fleet heartbeat",
            HEARTBEAT_EVERY,
            move || fleet.beat().map_err(|e| Skipped::new(e.is_busy(), e)),
        )]
    }
}

/// JSON text of a value stored in a JSON column (none of them can fail to serialize).
fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    fn me(id: &str) -> Identity {
        Identity {
            id: id.into(),
            host: "h".into(),
            pid: 7,
            version: "0.0.1".into(),
            capabilities: Capabilities {
                toolsets: vec!["system".into()],
                instance_types: vec!["echo".into()],
            },
            toolsets: vec!["system".into()],
        }
    }

    #[test]
    fn health_follows_the_heartbeat_age() {
        assert_eq!(Health::of(0, false), Health::Ok);
        assert_eq!(Health::of(STALE_AFTER_MS, false), Health::Ok);
        assert_eq!(Health::of(STALE_AFTER_MS + 1, false), Health::Stale);
        assert_eq!(Health::of(GONE_AFTER_MS + 1, false), Health::Gone);
        assert_eq!(Health::of(1, true), Health::Stopped);
        assert_eq!(Health::of(GONE_AFTER_MS + 1, true), Health::Stopped);
    }

    #[test]
    fn the_url_is_the_http_base_else_the_console() {
        let t = Transports {
            stdio: true,
            http: Some("https://c.example/mcp".into()),
            console: Some("https://c.example/".into()),
        };
        assert_eq!(t.url().as_deref(), Some("https://c.example"));
        let t = Transports { http: None, ..t };
        assert_eq!(t.url().as_deref(), Some("https://c.example/"));
        assert_eq!(Transports::default().url(), None);
    }

    /// Two coordinators on one database (both backends): each sees both once joined; a clean
    /// exit shows as stopped, and nothing (a late heartbeat, a second leave) undoes it.
    #[test]
    fn coordinators_join_see_each_other_and_leave() {
        for (name, store) in testing::both("fleet_service") {
            let a = FleetService::new(store.clone(), me("a"));
            let b = FleetService::new(store.clone(), me("b"));
            // Outside the fleet until joined: heartbeats and leaving write nothing.
            a.beat().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(a.members().is_ok_and(|m| m.is_empty()), "{name}");
            let http = Transports {
                stdio: false,
                http: Some("http://127.0.0.1:8760/mcp".into()),
                console: Some("http://127.0.0.1:8760/".into()),
            };
            a.join(&http).unwrap_or_else(|e| panic!("{name}: {e}"));
            b.join(&Transports {
                stdio: true,
                ..Transports::default()
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            let seen = a.members().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(seen.len(), 2, "{name}: {seen:#?}");
            let (ma, mb) = (&seen[0], &seen[1]);
            assert!(ma.this_process && !mb.this_process, "{name}: {seen:#?}");
            assert_eq!(ma.transports, http, "{name}");
            assert_eq!(ma.url.as_deref(), Some("http://127.0.0.1:8760"), "{name}");
            assert_eq!(ma.capabilities, me("a").capabilities, "{name}");
            assert_eq!(ma.toolsets, ["system"], "{name}");
            assert_eq!((ma.pid, ma.host.as_str()), (7, "h"), "{name}");
            assert!(
                seen.iter().all(|m| m.health == Health::Ok),
                "{name}: {seen:#?}"
            );
            assert!(mb.transports.stdio && mb.url.is_none(), "{name}");

            b.leave().unwrap_or_else(|e| panic!("{name}: {e}"));
            // A heartbeat after leaving, and a second leave, change nothing.
            b.beat().unwrap_or_else(|e| panic!("{name}: {e}"));
            b.leave().unwrap_or_else(|e| panic!("{name}: {e}"));
            b.join(&Transports::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let seen = members(&store, None).unwrap_or_else(|e| panic!("{name}: {e}"));
            let mb = seen.iter().find(|m| m.id == "b");
            assert!(
                mb.is_some_and(|m| m.health == Health::Stopped && m.stopped_at.is_some()),
                "{name}: {seen:#?}"
            );
            assert!(seen.iter().all(|m| !m.this_process), "{name}");
            assert_eq!(seen[0].id, "a", "{name}: live ones first");

            // A row that went missing (pruned by another) comes back at the next heartbeat.
            store
                .write(|tx| sql::prune(tx, -1_000_000, None))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(members(&store, None).is_ok_and(|m| m.is_empty()), "{name}");
            a.state().written = None;
            a.beat().unwrap_or_else(|e| panic!("{name}: {e}"));
            let seen = a.members().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(seen.len(), 1, "{name}: {seen:#?}");
            assert_eq!(seen[0].transports, http, "{name}");
        }
    }
}
