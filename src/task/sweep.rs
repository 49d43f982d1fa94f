//! Upkeep of the queue: purging old finished tasks, and the sweep that returns expired leases
//! (retried or dead) and the leases of offline agents (requeued) to the queue.

use serde_json::json;

use super::{TaskError, TaskService, TaskStatus, event};
use crate::agent::now_ms;
use crate::audit::{Action, Actor};
use crate::limits;
use crate::store::agent as agent_sql;
use crate::store::task as sql;

impl TaskService {
    /// Deletes tasks in the given final states that finished more than `retention_seconds` ago.
    pub fn purge(
        &self,
        retention_seconds: u64,
        statuses: &[TaskStatus],
        by: &Actor,
    ) -> Result<usize, TaskError> {
        if let Some(s) = statuses.iter().find(|s| !s.is_final()) {
            return Err(TaskError::Invalid {
                field: "statuses",
                message: format!(
                    "{} is not a final state; only finished tasks can be purged",
                    s.as_str()
                ),
            });
        }
        // A larger value wrapped to a negative one and purged every finished task.
        if !limits::PURGE_RETENTION_SECONDS.contains(retention_seconds) {
            return Err(TaskError::Invalid {
                field: "retention_seconds",
                message: format!(
                    "{}, got {retention_seconds}",
                    limits::PURGE_RETENTION_SECONDS.expected()
                ),
            });
        }
        let before = now_ms() - (retention_seconds as i64) * 1000;
        let names: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
        self.store().write(|tx| {
            let n = sql::purge(tx, statuses, before)?;
            self.append(
                tx,
                event(by.clone(), Action::TaskPurged, "tasks",
                      json!({"deleted": n, "statuses": names, "retention_seconds": retention_seconds})),
            )?;
            Ok(n)
        })
    }

    /// Returns expired leases (timed out: retried or dead) and the leases of offline agents
    /// (requeued, attempt refunded) to the queue. Safe to run from every process at once.
    pub fn sweep(&self) -> Result<(usize, usize), TaskError> {
        let now = now_ms();
        let interval = self.agents.config().heartbeat_interval_ms as i64;
        // Lazily, like a claim: a sweep that finds nothing (almost all of them) takes no write
        // lock, so idle coordinators sharing a file do not queue behind each other's sweeps.
        self.store().write_lazily(
            |tx| {
                let system = Actor::system();
                let expired = sql::expired_leases(tx, now)?;
                for t in &expired {
                    self.append(
                        tx,
                        event(
                            system.clone(),
                            Action::TaskTimedOut,
                            &t.id,
                            json!({"leased_by": t.leased_by, "attempt": t.attempts}),
                        ),
                    )?;
                    self.retry_or_bury(
                        tx,
                        t,
                        "lease expired before the agent reported a result",
                        &system,
                        now,
                    )?;
                }
                let mut orphaned = 0;
                for agent in agent_sql::silent_since(tx, now - 5 * interval)? {
                    for t in sql::held_by(tx, &agent)? {
                        sql::requeue(tx, &t.id, now, None, true, false, now)?;
                        self.append(
                            tx,
                            event(
                                system.clone(),
                                Action::TaskRequeued,
                                &t.id,
                                json!({"why": "agent offline", "agent": agent}),
                            ),
                        )?;
                        orphaned += 1;
                    }
                }
                Ok((expired.len(), orphaned))
            },
            TaskError::is_busy,
        )
    }
}
