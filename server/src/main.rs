use std::process::ExitCode;

fn main() -> ExitCode {
    upkeep_server::cli::main()
}
