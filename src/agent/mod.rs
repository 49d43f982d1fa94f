//! Worker agents: registration with a signed token, heartbeats, health derived from heartbeat
//! age, discovery by capability, type and health, and graceful deregistration that hands the
//! agent's work back to the queue.
//!
//! What lives here: this file (the config, the agent as tools show it, errors, the service),
//! `token.rs` (the signed agent tokens and their key) and `status.rs` (an agent's type and
//! status, a leaf the store reads).
//!
//! It may depend on `audit` and `store` (the agents table through `store::agent`, and the
//! tasks table through `store::task` to hand a leaving agent's work back, inside one
//! `store::Tx`). It is below `task` and `pipeline`, which authenticate agents through it, and
//! never sees rmcp or SQL.

pub mod status;
pub mod token;

use std::str::FromStr;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::audit::chain::{format_ms, now_ts};
use crate::audit::{Action, Actor, ActorKind, AuditLog, NewEvent, Outcome};
use crate::fault::{ErrorCode, Fault, IntoFault};
use crate::limits;
use crate::macros::string_enum;
use crate::store::agent::{self as sql, AgentRow};
use crate::store::task as task_sql;
use crate::store::{Store, StoreError, Tx};
pub use status::{AgentStatus, AgentType};
pub use token::{Claims, TokenError, TokenKeys};

/// `[agents]` in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// How often agents are expected to heartbeat, in milliseconds (default 30000). An agent
    /// that missed two is `stale`, five is `offline` (its leased tasks go back to the queue).
    #[schemars(range(min = limits::HEARTBEAT_INTERVAL_MS.min, max = limits::HEARTBEAT_INTERVAL_MS.max))]
    pub heartbeat_interval_ms: u64,
    /// Agents reporting a load above this (0..1) are not offered tasks (default 0.9).
    #[schemars(range(min = limits::LOAD.min, max = limits::LOAD.max))]
    pub load_ceiling: f64,
    /// How long agent tokens are valid, in seconds (default 86400).
    #[schemars(range(min = limits::TOKEN_TTL_SECONDS.min, max = limits::TOKEN_TTL_SECONDS.max))]
    pub token_ttl_seconds: u64,
    /// An untargeted task is first offered to the least-loaded capable agent; after it has
    /// waited this long (ms) any capable agent may take it (default 1000).
    #[schemars(range(min = limits::OFFER_WINDOW_MS.min, max = limits::OFFER_WINDOW_MS.max))]
    pub offer_window_ms: u64,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            heartbeat_interval_ms: 30_000,
            load_ceiling: 0.9,
            token_ttl_seconds: 86_400,
            offer_window_ms: 1_000,
        }
    }
}

impl AgentsConfig {
    pub fn validate(&self) -> Result<(), String> {
        limits::HEARTBEAT_INTERVAL_MS
            .check("agents.heartbeat_interval_ms", self.heartbeat_interval_ms)?;
        limits::LOAD.check("agents.load_ceiling", self.load_ceiling)?;
        limits::TOKEN_TTL_SECONDS.check("agents.token_ttl_seconds", self.token_ttl_seconds)?;
        limits::OFFER_WINDOW_MS.check("agents.offer_window_ms", self.offer_window_ms)
    }
}

string_enum!(
    /// Health, from heartbeat age against the configured interval.
    Health {
        /// Heartbeat within two intervals.
        Active => "active",
        /// Missed two heartbeats.
        Stale => "stale",
        /// Missed five heartbeats; its leases are returned to the queue.
        Offline => "offline",
    }
);

/// Compute resources an agent offers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub cpu: Option<f64>,
    /// Memory in MB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// GPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
}

/// An agent as tools show it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Agent {
    pub id: String,
    pub name: String,
    pub agent_type: AgentType,
    pub capabilities: Vec<String>,
    pub endpoints: Map<String, Value>,
    pub resources: Resources,
    pub metadata: Map<String, Value>,
    /// What the agent last reported.
    pub status: AgentStatus,
    /// Load it last reported, 0..1.
    pub load: f64,
    pub health: Health,
    pub registered_at: String,
    /// RFC 3339 time of the last heartbeat.
    pub last_heartbeat: String,
    /// Milliseconds since the last heartbeat.
    pub heartbeat_age_ms: i64,
}

/// What registration returns.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Registration {
    pub agent: Agent,
    /// The agent token: pass it to agent_heartbeat, task_claim, task_report, agent_deregister.
    pub token: String,
    pub token_expires_at: String,
    /// True when an existing registration of this name was refreshed.
    pub refreshed: bool,
    /// How often to heartbeat.
    pub heartbeat_interval_ms: u64,
}

/// A registration request.
#[derive(Debug, Clone)]
pub struct NewAgent {
    pub name: String,
    pub agent_type: AgentType,
    pub capabilities: Vec<String>,
    pub endpoints: Map<String, Value>,
    pub resources: Resources,
    pub metadata: Map<String, Value>,
    /// The agent's current token, when refreshing its registration.
    pub token: Option<String>,
    /// Who registered it (the client, and over HTTP the principal): the agent's own events
    /// name the agent, and this ties it to whoever vouched for it.
    pub by: Actor,
}

/// Errors of agents and tasks.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("agent {0} not found")]
    NotFound(String),
    #[error(
        "an active agent named {0:?} is already registered; pass its token to refresh the registration, or pick another name"
    )]
    NameTaken(String),
    #[error("agent token refused: {0}")]
    Revoked(String),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl IntoFault for AgentError {
    fn into_fault(self) -> Fault {
        match self {
            AgentError::Store(e) => Fault::Store(e),
            AgentError::Token(e) => Fault::new(ErrorCode::Unauthorized, e.to_string())
                .with_details(json!({"field": "token"})),
            AgentError::Revoked(m) => {
                Fault::new(ErrorCode::Unauthorized, format!("agent token refused: {m}"))
                    .with_details(json!({"field": "token"}))
            }
            AgentError::NotFound(id) => {
                Fault::new(ErrorCode::NotFound, format!("agent {id} not found"))
                    .with_details(json!({"agent_id": id}))
            }
            e @ AgentError::NameTaken(_) => Fault::new(ErrorCode::Conflict, e.to_string()),
            AgentError::Invalid { field, message } => Fault::invalid(field, message),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Normalizes capabilities: trimmed, non-empty, sorted, unique.
pub fn normalize_capabilities(caps: &[String]) -> Result<Vec<String>, AgentError> {
    if caps.len() > limits::CAPABILITIES {
        return Err(AgentError::Invalid {
            field: "capabilities",
            message: format!("at most {} items, got {}", limits::CAPABILITIES, caps.len()),
        });
    }
    let mut out: Vec<String> = Vec::with_capacity(caps.len());
    for c in caps {
        let c = c.trim();
        if c.is_empty() || c.chars().count() > limits::NAME_CHARS {
            return Err(AgentError::Invalid {
                field: "capabilities",
                message: format!(
                    "each capability is a non-empty string of at most {} characters",
                    limits::NAME_CHARS
                ),
            });
        }
        out.push(c.to_string());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Agents on one database.
#[derive(Clone)]
pub struct AgentService {
    audit: AuditLog,
    config: AgentsConfig,
    keys: Arc<TokenKeys>,
}

impl AgentService {
    pub fn new(audit: AuditLog, config: AgentsConfig, keys: Arc<TokenKeys>) -> Self {
        AgentService {
            audit,
            config,
            keys,
        }
    }

    pub fn config(&self) -> &AgentsConfig {
        &self.config
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    fn store(&self) -> &Store {
        self.audit.store()
    }

    pub fn health_at(&self, last_heartbeat_ms: i64, now: i64) -> Health {
        let age = now - last_heartbeat_ms;
        let interval = self.config.heartbeat_interval_ms as i64;
        if age > 5 * interval {
            Health::Offline
        } else if age > 2 * interval {
            Health::Stale
        } else {
            Health::Active
        }
    }

    pub fn to_agent(&self, r: AgentRow, now: i64) -> Agent {
        Agent {
            agent_type: r.agent_type,
            capabilities: serde_json::from_str(&r.capabilities).unwrap_or_default(),
            endpoints: serde_json::from_str(&r.endpoints).unwrap_or_default(),
            resources: serde_json::from_str(&r.resources).unwrap_or_default(),
            metadata: serde_json::from_str(&r.metadata).unwrap_or_default(),
            status: r.status,
            load: r.load,
            health: self.health_at(r.last_heartbeat_ms, now),
            last_heartbeat: format_ms(r.last_heartbeat_ms),
            heartbeat_age_ms: now - r.last_heartbeat_ms,
            id: r.id,
            name: r.name,
            registered_at: r.registered_at,
        }
    }

    /// Registers an agent, or refreshes the registration of the same name when the caller
    /// proves it is that agent (its token) or the old one is gone (deregistered or offline).
    pub fn register(&self, new: NewAgent) -> Result<Registration, AgentError> {
        let name = new.name.trim().to_string();
        if name.is_empty() || name.chars().count() > limits::NAME_CHARS {
            return Err(AgentError::Invalid {
                field: "name",
                message: format!(
                    "a non-empty name of at most {} characters",
                    limits::NAME_CHARS
                ),
            });
        }
        let caps = normalize_capabilities(&new.capabilities)?;
        // A presented token must be valid: a refresh with a bad token is refused, not ignored.
        let presented = new
            .token
            .as_deref()
            .map(|t| self.keys.verify(t))
            .transpose()?;
        let now = now_ms();
        let (row, refreshed) = self.store().write(|tx| -> Result<_, AgentError> {
            let existing = sql::by_name(tx, &name)?;
            let (id, generation, registered_at, refreshed) = match existing {
                Some(old) => {
                    let proves = presented.as_ref().is_some_and(|c| c.sub == old.id);
                    let gone = old.deregistered_at.is_some()
                        || self.health_at(old.last_heartbeat_ms, now) == Health::Offline;
                    if !proves && !gone {
                        return Err(AgentError::NameTaken(name.clone()));
                    }
                    (old.id, old.token_generation + 1, old.registered_at, true)
                }
                None => (
                    format!("agt_{}", uuid::Uuid::new_v4().simple()),
                    1,
                    now_ts(),
                    false,
                ),
            };
            let row = AgentRow {
                id,
                name: name.clone(),
                agent_type: new.agent_type,
                capabilities: serde_json::to_string(&caps).unwrap_or_else(|_| "[]".into()),
                endpoints: Value::Object(new.endpoints.clone()).to_string(),
                resources: serde_json::to_string(&new.resources).unwrap_or_else(|_| "{}".into()),
                metadata: Value::Object(new.metadata.clone()).to_string(),
                status: AgentStatus::Ready,
                load: 0.0,
                registered_at,
                last_heartbeat_ms: now,
                token_generation: generation,
                deregistered_at: None,
            };
            sql::upsert(tx, &row)?;
            self.audit.append_in(
                tx,
                &NewEvent {
                    actor: Actor::new(ActorKind::Agent, row.id.clone()),
                    action: if refreshed {
                        Action::AgentRefreshed
                    } else {
                        Action::AgentRegistered
                    },
                    subject: row.id.clone(),
                    outcome: Outcome::Ok,
                    detail: json!({"name": row.name, "agent_type": row.agent_type,
                                   "capabilities": caps, "generation": generation,
                                   "registered_by": new.by.render()}),
                    critical: false,
                },
            )?;
            Ok((row, refreshed))
        })?;
        let ttl = self.config.token_ttl_seconds as i64;
        let now_s = now / 1000;
        let token = self
            .keys
            .issue(&row.id, &row.name, row.token_generation, now_s, ttl)?;
        Ok(Registration {
            agent: self.to_agent(row, now),
            token,
            token_expires_at: format_ms((now_s + ttl) * 1000),
            refreshed,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
        })
    }

    /// Checks a token and returns the live agent it names.
    pub fn authenticate(&self, tx: &Tx<'_>, token: &str) -> Result<AgentRow, AgentError> {
        let claims = self.keys.verify(token)?;
        let row = sql::get(tx, &claims.sub)?
            .ok_or_else(|| AgentError::Revoked(format!("agent {} does not exist", claims.sub)))?;
        if row.deregistered_at.is_some() {
            return Err(AgentError::Revoked(format!(
                "agent {} was deregistered; register again",
                row.id
            )));
        }
        if row.token_generation != claims.generation {
            return Err(AgentError::Revoked(format!(
                "a newer registration of agent {} replaced this token",
                row.id
            )));
        }
        Ok(row)
    }

    /// Records a heartbeat: load, status, optional new capabilities.
    pub fn heartbeat(
        &self,
        token: &str,
        load: f64,
        status: AgentStatus,
        capabilities: Option<Vec<String>>,
    ) -> Result<Agent, AgentError> {
        if !(0.0..=1.0).contains(&load) || load.is_nan() {
            return Err(AgentError::Invalid {
                field: "load",
                message: format!("expected 0 to 1, got {load}"),
            });
        }
        let caps = capabilities
            .map(|c| normalize_capabilities(&c))
            .transpose()?
            .map(|c| serde_json::to_string(&c).unwrap_or_else(|_| "[]".into()));
        let now = now_ms();
        // Heartbeats are frequent and change no shared state worth a chain entry; they are
        // still audited as tool calls.
        let row = self.store().write(|tx| -> Result<_, AgentError> {
            let row = self.authenticate(tx, token)?;
            sql::heartbeat(tx, &row.id, now, load, status, caps.as_deref())?;
            sql::get(tx, &row.id)?.ok_or_else(|| AgentError::NotFound(row.id.clone()))
        })?;
        Ok(self.to_agent(row, now))
    }

    /// Registered agents, filtered.
    pub fn list(
        &self,
        capability: Option<&str>,
        agent_type: Option<AgentType>,
        health: Option<Health>,
    ) -> Result<Vec<Agent>, AgentError> {
        let now = now_ms();
        let rows = self.store().read(sql::list_registered)?;
        Ok(rows
            .into_iter()
            .map(|r| self.to_agent(r, now))
            .filter(|a| capability.is_none_or(|c| a.capabilities.iter().any(|x| x == c)))
            .filter(|a| agent_type.is_none_or(|t| a.agent_type == t))
            .filter(|a| health.is_none_or(|h| a.health == h))
            .collect())
    }

    /// Deregisters the agent the token names: its leased tasks go back to the queue (the
    /// attempt refunded), tasks aimed at it are opened to every capable agent, and its tokens
    /// stop working. Returns (agent id, tasks requeued, tasks retargeted).
    pub fn deregister(&self, token: &str) -> Result<(String, usize, usize), AgentError> {
        let now = now_ms();
        self.store().write(|tx| -> Result<_, AgentError> {
            let row = self.authenticate(tx, token)?;
            let held = task_sql::held_by(tx, &row.id)?;
            for t in &held {
                task_sql::requeue(tx, &t.id, now, None, true, true, now)?;
                self.audit.append_in(
                    tx,
                    &NewEvent {
                        actor: Actor::new(ActorKind::Agent, row.id.clone()),
                        action: Action::TaskRequeued,
                        subject: t.id.clone(),
                        outcome: Outcome::Ok,
                        detail: json!({"why": "agent deregistered", "from": "leased"}),
                        critical: false,
                    },
                )?;
            }
            let targeted = task_sql::targeting(tx, &row.id)?;
            for id in &targeted {
                task_sql::requeue(tx, id, now, None, false, true, now)?;
            }
            sql::deregister(tx, &row.id, &now_ts())?;
            self.audit.append_in(
                tx,
                &NewEvent {
                    actor: Actor::new(ActorKind::Agent, row.id.clone()),
                    action: Action::AgentDeregistered,
                    subject: row.id.clone(),
                    outcome: Outcome::Ok,
                    detail: json!({"requeued": held.len(), "retargeted": targeted.len()}),
                    critical: false,
                },
            )?;
            Ok((row.id, held.len(), targeted.len()))
        })
    }
}
