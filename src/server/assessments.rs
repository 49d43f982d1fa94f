//! Assessment and config tools: `mcp_config_list`, `assessment_request`, `assessment_get`,
//! `assessment_list`, `assessment_cancel`.

use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Coordinator;
use super::session::Call;
use super::tool::failure;
use super::tool::{self, ErrorCode, Failure, Route, ToolError, invalid_field, route};
use crate::assessment::{Assessment, AssessmentStatus, AssessmentType, Severity, Target};
use crate::auth::Permission;
use crate::clients::{self, ConfigFile};
use crate::config::ToolGroup;

/// The longest wait a call may ask for.
const MAX_WAIT_SECONDS: u64 = crate::limits::ASSESSMENT_WAIT_SECONDS.max;

pub fn routes() -> Vec<Route> {
    use ToolGroup::{Assessments, Configs};
    vec![
        route(
            tool::spec(
                "mcp_config_list",
                Permission::Install,
                "List MCP client configs on this machine",
                include_str!("../../tools/mcp_config_list.md"),
                Configs,
                true,
                false,
                true,
            ),
            mcp_config_list,
        ),
        route(
            tool::spec(
                "assessment_request",
                Permission::Assess,
                "Assess MCP client configs",
                include_str!("../../tools/assessment_request.md"),
                Assessments,
                false,
                false,
                false,
            ),
            assessment_request,
        ),
        route(
            tool::spec(
                "assessment_get",
                Permission::View,
                "Get an assessment and its findings",
                include_str!("../../tools/assessment_get.md"),
                Assessments,
                true,
                false,
                true,
            ),
            assessment_get,
        ),
        route(
            tool::spec(
                "assessment_list",
                Permission::View,
                "List assessments",
                include_str!("../../tools/assessment_list.md"),
                Assessments,
                true,
                false,
                true,
            ),
            assessment_list,
        ),
        route(
            tool::spec(
                "assessment_cancel",
                Permission::Assess,
                "Cancel a running assessment",
                include_str!("../../tools/assessment_cancel.md"),
                Assessments,
                false,
                false,
                false,
            ),
            assessment_cancel,
        ),
    ]
}

/// Arguments of `mcp_config_list`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigListInput {
    /// Home directory to search (default: the configured one, or $HOME).
    pub home: Option<String>,
    /// Project directories to search (default: the configured ones and the coordinator's
    /// working directory).
    pub projects: Option<Vec<String>>,
}

/// What `mcp_config_list` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ConfigList {
    /// Where it looked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    pub projects: Vec<String>,
    /// Every config file found, with its servers (secret values never shown).
    pub files: Vec<ConfigFile>,
    pub server_count: usize,
}

async fn mcp_config_list(
    c: Coordinator,
    i: ConfigListInput,
    _call: Call,
) -> Result<ConfigList, Failure> {
    let target = Target {
        home: i.home,
        projects: i.projects,
        ..Target::default()
    };
    c.blocking(move |c| {
        let roots = c.assessments().roots(&target);
        let files = clients::discover(&roots);
        ConfigList {
            home: roots.home.as_ref().map(|h| h.display().to_string()),
            projects: roots
                .projects
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            server_count: files.iter().map(|f| f.servers.len()).sum(),
            files,
        }
    })
    .await
    .map_err(Failure::Domain)
}

/// Arguments of `assessment_request`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestInput {
    /// `security` (secrets, unpinned packages, dangerous launches), `compliance` (the policy
    /// file's rules) or `health` (files that do not parse, commands not found).
    #[serde(rename = "type")]
    pub kind: AssessmentType,
    /// What to assess (default: every config found).
    #[serde(default)]
    pub target: Target,
    /// Wait up to this many seconds for the result (default 30; 0 returns the id at once).
    #[schemars(range(min = crate::limits::ASSESSMENT_WAIT_SECONDS.min, max = crate::limits::ASSESSMENT_WAIT_SECONDS.max))]
    pub wait_seconds: Option<u64>,
}

/// What the assessment tools return.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AssessmentResult {
    pub assessment_id: String,
    pub status: AssessmentStatus,
    pub message: String,
    pub assessment: Assessment,
}

fn result(a: Assessment) -> AssessmentResult {
    let message = match a.status {
        AssessmentStatus::Running => format!(
            "Assessment {} is running; assessment_get with its id shows the findings once it completes.",
            a.id
        ),
        AssessmentStatus::Completed => {
            let counts: Vec<String> = ["critical", "high", "medium", "low", "info"]
                .iter()
                .filter_map(|s| a.counts.get(*s).map(|n| format!("{n} {s}")))
                .collect();
            format!(
                "{} assessment {} of {} file(s): {}.{}",
                a.kind,
                a.id,
                a.files.len(),
                if counts.is_empty() {
                    "no findings".to_string()
                } else {
                    counts.join(", ")
                },
                if a.findings
                    .iter()
                    .any(|f| f.fix.as_ref().is_some_and(|x| x.action.is_some()))
                {
                    format!(
                        " remediation_propose with assessment_id {} turns the suggested fixes into one reviewable proposal.",
                        a.id
                    )
                } else {
                    String::new()
                }
            )
        }
        AssessmentStatus::Failed => format!(
            "Assessment {} failed: {}",
            a.id,
            a.error.as_deref().unwrap_or("unknown error")
        ),
        AssessmentStatus::Cancelled => format!("Assessment {} was cancelled.", a.id),
    };
    AssessmentResult {
        assessment_id: a.id.clone(),
        status: a.status,
        message,
        assessment: a,
    }
}

async fn assessment_request(
    c: Coordinator,
    i: RequestInput,
    call: Call,
) -> Result<AssessmentResult, Failure> {
    const TOOL: &str = "assessment_request";
    let wait = i.wait_seconds.unwrap_or(30);
    if wait > MAX_WAIT_SECONDS {
        return Err(Failure::Domain(invalid_field(
            TOOL,
            "wait_seconds",
            format!("expected 0 to {MAX_WAIT_SECONDS}, got {wait}"),
        )));
    }
    let actor = call.actor.clone();
    let a = c
        .blocking(move |c| c.assessments().request(i.kind, i.target, &actor))
        .await?
        .map_err(|e| failure(TOOL, e))?;
    let id = a.id.clone();
    // Run it off the request: recorded first, results when done (or never, if cancelled).
    let runner = c.clone();
    let run_id = id.clone();
    let job = c
        .workers()
        .spawn_blocking(move || runner.assessments().run(&run_id));
    if wait == 0 {
        drop(job);
        return Ok(result(a));
    }
    let deadline = Instant::now() + Duration::from_secs(wait);
    tokio::select! {
        done = job => {
            let a = done
                .map_err(|e| Failure::Domain(ToolError::new(ErrorCode::Internal, e.to_string())))?
                .map_err(|e| failure(TOOL, e))?;
            Ok(result(a))
        }
        () = tokio::time::sleep_until(deadline.into()) => {
            let a = c.blocking(move |c| c.assessments().get(&id)).await?.map_err(|e| failure(TOOL, e))?;
            Ok(result(a))
        }
        () = call.cancel.cancelled() => {
            let a = c.blocking(move |c| c.assessments().get(&id)).await?.map_err(|e| failure(TOOL, e))?;
            Ok(result(a))
        }
    }
}

/// Arguments of `assessment_get`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetInput {
    pub assessment_id: String,
    /// Only findings at or above this severity.
    pub min_severity: Option<Severity>,
    /// Only findings of this rule (`secret-in-env`...).
    pub rule: Option<String>,
}

async fn assessment_get(
    c: Coordinator,
    i: GetInput,
    _call: Call,
) -> Result<AssessmentResult, Failure> {
    let mut a = c
        .blocking(move |c| c.assessments().get(&i.assessment_id))
        .await?
        .map_err(|e| failure("assessment_get", e))?;
    if let Some(min) = i.min_severity {
        a.findings.retain(|f| f.severity.rank() >= min.rank());
    }
    if let Some(rule) = &i.rule {
        a.findings.retain(|f| &f.rule == rule);
    }
    Ok(result(a))
}

/// Arguments of `assessment_list`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListInput {
    pub status: Option<AssessmentStatus>,
    /// At most this many (1 to 200, default 20), newest first.
    #[schemars(range(min = crate::limits::SHORT_PAGE.min, max = crate::limits::SHORT_PAGE.max))]
    pub limit: Option<u32>,
}

/// What `assessment_list` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AssessmentList {
    /// Newest first, without their findings (`assessment_get` has them).
    pub assessments: Vec<Assessment>,
}

async fn assessment_list(
    c: Coordinator,
    i: ListInput,
    _call: Call,
) -> Result<AssessmentList, Failure> {
    let limit = i.limit.unwrap_or(20);
    if !crate::limits::SHORT_PAGE.contains(limit) {
        return Err(Failure::Domain(invalid_field(
            "assessment_list",
            "limit",
            format!("{}, got {limit}", crate::limits::SHORT_PAGE.expected()),
        )));
    }
    let assessments = c
        .blocking(move |c| c.assessments().list(i.status, limit))
        .await?
        .map_err(|e| failure("assessment_list", e))?;
    Ok(AssessmentList { assessments })
}

/// Arguments of `assessment_cancel`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelInput {
    pub assessment_id: String,
}

async fn assessment_cancel(
    c: Coordinator,
    i: CancelInput,
    call: Call,
) -> Result<AssessmentResult, Failure> {
    let actor = call.actor.clone();
    let a = c
        .blocking(move |c| c.assessments().cancel(&i.assessment_id, &actor))
        .await?
        .map_err(|e| failure("assessment_cancel", e))?;
    Ok(result(a))
}
