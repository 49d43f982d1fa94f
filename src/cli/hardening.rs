//! What every command does to its own process before anything else: make it non-dumpable.
//!
//! A process that is not dumpable (`PR_SET_DUMPABLE` 0) cannot be read through `/proc` by
//! another process of the same OS user: its `environ`, `mem`, `maps` and the targets of its
//! `fd/` links need ptrace access, which the kernel then grants only to a process holding
//! `CAP_SYS_PTRACE` (root, in practice). Nor can it be attached with a debugger, and it leaves
//! no core dump. A child server, or an assistant's shell running as the same user, thus cannot
//! take the master key, a passphrase being typed, or decrypted secrets out of the coordinator.
//! `/proc/<pid>/cmdline` and `stat` stay world-readable (the kernel does not guard them).
//!
//! The flag is reset by `execve`, so `exec` hands a normal, dumpable process to the server it
//! runs, and every child server started by `serve` is dumpable again once it runs.
//!
//! Elsewhere (macOS, the BSDs) there is no such flag. The nearest equivalent is a core-file
//! limit of 0 (`RLIMIT_CORE`), so a crash leaves no core dump holding the master key or a
//! passphrase; reading the live process's memory is then left to the system's own rules (on
//! macOS, `task_for_pid` of another process needs root or a debugger's entitlement). The
//! README lists this gap.

/// Marks this process non-dumpable; says so on stderr if the kernel refuses (it does not on
/// Linux, where this always succeeds).
#[cfg(target_os = "linux")]
pub fn not_dumpable() {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) only clears a flag of this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        eprintln!(
            "mcp-coordinator: warning: cannot mark the process non-dumpable: {}; processes of the same user may read its memory",
            std::io::Error::last_os_error()
        );
    }
}

/// Forbids core dumps of this process (soft and hard core-file limit 0); says so on stderr if
/// the system refuses. Lowering a limit is always allowed.
#[cfg(not(target_os = "linux"))]
pub fn not_dumpable() {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct it is given, which lives across the call.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) };
    if rc != 0 {
        eprintln!(
            "mcp-coordinator: warning: cannot turn off core dumps: {}; a crash may leave secrets in a core file",
            std::io::Error::last_os_error()
        );
    }
}
