//! What the worker does with a claimed task: runs the job its kind names (`sum`, `uppercase`,
//! `sleep`, the six-stage pipeline stages) and reports the outcome; and the counts of how tasks
//! ended, for the last log line.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::calls::{Lost, Shared, Task};
use crate::{MAX_SLEEP_MS, PROGRESS_EVERY};

/// How a job ended.
pub(crate) enum JobError {
    /// A job failure, reported with `task_report`'s `error`.
    Failed { message: String, retryable: bool },
    /// The lease is gone; nothing to report.
    Lost(Lost),
}

impl JobError {
    pub(crate) fn fatal(message: impl Into<String>) -> Self {
        JobError::Failed {
            message: message.into(),
            retryable: false,
        }
    }
}

impl From<Lost> for JobError {
    fn from(l: Lost) -> Self {
        JobError::Lost(l)
    }
}

/// How a task ended, for the worker's log and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Completed,
    Failed,
    Retrying,
    Dropped,
    HandedBack,
}

/// Task counts, for the last log line.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) claimed: u64,
    completed: u64,
    failed: u64,
    retrying: u64,
    dropped: u64,
    handed_back: u64,
}

impl Counts {
    pub(crate) fn record(&mut self, joined: Result<Ended, tokio::task::JoinError>) {
        match joined {
            Ok(Ended::Completed) => self.completed += 1,
            Ok(Ended::Failed) => self.failed += 1,
            Ok(Ended::Retrying) => self.retrying += 1,
            Ok(Ended::Dropped) => self.dropped += 1,
            Ok(Ended::HandedBack) => self.handed_back += 1,
            Err(e) => {
                tracing::error!("a task runner crashed: {e}");
                self.dropped += 1;
            }
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} task(s) claimed: {} completed, {} failed, {} to be retried, {} dropped, {} handed back",
            self.claimed,
            self.completed,
            self.failed,
            self.retrying,
            self.dropped,
            self.handed_back
        )
    }
}

/// Runs one claimed task and reports how it went.
pub(crate) async fn run_task(shared: Arc<Shared>, task: Task, abandon: CancellationToken) -> Ended {
    tracing::info!(
        attempt = task.attempts,
        of = task.max_retries + 1,
        "claimed"
    );
    let outcome = match shared
        .progress(
            &task.id,
            0.0,
            format!(
                "{} started {} (attempt {})",
                shared.name, task.kind, task.attempts
            ),
        )
        .await
    {
        Err(lost) => Err(JobError::Lost(lost)),
        Ok(()) => tokio::select! {
            biased;
            () = abandon.cancelled() => Err(JobError::Failed {
                message: "worker shutting down".into(),
                retryable: true,
            }),
            outcome = execute(&shared, &task) => outcome,
        },
    };
    let (fields, ended) = match outcome {
        Ok(mut result) => {
            result.insert("worker".into(), Value::String(shared.name.clone()));
            (
                Map::from_iter([("result".to_string(), Value::Object(result))]),
                Ended::Completed,
            )
        }
        Err(JobError::Failed { message, retryable }) => {
            let ended = if abandon.is_cancelled() {
                Ended::HandedBack
            } else if retryable {
                Ended::Retrying
            } else {
                Ended::Failed
            };
            let error = json!({"message": message, "retryable": retryable});
            (Map::from_iter([("error".to_string(), error)]), ended)
        }
        Err(JobError::Lost(Lost(why))) => {
            tracing::warn!("dropped: {why}");
            return Ended::Dropped;
        }
    };
    match shared.report(&task.id, fields.clone()).await {
        Ok(()) => {
            match ended {
                Ended::Completed => tracing::info!("completed"),
                _ => tracing::info!(error = %fields["error"]["message"], "reported {ended:?}"),
            }
            ended
        }
        Err(e) => {
            // Not the leaseholder any more, or the coordinator is gone: either way the lease
            // runs out (or deregistration returns the task) and it is retried elsewhere.
            tracing::warn!("could not report the outcome, dropping it: {e:#}");
            Ended::Dropped
        }
    }
}

/// Runs the job the task's kind names. `fail_times` makes the first attempts fail on purpose.
pub(crate) async fn execute(shared: &Shared, task: &Task) -> Result<Map<String, Value>, JobError> {
    if let Some(n) = task.params.get("fail_times") {
        let n = n
            .as_u64()
            .ok_or_else(|| JobError::fatal("params.fail_times must be a whole number"))?;
        if task.attempts <= n {
            return Err(JobError::Failed {
                message: format!(
                    "simulated failure of attempt {} (params.fail_times = {n})",
                    task.attempts
                ),
                retryable: true,
            });
        }
    }
    match task.kind.as_str() {
        "sum" => sum(&task.params),
        "uppercase" => uppercase(&task.params),
        "sleep" => sleep(shared, task).await,
        kind if PIPELINE_STAGES.contains(&kind) => pipeline_stage(task).await,
        other => Err(JobError::fatal(format!(
            "unknown task kind {other:?}: this worker runs sum, uppercase, sleep and the six_stage pipeline stages ({})",
            PIPELINE_STAGES.join(", ")
        ))),
    }
}

/// The stage kinds of the coordinator's `six_stage` pipeline template.
pub(crate) const PIPELINE_STAGES: [&str; 6] = [
    "ingestion",
    "transformation",
    "analysis",
    "validation",
    "processing",
    "output",
];

/// A `six_stage` pipeline stage: passes a record count along (from `input.records` for the
/// first stage, then the largest count among the upstream outputs), after waiting
/// `parameters.stage_ms` milliseconds (default 0) to stand in for real work.
pub(crate) async fn pipeline_stage(task: &Task) -> Result<Map<String, Value>, JobError> {
    let ms = task
        .params
        .pointer("/parameters/stage_ms")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .min(MAX_SLEEP_MS);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let upstream = task.params.get("upstream").and_then(Value::as_object);
    let records = upstream
        .and_then(|u| {
            u.values()
                .filter_map(|o| o.get("records").and_then(Value::as_u64))
                .max()
        })
        .or_else(|| {
            task.params
                .pointer("/input/records")
                .and_then(Value::as_u64)
        })
        .unwrap_or(100);
    let stage = task
        .params
        .pointer("/pipeline/stage")
        .cloned()
        .unwrap_or_else(|| json!(task.kind));
    Ok(Map::from_iter([
        ("stage".to_string(), stage),
        ("records".to_string(), json!(records)),
        (
            "after".to_string(),
            json!(
                upstream
                    .map(|u| u.keys().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
            ),
        ),
    ]))
}

/// `sum`: adds `params.numbers`; whole numbers stay whole.
pub(crate) fn sum(params: &Value) -> Result<Map<String, Value>, JobError> {
    let numbers = params
        .get("numbers")
        .and_then(Value::as_array)
        .ok_or_else(|| JobError::fatal("sum needs params.numbers, an array of numbers"))?;
    let whole: Option<Vec<i64>> = numbers.iter().map(Value::as_i64).collect();
    let total = match whole {
        Some(ints) => {
            let total = ints
                .iter()
                .try_fold(0i64, |acc, n| acc.checked_add(*n))
                .ok_or_else(|| JobError::fatal("sum overflows a 64-bit integer"))?;
            json!(total)
        }
        None => {
            let floats: Option<Vec<f64>> = numbers.iter().map(Value::as_f64).collect();
            let floats =
                floats.ok_or_else(|| JobError::fatal("params.numbers must hold only numbers"))?;
            json!(floats.iter().sum::<f64>())
        }
    };
    Ok(Map::from_iter([("sum".to_string(), total)]))
}

/// `uppercase`: uppercases `params.text`.
pub(crate) fn uppercase(params: &Value) -> Result<Map<String, Value>, JobError> {
    let text = params
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| JobError::fatal("uppercase needs params.text, a string"))?;
    Ok(Map::from_iter([(
        "text".to_string(),
        Value::String(text.to_uppercase()),
    )]))
}

/// `sleep`: waits `params.ms` milliseconds, reporting progress every 100 ms.
pub(crate) async fn sleep(shared: &Shared, task: &Task) -> Result<Map<String, Value>, JobError> {
    let ms = task
        .params
        .get("ms")
        .and_then(Value::as_u64)
        .filter(|ms| *ms <= MAX_SLEEP_MS)
        .ok_or_else(|| {
            JobError::fatal(format!(
                "sleep needs params.ms, a whole number of milliseconds up to {MAX_SLEEP_MS}"
            ))
        })?;
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_millis(ms);
    let mut tick = tokio::time::interval_at(start + PROGRESS_EVERY, PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(end) => break,
            _ = tick.tick() => {
                let done = start.elapsed().as_millis().min(u128::from(ms)) as u64;
                if done >= ms {
                    break;
                }
                shared
                    .progress(&task.id, done as f64 / ms as f64, format!("slept {done} of {ms} ms"))
                    .await?;
            }
        }
    }
    Ok(Map::from_iter([("slept_ms".to_string(), json!(ms))]))
}
