//! What only an instance's owner knows (resident memory and CPU of the child's process group,
//! the last lines of its stderr, the tools it offers and hides), written to the database every
//! few seconds by the owning coordinator, so that any console on the database shows it; and
//! the read of instances as a console shows them.
//!
//! The stderr lines are those of the instance's tail, which holds them with the instance's
//! secret values already masked (`child/process.rs` masks each line before keeping it): a
//! snapshot never carries a secret value.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::child::procfs;
use super::{InstanceService, Live, Status, lock};
use crate::audit::chain::now_ts;
use crate::store::budget::{self, Budget};
use crate::store::instance::{self as sql, InstanceRow};
use crate::store::{Store, StoreError};

/// How often the owner looks at its instance and writes what changed.
pub const EVERY: Duration = Duration::from_secs(2);
/// Stderr lines a snapshot keeps (the newest).
const TAIL_LINES: usize = 20;

/// The owner's view of one instance at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When it was taken (RFC 3339).
    pub taken_at: String,
    /// Resident memory of the child's process group, while it runs.
    pub rss_bytes: Option<u64>,
    /// CPU time (user plus system) of the group, while it runs.
    pub cpu_seconds: Option<f64>,
    pub processes: Option<u64>,
    /// The last lines of the child's stderr, secret values masked.
    pub stderr_tail: Vec<String>,
    /// Tools offered through the coordinator.
    pub tools: Vec<SnapTool>,
    /// Tools not offered (`quarantined` or `denied`), and why.
    pub hidden: Vec<SnapHidden>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapTool {
    /// The name clients call.
    pub name: String,
    /// `allowed` or `approval`.
    pub access: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapHidden {
    pub tool: String,
    pub reason: String,
    pub detail: String,
}

impl Snapshot {
    /// Whether `other` says the same as far as a person reading the console can tell, whenever
    /// it was taken: memory to the MiB and CPU to the tenth of a second. Why rounded: a running
    /// child's exact figures change at every look, and each write wakes every open console
    /// stream into rendering all its sections again.
    fn same_as(&self, other: &Snapshot) -> bool {
        let coarse = |s: &Snapshot| Snapshot {
            taken_at: String::new(),
            rss_bytes: s.rss_bytes.map(|b| b >> 20),
            cpu_seconds: s.cpu_seconds.map(|c| (c * 10.0).round()),
            ..s.clone()
        };
        coarse(self) == coarse(other)
    }
}

/// A tool definition of the instance's type waiting for a person's review.
#[derive(Debug, Clone, PartialEq)]
pub struct Review {
    pub tool: String,
    /// The approval a person decides (`instance_tool_review` asked for it), if asked yet.
    pub approval_id: Option<String>,
    /// True when an approved definition changed; false for one held back on first sight.
    pub changed: bool,
    /// Prompt-injection rules the pending definition tripped.
    pub flags: Vec<String>,
}

/// An instance as the console shows it: its row, its owner's last snapshot, and the tool
/// reviews its type waits for.
#[derive(Debug, Clone)]
pub struct Observed {
    pub row: InstanceRow,
    pub snapshot: Option<Snapshot>,
    pub reviews: Vec<Review>,
}

impl Observed {
    pub fn status(&self) -> Status {
        self.row.status
    }
}

/// The newest instances (live ones first) with snapshots and pending reviews.
pub fn observed(store: &Store, limit: u32) -> Result<Vec<Observed>, StoreError> {
    store.read(|tx| {
        let rows = sql::recent_with_snapshots(tx, limit)?;
        let mut out = Vec::with_capacity(rows.len());
        for (row, snapshot) in rows {
            let reviews = sql::quarantined_pins(tx, &row.type_name)?
                .into_iter()
                .map(|p| Review {
                    changed: p.hash.is_some(),
                    flags: p
                        .pending_flags
                        .as_deref()
                        .and_then(|f| serde_json::from_str::<Vec<serde_json::Value>>(f).ok())
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|f| f["rule"].as_str().map(String::from))
                        .collect(),
                    tool: p.tool,
                    approval_id: p.approval_id,
                })
                .collect();
            out.push(Observed {
                snapshot: snapshot.and_then(|s| serde_json::from_str(&s).ok()),
                row,
                reviews,
            });
        }
        Ok(out)
    })
}

impl InstanceService {
    /// Writes `live`'s snapshot every [`EVERY`] while it is in this process's live table, and
    /// once more when it leaves it (so the last stderr lines of a failed child stay visible).
    pub(super) fn spawn_snapshots(&self, live: Arc<Live>) {
        let svc = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let shutdown = svc.inner.shutdown.clone();
            let mut written: Option<Snapshot> = None;
            loop {
                let over = tokio::select! {
                    _ = tick.tick() => !svc.still_live(&live),
                    () = shutdown.cancelled() => true,
                };
                let (l, s, last) = (live.clone(), svc.clone(), written.clone());
                let wrote = tokio::task::spawn_blocking(move || s.write_snapshot(&l, last))
                    .await
                    .ok()
                    .flatten();
                if wrote.is_some() {
                    written = wrote;
                }
                if over {
                    break;
                }
            }
        });
    }

    fn still_live(&self, live: &Arc<Live>) -> bool {
        self.live_get(&live.name)
            .is_some_and(|l| Arc::ptr_eq(&l, live))
    }

    /// Takes a snapshot and writes it unless it says what `last` said; returns what it wrote.
    /// Background work: skipped when another process holds the write lock (tried next tick).
    fn write_snapshot(&self, live: &Live, last: Option<Snapshot>) -> Option<Snapshot> {
        let snap = take(live);
        if last.is_some_and(|l| l.same_as(&snap)) {
            return None;
        }
        let text = serde_json::to_string(&snap).ok()?;
        let store = self.inner.audit.store();
        match budget::sync_scope(Budget::none(), || {
            store.write(|tx| sql::set_snapshot(tx, &live.id, &text))
        }) {
            Ok(()) => Some(snap),
            Err(e) => {
                if !e.is_busy() {
                    tracing::debug!(instance = %live.name, error = %e, "could not write the instance's snapshot");
                }
                None
            }
        }
    }
}

/// What the owner knows of `live` now.
fn take(live: &Live) -> Snapshot {
    let row = live.row();
    let conn = live.conn();
    let stats = row
        .pid
        .filter(|_| conn.is_some())
        .and_then(|p| procfs::group_stats(p as u32));
    let lines = lock(&live.stderr).lines();
    let skip = lines.len().saturating_sub(TAIL_LINES);
    let (mut tools, hidden) = match &conn {
        Some(c) => (
            c.table
                .by_part
                .values()
                .map(|t| SnapTool {
                    name: t.exposed.clone(),
                    access: t.access.as_str().to_string(),
                    read_only: t.read_only,
                })
                .collect::<Vec<_>>(),
            c.table
                .hidden
                .iter()
                .map(|h| SnapHidden {
                    tool: h.tool.clone(),
                    reason: h.reason.clone(),
                    detail: h.detail.clone(),
                })
                .collect(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    tools.sort_by(|a, b| a.name.cmp(&b.name));
    Snapshot {
        taken_at: now_ts(),
        rss_bytes: stats.map(|s| s.rss_bytes),
        cpu_seconds: stats.map(|s| s.cpu_seconds),
        processes: stats.map(|s| s.processes),
        stderr_tail: lines.into_iter().skip(skip).collect(),
        tools,
        hidden,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(rss: u64, cpu: f64, tail: &[&str]) -> Snapshot {
        Snapshot {
            taken_at: format!("{rss}-{cpu}"),
            rss_bytes: Some(rss),
            cpu_seconds: Some(cpu),
            processes: Some(1),
            stderr_tail: tail.iter().map(|l| l.to_string()).collect(),
            tools: Vec::new(),
            hidden: Vec::new(),
        }
    }

    #[test]
    fn figures_that_barely_moved_are_the_same_snapshot_and_new_lines_are_not() {
        let a = snap(10 << 20, 1.01, &["started"]);
        assert!(a.same_as(&snap((10 << 20) + 4096, 1.02, &["started"])));
        assert!(
            !a.same_as(&snap(12 << 20, 1.02, &["started"])),
            "memory grew"
        );
        assert!(!a.same_as(&snap(10 << 20, 1.4, &["started"])), "CPU ran");
        assert!(
            !a.same_as(&snap(10 << 20, 1.01, &["started", "ready"])),
            "stderr"
        );
    }
}
