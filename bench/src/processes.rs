//! The `cluster` scenario's moving parts as child processes: release `upkeep-server` replicas
//! (and one on sled for comparison), nginx in front of them, and the CPU time each part of the
//! box used (read from `/proc`). Every child is killed when its value drops, also when the
//! scenario fails half-way.

use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use upkeep_testkit::{ADMIN_EMAIL, ADMIN_PASSWORD, ScratchCluster};

/// How long a child may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `upkeep-server` binary the replicas run: `UPKEEP_BENCH_SERVER`, else the one beside this
/// bench's binary (`target/release/` after `cargo build --release -p upkeep-server`).
pub fn server_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("UPKEEP_BENCH_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .context("the bench binary has no directory")?
        .join("upkeep-server");
    if !bin.is_file() {
        bail!(
            "no upkeep-server beside {} (the cluster scenario runs it as replicas): build both \
             with `cargo build --release -p upkeep-server -p upkeep-bench`, or name one with \
             UPKEEP_BENCH_SERVER",
            exe.display()
        );
    }
    Ok(bin)
}

/// nginx: `/usr/sbin/nginx`, else `nginx` on the `PATH`.
pub fn nginx_binary() -> Result<PathBuf> {
    let mut candidates = vec![PathBuf::from("/usr/sbin/nginx")];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nginx")));
    }
    candidates.into_iter().find(|p| p.is_file()).context(
        "nginx is not installed (neither /usr/sbin/nginx nor nginx on the PATH): the cluster \
         scenario puts nginx in front of the replicas; install it (apt-get install nginx-light)",
    )
}

/// One `upkeep-server` process on a port it picked itself (`--listen 127.0.0.1:0`; the port is
/// read from its log).
pub struct ServerProcess {
    child: Child,
    pub name: String,
    pub port: u16,
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts `bin` with its data dir and log in `dir/<name>`, `extra` flags after the common
    /// ones (admin, loopback listener), and waits until `/readyz` answers 200.
    pub async fn start(bin: &Path, dir: &Path, name: &str, extra: &[String]) -> Result<Self> {
        let data = dir.join(name);
        std::fs::create_dir_all(&data)?;
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .args([
                "--admin-email",
                ADMIN_EMAIL,
                "--admin-password",
                ADMIN_PASSWORD,
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut p = ServerProcess {
            child,
            name: name.into(),
            port: 0,
            log,
        };
        let http = upkeep_testkit::http_client()?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = p.child.try_wait()? {
                bail!("{name} exited at start ({status}):\n{}", p.log_tail(20));
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not come up within {START_TIMEOUT:?}:\n{}",
                    p.log_tail(20)
                );
            }
            if p.port == 0 {
                p.port = listening_port(&std::fs::read_to_string(&p.log)?).unwrap_or(0);
            } else if let Ok(r) = http.get(format!("{}/readyz", p.url())).send().await
                && r.status().is_success()
            {
                return Ok(p);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A replica of `cluster` (its database and NATS prefix), behind nginx on this box, with
    /// installer files in `files_dir` shared by every replica.
    pub async fn replica(
        bin: &Path,
        dir: &Path,
        name: &str,
        cluster: &ScratchCluster,
        files_dir: &Path,
    ) -> Result<Self> {
        let files = files_dir.to_str().context("files dir path")?;
        let flags = [
            "--database-url",
            cluster.database.url(),
            "--nats-url",
            &cluster.nats_url,
            "--nats-prefix",
            &cluster.prefix,
            "--trusted-proxies",
            "127.0.0.1/32",
            "--files-dir",
            files,
        ];
        Self::start(bin, dir, name, &flags.map(String::from)).await
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number after ` field=` on the first line of the server's log that says `message`
/// (its text-format log: `... store opened engine="sled" ms=2600`).
pub fn log_field(log: &str, message: &str, field: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(message))?;
    let rest = line.split(&format!(" {field}=")).nth(1)?;
    rest.split_whitespace()
        .next()?
        .trim_matches('"')
        .parse()
        .ok()
}

/// The port in the server's "listening on http://127.0.0.1:PORT" log line.
fn listening_port(log: &str) -> Option<u16> {
    let rest = log.split("listening on http://").nth(1)?;
    let addr = rest.split_whitespace().next()?;
    addr.rsplit_once(':')?.1.parse().ok()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// nginx as a child (`-g 'daemon off;'`) with its own prefix dir: one listener per upstream
/// group, each on a port of its own.
pub struct Nginx {
    child: Child,
    bin: PathBuf,
    prefix: PathBuf,
    /// The listener port of each upstream group, in the order given.
    pub ports: Vec<u16>,
}

impl Nginx {
    /// Starts nginx in `prefix` with one listener per group of upstream ports, and waits until
    /// every listener answers `/healthz` through its upstream.
    pub async fn start(bin: &Path, prefix: &Path, groups: &[Vec<u16>]) -> Result<Nginx> {
        let ports = groups
            .iter()
            .map(|_| free_port())
            .collect::<Result<Vec<_>>>()?;
        let listeners: Vec<(u16, &[u16])> = ports
            .iter()
            .zip(groups)
            .map(|(p, g)| (*p, g.as_slice()))
            .collect();
        let conf = nginx_config(prefix, &listeners);
        Nginx::launch(bin, prefix, &conf, ports, "/healthz").await
    }

    /// Starts nginx in `prefix` with configuration `conf` (which listens on `ports`), and waits
    /// until every port answers `probe` with a success.
    pub async fn launch(
        bin: &Path,
        prefix: &Path,
        conf: &str,
        ports: Vec<u16>,
        probe: &str,
    ) -> Result<Nginx> {
        std::fs::create_dir_all(prefix)?;
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let error_log = prefix.join("error.log");
        let child = Command::new(bin)
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(&error_log)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(prefix.join("stderr.log"))?)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut n = Nginx {
            child,
            bin: bin.into(),
            prefix: prefix.into(),
            ports,
        };
        let http = upkeep_testkit::http_client()?;
        let deadline = Instant::now() + START_TIMEOUT;
        for port in n.ports.clone() {
            loop {
                if let Some(status) = n.child.try_wait()? {
                    bail!(
                        "nginx exited at start ({status}):\n{}\n{}",
                        tail(&prefix.join("stderr.log"), 10),
                        tail(&error_log, 10)
                    );
                }
                if Instant::now() > deadline {
                    bail!(
                        "nginx did not answer on port {port}:\n{}",
                        tail(&error_log, 10)
                    );
                }
                if let Ok(r) = http
                    .get(format!("http://127.0.0.1:{port}{probe}"))
                    .send()
                    .await
                    && r.status().is_success()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(n)
    }

    pub fn url(&self, group: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[group])
    }

    /// The master and its workers.
    pub fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids = vec![master];
        pids.extend(processes().filter(|p| p.ppid == master).map(|p| p.pid));
        pids
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // `-s stop` signals the master (SIGTERM), which stops its workers; SIGKILL would leave
        // them running.
        let _ = Command::new(&self.bin)
            .arg("-p")
            .arg(&self.prefix)
            .arg("-c")
            .arg(self.prefix.join("nginx.conf"))
            .args(["-s", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (nginx needs a number; the small race with other programs binding
/// one is caught when nginx fails to start).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// nginx's configuration: `deploy/cluster/nginx.conf`'s proxying (WebSocket upgrade, upstream
/// keep-alive, `least_conn`, nothing sticky) without TLS, on loopback, one `server` per
/// `(listen port, upstream ports)`; every path nginx writes lies under `prefix`. No access log:
/// a production nginx writes one, which would cost a few percent more here.
pub fn nginx_config(prefix: &Path, listeners: &[(u16, &[u16])]) -> String {
    let p = prefix.display();
    let mut c = format!(
        "worker_processes auto;\n\
         pid {p}/nginx.pid;\n\
         error_log {p}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         access_log off;\n\
         client_body_temp_path {p}/client_body;\n\
         proxy_temp_path {p}/proxy;\n\
         fastcgi_temp_path {p}/fastcgi;\n\
         uwsgi_temp_path {p}/uwsgi;\n\
         scgi_temp_path {p}/scgi;\n\
         map $http_upgrade $upkeep_connection {{ default upgrade; '' ''; }}\n"
    );
    for (i, (listen, upstreams)) in listeners.iter().enumerate() {
        let _ = writeln!(c, "upstream upkeep{i} {{");
        for u in *upstreams {
            let _ = writeln!(c, "  server 127.0.0.1:{u} max_fails=2 fail_timeout=10s;");
        }
        let _ = write!(
            c,
            "  least_conn;\n  keepalive 256;\n}}\n\
             server {{\n\
             listen 127.0.0.1:{listen};\n\
             client_max_body_size 0;\n\
             proxy_request_buffering off;\n\
             location / {{\n\
             proxy_pass http://upkeep{i};\n\
             proxy_http_version 1.1;\n\
             proxy_set_header Host $host;\n\
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             proxy_set_header X-Forwarded-Proto $scheme;\n\
             proxy_set_header Upgrade $http_upgrade;\n\
             proxy_set_header Connection $upkeep_connection;\n\
             proxy_read_timeout 90s;\n\
             proxy_send_timeout 90s;\n\
             proxy_buffering off;\n\
             proxy_next_upstream error timeout http_502 http_503;\n\
             proxy_next_upstream_tries 3;\n\
             }}\n}}\n"
        );
    }
    c.push_str("}\n");
    c
}

/// One line of `/proc/<pid>/stat`, the fields the bench reads.
struct Proc {
    pid: u32,
    ppid: u32,
    comm: String,
    /// User + system time, in clock ticks.
    ticks: u64,
}

/// Linux's `USER_HZ`: 100 on every architecture this runs on (x86-64, arm64).
const TICKS_PER_S: f64 = 100.0;

fn read_proc(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `comm` is in parentheses and may hold spaces; the fields after it are plain.
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After `comm`: state (3), ppid (4), … utime (14), stime (15); 1-based over the line.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        comm,
        ticks: utime + stime,
    })
}

fn processes() -> impl Iterator<Item = Proc> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_proc)
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The parts of the box whose CPU time the scenario reports.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Part {
    /// This process: the simulated agents and the GraphQL client.
    Bench,
    /// The `upkeep-server` processes measured.
    Servers,
    Nginx,
    /// PostgreSQL's backends serving the measured database, plus its WAL writer, background
    /// writer and checkpointer (which also serve anyone else using this PostgreSQL).
    Postgres,
    /// `nats-server` (shared with anyone else using it).
    Nats,
    /// Everything else the machine ran meanwhile (other users of the box included).
    Other,
}

impl Part {
    pub const ALL: [Part; 6] = [
        Part::Bench,
        Part::Servers,
        Part::Nginx,
        Part::Postgres,
        Part::Nats,
        Part::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Part::Bench => "bench",
            Part::Servers => "servers",
            Part::Nginx => "nginx",
            Part::Postgres => "postgres",
            Part::Nats => "nats",
            Part::Other => "other",
        }
    }
}

/// Which processes belong to which part during one measurement.
pub struct Parts {
    pub servers: Vec<u32>,
    pub nginx: Vec<u32>,
    /// The measured database's name (its backends show it in their process title).
    pub database: Option<String>,
}

/// CPU ticks per process of the parts, and of the whole machine, at one instant.
pub struct CpuReading {
    procs: HashMap<u32, (Part, u64)>,
    machine: u64,
}

impl Parts {
    fn part_of(&self, p: &Proc) -> Option<Part> {
        if p.pid == std::process::id() {
            return Some(Part::Bench);
        }
        if self.servers.contains(&p.pid) {
            return Some(Part::Servers);
        }
        if self.nginx.contains(&p.pid) {
            return Some(Part::Nginx);
        }
        match p.comm.as_str() {
            "nats-server" => Some(Part::Nats),
            "postgres" => {
                let title = cmdline(p.pid);
                let shared = ["walwriter", "background writer", "checkpointer"]
                    .iter()
                    .any(|w| title.contains(w));
                let ours = self
                    .database
                    .as_deref()
                    .is_some_and(|d| title.split_whitespace().any(|w| w == d));
                (shared || ours).then_some(Part::Postgres)
            }
            _ => None,
        }
    }

    pub fn read(&self) -> Result<CpuReading> {
        let mut procs = HashMap::new();
        for p in processes() {
            if let Some(part) = self.part_of(&p) {
                procs.insert(p.pid, (part, p.ticks));
            }
        }
        Ok(CpuReading {
            procs,
            machine: machine_busy_ticks()?,
        })
    }
}

/// Busy ticks of all CPUs: `/proc/stat`'s user, nice, system, irq and softirq (guest time is
/// inside user; idle, iowait and steal are not this machine's work).
fn machine_busy_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    Ok([0, 1, 2, 5, 6].iter().filter_map(|i| f.get(*i)).sum())
}

/// CPU seconds each part used between two readings. A process that started in between counts
/// from zero; one that ended in between is lost (none should: pools keep their connections).
#[derive(Default, Clone)]
pub struct CpuUse(HashMap<Part, f64>);

impl CpuUse {
    pub fn between(before: &CpuReading, after: &CpuReading) -> CpuUse {
        let mut used: HashMap<Part, f64> = HashMap::new();
        for (pid, (part, ticks)) in &after.procs {
            let was = before.procs.get(pid).map_or(0, |(_, t)| *t);
            *used.entry(*part).or_default() += ticks.saturating_sub(was) as f64 / TICKS_PER_S;
        }
        let parts: f64 = used.values().sum();
        let machine = after.machine.saturating_sub(before.machine) as f64 / TICKS_PER_S;
        used.insert(Part::Other, (machine - parts).max(0.0));
        CpuUse(used)
    }

    pub fn add(&mut self, other: &CpuUse) {
        for (part, s) in &other.0 {
            *self.0.entry(*part).or_default() += s;
        }
    }

    /// CPU seconds of `part`.
    pub fn seconds(&self, part: Part) -> f64 {
        self.0.get(&part).copied().unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_comes_from_the_listening_line() {
        let log = "2026-12-01T09:00:00Z  INFO upkeep_server::api::http: store opened\n\
                   2026-12-01T09:00:00Z  INFO upkeep_server::api::http: listening on http://127.0.0.1:40123\n";
        assert_eq!(listening_port(log), Some(40123));
        assert_eq!(listening_port("store opened\n"), None);
    }

    #[test]
    fn nginx_config_spreads_over_every_replica_without_stickiness() {
        let c = nginx_config(Path::new("/tmp/x"), &[(9000, &[1, 2, 3]), (9001, &[4])]);
        for port in [1, 2, 3, 4] {
            assert!(
                c.contains(&format!("server 127.0.0.1:{port} max_fails")),
                "{c}"
            );
        }
        assert!(c.contains("listen 127.0.0.1:9000;") && c.contains("listen 127.0.0.1:9001;"));
        assert!(
            c.contains("proxy_pass http://upkeep0;") && c.contains("proxy_pass http://upkeep1;")
        );
        assert!(c.contains("proxy_set_header Upgrade $http_upgrade;"));
        assert!(!c.contains("ip_hash") && !c.contains("sticky") && !c.contains("hash "));
        assert!(!c.contains("daemon"), "daemon off is given with -g");
        assert_eq!(c.matches('{').count(), c.matches('}').count());
    }

    #[test]
    fn this_process_counts_as_the_bench() {
        let parts = Parts {
            servers: vec![],
            nginx: vec![],
            database: None,
        };
        let me = read_proc(std::process::id()).expect("own /proc entry");
        assert_eq!(parts.part_of(&me), Some(Part::Bench));
        // Burn a little CPU so the reading moves.
        let before = parts.read().expect("reading");
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = parts.read().expect("reading");
        let used = CpuUse::between(&before, &after);
        assert!(used.seconds(Part::Bench) > 0.0);
        assert!(used.seconds(Part::Other) >= 0.0);
    }
}
