//! The audit writer: every tool call's `tool.call` event, written in batches on a thread of
//! its own instead of in a transaction on the call's path.
//!
//! A call's state changes and their events still commit together, in the call's own
//! transaction (DESIGN invariant 4); what waits here is only the record that the call was
//! made. It reaches the database within [`GATHER`] (one transaction for a burst of calls
//! costs far less than one each), `audit_query` and `audit_verify` first wait for everything
//! queued before them ([`AuditQueue::flush`]), and shutdown writes what is left. A crash can
//! lose the last [`GATHER`] of `tool.call` events, never a state change's.

use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::audit::{AuditLog, NewEvent};

/// How long the writer lets a burst gather before it writes.
pub(super) const GATHER: Duration = Duration::from_millis(20);

/// Events per transaction at most.
const BATCH: usize = 512;

/// What the writer is asked to do.
enum Job {
    Event(NewEvent),
    /// Write everything queued before this now, then answer.
    Flush(SyncSender<()>),
    /// Write what is queued, then end.
    Stop,
}

/// The queue in front of the writer. Until [`start`](Self::start) (and after the writer has
/// ended) it takes nothing: [`send`](Self::send) hands the event back to be written at once.
pub(super) struct AuditQueue {
    tx: Sender<Job>,
    /// The writer's end, until the writer takes it.
    rx: Mutex<Option<Receiver<Job>>>,
    /// The writer thread, to wake when a flush or a stop should not wait out the gathering.
    writer: OnceLock<std::thread::Thread>,
}

impl AuditQueue {
    pub(super) fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        AuditQueue {
            tx,
            rx: Mutex::new(Some(rx)),
            writer: OnceLock::new(),
        }
    }

    fn started(&self) -> bool {
        self.rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    /// Starts the writer thread; `None` if it was started before.
    pub(super) fn start(&self, audit: AuditLog) -> std::io::Result<Option<JoinHandle<()>>> {
        let rx = self
            .rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(rx) = rx else {
            return Ok(None);
        };
        let handle = std::thread::Builder::new()
            .name("audit writer".into())
            .spawn(move || write_batches(&audit, &rx))?;
        let _ = self.writer.set(handle.thread().clone());
        Ok(Some(handle))
    }

    /// Queues an event for the writer, or gives it back when no writer runs.
    pub(super) fn send(&self, event: NewEvent) -> Option<NewEvent> {
        if !self.started() {
            return Some(event);
        }
        match self.tx.send(Job::Event(event)) {
            Ok(()) => None,
            Err(std::sync::mpsc::SendError(Job::Event(event))) => Some(event),
            Err(_) => None,
        }
    }

    /// Returns once every event queued before this call is in the database, or after `wait`.
    /// Blocks: call it off the async runtime.
    pub(super) fn flush(&self, wait: Duration) {
        if !self.started() {
            return;
        }
        let (done, written) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(Job::Flush(done)).is_ok() {
            self.wake();
            let _ = written.recv_timeout(wait);
        }
    }

    /// Asks the writer to write what is queued and end.
    pub(super) fn stop(&self) {
        let _ = self.tx.send(Job::Stop);
        self.wake();
    }

    fn wake(&self) {
        if let Some(writer) = self.writer.get() {
            writer.unpark();
        }
    }
}

/// The writer's loop: wait for an event, let a burst gather for up to [`GATHER`], write it in
/// one transaction, answer the flushes. It sleeps through the gathering window rather than
/// waking for every event (a wake-up per proxied call cost about 10 µs of CPU each); a flush or
/// a stop unparks it. At nice +10: on a busy machine the calls in flight (the client, the
/// relay, a child) go first.
fn write_batches(audit: &AuditLog, rx: &Receiver<Job>) {
    lower_own_thread_priority();
    let mut stopping = false;
    while !stopping {
        let mut burst = Burst::default();
        burst.take(rx.recv().ok(), &mut stopping);
        let deadline = Instant::now() + GATHER;
        loop {
            // What is queued now, without waiting.
            while burst.events.len() < BATCH {
                match rx.try_recv() {
                    Ok(job) => burst.take(Some(job), &mut stopping),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        stopping = true;
                        break;
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if !burst.flushes.is_empty()
                || stopping
                || burst.events.len() >= BATCH
                || left.is_zero()
            {
                break;
            }
            std::thread::park_timeout(left);
        }
        if !burst.events.is_empty()
            && let Err(e) = audit.record_batch(&burst.events)
        {
            tracing::error!(error = %e, "could not record tool calls in the audit log");
        }
        for done in burst.flushes {
            let _ = done.send(());
        }
    }
}

/// The jobs of one transaction.
#[derive(Default)]
struct Burst {
    events: Vec<NewEvent>,
    /// Flushes to answer once the events are written.
    flushes: Vec<SyncSender<()>>,
}

impl Burst {
    /// Takes one job; `None` is the queue closing, which ends the writer like a stop.
    fn take(&mut self, job: Option<Job>, stopping: &mut bool) {
        match job {
            Some(Job::Event(e)) => self.events.push(e),
            Some(Job::Flush(done)) => self.flushes.push(done),
            Some(Job::Stop) | None => *stopping = true,
        }
    }
}

/// Nice +10 for the calling thread. Linux only: there a thread has its own nice value
/// (`setpriority` on its tid); elsewhere the value belongs to the whole process, which must
/// keep its own, so the audit writer runs at the default priority (a throughput cost only).
fn lower_own_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority on this thread's own id; no pointers.
        let niced =
            unsafe { libc::setpriority(libc::PRIO_PROCESS as _, libc::gettid() as libc::id_t, 10) };
        if niced != 0 {
            tracing::debug!("could not lower the audit writer's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, Actor, ActorKind, AuditSigner, Outcome, Query};
    use crate::store::{Location, Store};

    fn event(subject: &str) -> NewEvent {
        NewEvent {
            actor: Actor::new(ActorKind::Client, "test/1"),
            action: Action::ToolCall,
            subject: subject.into(),
            outcome: Outcome::Ok,
            detail: serde_json::json!({}),
            critical: false,
        }
    }

    fn subjects(audit: &AuditLog) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let page = audit.query(&Query::default())?;
        Ok(page.events.into_iter().rev().map(|e| e.subject).collect())
    }

    /// Before the writer starts an event is handed back; after, a flush returns only once
    /// every event queued before it is stored, in order; stopping writes the rest.
    #[test]
    fn flush_waits_for_what_was_queued() -> Result<(), Box<dyn std::error::Error>> {
        let store = Store::open(&Location::Memory)?;
        let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
        let audit = AuditLog::new(store, std::sync::Arc::new(AuditSigner::from_key(key)));
        let queue = AuditQueue::new();
        assert!(queue.send(event("early")).is_some(), "no writer yet");
        let writer = queue.start(audit.clone())?.ok_or("writer not started")?;
        assert!(queue.start(audit.clone())?.is_none(), "started twice");
        for i in 0..50 {
            assert!(queue.send(event(&format!("call-{i}"))).is_none());
        }
        let started = Instant::now();
        queue.flush(Duration::from_secs(5));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the flush timed out"
        );
        let stored = subjects(&audit)?;
        assert_eq!(stored.len(), 50);
        assert_eq!(stored[0], "call-0");
        assert_eq!(stored[49], "call-49");
        assert!(queue.send(event("last")).is_none());
        queue.stop();
        writer.join().map_err(|_| "the writer panicked")?;
        assert_eq!(subjects(&audit)?.last().map(String::as_str), Some("last"));
        assert!(queue.send(event("after")).is_some(), "the writer has ended");
        Ok(())
    }
}
