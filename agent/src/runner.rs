//! Running scripts: one process tree per script, a hard time limit, bounded output.
//!
//! A script runs in a process tree of its own (a process group on Unix, a job object on
//! Windows: `platform::ProcessTree`) so that the time limit can kill everything it started
//! (`sh -c 'daemon & sleep 99'` included), not just the interpreter. Dropping a run before it
//! ends (the agent stops, or its task is aborted) kills the tree too.
//!
//! When the interpreter exits, output is still read for [`OUTPUT_GRACE`] so that what it wrote
//! last is not lost; processes it left running are *not* killed (an install script may start a
//! service), but their output is no longer read once the grace is over.

use crate::decode::{self, StreamDecoder};
use crate::interpreter::{self, Interpreter};
use crate::platform::{self, ProcessTree};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, ChildStdin, Command};
use upkeep_agent_protocol::{
    JobOutcome, JobResult, MAX_BODY_BYTES, MAX_OUTPUT_BYTES, OutputStream, Probe, ProbeResult,
    Script, ScriptOutcome, truncate_utf8,
};

/// How long output is still read after the interpreter exited (see the module docs).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// The agent's own secret, kept out of the environment of everything it starts.
const ENROLLMENT_KEY_VAR: &str = "UPKEEP_ENROLLMENT_KEY";

/// Room left in a result body for everything but script output.
const BODY_MARGIN: usize = 4 * 1024;

/// Which job a script belongs to, and where its file goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JobContext<'a> {
    pub(crate) work_dir: &'a Path,
    pub(crate) job_id: &'a str,
    pub(crate) session_id: &'a str,
    /// The version an install or upgrade step brings (`UPKEEP_VERSION`).
    pub(crate) version: Option<&'a str>,
    /// A step's verified installer: `UPKEEP_INSTALLER_FILE` (and `$InstallerFile` in
    /// PowerShell).
    pub(crate) installer_file: Option<&'a Path>,
}

/// The variable that names a step's verified installer file.
pub(crate) const INSTALLER_FILE_VAR: &str = "UPKEEP_INSTALLER_FILE";

/// Runs a probe job's probes one after another; one failing does not stop the others.
pub(crate) async fn run_probes(ctx: JobContext<'_>, probes: &[Probe]) -> JobOutcome {
    let mut results = Vec::with_capacity(probes.len());
    for probe in probes {
        let outcome = run_script(ctx, &probe.script, &probe.parameters).await;
        results.push(ProbeResult {
            probe_id: probe.probe_id.clone(),
            outcome,
        });
    }
    JobOutcome::Probe { results }
}

/// Runs one script to its end or its time limit. Never fails: what went wrong is reported in
/// the outcome, since the server needs an answer either way.
pub(crate) async fn run_script(
    ctx: JobContext<'_>,
    script: &Script,
    parameters: &BTreeMap<String, String>,
) -> ScriptOutcome {
    run_on_this_computer(ctx, script, parameters, None).await
}

/// [`run_script`], copying what the script writes (within the output cap) into `tee` as it
/// arrives, for streaming while the script runs.
pub(crate) async fn run_script_streaming(
    ctx: JobContext<'_>,
    script: &Script,
    parameters: &BTreeMap<String, String>,
    tee: &Tee,
) -> ScriptOutcome {
    run_on_this_computer(ctx, script, parameters, Some(tee)).await
}

/// Runs the script with this computer's interpreter for its language; a language this OS
/// cannot run (`CMD` off Windows) is reported in the outcome.
async fn run_on_this_computer(
    ctx: JobContext<'_>,
    script: &Script,
    parameters: &BTreeMap<String, String>,
    tee: Option<&Tee>,
) -> ScriptOutcome {
    match interpreter::for_this_computer(script.language) {
        Ok(interpreter) => run_with(interpreter, ctx, script, parameters, tee).await,
        Err(reason) => ScriptOutcome {
            error: Some(reason.to_owned()),
            ..Default::default()
        },
    }
}

/// Output captured but not yet streamed, per stream (stdout, stderr), with each stream's
/// decoder. Shared between the pipe readers and the streamer.
#[derive(Debug)]
pub(crate) struct Tee {
    pending: Mutex<[(Vec<u8>, StreamDecoder); 2]>,
}

impl Default for Tee {
    fn default() -> Self {
        let code_page = platform::output_code_page();
        Self {
            pending: Mutex::new([
                (Vec::new(), StreamDecoder::new(code_page)),
                (Vec::new(), StreamDecoder::new(code_page)),
            ]),
        }
    }
}

impl Tee {
    fn push(&self, stream: OutputStream, bytes: &[u8]) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p[index(stream)].0.extend_from_slice(bytes);
    }

    /// The text written since the last call (see `decode`); a character split by a read stays
    /// for the next call (invalid bytes become U+FFFD).
    pub(crate) fn take(&self, stream: OutputStream) -> String {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (bytes, decoder) = &mut p[index(stream)];
        decoder.take(bytes, platform::decode_code_page)
    }
}

fn index(stream: OutputStream) -> usize {
    match stream {
        OutputStream::Stdout => 0,
        OutputStream::Stderr => 1,
    }
}

async fn run_with(
    interpreter: Interpreter,
    ctx: JobContext<'_>,
    script: &Script,
    parameters: &BTreeMap<String, String>,
    tee: Option<&Tee>,
) -> ScriptOutcome {
    let started = Instant::now();
    let failed = |error: String| ScriptOutcome {
        error: Some(error),
        duration_ms: elapsed_ms(started),
        ..Default::default()
    };

    let body = match ctx.installer_file {
        Some(_) => interpreter::with_installer_variable(script.language, &script.body),
        None => std::borrow::Cow::Borrowed(script.body.as_str()),
    };
    let body = interpreter::script_file_bytes(script.language, &body, platform::encode_oem);
    let file = match ScriptFile::write(ctx.work_dir, interpreter.extension, &body) {
        Ok(file) => file,
        Err(e) => {
            return failed(format!(
                "could not write the script to {}: {e}",
                ctx.work_dir.display()
            ));
        }
    };

    let mut command = script_command(&interpreter, &ctx, file.path(), parameters);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return failed(format!(
                "{} is not installed on this computer",
                interpreter.program
            ));
        }
        Err(e) => return failed(format!("could not start {}: {e}", interpreter.program)),
    };
    let mut group = ProcessTree::of(&child);

    // Zero would kill every script at once; treat it as the shortest limit instead.
    let limit = Duration::from_secs(u64::from(script.timeout_seconds.max(1)));
    let Finished {
        status,
        stdout,
        stderr,
        timed_out,
    } = wait_capped(&mut child, &mut group, limit, tee).await;
    let (stdout, stdout_cut) = stdout.into_string();
    let (stderr, stderr_cut) = stderr.into_string();
    let (exit_code, error) = match status {
        Ok(_) if timed_out => (None, None),
        Ok(status) => (status.code().map(widen_exit_code), None),
        Err(e) => (None, Some(format!("could not wait for the script: {e}"))),
    };
    ScriptOutcome {
        exit_code,
        stdout,
        stderr,
        duration_ms: elapsed_ms(started),
        timed_out,
        truncated: stdout_cut || stderr_cut,
        error,
    }
}

/// How a script ended: its exit status, what it wrote (capped) and whether it ran out of time.
struct Finished {
    status: io::Result<std::process::ExitStatus>,
    stdout: Captured,
    stderr: Captured,
    timed_out: bool,
}

/// The command that runs `script_path` with the interpreter: parameters as
/// `UPKEEP_PARAM_<NAME>`, the job and session ids, no stdin, piped output, its own process
/// tree (so a time-out kills everything it started).
fn script_command(
    interpreter: &Interpreter,
    ctx: &JobContext<'_>,
    script_path: &Path,
    parameters: &BTreeMap<String, String>,
) -> Command {
    let mut command = Command::new(interpreter.program);
    command
        .args(interpreter.args)
        .arg(script_path)
        .current_dir(ctx.work_dir)
        .envs(
            parameters
                .iter()
                .map(|(name, value)| (param_env_name(name), value)),
        )
        // A script has no business with the secret that lets a computer join the tenant.
        .env_remove(ENROLLMENT_KEY_VAR)
        .env("UPKEEP_JOB_ID", ctx.job_id)
        .env("UPKEEP_SESSION_ID", ctx.session_id)
        .envs(ctx.version.map(|v| ("UPKEEP_VERSION", v)))
        .env_remove(INSTALLER_FILE_VAR)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(path) = ctx.installer_file {
        command.env(INSTALLER_FILE_VAR, path);
    }
    ProcessTree::prepare(&mut command);
    command
}

/// Reads the script's output (capped, teed to the server when streaming) until it exits,
/// killing its process tree at `limit`.
async fn wait_capped(
    child: &mut Child,
    group: &mut ProcessTree,
    limit: Duration,
    tee: Option<&Tee>,
) -> Finished {
    let mut stdout = Captured::default();
    let mut stderr = Captured::default();
    let mut timed_out = false;
    // The readers borrow the buffers until the block ends.
    let status = {
        let (out_pipe, err_pipe) = (child.stdout.take(), child.stderr.take());
        let readers = async {
            tokio::join!(
                read_capped(
                    out_pipe,
                    &mut stdout,
                    tee.map(|t| (t, OutputStream::Stdout))
                ),
                read_capped(
                    err_pipe,
                    &mut stderr,
                    tee.map(|t| (t, OutputStream::Stderr))
                )
            )
        };
        tokio::pin!(readers);
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        let mut readers_done = false;
        let status = loop {
            tokio::select! {
                _ = &mut readers, if !readers_done => readers_done = true,
                status = child.wait() => break status,
                _ = &mut deadline, if !timed_out => {
                    group.kill();
                    // The interpreter too, should it have escaped its tree (a job object that
                    // could not be assigned).
                    let _ = child.start_kill();
                    timed_out = true;
                }
            }
        };
        if status.is_err() {
            // The leader's fate is unknown; make sure nothing of the script keeps running.
            group.kill();
        }
        group.reaped();
        if !readers_done {
            // Children the script left behind may hold the pipes open; don't wait for them.
            let _ = tokio::time::timeout(OUTPUT_GRACE, &mut readers).await;
        }
        status
    };
    Finished {
        status,
        stdout,
        stderr,
        timed_out,
    }
}

/// `UPKEEP_PARAM_<NAME>`: upper-cased, anything but ASCII letters and digits as `_`, so every
/// parameter name yields a variable a shell can read.
pub(crate) fn param_env_name(name: &str) -> String {
    let suffix: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("UPKEEP_PARAM_{suffix}")
}

/// Shrinks script output until the result fits the server's body limit, so a probe job with
/// many chatty probes is reported cut rather than refused with 413.
pub(crate) fn fit_to_body_limit(result: &mut JobResult) {
    let budget = MAX_BODY_BYTES - BODY_MARGIN;
    let mut cap = MAX_OUTPUT_BYTES;
    while cap > 0 && serde_json::to_vec(result).map_or(0, |body| body.len()) > budget {
        cap /= 2;
        let outcomes: Vec<&mut ScriptOutcome> = match &mut result.outcome {
            JobOutcome::Probe { results } => results.iter_mut().map(|r| &mut r.outcome).collect(),
            JobOutcome::Step { outcome } => vec![outcome],
            JobOutcome::Reboot { .. } | JobOutcome::Prompt { .. } | JobOutcome::Failed { .. } => {
                return;
            }
        };
        for outcome in outcomes {
            let cut_out = truncate_utf8(&mut outcome.stdout, cap);
            let cut_err = truncate_utf8(&mut outcome.stderr, cap);
            outcome.truncated |= cut_out || cut_err;
        }
    }
}

/// A one-line description of an outcome for the job-finished log line.
pub(crate) fn summary(outcome: &JobOutcome) -> String {
    fn script(outcome: &ScriptOutcome) -> String {
        match (&outcome.error, outcome.timed_out, outcome.exit_code) {
            (Some(error), _, _) => format!("error: {error}"),
            (None, true, _) => format!("timed out after {} ms", outcome.duration_ms),
            (None, false, Some(code)) => {
                format!("exit code {code} after {} ms", outcome.duration_ms)
            }
            (None, false, None) => format!("killed by a signal after {} ms", outcome.duration_ms),
        }
    }
    match outcome {
        JobOutcome::Probe { results } => {
            let parts: Vec<String> = results
                .iter()
                .map(|r| format!("{}: {}", r.probe_id, script(&r.outcome)))
                .collect();
            format!("{} probe(s) [{}]", results.len(), parts.join("; "))
        }
        JobOutcome::Step { outcome } => script(outcome),
        JobOutcome::Reboot { started: true, .. } => "reboot command started".to_owned(),
        JobOutcome::Reboot {
            started: false,
            error,
        } => {
            format!(
                "reboot command not started: {}",
                error.as_deref().unwrap_or("unknown error")
            )
        }
        JobOutcome::Prompt { shown: true, .. } => "prompt shown".to_owned(),
        JobOutcome::Prompt { error, .. } => format!(
            "prompt not shown: {}",
            error.as_deref().unwrap_or("unknown error")
        ),
        JobOutcome::Failed { error } => format!("failed: {error}"),
    }
}

/// A reboot command that was started but waits for [`RebootGate::release`] before it runs, so
/// the agent can report "started" while the machine is still up. If the agent dies first, the
/// gate opens by itself (its stdin closes) and the reboot goes ahead.
#[derive(Debug)]
pub(crate) struct RebootGate {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// Starts the reboot command (`sh -c`, `cmd.exe /C` on Windows) behind a gate, in its own
/// process group so that a signal meant for the agent's group (Ctrl-C) does not stop it.
pub(crate) fn spawn_reboot(command: &str) -> io::Result<RebootGate> {
    let mut child = platform::gated_reboot(command)
        .env_remove(ENROLLMENT_KEY_VAR)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdin = child.stdin.take();
    Ok(RebootGate { child, stdin })
}

impl RebootGate {
    /// Lets the reboot command run, and logs how it ended (if the machine is still up by then).
    pub(crate) fn release(mut self) {
        drop(self.stdin.take());
        tokio::spawn(async move {
            match self.child.wait().await {
                Ok(status) if status.success() => tracing::info!("the reboot command finished"),
                Ok(status) => tracing::error!("the reboot command failed ({status})"),
                Err(e) => tracing::warn!("could not wait for the reboot command: {e}"),
            }
        });
    }
}

/// The first [`MAX_OUTPUT_BYTES`] of a stream, and whether there was more.
#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl Captured {
    /// Decoding may grow the text (a cut character becomes U+FFFD, a code page's letter two
    /// bytes of UTF-8), so cut again after.
    fn into_string(self) -> (String, bool) {
        let mut text = decode::decode_output(
            &self.bytes,
            platform::output_code_page(),
            platform::decode_code_page,
        );
        let cut = truncate_utf8(&mut text, MAX_OUTPUT_BYTES);
        (text, self.overflowed || cut)
    }
}

/// Reads to the end, keeping the first bytes and discarding the rest: a script must never
/// block on a full pipe because we stopped reading.
async fn read_capped(
    stream: Option<impl AsyncRead + Unpin>,
    into: &mut Captured,
    tee: Option<(&Tee, OutputStream)>,
) {
    let Some(mut stream) = stream else { return };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                let room = MAX_OUTPUT_BYTES.saturating_sub(into.bytes.len());
                let keep = room.min(n);
                into.bytes.extend_from_slice(&buf[..keep]);
                into.overflowed |= keep < n;
                if let Some((tee, which)) = tee
                    && keep > 0
                {
                    tee.push(which, &buf[..keep]);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!("reading script output: {e}");
                return;
            }
        }
    }
}

/// The script body on disk, removed when the run ends however it ends.
#[derive(Debug)]
struct ScriptFile {
    path: PathBuf,
}

impl ScriptFile {
    fn write(dir: &Path, extension: &str, body: &[u8]) -> io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("script-{}-{n}.{extension}", std::process::id()));
        let mut handle = platform::private_file(std::fs::OpenOptions::new().write(true))
            .create_new(true)
            .open(&path)?;
        // From here on the guard removes the file, also when writing fails.
        let file = Self { path };
        handle.write_all(body)?;
        Ok(file)
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScriptFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::debug!("removing {}: {e}", self.path.display());
        }
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Unix exit codes are 8 bits, so `exit 3010` arrives as 194 (3010 mod 256) and `exit 1641` as
/// 105. The agent reports them as 3010 and 1641 ("succeeded, reboot needed"), the convention
/// scripts written for Windows use. Windows exit codes are 32 bits and pass unchanged.
fn widen_exit_code(code: i32) -> i32 {
    use upkeep_agent_protocol::{EXIT_REBOOT_INITIATED, EXIT_REBOOT_REQUIRED};
    if cfg!(windows) {
        return code;
    }
    match code {
        c if c == EXIT_REBOOT_REQUIRED % 256 => EXIT_REBOOT_REQUIRED,
        c if c == EXIT_REBOOT_INITIATED % 256 => EXIT_REBOOT_INITIATED,
        c => c,
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::time::Duration;
    use upkeep_agent_protocol::{Probe, ScriptLanguage};

    fn shell(body: &str, timeout_seconds: u32) -> Script {
        Script {
            language: ScriptLanguage::Shell,
            body: body.to_owned(),
            timeout_seconds,
        }
    }

    fn ctx(dir: &Path) -> JobContext<'_> {
        JobContext {
            work_dir: dir,
            job_id: "j-1",
            session_id: "s-1",
            version: None,
            installer_file: None,
        }
    }

    async fn run_shell(dir: &Path, body: &str, timeout_seconds: u32) -> ScriptOutcome {
        run_script(ctx(dir), &shell(body, timeout_seconds), &BTreeMap::new()).await
    }

    /// Gone, or a zombie waiting for its new parent to reap it: either way no longer running.
    fn is_dead(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        }
    }

    async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if condition() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        condition()
    }

    fn read_pid(path: &Path) -> Option<i32> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    #[tokio::test]
    async fn reports_exit_code_and_both_streams() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let outcome = run_shell(dir.path(), "echo out; echo err >&2; exit 7", 10).await;
        assert_eq!(outcome.exit_code, Some(7));
        assert_eq!(outcome.stdout, "out\n");
        assert_eq!(outcome.stderr, "err\n");
        assert!(!outcome.timed_out && !outcome.truncated);
        assert_eq!(outcome.error, None);
        // The script file is gone once the run ends.
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn parameters_and_ids_are_in_the_environment() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let parameters = BTreeMap::from([("install-dir".to_owned(), "/opt/x y".to_owned())]);
        let body = r#"printf '%s|%s|%s|%s' "$UPKEEP_PARAM_INSTALL_DIR" "$UPKEEP_JOB_ID" "$UPKEEP_SESSION_ID" "${PATH:+path}""#;
        let outcome = run_script(ctx(dir.path()), &shell(body, 10), &parameters).await;
        assert_eq!(outcome.stdout, "/opt/x y|j-1|s-1|path");
        assert_eq!(outcome.exit_code, Some(0));
        Ok(())
    }

    #[test]
    fn parameter_names_become_variable_names() {
        assert_eq!(param_env_name("version"), "UPKEEP_PARAM_VERSION");
        assert_eq!(
            param_env_name("install-dir.x"),
            "UPKEEP_PARAM_INSTALL_DIR_X"
        );
        assert_eq!(param_env_name("größe"), "UPKEEP_PARAM_GR__E");
    }

    #[tokio::test]
    async fn the_time_limit_kills_the_whole_process_group() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let body = "echo started; sleep 30 & echo $! > bg.pid; sleep 30";
        let run = run_shell(dir.path(), body, 1);
        let outcome = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .map_err(io::Error::other)?;
        assert!(outcome.timed_out);
        assert_eq!(outcome.exit_code, None);
        assert_eq!(outcome.stdout, "started\n");
        let background =
            read_pid(&dir.path().join("bg.pid")).ok_or_else(|| io::Error::other("no bg.pid"))?;
        assert!(
            eventually(|| is_dead(background)).await,
            "background sleep {background} survived"
        );
        Ok(())
    }

    #[tokio::test]
    async fn dropping_a_run_kills_its_process_group() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let pid_file = dir.path().join("bg.pid");
        let work_dir = dir.path().to_owned();
        let run = tokio::spawn(async move {
            run_shell(&work_dir, "sleep 30 & echo $! > bg.pid; sleep 30", 60).await
        });
        assert!(eventually(|| read_pid(&pid_file).is_some()).await);
        run.abort();
        let background = read_pid(&pid_file).ok_or_else(|| io::Error::other("no bg.pid"))?;
        assert!(
            eventually(|| is_dead(background)).await,
            "background sleep {background} survived"
        );
        Ok(())
    }

    #[tokio::test]
    async fn output_is_capped_and_the_script_never_blocks() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        // 1 MB on stdout, far above both the cap and any pipe buffer.
        let body = "head -c 1000000 /dev/zero | tr '\\0' a; echo done >&2";
        let outcome = run_shell(dir.path(), body, 30).await;
        assert_eq!(outcome.exit_code, Some(0));
        assert_eq!(outcome.stdout.len(), MAX_OUTPUT_BYTES);
        assert!(outcome.stdout.bytes().all(|b| b == b'a'));
        assert!(outcome.truncated);
        assert_eq!(outcome.stderr, "done\n");
        Ok(())
    }

    #[tokio::test]
    async fn a_missing_interpreter_is_reported_not_raised() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let missing = Interpreter {
            program: "upkeep-no-such-interpreter",
            args: &[],
            extension: "sh",
        };
        let outcome = run_with(
            missing,
            ctx(dir.path()),
            &shell("true", 5),
            &BTreeMap::new(),
            None,
        )
        .await;
        assert_eq!(
            outcome.error.as_deref(),
            Some("upkeep-no-such-interpreter is not installed on this computer")
        );
        assert_eq!(outcome.exit_code, None);
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_batch_script_on_unix_fails_with_a_clear_message() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let script = Script {
            language: ScriptLanguage::Cmd,
            body: "@echo off".to_owned(),
            timeout_seconds: 5,
        };
        let outcome = run_script(ctx(dir.path()), &script, &BTreeMap::new()).await;
        assert_eq!(
            outcome.error.as_deref(),
            Some("CMD scripts need a Windows agent")
        );
        assert_eq!(outcome.exit_code, None);
        Ok(())
    }

    #[tokio::test]
    async fn exit_3010_and_1641_survive_unix_exit_status_truncation() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        for code in [3010, 1641] {
            let outcome = run_shell(dir.path(), &format!("exit {code}"), 5).await;
            assert_eq!(outcome.exit_code, Some(code));
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_failing_probe_does_not_stop_the_next() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let probe = |id: &str, body: &str| Probe {
            probe_id: id.to_owned(),
            script: shell(body, 10),
            parameters: BTreeMap::from([("v".to_owned(), id.to_owned())]),
        };
        let outcome = run_probes(
            ctx(dir.path()),
            &[probe("p1", "exit 1"), probe("p2", "echo $UPKEEP_PARAM_V")],
        )
        .await;
        let JobOutcome::Probe { results } = outcome else {
            panic!("not a probe outcome: {outcome:?}")
        };
        assert_eq!(results.len(), 2);
        assert_eq!(
            (results[0].probe_id.as_str(), results[0].outcome.exit_code),
            ("p1", Some(1))
        );
        assert_eq!(
            (
                results[1].probe_id.as_str(),
                results[1].outcome.stdout.as_str()
            ),
            ("p2", "p2\n")
        );
        Ok(())
    }

    #[test]
    fn the_tee_never_splits_a_character() {
        let tee = Tee::default();
        let e_acute = "é".as_bytes();
        tee.push(OutputStream::Stdout, b"caf");
        tee.push(OutputStream::Stdout, &e_acute[..1]);
        assert_eq!(tee.take(OutputStream::Stdout), "caf");
        tee.push(OutputStream::Stdout, &e_acute[1..]);
        assert_eq!(tee.take(OutputStream::Stdout), "é");
        assert_eq!(tee.take(OutputStream::Stderr), "");
    }

    #[test]
    fn oversized_results_are_cut_to_the_body_limit() {
        let chatty = ScriptOutcome {
            exit_code: Some(0),
            stdout: "o".repeat(MAX_OUTPUT_BYTES),
            stderr: "e".repeat(MAX_OUTPUT_BYTES),
            ..Default::default()
        };
        let results = (0..20)
            .map(|i| ProbeResult {
                probe_id: format!("p{i}"),
                outcome: chatty.clone(),
            })
            .collect();
        let mut result = JobResult {
            protocol_version: 1,
            outcome: JobOutcome::Probe { results },
            reboot_pending: None,
        };
        fit_to_body_limit(&mut result);
        let body = serde_json::to_vec(&result).unwrap_or_default();
        assert!(
            !body.is_empty() && body.len() <= MAX_BODY_BYTES,
            "{} bytes",
            body.len()
        );
        let JobOutcome::Probe { results } = &result.outcome else {
            panic!("kind changed")
        };
        assert!(
            results
                .iter()
                .all(|r| r.outcome.truncated && !r.outcome.stdout.is_empty())
        );

        // A result that fits is left alone.
        let mut small = JobResult {
            protocol_version: 1,
            outcome: JobOutcome::Step {
                outcome: chatty.clone(),
            },
            reboot_pending: None,
        };
        fit_to_body_limit(&mut small);
        assert_eq!(small.outcome, JobOutcome::Step { outcome: chatty });
    }

    #[tokio::test]
    async fn a_reboot_waits_for_its_gate() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let marker = dir.path().join("rebooted");
        let gate = spawn_reboot(&format!("touch '{}'", marker.display()))?;
        // Nothing to wait on while the gate is shut; a short look is all a test can do.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!marker.exists());
        gate.release();
        assert!(eventually(|| marker.exists()).await);
        Ok(())
    }
}
