//! The real `upkeep-agent` entry point, built inside this package for process-level tests.
fn main() -> std::process::ExitCode {
    match upkeep_agent::main_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("upkeep-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
