use std::process::ExitCode;

/// mimalloc instead of glibc's allocator: every session step decodes and encodes its record,
/// and under load glibc's malloc took a sixth of the server's CPU (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    upkeep_server::cli::main()
}
