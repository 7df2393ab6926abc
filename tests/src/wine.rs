//! The Windows agent under Wine, for end-to-end tests: builds `upkeep-agent.exe` for
//! `x86_64-pc-windows-gnu` (the same crate as the Linux agent), puts it beside a test-only
//! `bcryptprimitives.dll` (Wine 8 lacks it; see `tests/wine/bcryptprimitives.c`), prepares one
//! Wine prefix, and runs the agent in it with `/usr/lib/wine/wine64`.
//!
//! Nothing is skipped silently: when Wine, mingw or the Rust target is missing, [`Wine::get`]
//! fails and says what to install. Only `UPKEEP_SKIP_WINE=1`, set on purpose, skips (and CI
//! does not set it).
//!
//! Everything lives under `<target>/wine-e2e/`: `bin/` (the .exe and the DLL) and `prefix/`
//! (made with `wineboot --init` once, ~10 s, then reused by later runs; a file lock keeps two
//! test processes from preparing it at once).

use anyhow::{Context, Result, bail, ensure};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;
use tempfile::TempDir;

/// The Rust target of the Windows agent.
pub const TARGET: &str = "x86_64-pc-windows-gnu";

/// Set to `1` to skip the Windows agent tests on a machine without Wine (never in CI).
pub const SKIP_VAR: &str = "UPKEEP_SKIP_WINE";

/// Debian's 64-bit Wine loader; plain `wine` looks for a 32-bit one.
const DEFAULT_WINE64: &str = "/usr/lib/wine/wine64";

const MINGW_GCC: &str = "x86_64-w64-mingw32-gcc";

/// A prepared Wine: where the loader, the prefix and the agent are.
#[derive(Debug)]
pub struct Wine {
    wine64: PathBuf,
    prefix: PathBuf,
    agent_exe: PathBuf,
}

impl Wine {
    /// The prepared Wine (prepared once per test process), or `None` when the caller asked to
    /// skip with `UPKEEP_SKIP_WINE=1`. Blocks: call it before starting servers.
    pub fn get() -> Result<Option<&'static Wine>> {
        if std::env::var(SKIP_VAR).is_ok_and(|v| v == "1") {
            eprintln!("{SKIP_VAR}=1: skipping a Windows agent test");
            return Ok(None);
        }
        static WINE: OnceLock<Result<Wine, String>> = OnceLock::new();
        match WINE.get_or_init(|| prepare().map_err(|e| format!("{e:#}"))) {
            Ok(wine) => Ok(Some(wine)),
            Err(e) => bail!("{e}"),
        }
    }

    /// A command running `program` (a Windows path or a builtin like `reg`) under Wine.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
        self.std_command(program).into()
    }

    /// [`Wine::command`] for blocking use (in `Drop`).
    pub fn std_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(&self.wine64);
        command.arg(program);
        wine_env(&mut command, &self.prefix);
        command
    }

    /// The built `upkeep-agent.exe` (beside the DLL Wine needs).
    pub fn agent_exe(&self) -> &Path {
        &self.agent_exe
    }
}

/// A Linux path as Wine's programs see it: the `Z:` drive is `/`.
pub fn windows_path(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

fn wine_env(command: &mut Command, prefix: &Path) {
    command
        .env("WINEPREFIX", prefix)
        .env("WINEDEBUG", "-all")
        // No Mono or Gecko download prompts: nothing here needs .NET or a browser engine.
        .env("WINEDLLOVERRIDES", "mscoree,mshtml=");
}

fn missing(what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what}. The Windows agent tests need Wine, mingw and the Rust target: \
         `apt-get install -y wine wine64 gcc-mingw-w64-x86-64` and \
         `rustup target add {TARGET}` (.ci/run does both). To skip these tests on purpose, \
         set {SKIP_VAR}=1"
    )
}

fn prepare() -> Result<Wine> {
    let wine64 = std::env::var_os("UPKEEP_WINE64")
        .map_or_else(|| PathBuf::from(DEFAULT_WINE64), PathBuf::from);
    if !wine64.is_file() {
        return Err(missing(&format!(
            "Wine is missing: no {}",
            wine64.display()
        )));
    }
    if Command::new(MINGW_GCC)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        return Err(missing(&format!("mingw is missing: no {MINGW_GCC}")));
    }
    let target_dir = target_dir()?;
    let root = target_dir.join("wine-e2e");
    let bin = root.join("bin");
    let prefix = root.join("prefix");
    std::fs::create_dir_all(&bin)?;
    let lock = File::create(root.join(".lock"))?;
    lock.lock().context("cannot lock the Wine test directory")?;

    let built = build_agent(&target_dir)?;
    let agent_exe = bin.join("upkeep-agent.exe");
    std::fs::copy(&built, &agent_exe)
        .with_context(|| format!("cannot copy {} to {}", built.display(), agent_exe.display()))?;
    build_shim(&bin)?;
    if !prefix.join("system.reg").is_file() {
        let mut boot = Command::new(&wine64);
        boot.args(["wineboot", "--init"]);
        wine_env(&mut boot, &prefix);
        let out = boot.output().context("cannot run wineboot")?;
        ensure!(
            prefix.join("system.reg").is_file(),
            "wineboot did not make a prefix in {}: {}",
            prefix.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Wine {
        wine64,
        prefix,
        agent_exe,
    })
}

/// `target/` of this build: the test binary is `target/debug/deps/e2e-…`.
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .context("cannot find the target directory from the test binary's path")
}

/// `cargo build -p upkeep-agent --target x86_64-pc-windows-gnu`: a no-op when `.ci/run` built
/// it already, and never a stale .exe when someone changed the agent since.
fn build_agent(target_dir: &Path) -> Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "-q",
            "-p",
            "upkeep-agent",
            "--bin",
            "upkeep-agent",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(target_dir)
        .output()
        .context("cannot run cargo")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("target may not be installed")
            || stderr.contains("can't find crate for `std`")
        {
            return Err(missing(&format!(
                "the Rust target {TARGET} is not installed"
            )));
        }
        bail!("cannot build the Windows agent:\n{stderr}");
    }
    let exe = target_dir
        .join(TARGET)
        .join("debug")
        .join("upkeep-agent.exe");
    ensure!(exe.is_file(), "cargo built no {}", exe.display());
    Ok(exe)
}

/// The test-only `bcryptprimitives.dll` (see `tests/wine/bcryptprimitives.c`).
fn build_shim(bin: &Path) -> Result<()> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("wine");
    let out = Command::new(MINGW_GCC)
        .args(["-shared", "-o"])
        .arg(bin.join("bcryptprimitives.dll"))
        .arg(src.join("bcryptprimitives.c"))
        .arg(src.join("bcryptprimitives.def"))
        .arg("-ladvapi32")
        .output()
        .context("cannot run mingw")?;
    ensure!(
        out.status.success(),
        "cannot build bcryptprimitives.dll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The Windows agent running under Wine against a test server; killed on drop.
pub struct WineAgent {
    child: tokio::process::Child,
    log: PathBuf,
    /// Its state directory (and the agent's log) on the Linux side.
    pub dir: TempDir,
}

impl WineAgent {
    /// Starts `upkeep-agent.exe --server URL --enrollment-key KEY --state-dir … --hostname
    /// NAME --machine-id win-NAME --poll-wait-seconds 5 <extra>`.
    pub fn start(
        wine: &Wine,
        server: &str,
        key: &str,
        hostname: &str,
        extra: &[&str],
    ) -> Result<WineAgent> {
        let dir = tempfile::tempdir()?;
        let state = dir.path().join("state");
        let log = dir.path().join("agent.log");
        let mut command = wine.command(wine.agent_exe());
        command
            .args([
                "--server",
                server,
                "--enrollment-key",
                key,
                "--hostname",
                hostname,
            ])
            .args([
                "--machine-id",
                &format!("win-{hostname}"),
                "--poll-wait-seconds",
                "5",
            ])
            .arg("--state-dir")
            .arg(windows_path(&state))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .context("cannot start the agent under Wine")?;
        Ok(WineAgent { child, log, dir })
    }

    /// What the agent logged so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the agent process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the agent and waits for it.
    pub async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}
