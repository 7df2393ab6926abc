//! `nginx`: Upkeep's poll route against Debian's nginx answering a fixed 200 on the same box,
//! both driven by `wrk` as a process of its own (`apt-get install wrk nginx`), in one run.
//!
//! Upkeep: the release `upkeep-server` as a process, on a preloaded fleet (10 000 agents,
//! quick and full: the poll load does not depend on the fleet's size; see `fleet` for that),
//! polled at `POST /agent/v1/poll` with `{"protocolVersion":1,"waitSeconds":0}` and each
//! request another agent's bearer token (a Lua script reads the tokens from a file). nginx:
//! `return 200 '{"jobs":[]}'` for any request, two workers (`worker_processes auto`), no
//! access log, keep-alive without a request limit (as Upkeep's own listener). Rounds
//! interleave: nginx, Upkeep, nginx, Upkeep, with the same `wrk` flags. The scenario is
//! skipped, with a note, when `wrk` or nginx is missing.

use crate::fleet::preload;
use crate::processes::{self, Nginx, ServerProcess, nginx_binary, server_binary};
use crate::report::{Figure, note};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;

const S: &str = "nginx";
const AGENTS: usize = 10_000;
const CONNECTIONS: usize = 64;
const THREADS: usize = 2;

/// `wrk` on the `PATH`.
fn wrk_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("wrk"))
        .find(|p| p.is_file())
}

pub async fn run(quick: bool) -> Result<Vec<Figure>> {
    let Some(wrk) = wrk_binary() else {
        note(
            S,
            "SKIPPED: wrk is not installed (apt-get install wrk nginx)",
        );
        return Ok(vec![]);
    };
    let nginx = match nginx_binary() {
        Ok(n) => n,
        Err(_) => {
            note(
                S,
                "SKIPPED: nginx is not installed (apt-get install wrk nginx)",
            );
            return Ok(vec![]);
        }
    };
    let seconds = if quick { 3 } else { 10 };
    let bin = server_binary()?;
    let dir = tempfile::Builder::new().prefix("upkeep-bench-").tempdir()?;
    note(
        S,
        format!("preloading {AGENTS} agents; starting upkeep-server"),
    );
    let tokens = {
        let data = dir.path().join("upkeep");
        tokio::task::spawn_blocking(move || preload(&data, AGENTS)).await??
    };
    let token_file = dir.path().join("tokens.txt");
    let mut list = String::with_capacity(AGENTS * 48);
    for i in 0..tokens.n {
        list.push_str(tokens.get(i));
        list.push('\n');
    }
    std::fs::write(&token_file, list)?;
    let script = dir.path().join("poll.lua");
    std::fs::write(&script, lua_script(&token_file))?;
    let server = ServerProcess::start(&bin, dir.path(), "upkeep", &[]).await?;
    let fixed = fixed_nginx(&nginx, &dir.path().join("nginx")).await?;

    let upkeep_url = format!("{}/agent/v1/poll", server.url());
    let nginx_url = format!("http://127.0.0.1:{}/agent/v1/poll", fixed.ports[0]);
    // Warm both, then interleaved rounds.
    wrk_run(&wrk, &script, &nginx_url, 1).await?;
    wrk_run(&wrk, &script, &upkeep_url, 1).await?;
    let (mut base, mut real) = (Vec::new(), Vec::new());
    for round in 1..=2 {
        note(
            S,
            format!("round {round}: nginx, then upkeep ({seconds} s each)"),
        );
        base.push(wrk_run(&wrk, &script, &nginx_url, seconds).await?);
        real.push(wrk_run(&wrk, &script, &upkeep_url, seconds).await?);
    }
    drop(fixed);
    drop(server);
    if let Some(r) = real.iter().chain(&base).find(|r| r.errors > 0) {
        bail!("wrk saw {} failed or non-2xx answers", r.errors);
    }
    let mean =
        |v: &[WrkResult], f: fn(&WrkResult) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    let rps = |r: &WrkResult| r.requests_per_s;
    let p50 = |r: &WrkResult| r.p50_ms;
    let p99 = |r: &WrkResult| r.p99_ms;
    Ok(vec![
        Figure::new(S, "connections", CONNECTIONS as f64, "connections"),
        Figure::new(S, "agents", AGENTS as f64, "agents"),
        Figure::new(S, "polls_per_s", mean(&real, rps), "1/s").against(mean(&base, rps)),
        Figure::new(S, "p50_ms", mean(&real, p50), "ms").against(mean(&base, p50)),
        Figure::new(S, "p99_ms", mean(&real, p99), "ms").against(mean(&base, p99)),
    ])
}

/// The request script: POST the poll body, each request the next agent's token; each wrk
/// thread starts at another place in the list.
fn lua_script(tokens: &Path) -> String {
    format!(
        r#"local tokens = {{}}
local n = 0
local i = 0
local started = 0
function setup(thread)
  thread:set("offset", started * 4999)
  started = started + 1
end
function init(args)
  for line in io.lines("{}") do
    n = n + 1
    tokens[n] = line
  end
  i = (offset or 0) % n
end
local body = '{{"protocolVersion":1,"waitSeconds":0}}'
function request()
  i = i % n + 1
  return wrk.format("POST", "/agent/v1/poll", {{
    ["Host"] = wrk.headers["Host"],
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. tokens[i],
  }}, body)
end
"#,
        tokens.display()
    )
}

struct WrkResult {
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Socket errors and non-2xx answers.
    errors: u64,
}

async fn wrk_run(wrk: &Path, script: &Path, url: &str, seconds: u64) -> Result<WrkResult> {
    let out = tokio::process::Command::new(wrk)
        .arg(format!("-t{THREADS}"))
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

fn parse_wrk(text: &str) -> Option<WrkResult> {
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let requests_per_s = field("Requests/sec:")?.parse().ok()?;
    let p50_ms = duration_ms(field("50%")?)?;
    let p99_ms = duration_ms(field("99%")?)?;
    let non_2xx: u64 = field("Non-2xx or 3xx responses:").map_or(Some(0), |v| v.parse().ok())?;
    // "Socket errors: connect 0, read 0, write 0, timeout 0"
    let socket: u64 = field("Socket errors:").map_or(0, |v| {
        v.split(',')
            .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    });
    Some(WrkResult {
        requests_per_s,
        p50_ms,
        p99_ms,
        errors: non_2xx + socket,
    })
}

/// wrk's durations: `812.00us`, `1.23ms`, `2.01s`.
fn duration_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    match unit {
        "us" => Some(n / 1000.0),
        "ms" => Some(n),
        "s" => Some(n * 1000.0),
        "m" => Some(n * 60_000.0),
        _ => None,
    }
}

/// nginx answering every request with a fixed 200 (the poll's empty answer), started in
/// `prefix` as the cluster scenario's proxy is (`processes::Nginx`).
async fn fixed_nginx(bin: &Path, prefix: &Path) -> Result<Nginx> {
    let port = processes::free_port()?;
    let p = prefix.display();
    let conf = format!(
        "worker_processes auto;\n\
         pid {p}/nginx.pid;\n\
         error_log {p}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         access_log off;\n\
         keepalive_requests 100000000;\n\
         client_body_temp_path {p}/client_body;\n\
         proxy_temp_path {p}/proxy;\n\
         fastcgi_temp_path {p}/fastcgi;\n\
         uwsgi_temp_path {p}/uwsgi;\n\
         scgi_temp_path {p}/scgi;\n\
         server {{\n\
         listen 127.0.0.1:{port};\n\
         location / {{ default_type application/json; return 200 '{{\"jobs\":[]}}'; }}\n\
         }}\n}}\n"
    );
    Nginx::launch(bin, prefix, &conf, vec![port], "/").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read_with_its_units() {
        let out = "Running 3s test @ http://127.0.0.1:1/agent/v1/poll\n\
  2 threads and 64 connections\n\
  Thread Stats   Avg      Stdev     Max   +/- Stdev\n\
    Latency     1.02ms  512.00us  12.00ms   80.00%\n\
  Latency Distribution\n\
     50%  812.00us\n\
     75%    1.10ms\n\
     90%    1.80ms\n\
     99%    3.20ms\n\
  123456 requests in 3.00s, 20.00MB read\n\
  Socket errors: connect 0, read 2, write 0, timeout 1\n\
  Non-2xx or 3xx responses: 4\n\
Requests/sec:  41152.00\n\
Transfer/sec:      6.67MB\n";
        let r = parse_wrk(out).expect("parsed");
        assert_eq!(r.requests_per_s, 41152.0);
        assert!((r.p50_ms - 0.812).abs() < 1e-9);
        assert_eq!(r.p99_ms, 3.2);
        assert_eq!(r.errors, 7);
        assert_eq!(duration_ms("2.5s"), Some(2500.0));
        assert_eq!(duration_ms("nonsense"), None);
    }
}
