//! The owner of the work a server runs beside the requests: every domain's periodic work
//! (`Periodic`, see `src/periodic.rs`), the tool-list notifier, and the jobs tool calls start
//! and do not wait for (assessment runs, pipeline questions, resource watches), all under one
//! cancellation token and one task tracker; and the threads of the audit chain (the batching
//! writer and the head signer). On the way out it stops them in order within the exit budget:
//! the jobs first, then the writer with what is queued, then the head is signed.
//! Child instances are the instance domain's own (`InstanceService::shutdown`).

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Coordinator;
use crate::audit::HeadSigner;
use crate::periodic::Periodic;
use crate::store::budget::{self, Budget};

/// What runs beside the requests, and how it stops.
#[derive(Default)]
pub struct Workers {
    stop: CancellationToken,
    jobs: TaskTracker,
    threads: Mutex<Threads>,
}

/// The audit chain's threads, once started.
#[derive(Default)]
struct Threads {
    writer: Option<std::thread::JoinHandle<()>>,
    head_signer: Option<HeadSigner>,
}

impl Workers {
    /// Starts the audit writer, the checkpointer, the head signer, every domain's periodic
    /// work and the tool-list notifier. Fails only if the audit writer cannot start.
    pub(super) fn start(&self, c: &Coordinator) -> anyhow::Result<()> {
        let audit = c.audit().clone();
        let writer = c
            .inner
            .audit_queue
            .start(audit.clone())
            .map_err(|e| anyhow::anyhow!("cannot start the audit writer: {e}"))?;
        // Checkpoints off the callers' path; without it SQLite checkpoints inside a commit.
        if let Err(e) = audit.store().start_checkpointer() {
            tracing::warn!(error = %e, "cannot start the background checkpointer");
        }
        // Signs what was written within a second, so a crash can hide at most that much.
        let head_signer = match HeadSigner::start(&audit) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the audit head signer");
                None
            }
        };
        *self.threads.lock().unwrap_or_else(PoisonError::into_inner) = Threads {
            writer,
            head_signer,
        };
        let periodic = [
            c.tasks().periodic(),
            c.pipelines().periodic(),
            c.remediations().periodic(),
            c.fleet().periodic(),
        ];
        for work in periodic.into_iter().flatten() {
            self.jobs.spawn(run_every(work, self.stop.clone()));
        }
        let notifier = c.clone();
        self.spawn(async move { super::lifecycle::tool_list_changes(notifier).await });
        Ok(())
    }

    /// Runs `job` on the runtime until it ends or the server stops, whichever comes first.
    pub(super) fn spawn(&self, job: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.jobs.spawn(async move {
            tokio::select! {
                () = job => {}
                () = stop.cancelled() => {}
            }
        });
    }

    /// Runs blocking `job` on a blocking thread, tracked: the way out waits for it (within
    /// the exit budget).
    pub(super) fn spawn_blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        self.jobs.spawn_blocking(job)
    }

    /// Tells every job to stop: periodic work ends at its next tick (a run in progress
    /// finishes), jobs started with [`spawn`](Self::spawn) are dropped at their next await.
    pub(super) fn cancel(&self) {
        self.stop.cancel();
        self.jobs.close();
    }

    /// Waits up to `within` for the jobs to end (see [`cancel`](Self::cancel)); blocking jobs
    /// still running then are left to the runtime's shutdown.
    pub(super) async fn join(&self, within: Duration) {
        if tokio::time::timeout(within, self.jobs.wait())
            .await
            .is_err()
        {
            tracing::debug!(
                left = self.jobs.len(),
                "background jobs still running at exit"
            );
        }
    }

    /// Has the audit writer write what is queued and end, waiting up to `within` for it.
    pub(super) async fn stop_audit_writer(&self, c: &Coordinator, within: Duration) {
        let writer = self
            .threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .writer
            .take();
        if let Some(writer) = writer {
            c.inner.audit_queue.stop();
            let joined = tokio::task::spawn_blocking(move || writer.join());
            let _ = tokio::time::timeout(within, joined).await;
        }
    }

    /// Stops the head signer and signs the chain's head one last time (blocking: call it off
    /// the async threads).
    pub(super) fn sign_head_at_exit(&self, audit: &crate::audit::AuditLog) {
        drop(
            self.threads
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .head_signer
                .take(),
        );
        match audit.sign_head() {
            Ok(seq) => tracing::debug!(?seq, "signed the audit chain head"),
            Err(e) => tracing::warn!(error = %e, "could not sign the audit chain head"),
        }
    }
}

/// Runs `work` every `work.every` (the first at once) until `stop`, each run on a blocking
/// thread with no lock-wait budget: when another process holds the database a run gives up
/// at once (and the next tick tries again) instead of holding the connection calls need.
async fn run_every(work: Periodic, stop: CancellationToken) {
    let work = Arc::new(work);
    let mut every = tokio::time::interval(work.every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => return,
        }
        let run = work.clone();
        let ran =
            tokio::task::spawn_blocking(move || budget::sync_scope(Budget::none(), || (run.run)()))
                .await;
        match ran {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.busy => tracing::debug!(error = %e.message, "{} skipped", work.name),
            Ok(Err(e)) => tracing::warn!(error = %e.message, "{} failed", work.name),
            Err(e) => tracing::warn!(error = %e, "{} failed", work.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::periodic::Skipped;

    fn runtime() -> tokio::runtime::Runtime {
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("runtime: {e}"),
        }
    }

    #[test]
    fn the_way_out_waits_for_a_blocking_job_in_flight_and_drops_waiting_ones() {
        runtime().block_on(async {
            let workers = Workers::default();
            let done = Arc::new(AtomicUsize::new(0));
            let d = done.clone();
            drop(workers.spawn_blocking(move || {
                std::thread::sleep(Duration::from_millis(200));
                d.fetch_add(1, Ordering::SeqCst);
            }));
            // A job that would never end on its own.
            workers.spawn(std::future::pending());
            tokio::time::sleep(Duration::from_millis(20)).await;
            let started = std::time::Instant::now();
            workers.cancel();
            workers.join(Duration::from_secs(5)).await;
            assert_eq!(
                done.load(Ordering::SeqCst),
                1,
                "the blocking job was not waited for"
            );
            assert!(workers.jobs.is_empty(), "{} jobs left", workers.jobs.len());
            assert!(started.elapsed() < Duration::from_secs(2));
        });
    }

    #[test]
    fn periodic_work_runs_at_once_then_on_its_clock_and_not_after_cancel() {
        runtime().block_on(async {
            let workers = Workers::default();
            let runs = Arc::new(AtomicUsize::new(0));
            let r = runs.clone();
            let work = Periodic::new("test work", Duration::from_millis(50), move || {
                r.fetch_add(1, Ordering::SeqCst);
                Err(Skipped::new(true, "busy"))
            });
            workers.jobs.spawn(run_every(work, workers.stop.clone()));
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(runs.load(Ordering::SeqCst), 1, "the first run is at once");
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(
                runs.load(Ordering::SeqCst) >= 3,
                "a busy run is tried again"
            );
            workers.cancel();
            workers.join(Duration::from_secs(5)).await;
            assert!(workers.jobs.is_empty());
            let after = runs.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(150)).await;
            assert_eq!(runs.load(Ordering::SeqCst), after, "ran after the way out");
        });
    }
}
