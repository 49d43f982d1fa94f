//! The `mcp-coordinator` binary: parse arguments and hand over to the CLI.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
