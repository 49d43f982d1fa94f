//! A child started as a process: spawned with its spec (`process.rs`), its pipes interposed on
//! by the fast relay (`fast.rs`), and initialized over them with rmcp within the type's init
//! timeout; a child that fails to start is terminated, and its stderr is carried in the error.

use std::sync::Arc;
use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::service::{RoleClient, RunningService};

use super::process::{self, ChildProcess, SpawnSpec};
use super::{ChildClient, OpenFailed, fast, no_answer};
use crate::instance::redact::Redactor;
use crate::instance::{InstanceService, Live, lock};

/// Spawns the child, records its pid and stderr on `live`, and initializes it.
pub(super) async fn open(
    svc: &InstanceService,
    live: &Arc<Live>,
    spec: &SpawnSpec,
    redact: &Redactor,
    client: ChildClient,
) -> Result<
    (
        RunningService<RoleClient, ChildClient>,
        ChildProcess,
        Arc<fast::FastLink>,
    ),
    OpenFailed,
> {
    let ty = &live.ty;
    let (mut child, stdin, stdout) =
        process::spawn(spec).map_err(|e| OpenFailed::new(e.to_string()))?;
    *lock(&live.stderr) = child.stderr.clone();
    let mut row = live.row();
    row.pid = Some(i64::from(child.pid));
    *lock(&live.row) = row;
    let (link, from_child, to_child) = match fast::interpose(svc, live, redact, stdin, stdout) {
        Ok(parts) => parts,
        Err(e) => {
            child.terminate(Duration::from_millis(500)).await;
            return Err(OpenFailed::new(format!("cannot relay its pipes: {e}")));
        }
    };
    let started =
        tokio::time::timeout(ty.init_timeout(), client.serve((from_child, to_child))).await;
    match started {
        Ok(Ok(service)) => Ok((service, child, link)),
        other => {
            let why = match other {
                Ok(Err(e)) => format!("initialize failed: {e}"),
                _ => no_answer("initialize", ty),
            };
            let status = child.terminate(Duration::from_millis(500)).await;
            // Give the stderr reader a moment to take the last lines.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let stderr = child.stderr.lines();
            let last = child.stderr.last(5);
            let message = if last.is_empty() {
                format!("{why} ({status:?}); it wrote nothing to stderr")
            } else {
                format!("{why} ({status:?}); its stderr ends with:\n{last}")
            };
            Err(OpenFailed { message, stderr })
        }
    }
}
