//! `upkeep-agent`: see the library for what it does.

use std::process::ExitCode;

fn main() -> ExitCode {
    match upkeep_agent::main_cli() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line an operator can act on, with its causes.
            eprintln!("upkeep-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
