//! The process's two allocators: mimalloc for the binary's Rust code (`src/main.rs`), glibc's
//! for SQLite's C code. How a server sets them at start, and how memory freed after a large
//! payload goes back to the system.

/// Gives memory freed after a large request or result back to the system. The binary's
/// allocator (mimalloc) purges free memory only when asked or when it next allocates, and an
/// idle server does not; glibc, which SQLite's C code still allocates from, keeps freed heap
/// and arena memory for reuse, and `malloc_trim` returns what is free.
pub fn release_memory() {
    // SAFETY: mi_collect only walks mimalloc's own structures; it takes no pointers of ours.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; it takes no pointers of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sets both allocators for a server. mimalloc (the binary's Rust code) gives the memory it
/// frees back at once, not at its first allocation a second later (its default), which an idle
/// server may never make: 500 ms after a burst of megabyte payloads the process held 31 MB
/// over idle, against 20 MB with glibc.
/// glibc (SQLite's C code) gets large blocks from and back to the system directly: a fixed
/// mmap threshold (glibc otherwise raises it after each large free, up to 32 MiB, and then
/// serves multi-megabyte payloads from arenas it never shrinks) and at most two arenas per
/// core instead of eight.
pub fn tune_allocator() {
    // SAFETY: mi_option_set only sets one of mimalloc's options; it takes no pointers.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc tunables; called once at start before threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2 * num_cpus());
    }
}

/// `mi_option_purge_delay`'s place in mimalloc.h's `mi_option_e` (v3), which libmimalloc-sys
/// leaves unnamed; a test checks that the option there has purge_delay's default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn num_cpus() -> i32 {
    std::thread::available_parallelism()
        .map(|n| i32::try_from(n.get()).unwrap_or(8))
        .unwrap_or(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_where_we_set_it() {
        // The test process leaves mimalloc's options as they were: 1000 ms is purge_delay's
        // default (options.c), which no other option of mimalloc's list has.
        // SAFETY: reads one of mimalloc's options.
        let delay = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(delay, 1000);
    }
}
