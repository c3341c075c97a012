//! The `mcp-orchestrator` binary: parses the command line and runs it.

fn main() -> std::process::ExitCode {
    mcp_orchestrator::cli::main()
}
