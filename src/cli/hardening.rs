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

/// Marks this process non-dumpable; says so on stderr if the kernel refuses (it does not on
/// Linux, where this always succeeds).
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
