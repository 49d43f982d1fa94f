//! Claims: leasing the best tasks an agent may run in one transaction (aimed at it first, then
//! untargeted work in dispatch order, deferring to a lighter capable agent during the offer
//! window), and the wait of a long-polling claim for the database to change.

use std::time::Instant;

use serde_json::json;

use super::{NoTask, POLL, RECHECK, Task, TaskError, TaskService, TaskStatus, event};
use crate::agent::{AgentStatus, Health, now_ms};
use crate::audit::{Action, Actor, ActorKind};
use crate::store::Tx;
use crate::store::agent as agent_sql;
use crate::store::task::{self as sql, TaskRow};

impl TaskService {
    /// Leases the best task this agent may run, atomically (one write transaction), or says
    /// why there is none.
    pub fn claim(&self, token: &str) -> Result<Result<Task, NoTask>, TaskError> {
        self.claim_with_load(token, None)
    }

    /// [`claim`](Self::claim), first recording `load`, the agent's load right now, so dispatch
    /// does not decide on the load of its last heartbeat.
    pub fn claim_with_load(
        &self,
        token: &str,
        load: Option<f64>,
    ) -> Result<Result<Task, NoTask>, TaskError> {
        Ok(self
            .claim_many(token, load, 1)?
            .map(|mut tasks| tasks.remove(0)))
    }

    /// Leases up to `max` tasks in dispatch order in one transaction (a worker with spare
    /// slots, or a batch consumer). Never returns an empty list: no task is `Err(NoTask)`.
    pub fn claim_many(
        &self,
        token: &str,
        load: Option<f64>,
        max: usize,
    ) -> Result<Result<Vec<Task>, NoTask>, TaskError> {
        if let Some(l) = load
            && (!(0.0..=1.0).contains(&l) || l.is_nan())
        {
            return Err(TaskError::Invalid {
                field: "load",
                message: format!("expected 0 to 1, got {l}"),
            });
        }
        let now = now_ms();
        let cfg = self.agents.config().clone();
        // Lazily: a claim that finds nothing (an idle worker polling) writes nothing, so it
        // neither waits for nor blocks other writers and adds nothing to the WAL.
        self.store().write_lazily(
            |tx| {
                let mut me = self.agents.authenticate(tx, token)?;
                if let Some(l) = load
                    && l != me.load
                {
                    agent_sql::set_load(tx, &me.id, l)?;
                    me.load = l;
                }
                if me.status == AgentStatus::Draining {
                    return Ok(Err(NoTask::Draining));
                }
                if me.load > cfg.load_ceiling {
                    return Ok(Err(NoTask::LoadAboveCeiling));
                }
                // Untargeted work goes first to the least-loaded capable agent: a task that a
                // less-loaded, active agent could run is skipped until it has waited long enough.
                let lighter: Vec<Vec<String>> = agent_sql::list_registered(tx)?
                    .into_iter()
                    .filter(|a| {
                        a.id != me.id
                            && a.load < me.load
                            && a.load <= cfg.load_ceiling
                            && a.status != AgentStatus::Draining
                            && self.agents.health_at(a.last_heartbeat_ms, now) == Health::Active
                    })
                    .map(|a| serde_json::from_str(&a.capabilities).unwrap_or_default())
                    .collect();
                let actor = Actor::new(ActorKind::Agent, me.id.clone());
                let max = max.max(1);
                let mut leased = Vec::new();
                // `written`: the lease is already in the database (`sql::lease_each`).
                let mut lease = |mut task: TaskRow, written: bool| -> Result<bool, TaskError> {
                    let expires = now + task.timeout_ms;
                    if !written && !sql::lease(tx, &task.id, &me.id, now, expires)? {
                        return Ok(false);
                    }
                    self.append(
                        tx,
                        event(
                            actor.clone(),
                            Action::TaskLeased,
                            &task.id,
                            json!({"attempt": task.attempts + 1, "lease_expires_ms": expires}),
                        ),
                    )?;
                    // What `sql::lease` wrote, without reading the row back.
                    task.status = TaskStatus::Leased;
                    task.leased_by = Some(me.id.clone());
                    task.last_agent_id = Some(me.id.clone());
                    task.lease_expires_ms = Some(expires);
                    task.attempts += 1;
                    task.updated_ms = now;
                    task.progress = None;
                    task.message = None;
                    leased.push(Task::from(task));
                    Ok(true)
                };
                // Aimed at this agent first, then untargeted work in dispatch order. With no
                // lighter agent to defer to, one query fetches the whole batch.
                let mut taken = 0;
                let aimed =
                    sql::targeted_candidates(tx, &me.id, &me.capabilities, now, max as i64)?;
                if lighter.is_empty() {
                    // Every candidate is this agent's to take: all the leases go in one
                    // round trip (the write lock keeps each candidate queued meanwhile; a
                    // lease that finds one taken all the same just skips it).
                    let mut candidates = aimed;
                    if candidates.len() < max {
                        candidates.extend(sql::open_candidates(
                            tx,
                            &me.capabilities,
                            now,
                            None,
                            (max - candidates.len()) as i64,
                        )?);
                    }
                    let leases: Vec<(&str, i64)> = candidates
                        .iter()
                        .map(|t| (t.id.as_str(), now + t.timeout_ms))
                        .collect();
                    let done = sql::lease_each(tx, &leases, &me.id, now)?;
                    for (task, leased) in candidates.into_iter().zip(done) {
                        if leased {
                            lease(task, true)?;
                        }
                    }
                    taken = max;
                } else {
                    for t in aimed {
                        taken += usize::from(lease(t, false)?);
                    }
                }
                if taken < max {
                    while taken < max {
                        let Some(t) = self.pick(tx, &me.id, &me.capabilities, &lighter, now)?
                        else {
                            break;
                        };
                        if !lease(t, false)? {
                            break;
                        }
                        taken += 1;
                    }
                }
                Ok(if leased.is_empty() {
                    Err(NoTask::QueueEmpty)
                } else {
                    Ok(leased)
                })
            },
            TaskError::is_busy,
        )
    }

    /// A number that changes whenever anything is committed to the database, by any process:
    /// read it before a claim, and [`wait_for_change`](Self::wait_for_change) after an empty
    /// one.
    pub fn version(&self) -> Result<u64, TaskError> {
        Ok(self.store().data_version()?)
    }

    /// Resolves when the database changed since `seen` (a task may have been queued, by any
    /// process), when `until` passes, or after [`RECHECK`] at the latest (tasks also become
    /// claimable by time alone: `not_before`, retry backoff, the offer window). Polls the
    /// change counter every [`POLL`]: a pragma, not a transaction.
    pub async fn wait_for_change(&self, seen: u64, until: Instant) -> Result<(), TaskError> {
        let until = until.min(Instant::now() + RECHECK);
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            tokio::time::sleep(POLL.min(until - now)).await;
            if self.version()? != seen {
                return Ok(());
            }
        }
    }

    /// The next task this agent may take: aimed at it first, then untargeted in dispatch
    /// order, skipping tasks reserved for a lighter agent.
    fn pick(
        &self,
        tx: &Tx<'_>,
        agent_id: &str,
        caps: &str,
        lighter: &[Vec<String>],
        now: i64,
    ) -> Result<Option<TaskRow>, TaskError> {
        if let Some(t) = sql::targeted_candidates(tx, agent_id, caps, now, 1)?
            .into_iter()
            .next()
        {
            return Ok(Some(t));
        }
        let window = self.agents.config().offer_window_ms as i64;
        // With no lighter agent every candidate is acceptable, so one row is enough.
        let page_size = if lighter.is_empty() { 1 } else { 32 };
        let mut after: Option<(i64, i64, String)> = None;
        for _ in 0..8 {
            let page = sql::open_candidates(
                tx,
                caps,
                now,
                after.as_ref().map(|(p, c, i)| (*p, *c, i.as_str())),
                page_size,
            )?;
            let full = page.len() as i64 == page_size;
            for t in page {
                let needs: Vec<String> = serde_json::from_str(&t.capabilities).unwrap_or_default();
                let waited = now - t.created_ms.max(t.not_before_ms);
                let reserved = waited < window
                    && lighter
                        .iter()
                        .any(|their| needs.iter().all(|n| their.contains(n)));
                if !reserved {
                    return Ok(Some(t));
                }
                after = Some((t.priority, t.created_ms, t.id.clone()));
            }
            if !full {
                break;
            }
        }
        Ok(None)
    }
}
