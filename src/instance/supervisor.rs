//! The supervisor of one instance: launches the child (or connects to its URL), initializes it
//! with a timeout, lists and pins its tools, then watches it (exit, health checks, TTL, tool
//! list changes, commands) and restarts it with exponential backoff until it is stopped,
//! expires, or crashes too often (`crash_loop`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{
    ClientCapabilities, ClientConfig, ClientRequest, Implementation, PingRequest, ProtocolVersion,
};
use rmcp::service::{NotificationContext, RoleClient, RunningService};
use rmcp::{ClientHandler, ServiceExt};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::process::{self, ChildProcess, SpawnSpec};
use super::{Cmd, Conn, InstanceError, InstanceService, Live, Status, expand, lock};
use crate::audit::chain::now_ts;
use crate::audit::{Action, Actor, Outcome};

/// The coordinator's client side of one child: it only listens for `tools/list_changed`.
#[derive(Clone)]
pub(super) struct ChildClient {
    tools_changed: mpsc::UnboundedSender<()>,
}

impl ClientHandler for ChildClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("mcp-coordinator", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.tools_changed.send(());
    }
}

/// One connection to a child.
struct Session {
    service: RunningService<RoleClient, ChildClient>,
    process: Option<ChildProcess>,
    tools_changed: mpsc::UnboundedReceiver<()>,
}

/// Why a session ended.
enum Exit {
    Stop(Actor, Option<oneshot::Sender<()>>),
    Restart(Actor, Option<oneshot::Sender<Result<(), String>>>),
    Shutdown,
    Expired,
    Crashed(String),
    Unhealthy(String),
}

pub(super) async fn supervise(
    svc: InstanceService,
    live: Arc<Live>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    mut first: Option<oneshot::Sender<Result<(), InstanceError>>>,
    restored: bool,
) {
    let restart = live.ty.restart.clone();
    let mut recent: VecDeque<Instant> = VecDeque::new();
    let mut backoff = Duration::from_millis(restart.backoff_initial_ms);
    let mut pending_restart: Option<oneshot::Sender<Result<(), String>>> = None;
    let mut is_restart = restored;
    loop {
        let shutdown = svc.inner.shutdown.clone();
        // A stop does not wait for a slow start: the attempt is dropped, and with it the
        // child (dropping a `ChildProcess` SIGKILLs its group).
        let connecting = connect(&svc, &live);
        tokio::pin!(connecting);
        let attempt = loop {
            tokio::select! {
                r = &mut connecting => break r,
                () = shutdown.cancelled() => {
                    finish(&svc, &live, Status::Stopped, Action::InstanceStopped, "the coordinator is shutting down", true);
                    return;
                }
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Stop { by, done }) => {
                        let why = format!("stopped by {} while starting", by.render());
                        finish(&svc, &live, Status::Stopped, Action::InstanceStopped, &why, false);
                        if let Some(tx) = first.take() {
                            let _ = tx.send(Err(InstanceError::NotRunning {
                                name: live.name.clone(),
                                status: Status::Stopped,
                                hint: format!("it was {why}"),
                            }));
                        }
                        if let Some(tx) = pending_restart.take() {
                            let _ = tx.send(Err(why));
                        }
                        let _ = done.send(());
                        return;
                    }
                    // Already starting: the restart is answered when this start ends.
                    Some(Cmd::Restart { done, .. }) => {
                        if let Some(earlier) = pending_restart.replace(done) {
                            let _ = earlier.send(Err("another restart was asked for".into()));
                        }
                    }
                    Some(Cmd::Refresh { done }) => {
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                    }
                    None => return,
                },
            }
        };
        let exit = match attempt {
            Err(e) => {
                let message = e.to_string();
                if let Some(tx) = first.take() {
                    let mut row = live.row();
                    row.status = Status::Failed;
                    row.last_error = Some(message.clone());
                    row.stopped_at = Some(now_ts());
                    row.updated_at = now_ts();
                    *lock(&live.row) = row.clone();
                    let _ = svc.persist(
                        &row,
                        Action::InstanceFailed,
                        Outcome::Error,
                        json!({"error": message, "stderr": stderr_tail(&e)}),
                    );
                    remove(&svc, &live);
                    let _ = tx.send(Err(e));
                    return;
                }
                if let Some(tx) = pending_restart.take() {
                    let _ = tx.send(Err(message.clone()));
                }
                Exit::Crashed(message)
            }
            Ok(mut session) => {
                if let Some(p) = session.process.as_mut() {
                    p.scan_tree();
                }
                on_up(&svc, &live, &session, is_restart);
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(()));
                }
                if let Some(tx) = pending_restart.take() {
                    let _ = tx.send(Ok(()));
                }
                let up = Instant::now();
                let exit = watch(&svc, &live, &mut session, &mut rx).await;
                // A session that stayed up a while earns a fresh backoff.
                if up.elapsed()
                    >= Duration::from_millis(restart.backoff_max_ms).max(Duration::from_secs(60))
                {
                    backoff = Duration::from_millis(restart.backoff_initial_ms);
                }
                let shutting_down = matches!(exit, Exit::Shutdown);
                teardown(&svc, &live, session, shutting_down).await;
                exit
            }
        };
        is_restart = true;
        match exit {
            Exit::Stop(by, done) => {
                let why = format!("stopped by {}", by.render());
                finish(
                    &svc,
                    &live,
                    Status::Stopped,
                    Action::InstanceStopped,
                    &why,
                    false,
                );
                if let Some(done) = done {
                    let _ = done.send(());
                }
                return;
            }
            Exit::Shutdown => {
                finish(
                    &svc,
                    &live,
                    Status::Stopped,
                    Action::InstanceStopped,
                    "the coordinator exited",
                    true,
                );
                return;
            }
            Exit::Expired => {
                expire(&svc, &live);
                return;
            }
            Exit::Restart(by, done) => {
                bump(
                    &svc,
                    &live,
                    Status::Restarting,
                    Action::InstanceRestarted,
                    &format!("restart requested by {}", by.render()),
                );
                pending_restart = done;
            }
            Exit::Crashed(why) | Exit::Unhealthy(why) => {
                let mut row = live.row();
                row.last_error = Some(why.clone());
                *lock(&live.row) = row;
                if !restart.enabled {
                    finish(
                        &svc,
                        &live,
                        Status::Failed,
                        Action::InstanceExited,
                        &why,
                        false,
                    );
                    return;
                }
                let now = Instant::now();
                let window = Duration::from_secs(restart.window_seconds);
                while recent
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > window)
                {
                    recent.pop_front();
                }
                if recent.len() as u32 >= restart.max_restarts {
                    let msg = format!(
                        "{why}; {} restarts within {} s: left in crash_loop for a person (instance_get shows its stderr; instance_restart or instance_stop)",
                        recent.len(),
                        restart.window_seconds
                    );
                    bump(
                        &svc,
                        &live,
                        Status::CrashLoop,
                        Action::InstanceCrashLoop,
                        &msg,
                    );
                    // Wait for a person: stop, restart, or the coordinator's exit.
                    loop {
                        let shutdown = svc.inner.shutdown.clone();
                        tokio::select! {
                            cmd = rx.recv() => match cmd {
                                Some(Cmd::Stop { by, done }) => {
                                    finish(&svc, &live, Status::Stopped, Action::InstanceStopped, &format!("stopped by {}", by.render()), false);
                                    let _ = done.send(());
                                    return;
                                }
                                Some(Cmd::Restart { by, done }) => {
                                    recent.clear();
                                    backoff = Duration::from_millis(restart.backoff_initial_ms);
                                    bump(&svc, &live, Status::Restarting, Action::InstanceRestarted, &format!("restart requested by {}", by.render()));
                                    pending_restart = Some(done);
                                    break;
                                }
                                Some(Cmd::Refresh { .. }) => {}
                                None => return,
                            },
                            () = shutdown.cancelled() => {
                                // A crash loop is not resumed by the next coordinator.
                                finish(&svc, &live, Status::Stopped, Action::InstanceStopped, "the coordinator exited while it was in crash_loop", false);
                                return;
                            }
                            () = ttl_ends(expiry(&live)) => {
                                expire(&svc, &live);
                                return;
                            }
                        }
                    }
                    continue;
                }
                recent.push_back(now);
                bump(
                    &svc,
                    &live,
                    Status::Restarting,
                    Action::InstanceExited,
                    &format!("{why}; restarting in {} ms", backoff.as_millis()),
                );
                let shutdown = svc.inner.shutdown.clone();
                let sleep = tokio::time::sleep(backoff);
                tokio::pin!(sleep);
                backoff = (backoff * 2).min(Duration::from_millis(restart.backoff_max_ms));
                loop {
                    tokio::select! {
                        () = &mut sleep => break,
                        cmd = rx.recv() => match cmd {
                            Some(Cmd::Stop { by, done }) => {
                                finish(&svc, &live, Status::Stopped, Action::InstanceStopped, &format!("stopped by {}", by.render()), false);
                                let _ = done.send(());
                                return;
                            }
                            Some(Cmd::Restart { done, .. }) => {
                                pending_restart = Some(done);
                                break;
                            }
                            Some(Cmd::Refresh { .. }) => {}
                            None => return,
                        },
                        () = shutdown.cancelled() => {
                            finish(&svc, &live, Status::Stopped, Action::InstanceStopped, "the coordinator exited", true);
                            return;
                        }
                        () = ttl_ends(expiry(&live)) => {
                            expire(&svc, &live);
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// When the instance's time to live runs out, if it has one.
fn expiry(live: &Live) -> Option<tokio::time::Instant> {
    live.row()
        .expires_at
        .and_then(|e| {
            time::OffsetDateTime::parse(&e, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|e| {
            let left = (e - time::OffsetDateTime::now_utc()).max(time::Duration::ZERO);
            tokio::time::Instant::now() + Duration::from_secs_f64(left.as_seconds_f64())
        })
}

/// Resolves when `expires` passes; never without one.
async fn ttl_ends(expires: Option<tokio::time::Instant>) {
    match expires {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Ends an instance whose time to live ran out while it had no child (waiting to restart,
/// or in crash_loop).
fn expire(svc: &InstanceService, live: &Arc<Live>) {
    finish(
        svc,
        live,
        Status::Expired,
        Action::InstanceExpired,
        "its time to live ran out",
        false,
    );
}

/// The last stderr lines carried by a start failure.
fn stderr_tail(e: &InstanceError) -> Vec<String> {
    match e {
        InstanceError::StartFailed { stderr, .. } => stderr.clone(),
        _ => Vec::new(),
    }
}

/// Launches (or reaches) the child, initializes it and lists and pins its tools.
async fn connect(svc: &InstanceService, live: &Arc<Live>) -> Result<Session, InstanceError> {
    let ty = live.ty.clone();
    let name = live.name.clone();
    let mut row = live.row();
    let secret_names = ty.required_secrets();
    let secrets: HashMap<String, String> = if secret_names.is_empty() {
        HashMap::new()
    } else {
        svc.inner
            .secrets
            .reveal_many_with(
                &secret_names,
                &Actor::system(),
                json!({"instance": name, "type": live.type_name}),
            )
            .map_err(|e| InstanceError::StartFailed {
                name: name.clone(),
                message: format!("secret store: {e}"),
                stderr: Vec::new(),
            })?
            .into_iter()
            .collect()
    };
    let redact = super::redact::Redactor::new(secrets.values());
    let (tools_tx, tools_rx) = mpsc::unbounded_channel();
    let client = ChildClient {
        tools_changed: tools_tx,
    };
    let init = ty.init_timeout();
    let masks = redact.clone();
    let fail = |message: String, stderr: Vec<String>| InstanceError::StartFailed {
        name: name.clone(),
        // The error may quote what the child sent.
        message: masks.text(&message).into_owned(),
        stderr,
    };
    let mut fast_link = None;
    let (service, process) = if let Some(url) = &ty.url {
        let mut headers = Vec::new();
        for (k, v) in &ty.headers {
            headers.push((k.clone(), expand(v, &secrets, &format!("headers.{k}"))?));
        }
        let transport = super::http::transport(url, &headers).map_err(|m| fail(m, Vec::new()))?;
        let service = match tokio::time::timeout(init, client.serve(transport)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(fail(format!("initialize failed: {e}"), Vec::new())),
            Err(_) => {
                return Err(fail(
                    format!(
                        "no answer to initialize within {} s",
                        ty.init_timeout_seconds
                    ),
                    Vec::new(),
                ));
            }
        };
        (service, None)
    } else {
        let mut env = std::collections::BTreeMap::new();
        for (k, v) in &ty.env {
            let value = match live.overrides.env.get(k) {
                Some(o) => o.clone(),
                None => expand(v, &secrets, &format!("env.{k}"))?,
            };
            env.insert(k.clone(), value);
        }
        let spec = SpawnSpec {
            program: ty.command.clone().unwrap_or_default(),
            args: ty.args.clone(),
            env,
            cwd: ty.cwd.as_ref().map(std::path::PathBuf::from),
            limits: process::Limits {
                address_space_mb: ty.limits.address_space_mb,
                cpu_seconds: ty.limits.cpu_seconds,
                open_files: ty.limits.open_files,
            },
            label: name.clone(),
            redact: redact.clone(),
        };
        let (mut child, stdin, stdout) =
            process::spawn(&spec).map_err(|e| fail(e.to_string(), Vec::new()))?;
        *lock(&live.stderr) = child.stderr.clone();
        row.pid = Some(i64::from(child.pid));
        *lock(&live.row) = row.clone();
        let (link, from_child, to_child) =
            match super::fast::interpose(svc, live, &redact, stdin, stdout) {
                Ok(parts) => parts,
                Err(e) => {
                    child.terminate(Duration::from_millis(500)).await;
                    return Err(fail(format!("cannot relay its pipes: {e}"), Vec::new()));
                }
            };
        fast_link = Some(link);
        let started = tokio::time::timeout(init, client.serve((from_child, to_child))).await;
        let service = match started {
            Ok(Ok(s)) => s,
            other => {
                let why = match other {
                    Ok(Err(e)) => format!("initialize failed: {e}"),
                    _ => format!(
                        "no answer to initialize within {} s",
                        ty.init_timeout_seconds
                    ),
                };
                let status = child.terminate(Duration::from_millis(500)).await;
                // Give the stderr reader a moment to take the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let tail = child.stderr.lines();
                let last = child.stderr.last(5);
                let message = if last.is_empty() {
                    format!("{why} ({status:?}); it wrote nothing to stderr")
                } else {
                    format!("{why} ({status:?}); its stderr ends with:\n{last}")
                };
                return Err(fail(message, tail));
            }
        };
        (service, Some(child))
    };
    let tools = match tokio::time::timeout(init, service.peer().list_all_tools()).await {
        Ok(Ok(t)) => t,
        other => {
            let why = match other {
                Ok(Err(e)) => format!("tools/list failed: {e}"),
                _ => format!(
                    "no answer to tools/list within {} s",
                    ty.init_timeout_seconds
                ),
            };
            let mut session = Session {
                service,
                process,
                tools_changed: tools_rx,
            };
            let tail = session
                .process
                .as_ref()
                .map(|p| p.stderr.lines())
                .unwrap_or_default();
            close(&mut session, Duration::from_millis(500)).await;
            return Err(fail(why, tail));
        }
    };
    let table = svc.apply_pins(live, &tools)?;
    *lock(&live.conn) = Some(Conn {
        peer: service.peer().clone(),
        raw: Arc::new(tools),
        table: Arc::new(table),
        fast: fast_link,
        redact,
    });
    Ok(Session {
        service,
        process,
        tools_changed: tools_rx,
    })
}

/// Records that a connection is up and offers its tools.
fn on_up(svc: &InstanceService, live: &Arc<Live>, session: &Session, is_restart: bool) {
    let conn = live.conn();
    let tools = conn.as_ref().map_or(0, |c| c.table.by_part.len()) as i64;
    let hidden: Vec<_> = conn
        .as_ref()
        .map(|c| {
            c.table
                .hidden
                .iter()
                .map(|h| json!({"tool": h.tool, "reason": h.reason}))
                .collect()
        })
        .unwrap_or_default();
    let mut row = live.row();
    let now = now_ts();
    row.status = Status::Running;
    row.pid = session.process.as_ref().map(|p| i64::from(p.pid));
    if row.started_at.is_none() || is_restart {
        row.started_at = Some(now.clone());
    }
    row.health = "ok".into();
    row.tools = tools;
    row.updated_at = now;
    // Offer the tools before the status says running: whoever sees `running` (in
    // instance_list) must find the tools in tools/list too.
    svc.publish_tools();
    *lock(&live.row) = row.clone();
    *lock(&live.up_since) = Some(Instant::now());
    lock(&live.breaker).success();
    let action = if is_restart {
        Action::InstanceRestarted
    } else {
        Action::InstanceStarted
    };
    if let Err(e) = svc.persist(
        &row,
        action,
        Outcome::Ok,
        json!({"pid": row.pid, "tools": tools, "hidden": hidden, "restarts": row.restarts}),
    ) {
        tracing::warn!(instance = %live.name, error = %e, "could not record the instance start");
    }
    tracing::info!(instance = %live.name, pid = ?row.pid, tools, "child instance running");
}

/// Watches a running session until something ends it.
async fn watch(
    svc: &InstanceService,
    live: &Arc<Live>,
    session: &mut Session,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
) -> Exit {
    let ty = live.ty.clone();
    let mut health = tokio::time::interval(Duration::from_secs_f64(ty.health.interval_seconds));
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    health.tick().await;
    let mut failures = 0u32;
    let expires = expiry(live);
    let shutdown = svc.inner.shutdown.clone();
    loop {
        let ttl = ttl_ends(expires);
        let exited = async {
            match session.process.as_mut() {
                Some(p) => p
                    .wait()
                    .await
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Cmd::Stop { by, done }) => return Exit::Stop(by, Some(done)),
                Some(Cmd::Restart { by, done }) => return Exit::Restart(by, Some(done)),
                Some(Cmd::Refresh { done }) => {
                    tokio::select! {
                        () = refresh(svc, live, None) => {}
                        () = shutdown.cancelled() => return Exit::Shutdown,
                    }
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
                None => return Exit::Shutdown,
            },
            () = shutdown.cancelled() => return Exit::Shutdown,
            () = ttl => return Exit::Expired,
            status = exited => {
                let tail = lock(&live.stderr).last(3);
                return Exit::Crashed(if tail.is_empty() {
                    format!("the child exited ({status})")
                } else {
                    format!("the child exited ({status}); its stderr ends with:\n{tail}")
                });
            }
            Some(()) = session.tools_changed.recv() => {
                // Several notifications in a burst need one listing.
                while session.tools_changed.try_recv().is_ok() {}
                // The child may take its time to list: the coordinator's exit does not wait.
                tokio::select! {
                    () = refresh(svc, live, Some(session)) => {}
                    () = shutdown.cancelled() => return Exit::Shutdown,
                }
            }
            _ = health.tick() => {
                // Remember its descendants, so a crash leaves none behind (see process.rs).
                if let Some(p) = session.process.as_mut() {
                    p.scan_tree();
                }
                let ping = session.service.peer().send_request(ClientRequest::PingRequest(PingRequest::default()));
                let ping = tokio::time::timeout(Duration::from_secs_f64(ty.health.timeout_seconds), ping);
                let answer = tokio::select! {
                    a = ping => a,
                    () = shutdown.cancelled() => return Exit::Shutdown,
                };
                let ok = match answer {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => { tracing::debug!(instance = %live.name, error = %e, "health check failed"); false }
                    Err(_) => false,
                };
                let mut row = live.row();
                if ok {
                    if failures > 0 || row.status != Status::Running {
                        failures = 0;
                        row.health = "ok".into();
                        row.status = Status::Running;
                        row.updated_at = now_ts();
                        *lock(&live.row) = row.clone();
                        svc.persist_quiet(&row);
                    }
                } else {
                    failures += 1;
                    row.health = format!("failing ({failures}/{})", ty.health.failure_threshold);
                    row.status = Status::Unhealthy;
                    row.updated_at = now_ts();
                    *lock(&live.row) = row.clone();
                    svc.persist_quiet(&row);
                    if failures >= ty.health.failure_threshold {
                        return Exit::Unhealthy(format!("{failures} health checks in a row failed"));
                    }
                }
            }
        }
    }
}

/// Lists the child's tools again (after `tools/list_changed`, or with the last list after a
/// definition was approved) and re-applies pins and policy.
async fn refresh(svc: &InstanceService, live: &Arc<Live>, session: Option<&mut Session>) {
    let Some(conn) = live.conn() else { return };
    let tools = match session {
        Some(s) => {
            match tokio::time::timeout(live.ty.init_timeout(), s.service.peer().list_all_tools())
                .await
            {
                Ok(Ok(t)) => t,
                _ => {
                    tracing::warn!(instance = %live.name, "could not list tools after tools/list_changed");
                    return;
                }
            }
        }
        None => (*conn.raw).clone(),
    };
    match svc.apply_pins(live, &tools) {
        Ok(table) => {
            let count = table.by_part.len() as i64;
            *lock(&live.conn) = Some(Conn {
                peer: conn.peer.clone(),
                raw: Arc::new(tools),
                table: Arc::new(table),
                fast: conn.fast.clone(),
                redact: conn.redact.clone(),
            });
            let mut row = live.row();
            row.tools = count;
            row.updated_at = now_ts();
            *lock(&live.row) = row.clone();
            svc.persist_quiet(&row);
            svc.publish_tools();
        }
        Err(e) => tracing::warn!(instance = %live.name, error = %e, "could not apply tool pins"),
    }
}

/// Takes a session down: its tools leave the list, then the child is closed and its process
/// group terminated.
async fn teardown(svc: &InstanceService, live: &Arc<Live>, mut session: Session, fast: bool) {
    *lock(&live.conn) = None;
    *lock(&live.up_since) = None;
    svc.publish_tools();
    let grace = Duration::from_secs_f64(svc.inner.config.stop_grace_seconds);
    let grace = if fast {
        grace.min(Duration::from_millis(800))
    } else {
        grace
    };
    close(&mut session, grace).await;
}

/// Close (stdin EOF / HTTP session end), wait, SIGTERM the group, wait, SIGKILL the group.
async fn close(session: &mut Session, grace: Duration) {
    // Take stock of its descendants while they are still its own: once it exits, those in
    // other groups or sessions are orphans, known only by this list.
    if let Some(p) = session.process.as_mut() {
        p.scan_tree();
    }
    let token = session.service.cancellation_token();
    token.cancel();
    if let Some(p) = session.process.as_mut() {
        if tokio::time::timeout(grace / 2, p.wait()).await.is_err() {
            tracing::debug!(
                pid = p.pid,
                "child did not exit on stdin close; sending SIGTERM"
            );
        }
        let outcome = p.terminate(grace).await;
        tracing::debug!(pid = p.pid, ?outcome, "child terminated");
    }
}

/// Ends an instance for good (stopped, expired, failed) and removes it from the live table.
fn finish(
    svc: &InstanceService,
    live: &Arc<Live>,
    status: Status,
    action: Action,
    why: &str,
    resume: bool,
) {
    let mut row = live.row();
    row.status = status;
    row.stopped_at = Some(now_ts());
    row.updated_at = now_ts();
    row.resume = resume && status == Status::Stopped;
    row.health = "unknown".into();
    row.tools = 0;
    if status != Status::Stopped || row.last_error.is_none() {
        row.last_error = Some(why.to_string()).filter(|_| status != Status::Stopped);
    }
    *lock(&live.row) = row.clone();
    if let Err(e) = svc.persist(
        &row,
        action,
        if status == Status::Failed {
            Outcome::Error
        } else {
            Outcome::Ok
        },
        json!({"reason": why}),
    ) {
        tracing::warn!(instance = %live.name, error = %e, "could not record the instance's end");
    }
    tracing::info!(instance = %live.name, status = status.as_str(), reason = why, "child instance ended");
    remove(svc, live);
}

/// Moves an instance to a non-final status with an audit event, counting a restart.
fn bump(svc: &InstanceService, live: &Arc<Live>, status: Status, action: Action, why: &str) {
    let mut row = live.row();
    row.status = status;
    row.updated_at = now_ts();
    row.health = "unknown".into();
    row.tools = 0;
    if status == Status::Restarting {
        row.restarts += 1;
    }
    if status == Status::CrashLoop {
        row.pid = None;
    }
    row.last_error = Some(why.to_string())
        .filter(|_| action != Action::InstanceRestarted)
        .or(row.last_error);
    *lock(&live.row) = row.clone();
    if let Err(e) = svc.persist(
        &row,
        action,
        Outcome::Error,
        json!({"reason": why, "restarts": row.restarts}),
    ) {
        tracing::warn!(instance = %live.name, error = %e, "could not record the instance's state");
    }
    tracing::warn!(instance = %live.name, status = status.as_str(), reason = why, "child instance");
}

fn remove(svc: &InstanceService, live: &Arc<Live>) {
    let mut map = svc.inner.live.write().unwrap_or_else(|p| p.into_inner());
    if map.get(&live.name).is_some_and(|l| l.id == live.id) {
        map.remove(&live.name);
    }
    drop(map);
    svc.publish_tools();
}
