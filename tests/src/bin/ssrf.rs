//! SSRF scenarios for webhooks, run inside a network namespace of their own
//! (`unshare -n -- upkeep-ssrf-under-test`, see `tests/tests/e2e/security_net.rs`): only
//! loopback exists there, so no address the server tries can leave the machine. It refuses to
//! run anywhere else. Prints one `ok:` line per scenario and `all SSRF scenarios passed`; exits
//! non-zero on the first failure.

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use upkeep_core::domain::Id;
use upkeep_core::webhook::{Delivery, DeliveryStatus, Webhook, WebhookEvent};
use upkeep_tests::{E2eServer, TestServer, wait_for};

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("FAILED: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => {
            println!("all SSRF scenarios passed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Makes sure this is a namespace with loopback only, and brings loopback up.
fn isolate() -> Result<()> {
    // /proc/self/net/dev lists this process's namespace (/sys/class/net may show the host's).
    let dev =
        std::fs::read_to_string("/proc/self/net/dev").context("cannot list network interfaces")?;
    let interfaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    ensure!(
        interfaces == ["lo"],
        "refusing to run outside a network namespace of its own (interfaces: {interfaces:?}); \
         run it as `unshare -n -- upkeep-ssrf-under-test`"
    );
    let status = std::process::Command::new("/usr/sbin/ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .context("cannot run /usr/sbin/ip")?;
    ensure!(status.success(), "`ip link set lo up` failed: {status}");
    Ok(())
}

/// Loopback listeners on one port (IPv4 and, when available, IPv6) that count every
/// connection they accept.
struct Trap {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl Trap {
    async fn start() -> Result<Trap> {
        let v4 = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = v4.local_addr()?.port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let mut listeners = vec![v4];
        if let Ok(v6) = tokio::net::TcpListener::bind(("::1", port)).await {
            listeners.push(v6);
        }
        for l in listeners {
            let accepted = accepted.clone();
            tokio::spawn(async move {
                while let Ok((sock, peer)) = l.accept().await {
                    eprintln!("trap: connection from {peer}");
                    accepted.fetch_add(1, Ordering::SeqCst);
                    drop(sock);
                }
            });
        }
        Ok(Trap { port, accepted })
    }

    /// How many connections came before now: connects once itself and waits until the trap
    /// has accepted it (accepts are in arrival order), then subtracts it.
    async fn count_so_far(&self) -> Result<usize> {
        let before = self.accepted.load(Ordering::SeqCst);
        let _probe = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        wait_for(
            "the trap to accept its probe",
            Duration::from_secs(10),
            || async { Ok((self.accepted.load(Ordering::SeqCst) > before).then_some(())) },
        )
        .await?;
        Ok(self.accepted.load(Ordering::SeqCst) - 1)
    }
}

async fn run() -> Result<()> {
    isolate()?;
    let trap = Trap::start().await?;
    let p = trap.port;
    let s = TestServer::start_with(|c| c.allow_private_webhooks = false).await?;
    let admin = s.admin().await?;
    let create = "mutation($u: String!) { createWebhook(input: {url: $u, events: [COMPUTER_ENROLLED]}) { webhook { id url } } }";

    // 1. Creation refuses every spelling of an inside address, and user names.
    for url in [
        format!("http://127.0.0.1:{p}\\@8.8.8.8/"),
        format!("http://127.0.0.1:{p}\\@8.8.8.8:{p}/hook"),
        format!("http://[::ffff:0.0.0.0]:{p}/"),
        format!("http://[::ffff:127.0.0.1]:{p}/"),
        "http://[::ffff:169.254.169.254]/latest/meta-data/".to_string(),
        format!("http://[::ffff:7f00:1]:{p}/"),
        format!("http://[64:ff9b::7f00:1]:{p}/"),
        format!("http://[64:ff9b:1::7f00:1]:{p}/"),
        format!("http://[::127.0.0.1]:{p}/"),
        format!("http://[2002:7f00:1::]:{p}/"),
        format!("http://[2001::1]:{p}/"),
        format!("http://0x7f.1:{p}/"),
        format!("http://2130706433:{p}/"),
        format!("http://0.0.0.0:{p}/"),
        format!("http://[::]:{p}/"),
        format!("http://localhost:{p}/"),
        format!("http://user@8.8.8.8:{p}/"),
        format!("http://8.8.8.8:{p}@127.0.0.1:{p}/"),
    ] {
        let body = s.gql_raw(Some(&admin), create, json!({ "u": url })).await?;
        let err = &body["errors"][0];
        ensure!(
            err["extensions"]["code"] == "BAD_USER_INPUT" && err["extensions"]["field"] == "url",
            "{url} was not refused as BAD_USER_INPUT on `url`: {body}"
        );
        println!("ok: creation refuses {url}: {}", err["message"]);
    }

    // 2. Connect time: webhooks created with a public address, then re-pointed inside behind
    //    the API's back (what DNS rebinding does to a name), are never connected to.
    let mut hooks = Vec::new();
    for inside in [
        format!("http://127.0.0.1:{p}/hook"),
        format!("http://[::ffff:127.0.0.1]:{p}/hook"),
        format!("http://localhost:{p}/hook"),
    ] {
        let d = s
            .gql(
                &admin,
                create,
                json!({ "u": format!("http://8.8.8.8:{p}/hook") }),
            )
            .await?;
        let id: Id = d["createWebhook"]["webhook"]["id"]
            .as_str()
            .context("webhook id")?
            .parse()?;
        let store = &s.app().store;
        let mut w: Webhook = store.get(&id).await?.context("the webhook is stored")?;
        w.url = inside.clone();
        store
            .write(|tx| tx.put::<_, ()>(&w))
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        hooks.push((id, inside));
    }
    let deliveries = s
        .app()
        .webhooks
        .deliveries(
            upkeep_server::ids::fresh(),
            WebhookEvent::ComputerEnrolled,
            json!({}),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(deliveries.len() == hooks.len(), "one delivery per webhook");
    s.app()
        .store
        .write(|tx| {
            for d in &deliveries {
                tx.put::<_, ()>(d)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    s.app().store.flush().await?;
    s.app().webhooks.wake();

    for d in &deliveries {
        let url = &hooks
            .iter()
            .find(|h| h.0 == d.webhook_id)
            .context("a delivery for each hook")?
            .1;
        let done = wait_for(
            &format!("the delivery to {url} to be attempted"),
            Duration::from_secs(30),
            || async {
                let now: Option<Delivery> = s.app().store.get(&d.id).await?;
                Ok(now.filter(|d| d.attempts >= 1))
            },
        )
        .await?;
        let error = done.last_error.clone().unwrap_or_default();
        ensure!(
            error.starts_with("refused to connect:") && error.contains("not globally routable"),
            "the delivery to {url} was not refused: {done:?}"
        );
        ensure!(
            done.status == DeliveryStatus::Pending
                && done
                    .last_attempt_at
                    .is_some_and(|t| done.next_attempt_at > t),
            "a refused delivery follows the retry policy: {done:?}"
        );
        println!("ok: {url} refused at connect time: {error}");
    }
    let connections = trap.count_so_far().await?;
    if connections != 0 {
        bail!("the server connected to the loopback trap {connections} time(s)");
    }
    println!("ok: the loopback trap saw no connection");
    let addr: SocketAddr = s.addr;
    println!("ok: server on {addr} stopping");
    let mut s = s;
    s.stop().await;
    Ok(())
}
