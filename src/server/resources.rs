//! Resources: each pipeline run is readable as `coordinator://pipeline-runs/{id}` (JSON), and
//! clients can subscribe to it (`resources/subscribe` on initialize-era sessions,
//! `subscriptions/listen` on 2026-07-28) to get `notifications/resources/updated` as it moves.

use std::time::Duration;

use rmcp::ErrorData;
use rmcp::model::{
    ListResourceTemplatesResult, ListResourcesResult, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate,
};
use rmcp::service::{Peer, RoleServer, SubscriptionSink};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Coordinator;
use crate::pipeline::{RunStatus, run_uri};

/// The URI prefix of pipeline runs; the id follows it with nothing after.
const RUN_PREFIX: &str = "coordinator://pipeline-runs/";
/// How often a subscription checks the database for changes made by other processes.
const POLL: Duration = Duration::from_millis(250);

/// The run id named by a resource URI, if it names one.
pub fn run_id_of(uri: &str) -> Option<&str> {
    let id = uri.strip_prefix(RUN_PREFIX)?;
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then_some(id)
}

fn not_found(uri: &str) -> ErrorData {
    ErrorData::resource_not_found(
        format!(
            "no resource {uri}; pipeline runs are {RUN_PREFIX}<run_id> (pipeline_list shows recent runs)"
        ),
        Some(json!({"uri": uri})),
    )
}

pub fn templates() -> ListResourceTemplatesResult {
    ListResourceTemplatesResult::with_all_items(vec![
        ResourceTemplate::new(format!("{RUN_PREFIX}{{run_id}}"), "pipeline-run")
            .with_title("Pipeline run")
            .with_description(
                "A pipeline run: its status and every stage's status, timings, outputs and errors (the same object pipeline_run_get returns). Subscribe to be told when it changes.",
            )
            .with_mime_type("application/json"),
    ])
}

/// The most recent runs, as resources.
pub async fn list(c: &Coordinator) -> Result<ListResourcesResult, ErrorData> {
    let runs = c
        .blocking(|c| c.pipelines().list_runs(None, None, 50, None))
        .await
        .map_err(|e| ErrorData::internal_error(e.message, None))?
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
        .0;
    Ok(ListResourcesResult::with_all_items(
        runs.into_iter()
            .map(|r| {
                Resource::new(r.resource_uri.clone(), format!("pipeline-run-{}", r.id))
                    .with_title(format!(
                        "{} v{} run ({})",
                        r.pipeline_name, r.version, r.status
                    ))
                    .with_mime_type("application/json")
            })
            .collect(),
    ))
}

pub async fn read(c: &Coordinator, uri: &str) -> Result<ReadResourceResult, ErrorData> {
    let id = run_id_of(uri).ok_or_else(|| not_found(uri))?.to_string();
    let run = c
        .blocking(move |c| c.pipelines().get_run(&id))
        .await
        .map_err(|e| ErrorData::internal_error(e.message, None))?
        .map_err(|_| not_found(uri))?;
    let text = serde_json::to_string_pretty(&run)
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
    Ok(ReadResourceResult::new(vec![
        ResourceContents::text(text, uri).with_mime_type("application/json"),
    ]))
}

/// Checks that a URI names an existing run (for subscribing).
pub async fn check(c: &Coordinator, uri: &str) -> Result<String, ErrorData> {
    let id = run_id_of(uri).ok_or_else(|| not_found(uri))?.to_string();
    let lookup = id.clone();
    let stamp = c
        .blocking(move |c| c.pipelines().stamp(&lookup))
        .await
        .map_err(|e| ErrorData::internal_error(e.message, None))?
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
    stamp.map(|_| id).ok_or_else(|| not_found(uri))
}

/// Where an update notification goes.
#[derive(Clone)]
pub enum Target {
    /// An initialize-era session that called `resources/subscribe`.
    Peer(Peer<RoleServer>),
    /// A 2026-07-28 `subscriptions/listen` stream.
    Sink(SubscriptionSink),
}

impl Target {
    async fn updated(&self, uri: &str) -> bool {
        match self {
            Target::Peer(p) => p
                .notify_resource_updated(rmcp::model::ResourceUpdatedNotificationParam::new(uri))
                .await
                .is_ok(),
            Target::Sink(s) => s.notify_resource_updated(uri).await.is_ok(),
        }
    }
}

/// Sends `notifications/resources/updated` for one run each time it changes, until `stop`
/// is cancelled, the client is gone, or the run has ended (after telling it so).
pub async fn watch_run(c: Coordinator, run_id: String, target: Target, stop: CancellationToken) {
    // However it ends, the subscription is over: its entry is dropped at the next subscribe.
    let _ended = stop.clone().drop_guard();
    let uri = run_uri(&run_id);
    let mut changes = c.pipelines().watch();
    let stamp_of = |c: &Coordinator, id: String| {
        let c = c.clone();
        async move {
            c.blocking(move |c| c.pipelines().stamp(&id))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
        }
    };
    let mut last = stamp_of(&c, run_id.clone()).await;
    if last.as_ref().is_some_and(|(s, _)| *s != RunStatus::Running) {
        return;
    }
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = changes.changed() => {}
            () = tokio::time::sleep(POLL) => {}
        }
        let now = stamp_of(&c, run_id.clone()).await;
        if now == last {
            continue;
        }
        last = now;
        if !target.updated(&uri).await {
            return;
        }
        if last.as_ref().is_none_or(|(s, _)| *s != RunStatus::Running) {
            return;
        }
    }
}
