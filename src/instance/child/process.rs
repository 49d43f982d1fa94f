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

use super::limits::LimitPlan;
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

#[cfg(test)]
#[path = "process_tests.rs"]
mod tests;
