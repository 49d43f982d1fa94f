//! The audit writer: every tool call's `tool.call` event, written in batches on a thread of
//! its own instead of in a transaction on the call's path.
//!
//! A call's state changes and their events still commit together, in the call's own
//! transaction (DESIGN invariant 4); what waits here is only the record that the call was
//! made. It reaches the database within [`GATHER`] (one transaction for a burst of calls
//! costs far less than one each), `audit_query` and `audit_verify` first wait for everything
//! queued before them ([`AuditQueue::flush`]), and shutdown writes what is left. A crash can
//! lose the last [`GATHER`] of `tool.call` events, never a state change's.
//!
//! The writer waits at most [`WAIT`] for another process's lock (its lock-wait budget, see
//! `store/budget.rs`; it waits with the connection released, so calls go on meanwhile): long
//! enough for a coordinator sharing the file to finish a transaction, short enough that a
//! flush is answered at once. When another process holds the lock longer, or the database
//! cannot be written (read-only, disk full), the events stay queued and the writer tries again
//! every [`RETRY`]; the calls themselves (reads among them) are served meanwhile. Past
//! [`MAX_WAITING`] waiting events the oldest are given up. Both counts are the [`Backlog`] that
//! `coordinator_status` reports as degraded health.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::audit::{AuditLog, NewEvent};
use crate::store::budget::{self, Budget};

/// How long the writer lets a burst gather before it writes.
pub(super) const GATHER: Duration = Duration::from_millis(20);

/// Events per transaction at most.
const BATCH: usize = 512;

/// How long one write may wait for another process's lock.
const WAIT: Duration = Duration::from_millis(100);

/// How long the writer waits before trying again after a failed write.
const RETRY: Duration = Duration::from_millis(200);

/// Events kept waiting after failed writes at most; older ones are given up (and counted).
const MAX_WAITING: usize = 10_000;

/// How long the last write, on the way out, may wait for the lock.
const LAST_WAIT: Duration = Duration::from_secs(1);

/// Tool calls whose events are not in the audit log: waiting after a failed write, or given
/// up. Read by `coordinator_status`.
#[derive(Debug, Default)]
pub(super) struct Backlog {
    waiting: AtomicU64,
    dropped: AtomicU64,
    /// Why the last write failed, while events wait.
    error: Mutex<Option<String>>,
}

/// What [`Backlog`] holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unaudited {
    /// Events waiting for the database.
    pub waiting: u64,
    /// Events given up since the process started.
    pub dropped: u64,
    /// Why the last write failed, while events wait.
    pub error: Option<String>,
}

impl Backlog {
    /// Nothing missing: `None`; else the counts and the last failure.
    pub(super) fn unaudited(&self) -> Option<Unaudited> {
        let now = Unaudited {
            waiting: self.waiting.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            error: self
                .error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        };
        (now.waiting > 0 || now.dropped > 0).then_some(now)
    }

    fn set(&self, waiting: usize, error: Option<String>) {
        self.waiting.store(waiting as u64, Ordering::Relaxed);
        *self.error.lock().unwrap_or_else(PoisonError::into_inner) = error;
    }

    fn give_up(&self, n: usize) {
        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
    }
}

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
    backlog: Arc<Backlog>,
}

impl AuditQueue {
    pub(super) fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        AuditQueue {
            tx,
            rx: Mutex::new(Some(rx)),
            writer: OnceLock::new(),
            backlog: Arc::new(Backlog::default()),
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
        let backlog = self.backlog.clone();
        let handle = std::thread::Builder::new()
            .name("audit writer".into())
            .spawn(move || write_batches(&audit, &rx, &backlog))?;
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

    /// Tool calls not in the audit log (waiting or given up), if any.
    pub(super) fn unaudited(&self) -> Option<Unaudited> {
        self.backlog.unaudited()
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
/// relay, a child) go first. Events a write could not store wait for the next try, [`RETRY`]
/// later; flushes are answered after every try, written or not, so that no reader waits for
/// a database another process holds.
fn write_batches(audit: &AuditLog, rx: &Receiver<Job>, backlog: &Backlog) {
    lower_own_thread_priority();
    let mut stopping = false;
    let mut failing = false;
    let mut waiting: Vec<NewEvent> = Vec::new();
    while !stopping {
        let mut burst = Burst {
            events: std::mem::take(&mut waiting),
            flushes: Vec::new(),
        };
        let gather = if burst.events.is_empty() {
            burst.take(rx.recv().ok(), &mut stopping);
            GATHER
        } else {
            RETRY
        };
        let deadline = Instant::now() + gather;
        let full = burst.events.len() + BATCH;
        loop {
            // What is queued now, without waiting.
            while burst.events.len() < full {
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
            if !burst.flushes.is_empty() || stopping || burst.events.len() >= full || left.is_zero()
            {
                break;
            }
            std::thread::park_timeout(left);
        }
        let wait = if stopping { LAST_WAIT } else { WAIT };
        match budget::sync_scope(Budget::new(wait), || write_all(audit, burst.events)) {
            Ok(()) => {
                if failing {
                    tracing::info!("tool calls reach the audit log again");
                }
                failing = false;
                backlog.set(0, None);
            }
            Err((unwritten, error)) => {
                if !failing {
                    tracing::warn!(%error, waiting = unwritten.len(), "tool calls are not reaching the audit log; retrying");
                }
                failing = true;
                waiting = unwritten;
                if waiting.len() > MAX_WAITING {
                    let over = waiting.len() - MAX_WAITING;
                    waiting.drain(..over);
                    backlog.give_up(over);
                    tracing::error!(
                        given_up = over,
                        "gave up on the oldest tool-call audit events: the database does not take them"
                    );
                }
                backlog.set(waiting.len(), Some(error));
            }
        }
        for done in burst.flushes {
            let _ = done.send(());
        }
    }
    if !waiting.is_empty() {
        backlog.give_up(waiting.len());
        tracing::error!(
            lost = waiting.len(),
            "could not record tool calls in the audit log before stopping"
        );
    }
}

/// Writes `events` in transactions of [`BATCH`]; on a failure, the events not written and why.
fn write_all(audit: &AuditLog, mut events: Vec<NewEvent>) -> Result<(), (Vec<NewEvent>, String)> {
    let mut written = 0;
    while written < events.len() {
        let end = (written + BATCH).min(events.len());
        if let Err(e) = audit.record_batch(&events[written..end]) {
            events.drain(..written);
            return Err((events, e.to_string()));
        }
        written = end;
    }
    Ok(())
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

    /// While another process holds the database, the writer neither waits long nor loses
    /// events: a flush returns after one short try, the backlog counts what waits and says
    /// why, and the events are written, in order, once the lock is gone.
    #[test]
    fn events_wait_for_a_locked_database_without_holding_anyone_up()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.db");
        let store = Store::open(&Location::File(path.clone()))?;
        let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
        let audit = AuditLog::new(store, std::sync::Arc::new(AuditSigner::from_key(key)));
        let queue = AuditQueue::new();
        let writer = queue.start(audit.clone())?.ok_or("writer not started")?;
        let holder = rusqlite::Connection::open(&path)?;
        holder.execute_batch("BEGIN EXCLUSIVE")?;
        for i in 0..20 {
            assert!(queue.send(event(&format!("call-{i}"))).is_none());
        }
        let started = Instant::now();
        queue.flush(Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_millis(500));
        let backlog = queue.unaudited().ok_or("nothing reported as unaudited")?;
        assert_eq!((backlog.waiting, backlog.dropped), (20, 0));
        let error = backlog.error.unwrap_or_default();
        assert!(error.contains("database is busy"), "{error}");
        // Reads of this process go on meanwhile.
        assert!(subjects(&audit)?.is_empty());

        holder.execute_batch("ROLLBACK")?;
        queue.flush(Duration::from_secs(5));
        assert_eq!(queue.unaudited(), None);
        let stored = subjects(&audit)?;
        assert_eq!(stored.len(), 20);
        assert_eq!(stored[0], "call-0");
        assert_eq!(stored[19], "call-19");
        queue.stop();
        writer.join().map_err(|_| "the writer panicked")?;
        Ok(())
    }
}
