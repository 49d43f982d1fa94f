//! The rlimits a child process gets (address space, CPU time, open files), planned before
//! fork so that applying them in the child allocates nothing.

use std::io;

use super::process::Limits;

/// Bytes in a mebibyte, for [`Limits::address_space_mb`].
pub(super) const BYTES_PER_MB: u64 = 1024 * 1024;

/// Which rlimit one entry of a [`LimitPlan`] sets.
#[derive(Clone, Copy, Debug)]
pub(super) enum Resource {
    AddressSpace,
    Cpu,
    OpenFiles,
}

impl Resource {
    // libc's type for the resource argument differs between glibc and musl, so
    // the constants are only ever used inline and their type inferred.
    pub(super) fn getrlimit(self, lim: &mut libc::rlimit) -> libc::c_int {
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
    pub(super) fn setrlimit(self, lim: &libc::rlimit) -> libc::c_int {
        // SAFETY: `lim` is a valid pointer to an initialised rlimit.
        unsafe {
            match self {
                Self::AddressSpace => libc::setrlimit(libc::RLIMIT_AS, lim),
                Self::Cpu => libc::setrlimit(libc::RLIMIT_CPU, lim),
                Self::OpenFiles => libc::setrlimit(libc::RLIMIT_NOFILE, lim),
            }
        }
    }

    pub(super) fn name(self) -> &'static str {
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
pub(super) fn rlim(v: u64) -> libc::rlim_t {
    libc::rlim_t::try_from(v).unwrap_or(libc::RLIM_INFINITY)
}

/// The rlimits to set in the child, computed before fork so that applying
/// them allocates nothing.
#[derive(Clone, Copy, Debug)]
pub(super) struct LimitPlan(pub(super) [Option<(Resource, libc::rlim_t)>; 3]);

impl LimitPlan {
    pub(super) fn new(limits: &Limits) -> io::Result<Self> {
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
    pub(super) fn apply(&self) -> io::Result<()> {
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
