//! Processes that leave a child's process group: the `/proc` tree under a child (whatever
//! session or group its members moved to), killing it by identity rather than by pid, and the
//! coordinator as a child subreaper that kills and reaps every process it adopts.
//!
//! # How escapes are caught
//!
//! * The coordinator (`serve`) is a child subreaper (`PR_SET_CHILD_SUBREAPER`): an orphan
//!   anywhere below it is re-parented to it instead of to init, so it stays findable.
//! * Every child is made a subreaper itself before exec (see `process::spawn`; the flag
//!   survives exec). An orphan of a double fork is therefore re-parented to the instance's own
//!   child while that child lives, and a walk of `/proc` ppid links from the child finds it,
//!   whatever `setsid`/`setpgid` it called. Only when the child itself is gone do its
//!   descendants come up to the coordinator.
//! * The coordinator never means to have children other than the ones it spawned itself
//!   (all through `process::spawn`, which registers them here while holding the same lock a
//!   reaper pass takes, so a pass never sees one unregistered). Any other child of the
//!   coordinator was adopted: it is killed with its own descendants, and reaped once it is a
//!   zombie, on every `SIGCHLD` and once a second ([`run`]), and all of them at exit
//!   ([`kill_all_adopted`]). Our own children are left to Tokio, which reaps them by pid;
//!   `waitpid` is only ever called here for a pid that is not one of them.
//! * A process is named by its pid *and* its start time ([`Proc`]), and signalled through a
//!   pidfd opened before its start time is checked, so a recycled pid is never hit.
//!
//! Not covered: a process that leaves the tree by other means than being orphaned (it cannot:
//! ppid links only change by re-parenting), a process that is another user's (signals are
//! refused), and everything after a `kill -9` of the coordinator (then only its direct
//! children die, by `PR_SET_PDEATHSIG`; their descendants go to the next subreaper or init).

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::procfs::{ProcStat, read_stat};

/// How often [`run`] looks for adopted processes when no `SIGCHLD` arrives (an orphan that is
/// re-parented to us does not signal; only its death does).
const PASS_INTERVAL: Duration = Duration::from_secs(1);

/// Whether this process became a child subreaper ([`become_subreaper`]).
static SUBREAPER: AtomicBool = AtomicBool::new(false);

/// The children this process spawned itself (Tokio owns and reaps them).
static OWN: Mutex<Vec<Proc>> = Mutex::new(Vec::new());

/// One process, by pid and start time (clock ticks after boot), so that a pid reused by an
/// unrelated process is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Proc {
    pub pid: u32,
    pub start: u64,
}

impl Proc {
    /// The process with this pid now, if there is one.
    pub fn of(pid: u32) -> Option<Proc> {
        read_stat(pid).map(|s| Proc {
            pid,
            start: s.start,
        })
    }

    /// Whether this very process still exists and has not exited (zombies are not alive).
    pub fn alive(&self) -> bool {
        read_stat(self.pid).is_some_and(|s| s.start == self.start && s.is_alive())
    }

    /// Sends `sig` to this process if it still is the one named (same start time). Returns
    /// whether it was sent.
    pub fn signal(&self, sig: libc::c_int) -> bool {
        let Ok(pid) = libc::pid_t::try_from(self.pid) else {
            return false;
        };
        if pid <= 1 {
            return false;
        }
        #[cfg(target_os = "linux")]
        {
            // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            if fd >= 0 {
                return self.signal_pidfd(fd as libc::c_int, sig);
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
                return false; // gone (ESRCH) or not ours to know
            }
        }
        // Kernels before 5.3 (and systems without pidfds, which have no `/proc` to name a
        // process by either, so nothing gets here): check, then signal by pid (a tiny window
        // for reuse).
        if read_stat(self.pid).is_none_or(|s| s.start != self.start) {
            return false;
        }
        // SAFETY: kill only sends a signal; pid > 1.
        unsafe { libc::kill(pid, sig) == 0 }
    }

    /// Sends `sig` through `fd`, a pidfd of this pid that this function closes.
    #[cfg(target_os = "linux")]
    fn signal_pidfd(&self, fd: libc::c_int, sig: libc::c_int) -> bool {
        // The descriptor names the process that had this pid when it was opened; if that
        // process has our start time, the signal can reach no other.
        let same = read_stat(self.pid).is_some_and(|s| s.start == self.start);
        let sent = same && {
            // SAFETY: pidfd_send_signal with a descriptor we own, no siginfo, no flags.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd,
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            rc == 0
        };
        // SAFETY: we own `fd` and close it once.
        unsafe { libc::close(fd) };
        sent
    }
}

/// One line of the process table.
#[derive(Debug, Clone, Copy)]
struct Entry {
    pid: u32,
    stat: ProcStat,
}

/// Every process on the host (by `/proc`), skipping those that vanish during the scan.
fn table() -> Vec<Entry> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            Some(Entry {
                pid,
                stat: read_stat(pid)?,
            })
        })
        .collect()
}

/// Every live descendant of `root` (not `root` itself), by ppid links: children, their
/// children, and so on, in whatever process group or session they are.
pub fn descendants(root: u32) -> Vec<Proc> {
    descendants_in(&table(), &[root])
}

fn descendants_in(table: &[Entry], roots: &[u32]) -> Vec<Proc> {
    let mut found: Vec<Proc> = Vec::new();
    let mut frontier: Vec<u32> = roots.to_vec();
    while let Some(parent) = frontier.pop() {
        for e in table {
            if i64::from(parent) == e.stat.ppid
                && e.pid != parent
                && !found.iter().any(|p| p.pid == e.pid)
            {
                found.push(Proc {
                    pid: e.pid,
                    start: e.stat.start,
                });
                frontier.push(e.pid);
            }
        }
    }
    found.retain(|p| table.iter().any(|e| e.pid == p.pid && e.stat.is_alive()));
    found
}

/// Makes this process a child subreaper: orphans below it are re-parented to it. Call once,
/// early in `serve`; from then on [`run`] must run, or adopted zombies pile up.
///
/// Linux only; elsewhere this returns an `Unsupported` error and orphans go to init (or
/// launchd), out of reach: only each child's process group is killed (README, Platforms).
pub fn become_subreaper() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a flag of this process.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        SUBREAPER.store(true, Ordering::SeqCst);
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "child subreapers exist on Linux only",
        ))
    }
}

/// Whether [`become_subreaper`] succeeded in this process.
pub fn is_subreaper() -> bool {
    SUBREAPER.load(Ordering::SeqCst)
}

/// Held while a child is forked and registered; a reaper pass waits for it.
pub(super) struct Spawning(std::sync::MutexGuard<'static, Vec<Proc>>);

impl Spawning {
    /// Records `pid` as a child this process spawned.
    pub(super) fn register(&mut self, pid: u32) {
        // Right after fork the child cannot have been reaped (we have not waited), so its
        // stat is there, zombie or not.
        if let Some(p) = Proc::of(pid) {
            self.0.push(p);
        }
    }
}

/// Takes the registry for a spawn (see [`Spawning`]).
pub(super) fn spawning() -> Spawning {
    Spawning(
        OWN.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Adopted processes sent SIGKILL (with their descendants).
    pub killed: usize,
    /// Adopted zombies reaped.
    pub reaped: usize,
    /// Adopted processes still there (alive or zombie) after the pass.
    pub left: usize,
}

/// One look at this process's children: every child it did not spawn itself is killed with
/// its descendants, and reaped once it is a zombie. Does nothing unless this process is a
/// subreaper (without that, orphans go to init and nothing here is ours to reap).
pub fn reap_adopted() -> Pass {
    if !is_subreaper() {
        return Pass::default();
    }
    let mut own = OWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let me = i64::from(std::process::id());
    // The whole process table only when needed: it takes a read per process on the host.
    let mut table: Option<Vec<Entry>> = None;
    let children: Vec<Entry> = match children_of_self() {
        Some(pids) => pids
            .into_iter()
            .filter_map(|pid| {
                Some(Entry {
                    pid,
                    stat: read_stat(pid)?,
                })
            })
            .filter(|e| e.stat.ppid == me)
            .collect(),
        None => table
            .get_or_insert_with(self::table)
            .iter()
            .filter(|e| e.stat.ppid == me)
            .copied()
            .collect(),
    };
    // Children Tokio has reaped are gone from the table: forget them.
    own.retain(|p| {
        children
            .iter()
            .any(|e| e.pid == p.pid && e.stat.start == p.start)
    });
    let mut pass = Pass::default();
    for e in children {
        if own.iter().any(|p| p.pid == e.pid) {
            continue;
        }
        if e.stat.is_alive() {
            let adopted = Proc {
                pid: e.pid,
                start: e.stat.start,
            };
            // Its descendants first, so that none is orphaned again between the two kills.
            let table = table.get_or_insert_with(self::table);
            for d in descendants_in(table, &[e.pid]) {
                d.signal(libc::SIGKILL);
            }
            if adopted.signal(libc::SIGKILL) {
                tracing::warn!(
                    pid = e.pid,
                    "killed a process the coordinator adopted: it outlived the child instance it came from"
                );
                pass.killed += 1;
            }
            pass.left += 1;
        } else if reap(e.pid) {
            pass.reaped += 1;
        } else {
            pass.left += 1;
        }
    }
    pass
}

/// This process's children, from `/proc/self/task/*/children` (a child is listed under the
/// thread that forked or adopted it); `None` if the kernel has no such files.
fn children_of_self() -> Option<Vec<u32>> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut pids = Vec::new();
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(list) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        any = true;
        pids.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    any.then_some(pids)
}

/// `waitpid(pid, WNOHANG)` for a zombie we adopted; whether it was reaped.
fn reap(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid on one specific pid that is our child and not one Tokio owns.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    rc == pid
}

/// Kills and reaps adopted processes until `stop` is cancelled: on every `SIGCHLD` (a child,
/// ours or adopted, changed state) and every second while this process has children. Returns
/// at once if this process is not a subreaper.
pub async fn run(stop: CancellationToken) {
    if !is_subreaper() {
        return;
    }
    let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGCHLD; looking for adopted processes every second only");
            None
        }
    };
    let mut tick = tokio::time::interval(PASS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut busy = false;
    loop {
        let signalled = async {
            match sigchld.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = signalled => {}
            _ = tick.tick() => {
                // Idle with no child: nothing can be adopted but by a child's descendants.
                let has_children = !OWN.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_empty();
                if !busy && !has_children {
                    continue;
                }
            }
        }
        let pass = reap_adopted();
        busy = pass.left > 0;
        if pass != Pass::default() {
            tracing::debug!(?pass, "reaper pass");
        }
    }
}

/// At exit: kills every adopted process and reaps it, for at most `deadline`. Returns how
/// many were still there when it gave up (0 = none left).
pub async fn kill_all_adopted(deadline: Duration) -> usize {
    if !is_subreaper() {
        return 0;
    }
    let until = Instant::now() + deadline;
    loop {
        let pass = reap_adopted();
        if pass.left == 0 || Instant::now() >= until {
            if pass.left > 0 {
                tracing::warn!(
                    left = pass.left,
                    "adopted processes still there as the coordinator exits"
                );
            }
            return pass.left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_process_is_named_by_pid_and_start_time() {
        let me = Proc::of(std::process::id()).unwrap();
        assert!(me.alive());
        let other = Proc {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(!other.alive(), "same pid, another start time: not us");
        assert!(!other.signal(0), "never signalled");
        assert!(me.signal(0));
        assert!(Proc::of(u32::MAX - 1).is_none());
    }

    #[test]
    fn descendants_follow_ppid_links_across_sessions() {
        // sh -> setsid'd sh -> sleep: a grandchild in another session is still found.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "setsid sh -c 'sleep 30 & wait' & wait"])
            .spawn()
            .unwrap();
        let root = child.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while descendants(root).len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        let found = descendants(root);
        assert_eq!(found.len(), 2, "{found:?}");
        for p in &found {
            assert!(p.signal(libc::SIGKILL));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        for p in &found {
            let deadline = Instant::now() + Duration::from_secs(5);
            while p.alive() {
                assert!(Instant::now() < deadline, "{p:?} still alive");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
