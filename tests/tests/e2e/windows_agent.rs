//! The Windows agent: `upkeep-agent.exe` (built for `x86_64-pc-windows-gnu` from the same
//! crate) runs under Wine against the real server. It enrolls, runs `CMD` detection and install
//! scripts (one software keeps its state in a file, one in the registry with `reg add`, detected
//! with `reg query`), and an install exiting 1641 leads to the reboot step, whose command the
//! agent runs through `cmd.exe`. And a Linux agent given a `CMD` script fails the action with a
//! clear message. Without Wine these tests fail (see `upkeep_tests::wine`), unless
//! `UPKEEP_SKIP_WINE=1`.

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use upkeep_tests::wine::{Wine, WineAgent, windows_path};
use upkeep_tests::{E2eServer, TestAgent, TestServer, wait_for};

const T: Duration = Duration::from_secs(120);

/// Held by the tests that run sessions on a Wine agent and by the one that marks a reboot
/// pending: the Wine prefix (and so its registry) is shared by every test of this binary, and a
/// pending reboot would make a session reboot first.
static WINE_REGISTRY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A software whose CMD scripts keep its version in `file`.
fn file_software(tenant: &str, file: &Path) -> Value {
    let f = windows_path(file);
    json!({"name": "Tool", "tenantId": tenant,
        "detectionScript": {"language": "CMD", "body": format!("@echo off\nif exist \"{f}\" type \"{f}\"\nexit /b 0\n")},
        "versions": [{"version": "1.0", "installScript": {"language": "CMD",
            "body": format!("@echo off\n> \"{f}\" echo 1.0\necho installed Tool 1.0\nexit /b 0\n")}}]})
}

/// A software whose install writes `Version` under `key` in the registry and exits 1641
/// ("reboot initiated"); detection reads it back with `reg query`.
fn registry_software(tenant: &str, key: &str) -> Value {
    let detect = format!(
        "@echo off\nfor /f \"tokens=3\" %%v in ('reg query \"{key}\" /v Version 2^>nul ^| find \"Version\"') do echo %%v\nexit /b 0\n"
    );
    // The owner's name takes non-ASCII letters through the batch file (written in the console's
    // code page) into the registry and back out of `reg query` (decoded from it).
    let install = format!(
        "@echo off\nreg add \"{key}\" /v Owner /t REG_SZ /d \"Café Müller\" /f >nul\nreg query \"{key}\" /v Owner\nreg add \"{key}\" /v Version /t REG_SZ /d 2.0 /f >nul\nif errorlevel 1 exit /b 1\nexit /b 1641\n"
    );
    json!({"name": "RegApp", "tenantId": tenant,
        "detectionScript": {"language": "CMD", "body": detect},
        "versions": [{"version": "2.0", "installScript": {"language": "CMD", "body": install}}]})
}

/// Waits for the agent's computer to enroll; Wine's first start in a fresh prefix is slow, so
/// longer than the kit's 20 s. On failure, says what the agent logged.
async fn enrolled(
    s: &TestServer,
    admin: &str,
    hostname: &str,
    log: impl Fn() -> String,
) -> anyhow::Result<String> {
    let found = wait_for(&format!("computer {hostname} to enroll"), T, || async {
        let d = s
            .gql(
                admin,
                "query($s: String) { computers(search: $s) { edges { node { id hostname } } } }",
                json!({"s": hostname}),
            )
            .await?;
        Ok(d["computers"]["edges"].as_array().and_then(|e| {
            e.iter()
                .find(|n| n["node"]["hostname"] == hostname)
                .and_then(|n| n["node"]["id"].as_str().map(str::to_owned))
        }))
    })
    .await;
    match found {
        Ok(id) => Ok(id),
        Err(e) => bail!("{e:#}\nthe agent's log:\n{}", log()),
    }
}

fn action<'a>(session: &'a Value, name: &str) -> &'a Value {
    session["actions"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|a| a["name"].as_str().is_some_and(|n| n.contains(name)))
        })
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_windows_agent_runs_cmd_and_registry_scripts_under_wine() -> anyhow::Result<()> {
    let Some(wine) = Wine::get()? else {
        return Ok(());
    };
    let _registry = WINE_REGISTRY.lock().await;
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Windows shop").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let dir = tempfile::tempdir()?;
    let run = format!(
        "{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    );
    let reg_key = format!(r"HKLM\Software\UpkeepE2E\{run}");
    let rebooted = dir.path().join("rebooted.txt");
    let reboot_command = format!("echo rebooted> \"{}\"", windows_path(&rebooted));
    let mut agent = WineAgent::start(
        wine,
        &s.url,
        &key,
        "win-desk",
        &["--reboot-command", &reboot_command],
    )?;
    let computer = enrolled(&s, &admin, "win-desk", || agent.log()).await?;
    s.wait_online(&admin, &computer).await?;
    let os = s
        .gql(
            &admin,
            "query($id: ID!) { computer(id: $id) { os agentVersion } }",
            json!({"id": computer}),
        )
        .await?;
    assert!(
        os["computer"]["os"]
            .as_str()
            .is_some_and(|os| os.contains("Windows")),
        "the OS comes from the registry: {os:#}"
    );

    let tool_file = dir.path().join("tool.version");
    for software in [
        file_software(&tenant, &tool_file),
        registry_software(&tenant, &reg_key),
    ] {
        let sw = s.create_software(&admin, software).await?;
        s.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"}))
            .await?;
    }

    let id = s.start_session(&admin, &computer, json!({})).await?;
    let done = s
        .wait_status(&admin, &id, &["PASSED", "FAILED", "CANCELLED"], T)
        .await
        .with_context(|| format!("the agent's log:\n{}", agent.log()))?;
    assert_eq!(
        done["status"],
        "PASSED",
        "{done:#}\nagent log:\n{}",
        agent.log()
    );
    assert_eq!(action(&done, "Tool")["status"], "SUCCEEDED", "{done:#}");
    assert_eq!(action(&done, "RegApp")["status"], "SUCCEEDED", "{done:#}");
    // 1641 ("reboot initiated") counts as "reboot needed": the reboot step ran, through cmd.exe.
    assert_eq!(done["rebootRequired"], true, "{done:#}");
    assert!(done["rebootedAt"].is_string(), "rebooted: {done:#}");
    wait_for("the reboot command to run", T, || async {
        Ok(std::fs::read_to_string(&rebooted)
            .ok()
            .filter(|t| t.trim() == "rebooted")
            .map(|_| ()))
    })
    .await?;
    assert_eq!(std::fs::read_to_string(&tool_file)?.trim(), "1.0");
    let outputs = s
        .gql(&admin, "query($id: ID!) { maintenanceSession(id: $id) { actions { name output { stdout exitCode } } } }", json!({"id": id}))
        .await?;
    let reg_output = action(&outputs["maintenanceSession"], "RegApp")["output"].clone();
    assert_eq!(reg_output["exitCode"], 1641, "{outputs:#}");
    assert!(
        reg_output["stdout"]
            .as_str()
            .is_some_and(|o| o.contains("REG_SZ") && o.contains("Café Müller")),
        "the registry got the letters, and the agent read them back: {outputs:#}"
    );
    // The registry holds the letters themselves (not their UTF-8 bytes read as code page
    // characters): `reg export` writes UTF-16, independent of any code page.
    let export = dir.path().join("regapp.reg");
    let exported = wine
        .command("reg")
        .args(["export", &reg_key])
        .arg(windows_path(&export))
        .output()
        .await?;
    assert!(exported.status.success(), "reg export: {exported:?}");
    let units: Vec<u16> = std::fs::read(&export)?
        .chunks_exact(2)
        .map(|u| u16::from_le_bytes([u[0], u[1]]))
        .collect();
    let exported = String::from_utf16_lossy(&units);
    assert!(exported.contains("\"Owner\"=\"Café Müller\""), "{exported}");
    // The install really wrote the registry of the Windows the agent runs on.
    let query = wine
        .command("reg")
        .args(["query", &reg_key, "/v", "Version"])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&query.stdout);
    assert!(
        text.contains("REG_SZ") && text.contains("2.0"),
        "reg query: {text}"
    );

    // A second session detects both as installed: the registry detection reads "2.0" back.
    let again = s.start_session(&admin, &computer, json!({})).await?;
    let done = s
        .wait_status(&admin, &again, &["PASSED", "FAILED", "CANCELLED"], T)
        .await?;
    assert_eq!(done["status"], "PASSED", "{done:#}");
    for (name, version) in [("Tool", "1.0"), ("RegApp", "2.0")] {
        let a = action(&done, name);
        assert_eq!(a["kind"], "NO_ACTION", "{done:#}");
        assert_eq!(a["detectedVersion"], version, "{done:#}");
    }
    assert!(agent.running(), "the agent still runs:\n{}", agent.log());
    agent.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linux_agent_fails_a_cmd_step_saying_it_needs_windows() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Mixed").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let _agent = TestAgent::start(&s.url, &key, "linux-box").await?;
    let computer = s.computer_id(&admin, "linux-box").await?;
    s.wait_online(&admin, &computer).await?;
    let sw = s
        .create_software(
            &admin,
            json!({"name": "WinOnly", "tenantId": tenant,
                "detectionScript": {"language": "SHELL", "body": "exit 0"},
                "versions": [{"version": "1.0", "installScript": {"language": "CMD", "body": "@echo off\nexit /b 0"}}]}),
        )
        .await?;
    s.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"}))
        .await?;
    let id = s.start_session(&admin, &computer, json!({})).await?;
    let done = s
        .wait_status(&admin, &id, &["PASSED", "FAILED", "CANCELLED"], T)
        .await?;
    assert_eq!(done["status"], "FAILED", "{done:#}");
    let a = action(&done, "WinOnly");
    assert_eq!(a["status"], "FAILED", "{done:#}");
    assert!(
        a["resultMessage"]
            .as_str()
            .is_some_and(|m| m.contains("CMD scripts need a Windows agent")),
        "{done:#}"
    );
    Ok(())
}

/// Processes whose command line (as Wine shows it to Linux) contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|line| line.contains(needle))
        .collect()
}

/// A CMD step that outlives its time limit is killed together with what it started: the
/// agent's job object also ends the `ping` the script left running in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_cmd_script_is_killed_with_everything_it_started() -> anyhow::Result<()> {
    let Some(wine) = Wine::get()? else {
        return Ok(());
    };
    let _registry = WINE_REGISTRY.lock().await;
    let s = TestServer::start_with(|c| c.job_timeout_seconds = Some(6)).await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Slow").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let mut agent = WineAgent::start(wine, &s.url, &key, "win-slow", &[])?;
    let computer = enrolled(&s, &admin, "win-slow", || agent.log()).await?;
    s.wait_online(&admin, &computer).await?;
    // Counts no other process uses, so the check below finds only this script's pings.
    let n = 600 + std::process::id() % 300;
    // Wine shows them to Linux as `ping -n N …` or `C:\…\ping.exe -n N …`.
    let (background, foreground) = (
        format!("-n {n} 127.0.0.1"),
        format!("-n {} 127.0.0.1", n + 1),
    );
    let install =
        format!("@echo off\nstart \"\" /b ping {background} >nul\nping {foreground} >nul\n");
    let sw = s
        .create_software(
            &admin,
            json!({"name": "Hangs", "tenantId": tenant,
                "detectionScript": {"language": "CMD", "body": "@exit /b 0"},
                "versions": [{"version": "1.0", "installScript": {"language": "CMD", "body": install}}]}),
        )
        .await?;
    s.create_deployment(&admin, json!({"tenantId": tenant, "target": {"kind": "ALL_COMPUTERS"}, "softwareId": sw, "desiredState": "INSTALLED_LATEST"}))
        .await?;
    let id = s.start_session(&admin, &computer, json!({})).await?;
    wait_for("the script and its background ping to run", T, || async {
        Ok(
            (!processes_with(&background).is_empty() && !processes_with(&foreground).is_empty())
                .then_some(()),
        )
    })
    .await
    .with_context(|| format!("the agent's log:\n{}", agent.log()))?;
    let done = s
        .wait_status(&admin, &id, &["PASSED", "FAILED", "CANCELLED"], T)
        .await?;
    assert_eq!(done["status"], "FAILED", "{done:#}");
    let a = action(&done, "Hangs");
    assert!(
        a["resultMessage"]
            .as_str()
            .is_some_and(|m| m.contains("timed out")),
        "{done:#}"
    );
    // Both pings would run for ten minutes; the job object ends them now.
    wait_for(
        "the script's processes to end",
        Duration::from_secs(30),
        || async {
            Ok(
                (processes_with(&background).is_empty() && processes_with(&foreground).is_empty())
                    .then_some(()),
            )
        },
    )
    .await
    .with_context(|| format!("still running: {:?}", processes_with(&format!("-n {n}"))))?;
    agent.stop().await;
    Ok(())
}

/// Removes the test's service however the test ends, so that no agent keeps running in the
/// shared Wine prefix.
struct ServiceGuard<'a>(&'a Wine);

impl Drop for ServiceGuard<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .std_command(self.0.agent_exe())
            .args(["service", "uninstall"])
            .output();
    }
}

async fn computer_online(s: &TestServer, admin: &str, computer: &str) -> anyhow::Result<bool> {
    let d = s
        .gql(
            admin,
            "query($id: ID!) { computer(id: $id) { online } }",
            json!({"id": computer}),
        )
        .await?;
    Ok(d["computer"]["online"].as_bool().unwrap_or(false))
}

/// `service install` registers the agent with Wine's service control manager, which starts it
/// as `service run`: it enrolls with the key kept in the state directory, which is not on the
/// service's command line. `service uninstall` stops it (it goes offline) and removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_installs_runs_and_uninstalls_as_a_windows_service() -> anyhow::Result<()> {
    let Some(wine) = Wine::get()? else {
        return Ok(());
    };
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Serviced").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let exe = wine.agent_exe();
    // A service left by an aborted run of this test would make `install` fail.
    let _ = wine
        .command(exe)
        .args(["service", "uninstall"])
        .output()
        .await;
    let _guard = ServiceGuard(wine);
    let install = wine
        .command(exe)
        .args([
            "service",
            "install",
            "--server",
            &s.url,
            "--enrollment-key",
            &key,
        ])
        .args([
            "--hostname",
            "win-svc",
            "--machine-id",
            "win-svc",
            "--poll-wait-seconds",
            "5",
        ])
        .arg("--state-dir")
        .arg(windows_path(&state))
        .output()
        .await?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );
    assert!(install.status.success(), "service install: {said}");
    assert!(
        said.contains("UpkeepAgent is installed and started"),
        "{said}"
    );

    let image = wine
        .command("reg")
        .args([
            "query",
            r"HKLM\System\CurrentControlSet\Services\UpkeepAgent",
            "/v",
            "ImagePath",
        ])
        .output()
        .await?;
    let image = String::from_utf8_lossy(&image.stdout);
    assert!(
        image.contains("service run") && image.contains("--state-dir"),
        "{image}"
    );
    assert!(
        !image.contains(&key),
        "the key stays off the service command line: {image}"
    );
    assert_eq!(std::fs::read_to_string(state.join("enrollment-key"))?, key);

    let log = || std::fs::read_to_string(state.join("agent.log")).unwrap_or_default();
    let computer = enrolled(&s, &admin, "win-svc", &log).await?;
    s.wait_online(&admin, &computer).await?;
    assert!(log().contains("service started"), "{}", log());

    let uninstall = wine
        .command(exe)
        .args(["service", "uninstall"])
        .output()
        .await?;
    assert!(
        uninstall.status.success(),
        "service uninstall: {}{}",
        String::from_utf8_lossy(&uninstall.stdout),
        String::from_utf8_lossy(&uninstall.stderr)
    );
    wait_for(
        "the stopped service's computer to go offline",
        T,
        || async { Ok((!computer_online(&s, &admin, &computer).await?).then_some(())) },
    )
    .await?;
    assert!(log().contains("asks the agent to stop"), "{}", log());
    let gone = wine
        .command("reg")
        .args([
            "query",
            r"HKLM\System\CurrentControlSet\Services\UpkeepAgent",
        ])
        .output()
        .await?;
    assert!(!gone.status.success(), "the service is removed");
    Ok(())
}

/// Runs `reg ARGS` in the tests' Wine prefix and fails with its output when it fails.
async fn reg(wine: &Wine, args: &[&str]) -> anyhow::Result<()> {
    let out = wine.command("reg").args(args).output().await?;
    anyhow::ensure!(
        out.status.success(),
        "reg {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The Windows side of inventory and pending reboots, read from Wine's registry: a program
/// under the Uninstall key is listed with its version and publisher, and Component Based
/// Servicing's `RebootPending` key makes `Computer.rebootPending` true until it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_windows_agent_reports_registry_inventory_and_a_pending_reboot() -> anyhow::Result<()> {
    let Some(wine) = Wine::get()? else {
        return Ok(());
    };
    let s = TestServer::start().await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Windows inventory").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let run = format!(
        "UpkeepE2E{}{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    );
    let program = format!(r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall\{run}");
    reg(
        wine,
        &[
            "add",
            &program,
            "/v",
            "DisplayName",
            "/d",
            &format!("{run} Tool"),
            "/f",
        ],
    )
    .await?;
    reg(
        wine,
        &["add", &program, "/v", "DisplayVersion", "/d", "4.2.1", "/f"],
    )
    .await?;
    reg(
        wine,
        &[
            "add",
            &program,
            "/v",
            "Publisher",
            "/d",
            "Upkeep Tests",
            "/f",
        ],
    )
    .await?;
    let mut agent = WineAgent::start(wine, &s.url, &key, "win-inv", &[])?;
    let computer = enrolled(&s, &admin, "win-inv", || agent.log()).await?;
    let q = "query($c: ID!, $s: String) { computer(id: $c) { rebootPending inventory { osName } installedSoftware(search: $s) { edges { node { name version publisher } } } } }";
    let listed = wait_for("the Uninstall key in the inventory", T, || async {
        let d = s.gql(&admin, q, json!({"c": computer, "s": run})).await?;
        let edges = d["computer"]["installedSoftware"]["edges"].clone();
        Ok(edges.as_array().filter(|e| !e.is_empty()).map(|_| d))
    })
    .await?;
    let node = &listed["computer"]["installedSoftware"]["edges"][0]["node"];
    assert_eq!(node["name"], format!("{run} Tool"), "{listed:#}");
    assert_eq!(node["version"], "4.2.1");
    assert_eq!(node["publisher"], "Upkeep Tests");
    assert!(
        listed["computer"]["inventory"]["osName"]
            .as_str()
            .is_some_and(|n| n.contains("Windows")),
        "{listed:#}"
    );
    assert_eq!(
        listed["computer"]["rebootPending"], false,
        "nothing is pending yet"
    );

    let pending =
        r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending";
    let _registry = WINE_REGISTRY.lock().await;
    reg(wine, &["add", pending, "/f"]).await?;
    let seen = wait_for("rebootPending from the CBS key", T, || async {
        let d = s.gql(&admin, q, json!({"c": computer, "s": run})).await?;
        Ok((d["computer"]["rebootPending"] == true).then_some(()))
    })
    .await;
    let removed = reg(wine, &["delete", pending, "/f"]).await;
    seen.with_context(|| agent.log())?;
    removed?;
    wait_for("rebootPending cleared with the key", T, || async {
        let d = s.gql(&admin, q, json!({"c": computer, "s": run})).await?;
        Ok((d["computer"]["rebootPending"] == false).then_some(()))
    })
    .await?;
    reg(wine, &["delete", &program, "/f"]).await?;
    agent.stop().await;
    Ok(())
}
