//! Windows: console control events, a protected DACL on the state directory, job objects.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::path::Path;
use std::process::Stdio;
use std::ptr::{null, null_mut};
use tokio::process::{Child, Command};
use tracing::{info, warn};
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, LocalFree};
use windows_sys::Win32::Globalization::{
    CP_OEMCP, GetOEMCP, MultiByteToWideChar, WC_NO_BEST_FIT_CHARS, WideCharToMultiByte,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1, SE_FILE_OBJECT,
    SetNamedSecurityInfoW,
};
use windows_sys::Win32::Security::{
    ACL, DACL_SECURITY_INFORMATION, GetSecurityDescriptorDacl, PROTECTED_DACL_SECURITY_INFORMATION,
    PSECURITY_DESCRIPTOR,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, TerminateJobObject,
};
use windows_sys::Win32::System::Registry::{HKEY_LOCAL_MACHINE, RRF_RT_REG_SZ, RegGetValueW};
use windows_sys::Win32::System::Threading::{CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW};

/// Full control for LocalSystem (`SY`) and the Administrators group (`BA`), inherited by
/// files and subdirectories (`OICI`), and nothing inherited from the parent (`P`).
const PRIVATE_DACL: &str = "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)";

/// What scripts are started with: no console window, and a process group of their own so that
/// a Ctrl-C in the agent's console reaches only the agent (which then kills them itself).
const SCRIPT_CREATION_FLAGS: u32 = CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW;

/// Resolves on Ctrl-C or Ctrl-Break in the agent's console, when the console is closed, or
/// when Windows shuts down. (A service is stopped through the service control manager instead;
/// see `service`.)
pub(crate) async fn shutdown_signal() {
    use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close, ctrl_shutdown};
    /// Waits for one kind of event; if it cannot be watched, only the others stop the agent.
    macro_rules! event {
        ($listen:expr, $name:literal) => {
            async {
                match $listen {
                    Ok(mut event) => {
                        event.recv().await;
                    }
                    Err(e) => {
                        warn!("cannot watch for {}: {e}", $name);
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
    }
    tokio::select! {
        () = event!(ctrl_c(), "Ctrl-C") => info!("Ctrl-C received; stopping"),
        () = event!(ctrl_break(), "Ctrl-Break") => info!("Ctrl-Break received; stopping"),
        () = event!(ctrl_close(), "the console closing") => info!("the console was closed; stopping"),
        () = event!(ctrl_shutdown(), "system shutdown") => info!("Windows is shutting down; stopping"),
    }
}

fn wide(s: &OsStr) -> Vec<u16> {
    s.encode_wide().chain(std::iter::once(0)).collect()
}

/// Creates the directory (and its parents) and gives it [`PRIVATE_DACL`]: only SYSTEM and
/// Administrators may open it, so the agent must run as a service or elevated.
pub(crate) fn create_private_dir(path: &Path) -> io::Result<()> {
    fs::create_dir_all(path)?;
    set_private_dacl(path)
}

fn set_private_dacl(path: &Path) -> io::Result<()> {
    let sddl = wide(OsStr::new(PRIVATE_DACL));
    let mut descriptor: PSECURITY_DESCRIPTOR = null_mut();
    // SAFETY: `sddl` is NUL-terminated and outlives the call; the descriptor it allocates is
    // freed with LocalFree below, on every path.
    let ok = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl.as_ptr(),
            SDDL_REVISION_1,
            &mut descriptor,
            null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    let (mut present, mut defaulted) = (0, 0);
    let mut dacl: *mut ACL = null_mut();
    let path_w = wide(path.as_os_str());
    // SAFETY: `descriptor` is the valid descriptor made above; `dacl` points into it and is
    // used before the descriptor is freed; `path_w` is NUL-terminated.
    let result = unsafe {
        let got = GetSecurityDescriptorDacl(descriptor, &mut present, &mut dacl, &mut defaulted);
        let result = if got == 0 {
            Err(io::Error::last_os_error())
        } else {
            match SetNamedSecurityInfoW(
                path_w.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                null_mut(),
                null_mut(),
                dacl,
                null(),
            ) {
                0 => Ok(()),
                code => Err(io::Error::from_raw_os_error(code as i32)),
            }
        };
        LocalFree(descriptor);
        result
    };
    result.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot restrict {} to SYSTEM and Administrators: {e}",
                path.display()
            ),
        )
    })
}

/// Files inherit the state directory's DACL; nothing to add.
pub(crate) fn private_file(options: &mut OpenOptions) -> &mut OpenOptions {
    options
}

/// Files inherit the state directory's DACL; nothing to do.
pub(crate) fn restrict_file(_path: &Path) -> io::Result<()> {
    Ok(())
}

/// NTFS journals renames, and a directory handle cannot be flushed on Windows.
pub(crate) fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// A string value under `HKEY_LOCAL_MACHINE`, or `None`.
fn registry_string(subkey: &str, value: &str) -> Option<String> {
    let (subkey, value) = (wide(OsStr::new(subkey)), wide(OsStr::new(value)));
    let mut buffer = vec![0u16; 512];
    let mut size = u32::try_from(buffer.len() * 2).ok()?;
    // SAFETY: both names are NUL-terminated; `size` is the buffer's size in bytes, and the
    // call writes at most that many.
    let rc = unsafe {
        RegGetValueW(
            HKEY_LOCAL_MACHINE,
            subkey.as_ptr(),
            value.as_ptr(),
            RRF_RT_REG_SZ,
            null_mut(),
            buffer.as_mut_ptr().cast(),
            &mut size,
        )
    };
    if rc != 0 {
        return None;
    }
    let chars = (size as usize / 2).min(buffer.len());
    let text = String::from_utf16_lossy(&buffer[..chars]);
    let text = text.trim_end_matches('\0').trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// `MachineGuid`, set by Windows setup (sysprep gives clones a new one).
pub(crate) fn machine_id() -> Option<String> {
    registry_string(r"SOFTWARE\Microsoft\Cryptography", "MachineGuid")
}

/// "Windows 11 Pro 23H2 (build 22631)" from the registry's `CurrentVersion` key.
pub(crate) fn os_name() -> Option<String> {
    const KEY: &str = r"SOFTWARE\Microsoft\Windows NT\CurrentVersion";
    let product = registry_string(KEY, "ProductName")?;
    let release = registry_string(KEY, "DisplayVersion");
    let build = registry_string(KEY, "CurrentBuild");
    let mut name = product;
    if let Some(release) = release {
        name = format!("{name} {release}");
    }
    if let Some(build) = build {
        name = format!("{name} (build {build})");
    }
    Some(name)
}

/// Scripts get consoles of their own, which start in the system's OEM code page.
pub(crate) fn output_code_page() -> Option<u32> {
    // SAFETY: no arguments, no memory.
    Some(unsafe { GetOEMCP() })
}

/// Bytes in `code_page` as text, through the system's tables.
pub(crate) fn decode_code_page(bytes: &[u8], code_page: u32) -> Option<String> {
    if bytes.is_empty() {
        return Some(String::new());
    }
    let len = i32::try_from(bytes.len()).ok()?;
    // SAFETY: the input pointer and length describe `bytes`; the first call only measures.
    let needed = unsafe { MultiByteToWideChar(code_page, 0, bytes.as_ptr(), len, null_mut(), 0) };
    if needed <= 0 {
        return None;
    }
    let mut wide = vec![0u16; usize::try_from(needed).ok()?];
    // SAFETY: `wide` holds exactly `needed` UTF-16 units, as the call was told.
    let written = unsafe {
        MultiByteToWideChar(code_page, 0, bytes.as_ptr(), len, wide.as_mut_ptr(), needed)
    };
    let written = usize::try_from(written).ok().filter(|&n| n > 0)?;
    Some(String::from_utf16_lossy(&wide[..written.min(wide.len())]))
}

/// `text` in the OEM code page, in which `cmd.exe` reads batch files; `None` when a character
/// has no place in it (or the code page is UTF-8), and the file is then written as UTF-8.
pub(crate) fn encode_oem(text: &str) -> Option<Vec<u8>> {
    let wide: Vec<u16> = text.encode_utf16().collect();
    if wide.is_empty() {
        return Some(Vec::new());
    }
    let len = i32::try_from(wide.len()).ok()?;
    let mut lossy = 0;
    // SAFETY: the input pointer and length describe `wide`; the first call only measures.
    let needed = unsafe {
        WideCharToMultiByte(
            CP_OEMCP,
            WC_NO_BEST_FIT_CHARS,
            wide.as_ptr(),
            len,
            null_mut(),
            0,
            null(),
            &mut lossy,
        )
    };
    if needed <= 0 || lossy != 0 {
        return None;
    }
    let mut bytes = vec![0u8; usize::try_from(needed).ok()?];
    // SAFETY: `bytes` holds exactly `needed` bytes, as the call is told.
    let written = unsafe {
        WideCharToMultiByte(
            CP_OEMCP,
            WC_NO_BEST_FIT_CHARS,
            wide.as_ptr(),
            len,
            bytes.as_mut_ptr(),
            needed,
            null(),
            &mut lossy,
        )
    };
    let written = usize::try_from(written).ok().filter(|&n| n > 0)?;
    (lossy == 0).then(|| {
        bytes.truncate(written);
        bytes
    })
}

/// A kernel handle that may be used and closed from any thread.
#[derive(Debug)]
struct Job(HANDLE);

// SAFETY: a job object handle is a process-wide kernel reference, valid on every thread; the
// struct owns it and closes it once.
unsafe impl Send for Job {}
// SAFETY: the only operations (`TerminateJobObject`) are thread-safe kernel calls.
unsafe impl Sync for Job {}

/// Everything a script started, in one job object: a time-out or cancel terminates the job,
/// and with it every process the script started (grandchildren included).
///
/// The script is put in the job right after it starts; a process it starts in that instant
/// (before its interpreter has run a line) would escape, which a batch or PowerShell
/// interpreter cannot do. Once the script ends normally, processes it left running keep
/// running (an installer may start a service): the job handle is closed without terminating.
#[derive(Debug)]
pub(crate) struct ProcessTree {
    job: Option<Job>,
}

impl ProcessTree {
    /// No console window, and a process group of its own (see [`SCRIPT_CREATION_FLAGS`]).
    pub(crate) fn prepare(command: &mut Command) {
        command.creation_flags(SCRIPT_CREATION_FLAGS);
    }

    pub(crate) fn of(child: &Child) -> Self {
        let Some(process) = child.raw_handle() else {
            return Self { job: None };
        };
        // SAFETY: null attributes and name make an anonymous job with default security.
        let job = unsafe { CreateJobObjectW(null(), null()) };
        if job.is_null() {
            warn!(
                "cannot create a job object; a time-out kills only the interpreter: {}",
                io::Error::last_os_error()
            );
            return Self { job: None };
        }
        let job = Job(job);
        // SAFETY: both handles are valid: the job was just created, the process is unreaped.
        if unsafe { AssignProcessToJobObject(job.0, process as HANDLE) } == 0 {
            warn!(
                "cannot put the script in a job object; a time-out kills only the interpreter: {}",
                io::Error::last_os_error()
            );
        }
        Self { job: Some(job) }
    }

    pub(crate) fn kill(&self) {
        if let Some(job) = &self.job {
            // SAFETY: the handle is open for as long as `self` holds it.
            if unsafe { TerminateJobObject(job.0, 1) } == 0 {
                tracing::debug!("terminating the job object: {}", io::Error::last_os_error());
            }
        }
    }

    /// The interpreter ended: what it left running stays, so the job is only closed.
    pub(crate) fn reaped(&mut self) {
        self.job = None;
    }
}

impl Drop for ProcessTree {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // SAFETY: the handle was opened by CreateJobObjectW and is closed only here.
        unsafe { CloseHandle(self.0) };
    }
}

/// `cmd.exe` that first waits on stdin (`set /p` returns at a line or at its end), then runs
/// `command`; in a process group of its own so that a Ctrl-C for the agent does not stop it.
pub(crate) fn gated_reboot(command: &str) -> Command {
    let mut gated = Command::new("cmd.exe");
    gated
        .raw_arg(format!("/D /S /C \"set /p UPKEEP_GATE= & {command}\""))
        .stdin(Stdio::piped())
        .creation_flags(SCRIPT_CREATION_FLAGS);
    gated
}
