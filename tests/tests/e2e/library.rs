//! The shipped library (`library/`): imported at start with `--library`, and its Debian entries
//! run by a real agent on this very machine where they need no network: detection, versions
//! (from apt's lists), task tests and get scripts, in a detection-only session that changes
//! nothing. (The Windows entries are checked for schema by the server's unit tests and for
//! PowerShell syntax by `.ci/library-check`.)

use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use upkeep_tests::*;

const T: Duration = Duration::from_secs(90);

fn library_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../library")
}

/// What dpkg says of a package here: its version when installed.
fn dpkg_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Abbrev} ${Version}", package])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut words = text.split_whitespace();
    (words.next() == Some("ii")).then(|| words.next().map(String::from))?
}

fn apt_candidate(package: &str) -> Option<String> {
    let out = Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: ").map(String::from))
        .filter(|c| c != "(none)")
}

fn this_zone() -> String {
    std::fs::read_to_string("/etc/timezone")
        .map(|z| z.trim().to_string())
        .unwrap_or_else(|_| {
            std::fs::read_link("/etc/localtime")
                .map(|p| {
                    let p = p.display().to_string();
                    p.split("zoneinfo/").nth(1).unwrap_or(&p).to_string()
                })
                .unwrap_or_default()
        })
}

async fn ids_by_name(
    s: &TestServer,
    token: &str,
    list: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let d = s
        .gql(
            token,
            &format!("{{ {list}(first: 100) {{ edges {{ node {{ id name }} }} }} }}"),
            json!({}),
        )
        .await?;
    Ok(d[list]["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["node"]["name"].as_str().unwrap_or("").to_string(),
                e["node"]["id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect())
}

fn id_of<'a>(all: &'a [(String, String)], name: &str) -> &'a str {
    all.iter()
        .find(|(n, _)| n == name)
        .map(|(_, id)| id.as_str())
        .unwrap_or_else(|| panic!("{name} is not in {all:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_entries_of_the_library_run_on_a_real_agent() -> anyhow::Result<()> {
    if dpkg_version("dpkg").is_none() {
        // Only Debian-based hosts can run these entries; CI runs on one.
        anyhow::bail!("this test needs a Debian-based host (dpkg)");
    }
    let s = TestServer::start_with(|c| c.library = Some(library_dir())).await?;
    let admin = s.admin().await?;
    let tenant = s.create_tenant(&admin, "Acme").await?;
    let key = s.enrollment_key(&admin, &tenant).await?;
    let _agent = TestAgent::start(&s.url, &key, "lib-pc").await?;
    let computer = s.computer_id(&admin, "lib-pc").await?;
    s.wait_online(&admin, &computer).await?;

    let software = ids_by_name(&s, &admin, "software").await?;
    let tasks = ids_by_name(&s, &admin, "maintenanceTasks").await?;
    assert!(
        software.len() >= 7 && tasks.len() >= 5,
        "{software:?} {tasks:?}"
    );
    let deploy = |input: Value| {
        let mut input = input;
        input["tenantId"] = json!(tenant);
        input["target"] = json!({"kind": "ALL_COMPUTERS"});
        s.create_deployment(&admin, input)
    };
    for name in ["curl", "htop", "unattended-upgrades"] {
        deploy(json!({"softwareId": id_of(&software, name), "desiredState": "INSTALLED_ANY"}))
            .await?;
    }
    let zone = this_zone();
    deploy(
        json!({"maintenanceTaskId": id_of(&tasks, "Set time zone (Debian)"),
        "taskMode": "MONITOR", "parameters": {"zone": zone}}),
    )
    .await?;
    deploy(
        json!({"maintenanceTaskId": id_of(&tasks, "Ensure a local account is absent (Debian)"),
        "taskMode": "AUDIT", "parameters": {"account": "upkeep-no-such-user"}}),
    )
    .await?;

    let id = s
        .start_session(&admin, &computer, json!({"detectionOnly": true}))
        .await?;
    s.wait_status(&admin, &id, &["PASSED", "FAILED"], T).await?;
    let d = s
        .gql(
            &admin,
            "query($id: ID!) { maintenanceSession(id: $id) { status statusReason
               actions { name status compliance detectedVersion currentValue reason }
               logs { message } } }",
            json!({"id": id}),
        )
        .await?;
    let session = &d["maintenanceSession"];
    assert_eq!(session["status"], "PASSED", "{session:#}");
    let action = |name: &str| -> Value {
        session["actions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no action {name}: {session:#}"))
    };
    // Detection says what dpkg says.
    for package in ["curl", "htop", "unattended-upgrades"] {
        let a = action(package);
        match dpkg_version(package) {
            Some(v) => {
                assert_eq!(a["detectedVersion"], v.as_str(), "{a:#}");
                assert_eq!(a["compliance"], "COMPLIANT", "{a:#}");
            }
            None => {
                assert!(a["detectedVersion"].is_null(), "{a:#}");
                assert_eq!(a["compliance"], "NON_COMPLIANT", "{a:#}");
            }
        }
    }
    // The versions script reads apt's lists: the candidate, or a failure that says so.
    let logs: Vec<&str> = session["logs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["message"].as_str())
        .collect();
    let expected = match apt_candidate("curl") {
        Some(c) => format!("curl: 1 version(s) from its versions script, newest {c}"),
        None => "curl: versions script failed (".to_string(),
    };
    assert!(
        logs.iter().any(|l| l.starts_with(&expected)),
        "{expected}: {logs:#?}"
    );
    // The task tests and get script read this machine and change nothing.
    let tz = action("Set time zone (Debian)");
    // The get script's value is shown as it is: the zone is a declared STRING, not a secret
    // (a free-form value this long would be masked).
    assert_eq!(tz["currentValue"], zone.as_str(), "{tz:#}");
    assert_eq!(tz["compliance"], "COMPLIANT", "{tz:#}");
    let account = action("Ensure a local account is absent (Debian)");
    assert_eq!(account["compliance"], "COMPLIANT", "{account:#}");
    Ok(())
}
