//! How a server runs: serving stdio until the client leaves or a shutdown is asked for, with
//! the background work beside it started and stopped by its owner (`workers.rs`), telling
//! clients when the tool list changes, and the way out (children stopped, background jobs
//! joined, audit events written, the chain head signed).

use std::future::Future;
use std::time::Instant;

use rmcp::ServiceExt;
use rmcp::model::ProtocolVersion;

use super::{Coordinator, relay};

/// Tells every listening client when the offered tools change (child instances started,
/// stopped, or changed their tools).
pub(super) async fn tool_list_changes(c: Coordinator) {
    let mut changes = c.instances().subscribe();
    while changes.changed().await.is_ok() {
        announce_tool_list_changed(&c).await;
    }
}

/// Tells every listening client that `tools/list` changed: initialize-era peers with
/// `notifications/tools/list_changed`, 2026-07-28 `subscriptions/listen` streams with its
/// event. Sessions that are gone are dropped (`listeners.rs`).
pub(super) async fn announce_tool_list_changed(c: &Coordinator) {
    let (peers, sinks) = c.listeners().tool_listeners();
    for peer in peers {
        if let Err(e) = peer.notify_tool_list_changed().await {
            tracing::debug!(error = %e, "could not send tools/list_changed");
        }
    }
    // A stream that ended is taken off the list by its `listen` (a guard it holds).
    for sink in sinks {
        if let Err(e) = sink.notify_tool_list_changed().await {
            tracing::debug!(error = %e, "could not send a tools/list_changed event");
        }
    }
}

impl Coordinator {
    /// Notes that the client just sent something (the stdin thread calls this per read).
    pub(super) fn client_active(&self) {
        let us = self.inner.started.elapsed().as_micros() as u64;
        self.inner
            .client_active_us
            .store(us, std::sync::atomic::Ordering::Relaxed);
    }

    /// Resolves once the client's session is up and its opening burst of requests is over:
    /// after the first answer, when the client has sent nothing for 25 ms (at most 300 ms later;
    /// at most 2 s after start if the client never asks anything). Children start then, so
    /// they never slow the client's start.
    async fn client_settled(self) {
        let mut answered = self.inner.answered.subscribe();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), answered.wait_for(|a| *a))
            .await;
        let quiet = std::time::Duration::from_millis(25);
        let until = Instant::now() + std::time::Duration::from_millis(300);
        while Instant::now() < until {
            let last = std::time::Duration::from_micros(
                self.inner
                    .client_active_us
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
            let idle = self.inner.started.elapsed().saturating_sub(last);
            if idle >= quiet {
                return;
            }
            tokio::time::sleep(quiet - idle).await;
        }
    }
}

/// Why the server stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The client closed the connection (stdin reached EOF).
    ClientClosed,
    /// The shutdown future completed (a signal, or a test asked).
    Shutdown,
}

/// Serves MCP on the given descriptors (the process's stdin and stdout, or any pipe or socket
/// pair) until the client closes its end or `shutdown` resolves; with no descriptors (MCP over
/// HTTP only, served beside this by its owner), until `shutdown` resolves.
/// The head of the audit chain is signed on the way out.
pub async fn run(
    coordinator: Coordinator,
    stdio: Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Stopped> {
    let audit = coordinator.audit().clone();
    let workers = coordinator.workers().clone();
    workers.start(&coordinator)?;
    coordinator.instances().start_reaper();
    if stdio.is_none() {
        // MCP over HTTP only: no one client's start to keep clear of, and no stdio answer
        // will ever come; children start now rather than after the 2 s fallback.
        coordinator.inner.answered.send_replace(true);
    }
    coordinator
        .instances()
        .restore_and_autostart(coordinator.clone().client_settled());
    let instances = coordinator.instances().clone();
    let (stopped, output) = match stdio {
        Some((input, output)) => {
            let (rmcp_reads, rmcp_writes, output) = relay::split(&coordinator, input, output)
                .map_err(|e| anyhow::anyhow!("cannot set up stdio: {e}"))?;
            let transport = (rmcp_reads, rmcp_writes);
            let stopped = tokio::select! {
                r = serve(coordinator.clone(), transport) => r,
                () = shutdown => Ok(Stopped::Shutdown),
            };
            (stopped, Some(output))
        }
        None => {
            shutdown.await;
            (Ok(Stopped::Shutdown), None)
        }
    };
    workers.cancel();
    // The whole way out stays under 3 s: rmcp's last answers reach the client and the
    // background jobs end while every child goes with us (close, SIGTERM, SIGKILL of each
    // process group and descendants, then of every process adopted), then the audit writer
    // gets what is left of the budget.
    let leaving = std::time::Instant::now();
    let budget = std::time::Duration::from_millis(2800);
    let flushed = async move {
        if let Some(output) = output {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(500), output).await;
        }
    };
    let stopped_children = instances.shutdown(std::time::Duration::from_millis(2000));
    let jobs = workers.join(std::time::Duration::from_millis(500));
    let _ = tokio::join!(flushed, stopped_children, jobs);
    let left = budget
        .saturating_sub(leaving.elapsed())
        .max(std::time::Duration::from_millis(200));
    workers.stop_audit_writer(&coordinator, left).await;
    drop(coordinator);
    let stopped = stopped?;
    let _ = tokio::task::spawn_blocking(move || workers.sign_head_at_exit(&audit)).await;
    Ok(stopped)
}

async fn serve<R, W>(coordinator: Coordinator, transport: (R, W)) -> anyhow::Result<Stopped>
where
    R: tokio::io::AsyncRead + Send + Unpin + 'static,
    W: tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    match coordinator.serve(transport).await {
        Ok(running) => {
            let reason = running.waiting().await?;
            tracing::debug!(?reason, "client session ended");
            Ok(Stopped::ClientClosed)
        }
        // A client that connects and leaves without a word is a clean close, not a failure.
        Err(rmcp::service::ServerInitializeError::ConnectionClosed(_)) => Ok(Stopped::ClientClosed),
        Err(e) => Err(anyhow::anyhow!("MCP session failed to start: {e}")),
    }
}

/// The protocol versions this server answers, newest first (for `--help` and the banner).
pub fn supported_versions() -> Vec<String> {
    let mut v: Vec<String> = ProtocolVersion::KNOWN_VERSIONS
        .iter()
        .map(|v| v.to_string())
        .collect();
    v.sort_by(|a, b| b.cmp(a));
    v
}
