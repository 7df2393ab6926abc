//! `upkeep-bench`: load and performance figures for upkeep-server (see `docs/PERFORMANCE.md`).
//!
//! ```text
//! cargo build --release -p upkeep-server -p upkeep-bench
//! target/release/upkeep-bench <polls|fleet|nginx|sessions|graphql|fanout|plan|preview|cluster|all> [--quick]
//! ```
//!
//! Most scenarios start the real server in this process (`upkeep_server::api::http::start`, temp
//! data dir, loopback listener) and measures it over HTTP and WebSocket only; fixtures may be
//! written beforehand through the server's store. `fleet` and `nginx` run the release server
//! binary as a process of its own (its memory is read apart; `nginx` also runs wrk and nginx).
//! `cluster` needs PostgreSQL, NATS and nginx beside the release server binary, and runs
//! server processes only (skipped with a note when one of the three is missing). Figures
//! are JSON lines on stdout, progress notes on stderr. `RUST_LOG` turns on the server's log.

mod agent;
mod cluster;
mod fanout;
mod fleet;
mod graphql;
mod nginx;
mod plan;
mod polls;
mod preview;
mod processes;
mod report;
mod server;
mod sessions;

use anyhow::{Result, bail};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use report::Figure;
use std::time::Instant;

// `graphql` last: its 10 GB fixture keeps the disk and page cache busy for a while after it.
// `fleet`, `nginx` and `cluster` run the release `upkeep-server` binary as a process (beside
// this one, or `UPKEEP_BENCH_SERVER`); `nginx` is skipped with a note when wrk or nginx is
// missing, `cluster` when nginx, PostgreSQL or NATS is (see `cluster::parts_reachable`).
const SCENARIOS: [&str; 9] = [
    "polls", "fleet", "nginx", "sessions", "fanout", "plan", "preview", "cluster", "graphql",
];

fn usage() -> String {
    format!(
        "usage: upkeep-bench <{}|all> [--quick]",
        SCENARIOS.join("|")
    )
}

fn main() -> Result<()> {
    // The server gets its own runtime, one worker per core like the real binary; the client
    // (this bench) another. See `server.rs`.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("upkeep-server")
        .enable_all()
        .build()?;
    upkeep_testkit::set_server_runtime(server_rt.handle().clone());
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench-client")
        .enable_all()
        .build()?;
    let result = client_rt.block_on(bench());
    // A server that got stuck must not hold the process: drop both without waiting.
    client_rt.shutdown_background();
    server_rt.shutdown_background();
    result
}

async fn bench() -> Result<()> {
    let mut quick = false;
    let mut scenario = None;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--quick" => quick = true,
            "-h" | "--help" => {
                println!("{}", usage());
                return Ok(());
            }
            s if scenario.is_none() && (s == "all" || SCENARIOS.contains(&s)) => {
                scenario = Some(s.to_string())
            }
            other => bail!("unknown argument '{other}'\n{}", usage()),
        }
    }
    let Some(scenario) = scenario else {
        bail!("{}", usage());
    };
    if std::env::var_os("RUST_LOG").is_some() {
        upkeep_server::init_logging("text");
    }
    let chosen: Vec<&str> = if scenario == "all" {
        SCENARIOS.to_vec()
    } else {
        vec![scenario.as_str()]
    };
    let started = Instant::now();
    for s in chosen {
        let t = Instant::now();
        // A failed scenario may leave its server wedged in this process (sled's IO pool is
        // process-wide), so later figures would not be trustworthy: stop at the first failure.
        let figures = run(s, quick).await.map_err(|e| {
            report::note(
                s,
                format!("FAILED after {:.1} s", t.elapsed().as_secs_f64()),
            );
            e.context(format!("scenario {s} failed"))
        })?;
        for f in &figures {
            f.print();
        }
        report::note(s, format!("done in {:.1} s", t.elapsed().as_secs_f64()));
    }
    report::note(
        "bench",
        format!("all done in {:.1} s", started.elapsed().as_secs_f64()),
    );
    Ok(())
}

async fn run(scenario: &str, quick: bool) -> Result<Vec<Figure>> {
    match scenario {
        "plan" => plan::run(),
        "preview" => preview::run(quick).await,
        "polls" => polls::run(quick).await,
        "fleet" => fleet::run(quick).await,
        "nginx" => nginx::run(quick).await,
        "sessions" => sessions::run(quick).await,
        "fanout" => fanout::run(quick).await,
        "graphql" => graphql::run(quick).await,
        "cluster" => cluster::run(quick).await,
        other => bail!("unknown scenario '{other}'"),
    }
}
