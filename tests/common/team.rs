//! The team scenario's actors over HTTP: a connection that follows its coordinator through
//! kill -9 and restarts (back to it once it is up, or to another one meanwhile), workers that
//! register, heartbeat, claim in batches and report, and a person deciding an approval in a
//! coordinator's console with the overseer's passphrase.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientLifecycleMode, ClientServiceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::fleet::Fleet;
use super::{Client, Era, client_config};

/// How long one tool call may take before it counts as lost.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A call slower than this is logged (with its coordinator).
const SLOW: Duration = Duration::from_secs(5);
/// How long a connection keeps trying to reach any coordinator before the test gives up.
const UNREACHABLE_AFTER: Duration = Duration::from_secs(120);

/// What the actors saw, for the checks and the figures.
#[derive(Default)]
pub struct Stats {
    /// Completions the coordinator acknowledged, per task id.
    pub acked: Mutex<HashMap<String, u32>>,
    /// Times each task was run by a worker (a task whose lease was lost runs again).
    pub runs: Mutex<HashMap<String, u32>>,
    /// Refusals of reports, by code.
    pub refusals: Mutex<HashMap<String, u64>>,
    pub reconnects: AtomicU64,
    /// Calls lost to a coordinator going away (sent again after reconnecting).
    pub lost_calls: AtomicU64,
    pub claims: AtomicU64,
    pub registrations: AtomicU64,
}

impl Stats {
    fn refused(&self, code: &str) {
        *self
            .refusals
            .lock()
            .unwrap()
            .entry(code.to_string())
            .or_default() += 1;
    }
}

/// The `code` of a refusal (a tool error's structured content), or its text.
pub fn code_of(refusal: &Value) -> String {
    refusal["code"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| refusal.to_string().chars().take(200).collect())
}

/// An MCP connection over HTTP with a bearer, to one coordinator of the fleet at a time.
pub struct Conn {
    fleet: Arc<Fleet>,
    bearer: String,
    era: Era,
    name: String,
    /// The coordinator it prefers (tried first on every reconnect).
    pub home: usize,
    /// The coordinator it is connected to.
    pub at: usize,
    /// Waits for its home to come back rather than moving to another coordinator.
    pub loyal: bool,
    client: Option<Client>,
    stats: Arc<Stats>,
}

async fn connect(url: &str, bearer: &str, era: Era, name: &str) -> Result<Client, String> {
    let mut config =
        StreamableHttpClientTransportConfig::with_uri(url).auth_header(bearer.to_string());
    // rmcp's default resumes a broken SSE response with unbounded exponential backoff (1 s,
    // 2 s, 4 s, ...), so a call in flight when its coordinator dies hung until CALL_TIMEOUT:
    // resume a few times (the coordinator may be back), then let the call fail.
    let mut retry = rmcp::transport::common::client_side_sse::FixedInterval::default();
    retry.max_times = Some(3);
    retry.duration = Duration::from_millis(300);
    config.retry_config = Arc::new(retry);
    config.session_recovery_timeout = Duration::from_secs(1);
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    let lifecycle = match era {
        Era::Legacy => ClientLifecycleMode::Initialize,
        Era::Stateless => ClientLifecycleMode::Discover {
            preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
        },
    };
    match tokio::time::timeout(
        Duration::from_secs(10),
        client_config(name).serve_with_lifecycle(transport, lifecycle),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".into()),
    }
}

impl Conn {
    pub fn new(
        fleet: Arc<Fleet>,
        bearer: &str,
        era: Era,
        name: &str,
        home: usize,
        stats: Arc<Stats>,
    ) -> Conn {
        Conn {
            fleet,
            bearer: bearer.to_string(),
            era,
            name: name.to_string(),
            home,
            at: home,
            loyal: false,
            client: None,
            stats,
        }
    }

    /// Connects (its home first, then the others in turn) unless connected.
    async fn ensure(&mut self) {
        if self.client.is_some() {
            return;
        }
        let started = Instant::now();
        let n = self.fleet.len();
        let mut last = String::new();
        loop {
            for k in 0..if self.loyal { 1 } else { n } {
                let i = (self.home + k) % n;
                match connect(&self.fleet.mcp(i), &self.bearer, self.era, &self.name).await {
                    Ok(c) => {
                        self.client = Some(c);
                        self.at = i;
                        return;
                    }
                    Err(e) => last = format!("coordinator {i}: {e}"),
                }
            }
            assert!(
                started.elapsed() < UNREACHABLE_AFTER,
                "{}: no coordinator reachable for {UNREACHABLE_AFTER:?}; last: {last}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Forgets the connection (its coordinator went away): the next call reconnects.
    pub fn drop_connection(&mut self) {
        if self.client.take().is_some() {
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One attempt: `Ok(Ok(structured))`, `Ok(Err(refusal))`, or `Err(why)` when the call
    /// was lost (coordinator unreachable, gone mid-call, session unknown after a restart).
    pub async fn try_call(
        &mut self,
        tool: &str,
        args: &Value,
    ) -> Result<Result<Value, Value>, String> {
        self.ensure().await;
        let peer = self.client.as_ref().unwrap().peer().clone();
        let t = Instant::now();
        let r = call_once(&peer, tool, args).await;
        if t.elapsed() > SLOW {
            eprintln!(
                "[slow] {} {tool} at coordinator {} took {:?}: {}",
                self.name,
                self.at,
                t.elapsed(),
                match &r {
                    Ok(Ok(_)) => "answered".to_string(),
                    Ok(Err(refusal)) => code_of(refusal),
                    Err(e) => e.clone(),
                }
            );
        }
        if r.is_err() {
            self.stats.lost_calls.fetch_add(1, Ordering::Relaxed);
            self.drop_connection();
        }
        r
    }

    /// Calls `tool`, sending it again after reconnecting while it is lost: the structured
    /// result, or the refusal. Only for calls that are safe to send twice.
    pub async fn call(&mut self, tool: &str, args: Value) -> Result<Value, Value> {
        let started = Instant::now();
        loop {
            match self.try_call(tool, &args).await {
                Ok(r) => return r,
                Err(e) => {
                    assert!(
                        started.elapsed() < UNREACHABLE_AFTER,
                        "{}: {tool} lost for {UNREACHABLE_AFTER:?}: {e}",
                        self.name
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// A handle for calls in parallel on the current connection.
    pub async fn peer(&mut self) -> rmcp::service::Peer<rmcp::service::RoleClient> {
        self.ensure().await;
        self.client.as_ref().unwrap().peer().clone()
    }
}

/// One call on `peer`: see [`Conn::try_call`].
pub async fn call_once(
    peer: &rmcp::service::Peer<rmcp::service::RoleClient>,
    tool: &str,
    args: &Value,
) -> Result<Result<Value, Value>, String> {
    let mut params = CallToolRequestParams::new(tool.to_string());
    if let Value::Object(map) = args.clone() {
        params = params.with_arguments(map);
    }
    match tokio::time::timeout(CALL_TIMEOUT, peer.call_tool(params)).await {
        Err(_) => Err(format!("{tool} timed out")),
        Ok(Err(e)) => Err(format!("{tool}: {e}")),
        Ok(Ok(r)) => {
            let content = r.structured_content.clone().unwrap_or_else(
                || json!({"text": serde_json::to_value(&r.content).unwrap_or_default()}),
            );
            if r.is_error == Some(true) {
                Ok(Err(content))
            } else {
                Ok(Ok(content))
            }
        }
    }
}

/// A worker of the scenario.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub name: String,
    pub home: usize,
    pub era: Era,
    /// Its API key (agent role): a row in the shared database, good at every coordinator.
    pub key: String,
    pub capability: String,
    /// `max_tasks` of each claim.
    pub batch: u32,
    /// Reports in flight at once.
    pub parallel: usize,
    /// Reconnects only to its home coordinator (once restarted), keeping its agent token;
    /// otherwise it moves to another coordinator and registers there.
    pub loyal: bool,
}

/// Registers the worker: first as `name` proving it with `token` (after the agent went offline,
/// or a registration whose answer was lost), else under a new name. Agent tokens are signed
/// with a key in the data directory of the coordinator that issued them, so another coordinator
/// refuses them (`unauthorized`): a worker that moved registers there afresh, and its old
/// registration's leases return to the queue once that agent is offline.
async fn register(
    conn: &mut Conn,
    spec: &WorkerSpec,
    token: Option<&str>,
    stats: &Stats,
) -> String {
    let mut token = token.map(String::from);
    for attempt in 0..20 {
        let n = stats.registrations.load(Ordering::Relaxed);
        let name = if attempt == 0 && token.is_some() {
            spec.name.clone()
        } else {
            format!("{}-r{n}-{attempt}", spec.name)
        };
        let mut args = json!({"name": name, "agent_type": "worker",
                              "capabilities": [spec.capability]});
        if let Some(t) = &token {
            args["token"] = json!(t);
        }
        match conn.call("agent_register", args).await {
            Ok(r) => {
                stats.registrations.fetch_add(1, Ordering::Relaxed);
                return r["token"]
                    .as_str()
                    .expect("agent_register gives a token")
                    .to_string();
            }
            Err(refusal) => {
                stats.refused(&format!("agent_register {}", code_of(&refusal)));
                token = None;
            }
        }
    }
    panic!("{}: cannot register", spec.name);
}

/// The worker loop: register, then until `stop`: heartbeat every second, claim up to `batch`
/// tasks (long poll of 1 s), run each (recorded), report the results in parallel; a report lost
/// to a dying coordinator is sent again after reconnecting. Deregisters at the end.
pub async fn worker(
    fleet: Arc<Fleet>,
    spec: WorkerSpec,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let mut conn = Conn::new(
        fleet,
        &spec.key,
        spec.era,
        &spec.name,
        spec.home,
        stats.clone(),
    );
    conn.loyal = spec.loyal;
    let mut token = register(&mut conn, &spec, None, &stats).await;
    let mut beat = Instant::now();
    while !stop.is_cancelled() {
        if beat.elapsed() > Duration::from_secs(1) {
            beat = Instant::now();
            if let Err(refusal) = conn
                .call("agent_heartbeat", json!({"token": token, "load": 0.0}))
                .await
            {
                stats.refused(&format!("agent_heartbeat {}", code_of(&refusal)));
                token = register(&mut conn, &spec, Some(&token), &stats).await;
            }
        }
        let claim = json!({"token": token, "max_tasks": spec.batch, "wait_seconds": 1,
                           "load": 0.0});
        let tasks = match conn.call("task_claim", claim).await {
            Ok(r) => r["tasks"].as_array().cloned().unwrap_or_default(),
            Err(refusal) => {
                stats.refused(&format!("task_claim {}", code_of(&refusal)));
                token = register(&mut conn, &spec, Some(&token), &stats).await;
                continue;
            }
        };
        if tasks.is_empty() {
            continue;
        }
        stats.claims.fetch_add(1, Ordering::Relaxed);
        let mut pending: Vec<(String, Value)> = Vec::new();
        for t in &tasks {
            let id = t["id"].as_str().unwrap().to_string();
            *stats.runs.lock().unwrap().entry(id.clone()).or_default() += 1;
            // Not the params themselves: a stage's task carries the outputs of the stages
            // before it, so echoing them would nest each stage deeper than the last.
            let result = json!({"kind": t["kind"], "n": t["params"]["n"],
                                "stage": t["params"]["params"]["stage"], "by": spec.name});
            pending.push((id, result));
        }
        while !pending.is_empty() {
            let peer = conn.peer().await;
            let mut lost = Vec::new();
            for chunk in pending.chunks(spec.parallel.max(1)) {
                let calls = chunk.iter().map(|(id, result)| {
                    let peer = peer.clone();
                    let args = json!({"token": token, "task_id": id, "result": result});
                    async move { call_once(&peer, "task_report", &args).await }
                });
                let outcomes = futures_util::future::join_all(calls).await;
                for ((id, result), outcome) in chunk.iter().zip(outcomes) {
                    match outcome {
                        Ok(Ok(task)) => {
                            assert_eq!(task["status"], "completed", "{task}");
                            *stats.acked.lock().unwrap().entry(id.clone()).or_default() += 1;
                        }
                        // Its lease went elsewhere (expired while its coordinator was down,
                        // or it was completed by a report whose answer was lost).
                        Ok(Err(refusal)) => {
                            stats.refused(&format!("task_report {}", code_of(&refusal)))
                        }
                        Err(_) => lost.push((id.clone(), result.clone())),
                    }
                }
            }
            if !lost.is_empty() {
                stats
                    .lost_calls
                    .fetch_add(lost.len() as u64, Ordering::Relaxed);
                conn.drop_connection();
            }
            pending = lost;
        }
    }
    let _ = conn
        .try_call("agent_deregister", &json!({"token": token}))
        .await;
}

/// Decides approval `id` in the console at `base` as the overseer (passphrase login, as a
/// browser would: the form tokens, the session cookie, the console's Origin). Errors when the
/// console cannot be reached or refuses; `Ok(false)` when it was already decided.
pub async fn approve_in_console(
    base: &str,
    id: &str,
    passphrase: &str,
    reason: &str,
) -> Result<bool, String> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut cookie: Option<String> = None;
    let absorb = |r: &reqwest::Response, cookie: &mut Option<String>| {
        for v in r.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap_or("");
            if let Some(pair) = v.split(';').next()
                && let Some((name, value)) = pair.split_once('=')
                && name.starts_with("mcpc_session")
            {
                *cookie = (!value.is_empty()).then(|| pair.to_string());
            }
        }
    };
    let get = |path: String, cookie: Option<String>| {
        let mut rb = http
            .get(format!("{base}{path}"))
            .header("accept", "text/html");
        if let Some(c) = cookie {
            rb = rb.header("cookie", c);
        }
        rb.send()
    };
    let post = |path: String, fields: Vec<(&str, String)>, cookie: Option<String>| {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut rb = http
            .post(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", base)
            .body(body);
        if let Some(c) = cookie {
            rb = rb.header("cookie", c);
        }
        rb.send()
    };
    let e = |e: reqwest::Error| e.to_string();

    let r = get("/login".into(), None).await.map_err(e)?;
    absorb(&r, &mut cookie);
    let page = r.text().await.map_err(e)?;
    let csrf = super::console::form_token(&page).ok_or("no form token on /login")?;
    let r = post(
        "/login".into(),
        vec![("csrf", csrf), ("passphrase", passphrase.to_string())],
        cookie.clone(),
    )
    .await
    .map_err(e)?;
    absorb(&r, &mut cookie);
    if r.status() != 303 {
        return Err(format!(
            "login: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        ));
    }
    let r = get(format!("/approvals/{id}"), cookie.clone())
        .await
        .map_err(e)?;
    absorb(&r, &mut cookie);
    let status = r.status();
    let page = r.text().await.map_err(e)?;
    if status != 200 {
        return Err(format!("/approvals/{id}: {status} {page}"));
    }
    let action = format!("action=\"/approvals/{id}/approve\"");
    let Some(at) = page.find(&action) else {
        return Ok(false);
    };
    let csrf =
        super::console::form_token(&page[at..]).ok_or("no form token on the approve form")?;
    let r = post(
        format!("/approvals/{id}/approve"),
        vec![("csrf", csrf), ("reason", reason.to_string())],
        cookie.clone(),
    )
    .await
    .map_err(e)?;
    match r.status().as_u16() {
        303 => Ok(true),
        409 => Ok(false),
        s => Err(format!(
            "approve: {s} {}",
            r.text().await.unwrap_or_default()
        )),
    }
}
