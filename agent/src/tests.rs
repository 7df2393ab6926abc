//! The whole agent against [`FakeServer`]: enrollment, the poll loop, exactly-once runs and
//! result delivery across outages, restarts and stops.

use crate::fake_server::{FakeServer, GOOD_KEY};
use crate::{AgentConfig, STOPPED_ERROR, run};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use upkeep_agent_protocol::{JobOutcome, JobResult};

type TestResult = anyhow::Result<()>;

struct RunningAgent {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningAgent {
    fn start(config: AgentConfig) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(config, async move {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.task).await??
    }

    /// Ends the agent the way a crash would: no cleanup of its own.
    async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn config(server: &FakeServer, state_dir: &Path) -> AgentConfig {
    let mut config = AgentConfig::new(server.url.clone(), state_dir);
    config.enrollment_key = Some(GOOD_KEY.to_owned());
    config.machine_id = Some("m-1".to_owned());
    config.hostname = Some("pc-1".to_owned());
    config.poll_wait_seconds = 1;
    config
}

/// Polls `condition` until it holds or 20 s pass.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn step_job(id: &str, body: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "sessionId": "s-1", "leaseSeconds": 60, "kind": "step", "label": "install",
        "script": {"language": "shell", "body": body, "timeoutSeconds": 60},
        "parameters": {"greeting": "hello"},
    })
}

/// A script that appends a line to `counter` each time it runs.
fn counting_body(counter: &Path) -> String {
    format!(
        "echo ran >> '{}'; echo \"$UPKEEP_PARAM_GREETING\"",
        counter.display()
    )
}

fn runs(counter: &Path) -> usize {
    std::fs::read_to_string(counter)
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

fn results_for(server: &FakeServer, job_id: &str) -> Vec<JobResult> {
    server
        .state()
        .results
        .iter()
        .filter(|(id, _)| id == job_id)
        .map(|(_, r)| r.clone())
        .collect()
}

fn running_marker_exists(state_dir: &Path) -> bool {
    std::fs::read_dir(state_dir.join("jobs"))
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".running"))
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn enrolls_runs_a_step_and_answers_a_repeat_from_the_spool() -> TestResult {
    let server = FakeServer::start().await?;
    let dir = tempfile::tempdir()?;
    let state_dir = dir.path().join("state");
    let counter = dir.path().join("count");
    server
        .state()
        .queued
        .push_back(vec![step_job("j-1", &counting_body(&counter))]);
    let agent = RunningAgent::start(config(&server, &state_dir));

    eventually("the result arrives", || {
        !results_for(&server, "j-1").is_empty()
    })
    .await?;
    let first = results_for(&server, "j-1").remove(0);
    let JobOutcome::Step { outcome } = &first.outcome else {
        anyhow::bail!("not a step result: {first:?}")
    };
    assert_eq!(
        (outcome.exit_code, outcome.stdout.as_str()),
        (Some(0), "hello\n")
    );

    {
        let state = server.state();
        assert_eq!(state.enrollments.len(), 1);
        assert_eq!(
            (
                state.enrollments[0].hostname.as_str(),
                state.enrollments[0].machine_id.as_str()
            ),
            ("pc-1", "m-1")
        );
        assert!(
            state.polls[0].inventory.is_some(),
            "the first poll reports the inventory"
        );
        assert_eq!(state.polls[0].wait_seconds, 1);
    }
    let credentials = state_dir.join("credentials.json");
    assert_eq!(
        std::fs::metadata(&credentials)?.permissions().mode() & 0o777,
        0o600
    );

    // The server offers the same job again (say, it lost our answer): same result, no second run.
    server
        .state()
        .queued
        .push_back(vec![step_job("j-1", &counting_body(&counter))]);
    eventually("the result is sent again", || {
        results_for(&server, "j-1").len() == 2
    })
    .await?;
    assert_eq!(results_for(&server, "j-1")[1], first);
    assert_eq!(runs(&counter), 1);
    assert!(
        server
            .state()
            .polls
            .iter()
            .skip(1)
            .any(|p| p.inventory.is_none()),
        "unchanged inventory is not resent"
    );

    agent.stop().await
}

#[tokio::test]
async fn results_outlive_a_server_outage_and_an_agent_restart() -> TestResult {
    let server = FakeServer::start().await?;
    let dir = tempfile::tempdir()?;
    let state_dir = dir.path().join("state");
    let counter = dir.path().join("count");
    server.state().results_down = true;
    server
        .state()
        .queued
        .push_back(vec![step_job("j-1", &counting_body(&counter))]);
    let agent = RunningAgent::start(config(&server, &state_dir));
    eventually("delivery was tried twice", || {
        server.state().refused_results >= 2
    })
    .await?;
    agent.stop().await?;

    // Restarted without a key: the stored credentials are enough.
    let mut restarted = config(&server, &state_dir);
    restarted.enrollment_key = None;
    server.state().results_down = false;
    let agent = RunningAgent::start(restarted);
    eventually("the spooled result arrives", || {
        !results_for(&server, "j-1").is_empty()
    })
    .await?;
    assert_eq!(runs(&counter), 1);
    assert_eq!(server.state().enrollments.len(), 1);
    agent.stop().await
}

#[tokio::test]
async fn a_revoked_token_leads_to_a_new_enrollment() -> TestResult {
    let server = FakeServer::start().await?;
    let dir = tempfile::tempdir()?;
    let agent = RunningAgent::start(config(&server, dir.path()));
    eventually("the agent polls", || !server.state().polls.is_empty()).await?;

    server.state().tokens.clear();
    eventually("the agent enrolls again", || {
        server.state().enrollments.len() == 2
    })
    .await?;
    let polls = server.state().polls.len();
    eventually("the agent polls with its new token", || {
        server.state().polls.len() > polls
    })
    .await?;
    agent.stop().await
}

#[tokio::test]
async fn without_a_key_a_revoked_token_is_retried_not_fatal() -> TestResult {
    let server = FakeServer::start().await?;
    let dir = tempfile::tempdir()?;
    let agent = RunningAgent::start(config(&server, dir.path()));
    eventually("the agent polls", || !server.state().polls.is_empty()).await?;
    agent.stop().await?;

    server.state().tokens.clear();
    let mut keyless = config(&server, dir.path());
    keyless.enrollment_key = None;
    let agent = RunningAgent::start(keyless);
    eventually("the agent retries", || {
        server.state().unauthorized_calls >= 2
    })
    .await?;
    assert!(!agent.task.is_finished());
    assert_eq!(server.state().enrollments.len(), 1);
    agent.stop().await
}

#[tokio::test]
async fn a_refused_enrollment_key_stops_the_agent_with_an_error() -> TestResult {
    let server = FakeServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut config = config(&server, dir.path());
    config.enrollment_key = Some("wrong".to_owned());
    let outcome =
        tokio::time::timeout(Duration::from_secs(20), run(config, std::future::pending())).await?;
    let message = format!(
        "{:#}",
        outcome
            .err()
            .ok_or_else(|| anyhow::anyhow!("run succeeded"))?
    );
    assert!(message.contains("refused the enrollment key"), "{message}");

    let mut keyless = AgentConfig::new(server.url.clone(), dir.path().join("other"));
    keyless.poll_wait_seconds = 1;
    let outcome = run(keyless, std::future::pending()).await;
    let message = format!(
        "{:#}",
        outcome
            .err()
            .ok_or_else(|| anyhow::anyhow!("run succeeded"))?
    );
    assert!(message.contains("no enrollment key"), "{message}");
    Ok(())
}

#[tokio::test]
async fn a_reboot_is_reported_before_its_command_runs() -> TestResult {
    let server = FakeServer::start().await?;
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("rebooted");
    server.state().watch = Some(marker.clone());
    server.state().queued.push_back(vec![serde_json::json!({
        "id": "r-1", "sessionId": "s-1", "leaseSeconds": 60, "kind": "reboot",
    })]);
    let mut config = config(&server, &dir.path().join("state"));
    config.reboot_command = format!("touch '{}'", marker.display());
    let agent = RunningAgent::start(config);

    eventually("the reboot command runs", || marker.exists()).await?;
    let results = results_for(&server, "r-1");
    assert_eq!(
        results[0].outcome,
        JobOutcome::Reboot {
            started: true,
            error: None
        }
    );
    assert_eq!(
        server.state().watched,
        vec![false],
        "the result arrived before the command ran"
    );
    agent.stop().await
}

#[tokio::test]
async fn a_job_cut_short_by_a_stop_is_reported_failed() -> TestResult {
    let server = FakeServer::start().await?;
    let dir = tempfile::tempdir()?;
    let state_dir = dir.path().join("state");
    server
        .state()
        .queued
        .push_back(vec![step_job("j-1", "sleep 60")]);
    let agent = RunningAgent::start(config(&server, &state_dir));
    eventually("the job runs", || running_marker_exists(&state_dir)).await?;

    agent.stop().await?;
    let results = results_for(&server, "j-1");
    assert_eq!(results.len(), 1);
    assert_eq!(
        results[0].outcome,
        JobOutcome::Failed {
            error: STOPPED_ERROR.to_owned()
        }
    );
    Ok(())
}

#[tokio::test]
async fn a_job_running_at_a_crash_is_reported_failed_and_not_rerun() -> TestResult {
    let server = FakeServer::start().await?;
    let dir = tempfile::tempdir()?;
    let state_dir = dir.path().join("state");
    let counter = dir.path().join("count");
    let body = format!("{}; sleep 60", counting_body(&counter));
    server
        .state()
        .queued
        .push_back(vec![step_job("j-1", &body)]);
    let agent = RunningAgent::start(config(&server, &state_dir));
    eventually("the job runs", || runs(&counter) == 1).await?;
    agent.crash().await;

    // The server's lease has not run out yet, so it offers the job again.
    server
        .state()
        .queued
        .push_back(vec![step_job("j-1", &body)]);
    let agent = RunningAgent::start(config(&server, &state_dir));
    eventually("the failure is reported", || {
        !results_for(&server, "j-1").is_empty()
    })
    .await?;
    let expected = JobOutcome::Failed {
        error: crate::state::RESTARTED_ERROR.to_owned(),
    };
    assert_eq!(results_for(&server, "j-1")[0].outcome, expected);
    eventually("the repeat is answered", || {
        results_for(&server, "j-1").len() == 2
    })
    .await?;
    assert_eq!(results_for(&server, "j-1")[1].outcome, expected);
    assert_eq!(runs(&counter), 1);
    agent.stop().await
}

#[tokio::test]
async fn a_job_of_an_unknown_kind_is_answered_as_failed() -> TestResult {
    let server = FakeServer::start().await?;
    let dir = tempfile::tempdir()?;
    let counter = dir.path().join("count");
    server.state().queued.push_back(vec![
        serde_json::json!({"id": "x-1", "sessionId": "s-1", "leaseSeconds": 60, "kind": "teleport"}),
        step_job("j-2", &counting_body(&counter)),
    ]);
    let agent = RunningAgent::start(config(&server, &dir.path().join("state")));
    eventually("both jobs are answered", || {
        !results_for(&server, "j-2").is_empty()
    })
    .await?;
    let unknown = results_for(&server, "x-1");
    assert!(
        matches!(&unknown[..], [JobResult { outcome: JobOutcome::Failed { error }, .. }] if error.contains("cannot understand")),
        "{unknown:?}"
    );
    // Jobs of one poll run in order.
    assert_eq!(server.state().results[0].0, "x-1");
    agent.stop().await
}

/// Every example in `docs/agent-protocol.md` parses as the type it is labelled with, and is
/// exactly what that type serialises back to (so no field is misspelled, missing or extra).
#[test]
fn doc_examples_match_the_wire_types() -> TestResult {
    use anyhow::Context as _;
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use upkeep_agent_protocol::{
        EnrollRequest, EnrollResponse, ErrorBody, OutputAck, OutputChunk, PollRequest,
        PollResponse, ResultAck,
    };

    fn round_trip<T: Serialize + DeserializeOwned>(
        value: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::to_value(serde_json::from_value::<T>(
            value.clone(),
        )?)?)
    }

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/agent-protocol.md");
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let mut result_kinds = std::collections::BTreeSet::new();
    let mut rest = text.as_str();
    const LABEL: &str = "<!-- example: ";
    while let Some(at) = rest.find(LABEL) {
        let (name, after) = rest[at + LABEL.len()..]
            .split_once(" -->")
            .context("unterminated example label")?;
        let start = after
            .find("```json\n")
            .context("label without a json block")?
            + 8;
        let end = start
            + after[start..]
                .find("```")
                .context("unterminated json block")?;
        let json: serde_json::Value = serde_json::from_str(&after[start..end])
            .with_context(|| format!("{name} example is not JSON"))?;
        let back = match name {
            "EnrollRequest" => round_trip::<EnrollRequest>(&json),
            "EnrollResponse" => round_trip::<EnrollResponse>(&json),
            "PollRequest" => round_trip::<PollRequest>(&json),
            "PollResponse" => round_trip::<PollResponse>(&json),
            "JobResult" => round_trip::<JobResult>(&json),
            "ResultAck" => round_trip::<ResultAck>(&json),
            "ErrorBody" => round_trip::<ErrorBody>(&json),
            "OutputChunk" => round_trip::<OutputChunk>(&json),
            "OutputAck" => round_trip::<OutputAck>(&json),
            other => anyhow::bail!("example of unknown type {other}"),
        }
        .with_context(|| format!("{name} example does not parse: {json}"))?;
        anyhow::ensure!(
            back == json,
            "{name} example differs from its serialisation:\n{json}\n{back}"
        );
        if name == "JobResult" {
            result_kinds.insert(json["kind"].as_str().unwrap_or_default().to_owned());
        }
        *seen.entry(name.to_owned()).or_default() += 1;
        rest = &after[end..];
    }
    assert_eq!(seen.len(), 9, "every message has an example: {seen:?}");
    assert_eq!(
        result_kinds.into_iter().collect::<Vec<_>>(),
        ["failed", "probe", "prompt", "reboot", "step"]
    );
    Ok(())
}
