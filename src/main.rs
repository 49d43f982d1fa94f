//! The `mcp-coordinator` binary: parse arguments and hand over to the CLI.

mod cli;

// mimalloc, not glibc's malloc: an HTTP request costs some 500 allocations (hyper's head, rmcp's
// per-request service and channels, the JSON both ways), many freed on another thread than the
// one that made them, where glibc takes its arena locks and consolidates its free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
