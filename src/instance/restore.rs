//! What a starting coordinator takes over: instances left by a coordinator that is gone
//! (restored, or marked lost), and the types that start by themselves (`autostart`).

use serde_json::json;
use tokio::sync::oneshot;

use super::child::procfs;
use super::{InstanceError, InstanceService, Overrides, Owner, StartRequest, Status};
use crate::audit::chain::now_ts;
use crate::audit::{Action, Actor, Outcome};
use crate::store::instance::{self as sql, InstanceRow};

impl InstanceService {
    /// The types with `autostart`, and instances left by an earlier coordinator: starts them
    /// in the background once `after` resolves (the caller does not wait); autostarted types
    /// one at a time.
    pub fn restore_and_autostart(
        &self,
        after: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            after.await;
            if let Err(e) = me.restore() {
                tracing::warn!(error = %e, "could not restore instances");
            }
            for (name, ty) in me.inner.types.clone() {
                if !ty.autostart || me.live_get(&name).is_some() {
                    continue;
                }
                let taken = me
                    .inner
                    .audit
                    .store()
                    .read(|tx| sql::live_by_name(tx, &name).ok().flatten());
                if taken.is_some() {
                    continue;
                }
                let req = StartRequest {
                    type_name: name.clone(),
                    name: Some(name.clone()),
                    ..Default::default()
                };
                match me.create(req, &Actor::system()) {
                    Ok((live, rx)) => {
                        // One at a time: a burst of children starting at once would take
                        // the machine from the client.
                        let (first, started) = oneshot::channel();
                        me.spawn_supervisor(live, rx, Some(first), false);
                        let _ = tokio::time::timeout(ty.init_timeout() * 2, started).await;
                    }
                    Err(e) => tracing::warn!(instance = %name, error = %e, "could not autostart"),
                }
            }
        });
    }

    pub(super) fn restore(&self) -> Result<(), InstanceError> {
        let rows = self.inner.audit.store().read(sql::restorable)?;
        let me = &self.inner.owner;
        for row in rows {
            if row.owner == me.id || owner_alive(&row, me) {
                continue;
            }
            let claimed = self.inner.audit.store().write(|tx| {
                sql::claim(
                    tx,
                    &row.id,
                    &row.owner,
                    (&me.id, &me.host, i64::from(me.pid)),
                    &now_ts(),
                )
            })?;
            if !claimed {
                continue;
            }
            let mut row = InstanceRow {
                owner: me.id.clone(),
                owner_host: me.host.clone(),
                owner_pid: i64::from(me.pid),
                resume: false,
                ..row
            };
            let previous = row.status;
            let expired = row
                .expires_at
                .as_deref()
                .is_some_and(|e| e <= now_ts().as_str());
            let ty = self.inner.types.get(&row.type_name).cloned();
            let (status, action, why) = match (&ty, expired, self.inner.config.restore) {
                (_, true, _) => (
                    Status::Expired,
                    Action::InstanceExpired,
                    "its time to live ran out while no coordinator ran it".to_string(),
                ),
                (None, _, _) => (
                    Status::Failed,
                    Action::InstanceFailed,
                    format!(
                        "lost: its type `{}` is no longer in the catalog",
                        row.type_name
                    ),
                ),
                (_, _, false) => (
                    Status::Failed,
                    Action::InstanceFailed,
                    "lost: its coordinator exited and [instances] restore is off".to_string(),
                ),
                // A crash loop waits for a person, not for the next coordinator.
                _ if previous == Status::CrashLoop => (
                    Status::Failed,
                    Action::InstanceFailed,
                    "lost: it was in crash_loop when its coordinator exited; start it again \
                     with instance_start once its cause is fixed"
                        .to_string(),
                ),
                (Some(_), false, true) => {
                    (Status::Restarting, Action::InstanceRestarted, String::new())
                }
            };
            row.status = status;
            row.pid = None;
            row.updated_at = now_ts();
            if status != Status::Restarting {
                row.stopped_at = Some(now_ts());
                row.last_error = Some(why.clone());
                self.persist(
                    &row,
                    action,
                    Outcome::Error,
                    json!({"reason": why, "was": previous}),
                )?;
                continue;
            }
            let Some(ty) = ty else { continue };
            if self.live_get(&row.name).is_some() {
                row.status = Status::Failed;
                row.last_error = Some("lost: its name is taken by another instance".into());
                self.persist(
                    &row,
                    Action::InstanceFailed,
                    Outcome::Error,
                    json!({"was": previous}),
                )?;
                continue;
            }
            self.persist(
                &row,
                Action::InstanceRestarted,
                Outcome::Ok,
                json!({"reason": "restored by a new coordinator", "was": previous}),
            )?;
            let overrides: Overrides = serde_json::from_str(&row.overrides).unwrap_or_default();
            let (live, rx) = self.insert_live(row, ty, overrides);
            self.spawn_supervisor(live, rx, None, true);
        }
        Ok(())
    }
}

/// Whether the coordinator process that owns `row` still runs (same host: its pid is alive;
/// another host: assumed alive, as nothing here can tell).
pub(super) fn owner_alive(row: &InstanceRow, me: &Owner) -> bool {
    if row.owner == me.id {
        return true;
    }
    if row.owner_host != me.host {
        return true;
    }
    if row.owner_pid == i64::from(me.pid) {
        // Our pid, another session: an earlier process with our pid (pid reuse) is gone.
        return false;
    }
    procfs::pid_alive(row.owner_pid as u32)
}
