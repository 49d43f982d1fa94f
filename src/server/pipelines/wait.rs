//! The wait of `pipeline_run` and `pipeline_run_get`: progress notifications as stages finish
//! (and a keep-alive through long stages), approval stages asked about on sessions that can be
//! asked, and the end of the wait (the run ended, the time passed, the client cancelled).

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::super::tool::failure;
use super::{RunResult, WaitEnd, result};
use crate::approval::{DecideWith, State};
use crate::pipeline::{Run, RunStatus, StageRun, describe_progress};
use crate::server::Coordinator;
use crate::server::gate::{self, Asked};
use crate::server::session::{Call, Era};
use crate::server::tool::Failure;

/// How often a waiting call checks the database for changes made by other processes.
const POLL: Duration = Duration::from_millis(250);

/// Waits up to `wait` for the run to end, sending a progress notification when it starts and
/// each time a stage finishes. On initialize-era sessions with form elicitation, each approval
/// stage reached is asked about (concurrently: the other branches keep going).
pub(super) async fn wait_for(
    c: &Coordinator,
    call: &Call,
    mut run: Run,
    wait: Duration,
    cancel_run: bool,
) -> Result<RunResult, Failure> {
    if wait.is_zero() || run.status != RunStatus::Running {
        let end = if run.status == RunStatus::Running {
            WaitEnd::NoWait
        } else {
            WaitEnd::Finished
        };
        return Ok(result(c, run, end));
    }
    let deadline = Instant::now() + wait;
    let mut changes = c.pipelines().watch();
    let questions = CancellationToken::new();
    let _withdraw = questions.clone().drop_guard();
    let mut asked: HashSet<String> = HashSet::new();
    let mut stamp = None;
    let mut progress = Progress::new(Duration::from_secs(
        c.pipelines().config().progress_keepalive_seconds.max(1),
    ));
    let run_id = run.id.clone();
    let end = loop {
        progress.send(call, &run).await;
        if run.status != RunStatus::Running {
            break WaitEnd::Finished;
        }
        ask_new(c, call, &run, &mut asked, &questions);
        if call.era == Era::Stateless && !run.awaiting_approvals.is_empty() {
            // A decision made elsewhere may not have been collected yet: collect it first.
            run = advanced(c, &run_id).await?;
            if !run.awaiting_approvals.is_empty() {
                break WaitEnd::NeedsApproval;
            }
            continue;
        }
        let change = next_change(
            c,
            call,
            &run_id,
            &mut changes,
            &mut stamp,
            deadline,
            cancel_run,
        )
        .await?;
        match change {
            Change::Moved => {}
            Change::Same => continue,
            Change::End(end) => break end,
        }
        run = fetch(c, &run_id).await?;
    };
    if end != WaitEnd::Finished {
        run = fetch(c, &run_id).await?;
    }
    Ok(result(c, run, end))
}

/// The progress notifications of one wait.
struct Progress {
    /// Stages done at the last look; `None` before the first notification.
    reported: Option<usize>,
    /// Keep-alive: while no stage finishes, a notification every `keepalive` with a progress
    /// that creeps towards the next whole stage (never reaching it), so clients that reset
    /// their request timeout on progress keep waiting through a long stage.
    keepalive: Duration,
    last_sent: Instant,
    creep: u32,
}

impl Progress {
    fn new(keepalive: Duration) -> Self {
        Progress {
            reported: None,
            keepalive,
            last_sent: Instant::now(),
            creep: 0,
        }
    }

    /// Notifies what changed since the last look at `run`: the start, each stage that
    /// finished, or a keep-alive when it is due.
    async fn send(&mut self, call: &Call, run: &Run) {
        let before = self.reported;
        match self.reported {
            None => {
                call.progress(
                    run.stages_done as f64,
                    Some(run.stages_total as f64),
                    format!("run {}: {}", run.id, describe_progress(run)),
                )
                .await;
            }
            // One notification per stage that finished since the last one, even when several
            // finished between two looks (they may have been moved by another process).
            Some(before) if run.stages_done > before => {
                let mut ended: Vec<&StageRun> = run
                    .stages
                    .iter()
                    .filter(|s| s.finished_at.is_some())
                    .collect();
                ended.sort_by(|a, b| a.finished_at.cmp(&b.finished_at));
                for (k, stage) in ended.iter().enumerate().skip(before) {
                    call.progress(
                        (k + 1) as f64,
                        Some(run.stages_total as f64),
                        format!(
                            "run {}: stage {} {}; {}",
                            run.id,
                            stage.name,
                            stage.status,
                            describe_progress(run)
                        ),
                    )
                    .await;
                }
            }
            Some(done) if self.last_sent.elapsed() >= self.keepalive => {
                self.creep += 1;
                let fraction = 0.99 * f64::from(self.creep) / f64::from(self.creep + 1);
                call.progress(
                    done as f64 + fraction,
                    Some(run.stages_total as f64),
                    format!("run {}: still working; {}", run.id, describe_progress(run)),
                )
                .await;
                self.last_sent = Instant::now();
            }
            Some(_) => {}
        }
        if before != Some(run.stages_done) {
            self.last_sent = Instant::now();
            self.creep = 0;
        }
        self.reported = Some(run.stages_done);
    }
}

/// Asks about each approval the run waits for that was not asked about yet, where this
/// session can be asked while it waits.
fn ask_new(
    c: &Coordinator,
    call: &Call,
    run: &Run,
    asked: &mut HashSet<String>,
    questions: &CancellationToken,
) {
    for id in &run.awaiting_approvals {
        if asked.contains(id) {
            continue;
        }
        match call.era {
            Era::Legacy if call.elicitation_form => {
                asked.insert(id.clone());
                ask(c, call, id, &run.id, questions.child_token());
            }
            Era::Stateless => {}
            // No way to ask here: the person decides with the CLI; keep waiting.
            Era::Legacy => {
                asked.insert(id.clone());
            }
        }
    }
}

/// What ended one wait for the run to change.
enum Change {
    /// The run (may have) moved: look at it again.
    Moved,
    /// The poll found it as it was.
    Same,
    /// The wait is over.
    End(WaitEnd),
}

/// Waits for a change of the run made by this process, or a poll that finds one made by
/// another, or the client's cancellation (cancelling the run too when asked to), or the
/// deadline.
async fn next_change(
    c: &Coordinator,
    call: &Call,
    run_id: &str,
    changes: &mut watch::Receiver<u64>,
    stamp: &mut Option<(RunStatus, i64)>,
    deadline: Instant,
    cancel_run: bool,
) -> Result<Change, Failure> {
    tokio::select! {
        _ = changes.changed() => Ok(Change::Moved),
        () = tokio::time::sleep(POLL) => {
            // Another process (a worker's coordinator, the CLI) may have moved the run.
            let id = run_id.to_string();
            let now = c.blocking(move |c| c.pipelines().stamp(&id)).await?
                .map_err(|e| failure("pipeline_run", e))?;
            if now == *stamp {
                return Ok(Change::Same);
            }
            *stamp = now;
            Ok(Change::Moved)
        }
        () = call.cancel.cancelled() => {
            if cancel_run {
                let actor = call.actor.clone();
                let id = run_id.to_string();
                let cancelled = c
                    .blocking(move |c| {
                        c.pipelines().cancel_run(&id, Some("the waiting tool call was cancelled"), &actor)
                    })
                    .await?;
                if let Err(e) = cancelled {
                    tracing::warn!(run = %run_id, error = %e, "could not cancel the run after the client cancelled the call");
                }
            }
            Ok(Change::End(WaitEnd::ClientCancelled))
        }
        () = tokio::time::sleep_until(deadline) => Ok(Change::End(WaitEnd::WaitElapsed)),
    }
}

/// The run as it stands.
async fn fetch(c: &Coordinator, run_id: &str) -> Result<Run, Failure> {
    let id = run_id.to_string();
    c.blocking(move |c| c.pipelines().get_run(&id))
        .await?
        .map_err(|e| failure("pipeline_run", e))
}

/// The run after collecting what was decided or finished meanwhile.
async fn advanced(c: &Coordinator, run_id: &str) -> Result<Run, Failure> {
    let id = run_id.to_string();
    c.blocking(move |c| {
        c.pipelines().advance(&id)?;
        c.pipelines().get_run(&id)
    })
    .await?
    .map_err(|e| failure("pipeline_run", e))
}

/// Asks the person about one approval stage through the client (a form elicitation) in the
/// background, then moves the run on. `cancel` withdraws the question when the wait ends.
fn ask(c: &Coordinator, call: &Call, approval_id: &str, run_id: &str, cancel: CancellationToken) {
    let c = c.clone();
    let mut call = call.clone();
    call.cancel = cancel;
    // The waiting call's progress token counts stages; the question must not reuse it (its
    // own "asking..." notifications would make progress go backwards).
    call.progress_token = None;
    let approval_id = approval_id.to_string();
    let run_id = run_id.to_string();
    let workers = c.workers().clone();
    workers.spawn(async move {
        let id = approval_id.clone();
        let approval = match c.blocking(move |c| c.approvals().get(&id)).await {
            Ok(Ok(a)) => a,
            _ => return,
        };
        if approval.state != State::Pending {
            return;
        }
        if approval.decide_with == DecideWith::OutOfBand {
            tracing::info!(
                approval = %approval_id,
                command = ?gate::decide_command(&c, &approval),
                "approval stage needs a decision outside the client"
            );
            return;
        }
        match gate::ask(
            &c,
            &call,
            "pipeline_run",
            approval,
            std::time::Duration::ZERO,
        )
        .await
        {
            Ok(Asked::Done(out)) if out.state != State::Pending => {
                let id = run_id.clone();
                match c.blocking(move |c| c.pipelines().advance(&id)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(run = %run_id, error = %e, "could not advance the run after a decision")
                    }
                    Err(e) => {
                        tracing::warn!(run = %run_id, error = %e.message, "could not advance the run after a decision")
                    }
                }
            }
            Ok(_) => {}
            Err(_) => {
                tracing::debug!(approval = %approval_id, "asking about an approval stage failed")
            }
        }
    });
}
