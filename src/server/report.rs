//! `task_report`: the leaseholder's report on a task, or several in one call (`reports`),
//! from the arguments' one-kind rule to each report's outcome.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Coordinator;
use super::session::Call;
use super::tool::{ErrorCode, Failure, ToolError, failure, invalid_field};
use crate::task::{Report, Task};

/// An error reported by the agent.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportedError {
    #[schemars(length(max = crate::limits::MESSAGE_CHARS))]
    pub message: String,
    /// Whether trying again may succeed (default true): retried with backoff until
    /// max_retries, then dead. False fails the task for good.
    pub retryable: Option<bool>,
}

/// Arguments of `task_report`: one report (`task_id` and its kind), or several in `reports`.
/// A report carries exactly one kind: `result` (completes the task, whatever the value, `null`
/// included), `error` (ends this attempt), or `progress` and/or `message` (still working;
/// renews the lease).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportInput {
    /// The agent token; only the agent holding the lease may report.
    pub token: String,
    /// The task this report is for; required unless `reports` is sent.
    pub task_id: Option<String>,
    /// Progress so far, 0 to 1 (a progress report; not with `result` or `error`).
    #[schemars(range(min = crate::limits::LOAD.min, max = crate::limits::LOAD.max))]
    pub progress: Option<f64>,
    /// What it is doing now (a progress report; not with `result` or `error`).
    #[schemars(length(max = crate::limits::MESSAGE_CHARS))]
    pub message: Option<String>,
    /// The final result, any JSON value including `null`: completes the task. Present means
    /// done; leave the key out for a progress report.
    #[serde(default, deserialize_with = "present")]
    #[schemars(transform = no_default)]
    pub result: Option<Value>,
    /// The final error of this attempt (not with `result`).
    pub error: Option<ReportedError>,
    /// Several reports at once, 1 to 100, instead of `task_id` and one kind: applied in one
    /// transaction, each judged on its own, each outcome returned in `reports`.
    #[schemars(length(min = crate::limits::REPORT_BATCH.min, max = crate::limits::REPORT_BATCH.max))]
    pub reports: Option<Vec<ReportItem>>,
}

/// One report of a batch: a task and exactly one kind, as in a single report. Its fields
/// repeat [`ReportInput`]'s: serde cannot flatten one struct into another that refuses
/// unknown fields, and a misspelt field must be refused, not dropped.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportItem {
    pub task_id: String,
    /// Progress so far, 0 to 1 (a progress report).
    #[schemars(range(min = crate::limits::LOAD.min, max = crate::limits::LOAD.max))]
    pub progress: Option<f64>,
    /// What it is doing now (a progress report).
    #[schemars(length(max = crate::limits::MESSAGE_CHARS))]
    pub message: Option<String>,
    /// The final result, any JSON value including `null`: completes the task.
    #[serde(default, deserialize_with = "present")]
    #[schemars(transform = no_default)]
    pub result: Option<Value>,
    /// The final error of this attempt.
    pub error: Option<ReportedError>,
}

/// Keeps a key that is present with `null` apart from an absent one (`#[serde(default)]`
/// gives `None` for absent; this gives `Some(Value::Null)` for `null`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Drops the `"default": null` schemars writes for `result`: leaving the key out is not the
/// same as sending `null`.
fn no_default(schema: &mut schemars::Schema) {
    schema.remove("default");
}

/// The one kind of report these fields carry, or the field that breaks the rule.
fn one_kind(
    progress: Option<f64>,
    message: Option<String>,
    result: Option<Value>,
    error: Option<ReportedError>,
) -> Result<Report, (&'static str, String)> {
    const KINDS: &str = "a report carries exactly one of `result` (completes the task), \
                         `error` (ends the attempt) or `progress`/`message` (still working)";
    let is_progress = progress.is_some() || message.is_some();
    let progress_field = if progress.is_some() {
        "progress"
    } else {
        "message"
    };
    match (result, error) {
        (Some(_), Some(_)) => Err((
            "error",
            format!("{KINDS}; this one has `result` and `error`"),
        )),
        (Some(_), None) if is_progress => Err((
            progress_field,
            format!("{KINDS}; this one has `result` and `{progress_field}`"),
        )),
        (None, Some(_)) if is_progress => Err((
            progress_field,
            format!("{KINDS}; this one has `error` and `{progress_field}`"),
        )),
        (Some(result), None) => Ok(Report::Result(result)),
        (None, Some(e)) => Ok(Report::Error {
            message: e.message,
            retryable: e.retryable.unwrap_or(true),
        }),
        (None, None) if is_progress => Ok(Report::Progress { progress, message }),
        (None, None) => Err(("result", format!("{KINDS}; this one has none"))),
    }
}

/// What the arguments ask for: one report, or a batch.
enum Asked {
    One(String, Report),
    Many(Vec<(String, Report)>),
}

impl ReportInput {
    /// The report or reports these arguments carry, or the field that breaks the rules.
    fn into_asked(self) -> Result<Asked, (String, String)> {
        let Some(items) = self.reports else {
            let task_id = self.task_id.ok_or_else(|| {
                (
                    "task_id".to_string(),
                    "required: the task this report is for (or send `reports`)".to_string(),
                )
            })?;
            let report = one_kind(self.progress, self.message, self.result, self.error)
                .map_err(|(field, m)| (field.to_string(), m))?;
            return Ok(Asked::One(task_id, report));
        };
        let single = [
            ("task_id", self.task_id.is_some()),
            ("progress", self.progress.is_some()),
            ("message", self.message.is_some()),
            ("result", self.result.is_some()),
            ("error", self.error.is_some()),
        ];
        if let Some((field, _)) = single.iter().find(|(_, sent)| *sent) {
            return Err((
                field.to_string(),
                "not with `reports`: put each report, its task_id included, in `reports`"
                    .to_string(),
            ));
        }
        // The schema's bounds checked the most; the least is this.
        if items.is_empty() {
            return Err((
                "reports".to_string(),
                format!(
                    "{} reports, got none",
                    crate::limits::REPORT_BATCH.expected()
                ),
            ));
        }
        items
            .into_iter()
            .enumerate()
            .map(|(at, i)| {
                one_kind(i.progress, i.message, i.result, i.error)
                    .map(|r| (i.task_id, r))
                    .map_err(|(field, m)| (format!("reports[{at}].{field}"), m))
            })
            .collect::<Result<_, _>>()
            .map(Asked::Many)
    }
}

/// What `task_report` returns: the task, for one report; for `reports`, each one's outcome.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Reported {
    /// The reported task as it now is (one report).
    #[serde(flatten)]
    pub task: Option<Task>,
    /// Each report's outcome, in the order sent (`reports`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reports: Option<Vec<ReportOutcome>>,
}

/// How one report of a batch went: the task as it now is, or why it was refused (the others
/// went on).
#[derive(Debug, Serialize, JsonSchema)]
pub struct ReportOutcome {
    pub task_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ToolError>,
}

pub(super) async fn task_report(
    c: Coordinator,
    i: ReportInput,
    _call: Call,
) -> Result<Reported, Failure> {
    let token = i.token.clone();
    let asked = i
        .into_asked()
        .map_err(|(field, m)| Failure::Domain(invalid_field("task_report", &field, m)))?;
    match asked {
        Asked::One(task_id, report) => {
            let task = c
                .blocking(move |c| c.tasks().report(&token, &task_id, report))
                .await?
                .map_err(|e| failure("task_report", e))?;
            Ok(Reported {
                task: Some(task),
                reports: None,
            })
        }
        Asked::Many(reports) => {
            let ids: Vec<String> = reports.iter().map(|(id, _)| id.clone()).collect();
            let outcomes = c
                .blocking(move |c| c.tasks().report_many(&token, reports))
                .await?
                .map_err(|e| failure("task_report", e))?;
            let reports = ids
                .into_iter()
                .zip(outcomes)
                .enumerate()
                .map(|(at, (task_id, outcome))| match outcome {
                    Ok(task) => ReportOutcome {
                        task_id,
                        task: Some(task),
                        error: None,
                    },
                    Err(e) => ReportOutcome {
                        task_id,
                        task: None,
                        error: Some(match failure(&format!("task_report reports[{at}]"), e) {
                            Failure::Domain(err) => err,
                            // Only a question handle is refused as a protocol error; no
                            // report has one.
                            Failure::Protocol(p) => ToolError::new(ErrorCode::Internal, p.message),
                        }),
                    },
                })
                .collect();
            Ok(Reported {
                task: None,
                reports: Some(reports),
            })
        }
    }
}
