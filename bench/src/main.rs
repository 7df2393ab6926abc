//! `upkeep-bench`: load and performance figures for upkeep-server (see `docs/PERFORMANCE.md`).
//!
//! ```text
//! cargo run --release -p upkeep-bench -- <polls|sessions|graphql|fanout|plan|all> [--quick]
//! ```
//!
//! Each scenario starts the real server in this process (`upkeep_server::http::start`, temp
//! data dir, loopback listener) and measures it over HTTP and WebSocket only; fixtures may be
//! written beforehand through the server's store. Figures are JSON lines on stdout, progress
//! notes on stderr. `RUST_LOG` turns on the server's log.

mod agent;
mod fanout;
mod graphql;
mod plan;
mod polls;
mod report;
mod server;
mod sessions;

use anyhow::{Result, bail};
use report::Figure;
use std::time::Instant;

const SCENARIOS: [&str; 5] = ["plan", "polls", "sessions", "fanout", "graphql"];

fn usage() -> String {
    format!(
        "usage: upkeep-bench <{}|all> [--quick]",
        SCENARIOS.join("|")
    )
}

#[tokio::main]
async fn main() -> Result<()> {
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
        let figures = run(s, quick).await?;
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
        "polls" => polls::run(quick).await,
        "sessions" => sessions::run(quick).await,
        "fanout" => fanout::run(quick).await,
        "graphql" => graphql::run(quick).await,
        other => bail!("unknown scenario '{other}'"),
    }
}
