//! Starting, stopping and restarting instances on request: the checks of `instance_start`
//! (type, overrides, name, limits), the row that claims the name, and the commands handed to
//! an instance's supervisor.

use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::breaker::Breaker;
use super::catalog::{self, InstanceType};
use super::child::process;
use super::restore::owner_alive;
use super::{
    Cmd, InstanceError, InstanceService, InstanceView, Live, Overrides, StartRequest, Status, lock,
    policy, supervisor,
};
use crate::audit::chain::{format_ts, now_ts};
use crate::audit::{Action, Actor, Outcome};
use crate::store::StoreError;
use crate::store::instance::{self as sql, InstanceRow};

/// Whether an `instance_start` may set `key` with `overrides.env`: only a variable the type
/// lists in `overridable`, never one that decides which code runs. (The config load already
/// refuses an `overridable` entry that is undeclared, a reference or code-deciding; the
/// reference and code checks are repeated here so that no path around the load lets one in.)
fn check_override(type_name: &str, ty: &InstanceType, key: &str) -> Result<(), InstanceError> {
    let refuse = |why: String| {
        Err(InstanceError::Invalid(format!(
            "overrides.env.{key}: {why}"
        )))
    };
    if catalog::chooses_code(key) {
        return refuse(
            "decides which program or code the child runs, so only the config file sets it".into(),
        );
    }
    if !ty.overridable.iter().any(|v| v == key) {
        let listed = if ty.overridable.is_empty() {
            "it lists none".to_string()
        } else {
            format!("it lists: {}", ty.overridable.join(", "))
        };
        return refuse(format!(
            "type `{type_name}` does not let an instance_start set {key}; the type must list it in `overridable` in the config file ({listed})"
        ));
    }
    match ty.env.get(key) {
        None => refuse(format!(
            "type `{type_name}` does not declare {key} in `env`"
        )),
        Some(t) if t.contains("${") => refuse(format!(
            "type `{type_name}` takes it from a reference ({t}); only literal values can be overridden"
        )),
        Some(_) => Ok(()),
    }
}

impl InstanceService {
    /// Starts an instance and waits until it is initialized (or failed).
    pub async fn start(
        &self,
        req: StartRequest,
        by: &Actor,
    ) -> Result<InstanceView, InstanceError> {
        let (live, rx) = self.create(req, by)?;
        let (tx, first) = oneshot::channel();
        self.spawn_supervisor(live.clone(), rx, Some(tx), false);
        match first.await {
            Ok(Ok(())) => Ok(self.view(&live.row(), true)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(InstanceError::ShuttingDown),
        }
    }

    /// Records a new instance (status `starting`) and its live entry, without launching it.
    pub(super) fn create(
        &self,
        req: StartRequest,
        by: &Actor,
    ) -> Result<(Arc<Live>, mpsc::UnboundedReceiver<Cmd>), InstanceError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(InstanceError::ShuttingDown);
        }
        let ty = self.type_of(&req.type_name)?;
        for key in req.overrides.env.keys() {
            check_override(&req.type_name, &ty, key)?;
        }
        if req.ttl_seconds == Some(0) {
            return Err(InstanceError::Invalid(
                "ttl_seconds: expected at least 1".into(),
            ));
        }
        let count = self
            .inner
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        if count as u32 >= self.inner.config.max_instances {
            return Err(InstanceError::TooMany(self.inner.config.max_instances));
        }
        let name = match req.name.clone() {
            Some(n) => {
                policy::check_instance_name(&n)
                    .map_err(|e| InstanceError::Invalid(format!("name: {e}")))?;
                n
            }
            None => self.free_name(&req.type_name)?,
        };
        let now = now_ts();
        let ttl = req.ttl_seconds.or(ty.ttl_seconds);
        let expires_at = ttl.map(|s| {
            format_ts(time::OffsetDateTime::now_utc() + time::Duration::seconds(s as i64))
        });
        let row = InstanceRow {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.clone(),
            type_name: req.type_name.clone(),
            status: Status::Starting,
            owner: self.inner.owner.id.clone(),
            owner_host: self.inner.owner.host.clone(),
            owner_pid: i64::from(self.inner.owner.pid),
            pid: None,
            overrides: serde_json::to_string(&req.overrides).unwrap_or_else(|_| "{}".into()),
            ttl_seconds: ttl.map(|s| s as i64),
            created_at: now.clone(),
            started_at: None,
            expires_at,
            stopped_at: None,
            restarts: 0,
            health: "unknown".into(),
            last_error: None,
            tools: 0,
            resume: false,
            updated_at: now,
        };
        let store = self.inner.audit.store();
        store
            .write(|tx| sql::insert(tx, &row))
            .map_err(|e| match e {
                StoreError::Conflict { .. } => InstanceError::NameTaken(name.clone()),
                e => InstanceError::Store(e),
            })?;
        let _ = by;
        Ok(self.insert_live(row, ty, req.overrides))
    }

    pub(super) fn insert_live(
        &self,
        row: InstanceRow,
        ty: Arc<InstanceType>,
        overrides: Overrides,
    ) -> (Arc<Live>, mpsc::UnboundedReceiver<Cmd>) {
        let (cmd, rx) = mpsc::unbounded_channel();
        let live = Arc::new(Live {
            id: row.id.clone(),
            name: row.name.clone(),
            type_name: row.type_name.clone(),
            ty,
            overrides,
            row: Mutex::new(row),
            conn: Mutex::new(None),
            stderr: Mutex::new(process::StderrTail::default()),
            breaker: Mutex::new(Breaker::default()),
            up_since: Mutex::new(None),
            cmd,
        });
        self.inner
            .live
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(live.name.clone(), live.clone());
        (live, rx)
    }

    /// The type's name if free, else `<type>-2`, `<type>-3`, ...
    pub(super) fn free_name(&self, type_name: &str) -> Result<String, InstanceError> {
        let store = self.inner.audit.store();
        for n in 1..1000 {
            let candidate = if n == 1 {
                type_name.to_string()
            } else {
                let suffix = format!("-{n}");
                let keep = type_name
                    .len()
                    .min(policy::MAX_INSTANCE_NAME - suffix.len());
                let stem = type_name[..keep].trim_end_matches(['-', '_']);
                format!("{stem}{suffix}")
            };
            if store
                .read(|tx| sql::live_by_name(tx, &candidate))?
                .is_none()
            {
                return Ok(candidate);
            }
        }
        Err(InstanceError::Invalid(format!(
            "name: no free name for type `{type_name}`; give one"
        )))
    }

    pub(super) fn spawn_supervisor(
        &self,
        live: Arc<Live>,
        rx: mpsc::UnboundedReceiver<Cmd>,
        first: Option<oneshot::Sender<Result<(), InstanceError>>>,
        restored: bool,
    ) {
        self.spawn_snapshots(live.clone());
        let handle = tokio::spawn(supervisor::supervise(
            self.clone(),
            live,
            rx,
            first,
            restored,
        ));
        let mut all = lock(&self.inner.supervisors);
        all.retain(|h| !h.is_finished());
        all.push(handle);
    }

    /// Stops an instance run here (close, SIGTERM, SIGKILL of its process group). An instance
    /// whose owner process is gone is marked stopped directly.
    pub async fn stop(&self, name: &str, by: &Actor) -> Result<InstanceView, InstanceError> {
        if let Some(live) = self.live_get(name) {
            let (done, wait) = oneshot::channel();
            if live
                .cmd
                .send(Cmd::Stop {
                    by: by.clone(),
                    done,
                })
                .is_ok()
            {
                let _ = wait.await;
            }
            return Ok(self.view(&live.row(), false));
        }
        let row = self
            .inner
            .audit
            .store()
            .read(|tx| sql::live_by_name(tx, name))?;
        let Some(mut row) = row else {
            return Err(self.not_here(name));
        };
        if owner_alive(&row, &self.inner.owner) {
            return Err(InstanceError::NotOwned {
                name: name.into(),
                owner: row.owner,
            });
        }
        row.status = Status::Stopped;
        row.stopped_at = Some(now_ts());
        row.last_error = Some("its coordinator process was gone; marked stopped".into());
        self.persist(
            &row,
            Action::InstanceStopped,
            Outcome::Ok,
            json!({"by": by.render(), "reason": "owner gone"}),
        )?;
        Ok(self.view(&row, false))
    }

    /// Restarts an instance run here and waits until it is up again (or failed).
    pub async fn restart(&self, name: &str, by: &Actor) -> Result<InstanceView, InstanceError> {
        let Some(live) = self.live_get(name) else {
            return Err(self.not_here(name));
        };
        let (done, wait) = oneshot::channel();
        live.cmd
            .send(Cmd::Restart {
                by: by.clone(),
                done,
            })
            .map_err(|_| InstanceError::ShuttingDown)?;
        match wait.await {
            Ok(Ok(())) => Ok(self.view(&live.row(), true)),
            Ok(Err(message)) => Err(InstanceError::StartFailed {
                name: name.into(),
                message,
                stderr: lock(&live.stderr).lines(),
            }),
            Err(_) => Err(InstanceError::ShuttingDown),
        }
    }
}
