//! What differs between Unix and Windows, behind one set of names so the rest of the agent has
//! no `cfg`. Each OS module provides:
//!
//! - `shutdown_signal()`: resolves when the agent is asked to stop (SIGTERM/SIGINT on Unix;
//!   Ctrl-C, Ctrl-Break, console close and system shutdown on Windows).
//! - `create_private_dir(path)`, `private_file(&mut OpenOptions)`, `restrict_file(path)`: the
//!   state directory is the agent's alone (mode 0700/0600 on Unix; on Windows a protected DACL
//!   granting only SYSTEM and Administrators, set through the Win32 API, which files inherit).
//! - `sync_dir(path)`: makes a rename durable (a directory fsync on Unix; nothing on Windows,
//!   where NTFS journals metadata and directories cannot be flushed).
//! - `ProcessTree`: everything a script started, killed together on timeout or cancel (a
//!   process group on Unix, a job object on Windows).
//! - `gated_reboot(command)`: the reboot command behind a gate that opens when its stdin closes.
//! - `machine_id()`, `os_name()`: the identity facts that come from the OS.
//! - `output_code_page()` and `decode_code_page(bytes, cp)`: how scripts' output bytes become
//!   text (see `decode`); `encode_oem(text)`: a batch file's text in the code page `cmd.exe`
//!   reads it in.
//!
//! Outside tests, only this module (and `service::scm`, the Windows service) uses
//! `std::os::{unix,windows}`, `libc`, `windows-sys` or `windows-service`.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;
