//! Reading the queue: one task, a filtered page of tasks, and the queue's statistics.

use super::{Priority, QueueStats, Task, TaskError, TaskService, TaskStatus};
use crate::agent::now_ms;
use crate::store::StoreError;
use crate::store::task as sql;

impl TaskService {
    pub fn get(&self, id: &str) -> Result<Task, TaskError> {
        self.store()
            .read(|tx| sql::get(tx, id))?
            .map(Task::from)
            .ok_or_else(|| TaskError::NotFound(id.into()))
    }

    /// Tasks, most recently updated first; `cursor` continues a previous page.
    pub fn list(
        &self,
        status: Option<TaskStatus>,
        kind: Option<&str>,
        agent_id: Option<&str>,
        priority: Option<Priority>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<(Vec<Task>, Option<String>), TaskError> {
        let before = cursor
            .map(|c| {
                c.split_once('|')
                    .and_then(|(u, id)| u.parse::<i64>().ok().map(|u| (u, id)))
                    .ok_or_else(|| TaskError::Invalid {
                        field: "cursor",
                        message: format!("expected the next_cursor of a previous page, got {c:?}"),
                    })
            })
            .transpose()?;
        let filter = sql::ListFilter {
            status,
            kind,
            agent_id,
            priority: priority.map(Priority::rank),
            before,
        };
        let mut rows = self
            .store()
            .read(|tx| sql::list(tx, &filter, i64::from(limit) + 1))?;
        let next = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|r| format!("{}|{}", r.updated_ms, r.id))
        } else {
            None
        };
        Ok((rows.into_iter().map(Task::from).collect(), next))
    }

    pub fn stats(&self) -> Result<QueueStats, TaskError> {
        let now = now_ms();
        let (counts, finished, oldest) = self.store().read(|tx| {
            Ok::<_, StoreError>((
                sql::counts(tx)?,
                sql::finished_since(tx, now - 60_000)?,
                sql::oldest_queued_ms(tx)?,
            ))
        })?;
        let mut by_status = std::collections::BTreeMap::new();
        let mut queued_by_priority = std::collections::BTreeMap::new();
        for (status, priority, n) in counts {
            *by_status.entry(status.as_str().to_string()).or_insert(0) += n;
            if status == TaskStatus::Queued {
                *queued_by_priority
                    .entry(Priority::from_rank(priority).as_str().to_string())
                    .or_insert(0) += n;
            }
        }
        let finished: std::collections::BTreeMap<String, i64> = finished
            .into_iter()
            .map(|(status, n)| (status.as_str().to_string(), n))
            .collect();
        Ok(QueueStats {
            oldest_queued_age_seconds: oldest.map(|ms| (now - ms) as f64 / 1000.0),
            completed_per_second_last_minute: finished.get("completed").copied().unwrap_or(0)
                as f64
                / 60.0,
            dead_letters: by_status.get("dead").copied().unwrap_or(0),
            finished_last_minute: finished,
            by_status,
            queued_by_priority,
        })
    }
}
