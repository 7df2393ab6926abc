//! The Upkeep agent protocol, version 1: the wire spec between `upkeep-server` and the agents
//! that run on managed computers.
//!
//! Transport: JSON over HTTP(S). Every request body carries `"protocolVersion": 1`
//! ([`PROTOCOL_VERSION`]); the server refuses other versions with 400 and an [`ErrorBody`].
//! Field names are camelCase on the wire. Unknown fields are ignored in both directions, so a
//! newer peer may add optional fields without breaking an older one.
//!
//! Routes (all `POST`, bodies at most 1 MiB):
//! - `/agent/v1/enroll`: [`EnrollRequest`] → [`EnrollResponse`]. The only call without an agent
//!   token; it is authorised by the enrollment key in the body.
//! - `/agent/v1/poll`: [`PollRequest`] → [`PollResponse`], with `Authorization: Bearer <agentToken>`.
//! - `/agent/v1/jobs/{jobId}/result`: [`JobResult`] → [`ResultAck`], with the agent token.
//! - `/agent/v1/jobs/{jobId}/output`: [`OutputChunk`] → [`OutputAck`], with the agent token:
//!   output of a step script while it runs (optional; the result still carries all of it).
//!
//! And two `GET` routes with the agent token: `/agent/v1/jobs/{jobId}` ([`JobStatus`]) and
//! `/agent/v1/files/{sha256}`, the bytes of an [`InstallerRef`] held by the server (`Range:
//! bytes=N-` answers 206 with `Content-Range`, so a broken download resumes).
//!
//! Errors answer 4xx with an [`ErrorBody`]: 401 for a missing or unknown agent token (checked
//! before the body is read), 401/403 for a wrong or revoked enrollment key, 413 for a body over
//! 1 MiB, 400/422 for a body that is not a valid message, 429 when a client is throttled.
//!
//! See `docs/agent-protocol.md` for an example of every message.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The protocol version this crate describes. Sent as `protocolVersion` in every request.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest long-poll the server grants, in seconds; a larger `waitSeconds` is capped to it.
pub const MAX_WAIT_SECONDS: u32 = 60;

/// Most bytes of stdout and of stderr an agent reports per script run; longer output is cut and
/// flagged with [`ScriptOutcome::truncated`].
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// Most bytes of script output in one [`OutputChunk`]; the server refuses larger chunks with
/// 413.
pub const MAX_CHUNK_BYTES: usize = 16 * 1024;

/// Output chunks the server takes per job and second, on average (bursts of
/// [`OUTPUT_CHUNK_BURST`]); faster senders get 429 with `Retry-After`.
pub const OUTPUT_CHUNKS_PER_SECOND: u32 = 10;

/// Output chunks a job may send in a burst before [`OUTPUT_CHUNKS_PER_SECOND`] applies.
pub const OUTPUT_CHUNK_BURST: u32 = 20;

/// Largest request body the server accepts on agent routes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Exit code by which an install, upgrade, uninstall or set script says "succeeded, a reboot is
/// needed" (the Windows Installer convention, `ERROR_SUCCESS_REBOOT_REQUIRED`).
pub const EXIT_REBOOT_REQUIRED: i32 = 3010;

/// Exit code by which a script says "succeeded, and a reboot was started" (Windows Installer's
/// `ERROR_SUCCESS_REBOOT_INITIATED`). Treated like [`EXIT_REBOOT_REQUIRED`]: the session's
/// reboot step follows, and verification waits for the agent to return.
pub const EXIT_REBOOT_INITIATED: i32 = 1641;

/// Whether a script's exit code means "succeeded, a reboot is needed" ([`EXIT_REBOOT_REQUIRED`]
/// or [`EXIT_REBOOT_INITIATED`]).
pub fn means_reboot(exit_code: i32) -> bool {
    exit_code == EXIT_REBOOT_REQUIRED || exit_code == EXIT_REBOOT_INITIATED
}

/// `POST /agent/v1/enroll`: a new or re-installed agent asks to join a tenant.
///
/// The server finds an existing computer of the key's tenant by `machineId` (a re-enrollment
/// after a re-install keeps the computer and its history) or creates one. Every enrollment
/// issues a fresh agent token and invalidates the computer's previous one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollRequest {
    /// Always [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The tenant's enrollment key secret, as shown once by `createEnrollmentKey`.
    pub enrollment_key: String,
    /// The computer's host name; becomes `Computer.hostname` (and its initial `name`).
    pub hostname: String,
    /// A stable identity of the machine (`/etc/machine-id` on Linux, or `--machine-id`).
    pub machine_id: String,
    /// Human-readable OS name and version, e.g. `Debian GNU/Linux 12 (bookworm)`.
    pub os: String,
    /// The agent's own version, e.g. `0.1.0`.
    pub agent_version: String,
}

/// Answer to [`EnrollRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollResponse {
    /// The computer's id in Upkeep.
    pub computer_id: String,
    /// The bearer token for every later call. 256 random bits, base64url; the server keeps only
    /// its hash, so it cannot be shown again. The agent stores it with mode 0600.
    pub agent_token: String,
    /// How long the agent should ask the server to hold an empty poll, in seconds.
    pub poll_wait_seconds: u32,
}

/// Facts about the computer the agent reports now and then (on start and when they change).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// Current host name.
    pub hostname: String,
    /// OS name and version (from `/etc/os-release` `PRETTY_NAME` on Linux).
    pub os: String,
    /// The agent's version.
    pub agent_version: String,
    /// The machine identity the agent enrolled with.
    pub machine_id: String,
    /// The user logged on at the console, if any (used to find the computer's primary person).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logged_on_user: Option<String>,
    /// The rest of what the computer is made of (`Computer.inventory` and
    /// `Computer.installedSoftware`); absent from older agents.
    #[serde(default, flatten)]
    pub details: InventoryDetails,
}

/// Most entries of [`InventoryDetails::installed_software`]; an agent reports the first ones
/// (by name) and the server refuses a longer list with 422.
pub const MAX_INSTALLED_SOFTWARE: usize = 5000;

/// Most entries of [`InventoryDetails::ip_addresses`] and of
/// [`InventoryDetails::logged_on_users`]; longer lists are refused with 422.
pub const MAX_INVENTORY_LIST: usize = 64;

/// Most bytes of any one inventory text (a name, a version, a serial number); longer ones are
/// cut at a character boundary by the agent, and by the server if an agent did not.
pub const MAX_INVENTORY_TEXT: usize = 256;

/// Facts an agent gathers about its computer beyond its identity. Every field is best effort:
/// empty or absent when the agent cannot tell. Bounded by [`MAX_INSTALLED_SOFTWARE`],
/// [`MAX_INVENTORY_LIST`] and [`MAX_INVENTORY_TEXT`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryDetails {
    /// The OS's name without its version, e.g. `Debian GNU/Linux`, `Microsoft Windows 11 Pro`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_name: Option<String>,
    /// The OS version, e.g. `12` or `23H2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// The OS build: the kernel release on Linux, `CurrentBuild` on Windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_build: Option<String>,
    /// CPU architecture, e.g. `x86_64`, `aarch64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// Hardware vendor and model, as firmware tells them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// See [`InventoryDetails::manufacturer`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The firmware's serial number (often readable only with administrator rights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// The DNS domain or Windows domain the computer belongs to, or its workgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The computer's own addresses (IPv4 and IPv6, loopback left out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    /// When the computer last started, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_boot_at: Option<String>,
    /// Every user with a session on the computer, each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logged_on_users: Vec<String>,
    /// Free bytes on the system disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_disk_bytes: Option<u64>,
    /// Installed programs (`dpkg-query`/`rpm -qa` on Linux; the two Uninstall registry keys on
    /// Windows), sorted by name. `None` when the agent could not list them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_software: Option<Vec<InstalledSoftware>>,
}

/// One installed program.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstalledSoftware {
    /// The program's name (`DisplayName`, or the package name).
    pub name: String,
    /// Its version, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Its publisher or packager, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
}

/// `POST /agent/v1/poll`: "I am alive; give me work".
///
/// A poll also marks the computer online. When there is no work the server holds the request
/// open up to `waitSeconds` and answers at once when a job appears for this computer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollRequest {
    /// Always [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// How long the server may hold the poll open without work: 0 answers at once; values above
    /// [`MAX_WAIT_SECONDS`] are capped.
    #[serde(default)]
    pub wait_seconds: u32,
    /// Fresh inventory, when the agent has some to report: at its first poll after starting or
    /// enrolling, and when it changed since the server last took it (at most once a minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Inventory>,
    /// Whether the computer waits for a reboot to finish installing something (Linux:
    /// `/var/run/reboot-required` or `needs-restarting -r`; Windows: Component Based
    /// Servicing, Windows Update, pending file renames, a pending rename of the computer).
    /// Checked at most about once a minute; `None` from agents that cannot tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_pending: Option<bool>,
}

/// Answer to [`PollRequest`]: jobs to run now, in order. Often empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollResponse {
    /// Jobs leased to this agent. Each must be answered with a [`JobResult`] before its
    /// `leaseSeconds` run out, or the server applies its lease rule (see [`Job::lease_seconds`]).
    pub jobs: Vec<Job>,
}

/// One unit of work for an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    /// Unique id; results are keyed by it and are idempotent: the first result counts, repeats
    /// are acknowledged and ignored. An agent that already ran a job with this id must not run it
    /// again, only re-send its result.
    pub id: String,
    /// The session this job belongs to, for the agent's logs.
    pub session_id: String,
    /// How long the server waits for the result after handing the job out. When the lease runs
    /// out, a `probe` job (read-only) is offered again, up to three times in all; a `step` or
    /// `reboot` job is failed ("agent did not report back"), since running it twice could change
    /// the computer twice.
    pub lease_seconds: u32,
    /// What to do.
    #[serde(flatten)]
    pub kind: JobKind,
}

/// The kinds of work. Tagged by `"kind"` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum JobKind {
    /// Run read-only probes (software detection scripts, task test scripts) and report each.
    /// Probes run one after another, in order; one failing does not stop the others.
    Probe {
        /// The probes, each with an id echoed in its result.
        probes: Vec<Probe>,
    },
    /// Run one script that may change the computer (install, upgrade, uninstall, task set).
    Step {
        /// What the step is, for logs.
        label: String,
        /// The script.
        script: Script,
        /// Parameters, exported as `UPKEEP_PARAM_<NAME>` (name upper-cased).
        #[serde(default)]
        parameters: BTreeMap<String, String>,
        /// The version an install or upgrade step brings, exported as `UPKEEP_VERSION`;
        /// absent on other steps.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        /// A file the script needs (an install or upgrade's installer). The agent fetches it,
        /// checks its size and SHA-256, and only then runs the script, with the file's path in
        /// `UPKEEP_INSTALLER_FILE` (and `$InstallerFile` in PowerShell). A file that does not
        /// match fails the job ([`JobOutcome::Failed`], "installer hash mismatch: expected …,
        /// got …") and nothing runs. Absent for steps without one; an agent that predates the
        /// field ignores it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        installer: Option<InstallerRef>,
    },
    /// Reboot the computer with the agent's configured reboot command. The agent reports the
    /// result once the command was started (or failed to start), before the machine goes down.
    Reboot {},
    /// Tell the people at the computer that it will restart (`RebootPreference.PROMPT`): the
    /// agent runs its prompt command (`wall` on Linux, `msg.exe *` on Windows) with `message`.
    /// Answered with [`JobOutcome::Prompt`] once the command ran.
    Prompt {
        /// What to show, one or a few lines.
        message: String,
    },
}

/// An installer named by its content, for a [`JobKind::Step`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstallerRef {
    /// Lower-case hex SHA-256 of the file (64 characters): what the agent verifies, and the
    /// name it fetches from the server (`GET /agent/v1/files/{sha256}`) when there is no `url`.
    pub sha256: String,
    /// The file's size in bytes, when known; a download of another size fails the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// A vendor's `https://` URL to fetch the file from instead of the server; agents refuse
    /// any other scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The file's name as uploaded, for logs (the agent keeps the file under its hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
}

/// Longest an agent spends fetching a step's installer (all attempts and resumes together)
/// before it fails the step; the server's lease of a step with an installer allows this on top
/// of the script's time limit.
pub const INSTALLER_DOWNLOAD_SECONDS: u32 = 1800;

/// The message of a step that failed because its installer did not match its SHA-256: the
/// start of [`JobOutcome::Failed`]'s `error`, followed by "expected <hex>, got <hex>".
pub const INSTALLER_HASH_MISMATCH: &str = "installer hash mismatch";

/// One read-only script to run as part of a [`JobKind::Probe`] job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    /// Echoed back in [`ProbeResult::probe_id`].
    pub probe_id: String,
    /// The script.
    pub script: Script,
    /// Parameters, exported as `UPKEEP_PARAM_<NAME>` (name upper-cased).
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

/// A script and the interpreter to run it with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Script {
    /// `shell` runs with `sh`, `python` with `python3`, `powershell` with `pwsh`.
    pub language: ScriptLanguage,
    /// The script text.
    pub body: String,
    /// Time limit; on expiry the agent kills the whole process group and reports
    /// [`ScriptOutcome::timed_out`].
    pub timeout_seconds: u32,
}

/// Interpreters an agent may be asked to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ScriptLanguage {
    /// POSIX `sh`.
    Shell,
    /// PowerShell: `pwsh` (PowerShell 7) when it is on the `PATH`, else on Windows
    /// `powershell.exe` (Windows PowerShell 5.1); run with `-NoProfile -NonInteractive
    /// -ExecutionPolicy Bypass -File script.ps1`. An agent without either reports an error
    /// outcome.
    Powershell,
    /// `python3` (`python` on Windows).
    Python,
    /// A Windows batch file, run as `cmd.exe /D /C script.cmd`. Only Windows agents run it; others
    /// report an error outcome ("CMD scripts need a Windows agent").
    Cmd,
}

/// `POST /agent/v1/jobs/{jobId}/result`: what became of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobResult {
    /// Always [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The outcome, matching the job's kind.
    #[serde(flatten)]
    pub outcome: JobOutcome,
    /// Whether a reboot is pending on the computer, checked afresh when a probe job ended (see
    /// [`PollRequest::reboot_pending`]); `None` on other jobs and from agents that cannot tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_pending: Option<bool>,
}

/// The outcome of a job, tagged by `"kind"` like [`JobKind`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum JobOutcome {
    /// One result per probe, in the order of the job.
    Probe {
        /// The probe results.
        results: Vec<ProbeResult>,
    },
    /// The result of a step script.
    Step {
        /// The script's outcome.
        outcome: ScriptOutcome,
    },
    /// Whether the reboot command was started.
    Reboot {
        /// True when the command was started.
        started: bool,
        /// Why not, when it was not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Whether the prompt command ran.
    Prompt {
        /// True when the command ran and exited 0.
        shown: bool,
        /// Why not, when it did not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The agent could not run the job at all (it restarted while the job ran, or could not
    /// understand it).
    Failed {
        /// Why, for a person.
        error: String,
    },
}

/// A probe's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    /// The [`Probe::probe_id`] this answers.
    pub probe_id: String,
    /// The script's outcome.
    pub outcome: ScriptOutcome,
}

/// What running one script produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScriptOutcome {
    /// The exit code; `None` when the script could not start, was killed by a signal or timed
    /// out.
    pub exit_code: Option<i32>,
    /// Captured stdout, at most [`MAX_OUTPUT_BYTES`] (lossy UTF-8).
    pub stdout: String,
    /// Captured stderr, at most [`MAX_OUTPUT_BYTES`] (lossy UTF-8).
    pub stderr: String,
    /// Wall-clock run time.
    pub duration_ms: u64,
    /// True when the time limit ran out and the process group was killed.
    #[serde(default)]
    pub timed_out: bool,
    /// True when stdout or stderr was cut at [`MAX_OUTPUT_BYTES`].
    #[serde(default)]
    pub truncated: bool,
    /// Why the script could not run (interpreter missing, spawn failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The two output streams of a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// `POST /agent/v1/jobs/{jobId}/output`: a piece of what a running `step` job's script wrote,
/// so that a person watching the session sees it before the script ends.
///
/// Streaming is best effort and adds nothing to the result: the [`JobResult`] still carries
/// the whole (capped) output, and is what is stored. Rules:
/// - Only for `step` jobs, while they run (before their result is sent); other chunks are
///   answered `accepted: false`.
/// - `seq` starts at 1 for each job and rises by one per chunk, over both streams. A chunk
///   is idempotent per `seq`: a repeat (or any `seq` not above the highest taken) is answered
///   `accepted: false` and changes nothing, so a chunk whose answer was lost may be sent again.
/// - `chunk` is at most [`MAX_CHUNK_BYTES`] (413 otherwise); the server shows the first
///   16 KiB of a job's streamed output (both streams) in the session log, in lines of at most
///   900 bytes, and takes at most [`OUTPUT_CHUNKS_PER_SECOND`] chunks per job and second (429
///   with `Retry-After` beyond).
/// - The server masks secret parameter values before it stores or shows anything, also when a
///   secret is split across chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputChunk {
    /// Always [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// 1, 2, 3… per job, over both streams.
    pub seq: u64,
    /// Which stream the text comes from.
    pub stream: OutputStream,
    /// The text, as the script wrote it (lossy UTF-8; a character is never split).
    pub chunk: String,
}

/// Answer to an [`OutputChunk`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputAck {
    /// True when the chunk was new and taken; false for a repeated `seq`, or when the job is
    /// not a running step (finished, cancelled, or a probe). Either way the agent goes on.
    pub accepted: bool,
}

/// `GET /agent/v1/jobs/{jobId}`: whether a job the agent is running is still wanted.
///
/// While a step script runs the agent asks every [`JOB_STATUS_INTERVAL_SECONDS`]. When the
/// answer is `wanted: false` (its session was cancelled, or the server gave up on the job) the
/// agent kills the script's process group and reports the job as
/// [`JobOutcome::Failed`] with [`STOPPED_BY_SERVER`]. A question that fails (network, an old
/// server answering 404 for the route) changes nothing: the script runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// False once the server no longer expects the job's result.
    pub wanted: bool,
}

/// How often an agent asks for [`JobStatus`] while a step runs, in seconds.
pub const JOB_STATUS_INTERVAL_SECONDS: u64 = 5;

/// The error of a job whose script the agent stopped because the server no longer wanted it.
pub const STOPPED_BY_SERVER: &str = "stopped: the server no longer wanted this job (its session was cancelled); the script's processes were killed";

/// Answer to a [`JobResult`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultAck {
    /// True when this result was the first for its job and was recorded; false when the job had
    /// a result already (a repeat) or was no longer expected (cancelled or failed by its lease).
    /// Either way the agent may forget the result.
    pub accepted: bool,
}

/// Body of every 4xx/5xx answer on agent routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `UNAUTHENTICATED`, `BAD_REQUEST`, `PAYLOAD_TOO_LARGE`.
    pub code: String,
    /// Human-readable explanation.
    pub error: String,
}

/// Cuts `s` to at most `max` bytes on a char boundary; returns whether it cut.
pub fn truncate_utf8(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_round_trips_with_flattened_kind() {
        let job = Job {
            id: "j1".into(),
            session_id: "s1".into(),
            lease_seconds: 60,
            kind: JobKind::Step {
                label: "install".into(),
                script: Script {
                    language: ScriptLanguage::Shell,
                    body: "true".into(),
                    timeout_seconds: 5,
                },
                parameters: BTreeMap::new(),
                version: Some("1.2".into()),
                installer: None,
            },
        };
        let json = serde_json::to_value(&job).unwrap();
        assert!(json.get("installer").is_none(), "absent, for older agents");
        assert_eq!(json["kind"], "step");
        assert_eq!(json["script"]["language"], "shell");
        assert_eq!(json["version"], "1.2");
        assert_eq!(serde_json::from_value::<Job>(json).unwrap(), job);
    }

    #[test]
    fn a_step_carries_its_installer_and_older_steps_still_read() {
        let json = serde_json::json!({"id": "j", "sessionId": "s", "leaseSeconds": 5, "kind": "step",
            "label": "install", "script": {"language": "shell", "body": "true", "timeoutSeconds": 5},
            "installer": {"sha256": "ab", "size": 3, "fileName": "x.msi"}});
        let job: Job = serde_json::from_value(json).unwrap();
        let JobKind::Step { installer, .. } = &job.kind else {
            panic!("not a step: {job:?}");
        };
        assert_eq!(
            installer,
            &Some(InstallerRef {
                sha256: "ab".into(),
                size: Some(3),
                url: None,
                file_name: Some("x.msi".into()),
            })
        );
        let old = serde_json::json!({"id": "j", "sessionId": "s", "leaseSeconds": 5, "kind": "step",
            "label": "install", "script": {"language": "shell", "body": "true", "timeoutSeconds": 5}});
        let job: Job = serde_json::from_value(old).unwrap();
        assert!(matches!(
            job.kind,
            JobKind::Step {
                installer: None,
                ..
            }
        ));
    }

    #[test]
    fn result_kind_tag_is_on_the_top_level() {
        let r: JobResult = serde_json::from_str(
            r#"{"protocolVersion":1,"kind":"step","outcome":{"exitCode":0,"stdout":"","stderr":"","durationMs":3}}"#,
        )
        .unwrap();
        assert!(matches!(r.outcome, JobOutcome::Step { .. }));
    }

    #[test]
    fn cmd_is_a_wire_language_and_both_reboot_codes_mean_reboot() {
        assert_eq!(serde_json::to_value(ScriptLanguage::Cmd).unwrap(), "cmd");
        assert_eq!(
            serde_json::from_value::<ScriptLanguage>("cmd".into()).unwrap(),
            ScriptLanguage::Cmd
        );
        assert!(means_reboot(3010) && means_reboot(1641));
        assert!(!means_reboot(0) && !means_reboot(1) && !means_reboot(194));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        let mut s = "aé".repeat(10);
        assert!(truncate_utf8(&mut s, 4));
        assert_eq!(s, "aéa");
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = serde_json::from_slice::<JobResult>(&bytes);
            let _ = serde_json::from_slice::<PollRequest>(&bytes);
            let _ = serde_json::from_slice::<EnrollRequest>(&bytes);
            let _ = serde_json::from_slice::<OutputChunk>(&bytes);
        }
    }
}
