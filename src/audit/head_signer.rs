//! The head signer: signs the audit chain's head once a second while events are written, so
//! that a crash (`kill -9`, power loss) leaves at most about a second of events that could be
//! deleted without `audit verify` noticing. Critical events are signed as they are written and
//! the head once more at shutdown; this covers everything in between.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use super::AuditLog;
use crate::store::{Location, Store};

/// The longest an event written through this coordinator waits for a signature over it.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The running head signer; stops (and is joined) when dropped.
pub struct HeadSigner {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HeadSigner {
    /// Starts signing the head of `log`'s chain once a second whenever something was
    /// committed through its store since the last look. Fails only if no thread can be
    /// started.
    pub fn start(log: &AuditLog) -> std::io::Result<Self> {
        let log = log.clone();
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("audit-head-signer".into())
            .spawn(move || run(&log, &stopped))?;
        Ok(HeadSigner {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for HeadSigner {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(log: &AuditLog, stopped: &Receiver<()>) {
    // A connection of its own, opened at the first head to sign (not during start-up, which
    // it would slow): waiting for another process's write lock never holds up a tool call on
    // the shared one. `:memory:` has no second connection to the same data.
    let mut own: Option<AuditLog> = None;
    // Commits through the server's store since the last look (from 0: those made while this
    // thread started count too); the signer's own go through its own handle and do not.
    let mut seen = 0;
    loop {
        match stopped.recv_timeout(INTERVAL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = log.store().commits();
        if now == seen {
            continue;
        }
        if own.is_none() {
            own = match log.store().location() {
                Location::File(_) => match Store::open_existing(log.store().location()) {
                    Ok(store) => Some(AuditLog::new(store, log.signer.clone())),
                    Err(e) => {
                        tracing::debug!(error = %e, "the audit head signer cannot open the database; trying again in a second");
                        continue;
                    }
                },
                // One memory, or a pool of connections already: nothing to hold up.
                Location::Memory | Location::Postgres(_) => Some(log.clone()),
            };
        }
        let Some(signer) = &own else { continue };
        match signer.sign_head_if_unsigned() {
            Ok(_) => seen = now,
            // Tried again in a second (a busy or read-only database); the tail stays unsigned
            // meanwhile and `audit verify` says so.
            Err(e) => tracing::debug!(error = %e, "could not sign the audit chain head"),
        }
    }
}
