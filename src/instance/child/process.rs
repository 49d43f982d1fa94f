//! Child processes for stdio MCP servers: spawning with a cleared environment, resource limits and a private process group, stderr capture, group-wide termination, and `/proc` statistics.
//!
//! # Guarantees and their limits
//!
//! * Every child is the leader of a new process group (pgid == pid), and signals
//!   sent with [`ChildProcess::terminate`], [`ChildProcess::kill_group_now`] and
//!   `Drop` go to that group *and* to every descendant of the child found by
//!   walking `/proc` ppid links, so a descendant that moved itself to another group
//!   or session (`setsid`, `setpgid`) is signalled too. Descendants are remembered
//!   (pid and start time) at each [`ChildProcess::scan_tree`], so those orphaned by
//!   the child's death are still killed with it. The child is made a child
//!   subreaper before exec, so an orphan of a double fork is re-parented to it and
//!   stays in its tree (see `reaper.rs`, which also kills what reaches the
//!   coordinator).
//! * As soon as the leader is reaped (by [`ChildProcess::try_exit`],
//!   [`ChildProcess::wait`] or [`ChildProcess::terminate`]) the rest of its group
//!   is SIGKILLed at that very moment. The group is never signalled again after
//!   that: once the group is empty its id is free, and with a small `pid_max`
//!   (32768 is common) a later `killpg` could hit an unrelated process that
//!   happened to get the same number.
//! * The direct child gets `PR_SET_PDEATHSIG = SIGKILL`, so it dies if the
//!   coordinator dies abruptly. The kernel ties that signal to the *thread*
//!   that forked, not to the process, so every fork happens on one dedicated,
//!   never-ending spawner thread (see [`spawn`]). Grandchildren are not covered
//!   by this: if the coordinator is SIGKILLed they survive the direct child.
//! * All of the above that names `/proc`, subreapers or `PR_SET_PDEATHSIG` is Linux's.
//!   Elsewhere (macOS, the BSDs) the child still leads its own group and the group is what
//!   is signalled; descendants that leave it, group statistics and the death signal are
//!   gaps the README lists (Platforms).
//! * Every child is registered with `reaper.rs` while the spawn holds its lock, so
//!   the coordinator's reaper never kills or `waitpid`s a child spawned here (Tokio
//!   reaps those). Spawning from the coordinator by any other means would be taken
//!   for an adopted orphan and killed.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use super::reaper::{self, Proc};

/// How many stderr lines a [`StderrTail`] keeps.
const TAIL_LINES: usize = 100;
/// Longest stderr line kept, in characters; longer lines are cut.
const MAX_LINE_CHARS: usize = 1000;
/// Bytes buffered for one stderr line: enough for [`MAX_LINE_CHARS`] characters
/// of up to four UTF-8 bytes each. Bytes past this are dropped until the next
/// newline, so a child that never writes `'\n'` cannot grow our memory.
const MAX_LINE_BYTES: usize = MAX_LINE_CHARS * 4;
/// How long `wait`/`terminate` wait for the stderr reader to reach EOF after the
/// leader is gone, so the tail holds the last words of a crashing child. It only
/// takes this long if a process outside the group still holds the pipe open.
const STDERR_FLUSH_TIMEOUT: Duration = Duration::from_millis(250);
/// How long `terminate` waits to reap the leader after SIGKILL. SIGKILL cannot be
/// ignored, but a process stuck in uninterruptible I/O dies only when that I/O
/// ends, and `terminate` must not hang forever on it.
const KILL_REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes in a mebibyte, for [`Limits::address_space_mb`].
const BYTES_PER_MB: u64 = 1024 * 1024;

/// Resource limits applied to the child with setrlimit before exec. None = inherit.
///
/// Each limit is set as both the soft and the hard limit, so the child cannot
/// raise it again. A value above the coordinator's own hard limit is refused by
/// [`spawn`] (an unprivileged child could not take it, and the failure would
/// otherwise come back from the child as a bare `EPERM`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// `RLIMIT_AS`: maximum virtual address space, in MiB.
    pub address_space_mb: Option<u64>,
    /// `RLIMIT_CPU`: maximum CPU time, in seconds, per process (the kernel
    /// sends SIGXCPU, then SIGKILL).
    pub cpu_seconds: Option<u64>,
    /// `RLIMIT_NOFILE`: maximum number of open file descriptors.
    pub open_files: Option<u64>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// The program: a path (anything containing `'/'`) or a bare name looked up
    /// in `PATH` as described on [`spawn`].
    pub program: String,
    /// Arguments, without the program name.
    pub args: Vec<String>,
    /// The child's WHOLE environment: the environment is cleared first, then exactly these are set.
    pub env: BTreeMap<String, String>,
    /// Working directory of the child; `None` = the coordinator's.
    pub cwd: Option<PathBuf>,
    /// Resource limits applied before exec.
    pub limits: Limits,
    /// Label for log lines (the instance name).
    pub label: String,
    /// Secret values masked in the child's stderr before it is kept or logged.
    pub redact: crate::instance::redact::Redactor,
}

/// Why [`spawn`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The program does not exist: no executable of that name in the searched
    /// `PATH`, or the given path does not exist.
    #[error("program `{program}` not found (searched: {searched})")]
    NotFound {
        /// The program as given in [`SpawnSpec::program`].
        program: String,
        /// The `PATH` value that was searched, or the path that was checked.
        searched: String,
    },
    /// Any other failure: exec failed, limits could not be applied, no Tokio
    /// runtime, ...
    #[error("cannot start `{program}`: {source}")]
    Io {
        /// The program as given in [`SpawnSpec::program`].
        program: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// Last lines of a child's stderr (bounded ring: 100 lines, each cut to 1000 chars), shared.
///
/// Cloning is cheap and every clone sees the same lines.
#[derive(Clone, Default, Debug)]
pub struct StderrTail {
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl StderrTail {
    /// All kept lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    /// The last `n` lines (fewer if fewer are kept), oldest first, joined with `'\n'`.
    pub fn last(&self, n: usize) -> String {
        let lines = self.lock();
        let skip = lines.len().saturating_sub(n);
        lines
            .iter()
            .skip(skip)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn push(&self, line: String) {
        let mut lines = self.lock();
        while lines.len() >= TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<String>> {
        // A panic while holding this lock cannot leave the deque inconsistent
        // (every operation on it is a single push/pop), so poisoning is ignored.
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How [`ChildProcess::terminate`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminateOutcome {
    /// The leader had already exited before `terminate` was called.
    AlreadyExited(ExitStatus),
    /// The leader exited within the grace period after SIGTERM to the group.
    Exited(ExitStatus),
    /// The grace period ran out (or waiting failed), the group was SIGKILLed
    /// and the leader reaped. The status is what the leader died of: usually
    /// SIGKILL, but it may be SIGTERM if it exited just as the grace ran out.
    Killed(ExitStatus),
    /// SIGKILL was sent to the group but the leader could not be reaped: waiting
    /// failed or it did not die within a few seconds (e.g. stuck in
    /// uninterruptible I/O). The error is logged. The [`ChildProcess`] still
    /// owns it; dropping it leaves the reaping to Tokio.
    Unreaped,
}

impl TerminateOutcome {
    /// The leader's exit status, if it was reaped.
    pub fn status(&self) -> Option<ExitStatus> {
        match *self {
            Self::AlreadyExited(s) | Self::Exited(s) | Self::Killed(s) => Some(s),
            Self::Unreaped => None,
        }
    }
}

/// A running child in its own process group.
///
/// Dropping it SIGKILLs the whole group if the leader was not reaped yet
/// (without waiting; Tokio reaps the leader in the background).
pub struct ChildProcess {
    /// The child's pid, which is also its process-group id.
    pub pid: u32,
    /// The child's captured stderr.
    pub stderr: StderrTail,
    child: Child,
    label: String,
    /// Set once the leader has been reaped; from then on the group is never
    /// signalled again (see the module docs).
    status: Option<ExitStatus>,
    /// The stderr reader task, until it has been seen to finish.
    drain: Option<JoinHandle<()>>,
    /// Descendants seen by [`ChildProcess::scan_tree`] (and still alive when last looked at).
    tree: Vec<Proc>,
}

impl fmt::Debug for ChildProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildProcess")
            .field("pid", &self.pid)
            .field("label", &self.label)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl ChildProcess {
    /// The child's pid, which is also its process-group id.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Looks up the child's descendants in `/proc` and remembers them, so that they are
    /// killed with it even if they leave its process group or are orphaned when it exits.
    /// Forgets those that have ended. Cheap enough for every health check (one pass over
    /// `/proc`); a no-op walk once the leader has been reaped.
    pub fn scan_tree(&mut self) {
        self.tree.retain(Proc::alive);
        if self.status.is_some() {
            return;
        }
        for p in reaper::descendants(self.pid) {
            if !self.tree.contains(&p) {
                self.tree.push(p);
            }
        }
    }

    /// The descendants remembered by the last [`ChildProcess::scan_tree`].
    pub fn tree(&self) -> &[Proc] {
        &self.tree
    }

    /// Sends `sig` to the group (while the leader is unreaped) and to every remembered
    /// descendant, after looking for new ones.
    fn signal_all(&mut self, sig: libc::c_int) {
        self.scan_tree();
        if self.status.is_none() {
            self.signal_group(sig);
        }
        self.signal_tree(sig);
    }

    /// Sends `sig` to every remembered descendant that is still the same process.
    fn signal_tree(&self, sig: libc::c_int) {
        for p in &self.tree {
            p.signal(sig);
        }
    }

    /// The leader's exit status if it has exited, without blocking.
    ///
    /// When this first sees the leader gone it reaps it and SIGKILLs whatever
    /// is left of its group. Errors are logged and reported as `None`.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.status {
            return Some(status);
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.on_reaped(status);
                Some(status)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(instance = %self.label, pid = self.pid, error = %e, "checking child exit failed");
                None
            }
        }
    }

    /// Waits for the leader to exit and reaps it.
    ///
    /// Then SIGKILLs whatever is left of its group and gives the stderr reader
    /// a moment (at most 250 ms) to reach EOF, so [`ChildProcess::stderr`] holds
    /// the child's last lines. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.child.wait().await?;
        // No await between the reap above and this call, so cancellation
        // cannot separate them.
        self.on_reaped(status);
        self.flush_stderr().await;
        Ok(status)
    }

    /// Stops the child and its whole process group.
    ///
    /// If the leader is still running: SIGTERM to the group, wait up to `grace`
    /// for the leader to exit, else SIGKILL the group and reap the leader. In
    /// every case the group is SIGKILLed once more right after the leader is
    /// reaped, so descendants that outlived it (e.g. ignoring SIGTERM) die too.
    /// Never panics; errors are logged.
    pub async fn terminate(&mut self, grace: Duration) -> TerminateOutcome {
        if let Some(status) = self.try_exit() {
            self.flush_stderr().await;
            return TerminateOutcome::AlreadyExited(status);
        }
        self.signal_all(libc::SIGTERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.on_reaped(status);
                self.flush_stderr().await;
                return TerminateOutcome::Exited(status);
            }
            Ok(Err(e)) => {
                tracing::warn!(instance = %self.label, pid = self.pid, error = %e, "waiting for child after SIGTERM failed; killing it");
            }
            Err(_elapsed) => {
                tracing::debug!(instance = %self.label, pid = self.pid, "child still running after {grace:?} grace; killing its group");
            }
        }
        self.signal_all(libc::SIGKILL);
        match tokio::time::timeout(KILL_REAP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.on_reaped(status);
                self.flush_stderr().await;
                TerminateOutcome::Killed(status)
            }
            Ok(Err(e)) => {
                tracing::error!(instance = %self.label, pid = self.pid, error = %e, "reaping child after SIGKILL failed");
                TerminateOutcome::Unreaped
            }
            Err(_elapsed) => {
                tracing::error!(instance = %self.label, pid = self.pid, "child not reaped {KILL_REAP_TIMEOUT:?} after SIGKILL");
                TerminateOutcome::Unreaped
            }
        }
    }

    /// Sends SIGKILL to the whole group right now, without waiting or reaping
    /// (for `Drop` paths and emergencies; follow with [`ChildProcess::wait`] to
    /// reap). Does nothing once the leader has been reaped, since its group was
    /// killed at that moment.
    pub fn kill_group_now(&mut self) {
        if self.status.is_none() {
            self.signal_all(libc::SIGKILL);
        }
    }

    /// Records the leader's exit and kills what is left of its group.
    ///
    /// This is the last moment at which the group id is known to be ours: the
    /// leader was reaped just now, so either other members still hold the id
    /// or it became free only microseconds ago.
    fn on_reaped(&mut self, status: ExitStatus) {
        self.status = Some(status);
        tracing::debug!(instance = %self.label, pid = self.pid, %status, "child exited");
        self.signal_group(libc::SIGKILL);
        // Its descendants outside the group were orphaned by its exit: the remembered ones
        // die now; any it spawned since the last scan reach the coordinator's reaper.
        self.signal_tree(libc::SIGKILL);
    }

    /// Waits (bounded) for the stderr reader to reach EOF.
    async fn flush_stderr(&mut self) {
        if let Some(handle) = self.drain.as_mut() {
            match tokio::time::timeout(STDERR_FLUSH_TIMEOUT, handle).await {
                Ok(_) => self.drain = None,
                Err(_elapsed) => {
                    tracing::debug!(instance = %self.label, pid = self.pid, "stderr still open after the child exited");
                }
            }
        }
    }

    /// `killpg(pid, sig)`, logging failures other than "no such group".
    fn signal_group(&self, sig: libc::c_int) {
        signal_group(self.pid, sig, &self.label);
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            tracing::debug!(instance = %self.label, pid = self.pid, "dropping unreaped child; killing its group");
            self.signal_all(libc::SIGKILL);
        } else {
            self.signal_tree(libc::SIGKILL);
        }
        // `kill_on_drop` then makes Tokio kill the leader too (harmless
        // repetition) and reap it in the background.
    }
}

fn signal_group(pgid: u32, sig: libc::c_int, label: &str) {
    // killpg(0, ..) would signal the coordinator's own group and killpg(1, ..)
    // init's; neither can be a child's group, so refuse rather than risk it.
    let pgid = match libc::pid_t::try_from(pgid) {
        Ok(p) if p > 1 => p,
        _ => {
            tracing::error!(instance = %label, pgid, "refusing to signal process group {pgid}");
            return;
        }
    };
    // SAFETY: killpg only sends a signal; pgid > 1 is a group we created.
    let rc = unsafe { libc::killpg(pgid, sig) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(instance = %label, pgid, sig, error = %err, "killpg failed");
        }
    }
}

/// Starts `spec` as the leader of a new process group.
///
/// Returns the process with the child's stdin and stdout (for the MCP
/// transport); stderr is read by a background task into
/// [`ChildProcess::stderr`] and logged at debug level with target
/// `mcp_coordinator::child`. Must be called within a Tokio runtime (with I/O
/// and time enabled).
///
/// The program is resolved here, before spawning, and exec gets an absolute
/// path (`argv[0]` stays as given):
/// * a bare name (no `'/'`) is searched in the `PATH` of `spec.env` if it has
///   one, else in the coordinator's own `PATH`; empty and relative `PATH`
///   entries are skipped, because they would mean "the current directory";
/// * a relative path containing `'/'` is taken relative to `spec.cwd` if set
///   (where the child runs), else to the coordinator's working directory.
///
/// A program that cannot be found gives [`SpawnError::NotFound`]; every other
/// failure [`SpawnError::Io`].
///
/// The fork happens on a dedicated spawner thread that lives as long as the
/// coordinator, because `PR_SET_PDEATHSIG` fires when the forking *thread*
/// exits: forking from a Tokio blocking-pool thread, which is retired after
/// a few idle seconds, would kill the child with it.
pub fn spawn(spec: &SpawnSpec) -> Result<(ChildProcess, ChildStdin, ChildStdout), SpawnError> {
    let io_err = |source: io::Error| SpawnError::Io {
        program: spec.program.clone(),
        source,
    };
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|e| io_err(io::Error::other(e.to_string())))?;
    let path = resolve_program(
        &spec.program,
        spec.env.get("PATH").map(OsStr::new),
        spec.cwd.as_deref(),
    )?;
    let plan = LimitPlan::new(&spec.limits).map_err(io_err)?;

    let mut cmd = Command::new(&path);
    cmd.arg0(&spec.program)
        .args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    #[cfg(target_os = "linux")]
    let parent_pid =
        libc::pid_t::try_from(std::process::id()).map_err(|e| io_err(io::Error::other(e)))?;
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed. It calls only setrlimit, prctl and
    // getppid (plain syscalls), does not allocate (`plan` is a Copy array
    // computed above, and `io::Error::last_os_error` builds an inline value),
    // and touches no locks.
    unsafe {
        cmd.pre_exec(move || {
            plan.apply()?;
            #[cfg(target_os = "linux")]
            linux_child_ties(parent_pid)?;
            Ok(())
        });
    }

    let mut child = spawn_on_spawner_thread(cmd, handle.clone()).map_err(io_err)?;
    let Some(pid) = child.id() else {
        return Err(io_err(io::Error::other(
            "child has no pid right after spawn",
        )));
    };
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr_pipe = child.stderr.take();
    // From here on `process` owns the child, so any early return kills its group.
    let mut process = ChildProcess {
        pid,
        stderr: StderrTail::default(),
        child,
        label: spec.label.clone(),
        status: None,
        drain: None,
        tree: Vec::new(),
    };
    let (Some(stdin), Some(stdout), Some(stderr_pipe)) = (stdin, stdout, stderr_pipe) else {
        return Err(io_err(io::Error::other("child pipes missing after spawn")));
    };
    process.drain = Some(handle.spawn(drain_stderr(
        stderr_pipe,
        process.stderr.clone(),
        spec.label.clone(),
        spec.redact.clone(),
    )));
    tracing::debug!(instance = %spec.label, pid, program = %path.display(), "child started");
    Ok((process, stdin, stdout))
}

/// In the forked child before exec, Linux only: makes the child a subreaper (orphans below it
/// are re-parented to it rather than to the coordinator or init, so they stay in its tree;
/// kept across exec) and ties its life to the coordinator's (`PR_SET_PDEATHSIG`). Other
/// systems have neither: there the group is what is killed, and a child outlives a
/// coordinator killed with SIGKILL until it notices its closed stdin (README, Platforms).
///
/// # Safety
///
/// Async-signal-safe: plain syscalls only, no allocation, no locks.
#[cfg(target_os = "linux")]
unsafe fn linux_child_ties(parent_pid: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl and getppid are plain syscalls on this process.
    unsafe {
        if libc::prctl(
            libc::PR_SET_CHILD_SUBREAPER,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        // If the coordinator died between fork and prctl, the death signal
        // was missed and we have already been reparented: give up.
        if libc::getppid() != parent_pid {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// Resolves `program` to the path handed to exec (see [`spawn`]).
fn resolve_program(
    program: &str,
    env_path: Option<&OsStr>,
    cwd: Option<&Path>,
) -> Result<PathBuf, SpawnError> {
    let not_found = |searched: String| SpawnError::NotFound {
        program: program.to_owned(),
        searched,
    };
    if program.is_empty() {
        return Err(not_found(String::new()));
    }
    if program.contains('/') {
        let given = Path::new(program);
        let path = if given.is_absolute() {
            given.to_path_buf()
        } else if let Some(cwd) = cwd {
            cwd.join(given)
        } else {
            // If the coordinator's cwd is unreadable, leave the path relative
            // and let exec resolve it the same way.
            std::env::current_dir()
                .map(|d| d.join(given))
                .unwrap_or_else(|_| given.to_path_buf())
        };
        // Only a missing file is "not found"; an existing but unusable one
        // (not executable, a directory) is left to exec, whose error is precise.
        return if path.exists() {
            Ok(path)
        } else {
            Err(not_found(path.display().to_string()))
        };
    }
    let own_path: Option<OsString>;
    let search = match env_path {
        Some(p) => p,
        None => {
            own_path = std::env::var_os("PATH");
            own_path.as_deref().unwrap_or_default()
        }
    };
    std::env::split_paths(search)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable_file(candidate))
        .ok_or_else(|| not_found(search.to_string_lossy().into_owned()))
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A job for the spawner thread.
type SpawnJob = Box<dyn FnOnce() + Send + 'static>;

/// The spawner thread's queue; created on first use, lives until the process exits.
static SPAWNER: Mutex<Option<mpsc::Sender<SpawnJob>>> = Mutex::new(None);

/// Runs `cmd.spawn()` on the spawner thread (see [`spawn`] for why) within
/// `handle`'s runtime, falling back to the calling thread if that thread
/// cannot be had.
fn spawn_on_spawner_thread(mut cmd: Command, handle: tokio::runtime::Handle) -> io::Result<Child> {
    let (result_tx, result_rx) = mpsc::sync_channel::<io::Result<Child>>(1);
    let job: SpawnJob = Box::new(move || {
        let _runtime = handle.enter();
        // Registered before the reaper can look: it waits for this lock.
        let mut registry = reaper::spawning();
        let spawned = cmd.spawn();
        if let Some(pid) = spawned.as_ref().ok().and_then(Child::id) {
            registry.register(pid);
        }
        drop(registry);
        // The receiver only goes away if the caller is gone, and then the
        // child is dropped here, which kills it.
        let _ = result_tx.send(spawned);
    });
    if let Err(job) = submit_to_spawner(job) {
        tracing::warn!(
            "spawner thread unavailable; spawning on the calling thread (PR_SET_PDEATHSIG follows this thread)"
        );
        job();
    }
    result_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread dropped the spawn request"))?
}

/// Hands `job` to the spawner thread, starting it if needed; gives the job
/// back if no spawner thread can be had.
fn submit_to_spawner(job: SpawnJob) -> Result<(), SpawnJob> {
    let mut spawner = SPAWNER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let job = match spawner.as_ref() {
        Some(tx) => match tx.send(job) {
            Ok(()) => return Ok(()),
            // The thread is gone (it never should be); start a new one.
            Err(mpsc::SendError(job)) => job,
        },
        None => job,
    };
    let (tx, rx) = mpsc::channel::<SpawnJob>();
    let started = std::thread::Builder::new()
        .name("mcp-child-spawner".into())
        .spawn(move || {
            for job in rx {
                // A panicking job must not end this thread: its exit would
                // SIGKILL every child forked here (PR_SET_PDEATHSIG).
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    tracing::error!("child spawn job panicked");
                }
            }
        });
    if let Err(e) = started {
        tracing::error!(error = %e, "cannot start the child spawner thread");
        return Err(job);
    }
    match tx.send(job) {
        Ok(()) => {
            *spawner = Some(tx);
            Ok(())
        }
        Err(mpsc::SendError(job)) => Err(job),
    }
}

/// Which rlimit one entry of a [`LimitPlan`] sets.
#[derive(Clone, Copy, Debug)]
enum Resource {
    AddressSpace,
    Cpu,
    OpenFiles,
}

impl Resource {
    // libc's type for the resource argument differs between glibc and musl, so
    // the constants are only ever used inline and their type inferred.
    fn getrlimit(self, lim: &mut libc::rlimit) -> libc::c_int {
        // SAFETY: `lim` is a valid, exclusive pointer to an rlimit.
        unsafe {
            match self {
                Self::AddressSpace => libc::getrlimit(libc::RLIMIT_AS, lim),
                Self::Cpu => libc::getrlimit(libc::RLIMIT_CPU, lim),
                Self::OpenFiles => libc::getrlimit(libc::RLIMIT_NOFILE, lim),
            }
        }
    }

    /// Async-signal-safe: a single syscall.
    fn setrlimit(self, lim: &libc::rlimit) -> libc::c_int {
        // SAFETY: `lim` is a valid pointer to an initialised rlimit.
        unsafe {
            match self {
                Self::AddressSpace => libc::setrlimit(libc::RLIMIT_AS, lim),
                Self::Cpu => libc::setrlimit(libc::RLIMIT_CPU, lim),
                Self::OpenFiles => libc::setrlimit(libc::RLIMIT_NOFILE, lim),
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::AddressSpace => "address_space_mb",
            Self::Cpu => "cpu_seconds",
            Self::OpenFiles => "open_files",
        }
    }
}

/// `v` as an rlimit value: `rlim_t` is u64 on Linux and macOS (a plain copy) but i64 on
/// FreeBSD, where a value past its range can only mean no limit.
#[allow(clippy::useless_conversion, clippy::unnecessary_fallible_conversions)]
fn rlim(v: u64) -> libc::rlim_t {
    libc::rlim_t::try_from(v).unwrap_or(libc::RLIM_INFINITY)
}

/// The rlimits to set in the child, computed before fork so that applying
/// them allocates nothing.
#[derive(Clone, Copy, Debug)]
struct LimitPlan([Option<(Resource, libc::rlim_t)>; 3]);

impl LimitPlan {
    fn new(limits: &Limits) -> io::Result<Self> {
        let address_space = limits.address_space_mb.map(|mb| {
            mb.checked_mul(BYTES_PER_MB)
                .map_or(libc::RLIM_INFINITY, rlim)
        });
        let entries = [
            address_space.map(|v| (Resource::AddressSpace, v)),
            limits.cpu_seconds.map(|v| (Resource::Cpu, rlim(v))),
            limits.open_files.map(|v| (Resource::OpenFiles, rlim(v))),
        ];
        for (resource, value) in entries.iter().flatten().copied() {
            let mut current = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if resource.getrlimit(&mut current) != 0 {
                return Err(io::Error::last_os_error());
            }
            if current.rlim_max != libc::RLIM_INFINITY && value > current.rlim_max {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "limit {} = {} exceeds the coordinator's own hard limit {}",
                        resource.name(),
                        value,
                        current.rlim_max
                    ),
                ));
            }
        }
        Ok(Self(entries))
    }

    /// Sets every planned limit on the calling process. Async-signal-safe.
    fn apply(&self) -> io::Result<()> {
        for (resource, value) in self.0.iter().flatten().copied() {
            let lim = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            if resource.setrlimit(&lim) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Reads `reader` line by line until EOF, into `tail` and the debug log.
async fn drain_stderr<R: AsyncRead + Unpin>(
    reader: R,
    tail: StderrTail,
    label: String,
    redact: crate::instance::redact::Redactor,
) {
    let mut reader = BufReader::new(reader);
    let mut line: Vec<u8> = Vec::new();
    loop {
        let buf = match reader.fill_buf().await {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(instance = %label, error = %e, "reading child stderr failed");
                break;
            }
        };
        if buf.is_empty() {
            if !line.is_empty() {
                emit_line(&line, &tail, &label, &redact);
            }
            break;
        }
        let newline = buf.iter().position(|&b| b == b'\n');
        let chunk = &buf[..newline.unwrap_or(buf.len())];
        let room = MAX_LINE_BYTES.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let consumed = newline.map_or(buf.len(), |i| i + 1);
        reader.consume(consumed);
        if newline.is_some() {
            emit_line(&line, &tail, &label, &redact);
            line.clear();
        }
    }
    tracing::trace!(instance = %label, "child stderr closed");
}

fn emit_line(
    bytes: &[u8],
    tail: &StderrTail,
    label: &str,
    redact: &crate::instance::redact::Redactor,
) {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let text = String::from_utf8_lossy(bytes);
    // Masked before the line is cut to its kept length.
    let text = match redact.text(&text) {
        Cow::Owned(masked) => Cow::Owned(masked),
        Cow::Borrowed(_) => text,
    };
    // MAX_LINE_BYTES holds at least MAX_LINE_CHARS whole characters, so a
    // character split at the byte cut never survives this cut.
    let line = match text.char_indices().nth(MAX_LINE_CHARS) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.into_owned(),
    };
    tracing::debug!(target: "mcp_coordinator::child", instance = %label, "{line}");
    tail.push(line);
}

/// Resource usage of one process group, summed over its live (non-zombie) members.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcStats {
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Number of threads.
    pub threads: u64,
    /// Number of processes.
    pub processes: u64,
}

/// Sums resource usage over all live processes whose process group is `pgid`.
///
/// Returns `None` if the leader (pid `pgid`) does not exist. Reads `/proc`
/// synchronously and scans every process on the host, so call it from a
/// blocking context if the host runs very many processes.
pub fn group_stats(pgid: u32) -> Option<ProcStats> {
    read_stat(pgid)?;
    let page_size = sysconf_or(libc::_SC_PAGESIZE, 4096);
    let clock_ticks = sysconf_or(libc::_SC_CLK_TCK, 100);
    let mut stats = ProcStats::default();
    let mut ticks: u64 = 0;
    for_each_group_member(pgid, |pid, stat| {
        let resident_pages = std::fs::read_to_string(format!("/proc/{pid}/statm"))
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
        stats.rss_bytes = stats
            .rss_bytes
            .saturating_add(resident_pages.saturating_mul(page_size));
        ticks = ticks.saturating_add(stat.utime).saturating_add(stat.stime);
        stats.threads = stats.threads.saturating_add(stat.threads);
        stats.processes += 1;
    });
    stats.cpu_seconds = ticks as f64 / clock_ticks as f64;
    Some(stats)
}

/// Pids of the live (not zombie) processes whose process group is `pgid`, ascending.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for_each_group_member(pgid, |pid, _| pids.push(pid));
    pids.sort_unstable();
    pids
}

/// Sends SIGKILL to process group `pgid` now; a group that is already gone is
/// not an error.
///
/// For cleanup by pid alone (e.g. at shutdown, from a recorded pid). Only call
/// it for a group whose leader has not been reaped yet, or was reaped moments
/// ago: once a group is empty its id can be reused by an unrelated process.
/// Groups 0 and 1 (our own, init's) are refused.
pub fn kill_group(pgid: u32) {
    signal_group(pgid, libc::SIGKILL, "-");
}

/// Whether a process with this pid exists (zombies included, and processes of
/// other users, which we may not signal).
pub fn pid_alive(pid: u32) -> bool {
    // kill(0, ..) and negative pids address groups, not one process.
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; the kernel only checks that the
    // process exists and that we may signal it.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn sysconf_or(name: libc::c_int, fallback: u64) -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value)
        .ok()
        .filter(|&v| v > 0)
        .unwrap_or(fallback)
}

/// Calls `f` for every live process in group `pgid`. Processes that vanish
/// during the scan are skipped.
fn for_each_group_member(pgid: u32, mut f: impl FnMut(u32, &ProcStat)) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(stat) = read_stat(pid)
            && stat.pgrp == i64::from(pgid)
            && stat.is_alive()
        {
            f(pid, &stat);
        }
    }
}

/// The fields of `/proc/<pid>/stat` used here and in `reaper.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProcStat {
    /// Field 3.
    pub(super) state: char,
    /// Field 4: the parent's pid.
    pub(super) ppid: i64,
    /// Field 5.
    pub(super) pgrp: i64,
    /// Field 14, in clock ticks.
    pub(super) utime: u64,
    /// Field 15, in clock ticks.
    pub(super) stime: u64,
    /// Field 20.
    pub(super) threads: u64,
    /// Field 22: when the process started, in clock ticks after boot.
    pub(super) start: u64,
}

impl ProcStat {
    /// Not a zombie (`Z`) and not dead (`X`/`x`).
    pub(super) fn is_alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

pub(super) fn read_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `/proc/<pid>/stat`. Field numbers are those of proc(5). The comm
/// field (2) may itself contain spaces and parentheses, so fields are counted
/// from its closing `)`, the LAST one on the line, which is field 3's start.
fn parse_stat(content: &str) -> Option<ProcStat> {
    let after_comm = &content[content.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // fields[0] is field 3, so field n is fields[n - 3].
    let field = |n: usize| fields.get(n - 3).copied();
    Some(ProcStat {
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        pgrp: field(5)?.parse().ok()?,
        utime: field(14)?.parse().ok()?,
        stime: field(15)?.parse().ok()?,
        threads: field(20)?.parse().ok()?,
        start: field(22)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::time::Instant;
    use tokio::io::AsyncReadExt;

    fn spec(program: &str, args: &[&str]) -> SpawnSpec {
        SpawnSpec {
            program: program.to_owned(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            env: BTreeMap::from([("PATH".to_owned(), "/usr/bin:/bin".to_owned())]),
            cwd: None,
            limits: Limits::default(),
            label: "test".to_owned(),
            redact: crate::instance::redact::Redactor::default(),
        }
    }

    fn sh(script: &str) -> SpawnSpec {
        spec("sh", &["-c", script])
    }

    async fn read_line(stdout: &mut BufReader<ChildStdout>) -> String {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), stdout.read_line(&mut line))
            .await
            .expect("child wrote no line within 5 s")
            .unwrap();
        line.trim_end().to_owned()
    }

    async fn read_all(stdout: ChildStdout) -> String {
        let mut out = String::new();
        let mut stdout = stdout;
        tokio::time::timeout(Duration::from_secs(5), stdout.read_to_string(&mut out))
            .await
            .expect("child stdout not closed within 5 s")
            .unwrap();
        out
    }

    fn is_running(pid: u32) -> bool {
        read_stat(pid).is_some_and(|s| s.is_alive())
    }

    /// Polls for up to 2 s until `pid` is gone or a zombie.
    async fn stopped_within_2s(pid: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        while is_running(pid) {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    async fn group_empty_within_2s(pgid: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !group_members(pgid).is_empty() {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    #[tokio::test]
    async fn child_sees_exactly_the_given_env() {
        let mut s = spec("env", &[]);
        s.env.insert("FOO".into(), "bar baz".into());
        s.env.insert("EMPTY".into(), String::new());
        let (mut child, _stdin, stdout) = spawn(&s).unwrap();
        let out = read_all(stdout).await;
        let mut got: Vec<&str> = out.lines().collect();
        got.sort_unstable();
        assert_eq!(got, ["EMPTY=", "FOO=bar baz", "PATH=/usr/bin:/bin"]);
        assert!(child.wait().await.unwrap().success());
    }

    #[tokio::test]
    async fn child_leads_its_own_group_and_keeps_argv0() {
        // Without extra arguments, `sh -c` sets $0 to the shell's own argv[0],
        // which must be the name as given, not the resolved /usr/bin/sh.
        let (mut child, _stdin, stdout) = spawn(&sh("echo \"$0\"; exec sleep 30")).unwrap();
        let mut stdout = BufReader::new(stdout);
        assert_eq!(read_line(&mut stdout).await, "sh");
        let stat = read_stat(child.id()).unwrap();
        assert_eq!(stat.pgrp, i64::from(child.id()));
        child.kill_group_now();
        assert_eq!(child.wait().await.unwrap().signal(), Some(libc::SIGKILL));
    }

    #[tokio::test]
    async fn missing_program_is_not_found_and_named() {
        let err = spawn(&spec("no-such-program-8c1f", &[])).unwrap_err();
        match &err {
            SpawnError::NotFound { program, searched } => {
                assert_eq!(program, "no-such-program-8c1f");
                assert_eq!(searched, "/usr/bin:/bin");
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert!(err.to_string().contains("no-such-program-8c1f"), "{err}");

        let err = spawn(&spec("/nonexistent/dir/prog", &[])).unwrap_err();
        assert!(
            matches!(&err, SpawnError::NotFound { program, .. } if program == "/nonexistent/dir/prog"),
            "{err:?}"
        );

        // An empty PATH in the spec is searched as given: nothing is found.
        let mut s = spec("sh", &[]);
        s.env.insert("PATH".into(), String::new());
        assert!(matches!(spawn(&s), Err(SpawnError::NotFound { .. })));
    }

    #[tokio::test]
    async fn program_is_resolved_with_the_spec_path_and_cwd() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hello-mcp-test");
        std::fs::write(&script, "#!/bin/sh\necho hello from \"$(pwd)\"\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

        let mut s = spec("hello-mcp-test", &[]);
        s.env.insert(
            "PATH".into(),
            format!("relative/dir::{}:/usr/bin:/bin", dir.path().display()),
        );
        let (mut child, _stdin, stdout) = spawn(&s).unwrap();
        assert!(read_all(stdout).await.starts_with("hello from"));
        assert!(child.wait().await.unwrap().success());

        // A relative path with '/' is taken relative to the child's cwd.
        let mut s = spec("./hello-mcp-test", &[]);
        s.cwd = Some(dir.path().to_path_buf());
        let (mut child, _stdin, stdout) = spawn(&s).unwrap();
        let canonical = dir.path().canonicalize().unwrap();
        assert_eq!(
            read_all(stdout).await.trim(),
            format!("hello from {}", canonical.display())
        );
        assert!(child.wait().await.unwrap().success());

        // A file that exists but is not executable is an Io error, not NotFound.
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "x").unwrap();
        let s = spec(plain.to_str().unwrap(), &[]);
        assert!(matches!(spawn(&s), Err(SpawnError::Io { .. })));
    }

    #[tokio::test]
    async fn stderr_tail_keeps_the_last_100_lines() {
        let (mut child, _stdin, _stdout) = spawn(&sh(
            "i=0; while [ $i -lt 500 ]; do echo \"line $i\" >&2; i=$((i+1)); done",
        ))
        .unwrap();
        assert!(child.wait().await.unwrap().success());
        let lines = child.stderr.lines();
        assert_eq!(lines.len(), 100);
        assert_eq!(lines[0], "line 400");
        assert_eq!(lines[99], "line 499");
        assert_eq!(child.stderr.last(2), "line 498\nline 499");
    }

    #[tokio::test]
    async fn endless_stderr_line_is_cut() {
        let (mut child, _stdin, _stdout) = spawn(&sh(
            "head -c 1048576 /dev/zero | tr '\\0' a >&2; printf '\\nafter\\nno newline' >&2",
        ))
        .unwrap();
        assert!(child.wait().await.unwrap().success());
        let lines = child.stderr.lines();
        assert_eq!(
            lines.len(),
            3,
            "{:?}",
            lines.iter().map(String::len).collect::<Vec<_>>()
        );
        assert_eq!(lines[0], "a".repeat(MAX_LINE_CHARS));
        assert_eq!(lines[1], "after");
        assert_eq!(lines[2], "no newline");
    }

    #[tokio::test]
    async fn drain_handles_crlf_invalid_utf8_wide_chars_and_masks_secrets() {
        let mut input: Vec<u8> = b"one hunter2-secret\r\ntwo\xff\n\n".to_vec();
        input.extend("é".repeat(3000).as_bytes());
        input.extend(b"\nlast");
        let tail = StderrTail::default();
        drain_stderr(
            &input[..],
            tail.clone(),
            "t".into(),
            crate::instance::redact::Redactor::new(["hunter2-secret"]),
        )
        .await;
        let lines = tail.lines();
        assert_eq!(lines[0], "one [REDACTED]");
        assert_eq!(lines[1], "two\u{fffd}");
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], "é".repeat(MAX_LINE_CHARS));
        assert_eq!(lines[4], "last");
        assert_eq!(lines.len(), 5);
        assert_eq!(tail.last(10), lines.join("\n"));
        assert_eq!(tail.last(0), "");
    }

    #[tokio::test]
    async fn rlimits_apply_to_the_child() {
        let mut s = sh("ulimit -n; ulimit -t; grep 'Max address space' /proc/self/limits");
        s.limits = Limits {
            address_space_mb: Some(512),
            cpu_seconds: Some(7),
            open_files: Some(64),
        };
        let (mut child, _stdin, stdout) = spawn(&s).unwrap();
        let out = read_all(stdout).await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "64");
        assert_eq!(lines[1], "7");
        let bytes = (512 * BYTES_PER_MB).to_string();
        assert_eq!(
            lines[2].split_whitespace().filter(|w| *w == bytes).count(),
            2,
            "{}",
            lines[2]
        );
        assert!(child.wait().await.unwrap().success());
    }

    #[tokio::test]
    async fn limit_above_own_hard_limit_is_refused() {
        let mut s = spec("true", &[]);
        s.limits.open_files = Some(u64::MAX - 1);
        let err = spawn(&s).unwrap_err();
        assert!(err.to_string().contains("open_files"), "{err}");
    }

    #[tokio::test]
    async fn terminate_kills_a_child_ignoring_sigterm_after_the_grace() {
        let (mut child, _stdin, stdout) = spawn(&sh("trap '' TERM; echo ready; sleep 30")).unwrap();
        let mut stdout = BufReader::new(stdout);
        assert_eq!(read_line(&mut stdout).await, "ready");
        let grace = Duration::from_millis(300);
        let start = Instant::now();
        let outcome = child.terminate(grace).await;
        assert!(start.elapsed() >= grace);
        let TerminateOutcome::Killed(status) = outcome else {
            panic!("expected Killed, got {outcome:?}");
        };
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(group_empty_within_2s(child.id()).await);
        assert!(group_stats(child.id()).is_none());
        // Further calls are harmless and report the recorded status.
        assert_eq!(
            child.terminate(grace).await,
            TerminateOutcome::AlreadyExited(status)
        );
        child.kill_group_now();
        assert_eq!(child.wait().await.unwrap(), status);
    }

    #[tokio::test]
    async fn terminate_kills_a_grandchild_that_outlives_the_leader() {
        // The background sleep inherits the ignored SIGTERM; the shell then
        // restores the default so that it dies on SIGTERM itself.
        let (mut child, _stdin, stdout) =
            spawn(&sh("trap '' TERM; sleep 30 & trap - TERM; echo $!; wait")).unwrap();
        let mut stdout = BufReader::new(stdout);
        let grandchild: u32 = read_line(&mut stdout).await.parse().unwrap();
        let pgid = child.id();
        assert!(group_members(pgid).contains(&grandchild));

        let outcome = child.terminate(Duration::from_secs(5)).await;
        let TerminateOutcome::Exited(status) = outcome else {
            panic!("expected Exited, got {outcome:?}");
        };
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert!(
            stopped_within_2s(grandchild).await,
            "grandchild {grandchild} still running"
        );
        assert!(
            group_empty_within_2s(pgid).await,
            "{:?}",
            group_members(pgid)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn terminate_lets_a_cooperative_child_exit_within_the_grace() {
        let (mut child, _stdin, stdout) = spawn(&sh(
            "trap 'echo bye >&2; exit 3' TERM; echo ready; sleep 30 & wait",
        ))
        .unwrap();
        let mut stdout = BufReader::new(stdout);
        assert_eq!(read_line(&mut stdout).await, "ready");
        let start = Instant::now();
        let outcome = child.terminate(Duration::from_secs(10)).await;
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(
            outcome.status().and_then(|s| s.code()),
            Some(3),
            "{outcome:?}"
        );
        assert!(matches!(outcome, TerminateOutcome::Exited(_)));
        assert_eq!(child.stderr.last(1), "bye");
        assert!(group_empty_within_2s(child.id()).await);
    }

    #[tokio::test]
    async fn terminate_after_exit_reports_already_exited() {
        let (mut child, _stdin, _stdout) = spawn(&sh("exit 4")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_exit().is_none() {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let outcome = child.terminate(Duration::from_secs(1)).await;
        assert!(matches!(outcome, TerminateOutcome::AlreadyExited(s) if s.code() == Some(4)));
    }

    #[tokio::test]
    async fn group_stats_of_a_running_sleep() {
        let (mut child, _stdin, _stdout) = spawn(&spec("sleep", &["30"])).unwrap();
        let stats = group_stats(child.id()).unwrap();
        assert!(stats.rss_bytes > 0, "{stats:?}");
        assert!(stats.processes >= 1, "{stats:?}");
        assert!(stats.threads >= 1, "{stats:?}");
        assert!(stats.cpu_seconds >= 0.0);
        assert_eq!(group_members(child.id()), [child.id()]);
        assert!(child.try_exit().is_none());
        child.kill_group_now();
        assert_eq!(child.wait().await.unwrap().signal(), Some(libc::SIGKILL));
    }

    #[tokio::test]
    async fn dropping_the_child_kills_its_group() {
        let (child, _stdin, stdout) = spawn(&sh("sleep 30 & echo $!; wait")).unwrap();
        let mut stdout = BufReader::new(stdout);
        let grandchild: u32 = read_line(&mut stdout).await.parse().unwrap();
        let leader = child.id();
        drop(child);
        assert!(stopped_within_2s(grandchild).await);
        assert!(stopped_within_2s(leader).await);
        assert!(group_empty_within_2s(leader).await);
    }

    #[tokio::test]
    async fn spawn_from_a_short_lived_thread_survives_its_exit() {
        // Spawned from a thread that then ends: the child must
        // not receive the parent-death signal meant for the coordinator.
        let handle = tokio::runtime::Handle::current();
        let (mut child, _stdin, stdout) = std::thread::spawn(move || {
            let _guard = handle.enter();
            spawn(&sh("sleep 0.3; echo alive")).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(read_all(stdout).await.trim(), "alive");
        assert!(child.wait().await.unwrap().success());
    }

    #[tokio::test]
    async fn kill_group_and_pid_alive() {
        assert!(pid_alive(std::process::id()));
        assert!(pid_alive(1));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
        assert!(!pid_alive(u32::MAX >> 2));
        let (mut child, _stdin, _stdout) = spawn(&spec("sleep", &["30"])).unwrap();
        assert!(pid_alive(child.id()));
        kill_group(child.id());
        assert_eq!(child.wait().await.unwrap().signal(), Some(libc::SIGKILL));
        assert!(!pid_alive(child.id()));
        // Refused or harmless: must not signal our own group or init's.
        kill_group(0);
        kill_group(1);
        kill_group(u32::MAX);
    }

    #[test]
    fn spawn_without_a_runtime_is_an_error() {
        assert!(matches!(
            spawn(&spec("true", &[])),
            Err(SpawnError::Io { .. })
        ));
    }

    #[test]
    fn parse_stat_counts_fields_after_the_last_paren() {
        let line =
            "1234 (we ird) (x) 7) S 1 999 999 0 -1 4194304 10 0 0 0 25 17 0 0 20 0 3 0 100 1000 50";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                ppid: 1,
                pgrp: 999,
                utime: 25,
                stime: 17,
                threads: 3,
                start: 100,
            })
        );
        assert_eq!(parse_stat("1 (x) S 0"), None);
        assert_eq!(parse_stat("garbage"), None);
        let own = read_stat(std::process::id()).unwrap();
        assert!(own.threads >= 1 && own.is_alive());
    }

    #[test]
    fn group_stats_of_a_missing_leader_is_none() {
        // pid_max is at most 2^22, so this pid cannot exist.
        assert!(group_stats(u32::MAX - 1).is_none());
        assert!(group_members(u32::MAX - 1).is_empty());
    }

    #[test]
    fn address_space_in_mb_becomes_bytes_and_saturates() {
        let plan = LimitPlan::new(&Limits {
            address_space_mb: Some(3),
            ..Limits::default()
        })
        .unwrap();
        assert!(
            matches!(plan.0[0], Some((Resource::AddressSpace, v)) if v == rlim(3 * BYTES_PER_MB))
        );
        assert!(plan.0[1].is_none() && plan.0[2].is_none());
        let huge = LimitPlan::new(&Limits {
            address_space_mb: Some(u64::MAX),
            ..Limits::default()
        });
        // Saturates to "unlimited", which only passes if our own hard limit is.
        let mut own = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        Resource::AddressSpace.getrlimit(&mut own);
        assert_eq!(huge.is_ok(), own.rlim_max == libc::RLIM_INFINITY);
    }
}
