//! The real `upkeep-server` entry point, built inside this package so end-to-end tests can run
//! it as a separate process (and kill it with SIGKILL).
fn main() -> std::process::ExitCode {
    upkeep_server::cli::main()
}
