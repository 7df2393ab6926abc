//! Crash safety: the real server runs as a child process and is killed with SIGKILL at random
//! points while three real agents run sessions. Afterwards every session has finished, every
//! step ran exactly once, every after-mail arrived exactly once (a repeat of the same
//! Message-ID after a crash is allowed, a second Message-ID is not) and `check` finds the store
//! sound. The harness is `upkeep_tests::crash` (shared with the cluster test).

use anyhow::Result;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use upkeep_tests::crash::*;
use upkeep_tests::smtp::SmtpSink;
use upkeep_tests::*;

const COMPUTERS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_and_repeats_nothing() -> Result<()> {
    let seed = Rng::seed_from_env("UPKEEP_CRASH_SEED");
    println!("crash test seed {seed} (rerun with UPKEEP_CRASH_SEED={seed})");
    let dir = tempfile::tempdir()?;
    let smtp = SmtpSink::start().await?;
    let mut server = ServerProcess::new(
        free_port()?,
        dir.path().join("data"),
        smtp.url(),
        dir.path().join("server.log"),
    );
    let cluster = if_cluster_mode().await?;
    server.extra = cluster_args(cluster.as_ref());
    let r = run(&mut server, &smtp, dir.path(), seed, cluster.as_ref()).await;
    if r.is_err() {
        println!(
            "seed {seed}; last lines of the server's log:\n{}",
            server.log_tail(60)
        );
    }
    smtp.stop();
    r
}

async fn run(
    server: &mut ServerProcess,
    smtp: &SmtpSink,
    dir: &Path,
    seed: u64,
    cluster: Option<&ScratchCluster>,
) -> Result<()> {
    let started = Instant::now();
    let mut rng = Rng(seed);
    upkeep_server::install_tls_provider();
    let mut remote = Remote::new(vec![server.url()])?;
    server.start().await?;
    remote.login().await?;
    let mut fleet = set_up_fleet(&remote, dir, COMPUTERS, &[server.url()]).await?;
    println!("set up in {:.1?}", started.elapsed());

    // Sessions on all computers, round after round; meanwhile SIGKILL at random points.
    let drivers: Vec<_> = fleet
        .computers
        .iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(drive(remote.clone(), i, c.clone())))
        .collect();
    let kills = rng.range(4, 6);
    for k in 1..=kills {
        let gap = rng.range(50, 1800);
        tokio::time::sleep(Duration::from_millis(gap)).await;
        server.kill()?;
        let down = Instant::now();
        server.start().await?;
        println!(
            "kill {k}/{kills}: {gap} ms after the server was up; back after {:.1?}",
            down.elapsed()
        );
    }
    let mut done = Vec::new();
    for d in drivers {
        done.extend(d.await??);
    }
    println!("all sessions finished after {:.1?}", started.elapsed());
    assert_steps_ran_once(&done, &fleet);

    // Wait for the outbox to drain and for a mail per session, then stop the server so nothing
    // more can come.
    wait_for_after_mails(smtp, done.len(), || async {
        remote.metric("upkeep_outbox_depth").await.unwrap_or(1.0) == 0.0
    })
    .await?;
    server.kill()?;
    fleet.agents.clear();
    let repeats = assert_one_after_mail_each(&done, &fleet, smtp)?;
    println!("after-mails: one per session, {repeats} repeated send(s) of the same Message-ID");

    // The store the crashes left behind is sound.
    let check = Command::new(bin("upkeep-server-under-test"))
        .args(check_args(cluster, &server.data))
        .output()?;
    assert!(
        check.status.success(),
        "store check failed: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    println!("crash test done in {:.1?}", started.elapsed());
    Ok(())
}
