//! What `/proc` tells about processes: a process group's members and resource usage, whether a
//! pid is alive, and the fields of `/proc/<pid>/stat` that `process.rs` and `reaper.rs` use.

use std::io;

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
pub(super) fn parse_stat(content: &str) -> Option<ProcStat> {
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
