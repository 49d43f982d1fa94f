//! The supervisor of one instance: launches the child (or connects to its URL) through
//! `child::Session`, lists and pins its tools, then watches it (exit, health checks, TTL, tool
//! list changes, commands) and restarts it with exponential backoff until it is stopped,
//! expires, or crashes too often (`crash_loop`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::catalog::RestartConfig;
use super::child::process::{self, SpawnSpec};
use super::child::{Launch, Session, SessionEvent};
use super::redact::Redactor;
use super::{Cmd, InstanceError, InstanceService, Live, Status, expand, lock};
use crate::audit::chain::now_ts;
use crate::audit::{Action, Actor, Outcome};

/// Why a session ended.
enum Exit {
    Stop(Actor, Option<oneshot::Sender<()>>),
    Restart(Actor, Option<oneshot::Sender<Result<(), String>>>),
    Shutdown,
    Expired,
    Crashed(String),
    Unhealthy(String),
}

/// One supervisor's state across the sessions of its instance.
struct Supervisor {
    svc: InstanceService,
    live: Arc<Live>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    /// Who waits for the first start (`instance_start`), until it is answered.
    first: Option<oneshot::Sender<Result<(), InstanceError>>>,
    /// Who waits for a restart to come up.
    pending_restart: Option<oneshot::Sender<Result<(), String>>>,
    restart: RestartConfig,
    /// When the recent restarts happened (within the crash-loop window).
    recent: VecDeque<Instant>,
    backoff: Duration,
    /// The next session comes up as a restart (an audit `instance_restarted`).
    is_restart: bool,
}

/// Whether the supervisor goes on after a step.
type Go = Option<()>;

pub(super) async fn supervise(
    svc: InstanceService,
    live: Arc<Live>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    first: Option<oneshot::Sender<Result<(), InstanceError>>>,
    restored: bool,
) {
    let restart = live.ty.restart.clone();
    let mut s = Supervisor {
        svc,
        live,
        rx,
        first,
        pending_restart: None,
        backoff: Duration::from_millis(restart.backoff_initial_ms),
        restart,
        recent: VecDeque::new(),
        is_restart: restored,
    };
    while s.round().await.is_some() {}
}

impl Supervisor {
    /// One session: start it, run it until it ends, and decide what comes next. `None` once
    /// the instance is over (or the supervisor is no longer wanted).
    async fn round(&mut self) -> Go {
        let attempt = self.starting().await?;
        let exit = self.run(attempt).await?;
        self.is_restart = true;
        self.after(exit).await
    }

    /// Connects, answering commands meanwhile. A stop does not wait for a slow start: the
    /// attempt is dropped, and with it the child (dropping a `ChildProcess` SIGKILLs its
    /// group).
    async fn starting(&mut self) -> Option<Result<Session, InstanceError>> {
        let (svc, live) = (&self.svc, &self.live);
        let shutdown = svc.inner.shutdown.clone();
        let connecting = connect(svc, live);
        tokio::pin!(connecting);
        loop {
            tokio::select! {
                r = &mut connecting => return Some(r),
                () = shutdown.cancelled() => {
                    finish(svc, live, Status::Stopped, Action::InstanceStopped, "the coordinator is shutting down", true);
                    return None;
                }
                cmd = self.rx.recv() => match cmd {
                    Some(Cmd::Stop { by, done }) => {
                        let why = format!("stopped by {} while starting", by.render());
                        finish(svc, live, Status::Stopped, Action::InstanceStopped, &why, false);
                        if let Some(tx) = self.first.take() {
                            let _ = tx.send(Err(InstanceError::NotRunning {
                                name: live.name.clone(),
                                status: Status::Stopped,
                                hint: format!("it was {why}"),
                            }));
                        }
                        if let Some(tx) = self.pending_restart.take() {
                            let _ = tx.send(Err(why));
                        }
                        let _ = done.send(());
                        return None;
                    }
                    // Already starting: the restart is answered when this start ends.
                    Some(Cmd::Restart { done, .. }) => {
                        if let Some(earlier) = self.pending_restart.replace(done) {
                            let _ = earlier.send(Err("another restart was asked for".into()));
                        }
                    }
                    Some(Cmd::Refresh { done }) => {
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                    }
                    None => return None,
                },
            }
        }
    }

    /// Runs a started session until it ends, or records why it did not start. `None` when a
    /// first start failed (the instance is over).
    async fn run(&mut self, attempt: Result<Session, InstanceError>) -> Option<Exit> {
        let (svc, live) = (&self.svc, &self.live);
        let mut session = match attempt {
            Ok(session) => session,
            Err(e) => {
                let message = e.to_string();
                if let Some(tx) = self.first.take() {
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
                    remove(svc, live);
                    let _ = tx.send(Err(e));
                    return None;
                }
                if let Some(tx) = self.pending_restart.take() {
                    let _ = tx.send(Err(message.clone()));
                }
                return Some(Exit::Crashed(message));
            }
        };
        session.scan_tree();
        on_up(svc, live, &session, self.is_restart);
        if let Some(tx) = self.first.take() {
            let _ = tx.send(Ok(()));
        }
        if let Some(tx) = self.pending_restart.take() {
            let _ = tx.send(Ok(()));
        }
        let up = Instant::now();
        let exit = watch(svc, live, &mut session, &mut self.rx).await;
        // A session that stayed up a while earns a fresh backoff.
        if up.elapsed()
            >= Duration::from_millis(self.restart.backoff_max_ms).max(Duration::from_secs(60))
        {
            self.backoff = Duration::from_millis(self.restart.backoff_initial_ms);
        }
        let shutting_down = matches!(exit, Exit::Shutdown);
        teardown(svc, live, session, shutting_down).await;
        Some(exit)
    }

    /// What follows a session's end: the instance is over, restarts now, or restarts after
    /// its backoff (or, crashing too often, waits in crash_loop for a person).
    async fn after(&mut self, exit: Exit) -> Go {
        let (svc, live) = (&self.svc, &self.live);
        match exit {
            Exit::Stop(by, done) => {
                let why = format!("stopped by {}", by.render());
                finish(
                    svc,
                    live,
                    Status::Stopped,
                    Action::InstanceStopped,
                    &why,
                    false,
                );
                if let Some(done) = done {
                    let _ = done.send(());
                }
                None
            }
            Exit::Shutdown => {
                finish(
                    svc,
                    live,
                    Status::Stopped,
                    Action::InstanceStopped,
                    "the coordinator exited",
                    true,
                );
                None
            }
            Exit::Expired => {
                expire(svc, live);
                None
            }
            Exit::Restart(by, done) => {
                bump(
                    svc,
                    live,
                    Status::Restarting,
                    Action::InstanceRestarted,
                    &format!("restart requested by {}", by.render()),
                );
                self.pending_restart = done;
                Some(())
            }
            Exit::Crashed(why) | Exit::Unhealthy(why) => self.crashed(why).await,
        }
    }

    /// A session crashed or failed its health checks: restart after the backoff, unless
    /// restarts are off (failed) or came too often (crash_loop).
    async fn crashed(&mut self, why: String) -> Go {
        let (svc, live) = (&self.svc, &self.live);
        let mut row = live.row();
        row.last_error = Some(why.clone());
        *lock(&live.row) = row;
        if !self.restart.enabled {
            finish(
                svc,
                live,
                Status::Failed,
                Action::InstanceExited,
                &why,
                false,
            );
            return None;
        }
        let now = Instant::now();
        let window = Duration::from_secs(self.restart.window_seconds);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() as u32 >= self.restart.max_restarts {
            let msg = format!(
                "{why}; {} restarts within {} s: left in crash_loop for a person (instance_get shows its stderr; instance_restart or instance_stop)",
                self.recent.len(),
                self.restart.window_seconds
            );
            bump(
                svc,
                live,
                Status::CrashLoop,
                Action::InstanceCrashLoop,
                &msg,
            );
            return self.crash_loop().await;
        }
        self.recent.push_back(now);
        bump(
            svc,
            live,
            Status::Restarting,
            Action::InstanceExited,
            &format!("{why}; restarting in {} ms", self.backoff.as_millis()),
        );
        self.back_off().await
    }

    /// Waits in crash_loop for a person: stop, restart, or the coordinator's exit.
    async fn crash_loop(&mut self) -> Go {
        let (svc, live) = (&self.svc, &self.live);
        loop {
            let shutdown = svc.inner.shutdown.clone();
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(Cmd::Stop { by, done }) => {
                        finish(svc, live, Status::Stopped, Action::InstanceStopped, &format!("stopped by {}", by.render()), false);
                        let _ = done.send(());
                        return None;
                    }
                    Some(Cmd::Restart { by, done }) => {
                        self.recent.clear();
                        self.backoff = Duration::from_millis(self.restart.backoff_initial_ms);
                        bump(svc, live, Status::Restarting, Action::InstanceRestarted, &format!("restart requested by {}", by.render()));
                        self.pending_restart = Some(done);
                        return Some(());
                    }
                    Some(Cmd::Refresh { .. }) => {}
                    None => return None,
                },
                () = shutdown.cancelled() => {
                    // A crash loop is not resumed by the next coordinator.
                    finish(svc, live, Status::Stopped, Action::InstanceStopped, "the coordinator exited while it was in crash_loop", false);
                    return None;
                }
                () = ttl_ends(expiry(live)) => {
                    expire(svc, live);
                    return None;
                }
            }
        }
    }

    /// Waits out the backoff before the next start (a restart command cuts it short), and
    /// doubles it for the next time.
    async fn back_off(&mut self) -> Go {
        let (svc, live) = (&self.svc, &self.live);
        let shutdown = svc.inner.shutdown.clone();
        let sleep = tokio::time::sleep(self.backoff);
        tokio::pin!(sleep);
        self.backoff = (self.backoff * 2).min(Duration::from_millis(self.restart.backoff_max_ms));
        loop {
            tokio::select! {
                () = &mut sleep => return Some(()),
                cmd = self.rx.recv() => match cmd {
                    Some(Cmd::Stop { by, done }) => {
                        finish(svc, live, Status::Stopped, Action::InstanceStopped, &format!("stopped by {}", by.render()), false);
                        let _ = done.send(());
                        return None;
                    }
                    Some(Cmd::Restart { done, .. }) => {
                        self.pending_restart = Some(done);
                        return Some(());
                    }
                    Some(Cmd::Refresh { .. }) => {}
                    None => return None,
                },
                () = shutdown.cancelled() => {
                    finish(svc, live, Status::Stopped, Action::InstanceStopped, "the coordinator exited", true);
                    return None;
                }
                () = ttl_ends(expiry(live)) => {
                    expire(svc, live);
                    return None;
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
    let secrets = reveal_secrets(svc, live)?;
    let redact = Redactor::new(secrets.values());
    let masks = redact.clone();
    let fail = |message: String, stderr: Vec<String>| InstanceError::StartFailed {
        name: name.clone(),
        // The error may quote what the child sent.
        message: masks.text(&message).into_owned(),
        stderr,
    };
    let launch = launch(live, &secrets, &redact)?;
    let mut session = Session::open(svc, live, launch, &redact)
        .await
        .map_err(|f| fail(f.message, f.stderr))?;
    let tools = match session.list_tools(&ty).await {
        Ok(t) => t,
        Err(why) => {
            let tail = session.stderr_lines();
            session.close(Duration::from_millis(500)).await;
            return Err(fail(why, tail));
        }
    };
    let table = svc.apply_pins(live, &tools)?;
    *lock(&live.conn) = Some(session.conn(tools, table, redact));
    Ok(session)
}

/// The secrets the instance's type needs, from the store (an audited reveal).
fn reveal_secrets(
    svc: &InstanceService,
    live: &Live,
) -> Result<HashMap<String, String>, InstanceError> {
    let secret_names = live.ty.required_secrets();
    if secret_names.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(svc
        .inner
        .secrets
        .reveal_many_with(
            &secret_names,
            &Actor::system(),
            json!({"instance": live.name, "type": live.type_name}),
        )
        .map_err(|e| InstanceError::StartFailed {
            name: live.name.clone(),
            message: format!("secret store: {e}"),
            stderr: Vec::new(),
        })?
        .into_iter()
        .collect())
}

/// How to reach the child: its URL and headers, or its command line and environment (the
/// type's templates expanded, the instance's overrides applied).
fn launch(
    live: &Live,
    secrets: &HashMap<String, String>,
    redact: &Redactor,
) -> Result<Launch, InstanceError> {
    let ty = &live.ty;
    if let Some(url) = &ty.url {
        let mut headers = Vec::new();
        for (k, v) in &ty.headers {
            headers.push((k.clone(), expand(v, secrets, &format!("headers.{k}"))?));
        }
        return Ok(Launch::Http {
            url: url.clone(),
            headers,
        });
    }
    let mut env = std::collections::BTreeMap::new();
    for (k, v) in &ty.env {
        let value = match live.overrides.env.get(k) {
            Some(o) => o.clone(),
            None => expand(v, secrets, &format!("env.{k}"))?,
        };
        env.insert(k.clone(), value);
    }
    Ok(Launch::Stdio(SpawnSpec {
        program: ty.command.clone().unwrap_or_default(),
        args: ty.args.clone(),
        env,
        cwd: ty.cwd.as_ref().map(std::path::PathBuf::from),
        limits: process::Limits {
            address_space_mb: ty.limits.address_space_mb,
            cpu_seconds: ty.limits.cpu_seconds,
            open_files: ty.limits.open_files,
        },
        label: live.name.clone(),
        redact: redact.clone(),
    }))
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
    row.pid = session.pid().map(i64::from);
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
            event = session.event() => match event {
                SessionEvent::Exited(status) => {
                    let tail = lock(&live.stderr).last(3);
                    return Exit::Crashed(if tail.is_empty() {
                        format!("the child exited ({status})")
                    } else {
                        format!("the child exited ({status}); its stderr ends with:\n{tail}")
                    });
                }
                // Several notifications in a burst need one listing.
                SessionEvent::ToolsChanged => {
                    // The child may take its time to list: the coordinator's exit does not wait.
                    tokio::select! {
                        () = refresh(svc, live, Some(session)) => {}
                        () = shutdown.cancelled() => return Exit::Shutdown,
                    }
                }
            },
            _ = health.tick() => {
                // Remember its descendants, so a crash leaves none behind (see child/process.rs).
                session.scan_tree();
                let ping = session.ping(Duration::from_secs_f64(ty.health.timeout_seconds));
                let answer = tokio::select! {
                    a = ping => a,
                    () = shutdown.cancelled() => return Exit::Shutdown,
                };
                let ok = match answer {
                    Ok(()) => true,
                    Err(e) => { tracing::debug!(instance = %live.name, error = %e, "health check failed"); false }
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
        Some(s) => match s.list_tools(&live.ty).await {
            Ok(t) => t,
            Err(_) => {
                tracing::warn!(instance = %live.name, "could not list tools after tools/list_changed");
                return;
            }
        },
        None => (*conn.raw).clone(),
    };
    match svc.apply_pins(live, &tools) {
        Ok(table) => {
            let count = table.by_part.len() as i64;
            *lock(&live.conn) = Some(conn.with_tools(tools, table));
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
    session.close(grace).await;
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
