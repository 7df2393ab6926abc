//! Cluster mode under fire: three replicas as child processes on one PostgreSQL and one NATS
//! (a NATS server of this test's own, so it can be restarted), six real agents spread over
//! them, sessions started through a replica other than the one their agent polls. Meanwhile
//! replicas are SIGKILLed at random points and restarted, PostgreSQL is restarted
//! (`pg_ctlcluster … restart`) and so is NATS. Afterwards every session PASSED, every step ran
//! exactly once, every after-mail arrived exactly once, and `check --database-url` finds the
//! store sound.
//!
//! Its own test binary: cargo runs test binaries one at a time, so restarting the machine's
//! PostgreSQL here cannot break another test's connections.

use anyhow::{Context, Result, ensure};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use upkeep_store::scratch::ScratchDatabase;
use upkeep_tests::crash::*;
use upkeep_tests::smtp::SmtpSink;
use upkeep_tests::*;

const REPLICAS: usize = 3;
const COMPUTERS: usize = 6;

/// This test's NATS server (JetStream on disk), killed on drop.
struct Nats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Nats {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("nats.log"))?;
        self.child = Some(
            Command::new("nats-server")
                .args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-js",
                    "-sd",
                ])
                .arg(&self.dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("nats-server (apt install nats-server)")?,
        );
        let deadline = Instant::now() + T;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            ensure!(Instant::now() < deadline, "nats-server did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Restarts the machine's PostgreSQL (every connection is cut) and waits until it answers.
async fn restart_postgres() -> Result<()> {
    let version = std::fs::read_dir("/etc/postgresql")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("no PostgreSQL cluster under /etc/postgresql")?;
    let out = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .output()?;
    ensure!(
        out.status.success(),
        "pg_ctlcluster restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("PostgreSQL to answer", T, || async {
        Ok(Command::new("pg_isready")
            .args(["-q", "-h", "127.0.0.1"])
            .status()?
            .success()
            .then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_survive_kills_and_restarts_of_every_part() -> Result<()> {
    let seed = Rng::seed_from_env("UPKEEP_CLUSTER_SEED");
    println!("cluster test seed {seed} (rerun with UPKEEP_CLUSTER_SEED={seed})");
    upkeep_server::install_tls_provider();
    let dir = tempfile::tempdir()?;
    let database = ScratchDatabase::create().await?;
    let mut nats = Nats {
        child: None,
        port: free_port()?,
        dir: dir.path().join("nats"),
    };
    std::fs::create_dir_all(&nats.dir)?;
    nats.start().await?;
    let smtp = SmtpSink::start().await?;
    let mut replicas = Vec::new();
    for r in 0..REPLICAS {
        let mut p = ServerProcess::new(
            free_port()?,
            dir.path().join(format!("replica-{r}")),
            smtp.url(),
            dir.path().join(format!("replica-{r}.log")),
        );
        p.extra = vec![
            "--database-url".into(),
            database.url().to_string(),
            "--nats-url".into(),
            nats.url(),
            "--nats-prefix".into(),
            "cluster_test".into(),
        ];
        replicas.push(p);
    }
    let r = run(&mut replicas, &mut nats, &smtp, dir.path(), seed, &database).await;
    if r.is_err() {
        for (i, p) in replicas.iter().enumerate() {
            println!("seed {seed}; replica {i}'s log:\n{}", p.log_tail(40));
        }
    }
    smtp.stop();
    r
}

// long: one scenario told in order (set-up, the disruptions, the checks); split, the order of
// what happens to the cluster would be harder to follow.
async fn run(
    replicas: &mut [ServerProcess],
    nats: &mut Nats,
    smtp: &SmtpSink,
    dir: &Path,
    seed: u64,
    database: &ScratchDatabase,
) -> Result<()> {
    let started = Instant::now();
    let mut rng = Rng(seed);
    // The first replica makes the admin and the shared keys; the others join it.
    for p in replicas.iter_mut() {
        p.start().await?;
    }
    let urls: Vec<String> = replicas.iter().map(|p| p.url()).collect();
    let mut remote = Remote::new(urls.clone())?;
    remote.login().await?;
    let mut fleet = set_up_fleet(&remote, dir, COMPUTERS, &urls).await?;
    println!("set up in {:.1?}", started.elapsed());

    // Computer i's agent polls replica i % 3; its sessions are started through the next one.
    let drivers: Vec<_> = fleet
        .computers
        .iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(drive(remote.starting_at(i + 1), i, c.clone())))
        .collect();
    let kills = rng.range(4, 6);
    for k in 1..=kills {
        let gap = rng.range(100, 2000);
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let victim = rng.range(0, REPLICAS as u64 - 1) as usize;
        replicas[victim].kill()?;
        let down = Instant::now();
        replicas[victim].start().await?;
        println!(
            "kill {k}/{kills}: replica {victim}, {gap} ms after the last event; back after {:.1?}",
            down.elapsed()
        );
        if k == 2 {
            let t = Instant::now();
            restart_postgres().await?;
            println!("PostgreSQL restarted in {:.1?}", t.elapsed());
        }
        if k == 3 {
            nats.kill()?;
            // Health says so while NATS is away (CONTRACT: 200 only when the store and NATS
            // are reachable).
            let health = format!("{}/healthz", replicas[0].url());
            wait_for("/healthz to report NATS gone", T, || async {
                let r = remote.http.get(&health).send().await?;
                let (status, body) = (r.status().as_u16(), r.text().await?);
                Ok((status == 503 && body.contains("NATS_UNAVAILABLE")).then_some(()))
            })
            .await?;
            tokio::time::sleep(Duration::from_millis(rng.range(100, 1500))).await;
            nats.start().await?;
            println!("NATS restarted");
        }
    }
    for p in replicas.iter() {
        let health = format!("{}/healthz", p.url());
        wait_for("/healthz after the restarts", T, || async {
            let r = remote.http.get(&health).send().await?;
            Ok(r.status().is_success().then_some(()))
        })
        .await?;
    }
    let mut done = Vec::new();
    for d in drivers {
        done.extend(d.await??);
    }
    println!("all sessions finished after {:.1?}", started.elapsed());
    assert_steps_ran_once(&done, &fleet);

    wait_for_after_mails(smtp, done.len(), || async {
        remote.metric("upkeep_outbox_depth").await.unwrap_or(1.0) == 0.0
    })
    .await?;
    for p in replicas.iter_mut() {
        p.kill()?;
    }
    fleet.agents.clear();
    let repeats = assert_one_after_mail_each(&done, &fleet, smtp)?;
    println!("after-mails: one per session, {repeats} repeated send(s) of the same Message-ID");

    let check = Command::new(bin("upkeep-server-under-test"))
        .args(["check", "--database-url", database.url()])
        .output()?;
    assert!(
        check.status.success(),
        "store check failed: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    println!("cluster test done in {:.1?}", started.elapsed());
    Ok(())
}
